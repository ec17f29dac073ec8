//! Finding a Postgres to run against: the configured URL, else the one on
//! 127.0.0.1:5432, else a private throwaway cluster made with the `initdb`/`pg_ctl` found on
//! this machine. `rigctl up` and the test suite both use this.

use anyhow::{bail, Context};
use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, Connection};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::str::FromStr;
use std::time::Duration;

pub const LOCAL_URL: &str = "postgres://postgres@127.0.0.1:5432/rig";

/// A Postgres server found or started. Dropping it stops a private cluster.
pub struct Postgres {
    /// URL of the target database (created when missing).
    pub url: String,
    pub private: Option<PrivateCluster>,
}

/// The server part of `url` with another database name.
pub fn with_database(url: &str, database: &str) -> anyhow::Result<String> {
    let opts = PgConnectOptions::from_str(url).context("parse database URL")?;
    let mut u = opts.database(database).to_url_lossy();
    // to_url_lossy drops nothing we rely on; keep the original scheme.
    u.set_scheme("postgres").ok();
    Ok(u.to_string())
}

pub fn database_name(url: &str) -> Option<String> {
    PgConnectOptions::from_str(url).ok()?.get_database().map(str::to_owned)
}

async fn server_answers(url: &str) -> bool {
    let Ok(admin) = with_database(url, "postgres") else {
        return false;
    };
    let Ok(opts) = PgConnectOptions::from_str(&admin) else {
        return false;
    };
    let connect = sqlx::PgConnection::connect_with(&opts);
    match tokio::time::timeout(Duration::from_secs(3), connect).await {
        Ok(Ok(c)) => {
            let _ = c.close().await;
            true
        }
        _ => false,
    }
}

