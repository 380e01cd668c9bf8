//! The bytes of a COPY: PostgreSQL's binary format when every column of a batch has an exact
//! binary form for its column's type, its text format otherwise.
//!
//! The binary format spares the server parsing text (the larger part of its work in a COPY
//! of numbers and timestamps) and backflow formatting it. It is used only where the value's
//! binary form is the column type's own (an `int8` column gets a big-endian 64-bit integer,
//! a `timestamp` column microseconds since 2000-01-01): a value the column cannot hold is
//! refused by the server exactly as its text would be (a date out of range, a string too long
//! for a `varchar(n)`), and the batch is split to find it. Any other pair of types (an
//! integer into a `text` column, a float into a `numeric` one, a decimal wider than 128 bits,
//! nanosecond timestamps, which the server would round) goes as text, for the whole batch: a
//! COPY has one format.

use std::collections::HashMap;
use std::ops::Range;

use arrow::array::{Array, ArrayRef, AsArray, RecordBatch};
use arrow::datatypes::{
    DataType, Date32Type, Decimal128Type, Float32Type, Float64Type, Int16Type, Int32Type,
    Int64Type, Time64MicrosecondType, TimeUnit, TimestampMicrosecondType,
};
use arrow::error::ArrowError;
use bytes::Bytes;

use crate::destinations::encode::{CopyEncoder, is_nested, json_values, timestamps_micros};

/// The binary format's header: signature, flags, header extension length.
const HEADER: &[u8] = b"PGCOPY\n\xff\r\n\0\0\0\0\0\0\0\0\0";
/// The binary format's trailer: a field count of -1.
const TRAILER: &[u8] = &[0xff, 0xff];
/// Microseconds and days from the Unix epoch to PostgreSQL's (2000-01-01).
const PG_EPOCH_MICROS: i64 = 946_684_800_000_000;
const PG_EPOCH_DAYS: i32 = 10_957;

/// One batch's rows, encoded for COPY.
pub(super) struct Encoded {
    binary: bool,
    data: Bytes,
    /// `data[offsets[i]..offsets[i + 1]]` is row `i`.
    offsets: Vec<usize>,
}

impl Encoded {
    /// Encode `batch` for a COPY into columns of the types `types` (column name → type name,
    /// as `pg_type.typname`). `numbered`: each row starts with its index (an `int4`), for
    /// the staging table's row column.
    pub fn new(
        batch: &RecordBatch,
        types: &HashMap<String, String>,
        numbered: bool,
    ) -> Result<Encoded, ArrowError> {
        if let Some(columns) = binary_columns(batch, types)?
            && let Some((data, offsets)) = encode_binary(&columns, batch.num_rows(), numbered)
        {
            return Ok(Encoded {
                binary: true,
                data: Bytes::from(data),
                offsets,
            });
        }
        let text = CopyEncoder::new(batch)?.encode(batch.num_rows(), numbered)?;
        Ok(Encoded {
            binary: false,
            data: Bytes::from(text.data),
            offsets: text.offsets,
        })
    }

    /// The COPY statement's options for this encoding.
    pub fn options(&self) -> &'static str {
        if self.binary { " (FORMAT binary)" } else { "" }
    }

    /// The COPY data of rows `rows`, in messages of at most `chunk` bytes (no copy of the
    /// rows is made).
    pub fn messages(&self, rows: Range<usize>, chunk: usize) -> Vec<Bytes> {
        let (start, end) = (self.offsets[rows.start], self.offsets[rows.end]);
        let mut out = Vec::with_capacity((end - start) / chunk.max(1) + 3);
        if self.binary {
            out.push(Bytes::from_static(HEADER));
        }
        let mut at = start;
        while at < end {
            let next = (at + chunk).min(end);
            out.push(self.data.slice(at..next));
            at = next;
        }
        if self.binary {
            out.push(Bytes::from_static(TRAILER));
        }
        out
    }
}

/// How one column's values are written in the binary format.
enum Wire {
    Int2(ArrayRef),
    Int4(ArrayRef),
    Int8(ArrayRef),
    Float4(ArrayRef),
    Float8(ArrayRef),
    Bool(ArrayRef),
    /// `text`, `varchar`: the UTF-8 bytes.
    Utf8(ArrayRef),
    Bytea(ArrayRef),
    /// Nested values as JSON text; `jsonb` prefixes its format version (1).
    Json(Vec<Option<String>>, bool),
    Date(ArrayRef),
    /// Microseconds since 2000-01-01 (`timestamp`, `timestamptz`).
    Timestamp(ArrayRef),
    /// Microseconds since midnight.
    Time(ArrayRef),
    /// Decimals (and integers) as base-10000 digits, at the array's scale.
    Numeric(ArrayRef),
}

