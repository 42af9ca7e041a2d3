//! Plugin authoring as a new author meets it: `plugin new` in each language, then
//! `plugin test` (build, native tests, fixtures) on the project it wrote, with the real
//! toolchains (cargo for wasm32-wasip2, componentize-py, jco) and the real host; a changed
//! expectation failing with a readable diff; the mistakes an author makes, each one line;
//! and `plugin sample` feeding `plugin run`.

use std::path::{Path, PathBuf};

use screamer_tests::plugins::{
    PluginRun, author, author_with_env, author_with_path, parse, plugin, plugin_run, scratch_dir,
    screamer, sdk_dir,
};
use serde_json::{Value, json};

/// A fresh directory outside the workspace (cargo would take a project under it for a
/// member that is missing from the workspace).
fn outside_workspace(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "screamer-{test}-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos())
    ));
    std::fs::create_dir_all(&dir).expect("creating a scratch directory");
    dir
}

/// Removes a passing test's project (its components are megabytes).
fn remove_scratch(project: &Path) {
    let _ = std::fs::remove_dir_all(project.parent().expect("in a scratch directory"));
}

fn assert_ok(what: &str, run: &PluginRun) {
    assert_eq!(
        run.code,
        Some(0),
        "{what}: stdout {:?}\nstderr {}",
        run.stdout,
        run.stderr
    );
}

/// The author edits `file` of `project` (`from`, which it must have, becomes `to`), then
/// runs `plugin test`, which must fail (exit 1).
fn failing_test_after_edit(
    project: &Path,
    file: &str,
    from: &str,
    to: &str,
) -> anyhow::Result<PluginRun> {
    let path = project.join(file);
    let text = std::fs::read_to_string(&path)?;
    let edited = text.replacen(from, to, 1);
    assert_ne!(text, edited, "{file} has {from:?}");
    std::fs::write(&path, edited)?;
    let failed = author(project, &["plugin", "test"])?;
    assert_eq!(failed.code, Some(1), "{failed:?}");
    Ok(failed)
}

/// `plugin new NAME --lang LANG` in a fresh directory, then `plugin test` in the project:
/// every fixture passes against the component it built, which `plugin check` accepts.
fn new_project_passes_its_tests(
    lang: &str,
    extra: &[&str],
) -> anyhow::Result<(PathBuf, PluginRun)> {
    let dir = outside_workspace(&format!("author-{lang}"));
    let name = format!("hello-{lang}");
    let created = author(
        &dir,
        &[&["plugin", "new", &name, "--lang", lang], extra].concat(),
    )?;
    assert_ok("plugin new", &created);
    // Nothing to set up first: `plugin build` installs a missing toolchain.
    assert_eq!(
        created.stdout,
        [format!(
            "created {name}/ ({}): next, `cd {name} && screamer plugin test`",
            match lang {
                "rust" => "Rust",
                "python" => "Python",
                "typescript" => "TypeScript",
                "c" => "C",
                _ => "JavaScript",
            }
        )]
    );
    let project = dir.join(&name);
    for file in ["README.md", ".gitignore", "fixtures/basic.json"] {
        assert!(project.join(file).is_file(), "{file} is missing");
    }
    if lang == "rust" {
        // Guests build with more inlining than LLVM's default (BENCHMARKS.md, "Guest code").
        let cargo = std::fs::read_to_string(project.join(".cargo/config.toml"))?;
        assert!(cargo.contains("-inline-threshold=1000"), "{cargo}");
    }
    assert!(
        std::fs::read_to_string(project.join("README.md"))?
            .lines()
            .count()
            <= 6,
        "the README stays short"
    );

    let tested = author(&project, &["plugin", "test"])?;
    assert_ok("plugin test", &tested);
    assert_eq!(
        tested.stdout[tested.stdout.len() - 2..],
        [
            "fixture fixtures/basic.json ... ok".to_owned(),
            "1 fixtures: 1 passed, 0 failed".to_owned()
        ],
        "{:?}",
        tested.stdout
    );
    assert!(
        tested.stderr.contains(&format!("built {name}.wasm (")),
        "{}",
        tested.stderr
    );
    assert!(project.join(format!("{name}.wasm")).is_file());
    let checked = author(&project, &["plugin", "check", &format!("{name}.wasm")])?;
    assert_ok("plugin check", &checked);
    assert!(
        checked
            .stdout
            .iter()
            .any(|l| l.trim() == format!("plugin:  {name} 0.1.0")),
        "{:?}",
        checked.stdout
    );
    Ok((project, tested))
}

