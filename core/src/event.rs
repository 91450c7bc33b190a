//! Events as `/receive` takes them: CloudEvents 1.0 (structured, binary and
//! batch) and CloudEvents 0.1 as pacifica sends them. Every event is checked
//! here against what the task database can store ([`crate::storable`]), so
//! what reaches a transaction cannot fail it.

use base64::Engine as _;
use chrono::{DateTime, Utc};
use serde_json::{Map, Value};
use sha2::{Digest as _, Sha256};

use crate::storable::{self, MAX_ATTRIBUTE_BYTES, MAX_KEY_ATTRIBUTE_BYTES};

/// An event ready to become a task.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// The event type; it picks the route.
    pub event_type: String,
    /// Who sent it; with `id` it names the event.
    pub source: String,
    /// The producer's id for the event.
    pub id: String,
    /// The whole event, in the shape it arrived in (binary mode: as structured JSON).
    pub body: Value,
    /// Its [`NOT_BEFORE`] extension, or its [`DELAY_SECONDS`] after it
    /// was read: the task is not run before this time.
    pub not_before: Option<DateTime<Utc>>,
}

/// The CloudEvents extension attribute that delays a task: an RFC 3339
/// time (`"2026-12-03T21:00:00Z"`) before which it does not run. On a 1.x
/// event it is a top-level attribute (`ce-notbefore` in binary mode); on a
/// 0.1 event it is in `extensions`.
pub const NOT_BEFORE: &str = "notbefore";

/// The CloudEvents extension attribute that delays a task relative to its
/// arrival: a whole number of seconds, from 0 to [`MAX_DELAY_SECONDS`], as a
/// JSON integer or a string of digits (`ce-delayseconds` in binary mode is
/// always a string). The task does not run before it was received plus
/// that. An event may give it or [`NOT_BEFORE`], not both.
pub const DELAY_SECONDS: &str = "delayseconds";

/// The longest [`DELAY_SECONDS`]: 30 days.
pub const MAX_DELAY_SECONDS: u64 = 30 * 24 * 3600;

/// The event's [`DELAY_SECONDS`], if it has one.
fn delay_seconds(value: Option<&Value>) -> Result<Option<u64>, EventError> {
    let seconds = match value {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Number(n)) => n.as_u64(),
        Some(Value::String(text))
            if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) =>
        {
            // Leading zeros do not make a number too long to read.
            match text.trim_start_matches('0') {
                "" => Some(0),
                digits if digits.len() > 20 => None,
                digits => digits.parse().ok(),
            }
        }
        Some(_) => None,
    };
    match seconds {
        Some(s) if s <= MAX_DELAY_SECONDS => Ok(Some(s)),
        _ => Err(EventError(format!(
            "`{DELAY_SECONDS}` {} is not a whole number of seconds from 0 to {MAX_DELAY_SECONDS} \
             (30 days), as a JSON integer or a string of digits",
            value.map(Value::to_string).unwrap_or_default()
        ))),
    }
}

/// When a task may run at the earliest: its [`NOT_BEFORE`], or its
/// [`DELAY_SECONDS`] after now (when it is received).
fn due(
    not_before_at: Option<&Value>,
    delay: Option<&Value>,
) -> Result<Option<DateTime<Utc>>, EventError> {
    let at = not_before(not_before_at)?;
    let delay = delay_seconds(delay)?;
    match (at, delay) {
        (Some(_), Some(_)) => Err(EventError(format!(
            "`{NOT_BEFORE}` and `{DELAY_SECONDS}` are both given; give one"
        ))),
        (at, None) => Ok(at),
        (None, Some(seconds)) => {
            let delay = chrono::Duration::seconds(i64::try_from(seconds).unwrap_or(i64::MAX));
            Ok(Some(Utc::now() + delay))
        }
    }
}

/// The event's [`NOT_BEFORE`] time, if it has one.
fn not_before(value: Option<&Value>) -> Result<Option<DateTime<Utc>>, EventError> {
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(text)) => {
            let at = DateTime::parse_from_rfc3339(text)
                .map(|at| at.with_timezone(&Utc))
                .map_err(|e| {
                    EventError(format!(
                        "`{NOT_BEFORE}` {text:?} is not an RFC 3339 time such as \
                         \"2026-12-03T21:00:00Z\" ({e})"
                    ))
                })?;
            storable::check_time(NOT_BEFORE, at).map_err(|e| EventError(e.to_string()))?;
            Ok(Some(at))
        }
        Some(_) => Err(EventError(format!(
            "`{NOT_BEFORE}` must be a string, an RFC 3339 time"
        ))),
    }
}

