//! The embedded default: a private PostgreSQL cluster under the data
//! directory, started from the system's PostgreSQL binaries, reused on the
//! next start and stopped on shutdown.
//!
//! `initdb` and `postgres` refuse to run as root; as root the cluster runs
//! as the `postgres` system user (or `nobody`), which must be able to reach
//! the data directory.

use std::{
    net::TcpListener,
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Command, Output},
};

use anyhow::{Context, bail};

/// A running private cluster.
#[derive(Debug)]
pub struct EmbeddedPostgres {
    data_dir: PathBuf,
    bin_dir: PathBuf,
    port: u16,
    run_as: Option<(u32, u32)>,
    /// Stop the cluster on [`stop`](Self::stop): false when it was already
    /// running (another process uses it).
    owned: bool,
}

const DATABASE: &str = "tenlyr";

impl EmbeddedPostgres {
    /// Starts (or reuses) the cluster in `<dir>/pg`. With `adopt`, a cluster
    /// that is already running (left by a killed server) is stopped by this
    /// process on shutdown; otherwise it is left running.
    pub async fn start(dir: &Path, adopt: bool) -> anyhow::Result<Self> {
        let dir = std::path::absolute(dir).context("resolving the data directory")?;
        let data_dir = dir.join("pg");
        let bin_dir = find_bin_dir()?;
        let run_as = unprivileged_user()?;
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;

        let this = tokio::task::spawn_blocking(move || -> anyhow::Result<Self> {
            if !data_dir.join("PG_VERSION").exists() {
                std::fs::create_dir_all(&data_dir)?;
                chown_for(&data_dir, run_as)?;
                tracing::info!(dir = %data_dir.display(), "initializing embedded PostgreSQL cluster");
                run(
                    Command::new(bin_dir.join("initdb"))
                        .args(["--auth=trust", "--username=postgres", "--encoding=UTF8", "--no-instructions"])
                        .arg("-D")
                        .arg(&data_dir),
                    run_as,
                )?;
            }
            if let Some(port) = running_port(&bin_dir, &data_dir, run_as) {
                tracing::info!(port, "reusing running embedded PostgreSQL");
                return Ok(Self { data_dir, bin_dir, port, run_as, owned: adopt });
            }
            let log = data_dir.join("server.log");
            // The free port is probed, then released for PostgreSQL to bind:
            // another listener can take it in between, so a start that could
            // not bind tries a new port.
            let mut attempt = 1;
            loop {
                let port = free_port()?;
                let logged = std::fs::metadata(&log).map_or(0, |m| m.len());
                let started = run(
                    Command::new(bin_dir.join("pg_ctl"))
                        .arg("-D")
                        .arg(&data_dir)
                        .arg("-l")
                        .arg(&log)
                        .args(["-w", "-t", "60", "-o"])
                        .arg(format!("-p {port} -c listen_addresses=127.0.0.1 -c unix_socket_directories=''"))
                        .arg("start"),
                    run_as,
                );
                // Only this attempt's lines: the log is appended to.
                let lost_the_port = || {
                    std::fs::read(&log).is_ok_and(|bytes| {
                        let start = (logged as usize).min(bytes.len());
                        String::from_utf8_lossy(&bytes[start..]).contains("could not create any TCP/IP sockets")
                    })
                };
                match started {
                    Ok(_) => {
                        tracing::info!(port, "started embedded PostgreSQL");
                        return Ok(Self { data_dir, bin_dir, port, run_as, owned: true });
                    }
                    Err(err) if attempt < 3 && lost_the_port() => {
                        tracing::warn!(port, error = %err, "the embedded PostgreSQL port was taken; trying another");
                        attempt += 1;
                    }
                    Err(err) => {
                        return Err(err).with_context(|| format!("starting PostgreSQL (log: {})", log.display()));
                    }
                }
            }
        })
        .await??;
        this.create_database().await?;
        Ok(this)
    }

