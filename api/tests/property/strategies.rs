//! The generators of `property.rs`: requests built from Ferry's real routes,
//! parameters, headers and events, mixed with hostile pieces, so that most
//! requests get past routing and parsing into the code behind them.

use proptest::prelude::*;
use rocket::http::Method;
use serde_json::{json, Map, Value};

/// One request of the property test.
#[derive(Clone)]
pub struct Fuzz {
    pub method: Method,
    /// Path and query, as sent (it may not even parse as a URI).
    pub uri: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl std::fmt::Debug for Fuzz {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut body = String::from_utf8_lossy(&self.body).into_owned();
        if body.len() > 2000 {
            let mut end = 2000;
            while !body.is_char_boundary(end) {
                end -= 1;
            }
            body.truncate(end);
            body.push_str("...");
        }
        f.debug_struct("Fuzz")
            .field("method", &self.method)
            .field("uri", &self.uri)
            .field("headers", &self.headers)
            .field("body", &body)
            .field("body_bytes", &self.body.len())
            .finish()
    }
}

/// What the generators draw from that depends on the app under test: the
/// ids of tasks that exist, cursors it made, the events it was seeded with.
#[derive(Debug, Clone)]
pub struct Seeds {
    pub task_ids: Vec<String>,
    pub cursors: Vec<String>,
    pub events: Vec<Value>,
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

/// Times as a client might write them, valid, odd and hostile: years at
/// both ends of what RFC 3339 can write, offsets that push them past those
/// ends, impossible dates.
pub fn times() -> Vec<String> {
    strings(&[
        "2026-12-03T20:00:00Z",
        "2026-12-03T20:00:00+01:00",
        "2026-12-03T20:00:00.123456789Z",
        "2099-01-01T00:00:00Z",
        "1970-01-01T00:00:00Z",
        "0000-01-01T00:00:00Z",
        "0000-01-01T00:00:00+23:59",
        "0001-01-01T00:00:00+23:59",
        "9999-12-31T23:59:59Z",
        "9999-12-31T23:59:59-23:59",
        "9999-12-31T23:59:59.999999999-23:59",
        "2026-02-30T00:00:00Z",
        "2026-12-03T20:00:60Z",
        "2026-12-03t20:00:00z",
        "2026-12-03 20:00:00Z",
        "2026-12-03",
        "yesterday",
        "",
    ])
}

fn method() -> BoxedStrategy<Method> {
    prop_oneof![
        4 => Just(Method::Get),
        4 => Just(Method::Post),
        1 => prop::sample::select(vec![
            Method::Put,
            Method::Delete,
            Method::Patch,
            Method::Head,
            Method::Options,
        ]),
    ]
    .boxed()
}

/// A path segment that is not a route's: escapes of NUL and of bytes that
/// are not UTF-8, dots, overlong text, lookalikes of ids.
fn hostile_segment() -> BoxedStrategy<String> {
    prop_oneof![
        3 => prop::sample::select(strings(&[
            "%00", "a%00b", "%FF%FE", "%C3%28", "%ED%A0%80", "%", "%zz", "%2F", "%252F", "..",
            ".", "", "%20", "+", "null", "-1", "0", "%F0%9F%98%80", "😀", "a b", "a\u{0}b",
            "\u{7f}", "events", "cancel", "retry", "counts",
            "00000000-0000-0000-0000-000000000000", "ffffffff-ffff-ffff-ffff-ffffffffffff",
            "4b9b8e0e-6a3c-4d25-9d4e-2f0f6a7d1c1", "4b9b8e0e-6a3c-4d25-9d4e-2f0f6a7d1c11x",
            "urn:uuid:4b9b8e0e-6a3c-4d25-9d4e-2f0f6a7d1c11", "{4b9b8e0e-6a3c-4d25-9d4e-2f0f6a7d1c11}",
        ])),
        1 => prop::sample::select(vec![256usize, 4096, 20_000]).prop_map(|n| "x".repeat(n)),
        1 => prop::collection::vec(proptest::char::range('!', '~'), 1..12)
            .prop_map(|c| c.into_iter().collect()),
        1 => any::<u128>().prop_map(|n| uuid::Uuid::from_u128(n).to_string()),
    ]
    .boxed()
}

/// A task id as a path segment: one that exists, in its own or another
/// accepted spelling, or something else.
fn id_segment(seeds: &Seeds) -> BoxedStrategy<String> {
    let ids = seeds.task_ids.clone();
    prop_oneof![
        6 => prop::sample::select(ids.clone()),
        2 => any::<u128>().prop_map(|n| uuid::Uuid::from_u128(n).to_string()),
        1 => prop::sample::select(ids.clone()).prop_map(|id| id.to_uppercase()),
        1 => prop::sample::select(ids.clone()).prop_map(|id| id.replace('-', "")),
        1 => prop::sample::select(ids).prop_map(|id| format!("urn:uuid:{id}")),
        3 => hostile_segment(),
    ]
    .boxed()
}

/// A method and a path: mostly a real route with the method it takes (an
/// id slot filled by [`id_segment`]), sometimes another method or a path
/// no route has.
fn target(seeds: &Seeds) -> BoxedStrategy<(Method, String)> {
    let routes = vec![
        (Method::Get, "/status/{}"),
        (Method::Get, "/status/{}/events"),
        (Method::Get, "/tasks/{}"),
        (Method::Post, "/tasks/{}/cancel"),
        (Method::Post, "/tasks/{}/retry"),
    ];
    let fixed = vec![
        (Method::Post, "/receive"),
        (Method::Post, "/receive"),
        (Method::Get, "/tasks"),
        (Method::Get, "/tasks"),
        (Method::Get, "/tasks/counts"),
        (Method::Get, "/health"),
        (Method::Get, "/"),
        (Method::Get, "/openapi.json"),
        (Method::Post, "/receive/"),
        (Method::Post, "//receive"),
        (Method::Get, "/tasks/"),
    ];
    let path = prop_oneof![
        6 => (prop::sample::select(routes), id_segment(seeds))
            .prop_map(|((m, route), id)| (m, route.replace("{}", &id))),
        5 => prop::sample::select(fixed).prop_map(|(m, p)| (m, p.to_string())),
        1 => (
            prop::sample::select(strings(&["/status/", "/tasks/", "/receive/", "/health/", "/"])),
            prop::collection::vec(hostile_segment(), 1..4),
        )
            .prop_map(|(prefix, segments)| (Method::Get, format!("{prefix}{}", segments.join("/")))),
    ];
    (path, prop::option::weighted(0.15, method()))
        .prop_map(|((own, path), other)| (other.unwrap_or(own), path))
        .boxed()
}

fn query_value(name: &str, seeds: &Seeds) -> BoxedStrategy<String> {
    let hostile = strings(&[
        "",
        "%00",
        "a%00b",
        "%FF",
        "%C3%28",
        "%",
        "%zz",
        "+",
        "%2B",
        "%F0%9F%98%80",
        "a&b",
        "=",
    ]);
    let own: BoxedStrategy<String> = match name {
        "status" => prop::sample::select(strings(&[
            "pending",
            "running",
            "failed,cancelled",
            "succeeded",
            "retrying",
            "Failed",
            ",",
            "pending,,",
            "%20pending%20",
            "pending%2Crunning",
        ]))
        .boxed(),
        "type" | "source" => prop_oneof![
            prop::sample::select(strings(&[
                "org.ferry.echo",
                "/ferry/test",
                "org.pacifica.metadata.ingest",
                "/pacifica/metadata/ingest",
                "org.ferry.nowhere",
            ])),
            prop::sample::select(vec![1024usize, 1025, 5000]).prop_map(|n| "s".repeat(n)),
        ]
        .boxed(),
        "created_after" | "created_before" => prop::sample::select(times())
            .prop_map(|t| t.replace('+', "%2B"))
            .boxed(),
        "limit" => prop::sample::select(strings(&[
            "1",
            "2",
            "50",
            "500",
            "501",
            "0",
            "-1",
            "9223372036854775807",
            "9223372036854775808",
            "1e2",
            "%201",
            "1.0",
        ]))
        .boxed(),
        "cursor" => {
            let cursors = seeds.cursors.clone();
            prop_oneof![
                3 => prop::sample::select(cursors),
                1 => prop::sample::select(strings(&["abc", "====", "fA", "eHx5", "_-_-", "AAAA"])),
            ]
            .boxed()
        }
        // Only waits too short to slow the run, or values no parser should
        // take (not one over the cap, which a route may clamp and wait for).
        "wait" => prop::sample::select(strings(&[
            "0", "0s", "1ms", "10ms", "-1", "-1s", "abc", "1e309", "NaN", "inf", "%201ms", "0x10",
        ]))
        .boxed(),
        _ => prop::collection::vec(proptest::char::range('!', '~'), 0..8)
            .prop_map(|c| c.into_iter().collect())
            .boxed(),
    };
    prop_oneof![4 => own, 1 => prop::sample::select(hostile)].boxed()
}

fn query(seeds: &Seeds) -> BoxedStrategy<String> {
    let names = strings(&[
        "status",
        "type",
        "source",
        "created_after",
        "created_before",
        "limit",
        "cursor",
        "wait",
        "colour",
        "STATUS",
        "status[]",
        "%00",
        "",
    ]);
    let seeds = seeds.clone();
    let pair = prop::sample::select(names).prop_flat_map(move |name| {
        let name2 = name.clone();
        prop_oneof![
            8 => query_value(&name, &seeds).prop_map(move |v| format!("{name2}={v}")),
            1 => Just(name.clone()),
        ]
    });
    prop::collection::vec(pair, 0..5)
        .prop_map(|pairs| pairs.join("&"))
        .boxed()
}

/// The media types `/receive` accepts (api/src/routes/receive.rs), and others.
pub fn content_types() -> Vec<String> {
    strings(&[
        "application/json",
        "application/cloudevents+json",
        "application/cloudevents-batch+json",
        "application/json; charset=utf-8",
        "APPLICATION/CLOUDEVENTS+JSON",
        "application/cloudevents+json;;;",
        "text/plain",
        "application/octet-stream",
        "multipart/form-data; boundary=x",
        "application/x-www-form-urlencoded",
        "",
        ";",
        "a\u{0}b",
    ])
}

fn header(seeds: &Seeds) -> BoxedStrategy<(String, String)> {
    let times = prop::sample::select(times());
    let ids = prop::sample::select(seeds.task_ids.clone());
    let named = |name: &'static str, values: BoxedStrategy<String>| {
        values.prop_map(move |v| (name.to_string(), v)).boxed()
    };
    let text = |items: &[&str]| prop::sample::select(strings(items)).boxed();
    prop_oneof![
        4 => named("content-type", prop::sample::select(content_types()).boxed()),
        1 => named("idempotency-key", prop_oneof![
            text(&["k1", "k2", "", " ", "a b", "é", "k\u{0}", "%00"]),
            Just("k".repeat(256)).boxed(),
        ].boxed()),
        1 => named("last-event-id", text(&[
            "0", "1", "-1", "99999999999999999999", "abc", "", "%00", "1.5", "a\u{0}b", "2:1",
        ])),
        1 => named("authorization", prop_oneof![
            text(&["Bearer x", "Bearer ", "Basic Zm9vOmJhcg==", "", "bearer", "Bearer \u{0}"]),
            Just(format!("Bearer {}", "t".repeat(5000))).boxed(),
        ].boxed()),
        1 => named("accept", text(&["text/event-stream", "*/*", "application/json", ""])),
        2 => named("ce-specversion", text(&["1.0", "1.0", "0.3", "", "1.x"])),
        2 => named("ce-type", text(&["org.ferry.echo", "org.ferry.nowhere", "", "a%00b", "%FF"])),
        2 => named("ce-source", text(&["/fuzz", "%2Fa%20b", "", "%", "%zz", "/\u{0}"])),
        2 => named("ce-id", prop_oneof![
            ids.boxed(),
            prop::collection::vec(proptest::char::range('a', 'z'), 1..8)
                .prop_map(|c| c.into_iter().collect::<String>()),
            text(&["", "%00", "%C3%28"]),
        ].boxed()),
        1 => named("ce-notbefore", prop_oneof![times.boxed(), text(&["%00", "60"])].boxed()),
        1 => named("ce-delayseconds", delay_values()),
        1 => (
            prop::sample::select(strings(&[
                "ce-data", "ce-data_base64", "ce-datacontenttype", "ce-", "ce-%00", "ce-subject",
                "x-unknown",
            ])),
            text(&["x", "", "%00", "{}", "%FF"]),
        )
            .boxed(),
    ]
    .boxed()
}

