//! Hub state: an entity's golden records, its sources' contributions (which are also the ID
//! map) and its transaction log, all Parquet, committed together by one manifest.
//!
//! ```text
//! <state>/hub/<entity>/
//!   _manifests/00000000000000000007.json    one per committed cycle (see state.rs: same protocol)
//!   data/v…07-<uuid>/golden.parquet         golden_id, the fields, __bf_src__<field> (where each
//!                                          value came from), __bf_created_seq, __bf_seq (the
//!                                          cycle of the last change), __bf_created_at,
//!                                          __bf_updated_at, __bf_merged_into (set on losers),
//!                                          __bf_retired_at and __bf_retired_reason (set when
//!                                          its last source record was deleted)
//!   data/v…07-<uuid>/contrib-<source>.parquet
//!                                          one row per source record: __bf_sid (its id),
//!                                          __bf_golden_id (NULL: a receive-only record that
//!                                          matched nothing yet), the fields it maps, and per
//!                                          field __bf_at__<field> (µs of its last change);
//!                                          __bf_read_seq, __bf_link_seq, __bf_first_seq,
//!                                          __bf_linked_by
//!   data/v…07-<uuid>/quarantine-<source>.parquet
//!                                          the source's records kept out of the golden
//!                                          records: ambiguous matches and invalid records,
//!                                          with why (see quarantine.rs)
//!   data/v…07-<uuid>/in-<source>.parquet    what the cycle read (kept with its version)
//!   data/v…05-<uuid>/apart.parquet          golden records never to be merged: __bf_a (split
//!                                          out of) and __bf_b (the one split out), the source
//!                                          record, the version (see `hub unmerge`)
//!   log/v…07-<uuid>.parquet                 the transaction log entries of cycle 7
//! ```
//!
//! The manifest names every file it uses with its size, and each source's read position.

use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use datafusion::common::ScalarValue;
use datafusion::logical_expr::{cast, lit};
use datafusion::prelude::{DataFrame, Expr, ParquetReadOptions, SessionContext, ident};
use indexmap::IndexMap;
use serde::{Deserialize, Serialize};

use crate::config::entity::EntityConfig;
use crate::state::{StateStore, Versioned};

pub const GOLDEN_ID: &str = "golden_id";
pub const CREATED_SEQ: &str = "__bf_created_seq";
pub const SEQ: &str = "__bf_seq";
pub const CREATED_AT: &str = "__bf_created_at";
pub const UPDATED_AT: &str = "__bf_updated_at";
pub const MERGED_INTO: &str = "__bf_merged_into";
pub const RETIRED_AT: &str = "__bf_retired_at";
pub const RETIRED_REASON: &str = "__bf_retired_reason";

pub const SID: &str = "__bf_sid";
pub const LINK: &str = "__bf_golden_id";
pub const READ_SEQ: &str = "__bf_read_seq";
pub const LINK_SEQ: &str = "__bf_link_seq";
pub const FIRST_SEQ: &str = "__bf_first_seq";
pub const LINKED_BY: &str = "__bf_linked_by";

/// `__bf_src__<field>`: the source a golden value came from.
pub fn src_col(field: &str) -> String {
    format!("__bf_src__{field}")
}

/// `__bf_at__<field>`: when a source's value of the field last changed (µs since the epoch).
pub fn at_col(field: &str) -> String {
    format!("__bf_at__{field}")
}

pub fn timestamp_type() -> DataType {
    DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
}

/// A file of the state, with the size the commit recorded.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct StateFile {
    /// Relative to the state root.
    pub path: String,
    pub rows: u64,
    #[serde(default)]
    pub bytes: Option<u64>,
}

/// A value as stored in a manifest: its Arrow type and its text.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct StoredValue {
    pub data_type: String,
    pub value: String,
}

impl StoredValue {
    pub fn from_scalar(v: &ScalarValue) -> StoredValue {
        StoredValue {
            data_type: v.data_type().to_string(),
            value: crate::values::scalar_text(v),
        }
    }

    /// The value, cast to `current` (the column's type now).
    pub fn to_scalar(&self, current: &DataType) -> Result<ScalarValue, String> {
        let stored: DataType = self
            .data_type
            .parse()
            .map_err(|e| format!("stored type {} is unreadable: {e}", self.data_type))?;
        ScalarValue::try_from_string(self.value.clone(), &stored)
            .and_then(|v| v.cast_to(current))
            .map_err(|e| {
                format!(
                    "stored value {} ({}) does not fit type {current}: {e}",
                    self.value, self.data_type
                )
            })
    }
}

