//! Records as JSON, the templates that shape them into request bodies and paths, and the paths
//! that read per-record results out of a response.
//!
//! A record template is any JSON value (written as TOML in `backflow.toml`). A string in it that
//! is exactly one placeholder, like `"{key}"`, becomes that value with its JSON type; a string
//! with placeholders among other text, like `"user-{key}"`, becomes text. Placeholders:
//!
//! | placeholder | value |
//! |---|---|
//! | `{fields}` | the record: an object of every field the sync sends |
//! | `{fields_without_key}` | the same without the key field |
//! | `{key}` | the key's value |
//! | `{key_field}` | the key field's name |
//! | `{field.NAME}` | one field's value |
//! | `{object}` | the sync's object |
//! | `{idempotency_key}` | a stable hex id of this sync, object, operation and record content |
//! | `{api_id}` | the API's own id for the record, found by the endpoint's `lookup` |
//!
//! A `|text` suffix (`{key|text}`, `{fields|text}`) turns values into text, and NULL into `""`
//! (what many APIs, HubSpot among them, read as "clear this field").

use arrow::array::RecordBatch;
use arrow::error::ArrowError;
use serde_json::{Map, Value};

/// The names a template may use, besides `field.NAME`.
const NAMES: [&str; 7] = [
    "api_id",
    "fields",
    "fields_without_key",
    "key",
    "key_field",
    "object",
    "idempotency_key",
];

/// What a record's idempotency key is derived from besides its content.
pub struct Scope<'a> {
    pub sync: &'a str,
    pub object: &'a str,
    pub op: &'a str,
    /// The state version the run commits: a run repeated after a crash sends the same keys,
    /// the next run (after a commit) new ones, so that a value set again later (A, B, A) is
    /// not taken for a repeat of the first request.
    pub version: u64,
}

/// One record of a batch, ready to be rendered.
#[derive(Debug, Clone)]
pub struct Record {
    /// Field name → value (NULLs included, as JSON null), parsed from `json` when a template
    /// first needs it: the default `{fields}` body is `json` itself.
    fields: std::sync::OnceLock<Map<String, Value>>,
    /// The key's value.
    pub key: Value,
    /// [`idempotency_key`] of this record.
    pub idempotency_key: String,
    /// The API's own id for the record, when an endpoint looks it up first.
    pub api_id: Option<Value>,
    /// The record as Arrow's JSON writer wrote it (the same object as `fields`, in the model's
    /// column order): the body of the default `{fields}` template, sent as it is.
    pub json: Box<str>,
}

impl Record {
    /// A record of the given fields (its JSON text is theirs).
    pub fn with_fields(fields: Map<String, Value>, key: Value, idempotency_key: String) -> Self {
        Record {
            json: Value::Object(fields.clone()).to_string().into(),
            fields: fields.into(),
            key,
            idempotency_key,
            api_id: None,
        }
    }

    /// Field name → value (NULLs included, as JSON null).
    pub fn fields(&self) -> &Map<String, Value> {
        // `json` was read whole once already (see `records`): it parses.
        self.fields
            .get_or_init(|| serde_json::from_str(&self.json).unwrap_or_default())
    }
}

/// The values of the fields `names` in a JSON object (NULL for one it lacks), read without
/// building the others.
struct Pick<'a>(&'a [String]);

impl<'de> serde::de::DeserializeSeed<'de> for Pick<'_> {
    type Value = Vec<Value>;

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Vec<Value>, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> serde::de::Visitor<'de> for Pick<'_> {
    type Value = Vec<Value>;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut m: A) -> Result<Vec<Value>, A::Error> {
        let mut out = vec![Value::Null; self.0.len()];
        while let Some(name) = m.next_key::<Name<'de>>()? {
            match self.0.iter().position(|p| *p == *name.0) {
                Some(i) => out[i] = m.next_value()?,
                None => {
                    m.next_value::<serde::de::IgnoredAny>()?;
                }
            }
        }
        Ok(out)
    }
}

/// An object's field name, borrowed from the text unless it has escapes.
struct Name<'de>(std::borrow::Cow<'de, str>);

