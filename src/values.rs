//! Arrow values as people and JSON read them: a scalar as text that parses back to the same
//! value, one row as a JSON object. Run reports, samples, watermarks and the hub's state all
//! show values this way.

use arrow::array::{Array, ArrayRef, AsArray, RecordBatch};
use arrow::datatypes::DataType;
use datafusion::common::ScalarValue;

/// Text of a scalar as Arrow casts it (parsable back with the same type); empty for NULL. A
/// composite key (a struct) is the JSON list of its parts' texts: `["acme","42"]`.
pub fn scalar_text(v: &ScalarValue) -> String {
    if let ScalarValue::Struct(s) = v {
        if s.is_null(0) {
            return String::new();
        }
        let parts: Vec<serde_json::Value> = s
            .columns()
            .iter()
            .map(|c| cell_text(c, 0).map_or(serde_json::Value::Null, serde_json::Value::String))
            .collect();
        return serde_json::Value::Array(parts).to_string();
    }
    v.to_array()
        .ok()
        .and_then(|a| arrow::compute::cast(&a, &DataType::Utf8).ok())
        .filter(|a| !a.is_null(0))
        .map(|a| a.as_string::<i32>().value(0).to_string())
        .unwrap_or_default()
}

/// Text of one value of an array (None for NULL).
pub fn cell_text(array: &ArrayRef, row: usize) -> Option<String> {
    if array.is_null(row) {
        return None;
    }
    ScalarValue::try_from_array(array, row)
        .ok()
        .map(|v| scalar_text(&v))
}

/// The text of every value of `array` (see [`cell_text`]), NULL for NULL.
pub fn texts(array: &ArrayRef) -> arrow::array::StringArray {
    if !matches!(array.data_type(), DataType::Struct(_))
        && let Ok(cast) = arrow::compute::cast(array, &DataType::Utf8)
    {
        return cast.as_string::<i32>().clone();
    }
    (0..array.len()).map(|r| cell_text(array, r)).collect()
}

/// One row of a batch as a JSON object (`{}` if it cannot be written).
pub fn row_json(batch: &RecordBatch, row: usize) -> String {
    let mut buf = Vec::new();
    let mut w = arrow::json::LineDelimitedWriter::new(&mut buf);
    if w.write(&batch.slice(row, 1)).is_err() || w.finish().is_err() {
        return "{}".into();
    }
    String::from_utf8_lossy(&buf).trim().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn scalars_read_back_as_their_type() {
        for v in [
            ScalarValue::Int64(Some(i64::MIN)),
            ScalarValue::Utf8(Some("a \"quoted\"\nline".into())),
            ScalarValue::Date32(Some(2_932_896)),
            ScalarValue::TimestampMicrosecond(Some(-62_135_596_800_000_000), None),
        ] {
            let text = scalar_text(&v);
            let back = ScalarValue::try_from_string(text.clone(), &v.data_type()).unwrap();
            assert_eq!(back, v, "{text}");
        }
        assert_eq!(scalar_text(&ScalarValue::Int64(None)), "");
    }

    #[test]
    fn a_row_is_one_json_object() {
        let batch = RecordBatch::try_from_iter([
            (
                "id",
                Arc::new(arrow::array::Int64Array::from(vec![1, 2])) as ArrayRef,
            ),
            (
                "name",
                Arc::new(arrow::array::StringArray::from(vec![Some("Ada"), None])) as ArrayRef,
            ),
        ])
        .unwrap();
        assert_eq!(row_json(&batch, 0), r#"{"id":1,"name":"Ada"}"#);
        assert_eq!(row_json(&batch, 1), r#"{"id":2}"#);
        assert_eq!(cell_text(batch.column(1), 1), None);
        assert_eq!(cell_text(batch.column(0), 1).as_deref(), Some("2"));
    }
}
