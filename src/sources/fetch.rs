//! CSV files in an object store (`s3://`, `gs://`, `az://`, `http(s)://`) are copied, as a
//! stream, into a local folder of the project before they are read: then they are scanned,
//! quarantined and read exactly like local files (see `quarantine`), and each object is
//! fetched once.
//!
//! A URL names one object, a folder (ending in `/`: every `*.csv` under it) or a glob in its
//! last segment (`in/*.csv`), as for local paths. One object needs only a GET (an HTTP server
//! need not list); a folder or a glob lists the store.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures::StreamExt;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt};
use tokio::io::AsyncWriteExt;

use super::quarantine::{CsvFile, glob_match};
use crate::storage::Location;

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("{url} does not exist")]
    Missing { url: String },
    #[error("{url} cannot be read: {source}")]
    Store {
        url: String,
        source: Box<object_store::Error>,
    },
    #[error("{url} cannot be copied to {}: {source}", path.display())]
    Local {
        url: String,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{url}: {reason}")]
    Location { url: String, reason: String },
}

/// Copy the CSV objects `location` names into `to` (which exists); the copies, each named
/// after its object's URL, in the order of their paths.
pub async fn download(location: &Location, to: &Path) -> Result<Vec<CsvFile>, FetchError> {
    let store = location.store().map_err(|e| FetchError::Location {
        url: location.display.clone(),
        reason: e.to_string(),
    })?;
    let path = location.object_path().map_err(|e| FetchError::Location {
        url: location.display.clone(),
        reason: e.to_string(),
    })?;
    let url_of = |p: &ObjectPath| format!("{}{p}", location.store_url());
    // (object, its place under `to`, its name in messages)
    let mut objects: Vec<(ObjectPath, PathBuf, String)> = Vec::new();
    if location.is_glob() {
        let pattern = path.filename().unwrap_or_default().to_string();
        let parts: Vec<_> = path.parts().collect();
        let parent = ObjectPath::from_iter(parts[..parts.len().saturating_sub(1)].iter().cloned());
        let listed = store
            .list_with_delimiter(Some(&parent))
            .await
            .map_err(|e| FetchError::Store {
                url: location.display.clone(),
                source: Box::new(e),
            })?;
        for meta in listed.objects {
            let Some(name) = meta.location.filename().map(str::to_string) else {
                continue;
            };
            if glob_match(&pattern, &name) {
                let url = url_of(&meta.location);
                objects.push((meta.location, PathBuf::from(name), url));
            }
        }
    } else if location.display.ends_with('/') {
        let mut listed = store.list(Some(&path));
        while let Some(meta) = listed.next().await {
            let meta = meta.map_err(|e| FetchError::Store {
                url: location.display.clone(),
                source: Box::new(e),
            })?;
            if meta.location.extension() != Some("csv") {
                continue;
            }
            // Partition folders (`region=eu/`) keep their names.
            let rel: PathBuf = match meta.location.prefix_match(&path) {
                Some(parts) => parts.map(|p| p.as_ref().to_string()).collect(),
                None => PathBuf::from(meta.location.filename().unwrap_or_default()),
            };
            let url = url_of(&meta.location);
            objects.push((meta.location, rel, url));
        }
    } else {
        let name = path.filename().unwrap_or("source").to_string();
        objects.push((path, PathBuf::from(name), location.display.clone()));
    }
    objects.sort_by(|a, b| a.0.cmp(&b.0));
    let mut out = Vec::with_capacity(objects.len());
    for (object, rel, url) in objects {
        let mut local = to.join(rel);
        if local.extension().is_none_or(|e| e != "csv") {
            local.set_extension("csv");
        }
        copy(&store, &object, &url, &local).await?;
        out.push(CsvFile {
            path: local,
            name: url,
        });
    }
    Ok(out)
}

/// Stream one object into `local`.
async fn copy(
    store: &Arc<dyn ObjectStore>,
    object: &ObjectPath,
    url: &str,
    local: &Path,
) -> Result<(), FetchError> {
    let started = std::time::Instant::now();
    let local_err = |source| FetchError::Local {
        url: url.to_string(),
        path: local.to_path_buf(),
        source,
    };
    let got = store.get(object).await.map_err(|e| match e {
        object_store::Error::NotFound { .. } => FetchError::Missing {
            url: url.to_string(),
        },
        e => FetchError::Store {
            url: url.to_string(),
            source: Box::new(e),
        },
    })?;
    if let Some(parent) = local.parent() {
        tokio::fs::create_dir_all(parent).await.map_err(local_err)?;
    }
    let mut file = tokio::fs::File::create(local).await.map_err(local_err)?;
    let mut bytes = 0u64;
    let mut stream = got.into_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| FetchError::Store {
            url: url.to_string(),
            source: Box::new(e),
        })?;
        bytes += chunk.len() as u64;
        file.write_all(&chunk).await.map_err(local_err)?;
    }
    file.flush().await.map_err(local_err)?;
    tracing::info!(
        file = url,
        bytes,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "CSV file copied from its object store"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The listing rules, through a store on this machine: one object, a folder (every
    /// `*.csv` under it, subfolders kept), a glob in the last segment; a missing object.
    #[tokio::test]
    async fn objects_are_copied_as_a_path_a_folder_or_a_glob_names_them() {
        let store = tempfile::tempdir().unwrap();
        let root = store.path();
        std::fs::create_dir_all(root.join("in/region=eu")).unwrap();
        for (rel, text) in [
            ("in/a.csv", "a\n1\n"),
            ("in/b.txt", "b\n2\n"),
            ("in/region=eu/c.csv", "c\n3\n"),
            ("in/d.data", "d\n4\n"),
        ] {
            std::fs::write(root.join(rel), text).unwrap();
        }
        let url = |rel: &str| format!("file://{}/{rel}", root.display());
        let fetched = |raw: String| async move {
            let to = tempfile::tempdir().unwrap();
            let location = Location::resolve(&raw, Path::new("/")).unwrap();
            let files = download(&location, to.path()).await?;
            Ok::<_, FetchError>(
                files
                    .into_iter()
                    .map(|f| {
                        let rel = f
                            .path
                            .strip_prefix(to.path())
                            .unwrap()
                            .display()
                            .to_string();
                        let text = std::fs::read_to_string(&f.path).unwrap();
                        (rel, f.name, text)
                    })
                    .collect::<Vec<_>>(),
            )
        };
        assert_eq!(
            fetched(url("in/d.data")).await.unwrap(),
            vec![("d.csv".into(), url("in/d.data"), "d\n4\n".into())]
        );
        assert_eq!(
            fetched(url("in/")).await.unwrap(),
            vec![
                ("a.csv".into(), url("in/a.csv"), "a\n1\n".into()),
                (
                    "region=eu/c.csv".into(),
                    url("in/region=eu/c.csv"),
                    "c\n3\n".into()
                ),
            ]
        );
        assert_eq!(
            fetched(url("in/*.txt")).await.unwrap(),
            vec![("b.csv".into(), url("in/b.txt"), "b\n2\n".into())]
        );
        assert!(matches!(
            fetched(url("in/none.csv")).await,
            Err(FetchError::Missing { url: u }) if u == url("in/none.csv")
        ));
    }
}