impl<'de> serde::Deserialize<'de> for Name<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Name<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a field name")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Name<'de>, E> {
                Ok(Name(std::borrow::Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Name<'de>, E> {
                Ok(Name(std::borrow::Cow::Owned(v.to_string())))
            }
        }
        d.deserialize_str(V)
    }
}

/// What a template is rendered with, besides the record.
pub struct Context<'a> {
    /// The key fields (more than one for a composite key).
    pub key: &'a [String],
    pub object: &'a str,
}

/// The rows of `batch` as JSON objects, with explicit NULLs, in row order.
pub fn records(
    batch: &RecordBatch,
    key: &[String],
    scope: &Scope,
) -> Result<Vec<Record>, ArrowError> {
    let batch = exact_numbers(batch)?;
    let batch = &batch;
    let mut buf = Vec::new();
    {
        let mut w = arrow::json::WriterBuilder::new()
            .with_explicit_nulls(true)
            .build::<_, arrow::json::writer::LineDelimited>(&mut buf);
        w.write(batch)?;
        w.finish()?;
    }
    let mut out = Vec::with_capacity(batch.num_rows());
    for line in buf.split(|b| *b == b'\n').take(batch.num_rows()) {
        let json = std::str::from_utf8(line).map_err(|e| ArrowError::JsonError(e.to_string()))?;
        // The whole object is read (and so checked) here; only the key's values are kept.
        let mut reader = serde_json::Deserializer::from_str(json);
        let values = serde::de::DeserializeSeed::deserialize(Pick(key), &mut reader)
            .and_then(|v| reader.end().map(|()| v))
            .map_err(|e| ArrowError::JsonError(e.to_string()))?;
        // A composite key is the object of its fields.
        let key = match (key, values.as_slice()) {
            ([_], [one]) => one.clone(),
            (parts, values) => {
                Value::Object(parts.iter().cloned().zip(values.iter().cloned()).collect())
            }
        };
        out.push(Record {
            fields: std::sync::OnceLock::new(),
            key,
            idempotency_key: idempotency_key(scope, line),
            api_id: None,
            json: json.into(),
        });
    }
    Ok(out)
}

/// Decimals as JSON numbers would pass through `f64`: those of up to 15 digits (which `f64`
/// holds exactly) become numbers, longer ones text, so that no digit is lost.
fn exact_numbers(batch: &RecordBatch) -> Result<RecordBatch, ArrowError> {
    use arrow::datatypes::{DataType, Field, Schema};
    let mut fields = Vec::with_capacity(batch.num_columns());
    let mut columns = Vec::with_capacity(batch.num_columns());
    let mut changed = false;
    for (field, column) in batch.schema().fields().iter().zip(batch.columns()) {
        let to = match field.data_type() {
            DataType::Decimal32(p, _)
            | DataType::Decimal64(p, _)
            | DataType::Decimal128(p, _)
            | DataType::Decimal256(p, _) => Some(if *p <= 15 {
                DataType::Float64
            } else {
                DataType::Utf8
            }),
            _ => None,
        };
        match to {
            Some(to) => {
                changed = true;
                columns.push(arrow::compute::cast(column, &to)?);
                fields.push(Field::new(field.name(), to, true));
            }
            None => {
                columns.push(column.clone());
                fields.push(field.as_ref().clone());
            }
        }
    }
    if !changed {
        return Ok(batch.clone());
    }
    RecordBatch::try_new(std::sync::Arc::new(Schema::new(fields)), columns)
}

/// A stable id for sending this record content with this operation from this sync in the run
/// that commits `scope.version`: the same record sent again after a crash carries the same id,
/// a changed record or a later run a new one.
pub fn idempotency_key(scope: &Scope, record_json: &[u8]) -> String {
    let version = scope.version.to_le_bytes();
    let mut bytes = Vec::with_capacity(64 + record_json.len());
    for part in [
        scope.sync.as_bytes(),
        scope.object.as_bytes(),
        scope.op.as_bytes(),
        &version,
    ] {
        bytes.extend_from_slice(part);
        bytes.push(0);
    }
    bytes.extend_from_slice(record_json);
    format!("{:032x}", xxhash_rust::xxh3::xxh3_128(&bytes))
}

