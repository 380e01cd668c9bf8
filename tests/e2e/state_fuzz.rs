//! Property-based fuzzing of the state decoder: the newest manifest of a sync, damaged at random
//! (bytes flipped, cut, inserted, the file truncated), is either read back exactly as committed
//! or passed over for the previous intact version (or, when the damage makes its format look
//! newer, refused with the state left untouched); never a panic, never a damaged manifest taken
//! for a good one.

use proptest::prelude::*;

use crate::common::*;

#[derive(Debug, Clone)]
enum Damage {
    Flip(usize, u8),
    Cut(usize, usize),
    Insert(usize, Vec<u8>),
    Truncate(usize),
}

fn damage() -> impl Strategy<Value = Damage> {
    prop_oneof![
        (any::<usize>(), 1u8..=255).prop_map(|(a, x)| Damage::Flip(a, x)),
        (any::<usize>(), 1usize..30).prop_map(|(a, n)| Damage::Cut(a, n)),
        (any::<usize>(), proptest::collection::vec(any::<u8>(), 1..8))
            .prop_map(|(a, b)| Damage::Insert(a, b)),
        any::<usize>().prop_map(Damage::Truncate),
    ]
}

fn apply(bytes: &[u8], damage: &[Damage]) -> Vec<u8> {
    let mut b = bytes.to_vec();
    for d in damage {
        let len = b.len().max(1);
        match d {
            Damage::Flip(a, x) => {
                if !b.is_empty() {
                    let i = a % b.len();
                    b[i] ^= x;
                }
            }
            Damage::Cut(a, n) => {
                let i = a % len;
                let j = (i + n).min(b.len());
                if i < j {
                    b.drain(i..j);
                }
            }
            Damage::Insert(a, x) => {
                let i = a % (b.len() + 1);
                b.splice(i..i, x.iter().copied());
            }
            Damage::Truncate(a) => b.truncate(a % len),
        }
    }
    b
}

#[test]
fn damaged_manifests_are_never_taken_for_good_ones() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let f = people_fixture("mirror", "", "id,email,name,plan\n1,a@x.io,Ada,pro\n");
    rt.block_on(f.run_ok("people_sync"));
    f.write(
        "people.csv",
        "id,email,name,plan\n1,a@x.io,Ada,pro\n2,b@x.io,Bob,free\n",
    );
    rt.block_on(f.run_ok("people_sync"));
    let manifests = f.manifests();
    let newest = manifests.last().unwrap().clone();
    let original = std::fs::read(&newest).unwrap();
    let project = f.load().unwrap();
    let good = rt
        .block_on(project.state.latest("people_sync"))
        .unwrap()
        .unwrap();
    assert_eq!(good.version, 2);
    let good_json = serde_json::to_value(&good).unwrap();
    let (fell_back, still_good, refused) = (
        std::cell::Cell::new(0),
        std::cell::Cell::new(0),
        std::cell::Cell::new(0),
    );
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases: 400,
        failure_persistence: None,
        ..ProptestConfig::default()
    });
    runner
        .run(&proptest::collection::vec(damage(), 1..4), |d| {
            let damaged = apply(&original, &d);
            std::fs::write(&newest, &damaged).unwrap();
            let got = rt.block_on(project.state.latest("people_sync"));
            let m = match got {
                Ok(m) => m.unwrap(),
                // Damage that makes the format look newer stops the run with the state left
                // untouched (the safe answer to state a newer backflow may have written).
                Err(backflow::state::StateError::NewerFormat { .. }) => {
                    refused.set(refused.get() + 1);
                    return Ok(());
                }
                Err(e) => return Err(TestCaseError::fail(format!("{e}"))),
            };
            if m.version == 2 {
                // Taken as version 2 only when it says exactly what was committed.
                prop_assert_eq!(serde_json::to_value(&m).unwrap(), good_json.clone());
                still_good.set(still_good.get() + 1);
            } else {
                prop_assert_eq!(m.version, 1);
                fell_back.set(fell_back.get() + 1);
            }
            Ok(())
        })
        .unwrap();
    std::fs::write(&newest, &original).unwrap();
    let (fell_back, still_good, refused) = (fell_back.get(), still_good.get(), refused.get());
    eprintln!(
        "state fuzz: {fell_back} damaged manifests passed over, {still_good} read as committed, {refused} refused as newer"
    );
    assert!(
        fell_back > 300,
        "only {fell_back} of 400 damaged manifests were detected"
    );
}

/// CSV ingest: a people file with random damage (quotes, delimiters, line ends, a BOM, invalid
/// UTF-8, ragged rows) either syncs or fails with an error naming the source; never a panic,
/// and a failed run changes no record.
#[test]
fn damaged_csv_files_sync_or_fail_cleanly() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let f = Fixture::new();
    people_project(&f, "mirror", "");
    let base =
        "id,email,name,plan\n1,a@x.io,Ada,pro\n2,b@x.io,\"Bob, Jr.\",free\n3,c@x.io,Cy,pro\n";
    f.write("people.csv", base);
    rt.block_on(f.run_ok("people_sync"));
    let pieces: [&[u8]; 10] = [
        b"\"",
        b",",
        b"\n",
        b"\r\n",
        b"\xef\xbb\xbf",
        b"\xff\xfe",
        b"\0",
        b",,,,",
        b"\"\"",
        b"9",
    ];
    let (failed, synced) = (std::cell::Cell::new(0), std::cell::Cell::new(0));
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases: 200,
        failure_persistence: None,
        ..ProptestConfig::default()
    });
    runner
        .run(
            &proptest::collection::vec((any::<usize>(), 0usize..10), 1..4),
            |edits| {
                let mut bytes = base.as_bytes().to_vec();
                for (at, p) in &edits {
                    let i = at % (bytes.len() + 1);
                    bytes.splice(i..i, pieces[*p].iter().copied());
                }
                std::fs::write(f.path().join("people.csv"), &bytes).unwrap();
                let before = f.sqlite("out/app.db", "people");
                // Reading the file can fail when the session registers it (its schema is
                // inferred from every row) or during the run.
                let error = rt.block_on(async {
                    let project = f.load().map_err(|e| e.to_string())?;
                    let ctx = project.session().await.map_err(|e| e.to_string())?;
                    let r = backflow::sync::run(
                        &project,
                        &ctx,
                        "people_sync",
                        Default::default(),
                        std::sync::Arc::new(backflow::sync::NoProgress),
                    )
                    .await;
                    r.error.map_or(Ok(()), Err)
                });
                match &error.err() {
                    Some(e) => {
                        prop_assert!(e.contains("people"), "error names no source: {}", e);
                        // No record changed. (A run that fails while reading may already have
                        // added a new column to the table: a nullable column, never data.)
                        let after: Vec<_> = f
                            .sqlite("out/app.db", "people")
                            .into_iter()
                            .map(|mut row| {
                                row.retain(|c, _| before.first().is_none_or(|b| b.contains_key(c)));
                                row
                            })
                            .collect();
                        prop_assert_eq!(after, before);
                        failed.set(failed.get() + 1);
                    }
                    None => synced.set(synced.get() + 1),
                }
                Ok(())
            },
        )
        .unwrap();
    eprintln!(
        "csv fuzz: {} damaged files synced, {} failed cleanly",
        synced.get(),
        failed.get()
    );
}
