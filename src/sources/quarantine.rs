//! CSV rows that cannot be read as rows of their file are quarantined, not fatal: a row with
//! another number of fields than the header, a field that is not UTF-8, or a value that does
//! not parse as its column's type. Before a CSV source is registered:
//!
//! ```text
//!  files ──► infer ──────────────────► scan ─────────────────► clean copy ──► read with
//!  (local,   column types from the     every row: its shape     (only when     the inferred
//!  or copied first `infer_schema_rows` and each value against   a row was      schema
//!  from an   rows that have the        its column's type, as    left out)
//!  object    right shape (arrow-csv's  arrow-csv would parse
//!  store:    own inference)            it (empty = NULL)
//!  `fetch`)
//! ```
//!
//! When a file has such rows, a clean copy without them (in a folder the project removes when
//! it is done) is read instead, and each row left out is reported with its file, line and
//! reason, as an invalid record of every sync and entity that reads the source. The session
//! reads with the inferred schema, so what was checked is what is read: a value the reader
//! would reject was left out with its row, and no value is read as something else.
//!
//! Everything else a CSV can hold — a byte-order mark, CRLF line ends, quoted fields with
//! newlines and delimiters, blank lines — is read as it is.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::{Arc, Mutex};

use arrow::compute::kernels::cast_utils::{Parser, string_to_datetime};
use arrow::datatypes::{DataType, Date32Type, Field, Float64Type, Int64Type, Schema, TimeUnit};
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
    /// The row's fields by column name, when it has as many as the header (a row left out
    /// for a value, not for its shape): what names its key in messages.
    pub fields: Vec<(String, String)>,
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

/// A CSV file to scan: where it is on this machine, and the name messages give it (what the
/// source names: its path, or its URL when it was copied from an object store).
#[derive(Debug, Clone, PartialEq)]
pub struct CsvFile {
    pub path: PathBuf,
    pub name: String,
}

/// The column types a source's values are checked against, and read as (the session is
/// given this schema, so it does not infer another): arrow-csv's inference over the first
/// rows.
#[derive(Debug, Clone)]
pub struct ColumnTypes {
    pub schema: Schema,
    /// Rows the types were inferred from.
    pub sampled: usize,
    /// Whether those were all the rows (of the right shape) there are.
    pub complete: bool,
}

impl ColumnTypes {
    /// Whether inference stopped at its limit with rows left unread.
    pub fn partial(&self) -> bool {
        !self.complete
    }

    /// Why `record` (of the right shape) cannot be read with these types: its first value
    /// that the reader would reject.
    fn mismatch(&self, record: &csv::ByteRecord) -> Option<String> {
        for (field, bytes) in self.schema.fields().iter().zip(record.iter()) {
            let Ok(value) = std::str::from_utf8(bytes) else {
                continue;
            };
            if fits(field.data_type(), value) {
                continue;
            }
            let mut shown: String = value.chars().take(100).collect();
            if shown.len() < value.len() {
                shown.push('…');
            }
            let from = if self.partial() {
                format!(
                    "the type inferred from the first {} rows; set infer_schema_rows to infer it from more",
                    self.sampled
                )
            } else {
                format!("the type inferred from all {} rows", self.sampled)
            };
            return Some(format!(
                "column \"{}\": {shown:?} is not {} ({from})",
                field.name(),
                describe(field.data_type())
            ));
        }
        None
    }
}

/// A type as messages name it.
fn describe(t: &DataType) -> String {
    match t {
        DataType::Int64 => "an integer (Int64)".into(),
        DataType::Float64 => "a number (Float64)".into(),
        DataType::Boolean => "a boolean (true or false)".into(),
        DataType::Date32 => "a date (Date32)".into(),
        DataType::Timestamp(..) => format!("a timestamp ({t})"),
        DataType::Null => "empty (the column is empty in every row)".into(),
        other => format!("a {other}"),
    }
}

