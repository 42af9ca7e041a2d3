//! `screamer plugin new` and `screamer plugin build`: a plugin project and its component.
//!
//! Place in the flow: before any of it, on an author's machine. A project is a directory
//! holding one plugin in one language, recognized by its manifest: `Cargo.toml` (Rust),
//! `pyproject.toml` beside `app.py` (Python), `package.json` beside `app.js` (JavaScript)
//! or `app.ts` (TypeScript), a `Makefile` beside `app.c` (C). Its name is the manifest's,
//! and `build` leaves the component in `NAME.wasm` beside it, calling the language's
//! toolchain; a toolchain that is missing is installed when it can be (the guest
//! toolchains pinned by the project), else one line saying how to install it (exit 2); a
//! build that fails is the toolchain's own messages and exit 1.
//!
//! The templates live in `host/templates/` and are compiled into the binary, with the
//! plugin world's WIT for the languages that need it in the project (`wit/plugin.wit`).

use std::fmt;
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use serde_json::Value;

use super::sdk::Sdk;
use super::toolchain::{self, Install, Pinned, run};
use crate::cli::RunError;

/// The languages `plugin new` writes and `plugin build` builds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Language {
    Rust,
    Python,
    #[value(alias = "js")]
    Javascript,
    #[value(alias = "ts")]
    Typescript,
    C,
}

impl fmt::Display for Language {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Language::Rust => "Rust",
            Language::Python => "Python",
            Language::Javascript => "JavaScript",
            Language::Typescript => "TypeScript",
            Language::C => "C",
        })
    }
}

/// The plugin world, as the SDK and the host build it.
const WIT: &str = include_str!("../../../../plugin-sdk/wit/plugin.wit");
const FIXTURE: &str = include_str!("../../../templates/fixtures/basic.json");

/// A template's files: path in the project, contents with `{{name}}`, `{{type}}` and
/// `{{sdk}}` to fill in.
fn template(language: Language) -> Vec<(&'static str, &'static str)> {
    let files = match language {
        Language::Rust => RUST,
        Language::Python => PYTHON,
        Language::Javascript => JAVASCRIPT,
        Language::Typescript => TYPESCRIPT,
        Language::C => C,
    };
    let mut files = files.to_vec();
    files.push(("fixtures/basic.json", FIXTURE));
    files
}

const RUST: &[(&str, &str)] = &[
    (
        "Cargo.toml",
        include_str!("../../../templates/rust/Cargo.toml"),
    ),
    (
        "src/lib.rs",
        include_str!("../../../templates/rust/src/lib.rs"),
    ),
    (
        "README.md",
        include_str!("../../../templates/rust/README.md"),
    ),
    (
        ".gitignore",
        include_str!("../../../templates/rust/gitignore"),
    ),
    (
        ".cargo/config.toml",
        include_str!("../../../templates/rust/cargo-config.toml"),
    ),
];

const PYTHON: &[(&str, &str)] = &[
    ("app.py", include_str!("../../../templates/python/app.py")),
    (
        "pyproject.toml",
        include_str!("../../../templates/python/pyproject.toml"),
    ),
    (
        "README.md",
        include_str!("../../../templates/python/README.md"),
    ),
    (
        ".gitignore",
        include_str!("../../../templates/python/gitignore"),
    ),
    ("wit/plugin.wit", WIT),
];

const JAVASCRIPT: &[(&str, &str)] = &[
    (
        "app.js",
        include_str!("../../../templates/javascript/app.js"),
    ),
    (
        "package.json",
        include_str!("../../../templates/javascript/package.json"),
    ),
    (
        "README.md",
        include_str!("../../../templates/javascript/README.md"),
    ),
    (
        ".gitignore",
        include_str!("../../../templates/javascript/gitignore"),
    ),
    ("wit/plugin.wit", WIT),
];

const TYPESCRIPT: &[(&str, &str)] = &[
    (
        "app.ts",
        include_str!("../../../templates/typescript/app.ts"),
    ),
    (
        "plugin.d.ts",
        include_str!("../../../templates/typescript/plugin.d.ts"),
    ),
    (
        "imports.d.ts",
        include_str!("../../../templates/typescript/imports.d.ts"),
    ),
    (
        "tsconfig.json",
        include_str!("../../../templates/typescript/tsconfig.json"),
    ),
    (
        "package.json",
        include_str!("../../../templates/typescript/package.json"),
    ),
    (
        "README.md",
        include_str!("../../../templates/typescript/README.md"),
    ),
    (
        ".gitignore",
        include_str!("../../../templates/typescript/gitignore"),
    ),
    ("wit/plugin.wit", WIT),
];

