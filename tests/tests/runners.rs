//! Several screamer processes sharing one stream through the metadata table: leases,
//! failover after `kill -9`, graceful hand-over, a paused runner, rebalancing and
//! `--max-connections`, with `screamer status` watching.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;

use screamer::Timestamp;
use screamer_tests::items::{
    assert_ordered_per_partition, counts, delivered, exactly_once, expected, explain_missing, mods,
    record_mods, write,
};
use screamer_tests::libc::{SIGCONT, SIGINT, SIGKILL, SIGSTOP};
use screamer_tests::process::command;
use screamer_tests::{Emulator, EmulatorOptions, Screamer, TestDatabase, eventually};
use serde_json::Value;

/// These tests run one at a time: each starts an emulator and several screamer processes,
/// and on two cores they would starve each other's heartbeats.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A stream (churning: partitions split and merge every few seconds) and its start.
async fn shared_stream(churn: bool) -> anyhow::Result<(Emulator, Arc<TestDatabase>, String)> {
    let emulator = Emulator::start(EmulatorOptions {
        partition_alive_seconds: churn.then_some(3),
        ..EmulatorOptions::exact()
    })
    .await?;
    let db = Arc::new(emulator.items_database().await?);
    Ok((emulator, db, Timestamp::now().to_string()))
}

/// Two runners, r1 and r2, with a lease of `lease` and one-second rebalancing, on a
/// churning stream while a writer commits 1,500 rows over 11 keys.
struct Pair {
    _serial: tokio::sync::MutexGuard<'static, ()>,
    _emulator: Emulator,
    db: Arc<TestDatabase>,
    start: String,
    r1: Screamer,
    r2: Screamer,
    writing: tokio::task::JoinHandle<anyhow::Result<(HashMap<i64, i64>, Timestamp)>>,
}

