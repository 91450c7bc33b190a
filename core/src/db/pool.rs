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

use std::time::{Duration, Instant};

use diesel::connection::{get_default_instrumentation, Instrumentation, InstrumentationEvent};
use diesel::r2d2::{ConnectionManager, ManageConnection, R2D2Connection};
use diesel::result::{DatabaseErrorKind, Error};

/// How recently a connection must have succeeded to skip the checkout ping.
pub const FRESH: Duration = Duration::from_secs(1);

/// diesel's connection manager, pinging only connections not known good.
pub(super) struct Manager<T: 'static> {
    inner: ConnectionManager<T>,
    /// Run on each new connection before it is pooled.
    setup: Option<&'static str>,
}

impl<T> std::fmt::Debug for Manager<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Manager")
            .field("inner", &self.inner)
            .field("setup", &self.setup)
            .finish()
    }
}

impl<T: R2D2Connection + Send + 'static> Manager<T> {
    pub(super) fn new(url: &str) -> Self {
        Self {
            inner: ConnectionManager::new(url),
            setup: None,
        }
    }

    /// A manager that runs `setup` on each connection it opens.
    pub(super) fn with_setup(url: &str, setup: Option<&'static str>) -> Self {
        Self {
            setup,
            ..Self::new(url)
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

/// One connection's record of its last query; passes every event on to
/// the default hook.
pub(super) struct Health {
    inner: Option<Box<dyn Instrumentation>>,
    /// When the last query succeeded; `None` once one failed, until one
    /// succeeds again (the checkout ping, say).
    last_ok: Option<Instant>,
    /// The server is gone: the connection must not be reused.
    lost: bool,
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
        if let Some(inner) = &mut self.inner {
            inner.on_connection_event(event);
        }
    }
}
