//! CSV and Parquet file sources, through DataFusion listing tables (local or object store).

use std::path::{Path, PathBuf};
use std::time::Instant;

use std::sync::Arc;

use arrow::datatypes::{Schema, SchemaRef};
use async_trait::async_trait;
use datafusion::datasource::file_format::options::ReadOptions;
use datafusion::datasource::listing::{
    ListingOptions, ListingTable, ListingTableConfig, ListingTableUrl,
};
use datafusion::prelude::{CsvReadOptions, ParquetReadOptions, SessionContext};
use serde::Deserialize;

use super::{Source, SourceError, quarantine};
use crate::storage::Location;

/// `type = "csv"`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CsvSourceConfig {
    /// A file, a directory (all `*.csv` in it) or a glob; relative to the project, or a URL.
    pub path: String,
    /// Whether the first line holds column names (default true).
    #[serde(default = "yes")]
    pub has_header: bool,
    /// The field separator, one character (default `,`).
    #[serde(default = "comma")]
    pub delimiter: char,
    /// How many rows are read to infer column types (default 10,000, counted from the start
    /// of the first file). Every row is then checked against those types: a row with a value
    /// its column's type cannot hold (`abc` in a column inferred as integers) is left out and
    /// reported with its line, like a row that cannot be read. A column empty in every row
    /// read is text when the file has more rows. Raise it when the first rows are not
    /// representative; 0 reads every column as text.
    pub infer_schema_rows: Option<usize>,
}

/// `type = "parquet"`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ParquetSourceConfig {
    /// A file, a directory (all `*.parquet` in it) or a glob; relative to the project, or a URL.
    pub path: String,
}

/// Rows read to infer a CSV source's column types unless `infer_schema_rows` says otherwise.
pub const DEFAULT_INFER_SCHEMA_ROWS: usize = 10_000;

fn yes() -> bool {
    true
}
fn comma() -> char {
    ','
}

impl CsvSourceConfig {
    pub fn validate(&self) -> Vec<String> {
        let mut p = Vec::new();
        if !self.delimiter.is_ascii() {
            p.push(format!(
                "delimiter '{}' must be a single ASCII character",
                self.delimiter
            ));
        }
        if self.path.trim().is_empty() {
            p.push("path is empty".into());
        }
        p
    }
}

impl ParquetSourceConfig {
    pub fn validate(&self) -> Vec<String> {
        if self.path.trim().is_empty() {
            vec!["path is empty".into()]
        } else {
            vec![]
        }
    }
}

#[derive(Debug, Clone)]
enum Format {
    Csv(CsvSourceConfig),
    Parquet,
}

/// A CSV or Parquet source.
#[derive(Debug, Clone)]
pub struct FileSource {
    format: Format,
    path: String,
    project_dir: PathBuf,
}

impl FileSource {
    pub fn csv(config: CsvSourceConfig, project_dir: &Path) -> Self {
        FileSource {
            path: config.path.clone(),
            format: Format::Csv(config),
            project_dir: project_dir.to_path_buf(),
        }
    }
    pub fn parquet(config: ParquetSourceConfig, project_dir: &Path) -> Self {
        FileSource {
            path: config.path,
            format: Format::Parquet,
            project_dir: project_dir.to_path_buf(),
        }
    }
}

#[async_trait]
impl Source for FileSource {
    async fn register(
        &self,
        ctx: &SessionContext,
        name: &str,
    ) -> Result<super::Registration, SourceError> {
        let location = Location::resolve(&self.path, &self.project_dir).map_err(|source| {
            SourceError::Storage {
                name: name.to_string(),
                source,
            }
        })?;
        location
            .register(ctx)
            .map_err(|source| SourceError::Storage {
                name: name.to_string(),
                source,
            })?;
        // A single named file is read whatever its extension; a directory only yields files
        // with the format's extension.
        let single_file;
        let table_path = match &location.local {
            Some(p) => {
                if !location.is_glob() && !p.exists() {
                    return Err(SourceError::Missing {
                        name: name.to_string(),
                        location: p.display().to_string(),
                    });
                }
                single_file = p.is_file();
                p.display().to_string()
            }
            None => {
                single_file = !location.is_glob() && !self.path.ends_with('/');
                location.url.to_string()
            }
        };
        let ext_override = if single_file || location.is_glob() {
            Some("")
        } else {
            None
        };
        let read_err = |source| SourceError::Read {
            name: name.to_string(),
            location: location.display.clone(),
            source,
        };
        let mut registration = super::Registration::default();
        match &self.format {
            Format::Csv(c) => {
                let mut options = CsvReadOptions::new()
                    .has_header(c.has_header)
                    .delimiter(c.delimiter as u8)
                    .schema_infer_max_records(
                        c.infer_schema_rows.unwrap_or(DEFAULT_INFER_SCHEMA_ROWS),
                    );
                let prepared = self
                    .prepare_csv(name, c, &location, &mut registration)
                    .await?;
                let (table_path, ext_override) = match &prepared.read {
                    // Clean copies, or copies of objects: a folder of `.csv` files.
                    Some(dir) => (dir.display().to_string(), Some(".csv")),
                    None => (table_path, ext_override),
                };
                if let Some(schema) = &prepared.schema {
                    options = options.schema(schema);
                }
                if let Some(ext) = ext_override {
                    options = options.file_extension(ext);
                }
                if prepared.read.is_none() && location.is_glob() {
                    // The files the rows were checked in, not DataFusion's own glob.
                    let listing = options
                        .to_listing_options(&ctx.copied_config(), ctx.copied_table_options());
                    let schema = prepared.schema.clone().map(Arc::new);
                    register_glob(ctx, name, &location, listing, schema).await?;
                } else {
                    ctx.register_csv(name, &table_path, options)
                        .await
                        .map_err(read_err)?;
                }
            }
            Format::Parquet => {
                let mut options = ParquetReadOptions::default();
                if let Some(ext) = ext_override {
                    options = options.file_extension(ext);
                }
                if location.is_glob() {
                    let listing = options
                        .to_listing_options(&ctx.copied_config(), ctx.copied_table_options());
                    register_glob(ctx, name, &location, listing, None).await?;
                } else {
                    ctx.register_parquet(name, &table_path, options)
                        .await
                        .map_err(read_err)?;
                }
            }
        }
        Ok(registration)
    }
}

