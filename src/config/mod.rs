//! Project configuration: `backflow.toml` parsed strictly, then validated without any I/O.
//!
//! Parsing rejects unknown keys and types with the line they sit on (the `toml` crate reports
//! spans). Validation then checks every cross-reference (a sync's `from` and `to`, a segment's
//! model, name clashes, behaviours that cannot work together) and reports *all* problems at once,
//! each naming the table it belongs to and its line in the file.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use indexmap::IndexMap;
use serde::Deserialize;

pub mod alert;
pub mod entity;

pub use crate::behavior::Behavior;
use crate::destinations::DestinationConfig;
use crate::names::{is_plain_identifier, is_safe_name, suggest};
use crate::sources::SourceConfig;

/// The file every project has at its root.
pub const CONFIG_FILE: &str = "backflow.toml";

/// Errors in reading or validating the project configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{} is not valid: {message}", path.display())]
    Parse { path: PathBuf, message: String },
    #[error("{} has {} problem(s):\n{}", path.display(), problems.len(), problems.iter().map(|p| format!("  - {p}")).collect::<Vec<_>>().join("\n"))]
    Invalid {
        path: PathBuf,
        problems: Vec<String>,
    },
}

/// `backflow.toml`, as written by the user.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProjectConfig {
    /// Where the sync state and run history live.
    #[serde(default)]
    pub state: StateConfig,
    /// How the query engine runs: memory limit, spill folder, parallelism.
    #[serde(default)]
    pub engine: EngineConfig,
    /// Named data sources: files or tables that models read by name.
    #[serde(default)]
    pub sources: IndexMap<String, SourceConfig>,
    /// Named segments: a model narrowed by a SQL filter.
    #[serde(default)]
    pub segments: IndexMap<String, SegmentConfig>,
    /// Named destinations: where syncs write.
    #[serde(default)]
    pub destinations: IndexMap<String, DestinationConfig>,
    /// Named syncs: a model or segment kept in sync with a destination object.
    #[serde(default)]
    pub syncs: IndexMap<String, SyncConfig>,
    /// Hub entities: golden records unified from several sources (see `hub`).
    #[serde(default)]
    pub entities: IndexMap<String, entity::EntityConfig>,
    /// Who is told when syncs under `backflow serve` fail, recover, reject too many records
    /// or go stale.
    #[serde(default)]
    pub alerts: IndexMap<String, alert::AlertConfig>,
}

/// `[state]`
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StateConfig {
    /// A directory relative to the project, an absolute path, or an object-store URL
    /// (`s3://bucket/prefix`). Default: `.backflow` in the project directory.
    pub path: Option<String>,
    /// In an object store: how long a run's lease lasts without renewal (default "60s"; it is
    /// renewed every third of that while the run goes).
    pub lease: Option<String>,
}

/// `[engine]`
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EngineConfig {
    /// The most memory the engine's operators may hold, e.g. "2GiB". Joins, sorts and
    /// aggregations past it spill to disk instead of failing (joins then run as sort-merge
    /// joins, which spill). Default: no limit.
    pub memory_limit: Option<bytesize::ByteSize>,
    /// Where spill files go. Default: the system's temporary folder.
    pub spill_dir: Option<PathBuf>,
    /// How many partitions plans run with. Default: the number of cores, or 1 with a memory
    /// limit (see `memory`).
    pub target_partitions: Option<usize>,
    /// Rows per Arrow batch. Default: 32768, or 8192 with a memory limit.
    pub batch_size: Option<usize>,
    /// Keep a record log for every sync (see `record_log` on a sync).
    #[serde(default)]
    pub record_log: bool,
    /// How long record logs are kept (default `"30d"`).
    pub record_log_retention: Option<String>,
}

/// `[segments.NAME]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SegmentConfig {
    /// The model (or source) this segment narrows.
    pub model: String,
    /// A SQL boolean expression over the model's columns, e.g. `plan <> 'free'`.
    pub filter: String,
}

