//! Events as `/receive` takes them: CloudEvents 1.0 (structured, binary and
//! batch) and CloudEvents 0.1 as pacifica sends them.

use serde_json::{Map, Value};

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
        let (type_key, id_key) = if object.contains_key("specversion") {
            match object.get("specversion") {
                Some(Value::String(v)) if v.starts_with("1.") => {}
                other => {
                    return Err(EventError(format!(
                        "unsupported specversion {}",
                        other.unwrap_or(&Value::Null)
                    )))
                }
            }
            ("type", "id")
        } else if object.contains_key("cloudEventsVersion") {
            ("eventType", "eventID")
        } else {
            return Err(EventError(
                "not a CloudEvent: no `specversion` or `cloudEventsVersion`".into(),
            ));
        };
        Ok(Self {
            event_type: required_string(object, type_key)?,
            source: required_string(object, "source")?,
            id: required_string(object, id_key)?,
            body: value,
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
    /// headers (lowercase names, prefix removed) are the attributes and the
    /// body is the data.
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
        let data = if body.is_empty() {
            Value::Null
        } else if let Ok(json) = serde_json::from_slice::<Value>(body) {
            json
        } else {
            match std::str::from_utf8(body) {
                Ok(text) => Value::String(text.into()),
                Err(_) => return Err(EventError("binary-mode data must be UTF-8".into())),
            }
        };
        object.insert("data".into(), data);
        Self::from_json(Value::Object(object))
    }

    /// The event's `data`, or null.
    pub fn data(&self) -> &Value {
        self.body.get("data").unwrap_or(&Value::Null)
    }
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
}
