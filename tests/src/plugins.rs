//! The plugins the tests run: the components `scripts/test.sh` builds into
//! `target/plugins/`, distinct versions of the chaos plugin for hot-swap tests, and
//! `screamer plugin run` as a child process.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use anyhow::Context;
use serde_json::{Value, json};

use crate::process::command;

/// The workspace's `target/` directory.
fn target_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .join("target")
}

/// `target/plugins/<name>.wasm`, built by `scripts/test.sh` (`build_plugins`).
/// [`plugin`]'s path as a command-line argument.
pub fn plugin_arg(name: &str) -> String {
    plugin(name).display().to_string()
}

pub fn plugin(name: &str) -> PathBuf {
    let path = target_dir().join("plugins").join(format!("{name}.wasm"));
    assert!(
        path.is_file(),
        "{} is missing: run scripts/test.sh, which builds the plugins",
        path.display()
    );
    path
}

/// One compiled-plugin cache for every test (concurrent writers are safe: atomic renames).
pub fn plugin_cache() -> PathBuf {
    target_dir().join("plugin-cache-tests")
}

/// A fresh directory under `target/tmp` for one test's files.
pub fn scratch_dir(test: &str) -> PathBuf {
    let dir = target_dir().join("tmp").join(format!(
        "{test}-{}-{}",
        std::process::id(),
        fastrand_suffix()
    ));
    std::fs::create_dir_all(&dir).expect("creating a scratch directory");
    dir
}

fn fastrand_suffix() -> u64 {
    use std::time::{SystemTime, UNIX_EPOCH};
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or_default()
}

/// The chaos plugin's bytes with its tag set to `tag` (four characters, like `v001`): a
/// distinct version with its own hash, which tags every record it passes with
/// `processed_by = "chaos-tag:<tag>"`.
pub fn chaos_version(tag: &str) -> Vec<u8> {
    assert_eq!(tag.len(), 4, "chaos tags are four characters, like v001");
    let mut bytes = std::fs::read(plugin("chaos")).expect("reading chaos.wasm");
    let needle = b"chaos-tag:v000";
    let at = bytes
        .windows(needle.len())
        .position(|w| w == needle)
        .expect("the chaos plugin carries its tag");
    bytes[at + 10..at + 14].copy_from_slice(tag.as_bytes());
    bytes
}

/// Replaces `path` the way deploy tools do: write a temporary file, rename it over.
pub fn replace_file(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

/// What `screamer plugin run` printed and how it exited.
#[derive(Debug)]
pub struct PluginRun {
    /// The process's id (what names its files in /tmp, a perf map say).
    pub pid: u32,
    pub code: Option<i32>,
    pub stdout: Vec<String>,
    pub stderr: String,
}

impl PluginRun {
    fn of(pid: u32, out: std::process::Output) -> anyhow::Result<Self> {
        Ok(PluginRun {
            pid,
            code: out.status.code(),
            stdout: String::from_utf8(out.stdout)?
                .lines()
                .map(str::to_owned)
                .collect(),
            stderr: String::from_utf8(out.stderr)?,
        })
    }
}

/// Runs `screamer plugin run <args>` with `input` on stdin (with the shared cache).
pub fn plugin_run(args: &[&str], input: &str) -> anyhow::Result<PluginRun> {
    screamer(&[&["plugin", "run"], args].concat(), input)
}

/// `screamer plugin run ARGS` with `input` on stdin and `env`, off the async runtime.
pub async fn plugin_run_async(
    args: Vec<String>,
    input: String,
    env: Vec<(&'static str, String)>,
) -> PluginRun {
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = ["plugin", "run"]
            .into_iter()
            .chain(args.iter().map(String::as_str))
            .collect();
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        screamer_with_env(&args, &input, &env).expect("screamer plugin run")
    })
    .await
    .expect("plugin run task")
}

/// Runs `screamer <args>` with `input` on stdin, to completion.
pub fn screamer(args: &[&str], input: &str) -> anyhow::Result<PluginRun> {
    screamer_with_env(args, input, &[])
}

/// Runs `screamer <args>` with `input` on stdin and the environment variables `env`
/// (`PUBSUB_EMULATOR_HOST`, say), to completion.
pub fn screamer_with_env(
    args: &[&str],
    input: &str,
    env: &[(&str, &str)],
) -> anyhow::Result<PluginRun> {
    let mut child = command(args)
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("spawning screamer")?;
    let pid = child.id();
    let mut stdin = child.stdin.take().expect("piped stdin");
    let input = input.to_owned();
    let writer = std::thread::spawn(move || stdin.write_all(input.as_bytes()));
    let out = child.wait_with_output()?;
    let _ = writer.join();
    PluginRun::of(pid, out)
}

