//! Locations: local paths (relative to the project), `file://` URLs and object-store URLs
//! (`s3://`, `gs://`, `az://`, `abfss://`, `http(s)://`), resolved to an [`ObjectStore`] and a
//! path inside it. Cloud credentials come from the usual environment variables
//! (`AWS_ACCESS_KEY_ID`, `GOOGLE_SERVICE_ACCOUNT`, `AZURE_STORAGE_ACCOUNT_NAME`, ...).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use datafusion::prelude::SessionContext;
use object_store::ObjectStore;
use object_store::local::LocalFileSystem;
use object_store::path::Path as ObjectPath;
use url::Url;

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("\"{location}\" is not a valid location: {reason}")]
    BadLocation { location: String, reason: String },
    #[error("cannot set up storage for \"{location}\": {source}")]
    Store {
        location: String,
        source: Box<object_store::Error>,
    },
}

/// A resolved location: the store, the store's base URL and the path of the object or prefix.
#[derive(Debug, Clone)]
pub struct Location {
    /// What the user wrote, for messages.
    pub display: String,
    /// Full URL (`file:///abs/path` or `s3://bucket/key`), globs kept as written.
    pub url: Url,
    /// The local path when the location is on this machine.
    pub local: Option<PathBuf>,
}

impl Location {
    /// Resolve `raw` (a path relative to `base`, an absolute path or a URL).
    pub fn resolve(raw: &str, base: &Path) -> Result<Location, StorageError> {
        let bad = |reason: &str| StorageError::BadLocation {
            location: raw.to_string(),
            reason: reason.to_string(),
        };
        if raw.trim().is_empty() {
            return Err(bad("it is empty"));
        }
        if raw.contains('\0') {
            return Err(bad("it contains a NUL character"));
        }
        if let Some((scheme, _)) = raw.split_once("://") {
            if scheme.eq_ignore_ascii_case("file") {
                let url = Url::parse(raw).map_err(|e| bad(&e.to_string()))?;
                let local = url
                    .to_file_path()
                    .map_err(|_| bad("a file:// URL must hold an absolute path"))?;
                return Ok(Location {
                    display: raw.to_string(),
                    url,
                    local: Some(local),
                });
            }
            let url = Url::parse(raw).map_err(|e| bad(&e.to_string()))?;
            return Ok(Location {
                display: raw.to_string(),
                url,
                local: None,
            });
        }
        let path = Path::new(raw);
        let abs = if path.is_absolute() {
            path.to_path_buf()
        } else {
            base.join(path)
        };
        let abs = normalize(&abs);
        let url =
            Url::from_file_path(&abs).map_err(|_| bad("cannot turn it into an absolute path"))?;
        Ok(Location {
            display: raw.to_string(),
            url,
            local: Some(abs),
        })
    }

    /// Whether the last segment holds glob characters.
    pub fn is_glob(&self) -> bool {
        self.display.contains(['*', '?', '['])
    }

    /// `scheme://authority/`: the URL an object store is registered under.
    pub fn store_url(&self) -> Url {
        let mut u = self.url.clone();
        u.set_path("/");
        u.set_query(None);
        u.set_fragment(None);
        u
    }

    /// The object path inside the store.
    pub fn object_path(&self) -> Result<ObjectPath, StorageError> {
        match &self.local {
            Some(p) => ObjectPath::from_absolute_path(p).map_err(|e| StorageError::BadLocation {
                location: self.display.clone(),
                reason: e.to_string(),
            }),
            None => {
                ObjectPath::from_url_path(self.url.path()).map_err(|e| StorageError::BadLocation {
                    location: self.display.clone(),
                    reason: e.to_string(),
                })
            }
        }
    }

    /// Build the object store for this location.
    pub fn store(&self) -> Result<Arc<dyn ObjectStore>, StorageError> {
        if self.local.is_some() {
            return Ok(Arc::new(LocalFileSystem::new()));
        }
        let err = |source| StorageError::Store {
            location: self.display.clone(),
            source: Box::new(source),
        };
        let (store, _) =
            object_store::parse_url_opts(&self.url, env_options(self.url.scheme())).map_err(err)?;
        Ok(Arc::from(store))
    }

