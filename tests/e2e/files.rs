//! File destinations (CSV, Parquet, JSON lines): the file always holds the model's rows.

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

async fn mirror_roundtrip(format: &str) {
    let f = Fixture::new();
    project(&f, format, "mirror");
    f.write("people.csv", "id,name,zip\n1,Ada,007\n2,Bob,123\n3,Cy,\n");
    let r = f.run_ok("s").await;
    assert_eq!(r.counts.created, 3);
    let file = f.path().join(format!("exports/people.{format}"));
    assert_eq!(
        read(&file, format).await,
        vec![
            "id=1,name=Ada,zip=7",
            "id=2,name=Bob,zip=123",
            "id=3,name=Cy,zip=NULL"
        ]
    );
    f.write("people.csv", "id,name,zip\n1,Ada L.,007\n3,Cy,\n4,Di,999\n");
    let r = f.run_ok("s").await;
    assert_eq!(
        (r.counts.created, r.counts.updated, r.counts.deleted),
        (1, 1, 1)
    );
    assert_eq!(
        read(&file, format).await,
        vec![
            "id=1,name=Ada L.,zip=7",
            "id=3,name=Cy,zip=NULL",
            "id=4,name=Di,zip=999"
        ]
    );
    // A no-change run does not rewrite the file.
    let before = std::fs::metadata(&file).unwrap().modified().unwrap();
    let r = f.run_ok("s").await;
    assert_eq!(r.counts.unchanged, 3);
    assert_eq!(
        std::fs::metadata(&file).unwrap().modified().unwrap(),
        before
    );
}

#[tokio::test]
async fn parquet_file_mirror() {
    mirror_roundtrip("parquet").await;
}

#[tokio::test]
async fn csv_file_mirror() {
    mirror_roundtrip("csv").await;
}

#[tokio::test]
async fn jsonl_file_mirror() {
    mirror_roundtrip("jsonl").await;
}

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
async fn update_only_on_a_file_rejects_unknown_keys() {
    let f = Fixture::new();
    project(&f, "parquet", "upsert");
    f.write("people.csv", "id,name\n1,Ada\n");
    f.run_ok("s").await;
    let t = std::fs::read_to_string(f.path().join("backflow.toml")).unwrap();
    f.write("backflow.toml", &t.replace("\"upsert\"", "\"update-only\""));
    f.write("people.csv", "id,name\n1,Ada2\n2,Bob\n");
    let r = f.run_ok("s").await;
    assert_eq!((r.counts.updated, r.counts.rejected), (1, 1), "{r:?}");
    let file = f.path().join("exports/people.parquet");
    assert_eq!(read(&file, "parquet").await, vec!["id=1,name=Ada2"]);
    let r = f.run_ok("s").await;
    assert_eq!((r.counts.rejected, r.counts.unchanged), (1, 1));
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
async fn create_only_on_a_file_counts_existing_records_as_skipped() {
    let f = Fixture::new();
    project(&f, "csv", "create-only");
    std::fs::create_dir_all(f.path().join("exports")).unwrap();
    std::fs::write(f.path().join("exports/people.csv"), "id,name\n1,theirs\n").unwrap();
    f.write("people.csv", "id,name\n1,ours\n2,Bob\n");
    let r = f.run_ok("s").await;
    assert_eq!((r.counts.created, r.counts.skipped), (1, 1), "{r:?}");
    let file = f.path().join("exports/people.csv");
    assert_eq!(
        read(&file, "csv").await,
        vec!["id=1,name=theirs", "id=2,name=Bob"]
    );
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

/// `mode = "changes"`: each run adds one file with the changes it sent, named after the state
/// version it commits; nothing when nothing changed; a repeated run replaces its file.
async fn change_feed(format: &str) {
    let f = Fixture::new();
    project(&f, format, "mirror");
    let toml = std::fs::read_to_string(f.path().join("backflow.toml")).unwrap();
    f.write(
        "backflow.toml",
        &toml.replace(
            &format!("format = \"{format}\""),
            &format!("format = \"{format}\"\nmode = \"changes\""),
        ),
    );
    f.write("people.csv", "id,name\n1,Ada\n2,Bob\n3,Cy\n");
    let r = f.run_ok("s").await;
    assert_eq!(r.counts.created, 3);
    let feed = f.path().join("exports/people");
    let file = |v: u64| feed.join(format!("v{v:020}.{format}"));
    assert_eq!(
        read(&file(1), format).await,
        vec![
            "__bf_op=upsert,id=1,name=Ada",
            "__bf_op=upsert,id=2,name=Bob",
            "__bf_op=upsert,id=3,name=Cy"
        ]
    );
    f.write("people.csv", "id,name\n1,Ada L.\n3,Cy\n4,Di\n");
    let r = f.run_ok("s").await;
    assert_eq!(
        (r.counts.created, r.counts.updated, r.counts.deleted),
        (1, 1, 1)
    );
    assert_eq!(
        read(&file(2), format).await,
        vec![
            "__bf_op=delete,id=2,name=NULL",
            "__bf_op=upsert,id=1,name=Ada L.",
            "__bf_op=upsert,id=4,name=Di"
        ]
    );
    // Nothing changed: no file.
    f.run_ok("s").await;
    assert_eq!(std::fs::read_dir(&feed).unwrap().count(), 2);
    assert!(!file(3).exists());
}

#[tokio::test]
async fn parquet_change_feed() {
    change_feed("parquet").await;
}

#[tokio::test]
async fn csv_change_feed() {
    change_feed("csv").await;
}

#[tokio::test]
async fn jsonl_change_feed() {
    change_feed("jsonl").await;
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
