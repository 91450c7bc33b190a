//! `ferry-api`: the HTTP API, or with `--standalone` all of Ferry in one
//! process. `ferry-api hash-token` prints the `[[tokens]]` entry of a token;
//! `ferry-api migrate` applies the database migrations and exits;
//! `ferry-api check-config` checks the configuration and prints it, its
//! secrets masked.

use std::io::{IsTerminal, Read as _};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use ferry_core::cli::CommonArgs;
use ferry_core::config::DEFAULT_CONFIG_FILE;
use ferry_core::logging::{redact_url, Scrubber};
use ferry_core::tokens::{config_entry, hash_token, is_b64token, is_valid_name, Scope};
use ferry_core::{Config, Db};
use rand::RngCore as _;

/// mimalloc, not glibc's malloc: a request's many short-lived allocations
/// (hyper, Rocket, serde_json) cost less CPU (BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Receives events as tasks and reports their status.
#[derive(Debug, Parser)]
#[command(version, about, args_conflicts_with_subcommands = true)]
struct Args {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    common: CommonArgs,
    /// Run everything in this process: SQLite, an in-process queue and
    /// in-process workers. Nothing else is needed.
    #[cfg(feature = "standalone")]
    #[arg(long)]
    standalone: bool,
    /// Port to listen on.
    #[arg(long)]
    port: Option<u16>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print the server.conf `[[tokens]]` entry of a token.
    ///
    /// The token is read from stdin, or made with --generate and then
    /// written once, alone on a line, to stderr. Only its SHA-256 goes into
    /// the entry, on stdout.
    HashToken(HashToken),
    /// Apply the database migrations, print which ran, and exit.
    ///
    /// The server applies them itself at start; this is for deployments
    /// that migrate as a step of their own. Exit 0 when the database is up
    /// to date, 1 when it cannot be reached or a migration fails, 2 for a
    /// bad configuration.
    Migrate(ConfigArgs),
    /// Load the configuration as the server would (file, FERRY_*
    /// environment, flags), check it, and print it as TOML.
    ///
    /// Every key is written out, defaults included; the passwords of URLs
    /// are masked as ***. Exit 0 for a good configuration, 2 for a bad one
    /// (with the key and what is wrong on stderr).
    CheckConfig(CheckConfig),
}

#[derive(Debug, clap::Args)]
struct ConfigArgs {
    #[command(flatten)]
    common: CommonArgs,
}

#[derive(Debug, clap::Args)]
struct CheckConfig {
    #[command(flatten)]
    common: CommonArgs,
    /// Port to listen on, as `ferry-api --port` would.
    #[arg(long)]
    port: Option<u16>,
}

#[derive(Debug, clap::Args)]
struct HashToken {
    /// Make a new random token (32 bytes, 64 hex digits) instead of
    /// reading one from stdin.
    #[arg(long)]
    generate: bool,
    /// Who holds the token, for logs and error messages.
    #[arg(long, default_value = "client")]
    name: String,
    /// What the token may do (repeat, or separate with commas): submit
    /// (POST /receive), read (GET /status, /tasks), admin (cancel, retry,
    /// and everything else).
    #[arg(long = "scope", required = true, value_delimiter = ',', value_parser = parse_scope)]
    scopes: Vec<Scope>,
}

fn parse_scope(name: &str) -> Result<Scope, String> {
    Scope::parse(name).ok_or_else(|| format!("{name:?} is not a scope (submit, read, admin)"))
}

/// `ferry-api hash-token`: the entry on stdout; exit 2 for a bad token or name.
fn hash_token_command(args: HashToken) -> ExitCode {
    if !is_valid_name(&args.name) {
        eprintln!(
            "ferry-api: --name {:?} must be 1 to 64 letters, digits, '-', '_' or '.'",
            args.name
        );
        return ExitCode::from(2);
    }
    let token = if args.generate {
        let mut bytes = [0u8; 32];
        rand::rng().fill_bytes(&mut bytes);
        bytes.iter().map(|b| format!("{b:02x}")).collect::<String>()
    } else {
        if std::io::stdin().is_terminal() {
            eprintln!("ferry-api: type the token, then Ctrl-D");
        }
        let mut text = String::new();
        if let Err(e) = std::io::stdin().read_to_string(&mut text) {
            eprintln!("ferry-api: cannot read the token from stdin: {e}");
            return ExitCode::from(2);
        }
        let token = text.trim().to_string();
        if !is_b64token(&token) {
            eprintln!(
                "ferry-api: the token on stdin must be one word of letters, digits and -._~+/ \
                 (then = padding), as an Authorization: Bearer header carries it"
            );
            return ExitCode::from(2);
        }
        token
    };
    print!(
        "{}",
        config_entry(&args.name, &hash_token(&token), &args.scopes)
    );
    if args.generate {
        // Not kept anywhere: this is the only time it is shown.
        eprintln!("{token}");
    }
    ExitCode::SUCCESS
}