/// The C template's bindings, generated from the world by `wit-bindgen c` (wit-bindgen-cli
/// 0.63; CONTRIBUTING.md says when and how to regenerate them).
const C: &[(&str, &str)] = &[
    ("app.c", include_str!("../../../templates/c/app.c")),
    ("json.c", include_str!("../../../templates/c/json.c")),
    ("json.h", include_str!("../../../templates/c/json.h")),
    ("Makefile", include_str!("../../../templates/c/Makefile")),
    ("README.md", include_str!("../../../templates/c/README.md")),
    (".gitignore", include_str!("../../../templates/c/gitignore")),
    (
        "bindings/plugin.c",
        include_str!("../../../templates/c/bindings/plugin.c"),
    ),
    (
        "bindings/plugin.h",
        include_str!("../../../templates/c/bindings/plugin.h"),
    ),
    ("wit/plugin.wit", WIT),
];

/// The world's type, which `wasm-component-ld` reads from this object of the C bindings.
const C_COMPONENT_TYPE: (&str, &[u8]) = (
    "bindings/plugin_component_type.o",
    include_bytes!("../../../templates/c/bindings/plugin_component_type.o"),
);

/// A plugin project on disk.
#[derive(Debug)]
pub struct Project {
    pub dir: PathBuf,
    /// The manifest's name: the crate or package, and the component's file name.
    pub name: String,
    pub language: Language,
}

impl Project {
    /// Writes a new project for `name` in `./name`; `sdk` is a local SDK for Rust.
    pub fn create(name: &str, language: Language, sdk: Option<&Path>) -> Result<Self, RunError> {
        check_name(name)?;
        let dir = PathBuf::from(name);
        if dir.exists() {
            return Err(RunError::Input(format!(
                "plugin new {name}: ./{name} already exists: choose another name or remove it"
            )));
        }
        let sdk = match (sdk, language) {
            (None, _) => Sdk::Vendored,
            (Some(path), Language::Rust) => Sdk::local(path)?,
            (Some(_), _) => {
                return Err(RunError::Input(
                    "plugin new: --sdk is for --lang rust only".to_owned(),
                ));
            }
        };
        let type_name = camel_case(name);
        let dependency = sdk.dependency(&sdk_version());
        let mut files: Vec<(String, String)> = template(language)
            .into_iter()
            .map(|(path, text)| {
                let text = text
                    .replace("{{name}}", name)
                    .replace("{{type}}", &type_name)
                    .replace("{{sdk}}", &dependency);
                (path.to_owned(), text)
            })
            .collect();
        if language == Language::Rust {
            files.extend(sdk.files());
        }
        let mut files: Vec<(String, Vec<u8>)> = files
            .into_iter()
            .map(|(path, text)| (path, text.into_bytes()))
            .collect();
        if language == Language::C {
            let (path, bytes) = C_COMPONENT_TYPE;
            files.push((path.to_owned(), bytes.to_vec()));
        }
        for (path, text) in files {
            let file = dir.join(path);
            let written = file
                .parent()
                .map_or(Ok(()), std::fs::create_dir_all)
                .and_then(|()| std::fs::write(&file, text));
            written.map_err(|e| {
                RunError::Input(format!("plugin new {name}: {}: {e}", file.display()))
            })?;
        }
        Ok(Project {
            dir,
            name: name.to_owned(),
            language,
        })
    }