/// The binary form of every column, or None when one has none (the batch goes as text).
fn binary_columns(
    batch: &RecordBatch,
    types: &HashMap<String, String>,
) -> Result<Option<Vec<Wire>>, ArrowError> {
    use DataType::*;
    let cast = |a: &ArrayRef, to: &DataType| arrow::compute::cast(a, to);
    let mut out = Vec::with_capacity(batch.num_columns());
    for (field, array) in batch.schema().fields().iter().zip(batch.columns()) {
        let Some(pg) = types.get(field.name()) else {
            return Ok(None);
        };
        let column = match (array.data_type(), pg.as_str()) {
            (Int8 | Int16 | UInt8, "int2") => Wire::Int2(cast(array, &Int16)?),
            (Int8 | Int16 | Int32 | UInt8 | UInt16, "int4") => Wire::Int4(cast(array, &Int32)?),
            (Int8 | Int16 | Int32 | Int64 | UInt8 | UInt16 | UInt32, "int8") => {
                Wire::Int8(cast(array, &Int64)?)
            }
            (Float16 | Float32, "float4") => Wire::Float4(cast(array, &Float32)?),
            (Float16 | Float32 | Float64, "float8") => Wire::Float8(cast(array, &Float64)?),
            (Boolean, "bool") => Wire::Bool(array.clone()),
            (Utf8 | LargeUtf8 | Utf8View, "text" | "varchar") => {
                Wire::Utf8(cast(array, &LargeUtf8)?)
            }
            (Binary | LargeBinary | BinaryView | FixedSizeBinary(_), "bytea") => {
                Wire::Bytea(cast(array, &LargeBinary)?)
            }
            (dt, "json" | "jsonb") if is_nested(dt) => {
                Wire::Json(json_values(array)?, pg == "jsonb")
            }
            (Date32, "date") => Wire::Date(array.clone()),
            (
                Timestamp(TimeUnit::Second | TimeUnit::Millisecond | TimeUnit::Microsecond, None),
                "timestamp",
            )
            | (
                Timestamp(
                    TimeUnit::Second | TimeUnit::Millisecond | TimeUnit::Microsecond,
                    Some(_),
                ),
                "timestamptz",
            ) => {
                // Seconds and milliseconds become microseconds exactly (a value past the
                // range of microseconds fails the cast: the batch then goes as text, where
                // the server refuses that row).
                // (The time zone is kept: the values stay UTC instants.)
                match timestamps_micros(array) {
                    Ok(m) if m.null_count() == array.null_count() => Wire::Timestamp(m),
                    _ => return Ok(None),
                }
            }
            (Decimal32(_, s) | Decimal64(_, s) | Decimal128(_, s), "numeric") if *s >= 0 => {
                Wire::Numeric(cast(array, &Decimal128(38, *s))?)
            }
            (Int8 | Int16 | Int32 | Int64 | UInt8 | UInt16 | UInt32 | UInt64, "numeric") => {
                Wire::Numeric(cast(array, &Decimal128(38, 0))?)
            }
            (Time32(_) | Time64(TimeUnit::Microsecond), "time") => {
                Wire::Time(cast(array, &Time64(TimeUnit::Microsecond))?)
            }
            _ => return Ok(None),
        };
        out.push(column);
    }
    Ok(Some(out))
}

/// Every row in the binary format, with each row's start; None when a value has no binary
/// form (a date or timestamp past PostgreSQL's epoch arithmetic).
fn encode_binary(columns: &[Wire], rows: usize, numbered: bool) -> Option<(Vec<u8>, Vec<usize>)> {
    let fields = i16::try_from(columns.len() + usize::from(numbered)).ok()?;
    let mut out = Vec::with_capacity(rows * (2 + columns.len() * 12));
    let mut offsets = Vec::with_capacity(rows + 1);
    for row in 0..rows {
        offsets.push(out.len());
        out.extend_from_slice(&fields.to_be_bytes());
        if numbered {
            out.extend_from_slice(&4i32.to_be_bytes());
            out.extend_from_slice(&i32::try_from(row).ok()?.to_be_bytes());
        }
        for column in columns {
            write_value(column, row, &mut out)?;
        }
    }
    offsets.push(out.len());
    Some((out, offsets))
}

