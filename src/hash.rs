//! The row hash: a fixed, documented digest of a row's mapped fields, stable across processes,
//! machines and releases (it is stored in sync state and compared on the next run).
//!
//! `backflow_row_hash(header, v1, v2, …)` returns a `UInt64`: XXH3-64 (seed 0) over
//!
//! ```text
//! header bytes                     -- the field names and type families, "email:string,mrr:float"
//! for each value, in argument order:
//!   0x00                           -- NULL
//!   0x01 <value bytes>             -- not NULL
//! ```
//!
//! Value bytes by type family: booleans one byte (0/1); signed integers of any width as i64
//! little-endian; unsigned as u64 little-endian; floats as the f64 bit pattern little-endian
//! (-0.0 written as 0.0, every NaN as the canonical quiet NaN); decimals as the unscaled
//! integer (i128 or i256) little-endian; dates, times and timestamps as their i64 count of
//! units; strings and binaries as a u64 little-endian length followed by the bytes; anything
//! else (lists, structs, intervals) as the length-prefixed text Arrow formats it to.
//! The NULL marker and the length prefixes keep `(NULL, 'a')`, `('a', NULL)`, `('ab', 'c')`
//! and `('a', 'bc')` apart. The header puts names and type families into the hash, so renaming
//! a field or changing its kind re-sends rows, while widening `Int32` to `Int64` does not.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, UInt64Builder};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Float64Type, Int64Type, TimeUnit, UInt64Type};
use datafusion::common::{DataFusionError, Result, ScalarValue};
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};
use xxhash_rust::xxh3::xxh3_64;

/// The SQL name of the function.
pub const ROW_HASH: &str = "backflow_row_hash";

/// The row-hash UDF.
pub fn row_hash_udf() -> ScalarUDF {
    ScalarUDF::new_from_impl(RowHash {
        signature: Signature::variadic_any(Volatility::Immutable),
    })
}

#[derive(Debug, PartialEq, Eq, Hash)]
struct RowHash {
    signature: Signature,
}

/// The stable name of a type's family, as written into the hash header.
pub fn type_family(dt: &DataType) -> String {
    use DataType::*;
    match dt {
        Boolean => "bool".into(),
        Int8 | Int16 | Int32 | Int64 => "int".into(),
        UInt8 | UInt16 | UInt32 | UInt64 => "uint".into(),
        Float16 | Float32 | Float64 => "float".into(),
        Decimal32(_, s) | Decimal64(_, s) | Decimal128(_, s) | Decimal256(_, s) => {
            format!("decimal/{s}")
        }
        Utf8 | LargeUtf8 | Utf8View => "string".into(),
        Binary | LargeBinary | BinaryView | FixedSizeBinary(_) => "binary".into(),
        Date32 => "date32".into(),
        Date64 => "date64".into(),
        Time32(u) | Time64(u) => format!("time/{}", unit_name(u)),
        Timestamp(u, tz) => format!("timestamp/{}/{}", unit_name(u), tz.as_deref().unwrap_or("")),
        Duration(u) => format!("duration/{}", unit_name(u)),
        Null => "null".into(),
        Dictionary(_, v) => type_family(v),
        _ => "text".into(),
    }
}

fn unit_name(u: &TimeUnit) -> &'static str {
    match u {
        TimeUnit::Second => "s",
        TimeUnit::Millisecond => "ms",
        TimeUnit::Microsecond => "us",
        TimeUnit::Nanosecond => "ns",
    }
}

/// A column prepared for encoding: every type family reduced to few physical layouts.
enum Encoder {
    Null,
    Bool(ArrayRef),
    I64(ArrayRef),
    U64(ArrayRef),
    F64(ArrayRef),
    Dec128(ArrayRef),
    Dec256(ArrayRef),
    Str(ArrayRef),
    LargeStr(ArrayRef),
    ViewStr(ArrayRef),
    Bin(ArrayRef),
    LargeBin(ArrayRef),
    ViewBin(ArrayRef),
    FixedBin(ArrayRef),
}

