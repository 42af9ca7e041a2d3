//! Command line: flags, validation, logging, signals and exit codes.
//!
//! Place in the flow: the edge. It parses and checks every input before touching Spanner
//! (exit 2 with one line naming the input), loads the plugins, builds the source, store and
//! pipeline, runs the subscriber until `--end` or SIGINT/SIGTERM (exit 0 after a clean
//! drain), and maps runtime failures to exit 1. `screamer plugin ...` works on plugins
//! alone ([`plugin`]).

mod config;
mod plugin;
mod progress;
mod status;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

use config::{ConfigError, PipelineArgs, PipelineConfig, ReadArgs, parse_duration};
use screamer::DatabaseName;
use screamer::FailureKind;
use screamer::Ordering;
use screamer::Pipeline;
use screamer::Timestamp;
use screamer::destination::{Destination, DestinationUri, Ndjson};
use screamer::observe::{Metrics, Observer};
use screamer::plugin::{Chain, PluginError, PluginRuntime, RuntimeOptions};
use screamer::{Endpoint, Priority};
use screamer::{HEARTBEAT_INTERVALS, SubscribeError, Subscriber, SubscriberOptions};
use screamer::{MemoryStore, PartitionStore, RunnerId, SpannerStore, StoreError};
use screamer::{SourceError, SourceOptions, SpannerSource};

/// Reads a Spanner change stream, passes every data change record through a chain of
/// WebAssembly plugins, and prints the results as NDJSON on stdout.
#[derive(Debug, Parser)]
#[command(
    name = "screamer",
    version,
    about,
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub run: Args,
    /// Log filter (tracing syntax), written to stderr.
    #[arg(long, env = "LOG_LEVEL", default_value = "info", global = true)]
    pub log_level: String,
    /// Log lines as text, or as one JSON object per line for log pipelines.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Text, global = true)]
    pub log_format: LogFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Check plugins or run them over NDJSON records, without Spanner.
    #[command(subcommand)]
    Plugin(plugin::PluginCommand),
    /// Show the runners and partitions of a metadata table.
    Status(status::StatusArgs),
    /// The Go screamer's spelling of the main command (`screamer screamer --dsn ...`).
    #[command(hide = true)]
    Screamer(Box<Args>),
}

/// The main command: read the stream.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Database: projects/P/instances/I/databases/D.
    #[arg(long, env = "DSN", required = true)]
    pub dsn: Option<DatabaseName>,
    /// Change stream name.
    #[arg(long, env = "STREAM", required = true)]
    pub stream: Option<String>,
    /// Partition metadata table; omitted: in memory (one runner, no resume).
    #[arg(long, env = "METADATA_TABLE")]
    pub metadata_table: Option<String>,
    /// Database holding the metadata table (default: --dsn).
    #[arg(long, env = "PARTITION_DSN")]
    pub partition_dsn: Option<DatabaseName>,
    /// Start (RFC 3339) for a new metadata table; default: now.
    #[arg(long, env = "START")]
    pub start: Option<Timestamp>,
    /// End (RFC 3339, inclusive); reaching it ends the run with exit 0.
    #[arg(long, env = "END")]
    pub end: Option<Timestamp>,
    /// Heartbeat interval of partition queries (1s to 300s).
    #[arg(long, allow_negative_numbers = true, env = "HEARTBEAT_INTERVAL", default_value = "3s", value_parser = parse_heartbeat)]
    pub heartbeat_interval: Duration,
    /// This runner's id; default: random.
    #[arg(long, env = "RUNNER_ID")]
    pub runner_id: Option<String>,
    /// Most partitions this runner reads at once.
    #[arg(long, allow_negative_numbers = true, env = "MAX_CONNECTIONS", default_value_t = 400, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_connections: u32,
    /// How long a runner may miss heartbeats before others take over its partitions.
    #[arg(long, allow_negative_numbers = true, env = "LEASE_DURATION", default_value = "30s", value_parser = parse_lease)]
    pub lease_duration: Duration,
    /// How often to release partitions above this runner's fair share (0: never).
    #[arg(long, allow_negative_numbers = true, env = "REBALANCING_INTERVAL", default_value = "0s", value_parser = parse_duration)]
    pub rebalancing_interval: Duration,
    /// Serve Prometheus metrics (`/metrics`), `/healthz` and `/readyz` on HOST:PORT.
    #[arg(long, env = "METRICS_ADDR", value_name = "HOST:PORT", value_parser = parse_listen_addr)]
    pub metrics_addr: Option<SocketAddr>,
    /// How often to log a progress summary (0s: never). With --end on a terminal, a live
    /// progress line replaces it.
    #[arg(long, allow_negative_numbers = true, env = "PROGRESS_INTERVAL", default_value = "30s", value_parser = parse_duration)]
    pub progress_interval: Duration,
    /// Spanner request priority of change stream queries and metadata operations: low,
    /// medium or high (Spanner's default).
    #[arg(long, env = "PRIORITY", value_name = "PRIORITY", value_parser = str::parse::<Priority>)]
    pub priority: Option<Priority>,
    /// How often acknowledged positions are written to the metadata table.
    #[arg(long, allow_negative_numbers = true, env = "CHECKPOINT_INTERVAL", default_value = "1s", value_parser = parse_duration)]
    pub checkpoint_interval: Duration,
    /// A WebAssembly component plugin (repeatable; the chain runs in flag order). Replacing
    /// the file, or SIGHUP, swaps in the new version while running.
    #[arg(long = "plugin", value_name = "PATH")]
    pub plugins: Vec<PathBuf>,
    #[command(flatten)]
    pub pipeline: PipelineArgs,
    #[command(flatten)]
    pub reads: ReadArgs,
}

