//! Loading plugins: one engine, compile-once with an on-disk cache, world validation, and a
//! trial start (`info` + `init`) before a version is ever used.
//!
//! Invariants: a [`PluginVersion`] exists only for a file that is a component of this
//! world, whose imports the host provides, and whose `init` accepted its configuration
//! within its deadline. Cached artifacts are loaded only when they verify (see
//! [`cache`](super::cache)). Compiling is CPU work and runs on a blocking thread.

use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use tokio::time::Instant as Deadline;

use sha2::{Digest, Sha256};
use wasmtime::component::{Component, Linker};
use wasmtime::{Config, Engine};

use super::bindings::{self, HostState, PROCESSOR_EXPORT, PluginInfo, PluginPre};
use super::cache::ArtifactCache;
use super::failure::PluginFailure;
use super::instance::{InitError, Instance};
use super::version::{EpochTicker, PluginVersion};
use super::{PluginError, PluginSpec};

/// The engine, the linker and the compiled-artifact cache shared by every plugin.
pub struct PluginRuntime {
    engine: Engine,
    linker: Linker<HostState>,
    cache: Option<ArtifactCache>,
    compatibility: String,
    ticker: Arc<EpochTicker>,
}

/// What `screamer plugin check` reports about a component.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ComponentReport {
    /// The component file.
    pub path: PathBuf,
    /// The plugin's name, from its `info`.
    pub name: String,
    /// The plugin's version, from its `info`.
    pub version: String,
    /// SHA-256 of the file, hex.
    pub sha256: String,
    /// The world it targets.
    pub world: &'static str,
    /// The interfaces it exports.
    pub exports: Vec<String>,
    /// The interfaces it imports.
    pub imports: Vec<String>,
    /// How long compiling or loading from the cache took.
    pub load_millis: f64,
    /// What `init` answered for the configuration tried: `None` when it accepted it, else
    /// its refusal (a plugin that needs configuration refuses the empty one).
    pub init_refused: Option<String>,
}

/// How a [`PluginRuntime`] compiles and keeps plugins.
#[derive(Debug, Clone, Default)]
pub struct RuntimeOptions {
    /// Where compiled plugins are cached (none: compile every time); it must be private to
    /// this user (see the README's "Cache").
    pub cache_dir: Option<PathBuf>,
    /// Write `/tmp/perf-PID.map` naming the plugins' compiled functions, so that `perf
    /// report` shows guest functions by name (docs/write-a-plugin.md, "Profiling").
    pub perf_map: bool,
}

impl RuntimeOptions {
    /// Caching in `cache_dir`, nothing else.
    pub fn cached(cache_dir: Option<PathBuf>) -> Self {
        RuntimeOptions {
            cache_dir,
            perf_map: false,
        }
    }
}