impl Encoder {
    fn new(array: &ArrayRef) -> Result<Encoder> {
        use DataType::*;
        let dt = array.data_type();
        Ok(match dt {
            Null => Encoder::Null,
            Boolean => Encoder::Bool(array.clone()),
            Int8
            | Int16
            | Int32
            | Int64
            | Date32
            | Date64
            | Time32(_)
            | Time64(_)
            | Timestamp(_, _)
            | Duration(_) => Encoder::I64(cast(array, &Int64)?),
            UInt8 | UInt16 | UInt32 | UInt64 => Encoder::U64(cast(array, &UInt64)?),
            Float16 | Float32 | Float64 => Encoder::F64(cast(array, &Float64)?),
            Decimal32(p, s) | Decimal64(p, s) => {
                Encoder::Dec128(cast(array, &Decimal128((*p).max(1), *s))?)
            }
            Decimal128(_, _) => Encoder::Dec128(array.clone()),
            Decimal256(_, _) => Encoder::Dec256(array.clone()),
            Utf8 => Encoder::Str(array.clone()),
            LargeUtf8 => Encoder::LargeStr(array.clone()),
            Utf8View => Encoder::ViewStr(array.clone()),
            Binary => Encoder::Bin(array.clone()),
            LargeBinary => Encoder::LargeBin(array.clone()),
            BinaryView => Encoder::ViewBin(array.clone()),
            FixedSizeBinary(_) => Encoder::FixedBin(array.clone()),
            Dictionary(_, v) => Encoder::new(&cast(array, v)?)?,
            _ => {
                let text = arrow::util::display::ArrayFormatter::try_new(
                    array.as_ref(),
                    &Default::default(),
                )?;
                let mut b = arrow::array::StringBuilder::new();
                for i in 0..array.len() {
                    if array.is_null(i) {
                        b.append_null();
                    } else {
                        b.append_value(text.value(i).to_string());
                    }
                }
                Encoder::Str(Arc::new(b.finish()))
            }
        })
    }

    fn array(&self) -> Option<&ArrayRef> {
        match self {
            Encoder::Null => None,
            Encoder::Bool(a)
            | Encoder::I64(a)
            | Encoder::U64(a)
            | Encoder::F64(a)
            | Encoder::Dec128(a)
            | Encoder::Dec256(a)
            | Encoder::Str(a)
            | Encoder::LargeStr(a)
            | Encoder::ViewStr(a)
            | Encoder::Bin(a)
            | Encoder::LargeBin(a)
            | Encoder::ViewBin(a)
            | Encoder::FixedBin(a) => Some(a),
        }
    }

    fn write(&self, row: usize, buf: &mut Vec<u8>) {
        let Some(array) = self.array() else {
            buf.push(0);
            return;
        };
        if array.is_null(row) {
            buf.push(0);
            return;
        }
        buf.push(1);
        fn bytes(buf: &mut Vec<u8>, b: &[u8]) {
            buf.extend_from_slice(&(b.len() as u64).to_le_bytes());
            buf.extend_from_slice(b);
        }
        match self {
            Encoder::Null => {}
            Encoder::Bool(a) => buf.push(u8::from(a.as_boolean().value(row))),
            Encoder::I64(a) => {
                buf.extend_from_slice(&a.as_primitive::<Int64Type>().value(row).to_le_bytes())
            }
            Encoder::U64(a) => {
                buf.extend_from_slice(&a.as_primitive::<UInt64Type>().value(row).to_le_bytes())
            }
            Encoder::F64(a) => {
                let v = a.as_primitive::<Float64Type>().value(row);
                let v = if v == 0.0 {
                    0.0
                } else if v.is_nan() {
                    f64::NAN
                } else {
                    v
                };
                buf.extend_from_slice(&v.to_bits().to_le_bytes());
            }
            Encoder::Dec128(a) => buf.extend_from_slice(
                &a.as_primitive::<arrow::datatypes::Decimal128Type>()
                    .value(row)
                    .to_le_bytes(),
            ),
            Encoder::Dec256(a) => buf.extend_from_slice(
                &a.as_primitive::<arrow::datatypes::Decimal256Type>()
                    .value(row)
                    .to_le_bytes(),
            ),
            Encoder::Str(a) => bytes(buf, a.as_string::<i32>().value(row).as_bytes()),
            Encoder::LargeStr(a) => bytes(buf, a.as_string::<i64>().value(row).as_bytes()),
            Encoder::ViewStr(a) => bytes(buf, a.as_string_view().value(row).as_bytes()),
            Encoder::Bin(a) => bytes(buf, a.as_binary::<i32>().value(row)),
            Encoder::LargeBin(a) => bytes(buf, a.as_binary::<i64>().value(row)),
            Encoder::ViewBin(a) => bytes(buf, a.as_binary_view().value(row)),
            Encoder::FixedBin(a) => bytes(buf, a.as_fixed_size_binary().value(row)),
        }
    }
}

