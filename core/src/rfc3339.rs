//! Timestamps written into JSON as chrono's serde writes them, without
//! going through `fmt`.
//!
//! chrono serializes a `DateTime<Utc>` as RFC 3339 with a `Z` and the
//! fraction in as few of 0, 3, 6 or 9 digits as hold it
//! (`2026-12-05T02:07:12.123Z`), through `Display` and serde's
//! `collect_str`: for `/status`, which writes five to seven of them per
//! task, that was 7.7% of a request's instructions (callgrind). These
//! functions write the same text into a buffer on the stack and hand it
//! to the serializer as one string; years outside 0–9999 and leap
//! seconds, which never occur in Ferry's own timestamps, go to chrono.
//! Use as `#[serde(serialize_with = "rfc3339::at")]`, or `rfc3339::opt_at`
//! for an `Option`.

use chrono::{DateTime, Datelike, Timelike, Utc};
use serde::{Serialize, Serializer};

/// Serializes `at` as chrono does.
pub fn at<S: Serializer>(at: &DateTime<Utc>, serializer: S) -> Result<S::Ok, S::Error> {
    let mut buf = [0u8; 30];
    match write(at, &mut buf) {
        // Only ASCII digits and separators were written.
        Some(len) => serializer.serialize_str(std::str::from_utf8(&buf[..len]).unwrap_or_default()),
        None => at.serialize(serializer),
    }
}

/// Serializes `at` as chrono does, `None` as `null`.
pub fn opt_at<S: Serializer>(at: &Option<DateTime<Utc>>, serializer: S) -> Result<S::Ok, S::Error> {
    match at {
        Some(when) => self::at(when, serializer),
        None => serializer.serialize_none(),
    }
}

/// Writes `YYYY-MM-DDTHH:MM:SS[.fff[fff[fff]]]Z` into `buf`; its length,
/// or `None` for a year outside 0–9999 or a leap second.
fn write(at: &DateTime<Utc>, buf: &mut [u8; 30]) -> Option<usize> {
    let year = u32::try_from(at.year()).ok().filter(|y| *y <= 9999)?;
    let nanos = at.nanosecond();
    if nanos >= 1_000_000_000 {
        return None;
    }
    let mut put = |at: usize, value: u32, width: usize| {
        let mut v = value;
        for i in (at..at + width).rev() {
            buf[i] = b'0' + (v % 10) as u8;
            v /= 10;
        }
    };
    put(0, year, 4);
    put(5, at.month(), 2);
    put(8, at.day(), 2);
    put(11, at.hour(), 2);
    put(14, at.minute(), 2);
    put(17, at.second(), 2);
    let (fraction, digits) = if nanos == 0 {
        (0, 0)
    } else if nanos.is_multiple_of(1_000_000) {
        (nanos / 1_000_000, 3)
    } else if nanos.is_multiple_of(1_000) {
        (nanos / 1_000, 6)
    } else {
        (nanos, 9)
    };
    if digits > 0 {
        put(20, fraction, digits);
    }
    for (i, c) in [(4, b'-'), (7, b'-'), (10, b'T'), (13, b':'), (16, b':')] {
        buf[i] = c;
    }
    let end = if digits > 0 {
        buf[19] = b'.';
        20 + digits
    } else {
        19
    };
    buf[end] = b'Z';
    Some(end + 1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{Duration, NaiveDate, TimeZone};

    #[derive(Serialize)]
    struct Fast {
        #[serde(serialize_with = "at")]
        at: DateTime<Utc>,
        #[serde(serialize_with = "opt_at")]
        opt: Option<DateTime<Utc>>,
    }

    #[derive(Serialize)]
    struct Chrono {
        at: DateTime<Utc>,
        opt: Option<DateTime<Utc>>,
    }

    fn same_as_chrono(at: DateTime<Utc>) {
        for opt in [Some(at), None] {
            let fast = serde_json::to_string(&Fast { at, opt }).unwrap();
            let chrono = serde_json::to_string(&Chrono { at, opt }).unwrap();
            assert_eq!(fast, chrono);
        }
    }

    #[test]
    fn writes_what_chrono_writes() {
        let start = Utc.with_ymd_and_hms(1999, 12, 31, 23, 59, 58).unwrap();
        let steps = [
            Duration::zero(),
            Duration::milliseconds(1),
            Duration::milliseconds(120),
            Duration::microseconds(1),
            Duration::microseconds(5_000_010),
            Duration::nanoseconds(1),
            Duration::nanoseconds(123_456_789),
            Duration::seconds(1),
            Duration::days(60),
            Duration::days(9_000),
        ];
        for a in steps {
            for b in steps {
                same_as_chrono(start + a + b);
            }
        }
        for at in [
            Utc.with_ymd_and_hms(0, 1, 1, 0, 0, 0).unwrap(),
            Utc.with_ymd_and_hms(9999, 12, 31, 23, 59, 59).unwrap(),
            DateTime::UNIX_EPOCH,
        ] {
            same_as_chrono(at);
        }
    }

    #[test]
    fn leaves_what_it_does_not_write_to_chrono() {
        let leap = NaiveDate::from_ymd_opt(2016, 12, 31)
            .and_then(|d| d.and_hms_nano_opt(23, 59, 59, 1_500_000_000))
            .unwrap()
            .and_utc();
        for at in [
            Utc.with_ymd_and_hms(-1, 1, 1, 0, 0, 0).unwrap(),
            Utc.with_ymd_and_hms(10000, 1, 1, 0, 0, 0).unwrap(),
            leap,
        ] {
            assert_eq!(write(&at, &mut [0; 30]), None);
            same_as_chrono(at);
        }
    }
}
