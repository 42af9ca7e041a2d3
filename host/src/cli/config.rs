//! Pipeline configuration: the `--config` TOML file and the plugin flags, resolved into the
//! plugin specs, sinks and limits the pipeline runs with.
//!
//! Place in the flow: the edge, before anything starts. Every mistake is reported as one
//! line naming the file or flag and what is expected. Precedence: flags over the file over
//! defaults; the chain is the file's `[[plugins]]` in order, then `--plugin` flags in order.
//!
//! Destinations are URIs (`screamer::destination::DestinationUri`): `-`, `file:PATH` or a
//! path (relative to this file), `http(s)://...`, `pubsub://...`, `kafka://...`,
//! `nats://...`, `postgres://...`; or a table of `uri` and the URI's options as keys
//! (`{ uri = "pubsub://projects/p/topics/t", mods = "split" }`).
//!
//! ```toml
//! output = "-"                          # default: stdout
//! dead_letter = "dead-letters.ndjson"   # default: stderr
//! batch_size = 64                       # records per plugin call
//!
//! [side_outputs]
//! audit = "audit.ndjson"                # default: the main output, tagged "output": "audit"
//!
//! [[plugins]]
//! path = "plugins/redact.wasm"          # relative to this file
//! config = { columns = ["Email"], mode = "hash" }
//! timeout = "500ms"                     # per call, WASI calls included (default 1s)
//! memory = "64MiB"                      # per instance (default 128MiB)
//! max_emissions = 1000                  # records one input may become (default 10000)
//! max_call_bytes = "4MiB"               # outcomes copied out of one call (default 16MiB)
//! env = ["TZ"]                          # granted environment variables (default none)
//! dirs = ["/usr/share/zoneinfo"]        # granted read-only directories, HOST[:GUEST]
//! network = ["127.0.0.1:8080", "10.0.0.0/8:*", "db.internal:5432"]
//!                                       # granted TCP/UDP destinations (default none)
//! side_outputs = ["audit"]              # side outputs it emits to: each needs a destination
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;

use screamer::destination::DestinationUri;
use screamer::plugin::{Limits, NetworkGrant, PluginSpec, PreopenDir, WasiGrants};
use screamer::{DEFAULT_CHUNK_ROWS, SnapshotMode};
use screamer::{DEFAULT_ORDERING_BUFFER, Ordering};

/// Default number of records per plugin call: most of the batching gain, small latency.
pub const DEFAULT_BATCH_SIZE: usize = 64;

/// A mistake in the configuration file or the plugin flags.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(String);

