//! The HTTP API (JSON), on axum: the syncs and entities with their state and last run,
//! starting runs, runs live and past with their samples, keys pushed by apps, golden records,
//! metrics and health. `openapi.json` beside this file describes it and is served at
//! `/api/openapi.json`; the tests check the server against it.
//!
//! With a token (from the environment, see `serve`), every call but `/healthz` must carry it
//! as `Authorization: Bearer TOKEN`; nothing served holds a secret either way (destinations
//! are shown by name and type, never by URL).

use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::DefaultBodyLimit;
use axum::extract::rejection::BytesRejection;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::{Deserialize, Serialize};

use super::jobs::{Jobs, Kind, RunView, StartError, Trigger};
use super::keys::MAX_KEYS_PER_REQUEST;
use crate::history;

/// The API's own description.
pub const OPENAPI: &str = include_str!("openapi.json");

/// What every handler shares.
#[derive(Clone)]
pub struct Api {
    pub jobs: Arc<Jobs>,
    /// The bearer token calls must carry, when one is configured.
    pub token: Option<Arc<str>>,
}

pub fn router(api: Api) -> Router {
    let guarded = Router::new()
        .route("/metrics", get(metrics))
        .route("/api/openapi.json", get(openapi))
        .route("/api/syncs", get(list_syncs))
        .route("/api/syncs/{name}", get(get_sync))
        .route("/api/syncs/{name}/runs", get(sync_runs).post(start_sync))
        .route(
            "/api/syncs/{name}/keys",
            post(post_keys).layer(DefaultBodyLimit::max(KEYS_BODY_LIMIT)),
        )
        .route("/api/entities", get(list_entities))
        .route("/api/entities/{name}", get(get_entity))
        .route(
            "/api/entities/{name}/runs",
            get(entity_runs).post(start_entity),
        )
        .route(
            "/api/entities/{name}/sources/{source}/ids",
            post(post_ids).layer(DefaultBodyLimit::max(KEYS_BODY_LIMIT)),
        )
        .route("/api/entities/{name}/golden", get(golden_by_source))
        .route("/api/entities/{name}/golden/{id}", get(golden_by_id))
        .route("/api/alerts", get(list_alerts))
        .route("/api/runs/{run_id}", get(get_run))
        .route("/api/runs/{run_id}/records", get(run_records))
        .route_layer(axum::middleware::from_fn_with_state(api.clone(), authorize));
    Router::new()
        .route("/healthz", get(healthz))
        .merge(super::page::routes())
        .merge(guarded)
        .fallback(not_found)
        .with_state(api)
}

/// The largest body of a request with keys: room for the most keys one request may carry,
/// long ones (UUIDs, composite keys) included.
const KEYS_BODY_LIMIT: usize = 64 * 1024 * 1024;

/// A request's body, or why it could not be read (too large, cut off) as the API answers.
fn read_body(body: Result<Bytes, BytesRejection>) -> Answer<Bytes> {
    body.map_err(|e| {
        let status = e.status();
        let why = if status == StatusCode::PAYLOAD_TOO_LARGE {
            "the body is too large: send fewer keys per request".to_string()
        } else {
            format!("the body could not be read: {e}")
        };
        ApiError(status, why)
    })
}

/// An error as the API answers it: a status and `{"error": "..."}`.
pub struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(serde_json::json!({ "error": self.1 }))).into_response()
    }
}

type Answer<T> = Result<T, ApiError>;

fn not_found_named(kind: &str, name: &str, api: &Api) -> ApiError {
    let known: Vec<&str> = api
        .jobs
        .targets
        .values()
        .filter(|t| kind_name(t.kind) == kind)
        .map(|t| t.name.as_str())
        .collect();
    ApiError(
        StatusCode::NOT_FOUND,
        format!(
            "no {kind} \"{name}\"{}",
            crate::names::suggest(name, known.iter().copied())
        ),
    )
}

