//! A Ferry deployment of a test's (or a bench run's) own: a database, a
//! queue, a config and a directory, and the processes started on them.

use std::collections::HashMap;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use diesel::connection::SimpleConnection;
use diesel::{Connection, QueryableByName, RunQueryDsl, SqliteConnection};

use crate::services::{self, broker_url, postgres_url};
use crate::{Api, PgSchema, Proc};

/// The routes the tests use; `{runs}` is the deployment's runs log.
const TEST_CONFIG: &str = r#"
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

# A task that holds its worker's slot for a long while.
[[routes]]
type = "org.ferry.sleep-30s"
handler = "sleep"
duration = "30s"

# A task a waiter can wait on: done about a second after it starts.
[[routes]]
type = "org.ferry.sleep-1s"
handler = "sleep"
duration = "1s"

# Runs 300ms, fails its first attempt (retryable: exit 75) and succeeds on
# the next: pending, running, retrying, running, succeeded.
[[routes]]
type = "org.ferry.flaky"
handler = "exec"
command = ["sh", "-c", "cat >/dev/null; sleep 0.3; [ \"$FERRY_ATTEMPT\" -gt 1 ] || exit 75; echo '{\"attempt\": '$FERRY_ATTEMPT'}'"]
retry_backoff = "300ms"

# The same, each attempt running 1.5s: long enough to reconnect in between.
[[routes]]
type = "org.ferry.flaky-slow"
handler = "exec"
command = ["sh", "-c", "cat >/dev/null; sleep 1.5; [ \"$FERRY_ATTEMPT\" -gt 1 ] || exit 75; echo '{\"attempt\": '$FERRY_ATTEMPT'}'"]
retry_backoff = "500ms"

[[routes]]
type = "org.ferry.fail"
handler = "fail"
max_attempts = 3
retry_backoff = "200ms"

# Counts every run of a task: one line per run, appended atomically.
[[routes]]
type = "org.ferry.count"
handler = "exec"
command = ["sh", "-c", "cat >/dev/null; echo \"$FERRY_TASK_ID $FERRY_ATTEMPT\" >> '{runs}'; echo '{\"counted\": true}'"]

# Counts its run, then prints an output its event asks for, storable or not.
[[routes]]
type = "org.ferry.count-output"
handler = "exec"
command = ["python3", "testkit/fixtures/count_output.py", '{runs}']

# Counts its run, then takes longer than the consumer timeout the fault test sets.
[[routes]]
type = "org.ferry.slow-count"
handler = "exec"
command = ["sh", "-c", "cat >/dev/null; echo \"$FERRY_TASK_ID $FERRY_ATTEMPT\" >> '{runs}'; sleep 8; echo '{}'"]

# Counts its run, starts a grandchild, writes both pids, and runs until killed
# (Deployment::hang_pids reads the pids).
[[routes]]
type = "org.ferry.hang"
handler = "exec"
command = ["sh", "testkit/fixtures/hang.sh", '{runs}']
timeout = "5m"

# Counts its run and waits until the test opens the gate
# (Deployment::open_gate); its result says how many other gate commands were
# running when it started.
[[routes]]
type = "org.ferry.gate"
handler = "exec"
command = ["sh", "testkit/fixtures/gate.sh", '{runs}']
timeout = "5m"
"#;

/// Where a deployment keeps its tasks.
#[derive(Debug, Clone)]
pub enum Database {
    /// An SQLite file in the deployment's directory.
    Sqlite,
    /// A schema of its own in the PostgreSQL database at this URL.
    Postgres(String),
}

/// A Ferry deployment: a database, a queue, a config and files. Processes
/// started from it share them. When dropped, its RabbitMQ queue and the
/// queue's `.dead` twin are deleted, then its schema and its files (drop the
/// processes first: locals drop in the reverse order of their creation).
#[derive(Debug)]
pub struct Deployment {
    /// The database processes are given (`FERRY_DATABASE_URL`).
    pub database_url: String,
    /// The queue (`FERRY_QUEUE`).
    pub queue: String,
    /// RabbitMQ (`FERRY_BROKER_URL`).
    pub broker_url: String,
    /// The config file (`--config`).
    pub config: PathBuf,
    /// The PostgreSQL schema, on PostgreSQL.
    pub pg: Option<PgSchema>,
    /// Environment every process started from here gets.
    pub env: Vec<(String, String)>,
    /// Where the binaries are.
    pub bins: PathBuf,
    /// Logs, the runs log, the SQLite file and the config.
    pub dir: tempfile::TempDir,
}

