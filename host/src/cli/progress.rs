//! Progress of a run on stderr, and the per-plugin summary at its end.
//!
//! Place in the flow: beside the run, reading [`Metrics`] only. A bounded run (`--end`) on a
//! terminal gets a live line (indicatif); otherwise a summary is logged every
//! `--progress-interval`, as the Go screamer logs its metrics. Neither touches the data path.

use std::sync::Arc;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use tokio::task::JoinHandle;

use screamer::Timestamp;
use screamer::observe::{Metrics, Progress, SnapshotProgress};

/// How often the live line is redrawn.
const REDRAW: Duration = Duration::from_millis(500);

/// The running reporter; [`Reporter::finish`] stops it.
pub struct Reporter {
    task: Option<JoinHandle<()>>,
    bar: Option<ProgressBar>,
}

impl Reporter {
    /// Reports `metrics` until finished: a live line when `end` is set and stderr is a
    /// terminal, else a log line every `interval` (never when it is zero).
    pub fn start(metrics: Arc<Metrics>, end: Option<Timestamp>, interval: Duration) -> Self {
        let terminal = std::io::IsTerminal::is_terminal(&std::io::stderr());
        match end {
            Some(end) if terminal => {
                let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
                bar.set_style(
                    ProgressStyle::with_template("{spinner} {elapsed_precise} {msg}")
                        .expect("a valid template"),
                );
                let task = tokio::spawn(live(metrics, end, bar.clone()));
                Reporter {
                    task: Some(task),
                    bar: Some(bar),
                }
            }
            _ if interval.is_zero() => Reporter {
                task: None,
                bar: None,
            },
            _ => Reporter {
                task: Some(tokio::spawn(periodic(metrics, interval))),
                bar: None,
            },
        }
    }

    pub fn finish(self) {
        if let Some(task) = self.task {
            task.abort();
        }
        if let Some(bar) = self.bar {
            bar.finish_and_clear();
        }
    }
}

/// Records per second between two snapshots.
struct Rate {
    records: u64,
    at: Instant,
}

impl Rate {
    fn new() -> Self {
        Rate {
            records: 0,
            at: Instant::now(),
        }
    }

    fn next(&mut self, now: &Progress) -> f64 {
        let secs = self.at.elapsed().as_secs_f64().max(1e-3);
        let rate = now.records.saturating_sub(self.records) as f64 / secs;
        *self = Rate {
            records: now.records,
            at: Instant::now(),
        };
        rate
    }
}

async fn live(metrics: Arc<Metrics>, end: Timestamp, bar: ProgressBar) {
    let mut rate = Rate::new();
    let mut tick = tokio::time::interval(REDRAW);
    loop {
        tick.tick().await;
        let p = metrics.progress();
        let to_go = match p.slowest {
            Some(at) => format!(
                "slowest at {at} ({} before --end)",
                humantime::format_duration(whole_seconds(end.duration_since(at)))
            ),
            None => "no partition held".to_owned(),
        };
        bar.set_message(format!(
            "{}partitions {} finished of {} known · {to_go} · released {:.1}s behind · {:.0} records/s · {} records · {} dead letters",
            snapshot_text(p.snapshot),
            p.partitions_finished,
            p.partitions_finished + p.partitions_held as u64,
            p.low_watermark_lag.as_secs_f64(),
            rate.next(&p),
            p.records,
            p.dead_letters,
        ));
        bar.tick();
    }
}

async fn periodic(metrics: Arc<Metrics>, interval: Duration) {
    let mut rate = Rate::new();
    let mut tick = tokio::time::interval(interval);
    tick.tick().await; // the first tick is immediate; the first line comes after a whole interval
    loop {
        tick.tick().await;
        let p = metrics.progress();
        tracing::info!(
            records_per_second = format!("{:.1}", rate.next(&p)),
            records = p.records,
            lag_seconds = format!("{:.1}", p.lag.as_secs_f64()),
            low_watermark_lag_seconds = format!("{:.1}", p.low_watermark_lag.as_secs_f64()),
            partitions_held = p.partitions_held,
            partitions_finished = p.partitions_finished,
            dead_letters = p.dead_letters,
            "progress"
        );
        if let Some(s) = p.snapshot.filter(|s| s.chunks_finished < s.chunks) {
            tracing::info!(
                rows = s.rows,
                rows_planned = s.rows_planned,
                chunks_finished = s.chunks_finished,
                chunks = s.chunks,
                "snapshot progress"
            );
        }
    }
}

/// The snapshot's part of the live line, while it is not done.
fn snapshot_text(snapshot: Option<SnapshotProgress>) -> String {
    match snapshot.filter(|s| s.chunks_finished < s.chunks) {
        Some(s) => format!(
            "snapshot {} of {} rows, {} of {} chunks · ",
            s.rows, s.rows_planned, s.chunks_finished, s.chunks
        ),
        None => String::new(),
    }
}

fn whole_seconds(d: Duration) -> Duration {
    Duration::from_secs(d.as_secs())
}

/// One log line per plugin: calls, outcomes and time per record.
pub fn log_plugin_summary(metrics: &Metrics) {
    for (plugin, t) in metrics.plugins() {
        let records = t.outcomes.total();
        tracing::info!(
            plugin,
            calls = t.calls,
            failed_calls = t.failed_calls,
            instances_started = t.instances_started,
            records,
            keep = t.outcomes.keep,
            drop = t.outcomes.drop,
            patch = t.outcomes.patch,
            replace = t.outcomes.replace,
            emit = t.outcomes.emit,
            fail = t.outcomes.fail,
            us_per_record = format!("{:.2}", per_record_micros(t.busy, records)),
            "plugin summary"
        );
    }
}

pub fn per_record_micros(busy: Duration, records: u64) -> f64 {
    busy.as_secs_f64() * 1e6 / records.max(1) as f64
}
