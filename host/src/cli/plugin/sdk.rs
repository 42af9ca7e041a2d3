//! The Rust SDK a new project builds with: vendored into it, or a local checkout (`--sdk`).
//!
//! Place in the flow: `plugin new --lang rust`, on an author's machine. The SDK is not on
//! crates.io yet, so the binary carries its sources and WIT (compiled in from `plugin-sdk/`)
//! and writes them into `vendor/screamer-plugin-sdk/` of the project: the project builds
//! with nothing but crates.io, offline once its dependencies are in Cargo's cache. Its
//! manifest is the SDK's own with the workspace's inherited fields filled in, so the
//! vendored crate is exactly the one this host was built and tested with. Once the SDK is
//! published, the dependency becomes `screamer-plugin-sdk = "0.3"` and `vendor/` goes.

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::cli::RunError;

/// Where the vendored SDK goes in a project.
pub const VENDORED: &str = "vendor/screamer-plugin-sdk";

/// The SDK's files besides its manifest, as the crate packages them.
const FILES: [(&str, &str); 6] = [
    (
        "src/lib.rs",
        include_str!("../../../../plugin-sdk/src/lib.rs"),
    ),
    (
        "src/json.rs",
        include_str!("../../../../plugin-sdk/src/json.rs"),
    ),
    (
        "src/patch.rs",
        include_str!("../../../../plugin-sdk/src/patch.rs"),
    ),
    (
        "src/origin.rs",
        include_str!("../../../../plugin-sdk/src/origin.rs"),
    ),
    (
        "wit/plugin.wit",
        include_str!("../../../../plugin-sdk/wit/plugin.wit"),
    ),
    (
        "README.md",
        include_str!("../../../../plugin-sdk/README.md"),
    ),
];

const MANIFEST: &str = include_str!("../../../../plugin-sdk/Cargo.toml");
const WORKSPACE_MANIFEST: &str = include_str!("../../../../Cargo.toml");

/// The SDK a new Rust project depends on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sdk {
    /// Its sources written into the project.
    Vendored,
    /// A checkout of the SDK crate on this machine (`--sdk DIR`).
    Local(PathBuf),
}

impl Sdk {
    /// `--sdk DIR`, checked to be the SDK crate's directory.
    pub fn local(path: &Path) -> Result<Self, RunError> {
        let dir = std::path::absolute(path)?;
        let manifest = std::fs::read_to_string(dir.join("Cargo.toml")).unwrap_or_default();
        if !manifest.contains("name = \"screamer-plugin-sdk\"") {
            return Err(RunError::Input(format!(
                "--sdk {}: expected the directory of the screamer-plugin-sdk crate",
                path.display()
            )));
        }
        Ok(Sdk::Local(dir))
    }

    /// The right-hand side of the project's `screamer-plugin-sdk = ...` dependency.
    pub fn dependency(&self, version: &str) -> String {
        let path = match self {
            Sdk::Vendored => VENDORED.to_owned(),
            Sdk::Local(dir) => dir.display().to_string(),
        };
        format!(
            "{{ path = {}, version = \"{version}\" }}",
            Value::from(path)
        )
    }

    /// The files to write into the project: path in the project, contents.
    pub fn files(&self) -> Vec<(String, String)> {
        match self {
            Sdk::Local(_) => Vec::new(),
            Sdk::Vendored => std::iter::once(("Cargo.toml", standalone_manifest()))
                .chain(FILES.iter().map(|(path, text)| (*path, (*text).to_owned())))
                .map(|(path, text)| (format!("{VENDORED}/{path}"), text))
                .collect(),
        }
    }
}

/// The SDK's manifest outside the workspace: each `KEY.workspace = true` line replaced by
/// the workspace's value for KEY (`[workspace.package]`, `[workspace.dependencies]`).
fn standalone_manifest() -> String {
    let mut out = String::new();
    for line in MANIFEST.lines() {
        let inherited = line
            .split_once(".workspace = true")
            .filter(|(_, rest)| rest.trim().is_empty())
            .map(|(key, _)| key.trim());
        match inherited {
            // A field this host's workspace has no value for cannot be built anyway.
            Some(key) => out.push_str(&format!(
                "{key} = {}",
                workspace_value(key).expect("the workspace defines what the SDK inherits")
            )),
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

/// The text of `key`'s value in the workspace manifest's `[workspace.package]` or
/// `[workspace.dependencies]`.
fn workspace_value(key: &str) -> Option<&'static str> {
    let mut section = "";
    for line in WORKSPACE_MANIFEST.lines() {
        let line = line.trim();
        if line.starts_with('[') {
            section = line;
            continue;
        }
        if section != "[workspace.package]" && section != "[workspace.dependencies]" {
            continue;
        }
        if let Some((k, v)) = line.split_once(" = ")
            && k.trim() == key
        {
            return Some(v.trim());
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_vendored_manifest_inherits_nothing_and_keeps_the_workspace_versions() {
        let manifest = standalone_manifest();
        assert!(!manifest.contains("workspace"), "{manifest}");
        let parsed: toml::Table = manifest.parse().expect("a TOML manifest");
        assert_eq!(
            parsed["package"]["name"].as_str(),
            Some("screamer-plugin-sdk")
        );
        assert_eq!(parsed["package"]["edition"].as_str(), Some("2024"));
        let deps = parsed["dependencies"].as_table().unwrap();
        let mut names: Vec<&str> = deps.keys().map(String::as_str).collect();
        names.sort();
        assert_eq!(names, ["serde", "serde_json", "wit-bindgen"]);
        let workspace: toml::Table = WORKSPACE_MANIFEST.parse().unwrap();
        for name in names {
            assert_eq!(
                deps[name], workspace["workspace"]["dependencies"][name],
                "{name}"
            );
        }
    }

    #[test]
    fn a_vendored_project_gets_every_file_the_sdk_packages() {
        let files = Sdk::Vendored.files();
        let paths: Vec<&str> = files.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(
            paths,
            [
                "vendor/screamer-plugin-sdk/Cargo.toml",
                "vendor/screamer-plugin-sdk/src/lib.rs",
                "vendor/screamer-plugin-sdk/src/json.rs",
                "vendor/screamer-plugin-sdk/src/patch.rs",
                "vendor/screamer-plugin-sdk/src/origin.rs",
                "vendor/screamer-plugin-sdk/wit/plugin.wit",
                "vendor/screamer-plugin-sdk/README.md",
            ]
        );
        // Every source file the crate has is here (a new module must be added to FILES).
        let on_disk = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/../plugin-sdk/src"))
            .unwrap()
            .count();
        assert_eq!(on_disk, 4);
        assert_eq!(
            Sdk::Vendored.dependency("0.3"),
            r#"{ path = "vendor/screamer-plugin-sdk", version = "0.3" }"#
        );
    }
}
