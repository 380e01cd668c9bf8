//! One conformance suite that every destination runs (as seafowl runs one repository suite
//! against SQLite and PostgreSQL, or Vector its sink compliance helpers).
//!
//! A destination takes part through a [`DestinationFixture`]: its `[destinations.dest]` table,
//! a way to put records into the object before backflow writes to it, a reader that returns the
//! object's contents as text, and its [`Capabilities`]. Every check in [`checks`] runs real
//! projects through the library against that fixture and asserts on the destination's final
//! contents (never only on counts):
//!
//! | check | what it proves |
//! |---|---|
//! | `upsert`, `mirror`, `update_only`, `create_only`, `append_only`, `delete` | each behavior against records that were there before backflow came, and columns the sync does not send left alone |
//! | `rerun_sends_nothing` | a run after a run sends nothing, changes nothing and touches nothing |
//! | `rejections` | rows the destination refuses are rejected with its reason, the others land, a fixed row lands on the next run |
//! | `type_round_trip` | integers at their extremes, floats, decimals, booleans, dates and timestamps at their extremes, text, NULLs; the types of the columns created |
//! | `hostile_identifiers_and_values` | object and column names with quotes, spaces, semicolons and Unicode; values that look like SQL, escapes, NULL markers |
//! | `composite_key` | a key of two columns: the same id under two orgs, a NULL part (invalid, named), a hostile part, a part that changes (a mirror deletes and creates), the destination's keys read back without state, the primary key created |
//! | `interrupted_run` | runs failing (as errors and as panics) after a destination batch and before the commit, then a clean run: the object equals the model |
//!
//! What a destination cannot do is a capability, never a skipped assertion: a change feed holds
//! no records, so update-only and create-only are not checked against them (its contents are
//! read by folding its files); a CSV file cannot tell an empty text from NULL; a file refuses no
//! value. A new destination is one fixture file under `destinations/` and one line in
//! [`conformance!`] below.

mod checks;
mod destinations;
mod text;

use std::collections::BTreeMap;
use std::future::Future;
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use backflow::SyncReport;
use backflow::history::RecordKind;

use crate::common::Fixture;

/// How a NULL reads in the rows a fixture returns (not a value any check writes).
pub const NULL: &str = "␀";

/// Every object of the suite is keyed by this column (a 64-bit integer).
pub const KEY: &str = "id";

/// What a column holds; values are compared as text in a canonical spelling per kind (see
/// [`text::canonical`]), so that `t`, `true` and `1` are one boolean and `1.50` and `1.5`
/// one decimal, while a lost digit or a shifted timestamp still differs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Int,
    Float,
    Decimal,
    Bool,
    Date,
    Timestamp,
    Text,
}

/// A value a row of the `rejections` model carries and a destination may refuse.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// `email` without `@` (a CHECK constraint; the fake API's field validation).
    EmailWithoutAt,
    /// `name` is NULL (NOT NULL).
    NullName,
    /// `name` longer than 5 characters (`varchar(5)`, or a CHECK).
    NameTooLong,
    /// `email` equal to another row's (a unique index).
    DuplicateEmail,
    /// `n` above 2^31 (an `integer` column).
    OutOfRange,
}

/// What a destination can do.
#[derive(Debug, Clone)]
pub struct Capabilities {
    /// Update-only and create-only consult the records already there: an unknown key is
    /// rejected, an existing record is skipped. A change feed holds no records: it writes the
    /// operations as they are.
    pub checks_records: bool,
    /// Records can be added or edited between runs by someone else (a change feed is written
    /// only by backflow).
    pub editable: bool,
    /// The destination can list the keys of its records (`Destination::keys`): a sync without
    /// state counts a record already there as updated, not created, and a mirror counts one
    /// that is not in the model as unowned.
    pub lists_records: bool,
    /// The faults the object made by [`DestinationFixture::create_refusing`] refuses, each with
    /// a part of the destination's reason. Faults not listed must land as they are.
    pub refuses: Vec<(Fault, &'static str)>,
    /// The column types [`DestinationFixture::schema`] reports for the `type_round_trip`
    /// columns of an object backflow created; None when the destination has no schema (text
    /// or JSON values).
    pub types: Option<Vec<(&'static str, &'static str)>>,
    /// An object backflow creates has the key as its primary key.
    pub primary_key: bool,
    /// The earliest date and timestamp the destination stores.
    pub min_date: &'static str,
    /// An empty text reads back as NULL (CSV writes both as an empty field).
    pub empty_text_is_null: bool,
    /// Columns have defaults ([`Seed::defaults`]): a record the sync creates gets them in the
    /// columns it does not send.
    pub column_defaults: bool,
    /// A sync's key can be composite here (the HTTP fixture's API addresses records by one
    /// `{key}` in the path, which a composite key cannot fill: such a sync is refused).
    pub composite_keys: bool,
    /// Each destination batch is applied when it is written (a transaction, requests); false
    /// where nothing is applied before the run's last write (a file is rewritten, a change
    /// file completed, in `finish`).
    pub applies_per_batch: bool,
}

/// What a fixture needs to know to set itself up.
#[derive(Debug, Clone)]
pub struct Setup {
    /// The check's name (for unique schemas and table names).
    pub check: &'static str,
    /// The project folder.
    pub dir: PathBuf,
}

/// Records to put into an object: `columns[0]` is [`KEY`] (a 64-bit integer), the others
/// text; [`NULL`] for a NULL.
#[derive(Debug, Clone)]
pub struct Seed<'a> {
    pub columns: &'a [&'a str],
    pub rows: Vec<Vec<String>>,
    /// The object is keyed: a missing object is created with the key as its primary key, and a
    /// record with a key already there is updated (its other columns kept). Unkeyed: rows are
    /// added (an event log for append-only).
    pub keyed: bool,
    /// Defaults of the columns of a missing object, where the destination has defaults.
    pub defaults: &'a [(&'a str, &'a str)],
}

