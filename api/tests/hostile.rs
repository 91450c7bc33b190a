//! Hostile input over HTTP, against real processes (issue 8):
//!
//! - a database refusal the door did not foresee fails only its own request
//!   in a group commit, never the other requests in the batch;
//! - what the task database cannot store is refused at the door with 422,
//!   the same answer on SQLite, PostgreSQL and standalone;
//! - numbers keep every digit from `/receive` to `/status`;
//! - binary mode carries bytes as `data_base64` and percent-decodes `ce-*`;
//! - the same (source, id) with other content is a 409 conflict;
//! - random requests never get a 5xx or a body that is not a JSON error.

use std::time::Duration;

use ferry_testkit::{layout_tests, require, Api, Deployment, Layout, Reply, Stack};
use futures_util::stream::{self, StreamExt};
use proptest::prelude::*;
use proptest::test_runner::{Config as ProptestConfig, TestCaseError, TestRunner};
use serde_json::{json, Map, Value};

const DONE: Duration = Duration::from_secs(60);
const STRUCTURED: (&str, &str) = ("content-type", "application/cloudevents+json");
const BATCH: (&str, &str) = ("content-type", "application/cloudevents-batch+json");

// ---------------------------------------------------------------------------
// The test's own database, read and changed behind the API's back.

/// The stored event of the one task whose event id is `event_id`.
fn stored_event(deployment: &Deployment, event_id: &str) -> Value {
    let rows = deployment.texts(&format!(
        "SELECT CAST(event AS TEXT) AS v FROM tasks WHERE event_id = '{event_id}'"
    ));
    assert_eq!(rows.len(), 1, "tasks with event id {event_id:?}: {rows:?}");
    serde_json::from_str(&rows[0]).unwrap()
}

// ---------------------------------------------------------------------------
// Events and requests.

/// A routed CloudEvents 1.0 event; `patch`'s keys replace or add attributes.
fn event(id: &str, patch: Value) -> Value {
    let mut event = json!({
        "specversion": "1.0", "type": "org.ferry.echo", "source": "/ferry/hostile",
        "id": id, "data": {"ok": true}
    });
    let object = event.as_object_mut().unwrap();
    for (k, v) in patch.as_object().unwrap() {
        object.insert(k.clone(), v.clone());
    }
    event
}

/// A JSON number exactly as written (serde_json keeps every digit here).
fn number(text: &str) -> Value {
    let value: Value = serde_json::from_str(text).unwrap();
    assert!(value.is_number(), "{text}");
    value
}

/// The `ce-*` headers of a routed binary-mode event.
fn ce(source: &str, id: &str) -> Vec<(String, String)> {
    vec![
        ("ce-specversion".into(), "1.0".into()),
        ("ce-type".into(), "org.ferry.echo".into()),
        ("ce-source".into(), source.into()),
        ("ce-id".into(), id.into()),
    ]
}

fn header_refs(headers: &[(String, String)]) -> Vec<(&str, &str)> {
    headers
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect()
}

/// GET as raw text: the status and the body exactly as sent.
async fn get_text(api: &Api, path: &str) -> (u16, String) {
    let response = api
        .client
        .get(format!("{}{path}", api.base))
        .send()
        .await
        .unwrap();
    (response.status().as_u16(), response.text().await.unwrap())
}

// ---------------------------------------------------------------------------
// 1. Group commit isolation, with a real refusal from the database.

const SQLITE_POISON: &str = "CREATE TRIGGER poison BEFORE INSERT ON tasks \
     WHEN NEW.event_id LIKE 'poison%' \
     BEGIN SELECT RAISE(ABORT, 'poisoned event'); END;";

const POSTGRES_POISON: &str = "CREATE FUNCTION poison() RETURNS trigger LANGUAGE plpgsql AS $$ \
     BEGIN IF NEW.event_id LIKE 'poison%' THEN RAISE EXCEPTION 'poisoned event'; END IF; \
     RETURN NEW; END $$; \
     CREATE TRIGGER poison BEFORE INSERT ON tasks FOR EACH ROW EXECUTE FUNCTION poison();";

