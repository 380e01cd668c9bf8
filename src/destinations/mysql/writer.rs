//! Writing one table during one run.

use arrow::array::{Array, ArrayRef, AsArray, RecordBatch};
use arrow::datatypes::{
    DataType, Date32Type, Float64Type, Int64Type, TimestampMicrosecondType, UInt64Type,
};
use arrow::util::display::{ArrayFormatter, FormatOptions};
use async_trait::async_trait;
use chrono::{Datelike, Timelike};
use mysql_async::prelude::Queryable;
use mysql_async::{Conn, TxOpts, Value};

use crate::databases::mysql::{self as my, MyUrl, quote};
use crate::databases::{Attempt, Bisect};
use crate::destinations::encode::{is_nested, json_values, timestamps_micros};
use crate::destinations::{
    BatchOutcome, DestinationError, FinishOutcome, ObjectWriter, Rejection, WriteOp, WriteTarget,
};

pub(super) struct MysqlWriter {
    /// The server's `max_allowed_packet`: a statement must fit in it.
    pub max_packet: usize,
    pub destination: String,
    pub target: WriteTarget,
    pub url: MyUrl,
    pub conn: Option<Conn>,
}

/// About how many bytes a value takes in a statement.
fn value_bytes(v: &Value) -> usize {
    match v {
        Value::Bytes(b) => b.len() + 4,
        _ => 12,
    }
}

/// One column's values as statement parameters.
enum Values {
    Int(ArrayRef),
    UInt(ArrayRef),
    Double(ArrayRef),
    Bool(ArrayRef),
    Bytes(ArrayRef),
    Str(ArrayRef),
    Date(ArrayRef),
    Timestamp(ArrayRef),
    Json(Vec<Option<String>>),
    Formatted(ArrayRef),
}

impl Values {
    fn new(array: &ArrayRef) -> Result<Values, arrow::error::ArrowError> {
        use DataType::*;
        let cast = arrow::compute::cast;
        Ok(match array.data_type() {
            Int8 | Int16 | Int32 | Int64 => Values::Int(cast(array, &Int64)?),
            UInt8 | UInt16 | UInt32 | UInt64 => Values::UInt(cast(array, &UInt64)?),
            Float16 | Float32 | Float64 => Values::Double(cast(array, &Float64)?),
            Boolean => Values::Bool(array.clone()),
            Utf8 | LargeUtf8 | Utf8View => Values::Str(cast(array, &LargeUtf8)?),
            Binary | LargeBinary | BinaryView | FixedSizeBinary(_) => {
                Values::Bytes(cast(array, &LargeBinary)?)
            }
            Date32 | Date64 => Values::Date(cast(array, &Date32)?),
            Timestamp(_, _) => Values::Timestamp(timestamps_micros(array)?),
            dt if is_nested(dt) => Values::Json(json_values(array)?),
            _ => Values::Formatted(array.clone()),
        })
    }

    fn value(&self, row: usize, fmt: Option<&ArrayFormatter<'_>>) -> Value {
        let array = match self {
            Values::Json(v) => {
                return match &v[row] {
                    Some(s) => Value::Bytes(s.clone().into_bytes()),
                    None => Value::NULL,
                };
            }
            Values::Int(a)
            | Values::UInt(a)
            | Values::Double(a)
            | Values::Bool(a)
            | Values::Bytes(a)
            | Values::Str(a)
            | Values::Date(a)
            | Values::Timestamp(a)
            | Values::Formatted(a) => a,
        };
        if array.is_null(row) {
            return Value::NULL;
        }
        match self {
            Values::Int(a) => Value::Int(a.as_primitive::<Int64Type>().value(row)),
            Values::UInt(a) => Value::UInt(a.as_primitive::<UInt64Type>().value(row)),
            Values::Double(a) => Value::Double(a.as_primitive::<Float64Type>().value(row)),
            Values::Bool(a) => Value::Int(i64::from(a.as_boolean().value(row))),
            Values::Str(a) => Value::Bytes(a.as_string::<i64>().value(row).as_bytes().to_vec()),
            Values::Bytes(a) => Value::Bytes(a.as_binary::<i64>().value(row).to_vec()),
            Values::Date(a) => {
                let days = a.as_primitive::<Date32Type>().value(row);
                match Date32Type::to_naive_date_opt(days) {
                    Some(d) => {
                        Value::Date(d.year() as u16, d.month() as u8, d.day() as u8, 0, 0, 0, 0)
                    }
                    None => Value::NULL,
                }
            }
            Values::Timestamp(a) => {
                let micros = a.as_primitive::<TimestampMicrosecondType>().value(row);
                match chrono::DateTime::from_timestamp_micros(micros) {
                    Some(t) => {
                        let t = t.naive_utc();
                        Value::Date(
                            t.year() as u16,
                            t.month() as u8,
                            t.day() as u8,
                            t.hour() as u8,
                            t.minute() as u8,
                            t.second() as u8,
                            t.nanosecond() / 1000,
                        )
                    }
                    None => Value::NULL,
                }
            }
            Values::Formatted(_) => match fmt {
                Some(f) => Value::Bytes(f.value(row).to_string().into_bytes()),
                None => Value::NULL,
            },
            Values::Json(_) => Value::NULL,
        }
    }
}

