//! What both task databases can hold. SQLite stores any text, but
//! PostgreSQL refuses a NUL character in `text` and in `jsonb` (strings and
//! keys alike), and turns a number such as `1e100000` into a hundred
//! thousand digits or refuses it. Checking here, before anything reaches a
//! transaction, makes both backends answer the same input the same way, and
//! keeps one client's bad data out of a batch that other clients share.

use std::borrow::Cow;

use chrono::{DateTime, Utc};
use serde_json::{Map, Number, Value};

/// Longest `type`, `source` and `id` of an event, in bytes.
pub const MAX_KEY_ATTRIBUTE_BYTES: usize = 1024;

/// Longest value of any other top-level event attribute (not `data`), in bytes.
pub const MAX_ATTRIBUTE_BYTES: usize = 4096;

/// Most digits a number may have when written out in full (`1e3` is 4).
pub const MAX_NUMBER_DIGITS: usize = 1000;

/// Why a value cannot be stored, and where in it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{path}` {reason}")]
pub struct Unstorable {
    /// Where: an attribute name, then `/`-separated keys and indexes.
    pub path: String,
    /// What is wrong there.
    pub reason: String,
}

/// The latest time Ferry takes from a client (`notbefore`, a `/tasks`
/// filter or cursor): 9999-12-31T23:59:59.999999999Z. SQLite keeps times
/// as text, and a year of five digits (`+10000-01-01 …`) would sort before
/// every year of four, so a later time would compare as earlier there than
/// on PostgreSQL.
pub fn max_time() -> DateTime<Utc> {
    DateTime::<Utc>::from_naive_utc_and_offset(
        chrono::NaiveDate::from_ymd_opt(9999, 12, 31)
            .and_then(|d| d.and_hms_nano_opt(23, 59, 59, 999_999_999))
            .expect("a valid date"),
        Utc,
    )
}

/// Checks a time given by a client: no later than [`max_time`].
pub fn check_time(path: &str, at: DateTime<Utc>) -> Result<(), Unstorable> {
    if at > max_time() {
        return Err(Unstorable {
            path: path.into(),
            reason: format!(
                "is {}, after 9999-12-31T23:59:59Z, the latest time Ferry takes",
                at.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)
            ),
        });
    }
    Ok(())
}

const NUL_REASON: &str = "contains a NUL character (U+0000), which the task database cannot store";

/// Checks one text column's value.
pub fn check_text(path: &str, text: &str) -> Result<(), Unstorable> {
    if text.contains('\0') {
        return Err(Unstorable {
            path: path.into(),
            reason: NUL_REASON.into(),
        });
    }
    Ok(())
}

/// Checks a text value and its length.
pub fn check_text_len(path: &str, text: &str, max: usize) -> Result<(), Unstorable> {
    if text.len() > max {
        return Err(Unstorable {
            path: path.into(),
            reason: format!("is {} bytes long; the limit is {max}", text.len()),
        });
    }
    check_text(path, text)
}

/// Checks a JSON value, found at `path`, for every string, key and number in it.
pub fn check_value(path: &str, value: &Value) -> Result<(), Unstorable> {
    // Iterative, so the depth of a document costs no stack.
    let mut stack: Vec<(Cow<'_, str>, &Value)> = vec![(Cow::Borrowed(path), value)];
    while let Some((path, value)) = stack.pop() {
        match value {
            Value::String(s) => check_text(&path, s)?,
            Value::Number(n) => check_number(&path, n)?,
            Value::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    stack.push((Cow::Owned(format!("{path}/{i}")), item));
                }
            }
            Value::Object(map) => {
                for (key, item) in map {
                    if key.contains('\0') {
                        return Err(Unstorable {
                            path: format!("{path}/{}", key.escape_debug()),
                            reason: format!("has a key that {NUL_REASON}"),
                        });
                    }
                    stack.push((Cow::Owned(format!("{path}/{key}")), item));
                }
            }
            Value::Null | Value::Bool(_) => {}
        }
    }
    Ok(())
}

fn check_number(path: &str, n: &Number) -> Result<(), Unstorable> {
    let digits = written_digits(&n.to_string());
    if digits > MAX_NUMBER_DIGITS {
        return Err(Unstorable {
            path: path.into(),
            reason: format!(
                "is a number of {digits} digits when written out; the limit is {MAX_NUMBER_DIGITS}"
            ),
        });
    }
    Ok(())
}

