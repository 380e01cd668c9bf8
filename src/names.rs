//! Names users give things (sources, models, syncs, entities, fields), what they may look like,
//! the "did you mean" offered when one is not found, and how backflow quotes a name or a text in
//! the SQL it writes for DataFusion.

/// Names that models, sources and segments may take: they are SQL table names.
pub fn is_plain_identifier(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_lowercase() || c == '_')
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

/// Names used in state paths (syncs): no separators, no dots.
pub fn is_safe_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// ` (did you mean "x"?)` when a known name is close to the unknown one: within two edits, or a
/// quarter of the known name's length for long names (Levenshtein distance, from strsim).
pub fn suggest<'a>(unknown: &str, known: impl Iterator<Item = &'a str>) -> String {
    let best = known
        .map(|k| (strsim::levenshtein(unknown, k), k))
        .filter(|(d, k)| *d <= 2.max(k.chars().count() / 4))
        .min();
    match best {
        Some((_, k)) => format!(" (did you mean \"{k}\"?)"),
        None => String::new(),
    }
}

/// `"name"` with inner quotes doubled: an identifier in SQL expressions.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// `'text'` with inner quotes doubled: a string literal.
pub fn quote_literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn close_names_are_suggested_and_far_ones_not() {
        let known = ["customers", "people", "accounts_summary"];
        assert_eq!(
            suggest("custmers", known.iter().copied()),
            " (did you mean \"customers\"?)"
        );
        assert_eq!(
            suggest("acounts_sumary", known.iter().copied()),
            " (did you mean \"accounts_summary\"?)"
        );
        assert_eq!(suggest("orders", known.iter().copied()), "");
        assert_eq!(suggest("x", std::iter::empty()), "");
    }

    #[test]
    fn identifiers() {
        assert!(is_plain_identifier("people_2"));
        assert!(!is_plain_identifier("People"));
        assert!(!is_plain_identifier("2people"));
        assert!(is_safe_name("crm-to-app"));
        assert!(!is_safe_name("../x"));
        assert!(!is_safe_name(""));
    }
}
