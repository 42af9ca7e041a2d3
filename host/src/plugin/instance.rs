//! One live instance of a plugin version: a store (WASI context, memory cap, deadline,
//! budget of bytes copied out) and the component's exports.
//!
//! Invariants: every call runs against a deadline that holds in wasm code (epoch
//! interruption) and in WASI calls (the call's future is dropped when it passes); the
//! bytes the host lifts out of one call are capped at the plugin's `max_call_bytes`. After
//! any `Err` from a call the instance must be dropped: wasmtime refuses to re-enter an
//! instance that trapped, ran out of time or hit a cap, and a dropped call leaves it
//! unusable. A guest's own `fail` outcome or `init` error is not such an `Err`.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use wasmtime::{Engine, Store, Trap};

use super::bindings::{
    ChangeRecordParam, HostState, Origin, Outcome, Plugin, PluginInfo, PluginPre,
};
use super::failure::{PluginFailure, Said};
use super::guest_error::guest_error;
use super::guest_output::CallEnd;
use super::version::{EPOCH_TICK, PluginVersion};
use super::{Limits, PluginSpec};

pub(super) struct Instance {
    store: Store<HostState>,
    plugin: Plugin,
    limits: Limits,
}

/// Why `init` failed.
#[derive(Debug, thiserror::Error)]
pub(super) enum InitError {
    /// The call trapped or ran out of time or memory.
    #[error(transparent)]
    Trapped(PluginFailure),
    /// The plugin refused its configuration, with its own message.
    #[error("{0}")]
    Refused(String),
}

impl Instance {
    /// A fresh instance of `version`, initialized with its configuration by `deadline`.
    pub async fn start(version: &PluginVersion, deadline: Instant) -> Result<Self, PluginFailure> {
        let tag = version.tag.clone();
        let mut instance =
            Self::instantiate(&version.pre, &version.engine, &version.spec, tag, deadline).await?;
        instance
            .init(&version.config_text, deadline)
            .await
            .map_err(|e| match e {
                InitError::Trapped(failure) => failure,
                // It accepted this configuration when loaded: its own failure now.
                InitError::Refused(message) => PluginFailure::Failed(message),
            })?;
        Ok(instance)
    }

    pub async fn instantiate(
        pre: &PluginPre<HostState>,
        engine: &Engine,
        spec: &PluginSpec,
        tag: Arc<str>,
        deadline: Instant,
    ) -> Result<Self, PluginFailure> {
        let state = HostState::new(spec, tag).map_err(|e| PluginFailure::Trap {
            message: e.to_string(),
            said: Said::default(),
        })?;
        let mut store = Store::new(engine, state);
        store.limiter(|s| &mut s.limits);
        store.epoch_deadline_trap();
        let limits = spec.limits;
        arm(&mut store, &limits, deadline);
        let r = tokio::time::timeout_at(deadline, pre.instantiate_async(&mut store)).await;
        let plugin = settle(r, &mut store, &limits)?;
        Ok(Instance {
            store,
            plugin,
            limits,
        })
    }

    pub fn set_tag(&mut self, tag: Arc<str>) {
        self.store.data_mut().output.set_tag(tag);
    }

    /// What the guest says is no longer logged, only kept for a failure's message.
    pub fn quiet(&mut self) {
        self.store.data_mut().output.quiet();
    }

    pub async fn info(&mut self, deadline: Instant) -> Result<PluginInfo, PluginFailure> {
        arm(&mut self.store, &self.limits, deadline);
        let call = self
            .plugin
            .screamer_plugin_processor()
            .call_info(&mut self.store);
        let r = tokio::time::timeout_at(deadline, call).await;
        settle(r, &mut self.store, &self.limits)
    }

    pub async fn init(&mut self, config: &str, deadline: Instant) -> Result<(), InitError> {
        arm(&mut self.store, &self.limits, deadline);
        let call = self
            .plugin
            .screamer_plugin_processor()
            .call_init(&mut self.store, config);
        let r = tokio::time::timeout_at(deadline, call).await;
        settle(r, &mut self.store, &self.limits)
            .map_err(InitError::Trapped)?
            .map_err(InitError::Refused)
    }

    /// Processes `batch`; `origins` are what the plugin gets from `batch.origin-of` during the
    /// call (empty for a plugin that does not import it).
    pub async fn process(
        &mut self,
        batch: &[ChangeRecordParam<'_>],
        origins: Vec<Origin>,
        deadline: Instant,
    ) -> Result<Vec<Outcome>, PluginFailure> {
        arm(&mut self.store, &self.limits, deadline);
        self.store.data_mut().origins = origins;
        let call = self
            .plugin
            .screamer_plugin_processor()
            .call_process(&mut self.store, batch);
        let r = tokio::time::timeout_at(deadline, call).await;
        self.store.data_mut().origins.clear();
        settle(r, &mut self.store, &self.limits)
    }
}

/// Prepares the store for one call ending at `deadline`: the epoch deadline (relative to
/// the current epoch, so re-armed every call), the budget of bytes lifted out, and an empty
/// record of what the guest says.
fn arm(store: &mut Store<HostState>, limits: &Limits, deadline: Instant) {
    let left = deadline.saturating_duration_since(Instant::now());
    store.set_epoch_deadline(deadline_ticks(left));
    store.set_hostcall_fuel(limits.max_call_bytes);
    store.data().output.begin_call();
}

fn deadline_ticks(left: Duration) -> u64 {
    (left.as_nanos() / EPOCH_TICK.as_nanos()) as u64 + 1
}

/// The call's value, or why it failed, with the guest's last words.
fn settle<R>(
    result: Result<wasmtime::Result<R>, tokio::time::error::Elapsed>,
    store: &mut Store<HostState>,
    limits: &Limits,
) -> Result<R, PluginFailure> {
    let output = &store.data().output;
    let e = match result {
        Ok(Ok(value)) => {
            output.end_call(CallEnd::Returned);
            return Ok(value);
        }
        Ok(Err(e)) => e,
        Err(_) => wasmtime::Error::from(Trap::Interrupt),
    };
    let tail = output.end_call(CallEnd::Failed);
    let said = Said::new(&tail.join(" | "));
    if let Some(Trap::Interrupt) = e.downcast_ref::<Trap>() {
        return Err(PluginFailure::Deadline {
            limit: limits.timeout,
            said,
        });
    }
    let cause = e.root_cause().to_string().replace('\n', " ");
    // wasmtime's errors for the lift budget and a refused memory growth are private types
    // (wasmtime 50): their text is the only sign of them.
    if cause.contains("fuel allocated for hostcalls has been exhausted") {
        let what = format!(
            "returned more than {} bytes of outcomes in one call (limit max_call_bytes)",
            limits.max_call_bytes
        );
        return Err(PluginFailure::Limit { what, said });
    }
    if cause.contains("forcing trap when growing memory") {
        return Err(PluginFailure::Limit { what: cause, said });
    }
    // A language runtime's report of an uncaught error says it better than the trap.
    Err(match guest_error(&tail) {
        Some(own) => PluginFailure::Trap {
            message: own.message,
            said: Said::new(&said_before(&tail[..own.report_at])),
        },
        None => PluginFailure::Trap {
            message: cause,
            said,
        },
    })
}

/// What the guest said before its runtime's report of an error: its own lines, non-empty.
fn said_before(lines: &[String]) -> String {
    let own: Vec<&str> = lines
        .iter()
        .map(String::as_str)
        .filter(|l| !l.trim().is_empty())
        .collect();
    own.join(" | ")
}
