//! `screamer plugin test`: fixtures, an author's tests of a built component.
//!
//! Place in the flow: the author's loop, after `plugin build`. A fixture is one JSON file in
//! a project's `fixtures/`: records in, and what the component must make of them:
//!
//! ```json
//! {
//!   "description": "optional: what the case shows",
//!   "config": {"tables": ["Users"]},
//!   "input": [{"table_name": "Users", "mod_type": "INSERT", "mods": [{"keys": {"Id": "1"}}]}],
//!   "output": [{"table_name": "Users", "mod_type": "INSERT", "mods": [{"keys": {"Id": "1"}}]}],
//!   "side_outputs": {"audit": []},
//!   "dead_letters": [{"error": "text the error contains", "record": {"table_name": "..."}}]
//! }
//! ```
//!
//! Records are whole or minimal, as `plugin run` reads them (missing fields get its
//! defaults, on both sides). The input runs through the same pipeline a stream run uses, in
//! one batch, with `config` as the plugin's configuration; each output (main, every side
//! output the fixture names, dead letters) must then hold exactly the expected records in
//! order, field for field, and each dead letter's error must contain the expected text. A
//! side output the fixture does not name lands in the main output tagged `"output"`, as on a
//! stream without that destination. A difference is shown as a unified diff of the records,
//! leaving out the fields that hold their defaults on both sides.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::Deserialize;
use serde_json::{Map, Value};

use super::input::InputLine;
use crate::cli::RunError;
use crate::cli::config::DEFAULT_BATCH_SIZE;
use screamer::Pipeline;
use screamer::destination::{Batch, Destination, DestinationError};
use screamer::plugin::{Chain, Input, PluginError, PluginRuntime, PluginSpec, RuntimeOptions};

/// Where a project keeps its fixtures.
pub const DIR: &str = "fixtures";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fixture {
    /// What the case shows: printed with its failure.
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    config: Option<Map<String, Value>>,
    input: Vec<Value>,
    output: Vec<Value>,
    #[serde(default)]
    side_outputs: BTreeMap<String, Vec<Value>>,
    #[serde(default)]
    dead_letters: Vec<ExpectedDeadLetter>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ExpectedDeadLetter {
    /// Text the dead letter's error must contain (the host adds the plugin and context).
    error: String,
    record: Value,
}

/// A project's fixtures, read and checked.
pub struct Fixtures(Vec<(PathBuf, Fixture)>);

/// What a fixture run does with what the component makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Compare it with the fixture's expectations; exit 1 when any differs.
    Check,
    /// Write it into the fixture as its expectations (`--bless`).
    Bless,
}

impl Fixtures {
    /// Every `*.json` in `dir` (none when there is no `dir`), in name order, or those named
    /// in `only` (a file name, with or without `.json`). A mistake in one names the file and
    /// where; a name that matches no file is a mistake too.
    pub fn read(dir: &Path, only: &[String]) -> Result<Self, RunError> {
        let mut files = fixture_files(dir)?;
        if !only.is_empty() {
            for name in only {
                if !files.iter().any(|f| is_named(f, name)) {
                    return Err(RunError::Input(format!(
                        "--fixture {name}: no such fixture in {} (there: {})",
                        dir.display(),
                        names(&files)
                    )));
                }
            }
            files.retain(|f| only.iter().any(|name| is_named(f, name)));
        }
        let fixtures = files
            .into_iter()
            .map(|file| read(&file).map(|fixture| (file, fixture)))
            .collect::<Result<_, _>>()?;
        Ok(Fixtures(fixtures))
    }

    /// Runs every fixture against `wasm`; prints one line per fixture, and the diff of each
    /// that fails (`Check`, exit 1 when any fails) or the file it rewrote (`Bless`).
    pub async fn run(
        &self,
        wasm: &Path,
        cache: Option<PathBuf>,
        mode: Mode,
    ) -> Result<(), RunError> {
        if self.0.is_empty() {
            println!(
                "no fixtures in {DIR}/: nothing to compare (add one like `{DIR}/basic.json` of `screamer plugin new`)"
            );
            return Ok(());
        }
        let runtime = PluginRuntime::new(RuntimeOptions::cached(
            cache.or_else(PluginRuntime::default_cache_dir),
        ))?;
        let mut failed = 0;
        for (file, fixture) in &self.0 {
            let verdict = match (run_one(&runtime, wasm, fixture).await?, mode) {
                (Ok(made), Mode::Check) => made.verdict(fixture),
                (Ok(made), Mode::Bless) => {
                    made.bless(file)?;
                    Verdict::Blessed
                }
                (Err(refused), _) => Verdict::Fail(refused),
            };
            failed += usize::from(verdict.report(file, fixture));
        }
        let total = self.0.len();
        let done = match mode {
            Mode::Check => "passed",
            Mode::Bless => "blessed",
        };
        println!(
            "{total} fixtures: {} {done}, {failed} failed",
            total - failed
        );
        if failed > 0 {
            return Err(RunError::Failed(format!(
                "{failed} of {total} fixtures failed"
            )));
        }
        Ok(())
    }
}