impl Deployment {
    /// A deployment with an empty config; `name` goes into its queue's and
    /// schema's names (`ferry.<name>_…`, `ferry_<name>_…`).
    pub fn new(database: Database, name: &str) -> Self {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let (database_url, pg) = match database {
            Database::Sqlite => (
                format!("sqlite://{}", dir.path().join("ferry.db").display()),
                None,
            ),
            Database::Postgres(admin_url) => {
                let schema = PgSchema::create_in(&admin_url, &format!("ferry_{name}"));
                (schema.url(), Some(schema))
            }
        };
        let config = dir.path().join("server.conf");
        std::fs::write(&config, "").expect("write the config");
        Self {
            database_url,
            queue: crate::unique(&format!("ferry.{name}")),
            broker_url: broker_url(),
            config,
            pg,
            env: Vec::new(),
            bins: crate::bin_dir(),
            dir,
        }
    }

    /// SQLite in the test's own directory, with the tests' routes.
    pub fn sqlite() -> Self {
        Self::new(Database::Sqlite, "test").for_tests()
    }

    /// PostgreSQL in a schema of the test's own, with the tests' routes.
    pub fn postgres() -> Self {
        Self::new(Database::Postgres(postgres_url()), "test").for_tests()
    }

    fn for_tests(self) -> Self {
        let runs = self.dir.path().join("runs.log");
        self.config(&TEST_CONFIG.replace("{runs}", &runs.display().to_string()))
            .env("FERRY_CONCURRENCY", "4")
            // Some tests send hundreds of requests at once; admission
            // control has its own test (api/tests/overload.rs sets 1).
            .env("FERRY_RECEIVE_LIMIT", "4096")
            .env("RUST_LOG", "info,ferry_worker=debug")
    }

    /// Replaces the config file's text.
    pub fn config(self, text: &str) -> Self {
        std::fs::write(&self.config, text).expect("write the config");
        self
    }

    /// Adds a `[[tokens]]` entry to the config file: `token`, stored as
    /// its SHA-256 ([`crate::token_hash`]), named `name`, with `scopes`.
    pub fn token(self, name: &str, token: &str, scopes: &[&str]) -> Self {
        use std::io::Write as _;
        let scopes: Vec<String> = scopes.iter().map(|s| format!("{s:?}")).collect();
        let entry = format!(
            "\n[[tokens]]\nname = {name:?}\nhash = {:?}\nscopes = [{}]\n",
            crate::token_hash(token),
            scopes.join(", ")
        );
        std::fs::OpenOptions::new()
            .append(true)
            .open(&self.config)
            .and_then(|mut file| file.write_all(entry.as_bytes()))
            .expect("append to the config");
        self
    }

    /// Sets an environment variable for every process started after this.
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    /// Uses another RabbitMQ.
    pub fn broker(mut self, url: &str) -> Self {
        self.broker_url = url.into();
        self
    }

    /// Takes the binaries from `dir`.
    pub fn bins(mut self, dir: &Path) -> Self {
        self.bins = dir.into();
        self
    }

    /// The dead-letter queue beside [`Deployment::queue`] (named as
    /// `ferry_core::broker::AmqpQueue::dead_letter_name` names it).
    pub fn dead_queue(&self) -> String {
        format!("{}.dead", self.queue)
    }

    /// A connection of the test's own to the deployment's broker, and a
    /// channel on it.
    pub async fn broker_channel(&self) -> (lapin::Connection, lapin::Channel) {
        let props = lapin::ConnectionProperties::default();
        let connection = lapin::Connection::connect(&self.broker_url, props)
            .await
            .expect("connect to RabbitMQ");
        let channel = connection.create_channel().await.expect("a channel");
        (connection, channel)
    }

    /// Messages ready in [`Deployment::queue`] (a passive declare on
    /// `channel`).
    pub async fn ready_messages(&self, channel: &lapin::Channel) -> u32 {
        let passive = lapin::options::QueueDeclareOptions {
            passive: true,
            ..lapin::options::QueueDeclareOptions::default()
        };
        channel
            .queue_declare(
                self.queue.as_str().into(),
                passive,
                lapin::types::FieldTable::default(),
            )
            .await
            .expect("the task queue exists")
            .message_count()
    }

