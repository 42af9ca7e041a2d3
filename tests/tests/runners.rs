//! Several screamer processes sharing one stream through the metadata table: leases,
//! failover after `kill -9`, graceful hand-over, a paused runner, rebalancing and
//! `--max-connections`, with `screamer status` watching.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;

use screamer::Timestamp;
use screamer_tests::items::{assert_ordered_per_partition, counts, expected, mods, write};
use screamer_tests::libc::{SIGCONT, SIGINT, SIGKILL, SIGSTOP};
use screamer_tests::{Emulator, EmulatorOptions, Screamer, TestDatabase, eventually};
use serde_json::Value;

/// These tests run one at a time: each starts an emulator and several screamer processes,
/// and on two cores they would starve each other's heartbeats.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A stream (churning: partitions split and merge every few seconds) and its start.
async fn shared_stream(churn: bool) -> anyhow::Result<(Emulator, Arc<TestDatabase>, String)> {
    let emulator = Emulator::start(EmulatorOptions {
        partition_alive_seconds: churn.then_some(3),
    })
    .await?;
    let db = Arc::new(emulator.items_database().await?);
    Ok((emulator, db, Timestamp::now().to_string()))
}

fn runner_args(db: &TestDatabase, start: &str, id: &str, extra: &[&str]) -> Vec<String> {
    let mut a: Vec<String> = [
        "--dsn",
        &db.name.to_string(),
        "--stream",
        "Changes",
        "--metadata-table",
        "Partitions",
        "--start",
        start,
        "--runner-id",
        id,
        "--heartbeat-interval",
        "1s",
        "--checkpoint-interval",
        "500ms",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    a.extend(extra.iter().map(|s| s.to_string()));
    a
}

/// Waits until one of two runners delivered `lines` records; returns it first. On the
/// emulator all records of a generation go to one partition, and which runner holds that
/// lineage is luck (r1 once delivered nothing for 60 s while reading partitions throughout).
async fn first_to_deliver(
    r1: Screamer,
    r2: Screamer,
    lines: usize,
) -> anyhow::Result<(Screamer, Screamer)> {
    let r1_first = eventually(Duration::from_secs(60), "a runner delivering", async || {
        if r1.line_count() >= lines {
            Some(true)
        } else {
            (r2.line_count() >= lines).then_some(false)
        }
    })
    .await
    .with_context(|| format!("r1: {}\nr2: {}", r1.stderr(), r2.stderr()))?;
    Ok(if r1_first { (r1, r2) } else { (r2, r1) })
}

/// `screamer status --json` for the test's metadata table.
fn status(db: &TestDatabase, lease: &str) -> anyhow::Result<Value> {
    let dsn = db.name.to_string();
    let run = std::process::Command::new(screamer_tests::screamer_bin())
        .args([
            "status",
            "--dsn",
            &dsn,
            "--metadata-table",
            "Partitions",
            "--json",
        ])
        .args(["--lease-duration", lease])
        .env("SPANNER_EMULATOR_HOST", db.host())
        .output()?;
    anyhow::ensure!(
        run.status.success(),
        "status failed: {}",
        String::from_utf8_lossy(&run.stderr)
    );
    Ok(serde_json::from_slice(&run.stdout)?)
}

/// Partitions each runner holds, by the status.
fn held(status: &Value) -> BTreeMap<String, usize> {
    status["runners"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["alive"] == true)
        .map(|r| {
            (
                r["runner_id"].as_str().unwrap().to_owned(),
                r["partitions"].as_u64().unwrap() as usize,
            )
        })
        .collect()
}

/// For each partition, the commit-time span each runner delivered of it: spans of
/// different runners must not overlap, or two runners read the partition at once.
fn assert_one_reader_at_a_time(outputs: &[(&str, Vec<String>)]) -> anyhow::Result<()> {
    let mut spans: HashMap<String, Vec<(Timestamp, Timestamp, String)>> = HashMap::new();
    for (runner, lines) in outputs {
        let mut per: HashMap<String, (Timestamp, Timestamp)> = HashMap::new();
        for line in lines {
            let v: Value = serde_json::from_str(line)?;
            let token = v["partition_token"].as_str().unwrap().to_owned();
            let at: Timestamp = v["commit_timestamp"].as_str().unwrap().parse()?;
            let e = per.entry(token).or_insert((at, at));
            e.0 = e.0.min(at);
            e.1 = e.1.max(at);
        }
        for (token, (a, b)) in per {
            spans
                .entry(token)
                .or_default()
                .push((a, b, runner.to_string()));
        }
    }
    for (token, mut s) in spans {
        s.sort_by_key(|x| x.0);
        for w in s.windows(2) {
            assert!(
                w[0].1 <= w[1].0,
                "partition {token}: {} read {}..{} while {} read {}..{}",
                w[0].2,
                w[0].0,
                w[0].1,
                w[1].2,
                w[1].0,
                w[1].1
            );
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn three_runners_share_a_churning_stream_for_a_minute() -> anyhow::Result<()> {
    let _serial = SERIAL.lock().await;
    let (_emulator, db, start) = shared_stream(true).await?;
    let common = ["--lease-duration", "5s", "--rebalancing-interval", "2s"];
    let mut runners = Vec::new();
    for (id, extra) in [
        ("r1", &[][..]),
        ("r2", &[][..]),
        ("r3", &["--max-connections", "1"][..]),
    ] {
        let args = runner_args(&db, &start, id, &[&common[..], extra].concat());
        runners.push((id, Screamer::spawn(db.host(), &args)?));
    }
    let writing = tokio::spawn({
        let db = db.clone();
        async move { write(&db, 4000, 17, Duration::from_millis(12)).await }
    });
    // Watch the leases while the writer runs: r3 never holds more than --max-connections.
    let most_r3 = Arc::new(AtomicUsize::new(0));
    while !writing.is_finished() {
        if let Ok(s) = status(&db, "5s") {
            let h = held(&s);
            most_r3.fetch_max(h.get("r3").copied().unwrap_or(0), Ordering::Relaxed);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let (seq, _) = writing.await??;
    let want = expected(&seq);
    let delivered = eventually(
        Duration::from_secs(60),
        "every mutation delivered by some runner",
        async || {
            let mut all = Vec::new();
            for (_, r) in &runners {
                all.extend(mods(&r.lines()).ok()?);
            }
            let got = counts(all);
            want.keys().all(|k| got.contains_key(k)).then_some(())
        },
    )
    .await;
    if let Err(e) = delivered {
        let mut all = Vec::new();
        for (id, r) in &runners {
            eprintln!("--- {id} ({} lines)\n{}", r.line_count(), r.stderr());
            all.extend(mods(&r.lines())?);
        }
        let got = counts(all);
        let missing: Vec<_> = want.keys().filter(|k| !got.contains_key(k)).collect();
        eprintln!("--- missing {missing:?}");
        for (id, r) in &runners {
            std::fs::write(format!("/tmp/runner-{id}.ndjson"), r.lines().join("\n"))?;
        }
        eprintln!(
            "--- status\n{}",
            status(&db, "5s").map(|s| s.to_string()).unwrap_or_default()
        );
        return Err(e);
    }
    for (_, r) in &runners {
        r.signal(SIGINT)?;
    }
    let mut outputs = Vec::new();
    for (id, mut r) in runners {
        let status = r.wait(Duration::from_secs(30)).await?;
        assert_eq!(status.code(), Some(0), "{id}: {}", r.stderr());
        assert_ordered_per_partition(&r.lines())?;
        outputs.push((id, r.lines()));
    }
    let all = counts(outputs.iter().flat_map(|(_, l)| mods(l).unwrap()));
    assert_eq!(all, want, "every mutation exactly once across the runners");
    assert_one_reader_at_a_time(&outputs)?;
    let busy = outputs.iter().filter(|(_, l)| !l.is_empty()).count();
    assert!(
        busy >= 2,
        "the load was shared: {busy} runners delivered records"
    );
    assert!(
        most_r3.load(Ordering::Relaxed) <= 1,
        "r3 held more than --max-connections 1"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_killed_runners_partitions_resume_elsewhere_after_its_lease() -> anyhow::Result<()> {
    let _serial = SERIAL.lock().await;
    let (_emulator, db, start) = shared_stream(true).await?;
    let common = ["--lease-duration", "3s", "--rebalancing-interval", "1s"];
    let r1 = Screamer::spawn(db.host(), &runner_args(&db, &start, "r1", &common))?;
    let r2 = Screamer::spawn(db.host(), &runner_args(&db, &start, "r2", &common))?;
    let writing = tokio::spawn({
        let db = db.clone();
        async move { write(&db, 1500, 11, Duration::from_millis(8)).await }
    });
    let (mut first, mut second) = first_to_deliver(r1, r2, 50).await?;
    first.signal(SIGKILL)?;
    first.wait(Duration::from_secs(10)).await?;
    let before = mods(&first.lines())?;
    let (seq, _) = writing.await??;
    let want = expected(&seq);
    // Lease (3s) + a claim poll (1s) + reading the backlog: well within 20 s.
    let t = Instant::now();
    eventually(
        Duration::from_secs(20),
        "the other runner delivering what the killed one held",
        async || {
            let got = counts(before.iter().copied().chain(mods(&second.lines()).ok()?));
            want.keys().all(|k| got.contains_key(k)).then_some(())
        },
    )
    .await?;
    eprintln!("caught up {:?} after the writer finished", t.elapsed());
    second.signal(SIGINT)?;
    assert_eq!(
        second.wait(Duration::from_secs(30)).await?.code(),
        Some(0),
        "{}",
        second.stderr()
    );
    assert!(second.stderr().contains("subscription ended"));
    assert_ordered_per_partition(&second.lines())?;
    // Nothing lost; what the killed runner delivered after its last checkpoint may come
    // again.
    let all = counts(before.into_iter().chain(mods(&second.lines())?));
    assert!(want.keys().all(|k| all.contains_key(k)));
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_graceful_stop_hands_over_at_once_and_repeats_nothing() -> anyhow::Result<()> {
    let _serial = SERIAL.lock().await;
    let (_emulator, db, start) = shared_stream(true).await?;
    // A long lease: only the release on stop can explain a fast hand-over.
    let common = ["--lease-duration", "60s", "--rebalancing-interval", "1s"];
    let r1 = Screamer::spawn(db.host(), &runner_args(&db, &start, "r1", &common))?;
    let r2 = Screamer::spawn(db.host(), &runner_args(&db, &start, "r2", &common))?;
    let writing = tokio::spawn({
        let db = db.clone();
        async move { write(&db, 1500, 11, Duration::from_millis(8)).await }
    });
    let (mut first, mut second) = first_to_deliver(r1, r2, 100).await?;
    first.signal(SIGINT)?;
    assert_eq!(
        first.wait(Duration::from_secs(30)).await?.code(),
        Some(0),
        "{}",
        first.stderr()
    );
    let (seq, _) = writing.await??;
    let want = expected(&seq);
    let delivered = mods(&first.lines())?;
    eventually(
        Duration::from_secs(20),
        "the other runner delivering the rest, long before the stopped one's lease expires",
        async || {
            let got = counts(delivered.iter().copied().chain(mods(&second.lines()).ok()?));
            want.keys().all(|k| got.contains_key(k)).then_some(())
        },
    )
    .await?;
    second.signal(SIGINT)?;
    assert_eq!(
        second.wait(Duration::from_secs(30)).await?.code(),
        Some(0),
        "{}",
        second.stderr()
    );
    assert_ordered_per_partition(&second.lines())?;
    let all = counts(delivered.into_iter().chain(mods(&second.lines())?));
    assert_eq!(all, want, "exactly once across the hand-over");
    assert_one_reader_at_a_time(&[("first", first.lines()), ("second", second.lines())])?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_paused_runner_loses_its_partitions_writes_nothing_for_them_and_rejoins()
-> anyhow::Result<()> {
    let _serial = SERIAL.lock().await;
    let (_emulator, db, start) = shared_stream(true).await?;
    let common = ["--lease-duration", "3s", "--rebalancing-interval", "1s"];
    let mut r1 = Screamer::spawn(db.host(), &runner_args(&db, &start, "r1", &common))?;
    let mut r2 = Screamer::spawn(db.host(), &runner_args(&db, &start, "r2", &common))?;
    let writing = tokio::spawn({
        let db = db.clone();
        async move { write(&db, 1500, 11, Duration::from_millis(8)).await }
    });
    eventually(
        Duration::from_secs(60),
        "r1 holding partitions",
        async || {
            let h = held(&status(&db, "3s").ok()?);
            (h.get("r1").copied().unwrap_or(0) >= 1 && r1.line_count() > 0).then_some(())
        },
    )
    .await?;
    r1.signal(SIGSTOP)?;
    // r2 takes r1's partitions once r1's lease expires.
    eventually(
        Duration::from_secs(20),
        "r2 owning everything",
        async || {
            let s = status(&db, "3s").ok()?;
            let owners: Vec<&Value> = s["partitions"]
                .as_array()?
                .iter()
                .map(|p| &p["owner"])
                .collect();
            (owners.iter().all(|o| *o != "r1") && owners.iter().any(|o| *o == "r2")).then_some(())
        },
    )
    .await?;
    let epochs_before = status(&db, "3s")?;
    r1.signal(SIGCONT)?;
    eventually(
        Duration::from_secs(20),
        "r1 noticing and rejoining",
        async || {
            let err = r1.stderr();
            (err.contains("no heartbeat within the lease duration")
                && err.contains("heartbeat restored"))
            .then_some(())
        },
    )
    .await?;
    // The partitions r2 took are still r2's: r1's late writes were refused.
    let after = status(&db, "3s")?;
    for p in epochs_before["partitions"].as_array().unwrap() {
        if p["owner"] != "r2" {
            continue;
        }
        if let Some(now) = after["partitions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|q| q["token"] == p["token"])
        {
            assert_ne!(
                now["owner"], "r1",
                "r1 took back {} without a claim",
                p["token"]
            );
        }
    }
    let (seq, _) = writing.await??;
    let want = expected(&seq);
    let delivered = eventually(
        Duration::from_secs(30),
        "everything delivered",
        async || {
            let got = counts(
                mods(&r1.lines())
                    .ok()?
                    .into_iter()
                    .chain(mods(&r2.lines()).ok()?),
            );
            want.keys().all(|k| got.contains_key(k)).then_some(())
        },
    )
    .await;
    if let Err(e) = delivered {
        let got = counts(mods(&r1.lines())?.into_iter().chain(mods(&r2.lines())?));
        let missing: Vec<_> = want
            .keys()
            .filter(|k| !got.contains_key(k))
            .take(10)
            .collect();
        eprintln!(
            "missing (first 10): {missing:?}\n--- r1\n{}\n--- r2\n{}\n--- status\n{}",
            r1.stderr(),
            r2.stderr(),
            status(&db, "3s").map(|s| s.to_string()).unwrap_or_default()
        );
        return Err(e);
    }
    for r in [&r1, &r2] {
        r.signal(SIGINT)?;
    }
    assert_eq!(
        r1.wait(Duration::from_secs(30)).await?.code(),
        Some(0),
        "{}",
        r1.stderr()
    );
    assert_eq!(
        r2.wait(Duration::from_secs(30)).await?.code(),
        Some(0),
        "{}",
        r2.stderr()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn status_shows_runners_and_partitions() -> anyhow::Result<()> {
    let _serial = SERIAL.lock().await;
    let (_emulator, db, start) = shared_stream(false).await?;
    let mut r1 = Screamer::spawn(
        db.host(),
        &runner_args(&db, &start, "solo", &["--lease-duration", "3s"]),
    )?;
    write(&db, 50, 3, Duration::ZERO).await?;
    eventually(
        Duration::from_secs(30),
        "solo holding a partition",
        async || {
            let h = held(&status(&db, "3s").ok()?);
            (h.get("solo").copied().unwrap_or(0) >= 1).then_some(())
        },
    )
    .await?;
    let table = std::process::Command::new(screamer_tests::screamer_bin())
        .args([
            "status",
            "--dsn",
            &db.name.to_string(),
            "--metadata-table",
            "Partitions",
        ])
        .env("SPANNER_EMULATOR_HOST", db.host())
        .output()?;
    let table = String::from_utf8(table.stdout)?;
    assert!(table.starts_with("RUNNER"), "{table}");
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("solo ") && l.contains(" yes ")),
        "{table}"
    );
    assert!(
        table.contains("PARTITION") && table.contains(" solo "),
        "{table}"
    );
    let s = status(&db, "3s")?;
    let p = &s["partitions"][0];
    assert!(p["state"] == "RUNNING" || p["state"] == "SCHEDULED", "{s}");
    assert_eq!(p["owner"], "solo");
    r1.signal(SIGINT)?;
    assert_eq!(r1.wait(Duration::from_secs(30)).await?.code(), Some(0));
    // A graceful stop deregisters and releases.
    let s = status(&db, "3s")?;
    assert!(s["runners"].as_array().unwrap().is_empty(), "{s}");
    assert!(
        s["partitions"]
            .as_array()
            .unwrap()
            .iter()
            .all(|p| p["owner"].is_null()),
        "{s}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_late_runner_gets_its_fair_share() -> anyhow::Result<()> {
    let _serial = SERIAL.lock().await;
    let (_emulator, db, start) = shared_stream(true).await?;
    let common = ["--lease-duration", "3s", "--rebalancing-interval", "1s"];
    let mut r1 = Screamer::spawn(db.host(), &runner_args(&db, &start, "r1", &common))?;
    let writing = tokio::spawn({
        let db = db.clone();
        async move { write(&db, 2500, 23, Duration::from_millis(8)).await }
    });
    eventually(
        Duration::from_secs(60),
        "r1 alone holding several partitions",
        async || {
            let h = held(&status(&db, "3s").ok()?);
            (h.get("r1").copied().unwrap_or(0) >= 2).then_some(())
        },
    )
    .await?;
    let mut r2 = Screamer::spawn(db.host(), &runner_args(&db, &start, "r2", &common))?;
    // Fair share: partitions over live runners, rounded up; each within one of it.
    let balanced = eventually(
        Duration::from_secs(30),
        "both runners within one of the fair share",
        async || {
            let s = status(&db, "3s").ok()?;
            let h = held(&s);
            let (a, b) = (h.get("r1").copied()?, h.get("r2").copied()?);
            let owned = a + b;
            let fair = owned.div_ceil(2);
            (owned >= 2 && b >= 1 && a.abs_diff(fair) <= 1 && b.abs_diff(fair) <= 1)
                .then_some((a, b))
        },
    )
    .await;
    let (a, b) = match balanced {
        Ok(v) => v,
        Err(e) => {
            eprintln!("--- r1\n{}\n--- r2\n{}", r1.stderr(), r2.stderr());
            return Err(e);
        }
    };
    eprintln!("balanced: r1 holds {a}, r2 holds {b}");
    let (seq, _) = writing.await??;
    let want = expected(&seq);
    eventually(
        Duration::from_secs(30),
        "everything delivered",
        async || {
            let got = counts(
                mods(&r1.lines())
                    .ok()?
                    .into_iter()
                    .chain(mods(&r2.lines()).ok()?),
            );
            want.keys().all(|k| got.contains_key(k)).then_some(())
        },
    )
    .await
    .with_context(|| {
        let got = counts(
            mods(&r1.lines())
                .unwrap_or_default()
                .into_iter()
                .chain(mods(&r2.lines()).unwrap_or_default()),
        );
        let missing: Vec<_> = want.keys().filter(|k| !got.contains_key(*k)).collect();
        format!(
            "missing {missing:?}\nstatus: {:?}\n--- r1\n{}\n--- r2\n{}",
            status(&db, "3s").ok(),
            r1.stderr(),
            r2.stderr()
        )
    })?;
    for r in [&r1, &r2] {
        r.signal(SIGINT)?;
    }
    assert_eq!(
        r1.wait(Duration::from_secs(30)).await?.code(),
        Some(0),
        "{}",
        r1.stderr()
    );
    assert_eq!(
        r2.wait(Duration::from_secs(30)).await?.code(),
        Some(0),
        "{}",
        r2.stderr()
    );
    let all = counts(mods(&r1.lines())?.into_iter().chain(mods(&r2.lines())?));
    assert_eq!(all, want, "rebalancing releases cleanly: exactly once");
    assert!(
        r1.stderr().contains("rebalancing"),
        "r1 released its excess"
    );
    Ok(())
}
