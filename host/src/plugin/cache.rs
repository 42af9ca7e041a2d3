//! The compiled-plugin cache: native code that wasmtime wrote, kept on disk so that a
//! plugin compiles once.
//!
//! Loading an artifact is deserializing native code (`unsafe`), so the cache trusts only what
//! this host wrote and can verify:
//! - the directory is private: owned by this user and writable by nobody else (a directory
//!   others can write is refused, never silently used);
//! - every artifact ends with an HMAC-SHA256 over the wasm's SHA-256, the engine's
//!   compatibility hash and the artifact's bytes, keyed by a random secret in the directory
//!   (`key`, mode 0600). An artifact copied over another plugin's, truncated, or compiled by
//!   another engine fails the check and is recompiled; it is never deserialized.
//!
//! What it does not defend against: someone who can already write as this user (they can
//! read the key, or replace the screamer binary itself).

use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use hmac::{Hmac, Mac};
use sha2::Sha256;
use wasmtime::Engine;
use wasmtime::component::Component;

use super::PluginError;

const KEY_FILE: &str = "key";
const TAG_LEN: usize = 32;

/// A private directory of authenticated artifacts.
pub(super) struct ArtifactCache {
    dir: PathBuf,
    key: [u8; 32],
}

impl ArtifactCache {
    /// Opens (creating if needed, mode 0700) the cache in `dir`, refusing a directory that
    /// is not this user's alone.
    pub(super) fn open(dir: &Path) -> Result<Self, PluginError> {
        let err = |source: std::io::Error| PluginError::Cache {
            dir: dir.to_owned(),
            source,
        };
        if dir.exists() && !dir.is_dir() {
            return Err(err(std::io::Error::new(
                std::io::ErrorKind::NotADirectory,
                "not a directory",
            )));
        }
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(err)?;
        check_private(dir, &std::fs::metadata(dir).map_err(err)?).map_err(err)?;
        let key = read_or_make_key(dir).map_err(err)?;
        Ok(ArtifactCache {
            dir: dir.to_owned(),
            key,
        })
    }

    /// Where the artifact of a wasm file (by its SHA-256) compiled by this engine lives.
    pub(super) fn file(&self, sha256: &str, compatibility: &str) -> PathBuf {
        self.dir.join(format!("{sha256}-{compatibility}.cwasm"))
    }

    fn tag(&self, sha256: &str, compatibility: &str, body: &[u8]) -> Hmac<Sha256> {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.key).expect("any key length");
        mac.update(sha256.as_bytes());
        mac.update(b"\0");
        mac.update(compatibility.as_bytes());
        mac.update(b"\0");
        mac.update(body);
        mac
    }

    /// The cached component, when there is one this host wrote for exactly this wasm and
    /// engine. Anything else is reported and ignored (the caller compiles).
    pub(super) fn load(
        &self,
        engine: &Engine,
        sha256: &str,
        compatibility: &str,
    ) -> Option<Component> {
        let file = self.file(sha256, compatibility);
        let bytes = match std::fs::read(&file) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
            Err(e) => {
                tracing::warn!(file = %file.display(), "cannot read cached plugin artifact: {e}");
                return None;
            }
        };
        let Some(split) = bytes.len().checked_sub(TAG_LEN) else {
            tracing::warn!(file = %file.display(), "ignoring cached plugin artifact: truncated");
            return None;
        };
        let (body, tag) = bytes.split_at(split);
        if self
            .tag(sha256, compatibility, body)
            .verify_slice(tag)
            .is_err()
        {
            tracing::warn!(file = %file.display(),
                "ignoring cached plugin artifact: not written by this host for this plugin");
            return None;
        }
        // SAFETY: the bytes carry this cache's key's MAC over exactly this wasm hash and
        // engine: they are `Component::serialize` output that `store` wrote.
        match unsafe { Component::deserialize(engine, body) } {
            Ok(component) => Some(component),
            Err(e) => {
                tracing::warn!(file = %file.display(), "ignoring cached plugin artifact: {e}");
                None
            }
        }
    }

    /// Writes the artifact with its MAC (an atomic rename: readers see all of it or none).
    pub(super) fn store(&self, component: &Component, sha256: &str, compatibility: &str) {
        let file = self.file(sha256, compatibility);
        let written = (|| {
            let mut bytes = component.serialize().map_err(std::io::Error::other)?;
            let tag = self
                .tag(sha256, compatibility, &bytes)
                .finalize()
                .into_bytes();
            bytes.extend_from_slice(&tag);
            let tmp = self.dir.join(format!(
                ".{sha256}.tmp.{}.{}",
                std::process::id(),
                fastrand::u64(..)
            ));
            private_file(&tmp)?.write_all(&bytes)?;
            std::fs::rename(&tmp, &file).inspect_err(|_| {
                let _ = std::fs::remove_file(&tmp);
            })
        })();
        if let Err(e) = written {
            tracing::warn!(file = %file.display(), "cannot cache the compiled plugin: {e}");
        }
    }
}

