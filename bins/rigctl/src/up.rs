//! `rigctl up`: the whole system on one machine. Finds or starts Postgres, migrates,
//! starts every process of the Procfile with its output prefixed by its name, and on Ctrl-C (or
//! SIGTERM) stops them all: SIGTERM first, SIGKILL for any still running after a grace period.
//! If one process dies, the others are stopped too, so a broken system is never half up.
//! Migrations run as the configured (owner) role; each process of the Procfile connects as its
//! own least-privilege role (see `rig_log::roles`).
//!
//! `--demo` adds a simulated rig (`rigctl simulate`, started two seconds after the rest), runs
//! the notifier in dry-run, catches silent agents after 20 s instead of 30 min, and, when no
//! `[[prices]]` are configured, gives every process the demo price table through `RIG_PRICES`
//! (the user's configuration is never rewritten; configured prices always win).

use anyhow::{bail, Context};
use clap::Args;
use rig_log::roles::Role;
use rig_ops::process::{self, Supervised};
use rig_ops::Settings;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
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
    /// Do not build worker binaries under `cargo run` (they are already built, e.g. by a test).
    #[arg(long)]
    pub no_build: bool,
    /// With --demo: number of simulated agents.
    #[arg(long, default_value_t = 6, requires = "demo")]
    pub demo_agents: usize,
    /// With --demo: number of simulated issues.
    #[arg(long, default_value_t = 30, requires = "demo")]
    pub demo_issues: usize,
    /// With --demo: events per second the simulated rig sends.
    #[arg(long, default_value_t = 20.0, requires = "demo")]
    pub demo_rate: f64,
    /// With --demo: simulated agents that go silent once, for stale-heartbeat to catch.
    #[arg(long, default_value_t = 1, requires = "demo")]
    pub demo_silent_agents: usize,
    /// With --demo: the simulated rig runs in this many tenants (acme, globex, initech, …), each
    /// its own database, all served by the same processes. Ingest then takes an admin token,
    /// printed at start, and each tenant a token of its own.
    #[arg(long, requires = "demo", value_parser = clap::value_parser!(u8).range(1..=8))]
    pub tenants: Option<u8>,
}

/// The demo's tenants, in order.
const DEMO_TENANTS: [&str; 8] = [
    "acme", "globex", "initech", "umbrella", "hooli", "stark", "wayne", "wonka",
];

/// A demo tenant: its slug and the token made for it at this start.
struct DemoTenant {
    slug: String,
    token: String,
}

/// Creates (or finds) the demo's tenants, each with a fresh token.
async fn demo_tenants(
    settings: &Settings,
    db_url: &str,
    pool: &sqlx::PgPool,
    n: u8,
) -> anyhow::Result<Vec<DemoTenant>> {
    let mut out = Vec::new();
    for slug in DEMO_TENANTS.iter().take(usize::from(n)) {
        let tenant = match rig_tenants::get(pool, slug).await? {
            Some(t) => t,
            None => {
                let t = rig_tenants::Tenant {
                    slug: (*slug).to_owned(),
                    database_name: rig_tenants::default_database_name(slug),
                    server: None,
                    enabled: true,
                };
                let owner = rig_ops::pg::with_database(db_url, &t.database_name)?;
                crate::tenants::migrate_log(settings, &owner).await?;
                rig_tenants::register(pool, &t).await?;
                println!("tenant {slug} added: its log is {}", t.place());
                t
            }
        };
        if !tenant.enabled {
            rig_tenants::set_enabled(pool, slug, true).await?;
        }
        if tenant.server.is_none() {
            // Migrated now if it was made by an earlier version.
            let owner = rig_ops::pg::with_database(db_url, &tenant.database_name)?;
            crate::tenants::migrate_log(settings, &owner).await?;
        }
        let token = rig_tenants::new_token(pool, slug).await?;
        out.push(DemoTenant {
            slug: (*slug).to_owned(),
            token: secrecy::ExposeSecret::expose_secret(&token).to_owned(),
        });
    }
    Ok(out)
}

/// The price table `up --demo` uses when none is configured: the list prices of the models the
/// simulator uses, USD per million tokens. `rigctl simulate` also sends a model without a row
/// (`local-qwen3-coder`), to show unpriced usage.
pub const DEMO_PRICES: &str = concat!(
    "[",
    r#"{model="claude-sonnet-4-5",effective_from="2025-09-29",input_per_mtok="3.00",output_per_mtok="15.00",cache_read_per_mtok="0.30",cache_write_per_mtok="3.75"},"#,
    r#"{model="claude-opus-4-1",effective_from="2025-08-05",input_per_mtok="15.00",output_per_mtok="75.00",cache_read_per_mtok="1.50",cache_write_per_mtok="18.75"},"#,
    r#"{model="claude-haiku-4-5",effective_from="2025-10-15",input_per_mtok="1.00",output_per_mtok="5.00",cache_read_per_mtok="0.10",cache_write_per_mtok="1.25"}"#,
    "]"
);

