//! A run's changes staged in a local Parquet file, for destinations that apply a whole run at
//! once when it finishes (a file rewritten, a Delta table merged): every batch padded to the
//! sync's fields (a delete's batch holds only the key), with its operation's code in a column.

use std::path::PathBuf;
use std::sync::Arc;

use arrow::array::{Int8Array, RecordBatch, new_null_array};
use arrow::datatypes::{DataType, Schema, SchemaRef};
use parquet::arrow::ArrowWriter;

use super::{WriteOp, WriteTarget};

/// The column holding each staged row's operation (`WriteOp::code`).
pub(crate) const OP: &str = "__bf_op";

pub(crate) struct Staging {
    schema: SchemaRef,
    writer: Option<ArrowWriter<std::fs::File>>,
    /// Rows staged.
    pub rows: usize,
    /// Rows staged per operation (index = `WriteOp::code`).
    pub ops: [usize; 6],
    /// The staging file.
    pub path: PathBuf,
    // Removed with the staging.
    _dir: tempfile::TempDir,
}

impl Staging {
    /// A new staging file for the fields of `target`.
    pub(crate) fn open(target: &WriteTarget) -> Result<Staging, String> {
        let dir = tempfile::tempdir()
            .map_err(|e| format!("cannot create a local staging folder: {e}"))?;
        let fields = super::file::fields_with_op(target, OP, DataType::Int8);
        let schema = Arc::new(Schema::new(fields));
        let path = dir.path().join("changes.parquet");
        let file = std::fs::File::create(&path).map_err(|e| format!("staging file: {e}"))?;
        // Written once and read once, locally: no dictionaries, no compression (the profile
        // of a 10-million-row load showed dictionary interning as its largest cost).
        let props = parquet::file::properties::WriterProperties::builder()
            .set_dictionary_enabled(false)
            .set_compression(parquet::basic::Compression::UNCOMPRESSED)
            .build();
        let writer = ArrowWriter::try_new(file, schema.clone(), Some(props))
            .map_err(|e| format!("staging file: {e}"))?;
        Ok(Staging {
            schema,
            writer: Some(writer),
            rows: 0,
            ops: [0; 6],
            path,
            _dir: dir,
        })
    }

    /// Stage the rows of `batch` for `op`.
    pub(crate) fn push(&mut self, op: WriteOp, batch: &RecordBatch) -> Result<(), String> {
        let rows = batch.num_rows();
        let mut columns = Vec::with_capacity(self.schema.fields().len());
        for field in self.schema.fields() {
            if field.name() == OP {
                columns.push(Arc::new(Int8Array::from(vec![op.code(); rows])) as _);
            } else {
                match batch.column_by_name(field.name()) {
                    Some(c) => columns.push(c.clone()),
                    None => columns.push(new_null_array(field.data_type(), rows)),
                }
            }
        }
        let staged =
            RecordBatch::try_new(self.schema.clone(), columns).map_err(|e| e.to_string())?;
        let Some(writer) = self.writer.as_mut() else {
            return Err("write after finish (this is a bug in backflow)".into());
        };
        writer.write(&staged).map_err(|e| e.to_string())?;
        self.rows += rows;
        self.ops[op.code() as usize] += rows;
        Ok(())
    }

    /// Finish the file so that it can be read.
    pub(crate) fn close(mut self) -> Result<Staged, String> {
        if let Some(w) = self.writer.take() {
            w.close().map_err(|e| e.to_string())?;
        }
        Ok(Staged {
            rows: self.rows,
            ops: self.ops,
            path: self.path,
            _dir: self._dir,
        })
    }
}

/// A closed staging file, to be read.
pub(crate) struct Staged {
    /// Rows staged.
    pub rows: usize,
    /// Rows staged per operation (index = `WriteOp::code`).
    pub ops: [usize; 6],
    /// The staging file.
    pub path: PathBuf,
    // Removed with the staging.
    _dir: tempfile::TempDir,
}

impl Staged {
    /// Rows staged for `op`.
    pub(crate) fn count(&self, op: WriteOp) -> usize {
        self.ops[op.code() as usize]
    }
}