/// Where a source's reading stands: the last record read, by watermark and id.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Position {
    /// The last watermark value read (None for a source without a watermark, or a NULL one).
    pub watermark: Option<StoredValue>,
    /// The last id read with it (None: that record's id was NULL; NULL ids come first).
    pub id: Option<StoredValue>,
    /// Whether that read reached the end of the source. The next read then starts *at* the
    /// watermark (records that arrived since with the same value are not missed; those read
    /// again unchanged change nothing); otherwise it goes on *after* the last record.
    #[serde(default)]
    pub drained: bool,
}

/// One source's part of the state.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SourceState {
    pub contributions: StateFile,
    /// The Arrow type of the source's id.
    pub id_type: String,
    /// How far the source has been read (None: from the start).
    pub position: Option<Position>,
    /// The source's records in quarantine (see `quarantine.rs`); None: none ever were.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quarantine: Option<StateFile>,
}

/// One committed cycle of an entity. Stored as JSON in `hub/<entity>/_manifests/`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HubManifest {
    pub format: u32,
    pub entity: String,
    pub version: u64,
    pub run_id: String,
    pub committed_at: String,
    /// The id the next new golden record gets.
    pub next_golden_id: i64,
    /// Every golden record, as of the cycle that last wrote them all.
    pub golden: StateFile,
    /// The golden records each later cycle changed, oldest first: a record's newest row wins
    /// (see `hub::golden_table`). Folded into `golden` when they grow (see `cycle.rs`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub golden_deltas: Vec<StateFile>,
    pub sources: IndexMap<String, SourceState>,
    /// The transaction log, oldest first.
    pub log: Vec<StateFile>,
    /// Pairs of golden records never to be merged (`hub unmerge` split them); None: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub apart: Option<StateFile>,
    /// XXH3-64 of the manifest with this field empty (see `state::Versioned`).
    #[serde(default)]
    pub checksum: Option<String>,
}

impl Versioned for HubManifest {
    fn version(&self) -> u64 {
        self.version
    }
    fn checksum(&self) -> Option<&str> {
        self.checksum.as_deref()
    }
    fn set_checksum(&mut self, checksum: Option<String>) {
        self.checksum = checksum;
    }
    fn files_mut(&mut self) -> Vec<(&str, &mut Option<u64>)> {
        let mut files = vec![(self.golden.path.as_str(), &mut self.golden.bytes)];
        for d in &mut self.golden_deltas {
            files.push((d.path.as_str(), &mut d.bytes));
        }
        for s in self.sources.values_mut() {
            files.push((s.contributions.path.as_str(), &mut s.contributions.bytes));
            if let Some(q) = &mut s.quarantine {
                files.push((q.path.as_str(), &mut q.bytes));
            }
        }
        for l in &mut self.log {
            files.push((l.path.as_str(), &mut l.bytes));
        }
        if let Some(a) = &mut self.apart {
            files.push((a.path.as_str(), &mut a.bytes));
        }
        files
    }
}

/// The golden table's schema for `entity`.
pub fn golden_schema(entity: &EntityConfig) -> SchemaRef {
    let mut fields = vec![Field::new(GOLDEN_ID, DataType::Int64, true)];
    for (name, ty) in entity.field_types() {
        fields.push(Field::new(&name, ty.unwrap_or(DataType::Utf8), true));
    }
    for name in entity.fields.keys() {
        fields.push(Field::new(src_col(name), DataType::Utf8, true));
    }
    fields.extend([
        Field::new(CREATED_SEQ, DataType::Int64, true),
        Field::new(SEQ, DataType::Int64, true),
        Field::new(CREATED_AT, timestamp_type(), true),
        Field::new(UPDATED_AT, timestamp_type(), true),
        Field::new(MERGED_INTO, DataType::Int64, true),
        Field::new(RETIRED_AT, timestamp_type(), true),
        Field::new(RETIRED_REASON, DataType::Utf8, true),
    ]);
    Arc::new(Schema::new(fields))
}

/// A source's contributions schema: its id type, and the entity fields it maps.
pub fn contributions_schema(entity: &EntityConfig, source: &str, id_type: &DataType) -> SchemaRef {
    let mapped = mapped_fields(entity, source);
    let types: IndexMap<String, DataType> = entity
        .field_types()
        .into_iter()
        .map(|(n, t)| (n, t.unwrap_or(DataType::Utf8)))
        .collect();
    let mut fields = vec![
        Field::new(SID, id_type.clone(), true),
        Field::new(LINK, DataType::Int64, true),
    ];
    for f in &mapped {
        fields.push(Field::new(f, types[f].clone(), true));
    }
    for f in &mapped {
        fields.push(Field::new(at_col(f), DataType::Int64, true));
    }
    fields.extend([
        Field::new(READ_SEQ, DataType::Int64, true),
        Field::new(LINK_SEQ, DataType::Int64, true),
        Field::new(FIRST_SEQ, DataType::Int64, true),
        Field::new(LINKED_BY, DataType::Utf8, true),
    ]);
    Arc::new(Schema::new(fields))
}