/// Whether `file` is the fixture `name` (`basic` or `basic.json`).
fn is_named(file: &Path, name: &str) -> bool {
    let name = name.strip_suffix(".json").unwrap_or(name);
    file.file_stem().is_some_and(|stem| stem == name)
}

fn names(files: &[PathBuf]) -> String {
    let names: Vec<String> = files
        .iter()
        .filter_map(|f| f.file_stem().map(|s| s.to_string_lossy().into_owned()))
        .collect();
    if names.is_empty() {
        "none".to_owned()
    } else {
        names.join(", ")
    }
}

fn fixture_files(dir: &Path) -> Result<Vec<PathBuf>, RunError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => {
            return Err(RunError::Input(format!(
                "{}: cannot list fixtures: {e}",
                dir.display()
            )));
        }
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    Ok(files)
}

/// A fixture file, its records checked: a mistake names the file and the record.
fn read(file: &Path) -> Result<Fixture, RunError> {
    let bad = |what: String| RunError::Input(format!("{}: {what}", file.display()));
    let text = std::fs::read_to_string(file).map_err(|e| bad(format!("cannot read: {e}")))?;
    let fixture: Fixture = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
    fn named<'a>(section: &str, values: &'a [Value]) -> impl Iterator<Item = (String, &'a Value)> {
        values
            .iter()
            .enumerate()
            .map(move |(i, v)| (format!("{section}[{i}]"), v))
    }
    let mut records: Vec<(String, &Value)> = Vec::new();
    records.extend(named("input", &fixture.input));
    records.extend(named("output", &fixture.output));
    for (output, values) in &fixture.side_outputs {
        records.extend(named(&format!("side_outputs.{output}"), values));
    }
    for (i, d) in fixture.dead_letters.iter().enumerate() {
        records.push((format!("dead_letters[{i}].record"), &d.record));
    }
    for (at, value) in records {
        InputLine::from_value(value).map_err(|e| bad(format!("{at}: {e}")))?;
    }
    Ok(fixture)
}

enum Verdict {
    Pass,
    /// What differs, readable.
    Fail(String),
    /// The fixture now expects what the component made.
    Blessed,
}

impl Verdict {
    /// Prints the fixture's line (and what failed); whether it failed.
    fn report(&self, file: &Path, fixture: &Fixture) -> bool {
        match self {
            Verdict::Pass => println!("fixture {} ... ok", file.display()),
            Verdict::Blessed => println!("fixture {} ... blessed", file.display()),
            Verdict::Fail(report) => {
                println!("fixture {} ... FAILED", file.display());
                if let Some(description) = &fixture.description {
                    println!("  ({description})");
                }
                println!("{report}");
            }
        }
        matches!(self, Verdict::Fail(_))
    }
}

/// What the component made of a fixture's input.
struct Made {
    main: Vec<Value>,
    /// By the side outputs the fixture names.
    side: BTreeMap<String, Vec<Value>>,
    dead_letters: Vec<Value>,
}

impl Made {
    fn verdict(&self, fixture: &Fixture) -> Verdict {
        let mut report = String::new();
        compare(&mut report, "main output", &fixture.output, &self.main);
        for (name, made) in &self.side {
            compare(
                &mut report,
                &format!("side output {name:?}"),
                &fixture.side_outputs[name],
                made,
            );
        }
        compare_dead_letters(&mut report, &fixture.dead_letters, &self.dead_letters);
        if report.is_empty() {
            Verdict::Pass
        } else {
            Verdict::Fail(report)
        }
    }