fn write_value(column: &Wire, row: usize, out: &mut Vec<u8>) -> Option<()> {
    fn fixed(out: &mut Vec<u8>, bytes: &[u8]) {
        out.extend_from_slice(&(bytes.len() as i32).to_be_bytes());
        out.extend_from_slice(bytes);
    }
    fn varlen(out: &mut Vec<u8>, prefix: &[u8], bytes: &[u8]) -> Option<()> {
        let len = i32::try_from(prefix.len() + bytes.len()).ok()?;
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(prefix);
        out.extend_from_slice(bytes);
        Some(())
    }
    const NULL: [u8; 4] = (-1i32).to_be_bytes();
    let array: Option<&ArrayRef> = match column {
        Wire::Json(values, _) => {
            if values.get(row).is_none_or(Option::is_none) {
                out.extend_from_slice(&NULL);
                return Some(());
            }
            None
        }
        Wire::Int2(a)
        | Wire::Int4(a)
        | Wire::Int8(a)
        | Wire::Float4(a)
        | Wire::Float8(a)
        | Wire::Bool(a)
        | Wire::Utf8(a)
        | Wire::Bytea(a)
        | Wire::Date(a)
        | Wire::Timestamp(a)
        | Wire::Time(a)
        | Wire::Numeric(a) => Some(a),
    };
    if array.is_some_and(|a| a.is_null(row)) {
        out.extend_from_slice(&NULL);
        return Some(());
    }
    match column {
        Wire::Int2(a) => fixed(out, &a.as_primitive::<Int16Type>().value(row).to_be_bytes()),
        Wire::Int4(a) => fixed(out, &a.as_primitive::<Int32Type>().value(row).to_be_bytes()),
        Wire::Int8(a) => fixed(out, &a.as_primitive::<Int64Type>().value(row).to_be_bytes()),
        Wire::Float4(a) => fixed(
            out,
            &a.as_primitive::<Float32Type>().value(row).to_be_bytes(),
        ),
        Wire::Float8(a) => fixed(
            out,
            &a.as_primitive::<Float64Type>().value(row).to_be_bytes(),
        ),
        Wire::Bool(a) => fixed(out, &[u8::from(a.as_boolean().value(row))]),
        Wire::Utf8(a) => varlen(out, &[], a.as_string::<i64>().value(row).as_bytes())?,
        Wire::Bytea(a) => varlen(out, &[], a.as_binary::<i64>().value(row))?,
        Wire::Json(values, jsonb) => {
            let text = values.get(row)?.as_deref()?;
            let prefix: &[u8] = if *jsonb { &[1] } else { &[] };
            varlen(out, prefix, text.as_bytes())?
        }
        Wire::Date(a) => {
            let days = a.as_primitive::<Date32Type>().value(row);
            fixed(out, &days.checked_sub(PG_EPOCH_DAYS)?.to_be_bytes())
        }
        Wire::Timestamp(a) => {
            let micros = a.as_primitive::<TimestampMicrosecondType>().value(row);
            fixed(out, &micros.checked_sub(PG_EPOCH_MICROS)?.to_be_bytes())
        }
        Wire::Time(a) => fixed(
            out,
            &a.as_primitive::<Time64MicrosecondType>()
                .value(row)
                .to_be_bytes(),
        ),
        Wire::Numeric(a) => {
            let decimals = a.as_primitive::<Decimal128Type>();
            varlen(out, &[], &numeric(decimals.value(row), decimals.scale())?)?
        }
    }
    Some(())
}