/// `[syncs.NAME]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SyncConfig {
    /// The model, segment or source whose rows are synced.
    pub from: String,
    /// The destination name.
    pub to: String,
    /// The destination object: a table name for databases, a file name for file destinations.
    pub object: String,
    /// What the sync does with new, changed and removed rows.
    pub behavior: Behavior,
    /// The matching identifier.
    pub key: KeyConfig,
    /// Which fields are sent and under which names.
    #[serde(default)]
    pub fields: FieldsConfig,
    /// A column whose value only grows (an `updated_at`): when set, a run reads only rows at or
    /// past the stored watermark.
    pub cursor: Option<String>,
    /// Read this far behind the watermark, so that rows whose cursor value arrives late (a
    /// replica catching up, a transaction committed after a later one) are still seen. A
    /// duration (`"15m"`, `"2h"`, `"1d"`) for date and time cursors, a number for numeric ones.
    /// Rows read again are compared by key and row hash, so nothing is sent twice.
    pub cursor_lookback: Option<Lookback>,
    /// The most records one run of a mirror may delete: a share of the records in sync
    /// (`"20%"`) or a count (`500`); default `"50%"`. A run over it sends nothing and commits
    /// nothing (see `sync::guard`).
    pub max_deletes: Option<DeleteLimit>,
    /// Labels to pick syncs by: `backflow run --select tag:daily`.
    #[serde(default)]
    pub tags: Vec<String>,
    /// When it runs under `backflow serve`: a cron line of 5 fields (`"*/15 * * * *"`),
    /// `"every 30s"`, or `"continuous"`; none: only when asked (see `schedule`).
    pub schedule: Option<String>,
    /// The time zone of a cron schedule (default `"UTC"`), e.g. `"Europe/Berlin"`.
    pub schedule_tz: Option<String>,
    /// For `schedule = "continuous"`: the shortest time between two starts (default none).
    pub min_interval: Option<String>,
    /// Run when all of these syncs and entities have finished successfully in the same
    /// round (a sequence), instead of on a schedule of its own.
    #[serde(default)]
    pub after: Vec<String>,
    /// What an update carries: every mapped field (`"all"`, the default), or only the fields
    /// whose values changed since the last sync (`"changed"`), so that edits made in the
    /// destination to the other fields survive.
    #[serde(default)]
    pub send: SendMode,
    /// Log every record each run sends, with its outcome, under the run history (default: the
    /// `[engine]` setting, off).
    pub record_log: Option<bool>,
    /// How long this sync's record logs are kept (default: `[engine]`'s, or `"30d"`).
    pub record_log_retention: Option<String>,
    /// Set for the syncs backflow makes to write a hub entity back to one of its sources
    /// (never read from the file).
    #[serde(skip)]
    pub hub: Option<entity::HubLink>,
}

/// `send`: which fields an update carries.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SendMode {
    /// Every mapped field.
    #[default]
    All,
    /// Only the fields whose values changed since the last sync (the state keeps a hash per
    /// field).
    Changed,
}

/// `max_deletes`: a share of the records in sync, or a count.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum DeleteLimit {
    /// Percent, 0 to 100.
    Share(f64),
    Count(u64),
}

impl DeleteLimit {
    /// A mirror's limit when it sets none.
    pub const MIRROR_DEFAULT: DeleteLimit = DeleteLimit::Share(50.0);

    /// The most deletes allowed out of `in_sync` records.
    pub fn allows(&self, in_sync: u64) -> u64 {
        match *self {
            DeleteLimit::Count(n) => n,
            DeleteLimit::Share(p) => ((in_sync as f64) * p / 100.0).floor() as u64,
        }
    }
}

impl std::fmt::Display for DeleteLimit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DeleteLimit::Share(p) => write!(f, "\"{p}%\""),
            DeleteLimit::Count(n) => write!(f, "{n}"),
        }
    }
}

impl<'de> Deserialize<'de> for DeleteLimit {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = DeleteLimit;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a share such as \"20%\", or a count such as 500")
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<DeleteLimit, E> {
                u64::try_from(v)
                    .map(DeleteLimit::Count)
                    .map_err(|_| E::custom("a limit must not be negative"))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<DeleteLimit, E> {
                Ok(DeleteLimit::Count(v))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<DeleteLimit, E> {
                let share = v
                    .trim()
                    .strip_suffix('%')
                    .and_then(|n| n.trim().parse::<f64>().ok())
                    .filter(|p| (0.0..=100.0).contains(p));
                match share {
                    Some(p) => Ok(DeleteLimit::Share(p)),
                    None => Err(E::custom(format!(
                        "\"{v}\": use a share from \"0%\" to \"100%\", or a count such as 500"
                    ))),
                }
            }
        }
        d.deserialize_any(V)
    }
}

/// `cursor_lookback`: a duration or an amount.
#[derive(Debug, Clone, PartialEq)]
pub enum Lookback {
    Amount(i64),
    Duration(String),
}

// By hand rather than `untagged`: serde's untagged enums lose the value's position, so a wrong
// value would be reported at its table's line instead of its own.
impl<'de> Deserialize<'de> for Lookback {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Lookback;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str(
                    "a duration such as \"15m\", \"2h\" or \"1d\" (date and time cursors) or a \
                     whole number (numeric cursors)",
                )
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Lookback, E> {
                Ok(Lookback::Amount(v))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Lookback, E> {
                i64::try_from(v)
                    .map(Lookback::Amount)
                    .map_err(|_| E::custom(format!("cursor_lookback {v} is too large")))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Lookback, E> {
                Ok(Lookback::Duration(v.to_string()))
            }
        }
        d.deserialize_any(V)
    }
}

impl std::fmt::Display for Lookback {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Lookback::Amount(n) => write!(f, "{n}"),
            Lookback::Duration(d) => write!(f, "\"{d}\""),
        }
    }
}