/// Whether arrow-csv reads `value` as a value of type `t` (its `build_*_array` functions with
/// the default null rule: an empty field is NULL), for every type its inference gives.
fn fits(t: &DataType, value: &str) -> bool {
    if value.is_empty() {
        return true;
    }
    match t {
        DataType::Boolean => {
            value.eq_ignore_ascii_case("true") || value.eq_ignore_ascii_case("false")
        }
        DataType::Int64 => Int64Type::parse(value).is_some(),
        DataType::Float64 => Float64Type::parse(value).is_some(),
        DataType::Date32 => Date32Type::parse(value).is_some(),
        // Without a time zone, as UTC (arrow-csv's `build_timestamp_array`).
        DataType::Timestamp(unit, None) => string_to_datetime(&chrono::Utc, value)
            .is_ok_and(|d| *unit != TimeUnit::Nanosecond || d.timestamp_nanos_opt().is_some()),
        // A NULL column reads every value as NULL: one that is not empty would be lost.
        DataType::Null => false,
        _ => true,
    }
}

/// Infer the column types of `files` from their first `limit` rows that have the right
/// shape (the rows a clean copy keeps), as DataFusion's CSV format does: arrow-csv's
/// inference over the files in turn until `limit` rows were read (over each file whole,
/// where DataFusion merges the types of the chunks it happens to read), then the files'
/// schemas merged; `limit = 0` reads every column as text. A column with no value in the rows read
/// is text when rows were left unread (it is NULL only when the file says so throughout).
pub fn infer(files: &[CsvFile], shape: CsvShape, limit: usize) -> Result<ColumnTypes, String> {
    let format = arrow::csv::reader::Format::default()
        .with_header(shape.has_header)
        .with_delimiter(shape.delimiter);
    let mut schemas = Vec::new();
    let mut left = limit;
    let mut more = false;
    for (i, file) in files.iter().enumerate() {
        let named = |e: String| format!("{}: {e}", file.name);
        let mut rows = GoodRows::open(&file.path, shape).map_err(named)?;
        let (schema, read) = format
            .infer_schema(&mut rows, Some(left))
            .map_err(|e| named(e.to_string()))?;
        left -= read.min(left);
        schemas.push(schema);
        if left == 0 {
            more = rows.has_more(read).map_err(named)?;
            for later in &files[i + 1..] {
                if more {
                    break;
                }
                more = GoodRows::open(&later.path, shape)
                    .and_then(|mut r| r.has_more(0))
                    .map_err(|e| format!("{}: {e}", later.name))?;
            }
            break;
        }
    }
    let schema =
        Schema::try_merge(schemas).map_err(|e| format!("the files' columns do not agree: {e}"))?;
    let sampled = limit - left;
    let fields: Vec<Field> = schema
        .fields()
        .iter()
        .map(|f| {
            let f = f.as_ref().clone();
            if limit == 0 || (more && f.data_type() == &DataType::Null) {
                f.with_data_type(DataType::Utf8)
            } else {
                f
            }
        })
        .collect();
    Ok(ColumnTypes {
        schema: Schema::new(fields),
        sampled,
        complete: !more,
    })
}

/// The header and the rows of a file that have the right shape, as CSV text: what schema
/// inference reads (arrow-csv's would stop at the first row of another width).
struct GoodRows {
    reader: csv::Reader<std::fs::File>,
    out: csv::Writer<Pending>,
    /// What `out` wrote and `read` has not handed out yet (from `at`).
    pending: Rc<RefCell<Vec<u8>>>,
    at: usize,
    width: Option<usize>,
    done: bool,
    /// Rows handed to `out` (the header not counted).
    emitted: usize,
}

