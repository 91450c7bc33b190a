//! Ferry's binaries as processes: where they are, and a handle that kills
//! the process when dropped and shows its log when the test failed.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// The directory of this workspace's binaries: the one the running program
/// was built into (`target/<profile>/`, the parent of a test's `deps/`).
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the running program's path");
    let dir = exe.parent().expect("the program is in a directory");
    if dir.file_name().is_some_and(|name| name == "deps") {
        dir.parent()
            .expect("deps/ is in the profile's directory")
            .to_path_buf()
    } else {
        dir.to_path_buf()
    }
}

/// A binary of this workspace (`ferry-api`, `ferry-worker`), built by
/// `cargo nextest run --workspace` or `cargo build --bins` into the target
/// directory the running program came from. Nextest's `NEXTEST_BIN_EXE_*`
/// wins where it is set.
pub fn bin(name: &str) -> PathBuf {
    let path = std::env::var_os(format!("NEXTEST_BIN_EXE_{name}"))
        .map(PathBuf::from)
        .unwrap_or_else(|| bin_dir().join(name));
    assert!(
        path.exists(),
        "{} is missing: run the tests with `cargo nextest run --workspace` (or `cargo build --bins` first)",
        path.display()
    );
    path
}

/// Runs a binary of this workspace (see [`bin`]) to its end, in the
/// repository root; returns its exit code and what it wrote to stderr.
pub fn run_bin(name: &str, args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String) {
    let out = Command::new(bin(name))
        .args(args)
        .envs(env.iter().copied())
        .current_dir(crate::repo_root())
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("running {name}: {e}"));
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A running process, killed when dropped; its log is printed when the
/// test failed.
#[derive(Debug)]
pub struct Proc {
    /// The process.
    pub child: Child,
    /// A name for messages (e.g. `worker-a`).
    pub name: String,
    /// Where its stdout and stderr go.
    pub log: PathBuf,
}

impl Proc {
    /// Starts `command` with stdin closed and stdout and stderr into `log`.
    pub fn spawn(mut command: Command, name: &str, log: &Path) -> Self {
        let out = std::fs::File::create(log).expect("create the log file");
        let child = command
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("clone the log file"))
            .stderr(out)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {name} ({command:?}): {e}"));
        Self {
            child,
            name: name.into(),
            log: log.into(),
        }
    }

    /// The process id.
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Whether the process has not exited (it is not a zombie yet), as
    /// `/proc/<pid>/stat` says; true where that cannot be read.
    pub fn is_running(&self) -> bool {
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{}/stat", self.pid())) else {
            return true;
        };
        // The state follows the command's name, which is in parentheses.
        let state = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.trim_start().chars().next());
        !matches!(state, Some('Z' | 'X'))
    }

    /// Sends a signal (e.g. "TERM", "KILL").
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([format!("-{signal}"), self.pid().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{signal} {}", self.pid());
    }

    /// Waits for the process to exit, at most `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().expect("wait for the process") {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// Sends TERM and asserts that the process exits cleanly within
    /// `timeout` (its log in the message otherwise).
    pub fn stop(&mut self, timeout: Duration) {
        self.signal("TERM");
        let exit = self.wait_exit(timeout);
        assert!(
            exit.is_some_and(|e| e.success()),
            "{exit:?}\n{}",
            self.log_text()
        );
    }

    /// What the process wrote so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Peak resident memory so far (VmHWM), in MiB, while it runs.
    pub fn peak_rss_mib(&self) -> Option<f64> {
        self.memory_mib("VmHWM:")
    }

    /// Resident memory now (VmRSS), in MiB, while it runs.
    pub fn rss_mib(&self) -> Option<f64> {
        self.memory_mib("VmRSS:")
    }

    /// The `field` (in kB) of `/proc/<pid>/status`, in MiB.
    fn memory_mib(&self, field: &str) -> Option<f64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).ok()?;
        let line = status.lines().find(|l| l.starts_with(field))?;
        let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kib / 1024.0)
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!(
                "----- {} log ({}) -----\n{}",
                self.name,
                self.log.display(),
                self.log_text()
            );
        }
    }
}

/// The TCP sockets of process `pid`: (local port, remote port) of each
/// socket it holds (remote 0 for a listening one), from `/proc/<pid>/fd`
/// and `/proc/<pid>/net/tcp{,6}`. Empty where `/proc` cannot be read.
pub fn tcp_ports(pid: &str) -> Vec<(u16, u16)> {
    let inodes: HashSet<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|fd| std::fs::read_link(fd.path()).ok())
        .filter_map(|link| {
            let link = link.to_string_lossy().into_owned();
            Some(
                link.strip_prefix("socket:[")?
                    .strip_suffix(']')?
                    .to_string(),
            )
        })
        .collect();
    let port = |addr: &str| u16::from_str_radix(addr.rsplit_once(':')?.1, 16).ok();
    ["tcp", "tcp6"]
        .iter()
        .filter_map(|t| std::fs::read_to_string(format!("/proc/{pid}/net/{t}")).ok())
        .flat_map(|text| {
            text.lines()
                .skip(1)
                .filter_map(|line| {
                    let f: Vec<&str> = line.split_whitespace().collect();
                    if !inodes.contains(*f.get(9)?) {
                        return None;
                    }
                    Some((port(f.get(1)?)?, port(f.get(2)?)?))
                })
                .collect::<Vec<_>>()
        })
        .collect()
}