/// Why a JSON document is not an event.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct EventError(pub String);

fn required_string(object: &Map<String, Value>, key: &str) -> Result<String, EventError> {
    match object.get(key) {
        Some(Value::String(s)) if !s.is_empty() => Ok(s.clone()),
        Some(Value::String(_)) => Err(EventError(format!("`{key}` must not be empty"))),
        Some(_) => Err(EventError(format!("`{key}` must be a string"))),
        None => Err(EventError(format!("the event has no `{key}`"))),
    }
}

impl Event {
    /// Reads one structured event (1.0 or 0.1) from a JSON value.
    pub fn from_json(value: Value) -> Result<Self, EventError> {
        let Value::Object(object) = &value else {
            return Err(EventError("the body is not a JSON object".into()));
        };
        let (type_key, id_key, not_before_at, delay) = if object.contains_key("specversion") {
            match object.get("specversion") {
                Some(Value::String(v)) if v.starts_with("1.") => {}
                other => {
                    return Err(EventError(format!(
                        "unsupported specversion {}",
                        other.unwrap_or(&Value::Null)
                    )))
                }
            }
            (
                "type",
                "id",
                object.get(NOT_BEFORE),
                object.get(DELAY_SECONDS),
            )
        } else if object.contains_key("cloudEventsVersion") {
            let extensions = object.get("extensions").and_then(Value::as_object);
            (
                "eventType",
                "eventID",
                extensions.and_then(|e| e.get(NOT_BEFORE)),
                extensions.and_then(|e| e.get(DELAY_SECONDS)),
            )
        } else {
            return Err(EventError(
                "not a CloudEvent: no `specversion` or `cloudEventsVersion`".into(),
            ));
        };
        let event_type = required_string(object, type_key)?;
        let source = required_string(object, "source")?;
        let id = required_string(object, id_key)?;
        check_storable(object, [type_key, "source", id_key])?;
        let not_before = due(not_before_at, delay)?;
        Ok(Self {
            event_type,
            source,
            id,
            body: value,
            not_before,
        })
    }

    /// Reads an `application/cloudevents-batch+json` array, one event each.
    pub fn batch_from_json(value: Value) -> Result<Vec<Self>, EventError> {
        let Value::Array(items) = value else {
            return Err(EventError("a batch must be a JSON array of events".into()));
        };
        if items.is_empty() {
            return Err(EventError("the batch is empty".into()));
        }
        items
            .into_iter()
            .enumerate()
            .map(|(i, item)| {
                Self::from_json(item).map_err(|e| EventError(format!("event {i}: {e}")))
            })
            .collect()
    }

    /// Builds a structured event from a binary-mode request: the `ce-*`
    /// headers (lowercase names, prefix removed, values already
    /// percent-decoded by [`decode_header_value`]) are the attributes and the
    /// body is the data, carried as the CloudEvents JSON format does: JSON
    /// data (for a JSON media type, or none) as JSON, text (a text media
    /// type, or none) as a string, and any other bytes as `data_base64`. So
    /// the same event sent in binary and in structured mode is the same
    /// document, and a body of any bytes is accepted.
    pub fn from_binary(
        attributes: impl IntoIterator<Item = (String, String)>,
        content_type: Option<&str>,
        body: &[u8],
    ) -> Result<Self, EventError> {
        let mut object = Map::new();
        for (name, value) in attributes {
            object.insert(name, Value::String(value));
        }
        if let Some(ct) = content_type {
            object.insert("datacontenttype".into(), Value::String(ct.into()));
        }
        let json_data = content_type.is_none_or(is_json_media_type);
        let text_data = content_type.is_none_or(is_text_media_type);
        if body.is_empty() {
            object.insert("data".into(), Value::Null);
        } else if let Some(json) = json_data
            .then(|| serde_json::from_slice::<Value>(body).ok())
            .flatten()
        {
            object.insert("data".into(), json);
        } else if let Some(text) = text_data
            .then(|| std::str::from_utf8(body).ok())
            .flatten()
            // Text the database cannot store travels as bytes, unchanged.
            .filter(|text| !text.contains('\0'))
        {
            object.insert("data".into(), Value::String(text.into()));
        } else {
            let encoded = base64::engine::general_purpose::STANDARD.encode(body);
            object.insert("data_base64".into(), Value::String(encoded));
        }
        Self::from_json(Value::Object(object))
    }

