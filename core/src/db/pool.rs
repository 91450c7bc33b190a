//! The pool's connection manager: diesel's, except for r2d2's checkout
//! ping. r2d2 sends `SELECT 1` on every checkout, which on PostgreSQL was
//! half of all transactions. Here a connection whose last query succeeded
//! less than [`FRESH`] ago is handed out without it: it just proved it
//! works. Any other (idle longer, or its last query failed) is pinged as
//! before, and dropped if the ping fails. A connection that lost its
//! server (closed, or a command could not be sent) is dropped when it is
//! returned, so it is never handed out again.
//!
//! What each connection did last is kept by a diesel instrumentation hook
//! ([`Health`]) that wraps the default one (the statement counts, when on).
//! diesel reports every failure on PostgreSQL; on SQLite, a read that fails
//! after its statement was prepared is reported as a success, which there
//! costs nothing: SQLite has no server to lose.
//!
//! The same hook follows each SQLite connection's outermost transaction
//! to take and give back the writers' turn (`writer.rs`).

use std::time::{Duration, Instant};

use diesel::connection::{get_default_instrumentation, Instrumentation, InstrumentationEvent};
use diesel::r2d2::{ConnectionManager, ManageConnection, R2D2Connection};
use diesel::result::{DatabaseErrorKind, Error};

use super::writer::Turns;

/// How recently a connection must have succeeded to skip the checkout ping.
pub const FRESH: Duration = Duration::from_secs(1);

/// diesel's connection manager, pinging only connections not known good.
pub(super) struct Manager<T: 'static> {
    inner: ConnectionManager<T>,
    /// Run on each new connection before it is pooled.
    setup: Option<&'static str>,
    /// SQLite: the database's path, whose writers take turns (`writer.rs`).
    sqlite_path: Option<String>,
}

impl<T> std::fmt::Debug for Manager<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Manager")
            .field("inner", &self.inner)
            .field("setup", &self.setup)
            .field("sqlite_path", &self.sqlite_path)
            .finish()
    }
}

impl<T: R2D2Connection + Send + 'static> Manager<T> {
    /// A manager of connections to the SQLite database at `path`, whose
    /// transactions take turns (`writer.rs`).
    pub(super) fn sqlite(path: &str) -> Self {
        Self {
            inner: ConnectionManager::new(path),
            setup: None,
            sqlite_path: Some(path.to_string()),
        }
    }

    /// A manager that runs `setup` on each connection it opens.
    pub(super) fn with_setup(url: &str, setup: Option<&'static str>) -> Self {
        Self {
            inner: ConnectionManager::new(url),
            setup,
            sqlite_path: None,
        }
    }
}

/// The connection's [`Health`] hook, if it has one (every connection this
/// manager makes does).
fn health<T: R2D2Connection>(conn: &mut T) -> Option<&mut Health> {
    conn.instrumentation().downcast_mut::<Health>()
}

impl<T: R2D2Connection + Send + 'static> ManageConnection for Manager<T> {
    type Connection = T;
    type Error = diesel::r2d2::Error;

    fn connect(&self) -> Result<T, Self::Error> {
        let mut conn = self.inner.connect()?;
        if let Some(setup) = self.setup {
            conn.batch_execute(setup)
                .map_err(diesel::r2d2::Error::QueryError)?;
        }
        conn.set_instrumentation(Health {
            inner: get_default_instrumentation(),
            // Just established: it works.
            last_ok: Some(Instant::now()),
            lost: false,
            turns: self.sqlite_path.as_deref().and_then(Turns::open),
            transaction_turn: false,
            turn_ends: TurnEnds::No,
        });
        Ok(conn)
    }

    fn is_valid(&self, conn: &mut T) -> Result<(), Self::Error> {
        if health(conn).is_some_and(|h| h.fresh()) {
            return Ok(());
        }
        // r2d2 drops the connection if this fails.
        self.inner.is_valid(conn)
    }

    fn has_broken(&self, conn: &mut T) -> bool {
        self.inner.has_broken(conn) || health(conn).is_some_and(|h| h.lost)
    }
}