/// The configuration, or the message and exit code 2 of a bad one.
fn load_config(common: &CommonArgs) -> Result<Config, ExitCode> {
    common.load().map_err(|e| {
        eprintln!("ferry-api: bad configuration: {e}");
        ExitCode::from(2)
    })
}

/// `ferry-api migrate`: the migrations that ran on stdout.
async fn migrate_command(args: ConfigArgs) -> ExitCode {
    let config = match load_config(&args.common) {
        Ok(config) => config,
        Err(code) => return code,
    };
    let scrubber = Scrubber::for_urls([config.database_url.as_str()]);
    let masked = redact_url(&config.database_url);
    let url = config.database_url.clone();
    let migrating = tokio::task::spawn_blocking(move || Db::connect(&url, 1)?.migrate()).await;
    match migrating {
        Ok(Ok(applied)) => {
            for name in &applied {
                println!("applied {name}");
            }
            match applied.len() {
                0 => println!("{masked}: up to date, no migration to apply"),
                n => println!("{masked}: {n} migration(s) applied, up to date"),
            }
            ExitCode::SUCCESS
        }
        Ok(Err(e)) => {
            let cause = scrubber.scrub(&e.to_string());
            eprintln!("ferry-api: cannot migrate {masked}: {cause}");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("ferry-api: cannot migrate {masked}: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `ferry-api check-config`: the effective configuration on stdout.
fn check_config_command(args: CheckConfig) -> ExitCode {
    let mut config = match load_config(&args.common) {
        Ok(config) => config,
        Err(code) => return code,
    };
    if let Some(port) = args.port {
        config.port = port;
    }
    let file = match &args.common.config {
        Some(path) => path.display().to_string(),
        None if std::path::Path::new(DEFAULT_CONFIG_FILE).exists() => DEFAULT_CONFIG_FILE.into(),
        None => "none (defaults)".into(),
    };
    println!("# The effective configuration: file {file}, then FERRY_* variables, then flags.");
    println!("# Passwords in URLs are masked as ***.");
    print!("{}", config.to_masked_toml());
    if config.routes.is_empty() {
        eprintln!("ferry-api: note: no [[routes]]: every event will be refused with 422");
    }
    if config.tokens.is_empty() {
        eprintln!("ferry-api: note: no [[tokens]]: the API is open to anyone who can reach it");
    }
    ExitCode::SUCCESS
}

#[rocket::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    match args.command {
        Some(Command::HashToken(hash)) => return hash_token_command(hash),
        Some(Command::Migrate(migrate)) => return migrate_command(migrate).await,
        Some(Command::CheckConfig(check)) => return check_config_command(check),
        None => {}
    }
    let mut config = match args.common.load() {
        Ok(config) => config,
        Err(e) => {
            eprintln!("ferry-api: bad configuration: {e}");
            return ExitCode::from(2);
        }
    };
    if let Some(port) = args.port {
        config.port = port;
    }
    let scrubber = ferry_core::init_logging(&config);
    let format = config.log_format;
    if config.routes.is_empty() {
        tracing::warn!("no [[routes]] configured: every event will be refused with 422");
    }
    #[cfg(feature = "standalone")]
    let standalone = args.standalone;
    #[cfg(not(feature = "standalone"))]
    let standalone = false;
    let shutdown = ferry_core::runtime::shutdown_on_signals();
    match ferry_api::serve(config, standalone, shutdown).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            ferry_core::logging::fatal("ferry-api", format, &scrubber, &format!("{e:#}"));
            ExitCode::FAILURE
        }
    }
}