impl GoodRows {
    fn open(path: &Path, shape: CsvShape) -> Result<GoodRows, String> {
        let file = std::fs::File::open(path).map_err(|e| e.to_string())?;
        let mut reader = builder(shape).from_reader(file);
        let pending = Rc::new(RefCell::new(Vec::new()));
        let mut out = csv::WriterBuilder::new()
            .delimiter(shape.delimiter)
            .flexible(true)
            .from_writer(Pending(pending.clone()));
        let mut width = None;
        if shape.has_header {
            let header = reader.byte_headers().map_err(|e| e.to_string())?;
            if header.iter().any(|f| std::str::from_utf8(f).is_err()) {
                return Err("the header line is not valid UTF-8".into());
            }
            width = Some(header.len());
            out.write_byte_record(header).map_err(|e| e.to_string())?;
            out.flush().map_err(|e| e.to_string())?;
        }
        Ok(GoodRows {
            reader,
            out,
            pending,
            at: 0,
            width,
            done: false,
            emitted: 0,
        })
    }

    /// Whether a row of the right shape follows the first `read` ones.
    fn has_more(&mut self, read: usize) -> Result<bool, String> {
        if self.emitted > read {
            return Ok(true);
        }
        let mut record = csv::ByteRecord::new();
        while self
            .reader
            .read_byte_record(&mut record)
            .map_err(|e| e.to_string())?
        {
            let width = *self.width.get_or_insert(record.len());
            if shape_problem(&record, width).is_none() {
                return Ok(true);
            }
        }
        Ok(false)
    }
}

impl Read for GoodRows {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let mut record = csv::ByteRecord::new();
        loop {
            {
                let mut pending = self.pending.borrow_mut();
                let left = &pending[self.at.min(pending.len())..];
                if !left.is_empty() {
                    let n = left.len().min(buf.len());
                    buf[..n].copy_from_slice(&left[..n]);
                    self.at += n;
                    return Ok(n);
                }
                pending.clear();
                self.at = 0;
            }
            if self.done {
                return Ok(0);
            }
            if !self
                .reader
                .read_byte_record(&mut record)
                .map_err(std::io::Error::other)?
            {
                self.done = true;
                continue;
            }
            let width = *self.width.get_or_insert(record.len());
            if shape_problem(&record, width).is_none() {
                self.out
                    .write_byte_record(&record)
                    .map_err(std::io::Error::other)?;
                self.out.flush()?;
                self.emitted += 1;
            }
        }
    }
}

/// The buffer a [`GoodRows`]' CSV writer writes to.
struct Pending(Rc<RefCell<Vec<u8>>>);

