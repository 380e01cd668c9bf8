//! The checks. Each takes a [`Suite`] (one destination, one project) and ends with the
//! destination's contents compared with what the model says they must be.

use std::sync::Arc;

use arrow::array::{
    ArrayRef, BooleanArray, Date32Array, Decimal128Array, Float64Array, Int16Array, Int32Array,
    Int64Array, RecordBatch, StringArray, TimestampMicrosecondArray,
};
use arrow::datatypes::{DataType, Field, Schema, TimeUnit};

use super::{Counts, Fault, KEY, Kind, NULL, Source, Suite, rows};

/// The columns the behavior checks read: the sync sends `id`, `email` and `name`; `note` is
/// a column only the object has (with a default where the destination has defaults).
const PEOPLE: &[(&str, Kind)] = &[
    (KEY, Kind::Int),
    ("email", Kind::Text),
    ("name", Kind::Text),
    ("note", Kind::Text),
];

/// The records there before backflow came.
const BEFORE: &[[&str; 4]] = &[["1", "old", "one", "kept"], ["9", "old", "nine", "kept"]];

const V1: &str = "id,email,name\n1,a@x.io,Ada\n2,b@x.io,Bob\n";

pub async fn upsert(s: &Suite) {
    // What a record created by the sync holds in `note`, which the sync does not send.
    let n = s.new_note();
    let object = s.object("people");
    s.seed_people(&object, true, BEFORE).await;
    s.configure(Source::Csv, &object, "upsert");
    s.write_csv(V1);
    // Key 1 is already there: the upsert matches it, and a destination that can list its
    // records counts it as updated (else as created: nothing tells).
    // Key 9 is there and not in the model: unowned (an upsert would not delete it anyway).
    let listed = u64::from(s.caps.lists_records);
    s.run_expecting(Counts {
        created: 2 - listed,
        updated: listed,
        unowned: listed,
        ..Counts::default()
    })
    .await;
    assert_eq!(
        s.contents(&object, PEOPLE).await,
        rows(&[
            ["1", "a@x.io", "Ada", "kept"],
            ["2", "b@x.io", "Bob", n],
            ["9", "old", "nine", "kept"],
        ])
    );
    // Key 1 leaves the model: an upsert never deletes.
    s.write_csv("id,email,name\n2,b@x.io,Bobby\n3,c@x.io,Cy\n");
    s.run_expecting(Counts {
        created: 1,
        updated: 1,
        ..Counts::default()
    })
    .await;
    assert_eq!(
        s.contents(&object, PEOPLE).await,
        rows(&[
            ["1", "a@x.io", "Ada", "kept"],
            ["2", "b@x.io", "Bobby", n],
            ["3", "c@x.io", "Cy", n],
            ["9", "old", "nine", "kept"],
        ])
    );
    s.assert_rerun_is_noop(&object, PEOPLE, 2, 0).await;
}

pub async fn mirror(s: &Suite) {
    // What a record created by the sync holds in `note`, which the sync does not send.
    let n = s.new_note();
    let object = s.object("people");
    s.seed_people(&object, true, BEFORE).await;
    s.configure(Source::Csv, &object, "mirror");
    s.write_csv("id,email,name\n1,a@x.io,Ada\n2,b@x.io,Bob\n3,c@x.io,Cy\n");
    // Key 1 is already there (updated), key 9 too and not in the model: unowned, left alone.
    let listed = u64::from(s.caps.lists_records);
    s.run_expecting(Counts {
        created: 3 - listed,
        updated: listed,
        unowned: listed,
        ..Counts::default()
    })
    .await;
    assert_eq!(
        s.contents(&object, PEOPLE).await,
        rows(&[
            ["1", "a@x.io", "Ada", "kept"],
            ["2", "b@x.io", "Bob", n],
            ["3", "c@x.io", "Cy", n],
            ["9", "old", "nine", "kept"],
        ])
    );
    // Someone edits a record the model does not change: the next run leaves it alone.
    let name1 = if s.caps.editable {
        s.seed_people(&object, true, &[["1", "a@x.io", "edited", "kept"]])
            .await;
        "edited"
    } else {
        "Ada"
    };
    // 2 changes, 3 leaves the model (deleted), 4 is new; 9 was never synced: left alone.
    s.write_csv("id,email,name\n1,a@x.io,Ada\n2,b@x.io,Bobby\n4,d@x.io,Di\n");
    s.run_expecting(Counts {
        created: 1,
        updated: 1,
        deleted: 1,
        unchanged: 1,
        ..Counts::default()
    })
    .await;
    assert_eq!(
        s.contents(&object, PEOPLE).await,
        rows(&[
            ["1", "a@x.io", name1, "kept"],
            ["2", "b@x.io", "Bobby", n],
            ["4", "d@x.io", "Di", n],
            ["9", "old", "nine", "kept"],
        ])
    );
    s.assert_rerun_is_noop(&object, PEOPLE, 3, 0).await;
}

