//! Turning Arrow values into what SQL databases read: PostgreSQL's COPY text format and MySQL
//! statement parameters. Nested values (lists, structs, maps) become JSON text.

use std::fmt::Write as _;

use arrow::array::{Array, ArrayRef, AsArray, RecordBatch};
use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use arrow::error::ArrowError;
use arrow::util::display::{ArrayFormatter, FormatOptions};
use std::sync::Arc;

/// Whether a type is written as JSON.
pub fn is_nested(dt: &DataType) -> bool {
    matches!(
        dt,
        DataType::List(_)
            | DataType::LargeList(_)
            | DataType::ListView(_)
            | DataType::LargeListView(_)
            | DataType::FixedSizeList(_, _)
            | DataType::Struct(_)
            | DataType::Map(_, _)
    )
}

/// Each value of a nested column as JSON text (None for NULL).
pub fn json_values(array: &ArrayRef) -> Result<Vec<Option<String>>, ArrowError> {
    let schema = Arc::new(Schema::new(vec![Field::new(
        "v",
        array.data_type().clone(),
        true,
    )]));
    let batch = RecordBatch::try_new(schema, vec![array.clone()])?;
    let mut buf = Vec::new();
    {
        let mut w = arrow::json::LineDelimitedWriter::new(&mut buf);
        w.write(&batch)?;
        w.finish()?;
    }
    // Each line is `{"v":<value>}`, or `{}` for NULL. The value's text is cut out as the writer
    // wrote it: parsing it back would turn its numbers into floats (a decimal(38,10) or a big
    // integer inside a struct would lose digits).
    let mut out = Vec::with_capacity(array.len());
    for line in buf.split(|b| *b == b'\n').take(array.len()) {
        let line = std::str::from_utf8(line).map_err(|e| ArrowError::JsonError(e.to_string()))?;
        let value = match line
            .strip_prefix("{\"v\":")
            .and_then(|t| t.strip_suffix('}'))
        {
            Some("null") => None,
            Some(v) => Some(v.to_string()),
            None if line == "{}" => None,
            None => {
                return Err(ArrowError::JsonError(format!(
                    "unexpected JSON line from the writer: {line}"
                )));
            }
        };
        out.push(value);
    }
    Ok(out)
}

/// One column, ready to be written as text per row.
pub enum TextColumn {
    Str(ArrayRef),
    Bool(ArrayRef),
    Binary(ArrayRef),
    Json(Vec<Option<String>>),
    Formatted(ArrayRef),
}

impl TextColumn {
    pub fn new(array: &ArrayRef) -> Result<TextColumn, ArrowError> {
        use DataType::*;
        Ok(match array.data_type() {
            Utf8 | LargeUtf8 | Utf8View => {
                TextColumn::Str(arrow::compute::cast(array, &LargeUtf8)?)
            }
            Boolean => TextColumn::Bool(array.clone()),
            Binary | LargeBinary | BinaryView | FixedSizeBinary(_) => {
                TextColumn::Binary(arrow::compute::cast(array, &LargeBinary)?)
            }
            dt if is_nested(dt) => TextColumn::Json(json_values(array)?),
            // Numbers, decimals, dates and times: Arrow's display is PostgreSQL's input.
            _ => TextColumn::Formatted(array.clone()),
        })
    }

    fn is_null(&self, row: usize) -> bool {
        match self {
            TextColumn::Str(a)
            | TextColumn::Bool(a)
            | TextColumn::Binary(a)
            | TextColumn::Formatted(a) => a.is_null(row),
            TextColumn::Json(v) => v.get(row).is_none_or(Option::is_none),
        }
    }
}

/// Writes rows in PostgreSQL's COPY text format: tab-separated, `\N` for NULL, backslash
/// escapes for backslash, tab, newline and carriage return.
pub struct CopyEncoder {
    columns: Vec<TextColumn>,
}

static FORMAT: std::sync::LazyLock<FormatOptions<'static>> = std::sync::LazyLock::new(|| {
    FormatOptions::default()
        .with_display_error(false)
        .with_timestamp_format(Some("%Y-%m-%dT%H:%M:%S%.f"))
        .with_timestamp_tz_format(Some("%Y-%m-%dT%H:%M:%S%.f%:z"))
});

/// Encoded rows: `data[offsets[i]..offsets[i + 1]]` is row `i`, newline included.
pub struct EncodedRows {
    pub data: Vec<u8>,
    pub offsets: Vec<usize>,
}

impl EncodedRows {
    #[cfg(test)]
    pub fn rows(&self, rows: std::ops::Range<usize>) -> &[u8] {
        &self.data[self.offsets[rows.start]..self.offsets[rows.end]]
    }
}

impl CopyEncoder {
    pub fn new(batch: &RecordBatch) -> Result<CopyEncoder, ArrowError> {
        let columns = batch
            .columns()
            .iter()
            .map(TextColumn::new)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(CopyEncoder { columns })
    }