/// A value as text: strings as they are, NULL as "", everything else as JSON.
pub fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// Placeholders named in `s` that a template cannot resolve (for config validation).
pub fn unknown_placeholders(s: &str) -> Vec<String> {
    placeholders(s)
        .filter(|(_, name, _)| {
            let base = name.strip_suffix("|text").unwrap_or(name);
            !(NAMES.contains(&base) || base.strip_prefix("field.").is_some_and(|f| !f.is_empty()))
        })
        .map(|(_, name, _)| format!("{{{name}}}"))
        .collect()
}

/// Every `{name}` in `s`: (start, name, end) with `end` past the closing brace. Only names of
/// letters, digits, `_`, `.`, `|` and `-` count, so JSON or other braces are left alone.
pub(super) fn placeholders(s: &str) -> impl Iterator<Item = (usize, &str, usize)> {
    let mut from = 0;
    std::iter::from_fn(move || {
        loop {
            let open = from + s[from..].find('{')?;
            let close = open + s[open..].find('}')?;
            let name = &s[open + 1..close];
            from = open + 1;
            if !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_alphanumeric() || matches!(c, '_' | '.' | '|' | '-'))
            {
                from = close + 1;
                return Some((open, name, close + 1));
            }
        }
    })
}

fn resolve(name: &str, record: &Record, ctx: &Context) -> Option<Value> {
    let (base, as_text) = match name.strip_suffix("|text") {
        Some(b) => (b, true),
        None => (name, false),
    };
    let v = match base {
        "fields" => Value::Object(record.fields().clone()),
        "fields_without_key" => {
            let mut m = record.fields().clone();
            for k in ctx.key {
                m.remove(k);
            }
            Value::Object(m)
        }
        "key" => record.key.clone(),
        // (Refused for a composite key before anything is sent.)
        "key_field" => Value::String(ctx.key.first()?.to_string()),
        "object" => Value::String(ctx.object.to_string()),
        "idempotency_key" => Value::String(record.idempotency_key.clone()),
        "api_id" => record.api_id.clone()?,
        other => record.fields().get(other.strip_prefix("field.")?)?.clone(),
    };
    Some(if as_text {
        match v {
            Value::Object(m) => Value::Object(
                m.into_iter()
                    .map(|(k, v)| (k, Value::String(text(&v))))
                    .collect(),
            ),
            v => Value::String(text(&v)),
        }
    } else {
        v
    })
}

/// A request body: `payload` alone, or under `wrap` beside the fields of `extra` (an object;
/// anything else adds nothing).
pub fn wrapped(payload: Value, wrap: Option<&str>, extra: Option<Value>) -> Value {
    match wrap {
        Some(name) => {
            let mut m = match extra {
                Some(Value::Object(m)) => m,
                _ => Map::new(),
            };
            m.insert(name.to_string(), payload);
            Value::Object(m)
        }
        None => payload,
    }
}

/// Whether `template` is the default one, `"{fields}"`: every field of the record, as it is.
pub fn is_fields(template: &Value) -> bool {
    matches!(template, Value::String(s) if s == "{fields}")
}

/// The body of the `{fields}` template without building JSON values: each record's own JSON
/// text (one record for a per-record request, an array of them otherwise), under `wrap` when
/// set. The same JSON as [`render`] and [`wrapped`] give, only not re-parsed and re-written.
pub fn fields_body(records: &[&Record], single: bool, wrap: Option<&str>) -> Vec<u8> {
    let size: usize = records.iter().map(|r| r.json.len() + 1).sum();
    let mut out = Vec::with_capacity(size + 2 + wrap.map_or(0, |w| w.len() + 6));
    if let Some(name) = wrap {
        out.push(b'{');
        out.extend_from_slice(Value::String(name.to_string()).to_string().as_bytes());
        out.push(b':');
    }
    match (single, records) {
        (true, [one]) => out.extend_from_slice(one.json.as_bytes()),
        _ => {
            out.push(b'[');
            for (i, r) in records.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                out.extend_from_slice(r.json.as_bytes());
            }
            out.push(b']');
        }
    }
    if wrap.is_some() {
        out.push(b'}');
    }
    out
}

