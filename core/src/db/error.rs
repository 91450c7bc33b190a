//! Why a database call failed, and whether retrying may help.
//!
//! Callers decide by class, not by message: an unavailable database (lost
//! connection, busy SQLite, PostgreSQL shutting down, a serialization
//! conflict) is worth retrying later; any other failure is not. Group
//! commits use [`DbError::isolate`] so one bad item cannot fail its batch.

/// Why a database call failed.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// The database cannot be reached (or is busy); retry later.
    #[error("database unavailable: {0}")]
    Unavailable(String),
    /// A query failed for another reason.
    #[error("database error: {0}")]
    Query(diesel::result::Error),
    /// Migrations could not be applied.
    #[error("migrations failed: {0}")]
    Migration(String),
    /// A batch this call was part of failed (see [`DbError::isolate`]).
    #[error("database error: {0}")]
    Batch(String),
}

impl DbError {
    /// The same error for every caller whose write shared the failed
    /// transaction; whether it is worth retrying is kept.
    pub fn for_each_caller(&self) -> Self {
        match self {
            Self::Unavailable(m) => Self::Unavailable(m.clone()),
            other => Self::Batch(other.to_string()),
        }
    }

    /// Runs a group commit's `items` together through `run` (one answer
    /// per item, in order), so that one item cannot fail the others. If the
    /// batch fails for a reason that may belong to one item (anything but
    /// an unavailable database), each item is run again on its own: the
    /// others commit as if it had not been there, and only the offending
    /// item gets its error. An unavailable database fails every item at
    /// once, as retrying them one by one would not help.
    pub fn isolate<Req, T>(
        batch: &'static str,
        items: &[Req],
        run: impl Fn(&[Req]) -> DbResult<Vec<T>>,
    ) -> Vec<DbResult<T>> {
        match run(items) {
            Ok(answers) => answers.into_iter().map(Ok).collect(),
            Err(e) if items.len() == 1 => vec![Err(e)],
            Err(e) if e.is_unavailable() => {
                (0..items.len()).map(|_| Err(e.for_each_caller())).collect()
            }
            Err(e) => {
                tracing::warn!(batch, items = items.len(), error = %e, "a batch failed; running its items one at a time");
                items
                    .iter()
                    .map(|item| {
                        run(std::slice::from_ref(item)).and_then(|mut answers| {
                            answers.pop().ok_or_else(|| {
                                DbError::Batch("a batch of one gave no answer".into())
                            })
                        })
                    })
                    .collect()
            }
        }
    }

    /// Whether retrying later may help.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, Self::Unavailable(_))
    }
}

impl From<diesel::r2d2::PoolError> for DbError {
    fn from(e: diesel::r2d2::PoolError) -> Self {
        Self::Unavailable(e.to_string())
    }
}

impl From<diesel::result::Error> for DbError {
    fn from(e: diesel::result::Error) -> Self {
        use diesel::result::{DatabaseErrorKind as Kind, Error};
        match &e {
            // Lost connections, and conflicts that a retry resolves.
            Error::DatabaseError(
                Kind::ClosedConnection | Kind::UnableToSendCommand | Kind::SerializationFailure,
                _,
            ) => Self::Unavailable(e.to_string()),
            // SQLite's busy/locked after busy_timeout, PostgreSQL shutting down.
            Error::DatabaseError(_, info)
                if info.message().contains("database is locked")
                    || info.message().contains("deadlock detected")
                    || info.message().contains("terminating connection") =>
            {
                Self::Unavailable(e.to_string())
            }
            _ => Self::Query(e),
        }
    }
}

/// The result of a database call.
pub type DbResult<T> = Result<T, DbError>;