fn kind_name(kind: Kind) -> &'static str {
    match kind {
        Kind::Sync => "sync",
        Kind::Entity => "entity",
    }
}

async fn not_found() -> ApiError {
    ApiError(
        StatusCode::NOT_FOUND,
        "no such endpoint; the API is described at /api/openapi.json".into(),
    )
}

/// Every guarded call carries the token, when there is one.
async fn authorize(State(api): State<Api>, request: Request, next: Next) -> Response {
    if let Some(token) = &api.token {
        let given = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            // (The scheme is case-insensitive.)
            .and_then(|v| {
                let (scheme, rest) = v.split_once(' ')?;
                scheme
                    .eq_ignore_ascii_case("bearer")
                    .then_some(rest.trim_start())
            });
        if !given.is_some_and(|g| same(g.as_bytes(), token.as_bytes())) {
            let mut response = ApiError(
                StatusCode::UNAUTHORIZED,
                "this server needs its token: send `Authorization: Bearer TOKEN` (the value \
                 of the environment variable serve was started with)"
                    .into(),
            )
            .into_response();
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer"),
            );
            return response;
        }
    }
    next.run(request).await
}

/// Equal, in a time that does not depend on where they differ.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn healthz(State(api): State<Api>) -> Json<serde_json::Value> {
    Json(serde_json::json!({
        "status": if api.jobs.stopping() || crate::interrupt::requested() { "stopping" } else { "ok" },
        "running": api.jobs.active(),
    }))
}

async fn metrics(State(api): State<Api>) -> Response {
    let text = api.jobs.metrics.encode(api.jobs.keys.waiting_total());
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI).into_response()
}

/// A sync or entity as the API lists it.
#[derive(Serialize)]
struct Summary {
    name: String,
    kind: Kind,
    /// idle, queued or running.
    state: super::jobs::State,
    /// The run going or waiting, when there is one.
    current_run: Option<String>,
    schedule: String,
    after: Vec<String>,
    next_run: Option<chrono::DateTime<chrono::Utc>>,
    last_run: Option<RunView>,
    tags: Vec<String>,
    /// Keys (an entity's source ids) accepted and not yet run for.
    keys_waiting: u64,
    /// The sync's settings (no secrets: the destination by name and type only).
    config: serde_json::Value,
}

fn summary(api: &Api, name: &str) -> Option<Summary> {
    let jobs = &api.jobs;
    let target = jobs.targets.get(name)?;
    let config = &jobs.project.config;
    let (state, current_run) = jobs.state(name);
    let (tags, details) = match target.kind {
        Kind::Sync => {
            let s = config.syncs.get(name)?;
            let destination_type = config.destinations.get(&s.to).map(|d| d.kind().to_string());
            (
                s.tags.clone(),
                serde_json::json!({
                    "from": s.from,
                    "destination": s.to,
                    "destination_type": destination_type,
                    "object": s.object,
                    "behavior": s.behavior.to_string(),
                    "key": s.key.destinations(),
                    "cursor": s.cursor,
                    "send": match s.send { crate::config::SendMode::All => "all", crate::config::SendMode::Changed => "changed" },
                }),
            )
        }
        Kind::Entity => {
            let e = config.entities.get(name)?;
            (
                e.tags.clone(),
                serde_json::json!({
                    "fields": e.fields.keys().collect::<Vec<_>>(),
                    "sources": e.sources.keys().collect::<Vec<_>>(),
                }),
            )
        }
    };
    Some(Summary {
        name: name.to_string(),
        kind: target.kind,
        state,
        current_run,
        schedule: target.schedule.describe(),
        after: target.after.clone(),
        next_run: jobs.next_run(name),
        last_run: jobs.last_run(name),
        tags,
        keys_waiting: jobs.keys.waiting(name),
        config: details,
    })
}

fn list(api: &Api, kind: Kind) -> Vec<Summary> {
    api.jobs
        .targets
        .values()
        .filter(|t| t.kind == kind)
        .filter_map(|t| summary(api, &t.name))
        .collect()
}