pub async fn update_only(s: &Suite) {
    let object = s.object("people");
    s.seed_people(&object, true, BEFORE).await;
    s.configure(Source::Csv, &object, "update-only");
    s.write_csv(V1);
    let r = if s.caps.checks_records {
        let r = s
            .run_expecting(Counts {
                updated: 1,
                rejected: 1,
                ..Counts::default()
            })
            .await;
        let rejected = Suite::rejected(&r);
        assert_eq!(rejected.keys().collect::<Vec<_>>(), ["2"], "{r:#?}");
        assert!(
            rejected["2"].contains("no record with this key"),
            "{rejected:?}"
        );
        r
    } else {
        // Written as an update of a record the feed never had: its consumer updates nothing.
        s.run_expecting(Counts {
            updated: 2,
            ..Counts::default()
        })
        .await
    };
    let after_v1 = rows(&[["1", "a@x.io", "Ada", "kept"], ["9", "old", "nine", "kept"]]);
    assert_eq!(s.contents(&object, PEOPLE).await, after_v1, "{r:#?}");
    if s.caps.checks_records {
        // The rejected row is not marked synced: the next run tries it again…
        s.assert_rerun_is_noop(&object, PEOPLE, 1, 1).await;
        // …and once the record exists, updates it (its other columns kept).
        s.seed_people(&object, true, &[["2", "old", "two", "kept"]])
            .await;
        s.run_expecting(Counts {
            updated: 1,
            unchanged: 1,
            ..Counts::default()
        })
        .await;
        assert_eq!(
            s.contents(&object, PEOPLE).await,
            rows(&[
                ["1", "a@x.io", "Ada", "kept"],
                ["2", "b@x.io", "Bob", "kept"],
                ["9", "old", "nine", "kept"],
            ])
        );
    }
    // A changed row and a new one.
    s.write_csv("id,email,name\n1,a@x.io,Ada\n2,b@x.io,Bobby\n3,c@x.io,Cy\n");
    let expected = if s.caps.checks_records {
        s.run_expecting(Counts {
            updated: 1,
            rejected: 1,
            unchanged: 1,
            ..Counts::default()
        })
        .await;
        rows(&[
            ["1", "a@x.io", "Ada", "kept"],
            ["2", "b@x.io", "Bobby", "kept"],
            ["9", "old", "nine", "kept"],
        ])
    } else {
        s.run_expecting(Counts {
            updated: 2,
            unchanged: 1,
            ..Counts::default()
        })
        .await;
        after_v1
    };
    assert_eq!(s.contents(&object, PEOPLE).await, expected);
    let rejected = u64::from(s.caps.checks_records);
    s.assert_rerun_is_noop(&object, PEOPLE, 3 - rejected, rejected)
        .await;
}

pub async fn create_only(s: &Suite) {
    // What a record created by the sync holds in `note`, which the sync does not send.
    let n = s.new_note();
    let object = s.object("people");
    s.seed_people(&object, true, BEFORE).await;
    s.configure(Source::Csv, &object, "create-only");
    s.write_csv(V1);
    // Key 1 is there already: left alone (skipped where the destination can tell).
    let skipped = u64::from(s.caps.checks_records);
    s.run_expecting(Counts {
        created: 2 - skipped,
        skipped,
        ..Counts::default()
    })
    .await;
    let after_v1 = [
        ["1", "old", "one", "kept"],
        ["2", "b@x.io", "Bob", n],
        ["9", "old", "nine", "kept"],
    ];
    assert_eq!(s.contents(&object, PEOPLE).await, rows(&after_v1));
    // A changed row is not sent; a new one is created.
    s.write_csv("id,email,name\n1,a@x.io,Ada\n2,b@x.io,Bobby\n3,c@x.io,Cy\n");
    s.run_expecting(Counts {
        created: 1,
        unchanged: 2,
        ..Counts::default()
    })
    .await;
    assert_eq!(
        s.contents(&object, PEOPLE).await,
        rows(&[
            after_v1[0],
            after_v1[1],
            ["3", "c@x.io", "Cy", n],
            after_v1[2],
        ])
    );
    s.assert_rerun_is_noop(&object, PEOPLE, 3, 0).await;
}

