//! Entry points for coverage-guided fuzzing (`fuzz/`, run with cargo-fuzz) and for replaying
//! its corpus in the test suite (`tests/e2e/fuzz_corpus.rs`). Each takes any bytes, must
//! never panic, and checks an invariant of what it exercises; a broken invariant panics, which
//! is what the fuzzer reports.

use std::path::Path;

use datafusion::sql::sqlparser::ast::{Expr, SelectItem, SetExpr, Statement, Value};
use datafusion::sql::sqlparser::dialect::{
    Dialect, MySqlDialect, PostgreSqlDialect, SQLiteDialect,
};
use datafusion::sql::sqlparser::parser::Parser;

use crate::config::{ConfigText, ProjectConfig};
use crate::hub::state::HubManifest;
use crate::sources::quarantine::{self, CsvFile, CsvShape, Quarantine};
use crate::state::Manifest;

/// `backflow.toml`: parsing and validation never panic, whatever the text.
pub fn config(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let path = Path::new("backflow.toml");
    if let Ok(config) = ProjectConfig::parse(&text, path) {
        let ct = ConfigText {
            path: path.to_path_buf(),
            text: text.to_string(),
        };
        let _ = crate::config::validate(&config, &["customers".to_string()], &ct);
        for entity in config.entities.values() {
            for f in entity.fields.keys() {
                let _ = entity.authority(f);
                let _ = entity.merge_policy(f);
            }
            for s in entity.sources.values() {
                let _ = s.writeback_fields();
            }
        }
    }
}

/// State manifests (a sync's, an entity's): what decodes encodes back to a manifest that
/// decodes the same (the checksum covers exactly what is written).
pub fn manifest(data: &[u8]) {
    use crate::state::Versioned;
    for version in [0, 1, 2, 7] {
        if let Ok(m) = crate::state::decode::<Manifest>(data, version, "sync \"f\"", "m.json") {
            let mut again = m.clone();
            again.set_checksum(Some(again.content_checksum()));
            let bytes = serde_json::to_vec(&again).unwrap_or_default();
            let back = crate::state::decode::<Manifest>(&bytes, version, "s", "m")
                .unwrap_or_else(|e| panic!("a decoded manifest does not decode again: {e}"));
            assert_eq!(back.snapshot, m.snapshot);
            assert_eq!(back.watermark, m.watermark);
        }
        if let Ok(m) = crate::state::decode::<HubManifest>(data, version, "entity \"f\"", "m.json")
        {
            let bytes = serde_json::to_vec(&m).unwrap_or_default();
            let back = crate::state::decode::<HubManifest>(&bytes, version, "e", "m")
                .unwrap_or_else(|e| panic!("a decoded manifest does not decode again: {e}"));
            assert_eq!(back.sources, m.sources);
            assert_eq!(back.golden, m.golden);
        }
    }
}

/// CSV ingest: scanning never fails on content, and a clean copy keeps exactly the good rows
/// (none bad left, none good lost), with and without checking values against column types
/// inferred from the first rows; every bad row's line is within the file.
pub fn csv(data: &[u8]) {
    let Ok(dir) = tempfile::tempdir() else { return };
    let path = dir.path().join("in.csv");
    if std::fs::write(&path, data).is_err() {
        return;
    }
    let file = CsvFile {
        path: path.clone(),
        name: "in.csv".into(),
    };
    let lines = data.iter().filter(|b| **b == b'\n').count() as u64 + 1;
    for delimiter in [b',', b';'] {
        let shape = CsvShape {
            has_header: true,
            delimiter,
        };
        let types = quarantine::infer(std::slice::from_ref(&file), shape, 3).ok();
        for columns in [None, types.as_ref()] {
            let mut found = Quarantine::default();
            let Ok(scanned) = quarantine::scan(&file, shape, columns, "f", &mut found) else {
                // Only a header that is not UTF-8 (or an I/O error) stops a scan.
                continue;
            };
            let clean = CsvFile {
                path: dir.path().join("clean.csv"),
                name: "clean.csv".into(),
            };
            if quarantine::clean_copy(&path, shape, columns, &clean.path).is_err() {
                continue;
            }
            let mut again = Quarantine::default();
            if let Ok(kept) = quarantine::scan(&clean, shape, columns, "f", &mut again) {
                assert_eq!(
                    again.count, 0,
                    "a clean copy still has bad rows: {:?}",
                    again.rows
                );
                assert_eq!(
                    kept.rows,
                    scanned.rows - scanned.left_out(),
                    "a clean copy lost or gained rows"
                );
            }
            for row in &found.rows {
                assert!(
                    row.line >= 1 && row.line <= lines,
                    "{row:?} of {lines} lines"
                );
            }
        }
    }
}