    /// Starts `binary` with the deployment's config and environment, then
    /// `more_env`; its log is `<name>.log` in the deployment's directory.
    pub fn spawn(
        &self,
        binary: &str,
        args: &[&str],
        name: &str,
        port: Option<u16>,
        more_env: &[(&str, &str)],
    ) -> Proc {
        let path = self.bins.join(binary);
        let path = if path.exists() {
            path
        } else {
            crate::bin(binary)
        };
        let mut command = Command::new(path);
        command
            .args(["--config", self.config.to_str().expect("a UTF-8 path")])
            .args(args)
            .current_dir(crate::repo_root())
            .env("FERRY_DATABASE_URL", &self.database_url)
            .env("FERRY_BROKER_URL", &self.broker_url)
            .env("FERRY_QUEUE", &self.queue);
        if let Some(port) = port {
            command.env("FERRY_PORT", port.to_string());
        }
        for (k, v) in &self.env {
            command.env(k, v);
        }
        for (k, v) in more_env {
            command.env(k, v);
        }
        Proc::spawn(command, name, &self.dir.path().join(format!("{name}.log")))
    }

    /// Starts `ferry-api` (production layout) and waits until it serves.
    pub async fn api(&self) -> Api {
        self.api_with(&[], &[]).await
    }

    /// Starts `ferry-api --standalone` and waits until it serves.
    pub async fn standalone(&self) -> Api {
        self.api_with(&["--standalone"], &[]).await
    }

    /// Starts `ferry-api` with more arguments and environment, and waits
    /// until it serves.
    pub async fn api_with(&self, args: &[&str], env: &[(&str, &str)]) -> Api {
        let port = free_port();
        let proc = self.spawn("ferry-api", args, &format!("api-{port}"), Some(port), env);
        Api::start(proc, port).await
    }

    /// Starts a `ferry-worker` replica.
    pub fn worker(&self, name: &str) -> Proc {
        self.spawn("ferry-worker", &[], name, None, &[])
    }

    /// Lines the counting handlers wrote: `(task id, attempt)` per run.
    pub fn runs(&self) -> Vec<(String, String)> {
        std::fs::read_to_string(self.dir.path().join("runs.log"))
            .unwrap_or_default()
            .lines()
            .map(|l| {
                let (id, attempt) = l.split_once(' ').expect("a runs line");
                (id.to_string(), attempt.to_string())
            })
            .collect()
    }

    /// How many times each task's counting handler ran.
    pub fn runs_per_task(&self) -> HashMap<String, usize> {
        let mut runs = HashMap::new();
        for (id, _) in self.runs() {
            *runs.entry(id).or_default() += 1;
        }
        runs
    }

    /// The counting handlers ran each of `ids` exactly once, and nothing
    /// else.
    pub fn assert_each_ran_once(&self, ids: &[String]) {
        let runs = self.runs_per_task();
        for id in ids {
            assert_eq!(runs.get(id), Some(&1), "task {id}: runs {runs:?}");
        }
        assert_eq!(runs.values().sum::<usize>(), ids.len(), "runs: {runs:?}");
    }

    /// The pids an `org.ferry.hang` task wrote (its command's, then its
    /// grandchild's), once it wrote them.
    pub fn hang_pids(&self, task: &str) -> Option<(u32, u32)> {
        let text = std::fs::read_to_string(self.dir.path().join(format!("pids-{task}"))).ok()?;
        let (command, grandchild) = text.trim().split_once(' ')?;
        Some((command.parse().ok()?, grandchild.parse().ok()?))
    }

    /// Lets every `org.ferry.gate` command past its gate, those waiting
    /// and those to come.
    pub fn open_gate(&self) {
        std::fs::write(self.dir.path().join("gate"), "").expect("open the gate");
    }

    /// The SQLite file of an SQLite deployment.
    pub fn sqlite_path(&self) -> Option<&str> {
        self.database_url.strip_prefix("sqlite://")
    }

    fn sqlite_conn(&self) -> SqliteConnection {
        let path = self.sqlite_path().expect("an SQLite deployment");
        let mut conn = SqliteConnection::establish(path).expect("open the SQLite file");
        conn.batch_execute("PRAGMA busy_timeout = 10000")
            .expect("set busy_timeout");
        conn
    }

    /// Runs SQL statements in the deployment's database, behind Ferry's back.
    pub fn execute(&self, sql: &str) {
        match &self.pg {
            Some(schema) => schema.execute(sql),
            None => self
                .sqlite_conn()
                .batch_execute(sql)
                .unwrap_or_else(|e| panic!("{sql}: {e}")),
        }
    }

