//! Built-in SQL functions for the transforms users write most (in models, computed fields,
//! entity field mappings and match keys):
//!
//! | function | does | example |
//! |---|---|---|
//! | `domain_of(text)` | the host of a URL or the domain of an e-mail address, lowercased, without `www.` | `https://www.Acme.com/about` → `acme.com`, `ann@Acme.com` → `acme.com` |
//! | `normalize_email(text)` | trimmed and lowercased; NULL when it is not an address | ` Ann@Acme.COM ` → `ann@acme.com` |
//! | `normalize_phone(text)` | digits only, a leading `+` kept; NULL when fewer than 5 digits | `+1 (555) 010-9999` → `+15550109999` |
//! | `normalize_text(text)` | trimmed, inner whitespace collapsed to one space, lowercased; NULL when blank | `  Acme   Corp ` → `acme corp` |
//! | `jaro_winkler(a, b)` | Jaro-Winkler similarity, 0 to 1 (strsim) | `('martha', 'marhta')` → 0.961 |
//! | `levenshtein_similarity(a, b)` | 1 − Levenshtein distance / the longer length | `('kitten', 'sitting')` → 0.571 |
//! | `token_set_similarity(a, b)` | word order and repeats do not matter: the best Levenshtein similarity among the shared words and each side's shared plus own words, sorted | `('anna lee smith', 'smith anna')` → 1.0 |
//!
//! The text functions take any string type and return `Utf8`; the similarities return
//! `Float64`. NULL in gives NULL out.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, StringArray};
use arrow::compute::cast;
use arrow::datatypes::DataType;
use datafusion::common::Result;
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};
use datafusion::prelude::SessionContext;

/// Register every built-in function in `ctx`.
pub fn register(ctx: &SessionContext) {
    for (name, f) in FUNCTIONS {
        ctx.register_udf(ScalarUDF::new_from_impl(TextFunction {
            name,
            f: *f,
            signature: Signature::string(1, Volatility::Immutable),
        }));
    }
    for (name, f) in SIMILARITIES {
        ctx.register_udf(ScalarUDF::new_from_impl(SimilarityFunction {
            name,
            f: *f,
            signature: Signature::string(2, Volatility::Immutable),
        }));
    }
}

type SimilarityFn = fn(&str, &str) -> f64;

const SIMILARITIES: &[(&str, SimilarityFn)] = &[
    ("jaro_winkler", strsim::jaro_winkler),
    ("levenshtein_similarity", strsim::normalized_levenshtein),
    ("token_set_similarity", token_set_similarity),
];

/// Token-set similarity (as fuzzy matchers define it): with `shared` the sorted words both
/// have and `a_own`/`b_own` each side's other words, the best normalised Levenshtein
/// similarity among `shared` vs `shared + a_own`, `shared` vs `shared + b_own`, and
/// `shared + a_own` vs `shared + b_own`. Word order and repeated words do not matter, and a
/// text whose words are all in the other scores 1.
pub fn token_set_similarity(a: &str, b: &str) -> f64 {
    use std::collections::BTreeSet;
    let wa: BTreeSet<&str> = a.split_whitespace().collect();
    let wb: BTreeSet<&str> = b.split_whitespace().collect();
    if wa.is_empty() && wb.is_empty() {
        return 1.0;
    }
    let join = |words: Vec<&str>| words.join(" ");
    let shared = join(wa.intersection(&wb).copied().collect());
    let with = |own: Vec<&str>| {
        let own = join(own);
        match (shared.is_empty(), own.is_empty()) {
            (true, _) => own,
            (false, true) => shared.clone(),
            (false, false) => format!("{shared} {own}"),
        }
    };
    let ta = with(wa.difference(&wb).copied().collect());
    let tb = with(wb.difference(&wa).copied().collect());
    let mut best = strsim::normalized_levenshtein(&ta, &tb);
    if !shared.is_empty() {
        best = best
            .max(strsim::normalized_levenshtein(&shared, &ta))
            .max(strsim::normalized_levenshtein(&shared, &tb));
    }
    best
}