    /// Make the location readable by DataFusion in `ctx` (registers remote stores).
    pub fn register(&self, ctx: &SessionContext) -> Result<Arc<dyn ObjectStore>, StorageError> {
        let store = self.store()?;
        if self.local.is_none() {
            ctx.register_object_store(&self.store_url(), store.clone());
        }
        Ok(store)
    }
}

/// Store options from the environment for a URL scheme (credentials, region, endpoint).
fn env_options(scheme: &str) -> Vec<(String, String)> {
    let prefixes: &[&str] = match scheme {
        "s3" | "s3a" => &["AWS_"],
        "gs" => &["GOOGLE_"],
        "az" | "adl" | "azure" | "abfs" | "abfss" => &["AZURE_"],
        _ => &[],
    };
    let mut options: Vec<(String, String)> = std::env::vars()
        .filter(|(k, _)| prefixes.iter().any(|p| k.starts_with(p)))
        .map(|(k, v)| (k.to_ascii_lowercase(), v))
        .collect();
    // object_store's HTTP client refuses plain HTTP unless allowed: a URL that says
    // `http://` asks for it, and so does an S3 endpoint that says `http://` (a local
    // S3-compatible server), unless AWS_ALLOW_HTTP says otherwise.
    if scheme == "http" {
        options.push(("allow_http".into(), "true".into()));
    }
    let plain_endpoint = options.iter().any(|(k, v)| {
        matches!(k.as_str(), "aws_endpoint_url" | "aws_endpoint")
            && v.get(..7)
                .is_some_and(|p| p.eq_ignore_ascii_case("http://"))
    });
    if plain_endpoint && !options.iter().any(|(k, _)| k == "aws_allow_http") {
        options.push(("aws_allow_http".into(), "true".into()));
    }
    options
}

/// For an object-store error that ran out of retries (a server that does not answer, or
/// answers with errors), what bounds the wait and how to shorten it; empty otherwise.
pub fn wait_hint(error: &str) -> &'static str {
    if error.contains("retry_timeout") {
        " (each object-store request waits at most AWS_TIMEOUT, GOOGLE_TIMEOUT or AZURE_TIMEOUT, \
         30s by default, and failed requests are retried for up to 3 minutes: check that the \
         server answers, or set a shorter AWS_TIMEOUT such as 5s)"
    } else {
        ""
    }
}

/// Lexically remove `.` and `..` so messages and URLs show the real path.
fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            std::path::Component::ParentDir => {
                out.pop();
            }
            std::path::Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_paths_resolve_against_the_project() {
        let loc = Location::resolve("data/people.csv", Path::new("/proj")).unwrap();
        assert_eq!(loc.url.as_str(), "file:///proj/data/people.csv");
        assert_eq!(
            loc.local.as_deref(),
            Some(Path::new("/proj/data/people.csv"))
        );
        let loc = Location::resolve("../x/./y.csv", Path::new("/proj/sub")).unwrap();
        assert_eq!(loc.local.as_deref(), Some(Path::new("/proj/x/y.csv")));
    }

    #[test]
    fn urls_keep_their_scheme() {
        let loc = Location::resolve("s3://bucket/a/b.parquet", Path::new("/proj")).unwrap();
        assert!(loc.local.is_none());
        assert_eq!(loc.store_url().as_str(), "s3://bucket/");
        assert_eq!(loc.object_path().unwrap().as_ref(), "a/b.parquet");
        let loc = Location::resolve("file:///tmp/x.csv", Path::new("/proj")).unwrap();
        assert_eq!(loc.local.as_deref(), Some(Path::new("/tmp/x.csv")));
    }

    #[test]
    fn an_exhausted_retry_names_the_timeout_setting() {
        let e = "Error after 6 retries in 180.2s, max_retries: 10, retry_timeout: 180s, source: \
                 error sending request";
        assert!(wait_hint(e).contains("AWS_TIMEOUT"));
        assert_eq!(wait_hint("Object at location x not found"), "");
    }

    #[test]
    fn nul_and_empty_are_refused() {
        assert!(Location::resolve("a\0b", Path::new("/p")).is_err());
        assert!(Location::resolve(" ", Path::new("/p")).is_err());
    }
}
