//! The file destination (`exports/` in the project), in both modes:
//! - `snapshot`: `exports/<object>.<format>` holds the object's contents;
//! - `changes`: `exports/<object>/v<version>.<format>` per run, holding its changes with
//!   `__bf_op`. The feed is read as its consumer would: the files folded in version order
//!   (upsert: set the fields the file has; update: only a record that is there; create: only
//!   one that is not; append: add a row; delete: remove the key's rows). Seeded records are a
//!   version-0 file: what the consumer held before backflow's first run.
//!
//! Reading a feed also checks its shape: file names `v` + 20 digits, operations among the five
//! the README names, and deletes carrying only the key.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use async_trait::async_trait;

use crate::conformance::text::{self, Table};
use crate::conformance::{Capabilities, DestinationFixture, KEY, NULL, ObjectSchema, Seed, Setup};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileFormat {
    Parquet,
    Csv,
    Jsonl,
}

impl FileFormat {
    fn name(self) -> &'static str {
        match self {
            FileFormat::Parquet => "parquet",
            FileFormat::Csv => "csv",
            FileFormat::Jsonl => "jsonl",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileMode {
    Snapshot,
    Changes,
}

const OP: &str = "__bf_op";
const OPS: &[&str] = &["upsert", "update", "create", "append", "delete"];

pub struct FileFixture {
    exports: PathBuf,
    format: FileFormat,
    mode: FileMode,
}

pub async fn open(
    setup: Setup,
    format: FileFormat,
    mode: FileMode,
) -> Option<Box<dyn DestinationFixture>> {
    Some(Box::new(FileFixture {
        exports: setup.dir.join("exports"),
        format,
        mode,
    }))
}

impl FileFixture {
    fn ext(&self) -> &'static str {
        self.format.name()
    }

    /// The snapshot file, or the feed's folder.
    fn path(&self, object: &str) -> PathBuf {
        match self.mode {
            FileMode::Snapshot => self.exports.join(format!("{object}.{}", self.ext())),
            FileMode::Changes => self.exports.join(object),
        }
    }

    /// The feed's files in version order, checking their names.
    fn feed_files(&self, folder: &Path) -> Vec<(u64, PathBuf)> {
        let Ok(entries) = std::fs::read_dir(folder) else {
            return Vec::new();
        };
        let mut files: Vec<(u64, PathBuf)> = entries
            .flatten()
            .map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                let version = name
                    .strip_prefix('v')
                    .and_then(|n| n.strip_suffix(&format!(".{}", self.ext())))
                    .filter(|n| n.len() == 20 && n.chars().all(|c| c.is_ascii_digit()))
                    .unwrap_or_else(|| panic!("not a change file: {name}"))
                    .parse::<u64>()
                    .unwrap();
                (version, e.path())
            })
            .collect();
        files.sort();
        files
    }

    /// The feed folded into rows by `key` (all the columns any file has).
    fn fold(&self, folder: &Path, key: &[&str]) -> Table {
        let mut columns: Vec<String> = key.iter().map(|k| k.to_string()).collect();
        // Rows in arrival order (None once deleted), and where each key's rows are.
        let mut rows: Vec<Option<Vec<String>>> = Vec::new();
        let mut by_key: HashMap<String, Vec<usize>> = HashMap::new();
        for (version, path) in self.feed_files(folder) {
            let file = text::read_table(&path, self.ext());
            for c in &file.columns {
                if c != OP && !columns.contains(c) {
                    columns.push(c.clone());
                    for r in rows.iter_mut().flatten() {
                        r.push(NULL.to_string());
                    }
                }
            }
            let op_at = file
                .columns
                .iter()
                .position(|c| c == OP)
                .unwrap_or_else(|| panic!("v{version} has no {OP} column"));
            let key_at: Vec<usize> = key
                .iter()
                .map(|k| file.columns.iter().position(|c| c == k).unwrap())
                .collect();
            // Where each of the file's columns goes in the folded rows.
            let to: Vec<Option<usize>> = file
                .columns
                .iter()
                .map(|c| (c != OP).then(|| columns.iter().position(|o| o == c).unwrap()))
                .collect();
            for row in &file.rows {
                let op = row[op_at].as_str();
                assert!(OPS.contains(&op), "v{version}: unknown operation {op}");
                let key = key_at
                    .iter()
                    .map(|i| row[*i].clone())
                    .collect::<Vec<_>>()
                    .join("\u{1f}");
                let fields = || to.iter().zip(row).filter_map(|(to, v)| to.map(|i| (i, v)));
                let present = by_key.get(&key).is_some_and(|at| !at.is_empty());
                match op {
                    "delete" => {
                        assert!(
                            fields().all(|(i, v)| i < key_at.len() || v == NULL),
                            "v{version}: a delete carries more than the key: {row:?}"
                        );
                        for i in by_key.remove(&key).unwrap_or_default() {
                            rows[i] = None;
                        }
                    }
                    "create" if present => {}
                    "update" if !present => {}
                    "upsert" | "update" | "create" if present => {
                        for &i in &by_key[&key] {
                            let r = rows[i].as_mut().unwrap();
                            for (c, v) in fields() {
                                r[c] = v.clone();
                            }
                        }
                    }
                    _ => {
                        let mut r = vec![NULL.to_string(); columns.len()];
                        for (c, v) in fields() {
                            r[c] = v.clone();
                        }
                        by_key.entry(key).or_default().push(rows.len());
                        rows.push(Some(r));
                    }
                }
            }
        }
        Table {
            columns,
            types: None,
            rows: rows.into_iter().flatten().collect(),
        }
    }

    fn contents(&self, object: &str, key: &[&str]) -> Table {
        let path = self.path(object);
        match self.mode {
            FileMode::Snapshot if path.exists() => text::read_table(&path, self.ext()),
            FileMode::Snapshot => Table::default(),
            FileMode::Changes => self.fold(&path, key),
        }
    }
}

