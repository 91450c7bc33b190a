//! Logs: `tracing` to stderr, as text (colour only on a terminal) or as
//! JSON lines, and never a secret. Passwords of the database and broker URLs
//! are masked where Ferry prints a URL ([`redact_url`]), and every line is
//! also scrubbed of them on its way out ([`Scrubber`]), so that a library
//! error that quotes a URL or a password cannot leak it either.

use std::io::{IsTerminal, Write};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// How log lines are written (`log_format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One human-readable line per event; coloured only when stderr is a
    /// terminal.
    #[default]
    Text,
    /// One JSON object per line: `timestamp`, `level`, `target`, the event's
    /// fields (`message`, …) and `spans` (the task or request it is about).
    Json,
}

impl std::str::FromStr for LogFormat {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "text" => Ok(Self::Text),
            "json" => Ok(Self::Json),
            _ => Err("expected \"text\" or \"json\"".into()),
        }
    }
}

/// What stands for a masked secret.
pub const MASK: &str = "***";

/// Secrets shorter than this are masked only inside their URL: scrubbing
/// every occurrence of a two-letter password would mangle every line.
const MIN_SCRUBBED_LEN: usize = 4;

/// `url` with the password of its user info replaced by `***`
/// (`postgres://u:***@h/db`). A URL without a password is unchanged.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    // The last `@` ends the user info: a password may hold an unencoded `@`
    // (masking too much is the safe way to be wrong).
    let Some((userinfo, host)) = rest.rsplit_once('@') else {
        return url.to_string();
    };
    match userinfo.split_once(':') {
        Some((user, _)) => format!("{scheme}://{user}:{MASK}@{host}"),
        None => url.to_string(),
    }
}

/// The secrets of `url` that must never be printed: its password, as
/// written and percent-decoded, and the whole URL.
pub fn url_secrets(url: &str) -> Vec<String> {
    let mut secrets = Vec::new();
    let password = url
        .split_once("://")
        .and_then(|(_, rest)| rest.rsplit_once('@'))
        .and_then(|(userinfo, _)| userinfo.split_once(':'))
        .map(|(_, password)| password);
    if let Some(password) = password.filter(|p| !p.is_empty()) {
        secrets.push(url.to_string());
        secrets.push(password.to_string());
        let decoded = percent_decode(password);
        if decoded != password {
            secrets.push(decoded);
        }
    }
    secrets
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Replaces every secret in `text` with `***`: whole URLs by their
/// redacted form first, then bare passwords (of at least 4 characters), in
/// every way a log line may have escaped them.
#[derive(Debug, Clone, Default)]
pub struct Scrubber {
    /// (what to find, what to write instead), longest first.
    replacements: Arc<Vec<(String, String)>>,
}

impl Scrubber {
    /// A scrubber for the secrets of these URLs.
    pub fn for_urls<'a>(urls: impl IntoIterator<Item = &'a str>) -> Self {
        let mut replacements = Vec::new();
        for url in urls {
            let secrets = url_secrets(url);
            for secret in &secrets {
                let masked = if secret == url {
                    redact_url(url)
                } else if secret.chars().count() >= MIN_SCRUBBED_LEN {
                    MASK.to_string()
                } else {
                    continue;
                };
                // As written, as `{:?}` writes it, and as JSON writes it.
                let debug = format!("{secret:?}");
                let json = serde_json::to_string(secret).unwrap_or_default();
                for form in [
                    secret.clone(),
                    debug[1..debug.len() - 1].to_string(),
                    json[1..json.len().saturating_sub(1)].to_string(),
                ] {
                    if !form.is_empty() {
                        replacements.push((form, masked.clone()));
                    }
                }
            }
        }
        // Longest first (a URL before the password inside it); equal ones
        // next to each other for dedup.
        replacements.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then_with(|| a.cmp(b)));
        replacements.dedup();
        Self {
            replacements: Arc::new(replacements),
        }
    }

    /// `text` without the secrets.
    pub fn scrub(&self, text: &str) -> String {
        let mut text = text.to_string();
        for (secret, masked) in self.replacements.iter() {
            if text.contains(secret.as_str()) {
                text = text.replace(secret.as_str(), masked);
            }
        }
        text
    }
}