/// The flags that shape the pipeline (shared by the main command and `plugin run`).
#[derive(Debug, Default, Clone, clap::Args)]
pub struct PipelineArgs {
    /// Plugin configuration as NAME=JSON, NAME being the plugin file's name without
    /// `.wasm` (repeatable).
    #[arg(long = "plugin-config", value_name = "NAME=JSON")]
    pub plugin_config: Vec<String>,
    /// TOML file describing the pipeline (plugins, configs, limits, grants, outputs).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Where output records go: `-` (stdout), `file:PATH` or a path, `http(s)://...`,
    /// `pubsub://...`, `kafka://...`, `nats://...`, or a replica, `postgres://...`.
    #[arg(long, value_name = "URI", env = "OUTPUT")]
    pub output: Option<String>,
    /// Where records a plugin failed or a destination refused go (default: stderr).
    #[arg(long, value_name = "URI")]
    pub dead_letter: Option<String>,
    /// Side output destination as NAME=URI (repeatable; default: the main output, tagged).
    #[arg(long = "side-output", value_name = "NAME=URI")]
    pub side_output: Vec<String>,
    /// Put each record's partition metadata beside it, as the Go screamer prints it
    /// (`start_timestamp`, `watermark`, `created_at`, `scheduled_at`, `running_at`).
    #[arg(long, env = "PARTITION_METADATA")]
    pub partition_metadata: bool,
    /// `key` (default): per-key commit order, partitions in parallel over many runners.
    /// `transactions`: whole transactions in commit order across every partition; one
    /// runner of the stream is active, the others stand by.
    #[arg(long, env = "ORDERING", value_name = "key|transactions", value_parser = str::parse::<Ordering>)]
    pub ordering: Option<Ordering>,
    /// With --ordering transactions: bytes of records held for reassembly before readers
    /// ahead of the slowest partition wait, e.g. 64MiB (the default).
    #[arg(long, allow_negative_numbers = true, env = "ORDERING_BUFFER", value_name = "SIZE", value_parser = parse_size)]
    pub ordering_buffer: Option<usize>,
    /// Per-call deadline of every plugin, 1ms to 1h (default 1s).
    #[arg(long, allow_negative_numbers = true, value_name = "DURATION", value_parser = parse_plugin_timeout)]
    pub plugin_timeout: Option<Duration>,
    /// Memory cap of every plugin instance, e.g. 64MiB (default 128MiB).
    #[arg(long, allow_negative_numbers = true, value_name = "SIZE", value_parser = parse_size)]
    pub plugin_memory: Option<usize>,
    /// Records one input record may turn into over the chain (default 10000).
    #[arg(long, allow_negative_numbers = true, value_name = "N", value_parser = parse_count)]
    pub plugin_max_emissions: Option<usize>,
    /// Bytes of outcomes the host copies out of one plugin call, e.g. 4MiB (default 16MiB).
    #[arg(long, allow_negative_numbers = true, value_name = "SIZE", value_parser = parse_size)]
    pub plugin_max_call_bytes: Option<usize>,
    /// Records per plugin call (default 64).
    #[arg(long, allow_negative_numbers = true, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=65536))]
    pub plugin_batch_size: Option<u32>,
    /// Directory for compiled plugins (default ~/.cache/screamer/plugins).
    #[arg(long, value_name = "DIR", env = "SCREAMER_PLUGIN_CACHE")]
    pub plugin_cache: Option<PathBuf>,
    /// Write /tmp/perf-PID.map naming the plugins' compiled functions, for `perf report`.
    #[arg(long)]
    pub plugin_perf_map: bool,
}

/// Everything the pipeline needs, resolved.
#[derive(Debug, Clone)]
pub struct PipelineConfig {
    pub plugins: Vec<PluginSpec>,
    pub batch_size: usize,
    pub output: DestinationUri,
    /// `None`: stderr.
    pub dead_letter: Option<DestinationUri>,
    pub side_outputs: BTreeMap<String, DestinationUri>,
    pub cache_dir: Option<PathBuf>,
    pub partition_metadata: bool,
    /// Name the plugins' compiled functions for `perf` (`--plugin-perf-map`).
    pub perf_map: bool,
    pub ordering: Ordering,
    /// Bytes of the transactions buffer (`--ordering-buffer`).
    pub ordering_buffer: usize,
    /// The file's `snapshot`, `snapshot_chunk_rows`, `data_boost` and `database_role` (the
    /// stream run's flags override them).
    pub reads: ReadArgs,
}

/// How a stream run reads Spanner: the snapshot, its chunks, Data Boost, the database role.
/// Flags of a stream run, keys of the TOML file.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ReadArgs {
    /// `never` (default): changes after the start only. `initial`: the first run on the
    /// metadata table delivers every row the stream watches as it was at --start (`"snapshot":
    /// true`), then every change after it. `only`: the snapshot, then exit.
    #[arg(long, env = "SNAPSHOT", value_name = "never|initial|only", value_parser = str::parse::<SnapshotMode>)]
    pub snapshot: Option<SnapshotMode>,
    /// Rows per snapshot chunk, the unit runners share and a crash repeats (default 5000).
    #[arg(long, allow_negative_numbers = true, env = "SNAPSHOT_CHUNK_ROWS", value_name = "N", value_parser = parse_count)]
    pub snapshot_chunk_rows: Option<usize>,
    /// Read the snapshot on Data Boost, Spanner's independent compute (partitioned reads,
    /// billed apart; not on the emulator).
    #[arg(long, env = "DATA_BOOST")]
    pub data_boost: bool,
    /// Read as this fine-grained access control role: the change stream, the information
    /// schema and the snapshot (not the metadata table).
    #[arg(long, env = "DATABASE_ROLE", value_name = "ROLE")]
    pub database_role: Option<String>,
}

