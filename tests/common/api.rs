//! A fake SaaS API on 127.0.0.1 that behaves like the real ones backflow feeds: it stores
//! records, validates them (an `email` without `@` is refused with a field error), limits
//! requests per second with `429` and `Retry-After`, fails a share of requests with `500` or
//! answers them too slowly, honours `Idempotency-Key` on creates, and logs every request so a
//! test can inspect what arrived and when.
//!
//! Two dialects:
//! - a generic REST API under `/api/{object}`: `POST /batch` (`{"records": [...]}`, upsert by
//!   `id`: the fields sent replace those stored, others are kept; per-record errors by index,
//!   or the whole batch refused with 400 in [`BatchErrors::WholeBatch`] mode), `PUT /{key}`
//!   (replaces the record), `PATCH /{key}` (updates the fields sent; 404 when there is none),
//!   `DELETE /{key}`, `POST` (create; a record sent without `id` gets one, a number, in the
//!   answer's `id`), `POST /delete` (`{"ids": [...]}`) and `POST /append`
//!   (`{"records": [...]}` added to the object's event log, [`ApiState::logs`]);
//! - HubSpot's CRM objects batch API under `/crm/v3/objects/{object}` (`batch/upsert`,
//!   `batch/update`, `batch/create`, and `GET ?limit=1`), with its body and error shapes.
//!
//! The HTTP/1.1 handling is minimal (Content-Length bodies, keep-alive): enough for reqwest.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use tokio::time::Instant;

pub const TOKEN: &str = "test-token-5f0c9e";

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum BatchErrors {
    /// 200 with `errors: [{index, message}]` for refused records.
    PerRecord,
    /// 400 for the whole batch when any record is invalid.
    WholeBatch,
}

#[derive(Debug, Clone)]
pub struct Faults {
    /// Requests per second accepted (a sliding window of one second); more get 429.
    pub rate_limit: Option<usize>,
    /// `Retry-After` sent with a 429, in seconds.
    pub retry_after: u64,
    /// Share of requests answered 500 (before doing anything).
    pub fail_rate: f64,
    /// Share of requests answered only after `slow` (after doing the work).
    pub slow_rate: f64,
    pub slow: Duration,
    /// Added to every request.
    pub latency: Duration,
    pub seed: u64,
    pub batch_errors: BatchErrors,
    /// Largest batch accepted (more: 400).
    pub max_batch: usize,
    /// HubSpot's `batch/read` answers 200 with an HTML page (a misbehaving proxy).
    pub garbled_reads: bool,
    /// Creates ignore `Idempotency-Key` (most plain REST APIs do).
    pub ignore_idempotency: bool,
    /// The status a create of a record that exists gets (409, or an API's 500).
    pub duplicate_status: u16,
    /// Every request is answered with this status (a gateway in front of a dead API: 503).
    pub down_status: Option<u16>,
}