/// Values for the relative delay: in range, out of range, not numbers.
fn delay_values() -> BoxedStrategy<String> {
    prop::sample::select(strings(&[
        "0",
        "1",
        "60",
        "2592000",
        "2592001",
        "-1",
        "1.5",
        "1e3",
        "abc",
        "",
        "99999999999999999999",
        "+5",
        " 5",
    ]))
    .boxed()
}

/// A string a producer should not send: NULs, controls, overlong.
fn hostile_string() -> BoxedStrategy<String> {
    prop_oneof![
        3 => prop::sample::select(strings(&[
            "", "\u{0}", "a\u{0}b", "\u{1}\u{1f}", "\u{feff}", "\u{fffe}", "\u{10ffff}", "😀",
            "\\", "\"", "%00",
        ])),
        1 => prop::sample::select(vec![1025usize, 4097, 70_000, 300_000]).prop_map(|n| "x".repeat(n)),
        2 => prop::collection::vec(any::<char>(), 0..12).prop_map(|c| c.into_iter().collect()),
    ]
    .boxed()
}

/// A JSON value of another type than expected, or hostile.
fn odd_value() -> BoxedStrategy<Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        Just(json!(-1)),
        Just(json!(1.5)),
        Just(json!([])),
        Just(json!({})),
        Just(json!([1, "a", null])),
        prop::sample::select(strings(&[
            "1e5000",
            "-0",
            "12345678901234567890123",
            "1e-1001"
        ]))
        .prop_map(|n| serde_json::from_str(&n).unwrap()),
        hostile_string().prop_map(Value::String),
        prop::sample::select(times()).prop_map(Value::String),
    ]
    .boxed()
}

