//! CSV rows that cannot be read as rows of their file are quarantined, not fatal: a row with
//! another number of fields than the header, or a field that is not UTF-8. Before a local CSV
//! file is registered it is scanned once; when it has such rows, a clean copy without them
//! (in a folder the project removes when it is done) is read instead, and each row left out
//! is reported with its file, line and reason, as an invalid record of every sync and entity
//! that reads the source.
//!
//! Everything else a CSV can hold — a byte-order mark, CRLF line ends, quoted fields with
//! newlines and delimiters, blank lines — is read as it is.

use std::collections::VecDeque;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::Serialize;

/// At most this many quarantined rows are kept per source (all are counted).
pub const KEEP: usize = 1000;

/// A CSV row left out of its source.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct QuarantinedRow {
    pub source: String,
    pub file: String,
    /// The line the row starts on (1 is the first line of the file).
    pub line: u64,
    pub reason: String,
    /// The row's fields as text (invalid UTF-8 replaced), joined by the delimiter.
    pub record: String,
}

/// What the scan of one source's files found.
#[derive(Debug, Default)]
pub struct Quarantine {
    /// The rows kept (up to [`KEEP`]).
    pub rows: Vec<QuarantinedRow>,
    /// How many rows were left out in all.
    pub count: u64,
}

/// The CSV reading settings the scan needs.
#[derive(Debug, Clone, Copy)]
pub struct CsvShape {
    pub has_header: bool,
    pub delimiter: u8,
}

/// Newlines and carriage returns seen by the CSV reader, so a row's real first line can be
/// told (the reader places a row's start before the line ends that precede it).
#[derive(Debug, Default)]
struct LineBreaks {
    /// Offsets of `\n` and `\r` bytes not yet behind the current row, with the byte.
    pending: VecDeque<(u64, u8)>,
    /// `\n` bytes already dropped from `pending`.
    newlines_before: u64,
    offset: u64,
}

impl LineBreaks {
    /// The line a row whose start the reader reports at `byte` begins on.
    fn line_of(&mut self, byte: u64) -> u64 {
        while let Some(&(at, b)) = self.pending.front() {
            if at >= byte {
                break;
            }
            if b == b'\n' {
                self.newlines_before += 1;
            }
            self.pending.pop_front();
        }
        // Line ends right at the row's start belong before it.
        let skipped = self
            .pending
            .iter()
            .zip(byte..)
            .take_while(|((at, _), next)| at == next)
            .filter(|((_, b), _)| *b == b'\n')
            .count() as u64;
        1 + self.newlines_before + skipped
    }
}

struct Counting<R> {
    inner: R,
    breaks: Arc<Mutex<LineBreaks>>,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        if let Ok(mut lb) = self.breaks.lock() {
            let start = lb.offset;
            for (i, b) in buf[..n].iter().enumerate() {
                if *b == b'\n' || *b == b'\r' {
                    lb.pending.push_back((start + i as u64, *b));
                }
            }
            lb.offset += n as u64;
        }
        Ok(n)
    }
}

/// Why a row cannot be read, given the header's field count.
fn problem(record: &csv::ByteRecord, expected: usize) -> Option<String> {
    if record.len() != expected {
        return Some(format!(
            "the row has {} field(s), the header has {expected}",
            record.len()
        ));
    }
    record
        .iter()
        .position(|f| std::str::from_utf8(f).is_err())
        .map(|i| format!("field {} is not valid UTF-8", i + 1))
}

fn text(record: &csv::ByteRecord, delimiter: u8) -> String {
    let sep = (delimiter as char).to_string();
    record
        .iter()
        .map(|f| String::from_utf8_lossy(f).into_owned())
        .collect::<Vec<_>>()
        .join(&sep)
}

/// A CSV reader over a file that counts the line ends it reads.
type LineCountingReader = csv::Reader<Counting<std::fs::File>>;

fn reader(
    path: &Path,
    shape: CsvShape,
) -> std::io::Result<(LineCountingReader, Arc<Mutex<LineBreaks>>)> {
    let breaks = Arc::new(Mutex::new(LineBreaks::default()));
    let file = std::fs::File::open(path)?;
    let r = csv::ReaderBuilder::new()
        .has_headers(shape.has_header)
        .delimiter(shape.delimiter)
        .flexible(true)
        .from_reader(Counting {
            inner: file,
            breaks: breaks.clone(),
        });
    Ok((r, breaks))
}

/// What a scan found in one file.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Scanned {
    pub rows: u64,
    pub bad: u64,
}

/// Scan `path`; its quarantined rows go to `found` (tagged with `source`).
pub fn scan(
    path: &Path,
    shape: CsvShape,
    source: &str,
    found: &mut Quarantine,
) -> Result<Scanned, String> {
    let (mut r, breaks) = reader(path, shape).map_err(|e| e.to_string())?;
    let mut expected = if shape.has_header {
        let header = r.byte_headers().map_err(|e| e.to_string())?;
        if header.iter().any(|f| std::str::from_utf8(f).is_err()) {
            return Err("the header line is not valid UTF-8".into());
        }
        Some(header.len())
    } else {
        None
    };
    let mut record = csv::ByteRecord::new();
    let mut scanned = Scanned::default();
    loop {
        match r.read_byte_record(&mut record) {
            Ok(true) => {}
            Ok(false) => break,
            Err(e) => return Err(e.to_string()),
        }
        scanned.rows += 1;
        let width = *expected.get_or_insert(record.len());
        // Every row moves the window of line ends along (it stays short).
        let byte = record.position().map_or(0, |p| p.byte());
        let line = breaks.lock().map(|mut b| b.line_of(byte)).unwrap_or(0);
        if let Some(reason) = problem(&record, width) {
            scanned.bad += 1;
            found.count += 1;
            if found.rows.len() < KEEP {
                found.rows.push(QuarantinedRow {
                    source: source.to_string(),
                    file: path.display().to_string(),
                    line,
                    reason,
                    record: text(&record, shape.delimiter),
                });
            }
        }
    }
    Ok(scanned)
}

