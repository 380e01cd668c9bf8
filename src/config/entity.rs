//! `[entities.NAME]`: an entity of the hub, its sources, match rules, data authority, merge
//! rules and write-backs, parsed strictly and validated without I/O; and the syncs its
//! write-backs become ([`writeback_syncs`]).

use std::collections::BTreeSet;

use arrow::datatypes::{DataType, TimeUnit};
use indexmap::IndexMap;
use serde::Deserialize;

use super::{Behavior, ConfigText, FieldsConfig, KeyConfig, ProjectConfig, SyncConfig};
use crate::names::{is_plain_identifier, is_safe_name, quote_ident, suggest};

/// Records read per source per cycle unless `batch_size` says otherwise.
pub const DEFAULT_BATCH_SIZE: usize = 100_000;

/// Column names of the entity's table that fields may not take.
pub const RESERVED_FIELDS: [&str; 3] = ["golden_id", "golden_created_at", "golden_updated_at"];

/// `[entities.NAME]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EntityConfig {
    /// The entity's fields and their types: `{ name = "text", mrr = "double" }`. Types: text,
    /// bigint, integer, double, boolean, date, timestamp, timestamptz, decimal(p,s).
    pub fields: IndexMap<String, String>,
    /// Match rules, in priority order: each a list of fields that must all be equal (and not
    /// NULL) for an incoming record to attach to an existing golden record, or a fuzzy rule
    /// (`{ fields = [...], compare = "jaro_winkler", threshold = 0.92, block = [...] }`).
    #[serde(default, rename = "match")]
    pub match_rules: Vec<MatchRule>,
    /// Records read per source per cycle (default 100000).
    pub batch_size: Option<usize>,
    /// Which source's value a field takes.
    #[serde(default)]
    pub authority: AuthorityConfig,
    /// How duplicate golden records are found and merged.
    #[serde(default)]
    pub merge: MergeConfig,
    /// The systems that contribute or receive this entity's records, in order of preference
    /// (the default priority).
    pub sources: IndexMap<String, EntitySourceConfig>,
    /// Labels to pick entities by: `backflow run --select tag:daily`.
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
    /// The most golden records one cycle may retire (records deleted in every source that
    /// had them): a share of the live golden records (`"20%"`) or a count. Default `"50%"`;
    /// a cycle over it commits nothing and fails (`backflow run ENTITY --allow-deletes`
    /// lets one run through).
    pub max_retirements: Option<super::DeleteLimit>,
}

/// One match rule: fields that must be equal, or a comparison by similarity.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum MatchRule {
    /// `["email"]`, `["name", "phone"]`: equal after trimming and lowercasing, none NULL.
    Exact(Vec<String>),
    Fuzzy(FuzzyRule),
}

/// `{ fields = ["name", "city"], compare = "jaro_winkler", threshold = 0.92, block = ["postcode"] }`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FuzzyRule {
    /// The fields compared, joined by a space after normalising (trimmed, lowercased, inner
    /// whitespace collapsed); none may be NULL.
    pub fields: Vec<String>,
    /// The similarity measure.
    pub compare: Similarity,
    /// The lowest similarity (0 to 1) that counts as the same entity.
    pub threshold: f64,
    /// Blocking: only records with equal values of these fields (as exact rules compare) are
    /// compared. Without it every record is compared with every golden record.
    #[serde(default)]
    pub block: Vec<String>,
}

/// A similarity measure between two texts, from 0 (nothing alike) to 1 (equal).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Similarity {
    /// Jaro-Winkler: good for short strings such as names; rewards a common prefix.
    JaroWinkler,
    /// 1 − Levenshtein distance / the longer length.
    Levenshtein,
    /// Token-set: the best Levenshtein similarity among the shared words and each side's
    /// shared plus own words, all sorted: word order and repeated words do not matter.
    TokenSet,
}

impl Similarity {
    /// The SQL function computing it (see `functions.rs`).
    pub fn function(self) -> &'static str {
        match self {
            Similarity::JaroWinkler => "jaro_winkler",
            Similarity::Levenshtein => "levenshtein_similarity",
            Similarity::TokenSet => "token_set_similarity",
        }
    }
}

impl MatchRule {
    /// The fields of an exact rule.
    pub fn exact(&self) -> Option<&Vec<String>> {
        match self {
            MatchRule::Exact(f) => Some(f),
            MatchRule::Fuzzy(_) => None,
        }
    }

