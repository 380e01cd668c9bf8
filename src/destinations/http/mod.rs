//! HTTP API destination (`type = "http"`): records go to an API as JSON, one request per record
//! (`path = "/contacts/{key}"`) or in batches (`path = "/contacts/batch"`, `batch_size = 100`).
//!
//! - Each behavior's operations have their endpoint: `upsert`, `update`, `create` (also used for
//!   append-only unless `append` is given) and `delete`.
//! - Requests are paced, limited in number, retried and paused on `429` ([`client`]).
//! - A 2xx batch response can name records the API refused (`errors`, matched by position,
//!   key or idempotency key) and, when `results` is set, must confirm every other record: only
//!   confirmed records are marked synced.
//! - A batch the API refuses as a whole (4xx), or that keeps failing (5xx, timeouts), is split
//!   in halves until the records it refuses are alone; those are rejected with the API's message.
//! - Writes carry an `Idempotency-Key` header (and `{idempotency_key}` for bodies) derived from
//!   the sync, the object, the operation and the record, so a run repeated after a crash sends
//!   the same keys for the same records.
//! - `preset = "hubspot"` fills in HubSpot's CRM objects batch endpoints ([`hubspot`]).

mod client;
mod hubspot;
pub mod template;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use arrow::array::RecordBatch;
use async_trait::async_trait;
use futures::StreamExt;
use indexmap::IndexMap;
use reqwest::header::{AUTHORIZATION, HeaderMap, HeaderName, HeaderValue};
use reqwest::{Method, StatusCode};
use serde::Deserialize;
use serde_json::Value;

use super::{
    BatchOutcome, Destination, DestinationError, FinishOutcome, NO_RECORD_FOR_UPDATE, ObjectWriter,
    Rejection, WriteOp, WriteTarget,
};
use crate::config::Behavior;
use crate::progress::Delivery;
use client::{Answer, Client, Policy, Request, status_line, truncate};
use template::{Context, Record};

/// Requests in a row that gave up on transient failures before the run stops: the API is down,
/// not refusing one record.
const BREAKER: u64 = 8;

/// `type = "http"`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpDestinationConfig {
    /// Ready-made endpoints for a known API.
    pub preset: Option<Preset>,
    /// Where paths start, e.g. `https://api.example.com/v1` (a preset supplies it).
    pub base_url: Option<String>,
    /// Shorthand for `auth = { type = "bearer", token_env = "…" }`.
    pub token_env: Option<String>,
    pub auth: Option<AuthConfig>,
    /// Extra headers sent with every request (not secrets: use `auth`).
    #[serde(default)]
    pub headers: IndexMap<String, String>,
    /// Requests per second at most (default: the preset's, else unlimited).
    pub rate_limit: Option<f64>,
    /// Requests in flight at most (default 4).
    pub concurrency: Option<usize>,
    /// Per request, e.g. "30s" or "500ms" (default 30s).
    pub timeout: Option<String>,
    /// Attempts per request on 5xx, timeouts and broken connections (default 6).
    pub max_attempts: Option<u32>,
    /// Header carrying each write's idempotency key (default `Idempotency-Key`; "" for none).
    pub idempotency_header: Option<String>,
    /// A path that `backflow check` and each run GET first, to prove the URL and credentials.
    pub check_path: Option<String>,
    pub upsert: Option<EndpointConfig>,
    pub update: Option<EndpointConfig>,
    pub create: Option<EndpointConfig>,
    pub append: Option<EndpointConfig>,
    pub delete: Option<EndpointConfig>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Preset {
    /// HubSpot CRM objects (`/crm/v3/objects/{object}/batch/…`).
    Hubspot,
}

/// Where the credentials come from (only ever environment variables).
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum AuthConfig {
    /// `Authorization: Bearer <token>`.
    Bearer { token_env: String },
    /// `Authorization: Basic …`.
    Basic {
        username_env: String,
        password_env: String,
    },
    /// A header of its own, e.g. `X-API-Key`.
    Header { name: String, value_env: String },
}

/// One operation's endpoint.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct EndpointConfig {
    /// Default POST (DELETE for a per-record delete).
    pub method: Option<String>,
    /// Relative to `base_url`; `{key}` (or `{field.NAME}`) makes it one request per record,
    /// `{object}` is the sync's object.
    pub path: String,
    /// One record per request, sent as the body itself rather than in an array (implied when
    /// the path names a record, as `/contacts/{key}` does; needed for `POST /contacts`).
    #[serde(default)]
    pub per_record: bool,
    /// Records per request (default 100; 1 for a per-record endpoint).
    pub batch_size: Option<usize>,
    /// Send a batch as `{"<wrap>": [records]}` instead of a bare array.
    pub wrap: Option<String>,
    /// The shape of one record (see [`template`]); default `"{fields}"`, and for deletes
    /// `"{key}"` (no body at all for a per-record DELETE).
    pub record: Option<Value>,
    /// Where a batch response lists refused records, e.g. `"errors"`.
    pub errors: Option<String>,
    /// How an error names its record: `index` (position in the request), `key` or `trace`
    /// (the record's `{idempotency_key}`).
    pub error_match: Option<Match>,
    /// The path, inside one error, of what `error_match` reads, e.g. `"index"`.
    pub error_field: Option<String>,
    /// The path, inside one error, of its message (default: `message`, else the whole error).
    pub error_message: Option<String>,
    /// Where a batch response confirms records; when set, a record neither confirmed nor
    /// refused is rejected (nothing is marked synced that the API did not confirm).
    pub results: Option<String>,
    pub result_match: Option<Match>,
    pub result_field: Option<String>,
    /// Find each record's id in the API first (for APIs that delete or update only by their
    /// own ids); the request then uses `{api_id}`.
    pub lookup: Option<LookupConfig>,
}

/// A request that finds the API's ids for a batch of keys.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct LookupConfig {
    /// Default POST.
    pub method: Option<String>,
    pub path: String,
    /// Send the records as `{"<wrap>": [...], ...extra}` instead of a bare array.
    pub wrap: Option<String>,
    /// Fields added next to `wrap` (`{key_field}` and `{object}` are filled in).
    pub extra: Option<Value>,
    /// The shape of one record in the request (default `"{key}"`).
    pub record: Option<Value>,
    /// Where the answer lists the records found (default `results`).
    pub results: Option<String>,
    /// The path, inside one result, of the record's key (`{key_field}` is filled in).
    pub result_key: String,
    /// The path, inside one result, of the API's id (default `id`).
    pub result_id: Option<String>,
    /// Where the answer lists errors, and the path of the keys inside one error. A key named
    /// by an error that says "not found" is missing (a delete of it is done); named by any other
    /// error, its record is rejected with the message.
    pub errors: Option<String>,
    pub error_key: Option<String>,
    /// Key fields whose values the API may give back in another ASCII case (HubSpot lower-cases
    /// `email`): for them a key also matches a result that differs only in case, unless that is
    /// ambiguous.
    #[serde(default)]
    pub case_insensitive_keys: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Match {
    Index,
    Key,
    Trace,
}