/// Built from the SDK `plugin new` vendors into the project, with Cargo offline: nothing
/// but crates already in Cargo's cache.
#[test]
fn a_rust_project_from_plugin_new_passes_plugin_test() -> anyhow::Result<()> {
    let (project, tested) = new_project_passes_its_tests("rust", &[])?;
    // Its native unit tests ran first.
    assert!(
        tested
            .stdout
            .iter()
            .any(|l| l.starts_with("test result: ok. 2 passed")),
        "{:?}",
        tested.stdout
    );
    let cargo_toml = std::fs::read_to_string(project.join("Cargo.toml"))?;
    assert!(
        cargo_toml.contains(
            r#"screamer-plugin-sdk = { path = "vendor/screamer-plugin-sdk", version = "0.3" }"#
        ),
        "{cargo_toml}"
    );
    // The SDK's own sources, and a manifest that stands alone.
    let vendored = project.join("vendor/screamer-plugin-sdk");
    for file in [
        "src/lib.rs",
        "src/json.rs",
        "src/origin.rs",
        "wit/plugin.wit",
    ] {
        assert_eq!(
            std::fs::read(vendored.join(file))?,
            std::fs::read(sdk_dir().join(file))?,
            "{file}"
        );
    }
    let manifest = std::fs::read_to_string(vendored.join("Cargo.toml"))?;
    assert!(!manifest.contains("workspace"), "{manifest}");

    // Without fixtures the native tests still run.
    std::fs::remove_dir_all(project.join("fixtures"))?;
    let native = author(&project, &["plugin", "test"])?;
    assert_ok("plugin test without fixtures", &native);
    assert!(
        native
            .stdout
            .iter()
            .any(|l| l.starts_with("test result: ok. 2 passed")),
        "{:?}",
        native.stdout
    );
    assert!(
        native
            .stdout
            .last()
            .is_some_and(|l| l.starts_with("no fixtures in fixtures/")),
        "{:?}",
        native.stdout
    );
    Ok(())
}

/// `--sdk DIR` depends on a checkout instead, and vendors nothing.
#[test]
fn a_rust_project_can_use_a_local_sdk() -> anyhow::Result<()> {
    let dir = outside_workspace("author-rust-sdk");
    let sdk = sdk_dir().display().to_string();
    let created = author(
        &dir,
        &["plugin", "new", "local", "--lang", "rust", "--sdk", &sdk],
    )?;
    assert_ok("plugin new", &created);
    let project = dir.join("local");
    let cargo_toml = std::fs::read_to_string(project.join("Cargo.toml"))?;
    assert!(
        cargo_toml.contains(&format!("path = {}", Value::from(sdk))),
        "{cargo_toml}"
    );
    assert!(!project.join("vendor").exists());
    remove_scratch(&project);
    Ok(())
}

/// TypeScript: tsc checks the plugin against the world's types (`plugin.d.ts`) before jco
/// builds it; a wrong type in an outcome is tsc's error, naming the file, line and column.
#[test]
fn a_typescript_project_from_plugin_new_passes_plugin_test_and_a_type_error_names_its_place()
-> anyhow::Result<()> {
    let (project, _) = new_project_passes_its_tests("typescript", &[])?;
    let failed = failing_test_after_edit(
        &project,
        "app.ts",
        "extra: JSON.stringify(extra)",
        "extra: 5",
    )?;
    assert!(
        failed.stdout.iter().any(|l| l.starts_with("app.ts(")
            && l.ends_with("error TS2322: Type 'number' is not assignable to type 'string'.")),
        "{failed:?}"
    );
    assert_eq!(
        failed.stderr.lines().last(),
        Some("error: tsc failed (exit status: 1)")
    );
    remove_scratch(&project);
    Ok(())
}