/// 400 valid events and 4 that the database refuses (a trigger installed
/// once the API migrated), 50 requests in flight: the valid ones are all
/// stored and answered 202, each poisoned one alone gets a 500.
async fn poison_hurts_only_its_own_request(stack: &Stack) {
    let (deployment, api) = (&stack.deployment, &stack.api);
    deployment.execute(if deployment.pg.is_some() {
        POSTGRES_POISON
    } else {
        SQLITE_POISON
    });
    let poisoned = |i: usize| i % 101 == 50;
    // A round is 404 requests, 50 in flight. A poisoned one that shares
    // a batch with valid ones fails that batch, whose items then run one
    // at a time. A busy machine can trickle every poisoned request into a
    // batch of its own (it happened once in CI), so the rounds repeat,
    // five at most, until one did share; every round checks every answer.
    let mut rounds = 0;
    loop {
        rounds += 1;
        let answers: Vec<(String, Reply)> = stream::iter(0..404)
            .map(|i| async move {
                let id = match (rounds, poisoned(i)) {
                    (1, true) => format!("poison-{i}"),
                    (1, false) => format!("ok-{i}"),
                    (_, true) => format!("poison-{rounds}-{i}"),
                    (_, false) => format!("ok-{rounds}-{i}"),
                };
                let body = event(&id, json!({"data": {"i": i}})).to_string();
                let r = api.post(body, &[STRUCTURED]).await;
                (id, r)
            })
            .buffer_unordered(50)
            .collect()
            .await;
        let mut stored = Vec::new();
        for (event_id, r) in &answers {
            if event_id.starts_with("poison") {
                // The door could not foresee the trigger: a database refusal.
                r.assert_error(500, "internal");
            } else {
                assert_eq!(r.status, 202, "{event_id}: {:?}", r.body);
                stored.push((event_id.clone(), r.task_id()));
            }
        }
        assert_eq!(stored.len(), 400);
        let views: Vec<(String, Reply)> = stream::iter(stored)
            .map(|(event_id, id)| async move { (event_id, api.status(&id).await) })
            .buffer_unordered(50)
            .collect()
            .await;
        for (event_id, view) in &views {
            assert_eq!(view.status, 200, "{event_id}: {:?}", view.body);
            assert_eq!(view.body["event_id"], event_id.as_str());
        }
        assert_eq!(deployment.task_rows(""), 400 * rounds);
        assert_eq!(deployment.task_rows("WHERE event_id LIKE 'poison%'"), 0);
        let log = api.proc.log_text();
        if log.contains("running its items one at a time") {
            break;
        }
        assert!(
            rounds < 5,
            "no batch was isolated in {rounds} rounds; log:\n{log}"
        );
    }
    // The poisoned events are still refused alone; the valid ones repeat.
    let r = api
        .post(
            event("poison-50", json!({"data": {"i": 50}})).to_string(),
            &[STRUCTURED],
        )
        .await;
    r.assert_error(500, "internal");
    let r = api
        .post(
            event("ok-0", json!({"data": {"i": 0}})).to_string(),
            &[STRUCTURED],
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(api.get("/health").await.status, 200);
}

/// [`poison_hurts_only_its_own_request`] with the `/receive` limit fixed at
/// its default (128): the poisoned batches, run item by item, make commits
/// slow on a busy machine, and a limit that follows commit latency could
/// then drop below the test's 50 requests in flight and refuse some (503),
/// which is not what this test is about (`overload.rs` is).
async fn poison_with_a_fixed_limit(layout: Layout) {
    let fixed = |d: Deployment| d.env("FERRY_RECEIVE_LATENCY_TARGET", "0");
    if let Some(stack) = Stack::start_with(layout, 1, fixed).await {
        poison_hurts_only_its_own_request(&stack).await;
    }
}

#[tokio::test]
async fn group_commit_isolates_a_poisoned_insert_sqlite() {
    poison_with_a_fixed_limit(Layout::Sqlite).await;
}

#[tokio::test]
async fn group_commit_isolates_a_poisoned_insert_postgres() {
    poison_with_a_fixed_limit(Layout::Postgres).await;
}

#[tokio::test]
async fn group_commit_isolates_a_poisoned_insert_standalone() {
    poison_with_a_fixed_limit(Layout::Standalone).await;
}

// ---------------------------------------------------------------------------
// 2. Refused at the door: what the database cannot store is a 422 naming it.

/// One request and the answer it must get.
#[derive(Debug)]
struct Probe {
    label: &'static str,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    status: u16,
    /// The error code (empty for an accepted event).
    code: &'static str,
    /// What the error message starts with.
    message: String,
}

fn structured(label: &'static str, event: Value, status: u16, message: &str) -> Probe {
    Probe {
        label,
        headers: vec![(STRUCTURED.0.into(), STRUCTURED.1.into())],
        body: event.to_string().into_bytes(),
        status,
        code: if status == 202 { "" } else { "invalid_event" },
        message: message.into(),
    }
}

fn binary(
    label: &'static str,
    headers: Vec<(String, String)>,
    body: &[u8],
    status: u16,
    code: &'static str,
    message: &str,
) -> Probe {
    let mut headers = headers;
    if !headers.iter().any(|(k, _)| k == "content-type") {
        headers.push(("content-type".into(), "application/json".into()));
    }
    Probe {
        label,
        headers,
        body: body.to_vec(),
        status,
        code,
        message: message.into(),
    }
}

fn batch(label: &'static str, events: Vec<Value>, status: u16, message: &str) -> Probe {
    Probe {
        label,
        headers: vec![(BATCH.0.into(), BATCH.1.into())],
        body: Value::Array(events).to_string().into_bytes(),
        status,
        code: if status == 202 { "" } else { "invalid_event" },
        message: message.into(),
    }
}

fn with(mut headers: Vec<(String, String)>, name: &str, value: &str) -> Vec<(String, String)> {
    headers.retain(|(k, _)| k != name);
    headers.push((name.into(), value.into()));
    headers
}

fn door_probes() -> Vec<Probe> {
    let x = |n: usize| "x".repeat(n);
    let digits = |n: usize| format!("1{}", "0".repeat(n - 1));
    let nul = "contains a NUL character";
    vec![
        // Structured: a NUL anywhere.
        structured(
            "nul in data",
            event("d1", json!({"data": {"k": ["a\0"]}})),
            422,
            &format!("`data/k/0` {nul}"),
        ),
        structured(
            "nul in source",
            event("d2", json!({"source": "/s\0"})),
            422,
            &format!("`source` {nul}"),
        ),
        structured(
            "nul in id",
            event("d\0", json!({})),
            422,
            &format!("`id` {nul}"),
        ),
        structured(
            "nul in type",
            event("d4", json!({"type": "org.ferry.echo\0"})),
            422,
            &format!("`type` {nul}"),
        ),
        structured(
            "nul in extension",
            event("d5", json!({"subject": "x\0y"})),
            422,
            &format!("`subject` {nul}"),
        ),
        structured(
            "nul deep in extension",
            event("d6", json!({"myext": {"deep": ["\0"]}})),
            422,
            &format!("`myext/deep/0` {nul}"),
        ),
        structured(
            "nul in a data key",
            event("d7", json!({"data": {"a\0b": 1}})),
            422,
            "`data/a\\0b` has a key that contains a NUL character",
        ),
        structured(
            "nul in an attribute name",
            event("d8", json!({"ext\0": "v"})),
            422,
            &format!("`attribute name` {nul}"),
        ),
        structured(
            "nul in data_base64",
            event("d9", json!({"data_base64": "AA\0"})),
            422,
            &format!("`data_base64` {nul}"),
        ),
        structured(
            "nul in a 0.1 event id",
            json!({"cloudEventsVersion": "0.1", "eventType": "org.ferry.echo",
                   "source": "/ferry/hostile", "eventID": "e\0", "data": null}),
            422,
            &format!("`eventID` {nul}"),
        ),
        // Structured: lengths, in bytes.
        structured(
            "type of 1025 bytes",
            event("l1", json!({"type": x(1025)})),
            422,
            "`type` is 1025 bytes long; the limit is 1024",
        ),
        structured(
            "source of 1025 bytes",
            event("l2", json!({"source": x(1025)})),
            422,
            "`source` is 1025 bytes long; the limit is 1024",
        ),
        structured(
            "id of 1025 bytes",
            event(&x(1025), json!({})),
            422,
            "`id` is 1025 bytes long; the limit is 1024",
        ),
        structured(
            "id of 513 two-byte chars",
            event(&"ü".repeat(513), json!({})),
            422,
            "`id` is 1026 bytes long; the limit is 1024",
        ),
        structured(
            "subject of 4097 bytes",
            event("l5", json!({"subject": x(4097)})),
            422,
            "`subject` is 4097 bytes long; the limit is 4096",
        ),
        structured(
            "extension of 4097 bytes",
            event("l6", json!({"myext": x(4097)})),
            422,
            "`myext` is 4097 bytes long; the limit is 4096",
        ),
        structured(
            "attribute name of 1025 bytes",
            event("l7", json!({x(1025): "v"})),
            422,
            "`attribute name` is 1025 bytes long; the limit is 1024",
        ),
        // Structured: numbers too long to write out.
        structured(
            "1e5000 as data",
            event("n1", json!({"data": number("1e5000")})),
            422,
            "`data` is a number of 5001 digits when written out; the limit is 1000",
        ),
        structured(
            "1e5000 deep in data",
            event("n2", json!({"data": {"n": [1, number("1e5000")]}})),
            422,
            "`data/n/1` is a number of 5001 digits",
        ),
        structured(
            "1e5000 as an extension",
            event("n3", json!({"myext": number("1e5000")})),
            422,
            "`myext` is a number of 5001 digits",
        ),
        structured(
            "-1e-5000",
            event("n4", json!({"data": number("-1e-5000")})),
            422,
            "`data` is a number of 5000 digits",
        ),
        structured(
            "1e1000",
            event("n5", json!({"data": number("1e1000")})),
            422,
            "`data` is a number of 1001 digits",
        ),
        structured(
            "1001 digits",
            event("n6", json!({"data": number(&digits(1001))})),
            422,
            "`data` is a number of 1001 digits",
        ),
        structured(
            "1e-1001",
            event("n7", json!({"data": number("1e-1001")})),
            422,
            "`data` is a number of 1001 digits",
        ),
        // Structured: just inside every limit.
        structured(
            "source of 1024 bytes",
            event("ok-l2", json!({"source": x(1024)})),
            202,
            "",
        ),
        structured(
            "id of 1024 bytes",
            event(&format!("ok{}", x(1022)), json!({})),
            202,
            "",
        ),
        structured(
            "subject of 4096 bytes",
            event("ok-l5", json!({"subject": x(4096)})),
            202,
            "",
        ),
        structured(
            "attribute name of 1024 bytes",
            event("ok-l7", json!({x(1024): "v"})),
            202,
            "",
        ),
        structured(
            "1e999",
            event("ok-n1", json!({"data": number("1e999")})),
            202,
            "",
        ),
        structured(
            "1000 digits",
            event("ok-n2", json!({"data": number(&digits(1000))})),
            202,
            "",
        ),
        structured(
            "1e-1000",
            event("ok-n3", json!({"data": number("1e-1000")})),
            202,
            "",
        ),
        structured(
            "0.5e-999",
            event("ok-n4", json!({"data": number("0.5e-999")})),
            202,
            "",
        ),
        structured(
            "-1E+999",
            event("ok-n5", json!({"data": number("-1E+999")})),
            202,
            "",
        ),
        structured(
            "100 kB of data",
            event("ok-d1", json!({"data": x(100_000)})),
            202,
            "",
        ),
        structured(
            "unicode and control characters",
            event(
                "ok-d2",
                json!({"data": {"ü😀\u{1}": "\u{1f}\u{7f}\u{feff}\u{ffff}\u{10ffff}\u{2028}"},
                                  "subject": "ü😀\u{1}"}),
            ),
            202,
            "",
        ),
        // A type of 1024 bytes passes the door, and has no route.
        Probe {
            code: "unrouted_event",
            ..structured(
                "type of 1024 bytes",
                event("l8", json!({"type": x(1024)})),
                422,
                "no route handles events of type",
            )
        },
        // Binary mode: ce-* headers, percent-decoded.
        binary(
            "binary: nul in source",
            with(ce("/s", "b1"), "ce-source", "%00x"),
            b"{}",
            422,
            "invalid_event",
            &format!("`source` {nul}"),
        ),
        binary(
            "binary: nul in extension",
            with(ce("/s", "b2"), "ce-myext", "a%00b"),
            b"{}",
            422,
            "invalid_event",
            &format!("`myext` {nul}"),
        ),
        binary(
            "binary: nul in data",
            ce("/s", "b3"),
            br#"{"k": "\u0000"}"#,
            422,
            "invalid_event",
            &format!("`data/k` {nul}"),
        ),
        binary(
            "binary: id of 1025 bytes",
            ce("/s", &x(1025)),
            b"{}",
            422,
            "invalid_event",
            "`id` is 1025 bytes long; the limit is 1024",
        ),
        binary(
            "binary: encoded id of 1026 bytes",
            ce("/s", &"%C3%BC".repeat(513)),
            b"{}",
            422,
            "invalid_event",
            "`id` is 1026 bytes long; the limit is 1024",
        ),
        binary(
            "binary: subject of 4097 bytes",
            with(ce("/s", "b6"), "ce-subject", &x(4097)),
            b"{}",
            422,
            "invalid_event",
            "`subject` is 4097 bytes long; the limit is 4096",
        ),
        binary(
            "binary: content type of 4110 bytes",
            with(
                ce("/s", "b7"),
                "content-type",
                &format!("application/json; p={}", x(4090)),
            ),
            b"{}",
            422,
            "invalid_event",
            "`datacontenttype` is 4110 bytes long; the limit is 4096",
        ),
        binary(
            "binary: 1e5000 as data",
            ce("/s", "b8"),
            b"1e5000",
            422,
            "invalid_event",
            "`data` is a number of 5001 digits",
        ),
        binary(
            "binary: bad percent-encoding",
            ce("/s", "50%zz"),
            b"{}",
            400,
            "invalid_header",
            "the header ce-id has a `%` at byte 2",
        ),
        binary(
            "binary: not UTF-8 once decoded",
            ce("%FF", "b10"),
            b"{}",
            400,
            "invalid_header",
            "the header ce-source is not UTF-8",
        ),
        binary(
            "binary: accepted",
            ce("/s", "ok-b1"),
            br#"{"k": "v"}"#,
            202,
            "",
            "",
        ),
        // Batches: the bad event is named by its index and nothing is stored.
        batch(
            "batch: nul in event 1",
            vec![
                event("batch-ok-0", json!({})),
                event("x1", json!({"source": "/s\0"})),
            ],
            422,
            &format!("event 1: `source` {nul}"),
        ),
        batch(
            "batch: long id in event 0",
            vec![event(&x(1025), json!({})), event("batch-ok-1", json!({}))],
            422,
            "event 0: `id` is 1025 bytes long",
        ),
        batch(
            "batch: big number in event 2",
            vec![
                event("batch-ok-2", json!({})),
                event("batch-ok-3", json!({})),
                event("x3", json!({"data": [number("1e5000")]})),
            ],
            422,
            "event 2: `data/0` is a number of 5001 digits",
        ),
        batch(
            "batch: nul key in event 1",
            vec![
                event("batch-ok-4", json!({})),
                event("x4", json!({"data": {"\0": 1}})),
            ],
            422,
            "event 1: `data/\\0` has a key",
        ),
        batch(
            "batch: accepted",
            vec![
                event("ok-batch-0", json!({})),
                event("ok-batch-1", json!({})),
            ],
            202,
            "",
        ),
    ]
}

/// (label, status, code, message) of each probe's answer, after checking it.
async fn door_answers(api: &Api, probes: &[Probe]) -> Vec<(String, u16, String, String)> {
    let mut answers = Vec::new();
    for probe in probes {
        let r = api
            .post(probe.body.clone(), &header_refs(&probe.headers))
            .await;
        let code = r.body["error"].as_str().unwrap_or_default().to_string();
        let message = r.body["message"].as_str().unwrap_or_default().to_string();
        assert_eq!(r.status, probe.status, "{}: {:?}", probe.label, r.body);
        if probe.status >= 400 {
            assert_eq!(code, probe.code, "{}: {:?}", probe.label, r.body);
            assert!(
                message.starts_with(&probe.message),
                "{}: the message should start with {:?}: {message:?}",
                probe.label,
                probe.message
            );
        }
        answers.push((probe.label.to_string(), r.status, code, message));
    }
    answers
}

#[tokio::test]
async fn unstorable_events_are_refused_at_the_door_alike_on_every_backend() {
    require!(rabbitmq, postgres);
    let sqlite = Deployment::sqlite();
    let postgres = Deployment::postgres();
    let standalone = Deployment::sqlite();
    let (sqlite_api, postgres_api, standalone_api) =
        tokio::join!(sqlite.api(), postgres.api(), standalone.standalone());
    let probes = door_probes();
    let (on_sqlite, on_postgres, on_standalone) = tokio::join!(
        door_answers(&sqlite_api, &probes),
        door_answers(&postgres_api, &probes),
        door_answers(&standalone_api, &probes),
    );
    for ((a, b), c) in on_sqlite.iter().zip(&on_postgres).zip(&on_standalone) {
        assert_eq!(a, b, "SQLite and PostgreSQL answer differently");
        assert_eq!(
            a, c,
            "the production layout and standalone answer differently"
        );
    }
    let accepted = on_sqlite.iter().filter(|a| a.1 == 202).count();
    // The accepted batch is two tasks.
    for (deployment, api) in [
        (&sqlite, &sqlite_api),
        (&postgres, &postgres_api),
        (&standalone, &standalone_api),
    ] {
        assert_eq!(deployment.task_rows(""), accepted + 1);
        // The valid events of the refused batches were not stored.
        for id in ["batch-ok-0", "batch-ok-1", "batch-ok-2", "batch-ok-4"] {
            let r = api
                .post(event(id, json!({})).to_string(), &[STRUCTURED])
                .await;
            assert_eq!(r.status, 202, "{id}: {:?}", r.body);
        }
        assert_eq!(api.get("/health").await.status, 200);
    }
}

// ---------------------------------------------------------------------------
// 3. Exact numbers, from /receive through a worker to /status.

const EXACT: &str = r#"{"big":12345678901234567890123456789,"frac":0.1000000000000000055511151231257827,"neg":-98765432109876543210987654321}"#;

async fn numbers_keep_every_digit(stack: &Stack) {
    let api = &stack.api;
    // Structured, and the same data in binary mode.
    let text = format!(
        r#"{{"specversion":"1.0","type":"org.ferry.echo","source":"/ferry/hostile","id":"exact-1","data":{EXACT}}}"#
    );
    let structured = api.post(text, &[STRUCTURED]).await;
    assert_eq!(structured.status, 202, "{:?}", structured.body);
    let mut headers = ce("/ferry/hostile", "exact-2");
    headers.push(("content-type".into(), "application/json".into()));
    let binary = api.post(EXACT, &header_refs(&headers)).await;
    assert_eq!(binary.status, 202, "{:?}", binary.body);
    for r in [structured, binary] {
        let id = r.task_id();
        api.wait_for(&id, "succeeded", DONE).await;
        let (status, text) = get_text(api, &format!("/status/{id}")).await;
        assert_eq!(status, 200, "{text}");
        assert!(
            text.contains(&format!(r#""result":{EXACT}"#)),
            "the result lost digits: {text}"
        );
    }
}

layout_tests!(numbers_keep_every_digit:
    Sqlite => exact_numbers_round_trip_sqlite,
    Postgres => exact_numbers_round_trip_postgres,
    Standalone => exact_numbers_round_trip_standalone);

// ---------------------------------------------------------------------------
// 4. Binary mode: bytes, and percent-encoded attributes.

async fn binary_mode_carries_bytes_and_decodes_headers(stack: &Stack) {
    let (deployment, api) = (&stack.deployment, &stack.api);
    // Bytes that are not UTF-8 become `data_base64`.
    let mut headers = ce("/ferry/hostile/bytes", "bytes-1");
    headers.push(("content-type".into(), "application/octet-stream".into()));
    let bytes = vec![0u8, 0xff, 0xfe, 0x80];
    let r = api.post(bytes.clone(), &header_refs(&headers)).await;
    assert_eq!(r.status, 202, "{:?}", r.body);
    let id = r.task_id();
    assert_eq!(r.headers["location"], format!("/status/{id}"));
    let view = api.status(&id).await;
    assert_eq!(view.status, 200, "{:?}", view.body);
    assert_eq!(view.body["source"], "/ferry/hostile/bytes");
    assert_eq!(view.body["event_id"], "bytes-1");
    let stored = stored_event(deployment, "bytes-1");
    assert_eq!(stored["data_base64"], "AP/+gA==", "{stored}");
    assert!(stored.get("data").is_none(), "{stored}");
    assert_eq!(stored["datacontenttype"], "application/octet-stream");
    assert_eq!(stored["specversion"], "1.0");
    // The same bytes again are the same event.
    let again = api.post(bytes, &header_refs(&headers)).await;
    assert_eq!(again.status, 200, "{:?}", again.body);
    assert_eq!(again.task_id(), id);

    // `ce-source: %2Fa%20b%2F%C3%BC` is "/a b/ü": structured then binary,
    // and binary then structured, are one event each.
    let structured = |id: &str| {
        json!({
            "specversion": "1.0", "type": "org.ferry.echo", "source": "/a b/ü", "id": id,
            "datacontenttype": "application/json", "data": {"n": 1, "s": "ü"}
        })
        .to_string()
    };
    let binary = |id: &str| {
        let mut headers = ce("%2Fa%20b%2F%C3%BC", id);
        headers.push(("content-type".into(), "application/json".into()));
        headers
    };
    let data = r#"{"n": 1, "s": "ü"}"#;
    let first = api.post(structured("pct-1"), &[STRUCTURED]).await;
    assert_eq!(first.status, 202, "{:?}", first.body);
    let second = api.post(data, &header_refs(&binary("pct-1"))).await;
    assert_eq!(second.status, 200, "{:?}", second.body);
    assert_eq!(second.task_id(), first.task_id());
    let view = api.status(&first.task_id()).await;
    assert_eq!(view.body["source"], "/a b/ü", "{:?}", view.body);

    let first = api.post(data, &header_refs(&binary("pct-2"))).await;
    assert_eq!(first.status, 202, "{:?}", first.body);
    let second = api.post(structured("pct-2"), &[STRUCTURED]).await;
    assert_eq!(second.status, 200, "{:?}", second.body);
    assert_eq!(second.task_id(), first.task_id());
    assert_eq!(stored_event(deployment, "pct-2")["source"], "/a b/ü");

    // Bad percent-encoding is the header's fault, and named.
    let bad = with(
        ce("/ferry/hostile", "50%zz"),
        "content-type",
        "application/json",
    );
    let r = api.post("{}", &header_refs(&bad)).await;
    r.assert_error(400, "invalid_header");
    assert!(
        r.body["message"].as_str().unwrap().contains("ce-id"),
        "{:?}",
        r.body
    );
    assert_eq!(deployment.task_rows(""), 3);
}

layout_tests!(binary_mode_carries_bytes_and_decodes_headers:
    Sqlite => binary_mode_bytes_and_percent_encoding_sqlite,
    Postgres => binary_mode_bytes_and_percent_encoding_postgres,
    Standalone => binary_mode_bytes_and_percent_encoding_standalone);

/// An `application/octet-stream` body is bytes, whatever they look like:
/// bytes that happen to be valid UTF-8 (NULs included, as in most binary
/// formats) are accepted and kept, like bytes that are not.
#[tokio::test]
async fn octet_stream_bodies_are_accepted_whatever_their_bytes() {
    let deployment = Deployment::sqlite();
    let api = deployment.standalone().await;
    let bodies: [&[u8]; 4] = [b"\0\0\0\x01", b"PK\x03\x04\0\0", b"\0", b"plain text"];
    let mut refused = Vec::new();
    for (i, body) in bodies.iter().enumerate() {
        let event_id = format!("octets-{i}");
        let mut headers = ce("/ferry/hostile/octets", &event_id);
        headers.push(("content-type".into(), "application/octet-stream".into()));
        let r = api.post(body.to_vec(), &header_refs(&headers)).await;
        if r.status != 202 {
            refused.push(format!("{body:?}: {} {}", r.status, r.body));
            continue;
        }
        // The stored event gives the bytes back, as base64 or as text.
        let stored = stored_event(&deployment, &event_id);
        let kept = match (&stored["data_base64"], &stored["data"]) {
            (Value::String(b64), _) => base64_decode(b64),
            (_, Value::String(text)) => text.as_bytes().to_vec(),
            _ => panic!("{stored}"),
        };
        assert_eq!(kept, body.to_vec(), "{stored}");
    }
    assert!(
        refused.is_empty(),
        "octet-stream bodies refused: {refused:#?}"
    );
}

fn base64_decode(text: &str) -> Vec<u8> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut bits = 0u32;
    let mut count = 0;
    let mut out = Vec::new();
    for c in text.bytes().filter(|&c| c != b'=') {
        let value = ALPHABET.iter().position(|&a| a == c).expect("base64") as u32;
        bits = (bits << 6) | value;
        count += 6;
        if count >= 8 {
            count -= 8;
            out.push((bits >> count) as u8);
            bits &= (1 << count) - 1;
        }
    }
    out
}

// ---------------------------------------------------------------------------
// 5. The same (source, id) with other content is a conflict.

async fn conflicting_events_are_refused(stack: &Stack) {
    let (deployment, api) = (&stack.deployment, &stack.api);
    let first = api
        .post(
            event("conflict-1", json!({"data": {"v": 1}})).to_string(),
            &[STRUCTURED],
        )
        .await;
    assert_eq!(first.status, 202, "{:?}", first.body);
    let task = first.task_id();

    // The same content, in another key order and spacing: the same event.
    let same = r#"{ "data" : {"v": 1}, "id": "conflict-1", "source": "/ferry/hostile",
                    "type": "org.ferry.echo", "specversion": "1.0" }"#;
    let r = api.post(same, &[STRUCTURED]).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.task_id(), task);
    assert!(r.body.get("error").is_none(), "{:?}", r.body);

    // Other content: a conflict naming the task that holds the event.
    for other in [
        json!({"data": {"v": 2}}),
        json!({"data": {"v": 1}, "subject": "new"}),
        json!({"data": {"v": 1}, "type": "org.ferry.count"}),
    ] {
        let r = api
            .post(
                event("conflict-1", other.clone()).to_string(),
                &[STRUCTURED],
            )
            .await;
        r.assert_error(409, "event_conflict");
        assert_eq!(r.body["task"], task.as_str(), "{other}: {:?}", r.body);
        assert_eq!(r.body["status_url"], format!("/status/{task}"));
    }
    // The stored task is unchanged.
    assert_eq!(deployment.task_rows("WHERE event_id = 'conflict-1'"), 1);
    let stored = stored_event(deployment, "conflict-1");
    assert_eq!(stored["data"], json!({"v": 1}), "{stored}");
    assert!(stored.get("subject").is_none(), "{stored}");
    let view = api.status(&task).await;
    assert_eq!(view.status, 200, "{:?}", view.body);
    assert_eq!(view.body["type"], "org.ferry.echo");

    // A batch with one conflicting event: 409, with every event's task; the
    // others are stored.
    let body = Value::Array(vec![
        event("conflict-new-a", json!({})),
        event("conflict-1", json!({"data": {"v": 3}})),
        event("conflict-new-b", json!({})),
    ])
    .to_string();
    let r = api.post(body, &[BATCH]).await;
    r.assert_error(409, "event_conflict");
    assert_eq!(r.body["task"], task.as_str(), "{:?}", r.body);
    let tasks = r.body["tasks"].as_array().expect("tasks").clone();
    assert_eq!(tasks.len(), 3, "{:?}", r.body);
    assert_eq!(tasks[1]["id"], task.as_str());
    assert_eq!(tasks[1]["error"], "event_conflict");
    for (i, event_id) in [(0, "conflict-new-a"), (2, "conflict-new-b")] {
        let id = tasks[i]["id"].as_str().unwrap();
        assert_ne!(id, task);
        assert!(tasks[i].get("error").is_none(), "{:?}", tasks[i]);
        let view = api.status(id).await;
        assert_eq!(view.status, 200, "{:?}", view.body);
        assert_eq!(view.body["event_id"], event_id);
        // Stored: sent again alone, it is the same task.
        let again = api
            .post(event(event_id, json!({})).to_string(), &[STRUCTURED])
            .await;
        assert_eq!(again.status, 200, "{:?}", again.body);
        assert_eq!(again.task_id(), id);
    }
    assert_eq!(
        stored_event(deployment, "conflict-1")["data"],
        json!({"v": 1})
    );
    assert_eq!(deployment.task_rows(""), 3);
}

