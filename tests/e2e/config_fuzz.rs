//! Property-based fuzzing of the configuration: a valid `backflow.toml` (every source and
//! destination kind, HTTP endpoints and templates included), mutated at random (bytes cut,
//! inserted, repeated), is parsed and validated without a panic; a problem is always an error
//! with a message. (Coverage-guided fuzzing with cargo-fuzz is not set up: see the README.)

use std::path::PathBuf;

use backflow::config::{ConfigText, ProjectConfig, validate};
use proptest::prelude::*;

const VALID: &str = r#"
[engine]
memory_limit = "1GiB"

[sources.people]
type = "csv"
path = "people.csv"

[sources.wh]
type = "postgres"
url_env = "BACKFLOW_TEST_POSTGRES_URL"
tables = ["customers"]

[destinations.app]
type = "sqlite"
path = "out/app.db"

[destinations.files]
type = "file"
path = "out"
format = "parquet"

[destinations.api]
type = "http"
base_url = "http://127.0.0.1:9/api"
token_env = "BACKFLOW_TEST_API_TOKEN"
rate_limit = 10
concurrency = 4
timeout = "500ms"
headers = { "X-Version" = "2" }

[destinations.api.upsert]
path = "/{object}/batch"
batch_size = 50
wrap = "records"
record = { id = "{key|text}", props = "{fields_without_key}", trace = "{idempotency_key}" }
errors = "errors"
error_match = "index"
error_field = "index"

[destinations.api.delete]
path = "/{object}/archive"
wrap = "inputs"
record = { id = "{api_id}" }
lookup = { path = "/{object}/read", wrap = "inputs", result_key = "properties.{key_field}", case_insensitive_keys = ["email"] }

[destinations.hubspot]
type = "http"
preset = "hubspot"
token_env = "BACKFLOW_TEST_API_TOKEN"

[syncs.people_api]
from = "people"
to = "api"
object = "people"
behavior = "mirror"
key = "id"
fields = { rename = { name = "full_name" }, exclude = ["plan"] }

[syncs.people_app]
from = "people"
to = "app"
object = "people"
behavior = "upsert"
key = { source = "id", destination = "person_id" }
cursor = "updated_at"
cursor_lookback = "2h"
"#;

/// Pieces that make TOML and the templates inside it interesting.
fn piece() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("\"".to_string()),
        Just("'".to_string()),
        Just("{".to_string()),
        Just("}".to_string()),
        Just("[".to_string()),
        Just("]]".to_string()),
        Just("=".to_string()),
        Just("\n".to_string()),
        Just("\\".to_string()),
        Just("{key".to_string()),
        Just("|text}".to_string()),
        Just("{field.".to_string()),
        Just("é".to_string()),
        Just("𝄞".to_string()),
        Just("\u{0}".to_string()),
        Just("1e309".to_string()),
        Just("-0".to_string()),
        Just("[destinations.x]\ntype = \"http\"\n".to_string()),
        "[a-z_.]{1,8}",
        any::<char>().prop_map(|c| c.to_string()),
    ]
}

#[derive(Debug, Clone)]
enum Edit {
    Cut(usize, usize),
    Insert(usize, String),
    Repeat(usize, usize),
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        (any::<usize>(), 0usize..40).prop_map(|(a, n)| Edit::Cut(a, n)),
        (any::<usize>(), piece()).prop_map(|(a, p)| Edit::Insert(a, p)),
        (any::<usize>(), 1usize..60).prop_map(|(a, n)| Edit::Repeat(a, n)),
    ]
}

