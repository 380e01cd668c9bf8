//! The map stage: model rows → destination fields, plus the columns the diff needs.
//!
//! Output columns: every destination field (key first), then `__bf_key`, `__bf_hash`,
//! `__bf_cursor` and `__bf_present`. The hash covers the destination fields in name order (see
//! `hash.rs`), so reordering the mapping changes nothing while renaming, adding or removing a
//! field re-sends rows (with only the fields still mapped: values of a removed field stay in the
//! destination untouched).

use std::collections::BTreeMap;

use datafusion::prelude::{DataFrame, Expr, ident, lit};

use arrow::datatypes::DataType;

use crate::config::{Behavior, SendMode, SyncConfig};
use crate::hash::{ROW_HASH, type_family};

pub const KEY: &str = "__bf_key";
pub const HASH: &str = "__bf_hash";
pub const CURSOR: &str = "__bf_cursor";
pub const PRESENT: &str = "__bf_present";
/// For a sync that sends only changed fields: one hash per destination field, in name order.
pub const FIELDS: &str = "__bf_fields";

/// The type of [`FIELDS`]: the per-field hashes packed (see `hash::field_hashes_udf`).
pub fn fields_type() -> DataType {
    DataType::Binary
}

/// The mapped relation and what it sends.
pub struct Mapped {
    pub df: DataFrame,
    /// Destination field names, the key's first (in key order).
    pub fields: Vec<String>,
    /// How many of `fields` are the key's (more than one for a composite key).
    pub key_len: usize,
    /// The row-hash header (field names and type families): changes when the mapping does.
    pub fingerprint: String,
    /// For a sync that sends only changed fields: the per-field hashes ([`FIELDS`]) of a row,
    /// over the destination fields. Not a column of `df`: computed after the diff, for the rows
    /// that are sent only (the state keeps the others' from earlier runs).
    pub field_hashes: Option<Expr>,
}

/// Problems with a sync's mapping against the actual columns of its `from`.
#[derive(Debug)]
pub struct MappingProblems(pub Vec<String>);

