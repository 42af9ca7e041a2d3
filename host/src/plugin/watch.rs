//! Hot swap: watches the plugin files and reloads a plugin when its file is replaced or the
//! process gets SIGHUP.
//!
//! Invariants: loading (compile, validate, trial `init`) happens off the hot path on a
//! blocking thread; the chain switches versions with a pointer swap that the next batch
//! picks up ([`Chain::swap`]); a file that fails to load is refused with a log line and the
//! running version stays. Directories are watched, not files, because the usual way to
//! replace a file (write a temporary file, rename it over) swaps the inode.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use notify::{RecursiveMode, Watcher};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{Chain, PluginError, PluginRuntime};

/// Quiet time after the last file event before reloading: editors and `cp` write in bursts.
const DEBOUNCE: Duration = Duration::from_millis(150);

/// Keeps the watcher alive; dropping it (or cancelling) stops hot swapping.
pub struct HotSwap {
    _watcher: notify::RecommendedWatcher,
}

/// Starts watching every plugin file of `chain` (and SIGHUP) until `cancel`.
pub fn watch(
    runtime: Arc<PluginRuntime>,
    chain: Arc<Chain>,
    cancel: CancellationToken,
) -> Result<HotSwap, PluginError> {
    let files: Vec<PathBuf> = chain
        .versions()
        .iter()
        .map(|v| absolute(&v.spec.path))
        .collect();
    let (tx, mut rx) = mpsc::unbounded_channel::<usize>();
    let watched = files.clone();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        let Ok(event) = event else { return };
        if event.kind.is_access() {
            return;
        }
        for path in &event.paths {
            for (slot, file) in watched.iter().enumerate() {
                if path == file {
                    let _ = tx.send(slot);
                }
            }
        }
    })
    .map_err(|e| PluginError::Engine(format!("cannot watch plugin files: {e}")))?;
    let dirs: BTreeSet<&Path> = files.iter().filter_map(|f| f.parent()).collect();
    for dir in dirs {
        watcher
            .watch(dir, RecursiveMode::NonRecursive)
            .map_err(|e| PluginError::Engine(format!("cannot watch {}: {e}", dir.display())))?;
    }
    let slots = files.len();
    tokio::spawn(async move {
        let mut hangup =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
        loop {
            let mut dirty = BTreeSet::new();
            tokio::select! {
                _ = cancel.cancelled() => return,
                slot = rx.recv() => match slot {
                    Some(slot) => { dirty.insert(slot); }
                    None => return,
                },
                _ = async { match hangup.as_mut() { Some(h) => h.recv().await, None => std::future::pending().await } } => {
                    tracing::info!("SIGHUP: reloading every plugin");
                    dirty.extend(0..slots);
                }
            }
            // Debounce: collect the rest of the burst.
            loop {
                tokio::select! {
                    slot = rx.recv() => match slot { Some(slot) => { dirty.insert(slot); } None => break },
                    _ = tokio::time::sleep(DEBOUNCE) => break,
                }
            }
            for slot in dirty {
                reload(&runtime, &chain, slot).await;
            }
        }
    });
    Ok(HotSwap { _watcher: watcher })
}

/// Loads the slot's file again and switches to it when it is a new, valid version.
async fn reload(runtime: &Arc<PluginRuntime>, chain: &Arc<Chain>, slot: usize) {
    let current = chain.versions().swap_remove(slot);
    // Compiling a new version can take seconds (a JavaScript one, 7 s).
    tracing::info!(
        plugin = current.tag(),
        file = %current.spec.path.display(),
        "reloading the plugin file; the running version takes records until the new one is ready"
    );
    match runtime.load(&current.spec).await {
        Ok(new) if new.sha256 == current.sha256 => {
            tracing::info!(
                plugin = current.tag(),
                sha256 = current.short_hash(),
                "plugin file unchanged"
            );
        }
        Ok(new) => {
            tracing::info!(
                plugin = new.tag(),
                sha256 = new.short_hash(),
                previous = %format!("{}@{}", current.tag(), current.short_hash()),
                load_ms = new.load_time.as_secs_f64() * 1e3,
                "plugin swapped"
            );
            chain.swap(slot, new);
        }
        Err(e) => tracing::warn!(
            plugin = current.tag(),
            sha256 = current.short_hash(),
            "new plugin file refused, the running version stays: {e}"
        ),
    }
}

fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_owned())
}