pub async fn append_only(s: &Suite) {
    // What a record created by the sync holds in `note`, which the sync does not send.
    let n = s.new_note();
    let object = s.object("events");
    s.seed_people(&object, false, BEFORE).await;
    s.configure(Source::Csv, &object, "append-only");
    s.write_csv(V1);
    s.run_expecting(Counts {
        created: 2,
        ..Counts::default()
    })
    .await;
    let mut expected = rows(&[
        ["1", "a@x.io", "Ada", n],
        ["1", "old", "one", "kept"],
        ["2", "b@x.io", "Bob", n],
        ["9", "old", "nine", "kept"],
    ]);
    assert_eq!(s.contents(&object, PEOPLE).await, expected);
    // A changed row is appended again, as an event; an unchanged one is not.
    s.write_csv("id,email,name\n1,a@x.io,Ada\n2,b@x.io,Bobby\n");
    s.run_expecting(Counts {
        created: 1,
        unchanged: 1,
        ..Counts::default()
    })
    .await;
    expected.extend(rows(&[["2", "b@x.io", "Bobby", n]]));
    expected.sort();
    assert_eq!(s.contents(&object, PEOPLE).await, expected);
    s.assert_rerun_is_noop(&object, PEOPLE, 2, 0).await;
}

pub async fn delete(s: &Suite) {
    let object = s.object("people");
    s.seed_people(
        &object,
        true,
        &[
            ["1", "a", "a", "kept"],
            ["2", "b", "b", "kept"],
            ["3", "c", "c", "kept"],
            ["4", "d", "d", "kept"],
        ],
    )
    .await;
    s.configure(Source::Csv, &object, "delete");
    // The model lists keys; 9 was never there (deleting it is not an error).
    s.write_csv("id\n2\n3\n9\n");
    s.run_expecting(Counts {
        deleted: 3,
        ..Counts::default()
    })
    .await;
    assert_eq!(
        s.contents(&object, PEOPLE).await,
        rows(&[["1", "a", "a", "kept"], ["4", "d", "d", "kept"]])
    );
    // Keys deleted once are not sent again; a new key is.
    s.write_csv("id\n2\n3\n4\n");
    s.run_expecting(Counts {
        deleted: 1,
        unchanged: 2,
        ..Counts::default()
    })
    .await;
    assert_eq!(
        s.contents(&object, PEOPLE).await,
        rows(&[["1", "a", "a", "kept"]])
    );
    s.assert_rerun_is_noop(&object, PEOPLE, 3, 0).await;
}

pub async fn rerun_sends_nothing(s: &Suite) {
    let object = s.object("people");
    s.configure(Source::Csv, &object, "mirror");
    let mut csv = String::from("id,email,name\n");
    for i in 0..50 {
        csv.push_str(&format!("{i},u{i}@x.io,\"Name, {i}\"\n"));
    }
    s.write_csv(&csv);
    s.run_expecting(Counts {
        created: 50,
        ..Counts::default()
    })
    .await;
    let cols = &PEOPLE[..3];
    let expected: Vec<Vec<String>> = {
        let mut r: Vec<Vec<String>> = (0..50)
            .map(|i| vec![i.to_string(), format!("u{i}@x.io"), format!("Name, {i}")])
            .collect();
        r.sort();
        r
    };
    assert_eq!(s.contents(&object, cols).await, expected);
    // The plan agrees that there is nothing to send.
    let plan = s.project.plan(&s.sync()).await;
    assert_eq!(
        (
            plan.counts.created,
            plan.counts.updated,
            plan.counts.deleted,
            plan.counts.unchanged
        ),
        (0, 0, 0, 50),
        "{plan:#?}"
    );
    // Twice, each with a project loaded afresh.
    s.assert_rerun_is_noop(&object, cols, 50, 0).await;
    s.assert_rerun_is_noop(&object, cols, 50, 0).await;
    assert_eq!(s.contents(&object, cols).await, expected);
}

/// Rows 1..=300 of `id,email,name,n`, with one row per fault unless `fixed`.
fn faulty_model(fixed: bool) -> String {
    let mut csv = String::from("id,email,name,n\n");
    for i in 1..=300u64 {
        let (mut email, mut name, mut n) = (format!("u{i}@x.io"), "Ok".to_string(), i.to_string());
        if !fixed {
            match fault_at(i) {
                Some(Fault::NameTooLong) => name = "Toolongname".into(),
                Some(Fault::NullName) => name = String::new(),
                Some(Fault::DuplicateEmail) => email = "u60@x.io".into(),
                Some(Fault::OutOfRange) => n = "99999999999".into(),
                Some(Fault::EmailWithoutAt) => email = format!("u{i}.x.io"),
                None => {}
            }
        }
        csv.push_str(&format!("{i},{email},{name},{n}\n"));
    }
    csv
}

const FAULTS: &[(u64, Fault)] = &[
    (17, Fault::NameTooLong),
    (40, Fault::NullName),
    (61, Fault::DuplicateEmail),
    (100, Fault::OutOfRange),
    (250, Fault::EmailWithoutAt),
];

fn fault_at(id: u64) -> Option<Fault> {
    FAULTS.iter().find(|(i, _)| *i == id).map(|(_, f)| *f)
}