    /// The project in `dir`, by its manifest.
    pub fn open(dir: &Path) -> Result<Self, RunError> {
        let not_a_project = || {
            RunError::Input(format!(
                "{}: not a plugin project: expected Cargo.toml, app.py with pyproject.toml, \
                 app.js or app.ts with package.json, or app.c with a Makefile (start one with \
                 `screamer plugin new NAME --lang rust|python|javascript|typescript|c`, or \
                 test a component built elsewhere with `plugin test --wasm FILE`)",
                dir.display()
            ))
        };
        let (language, manifest) = if dir.join("Cargo.toml").is_file() {
            (Language::Rust, "Cargo.toml")
        } else if dir.join("app.py").is_file() && dir.join("pyproject.toml").is_file() {
            (Language::Python, "pyproject.toml")
        } else if dir.join("app.ts").is_file() && dir.join("package.json").is_file() {
            // Before JavaScript: a TypeScript project's build leaves an app.js beside it.
            (Language::Typescript, "package.json")
        } else if dir.join("app.js").is_file() && dir.join("package.json").is_file() {
            (Language::Javascript, "package.json")
        } else if dir.join("app.c").is_file() && dir.join("Makefile").is_file() {
            (Language::C, "Makefile")
        } else {
            return Err(not_a_project());
        };
        let path = dir.join(manifest);
        let name = manifest_name(&path, language)
            .map_err(|what| RunError::Input(format!("{}: {what}", path.display())))?;
        Ok(Project {
            dir: dir.to_path_buf(),
            name,
            language,
        })
    }

    /// `relative` in the project, as the author names it (no `./` when it is here).
    pub fn path(&self, relative: &str) -> PathBuf {
        toolchain::in_dir(&self.dir, relative)
    }

    /// Where `build` leaves the component.
    pub fn wasm(&self) -> PathBuf {
        self.path(&format!("{}.wasm", self.name))
    }

    /// The component built last, which must exist (`plugin test --no-build`).
    pub fn built(&self) -> Result<PathBuf, RunError> {
        let wasm = self.wasm();
        if !wasm.is_file() {
            return Err(RunError::Input(format!(
                "{} is not built: run `screamer plugin build` (or test without --no-build)",
                wasm.display()
            )));
        }
        Ok(wasm)
    }

    /// Builds the component into [`Project::wasm`] and says so on stderr. A Python or
    /// JavaScript build is skipped when the sources are those of the last build: their
    /// toolchains rebuild everything every time, in seconds (cargo decides for Rust).
    pub fn build(&self, install: Install) -> Result<PathBuf, RunError> {
        let started = Instant::now();
        let out = self.wasm();
        let sources = match self.language {
            Language::Rust | Language::C => None,
            Language::Python | Language::Javascript | Language::Typescript => {
                Some(sources_digest(&self.dir, self.language)?)
            }
        };
        let stamp = self.path(SOURCES_STAMP);
        if let Some(digest) = &sources
            && out.is_file()
            && std::fs::read_to_string(&stamp).is_ok_and(|last| last == *digest)
        {
            eprintln!(
                "{} is up to date (its sources did not change)",
                out.display()
            );
            return Ok(out);
        }
        eprintln!("building {} ({})", out.display(), self.language);
        match self.language {
            Language::Rust => self.build_rust(&out, install)?,
            Language::Python => self.build_python(&out, install)?,
            Language::Javascript => self.build_javascript(&out, install)?,
            Language::Typescript => self.build_typescript(&out, install)?,
            Language::C => self.build_c()?,
        }
        let size = std::fs::metadata(&out).map(|m| m.len()).unwrap_or(0);
        eprintln!(
            "built {} ({} KiB) in {:.1}s",
            out.display(),
            size.div_ceil(1024),
            started.elapsed().as_secs_f64()
        );
        if let Some(digest) = sources {
            std::fs::write(&stamp, digest)?;
        }
        Ok(out)
    }

    /// The project's own tests beside its fixtures: `cargo test` for Rust.
    pub fn native_tests(&self) -> Result<(), RunError> {
        if self.language != Language::Rust {
            return Ok(());
        }
        let mut cargo = Command::new(toolchain::on_path("cargo", RUST_HINT)?);
        cargo.arg("test").arg("--quiet").current_dir(&self.dir);
        run(&mut cargo, "cargo test")
    }