/// The matching identifier: `key = "email"`, `key = { source = "email", destination = "Email" }`,
/// or a composite key, a list of either: `key = ["account_id", "email"]`.
#[derive(Debug, Clone, PartialEq)]
pub struct KeyConfig {
    parts: Vec<KeyPart>,
}

/// One column of a key: its name in the model and in the destination.
#[derive(Debug, Clone, PartialEq)]
pub struct KeyPart {
    pub source: String,
    pub destination: String,
}

// By hand rather than `untagged`, so that a wrong value is reported at its own line.
impl<'de> Deserialize<'de> for KeyPart {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Pair {
            source: String,
            destination: String,
        }
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = KeyPart;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a column name, or a table { source = \"col\", destination = \"col\" }")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<KeyPart, E> {
                Ok(KeyPart {
                    source: v.to_string(),
                    destination: v.to_string(),
                })
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<KeyPart, A::Error> {
                let p = Pair::deserialize(serde::de::value::MapAccessDeserializer::new(map))?;
                Ok(KeyPart {
                    source: p.source,
                    destination: p.destination,
                })
            }
        }
        d.deserialize_any(V)
    }
}

impl<'de> Deserialize<'de> for KeyConfig {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = KeyConfig;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str(
                    "a column name, a table { source = \"col\", destination = \"col\" }, or a list of them (a composite key)",
                )
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<KeyConfig, E> {
                Ok(KeyConfig::column(v))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<KeyConfig, A::Error> {
                let part = KeyPart::deserialize(serde::de::value::MapAccessDeserializer::new(map))?;
                Ok(KeyConfig { parts: vec![part] })
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<KeyConfig, A::Error> {
                let mut parts = Vec::new();
                while let Some(part) = seq.next_element::<KeyPart>()? {
                    parts.push(part);
                }
                if parts.is_empty() {
                    return Err(serde::de::Error::custom(
                        "a key needs at least one column (the list is empty)",
                    ));
                }
                Ok(KeyConfig { parts })
            }
        }
        d.deserialize_any(V)
    }
}

impl KeyConfig {
    /// A key of one column, named alike in the model and the destination.
    pub fn column(name: &str) -> KeyConfig {
        KeyConfig {
            parts: vec![KeyPart {
                source: name.to_string(),
                destination: name.to_string(),
            }],
        }
    }

    /// A key of one column with a name of its own in the destination.
    pub fn pair(source: &str, destination: &str) -> KeyConfig {
        KeyConfig {
            parts: vec![KeyPart {
                source: source.to_string(),
                destination: destination.to_string(),
            }],
        }
    }

    /// The key's columns, in order (one for a simple key).
    pub fn parts(&self) -> &[KeyPart] {
        &self.parts
    }

    /// Whether the key has more than one column.
    pub fn is_composite(&self) -> bool {
        self.parts.len() > 1
    }

    /// The key columns in the model.
    pub fn sources(&self) -> impl Iterator<Item = &str> {
        self.parts.iter().map(|p| p.source.as_str())
    }

    /// The key fields in the destination.
    pub fn destinations(&self) -> Vec<String> {
        self.parts.iter().map(|p| p.destination.clone()).collect()
    }

    /// Whether `column` of the model is part of the key.
    pub fn has_source(&self, column: &str) -> bool {
        self.sources().any(|s| s == column)
    }

    /// How the key is recorded in the state, and named in messages: the destination field's
    /// name, or for a composite key the names as a JSON list (`["account_id","email"]`).
    pub fn stored(&self) -> String {
        crate::keys::stored_key(&self.destinations())
    }
}

/// `fields = { ... }`: the field mapping.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FieldsConfig {
    /// Send every model column under its own name (default true).
    #[serde(default = "default_true")]
    pub auto: bool,
    /// Model column → destination field, for columns sent under another name.
    #[serde(default)]
    pub rename: IndexMap<String, String>,
    /// Model columns never sent (with `auto`).
    #[serde(default)]
    pub exclude: Vec<String>,
    /// Destination field → SQL expression over the model's columns.
    #[serde(default)]
    pub computed: IndexMap<String, String>,
    /// Destination field → a value found in the destination by another field (see
    /// [`LookupField`]).
    #[serde(default)]
    pub lookup: IndexMap<String, LookupField>,
}

