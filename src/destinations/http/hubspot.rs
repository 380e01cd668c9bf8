//! `preset = "hubspot"`: HubSpot's CRM objects batch API (contacts, companies, deals, tickets
//! or a custom object's type id), following its public reference:
//!
//! - upsert: `POST /crm/v3/objects/{object}/batch/upsert`, inputs
//!   `{"idProperty", "id", "properties", "objectWriteTraceId"}`, matched on the sync's key
//!   (which must be a unique property, such as `email` for contacts or `domain` for companies);
//! - update-only: `POST …/batch/update` with the same inputs;
//! - create-only and append-only: `POST …/batch/create`, inputs `{"properties", "objectWriteTraceId"}`;
//! - at most 100 inputs per request, property values as text (NULL clears a property, as `""`);
//! - refused inputs come back in `errors[]` (207 Multi-Status) and are tied to records by the
//!   `objectWriteTraceId` each input carries; upsert and update results echo it, and only echoed
//!   records count as written;
//! - authentication by a private app's access token (`token_env`), and `GET
//!   /crm/v3/objects/{object}?limit=1` as the check before a run;
//! - 9 requests per second by default (HubSpot allows 100 to 190 per 10 seconds per app).
//!
//! - mirror and delete: HubSpot archives only by its own record ids, so each batch of keys is
//!   first read with `POST …/batch/read` (`idProperty` = the key field), and the ids found go
//!   to `POST …/batch/archive`; keys HubSpot does not have are already gone.

use serde_json::json;

use super::config::{EndpointConfig, HttpDestinationConfig, LookupConfig, Match};

pub(super) fn apply(user: &HttpDestinationConfig) -> HttpDestinationConfig {
    let mut c = user.clone();
    c.base_url
        .get_or_insert_with(|| "https://api.hubapi.com".into());
    c.rate_limit.get_or_insert(9.0);
    c.concurrency.get_or_insert(4);
    c.check_path
        .get_or_insert_with(|| "/crm/v3/objects/{object}?limit=1".into());
    let keyed = json!({
        "idProperty": "{key_field}",
        "id": "{key|text}",
        "properties": "{fields|text}",
        "objectWriteTraceId": "{idempotency_key}"
    });
    let unkeyed = json!({
        "properties": "{fields|text}",
        "objectWriteTraceId": "{idempotency_key}"
    });
    let endpoint = |action: &str, record: &serde_json::Value| EndpointConfig {
        method: Some("POST".into()),
        path: format!("/crm/v3/objects/{{object}}/batch/{action}"),
        per_record: false,
        batch_size: Some(100),
        wrap: Some("inputs".into()),
        record: Some(record.clone()),
        errors: Some("errors".into()),
        error_match: Some(Match::Trace),
        error_field: Some("context.objectWriteTraceId".into()),
        error_message: Some("message".into()),
        results: Some("results".into()),
        result_match: Some(Match::Trace),
        result_field: Some("objectWriteTraceId".into()),
        lookup: None,
        missing: None,
        exists: None,
        result_id: None,
    };
    c.upsert.get_or_insert_with(|| endpoint("upsert", &keyed));
    c.update.get_or_insert_with(|| endpoint("update", &keyed));
    // HubSpot's reference shows `objectWriteTraceId` echoed in upsert and update results, not
    // in create's: creates are taken as written unless an error names them.
    c.create.get_or_insert_with(|| EndpointConfig {
        results: None,
        result_match: None,
        result_field: None,
        ..endpoint("create", &unkeyed)
    });
    // Archiving takes HubSpot's record ids: they are read first by the sync's key
    // (`batch/read` with `idProperty`); keys HubSpot does not have are already gone.
    c.delete.get_or_insert_with(|| EndpointConfig {
        method: Some("POST".into()),
        path: "/crm/v3/objects/{object}/batch/archive".into(),
        per_record: false,
        batch_size: Some(100),
        wrap: Some("inputs".into()),
        record: Some(json!({"id": "{api_id|text}"})),
        lookup: Some(LookupConfig {
            method: Some("POST".into()),
            path: "/crm/v3/objects/{object}/batch/read".into(),
            wrap: Some("inputs".into()),
            extra: Some(json!({"idProperty": "{key_field}", "properties": ["{key_field}"]})),
            record: Some(json!({"id": "{key|text}"})),
            results: Some("results".into()),
            result_key: "properties.{key_field}".into(),
            result_id: Some("id".into()),
            // 207: OBJECT_NOT_FOUND for keys HubSpot does not have; any other error rejects.
            errors: Some("errors".into()),
            error_key: Some("context.ids".into()),
            // HubSpot stores e-mail addresses in lower case.
            case_insensitive_keys: vec!["email".into()],
        }),
        ..EndpointConfig::default()
    });
    c
}
