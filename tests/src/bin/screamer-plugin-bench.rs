//! Plugin runtime benchmark: records/s through real plugin components on one core, with a
//! native Rust implementation of the same redact run alternately with it (their ratio is
//! the median of each pair of passes, so a machine that slows for a while slows both), over
//! 10-column rows and over one 200-column row; hot-swap pause, cached load and
//! instantiation times. Results and the command: BENCHMARKS.md.
//!
//! Run: `scripts/bench-plugins.sh` (release build; plugins from target/plugins/).
//! `BENCH_RECORDS` (default 60000) records per measurement, `BENCH_REPEATS` (default 3),
//! `BENCH_CASE` (only the cases whose name contains it), `BENCH_PERF_MAP` (a perf map).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use screamer::plugin::{Chain, Input, PluginRuntime, PluginSpec, PluginVersion, RuntimeOptions};
use screamer::{DataChangeRecord, JsonObject};
use screamer_plugin_sdk::json;
use screamer_tests::bench::env_usize;
use screamer_tests::plugins::plugin;
use serde_json::json;

/// A realistic UPDATE of a 10-column row (about 1.7 KB as JSON).
fn record(i: usize, table: &str) -> DataChangeRecord {
    let row = |v: &str| {
        json!({
            "Email": format!("customer{i}@example.com"),
            "FirstName": "Alexandra", "LastName": "Johnson-Whitfield",
            "Phone": "+1-555-0100-2233", "Street": "1234 Longwood Avenue, Apt 56",
            "City": "Springfield", "Country": "US",
            "Status": v, "UpdatedAt": "2026-11-27T20:00:00.123456Z",
        })
    };
    let columns = [
        "Id",
        "Email",
        "FirstName",
        "LastName",
        "Phone",
        "Street",
        "City",
        "Country",
        "Status",
        "UpdatedAt",
    ];
    serde_json::from_value(json!({
        "partition_token": "AUZoT0lCQ0lqbmE5RVhmOGRsM3RLU05adHBhcnRpdGlvbnRva2VuZXhhbXBsZQ",
        "commit_timestamp": "2026-11-27T20:00:00.123456Z",
        "record_sequence": format!("{i:08}"),
        "server_transaction_id": "MTY4NzE5NjI5ODU0NjQ2MTkxMQ==",
        "is_last_record_in_transaction_in_partition": true,
        "table_name": table,
        "column_types": columns.iter().enumerate().map(|(n, c)| json!({
            "name": c, "type": {"code": if n == 0 { "INT64" } else { "STRING" }},
            "is_primary_key": n == 0, "ordinal_position": n + 1,
        })).collect::<Vec<_>>(),
        "mods": [{"keys": {"Id": i.to_string()}, "new_values": row("active"), "old_values": row("pending")}],
        "mod_type": "UPDATE",
        "value_capture_type": "OLD_AND_NEW_VALUES",
        "number_of_records_in_transaction": 1,
        "number_of_partitions_in_transaction": 1,
        "transaction_tag": "app=crm",
        "is_system_transaction": false,
    }))
    .expect("a valid record")
}

/// An UPDATE of one 200-column row (about 19 KB as JSON): the plugin's own code dominates
/// the boundary, whose cost is mostly per string crossing, not per byte.
fn wide_record(i: usize) -> DataChangeRecord {
    let mut record = record(i, "Customers");
    let row = |v: &str| {
        let mut row = serde_json::Map::new();
        row.insert("Email".into(), json!(format!("customer{i}@example.com")));
        row.insert("Phone".into(), json!("+1-555-0100-2233"));
        for c in 0..198 {
            row.insert(
                format!("Attribute{c:03}"),
                json!(format!("{v} value of attribute {c}")),
            );
        }
        JsonObject::from_text(serde_json::to_string(&row).expect("a map serializes"))
            .expect("an object")
    };
    record.mods[0].new_values = row("new");
    record.mods[0].old_values = row("old");
    record
}