/// The entity fields `source` maps, in the entity's order.
pub fn mapped_fields(entity: &EntityConfig, source: &str) -> Vec<String> {
    let Some(s) = entity.sources.get(source) else {
        return Vec::new();
    };
    entity
        .fields
        .keys()
        .filter(|f| s.fields.contains_key(*f))
        .cloned()
        .collect()
}

/// The transaction log's schema.
pub fn log_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("version", DataType::Int64, true),
        Field::new("run_id", DataType::Utf8, true),
        Field::new("at", timestamp_type(), true),
        Field::new(GOLDEN_ID, DataType::Int64, true),
        Field::new("op", DataType::Utf8, true),
        Field::new("field", DataType::Utf8, true),
        Field::new("old_value", DataType::Utf8, true),
        Field::new("new_value", DataType::Utf8, true),
        Field::new("source", DataType::Utf8, true),
        Field::new("source_id", DataType::Utf8, true),
        Field::new("detail", DataType::Utf8, true),
    ]))
}

/// Read state file(s) as a relation in exactly `schema`: a column the files lack (a field
/// added since) is NULL, one of another type is cast, one no longer wanted is dropped. No
/// files: an empty relation.
pub async fn read_aligned(
    store: &StateStore,
    ctx: &SessionContext,
    files: &[&StateFile],
    schema: &SchemaRef,
) -> datafusion::error::Result<DataFrame> {
    let files: Vec<&&StateFile> = files.iter().filter(|f| f.rows > 0).collect();
    if files.is_empty() {
        return ctx.read_empty().and_then(|df| {
            df.select(
                schema
                    .fields()
                    .iter()
                    .map(|f| cast(lit(ScalarValue::Null), f.data_type().clone()).alias(f.name()))
                    .collect::<Vec<_>>(),
            )
            .and_then(|df| df.limit(0, Some(0)))
        });
    }
    let urls: Vec<String> = files.iter().map(|f| store.table_url(&f.path)).collect();
    let df = ctx
        .read_parquet(urls, ParquetReadOptions::default())
        .await?;
    align(df, schema)
}

/// A table kept as layers (`layers`: the oldest first, each a file in `schema`'s columns):
/// for each `key`, the row of the newest layer that has it. A layer holds only the rows that
/// changed since the one before it, so a cycle writes what it changed, not the whole table.
pub async fn read_layered(
    store: &StateStore,
    ctx: &SessionContext,
    layers: &[&StateFile],
    schema: &SchemaRef,
    key: &str,
) -> datafusion::error::Result<DataFrame> {
    const LATER: &str = "__bf_later_key";
    let mut out: Option<DataFrame> = None;
    // Keys of the layers newer than the one at hand.
    let mut later: Option<DataFrame> = None;
    for (i, layer) in layers.iter().enumerate().rev() {
        let df = read_aligned(store, ctx, &[*layer], schema).await?;
        let kept = match &later {
            None => df.clone(),
            Some(keys) => df.clone().join(
                keys.clone(),
                datafusion::common::JoinType::LeftAnti,
                &[key],
                &[LATER],
                None,
            )?,
        };
        out = Some(match out {
            None => kept,
            Some(o) => o.union(kept)?,
        });
        if i > 0 {
            let keys = df.select(vec![ident(key).alias(LATER)])?;
            later = Some(match later {
                None => keys,
                Some(k) => k.union(keys)?,
            });
        }
    }
    match out {
        Some(df) => Ok(df),
        None => read_aligned(store, ctx, &[], schema).await,
    }
}

/// `df` projected onto `schema` (see [`read_aligned`]).
pub fn align(df: DataFrame, schema: &SchemaRef) -> datafusion::error::Result<DataFrame> {
    let have = df.schema().clone();
    let exprs: Vec<Expr> = schema
        .fields()
        .iter()
        .map(|f| match have.field_with_unqualified_name(f.name()) {
            Ok(h) if h.data_type() == f.data_type() => ident(f.name()),
            Ok(_) => cast(ident(f.name()), f.data_type().clone()).alias(f.name()),
            Err(_) => cast(lit(ScalarValue::Null), f.data_type().clone()).alias(f.name()),
        })
        .collect();
    df.select(exprs)
}

/// The schema of the pairs of golden records kept apart.
pub fn apart_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("__bf_a", DataType::Int64, true),
        Field::new("__bf_b", DataType::Int64, true),
        Field::new("__bf_source", DataType::Utf8, true),
        Field::new("__bf_sid_text", DataType::Utf8, true),
        Field::new("__bf_version", DataType::Int64, true),
    ]))
}
