//! The file destination's `snapshot` mode: the file always holds the object's complete
//! current contents.
//!
//! Files cannot be updated in place, so the writer stages the run's changes in a local Parquet
//! file and, in `finish`, rewrites the object with one DataFusion plan:
//!
//! ```text
//!   existing file ──cast to the sync's types──┐
//!                                             ├─ LEFT JOIN on key ─ keep / replace / drop ─┐
//!   staged changes (fields + op) ─────────────┤                                           ├─ UNION ALL ─► new file
//!                                             └─ creates ANTI JOIN existing keys ─────────┘
//! ```
//!
//! Row order is not kept: the plan runs on the engine's partitions (one per core), so a
//! rewritten file holds the same rows in another order (a file is a set of records keyed by
//! the sync's key; sort it when reading if order matters). The changes are the hash join's
//! build side, so no sort is needed.
//!
//! (append-only is a UNION ALL instead). The new file is uploaded whole and replaces the old one
//! atomically: a local rename, or in an object store one conditional PUT (only if the object is
//! still the version this run read, so a stale run cannot overwrite a newer run's file). Fields the
//! existing file has that the sync no longer sends are kept, never dropped. A run with no
//! changes does not touch the file.

use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use async_trait::async_trait;
use datafusion::common::config::TableParquetOptions;
use datafusion::common::{JoinType, ScalarValue};
use datafusion::dataframe::DataFrameWriteOptions;
use datafusion::logical_expr::{cast, lit, when};
use datafusion::prelude::{
    CsvReadOptions, DataFrame, Expr, JsonReadOptions, ParquetReadOptions, SessionContext, ident,
};
use futures::StreamExt;
use object_store::buffered::BufWriter;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutPayload, UpdateVersion};
use parquet::arrow::ArrowWriter;
use tokio::io::AsyncWriteExt;

use super::format::FileFormat;
use crate::destinations::{
    BatchOutcome, DestinationError, FinishOutcome, LateRejection, ObjectWriter, WriteOp,
    WriteTarget,
};
use crate::storage::Location;

use crate::destinations::staging::{OP, Staging};
const CHANGE_PREFIX: &str = "__bf_c_";

/// The object being written: everything `finish` needs once staging is closed.
struct FileObject {
    destination: String,
    format: FileFormat,
    target: WriteTarget,
    location: Location,
    store: Arc<dyn ObjectStore>,
}

/// Stages a run's changes locally, then rewrites the object in `finish`.
pub(super) struct FileWriter {
    object: FileObject,
    // Dropped (and removed) last.
    staging: Staging,
}

impl FileWriter {
    /// Start staging the changes of one run to `location`.
    pub(super) fn open(
        destination: &str,
        format: FileFormat,
        target: &WriteTarget,
        location: Location,
        store: Arc<dyn ObjectStore>,
    ) -> Result<FileWriter, String> {
        let staging = Staging::open(target)?;
        Ok(FileWriter {
            object: FileObject {
                destination: destination.to_string(),
                format,
                target: target.clone(),
                location,
                store,
            },
            staging,
        })
    }
}

/// The keys of the object's file as it is now, as text, in chunks to `tx` (none when there is
/// no file yet). See `Destination::keys`.
pub(super) async fn existing_keys(
    destination: &str,
    format: FileFormat,
    target: &WriteTarget,
    location: Location,
    store: Arc<dyn ObjectStore>,
    tx: crate::destinations::KeySender,
) -> Result<(), DestinationError> {
    let object = FileObject {
        destination: destination.to_string(),
        format,
        target: target.clone(),
        location,
        store,
    };
    let ctx = SessionContext::new_with_config_rt(target.engine.clone(), target.runtime.clone());
    if object.register_existing_at(&ctx).await?.is_none() {
        return Ok(());
    }
    let existing = ctx.table("bf_existing").await.map_err(|e| object.fail(e))?;
    crate::destinations::send_keys(existing, &target.key, &tx, |e| object.fail(e)).await
}

