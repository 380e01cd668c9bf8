//! Decoding `COPY (…) TO STDOUT (FORMAT binary)` into Arrow batches.
//!
//! The format: an 11-byte signature, a flags word and a header extension, then one tuple per
//! row (a 16-bit field count, and per field a 32-bit length, -1 for NULL, and the value in the
//! type's binary send format), and a field count of -1 at the end. All integers are big-endian.
//! The bytes arrive in chunks of any size; a tuple is decoded once all of it has arrived.

use std::fmt::Write as _;
use std::sync::Arc;

use arrow::array::{
    ArrayBuilder, ArrayRef, BinaryBuilder, BooleanBuilder, Date32Builder, Decimal128Builder,
    Decimal256Builder, Float32Builder, Float64Builder, Int16Builder, Int32Builder, Int64Builder,
    IntervalMonthDayNanoBuilder, RecordBatch, RecordBatchOptions, StringBuilder,
    Time64NanosecondBuilder, TimestampMicrosecondBuilder, UInt32Builder,
};
use arrow::datatypes::{Decimal128Type, Decimal256Type, IntervalMonthDayNano, SchemaRef};
use bytes::{Buf, BytesMut};

use super::types::Kind;

const SIGNATURE: &[u8] = b"PGCOPY\n\xff\r\n\0";
/// Microseconds from 1970-01-01 (Arrow's epoch) to 2000-01-01 (PostgreSQL's).
const EPOCH_SHIFT_MICROS: i64 = 946_684_800_000_000;
/// Days from 1970-01-01 to 2000-01-01.
const EPOCH_SHIFT_DAYS: i32 = 10_957;

/// A value that cannot be read as its column's Arrow type.
#[derive(Debug, Clone, PartialEq)]
pub struct BadValue {
    /// The column's index in the select list.
    pub column: usize,
    /// The row's number in this read, from 1.
    pub row: u64,
    pub reason: String,
}

enum Builder {
    Bool(BooleanBuilder),
    Int2(Int16Builder),
    Int4(Int32Builder),
    Int8(Int64Builder),
    Oid(UInt32Builder),
    Float4(Float32Builder),
    Float8(Float64Builder),
    Decimal128(Decimal128Builder, u8, i8),
    Decimal256(Decimal256Builder, u8, i8),
    Text(StringBuilder),
    Jsonb(StringBuilder),
    Uuid(StringBuilder),
    Bytea(BinaryBuilder),
    Date(Date32Builder),
    Time(Time64NanosecondBuilder),
    Timestamp(TimestampMicrosecondBuilder, bool),
    Interval(IntervalMonthDayNanoBuilder),
}

impl Builder {
    fn new(kind: Kind, rows: usize) -> Builder {
        match kind {
            Kind::Bool => Builder::Bool(BooleanBuilder::with_capacity(rows)),
            Kind::Int2 => Builder::Int2(Int16Builder::with_capacity(rows)),
            Kind::Int4 => Builder::Int4(Int32Builder::with_capacity(rows)),
            Kind::Int8 => Builder::Int8(Int64Builder::with_capacity(rows)),
            Kind::Oid => Builder::Oid(UInt32Builder::with_capacity(rows)),
            Kind::Float4 => Builder::Float4(Float32Builder::with_capacity(rows)),
            Kind::Float8 => Builder::Float8(Float64Builder::with_capacity(rows)),
            Kind::Decimal128(p, s) => {
                Builder::Decimal128(Decimal128Builder::with_capacity(rows), p, s)
            }
            Kind::Decimal256(p, s) => {
                Builder::Decimal256(Decimal256Builder::with_capacity(rows), p, s)
            }
            Kind::Text | Kind::AsText => {
                Builder::Text(StringBuilder::with_capacity(rows, rows * 16))
            }
            Kind::Jsonb => Builder::Jsonb(StringBuilder::with_capacity(rows, rows * 32)),
            Kind::Uuid => Builder::Uuid(StringBuilder::with_capacity(rows, rows * 36)),
            Kind::Bytea => Builder::Bytea(BinaryBuilder::with_capacity(rows, rows * 16)),
            Kind::Date => Builder::Date(Date32Builder::with_capacity(rows)),
            Kind::Time => Builder::Time(Time64NanosecondBuilder::with_capacity(rows)),
            Kind::Timestamp => {
                Builder::Timestamp(TimestampMicrosecondBuilder::with_capacity(rows), false)
            }
            Kind::Timestamptz => {
                Builder::Timestamp(TimestampMicrosecondBuilder::with_capacity(rows), true)
            }
            Kind::Interval => Builder::Interval(IntervalMonthDayNanoBuilder::with_capacity(rows)),
        }
    }