layout_tests!(conflicting_events_are_refused:
    Sqlite => event_conflicts_sqlite,
    Postgres => event_conflicts_postgres,
    Standalone => event_conflicts_standalone);

// ---------------------------------------------------------------------------
// 6. Random requests: never a 5xx, always a JSON error, and still serving.

/// One random `/receive` request.
#[derive(Clone)]
struct FuzzRequest {
    content_type: Option<String>,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl std::fmt::Debug for FuzzRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FuzzRequest")
            .field("content_type", &self.content_type)
            .field("headers", &self.headers)
            .field("body", &String::from_utf8_lossy(&self.body))
            .field("body_bytes", &self.body.len())
            .finish()
    }
}

fn odd_numbers() -> Vec<String> {
    let mut numbers: Vec<String> = [
        "0",
        "-0",
        "1e5000",
        "1e999",
        "1e1000",
        "-1e-1000",
        "1e-1001",
        "0.5e-999",
        "1E+400",
        "0e100000",
        "1e999999999999999999999",
        "1e-999999999999999999999",
        "1e+0999",
        "0.1000000000000000055511151231257827",
        "12345678901234567890123456789",
        "-9223372036854775809",
        "18446744073709551616",
        "1.7976931348623157e309",
        "4.9e-325",
        "1.0",
        "1.50",
        "0.0e-1000",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    numbers.push(format!("1{}", "0".repeat(999)));
    numbers.push(format!("-1{}", "0".repeat(1000)));
    numbers.push(format!("0.{}1", "0".repeat(998)));
    numbers
}

/// Any character, with NULs, controls and odd code points favoured.
fn fuzz_char() -> BoxedStrategy<char> {
    prop_oneof![
        4 => any::<char>(),
        3 => proptest::char::range('a', 'z'),
        1 => Just('\0'),
        1 => proptest::char::range('\u{1}', '\u{1f}'),
        1 => prop::sample::select(vec![
            '%', '"', '\\', '/', 'ü', '😀', '\u{7f}', '\u{feff}', '\u{fffe}', '\u{ffff}',
            '\u{10ffff}', '\u{2028}', '\u{d7ff}', '\u{e000}',
        ]),
    ]
    .boxed()
}

/// Strings: mostly storable (so events get through the door), some with
/// NULs and controls, some at or past the length limits.
fn fuzz_string() -> BoxedStrategy<String> {
    let storable = prop_oneof![
        1 => any::<char>().prop_filter("no NUL", |c| *c != '\0'),
        2 => proptest::char::range('a', 'z'),
    ];
    prop_oneof![
        8 => prop::collection::vec(storable, 0..16).prop_map(|c| c.into_iter().collect()),
        3 => prop::collection::vec(fuzz_char(), 0..16).prop_map(|c| c.into_iter().collect()),
        1 => (
            prop::sample::select(vec![1023usize, 1024, 1025, 4096, 4097, 70_000]),
            fuzz_char(),
        )
            .prop_map(|(n, c)| std::iter::repeat_n(c, n).collect()),
    ]
    .boxed()
}

fn fuzz_value() -> BoxedStrategy<Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        prop::sample::select(odd_numbers()).prop_map(|n| number(&n)),
        fuzz_string().prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec((fuzz_string(), inner), 0..6)
                .prop_map(|kv| Value::Object(kv.into_iter().collect())),
        ]
    })
    .boxed()
}