impl PluginRuntime {
    /// A runtime: one engine (epoch interruption on: call deadlines), the linker, the cache.
    pub fn new(options: RuntimeOptions) -> Result<Arc<Self>, PluginError> {
        let mut config = Config::new();
        config.epoch_interruption(true);
        if options.perf_map {
            config.profiler(wasmtime::ProfilingStrategy::PerfMap);
        }
        let engine = Engine::new(&config).map_err(|e| PluginError::Engine(e.to_string()))?;
        let linker = bindings::linker(&engine).map_err(|e| PluginError::Engine(e.to_string()))?;
        let mut h = DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut h);
        let compatibility = format!("{:016x}", h.finish());
        let cache = options
            .cache_dir
            .as_deref()
            .map(ArtifactCache::open)
            .transpose()?;
        let ticker = EpochTicker::start(engine.clone())
            .map_err(|e| PluginError::Engine(format!("cannot start the epoch ticker: {e}")))?;
        Ok(Arc::new(PluginRuntime {
            engine,
            linker,
            cache,
            compatibility,
            ticker,
        }))
    }

    /// `$XDG_CACHE_HOME/screamer/plugins`, else `~/.cache/screamer/plugins`.
    pub fn default_cache_dir() -> Option<PathBuf> {
        let base = std::env::var_os("XDG_CACHE_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
        Some(base.join("screamer").join("plugins"))
    }

    /// Loads `spec`: compiles (or reuses the cached artifact), validates the world, and
    /// starts a trial instance whose `init` must accept the configuration.
    pub async fn load(
        self: &Arc<Self>,
        spec: &PluginSpec,
    ) -> Result<Arc<PluginVersion>, PluginError> {
        let (version, report) = self.load_with_report(spec).await?;
        match report.init_refused {
            None => Ok(version),
            Some(message) => Err(PluginError::Config {
                plugin: version.tag().to_owned(),
                message,
            }),
        }
    }

    /// Describes the component as [`PluginRuntime::load`] finds it; a refusal of the
    /// configuration by `init` is part of the report, not an error.
    pub async fn check(
        self: &Arc<Self>,
        spec: &PluginSpec,
    ) -> Result<ComponentReport, PluginError> {
        self.load_with_report(spec).await.map(|(_, r)| r)
    }

    async fn load_with_report(
        self: &Arc<Self>,
        spec: &PluginSpec,
    ) -> Result<(Arc<PluginVersion>, ComponentReport), PluginError> {
        let started = Instant::now();
        let (this, path) = (self.clone(), spec.path.clone());
        let prepared = tokio::task::spawn_blocking(move || this.prepare(&path))
            .await
            .map_err(|e| PluginError::Engine(format!("plugin compiler: {e}")))??;
        let config_text = spec.config.to_string();
        let (info, tag, init_refused) = self.trial(&prepared.pre, spec, &config_text).await?;
        let load_time = started.elapsed();
        let version = Arc::new(PluginVersion {
            name: info.name.clone(),
            version: info.version.clone(),
            sha256: prepared.sha256.clone(),
            spec: spec.clone(),
            pre: prepared.pre,
            engine: self.engine.clone(),
            config_text,
            tag,
            reads_origins: prepared.imports.iter().any(|i| i == bindings::BATCH_IMPORT),
            _ticker: self.ticker.clone(),
            load_time,
            from_cache: prepared.from_cache,
        });
        let report = ComponentReport {
            path: spec.path.clone(),
            name: info.name,
            version: info.version,
            sha256: prepared.sha256,
            world: super::WORLD,
            exports: prepared.exports,
            imports: prepared.imports,
            load_millis: load_time.as_secs_f64() * 1e3,
            init_refused,
        };
        Ok((version, report))
    }

    /// Reads, compiles (or loads from the cache) and type-checks a file against the world.
    fn prepare(&self, path: &Path) -> Result<Prepared, PluginError> {
        let bytes = std::fs::read(path).map_err(|source| PluginError::Read {
            path: path.to_owned(),
            source,
        })?;
        check_header(path, &bytes)?;
        let sha256 = hex(&Sha256::digest(&bytes));
        let (component, from_cache) = self.compile(path, &bytes, &sha256)?;
        let ty = component.component_type();
        let exports: Vec<String> = ty
            .exports(&self.engine)
            .map(|(n, _)| n.to_owned())
            .collect();
        let imports: Vec<String> = ty
            .imports(&self.engine)
            .map(|(n, _)| n.to_owned())
            .collect();
        check_world(path, &exports, &bytes)?;
        let instance_pre = self.linker.instantiate_pre(&component).map_err(|e| {
            // A cached artifact skipped the check before compiling: name them now.
            check_imports(path, &imports)
                .err()
                .unwrap_or_else(|| PluginError::Imports {
                    path: path.to_owned(),
                    message: e.root_cause().to_string(),
                })
        })?;
        let pre = PluginPre::new(instance_pre).map_err(|e| PluginError::WrongWorld {
            path: path.to_owned(),
            exports: format!("{} ({})", exports.join(", "), e.root_cause()),
        })?;
        Ok(Prepared {
            sha256,
            from_cache,
            exports,
            imports,
            pre,
        })
    }

    /// Starts a trial instance: who the plugin says it is (`name@version`), and whether its
    /// `init` takes the configuration.
    async fn trial(
        &self,
        pre: &PluginPre<HostState>,
        spec: &PluginSpec,
        config_text: &str,
    ) -> Result<(PluginInfo, Arc<str>, Option<String>), PluginError> {
        let file_tag: Arc<str> = spec
            .path
            .file_name()
            .map(|n| n.to_string_lossy().into())
            .unwrap_or_else(|| "plugin".into());
        let start_failed = |plugin: &str| {
            let plugin = plugin.to_owned();
            move |failure: PluginFailure| PluginError::Start {
                plugin,
                message: failure.to_string(),
            }
        };
        let deadline = || Deadline::now() + spec.limits.timeout;
        let mut trial =
            Instance::instantiate(pre, &self.engine, spec, file_tag.clone(), deadline())
                .await
                .map_err(start_failed(&file_tag))?;
        // The running instances call `init` again, and their lines are the ones logged.
        trial.quiet();
        let info = trial
            .info(deadline())
            .await
            .map_err(start_failed(&file_tag))?;
        let tag: Arc<str> = format!("{}@{}", info.name, info.version).into();
        trial.set_tag(tag.clone());
        let refused = match trial.init(config_text, deadline()).await {
            Ok(()) => None,
            Err(InitError::Refused(message)) => Some(message),
            Err(InitError::Trapped(message)) => return Err(start_failed(&tag)(message)),
        };
        Ok((info, tag, refused))
    }

    /// The compiled component, from the cache when this host compiled it before.
    fn compile(
        &self,
        path: &Path,
        bytes: &[u8],
        sha256: &str,
    ) -> Result<(Component, bool), PluginError> {
        if let Some(cached) = self
            .cache
            .as_ref()
            .and_then(|c| c.load(&self.engine, sha256, &self.compatibility))
        {
            return Ok((cached, true));
        }
        // Compiling can take many seconds: what cannot be linked is refused first.
        let imports = top_level_imports(bytes).map_err(|e| PluginError::Invalid {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
        check_imports(path, &imports)?;
        let component = Component::new(&self.engine, bytes).map_err(|e| PluginError::Invalid {
            path: path.to_owned(),
            message: e.root_cause().to_string(),
        })?;
        if let Some(cache) = &self.cache {
            cache.store(&component, sha256, &self.compatibility);
        }
        Ok((component, false))
    }
}

/// A file compiled and checked against the world, not yet started.
struct Prepared {
    sha256: String,
    from_cache: bool,
    exports: Vec<String>,
    imports: Vec<String>,
    pre: PluginPre<HostState>,
}

fn check_header(path: &Path, bytes: &[u8]) -> Result<(), PluginError> {
    if bytes.len() < 8 || &bytes[..4] != b"\0asm" {
        return Err(PluginError::NotWasm {
            path: path.to_owned(),
        });
    }
    // Bytes 4..8: version and layer; core modules are layer 0.
    if bytes[6..8] == [0, 0] {
        return Err(PluginError::CoreModule {
            path: path.to_owned(),
        });
    }
    Ok(())
}

/// The interfaces the host links, by package; a component importing anything else cannot
/// be instantiated.
const PROVIDED: [&str; 7] = [
    "wasi:io/",
    "wasi:clocks/",
    "wasi:random/",
    "wasi:cli/",
    "wasi:filesystem/",
    "wasi:sockets/",
    "screamer:plugin/",
];

/// Refuses a component that imports what the host does not provide, naming every such
/// import and the known fix.
fn check_imports(path: &Path, imports: &[String]) -> Result<(), PluginError> {
    let missing: Vec<&str> = imports
        .iter()
        .map(String::as_str)
        .filter(|name| !PROVIDED.iter().any(|p| name.starts_with(p)))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let mut message = missing.join(", ");
    if missing.iter().any(|m| m.starts_with("wasi:http/")) {
        message += " (a JavaScript component built with componentize-js or jco's default \
                     StarlingMonkey engine imports wasi:http: build it with \
                     `--disable http fetch-event`, or with jco's QuickJS backend)";
    }
    Err(PluginError::Imports {
        path: path.to_owned(),
        message,
    })
}

/// The names a component imports at its top level (not those of components or modules
/// nested in it, which it links itself).
fn top_level_imports(bytes: &[u8]) -> Result<Vec<String>, wasmtime::wasmparser::BinaryReaderError> {
    use wasmtime::wasmparser::{Parser, Payload};
    let (mut depth, mut names) = (0usize, Vec::new());
    for payload in Parser::new(0).parse_all(bytes) {
        match payload? {
            Payload::ModuleSection { .. } | Payload::ComponentSection { .. } => depth += 1,
            Payload::End(_) => depth = depth.saturating_sub(1),
            Payload::ComponentImportSection(imports) if depth == 0 => {
                for import in imports {
                    names.push(import?.name.name.to_owned());
                }
            }
            _ => {}
        }
    }
    Ok(names)
}

/// Whether `exports` (of `component`) hold this world's processor.
fn check_world(path: &Path, exports: &[String], component: &[u8]) -> Result<(), PluginError> {
    if exports.iter().any(|e| e == PROCESSOR_EXPORT) {
        return Ok(());
    }
    if let Some(other) = exports
        .iter()
        .find(|e| e.starts_with("screamer:plugin/processor@"))
    {
        return Err(PluginError::WrongVersion {
            path: path.to_owned(),
            found: other.replace("/processor", ""),
            built_with: super::GuestLanguage::of(component),
        });
    }
    Err(PluginError::WrongWorld {
        path: path.to_owned(),
        exports: if exports.is_empty() {
            "nothing".to_owned()
        } else {
            exports.join(", ")
        },
    })
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::with_capacity(64), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_tell_components_from_modules_and_other_files() {
        let p = Path::new("x.wasm");
        assert!(matches!(
            check_header(p, b"hello world"),
            Err(PluginError::NotWasm { .. })
        ));
        let core = [0, b'a', b's', b'm', 1, 0, 0, 0];
        assert!(matches!(
            check_header(p, &core),
            Err(PluginError::CoreModule { .. })
        ));
        let component = [0, b'a', b's', b'm', 0x0d, 0, 1, 0];
        assert!(check_header(p, &component).is_ok());
    }

    #[test]
    fn world_errors_say_what_the_component_exports() {
        let p = Path::new("x.wasm");
        let err = check_world(p, &["wasi:cli/run@0.2.6".to_owned()], b"").unwrap_err();
        assert_eq!(
            err.to_string(),
            "plugin x.wasm: not a screamer:plugin@0.3.0 plugin: it exports wasi:cli/run@0.2.6; \
             expected an export screamer:plugin/processor@0.3.0"
        );
        let old = ["screamer:plugin/processor@0.2.0".to_owned()];
        let err = check_world(p, &old, b"").unwrap_err();
        assert_eq!(
            err.to_string(),
            "plugin x.wasm: built for screamer:plugin@0.2.0; this host runs screamer:plugin@0.3.0 \
             (rebuild it for this world: docs/write-a-plugin.md)"
        );
        // The fix in the component's own language, named by what its toolchain left.
        let said = |component: &[u8]| check_world(p, &old, component).unwrap_err().to_string();
        assert!(
            said(b"\x0cprocessed-by\x03\rwit-component\x10wit-bindgen-rust")
                .ends_with("(a Rust component: rebuild it with screamer-plugin-sdk 0.3)")
        );
        assert!(said(b"libcomponentize_py_runtime.so").ends_with(
            "(a Python component: rebuild it with the wit/plugin.wit of this world, which \
             `screamer plugin new NAME --lang python` writes)"
        ));
        assert!(said(b"componentize-qjs:shim.js").contains("a JavaScript component"));
        assert!(said(b"\x0dwit-bindgen-c\x060.63.0").ends_with(
            "(a C component: rebuild it with the bindings of this world, which \
             `screamer plugin new NAME --lang c` writes)"
        ));
    }
}