impl FileObject {
    fn fail(&self, reason: impl ToString) -> DestinationError {
        DestinationError::Write {
            destination: self.destination.clone(),
            object: self.target.object.clone(),
            reason: reason.to_string(),
        }
    }

    /// Register the existing object as `bf_existing`; false when there is none.
    /// Register the existing file as `bf_existing`; the version read (None: there is none).
    async fn register_existing_at(
        &self,
        ctx: &SessionContext,
    ) -> Result<Option<UpdateVersion>, DestinationError> {
        let path = self.location.object_path().map_err(|e| self.fail(e))?;
        let meta = match self.store.head(&path).await {
            Ok(m) => m,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(self.fail(format!("cannot read the existing file: {e}"))),
        };
        let url = match &self.location.local {
            Some(p) => p.display().to_string(),
            None => {
                ctx.register_object_store(&self.location.store_url(), self.store.clone());
                self.location.url.to_string()
            }
        };
        let read_err = |e: datafusion::error::DataFusionError| {
            self.fail(format!("cannot read the existing file {url}: {e}"))
        };
        match self.format {
            FileFormat::Parquet => {
                let opts = ParquetReadOptions::default().file_extension("");
                ctx.register_parquet("bf_existing", &url, opts)
                    .await
                    .map_err(read_err)?;
            }
            FileFormat::Csv => {
                // Read every column as text (no type guessing: "007" stays "007"), then cast to
                // the sync's types below.
                let head = self
                    .store
                    .get_range(&path, 0..meta.size.min(1 << 20))
                    .await
                    .map_err(|e| self.fail(format!("cannot read the existing file: {e}")))?;
                let (schema, _) = arrow::csv::reader::Format::default()
                    .with_header(true)
                    .infer_schema(&head[..], Some(0))
                    .map_err(|e| self.fail(format!("the existing file is not CSV: {e}")))?;
                let text_schema = Schema::new(
                    schema
                        .fields()
                        .iter()
                        .map(|f| Field::new(f.name(), DataType::Utf8, true))
                        .collect::<Vec<_>>(),
                );
                let opts = CsvReadOptions::new()
                    .has_header(true)
                    .file_extension("")
                    .schema(&text_schema);
                ctx.register_csv("bf_existing", &url, opts)
                    .await
                    .map_err(read_err)?;
            }
            FileFormat::Jsonl => {
                // Every line is read to infer the schema: a field first seen late in the file
                // must not be dropped on rewrite.
                let mut opts = JsonReadOptions::default().file_extension("");
                opts.schema_infer_max_records = usize::MAX;
                ctx.register_json("bf_existing", &url, opts)
                    .await
                    .map_err(read_err)?;
                // Inferred types are guesses: a 38-digit decimal would be a float, an unsigned
                // 64-bit integer past i64 too. The sync's numeric fields are decoded from their
                // JSON text as the sync's types instead, so unchanged rows keep every digit.
                let inferred = ctx
                    .table("bf_existing")
                    .await
                    .map_err(read_err)?
                    .schema()
                    .as_arrow()
                    .clone();
                let exact = Schema::new(
                    inferred
                        .fields()
                        .iter()
                        .map(|f| match self.target.schema.field_with_name(f.name()) {
                            Ok(t) if decoded_exactly(t.data_type()) => {
                                Field::new(f.name(), t.data_type().clone(), true)
                            }
                            _ => f.as_ref().clone(),
                        })
                        .collect::<Vec<_>>(),
                );
                if exact != inferred {
                    let _ = ctx.deregister_table("bf_existing");
                    let opts = JsonReadOptions::default().file_extension("").schema(&exact);
                    ctx.register_json("bf_existing", &url, opts)
                        .await
                        .map_err(read_err)?;
                }
            }
        }
        Ok(Some(UpdateVersion {
            e_tag: meta.e_tag,
            version: meta.version,
        }))
    }

