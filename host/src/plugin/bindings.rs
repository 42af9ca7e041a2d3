//! The host side of the WIT world (`wit/plugin.wit`): generated bindings, the per-store
//! state (WASI context, memory limits, the plugin's log tag) and the `log` import.
//!
//! Invariant: a store's WASI context grants nothing beyond what the plugin's
//! [`WasiGrants`](super::WasiGrants) list; stdin and stdout are closed (stdout carries the
//! NDJSON output), stderr is the host's.

use std::sync::Arc;

use wasmtime::component::{HasSelf, Linker, ResourceTable};
use wasmtime::{StoreLimits, StoreLimitsBuilder};
use wasmtime_wasi::{FsPerms, WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

use super::{PluginError, PluginSpec};

wasmtime::component::bindgen!({
    path: "../wit",
    world: "plugin",
});

pub use self::screamer::plugin::log::Level;
pub use self::screamer::plugin::types::{
    ChangeRecord, ModType, Outcome, PluginInfo, RowChange, Timestamp,
};

/// The world this host runs, and the export every plugin must have.
pub const WORLD: &str = "screamer:plugin@0.1.0";
pub const PROCESSOR_EXPORT: &str = "screamer:plugin/processor@0.1.0";

/// What one store carries.
pub struct HostState {
    wasi: WasiCtx,
    table: ResourceTable,
    pub(super) limits: StoreLimits,
    /// `name@version`, for log lines; empty until the plugin said who it is.
    pub(super) tag: Arc<str>,
    /// The last error the plugin logged during the current call: a trap's message is
    /// usually less telling than the guest's own last words (the SDK logs panics).
    pub(super) last_error: Option<String>,
}

impl HostState {
    pub fn new(spec: &PluginSpec, tag: Arc<str>) -> Result<Self, PluginError> {
        let mut wasi = WasiCtxBuilder::new();
        wasi.inherit_stderr();
        for name in &spec.grants.env {
            if let Ok(value) = std::env::var(name) {
                wasi.env(name, value);
            }
        }
        for dir in &spec.grants.dirs {
            wasi.preopened_dir(&dir.host, &dir.guest, FsPerms::ReadOnly)
                .map_err(|e| PluginError::Grant {
                    path: spec.path.clone(),
                    message: format!("cannot open directory {}: {e}", dir.host.display()),
                })?;
        }
        if spec.grants.network {
            wasi.inherit_network().allow_ip_name_lookup(true);
        }
        let limits = StoreLimitsBuilder::new()
            .memory_size(spec.limits.memory_bytes)
            .trap_on_grow_failure(true)
            .build();
        Ok(HostState {
            wasi: wasi.build(),
            table: ResourceTable::new(),
            limits,
            tag,
            last_error: None,
        })
    }
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl self::screamer::plugin::types::Host for HostState {}

impl self::screamer::plugin::log::Host for HostState {
    fn log(&mut self, level: Level, message: String) {
        let plugin = &*self.tag;
        match level {
            Level::Trace => tracing::trace!(target: "screamer::plugin", plugin, "{message}"),
            Level::Debug => tracing::debug!(target: "screamer::plugin", plugin, "{message}"),
            Level::Info => tracing::info!(target: "screamer::plugin", plugin, "{message}"),
            Level::Warn => tracing::warn!(target: "screamer::plugin", plugin, "{message}"),
            Level::Error => {
                tracing::error!(target: "screamer::plugin", plugin, "{message}");
                self.last_error = Some(message);
            }
        }
    }
}

/// The linker every plugin is instantiated with: WASI 0.2 (granting nothing by default)
/// and the `log` import.
pub fn linker(engine: &wasmtime::Engine) -> wasmtime::Result<Linker<HostState>> {
    let mut linker = Linker::new(engine);
    wasmtime_wasi::p2::add_to_linker_sync(&mut linker)?;
    Plugin::add_to_linker::<HostState, HasSelf<HostState>>(&mut linker, |s| s)?;
    Ok(linker)
}
