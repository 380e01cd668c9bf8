//! MySQL and MariaDB connections: `mysql://user:password@host:port/database?sslmode=…` URLs.
//! `sslmode` is `disabled`, `preferred` (the default: encrypt when the server offers it, without
//! verifying its certificate) or `required` (encrypt and verify). Every session works in UTC
//! with utf8mb4 and strict SQL mode, so that a value the table cannot hold is an error (a
//! refused row), never a silent truncation.

use std::collections::HashMap;

use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Opts, OptsBuilder, SslOpts};
use secrecy::SecretString;

use super::DatabaseError;

const SETUP: [&str; 3] = [
    "SET time_zone = '+00:00'",
    "SET NAMES utf8mb4",
    "SET SESSION sql_mode = CONCAT_WS(',', NULLIF(@@SESSION.sql_mode, ''), 'STRICT_ALL_TABLES', 'NO_AUTO_VALUE_ON_ZERO')",
];

#[derive(Clone)]
pub struct MyUrl {
    var: String,
    /// The URL without `sslmode`, as mysql_async reads it.
    url: String,
    opts: Opts,
    sslmode: String,
    /// The longest wait for a connection (`connect_timeout` in the URL, 15 s by default).
    connect_timeout: std::time::Duration,
}

impl std::fmt::Debug for MyUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MyUrl")
            .field("var", &self.var)
            .field("server", &self.server())
            .finish()
    }
}

impl MyUrl {
    pub fn from_env(var: &str) -> Result<MyUrl, DatabaseError> {
        let raw = super::url_from_env(var)?;
        Self::parse(var, &raw)
    }

    pub fn parse(var: &str, raw: &str) -> Result<MyUrl, DatabaseError> {
        let password = url::Url::parse(raw)
            .ok()
            .and_then(|u| u.password().map(str::to_string))
            .unwrap_or_default();
        let bad = |reason: String| DatabaseError::BadUrl {
            var: var.to_string(),
            reason: super::redact(&reason, &[&password]),
        };
        let mut url = url::Url::parse(raw).map_err(|e| bad(e.to_string()))?;
        if !matches!(url.scheme(), "mysql" | "mariadb") {
            return Err(bad(format!(
                "the scheme is \"{}\"; a MySQL URL starts with mysql://",
                url.scheme()
            )));
        }
        if url.scheme() == "mariadb" {
            // mysql_async knows only mysql://; the two servers speak the same protocol.
            let rest = raw.split_once("://").map(|x| x.1).unwrap_or_default();
            url = url::Url::parse(&format!("mysql://{rest}")).map_err(|e| bad(e.to_string()))?;
        }
        let mut sslmode = "preferred".to_string();
        let mut connect_timeout = std::time::Duration::from_secs(15);
        let pairs: Vec<(String, String)> = url
            .query_pairs()
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        let mut kept = Vec::new();
        for (k, v) in pairs {
            if k == "sslmode" || k == "ssl-mode" {
                match v.to_ascii_lowercase().as_str() {
                    "disabled" | "preferred" | "required" => sslmode = v.to_ascii_lowercase(),
                    other => {
                        return Err(bad(format!(
                            "sslmode \"{other}\" is not supported (use disabled, preferred or required)"
                        )));
                    }
                }
            } else if k == "connect_timeout" {
                connect_timeout = v
                    .parse::<u64>()
                    .ok()
                    .filter(|s| *s > 0)
                    .map(std::time::Duration::from_secs)
                    .ok_or_else(|| {
                        bad(format!(
                            "connect_timeout \"{v}\" is not a number of seconds above zero"
                        ))
                    })?;
            } else {
                kept.push((k, v));
            }
        }
        if kept.is_empty() {
            url.set_query(None);
        } else {
            url.query_pairs_mut().clear().extend_pairs(kept);
        }
        let opts = Opts::from_url(url.as_str()).map_err(|e| bad(e.to_string()))?;
        if opts.db_name().is_none_or(str::is_empty) {
            return Err(bad(
                "the URL names no database (mysql://user@host:3306/DATABASE)".into(),
            ));
        }
        Ok(MyUrl {
            var: var.to_string(),
            url: url.to_string(),
            opts,
            sslmode,
            connect_timeout,
        })
    }

    pub fn server(&self) -> String {
        format!(
            "mysql://{}:{}/{}",
            self.opts.ip_or_hostname(),
            self.opts.tcp_port(),
            self.opts.db_name().unwrap_or("")
        )
    }

    pub fn database(&self) -> &str {
        self.opts.db_name().unwrap_or("")
    }

    pub fn redact(&self, text: &str) -> String {
        super::redact(text, &[self.opts.pass().unwrap_or(""), &self.url])
    }

    fn opts_with_ssl(&self, ssl: Option<SslOpts>) -> Opts {
        OptsBuilder::from_opts(self.opts.clone())
            .ssl_opts(ssl)
            .setup(SETUP.to_vec())
            .into()
    }

    fn ssl_opts(&self, mode: &str) -> Option<SslOpts> {
        match mode {
            "disabled" => None,
            "required" => Some(SslOpts::default()),
            _ => Some(
                SslOpts::default()
                    .with_danger_accept_invalid_certs(true)
                    .with_danger_skip_domain_validation(true),
            ),
        }
    }

