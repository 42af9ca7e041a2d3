//! The build tools of a plugin project: found where the author put them, or installed.
//!
//! Place in the flow: `plugin build` and `plugin test`, before a build. A tool is looked for
//! in the project (`.venv/bin`, `node_modules/.bin`), then in screamer's per-user tool cache
//! at the version the project pins, then on `PATH`. When it is nowhere, `plugin build`
//! installs the pinned version into the cache and says so on stderr (componentize-py with
//! pip into a virtual environment, jco and componentize-js with npm, Rust's `wasm32-wasip2`
//! target with rustup); `--no-install` (or `SCREAMER_NO_TOOL_INSTALL`) refuses, with one line
//! saying how to install it by hand. The cache is `$SCREAMER_TOOL_CACHE`, else
//! `~/.cache/screamer/tools`; one directory per pinned version, so projects that pin
//! different versions do not share one.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::cli::RunError;

/// Whether a missing tool may be installed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Install {
    /// Into the tool cache, saying so.
    Allowed,
    /// Never (`--no-install`): a missing tool is an error naming how to install it.
    Refused,
}

/// `plugin build`'s and `plugin test`'s say over installing tools.
#[derive(Debug, Clone, Copy, clap::Args)]
pub struct ToolOptions {
    /// Do not install a missing build tool (componentize-py, jco, the wasm32-wasip2 target):
    /// say how to install it instead.
    #[arg(long, env = "SCREAMER_NO_TOOL_INSTALL")]
    no_install: bool,
}

impl ToolOptions {
    pub fn install(self) -> Install {
        if self.no_install {
            Install::Refused
        } else {
            Install::Allowed
        }
    }
}

/// A tool a project pins, and how to install that version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pinned {
    /// `componentize-py==X`, from PyPI.
    ComponentizePy { requirement: String },
    /// npm packages (`NAME@VERSION`) that give `program`: jco with componentize-js, tsc.
    Npm {
        program: &'static str,
        packages: Vec<String>,
    },
}

impl Pinned {
    fn program(&self) -> &'static str {
        match self {
            Pinned::ComponentizePy { .. } => "componentize-py",
            Pinned::Npm { program, .. } => program,
        }
    }

    /// What the project keeps it in, and where its program lies there.
    fn local_dirs(&self) -> &'static [&'static str] {
        match self {
            Pinned::ComponentizePy { .. } => &[".venv/bin"],
            Pinned::Npm { .. } => &["node_modules/.bin"],
        }
    }

    /// Its directory in the tool cache: one per pinned version.
    fn cache_slot(&self) -> PathBuf {
        let name = match self {
            Pinned::ComponentizePy { requirement } => requirement.clone(),
            Pinned::Npm { packages, .. } => packages.join("+"),
        };
        let name: String = name
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '.' {
                    c
                } else {
                    '-'
                }
            })
            .collect();
        cache_dir().join(name)
    }

    /// Where its program lies in its cache directory.
    fn cached_program(&self) -> PathBuf {
        let slot = self.cache_slot();
        match self {
            Pinned::ComponentizePy { .. } => slot.join("bin").join(self.program()),
            Pinned::Npm { .. } => slot.join("node_modules/.bin").join(self.program()),
        }
    }

    /// How an author installs it by hand.
    fn hint(&self, project: &Path) -> String {
        match self {
            Pinned::ComponentizePy { requirement } => format!(
                "install it with `pip install {requirement}` (into {} or onto PATH)",
                in_dir(project, ".venv").display()
            ),
            Pinned::Npm { packages, .. } => format!(
                "run `npm install` in {} (package.json pins {})",
                project.display(),
                packages.join(" and ")
            ),
        }
    }

    /// Installs it into its cache directory; the program's path.
    fn install(&self) -> Result<PathBuf, RunError> {
        let slot = self.cache_slot();
        eprintln!(
            "{} not found: installing {} into {} (once; --no-install refuses)",
            self.program(),
            self.describe(),
            slot.display()
        );
        std::fs::create_dir_all(&slot)?;
        match self {
            Pinned::ComponentizePy { requirement } => {
                let python = find_on_path("python3").ok_or_else(|| {
                    RunError::Input(format!(
                        "componentize-py not found, and no python3 to install it with: {}",
                        self.hint(Path::new("."))
                    ))
                })?;
                quiet(
                    Command::new(python).arg("-m").arg("venv").arg(&slot),
                    "python3 -m venv",
                )?;
                quiet(
                    Command::new(slot.join("bin/pip"))
                        .args(["install", "--quiet", "--disable-pip-version-check"])
                        .arg(requirement),
                    "pip install",
                )?;
            }
            Pinned::Npm { program, packages } => {
                let npm = find_on_path("npm").ok_or_else(|| {
                    RunError::Input(format!(
                        "{program} not found, and no npm to install it with: install Node.js and npm"
                    ))
                })?;
                quiet(
                    Command::new(npm)
                        .arg("install")
                        .arg("--prefix")
                        .arg(&slot)
                        .args(["--silent", "--no-audit", "--no-fund"])
                        .args(packages),
                    "npm install",
                )?;
            }
        }
        let program = self.cached_program();
        if !is_executable(&program) {
            return Err(RunError::Failed(format!(
                "installing {} left no {}",
                self.describe(),
                program.display()
            )));
        }
        Ok(program)
    }

    fn describe(&self) -> String {
        match self {
            Pinned::ComponentizePy { requirement } => requirement.clone(),
            Pinned::Npm { packages, .. } => packages.join(" and "),
        }
    }
}