/// `fields.lookup.NAME = { object = "companies", by = "domain", value = "company_domain" }`:
/// the field's value is the `returns` field (default `id`) of the record of `object` whose
/// `by` equals the row's `value`, found in the destination when the row is sent (for database
/// destinations a join with the table, for HTTP APIs the destination's `lookups.OBJECT`
/// request, batched and cached for the run). A row whose value finds no record, or more than
/// one, is rejected with that reason (or sent with the field NULL, `on_missing = "null"`), and
/// tried again on the next run like any rejected row.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LookupField {
    /// The destination object searched (a table of the same database, or an object the HTTP
    /// destination has a `lookups` entry for).
    pub object: String,
    /// The field of `object` compared with the row's value.
    pub by: String,
    /// A column of the model (or an SQL expression over its columns) whose value is looked up.
    pub value: String,
    /// The field of the record found that becomes this field's value (default `id`).
    #[serde(default = "default_returns")]
    pub returns: String,
    /// What a row whose value finds no record gets: rejected (`"reject"`, the default) or
    /// sent with the field NULL (`"null"`). A value that finds more than one record is always
    /// rejected; a NULL value gives a NULL field.
    #[serde(default)]
    pub on_missing: OnMissing,
    /// The type of the value found, for HTTP destinations (whose answers are JSON): `text`
    /// (the default), `bigint`, `decimal(p,s)`, … (the entity field types). A value found that
    /// is not of this type rejects its row. Database destinations give the field the type of
    /// the `returns` column.
    #[serde(rename = "type")]
    pub value_type: Option<String>,
}

fn default_returns() -> String {
    "id".into()
}

/// `on_missing` of a lookup.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnMissing {
    #[default]
    Reject,
    Null,
}

impl Default for FieldsConfig {
    fn default() -> Self {
        FieldsConfig {
            auto: true,
            rename: IndexMap::new(),
            exclude: Vec::new(),
            computed: IndexMap::new(),
            lookup: IndexMap::new(),
        }
    }
}

fn default_true() -> bool {
    true
}

impl ProjectConfig {
    /// Read and parse `backflow.toml` in `dir`. Unknown keys and wrong types are errors with a
    /// line number.
    pub fn load(dir: &Path) -> Result<(ProjectConfig, ConfigText), ConfigError> {
        let path = dir.join(CONFIG_FILE);
        let text = std::fs::read_to_string(&path).map_err(|source| ConfigError::Read {
            path: path.clone(),
            source,
        })?;
        let config = Self::parse(&text, &path)?;
        Ok((config, ConfigText { path, text }))
    }

    /// Parse configuration text; `path` is only used in messages.
    pub fn parse(text: &str, path: &Path) -> Result<ProjectConfig, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: describe_toml_error(text, &e),
        })
    }
}

fn describe_toml_error(text: &str, e: &toml::de::Error) -> String {
    let message = e.message().trim().to_string();
    match e.span() {
        Some(span) => {
            let line = text[..span.start.min(text.len())].matches('\n').count() + 1;
            let snippet = text.lines().nth(line - 1).unwrap_or("").trim();
            format!("line {line}: {message}\n    | {snippet}")
        }
        None => message,
    }
}

/// The raw text of the config file, kept to point problems at lines.
#[derive(Debug, Clone)]
pub struct ConfigText {
    pub path: PathBuf,
    pub text: String,
}

impl ConfigText {
    /// `backflow.toml line N, [syncs.NAME]` for messages (the line is left out when not found).
    pub fn locate(&self, section: &str, name: &str) -> String {
        let headers = [
            format!("[{section}.{name}]"),
            format!("[{section}.\"{name}\"]"),
            format!("{section}.{name}"),
        ];
        let line = self.text.lines().position(|l| {
            let l = l.trim_start();
            headers.iter().any(|h| l.starts_with(h.as_str()))
        });
        match line {
            Some(n) => format!("[{section}.{name}] (line {})", n + 1),
            None => format!("[{section}.{name}]"),
        }
    }
}

