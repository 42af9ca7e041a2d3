//! A hostile plugin against the host, through `screamer plugin run` with the chaos plugin
//! (and a Python one): what a plugin does costs at most the records concerned. Each test
//! is one promise of the plugin runtime: host memory bounded whatever a plugin returns,
//! deadlines that hold in WASI, a cache that cannot be swapped, extra fields that cannot
//! forge the record's, guest output that cannot forge host output, network grants by
//! destination, one clear line for bad input, and retries of a trapped one-record call.

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use screamer_tests::plugins::{
    named_records, parse, plugin, plugin_run, record_names, scratch_dir, screamer,
};
use screamer_tests::process::command;
use serde_json::Value;

fn chaos() -> String {
    plugin("chaos").display().to_string()
}

/// The dead letters in `file`, as (the record's Name, the error).
fn dead_letters(file: &Path) -> Vec<(String, String)> {
    let text = std::fs::read_to_string(file).unwrap_or_default();
    let lines: Vec<String> = text.lines().map(str::to_owned).collect();
    parse(&lines)
        .iter()
        .map(|d| {
            let name = d["record"]["mods"][0]["new_values"]["Name"].as_str();
            (
                name.unwrap().to_owned(),
                d["error"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

/// `screamer plugin run ARGS` with `input` on stdin, sampling the child's peak resident
/// memory (VmHWM) until it exits.
fn plugin_run_measured(args: &[&str], input: &str, cache: &Path) -> (i32, Vec<String>, u64) {
    use std::io::Write;
    let mut child = command(["plugin", "run"])
        .args(args)
        .env("SCREAMER_PLUGIN_CACHE", cache)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawning screamer");
    let status_file = format!("/proc/{}/status", child.id());
    let mut stdin = child.stdin.take().unwrap();
    let input = input.to_owned();
    let writer = std::thread::spawn(move || stdin.write_all(input.as_bytes()));
    let sampler = std::thread::spawn(move || {
        let mut peak_kib = 0;
        while let Ok(status) = std::fs::read_to_string(&status_file) {
            let hwm = status
                .lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok());
            match hwm {
                Some(kib) => peak_kib = peak_kib.max(kib),
                None => break, // a zombie has no memory lines: it has exited
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        peak_kib
    });
    let out = child.wait_with_output().unwrap();
    let _ = writer.join();
    let peak_kib = sampler.join().unwrap();
    let stdout = String::from_utf8(out.stdout).unwrap();
    (
        out.status.code().unwrap_or(-1),
        stdout.lines().map(str::to_owned).collect(),
        peak_kib,
    )
}

#[test]
fn an_amplifying_plugin_fails_its_records_and_host_memory_stays_bounded() {
    let dir = scratch_dir("amplify");
    let dead = dir.join("dead.ndjson");
    // 56 records that each return 400,000 emissions (the 8 GB case), among good ones; the
    // guest may use 256 MiB so that the host's own limit is what stops them.
    let mut names = vec!["ok-first"];
    names.extend(std::iter::repeat_n("amplify", 56));
    names.push("ok-last");
    let (code, stdout, peak_kib) = plugin_run_measured(
        &[
            &chaos(),
            "--plugin-memory",
            "256MiB",
            // Building 400,000 records takes the guest a while on a loaded machine: the
            // limit under test is the host's, not the deadline.
            "--plugin-timeout",
            "60s",
            "--dead-letter",
            &dead.display().to_string(),
        ],
        &named_records(&names),
        &screamer_tests::plugins::plugin_cache(),
    );
    assert_eq!(code, 0);
    assert_eq!(record_names(&stdout), ["ok-first", "ok-last"]);
    let failed = dead_letters(&dead);
    assert_eq!(failed.len(), 56, "every amplifying record is a dead letter");
    for (name, error) in &failed {
        assert_eq!(name, "amplify");
        assert!(
            error.contains("bytes of outcomes in one call (limit max_call_bytes)"),
            "{error}"
        );
    }
    // The process holds the guest's linear memory (up to its 256 MiB cap) plus what the
    // host lifts out of one call (16 MiB) and its own few MiB. Before the limits: past 8 GB.
    println!(
        "peak RSS under the amplification plugin: {} MiB",
        peak_kib / 1024
    );
    assert!(peak_kib > 0, "the child's memory was sampled");
    assert!(
        peak_kib < (256 + 128) * 1024,
        "peak RSS {peak_kib} KiB: past the guest's cap plus the host's bound"
    );

    // Below the byte budget, the emission limit holds: over the chain, per input record.
    let dead = dir.join("dead2.ndjson");
    let run = plugin_run(
        &[
            &chaos(),
            "--plugin-max-emissions",
            "10",
            "--dead-letter",
            &dead.display().to_string(),
        ],
        &named_records(&["fan:10", "fan:11", "ok"]),
    )
    .unwrap();
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert_eq!(
        record_names(&run.stdout),
        [vec!["fan:10"; 10], vec!["ok"]].concat()
    );
    assert_eq!(
        dead_letters(&dead),
        [(
            "fan:11".to_owned(),
            "emitted 11 records for one input record; the limit is 10 (max_emissions)".to_owned()
        )]
    );
}

/// How long the chaos plugin sleeps.
const SLEEP: Duration = Duration::from_secs(30);

#[test]
fn a_plugin_asleep_in_wasi_is_stopped_at_its_deadline_in_calls_and_in_init() {
    let dir = scratch_dir("sleep");
    let dead = dir.join("dead.ndjson");
    let started = Instant::now();
    let run = plugin_run(
        &[
            &chaos(),
            "--plugin-timeout",
            "300ms",
            "--dead-letter",
            &dead.display().to_string(),
        ],
        &named_records(&["ok1", "sleep", "ok2", "sleep", "ok3"]),
    )
    .unwrap();
    let took = started.elapsed();
    // Each sleep would take 30 s; with a batch and its retries that is two minutes.
    println!("5 records, 2 asleep for 30 s each, 300ms deadline: {took:?}");
    // Not a timing target: a guest that outslept its deadline would have taken 30 s.
    assert!(
        took < SLEEP,
        "the sleeping calls were not stopped: {took:?}"
    );
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert_eq!(record_names(&run.stdout), ["ok1", "ok2", "ok3"]);
    assert_eq!(
        dead_letters(&dead),
        vec![
            (
                "sleep".to_owned(),
                "deadline exceeded: the call ran longer than 300ms".to_owned()
            );
            2
        ]
    );

    let started = Instant::now();
    let run = plugin_run(
        &[
            &chaos(),
            "--plugin-timeout",
            "300ms",
            "--plugin-config",
            r#"chaos={"sleep_init": true}"#,
        ],
        &named_records(&["ok"]),
    )
    .unwrap();
    let took = started.elapsed();
    println!("init asleep for 30 s, 300ms deadline: refused after {took:?}");
    assert!(took < SLEEP, "the sleeping init was not stopped: {took:?}");
    assert_eq!(run.code, Some(2), "{}", run.stderr);
    let last = run.stderr.lines().last().unwrap();
    assert!(
        last.starts_with("error: plugin chaos@0.1.0: start-up failed: deadline exceeded"),
        "{last}"
    );
}

#[test]
fn a_trapped_one_record_call_is_retried_once_on_a_fresh_instance() {
    // Every instance panics on its third record: a fresh instance takes the record.
    for batch in ["1", "64"] {
        let run = plugin_run(
            &[
                &chaos(),
                "--plugin-batch-size",
                batch,
                "--plugin-config",
                r#"chaos={"panic_after": 2}"#,
            ],
            &named_records(&["a", "b", "c", "d", "e"]),
        )
        .unwrap();
        assert_eq!(run.code, Some(0), "{}", run.stderr);
        assert_eq!(
            record_names(&run.stdout),
            ["a", "b", "c", "d", "e"],
            "batch {batch}: {}",
            run.stderr
        );
        assert!(!run.stderr.contains("dead letters"), "{}", run.stderr);
    }
}

#[test]
fn a_cached_artifact_copied_over_another_plugins_is_not_loaded() {
    let cache = scratch_dir("cache").join("plugins");
    let check = |name: &str| {
        let run = command(["plugin", "check", "--json"])
            .arg(plugin(name))
            .env("SCREAMER_PLUGIN_CACHE", &cache)
            .output()
            .unwrap();
        assert!(
            run.status.success(),
            "{}",
            String::from_utf8_lossy(&run.stderr)
        );
        let report: Value = serde_json::from_slice(&run.stdout).unwrap();
        (report, String::from_utf8(run.stderr).unwrap())
    };
    let (identity, _) = check("identity");
    let (filter, _) = check("filter");
    let artifact = |report: &Value| {
        let sha = report["sha256"].as_str().unwrap().to_owned();
        std::fs::read_dir(&cache)
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| p.file_name().unwrap().to_string_lossy().starts_with(&sha))
            .expect("an artifact named after the wasm's hash")
    };
    std::fs::copy(artifact(&filter), artifact(&identity)).unwrap();
    let (again, stderr) = check("identity");
    assert_eq!(again["name"], "identity", "{stderr}");
    assert!(
        stderr
            .contains("ignoring cached plugin artifact: not written by this host for this plugin"),
        "{stderr}"
    );
    // The recompiled artifact replaced the forged one.
    let (_, stderr) = check("identity");
    assert!(!stderr.contains("ignoring"), "{stderr}");

    // A cache others can write is refused, with one line.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&cache, std::fs::Permissions::from_mode(0o777)).unwrap();
    let run = command(["plugin", "check"])
        .arg(plugin("identity"))
        .env("SCREAMER_PLUGIN_CACHE", &cache)
        .output()
        .unwrap();
    assert_eq!(run.status.code(), Some(2));
    let stderr = String::from_utf8(run.stderr).unwrap();
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("writable by others (mode 777)"), "{stderr}");
}

#[test]
fn extra_fields_cannot_shadow_the_record_and_output_parses_back() {
    let dir = scratch_dir("shadow");
    let dead = dir.join("dead.ndjson");
    let run = plugin_run(
        &[&chaos(), "--dead-letter", &dead.display().to_string()],
        &named_records(&[
            "ok1",
            "shadow",
            "deep",
            "twice",
            "nameless",
            "patch-row",
            "patch-set",
            "patch-deep",
            "ok2",
        ]),
    )
    .unwrap();
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert_eq!(record_names(&run.stdout), ["ok1", "ok2"]);
    let failed: std::collections::BTreeMap<String, String> =
        dead_letters(&dead).into_iter().collect();
    let why = |name: &str| failed.get(name).cloned().unwrap_or_default();
    assert_eq!(failed.len(), 7, "{failed:?}");
    for (name, message) in [
        (
            "shadow",
            "returned an invalid record: extra sets \"table_name\", a field of the record itself",
        ),
        (
            "deep",
            "returned an invalid record: mods[0].new_values: nested 124 levels deep",
        ),
        (
            "twice",
            r#"returned an invalid record: mods[0].new_values: names "Name" twice"#,
        ),
        (
            "nameless",
            "emitted a Users record to a side output with an empty name",
        ),
        (
            "patch-row",
            "returned an invalid patch: patch fields[0] names row 7; the record has 1 row change",
        ),
        (
            "patch-set",
            "returned an invalid patch: patch fields[0] (mods[0].new_values).set: not a JSON object",
        ),
        (
            "patch-deep",
            "returned an invalid patch: patch fields[0] (mods[0].new_values).set: nested 124 levels deep",
        ),
    ] {
        assert!(why(name).starts_with(message), "{name}: {}", why(name));
    }
    // What the host wrote goes through `plugin run` again, unchanged.
    let again = plugin_run(
        &[&plugin("identity").display().to_string()],
        &run.stdout.join("\n"),
    )
    .unwrap();
    assert_eq!(again.code, Some(0), "{}", again.stderr);
    assert_eq!(parse(&again.stdout), parse(&run.stdout));
}

/// A patch changes what it names and nothing else, the later of two settings of a member
/// wins, and a patch of a record an earlier plugin returned whole lands on that record.
#[test]
fn a_patch_changes_only_what_it_names_even_after_a_plugin_that_returned_records_whole() {
    let input = named_records(&["patch", "patch-twice", "ok"]);
    let run = plugin_run(&[&chaos()], &input).unwrap();
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let (inputs, outputs) = (parse(&lines(&input)), parse(&run.stdout));
    let mut expected = inputs[0].clone();
    expected["mods"][0]["new_values"]["Patched"] = serde_json::json!({"by": "chaos"});
    expected["patched"] = true.into();
    assert_eq!(outputs[0], expected);
    let mut expected = inputs[1].clone();
    expected["mods"][0]["new_values"]["Patched"] = 99_999.into();
    assert_eq!(outputs[1], expected);
    assert_eq!(
        run.stdout[1].matches("\"Patched\"").count(),
        1,
        "{}",
        run.stdout[1]
    );
    assert_eq!(outputs[2]["processed_by"], "chaos-tag:v000");

    // chaos emits copies (whole records), redact then patches each of them.
    let run = plugin_run(
        &[
            &chaos(),
            &plugin("redact").display().to_string(),
            "--plugin-config",
            r#"redact={"columns":["Name"]}"#,
        ],
        &named_records(&["fan:2", "ok"]),
    )
    .unwrap();
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert_eq!(record_names(&run.stdout), ["[REDACTED]"; 3]);
    assert_eq!(parse(&run.stdout)[2]["processed_by"], "chaos-tag:v000");
}

fn lines(text: &str) -> Vec<String> {
    text.lines().map(String::from).collect()
}

/// Every record a plugin makes of an input record has that input's origin: on the output,
/// and for the next plugin of the chain, which asks for it by its index in a batch that
/// emissions, drops and failures have reshuffled.
#[test]
fn every_record_has_its_input_s_origin_through_a_chain() {
    let input = named_records(&["fan:3", "fail", "fan:0", "ok", "fan:2"]);
    let enrich = plugin("enrich").display().to_string();
    let run = plugin_run(&[&chaos(), &enrich], &input).unwrap();
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let inputs = parse(&input.lines().map(String::from).collect::<Vec<_>>());
    let outputs = parse(&run.stdout);
    let sequences: Vec<&str> = outputs
        .iter()
        .map(|o| o["record_sequence"].as_str().unwrap())
        .collect();
    assert_eq!(
        sequences,
        [
            "00000000", "00000000", "00000000", "00000003", "00000004", "00000004"
        ]
    );
    for now in &outputs {
        let was = inputs
            .iter()
            .find(|i| i["record_sequence"] == now["record_sequence"])
            .unwrap();
        for field in [
            "partition_token",
            "commit_timestamp",
            "server_transaction_id",
            "transaction_tag",
            "value_capture_type",
            "number_of_records_in_transaction",
        ] {
            assert_eq!(now[field], was[field], "{field}");
        }
        // enrich, after chaos, was handed this record's own origin.
        let committed = time::OffsetDateTime::parse(
            was["commit_timestamp"].as_str().unwrap(),
            &time::format_description::well_known::Rfc3339,
        )
        .unwrap();
        assert_eq!(
            i128::from(now["commit_unix_millis"].as_i64().unwrap()),
            committed.unix_timestamp_nanos() / 1_000_000,
            "{now}"
        );
    }
}

#[test]
fn guest_output_is_logged_escaped_and_quoted_in_the_dead_letter_never_written_raw() {
    // Dead letters go to stderr by default: the guest's stderr must not corrupt them.
    let run = plugin_run(&[&chaos()], &named_records(&["shout", "ok", "shout"])).unwrap();
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert_eq!(
        record_names(&run.stdout),
        ["ok"],
        "no forged line on stdout"
    );
    let dead: Vec<Value> = run
        .stderr
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert_eq!(dead.len(), 2, "{}", run.stderr);
    for d in &dead {
        // The panic and its place; then, escaped, what the guest said before it.
        let error = d["error"].as_str().unwrap();
        assert!(
            error.starts_with("Rust panic: chaos: shouted (tests/plugins/chaos/src/lib.rs:"),
            "{error}"
        );
        assert!(
            error.ends_with(
                "(the plugin said: 2026-12-02T00:00:00Z ERROR screamer: forged host line | \
                 multi\\nline log)"
            ),
            "{error}"
        );
    }
    for line in run.stderr.lines() {
        assert!(!line.starts_with("2026-12-02T00:00:00Z ERROR"), "{line}");
        assert_ne!(
            line.trim(),
            "partial",
            "an unfinished guest line reached stderr raw"
        );
        assert_ne!(line.trim(), "line log", "a guest newline split a host line");
    }
    // A failed call's lines are in its dead letter, not in the log.
    assert!(
        !run.stderr.contains(" screamer::plugin: "),
        "{}",
        run.stderr
    );
}

#[test]
fn python_exceptions_reach_the_dead_letter_with_their_message() {
    let dir = scratch_dir("py-raise");
    let dead = dir.join("dead.ndjson");
    let run = plugin_run(
        &[
            &plugin("py_raise").display().to_string(),
            "--plugin-timeout",
            "10s",
            "--dead-letter",
            &dead.display().to_string(),
        ],
        &named_records(&["ok", "raise", "ok2"]),
    )
    .unwrap();
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert_eq!(record_names(&run.stdout), ["ok", "ok2"]);
    let failed = dead_letters(&dead);
    assert_eq!(failed.len(), 1, "{}", run.stderr);
    // The exception and where it was raised, without componentize-py's wrapping.
    assert_eq!(
        failed[0].1,
        "Python exception: ValueError: py-raise: refusing record 00000001 \
         (File \"/0/app.py\", line 28, in process)"
    );
    assert_one_count_line(&run.stderr);
}

/// With the dead letters in a file, stderr says how many went there, in one line per
/// batch, and nothing of what the failing calls printed.
fn assert_one_count_line(stderr: &str) {
    let warnings: Vec<&str> = stderr.lines().filter(|l| l.contains(" WARN ")).collect();
    assert_eq!(warnings.len(), 1, "{stderr}");
    assert!(
        warnings[0].contains("records sent to the dead letters records=1"),
        "{stderr}"
    );
}

#[test]
fn javascript_exceptions_reach_the_dead_letter_with_their_message() {
    let dir = scratch_dir("js-throw");
    let dead = dir.join("dead.ndjson");
    let input = named_records(&["ok"])
        + &screamer_tests::plugins::record_line(
            "Throw",
            "INSERT",
            1,
            serde_json::json!({"Name": "x"}),
            serde_json::json!({}),
        )
        + "\n"
        + &named_records(&["ok2"]);
    let run = plugin_run(
        &[
            &plugin("js_throw").display().to_string(),
            "--dead-letter",
            &dead.display().to_string(),
        ],
        &input,
    )
    .unwrap();
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert_eq!(record_names(&run.stdout), ["ok", "ok2"]);
    let failed = dead_letters(&dead);
    assert_eq!(failed.len(), 1, "{}", run.stderr);
    // The exception's message and stack, without jco's runtime's wrapping.
    assert_eq!(
        failed[0].1,
        "JavaScript exception: boom from javascript on Throw 00000001 \
         (at <anonymous> (/app.js:15:72); at map (native); at process (/app.js:12:18))"
    );
    assert_one_count_line(&run.stderr);
}

#[test]
fn network_grants_are_by_destination() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let dir = scratch_dir("network");
    let connected = |grant: &str| {
        let config = dir.join(format!("pipeline-{}.toml", grant.len()));
        std::fs::write(
            &config,
            format!(
                "[[plugins]]\npath = {:?}\nconfig = {{ connect = \"127.0.0.1:{port}\" }}\n\
                 network = [{grant}]\n",
                plugin("chaos").display().to_string()
            ),
        )
        .unwrap();
        let run = screamer(
            &["plugin", "run", "--config", &config.display().to_string()],
            &named_records(&["connect"]),
        )
        .unwrap();
        assert_eq!(run.code, Some(0), "{}", run.stderr);
        parse(&run.stdout)[0]["connected"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    assert_eq!(connected(&format!("\"127.0.0.1:{port}\"")), "ok");
    assert_eq!(connected("\"127.0.0.0/8:*\""), "ok");
    // A name is resolved when the plugin connects, not when its instance starts.
    assert_eq!(connected(&format!("\"localhost:{port}\"")), "ok");
    assert_ne!(
        connected(&format!("\"nowhere.invalid:{port}\"")),
        "ok",
        "a name that does not resolve allows nothing"
    );
    assert_ne!(connected(""), "ok", "no grant: no connection");
    assert_ne!(
        connected(&format!("\"127.0.0.1:{}\"", port.wrapping_add(1).max(1))),
        "ok",
        "a grant for another port"
    );
    drop(listener);
    // A grant that does not parse is one line at start-up.
    let config = dir.join("bad.toml");
    std::fs::write(
        &config,
        format!(
            "[[plugins]]\npath = {:?}\nnetwork = [\"localhost\"]\n",
            plugin("chaos").display().to_string()
        ),
    )
    .unwrap();
    let run = screamer(
        &["plugin", "run", "--config", &config.display().to_string()],
        "",
    )
    .unwrap();
    assert_eq!(run.code, Some(2));
    assert!(
        run.stderr
            .lines()
            .last()
            .unwrap()
            .contains("network: network grant \"localhost\": no port; expected HOST:PORT"),
        "{}",
        run.stderr
    );
}

#[test]
fn fixable_input_exits_2_with_one_line_naming_it() {
    let identity = plugin("identity").display().to_string();
    let run = screamer_raw(&["plugin", "run", &identity], b"\xff\xfe\n");
    assert_eq!(run.0, Some(2));
    assert_eq!(
        run.1.lines().last().unwrap(),
        "error: stdin line 1: not UTF-8 text (invalid byte at column 1)"
    );
    let file = scratch_dir("cache-file").join("file");
    std::fs::write(&file, b"x").unwrap();
    let run = screamer(
        &[
            "plugin",
            "run",
            &identity,
            "--plugin-cache",
            &file.display().to_string(),
        ],
        "",
    )
    .unwrap();
    assert_eq!(run.code, Some(2));
    assert_eq!(
        run.stderr.trim(),
        format!("error: plugin cache {}: not a directory", file.display())
    );
    for flag in ["--plugin-batch-size", "--plugin-max-emissions"] {
        let run = screamer(&["plugin", "run", &identity, flag, "-3"], "").unwrap();
        assert_eq!(run.code, Some(2));
        assert_eq!(run.stderr.lines().count(), 1, "{}", run.stderr);
        assert!(
            run.stderr
                .starts_with(&format!("error: invalid value '-3' for '{flag} <N>'")),
            "{}",
            run.stderr
        );
    }
}

/// `screamer ARGS` with raw bytes on stdin: (exit code, stderr).
fn screamer_raw(args: &[&str], stdin: &[u8]) -> (Option<i32>, String) {
    use std::io::Write;
    let mut child = command(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    let out = child.wait_with_output().unwrap();
    (out.status.code(), String::from_utf8(out.stderr).unwrap())
}

/// 64 records that each become 10,000 records of 1 KiB, within every default limit (640 MB
/// of output): the host runs the batch in parts when what it holds passes its budget, so
/// every record arrives, in order, and peak memory stays at the guest's cap plus the host's
/// bound (before the budget: about 1 GB).
#[test]
fn a_batch_that_amplifies_within_the_limits_arrives_whole_in_bounded_memory() {
    let dir = scratch_dir("amplify-within");
    let out = dir.join("out.ndjson");
    let input: String = (0..64)
        .map(|id| {
            let values = serde_json::json!({"Name": "fan:10000", "Pad": "x".repeat(1000)});
            screamer_tests::plugins::record_line(
                "Users",
                "INSERT",
                id,
                values,
                serde_json::json!({}),
            ) + "\n"
        })
        .collect();
    let (code, _, peak_kib) = plugin_run_measured(
        &[&chaos(), "--output", &format!("file:{}", out.display())],
        &input,
        &screamer_tests::plugins::plugin_cache(),
    );
    assert_eq!(code, 0);
    let text = std::fs::read_to_string(&out).unwrap();
    assert_eq!(text.lines().count(), 640_000, "every emission arrives");
    let id = |line: &str| -> Value {
        serde_json::from_str::<Value>(line).unwrap()["mods"][0]["keys"]["Id"].clone()
    };
    assert_eq!(id(text.lines().next().unwrap()), "0");
    assert_eq!(id(text.lines().nth(9_999).unwrap()), "0");
    assert_eq!(id(text.lines().nth(10_000).unwrap()), "1", "in input order");
    assert_eq!(id(text.lines().last().unwrap()), "63");
    println!("peak RSS, 640 MB of emissions: {} MiB", peak_kib / 1024);
    // The guest's cap (128 MiB), one call's outcomes and the run's budget (16 + 4 x 16 MiB),
    // and the host's own tens of MiB.
    assert!(
        peak_kib < (128 + 80 + 128) * 1024,
        "peak RSS {peak_kib} KiB: past the guest's cap plus the host's bound"
    );
    std::fs::remove_dir_all(dir).unwrap();
}