/// One connection's record of its last query, and on SQLite the writers'
/// turn its transactions take (`writer.rs`); passes every event on to
/// the default hook.
pub(super) struct Health {
    inner: Option<Box<dyn Instrumentation>>,
    /// When the last query succeeded; `None` once one failed, until one
    /// succeeds again (the checkout ping, say).
    last_ok: Option<Instant>,
    /// The server is gone: the connection must not be reused.
    lost: bool,
    /// SQLite: the writers' turns this connection's transactions take.
    turns: Option<Turns>,
    /// The outermost transaction took the turn this connection holds.
    transaction_turn: bool,
    /// When the turn held goes back.
    turn_ends: TurnEnds,
}

/// Runs `f` on `conn` holding its database's writers' turn (SQLite: see
/// `writer.rs`; elsewhere it just runs `f`), for writes that are not all
/// in one transaction (a statement alone is a transaction of its own,
/// which diesel does not announce).
pub(super) fn in_turn<T: R2D2Connection, R>(conn: &mut T, f: impl FnOnce(&mut T) -> R) -> R {
    let took = take_turn(conn);
    let result = f(conn);
    if took {
        give_back_turn(conn);
    }
    result
}

/// Takes `conn`'s writers' turn for a batch that runs its statements on
/// it (`writer::WriterTurn`): whether it took it; given back with
/// [`give_back_turn`].
pub(super) fn take_turn<T: R2D2Connection>(conn: &mut T) -> bool {
    health(conn)
        .and_then(|h| h.turns.as_mut())
        .is_some_and(Turns::take)
}

/// Gives back the writers' turn `conn` holds, if it holds one.
pub(super) fn give_back_turn<T: R2D2Connection>(conn: &mut T) {
    if let Some(turns) = health(conn).and_then(|h| h.turns.as_mut()) {
        turns.give_back();
    }
}

/// When a connection gives its writer's turn back: after the statement
/// that ends the outermost transaction (diesel announces `COMMIT` and
/// `ROLLBACK` before it sends them), or after a `BEGIN` that failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TurnEnds {
    No,
    AfterNextQuery,
    IfNextQueryFails,
}

impl Health {
    fn fresh(&self) -> bool {
        !self.lost && self.last_ok.is_some_and(|at| at.elapsed() < FRESH)
    }
}

/// Whether `e` means the connection itself is gone, not just the query.
fn is_lost(e: &Error) -> bool {
    match e {
        Error::DatabaseError(
            DatabaseErrorKind::ClosedConnection | DatabaseErrorKind::UnableToSendCommand,
            _,
        ) => true,
        Error::DatabaseError(_, info) => info.message().contains("terminating connection"),
        _ => false,
    }
}

impl Health {
    /// Follows the outermost transaction, taking the writer's turn as it
    /// begins and giving it back once it has ended.
    fn follow_turn(&mut self, event: &InstrumentationEvent<'_>) {
        let Some(turns) = &mut self.turns else {
            return;
        };
        match event {
            InstrumentationEvent::BeginTransaction { depth, .. } if depth.get() == 1 => {
                self.transaction_turn = turns.take();
                if self.transaction_turn {
                    self.turn_ends = TurnEnds::IfNextQueryFails;
                }
            }
            InstrumentationEvent::CommitTransaction { depth, .. }
            | InstrumentationEvent::RollbackTransaction { depth, .. }
                if depth.get() == 1 && self.transaction_turn =>
            {
                self.transaction_turn = false;
                self.turn_ends = TurnEnds::AfterNextQuery;
            }
            InstrumentationEvent::FinishQuery { error, .. } => {
                let ends = match self.turn_ends {
                    TurnEnds::No => false,
                    TurnEnds::AfterNextQuery => true,
                    TurnEnds::IfNextQueryFails => error.is_some(),
                };
                self.turn_ends = TurnEnds::No;
                if ends {
                    self.transaction_turn = false;
                    turns.give_back();
                }
            }
            _ => {}
        }
    }
}

impl Instrumentation for Health {
    fn on_connection_event(&mut self, event: InstrumentationEvent<'_>) {
        if let InstrumentationEvent::FinishQuery { error, .. } = &event {
            match error {
                None => self.last_ok = Some(Instant::now()),
                Some(e) => {
                    self.last_ok = None;
                    self.lost |= is_lost(e);
                }
            }
        }
        self.follow_turn(&event);
        if let Some(inner) = &mut self.inner {
            inner.on_connection_event(event);
        }
    }
}