    fn append_null(&mut self) {
        match self {
            Builder::Bool(b) => b.append_null(),
            Builder::Int2(b) => b.append_null(),
            Builder::Int4(b) => b.append_null(),
            Builder::Int8(b) => b.append_null(),
            Builder::Oid(b) => b.append_null(),
            Builder::Float4(b) => b.append_null(),
            Builder::Float8(b) => b.append_null(),
            Builder::Decimal128(b, ..) => b.append_null(),
            Builder::Decimal256(b, ..) => b.append_null(),
            Builder::Text(b) | Builder::Jsonb(b) | Builder::Uuid(b) => b.append_null(),
            Builder::Bytea(b) => b.append_null(),
            Builder::Date(b) => b.append_null(),
            Builder::Time(b) => b.append_null(),
            Builder::Timestamp(b, _) => b.append_null(),
            Builder::Interval(b) => b.append_null(),
        }
    }

    /// Append the value whose binary form is `v`.
    fn append(&mut self, v: &[u8]) -> Result<(), String> {
        match self {
            Builder::Bool(b) => b.append_value(fixed::<1>(v)?[0] != 0),
            Builder::Int2(b) => b.append_value(i16::from_be_bytes(fixed(v)?)),
            Builder::Int4(b) => b.append_value(i32::from_be_bytes(fixed(v)?)),
            Builder::Int8(b) => b.append_value(i64::from_be_bytes(fixed(v)?)),
            Builder::Oid(b) => b.append_value(u32::from_be_bytes(fixed(v)?)),
            Builder::Float4(b) => b.append_value(f32::from_be_bytes(fixed(v)?)),
            Builder::Float8(b) => b.append_value(f64::from_be_bytes(fixed(v)?)),
            Builder::Decimal128(b, p, s) => {
                let text = numeric_text(v)?;
                let x = arrow::compute::kernels::cast_utils::parse_decimal::<Decimal128Type>(
                    &text, *p, *s,
                )
                .map_err(|_| format!("{text} does not fit numeric({p},{s})"))?;
                b.append_value(x)
            }
            Builder::Decimal256(b, p, s) => {
                let text = numeric_text(v)?;
                let x = arrow::compute::kernels::cast_utils::parse_decimal::<Decimal256Type>(
                    &text, *p, *s,
                )
                .map_err(|_| format!("{text} does not fit numeric({p},{s})"))?;
                b.append_value(x)
            }
            Builder::Text(b) => b.append_value(utf8(v)?),
            Builder::Jsonb(b) => match v.split_first() {
                Some((1, text)) => b.append_value(utf8(text)?),
                _ => return Err("jsonb value in an unknown binary version".into()),
            },
            Builder::Uuid(b) => {
                let bytes: [u8; 16] = fixed(v)?;
                let mut text = uuid::Uuid::encode_buffer();
                b.append_value(
                    uuid::Uuid::from_bytes(bytes)
                        .hyphenated()
                        .encode_lower(&mut text),
                )
            }
            Builder::Bytea(b) => b.append_value(v),
            Builder::Date(b) => {
                let days = i32::from_be_bytes(fixed(v)?);
                match days {
                    i32::MAX => return Err("the date infinity has no Arrow equivalent".into()),
                    i32::MIN => return Err("the date -infinity has no Arrow equivalent".into()),
                    d => b.append_value(d.checked_add(EPOCH_SHIFT_DAYS).ok_or_else(|| {
                        format!("the date {d} days after 2000-01-01 is out of range")
                    })?),
                }
            }
            Builder::Time(b) => {
                let micros = i64::from_be_bytes(fixed(v)?);
                b.append_value(micros.checked_mul(1000).ok_or("time out of range")?)
            }
            Builder::Timestamp(b, tz) => {
                let micros = i64::from_be_bytes(fixed(v)?);
                let kind = if *tz { "timestamptz" } else { "timestamp" };
                match micros {
                    i64::MAX => return Err(format!("the {kind} infinity has no Arrow equivalent")),
                    i64::MIN => {
                        return Err(format!("the {kind} -infinity has no Arrow equivalent"));
                    }
                    m => b.append_value(m.checked_add(EPOCH_SHIFT_MICROS).ok_or_else(|| {
                        format!(
                            "the {kind} {m} microseconds after 2000-01-01 is past Arrow's range (year 294247)"
                        )
                    })?),
                }
            }
            Builder::Interval(b) => {
                let bytes: [u8; 16] = fixed(v)?;
                let mut v = &bytes[..];
                let (micros, days, months) = (v.get_i64(), v.get_i32(), v.get_i32());
                let nanos = micros
                    .checked_mul(1000)
                    .ok_or("interval out of Arrow's range")?;
                b.append_value(IntervalMonthDayNano::new(months, days, nanos))
            }
        }
        Ok(())
    }

