//! A PostgreSQL schema of a test's (or a bench run's) own.

use diesel::connection::SimpleConnection;
use diesel::{Connection, PgConnection};

use crate::services::postgres_url;

/// A PostgreSQL schema of its own, created in the test database and dropped
/// (with everything in it) when this is dropped.
#[derive(Debug)]
pub struct PgSchema {
    /// The schema's name.
    pub name: String,
    admin_url: String,
}

impl PgSchema {
    /// A new schema in the tests' database ([`postgres_url`]).
    pub fn new() -> Self {
        Self::create_in(&postgres_url(), "ferry_test")
    }

    /// A new schema named `prefix_<random>` in the database at `admin_url`
    /// (which may carry parameters, e.g. `?sslmode=disable`).
    pub fn create_in(admin_url: &str, prefix: &str) -> Self {
        let name = crate::unique(prefix);
        let mut conn = PgConnection::establish(admin_url)
            .unwrap_or_else(|e| panic!("connecting to PostgreSQL at {admin_url}: {e}"));
        conn.batch_execute(&format!("CREATE SCHEMA {name}"))
            .unwrap_or_else(|e| panic!("CREATE SCHEMA {name}: {e}"));
        Self {
            name,
            admin_url: admin_url.into(),
        }
    }

    /// A URL whose connections use only this schema.
    pub fn url(&self) -> String {
        let sep = if self.admin_url.contains('?') {
            '&'
        } else {
            '?'
        };
        format!(
            "{}{sep}options=-csearch_path%3D{}",
            self.admin_url, self.name
        )
    }

    /// A connection that uses only this schema.
    pub fn connect(&self) -> PgConnection {
        PgConnection::establish(&self.url()).expect("connect to the test schema")
    }

    /// Runs SQL statements in this schema.
    pub fn execute(&self, sql: &str) {
        self.connect()
            .batch_execute(sql)
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }
}

impl Default for PgSchema {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for PgSchema {
    fn drop(&mut self) {
        if let Ok(mut conn) = PgConnection::establish(&self.admin_url) {
            let _ = conn.batch_execute(&format!("DROP SCHEMA IF EXISTS {} CASCADE", self.name));
        }
    }
}
