//! Values as text: the canonical spelling the checks compare, and readers and writers for the
//! file formats (what a file destination holds, and the Parquet models the checks sync from).

use std::path::Path;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, Int64Array, RecordBatch, RecordBatchReader, StringArray};
use arrow::datatypes::{DataType, Field, Schema};

use super::{Kind, NULL};

/// `raw` in the suite's spelling for `kind`: integers and floats as Rust prints them, decimals
/// without an exponent or trailing zeros, booleans as `true`/`false`, timestamps as
/// `YYYY-MM-DD hh:mm:ss[.fraction]` in UTC without a zone suffix and without trailing zeros.
/// Text is compared exactly. A value that cannot be read as its kind is kept as it is, marked.
pub fn canonical(kind: Kind, raw: &str) -> String {
    if raw == NULL {
        return NULL.to_string();
    }
    let bad = || format!("{raw:?} (not a {kind:?})");
    match kind {
        Kind::Text | Kind::Date => raw.to_string(),
        Kind::Int => raw
            .trim()
            .parse::<i128>()
            .map(|v| v.to_string())
            .unwrap_or_else(|_| bad()),
        Kind::Float => raw
            .trim()
            .parse::<f64>()
            .map(|v| format!("{v:?}"))
            .unwrap_or_else(|_| bad()),
        Kind::Decimal => decimal(raw.trim()).unwrap_or_else(bad),
        Kind::Bool => match raw.trim().to_ascii_lowercase().as_str() {
            "t" | "true" | "1" => "true".into(),
            "f" | "false" | "0" => "false".into(),
            _ => bad(),
        },
        Kind::Timestamp => {
            let mut t = raw.trim().replacen('T', " ", 1);
            for zone in ["Z", "+00:00", "+0000", "+00", " UTC"] {
                if let Some(s) = t.strip_suffix(zone) {
                    t = s.to_string();
                    break;
                }
            }
            if t.contains('.') {
                t = t.trim_end_matches('0').trim_end_matches('.').to_string();
            }
            t
        }
    }
}

/// A decimal number (possibly with an exponent: JSON) as plain digits.
fn decimal(raw: &str) -> Option<String> {
    let (negative, unsigned) = match raw.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, raw.strip_prefix('+').unwrap_or(raw)),
    };
    let (mantissa, exponent) = match unsigned.split_once(['e', 'E']) {
        Some((m, e)) => (m, e.parse::<i64>().ok()?),
        None => (unsigned, 0),
    };
    let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    if int.is_empty() && frac.is_empty()
        || !int.chars().chain(frac.chars()).all(|c| c.is_ascii_digit())
    {
        return None;
    }
    let digits = format!("{int}{frac}");
    let point = int.len() as i64 + exponent;
    let (int, frac) = if point <= 0 {
        (
            "0".to_string(),
            format!("{}{digits}", "0".repeat(point.unsigned_abs() as usize)),
        )
    } else if point as usize >= digits.len() {
        (
            format!("{digits}{}", "0".repeat(point as usize - digits.len())),
            String::new(),
        )
    } else {
        (
            digits[..point as usize].to_string(),
            digits[point as usize..].to_string(),
        )
    };
    let int = int.trim_start_matches('0');
    let int = if int.is_empty() { "0" } else { int };
    let frac = frac.trim_end_matches('0');
    let body = if frac.is_empty() {
        int.to_string()
    } else {
        format!("{int}.{frac}")
    };
    Some(if negative && body != "0" {
        format!("-{body}")
    } else {
        body
    })
}

/// A file's contents as text: column names, rows (NULL as [`NULL`]) and, for Parquet, the
/// Arrow types.
#[derive(Debug, Default)]
pub struct Table {
    pub columns: Vec<String>,
    pub types: Option<Vec<String>>,
    pub rows: Vec<Vec<String>>,
}

impl Table {
    /// The rows' values of `columns` ([`NULL`] for a column the file lacks).
    pub fn project(&self, columns: &[&str]) -> Vec<Vec<String>> {
        let at: Vec<Option<usize>> = columns
            .iter()
            .map(|c| self.columns.iter().position(|n| n == c))
            .collect();
        self.rows
            .iter()
            .map(|r| {
                at.iter()
                    .map(|i| i.map_or(NULL.to_string(), |i| r[i].clone()))
                    .collect()
            })
            .collect()
    }
}

pub fn read_parquet(path: &Path) -> Table {
    let file = std::fs::File::open(path).unwrap();
    let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
        .unwrap()
        .build()
        .unwrap();
    let schema = reader.schema();
    let mut table = Table {
        columns: schema.fields().iter().map(|f| f.name().clone()).collect(),
        types: Some(
            schema
                .fields()
                .iter()
                .map(|f| f.data_type().to_string())
                .collect(),
        ),
        rows: Vec::new(),
    };
    for batch in reader {
        let batch = batch.unwrap();
        let columns: Vec<ArrayRef> = batch
            .columns()
            .iter()
            .map(|c| arrow::compute::cast(c, &DataType::Utf8).unwrap())
            .collect();
        for row in 0..batch.num_rows() {
            table.rows.push(
                columns
                    .iter()
                    .map(|c| {
                        let s = c.as_any().downcast_ref::<StringArray>().unwrap();
                        if s.is_null(row) {
                            NULL.to_string()
                        } else {
                            s.value(row).to_string()
                        }
                    })
                    .collect(),
            );
        }
    }
    table
}

