//! A loaded plugin version, and the epoch clock its call deadlines run on.
//!
//! Made by the [runtime](super::runtime) once a file passed every check; instantiated by
//! [`Instance`](super::instance::Instance). A version keeps the epoch ticker alive: no
//! deadline can stop advancing while a version that may run exists.

use std::sync::{Arc, Weak};
use std::time::Duration;

use wasmtime::Engine;

use super::PluginSpec;
use super::bindings::{HostState, PluginPre};

/// How often the engine's epoch advances: the resolution of call deadlines.
pub(super) const EPOCH_TICK: Duration = Duration::from_millis(2);

/// Advances the engine's epoch while anything that runs plugins (the runtime or a loaded
/// version) is alive: deadlines depend on it.
pub(super) struct EpochTicker;

impl EpochTicker {
    pub(super) fn start(engine: Engine) -> std::io::Result<Arc<Self>> {
        let ticker = Arc::new(EpochTicker);
        let alive: Weak<EpochTicker> = Arc::downgrade(&ticker);
        std::thread::Builder::new()
            .name("screamer-epoch".into())
            .spawn(move || {
                while alive.strong_count() > 0 {
                    std::thread::sleep(EPOCH_TICK);
                    engine.increment_epoch();
                }
            })?;
        Ok(ticker)
    }
}

/// One loaded, validated and configured version of a plugin file.
pub struct PluginVersion {
    /// The plugin's name, from its `info`.
    pub name: String,
    /// The plugin's version, from its `info`.
    pub version: String,
    /// SHA-256 of the wasm file, hex.
    pub sha256: String,
    /// The spec it was loaded from.
    pub spec: PluginSpec,
    pub(super) pre: PluginPre<HostState>,
    pub(super) engine: Engine,
    pub(super) config_text: String,
    pub(super) tag: Arc<str>,
    /// Whether the component imports `batch`: only then are its calls' origins copied.
    pub(super) reads_origins: bool,
    pub(super) _ticker: Arc<EpochTicker>,
    /// How long loading took, and whether the compiled artifact came from the cache.
    pub load_time: Duration,
    /// Whether the compiled component came from the cache.
    pub from_cache: bool,
}

impl PluginVersion {
    /// `name@version`, as logs and dead letters show it.
    pub fn tag(&self) -> &str {
        &self.tag
    }

    /// The short hash that tells versions of one file apart in logs.
    pub fn short_hash(&self) -> &str {
        &self.sha256[..12]
    }
}

impl std::fmt::Debug for PluginVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} ({} {})",
            self.tag,
            self.spec.path.display(),
            self.short_hash()
        )
    }
}
