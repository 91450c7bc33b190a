//! Test support: real `ferry-api` and `ferry-worker` processes against the
//! loopback RabbitMQ and PostgreSQL (or SQLite), each test with its own
//! queue, its own PostgreSQL schema and its own files.

#![allow(dead_code)]

use std::io::Write;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use diesel::connection::SimpleConnection;
use diesel::{Connection, PgConnection};
use serde_json::Value;

pub const RABBITMQ: &str = "127.0.0.1:5672";
pub const POSTGRES: &str = "127.0.0.1:5432";
pub const POSTGRES_URL: &str = "postgres://postgres@127.0.0.1:5432/test";
pub const BROKER_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// The repository root (handlers/ and test_files/ live there).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// Reads a file under test_files/.
pub fn test_file(path: &str) -> Vec<u8> {
    std::fs::read(repo_root().join("test_files").join(path)).unwrap()
}

/// Whether a service answers; if not, the test fails under CI and is
/// skipped (returns false) elsewhere.
pub fn require(name: &str, addr: &str) -> bool {
    let addr: SocketAddr = addr.parse().unwrap();
    if TcpStream::connect_timeout(&addr, Duration::from_secs(2)).is_ok() {
        return true;
    }
    let ci = std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false" && v != "0");
    assert!(
        !ci,
        "{name} is not reachable at {addr}, and CI is set: failing instead of skipping"
    );
    eprintln!("SKIPPED: {name} is not reachable at {addr} (set CI=true to make this a failure)");
    false
}

/// `require!(rabbitmq, postgres)`: returns from the test when skipping.
#[macro_export]
macro_rules! require {
    ($($service:ident),+) => {
        $( if !common::require(stringify!($service), $crate::common::addr_of(stringify!($service))) { return; } )+
    };
}

pub fn addr_of(service: &str) -> &'static str {
    match service {
        "rabbitmq" => RABBITMQ,
        "postgres" => POSTGRES,
        other => panic!("unknown service {other}"),
    }
}

