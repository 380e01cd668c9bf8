//! What the SQL destinations check of an existing table before a run writes it: the key column
//! is there, every field fits the column it goes into without a silent change of meaning, and
//! no NOT NULL column without a default is left out of a sync that creates records. The
//! servers differ in how they describe a column and which types fit ([`TableColumn`] and the
//! `compatible` rule each passes), not in what is checked.

use arrow::datatypes::{DataType, Field};

use super::{DestinationError, WriteTarget};

/// Problems with a table name every SQL destination refuses (empty, NUL), then the server's
/// own limit: `max` characters (`chars`) or bytes, named `limit` in the message.
pub(crate) fn name_problems(object: &str, limit: Option<(usize, bool, &str)>) -> Vec<String> {
    let mut p = Vec::new();
    if object.trim().is_empty() {
        p.push("the table name is empty".to_string());
    }
    if object.contains('\0') {
        p.push("the table name contains a NUL character".to_string());
    }
    if let Some((max, chars, limit)) = limit {
        let len = if chars {
            object.chars().count()
        } else {
            object.len()
        };
        if len > max {
            p.push(limit.to_string());
        }
    }
    p
}

/// A column of an existing table, as a server describes it.
pub(crate) trait TableColumn {
    fn name(&self) -> &str;
    /// Its type as the server writes it, for messages.
    fn type_text(&self) -> &str;
    /// NOT NULL without a default: an insert must give it a value.
    fn required(&self) -> bool;
}

/// How a server compares names.
#[derive(Clone, Copy)]
pub(crate) enum Names {
    Exact,
    /// MySQL column names are case-insensitive.
    CaseInsensitive,
}

impl Names {
    fn same(self, a: &str, b: &str) -> bool {
        match self {
            Names::Exact => a == b,
            Names::CaseInsensitive => a.eq_ignore_ascii_case(b),
        }
    }
}

/// Check every field of `target` against the table's `columns`; returns the fields the table
/// lacks (to be added), or every problem at once.
pub(crate) fn compare<'a, C: TableColumn>(
    destination: &str,
    target: &'a WriteTarget,
    columns: &[C],
    names: Names,
    compatible: impl Fn(&DataType, &C) -> Result<(), String>,
) -> Result<Vec<&'a Field>, DestinationError> {
    let find = |n: &str| columns.iter().find(|c| names.same(c.name(), n));
    if let Some(absent) = target.key.iter().find(|k| find(k).is_none()) {
        let have: Vec<&str> = columns.iter().map(|c| c.name()).collect();
        return Err(DestinationError::incompatible(
            destination,
            target,
            format!(
                "the table has no key column \"{absent}\" (it has: {})",
                have.join(", ")
            ),
        ));
    }
    let mut missing = Vec::new();
    let mut problems = Vec::new();
    for f in target.schema.fields() {
        match find(f.name()) {
            None => missing.push(f.as_ref()),
            Some(c) => {
                if let Err(why) = compatible(f.data_type(), c) {
                    problems.push(format!(
                        "field \"{}\" ({}) cannot go into column \"{}\" of type {}: {why}",
                        f.name(),
                        f.data_type(),
                        c.name(),
                        c.type_text()
                    ));
                }
            }
        }
    }
    if target.behavior.creates() {
        for c in columns.iter().filter(|c| c.required()) {
            if !target
                .schema
                .fields()
                .iter()
                .any(|f| names.same(f.name(), c.name()))
            {
                problems.push(format!(
                    "column \"{}\" is NOT NULL without a default and the sync does not send it, so no record could be created; \
                     map a field to it, give it a default, or use behavior update-only",
                    c.name()
                ));
            }
        }
    }
    if !problems.is_empty() {
        return Err(DestinationError::incompatible(
            destination,
            target,
            problems.join("; "),
        ));
    }
    Ok(missing)
}