#[derive(Debug)]
struct SimilarityFunction {
    name: &'static str,
    f: SimilarityFn,
    signature: Signature,
}

impl PartialEq for SimilarityFunction {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name
    }
}
impl Eq for SimilarityFunction {}
impl std::hash::Hash for SimilarityFunction {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.name.hash(state)
    }
}

impl ScalarUDFImpl for SimilarityFunction {
    fn name(&self) -> &str {
        self.name
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(DataType::Float64)
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let rows = args.number_rows;
        let mut texts = Vec::with_capacity(2);
        for a in args.args {
            texts.push(cast(&a.into_array(rows)?, &DataType::Utf8)?);
        }
        let strings = |i: usize| {
            texts
                .get(i)
                .and_then(|a| a.as_any().downcast_ref::<StringArray>())
                .ok_or_else(|| {
                    datafusion::error::DataFusionError::Internal(format!(
                        "{}: expected two texts (this is a bug in backflow)",
                        self.name
                    ))
                })
        };
        let (a, b) = (strings(0)?, strings(1)?);
        let out: arrow::array::Float64Array = a
            .iter()
            .zip(b.iter())
            .map(|(x, y)| Some((self.f)(x?, y?)))
            .collect();
        Ok(ColumnarValue::Array(Arc::new(out) as ArrayRef))
    }
}

type TextFn = fn(&str) -> Option<String>;

const FUNCTIONS: &[(&str, TextFn)] = &[
    ("domain_of", domain_of),
    ("normalize_email", normalize_email),
    ("normalize_phone", normalize_phone),
    ("normalize_text", normalize_text),
];

/// The domain of an e-mail address or the host of a URL, lowercased, without `www.`.
pub fn domain_of(text: &str) -> Option<String> {
    let t = text.trim();
    let host = match t.rsplit_once('@') {
        // An address: what follows the last '@' (and no URL around it).
        Some((_, d)) if !t.contains("://") && !t.contains('/') => d,
        _ => {
            let rest = t.split_once("://").map_or(t, |(_, r)| r);
            let rest = rest.rsplit_once('@').map_or(rest, |(_, r)| r);
            rest.split(['/', '?', '#']).next().unwrap_or("")
        }
    };
    let host = host.split(':').next().unwrap_or("").trim_end_matches('.');
    let host = host.to_lowercase();
    let host = host.strip_prefix("www.").unwrap_or(&host);
    let valid = host.contains('.')
        && !host.starts_with('.')
        && host
            .chars()
            .all(|c| c.is_alphanumeric() || c == '-' || c == '.');
    valid.then(|| host.to_string())
}

/// An e-mail address trimmed and lowercased; None when it does not look like one.
pub fn normalize_email(text: &str) -> Option<String> {
    let t = text.trim().to_lowercase();
    let (local, domain) = t.rsplit_once('@')?;
    let ok = !local.is_empty()
        && domain.contains('.')
        && !domain.starts_with('.')
        && !domain.ends_with('.')
        && !t.chars().any(char::is_whitespace);
    ok.then_some(t)
}

/// A phone number as its digits, a leading `+` kept; None with fewer than 5 digits.
pub fn normalize_phone(text: &str) -> Option<String> {
    let t = text.trim();
    let digits: String = t.chars().filter(char::is_ascii_digit).collect();
    if digits.len() < 5 {
        return None;
    }
    Some(if t.starts_with('+') {
        format!("+{digits}")
    } else if let Some(d) = digits.strip_prefix("00").filter(|_| t.starts_with("00")) {
        format!("+{d}")
    } else {
        digits
    })
}

/// Trimmed, inner whitespace collapsed to single spaces, lowercased.
pub fn normalize_text(text: &str) -> Option<String> {
    let t = text.split_whitespace().collect::<Vec<_>>().join(" ");
    (!t.is_empty()).then(|| t.to_lowercase())
}

#[derive(Debug)]
struct TextFunction {
    name: &'static str,
    f: TextFn,
    signature: Signature,
}

impl PartialEq for TextFunction {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name
    }
}
impl Eq for TextFunction {}
impl std::hash::Hash for TextFunction {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.name.hash(state)
    }
}

