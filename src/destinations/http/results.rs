//! Reading what an API answered: which records a 2xx answer refused or confirmed, and the
//! messages of errors.

use std::collections::{HashMap, HashSet};

use serde_json::Value;

use super::client::{status_line, truncate};
use super::config::{EndpointConfig, Match};
use super::template::{self, Record};
use super::{NO_RECORD_FOR_UPDATE, Reply, WriteOp};
use reqwest::StatusCode;

/// A 2xx response: which records the API refused, and (with `results`) which it confirmed.
/// Nothing is sent again from here: the API took the request, so a record whose fate is
/// unclear is rejected (and sent again by the next run), never re-sent at once.
pub(super) fn read_results(
    op: WriteOp,
    endpoint: &EndpointConfig,
    records: &[Record],
    rows: &[usize],
    body: &str,
) -> Reply {
    let done = |rejected, assigned| Reply::Done {
        rejected,
        skipped: 0,
        assigned,
    };
    let id_path = endpoint
        .result_id
        .as_deref()
        .filter(|_| op == WriteOp::Create);
    if endpoint.errors.is_none() && endpoint.results.is_none() && id_path.is_none() {
        return done(vec![], vec![]);
    }
    let json: Value = match serde_json::from_str(body) {
        Ok(v) => v,
        Err(_) if body.trim().is_empty() && endpoint.results.is_none() => Value::Null,
        // The records were created: rejected, they would be created again.
        Err(e) if id_path.is_some() && endpoint.errors.is_none() && endpoint.results.is_none() => {
            tracing::warn!(
                answer = truncate(body, 200),
                "the API took the create, but its answer is not JSON ({e}): the ids it gave are unknown"
            );
            Value::Null
        }
        Err(e) => {
            let reason = format!(
                "the API took the request, but its answer is not the JSON expected ({e}), so which records it applied is unknown: {}",
                truncate(body, 200)
            );
            return done(rows.iter().map(|r| (*r, reason.clone())).collect(), vec![]);
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
    let assigned = match id_path {
        Some(path) => {
            let refused: HashSet<usize> = rejected.iter().map(|(r, _)| *r).collect();
            assigned_ids(endpoint, path, &json, rows, &locate, &refused, records)
        }
        None => Vec::new(),
    };
    done(rejected, assigned)
}

/// The ids the API gave the records it created: at `path` in the answer (a per-record
/// request), or in each of the answer's results, located by `result_match`. A created record
/// whose id the answer does not give is left without one, with a warning (rejecting it would
/// create it again).
fn assigned_ids(
    endpoint: &EndpointConfig,
    path: &str,
    json: &Value,
    rows: &[usize],
    locate: &dyn Fn(Match, &Value) -> Option<usize>,
    refused: &HashSet<usize>,
    records: &[Record],
) -> Vec<(usize, String)> {
    let id_of = |v: &Value| {
        template::lookup(v, path)
            .into_iter()
            .find(|id| !id.is_null())
            .map(template::text)
            .filter(|id| !id.is_empty())
    };
    let mut ids: Vec<(usize, String)> = Vec::new();
    if endpoint.is_per_record() {
        if let (Some(row), Some(id)) = (rows.first(), id_of(json)) {
            ids.push((*row, id));
        }
    } else if let (Some(list), Some(how), Some(field)) = (
        &endpoint.results,
        endpoint.result_match,
        &endpoint.result_field,
    ) {
        for result in template::lookup(json, list) {
            let row = template::lookup(result, field)
                .into_iter()
                .find_map(|v| locate(how, v));
            if let (Some(row), Some(id)) = (row, id_of(result)) {
                ids.push((row, id));
            }
        }
    }
    ids.retain(|(row, _)| !refused.contains(row));
    for row in rows {
        if !refused.contains(row) && !ids.iter().any(|(r, _)| r == row) {
            tracing::warn!(
                key = template::text(&records[*row].key),
                result_id = path,
                "the API created the record, but its answer gives no id at result_id"
            );
        }
    }
    ids
}

pub(super) const AMBIGUOUS: &str =
    "the API's answer matches this key only ignoring case, and not unambiguously";

/// Match keys (row, key as text) to what an id lookup found (key as the API wrote it, id).
/// Returns the id of each row matched and the rows left unmatched because the match was
/// ambiguous. A key matches exactly; with `fold`, also a found key that differs only in ASCII
/// case, when exactly one does and no other row claims the same id.
pub(super) fn match_ids(
    keys: &[(usize, String)],
    found: &[(String, Value)],
    fold: bool,
) -> (HashMap<usize, Value>, Vec<usize>) {
    let mut exact: HashMap<&str, Option<&Value>> = HashMap::new();
    let mut folded: HashMap<String, Option<&Value>> = HashMap::new();
    for (key, id) in found {
        // Two results for one key (with other ids) make it ambiguous (None).
        exact
            .entry(key.as_str())
            .and_modify(|v| {
                if *v != Some(id) {
                    *v = None
                }
            })
            .or_insert(Some(id));
        folded
            .entry(key.to_ascii_lowercase())
            .and_modify(|v| {
                if *v != Some(id) {
                    *v = None
                }
            })
            .or_insert(Some(id));
    }
    let mut ids: HashMap<usize, Value> = HashMap::new();
    let mut ambiguous = Vec::new();
    for (row, key) in keys {
        let hit = match exact.get(key.as_str()) {
            Some(hit) => *hit,
            None if fold => match folded.get(&key.to_ascii_lowercase()) {
                Some(hit) => *hit,
                None => continue,
            },
            None => continue,
        };
        match hit {
            Some(id) => {
                ids.insert(*row, id.clone());
            }
            None => ambiguous.push(*row),
        }
    }
    // One id claimed by several rows (keys that fold together) is no answer for any of them.
    let mut claims: HashMap<String, Vec<usize>> = HashMap::new();
    for (row, id) in &ids {
        claims.entry(id.to_string()).or_default().push(*row);
    }
    for rows in claims.into_values().filter(|r| r.len() > 1) {
        for r in rows {
            ids.remove(&r);
            ambiguous.push(r);
        }
    }
    ambiguous.sort_unstable();
    (ids, ambiguous)
}

/// A key as text for matching: numbers in their shortest form (`7.0` and `7` alike).
pub(super) fn key_text(v: &Value) -> String {
    match v.as_f64() {
        Some(f) if v.is_f64() && f.fract() == 0.0 && f.abs() < 9.007_199_254_740_992e15 => {
            format!("{}", f as i64)
        }
        _ => template::text(v),
    }
}

/// Whether an API's message says the record does not exist.
pub(super) fn looks_missing(message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    m.contains("not found") || m.contains("not exist") || m.contains("object_not_found")
}

/// One error's message: at `path`, else its `message`, else the error as JSON.
pub(super) fn error_message(error: &Value, path: Option<&str>) -> String {
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
pub(super) fn whole_message(
    status: StatusCode,
    body: &str,
    endpoint: Option<&EndpointConfig>,
) -> String {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::destinations::http::template::Context;
    use proptest::prelude::*;
    use serde_json::json;

    fn records(n: usize) -> Vec<Record> {
        (0..n)
            .map(|i| {
                Record::with_fields(
                    serde_json::Map::new(),
                    json!(format!("k{i}")),
                    format!("t{i}"),
                )
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

    #[test]
    fn ids_match_exactly_or_by_case_when_unambiguous() {
        let found = vec![
            ("a@x.io".to_string(), json!("1")),
            ("b@x.io".to_string(), json!("2")),
            ("dup".to_string(), json!("3")),
            ("DUP".to_string(), json!("4")),
        ];
        let keys = |ks: &[&str]| -> Vec<(usize, String)> {
            ks.iter()
                .enumerate()
                .map(|(i, k)| (i, k.to_string()))
                .collect()
        };
        // Exact matches; a key the API does not have is neither matched nor ambiguous.
        let (ids, amb) = match_ids(&keys(&["a@x.io", "zz"]), &found, false);
        assert_eq!(
            (ids.get(&0), ids.get(&1), amb.len()),
            (Some(&json!("1")), None, 0)
        );
        // Without folding, case matters.
        let (ids, _) = match_ids(&keys(&["A@x.io"]), &found, false);
        assert!(ids.is_empty());
        // With folding, a single candidate matches…
        let (ids, amb) = match_ids(&keys(&["A@x.io"]), &found, true);
        assert_eq!((ids.get(&0), amb.len()), (Some(&json!("1")), 0));
        // …two candidates that fold together do not…
        let (ids, amb) = match_ids(&keys(&["Dup"]), &found, true);
        assert!(ids.is_empty());
        assert_eq!(amb, vec![0]);
        // …while their exact keys still match exactly.
        let (ids, _) = match_ids(&keys(&["dup", "DUP"]), &found, true);
        assert_eq!(
            (ids.get(&0), ids.get(&1)),
            (Some(&json!("3")), Some(&json!("4")))
        );
        // Two of our keys claiming one record: neither gets it.
        let (ids, amb) = match_ids(&keys(&["b@x.io", "B@x.io"]), &found, true);
        assert!(ids.is_empty());
        assert_eq!(amb, vec![0, 1]);
    }

    /// What a create answer says of the ids the API gave: (row, id) pairs and rejected rows.
    fn created(
        endpoint: &EndpointConfig,
        rows: &[usize],
        body: &str,
    ) -> (Vec<(usize, String)>, Vec<usize>) {
        let recs = records(4);
        match read_results(WriteOp::Create, endpoint, &recs, rows, body) {
            Reply::Done {
                rejected, assigned, ..
            } => (assigned, rejected.into_iter().map(|(r, _)| r).collect()),
            Reply::Split(m) => panic!("split: {m}"),
        }
    }

    #[test]
    fn a_create_answer_gives_the_ids_the_api_assigned() {
        // One record per request: the id is in the answer itself, a number or a text.
        let single = EndpointConfig {
            path: "/x".into(),
            per_record: true,
            result_id: Some("data.id".into()),
            ..EndpointConfig::default()
        };
        assert_eq!(
            created(&single, &[2], r#"{"data": {"id": 9007199254740993}}"#),
            (vec![(2, "9007199254740993".to_string())], vec![])
        );
        assert_eq!(
            created(&single, &[1], r#"{"data": {"id": "c-7"}}"#),
            (vec![(1, "c-7".to_string())], vec![])
        );
        // No id, a null one, or an answer that is not JSON: created, without an id (sending
        // it again would create it twice).
        for body in [
            r#"{"data": {}}"#,
            r#"{"data": {"id": null}}"#,
            "Created",
            "",
        ] {
            assert_eq!(created(&single, &[0], body), (vec![], vec![]), "{body}");
        }
        // Batches: each result names its record (here by position) and its id; a refused
        // record gets none.
        let batch = EndpointConfig {
            path: "/x/batch".into(),
            errors: Some("errors".into()),
            error_match: Some(Match::Index),
            error_field: Some("index".into()),
            results: Some("results".into()),
            result_match: Some(Match::Index),
            result_field: Some("index".into()),
            result_id: Some("id".into()),
            ..EndpointConfig::default()
        };
        let body = r#"{"results": [{"index": 2, "id": 30}, {"index": 0, "id": 10}, {"index": 1, "id": 20}],
                       "errors": [{"index": 1, "message": "bad"}]}"#;
        let (mut ids, rejected) = created(&batch, &[3, 1, 0], body);
        ids.sort();
        assert_eq!(ids, vec![(0, "30".to_string()), (3, "10".to_string())]);
        assert_eq!(rejected, vec![1]);
        // Other operations read no ids.
        let recs = records(4);
        let Reply::Done { assigned, .. } = read_results(
            WriteOp::Upsert,
            &single,
            &recs,
            &[0],
            r#"{"data": {"id": 5}}"#,
        ) else {
            panic!("split")
        };
        assert!(assigned.is_empty());
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
            let Reply::Done {
                rejected, skipped, ..
            } =
                read_results(WriteOp::Upsert, &ep, &all, &rows, &body)
            else {
                panic!("a 2xx answer is never split");
            };
            prop_assert_eq!(skipped, 0);
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
            let ids = vec!["id".to_string()];
            let ctx = Context { key: &ids, object: "people" };
            let r = Record::with_fields(serde_json::Map::new(), json!(key.clone()), String::new());
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
