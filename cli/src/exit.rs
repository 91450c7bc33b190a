//! The exit codes `ferry` promises to scripts.

use std::process::ExitCode;

/// What `ferry` exits with; `ferry --help` and the README list them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// The command did what it was asked; a task followed to its end
    /// succeeded (or, without following, is not failed or cancelled).
    Ok = 0,
    /// The task failed.
    Failed = 1,
    /// A usage error: bad flags (clap's own exit code), an unreadable file,
    /// a bad `--url`.
    Usage = 2,
    /// The task was cancelled.
    Cancelled = 3,
    /// `--timeout` passed before the task was final.
    TimedOut = 4,
    /// The API refused the request (4xx): its `{error, message}` is printed.
    Refused = 5,
    /// The API cannot be reached, or failed (5xx).
    Unreachable = 6,
}

impl Exit {
    /// The exit code of a task in `status`.
    pub fn of_status(status: &str) -> Self {
        match status {
            "failed" => Self::Failed,
            "cancelled" => Self::Cancelled,
            _ => Self::Ok,
        }
    }

    /// The worse of two outcomes, for commands that follow several tasks:
    /// a failed task outweighs a cancelled one.
    pub fn worst(self, other: Self) -> Self {
        let rank = |e: Self| match e {
            Self::Ok => 0,
            Self::Cancelled => 1,
            Self::Failed => 2,
            _ => 3,
        };
        if rank(other) > rank(self) {
            other
        } else {
            self
        }
    }
}

impl From<Exit> for ExitCode {
    fn from(exit: Exit) -> Self {
        ExitCode::from(exit as u8)
    }
}

/// The table `ferry --help` ends with.
pub const HELP: &str = "\
Exit codes:
  0  success; a task followed to its end (--wait, --watch) succeeded
  1  the task failed
  2  usage error (bad flags or arguments, an unreadable FILE, a bad --url)
  3  the task was cancelled
  4  --timeout passed before the task was final
  5  the API refused the request (4xx); its error and message are printed
  6  the API cannot be reached, or failed (5xx)

`ferry status ID` without --watch exits 1 or 3 for a failed or cancelled
task, and 0 for any other status.

Environment: FERRY_URL (--url), FERRY_TOKEN (--token).";
