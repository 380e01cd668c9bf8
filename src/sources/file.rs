//! CSV and Parquet file sources, through DataFusion listing tables (local or object store).

use std::path::{Path, PathBuf};

use async_trait::async_trait;
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
    /// How many rows are read to infer column types (default: all of them, so that a column
    /// that is empty for its first rows is not taken for an empty one). Lower it for very large
    /// files whose early rows are representative.
    pub infer_schema_rows: Option<usize>,
}

/// `type = "parquet"`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ParquetSourceConfig {
    /// A file, a directory (all `*.parquet` in it) or a glob; relative to the project, or a URL.
    pub path: String,
}

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
                    .schema_infer_max_records(c.infer_schema_rows.unwrap_or(usize::MAX));
                let mut table_path = table_path;
                let mut ext_override = ext_override;
                if let Some(local) = &location.local {
                    // Rows that cannot be read are quarantined; the session reads clean copies.
                    if let Some(dir) =
                        self.quarantine(name, c, local, &location.display, &mut registration)?
                    {
                        table_path = dir.path().display().to_string();
                        ext_override = Some(".csv");
                        registration.scratch = Some(dir);
                    }
                }
                if let Some(ext) = ext_override {
                    options = options.file_extension(ext);
                }
                ctx.register_csv(name, &table_path, options)
                    .await
                    .map_err(read_err)?;
            }
            Format::Parquet => {
                let mut options = ParquetReadOptions::default();
                if let Some(ext) = ext_override {
                    options = options.file_extension(ext);
                }
                ctx.register_parquet(name, &table_path, options)
                    .await
                    .map_err(read_err)?;
            }
        }
        Ok(registration)
    }
}

impl FileSource {
    /// Scan the local CSV files `path` names; when some have rows that cannot be read, the
    /// folder of clean copies (of those files; the others linked or copied as they are) to
    /// read instead.
    fn quarantine(
        &self,
        name: &str,
        c: &CsvSourceConfig,
        path: &Path,
        display: &str,
        registration: &mut super::Registration,
    ) -> Result<Option<tempfile::TempDir>, SourceError> {
        let shape = quarantine::CsvShape {
            has_header: c.has_header,
            delimiter: c.delimiter as u8,
        };
        let files = quarantine::files(path, display);
        // Not one byte (not even a header line): the file says nothing about its columns, and
        // reading it as a table with no rows would have a mirror delete everything.
        let empty = |f: &PathBuf| std::fs::metadata(f).is_ok_and(|m| m.len() == 0);
        if let Some(first) = files.first()
            && files.iter().all(empty)
        {
            return Err(SourceError::Other {
                name: name.to_string(),
                reason: format!(
                    "{}: the file is empty (0 bytes, not even a header line) — nothing was read; a CSV with no rows still needs its header",
                    first.display()
                ),
            });
        }
        let mut bad = Vec::new();
        for file in &files {
            let first = registration.quarantine.rows.len();
            let scanned = quarantine::scan(file, shape, name, &mut registration.quarantine)
                .map_err(|reason| SourceError::Other {
                    name: name.to_string(),
                    reason: format!("{}: {reason}", file.display()),
                })?;
            // Most rows unreadable: the file is not what the source says (another delimiter,
            // a header that does not fit), not a file with a few bad rows. Reading it as empty
            // would have a mirror delete everything.
            if scanned.bad * 2 > scanned.rows {
                let example = registration
                    .quarantine
                    .rows
                    .get(first)
                    .map(|r| format!(" (line {}: {})", r.line, r.reason))
                    .unwrap_or_default();
                return Err(SourceError::Other {
                    name: name.to_string(),
                    reason: format!(
                        "{}: {} of {} rows cannot be read as rows of the file{example}; check its delimiter and header — nothing was read",
                        file.display(),
                        scanned.bad,
                        scanned.rows
                    ),
                });
            }
            bad.push(scanned.bad > 0);
        }
        if !bad.iter().any(|b| *b) {
            return Ok(None);
        }
        let fail = |reason: String| SourceError::Other {
            name: name.to_string(),
            reason,
        };
        let dir = tempfile::Builder::new()
            .prefix(&format!("{CLEAN_PREFIX}{}-", std::process::id()))
            .tempdir_in(&self.project_dir)
            .or_else(|_| tempfile::tempdir())
            .map_err(|e| fail(format!("cannot create a folder for clean copies: {e}")))?;
        for (file, has_bad) in files.iter().zip(bad) {
            // The same place under the copy folder (partition folders keep their names).
            let rel = file
                .strip_prefix(path)
                .ok()
                .filter(|r| !r.as_os_str().is_empty())
                .map(Path::to_path_buf)
                .unwrap_or_else(|| PathBuf::from(file.file_name().unwrap_or_default()));
            let mut to = dir.path().join(rel);
            if to.extension().is_none_or(|e| e != "csv") {
                to.set_extension("csv");
            }
            if let Some(parent) = to.parent() {
                std::fs::create_dir_all(parent)
                    .map_err(|e| fail(format!("cannot create {}: {e}", parent.display())))?;
            }
            if has_bad {
                quarantine::clean_copy(file, shape, &to)
                    .map_err(|e| fail(format!("{}: {e}", file.display())))?;
            } else if std::fs::hard_link(file, &to).is_err() {
                std::fs::copy(file, &to)
                    .map_err(|e| fail(format!("cannot copy {}: {e}", file.display())))?;
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
        Ok(Some(dir))
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