/// Validate cross references, with the names of the models found on disk. Returns every problem.
pub fn validate(config: &ProjectConfig, models: &[String], text: &ConfigText) -> Vec<String> {
    let mut problems = Vec::new();
    let mut relations: BTreeSet<&str> = BTreeSet::new();
    let named = config
        .sources
        .keys()
        .map(|n| ("source", n.as_str()))
        .chain(models.iter().map(|n| ("model", n.as_str())))
        .chain(config.segments.keys().map(|n| ("segment", n.as_str())));
    for (kind, name) in named {
        if !is_plain_identifier(name) {
            problems.push(format!(
                "{kind} \"{name}\": names of sources, models and segments are SQL table names; \
                 use lowercase letters, digits and '_' (starting with a letter or '_')"
            ));
        }
        if !relations.insert(name) {
            problems.push(format!(
                "{kind} \"{name}\": another source, model or segment already has this name"
            ));
        }
    }

    for (name, source) in &config.sources {
        if source.tables().is_some() && RESERVED_SCHEMAS.contains(&name.as_str()) {
            problems.push(format!(
                "source \"{name}\": a database source's name is the SQL schema of its tables; \"{name}\" is reserved, choose another"
            ));
        }
    }
    if let Some(l) = &config.state.lease
        && crate::duration::parse(l).is_none_or(|d| d.as_secs() < 3)
    {
        problems.push(format!(
            "[state]: lease \"{l}\" is not a duration of 3 seconds or more (\"60s\", \"5m\")"
        ));
    }
    problems.extend(entity::validate(config, &relations, text));
    problems.extend(crate::schedule::validate(config));
    let targets: Vec<String> = crate::schedule::targets(config)
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    problems.extend(alert::validate(&config.alerts, &targets));
    for name in config.entities.keys() {
        relations.insert(name);
    }
    let known_relation = |name: &str| relations.contains(name) || source_table_known(config, name);

    for (name, segment) in &config.segments {
        let at = text.locate("segments", name);
        if !known_relation(segment.model.as_str()) {
            problems.push(format!(
                "{at}: segment \"{name}\" filters unknown model \"{}\"{}",
                segment.model,
                suggest(&segment.model, relations.iter().copied())
            ));
        } else if config.segments.contains_key(&segment.model) && segment.model == *name {
            problems.push(format!("{at}: segment \"{name}\" filters itself"));
        }
        if segment.filter.trim().is_empty() {
            problems.push(format!("{at}: segment \"{name}\" has an empty filter"));
        }
    }

    for (name, dest) in &config.destinations {
        let at = text.locate("destinations", name);
        for p in dest.validate() {
            problems.push(format!("{at}: destination \"{name}\": {p}"));
        }
    }
    for (name, source) in &config.sources {
        let at = text.locate("sources", name);
        for p in source.validate() {
            problems.push(format!("{at}: source \"{name}\": {p}"));
        }
    }

    for (name, sync) in &config.syncs {
        let at = text.locate("syncs", name);
        if !is_safe_name(name) {
            problems.push(format!(
                "{at}: sync name \"{name}\" may only use letters, digits, '_' and '-'"
            ));
        }
        if !known_relation(sync.from.as_str()) {
            problems.push(format!(
                "{at}: sync \"{name}\" reads from unknown model or segment \"{}\"{}",
                sync.from,
                suggest(&sync.from, relations.iter().copied())
            ));
        }
        match config.destinations.get(&sync.to) {
            None => problems.push(format!(
                "{at}: sync \"{name}\" writes to unknown destination \"{}\"{}",
                sync.to,
                suggest(&sync.to, config.destinations.keys().map(String::as_str))
            )),
            Some(dest) => {
                if sync.send == SendMode::Changed && matches!(dest, DestinationConfig::File(_)) {
                    problems.push(format!(
                        "{at}: sync \"{name}\" sets send = \"changed\", but destination \"{}\" is a file, which \
                         backflow rewrites from the sync's own rows (no one else's edits to keep); remove it",
                        sync.to
                    ));
                }
                if sync.send == SendMode::Changed && matches!(dest, DestinationConfig::Delta(_)) {
                    problems.push(format!(
                        "{at}: sync \"{name}\" sets send = \"changed\", but destination \"{}\" is a \
                         Delta table, whose MERGE writes whole rows; remove it",
                        sync.to
                    ));
                }
                for p in dest.validate_object(&sync.object) {
                    problems.push(format!(
                        "{at}: sync \"{name}\": object \"{}\": {p}",
                        sync.object
                    ));
                }
            }
        }
        if sync.behavior == Behavior::Mirror && sync.cursor.is_some() {
            problems.push(format!(
                "{at}: sync \"{name}\" is a mirror with a cursor: a mirror must read the whole model \
                 to see which rows left it; remove `cursor` or use behavior = \"upsert\""
            ));
        }
        if let Some(r) = &sync.record_log_retention
            && crate::duration::parse(r).is_none_or(|d| d.is_zero())
        {
            problems.push(format!(
                "{at}: sync \"{name}\": record_log_retention \"{r}\" is not a duration such as \"7d\" or \"30d\""
            ));
        }
        if sync.send == SendMode::Changed
            && !matches!(
                sync.behavior,
                Behavior::Upsert | Behavior::Mirror | Behavior::UpdateOnly
            )
        {
            problems.push(format!(
                "{at}: sync \"{name}\" sets send = \"changed\", which is about updates; a {} sync \
                 sends no updates (use it with upsert, mirror or update-only)",
                sync.behavior
            ));
        }
        if sync.max_deletes.is_some() && sync.behavior != Behavior::Mirror {
            problems.push(format!(
                "{at}: sync \"{name}\" sets max_deletes, but only a mirror deletes records that \
                 leave its model (a {} sync never does); remove it",
                sync.behavior
            ));
        }
        match (&sync.cursor_lookback, &sync.cursor) {
            (Some(_), None) => problems.push(format!(
                "{at}: sync \"{name}\" has a cursor_lookback but no cursor"
            )),
            (Some(Lookback::Amount(n)), _) if *n < 0 => problems.push(format!(
                "{at}: sync \"{name}\": cursor_lookback must not be negative"
            )),
            (Some(Lookback::Duration(d)), _) if crate::duration::parse(d).is_none() => {
                problems.push(format!(
                    "{at}: sync \"{name}\": cursor_lookback \"{d}\" is not a duration such as \"90s\", \"15m\", \"2h\" or \"1d\" (use a number for a numeric cursor)"
                ))
            }
            _ => {}
        }
        let mut dest_fields = BTreeSet::new();
        let mut key_sources = BTreeSet::new();
        for part in sync.key.parts() {
            if part.source.is_empty() || part.destination.is_empty() {
                problems.push(format!("{at}: sync \"{name}\" has an empty key"));
            }
            if !key_sources.insert(part.source.clone()) {
                problems.push(format!(
                    "{at}: sync \"{name}\" names the column \"{}\" twice in its key",
                    part.source
                ));
            }
            if !dest_fields.insert(part.destination.clone()) {
                problems.push(format!(
                    "{at}: sync \"{name}\" maps two key columns to destination field \"{}\"",
                    part.destination
                ));
            }
        }
        for (from, to) in &sync.fields.rename {
            if sync.key.has_source(from) {
                problems.push(format!(
                    "{at}: sync \"{name}\" renames the key column \"{from}\"; use key = {{ source = \"{from}\", destination = \"{to}\" }}"
                ));
            }
            if !dest_fields.insert(to.clone()) {
                problems.push(format!(
                    "{at}: sync \"{name}\" maps two fields to destination field \"{to}\""
                ));
            }
        }
        for to in sync.fields.computed.keys() {
            if !dest_fields.insert(to.clone()) {
                problems.push(format!(
                    "{at}: sync \"{name}\" maps two fields to destination field \"{to}\""
                ));
            }
        }
        for (to, lookup) in &sync.fields.lookup {
            if !dest_fields.insert(to.clone()) {
                problems.push(format!(
                    "{at}: sync \"{name}\" maps two fields to destination field \"{to}\""
                ));
            }
            for (setting, value) in [
                ("object", &lookup.object),
                ("by", &lookup.by),
                ("value", &lookup.value),
                ("returns", &lookup.returns),
            ] {
                if value.trim().is_empty() {
                    problems.push(format!(
                        "{at}: sync \"{name}\": fields.lookup.{to} has an empty {setting}"
                    ));
                }
            }
            if sync.behavior == Behavior::Delete {
                problems.push(format!(
                    "{at}: sync \"{name}\": a delete sync sends only keys, so fields.lookup.{to} \
                     would never be used; remove it"
                ));
            }
            if let Some(t) = &lookup.value_type {
                if entity::parse_type(t).is_none() {
                    problems.push(format!(
                        "{at}: sync \"{name}\": fields.lookup.{to}: type = \"{t}\" is not a type \
                         (text, bigint, double, boolean, date, timestamp, decimal(p,s))"
                    ));
                }
                if config
                    .destinations
                    .get(&sync.to)
                    .is_some_and(|d| !matches!(d, DestinationConfig::Http(_)))
                {
                    problems.push(format!(
                        "{at}: sync \"{name}\": fields.lookup.{to}: type is for HTTP destinations; \
                         a database destination gives the field the type of its \"{}\" column",
                        lookup.returns
                    ));
                }
            }
            if let Some(dest) = config.destinations.get(&sync.to) {
                for p in dest.lookup_problems(&lookup.object) {
                    problems.push(format!("{at}: sync \"{name}\": fields.lookup.{to}: {p}"));
                }
            }
        }
        for field in dest_fields.iter() {
            if field.starts_with("__bf_") {
                problems.push(format!(
                    "{at}: sync \"{name}\": field names starting with __bf_ are reserved for backflow"
                ));
            }
        }
    }
    problems.extend(shared_objects(config, text));
    problems
}