/// The nearest char boundary at or before `i`.
fn boundary(s: &str, i: usize) -> usize {
    let mut i = i % (s.len() + 1);
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

fn apply(text: &str, edits: &[Edit]) -> String {
    let mut s = text.to_string();
    for e in edits {
        match e {
            Edit::Cut(a, n) => {
                let a = boundary(&s, *a);
                let b = boundary(&s, (a + n).min(s.len()));
                s.replace_range(a..b.max(a), "");
            }
            Edit::Insert(a, p) => {
                let a = boundary(&s, *a);
                s.insert_str(a, p);
            }
            Edit::Repeat(a, n) => {
                let a = boundary(&s, *a);
                let b = boundary(&s, (a + n).min(s.len()));
                let part = s[a..b.max(a)].to_string();
                s.insert_str(a, &part);
            }
        }
    }
    s
}

#[test]
fn the_valid_config_is_valid() {
    let path = PathBuf::from("backflow.toml");
    let config = ProjectConfig::parse(VALID, &path).expect("parses");
    let text = ConfigText {
        path,
        text: VALID.to_string(),
    };
    let problems = validate(&config, &[], &text);
    assert!(problems.is_empty(), "{problems:?}");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1500, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn mutated_configs_never_panic(edits in proptest::collection::vec(edit(), 1..6)) {
        let text = apply(VALID, &edits);
        let path = PathBuf::from("backflow.toml");
        match ProjectConfig::parse(&text, &path) {
            Ok(config) => {
                let t = ConfigText { path, text: text.clone() };
                for p in validate(&config, &[], &t) {
                    prop_assert!(!p.trim().is_empty());
                }
            }
            Err(e) => prop_assert!(!e.to_string().trim().is_empty()),
        }
    }
}

/// Values that validation has to judge: templates, paths, URLs, durations, names.
fn value() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        Just("{".to_string()),
        Just("{key".to_string()),
        Just("{key}{key}".to_string()),
        Just("{api_id}".to_string()),
        Just("{field.}".to_string()),
        Just("{fields|text|text}".to_string()),
        Just("/{object}/{key}/../{key}".to_string()),
        Just("..".to_string()),
        Just("http://".to_string()),
        Just("ftp://x".to_string()),
        Just("http://h/?q#f".to_string()),
        Just("0ms".to_string()),
        Just("99999999999999999999s".to_string()),
        Just("1e309".to_string()),
        Just("NaN".to_string()),
        Just("mirror".to_string()),
        Just("\u{0}".to_string()),
        Just("é𝄞\n\t".to_string()),
        any::<String>(),
    ]
}

/// The byte ranges of the contents of the config's basic strings (`"…"`).
fn string_spans(text: &str) -> Vec<(usize, usize)> {
    let mut spans = Vec::new();
    let mut open = None;
    for (i, c) in text.char_indices() {
        match (c, open) {
            ('"', None) => open = Some(i + 1),
            ('"', Some(start)) => {
                spans.push((start, i));
                open = None;
            }
            ('\n', _) => open = None,
            _ => {}
        }
    }
    spans
}

fn toml_escape(s: &str) -> String {
    let mut out = String::new();
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", c as u32 & 0xFFFF)),
            c => out.push(c),
        }
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1500, failure_persistence: None, ..ProptestConfig::default() })]

    /// Any string value replaced by any other: the file still parses as TOML, so this reaches
    /// the validation of every key (templates, paths, URLs, durations, names).
    #[test]
    fn any_string_value_is_judged_without_a_panic(
        changes in proptest::collection::vec((any::<usize>(), value()), 1..4)
    ) {
        let mut text = VALID.to_string();
        for (at, v) in &changes {
            let spans = string_spans(&text);
            let (a, b) = spans[at % spans.len()];
            text.replace_range(a..b, &toml_escape(v));
        }
        let path = PathBuf::from("backflow.toml");
        match ProjectConfig::parse(&text, &path) {
            Ok(config) => {
                let t = ConfigText { path, text: text.clone() };
                for p in validate(&config, &[], &t) {
                    prop_assert!(!p.trim().is_empty());
                }
            }
            Err(e) => prop_assert!(!e.to_string().trim().is_empty()),
        }
    }
}
