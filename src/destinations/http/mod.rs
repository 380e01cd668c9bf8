//! HTTP API destination (`type = "http"`): records go to an API as JSON, one request per record
//! (`path = "/contacts/{key}"`) or in batches (`path = "/contacts/batch"`, `batch_size = 100`).
//!
//! - Each behavior's operations have their endpoint: `upsert`, `update`, `create` (also used for
//!   append-only unless `append` is given) and `delete` ([`config`]).
//! - Requests are paced, limited in number, retried and paused on `429` ([`client`]).
//! - A 2xx batch response can name records the API refused (`errors`, matched by position,
//!   key or idempotency key) and, when `results` is set, must confirm every other record: only
//!   confirmed records are marked synced ([`results`]).
//! - An endpoint with a `lookup` first finds the API's own ids for its keys (`{api_id}`).
//! - A batch the API refuses as a whole (4xx), or that keeps failing (5xx, timeouts), is split
//!   in halves until the records it refuses are alone; those are rejected with the API's message.
//! - Writes carry an `Idempotency-Key` header (and `{idempotency_key}` for bodies) derived from
//!   the sync, the object, the operation, the state version and the record, so a run repeated
//!   after a crash sends the same keys for the same records.
//! - `preset = "hubspot"` fills in HubSpot's CRM objects batch endpoints ([`hubspot`]).

mod client;
mod config;
mod find;
mod hubspot;
mod results;
pub mod template;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use arrow::array::RecordBatch;
use async_trait::async_trait;
use futures::StreamExt;
use reqwest::header::{HeaderName, HeaderValue};
use reqwest::{Method, StatusCode};
use serde_json::Value;

use super::{
    BatchOutcome, Destination, DestinationError, FinishOutcome, NO_RECORD_FOR_UPDATE, ObjectWriter,
    Rejection, WriteOp, WriteTarget,
};
use crate::behavior::Behavior;
use crate::progress::Delivery;
use client::{Answer, Client, Policy, Request, status_line, truncate};
pub use config::HttpDestinationConfig;
pub(super) use config::validate_object;
use config::{EndpointConfig, LookupConfig};
use config::{fill_names, parse_timeout};
use results::{
    AMBIGUOUS, error_message, key_text, looks_missing, match_ids, read_results, whole_message,
};
use template::{Context, Record};

/// Requests in a row that gave up on transient failures before the run stops: the API is down,
/// not refusing one record.
const BREAKER: u64 = 8;

/// Why a record an id lookup did not find is not updated.
const NOT_IN_API: &str = "the API has no record with this key";

/// The reason a create is answered with when the record is there already (`exists`): an
/// upsert then updates it, a create-only sync counts it as skipped.
const RECORD_EXISTS: &str = "the record exists already";

impl HttpDestinationConfig {
    /// The config with the preset's defaults filled in (what the user wrote wins).
    pub(crate) fn resolved(&self) -> HttpDestinationConfig {
        match self.preset {
            Some(config::Preset::Hubspot) => hubspot::apply(self),
            None => self.clone(),
        }
    }

    /// Problems found without network I/O (environment variables are read), with the
    /// preset's defaults applied.
    pub fn validate(&self) -> Vec<String> {
        self.resolved().validate_resolved()
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

    /// The endpoint for each operation the sync's behavior uses; an error names what is missing.
    fn endpoints(
        &self,
        target: &WriteTarget,
    ) -> Result<HashMap<WriteOp, EndpointConfig>, DestinationError> {
        let c = &self.config;
        let ops: &[WriteOp] = match target.behavior {
            Behavior::Upsert if target.creates_and_updates => &[WriteOp::Create, WriteOp::Update],
            Behavior::Mirror if target.creates_and_updates => {
                &[WriteOp::Create, WriteOp::Update, WriteOp::Delete]
            }
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
                let hint = if *op == WriteOp::Upsert {
                    " (or, for an API without upserts, create and update endpoints: new records \
                     are then created and changed ones updated)"
                } else {
                    ""
                };
                return Err(DestinationError::incompatible(
                    &self.name,
                    target,
                    format!(
                        "behavior {} needs a {name} endpoint: add [destinations.{}.{}] with a path{hint}",
                        target.behavior.as_str(),
                        self.name,
                        name.split(' ').next().unwrap_or(name),
                    ),
                ));
            };
            if target.key.len() > 1 {
                let problems = e.composite_key_problems();
                if !problems.is_empty() {
                    return Err(DestinationError::incompatible(
                        &self.name,
                        target,
                        format!(
                            "the {name} endpoint cannot take the composite key {}: {}",
                            target.key_label(),
                            problems.join("; ")
                        ),
                    ));
                }
            }
            if target.partial_updates && matches!(op, WriteOp::Upsert | WriteOp::Update) {
                let problems = e.partial_update_problems(&target.key);
                if !problems.is_empty() {
                    return Err(DestinationError::incompatible(
                        &self.name,
                        target,
                        format!(
                            "the {name} endpoint cannot send only changed fields (send = \"changed\"): {}",
                            problems.join("; ")
                        ),
                    ));
                }
            }
            out.insert(*op, e.clone());
        }
        Ok(out)
    }