/// Built with Debian's clang-14 and wasi-libc and Rust's wasm-component-ld, from bindings
/// generated ahead of time; a compile error is clang's, naming the file and line; a missing
/// compiler is one line naming the packages.
#[test]
fn a_c_project_from_plugin_new_passes_plugin_test_and_a_compile_error_names_its_place()
-> anyhow::Result<()> {
    let (project, _) = new_project_passes_its_tests("c", &[])?;
    for file in ["Makefile", "json.c", "bindings/plugin_component_type.o"] {
        assert!(project.join(file).is_file(), "{file} is missing");
    }
    let failed = failing_test_after_edit(
        &project,
        "app.c",
        "out.tag = SCREAMER_PLUGIN_TYPES_OUTCOME_DROP;",
        "out.tag = DROP;",
    )?;
    assert!(
        failed
            .stderr
            .lines()
            .any(|l| l.starts_with("app.c:")
                && l.contains("error: use of undeclared identifier 'DROP'")),
        "{failed:?}"
    );
    assert_eq!(
        failed.stderr.lines().last(),
        Some("error: make failed (exit status: 2)")
    );
    let missing = author_with_env(&project, &["plugin", "build"], &[("CC", "clang-99")])?;
    assert_eq!(missing.code, Some(2), "{missing:?}");
    assert_eq!(
        missing.stderr.lines().last().unwrap_or_default(),
        "error: clang-99 not found: install the C toolchain for WebAssembly (Debian or Ubuntu: \
         `apt-get install clang-14 lld-14 wasi-libc libclang-rt-14-dev-wasm32`)"
    );
    remove_scratch(&project);
    Ok(())
}

/// ... and a value of the wrong type in an outcome: the template's check makes that record
/// a dead letter naming the field; without the check, the host still says what was expected,
/// without componentize-py's wrapping.
#[test]
fn a_python_project_from_plugin_new_passes_plugin_test() -> anyhow::Result<()> {
    let (project, _) = new_project_passes_its_tests("python", &[])?;
    assert!(project.join("wit/plugin.wit").is_file());
    // The template's extra made an int, then its outcome check taken out.
    for (from, to, error) in [
        (
            "record.extra = json.dumps(extra)",
            "record.extra = 5",
            "outcome[0].replace.extra: expected str, got int",
        ),
        (
            "wrong = _wrong_type(outcome, f\"outcome[{i}]\")",
            "wrong = None",
            "Python value of the wrong type in what the plugin returned: 'int' object is not \
             an instance of 'str'",
        ),
    ] {
        let failed = failing_test_after_edit(&project, "app.py", from, to)?;
        assert!(
            failed
                .stdout
                .iter()
                .any(|l| l.contains(&format!("\"error\": \"{error}\""))),
            "{:?}",
            failed.stdout
        );
    }
    remove_scratch(&project);
    Ok(())
}

