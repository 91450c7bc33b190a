//! `ferry-api migrate` on a fresh SQLite file and a fresh PostgreSQL
//! schema, and `ferry-api check-config`: the effective configuration with
//! its passwords masked, exit 2 for a bad one.

mod common;

use common::ferry_api;
use ferry_testkit::{postgres_url, Database, Deployment};

/// The migrations of a backend, by name, oldest first.
fn migrations(backend: &str) -> Vec<String> {
    let dir = ferry_testkit::repo_root().join("migrations").join(backend);
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| e.path().is_dir())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert!(names.len() >= 7, "{names:?}");
    names
}

/// Migrates the deployment's empty database twice: every migration runs
/// once, in order, then none; the tasks table is there.
fn migrate_twice(deployment: &Deployment, backend: &str) {
    let dir = tempfile::tempdir().unwrap();
    let url = deployment.database_url.as_str();
    let run = ferry_api(&["migrate", "--database-url", url], &[], dir.path()).expect(0);
    let applied: Vec<String> = run
        .stdout
        .lines()
        .filter_map(|l| l.strip_prefix("applied "))
        .map(String::from)
        .collect();
    assert_eq!(applied, migrations(backend), "{run:?}");
    let summary = format!("{} migration(s) applied, up to date", applied.len());
    assert!(run.stdout.ends_with(&format!("{summary}\n")), "{run:?}");
    assert_eq!(deployment.task_rows(""), 0);
    // Through the environment this time, as a deployment would set it.
    let run = ferry_api(&["migrate"], &[("FERRY_DATABASE_URL", url)], dir.path()).expect(0);
    assert!(
        run.stdout.ends_with("up to date, no migration to apply\n"),
        "{run:?}"
    );
    assert!(!run.stdout.contains("applied "), "{run:?}");
}

#[test]
fn migrate_a_fresh_sqlite_file() {
    let deployment = Deployment::new(Database::Sqlite, "migrate");
    migrate_twice(&deployment, "sqlite");
}

#[test]
fn migrate_a_fresh_postgres_schema() {
    ferry_testkit::require!(postgres);
    let deployment = Deployment::new(Database::Postgres(postgres_url()), "migrate");
    migrate_twice(&deployment, "postgres");
}

#[test]
fn migrate_fails_clearly_without_its_password() {
    let dir = tempfile::tempdir().unwrap();
    let url = "postgres://ferry:Hunter2-migrate@127.0.0.1:1/ferry";
    let run = ferry_api(&["migrate", "--database-url", url], &[], dir.path()).expect(1);
    assert!(
        run.stderr
            .contains("cannot migrate postgres://ferry:***@127.0.0.1:1/ferry"),
        "{run:?}"
    );
    assert!(!format!("{run:?}").contains("Hunter2"), "{run:?}");
    // A configuration that is bad: exit 2, before any connection.
    let run = ferry_api(&["migrate", "--database-url", "mysql://x"], &[], dir.path()).expect(2);
    assert!(
        run.stderr.contains("bad configuration: database_url"),
        "{run:?}"
    );
}

#[test]
fn check_config_prints_the_effective_configuration_masked() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("server.conf");
    std::fs::write(
        &config,
        r#"
database_url = "postgres://ferry:Db-Secret-1@db.example.org:5432/ferry"
broker_url = "amqp://ferry:Mq-Secret-2@mq.example.org:5672/%2f"
port = 1000
lease = "1m"

[[routes]]
type = "org.ferry.echo"
handler = "echo"

[[routes]]
type = "*"
handler = "http"
url = "https://hook:Hook-Secret-3@hooks.example.org/run"

[[tokens]]
name = "reader"
hash = "sha256:06040bf144a7268669a1f156bbc943caab6ca5df56a315302a4ad042584a2c86"
scopes = ["read"]
"#,
    )
    .unwrap();
    let path = config.to_str().unwrap();
    // File < environment < flags.
    let run = ferry_api(
        &["check-config", "--config", path, "--port", "3000"],
        &[
            ("FERRY_PORT", "2000"),
            ("FERRY_QUEUE", "from.env"),
            ("FERRY_RECEIVE_LIMIT", "64"),
        ],
        dir.path(),
    )
    .expect(0);
    for secret in ["Db-Secret-1", "Mq-Secret-2", "Hook-Secret-3"] {
        assert!(!run.stdout.contains(secret), "{run:?}");
        assert!(!run.stderr.contains(secret), "{run:?}");
    }
    for line in [
        "database_url = \"postgres://ferry:***@db.example.org:5432/ferry\"",
        "broker_url = \"amqp://ferry:***@mq.example.org:5672/%2f\"",
        "port = 3000",
        "queue = \"from.env\"",
        "receive_limit = 64",
        "lease = \"1m\"",
        "retention = \"7days\"",
        "url = \"https://hook:***@hooks.example.org/run\"",
        "hash = \"sha256:06040bf144a7268669a1f156bbc943caab6ca5df56a315302a4ad042584a2c86\"",
    ] {
        assert!(
            run.stdout.lines().any(|l| l == line),
            "no {line:?} in:\n{}",
            run.stdout
        );
    }
    // The printed configuration is itself a good one.
    let printed = dir.path().join("printed.conf");
    std::fs::write(&printed, &run.stdout).unwrap();
    let again = ferry_api(
        &["check-config", "--config", printed.to_str().unwrap()],
        &[],
        dir.path(),
    )
    .expect(0);
    assert_eq!(
        again.stdout.lines().skip(2).collect::<Vec<_>>(),
        run.stdout.lines().skip(2).collect::<Vec<_>>()
    );

    // Bad: a file, an environment variable, a flag; exit 2 naming the key.
    std::fs::write(&config, "prot = 1\n").unwrap();
    let run = ferry_api(&["check-config", "--config", path], &[], dir.path()).expect(2);
    assert!(
        run.stderr
            .starts_with("ferry-api: bad configuration: prot: unknown field"),
        "{run:?}"
    );
    assert_eq!(run.stdout, "");
    std::fs::write(&config, "[[routes]]\ntype = \"a\"\nhandler = \"exec\"\n").unwrap();
    let run = ferry_api(&["check-config", "--config", path], &[], dir.path()).expect(2);
    assert!(
        run.stderr.contains("routes[0].command: required"),
        "{run:?}"
    );
    std::fs::write(&config, "").unwrap();
    let run = ferry_api(
        &["check-config", "--config", path],
        &[("FERRY_PORT", "eighty")],
        dir.path(),
    )
    .expect(2);
    assert!(run.stderr.contains("FERRY_PORT"), "{run:?}");
    let missing = dir.path().join("missing.conf");
    let run = ferry_api(
        &["check-config", "--config", missing.to_str().unwrap()],
        &[],
        dir.path(),
    )
    .expect(2);
    assert!(run.stderr.contains("--config: cannot read"), "{run:?}");
    // A password in a bad URL stays masked in the message.
    let run = ferry_api(
        &[
            "check-config",
            "--database-url",
            "mysql://u:Bad-Secret-4@h/db",
        ],
        &[],
        dir.path(),
    )
    .expect(2);
    assert!(!run.stderr.contains("Bad-Secret-4"), "{run:?}");
    assert!(run.stderr.contains("mysql://u:***@h/db"), "{run:?}");
}