    fn client(&self, target: &WriteTarget) -> Result<(Client, Vec<String>), DestinationError> {
        let c = &self.config;
        let (mut headers, secrets) = c
            .credentials()
            .map_err(|e| DestinationError::incompatible(&self.name, target, e))?;
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
            .map_err(|e| DestinationError::incompatible(&self.name, target, e))?;
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
            key: &target.key,
            object: &target.object,
        };
        let rendered = template::render_path(path, None, &ctx)
            .map_err(|e| DestinationError::incompatible(&self.name, target, e))?;
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
            Answer::GaveUp { attempts, last, .. } => {
                format!("gave up after {attempts} attempts: {last}")
            }
            Answer::Broken(e) => e,
        };
        Err(DestinationError::Unreachable {
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

    fn creates_and_updates(&self) -> bool {
        let c = &self.config;
        c.upsert.is_none() && c.create.is_some() && c.update.is_some()
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
                lookups: self.config.lookups.clone(),
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
    lookups: indexmap::IndexMap<String, config::FieldLookupConfig>,
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
        skipped: usize,
        /// Created records and the ids the API gave them (see `result_id`).
        assigned: Vec<(usize, String)>,
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

/// What stops the run: the destination as a whole does not work.
struct Fatal(String);

impl Shared {
    /// Deliver one batch of one operation. The first request that fails the run (the API is
    /// down, refuses the credentials) stops it at once: no other request starts, and those in
    /// flight are abandoned.
    async fn deliver_batch(
        &self,
        op: WriteOp,
        batch: &RecordBatch,
    ) -> Result<BatchOutcome, DestinationError> {
        let s = self;
        let fail = |reason: String| DestinationError::Write {
            destination: s.destination.clone(),
            object: s.target.object.clone(),
            reason: redact(&reason, &s.secrets),
        };
        let endpoint = s
            .endpoints
            .get(&op)
            .ok_or_else(|| fail(format!("no endpoint for {}", op.as_str())))?;
        let scope = template::Scope {
            sync: &s.target.sync,
            object: &s.target.object,
            op: op.as_str(),
            version: s.target.version,
        };
        let records = template::records(batch, &s.target.key, &scope)
            .map_err(|e| fail(format!("cannot encode records as JSON: {e}")))?;
        s.queued.fetch_add(records.len() as u64, Ordering::Relaxed);
        s.report();
        let size = endpoint.batch_size();
        let chunks: Vec<Vec<usize>> = (0..records.len())
            .collect::<Vec<_>>()
            .chunks(size)
            .map(<[usize]>::to_vec)
            .collect();
        // Chunks in flight: twice the request slots, so that some are ready to go while others
        // back off (more would only wait for a slot).
        let concurrency = s.client.concurrency() * 2;
        let mut parts = std::pin::pin!(
            futures::stream::iter(chunks)
                .map(|rows| s.deliver(op, &records, rows))
                .buffer_unordered(concurrency)
        );
        let mut outcome = BatchOutcome::default();
        while let Some(part) = parts.next().await {
            let part = part.map_err(|Fatal(reason)| fail(reason))?;
            outcome.rejected.extend(part.rejected);
            outcome.skipped += part.skipped;
        }
        outcome.rejected.sort_by_key(|r| r.row);
        Ok(outcome)
    }

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
            key: &self.target.key,
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
                Reply::Done {
                    rejected,
                    skipped,
                    assigned,
                } => {
                    outcome.skipped += skipped;
                    // Kept before anything else happens: a run stopped by a later request
                    // must not lose the ids of records created by this one.
                    if let (Some(keep), false) = (&self.target.assigned, assigned.is_empty()) {
                        let ids = assigned
                            .iter()
                            .map(|(row, id)| (template::text(&records[*row].key), id.clone()))
                            .collect();
                        keep(ids).await.map_err(|e| {
                            Fatal(format!(
                                "the API created records, but the ids it gave them could not be kept: {e}"
                            ))
                        })?;
                    }
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
            return Err(Fatal(format!("no endpoint for {}", op.as_str())));
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
                    None => unsettled.push((*r, NOT_IN_API.into())),
                }
            }
            owned = found_rows
                .iter()
                .map(|r| {
                    let mut record = records[*r].clone();
                    record.api_id = ids.get(r).cloned();
                    record
                })
                .collect();
            if found_rows.is_empty() {
                return Ok(Reply::Done {
                    rejected: unsettled,
                    skipped: 0,
                    assigned: vec![],
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
                assigned,
            } => {
                rejected.extend(unsettled);
                Reply::Done {
                    rejected,
                    skipped,
                    assigned,
                }
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
        // (A sync with a composite key has no lookup: see `composite_key_problems`.)
        let key_field = &self.target.key[0];
        let fill = |v: &Value| fill_names(v, key_field, &self.target.object);
        let template = lookup
            .record
            .clone()
            .unwrap_or_else(|| Value::String("{key}".into()));
        let items: Vec<Value> = rows
            .iter()
            .map(|r| template::render(&template, &records[*r], &ctx))
            .collect();
        let body = template::wrapped(
            Value::Array(items),
            lookup.wrap.as_deref(),
            lookup.extra.as_ref().map(fill),
        );
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
        let (status, text) = match self.settle(answer, &url, rows.len())? {
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
        if !template::present(&json, results_path) {
            return unreadable(&format!("has no \"{results_path}\""));
        }
        let key_path = lookup.result_key.replace("{key_field}", key_field);
        let id_path = lookup.result_id.as_deref().unwrap_or("id");
        let fold = lookup
            .case_insensitive_keys
            .iter()
            .any(|k| k.eq_ignore_ascii_case(key_field));
        let mut found: Vec<(String, Value)> = Vec::new();
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
            found.push((key, id));
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
        let keys: Vec<(usize, String)> = rows
            .iter()
            .map(|r| (*r, key_text(&records[*r].key)))
            .collect();
        let (mut ids, ambiguous) = match_ids(&keys, &found, fold);
        for r in ambiguous {
            refused.insert(r, AMBIGUOUS.into());
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
            if template::is_fields(&t) {
                return template::fields_body(recs, single.is_some(), endpoint.wrap.as_deref());
            }
            let payload = match single {
                Some(r) => template::render(&t, r, &ctx),
                None => Value::Array(recs.iter().map(|r| template::render(&t, r, &ctx)).collect()),
            };
            template::wrapped(payload, endpoint.wrap.as_deref(), None)
                .to_string()
                .into_bytes()
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
        let (status, body) = match self.settle(answer, &url, recs.len())? {
            Ok(r) => r,
            Err(reply) => return Ok(reply),
        };
        if status.is_success() {
            return Ok(read_results(op, endpoint, records, rows, &body));
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
        records: usize,
    ) -> Result<Result<(StatusCode, String), Reply>, Fatal> {
        match answer {
            Answer::Response { status, body } => {
                self.gave_up_in_a_row.store(0, Ordering::Relaxed);
                Ok(Ok((status, body)))
            }
            // A request of several records that timed out (or that a gateway gave up on) may
            // only be too big for the time allowed: it is split like any failing batch.
            Answer::GaveUp {
                attempts,
                last,
                down: true,
            } if records > 1 && (last.starts_with("timed out") || last.starts_with("HTTP 504")) => {
                Ok(Err(Reply::Split(format!(
                    "the API kept failing ({attempts} attempts): {last}"
                ))))
            }
            // The API is out of reach: no record is to blame, and none is rejected for it.
            Answer::GaveUp {
                attempts,
                last,
                down: true,
            } => Err(Fatal(format!(
                "the API is out of reach ({attempts} attempts, the last at {url}): {last}"
            ))),
            Answer::GaveUp { attempts, last, .. } => {
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
                skipped: 0,
                assigned: vec![],
            }),
            404 if op == WriteOp::Update && single => Ok(Reply::Done {
                rejected: vec![(rows[0], NO_RECORD_FOR_UPDATE.to_string())],
                skipped: 0,
                assigned: vec![],
            }),
            s if op == WriteOp::Create
                && rows.len() == 1
                && endpoint.is_some_and(|e| e.means_exists(s)) =>
            {
                Ok(Reply::Done {
                    rejected: vec![(rows[0], RECORD_EXISTS.to_string())],
                    skipped: 0,
                    assigned: vec![],
                })
            }
            _ => Ok(Reply::Split(message())),
        }
    }
}

#[async_trait]
impl ObjectWriter for HttpWriter {
    async fn write(
        &mut self,
        op: WriteOp,
        batch: RecordBatch,
    ) -> Result<BatchOutcome, DestinationError> {
        let s = self.shared.clone();
        let mut outcome = s.deliver_batch(op, &batch).await?;
        // An API without upserts: a new record that is there already is updated, and a
        // changed one the API lost is created, when the update endpoint says so.
        let missing_creates = s
            .endpoints
            .get(&WriteOp::Update)
            .is_some_and(|e| e.missing == Some(config::Missing::Create));
        let retry_as = match op {
            WriteOp::Create if s.target.creates_and_updates => Some(WriteOp::Update),
            WriteOp::Update if s.target.creates_and_updates && missing_creates => {
                Some(WriteOp::Create)
            }
            _ => None,
        };
        if let Some(other) = retry_as {
            let (again, rest): (Vec<Rejection>, Vec<Rejection>) =
                std::mem::take(&mut outcome.rejected)
                    .into_iter()
                    .partition(|r| match op {
                        WriteOp::Create => r.reason == RECORD_EXISTS,
                        // Only an answer that says the record is missing (a 404 to a per-record
                        // update, an error a batch answer names as not found, an id lookup that
                        // found nothing), never any message that mentions "not found".
                        _ => r.reason.starts_with(NO_RECORD_FOR_UPDATE) || r.reason == NOT_IN_API,
                    });
            outcome.rejected = rest;
            if !again.is_empty() {
                let rows: Vec<usize> = again.iter().map(|r| r.row).collect();
                let indices =
                    arrow::array::UInt32Array::from_iter_values(rows.iter().map(|r| *r as u32));
                let subset = arrow::compute::take_record_batch(&batch, &indices).map_err(|e| {
                    DestinationError::Write {
                        destination: s.destination.clone(),
                        object: s.target.object.clone(),
                        reason: e.to_string(),
                    }
                })?;
                let second = s.deliver_batch(other, &subset).await?.mapped_to(&rows);
                if other == WriteOp::Create {
                    outcome.created += rows.len() - second.rejected.len();
                }
                outcome.rejected.extend(second.rejected);
                outcome.rejected.sort_by_key(|r| r.row);
            }
        }
        // A create-only sync leaves a record that is there already alone.
        if op == WriteOp::Create {
            let before = outcome.rejected.len();
            outcome.rejected.retain(|r| r.reason != RECORD_EXISTS);
            outcome.skipped += before - outcome.rejected.len();
        }
        Ok(outcome)
    }

    async fn look_up(
        &mut self,
        query: &super::LookupQuery,
        values: &arrow::array::ArrayRef,
    ) -> Result<Vec<super::Found>, DestinationError> {
        self.find_records(query, values).await
    }

    async fn finish(self: Box<Self>) -> Result<FinishOutcome, DestinationError> {
        Ok(FinishOutcome {
            retries: self.shared.client.retries.load(Ordering::Relaxed),
            ..FinishOutcome::default()
        })
    }
}