    /// Rewrites `file` with these as its expectations, its other fields as they were;
    /// records without the fields that hold their defaults.
    fn bless(&self, file: &Path) -> Result<(), RunError> {
        let defaults = InputLine::defaults();
        let shown = |records: &[Value]| -> Value {
            records.iter().map(|r| readable(r, &defaults)).collect()
        };
        let text = std::fs::read_to_string(file)?;
        let mut doc: Map<String, Value> = serde_json::from_str(&text)
            .map_err(|e| RunError::Input(format!("{}: {e}", file.display())))?;
        doc.insert("output".to_owned(), shown(&self.main));
        if !self.side.is_empty() {
            let side = self
                .side
                .iter()
                .map(|(name, made)| (name.clone(), shown(made)))
                .collect();
            doc.insert("side_outputs".to_owned(), Value::Object(side));
        }
        let dead: Vec<Value> = self
            .dead_letters
            .iter()
            .map(|d| serde_json::json!({"error": d["error"], "record": d["record"]}))
            .collect();
        if dead.is_empty() {
            doc.remove("dead_letters");
        } else {
            doc.insert("dead_letters".to_owned(), shown(&dead));
        }
        let text = serde_json::to_string_pretty(&doc).expect("values serialize") + "\n";
        std::fs::write(file, text)?;
        Ok(())
    }
}

/// Runs a fixture's input through `wasm` with its configuration: what came out, or why
/// `init` refused the configuration.
async fn run_one(
    runtime: &Arc<PluginRuntime>,
    wasm: &Path,
    fixture: &Fixture,
) -> Result<Result<Made, String>, RunError> {
    let mut spec = PluginSpec::new(wasm);
    if let Some(config) = &fixture.config {
        spec.config = Value::Object(config.clone());
    }
    let version = match runtime.load(&spec).await {
        Ok(v) => v,
        Err(PluginError::Config { message, .. }) => {
            return Ok(Err(format!(
                "  init refused the fixture's configuration: {message}"
            )));
        }
        Err(e) => return Err(e.into()),
    };
    let main = Collected::new("main");
    let dead_letters = Collected::new("dead letters");
    let mut pipeline = Pipeline::new(main.destination(), dead_letters.destination());
    let mut side = BTreeMap::new();
    for name in fixture.side_outputs.keys() {
        let collected = Collected::new(name);
        pipeline = pipeline.with_side_output(name.clone(), collected.destination());
        side.insert(name.clone(), collected);
    }
    let chain = Arc::new(Chain::new(vec![version], DEFAULT_BATCH_SIZE));
    let pipeline = pipeline.with_chain(chain);
    let lines: Vec<InputLine> = fixture.input.iter().map(parsed).collect();
    let inputs: Vec<Input<'_>> = lines.iter().map(InputLine::input).collect();
    pipeline
        .process(&inputs, None)
        .await
        .map_err(|e| RunError::Io(std::io::Error::other(e)))?;
    Ok(Ok(Made {
        main: main.take(),
        side: side.into_iter().map(|(k, c)| (k, c.take())).collect(),
        dead_letters: dead_letters.take(),
    }))
}

/// A record of a fixture, checked by [`read`].
fn parsed(value: &Value) -> InputLine {
    InputLine::from_value(value).expect("fixture records are checked when read")
}

/// Appends to `report` the diff of `expected` and `actual` records, when they differ.
fn compare(report: &mut String, what: &str, expected: &[Value], actual: &[Value]) {
    let expected: Vec<Value> = expected.iter().map(|v| parsed(v).to_value()).collect();
    if expected != actual {
        diff(report, what, &expected, actual);
    }
}

/// Dead letters: records exactly, errors by the text they must contain. An error that
/// contains its expected text is shown whole on both sides, so only real differences show.
fn compare_dead_letters(report: &mut String, expected: &[ExpectedDeadLetter], actual: &[Value]) {
    let actual: Vec<Value> = actual
        .iter()
        .map(|line| {
            serde_json::json!({
                "error": line["error"],
                "record": line["record"],
            })
        })
        .collect();
    let expected: Vec<Value> = expected
        .iter()
        .enumerate()
        .map(|(i, d)| {
            let error = match actual.get(i).and_then(|a| a["error"].as_str()) {
                Some(whole) if whole.contains(&d.error) => whole.to_owned(),
                _ => d.error.clone(),
            };
            serde_json::json!({"error": error, "record": parsed(&d.record).to_value()})
        })
        .collect();
    if expected != actual {
        diff(report, "dead letters", &expected, &actual);
    }
}

