//! The HTTP destination against the fake API of `tests/common/api.rs` (loopback only): upserts
//! in batches with per-record errors, updates and deletes one record per request (`PATCH` and
//! `DELETE /{object}/{key}`: a 404 rejects an update and completes a delete), creates one
//! record per request (a 409 is a record already there), appends to the object's event log.
//! The API validates `email` fields; it has no schema.

use async_trait::async_trait;
use serde_json::{Map, Value};

use crate::common::api::{FakeApi, Faults};
use crate::conformance::text::json_text;
use crate::conformance::{
    Capabilities, DestinationFixture, Fault, KEY, NULL, ObjectSchema, Seed, Setup,
};

pub struct HttpFixture {
    api: FakeApi,
}

pub async fn open(_setup: Setup) -> Option<Box<dyn DestinationFixture>> {
    Some(Box::new(HttpFixture {
        api: FakeApi::start(Faults::default()).await,
    }))
}

#[async_trait]
impl DestinationFixture for HttpFixture {
    fn toml(&self) -> String {
        format!(
            r#"[destinations.dest]
type = "http"
base_url = "{url}/api"
token_env = "BACKFLOW_TEST_API_TOKEN"
concurrency = 4

[destinations.dest.upsert]
path = "/{{object}}/batch"
batch_size = 100
wrap = "records"
errors = "errors"
error_match = "index"
error_field = "index"
error_message = "message"
results = "results"
result_match = "key"
result_field = "id"

[destinations.dest.update]
method = "PATCH"
path = "/{{object}}/{{key}}"

[destinations.dest.create]
path = "/{{object}}"
per_record = true

[destinations.dest.append]
path = "/{{object}}/append"
batch_size = 100
wrap = "records"
errors = "errors"
error_match = "index"
error_field = "index"
error_message = "message"

[destinations.dest.delete]
method = "DELETE"
path = "/{{object}}/{{key}}"
"#,
            url = self.api.url()
        )
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            checks_records: true,
            editable: true,
            lists_records: false,
            refuses: vec![(Fault::EmailWithoutAt, "is not a valid email address")],
            types: None,
            primary_key: false,
            min_date: "0001-01-01",
            empty_text_is_null: false,
            column_defaults: false,
            applies_per_batch: true,
            composite_keys: false,
        }
    }

    async fn seed(&self, object: &str, seed: Seed<'_>) {
        let mut s = self.api.state.lock().unwrap();
        for row in &seed.rows {
            let mut record = Map::new();
            for (i, (c, v)) in seed.columns.iter().zip(row).enumerate() {
                let value = match (i, v.as_str()) {
                    (_, NULL) => Value::Null,
                    (0, v) => Value::from(v.parse::<i64>().unwrap()),
                    (_, v) => Value::from(v),
                };
                record.insert(c.to_string(), value);
            }
            if seed.keyed {
                let stored = s
                    .objects
                    .entry(object.to_string())
                    .or_default()
                    .entry(row[0].clone())
                    .or_insert_with(|| Value::Object(Map::new()));
                if let Value::Object(m) = stored {
                    m.extend(record);
                }
            } else {
                s.logs
                    .entry(object.to_string())
                    .or_default()
                    .push(Value::Object(record));
            }
        }
    }

    async fn create_refusing(&self, _object: &str) {}

    async fn read(&self, object: &str, columns: &[&str]) -> Vec<Vec<String>> {
        let s = self.api.state.lock().unwrap();
        let records: Vec<Value> = match s.logs.get(object) {
            Some(log) => log.clone(),
            None => s
                .objects
                .get(object)
                .map(|m| {
                    m.iter()
                        .map(|(key, r)| {
                            // Stored under the key the request named: it must be the record's.
                            assert_eq!(json_text(&r[KEY]), *key, "{r}");
                            r.clone()
                        })
                        .collect()
                })
                .unwrap_or_default(),
        };
        records
            .iter()
            .map(|r| {
                columns
                    .iter()
                    .map(|c| r.get(*c).map_or(NULL.to_string(), json_text))
                    .collect()
            })
            .collect()
    }

    async fn schema(&self, _object: &str) -> Option<ObjectSchema> {
        None
    }

    async fn touched(&self, _object: &str) -> Option<String> {
        // Every request but reads.
        let writes = self.api.log().iter().filter(|l| l.method != "GET").count();
        Some(format!("{writes} write requests"))
    }

    async fn cleanup(&self) {}
}
