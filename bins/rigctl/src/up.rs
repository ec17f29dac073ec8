//! `rigctl up`: the whole system on one machine. Finds or starts Postgres (SPEC §10), migrates,
//! starts every process of the Procfile with its output prefixed by its name, and on Ctrl-C (or
//! SIGTERM) stops them all: SIGTERM first, SIGKILL for any still running after a grace period.
//! If one process dies, the others are stopped too, so a broken system is never half up.

use anyhow::{bail, Context};
use clap::Args;
use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

#[derive(Debug, Args)]
pub struct UpArgs {
    /// Also feed a simulated rig (agents, issues, CI, reviews, token usage, silent agents), run
    /// the notifier in dry-run and catch stuck agents after a short threshold.
    #[arg(long)]
    pub demo: bool,
    /// The Procfile to run (default: ./Procfile, else the one of this source tree).
    #[arg(long)]
    pub procfile: Option<PathBuf>,
    /// Stop by itself after this long (e.g. "90s"); for scripted runs and tests.
    #[arg(long, value_parser = humantime_parse)]
    pub duration: Option<Duration>,
}

fn humantime_parse(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num.parse().map_err(|_| format!("{s:?} is not a duration such as 90s or 5m"))?;
    match unit {
        "" | "s" => Ok(Duration::from_secs(n)),
        "ms" => Ok(Duration::from_millis(n)),
        "m" => Ok(Duration::from_secs(n * 60)),
        "h" => Ok(Duration::from_secs(n * 3600)),
        _ => Err(format!("{s:?} is not a duration such as 90s or 5m")),
    }
}

/// One line of a Procfile: `name: command args…`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcLine {
    pub name: String,
    pub command: Vec<String>,
}

pub fn parse_procfile(text: &str) -> anyhow::Result<Vec<ProcLine>> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (name, cmd) = line.split_once(':').with_context(|| format!("Procfile line {}: expected `name: command`", i + 1))?;
        let command: Vec<String> = cmd.split_whitespace().map(str::to_owned).collect();
        if name.trim().is_empty() || command.is_empty() {
            bail!("Procfile line {}: expected `name: command`", i + 1);
        }
        out.push(ProcLine { name: name.trim().to_owned(), command });
    }
    Ok(out)
}

fn find_procfile(explicit: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    if let Some(p) = explicit {
        return Ok(p);
    }
    let here = PathBuf::from("Procfile");
    if here.exists() {
        return Ok(here);
    }
    let source_tree = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../Procfile");
    if source_tree.exists() {
        return Ok(source_tree);
    }
    bail!("no Procfile here; run from the repository root or pass --procfile")
}

/// The workspace binary `name`, next to this rigctl (the same cargo profile), else on PATH.
fn resolve(name: &str) -> PathBuf {
    if let Ok(exe) = std::env::current_exe() {
        if let Some(dir) = exe.parent() {
            let sibling = dir.join(name);
            if sibling.exists() {
                return sibling;
            }
        }
    }
    PathBuf::from(name)
}

/// Under `cargo run`, builds the worker binaries this Procfile names that are missing or older
/// than rigctl, so `cargo run -p rigctl -- up` needs no separate build step.
fn build_missing(lines: &[ProcLine]) -> anyhow::Result<()> {
    let Ok(cargo) = std::env::var("CARGO") else { return Ok(()) };
    let Ok(exe) = std::env::current_exe() else { return Ok(()) };
    let Some(dir) = exe.parent() else { return Ok(()) };
    let mine = std::fs::metadata(&exe).and_then(|m| m.modified()).ok();
    let mut packages: Vec<String> = Vec::new();
    for l in lines {
        let bin = &l.command[0];
        if !bin.starts_with("rig") || bin == "rigctl" {
            continue;
        }
        let p = dir.join(bin);
        let stale = match (std::fs::metadata(&p).and_then(|m| m.modified()).ok(), mine) {
            (None, _) => true,
            (Some(t), Some(m)) => t < m,
            _ => false,
        };
        if stale && !packages.contains(bin) {
            packages.push(bin.clone());
        }
    }
    if packages.is_empty() {
        return Ok(());
    }
    let release = dir.ends_with("release");
    println!("building {} …", packages.join(", "));
    let mut cmd = Command::new(cargo);
    cmd.arg("build");
    if release {
        cmd.arg("--release");
    }
    for p in &packages {
        cmd.arg("-p").arg(p);
    }
    let ok = cmd.status().context("run cargo build")?.success();
    if !ok {
        bail!("cargo build of the workers failed");
    }
    Ok(())
}

