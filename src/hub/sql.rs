//! Small helpers for the SQL text the hub's stages generate. Only backflow's own names go into
//! that text: entity fields and source names (validated identifiers, quoted anyway), internal
//! `__bf_` columns and registered table names. Users' expressions never do: they are parsed
//! with `parse_sql_expr` into the plans of the read and write-back stages.

use arrow::datatypes::DataType;

pub use crate::names::{quote_ident as q, quote_literal as lit};

/// `arrow_cast(NULL, '<type>')`: a typed NULL.
pub fn null_of(dt: &DataType) -> String {
    format!("arrow_cast(NULL, {})", lit(&dt.to_string()))
}

/// `arrow_cast(<value>, '<type>')`.
pub fn cast_to(expr: &str, dt: &DataType) -> String {
    format!("arrow_cast({expr}, {})", lit(&dt.to_string()))
}

/// The normalised form match and merge rules compare: trimmed, lowercased text; blank text
/// is NULL (it matches nothing).
pub fn norm(expr: &str) -> String {
    format!("NULLIF(lower(trim(CAST({expr} AS VARCHAR))), '')")
}

/// A text key that tells every tuple of values apart: each value length-prefixed.
pub fn tuple_key(prefix: &str, exprs: &[String]) -> String {
    let mut parts = vec![lit(prefix)];
    for e in exprs {
        parts.push(format!(
            "CAST(character_length({e}) AS VARCHAR) || ':' || {e}"
        ));
    }
    parts.join(" || '|' || ")
}

/// `CASE __bf_source WHEN 'a' THEN 0 … ELSE n END`: a source's place in `order`.
pub fn rank_case(column: &str, order: &[String]) -> String {
    if order.is_empty() {
        return "0".into();
    }
    let mut s = format!("CASE {column}");
    for (i, name) in order.iter().enumerate() {
        s.push_str(&format!(" WHEN {} THEN {i}", lit(name)));
    }
    s.push_str(&format!(" ELSE {} END", order.len()));
    s
}

/// `'a', 'b'`: a list of string literals.
pub fn lit_list(items: &[String]) -> String {
    items.iter().map(|s| lit(s)).collect::<Vec<_>>().join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces() {
        assert_eq!(q("a\"b"), "\"a\"\"b\"");
        assert_eq!(lit("it's"), "'it''s'");
        assert_eq!(
            rank_case("s", &["crm".into(), "erp".into()]),
            "CASE s WHEN 'crm' THEN 0 WHEN 'erp' THEN 1 ELSE 2 END"
        );
        assert!(
            tuple_key("1", &["x".into()]).starts_with("'1' || '|' || CAST(character_length(x)")
        );
    }
}