    fn build_rust(&self, out: &Path, install: Install) -> Result<(), RunError> {
        let cargo = toolchain::on_path("cargo", RUST_HINT)?;
        toolchain::require_wasm_target(install)?;
        let mut build = Command::new(cargo);
        build
            .args(["build", "--release", "--target", "wasm32-wasip2"])
            .args(["--message-format", "json-render-diagnostics"])
            .current_dir(&self.dir)
            .stdout(Stdio::piped());
        let mut child = build
            .spawn()
            .map_err(|e| RunError::Input(format!("cargo: cannot start: {e}")))?;
        let stdout = child.stdout.take().expect("stdout is piped");
        let artifact = std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .filter_map(|line| wasm_artifact(&line))
            .last();
        let status = child.wait()?;
        if !status.success() {
            return Err(RunError::Failed(format!(
                "{}: cargo build failed ({status})",
                self.dir.display()
            )));
        }
        let artifact = artifact.ok_or_else(|| {
            RunError::Input(format!(
                "{}: cargo built no .wasm: the crate needs `crate-type = [\"cdylib\"]` in [lib]",
                self.dir.display()
            ))
        })?;
        std::fs::copy(&artifact, out)?;
        Ok(())
    }

    fn build_python(&self, out: &Path, install: Install) -> Result<(), RunError> {
        let pinned = Pinned::ComponentizePy {
            requirement: self.python_pin(),
        };
        let componentize = toolchain::find(&self.dir, &pinned, install)?;
        let mut build = Command::new(componentize);
        build
            .arg("-d")
            .arg(self.path("wit"))
            .args(["-w", "plugin", "componentize", "-p"])
            .arg(&self.dir)
            .arg("app")
            .arg("-o")
            .arg(out)
            .stdout(Stdio::null());
        run(&mut build, "componentize-py")
    }

    /// `packages` as the project's `package.json` pins them (`NAME@VERSION`).
    fn npm_pins(&self, packages: &[&str]) -> Vec<String> {
        let text = std::fs::read_to_string(self.path("package.json")).unwrap_or_default();
        let doc: Value = serde_json::from_str(&text).unwrap_or_default();
        packages
            .iter()
            .map(|name| match doc["devDependencies"][name].as_str() {
                Some(version) => format!("{name}@{version}"),
                None => (*name).to_owned(),
            })
            .collect()
    }

    /// The componentize-py requirement the project's `pyproject.toml` pins for builds.
    fn python_pin(&self) -> String {
        let text = std::fs::read_to_string(self.path("pyproject.toml")).unwrap_or_default();
        let doc: toml::Table = toml::from_str(&text).unwrap_or_default();
        doc.get("project")
            .and_then(|p| p.get("optional-dependencies"))
            .and_then(|d| d.get("build"))
            .and_then(|b| b.as_array())
            .into_iter()
            .flatten()
            .filter_map(|r| r.as_str())
            .find(|r| r.starts_with("componentize-py"))
            .unwrap_or("componentize-py")
            .to_owned()
    }

    /// `make` with the C toolchain the Makefile names, found first: clang-14, wasm-ld and
    /// Rust's `wasm-component-ld`. `plugin build` installs none of them (Debian packages
    /// need root; the linker comes with Rust): a missing one is one line naming the
    /// packages.
    fn build_c(&self) -> Result<(), RunError> {
        let make = toolchain::on_path("make", C_HINT)?;
        // `CC` names another clang (with a wasm32-wasi target and sysroot) to use instead.
        let cc = std::env::var("CC").unwrap_or_else(|_| "clang-14".to_owned());
        let clang = match cc.contains('/') {
            true if toolchain::is_executable(Path::new(&cc)) => PathBuf::from(&cc),
            true => return Err(RunError::Input(format!("{cc} not found: {C_HINT}"))),
            false => toolchain::on_path(&cc, C_HINT)?,
        };
        let wasm_ld = toolchain::on_path("wasm-ld-14", C_HINT)
            .or_else(|_| toolchain::on_path("wasm-ld", C_HINT))?;
        let component_ld = toolchain::wasm_component_ld()?;
        let mut build = Command::new(make);
        build
            .arg("--no-print-directory")
            .arg(format!("CC={}", clang.display()))
            .arg(format!("WASM_LD={}", wasm_ld.display()))
            .arg(format!("WASM_COMPONENT_LD={}", component_ld.display()))
            .current_dir(&self.dir)
            .stdout(Stdio::null());
        run(&mut build, "make")
    }

    /// tsc type-checks `app.ts` and writes `app.js` beside it (`tsconfig.json`), which jco
    /// then builds.
    fn build_typescript(&self, out: &Path, install: Install) -> Result<(), RunError> {
        let pinned = Pinned::Npm {
            program: "tsc",
            packages: self.npm_pins(&["typescript"]),
        };
        let tsc = toolchain::find(&self.dir, &pinned, install)?;
        let mut compile = Command::new(tsc);
        compile.arg("-p").arg(self.path("tsconfig.json"));
        run(&mut compile, "tsc")?;
        self.build_javascript(out, install)
    }