    fn finish(&mut self) -> Result<ArrayRef, arrow::error::ArrowError> {
        Ok(match self {
            Builder::Bool(b) => Arc::new(b.finish()),
            Builder::Int2(b) => Arc::new(b.finish()),
            Builder::Int4(b) => Arc::new(b.finish()),
            Builder::Int8(b) => Arc::new(b.finish()),
            Builder::Oid(b) => Arc::new(b.finish()),
            Builder::Float4(b) => Arc::new(b.finish()),
            Builder::Float8(b) => Arc::new(b.finish()),
            Builder::Decimal128(b, p, s) => Arc::new(b.finish().with_precision_and_scale(*p, *s)?),
            Builder::Decimal256(b, p, s) => Arc::new(b.finish().with_precision_and_scale(*p, *s)?),
            Builder::Text(b) | Builder::Jsonb(b) | Builder::Uuid(b) => Arc::new(b.finish()),
            Builder::Bytea(b) => Arc::new(b.finish()),
            Builder::Date(b) => Arc::new(b.finish()),
            Builder::Time(b) => Arc::new(b.finish()),
            Builder::Timestamp(b, true) => Arc::new(b.finish().with_timezone("UTC")),
            Builder::Timestamp(b, false) => Arc::new(b.finish()),
            Builder::Interval(b) => Arc::new(b.finish()),
        })
    }

    fn len(&self) -> usize {
        match self {
            Builder::Bool(b) => b.len(),
            Builder::Int2(b) => b.len(),
            Builder::Int4(b) => b.len(),
            Builder::Int8(b) => b.len(),
            Builder::Oid(b) => b.len(),
            Builder::Float4(b) => b.len(),
            Builder::Float8(b) => b.len(),
            Builder::Decimal128(b, ..) => b.len(),
            Builder::Decimal256(b, ..) => b.len(),
            Builder::Text(b) | Builder::Jsonb(b) | Builder::Uuid(b) => b.len(),
            Builder::Bytea(b) => b.len(),
            Builder::Date(b) => b.len(),
            Builder::Time(b) => b.len(),
            Builder::Timestamp(b, _) => b.len(),
            Builder::Interval(b) => b.len(),
        }
    }
}

fn fixed<const N: usize>(v: &[u8]) -> Result<[u8; N], String> {
    v.try_into()
        .map_err(|_| format!("a {}-byte value where {N} bytes were expected", v.len()))
}

fn utf8(v: &[u8]) -> Result<&str, String> {
    std::str::from_utf8(v).map_err(|e| format!("text that is not UTF-8 ({e})"))
}