fn fuzz_event() -> BoxedStrategy<Value> {
    (
        prop_oneof![
            6 => Just("1.0"),
            1 => prop::sample::select(vec!["1.x", "0.3", "2.0", ""]),
        ],
        prop_oneof![3 => Just("org.ferry.echo".to_string()), 1 => fuzz_string()],
        prop_oneof![2 => Just("/fuzz".to_string()), 1 => fuzz_string()],
        prop_oneof![
            1 => prop::sample::select(vec!["a", "b", "c"]).prop_map(String::from),
            2 => fuzz_string(),
        ],
        prop::option::of(fuzz_value()),
        prop::collection::vec((fuzz_string(), fuzz_value()), 0..4),
        0..16u8,
    )
        .prop_map(|(spec, event_type, source, id, data, extra, shape)| {
            let mut m: Map<String, Value> = extra.into_iter().collect();
            m.insert("specversion".into(), spec.into());
            m.insert("type".into(), event_type.into());
            m.insert("source".into(), source.into());
            m.insert("id".into(), id.into());
            if let Some(data) = data {
                m.insert("data".into(), data);
            }
            match shape {
                0 => {
                    m.remove("specversion");
                }
                1 => {
                    m.remove("type");
                }
                2 => {
                    m.remove("source");
                }
                3 => {
                    m.remove("id");
                }
                4 | 5 => {
                    // CloudEvents 0.1, as pacifica sends them.
                    m.remove("specversion");
                    m.insert("cloudEventsVersion".into(), "0.1".into());
                    let t = m.remove("type").unwrap();
                    m.insert("eventType".into(), t);
                    let id = m.remove("id").unwrap();
                    m.insert("eventID".into(), id);
                }
                _ => {}
            }
            Value::Object(m)
        })
        .boxed()
}