/// Creates the database named in `url` when it does not exist yet.
pub async fn ensure_database(url: &str) -> anyhow::Result<()> {
    let name = database_name(url).unwrap_or_else(|| "postgres".into());
    let admin = with_database(url, "postgres")?;
    let mut c = sqlx::PgConnection::connect(&admin)
        .await
        .context("connect to the postgres database")?;
    let exists: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
        .bind(&name)
        .fetch_one(&mut c)
        .await?;
    if !exists {
        let r = sqlx::query(&format!("CREATE DATABASE \"{}\"", name.replace('"', "\"\"")))
            .execute(&mut c)
            .await;
        // Another process may have created it in between.
        if let Err(e) = r {
            let still_missing: bool =
                sqlx::query_scalar("SELECT NOT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
                    .bind(&name)
                    .fetch_one(&mut c)
                    .await?;
            if still_missing {
                return Err(e).context(format!("create database {name}"));
            }
        }
    }
    let _ = c.close().await;
    Ok(())
}

/// Finds a Postgres: `configured` (if any), else 127.0.0.1:5432, else a private cluster.
pub async fn find_or_start(configured: Option<&str>, database: &str) -> anyhow::Result<Postgres> {
    if let Some(url) = configured {
        if server_answers(url).await {
            ensure_database(url).await?;
            return Ok(Postgres {
                url: url.to_owned(),
                private: None,
            });
        }
        tracing::warn!(url = %crate::config::redact_url_password(url), "the configured database does not answer; trying 127.0.0.1:5432");
    }
    let local = with_database(LOCAL_URL, database)?;
    if server_answers(&local).await {
        ensure_database(&local).await?;
        return Ok(Postgres {
            url: local,
            private: None,
        });
    }
    tracing::info!("no Postgres on 127.0.0.1:5432; starting a private throwaway cluster");
    let cluster = PrivateCluster::start().await?;
    let url = format!("postgres://postgres@127.0.0.1:{}/{database}", cluster.port);
    ensure_database(&url).await?;
    Ok(Postgres {
        url,
        private: Some(cluster),
    })
}

/// A throwaway cluster in a temporary directory, stopped and removed on drop.
pub struct PrivateCluster {
    pub dir: PathBuf,
    pub port: u16,
    bin: PathBuf,
    run_as: Option<String>,
}

impl PrivateCluster {
    pub async fn start() -> anyhow::Result<PrivateCluster> {
        let bin = find_pg_bin().context(
            "no Postgres found: none answers on 127.0.0.1:5432, and neither initdb nor pg_ctl is on PATH \
             or in /usr/lib/postgresql/*/bin. Install PostgreSQL (Debian: apt-get install postgresql) \
             or set DATABASE_URL",
        )?;
        let port = free_port()?;
        let dir = std::env::temp_dir().join(format!("rig-pg-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        // initdb refuses to run as root; run the cluster as the `postgres` user then.
        let run_as = if unsafe_is_root() {
            Some("postgres".to_owned())
        } else {
            None
        };
        if let Some(user) = &run_as {
            let ok = Command::new("chown").arg("-R").arg(user).arg(&dir).status()?.success();
            if !ok {
                bail!(
                    "running as root, and cannot hand {} to the `{user}` user",
                    dir.display()
                );
            }
        }
        let cluster = PrivateCluster {
            dir: dir.clone(),
            port,
            bin,
            run_as,
        };
        let data = dir.join("data");
        cluster.run(
            "initdb",
            &["-A", "trust", "-U", "postgres", "-E", "UTF8", "-D", path_str(&data)?],
        )?;
        cluster.pg_ctl(&["-w", "start"])?;
        Ok(cluster)
    }

    /// Crashes the server and starts it again (`pg_ctl restart -m immediate`): every process is
    /// aborted without a checkpoint or a flush of the WAL buffers, so the start is a crash
    /// recovery, and whatever was committed without reaching the disk is lost, as in a power cut
    /// of the database alone. Returns once the server accepts connections again, on the same
    /// port and options. For fault tests; nobody else should share a cluster that gets crashed.
    pub fn crash_and_restart(&self) -> anyhow::Result<()> {
        self.pg_ctl(&["-m", "immediate", "-w", "restart"])
    }

    /// Stops the server (`pg_ctl stop -m fast`): its clients are disconnected, new ones refused,
    /// until [`PrivateCluster::start_again`]. For tests of a database server going away.
    pub fn stop(&self) -> anyhow::Result<()> {
        self.pg_ctl(&["-m", "fast", "-w", "stop"])
    }

    /// Starts a stopped server again, on the same port and options.
    pub fn start_again(&self) -> anyhow::Result<()> {
        self.pg_ctl(&["-w", "start"])
    }

    /// `pg_ctl` on this cluster's data directory, with its server options and log, then `action`.
    fn pg_ctl(&self, action: &[&str]) -> anyhow::Result<()> {
        let data = self.dir.join("data");
        let opts = self.server_options()?;
        let log = self.dir.join("postgres.log");
        // `-l` matters beyond the log: without it the server would inherit our output pipes and
        // `run` would wait for it to exit.
        let mut args = vec!["-D", path_str(&data)?, "-o", &opts, "-l", path_str(&log)?];
        args.extend_from_slice(action);
        self.run("pg_ctl", &args)
    }

    /// The `postgres` options `pg_ctl -o` passes: the same at start and at every restart.
    fn server_options(&self) -> anyhow::Result<String> {
        Ok(format!(
            "-p {} -c listen_addresses=127.0.0.1 -k {}",
            self.port,
            path_str(&self.dir)?
        ))
    }

    fn run(&self, tool: &str, args: &[&str]) -> anyhow::Result<()> {
        let exe = self.bin.join(tool);
        let mut cmd = match &self.run_as {
            Some(user) => {
                let mut c = Command::new("runuser");
                c.arg("-u").arg(user).arg("--").arg(&exe);
                c
            }
            None => Command::new(&exe),
        };
        let out = cmd
            .args(args)
            .output()
            .with_context(|| format!("run {}", exe.display()))?;
        if !out.status.success() {
            bail!(
                "{} failed: {}",
                exe.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(())
    }
}

impl Drop for PrivateCluster {
    fn drop(&mut self) {
        if let Ok(data) = path_str(&self.dir.join("data")) {
            let _ = self.run("pg_ctl", &["-D", data, "-m", "fast", "-w", "stop"]);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn path_str(p: &Path) -> anyhow::Result<&str> {
    p.to_str().context("temporary directory path is not UTF-8")
}

fn unsafe_is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// The directory holding both `initdb` and `pg_ctl`: PATH first, then Debian's layout.
fn find_pg_bin() -> Option<PathBuf> {
    let has_both = |d: &Path| d.join("initdb").is_file() && d.join("pg_ctl").is_file();
    if let Some(path) = std::env::var_os("PATH") {
        for d in std::env::split_paths(&path) {
            if has_both(&d) {
                return Some(d);
            }
        }
    }
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
        .filter(|d| has_both(d))
        .collect();
    versions.sort();
    versions.pop()
}
