//! `ferry`: the command-line client of Ferry's HTTP API. It submits events,
//! shows and follows tasks, lists and counts them, cancels and retries
//! them, over the API alone (no database access), with exit codes a script
//! can use (`exit.rs`).
//!
//! - `client.rs`: the API's URL and token, JSON answers, failures sorted
//!   into exit codes;
//! - `follow.rs`: following a task to its end over its event stream, with a
//!   spinner on stderr when it is a terminal;
//! - `show.rs`: tables and task details for a person (`--json` prints the
//!   API's own documents).

mod client;
mod exit;
mod follow;
mod show;

use std::io::Read as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use tokio::time::Instant;

use crate::client::{Client, Failure};
use crate::exit::Exit;
use crate::follow::{follow, Followed, Spinner};

/// The command-line client of Ferry's HTTP API.
#[derive(Debug, Parser)]
#[command(name = "ferry", version, about, after_help = exit::HELP)]
struct Cli {
    /// The API's base URL.
    #[arg(
        long,
        env = "FERRY_URL",
        default_value = "http://localhost:8069",
        global = true
    )]
    url: String,
    /// A bearer token, sent as `Authorization: Bearer <token>`.
    #[arg(long, env = "FERRY_TOKEN", hide_env_values = true, global = true)]
    token: Option<String>,
    /// Print the API's JSON (one document per command) instead of text.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

/// How long to follow a task: `--wait`/`--watch` with `--timeout`.
#[derive(Debug, Clone, clap::Args)]
struct Wait {
    /// Give up following after this long (`30s`, `5m`, `1h`): exit 4.
    #[arg(long, value_parser = parse_duration)]
    timeout: Option<Duration>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Submit the event(s) in FILE (`-` for stdin) and print the task id(s).
    ///
    /// A JSON object is one event (CloudEvents 1.0 or 0.1, structured); a
    /// JSON array is a batch, one task per event.
    Submit {
        /// The event file, or `-` for stdin.
        file: PathBuf,
        /// Follow the task(s) until final; the exit code says how they ended.
        #[arg(long)]
        wait: bool,
        #[command(flatten)]
        limit: Wait,
    },
    /// Show a task; with --watch, follow it until it is final.
    Status {
        /// The task id.
        id: String,
        /// Follow the task until final (over its event stream; no polling).
        #[arg(long)]
        watch: bool,
        #[command(flatten)]
        limit: Wait,
    },
    /// List tasks, newest first, one page (see --limit and --cursor).
    Tasks {
        /// Only tasks in this status (repeat, or separate with commas).
        #[arg(long, value_delimiter = ',')]
        status: Vec<String>,
        /// Only tasks of this event type.
        #[arg(long = "type")]
        event_type: Option<String>,
        /// Only tasks of this event source.
        #[arg(long)]
        source: Option<String>,
        /// Only tasks created after this RFC 3339 time.
        #[arg(long)]
        created_after: Option<String>,
        /// Only tasks created before this RFC 3339 time.
        #[arg(long)]
        created_before: Option<String>,
        /// Tasks per page, 1 to 500 [API default: 50].
        #[arg(long)]
        limit: Option<u32>,
        /// Where the page starts: the cursor a previous page printed.
        #[arg(long)]
        cursor: Option<String>,
    },
    /// Cancel a task (a running one is stopped by its worker).
    Cancel {
        /// The task id.
        id: String,
        /// Follow the task until final; the exit code says how it ended.
        #[arg(long)]
        wait: bool,
        #[command(flatten)]
        limit: Wait,
    },
    /// Run a failed or cancelled task again.
    Retry {
        /// The task id.
        id: String,
        /// Follow the task until final; the exit code says how it ended.
        #[arg(long)]
        wait: bool,
        #[command(flatten)]
        limit: Wait,
    },
    /// Count tasks by status, overall and per type.
    Stats,
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text).map_err(|e| format!("{text:?} is not a duration ({e})"))
}

/// Where a command's output goes: text for a person, or the API's JSON.
#[derive(Debug, Clone, Copy)]
struct Out {
    json: bool,
}

