//! Plugin runtime: WebAssembly components (the `screamer:plugin` WIT world) that filter,
//! transform or emit data change records.
//!
//! Place in the flow: between the reader's acknowledged-batch boundary (the consumer) and
//! the sink. The [`Pipeline`](crate::Pipeline) hands each batch to a [`Chain`]; the chain
//! runs it through every plugin in order, in calls of at most `batch_size` records, and
//! returns the records that leave it (main and side outputs) and the dead letters.
//!
//! Invariants:
//! - One [`wasmtime::Engine`] per [`PluginRuntime`]; each component is compiled once and
//!   cached on disk in a private directory, authenticated before it is loaded.
//! - Every record gets exactly one outcome from every plugin it reaches. A guest error
//!   fails that record; a trap fails its call, the store is discarded, and the call's
//!   records are retried one by one on fresh instances (a one-record call once), so only
//!   the records that trap again become dead letters.
//! - A batch is processed by one version of each plugin: hot swaps take effect between
//!   batches ([`Chain::swap`]).
//! - Plugins get no files, network or environment unless their [`WasiGrants`] say so; each
//!   call has a deadline that holds in wasm and in WASI calls, each store a memory cap, and
//!   each call a cap on the bytes the host copies out of it ([`Limits`]). A guest's stdout
//!   and stderr become host log lines, escaped and rate-limited, never host output.

mod bindings;
mod cache;
mod chain;
mod convert;
mod failure;
mod grants;
mod guest_error;
mod guest_output;
mod instance;
mod patch;
mod runtime;
mod shape;
mod version;
mod watch;

use std::path::PathBuf;
use std::time::Duration;

pub use bindings::{PROCESSOR_EXPORT, WORLD};
pub use chain::{
    Budget, Chain, ChainResult, DeadLetter, Input, Output, OutputRecord, OverBudget,
    RUN_BUDGET_CALLS,
};
pub use failure::{PluginFailure, PluginFailureKind, Said};
pub use grants::{GrantParseError, HostPattern, NetworkGrant, PreopenDir, WasiGrants};
pub use runtime::{ComponentReport, PluginRuntime, RuntimeOptions};
pub use version::PluginVersion;
pub use watch::{HotSwap, watch};

/// The language a component was written in, as its toolchain marks it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GuestLanguage {
    /// `wit-bindgen-rust` (the SDK).
    Rust,
    /// componentize-py.
    Python,
    /// jco's componentize (QuickJS or StarlingMonkey).
    JavaScript,
    /// `wit-bindgen c` (the C template's bindings).
    C,
}

impl GuestLanguage {
    /// The language whose toolchain left its name in `component` (its `producers`
    /// sections, or the runtime it embeds), if one did.
    pub fn of(component: &[u8]) -> Option<Self> {
        let has = |marker: &str| memchr::memmem::find(component, marker.as_bytes()).is_some();
        if has("componentize-py") || has("componentize_py") {
            Some(GuestLanguage::Python)
        } else if has("componentize-qjs") || has("componentize-js") || has("StarlingMonkey") {
            Some(GuestLanguage::JavaScript)
        } else if has("wit-bindgen-rust") {
            Some(GuestLanguage::Rust)
        } else if has("wit-bindgen-c") {
            Some(GuestLanguage::C)
        } else {
            None
        }
    }
}

/// How to rebuild a component of another world for this one, in its language.
fn rebuild_for_this_world(language: Option<GuestLanguage>) -> String {
    let template = |lang: &str| {
        format!(
            "rebuild it with the wit/plugin.wit of this world, which \
             `screamer plugin new NAME --lang {lang}` writes"
        )
    };
    match language {
        Some(GuestLanguage::Rust) => {
            "a Rust component: rebuild it with screamer-plugin-sdk 0.3".to_owned()
        }
        Some(GuestLanguage::Python) => format!("a Python component: {}", template("python")),
        Some(GuestLanguage::JavaScript) => {
            format!("a JavaScript component: {}", template("javascript"))
        }
        Some(GuestLanguage::C) => "a C component: rebuild it with the bindings of this world, \
             which `screamer plugin new NAME --lang c` writes"
            .to_owned(),
        None => "rebuild it for this world: docs/write-a-plugin.md".to_owned(),
    }
}

/// One plugin of a chain: where it is and how it runs.
#[derive(Debug, Clone)]
pub struct PluginSpec {
    /// The component file.
    pub path: PathBuf,
    /// Passed to the plugin's `init` as JSON text; must be an object.
    pub config: serde_json::Value,
    /// Deadline, memory and output caps.
    pub limits: Limits,
    /// What of the host the plugin may reach.
    pub grants: WasiGrants,
}