/// Build the mapped relation for `sync` over `relation` (the model, segment or source rows).
pub fn map(sync: &SyncConfig, relation: DataFrame) -> Result<Mapped, MappingProblems> {
    let columns: Vec<String> = relation
        .schema()
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .collect();
    let mut problems = Vec::new();
    let has = |c: &str| columns.iter().any(|x| x == c);
    let listing = || columns.join(", ");

    for key_src in sync.key.sources() {
        if !has(key_src) {
            problems.push(format!(
                "key column \"{key_src}\" is not a column of \"{}\"{} (its columns: {})",
                sync.from,
                crate::names::suggest(key_src, columns.iter().map(String::as_str)),
                listing()
            ));
        }
    }
    if let Some(cursor) = &sync.cursor
        && !has(cursor)
    {
        problems.push(format!(
            "cursor column \"{cursor}\" is not a column of \"{}\" (its columns: {})",
            sync.from,
            listing()
        ));
    }
    for from in sync.fields.rename.keys() {
        if !has(from) {
            problems.push(format!(
                "fields.rename maps \"{from}\", which is not a column of \"{}\"{} (its columns: {})",
                sync.from,
                crate::names::suggest(from, columns.iter().map(String::as_str)),
                listing()
            ));
        }
    }
    for ex in &sync.fields.exclude {
        if !has(ex) {
            problems.push(format!(
                "fields.exclude names \"{ex}\", which is not a column of \"{}\" (its columns: {})",
                sync.from,
                listing()
            ));
        }
        if sync.key.has_source(ex) {
            problems.push(format!("fields.exclude names the key column \"{ex}\""));
        }
    }

    // (destination name, expression), the key's first.
    let mut fields: Vec<(String, Expr)> = sync
        .key
        .parts()
        .iter()
        .map(|p| {
            (
                p.destination.clone(),
                ident(&p.source).alias(&p.destination),
            )
        })
        .collect();
    if sync.behavior != Behavior::Delete {
        if sync.fields.auto {
            for c in &columns {
                if sync.key.has_source(c)
                    || sync.fields.exclude.contains(c)
                    || sync.fields.rename.contains_key(c)
                {
                    continue;
                }
                fields.push((c.clone(), ident(c)));
            }
        }
        for (from, to) in &sync.fields.rename {
            fields.push((to.clone(), ident(from).alias(to)));
        }
        for (to, sql) in &sync.fields.computed {
            match relation.parse_sql_expr(sql) {
                Ok(e) => fields.push((to.clone(), e.alias(to))),
                Err(e) => problems.push(format!(
                    "computed field \"{to}\" = `{sql}` is not a valid SQL expression over \"{}\": {e}",
                    sync.from
                )),
            }
        }
        // A lookup field carries the value looked up until the row is sent (see `lookup`): the
        // row hash covers the value, not what the destination found for it.
        for (to, l) in &sync.fields.lookup {
            match relation.parse_sql_expr(&l.value) {
                Ok(e) => fields.push((to.clone(), e.alias(to))),
                Err(e) => problems.push(format!(
                    "fields.lookup.{to}: value = `{}` is not a column of \"{}\" or an SQL expression over its columns{}: {e}",
                    l.value,
                    sync.from,
                    crate::names::suggest(&l.value, columns.iter().map(String::as_str)),
                )),
            }
        }
    }
    let mut seen = BTreeMap::new();
    for (name, _) in &fields {
        *seen.entry(name.clone()).or_insert(0) += 1;
    }
    for (name, n) in seen {
        if n > 1 {
            problems.push(format!(
                "destination field \"{name}\" is mapped {n} times (an auto-mapped column, a rename or a computed field share the name; exclude or rename one)"
            ));
        }
    }
    if !problems.is_empty() {
        return Err(MappingProblems(problems));
    }

    let names: Vec<String> = fields.iter().map(|(n, _)| n.clone()).collect();
    let mut exprs: Vec<Expr> = fields.into_iter().map(|(_, e)| e).collect();
    exprs.push(match &sync.cursor {
        Some(c) => ident(c).alias(CURSOR),
        None => lit(datafusion::common::ScalarValue::Null).alias(CURSOR),
    });
    let projected = relation
        .select(exprs)
        .map_err(|e| MappingProblems(vec![e.to_string()]))?;

    // The hash covers the destination fields in name order, with a header of names and type
    // families.
    let schema = projected.schema().clone();
    let mut sorted: Vec<&String> = names.iter().collect();
    sorted.sort();
    let header = sorted
        .iter()
        .map(|n| {
            let family = schema
                .field_with_unqualified_name(n)
                .map(|f| type_family(f.data_type()))
                .unwrap_or_default();
            format!("{n}:{family}")
        })
        .collect::<Vec<_>>()
        .join(",");
    let mut hash_args = vec![lit(header.clone())];
    hash_args.extend(sorted.iter().map(|n| ident(n.as_str())));
    let hash = Expr::ScalarFunction(datafusion::logical_expr::expr::ScalarFunction::new_udf(
        std::sync::Arc::new(crate::hash::row_hash_udf()),
        hash_args,
    ))
    .alias(HASH);
    debug_assert_eq!(crate::hash::row_hash_udf().name(), ROW_HASH);

    let mut out: Vec<Expr> = names.iter().map(ident).collect();
    out.push(crate::keys::key_expr(&sync.key.destinations()).alias(KEY));
    out.push(hash);
    let field_hashes = if sync.send == SendMode::Changed {
        // Each field hashed as the row is, alone (its own name and type family as header).
        let mut args = Vec::with_capacity(sorted.len() * 2);
        for n in &sorted {
            let family = schema
                .field_with_unqualified_name(n)
                .map(|f| type_family(f.data_type()))
                .unwrap_or_default();
            args.push(lit(format!("{n}:{family}")));
            args.push(ident(n.as_str()));
        }
        Some(Expr::ScalarFunction(
            datafusion::logical_expr::expr::ScalarFunction::new_udf(
                std::sync::Arc::new(crate::hash::field_hashes_udf()),
                args,
            ),
        ))
    } else {
        None
    };
    out.push(ident(CURSOR));
    out.push(lit(true).alias(PRESENT));
    let df = projected
        .select(out)
        .map_err(|e| MappingProblems(vec![e.to_string()]))?;
    Ok(Mapped {
        df,
        fields: names,
        key_len: sync.key.parts().len(),
        fingerprint: header,
        field_hashes,
    })
}
