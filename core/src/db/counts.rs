//! Counts of the statements and transactions this process sends to the
//! database, for the benchmark harness (`ferry-bench`, which prints them
//! per task). Off unless `FERRY_DB_COUNTS` names a directory: then every
//! connection made afterwards reports to diesel's instrumentation hook, and
//! a background thread rewrites `<dir>/<pid>.counts` every
//! [`WRITE_EVERY`] with the totals so far (the harness kills its processes,
//! so there is no exit to write at). Unset, nothing here runs: pooled
//! connections carry only the pool's own hook (`pool.rs`). The harness
//! counts its own connections in process ([`count`], [`snapshot`]).
//!
//! What is counted (one `name value` line each, all since the start):
//! - `statements`: queries sent, other than transaction control and the
//!   pool's checkout ping; split by their first keyword into `select`,
//!   `insert`, `update`, `delete` and `other` (`WITH …`, `PRAGMA` …);
//! - `pings`: r2d2's `SELECT 1` on checkout of a pooled connection not
//!   known good (`pool.rs`), and [`crate::Db::ping`];
//! - `begins`, `commits`, `rollbacks`: outermost transactions (savepoints,
//!   nested ones, are `savepoints`);
//! - `implicit`: statements and pings sent outside a transaction, each a
//!   transaction of its own on the server;
//! - `round_trips`: every query sent, transaction control included (on
//!   PostgreSQL each is one round trip; SQLite is in-process);
//! - `prepares`: statements prepared and cached (one more round trip on
//!   PostgreSQL, the first time a connection runs a statement);
//! - `errors`, `connections`.
//!
//! Counting costs: each statement's SQL is built again to read its first
//! keyword (diesel hands the hook only a displayable query), 8.8% of the
//! api's CPU while it answers `/status` of tasks in flight, one statement
//! per request. So the harness pauses the counts where it measures
//! something else: while [`PAUSE_FILE`] exists in the directory (checked
//! with each write), nothing is counted or formatted.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

use diesel::connection::{set_default_instrumentation, Instrumentation, InstrumentationEvent};

/// The environment variable that turns counting on: a directory.
pub const ENV: &str = "FERRY_DB_COUNTS";

/// How often the totals are written (and the pause looked for).
pub const WRITE_EVERY: Duration = Duration::from_millis(100);

/// While a file of this name is in the counts' directory, the processes
/// writing there count nothing (see the module's doc).
pub const PAUSE_FILE: &str = "paused";

/// Whether counting is paused in this process.
static PAUSED: AtomicBool = AtomicBool::new(false);

/// Pauses (or resumes) counting in this process; a process writing its
/// counts to a directory follows [`PAUSE_FILE`] there.
fn pause(paused: bool) {
    PAUSED.store(paused, Ordering::Relaxed);
}

fn paused() -> bool {
    PAUSED.load(Ordering::Relaxed)
}

/// The counters, in the order of [`NAMES`].
static COUNTS: [AtomicU64; NAMES.len()] = [const { AtomicU64::new(0) }; NAMES.len()];

/// The name of each counter, as written to the file.
pub const NAMES: [&str; 15] = [
    "statements",
    "select",
    "insert",
    "update",
    "delete",
    "other",
    "pings",
    "begins",
    "commits",
    "rollbacks",
    "savepoints",
    "implicit",
    "round_trips",
    "prepares",
    "errors",
];

/// Indexes into [`COUNTS`].
#[derive(Debug, Clone, Copy)]
enum Counter {
    Statements = 0,
    Select,
    Insert,
    Update,
    Delete,
    Other,
    Pings,
    Begins,
    Commits,
    Rollbacks,
    Savepoints,
    Implicit,
    RoundTrips,
    Prepares,
    Errors,
}

static CONNECTIONS: AtomicU64 = AtomicU64::new(0);

fn add(counter: Counter) {
    if !paused() {
        COUNTS[counter as usize].fetch_add(1, Ordering::Relaxed);
    }
}

/// Turns counting on if [`ENV`] is set, writing the totals to a file in
/// that directory; called where pools are made. Does nothing once on.
pub fn install() {
    if let Some(dir) = std::env::var_os(ENV).filter(|d| !d.is_empty()) {
        if count() {
            spawn_writer(dir.into());
        }
    }
}

/// Counts the statements of every connection made from now on, in this
/// process ([`snapshot`] reads them); true the first time only.
pub fn count() -> bool {
    static ON: OnceLock<()> = OnceLock::new();
    let mut first = false;
    ON.get_or_init(|| {
        first = true;
        if let Err(e) = set_default_instrumentation(|| Some(Box::new(Counting::default()))) {
            tracing::warn!(error = %e, "database counts not installed");
        }
    });
    first
}

