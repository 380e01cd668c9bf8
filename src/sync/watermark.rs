//! Watermarks: where a cursor sync's next read starts. The stored watermark is read back in
//! the cursor's current type and moved back by `cursor_lookback`; while a run goes, the cursor
//! values it reads and the lowest it could not send ([`Cursors`]) decide the next one
//! ([`next`]).

use arrow::array::{BooleanArray, RecordBatch};
use arrow::datatypes::DataType;
use datafusion::common::ScalarValue;
use datafusion::error::DataFusionError;
use datafusion::functions_aggregate::min_max::{MaxAccumulator, MinAccumulator};
use datafusion::logical_expr::Accumulator;

use super::SyncError;
use super::map::CURSOR;
use crate::config::Lookback;
use crate::state::Watermark;
use crate::values::scalar_text;

/// `value` moved back by `lookback`.
pub(super) fn behind(
    value: ScalarValue,
    lookback: &crate::config::Lookback,
) -> Result<ScalarValue, String> {
    use ScalarValue::*;
    let mismatch = |v: &ScalarValue| {
        format!(
            "cursor_lookback = {lookback} does not fit a cursor of type {} (use {} for it)",
            v.data_type(),
            if v.data_type().is_numeric() {
                "a number"
            } else {
                "a duration such as \"2h\""
            }
        )
    };
    let duration = |d: &str| crate::duration::parse(d).unwrap_or_default();
    Ok(match (value, lookback) {
        (TimestampSecond(v, tz), Lookback::Duration(d)) => TimestampSecond(
            v.map(|v| v.saturating_sub(duration(d).as_secs() as i64)),
            tz,
        ),
        (TimestampMillisecond(v, tz), Lookback::Duration(d)) => TimestampMillisecond(
            v.map(|v| v.saturating_sub(duration(d).as_millis() as i64)),
            tz,
        ),
        (TimestampMicrosecond(v, tz), Lookback::Duration(d)) => TimestampMicrosecond(
            v.map(|v| v.saturating_sub(duration(d).as_micros() as i64)),
            tz,
        ),
        (TimestampNanosecond(v, tz), Lookback::Duration(d)) => TimestampNanosecond(
            v.map(|v| v.saturating_sub(duration(d).as_nanos() as i64)),
            tz,
        ),
        (Date32(v), Lookback::Duration(d)) => {
            Date32(v.map(|v| v.saturating_sub(duration(d).as_secs().div_ceil(86_400) as i32)))
        }
        (Date64(v), Lookback::Duration(d)) => {
            Date64(v.map(|v| v.saturating_sub(duration(d).as_millis() as i64)))
        }
        (v, Lookback::Amount(n)) if v.data_type().is_numeric() => {
            let amount = Int64(Some(*n))
                .cast_to(&v.data_type())
                .map_err(|e| format!("cursor_lookback = {n}: {e}"))?;
            v.sub_checked(&amount)
                .map_err(|e| format!("cursor_lookback = {n}: {e}"))?
        }
        (v, _) => return Err(mismatch(&v)),
    })
}

/// Parse a stored watermark back into a value of the cursor's current type.
pub(super) fn stored(
    sync: &str,
    wm: &Watermark,
    current: &DataType,
) -> Result<ScalarValue, SyncError> {
    let stored: DataType = wm.data_type.parse().map_err(|e| SyncError::StateMismatch {
        sync: sync.to_string(),
        message: format!("stored watermark type {} is unreadable: {e}", wm.data_type),
    })?;
    let v = ScalarValue::try_from_string(wm.value.clone(), &stored)
        .and_then(|v| v.cast_to(current))
        .map_err(|e| SyncError::StateMismatch {
            sync: sync.to_string(),
            message: format!(
                "stored watermark {} ({}) does not fit cursor column \"{}\" of type {current}: {e}; run with --full-resync",
                wm.value, wm.data_type, wm.column
            ),
        })?;
    Ok(v)
}

/// The cursor values seen, for the next watermark.
pub struct Cursors {
    max_read: Option<MaxAccumulator>,
    min_rejected: Option<MinAccumulator>,
    any_rejected: bool,
}

impl Cursors {
    pub(super) fn new(cursor_type: Option<&DataType>) -> Result<Cursors, DataFusionError> {
        Ok(Cursors {
            max_read: cursor_type.map(MaxAccumulator::try_new).transpose()?,
            min_rejected: cursor_type.map(MinAccumulator::try_new).transpose()?,
            any_rejected: false,
        })
    }

    /// Rows of `batch` read from the model (where `rows` is true): the watermark may move
    /// past them.
    pub(super) fn read(
        &mut self,
        batch: &RecordBatch,
        rows: &BooleanArray,
    ) -> Result<(), DataFusionError> {
        if let (Some(acc), Some(cursor)) = (self.max_read.as_mut(), batch.column_by_name(CURSOR)) {
            acc.update_batch(&[arrow::compute::filter(cursor, rows)?])?;
        }
        Ok(())
    }

    /// Rows of `batch` not sent (invalid or rejected, where `rows` is true): the watermark
    /// stops at the lowest of them, so that they are read again until they are fixed.
    pub(super) fn missed(
        &mut self,
        batch: &RecordBatch,
        rows: &BooleanArray,
    ) -> Result<(), DataFusionError> {
        if rows.true_count() == 0 {
            return Ok(());
        }
        self.any_rejected = true;
        if let (Some(acc), Some(cursor)) =
            (self.min_rejected.as_mut(), batch.column_by_name(CURSOR))
        {
            acc.update_batch(&[arrow::compute::filter(cursor, rows)?])?;
        }
        Ok(())
    }

    /// The watermark to commit: the highest cursor read, or, when rows were rejected, the
    /// lowest cursor among them, so that the next run reads them again.
    pub fn next_watermark(mut self) -> Option<ScalarValue> {
        if self.any_rejected
            && let Some(v) = self.min_rejected.as_mut().and_then(|a| a.evaluate().ok())
            && !v.is_null()
        {
            return Some(v);
        }
        self.max_read
            .as_mut()
            .and_then(|a| a.evaluate().ok())
            .filter(|v| !v.is_null())
    }
}

/// The watermark a run commits: the highest cursor it read, or the lowest it could not send.
/// Rows a destination rejected only in `finish` have no cursor at hand (`late`): the watermark
/// then stays where it was (`previous`), so the next run reads them again.
pub(super) fn next(
    column: Option<&String>,
    cursors: Cursors,
    previous: Option<Watermark>,
    late: bool,
) -> Option<Watermark> {
    let column = column?;
    if late {
        return previous;
    }
    match cursors.next_watermark() {
        Some(value) => Some(Watermark {
            column: column.clone(),
            data_type: value.data_type().to_string(),
            value: scalar_text(&value),
        }),
        None => previous,
    }
}