fn parse_lease(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    if d < Duration::from_millis(300) {
        return Err(format!(
            "{s:?} is too short: a lease must be at least 300ms"
        ));
    }
    Ok(d)
}

fn parse_listen_addr(s: &str) -> Result<SocketAddr, String> {
    use std::net::ToSocketAddrs;
    let expected = || format!("{s:?}: expected HOST:PORT, e.g. 0.0.0.0:9464");
    s.to_socket_addrs()
        .map_err(|_| expected())?
        .next()
        .ok_or_else(expected)
}

fn parse_heartbeat(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    if !HEARTBEAT_INTERVALS.contains(&d) {
        return Err(format!("{s:?} is outside 1s..300s"));
    }
    Ok(d)
}

/// clap's message on one line: its first line, with the indented lines right under it
/// (the arguments it lists: `the following required arguments were not provided:`); usage
/// and tips follow only on `--help`.
fn one_line(rendered: &str) -> String {
    let mut lines = rendered.lines();
    let mut line = lines
        .next()
        .unwrap_or("error: invalid arguments")
        .to_owned();
    for listed in lines.take_while(|l| l.starts_with(' ')) {
        line.push(' ');
        line.push_str(listed.trim());
    }
    line
}

/// Exit code 2: the user's input is wrong.
const INVALID_INPUT: u8 = 2;

