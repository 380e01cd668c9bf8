//! Field lookups (`[lookups.OBJECT]`): finding records by one of their fields, for syncs'
//! `fields.lookup`. Values go one per request (`{value}` in the path, GET by default) or in
//! batches in a request body; a record listed in the answer counts for a value only when its
//! `result_by` equals the value exactly, so a search that also returns near matches never
//! decides a field. An API that cannot be asked (down, timing out, refusing the credentials)
//! fails the run; a refusal of one search rejects the rows of its values.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use arrow::array::{ArrayRef, RecordBatch};
use arrow::datatypes::{Field, Schema};
use futures::StreamExt;
use reqwest::Method;
use serde_json::Value;

use super::client::{Answer, Request, status_line, truncate};
use super::config::{FieldLookupConfig, fill_names};
use super::results::key_text;
use super::template::{self, Context, Record};
use super::{Fatal, HttpWriter, Shared, redact};
use crate::destinations::{DestinationError, Found, LookupQuery};

/// A lookup template in the names the record templates know: `{value}` is the record's key,
/// `{by}` its key field.
fn translate(s: &str) -> String {
    s.replace("{value}", "{key}")
        .replace("{value|text}", "{key|text}")
        .replace("{by}", "{key_field}")
}

fn translate_value(v: &Value) -> Value {
    match v {
        Value::String(s) => Value::String(translate(s)),
        Value::Array(items) => Value::Array(items.iter().map(translate_value).collect()),
        Value::Object(m) => Value::Object(
            m.iter()
                .map(|(k, v)| (k.clone(), translate_value(v)))
                .collect(),
        ),
        other => other.clone(),
    }
}

impl HttpWriter {
    pub(super) async fn find_records(
        &mut self,
        query: &LookupQuery,
        values: &ArrayRef,
    ) -> Result<Vec<Found>, DestinationError> {
        let s = &self.shared;
        // (Not a write: the destination's own words, without "write failed".)
        let fail = |reason: String| DestinationError::Incompatible {
            destination: s.destination.clone(),
            object: query.object.clone(),
            reason: redact(&reason, &s.secrets),
        };
        let config = s.lookups.get(&query.object).ok_or_else(|| {
            fail(format!(
                "no [destinations.{}.lookups.{}] says how to find {} records",
                s.destination, query.object, query.object
            ))
        })?;
        let schema = Arc::new(Schema::new(vec![Field::new(
            &query.by,
            values.data_type().clone(),
            true,
        )]));
        let batch = RecordBatch::try_new(schema, vec![values.clone()])
            .map_err(|e| fail(format!("cannot encode the values looked up: {e}")))?;
        let scope = template::Scope {
            sync: &s.target.sync,
            object: &query.object,
            op: "lookup",
            version: s.target.version,
        };
        let records = template::records(&batch, std::slice::from_ref(&query.by), &scope)
            .map_err(|e| fail(format!("cannot encode the values looked up as JSON: {e}")))?;
        let size = if config.per_value() {
            1
        } else {
            config.batch_size.unwrap_or(100).max(1)
        };
        let chunks: Vec<Vec<usize>> = (0..records.len())
            .collect::<Vec<_>>()
            .chunks(size)
            .map(<[usize]>::to_vec)
            .collect();
        // The first failure that stops the run stops the lookups at once (see `deliver_batch`).
        let mut parts = std::pin::pin!(
            futures::stream::iter(chunks)
                .map(|rows| s.find(config, query, &records, rows))
                .buffer_unordered(s.client.concurrency() * 2)
        );
        let mut out = vec![Found::Nothing; records.len()];
        while let Some(part) = parts.next().await {
            for (row, found) in part.map_err(|Fatal(reason)| fail(reason))? {
                if let Some(slot) = out.get_mut(row) {
                    *slot = found;
                }
            }
        }
        Ok(out)
    }
}

