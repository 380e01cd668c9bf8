//! Which Arrow type each PostgreSQL column is read as, and how it is selected.
//!
//! The rule: a value arrives exactly. Types with an exact Arrow equivalent are read in their
//! binary form (integers, booleans, floats, `numeric(p,s)` up to 76 digits as `Decimal128` /
//! `Decimal256`, dates, times, timestamps in microseconds (PostgreSQL's own unit, so the whole
//! range from 4713 BC fits), intervals, text, `json`/`jsonb`, UUIDs, `bytea`). Every other type
//! (an unconstrained `numeric`, arrays, enums, ranges, network addresses, domains of those,
//! extension types such as `citext`) is selected as `column::text`, its PostgreSQL text form,
//! which holds the value exactly.

use arrow::datatypes::{DataType, IntervalUnit, TimeUnit};

/// Type OIDs (`pg_type.oid`) of the built-in types read natively.
mod oid {
    pub const BOOL: u32 = 16;
    pub const BYTEA: u32 = 17;
    pub const NAME: u32 = 19;
    pub const INT8: u32 = 20;
    pub const INT2: u32 = 21;
    pub const INT4: u32 = 23;
    pub const TEXT: u32 = 25;
    pub const OID: u32 = 26;
    pub const JSON: u32 = 114;
    pub const XML: u32 = 142;
    pub const FLOAT4: u32 = 700;
    pub const FLOAT8: u32 = 701;
    pub const BPCHAR: u32 = 1042;
    pub const VARCHAR: u32 = 1043;
    pub const DATE: u32 = 1082;
    pub const TIME: u32 = 1083;
    pub const TIMESTAMP: u32 = 1114;
    pub const TIMESTAMPTZ: u32 = 1184;
    pub const INTERVAL: u32 = 1186;
    pub const NUMERIC: u32 = 1700;
    pub const UUID: u32 = 2950;
    pub const JSONB: u32 = 3802;
}

/// How a column's values are decoded from `COPY … (FORMAT binary)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Bool,
    Int2,
    Int4,
    Int8,
    Oid,
    Float4,
    Float8,
    /// `numeric(p,s)` with `p <= 38`.
    Decimal128(u8, i8),
    /// `numeric(p,s)` with `38 < p <= 76`.
    Decimal256(u8, i8),
    /// Text in its binary form: `text`, `varchar`, `char(n)` (with its padding), `name`,
    /// `json`, `xml`.
    Text,
    /// `jsonb`: a version byte, then the text.
    Jsonb,
    Uuid,
    Bytea,
    Date,
    Time,
    Timestamp,
    Timestamptz,
    Interval,
    /// Selected as `column::text`.
    AsText,
}

/// `atttypmod` of a `numeric(p,s)`: `((p << 16) | (s & 0x7ff)) + 4`; -1 when unconstrained.
fn numeric_typmod(typmod: i32) -> Option<(u8, i8)> {
    if typmod < 4 {
        return None;
    }
    let t = typmod - 4;
    let precision = (t >> 16) & 0xffff;
    // The scale is 11 bits, signed since PostgreSQL 15 (`numeric(5,-2)`).
    let scale = ((t & 0x7ff) ^ 1024) - 1024;
    if precision < 1 || scale < 0 || scale > precision {
        return None;
    }
    Some((u8::try_from(precision).ok()?, i8::try_from(scale).ok()?))
}

impl Kind {
    /// The kind of a column of type `type_oid` with modifier `typmod` (for a domain, its base
    /// type's).
    pub fn of(type_oid: u32, typmod: i32) -> Kind {
        match type_oid {
            oid::BOOL => Kind::Bool,
            oid::INT2 => Kind::Int2,
            oid::INT4 => Kind::Int4,
            oid::INT8 => Kind::Int8,
            oid::OID => Kind::Oid,
            oid::FLOAT4 => Kind::Float4,
            oid::FLOAT8 => Kind::Float8,
            oid::NUMERIC => match numeric_typmod(typmod) {
                Some((p, s)) if p <= 38 => Kind::Decimal128(p, s),
                Some((p, s)) if p <= 76 => Kind::Decimal256(p, s),
                _ => Kind::AsText,
            },
            oid::TEXT | oid::VARCHAR | oid::BPCHAR | oid::NAME | oid::JSON | oid::XML => Kind::Text,
            oid::JSONB => Kind::Jsonb,
            oid::UUID => Kind::Uuid,
            oid::BYTEA => Kind::Bytea,
            oid::DATE => Kind::Date,
            oid::TIME => Kind::Time,
            oid::TIMESTAMP => Kind::Timestamp,
            oid::TIMESTAMPTZ => Kind::Timestamptz,
            oid::INTERVAL => Kind::Interval,
            _ => Kind::AsText,
        }
    }

    pub fn data_type(self) -> DataType {
        match self {
            Kind::Bool => DataType::Boolean,
            Kind::Int2 => DataType::Int16,
            Kind::Int4 => DataType::Int32,
            Kind::Int8 => DataType::Int64,
            Kind::Oid => DataType::UInt32,
            Kind::Float4 => DataType::Float32,
            Kind::Float8 => DataType::Float64,
            Kind::Decimal128(p, s) => DataType::Decimal128(p, s),
            Kind::Decimal256(p, s) => DataType::Decimal256(p, s),
            Kind::Text | Kind::Jsonb | Kind::Uuid | Kind::AsText => DataType::Utf8,
            Kind::Bytea => DataType::Binary,
            Kind::Date => DataType::Date32,
            Kind::Time => DataType::Time64(TimeUnit::Nanosecond),
            Kind::Timestamp => DataType::Timestamp(TimeUnit::Microsecond, None),
            Kind::Timestamptz => DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            Kind::Interval => DataType::Interval(IntervalUnit::MonthDayNano),
        }
    }

    /// The select-list entry for column `quoted` (an already quoted identifier).
    pub fn select(self, quoted: &str) -> String {
        match self {
            Kind::AsText => format!("{quoted}::text"),
            _ => quoted.to_string(),
        }
    }

    /// Whether a filter on this column may be evaluated by PostgreSQL instead of DataFusion:
    /// only where both compare alike. Text is left out (collations, `char(n)` padding), floats
    /// (`NaN`, `-0`), intervals (PostgreSQL equates `1 day` and `24 hours`) and columns read as
    /// text (the server would compare the original type).
    pub fn filterable(self) -> bool {
        matches!(
            self,
            Kind::Bool
                | Kind::Int2
                | Kind::Int4
                | Kind::Int8
                | Kind::Oid
                | Kind::Decimal128(..)
                | Kind::Decimal256(..)
                | Kind::Date
                | Kind::Time
                | Kind::Timestamp
                | Kind::Timestamptz
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numeric_modifiers() {
        // numeric(38,10), numeric(76,0), numeric(5,-2), numeric(2,5), unconstrained.
        let tm = |p: i32, s: i32| ((p << 16) | (s & 0x7ff)) + 4;
        assert_eq!(Kind::of(1700, tm(38, 10)), Kind::Decimal128(38, 10));
        assert_eq!(Kind::of(1700, tm(76, 0)), Kind::Decimal256(76, 0));
        assert_eq!(Kind::of(1700, tm(77, 2)), Kind::AsText);
        assert_eq!(Kind::of(1700, tm(5, -2)), Kind::AsText);
        assert_eq!(Kind::of(1700, tm(2, 5)), Kind::AsText);
        assert_eq!(Kind::of(1700, -1), Kind::AsText);
        assert_eq!(Kind::of(12345, -1).select("\"c\""), "\"c\"::text");
    }
}