/// Hash `columns` row by row, starting each row with `header`.
pub fn hash_rows(header: &[u8], columns: &[ArrayRef], rows: usize) -> Result<ArrayRef> {
    let encoders = columns
        .iter()
        .map(Encoder::new)
        .collect::<Result<Vec<_>>>()?;
    let mut out = UInt64Builder::with_capacity(rows);
    let mut buf = Vec::with_capacity(256);
    for row in 0..rows {
        buf.clear();
        buf.extend_from_slice(header);
        for e in &encoders {
            e.write(row, &mut buf);
        }
        out.append_value(xxh3_64(&buf));
    }
    Ok(Arc::new(out.finish()))
}

/// The SQL name of the per-field hash function.
pub const FIELD_HASHES: &str = "backflow_field_hashes";

/// `backflow_field_hashes(header1, field1, header2, field2, …)`: each field hashed as
/// [`hash_rows`] hashes a row of that one field, the hashes packed as little-endian 64-bit
/// words into one binary value per row (for `send = "changed"`: one plain value per row stores,
/// reads and joins far faster than a list).
pub fn field_hashes_udf() -> ScalarUDF {
    ScalarUDF::new_from_impl(FieldHashes {
        signature: Signature::variadic_any(Volatility::Immutable),
    })
}

#[derive(Debug, PartialEq, Eq, Hash)]
struct FieldHashes {
    signature: Signature,
}