impl HttpDestinationConfig {
    /// The config with the preset's defaults filled in (what the user wrote wins).
    fn resolved(&self) -> HttpDestinationConfig {
        match self.preset {
            Some(Preset::Hubspot) => hubspot::apply(self),
            None => self.clone(),
        }
    }

    /// Problems found without network I/O (environment variables are read).
    pub fn validate(&self) -> Vec<String> {
        let c = self.resolved();
        let mut p = Vec::new();
        match c.base_url.as_deref().map(url::Url::parse) {
            None => p.push("base_url is missing".to_string()),
            Some(Err(e)) => p.push(format!("base_url is not a URL: {e}")),
            Some(Ok(u)) if !matches!(u.scheme(), "http" | "https") => p.push(format!(
                "base_url must be http or https, not {}",
                u.scheme()
            )),
            Some(Ok(u)) if u.query().is_some() || u.fragment().is_some() => {
                p.push("base_url may not have a query or fragment (put them in paths)".into())
            }
            Some(Ok(_)) => {}
        }
        if c.token_env.is_some() && c.auth.is_some() {
            p.push("give either token_env or auth, not both".into());
        }
        if let Err(e) = c.credentials() {
            p.push(e);
        }
        for (name, value) in &c.headers {
            if HeaderName::from_bytes(name.as_bytes()).is_err() {
                p.push(format!("headers: \"{name}\" is not a valid header name"));
            } else if name.eq_ignore_ascii_case("authorization") {
                p.push("headers: set Authorization with auth (its value is a secret and comes from an environment variable)".into());
            }
            if HeaderValue::from_str(value).is_err() {
                p.push(format!(
                    "headers: the value of \"{name}\" is not a valid header value"
                ));
            }
        }
        if let Some(r) = c.rate_limit
            && !(0.001..=100_000.0).contains(&r)
        {
            p.push(format!(
                "rate_limit must be between 0.001 and 100000 requests per second, not {r}"
            ));
        }
        if let Some(n) = c.concurrency
            && !(1..=256).contains(&n)
        {
            p.push(format!("concurrency must be between 1 and 256, not {n}"));
        }
        if let Some(n) = c.max_attempts
            && !(1..=100).contains(&n)
        {
            p.push(format!("max_attempts must be between 1 and 100, not {n}"));
        }
        if let Some(t) = &c.timeout
            && parse_timeout(t).is_none()
        {
            p.push(format!(
                "timeout \"{t}\" is not a duration like \"30s\" or \"500ms\""
            ));
        }
        if let Some(h) = &c.idempotency_header
            && !h.is_empty()
            && HeaderName::from_bytes(h.as_bytes()).is_err()
        {
            p.push(format!(
                "idempotency_header \"{h}\" is not a valid header name"
            ));
        }
        if let Some(path) = &c.check_path {
            p.extend(path_problems("check_path", path));
        }
        let endpoints = c.endpoints();
        if endpoints.is_empty() {
            p.push("no endpoint: add [destinations.NAME.upsert] (or update, create, append, delete) with a path".into());
        }
        for (name, e) in endpoints {
            p.extend(e.problems().into_iter().map(|m| format!("{name}: {m}")));
        }
        p
    }

    fn endpoints(&self) -> Vec<(&'static str, &EndpointConfig)> {
        [
            ("upsert", &self.upsert),
            ("update", &self.update),
            ("create", &self.create),
            ("append", &self.append),
            ("delete", &self.delete),
        ]
        .into_iter()
        .filter_map(|(n, e)| e.as_ref().map(|e| (n, e)))
        .collect()
    }

    /// The headers that authenticate, and the secret values (to keep out of messages).
    fn credentials(&self) -> Result<(HeaderMap, Vec<String>), String> {
        let read = |var: &str, key: &str| -> Result<String, String> {
            if var.trim().is_empty() {
                return Err(format!("{key} is empty (name the environment variable)"));
            }
            match std::env::var(var) {
                Ok(v) if !v.is_empty() => Ok(v),
                _ => Err(format!("environment variable {var} ({key}) is not set")),
            }
        };
        let auth = match (&self.token_env, &self.auth) {
            (Some(var), _) => Some(AuthConfig::Bearer {
                token_env: var.clone(),
            }),
            (None, a) => a.clone(),
        };
        let mut headers = HeaderMap::new();
        let mut secrets = Vec::new();
        let mut secret_header = |name: HeaderName, value: String, shown: &str| {
            let mut v = HeaderValue::from_str(&value)
                .map_err(|_| format!("the value of {shown} is not a valid header value"))?;
            v.set_sensitive(true);
            headers.insert(name, v);
            Ok::<(), String>(())
        };
        match auth {
            None => {}
            Some(AuthConfig::Bearer { token_env }) => {
                let token = read(&token_env, "token_env")?;
                secret_header(AUTHORIZATION, format!("Bearer {token}"), &token_env)?;
                secrets.push(token);
            }
            Some(AuthConfig::Basic {
                username_env,
                password_env,
            }) => {
                use base64::Engine as _;
                let user = read(&username_env, "auth.username_env")?;
                let password = read(&password_env, "auth.password_env")?;
                let encoded =
                    base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
                secret_header(AUTHORIZATION, format!("Basic {encoded}"), &password_env)?;
                secrets.extend([password, encoded]);
            }
            Some(AuthConfig::Header { name, value_env }) => {
                let header = HeaderName::from_bytes(name.as_bytes())
                    .map_err(|_| format!("auth.name \"{name}\" is not a valid header name"))?;
                let value = read(&value_env, "auth.value_env")?;
                secret_header(header, value.clone(), &value_env)?;
                secrets.push(value);
            }
        }
        Ok((headers, secrets))
    }
}

