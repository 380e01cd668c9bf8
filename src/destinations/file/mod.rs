//! File destination: one object per file (CSV, Parquet or JSON lines) in a local folder or an
//! object-store prefix. In `snapshot` mode (`snapshot.rs`) the file always holds the object's
//! complete current contents and is rewritten by each run that changed something; in `changes`
//! mode (`change_feed.rs`) each run adds a file with only the changes it sent.

mod change_feed;
mod format;
mod snapshot;

use std::path::{Path, PathBuf};

use async_trait::async_trait;
use serde::Deserialize;

pub use format::FileFormat;
pub(super) use format::fields_with_op;

use super::{Destination, DestinationError, ObjectWriter, WriteTarget};
use crate::storage::Location;

/// `type = "file"`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileDestinationConfig {
    /// The folder (relative to the project, absolute, or an object-store URL prefix) objects are
    /// written into.
    pub path: String,
    /// `csv`, `parquet` or `jsonl`.
    pub format: FileFormat,
    /// `snapshot` (default): `<object>.<format>` always holds the object's full contents.
    /// `changes`: each run adds `<object>/v<version>.<format>` with only the changes it sent
    /// (see `change_feed.rs`).
    #[serde(default)]
    pub mode: FileMode,
}

/// What a file destination's object holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FileMode {
    #[default]
    Snapshot,
    Changes,
}

impl FileDestinationConfig {
    pub fn validate(&self) -> Vec<String> {
        super::path_problems(&self.path)
    }
}

pub(super) fn validate_object(object: &str) -> Vec<String> {
    super::check_relative_name(object)
}

#[derive(Debug, Clone)]
pub struct FileDestination {
    name: String,
    config: FileDestinationConfig,
    project_dir: PathBuf,
}

impl FileDestination {
    pub fn new(name: &str, config: &FileDestinationConfig, project_dir: &Path) -> Self {
        FileDestination {
            name: name.to_string(),
            config: config.clone(),
            project_dir: project_dir.to_path_buf(),
        }
    }

    /// The object's file: `<path>/<object>`, with the format's extension when it has none
    /// (in `changes` mode, the folder `<path>/<object>`).
    fn object_location(&self, object: &str) -> Result<Location, DestinationError> {
        let mut file = object.to_string();
        if Path::new(object).extension().is_none() && self.config.mode == FileMode::Snapshot {
            file = format!("{object}.{}", self.config.format.extension());
        }
        let base = self.config.path.trim_end_matches('/');
        Location::resolve(&format!("{base}/{file}"), &self.project_dir).map_err(|source| {
            DestinationError::Storage {
                destination: self.name.clone(),
                source,
            }
        })
    }

    fn unwritable(&self, location: &Location, reason: impl ToString) -> DestinationError {
        DestinationError::Unwritable {
            destination: self.name.clone(),
            location: location
                .local
                .as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_else(|| location.url.to_string()),
            reason: reason.to_string(),
        }
    }
}

#[async_trait]
impl Destination for FileDestination {
    async fn check(&self, target: &WriteTarget) -> Result<(), DestinationError> {
        let location = self.object_location(&target.object)?;
        if let Some(path) = &location.local {
            super::local_writable(path).map_err(|reason| self.unwritable(&location, reason))?;
            if path.is_dir() && self.config.mode == FileMode::Snapshot {
                return Err(self.unwritable(&location, "a folder has that name"));
            }
            if path.is_file() && self.config.mode == FileMode::Changes {
                return Err(self.unwritable(
                    &location,
                    "a file has that name (a change feed is a folder)",
                ));
            }
        }
        Ok(())
    }

    fn fingerprint(&self, object: &str) -> String {
        let kind = match self.config.mode {
            FileMode::Snapshot => "file",
            FileMode::Changes => "file-changes",
        };
        match self.object_location(object) {
            Ok(l) => format!("{kind}:{}:{}", self.config.format.extension(), l.url),
            Err(_) => format!(
                "{kind}:{}:{}/{object}",
                self.config.format.extension(),
                self.config.path
            ),
        }
    }

    fn keys(&self, target: &WriteTarget) -> Option<super::KeyStream> {
        // A change feed holds operations, not records.
        if self.config.mode == FileMode::Changes {
            return None;
        }
        let (this, target) = (self.clone(), target.clone());
        Some(super::key_stream(move |tx| async move {
            let location = this.object_location(&target.object)?;
            let store = location
                .store()
                .map_err(|source| DestinationError::Storage {
                    destination: this.name.clone(),
                    source,
                })?;
            snapshot::existing_keys(&this.name, this.config.format, &target, location, store, tx)
                .await
        }))
    }

    async fn open(&self, target: &WriteTarget) -> Result<Box<dyn ObjectWriter>, DestinationError> {
        self.check(target).await?;
        let location = self.object_location(&target.object)?;
        if let Some(path) = &location.local
            && let Some(parent) = path.parent()
        {
            std::fs::create_dir_all(parent).map_err(|e| self.unwritable(&location, e))?;
        }
        let store = location
            .store()
            .map_err(|source| DestinationError::Storage {
                destination: self.name.clone(),
                source,
            })?;
        if self.config.mode == FileMode::Changes {
            let folder = location
                .object_path()
                .map_err(|source| DestinationError::Storage {
                    destination: self.name.clone(),
                    source,
                })?;
            if let Some(path) = &location.local {
                std::fs::create_dir_all(path).map_err(|e| self.unwritable(&location, e))?;
            }
            // A feed with files of later versions than this run's: the sync's state is older
            // than the feed (reset, moved aside); adding to it would interleave two histories.
            let newest = change_feed::newest_version(store.as_ref(), &folder)
                .await
                .map_err(|e| self.unwritable(&location, e))?;
            if let Some(v) = newest.filter(|v| *v > target.version) {
                return Err(self.unwritable(
                    &location,
                    format!(
                        "the change feed already holds version {v}, later than the {} this run commits: the sync's state is older than the feed (was it reset?); move the feed's files aside or write elsewhere",
                        target.version
                    ),
                ));
            }
            return Ok(Box::new(change_feed::ChangeFeedWriter::new(
                &self.name,
                target,
                self.config.format,
                store,
                &folder,
            )));
        }
        let writer = snapshot::FileWriter::open(
            &self.name,
            self.config.format,
            target,
            location.clone(),
            store,
        )
        .map_err(|e| self.unwritable(&location, e))?;
        Ok(Box::new(writer))
    }
}