fn model_rows(csv: &str) -> Vec<Vec<String>> {
    csv.lines()
        .skip(1)
        .map(|l| {
            l.split(',')
                .map(|v| if v.is_empty() { NULL } else { v }.to_string())
                .collect()
        })
        .collect()
}

pub async fn rejections(s: &Suite) {
    let object = s.object("accounts");
    s.fx.create_refusing(&object).await;
    s.configure(Source::Csv, &object, "upsert");
    let cols: &[(&str, Kind)] = &[
        (KEY, Kind::Int),
        ("email", Kind::Text),
        ("name", Kind::Text),
        ("n", Kind::Int),
    ];
    let faulty = faulty_model(false);
    s.write_csv(&faulty);
    let r = s.run().await;
    let rejected = Suite::rejected(&r);
    // Each fault the destination refuses is rejected with its reason; a duplicate e-mail may
    // refuse either of the two rows that share it (whichever arrived second).
    for (fault, reason) in &s.caps.refuses {
        let id = FAULTS.iter().find(|(_, f)| f == fault).unwrap().0;
        let candidates: Vec<String> = if *fault == Fault::DuplicateEmail {
            vec!["60".into(), id.to_string()]
        } else {
            vec![id.to_string()]
        };
        let hit: Vec<&String> = candidates
            .iter()
            .filter(|k| rejected.contains_key(*k))
            .collect();
        assert_eq!(hit.len(), 1, "{fault:?} not rejected once: {rejected:#?}");
        assert!(
            rejected[hit[0]].contains(reason),
            "{fault:?}: the reason does not say {reason:?}: {rejected:#?}"
        );
    }
    let refused = s.caps.refuses.len() as u64;
    assert_eq!(
        rejected.len() as u64,
        refused,
        "rejected other rows than the faults the destination refuses: {rejected:#?}"
    );
    assert_eq!(
        super::counts(&r),
        Counts {
            created: 300 - refused,
            rejected: refused,
            ..Counts::default()
        },
        "{r:#?}"
    );
    // The rest landed, faults the destination does not refuse as they were.
    let mut expected: Vec<Vec<String>> = model_rows(&faulty)
        .into_iter()
        .filter(|r| !rejected.contains_key(&r[0]))
        .collect();
    expected.sort();
    assert_eq!(s.contents(&object, cols).await, expected);

    // Fixed in the model: the refused rows land on the next run, the faulty rows that landed
    // are updated, nothing else is sent.
    let fixed = faulty_model(true);
    s.write_csv(&fixed);
    let landed_faults = FAULTS
        .iter()
        .filter(|(id, _)| !rejected.contains_key(&id.to_string()))
        .count() as u64;
    s.run_expecting(Counts {
        created: refused,
        updated: landed_faults,
        unchanged: 300 - refused - landed_faults,
        ..Counts::default()
    })
    .await;
    let mut expected = model_rows(&fixed);
    expected.sort();
    assert_eq!(s.contents(&object, cols).await, expected);
    s.assert_rerun_is_noop(&object, cols, 300, 0).await;
}

const TYPED: &[(&str, Kind)] = &[
    (KEY, Kind::Int),
    ("i16", Kind::Int),
    ("i32", Kind::Int),
    ("i64", Kind::Int),
    ("f64", Kind::Float),
    ("dec", Kind::Decimal),
    ("flag", Kind::Bool),
    ("day", Kind::Date),
    ("at", Kind::Timestamp),
    ("at_utc", Kind::Timestamp),
    ("txt", Kind::Text),
];

const TEXT_VALUE: &str = "it's \"quoted\"\nline\ttab \\ ünïcødé ✓ 𝄞";

/// The typed rows, as canonical text: extremes, ordinary values, NULLs. `changed` alters
/// row 4 (the second version of the model).
fn typed_rows(min_date: &str, changed: bool) -> Vec<[String; 11]> {
    let s = |v: &str| v.to_string();
    vec![
        [
            s("1"),
            s("32767"),
            s("2147483647"),
            s("9223372036854775807"),
            s("1.5e300"),
            s("9999999999999999999999999999.9999999999"),
            s("true"),
            s("9999-12-31"),
            s("9999-12-31 23:59:59.999999"),
            s("9999-12-31 23:59:59.999999"),
            s(TEXT_VALUE),
        ],
        [
            s("2"),
            s("-32768"),
            s("-2147483648"),
            s("-9223372036854775808"),
            s("-2.2250738585072014e-308"),
            s("-0.0000000001"),
            s("false"),
            s(min_date),
            format!("{min_date} 00:00:00"),
            format!("{min_date} 00:00:00"),
            s(""),
        ],
        [
            s("3"),
            s(NULL),
            s(NULL),
            s(NULL),
            s(NULL),
            s(NULL),
            s(NULL),
            s(NULL),
            s(NULL),
            s(NULL),
            s(NULL),
        ],
        [
            s("4"),
            s("0"),
            s("-1"),
            s("1"),
            s("0.1"),
            s(if changed { "-12.5" } else { "1234.5" }),
            s("true"),
            s("2024-02-29"),
            s(if changed {
                "2024-01-02 03:04:05.000001"
            } else {
                "2024-01-02 03:04:05.123456"
            }),
            s("2024-06-01 10:00:00.5"),
            s(if changed { "changed" } else { "plain" }),
        ],
    ]
}

