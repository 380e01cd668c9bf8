//! Input that breaks naive tools: BOMs, CRLF, quoted newlines and rows that cannot be read.
//! (Identifiers that look like SQL and hostile values, in every destination: the conformance
//! suite's `hostile_identifiers_and_values`.)

use crate::common::*;

#[tokio::test]
async fn csv_with_bom_crlf_and_quoted_newlines() {
    let f = people_fixture(
        "mirror",
        "",
        "\u{feff}id,email,name,plan\r\n1,a@x.io,\"Ada\nLovelace\",pro\r\n2,b@x.io,\"Bob, Jr.\",free\r\n",
    );
    let r = f.run_ok("people_sync").await;
    assert_eq!(r.counts.created, 2);
    let rows = f.sqlite("out/app.db", "people");
    assert_eq!(
        pairs(&rows, "id", "name"),
        vec![
            ("1".into(), "Ada\nLovelace".into()),
            ("2".into(), "Bob, Jr.".into())
        ]
    );
}

/// Rows that cannot be read as rows of their file (ragged, invalid UTF-8) are quarantined with
/// their line, as invalid records of the sync; the other rows sync, in a file that also has a
/// BOM, CRLF line ends, quoted newlines and a blank line.
#[tokio::test]
async fn csv_rows_that_cannot_be_read_are_quarantined_with_their_line() {
    let f = Fixture::new();
    // The fixed file deletes 3 of 5 records: over the default guard, which is not tested here.
    people_project(&f, "mirror", "max_deletes = \"100%\"");
    let mut bytes =
        b"\xef\xbb\xbfid,email,name,plan\r\n1,a@x.io,\"Ada\nLovelace\",pro\r\n\r\n".to_vec();
    bytes.extend_from_slice(b"2,b@x.io,Bob,free,extra\r\n"); // line 5: ragged
    bytes.extend_from_slice(b"3,c@x.io,C\xffy,pro\r\n"); // line 6: not UTF-8
    bytes.extend_from_slice(b"4,d@x.io,\"Di, Jr.\",pro\r\n5,e@x.io\r\n"); // line 8: short
    bytes.extend_from_slice(b"6,f@x.io,Fay,pro\r\n7,g@x.io,Gus,pro\r\n8,h@x.io,Hal,pro\r\n");
    std::fs::write(f.path().join("people.csv"), &bytes).unwrap();
    let r = f.run_ok("people_sync").await;
    assert_eq!((r.counts.created, r.counts.invalid), (5, 3), "{r:?}");
    assert_eq!(
        pairs(&f.sqlite("out/app.db", "people"), "id", "name"),
        vec![
            ("1".into(), "Ada\nLovelace".into()),
            ("4".into(), "Di, Jr.".into()),
            ("6".into(), "Fay".into()),
            ("7".into(), "Gus".into()),
            ("8".into(), "Hal".into())
        ]
    );
    let reasons: Vec<&str> = r.samples.iter().map(|s| s.reason.as_str()).collect();
    for (line, why) in [
        (5, "the row has 5 field(s), the header has 4"),
        (6, "field 3 is not valid UTF-8"),
        (8, "the row has 2 field(s), the header has 4"),
    ] {
        assert!(
            reasons
                .iter()
                .any(|r| r.contains(&format!("people.csv line {line}: {why}"))),
            "line {line}: {reasons:#?}"
        );
    }
    // The run history keeps them; the clean copy the session read is gone.
    let project = f.load().unwrap();
    let runs = backflow::history::runs(&project.state, "people_sync", 1)
        .await
        .unwrap();
    assert_eq!(runs[0].counts.invalid, 3);
    let leftovers: Vec<_> = std::fs::read_dir(f.path())
        .unwrap()
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with(".backflow-clean")
        })
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    // While rows cannot be read, a mirror deletes nothing (a missing record may be one of
    // them): Hal leaves the file and stays until the file is fixed.
    let mut shorter = bytes.clone();
    shorter.truncate(bytes.len() - "8,h@x.io,Hal,pro\r\n".len());
    std::fs::write(f.path().join("people.csv"), &shorter).unwrap();
    let r = f.run_ok("people_sync").await;
    assert_eq!((r.counts.deleted, r.counts.held), (0, 1), "{r:?}");
    // Held deletes are counted as such, not as an invalid record without a key.
    assert!(
        r.samples
            .iter()
            .all(|s| s.key.is_some() || s.reason.contains("line")),
        "{:#?}",
        r.samples
    );
    let (code, out, _) = f.cli(&["run", "people_sync"]);
    assert_eq!(code, 0);
    assert!(
        out.contains("held: 1 record(s) that left the model were not deleted"),
        "{out}"
    );
    assert_eq!(f.sqlite("out/app.db", "people").len(), 5);
    f.write(
        "people.csv",
        "id,email,name,plan\n1,a@x.io,Ada,pro\n4,d@x.io,Di,pro\n",
    );
    let r = f.run_ok("people_sync").await;
    assert_eq!(r.counts.deleted, 3, "{r:?}");

    // A file most of whose rows cannot be read is not what the source says it is: the run
    // stops rather than read it as (nearly) empty.
    f.write("people.csv", "id,email,name,plan\n1,a,b,c,\n2,a,b,c,\n");
    let project = f.load().unwrap();
    let Err(err) = project.session().await else {
        panic!("a malformed file was read");
    };
    let err = err.to_string();
    assert!(
        err.contains("2 of 2 rows cannot be read") && err.contains("check its delimiter"),
        "{err}"
    );
}
