//! The plugin stage through `screamer plugin run` (no Spanner): every example plugin, the
//! Python one included, chain order, refusals, and failure isolation.

use screamer_tests::plugins::{
    chaos_version, named_records, parse, plugin, plugin_cache, plugin_run, record_line as record,
    record_names, replace_file, scratch_dir, screamer,
};
use screamer_tests::process::command;
use serde_json::{Value, json};

fn lines(records: &[String]) -> String {
    records.iter().map(|r| format!("{r}\n")).collect()
}

fn ids(out: &[Value]) -> Vec<String> {
    out.iter()
        .map(|v| v["mods"][0]["keys"]["Id"].as_str().unwrap().to_owned())
        .collect()
}

fn path(name: &str) -> String {
    plugin(name).display().to_string()
}

/// Users inserts 1..=3, an update of 1, a delete of 2, and an Orders insert 9.
fn sample() -> Vec<String> {
    vec![
        record(
            "Users",
            "INSERT",
            1,
            json!({"Email": "a@x.io", "Name": "Ann", "Bio": "long"}),
            json!({}),
        ),
        record(
            "Users",
            "INSERT",
            2,
            json!({"Email": "b@x.io", "Name": "Bob", "Bio": "x"}),
            json!({}),
        ),
        record(
            "Users",
            "INSERT",
            3,
            json!({"Email": "c@x.io", "Name": "Cy"}),
            json!({}),
        ),
        record(
            "Users",
            "UPDATE",
            1,
            json!({"Name": "Anne", "Email": "a@x.io"}),
            json!({"Name": "Ann", "Email": "a@x.io"}),
        ),
        record(
            "Users",
            "DELETE",
            2,
            json!({}),
            json!({"Email": "b@x.io", "Name": "Bob", "Bio": "x"}),
        ),
        record("Orders", "INSERT", 9, json!({"Total": "3"}), json!({})),
    ]
}

#[test]
fn filter_keeps_chosen_tables_and_mod_types() {
    let run = plugin_run(
        &[
            &path("filter"),
            "--plugin-config",
            r#"filter={"tables":["Users"],"mod_types":["INSERT","DELETE"]}"#,
        ],
        &lines(&sample()),
    )
    .unwrap();
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let out = parse(&run.stdout);
    assert_eq!(ids(&out), ["1", "2", "3", "2"]);
    assert_eq!(out[3]["mod_type"], "DELETE");
    // Kept records come out exactly as they went in.
    assert_eq!(run.stdout[0], sample()[0]);
}

#[test]
fn redact_hashes_new_and_old_values_and_leaves_keys() {
    let run = plugin_run(
        &[
            &path("redact"),
            "--plugin-config",
            r#"redact={"columns":["Email"],"mode":"hash","salt":"s"}"#,
        ],
        &lines(&sample()),
    )
    .unwrap();
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let out = parse(&run.stdout);
    assert_eq!(out.len(), 6);
    let hash_a = out[0]["mods"][0]["new_values"]["Email"].as_str().unwrap();
    assert_eq!(hash_a.len(), 64, "a SHA-256 hex digest");
    // Equal inputs hash equally: the update of user 1 carries the same hash, old and new.
    assert_eq!(out[3]["mods"][0]["new_values"]["Email"], hash_a);
    assert_eq!(out[3]["mods"][0]["old_values"]["Email"], hash_a);
    assert_ne!(out[1]["mods"][0]["new_values"]["Email"], hash_a);
    assert_eq!(out[4]["mods"][0]["old_values"]["Name"], "Bob");
    assert_eq!(out[0]["mods"][0]["keys"], json!({"Id": "1"}));
    // Column types are the host's: re-attached, not lost.
    assert_eq!(out[0]["column_types"][0]["name"], "Id");
    // Records without the column pass untouched.
    assert_eq!(run.stdout[5], sample()[5]);
}

#[test]
fn fanout_copies_to_a_side_output_file() {
    let dir = scratch_dir("fanout");
    let audit = dir.join("audit.ndjson");
    let run = plugin_run(
        &[
            &path("fanout"),
            "--plugin-config",
            r#"fanout={"tables":["Users"],"mod_types":["UPDATE","DELETE"]}"#,
            "--side-output",
            &format!("audit={}", audit.display()),
        ],
        &lines(&sample()),
    )
    .unwrap();
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert_eq!(ids(&parse(&run.stdout)), ["1", "2", "3", "1", "2", "9"]);
    let copies: Vec<String> = std::fs::read_to_string(&audit)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    let copies = parse(&copies);
    assert_eq!(ids(&copies), ["1", "2"]);
    assert_eq!(copies[0]["mod_type"], "UPDATE");
    assert_eq!(copies[1]["mod_type"], "DELETE");
    assert!(copies.iter().all(|c| c.get("output").is_none()));
    std::fs::remove_dir_all(dir).unwrap();
}