fn diff(report: &mut String, what: &str, expected: &[Value], actual: &[Value]) {
    let defaults = InputLine::defaults();
    let render = |records: &[Value]| {
        let shown: Vec<Value> = records.iter().map(|r| readable(r, &defaults)).collect();
        serde_json::to_string_pretty(&shown).expect("values serialize") + "\n"
    };
    let (expected, actual) = (render(expected), render(actual));
    let diff = similar::TextDiff::from_lines(&expected, &actual);
    report.push_str(&format!("  {what} differs (- expected, + actual):\n"));
    for line in diff
        .unified_diff()
        .context_radius(3)
        .header("expected", "actual")
        .to_string()
        .lines()
    {
        report.push_str("    ");
        report.push_str(line);
        report.push('\n');
    }
}

/// A record (or a dead letter holding one) without the fields at their defaults, its
/// nested objects' keys sorted: what a reader needs to see a difference.
fn readable(value: &Value, defaults: &Map<String, Value>) -> Value {
    let Value::Object(fields) = value else {
        return value.clone();
    };
    let is_record = fields.contains_key("mods");
    Value::Object(
        fields
            .iter()
            .filter(|(k, v)| !is_record || defaults.get(*k) != Some(v))
            .map(|(k, v)| {
                let v = match v {
                    Value::Object(_) if k == "record" => readable(v, defaults),
                    other => sorted(other),
                };
                (k.clone(), v)
            })
            .collect(),
    )
}

fn sorted(value: &Value) -> Value {
    match value {
        Value::Object(fields) => {
            let ordered: BTreeMap<&String, Value> =
                fields.iter().map(|(k, v)| (k, sorted(v))).collect();
            Value::Object(ordered.into_iter().map(|(k, v)| (k.clone(), v)).collect())
        }
        Value::Array(items) => Value::Array(items.iter().map(sorted).collect()),
        other => other.clone(),
    }
}

/// A destination that keeps what it is sent, for comparing.
#[derive(Clone)]
struct Collected {
    name: String,
    records: Arc<Mutex<Vec<Value>>>,
}

impl Collected {
    fn new(name: &str) -> Self {
        Collected {
            name: name.to_owned(),
            records: Arc::default(),
        }
    }

    fn destination(&self) -> Box<dyn Destination> {
        Box::new(self.clone())
    }

    fn take(&self) -> Vec<Value> {
        std::mem::take(&mut self.records.lock().expect("not poisoned"))
    }
}

#[async_trait::async_trait]
impl Destination for Collected {
    fn name(&self) -> &str {
        &self.name
    }

    async fn send(&self, batch: Batch) -> Result<(), DestinationError> {
        let mut records = self.records.lock().expect("not poisoned");
        for payload in batch.payloads() {
            records.push(serde_json::from_slice(payload).expect("the host writes JSON"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_difference_shows_only_what_differs() {
        let expected = [json!({"table_name": "Users", "mod_type": "INSERT",
            "mods": [{"keys": {"Id": "1"}, "new_values": {"Name": "Ada"}}]})];
        let actual = [json!({"table_name": "Users", "mod_type": "INSERT",
            "mods": [{"keys": {"Id": "1"}, "new_values": {"Name": "Bob"}}]})];
        let actual: Vec<Value> = actual.iter().map(|v| parsed(v).to_value()).collect();
        let mut report = String::new();
        compare(&mut report, "main output", &expected, &actual);
        assert!(report.contains("-          \"Name\": \"Ada\""), "{report}");
        assert!(report.contains("+          \"Name\": \"Bob\""), "{report}");
        // Defaults stay out of the picture.
        assert!(!report.contains("partition_token"), "{report}");
        let mut same = String::new();
        compare(
            &mut same,
            "main output",
            &expected[..],
            &[parsed(&expected[0]).to_value()],
        );
        assert_eq!(same, "");
    }

    #[test]
    fn a_dead_letter_error_matches_by_what_it_contains() {
        let record = json!({"table_name": "T", "mod_type": "DELETE", "mods": []});
        let actual = [json!({"plugin": "p@1", "plugin_sha256": "ab", "error":
            "plugin p@1 failed the record: no Total", "record": parsed(&record).to_value()})];
        let expect = |error: &str| {
            vec![ExpectedDeadLetter {
                error: error.to_owned(),
                record: record.clone(),
            }]
        };
        let mut report = String::new();
        compare_dead_letters(&mut report, &expect("no Total"), &actual);
        assert_eq!(report, "");
        compare_dead_letters(&mut report, &expect("no Price"), &actual);
        assert!(report.contains("-    \"error\": \"no Price\""), "{report}");
    }
}