async fn list_syncs(State(api): State<Api>) -> Json<Vec<Summary>> {
    Json(list(&api, Kind::Sync))
}

async fn list_entities(State(api): State<Api>) -> Json<Vec<Summary>> {
    Json(list(&api, Kind::Entity))
}

fn one(api: &Api, kind: Kind, name: &str) -> Answer<Summary> {
    match api.jobs.targets.get(name) {
        Some(t) if t.kind == kind => {
            summary(api, name).ok_or_else(|| not_found_named(kind_name(kind), name, api))
        }
        _ => Err(not_found_named(kind_name(kind), name, api)),
    }
}

async fn get_sync(State(api): State<Api>, Path(name): Path<String>) -> Answer<Json<Summary>> {
    one(&api, Kind::Sync, &name).map(Json)
}

async fn get_entity(State(api): State<Api>, Path(name): Path<String>) -> Answer<Json<Summary>> {
    one(&api, Kind::Entity, &name).map(Json)
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RunBody {
    #[serde(default)]
    full_resync: bool,
}

/// A JSON body that may be empty.
fn body_or_default<T: for<'de> Deserialize<'de> + Default>(body: &Bytes) -> Answer<T> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    json_object(body, "a JSON object")
}

#[derive(Serialize)]
struct Started {
    run_id: String,
    status: &'static str,
    /// Where to follow it.
    url: String,
}

fn start(api: &Api, kind: Kind, name: &str, body: &Bytes) -> Answer<(StatusCode, Json<Started>)> {
    if !api.jobs.targets.get(name).is_some_and(|t| t.kind == kind) {
        return Err(not_found_named(kind_name(kind), name, api));
    }
    let body: RunBody = body_or_default(body)?;
    let request = super::jobs::Request {
        full_resync: body.full_resync,
    };
    match api.jobs.start(name, Trigger::Api, request) {
        Ok(run_id) => Ok((
            StatusCode::ACCEPTED,
            Json(Started {
                url: format!("/api/runs/{run_id}"),
                run_id,
                status: "queued",
            }),
        )),
        Err(e @ StartError::Running { .. }) => Err(ApiError(StatusCode::CONFLICT, e.to_string())),
        Err(e @ StartError::Unknown(_)) => Err(ApiError(StatusCode::NOT_FOUND, e.to_string())),
        Err(e @ StartError::Stopping) => {
            Err(ApiError(StatusCode::SERVICE_UNAVAILABLE, e.to_string()))
        }
    }
}