    /// URL of the `tenlyr` database.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{DATABASE}", self.port)
    }

    async fn create_database(&self) -> anyhow::Result<()> {
        use sqlx::{Connection, Row};
        let admin_url = format!("postgres://postgres@127.0.0.1:{}/postgres", self.port);
        let mut conn = sqlx::PgConnection::connect(&admin_url).await?;
        let exists = sqlx::query("SELECT 1 AS one FROM pg_database WHERE datname = $1")
            .bind(DATABASE)
            .fetch_optional(&mut conn)
            .await?
            .map(|row| row.get::<i32, _>("one"));
        if exists.is_none()
            && let Err(err) = sqlx::query("CREATE DATABASE tenlyr")
                .execute(&mut conn)
                .await
        {
            // Another process may have created it a moment ago.
            if !err.to_string().contains("already exists") {
                return Err(err.into());
            }
        }
        conn.close().await?;
        Ok(())
    }

    /// Stops the cluster if this process owns it.
    pub async fn stop(self) {
        if !self.owned {
            return;
        }
        let result = tokio::task::spawn_blocking(move || {
            run(
                Command::new(self.bin_dir.join("pg_ctl"))
                    .arg("-D")
                    .arg(&self.data_dir)
                    .args(["-m", "fast", "-w", "-t", "30", "stop"]),
                self.run_as,
            )
        })
        .await;
        match result {
            Ok(Ok(_)) => tracing::info!("stopped embedded PostgreSQL"),
            Ok(Err(err)) => tracing::warn!(error = %err, "stopping embedded PostgreSQL failed"),
            Err(err) => tracing::warn!(error = %err, "stopping embedded PostgreSQL panicked"),
        }
    }
}

fn run(command: &mut Command, run_as: Option<(u32, u32)>) -> anyhow::Result<Output> {
    if let Some((uid, gid)) = run_as {
        command.gid(gid).uid(uid);
    }
    let output = command
        .output()
        .with_context(|| format!("running {:?}", command.get_program()))?;
    if !output.status.success() {
        bail!(
            "{:?} failed: {}{}",
            command.get_program(),
            String::from_utf8_lossy(&output.stderr).trim(),
            String::from_utf8_lossy(&output.stdout).trim()
        );
    }
    Ok(output)
}

/// Port of a cluster already running on `data_dir`, from `postmaster.pid`.
fn running_port(bin_dir: &Path, data_dir: &Path, run_as: Option<(u32, u32)>) -> Option<u16> {
    let status = run(
        Command::new(bin_dir.join("pg_ctl"))
            .arg("-D")
            .arg(data_dir)
            .arg("status"),
        run_as,
    );
    if status.is_err() {
        return None;
    }
    let pid_file = std::fs::read_to_string(data_dir.join("postmaster.pid")).ok()?;
    pid_file.lines().nth(3)?.trim().parse().ok()
}

fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// `TENLYR_PG_BIN`, else `pg_config --bindir`, else the newest
/// `/usr/lib/postgresql/*/bin`, else `initdb` on `PATH`.
fn find_bin_dir() -> anyhow::Result<PathBuf> {
    let has_initdb = |dir: &Path| dir.join("initdb").is_file() && dir.join("pg_ctl").is_file();
    if let Some(dir) = std::env::var_os("TENLYR_PG_BIN").map(PathBuf::from) {
        return if has_initdb(&dir) {
            Ok(dir)
        } else {
            bail!("TENLYR_PG_BIN={} has no initdb", dir.display())
        };
    }
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if has_initdb(&dir) {
            return Ok(dir);
        }
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| Some((e.file_name().to_str()?.parse().ok()?, e.path().join("bin"))))
        .filter(|(_, dir)| has_initdb(dir))
        .collect();
    versions.sort();
    if let Some((_, dir)) = versions.pop() {
        return Ok(dir);
    }
    for dir in std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()) {
        if has_initdb(&dir) {
            return Ok(dir);
        }
    }
    bail!(
        "PostgreSQL server binaries (initdb, pg_ctl) not found: install them \
         (apt-get install postgresql), set TENLYR_PG_BIN, or set DATABASE_URL"
    )
}

/// As root: uid/gid of `postgres`, else `nobody`. Otherwise none.
fn unprivileged_user() -> anyhow::Result<Option<(u32, u32)>> {
    let me = std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m))
        .unwrap_or(1);
    if me != 0 {
        return Ok(None);
    }
    let passwd = std::fs::read_to_string("/etc/passwd").context("reading /etc/passwd")?;
    for wanted in ["postgres", "nobody"] {
        for line in passwd.lines() {
            let fields: Vec<&str> = line.split(':').collect();
            if fields.len() > 3
                && fields[0] == wanted
                && let (Ok(uid), Ok(gid)) = (fields[2].parse(), fields[3].parse())
            {
                return Ok(Some((uid, gid)));
            }
        }
    }
    bail!("running as root and no `postgres` or `nobody` user exists to run PostgreSQL as")
}

fn chown_for(dir: &Path, run_as: Option<(u32, u32)>) -> anyhow::Result<()> {
    if let Some((uid, gid)) = run_as {
        std::os::unix::fs::chown(dir, Some(uid), Some(gid))
            .with_context(|| format!("giving {} to the PostgreSQL user", dir.display()))?;
    }
    Ok(())
}
