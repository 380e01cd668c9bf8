//! Input that breaks naive tools: identifiers that look like SQL, big integers, BOMs, CRLF and
//! quoted newlines.

use crate::common::*;

#[tokio::test]
async fn identifiers_are_quoted_and_values_bound() {
    let f = Fixture::new();
    f.write(
        "backflow.toml",
        r#"
[sources.p]
type = "csv"
path = "p.csv"

[destinations.d]
type = "sqlite"
path = "out.db"

[syncs.s]
from = "p"
to = "d"
object = "ta\"ble; DROP TABLE x; --"
behavior = "mirror"
key = "id"
"#,
    );
    f.write(
        "p.csv",
        "id,select,\"we\"\"ird\"\"; DROP TABLE x; --\",big\n1,'); DROP TABLE x; --,b,9007199254740993\n",
    );
    let conn = rusqlite::Connection::open(f.path().join("out.db")).unwrap();
    conn.execute_batch("CREATE TABLE x (a INTEGER)").unwrap();
    let r = f.run_ok("s").await;
    assert_eq!(r.counts.created, 1);
    let rows = f.sqlite("out.db", "ta\"ble; DROP TABLE x; --");
    assert_eq!(rows[0]["select"], "'); DROP TABLE x; --");
    assert_eq!(rows[0]["we\"ird\"; DROP TABLE x; --"], "b");
    // Integers above 2^53 arrive exactly.
    assert_eq!(rows[0]["big"], "9007199254740993");
    // The table x is still there.
    assert!(f.sqlite("out.db", "x").is_empty());
    // Updating and deleting go through the same quoting.
    f.write(
        "p.csv",
        "id,select,\"we\"\"ird\"\"; DROP TABLE x; --\",big\n2,x,y,1\n",
    );
    let r = f.run_ok("s").await;
    assert_eq!((r.counts.created, r.counts.deleted), (1, 1));
}

#[tokio::test]
async fn csv_with_bom_crlf_and_quoted_newlines() {
    let f = Fixture::new();
    people_project(&f, "mirror", "");
    f.write(
        "people.csv",
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