    /// The existing rows with the sync's fields cast to the sync's types.
    async fn existing(&self, ctx: &SessionContext) -> Result<DataFrame, DestinationError> {
        let df = ctx.table("bf_existing").await.map_err(|e| self.fail(e))?;
        let mut exprs = Vec::new();
        for field in df.schema().fields() {
            let name = field.name();
            let e = match self.target.schema.field_with_name(name) {
                Ok(t) if t.data_type() != field.data_type() => {
                    cast(ident(name), t.data_type().clone()).alias(name)
                }
                _ => ident(name),
            };
            exprs.push(e);
        }
        for t in self.target.schema.fields() {
            if df.schema().field_with_unqualified_name(t.name()).is_err() {
                exprs.push(cast(lit(ScalarValue::Null), t.data_type().clone()).alias(t.name()));
            }
        }
        df.select(exprs).map_err(|e| self.fail(e))
    }

    /// The merged contents: the plan described in the module docs.
    async fn merged(
        &self,
        ctx: &SessionContext,
        has_existing: bool,
    ) -> Result<DataFrame, DestinationError> {
        let changes = ctx.table("bf_changes").await.map_err(|e| self.fail(e))?;
        let target_cols: Vec<String> = self
            .target
            .schema
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .collect();
        if !has_existing {
            let keep = ident(OP).in_list(vec![lit(1i8), lit(3i8), lit(5i8)], false);
            let cols: Vec<Expr> = target_cols.iter().map(ident).collect();
            return changes
                .filter(keep)
                .map_err(|e| self.fail(e))?
                .select(cols)
                .map_err(|e| self.fail(e));
        }
        let existing = self.existing(ctx).await?;
        let existing_cols: Vec<String> = existing
            .schema()
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .collect();
        if self.target.behavior == crate::behavior::Behavior::AppendOnly {
            let new_rows = changes
                .select(
                    existing_cols
                        .iter()
                        .map(|c| {
                            if target_cols.contains(c) {
                                ident(c)
                            } else {
                                cast(lit(ScalarValue::Null), existing_field_type(&existing, c))
                                    .alias(c)
                            }
                        })
                        .collect::<Vec<_>>(),
                )
                .map_err(|e| self.fail(e))?;
            let old_rows = existing
                .select(existing_cols.iter().map(ident).collect::<Vec<_>>())
                .map_err(|e| self.fail(e))?;
            return old_rows.union(new_rows).map_err(|e| self.fail(e));
        }
        // Existing rows stream through a hash join whose build side is the (small) set of
        // changes (no sort); new rows are added by an anti join and a union.
        let key = &self.target.key;
        let ckey: Vec<String> = key.iter().map(|k| format!("{CHANGE_PREFIX}{k}")).collect();
        let existing_key: Vec<String> = (0..key.len())
            .map(|i| format!("__bf_existing_key_{i}"))
            .collect();
        let renamed: Vec<Expr> = changes
            .schema()
            .fields()
            .iter()
            .map(|fl| ident(fl.name()).alias(format!("{CHANGE_PREFIX}{}", fl.name())))
            .collect();
        let prefixed = changes.clone().select(renamed).map_err(|e| self.fail(e))?;
        let op = ident(format!("{CHANGE_PREFIX}{OP}"));
        let take_change = op.clone().in_list(vec![lit(1i8), lit(2i8)], false);
        let mut out = Vec::new();
        for c in &existing_cols {
            if target_cols.contains(c) {
                out.push(
                    when(take_change.clone(), ident(format!("{CHANGE_PREFIX}{c}")))
                        .otherwise(ident(c))
                        .map_err(|e| self.fail(e))?
                        .alias(c),
                );
            } else {
                out.push(ident(c));
            }
        }
        let kept = prefixed
            .join(
                existing.clone(),
                JoinType::Right,
                &names(&ckey),
                &names(key),
                None,
            )
            .map_err(|e| self.fail(e))?
            .filter(
                op.clone()
                    .is_null()
                    .or(op.not_eq(lit(WriteOp::Delete.code()))),
            )
            .map_err(|e| self.fail(e))?
            .select(out)
            .map_err(|e| self.fail(e))?;
        let existing_keys = existing
            .select(
                key.iter()
                    .zip(&existing_key)
                    .map(|(k, e)| ident(k).alias(e))
                    .collect::<Vec<_>>(),
            )
            .map_err(|e| self.fail(e))?;
        let added_cols: Vec<Expr> = existing_cols
            .iter()
            .map(|c| {
                if target_cols.contains(c) {
                    ident(c)
                } else {
                    cast(lit(ScalarValue::Null), existing_field_type(&kept, c)).alias(c)
                }
            })
            .collect();
        let added = changes
            .filter(ident(OP).in_list(vec![lit(1i8), lit(3i8)], false))
            .map_err(|e| self.fail(e))?
            .join(
                existing_keys,
                JoinType::LeftAnti,
                &names(key),
                &names(&existing_key),
                None,
            )
            .map_err(|e| self.fail(e))?
            .select(added_cols)
            .map_err(|e| self.fail(e))?;
        kept.union(added).map_err(|e| self.fail(e))
    }