struct Running {
    name: String,
    child: Child,
}

pub async fn run(args: UpArgs) -> anyhow::Result<ExitCode> {
    let settings = crate::load_settings()?;
    let procfile = find_procfile(args.procfile.clone())?;
    let lines = parse_procfile(&std::fs::read_to_string(&procfile).with_context(|| format!("read {}", procfile.display()))?)?;
    build_missing(&lines)?;

    println!("finding Postgres …");
    let pg = shared::pg::find_or_start(Some(settings.database_url.expose()), "rig").await?;
    let db_url = pg.url.clone();
    if pg.private.is_some() {
        println!("started a private Postgres cluster (removed when this stops)");
    }
    let pool = shared::db::pool(&db_url, 2)?;
    shared::db::migrate(&pool).await.context("apply migrations")?;
    println!("database {} is migrated", shared::config::redact_url_password(&db_url));

    let mut env: HashMap<String, String> = HashMap::new();
    env.insert("DATABASE_URL".into(), db_url.clone());
    let notifier_url = settings.notifier.discord_webhook_url.is_some();
    if args.demo || !notifier_url {
        env.insert("RIG_NOTIFIER__DRY_RUN".into(), "true".into());
    }
    if args.demo {
        set_default(&mut env, "RIG_STALE_HEARTBEAT__THRESHOLD", "20s");
        set_default(&mut env, "RIG_STALE_HEARTBEAT__CHECK_INTERVAL", "2s");
    }

    let mut running: Vec<Running> = Vec::new();
    let (line_tx, line_rx) = std::sync::mpsc::channel::<(String, String)>();
    let width = lines.iter().map(|l| l.name.len()).max().unwrap_or(6).max(8);
    for l in &lines {
        if l.name == "release" {
            continue; // migrations ran above
        }
        match spawn(l, &env, &line_tx) {
            Ok(child) => running.push(Running { name: l.name.clone(), child }),
            Err(e) => {
                stop_all(&mut running);
                return Err(e);
            }
        }
    }
    let mut demo = None;
    if args.demo {
        let sim = ProcLine {
            name: "simulate".into(),
            command: ["rigctl", "simulate", "--agents", "6", "--issues", "30", "--rate", "20", "--silent-agents", "1"]
                .map(String::from)
                .to_vec(),
        };
        demo = Some(sim);
    }
    std::thread::spawn(move || {
        for (name, line) in line_rx {
            println!("{name:>width$} | {line}");
        }
    });
    print_where_to_look(&settings, args.demo);

    let shutdown = shared::shutdown::on_signal();
    let started = Instant::now();
    let mut demo_started = false;
    let mut failed: Option<String> = None;
    while !shutdown.is_cancelled() {
        if let Some(d) = args.duration {
            if started.elapsed() >= d {
                println!("--duration {d:?} reached; stopping");
                break;
            }
        }
        if let Some(sim) = &demo {
            if !demo_started && started.elapsed() > Duration::from_secs(2) {
                demo_started = true;
                if let Ok(child) = spawn(sim, &env, &line_tx) {
                    running.push(Running { name: sim.name.clone(), child });
                }
            }
        }
        let mut finished = Vec::new();
        for (i, r) in running.iter_mut().enumerate() {
            if let Ok(Some(status)) = r.child.try_wait() {
                if r.name == "simulate" {
                    // The simulated rig ends by itself; the system keeps running for a look around.
                    println!("simulate finished ({status}); the system keeps running until Ctrl-C");
                    finished.push(i);
                    continue;
                }
                failed = Some(format!("{} exited ({status})", r.name));
            }
        }
        for i in finished.into_iter().rev() {
            running.remove(i);
        }
        if failed.is_some() {
            break;
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
            _ = shutdown.cancelled() => {}
        }
    }
    if let Some(f) = &failed {
        eprintln!("rigctl up: {f}; stopping the others");
    }
    println!("stopping {} processes …", running.len());
    stop_all(&mut running);
    drop(pg);
    println!("all stopped");
    Ok(if failed.is_some() { ExitCode::FAILURE } else { ExitCode::SUCCESS })
}

