//! The command line: parse arguments, call the library, print for people or as JSON. One file
//! per command group (`check`, `history`, `hub`, `init`, `state`); `run` and `plan` are here,
//! their output in `output`, the JSON shapes in `json`, the terminal's progress bar in
//! `progress`.

/// A line to stdout. A closed stdout (`backflow run | head -1`) stops the printing, never the
/// run: the other syncs still run and commit, and the exit code still says how they went.
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

/// A line to stderr (errors, in text mode): never a panic when stderr is closed either.
macro_rules! err {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

mod check;
mod history;
mod hub;
mod init;
pub mod json;
mod output;
mod progress;
mod state;

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};

use crate::history::RunStatus;
use crate::project::{Project, RunTarget};
use crate::selection::Selection;
use crate::sync::{self, RunOptions};
use json::{Record, RunResults, SyncRecord};

/// backflow keeps the tools your teams use in sync with data defined in SQL.
///
/// A project is a folder with `backflow.toml` (sources, segments, destinations and syncs) and
/// `models/*.sql` (one SELECT per file, named after the file). Each run sends only what changed
/// since the last one: new and changed rows, and for mirror syncs the rows that left the model.
///
/// Start with `backflow init my-project`, then `backflow run --project my-project`.
#[derive(Debug, Parser)]
#[command(name = "backflow", version, about, long_about)]
pub struct Cli {
    /// The project folder (holding backflow.toml).
    #[arg(
        long,
        short = 'p',
        global = true,
        default_value = ".",
        value_name = "DIR"
    )]
    pub project: PathBuf,

    /// Log detail: -v for info, -vv for debug (or set RUST_LOG).
    #[arg(long, short = 'v', global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,

    /// Log errors only.
    #[arg(long, short = 'q', global = true, conflicts_with = "verbose")]
    pub quiet: bool,

    /// How log lines are written (to stderr): `text` for people, `json` for log shippers.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create a working starter project in DIR (a CSV source, a model, a segment, an SQLite
    /// destination and a sync), ready for `backflow run --project DIR`.
    Init {
        /// The folder to create (must be empty or missing).
        dir: PathBuf,
    },
    /// Validate the configuration, models, field mappings and keys against the real source
    /// schemas, without writing anything.
    Check {
        /// Validate only what needs no server: the project file, models (syntax, references,
        /// order), segments and mappings' names; connection URL variables need not be set.
        #[arg(long)]
        offline: bool,
        /// Print one JSON object per sync and entity instead of text.
        #[arg(long)]
        json: bool,
        /// Also act on these: a name, or `tag:TAG` for every sync and entity with that tag
        /// (repeatable).
        #[arg(long, value_name = "NAME|tag:TAG")]
        select: Vec<String>,
        /// Leave these out: a name, or `tag:TAG` (repeatable).
        #[arg(long, value_name = "NAME|tag:TAG")]
        exclude: Vec<String>,
    },
    /// Dry run: show what `run` would create, update and delete, with a sample of each.
    Plan {
        /// Syncs and entities to plan (default: all of them; an entity: what its next cycle would do).
        syncs: Vec<String>,
        /// Plan as if the stored state were ignored (see `run --full-resync`).
        #[arg(long)]
        full_resync: bool,
        /// Print one JSON object per sync instead of text.
        #[arg(long)]
        json: bool,
        /// Also print each sync's physical plan: what is read from each source (for a database
        /// source, the SQL sent to the server, watermark filter included).
        #[arg(long)]
        explain: bool,
        /// Also plan these: a name, or `tag:TAG` for every sync with that tag (repeatable).
        #[arg(long, value_name = "NAME|tag:TAG")]
        select: Vec<String>,
        /// Leave these out: a name, or `tag:TAG` (repeatable).
        #[arg(long, value_name = "NAME|tag:TAG")]
        exclude: Vec<String>,
    },
    /// Run syncs and hub entities: send new, changed and removed rows to their destinations,
    /// unify entities' records into golden records, and commit the state.
    Run {
        /// Syncs and entities to run (default: every entity, each followed by its write-backs,
        /// then every sync, in the order of backflow.toml).
        syncs: Vec<String>,
        /// Send every row again, ignoring the stored row hashes and watermark (deletions are
        /// still computed from the stored keys).
        #[arg(long)]
        full_resync: bool,
        /// Let mirrors delete more than their `max_deletes`, and entities retire more golden
        /// records than their `max_retirements`, in this run (after the guard stopped one and
        /// the deletes are intended).
        #[arg(long)]
        allow_deletes: bool,
        /// Test a sync: send only its first N rows by key, show each record sent and what the
        /// destination answered, and record them as synced (nothing is deleted, the watermark
        /// stays).
        #[arg(long, value_name = "N", conflicts_with = "keys")]
        sample: Option<usize>,
        /// Test a sync on these keys only (comma-separated), like --sample.
        #[arg(long, value_name = "KEY,…", value_delimiter = ',')]
        keys: Vec<String>,
        /// Test a sync on this key, taken verbatim (for a key with a comma, or a composite key
        /// written as a JSON list: `--key '["acme", 42]'`); repeatable.
        #[arg(long, value_name = "KEY", conflicts_with = "sample")]
        key: Vec<String>,
        /// Print one JSON object per sync instead of text.
        #[arg(long)]
        json: bool,
        /// Also act on these: a name, or `tag:TAG` for every sync and entity with that tag
        /// (repeatable).
        #[arg(long, value_name = "NAME|tag:TAG")]
        select: Vec<String>,
        /// Leave these out: a name, or `tag:TAG` (repeatable).
        #[arg(long, value_name = "NAME|tag:TAG")]
        exclude: Vec<String>,
    },
    /// Look into a hub entity: a golden record with its sources, ID mappings and history, or
    /// the newest transaction log entries.
    Hub {
        #[command(subcommand)]
        command: HubCommand,
    },
    /// Deliberate changes to a sync's state (nothing is written to the destination).
    State {
        #[command(subcommand)]
        command: StateCommand,
    },
    /// Run the project as a service: syncs and entities on their schedules and sequences, an
    /// HTTP API to start runs, push changed keys and read history, and Prometheus metrics.
    /// Runs until SIGTERM or Ctrl-C.
    Serve {
        /// The address to listen on. Any address but loopback needs a token (see
        /// --token-env).
        #[arg(long, default_value = "127.0.0.1:7878", value_name = "ADDR:PORT")]
        listen: std::net::SocketAddr,
        /// How long a stop waits for the runs going to reach a safe point.
        #[arg(long, default_value = "30s", value_parser = parse_duration, value_name = "DURATION")]
        shutdown_timeout: std::time::Duration,
        /// Runs at once, at most (others wait for a slot).
        #[arg(long, default_value_t = 2, value_name = "N")]
        max_concurrent: usize,
        /// The environment variable holding the API's bearer token (required to listen on
        /// anything but loopback; when set, every call but /healthz must carry it).
        #[arg(long, default_value = crate::serve::TOKEN_ENV, value_name = "NAME")]
        token_env: String,
    },
    /// Show past runs, newest first, with their counts and errors.
    History {
        /// Only this sync.
        sync: Option<String>,
        /// How many runs per sync.
        #[arg(long, default_value_t = 10)]
        limit: usize,
        /// Also show the invalid and rejected records kept for each run, with reasons.
        #[arg(long)]
        samples: bool,
        /// Instead of runs: the story of one record across runs, from the sync's record log
        /// (`record_log = true`): each time it was sent, how, and what the destination said.
        #[arg(long, value_name = "KEY", requires = "sync")]
        records: Option<String>,
        /// Print one JSON object per run instead of text.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum StateCommand {
    /// The sync's destination moved (a new server address or database file, the same records):
    /// keep its state, now about the new address. Without this, a run refuses a state written
    /// for another address.
    Rebind {
        /// The sync.
        sync: String,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Take over the records the sync's destination object holds now, as if the sync had
    /// sent them (for a sync whose state was lost): the next run updates those still in the
    /// model and, for a mirror, deletes the others. `backflow plan SYNC` shows which first.
    Adopt {
        /// The sync.
        sync: String,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum HubCommand {
    /// A golden record: each field with the source its value came from, the source records
    /// linked to it, and its transaction log (with that of the records merged into it).
    Show {
        /// The entity.
        entity: String,
        /// The golden id (or use --source and --id).
        golden_id: Option<i64>,
        /// Find the golden record this source's record is linked to…
        #[arg(long, requires = "id")]
        source: Option<String>,
        /// …by the record's id in that source.
        #[arg(long, requires = "source")]
        id: Option<String>,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// The records kept out of the golden records until settled: those that match several
    /// golden records by the same rule, and invalid ones (see `hub resolve`).
    Quarantine {
        /// The entity.
        entity: String,
        /// Also list the records set aside with `hub resolve --drop`.
        #[arg(long)]
        all: bool,
        /// Print one JSON object per record instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Settle a record in quarantine: attach it to a golden record, give it one of its own,
    /// or set this version of it aside. Runs one cycle of the entity (no source is read), then
    /// its write-backs.
    #[command(group(clap::ArgGroup::new("decision").required(true).args(["attach", "new", "drop"])))]
    Resolve {
        /// The entity.
        entity: String,
        /// The record's source…
        #[arg(long)]
        source: String,
        /// …and its id there.
        #[arg(long)]
        id: String,
        /// Attach it to this golden record.
        #[arg(long, value_name = "GOLDEN_ID")]
        attach: Option<i64>,
        /// Start a golden record of its own.
        #[arg(long)]
        new: bool,
        /// Leave this version out; it is ignored while the source sends it unchanged.
        #[arg(long)]
        drop: bool,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Take a source record out of a golden record into a golden record of its own (a wrong
    /// match or merge); the two are never merged again. Runs one cycle of the entity (no
    /// source is read), then its write-backs.
    Unmerge {
        /// The entity.
        entity: String,
        /// The golden record the source record is in now.
        golden_id: i64,
        /// The record's source…
        #[arg(long)]
        source: String,
        /// …and its id there.
        #[arg(long)]
        id: String,
        /// Show what would change (as `plan ENTITY` does) and change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// The newest transaction log entries of an entity, oldest first.
    Log {
        /// The entity.
        entity: String,
        /// How many entries.
        #[arg(long, default_value_t = 50)]
        limit: usize,
        /// Print one JSON object per entry instead of text.
        #[arg(long)]
        json: bool,
    },
}

impl Command {
    /// Whether the command prints JSON.
    fn json(&self) -> bool {
        match self {
            Command::Init { .. } | Command::Serve { .. } => false,
            Command::Check { json, .. }
            | Command::Plan { json, .. }
            | Command::Run { json, .. }
            | Command::History { json, .. } => *json,
            Command::Hub { command } => match command {
                HubCommand::Show { json, .. }
                | HubCommand::Log { json, .. }
                | HubCommand::Quarantine { json, .. }
                | HubCommand::Resolve { json, .. }
                | HubCommand::Unmerge { json, .. } => *json,
            },
            Command::State { command } => match command {
                StateCommand::Rebind { json, .. } | StateCommand::Adopt { json, .. } => *json,
            },
        }
    }

    /// The command's name in JSON records.
    fn name(&self) -> Option<&'static str> {
        Some(match self {
            Command::Init { .. } | Command::Serve { .. } => return None,
            Command::Check { .. } => "check",
            Command::Plan { .. } => "plan",
            Command::Run { .. } => "run",
            Command::History { .. } => "history",
            Command::Hub { .. } => "hub",
            Command::State { .. } => "state",
        })
    }
}

/// Entry point of the binary.
pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            use clap::error::ErrorKind;
            // A script that asked for JSON gets a line it can parse for a usage mistake too.
            let asked_json = std::env::args().any(|a| a == "--json");
            let shown = matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion);
            if asked_json && !shown {
                let record = json::ErrorRecord {
                    status: RunStatus::Failed,
                    error: e.kind().to_string(),
                };
                let command = std::env::args().nth(1).unwrap_or_default();
                let command = match command.as_str() {
                    "run" => "run",
                    "plan" => "plan",
                    "check" => "check",
                    "history" => "history",
                    "state" => "state",
                    "hub" => "hub",
                    _ => "backflow",
                };
                out!("{}", json::Record::new(command, "error", record).line());
            }
            e.exit()
        }
    };
    let serving = matches!(cli.command, Command::Serve { .. });
    init_logging(cli.verbose, cli.quiet, cli.log_format, serving);
    crate::interrupt::json_lines(cli.log_format == LogFormat::Json);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            err!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let json = cli.command.json();
    let command = cli.command.name();
    match runtime.block_on(execute(cli)) {
        Ok(code) => code,
        Err(message) => {
            // Scripts get the problem on stdout too, in the shape they parse.
            if let Some(command) = command.filter(|_| json) {
                let record = json::ErrorRecord {
                    status: RunStatus::Failed,
                    error: message.clone(),
                };
                out!("{}", json::Record::new(command, "error", record).line());
            }
            err!("error: {message}");
            ExitCode::from(2)
        }
    }
}

/// Logs go to stderr; a server logs its runs by default, a command only its warnings.
fn init_logging(verbose: u8, quiet: bool, format: LogFormat, serving: bool) {
    // deltalake warns of its own metrics and of a session it falls back from: not the user's
    // business.
    let default = match (quiet, verbose, serving) {
        (true, _, _) => "error",
        (false, 0, false) => "warn,deltalake_core=error",
        (false, 0, true) | (false, 1, _) => {
            "info,datafusion=warn,sqlparser=warn,deltalake_core=error"
        }
        _ => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(|| Quiet(std::io::stderr()));
    let _ = match format {
        LogFormat::Json => builder
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .try_init(),
        // Colour codes only for a person at a terminal, never in a log file or a pipe.
        LogFormat::Text => builder
            .with_ansi(std::io::stderr().is_terminal())
            .try_init(),
    };
}

/// stderr for log lines, where a failed write (a closed pipe: `serve 2>&1 | head`) is dropped:
/// the logger would otherwise report it on stderr, and that report panics.
struct Quiet(std::io::Stderr);

impl std::io::Write for Quiet {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let _ = self.0.write_all(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        let _ = self.0.flush();
        Ok(())
    }
}

fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    crate::duration::parse(text)
        .ok_or_else(|| format!("\"{text}\" is not a duration (\"30s\", \"2m\")"))
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// Run a parsed command. `Err` is a problem before any sync ran (exit 2).
pub async fn execute(cli: Cli) -> Result<ExitCode, String> {
    match cli.command {
        Command::Init { dir } => init::init(&dir).map(|_| ExitCode::SUCCESS),
        Command::Check {
            offline,
            json,
            select,
            exclude,
        } => {
            let selection = Selection {
                names: Vec::new(),
                select,
                exclude,
            };
            check::check(&cli.project, offline, json, &selection).await
        }
        Command::Plan {
            syncs,
            full_resync,
            json,
            explain,
            select,
            exclude,
        } => {
            let project = Project::load(&cli.project).map_err(|e| e.to_string())?;
            // Entities named are planned too: what their next cycle would do.
            let (entities, syncs): (Vec<String>, Vec<String>) = syncs.into_iter().partition(|n| {
                project.config.entities.contains_key(n) && !project.config.syncs.contains_key(n)
            });
            let only_entities = !entities.is_empty() && syncs.is_empty() && select.is_empty();
            // Nothing named: every entity too, as `run` runs them.
            let entities = if entities.is_empty() && syncs.is_empty() && select.is_empty() {
                project
                    .config
                    .entities
                    .keys()
                    .filter(|e| !exclude.contains(e))
                    .cloned()
                    .collect()
            } else {
                entities
            };
            let selection = Selection {
                names: syncs,
                select,
                exclude,
            };
            let names = if only_entities {
                Vec::new()
            } else {
                selection.syncs(&project).map_err(|e| e.to_string())?
            };
            if names.is_empty() && entities.is_empty() && !json {
                if selection.is_empty() {
                    out!("no syncs to plan");
                } else {
                    out!("nothing selected: every sync asked for was excluded");
                }
            }
            let ctx = project
                .session_for(&[names.clone(), entities.clone()].concat())
                .await
                .map_err(|e| e.to_string())?;
            let mut ok = true;
            for name in entities {
                let plan = crate::hub::plan::plan(&project, &ctx, &name, full_resync).await;
                ok &= plan.status == RunStatus::Succeeded;
                if json {
                    out!("{}", Record::new("plan", "entity", &plan).line());
                } else {
                    output::print_entity_plan(&plan);
                }
            }
            for name in names {
                let started = now_ms();
                let options = RunOptions {
                    full_resync,
                    ..RunOptions::default()
                };
                let report = sync::plan(&project, &ctx, &name, options).await;
                ok &= report.status == RunStatus::Succeeded;
                let (schedule, next_run) = next_run(&project, &name).await;
                if json {
                    let mut record = SyncRecord::from_plan(&report, started, full_resync);
                    record.schedule = schedule;
                    record.next_run = next_run.map(|t| t.to_rfc3339());
                    out!("{}", Record::new("plan", "sync", record).line());
                } else {
                    output::print_plan(&report);
                    if let Some(schedule) = schedule {
                        let next = next_run
                            .map(|t| {
                                format!(
                                    ", next run {}",
                                    t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
                                )
                            })
                            .unwrap_or_default();
                        out!("  schedule: {schedule}{next}");
                    }
                }
                if explain {
                    match sync::explain(&project, &ctx, &name).await {
                        Ok(plan) if json => out!(
                            "{}",
                            serde_json::json!({
                                "schema_version": json::SCHEMA_VERSION,
                                "command": "plan",
                                "type": "physical_plan",
                                "sync": name,
                                "physical_plan": plan,
                            })
                        ),
                        Ok(plan) => out!("physical plan of {name}:\n{plan}"),
                        Err(e) => {
                            ok = false;
                            err!("{e}");
                        }
                    }
                }
            }
            Ok(exit(ok))
        }
        Command::Run {
            syncs,
            full_resync,
            allow_deletes,
            sample,
            mut keys,
            key,
            json,
            select,
            exclude,
        } => {
            keys.extend(key);
            let sample = match (sample, keys.is_empty()) {
                (Some(n), _) => Some(sync::Sample::First(n)),
                (None, false) => Some(sync::Sample::Keys(keys)),
                (None, true) => None,
            };
            if sample.is_some() && (syncs.len() != 1 || !select.is_empty()) {
                return Err(
                    "a test run (--sample, --keys) takes exactly one sync: `backflow run SYNC --sample 1`"
                        .into(),
                );
            }
            let options = RunOptions {
                full_resync,
                allow_deletes,
                sample,
                ..RunOptions::default()
            };
            let selection = Selection {
                names: syncs,
                select,
                exclude,
            };
            run(&cli.project, selection, options, json).await
        }
        Command::Hub { command } => {
            let project = Project::load(&cli.project).map_err(|e| e.to_string())?;
            hub::hub_cmd(&project, command).await
        }
        Command::State { command } => {
            let project = Project::load(&cli.project).map_err(|e| e.to_string())?;
            state::state_cmd(&project, command).await
        }
        Command::Serve {
            listen,
            shutdown_timeout,
            max_concurrent,
            token_env,
        } => {
            let options = crate::serve::ServeOptions {
                listen,
                shutdown_timeout,
                max_concurrent,
                token_env,
                log_json: cli.log_format == LogFormat::Json,
            };
            crate::serve::serve(&cli.project, options)
                .await
                .map(|()| ExitCode::SUCCESS)
                .map_err(|e| e.to_string())
        }
        Command::History {
            sync,
            limit,
            samples,
            records,
            json,
        } => {
            let project = Project::load(&cli.project).map_err(|e| e.to_string())?;
            match (records, sync) {
                (Some(key), Some(sync)) => history::record_story(&project, &sync, &key, json).await,
                (_, sync) => history::history_cmd(&project, sync, limit, samples, json).await,
            }
        }
    }
}

/// `run`: each target in turn; every result is printed as it finishes and written, with the
/// invocation's outcome, to `run_results.json`.
async fn run(
    dir: &std::path::Path,
    selection: Selection,
    options: RunOptions,
    json: bool,
) -> Result<ExitCode, String> {
    let full_resync = options.full_resync;
    let started = now_ms();
    let project = Project::load(dir).map_err(|e| e.to_string())?;
    let asked: Vec<String> = selection
        .names
        .iter()
        .cloned()
        .chain(selection.select.iter().cloned())
        .chain(selection.exclude.iter().map(|e| format!("-{e}")))
        .collect();
    let mut results = RunResults::new(asked, full_resync, started);
    let prepared = async {
        let targets = selection.targets(&project).map_err(|e| e.to_string())?;
        let names: Vec<String> = targets
            .iter()
            .map(|t| match t {
                RunTarget::Entity(n) | RunTarget::Sync(n) => n.clone(),
            })
            .collect();
        let ctx = project
            .session_for(&names)
            .await
            .map_err(|e| e.to_string())?;
        Ok::<_, String>((targets, ctx))
    }
    .await;
    let prepared = prepared.and_then(|(targets, ctx)| {
        if options.sample.is_some() && targets.iter().any(|t| matches!(t, RunTarget::Entity(_))) {
            return Err(
                "a test run (--sample, --keys) is for a sync, not a hub entity".to_string(),
            );
        }
        Ok((targets, ctx))
    });
    let (targets, ctx) = match prepared {
        Ok(p) => p,
        Err(message) => {
            results.push(&Record::new(
                "run",
                "error",
                json::ErrorRecord {
                    status: RunStatus::Failed,
                    error: message.clone(),
                },
            ));
            results
                .write(&project.state, RunStatus::Failed, started)
                .await;
            return Err(message);
        }
    };
    if targets.is_empty() && !json {
        if selection.is_empty() {
            out!(
                "no syncs in {}: add a [syncs.NAME] table",
                project.config_text.path.display()
            );
        } else {
            out!("nothing selected: every sync and entity asked for was excluded");
        }
    }
    let progress = Arc::new(progress::TerminalProgress::new(
        !json && std::io::stderr().is_terminal(),
    ));
    let mut ok = true;
    crate::interrupt::listen();
    let total = targets.len();
    for (done, target) in targets.into_iter().enumerate() {
        if crate::interrupt::requested() {
            err!(
                "interrupted: {} of {total} syncs and entities were not started",
                total - done
            );
            break;
        }
        let target_started = now_ms();
        match target {
            RunTarget::Entity(name) => {
                let report = crate::hub::run(
                    &project,
                    &ctx,
                    &name,
                    crate::hub::HubOptions {
                        full_resync,
                        allow_retirements: options.allow_deletes,
                        ..Default::default()
                    },
                )
                .await;
                ok &= report.status == RunStatus::Succeeded;
                let record = Record::new("run", "entity", output::entity_json(&report));
                if json {
                    out!("{}", record.line());
                } else {
                    output::print_hub_run(&report);
                }
                results.push(&record);
            }
            RunTarget::Sync(name) => {
                let report =
                    sync::run(&project, &ctx, &name, options.clone(), progress.clone()).await;
                progress.done();
                ok &= report.status == RunStatus::Succeeded;
                let record = Record::new(
                    "run",
                    "sync",
                    SyncRecord::from_run(&report, target_started, full_resync),
                );
                if json {
                    out!("{}", record.line());
                } else {
                    output::print_run(&report);
                }
                results.push(&record);
            }
        }
    }
    let interrupted = crate::interrupt::requested();
    let status = if interrupted {
        RunStatus::Interrupted
    } else if ok {
        RunStatus::Succeeded
    } else {
        RunStatus::Failed
    };
    results.write(&project.state, status, started).await;
    if interrupted {
        return Ok(ExitCode::from(130));
    }
    Ok(exit(ok))
}

/// A sync's schedule under `serve` and its next run by it (from its last run in history), for
/// `plan`. None for a hub write-back (it runs with its entity).
async fn next_run(
    project: &Project,
    name: &str,
) -> (Option<String>, Option<chrono::DateTime<chrono::Utc>>) {
    let Some((_, timing)) = crate::schedule::targets(&project.config)
        .into_iter()
        .find(|(n, _)| n == name)
    else {
        return (None, None);
    };
    let Ok(schedule) = crate::schedule::Schedule::parse(timing) else {
        return (None, None);
    };
    if !timing.after.is_empty() {
        return (Some(format!("after {}", timing.after.join(", "))), None);
    }
    let last = crate::history::runs(&project.state, name, 1)
        .await
        .ok()
        .and_then(|r| r.into_iter().next());
    let start = last
        .as_ref()
        .and_then(|r| chrono::DateTime::from_timestamp_millis(r.started_at_ms));
    let end = last
        .as_ref()
        .and_then(|r| chrono::DateTime::from_timestamp_millis(r.finished_at_ms));
    let next = schedule.next_after(chrono::Utc::now(), start, end);
    (Some(schedule.describe()), next)
}

fn exit(ok: bool) -> ExitCode {
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