    /// Every field the rule reads (compared and blocking).
    pub fn fields(&self) -> Vec<String> {
        match self {
            MatchRule::Exact(f) => f.clone(),
            MatchRule::Fuzzy(r) => r.fields.iter().chain(&r.block).cloned().collect(),
        }
    }

    /// Its name in the ID map and the log: `match: email`, `match: name, city ~ jaro_winkler`.
    pub fn name(&self) -> String {
        match self {
            MatchRule::Exact(f) => format!("match: {}", f.join(", ")),
            MatchRule::Fuzzy(r) => {
                format!("match: {} ~ {}", r.fields.join(", "), r.compare.function())
            }
        }
    }
}

/// `[entities.NAME.authority]`: the default rule, and per-field overrides.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthorityConfig {
    /// The rule for every field without its own (default `priority`).
    #[serde(default)]
    pub rule: AuthorityRule,
    /// Source priority, highest first (default: the order of the entity's sources). Sources
    /// not listed come after, in the entity's order. (A field's own `sources` is the only
    /// sources that field takes values from.)
    #[serde(default)]
    pub sources: Vec<String>,
    /// Whether a NULL from the winning source may replace a value (default false: a NULL is
    /// passed over, and the golden record keeps its value when no source has one).
    #[serde(default)]
    pub null_overwrites: bool,
    /// Per-field rules.
    #[serde(default)]
    pub fields: IndexMap<String, FieldAuthority>,
}

/// `authority.fields.NAME = { rule = "recent" }`
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FieldAuthority {
    pub rule: Option<AuthorityRule>,
    pub sources: Option<Vec<String>>,
    pub null_overwrites: Option<bool>,
}

/// Which source a golden field takes its value from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuthorityRule {
    /// The value of the highest-priority source that has the record.
    #[default]
    Priority,
    /// The value that changed most recently, in any source.
    #[serde(alias = "most_recent")]
    Recent,
    /// The first non-NULL value in priority order (NULLs never overwrite).
    FirstNonNull,
}

/// The authority of one field, resolved: rule, source order and NULL handling.
#[derive(Debug, Clone, PartialEq)]
pub struct ResolvedAuthority {
    pub rule: AuthorityRule,
    /// Contributing sources, best first.
    pub order: Vec<String>,
    pub null_overwrites: bool,
}

/// `[entities.NAME.merge]`
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MergeConfig {
    /// Rules that find duplicate golden records: each a list of fields that must all be equal
    /// and not NULL. Default: the match rules; `rules = []` turns merging off.
    pub rules: Option<Vec<Vec<String>>>,
    /// Which duplicate survives (default `oldest`).
    #[serde(default)]
    pub winner: WinnerRule,
    /// How the losers' values combine with the winner's (default `fill`).
    #[serde(default)]
    pub policy: MergePolicy,
    /// Per-field policies.
    #[serde(default)]
    pub fields: IndexMap<String, MergePolicy>,
}

/// Which of several duplicate golden records survives a merge.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WinnerRule {
    /// The one created first.
    #[default]
    Oldest,
    /// The one changed most recently.
    #[serde(alias = "most_recent")]
    Recent,
    /// The one with the most non-NULL fields.
    #[serde(alias = "most_complete")]
    Complete,
    /// The one linked to the highest-priority source.
    Priority,
}

/// How a merged record's field combines the winner's and the losers' values.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MergePolicy {
    /// The winner's value; a NULL is filled from the losers (best first).
    #[default]
    Fill,
    /// The winner's value, even NULL.
    Keep,
    /// The losers' value (best first) where they have one, else the winner's.
    Override,
}