/// Syncs (write-backs included) that write the same destination object. Each keeps its own
/// record of what the object holds, so where two act on the same records one's writes are
/// invisible to the other's diff (a row goes missing while a sync reports it unchanged). They may
/// share an object only when what they do cannot meet: one creates and the other only updates
/// (a create-only seed beside an update-only write-back), or deletes; append-only logs beside
/// each other; delete lists beside each other. A mirror owns its object, and so does an
/// append-only log among other syncs.
fn shared_objects(config: &ProjectConfig, text: &ConfigText) -> Vec<String> {
    use std::collections::BTreeMap;
    const CREATE: u8 = 1;
    const UPDATE: u8 = 2;
    const DELETE: u8 = 4;
    const ALL: u8 = 8 | CREATE | UPDATE | DELETE;
    let acts = |b: Behavior| match b {
        Behavior::Upsert => CREATE | UPDATE,
        Behavior::UpdateOnly => UPDATE,
        Behavior::CreateOnly => CREATE,
        Behavior::Delete => DELETE,
        Behavior::Mirror | Behavior::AppendOnly => ALL,
    };
    let meet = |a: Behavior, b: Behavior| {
        let same_kind = a == b && matches!(a, Behavior::AppendOnly | Behavior::Delete);
        !same_kind && acts(a) & acts(b) != 0
    };
    let writebacks = entity::writeback_syncs(config);
    type Member<'a> = (&'a str, Behavior, Option<(&'a str, &'a str)>);
    let mut by_object: BTreeMap<(&str, &str), Vec<Member<'_>>> = BTreeMap::new();
    for (name, sync) in config.syncs.iter().chain(writebacks.iter()) {
        by_object
            .entry((sync.to.as_str(), sync.object.as_str()))
            .or_default()
            .push((
                name.as_str(),
                sync.behavior,
                sync.hub
                    .as_ref()
                    .map(|l| (l.entity.as_str(), l.source.as_str())),
            ));
    }
    let mut problems = Vec::new();
    for ((to, object), syncs) in by_object {
        for (i, (a, ab, ah)) in syncs.iter().enumerate() {
            for (b, bb, bh) in &syncs[i + 1..] {
                // A write-back and its on_delete update records of one source, never the same
                // ones at once (live golden records, retired ones).
                if ah.is_some() && ah == bh {
                    continue;
                }
                if !meet(*ab, *bb) {
                    continue;
                }
                let at = text.locate("syncs", b);
                problems.push(format!(
                    "{at}: syncs \"{a}\" ({ab}) and \"{b}\" ({bb}) both write {to}/{object}: each keeps its own record of what the object holds, so they would undo each other's writes unseen; \
                     give each its own object, or merge them into one sync (syncs may share an object only when one creates and the other only updates or deletes, or when all are append-only, or all delete)"
                ));
            }
        }
    }
    problems
}