impl Default for Faults {
    fn default() -> Self {
        Faults {
            rate_limit: None,
            retry_after: 1,
            fail_rate: 0.0,
            slow_rate: 0.0,
            slow: Duration::from_millis(1500),
            latency: Duration::ZERO,
            seed: 7,
            batch_errors: BatchErrors::PerRecord,
            max_batch: 100,
            garbled_reads: false,
            ignore_idempotency: false,
            duplicate_status: 409,
            down_status: None,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Logged {
    pub at: Instant,
    pub method: String,
    pub path: String,
    pub status: u16,
    pub retry_after: Option<u64>,
    /// The request's body, as text.
    pub body: String,
}

#[derive(Debug, Default)]
pub struct ApiState {
    /// object → key (as text) → record.
    pub objects: BTreeMap<String, BTreeMap<String, Value>>,
    /// object → the records appended to it (an event log: `POST /api/{object}/append`).
    pub logs: BTreeMap<String, Vec<Value>>,
    pub log: Vec<Logged>,
    /// Creates performed, per object and key.
    pub creates: HashMap<(String, String), u32>,
    /// Creates answered from the idempotency store instead of being performed again.
    pub replays: u64,
    /// Creates refused because the record existed (409).
    pub conflicts: u64,
    /// Requests answered only after `Faults::slow`.
    pub slowed: u64,
    /// HubSpot's record ids, by object and key.
    pub hubspot_ids: HashMap<(String, String), String>,
    idempotent: HashMap<String, (u16, String)>,
    accepted_at: Vec<Instant>,
    rng: u64,
    pub next_id: u64,
}

pub struct FakeApi {
    pub addr: SocketAddr,
    pub state: Arc<Mutex<ApiState>>,
    faults: Arc<Mutex<Faults>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeApi {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakeApi {
    pub async fn start(faults: Faults) -> FakeApi {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind loopback");
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(ApiState {
            rng: faults.seed.max(1),
            ..ApiState::default()
        }));
        let faults = Arc::new(Mutex::new(faults));
        let (s, f) = (state.clone(), faults.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((socket, _)) = listener.accept().await else {
                    return;
                };
                let (s, f) = (s.clone(), f.clone());
                tokio::spawn(async move {
                    let _ = serve(socket, s, f).await;
                });
            }
        });
        FakeApi {
            addr,
            state,
            faults,
            task,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn set_faults(&self, faults: Faults) {
        *self.faults.lock().unwrap() = faults;
    }

    /// The faults in force, to change them from another task while requests arrive.
    pub fn faults_handle(&self) -> Arc<Mutex<Faults>> {
        self.faults.clone()
    }

    /// The records of one object, by key.
    pub fn records(&self, object: &str) -> BTreeMap<String, Value> {
        let s = self.state.lock().unwrap();
        s.objects.get(object).cloned().unwrap_or_default()
    }

    pub fn log(&self) -> Vec<Logged> {
        self.state.lock().unwrap().log.clone()
    }

    /// The most requests that arrived within any one second.
    pub fn busiest_second(&self) -> usize {
        let mut at: Vec<Instant> = self.log().iter().map(|l| l.at).collect();
        at.sort();
        let mut best = 0;
        let mut start = 0;
        for end in 0..at.len() {
            while at[end].duration_since(at[start]) >= Duration::from_secs(1) {
                start += 1;
            }
            best = best.max(end - start + 1);
        }
        best
    }
}

fn next_random(state: &mut ApiState) -> f64 {
    // xorshift64*: deterministic for a seed.
    let mut x = state.rng;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    state.rng = x;
    (x.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 / (1u64 << 53) as f64
}

struct Req {
    method: String,
    path: String,
    headers: HashMap<String, String>,
    body: Vec<u8>,
}

struct Resp {
    status: u16,
    body: String,
    retry_after: Option<u64>,
}

fn resp(status: u16, body: Value) -> Resp {
    Resp {
        status,
        body: if body.is_null() {
            String::new()
        } else {
            body.to_string()
        },
        retry_after: None,
    }
}

async fn serve(
    socket: tokio::net::TcpStream,
    state: Arc<Mutex<ApiState>>,
    faults: Arc<Mutex<Faults>>,
) -> std::io::Result<()> {
    let (read, mut write) = socket.into_split();
    let mut reader = BufReader::new(read);
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).await? == 0 {
            return Ok(());
        }
        let mut parts = line.split_whitespace();
        let (Some(method), Some(path)) = (parts.next(), parts.next()) else {
            return Ok(());
        };
        let (method, path) = (method.to_string(), path.to_string());
        let mut headers = HashMap::new();
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h).await? == 0 {
                return Ok(());
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
            }
        }
        let len: usize = headers
            .get("content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let mut body = vec![0; len];
        reader.read_exact(&mut body).await?;
        let req = Req {
            method,
            path,
            headers,
            body,
        };
        let r = handle(&req, &state, &faults).await;
        let reason = match r.status {
            200 => "OK",
            201 => "Created",
            204 => "No Content",
            207 => "Multi-Status",
            400 => "Bad Request",
            401 => "Unauthorized",
            404 => "Not Found",
            409 => "Conflict",
            422 => "Unprocessable Entity",
            429 => "Too Many Requests",
            _ => "Internal Server Error",
        };
        let mut head = format!(
            "HTTP/1.1 {} {reason}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n",
            r.status,
            r.body.len()
        );
        if let Some(s) = r.retry_after {
            head.push_str(&format!("retry-after: {s}\r\n"));
        }
        head.push_str("\r\n");
        write.write_all(head.as_bytes()).await?;
        write.write_all(r.body.as_bytes()).await?;
        write.flush().await?;
    }
}

async fn handle(req: &Req, state: &Mutex<ApiState>, faults: &Mutex<Faults>) -> Resp {
    let f = faults.lock().unwrap().clone();
    let now = Instant::now();
    // Faults first, decided under the lock so they follow the seed.
    let (limited, fail, slow) = {
        let mut s = state.lock().unwrap();
        let limited = f.rate_limit.is_some_and(|limit| {
            s.accepted_at
                .retain(|t| now.duration_since(*t) < Duration::from_secs(1));
            s.accepted_at.len() >= limit
        });
        if !limited {
            s.accepted_at.push(now);
        }
        let fail = !limited && next_random(&mut s) < f.fail_rate;
        let slow = !limited && !fail && next_random(&mut s) < f.slow_rate;
        (limited, fail, slow)
    };
    let r = if let Some(status) = f.down_status {
        resp(status, json!({"message": "upstream unavailable"}))
    } else if limited {
        Resp {
            status: 429,
            body: json!({"status": "error", "message": "You have reached your secondly limit.", "category": "RATE_LIMITS"}).to_string(),
            retry_after: Some(f.retry_after),
        }
    } else if fail {
        resp(
            500,
            json!({"status": "error", "message": "internal error, try again"}),
        )
    } else {
        tokio::time::sleep(f.latency).await;
        let r = route(req, state, &f);
        if slow {
            state.lock().unwrap().slowed += 1;
            tokio::time::sleep(f.slow).await;
        }
        r
    };
    state.lock().unwrap().log.push(Logged {
        at: now,
        method: req.method.clone(),
        path: req.path.clone(),
        status: r.status,
        retry_after: r.retry_after,
        body: String::from_utf8_lossy(&req.body).into_owned(),
    });
    r
}

fn invalid_email(record: &Value) -> Option<String> {
    let email = record.get("email")?;
    let text = match email {
        Value::String(s) => s.clone(),
        Value::Null => return None,
        other => other.to_string(),
    };
    (!text.is_empty() && !text.contains('@'))
        .then(|| format!("email: \"{text}\" is not a valid email address"))
}

fn key_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn route(req: &Req, state: &Mutex<ApiState>, f: &Faults) -> Resp {
    if req.headers.get("authorization").map(String::as_str) != Some(&format!("Bearer {TOKEN}")) {
        return resp(
            401,
            json!({"status": "error", "message": "Authentication credentials not found or invalid.", "category": "INVALID_AUTHENTICATION"}),
        );
    }
    let body: Value = serde_json::from_slice(&req.body).unwrap_or(Value::Null);
    let path = req.path.split('?').next().unwrap_or("");
    let segs: Vec<String> = path
        .split('/')
        .filter(|s| !s.is_empty())
        .map(percent_decode)
        .collect();
    let segs: Vec<&str> = segs.iter().map(String::as_str).collect();
    let mut s = state.lock().unwrap();
    match (req.method.as_str(), segs.as_slice()) {
        // `GET /api/{object}?{field}={value}`: the records whose field is the value, as a
        // bare list (a REST search).
        ("GET", ["api", object]) if req.path.contains('?') => {
            let query = req.path.split_once('?').map_or("", |(_, q)| q);
            let filters: Vec<(String, String)> = query
                .split('&')
                .filter_map(|kv| kv.split_once('='))
                .map(|(k, v)| (percent_decode(k), percent_decode(v)))
                .collect();
            let found: Vec<Value> = s
                .objects
                .get(*object)
                .map(|m| {
                    m.values()
                        .filter(|r| filters.iter().all(|(k, v)| key_text(&r[k.as_str()]) == *v))
                        .cloned()
                        .collect()
                })
                .unwrap_or_default();
            resp(200, Value::Array(found))
        }
        // `POST /api/{object}/search` with `{"field": F, "values": [...]}`: the records whose F
        // is one of the values, under `results`.
        ("POST", ["api", object, "search"]) => {
            let field = body["field"].as_str().unwrap_or("").to_string();
            let values: Vec<String> = body["values"]
                .as_array()
                .map(|a| a.iter().map(key_text).collect())
                .unwrap_or_default();
            let found: Vec<Value> = s
                .objects
                .get(*object)
                .map(|m| {
                    m.values()
                        .filter(|r| values.contains(&key_text(&r[field.as_str()])))
                        .cloned()
                        .collect()
                })
                .unwrap_or_default();
            resp(200, json!({ "results": found }))
        }
        ("GET", ["api", object]) | ("GET", ["crm", "v3", "objects", object]) => {
            let n = s.objects.get(*object).map_or(0, |m| m.len());
            resp(200, json!({"total": n, "results": []}))
        }
        ("POST", ["api", object, "batch"]) => {
            let records = body
                .get("records")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            if records.len() > f.max_batch {
                return resp(
                    400,
                    json!({"message": format!("at most {} records per request", f.max_batch)}),
                );
            }
            let problems: Vec<(usize, String)> = records
                .iter()
                .enumerate()
                .filter_map(|(i, r)| invalid_email(r).map(|m| (i, m)))
                .collect();
            if f.batch_errors == BatchErrors::WholeBatch && !problems.is_empty() {
                return resp(
                    400,
                    json!({"message": format!("validation failed: {}", problems[0].1)}),
                );
            }
            let mut results = Vec::new();
            for (i, r) in records.iter().enumerate() {
                if problems.iter().any(|(p, _)| *p == i) {
                    continue;
                }
                let key = key_text(&r["id"]);
                merge(
                    s.objects
                        .entry(object.to_string())
                        .or_default()
                        .entry(key.clone())
                        .or_insert_with(|| json!({})),
                    r,
                );
                results.push(json!({"index": i, "id": key}));
            }
            let errors: Vec<Value> = problems
                .into_iter()
                .map(|(i, m)| json!({"index": i, "message": m}))
                .collect();
            resp(200, json!({"results": results, "errors": errors}))
        }
        ("POST", ["api", object, "append"]) => {
            let records = body
                .get("records")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            let mut errors = Vec::new();
            let log = s.logs.entry(object.to_string()).or_default();
            for (i, r) in records.into_iter().enumerate() {
                match invalid_email(&r) {
                    Some(m) => errors.push(json!({"index": i, "message": m})),
                    None => log.push(r),
                }
            }
            resp(200, json!({"errors": errors}))
        }
        ("POST", ["api", object, "delete"]) => {
            let ids = body
                .get("ids")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            let m = s.objects.entry(object.to_string()).or_default();
            for id in ids {
                m.remove(&key_text(&id));
            }
            resp(200, json!({"deleted": true}))
        }
        ("PUT", ["api", object, key]) => {
            if let Some(m) = invalid_email(&body) {
                return resp(422, json!({"message": m}));
            }
            s.objects
                .entry(object.to_string())
                .or_default()
                .insert(key.to_string(), body);
            resp(200, json!({"id": key}))
        }
        ("PATCH", ["api", object, key]) => {
            if let Some(m) = invalid_email(&body) {
                return resp(422, json!({"message": m}));
            }
            match s
                .objects
                .entry(object.to_string())
                .or_default()
                .get_mut(*key)
            {
                Some(existing) => {
                    merge(existing, &body);
                    resp(200, json!({"id": key}))
                }
                None => resp(
                    404,
                    json!({"message": format!("no {object} with id {key}")}),
                ),
            }
        }
        ("DELETE", ["api", object, key]) => {
            match s
                .objects
                .entry(object.to_string())
                .or_default()
                .remove(*key)
            {
                Some(_) => resp(204, Value::Null),
                None => resp(404, json!({"message": "not found"})),
            }
        }
        ("POST", ["api", object]) => {
            let idem = req
                .headers
                .get("idempotency-key")
                .filter(|_| !f.ignore_idempotency)
                .cloned();
            if let Some(k) = &idem
                && let Some((status, body)) = s.idempotent.get(k).cloned()
            {
                s.replays += 1;
                return Resp {
                    status,
                    body,
                    retry_after: None,
                };
            }
            let r = if let Some(m) = invalid_email(&body) {
                resp(422, json!({"message": m}))
            } else if body.get("id").is_none_or(Value::is_null) {
                // No id sent: the API gives the record one (a number), as most APIs do.
                s.next_id += 1;
                let id = 1000 + s.next_id;
                let mut record = body.clone();
                record["id"] = json!(id);
                s.objects
                    .entry(object.to_string())
                    .or_default()
                    .insert(id.to_string(), record);
                *s.creates
                    .entry((object.to_string(), id.to_string()))
                    .or_default() += 1;
                resp(201, json!({"id": id, "created": true}))
            } else {
                let key = key_text(&body["id"]);
                let m = s.objects.entry(object.to_string()).or_default();
                if m.contains_key(&key) {
                    s.conflicts += 1;
                    resp(
                        f.duplicate_status,
                        json!({"message": format!("a record with id {key} exists")}),
                    )
                } else {
                    m.insert(key.clone(), body);
                    *s.creates
                        .entry((object.to_string(), key.clone()))
                        .or_default() += 1;
                    resp(201, json!({"id": key}))
                }
            };
            if let Some(k) = idem {
                s.idempotent.insert(k, (r.status, r.body.clone()));
            }
            r
        }
        ("POST", ["crm", "v3", "objects", _, "batch", "read"]) if f.garbled_reads => Resp {
            status: 200,
            body: "<html><body>Gateway says hello</body></html>".into(),
            retry_after: None,
        },
        ("POST", ["crm", "v3", "objects", object, "batch", action]) => {
            hubspot(&mut s, object, action, &body)
        }
        _ => resp(
            404,
            json!({"message": format!("no route {} {}", req.method, req.path)}),
        ),
    }
}

/// Set the fields of `update` on `stored` (a partial update: fields not sent are kept).
fn merge(stored: &mut Value, update: &Value) {
    match (stored.as_object_mut(), update.as_object()) {
        (Some(stored), Some(update)) => {
            for (k, v) in update {
                stored.insert(k.clone(), v.clone());
            }
        }
        _ => *stored = update.clone(),
    }
}

fn percent_decode(s: &str) -> String {
    percent_encoding::percent_decode_str(s)
        .decode_utf8_lossy()
        .into_owned()
}

/// HubSpot's batch endpoints, as its reference describes them.
fn hubspot(s: &mut ApiState, object: &str, action: &str, body: &Value) -> Resp {
    let inputs = body
        .get("inputs")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    if inputs.len() > 100 {
        return resp(
            400,
            json!({"status": "error", "message": "Batch input is limited to 100 inputs", "category": "VALIDATION_ERROR"}),
        );
    }
    if action == "read" {
        let mut results = Vec::new();
        let mut errors = Vec::new();
        let id_property = body["idProperty"]
            .as_str()
            .unwrap_or("hs_object_id")
            .to_string();
        for input in &inputs {
            let key = key_text(&input["id"]);
            match s.hubspot_ids.get(&(object.to_string(), key.clone())) {
                // HubSpot writes e-mail addresses back in lower case.
                Some(id) => results.push(json!({"id": id, "properties": {id_property.clone(): key.to_lowercase()}})),
                None => errors.push(json!({
                    "status": "error", "category": "OBJECT_NOT_FOUND",
                    "message": "Could not get some CONTACT objects, they may be deleted or not exist.",
                    "context": {"ids": [key]}
                })),
            }
        }
        let status = if errors.is_empty() { 200 } else { 207 };
        return resp(
            status,
            json!({"status": "COMPLETE", "results": results, "errors": errors}),
        );
    }
    if action == "archive" {
        for input in &inputs {
            let id = key_text(&input["id"]);
            let found = s
                .hubspot_ids
                .iter()
                .find(|((o, _), v)| o == object && **v == id)
                .map(|(k, _)| k.clone());
            if let Some((o, key)) = found {
                s.hubspot_ids.remove(&(o.clone(), key.clone()));
                if let Some(m) = s.objects.get_mut(&o) {
                    m.remove(&key);
                }
            }
        }
        return resp(204, Value::Null);
    }
    let mut results = Vec::new();
    let mut errors = Vec::new();
    for input in &inputs {
        let trace = input
            .get("objectWriteTraceId")
            .cloned()
            .unwrap_or(Value::Null);
        let props = input.get("properties").cloned().unwrap_or(json!({}));
        if props
            .as_object()
            .is_some_and(|m| m.values().any(|v| !v.is_string()))
        {
            return resp(
                400,
                json!({"status": "error", "message": "Invalid input JSON: property values must be strings", "category": "VALIDATION_ERROR"}),
            );
        }
        if let Some(m) = invalid_email(&props) {
            errors.push(json!({
                "status": "error", "category": "VALIDATION_ERROR",
                "message": format!("Property values were not valid: {m}"),
                "context": {"objectWriteTraceId": [trace]}
            }));
            continue;
        }
        let (key, exists) = match action {
            "create" => {
                let key = key_text(&props["email"]);
                let exists = s.objects.get(object).is_some_and(|m| m.contains_key(&key));
                if exists {
                    return resp(
                        409,
                        json!({"status": "error", "message": format!("Contact already exists. Existing ID: {key}"), "category": "CONFLICT"}),
                    );
                }
                (key, false)
            }
            _ => {
                let key = key_text(&input["id"]);
                let exists = s.objects.get(object).is_some_and(|m| m.contains_key(&key));
                (key, exists)
            }
        };
        if action == "update" && !exists {
            errors.push(json!({
                "status": "error", "category": "OBJECT_NOT_FOUND",
                "message": "Could not get some CONTACT objects, they may be deleted or not exist.",
                "context": {"ids": [key], "objectWriteTraceId": [trace]}
            }));
            continue;
        }
        let m = s.objects.entry(object.to_string()).or_default();
        let stored = m.entry(key.clone()).or_insert_with(|| json!({}));
        if let (Some(stored), Some(props)) = (stored.as_object_mut(), props.as_object()) {
            for (k, v) in props {
                stored.insert(k.clone(), v.clone());
            }
        }
        let id = match s.hubspot_ids.get(&(object.to_string(), key.clone())) {
            Some(id) => id.clone(),
            None => {
                s.next_id += 1;
                let id = (1000 + s.next_id).to_string();
                s.hubspot_ids
                    .insert((object.to_string(), key.clone()), id.clone());
                id
            }
        };
        results.push(
            json!({"id": id, "properties": props, "new": !exists, "objectWriteTraceId": trace}),
        );
    }
    let status = if errors.is_empty() { 200 } else { 207 };
    resp(
        status,
        json!({"status": "COMPLETE", "results": results, "errors": errors, "numErrors": errors.len()}),
    )
}