/// `[entities.NAME.sources.SOURCE]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EntitySourceConfig {
    /// The model, segment or source table holding this system's records.
    pub from: String,
    /// The column that identifies a record in this system.
    pub id: String,
    /// A column that grows whenever a record changes (an `updated_at`): each cycle reads the
    /// records past it, in its order. Without one, every run reads the whole source again and
    /// only records whose values changed count.
    pub watermark: Option<String>,
    /// What the source does (default `contributing`).
    #[serde(default)]
    pub role: Role,
    /// A SQL condition over the source's columns that marks a record as deleted (a soft
    /// delete: `deleted = "is_deleted"`, `deleted = "status = 'archived'"`). Such a record
    /// leaves its golden record, like one that disappeared.
    pub deleted: Option<String>,
    /// Whether a record that is no longer in the source counts as deleted: every run compares
    /// the source's ids with the ID map (default: true for a source read in full, one without
    /// a `watermark`; false for one read by watermark, which only ever sees what changed).
    pub detect_deletes: Option<bool>,
    /// Entity field → SQL expression over this source's columns (a plain column name, or
    /// `domain_of(website)`, `normalize_email(email)`, …).
    #[serde(default)]
    pub fields: IndexMap<String, String>,
    /// Where unified values are written back to this system.
    pub writeback: Option<WritebackConfig>,
}

/// What a source does for its entity.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    /// Contributes values and receives the unified ones.
    #[default]
    #[serde(alias = "contributing")]
    Contributing,
    /// Contributes values; never written back.
    #[serde(alias = "contribute_only")]
    ContributeOnly,
    /// Never contributes values; its records are linked to golden records and kept updated.
    #[serde(alias = "receive_only", alias = "non-contributing")]
    ReceiveOnly,
}

impl Role {
    pub fn contributes(self) -> bool {
        self != Role::ReceiveOnly
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Contributing => "contributing",
            Role::ContributeOnly => "contribute-only",
            Role::ReceiveOnly => "receive-only",
        }
    }
}

/// `[entities.NAME.sources.SOURCE.writeback]`: golden values sent back to the source's records.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WritebackConfig {
    /// The destination that writes to this system.
    pub to: String,
    /// The table (or object) holding the source's records.
    pub object: String,
    /// The destination field holding the source's id (default: the source's `id` column).
    pub key: Option<String>,
    /// Only golden records matching this SQL condition over the entity's fields are written.
    pub filter: Option<String>,
    /// Destination field → SQL expression over the entity's fields (and `golden_id`). Default:
    /// every entity field the source maps from a plain column goes back to that column.
    #[serde(default)]
    pub fields: IndexMap<String, String>,
    /// What happens to this system's records of a golden record that is retired (its last
    /// contributing record was deleted): `"ignore"` (default: they are left as they are),
    /// `"delete"`, or `{ update = { status = "'inactive'" } }` (destination field → SQL
    /// expression over the entity's fields, as the retired record had them).
    pub on_delete: Option<OnDelete>,
    /// Whether golden records this system has no record of are created in it (default false:
    /// only its own records are updated). Each new record's id is chosen by the hub
    /// (`create_id`) and linked into the ID map when the cycle commits, before the record is
    /// sent: the next read of the source attaches the record to its golden record, and a
    /// create sent again after a crash finds its record there (create-only, by key).
    #[serde(default)]
    pub create: bool,
    /// The id a created record gets: a SQL expression over the entity's fields and
    /// `golden_id`, unique per golden record (default `'hub-' || golden_id`, for text ids).
    pub create_id: Option<String>,
}

/// The id a write-back gives the records it creates, when `create_id` is not set.
pub const DEFAULT_CREATE_ID: &str = "'hub-' || CAST(golden_id AS VARCHAR)";

impl WritebackConfig {
    /// The expression of the ids of created records.
    pub fn create_id(&self) -> &str {
        self.create_id.as_deref().unwrap_or(DEFAULT_CREATE_ID)
    }
}

/// `writeback.on_delete`
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum OnDelete {
    /// `"ignore"` or `"delete"`.
    Named(String),
    Update {
        update: IndexMap<String, String>,
    },
}

impl OnDelete {
    /// The behavior of the sync that carries it out, and the fields it sends (None: ignore).
    pub fn action(&self) -> Option<(Behavior, IndexMap<String, String>)> {
        match self {
            OnDelete::Named(n) if n == "delete" => Some((Behavior::Delete, IndexMap::new())),
            OnDelete::Update { update } => Some((Behavior::UpdateOnly, update.clone())),
            OnDelete::Named(_) => None,
        }
    }
}

impl EntityConfig {
    pub fn batch_size(&self) -> usize {
        self.batch_size.unwrap_or(DEFAULT_BATCH_SIZE).max(1)
    }

    /// The retirement limit in force (see `max_retirements`).
    pub fn retirement_limit(&self) -> super::DeleteLimit {
        self.max_retirements
            .unwrap_or(super::DeleteLimit::MIRROR_DEFAULT)
    }