    /// The key fields of the staged rows of one operation.
    async fn staged_keys(
        &self,
        ctx: &SessionContext,
        op: WriteOp,
    ) -> Result<DataFrame, DestinationError> {
        ctx.table("bf_changes")
            .await
            .map_err(|e| self.fail(e))?
            .filter(ident(OP).eq(lit(op.code())))
            .map_err(|e| self.fail(e))?
            .select(self.target.key.iter().map(ident).collect::<Vec<_>>())
            .map_err(|e| self.fail(e))
    }

    /// Staged keys of `op` that are (`Semi`) or are not (`Anti`) in the existing file.
    async fn staged_vs_existing(
        &self,
        ctx: &SessionContext,
        op: WriteOp,
        join: JoinType,
    ) -> Result<DataFrame, DestinationError> {
        let key = &self.target.key;
        let existing_key: Vec<String> = (0..key.len())
            .map(|i| format!("__bf_existing_key_{i}"))
            .collect();
        let existing = self
            .existing(ctx)
            .await?
            .select(
                key.iter()
                    .zip(&existing_key)
                    .map(|(k, e)| ident(k).alias(e))
                    .collect::<Vec<_>>(),
            )
            .map_err(|e| self.fail(e))?;
        self.staged_keys(ctx, op)
            .await?
            .join(existing, join, &names(key), &names(&existing_key), None)
            .map_err(|e| self.fail(e))
    }

    /// Updates whose key the existing file does not have.
    async fn missing_updates(
        &self,
        ctx: &SessionContext,
        has_existing: bool,
    ) -> Result<Vec<LateRejection>, DestinationError> {
        let missing = if has_existing {
            self.staged_vs_existing(ctx, WriteOp::Update, JoinType::LeftAnti)
                .await?
        } else {
            self.staged_keys(ctx, WriteOp::Update).await?
        };
        crate::destinations::late_rejections(
            missing,
            &self.target.key,
            "no record with this key in the destination file (update-only never creates records)",
            |e| self.fail(e),
        )
        .await
    }

    /// How many staged creates found their key already in the file (they are left alone).
    async fn existing_creates(&self, ctx: &SessionContext) -> Result<u64, DestinationError> {
        let found = self
            .staged_vs_existing(ctx, WriteOp::Create, JoinType::LeftSemi)
            .await?
            .count()
            .await
            .map_err(|e| self.fail(e))?;
        Ok(found as u64)
    }