/// Write `path` without its bad rows to `to` (same header, same delimiter).
pub fn clean_copy(path: &Path, shape: CsvShape, to: &Path) -> Result<(), String> {
    use std::io::Write;
    let (mut r, _) = reader(path, shape).map_err(|e| e.to_string())?;
    let mut out = std::fs::File::create(to).map_err(|e| e.to_string())?;
    let mut expected = None;
    if shape.has_header {
        // The header line as it was, byte for byte (a byte-order mark included): written
        // again by a CSV writer, a header such as a second byte-order mark would read back
        // differently.
        let header = r.byte_headers().map_err(|e| e.to_string())?.clone();
        expected = Some(header.len());
        let end = r.position().byte();
        let mut prefix = Vec::new();
        std::fs::File::open(path)
            .and_then(|f| f.take(end).read_to_end(&mut prefix))
            .map_err(|e| e.to_string())?;
        if !prefix.ends_with(b"\n") && !prefix.ends_with(b"\r") {
            prefix.push(b'\n');
        }
        out.write_all(&prefix).map_err(|e| e.to_string())?;
    }
    let mut w = csv::WriterBuilder::new()
        .delimiter(shape.delimiter)
        .from_writer(out);
    let mut record = csv::ByteRecord::new();
    while r.read_byte_record(&mut record).map_err(|e| e.to_string())? {
        let width = *expected.get_or_insert(record.len());
        if problem(&record, width).is_none() {
            w.write_byte_record(&record).map_err(|e| e.to_string())?;
        }
    }
    w.flush().map_err(|e| e.to_string())
}

/// The local CSV files a source's path names: the file, the `*.csv` files of a folder, or
/// the files a glob matches (sorted).
pub fn files(path: &Path, display: &str) -> Vec<PathBuf> {
    if path.is_file() {
        return vec![path.to_path_buf()];
    }
    if path.is_dir() {
        // Subfolders too (`region=eu/…`): the listing table reads them.
        let mut out = Vec::new();
        let mut todo = vec![path.to_path_buf()];
        while let Some(dir) = todo.pop() {
            for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
                let p = e.path();
                if p.is_dir() {
                    todo.push(p);
                } else if p.is_file() && p.extension().is_some_and(|e| e == "csv") {
                    out.push(p);
                }
            }
        }
        out.sort();
        return out;
    }
    // A glob in the last segment only (as the listing table reads it).
    let (Some(dir), Some(pattern)) = (path.parent(), path.file_name().and_then(|n| n.to_str()))
    else {
        return Vec::new();
    };
    if !display.contains(['*', '?', '[']) {
        return Vec::new();
    }
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.is_file()
                && p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| glob_match(pattern, n))
        })
        .collect();
    out.sort();
    out
}

/// `*`, `?` and plain characters (enough for `in/*.csv`, `part-??.csv`).
fn glob_match(pattern: &str, name: &str) -> bool {
    let (p, n): (Vec<char>, Vec<char>) = (pattern.chars().collect(), name.chars().collect());
    let (mut pi, mut ni, mut star, mut mark) = (0, 0, None, 0);
    while ni < n.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == n[ni]) {
            pi += 1;
            ni += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ni;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ni = mark;
        } else {
            return false;
        }
    }
    while pi < p.len() && p[pi] == '*' {
        pi += 1;
    }
    pi == p.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan_text(data: &[u8]) -> Quarantine {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.csv");
        std::fs::write(&p, data).unwrap();
        let mut q = Quarantine::default();
        scan(
            &p,
            CsvShape {
                has_header: true,
                delimiter: b',',
            },
            "s",
            &mut q,
        )
        .unwrap();
        q
    }

    #[test]
    fn bad_rows_are_found_on_their_lines() {
        let q = scan_text(
            b"\xef\xbb\xbfid,name\r\n1,a\r\n\r\n2,\"multi\nline\"\r\n3,b,extra\r\n4,\xff\xfe\r\n5,ok\r\n6\r\n",
        );
        let got: Vec<(u64, &str)> = q.rows.iter().map(|r| (r.line, r.reason.as_str())).collect();
        assert_eq!(
            got,
            vec![
                (6, "the row has 3 field(s), the header has 2"),
                (7, "field 2 is not valid UTF-8"),
                (9, "the row has 1 field(s), the header has 2"),
            ]
        );
        assert_eq!(q.count, 3);
        assert_eq!(q.rows[0].record, "3,b,extra");
        assert!(scan_text(b"id,name\n1,a\n\n2,\"b,c\"\n").rows.is_empty());
    }

    #[test]
    fn a_clean_copy_keeps_the_good_rows() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.csv");
        std::fs::write(&p, "id,name\n1,\"a,b\"\n2,x,y\n3,c\n").unwrap();
        let to = dir.path().join("y.csv");
        let shape = CsvShape {
            has_header: true,
            delimiter: b',',
        };
        clean_copy(&p, shape, &to).unwrap();
        assert_eq!(
            std::fs::read_to_string(&to).unwrap(),
            "id,name\n1,\"a,b\"\n3,c\n"
        );
    }

    #[test]
    fn globs() {
        assert!(glob_match("*.csv", "a.csv"));
        assert!(glob_match("part-??.csv", "part-01.csv"));
        assert!(!glob_match("part-??.csv", "part-1.csv"));
        assert!(glob_match("*", "x"));
        assert!(!glob_match("*.csv", "a.parquet"));
    }
}