fn set_default(env: &mut HashMap<String, String>, key: &str, value: &str) {
    if std::env::var_os(key).is_none() {
        env.insert(key.into(), value.into());
    }
}

fn spawn(l: &ProcLine, env: &HashMap<String, String>, lines: &std::sync::mpsc::Sender<(String, String)>) -> anyhow::Result<Child> {
    let program = resolve(&l.command[0]);
    let mut cmd = Command::new(&program);
    cmd.args(&l.command[1..]).envs(env).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    // Own process group: the terminal's Ctrl-C reaches rigctl, which then stops children in order.
    #[cfg(unix)]
    {
        use std::os::unix::process::CommandExt;
        cmd.process_group(0);
    }
    let mut child = cmd
        .spawn()
        .with_context(|| format!("start {} ({}); build the workspace with `cargo build --workspace`", l.name, program.display()))?;
    for stream in [child.stdout.take().map(|s| Box::new(s) as Box<dyn std::io::Read + Send>), child.stderr.take().map(|s| Box::new(s) as Box<dyn std::io::Read + Send>)].into_iter().flatten() {
        let tx = lines.clone();
        let name = l.name.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stream).lines().map_while(Result::ok) {
                if tx.send((name.clone(), line)).is_err() {
                    break;
                }
            }
        });
    }
    Ok(child)
}

/// SIGTERM to all, wait up to 10 s, then SIGKILL whatever is left; reaps every child.
fn stop_all(running: &mut [Running]) {
    for r in running.iter() {
        // SAFETY: signalling our own child process.
        unsafe {
            libc::kill(r.child.id() as i32, libc::SIGTERM);
        }
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    for r in running.iter_mut() {
        loop {
            match r.child.try_wait() {
                Ok(Some(_)) | Err(_) => break,
                Ok(None) if Instant::now() > deadline => {
                    eprintln!("{} did not stop within 10 s of SIGTERM; killing it", r.name);
                    let _ = r.child.kill();
                    let _ = r.child.wait();
                    break;
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(25)),
            }
        }
    }
}

fn print_where_to_look(s: &shared::Settings, demo: bool) {
    let api = format!("http://{}", s.ingest.listen);
    println!();
    println!("rig-conductor is up{}:", if demo { " with a simulated rig" } else { "" });
    println!("  API            {api}/v1/issues   {api}/v1/agents   {api}/v1/costs/daily");
    println!("  dashboard      {api}/dashboard");
    println!("  metrics        {api}/metrics (ingest)   :{} stale-heartbeat  :{} cost-projector  :{} token-projector  :{} notifier",
        s.stale_heartbeat.metrics_listen.port(), s.cost_projector.metrics_listen.port(), s.token_projector.metrics_listen.port(), s.notifier.metrics_listen.port());
    println!("  try            rigctl issues    rigctl consumers    rigctl stream 'demo/widgets#1'");
    println!("  stop           Ctrl-C");
    println!();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn procfile_lines_parse() {
        let p = parse_procfile("# comment\nrelease: rigctl migrate\ningest: rig-ingest\n\n").unwrap();
        assert_eq!(p.len(), 2);
        assert_eq!(p[0].command, vec!["rigctl", "migrate"]);
        assert!(parse_procfile("nocolon").is_err());
    }

    #[test]
    fn durations_parse() {
        assert_eq!(humantime_parse("90s").unwrap(), Duration::from_secs(90));
        assert_eq!(humantime_parse("2m").unwrap(), Duration::from_secs(120));
        assert!(humantime_parse("soon").is_err());
    }
}
