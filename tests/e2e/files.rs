//! What is particular to file destinations (CSV, Parquet, JSON lines): fields no longer sent,
//! object names that would leave the folder, JSON fields first seen late, a watermark held by
//! a late rejection, a change-feed run repeated after a crash. Every behavior in both modes is
//! the conformance suite's (`tests/conformance/`).

use crate::common::*;

fn project(f: &Fixture, format: &str, behavior: &str) {
    f.write(
        "backflow.toml",
        &format!(
            r#"
[sources.people]
type = "csv"
path = "people.csv"

[destinations.out]
type = "file"
path = "exports"
format = "{format}"

[syncs.s]
from = "people"
to = "out"
object = "people"
behavior = "{behavior}"
key = "id"
"#
        ),
    );
}

/// Read any output file back through DataFusion as sorted text rows.
async fn read(path: &std::path::Path, format: &str) -> Vec<String> {
    let ctx = datafusion::prelude::SessionContext::new();
    let p = path.display().to_string();
    let df = match format {
        "parquet" => ctx.read_parquet(p, Default::default()).await.unwrap(),
        "csv" => ctx
            .read_csv(
                p,
                datafusion::prelude::CsvReadOptions::new().file_extension(".csv"),
            )
            .await
            .unwrap(),
        _ => ctx
            .read_json(
                p,
                datafusion::prelude::JsonReadOptions::default().file_extension(".jsonl"),
            )
            .await
            .unwrap(),
    };
    let batches = df.collect().await.unwrap();
    let mut rows = Vec::new();
    for b in batches {
        let cols: Vec<_> = (0..b.num_columns())
            .map(|i| arrow::compute::cast(b.column(i), &arrow::datatypes::DataType::Utf8).unwrap())
            .collect();
        let names: Vec<String> = b
            .schema()
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .collect();
        for r in 0..b.num_rows() {
            let mut cells: Vec<(String, String)> = names
                .iter()
                .zip(&cols)
                .map(|(n, c)| {
                    let s = c
                        .as_any()
                        .downcast_ref::<arrow::array::StringArray>()
                        .unwrap();
                    (
                        n.clone(),
                        if s.is_valid(r) {
                            s.value(r).to_string()
                        } else {
                            "NULL".into()
                        },
                    )
                })
                .collect();
            cells.sort();
            rows.push(
                cells
                    .iter()
                    .map(|(n, v)| format!("{n}={v}"))
                    .collect::<Vec<_>>()
                    .join(","),
            );
        }
    }
    rows.sort();
    rows
}

use arrow::array::Array;

#[tokio::test]
async fn csv_upsert_keeps_values_of_fields_no_longer_sent() {
    let f = Fixture::new();
    project(&f, "csv", "upsert");
    f.write("people.csv", "id,name,zip\n1,Ada,A-007\n2,Bob,B-123\n");
    f.run_ok("s").await;
    let t = std::fs::read_to_string(f.path().join("backflow.toml")).unwrap();
    f.write(
        "backflow.toml",
        &format!("{t}fields = {{ exclude = [\"zip\"] }}\n"),
    );
    f.write(
        "people.csv",
        "id,name,zip\n1,Ada2,CHANGED\n2,Bob,B-123\n3,Cy,C-1\n",
    );
    let r = f.run_ok("s").await;
    assert_eq!((r.counts.created, r.counts.updated), (1, 2));
    let file = f.path().join("exports/people.csv");
    assert_eq!(
        read(&file, "csv").await,
        vec![
            "id=1,name=Ada2,zip=A-007",
            "id=2,name=Bob,zip=B-123",
            "id=3,name=Cy,zip=NULL"
        ]
    );
}

#[tokio::test]
async fn object_names_cannot_escape_the_destination() {
    let f = Fixture::new();
    project(&f, "csv", "mirror");
    let t = std::fs::read_to_string(f.path().join("backflow.toml")).unwrap();
    f.write(
        "backflow.toml",
        &t.replace("object = \"people\"", "object = \"../escape\""),
    );
    let err = f.load().unwrap_err().to_string();
    assert!(err.contains("'..'"), "{err}");
    f.write(
        "backflow.toml",
        &t.replace("object = \"people\"", "object = \"/etc/passwd\""),
    );
    let err = f.load().unwrap_err().to_string();
    assert!(err.contains("relative"), "{err}");
}

