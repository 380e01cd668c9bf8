//! `[destinations.NAME]` with `type = "http"`: the settings, the endpoints and their
//! validation (no network I/O; environment variables are read).

use std::time::Duration;

use indexmap::IndexMap;
use reqwest::Method;
use reqwest::header::{AUTHORIZATION, HeaderMap, HeaderName, HeaderValue};
use serde::Deserialize;
use serde_json::Value;

use super::{WriteOp, template};

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
    /// How to find records of an object by one of their fields, for syncs' `fields.lookup`:
    /// `[destinations.NAME.lookups.companies]`.
    #[serde(default)]
    pub lookups: IndexMap<String, FieldLookupConfig>,
}

/// `[destinations.NAME.lookups.OBJECT]`: the request that finds records of OBJECT by the
/// values of one field. `{value}` in the path makes one request per value (GET by default:
/// `path = "/companies?domain={value}"`); otherwise the values go in batches in the body
/// (POST by default), each shaped by `record`. `{by}` is the field searched, `{object}` the
/// object. The answer lists records (at `results`, default: the answer itself); a record
/// counts when its `result_by` equals the value exactly, and gives the sync's `returns` path.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct FieldLookupConfig {
    pub method: Option<String>,
    pub path: String,
    /// Values per request without `{value}` in the path (default 100).
    pub batch_size: Option<usize>,
    /// Send the values as `{"<wrap>": [...], ...extra}` instead of a bare array.
    pub wrap: Option<String>,
    pub extra: Option<Value>,
    /// The shape of one value in the request (default `"{value}"`).
    pub record: Option<Value>,
    /// Where the answer lists the records found (default: the answer itself, a list).
    pub results: Option<String>,
    /// The path, inside one record found, of the field compared (default: the lookup's `by`).
    pub result_by: Option<String>,
}

impl FieldLookupConfig {
    /// Whether each value is its own request (`{value}` in the path).
    pub fn per_value(&self) -> bool {
        template::placeholders(&self.path).any(|(_, n, _)| n == "value" || n == "value|text")
    }

    pub fn method(&self) -> Method {
        self.method
            .as_deref()
            .and_then(|m| Method::from_bytes(m.to_ascii_uppercase().as_bytes()).ok())
            .unwrap_or(if self.per_value() {
                Method::GET
            } else {
                Method::POST
            })
    }
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
    /// On the update endpoint: what an answer saying the record does not exist (404, or an
    /// error that says "not found") means when an upsert or a mirror updates it: `"create"`
    /// it with the create endpoint, or `"reject"` the row (the default). An update-only sync
    /// never creates.
    pub missing: Option<Missing>,
    /// On the create endpoint: the statuses that mean the record is there already (default
    /// `[409]`). An upsert or a mirror then updates it; a create-only sync leaves it
    /// (`skipped`). Never retried.
    pub exists: Option<Vec<u16>>,
    /// On the create endpoint: where the answer gives the id the API assigned the new record,
    /// e.g. `"id"`: in the answer itself for a per-record endpoint, in each of `results` for a
    /// batch one (matched to its record by `result_match` and `result_field`). A hub write-back
    /// that creates records (`writeback.create`) links the source's record by this id.
    pub result_id: Option<String>,
}

