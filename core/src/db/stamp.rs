//! Timestamps as the read paths take them from a row.
//!
//! SQLite has no timestamp type: diesel writes a `DateTime<Utc>` as text,
//! `2026-12-05 02:07:12.123456+00:00` (`%F %T%.f%:z`), and reads it back by
//! trying up to twelve chrono format strings in turn, each interpreted
//! afresh. For `/status`, which reads five to seven timestamps per task,
//! that parsing was 17% of the instructions of a request (callgrind).
//! [`Stamp`] reads the one form Ferry writes with a fixed-position parse
//! and hands anything else to diesel's own parser, so a row written by
//! another tool still reads. On PostgreSQL, whose timestamps are binary,
//! it is diesel's own conversion.

use chrono::{DateTime, NaiveDate, NaiveDateTime, NaiveTime, Utc};
use diesel::deserialize::{self, FromSql, FromSqlRow};
use diesel::pg::Pg;
use diesel::sql_types::{Nullable, Timestamptz, TimestamptzSqlite};
use diesel::sqlite::{Sqlite, SqliteValue};

/// A timestamp read from a `Timestamptz` (PostgreSQL) or
/// `TimestamptzSqlite` column; for a row struct's `DateTime<Utc>` field,
/// `#[diesel(deserialize_as = Stamp)]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromSqlRow)]
pub struct Stamp(pub DateTime<Utc>);

impl From<Stamp> for DateTime<Utc> {
    fn from(stamp: Stamp) -> Self {
        stamp.0
    }
}

impl FromSql<TimestamptzSqlite, Sqlite> for Stamp {
    fn from_sql(mut value: SqliteValue<'_, '_, '_>) -> deserialize::Result<Self> {
        // A number (a Julian day, which diesel also takes) read as text
        // keeps its type: diesel still reads it as a number (tested below).
        if let Some(at) = parse_utc_text(value.read_text()) {
            return Ok(Stamp(at));
        }
        <DateTime<Utc> as FromSql<TimestamptzSqlite, Sqlite>>::from_sql(value).map(Stamp)
    }
}

impl FromSql<Timestamptz, Pg> for Stamp {
    fn from_sql(value: diesel::pg::PgValue<'_>) -> deserialize::Result<Self> {
        <DateTime<Utc> as FromSql<Timestamptz, Pg>>::from_sql(value).map(Stamp)
    }
}

/// A nullable timestamp read as [`Stamp`] reads one: for a row struct's
/// `Option<DateTime<Utc>>` field, `#[diesel(deserialize_as = MaybeStamp)]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromSqlRow)]
pub struct MaybeStamp(pub Option<DateTime<Utc>>);

impl From<MaybeStamp> for Option<DateTime<Utc>> {
    fn from(stamp: MaybeStamp) -> Self {
        stamp.0
    }
}

impl<B, ST> FromSql<Nullable<ST>, B> for MaybeStamp
where
    B: diesel::backend::Backend,
    ST: diesel::sql_types::SqlType,
    Stamp: FromSql<ST, B>,
{
    fn from_sql(value: B::RawValue<'_>) -> deserialize::Result<Self> {
        Stamp::from_sql(value).map(|stamp| Self(Some(stamp.0)))
    }

    fn from_nullable_sql(value: Option<B::RawValue<'_>>) -> deserialize::Result<Self> {
        value.map_or(Ok(Self(None)), Self::from_sql)
    }
}

