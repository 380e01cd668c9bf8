//! The formats a file destination writes.

use arrow::datatypes::{DataType, Field};
use serde::Deserialize;

use crate::destinations::WriteTarget;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FileFormat {
    Csv,
    Parquet,
    #[serde(alias = "json", alias = "ndjson")]
    Jsonl,
}

impl FileFormat {
    pub fn extension(self) -> &'static str {
        match self {
            FileFormat::Csv => "csv",
            FileFormat::Parquet => "parquet",
            FileFormat::Jsonl => "jsonl",
        }
    }
}

/// The fields of the rows a file destination stages or writes: the sync's fields, all
/// nullable, and an operation column `op` of type `op_type`.
pub fn fields_with_op(target: &WriteTarget, op: &str, op_type: DataType) -> Vec<Field> {
    let mut fields: Vec<Field> = target
        .schema
        .fields()
        .iter()
        .map(|f| f.as_ref().clone().with_nullable(true))
        .collect();
    fields.push(Field::new(op, op_type, false));
    fields
}
