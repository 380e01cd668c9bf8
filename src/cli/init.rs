//! `init`: a working starter project.

use std::path::Path;

/// The starter project `init` writes.
const STARTER: &[(&str, &str)] = &[
    (
        "backflow.toml",
        include_str!("../../data/starter/backflow.toml"),
    ),
    ("people.csv", include_str!("../../data/starter/people.csv")),
    (
        "models/customers.sql",
        include_str!("../../data/starter/models/customers.sql"),
    ),
    (".gitignore", ".backflow/\nout/\n"),
];

pub(super) fn init(dir: &Path) -> Result<(), String> {
    if dir.exists() {
        let mut entries =
            std::fs::read_dir(dir).map_err(|e| format!("cannot read {}: {e}", dir.display()))?;
        if entries.next().is_some() {
            return Err(format!(
                "{} is not empty; init only writes into a new or empty folder",
                dir.display()
            ));
        }
    }
    for (rel, text) in STARTER {
        let path = dir.join(rel);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .map_err(|e| format!("cannot create {}: {e}", parent.display()))?;
        }
        std::fs::write(&path, text).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    }
    out!(
        "Created a starter project in {0}.\n\nNext:\n  backflow check --project {0}\n  backflow plan  --project {0}\n  backflow run   --project {0}\n\nEdit {0}/backflow.toml and {0}/models/*.sql to point it at your data.",
        dir.display()
    );
    Ok(())
}