/// Sets up logging to stderr in `format`, filtered by `RUST_LOG` (default
/// `info`), with every line scrubbed by `scrubber`; a panic is logged
/// through it too (scrubbed, and in the chosen format).
///
/// Rocket logs a request it cannot route or a client that hangs up mid-body
/// as an ERROR, and its launch as a WARN. Neither is the server's error, and
/// Ferry logs its own start and stop (and a launch failure is returned, not
/// only logged), so Rocket is quiet unless `RUST_LOG` names it.
pub fn init(format: LogFormat, scrubber: Scrubber) {
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    let wanted = std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into());
    let mut directives = wanted.clone();
    if !wanted.contains("rocket") {
        directives.push_str(",rocket=off");
    }
    if !wanted.contains("lapin") {
        directives.push_str(",lapin=warn");
    }
    let filter = tracing_subscriber::EnvFilter::try_new(&directives)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Rocket's generated route code logs each failed request guard (a
    // missing token, say) as a WARN under the route's module (`…::_`): the
    // client's mistake, answered with a 4xx, so quiet unless asked for.
    let quiet_guards = !wanted.contains("rocket");
    let guards = tracing_subscriber::filter::filter_fn(move |meta| {
        !(quiet_guards && meta.target().ends_with("::_"))
    });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(scrubber.clone());
    let installed = match format {
        LogFormat::Text => builder
            .with_ansi(std::io::stderr().is_terminal())
            .finish()
            .with(guards)
            .try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(true)
            .finish()
            .with(guards)
            .try_init(),
    };
    if installed.is_ok() {
        std::panic::set_hook(Box::new(|info| {
            let location = info
                .location()
                .map(|l| format!("{}:{}", l.file(), l.line()))
                .unwrap_or_default();
            let payload = info
                .payload()
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| info.payload().downcast_ref::<String>().cloned())
                .unwrap_or_default();
            tracing::error!(panic = %payload, location, "panicked");
        }));
    }
}

/// A process's last words, `binary: message` on stderr, scrubbed; with JSON
/// logs, an ERROR line in JSON like every other line.
pub fn fatal(binary: &str, format: LogFormat, scrubber: &Scrubber, message: &str) {
    match format {
        LogFormat::Text => eprintln!("{binary}: {}", scrubber.scrub(message)),
        LogFormat::Json => tracing::error!(error = %message, "{binary} stopped"),
    }
}

/// One log line on its way to stderr: written whole, scrubbed, when dropped.
#[derive(Debug)]
pub struct ScrubbedLine {
    buffer: Vec<u8>,
    scrubber: Scrubber,
}

impl Write for ScrubbedLine {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.buffer.extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for ScrubbedLine {
    fn drop(&mut self) {
        if self.buffer.is_empty() {
            return;
        }
        let text = String::from_utf8_lossy(&self.buffer);
        let _ = std::io::stderr().write_all(self.scrubber.scrub(&text).as_bytes());
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Scrubber {
    type Writer = ScrubbedLine;

    fn make_writer(&'a self) -> Self::Writer {
        ScrubbedLine {
            buffer: Vec::new(),
            scrubber: self.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_lose_their_password() {
        assert_eq!(
            redact_url("postgres://u:secret@h:5432/db"),
            "postgres://u:***@h:5432/db"
        );
        assert_eq!(
            redact_url("amqp://guest:p@ss@h/%2f"),
            "amqp://guest:***@h/%2f"
        );
        assert_eq!(redact_url("postgres://u@h/db"), "postgres://u@h/db");
        assert_eq!(redact_url("sqlite://ferry.db"), "sqlite://ferry.db");
        assert_eq!(redact_url("not a url"), "not a url");
    }

    #[test]
    fn lines_lose_every_form_of_the_secret() {
        let scrubber = Scrubber::for_urls([
            "postgres://u:s%40cret\"x@h/db",
            "amqp://guest:ab@h/%2f",
            "sqlite://x.db",
        ]);
        let line = "connect postgres://u:s%40cret\"x@h/db failed: token \"s%40cret\\\"x\" s@cret\"x s%40cret\"x; amqp://guest:ab@h/%2f";
        let scrubbed = scrubber.scrub(line);
        assert!(!scrubbed.contains("cret"), "{scrubbed}");
        assert!(scrubbed.contains("postgres://u:***@h/db"), "{scrubbed}");
        // A two-letter password is masked in its URL only.
        assert!(scrubbed.contains("amqp://guest:***@h/%2f"), "{scrubbed}");
        assert_eq!(scrubber.scrub("nothing secret"), "nothing secret");
    }

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("a%40b%2"), "a@b%2");
        assert_eq!(percent_decode("%zz"), "%zz");
    }
}