/// What an object is declared as: column types (lowercase) and primary key columns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectSchema {
    pub columns: BTreeMap<String, String>,
    pub primary_key: Vec<String>,
}

/// One destination under test.
#[async_trait]
pub trait DestinationFixture: Send + Sync {
    /// The `[destinations.dest]` table (and its sub-tables).
    fn toml(&self) -> String;

    fn capabilities(&self) -> Capabilities;

    /// The object name to use for `base` (unique per test where the destination is shared).
    fn object(&self, base: &str) -> String {
        base.to_string()
    }

    /// How SQL text would name `object` (what an injected `DROP TABLE` would have to say).
    fn sql_name(&self, object: &str) -> String {
        object.to_string()
    }

    /// Put records into `object`, creating it when missing.
    async fn seed(&self, object: &str, seed: Seed<'_>);

    /// Create `object`, empty, with columns `id`, `email`, `name`, `n` and whatever makes it
    /// refuse the faults [`Capabilities::refuses`] lists (nothing where it refuses none).
    async fn create_refusing(&self, object: &str);

    /// The object's rows: `columns` as the destination spells them as text ([`NULL`] for a
    /// NULL or an absent field), in any order. A change feed is read by folding its files.
    async fn read(&self, object: &str, columns: &[&str]) -> Vec<Vec<String>>;

    /// [`DestinationFixture::read`] for an object whose records are identified by `key` (a
    /// composite key): only a change feed, folded by key, needs to know.
    async fn read_keyed(&self, object: &str, columns: &[&str], _key: &[&str]) -> Vec<Vec<String>> {
        self.read(object, columns).await
    }

    /// The object's declared schema, where it has one.
    async fn schema(&self, object: &str) -> Option<ObjectSchema>;

    /// Something that changes whenever the object is written to (a file's modification time,
    /// row versions, the API's write requests), where the destination can tell.
    async fn touched(&self, object: &str) -> Option<String>;

    /// Remove what the test left outside its temporary folder.
    async fn cleanup(&self);
}

/// Counts of a run that the checks compare exactly.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    pub created: u64,
    pub updated: u64,
    pub deleted: u64,
    pub unchanged: u64,
    pub rejected: u64,
    pub skipped: u64,
    pub unowned: u64,
}

pub fn counts(r: &SyncReport) -> Counts {
    Counts {
        created: r.counts.created,
        updated: r.counts.updated,
        deleted: r.counts.deleted,
        unchanged: r.counts.unchanged,
        rejected: r.counts.rejected,
        skipped: r.counts.skipped,
        unowned: r.counts.unowned,
    }
}

/// The model a check syncs from: `model.csv` or `model.parquet` in the project.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Csv,
    Parquet,
}

/// One check against one destination: a project in a temporary folder with one sync.
pub struct Suite {
    pub dest: &'static str,
    pub check: &'static str,
    pub project: Fixture,
    pub fx: Box<dyn DestinationFixture>,
    pub caps: Capabilities,
}