    /// The sources that contribute values, in the entity's order.
    pub fn contributors(&self) -> impl Iterator<Item = (&String, &EntitySourceConfig)> {
        self.sources.iter().filter(|(_, s)| s.role.contributes())
    }

    /// The merge rules in force (the exact match rules unless set: fuzzy rules attach
    /// records, they do not merge golden records).
    pub fn merge_rules(&self) -> Vec<Vec<String>> {
        match &self.merge.rules {
            Some(rules) => rules.clone(),
            None => self
                .match_rules
                .iter()
                .filter_map(|r| r.exact().cloned())
                .collect(),
        }
    }

    /// Whether some match rule compares by similarity.
    pub fn has_fuzzy_rules(&self) -> bool {
        self.match_rules.iter().any(|r| r.exact().is_none())
    }

    /// The authority of `field`, with its defaults filled in.
    pub fn authority(&self, field: &str) -> ResolvedAuthority {
        let own = self
            .authority
            .fields
            .get(field)
            .cloned()
            .unwrap_or_default();
        let rule = own.rule.unwrap_or(self.authority.rule);
        // A field's own list names the only sources it takes values from; the entity's list
        // is an order, the sources it does not name following in the entity's order.
        let (listed, others): (Vec<String>, Vec<&String>) = match own.sources {
            Some(only) => (only, Vec::new()),
            None => (
                self.authority.sources.clone(),
                self.contributors().map(|(n, _)| n).collect(),
            ),
        };
        let mut order: Vec<String> = Vec::new();
        for s in listed
            .iter()
            .chain(others)
            .filter(|s| self.sources.get(*s).is_some_and(|c| c.role.contributes()))
        {
            if !order.contains(s) {
                order.push(s.clone());
            }
        }
        ResolvedAuthority {
            rule,
            order,
            null_overwrites: rule != AuthorityRule::FirstNonNull
                && own
                    .null_overwrites
                    .unwrap_or(self.authority.null_overwrites),
        }
    }

    /// The merge policy of `field`.
    pub fn merge_policy(&self, field: &str) -> MergePolicy {
        self.merge
            .fields
            .get(field)
            .copied()
            .unwrap_or(self.merge.policy)
    }

    /// The entity's fields with their Arrow types (in declaration order); None for a type
    /// this release does not know (validation reports it).
    pub fn field_types(&self) -> Vec<(String, Option<DataType>)> {
        self.fields
            .iter()
            .map(|(n, t)| (n.clone(), parse_type(t)))
            .collect()
    }
}

impl EntitySourceConfig {
    /// Whether records gone from the source are looked for (see `detect_deletes`).
    pub fn detects_deletes(&self) -> bool {
        self.detect_deletes.unwrap_or(self.watermark.is_none())
    }

    /// The write-back's destination key field.
    pub fn writeback_key(&self) -> Option<&str> {
        self.writeback
            .as_ref()
            .map(|w| w.key.as_deref().unwrap_or(&self.id))
    }

    /// Destination field → expression over the entity, with the default filled in.
    pub fn writeback_fields(&self) -> IndexMap<String, String> {
        let Some(wb) = &self.writeback else {
            return IndexMap::new();
        };
        if !wb.fields.is_empty() {
            return wb.fields.clone();
        }
        self.fields
            .iter()
            .filter(|(_, expr)| is_plain_identifier(expr.trim()) && expr.trim() != self.id)
            .map(|(field, expr)| (expr.trim().to_string(), quote_ident(field)))
            .collect()
    }
}

/// The name of the sync that writes `entity`'s values back to `source`.
pub fn writeback_sync_name(entity: &str, source: &str) -> String {
    format!("{entity}-to-{source}")
}

/// The name of the sync that carries out `source`'s `on_delete` for retired golden records.
pub fn retired_sync_name(entity: &str, source: &str) -> String {
    format!("{entity}-to-{source}-retired")
}

/// The name of the sync that creates golden records in `source` (`writeback.create`).
pub fn create_sync_name(entity: &str, source: &str) -> String {
    format!("{entity}-to-{source}-create")
}

/// The entity and source a write-back sync belongs to.
#[derive(Debug, Clone, PartialEq)]
pub struct HubLink {
    pub entity: String,
    pub source: String,
    pub kind: LinkKind,
}

