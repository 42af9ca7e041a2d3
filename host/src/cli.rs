//! Command line: flags, validation, logging, signals and exit codes.
//!
//! Place in the flow: the edge. It parses and checks every input before touching Spanner
//! (exit 2 with one line naming the input), builds the source, store and NDJSON sink, runs
//! the subscriber until `--end` or SIGINT/SIGTERM (exit 0 after a clean drain), and maps
//! runtime failures to exit 1.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

use crate::dsn::DatabaseName;
use crate::partition::{MemoryStore, PartitionStore, SpannerStore, StoreError};
use crate::reader::ReaderError;
use crate::sink::NdjsonSink;
use crate::source::{Endpoint, SourceError, SpannerSource};
use crate::subscriber::{SubscribeError, Subscriber, SubscriberOptions};
use crate::timestamp::Timestamp;

/// Reads a Spanner change stream and prints every data change record as NDJSON on stdout.
#[derive(Debug, Parser)]
#[command(name = "screamer", version, about)]
pub struct Args {
    /// Database: projects/P/instances/I/databases/D.
    #[arg(long, env = "DSN")]
    pub dsn: DatabaseName,
    /// Change stream name.
    #[arg(long, env = "STREAM")]
    pub stream: String,
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
    #[arg(long, env = "HEARTBEAT_INTERVAL", default_value = "3s", value_parser = parse_heartbeat)]
    pub heartbeat_interval: Duration,
    /// This runner's id; default: random.
    #[arg(long, env = "RUNNER_ID")]
    pub runner_id: Option<String>,
    /// Most partitions this runner reads at once.
    #[arg(long, env = "MAX_CONNECTIONS", default_value_t = 400, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_connections: u32,
    /// How often acknowledged positions are written to the metadata table.
    #[arg(long, env = "CHECKPOINT_INTERVAL", default_value = "1s", value_parser = parse_duration)]
    pub checkpoint_interval: Duration,
    /// Log filter (tracing syntax), written to stderr.
    #[arg(long, env = "LOG_LEVEL", default_value = "info")]
    pub log_level: String,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s)
        .map_err(|e| format!("{s:?} is not a duration like 500ms, 3s or 1m ({e})"))
}

fn parse_heartbeat(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    if !(Duration::from_secs(1)..=Duration::from_secs(300)).contains(&d) {
        return Err(format!("{s:?} is outside 1s..300s"));
    }
    Ok(d)
}

/// Exit code 2: the user's input is wrong.
const INVALID_INPUT: u8 = 2;

/// Parses the process arguments and runs; the whole binary.
pub fn main() -> ExitCode {
    let args = match Args::try_parse() {
        Ok(a) => a,
        Err(e) => {
            let code = if e.use_stderr() { INVALID_INPUT } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    if let (Some(start), Some(end)) = (args.start, args.end)
        && end <= start
    {
        eprintln!("error: --end {end} must be after --start {start}");
        return ExitCode::from(INVALID_INPUT);
    }
    let filter = match EnvFilter::try_new(&args.log_level) {
        Ok(f) => f,
        Err(e) => {
            eprintln!(
                "error: --log-level {:?} is not a tracing filter: {e}",
                args.log_level
            );
            return ExitCode::from(INVALID_INPUT);
        }
    };
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    match runtime.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

/// A failure of the run, with the exit code it deserves.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Subscribe(#[from] SubscribeError),
}

impl RunError {
    /// 2 for what the user's input caused, 1 for runtime failures.
    pub fn exit_code(&self) -> u8 {
        let input = match self {
            RunError::Source(e) => source_input_error(e),
            RunError::Store(e) => store_input_error(e),
            RunError::Subscribe(SubscribeError::Store(e)) => store_input_error(e),
            RunError::Subscribe(SubscribeError::EmptyRange { .. }) => true,
            RunError::Subscribe(SubscribeError::Reader(ReaderError::Source { source, .. })) => {
                source_input_error(source)
            }
            RunError::Subscribe(_) => false,
        };
        if input { INVALID_INPUT } else { 1 }
    }
}

fn source_input_error(e: &SourceError) -> bool {
    matches!(
        e,
        SourceError::DatabaseNotFound { .. }
            | SourceError::StreamNotFound { .. }
            | SourceError::StartOutOfRange { .. }
    )
}

fn store_input_error(e: &StoreError) -> bool {
    matches!(
        e,
        StoreError::InvalidTableName(_)
            | StoreError::SchemaMismatch { .. }
            | StoreError::UnsupportedDialect { .. }
    )
}

async fn run(args: Args) -> Result<(), RunError> {
    let endpoint = Endpoint::from_env();
    let source = SpannerSource::connect(&endpoint, &args.dsn, &args.stream).await?;
    tracing::debug!(dialect = ?source.dialect(), "change stream found");
    let store: Arc<dyn PartitionStore> = match &args.metadata_table {
        Some(table) => {
            let db = args.partition_dsn.as_ref().unwrap_or(&args.dsn);
            Arc::new(SpannerStore::connect(&endpoint, db, table).await?)
        }
        None => Arc::new(MemoryStore::new()),
    };
    let defaults = SubscriberOptions::default();
    let options = SubscriberOptions {
        runner_id: args.runner_id.unwrap_or(defaults.runner_id),
        start: args.start,
        end: args.end,
        heartbeat_interval: args.heartbeat_interval,
        max_connections: args.max_connections as usize,
        checkpoint_interval: args.checkpoint_interval,
        ..defaults
    };
    let shutdown = CancellationToken::new();
    tokio::spawn(forward_signals(shutdown.clone()));
    let subscriber = Subscriber::new(source.clone(), store, options);
    let result = subscriber.subscribe(NdjsonSink::stdout(), shutdown).await;
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