/// Without a destination, copies go to stdout tagged with their output's name, with one
/// warning however many there are.
#[test]
fn a_side_output_without_a_destination_goes_to_stdout_tagged() {
    let run = plugin_run(
        &[
            &path("fanout"),
            "--plugin-config",
            r#"fanout={"mod_types":["UPDATE","DELETE"]}"#,
        ],
        &lines(&sample()),
    )
    .unwrap();
    let out = parse(&run.stdout);
    let tagged: Vec<&Value> = out.iter().filter(|v| v["output"] == "audit").collect();
    assert_eq!(out.len(), 6 + tagged.len());
    let kinds: Vec<&str> = tagged
        .iter()
        .map(|v| v["mod_type"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["UPDATE", "DELETE"]);
    assert_eq!(
        run.stderr
            .matches("side output without a destination: its records go to the main output")
            .count(),
        1,
        "{}",
        run.stderr
    );
}

/// A plugin that declares its side output in the pipeline file gets a destination or
/// screamer does not start.
#[test]
fn a_declared_side_output_needs_a_destination() {
    let dir = scratch_dir("fanout-declared");
    let pipeline = dir.join("pipeline.toml");
    std::fs::write(
        &pipeline,
        format!(
            "[[plugins]]\npath = {:?}\nconfig = {{ mod_types = [\"DELETE\"] }}\nside_outputs = [\"audit\"]\n",
            path("fanout")
        ),
    )
    .unwrap();
    let config = pipeline.display().to_string();
    let refused = plugin_run(&["--config", &config], &lines(&sample())).unwrap();
    assert_eq!(refused.code, Some(2), "{}", refused.stderr);
    assert_eq!(
        refused.stderr.trim(),
        format!(
            "error: --config {config}: plugins[0]: side output \"audit\" has no destination: \
             define it under [side_outputs] or with --side-output audit=URI"
        )
    );
    let deletes = dir.join("deletes.ndjson");
    let defined = plugin_run(
        &[
            "--config",
            &config,
            "--side-output",
            &format!("audit={}", deletes.display()),
        ],
        &lines(&sample()),
    )
    .unwrap();
    assert_eq!(defined.code, Some(0), "{}", defined.stderr);
    assert!(
        parse(&defined.stdout)
            .iter()
            .all(|v| v.get("output").is_none())
    );
    assert_eq!(
        std::fs::read_to_string(&deletes).unwrap().lines().count(),
        1
    );
    assert!(!defined.stderr.contains("side output without a destination"));
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn enrich_adds_derived_fields_beside_the_record() {
    let run = plugin_run(
        &[
            &path("enrich"),
            "--plugin-config",
            r#"enrich={"source":"users-db"}"#,
        ],
        &lines(&sample()),
    )
    .unwrap();
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let out = parse(&run.stdout);
    assert_eq!(out[0]["changed_columns"], json!(["Bio", "Email", "Name"]));
    assert_eq!(out[3]["changed_columns"], json!(["Name"]));
    assert_eq!(out[4]["changed_columns"], json!(["Bio", "Email", "Name"]));
    assert_eq!(out[0]["source"], "users-db");
    // 2026-11-27T20:00:01.125Z
    assert_eq!(out[0]["commit_unix_millis"], json!(1_795_809_601_125_i64));
    // Extra fields survive the next run: the input's unknown fields are kept.
    let again = plugin_run(&[&path("filter")], &run.stdout.join("\n")).unwrap();
    assert_eq!(again.stdout, run.stdout);
}

#[test]
fn python_plugin_drops_columns() {
    let run = plugin_run(
        &[
            &path("drop_columns"),
            "--plugin-config",
            r#"drop_columns={"columns":["Bio"]}"#,
        ],
        &lines(&sample()),
    )
    .unwrap();
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let out = parse(&run.stdout);
    assert_eq!(out.len(), 6);
    assert_eq!(
        out[0]["mods"][0]["new_values"],
        json!({"Email": "a@x.io", "Name": "Ann"})
    );
    assert_eq!(
        out[4]["mods"][0]["old_values"],
        json!({"Email": "b@x.io", "Name": "Bob"})
    );
    assert_eq!(
        run.stdout[2],
        sample()[2],
        "records without the column are kept as they are"
    );
    assert!(run.stderr.contains("drop-columns@0.1.0"), "{}", run.stderr);
}

#[test]
fn javascript_plugin_tags_records_fails_its_table_and_refuses_bad_config() {
    let config = r#"tag_table={"prefix":"cdc:","fail_table":"Orders"}"#;
    let run = plugin_run(
        &[&path("tag_table"), "--plugin-config", config],
        &lines(&sample()),
    )
    .unwrap();
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let out = parse(&run.stdout);
    let inputs = parse(&sample());
    let users: Vec<&Value> = inputs
        .iter()
        .filter(|r| r["table_name"] == "Users")
        .collect();
    assert_eq!(out.len(), users.len(), "{}", run.stderr);
    for (got, input) in out.iter().zip(&users) {
        let mut expected = (*input).clone();
        expected["table_tag"] = json!("cdc:Users");
        assert_eq!(got, &expected);
    }
    assert!(
        run.stderr
            .contains("records of Orders are refused by tag-table"),
        "{}",
        run.stderr
    );
    // A configuration the plugin refuses: its own message, one line, exit 2.
    let run = plugin_run(
        &[
            &path("tag_table"),
            "--plugin-config",
            r#"tag_table={"prefix":1}"#,
        ],
        &lines(&sample()),
    )
    .unwrap();
    assert_eq!(run.code, Some(2));
    assert!(
        run.stderr
            .contains("tag-table@0.1.0: configuration refused: `prefix` must be a string"),
        "{}",
        run.stderr
    );
}

#[test]
fn the_chain_runs_in_flag_order() {
    let fanout = (path("fanout"), r#"fanout={"only_copy":false}"#);
    let filter = (path("filter"), r#"filter={"mod_types":["INSERT"]}"#);
    // fanout first: every record is copied before the filter drops non-inserts.
    let run = plugin_run(
        &[
            &fanout.0,
            &filter.0,
            "--plugin-config",
            fanout.1,
            "--plugin-config",
            filter.1,
        ],
        &lines(&sample()),
    )
    .unwrap();
    let out = parse(&run.stdout);
    assert_eq!(out.iter().filter(|v| v["output"] == "audit").count(), 6);
    assert_eq!(out.iter().filter(|v| v.get("output").is_none()).count(), 4);
    // filter first: only inserts reach the fan-out.
    let run = plugin_run(
        &[
            &filter.0,
            &fanout.0,
            "--plugin-config",
            fanout.1,
            "--plugin-config",
            filter.1,
        ],
        &lines(&sample()),
    )
    .unwrap();
    let out = parse(&run.stdout);
    assert_eq!(out.iter().filter(|v| v["output"] == "audit").count(), 4);
    assert_eq!(out.iter().filter(|v| v.get("output").is_none()).count(), 4);
    // redact then enrich: enrich sees the hashed value, so it reports Email as changed
    // on the update only if the hashes differ (they do not).
    let run = plugin_run(
        &[
            &path("redact"),
            &path("enrich"),
            "--plugin-config",
            r#"redact={"columns":["Email"],"mode":"hash"}"#,
        ],
        &lines(&sample()),
    )
    .unwrap();
    let out = parse(&run.stdout);
    assert_eq!(out[3]["changed_columns"], json!(["Name"]));
    assert_eq!(
        out[3]["mods"][0]["new_values"]["Email"]
            .as_str()
            .unwrap()
            .len(),
        64
    );
}

#[test]
fn bad_plugins_and_configurations_are_refused_with_one_line() {
    let dir = scratch_dir("refusals");
    let not_wasm = dir.join("notes.wasm");
    std::fs::write(&not_wasm, "just text").unwrap();
    let core = dir.join("core.wasm");
    std::fs::write(&core, b"\0asm\x01\0\0\0").unwrap();
    let not_wasm = not_wasm.display().to_string();
    let core = core.display().to_string();
    let cases: Vec<(Vec<String>, String)> = vec![
        (
            vec![path("wrong_world")],
            format!(
                "error: plugin {}: not a screamer:plugin@0.3.0 plugin: it exports wasi:cli/run@0.2.",
                path("wrong_world")
            ),
        ),
        (vec![not_wasm.clone()], format!("error: plugin {not_wasm}: not a WebAssembly file")),
        (vec![core.clone()], format!("error: plugin {core}: a core WebAssembly module, not a component")),
        (
            vec![path("redact")],
            "error: plugin redact@0.1.0: configuration refused: invalid configuration: missing field `columns`".into(),
        ),
        (
            vec![path("filter"), "--plugin-config".into(), r#"filter={"mod_types":["UPSERT"]}"#.into()],
            r#"error: plugin filter@0.1.0: configuration refused: mod_types: "UPSERT" is not INSERT, UPDATE or DELETE"#.into(),
        ),
        (
            vec![path("chaos"), "--plugin-config".into(), r#"chaos={"fail_init":true}"#.into()],
            "error: plugin chaos@0.1.0: configuration refused: refusing to start".into(),
        ),
        (
            vec![path("filter"), "--plugin-config".into(), r#"redact={}"#.into()],
            "error: --plugin-config redact: no plugin named redact in the chain (filter)".into(),
        ),
        (
            vec![path("filter"), "--plugin-config".into(), "filter=[1]".into()],
            "error: --plugin-config filter: expected a JSON object".into(),
        ),
        (
            vec![dir.join("missing.wasm").display().to_string()],
            format!("error: plugin {}: cannot read", dir.join("missing.wasm").display()),
        ),
    ];
    for (args, expected) in cases {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let run = plugin_run(&args, "").unwrap();
        assert_eq!(run.code, Some(2), "{args:?}: {}", run.stderr);
        let errors: Vec<&str> = run
            .stderr
            .lines()
            .filter(|l| l.starts_with("error:"))
            .collect();
        assert_eq!(errors.len(), 1, "{args:?}: {}", run.stderr);
        assert!(
            errors[0].starts_with(&expected),
            "{args:?}:\n{}\nexpected: {expected}",
            errors[0]
        );
    }
    // Malformed input: one line naming the line.
    let run = plugin_run(&[&path("filter")], &format!("{}\nnot json\n", sample()[0])).unwrap();
    assert_eq!(run.code, Some(2));
    assert!(
        run.stderr
            .contains("error: stdin line 2: not a JSON object"),
        "{}",
        run.stderr
    );
    assert_eq!(
        run.stdout.len(),
        1,
        "the line before the bad one was processed"
    );
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn plugin_check_reports_the_component() {
    let run = screamer(&["plugin", "check", &path("filter"), "--json"], "").unwrap();
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let report: Value = serde_json::from_str(&run.stdout[0]).unwrap();
    assert_eq!(report["name"], "filter");
    assert_eq!(report["world"], "screamer:plugin@0.3.0");
    assert_eq!(
        report["exports"],
        json!(["screamer:plugin/processor@0.3.0"])
    );
    let imports = |report: &Value| -> Vec<String> {
        let imports = report["imports"].as_array().unwrap().iter();
        imports.map(|i| i.as_str().unwrap().to_owned()).collect()
    };
    assert!(
        imports(&report)
            .iter()
            .all(|i| { i.starts_with("wasi:") || i.starts_with("screamer:plugin/") })
    );
    // Origins are imported only by a plugin that asks for them (enrich reads the commit
    // timestamp), so the others do not pay for them.
    let batch = "screamer:plugin/batch@0.3.0".to_owned();
    assert!(!imports(&report).contains(&batch), "{report}");
    let run = screamer(&["plugin", "check", &path("enrich"), "--json"], "").unwrap();
    let report: Value = serde_json::from_str(&run.stdout[0]).unwrap();
    assert!(imports(&report).contains(&batch), "{report}");
    let run = screamer(&["plugin", "check", &path("wrong_world")], "").unwrap();
    assert_eq!(run.code, Some(2));
    assert!(
        run.stderr.contains("it exports wasi:cli/run@0.2."),
        "{}",
        run.stderr
    );
    // A cached load is fast and does not recompile: the artifact is in the shared cache.
    assert!(std::fs::read_dir(plugin_cache()).unwrap().count() > 0);
}

#[test]
fn panics_loops_and_memory_bombs_become_dead_letters_and_processing_continues() {
    let dir = scratch_dir("chaos");
    let dead = dir.join("dead.ndjson");
    let input: Vec<String> = ["ok1", "panic", "ok2", "loop", "ok3", "bomb", "fail", "ok4"]
        .iter()
        .enumerate()
        .map(|(i, name)| {
            record(
                "Users",
                "INSERT",
                i as u32,
                json!({"Name": name}),
                json!({}),
            )
        })
        .collect();
    let run = plugin_run(
        &[
            &path("chaos"),
            "--plugin-timeout",
            "300ms",
            "--plugin-memory",
            "32MiB",
            "--dead-letter",
            &dead.display().to_string(),
        ],
        &lines(&input),
    )
    .unwrap();
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let out = parse(&run.stdout);
    let names: Vec<&str> = out
        .iter()
        .map(|v| v["mods"][0]["new_values"]["Name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        ["ok1", "ok2", "ok3", "ok4"],
        "good records pass, in order"
    );
    assert!(out.iter().all(|v| v["processed_by"] == "chaos-tag:v000"));
    let dead: Vec<String> = std::fs::read_to_string(&dead)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    let dead = parse(&dead);
    let failed: Vec<(&str, &str)> = dead
        .iter()
        .map(|d| {
            (
                d["record"]["mods"][0]["new_values"]["Name"]
                    .as_str()
                    .unwrap(),
                d["error"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(failed.len(), 4, "{failed:?}");
    assert_eq!(failed[0].0, "panic");
    assert!(
        failed[0].1.contains("chaos: asked to panic"),
        "{}",
        failed[0].1
    );
    assert_eq!(
        failed[1],
        ("loop", "deadline exceeded: the call ran longer than 300ms")
    );
    assert_eq!(failed[2].0, "bomb");
    assert!(failed[2].1.contains("memory"), "{}", failed[2].1);
    assert_eq!(failed[3], ("fail", "chaos: asked to fail"));
    for d in &dead {
        assert_eq!(d["plugin"], "chaos@0.1.0");
        assert_eq!(d["plugin_sha256"].as_str().unwrap().len(), 64);
        // The original record, whole.
        assert_eq!(d["record"]["table_name"], "Users");
        assert!(d["record"].get("processed_by").is_none());
    }
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn plugin_run_takes_minimal_records_and_names_every_missing_field_at_once() {
    let identity = path("identity");
    let minimal = r#"{"table_name":"Users","mod_type":"DELETE","mods":[{"keys":{"Id":"7"},"new_values":{},"old_values":{"Name":"x"}}]}"#;
    let run = plugin_run(&[&identity], &format!("{minimal}\n")).unwrap();
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let out: serde_json::Value = serde_json::from_str(&run.stdout[0]).unwrap();
    assert_eq!(out["table_name"], "Users");
    assert_eq!(out["mod_type"], "DELETE");
    assert_eq!(out["mods"][0]["keys"]["Id"], "7");
    assert_eq!(out["commit_timestamp"], "1970-01-01T00:00:00Z");
    assert_eq!(out["partition_token"], "plugin-run");
    assert_eq!(out["value_capture_type"], "OLD_AND_NEW_VALUES");
    assert_eq!(out["number_of_records_in_transaction"], 1);

    let run = plugin_run(
        &[&identity],
        "{\"commit_timestamp\":\"2026-01-01T00:00:00Z\"}\n",
    )
    .unwrap();
    assert_eq!(run.code, Some(2));
    let errors: Vec<&str> = run
        .stderr
        .lines()
        .filter(|l| l.starts_with("error:"))
        .collect();
    assert_eq!(
        errors,
        [
            "error: stdin line 1: missing table_name, mod_type, mods: a record needs at least table_name, mod_type and mods"
        ]
    );
}

#[test]
fn plugin_check_reports_a_plugin_that_needs_configuration_as_valid() {
    // redact refuses the empty configuration: valid, with init's message, exit 0.
    let run = screamer(&["plugin", "check", &path("redact")], "").unwrap();
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert!(run.stdout[0].ends_with(": ok"), "{:?}", run.stdout);
    let init =
        "init:    refuses the empty configuration: invalid configuration: missing field `columns`";
    assert!(
        run.stdout.iter().any(|l| l.trim().starts_with(init)),
        "{:?}",
        run.stdout
    );
    let json = screamer(&["plugin", "check", &path("redact"), "--json"], "").unwrap();
    let report: Value = serde_json::from_str(&json.stdout[0]).unwrap();
    assert!(
        report["init_refused"]
            .as_str()
            .is_some_and(|m| m.contains("missing field `columns`")),
        "{report}"
    );
    // With a configuration given, its refusal is the error it always was.
    let run = screamer(
        &[
            "plugin",
            "check",
            &path("redact"),
            "--plugin-config",
            r#"{"columns":[]}"#,
        ],
        "",
    )
    .unwrap();
    assert_eq!(run.code, Some(2), "{}", run.stderr);
    assert!(
        run.stderr
            .contains("`columns` must name at least one column"),
        "{}",
        run.stderr
    );
    // And a configuration it accepts reports no refusal.
    let json = screamer(
        &[
            "plugin",
            "check",
            &path("redact"),
            "--json",
            "--plugin-config",
            r#"{"columns":["Email"]}"#,
        ],
        "",
    )
    .unwrap();
    assert_eq!(json.code, Some(0), "{}", json.stderr);
    let report: Value = serde_json::from_str(&json.stdout[0]).unwrap();
    assert_eq!(report["init_refused"], Value::Null);
}

/// `screamer plugin run ARGS` with its stdin and stdout as pipes the test writes and reads
/// line by line.
struct PipedRun {
    child: std::process::Child,
    stdin: Option<std::process::ChildStdin>,
    lines: std::sync::mpsc::Receiver<String>,
}

impl PipedRun {
    fn start(args: &[&str]) -> Self {
        use std::io::BufRead;
        let mut child = command([&["plugin", "run"], args].concat())
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                let _ = tx.send(line);
            }
        });
        PipedRun {
            child,
            stdin,
            lines,
        }
    }

    /// Writes one line and returns the output line it makes, within 30 s.
    fn send(&mut self, line: &str) -> String {
        use std::io::Write;
        let stdin = self.stdin.as_mut().unwrap();
        writeln!(stdin, "{line}").unwrap();
        stdin.flush().unwrap();
        self.lines
            .recv_timeout(std::time::Duration::from_secs(30))
            .unwrap_or_else(|_| panic!("no output for {line} while stdin is open"))
    }

    /// Closes stdin and waits for a successful exit; returns what it logged.
    fn finish(mut self) -> String {
        drop(self.stdin.take());
        let out = self.child.wait_with_output().unwrap();
        let stderr = String::from_utf8(out.stderr).unwrap();
        assert!(out.status.success(), "{stderr}");
        stderr
    }
}

#[test]
fn plugin_run_in_a_pipe_answers_each_line_before_its_input_closes() {
    let mut run = PipedRun::start(&[&path("identity")]);
    for name in ["first", "second"] {
        // The input stays open: the output must come anyway.
        let out = run.send(named_records(&[name]).trim_end());
        assert_eq!(record_names(&[out]), [name]);
    }
    run.finish();
}

#[test]
fn plugin_run_watch_swaps_in_a_rebuilt_plugin() {
    let dir = scratch_dir("plugin-run-watch");
    let file = dir.join("chaos.wasm");
    std::fs::write(&file, chaos_version("v001")).unwrap();
    let file_arg = file.display().to_string();
    let mut run = PipedRun::start(&[&file_arg, "--watch"]);
    let tag = |line: &str| -> String {
        let v: Value = serde_json::from_str(line).unwrap();
        v["processed_by"].as_str().unwrap().to_owned()
    };
    let record = named_records(&["x"]);
    assert_eq!(tag(&run.send(record.trim_end())), "chaos-tag:v001");
    replace_file(&file, &chaos_version("v002")).unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        match tag(&run.send(record.trim_end())).as_str() {
            "chaos-tag:v002" => break,
            "chaos-tag:v001" if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
            other => panic!("after the rebuild: {other}"),
        }
    }
    // Once swapped, every line goes through the new version.
    for _ in 0..3 {
        assert_eq!(tag(&run.send(record.trim_end())), "chaos-tag:v002");
    }
    // While the new version compiled, the log said so (and who takes records meanwhile).
    let stderr = run.finish();
    let loading = stderr.find("reloading the plugin file");
    let swapped = stderr.find("plugin swapped");
    assert!(
        loading.is_some_and(|l| swapped.is_some_and(|s| l < s)),
        "{stderr}"
    );
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn plugin_check_names_every_import_the_host_does_not_provide() {
    // A component importing wasi:http, as componentize-js builds one by default.
    let mut types = wasm_encoder::ComponentTypeSection::new();
    types.instance(&wasm_encoder::InstanceType::new());
    let mut imports = wasm_encoder::ComponentImportSection::new();
    for name in ["wasi:http/types@0.2.3", "wasi:http/outgoing-handler@0.2.3"] {
        imports.import(name, wasm_encoder::ComponentTypeRef::Instance(0));
    }
    let mut component = wasm_encoder::Component::new();
    component.section(&types).section(&imports);
    let dir = scratch_dir("http-importer");
    let file = dir.join("http.wasm");
    std::fs::write(&file, component.finish()).unwrap();
    let run = screamer(&["plugin", "check", &file.display().to_string()], "").unwrap();
    assert_eq!(run.code, Some(2), "{}", run.stderr);
    let errors: Vec<&str> = run
        .stderr
        .lines()
        .filter(|l| l.starts_with("error:"))
        .collect();
    assert_eq!(errors.len(), 1, "{}", run.stderr);
    assert!(
        errors[0].contains(
            "imports what the host does not provide: wasi:http/types@0.2.3, \
             wasi:http/outgoing-handler@0.2.3 (a JavaScript component"
        ) && errors[0].contains("--disable http fetch-event"),
        "{}",
        errors[0]
    );
    std::fs::remove_dir_all(dir).unwrap();
}

/// Runs `plugin run identity.wasm` on one record with `extra` flags; its perf map's text, if
/// it wrote one (removed after reading).
fn perf_map_of_run(extra: &[&str]) -> Option<String> {
    let identity = path("identity");
    let run = plugin_run(
        &[extra, &[identity.as_str()]].concat(),
        &named_records(&["a"]),
    )
    .unwrap();
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert_eq!(run.stdout.len(), 1);
    let map = std::path::PathBuf::from(format!("/tmp/perf-{}.map", run.pid));
    let text = std::fs::read_to_string(&map).ok();
    let _ = std::fs::remove_file(&map);
    text
}

#[test]
fn plugin_perf_map_names_the_plugins_compiled_code_for_perf() {
    let map = perf_map_of_run(&["--plugin-perf-map"]).expect("a perf map for the run");
    // perf's format: start address, size (hex), name; the plugin's functions are wasm[..].
    let functions = map
        .lines()
        .filter(|l| {
            let f: Vec<&str> = l.splitn(3, ' ').collect();
            f.len() == 3 && f[0].starts_with("0x") && f[2].starts_with("wasm[")
        })
        .count();
    assert!(functions > 10, "{functions} plugin functions in:\n{map}");
    assert_eq!(perf_map_of_run(&[]), None, "no perf map unless asked");
}

/// A component of another world is told how to rebuild in its own language: the language
/// is recognized from what its toolchain left in the real components.
#[test]
fn the_language_of_a_component_is_recognized() {
    use screamer::plugin::GuestLanguage;
    let of = |name: &str| GuestLanguage::of(&std::fs::read(plugin(name)).unwrap());
    assert_eq!(of("filter"), Some(GuestLanguage::Rust));
    assert_eq!(of("drop_columns"), Some(GuestLanguage::Python));
    assert_eq!(of("py_raise"), Some(GuestLanguage::Python));
    assert_eq!(of("js_throw"), Some(GuestLanguage::JavaScript));
    assert_eq!(of("tag_table"), Some(GuestLanguage::JavaScript));
    assert_eq!(of("enrich"), Some(GuestLanguage::Rust));
}

/// `init` runs in a trial instance (at load) and again in the running one: what it logs is
/// logged once.
#[test]
fn what_init_logs_is_logged_once() {
    let run = plugin_run(
        &[
            &path("drop_columns"),
            "--plugin-config",
            r#"drop_columns={"columns":["Email"]}"#,
            "--log-level",
            "debug",
        ],
        &lines(&sample()),
    )
    .unwrap();
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert_eq!(
        run.stderr.matches("dropping columns ['Email']").count(),
        1,
        "{}",
        run.stderr
    );
}

/// `plugin check` shows the world's exports as the plugin's, and what a toolchain exports
/// for itself apart.
#[test]
fn plugin_check_sets_toolchain_exports_apart() {
    let run = screamer(&["plugin", "check", &path("js_throw")], "").unwrap();
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let exports: Vec<&str> = run
        .stdout
        .iter()
        .map(|l| l.trim())
        .filter(|l| l.starts_with("exports:") || l.starts_with("(and"))
        .collect();
    assert_eq!(
        exports,
        [
            "exports: screamer:plugin/processor@0.3.0",
            "(and the toolchain's own, never called: init)"
        ]
    );
}