impl Suite {
    /// Set up `dest` for `check`; None when its server is unreachable (skipped, see
    /// `tests/common/db.rs`).
    pub async fn open<F, Fut>(dest: &'static str, check: &'static str, open: F) -> Option<Suite>
    where
        F: FnOnce(Setup) -> Fut,
        Fut: Future<Output = Option<Box<dyn DestinationFixture>>>,
    {
        let project = Fixture::new();
        let fx = open(Setup {
            check,
            dir: project.path().to_path_buf(),
        })
        .await?;
        let caps = fx.capabilities();
        Some(Suite {
            dest,
            check,
            project,
            fx,
            caps,
        })
    }

    pub async fn close(self) {
        self.fx.cleanup().await;
    }

    /// The check's sync (unique in the test binary, so failpoints name only it).
    pub fn sync(&self) -> String {
        format!("{}_{}", self.dest, self.check)
    }

    pub fn object(&self, base: &str) -> String {
        self.fx.object(base)
    }

    pub fn dir(&self) -> &Path {
        self.project.path()
    }

    /// Write the project: the model source, the destination and the check's sync.
    pub fn configure(&self, source: Source, object: &str, behavior: &str) {
        self.configure_with(source, object, behavior, "");
    }

    /// [`Suite::configure`], with more of `backflow.toml` (an `[engine]` table).
    pub fn configure_with(&self, source: Source, object: &str, behavior: &str, more: &str) {
        self.configure_keyed(source, object, behavior, more, &format!("\"{KEY}\""));
    }

    /// [`Suite::configure_with`] with another key (`key` is its TOML value).
    pub fn configure_keyed(
        &self,
        source: Source,
        object: &str,
        behavior: &str,
        more: &str,
        key: &str,
    ) {
        let source = match source {
            Source::Csv => "[sources.model]\ntype = \"csv\"\npath = \"model.csv\"\n",
            Source::Parquet => "[sources.model]\ntype = \"parquet\"\npath = \"model.parquet\"\n",
        };
        self.project.write(
            "backflow.toml",
            &format!(
                "{more}\n{source}\n{}\n[syncs.{}]\nfrom = \"model\"\nto = \"dest\"\nobject = {}\nbehavior = \"{behavior}\"\nkey = {key}\n",
                self.fx.toml(),
                self.sync(),
                toml_string(object),
            ),
        );
    }

    pub fn write_csv(&self, csv: &str) {
        self.project.write("model.csv", csv);
    }

    pub fn write_parquet(&self, batch: &arrow::array::RecordBatch) {
        text::write_parquet(&self.dir().join("model.parquet"), batch);
    }

    /// Run the check's sync; it must succeed.
    pub async fn run(&self) -> SyncReport {
        self.project.run_ok(&self.sync()).await
    }

    /// Run and compare the counts.
    pub async fn run_expecting(&self, expected: Counts) -> SyncReport {
        let r = self.run().await;
        assert_eq!(counts(&r), expected, "{} {}: {r:#?}", self.dest, self.check);
        r
    }

    /// The object's rows, canonical and sorted.
    pub async fn contents(&self, object: &str, columns: &[(&str, Kind)]) -> Vec<Vec<String>> {
        let names: Vec<&str> = columns.iter().map(|(n, _)| *n).collect();
        let raw = self.fx.read(object, &names).await;
        canonical_rows(raw, columns)
    }

    /// [`Suite::contents`] of an object whose records are identified by `key`.
    pub async fn contents_keyed(
        &self,
        object: &str,
        columns: &[(&str, Kind)],
        key: &[&str],
    ) -> Vec<Vec<String>> {
        let names: Vec<&str> = columns.iter().map(|(n, _)| *n).collect();
        let raw = self.fx.read_keyed(object, &names, key).await;
        canonical_rows(raw, columns)
    }

    /// Seed `object` with `id,email,name,note` records.
    pub async fn seed_people(&self, object: &str, keyed: bool, rows: &[[&str; 4]]) {
        self.fx
            .seed(
                object,
                Seed {
                    columns: &[KEY, "email", "name", "note"],
                    rows: rows
                        .iter()
                        .map(|r| r.iter().map(|v| v.to_string()).collect())
                        .collect(),
                    keyed,
                    defaults: &[("note", "kept")],
                },
            )
            .await;
    }