/// `value` × 10^-`scale` in `numeric`'s binary form: the number of base-10000 digits, the
/// weight of the first, the sign, the display scale, then the digits.
fn numeric(value: i128, scale: i8) -> Option<Vec<u8>> {
    let scale = usize::try_from(scale).ok()?;
    let digits = value.unsigned_abs().to_string();
    let (int, frac) = if digits.len() > scale {
        digits.split_at(digits.len() - scale)
    } else {
        ("", digits.as_str())
    };
    // The fraction's digits, `scale` of them; the integer part padded on the left and the
    // fraction on the right to whole groups of four.
    let int = format!("{}{int}", "0".repeat((4 - int.len() % 4) % 4));
    let frac = format!("{}{frac}", "0".repeat(scale - frac.len()));
    let frac = format!("{frac}{}", "0".repeat((4 - frac.len() % 4) % 4));
    let mut groups: Vec<i16> = int
        .as_bytes()
        .chunks(4)
        .chain(frac.as_bytes().chunks(4))
        .map(|g| std::str::from_utf8(g).ok()?.parse().ok())
        .collect::<Option<_>>()?;
    let mut weight = i16::try_from(int.len() / 4).ok()? - 1;
    let leading = groups.iter().take_while(|g| **g == 0).count();
    groups.drain(..leading);
    weight -= i16::try_from(leading).ok()?;
    while groups.last() == Some(&0) {
        groups.pop();
    }
    if groups.is_empty() {
        weight = 0;
    }
    let sign: u16 = if value < 0 && !groups.is_empty() {
        0x4000
    } else {
        0
    };
    let mut out = Vec::with_capacity(8 + groups.len() * 2);
    out.extend_from_slice(&i16::try_from(groups.len()).ok()?.to_be_bytes());
    out.extend_from_slice(&weight.to_be_bytes());
    out.extend_from_slice(&sign.to_be_bytes());
    out.extend_from_slice(&i16::try_from(scale).ok()?.to_be_bytes());
    for g in groups {
        out.extend_from_slice(&g.to_be_bytes());
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Int64Array, StringArray, TimestampMicrosecondArray};
    use std::sync::Arc;

    fn types(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    #[test]
    fn exact_pairs_go_binary_and_others_as_text() {
        let batch = RecordBatch::try_from_iter(vec![
            (
                "id",
                Arc::new(Int64Array::from(vec![Some(1), None])) as ArrayRef,
            ),
            (
                "name",
                Arc::new(StringArray::from(vec![Some("a\tb"), Some("")])) as ArrayRef,
            ),
            (
                "at",
                Arc::new(TimestampMicrosecondArray::from(vec![
                    Some(946_684_800_000_001),
                    None,
                ])) as ArrayRef,
            ),
        ])
        .unwrap();
        let bin = Encoded::new(
            &batch,
            &types(&[("id", "int8"), ("name", "text"), ("at", "timestamp")]),
            false,
        )
        .unwrap();
        assert_eq!(bin.options(), " (FORMAT binary)");
        let row0 = &bin.data[bin.offsets[0]..bin.offsets[1]];
        let mut want = vec![0, 3];
        want.extend_from_slice(&8i32.to_be_bytes());
        want.extend_from_slice(&1i64.to_be_bytes());
        want.extend_from_slice(&3i32.to_be_bytes());
        want.extend_from_slice(b"a\tb");
        want.extend_from_slice(&8i32.to_be_bytes());
        want.extend_from_slice(&1i64.to_be_bytes());
        assert_eq!(row0, want.as_slice());
        let messages = bin.messages(0..2, 7);
        assert_eq!(messages.first().map(|m| m.as_ref()), Some(HEADER));
        assert_eq!(messages.last().map(|m| m.as_ref()), Some(TRAILER));
        let body: Vec<u8> = messages[1..messages.len() - 1]
            .iter()
            .flat_map(|m| m.iter().copied())
            .collect();
        assert_eq!(body, &bin.data[..]);

        // An integer into a text column: the whole batch as text, numbered for staging.
        let text = Encoded::new(
            &batch,
            &types(&[("id", "text"), ("name", "text"), ("at", "timestamp")]),
            true,
        )
        .unwrap();
        assert_eq!(text.options(), "");
        assert_eq!(
            &text.data[..],
            b"0\t1\ta\\tb\t2000-01-01T00:00:00.000001\n1\t\\N\t\t\\N\n"
        );
    }

    /// (digits, weight, sign, dscale, base-10000 digits) of a numeric's binary form.
    fn parts(b: &[u8]) -> (i16, i16, u16, i16, Vec<i16>) {
        let at = |i: usize| [b[i], b[i + 1]];
        let n = i16::from_be_bytes(at(0));
        let digits = (0..n as usize)
            .map(|i| i16::from_be_bytes(at(8 + 2 * i)))
            .collect();
        (
            n,
            i16::from_be_bytes(at(2)),
            u16::from_be_bytes(at(4)),
            i16::from_be_bytes(at(6)),
            digits,
        )
    }

    #[test]
    fn numerics_in_base_ten_thousand() {
        assert_eq!(
            parts(&numeric(12_345_678, 3).unwrap()),
            (3, 1, 0, 3, vec![1, 2345, 6780])
        );
        assert_eq!(parts(&numeric(1, 4).unwrap()), (1, -1, 0, 4, vec![1]));
        assert_eq!(parts(&numeric(1, 5).unwrap()), (1, -2, 0, 5, vec![1000]));
        assert_eq!(
            parts(&numeric(-50_000, 0).unwrap()),
            (1, 1, 0x4000, 0, vec![5])
        );
        assert_eq!(parts(&numeric(0, 2).unwrap()), (0, 0, 0, 2, vec![]));
        assert_eq!(
            parts(&numeric(-100, 2).unwrap()),
            (1, 0, 0x4000, 2, vec![1])
        );
        // 17014118346046923173168730371.5884105727
        assert_eq!(
            parts(&numeric(i128::MAX, 10).unwrap()),
            (
                11,
                7,
                0,
                10,
                vec![1, 7014, 1183, 4604, 6923, 1731, 6873, 371, 5884, 1057, 2700]
            )
        );
    }

    #[test]
    fn values_past_the_epoch_arithmetic_go_as_text() {
        let batch = RecordBatch::try_from_iter(vec![(
            "at",
            Arc::new(TimestampMicrosecondArray::from(vec![i64::MIN])) as ArrayRef,
        )])
        .unwrap();
        let e = Encoded::new(&batch, &types(&[("at", "timestamp")]), false).unwrap();
        assert_eq!(e.options(), "");
    }
}