/// One change to an event.
#[derive(Debug, Clone)]
enum Mutation {
    Drop(usize),
    Retype(usize, Value),
    Set(String, Value),
    FreshId(u32),
    Nest(usize),
}

const ATTRIBUTES: [&str; 14] = [
    "specversion",
    "type",
    "source",
    "id",
    "data",
    "data_base64",
    "datacontenttype",
    "time",
    "subject",
    "notbefore",
    "delayseconds",
    "cloudEventsVersion",
    "eventType",
    "eventID",
];

fn mutation() -> BoxedStrategy<Mutation> {
    let attribute = prop::sample::select(ATTRIBUTES.to_vec()).prop_map(String::from);
    prop_oneof![
        2 => any::<usize>().prop_map(Mutation::Drop),
        2 => (any::<usize>(), odd_value()).prop_map(|(i, v)| Mutation::Retype(i, v)),
        3 => (attribute, odd_value()).prop_map(|(k, v)| Mutation::Set(k, v)),
        1 => (prop::sample::select(vec!["notbefore", "delayseconds"]), delay_values())
            .prop_map(|(k, v)| Mutation::Set(k.into(), v.parse::<i64>().map_or(Value::String(v), Value::from))),
        3 => any::<u32>().prop_map(Mutation::FreshId),
        1 => prop::sample::select(vec![10usize, 127, 128, 200]).prop_map(Mutation::Nest),
    ]
    .boxed()
}

