//! Running the built `ferry` binary against a real `ferry-api`.

#![allow(dead_code)] // each test binary uses a part of this

use std::path::Path;
use std::process::Stdio;

use serde_json::Value;
use tokio::io::AsyncWriteExt as _;

/// How one run of a binary ended.
#[derive(Debug)]
pub struct Run {
    /// The exit code.
    pub code: i32,
    /// What it wrote to stdout.
    pub stdout: String,
    /// What it wrote to stderr.
    pub stderr: String,
}

impl Run {
    /// Asserts the exit code, showing both outputs when it differs.
    pub fn expect(self, code: i32) -> Self {
        assert_eq!(
            self.code, code,
            "exit code {} (expected {code})\nstdout:\n{}\nstderr:\n{}",
            self.code, self.stdout, self.stderr
        );
        self
    }

    /// Stdout as the one JSON document it must be.
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not one JSON document ({e}):\n{}", self.stdout))
    }

    /// The first line of stdout.
    pub fn first_line(&self) -> &str {
        self.stdout.lines().next().unwrap_or_default()
    }
}

/// Runs `ferry` with `args` against the API at `url` (no token unless
/// `env` sets one), with `stdin` as its standard input.
pub async fn ferry_with(url: &str, args: &[&str], env: &[(&str, &str)], stdin: &[u8]) -> Run {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_ferry"));
    command
        .args(args)
        .env("FERRY_URL", url)
        .env_remove("FERRY_TOKEN")
        .envs(env.iter().copied())
        .current_dir(ferry_testkit::repo_root())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command.spawn().expect("start ferry");
    let mut input = child.stdin.take().expect("a stdin pipe");
    input.write_all(stdin).await.expect("write ferry's stdin");
    drop(input);
    let out = child.wait_with_output().await.expect("run ferry");
    Run {
        code: out.status.code().expect("ferry exited, not killed"),
        stdout: String::from_utf8(out.stdout).expect("UTF-8 stdout"),
        stderr: String::from_utf8(out.stderr).expect("UTF-8 stderr"),
    }
}

/// Runs `ferry` with `args` against the API at `url`.
pub async fn ferry(url: &str, args: &[&str]) -> Run {
    ferry_with(url, args, &[], b"").await
}

/// Runs `ferry-api` with `args` (from the repository root) to its end.
pub fn ferry_api(args: &[&str], env: &[(&str, &str)], dir: &Path) -> Run {
    let out = std::process::Command::new(ferry_testkit::bin("ferry-api"))
        .args(args)
        .env_remove("FERRY_DATABASE_URL")
        .env_remove("FERRY_BROKER_URL")
        .envs(env.iter().copied())
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .expect("run ferry-api");
    Run {
        code: out.status.code().expect("ferry-api exited, not killed"),
        stdout: String::from_utf8(out.stdout).expect("UTF-8 stdout"),
        stderr: String::from_utf8(out.stderr).expect("UTF-8 stderr"),
    }
}

/// A file in a temporary directory holding `text`.
pub fn event_file(dir: &Path, name: &str, event: &Value) -> String {
    let path = dir.join(name);
    std::fs::write(&path, event.to_string()).expect("write the event file");
    path.display().to_string()
}

/// Whether `text` is a task id.
pub fn is_uuid(text: &str) -> bool {
    text.len() == 36
        && text.chars().enumerate().all(|(i, c)| {
            matches!(i, 8 | 13 | 18 | 23) == (c == '-') && (c == '-' || c.is_ascii_hexdigit())
        })
}
