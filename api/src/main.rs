//! `ferry-api`: the HTTP API, or with `--standalone` all of Ferry in one
//! process. `ferry-api hash-token` prints the `[[tokens]]` entry of a token.

use std::io::{IsTerminal, Read as _};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use ferry_core::cli::CommonArgs;
use ferry_core::tokens::{config_entry, hash_token, is_b64token, is_valid_name, Scope};
use rand::RngCore as _;

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

#[rocket::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    if let Some(Command::HashToken(hash)) = args.command {
        return hash_token_command(hash);
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