/// [`ReadArgs`] resolved: flags over the file's keys over the defaults.
#[derive(Debug, Clone)]
pub struct Reads {
    pub snapshot: SnapshotMode,
    pub snapshot_chunk_rows: usize,
    pub data_boost: bool,
    pub database_role: Option<String>,
}

impl ReadArgs {
    /// These flags over `file`'s.
    pub fn over(self, file: ReadArgs) -> Reads {
        Reads {
            snapshot: self.snapshot.or(file.snapshot).unwrap_or_default(),
            snapshot_chunk_rows: self
                .snapshot_chunk_rows
                .or(file.snapshot_chunk_rows)
                .unwrap_or(DEFAULT_CHUNK_ROWS),
            data_boost: self.data_boost || file.data_boost,
            database_role: self.database_role.or(file.database_role),
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    #[serde(default)]
    plugins: Vec<FilePlugin>,
    output: Option<FileUri>,
    dead_letter: Option<FileUri>,
    batch_size: Option<usize>,
    cache_dir: Option<PathBuf>,
    #[serde(default)]
    side_outputs: BTreeMap<String, FileUri>,
    #[serde(default)]
    partition_metadata: bool,
    ordering: Option<String>,
    ordering_buffer: Option<String>,
    snapshot: Option<String>,
    snapshot_chunk_rows: Option<usize>,
    #[serde(default)]
    data_boost: bool,
    database_role: Option<String>,
}

/// A destination in the file: a URI, or a table of `uri` and its options.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum FileUri {
    Uri(String),
    WithOptions {
        uri: String,
        #[serde(flatten)]
        options: BTreeMap<String, toml::Value>,
    },
}

impl FileUri {
    /// The URI with the table's options as its query.
    fn to_uri(&self) -> String {
        let (uri, options) = match self {
            FileUri::Uri(uri) => return uri.clone(),
            FileUri::WithOptions { uri, options } => (uri, options),
        };
        let mut text = uri.clone();
        for (i, (key, value)) in options.iter().enumerate() {
            let value = match value {
                toml::Value::String(s) => s.clone(),
                // Numbers and booleans read as JSON does (`100`, `true`).
                other => serde_json::to_string(other).unwrap_or_default(),
            };
            let separator = if i == 0 && !uri.contains('?') {
                '?'
            } else {
                '&'
            };
            let value = value.replace('%', "%25").replace('&', "%26");
            text.push_str(&format!("{separator}{key}={value}"));
        }
        text
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FilePlugin {
    path: PathBuf,
    #[serde(default)]
    config: Option<toml::Table>,
    timeout: Option<String>,
    memory: Option<String>,
    max_emissions: Option<usize>,
    max_call_bytes: Option<String>,
    #[serde(default)]
    env: Vec<String>,
    #[serde(default)]
    dirs: Vec<String>,
    #[serde(default)]
    network: Vec<String>,
    /// The side outputs the plugin emits to: each must have a destination.
    #[serde(default)]
    side_outputs: Vec<String>,
}

impl PipelineConfig {
    /// Resolves the file (if any), then `plugins` (the `--plugin` flags or `plugin run`
    /// files) and the other flags on top.
    pub fn resolve(plugins: &[PathBuf], args: &PipelineArgs) -> Result<Self, ConfigError> {
        let (mut file, base) = match &args.config {
            Some(path) => read_file(path)?,
            None => (FileConfig::default(), PathBuf::new()),
        };
        let (specs, declared) = plugin_specs(plugins, args, &mut file, &base)?;
        let outputs = Outputs::resolve(args, &file, &base)?;
        outputs.receive(&declared)?;
        let batch_size = match (args.plugin_batch_size, file.batch_size) {
            (Some(n), _) => n as usize,
            (None, Some(n)) if !(1..=MAX_BATCH_SIZE).contains(&n) => {
                return Err(ConfigError(format!(
                    "--config: batch_size {n} is outside 1..{MAX_BATCH_SIZE}"
                )));
            }
            (None, Some(n)) => n,
            (None, None) => DEFAULT_BATCH_SIZE,
        };
        let partition_metadata = args.partition_metadata || file.partition_metadata;
        let (ordering, ordering_buffer) = ordering(args, &file, partition_metadata)?;
        outputs.fit(ordering)?;
        let reads = ReadArgs {
            snapshot: file
                .snapshot
                .as_deref()
                .map(str::parse)
                .transpose()
                .map_err(|e| in_file(args, "snapshot", e))?,
            snapshot_chunk_rows: match file.snapshot_chunk_rows {
                Some(0) => {
                    return Err(in_file(
                        args,
                        "snapshot_chunk_rows",
                        "must be at least 1".into(),
                    ));
                }
                n => n,
            },
            data_boost: file.data_boost,
            database_role: file.database_role.clone(),
        };
        Ok(PipelineConfig {
            reads,
            partition_metadata,
            ordering,
            ordering_buffer,
            plugins: specs,
            batch_size,
            output: outputs.output,
            dead_letter: outputs.dead_letter,
            side_outputs: outputs.side_outputs,
            cache_dir: args
                .plugin_cache
                .clone()
                .or(file.cache_dir.map(|d| base.join(d))),
            perf_map: args.plugin_perf_map,
        })
    }
}

/// A side output a file plugin declares: where (`--config F: plugins[i]`) and its name.
type Declared = (String, String);

/// The file's `[[plugins]]` (taken out of `file`), then `plugins`, with `--plugin-config`
/// applied; and the side outputs each file plugin declares, with where it declares them.
fn plugin_specs(
    plugins: &[PathBuf],
    args: &PipelineArgs,
    file: &mut FileConfig,
    base: &Path,
) -> Result<(Vec<PluginSpec>, Vec<Declared>), ConfigError> {
    let mut specs = Vec::new();
    let mut declared = Vec::new();
    for (i, p) in std::mem::take(&mut file.plugins).into_iter().enumerate() {
        let place = format!(
            "--config {}: plugins[{i}]",
            args.config.as_deref().unwrap_or(Path::new("")).display()
        );
        declared.extend(p.side_outputs.iter().map(|o| (place.clone(), o.clone())));
        specs.push(
            p.into_spec(base, args)
                .map_err(|e| ConfigError(format!("{place}: {e}")))?,
        );
    }
    for path in plugins {
        let mut spec = PluginSpec::new(path.clone());
        spec.limits = args.limits();
        specs.push(spec);
    }
    for entry in &args.plugin_config {
        apply_plugin_config(&mut specs, entry)?;
    }
    Ok((specs, declared))
}

/// Where records go: the flags over the file.
struct Outputs {
    output: DestinationUri,
    dead_letter: Option<DestinationUri>,
    side_outputs: BTreeMap<String, DestinationUri>,
}

impl Outputs {
    fn resolve(args: &PipelineArgs, file: &FileConfig, base: &Path) -> Result<Self, ConfigError> {
        let place = || {
            format!(
                "--config {}",
                args.config.as_deref().unwrap_or(Path::new("")).display()
            )
        };
        let in_file = |key: &str, text: &str| {
            destination(text)
                .map(|d| d.relative_to(base))
                .map_err(|e| ConfigError(format!("{}: {key}: {e}", place())))
        };
        let flag = |name: &str, text: &str| {
            destination(text).map_err(|e| ConfigError(format!("{name}: {e}")))
        };
        let mut side_outputs = BTreeMap::new();
        for (name, uri) in &file.side_outputs {
            let uri = in_file(&format!("side_outputs.{name}"), &uri.to_uri())?;
            side_outputs.insert(name.clone(), uri);
        }
        for entry in &args.side_output {
            let (name, uri) = entry
                .split_once('=')
                .filter(|(n, p)| !n.is_empty() && !p.is_empty())
                .ok_or_else(|| {
                    ConfigError(format!("--side-output {entry:?}: expected NAME=URI"))
                })?;
            side_outputs.insert(
                name.to_owned(),
                flag(&format!("--side-output {name}"), uri)?,
            );
        }
        let output = match (&args.output, &file.output) {
            (Some(uri), _) => flag("--output", uri)?,
            (None, Some(uri)) => in_file("output", &uri.to_uri())?,
            (None, None) => DestinationUri::Stdout,
        };
        let dead_letter = match (&args.dead_letter, &file.dead_letter) {
            (Some(uri), _) => Some(flag("--dead-letter", uri)?),
            (None, Some(uri)) => Some(in_file("dead_letter", &uri.to_uri())?),
            (None, None) => None,
        }
        .map(takes_dead_letters)
        .transpose()?;
        Ok(Outputs {
            output,
            dead_letter,
            side_outputs,
        })
    }

    /// A side output a plugin emits to and nothing receives is a mistake found now, not
    /// records found later in the main output.
    fn receive(&self, declared: &[Declared]) -> Result<(), ConfigError> {
        match declared
            .iter()
            .find(|(_, name)| !self.side_outputs.contains_key(name))
        {
            Some((place, name)) => Err(ConfigError(format!(
                "{place}: side output {name:?} has no destination: define it under \
                 [side_outputs] or with --side-output {name}=URI"
            ))),
            None => Ok(()),
        }
    }

    /// One message per transaction needs whole transactions.
    fn fit(&self, ordering: Ordering) -> Result<(), ConfigError> {
        let grouped = std::iter::once(&self.output)
            .chain(self.side_outputs.values())
            .find(|uri| uri.groups_transactions());
        match grouped.filter(|_| ordering != Ordering::Transactions) {
            Some(uri) => Err(ConfigError(format!(
                "{uri}: transactions=grouped needs --ordering transactions"
            ))),
            None => Ok(()),
        }
    }
}

/// A bad value of `key` in the TOML file, as one line naming the file.
fn in_file(args: &PipelineArgs, key: &str, e: String) -> ConfigError {
    let path = args.config.as_deref().unwrap_or(Path::new("")).display();
    ConfigError(format!("--config {path}: {key}: {e}"))
}

/// The ordering and its buffer, from the flags or else the file. Partition metadata cannot
/// go beside transactions: a batch of whole transactions spans partitions.
fn ordering(
    args: &PipelineArgs,
    file: &FileConfig,
    partition_metadata: bool,
) -> Result<(Ordering, usize), ConfigError> {
    let ordering = match (args.ordering, &file.ordering) {
        (Some(o), _) => o,
        (None, Some(text)) => text.parse().map_err(|e| in_file(args, "ordering", e))?,
        (None, None) => Ordering::Key,
    };
    let buffer = match (args.ordering_buffer, &file.ordering_buffer) {
        (Some(n), _) => n,
        (None, Some(text)) => parse_size(text).map_err(|e| in_file(args, "ordering_buffer", e))?,
        (None, None) => DEFAULT_ORDERING_BUFFER,
    };
    if buffer == 0 {
        return Err(ConfigError(
            "--ordering-buffer must be at least 1 byte".into(),
        ));
    }
    if ordering == Ordering::Transactions && partition_metadata {
        return Err(ConfigError(
            "--partition-metadata cannot be used with --ordering transactions: a batch of \
             whole transactions spans partitions"
                .into(),
        ));
    }
    Ok((ordering, buffer))
}

/// Reads and parses the `--config` file; relative paths in it are relative to its folder.
fn read_file(path: &Path) -> Result<(FileConfig, PathBuf), ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigError(format!("--config {}: cannot read: {e}", path.display())))?;
    let file: FileConfig = toml::from_str(&text).map_err(|e| {
        let msg = e.message().to_owned();
        let at = e
            .span()
            .map(|s| format!(" (line {})", text[..s.start].matches('\n').count() + 1))
            .unwrap_or_default();
        ConfigError(format!("--config {}: {msg}{at}", path.display()))
    })?;
    Ok((file, path.parent().map(Path::to_owned).unwrap_or_default()))
}

impl FilePlugin {
    /// The plugin as the runtime loads it; limits the entry leaves out come from the flags.
    fn into_spec(self, base: &Path, args: &PipelineArgs) -> Result<PluginSpec, String> {
        let limits = self.limits(args)?;
        let dirs = self
            .dirs
            .iter()
            .map(|d| parse_dir(d, base))
            .collect::<Result<_, _>>()
            .map_err(|e| format!("dirs: {e}"))?;
        let network = self
            .network
            .iter()
            .map(|g| g.parse::<NetworkGrant>())
            .collect::<Result<_, _>>()
            .map_err(|e| format!("network: {e}"))?;
        if let Some(bad) = self.env.iter().find(|name| !is_env_name(name)) {
            return Err(format!(
                "env: {bad:?} is not a variable name (letters, digits and underscores, not \
                 starting with a digit; a grant names each variable)"
            ));
        }
        let config = match self.config {
            Some(table) => serde_json::to_value(table).map_err(|e| format!("config: {e}"))?,
            None => Value::Object(Default::default()),
        };
        Ok(PluginSpec {
            path: base.join(self.path),
            config,
            limits,
            grants: WasiGrants {
                env: self.env,
                dirs,
                network,
            },
        })
    }