    /// The TLS mode that works: `preferred` falls back to plain when the server has no TLS.
    pub async fn connect(&self) -> Result<(Conn, &'static str), DatabaseError> {
        // A server that accepts the connection and never answers the handshake would hang
        // mysql_async for ever: the whole connect is bounded.
        tokio::time::timeout(self.connect_timeout, self.connect_unbounded())
            .await
            .map_err(|_| DatabaseError::Connect {
                var: self.var.clone(),
                server: self.server(),
                reason: format!(
                    "no answer within {} (the server accepted the connection but did not complete the handshake); \
                     set connect_timeout=SECONDS in the URL to wait longer",
                    humantime::format_duration(self.connect_timeout)
                ),
            })?
    }

    async fn connect_unbounded(&self) -> Result<(Conn, &'static str), DatabaseError> {
        let fail = |reason: String| DatabaseError::Connect {
            var: self.var.clone(),
            server: self.server(),
            reason: self.redact(&reason),
        };
        let first = self.sslmode.as_str();
        match Conn::new(self.opts_with_ssl(self.ssl_opts(first))).await {
            Ok(c) => Ok((
                c,
                match first {
                    "disabled" => "disabled",
                    "required" => "required",
                    _ => "preferred",
                },
            )),
            Err(mysql_async::Error::Driver(
                mysql_async::DriverError::NoClientSslFlagFromServer,
            )) if first == "preferred" => {
                let c = Conn::new(self.opts_with_ssl(None))
                    .await
                    .map_err(|e| fail(e.to_string()))?;
                Ok((c, "disabled"))
            }
            Err(e) => Err(fail(e.to_string())),
        }
    }

    /// The parameters datafusion-table-providers' MySQL pool takes, with the TLS mode that
    /// [`MyUrl::connect`] found to work.
    pub fn provider_params(&self, sslmode: &str) -> HashMap<String, SecretString> {
        let mut p = HashMap::new();
        p.insert(
            "connection_string".to_string(),
            SecretString::from(self.url.clone()),
        );
        p.insert(
            "sslmode".to_string(),
            SecretString::from(sslmode.to_string()),
        );
        p.insert("pool_max".to_string(), SecretString::from("4".to_string()));
        p
    }

    pub fn query_error(&self, e: &mysql_async::Error) -> DatabaseError {
        DatabaseError::Query {
            server: self.server(),
            reason: self.redact(&message(e)),
        }
    }
}

pub fn message(e: &mysql_async::Error) -> String {
    match e {
        mysql_async::Error::Server(s) => {
            let advice = match s.code {
                1205 => {
                    ": another session holds a lock for longer than lock_timeout; raise lock_timeout \
                     of the destination or end that session (SHOW PROCESSLIST shows it)"
                }
                _ => "",
            };
            format!(
                "{} [error {}, SQLSTATE {}]{advice}",
                s.message, s.code, s.state
            )
        }
        other => other.to_string(),
    }
}

/// Whether a server error concerns the rows written (a value or a constraint) rather than the
/// connection, the table or the statement.
pub fn is_row_error(e: &mysql_async::Error) -> bool {
    let mysql_async::Error::Server(s) = e else {
        return false;
    };
    // SQLSTATE class 22 (data exception) and 23 (integrity constraint), plus the MySQL codes
    // that strict mode raises for values: 1292 (incorrect value), 1366 (incorrect value for
    // column), 1406 (too long), 1264 (out of range), 1048 (cannot be null), 1062 (duplicate),
    // 1452 (foreign key), 3819 / 4025 (check constraint), 1644 (raised by a trigger).
    s.state.starts_with("22")
        || s.state.starts_with("23")
        || matches!(
            s.code,
            1292 | 1366 | 1406 | 1264 | 1048 | 1062 | 1452 | 3819 | 4025 | 1644 | 1265 | 1367
        )
}

/// Quote an identifier with backticks.
pub fn quote(ident: &str) -> String {
    format!("`{}`", ident.replace('`', "``"))
}

pub async fn list_tables(url: &MyUrl, conn: &mut Conn) -> Result<Vec<String>, DatabaseError> {
    conn.query(
        "SELECT CAST(table_name AS CHAR) FROM information_schema.tables WHERE table_schema = DATABASE() ORDER BY 1",
    )
    .await
    .map_err(|e| url.query_error(&e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_urls_without_leaking_passwords() {
        let u = MyUrl::parse("M", "mysql://root:t0psecret@db:3307/app?sslmode=disabled").unwrap();
        assert_eq!(u.server(), "mysql://db:3307/app");
        assert_eq!(u.sslmode, "disabled");
        assert!(!format!("{u:?}").contains("t0psecret"));
        let e = MyUrl::parse("M", "mysql://root:t0psecret@db/")
            .unwrap_err()
            .to_string();
        assert!(e.contains("no database") && !e.contains("t0psecret"), "{e}");
        let e = MyUrl::parse("M", "mysql://root:t0psecret@db/x?bogus=1")
            .unwrap_err()
            .to_string();
        assert!(!e.contains("t0psecret"), "{e}");
    }

    #[test]
    fn quotes_identifiers() {
        assert_eq!(quote("a`b"), "`a``b`");
    }
}