fn parse_identifier(dialect: &dyn Dialect, quoted: &str) -> Option<String> {
    let sql = format!("SELECT {quoted} FROM t");
    let statements = Parser::parse_sql(dialect, &sql).ok()?;
    let [Statement::Query(q)] = statements.as_slice() else {
        panic!("{sql:?} is not one query");
    };
    let SetExpr::Select(select) = q.body.as_ref() else {
        panic!("{sql:?} is not a select");
    };
    match select.projection.as_slice() {
        [SelectItem::UnnamedExpr(Expr::Identifier(ident))] => Some(ident.value.clone()),
        other => panic!("{sql:?} selects {other:?}, not one identifier"),
    }
}

/// Identifier and literal quoting: a quoted name reads back as exactly that name, one
/// identifier, never anything more (no way out of the quotes).
pub fn quoting(data: &[u8]) {
    let name = String::from_utf8_lossy(data).replace('\0', "");
    if name.is_empty() {
        return;
    }
    let quoted = [
        (
            &PostgreSqlDialect {} as &dyn Dialect,
            crate::databases::postgres::quote(&name),
        ),
        (&MySqlDialect {}, crate::databases::mysql::quote(&name)),
        (&SQLiteDialect {}, crate::destinations::sqlite_quote(&name)),
        (&PostgreSqlDialect {}, crate::names::quote_ident(&name)),
    ];
    for (dialect, q) in quoted {
        if let Some(got) = parse_identifier(dialect, &q) {
            assert_eq!(got, name, "{q:?} reads back as another name");
        }
    }
    let literal = crate::names::quote_literal(&name);
    if let Ok(statements) = Parser::parse_sql(&PostgreSqlDialect {}, &format!("SELECT {literal}")) {
        let [Statement::Query(q)] = statements.as_slice() else {
            panic!("{literal:?} is not one query");
        };
        if let SetExpr::Select(select) = q.body.as_ref()
            && let [SelectItem::UnnamedExpr(Expr::Value(v))] = select.projection.as_slice()
        {
            if let Value::SingleQuotedString(s) = &v.value {
                assert_eq!(s, &name);
            }
        } else {
            panic!("{literal:?} is not one literal");
        }
    }
}

/// Path templates: a value put into a URL path stays one path segment (a key cannot reach
/// another path), and templates render without panicking.
pub fn templates(data: &[u8]) {
    use crate::destinations::http_template as t;
    let text = String::from_utf8_lossy(data);
    let (template, value) = text.split_once('\u{1}').unwrap_or(("/items/{key}", &text));
    let record = t::Record::with_fields(
        serde_json::Map::from_iter([(
            "id".to_string(),
            serde_json::Value::String(value.to_string()),
        )]),
        serde_json::Value::String(value.to_string()),
        "k".into(),
    );
    let ids = vec!["id".to_string()];
    let ctx = t::Context {
        key: &ids,
        object: "things",
    };
    let _ = t::unknown_placeholders(template);
    let _ = t::render(
        &serde_json::Value::String(template.to_string()),
        &record,
        &ctx,
    );
    match t::render_path("/items/{key}", Some(&record), &ctx) {
        Ok(path) => {
            assert_eq!(path.matches('/').count(), 2, "{value:?} became {path:?}");
            assert!(!path.contains(['?', '#']), "{value:?} became {path:?}");
            assert!(
                !matches!(path.rsplit('/').next(), Some("" | "." | "..")),
                "{value:?} became {path:?}"
            );
        }
        Err(_) => assert!(
            matches!(value, "" | "." | ".."),
            "{value:?} was refused as a path segment"
        ),
    }
    let _ = t::render_path(template, Some(&record), &ctx);
}