    /// Stream `df` into the object, replacing it atomically (one multipart upload, completed
    /// at the end: a local rename, or an object store's atomic completion).
    async fn write_object(
        &self,
        ctx: &SessionContext,
        df: DataFrame,
        read_at: Option<UpdateVersion>,
    ) -> Result<(), DestinationError> {
        let path = self.location.object_path().map_err(|e| self.fail(e))?;
        let schema: SchemaRef = Arc::new(df.schema().as_arrow().clone());
        if self.location.local.is_none() {
            return self.put_conditional(df, path, schema, read_at).await;
        }
        if self.format == FileFormat::Parquet {
            // DataFusion's Parquet sink encodes columns in parallel.
            let url = match &self.location.local {
                Some(p) => p.display().to_string(),
                None => {
                    ctx.register_object_store(&self.location.store_url(), self.store.clone());
                    self.location.url.to_string()
                }
            };
            let mut options = TableParquetOptions::default();
            options.global.compression = Some("zstd(1)".into());
            // (No dictionary for a one-field key: see `file_writer_properties`.)
            if let Some(key) = self.target.distinct_field() {
                options.column_specific_options.insert(
                    key.to_string(),
                    datafusion::common::config::ParquetColumnOptions {
                        dictionary_enabled: Some(false),
                        ..Default::default()
                    },
                );
            }
            df.write_parquet(
                &url,
                DataFrameWriteOptions::new().with_single_file_output(true),
                Some(options),
            )
            .await
            .map_err(|e| self.fail(e))?;
            return Ok(());
        }
        // CSV and JSON lines: encode batch by batch into one upload.
        let mut stream = df.execute_stream().await.map_err(|e| self.fail(e))?;
        let mut out = BufWriter::new(self.store.clone(), path);
        let mut first = true;
        while let Some(batch) = stream.next().await {
            let batch = batch.map_err(|e| self.fail(e))?;
            let bytes = self.encode_text(&batch, first)?;
            first = false;
            out.write_all(&bytes).await.map_err(|e| self.fail(e))?;
        }
        if first && self.format == FileFormat::Csv {
            // No rows: still write the header.
            let bytes = self.encode_text(&RecordBatch::new_empty(schema), true)?;
            out.write_all(&bytes).await.map_err(|e| self.fail(e))?;
        }
        out.shutdown().await.map_err(|e| self.fail(e))?;
        Ok(())
    }

    /// In an object store the new file is uploaded in one PUT that only succeeds if the object
    /// is still the version this run read (or still absent): a run that lost its lease and
    /// resumes mid-write cannot replace what a newer run wrote. The file is encoded in memory
    /// for it (one PUT holds up to 5 GB on S3).
    async fn put_conditional(
        &self,
        df: DataFrame,
        path: object_store::path::Path,
        schema: SchemaRef,
        read_at: Option<UpdateVersion>,
    ) -> Result<(), DestinationError> {
        let mut stream = df.execute_stream().await.map_err(|e| self.fail(e))?;
        let mut bytes = Vec::new();
        if self.format == FileFormat::Parquet {
            let props = crate::state::file_writer_properties(self.target.distinct_field());
            let mut w =
                ArrowWriter::try_new(&mut bytes, schema, Some(props)).map_err(|e| self.fail(e))?;
            while let Some(batch) = stream.next().await {
                w.write(&batch.map_err(|e| self.fail(e))?)
                    .map_err(|e| self.fail(e))?;
            }
            w.close().map_err(|e| self.fail(e))?;
        } else {
            let mut first = true;
            while let Some(batch) = stream.next().await {
                let batch = batch.map_err(|e| self.fail(e))?;
                bytes.extend(self.encode_text(&batch, first)?);
                first = false;
            }
            if first && self.format == FileFormat::Csv {
                bytes.extend(self.encode_text(&RecordBatch::new_empty(schema), true)?);
            }
        }
        let mode = match read_at {
            Some(v) => PutMode::Update(v),
            None => PutMode::Create,
        };
        let payload = PutPayload::from(bytes);
        // Tests hold the run here while another writer replaces the object.
        #[cfg(feature = "failpoints")]
        fail::fail_point!("file_before_put");
        let put = self
            .store
            .put_opts(&path, payload.clone(), mode.into())
            .await;
        match put {
            Ok(_) => Ok(()),
            // A store that cannot write conditionally (an HTTP server): as before.
            Err(object_store::Error::NotImplemented { .. }) => self
                .store
                .put(&path, payload)
                .await
                .map(|_| ())
                .map_err(|e| self.fail(e)),
            Err(
                object_store::Error::Precondition { .. }
                | object_store::Error::AlreadyExists { .. },
            ) => Err(self.fail(
                "the file changed since this run read it (another run wrote it meanwhile): \
                 this run wrote nothing and commits nothing; the next run re-checks",
            )),
            Err(e) => Err(self.fail(e)),
        }
    }

