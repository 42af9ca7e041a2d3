//! A private PostgreSQL server per test (Debian's `postgresql`: `initdb` into a scratch
//! directory, `pg_ctl` on a free loopback port, stopped on drop), and a client to read the
//! replica back.
//!
//! The server refuses to run as root: as root, its commands run as the `postgres` user,
//! which owns the data directory.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};

use crate::emulator::free_port;

/// A running PostgreSQL server; stopped (immediately) and removed on drop.
pub struct PostgresServer {
    bin: PathBuf,
    dir: PathBuf,
    port: u16,
}

/// Where Debian puts the server's programs: `PG_BIN`, or the newest
/// `/usr/lib/postgresql/*/bin`.
fn bin_dir() -> anyhow::Result<PathBuf> {
    if let Some(dir) = std::env::var_os("PG_BIN") {
        return Ok(dir.into());
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .context("PostgreSQL is not installed (Debian package postgresql), or set PG_BIN")?
        .filter_map(|e| e.ok())
        .filter_map(|e| Some((e.file_name().to_str()?.parse().ok()?, e.path().join("bin"))))
        .collect();
    versions.sort();
    versions
        .pop()
        .map(|(_, dir)| dir)
        .context("no /usr/lib/postgresql/VERSION/bin")
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// `program args…`, as the `postgres` user when root.
fn command(bin: &Path, program: &str) -> Command {
    let path = bin.join(program);
    if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(path);
        c
    } else {
        Command::new(path)
    }
}

impl PostgresServer {
    /// A new cluster on a free port, accepting connections as `postgres` without a
    /// password (trust), fsync off.
    pub async fn start() -> anyhow::Result<Self> {
        Self::start_with(None).await
    }

    /// A server that takes TLS connections only, with `cert.pem` and `key.pem` of
    /// `certificates` (a directory as [`crate::certificates::make_certificates`] fills it).
    pub async fn start_with_tls(certificates: &Path) -> anyhow::Result<Self> {
        Self::start_with(Some(certificates)).await
    }

    async fn start_with(certificates: Option<&Path>) -> anyhow::Result<Self> {
        let bin = bin_dir()?;
        let dir = crate::plugins::scratch_dir("postgres");
        if is_root() {
            let status = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(&dir)
                .status()?;
            anyhow::ensure!(status.success(), "chown of {} failed", dir.display());
        }
        let output = command(&bin, "initdb")
            .args(["-U", "postgres", "-A", "trust", "--no-sync", "-D"])
            .arg(dir.join("data"))
            .output()
            .context("running initdb")?;
        if !output.status.success() {
            bail!("initdb failed: {}", String::from_utf8_lossy(&output.stderr));
        }
        if let Some(certificates) = certificates {
            use std::os::unix::fs::PermissionsExt;
            let data = dir.join("data");
            for file in ["cert.pem", "key.pem"] {
                std::fs::copy(certificates.join(file), data.join(file))?;
                std::fs::set_permissions(data.join(file), std::fs::Permissions::from_mode(0o600))?;
            }
            let mut conf = std::fs::OpenOptions::new()
                .append(true)
                .open(data.join("postgresql.conf"))?;
            std::io::Write::write_all(
                &mut conf,
                b"ssl = on\nssl_cert_file = 'cert.pem'\nssl_key_file = 'key.pem'\n",
            )?;
            // TLS or nothing, over TCP.
            std::fs::write(
                data.join("pg_hba.conf"),
                "local all all trust\nhostssl all all 127.0.0.1/32 trust\n",
            )?;
            if is_root() {
                let status = Command::new("chown")
                    .args(["-R", "postgres:postgres"])
                    .arg(&data)
                    .status()?;
                anyhow::ensure!(status.success(), "chown of {} failed", data.display());
            }
        }
        let port = crate::start_with_retries("postgres", async || {
            let port = free_port()?;
            pg_ctl_start(&bin, &dir, port)?;
            Ok(port)
        })
        .await?;
        Ok(PostgresServer { bin, dir, port })
    }

    /// The URI of `database` for `--output`, as user `postgres`, with `query` (`""` or
    /// `?...`).
    pub fn uri(&self, database: &str, query: &str) -> String {
        format!(
            "postgres://postgres@127.0.0.1:{}/{database}{query}",
            self.port
        )
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// A client of `database`, over the Unix socket (which takes `postgres` without TLS
    /// or password whatever TCP clients must bring).
    pub async fn client(&self, database: &str) -> anyhow::Result<tokio_postgres::Client> {
        let (client, connection) = tokio_postgres::connect(
            &format!(
                "host={} port={} user=postgres dbname={database}",
                self.dir.display(),
                self.port
            ),
            tokio_postgres::NoTls,
        )
        .await
        .with_context(|| format!("connecting to PostgreSQL on port {}", self.port))?;
        tokio::spawn(connection);
        Ok(client)
    }

    /// From now on, TCP clients must give their password (SCRAM).
    pub async fn require_passwords(&self) -> anyhow::Result<()> {
        std::fs::write(
            self.dir.join("data/pg_hba.conf"),
            "local all all trust\nhost all all 127.0.0.1/32 scram-sha-256\n",
        )?;
        self.client("postgres")
            .await?
            .batch_execute("SELECT pg_reload_conf()")
            .await?;
        Ok(())
    }

    /// Stops the server (fast: open transactions roll back); [`Self::restart`] starts it
    /// again on the same port, with its data.
    pub fn stop(&self) -> anyhow::Result<()> {
        let status = command(&self.bin, "pg_ctl")
            .arg("-D")
            .arg(self.dir.join("data"))
            .args(["-m", "fast", "-w", "-t", "30", "stop"])
            .stdout(Stdio::null())
            .status()?;
        anyhow::ensure!(status.success(), "pg_ctl stop failed");
        Ok(())
    }

    /// Starts a stopped server again.
    pub fn restart(&self) -> anyhow::Result<()> {
        pg_ctl_start(&self.bin, &self.dir, self.port)
    }

    /// Sends `signal` to the server and all its processes (SIGSTOP freezes it, SIGCONT
    /// thaws it).
    pub fn signal(&self, signal: libc::c_int) -> anyhow::Result<()> {
        let pid_file = std::fs::read_to_string(self.dir.join("data/postmaster.pid"))?;
        let postmaster: i32 = pid_file.lines().next().unwrap_or("").trim().parse()?;
        let children = Command::new("ps")
            .args(["-o", "pid=", "--ppid", &postmaster.to_string()])
            .output()?;
        let mut pids = vec![postmaster];
        pids.extend(
            String::from_utf8_lossy(&children.stdout)
                .split_whitespace()
                .filter_map(|p| p.parse::<i32>().ok()),
        );
        for pid in pids {
            // SAFETY: kill has no memory-safety preconditions.
            unsafe { libc::kill(pid, signal) };
        }
        Ok(())
    }
}

/// Starts the cluster in `dir` on `port` and waits until it accepts connections.
fn pg_ctl_start(bin: &Path, dir: &Path, port: u16) -> anyhow::Result<()> {
    let options = format!(
        "-p {port} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=50",
        dir.display()
    );
    let output = command(bin, "pg_ctl")
        .arg("-D")
        .arg(dir.join("data"))
        .arg("-l")
        .arg(dir.join("log"))
        .args(["-w", "-t", "30", "-o", &options, "start"])
        .stdin(Stdio::null())
        .output()
        .context("running pg_ctl")?;
    if !output.status.success() {
        let log = std::fs::read_to_string(dir.join("log")).unwrap_or_default();
        bail!(
            "pg_ctl start failed: {}\n{log}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(())
}

impl Drop for PostgresServer {
    fn drop(&mut self) {
        let _ = self.signal(libc::SIGCONT);
        let _ = command(&self.bin, "pg_ctl")
            .arg("-D")
            .arg(self.dir.join("data"))
            .args(["-m", "immediate", "-w", "-t", "10", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Waits up to `timeout` for `check` to hold over what `query` returns (polling).
pub async fn wait_for_rows<T>(
    client: &tokio_postgres::Client,
    query: &str,
    timeout: Duration,
    mut check: impl FnMut(&[tokio_postgres::Row]) -> Option<T>,
) -> anyhow::Result<T> {
    crate::eventually(timeout, query, async || {
        let rows = client.query(query, &[]).await.ok()?;
        check(&rows)
    })
    .await
}