    /// The entry's limits; those it leaves out come from the flags, then the defaults.
    fn limits(&self, args: &PipelineArgs) -> Result<Limits, String> {
        let flags = args.limits();
        Ok(Limits {
            timeout: match &self.timeout {
                Some(t) => parse_plugin_timeout(t).map_err(|e| format!("timeout {e}"))?,
                None => flags.timeout,
            },
            memory_bytes: match &self.memory {
                Some(m) => parse_size(m).map_err(|e| format!("memory {e}"))?,
                None => flags.memory_bytes,
            },
            max_emissions: self.max_emissions.unwrap_or(flags.max_emissions),
            max_call_bytes: match &self.max_call_bytes {
                Some(m) => parse_size(m).map_err(|e| format!("max_call_bytes {e}"))?,
                None => flags.max_call_bytes,
            },
        })
    }
}

impl PipelineArgs {
    /// The limits the flags set, defaults for the rest.
    pub fn limits(&self) -> Limits {
        let d = Limits::default();
        Limits {
            timeout: self.plugin_timeout.unwrap_or(d.timeout),
            memory_bytes: self.plugin_memory.unwrap_or(d.memory_bytes),
            max_emissions: self.plugin_max_emissions.unwrap_or(d.max_emissions),
            max_call_bytes: self.plugin_max_call_bytes.unwrap_or(d.max_call_bytes),
        }
    }
}

/// Applies one `--plugin-config NAME=JSON` to every plugin of the chain named `NAME`.
fn apply_plugin_config(specs: &mut [PluginSpec], entry: &str) -> Result<(), ConfigError> {
    let (name, json) = entry
        .split_once('=')
        .ok_or_else(|| ConfigError(format!("--plugin-config {entry:?}: expected NAME=JSON")))?;
    let config: Value = serde_json::from_str(json)
        .map_err(|e| ConfigError(format!("--plugin-config {name}: not JSON: {e}")))?;
    if !config.is_object() {
        return Err(ConfigError(format!(
            "--plugin-config {name}: expected a JSON object like {{\"key\": \"value\"}}"
        )));
    }
    let mut matched = false;
    for spec in specs.iter_mut().filter(|s| plugin_name(&s.path) == name) {
        spec.config = config.clone();
        matched = true;
    }
    if matched {
        return Ok(());
    }
    let names: Vec<String> = specs.iter().map(|s| plugin_name(&s.path)).collect();
    Err(ConfigError(format!(
        "--plugin-config {name}: no plugin named {name} in the chain ({})",
        if names.is_empty() {
            "no plugins".to_owned()
        } else {
            names.join(", ")
        }
    )))
}

/// The name `--plugin-config` uses for a plugin: its file name without `.wasm`.
pub fn plugin_name(path: &Path) -> String {
    path.file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn parse_dir(spec: &str, base: &Path) -> Result<PreopenDir, String> {
    let (host, guest) = match spec.split_once(':') {
        Some((h, g)) => (h, g.to_owned()),
        None => (spec, spec.to_owned()),
    };
    if host.is_empty() || guest.is_empty() {
        return Err(format!("{spec:?}: expected HOST[:GUEST]"));
    }
    Ok(PreopenDir {
        host: base.join(host),
        guest,
    })
}

fn destination(text: &str) -> Result<DestinationUri, screamer::destination::UriError> {
    text.parse()
}

/// A count of at least 1.
pub fn parse_count(s: &str) -> Result<usize, String> {
    s.trim()
        .parse::<usize>()
        .ok()
        .filter(|n| *n > 0)
        .ok_or_else(|| format!("{s:?} is not a whole number of at least 1"))
}

/// `500ms`, `3s`, `1m`...
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s)
        .map_err(|e| format!("{s:?} is not a duration like 500ms, 3s or 1m ({e})"))
}

