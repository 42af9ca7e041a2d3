//! Observability on a real stream: the metrics endpoint scraped during a run (counters equal
//! what was written and what reached stdout, the lag gauge through an emulator pause,
//! `/healthz` and `/readyz` through a lapse), dead-letter counters against the dead-letter
//! file, `plugin run --stats`, and the progress line under a pseudo-terminal.

use std::net::SocketAddr;
use std::time::Duration;

use gcloud_spanner::mutation::insert;
use screamer::{Dialect, Timestamp};
use screamer_tests::emulator::free_port;
use screamer_tests::http::{Behaviour, HttpSink};
use screamer_tests::libc::{SIGCONT, SIGINT, SIGSTOP};
use screamer_tests::metrics::{Scrape, referenced_metrics, scrape, status};
use screamer_tests::plugins::{named_records, plugin, plugin_cache, plugin_run, scratch_dir};
use screamer_tests::{Emulator, EmulatorOptions, Screamer, eventually, run_args, screamer_bin};

fn metrics_addr() -> anyhow::Result<SocketAddr> {
    Ok(SocketAddr::from(([127, 0, 0, 1], free_port()?)))
}

/// Scrapes until `check` holds for the scrape, or fails naming `what` with the last scrape.
async fn scrape_until(
    addr: SocketAddr,
    timeout: Duration,
    what: &str,
    check: impl Fn(&Scrape) -> bool,
) -> anyhow::Result<Scrape> {
    let mut last = String::new();
    let found = eventually(timeout, what, async || match scrape(addr).await {
        Ok(s) if check(&s) => Some(s),
        Ok(s) => {
            last = format!("{:?}", s.samples.keys().collect::<Vec<_>>());
            None
        }
        Err(e) => {
            last = e.to_string();
            None
        }
    })
    .await;
    found.map_err(|e| e.context(last))
}

/// Waits until `/readyz` answers 200.
async fn ready(addr: SocketAddr) -> anyhow::Result<()> {
    eventually(Duration::from_secs(60), "/readyz 200", async || {
        (status(addr, "/readyz").await == 200).then_some(())
    })
    .await
}

/// Stops `screamer` with SIGINT, checks it exited 0, and returns its stderr.
async fn stop(screamer: &mut Screamer) -> anyhow::Result<String> {
    screamer.signal(SIGINT)?;
    let status = screamer.wait(Duration::from_secs(60)).await?;
    anyhow::ensure!(status.success(), "{status}: {}", screamer.stderr());
    Ok(screamer.stderr())
}

fn lag(s: &Scrape) -> f64 {
    s.sum("screamer_watermark_lag_seconds")
}

#[tokio::test(flavor = "multi_thread")]
async fn counters_lag_and_health_follow_the_stream_through_an_emulator_pause() -> anyhow::Result<()>
{
    let emulator = Emulator::start(EmulatorOptions::exact()).await?;
    let db = emulator.items_database().await?;
    let addr = metrics_addr()?;
    let args = run_args(
        &db,
        &[
            "--metadata-table",
            "Meta",
            "--lease-duration",
            "4s",
            "--metrics-addr",
            &addr.to_string(),
            "--progress-interval",
            "1s",
        ],
    );
    let mut screamer = Screamer::spawn(emulator.host(), &args)?;
    ready(addr).await?;
    assert_eq!(status(addr, "/healthz").await, 200);

    screamer_tests::items::write(&db, 60, 4, Duration::ZERO).await?;
    eventually(
        Duration::from_secs(60),
        "60 records on stdout",
        async || (screamer.line_count() >= 60).then_some(()),
    )
    .await?;
    let s = scrape_until(addr, Duration::from_secs(30), "a caught-up runner", |s| {
        s.sum("screamer_output_records_total") >= 60.0 && lag(s) < 5.0
    })
    .await?;
    assert_counts_of_60_records(&s, screamer.line_count());
    a_paused_emulator_raises_the_lag_and_lapses_the_runner(&emulator, addr).await?;

    // Resumed: the heartbeat lands again, the partitions are read again and the lag falls.
    eventually(Duration::from_secs(60), "/healthz 200 again", async || {
        (status(addr, "/healthz").await == 200).then_some(())
    })
    .await?;
    screamer_tests::items::write(&db, 20, 4, Duration::ZERO).await?;
    let s = scrape_until(addr, Duration::from_secs(60), "caught up again", |s| {
        s.sum("screamer_partitions_held") >= 1.0
            && lag(s) < 5.0
            && s.sum("screamer_output_records_total") >= 80.0
    })
    .await?;
    assert!(s.sum("screamer_checkpoints_total") >= 1.0);
    assert_eq!(
        s.sum_where("screamer_output_records_total", &[("output", "main")]),
        screamer.line_count() as f64,
        "every record the main output accepted is on stdout"
    );
    assert_eq!(status(addr, "/readyz").await, 200);

    let stderr = stop(&mut screamer).await?;
    assert!(
        stderr
            .lines()
            .any(|l| l.contains("progress") && l.contains("records_per_second")),
        "the periodic progress line: {stderr}"
    );
    Ok(())
}