impl MysqlWriter {
    fn fail(&self, reason: String) -> DestinationError {
        DestinationError::Write {
            destination: self.destination.clone(),
            object: self.target.object.clone(),
            reason: self.url.redact(&reason),
        }
    }

    /// Rows per statement for `columns` columns.
    fn chunk(columns: usize) -> usize {
        (60_000 / columns.max(1)).clamp(1, 1000)
    }

    /// Split `rows` into statements of at most `per` rows whose values take at most `budget`
    /// bytes (each chunk is a range of positions in `rows`).
    fn chunks(
        rows: &[usize],
        per: usize,
        budget: usize,
        size: impl Fn(usize) -> usize,
    ) -> Vec<std::ops::Range<usize>> {
        let mut out = Vec::new();
        let (mut start, mut bytes) = (0, 0);
        for (i, row) in rows.iter().enumerate() {
            let b = size(*row);
            if i > start && (i - start >= per || bytes + b > budget) {
                out.push(start..i);
                start = i;
                bytes = 0;
            }
            bytes += b;
        }
        if start < rows.len() {
            out.push(start..rows.len());
        }
        out
    }

    async fn attempt(
        &mut self,
        op: WriteOp,
        columns: &[String],
        params: &[Vec<Value>],
        rows: std::ops::Range<usize>,
    ) -> Result<Attempt<BatchOutcome>, mysql_async::Error> {
        let max_packet = self.max_packet;
        let Some(conn) = self.conn.as_mut() else {
            return Err(mysql_async::Error::Driver(
                mysql_async::DriverError::ConnectionClosed,
            ));
        };
        let table = quote(&self.target.object);
        let key = &self.target.key;
        // Where each key field is among the columns (deletes carry the key fields only).
        let key_pos: Vec<usize> = key
            .iter()
            .enumerate()
            .map(|(i, k)| columns.iter().position(|c| c == k).unwrap_or(i))
            .collect();
        let key_values = |r: usize| key_pos.iter().map(move |p| params[r][*p].clone());
        let first_key = quote(&key[0]);
        let cols = columns
            .iter()
            .map(|c| quote(c))
            .collect::<Vec<_>>()
            .join(", ");
        let tuple = format!("({})", vec!["?"; columns.len()].join(", "));
        let non_key: Vec<String> = columns
            .iter()
            .filter(|c| !self.target.is_key(c))
            .map(|c| quote(c))
            .collect();
        let mut tx = conn.start_transaction(TxOpts::default()).await?;
        let result: Result<BatchOutcome, mysql_async::Error> = async {
            let mut applied = BatchOutcome::default();
            let mut todo: Vec<usize> = rows.clone().collect();
            if op == WriteOp::Update {
                // Which keys have no record: compared by MySQL itself (collations included).
                let mut missing = std::collections::HashSet::new();
                for chunk in todo.chunks(1000) {
                    let slots = (0..key.len())
                        .map(|i| format!("? AS k{i}"))
                        .collect::<Vec<_>>()
                        .join(", ");
                    let probe = chunk
                        .iter()
                        .map(|r| format!("SELECT {r} AS r, {slots}"))
                        .collect::<Vec<_>>()
                        .join(" UNION ALL ");
                    let same = key
                        .iter()
                        .enumerate()
                        .map(|(i, k)| format!("t.{} = s.k{i}", quote(k)))
                        .collect::<Vec<_>>()
                        .join(" AND ");
                    let sql = format!(
                        "SELECT s.r FROM ({probe}) AS s WHERE NOT EXISTS (SELECT 1 FROM {table} AS t WHERE {same})"
                    );
                    let keys: Vec<Value> = chunk.iter().flat_map(|r| key_values(*r)).collect();
                    let found: Vec<u64> = tx.exec(sql, keys).await?;
                    missing.extend(found.into_iter().map(|r| r as usize));
                }
                for row in &missing {
                    applied.rejected.push(Rejection {
                        row: *row,
                        reason: crate::destinations::NO_RECORD_FOR_UPDATE.into(),
                    });
                }
                todo.retain(|r| !missing.contains(r));
            }
            let per = match op {
                WriteOp::Delete => 1000,
                _ => Self::chunk(columns.len()),
            };
            let row_bytes = |r: usize| -> usize {
                let values = match op {
                    WriteOp::Delete => key_pos.iter().map(|p| value_bytes(&params[r][*p])).sum::<usize>(),
                    _ => params[r].iter().map(value_bytes).sum::<usize>(),
                };
                values + 8
            };
            // A row that cannot fit in one packet is refused without being sent (the server
            // would drop the connection).
            let limit = max_packet.saturating_sub(64 << 10);
            todo.retain(|r| {
                let b = row_bytes(*r);
                if b > limit {
                    applied.rejected.push(Rejection {
                        row: *r,
                        reason: format!(
                            "the row is {b} bytes, more than the server's max_allowed_packet ({max_packet} bytes) allows"
                        ),
                    });
                    false
                } else {
                    true
                }
            });
            for range in Self::chunks(&todo, per, max_packet / 2, row_bytes) {
                let chunk = &todo[range];
                let sql = match op {
                    WriteOp::Delete if key.len() == 1 => format!(
                        "DELETE FROM {table} WHERE {first_key} IN ({})",
                        vec!["?"; chunk.len()].join(", ")
                    ),
                    // A composite key: row constructors.
                    WriteOp::Delete => format!(
                        "DELETE FROM {table} WHERE ({}) IN ({})",
                        self.target.key_list(quote),
                        vec![format!("({})", vec!["?"; key.len()].join(", ")); chunk.len()]
                            .join(", ")
                    ),
                    _ => {
                        let values = vec![tuple.as_str(); chunk.len()].join(", ");
                        let insert = format!("INSERT INTO {table} ({cols}) VALUES {values}");
                        match op {
                            WriteOp::Append => insert,
                            WriteOp::Create => {
                                format!("{insert} ON DUPLICATE KEY UPDATE {first_key} = {first_key}")
                            }
                            _ if non_key.is_empty() => {
                                format!("{insert} ON DUPLICATE KEY UPDATE {first_key} = {first_key}")
                            }
                            _ => format!(
                                "{insert} ON DUPLICATE KEY UPDATE {}",
                                non_key
                                    .iter()
                                    .map(|c| format!("{c} = VALUES({c})"))
                                    .collect::<Vec<_>>()
                                    .join(", ")
                            ),
                        }
                    }
                };
                let values: Vec<Value> = match op {
                    WriteOp::Delete => chunk.iter().flat_map(|r| key_values(*r)).collect(),
                    _ => chunk.iter().flat_map(|r| params[*r].iter().cloned()).collect(),
                };
                tx.exec_drop(sql, values).await?;
                if op == WriteOp::Create {
                    // 1 per row inserted, 0 per row left alone.
                    applied.skipped += chunk.len().saturating_sub(tx.affected_rows() as usize);
                }
            }
            Ok(applied)
        }
        .await;
        match result {
            Ok(applied) => {
                tx.commit().await?;
                Ok(Attempt::Done(applied))
            }
            Err(e) if my::is_row_error(&e) => {
                tx.rollback().await?;
                Ok(Attempt::RowError(my::message(&e)))
            }
            Err(e) => Err(e),
        }
    }
}