impl EndpointConfig {
    fn problems(&self) -> Vec<String> {
        let mut p = path_problems("path", &self.path);
        if let Some(m) = &self.method
            && !matches!(
                m.to_ascii_uppercase().as_str(),
                "POST" | "PUT" | "PATCH" | "DELETE"
            )
        {
            p.push(format!(
                "method must be POST, PUT, PATCH or DELETE, not \"{m}\""
            ));
        }
        match self.batch_size {
            Some(n) if self.is_per_record() && n != 1 => p.push(format!(
                "batch_size is {n}, but the endpoint takes one record per request ({}); leave batch_size out",
                self.path
            )),
            Some(n) if !(1..=10_000).contains(&n) => {
                p.push(format!("batch_size must be between 1 and 10000, not {n}"))
            }
            _ => {}
        }
        if let Some(w) = &self.wrap
            && w.is_empty()
        {
            p.push("wrap is empty".into());
        }
        if let Some(t) = &self.record {
            let mut unknown = Vec::new();
            strings(t, &mut |s| {
                unknown.extend(template::unknown_placeholders(s))
            });
            if !unknown.is_empty() {
                p.push(format!(
                    "record uses unknown placeholders {} (known: {{fields}}, {{fields_without_key}}, {{key}}, {{key_field}}, {{field.NAME}}, {{object}}, {{idempotency_key}}, with an optional |text)",
                    unknown.join(", ")
                ));
            }
        }
        for (list, matcher, field, name) in [
            (&self.errors, self.error_match, &self.error_field, "error"),
            (
                &self.results,
                self.result_match,
                &self.result_field,
                "result",
            ),
        ] {
            match (list, matcher, field) {
                (None, None, None) => {}
                (Some(_), Some(_), Some(_)) => {}
                (Some(_), _, _) if matcher.is_none() || field.is_none() => p.push(format!(
                    "{name}s is set: also give {name}_match (index, key or trace) and {name}_field (where it is, in one {name})"
                )),
                _ => p.push(format!(
                    "{name}_match and {name}_field need {name}s (where the response lists them)"
                )),
            }
        }
        if self.error_message.is_some() && self.errors.is_none() {
            p.push("error_message needs errors".into());
        }
        if let Some(l) = &self.lookup {
            p.extend(path_problems("lookup.path", &l.path));
            if template::is_per_record(&l.path) {
                p.push("lookup.path may not name a record: a lookup finds a batch".into());
            }
            if l.errors.is_some() != l.error_key.is_some() {
                p.push("lookup.errors and lookup.error_key go together".into());
            }
        } else {
            let mut uses_api_id = self.path.contains("{api_id");
            if let Some(t) = &self.record {
                strings(t, &mut |s| uses_api_id |= s.contains("{api_id"));
            }
            if uses_api_id {
                p.push("{api_id} needs a lookup (how to find the API's ids)".into());
            }
        }
        p
    }

    /// Whether each request carries one record, as its body.
    fn is_per_record(&self) -> bool {
        self.per_record || template::is_per_record(&self.path)
    }

    fn method(&self, op: WriteOp) -> Method {
        match &self.method {
            Some(m) => {
                Method::from_bytes(m.to_ascii_uppercase().as_bytes()).unwrap_or(Method::POST)
            }
            None if op == WriteOp::Delete && template::is_per_record(&self.path) => Method::DELETE,
            None => Method::POST,
        }
    }

    fn batch_size(&self) -> usize {
        if self.is_per_record() {
            1
        } else {
            self.batch_size.unwrap_or(100)
        }
    }

    /// The record template, or None for no body.
    fn record_template(&self, op: WriteOp) -> Option<Value> {
        match (&self.record, op) {
            (Some(t), _) => Some(t.clone()),
            (None, WriteOp::Delete) if template::is_per_record(&self.path) => None,
            (None, WriteOp::Delete) => Some(Value::String("{key}".into())),
            (None, _) => Some(Value::String("{fields}".into())),
        }
    }
}

fn path_problems(key: &str, path: &str) -> Vec<String> {
    let mut p = Vec::new();
    if !path.starts_with('/') {
        p.push(format!("{key} \"{path}\" must start with '/'"));
    }
    let unknown = template::unknown_placeholders(path);
    if !unknown.is_empty() {
        p.push(format!(
            "{key} uses unknown placeholders {} (known: {{key}}, {{object}}, {{field.NAME}})",
            unknown.join(", ")
        ));
    }
    p
}

/// `{key_field}` and `{object}` filled into every string of a JSON value.
fn fill_names(v: &Value, key_field: &str, object: &str) -> Value {
    match v {
        Value::String(s) => Value::String(
            s.replace("{key_field}", key_field)
                .replace("{object}", object),
        ),
        Value::Array(items) => Value::Array(
            items
                .iter()
                .map(|i| fill_names(i, key_field, object))
                .collect(),
        ),
        Value::Object(m) => Value::Object(
            m.iter()
                .map(|(k, v)| (k.clone(), fill_names(v, key_field, object)))
                .collect(),
        ),
        other => other.clone(),
    }
}

/// Every string in a JSON value.
fn strings(v: &Value, f: &mut impl FnMut(&str)) {
    match v {
        Value::String(s) => f(s),
        Value::Array(items) => items.iter().for_each(|i| strings(i, f)),
        Value::Object(m) => m.values().for_each(|i| strings(i, f)),
        _ => {}
    }
}

/// "30s", "2m", "500ms".
fn parse_timeout(t: &str) -> Option<Duration> {
    match t.trim().strip_suffix("ms") {
        Some(ms) => ms.trim().parse().ok().map(Duration::from_millis),
        None => crate::config::parse_duration(t),
    }
    .filter(|d| !d.is_zero())
}

pub(super) fn validate_object(object: &str) -> Vec<String> {
    if object.trim().is_empty() {
        vec!["the object name is empty".into()]
    } else if object.chars().any(char::is_control) {
        vec!["the object name contains a control character".into()]
    } else {
        vec![]
    }
}

#[derive(Debug)]
pub struct HttpDestination {
    name: String,
    config: HttpDestinationConfig,
}

impl HttpDestination {
    pub fn new(name: &str, config: &HttpDestinationConfig) -> Self {
        HttpDestination {
            name: name.to_string(),
            config: config.resolved(),
        }
    }

    fn base_url(&self) -> &str {
        self.config
            .base_url
            .as_deref()
            .unwrap_or_default()
            .trim_end_matches('/')
    }

    fn incompatible(&self, target: &WriteTarget, reason: impl ToString) -> DestinationError {
        DestinationError::Incompatible {
            destination: self.name.clone(),
            object: target.object.clone(),
            reason: reason.to_string(),
        }
    }