fn spawn_writer(dir: PathBuf) {
    let file = dir.join(format!("{}.counts", std::process::id()));
    let spawned = std::thread::Builder::new()
        .name("db-counts".into())
        .spawn(move || loop {
            pause(dir.join(PAUSE_FILE).exists());
            if let Err(e) = write(&file) {
                tracing::warn!(error = %e, file = %file.display(), "database counts not written");
            }
            std::thread::sleep(WRITE_EVERY);
        });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "database counts writer not started");
    }
}

/// The totals so far, one `name value` line each.
pub fn snapshot() -> String {
    let mut text = String::new();
    for (name, count) in NAMES.iter().zip(&COUNTS) {
        let _ = writeln!(text, "{name} {}", count.load(Ordering::Relaxed));
    }
    let _ = writeln!(text, "connections {}", CONNECTIONS.load(Ordering::Relaxed));
    text
}

/// The counts in a [`snapshot`]'s text (or a counts file's), by name.
pub fn parse(text: &str) -> HashMap<String, u64> {
    text.lines()
        .filter_map(|line| {
            let (name, value) = line.split_once(' ')?;
            Some((name.to_string(), value.parse().ok()?))
        })
        .collect()
}

/// Replaces `file` whole, so a reader never sees half of it.
fn write(file: &Path) -> std::io::Result<()> {
    let partial = file.with_extension("partial");
    std::fs::write(&partial, snapshot())?;
    std::fs::rename(&partial, file)
}

/// One connection's hook: whether it is inside a transaction, to tell an
/// implicit transaction from a statement in an explicit one.
#[derive(Debug, Default)]
struct Counting {
    in_transaction: bool,
}

/// The first 24 bytes of a query's text: enough for its first keyword,
/// without formatting the rest (a batch's binds can be long).
#[derive(Default)]
struct Head {
    bytes: [u8; 24],
    len: usize,
}

impl std::fmt::Write for Head {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        let take = s.len().min(self.bytes.len() - self.len);
        self.bytes[self.len..self.len + take].copy_from_slice(&s.as_bytes()[..take]);
        self.len += take;
        if self.len == self.bytes.len() {
            // Stops the formatting: the rest is not needed.
            return Err(std::fmt::Error);
        }
        Ok(())
    }
}

impl Head {
    fn of(query: &dyn std::fmt::Display) -> Self {
        let mut head = Self::default();
        let _ = write!(head, "{query}");
        head
    }

    fn keyword(&self) -> String {
        String::from_utf8_lossy(&self.bytes[..self.len])
            .trim_start()
            .split(|c: char| !c.is_ascii_alphanumeric())
            .next()
            .unwrap_or_default()
            .to_ascii_lowercase()
    }

    fn is_ping(&self) -> bool {
        let text = String::from_utf8_lossy(&self.bytes[..self.len]);
        let text = text.trim();
        text == "SELECT 1" || text.starts_with("SELECT 1 --") || text.starts_with("SELECT 1 ")
    }
}