#[async_trait]
impl ObjectWriter for MysqlWriter {
    async fn write(
        &mut self,
        op: WriteOp,
        batch: RecordBatch,
    ) -> Result<BatchOutcome, DestinationError> {
        let columns = crate::destinations::column_names(&batch);
        let values = batch
            .columns()
            .iter()
            .map(Values::new)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| self.fail(e.to_string()))?;
        let params: Vec<Vec<Value>> = {
            let options = FormatOptions::default();
            let formatters = values
                .iter()
                .map(|v| match v {
                    Values::Formatted(a) => ArrayFormatter::try_new(a.as_ref(), &options).ok(),
                    _ => None,
                })
                .collect::<Vec<_>>();
            (0..batch.num_rows())
                .map(|row| {
                    values
                        .iter()
                        .zip(&formatters)
                        .map(|(v, f)| v.value(row, f.as_ref()))
                        .collect()
                })
                .collect()
        };
        let mut bisect = Bisect::new(batch.num_rows());
        let mut applied = Vec::new();
        while let Some(rows) = bisect.next_range() {
            match self
                .attempt(op, &columns, &params, rows.clone())
                .await
                .map_err(|e| self.fail(my::message(&e)))?
            {
                Attempt::Done(a) => applied.push(a),
                Attempt::RowError(message) => bisect.refused(rows, message),
            }
        }
        let refused = bisect.into_refused();
        Ok(crate::destinations::merge_outcomes(applied, refused, |r| {
            self.url.redact(r)
        }))
    }

    async fn finish(mut self: Box<Self>) -> Result<FinishOutcome, DestinationError> {
        if let Some(conn) = self.conn.take() {
            let _ = conn.disconnect().await;
        }
        Ok(FinishOutcome::default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statements_fit_rows_and_bytes() {
        let rows: Vec<usize> = (0..10).collect();
        // By rows.
        assert_eq!(
            MysqlWriter::chunks(&rows, 4, 1000, |_| 1),
            vec![0..4, 4..8, 8..10]
        );
        // By bytes: rows of 30 bytes, 100 per statement.
        assert_eq!(
            MysqlWriter::chunks(&rows, 1000, 100, |_| 30),
            vec![0..3, 3..6, 6..9, 9..10]
        );
        // A row bigger than the budget still goes alone.
        assert_eq!(
            MysqlWriter::chunks(&rows[..3], 1000, 100, |r| if r == 1 { 500 } else { 10 }),
            vec![0..1, 1..2, 2..3]
        );
        assert!(MysqlWriter::chunks(&[], 10, 10, |_| 1).is_empty());
    }
}