/// The typed rows as an Arrow batch with the types `TYPED` names.
fn typed_batch(rows: &[[String; 11]]) -> RecordBatch {
    fn col(rows: &[[String; 11]], i: usize) -> impl Iterator<Item = Option<&str>> {
        rows.iter()
            .map(move |r| (r[i] != NULL).then_some(r[i].as_str()))
    }
    let micros = |v: &str| {
        chrono::NaiveDateTime::parse_from_str(v, "%Y-%m-%d %H:%M:%S%.f")
            .unwrap()
            .and_utc()
            .timestamp_micros()
    };
    let days = |v: &str| {
        let d = chrono::NaiveDate::parse_from_str(v, "%Y-%m-%d").unwrap();
        (d - chrono::NaiveDate::from_ymd_opt(1970, 1, 1).unwrap()).num_days() as i32
    };
    let unscaled = |v: &str| {
        let (int, frac) = v.split_once('.').unwrap_or((v, ""));
        format!("{int}{frac:0<10}").parse::<i128>().unwrap()
    };
    let arrays: Vec<ArrayRef> = vec![
        Arc::new(Int64Array::from_iter(
            col(rows, 0).map(|v| v.map(|v| v.parse::<i64>().unwrap())),
        )),
        Arc::new(Int16Array::from_iter(
            col(rows, 1).map(|v| v.map(|v| v.parse::<i16>().unwrap())),
        )),
        Arc::new(Int32Array::from_iter(
            col(rows, 2).map(|v| v.map(|v| v.parse::<i32>().unwrap())),
        )),
        Arc::new(Int64Array::from_iter(
            col(rows, 3).map(|v| v.map(|v| v.parse::<i64>().unwrap())),
        )),
        Arc::new(Float64Array::from_iter(
            col(rows, 4).map(|v| v.map(|v| v.parse::<f64>().unwrap())),
        )),
        Arc::new(
            Decimal128Array::from_iter(col(rows, 5).map(|v| v.map(unscaled)))
                .with_precision_and_scale(38, 10)
                .unwrap(),
        ),
        Arc::new(BooleanArray::from_iter(
            col(rows, 6).map(|v| v.map(|v| v == "true")),
        )),
        Arc::new(Date32Array::from_iter(col(rows, 7).map(|v| v.map(days)))),
        Arc::new(TimestampMicrosecondArray::from_iter(
            col(rows, 8).map(|v| v.map(micros)),
        )),
        Arc::new(
            TimestampMicrosecondArray::from_iter(col(rows, 9).map(|v| v.map(micros)))
                .with_timezone("UTC"),
        ),
        Arc::new(StringArray::from_iter(col(rows, 10))),
    ];
    let types = [
        DataType::Int64,
        DataType::Int16,
        DataType::Int32,
        DataType::Int64,
        DataType::Float64,
        DataType::Decimal128(38, 10),
        DataType::Boolean,
        DataType::Date32,
        DataType::Timestamp(TimeUnit::Microsecond, None),
        DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
        DataType::Utf8,
    ];
    let fields: Vec<Field> = TYPED
        .iter()
        .zip(types)
        .map(|((name, _), t)| Field::new(*name, t, *name != KEY))
        .collect();
    RecordBatch::try_new(Arc::new(Schema::new(fields)), arrays).unwrap()
}

/// What the destination must hold for `rows`: the same values, but an empty text where the
/// destination reads it as NULL.
fn typed_expected(s: &Suite, rows: &[[String; 11]]) -> Vec<Vec<String>> {
    let mut out: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            r.iter()
                .map(|v| {
                    if v.is_empty() && s.caps.empty_text_is_null {
                        NULL.to_string()
                    } else {
                        v.clone()
                    }
                })
                .collect()
        })
        .collect();
    out = super::canonical_rows(out, TYPED);
    out.sort();
    out
}