    fn build_javascript(&self, out: &Path, install: Install) -> Result<(), RunError> {
        let pinned = Pinned::Npm {
            program: "jco",
            packages: self
                .npm_pins(&["@bytecodealliance/jco", "@bytecodealliance/componentize-js"]),
        };
        let jco = toolchain::find(&self.dir, &pinned, install)?;
        // jco resolves relative paths against the source's directory: absolute ones.
        let dir = std::path::absolute(&self.dir)?;
        let mut build = Command::new(jco);
        build
            .arg("componentize")
            .arg(dir.join("app.js"))
            .arg("--wit")
            .arg(dir.join("wit/plugin.wit"))
            .args(["--world-name", "plugin"])
            // QuickJS: seconds to build, no wasi:http import; async off, the host has no
            // component-model async.
            .args(["--backend", "quickjs", "--backend-qjs-disable-async"])
            .arg("-o")
            .arg(std::path::absolute(out)?)
            .stdout(Stdio::null());
        run(&mut build, "jco componentize")
    }
}

const C_HINT: &str = "install the C toolchain for WebAssembly (Debian or Ubuntu: \
                      `apt-get install clang-14 lld-14 wasi-libc libclang-rt-14-dev-wasm32`)";

const RUST_HINT: &str = "install Rust (https://rustup.rs), then `rustup target add wasm32-wasip2`";

/// Names that work as a crate, a package and a file name alike.
fn check_name(name: &str) -> Result<(), RunError> {
    let valid = name.len() <= 64
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && !name.ends_with('-')
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if valid {
        Ok(())
    } else {
        Err(RunError::Input(format!(
            "plugin new {name:?}: expected a name of lowercase letters, digits and dashes, \
             starting with a letter (it names the package and NAME.wasm)"
        )))
    }
}

/// `my-plugin` -> `MyPlugin`.
fn camel_case(name: &str) -> String {
    name.split('-')
        .map(|part| {
            let mut chars = part.chars();
            chars.next().map_or(String::new(), |first| {
                first.to_ascii_uppercase().to_string() + chars.as_str()
            })
        })
        .collect()
}

/// Where a Python or JavaScript project keeps the digest of the sources its component was
/// built from.
const SOURCES_STAMP: &str = ".screamer-sources";

/// What a build reads and does not make: every file of the project but its toolchains,
/// outputs and fixtures.
const NOT_SOURCES: [&str; 7] = [
    ".venv",
    "node_modules",
    "target",
    "fixtures",
    ".git",
    "__pycache__",
    SOURCES_STAMP,
];