/// `missing` on an update endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Missing {
    Create,
    Reject,
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
    /// Problems with looking records of `object` up (a sync's `fields.lookup`).
    pub fn lookup_problems(&self, object: &str) -> Vec<String> {
        let c = self.resolved();
        match c.lookups.get(object) {
            Some(_) => vec![],
            None => vec![format!(
                "the HTTP destination has no [lookups.{object}] saying how to find {object} records \
                 (e.g. path = \"/{object}?domain={{value}}\")"
            )],
        }
    }

    /// Problems of a config whose preset is already applied, found without network I/O
    /// (environment variables are read). See `HttpDestinationConfig::validate`.
    pub(super) fn validate_resolved(&self) -> Vec<String> {
        let c = self;
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
        for (name, endpoint) in [
            ("upsert", &c.upsert),
            ("update", &c.update),
            ("create", &c.create),
            ("append", &c.append),
            ("delete", &c.delete),
        ] {
            let Some(e) = endpoint else { continue };
            if e.missing.is_some() && name != "update" {
                p.push(format!(
                    "{name}: `missing` is for the update endpoint (what a 404 to an update means)"
                ));
            }
            if e.missing == Some(Missing::Create) && c.create.is_none() {
                p.push("update: missing = \"create\" needs a create endpoint".into());
            }
            if e.exists.is_some() && name != "create" {
                p.push(format!(
                    "{name}: `exists` is for the create endpoint (the statuses that mean the record is there)"
                ));
            }
            if let Some(codes) = &e.exists
                && let Some(bad) = codes.iter().find(|c| !(400..=599).contains(*c))
            {
                p.push(format!(
                    "create: exists lists {bad}, which is not an error status (400 to 599)"
                ));
            }
        }
        for (object, l) in &c.lookups {
            if l.path.trim().is_empty() || !l.path.starts_with('/') {
                p.push(format!("lookups.{object}: path must start with '/'"));
            }
            if l.batch_size == Some(0) {
                p.push(format!("lookups.{object}: batch_size must be at least 1"));
            }
            if l.method
                .as_deref()
                .is_some_and(|m| Method::from_bytes(m.to_ascii_uppercase().as_bytes()).is_err())
            {
                p.push(format!("lookups.{object}: method is not an HTTP method"));
            }
            for bad in template::placeholders(&l.path)
                .map(|(_, n, _)| n)
                .filter(|n| !matches!(*n, "value" | "value|text" | "by" | "object"))
            {
                p.push(format!(
                    "lookups.{object}: path names {{{bad}}}; a lookup path knows {{value}}, {{by}} and {{object}}"
                ));
            }
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
            if e.result_id.is_some() && name != "create" {
                p.push(format!(
                    "{name}: result_id is read from the answers to creates only: move it to [create]"
                ));
            }
        }
        p
    }

    pub(super) fn endpoints(&self) -> Vec<(&'static str, &EndpointConfig)> {
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
    pub(super) fn credentials(&self) -> Result<(HeaderMap, Vec<String>), String> {
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
    pub(super) fn problems(&self) -> Vec<String> {
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
        if let Some(id) = &self.result_id {
            if id.trim().is_empty() {
                p.push(
                    "result_id is empty: give the path of the id in the answer, e.g. \"id\"".into(),
                );
            }
            if !self.is_per_record() && (self.results.is_none() || self.result_match.is_none()) {
                p.push(
                    "result_id on a batch endpoint needs results, result_match and result_field: \
                     how the answer lists its records, and how each names its record"
                        .into(),
                );
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
    pub(super) fn is_per_record(&self) -> bool {
        self.per_record || template::is_per_record(&self.path)
    }

    pub(super) fn method(&self, op: WriteOp) -> Method {
        match &self.method {
            Some(m) => {
                Method::from_bytes(m.to_ascii_uppercase().as_bytes()).unwrap_or(Method::POST)
            }
            None if op == WriteOp::Delete && template::is_per_record(&self.path) => Method::DELETE,
            None => Method::POST,
        }
    }

    /// What this endpoint cannot do with a composite key (one whose value is several
    /// fields): a place for one key value (a path's `{key}`, `{key_field}`), matching the
    /// API's answers by key, or looking up the API's ids by a key field.
    pub(super) fn composite_key_problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        let in_path = |name: &str| {
            template::placeholders(&self.path).any(|(_, n, _)| n.trim_end_matches("|text") == name)
        };
        if in_path("key") {
            p.push(format!(
                "path \"{}\" puts {{key}} in the URL, but a composite key is several values: name its parts with {{field.NAME}}",
                self.path
            ));
        }
        let mut names_key_field = in_path("key_field");
        if let Some(r) = &self.record {
            strings(r, &mut |s| names_key_field |= s.contains("{key_field}"));
        }
        if names_key_field {
            p.push("{key_field} names one field, but the key is composite: name the fields".into());
        }
        if self.error_match == Some(Match::Key) || self.result_match == Some(Match::Key) {
            p.push(
                "the API's answers are matched to records by key (error_match or result_match = \"key\"), which needs a key of one field: match by index or trace".into(),
            );
        }
        if self.lookup.is_some() {
            p.push(
                "lookup finds the API's ids by one key field; a composite key has several".into(),
            );
        }
        p
    }

    /// What this endpoint cannot do with updates that carry only the changed fields: a
    /// `{field.NAME}` of a field that is not the key's, in the path or the record template,
    /// has no value when that field did not change.
    pub(super) fn partial_update_problems(&self, key: &[String]) -> Vec<String> {
        let mut named = Vec::new();
        let mut look = |s: &str| {
            for (_, name, _) in template::placeholders(s) {
                let name = name.trim_end_matches("|text");
                if let Some(field) = name.strip_prefix("field.")
                    && !key.iter().any(|k| k == field)
                    && !named.contains(&field.to_string())
                {
                    named.push(field.to_string());
                }
            }
        };
        look(&self.path);
        if let Some(r) = &self.record {
            strings(r, &mut look);
        }
        named
            .into_iter()
            .map(|f| {
                format!(
                    "it names {{field.{f}}}, which has no value in an update when \"{f}\" did not change: use {{fields}} or {{fields_without_key}}, or send = \"all\""
                )
            })
            .collect()
    }

    /// Whether `status` to a create means the record is there already.
    pub(super) fn means_exists(&self, status: u16) -> bool {
        match &self.exists {
            Some(codes) => codes.contains(&status),
            None => status == 409,
        }
    }

    pub(super) fn batch_size(&self) -> usize {
        if self.is_per_record() {
            1
        } else {
            self.batch_size.unwrap_or(100)
        }
    }

    /// The record template, or None for no body.
    pub(super) fn record_template(&self, op: WriteOp) -> Option<Value> {
        match (&self.record, op) {
            (Some(t), _) => Some(t.clone()),
            (None, WriteOp::Delete) if template::is_per_record(&self.path) => None,
            (None, WriteOp::Delete) => Some(Value::String("{key}".into())),
            (None, _) => Some(Value::String("{fields}".into())),
        }
    }
}

pub(super) fn path_problems(key: &str, path: &str) -> Vec<String> {
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
pub(super) fn fill_names(v: &Value, key_field: &str, object: &str) -> Value {
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
pub(super) fn strings(v: &Value, f: &mut impl FnMut(&str)) {
    match v {
        Value::String(s) => f(s),
        Value::Array(items) => items.iter().for_each(|i| strings(i, f)),
        Value::Object(m) => m.values().for_each(|i| strings(i, f)),
        _ => {}
    }
}

/// "30s", "2m", "500ms": a duration that is not zero.
pub(super) fn parse_timeout(t: &str) -> Option<Duration> {
    crate::duration::parse(t).filter(|d| !d.is_zero())
}

pub(in crate::destinations) fn validate_object(object: &str) -> Vec<String> {
    if object.trim().is_empty() {
        vec!["the object name is empty".into()]
    } else if object.chars().any(char::is_control) {
        vec!["the object name contains a control character".into()]
    } else {
        vec![]
    }
}