/// The pinned tool's program for the project in `dir`: the project's own, the cached one,
/// one on PATH, or (when `install` allows) one installed now.
pub fn find(dir: &Path, pinned: &Pinned, install: Install) -> Result<PathBuf, RunError> {
    let local = pinned
        .local_dirs()
        .iter()
        .map(|d| dir.join(d).join(pinned.program()));
    let found = local
        .chain(std::iter::once(pinned.cached_program()))
        .find(|p| is_executable(p))
        .or_else(|| find_on_path(pinned.program()));
    match (found, install) {
        (Some(program), _) => Ok(program),
        (None, Install::Allowed) => pinned.install(),
        (None, Install::Refused) => Err(RunError::Input(format!(
            "{} not found: {}",
            pinned.program(),
            pinned.hint(dir)
        ))),
    }
}

/// `relative` in `dir`, as an author names it (no `./` when `dir` is here).
pub fn in_dir(dir: &Path, relative: &str) -> PathBuf {
    if dir == Path::new(".") {
        PathBuf::from(relative)
    } else {
        dir.join(relative)
    }
}

/// A program on PATH, or one line naming it and how to install it.
pub fn on_path(program: &str, hint: &str) -> Result<PathBuf, RunError> {
    find_on_path(program).ok_or_else(|| RunError::Input(format!("{program} not found: {hint}")))
}

/// `wasm-component-ld`, which links a C plugin into a component: on `PATH`, else the one
/// every Rust toolchain ships for its `wasm32-wasip2` target (in the sysroot's
/// `lib/rustlib/HOST/bin`).
pub fn wasm_component_ld() -> Result<PathBuf, RunError> {
    const PROGRAM: &str = "wasm-component-ld";
    if let Some(path) = find_on_path(PROGRAM) {
        return Ok(path);
    }
    let rustc = |arg: &str| {
        Command::new("rustc")
            .arg(arg)
            .stderr(Stdio::null())
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
    };
    let sysroot = rustc("--print=sysroot");
    let host = rustc("-vV").and_then(|v| {
        v.lines()
            .find_map(|l| l.strip_prefix("host: ").map(str::to_owned))
    });
    sysroot
        .zip(host)
        .map(|(root, host)| {
            Path::new(root.trim())
                .join("lib/rustlib")
                .join(host.trim())
                .join("bin")
                .join(PROGRAM)
        })
        .filter(|path| is_executable(path))
        .ok_or_else(|| {
            RunError::Input(format!(
                "{PROGRAM} not found: it comes with Rust's toolchain (https://rustup.rs), or \
                 `cargo install {PROGRAM}`"
            ))
        })
}

/// Rust's `wasm32-wasip2` target, added with rustup when missing (and `install` allows).
/// Without rustup, cargo says what is missing.
pub fn require_wasm_target(install: Install) -> Result<(), RunError> {
    let Ok(listed) = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .stderr(Stdio::null())
        .output()
    else {
        return Ok(());
    };
    let installed = String::from_utf8_lossy(&listed.stdout);
    if !listed.status.success() || installed.lines().any(|t| t.trim() == "wasm32-wasip2") {
        return Ok(());
    }
    match install {
        Install::Allowed => {
            eprintln!(
                "the Rust target wasm32-wasip2 is not installed: adding it with rustup \
                 (--no-install refuses)"
            );
            quiet(
                Command::new("rustup").args(["target", "add", "wasm32-wasip2"]),
                "rustup target add wasm32-wasip2",
            )
        }
        Install::Refused => Err(RunError::Input(
            "the Rust target wasm32-wasip2 is not installed: run `rustup target add wasm32-wasip2`"
                .to_owned(),
        )),
    }
}

/// `$SCREAMER_TOOL_CACHE`, else `~/.cache/screamer/tools`.
fn cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("SCREAMER_TOOL_CACHE") {
        return dir.into();
    }
    std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(std::env::temp_dir)
        .join("screamer")
        .join("tools")
}

fn find_on_path(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join(program))
        .find(|path| is_executable(path))
}

pub fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata()
        .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Runs a toolchain command with its messages on the terminal; exit 1 when it fails.
pub fn run(command: &mut Command, what: &str) -> Result<(), RunError> {
    let status = command
        .status()
        .map_err(|e| RunError::Input(format!("{what}: cannot start: {e}")))?;
    if status.success() {
        Ok(())
    } else {
        Err(RunError::Failed(format!("{what} failed ({status})")))
    }
}

/// Runs an installer: [`run`], its output on stderr only.
fn quiet(command: &mut Command, what: &str) -> Result<(), RunError> {
    run(command.stdout(Stdio::null()), what)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_pinned_version_has_its_own_cache_directory() {
        let py = Pinned::ComponentizePy {
            requirement: "componentize-py==0.25.1".to_owned(),
        };
        let js = Pinned::Npm {
            program: "jco",
            packages: vec![
                "@bytecodealliance/jco@1.35.0".to_owned(),
                "@bytecodealliance/componentize-js@0.23.0".to_owned(),
            ],
        };
        assert!(py.cache_slot().ends_with("componentize-py--0.25.1"));
        assert!(
            js.cached_program().ends_with(
                "-bytecodealliance-jco-1.35.0--bytecodealliance-componentize-js-0.23.0/node_modules/.bin/jco"
            ),
            "{}",
            js.cached_program().display()
        );
        assert!(
            py.cached_program()
                .ends_with("componentize-py--0.25.1/bin/componentize-py")
        );
    }
}