/// JSON text that serde_json's `Value` cannot produce, or that is not JSON.
fn odd_fragment() -> BoxedStrategy<String> {
    let texts: Vec<String> = [
        r#""\ud800""#,
        r#""\udc00\ud800""#,
        r#""\ud83d\ude00""#,
        r#""\u0000""#,
        r#""a\u0000b""#,
        r#"{"\u0000":1}"#,
        r#""\x""#,
        "NaN",
        "Infinity",
        "01",
        "1.",
        "+1",
        ".5",
        "-",
        "1e",
        "tru",
        "[1,]",
        r#"{"a" 1}"#,
        "\u{feff}{}",
        r#""\/\b\f\n\r\t""#,
        r#"{"a":1,"a":2}"#,
        "",
        " ",
        "\"\u{1}\"",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    prop_oneof![
        prop::sample::select(odd_numbers()),
        prop::sample::select(vec![10usize, 126, 127, 128, 129, 3000]).prop_map(|d| format!(
            "{}{}",
            "[".repeat(d),
            "]".repeat(d)
        )),
        prop::sample::select(vec![10usize, 126, 127, 200]).prop_map(|d| format!(
            "{}1{}",
            r#"{"a":"#.repeat(d),
            "}".repeat(d)
        )),
        prop::sample::select(texts),
    ]
    .boxed()
}

fn fuzz_body() -> BoxedStrategy<Vec<u8>> {
    prop_oneof![
        2 => prop::collection::vec(any::<u8>(), 0..256),
        4 => fuzz_event().prop_map(|e| e.to_string().into_bytes()),
        2 => prop::collection::vec(fuzz_event(), 0..4)
            .prop_map(|events| Value::Array(events).to_string().into_bytes()),
        2 => (odd_fragment(), fuzz_string()).prop_map(|(fragment, id)| {
            format!(
                r#"{{"specversion":"1.0","type":"org.ferry.echo","source":"/fuzz/raw","id":{},"data":{fragment}}}"#,
                Value::String(id)
            )
            .into_bytes()
        }),
        1 => fuzz_value().prop_map(|v| v.to_string().into_bytes()),
        1 => odd_fragment().prop_map(String::into_bytes),
    ]
    .boxed()
}

/// A header value reqwest can send: visible ASCII and spaces, with `%`
/// sequences that decode to good and bad bytes.
fn header_value() -> BoxedStrategy<String> {
    let piece = prop_oneof![
        4 => proptest::char::range(' ', '~').prop_map(String::from),
        1 => prop::sample::select(vec![
            "%00", "%20", "%2F", "%C3%BC", "%FF", "%zz", "%", "%4", "%%", "%25", "%c3",
            "%E2%82%AC", "%F0%9F%98%80", "%ED%A0%80",
        ])
        .prop_map(String::from),
    ];
    let plain = proptest::char::range(' ', '~').prop_filter("no %", |c| *c != '%');
    prop_oneof![
        4 => prop::collection::vec(plain, 0..24).prop_map(|c| c.into_iter().collect()),
        2 => prop::collection::vec(piece, 0..12).prop_map(|parts| parts.concat()),
        1 => prop::sample::select(vec![1024usize, 1025, 4096, 4097]).prop_map(|n| "v".repeat(n)),
        3 => prop::sample::select(vec!["1.0", "org.ferry.echo", "/fuzz", "a"]).prop_map(String::from),
    ]
    .boxed()
}

fn header_name() -> BoxedStrategy<String> {
    let token = prop::sample::select(
        "abcdefghijklmnopqrstuvwxyz0123456789-_"
            .chars()
            .collect::<Vec<_>>(),
    );
    prop_oneof![
        3 => prop::sample::select(vec![
            "specversion", "type", "source", "id", "subject", "time", "dataschema",
            "datacontenttype", "data", "data_base64", "SpecVersion",
        ])
        .prop_map(String::from),
        1 => prop::collection::vec(token, 0..12).prop_map(|c| c.into_iter().collect()),
    ]
    .prop_map(|name| format!("ce-{name}"))
    .boxed()
}

fn content_type() -> BoxedStrategy<Option<String>> {
    prop_oneof![
        6 => prop::sample::select(vec![
            "application/json", "application/cloudevents+json",
            "application/cloudevents-batch+json", "application/json; charset=utf-8",
            "APPLICATION/CLOUDEVENTS+JSON",
        ])
        .prop_map(|t| Some(t.to_string())),
        3 => prop::sample::select(vec![
            "text/plain", "application/octet-stream", "application/ld+json", "text/json",
            "multipart/form-data; boundary=x", "application/x-www-form-urlencoded",
        ])
        .prop_map(|t| Some(t.to_string())),
        1 => Just(None),
        1 => prop::collection::vec(proptest::char::range(' ', '~'), 0..40)
            .prop_map(|c| Some(c.into_iter().collect())),
    ]
    .boxed()
}

fn fuzz_request() -> BoxedStrategy<FuzzRequest> {
    (
        content_type(),
        // Often a routed binary-mode event, so some requests get stored.
        prop::bool::weighted(0.3),
        prop::collection::vec(proptest::char::range('!', '~'), 1..12),
        prop::collection::vec((header_name(), header_value()), 0..4),
        fuzz_body(),
    )
        .prop_map(|(content_type, routed, id, random_headers, body)| {
            let mut headers = Vec::new();
            if routed {
                headers.extend(ce("/fuzz/binary", &id.into_iter().collect::<String>()));
            }
            headers.extend(random_headers);
            FuzzRequest {
                content_type,
                headers,
                body,
            }
        })
        .boxed()
}

/// Sends one request; an error describes what was wrong with the answer.
/// Returns the status and the error code.
async fn check_answer(api: &Api, request: &FuzzRequest) -> Result<(u16, String), String> {
    let mut builder = api
        .client
        .post(format!("{}/receive", api.base))
        .timeout(Duration::from_secs(30))
        .body(request.body.clone());
    if let Some(content_type) = &request.content_type {
        builder = builder.header("content-type", content_type);
    }
    for (name, value) in &request.headers {
        builder = builder.header(name, value);
    }
    let response = builder
        .send()
        .await
        .map_err(|e| format!("no answer: {e:?}"))?;
    let status = response.status().as_u16();
    let text = response
        .text()
        .await
        .map_err(|e| format!("status {status}, unreadable body: {e}"))?;
    if status >= 500 {
        return Err(format!("status {status}: {text}"));
    }
    let body: Value = serde_json::from_str(&text)
        .map_err(|e| format!("status {status}: the body is not JSON ({e}): {text:?}"))?;
    if status >= 400 {
        let named = |key: &str| body[key].as_str().is_some_and(|s| !s.is_empty());
        if !named("error") || !named("message") {
            return Err(format!("status {status}: no `error` and `message`: {text}"));
        }
    } else if !(body["id"].is_string() || body["tasks"].is_array()) {
        return Err(format!("status {status}: no task in the answer: {text}"));
    }
    let health = api
        .client
        .get(format!("{}/health", api.base))
        .send()
        .await
        .map_err(|e| format!("after a {status}, /health did not answer: {e}"))?;
    if health.status() != 200 {
        return Err(format!("after a {status}, /health is {}", health.status()));
    }
    Ok((
        status,
        body["error"].as_str().unwrap_or_default().to_string(),
    ))
}

/// 200 random requests to one API: none gets a 5xx or a non-JSON error.
fn fuzz_receive(deployment: Deployment) {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let api = runtime.block_on(deployment.api());
    // PROPTEST_CASES=5000 for a longer search by hand.
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let config = ProptestConfig {
        cases,
        max_shrink_iters: 400,
        failure_persistence: None,
        ..ProptestConfig::default()
    };
    let mut runner = TestRunner::new(config);
    let answers = std::sync::Mutex::new(std::collections::BTreeMap::new());
    let result = runner.run(&fuzz_request(), |request| {
        let answer = runtime
            .block_on(check_answer(&api, &request))
            .map_err(TestCaseError::fail)?;
        *answers.lock().unwrap().entry(answer).or_insert(0) += 1;
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
    let answers = answers.into_inner().unwrap();
    eprintln!("answers (status, error): {answers:?}");
    // The requests reached every part of /receive: some were stored, some
    // refused at the door.
    assert!(
        answers.keys().any(|(status, _)| *status == 202),
        "{answers:?}"
    );
    assert!(
        answers.keys().any(|(_, code)| code == "invalid_event"),
        "{answers:?}"
    );
    let health = runtime.block_on(api.get("/health"));
    assert_eq!(health.status, 200, "{:?}", health.body);
}

#[test]
fn random_requests_never_get_a_5xx_sqlite() {
    require!(rabbitmq);
    fuzz_receive(Deployment::sqlite());
}

#[test]
fn random_requests_never_get_a_5xx_postgres() {
    require!(rabbitmq, postgres);
    fuzz_receive(Deployment::postgres());
}
