//! `screamer plugin run`: a chain of plugins over NDJSON records from stdin.
//!
//! Place in the flow: the author's side door into the same pipeline a stream run uses
//! (destinations, dead letters, limits, hot swap). Lines are processed as they arrive, in
//! batches of what has arrived, so `plugin run` can sit in a pipe.

use std::io::BufRead;
use std::path::PathBuf;
use std::sync::Arc;

use super::input::InputLine;
use crate::cli::config::{PipelineArgs, PipelineConfig};
use crate::cli::progress::per_record_micros;
use crate::cli::{RunError, build_pipeline};
use screamer::observe::{Metrics, PluginTotals};
use screamer::plugin::Input;

/// Most lines per batch in `plugin run` (fewer when fewer have arrived).
const RUN_BATCH: usize = 256;

/// How `plugin run` reports and reloads.
pub struct RunOptions {
    pub stats: bool,
    pub watch: bool,
}

pub async fn run_stdin(
    files: &[PathBuf],
    args: &PipelineArgs,
    options: RunOptions,
) -> Result<(), RunError> {
    let config = PipelineConfig::resolve(files, args)?;
    if config.plugins.is_empty() {
        return Err(RunError::Input(
            "plugin run: no plugins: give .wasm files, or a --config file with [[plugins]]"
                .to_owned(),
        ));
    }
    let metrics = Arc::new(Metrics::new());
    let built = build_pipeline(&config, metrics.clone()).await?;
    let pipeline = built.pipeline;
    let stop_watching = tokio_util::sync::CancellationToken::new();
    let _hot_swap = match (options.watch, built.plugins) {
        (true, Some((runtime, chain))) => Some(screamer::plugin::watch(
            runtime,
            chain,
            stop_watching.child_token(),
        )?),
        _ => None,
    };
    let _stop_watching = stop_watching.drop_guard();
    let mut lines = read_stdin();
    let mut records = 0usize;
    // Each batch is what has arrived: at most RUN_BATCH lines, and never a wait for more
    // once one is there, so a line in a pipe is processed (and its output flushed) at once.
    while let Some(first) = lines.recv().await {
        let mut batch = vec![first];
        while batch.len() < RUN_BATCH {
            match lines.try_recv() {
                Ok(line) => batch.push(line),
                Err(_) => break,
            }
        }
        // What came before a bad line is processed first.
        let failure = batch
            .iter()
            .position(Result::is_err)
            .map(|i| batch.remove(i));
        let batch: Vec<InputLine> = batch.into_iter().map_while(Result::ok).collect();
        let inputs: Vec<Input<'_>> = batch.iter().map(InputLine::input).collect();
        pipeline
            .process(&inputs, None)
            .await
            .map_err(|e| RunError::Io(std::io::Error::other(e)))?;
        records += batch.len();
        if let Some(Err(e)) = failure {
            return Err(e);
        }
    }
    let dead_letters = metrics.progress().dead_letters;
    tracing::info!(records, dead_letters, "plugin run done");
    if options.stats {
        eprint!("{}", stats_table(&metrics.plugins()));
    }
    Ok(())
}

/// Reads stdin on a thread of its own (blocking reads; parsing overlaps processing): each
/// record line, or the first error (after which nothing more is read).
fn read_stdin() -> tokio::sync::mpsc::Receiver<Result<InputLine, RunError>> {
    let (tx, rx) = tokio::sync::mpsc::channel(2 * RUN_BATCH);
    std::thread::spawn(move || {
        let stdin = std::io::stdin().lock();
        for (n, line) in stdin.split(b'\n').enumerate() {
            let parsed = line.map_err(RunError::from).and_then(|line| {
                let line = String::from_utf8(line).map_err(|e| {
                    RunError::Input(format!(
                        "stdin line {}: not UTF-8 text (invalid byte at column {})",
                        n + 1,
                        e.utf8_error().valid_up_to() + 1
                    ))
                })?;
                if line.trim().is_empty() {
                    return Ok(None);
                }
                InputLine::parse(&line)
                    .map(Some)
                    .map_err(|e| RunError::Input(format!("stdin line {}: {e}", n + 1)))
            });
            let stop = parsed.is_err();
            if let Some(item) = parsed.transpose()
                && (tx.blocking_send(item).is_err() || stop)
            {
                return;
            }
        }
    });
    rx
}

/// Per-plugin counts and time, one row per plugin in chain order.
fn stats_table(plugins: &[(String, PluginTotals)]) -> String {
    let mut table = format!(
        "{:<20} {:>8} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>10}\n",
        "plugin",
        "calls",
        "records",
        "keep",
        "drop",
        "patch",
        "replace",
        "emit",
        "fail",
        "instances",
        "us/record"
    );
    for (name, t) in plugins {
        let o = &t.outcomes;
        table += &format!(
            "{:<20} {:>8} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>10.2}\n",
            name,
            t.calls,
            o.total(),
            o.keep,
            o.drop,
            o.patch,
            o.replace,
            o.emit,
            o.fail,
            t.instances_started,
            per_record_micros(t.busy, o.total()),
        );
    }
    table
}