/// Fill `template` with one record.
pub fn render(template: &Value, record: &Record, ctx: &Context) -> Value {
    match template {
        Value::String(s) => render_str(s, record, ctx),
        Value::Array(items) => Value::Array(items.iter().map(|t| render(t, record, ctx)).collect()),
        Value::Object(m) => Value::Object(
            m.iter()
                .map(|(k, v)| (k.clone(), render(v, record, ctx)))
                .collect(),
        ),
        other => other.clone(),
    }
}

fn render_str(s: &str, record: &Record, ctx: &Context) -> Value {
    let found: Vec<_> = placeholders(s).collect();
    if let [(0, name, end)] = found.as_slice()
        && *end == s.len()
        && let Some(v) = resolve(name, record, ctx)
    {
        return v;
    }
    let mut out = String::with_capacity(s.len());
    let mut at = 0;
    for (start, name, end) in found {
        out.push_str(&s[at..start]);
        match resolve(name, record, ctx) {
            Some(v) => out.push_str(&text(&v)),
            None => out.push_str(&s[start..end]),
        }
        at = end;
    }
    out.push_str(&s[at..]);
    Value::String(out)
}

/// A URL path with `{key}`, `{object}` and `{field.NAME}` filled in, each value
/// percent-encoded as one path segment (a `/` in a key cannot reach another path). A value that
/// would still name another path (empty, `.` or `..`) is an error.
pub fn render_path(path: &str, record: Option<&Record>, ctx: &Context) -> Result<String, String> {
    const SEGMENT: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'_')
        .remove(b'.')
        .remove(b'~');
    let mut out = String::with_capacity(path.len());
    let mut at = 0;
    for (start, name, end) in placeholders(path) {
        out.push_str(&path[at..start]);
        let value = match (name, record) {
            ("object", _) => Some(ctx.object.to_string()),
            (n, Some(r)) => resolve(n, r, ctx).map(|v| text(&v)),
            _ => None,
        };
        match value {
            Some(v) if matches!(v.as_str(), "" | "." | "..") => {
                return Err(format!(
                    "{{{name}}} is \"{v}\", which cannot stand for a record in the URL path {path}"
                ));
            }
            Some(v) => out.extend(percent_encoding::utf8_percent_encode(&v, SEGMENT)),
            None => out.push_str(&path[start..end]),
        }
        at = end;
    }
    out.push_str(&path[at..]);
    Ok(out)
}

/// Whether a path names a single record (`{key}` or a field).
pub fn is_per_record(path: &str) -> bool {
    placeholders(path).any(|(_, name, _)| name != "object")
}

/// The values at a dotted path (`errors`, `context.ids`, `results.0.id`). Arrays met on the
/// way are walked element by element, and an array at the end is flattened, so
/// `errors.context.ids` yields every id of every error.
pub fn lookup<'v>(value: &'v Value, path: &str) -> Vec<&'v Value> {
    let mut out = Vec::new();
    for v in reach(value, path) {
        match v {
            Value::Array(items) => out.extend(items.iter()),
            Value::Null => {}
            other => out.push(other),
        }
    }
    out
}

/// Whether `path` names anything in `value` (an empty list or a null counts).
pub fn present(value: &Value, path: &str) -> bool {
    !reach(value, path).is_empty()
}

/// The values a path reaches, before [`lookup`] flattens them.
fn reach<'v>(value: &'v Value, path: &str) -> Vec<&'v Value> {
    let mut current = vec![value];
    for seg in path.split('.').filter(|s| !s.is_empty()) {
        let mut next = Vec::new();
        for v in current {
            walk(v, seg, &mut next);
        }
        current = next;
    }
    current
}