    /// What a record the sync creates holds in `note` (a column of the object the sync does
    /// not send): its default where the destination has defaults.
    pub fn new_note(&self) -> &'static str {
        if self.caps.column_defaults {
            "kept"
        } else {
            NULL
        }
    }

    /// A run after a run: nothing is sent but the `rejected` rows retried, `unchanged` rows
    /// counted, the object is the same and, when nothing was retried, not written to at all
    /// (where the destination can tell).
    pub async fn assert_rerun_is_noop(
        &self,
        object: &str,
        columns: &[(&str, Kind)],
        unchanged: u64,
        rejected: u64,
    ) {
        let before = self.contents(object, columns).await;
        let touched = self.fx.touched(object).await;
        self.run_expecting(Counts {
            unchanged,
            rejected,
            ..Counts::default()
        })
        .await;
        assert_eq!(
            self.contents(object, columns).await,
            before,
            "a run that sent nothing changed the object"
        );
        if rejected == 0 {
            assert_eq!(
                self.fx.touched(object).await,
                touched,
                "a run that sent nothing wrote to the object"
            );
        }
    }

    /// Rejected samples of a run, by key.
    pub fn rejected(r: &SyncReport) -> BTreeMap<String, String> {
        r.samples
            .iter()
            .filter(|s| s.kind == RecordKind::Rejected)
            .map(|s| (s.key.clone().unwrap_or_default(), s.reason.clone()))
            .collect()
    }
}

/// Rows in canonical text, sorted.
pub fn canonical_rows(rows: Vec<Vec<String>>, columns: &[(&str, Kind)]) -> Vec<Vec<String>> {
    let mut out: Vec<Vec<String>> = rows
        .into_iter()
        .map(|r| {
            r.iter()
                .zip(columns)
                .map(|(v, (_, kind))| text::canonical(*kind, v))
                .collect()
        })
        .collect();
    out.sort();
    out
}

/// Expected rows from literals.
pub fn rows<const N: usize>(rows: &[[&str; N]]) -> Vec<Vec<String>> {
    rows.iter()
        .map(|r| r.iter().map(|v| v.to_string()).collect())
        .collect()
}

/// A TOML basic string.
pub fn toml_string(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Checks a destination fails because of a bug in backflow, each with what its failure must
/// say: the test passes while the check fails that way, and fails once the bug is fixed (then
/// remove the entry). `(destination, check, the bug, a part of the failure message)`.
const KNOWN_BUGS: &[(&str, &str, &str, &str)] = &[];

/// Run `check`, or, for a known bug, insist that it still fails the way the bug makes it fail.
async fn run_check(dest: &str, check: &str, body: impl Future<Output = ()>) {
    use futures::FutureExt;
    let Some((_, _, bug, symptom)) = KNOWN_BUGS
        .iter()
        .find(|(d, c, _, _)| *d == dest && *c == check)
    else {
        return body.await;
    };
    let failure = std::panic::AssertUnwindSafe(body).catch_unwind().await;
    let message = match &failure {
        Ok(()) => {
            panic!("{dest}::{check} passes: the bug is fixed ({bug}); remove it from KNOWN_BUGS")
        }
        Err(e) => e
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_default(),
    };
    assert!(
        message.contains(symptom),
        "{dest}::{check} fails otherwise than the known bug ({bug}) does: {message}"
    );
    eprintln!("KNOWN BUG {dest}::{check}: {bug}");
}

/// One `#[tokio::test]` per check, so that a failure names the destination and the check:
/// `conformance::postgres::rejections`.
macro_rules! checks {
    ($dest:ident, $open:expr; $($check:ident),* $(,)?) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $check() {
            let Some(suite) = Suite::open(stringify!($dest), stringify!($check), $open).await else {
                return;
            };
            run_check(stringify!($dest), stringify!($check), checks::$check(&suite)).await;
            suite.close().await;
        }
    )*};
}

/// The suite for each destination: `name => how to open its fixture`.
macro_rules! conformance {
    ($($dest:ident => $open:expr),* $(,)?) => {$(
        mod $dest {
            use super::*;
            checks!($dest, $open;
                upsert, mirror, update_only, create_only, append_only, delete,
                rerun_sends_nothing, rejections, type_round_trip, hostile_identifiers_and_values,
                composite_key);
            #[cfg(feature = "failpoints")]
            checks!($dest, $open; interrupted_run);
        }
    )*};
}

use destinations::{FileFormat, FileMode};

conformance! {
    sqlite => destinations::sqlite::open,
    postgres => destinations::postgres::open,
    mysql => destinations::mysql::open,
    file_parquet => |s| destinations::file::open(s, FileFormat::Parquet, FileMode::Snapshot),
    file_csv => |s| destinations::file::open(s, FileFormat::Csv, FileMode::Snapshot),
    file_jsonl => |s| destinations::file::open(s, FileFormat::Jsonl, FileMode::Snapshot),
    feed_parquet => |s| destinations::file::open(s, FileFormat::Parquet, FileMode::Changes),
    feed_csv => |s| destinations::file::open(s, FileFormat::Csv, FileMode::Changes),
    feed_jsonl => |s| destinations::file::open(s, FileFormat::Jsonl, FileMode::Changes),
    http => destinations::http::open,
}