impl PluginSpec {
    /// A plugin at `path` with no configuration, default limits and no grants.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        PluginSpec {
            path: path.into(),
            config: serde_json::Value::Object(Default::default()),
            limits: Limits::default(),
            grants: WasiGrants::default(),
        }
    }
}

/// What one call and one instance may use. The defaults are far beyond what an honest
/// plugin needs; each bounds what a hostile one can make the host do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Wall-clock budget of one `process` (or `init`) call, time spent in WASI included.
    /// Each retry of a failed call's records gets its own.
    pub timeout: Duration,
    /// Linear memory cap of one instance.
    pub memory_bytes: usize,
    /// Records one input record may turn into (emissions, summed over the chain).
    pub max_emissions: usize,
    /// Bytes the host copies out of the guest for one call's outcomes.
    pub max_call_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            timeout: Duration::from_secs(1),
            memory_bytes: 128 << 20,
            max_emissions: 10_000,
            max_call_bytes: 16 << 20,
        }
    }
}

/// Why a plugin cannot be loaded or run. Each names the file or the plugin.
#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    /// The file cannot be read.
    #[error("plugin {}: cannot read: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not WebAssembly.
    #[error("plugin {}: not a WebAssembly file", path.display())]
    NotWasm {
        /// The file.
        path: PathBuf,
    },
    #[error(
        "plugin {}: a core WebAssembly module, not a component: build it for wasm32-wasip2 \
         (or wrap it with `wasm-tools component new`)",
        path.display()
    )]
    /// The file is a core module, not a component.
    CoreModule {
        /// The file.
        path: PathBuf,
    },
    /// The component does not validate.
    #[error("plugin {}: invalid component: {message}", path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What wasmtime said.
        message: String,
    },
    #[error(
        "plugin {}: not a {WORLD} plugin: it exports {exports}; expected an export {PROCESSOR_EXPORT}",
        path.display()
    )]
    /// The component does not export the plugin interface.
    WrongWorld {
        /// The file.
        path: PathBuf,
        /// What it exports.
        exports: String,
    },
    #[error(
        "plugin {}: built for {found}; this host runs {WORLD} ({})",
        path.display(),
        rebuild_for_this_world(*built_with)
    )]
    /// The component targets another version of the world.
    WrongVersion {
        /// The file.
        path: PathBuf,
        /// The world it targets.
        found: String,
        /// The language it was written in, when its toolchain left a mark.
        built_with: Option<GuestLanguage>,
    },
    /// The component imports something the host does not provide.
    #[error("plugin {}: imports what the host does not provide: {message}", path.display())]
    Imports {
        /// The file.
        path: PathBuf,
        /// What is missing.
        message: String,
    },
    /// The plugin's grants cannot be applied.
    #[error("plugin {}: {message}", path.display())]
    Grant {
        /// The file.
        path: PathBuf,
        /// Why.
        message: String,
    },
    /// The plugin's instance could not start.
    #[error("plugin {plugin}: start-up failed: {message}")]
    Start {
        /// The plugin's name.
        plugin: String,
        /// Why.
        message: String,
    },
    /// The plugin's `init` refused its configuration.
    #[error("plugin {plugin}: configuration refused: {message}")]
    Config {
        /// The plugin's name.
        plugin: String,
        /// What it said.
        message: String,
    },
    /// The compiled-component cache cannot be used.
    #[error("plugin cache {}: {source}", dir.display())]
    Cache {
        /// The cache directory.
        dir: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// wasmtime's engine cannot be set up.
    #[error("plugin engine: {0}")]
    Engine(String),
}

impl PluginError {
    /// Every plugin error names a file or plugin the user chose, except the engine's and a
    /// cache failure the user cannot fix (a cache that is a file, or not private, they can).
    pub fn kind(&self) -> crate::FailureKind {
        use std::io::ErrorKind;
        match self {
            PluginError::Engine(_) => crate::FailureKind::Runtime,
            PluginError::Cache { source, .. } => match source.kind() {
                ErrorKind::NotADirectory
                | ErrorKind::AlreadyExists
                | ErrorKind::PermissionDenied
                | ErrorKind::ReadOnlyFilesystem => crate::FailureKind::Input,
                _ => crate::FailureKind::Runtime,
            },
            _ => crate::FailureKind::Input,
        }
    }
}
