//! Identifier quoting against the real servers: any name (within each server's rules) quoted
//! by backflow comes back from the server as exactly that name, so no name can end a quoted
//! identifier early and inject SQL. Random names, many cases.

use proptest::prelude::*;

use crate::common::db;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 300,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// Names built from characters that matter to SQL quoting, plus any other character.
fn names(max: usize) -> impl Strategy<Value = String> {
    let special = prop_oneof![
        Just('"'),
        Just('`'),
        Just('\''),
        Just(';'),
        Just('-'),
        Just('\\'),
        Just(' '),
        Just('\n'),
        Just('$'),
        Just('é'),
        any::<char>(),
    ];
    proptest::collection::vec(special, 1..max).prop_map(|c| c.into_iter().collect())
}

#[test]
fn postgres_identifiers_come_back_exactly() {
    let rt = runtime();
    let Some(pg) = rt.block_on(db::postgres()) else {
        return;
    };
    let mut runner = proptest::test_runner::TestRunner::new(config());
    runner
        .run(&names(30), |name| {
            // PostgreSQL keeps at most 63 bytes of a name and has no NUL in text.
            prop_assume!(name.len() <= 63 && !name.contains('\0'));
            let q = backflow::databases::postgres::quote(&name);
            let rows = rt
                .block_on(pg.query(&format!("SELECT 1 AS {q}"), &[]))
                .map_err(|e| TestCaseError::fail(format!("{q}: {e}")))?;
            prop_assert_eq!(rows[0].columns()[0].name(), name.as_str());
            Ok(())
        })
        .unwrap();
}

#[test]
fn mysql_identifiers_come_back_exactly() {
    use mysql_async::prelude::Queryable;
    let rt = runtime();
    let Some(my) = rt.block_on(db::mysql()) else {
        return;
    };
    let my = std::cell::RefCell::new(my);
    let mut runner = proptest::test_runner::TestRunner::new(config());
    runner
        .run(&names(30), |name| {
            // MySQL identifiers: the Basic Multilingual Plane without NUL, at most 64
            // characters, no trailing space; and MySQL strips leading white space and control
            // characters from a column alias.
            prop_assume!(
                name.chars().count() <= 64
                    && name.chars().all(|c| c != '\0' && (c as u32) < 0x10000)
                    && !name.ends_with(' ')
                    && !name.starts_with(|c: char| c.is_whitespace() || c.is_control())
            );
            let q = backflow::databases::mysql::quote(&name);
            let result: Vec<mysql_async::Row> = rt
                .block_on(my.borrow_mut().query(format!("SELECT 1 AS {q}")))
                .map_err(|e| TestCaseError::fail(format!("{q}: {e}")))?;
            let columns = result[0].columns();
            prop_assert_eq!(columns[0].name_str(), name.as_str());
            Ok(())
        })
        .unwrap();
}
