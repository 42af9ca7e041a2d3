//! The host side of the WIT world (`wit/plugin.wit`): generated bindings, the per-store
//! state (WASI context, memory limits, what the guest says) and the `log` import.
//!
//! Invariants: a store's WASI context grants nothing beyond what the plugin's
//! [`WasiGrants`](super::WasiGrants) list; stdin is closed, and stdout and stderr feed the
//! instance's [`GuestOutput`], never the host's streams. Exports are called asynchronously,
//! so a guest blocked in WASI (a sleep, a poll, a socket) can be stopped at its deadline.
//! Records are lowered from borrowed host data (`ChangeRecordParam`): nothing is copied on
//! the host to hand a record to a plugin. The records' origins are copied into the store
//! for a call only when the plugin imports `batch` (it may ask for them).

use std::sync::Arc;

use wasmtime::component::{HasSelf, Linker, ResourceTable};
use wasmtime::{StoreLimits, StoreLimitsBuilder};
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

use super::guest_output::{self, GuestOutput};
use super::{PluginError, PluginSpec};

wasmtime::component::bindgen!({
    path: "../plugin-sdk/wit",
    world: "plugin",
    exports: { default: async },
    ownership: Borrowing { duplicate_if_necessary: true },
});

pub use self::screamer::plugin::log::Level;
pub use self::screamer::plugin::types::{
    ChangeRecordParam, ChangeRecordResult, Emission, FieldPatch, ModType, Origin, Outcome,
    PluginInfo, RecordPatch, RowChangeParam, RowField, Timestamp,
};

/// The world this host runs, and the export every plugin must have.
pub const WORLD: &str = "screamer:plugin@0.3.0";
/// The interface a plugin exports: `processor`, of [`WORLD`].
pub const PROCESSOR_EXPORT: &str = "screamer:plugin/processor@0.3.0";
/// The import through which a plugin reads its records' origins.
pub const BATCH_IMPORT: &str = "screamer:plugin/batch@0.3.0";

/// What one store carries.
pub struct HostState {
    wasi: WasiCtx,
    table: ResourceTable,
    pub(super) limits: StoreLimits,
    /// The guest's stdout, stderr and log lines, tagged `name@version`.
    pub(super) output: GuestOutput,
    /// The origins of the records of the call under way, by index (empty between calls,
    /// and for a plugin that does not import `batch`).
    pub(super) origins: Vec<Origin>,
}

impl HostState {
    pub fn new(spec: &PluginSpec, tag: Arc<str>) -> Result<Self, PluginError> {
        let output = GuestOutput::new(tag);
        let mut wasi = WasiCtxBuilder::new();
        wasi.stdout(output.stdout()).stderr(output.stderr());
        spec.grants
            .apply(&mut wasi)
            .map_err(|e| PluginError::Grant {
                path: spec.path.clone(),
                message: e.to_string(),
            })?;
        let limits = StoreLimitsBuilder::new()
            .memory_size(spec.limits.memory_bytes)
            .trap_on_grow_failure(true)
            .build();
        Ok(HostState {
            wasi: wasi.build(),
            table: ResourceTable::new(),
            limits,
            output,
            origins: Vec::new(),
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

impl self::screamer::plugin::batch::Host for HostState {
    fn origin_of(&mut self, index: u32) -> Option<Origin> {
        self.origins.get(index as usize).cloned()
    }
}

impl self::screamer::plugin::log::Host for HostState {
    fn log(&mut self, level: Level, message: String) {
        let level = match level {
            Level::Trace => guest_output::Level::Trace,
            Level::Debug => guest_output::Level::Debug,
            Level::Info => guest_output::Level::Info,
            Level::Warn => guest_output::Level::Warn,
            Level::Error => guest_output::Level::Error,
        };
        self.output.log(level, &message);
    }
}

/// The linker every plugin is instantiated with: WASI 0.2 (granting nothing by default)
/// and the `log` and `batch` imports.
pub fn linker(engine: &wasmtime::Engine) -> wasmtime::Result<Linker<HostState>> {
    let mut linker = Linker::new(engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
    Plugin::add_to_linker::<HostState, HasSelf<HostState>>(&mut linker, |s| s)?;
    Ok(linker)
}