fn private_file(path: &Path) -> std::io::Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
}

fn check_private(dir: &Path, meta: &std::fs::Metadata) -> std::io::Result<()> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let me = unsafe { libc::geteuid() };
    let mode = meta.permissions().mode() & 0o777;
    let problem = if meta.uid() != me {
        format!("owned by uid {}, not by this user (uid {me})", meta.uid())
    } else if mode & 0o022 != 0 {
        format!(
            "writable by others (mode {mode:o}); the cache holds native code: use a private \
             directory (chmod 700 {})",
            dir.display()
        )
    } else {
        return Ok(());
    };
    Err(std::io::Error::new(
        std::io::ErrorKind::PermissionDenied,
        problem,
    ))
}

/// The directory's secret: made once (random, 0600), published atomically by a hard link
/// so that concurrent hosts agree on one.
fn read_or_make_key(dir: &Path) -> std::io::Result<[u8; 32]> {
    let path = dir.join(KEY_FILE);
    for _ in 0..2 {
        match std::fs::File::open(&path) {
            Ok(mut f) => {
                let meta = f.metadata()?;
                if meta.permissions().mode() & 0o077 != 0 {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::PermissionDenied,
                        format!("{} is readable by others: delete it", path.display()),
                    ));
                }
                let mut key = [0u8; 32];
                f.read_exact(&mut key)?;
                return Ok(key);
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        let mut key = [0u8; 32];
        std::fs::File::open("/dev/urandom")?.read_exact(&mut key)?;
        let tmp = dir.join(format!(
            ".key.tmp.{}.{}",
            std::process::id(),
            fastrand::u64(..)
        ));
        private_file(&tmp)?.write_all(&key)?;
        let linked = std::fs::hard_link(&tmp, &path);
        let _ = std::fs::remove_file(&tmp);
        match linked {
            Ok(()) => return Ok(key),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
    Err(std::io::Error::other("cannot create the cache key"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir() -> PathBuf {
        let dir = std::env::temp_dir().join(format!("screamer-cache-test-{}", fastrand::u64(..)));
        std::fs::create_dir(&dir).unwrap();
        dir
    }

    #[test]
    fn a_shared_directory_or_a_file_is_refused() {
        let dir = temp_dir();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
        let err = ArtifactCache::open(&dir).err().unwrap().to_string();
        assert!(err.contains("writable by others (mode 777)"), "{err}");
        let file = dir.join("file");
        std::fs::write(&file, b"x").unwrap();
        let err = ArtifactCache::open(&file).err().unwrap().to_string();
        assert!(err.ends_with("not a directory"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn only_artifacts_written_for_that_wasm_verify() {
        let dir = temp_dir().join("cache");
        let cache = ArtifactCache::open(&dir).unwrap();
        assert_eq!(
            std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777,
            0o700
        );
        let body = b"native code".to_vec();
        let mut bytes = body.clone();
        bytes.extend_from_slice(&cache.tag("aaa", "c1", &body).finalize().into_bytes());
        let (body, tag) = bytes.split_at(bytes.len() - TAG_LEN);
        assert!(cache.tag("aaa", "c1", body).verify_slice(tag).is_ok());
        assert!(cache.tag("bbb", "c1", body).verify_slice(tag).is_err());
        assert!(cache.tag("aaa", "c2", body).verify_slice(tag).is_err());
        // A second host on the same directory shares the key.
        let again = ArtifactCache::open(&dir).unwrap();
        assert_eq!(again.key, cache.key);
        std::fs::remove_dir_all(dir.parent().unwrap()).unwrap();
    }
}