/// A name a grant can give: `TZ`, `MY_VAR`; not `""`, `*` or `PATH=evil`.
fn is_env_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Records per plugin call at most (the flag's range, and the file's).
const MAX_BATCH_SIZE: usize = 65536;

/// The deadlines a plugin call may have: a zero deadline fails every call, and one past
/// an hour overflows the clock's arithmetic.
pub const PLUGIN_TIMEOUTS: std::ops::RangeInclusive<Duration> =
    Duration::from_millis(1)..=Duration::from_secs(3600);

/// A plugin call's deadline, within [`PLUGIN_TIMEOUTS`].
pub fn parse_plugin_timeout(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    if !PLUGIN_TIMEOUTS.contains(&d) {
        return Err(format!("{s:?} is outside 1ms..1h"));
    }
    Ok(d)
}

/// `64MiB`, `512KiB`, `1GiB`, `1000000` (bytes); `MB`/`KB`/`GB` are decimal.
pub fn parse_size(s: &str) -> Result<usize, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    let bad = || format!("{s:?} is not a size like 64MiB, 512KiB or 1GiB");
    let n: usize = digits.parse().map_err(|_| bad())?;
    let factor: usize = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kib" | "k" => 1 << 10,
        "mib" | "m" => 1 << 20,
        "gib" | "g" => 1 << 30,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        _ => return Err(bad()),
    };
    n.checked_mul(factor).filter(|&b| b > 0).ok_or_else(bad)
}