pub async fn type_round_trip(s: &Suite) {
    let object = s.object("typed");
    let v1 = typed_rows(s.caps.min_date, false);
    s.write_parquet(&typed_batch(&v1));
    s.configure(Source::Parquet, &object, "mirror");
    s.run_expecting(Counts {
        created: 4,
        ..Counts::default()
    })
    .await;
    assert_eq!(s.contents(&object, TYPED).await, typed_expected(s, &v1));
    // The object backflow created: its declared types and key.
    let schema = s.fx.schema(&object).await;
    if let Some(types) = &s.caps.types {
        let schema = schema.as_ref().expect("the destination has a schema");
        let declared: Vec<(&str, &str)> = TYPED
            .iter()
            .map(|(c, _)| {
                (
                    *c,
                    schema
                        .columns
                        .get(*c)
                        .map(String::as_str)
                        .unwrap_or("(missing)"),
                )
            })
            .collect();
        assert_eq!(&declared, types, "declared column types");
    }
    if s.caps.primary_key {
        let schema = schema.as_ref().expect("the destination has a schema");
        assert_eq!(schema.primary_key, [KEY], "the key is the primary key");
    }
    // One row changes: its new values go out alone, the others stay exactly as they were
    // (a file destination reads them back to rewrite the file).
    let v2 = typed_rows(s.caps.min_date, true);
    s.write_parquet(&typed_batch(&v2));
    s.run_expecting(Counts {
        updated: 1,
        unchanged: 3,
        ..Counts::default()
    })
    .await;
    assert_eq!(s.contents(&object, TYPED).await, typed_expected(s, &v2));
    s.assert_rerun_is_noop(&object, TYPED, 4, 0).await;
}

/// Column names that break naive quoting. (MySQL allows no column name ending in a space and
/// no character outside the Basic Multilingual Plane, so there are none.)
const HOSTILE_COLUMNS: &[&str] = &[
    "select",
    "\"; drop table x; --",
    "sp ace",
    "ünïcødé ✓",
    "semi;colon",
    "back`tick",
    "O'Brien",
    "Mixed Case",
];

/// Values that break naive quoting or escaping; `{canary}` is the canary object's SQL name.
fn hostile_values(canary: &str) -> Vec<String> {
    [
        "it's \"quoted\"",
        "back\\slash\ttab",
        "new\nline\r\nwindows",
        "'); DROP TABLE {canary}; --",
        "\"; DROP TABLE {canary}; --",
        "\\N",
        "NULL",
        "ünïcødé ✓ 𝄞 \u{200b}",
        "  padded  ",
        "a,b;c|d",
        "{\"json\": [1, 2]}",
        "%s %d {0} ${x} $1 ?",
        "",
    ]
    .iter()
    .map(|v| v.replace("{canary}", canary))
    .collect()
}

/// The hostile model: row k holds value (k + column) of the list in each column, so every
/// value is in every column; the last row is all NULL. `changed` alters row 1's first value
/// and drops row 2.
fn hostile_rows(values: &[String], changed: bool) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    for k in 0..=values.len() {
        if changed && k == 2 {
            continue;
        }
        let mut row = vec![(k + 1).to_string()];
        for c in 0..HOSTILE_COLUMNS.len() {
            row.push(if k == values.len() {
                NULL.to_string()
            } else if changed && k == 1 && c == 0 {
                "changed: ' \" ` \\ ;".to_string()
            } else {
                values[(k + c) % values.len()].clone()
            });
        }
        out.push(row);
    }
    out
}

fn hostile_batch(rows: &[Vec<String>]) -> RecordBatch {
    let mut fields = vec![Field::new(KEY, DataType::Int64, false)];
    let mut arrays: Vec<ArrayRef> = vec![Arc::new(Int64Array::from_iter_values(
        rows.iter().map(|r| r[0].parse::<i64>().unwrap()),
    ))];
    for (i, c) in HOSTILE_COLUMNS.iter().enumerate() {
        fields.push(Field::new(*c, DataType::Utf8, true));
        arrays.push(Arc::new(StringArray::from_iter(
            rows.iter()
                .map(|r| (r[i + 1] != NULL).then_some(r[i + 1].as_str())),
        )));
    }
    RecordBatch::try_new(Arc::new(Schema::new(fields)), arrays).unwrap()
}