    /// Holds the `tasks` table against writes until the guard is dropped
    /// (reads go on): an open SQLite write transaction, or PostgreSQL's
    /// `LOCK TABLE tasks IN EXCLUSIVE MODE`. Ferry's inserts wait meanwhile
    /// (on SQLite up to its `busy_timeout`, 10 s).
    pub fn hold_writes(&self) -> WriteHold {
        let conn = match &self.pg {
            Some(schema) => {
                let mut conn = schema.connect();
                conn.batch_execute("BEGIN; LOCK TABLE tasks IN EXCLUSIVE MODE")
                    .expect("lock the tasks table");
                HeldConnection::Pg(conn)
            }
            None => {
                let mut conn = self.sqlite_conn();
                conn.batch_execute("BEGIN IMMEDIATE")
                    .expect("open an SQLite write transaction");
                HeldConnection::Sqlite(conn)
            }
        };
        WriteHold(conn)
    }

    /// The text column `v` of each row a query returns.
    pub fn texts(&self, sql: &str) -> Vec<String> {
        #[derive(QueryableByName)]
        struct TextRow {
            #[diesel(sql_type = diesel::sql_types::Text)]
            v: String,
        }
        let rows = match &self.pg {
            Some(schema) => diesel::sql_query(sql).load::<TextRow>(&mut schema.connect()),
            None => diesel::sql_query(sql).load::<TextRow>(&mut self.sqlite_conn()),
        };
        rows.unwrap_or_else(|e| panic!("{sql}: {e}"))
            .into_iter()
            .map(|row| row.v)
            .collect()
    }

    /// How many task rows match `filter` (a WHERE clause, or empty).
    pub fn task_rows(&self, filter: &str) -> usize {
        let sql = format!("SELECT CAST(COUNT(*) AS TEXT) AS v FROM tasks {filter}");
        self.texts(&sql)[0].parse().expect("a count")
    }
}

/// [`Deployment::hold_writes`]'s guard: dropping it rolls the holding
/// transaction back.
pub struct WriteHold(HeldConnection);

enum HeldConnection {
    Sqlite(SqliteConnection),
    Pg(diesel::PgConnection),
}

impl std::fmt::Debug for WriteHold {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WriteHold")
    }
}

impl Drop for WriteHold {
    fn drop(&mut self) {
        let _ = match &mut self.0 {
            HeldConnection::Sqlite(conn) => conn.batch_execute("ROLLBACK"),
            HeldConnection::Pg(conn) => conn.batch_execute("ROLLBACK"),
        };
    }
}

impl Drop for Deployment {
    fn drop(&mut self) {
        delete_task_queue(&self.broker_url, &self.queue);
    }
}

/// Deletes what Ferry declares for the task queue `queue`: the queue, its
/// dead-letter queue (`<queue>.dead`), and the exchanges of its hints
/// (`<queue>.events`) and control messages (`<queue>.control`), which
/// would otherwise stay on the broker after every test and benchmark run.
/// The names are spelled as `ferry_core` names them
/// (`broker::AmqpQueue::dead_letter_name`, `hints::exchange_name`,
/// `control::exchange_name`): the test kit stands outside Ferry's crates.
pub fn delete_task_queue(broker_url: &str, queue: &str) {
    delete(
        broker_url,
        &[queue, &format!("{queue}.dead")],
        &[&format!("{queue}.events"), &format!("{queue}.control")],
    );
}

/// Deletes RabbitMQ queues, on a thread of its own (callers may be inside a
/// runtime) within ten seconds; errors (a broker that is down, a queue that
/// never existed) are ignored.
pub fn delete_queues(broker_url: &str, queues: &[&str]) {
    delete(broker_url, queues, &[]);
}

/// Deletes queues and exchanges as [`delete_queues`] does.
fn delete(broker_url: &str, queues: &[&str], exchanges: &[&str]) {
    let url = broker_url.to_string();
    let queues: Vec<String> = queues.iter().map(|q| q.to_string()).collect();
    let exchanges: Vec<String> = exchanges.iter().map(|e| e.to_string()).collect();
    let deleting = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .ok()?;
        runtime.block_on(async {
            let delete = async {
                let props = lapin::ConnectionProperties::default();
                let connection = lapin::Connection::connect(&url, props).await.ok()?;
                let channel = connection.create_channel().await.ok()?;
                for queue in &queues {
                    let options = lapin::options::QueueDeleteOptions::default();
                    let _ = channel.queue_delete(queue.as_str().into(), options).await;
                }
                for exchange in &exchanges {
                    let options = lapin::options::ExchangeDeleteOptions::default();
                    let _ = channel
                        .exchange_delete(exchange.as_str().into(), options)
                        .await;
                }
                let _ = connection.close(200, "test over".into()).await;
                Some(())
            };
            tokio::time::timeout(Duration::from_secs(10), delete)
                .await
                .ok()
                .flatten()
        })
    });
    let _ = deleting.join();
}

