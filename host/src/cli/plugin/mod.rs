//! `screamer plugin ...`: plugins without Spanner, for their authors.
//!
//! Place in the flow: a side door. `new`, `build` and `test` work on a plugin project
//! ([`project`], [`fixture`]); `check` loads a component exactly as a run would (world,
//! imports, `info`, `init` with the given configuration) and prints what it is; `run` feeds
//! NDJSON records through the same pipeline the main command uses ([`run`]), so what works
//! here works on a stream; `sample` prints records to start from ([`sample`]).

mod fixture;
mod input;
mod project;
mod run;
mod sample;
mod sdk;
mod toolchain;

use std::path::PathBuf;

use serde_json::Value;

use super::RunError;
use super::config::PipelineArgs;
use project::{Language, Project};
use screamer::plugin::{PluginError, PluginRuntime, PluginSpec, RuntimeOptions};
use toolchain::ToolOptions;

#[derive(Debug, clap::Subcommand)]
pub enum PluginCommand {
    /// Start a plugin project in ./NAME: code, a fixture test, a README.
    New {
        /// The plugin's name: lowercase letters, digits and dashes.
        name: String,
        /// The language to write it in.
        #[arg(long, value_enum)]
        lang: Language,
        /// Rust: depend on the SDK at this path instead of vendoring it into the project.
        #[arg(long, value_name = "DIR")]
        sdk: Option<PathBuf>,
    },
    /// Build the project in DIR (default: here) into DIR/NAME.wasm.
    Build {
        #[arg(default_value = ".")]
        dir: PathBuf,
        #[command(flatten)]
        tools: ToolOptions,
    },
    /// Build the project in DIR (default: here), run its native tests (Rust) and every
    /// fixture in DIR/fixtures against the component.
    Test(TestArgs),
    /// Validate a component against the plugin world and print what it is and exports.
    Check {
        /// The `.wasm` component.
        file: PathBuf,
        /// Configuration to try `init` with (a JSON object; default `{}`).
        #[arg(long = "plugin-config", value_name = "JSON")]
        plugin_config: Option<String>,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
        /// Directory for compiled plugins (default ~/.cache/screamer/plugins).
        #[arg(long, value_name = "DIR", env = "SCREAMER_PLUGIN_CACHE")]
        plugin_cache: Option<PathBuf>,
    },
    /// Run a chain of plugins over NDJSON records from stdin; outputs go to stdout.
    Run {
        /// The `.wasm` components, in chain order (after the `--config` file's plugins).
        files: Vec<PathBuf>,
        #[command(flatten)]
        pipeline: PipelineArgs,
        /// At the end, print each plugin's calls, outcomes and time per record to stderr.
        #[arg(long)]
        stats: bool,
        /// Swap in a plugin file's new version when it changes (or on SIGHUP), as a
        /// stream run does; the next lines go through it.
        #[arg(long)]
        watch: bool,
    },
    /// Print sample records (an INSERT, an UPDATE and a DELETE) as screamer prints them.
    Sample(sample::SampleArgs),
}

pub async fn run(command: PluginCommand) -> Result<(), RunError> {
    // An author's tools end quietly when the reader of their output goes away
    // (`plugin sample | head -3`), as Unix tools do, instead of panicking on the write.
    // SAFETY: restoring the default action of SIGPIPE, before any thread writes.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    match command {
        PluginCommand::New { name, lang, sdk } => {
            let project = Project::create(&name, lang, sdk.as_deref())?;
            // `plugin build` installs a missing toolchain: nothing to set up first.
            println!(
                "created {}/ ({}): next, `cd {} && screamer plugin test`",
                project.dir.display(),
                project.language,
                project.dir.display(),
            );
            Ok(())
        }
        PluginCommand::Build { dir, tools } => {
            Project::open(&dir)?.build(tools.install())?;
            Ok(())
        }
        PluginCommand::Test(args) => test(args).await,
        PluginCommand::Check {
            file,
            plugin_config,
            json,
            plugin_cache,
        } => check(file, plugin_config, json, plugin_cache).await,
        PluginCommand::Run {
            files,
            pipeline,
            stats,
            watch,
        } => run::run_stdin(&files, &pipeline, run::RunOptions { stats, watch }).await,
        PluginCommand::Sample(args) => sample::print(&args),
    }
}