/// Which of a source's records a write-back sync reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkKind {
    /// The records of live golden records that the source has reported (updated).
    Update,
    /// The records the hub linked to live golden records for the source to create
    /// (`writeback.create`), until the source reports them.
    Create,
    /// The records of retired golden records (the source's `on_delete`).
    Retired,
}

/// The write-back relation's column with the source record's id.
pub const SOURCE_ID: &str = "__bf_source_id";
/// The write-back relation's cursor: the hub version of the row's last change.
pub const HUB_SEQ: &str = "__bf_hub_seq";

/// The relation a write-back sync reads (registered by [`register`]).
pub fn view_name(link: &HubLink) -> String {
    let kind = match link.kind {
        LinkKind::Update => "",
        LinkKind::Create => "__create",
        LinkKind::Retired => "__retired",
    };
    format!("__bf_hub_{}__{}{kind}", link.entity, link.source)
}

/// The write-back syncs of every entity, named `<entity>-to-<source>`, and the syncs of their
/// `on_delete`, `<entity>-to-<source>-retired`.
pub fn writeback_syncs(config: &ProjectConfig) -> IndexMap<String, SyncConfig> {
    let mut out = IndexMap::new();
    for (entity, e) in &config.entities {
        for (source, s) in &e.sources {
            let Some(wb) = &s.writeback else { continue };
            // Both read the source's records of golden records (live ones, or retired ones)
            // from the hub, keyed by the source's id, by the hub version of their last change.
            let sync = |link: HubLink, behavior: Behavior, computed: IndexMap<String, String>| {
                // Creates read every record waiting to be created (few), so that a record that
                // left (read from its source) is forgotten and created again if it comes back.
                let cursor = (link.kind != LinkKind::Create).then(|| HUB_SEQ.to_string());
                SyncConfig {
                    from: view_name(&link),
                    to: wb.to.clone(),
                    object: wb.object.clone(),
                    behavior,
                    key: KeyConfig::pair(SOURCE_ID, s.writeback_key().unwrap_or(&s.id)),
                    fields: FieldsConfig {
                        auto: false,
                        computed,
                        ..FieldsConfig::default()
                    },
                    cursor,
                    cursor_lookback: None,
                    max_deletes: None,
                    tags: Vec::new(),
                    schedule: None,
                    schedule_tz: None,
                    min_interval: None,
                    after: Vec::new(),
                    send: super::SendMode::All,
                    record_log: None,
                    record_log_retention: None,
                    hub: Some(link),
                }
            };
            let link = HubLink {
                entity: entity.clone(),
                source: source.clone(),
                kind: LinkKind::Update,
            };
            if let Some((behavior, fields)) = wb.on_delete.as_ref().and_then(OnDelete::action) {
                let retired = HubLink {
                    kind: LinkKind::Retired,
                    ..link.clone()
                };
                out.insert(
                    retired_sync_name(entity, source),
                    sync(retired, behavior, fields),
                );
            }
            if wb.create {
                let create = HubLink {
                    kind: LinkKind::Create,
                    ..link.clone()
                };
                out.insert(
                    create_sync_name(entity, source),
                    sync(create, Behavior::CreateOnly, s.writeback_fields()),
                );
            }
            out.insert(
                writeback_sync_name(entity, source),
                sync(link, Behavior::UpdateOnly, s.writeback_fields()),
            );
        }
    }
    out
}

/// An entity field type (`text`, `bigint`, `decimal(12,2)`, …) as an Arrow type.
pub fn parse_type(text: &str) -> Option<DataType> {
    let t = text.trim().to_ascii_lowercase();
    let t = t.as_str();
    Some(match t {
        "text" | "string" | "varchar" => DataType::Utf8,
        "bigint" | "int" | "integer" | "int64" | "long" => DataType::Int64,
        "double" | "float" | "float64" | "real" => DataType::Float64,
        "boolean" | "bool" => DataType::Boolean,
        "date" => DataType::Date32,
        "timestamp" => DataType::Timestamp(TimeUnit::Microsecond, None),
        "timestamptz" => DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
        _ => {
            let inner = t
                .strip_prefix("decimal")
                .or_else(|| t.strip_prefix("numeric"))?
                .trim()
                .strip_prefix('(')?
                .strip_suffix(')')?;
            let (p, s) = inner.split_once(',').unwrap_or((inner, "0"));
            let p: u8 = p.trim().parse().ok()?;
            let s: i8 = s.trim().parse().ok()?;
            if p == 0 || p > 38 || s < 0 || s as u8 > p {
                return None;
            }
            DataType::Decimal128(p, s)
        }
    })
}