/// A `numeric` in its binary form (digit count, weight, sign, display scale, then base-10000
/// digits) as exact decimal text, as PostgreSQL prints it.
pub fn numeric_text(v: &[u8]) -> Result<String, String> {
    let word = |i: usize| -> Result<u16, String> {
        v.get(i * 2..i * 2 + 2)
            .map(|b| u16::from_be_bytes([b[0], b[1]]))
            .ok_or_else(|| "a truncated numeric value".to_string())
    };
    let ndigits = word(0)? as usize;
    let weight = word(1)? as i16 as i64;
    let sign = word(2)?;
    let dscale = word(3)? as usize;
    match sign {
        0x0000 | 0x4000 => {}
        0xC000 => return Ok("NaN".into()),
        0xD000 => return Ok("Infinity".into()),
        0xF000 => return Ok("-Infinity".into()),
        _ => return Err(format!("a numeric with an unknown sign word {sign:#x}")),
    }
    let mut digits = Vec::with_capacity(ndigits);
    for i in 0..ndigits {
        let d = word(4 + i)?;
        if d > 9999 {
            return Err(format!("a numeric digit group {d} out of range"));
        }
        digits.push(d);
    }
    let digit = |i: i64| -> u16 {
        usize::try_from(i)
            .ok()
            .and_then(|i| digits.get(i).copied())
            .unwrap_or(0)
    };
    let mut s = String::with_capacity(ndigits * 4 + dscale + 3);
    if sign == 0x4000 {
        s.push('-');
    }
    if weight < 0 {
        s.push('0');
    } else {
        for i in 0..=weight {
            if i == 0 {
                let _ = write!(s, "{}", digit(i));
            } else {
                let _ = write!(s, "{:04}", digit(i));
            }
        }
    }
    if dscale > 0 {
        s.push('.');
        let start = s.len();
        let mut i = weight + 1;
        while s.len() - start < dscale {
            let _ = write!(s, "{:04}", digit(i));
            i += 1;
        }
        s.truncate(start + dscale);
    }
    Ok(s)
}

/// Turns the bytes of one `COPY … TO STDOUT (FORMAT binary)` into record batches.
pub struct Decoder {
    schema: SchemaRef,
    kinds: Vec<Kind>,
    builders: Vec<Builder>,
    buf: BytesMut,
    header_read: bool,
    finished: bool,
    batch_rows: usize,
    rows: usize,
    /// Rows decoded so far, all batches.
    total: u64,
}

impl Decoder {
    pub fn new(schema: SchemaRef, kinds: Vec<Kind>, batch_rows: usize) -> Decoder {
        let batch_rows = batch_rows.max(1);
        Decoder {
            builders: kinds.iter().map(|k| Builder::new(*k, batch_rows)).collect(),
            schema,
            kinds,
            buf: BytesMut::new(),
            header_read: false,
            finished: false,
            batch_rows,
            rows: 0,
            total: 0,
        }
    }

    /// Add bytes received from the server.
    pub fn push(&mut self, chunk: &[u8]) {
        self.buf.extend_from_slice(chunk);
    }

    /// Decode the complete tuples received so far; a batch once `batch_rows` rows are ready.
    pub fn next_batch(&mut self) -> Result<Option<RecordBatch>, BadValue> {
        if !self.header_read {
            if self.buf.len() < SIGNATURE.len() + 8 {
                return Ok(None);
            }
            if &self.buf[..SIGNATURE.len()] != SIGNATURE {
                return Err(self.bad(0, "the server's COPY output is not in binary format"));
            }
            let ext = u32::from_be_bytes([self.buf[15], self.buf[16], self.buf[17], self.buf[18]])
                as usize;
            if self.buf.len() < 19 + ext {
                return Ok(None);
            }
            self.buf.advance(19 + ext);
            self.header_read = true;
        }
        while !self.finished && self.rows < self.batch_rows {
            match self.tuple_len()? {
                None => return Ok(None),
                Some(None) => {
                    self.finished = true;
                    self.buf.advance(2);
                }
                Some(Some(len)) => {
                    let tuple = self.buf.split_to(len).freeze();
                    self.decode(&tuple)?;
                }
            }
        }
        if self.rows >= self.batch_rows {
            return self.flush().map(Some);
        }
        Ok(None)
    }

