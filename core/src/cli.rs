//! Command-line flags shared by `ferry-api` and `ferry-worker`.

use std::path::PathBuf;

use crate::config::{Config, ConfigError, Layer};

/// Command-line flags shared by `ferry-api` and `ferry-worker`; each one
/// overrides `server.conf` and the environment.
#[derive(Debug, Clone, clap::Args)]
pub struct CommonArgs {
    /// Path of the configuration file [default: ./server.conf, if it exists].
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Database URL (`sqlite://PATH` or `postgres://…`).
    #[arg(long)]
    pub database_url: Option<String>,
    /// RabbitMQ URL.
    #[arg(long)]
    pub broker_url: Option<String>,
    /// Queue name.
    #[arg(long)]
    pub queue: Option<String>,
    /// Task slots of this process's worker: tasks run at once, and its prefetch.
    #[arg(long)]
    pub concurrency: Option<usize>,
    /// Of those, `exec` commands run at once by this process's worker.
    #[arg(long)]
    pub exec_concurrency: Option<usize>,
    /// How log lines are written: `text` or `json` (one object a line).
    #[arg(long, value_enum)]
    pub log_format: Option<crate::logging::LogFormat>,
}

impl CommonArgs {
    /// Loads the file (required only when `--config` was given), the
    /// environment, then these flags, and checks the result once.
    pub fn load(&self) -> Result<Config, ConfigError> {
        let file = Config::read_file(self.config.as_deref())?;
        let flags = Layer {
            database_url: self.database_url.clone(),
            broker_url: self.broker_url.clone(),
            queue: self.queue.clone(),
            concurrency: self.concurrency,
            exec_concurrency: self.exec_concurrency,
            log_format: self.log_format,
            ..Layer::default()
        };
        Config::from_layers(&file, |name| std::env::var(name).ok(), flags)
    }
}