impl Out {
    /// Prints `text` for a person, or `document` with --json.
    fn print(self, document: &Value, text: impl FnOnce() -> String) {
        if self.json {
            println!("{document}");
        } else {
            print!("{}", text());
        }
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let out = Out { json: cli.json };
    let exit = match Client::new(&cli.url, cli.token.clone()) {
        Ok(client) => run(&client, cli.command, out).await,
        Err(failure) => Err(failure),
    };
    match exit {
        Ok(exit) => exit.into(),
        Err(failure) => {
            if let (true, Some(body)) = (out.json, failure.body()) {
                if body.is_object() {
                    println!("{body}");
                }
            }
            eprintln!("ferry: {}", failure.message());
            failure.exit().into()
        }
    }
}

async fn run(client: &Client, command: Command, out: Out) -> Result<Exit, Failure> {
    let needs = match &command {
        Command::Submit { wait, limit, .. }
        | Command::Cancel { wait, limit, .. }
        | Command::Retry { wait, limit, .. } => {
            (!wait && limit.timeout.is_some()).then_some("--wait")
        }
        Command::Status { watch, limit, .. } => {
            (!watch && limit.timeout.is_some()).then_some("--watch")
        }
        _ => None,
    };
    if let Some(flag) = needs {
        return Err(Failure::Usage(format!(
            "--timeout limits {flag}: give both"
        )));
    }
    match command {
        Command::Submit { file, wait, limit } => submit(client, &file, wait, &limit, out).await,
        Command::Status { id, watch, limit } => {
            if watch {
                let views = follow_all(client, &[id], &limit).await?;
                Ok(report(views, out, false))
            } else {
                let view = client
                    .send(client.request(Method::GET, client.url(&["status", &id])))
                    .await?
                    .body;
                out.print(&view, || show::task(&view));
                Ok(Exit::of_status(view["status"].as_str().unwrap_or_default()))
            }
        }
        Command::Tasks {
            status,
            event_type,
            source,
            created_after,
            created_before,
            limit,
            cursor,
        } => {
            let mut url = client.url(&["tasks"]);
            {
                let mut query = url.query_pairs_mut();
                for status in &status {
                    query.append_pair("status", status);
                }
                let pairs = [
                    ("type", event_type),
                    ("source", source),
                    ("created_after", created_after),
                    ("created_before", created_before),
                    ("limit", limit.map(|n| n.to_string())),
                    ("cursor", cursor),
                ];
                for (key, value) in pairs {
                    if let Some(value) = value {
                        query.append_pair(key, &value);
                    }
                }
            }
            if url.query() == Some("") {
                url.set_query(None);
            }
            let page = client.send(client.request(Method::GET, url)).await?.body;
            let empty = page["tasks"].as_array().is_none_or(Vec::is_empty);
            if out.json || !empty {
                out.print(&page, || show::tasks(&page));
            }
            if !out.json {
                if empty {
                    eprintln!("no tasks");
                }
                if let Some(next) = page["next"].as_str() {
                    let cursor = client
                        .join(next)?
                        .query_pairs()
                        .find(|(k, _)| k == "cursor")
                        .map(|(_, v)| v.into_owned());
                    if let Some(cursor) = cursor {
                        eprintln!("more: add --cursor {cursor}");
                    }
                }
            }
            Ok(Exit::Ok)
        }
        Command::Cancel { id, wait, limit } => {
            let url = client.url(&["tasks", &id, "cancel"]);
            let answer = client.send(client.request(Method::POST, url)).await?;
            if wait {
                let views = follow_all(client, &[id], &limit).await?;
                return Ok(report(views, out, false));
            }
            out.print(&answer.body, || {
                if answer.status == StatusCode::ACCEPTED {
                    format!("{id} is running: its worker was told to stop it\n")
                } else {
                    format!("{id} cancelled\n")
                }
            });
            Ok(Exit::Ok)
        }
        Command::Retry { id, wait, limit } => {
            let url = client.url(&["tasks", &id, "retry"]);
            let answer = client.send(client.request(Method::POST, url)).await?;
            if wait {
                let views = follow_all(client, &[id], &limit).await?;
                return Ok(report(views, out, false));
            }
            out.print(&answer.body, || {
                format!(
                    "{id} is pending again (up to {} attempts in all)\n",
                    answer.body["max_attempts"]
                )
            });
            Ok(Exit::Ok)
        }
        Command::Stats => {
            let url = client.url(&["tasks", "counts"]);
            let counts = client.send(client.request(Method::GET, url)).await?.body;
            out.print(&counts, || show::counts(&counts));
            Ok(Exit::Ok)
        }
    }
}

/// `ferry submit`: POST /receive with the file's bytes.
async fn submit(
    client: &Client,
    file: &std::path::Path,
    wait: bool,
    limit: &Wait,
    out: Out,
) -> Result<Exit, Failure> {
    let body = if file.as_os_str() == "-" {
        let mut body = Vec::new();
        std::io::stdin()
            .read_to_end(&mut body)
            .map_err(|e| Failure::Usage(format!("cannot read the event from stdin: {e}")))?;
        body
    } else {
        std::fs::read(file)
            .map_err(|e| Failure::Usage(format!("cannot read {}: {e}", file.display())))?
    };
    let batch = body.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'[');
    let content_type = if batch {
        "application/cloudevents-batch+json"
    } else {
        "application/json"
    };
    let request = client
        .request(Method::POST, client.url(&["receive"]))
        .header("content-type", content_type)
        .body(body);
    let answer = client.send(request).await?.body;
    let ids: Vec<String> = if batch {
        answer["tasks"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|t| t["id"].as_str().map(String::from))
            .collect()
    } else {
        answer["id"]
            .as_str()
            .map(String::from)
            .into_iter()
            .collect()
    };
    if !wait {
        out.print(&answer, || ids.iter().map(|id| format!("{id}\n")).collect());
        return Ok(Exit::Ok);
    }
    if !out.json {
        // The ids first, before the wait, so that they are known even if
        // the wait is interrupted.
        for id in &ids {
            println!("{id}");
        }
    }
    let views = follow_all(client, &ids, limit).await?;
    Ok(report(views, out, batch))
}