#[test]
fn a_javascript_project_from_plugin_new_passes_plugin_test_and_a_changed_expectation_fails()
-> anyhow::Result<()> {
    let (project, _) = new_project_passes_its_tests("javascript", &[])?;

    // The author changes what the INSERT must become: the test fails, showing that field.
    let failed = failing_test_after_edit(
        &project,
        "fixtures/basic.json",
        r#""changed_columns": ["Email", "Name"]"#,
        r#""changed_columns": ["Name"]"#,
    )?;
    let out = failed.stdout.join("\n");
    assert!(
        out.contains("fixture fixtures/basic.json ... FAILED"),
        "{out}"
    );
    assert!(
        out.contains(
            "  (Users' inserts and updates get changed_columns, deletes pass unchanged, \
             Orders are dropped)"
        ),
        "the fixture's description names the case: {out}"
    );
    assert!(
        out.contains("main output differs (- expected, + actual):"),
        "{out}"
    );
    assert!(
        out.lines().any(|l| l.trim() == "+      \"Email\","),
        "{out}"
    );
    // Fields at their defaults stay out of the diff.
    assert!(!out.contains("partition_token"), "{out}");
    assert!(out.ends_with("1 fixtures: 0 passed, 1 failed"), "{out}");
    assert_eq!(
        failed.stderr.lines().last(),
        Some("error: 1 of 1 fixtures failed")
    );
    // Only a fixture changed: the component was not built again.
    assert!(
        failed
            .stderr
            .contains("hello-javascript.wasm is up to date"),
        "{}",
        failed.stderr
    );

    // --bless takes what the component makes as the expectation: then the test passes.
    let blessed = author(&project, &["plugin", "test", "--bless"])?;
    assert_ok("plugin test --bless", &blessed);
    assert_eq!(
        blessed.stdout[blessed.stdout.len() - 2..],
        [
            "fixture fixtures/basic.json ... blessed".to_owned(),
            "1 fixtures: 1 blessed, 0 failed".to_owned()
        ]
    );
    let passed = author(&project, &["plugin", "test"])?;
    assert_ok("plugin test after --bless", &passed);
    let fixture = project.join("fixtures/basic.json");
    let doc: Value = serde_json::from_str(&std::fs::read_to_string(&fixture)?)?;
    assert_eq!(
        doc["output"][0]["changed_columns"],
        serde_json::json!(["Email", "Name"])
    );
    assert!(
        doc["description"].is_string(),
        "the rest of the fixture stays: {doc}"
    );

    // A changed source is built again.
    let app = project.join("app.js");
    std::fs::write(&app, std::fs::read_to_string(&app)? + "\n// edited\n")?;
    let rebuilt = author(&project, &["plugin", "test"])?;
    assert_ok("plugin test after an edit", &rebuilt);
    assert!(
        rebuilt.stderr.contains("built hello-javascript.wasm ("),
        "{}",
        rebuilt.stderr
    );

    // A value of the wrong type in an outcome: the template's check makes that record a
    // dead letter naming the field and what was expected.
    let failed = failing_test_after_edit(
        &project,
        "app.js",
        "extra: JSON.stringify(extra)",
        "extra: 5",
    )?;
    assert!(
        failed
            .stdout
            .iter()
            .any(|l| l
                .contains("\"error\": \"outcome[0].replace.extra: expected string, got number\"")),
        "{:?}",
        failed.stdout
    );
    // Without the check, jco's own conversion fails the call: the host still says what was
    // expected, without the field.
    let failed = failing_test_after_edit(
        &project,
        "app.js",
        "const wrong = outcomeError(outcome, `outcome[${i}]`);",
        "const wrong = null;",
    )?;
    assert!(
        failed.stdout.iter().any(|l| l.contains(
            "\"error\": \"JavaScript value of the wrong type in what the plugin returned: \
             expected string, got int"
        )),
        "{:?}",
        failed.stdout
    );
    Ok(())
}