fn mutate(mut event: Value, mutations: &[Mutation]) -> Value {
    for m in mutations {
        let Value::Object(object) = &mut event else {
            return event;
        };
        let nth_key = |o: &Map<String, Value>, i: usize| {
            (!o.is_empty()).then(|| o.keys().nth(i % o.len()).unwrap().clone())
        };
        match m {
            Mutation::Drop(i) => {
                if let Some(k) = nth_key(object, *i) {
                    object.remove(&k);
                }
            }
            Mutation::Retype(i, v) => {
                if let Some(k) = nth_key(object, *i) {
                    object.insert(k, v.clone());
                }
            }
            Mutation::Set(k, v) => {
                object.insert(k.clone(), v.clone());
            }
            Mutation::FreshId(n) => {
                let key = if object.contains_key("eventID") {
                    "eventID"
                } else {
                    "id"
                };
                object.insert(key.into(), format!("fuzz-{n}").into());
            }
            Mutation::Nest(depth) => {
                let mut data = json!(1);
                for _ in 0..*depth {
                    data = json!({ "a": [data] });
                }
                object.insert("data".into(), data);
            }
        }
    }
    event
}

fn mutated_event(seeds: &Seeds) -> BoxedStrategy<Value> {
    (
        prop::sample::select(seeds.events.clone()),
        prop::collection::vec(mutation(), 0..4),
        prop::option::of(any::<u32>()),
    )
        .prop_map(|(event, mutations, fresh)| {
            let mut mutations = mutations;
            // Often a new event, so that it gets stored rather than found.
            mutations.extend(fresh.map(Mutation::FreshId));
            mutate(event, &mutations)
        })
        .boxed()
}