    fn encode_text(&self, batch: &RecordBatch, header: bool) -> Result<Vec<u8>, DestinationError> {
        let mut buf = Vec::new();
        match self.format {
            FileFormat::Csv => {
                let mut w = arrow::csv::WriterBuilder::new()
                    .with_header(header)
                    .build(&mut buf);
                w.write(batch).map_err(|e| self.fail(e))?;
            }
            _ => {
                let mut w = arrow::json::WriterBuilder::new()
                    .with_explicit_nulls(true)
                    .build::<_, arrow::json::writer::LineDelimited>(&mut buf);
                w.write(batch).map_err(|e| self.fail(e))?;
                w.finish().map_err(|e| self.fail(e))?;
            }
        }
        Ok(buf)
    }
}

/// Column names as the join API takes them.
fn names(columns: &[String]) -> Vec<&str> {
    columns.iter().map(String::as_str).collect()
}

/// Types a JSON number is decoded into from its text, exactly (inference would pick a float
/// for a decimal, and for an integer past the range of i64).
fn decoded_exactly(dt: &DataType) -> bool {
    dt.is_integer() || matches!(dt, DataType::Decimal128(..) | DataType::Decimal256(..))
}

fn existing_field_type(df: &DataFrame, name: &str) -> DataType {
    df.schema()
        .field_with_unqualified_name(name)
        .map(|f| f.data_type().clone())
        .unwrap_or(DataType::Utf8)
}

#[async_trait]
impl ObjectWriter for FileWriter {
    async fn write(
        &mut self,
        op: WriteOp,
        batch: RecordBatch,
    ) -> Result<BatchOutcome, DestinationError> {
        self.staging
            .push(op, &batch)
            .map_err(|e| self.object.fail(e))?;
        Ok(BatchOutcome::default())
    }

    async fn finish(self: Box<Self>) -> Result<FinishOutcome, DestinationError> {
        let FileWriter { object, staging } = *self;
        let staging = staging.close().map_err(|e| object.fail(e))?;
        let ctx = SessionContext::new_with_config_rt(
            object.target.engine.clone(),
            object.target.runtime.clone(),
        );
        let read_at = object.register_existing_at(&ctx).await?;
        let has_existing = read_at.is_some();
        if staging.rows == 0 && has_existing {
            return Ok(FinishOutcome::default());
        }
        ctx.register_parquet(
            "bf_changes",
            &staging.path.display().to_string(),
            ParquetReadOptions::default(),
        )
        .await
        .map_err(|e| object.fail(e))?;
        let rejected = if staging.count(WriteOp::Update) > 0 {
            object.missing_updates(&ctx, has_existing).await?
        } else {
            Vec::new()
        };
        let skipped = if has_existing && staging.count(WriteOp::Create) > 0 {
            object.existing_creates(&ctx).await?
        } else {
            0
        };
        let merged = object.merged(&ctx, has_existing).await?;
        object.write_object(&ctx, merged, read_at).await?;
        drop(staging);
        Ok(FinishOutcome {
            rejected,
            skipped,
            retries: 0,
        })
    }
}