/// How many digits a JSON number has when written without an exponent
/// (how PostgreSQL's `jsonb` stores and prints it).
fn written_digits(text: &str) -> usize {
    let text = text.trim_start_matches('-');
    let (mantissa, exponent) = match text.find(['e', 'E']) {
        Some(i) => {
            let exponent = &text[i + 1..];
            // An exponent too long for an i64 is far past any limit either way.
            let overflow = if exponent.starts_with('-') {
                i64::MIN
            } else {
                i64::MAX
            };
            (&text[..i], exponent.parse::<i64>().unwrap_or(overflow))
        }
        None => (text, 0),
    };
    let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    let significant = (int.len() + frac.len()) as i64;
    // Digits before the decimal point once the exponent is applied.
    let point = (int.len() as i64).saturating_add(exponent);
    let written = if point > 0 {
        point.max(significant)
    } else {
        significant.saturating_sub(point)
    };
    usize::try_from(written).unwrap_or(usize::MAX)
}

/// `text` with every NUL written as the six characters `\u0000`, so it can be stored.
pub fn escape_text(text: &str) -> Cow<'_, str> {
    if text.contains('\0') {
        Cow::Owned(text.replace('\0', "\\u0000"))
    } else {
        Cow::Borrowed(text)
    }
}

/// `value` made storable: NULs in strings and keys escaped as in
/// [`escape_text`], numbers too long to store kept as their text.
pub fn escape_value(value: Value) -> Value {
    match value {
        Value::String(s) => Value::String(escape_text(&s).into_owned()),
        Value::Number(n) => {
            let text = n.to_string();
            if written_digits(&text) > MAX_NUMBER_DIGITS {
                Value::String(text)
            } else {
                Value::Number(n)
            }
        }
        Value::Array(items) => Value::Array(items.into_iter().map(escape_value).collect()),
        Value::Object(map) => Value::Object(
            map.into_iter()
                .map(|(k, v)| (escape_text(&k).into_owned(), escape_value(v)))
                .collect::<Map<_, _>>(),
        ),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn nul_anywhere_is_named() {
        let value = json!({"a": [1, {"b": "x\u{0}y"}]});
        let err = check_value("data", &value).unwrap_err();
        assert_eq!(err.path, "data/a/1/b");
        let err = check_value("data", &json!({"k\u{0}": 1})).unwrap_err();
        assert!(err.reason.contains("key"), "{err}");
        assert!(check_value("data", &json!({"a": ["ok", 1.5, null]})).is_ok());
        assert!(check_text("source", "/s\u{0}").is_err());
    }

    #[test]
    fn numbers_are_measured_written_out() {
        assert_eq!(written_digits("0"), 1);
        assert_eq!(written_digits("-12.50"), 4);
        assert_eq!(written_digits("1e3"), 4);
        assert_eq!(written_digits("1.5E+2"), 3);
        assert_eq!(written_digits("1e-3"), 3);
        assert_eq!(written_digits("1e100000"), 100_001);
        assert!(written_digits("1e999999999999999999999") > MAX_NUMBER_DIGITS);
        assert!(written_digits("1e-999999999999999999999") > MAX_NUMBER_DIGITS);
        let big: Value = serde_json::from_str("1e100000").unwrap();
        assert!(check_value("data", &big).is_err());
        let exact: Value = serde_json::from_str("123456789012345678901234567890").unwrap();
        assert!(check_value("data", &exact).is_ok());
    }

    #[test]
    fn escaping_makes_values_storable() {
        let value: Value = serde_json::from_str(r#"{"a\u0000": ["x\u0000", 1e5000, 2]}"#).unwrap();
        let escaped = escape_value(value);
        assert!(check_value("result", &escaped).is_ok());
        assert_eq!(escaped["a\\u0000"][0], "x\\u0000");
        assert_eq!(escaped["a\\u0000"][2], json!(2));
        assert_eq!(escape_text("plain"), "plain");
    }

    #[test]
    fn lengths_are_checked() {
        assert!(check_text_len("id", &"x".repeat(MAX_KEY_ATTRIBUTE_BYTES), 1024).is_ok());
        let err = check_text_len("id", &"x".repeat(1025), 1024).unwrap_err();
        assert_eq!(
            err.to_string(),
            "`id` is 1025 bytes long; the limit is 1024"
        );
    }
}