/// Validate every `[entities.*]` table; `relations` are the known sources, models and
/// segments. Returns every problem.
pub fn validate(
    config: &ProjectConfig,
    relations: &BTreeSet<&str>,
    text: &ConfigText,
) -> Vec<String> {
    let mut problems = Vec::new();
    for (name, entity) in &config.entities {
        let at = text.locate("entities", name);
        problems.extend(
            validate_entity(config, relations, name, entity)
                .into_iter()
                .map(|m| format!("{at}: entity \"{name}\": {m}")),
        );
    }
    problems
}

/// Problems with match or merge rules.
fn check_rules(entity: &EntityConfig, kind: &str, rules: &[Vec<String>]) -> Vec<String> {
    let mut m = Vec::new();
    for (i, rule) in rules.iter().enumerate() {
        if rule.is_empty() {
            m.push(format!("{kind} rule {} names no field", i + 1));
        }
        for f in rule {
            if !entity.fields.contains_key(f) {
                m.push(format!(
                    "{kind} rule {} names unknown field \"{f}\"{} (fields: {})",
                    i + 1,
                    suggest(f, entity.fields.keys().map(String::as_str)),
                    field_list(entity)
                ));
            }
        }
    }
    m
}

/// Problems with a list of source names that must contribute.
fn check_sources(entity: &EntityConfig, what: &str, list: &[String]) -> Vec<String> {
    let mut m = Vec::new();
    for s in list {
        match entity.sources.get(s) {
            None => m.push(format!(
                "{what} names unknown source \"{s}\"{}",
                suggest(s, entity.sources.keys().map(String::as_str))
            )),
            Some(c) if !c.role.contributes() => m.push(format!(
                "{what} names \"{s}\", which is receive-only and contributes no values"
            )),
            Some(_) => {}
        }
    }
    m
}

fn field_list(entity: &EntityConfig) -> String {
    entity.fields.keys().cloned().collect::<Vec<_>>().join(", ")
}

fn validate_entity(
    config: &ProjectConfig,
    relations: &BTreeSet<&str>,
    name: &str,
    entity: &EntityConfig,
) -> Vec<String> {
    let mut m = Vec::new();
    if !is_plain_identifier(name) {
        m.push("entity names are SQL table names; use lowercase letters, digits and '_'".into());
    }
    if relations.contains(name) {
        m.push("a source, model or segment already has this name".into());
    }
    if config.syncs.contains_key(name) {
        m.push("a sync already has this name (`backflow run NAME` must name one thing)".into());
    }
    if entity.fields.is_empty() {
        m.push("it has no fields".into());
    }
    if entity.batch_size == Some(0) {
        m.push("batch_size must be at least 1".into());
    }
    for (field, ty) in &entity.fields {
        if !is_plain_identifier(field) {
            m.push(format!(
                "field \"{field}\": field names use lowercase letters, digits and '_'"
            ));
        }
        if RESERVED_FIELDS.contains(&&field[..]) || field.starts_with("__bf_") {
            m.push(format!(
                "field \"{field}\": the name is reserved (the entity's table has golden_id, golden_created_at and golden_updated_at)"
            ));
        }
        if parse_type(ty).is_none() {
            m.push(format!(
                "field \"{field}\": unknown type \"{ty}\" (use text, bigint, double, boolean, date, timestamp, timestamptz or decimal(p,s))"
            ));
        }
    }
    let exact: Vec<Vec<String>> = entity.match_rules.iter().map(MatchRule::fields).collect();
    m.extend(check_rules(entity, "match", &exact));
    for (i, rule) in entity.match_rules.iter().enumerate() {
        if let MatchRule::Fuzzy(r) = rule {
            if r.fields.is_empty() {
                m.push(format!("match rule {} compares no field", i + 1));
            }
            if !(r.threshold > 0.0 && r.threshold <= 1.0) {
                m.push(format!(
                    "match rule {}: threshold {} is not a similarity: use a number above 0 and at most 1, such as 0.92",
                    i + 1,
                    r.threshold
                ));
            }
        }
    }
    if let Some(rules) = &entity.merge.rules {
        m.extend(check_rules(entity, "merge", rules));
    }
    m.extend(check_sources(
        entity,
        "authority.sources",
        &entity.authority.sources,
    ));
    for (field, fa) in &entity.authority.fields {
        if !entity.fields.contains_key(field) {
            m.push(format!(
                "authority.fields names unknown field \"{field}\" (fields: {})",
                field_list(entity)
            ));
        }
        if let Some(list) = &fa.sources {
            m.extend(check_sources(
                entity,
                &format!("authority.fields.{field}.sources"),
                list,
            ));
        }
    }
    for field in entity.merge.fields.keys() {
        if !entity.fields.contains_key(field) {
            m.push(format!(
                "merge.fields names unknown field \"{field}\" (fields: {})",
                field_list(entity)
            ));
        }
    }
    if entity.sources.is_empty() {
        m.push("it has no sources".into());
    } else if entity.contributors().next().is_none() {
        m.push("none of its sources contributes values (all are receive-only)".into());
    }
    for (source, s) in &entity.sources {
        for problem in validate_source(config, relations, name, entity, source, s) {
            m.push(format!("source \"{source}\": {problem}"));
        }
    }
    m
}

