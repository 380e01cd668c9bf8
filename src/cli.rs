//! The command line: parse arguments, call the library, print for people or as JSON.

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

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use clap::{Parser, Subcommand};

use crate::history::{self, RunRecord, RunStatus};
use crate::project::{Project, RunTarget};
use crate::sync::{self, PlanReport, Progress, RunOptions, SyncReport};

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

    #[command(subcommand)]
    pub command: Command,
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
    },
    /// Dry run: show what `run` would create, update and delete, with a sample of each.
    Plan {
        /// Syncs to plan (default: all).
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
        /// Print one JSON object per sync instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Look into a hub entity: a golden record with its sources, ID mappings and history, or
    /// the newest transaction log entries.
    Hub {
        #[command(subcommand)]
        command: HubCommand,
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
        /// Print one JSON object per run instead of text.
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

/// Entry point of the binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.verbose);
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
    match runtime.block_on(execute(cli)) {
        Ok(code) => code,
        Err(message) => {
            err!("error: {message}");
            ExitCode::from(2)
        }
    }
}

fn init_logging(verbose: u8) {
    let default = match verbose {
        0 => "warn",
        1 => "info,datafusion=warn",
        _ => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colour codes only for a person at a terminal, never in a log file or a pipe.
        .with_ansi(std::io::stderr().is_terminal())
        .try_init();
}

/// Run a parsed command. `Err` is a problem before any sync ran (exit 2).
pub async fn execute(cli: Cli) -> Result<ExitCode, String> {
    match cli.command {
        Command::Init { dir } => init(&dir).map(|_| ExitCode::SUCCESS),
        Command::Check { offline } => check(&cli.project, offline).await,
        Command::Plan {
            syncs,
            full_resync,
            json,
            explain,
        } => {
            let project = Project::load(&cli.project).map_err(|e| e.to_string())?;
            let names = project.select_syncs(&syncs).map_err(|e| e.to_string())?;
            let ctx = project
                .session_for(&names)
                .await
                .map_err(|e| e.to_string())?;
            let mut ok = true;
            for name in names {
                let report = sync::plan(&project, &ctx, &name, RunOptions { full_resync }).await;
                ok &= report.status == RunStatus::Succeeded;
                print_plan(&report, json);
                if explain {
                    match sync::explain(&project, &ctx, &name).await {
                        Ok(plan) if json => out!(
                            "{}",
                            serde_json::json!({ "sync": name, "physical_plan": plan })
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
            json,
        } => {
            let project = Project::load(&cli.project).map_err(|e| e.to_string())?;
            let targets = project.select_targets(&syncs).map_err(|e| e.to_string())?;
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
            if targets.is_empty() && !json {
                out!(
                    "no syncs in {}: add a [syncs.NAME] table",
                    project.config_text.path.display()
                );
            }
            let progress = Arc::new(TerminalProgress::new(
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
                    return Ok(ExitCode::from(130));
                }
                match target {
                    RunTarget::Entity(name) => {
                        let report = crate::hub::run(
                            &project,
                            &ctx,
                            &name,
                            crate::hub::HubOptions {
                                full_resync,
                                max_cycles: None,
                            },
                        )
                        .await;
                        ok &= report.status == RunStatus::Succeeded;
                        print_hub_run(&report, json);
                    }
                    RunTarget::Sync(name) => {
                        let report = sync::run(
                            &project,
                            &ctx,
                            &name,
                            RunOptions { full_resync },
                            progress.clone(),
                        )
                        .await;
                        progress.done();
                        ok &= report.status == RunStatus::Succeeded;
                        print_run(&report, json);
                    }
                }
            }
            if crate::interrupt::requested() {
                return Ok(ExitCode::from(130));
            }
            Ok(exit(ok))
        }
        Command::Hub { command } => {
            let project = Project::load(&cli.project).map_err(|e| e.to_string())?;
            hub_cmd(&project, command).await
        }
        Command::History {
            sync,
            limit,
            samples,
            json,
        } => {
            let project = Project::load(&cli.project).map_err(|e| e.to_string())?;
            history_cmd(&project, sync, limit, samples, json).await
        }
    }
}

fn exit(ok: bool) -> ExitCode {
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// On a terminal: a spinner with the rows diffed, which becomes a bar with records sent, rate,
/// retries and ETA once a destination reports delivery (HTTP APIs). Nothing otherwise.
struct TerminalProgress {
    bar: Option<Mutex<Option<(indicatif::ProgressBar, bool)>>>,
}

impl TerminalProgress {
    fn new(enabled: bool) -> Self {
        TerminalProgress {
            bar: enabled.then(|| Mutex::new(None)),
        }
    }
    fn done(&self) {
        if let Some(m) = &self.bar
            && let Ok(mut b) = m.lock()
            && let Some((bar, _)) = b.take()
        {
            bar.finish_and_clear();
        }
    }

    /// The bar, created on first use; `delivering` switches it to the delivery layout.
    fn with_bar(&self, sync: &str, delivering: bool, f: impl FnOnce(&indicatif::ProgressBar)) {
        let Some(m) = &self.bar else { return };
        let Ok(mut b) = m.lock() else { return };
        let (bar, shows_delivery) = b.get_or_insert_with(|| {
            let bar = indicatif::ProgressBar::new_spinner();
            bar.set_prefix(sync.to_string());
            bar.enable_steady_tick(Duration::from_millis(120));
            set_template(
                &bar,
                "{spinner} {prefix}: {human_pos} rows diffed ({rate}, {elapsed})",
            );
            (bar, false)
        });
        if delivering && !*shows_delivery {
            *shows_delivery = true;
            bar.reset();
            set_template(
                bar,
                "{spinner} {prefix}: {human_pos}/{human_len} records sent ({rate}, {msg} retries, ETA {eta})",
            );
        }
        f(bar);
    }
}

fn set_template(bar: &indicatif::ProgressBar, template: &str) {
    if let Ok(style) = indicatif::ProgressStyle::with_template(template) {
        bar.set_style(style.with_key(
            "rate",
            |state: &indicatif::ProgressState, w: &mut dyn std::fmt::Write| {
                let _ = write!(w, "{:.0}/s", state.per_sec());
            },
        ));
    }
}

impl Progress for TerminalProgress {
    fn rows(&self, sync: &str, processed: u64) {
        self.with_bar(sync, false, |bar| {
            if bar.length().is_none() {
                bar.set_position(processed);
            }
        });
    }

    fn delivery(&self, sync: &str, d: sync::Delivery) {
        self.with_bar(sync, true, |bar| {
            bar.set_length(d.queued);
            bar.set_position(d.done);
            bar.set_message(d.retries.to_string());
        });
    }
}

fn print_run(r: &SyncReport, json: bool) {
    if json {
        out!("{}", serde_json::to_string(r).unwrap_or_default());
        return;
    }
    let c = &r.counts;
    let mark = if r.status == RunStatus::Succeeded {
        "✓"
    } else {
        "✗"
    };
    out!(
        "{mark} {}  ({} → {}/{})  read {}  created {}  updated {}  deleted {}  unchanged {}  invalid {}  rejected {}{}{}  [{}]",
        r.sync,
        r.behavior,
        r.destination,
        r.object,
        c.read,
        c.created,
        c.updated,
        c.deleted,
        c.unchanged,
        c.invalid,
        c.rejected,
        if c.skipped > 0 {
            format!("  skipped {}", c.skipped)
        } else {
            String::new()
        },
        if c.retries > 0 {
            format!("  retries {}", c.retries)
        } else {
            String::new()
        },
        took(r.duration_ms, r.sources_ms)
    );
    if c.held > 0 {
        out!(
            "    held: {} record(s) that left the model were not deleted: the model's sources left out rows they could not read, which may be them (fix the rows and run again)",
            c.held
        );
    }
    for s in r.samples.iter().take(5) {
        let kind = match s.kind {
            history::RecordKind::Invalid => "invalid",
            history::RecordKind::Rejected => "rejected",
        };
        out!(
            "    {kind}: key {} — {}",
            s.key.as_deref().unwrap_or("NULL"),
            s.reason
        );
    }
    if r.samples.len() > 5 {
        out!(
            "    … {} more in `backflow history {} --samples`",
            r.samples.len() - 5,
            r.sync
        );
    }
    if let Some(e) = &r.error {
        err!("    error: {e}");
    }
}

/// A run's time, and the part of it opening its sources took when that shows (`4.3s, of
/// which opening sources 4.1s`).
fn took(duration_ms: i64, sources_ms: i64) -> String {
    let secs = |ms: i64| ms as f64 / 1000.0;
    if sources_ms >= 100 {
        format!(
            "{:.1}s, of which opening sources {:.1}s",
            secs(duration_ms),
            secs(sources_ms)
        )
    } else {
        format!("{:.1}s", secs(duration_ms))
    }
}

fn print_hub_run(r: &crate::hub::HubReport, json: bool) {
    if json {
        out!("{}", serde_json::to_string(r).unwrap_or_default());
        return;
    }
    let mark = if r.status == RunStatus::Succeeded {
        "✓"
    } else {
        "✗"
    };
    let read: u64 = r.sources.values().map(|s| s.read).sum();
    let per_source = r
        .sources
        .iter()
        .map(|(n, s)| format!("{n} {}", s.read))
        .collect::<Vec<_>>()
        .join(", ");
    let sum = |f: fn(&crate::hub::SourceCounts) -> u64| r.sources.values().map(f).sum::<u64>();
    out!(
        "{mark} {}  (hub, {} cycle{})  read {read} ({per_source})  linked by id {}  matched {}  new {}{}  golden: created {}  updated {}  unchanged {}  merged {}  invalid {}  [{}]",
        r.entity,
        r.cycles,
        if r.cycles == 1 { "" } else { "s" },
        sum(|s| s.by_id),
        sum(|s| s.matched),
        sum(|s| s.new),
        match sum(|s| s.unlinked) {
            0 => String::new(),
            n => format!("  unlinked {n}"),
        },
        r.created,
        r.updated,
        r.unchanged,
        r.merged,
        sum(|s| s.invalid),
        took(r.duration_ms, r.sources_ms)
    );
    for s in r.samples.iter().take(5) {
        out!(
            "    invalid: {} — {}",
            s.key.as_deref().unwrap_or("(no id)"),
            s.reason
        );
    }
    if r.samples.len() > 5 {
        out!(
            "    … {} more in `backflow history {} --samples`",
            r.samples.len() - 5,
            r.entity
        );
    }
    if let Some(e) = &r.error {
        err!("    error: {e}");
    }
}

async fn hub_cmd(project: &Project, command: HubCommand) -> Result<ExitCode, String> {
    let entity = match &command {
        HubCommand::Show { entity, .. } | HubCommand::Log { entity, .. } => entity.clone(),
    };
    if !project.config.entities.contains_key(&entity) {
        let known: Vec<&str> = project.config.entities.keys().map(String::as_str).collect();
        return Err(format!(
            "unknown entity \"{entity}\"{}; the project's entities are: {}",
            crate::names::suggest(&entity, known.iter().copied()),
            if known.is_empty() {
                "(none)".to_string()
            } else {
                known.join(", ")
            }
        ));
    }
    let ctx = crate::session::session_context(&project.config.engine, &project.dir)
        .map_err(|e| e.to_string())?;
    project.state.register(&ctx).map_err(|e| e.to_string())?;
    match command {
        HubCommand::Show {
            golden_id,
            source,
            id,
            json,
            ..
        } => {
            let lookup = match (golden_id, source, id) {
                (Some(g), None, None) => crate::hub::show::Lookup::Golden(g),
                (None, Some(source), Some(id)) => {
                    crate::hub::show::Lookup::SourceRecord { source, id }
                }
                _ => {
                    return Err(
                        "name a golden record: `hub show ENTITY GOLDEN_ID`, or `hub show ENTITY --source SOURCE --id ID`"
                            .into(),
                    );
                }
            };
            let record = crate::hub::show::golden_record(project, &ctx, &entity, &lookup)
                .await
                .map_err(|e| e.to_string())?;
            if json {
                out!("{}", serde_json::to_string(&record).unwrap_or_default());
            } else {
                print_golden(&record);
            }
            Ok(ExitCode::SUCCESS)
        }
        HubCommand::Log { limit, json, .. } => {
            let entries = crate::hub::show::recent_log(project, &ctx, &entity, limit)
                .await
                .map_err(|e| e.to_string())?;
            if json {
                for e in &entries {
                    out!("{}", serde_json::to_string(e).unwrap_or_default());
                }
            } else if entries.is_empty() {
                out!("no log entries yet");
            } else {
                out!("{}", log_table(&entries));
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn print_golden(r: &crate::hub::show::GoldenRecord) {
    let status = match r.merged_into {
        Some(w) => format!("  (merged into golden record {w})"),
        None => String::new(),
    };
    out!("{} golden record {}{status}", r.entity, r.golden_id);
    out!(
        "  created {}  updated {}",
        r.created_at.as_deref().unwrap_or("?"),
        r.updated_at.as_deref().unwrap_or("?")
    );
    if !r.absorbed.is_empty() {
        out!(
            "  absorbed: {}",
            r.absorbed
                .iter()
                .map(|g| g.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    let mut fields = comfy_table::Table::new();
    fields.load_preset(comfy_table::presets::UTF8_BORDERS_ONLY);
    fields.set_header(vec!["field", "value", "from"]);
    for f in &r.fields {
        fields.add_row(vec![
            f.field.clone(),
            f.value.clone().unwrap_or_else(|| "NULL".into()),
            f.source.clone().unwrap_or_default(),
        ]);
    }
    out!("{fields}");
    let mut links = comfy_table::Table::new();
    links.load_preset(comfy_table::presets::UTF8_BORDERS_ONLY);
    links.set_header(vec!["source", "id", "linked by", "first read (version)"]);
    for l in &r.links {
        links.add_row(vec![
            l.source.clone(),
            l.source_id.clone(),
            l.linked_by.clone().unwrap_or_default(),
            l.first_version.map(|v| v.to_string()).unwrap_or_default(),
        ]);
    }
    out!("ID mappings:\n{links}");
    if !r.history.is_empty() {
        out!("history:\n{}", log_table(&r.history));
    }
}

fn log_table(entries: &[crate::hub::show::LogEntry]) -> comfy_table::Table {
    let mut table = comfy_table::Table::new();
    table.load_preset(comfy_table::presets::UTF8_BORDERS_ONLY);
    table.set_header(vec![
        "version", "at (UTC)", "golden", "op", "field", "old", "new", "source", "detail",
    ]);
    for e in entries {
        let source = match (&e.source, &e.source_id) {
            (Some(s), Some(id)) => format!("{s}:{id}"),
            (Some(s), None) => s.clone(),
            _ => String::new(),
        };
        table.add_row(vec![
            e.version.to_string(),
            e.at.chars().take(19).collect::<String>().replace('T', " "),
            e.golden_id.to_string(),
            e.op.clone(),
            e.field.clone().unwrap_or_default(),
            e.old_value.clone().unwrap_or_default(),
            e.new_value.clone().unwrap_or_default(),
            source,
            e.detail.clone().unwrap_or_default(),
        ]);
    }
    table
}

fn print_plan(r: &PlanReport, json: bool) {
    if json {
        out!("{}", serde_json::to_string(r).unwrap_or_default());
        return;
    }
    let c = &r.counts;
    let mark = if r.status == RunStatus::Succeeded {
        "•"
    } else {
        "✗"
    };
    out!(
        "{mark} {}  ({} → {}/{})  would create {}  update {}  delete {}; unchanged {}  invalid {}  (read {})",
        r.sync,
        r.behavior,
        r.destination,
        r.object,
        c.created,
        c.updated,
        c.deleted,
        c.unchanged,
        c.invalid,
        c.read
    );
    for (label, list) in [
        ("create", &r.samples.create),
        ("update", &r.samples.update),
        ("delete", &r.samples.delete),
    ] {
        for v in list {
            out!("    {label}: {v}");
        }
    }
    for s in r.samples.invalid.iter().take(5) {
        out!(
            "    invalid: key {} — {}",
            s.key.as_deref().unwrap_or("NULL"),
            s.reason
        );
    }
    if let Some(e) = &r.error {
        err!("    error: {e}");
    }
}

async fn check(dir: &Path, offline: bool) -> Result<ExitCode, String> {
    if offline {
        crate::databases::set_offline();
    }
    let project = Project::load(dir).map_err(|e| e.to_string())?;
    if offline {
        out!(
            "✓ {} is valid offline: {} (sources, destinations and field types were not checked: \
             run `backflow check` where the servers can be reached)",
            project.dir.display(),
            contents(&project)
        );
        return Ok(ExitCode::SUCCESS);
    }
    let ctx = project.session().await.map_err(|e| e.to_string())?;
    let mut problems = Vec::new();
    for name in project.config.entities.keys() {
        if let Err(e) = crate::hub::check(&project, &ctx, name).await {
            problems.push(e.to_string());
        }
    }
    for name in project.config.syncs.keys() {
        if let Err(e) = sync::check(&project, &ctx, name).await {
            problems.push(e.to_string());
        }
    }
    if problems.is_empty() {
        out!(
            "✓ {} is valid: {}",
            project.dir.display(),
            contents(&project)
        );
        Ok(ExitCode::SUCCESS)
    } else {
        for p in &problems {
            out!("✗ {p}");
        }
        Ok(ExitCode::FAILURE)
    }
}

/// What a project holds, for `check`: "2 source(s), 1 model(s), …".
fn contents(project: &Project) -> String {
    let c = &project.config;
    format!(
        "{} source(s), {} model(s), {} segment(s), {} destination(s), {} sync(s){}",
        c.sources.len(),
        project.models.len(),
        c.segments.len(),
        c.destinations.len(),
        c.syncs.len(),
        match c.entities.len() {
            0 => String::new(),
            n => format!(", {n} entit{}", if n == 1 { "y" } else { "ies" }),
        }
    )
}

async fn history_cmd(
    project: &Project,
    sync: Option<String>,
    limit: usize,
    with_samples: bool,
    json: bool,
) -> Result<ExitCode, String> {
    let names = match sync {
        Some(s) if project.config.entities.contains_key(&s) => {
            vec![crate::hub::history_name(&s)]
        }
        Some(s) => {
            project
                .select_syncs(std::slice::from_ref(&s))
                .map_err(|e| e.to_string())?;
            vec![s]
        }
        None => history::syncs(&project.state)
            .await
            .map_err(|e| e.to_string())?,
    };
    let mut runs: Vec<RunRecord> = Vec::new();
    for name in &names {
        runs.extend(
            history::runs(&project.state, name, limit)
                .await
                .map_err(|e| e.to_string())?,
        );
    }
    runs.sort_by_key(|r| std::cmp::Reverse(r.started_at_ms));
    if runs.is_empty() && !json {
        out!("no runs yet");
    }
    let mut table = comfy_table::Table::new();
    table.load_preset(comfy_table::presets::UTF8_BORDERS_ONLY);
    table.set_header(vec![
        "started (UTC)",
        "sync",
        "status",
        "read",
        "created",
        "updated",
        "deleted",
        "unchanged",
        "invalid",
        "rejected",
        "secs",
        "error",
    ]);
    let mut sample_lines = Vec::new();
    for run in &runs {
        let samples = if with_samples {
            history::samples(&project.state, &run.sync, run)
                .await
                .map_err(|e| e.to_string())?
        } else {
            Vec::new()
        };
        if json {
            let mut v = serde_json::to_value(run).unwrap_or_default();
            if with_samples && let Some(o) = v.as_object_mut() {
                o.insert(
                    "samples".into(),
                    serde_json::to_value(&samples).unwrap_or_default(),
                );
            }
            out!("{v}");
            continue;
        }
        let c = &run.counts;
        let started = chrono::DateTime::from_timestamp_millis(run.started_at_ms)
            .map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string())
            .unwrap_or_default();
        table.add_row(vec![
            started.clone(),
            run.sync.clone(),
            run.status.as_str().to_string(),
            c.read.to_string(),
            c.created.to_string(),
            c.updated.to_string(),
            c.deleted.to_string(),
            c.unchanged.to_string(),
            c.invalid.to_string(),
            c.rejected.to_string(),
            format!(
                "{:.1}",
                (run.finished_at_ms - run.started_at_ms) as f64 / 1000.0
            ),
            run.error.clone().unwrap_or_default(),
        ]);
        if !samples.is_empty() {
            sample_lines.push(format!("{} {} (run {}):", run.sync, started, run.run_id));
            for s in &samples {
                let kind = match s.kind {
                    history::RecordKind::Invalid => "invalid",
                    history::RecordKind::Rejected => "rejected",
                };
                sample_lines.push(format!(
                    "  {kind}: key {} — {}\n      {}",
                    s.key.as_deref().unwrap_or("NULL"),
                    s.reason,
                    s.record
                ));
            }
        }
    }
    if !json && !runs.is_empty() {
        out!("{table}");
        for line in sample_lines {
            out!("{line}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The starter project `init` writes.
const STARTER: &[(&str, &str)] = &[
    (
        "backflow.toml",
        include_str!("../data/starter/backflow.toml"),
    ),
    ("people.csv", include_str!("../data/starter/people.csv")),
    (
        "models/customers.sql",
        include_str!("../data/starter/models/customers.sql"),
    ),
    (".gitignore", ".backflow/\nout/\n"),
];

fn init(dir: &Path) -> Result<(), String> {
    if dir.exists() {
        let mut entries =
            std::fs::read_dir(dir).map_err(|e| format!("cannot read {}: {e}", dir.display()))?;
        if entries.next().is_some() {
            return Err(format!(
                "{} is not empty; init only writes into a new or empty folder",
                dir.display()
            ));
        }
    }
    for (rel, text) in STARTER {
        let path = dir.join(rel);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .map_err(|e| format!("cannot create {}: {e}", parent.display()))?;
        }
        std::fs::write(&path, text).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    }
    out!(
        "Created a starter project in {0}.\n\nNext:\n  backflow check --project {0}\n  backflow plan  --project {0}\n  backflow run   --project {0}\n\nEdit {0}/backflow.toml and {0}/models/*.sql to point it at your data.",
        dir.display()
    );
    Ok(())
}