/// `YYYY-MM-DD HH:MM:SS[.f]+00:00`, the fraction of one to nine digits:
/// what diesel writes for a `DateTime<Utc>` on SQLite. `None` for any other
/// text (another offset, a `T`, a leap second), which the caller then
/// gives to diesel's parser.
fn parse_utc_text(text: &str) -> Option<DateTime<Utc>> {
    let b = text.as_bytes();
    if b.len() < 25 || b.len() > 35 {
        return None;
    }
    let (head, offset) = b.split_at(b.len() - 6);
    if offset != b"+00:00" {
        return None;
    }
    let digits = |range: std::ops::Range<usize>| -> Option<u32> {
        head.get(range)?.iter().try_fold(0u32, |n, &c| {
            c.is_ascii_digit().then(|| n * 10 + u32::from(c - b'0'))
        })
    };
    let separators = [(4, b'-'), (7, b'-'), (10, b' '), (13, b':'), (16, b':')];
    if separators.iter().any(|&(at, c)| head[at] != c) {
        return None;
    }
    let nanos = match &head[19..] {
        [] => 0,
        [b'.', fraction @ ..] if (1..=9).contains(&fraction.len()) => {
            digits(20..head.len())? * 10u32.pow(9 - fraction.len() as u32)
        }
        _ => return None,
    };
    let date = NaiveDate::from_ymd_opt(digits(0..4)? as i32, digits(5..7)?, digits(8..10)?)?;
    let time =
        NaiveTime::from_hms_nano_opt(digits(11..13)?, digits(14..16)?, digits(17..19)?, nanos)?;
    // `from_hms_nano_opt` refuses a leap second's `:60`; diesel's parse
    // takes it.
    Some(NaiveDateTime::new(date, time).and_utc())
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{Duration, TimeZone};

    /// diesel's own reading of `text`, the reference.
    fn diesel_parse(text: &str) -> Option<DateTime<Utc>> {
        const FORMATS: [&str; 2] = ["%F %T%.f%:z", "%F %T%:z"];
        FORMATS
            .iter()
            .find_map(|f| DateTime::parse_from_str(text, f).ok())
            .map(|at| at.with_timezone(&Utc))
    }

    #[test]
    fn reads_what_diesel_writes_as_diesel_reads_it() {
        // diesel's `ToSql<TimestamptzSqlite, Sqlite>` format.
        let write = |at: DateTime<Utc>| at.format("%F %T%.f%:z").to_string();
        let start = Utc.with_ymd_and_hms(1999, 12, 31, 23, 59, 58).unwrap();
        let steps = [
            Duration::zero(),
            Duration::milliseconds(1),
            Duration::microseconds(1),
            Duration::nanoseconds(1),
            Duration::nanoseconds(123_456_789),
            Duration::microseconds(999_999),
            Duration::seconds(1),
            Duration::days(60),
            Duration::days(9_000),
        ];
        let mut seen = 0;
        for (i, a) in steps.iter().enumerate() {
            for b in &steps[i..] {
                let at = start + *a + *b;
                let text = write(at);
                assert_eq!(parse_utc_text(&text), Some(at), "{text}");
                assert_eq!(diesel_parse(&text), Some(at), "{text}");
                seen += 1;
            }
        }
        assert_eq!(seen, 45);
        // Each length of fraction chrono may write: none, 3, 6 and 9 digits.
        for (text, nanos) in [
            ("2026-12-05 02:07:12+00:00", 0),
            ("2026-12-05 02:07:12.5+00:00", 500_000_000),
            ("2026-12-05 02:07:12.120+00:00", 120_000_000),
            ("2026-12-05 02:07:12.000123+00:00", 123_000),
            ("2026-12-05 02:07:12.000000007+00:00", 7),
        ] {
            let at = parse_utc_text(text).unwrap();
            assert_eq!(at, diesel_parse(text).unwrap(), "{text}");
            assert_eq!(chrono::Timelike::nanosecond(&at), nanos, "{text}");
        }
    }

    /// `Stamp` and `MaybeStamp` read what diesel's `DateTime<Utc>` reads
    /// from a SQLite value: Ferry's text, other texts, a Julian day, NULL.
    #[test]
    fn reads_sqlite_values_as_diesel_does() {
        use diesel::dsl::sql;
        use diesel::prelude::*;
        let mut conn = SqliteConnection::establish(":memory:").unwrap();
        for value in [
            "'2026-12-05 02:07:12.123456+00:00'",
            "'2026-12-05 02:07:12+00:00'",
            "'2026-12-05T02:07:12Z'",
            "'2026-12-05 03:07:12+01:00'",
            "'2026-12-05 02:07:12'",
            "2461014.5",
        ] {
            let read = |conn: &mut SqliteConnection| {
                diesel::select(sql::<TimestamptzSqlite>(value))
                    .get_result::<Stamp>(conn)
                    .map(|s| s.0)
            };
            let diesel = diesel::select(sql::<TimestamptzSqlite>(value))
                .get_result::<DateTime<Utc>>(&mut conn)
                .unwrap();
            assert_eq!(read(&mut conn).unwrap(), diesel, "{value}");
            let maybe = diesel::select(sql::<Nullable<TimestamptzSqlite>>(value))
                .get_result::<MaybeStamp>(&mut conn)
                .unwrap();
            assert_eq!(maybe.0, Some(diesel), "{value}");
        }
        let null = diesel::select(sql::<Nullable<TimestamptzSqlite>>("NULL"))
            .get_result::<MaybeStamp>(&mut conn)
            .unwrap();
        assert_eq!(null.0, None);
        assert!(diesel::select(sql::<TimestamptzSqlite>("'yesterday'"))
            .get_result::<Stamp>(&mut conn)
            .is_err());
    }

    #[test]
    fn leaves_every_other_form_to_diesel() {
        for text in [
            "",
            "2026-12-05T02:07:12+00:00",
            "2026-12-05 02:07:12+01:00",
            "2026-12-05 02:07:12Z",
            "2026-12-05 02:07:12",
            "2026-12-05 02:07:12.+00:00",
            "2026-12-05 02:07:12.1234567890+00:00",
            "2026-13-05 02:07:12+00:00",
            "2026-02-30 02:07:12+00:00",
            "2026-12-05 24:07:12+00:00",
            "2026-12-05 23:59:60+00:00",
            "2026-12-05 02:07:1x+00:00",
            "+026-12-05 02:07:12+00:00",
            "2026-12-05 02:07:12.12a+00:00",
            "2026-12-05 02:07:12.123\u{e9}+00:00",
        ] {
            assert_eq!(parse_utc_text(text), None, "{text:?}");
        }
    }
}
