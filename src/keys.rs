//! Keys, simple or composite: the one key column the diff, the state and the intent files
//! see (a composite key is a struct of its parts), and the key as text, as people write it
//! (`--keys`, `--records`) and read it (reports, record logs): the value itself for a simple
//! key, the JSON list of its parts' texts for a composite one, `["acme","42"]`.

use datafusion::prelude::{Expr, ident, lit};

/// How a key is recorded in a sync's state and named in messages: its field's name, or for a
/// composite key the names as a JSON list (`["account_id","email"]`).
pub fn stored_key(fields: &[String]) -> String {
    key_text_of(fields)
}

/// The text of a key from the texts of its parts: the part itself for a simple key, the JSON
/// list of them for a composite key (as [`crate::values::scalar_text`] writes a composite key).
pub fn key_text_of(parts: &[String]) -> String {
    match parts {
        [one] => one.clone(),
        many => serde_json::to_string(many).unwrap_or_default(),
    }
}

/// The parts of a key a user wrote (`--keys`, `--records`): the text itself for a simple key;
/// for a key of `n` parts a JSON list of them, such as `["acme", 42]`.
pub fn key_parts(text: &str, n: usize) -> Result<Vec<String>, String> {
    if n == 1 {
        return Ok(vec![text.to_string()]);
    }
    let example = || {
        format!(
            "the key has {n} parts: write each key as a JSON list of {n} values, such as '[\"acme\", 42]'"
        )
    };
    let list: Vec<serde_json::Value> =
        serde_json::from_str(text).map_err(|_| format!("\"{text}\": {}", example()))?;
    if list.len() != n {
        return Err(format!(
            "\"{text}\" has {} parts; {}",
            list.len(),
            example()
        ));
    }
    list.into_iter()
        .map(|v| match v {
            serde_json::Value::String(s) => Ok(s),
            serde_json::Value::Number(n) => Ok(n.to_string()),
            serde_json::Value::Bool(b) => Ok(b.to_string()),
            other => Err(format!(
                "\"{text}\": a key part cannot be {other} (a key with a NULL part is never sent)"
            )),
        })
        .collect()
}

/// The key over the key fields (destination names): the field itself for a simple key; for a
/// composite key a struct of the parts, NULL when any part is (such a row is invalid, like a
/// row with a NULL simple key). The diff, the state and the intent files see one key column
/// either way.
pub fn key_expr(fields: &[String]) -> Expr {
    match fields {
        [one] => ident(one),
        parts => {
            let mut args = Vec::with_capacity(parts.len() * 2);
            for p in parts {
                args.push(lit(p.as_str()));
                args.push(ident(p));
            }
            let complete = parts
                .iter()
                .map(|p| ident(p).is_not_null())
                .reduce(Expr::and)
                .unwrap_or(lit(true));
            // CASE without ELSE: NULL when a part is.
            datafusion::logical_expr::when(
                complete,
                datafusion::functions::core::expr_fn::named_struct(args),
            )
            .end()
            .unwrap_or_else(|_| lit(datafusion::common::ScalarValue::Null))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::ArrayRef;
    use arrow::datatypes::DataType;
    use std::sync::Arc;

    #[test]
    fn a_composite_key_is_the_json_list_of_its_parts() {
        let key: ArrayRef = Arc::new(arrow::array::StructArray::from(vec![
            (
                Arc::new(arrow::datatypes::Field::new("a", DataType::Utf8, true)),
                Arc::new(arrow::array::StringArray::from(vec!["x\"y", "z"])) as ArrayRef,
            ),
            (
                Arc::new(arrow::datatypes::Field::new("b", DataType::Int64, true)),
                Arc::new(arrow::array::Int64Array::from(vec![i64::MAX, -1])) as ArrayRef,
            ),
        ]));
        let text = crate::values::cell_text(&key, 0).unwrap();
        assert_eq!(text, r#"["x\"y","9223372036854775807"]"#);
        assert_eq!(crate::values::texts(&key).value(1), r#"["z","-1"]"#);
        let parts = key_parts(&text, 2).unwrap();
        assert_eq!(key_text_of(&parts), text);
        assert_eq!(key_parts("[\"z\", -1]", 2).unwrap(), vec!["z", "-1"]);
        assert!(key_parts("[\"z\"]", 2).unwrap_err().contains("2 parts"));
        assert!(key_parts("z,1", 2).unwrap_err().contains("JSON list"));
        assert!(key_parts("[\"z\", null]", 2).is_err());
        assert_eq!(key_parts("[1, 2]", 1).unwrap(), vec!["[1, 2]"]);
    }
}