/// `uri`, unless it cannot take dead letters: a replica applies change records, and a dead
/// letter is not one.
fn takes_dead_letters(uri: DestinationUri) -> Result<DestinationUri, ConfigError> {
    match uri {
        DestinationUri::Postgres(_) => Err(ConfigError(format!(
            "dead letters to {uri}: a PostgreSQL replica takes change records, not dead \
             letters; give them a file, a topic or an endpoint"
        ))),
        other => Ok(other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("64MiB"), Ok(64 << 20));
        assert_eq!(parse_size("1000"), Ok(1000));
        assert_eq!(parse_size("2 GiB"), Ok(2 << 30));
        assert!(parse_size("lots").is_err());
        assert!(parse_size("0").is_err());
    }

    #[test]
    fn a_replica_is_no_place_for_dead_letters() {
        let args = PipelineArgs {
            dead_letter: Some("postgres://u@h/d".into()),
            ..Default::default()
        };
        let e = PipelineConfig::resolve(&[], &args).unwrap_err().to_string();
        assert_eq!(
            e,
            "dead letters to postgres://u@h:5432/d: a PostgreSQL replica takes change records, \
             not dead letters; give them a file, a topic or an endpoint"
        );
    }

    #[test]
    fn timeouts_batch_sizes_and_env_grants_out_of_range_are_refused() {
        assert_eq!(
            parse_plugin_timeout("0s").unwrap_err(),
            "\"0s\" is outside 1ms..1h"
        );
        assert_eq!(
            parse_plugin_timeout("18446744073709551615s").unwrap_err(),
            "\"18446744073709551615s\" is outside 1ms..1h"
        );
        for name in ["", "*", "PATH=evil", "1X"] {
            assert!(!is_env_name(name), "{name:?}");
        }
        assert!(is_env_name("TZ") && is_env_name("_MY_VAR2"));
        let dir = std::env::temp_dir().join(format!("screamer-limits-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("pipeline.toml");
        let args = PipelineArgs {
            config: Some(file.clone()),
            ..Default::default()
        };
        let refused = |toml: &str| {
            std::fs::write(&file, toml).unwrap();
            PipelineConfig::resolve(&[], &args).unwrap_err().to_string()
        };
        assert_eq!(
            refused("batch_size = 10000000"),
            "--config: batch_size 10000000 is outside 1..65536"
        );
        assert!(
            refused("[[plugins]]\npath = 'a.wasm'\nenv = ['PATH=evil']")
                .ends_with("plugins[0]: env: \"PATH=evil\" is not a variable name (letters, digits and underscores, not starting with a digit; a grant names each variable)")
        );
        assert!(
            refused("[[plugins]]\npath = 'a.wasm'\ntimeout = '0s'")
                .ends_with("timeout \"0s\" is outside 1ms..1h")
        );
    }

    #[test]
    fn file_then_flags() {
        let dir = std::env::temp_dir().join(format!("screamer-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("pipeline.toml");
        std::fs::write(
            &file,
            r#"
dead_letter = "dead.ndjson"
output = { uri = "pubsub://projects/p/topics/cdc", mods = "split" }
[side_outputs]
audit = "audit.ndjson"
[[plugins]]
path = "redact.wasm"
config = { columns = ["Email"] }
timeout = "250ms"
env = ["TZ"]
"#,
        )
        .unwrap();
        let args = PipelineArgs {
            config: Some(file.clone()),
            plugin_config: vec![r#"filter={"tables":["T"]}"#.into()],
            plugin_memory: Some(1 << 20),
            ..Default::default()
        };
        let c = PipelineConfig::resolve(&[PathBuf::from("x/filter.wasm")], &args).unwrap();
        assert_eq!(c.plugins.len(), 2);
        assert_eq!(c.plugins[0].path, dir.join("redact.wasm"));
        assert_eq!(
            c.plugins[0].config,
            serde_json::json!({"columns": ["Email"]})
        );
        assert_eq!(c.plugins[0].limits.timeout, Duration::from_millis(250));
        assert_eq!(c.plugins[0].limits.memory_bytes, 1 << 20);
        assert_eq!(c.plugins[0].grants.env, ["TZ"]);
        assert_eq!(c.plugins[1].config, serde_json::json!({"tables": ["T"]}));
        assert_eq!(
            c.dead_letter,
            Some(DestinationUri::File(dir.join("dead.ndjson")))
        );
        assert_eq!(
            c.side_outputs["audit"],
            DestinationUri::File(dir.join("audit.ndjson"))
        );
        assert_eq!(
            c.output,
            "pubsub://projects/p/topics/cdc?mods=split".parse().unwrap()
        );

        std::fs::write(&file, "[[plugins]]\npath = 'a.wasm'\nconfg = {}\n").unwrap();
        let err = PipelineConfig::resolve(&[], &args).unwrap_err().to_string();
        assert!(
            err.contains("unknown field `confg`") && err.contains("line 3"),
            "{err}"
        );
        let args = PipelineArgs {
            plugin_config: vec!["nope={}".into()],
            ..Default::default()
        };
        let err = PipelineConfig::resolve(&[PathBuf::from("a.wasm")], &args).unwrap_err();
        assert_eq!(
            err.to_string(),
            "--plugin-config nope: no plugin named nope in the chain (a)"
        );
        std::fs::remove_dir_all(dir).unwrap();
    }
}