pub(crate) fn humantime_parse(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration such as 90s or 5m"))?;
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
        let (name, cmd) = line
            .split_once(':')
            .with_context(|| format!("Procfile line {}: expected `name: command`", i + 1))?;
        let command: Vec<String> = cmd.split_whitespace().map(str::to_owned).collect();
        if name.trim().is_empty() || command.is_empty() {
            bail!("Procfile line {}: expected `name: command`", i + 1);
        }
        out.push(ProcLine {
            name: name.trim().to_owned(),
            command,
        });
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

/// Under `cargo run`, builds the worker binaries this Procfile names that are missing or older
/// than rigctl, so `cargo run -p rigctl -- up` needs no separate build step.
fn build_missing(lines: &[ProcLine]) -> anyhow::Result<()> {
    let Ok(cargo) = std::env::var("CARGO") else {
        return Ok(());
    };
    let Ok(dir) = process::binary_dir() else {
        return Ok(());
    };
    let mut workers: Vec<&str> = Vec::new();
    for l in lines {
        let bin = l.command[0].as_str();
        if bin.starts_with("rig") && bin != "rigctl" && !workers.contains(&bin) {
            workers.push(bin);
        }
    }
    let packages = process::stale_binaries(&dir, &workers);
    if packages.is_empty() {
        return Ok(());
    }
    println!("building {} …", packages.join(", "));
    crate::build_with_rigctl(&cargo, &dir, &packages, false, None).context("build the workers")
}

pub async fn run(args: UpArgs) -> anyhow::Result<ExitCode> {
    let settings = crate::load_settings()?;
    let procfile = find_procfile(args.procfile.clone())?;
    let lines =
        parse_procfile(&std::fs::read_to_string(&procfile).with_context(|| format!("read {}", procfile.display()))?)?;
    if !args.no_build {
        build_missing(&lines)?;
    }

    println!("finding Postgres …");
    let pg = rig_ops::pg::find_or_start(Some(settings.database_url.expose()), "rig").await?;
    let db_url = pg.url.clone();
    if pg.private.is_some() {
        println!("started a private Postgres cluster (removed when this stops)");
    }
    let pool = rig_log::db::pool(&db_url, 2)?;
    rig_log::db::migrate(&pool).await.context("apply migrations")?;
    println!("database {} is migrated", rig_ops::config::redact_url_password(&db_url));

    let (mut env, demo_prices) = common_env(&args, &settings, &db_url);
    // Tenants: an admin token for ingest (the one the stale-heartbeat checker appends with too),
    // and the tenants with their own tokens.
    let (admin, tenants) = match args.tenants {
        Some(n) => {
            let admin = format!("rig_admin_{}", uuid::Uuid::new_v4().simple());
            env.insert("RIG_INGEST__AUTH_TOKENS".into(), admin.clone());
            env.insert("RIG_STALE_HEARTBEAT__INGEST_TOKEN".into(), admin.clone());
            (Some(admin), demo_tenants(&settings, &db_url, &pool, n).await?)
        }
        None => (None, Vec::new()),
    };

    let mut running: Vec<Supervised> = Vec::new();
    let (line_tx, line_rx) = std::sync::mpsc::channel::<(String, String)>();
    let width = lines.iter().map(|l| l.name.len()).max().unwrap_or(6).max(8);
    // Each process connects as its own role: the URL configured for it, else the owner's URL
    // with the role's name (no password: enough where the server trusts local connections).
    let configured = pg.private.is_none() && db_url == settings.database_url.expose();
    for l in &lines {
        if l.name == "release" {
            continue; // migrations ran above
        }
        let mut env = env.clone();
        if let Some(role) = Role::for_binary(&l.command[0]) {
            let url = match settings.own_database_url(role).filter(|_| configured) {
                Some(own) => own.expose().to_owned(),
                None => rig_log::roles::url_as(&db_url, role)?,
            };
            env.insert("DATABASE_URL".into(), url);
        }
        match spawn(l, &env, &line_tx) {
            Ok(child) => running.push(child),
            Err(e) => {
                stop_all(&mut running);
                return Err(e);
            }
        }
    }
    // One simulated rig, or one per tenant, each with its token.
    let demos: Vec<(ProcLine, Option<&DemoTenant>)> = if !args.demo {
        Vec::new()
    } else if tenants.is_empty() {
        vec![(simulate_line(&args), None)]
    } else {
        tenants
            .iter()
            .map(|t| (tenant_simulate_line(&args, t, &settings), Some(t)))
            .collect()
    };
    std::thread::spawn(move || {
        for (name, line) in line_rx {
            println!("{name:>width$} | {line}");
        }
    });

    let shutdown = rig_ops::shutdown::on_signal();
    let started = Instant::now();
    let mut demo_started = false;
    let mut announced = false;
    let api = crate::simulate::default_url(settings.ingest.listen);
    let probe = reqwest::Client::builder().timeout(Duration::from_millis(500)).build()?;
    let mut failed: Option<String> = None;
    while !shutdown.is_cancelled() {
        // "Where to look" once ingest answers, so every address printed works when read.
        if !announced {
            let ready = answers(&probe, &format!("{api}/readyz")).await;
            if ready || started.elapsed() > Duration::from_secs(30) {
                announced = true;
                let dashboard = ready && answers(&probe, &format!("{api}/dashboard")).await;
                let look = Look {
                    api: &api,
                    settings: &settings,
                    lines: &lines,
                    demo: args.demo,
                    demo_prices,
                    dashboard,
                    ready,
                    admin: admin.as_deref(),
                    tenants: &tenants,
                };
                print_where_to_look(&look);
            }
        }
        if let Some(d) = args.duration {
            if started.elapsed() >= d {
                println!("--duration {d:?} reached; stopping");
                break;
            }
        }
        if !demos.is_empty() && !demo_started && started.elapsed() > Duration::from_secs(2) {
            demo_started = true;
            for (sim, tenant) in &demos {
                let mut env = env.clone();
                if let Some(t) = tenant {
                    env.insert("RIG_SIMULATE_TOKEN".into(), t.token.clone());
                }
                match spawn(sim, &env, &line_tx) {
                    Ok(child) => running.push(child),
                    // The system itself is fine: keep it up, say why there is no simulated rig.
                    Err(e) => eprintln!("rigctl up: the simulated rig did not start: {e:#}"),
                }
            }
        }
        failed = reap(&mut running);
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
    Ok(if failed.is_some() {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// What every process gets in its environment: the database, the notifier in dry run unless a
/// webhook is configured, and, for the demo, a quick stuck-agent watch and demo prices (when no
/// prices are configured; the second value says so).
fn common_env(args: &UpArgs, settings: &Settings, db_url: &str) -> (HashMap<String, String>, bool) {
    let mut env: HashMap<String, String> = HashMap::new();
    env.insert("DATABASE_URL".into(), db_url.to_owned());
    if args.demo || settings.notifier.discord_webhook_url.is_none() {
        env.insert("RIG_NOTIFIER__DRY_RUN".into(), "true".into());
    }
    let mut demo_prices = false;
    if args.demo {
        set_default(&mut env, "RIG_STALE_HEARTBEAT__THRESHOLD", "20s");
        set_default(&mut env, "RIG_STALE_HEARTBEAT__CHECK_INTERVAL", "2s");
        if settings.prices.is_empty() {
            env.insert("RIG_PRICES".into(), DEMO_PRICES.into());
            demo_prices = true;
        }
    }
    (env, demo_prices)
}

/// The simulated rig of `--demo`, as if it were a line of the Procfile.
fn simulate_line(args: &UpArgs) -> ProcLine {
    let mut command: Vec<String> = vec!["rigctl".into(), "simulate".into()];
    for (flag, value) in [
        ("--agents", args.demo_agents.to_string()),
        ("--issues", args.demo_issues.to_string()),
        ("--rate", args.demo_rate.to_string()),
        ("--silent-agents", args.demo_silent_agents.to_string()),
    ] {
        command.push(flag.into());
        command.push(value);
    }
    ProcLine {
        name: "simulate".into(),
        command,
    }
}

/// The simulated rig of one tenant: its routes, its token (given by environment), a seed of its
/// own so the tenants' histories differ.
fn tenant_simulate_line(args: &UpArgs, t: &DemoTenant, settings: &Settings) -> ProcLine {
    let mut line = simulate_line(args);
    line.name = format!("simulate-{}", t.slug);
    let api = crate::simulate::default_url(settings.ingest.listen);
    let seed = t.slug.bytes().map(u64::from).sum::<u64>();
    line.command.extend([
        "--url".to_owned(),
        format!("{api}/t/{}", t.slug),
        "--seed".to_owned(),
        seed.to_string(),
    ]);
    line
}

/// Forgets the processes that ended as they may (the simulated rig ends by itself; the system
/// keeps running for a look around) and says which one ended when it should not have.
fn reap(running: &mut Vec<Supervised>) -> Option<String> {
    let mut failed = None;
    let mut finished = Vec::new();
    for (i, r) in running.iter_mut().enumerate() {
        if let Ok(Some(status)) = r.try_wait() {
            if r.name().starts_with("simulate") {
                println!("simulate finished ({status}); the system keeps running until Ctrl-C");
                finished.push(i);
                continue;
            }
            failed = Some(format!("{} exited ({status})", r.name()));
        }
    }
    for i in finished.into_iter().rev() {
        running.remove(i);
    }
    failed
}

fn set_default(env: &mut HashMap<String, String>, key: &str, value: &str) {
    if std::env::var_os(key).is_none() {
        env.insert(key.into(), value.into());
    }
}

/// Starts one Procfile line with its output sent, line by line, to the prefixing printer. It
/// leads its own process group, so the terminal's Ctrl-C reaches rigctl alone, which then
/// stops the children in order; nothing is restarted, and stopping is `stop_all`'s job.
fn spawn(
    l: &ProcLine,
    env: &HashMap<String, String>,
    lines: &std::sync::mpsc::Sender<(String, String)>,
) -> anyhow::Result<Supervised> {
    process::Spawn::new(&l.name, process::sibling_binary(&l.command[0]))
        .args(&l.command[1..])
        .envs(env)
        .own_process_group()
        .output(process::Output::Lines(lines.clone()))
        .spawn()
        .map_err(|e| anyhow::anyhow!("{e:#}; build the workspace with `cargo build --workspace`"))
}

/// SIGTERM to all, wait up to 10 s, then SIGKILL whatever is left; reaps every child.
fn stop_all(running: &mut [Supervised]) {
    for name in process::stop_all(running, Duration::from_secs(10)) {
        eprintln!("{name} did not stop within 10 s of SIGTERM; killing it");
    }
}

async fn answers(client: &reqwest::Client, url: &str) -> bool {
    client.get(url).send().await.is_ok_and(|r| r.status().is_success())
}

struct Look<'a> {
    api: &'a str,
    settings: &'a rig_ops::Settings,
    lines: &'a [ProcLine],
    demo: bool,
    demo_prices: bool,
    dashboard: bool,
    ready: bool,
    /// With `--tenants`: ingest's admin token and the tenants with theirs.
    admin: Option<&'a str>,
    tenants: &'a [DemoTenant],
}

/// The addresses and commands worth a look, only for what this Procfile runs.
fn print_where_to_look(l: &Look<'_>) {
    let (api, s) = (l.api, l.settings);
    let runs = |bin: &str| l.lines.iter().any(|p| p.command[0] == bin);
    println!();
    if l.ready {
        println!(
            "rig-conductor is up{}:",
            if l.demo {
                " with a simulated rig (starting now)"
            } else {
                ""
            }
        );
    } else {
        println!("rig-conductor is starting, but ingest does not answer on {api} yet; the addresses:");
    }
    if runs("rig-ingest") {
        println!("  API            {api}/v1/issues   {api}/v1/agents   {api}/v1/costs/daily   {api}/v1/usage?agent_id=dev-ada");
        if l.dashboard {
            println!("  dashboard      {api}/dashboard");
        }
        println!("  metrics        {api}/metrics (rig-ingest)");
    }
    let workers = [
        ("rig-stale-heartbeat", s.stale_heartbeat.metrics_listen),
        ("rig-cost-projector", s.cost_projector.metrics_listen),
        ("rig-token-projector", s.token_projector.metrics_listen),
        ("rig-notifier", s.notifier.metrics_listen),
    ];
    for (bin, addr) in workers.iter().filter(|(b, _)| runs(b)) {
        println!(
            "                 {}/metrics ({bin})",
            crate::simulate::default_url(*addr)
        );
    }
    if let Some(admin) = l.admin {
        println!(
            "  tenants        {} (each its own database, served by the same processes)",
            l.tenants.iter().map(|t| t.slug.as_str()).collect::<Vec<_>>().join(", ")
        );
        println!("  admin token    {admin}  (every tenant; sign in with it at {api}/dashboard for the tenant picker)");
        for t in l.tenants {
            println!("  {:<14} {api}/t/{}/dashboard   token {}", t.slug, t.slug, t.token);
        }
        println!("  all tenants    curl -H 'Authorization: Bearer {admin}' {api}/v1/admin/tenants");
        println!(
            "  try            rigctl tenants list    rigctl consumers    rigctl issues --tenant {}",
            l.tenants.first().map_or("acme", |t| t.slug.as_str())
        );
    } else if l.demo {
        println!("  try            rigctl issues    rigctl consumers    rigctl stream 'demo/widgets#1'");
        println!("                 rigctl stream 'demo/widgets#1' --to-version 4    rigctl issues --status approved");
        if runs("rig-notifier") {
            println!("  notifier       dry run: the Discord messages it would post are logged under \"notifier\"");
        }
        if l.demo_prices {
            println!("  prices         demo price table (no [[prices]] configured); local-qwen3-coder stays unpriced");
        }
    } else {
        println!("  try            rigctl issues    rigctl consumers    rigctl stream '<owner>/<repo>#<n>'");
    }
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