    /// The endpoint for each operation the sync's behavior uses; an error names what is missing.
    fn endpoints(
        &self,
        target: &WriteTarget,
    ) -> Result<HashMap<WriteOp, EndpointConfig>, DestinationError> {
        let c = &self.config;
        let ops: &[WriteOp] = match target.behavior {
            Behavior::Upsert => &[WriteOp::Upsert],
            Behavior::Mirror => &[WriteOp::Upsert, WriteOp::Delete],
            Behavior::UpdateOnly => &[WriteOp::Update],
            Behavior::CreateOnly => &[WriteOp::Create],
            Behavior::AppendOnly => &[WriteOp::Append],
            Behavior::Delete => &[WriteOp::Delete],
        };
        let mut out = HashMap::new();
        for op in ops {
            let (endpoint, name) = match op {
                WriteOp::Upsert => (&c.upsert, "upsert"),
                WriteOp::Update => (&c.update, "update"),
                WriteOp::Create => (&c.create, "create"),
                WriteOp::Append => (
                    c.append.as_ref().map_or(&c.create, |_| &c.append),
                    "append (or create)",
                ),
                WriteOp::Delete => (&c.delete, "delete"),
            };
            let Some(e) = endpoint else {
                let hint = "";
                return Err(self.incompatible(
                    target,
                    format!(
                        "behavior {} needs a {name} endpoint: add [destinations.{}.{}] with a path{hint}",
                        target.behavior.as_str(),
                        self.name,
                        name.split(' ').next().unwrap_or(name),
                    ),
                ));
            };
            out.insert(*op, e.clone());
        }
        Ok(out)
    }

    fn client(&self, target: &WriteTarget) -> Result<(Client, Vec<String>), DestinationError> {
        let c = &self.config;
        let (mut headers, secrets) = c.credentials().map_err(|e| self.incompatible(target, e))?;
        for (name, value) in &c.headers {
            if let (Ok(n), Ok(v)) = (
                HeaderName::from_bytes(name.as_bytes()),
                HeaderValue::from_str(value),
            ) {
                headers.insert(n, v);
            }
        }
        headers.insert(
            reqwest::header::ACCEPT,
            HeaderValue::from_static("application/json"),
        );
        let idempotency_header = match c.idempotency_header.as_deref() {
            Some("") => None,
            Some(h) => HeaderName::from_bytes(h.as_bytes()).ok(),
            None => Some(HeaderName::from_static("idempotency-key")),
        };
        let policy = Policy {
            rate_limit: c.rate_limit,
            concurrency: c.concurrency.unwrap_or(4),
            timeout: c
                .timeout
                .as_deref()
                .and_then(parse_timeout)
                .unwrap_or(Duration::from_secs(30)),
            max_attempts: c.max_attempts.unwrap_or(6),
            min_backoff: Duration::from_millis(250),
            max_backoff: Duration::from_secs(30),
        };
        let client = Client::new(policy, headers, idempotency_header, secrets.clone())
            .map_err(|e| self.incompatible(target, e))?;
        Ok((client, secrets))
    }

    /// GET `check_path`, expecting a 2xx.
    async fn probe(
        &self,
        target: &WriteTarget,
        client: &Client,
        secrets: &[String],
    ) -> Result<(), DestinationError> {
        let Some(path) = &self.config.check_path else {
            return Ok(());
        };
        let ctx = Context {
            key_field: &target.key,
            object: &target.object,
        };
        let rendered =
            template::render_path(path, None, &ctx).map_err(|e| self.incompatible(target, e))?;
        let url = format!("{}{rendered}", self.base_url());
        let answer = client
            .send(&Request {
                method: Method::GET,
                url: url.clone(),
                body: None,
                idempotency_key: None,
            })
            .await;
        let problem = match answer {
            Answer::Response { status, .. } if status.is_success() => return Ok(()),
            Answer::Response { status, body } => status_line(status, &body),
            Answer::GaveUp { attempts, last } => {
                format!("gave up after {attempts} attempts: {last}")
            }
            Answer::Broken(e) => e,
        };
        Err(DestinationError::Unwritable {
            destination: self.name.clone(),
            location: url,
            reason: redact(&problem, secrets),
        })
    }
}

fn redact(text: &str, secrets: &[String]) -> String {
    let secrets: Vec<&str> = secrets.iter().map(String::as_str).collect();
    crate::databases::redact(text, &secrets)
}

#[async_trait]
impl Destination for HttpDestination {
    async fn check(&self, target: &WriteTarget) -> Result<(), DestinationError> {
        self.endpoints(target)?;
        let (client, secrets) = self.client(target)?;
        self.probe(target, &client, &secrets).await
    }

    fn fingerprint(&self, object: &str) -> String {
        format!("http {} {object}", self.base_url())
    }

    async fn open(&self, target: &WriteTarget) -> Result<Box<dyn ObjectWriter>, DestinationError> {
        let endpoints = self.endpoints(target)?;
        let (client, secrets) = self.client(target)?;
        self.probe(target, &client, &secrets).await?;
        Ok(Box::new(HttpWriter {
            shared: Arc::new(Shared {
                destination: self.name.clone(),
                base_url: self.base_url().to_string(),
                target: target.clone(),
                client,
                secrets,
                endpoints,
                queued: AtomicU64::new(0),
                done: AtomicU64::new(0),
                gave_up_in_a_row: AtomicU64::new(0),
            }),
        }))
    }
}

struct Shared {
    destination: String,
    base_url: String,
    target: WriteTarget,
    client: Client,
    secrets: Vec<String>,
    endpoints: HashMap<WriteOp, EndpointConfig>,
    queued: AtomicU64,
    done: AtomicU64,
    gave_up_in_a_row: AtomicU64,
}

struct HttpWriter {
    shared: Arc<Shared>,
}

/// What became of the records of one request.
enum Reply {
    /// The API took the request; some records may be refused or already there.
    Done {
        rejected: Vec<(usize, String)>,
        skipped: Vec<usize>,
    },
    /// The request failed as a whole: split it (a single record is rejected with the reason).
    Split(String),
}

/// What an id lookup found: the API's id of each row it has, and rows it could not settle
/// (rejected with the reason); any other row is missing from the API.
struct LookedUp {
    ids: HashMap<usize, Value>,
    refused: HashMap<usize, String>,
}

const AMBIGUOUS: &str =
    "the API's answer matches this key only ignoring case, and not unambiguously";

/// A key as text for matching: numbers in their shortest form (`7.0` and `7` alike).
fn key_text(v: &Value) -> String {
    match v.as_f64() {
        Some(f) if v.is_f64() && f.fract() == 0.0 && f.abs() < 9.007_199_254_740_992e15 => {
            format!("{}", f as i64)
        }
        _ => template::text(v),
    }
}