pub async fn hostile_identifiers_and_values(s: &Suite) {
    // A canary object that an injected statement would drop or change.
    let canary = s.object("x");
    let canary_rows = [["1", "canary@x.io", "still here", "kept"]];
    s.seed_people(&canary, true, &canary_rows).await;
    let object = s.object("we\"ird`; drop table x; -- ünï");
    let values = hostile_values(&s.fx.sql_name(&canary));
    let mut cols: Vec<(&str, Kind)> = vec![(KEY, Kind::Int)];
    cols.extend(HOSTILE_COLUMNS.iter().map(|c| (*c, Kind::Text)));
    let expected = |rows: Vec<Vec<String>>| {
        let rows = rows
            .into_iter()
            .map(|r| {
                r.into_iter()
                    .map(|v| {
                        if v.is_empty() && s.caps.empty_text_is_null {
                            NULL.to_string()
                        } else {
                            v
                        }
                    })
                    .collect()
            })
            .collect();
        super::canonical_rows(rows, &cols)
    };

    let v1 = hostile_rows(&values, false);
    s.write_parquet(&hostile_batch(&v1));
    s.configure(Source::Parquet, &object, "mirror");
    s.run_expecting(Counts {
        created: v1.len() as u64,
        ..Counts::default()
    })
    .await;
    assert_eq!(s.contents(&object, &cols).await, expected(v1.clone()));
    assert_eq!(s.contents(&canary, PEOPLE).await, rows(&canary_rows));

    // Updates and deletes go through the same quoting.
    let v2 = hostile_rows(&values, true);
    s.write_parquet(&hostile_batch(&v2));
    s.run_expecting(Counts {
        updated: 1,
        deleted: 1,
        unchanged: v2.len() as u64 - 1,
        ..Counts::default()
    })
    .await;
    assert_eq!(s.contents(&object, &cols).await, expected(v2.clone()));
    assert_eq!(s.contents(&canary, PEOPLE).await, rows(&canary_rows));
    s.assert_rerun_is_noop(&object, &cols, v2.len() as u64, 0)
        .await;
}

/// Runs that fail after a destination batch or before the commit, as errors and as panics,
/// each followed by a clean run: the object ends equal to the model, and the run after sends
/// nothing. 20,000 rows in diff batches of at most 2,048: the initial load is two destination
/// batches (a batch is sent once 16,384 rows are gathered), the first one interrupted; later
/// versions change a third of the rows and drop and add a few, so a run stops after its
/// deletes and before its creates and updates.
#[cfg(feature = "failpoints")]
pub async fn interrupted_run(s: &Suite) {
    use crate::common::run_faulted;
    let object = s.object("people");
    s.configure_with(
        Source::Csv,
        &object,
        "mirror",
        "[engine]\nbatch_size = 2048\n",
    );
    let model = |version: usize| {
        let mut csv = String::from("id,name\n");
        for i in 0..20_000 + version * 50 {
            if version > 0 && (i + version).is_multiple_of(97) {
                continue;
            }
            let name = if i % 6 == version % 6 {
                format!("v{version}")
            } else {
                "same".into()
            };
            csv.push_str(&format!("{i},{name}\n"));
        }
        csv
    };
    let cols: &[(&str, Kind)] = &[(KEY, Kind::Int), ("name", Kind::Text)];
    let expected = |csv: &str| {
        let mut rows = model_rows(csv);
        rows.sort();
        rows
    };
    let sync = s.sync();
    for (version, (point, panic)) in [
        ("after_batch", false),
        ("after_batch", true),
        ("before_commit", false),
        ("after_batch", false),
        ("before_commit", true),
    ]
    .into_iter()
    .enumerate()
    {
        let csv = model(version);
        s.write_csv(&csv);
        run_faulted(&s.project, &sync, point, panic).await;
        if version == 0 {
            // The interrupted initial load: its first batch is there (16,384 rows and the rest
            // of the diff batch that reached them), or nothing where the destination applies
            // the writes at the end.
            let held = s.fx.read(&object, &[KEY]).await.len();
            if s.caps.applies_per_batch {
                assert!(
                    (16_384..20_000).contains(&held),
                    "{held} records held after the first batch"
                );
            } else {
                assert_eq!(held, 0, "records held before the run's last write");
            }
        }
        let r = s.run().await;
        assert!(
            r.counts.created + r.counts.updated + r.counts.deleted > 0,
            "the clean run sent nothing after {point}: {r:#?}"
        );
        assert_eq!(r.counts.rejected, 0, "{r:#?}");
        assert_eq!(
            s.contents(&object, cols).await,
            expected(&csv),
            "version {version}, after {point} (panic: {panic})"
        );
        let rows = expected(&csv).len() as u64;
        s.assert_rerun_is_noop(&object, cols, rows, 0).await;
    }
}

/// The columns of the `composite_key` check: records are identified by `org` and `id`
/// together.
const MEMBERS: &[(&str, Kind)] = &[("org", Kind::Text), (KEY, Kind::Int), ("name", Kind::Text)];
const MEMBER_KEY: &[&str] = &["org", KEY];
/// An org that would break quoting anywhere a key is spelled into SQL, a path or JSON.
const HOSTILE_ORG: &str = "o'r\"g; DROP TABLE x; -- ü";