fn validate_source(
    config: &ProjectConfig,
    relations: &BTreeSet<&str>,
    entity_name: &str,
    entity: &EntityConfig,
    source: &str,
    s: &EntitySourceConfig,
) -> Vec<String> {
    let mut m = Vec::new();
    if !is_safe_name(source) || !is_plain_identifier(source) {
        m.push("source names use lowercase letters, digits and '_'".into());
    }
    let known =
        relations.contains(s.from.as_str()) || crate::config::source_table_known(config, &s.from);
    if s.from == entity_name {
        m.push("an entity cannot read its own records".into());
    } else if !known {
        m.push(format!(
            "reads from unknown model, segment or source \"{}\"{}",
            s.from,
            suggest(&s.from, relations.iter().copied())
        ));
    }
    if s.id.trim().is_empty() {
        m.push("its id column is empty".into());
    }
    if s.fields.is_empty() {
        m.push(
            "it maps no fields (fields = { entity_field = \"column or SQL expression\" })".into(),
        );
    }
    if s.deleted.as_deref().is_some_and(|d| d.trim().is_empty()) {
        m.push("deleted is empty: give a SQL condition such as \"is_deleted\"".into());
    }
    for (field, expr) in &s.fields {
        if !entity.fields.contains_key(field) {
            m.push(format!(
                "fields maps unknown entity field \"{field}\"{} (fields: {})",
                suggest(field, entity.fields.keys().map(String::as_str)),
                field_list(entity)
            ));
        }
        if expr.trim().is_empty() {
            m.push(format!("field \"{field}\" has an empty expression"));
        }
    }
    let Some(wb) = &s.writeback else {
        return m;
    };
    if s.role == Role::ContributeOnly {
        m.push("it is contribute-only, so nothing is written back to it: remove [writeback] or make it contributing".into());
    }
    match config.destinations.get(&wb.to) {
        None => m.push(format!(
            "writeback goes to unknown destination \"{}\"{}",
            wb.to,
            suggest(&wb.to, config.destinations.keys().map(String::as_str))
        )),
        Some(dest) => {
            for problem in dest.validate_object(&wb.object) {
                m.push(format!("writeback object \"{}\": {problem}", wb.object));
            }
        }
    }
    let sync = writeback_sync_name(entity_name, source);
    if config.syncs.contains_key(&sync) {
        m.push(format!(
            "its write-back runs as sync \"{sync}\", and a [syncs.{sync}] exists already: rename one"
        ));
    }
    match &wb.on_delete {
        None => {}
        Some(OnDelete::Named(n)) if n == "ignore" || n == "delete" => {}
        Some(OnDelete::Named(n)) => m.push(format!(
            "writeback.on_delete = \"{n}\": use \"ignore\", \"delete\" or {{ update = {{ field = \"SQL expression\" }} }}"
        )),
        Some(OnDelete::Update { update }) => {
            if update.is_empty() {
                m.push("writeback.on_delete.update sets no field".into());
            }
            if let Some(key) = s.writeback_key()
                && update.contains_key(key)
            {
                m.push(format!(
                    "writeback.on_delete.update writes the key field \"{key}\": the key is the source's id and is never changed"
                ));
            }
        }
    }
    if wb.on_delete.as_ref().and_then(OnDelete::action).is_some() {
        let retired = retired_sync_name(entity_name, source);
        if config.syncs.contains_key(&retired) {
            m.push(format!(
                "its on_delete runs as sync \"{retired}\", and a [syncs.{retired}] exists already: rename one"
            ));
        }
    }
    if wb.create {
        let create = create_sync_name(entity_name, source);
        if config.syncs.contains_key(&create) {
            m.push(format!(
                "its creates run as sync \"{create}\", and a [syncs.{create}] exists already: rename one"
            ));
        }
        if wb.create_id().trim().is_empty() {
            m.push("writeback.create_id is empty".into());
        }
    } else if wb.create_id.is_some() {
        m.push(
            "writeback.create_id is set but create is not: add create = true, or remove create_id"
                .into(),
        );
    }
    let fields = s.writeback_fields();
    if fields.is_empty() {
        m.push("writeback sends no field: none of the source's fields is a plain column, so list them (writeback.fields = { column = \"entity_field\" })".into());
    }
    let key = s.writeback_key().unwrap_or_default();
    if fields.contains_key(key) {
        m.push(format!(
            "writeback.fields writes the key field \"{key}\": the key is the source's id and is never changed"
        ));
    }
    if key.trim().is_empty() {
        m.push("writeback.key is empty".into());
    }
    for f in fields.keys() {
        if f.starts_with("__bf_") {
            m.push(format!(
                "writeback field \"{f}\": names starting with __bf_ are reserved for backflow"
            ));
        }
    }
    if let Some(f) = &wb.filter
        && f.trim().is_empty()
    {
        m.push("writeback.filter is empty".into());
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn types_parse() {
        assert_eq!(parse_type("TEXT"), Some(DataType::Utf8));
        assert_eq!(
            parse_type("decimal(12, 2)"),
            Some(DataType::Decimal128(12, 2))
        );
        assert_eq!(parse_type("numeric(38)"), Some(DataType::Decimal128(38, 0)));
        assert_eq!(parse_type("decimal(40,2)"), None);
        assert_eq!(parse_type("decimal(4,6)"), None);
        assert_eq!(parse_type("uuid"), None);
    }

    fn entity(text: &str) -> EntityConfig {
        toml::from_str(text).unwrap()
    }

    #[test]
    fn authority_defaults_follow_the_source_order() {
        let e = entity(
            r#"
fields = { name = "text", mrr = "double" }
authority = { sources = ["billing"], fields = { mrr = { rule = "recent" }, name = { rule = "first_non_null", null_overwrites = true } } }
[sources.crm]
from = "a"
id = "id"
fields = { name = "name" }
[sources.support]
from = "c"
id = "id"
role = "receive-only"
[sources.billing]
from = "b"
id = "id"
fields = { name = "name", mrr = "mrr" }
"#,
        );
        let name = e.authority("name");
        assert_eq!(name.rule, AuthorityRule::FirstNonNull);
        assert_eq!(name.order, vec!["billing", "crm"]);
        let e2 = entity(
            r#"
fields = { mrr = "double" }
authority = { fields = { mrr = { sources = ["billing"] } } }
[sources.crm]
from = "a"
id = "id"
fields = { mrr = "mrr" }
[sources.billing]
from = "b"
id = "id"
fields = { mrr = "mrr" }
"#,
        );
        assert_eq!(
            e2.authority("mrr").order,
            vec!["billing"],
            "a field's list restricts"
        );
        assert!(
            !name.null_overwrites,
            "first_non_null never lets a NULL win"
        );
        assert_eq!(e.authority("mrr").rule, AuthorityRule::Recent);
        assert_eq!(e.merge_rules().len(), 0);
    }

    #[test]
    fn writeback_fields_default_to_plain_columns() {
        let e = entity(
            r#"
fields = { name = "text", domain = "text" }
[sources.crm]
from = "a"
id = "id"
fields = { name = "company_name", domain = "domain_of(website)" }
writeback = { to = "db", object = "accounts" }
"#,
        );
        let s = &e.sources["crm"];
        let fields = s.writeback_fields();
        assert_eq!(fields.len(), 1);
        assert_eq!(fields["company_name"], "\"name\"");
        assert_eq!(s.writeback_key(), Some("id"));
    }
}