/// What stops the run: the destination as a whole does not work.
struct Fatal(String);

fn op_name(op: WriteOp) -> &'static str {
    match op {
        WriteOp::Upsert => "upsert",
        WriteOp::Update => "update",
        WriteOp::Create => "create",
        WriteOp::Delete => "delete",
        WriteOp::Append => "append",
    }
}

impl Shared {
    fn report(&self) {
        self.target.progress.delivery(
            &self.target.sync,
            Delivery {
                queued: self.queued.load(Ordering::Relaxed),
                done: self.done.load(Ordering::Relaxed),
                retries: self.client.retries.load(Ordering::Relaxed),
            },
        );
    }

    fn ctx(&self) -> Context<'_> {
        Context {
            key_field: &self.target.key,
            object: &self.target.object,
        }
    }

    /// Deliver some records (indices into `records`), splitting requests that fail as a whole.
    async fn deliver(
        &self,
        op: WriteOp,
        records: &[Record],
        rows: Vec<usize>,
    ) -> Result<BatchOutcome, Fatal> {
        let mut outcome = BatchOutcome::default();
        let mut stack = vec![rows];
        while let Some(rows) = stack.pop() {
            match self.request(op, records, &rows).await? {
                Reply::Done { rejected, skipped } => {
                    outcome.skipped += skipped.len();
                    outcome
                        .rejected
                        .extend(rejected.into_iter().map(|(row, reason)| Rejection {
                            row,
                            reason: redact(&reason, &self.secrets),
                        }));
                    self.done.fetch_add(rows.len() as u64, Ordering::Relaxed);
                    self.report();
                }
                Reply::Split(reason) if rows.len() == 1 => {
                    outcome.rejected.push(Rejection {
                        row: rows[0],
                        reason: redact(&reason, &self.secrets),
                    });
                    self.done.fetch_add(1, Ordering::Relaxed);
                    self.report();
                }
                Reply::Split(reason) => {
                    tracing::debug!(sync = %self.target.sync, rows = rows.len(), %reason, "splitting a refused batch");
                    let (a, b) = rows.split_at(rows.len() / 2);
                    stack.push(b.to_vec());
                    stack.push(a.to_vec());
                }
            }
        }
        Ok(outcome)
    }

    /// Send one request for `rows` and read what the API did with each record.
    async fn request(
        &self,
        op: WriteOp,
        records: &[Record],
        rows: &[usize],
    ) -> Result<Reply, Fatal> {
        let Some(endpoint) = self.endpoints.get(&op) else {
            return Err(Fatal(format!("no endpoint for {}", op_name(op))));
        };
        // With a lookup, the records the API does not have are settled first: a delete of
        // one is done, anything else is refused.
        let mut unsettled: Vec<(usize, String)> = Vec::new();
        let mut found_rows = rows.to_vec();
        let mut owned: Vec<Record> = Vec::new();
        if let Some(lookup) = &endpoint.lookup {
            let LookedUp { ids, refused } = match self.look_up(lookup, records, rows).await? {
                Ok(found) => found,
                Err(reply) => return Ok(reply),
            };
            found_rows.retain(|r| ids.contains_key(r));
            for r in rows.iter().filter(|r| !ids.contains_key(r)) {
                match refused.get(r) {
                    Some(reason) => unsettled.push((*r, reason.clone())),
                    // Missing from the API: a delete of it is done, anything else refused.
                    None if op == WriteOp::Delete => {}
                    None => unsettled.push((*r, "the API has no record with this key".into())),
                }
            }
            owned = found_rows
                .iter()
                .map(|r| Record {
                    api_id: ids.get(r).cloned(),
                    ..records[*r].clone()
                })
                .collect();
            if found_rows.is_empty() {
                return Ok(Reply::Done {
                    rejected: unsettled,
                    skipped: vec![],
                });
            }
        }
        let rows = found_rows.as_slice();
        // The records of this request, in request order.
        let recs: Vec<&Record> = if endpoint.lookup.is_some() {
            owned.iter().collect()
        } else {
            rows.iter().map(|r| &records[*r]).collect()
        };
        let reply = self
            .send_records(op, endpoint, records, rows, &recs)
            .await?;
        Ok(match reply {
            Reply::Done {
                mut rejected,
                skipped,
            } => {
                rejected.extend(unsettled);
                Reply::Done { rejected, skipped }
            }
            other => other,
        })
    }

    /// Find the API's ids of `rows`' records: Ok(row → id) for those it has, or the reply
    /// that settles the whole request when the lookup itself fails.
    async fn look_up(
        &self,
        lookup: &LookupConfig,
        records: &[Record],
        rows: &[usize],
    ) -> Result<Result<LookedUp, Reply>, Fatal> {
        let ctx = self.ctx();
        let fill = |v: &Value| fill_names(v, &self.target.key, &self.target.object);
        let template = lookup
            .record
            .clone()
            .unwrap_or_else(|| Value::String("{key}".into()));
        let items: Vec<Value> = rows
            .iter()
            .map(|r| template::render(&template, &records[*r], &ctx))
            .collect();
        let body = match &lookup.wrap {
            Some(name) => {
                let mut m = match lookup.extra.as_ref().map(fill) {
                    Some(Value::Object(m)) => m,
                    _ => serde_json::Map::new(),
                };
                m.insert(name.clone(), Value::Array(items));
                Value::Object(m)
            }
            None => Value::Array(items),
        };
        let path = template::render_path(&lookup.path, None, &ctx).map_err(Fatal)?;
        let method = lookup
            .method
            .as_deref()
            .and_then(|m| Method::from_bytes(m.to_ascii_uppercase().as_bytes()).ok())
            .unwrap_or(Method::POST);
        let answer = self
            .client
            .send(&Request {
                method,
                url: format!("{}{path}", self.base_url),
                body: Some(body.to_string().into_bytes()),
                idempotency_key: None,
            })
            .await;
        let url = format!("{}{path}", self.base_url);
        let (status, text) = match self.settle(answer, &url)? {
            Ok(r) => r,
            Err(reply) => return Ok(Err(reply)),
        };
        if !status.is_success() {
            return Ok(Err(self.refusal(
                WriteOp::Upsert,
                status,
                &text,
                None,
                rows,
                false,
                &url,
            )?));
        }
        let results_path = lookup.results.as_deref().unwrap_or("results");
        let unreadable = |why: &str| -> Result<Result<LookedUp, Reply>, Fatal> {
            Ok(Err(Reply::Split(format!(
                "the API's answer to the id lookup {why}: {}",
                truncate(&text, 200)
            ))))
        };
        let Ok(json) = serde_json::from_str::<Value>(&text) else {
            return unreadable("is not JSON");
        };
        // An answer without a results list says nothing about which keys exist (an empty list
        // does: none of them).
        if json
            .pointer(&format!("/{}", results_path.replace('.', "/")))
            .is_none()
        {
            return unreadable(&format!("has no \"{results_path}\""));
        }
        let key_path = lookup.result_key.replace("{key_field}", &self.target.key);
        let id_path = lookup.result_id.as_deref().unwrap_or("id");
        let fold = lookup
            .case_insensitive_keys
            .iter()
            .any(|k| k.eq_ignore_ascii_case(&self.target.key));
        let mut exact: HashMap<String, Value> = HashMap::new();
        // Folded key → id, or None when several results fold to it (ambiguous).
        let mut folded: HashMap<String, Option<Value>> = HashMap::new();
        for result in template::lookup(&json, results_path) {
            let (Some(key), Some(id)) = (
                template::lookup(result, &key_path)
                    .first()
                    .map(|v| key_text(v)),
                template::lookup(result, id_path)
                    .first()
                    .map(|v| (*v).clone()),
            ) else {
                return unreadable(&format!(
                    "lists a record without \"{key_path}\" or \"{id_path}\""
                ));
            };
            folded
                .entry(key.to_ascii_lowercase())
                .and_modify(|v| *v = None)
                .or_insert_with(|| Some(id.clone()));
            exact.insert(key, id);
        }
        let mut refused: HashMap<usize, String> = HashMap::new();
        if let (Some(list), Some(field)) = (&lookup.errors, &lookup.error_key) {
            for error in template::lookup(&json, list) {
                if looks_missing(&error.to_string()) {
                    continue;
                }
                let message = error_message(error, None);
                let named: HashSet<String> = template::lookup(error, field)
                    .into_iter()
                    .map(key_text)
                    .collect();
                for r in rows {
                    if named.contains(&key_text(&records[*r].key)) {
                        refused.insert(*r, format!("looking up the API's id failed: {message}"));
                    }
                }
            }
        }
        let mut ids = HashMap::new();
        let mut folded_rows: HashMap<String, usize> = HashMap::new();
        for r in rows {
            let key = key_text(&records[*r].key);
            if let Some(id) = exact.get(&key) {
                ids.insert(*r, id.clone());
            } else if fold {
                let k = key.to_ascii_lowercase();
                match (folded.get(&k), folded_rows.get(&k).copied()) {
                    (Some(Some(id)), None) => {
                        folded_rows.insert(k, *r);
                        ids.insert(*r, id.clone());
                    }
                    (Some(_), other) => {
                        // Several results, or several of our keys, fold together.
                        if let Some(other) = other {
                            ids.remove(&other);
                            refused.insert(other, AMBIGUOUS.into());
                        }
                        refused.insert(*r, AMBIGUOUS.into());
                    }
                    (None, _) => {}
                }
            }
        }
        for r in refused.keys() {
            ids.remove(r);
        }
        Ok(Ok(LookedUp { ids, refused }))
    }

    /// Send `recs` (the records of `rows`, in order) to `endpoint`.
    async fn send_records(
        &self,
        op: WriteOp,
        endpoint: &EndpointConfig,
        records: &[Record],
        rows: &[usize],
        recs: &[&Record],
    ) -> Result<Reply, Fatal> {
        let ctx = self.ctx();
        let single = endpoint.is_per_record().then(|| recs[0]);
        let path = match template::render_path(&endpoint.path, single, &ctx) {
            Ok(p) => p,
            // Only a per-record path has values to refuse, and its request has one row.
            Err(e) => return Ok(Reply::Split(e)),
        };
        let url = format!("{}{path}", self.base_url);
        let body = endpoint.record_template(op).map(|t| {
            let payload = match single {
                Some(r) => template::render(&t, r, &ctx),
                None => Value::Array(recs.iter().map(|r| template::render(&t, r, &ctx)).collect()),
            };
            let payload = match &endpoint.wrap {
                Some(name) => serde_json::json!({ name: payload }),
                None => payload,
            };
            payload.to_string().into_bytes()
        });
        let idempotency_key = (op != WriteOp::Delete).then(|| match single {
            Some(r) => r.idempotency_key.clone(),
            None => {
                let joined: Vec<&str> = recs.iter().map(|r| r.idempotency_key.as_str()).collect();
                format!(
                    "{:032x}",
                    xxhash_rust::xxh3::xxh3_128(joined.join(",").as_bytes())
                )
            }
        });
        let answer = self
            .client
            .send(&Request {
                method: endpoint.method(op),
                url: url.clone(),
                body,
                idempotency_key,
            })
            .await;
        let (status, body) = match self.settle(answer, &url)? {
            Ok(r) => r,
            Err(reply) => return Ok(reply),
        };
        if status.is_success() {
            return Ok(Self::read_results(op, endpoint, records, rows, &body));
        }
        self.refusal(
            op,
            status,
            &body,
            Some(endpoint),
            rows,
            single.is_some(),
            &url,
        )
    }

    /// The status and body of an answer, or what a request that got none comes to: split
    /// (transient failures that outlasted the retries), or the end of the run (the API keeps
    /// failing, or the request cannot be sent at all).
    fn settle(
        &self,
        answer: Answer,
        url: &str,
    ) -> Result<Result<(StatusCode, String), Reply>, Fatal> {
        match answer {
            Answer::Response { status, body } => {
                self.gave_up_in_a_row.store(0, Ordering::Relaxed);
                Ok(Ok((status, body)))
            }
            Answer::GaveUp { attempts, last } => {
                let in_a_row = self.gave_up_in_a_row.fetch_add(1, Ordering::Relaxed) + 1;
                let reason = format!("the API kept failing ({attempts} attempts): {last}");
                if in_a_row >= BREAKER {
                    return Err(Fatal(format!(
                        "{in_a_row} requests in a row failed after every retry; last: {reason}"
                    )));
                }
                Ok(Err(Reply::Split(reason)))
            }
            Answer::Broken(e) => Err(Fatal(format!("{url}: {e}"))),
        }
    }

    /// What a non-2xx answer means for the request's records.
    #[allow(clippy::too_many_arguments)]
    fn refusal(
        &self,
        op: WriteOp,
        status: StatusCode,
        body: &str,
        endpoint: Option<&EndpointConfig>,
        rows: &[usize],
        single: bool,
        url: &str,
    ) -> Result<Reply, Fatal> {
        let message = || whole_message(status, body, endpoint);
        match status.as_u16() {
            300..=399 => Err(Fatal(format!(
                "{url} answered with a redirect ({status}); point base_url at the final address"
            ))),
            401 | 403 | 407 => Err(Fatal(format!(
                "the API refused the credentials: {}",
                message()
            ))),
            404 if op == WriteOp::Delete && single => Ok(Reply::Done {
                rejected: vec![],
                skipped: vec![],
            }),
            404 if op == WriteOp::Update && single => Ok(Reply::Done {
                rejected: vec![(rows[0], NO_RECORD_FOR_UPDATE.to_string())],
                skipped: vec![],
            }),
            409 if op == WriteOp::Create && rows.len() == 1 => Ok(Reply::Done {
                rejected: vec![],
                skipped: vec![rows[0]],
            }),
            _ => Ok(Reply::Split(message())),
        }
    }

    /// A 2xx response: which records the API refused, and (with `results`) which it confirmed.
    /// Nothing is sent again from here: the API took the request, so a record whose fate is
    /// unclear is rejected (and sent again by the next run), never re-sent at once.
    fn read_results(
        op: WriteOp,
        endpoint: &EndpointConfig,
        records: &[Record],
        rows: &[usize],
        body: &str,
    ) -> Reply {
        let done = |rejected| Reply::Done {
            rejected,
            skipped: vec![],
        };
        if endpoint.errors.is_none() && endpoint.results.is_none() {
            return done(vec![]);
        }
        let json: Value = match serde_json::from_str(body) {
            Ok(v) => v,
            Err(_) if body.trim().is_empty() && endpoint.results.is_none() => Value::Null,
            Err(e) => {
                let reason = format!(
                    "the API took the request, but its answer is not the JSON expected ({e}), so which records it applied is unknown: {}",
                    truncate(body, 200)
                );
                return done(rows.iter().map(|r| (*r, reason.clone())).collect());
            }
        };
        // Each record of the request, by how the API may name it.
        let by_text = |f: &dyn Fn(&Record) -> String| -> HashMap<String, usize> {
            rows.iter().map(|i| (f(&records[*i]), *i)).collect()
        };
        let keys = by_text(&|r| template::text(&r.key));
        let traces = by_text(&|r| r.idempotency_key.clone());
        let locate = |how: Match, v: &Value| -> Option<usize> {
            match how {
                Match::Index => v
                    .as_u64()
                    .or_else(|| template::text(v).parse().ok())
                    .and_then(|i| rows.get(usize::try_from(i).ok()?).copied()),
                Match::Key => keys.get(&template::text(v)).copied(),
                Match::Trace => traces.get(&template::text(v)).copied(),
            }
        };
        let confirmed: Option<HashSet<usize>> = match (
            &endpoint.results,
            endpoint.result_match,
            &endpoint.result_field,
        ) {
            (Some(list), Some(how), Some(field)) => Some(
                template::lookup(&json, list)
                    .into_iter()
                    .flat_map(|r| template::lookup(r, field))
                    .filter_map(|v| locate(how, v))
                    .collect(),
            ),
            _ => None,
        };
        let mut refused: Vec<(usize, String)> = Vec::new();
        if let (Some(list), Some(how), Some(field)) = (
            &endpoint.errors,
            endpoint.error_match,
            &endpoint.error_field,
        ) {
            for error in template::lookup(&json, list) {
                let message = error_message(error, endpoint.error_message.as_deref());
                let named: Vec<usize> = template::lookup(error, field)
                    .into_iter()
                    .filter_map(|v| locate(how, v))
                    .collect();
                if named.is_empty() {
                    // An error naming no record of this request: any record the answer does not
                    // confirm may be the one.
                    let unsure =
                        format!("the API reported an error without naming its record: {message}");
                    refused.extend(
                        rows.iter()
                            .filter(|r| !confirmed.as_ref().is_some_and(|c| c.contains(r)))
                            .map(|r| (*r, unsure.clone())),
                    );
                } else {
                    refused.extend(named.into_iter().map(|row| (row, message.clone())));
                }
            }
        }
        let mut seen = HashSet::new();
        let mut rejected = Vec::new();
        for (row, message) in refused {
            if !seen.insert(row) {
                continue;
            }
            if op == WriteOp::Update && looks_missing(&message) {
                rejected.push((row, format!("{NO_RECORD_FOR_UPDATE}: {message}")));
            } else {
                rejected.push((row, message));
            }
        }
        if let Some(confirmed) = &confirmed {
            for row in rows {
                if !confirmed.contains(row) && !seen.contains(row) {
                    rejected.push((
                        *row,
                        "the API's answer neither confirmed nor refused this record; it is sent again next run".into(),
                    ));
                }
            }
        }
        done(rejected)
    }
}