/// A binary of this workspace, built by `cargo nextest run --workspace`
/// (`ferry-worker` is built for the worker package's own integration tests).
pub fn bin(name: &str) -> PathBuf {
    let path = Path::new(env!("CARGO_BIN_EXE_ferry-api")).with_file_name(name);
    assert!(
        path.exists(),
        "{} is missing: run the tests with `cargo nextest run --workspace` (or `cargo build --bins` first)",
        path.display()
    );
    path
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn unique(prefix: &str) -> String {
    format!("{prefix}_{}", uuid::Uuid::new_v4().simple())
}

/// A PostgreSQL schema of its own, dropped at the end of the test.
#[derive(Debug)]
pub struct PgSchema {
    pub name: String,
}

impl PgSchema {
    pub fn new() -> Self {
        let name = unique("ferry_test");
        let mut conn = PgConnection::establish(POSTGRES_URL).expect("connect to PostgreSQL");
        conn.batch_execute(&format!("CREATE SCHEMA {name}"))
            .unwrap();
        Self { name }
    }

    /// A URL whose connections use only this schema.
    pub fn url(&self) -> String {
        format!("{POSTGRES_URL}?options=-csearch_path%3D{}", self.name)
    }

    /// Runs SQL in this schema.
    pub fn execute(&self, sql: &str) {
        let mut conn = PgConnection::establish(&self.url()).unwrap();
        conn.batch_execute(sql).unwrap();
    }
}

impl Drop for PgSchema {
    fn drop(&mut self) {
        if let Ok(mut conn) = PgConnection::establish(POSTGRES_URL) {
            let _ = conn.batch_execute(&format!("DROP SCHEMA IF EXISTS {} CASCADE", self.name));
        }
    }
}

/// A running Ferry process, killed when dropped; its log is printed if the
/// test failed.
#[derive(Debug)]
pub struct Proc {
    pub child: Child,
    pub name: String,
    pub log: PathBuf,
}

impl Proc {
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Sends a signal (e.g. "TERM", "KILL").
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([format!("-{signal}"), self.pid().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Waits for the process to exit, at most `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!(
                "----- {} log ({}) -----\n{}",
                self.name,
                self.log.display(),
                self.log_text()
            );
        }
    }
}

/// A test's own Ferry deployment: a database, a queue, a config and files.
#[derive(Debug)]
pub struct Deployment {
    pub dir: tempfile::TempDir,
    pub database_url: String,
    pub queue: String,
    pub config: PathBuf,
    pub pg: Option<PgSchema>,
    pub extra_env: Vec<(String, String)>,
}

impl Deployment {
    /// SQLite in the test's own directory.
    pub fn sqlite() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let database_url = format!("sqlite://{}", dir.path().join("ferry.db").display());
        Self::with(dir, database_url, None)
    }

    /// PostgreSQL in a schema of the test's own.
    pub fn postgres() -> Self {
        let schema = PgSchema::new();
        Self::with(tempfile::tempdir().unwrap(), schema.url(), Some(schema))
    }

    fn with(dir: tempfile::TempDir, database_url: String, pg: Option<PgSchema>) -> Self {
        let runs = dir.path().join("runs.log");
        let config = dir.path().join("server.conf");
        let mut file = std::fs::File::create(&config).unwrap();
        write!(
            file,
            r#"
relay_interval = "200ms"

[[routes]]
type = "org.pacifica.metadata.ingest"
handler = "exec"
command = ["python3", "handlers/ingest.py"]
timeout = "1m"

[[routes]]
type = "org.ferry.echo"
handler = "echo"

[[routes]]
type = "org.ferry.sleep"
handler = "sleep"
duration = "3s"

[[routes]]
type = "org.ferry.fail"
handler = "fail"
max_attempts = 3
retry_backoff = "200ms"

# Counts every run of a task: one line per run, appended atomically.
[[routes]]
type = "org.ferry.count"
handler = "exec"
command = ["sh", "-c", "cat >/dev/null; echo \"$FERRY_TASK_ID $FERRY_ATTEMPT\" >> '{runs}'; echo '{{\"counted\": true}}'"]

# Counts its run, then prints an output its event asks for, storable or not.
[[routes]]
type = "org.ferry.count-output"
handler = "exec"
command = ["python3", "api/tests/fixtures/count_output.py", '{runs}']

# Counts its run, then takes longer than the consumer timeout the fault test sets.
[[routes]]
type = "org.ferry.slow-count"
handler = "exec"
command = ["sh", "-c", "cat >/dev/null; echo \"$FERRY_TASK_ID $FERRY_ATTEMPT\" >> '{runs}'; sleep 8; echo '{{}}'"]
"#,
            runs = runs.display()
        )
        .unwrap();
        Self {
            dir,
            database_url,
            queue: unique("ferry.test"),
            config,
            pg,
            extra_env: Vec::new(),
        }
    }

    /// The same deployment (database, queue, files) seen by processes that
    /// also get `key=value`; the copy does not own (or drop) the schema.
    pub fn clone_env(&self, key: &str, value: &str) -> DeploymentView<'_> {
        DeploymentView {
            base: self,
            key: key.into(),
            value: value.into(),
        }
    }

    /// Sets an environment variable for every process started after this.
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.extra_env.push((key.into(), value.into()));
        self
    }

    /// Lines the counting handler wrote: `(task id, attempt)` per run.
    pub fn runs(&self) -> Vec<(String, String)> {
        std::fs::read_to_string(self.dir.path().join("runs.log"))
            .unwrap_or_default()
            .lines()
            .map(|l| {
                let (id, attempt) = l.split_once(' ').unwrap();
                (id.to_string(), attempt.to_string())
            })
            .collect()
    }

    fn spawn(&self, binary: &str, args: &[&str], name: &str, port: Option<u16>) -> Proc {
        self.spawn_with(binary, args, name, port, &[])
    }

    fn spawn_with(
        &self,
        binary: &str,
        args: &[&str],
        name: &str,
        port: Option<u16>,
        more_env: &[(&str, &str)],
    ) -> Proc {
        let log = self.dir.path().join(format!("{name}.log"));
        let out = std::fs::File::create(&log).unwrap();
        let mut command = Command::new(bin(binary));
        command
            .args(["--config", self.config.to_str().unwrap()])
            .args(args)
            .current_dir(repo_root())
            .env("FERRY_DATABASE_URL", &self.database_url)
            .env("FERRY_BROKER_URL", BROKER_URL)
            .env("FERRY_QUEUE", &self.queue)
            .env("FERRY_CONCURRENCY", "4")
            .env("RUST_LOG", "info,ferry_worker=debug")
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out);
        if let Some(port) = port {
            command.env("FERRY_PORT", port.to_string());
        }
        for (k, v) in &self.extra_env {
            command.env(k, v);
        }
        for (k, v) in more_env {
            command.env(k, v);
        }
        Proc {
            child: command.spawn().unwrap(),
            name: name.into(),
            log,
        }
    }

    /// Starts `ferry-api` (production layout) and waits until it serves.
    pub async fn api(&self) -> Api {
        self.start_api(&[]).await
    }

    /// Starts `ferry-api --standalone` and waits until it serves.
    pub async fn standalone(&self) -> Api {
        self.start_api(&["--standalone"]).await
    }

    async fn start_api(&self, args: &[&str]) -> Api {
        self.start_api_with(args, &[]).await
    }

    async fn start_api_with(&self, args: &[&str], env: &[(&str, &str)]) -> Api {
        let port = free_port();
        let name = format!("api-{port}");
        let proc = self.spawn_with("ferry-api", args, &name, Some(port), env);
        let api = Api {
            base: format!("http://127.0.0.1:{port}"),
            client: reqwest::Client::new(),
            proc,
        };
        api.wait_ready().await;
        api
    }

    /// Starts a `ferry-worker` replica.
    pub fn worker(&self, name: &str) -> Proc {
        self.spawn("ferry-worker", &[], name, None)
    }
}

/// A deployment whose processes get one more environment variable.
#[derive(Debug)]
pub struct DeploymentView<'a> {
    base: &'a Deployment,
    key: String,
    value: String,
}

impl DeploymentView<'_> {
    /// Starts `ferry-api` with the extra variable.
    pub async fn api(&self) -> Api {
        self.base
            .start_api_with(&[], &[(&self.key, &self.value)])
            .await
    }
}

/// A running API and a client for it.
#[derive(Debug)]
pub struct Api {
    pub base: String,
    pub client: reqwest::Client,
    pub proc: Proc,
}

/// A response: status, headers and JSON body.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: Value,
}

impl Api {
    async fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(r) = self
                .client
                .get(format!("{}/health", self.base))
                .send()
                .await
            {
                if r.status().is_success() {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "ferry-api did not become ready:\n{}",
                self.proc.log_text()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// POSTs a body to /receive with the given headers.
    pub async fn post(&self, body: impl Into<reqwest::Body>, headers: &[(&str, &str)]) -> Reply {
        let mut request = self
            .client
            .post(format!("{}/receive", self.base))
            .body(body);
        for (k, v) in headers {
            request = request.header(*k, *v);
        }
        reply(request.send().await.unwrap()).await
    }

    /// POSTs a test file as `application/json` and returns the reply.
    pub async fn post_file(&self, path: &str) -> Reply {
        self.post(test_file(path), &[("content-type", "application/json")])
            .await
    }

    /// POSTs a CloudEvents 1.0 event built from its parts; expects a 202.
    pub async fn submit(&self, event_type: &str, id: &str, data: Value) -> String {
        let event = serde_json::json!({
            "specversion": "1.0", "type": event_type, "source": "/ferry/tests", "id": id, "data": data
        });
        let r = self
            .post(
                event.to_string(),
                &[("content-type", "application/cloudevents+json")],
            )
            .await;
        assert_eq!(r.status, 202, "{:?}", r.body);
        r.body["id"].as_str().unwrap().to_string()
    }

    pub async fn get(&self, path: &str) -> Reply {
        reply(
            self.client
                .get(format!("{}{path}", self.base))
                .send()
                .await
                .unwrap(),
        )
        .await
    }

    pub async fn status(&self, id: &str) -> Reply {
        self.get(&format!("/status/{id}")).await
    }

    /// Polls /status until the task is in `status`; fails on another final
    /// status or after `timeout`.
    pub async fn wait_for(&self, id: &str, status: &str, timeout: Duration) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let r = self.status(id).await;
            assert_eq!(r.status, 200, "{:?}", r.body);
            let now = r.body["status"].as_str().unwrap().to_string();
            if now == status {
                return r.body;
            }
            let is_final = matches!(now.as_str(), "succeeded" | "failed" | "cancelled");
            assert!(
                !is_final,
                "task {id} ended {now}, expected {status}: {:#}",
                r.body
            );
            assert!(
                Instant::now() < deadline,
                "task {id} still {now} after {timeout:?}: {:#}",
                r.body
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
}

async fn reply(response: reqwest::Response) -> Reply {
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let text = response.text().await.unwrap();
    let body = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("status {status}: body is not JSON ({e}): {text:?}"));
    Reply {
        status,
        headers,
        body,
    }
}