    /// Whether the end-of-data marker was read.
    #[cfg(test)]
    pub fn finished(&self) -> bool {
        self.finished
    }

    /// The rows decoded but not yet returned, after the last chunk arrived.
    pub fn finish(&mut self) -> Result<Option<RecordBatch>, BadValue> {
        if !self.buf.is_empty() && !self.finished {
            return Err(self.bad(0, "the server's COPY output ended in the middle of a row"));
        }
        if self.rows == 0 {
            return Ok(None);
        }
        self.flush().map(Some)
    }

    /// The length of the next whole tuple in the buffer: None if it has not all arrived,
    /// Some(None) for the end-of-data marker.
    fn tuple_len(&self) -> Result<Option<Option<usize>>, BadValue> {
        let b = &self.buf[..];
        if b.len() < 2 {
            return Ok(None);
        }
        let fields = i16::from_be_bytes([b[0], b[1]]);
        if fields == -1 {
            return Ok(Some(None));
        }
        if fields as usize != self.kinds.len() {
            return Err(self.bad(
                0,
                &format!(
                    "a row of {fields} fields where {} were selected",
                    self.kinds.len()
                ),
            ));
        }
        let mut at = 2usize;
        for _ in 0..fields {
            let Some(len) = b.get(at..at + 4) else {
                return Ok(None);
            };
            let len = i32::from_be_bytes([len[0], len[1], len[2], len[3]]);
            at += 4;
            if len > 0 {
                at += len as usize;
            }
        }
        Ok((b.len() >= at).then_some(Some(at)))
    }

    fn decode(&mut self, tuple: &[u8]) -> Result<(), BadValue> {
        let row = self.total + 1;
        let mut at = 2usize;
        for (column, builder) in self.builders.iter_mut().enumerate() {
            let len = i32::from_be_bytes([tuple[at], tuple[at + 1], tuple[at + 2], tuple[at + 3]]);
            at += 4;
            if len < 0 {
                builder.append_null();
                continue;
            }
            let v = &tuple[at..at + len as usize];
            at += len as usize;
            if let Err(reason) = builder.append(v) {
                return Err(BadValue {
                    column,
                    row,
                    reason,
                });
            }
        }
        self.rows += 1;
        self.total += 1;
        Ok(())
    }

    fn flush(&mut self) -> Result<RecordBatch, BadValue> {
        let rows = self.rows;
        let columns = self
            .builders
            .iter_mut()
            .map(|b| b.finish())
            .collect::<Result<Vec<ArrayRef>, _>>()
            .map_err(|e| self.bad(0, &e.to_string()))?;
        debug_assert!(self.builders.iter().all(|b| b.len() == 0));
        self.rows = 0;
        RecordBatch::try_new_with_options(
            self.schema.clone(),
            columns,
            &RecordBatchOptions::new().with_row_count(Some(rows)),
        )
        .map_err(|e| self.bad(0, &e.to_string()))
    }