#[tokio::test]
async fn jsonl_keeps_fields_first_seen_late_in_the_file() {
    let f = Fixture::new();
    project(&f, "jsonl", "upsert");
    let mut csv = String::from("id,name,churned_at\n");
    for i in 0..1500 {
        let churned = if i >= 1400 { "2026-01-01" } else { "" };
        csv.push_str(&format!("{i},n{i},{churned}\n"));
    }
    f.write("people.csv", &csv);
    f.run_ok("s").await;
    // Change one early row only: the rewrite must keep the late rows' values.
    f.write("people.csv", &csv.replacen("0,n0,", "0,changed,", 1));
    let r = f.run_ok("s").await;
    assert_eq!(r.counts.updated, 1);
    let text = std::fs::read_to_string(f.path().join("exports/people.jsonl")).unwrap();
    assert_eq!(text.matches("2026-01-01").count(), 100, "late values lost");
    assert!(text.contains("\"changed\""));
}

#[tokio::test]
async fn a_late_rejection_keeps_the_watermark_where_it_was() {
    let f = Fixture::new();
    project(&f, "parquet", "upsert");
    let t = std::fs::read_to_string(f.path().join("backflow.toml")).unwrap();
    f.write("backflow.toml", &format!("{t}cursor = \"ts\"\n"));
    f.write("people.csv", "id,name,ts\n1,Ada,10\n");
    let r = f.run_ok("s").await;
    assert_eq!(r.watermark.as_deref(), Some("10"));
    f.write(
        "backflow.toml",
        &format!(
            "{}cursor = \"ts\"\n",
            t.replace("\"upsert\"", "\"update-only\"")
        ),
    );
    f.write("people.csv", "id,name,ts\n1,Ada2,30\n2,Bob,20\n");
    let r = f.run_ok("s").await;
    assert_eq!((r.counts.updated, r.counts.rejected), (1, 1), "{r:?}");
    assert_eq!(
        r.watermark.as_deref(),
        Some("10"),
        "the watermark must not pass the rejected row"
    );
    // The next run reads the rejected row again.
    let r = f.run_ok("s").await;
    assert_eq!(
        (r.counts.read, r.counts.rejected, r.counts.unchanged),
        (2, 1, 1)
    );
}

/// A run that wrote its change file but died before committing is run again: the file is
/// replaced by the same changes, not added twice.
#[cfg(feature = "failpoints")]
#[tokio::test]
async fn a_change_feed_run_repeated_after_a_crash_replaces_its_file() {
    let f = Fixture::new();
    project(&f, "parquet", "mirror");
    let toml = std::fs::read_to_string(f.path().join("backflow.toml")).unwrap();
    f.write(
        "backflow.toml",
        &toml
            .replace(
                "format = \"parquet\"",
                "format = \"parquet\"\nmode = \"changes\"",
            )
            .replace("[syncs.s]", "[syncs.feed_crash]"),
    );
    f.write("people.csv", "id,name\n1,Ada\n2,Bob\n");
    f.run_ok("feed_crash").await;
    f.write("people.csv", "id,name\n1,Ada L.\n");
    run_faulted(&f, "feed_crash", "after_destination_write", false).await;
    let feed = f.path().join("exports/people");
    assert_eq!(
        std::fs::read_dir(&feed).unwrap().count(),
        2,
        "written, not committed"
    );
    f.run_ok("feed_crash").await;
    assert_eq!(
        std::fs::read_dir(&feed).unwrap().count(),
        2,
        "replaced, not added"
    );
    assert_eq!(
        read(&feed.join(format!("v{:020}.parquet", 2)), "parquet").await,
        vec![
            "__bf_op=delete,id=2,name=NULL",
            "__bf_op=upsert,id=1,name=Ada L."
        ]
    );
}