#[async_trait]
impl DestinationFixture for FileFixture {
    fn toml(&self) -> String {
        let mode = match self.mode {
            FileMode::Snapshot => "",
            FileMode::Changes => "mode = \"changes\"\n",
        };
        format!(
            "[destinations.dest]\ntype = \"file\"\npath = \"exports\"\nformat = \"{}\"\n{mode}",
            self.ext()
        )
    }

    fn capabilities(&self) -> Capabilities {
        let changes = self.mode == FileMode::Changes;
        Capabilities {
            checks_records: !changes,
            editable: !changes,
            lists_records: !changes,
            // A file takes any value; only a snapshot's update-only of an unknown key is
            // refused (see `update_only`).
            refuses: Vec::new(),
            types: (self.format == FileFormat::Parquet).then(|| {
                vec![
                    (KEY, "Int64"),
                    ("i16", "Int16"),
                    ("i32", "Int32"),
                    ("i64", "Int64"),
                    ("f64", "Float64"),
                    ("dec", "Decimal128(38, 10)"),
                    ("flag", "Boolean"),
                    ("day", "Date32"),
                    ("at", "Timestamp(µs)"),
                    ("at_utc", "Timestamp(µs, \"UTC\")"),
                    ("txt", "Utf8View"),
                ]
            }),
            primary_key: false,
            min_date: "0001-01-01",
            empty_text_is_null: self.format == FileFormat::Csv,
            column_defaults: false,
            applies_per_batch: false,
            composite_keys: true,
        }
    }

    async fn seed(&self, object: &str, seed: Seed<'_>) {
        let (path, mut table) = match self.mode {
            FileMode::Snapshot => (self.path(object), self.contents(object, &[KEY])),
            FileMode::Changes => {
                let path = self.path(object).join(format!("v{:020}.{}", 0, self.ext()));
                assert!(
                    !path.exists() || self.feed_files(&self.path(object)).len() == 1,
                    "a change feed is seeded only before backflow's first run"
                );
                let table = if path.exists() {
                    self.fold(&self.path(object), &[KEY])
                } else {
                    Table::default()
                };
                (path, table)
            }
        };
        if table.columns.is_empty() {
            table.columns = seed.columns.iter().map(|c| c.to_string()).collect();
        }
        for c in seed.columns {
            if !table.columns.iter().any(|t| t == c) {
                table.columns.push(c.to_string());
                for r in &mut table.rows {
                    r.push(NULL.to_string());
                }
            }
        }
        let key_at = table.columns.iter().position(|c| c == KEY).unwrap();
        for row in &seed.rows {
            let existing = seed
                .keyed
                .then(|| table.rows.iter().position(|r| r[key_at] == row[0]))
                .flatten();
            let i = existing.unwrap_or_else(|| {
                table.rows.push(vec![NULL.to_string(); table.columns.len()]);
                table.rows.len() - 1
            });
            for (c, v) in seed.columns.iter().zip(row) {
                let at = table.columns.iter().position(|t| t == c).unwrap();
                table.rows[i][at] = v.clone();
            }
        }
        if self.mode == FileMode::Changes {
            let op = if seed.keyed { "upsert" } else { "append" };
            table.columns.push(OP.into());
            for r in &mut table.rows {
                r.push(op.into());
            }
        }
        text::write_table(&path, self.ext(), &table.columns, &table.rows);
    }

    async fn create_refusing(&self, _object: &str) {}

    async fn read(&self, object: &str, columns: &[&str]) -> Vec<Vec<String>> {
        self.contents(object, &[KEY]).project(columns)
    }

    async fn read_keyed(&self, object: &str, columns: &[&str], key: &[&str]) -> Vec<Vec<String>> {
        self.contents(object, key).project(columns)
    }

    async fn schema(&self, object: &str) -> Option<ObjectSchema> {
        if self.format != FileFormat::Parquet {
            return None;
        }
        let path = match self.mode {
            FileMode::Snapshot => self.path(object),
            FileMode::Changes => self.feed_files(&self.path(object)).last()?.1.clone(),
        };
        let table = text::read_parquet(&path);
        Some(ObjectSchema {
            columns: table
                .columns
                .into_iter()
                .zip(table.types.unwrap_or_default())
                .collect(),
            primary_key: Vec::new(),
        })
    }

    async fn touched(&self, object: &str) -> Option<String> {
        let files = match self.mode {
            FileMode::Snapshot => vec![self.path(object)],
            FileMode::Changes => self
                .feed_files(&self.path(object))
                .into_iter()
                .map(|(_, p)| p)
                .collect(),
        };
        let stamps: Vec<String> = files
            .iter()
            .map(|p| {
                let m = std::fs::metadata(p).unwrap();
                format!("{} {} {:?}", p.display(), m.len(), m.modified().unwrap())
            })
            .collect();
        Some(stamps.join("\n"))
    }

    async fn cleanup(&self) {}
}
