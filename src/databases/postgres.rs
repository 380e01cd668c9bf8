//! PostgreSQL connections: `postgres://user:password@host:port/database?sslmode=…` URLs, TLS as
//! libpq does it (`disable`, `prefer` (the default), `require` encrypt without verifying the
//! server; `verify-full` verifies its certificate and host name).

use std::collections::HashMap;
use std::str::FromStr;

use secrecy::SecretString;
use tokio_postgres::Client;
use tokio_postgres::config::SslMode;

use super::DatabaseError;

/// A parsed PostgreSQL URL.
#[derive(Clone)]
pub struct PgUrl {
    var: String,
    config: tokio_postgres::Config,
    sslmode: String,
    password: Option<String>,
}

impl std::fmt::Debug for PgUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the password.
        f.debug_struct("PgUrl")
            .field("var", &self.var)
            .field("server", &self.server())
            .finish()
    }
}

impl PgUrl {
    /// Read and parse the URL in environment variable `var`.
    pub fn from_env(var: &str) -> Result<PgUrl, DatabaseError> {
        let raw = super::url_from_env(var)?;
        Self::parse(var, &raw)
    }

    pub fn parse(var: &str, raw: &str) -> Result<PgUrl, DatabaseError> {
        let bad = |reason: String| DatabaseError::BadUrl {
            var: var.to_string(),
            reason,
        };
        let url = url::Url::parse(raw).map_err(|e| bad(e.to_string()))?;
        if !matches!(url.scheme(), "postgres" | "postgresql") {
            return Err(bad(format!(
                "the scheme is \"{}\"; a PostgreSQL URL starts with postgres://",
                url.scheme()
            )));
        }
        let decode = |s: &str| {
            percent_decode(s).map_err(|_| bad("the URL is not valid UTF-8 once decoded".into()))
        };
        let mut config = tokio_postgres::Config::new();
        config.host(
            url.host_str()
                .filter(|h| !h.is_empty())
                .unwrap_or("localhost"),
        );
        config.port(url.port().unwrap_or(5432));
        let user = decode(url.username())?;
        config.user(if user.is_empty() { "postgres" } else { &user });
        let password = match url.password() {
            Some(p) => Some(decode(p)?),
            None => None,
        };
        if let Some(p) = &password {
            config.password(p);
        }
        let db = decode(url.path().trim_start_matches('/'))?;
        if !db.is_empty() {
            config.dbname(&db);
        }
        config.application_name("backflow");
        config.options("-c TimeZone=UTC");
        let mut sslmode = "prefer".to_string();
        for (k, v) in url.query_pairs() {
            match k.as_ref() {
                "sslmode" => match v.as_ref() {
                    "disable" | "prefer" | "require" | "verify-full" => sslmode = v.to_string(),
                    other => {
                        return Err(bad(format!(
                            "sslmode \"{other}\" is not supported (use disable, prefer, require or verify-full)"
                        )));
                    }
                },
                "application_name" => {
                    config.application_name(v.as_ref());
                }
                "connect_timeout" => {
                    let secs = u64::from_str(&v)
                        .map_err(|_| bad(format!("connect_timeout \"{v}\" is not a number")))?;
                    config.connect_timeout(std::time::Duration::from_secs(secs));
                }
                other => {
                    return Err(bad(format!(
                        "unknown URL parameter \"{other}\" (supported: sslmode, application_name, connect_timeout)"
                    )));
                }
            }
        }
        config.ssl_mode(match sslmode.as_str() {
            "disable" => SslMode::Disable,
            "prefer" => SslMode::Prefer,
            _ => SslMode::Require,
        });
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(std::time::Duration::from_secs(15));
        }
        Ok(PgUrl {
            var: var.to_string(),
            config,
            sslmode,
            password,
        })
    }

    /// The database the URL names (None: the server's default, the user's name).
    pub fn database(&self) -> Option<&str> {
        self.config.get_dbname()
    }

    /// The user the URL connects as.
    pub fn user(&self) -> Option<&str> {
        self.config.get_user()
    }

    /// `host:port/database`, for messages.
    pub fn server(&self) -> String {
        let host = match self.config.get_hosts().first() {
            Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
            #[cfg(unix)]
            Some(tokio_postgres::config::Host::Unix(p)) => p.display().to_string(),
            None => "localhost".into(),
        };
        let port = self.config.get_ports().first().copied().unwrap_or(5432);
        format!(
            "postgres://{host}:{port}/{}",
            self.config.get_dbname().unwrap_or("")
        )
    }

    /// Remove the password from a message.
    pub fn redact(&self, text: &str) -> String {
        super::redact(text, &[self.password.as_deref().unwrap_or("")])
    }

    /// Open one connection; its I/O runs on a background task.
    pub async fn connect(&self) -> Result<Client, DatabaseError> {
        let fail = |reason: String| DatabaseError::Connect {
            var: self.var.clone(),
            server: self.server(),
            reason: self.redact(&reason),
        };
        // tokio-postgres bounds only the TCP connect by `connect_timeout`; a server that accepts
        // the connection and never answers the startup or TLS handshake would hang here.
        let wait = self
            .config
            .get_connect_timeout()
            .copied()
            .unwrap_or(std::time::Duration::from_secs(15));
        let connecting = async {
            if self.sslmode == "disable" {
                // No TLS connector either: building one loads the system's certificates
                // (tens of milliseconds, per connection).
                return Ok(spawn_connection(
                    self.config.connect(tokio_postgres::NoTls).await?,
                ));
            }
            let tls = native_tls::TlsConnector::builder()
                .danger_accept_invalid_certs(self.sslmode != "verify-full")
                .danger_accept_invalid_hostnames(self.sslmode != "verify-full")
                .build()
                .map_err(Setup)?;
            let tls = postgres_native_tls::MakeTlsConnector::new(tls);
            Ok::<Client, ConnectFailure>(spawn_connection(self.config.connect(tls).await?))
        };
        let client = tokio::time::timeout(wait, connecting)
            .await
            .map_err(|_| {
                fail(format!(
                    "no answer within {} (the server accepted the connection but did not complete the handshake); \
                     set connect_timeout=SECONDS in the URL to wait longer",
                    humantime::format_duration(wait)
                ))
            })?
            .map_err(|e| match e {
                Setup(e) => fail(e.to_string()),
                Connect(e) => fail(message(&e)),
            })?;
        Ok(client)
    }

    /// The parameters datafusion-table-providers' connection pool takes.
    pub fn provider_params(&self) -> HashMap<String, SecretString> {
        let mut p = HashMap::new();
        let mut put = |k: &str, v: String| {
            p.insert(k.to_string(), SecretString::from(v));
        };
        if let Some(tokio_postgres::config::Host::Tcp(h)) = self.config.get_hosts().first() {
            put("host", h.clone());
        }
        put(
            "port",
            self.config
                .get_ports()
                .first()
                .copied()
                .unwrap_or(5432)
                .to_string(),
        );
        if let Some(u) = self.config.get_user() {
            put("user", u.to_string());
        }
        if let Some(d) = self.config.get_dbname() {
            put("db", d.to_string());
        }
        if let Some(pw) = &self.password {
            put("pass", pw.clone());
        }
        put("sslmode", self.sslmode.clone());
        put("connection_pool_size", "4".into());
        // Timestamps without a zone compare with `timestamptz` columns in the session's zone:
        // watermark filters are written in UTC, so the session must be in UTC.
        put("options", "-c TimeZone=UTC".into());
        p
    }

    pub fn query_error(&self, e: &tokio_postgres::Error) -> DatabaseError {
        DatabaseError::Query {
            server: self.server(),
            reason: self.redact(&message(e)),
        }
    }
}