async fn start_sync(
    State(api): State<Api>,
    Path(name): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Answer<(StatusCode, Json<Started>)> {
    start(&api, Kind::Sync, &name, &read_body(body)?)
}

async fn start_entity(
    State(api): State<Api>,
    Path(name): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Answer<(StatusCode, Json<Started>)> {
    start(&api, Kind::Entity, &name, &read_body(body)?)
}

#[derive(Deserialize)]
struct Limit {
    limit: Option<usize>,
}

fn limit(q: Result<Query<Limit>, QueryRejection>) -> Answer<Option<usize>> {
    q.map(|Query(l)| l.limit).map_err(|e| {
        ApiError(
            StatusCode::BAD_REQUEST,
            format!("limit must be a whole number: {e}"),
        )
    })
}

/// The most runs one history call returns.
const MAX_LIMIT: usize = 1000;

async fn runs_of(
    api: &Api,
    kind: Kind,
    name: &str,
    limit: Option<usize>,
) -> Answer<Json<Vec<RunView>>> {
    if !api.jobs.targets.get(name).is_some_and(|t| t.kind == kind) {
        return Err(not_found_named(kind_name(kind), name, api));
    }
    let limit = match limit {
        None => 20,
        Some(n) if (1..=MAX_LIMIT).contains(&n) => n,
        Some(n) => {
            return Err(ApiError(
                StatusCode::BAD_REQUEST,
                format!("limit {n}: ask for 1 to {MAX_LIMIT} runs"),
            ));
        }
    };
    let runs = history::runs(&api.jobs.project.state, &kind.history_name(name), limit)
        .await
        .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    Ok(Json(
        runs.iter().map(|r| RunView::from_record(r, kind)).collect(),
    ))
}

async fn sync_runs(
    State(api): State<Api>,
    Path(name): Path<String>,
    q: Result<Query<Limit>, QueryRejection>,
) -> Answer<Json<Vec<RunView>>> {
    runs_of(&api, Kind::Sync, &name, limit(q)?).await
}

async fn entity_runs(
    State(api): State<Api>,
    Path(name): Path<String>,
    q: Result<Query<Limit>, QueryRejection>,
) -> Answer<Json<Vec<RunView>>> {
    runs_of(&api, Kind::Entity, &name, limit(q)?).await
}

/// A finished run in history: its target's kind and record.
async fn find_run(api: &Api, run_id: &str) -> Answer<Option<(Kind, history::RunRecord)>> {
    if run_id.is_empty() || !run_id.chars().all(|c| c.is_ascii_alphanumeric()) {
        return Ok(None);
    }
    let state = &api.jobs.project.state;
    for t in api.jobs.targets.values() {
        let found = history::run(state, &t.kind.history_name(&t.name), run_id)
            .await
            .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
        if let Some(r) = found {
            return Ok(Some((t.kind, r)));
        }
    }
    Ok(None)
}

async fn list_alerts(
    State(api): State<Api>,
    q: Result<Query<Limit>, QueryRejection>,
) -> Answer<Json<Vec<history::AlertRecord>>> {
    let limit = match limit(q)? {
        None => 50,
        Some(n) if (1..=MAX_LIMIT).contains(&n) => n,
        Some(n) => {
            return Err(ApiError(
                StatusCode::BAD_REQUEST,
                format!("limit {n}: ask for 1 to {MAX_LIMIT} alerts"),
            ));
        }
    };
    history::alerts(&api.jobs.project.state, limit)
        .await
        .map(Json)
        .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))
}

fn no_run(run_id: &str) -> ApiError {
    ApiError(StatusCode::NOT_FOUND, format!("no run \"{run_id}\""))
}

async fn get_run(State(api): State<Api>, Path(run_id): Path<String>) -> Answer<Json<RunView>> {
    if let Some(v) = api.jobs.view(&run_id) {
        return Ok(Json(v));
    }
    match find_run(&api, &run_id).await? {
        Some((kind, r)) => Ok(Json(RunView::from_record(&r, kind))),
        None => Err(no_run(&run_id)),
    }
}

#[derive(Serialize)]
struct Sample {
    /// invalid (never sent) or rejected (refused by the destination).
    kind: history::RecordKind,
    key: Option<String>,
    reason: String,
    /// The record, as JSON.
    record: serde_json::Value,
}

