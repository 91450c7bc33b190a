//! What the in-process api tests share: the app's state on a database of
//! their own, with an in-process queue and no worker.

#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use ferry_api::AppState;
use ferry_core::broker::Queue;
use ferry_core::retry::RetryPolicy;
use ferry_core::routes::{HandlerSpec, Route, Routes};
use ferry_core::{Config, Db};

/// A fresh SQLite file's URL, in a directory that must outlive the app.
pub fn sqlite_file() -> (String, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("ferry.db").display());
    (url, dir)
}

/// `types` routed to the echo handler (10 s, the default retries).
pub fn echo_routes(types: &[&str]) -> Routes {
    Routes::new(
        types
            .iter()
            .map(|event_type| Route {
                event_type: (*event_type).into(),
                handler: HandlerSpec::Echo,
                timeout: Duration::from_secs(10),
                retry: RetryPolicy::ROUTE_DEFAULT,
            })
            .collect(),
    )
    .unwrap()
}

/// The api's state with `config` over `database_url` (migrated here), an
/// in-process queue and no worker: tasks move only when the test (or a
/// request) moves them.
pub fn local_state(database_url: String, mut config: Config) -> (AppState, Db) {
    let db = Db::connect(&database_url, 4).unwrap();
    db.migrate().unwrap();
    config.database_url = database_url;
    let state = AppState::new(Arc::new(config), db.clone(), Queue::local());
    (state, db)
}