/// The files a glob names: those directly in its folder whose name matches it (a glob is the
/// path's last part, as for every file source: `exports/part-*.parquet`). Listed here rather
/// than by DataFusion, whose globs work in local paths only and which drops path parts holding
/// `=` before matching (so `k=v.parquet` would be left out and `date=…/` folders read).
async fn glob_files(location: &Location) -> Result<Vec<ListingTableUrl>, String> {
    let raw = location.display.as_str();
    let last = raw.rfind('/').map_or(0, |i| i + 1);
    if raw[..last].contains(['*', '?', '[']) {
        return Err(format!(
            "{raw}: a glob works in the last part of the path only (\"exports/*.parquet\"); to \
             read partition folders (\"date=2026-01-01/\"), name their parent folder"
        ));
    }
    let pattern = &raw[last..];
    let mut urls = Vec::new();
    match &location.local {
        Some(path) => {
            for file in quarantine::files(path, raw) {
                let url = url::Url::from_file_path(&file)
                    .map_err(|_| format!("{} is not an absolute path", file.display()))?;
                urls.push(ListingTableUrl::try_new(url, None).map_err(|e| e.to_string())?);
            }
        }
        None => {
            let store = location.store().map_err(|e| e.to_string())?;
            let dir = location.object_path().map_err(|e| e.to_string())?;
            let dir = dir.parts().collect::<Vec<_>>();
            let dir: object_store::path::Path =
                dir[..dir.len().saturating_sub(1)].iter().cloned().collect();
            let listing = store
                .list_with_delimiter(Some(&dir))
                .await
                .map_err(|e| format!("cannot list {raw}: {e}"))?;
            let mut names: Vec<_> = listing
                .objects
                .into_iter()
                .filter(|o| {
                    o.location
                        .filename()
                        .is_some_and(|n| quarantine::glob_match(pattern, n))
                })
                .map(|o| o.location)
                .collect();
            names.sort();
            for name in names {
                let mut url = location.store_url();
                url.set_path(&name.as_ref().replace('%', "%25"));
                urls.push(ListingTableUrl::try_new(url, None).map_err(|e| e.to_string())?);
            }
        }
    }
    if urls.is_empty() {
        return Err(format!("no file matches {raw}"));
    }
    Ok(urls)
}

/// Register the files a glob names as one table `name` (see [`glob_files`]).
async fn register_glob(
    ctx: &SessionContext,
    name: &str,
    location: &Location,
    options: ListingOptions,
    schema: Option<SchemaRef>,
) -> Result<(), SourceError> {
    let files = glob_files(location)
        .await
        .map_err(|reason| SourceError::Other {
            name: name.to_string(),
            reason,
        })?;
    register_files(ctx, name, files, options, schema)
        .await
        .map_err(|source| SourceError::Read {
            name: name.to_string(),
            location: location.display.clone(),
            source,
        })
}