    /// A digest of the whole event: two events with the same `source` and
    /// `id` are the same event only if their digests match. Object keys
    /// are sorted and numbers kept as sent, so it does not depend on which
    /// database stored the first one.
    pub fn digest(&self) -> String {
        let text = serde_json::to_vec(&self.body).expect("a JSON value serializes");
        let hash = Sha256::digest(&text);
        hash.iter()
            .fold(String::with_capacity(64), |mut hex, byte| {
                use std::fmt::Write as _;
                let _ = write!(hex, "{byte:02x}");
                hex
            })
    }

    /// The event's `data`, or null.
    pub fn data(&self) -> &Value {
        self.body.get("data").unwrap_or(&Value::Null)
    }
}

/// Whether a media type (`Content-Type`, parameters allowed) is JSON:
/// `application/json`, `text/json` or any `+json` type.
pub fn is_json_media_type(content_type: &str) -> bool {
    let media = essence(content_type);
    media == "application/json" || media == "text/json" || media.ends_with("+json")
}

/// A media type without its parameters, in lowercase.
fn essence(content_type: &str) -> String {
    content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase()
}

/// Whether a media type is text: `text/*`, JSON or XML.
pub fn is_text_media_type(content_type: &str) -> bool {
    let media = essence(content_type);
    media.starts_with("text/")
        || media == "application/xml"
        || media.ends_with("+xml")
        || is_json_media_type(&media)
}

/// Decodes a binary-mode `ce-*` header value as the CloudEvents HTTP
/// binding requires: `%XX` sequences are bytes, and the bytes are UTF-8.
pub fn decode_header_value(value: &str) -> Result<String, String> {
    if !value.contains('%') {
        return Ok(value.to_string());
    }
    let raw = value.as_bytes();
    let mut bytes = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        if raw[i] == b'%' {
            let hex = raw
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok());
            let Some(byte) = hex else {
                return Err(format!(
                    "has a `%` at byte {i} that is not followed by two hex digits"
                ));
            };
            bytes.push(byte);
            i += 3;
        } else {
            bytes.push(raw[i]);
            i += 1;
        }
    }
    String::from_utf8(bytes).map_err(|_| "is not UTF-8 once percent-decoded".to_string())
}

