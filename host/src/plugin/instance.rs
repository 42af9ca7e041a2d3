//! One live instance of a plugin version: a store (WASI context, memory cap, epoch
//! deadline) and the component's exports.
//!
//! Invariant: after any `Err` from a call the instance must be dropped — wasmtime refuses
//! to re-enter an instance that trapped, ran out of time or hit its memory cap. A guest's
//! own `fail` outcome or `init` error is not such an `Err`.

use std::sync::Arc;
use std::time::Duration;

use wasmtime::{Engine, Store, Trap};

use super::PluginSpec;
use super::bindings::{ChangeRecord, HostState, Outcome, Plugin, PluginInfo, PluginPre};
use super::version::{EPOCH_TICK, PluginVersion};

pub(super) struct Instance {
    store: Store<HostState>,
    plugin: Plugin,
    timeout: Duration,
}

/// Why `init` failed.
#[derive(Debug, thiserror::Error)]
pub(super) enum InitError {
    /// The call trapped or ran out of time or memory (a readable description).
    #[error("{0}")]
    Trapped(String),
    /// The plugin refused its configuration, with its own message.
    #[error("{0}")]
    Refused(String),
}

impl Instance {
    /// A fresh instance of `version`, initialized with its configuration.
    pub fn start(version: &PluginVersion) -> Result<Self, String> {
        let mut instance = Self::instantiate(
            &version.pre,
            &version.engine,
            &version.spec,
            version.tag.clone(),
        )?;
        instance
            .init(&version.config_text)
            .map_err(|e| e.to_string())?;
        Ok(instance)
    }

    pub fn instantiate(
        pre: &PluginPre<HostState>,
        engine: &Engine,
        spec: &PluginSpec,
        tag: Arc<str>,
    ) -> Result<Self, String> {
        let state = HostState::new(spec, tag).map_err(|e| e.to_string())?;
        let mut store = Store::new(engine, state);
        store.limiter(|s| &mut s.limits);
        store.epoch_deadline_trap();
        let timeout = spec.limits.timeout;
        store.set_epoch_deadline(deadline_ticks(timeout));
        let plugin = pre
            .instantiate(&mut store)
            .map_err(|e| describe(e, &mut store, timeout))?;
        Ok(Instance {
            store,
            plugin,
            timeout,
        })
    }

    pub fn set_tag(&mut self, tag: Arc<str>) {
        self.store.data_mut().tag = tag;
    }

    pub fn info(&mut self) -> Result<PluginInfo, String> {
        self.arm();
        let r = self
            .plugin
            .screamer_plugin_processor()
            .call_info(&mut self.store);
        r.map_err(|e| describe(e, &mut self.store, self.timeout))
    }

    pub fn init(&mut self, config: &str) -> Result<(), InitError> {
        self.arm();
        let r = self
            .plugin
            .screamer_plugin_processor()
            .call_init(&mut self.store, config);
        match r {
            Ok(Ok(())) => Ok(()),
            Ok(Err(refusal)) => Err(InitError::Refused(refusal)),
            Err(e) => Err(InitError::Trapped(describe(
                e,
                &mut self.store,
                self.timeout,
            ))),
        }
    }

    pub fn process(&mut self, batch: &[ChangeRecord]) -> Result<Vec<Outcome>, String> {
        self.arm();
        let r = self
            .plugin
            .screamer_plugin_processor()
            .call_process(&mut self.store, batch);
        r.map_err(|e| describe(e, &mut self.store, self.timeout))
    }

    /// Deadlines are relative to the current epoch: re-arm before every call.
    fn arm(&mut self) {
        self.store.set_epoch_deadline(deadline_ticks(self.timeout));
        self.store.data_mut().last_error = None;
    }
}

fn deadline_ticks(timeout: Duration) -> u64 {
    (timeout.as_nanos() / EPOCH_TICK.as_nanos()) as u64 + 1
}

/// A readable one-line reason for a failed call.
fn describe(e: wasmtime::Error, store: &mut Store<HostState>, timeout: Duration) -> String {
    let mut message = match e.downcast_ref::<Trap>() {
        Some(Trap::Interrupt) => format!("deadline exceeded: the call ran longer than {timeout:?}"),
        _ => e.root_cause().to_string(),
    };
    if let Some(last) = store.data_mut().last_error.take() {
        message.push_str(&format!(" (the plugin logged: {last})"));
    }
    message.replace('\n', " ")
}