pub async fn composite_key(s: &Suite) {
    use backflow::history::RecordKind;
    let object = s.object("members");
    s.configure_keyed(Source::Csv, &object, "mirror", "", r#"["org", "id"]"#);
    let csv = |rows: &[[&str; 3]]| {
        let mut out = String::from("org,id,name\n");
        for r in rows {
            let org = if r[0].is_empty() {
                String::new()
            } else {
                format!("\"{}\"", r[0].replace('"', "\"\""))
            };
            out.push_str(&format!("{org},{},{}\n", r[1], r[2]));
        }
        out
    };
    // The same id under two orgs is two records; a row without its org is invalid.
    s.write_csv(&csv(&[
        ["acme", "1", "Ada"],
        ["acme", "2", "Bob"],
        ["zeta", "1", "Zed"],
        [HOSTILE_ORG, "1", "Quote"],
        ["", "3", "No org"],
    ]));
    if !s.caps.composite_keys {
        let r = s
            .project
            .run_with(&[&s.sync()], backflow::RunOptions::default())
            .await
            .remove(0);
        let error = r.error.unwrap_or_default();
        assert!(
            error.contains("cannot take the composite key [\"org\",\"id\"]"),
            "{error}"
        );
        assert!(s.contents(&object, PEOPLE).await.is_empty());
        return;
    }
    let r = s
        .run_expecting(Counts {
            created: 4,
            ..Counts::default()
        })
        .await;
    assert_eq!(r.counts.invalid, 1, "{r:#?}");
    let invalid: Vec<_> = r
        .samples
        .iter()
        .filter(|x| x.kind == RecordKind::Invalid)
        .collect();
    assert!(
        invalid[0].reason.contains("NULL parts: org"),
        "{:?}",
        invalid[0]
    );
    let first = rows(&[
        ["acme", "1", "Ada"],
        ["acme", "2", "Bob"],
        ["zeta", "1", "Zed"],
        [HOSTILE_ORG, "1", "Quote"],
    ]);
    assert_eq!(s.contents_keyed(&object, MEMBERS, MEMBER_KEY).await, {
        let mut e = first.clone();
        e.sort();
        e
    });
    if s.caps.primary_key {
        let schema = s.fx.schema(&object).await.unwrap();
        let mut pk = schema.primary_key.clone();
        pk.sort();
        assert_eq!(pk, ["id", "org"], "the key's columns are the primary key");
    }
    // One part of a key changes (acme/2 moves to beta/2): for a mirror that is another record,
    // so the old one is deleted and the new one created. A name changes under a composite key.
    s.write_csv(&csv(&[
        ["acme", "1", "Ada"],
        ["beta", "2", "Bob"],
        ["zeta", "1", "Zoe"],
        [HOSTILE_ORG, "1", "Quote"],
    ]));
    s.run_expecting(Counts {
        created: 1,
        updated: 1,
        deleted: 1,
        unchanged: 2,
        ..Counts::default()
    })
    .await;
    let mut second = rows(&[
        ["acme", "1", "Ada"],
        ["beta", "2", "Bob"],
        ["zeta", "1", "Zoe"],
        [HOSTILE_ORG, "1", "Quote"],
    ]);
    second.sort();
    assert_eq!(s.contents_keyed(&object, MEMBERS, MEMBER_KEY).await, second);
    // Without its state, the sync compares with the keys the destination lists (both parts
    // read back): every record is found there and updated, none created again. (A change
    // feed lists none, and refuses a state older than itself.)
    if s.caps.lists_records {
        std::fs::remove_dir_all(s.dir().join(".backflow")).unwrap();
        s.run_expecting(Counts {
            updated: 4,
            ..Counts::default()
        })
        .await;
        assert_eq!(s.contents_keyed(&object, MEMBERS, MEMBER_KEY).await, second);
    }
    let before = s.contents_keyed(&object, MEMBERS, MEMBER_KEY).await;
    s.run_expecting(Counts {
        unchanged: 4,
        ..Counts::default()
    })
    .await;
    assert_eq!(s.contents_keyed(&object, MEMBERS, MEMBER_KEY).await, before);
    if !s.caps.checks_records {
        return;
    }
    // Update-only finds records by both parts: an unknown pair is refused, named by its key.
    s.configure_keyed(Source::Csv, &object, "update-only", "", r#"["org", "id"]"#);
    s.write_csv(&csv(&[["acme", "1", "Ada Two"], ["acme", "7", "Nobody"]]));
    let r = s
        .run_expecting(Counts {
            updated: 1,
            rejected: 1,
            ..Counts::default()
        })
        .await;
    let rejected = Suite::rejected(&r);
    assert!(rejected.contains_key(r#"["acme","7"]"#), "{rejected:?}");
    // Delete removes exactly the pair named, not the same id under another org.
    s.configure_keyed(Source::Csv, &object, "delete", "", r#"["org", "id"]"#);
    s.write_csv(&csv(&[["zeta", "1", ""]]));
    s.run_expecting(Counts {
        deleted: 1,
        ..Counts::default()
    })
    .await;
    let mut last = rows(&[
        ["acme", "1", "Ada Two"],
        ["beta", "2", "Bob"],
        [HOSTILE_ORG, "1", "Quote"],
    ]);
    last.sort();
    assert_eq!(s.contents_keyed(&object, MEMBERS, MEMBER_KEY).await, last);
}