#[test]
fn an_author_s_mistakes_are_one_line_each() -> anyhow::Result<()> {
    let dir = scratch_dir("author-mistakes");
    let cases: [(&[&str], &str); 4] = [
        (
            &["plugin", "new", "My_Plugin", "--lang", "rust"],
            "error: plugin new \"My_Plugin\": expected a name of lowercase letters, digits and dashes, starting with a letter (it names the package and NAME.wasm)",
        ),
        (
            &["plugin", "new", "p", "--lang", "python", "--sdk", "/tmp"],
            "error: plugin new: --sdk is for --lang rust only",
        ),
        (
            &["plugin", "new", "p", "--lang", "cobol"],
            "error: invalid value 'cobol' for '--lang <LANG>'",
        ),
        (
            &["plugin", "build"],
            "error: .: not a plugin project: expected Cargo.toml, app.py with pyproject.toml, app.js or app.ts with package.json, or app.c with a Makefile (start one with `screamer plugin new NAME --lang rust|python|javascript|typescript|c`, or test a component built elsewhere with `plugin test --wasm FILE`)",
        ),
    ];
    for (args, expected) in cases {
        let run = author(&dir, args)?;
        assert_eq!(run.code, Some(2), "{args:?}: {run:?}");
        assert!(
            run.stderr.lines().count() == 1 && run.stderr.starts_with(expected),
            "{args:?}: {}",
            run.stderr
        );
    }
    // A project that exists is not overwritten.
    assert_ok(
        "plugin new",
        &author(&dir, &["plugin", "new", "twice", "--lang", "python"])?,
    );
    let again = author(&dir, &["plugin", "new", "twice", "--lang", "javascript"])?;
    assert_eq!(again.code, Some(2));
    assert_eq!(
        again.stderr.trim(),
        "error: plugin new twice: ./twice already exists: choose another name or remove it"
    );
    assert!(!dir.join("twice/app.js").exists());

    // Without componentize-py anywhere and told not to install it, the build says how to
    // get it.
    let project = dir.join("twice");
    let missing = author_with_path(
        &project,
        &["plugin", "build", "--no-install"],
        "/usr/bin:/bin",
    )?;
    assert_eq!(missing.code, Some(2), "{missing:?}");
    assert_eq!(
        missing.stderr.lines().last().unwrap_or_default(),
        "error: componentize-py not found: install it with `pip install componentize-py==0.25.1` \
         (into .venv or onto PATH)",
    );

    // A fixture record missing fields names the file, the record and every field, before
    // anything is built.
    std::fs::write(
        project.join("fixtures/basic.json"),
        json!({"input": [{"table_name": "Users"}], "output": []}).to_string(),
    )?;
    let bad = author_with_path(
        &project,
        &["plugin", "test", "--no-install"],
        "/usr/bin:/bin",
    )?;
    assert_eq!(bad.code, Some(2), "{bad:?}");
    assert_eq!(
        bad.stderr.trim(),
        "error: fixtures/basic.json: input[0]: missing mod_type, mods: a record needs at least \
         table_name, mod_type and mods"
    );
    std::fs::write(
        project.join("fixtures/basic.json"),
        r#"{"input": [], "outputs": []}"#,
    )?;
    let typo = author_with_path(
        &project,
        &["plugin", "test", "--no-install"],
        "/usr/bin:/bin",
    )?;
    assert_eq!(typo.code, Some(2), "{typo:?}");
    assert!(
        typo.stderr
            .starts_with("error: fixtures/basic.json: unknown field `outputs`"),
        "{}",
        typo.stderr
    );
    Ok(())
}

