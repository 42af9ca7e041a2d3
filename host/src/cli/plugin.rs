//! `screamer plugin check` and `screamer plugin run`: plugins without Spanner.
//!
//! Place in the flow: a side door for plugin authors. `check` loads a component exactly as
//! a run would (world, imports, `info`, `init` with the given configuration) and prints
//! what it is; `run` feeds NDJSON records from stdin (the output format of screamer itself)
//! through the same pipeline the main command uses, so what works here works on a stream.

use std::io::BufRead;
use std::path::PathBuf;
use std::sync::Arc;

use serde_json::{Map, Value};

use super::config::{PipelineArgs, PipelineConfig};
use super::progress::per_record_micros;
use super::{RunError, build_pipeline};
use screamer::observe::{Metrics, PluginTotals};
use screamer::plugin::{Input, PluginError, PluginRuntime, PluginSpec};
use screamer::record::DataChangeRecord;

/// Most lines per batch in `plugin run` (fewer when fewer have arrived).
const RUN_BATCH: usize = 256;

#[derive(Debug, clap::Subcommand)]
pub enum PluginCommand {
    /// Validate a component against the plugin world and print what it is and exports.
    Check {
        /// The `.wasm` component.
        file: PathBuf,
        /// Configuration to try `init` with (a JSON object; default `{}`).
        #[arg(long = "plugin-config", value_name = "JSON")]
        plugin_config: Option<String>,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
        /// Directory for compiled plugins (default ~/.cache/screamer/plugins).
        #[arg(long, value_name = "DIR", env = "SCREAMER_PLUGIN_CACHE")]
        plugin_cache: Option<PathBuf>,
    },
    /// Run a chain of plugins over NDJSON records from stdin; outputs go to stdout.
    Run {
        /// The `.wasm` components, in chain order (after the `--config` file's plugins).
        files: Vec<PathBuf>,
        #[command(flatten)]
        pipeline: PipelineArgs,
        /// At the end, print each plugin's calls, outcomes and time per record to stderr.
        #[arg(long)]
        stats: bool,
        /// Swap in a plugin file's new version when it changes (or on SIGHUP), as a
        /// stream run does; the next lines go through it.
        #[arg(long)]
        watch: bool,
    },
}

pub async fn run(command: PluginCommand) -> Result<(), RunError> {
    match command {
        PluginCommand::Check {
            file,
            plugin_config,
            json,
            plugin_cache,
        } => check(file, plugin_config, json, plugin_cache).await,
        PluginCommand::Run {
            files,
            pipeline,
            stats,
            watch,
        } => run_stdin(&files, &pipeline, RunOptions { stats, watch }).await,
    }
}

async fn check(
    file: PathBuf,
    config: Option<String>,
    json: bool,
    cache: Option<PathBuf>,
) -> Result<(), RunError> {
    let mut spec = PluginSpec::new(file);
    let config_given = config.is_some();
    if let Some(text) = config {
        spec.config = serde_json::from_str::<Value>(&text)
            .ok()
            .filter(Value::is_object)
            .ok_or_else(|| {
                RunError::Input(format!("--plugin-config {text:?}: expected a JSON object"))
            })?;
    }
    let runtime = PluginRuntime::new(cache.or_else(PluginRuntime::default_cache_dir))?;
    let report = runtime.check(&spec).await?;
    // A plugin that needs configuration is valid; only a configuration given here and
    // refused is an error.
    if let (true, Some(message)) = (config_given, &report.init_refused) {
        return Err(PluginError::Config {
            plugin: format!("{}@{}", report.name, report.version),
            message: message.clone(),
        }
        .into());
    }
    if json {
        println!(
            "{}",
            serde_json::to_string(&report).expect("a report serializes")
        );
    } else {
        println!("{}: ok", report.path.display());
        println!("  plugin:  {} {}", report.name, report.version);
        println!("  world:   {}", report.world);
        println!("  exports: {}", report.exports.join(", "));
        println!("  imports: {}", report.imports.join(", "));
        println!("  sha256:  {}", report.sha256);
        println!("  load:    {:.1} ms", report.load_millis);
        if let Some(message) = &report.init_refused {
            println!("  init:    refuses the empty configuration: {message}");
            println!("           (give one with --plugin-config to check it)");
        }
    }
    Ok(())
}