/// The hashes packed in one value of [`field_hashes_udf`].
pub fn unpack_field_hashes(packed: &[u8]) -> Vec<u64> {
    packed
        .chunks_exact(8)
        .map(|c| u64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
        .collect()
}

impl ScalarUDFImpl for FieldHashes {
    fn name(&self) -> &str {
        FIELD_HASHES
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(DataType::Binary)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let rows = args.number_rows;
        if !args.args.len().is_multiple_of(2) {
            return Err(DataFusionError::Internal(format!(
                "{FIELD_HASHES} takes (header, field) pairs (this is a bug in backflow)"
            )));
        }
        let mut hashes = Vec::with_capacity(args.args.len() / 2);
        let mut iter = args.args.into_iter();
        while let (Some(header), Some(column)) = (iter.next(), iter.next()) {
            let ColumnarValue::Scalar(ScalarValue::Utf8(Some(header))) = header else {
                return Err(DataFusionError::Internal(format!(
                    "{FIELD_HASHES} takes header string literals (this is a bug in backflow)"
                )));
            };
            let column = column.into_array(rows)?;
            hashes.push(hash_rows(header.as_bytes(), &[column], rows)?);
        }
        let hashes: Vec<&arrow::array::UInt64Array> = hashes
            .iter()
            .map(|h| h.as_primitive::<UInt64Type>())
            .collect();
        let mut out = arrow::array::BinaryBuilder::with_capacity(rows, rows * 8 * hashes.len());
        let mut buf = Vec::with_capacity(8 * hashes.len());
        for row in 0..rows {
            buf.clear();
            for h in &hashes {
                buf.extend_from_slice(&h.value(row).to_le_bytes());
            }
            out.append_value(&buf);
        }
        Ok(ColumnarValue::Array(Arc::new(out.finish())))
    }
}

impl ScalarUDFImpl for RowHash {
    fn name(&self) -> &str {
        ROW_HASH
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(DataType::UInt64)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let rows = args.number_rows;
        let mut iter = args.args.into_iter();
        let header = match iter.next() {
            Some(ColumnarValue::Scalar(ScalarValue::Utf8(Some(h)))) => h,
            _ => {
                return Err(DataFusionError::Internal(format!(
                    "{ROW_HASH} takes a header string literal first (this is a bug in backflow)"
                )));
            }
        };
        let columns = iter
            .map(|c| c.into_array(rows))
            .collect::<Result<Vec<_>>>()?;
        Ok(ColumnarValue::Array(hash_rows(
            header.as_bytes(),
            &columns,
            rows,
        )?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Int32Array, Int64Array, StringArray, UInt64Array};

    fn h(cols: Vec<ArrayRef>) -> Vec<u64> {
        let rows = cols[0].len();
        let out = hash_rows(b"h", &cols, rows).unwrap();
        out.as_any()
            .downcast_ref::<UInt64Array>()
            .unwrap()
            .values()
            .to_vec()
    }

    #[test]
    fn field_hashes_pack_each_field_hashed_alone() {
        use datafusion::config::ConfigOptions;
        use datafusion::logical_expr::ScalarFunctionArgs;
        let a: ArrayRef = Arc::new(StringArray::from(vec![Some("x"), None]));
        let b: ArrayRef = Arc::new(Int64Array::from(vec![Some(i64::MAX), Some(-1)]));
        let args = ScalarFunctionArgs {
            args: vec![
                ColumnarValue::Scalar(ScalarValue::Utf8(Some("a:text".into()))),
                ColumnarValue::Array(a.clone()),
                ColumnarValue::Scalar(ScalarValue::Utf8(Some("b:int".into()))),
                ColumnarValue::Array(b.clone()),
            ],
            arg_fields: vec![],
            number_rows: 2,
            return_field: Arc::new(arrow::datatypes::Field::new("f", DataType::Binary, true)),
            config_options: Arc::new(ConfigOptions::default()),
        };
        let ColumnarValue::Array(out) = field_hashes_udf().invoke_with_args(args).unwrap() else {
            panic!("an array")
        };
        let ha = hash_rows(b"a:text", &[a], 2).unwrap();
        let hb = hash_rows(b"b:int", &[b], 2).unwrap();
        for row in 0..2 {
            assert_eq!(
                unpack_field_hashes(out.as_binary::<i32>().value(row)),
                vec![
                    ha.as_primitive::<UInt64Type>().value(row),
                    hb.as_primitive::<UInt64Type>().value(row)
                ]
            );
        }
    }

    #[test]
    fn null_and_boundaries_are_distinguished() {
        let a: ArrayRef = Arc::new(StringArray::from(vec![
            None,
            Some("a"),
            Some("ab"),
            Some("a"),
        ]));
        let b: ArrayRef = Arc::new(StringArray::from(vec![
            Some("a"),
            None,
            Some("c"),
            Some("bc"),
        ]));
        let hashes = h(vec![a, b]);
        let mut unique = hashes.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), 4);
    }

    #[test]
    fn integer_width_does_not_change_the_hash() {
        let a: ArrayRef = Arc::new(Int32Array::from(vec![1, -7]));
        let b: ArrayRef = Arc::new(Int64Array::from(vec![1, -7]));
        assert_eq!(h(vec![a]), h(vec![b]));
    }

    /// Pinned values: if this test fails, state written by earlier releases would no longer
    /// match. Never update these numbers; change the algorithm's version instead.
    #[test]
    fn hash_is_pinned() {
        let a: ArrayRef = Arc::new(StringArray::from(vec![Some("ada@example.com"), None]));
        let b: ArrayRef = Arc::new(Int64Array::from(vec![Some(42), Some(0)]));
        let out = hash_rows(b"email:string,n:int", &[a, b], 2).unwrap();
        let v = out.as_any().downcast_ref::<UInt64Array>().unwrap();
        let mut buf = b"email:string,n:int".to_vec();
        buf.push(1);
        buf.extend_from_slice(&15u64.to_le_bytes());
        buf.extend_from_slice(b"ada@example.com");
        buf.push(1);
        buf.extend_from_slice(&42i64.to_le_bytes());
        assert_eq!(v.value(0), xxh3_64(&buf));
        assert_eq!(v.value(0), PINNED_ROW0);
    }

    const PINNED_ROW0: u64 = 14_016_058_855_524_370_567;
}