#[test]
fn plugin_sample_feeds_plugin_run() -> anyhow::Result<()> {
    let sample = screamer(
        &[
            "plugin",
            "sample",
            "--table",
            "Singers",
            "--columns",
            "SingerId:INT64,Name:STRING,Tags:ARRAY<STRING>",
        ],
        "",
    )?;
    assert_ok("plugin sample", &sample);
    let records = parse(&sample.stdout);
    let kinds: Vec<&str> = records
        .iter()
        .map(|r| r["mod_type"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["INSERT", "UPDATE", "DELETE"]);
    assert!(records.iter().all(|r| r["table_name"] == "Singers"));
    assert_eq!(records[0]["mods"][0]["keys"], json!({"SingerId": "1"}));
    assert_eq!(
        records[0]["mods"][0]["new_values"],
        json!({"Name": "Name 1", "Tags": ["Tags 1"]})
    );

    // What sample prints, plugin run reads back as it is.
    let input = sample.stdout.join("\n") + "\n";
    let run = plugin_run(&[plugin("identity").to_str().unwrap()], &input)?;
    assert_ok("plugin run", &run);
    assert_eq!(parse(&run.stdout), records);

    let bad = screamer(&["plugin", "sample", "--columns", "Id:INT"], "")?;
    assert_eq!(bad.code, Some(2));
    assert!(
        bad.stderr
            .starts_with("error: --columns \"Id:INT\": expected NAME:TYPE"),
        "{}",
        bad.stderr
    );
    Ok(())
}

/// `plugin test --wasm` tests a component built anywhere against a directory that holds only
/// fixtures; `--fixture` picks some; no fixtures is no failure; `--no-build` needs a
/// component built before.
#[test]
fn plugin_test_takes_a_component_built_elsewhere_and_picks_fixtures() -> anyhow::Result<()> {
    let dir = scratch_dir("test-wasm");
    let wasm = plugin("identity").display().to_string();
    let test = |extra: &[&str]| -> anyhow::Result<PluginRun> {
        let at = dir.display().to_string();
        author(
            &dir,
            &[&["plugin", "test", &at, "--wasm", &wasm], extra].concat(),
        )
    };
    let none = test(&[])?;
    assert_ok("no fixtures", &none);
    assert!(
        none.stdout[0].starts_with("no fixtures in fixtures/"),
        "{:?}",
        none.stdout
    );

    std::fs::create_dir_all(dir.join("fixtures"))?;
    let record =
        json!({"table_name": "Users", "mod_type": "INSERT", "mods": [{"keys": {"Id": "1"}}]});
    let same = json!({"input": [record], "output": [record]});
    let wrong = json!({"input": [record], "output": []});
    std::fs::write(dir.join("fixtures/same.json"), same.to_string())?;
    std::fs::write(dir.join("fixtures/wrong.json"), wrong.to_string())?;
    let picked = test(&["--fixture", "same"])?;
    assert_ok("--fixture same", &picked);
    assert_eq!(
        picked.stdout,
        [
            format!("fixture {}/fixtures/same.json ... ok", dir.display()),
            "1 fixtures: 1 passed, 0 failed".to_owned()
        ]
    );
    let all = test(&[])?;
    assert_eq!(all.code, Some(1), "{all:?}");
    assert_eq!(
        all.stdout.last().map(String::as_str),
        Some("2 fixtures: 1 passed, 1 failed")
    );
    let unknown = test(&["--fixture", "nope.json"])?;
    assert_eq!(unknown.code, Some(2));
    assert_eq!(
        unknown.stderr.trim(),
        format!(
            "error: --fixture nope.json: no such fixture in {}/fixtures (there: same, wrong)",
            dir.display()
        )
    );

    // A JavaScript project never built: --no-build says how to build it.
    std::fs::write(dir.join("app.js"), "")?;
    std::fs::write(dir.join("package.json"), r#"{"name": "unbuilt"}"#)?;
    let at = dir.display().to_string();
    let unbuilt = author(&dir, &["plugin", "test", &at, "--no-build"])?;
    assert_eq!(unbuilt.code, Some(2), "{unbuilt:?}");
    assert_eq!(
        unbuilt.stderr.trim(),
        format!(
            "error: {}/unbuilt.wasm is not built: run `screamer plugin build` (or test without --no-build)",
            dir.display()
        )
    );
    std::fs::remove_dir_all(dir)?;
    Ok(())
}

/// With no componentize-py or jco anywhere, `plugin build` installs the version the project
/// pins into the tool cache, says so, builds, and finds it there the next time.
#[test]
fn plugin_build_installs_a_missing_guest_toolchain_once() -> anyhow::Result<()> {
    let dir = outside_workspace("author-install");
    let cache = dir.join("tools");
    let cache_env = cache.display().to_string();
    // The system's python3 and node, without the tools scripts/test.sh put on PATH.
    let env = [
        ("PATH", "/usr/local/bin:/usr/bin:/bin"),
        ("SCREAMER_TOOL_CACHE", &cache_env),
    ];
    for (lang, installs) in [
        (
            "python",
            "componentize-py not found: installing componentize-py==0.25.1 into ",
        ),
        (
            "javascript",
            "jco not found: installing @bytecodealliance/jco@1.35.0 and \
             @bytecodealliance/componentize-js@0.23.0 into ",
        ),
        // jco is in the cache now: only tsc is installed.
        (
            "typescript",
            "tsc not found: installing typescript@5.9.3 into ",
        ),
    ] {
        let name = format!("fresh-{lang}");
        assert_ok(
            "plugin new",
            &author(&dir, &["plugin", "new", &name, "--lang", lang])?,
        );
        let project = dir.join(&name);
        let first = author_with_env(&project, &["plugin", "build"], &env)?;
        assert_ok("plugin build", &first);
        assert!(first.stderr.contains(installs), "{}", first.stderr);
        assert!(first.stderr.contains(&cache_env), "{}", first.stderr);
        assert!(project.join(format!("{name}.wasm")).is_file());
        // The next project finds the tool in the cache.
        std::fs::remove_file(project.join(format!("{name}.wasm")))?;
        let again = author_with_env(&project, &["plugin", "build"], &env)?;
        assert_ok("plugin build again", &again);
        assert!(!again.stderr.contains("installing"), "{}", again.stderr);
    }
    let _ = std::fs::remove_dir_all(dir);
    Ok(())
}