/// SHA-256 over the project's source files, by path and contents, in path order (for
/// TypeScript, the `app.js` tsc writes is no source).
fn sources_digest(dir: &Path, language: Language) -> Result<String, RunError> {
    use sha2::{Digest, Sha256};
    let mut files = Vec::new();
    let mut dirs = vec![dir.to_path_buf()];
    while let Some(d) = dirs.pop() {
        for entry in std::fs::read_dir(&d)? {
            let entry = entry?;
            let path = entry.path();
            let name = entry.file_name();
            if NOT_SOURCES.iter().any(|n| name == *n)
                || path.extension().is_some_and(|x| x == "wasm")
                || (language == Language::Typescript && d == dir && name == "app.js")
            {
                continue;
            }
            if entry.file_type()?.is_dir() {
                dirs.push(path);
            } else {
                files.push(path);
            }
        }
    }
    files.sort();
    let mut hash = Sha256::new();
    for file in files {
        let relative = file.strip_prefix(dir).unwrap_or(&file);
        hash.update(relative.to_string_lossy().as_bytes());
        hash.update([0]);
        hash.update(std::fs::read(&file)?);
        hash.update([0]);
    }
    Ok(hash.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

/// The SDK versions that speak this host's plugin world: the world's major and minor.
fn sdk_version() -> String {
    let world = WIT
        .lines()
        .find_map(|l| l.strip_prefix("package screamer:plugin@"))
        .and_then(|v| v.strip_suffix(';'))
        .expect("the WIT names its package");
    world.rsplit_once('.').map_or(world, |(v, _)| v).to_owned()
}

/// The name in a project's manifest.
fn manifest_name(path: &Path, language: Language) -> Result<String, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read: {e}"))?;
    let name = match language {
        Language::Rust | Language::Python => {
            let table = if language == Language::Rust {
                "package"
            } else {
                "project"
            };
            let doc: toml::Table = toml::from_str(&text).map_err(|e| e.message().to_owned())?;
            doc.get(table)
                .and_then(|t| t.get("name"))
                .and_then(|n| n.as_str())
                .map(str::to_owned)
                .ok_or_else(|| format!("expected a name in [{table}]"))?
        }
        Language::Javascript | Language::Typescript => {
            let doc: Value = serde_json::from_str(&text).map_err(|e| e.to_string())?;
            doc.get("name")
                .and_then(Value::as_str)
                .map(str::to_owned)
                .ok_or_else(|| "expected a \"name\"".to_owned())?
        }
        Language::C => text
            .lines()
            .find_map(|l| l.strip_prefix("NAME :="))
            .map(|n| n.trim().to_owned())
            .filter(|n| !n.is_empty())
            .ok_or_else(|| "expected a line `NAME := ...`".to_owned())?,
    };
    Ok(name)
}

/// The `.wasm` file of a cdylib in one line of cargo's JSON messages.
fn wasm_artifact(line: &str) -> Option<PathBuf> {
    let message: Value = serde_json::from_str(line).ok()?;
    if message["reason"] != "compiler-artifact" {
        return None;
    }
    let cdylib = message["target"]["kind"]
        .as_array()?
        .iter()
        .any(|k| k == "cdylib");
    if !cdylib {
        return None;
    }
    message["filenames"]
        .as_array()?
        .iter()
        .filter_map(Value::as_str)
        .find(|f| f.ends_with(".wasm"))
        .map(PathBuf::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The C bindings are generated ahead of time: they must be of the world the host runs
    /// (regenerate them as CONTRIBUTING.md says when the WIT changes).
    #[test]
    fn the_c_bindings_are_of_the_hosts_world() {
        let export = screamer::plugin::PROCESSOR_EXPORT;
        let (_, bindings) = C.iter().find(|(p, _)| *p == "bindings/plugin.c").unwrap();
        assert!(
            bindings.contains(&format!("__export_name__(\"{export}#process\")")),
            "bindings/plugin.c does not export {export}"
        );
        let (_, component_type) = C_COMPONENT_TYPE;
        assert!(
            component_type
                .windows(export.len())
                .any(|w| w == export.as_bytes()),
            "the component type object has no {export}"
        );
    }

    #[test]
    fn names_become_types_and_bad_names_are_refused() {
        assert_eq!(camel_case("my-first-plugin"), "MyFirstPlugin");
        assert_eq!(camel_case("x1"), "X1");
        for good in ["a", "my-plugin", "p2p"] {
            assert!(check_name(good).is_ok(), "{good}");
        }
        for bad in ["", "My", "1a", "a_b", "a-", "a b", "../a"] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_sdk_version_is_the_world_s_major_and_minor() {
        // The version policy in plugin-sdk's Cargo.toml: SDK x.y.* builds world x.y.
        let sdk = include_str!("../../../../plugin-sdk/Cargo.toml")
            .lines()
            .find_map(|l| l.strip_prefix("version = \""))
            .and_then(|v| v.strip_suffix('"'))
            .expect("the SDK has its own version");
        assert_eq!(sdk_version(), "0.3");
        assert!(sdk.starts_with(&format!("{}.", sdk_version())), "{sdk}");
    }

    #[test]
    fn the_wasm_of_a_cdylib_is_found_in_cargo_messages() {
        let line = r#"{"reason":"compiler-artifact","target":{"kind":["cdylib","rlib"]},"filenames":["/t/x.rlib","/t/x.wasm"]}"#;
        assert_eq!(wasm_artifact(line), Some(PathBuf::from("/t/x.wasm")));
        let lib =
            r#"{"reason":"compiler-artifact","target":{"kind":["lib"]},"filenames":["/t/y.rlib"]}"#;
        assert_eq!(wasm_artifact(lib), None);
        assert_eq!(wasm_artifact("not json"), None);
    }
}
