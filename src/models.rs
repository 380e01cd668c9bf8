//! Models: `models/*.sql`, one SELECT per file, named after the file. Models reference sources,
//! segments and other models by name; [`order`] resolves the dependency order and reports unknown
//! names and cycles.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use datafusion::sql::parser::{DFParser, Statement as DFStatement};
use datafusion::sql::sqlparser::ast::Statement;

/// The folder models live in.
pub const MODELS_DIR: &str = "models";

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("model file {} is not named like a SQL table (use lowercase letters, digits and '_'): rename it", path.display())]
    BadName { path: PathBuf },
    #[error("{}: SQL syntax error: {message}", path.display())]
    Syntax { path: PathBuf, message: String },
    #[error("{}: a model must be exactly one SELECT (or WITH … SELECT) statement{detail}", path.display())]
    NotASelect { path: PathBuf, detail: String },
    #[error("{}: references unknown table \"{name}\"{suggestion}; known sources, models and segments: {known}", path.display())]
    UnknownReference {
        path: PathBuf,
        name: String,
        suggestion: String,
        known: String,
    },
    #[error("models depend on each other in a cycle: {}", cycle.join(" → "))]
    Cycle { cycle: Vec<String> },
}

/// A model as found on disk.
#[derive(Debug, Clone)]
pub struct Model {
    pub name: String,
    pub path: PathBuf,
    pub sql: String,
    /// Names of the sources, segments and models this model reads.
    pub dependencies: Vec<String>,
}

/// Read every `models/*.sql` of the project (sorted by name). A missing folder means no models.
pub fn discover(project_dir: &Path) -> Result<Vec<Model>, ModelError> {
    let dir = project_dir.join(MODELS_DIR);
    let entries = match std::fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => return Err(ModelError::Read { path: dir, source }),
    };
    let mut paths = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|source| ModelError::Read {
            path: dir.clone(),
            source,
        })?;
        let path = entry.path();
        if path.extension().is_some_and(|e| e == "sql") && path.is_file() {
            paths.push(path);
        }
    }
    paths.sort();
    paths.into_iter().map(|p| parse_model_file(&p)).collect()
}

fn parse_model_file(path: &Path) -> Result<Model, ModelError> {
    let name = path
        .file_stem()
        .and_then(|s| s.to_str())
        .filter(|s| crate::names::is_plain_identifier(s))
        .ok_or_else(|| ModelError::BadName {
            path: path.to_path_buf(),
        })?
        .to_string();
    let sql = std::fs::read_to_string(path).map_err(|source| ModelError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let dependencies = references(&sql).map_err(|e| match e {
        RefError::Syntax(message) => ModelError::Syntax {
            path: path.to_path_buf(),
            message,
        },
        RefError::NotASelect(detail) => ModelError::NotASelect {
            path: path.to_path_buf(),
            detail,
        },
    })?;
    Ok(Model {
        name,
        path: path.to_path_buf(),
        sql,
        dependencies,
    })
}

enum RefError {
    Syntax(String),
    NotASelect(String),
}

/// The table names a single SELECT statement reads (CTE names excluded), lowercased.
fn references(sql: &str) -> Result<Vec<String>, RefError> {
    let statements = DFParser::parse_sql(sql).map_err(|e| RefError::Syntax(e.to_string()))?;
    if statements.len() != 1 {
        return Err(RefError::NotASelect(format!(
            " (found {} statements)",
            statements.len()
        )));
    }
    let statement = &statements[0];
    match statement {
        DFStatement::Statement(s) if matches!(**s, Statement::Query(_)) => {}
        _ => return Err(RefError::NotASelect(String::new())),
    }
    let (tables, _) = datafusion::sql::resolve::resolve_table_references(statement, true)
        .map_err(|e| RefError::Syntax(e.to_string()))?;
    let mut names: Vec<String> = tables.iter().map(|t| t.to_string()).collect();
    names.sort();
    names.dedup();
    Ok(names)
}

/// A node of the relation graph: a model or a segment, with what it reads.
#[derive(Debug, Clone)]
pub struct Node<'a> {
    pub name: &'a str,
    pub path: Option<&'a Path>,
    pub dependencies: Vec<&'a str>,
}