impl Shared {
    /// One lookup request for the values `rows` (indices into `values`).
    async fn find(
        &self,
        config: &FieldLookupConfig,
        query: &LookupQuery,
        values: &[Record],
        rows: Vec<usize>,
    ) -> Result<Vec<(usize, Found)>, Fatal> {
        let all = |found: Found| -> Vec<(usize, Found)> {
            rows.iter().map(|r| (*r, found.clone())).collect()
        };
        let key = [query.by.clone()];
        let ctx = Context {
            key: &key,
            object: &query.object,
        };
        let per_value = config.per_value();
        let by_segment =
            percent_encoding::utf8_percent_encode(&query.by, percent_encoding::NON_ALPHANUMERIC)
                .to_string();
        let path = translate(&config.path).replace("{key_field}", &by_segment);
        let single = per_value.then(|| &values[rows[0]]);
        let path = match template::render_path(&path, single, &ctx) {
            Ok(p) => p,
            Err(e) => return Ok(all(Found::Refused(e))),
        };
        let method = config.method();
        let body = (method != Method::GET).then(|| {
            let t = config
                .record
                .as_ref()
                .map(translate_value)
                .unwrap_or_else(|| Value::String("{key}".into()));
            let items: Vec<Value> = rows
                .iter()
                .map(|r| template::render(&t, &values[*r], &ctx))
                .collect();
            let payload = match single {
                Some(_) => items.into_iter().next().unwrap_or(Value::Null),
                None => Value::Array(items),
            };
            let extra = config
                .extra
                .as_ref()
                .map(|e| fill_names(&translate_value(e), &query.by, &query.object));
            template::wrapped(payload, config.wrap.as_deref(), extra)
                .to_string()
                .into_bytes()
        });
        let url = format!("{}{path}", self.base_url);
        let answer = self
            .client
            .send(&Request {
                method,
                url: url.clone(),
                body,
                idempotency_key: None,
            })
            .await;
        let what = format!("looking up {} records by {}", query.object, query.by);
        let (status, text) = match answer {
            Answer::Response { status, body } => {
                self.gave_up_in_a_row.store(0, Ordering::Relaxed);
                (status, body)
            }
            Answer::GaveUp { attempts, last, .. } => {
                return Err(Fatal(format!(
                    "{what} at {url} kept failing ({attempts} attempts): {last}"
                )));
            }
            Answer::Broken(e) => return Err(Fatal(format!("{what}: {url}: {e}"))),
        };
        if status.as_u16() == 404 && per_value {
            return Ok(all(Found::Nothing));
        }
        if !status.is_success() {
            return match status.as_u16() {
                300..=399 => Err(Fatal(format!(
                    "{url} answered with a redirect ({status}); point base_url at the final address"
                ))),
                401 | 403 | 407 => Err(Fatal(format!(
                    "{what}: the API refused the credentials: {}",
                    status_line(status, &text)
                ))),
                400..=499 => Ok(all(Found::Refused(format!(
                    "{what} was refused: {}",
                    status_line(status, &text)
                )))),
                _ => Err(Fatal(format!("{what}: {}", status_line(status, &text)))),
            };
        }
        let Ok(json) = serde_json::from_str::<Value>(&text) else {
            return Err(Fatal(format!(
                "{what}: the answer of {url} is not JSON: {}",
                truncate(&text, 200)
            )));
        };
        let results_path = config.results.as_deref().unwrap_or("");
        if !template::present(&json, results_path) {
            return Err(Fatal(format!(
                "{what}: the answer of {url} has no \"{results_path}\" (set results to where it lists the records)"
            )));
        }
        let by_path = config.result_by.as_deref().unwrap_or(&query.by);
        // Value (as text) → the distinct `returns` values of the records that have it.
        let mut found: HashMap<String, Vec<Option<String>>> = HashMap::new();
        for result in template::lookup(&json, results_path) {
            let Some(by) = template::lookup(result, by_path)
                .first()
                .map(|v| key_text(v))
            else {
                return Err(Fatal(format!(
                    "{what}: the answer of {url} lists a record without \"{by_path}\" (set result_by to the path of {} in its records): {}",
                    query.by,
                    truncate(&result.to_string(), 200)
                )));
            };
            let returned = template::lookup(result, &query.returns)
                .first()
                .map(|v| key_text(v));
            let slot = found.entry(by).or_default();
            if !slot.contains(&returned) {
                slot.push(returned);
            }
        }
        Ok(rows
            .iter()
            .map(|r| {
                let value = key_text(&values[*r].key);
                let outcome = match found.get(&value).map(Vec::as_slice) {
                    None | Some([]) => Found::Nothing,
                    Some([Some(id)]) => Found::One(id.clone()),
                    Some([None]) => Found::Refused(format!(
                        "the {} record whose {} is {value:?} has no \"{}\"",
                        query.object, query.by, query.returns
                    )),
                    Some(many) => Found::Many(many.len()),
                };
                (*r, outcome)
            })
            .collect())
    }
}