/// A port free now, and never handed out before in this process: the
/// kernel may hand the same free port to two binds in a row, and two
/// deployments of one test would then share it.
fn free_port() -> u16 {
    static HANDED_OUT: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut handed_out = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        if !handed_out.contains(&port) {
            handed_out.push(port);
            return port;
        }
    }
}

/// How Ferry is laid out for a test.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// `ferry-api` and `ferry-worker` processes on SQLite, with RabbitMQ.
    Sqlite,
    /// `ferry-api` and `ferry-worker` processes on PostgreSQL, with RabbitMQ.
    Postgres,
    /// `ferry-api --standalone` on SQLite, given a broker URL that does not
    /// answer: it must not need one.
    Standalone,
}

impl Layout {
    /// Whether the services the layout needs answer (the CI rule decides
    /// what happens when they do not).
    pub fn available(self) -> bool {
        match self {
            Self::Sqlite => services::require_named("rabbitmq"),
            Self::Postgres => {
                services::require_named("rabbitmq") && services::require_named("postgres")
            }
            Self::Standalone => true,
        }
    }

    /// A fresh deployment for the layout.
    pub fn deployment(self) -> Deployment {
        match self {
            Self::Sqlite => Deployment::sqlite(),
            Self::Postgres => Deployment::postgres(),
            Self::Standalone => {
                Deployment::sqlite().env("FERRY_BROKER_URL", "amqp://guest:guest@127.0.0.1:1/%2f")
            }
        }
    }
}

/// A deployment started in a layout: its API and its workers (none in
/// standalone). Dropped in that order, processes first.
#[derive(Debug)]
pub struct Stack {
    /// The API.
    pub api: Api,
    /// The worker replicas.
    pub workers: Vec<Proc>,
    /// The deployment they run on.
    pub deployment: Deployment,
}

impl Stack {
    /// `layout` with one worker; `None` when a service it needs is missing
    /// (and this is not CI).
    pub async fn start(layout: Layout) -> Option<Self> {
        Self::start_with(layout, 1, |d| d).await
    }

    /// `layout` with `workers` replicas, on a deployment `setup` adjusted.
    pub async fn start_with(
        layout: Layout,
        workers: usize,
        setup: impl FnOnce(Deployment) -> Deployment,
    ) -> Option<Self> {
        if !layout.available() {
            return None;
        }
        let deployment = setup(layout.deployment());
        let (api, workers) = if layout == Layout::Standalone {
            (deployment.standalone().await, Vec::new())
        } else {
            let api = deployment.api().await;
            let workers = (0..workers)
                .map(|i| deployment.worker(&format!("worker-{i}")))
                .collect();
            (api, workers)
        };
        Some(Self {
            api,
            workers,
            deployment,
        })
    }

    /// Submits `n` `org.ferry.count` tasks named `prefix-i`, each once the
    /// message of the one before is ready in the queue (seen through
    /// `channel`), so that each is a message of its own: the api packs the
    /// tasks whose publishes wait together into one message, and a test
    /// that counts messages would otherwise find fewer than it sent. With
    /// no worker consuming the queue. Their ids.
    pub async fn submit_one_message_each(
        &self,
        channel: &lapin::Channel,
        prefix: &str,
        n: usize,
    ) -> Vec<String> {
        let d = &self.deployment;
        let mut ready = d.ready_messages(channel).await;
        let mut ids = Vec::with_capacity(n);
        for i in 0..n {
            let data = serde_json::json!({ "n": i });
            ids.push(
                self.api
                    .submit("org.ferry.count", &format!("{prefix}-{i}"), data)
                    .await,
            );
            let deadline = std::time::Instant::now() + Duration::from_secs(30);
            loop {
                let now = d.ready_messages(channel).await;
                if now == ready + 1 {
                    break;
                }
                assert!(
                    now == ready && std::time::Instant::now() < deadline,
                    "{now} messages ready after task {prefix}-{i}, expected {}",
                    ready + 1
                );
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            ready += 1;
        }
        ids
    }
}