async fn pair_while_writing(lease: &str) -> anyhow::Result<Pair> {
    let serial = SERIAL.lock().await;
    let (emulator, db, start) = shared_stream(true).await?;
    let common = ["--lease-duration", lease, "--rebalancing-interval", "1s"];
    let r1 = Screamer::spawn(db.host(), &runner_args(&db, &start, "r1", &common))?;
    let r2 = Screamer::spawn(db.host(), &runner_args(&db, &start, "r2", &common))?;
    let writing = tokio::spawn({
        let db = db.clone();
        async move { write(&db, 1500, 11, Duration::from_millis(8)).await }
    });
    Ok(Pair {
        _serial: serial,
        _emulator: emulator,
        db,
        start,
        r1,
        r2,
        writing,
    })
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
    let run = command([
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

/// The stream the runners of a test share: its database, where they start, their lease.
#[derive(Clone, Copy)]
struct Setup<'a> {
    db: &'a TestDatabase,
    start: &'a str,
    lease: &'a str,
}

/// Waits up to `within` until the runners delivered every mutation the writer reports in
/// `written` (last Seq per key, last commit), and returns the mutations to expect from them.
/// Those are all written ones, but for any the emulator itself lost (committed at the end of
/// a slice of a live query, which no reader gets; named on stdout). On timeout with any other
/// missing, an error names them, where the stream has them and who delivered those
/// partitions, the status and every runner's log.
async fn await_delivery(
    setup: &Setup<'_>,
    written: &(HashMap<i64, i64>, Timestamp),
    runners: &[(&str, &Screamer)],
    within: Duration,
    what: &str,
) -> anyhow::Result<BTreeMap<(i64, i64), usize>> {
    let want = expected(&written.0);
    let got = || -> Option<BTreeMap<(i64, i64), usize>> {
        let mut all = Vec::new();
        for (_, r) in runners {
            all.extend(mods(&r.lines()).ok()?);
        }
        Some(counts(all))
    };
    let waited = eventually(within, what, async || {
        let got = got()?;
        want.keys().all(|k| got.contains_key(k)).then_some(())
    })
    .await;
    let Err(e) = waited else {
        return Ok(want);
    };
    let got = got().unwrap_or_default();
    let missing: Vec<_> = want
        .keys()
        .filter(|k| !got.contains_key(k))
        .copied()
        .collect();
    let readers: Vec<_> = runners
        .iter()
        .map(|(id, r)| (*id, delivered(&r.lines())))
        .collect();
    let Setup { db, start, lease } = *setup;
    // The runners' emulators slice live queries as `exact` does: the explanation names a
    // commit the emulator itself lost (which a runner cannot get) as such.
    let chop = EmulatorOptions::exact().query_chop.unwrap_or_default();
    let why = explain_missing(db, (start.parse()?, written.1), &missing, &readers, chop).await;
    if why.all_lost_by_the_emulator(&missing) {
        println!(
            "lost by the emulator, not delivered: {missing:?}\n{}",
            why.text
        );
        let mut want = want;
        want.retain(|m, _| !missing.contains(m));
        return Ok(want);
    }
    Err(e.context(format!(
        "missing {missing:?}\n{}status: {:?}\n{}",
        why.text,
        status(db, lease).ok(),
        logs(runners)
    )))
}

/// Every wanted mutation delivered exactly once across the runners, or an error naming the
/// missing and repeated ones with every runner's log.
fn delivered_exactly_once(
    want: &BTreeMap<(i64, i64), usize>,
    runners: &[(&str, &Screamer)],
) -> anyhow::Result<()> {
    let outputs: Vec<_> = runners.iter().map(|(id, r)| (*id, r.lines())).collect();
    exactly_once(want, &outputs).with_context(|| logs(runners))
}

/// Waits for a runner told to stop (SIGINT) to exit, and asserts it exited cleanly.
async fn exits_cleanly(r: &mut Screamer) -> anyhow::Result<()> {
    let code = r.wait(Duration::from_secs(30)).await?.code();
    assert_eq!(code, Some(0), "{}", r.stderr());
    Ok(())
}

/// Waits until a runner resumed after a pause logs its lapse and its return.
async fn rejoined(r: &Screamer) -> anyhow::Result<()> {
    eventually(
        Duration::from_secs(20),
        "the paused runner noticing and rejoining",
        async || {
            let err = r.stderr();
            (err.contains("no heartbeat within the lease duration")
                && err.contains("heartbeat restored"))
            .then_some(())
        },
    )
    .await
}

/// Every runner's log, for a failure message.
fn logs(runners: &[(&str, &Screamer)]) -> String {
    runners
        .iter()
        .map(|(id, r)| format!("--- {id}\n{}", r.stderr()))
        .collect::<Vec<_>>()
        .join("\n")
}

#[tokio::test(flavor = "multi_thread")]
async fn three_runners_share_a_churning_stream_for_a_minute() -> anyhow::Result<()> {
    let _serial = SERIAL.lock().await;
    let (_emulator, db, start) = shared_stream(true).await?;
    // A lease long enough that a heartbeat the busy emulator delays for seconds does not
    // expire it (that would be a failover, which may repeat records).
    const LEASE: &str = "10s";
    let common = ["--lease-duration", LEASE, "--rebalancing-interval", "2s"];
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
        if let Ok(s) = status(&db, LEASE) {
            let h = held(&s);
            most_r3.fetch_max(h.get("r3").copied().unwrap_or(0), Ordering::Relaxed);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let written = writing.await??;
    let watching: Vec<_> = runners.iter().map(|(id, r)| (*id, r)).collect();
    let want = await_delivery(
        &Setup {
            db: &db,
            start: &start,
            lease: LEASE,
        },
        &written,
        &watching,
        Duration::from_secs(60),
        "every mutation delivered by some runner",
    )
    .await?;
    for (_, r) in &runners {
        r.signal(SIGINT)?;
    }
    for (_, r) in &mut runners {
        exits_cleanly(r).await?;
        assert_ordered_per_partition(&r.lines())?;
    }
    let stopped: Vec<_> = runners.iter().map(|(id, r)| (*id, r)).collect();
    // A second reader of a partition would deliver again every record after its
    // watermark: exactly once across the runners is what "one reader at a time" means
    // in the output.
    delivered_exactly_once(&want, &stopped)?;
    let busy = runners.iter().filter(|(_, r)| r.line_count() > 0).count();
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
    let Pair {
        _serial,
        _emulator,
        db,
        start,
        r1,
        r2,
        writing,
    } = pair_while_writing("3s").await?;
    let (mut first, mut second) = first_to_deliver(r1, r2, 50).await?;
    first.signal(SIGKILL)?;
    first.wait(Duration::from_secs(10)).await?;
    let written = writing.await??;
    // Lease (3s) + a claim poll (1s) + reading the backlog: well within 20 s.
    let t = Instant::now();
    let want = await_delivery(
        &Setup {
            db: &db,
            start: &start,
            lease: "3s",
        },
        &written,
        &[("killed", &first), ("other", &second)],
        Duration::from_secs(20),
        "the other runner delivering what the killed one held",
    )
    .await?;
    eprintln!("caught up {:?} after the writer finished", t.elapsed());
    second.signal(SIGINT)?;
    exits_cleanly(&mut second).await?;
    assert!(second.stderr().contains("subscription ended"));
    assert_ordered_per_partition(&second.lines())?;
    // Nothing lost; what the killed runner delivered after its last checkpoint may come
    // again.
    let all = counts(
        mods(&first.lines())?
            .into_iter()
            .chain(mods(&second.lines())?),
    );
    assert!(want.keys().all(|k| all.contains_key(k)));
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_graceful_stop_hands_over_at_once_and_repeats_nothing() -> anyhow::Result<()> {
    // A long lease: only the release on stop can explain a fast hand-over.
    let Pair {
        _serial,
        _emulator,
        db,
        start,
        r1,
        r2,
        writing,
    } = pair_while_writing("60s").await?;
    let (mut first, mut second) = first_to_deliver(r1, r2, 100).await?;
    first.signal(SIGINT)?;
    exits_cleanly(&mut first).await?;
    let written = writing.await??;
    let want = await_delivery(
        &Setup {
            db: &db,
            start: &start,
            lease: "60s",
        },
        &written,
        &[("stopped", &first), ("other", &second)],
        Duration::from_secs(20),
        "the other runner delivering the rest, long before the stopped one's lease expires",
    )
    .await?;
    second.signal(SIGINT)?;
    exits_cleanly(&mut second).await?;
    assert_ordered_per_partition(&second.lines())?;
    delivered_exactly_once(&want, &[("stopped", &first), ("other", &second)])?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_paused_runner_loses_its_partitions_writes_nothing_for_them_and_rejoins()
-> anyhow::Result<()> {
    let Pair {
        _serial,
        _emulator,
        db,
        start,
        r1,
        r2,
        writing,
    } = pair_while_writing("3s").await?;
    // Pause whichever runner reads the lineage that carries the records (luck on the
    // emulator: see docs/architecture.md, "Emulator facts").
    let r1_first = eventually(
        Duration::from_secs(60),
        "a runner holding partitions and delivering",
        async || {
            let h = held(&status(&db, "3s").ok()?);
            let busy =
                |id: &str, r: &Screamer| h.get(id).copied().unwrap_or(0) >= 1 && r.line_count() > 0;
            if busy("r1", &r1) {
                Some(true)
            } else {
                busy("r2", &r2).then_some(false)
            }
        },
    )
    .await?;
    let ((paused_id, mut paused), (other_id, mut other)) = if r1_first {
        (("r1", r1), ("r2", r2))
    } else {
        (("r2", r2), ("r1", r1))
    };
    paused.signal(SIGSTOP)?;
    // other takes paused's partitions once paused's lease expires.
    eventually(
        Duration::from_secs(20),
        "the other runner owning everything",
        async || {
            let s = status(&db, "3s").ok()?;
            let owners: Vec<&Value> = s["partitions"]
                .as_array()?
                .iter()
                .map(|p| &p["owner"])
                .collect();
            (owners.iter().all(|o| *o != paused_id) && owners.iter().any(|o| *o == other_id))
                .then_some(())
        },
    )
    .await?;
    let epochs_before = status(&db, "3s")?;
    paused.signal(SIGCONT)?;
    rejoined(&paused).await?;
    // What the other runner took is still its own, or was claimed again since (a higher
    // epoch: after the rejoin, rebalancing may hand a partition back): the paused one's late
    // writes were refused.
    let after = status(&db, "3s")?;
    for p in epochs_before["partitions"].as_array().unwrap() {
        if p["owner"] != other_id {
            continue;
        }
        if let Some(now) = after["partitions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|q| q["token"] == p["token"])
        {
            let epoch = |q: &Value| q["epoch"].as_i64().unwrap_or(-1);
            assert!(
                now["owner"] != paused_id || epoch(now) > epoch(p),
                "{paused_id} took back {} without a claim (epoch {} before, {} now)",
                p["token"],
                p["epoch"],
                now["epoch"]
            );
        }
    }
    let written = writing.await??;
    await_delivery(
        &Setup {
            db: &db,
            start: &start,
            lease: "3s",
        },
        &written,
        &[(paused_id, &paused), (other_id, &other)],
        Duration::from_secs(30),
        "everything delivered",
    )
    .await?;
    for r in [&paused, &other] {
        r.signal(SIGINT)?;
    }
    exits_cleanly(&mut paused).await?;
    exits_cleanly(&mut other).await?;
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
    // The root ends at once on the emulator: between it and its children's claim no
    // partition has an owner for a moment, so the table is read until one has.
    let status_table = || -> anyhow::Result<String> {
        let out = command([
            "status",
            "--dsn",
            &db.name.to_string(),
            "--metadata-table",
            "Partitions",
        ])
        .env("SPANNER_EMULATOR_HOST", db.host())
        .output()?;
        Ok(String::from_utf8(out.stdout)?)
    };
    let table = eventually(
        Duration::from_secs(30),
        "status showing a partition solo holds",
        async || {
            let table = status_table().ok()?;
            let held = table.rsplit("PARTITION").next()?.contains(" solo ");
            held.then_some(table)
        },
    )
    .await?;
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
    let partitions = s["partitions"].as_array().expect("partitions");
    assert!(
        partitions.iter().any(|p| p["owner"] == "solo"
            && (p["state"] == "RUNNING" || p["state"] == "SCHEDULED")),
        "{s}"
    );
    r1.signal(SIGINT)?;
    exits_cleanly(&mut r1).await?;
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
async fn a_paused_runner_nobody_replaced_resumes_where_it_stopped() -> anyhow::Result<()> {
    let _serial = SERIAL.lock().await;
    let (_emulator, db, start) = shared_stream(true).await?;
    let mut r1 = Screamer::spawn(
        db.host(),
        &runner_args(&db, &start, "r1", &["--lease-duration", "3s"]),
    )?;
    let writing = tokio::spawn({
        let db = db.clone();
        async move { write(&db, 1000, 11, Duration::from_millis(8)).await }
    });
    eventually(Duration::from_secs(60), "r1 delivering", async || {
        (r1.line_count() >= 50).then_some(())
    })
    .await?;
    r1.signal(SIGSTOP)?;
    eventually(
        Duration::from_secs(20),
        "r1's lease expiring while it is paused",
        async || {
            let s = status(&db, "3s").ok()?;
            (s["runners"].as_array()?.iter().all(|r| r["alive"] == false)).then_some(())
        },
    )
    .await?;
    r1.signal(SIGCONT)?;
    // On waking it stops every reader, checkpoints what it had delivered, releases the
    // leases (nobody took them) and claims them again from exactly there.
    rejoined(&r1).await?;
    let written = writing.await??;
    let want = await_delivery(
        &Setup {
            db: &db,
            start: &start,
            lease: "3s",
        },
        &written,
        &[("r1", &r1)],
        Duration::from_secs(30),
        "everything delivered",
    )
    .await?;
    r1.signal(SIGINT)?;
    exits_cleanly(&mut r1).await?;
    // Nothing lost, and only what shares a commit timestamp with the last record each
    // stopped reader delivered comes again: a stopped reader cannot know whether more
    // records at that timestamp were still to come, so it resumes there.
    let got = counts(mods(&r1.lines())?);
    assert!(want.keys().all(|k| got.contains_key(k)), "{}", r1.stderr());
    let mut repeated_at: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for line in r1.lines() {
        let v: Value = serde_json::from_str(&line)?;
        if record_mods(&v)?
            .iter()
            .any(|m| got.get(m).copied().unwrap_or(0) > 1)
        {
            let at = v["commit_timestamp"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            let times = repeated_at
                .entry(v["partition_token"].as_str().unwrap_or_default().to_owned())
                .or_default();
            if !times.contains(&at) {
                times.push(at);
            }
        }
    }
    assert!(
        repeated_at.values().all(|t| t.len() == 1),
        "repeated beyond one timestamp per partition: {repeated_at:?}\n{}",
        r1.stderr()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_late_runner_gets_its_fair_share() -> anyhow::Result<()> {
    let _serial = SERIAL.lock().await;
    let (_emulator, db, start) = shared_stream(true).await?;
    // Rebalancing, not failover: a lease long enough that a heartbeat the busy emulator
    // delays for seconds does not expire it (that would be a failover, which may repeat).
    const LEASE: &str = "10s";
    let common = ["--lease-duration", LEASE, "--rebalancing-interval", "1s"];
    let mut r1 = Screamer::spawn(db.host(), &runner_args(&db, &start, "r1", &common))?;
    let writing = tokio::spawn({
        let db = db.clone();
        async move { write(&db, 2500, 23, Duration::from_millis(8)).await }
    });
    eventually(
        Duration::from_secs(60),
        "r1 alone holding several partitions",
        async || {
            let h = held(&status(&db, LEASE).ok()?);
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
            let s = status(&db, LEASE).ok()?;
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
    let written = writing.await??;
    let want = await_delivery(
        &Setup {
            db: &db,
            start: &start,
            lease: LEASE,
        },
        &written,
        &[("r1", &r1), ("r2", &r2)],
        Duration::from_secs(30),
        "everything delivered",
    )
    .await?;
    for r in [&r1, &r2] {
        r.signal(SIGINT)?;
    }
    exits_cleanly(&mut r1).await?;
    exits_cleanly(&mut r2).await?;
    // Rebalancing releases cleanly: exactly once.
    delivered_exactly_once(&want, &[("r1", &r1), ("r2", &r2)])?;
    assert!(
        r1.stderr().contains("rebalancing"),
        "r1 released its excess"
    );
    Ok(())
}