/// `plugin test`'s options.
#[derive(Debug, clap::Args)]
pub struct TestArgs {
    #[arg(default_value = ".")]
    dir: PathBuf,
    /// Test this component, built anywhere: DIR needs only its fixtures, nothing is built.
    #[arg(long, value_name = "FILE", conflicts_with = "no_build")]
    wasm: Option<PathBuf>,
    /// Run only this fixture (its file name, `.json` optional); repeatable.
    #[arg(long = "fixture", value_name = "NAME")]
    fixtures: Vec<String>,
    /// Test the component built last (DIR/NAME.wasm) as it is: no build, no native tests.
    #[arg(long)]
    no_build: bool,
    /// Write what the component makes into the fixtures as what they expect.
    #[arg(long)]
    bless: bool,
    #[command(flatten)]
    tools: ToolOptions,
    /// Directory for compiled plugins (default ~/.cache/screamer/plugins).
    #[arg(long, value_name = "DIR", env = "SCREAMER_PLUGIN_CACHE")]
    plugin_cache: Option<PathBuf>,
}

/// Fixtures first (a mistake in one is found before a build), then the component: the one
/// given, the one built last, or a build and the native tests; then every fixture.
async fn test(args: TestArgs) -> Result<(), RunError> {
    let fixtures =
        fixture::Fixtures::read(&toolchain::in_dir(&args.dir, fixture::DIR), &args.fixtures)?;
    let wasm = match args.wasm {
        Some(wasm) => wasm,
        None => {
            let project = Project::open(&args.dir)?;
            if args.no_build {
                project.built()?
            } else {
                let wasm = project.build(args.tools.install())?;
                project.native_tests()?;
                wasm
            }
        }
    };
    let mode = if args.bless {
        fixture::Mode::Bless
    } else {
        fixture::Mode::Check
    };
    fixtures.run(&wasm, args.plugin_cache, mode).await
}

async fn check(
    file: PathBuf,
    config: Option<String>,
    json: bool,
    cache: Option<PathBuf>,
) -> Result<(), RunError> {
    let mut spec = PluginSpec::new(file);
    let config_given = config.is_some();
    if let Some(text) = config {
        spec.config = serde_json::from_str::<Value>(&text)
            .ok()
            .filter(Value::is_object)
            .ok_or_else(|| {
                RunError::Input(format!("--plugin-config {text:?}: expected a JSON object"))
            })?;
    }
    let runtime = PluginRuntime::new(RuntimeOptions::cached(
        cache.or_else(PluginRuntime::default_cache_dir),
    ))?;
    let report = runtime.check(&spec).await?;
    // A plugin that needs configuration is valid; only a configuration given here and
    // refused is an error.
    if let (true, Some(message)) = (config_given, &report.init_refused) {
        return Err(PluginError::Config {
            plugin: format!("{}@{}", report.name, report.version),
            message: message.clone(),
        }
        .into());
    }
    if json {
        println!(
            "{}",
            serde_json::to_string(&report).expect("a report serializes")
        );
    } else {
        println!("{}: ok", report.path.display());
        println!("  plugin:  {} {}", report.name, report.version);
        println!("  world:   {}", report.world);
        // Toolchains export what they need themselves (jco `init`, componentize-py
        // `exports`): the host never calls those.
        let (world, toolchain): (Vec<&String>, Vec<&String>) = report
            .exports
            .iter()
            .partition(|e| e.starts_with("screamer:plugin/"));
        println!("  exports: {}", join(&world));
        if !toolchain.is_empty() {
            println!(
                "           (and the toolchain's own, never called: {})",
                join(&toolchain)
            );
        }
        println!("  imports: {}", report.imports.join(", "));
        println!("  sha256:  {}", report.sha256);
        println!("  load:    {:.1} ms", report.load_millis);
        if let Some(message) = &report.init_refused {
            println!("  init:    refuses the empty configuration: {message}");
            println!("           (give one with --plugin-config to check it)");
        }
    }
    Ok(())
}

fn join(names: &[&String]) -> String {
    names
        .iter()
        .map(|n| n.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}