impl Instrumentation for Counting {
    fn on_connection_event(&mut self, event: InstrumentationEvent<'_>) {
        match event {
            InstrumentationEvent::FinishEstablishConnection { error: None, .. } => {
                CONNECTIONS.fetch_add(1, Ordering::Relaxed);
            }
            // Not even formatted while paused; transactions below are still
            // followed, so that counting resumes knowing where it is.
            InstrumentationEvent::StartQuery { .. } if paused() => {}
            InstrumentationEvent::StartQuery { query, .. } => {
                add(Counter::RoundTrips);
                let head = Head::of(query);
                let keyword = head.keyword();
                let control = matches!(
                    keyword.as_str(),
                    "begin" | "commit" | "rollback" | "savepoint" | "release" | "end"
                );
                if control {
                    return;
                }
                if !self.in_transaction {
                    add(Counter::Implicit);
                }
                if head.is_ping() {
                    add(Counter::Pings);
                    return;
                }
                add(Counter::Statements);
                add(match keyword.as_str() {
                    "select" => Counter::Select,
                    "insert" => Counter::Insert,
                    "update" => Counter::Update,
                    "delete" => Counter::Delete,
                    _ => Counter::Other,
                });
            }
            InstrumentationEvent::FinishQuery { error: Some(_), .. } => add(Counter::Errors),
            InstrumentationEvent::CacheQuery { .. } => add(Counter::Prepares),
            InstrumentationEvent::BeginTransaction { depth, .. } => {
                if depth.get() == 1 {
                    self.in_transaction = true;
                    add(Counter::Begins);
                } else {
                    add(Counter::Savepoints);
                }
            }
            InstrumentationEvent::CommitTransaction { depth, .. } if depth.get() == 1 => {
                self.in_transaction = false;
                add(Counter::Commits);
            }
            InstrumentationEvent::RollbackTransaction { depth, .. } if depth.get() == 1 => {
                self.in_transaction = false;
                add(Counter::Rollbacks);
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_snapshot_parses_back_to_every_count() {
        let _turn = TURNS.lock().unwrap_or_else(|e| e.into_inner());
        add(Counter::Begins);
        let counts = parse(&snapshot());
        for name in NAMES.iter().chain(&["connections"]) {
            assert!(counts.contains_key(*name), "{name}");
        }
        assert!(counts["begins"] >= 1);
        assert!(parse("statements x\nbegins\n").is_empty());
    }

    #[test]
    fn head_keeps_the_first_keyword_only() {
        let long = format!("  UPDATE tasks SET {} -- binds: []", "x = 1, ".repeat(100));
        let head = Head::of(&long);
        assert_eq!(head.len, 24);
        assert_eq!(head.keyword(), "update");
        assert!(!head.is_ping());
        assert!(Head::of(&"SELECT 1 -- binds: []").is_ping());
        assert!(Head::of(&"SELECT 1").is_ping());
        assert!(!Head::of(&"SELECT 10 FROM t").is_ping());
        assert_eq!(Head::of(&"WITH x AS (…)").keyword(), "with");
    }

    #[test]
    fn a_paused_process_counts_nothing_and_follows_transactions() {
        use diesel::connection::SimpleConnection;
        use diesel::{Connection, RunQueryDsl, SqliteConnection};
        // Other tests here count meanwhile, and a pause would miss their
        // statements: they take turns.
        let _turn = TURNS.lock().unwrap_or_else(|e| e.into_inner());
        let mut conn = SqliteConnection::establish(":memory:").expect("an in-memory database");
        conn.set_instrumentation(Counting::default());
        conn.batch_execute("CREATE TABLE t (x INTEGER)")
            .expect("create");
        let now = || -> Vec<u64> { COUNTS.iter().map(|c| c.load(Ordering::Relaxed)).collect() };
        pause(true);
        let before = now();
        let counted_while_paused = conn.transaction(|conn| {
            diesel::sql_query("INSERT INTO t VALUES (1)").execute(conn)?;
            let counted = now() != before;
            // Resumed inside a transaction begun while paused: the hook
            // still knows it is in one.
            pause(false);
            let implicit = COUNTS[Counter::Implicit as usize].load(Ordering::Relaxed);
            let updates = COUNTS[Counter::Update as usize].load(Ordering::Relaxed);
            diesel::sql_query("UPDATE t SET x = 2").execute(conn)?;
            assert_eq!(
                COUNTS[Counter::Implicit as usize].load(Ordering::Relaxed),
                implicit,
                "a statement in the transaction counted as implicit"
            );
            assert_eq!(
                COUNTS[Counter::Update as usize].load(Ordering::Relaxed),
                updates + 1
            );
            diesel::QueryResult::Ok(counted)
        });
        pause(false);
        assert!(
            !counted_while_paused.expect("a transaction"),
            "counted while paused"
        );
    }

    /// Taken by the tests that count, so that a pause does not overlap them.
    static TURNS: std::sync::Mutex<()> = std::sync::Mutex::new(());

    #[test]
    fn counts_statements_and_transactions() {
        let _turn = TURNS.lock().unwrap_or_else(|e| e.into_inner());
        use diesel::connection::SimpleConnection;
        use diesel::{Connection, RunQueryDsl, SqliteConnection};

        let before: Vec<u64> = COUNTS.iter().map(|c| c.load(Ordering::Relaxed)).collect();
        let delta = |c: Counter| COUNTS[c as usize].load(Ordering::Relaxed) - before[c as usize];
        let mut conn = SqliteConnection::establish(":memory:").expect("an in-memory database");
        conn.set_instrumentation(Counting::default());
        conn.batch_execute("CREATE TABLE t (x INTEGER)")
            .expect("create");
        diesel::r2d2::R2D2Connection::ping(&mut conn).expect("ping");
        conn.transaction(|conn| {
            diesel::sql_query("INSERT INTO t VALUES (1)").execute(conn)?;
            conn.transaction(|conn| diesel::sql_query("UPDATE t SET x = 2").execute(conn))
        })
        .expect("a transaction");
        diesel::sql_query("DELETE FROM t")
            .execute(&mut conn)
            .expect("delete");
        // Other tests may count at the same time: at least these.
        assert!(delta(Counter::Pings) >= 1);
        assert!(delta(Counter::Statements) >= 4);
        assert!(delta(Counter::Insert) >= 1);
        assert!(delta(Counter::Update) >= 1);
        assert!(delta(Counter::Delete) >= 1);
        assert!(delta(Counter::Begins) >= 1);
        assert!(delta(Counter::Commits) >= 1);
        assert!(delta(Counter::Savepoints) >= 1);
        // The create, the ping and the delete.
        assert!(delta(Counter::Implicit) >= 3);
        assert!(delta(Counter::RoundTrips) >= 9);
        assert!(snapshot().contains("\nimplicit "));
    }
}