/// Schema names a database source may not take.
const RESERVED_SCHEMAS: [&str; 2] = ["public", "information_schema"];

/// Whether `name` is `SOURCE.table` for a table a database source exposes (any name when the
/// source lists `tables = "*"`: those are only known once the database is asked).
pub fn source_table_known(config: &ProjectConfig, name: &str) -> bool {
    let Some((source, table)) = name.split_once('.') else {
        return false;
    };
    match config.sources.get(source).and_then(|s| s.tables()) {
        Some(crate::sources::TableSelection::All) => !table.is_empty(),
        Some(crate::sources::TableSelection::List(l)) => l.iter().any(|t| t == table),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = r#"
[sources.people]
type = "csv"
path = "people.csv"

[segments.paying]
model = "customers"          # models/customers.sql
filter = "plan <> 'free'"

[destinations.app]
type = "sqlite"
path = "out/app.db"

[syncs.paying_to_app]
from = "paying"
to = "app"
object = "customers"
behavior = "mirror"
key = "email"
fields = { auto = true }
"#;

    fn text(t: &str) -> ConfigText {
        ConfigText {
            path: PathBuf::from("backflow.toml"),
            text: t.to_string(),
        }
    }

    #[test]
    fn the_documented_example_parses_and_validates() {
        let config = ProjectConfig::parse(EXAMPLE, Path::new("backflow.toml")).unwrap();
        let problems = validate(&config, &["customers".to_string()], &text(EXAMPLE));
        assert!(problems.is_empty(), "{problems:?}");
        let sync = &config.syncs["paying_to_app"];
        assert_eq!(sync.behavior, Behavior::Mirror);
        assert_eq!(sync.key, KeyConfig::column("email"));
        assert!(sync.fields.auto);
    }

    #[test]
    fn unknown_key_names_the_key_and_line() {
        let bad = EXAMPLE.replace("behavior = \"mirror\"", "behaviour = \"mirror\"");
        let err = ProjectConfig::parse(&bad, Path::new("backflow.toml")).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("behaviour"), "{msg}");
        assert!(msg.contains("line 18"), "{msg}");
    }

    /// A value of the wrong type is reported at its own line, not at its table's header (the
    /// key, the lookback and a source's tables are not plain strings, so serde's untagged
    /// enums, which lose the position, are not used for them).
    #[test]
    fn a_wrong_value_names_its_own_line() {
        let line_of =
            |text: &str, needle: &str| text.lines().position(|l| l.contains(needle)).unwrap() + 1;
        for (from, to) in [
            ("key = \"email\"", "key = 5"),
            (
                "key = \"email\"",
                "key = { source = \"email\", destinaton = \"E\" }",
            ),
            ("key = \"email\"", "key = \"email\"\ncursor_lookback = [1]"),
        ] {
            let bad = EXAMPLE.replacen(from, to, 1);
            let msg = ProjectConfig::parse(&bad, Path::new("backflow.toml"))
                .unwrap_err()
                .to_string();
            let needle = to.lines().last().unwrap();
            let line = line_of(&bad, needle);
            assert!(msg.contains(&format!("line {line}:")), "{to}: {msg}");
        }
    }

    #[test]
    fn unknown_type_is_reported() {
        let bad = EXAMPLE.replace("type = \"csv\"", "type = \"xlsx\"");
        let msg = ProjectConfig::parse(&bad, Path::new("backflow.toml"))
            .unwrap_err()
            .to_string();
        assert!(msg.contains("xlsx") && msg.contains("line 3"), "{msg}");
    }

    #[test]
    fn unknown_references_are_all_reported_with_suggestions() {
        let bad = EXAMPLE
            .replace("to = \"app\"", "to = \"apq\"")
            .replace("model = \"customers\"", "model = \"custmers\"");
        let config = ProjectConfig::parse(&bad, Path::new("backflow.toml")).unwrap();
        let problems = validate(&config, &["customers".to_string()], &text(&bad));
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(
            problems[0].contains("custmers") && problems[0].contains("did you mean \"customers\"")
        );
        assert!(problems[1].contains("apq") && problems[1].contains("line 14"));
    }

    #[test]
    fn mirror_with_cursor_is_refused() {
        let bad = EXAMPLE.replace(
            "key = \"email\"",
            "key = \"email\"\ncursor = \"updated_at\"",
        );
        let config = ProjectConfig::parse(&bad, Path::new("backflow.toml")).unwrap();
        let problems = validate(&config, &["customers".to_string()], &text(&bad));
        assert!(problems.iter().any(|p| p.contains("mirror with a cursor")));
    }

    #[test]
    fn key_pair_and_behaviors_parse() {
        let t = EXAMPLE
            .replace(
                "key = \"email\"",
                "key = { source = \"email\", destination = \"Email\" }",
            )
            .replace("\"mirror\"", "\"update-only\"");
        let config = ProjectConfig::parse(&t, Path::new("backflow.toml")).unwrap();
        let sync = &config.syncs["paying_to_app"];
        assert_eq!(sync.key, KeyConfig::pair("email", "Email"));
        assert_eq!(sync.behavior, Behavior::UpdateOnly);
    }

    #[test]
    fn composite_keys_parse_and_are_checked() {
        let t = EXAMPLE.replace(
            "key = \"email\"",
            "key = [\"email\", { source = \"name\", destination = \"Name\" }]",
        );
        let config = ProjectConfig::parse(&t, Path::new("backflow.toml")).unwrap();
        let key = &config.syncs["paying_to_app"].key;
        assert!(key.is_composite());
        assert_eq!(key.destinations(), vec!["email", "Name"]);
        assert_eq!(key.stored(), r#"["email","Name"]"#);
        for (bad, says) in [
            ("key = []", "at least one column"),
            ("key = [\"email\", 5]", "line"),
        ] {
            let msg = ProjectConfig::parse(
                &EXAMPLE.replace("key = \"email\"", bad),
                Path::new("backflow.toml"),
            )
            .unwrap_err()
            .to_string();
            assert!(msg.contains(says), "{bad}: {msg}");
        }
        let twice = EXAMPLE.replace("key = \"email\"", "key = [\"email\", \"email\"]");
        let config = ProjectConfig::parse(&twice, Path::new("backflow.toml")).unwrap();
        let problems = validate(&config, &["customers".to_string()], &text(&twice));
        assert!(
            problems.iter().any(|p| p.contains("twice in its key")),
            "{problems:?}"
        );
    }

    #[test]
    fn syncs_that_would_fight_over_one_object_are_refused() {
        let with = |first: &str, second: &str| {
            let t = EXAMPLE.replace("behavior = \"mirror\"", &format!("behavior = \"{first}\""))
                + &format!(
                    "\n[syncs.second]\nfrom = \"people\"\nto = \"app\"\nobject = \"customers\"\nbehavior = \"{second}\"\nkey = \"email\"\n"
                );
            let config = ProjectConfig::parse(&t, Path::new("backflow.toml")).unwrap();
            validate(&config, &["customers".to_string()], &text(&t))
        };
        for (a, b) in [
            ("mirror", "upsert"),
            ("upsert", "upsert"),
            ("upsert", "create-only"),
            ("upsert", "update-only"),
            ("mirror", "delete"),
            ("mirror", "update-only"),
            ("append-only", "upsert"),
        ] {
            let problems = with(a, b);
            assert_eq!(problems.len(), 1, "{a} + {b}: {problems:?}");
            assert!(
                problems[0].contains("app/customers")
                    && problems[0].contains("\"paying_to_app\"")
                    && problems[0].contains("\"second\"")
                    && problems[0].contains("line 22"),
                "{}",
                problems[0]
            );
        }
        for (a, b) in [
            ("upsert", "delete"),
            ("append-only", "append-only"),
            ("delete", "delete"),
        ] {
            assert!(with(a, b).is_empty(), "{a} + {b}: {:?}", with(a, b));
        }
    }
}