impl std::io::Write for Pending {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.borrow_mut().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Why a row cannot be read as a row of its file, given the header's field count.
fn shape_problem(record: &csv::ByteRecord, expected: usize) -> Option<String> {
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

/// What is wrong with a row, if anything.
enum Problem {
    /// Not a row of the file: another width, or not UTF-8.
    Shape(String),
    /// A value its column's type cannot hold.
    Value(String),
}

impl Problem {
    fn reason(self) -> String {
        match self {
            Problem::Shape(r) | Problem::Value(r) => r,
        }
    }
}

fn problem(
    record: &csv::ByteRecord,
    expected: usize,
    columns: Option<&ColumnTypes>,
) -> Option<Problem> {
    if let Some(reason) = shape_problem(record, expected) {
        return Some(Problem::Shape(reason));
    }
    columns.and_then(|c| c.mismatch(record)).map(Problem::Value)
}

fn text(record: &csv::ByteRecord, delimiter: u8) -> String {
    let sep = (delimiter as char).to_string();
    record
        .iter()
        .map(|f| String::from_utf8_lossy(f).into_owned())
        .collect::<Vec<_>>()
        .join(&sep)
}

fn builder(shape: CsvShape) -> csv::ReaderBuilder {
    let mut b = csv::ReaderBuilder::new();
    b.has_headers(shape.has_header)
        .delimiter(shape.delimiter)
        .flexible(true);
    b
}

/// A CSV reader over a file that counts the line ends it reads.
type LineCountingReader = csv::Reader<Counting<std::fs::File>>;

fn reader(
    path: &Path,
    shape: CsvShape,
) -> std::io::Result<(LineCountingReader, Arc<Mutex<LineBreaks>>)> {
    let breaks = Arc::new(Mutex::new(LineBreaks::default()));
    let file = std::fs::File::open(path)?;
    let r = builder(shape).from_reader(Counting {
        inner: file,
        breaks: breaks.clone(),
    });
    Ok((r, breaks))
}

/// What a scan found in one file.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Scanned {
    pub rows: u64,
    /// Rows that are not rows of the file (another width, not UTF-8).
    pub bad: u64,
    /// Rows of the right shape with a value their column's type cannot hold.
    pub mistyped: u64,
}

impl Scanned {
    /// Rows left out, for whatever reason.
    pub fn left_out(&self) -> u64 {
        self.bad + self.mistyped
    }
}

/// Scan `file`, checking each row's shape and, with `columns`, each value against its
/// column's type; the rows left out go to `found` (tagged with `source`).
pub fn scan(
    file: &CsvFile,
    shape: CsvShape,
    columns: Option<&ColumnTypes>,
    source: &str,
    found: &mut Quarantine,
) -> Result<Scanned, String> {
    let (mut r, breaks) = reader(&file.path, shape).map_err(|e| e.to_string())?;
    let mut names: Vec<String> = Vec::new();
    let mut expected = if shape.has_header {
        let header = r.byte_headers().map_err(|e| e.to_string())?;
        if header.iter().any(|f| std::str::from_utf8(f).is_err()) {
            return Err("the header line is not valid UTF-8".into());
        }
        names = header
            .iter()
            .map(|f| {
                String::from_utf8_lossy(f)
                    .trim_start_matches('\u{feff}')
                    .to_string()
            })
            .collect();
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
        if let Some(p) = problem(&record, width, columns) {
            match p {
                Problem::Shape(_) => scanned.bad += 1,
                Problem::Value(_) => scanned.mistyped += 1,
            }
            found.count += 1;
            if found.rows.len() < KEEP {
                found.rows.push(QuarantinedRow {
                    source: source.to_string(),
                    file: file.name.clone(),
                    line,
                    reason: p.reason(),
                    record: text(&record, shape.delimiter),
                    fields: if record.len() == names.len() {
                        names
                            .iter()
                            .zip(record.iter())
                            .map(|(n, v)| (n.clone(), String::from_utf8_lossy(v).into_owned()))
                            .collect()
                    } else {
                        Vec::new()
                    },
                });
            }
        }
    }
    Ok(scanned)
}

/// Write `path` without the rows [`scan`] leaves out to `to` (same header, same delimiter).
pub fn clean_copy(
    path: &Path,
    shape: CsvShape,
    columns: Option<&ColumnTypes>,
    to: &Path,
) -> Result<(), String> {
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
        if problem(&record, width, columns).is_none() {
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
pub(crate) fn glob_match(pattern: &str, name: &str) -> bool {
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
        let file = CsvFile {
            name: "x.csv".into(),
            path: p,
        };
        scan(&file, SHAPE, None, "s", &mut q).unwrap();
        q
    }

    const SHAPE: CsvShape = CsvShape {
        has_header: true,
        delimiter: b',',
    };

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
        clean_copy(&p, SHAPE, None, &to).unwrap();
        assert_eq!(
            std::fs::read_to_string(&to).unwrap(),
            "id,name\n1,\"a,b\"\n3,c\n"
        );
    }

    fn file(dir: &Path, name: &str, text: &[u8]) -> CsvFile {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        CsvFile {
            path,
            name: name.into(),
        }
    }

    /// What arrow-csv's own inference gives for `text` (DataFusion's for one file).
    fn arrow_infers(text: &[u8], limit: usize) -> Schema {
        arrow::csv::reader::Format::default()
            .with_header(true)
            .infer_schema(std::io::Cursor::new(text), Some(limit))
            .unwrap()
            .0
    }

    #[test]
    fn inference_is_arrow_csvs_over_the_rows_of_the_right_shape() {
        let dir = tempfile::tempdir().unwrap();
        let text = b"id,amount,when,ok,day,note,empty\n\
            1,1.5,2024-01-02T03:04:05,true,2024-01-02,x,\n\
            2,2,2024-01-02 03:04:05.123,FALSE,2024-01-03,\"y, z\",\n\
            3,,2024-01-02T03:04:05Z,,2024-01-04,,\n";
        let f = file(dir.path(), "a.csv", text);
        for limit in [1, 2, 3, 100] {
            let got = infer(std::slice::from_ref(&f), SHAPE, limit).unwrap();
            let mut want = arrow_infers(text, limit);
            if limit < 3 {
                // Rows were left unread: a column with no value so far is text, not NULL.
                assert!(got.partial());
                want = Schema::new(
                    want.fields()
                        .iter()
                        .map(|f| match f.data_type() {
                            DataType::Null => f.as_ref().clone().with_data_type(DataType::Utf8),
                            _ => f.as_ref().clone(),
                        })
                        .collect::<Vec<_>>(),
                );
            }
            assert_eq!(got.schema, want, "limit {limit}");
        }
        assert_eq!(
            infer(std::slice::from_ref(&f), SHAPE, 100)
                .unwrap()
                .schema
                .field(6)
                .data_type(),
            &DataType::Null
        );
        // Rows of another shape are skipped, as a clean copy would: the types are those of
        // the clean copy's first rows.
        let ragged = file(dir.path(), "b.csv", b"id,n\n1,2,3\nx\n2,3\n4,5\n6,x\n");
        let got = infer(std::slice::from_ref(&ragged), SHAPE, 2).unwrap();
        assert_eq!(got.schema, arrow_infers(b"id,n\n2,3\n4,5\n", 2));
        assert_eq!(got.sampled, 2);
        // 0: every column is text, as DataFusion reads it with no inference.
        let none = infer(std::slice::from_ref(&f), SHAPE, 0).unwrap();
        assert!(
            none.schema
                .fields()
                .iter()
                .all(|f| f.data_type() == &DataType::Utf8)
        );
        // Several files: read in turn until the limit, then merged.
        let c = file(dir.path(), "c.csv", b"id,n\n7,\n");
        let d = file(dir.path(), "d.csv", b"id,n\nx,y\n");
        let got = infer(&[c.clone(), ragged.clone()], SHAPE, 3).unwrap();
        assert_eq!(got.schema.field(1).data_type(), &DataType::Int64);
        assert_eq!(got.sampled, 3);
        let got = infer(&[c, d], SHAPE, 1).unwrap();
        assert_eq!(got.schema.field(0).data_type(), &DataType::Int64);
    }

    /// The check is arrow-csv's reader itself: every value it reads as its column's type
    /// passes, every value it rejects is reported (for each type inference gives).
    #[test]
    fn a_value_is_reported_exactly_when_the_reader_rejects_it() {
        use std::sync::Arc;
        let values = [
            "",
            "0",
            "1",
            "-1",
            "+1",
            "007",
            "1.5",
            "-1.5",
            ".5",
            "5.",
            "1e3",
            "1E-3",
            "1e",
            "e3",
            "abc",
            "1 ",
            " 1",
            "1_000",
            "0x10",
            "١",
            "9223372036854775807",
            "9223372036854775808",
            "-9223372036854775808",
            "NaN",
            "nan",
            "inf",
            "-inf",
            "Infinity",
            "1.7976931348623157e309",
            "true",
            "TRUE",
            "False",
            "yes",
            "t",
            "2024-01-02",
            "2024-1-2",
            "2024-02-30",
            "2024-13-01",
            "+2024-01-02",
            "99999-01-01",
            "2024-01-02T03:04:05",
            "2024-01-02 03:04:05",
            "2024-01-02T03:04:05.123",
            "2024-01-02T03:04:05.123456789",
            "2024-01-02T03:04:05Z",
            "2024-01-02T03:04:05+02:00",
            "2024-01-02T03:04:05 garbage",
            "2024-01-02T25:04:05",
            "1677-09-21T00:12:43",
            "1677-09-21T00:12:44",
            "2262-04-11T23:47:16",
            "2262-04-11T23:47:17",
            "9999-12-31T23:59:59",
            "0001-01-01T00:00:00",
            "\"quoted\"",
        ];
        let types = [
            DataType::Int64,
            DataType::Float64,
            DataType::Boolean,
            DataType::Date32,
            DataType::Timestamp(TimeUnit::Second, None),
            DataType::Timestamp(TimeUnit::Millisecond, None),
            DataType::Timestamp(TimeUnit::Microsecond, None),
            DataType::Timestamp(TimeUnit::Nanosecond, None),
            DataType::Utf8,
        ];
        let mut checked = 0;
        for t in &types {
            let schema = Arc::new(Schema::new(vec![Field::new("v", t.clone(), true)]));
            for v in values {
                let mut text = csv::WriterBuilder::new().from_writer(Vec::new());
                text.write_record(["v"]).unwrap();
                text.write_record([v]).unwrap();
                let text = text.into_inner().unwrap();
                let read = arrow::csv::ReaderBuilder::new(schema.clone())
                    .with_header(true)
                    .build(std::io::Cursor::new(text))
                    .unwrap()
                    .collect::<Result<Vec<_>, _>>();
                assert_eq!(
                    fits(t, v),
                    read.is_ok(),
                    "{v:?} as {t}: the reader says {read:?}"
                );
                checked += 1;
            }
        }
        assert_eq!(checked, types.len() * values.len());
        // A column with no value in the whole file reads every value as NULL: a value there
        // would be lost, so it is reported (inference widens such a column to text whenever
        // rows were left unread).
        assert!(fits(&DataType::Null, ""));
        assert!(!fits(&DataType::Null, "x"));
    }

    #[test]
    fn values_their_column_cannot_hold_are_left_out_with_their_line_and_column() {
        let dir = tempfile::tempdir().unwrap();
        let f = file(
            dir.path(),
            "x.csv",
            b"id,amount\n1,10\n2,20\n3,\"multi\nline\"\n4,40\n5,4.5\n6,\n7,x,y\n8,80\n",
        );
        let types = infer(std::slice::from_ref(&f), SHAPE, 2).unwrap();
        assert_eq!(types.schema.field(1).data_type(), &DataType::Int64);
        let mut q = Quarantine::default();
        let scanned = scan(&f, SHAPE, Some(&types), "s", &mut q).unwrap();
        assert_eq!(
            scanned,
            Scanned {
                rows: 8,
                bad: 1,
                mistyped: 2
            }
        );
        let got: Vec<(u64, &str)> = q.rows.iter().map(|r| (r.line, r.reason.as_str())).collect();
        let why =
            "the type inferred from the first 2 rows; set infer_schema_rows to infer it from more";
        assert_eq!(
            got,
            vec![
                (
                    4,
                    &*format!(
                        "column \"amount\": \"multi\\nline\" is not an integer (Int64) ({why})"
                    )
                ),
                (
                    7,
                    &*format!("column \"amount\": \"4.5\" is not an integer (Int64) ({why})")
                ),
                (9, "the row has 3 field(s), the header has 2"),
            ]
        );
        let to = dir.path().join("clean.csv");
        clean_copy(&f.path, SHAPE, Some(&types), &to).unwrap();
        assert_eq!(
            std::fs::read_to_string(&to).unwrap(),
            "id,amount\n1,10\n2,20\n4,40\n6,\n8,80\n"
        );
        // Inferred from every row, the message does not send the user to infer_schema_rows.
        let all = infer(std::slice::from_ref(&f), SHAPE, 100).unwrap();
        assert_eq!(all.schema.field(1).data_type(), &DataType::Utf8);
        let d = file(dir.path(), "d.csv", b"d\n2024-01-02\n2024-02-30\n");
        let all = infer(std::slice::from_ref(&d), SHAPE, 100).unwrap();
        let mut q = Quarantine::default();
        scan(&d, SHAPE, Some(&all), "s", &mut q).unwrap();
        assert_eq!(
            q.rows[0].reason,
            "column \"d\": \"2024-02-30\" is not a date (Date32) (the type inferred from all 2 rows)"
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