/// A readable message for a PostgreSQL error: the server's message, detail and SQLSTATE.
pub fn message(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => {
            let mut m = db.message().to_string();
            if let Some(d) = db.detail() {
                m.push_str(" (");
                m.push_str(d);
                m.push(')');
            }
            if let Some(c) = db.column() {
                m.push_str(&format!(" [column {c}]"));
            }
            m.push_str(&format!(" [SQLSTATE {}]", db.code().code()));
            match db.code().code() {
                "55P03" => m.push_str(
                    ": another session holds a lock on the table for longer than lock_timeout; \
                     raise lock_timeout of the destination or end that session \
                     (SELECT * FROM pg_locks shows it)",
                ),
                "57014" if db.message().contains("statement timeout") => m.push_str(
                    ": one statement ran longer than statement_timeout; raise statement_timeout of the destination",
                ),
                _ => {}
            }
            m
        }
        None => {
            let mut m = e.to_string();
            let mut source = std::error::Error::source(e);
            while let Some(s) = source {
                m.push_str(": ");
                m.push_str(&s.to_string());
                source = s.source();
            }
            m
        }
    }
}

/// Whether a PostgreSQL error concerns the rows being written (a value or a constraint), so
/// that the rows are refused, rather than the connection, the table or the statement.
pub fn is_row_error(e: &tokio_postgres::Error) -> bool {
    let Some(db) = e.as_db_error() else {
        return false;
    };
    let code = db.code().code();
    // 22: data exception, 23: integrity constraint violation, 54000: program limit (index row
    // too big), P0001: raised by a trigger.
    code.starts_with("22") || code.starts_with("23") || code == "54000" || code == "P0001"
}