/// Pins this thread (and the threads it starts later) to CPU 0: one core.
fn pin_to_one_core() {
    // SAFETY: a zeroed cpu_set_t is valid; CPU_SET and sched_setaffinity on our own thread.
    unsafe {
        let mut set: screamer_tests::libc::cpu_set_t = std::mem::zeroed();
        screamer_tests::libc::CPU_SET(0, &mut set);
        screamer_tests::libc::sched_setaffinity(0, std::mem::size_of_val(&set), &set);
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Records per second of one pass of `f` over `records`, in reader-sized batches of 1024.
fn pass(records: &[DataChangeRecord], f: &mut impl FnMut(&[DataChangeRecord]) -> usize) -> f64 {
    let t = Instant::now();
    let mut out = 0;
    for chunk in records.chunks(1024) {
        out += f(chunk);
    }
    std::hint::black_box(out);
    records.len() as f64 / t.elapsed().as_secs_f64()
}

/// The median rate of `f` over `repeats` passes, after a warm-up (instances, caches).
fn rate(
    records: &[DataChangeRecord],
    repeats: usize,
    mut f: impl FnMut(&[DataChangeRecord]) -> usize,
) -> f64 {
    f(&records[..records.len().min(2048)]);
    median((0..repeats).map(|_| pass(records, &mut f)).collect())
}

/// The rates of `f` and of the baseline `g` in alternating passes, and the median of each
/// pass's ratio `f / g`: a machine that slows down for a while slows both alike, so the
/// ratio holds where the two rates measured apart would not.
fn paired_rates(
    records: &[DataChangeRecord],
    repeats: usize,
    mut f: impl FnMut(&[DataChangeRecord]) -> usize,
    mut g: impl FnMut(&[DataChangeRecord]) -> usize,
) -> (f64, f64, f64) {
    let warm = &records[..records.len().min(2048)];
    f(warm);
    g(warm);
    let (mut fs, mut gs, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..repeats {
        let (a, b) = (pass(records, &mut f), pass(records, &mut g));
        fs.push(a);
        gs.push(b);
        ratios.push(a / b);
    }
    (median(fs), median(gs), median(ratios))
}

/// Plugin calls are async (deadlines hold in WASI calls); the bench drives them on one
/// current-thread runtime, as a pipeline worker would.
fn block<F: std::future::Future>(work: F) -> F::Output {
    static RUNTIME: std::sync::OnceLock<tokio::runtime::Runtime> = std::sync::OnceLock::new();
    RUNTIME
        .get_or_init(|| {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime")
        })
        .block_on(work)
}

fn run_chain(chain: &Chain, records: &[DataChangeRecord]) -> usize {
    let inputs: Vec<Input<'_>> = records.iter().map(Input::from).collect();
    let result =
        block(chain.run(&inputs, screamer::plugin::Budget::Unbounded)).expect("an unbounded run");
    assert!(
        result.dead_letters.is_empty(),
        "{:?}",
        result.dead_letters.first()
    );
    result.outputs.len()
}

/// The baseline: the redaction in native code on host records, as a host stage would do it
/// (clone the record, rewrite the changed fields' text, check them into host objects).
fn native_redact(redact: &redact::Redact, records: &[DataChangeRecord]) -> usize {
    let mut out = Vec::with_capacity(records.len());
    for r in records {
        let mut r = r.clone();
        for m in &mut r.mods {
            for v in [&mut m.new_values, &mut m.old_values] {
                if !redact.may_have_columns(v.as_str()) {
                    continue;
                }
                let edited = json::edit_members(v.as_str(), "values", |column, value| {
                    redact.redacts(column).then(|| redact.redact_value(value))
                });
                if let Some(text) = edited.expect("valid JSON") {
                    *v = JsonObject::from_text(text).expect("an object");
                }
            }
        }
        out.push(r);
    }
    std::hint::black_box(&out);
    out.len()
}

fn main() -> anyhow::Result<()> {
    pin_to_one_core();
    let n = env_usize("BENCH_RECORDS", 60_000);
    let repeats = env_usize("BENCH_REPEATS", 3);
    let records: Vec<DataChangeRecord> = (0..n)
        .map(|i| record(i, if i % 2 == 0 { "Customers" } else { "Orders" }))
        .collect();
    let size = serde_json::to_string(&records[0])?.len();
    let cache = std::env::temp_dir().join(format!("screamer-plugin-bench-{}", std::process::id()));
    let runtime = PluginRuntime::new(RuntimeOptions {
        // BENCH_PERF_MAP=1: guest functions by name in `perf report`.
        perf_map: std::env::var_os("BENCH_PERF_MAP").is_some(),
        ..RuntimeOptions::cached(Some(cache.clone()))
    })?;
    let spec = |name: &str, config: serde_json::Value| {
        let mut s = PluginSpec::new(plugin(name));
        s.config = config;
        s
    };
    let pass = spec("identity", json!({}));
    let keep = spec("filter", json!({}));
    let filter = spec("filter", json!({"tables": ["Customers"]}));
    let redact_config = json!({"columns": ["Email", "Phone"]});
    let redact = spec("redact", redact_config.clone());
    use screamer_plugin_sdk::Plugin as _;
    let native =
        redact::Redact::new(serde_json::from_value(redact_config)?).map_err(anyhow::Error::msg)?;
    let enrich = spec("enrich", json!({}));
    let load = |s: &PluginSpec| block(runtime.load(s));
    // First loads compile and fill the cache; the measured loads below come from it.
    for s in [&pass, &keep, &filter, &redact, &enrich] {
        load(s)?;
    }
    println!(
        "screamer plugin runtime benchmark: {n} records of {size} bytes (10-column UPDATE), one core, median of {repeats}"
    );
    println!();
    println!("| case | batch 1 | batch 64 | batch 256 |");
    println!("|---|---|---|---|");
    let cases: Vec<(&str, Vec<&PluginSpec>)> = vec![
        (
            "keep (filter without rules: nothing crosses back)",
            vec![&keep],
        ),
        (
            "pass-through (identity map: the record crosses back)",
            vec![&pass],
        ),
        ("filter by table (half kept)", vec![&filter]),
        ("redact 2 columns (mask)", vec![&redact]),
        (
            "enrich (reads every old and new value, asks each record's origin)",
            vec![&enrich],
        ),
        (
            "chain filter -> redact -> pass-through",
            vec![&filter, &redact, &pass],
        ),
    ];
    // BENCH_CASE=text runs only the cases whose name contains it (for profiling or a quick
    // check), each alternately with the native redact, and the native redact alone when
    // "native Rust redact" contains it.
    let only = std::env::var("BENCH_CASE").ok();
    if let Some(only) = &only {
        for (name, specs) in cases.iter().filter(|(n, _)| n.contains(only.as_str())) {
            let versions: Vec<Arc<PluginVersion>> =
                specs.iter().map(|s| load(s)).collect::<Result<_, _>>()?;
            let chain = Chain::new(versions, 64);
            let (r, native_rate, ratio) = paired_rates(
                &records,
                repeats,
                |c| run_chain(&chain, c),
                |c| native_redact(&native, c),
            );
            println!(
                "| {name} | batch 64: {:.0}k/s | native redact {:.0}k/s | ratio {ratio:.2} |",
                r / 1e3,
                native_rate / 1e3
            );
        }
        if "redact of one 200-column row".contains(only.as_str()) {
            let wide: Vec<DataChangeRecord> = (0..n / 10).map(wide_record).collect();
            let chain = Chain::new(vec![load(&redact)?], 64);
            let (r, native_rate, ratio) = paired_rates(
                &wide,
                repeats,
                |c| run_chain(&chain, c),
                |c| native_redact(&native, c),
            );
            println!(
                "| redact of one 200-column row | batch 64: {:.1}k/s | native {:.1}k/s | ratio {ratio:.2} |",
                r / 1e3,
                native_rate / 1e3
            );
        }
        if "native Rust redact".contains(only.as_str()) {
            let r = rate(&records, repeats, |c| native_redact(&native, c));
            println!("| native Rust redact | {:.0}k/s |", r / 1e3);
        }
        return Ok(());
    }
    let (mut native_rates, mut redact_ratios) = (Vec::new(), Vec::new());
    for (name, specs) in &cases {
        let versions: Vec<Arc<PluginVersion>> =
            specs.iter().map(|s| load(s)).collect::<Result<_, _>>()?;
        let mut row = format!("| {name} |");
        for batch in [1, 64, 256] {
            let chain = Chain::new(versions.clone(), batch);
            let r = if name.starts_with("redact") {
                let (r, n, ratio) = paired_rates(
                    &records,
                    repeats,
                    |c| run_chain(&chain, c),
                    |c| native_redact(&native, c),
                );
                native_rates.push(n);
                redact_ratios.push(ratio);
                r
            } else {
                rate(&records, repeats, |c| run_chain(&chain, c))
            };
            row.push_str(&format!(" {:.0}k/s |", r / 1e3));
        }
        println!("{row}");
    }
    // The same pair over wide rows: how far the plugin's own code is from native code.
    let wide: Vec<DataChangeRecord> = (0..n / 10).map(wide_record).collect();
    let chain = Chain::new(vec![load(&redact)?], 64);
    let (wide_rate, wide_native, wide_ratio) = paired_rates(
        &wide,
        repeats,
        |c| run_chain(&chain, c),
        |c| native_redact(&native, c),
    );
    let native_rate = median(native_rates);
    println!(
        "| native Rust redact (same code, same records; run alternately with redact) | {0:.0}k/s | {0:.0}k/s | {0:.0}k/s |",
        native_rate / 1e3
    );
    println!();
    println!(
        "redact / native (median of each pass's ratio): batch 1 {:.2}x, batch 64 {:.2}x, batch 256 {:.2}x",
        redact_ratios[0], redact_ratios[1], redact_ratios[2]
    );
    println!(
        "redact of one 200-column row ({} bytes), batch 64: {:.0}k/s, native {:.0}k/s: {wide_ratio:.2}x",
        serde_json::to_string(&wide[0])?.len(),
        wide_rate / 1e3,
        wide_native / 1e3
    );

    // Loads from the cache: read + deserialize + validate + trial instance (info, init).
    println!();
    for (name, s) in [("filter", &filter), ("redact", &redact)] {
        let times: Vec<f64> = (0..10)
            .map(|_| load(s).map(|v| v.load_time.as_secs_f64() * 1e3))
            .collect::<Result<_, _>>()?;
        println!(
            "cached load, {name}: median {:.2} ms (includes a trial instantiate + init)",
            median(times)
        );
    }
    let py = spec("drop_columns", json!({"columns": ["Street"]}));
    if PathBuf::from(&py.path).exists() {
        load(&py)?;
        let times: Vec<f64> = (0..5)
            .map(|_| load(&py).map(|v| v.load_time.as_secs_f64() * 1e3))
            .collect::<Result<_, _>>()?;
        println!(
            "cached load, drop_columns (Python, 18 MB): median {:.1} ms",
            median(times)
        );
    }

    // Hot swap: the first batch after a swap pays for a fresh instance; compare it with the
    // same batch on a warm instance. That difference is the pause a swap causes.
    let one = &records[..1];
    let versions = [load(&redact)?, load(&redact)?];
    let chain = Chain::new(vec![versions[0].clone()], 64);
    run_chain(&chain, one);
    let (mut pauses, mut warm) = (Vec::new(), Vec::new());
    for i in 0..50 {
        let t = Instant::now();
        run_chain(&chain, one);
        warm.push(t.elapsed().as_secs_f64() * 1e6);
        chain.swap(0, versions[(i + 1) % 2].clone());
        let t = Instant::now();
        run_chain(&chain, one);
        pauses.push(t.elapsed().as_secs_f64() * 1e6);
    }
    let (pause, warm) = (median(pauses), median(warm));
    println!();
    println!(
        "hot swap: first batch after a swap {pause:.0} us vs {warm:.0} us warm: pause {:.0} us (instantiate + init of the new version)",
        pause - warm
    );
    let _ = std::fs::remove_dir_all(cache);
    Ok(())
}
