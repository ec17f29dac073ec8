//! The worker processes: built if stale, configured by a scratch rig.toml, started and stopped
//! through `rig_ops::process`.

use super::*;
use anyhow::{bail, Context};
use rig_ops::process;
use std::path::{Path, PathBuf};
use std::time::Duration;
use uuid::Uuid;

/// Under `cargo run`/`cargo test` (CARGO is set), builds the workers that are missing or older
/// than this rigctl, so `cargo run --release -p rigctl -- bench` needs no separate build step.
pub(super) fn ensure_built(dir: &Path, bins: &[&str]) -> anyhow::Result<()> {
    let stale = process::stale_binaries(dir, bins);
    if stale.is_empty() {
        return Ok(());
    }
    let Ok(cargo) = std::env::var("CARGO") else {
        let missing: Vec<&&str> = stale.iter().filter(|b| !dir.join(b).exists()).collect();
        if missing.is_empty() {
            return Ok(());
        }
        bail!(
            "the worker binaries {missing:?} are not next to rigctl in {}; build them first: cargo build --release --workspace",
            dir.display()
        );
    };
    progress(&format!("building {} …", stale.join(", ")));
    crate::build_with_rigctl(&cargo, dir, &stale, true, Some(Path::new(env!("CARGO_MANIFEST_DIR"))))
}

/// A temporary directory for the workers' configuration and logs, removed on drop.
pub(super) struct ScratchDir {
    pub(super) path: PathBuf,
}

impl ScratchDir {
    pub(super) fn new() -> anyhow::Result<ScratchDir> {
        let path = std::env::temp_dir().join(format!("rig-bench-{}-{}", std::process::id(), Uuid::new_v4().simple()));
        std::fs::create_dir_all(&path).with_context(|| format!("create {}", path.display()))?;
        Ok(ScratchDir { path })
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

pub(super) struct Ports {
    pub(super) ingest: u16,
    pub(super) token: u16,
    pub(super) cost: u16,
    pub(super) stale: u16,
    pub(super) notifier: u16,
}

impl Ports {
    pub(super) fn new() -> anyhow::Result<Ports> {
        // Held together while picking, so the five are distinct.
        let l: Vec<std::net::TcpListener> = (0..5)
            .map(|_| std::net::TcpListener::bind("127.0.0.1:0"))
            .collect::<Result<_, _>>()?;
        let p = |i: usize| l[i].local_addr().map(|a| a.port());
        Ok(Ports {
            ingest: p(0)?,
            token: p(1)?,
            cost: p(2)?,
            stale: p(3)?,
            notifier: p(4)?,
        })
    }
}

/// The workers' rig.toml: free ports, the notifier in dry run, the bench prices, defaults for the
/// rest (the default consumer poll interval included). The database URL goes by environment,
/// so a password never lands in a file.
pub(super) fn worker_config(p: &Ports) -> String {
    let mut s = format!(
        "[ingest]\nlisten = \"127.0.0.1:{}\"\n\n\
         [stale_heartbeat]\nmetrics_listen = \"127.0.0.1:{}\"\ningest_url = \"http://127.0.0.1:{}\"\n\n\
         [cost_projector]\nmetrics_listen = \"127.0.0.1:{}\"\n\n\
         [token_projector]\nmetrics_listen = \"127.0.0.1:{}\"\n\n\
         [notifier]\nmetrics_listen = \"127.0.0.1:{}\"\ndry_run = true\n",
        p.ingest, p.stale, p.ingest, p.cost, p.token, p.notifier
    );
    for (model, from, i, o, cr, cw) in PRICES {
        s.push_str(&format!(
            "\n[[prices]]\nmodel = \"{model}\"\neffective_from = \"{from}\"\ninput_per_mtok = \"{i}\"\n\
             output_per_mtok = \"{o}\"\ncache_read_per_mtok = \"{cr}\"\ncache_write_per_mtok = \"{cw}\"\n"
        ));
    }
    s
}

/// Starts the workers: the siblings of this rigctl, against the scratch database, configured by
/// the scratch rig.toml alone, each logging to a file of the scratch directory.
pub(super) struct Launcher {
    pub(super) bin_dir: PathBuf,
    pub(super) config: PathBuf,
    pub(super) db_url: String,
    pub(super) logs: PathBuf,
}

impl Launcher {
    pub(super) fn spawn(&self, name: &'static str, port: u16) -> anyhow::Result<Worker> {
        let process = process::Spawn::new(name, self.bin_dir.join(name))
            // Only our configuration: nothing from the operator's RIG_ environment leaks in.
            .isolated()
            .env("RIG_CONFIG", &self.config)
            .env("DATABASE_URL", &self.db_url)
            .env("RUST_LOG", "warn")
            .output(process::Output::File(self.logs.join(format!("{name}.log"))))
            // Own process group: a Ctrl-C at the terminal reaches rigctl, which stops them in order.
            .own_process_group()
            .on_drop(process::OnDrop::Terminate(STOP_GRACE))
            .spawn()?;
        Ok(Worker { name, process, port })
    }
}

/// How long a worker has to stop after SIGTERM before it is killed.
pub(super) const STOP_GRACE: Duration = Duration::from_secs(10);

/// A worker process, stopped (SIGTERM, then SIGKILL) when dropped.
pub(super) struct Worker {
    pub(super) name: &'static str,
    pub(super) process: process::Supervised,
    pub(super) port: u16,
}

impl Worker {
    pub(super) fn pid(&self) -> u32 {
        self.process.pid()
    }

    pub(super) fn check_alive(&mut self) -> anyhow::Result<()> {
        self.process.check_alive()
    }

    pub(super) async fn wait_ready(&mut self, http: &reqwest::Client, timeout: Duration) -> anyhow::Result<()> {
        let url = format!("http://127.0.0.1:{}/readyz", self.port);
        let ready = || async {
            http.get(&url)
                .timeout(Duration::from_secs(1))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success())
        };
        self.process.wait_ready(&format!("answer {url}"), timeout, ready).await
    }
}

/// SIGTERM to all first, so they stop in parallel; then each is waited for, and killed if
/// it outlasts the grace period.
pub(super) fn stop_all(workers: Vec<Worker>) {
    let mut procs: Vec<process::Supervised> = workers.into_iter().map(|w| w.process).collect();
    for name in process::stop_all(&mut procs, STOP_GRACE) {
        eprintln!("bench: {name} did not stop within 10 s of SIGTERM; killing it");
    }
}