/// Whether an API's message says the record does not exist.
fn looks_missing(message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    m.contains("not found") || m.contains("not exist") || m.contains("object_not_found")
}

/// One error's message: at `path`, else its `message`, else the error as JSON.
fn error_message(error: &Value, path: Option<&str>) -> String {
    let path = path.unwrap_or("message");
    let found: Vec<String> = template::lookup(error, path)
        .into_iter()
        .map(template::text)
        .filter(|s| !s.is_empty())
        .collect();
    if found.is_empty() {
        truncate(&error.to_string(), 500)
    } else {
        truncate(&found.join("; "), 500)
    }
}

/// The message of a response that refused a request as a whole.
fn whole_message(status: StatusCode, body: &str, endpoint: Option<&EndpointConfig>) -> String {
    if let Ok(json) = serde_json::from_str::<Value>(body)
        && json.is_object()
    {
        let m = error_message(&json, endpoint.and_then(|e| e.error_message.as_deref()));
        if !m.starts_with('{') {
            return format!("HTTP {status}: {m}");
        }
    }
    status_line(status, body)
}

#[async_trait]
impl ObjectWriter for HttpWriter {
    async fn write(
        &mut self,
        op: WriteOp,
        batch: RecordBatch,
    ) -> Result<BatchOutcome, DestinationError> {
        let s = &self.shared;
        let fail = |reason: String| DestinationError::Write {
            destination: s.destination.clone(),
            object: s.target.object.clone(),
            reason: redact(&reason, &s.secrets),
        };
        let endpoint = s
            .endpoints
            .get(&op)
            .ok_or_else(|| fail(format!("no endpoint for {}", op_name(op))))?;
        let scope = template::Scope {
            sync: &s.target.sync,
            object: &s.target.object,
            op: op_name(op),
            version: s.target.version,
        };
        let records = template::records(&batch, &s.target.key, &scope)
            .map_err(|e| fail(format!("cannot encode records as JSON: {e}")))?;
        s.queued.fetch_add(records.len() as u64, Ordering::Relaxed);
        s.report();
        let size = endpoint.batch_size();
        let chunks: Vec<Vec<usize>> = (0..records.len())
            .collect::<Vec<_>>()
            .chunks(size)
            .map(<[usize]>::to_vec)
            .collect();
        let concurrency = s.client_concurrency();
        let parts: Vec<Result<BatchOutcome, Fatal>> = futures::stream::iter(chunks)
            .map(|rows| s.deliver(op, &records, rows))
            .buffer_unordered(concurrency)
            .collect()
            .await;
        let mut outcome = BatchOutcome::default();
        for part in parts {
            let part = part.map_err(|Fatal(reason)| fail(reason))?;
            outcome.rejected.extend(part.rejected);
            outcome.skipped += part.skipped;
        }
        outcome.rejected.sort_by_key(|r| r.row);
        Ok(outcome)
    }