/// Order models and segments so that each comes after what it reads. `sources` are leaves.
/// Returns every unknown reference, or the first cycle found.
///
/// `source_table` tells whether a qualified name (`SOURCE.table`) is a table of a database
/// source.
pub fn order<'a>(
    nodes: &[Node<'a>],
    sources: &BTreeSet<&'a str>,
    source_table: &dyn Fn(&str) -> bool,
) -> Result<Vec<&'a str>, Vec<ModelError>> {
    let by_name: BTreeMap<&str, &Node> = nodes.iter().map(|n| (n.name, n)).collect();
    let mut known: Vec<&str> = sources.iter().copied().collect();
    known.extend(by_name.keys().copied());
    known.sort();
    let mut errors = Vec::new();
    for node in nodes {
        for dep in &node.dependencies {
            if !by_name.contains_key(dep) && !sources.contains(dep) && !source_table(dep) {
                errors.push(ModelError::UnknownReference {
                    path: node
                        .path
                        .map(Path::to_path_buf)
                        .unwrap_or_else(|| PathBuf::from(format!("segment {}", node.name))),
                    name: dep.to_string(),
                    suggestion: crate::names::suggest(dep, known.iter().copied()),
                    known: known.join(", "),
                });
            }
        }
    }
    if !errors.is_empty() {
        return Err(errors);
    }

    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        Active,
        Done,
    }
    let mut marks: BTreeMap<&str, Mark> = by_name.keys().map(|k| (*k, Mark::New)).collect();
    let mut out = Vec::new();
    fn visit<'a>(
        name: &'a str,
        by_name: &BTreeMap<&'a str, &Node<'a>>,
        marks: &mut BTreeMap<&'a str, Mark>,
        stack: &mut Vec<&'a str>,
        out: &mut Vec<&'a str>,
    ) -> Result<(), ModelError> {
        match marks.get(name).copied() {
            None | Some(Mark::Done) => return Ok(()),
            Some(Mark::Active) => {
                let start = stack.iter().position(|n| *n == name).unwrap_or(0);
                let mut cycle: Vec<String> = stack[start..].iter().map(|s| s.to_string()).collect();
                cycle.push(name.to_string());
                return Err(ModelError::Cycle { cycle });
            }
            Some(Mark::New) => {}
        }
        marks.insert(name, Mark::Active);
        stack.push(name);
        if let Some(node) = by_name.get(name) {
            for dep in &node.dependencies {
                visit(dep, by_name, marks, stack, out)?;
            }
        }
        stack.pop();
        marks.insert(name, Mark::Done);
        out.push(name);
        Ok(())
    }
    let mut stack = Vec::new();
    for node in nodes {
        visit(node.name, &by_name, &mut marks, &mut stack, &mut out).map_err(|e| vec![e])?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node<'a>(name: &'a str, deps: &[&'a str]) -> Node<'a> {
        Node {
            name,
            path: None,
            dependencies: deps.to_vec(),
        }
    }

    #[test]
    fn references_skip_ctes_and_lowercase() {
        let refs =
            references("WITH x AS (SELECT * FROM People) SELECT * FROM x JOIN orders o ON true")
                .ok()
                .unwrap();
        assert_eq!(refs, vec!["orders", "people"]);
    }

    #[test]
    fn non_select_and_multiple_statements_are_refused() {
        assert!(matches!(
            references("DROP TABLE x"),
            Err(RefError::NotASelect(_))
        ));
        assert!(matches!(
            references("SELECT 1; SELECT 2"),
            Err(RefError::NotASelect(_))
        ));
        assert!(matches!(references("SELEC 1"), Err(RefError::Syntax(_))));
    }

    #[test]
    fn order_puts_dependencies_first() {
        let nodes = vec![
            node("c", &["b"]),
            node("b", &["a", "src"]),
            node("a", &["src"]),
        ];
        let sources = BTreeSet::from(["src"]);
        assert_eq!(
            order(&nodes, &sources, &|_| false).unwrap(),
            vec!["a", "b", "c"]
        );
    }

    #[test]
    fn cycles_and_unknown_names_are_reported() {
        let nodes = vec![node("a", &["b"]), node("b", &["c"]), node("c", &["a"])];
        let err = order(&nodes, &BTreeSet::new(), &|_| false).unwrap_err();
        assert_eq!(
            err[0].to_string(),
            "models depend on each other in a cycle: a → b → c → a"
        );
        let nodes = vec![node("a", &["peple"])];
        let err = order(&nodes, &BTreeSet::from(["people"]), &|_| false).unwrap_err();
        assert!(err[0].to_string().contains("did you mean \"people\""));
    }
}