fn walk<'v>(v: &'v Value, seg: &str, out: &mut Vec<&'v Value>) {
    match v {
        Value::Object(m) => {
            if let Some(x) = m.get(seg) {
                out.push(x);
            }
        }
        Value::Array(items) => match seg.parse::<usize>() {
            Ok(i) => out.extend(items.get(i)),
            Err(_) => items.iter().for_each(|item| walk(item, seg, out)),
        },
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn record() -> Record {
        let fields = json!({"id": 7, "email": "a@b.co", "name": null});
        Record::with_fields(
            fields.as_object().cloned().unwrap_or_default(),
            json!(7),
            "abc".into(),
        )
    }

    #[test]
    fn renders_typed_and_text_placeholders() {
        let ids = vec!["id".to_string()];
        let ctx = Context {
            key: &ids,
            object: "contacts",
        };
        let t = json!({
            "id": "{key|text}", "n": "{key}", "props": "{fields_without_key|text}",
            "label": "user-{key} of {object}", "trace": "{idempotency_key}",
            "raw": "{not a placeholder}", "mail": "{field.email}", "json": "{\"a\": 1}"
        });
        let out = render(&t, &record(), &ctx);
        assert_eq!(
            out,
            json!({
                "id": "7", "n": 7, "props": {"email": "a@b.co", "name": ""},
                "label": "user-7 of contacts", "trace": "abc",
                "raw": "{not a placeholder}", "mail": "a@b.co", "json": "{\"a\": 1}"
            })
        );
    }

    #[test]
    fn paths_encode_each_value_as_one_segment() {
        let ids = vec!["id".to_string()];
        let ctx = Context {
            key: &ids,
            object: "my objects",
        };
        let mut r = record();
        r.key = json!("a/../b?c=1#x");
        assert_eq!(
            render_path("/v1/{object}/{key}", Some(&r), &ctx).unwrap(),
            "/v1/my%20objects/a%2F..%2Fb%3Fc%3D1%23x"
        );
        for bad in [json!(".."), json!("."), json!(""), Value::Null] {
            r.key = bad;
            assert!(render_path("/v1/{object}/{key}", Some(&r), &ctx).is_err());
        }
        assert!(is_per_record("/v1/{object}/{key}"));
        assert!(!is_per_record("/v1/{object}/batch"));
    }

    #[test]
    fn unknown_placeholders_are_named() {
        assert_eq!(
            unknown_placeholders("/x/{kye}/{key}/{field.a}/{field.}"),
            vec!["{kye}", "{field.}"]
        );
    }

    #[test]
    fn lookup_walks_arrays() {
        let v = json!({"errors": [
            {"context": {"ids": ["1", "2"]}, "message": "bad"},
            {"context": {"ids": ["3"]}}
        ]});
        let ids: Vec<_> = lookup(&v, "errors.context.ids")
            .into_iter()
            .map(text)
            .collect();
        assert_eq!(ids, vec!["1", "2", "3"]);
        assert_eq!(lookup(&v, "errors.0.message"), vec![&json!("bad")]);
        assert!(lookup(&v, "nothing.here").is_empty());
        assert!(present(&json!({"results": []}), "results"));
        assert!(present(&json!({"page": [{"results": []}]}), "page.results"));
        assert!(!present(&json!({"status": "PENDING"}), "results"));
    }

    #[test]
    fn decimals_keep_every_digit() {
        use arrow::array::{Decimal128Array, Int64Array};
        use arrow::datatypes::{DataType, Field, Schema};
        let schema = Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("big", DataType::Decimal128(38, 18), true),
            Field::new("small", DataType::Decimal128(10, 2), true),
        ]);
        let batch = RecordBatch::try_new(
            std::sync::Arc::new(schema),
            vec![
                std::sync::Arc::new(Int64Array::from(vec![9_007_199_254_740_993])),
                std::sync::Arc::new(
                    Decimal128Array::from(vec![Some(12_345_678_901_234_567_890_123_456_789i128)])
                        .with_precision_and_scale(38, 18)
                        .unwrap(),
                ),
                std::sync::Arc::new(
                    Decimal128Array::from(vec![Some(1050i128)])
                        .with_precision_and_scale(10, 2)
                        .unwrap(),
                ),
            ],
        )
        .unwrap();
        let scope = upsert_scope();
        let r = records(&batch, &["id".to_string()], &scope).unwrap();
        assert_eq!(r[0].key, json!(9_007_199_254_740_993i64));
        assert_eq!(
            r[0].fields()["big"],
            json!("12345678901.234567890123456789")
        );
        assert_eq!(r[0].fields()["small"], json!(10.5));
    }

    fn upsert_scope() -> Scope<'static> {
        Scope {
            sync: "s",
            object: "o",
            op: "upsert",
            version: 1,
        }
    }

    #[test]
    fn fields_body_is_the_rendered_template() {
        use arrow::array::{BooleanArray, Float64Array, Int64Array, StringArray};
        use arrow::datatypes::{DataType, Field, Schema};
        let schema = Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("name", DataType::Utf8, true),
            Field::new("score", DataType::Float64, true),
            Field::new("ok", DataType::Boolean, true),
        ]);
        let batch = RecordBatch::try_new(
            std::sync::Arc::new(schema),
            vec![
                std::sync::Arc::new(Int64Array::from(vec![i64::MAX, i64::MIN, 0])),
                std::sync::Arc::new(StringArray::from(vec![
                    Some("quote \" back \\ line\n tab\t \u{1} é 😀"),
                    None,
                    Some(""),
                ])),
                std::sync::Arc::new(Float64Array::from(vec![Some(0.1), Some(-1e300), None])),
                std::sync::Arc::new(BooleanArray::from(vec![Some(true), None, Some(false)])),
            ],
        )
        .unwrap();
        let scope = upsert_scope();
        let ids = vec!["id".to_string()];
        let ctx = Context {
            key: &ids,
            object: "o",
        };
        let r = records(&batch, &ids, &scope).unwrap();
        let all: Vec<&Record> = r.iter().collect();
        let t = json!("{fields}");
        assert!(is_fields(&t));
        assert!(!is_fields(&json!("{fields_without_key}")));
        let parse = |b: Vec<u8>| serde_json::from_slice::<Value>(&b).unwrap();
        for wrap in [None, Some("in \"quotes\"")] {
            let each = Value::Array(all.iter().map(|x| render(&t, x, &ctx)).collect());
            assert_eq!(
                parse(fields_body(&all, false, wrap)),
                wrapped(each, wrap, None)
            );
            assert_eq!(
                parse(fields_body(&all[1..2], true, wrap)),
                wrapped(render(&t, all[1], &ctx), wrap, None)
            );
        }
        assert_eq!(parse(fields_body(&[], false, None)), json!([]));
        // Only the key is read up front; the fields when a template asks.
        assert_eq!(r[0].key, json!(i64::MAX));
        assert_eq!(r[1].fields()["name"], Value::Null);
        assert_eq!(r[2].fields()["ok"], json!(false));
        let composite = records(&batch, &["ok".to_string(), "id".to_string()], &scope).unwrap();
        assert_eq!(composite[0].key, json!({"id": i64::MAX, "ok": true}));
        assert_eq!(composite[1].key, json!({"id": i64::MIN, "ok": null}));
        let missing = records(&batch, &["nope".to_string()], &scope).unwrap();
        assert_eq!(missing[0].key, Value::Null);
    }

    #[test]
    fn idempotency_keys_follow_content_and_version() {
        let scope = |sync, version| Scope {
            sync,
            object: "o",
            op: "create",
            version,
        };
        let a = idempotency_key(&scope("s", 3), b"{\"id\":1}");
        assert_eq!(a, idempotency_key(&scope("s", 3), b"{\"id\":1}"));
        assert_ne!(a, idempotency_key(&scope("s", 3), b"{\"id\":2}"));
        assert_ne!(a, idempotency_key(&scope("t", 3), b"{\"id\":1}"));
        assert_ne!(a, idempotency_key(&scope("s", 4), b"{\"id\":1}"));
        assert_eq!(a.len(), 32);
    }
}