/// Checks every attribute of an event against what the database can hold;
/// `keys` are the attributes that name the event (type, source, id).
fn check_storable(object: &Map<String, Value>, keys: [&str; 3]) -> Result<(), EventError> {
    let fail = |e: storable::Unstorable| EventError(e.to_string());
    for (name, value) in object {
        storable::check_text_len("attribute name", name, MAX_KEY_ATTRIBUTE_BYTES).map_err(fail)?;
        match value {
            Value::String(text) if keys.contains(&name.as_str()) => {
                storable::check_text_len(name, text, MAX_KEY_ATTRIBUTE_BYTES).map_err(fail)?;
            }
            Value::String(text) if name != "data" && name != "data_base64" => {
                storable::check_text_len(name, text, MAX_ATTRIBUTE_BYTES).map_err(fail)?;
            }
            other => storable::check_value(name, other).map_err(fail)?,
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn cloudevents_1_0() {
        let event = Event::from_json(json!({
            "specversion": "1.0", "type": "t", "source": "/s", "id": "1", "data": {"a": 1}
        }))
        .unwrap();
        assert_eq!(
            (
                event.event_type.as_str(),
                event.source.as_str(),
                event.id.as_str()
            ),
            ("t", "/s", "1")
        );
        assert_eq!(event.data(), &json!({"a": 1}));
    }

    #[test]
    fn pacifica_cloudevents_0_1() {
        let text = include_str!("../../test_files/C234-1234-1234/event.json");
        let event = Event::from_json(serde_json::from_str(text).unwrap()).unwrap();
        assert_eq!(event.event_type, "org.pacifica.metadata.ingest");
        assert_eq!(event.id, "C234-1234-1234");
        assert!(event.data().is_array());
    }

    #[test]
    fn not_events() {
        for value in [
            json!([1, 2]),
            json!("x"),
            json!({"type": "t"}),
            json!({"specversion": "1.0", "source": "/s", "id": "1"}),
            json!({"specversion": "1.0", "type": 3, "source": "/s", "id": "1"}),
            json!({"specversion": "2.0", "type": "t", "source": "/s", "id": "1"}),
            json!({"cloudEventsVersion": "0.1", "eventType": "t", "source": "/s"}),
        ] {
            assert!(Event::from_json(value.clone()).is_err(), "{value}");
        }
    }

    #[test]
    fn binary_mode() {
        let event = Event::from_binary(
            [
                ("specversion".to_string(), "1.0".to_string()),
                ("type".to_string(), "t".to_string()),
                ("source".to_string(), "/s".to_string()),
                ("id".to_string(), "9".to_string()),
            ],
            Some("application/json"),
            br#"{"k": true}"#,
        )
        .unwrap();
        assert_eq!(event.data(), &json!({"k": true}));
        assert_eq!(event.body["datacontenttype"], "application/json");
    }

    #[test]
    fn batches() {
        let events = Event::batch_from_json(json!([
            {"specversion": "1.0", "type": "t", "source": "/s", "id": "1"},
            {"specversion": "1.0", "type": "t", "source": "/s", "id": "2"}
        ]))
        .unwrap();
        assert_eq!(events.len(), 2);
        assert!(Event::batch_from_json(json!([])).is_err());
        assert!(Event::batch_from_json(json!([{"specversion": "1.0"}])).is_err());
    }

    #[test]
    fn binary_data_by_media_type() {
        let attrs = || {
            [
                ("specversion", "1.0"),
                ("type", "t"),
                ("source", "/s"),
                ("id", "9"),
            ]
            .map(|(k, v)| (k.to_string(), v.to_string()))
        };
        let text = Event::from_binary(attrs(), Some("text/plain"), b"123").unwrap();
        assert_eq!(text.data(), &json!("123"));
        // Bytes are bytes, even when they happen to be UTF-8 (with a NUL).
        let octets =
            Event::from_binary(attrs(), Some("application/octet-stream"), b"PK\x03\x04\0").unwrap();
        assert_eq!(octets.body["data_base64"], "UEsDBAA=");
        let nul_text = Event::from_binary(attrs(), Some("text/plain"), b"a\0b").unwrap();
        assert_eq!(nul_text.body["data_base64"], "YQBi");
        let bytes =
            Event::from_binary(attrs(), Some("application/octet-stream"), &[0, 159, 255]).unwrap();
        assert_eq!(bytes.body["data_base64"], "AJ//");
        assert!(bytes.body.get("data").is_none());
        let json = Event::from_binary(attrs(), Some("application/ld+json"), b"[1]").unwrap();
        assert_eq!(json.data(), &json!([1]));
    }

    #[test]
    fn structured_and_binary_are_one_event() {
        let structured = Event::from_json(
            serde_json::from_str(
                r#"{"specversion":"1.0","type":"t","source":"/a b/ü","id":"9",
                    "datacontenttype":"application/json","data":{"n":12345678901234567890123}}"#,
            )
            .unwrap(),
        )
        .unwrap();
        let attrs = [
            ("specversion", "1.0"),
            ("type", "t"),
            ("source", "%2Fa%20b%2F%C3%BC"),
            ("id", "9"),
        ]
        .map(|(k, v)| (k.to_string(), decode_header_value(v).unwrap()));
        let binary = Event::from_binary(
            attrs,
            Some("application/json"),
            br#"{"n": 12345678901234567890123}"#,
        )
        .unwrap();
        assert_eq!(binary.source, "/a b/ü");
        assert_eq!(binary.body, structured.body);
        assert_eq!(binary.digest(), structured.digest());
        assert_eq!(
            serde_json::to_string(binary.data()).unwrap(),
            r#"{"n":12345678901234567890123}"#
        );
    }

    #[test]
    fn not_before_is_an_rfc3339_time() {
        let at = |v: Value| {
            Event::from_json(json!({
                "specversion": "1.0", "type": "t", "source": "/s", "id": "1", "notbefore": v
            }))
            .map(|e| e.not_before)
        };
        let due = "2026-12-03T21:00:00+01:00"
            .parse::<DateTime<Utc>>()
            .unwrap();
        assert_eq!(at(json!("2026-12-03T21:00:00+01:00")), Ok(Some(due)));
        assert_eq!(at(Value::Null), Ok(None));
        assert!(at(json!("tomorrow")).unwrap_err().0.contains("`notbefore`"));
        assert!(at(json!(5)).unwrap_err().0.contains("`notbefore`"));
        // The last instant of year 9999 (UTC) is the latest time taken.
        assert!(at(json!("9999-12-31T23:59:59.999999999Z")).is_ok());
        let late = at(json!("9999-12-31T23:59:59-00:01")).unwrap_err().0;
        assert!(late.starts_with("`notbefore` is +10000-"), "{late}");
        let old = Event::from_json(json!({
            "cloudEventsVersion": "0.1", "eventType": "t", "source": "/s", "eventID": "1",
            "extensions": {"notbefore": "2026-12-03T20:00:00Z"}
        }))
        .unwrap();
        assert_eq!(old.not_before, Some(due));
        let binary = Event::from_binary(
            [
                ("specversion".into(), "1.0".into()),
                ("type".into(), "t".into()),
                ("source".into(), "/s".into()),
                ("id".into(), "1".into()),
                ("notbefore".into(), "2026-12-03T20:00:00Z".into()),
            ],
            None,
            b"",
        )
        .unwrap();
        assert_eq!(binary.not_before, Some(due));
    }

    #[test]
    fn delay_seconds_is_relative_and_bounded() {
        let due = |extra: Value| {
            let mut e = json!({"specversion": "1.0", "type": "t", "source": "/s", "id": "1"});
            e.as_object_mut()
                .unwrap()
                .extend(extra.as_object().unwrap().clone());
            Event::from_json(e).map(|e| e.not_before)
        };
        for (value, seconds) in [
            (json!(60), 60),
            (json!("60"), 60),
            (json!("0060"), 60),
            (json!(0), 0),
            (json!("0"), 0),
            (json!(2_592_000), 2_592_000),
        ] {
            let before = Utc::now();
            let at = due(json!({"delayseconds": value})).unwrap().unwrap();
            let delay = chrono::Duration::seconds(seconds);
            assert!(at >= before + delay && at <= Utc::now() + delay, "{value}");
        }
        assert_eq!(due(json!({"delayseconds": null})), Ok(None));
        for bad in [
            json!(-1),
            json!("-1"),
            json!(1.5),
            json!("1.5"),
            json!(2_592_001),
            json!("2592001"),
            json!(""),
            json!(" 5"),
            json!("+5"),
            json!("5s"),
            json!("99999999999999999999999"),
            json!(true),
            json!([5]),
        ] {
            let err = due(json!({"delayseconds": bad})).unwrap_err();
            assert!(err.0.starts_with("`delayseconds`"), "{bad}: {err}");
        }
        let both = due(json!({"delayseconds": 5, "notbefore": "2026-12-03T20:00:00Z"}));
        assert!(both.unwrap_err().0.contains("both"));
        // In `extensions` of a 0.1 event; as a ce- header in binary mode.
        let old = Event::from_json(json!({
            "cloudEventsVersion": "0.1", "eventType": "t", "source": "/s", "eventID": "1",
            "extensions": {"delayseconds": 30}
        }))
        .unwrap();
        assert!(old.not_before.unwrap() > Utc::now() + chrono::Duration::seconds(29));
        let binary = Event::from_binary(
            [
                ("specversion".into(), "1.0".into()),
                ("type".into(), "t".into()),
                ("source".into(), "/s".into()),
                ("id".into(), "1".into()),
                ("delayseconds".into(), "30".into()),
            ],
            None,
            b"",
        )
        .unwrap();
        assert!(binary.not_before.unwrap() > Utc::now() + chrono::Duration::seconds(29));
    }

    #[test]
    fn header_values_decode_strictly() {
        assert_eq!(decode_header_value("plain").unwrap(), "plain");
        assert_eq!(decode_header_value("100%25").unwrap(), "100%");
        assert!(decode_header_value("%zz").is_err());
        assert!(decode_header_value("50%").is_err());
        assert!(decode_header_value("%FF").is_err());
    }

    #[test]
    fn unstorable_events_name_the_attribute() {
        let event = |extra: Value| {
            let mut e = json!({"specversion": "1.0", "type": "t", "source": "/s", "id": "1"});
            e.as_object_mut()
                .unwrap()
                .extend(extra.as_object().unwrap().clone());
            Event::from_json(e)
        };
        let err = event(json!({"source": "/s\u{0}"})).unwrap_err();
        assert!(err.0.starts_with("`source` contains a NUL"), "{err}");
        let err = event(json!({"data": {"k": ["\u{0}"]}})).unwrap_err();
        assert!(err.0.starts_with("`data/k/0`"), "{err}");
        let err = event(json!({"id": "x".repeat(1025)})).unwrap_err();
        assert!(err.0.starts_with("`id` is 1025 bytes long"), "{err}");
        let err = event(json!({"subject": "x".repeat(5000)})).unwrap_err();
        assert!(err.0.starts_with("`subject`"), "{err}");
        let big: Value = serde_json::from_str("1e5000").unwrap();
        assert!(event(json!({"data": big})).is_err());
        assert!(event(json!({"data": "x".repeat(100_000)})).is_ok());
    }
}