/// The directory of the plugin SDK crate in this workspace.
pub fn sdk_dir() -> PathBuf {
    target_dir()
        .parent()
        .expect("workspace root")
        .join("plugin-sdk")
}

/// Runs `screamer <args>` in `dir` as a plugin author would, to completion: the guest
/// toolchains `scripts/test.sh` installs under `target/` (componentize-py, jco) on `PATH`,
/// and Rust projects built offline in a target directory of their own (`cargo test` holds
/// the workspace's while tests run).
pub fn author(dir: &Path, args: &[&str]) -> anyhow::Result<PluginRun> {
    author_with_env(dir, args, &[])
}

/// [`author`] with `PATH` as given (to show what happens without a toolchain).
pub fn author_with_path(dir: &Path, args: &[&str], path: &str) -> anyhow::Result<PluginRun> {
    author_with_env(dir, args, &[("PATH", path)])
}

/// [`author`] with more environment (`PATH`, `SCREAMER_TOOL_CACHE`). Tools `plugin build`
/// installs go to `target/tool-cache-tests` unless `env` says otherwise, never to the
/// user's cache.
pub fn author_with_env(
    dir: &Path,
    args: &[&str],
    env: &[(&str, &str)],
) -> anyhow::Result<PluginRun> {
    let path = toolchain_path();
    let child = command(args)
        .current_dir(dir)
        .env("PATH", path)
        .env("SCREAMER_TOOL_CACHE", target_dir().join("tool-cache-tests"))
        .envs(env.iter().copied())
        .env("CARGO_TARGET_DIR", target_dir().join("authoring"))
        // Rust projects build from what `plugin new` wrote and Cargo's cache alone.
        .env("CARGO_NET_OFFLINE", "true")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("running screamer")?;
    let pid = child.id();
    PluginRun::of(pid, child.wait_with_output()?)
}

/// `PATH` with the guest toolchains of `scripts/test.sh` in front.
pub fn toolchain_path() -> String {
    let target = target_dir();
    let tools = [
        target.join("py-venv/bin"),
        target.join("js-tools/node_modules/.bin"),
    ];
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::join_paths(tools.into_iter().chain(std::env::split_paths(&path)))
        .expect("paths without separators")
        .into_string()
        .expect("a UTF-8 PATH")
}

/// One NDJSON record of `table` with one row change, as screamer prints it.
pub fn record_line(
    table: &str,
    mod_type: &str,
    id: u32,
    new_values: Value,
    old_values: Value,
) -> String {
    json!({
        "partition_token": "p1",
        "commit_timestamp": format!("2026-11-27T20:00:{:02}.125Z", id % 60),
        "record_sequence": format!("{id:08}"),
        "server_transaction_id": format!("tx{id}"),
        "is_last_record_in_transaction_in_partition": true,
        "table_name": table,
        "column_types": [
            {"name": "Id", "type": {"code": "INT64"}, "is_primary_key": true, "ordinal_position": 1}
        ],
        "mods": [{"keys": {"Id": id.to_string()}, "new_values": new_values, "old_values": old_values}],
        "mod_type": mod_type,
        "value_capture_type": "OLD_AND_NEW_VALUES",
        "number_of_records_in_transaction": 1,
        "number_of_partitions_in_transaction": 1,
        "transaction_tag": "",
        "is_system_transaction": false
    })
    .to_string()
}

/// Output lines as JSON values (panics, naming the line, on one that is not JSON).
pub fn parse(lines: &[String]) -> Vec<serde_json::Value> {
    lines
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

/// One INSERT into Users per name, as NDJSON: the first row's `Name` is the name (what the
/// chaos plugin acts on, and what tests compare).
pub fn named_records<S: AsRef<str>>(names: &[S]) -> String {
    names
        .iter()
        .enumerate()
        .map(|(i, n)| {
            record_line(
                "Users",
                "INSERT",
                i as u32,
                json!({"Name": n.as_ref()}),
                json!({}),
            ) + "\n"
        })
        .collect()
}

/// The first row's `Name` of each output line (what [`named_records`] set).
pub fn record_names(lines: &[String]) -> Vec<String> {
    parse(lines)
        .iter()
        .map(|v| {
            v["mods"][0]["new_values"]["Name"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect()
}