    async fn finish(self: Box<Self>) -> Result<FinishOutcome, DestinationError> {
        Ok(FinishOutcome::default())
    }
}

impl Shared {
    fn client_concurrency(&self) -> usize {
        // Chunks beyond the concurrency would only wait for a slot; a few more keep it busy
        // while others back off.
        self.client.concurrency() * 2
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn records(n: usize) -> Vec<Record> {
        (0..n)
            .map(|i| Record {
                fields: serde_json::Map::new(),
                key: json!(format!("k{i}")),
                idempotency_key: format!("t{i}"),
                api_id: None,
            })
            .collect()
    }

    fn endpoint(errors: Match, results: Option<Match>) -> EndpointConfig {
        let field = |m: Match| match m {
            Match::Index => "index".to_string(),
            Match::Key => "key".to_string(),
            Match::Trace => "trace".to_string(),
        };
        EndpointConfig {
            path: "/x".into(),
            errors: Some("errors".into()),
            error_match: Some(errors),
            error_field: Some(field(errors)),
            results: results.map(|_| "results".into()),
            result_match: results,
            result_field: results.map(field),
            ..EndpointConfig::default()
        }
    }

    /// How an answer may name record `i` of `rows` (or something that is no record of ours).
    fn name(m: Match, i: usize, rows: &[usize]) -> Value {
        match (m, rows.get(i)) {
            (Match::Index, _) => json!(i),
            (Match::Key, Some(r)) => json!(format!("k{r}")),
            (Match::Trace, Some(r)) => json!(format!("t{r}")),
            (_, None) => json!("stranger"),
        }
    }

    fn matcher() -> impl Strategy<Value = Match> {
        prop_oneof![Just(Match::Index), Just(Match::Key), Just(Match::Trace)]
    }

    proptest! {
        /// Whatever a 2xx answer says, every record of the request is either rejected once or
        /// accepted, and (with `results`) accepted only when the answer confirms it and names
        /// no error for it.
        #[test]
        fn a_record_is_accepted_only_when_the_answer_says_so(
            n in 1usize..12,
            errors_by in matcher(),
            results_by in proptest::option::of(matcher()),
            errors in proptest::collection::vec((0usize..14, any::<bool>()), 0..6),
            confirmed in proptest::collection::vec(0usize..14, 0..14),
            garbage in any::<bool>(),
        ) {
            let all = records(16);
            let rows: Vec<usize> = (2..2 + n).collect();
            let ep = endpoint(errors_by, results_by);
            let body = if garbage {
                "<html>oops</html>".to_string()
            } else {
                json!({
                    "errors": errors.iter().map(|(i, named)| if *named {
                        json!({"message": format!("bad {i}"), errors_by_field(errors_by): name(errors_by, *i, &rows)})
                    } else {
                        json!({"message": "something failed"})
                    }).collect::<Vec<_>>(),
                    "results": confirmed.iter().map(|i| json!({
                        results_by.map_or("none".to_string(), errors_by_field): results_by.map_or(json!(null), |m| name(m, *i, &rows))
                    })).collect::<Vec<_>>(),
                }).to_string()
            };
            let Reply::Done { rejected, skipped } =
                Shared::read_results(WriteOp::Upsert, &ep, &all, &rows, &body)
            else {
                panic!("a 2xx answer is never split");
            };
            prop_assert!(skipped.is_empty());
            let mut seen = HashSet::new();
            for (row, reason) in &rejected {
                prop_assert!(rows.contains(row), "rejected a row not in the request");
                prop_assert!(seen.insert(*row), "row {} rejected twice", row);
                prop_assert!(!reason.is_empty());
            }
            let accepted: Vec<usize> = rows.iter().copied().filter(|r| !seen.contains(r)).collect();
            if garbage {
                prop_assert!(accepted.is_empty(), "accepted rows from an unreadable answer");
            }
            let anonymous_error = errors.iter().any(|(i, named)| !named || *i >= n);
            for r in &accepted {
                let pos = r - 2;
                if results_by.is_some() {
                    prop_assert!(confirmed.contains(&pos), "row {} accepted without confirmation", r);
                } else {
                    prop_assert!(!anonymous_error, "row {} accepted despite an error naming no record", r);
                }
                prop_assert!(
                    !errors.iter().any(|(i, named)| *named && *i == pos),
                    "row {} accepted although an error names it", r
                );
            }
        }

        /// Any key renders into a path that stays under the endpoint's path, one segment long,
        /// or is refused.
        #[test]
        fn any_key_stays_in_its_segment(key in any::<String>()) {
            let ctx = Context { key_field: "id", object: "people" };
            let r = Record {
                fields: serde_json::Map::new(),
                key: json!(key.clone()),
                idempotency_key: String::new(),
                api_id: None,
            };
            match template::render_path("/v1/{object}/{key}/tags", Some(&r), &ctx) {
                Ok(p) => {
                    let segment = p
                        .strip_prefix("/v1/people/")
                        .and_then(|s| s.strip_suffix("/tags"))
                        .expect("prefix and suffix kept");
                    prop_assert!(!segment.contains(['/', '?', '#']));
                    let decoded = percent_encoding::percent_decode_str(segment).decode_utf8();
                    prop_assert_eq!(decoded.map(|d| d.into_owned()).ok(), Some(key));
                }
                Err(_) => prop_assert!(matches!(key.as_str(), "" | "." | "..")),
            }
        }
    }

    fn errors_by_field(m: Match) -> String {
        match m {
            Match::Index => "index".into(),
            Match::Key => "key".into(),
            Match::Trace => "trace".into(),
        }
    }
}