/// Follows each task in turn until final, all within one `--timeout`.
async fn follow_all(
    client: &Client,
    ids: &[String],
    limit: &Wait,
) -> Result<Vec<Followed>, Failure> {
    let deadline = limit.timeout.map(|t| Instant::now() + t);
    let spinner = Spinner::new();
    let mut views = Vec::with_capacity(ids.len());
    for id in ids {
        let followed = follow(client, id, deadline, &spinner).await;
        let timed_out = matches!(followed, Ok(Followed::TimedOut(_)));
        match followed {
            Ok(followed) => views.push(followed),
            Err(failure) => {
                spinner.clear();
                return Err(failure);
            }
        }
        if timed_out {
            break;
        }
    }
    spinner.clear();
    Ok(views)
}

/// Prints followed tasks (one view, or `{"tasks": [...]}` for a batch) and
/// returns the exit code of the worst ending.
fn report(views: Vec<Followed>, out: Out, batch: bool) -> Exit {
    let mut exit = Exit::Ok;
    let mut timed_out = false;
    let mut documents = Vec::new();
    for followed in views {
        let view = match followed {
            Followed::Final(view) => {
                exit = exit.worst(Exit::of_status(view["status"].as_str().unwrap_or_default()));
                view
            }
            Followed::TimedOut(view) => {
                timed_out = true;
                let view = view.unwrap_or(Value::Null);
                eprintln!(
                    "ferry: timed out waiting for task {}, still {}",
                    view["id"].as_str().unwrap_or("?"),
                    view["status"].as_str().unwrap_or("unknown")
                );
                view
            }
        };
        if !out.json && !view.is_null() {
            if !documents.is_empty() {
                println!();
            }
            print!("{}", show::task(&view));
        }
        documents.push(view);
    }
    if out.json {
        let document = if batch {
            json!({ "tasks": documents })
        } else {
            documents.pop().unwrap_or(Value::Null)
        };
        println!("{document}");
    }
    if timed_out {
        Exit::TimedOut
    } else {
        exit
    }
}