impl ScalarUDFImpl for TextFunction {
    fn name(&self) -> &str {
        self.name
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(DataType::Utf8)
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let rows = args.number_rows;
        let input = match args.args.into_iter().next() {
            Some(c) => c.into_array(rows)?,
            None => return Ok(ColumnarValue::Array(Arc::new(StringArray::new_null(rows)))),
        };
        let input = cast(&input, &DataType::Utf8)?;
        let strings = input
            .as_any()
            .downcast_ref::<StringArray>()
            .ok_or_else(|| {
                datafusion::error::DataFusionError::Internal(format!(
                    "{}: expected text (this is a bug in backflow)",
                    self.name
                ))
            })?;
        let out: StringArray = strings.iter().map(|v| v.and_then(self.f)).collect();
        Ok(ColumnarValue::Array(Arc::new(out) as ArrayRef))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn domains() {
        let d = |s: &str| domain_of(s);
        assert_eq!(
            d("https://www.Acme.com/about?x=1").as_deref(),
            Some("acme.com")
        );
        assert_eq!(d("acme.com").as_deref(), Some("acme.com"));
        assert_eq!(
            d("http://user@shop.acme.co.uk:8080/").as_deref(),
            Some("shop.acme.co.uk")
        );
        assert_eq!(d("Ann.Lee@ACME.com").as_deref(), Some("acme.com"));
        assert_eq!(d("www.example.org.").as_deref(), Some("example.org"));
        assert_eq!(d("not a url"), None);
        assert_eq!(d(""), None);
    }

    #[test]
    fn emails_phones_text() {
        assert_eq!(
            normalize_email("  Ann@Acme.COM ").as_deref(),
            Some("ann@acme.com")
        );
        assert_eq!(normalize_email("ann@localhost"), None);
        assert_eq!(normalize_email("a b@x.com"), None);
        assert_eq!(
            normalize_phone("+1 (555) 010-9999").as_deref(),
            Some("+15550109999")
        );
        assert_eq!(
            normalize_phone("0044 20 7946 0958").as_deref(),
            Some("+442079460958")
        );
        assert_eq!(normalize_phone("555-0109").as_deref(), Some("5550109"));
        assert_eq!(normalize_phone("n/a"), None);
        assert_eq!(
            normalize_text("  Acme \t  Corp ").as_deref(),
            Some("acme corp")
        );
        assert_eq!(normalize_text("  "), None);
    }

    #[test]
    fn similarities() {
        let close = |a: f64, b: f64| (a - b).abs() < 1e-3;
        assert!(close(strsim::jaro_winkler("martha", "marhta"), 0.961));
        assert!(close(
            strsim::normalized_levenshtein("kitten", "sitting"),
            0.571
        ));
        assert!(close(
            token_set_similarity("anna lee smith", "smith anna"),
            1.0
        ));
        assert!(close(token_set_similarity("smith anna", "anna smith"), 1.0));
        assert!(close(token_set_similarity("", ""), 1.0));
        assert!(token_set_similarity("acme corp", "globex inc") < 0.5);
        // Symmetric, and within 0..=1.
        for (a, b) in [("a b c", "c d"), ("jon", "john smith"), ("x", "")] {
            let (s, t) = (token_set_similarity(a, b), token_set_similarity(b, a));
            assert!(
                close(s, t) && (0.0..=1.0).contains(&s),
                "{a} / {b}: {s} {t}"
            );
        }
    }

    #[tokio::test]
    async fn registered_functions_run_in_sql() {
        let ctx = SessionContext::new();
        register(&ctx);
        let batches = ctx
            .sql("SELECT domain_of(arrow_cast('https://www.X.io/a', 'Utf8View')) AS d, normalize_phone(NULL) AS p")
            .await
            .unwrap()
            .collect()
            .await
            .unwrap();
        let d = batches[0]
            .column(0)
            .as_any()
            .downcast_ref::<StringArray>()
            .unwrap();
        assert_eq!(d.value(0), "x.io");
        assert!(batches[0].column(1).is_null(0));
    }
}
