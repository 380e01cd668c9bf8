//! What a sync does with a record: its [`Behavior`] (the six reverse-ETL users know), and the
//! [`WriteOp`] a destination receives for each record it sends. Both the configuration and the
//! destinations speak this vocabulary; it depends on nothing.

use serde::{Deserialize, Serialize};

/// Sync behaviours, with the meaning reverse-ETL users know.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Behavior {
    /// Update the record when the key matches, else create it.
    #[serde(alias = "update-or-create")]
    Upsert,
    /// Only update records that already exist in the destination.
    #[serde(alias = "update_only")]
    UpdateOnly,
    /// Only create records that do not exist yet; never update.
    #[serde(alias = "create_only")]
    CreateOnly,
    /// Upsert, and delete records that left the model.
    Mirror,
    /// Append every new or changed row, as an event log.
    #[serde(alias = "append_only", alias = "append")]
    AppendOnly,
    /// The model lists keys to delete from the destination.
    Delete,
}

impl Behavior {
    /// Whether the behavior creates records in the destination.
    pub fn creates(self) -> bool {
        matches!(
            self,
            Behavior::Upsert | Behavior::Mirror | Behavior::CreateOnly | Behavior::AppendOnly
        )
    }

    /// Whether the behavior writes records whose keys are in its state (updates or deletes
    /// them), so that an interrupted run must announce them first (write-ahead intents).
    pub fn acts_on_synced_records(self) -> bool {
        matches!(
            self,
            Behavior::Upsert | Behavior::UpdateOnly | Behavior::Mirror
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Behavior::Upsert => "upsert",
            Behavior::UpdateOnly => "update-only",
            Behavior::CreateOnly => "create-only",
            Behavior::Mirror => "mirror",
            Behavior::AppendOnly => "append-only",
            Behavior::Delete => "delete",
        }
    }
}

impl std::fmt::Display for Behavior {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The operation a batch carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WriteOp {
    /// Update the record with this key, or create it.
    Upsert,
    /// Update the record with this key; reject the row when there is none.
    Update,
    /// Create the record; leave an existing one with this key alone (counted as skipped).
    Create,
    /// Delete the record with this key (the batch holds only the key column); a missing
    /// record is not an error.
    Delete,
    /// Add the row, whatever is there already.
    Append,
}

impl WriteOp {
    pub fn as_str(self) -> &'static str {
        match self {
            WriteOp::Upsert => "upsert",
            WriteOp::Update => "update",
            WriteOp::Create => "create",
            WriteOp::Delete => "delete",
            WriteOp::Append => "append",
        }
    }

    pub fn code(self) -> i8 {
        match self {
            WriteOp::Upsert => 1,
            WriteOp::Update => 2,
            WriteOp::Create => 3,
            WriteOp::Delete => 4,
            WriteOp::Append => 5,
        }
    }
}