/// Why a connection could not be opened: the TLS connector, or the server.
enum ConnectFailure {
    Setup(native_tls::Error),
    Connect(tokio_postgres::Error),
}
use ConnectFailure::{Connect, Setup};

impl From<tokio_postgres::Error> for ConnectFailure {
    fn from(e: tokio_postgres::Error) -> Self {
        Connect(e)
    }
}

/// The client of a new connection, whose I/O runs on a background task.
fn spawn_connection<S, T>(
    (client, connection): (Client, tokio_postgres::Connection<S, T>),
) -> Client
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!("postgres connection closed: {e}");
        }
    });
    client
}

/// Quote an identifier.
pub fn quote(ident: &str) -> String {
    format!("\"{}\"", ident.replace('"', "\"\""))
}

/// `"schema"."table"`.
pub fn qualified(schema: &str, table: &str) -> String {
    format!("{}.{}", quote(schema), quote(table))
}

fn percent_decode(s: &str) -> Result<String, std::string::FromUtf8Error> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2]))
        {
            out.push(h * 16 + l);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8(out)
}

fn hex(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

/// The tables (and views) of a schema.
pub async fn list_tables(
    url: &PgUrl,
    client: &Client,
    schema: &str,
) -> Result<Vec<String>, DatabaseError> {
    let rows = client
        .query(
            "SELECT table_name::text FROM information_schema.tables WHERE table_schema = $1 ORDER BY 1",
            &[&schema],
        )
        .await
        .map_err(|e| url.query_error(&e))?;
    Ok(rows.iter().map(|r| r.get::<_, String>(0)).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_urls_without_leaking_passwords() {
        let u = PgUrl::parse(
            "X",
            "postgres://bob:s%40cret@db.example:6543/warehouse?sslmode=disable",
        )
        .unwrap();
        assert_eq!(u.server(), "postgres://db.example:6543/warehouse");
        assert_eq!(u.password.as_deref(), Some("s@cret"));
        assert!(!format!("{u:?}").contains("s@cret"));
        assert_eq!(u.redact("password s@cret refused"), "password *** refused");
        let e = PgUrl::parse("X", "mysql://a@b/c").unwrap_err().to_string();
        assert!(e.contains("X") && e.contains("postgres://"), "{e}");
        let e = PgUrl::parse("X", "postgres://a:pw@b/c?sslmode=bogus")
            .unwrap_err()
            .to_string();
        assert!(e.contains("sslmode") && !e.contains("pw@"), "{e}");
    }

    #[test]
    fn quotes_identifiers() {
        assert_eq!(quote(r#"a"b"#), r#""a""b""#);
        assert_eq!(qualified("s", "t; drop"), r#""s"."t; drop""#);
    }
}