    fn bad(&self, column: usize, reason: &str) -> BadValue {
        BadValue {
            column,
            row: self.total + 1,
            reason: reason.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::datatypes::{Field, Schema};

    fn numeric(ndigits: &[u16], weight: i16, sign: u16, dscale: u16) -> Vec<u8> {
        let mut v = Vec::new();
        for w in [ndigits.len() as u16, weight as u16, sign, dscale] {
            v.extend_from_slice(&w.to_be_bytes());
        }
        for d in ndigits {
            v.extend_from_slice(&d.to_be_bytes());
        }
        v
    }

    #[test]
    fn numeric_binary_to_text() {
        // 9999999999999999999999999999.9999999999 (numeric(38,10)'s largest value)
        let v = numeric(
            &[9999, 9999, 9999, 9999, 9999, 9999, 9999, 9999, 9999, 9900],
            6,
            0,
            10,
        );
        assert_eq!(
            numeric_text(&v).unwrap(),
            "9999999999999999999999999999.9999999999"
        );
        assert_eq!(numeric_text(&numeric(&[], 0, 0, 2)).unwrap(), "0.00");
        assert_eq!(
            numeric_text(&numeric(&[5000], -1, 0x4000, 1)).unwrap(),
            "-0.5"
        );
        // 0.00012 = digit 1 at weight -1 (0.0001), 2000 at -2
        assert_eq!(
            numeric_text(&numeric(&[1, 2000], -1, 0, 5)).unwrap(),
            "0.00012"
        );
        // 1e20: one group 1 at weight 5, no fraction
        assert_eq!(
            numeric_text(&numeric(&[1], 5, 0, 0)).unwrap(),
            "100000000000000000000"
        );
        assert_eq!(numeric_text(&numeric(&[], 0, 0xC000, 0)).unwrap(), "NaN");
        assert!(numeric_text(&[0, 1]).is_err());
    }

    fn copy_bytes(rows: &[Vec<Option<Vec<u8>>>]) -> Vec<u8> {
        let mut b = SIGNATURE.to_vec();
        b.extend_from_slice(&0u32.to_be_bytes());
        b.extend_from_slice(&0u32.to_be_bytes());
        for r in rows {
            b.extend_from_slice(&(r.len() as i16).to_be_bytes());
            for f in r {
                match f {
                    None => b.extend_from_slice(&(-1i32).to_be_bytes()),
                    Some(v) => {
                        b.extend_from_slice(&(v.len() as i32).to_be_bytes());
                        b.extend_from_slice(v);
                    }
                }
            }
        }
        b.extend_from_slice(&(-1i16).to_be_bytes());
        b
    }

    #[test]
    fn decodes_tuples_split_across_chunks_at_every_byte() {
        let kinds = vec![Kind::Int8, Kind::Timestamp, Kind::Text];
        let schema = Arc::new(Schema::new(
            kinds
                .iter()
                .enumerate()
                .map(|(i, k)| Field::new(format!("c{i}"), k.data_type(), true))
                .collect::<Vec<_>>(),
        ));
        // 1900-01-01 is 36524 days before 2000-01-01.
        let before_1970 = (-36_524i64 * 86_400_000_000).to_be_bytes().to_vec();
        let rows = vec![
            vec![
                Some(7i64.to_be_bytes().to_vec()),
                Some(before_1970),
                Some(b"a".to_vec()),
            ],
            vec![None, None, None],
        ];
        let bytes = copy_bytes(&rows);
        for chunk in 1..bytes.len() {
            let mut d = Decoder::new(schema.clone(), kinds.clone(), 1000);
            let mut batches = Vec::new();
            for c in bytes.chunks(chunk) {
                d.push(c);
                while let Some(b) = d.next_batch().unwrap() {
                    batches.push(b);
                }
            }
            assert!(d.finished());
            batches.extend(d.finish().unwrap());
            let b = arrow::compute::concat_batches(&schema, &batches).unwrap();
            assert_eq!(b.num_rows(), 2);
            let text = arrow::util::pretty::pretty_format_batches(&[b])
                .unwrap()
                .to_string();
            assert!(text.contains("1900-01-01T00:00:00"), "{text}");
        }
    }

    #[test]
    fn infinity_is_a_bad_value_naming_the_row_and_column() {
        let kinds = vec![Kind::Int4, Kind::Timestamptz];
        let schema = Arc::new(Schema::new(vec![
            Field::new("a", kinds[0].data_type(), true),
            Field::new("b", kinds[1].data_type(), true),
        ]));
        let bytes = copy_bytes(&[
            vec![Some(1i32.to_be_bytes().to_vec()), None],
            vec![
                Some(2i32.to_be_bytes().to_vec()),
                Some(i64::MAX.to_be_bytes().to_vec()),
            ],
        ]);
        let mut d = Decoder::new(schema, kinds, 10);
        d.push(&bytes);
        let e = d.next_batch().unwrap_err();
        assert_eq!((e.column, e.row), (1, 2));
        assert!(e.reason.contains("infinity"), "{e:?}");
    }
}