/// Register `files` as one table `name` read with `options` (its schema inferred from them
/// unless given).
async fn register_files(
    ctx: &SessionContext,
    name: &str,
    files: Vec<ListingTableUrl>,
    options: ListingOptions,
    schema: Option<SchemaRef>,
) -> datafusion::error::Result<()> {
    let schema = match schema {
        Some(s) => s,
        None => {
            let mut inferred = Vec::new();
            for f in &files {
                inferred.push(
                    options
                        .infer_schema(&ctx.state(), f)
                        .await?
                        .as_ref()
                        .clone(),
                );
            }
            Arc::new(Schema::try_merge(inferred)?)
        }
    };
    let config = ListingTableConfig::new_with_multi_paths(files)
        .with_listing_options(options)
        .with_schema(schema);
    ctx.register_table(name, Arc::new(ListingTable::try_new(config)?))?;
    Ok(())
}

/// What the session reads for a CSV source.
struct PreparedCsv {
    /// The column types, inferred and checked (None: no file to infer them from).
    schema: Option<Schema>,
    /// A folder to read instead of the source's own path (clean copies, copies of objects).
    read: Option<PathBuf>,
}

impl FileSource {
    /// Prepare a CSV source: copy its objects here when it is in an object store, infer its
    /// column types from the first rows, scan every row (shape, and each value against its
    /// column's type), and when some cannot be read, write clean copies without them. The
    /// rows left out go to `registration`, with the folder of copies.
    async fn prepare_csv(
        &self,
        name: &str,
        c: &CsvSourceConfig,
        location: &Location,
        registration: &mut super::Registration,
    ) -> Result<PreparedCsv, SourceError> {
        let fail = |reason: String| SourceError::Other {
            name: name.to_string(),
            reason,
        };
        let shape = quarantine::CsvShape {
            has_header: c.has_header,
            delimiter: c.delimiter as u8,
        };
        let started = Instant::now();
        // The files to scan, and the folder they are under (for the copies' names).
        let (root, files) = match &location.local {
            Some(path) => {
                let files = quarantine::files(path, &location.display)
                    .into_iter()
                    .map(|p| quarantine::CsvFile {
                        name: p.display().to_string(),
                        path: p,
                    })
                    .collect();
                (path.clone(), files)
            }
            None => {
                let dir = self.scratch(name)?;
                let root = dir.path().join("objects");
                std::fs::create_dir_all(&root)
                    .map_err(|e| fail(format!("cannot create {}: {e}", root.display())))?;
                registration.scratch = Some(dir);
                let files = super::fetch::download(location, &root)
                    .await
                    .map_err(|e| match e {
                        super::fetch::FetchError::Missing { url } => SourceError::Missing {
                            name: name.to_string(),
                            location: url,
                        },
                        e => {
                            let e = e.to_string();
                            fail(format!("{e}{}", crate::storage::wait_hint(&e)))
                        }
                    })?;
                (root, files)
            }
        };
        if files.is_empty() {
            // Nothing to scan (an empty folder, a glob that matches nothing): read as it is.
            registration.scratch = None;
            return Ok(PreparedCsv {
                schema: None,
                read: None,
            });
        }
        // Not one byte (not even a header line): the file says nothing about its columns, and
        // reading it as a table with no rows would have a mirror delete everything.
        let empty =
            |f: &quarantine::CsvFile| std::fs::metadata(&f.path).is_ok_and(|m| m.len() == 0);
        if files.iter().all(empty) {
            return Err(fail(format!(
                "{}: the file is empty (0 bytes, not even a header line) — nothing was read; a CSV with no rows still needs its header",
                files[0].name
            )));
        }
        let limit = c.infer_schema_rows.unwrap_or(DEFAULT_INFER_SCHEMA_ROWS);
        let inferring = Instant::now();
        let columns = quarantine::infer(&files, shape, limit).map_err(fail)?;
        tracing::info!(
            source = name,
            file = %files[0].name,
            rows = columns.sampled,
            elapsed_ms = inferring.elapsed().as_millis() as u64,
            "CSV column types inferred"
        );
        let mut bad = Vec::new();
        for file in &files {
            let scanning = Instant::now();
            let first = registration.quarantine.rows.len();
            let scanned = quarantine::scan(
                file,
                shape,
                Some(&columns),
                name,
                &mut registration.quarantine,
            )
            .map_err(|reason| fail(format!("{}: {reason}", file.name)))?;
            tracing::info!(
                source = name,
                file = %file.name,
                rows = scanned.rows,
                left_out = scanned.left_out(),
                elapsed_ms = scanning.elapsed().as_millis() as u64,
                "CSV file checked"
            );
            let example = || {
                registration
                    .quarantine
                    .rows
                    .get(first)
                    .map(|r| format!(" (line {}: {})", r.line, r.reason))
                    .unwrap_or_default()
            };
            // Most rows unreadable: the file is not what the source says (another delimiter,
            // a header that does not fit, columns whose first rows are not like the others),
            // not a file with a few bad rows. Reading it as (nearly) empty would have a
            // mirror delete everything.
            if scanned.bad * 2 > scanned.rows {
                return Err(fail(format!(
                    "{}: {} of {} rows cannot be read as rows of the file{}; check its delimiter and header — nothing was read",
                    file.name,
                    scanned.bad,
                    scanned.rows,
                    example()
                )));
            }
            if scanned.left_out() * 2 > scanned.rows {
                let advice = if columns.partial() {
                    format!(
                        "the column types were inferred from the first {} rows: set infer_schema_rows to infer them from more",
                        columns.sampled
                    )
                } else {
                    "check the file's values".to_string()
                };
                return Err(fail(format!(
                    "{}: {} of {} rows cannot be read, {} of them for a value their column's type cannot hold{}; {advice} — nothing was read",
                    file.name,
                    scanned.left_out(),
                    scanned.rows,
                    scanned.mistyped,
                    example(),
                )));
            }
            bad.push(scanned.left_out() > 0);
        }
        tracing::info!(
            source = name,
            files = files.len(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "CSV source read and checked"
        );
        let schema = Some(columns.schema.clone());
        if !bad.iter().any(|b| *b) {
            // Copies of objects are read as they are; local files in their place.
            let read = location.local.is_none().then_some(root);
            return Ok(PreparedCsv { schema, read });
        }
        let dir = match &registration.scratch {
            Some(dir) => dir.path().to_path_buf(),
            None => {
                let dir = self.scratch(name)?;
                let path = dir.path().to_path_buf();
                registration.scratch = Some(dir);
                path
            }
        };
        let clean = dir.join("clean");
        for (file, has_bad) in files.iter().zip(bad) {
            // The same place under the copy folder (partition folders keep their names).
            let rel = file
                .path
                .strip_prefix(&root)
                .ok()
                .filter(|r| !r.as_os_str().is_empty())
                .map(Path::to_path_buf)
                .unwrap_or_else(|| PathBuf::from(file.path.file_name().unwrap_or_default()));
            let mut to = clean.join(rel);
            if to.extension().is_none_or(|e| e != "csv") {
                to.set_extension("csv");
            }
            if let Some(parent) = to.parent() {
                std::fs::create_dir_all(parent)
                    .map_err(|e| fail(format!("cannot create {}: {e}", parent.display())))?;
            }
            if has_bad {
                quarantine::clean_copy(&file.path, shape, Some(&columns), &to)
                    .map_err(|e| fail(format!("{}: {e}", file.name)))?;
            } else if std::fs::hard_link(&file.path, &to).is_err() {
                std::fs::copy(&file.path, &to)
                    .map_err(|e| fail(format!("cannot copy {}: {e}", file.name)))?;
            }
        }
        let q = &registration.quarantine;
        tracing::warn!(
            source = name,
            rows = q.count,
            "rows that cannot be read were left out (first: {})",
            q.rows
                .first()
                .map(|r| format!("{} line {}: {}", r.file, r.line, r.reason))
                .unwrap_or_default()
        );
        Ok(PreparedCsv {
            schema,
            read: Some(clean),
        })
    }

    /// A new folder for copies, in the project (removed when dropped; a run that dies leaves
    /// it to [`sweep_clean_copies`]).
    fn scratch(&self, name: &str) -> Result<tempfile::TempDir, SourceError> {
        tempfile::Builder::new()
            .prefix(&format!("{CLEAN_PREFIX}{}-", std::process::id()))
            .tempdir_in(&self.project_dir)
            .or_else(|_| tempfile::tempdir())
            .map_err(|e| SourceError::Other {
                name: name.to_string(),
                reason: format!("cannot create a folder for copies of its files: {e}"),
            })
    }
}

/// The folders of clean copies in a project start with this, then the process id.
const CLEAN_PREFIX: &str = ".backflow-clean-";

/// Remove the clean-copy folders that runs which died (killed, crashed) left in the project: a
/// folder `.backflow-clean-<pid>-…` whose process is gone, or, where processes cannot be looked
/// up (or the name has no process id), one older than a day. A run that ends in any other way
/// removes its own.
pub fn sweep_clean_copies(project_dir: &Path) {
    let Ok(entries) = std::fs::read_dir(project_dir) else {
        return;
    };
    let procfs = Path::new("/proc/self").exists();
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix(CLEAN_PREFIX) else {
            continue;
        };
        let pid = rest
            .split_once('-')
            .and_then(|(p, _)| p.parse::<u32>().ok());
        let dead = match pid {
            Some(pid) if procfs => {
                pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists()
            }
            _ => entry
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age > std::time::Duration::from_secs(86_400)),
        };
        if dead {
            match std::fs::remove_dir_all(entry.path()) {
                Ok(()) => tracing::info!(
                    folder = %entry.path().display(),
                    "removed the clean copies a run that died left behind"
                ),
                Err(e) => tracing::warn!(
                    folder = %entry.path().display(),
                    error = %e,
                    "cannot remove the clean copies a run that died left behind"
                ),
            }
        }
    }
}