/// A CSV file as written: every field as text, an empty field as NULL (CSV cannot tell them
/// apart).
pub fn read_csv(path: &Path) -> Table {
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(true)
        .from_path(path)
        .unwrap();
    let columns = reader
        .headers()
        .unwrap()
        .iter()
        .map(str::to_string)
        .collect();
    let rows = reader
        .records()
        .map(|r| {
            r.unwrap()
                .iter()
                .map(|v| {
                    if v.is_empty() {
                        NULL.to_string()
                    } else {
                        v.to_string()
                    }
                })
                .collect()
        })
        .collect();
    Table {
        columns,
        types: None,
        rows,
    }
}

/// JSON lines: strings as they are, numbers exactly as written (not through a float), other
/// values as JSON, `null` and absent fields as NULL.
pub fn read_jsonl(path: &Path) -> Table {
    let text = std::fs::read_to_string(path).unwrap();
    let mut columns: Vec<String> = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let o: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        for k in o.keys() {
            if !columns.contains(k) {
                columns.push(k.clone());
            }
        }
    }
    // Arrow's JSON reader keeps a number's text when it is read into a string column.
    let schema = Arc::new(Schema::new(
        columns
            .iter()
            .map(|c| Field::new(c, DataType::Utf8, true))
            .collect::<Vec<_>>(),
    ));
    let reader = arrow::json::ReaderBuilder::new(schema)
        .with_coerce_primitive(true)
        .build(std::io::Cursor::new(text.into_bytes()))
        .unwrap();
    let mut rows = Vec::new();
    for batch in reader {
        let batch = batch.unwrap();
        for row in 0..batch.num_rows() {
            rows.push(
                batch
                    .columns()
                    .iter()
                    .map(|c| {
                        let s = c.as_any().downcast_ref::<StringArray>().unwrap();
                        if s.is_null(row) {
                            NULL.to_string()
                        } else {
                            s.value(row).to_string()
                        }
                    })
                    .collect(),
            );
        }
    }
    Table {
        columns,
        types: None,
        rows,
    }
}

/// A JSON value as text: a string as itself, `null` as NULL, anything else as JSON.
pub fn json_text(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::Null => NULL.to_string(),
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

pub fn read_table(path: &Path, format: &str) -> Table {
    match format {
        "parquet" => read_parquet(path),
        "csv" => read_csv(path),
        _ => read_jsonl(path),
    }
}

/// Write `columns` ([`super::KEY`] a 64-bit integer, the others text) and `rows` as a file of
/// `format`.
pub fn write_table(path: &Path, format: &str, columns: &[String], rows: &[Vec<String>]) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let cell = |v: &String| (v != NULL).then(|| v.clone());
    match format {
        "parquet" => {
            let mut fields = Vec::new();
            let mut arrays: Vec<ArrayRef> = Vec::new();
            for (i, c) in columns.iter().enumerate() {
                if c == super::KEY {
                    fields.push(Field::new(c, DataType::Int64, true));
                    arrays.push(Arc::new(Int64Array::from(
                        rows.iter()
                            .map(|r| cell(&r[i]).map(|v| v.parse::<i64>().unwrap()))
                            .collect::<Vec<_>>(),
                    )));
                } else {
                    fields.push(Field::new(c, DataType::Utf8, true));
                    arrays.push(Arc::new(StringArray::from(
                        rows.iter().map(|r| cell(&r[i])).collect::<Vec<_>>(),
                    )));
                }
            }
            let batch = RecordBatch::try_new(Arc::new(Schema::new(fields)), arrays).unwrap();
            write_parquet(path, &batch);
        }
        "csv" => {
            let mut w = csv::Writer::from_path(path).unwrap();
            w.write_record(columns).unwrap();
            for r in rows {
                w.write_record(r.iter().map(|v| if v == NULL { "" } else { v.as_str() }))
                    .unwrap();
            }
            w.flush().unwrap();
        }
        _ => {
            let mut out = String::new();
            for r in rows {
                let mut o = serde_json::Map::new();
                for (i, c) in columns.iter().enumerate() {
                    let v = match cell(&r[i]) {
                        None => serde_json::Value::Null,
                        Some(v) if c == super::KEY => {
                            serde_json::Value::from(v.parse::<i64>().unwrap())
                        }
                        Some(v) => serde_json::Value::from(v),
                    };
                    o.insert(c.clone(), v);
                }
                out.push_str(&serde_json::Value::Object(o).to_string());
                out.push('\n');
            }
            std::fs::write(path, out).unwrap();
        }
    }
}

pub fn write_parquet(path: &Path, batch: &RecordBatch) {
    let file = std::fs::File::create(path).unwrap();
    let mut w = parquet::arrow::ArrowWriter::try_new(file, batch.schema(), None).unwrap();
    w.write(batch).unwrap();
    w.close().unwrap();
}

#[test]
fn canonical_spellings() {
    assert_eq!(canonical(Kind::Decimal, "-1e-10"), "-0.0000000001");
    assert_eq!(canonical(Kind::Decimal, "1234.5000000000"), "1234.5");
    assert_eq!(canonical(Kind::Decimal, "1.2345E3"), "1234.5");
    assert_eq!(canonical(Kind::Decimal, "0.0000000000"), "0");
    assert_eq!(canonical(Kind::Decimal, "-0"), "0");
    assert_eq!(canonical(Kind::Decimal, "12"), "12");
    assert_eq!(
        canonical(Kind::Float, "1.5e+300"),
        canonical(Kind::Float, "1.5e300")
    );
    assert_eq!(
        canonical(Kind::Timestamp, "2024-06-01T10:00:00.500Z"),
        canonical(Kind::Timestamp, "2024-06-01 10:00:00.5+00")
    );
    assert_eq!(
        canonical(Kind::Timestamp, "0001-01-01 00:00:00"),
        "0001-01-01 00:00:00"
    );
    assert_eq!(canonical(Kind::Bool, "t"), "true");
    assert_eq!(canonical(Kind::Int, "x"), "\"x\" (not a Int)");
}
