//! The `screamer` binary as a child process. Every test runs it through [`command`]: a
//! stream run as a [`Screamer`] (stdout collected line by line while it runs), a command to
//! completion with `plugins::screamer` (and `plugins::plugin_run`, `plugins::author` built
//! on it).

use std::ffi::OsStr;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;

/// `SCREAMER_BIN`, or the screamer binary of this build: `target/<profile>/screamer`, seen
/// from a test (`target/<profile>/deps/`) or from a binary beside it. The scripts build it
/// before running tests or the demo.
pub fn screamer_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("SCREAMER_BIN") {
        return p.into();
    }
    let exe = std::env::current_exe().expect("own executable path");
    let mut dir = exe.parent().expect("executable directory");
    if dir.ends_with("deps") {
        dir = dir.parent().expect("profile directory");
    }
    dir.join("screamer")
}

/// `screamer ARGS` as tests run it: this build's binary, the tests' shared plugin cache,
/// `LOG_LEVEL=info`, and no `DSN` or `STREAM` from the environment. Stdio is the caller's
/// to set.
pub fn command<S: AsRef<OsStr>>(args: impl IntoIterator<Item = S>) -> Command {
    let mut cmd = Command::new(screamer_bin());
    cmd.args(args)
        .env("SCREAMER_PLUGIN_CACHE", crate::plugins::plugin_cache())
        .env("LOG_LEVEL", "info")
        .env_remove("DSN")
        .env_remove("STREAM");
    cmd
}

/// A running screamer process.
pub struct Screamer {
    child: Child,
    stdout: Arc<Mutex<Vec<String>>>,
    stderr: Arc<Mutex<Vec<String>>>,
}

impl Screamer {
    /// The process id (for /proc).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Starts screamer against `emulator_host` with `args`.
    pub fn spawn(emulator_host: &str, args: &[String]) -> anyhow::Result<Self> {
        Self::spawn_with_env(emulator_host, args, &[])
    }

    /// Starts screamer against `emulator_host` with `args` and the environment variables
    /// `env` (`PUBSUB_EMULATOR_HOST`, say).
    pub fn spawn_with_env(
        emulator_host: &str,
        args: &[String],
        env: &[(&str, &str)],
    ) -> anyhow::Result<Self> {
        let bin = screamer_bin();
        anyhow::ensure!(
            bin.is_file(),
            "{} is missing: build it first (cargo build -p screamer)",
            bin.display()
        );
        let mut child = command(args)
            .env("SPANNER_EMULATOR_HOST", emulator_host)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("spawning {}", bin.display()))?;
        let stdout = collect(child.stdout.take().expect("piped stdout"));
        let stderr = collect(child.stderr.take().expect("piped stderr"));
        Ok(Self {
            child,
            stdout,
            stderr,
        })
    }

    /// The NDJSON lines printed so far.
    pub fn lines(&self) -> Vec<String> {
        self.stdout.lock().expect("stdout lock").clone()
    }

    pub fn line_count(&self) -> usize {
        self.stdout.lock().expect("stdout lock").len()
    }

    /// The log lines printed so far.
    pub fn stderr(&self) -> String {
        self.stderr.lock().expect("stderr lock").join("\n")
    }

    /// Sends `signal` (`libc::SIGINT`, `SIGTERM`, `SIGKILL`, `SIGSTOP`, `SIGCONT`).
    pub fn signal(&self, signal: libc::c_int) -> anyhow::Result<()> {
        // SAFETY: kill(2) on our own child's pid, which we have not reaped yet.
        let rc = unsafe { libc::kill(self.child.id() as libc::pid_t, signal) };
        anyhow::ensure!(rc == 0, "kill({}, {signal}) failed", self.child.id());
        Ok(())
    }

    /// Waits for the process to exit, up to `timeout`; then its output is complete.
    pub async fn wait(&mut self, timeout: Duration) -> anyhow::Result<ExitStatus> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait()? {
                // Let the reader threads reach end of file.
                tokio::time::sleep(Duration::from_millis(100)).await;
                return Ok(status);
            }
            if tokio::time::Instant::now() > deadline {
                anyhow::bail!(
                    "screamer did not exit within {timeout:?}; stderr:\n{}",
                    self.stderr()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Screamer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn collect(stream: impl std::io::Read + Send + 'static) -> Arc<Mutex<Vec<String>>> {
    let lines = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&lines);
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines().map_while(Result::ok) {
            sink.lock().expect("line lock").push(line);
        }
    });
    lines
}

/// The arguments of a `screamer` stream run over `db`'s `Changes` stream with 1 s
/// heartbeats, then `extra`.
pub fn run_args(db: &crate::TestDatabase, extra: &[&str]) -> Vec<String> {
    let mut a = vec![
        "--dsn".to_owned(),
        db.name.to_string(),
        "--stream".to_owned(),
        "Changes".to_owned(),
        "--heartbeat-interval".to_owned(),
        "1s".to_owned(),
    ];
    a.extend(extra.iter().map(|s| s.to_string()));
    a
}