/// Parses the process arguments and runs; the whole binary.
pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(a) => a,
        Err(e) if e.use_stderr() => {
            eprintln!("{}", one_line(&e.render().to_string()));
            return ExitCode::from(INVALID_INPUT);
        }
        Err(e) => {
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
    };
    let filter = match EnvFilter::try_new(log_filter(&cli.log_level)) {
        Ok(f) => f,
        Err(e) => {
            eprintln!(
                "error: --log-level {:?} is not a tracing filter: {e}",
                cli.log_level
            );
            return ExitCode::from(INVALID_INPUT);
        }
    };
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Text => logs
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
        LogFormat::Json => logs.json().init(),
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let result = match cli.command {
        Some(Command::Plugin(command)) => runtime.block_on(plugin::run(command)),
        Some(Command::Status(args)) => runtime.block_on(status::run(args)),
        Some(Command::Screamer(args)) => main_command(&runtime, *args),
        None => main_command(&runtime, cli.run),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

fn main_command(runtime: &tokio::runtime::Runtime, args: Args) -> Result<(), RunError> {
    check_range(&args)?;
    runtime.block_on(run(args))
}

/// Checks the range before connecting anywhere (the subscriber checks it again with its
/// default start, now).
fn check_range(args: &Args) -> Result<(), RunError> {
    match args.start {
        Some(start) => Ok(screamer::check_range(start, args.end)?),
        None => Ok(()),
    }
}

/// A failure of the run, with the exit code it deserves.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// Invalid input found by the CLI itself.
    #[error("{0}")]
    Input(String),
    /// What an author's plugin project did: its build or its tests failed (exit 1).
    #[error("{0}")]
    Failed(String),
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Plugin(#[from] PluginError),
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Subscribe(#[from] SubscribeError),
}

impl RunError {
    fn kind(&self) -> FailureKind {
        match self {
            RunError::Input(_) | RunError::Config(_) => FailureKind::Input,
            RunError::Plugin(e) => e.kind(),
            RunError::Io(_) | RunError::Failed(_) => FailureKind::Runtime,
            RunError::Source(e) => e.kind(),
            RunError::Store(e) => e.kind(),
            RunError::Subscribe(e) => e.kind(),
        }
    }

    /// 2 for what the user's input caused, 1 for runtime failures.
    pub fn exit_code(&self) -> u8 {
        match self.kind() {
            FailureKind::Input => INVALID_INPUT,
            FailureKind::Runtime => 1,
        }
    }
}

async fn run(args: Args) -> Result<(), RunError> {
    let (Some(dsn), Some(stream)) = (args.dsn.clone(), args.stream.clone()) else {
        unreachable!("clap requires --dsn and --stream without a subcommand")
    };
    let shutdown = CancellationToken::new();
    tokio::spawn(forward_signals(shutdown.clone()));
    let metrics = Arc::new(Metrics::new());
    if let Some(addr) = args.metrics_addr {
        let bound = screamer::observe::serve(addr, metrics.clone(), shutdown.child_token())
            .await
            .map_err(|e| RunError::Input(format!("--metrics-addr {addr}: {e}")))?;
        tracing::info!(metrics = %format!("http://{bound}/metrics"), "serving metrics");
    }
    // Plugins first: a bad plugin is an input error found before touching Spanner.
    let pipeline = PipelineConfig::resolve(&args.plugins, &args.pipeline)?;
    let (ordering, ordering_buffer) = (pipeline.ordering, pipeline.ordering_buffer);
    let reads = args.reads.clone().over(pipeline.reads.clone());
    let built = build_pipeline(&pipeline, metrics.clone()).await?;
    let hot_swap = match &built.plugins {
        Some((runtime, chain)) => Some(screamer::plugin::watch(
            runtime.clone(),
            chain.clone(),
            shutdown.clone(),
        )?),
        None => None,
    };
    let pipeline = built.pipeline;
    if shutdown.is_cancelled() {
        return Ok(());
    }
    let endpoint = Endpoint::from_env();
    let options = SourceOptions {
        priority: args.priority,
        database_role: reads.database_role.clone(),
        data_boost: reads.data_boost,
    };
    let source = SpannerSource::connect_with(&endpoint, &dsn, &stream, options).await?;
    tracing::debug!(dialect = ?source.dialect(), "change stream found");
    let store = open_store(&args, &dsn, &endpoint).await?;
    let defaults = SubscriberOptions::default();
    let options = SubscriberOptions {
        runner_id: args
            .runner_id
            .map(RunnerId::from)
            .unwrap_or(defaults.runner_id),
        start: args.start,
        end: args.end,
        heartbeat_interval: args.heartbeat_interval,
        max_connections: args.max_connections as usize,
        checkpoint_interval: args.checkpoint_interval,
        lease_duration: args.lease_duration,
        rebalancing_interval: Some(args.rebalancing_interval).filter(|d| !d.is_zero()),
        ordering,
        ordering_buffer,
        snapshot: reads.snapshot,
        snapshot_chunk_rows: reads.snapshot_chunk_rows,
        ..defaults
    };
    let subscriber = Subscriber::new(source.clone(), store, options).with_observer(metrics.clone());
    let progress = progress::Reporter::start(metrics.clone(), args.end, args.progress_interval);
    let result = subscriber.subscribe(pipeline, shutdown).await;
    progress.finish();
    progress::log_plugin_summary(&metrics);
    drop(hot_swap);
    source.close().await;
    let summary = result?;
    tracing::info!(
        reached_end = summary.reached_end,
        partitions_finished = summary.partitions_finished,
        metadata_writes = summary.metadata_writes,
        "done"
    );
    Ok(())
}

/// The partition store: the metadata table (in `--partition-dsn`, else `dsn`), or memory.
async fn open_store(
    args: &Args,
    dsn: &DatabaseName,
    endpoint: &Endpoint,
) -> Result<Arc<dyn PartitionStore>, RunError> {
    let Some(table) = &args.metadata_table else {
        return Ok(Arc::new(MemoryStore::new()));
    };
    let db = args.partition_dsn.as_ref().unwrap_or(dsn);
    let store = SpannerStore::connect(endpoint, db, table).await?;
    Ok(Arc::new(match args.priority {
        Some(priority) => store.with_priority(priority),
        None => store,
    }))
}

/// A pipeline ready to run, with its plugin runtime and chain (when it has plugins) for a
/// caller that watches the files.
struct BuiltPipeline {
    pipeline: Pipeline,
    plugins: Option<(Arc<PluginRuntime>, Arc<Chain>)>,
}

/// Loads the chain and opens the destinations; both report to `metrics`, which knows
/// their names from the start.
async fn build_pipeline(
    config: &PipelineConfig,
    metrics: Arc<Metrics>,
) -> Result<BuiltPipeline, RunError> {
    let observer: Arc<dyn Observer> = metrics.clone();
    let dead_letters = match &config.dead_letter {
        Some(uri) => open_destination("--dead-letter", uri).await?,
        None => Box::new(Ndjson::stderr()),
    };
    let mut pipeline = Pipeline::new(
        open_destination("--output", &config.output).await?,
        dead_letters,
    )
    .with_observer(observer.clone());
    if config.partition_metadata {
        pipeline = pipeline.with_partition_metadata();
    }
    if config.ordering == Ordering::Transactions {
        pipeline = pipeline.with_transactions();
    }
    for (name, uri) in &config.side_outputs {
        let destination = open_destination(&format!("--side-output {name}"), uri).await?;
        pipeline = pipeline.with_side_output(name.clone(), destination);
    }
    if config.plugins.is_empty() {
        metrics.declare(pipeline.outputs(), []);
        return Ok(BuiltPipeline {
            pipeline,
            plugins: None,
        });
    }
    let runtime = PluginRuntime::new(RuntimeOptions {
        cache_dir: config
            .cache_dir
            .clone()
            .or_else(PluginRuntime::default_cache_dir),
        perf_map: config.perf_map,
    })?;
    let mut versions = Vec::with_capacity(config.plugins.len());
    for spec in &config.plugins {
        versions.push(runtime.load(spec).await?);
    }
    for v in &versions {
        tracing::info!(
            plugin = v.tag(),
            sha256 = v.short_hash(),
            file = %v.spec.path.display(),
            cached = v.from_cache,
            load_ms = v.load_time.as_secs_f64() * 1e3,
            "plugin loaded"
        );
    }
    metrics.declare(pipeline.outputs(), versions.iter().map(|v| v.name.as_str()));
    let chain = Arc::new(Chain::new(versions, config.batch_size).with_observer(observer));
    Ok(BuiltPipeline {
        pipeline: pipeline.with_chain(chain.clone()),
        plugins: Some((runtime, chain)),
    })
}

/// The tracing filter for `--log-level`: at the default `info`, the NATS client's
/// connection events (one per connect and close) stay out; any other level or directive is
/// taken as given.
fn log_filter(level: &str) -> String {
    if level == "info" {
        "info,async_nats=warn".to_owned()
    } else {
        level.to_owned()
    }
}

/// Opens the destination `uri` names; `role` names the flag or key in errors.
async fn open_destination(
    role: &str,
    uri: &DestinationUri,
) -> Result<Box<dyn Destination>, RunError> {
    uri.open()
        .await
        .map_err(|e| RunError::Input(format!("{role} {e}")))
}

/// The first SIGINT/SIGTERM starts a graceful drain; a second one exits at once.
async fn forward_signals(shutdown: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut int), Ok(mut term)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        tracing::error!("cannot install signal handlers");
        return;
    };
    tokio::select! { _ = int.recv() => {}, _ = term.recv() => {} }
    tracing::info!("stopping: draining partitions and writing checkpoints");
    shutdown.cancel();
    tokio::select! { _ = int.recv() => {}, _ = term.recv() => {} }
    tracing::warn!("second signal: exiting without draining");
    std::process::exit(130);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_clap_error_is_one_line_with_the_arguments_it_lists() {
        let e = Cli::try_parse_from(["screamer"]).unwrap_err();
        assert_eq!(
            one_line(&e.render().to_string()),
            "error: the following required arguments were not provided: --dsn <DSN> --stream <STREAM>"
        );
        let e = Cli::try_parse_from([
            "screamer",
            "--dsn",
            "projects/p/instances/i/databases/d",
            "--stream",
            "S",
            "--ordering",
            "x",
        ])
        .unwrap_err();
        assert_eq!(
            one_line(&e.render().to_string()),
            "error: invalid value 'x' for '--ordering <key|transactions>': unknown ordering \"x\": expected key or transactions"
        );
    }
}