/// Bodies: seeded events as they are and mutated, batches, text with bytes
/// that are not UTF-8 or with a key twice, nesting deeper than the parser
/// takes, over the size limit.
fn body(seeds: &Seeds, max_body: usize) -> BoxedStrategy<Vec<u8>> {
    let event = mutated_event(seeds);
    let text = event.clone().prop_map(|e| e.to_string());
    prop_oneof![
        2 => Just(Vec::new()),
        6 => event.clone().prop_map(|e| e.to_string().into_bytes()),
        3 => prop::collection::vec(event, 0..4).prop_map(|b| Value::Array(b).to_string().into_bytes()),
        1 => (text.clone(), any::<prop::sample::Index>(), prop::sample::select(vec![
            vec![0xffu8], vec![0xc3, 0x28], vec![0xed, 0xa0, 0x80], vec![0], vec![0xf0, 0x9f],
        ]))
            .prop_map(|(text, at, bytes)| {
                let mut out = text.into_bytes();
                let i = at.index(out.len() + 1);
                out.splice(i..i, bytes);
                out
            }),
        1 => text.clone().prop_map(|t| t.replacen('{', r#"{"id":"dup","type":7,"#, 1).into_bytes()),
        1 => text.prop_map(move |t| format!("{t}{}", " ".repeat(max_body)).into_bytes()),
        1 => prop::collection::vec(any::<u8>(), 0..64),
        1 => prop::sample::select(strings(&["null", "[]", "[[]]", "{}", "\"x\"", "1e5000", "[null]"]))
            .prop_map(String::into_bytes),
    ]
    .boxed()
}

/// Whole requests.
pub fn request(seeds: &Seeds, max_body: usize) -> BoxedStrategy<Fuzz> {
    (
        target(seeds),
        (query(seeds), prop::bool::weighted(0.5)),
        prop::option::weighted(
            0.6,
            prop::sample::select(strings(&[
                "application/json",
                "application/cloudevents+json",
                "application/cloudevents-batch+json",
            ])),
        ),
        prop::option::weighted(
            0.25,
            (
                any::<u32>(),
                prop::option::of(prop::sample::select(times())),
            ),
        ),
        prop::collection::vec(header(seeds), 0..5),
        body(seeds, max_body),
    )
        .prop_map(|((method, path), query, lead, binary, more, body)| {
            let mut headers: Vec<(String, String)> = lead
                .map(|ct| ("content-type".to_string(), ct))
                .into_iter()
                .collect();
            if let Some((id, notbefore)) = binary {
                // A routed binary-mode event, which the random headers
                // after it may spoil.
                for (name, value) in [
                    ("ce-specversion", "1.0".to_string()),
                    ("ce-type", "org.ferry.echo".to_string()),
                    ("ce-source", "/fuzz/binary".to_string()),
                    ("ce-id", format!("binary-{id}")),
                ] {
                    headers.push((name.to_string(), value));
                }
                if let Some(at) = notbefore {
                    headers.push(("ce-notbefore".to_string(), at.replace('+', "%2B")));
                }
            }
            headers.extend(more);
            Fuzz {
                method,
                // The list always has a query string; other paths sometimes.
                uri: if path == "/tasks" || query.1 {
                    format!("{path}?{}", query.0)
                } else {
                    path
                },
                headers,
                body,
            }
        })
        .boxed()
}