    /// Every row; `numbered`: each prefixed by its index and a tab.
    pub fn encode(&self, rows: usize, numbered: bool) -> Result<EncodedRows, ArrowError> {
        let formatters = self
            .columns
            .iter()
            .map(|c| match c {
                TextColumn::Formatted(a) => ArrayFormatter::try_new(a.as_ref(), &FORMAT).map(Some),
                _ => Ok(None),
            })
            .collect::<Result<Vec<_>, _>>()?;
        let mut out = Vec::with_capacity(rows * 64);
        let mut offsets = Vec::with_capacity(rows + 1);
        let mut scratch = String::new();
        for row in 0..rows {
            offsets.push(out.len());
            if numbered {
                let _ = std::io::Write::write_fmt(&mut out, format_args!("{row}"));
            }
            for (i, col) in self.columns.iter().enumerate() {
                if numbered || i > 0 {
                    out.push(b'\t');
                }
                if col.is_null(row) {
                    out.extend_from_slice(b"\\N");
                    continue;
                }
                match col {
                    TextColumn::Str(a) => escape(a.as_string::<i64>().value(row), &mut out),
                    TextColumn::Bool(a) => out.push(if a.as_boolean().value(row) {
                        b't'
                    } else {
                        b'f'
                    }),
                    TextColumn::Binary(a) => {
                        out.extend_from_slice(b"\\\\x");
                        for b in a.as_binary::<i64>().value(row) {
                            out.extend_from_slice(format!("{b:02x}").as_bytes());
                        }
                    }
                    TextColumn::Json(v) => escape(v[row].as_deref().unwrap_or_default(), &mut out),
                    TextColumn::Formatted(_) => {
                        scratch.clear();
                        if let Some(f) = &formatters[i] {
                            let _ = write!(scratch, "{}", f.value(row));
                        }
                        escape(&scratch, &mut out);
                    }
                }
            }
            out.push(b'\n');
        }
        offsets.push(out.len());
        Ok(EncodedRows { data: out, offsets })
    }
}

fn escape(s: &str, out: &mut Vec<u8>) {
    for &b in s.as_bytes() {
        match b {
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\t' => out.extend_from_slice(b"\\t"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            _ => out.push(b),
        }
    }
}

/// The unit-free microseconds of a timestamp column, with the timezone kept (the values are
/// UTC instants when there is one, wall-clock times when there is none).
pub fn timestamps_micros(array: &ArrayRef) -> Result<ArrayRef, ArrowError> {
    match array.data_type() {
        DataType::Timestamp(_, tz) => arrow::compute::cast(
            array,
            &DataType::Timestamp(TimeUnit::Microsecond, tz.clone()),
        ),
        dt => Err(ArrowError::CastError(format!("{dt} is not a timestamp"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{BooleanArray, Int64Array, ListArray, StringArray};
    use arrow::datatypes::Int32Type;

    #[test]
    fn nested_values_keep_every_digit() {
        use arrow::array::{Decimal128Array, StructArray};
        let decimals = Decimal128Array::from(vec![
            Some(123_456_789_012_345_678_901_234_567_891_i128),
            None,
        ])
        .with_precision_and_scale(38, 10)
        .unwrap();
        let big = Int64Array::from(vec![Some(i64::MIN), Some(9_007_199_254_740_993)]);
        let s: ArrayRef = Arc::new(StructArray::from(vec![
            (
                Arc::new(Field::new("d", DataType::Decimal128(38, 10), true)),
                Arc::new(decimals) as ArrayRef,
            ),
            (
                Arc::new(Field::new("n", DataType::Int64, true)),
                Arc::new(big) as ArrayRef,
            ),
        ]));
        let got = json_values(&s).unwrap();
        assert_eq!(
            got,
            vec![
                Some(r#"{"d":12345678901234567890.1234567891,"n":-9223372036854775808}"#.into()),
                Some(r#"{"n":9007199254740993}"#.into()),
            ]
        );
        let list: ArrayRef = Arc::new(ListArray::from_iter_primitive::<Int32Type, _, _>(vec![
            Some(vec![Some(1), None]),
            None,
        ]));
        assert_eq!(
            json_values(&list).unwrap(),
            vec![Some("[1,null]".into()), None]
        );
    }

    #[test]
    fn copy_text_escapes_and_nulls() {
        let list = ListArray::from_iter_primitive::<Int32Type, _, _>(vec![
            Some(vec![Some(1), None]),
            None,
        ]);
        let batch = RecordBatch::try_from_iter(vec![
            (
                "a",
                Arc::new(StringArray::from(vec![Some("x\ty\\z\n"), None])) as ArrayRef,
            ),
            (
                "b",
                Arc::new(Int64Array::from(vec![
                    Some(9_007_199_254_740_993),
                    Some(-1),
                ])),
            ),
            ("c", Arc::new(BooleanArray::from(vec![Some(true), None]))),
            ("d", Arc::new(list)),
        ])
        .unwrap();
        let plain = CopyEncoder::new(&batch).unwrap().encode(2, false).unwrap();
        assert_eq!(plain.rows(1..2), b"\\N\t-1\t\\N\t\\N\n");
        let enc = CopyEncoder::new(&batch).unwrap().encode(2, true).unwrap();
        assert_eq!(enc.rows(1..2), b"1\t\\N\t-1\t\\N\t\\N\n");
        assert_eq!(
            String::from_utf8(enc.data).unwrap(),
            "0\tx\\ty\\\\z\\n\t9007199254740993\tt\t[1,null]\n1\t\\N\t-1\t\\N\t\\N\n"
        );
    }
}