/// The counters after 60 single-row commits over 4 keys, all on stdout (`stdout_lines`).
fn assert_counts_of_60_records(s: &Scrape, stdout_lines: usize) {
    assert_eq!(s.sum("screamer_records_total"), 60.0);
    assert_eq!(s.sum("screamer_mods_total"), 60.0);
    assert_eq!(
        s.sum_where(
            "screamer_records_total",
            &[("table", "Items"), ("mod_type", "INSERT")]
        ),
        4.0,
        "the first commit of each of the 4 keys inserts"
    );
    assert_eq!(
        s.sum_where("screamer_output_records_total", &[("output", "main")]),
        stdout_lines as f64
    );
    assert_eq!(s.sum("screamer_commit_to_output_seconds_count"), 60.0);
    assert_eq!(
        s.sum("screamer_read_batch_records_sum"),
        60.0,
        "every record in one read batch"
    );
    assert_eq!(s.sum("screamer_dead_letters_total"), 0.0);
    assert!(s.sum("screamer_partitions_held") >= 1.0);
    assert_eq!(s.sum("screamer_ready"), 1.0);
    assert_eq!(
        s.sum_where(
            "screamer_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        ),
        1.0
    );
}

/// Pauses the emulator (SIGSTOP): nothing is read or acknowledged, the lag grows; the
/// heartbeat cannot land, the runner lapses and is not ready. Then resumes it.
async fn a_paused_emulator_raises_the_lag_and_lapses_the_runner(
    emulator: &Emulator,
    addr: std::net::SocketAddr,
) -> anyhow::Result<()> {
    emulator.signal(SIGSTOP)?;
    let paused = scrape_until(addr, Duration::from_secs(20), "the lag to grow", |s| {
        lag(s) > 3.0
    })
    .await;
    let lapsed = eventually(Duration::from_secs(30), "/healthz 503", async || {
        (status(addr, "/healthz").await == 503).then_some(())
    })
    .await;
    let not_ready = status(addr, "/readyz").await;
    emulator.signal(SIGCONT)?;
    paused?;
    lapsed?;
    assert_eq!(not_ready, 503, "a lapsed runner is not ready");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn dead_letter_and_plugin_counters_match_the_dead_letter_file() -> anyhow::Result<()> {
    let emulator = Emulator::start(EmulatorOptions::exact()).await?;
    let db = emulator
        .database(Dialect::GoogleSql, &screamer_tests::USERS_SCHEMA)
        .await?;
    let dir = scratch_dir("metrics-dead-letters");
    let dead = dir.join("dead.ndjson");
    let addr = metrics_addr()?;
    let cache = plugin_cache().display().to_string();
    let chaos = plugin("chaos").display().to_string();
    let args = run_args(
        &db,
        &[
            "--plugin",
            &chaos,
            "--plugin-cache",
            &cache,
            "--dead-letter",
            &dead.display().to_string(),
            "--metrics-addr",
            &addr.to_string(),
        ],
    );
    let mut screamer = Screamer::spawn(emulator.host(), &args)?;
    ready(addr).await?;
    for id in 0..20i64 {
        let name = if id % 4 == 0 { "fail" } else { "pass" };
        db.apply(vec![insert("Users", &["Id", "Name"], &[&id, &name])])
            .await?;
    }
    let s = scrape_until(addr, Duration::from_secs(60), "20 records decided", |s| {
        s.sum("screamer_plugin_records_total") >= 20.0
            && s.sum("screamer_output_records_total") >= 20.0
    })
    .await?;
    let dead_lines = std::fs::read_to_string(&dead)?.lines().count();
    assert_eq!(dead_lines, 5);
    assert_eq!(
        s.sum_where("screamer_dead_letters_total", &[("plugin", "chaos")]),
        dead_lines as f64
    );
    assert_eq!(s.sum("screamer_dead_letters_total"), dead_lines as f64);
    assert_eq!(
        s.sum_where(
            "screamer_output_records_total",
            &[("output", "dead_letters")]
        ),
        5.0
    );
    assert_eq!(
        s.sum_where("screamer_output_records_total", &[("output", "main")]),
        15.0
    );
    assert_eq!(screamer.line_count(), 15);
    assert_eq!(
        s.sum_where(
            "screamer_plugin_records_total",
            &[("plugin", "chaos"), ("outcome", "fail")]
        ),
        5.0
    );
    // The chaos plugin fails those records itself: counted by why.
    assert_eq!(
        s.sum_where(
            "screamer_plugin_failures_total",
            &[("plugin", "chaos"), ("kind", "failed")]
        ),
        5.0
    );
    assert_eq!(
        s.sum_where(
            "screamer_plugin_records_total",
            &[("plugin", "chaos"), ("outcome", "replace")]
        ),
        15.0
    );
    assert!(s.sum_where("screamer_plugin_calls_total", &[("plugin", "chaos")]) >= 1.0);
    assert!(s.sum("screamer_plugin_instances_started_total") >= 1.0);
    assert_eq!(s.sum("screamer_plugin_failed_calls_total"), 0.0);
    assert_operations_files_name_exported_metrics(&s)?;
    let stderr = stop(&mut screamer).await?;
    assert!(
        stderr
            .lines()
            .any(|l| l.contains("plugin summary") && l.contains("fail=5")),
        "the end-of-run plugin summary: {stderr}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn destination_retries_bytes_and_acceptance_are_counted_per_output() -> anyhow::Result<()> {
    let emulator = Emulator::start(EmulatorOptions::exact()).await?;
    let db = emulator.items_database().await?;
    let sink = HttpSink::start(Behaviour {
        fail_next: 3,
        ..Behaviour::default()
    })
    .await?;
    let addr = metrics_addr()?;
    let args = run_args(
        &db,
        &["--output", &sink.url(), "--metrics-addr", &addr.to_string()],
    );
    let mut screamer = Screamer::spawn(emulator.host(), &args)?;
    ready(addr).await?;
    screamer_tests::items::write(&db, 10, 2, Duration::ZERO).await?;
    let s = scrape_until(addr, Duration::from_secs(60), "10 records accepted", |s| {
        s.sum_where("screamer_output_records_total", &[("output", "main")]) >= 10.0
    })
    .await?;
    assert_eq!(sink.lines().len(), 10);
    let main = [("output", "main")];
    assert_eq!(s.sum_where("screamer_output_records_total", &main), 10.0);
    assert_eq!(
        s.sum_where("screamer_output_retries_total", &main),
        3.0,
        "one retry per 503"
    );
    assert_eq!(s.sum_where("screamer_output_failures_total", &main), 0.0);
    assert_eq!(s.sum_where("screamer_output_in_flight_bytes", &main), 0.0);
    let payload: usize = sink.lines().iter().map(String::len).sum();
    assert_eq!(
        s.sum_where("screamer_output_bytes_total", &main),
        payload as f64
    );
    assert!(s.sum_where("screamer_output_send_duration_seconds_count", &main) >= 1.0);
    stop(&mut screamer).await?;
    Ok(())
}

/// The alert rules and the dashboard of `deploy/` use only metrics a run exports.
fn assert_operations_files_name_exported_metrics(scrape: &Scrape) -> anyhow::Result<()> {
    let deploy = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy");
    let alerts = std::fs::read_to_string(deploy.join("alerts.yml"))?;
    let dashboard: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(
        deploy.join("grafana-dashboard.json"),
    )?)?;
    let exprs: Vec<String> = dashboard["panels"]
        .as_array()
        .expect("panels")
        .iter()
        .flat_map(|p| p["targets"].as_array().cloned().unwrap_or_default())
        .map(|t| t["expr"].as_str().expect("a target's expr").to_owned())
        .collect();
    for (file, text) in [
        ("alerts.yml", alerts),
        ("grafana-dashboard.json", exprs.join("\n")),
    ] {
        let names = referenced_metrics(&text);
        assert!(names.len() >= 8, "{file} names only {names:?}");
        let unknown: Vec<_> = names.iter().filter(|n| !scrape.knows(n)).collect();
        assert!(
            unknown.is_empty(),
            "{file} names metrics screamer does not export: {unknown:?}"
        );
    }
    Ok(())
}

#[test]
fn plugin_run_stats_prints_each_plugins_calls_and_outcomes() -> anyhow::Result<()> {
    let names: Vec<&str> = (0..12).map(|i| ["fail", "patch", "ok"][i % 3]).collect();
    let filter = plugin("filter").display().to_string();
    let chaos = plugin("chaos").display().to_string();
    let run = plugin_run(&[&chaos, &filter, "--stats"], &named_records(&names))?;
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let row = |name: &str| -> Vec<String> {
        run.stderr
            .lines()
            .find(|l| l.split_whitespace().next() == Some(name))
            .unwrap_or_else(|| panic!("no {name} row in {}", run.stderr))
            .split_whitespace()
            .map(str::to_owned)
            .collect()
    };
    let header = row("plugin");
    assert_eq!(
        header,
        [
            "plugin",
            "calls",
            "records",
            "keep",
            "drop",
            "patch",
            "replace",
            "emit",
            "fail",
            "instances",
            "us/record"
        ]
    );
    let chaos_row = row("chaos");
    // records, keep, drop, patch, replace, emit, fail
    assert_eq!(chaos_row[2..9], ["12", "0", "0", "4", "4", "0", "4"]);
    let filter_row = row("filter");
    assert_eq!(filter_row[2], "8", "filter sees what chaos passed on");
    Ok(())
}

#[test]
fn a_bounded_run_on_a_terminal_draws_a_progress_line() -> anyhow::Result<()> {
    let rt = tokio::runtime::Runtime::new()?;
    let emulator = rt.block_on(Emulator::start(EmulatorOptions::exact()))?;
    let db = rt.block_on(emulator.items_database())?;
    let start = Timestamp::now();
    let end = start.saturating_add(Duration::from_secs(4));
    let mut args = run_args(
        &db,
        &["--start", &start.to_string(), "--end", &end.to_string()],
    );
    args.insert(0, screamer_bin().display().to_string());
    // `script` gives the child a pseudo-terminal for stderr and copies what it draws.
    let out = std::process::Command::new("script")
        .args(["-qefc", &shell_words(&args), "/dev/null"])
        .env("SPANNER_EMULATOR_HOST", emulator.host())
        .output()?;
    let drawn = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{drawn}");
    assert!(
        drawn.contains("finished of") && drawn.contains("before --end"),
        "the live progress line: {drawn}"
    );
    Ok(())
}

fn shell_words(args: &[String]) -> String {
    args.iter()
        .map(|a| format!("'{}'", a.replace('\'', r"'\''")))
        .collect::<Vec<_>>()
        .join(" ")
}
