//! `backflow serve`: the project as a service, in one process with nothing else to run. Syncs
//! and entities run on their schedules and in their sequences ([`scheduler`]), when the API
//! asks ([`api`]), or for keys apps push ([`keys`]); every run goes through [`jobs`], which
//! calls the same engine as `backflow run`, and its end goes past [`alerts`]. Run history, accepted keys and schedules' state
//! live in the project's state, as for `run`.
//!
//! Stopping: SIGTERM or SIGINT stops the scheduler and new runs, asks the runs going to stop
//! at their next safe point (a run never commits half; what it sent is checked by the next
//! one), and exits when they have, or after `--shutdown-timeout`. A second signal exits at
//! once. Two servers on one state never run the same sync at once: the state's lock or lease
//! refuses the second run, which is recorded as failed with the reason.

pub mod alerts;
pub mod api;
pub mod jobs;
pub mod keys;
pub mod metrics;
pub mod page;
pub mod scheduler;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use crate::project::Project;

/// The environment variable a token is read from by default.
pub const TOKEN_ENV: &str = "BACKFLOW_API_TOKEN";

/// How the server runs.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    pub listen: SocketAddr,
    /// How long a stop waits for the runs going.
    pub shutdown_timeout: Duration,
    /// Runs at once, at most.
    pub max_concurrent: usize,
    /// The environment variable holding the API token.
    pub token_env: String,
    /// Whether log lines are JSON (then the line saying where the server listens is JSON too).
    pub log_json: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Project(#[from] crate::project::ProjectError),
    #[error("{0}")]
    Settings(String),
    #[error(
        "listening on {address} would open the API to the network without a token: set the \
         environment variable {env} to a secret, and send it as `Authorization: Bearer …` \
         (or listen on 127.0.0.1)"
    )]
    NoToken { address: SocketAddr, env: String },
    #[error("cannot listen on {address}: {source} (choose another address with --listen)")]
    Listen {
        address: SocketAddr,
        source: std::io::Error,
    },
    #[error(
        "{running} run(s) were still going {timeout:?} after the stop was asked for; exiting \
         anyway (nothing is committed half: the next run redoes what they had not committed)"
    )]
    ShutdownTimeout { running: usize, timeout: Duration },
}

/// Serve the project in `dir` until a stop is asked for.
pub async fn serve(dir: &Path, options: ServeOptions) -> Result<(), ServeError> {
    let project = Arc::new(Project::load(dir)?);
    let token = std::env::var(&options.token_env)
        .ok()
        .map(|t| t.trim().to_string())
        .filter(|t| !t.is_empty());
    if token.is_none() && !options.listen.ip().is_loopback() {
        return Err(ServeError::NoToken {
            address: options.listen,
            env: options.token_env.clone(),
        });
    }
    let alerts = Arc::new(
        alerts::Alerts::new(project.clone())
            .await
            .map_err(ServeError::Settings)?,
    );
    // Runs go on a runtime of their own, so that a run busy on the CPU never holds up the
    // API, the scheduler or the signals (which stay on this one).
    let engine = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("backflow-run")
        .build()
        .map_err(|e| ServeError::Settings(format!("cannot start the runs' runtime: {e}")))?;
    let result = serve_with(
        dir,
        options,
        project,
        token,
        alerts,
        engine.handle().clone(),
    )
    .await;
    // (Runs still going after the timeout are dropped with the process.)
    engine.shutdown_background();
    result
}

async fn serve_with(
    dir: &Path,
    options: ServeOptions,
    project: Arc<Project>,
    token: Option<String>,
    alerts: Arc<alerts::Alerts>,
    engine: tokio::runtime::Handle,
) -> Result<(), ServeError> {
    let (jobs, finished) = jobs::Jobs::new(
        dir.to_path_buf(),
        project.clone(),
        options.max_concurrent,
        alerts.clone(),
        engine,
    )
    .map_err(ServeError::Settings)?;
    let listener = tokio::net::TcpListener::bind(options.listen)
        .await
        .map_err(|source| ServeError::Listen {
            address: options.listen,
            source,
        })?;
    let address = listener.local_addr().unwrap_or(options.listen);
    crate::interrupt::listen();
    jobs.load_last_runs().await;

    // Keys (and an entity's source ids) accepted before a stop or a crash are counted before
    // the API answers (it never says none wait while some do) and run for now.
    for t in jobs.targets.values() {
        if jobs.keys.recount(&t.name).await > 0 {
            tracing::info!(target_name = %t.name, "running for keys accepted before the restart");
            jobs.keys_arrived(&t.name);
        }
    }

    let app = api::router(api::Api {
        jobs: jobs.clone(),
        token: token.map(Arc::from),
    });
    // The API keeps answering while the runs stop (health says "stopping", new runs get
    // 503), and closes once they have.
    let drained = Arc::new(tokio::sync::Notify::new());
    let server = tokio::spawn({
        let drained = drained.clone();
        async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async move { drained.notified().await })
                .await
        }
    });
    // A line scripts and tests can wait for, whatever the log level (JSON among JSON logs).
    {
        use std::io::Write as _;
        let message = format!(
            "backflow serve: listening on http://{address} ({} syncs and entities; stop with Ctrl-C or SIGTERM)",
            jobs.targets.len()
        );
        let line = if options.log_json {
            serde_json::json!({
                "timestamp": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
                "level": "INFO",
                "fields": { "message": message, "address": address.to_string() },
                "target": "backflow::serve",
            })
            .to_string()
        } else {
            message
        };
        let _ = writeln!(std::io::stderr(), "{line}");
    }
    let scheduler = tokio::spawn(scheduler::run(jobs.clone(), finished));
    let staleness = (!alerts.is_empty()).then(|| {
        let targets: Vec<(String, jobs::Kind)> = jobs
            .targets
            .values()
            .map(|t| (t.name.clone(), t.kind))
            .collect();
        let alerts = alerts.clone();
        tokio::spawn(async move {
            loop {
                alerts.look_for_stale(&targets).await;
                tokio::time::sleep(alerts::STALENESS_EVERY).await;
            }
        })
    });

    crate::interrupt::stopped().await;
    jobs.stop();
    let waited = tokio::time::timeout(options.shutdown_timeout, async {
        while jobs.active() > 0 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    scheduler.abort();
    drained.notify_one();
    let _ = tokio::time::timeout(Duration::from_secs(1), server).await;
    if let Some(s) = staleness {
        s.abort();
    }
    match waited {
        Ok(()) => {
            tracing::info!("stopped");
            Ok(())
        }
        Err(_) => Err(ServeError::ShutdownTimeout {
            running: jobs.active(),
            timeout: options.shutdown_timeout,
        }),
    }
}