async fn run_records(
    State(api): State<Api>,
    Path(run_id): Path<String>,
) -> Answer<Json<Vec<Sample>>> {
    let Some((kind, run)) = find_run(&api, &run_id).await? else {
        return match api.jobs.view(&run_id) {
            // Going, or ended without a history record yet.
            Some(_) => Ok(Json(Vec::new())),
            None => Err(no_run(&run_id)),
        };
    };
    let history_name = kind.history_name(run.sync.strip_prefix("hub.").unwrap_or(&run.sync));
    let samples = history::samples(&api.jobs.project.state, &history_name, &run)
        .await
        .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    Ok(Json(
        samples
            .into_iter()
            .map(|s| Sample {
                kind: s.kind,
                key: s.key,
                reason: s.reason,
                record: serde_json::from_str(&s.record)
                    .unwrap_or(serde_json::Value::String(s.record)),
            })
            .collect(),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KeysBody {
    keys: Vec<serde_json::Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct IdsBody {
    ids: Vec<serde_json::Value>,
}

#[derive(Serialize)]
struct KeysAccepted {
    accepted: usize,
    /// Keys (or ids) waiting for the sync (or entity) now, these included.
    waiting: u64,
}

/// The JSON object of a request's body, as `T` (serde alone would take a list for a struct);
/// `shape` says what it must look like.
fn json_object<T: serde::de::DeserializeOwned>(body: &Bytes, shape: &str) -> Answer<T> {
    let bad = |e: String| {
        ApiError(
            StatusCode::BAD_REQUEST,
            format!("the body must be {shape}: {e}"),
        )
    };
    match serde_json::from_slice::<serde_json::Value>(body) {
        Ok(v @ serde_json::Value::Object(_)) => {
            serde_json::from_value(v).map_err(|e| bad(e.to_string()))
        }
        Ok(_) => Err(bad("it is not a JSON object".into())),
        Err(e) => Err(bad(e.to_string())),
    }
}

/// Keys as people write them (see [`crate::keys::key_parts`]): a string, a whole number, or
/// for a key of `parts` parts a list of that many values. `what` says what they are (`key`,
/// `id`), `of` what they are keys of.
fn key_texts(
    values: Vec<serde_json::Value>,
    parts: usize,
    what: &str,
    of: &str,
) -> Answer<Vec<String>> {
    if values.len() > MAX_KEYS_PER_REQUEST {
        return Err(ApiError(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "{} {what}s in one request; send at most {MAX_KEYS_PER_REQUEST} per request",
                values.len()
            ),
        ));
    }
    let mut keys = Vec::with_capacity(values.len());
    for k in values {
        let text = match (k, parts) {
            (serde_json::Value::String(s), _) => s,
            // A whole number as written; 5.0 or 1e3 would become text no key has.
            (serde_json::Value::Number(n), 1) if n.is_i64() || n.is_u64() => n.to_string(),
            (v @ serde_json::Value::Number(_), 1) => {
                return Err(ApiError(
                    StatusCode::BAD_REQUEST,
                    format!(
                        "{what} {v} is not a whole number of at most 64 bits: send such a \
                         {what} as a string, exactly as {of} has it (JSON numbers this large \
                         or with a fraction cannot be read exactly)"
                    ),
                ));
            }
            (v @ serde_json::Value::Array(_), n) if n > 1 => v.to_string(),
            (v, n) => {
                return Err(ApiError(
                    StatusCode::BAD_REQUEST,
                    format!(
                        "{what} {v} is not a {what} of {of}: {}",
                        if n > 1 {
                            format!("its key has {n} parts, so each key is a list of {n} values")
                        } else {
                            format!("each {what} is a string or a whole number")
                        }
                    ),
                ));
            }
        };
        if parts > 1 {
            crate::keys::key_parts(&text, parts)
                .map_err(|why| ApiError(StatusCode::BAD_REQUEST, why))?;
        }
        keys.push(text);
    }
    Ok(keys)
}

/// Store keys for a run of `name` (ids of its `source`, for an entity) and start it, or have
/// it follow the run going.
async fn accept_keys(
    api: &Api,
    name: &str,
    source: Option<&str>,
    keys: Vec<String>,
) -> Answer<(StatusCode, Json<KeysAccepted>)> {
    let accepted = keys.len();
    if accepted > 0 {
        if api.jobs.stopping() {
            return Err(ApiError(
                StatusCode::SERVICE_UNAVAILABLE,
                "the server is stopping; send the keys again when it is back".into(),
            ));
        }
        api.jobs
            .keys
            .accept(name, source, keys)
            .await
            .map_err(|e| {
                ApiError(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("the keys could not be stored, so they were not accepted: {e}"),
                )
            })?;
        api.jobs.keys_arrived(name);
    }
    Ok((
        StatusCode::ACCEPTED,
        Json(KeysAccepted {
            accepted,
            waiting: api.jobs.keys.waiting(name),
        }),
    ))
}

async fn post_keys(
    State(api): State<Api>,
    Path(name): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Answer<(StatusCode, Json<KeysAccepted>)> {
    let body = read_body(body)?;
    // (The server's syncs and entities are the project's as it loaded them.)
    let Some(sync) = api.jobs.project.config.syncs.get(&name) else {
        return Err(not_found_named("sync", &name, &api));
    };
    let body: KeysBody = json_object(&body, "{\"keys\": [...]}")?;
    let parts = sync.key.parts().len();
    let keys = key_texts(body.keys, parts, "key", &format!("sync \"{name}\""))?;
    accept_keys(&api, &name, None, keys).await
}

async fn post_ids(
    State(api): State<Api>,
    Path((name, source)): Path<(String, String)>,
    body: Result<Bytes, BytesRejection>,
) -> Answer<(StatusCode, Json<KeysAccepted>)> {
    let body = read_body(body)?;
    let Some(entity) = api.jobs.project.config.entities.get(&name) else {
        return Err(not_found_named("entity", &name, &api));
    };
    if !entity.sources.contains_key(&source) {
        let names: Vec<&str> = entity.sources.keys().map(String::as_str).collect();
        return Err(ApiError(
            StatusCode::NOT_FOUND,
            format!(
                "entity \"{name}\" has no source \"{source}\"{} (its sources: {})",
                crate::names::suggest(&source, names.iter().copied()),
                names.join(", ")
            ),
        ));
    }
    let body: IdsBody = json_object(&body, "{\"ids\": [...]}")?;
    let ids = key_texts(
        body.ids,
        1,
        "id",
        &format!("source \"{source}\" of entity \"{name}\""),
    )?;
    accept_keys(&api, &name, Some(&source), ids).await
}

#[derive(Deserialize)]
struct BySource {
    source: Option<String>,
    id: Option<String>,
}

async fn golden_by_source(
    State(api): State<Api>,
    Path(name): Path<String>,
    Query(q): Query<BySource>,
) -> Answer<Response> {
    match (q.source, q.id) {
        (Some(source), Some(id)) => {
            golden(
                &api,
                &name,
                crate::hub::show::Lookup::SourceRecord { source, id },
            )
            .await
        }
        _ => Err(ApiError(
            StatusCode::BAD_REQUEST,
            "name a golden record: /golden/GOLDEN_ID, or /golden?source=SOURCE&id=ID".into(),
        )),
    }
}

async fn golden_by_id(
    State(api): State<Api>,
    Path((name, id)): Path<(String, String)>,
) -> Answer<Response> {
    let id: i64 = id.parse().map_err(|_| {
        ApiError(
            StatusCode::BAD_REQUEST,
            format!("\"{id}\" is not a golden id (a whole number)"),
        )
    })?;
    golden(&api, &name, crate::hub::show::Lookup::Golden(id)).await
}

async fn golden(api: &Api, entity: &str, lookup: crate::hub::show::Lookup) -> Answer<Response> {
    if !api
        .jobs
        .targets
        .get(entity)
        .is_some_and(|t| t.kind == Kind::Entity)
    {
        return Err(not_found_named("entity", entity, api));
    }
    let internal = |e: String| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e);
    let project = &api.jobs.project;
    let ctx = crate::session::session_context(&project.config.engine, &project.dir)
        .map_err(|e| internal(e.to_string()))?;
    project
        .state
        .register(&ctx)
        .map_err(|e| internal(e.to_string()))?;
    match crate::hub::show::golden_record(project, &ctx, entity, &lookup).await {
        Ok(record) => Ok(Json(record).into_response()),
        Err(e @ crate::hub::HubError::Settings { .. }) => {
            Err(ApiError(StatusCode::NOT_FOUND, e.to_string()))
        }
        Err(e) => Err(internal(e.to_string())),
    }
}