/// A record line as screamer prints it; fields beyond the record's own are kept.
struct InputLine {
    record: DataChangeRecord,
    extra: Map<String, Value>,
}

/// The fields a record line must have; every other field of the record has a default.
const REQUIRED: [&str; 3] = ["table_name", "mod_type", "mods"];

/// What a minimal record line gets for the fields it leaves out (documented in the README,
/// "Plugins").
fn default_field(name: &str) -> Option<Value> {
    Some(match name {
        "partition_token" => Value::from("plugin-run"),
        "commit_timestamp" => Value::from("1970-01-01T00:00:00Z"),
        "record_sequence" => Value::from("00000000"),
        "server_transaction_id" => Value::from(""),
        "is_last_record_in_transaction_in_partition" => Value::from(true),
        "column_types" => Value::Array(Vec::new()),
        "value_capture_type" => Value::from("OLD_AND_NEW_VALUES"),
        "number_of_records_in_transaction" | "number_of_partitions_in_transaction" => {
            Value::from(1)
        }
        "transaction_tag" => Value::from(""),
        "is_system_transaction" => Value::from(false),
        _ => return None,
    })
}

impl InputLine {
    /// A record line: whole as screamer prints it, or minimal (`table_name`, `mod_type`,
    /// `mods`, the rest defaulted); every missing required field is named at once.
    fn parse(line: &str) -> Result<Self, String> {
        let mut fields: Map<String, Value> =
            serde_json::from_str(line).map_err(|e| format!("not a JSON object: {e}"))?;
        let missing: Vec<&str> = REQUIRED
            .into_iter()
            .filter(|f| !fields.contains_key(*f))
            .collect();
        if !missing.is_empty() {
            return Err(format!(
                "missing {}: a record needs at least table_name, mod_type and mods",
                missing.join(", ")
            ));
        }
        let mut defaulted = false;
        for name in DataChangeRecord::FIELDS {
            if !fields.contains_key(name)
                && let Some(value) = default_field(name)
            {
                fields.insert(name.to_owned(), value);
                defaulted = true;
            }
        }
        // Mods keep their JSON text (raw values), which serde reads from text only: a line
        // with defaults added is written out again first.
        let record: Result<DataChangeRecord, _> = if defaulted {
            serde_json::from_str(&Value::Object(fields.clone()).to_string())
        } else {
            serde_json::from_str(line)
        };
        let record = record.map_err(|e| format!("not a data change record: {e}"))?;
        fields.retain(|k, _| !DataChangeRecord::FIELDS.contains(&k.as_str()));
        Ok(InputLine {
            record,
            extra: fields,
        })
    }
}

/// How `plugin run` reports and reloads.
struct RunOptions {
    stats: bool,
    watch: bool,
}

async fn run_stdin(
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
        let inputs: Vec<Input<'_>> = batch
            .iter()
            .map(|l| Input {
                record: &l.record,
                extra: Some(&l.extra).filter(|m| !m.is_empty()),
            })
            .collect();
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
        "{:<20} {:>8} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>10}\n",
        "plugin",
        "calls",
        "records",
        "keep",
        "drop",
        "replace",
        "emit",
        "fail",
        "instances",
        "us/record"
    );
    for (name, t) in plugins {
        let o = &t.outcomes;
        table += &format!(
            "{:<20} {:>8} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>10.2}\n",
            name,
            t.calls,
            o.total(),
            o.keep,
            o.drop,
            o.replace,
            o.emit,
            o.fail,
            t.instances_started,
            per_record_micros(t.busy, o.total()),
        );
    }
    table
}
