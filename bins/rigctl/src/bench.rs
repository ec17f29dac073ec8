//! `rigctl bench`: measures the system next to raw-Postgres baselines taken in the
//! same run, on the same database, so the ratios hold on a noisy machine.
//!
//! What it promises: it never touches the configured database itself. It creates a scratch
//! database `rig_bench_<random>` on the configured server, migrates it, runs the real worker
//! binaries (the siblings of this rigctl) against it, and drops it at the end, also on error and
//! on Ctrl-C (unless `--keep`). Every figure carries the baseline it is compared with and the
//! ratio; each figure's target says whether it was met. Progress and a human table go to
//! stderr, the JSON report to stdout (one line with `--json`, which also drops the table).
//!
//! Phases, in order (a raw baseline runs right before the HTTP figure it is compared with, so
//! both see the same machine weather and the same table sizes):
//! 0. a history of TOKEN_USAGE events (`--history-events`) in `events` and in the raw baseline
//!    table alike, both analyzed, so both sides start from the same realistic table;
//! 1. raw single-row autocommit INSERT, 8 connections → single-event appends over HTTP, 64
//!    clients on distinct streams; then the same clients with a body that validation refuses
//!    (422), which measures the HTTP path alone, without the database (`http_refused_64`);
//!    Then hostile clients (`append_single_http_64_with_4_hostile`): the same 64 honest clients
//!    alone and then alongside 4 clients sending bodies that must be refused (a NUL in data,
//!    oversize strings, a huge `cost_usd`, a repeated key), back to back, the honest rate with
//!    them over the rate without (`--only hostile` runs just this);
//! 2. raw 100-row INSERT, 8 connections → 500-event appends over HTTP, 4 clients;
//! 3. claims: 64 clients racing for 32 issues (a winner releases its issue at once);
//!    then the read burst: single-event appends at a steady 500/s, first alone, then while 32
//!    readers read a 20,000-event stream (`read_burst_append_p99`, its p99 against the p99
//!    without readers, target ≤ 1.2×);
//! 4. N TOKEN_USAGE events generated in SQL, raw sequential read of `events` → token-projector
//!    rebuild from position 0 (its consumer, in-process);
//! 5. append → `token_usage` latency at a steady rate, token-projector as a real process;
//! 6. every worker idle: CPU and RSS from /proc.

use anyhow::{anyhow, bail, Context};
use clap::Args;
use futures::TryStreamExt;
use rig_consumer::{Consumer, ConsumerConfig, Outcome};
use rig_events::money::{Price, PriceTable};
use rig_events::EVENT_COLUMNS;
use rig_projections::TOKEN_PROJECTOR;
use rust_decimal::Decimal;
use serde::Serialize;
use serde_json::{json, Value};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, Connection, PgConnection, PgPool};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::task::JoinSet;
use uuid::Uuid;

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Seconds measured in each throughput phase, after a short warm-up [default: 5; --quick: 1].
    #[arg(long)]
    pub seconds: Option<f64>,
    /// TOKEN_USAGE events generated for the token-projector rebuild [default: 1000000; --quick: 20000].
    #[arg(long)]
    pub rebuild_events: Option<u64>,
    /// Events already in the log (and in the raw baseline table) before the throughput phases, as
    /// in a system with some history [default: 100000; --quick: 5000].
    #[arg(long)]
    pub history_events: Option<u64>,
    /// Seconds of steady appends for the append → token_usage latency [default: 10; --quick: 2].
    #[arg(long)]
    pub latency_seconds: Option<f64>,
    /// Appends per second during the latency phase.
    #[arg(long, default_value_t = 1000)]
    pub latency_rate: u32,
    /// Seconds over which the idle workers' CPU is sampled [default: 5; --quick: 1.5].
    #[arg(long)]
    pub idle_seconds: Option<f64>,
    /// A CI-sized run (about 10-20 s): small defaults for every size not given explicitly.
    #[arg(long)]
    pub quick: bool,
    /// Print only the JSON report (one line on stdout); no table.
    #[arg(long)]
    pub json: bool,
    /// Keep the scratch database for a look afterwards (its name is in the report).
    #[arg(long)]
    pub keep: bool,
    /// Run only this phase (after seeding the history and starting ingest): `hostile`, honest
    /// appends with and without hostile clients; `read-burst`, append latency with and without
    /// 32 readers of a long stream.
    #[arg(long, value_enum)]
    pub only: Option<Phase>,
}

/// A phase `--only` can pick.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// 64 honest clients appending with and without 4 hostile clients.
    Hostile,
    /// Appends at a steady rate, alone and then beside 32 readers of a long stream.
    ReadBurst,
}

/// The sizes of one run, with `--quick` resolved.
#[derive(Debug, Clone, Serialize)]
struct Sizes {
    seconds: f64,
    warmup_seconds: f64,
    rebuild_events: u64,
    history_events: u64,
    latency_seconds: f64,
    latency_rate: u32,
    idle_seconds: f64,
    quick: bool,
    only: Option<Phase>,
}

impl Sizes {
    fn from(a: &BenchArgs) -> anyhow::Result<Sizes> {
        let q = a.quick;
        let s = Sizes {
            seconds: a.seconds.unwrap_or(if q { 1.0 } else { 5.0 }),
            warmup_seconds: if q { 0.25 } else { 1.0 },
            rebuild_events: a.rebuild_events.unwrap_or(if q { 20_000 } else { 1_000_000 }),
            history_events: a.history_events.unwrap_or(if q { 5_000 } else { 100_000 }),
            latency_seconds: a.latency_seconds.unwrap_or(if q { 2.0 } else { 10.0 }),
            latency_rate: a.latency_rate,
            idle_seconds: a.idle_seconds.unwrap_or(if q { 1.5 } else { 5.0 }),
            quick: q,
            only: a.only,
        };
        for (name, v) in [
            ("--seconds", s.seconds),
            ("--latency-seconds", s.latency_seconds),
            ("--idle-seconds", s.idle_seconds),
        ] {
            if !(v.is_finite() && v > 0.0 && v <= 3600.0) {
                bail!("{name} must be a number of seconds above 0 (and at most 3600)");
            }
        }
        if s.rebuild_events == 0 {
            bail!("--rebuild-events must be at least 1");
        }
        if !(1..=20_000).contains(&s.latency_rate) {
            bail!("--latency-rate must be from 1 to 20000 appends per second");
        }
        Ok(s)
    }

    fn warmup(&self) -> Duration {
        Duration::from_secs_f64(self.warmup_seconds)
    }

    fn measure(&self) -> Duration {
        Duration::from_secs_f64(self.seconds)
    }
}

/// The worker binaries, as named in the workspace (binary name == package name).
const INGEST: &str = "rig-ingest";
const TOKEN: &str = "rig-token-projector";
const COST: &str = "rig-cost-projector";
const STALE: &str = "rig-stale-heartbeat";
const NOTIFIER: &str = "rig-notifier";
const WORKERS: [&str; 5] = [INGEST, TOKEN, COST, STALE, NOTIFIER];

/// Prices for the generated TOKEN_USAGE events, given to both the in-process and the spawned
/// token-projector: (model, effective_from, input, output, cache read, cache write) per Mtok.
const PRICES: [(&str, &str, &str, &str, &str, &str); 3] = [
    ("claude-sonnet-4-5", "2025-09-29", "3.00", "15.00", "0.30", "3.75"),
    ("claude-opus-4-1", "2025-08-05", "15", "75", "1.50", "18.75"),
    ("claude-haiku-4-5", "2025-10-15", "1", "5", "0.10", "1.25"),
];

/// The data of every TOKEN_USAGE event the HTTP phases append, and of the raw baseline rows.
const USAGE_DATA: &str = r#"{"agent_id":"bench-agent","model":"claude-sonnet-4-5","input_tokens":1200,"output_tokens":350,"cache_read_tokens":5000}"#;

/// Idle CPU at or below this share of one core counts as "~0 %" (no busy polling).
const IDLE_CPU_MAX_PCT: f64 = 1.0;
const RSS_BUDGET_MIB: f64 = 30.0;

pub async fn run(args: BenchArgs) -> anyhow::Result<ExitCode> {
    let sizes = Sizes::from(&args)?;
    let settings = crate::load_settings()?;
    let name = format!("rig_bench_{}", &Uuid::new_v4().simple().to_string()[..12]);
    let url = rig_ops::pg::with_database(settings.database_url.expose(), &name)?;
    progress(&format!(
        "scratch database {name} on {}",
        rig_ops::config::redact_url_password(&url)
    ));
    rig_ops::pg::ensure_database(&url).await.with_context(|| {
        format!(
            "create the scratch database on {} (set DATABASE_URL or database_url in rig.toml)",
            settings.database_url
        )
    })?;

    let shutdown = rig_ops::shutdown::on_signal();
    let started = Instant::now();
    // The bench future owns every child process; leaving the select (done, failed or
    // interrupted) drops it, which stops them before the database goes.
    let result = tokio::select! {
        r = bench(&sizes, &url) => r,
        _ = shutdown.cancelled() => Err(anyhow!("interrupted")),
    };
    if args.keep {
        progress(&format!(
            "kept the scratch database {name} (--keep); drop it with: DROP DATABASE {name} WITH (FORCE)"
        ));
    } else {
        match drop_database(&url, &name).await {
            Ok(()) => progress(&format!("dropped the scratch database {name}")),
            Err(e) => eprintln!("bench: could not drop the scratch database {name}: {e:#}"),
        }
    }
    let mut report = result?;
    report.database = name;
    report.kept = args.keep;
    report.duration_seconds = round(started.elapsed().as_secs_f64(), 1);
    if !args.json {
        print_table(&report);
    }
    let out = if args.json {
        serde_json::to_string(&report)?
    } else {
        serde_json::to_string_pretty(&report)?
    };
    println!("{out}");
    Ok(ExitCode::SUCCESS)
}

fn progress(msg: &str) {
    eprintln!("bench: {msg}");
}

// ---------------------------------------------------------------------------------------------
// The report
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Serialize)]
struct Report {
    database: String,
    kept: bool,
    duration_seconds: f64,
    machine: Value,
    sizes: Sizes,
    /// How ingest ran and why (see `bench`).
    ingest: &'static str,
    /// Every target met.
    all_met: bool,
    baselines: Vec<Baseline>,
    figures: Vec<Figure>,
}

impl Report {
    /// The report of the phases run; the caller fills in the database's name and the run time.
    fn new(machine: Value, sizes: &Sizes, baselines: Vec<Baseline>, figures: Vec<Figure>) -> Report {
        Report {
            database: String::new(),
            kept: false,
            duration_seconds: 0.0,
            machine,
            sizes: sizes.clone(),
            ingest: INGEST_HOW,
            all_met: figures.iter().all(|f| f.met != Some(false)),
            baselines,
            figures,
        }
    }
}

/// A reference measured in this run: raw Postgres, or (`http_refused_64`) ingest's HTTP path
/// with no database work.
#[derive(Debug, Clone, Serialize)]
struct Baseline {
    name: &'static str,
    value: f64,
    unit: &'static str,
    detail: Value,
}

/// A measured figure next to its baseline.
#[derive(Debug, Clone, Serialize)]
struct Figure {
    name: String,
    value: f64,
    unit: &'static str,
    baseline: String,
    baseline_value: f64,
    /// value / baseline_value
    ratio: f64,
    /// The target in words, when the figure has one.
    target: Option<String>,
    /// Lowest acceptable ratio.
    target_ratio: Option<f64>,
    /// Absolute bound on the value: a minimum for rates, a maximum for times, CPU and memory.
    target_value: Option<f64>,
    met: Option<bool>,
    detail: Value,
}

impl Figure {
    fn new(name: impl Into<String>, value: f64, unit: &'static str, baseline: &str, baseline_value: f64) -> Figure {
        let ratio = if baseline_value > 0.0 {
            value / baseline_value
        } else {
            0.0
        };
        Figure {
            name: name.into(),
            value: round_sig(value),
            unit,
            baseline: baseline.to_owned(),
            baseline_value: round_sig(baseline_value),
            ratio: round(ratio, 3),
            target: None,
            target_ratio: None,
            target_value: None,
            met: None,
            detail: Value::Null,
        }
    }

    fn of(name: impl Into<String>, value: f64, unit: &'static str, b: &Baseline) -> Figure {
        Figure::new(name, value, unit, b.name, b.value)
    }

    /// A rate that must reach `target_ratio` × its baseline (and `min_value`, if any).
    fn at_least(mut self, target: &str, target_ratio: Option<f64>, min_value: Option<f64>) -> Figure {
        let ok_ratio = target_ratio.is_none_or(|t| self.ratio >= t);
        let ok_value = min_value.is_none_or(|m| self.value >= m);
        self.target = Some(target.to_owned());
        self.target_ratio = target_ratio;
        self.target_value = min_value;
        self.met = Some(ok_ratio && ok_value);
        self
    }

    /// A value that must stay at or below `max`.
    fn at_most(mut self, target: &str, max: f64) -> Figure {
        self.target = Some(target.to_owned());
        self.target_value = Some(max);
        self.met = Some(self.value <= max);
        self
    }

    /// A value that must stay at or below `max_ratio` × its baseline.
    fn ratio_at_most(mut self, target: &str, max_ratio: f64) -> Figure {
        self.target = Some(target.to_owned());
        self.target_ratio = Some(max_ratio);
        self.met = Some(self.ratio <= max_ratio);
        self
    }

    fn detail(mut self, d: Value) -> Figure {
        self.detail = d;
        self
    }
}

fn round(v: f64, decimals: i32) -> f64 {
    let f = 10f64.powi(decimals);
    (v * f).round() / f
}

/// Keeps about four significant digits: rates in the thousands need no decimals, milliseconds do.
fn round_sig(v: f64) -> f64 {
    match v.abs() {
        a if a >= 1000.0 => v.round(),
        a if a >= 10.0 => round(v, 1),
        a if a >= 1.0 => round(v, 2),
        _ => round(v, 3),
    }
}

fn print_table(r: &Report) {
    let num = |v: f64| {
        if v.abs() >= 100.0 {
            format!("{v:.0}")
        } else {
            format!("{v:.2}")
        }
    };
    eprintln!();
    eprintln!(
        "rigctl bench — scratch database {} ({}), {:.0} s",
        r.database,
        if r.kept { "kept" } else { "dropped" },
        r.duration_seconds
    );
    eprintln!("machine: {}", r.machine);
    eprintln!();
    eprintln!("{:<38} {:>12}  unit", "baseline (raw Postgres; HTTP alone)", "value");
    for b in &r.baselines {
        eprintln!("{:<38} {:>12}  {}", b.name, num(b.value), b.unit);
    }
    eprintln!();
    eprintln!(
        "{:<38} {:>10} {:<11} {:<38} {:>10} {:>8}  {:<34} met",
        "figure", "value", "unit", "baseline", "base", "ratio", "target"
    );
    for f in &r.figures {
        let met = match f.met {
            Some(true) => "yes",
            Some(false) => "NO",
            None => "",
        };
        eprintln!(
            "{:<38} {:>10} {:<11} {:<38} {:>10} {:>8}  {:<34} {}",
            f.name,
            num(f.value),
            f.unit,
            f.baseline,
            num(f.baseline_value),
            format!("{:.3}", f.ratio),
            f.target.as_deref().unwrap_or(""),
            met
        );
    }
    eprintln!();
    eprintln!("all targets met: {}", if r.all_met { "yes" } else { "no" });
    eprintln!();
}

// ---------------------------------------------------------------------------------------------
// The run
// ---------------------------------------------------------------------------------------------

async fn bench(sizes: &Sizes, url: &str) -> anyhow::Result<Report> {
    let opts = connect_options(url)?;
    let pool = PgPoolOptions::new()
        .max_connections(4)
        .connect_with(opts.clone())
        .await
        .context("connect to the scratch database")?;
    rig_log::db::migrate(&pool)
        .await
        .context("migrate the scratch database")?;
    let machine = machine_info(&pool).await?;
    progress(&format!("migrated; {machine}"));
    // Every backend on the scratch database, ingest's included, times its WAL flushes, so the
    // report can tell whether a commit here waits for the disk or for the CPU (a superuser
    // setting; without it the flushes are counted but not timed).
    let wal_timed = sqlx::query(&format!(
        "ALTER DATABASE \"{}\" SET track_wal_io_timing = on",
        opts.get_database().unwrap_or_default()
    ))
    .execute(&pool)
    .await
    .is_ok();

    // Ingest runs as the sibling `rig-ingest` binary, not in-process: it is how production runs
    // it, the load generator (this process) and ingest then compete for the 2 cores the way a
    // client and a server do, and ingest's CPU per event can be read from /proc on its own. The
    // latency and idle phases need the other workers as real processes anyway.
    let bin_dir = bin_dir()?;
    // One phase needs ingest alone.
    let needed: &[&str] = if sizes.only.is_some() { &[INGEST] } else { &WORKERS };
    ensure_built(&bin_dir, needed)?;
    let scratch = ScratchDir::new()?;
    let ports = Ports::new()?;
    let config = scratch.path.join("rig.toml");
    std::fs::write(&config, worker_config(&ports)).context("write the workers' configuration")?;
    let launcher = Launcher {
        bin_dir,
        config,
        db_url: url.to_owned(),
        logs: scratch.path.clone(),
    };
    let http = reqwest::Client::builder()
        .tcp_nodelay(true)
        .pool_max_idle_per_host(256)
        .timeout(Duration::from_secs(30))
        .build()?;

    sqlx::query("CREATE TABLE bench_raw_events (LIKE events INCLUDING ALL)")
        .execute(&pool)
        .await
        .context("create the raw baseline table")?;
    // A log with some history, in both tables alike and analyzed, as autovacuum keeps a live
    // system: on a fresh, never-analyzed table ingest's prepared lookups keep the sequential-scan
    // plans made while it was empty, and the figures would measure that instead (see the report).
    if sizes.history_events > 0 {
        progress(&format!(
            "[0/13] seeding a history of {} events (log and raw table alike) …",
            sizes.history_events
        ));
        generate_usage_events(&pool, sizes.history_events, "bench-history").await?;
        // Their issues' rows too, as ingest would have left them (TOKEN_USAGE changes nothing but
        // the version): a live rig's issue_state is not empty, and a lookup that scans it
        // instead of probing its key must show here, not first in production.
        sqlx::query(
            "INSERT INTO issue_state (stream_id, repo, issue_number, version, first_event_at, updated_at) \
             SELECT stream_id, split_part(stream_id, '#', 1), split_part(stream_id, '#', 2)::bigint, \
                    max(version), min(recorded_at), max(recorded_at) \
             FROM events WHERE stream_id NOT LIKE 'agent:%' GROUP BY stream_id",
        )
        .execute(&pool)
        .await
        .context("seed issue_state for the history")?;
        sqlx::query("VACUUM (ANALYZE) issue_state").execute(&pool).await?;
        sqlx::query(
            "INSERT INTO bench_raw_events (stream_id, version, event_id, event_type, schema_version, data, metadata, \
                 occurred_at, recorded_at) \
             SELECT stream_id, version, event_id, event_type, schema_version, data, metadata, occurred_at, recorded_at \
             FROM events ORDER BY position",
        )
        .execute(&pool)
        .await
        .context("copy the history into the raw table")?;
        sqlx::query("VACUUM (ANALYZE) bench_raw_events").execute(&pool).await?;
    }

    let mut ingest = launcher.spawn(INGEST, ports.ingest)?;
    ingest.wait_ready(&http, Duration::from_secs(30)).await?;
    let base = format!("http://127.0.0.1:{}", ports.ingest);
    let append_url = format!("{base}/v1/events");
    let ingest_addr = SocketAddr::from(([127, 0, 0, 1], ports.ingest));
    progress(&format!("rig-ingest is up on {base} (pid {})", ingest.pid()));
    let metrics_url = format!("{base}/metrics");
    let probe = IngestProbe {
        pid: ingest.pid(),
        metrics_url: &metrics_url,
        http: &http,
    };

    let mut baselines = Vec::new();
    let mut figures = Vec::new();
    if let Some(phase) = sizes.only {
        let (alone, figure) = match phase {
            Phase::Hostile => hostile_phase(ingest_addr, sizes, probe, ["[1/2]", "[2/2]"]).await?,
            Phase::ReadBurst => {
                progress(&read_burst_announcement(sizes, "[1/1]"));
                read_burst_figure(read_burst(ingest_addr, sizes, probe).await?)
            }
        };
        stop_all(vec![ingest]);
        return Ok(Report::new(machine, sizes, vec![alone], vec![figure]));
    }

    // 1. single-row autocommit vs single-event appends.
    progress(&format!(
        "[1/13] raw single-row autocommit INSERT, 8 connections, {} s …",
        sizes.seconds
    ));
    let (raw_single, raw_latency) = raw_insert_autocommit(&pool, &opts, sizes, wal_timed).await?;
    progress(&format!("      {:.0} rows/s", raw_single.value));
    progress(&format!(
        "[2/13] single-event appends over HTTP, 64 clients on distinct streams, {} s …",
        sizes.seconds
    ));
    let wal0 = WalSyncs::take(&pool).await;
    let mut single = http_appends(ingest_addr, 64, 1, "single", Body::Valid, sizes, probe).await?;
    single.detail["wal"] = WalSyncs::between(wal0, WalSyncs::take(&pool).await, single.total, "requests", wal_timed);
    progress(&format!("      {:.0} events/s", single.rate));
    figures.push(
        Figure::of("append_single_http_64", single.rate, "events/s", &raw_single)
            .at_least(">= 4x raw autocommit INSERT", Some(4.0), None)
            .detail(single.detail),
    );
    // Where the 4x target sits on this machine: the same clients and body, refused by validation
    // (422), so ingest does all its HTTP and JSON work and no database work. When raw autocommit
    // is fast (a quick fsync), 4x of it can exceed what the HTTP path alone can answer.
    progress(&format!(
        "[3/13] HTTP without the database: the same 64 clients, the body refused by validation (422), {} s …",
        sizes.seconds
    ));
    let refused = http_appends(ingest_addr, 64, 1, "refused", Body::Refused, sizes, probe).await?;
    progress(&format!("      {:.0} requests/s", refused.rate));
    let http_ceiling = Baseline {
        name: "http_refused_64",
        value: refused.rate,
        unit: "requests/s",
        detail: {
            let mut d = refused.detail;
            d["what"] = json!(
                "64 clients posting the single-append body with cache_read_tokens = -1: ingest reads, parses and \
                 validates it and answers 422, touching no database; the HTTP path's own ceiling on this machine"
            );
            d["four_x_raw_autocommit_per_s"] = json!(round_sig(4.0 * raw_single.value));
            d["four_x_raw_autocommit_over_this"] = json!(round(4.0 * raw_single.value / refused.rate, 3));
            d
        },
    };
    figures.push(Figure::of(
        "append_single_http_64_vs_http_ceiling",
        single.rate,
        "events/s",
        &http_ceiling,
    ));
    let (alone, with_hostile) = hostile_phase(ingest_addr, sizes, probe, ["[4/13]", "[5/13]"]).await?;
    figures.push(with_hostile);

    // 2. 100-row transactions vs 500-event appends.
    progress(&format!(
        "[6/13] raw 100-row INSERT per transaction, 8 connections, {} s …",
        sizes.seconds
    ));
    let raw_batch = raw_insert_batches(&opts, sizes).await?;
    progress(&format!("      {:.0} rows/s", raw_batch.value));
    progress(&format!(
        "[7/13] 500-event appends over HTTP, 4 clients, {} s …",
        sizes.seconds
    ));
    let batch = http_appends(ingest_addr, 4, 500, "batch", Body::Valid, sizes, probe).await?;
    progress(&format!("      {:.0} events/s", batch.rate));
    figures.push(
        Figure::of("append_batch500_http_4", batch.rate, "events/s", &raw_batch)
            .at_least(">= 0.6x raw 100-row INSERT", Some(0.6), None)
            .detail(batch.detail),
    );

    // 3. claims.
    progress(&format!(
        "[8/13] claims: 64 clients racing for 32 issues, {} s …",
        sizes.seconds
    ));
    let claims = claim_race(&http, &append_url, ingest_addr, sizes, probe).await?;
    progress(&format!(
        "      {:.0} claims/s, {:.0} conflicts/s",
        claims.claims_per_s, claims.conflicts_per_s
    ));
    figures.push(
        Figure::of("claims_http_64x32", claims.claims_per_s, "claims/s", &raw_single).detail(claims.detail.clone()),
    );
    figures.push(Figure::of(
        "claim_conflicts_http_64x32",
        claims.conflicts_per_s,
        "conflicts/s",
        &raw_single,
    ));

    // 3b. a burst of reads while appends go on.
    progress(&read_burst_announcement(sizes, "[9/13]"));
    let (read_burst_baseline, read_burst_fig) = read_burst_figure(read_burst(ingest_addr, sizes, probe).await?);
    figures.push(read_burst_fig);

    // 4. rebuild.
    progress(&format!(
        "[10/13] generating {} TOKEN_USAGE events in SQL …",
        sizes.rebuild_events
    ));
    generate_usage_events(&pool, sizes.rebuild_events, "bench-rebuild").await?;
    progress("[11/13] raw sequential read of events, then token-projector rebuild from position 0 …");
    let raw_read = raw_read(&opts).await?;
    progress(&format!("      raw read {:.0} rows/s", raw_read.value));
    let rebuild = rebuild_token_projector(&pool, &raw_read).await?;
    progress(&format!("      rebuild {:.0} events/s", rebuild.value));
    figures.push(rebuild);

    // 5. latency, with the token-projector as a real process.
    let mut token = launcher.spawn(TOKEN, ports.token)?;
    token.wait_ready(&http, Duration::from_secs(30)).await?;
    progress(&format!(
        "[12/13] append → token_usage latency at {}/s for {} s (rig-token-projector pid {}) …",
        sizes.latency_rate,
        sizes.latency_seconds,
        token.pid()
    ));
    let latency = append_to_projection_latency(&http, &append_url, &pool, &opts, sizes, &mut token).await?;
    progress(&format!(
        "      p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        latency.p50, latency.p99, latency.max
    ));
    for (q, v, b) in [
        ("p50", latency.p50, raw_latency.p50),
        ("p99", latency.p99, raw_latency.p99),
        ("max", latency.max, raw_latency.max),
    ] {
        let mut f = Figure::new(
            format!("append_to_projection_latency_{q}"),
            v,
            "ms",
            &format!("raw_insert_autocommit_8_latency_{q}"),
            b,
        );
        if q == "p99" {
            f = f.at_most("p99 <= 25 ms", 25.0);
        }
        if q == "p50" {
            f = f.detail(latency.detail.clone());
        }
        figures.push(f);
    }

    // 6. idle.
    progress("[13/13] every worker idle: starting the others and waiting for them to catch up …");
    let mut workers = vec![ingest, token];
    for (bin, port) in [(COST, ports.cost), (STALE, ports.stale), (NOTIFIER, ports.notifier)] {
        let mut w = launcher.spawn(bin, port)?;
        w.wait_ready(&http, Duration::from_secs(30)).await?;
        workers.push(w);
    }
    let catch_up = wait_caught_up(&pool, &mut workers, if sizes.quick { 60 } else { 600 }).await?;
    tokio::time::sleep(Duration::from_secs_f64(if sizes.quick { 0.5 } else { 2.0 })).await;
    progress(&format!(
        "      caught up in {catch_up:.1} s; sampling CPU for {} s …",
        sizes.idle_seconds
    ));
    figures.extend(idle_figures(&mut workers, sizes).await?);

    baselines.push(raw_single.clone());
    baselines.push(http_ceiling);
    baselines.push(alone);
    baselines.push(Baseline {
        name: "raw_insert_autocommit_8_latency",
        value: raw_latency.p99,
        unit: "ms (p99)",
        detail: json!({"p50_ms": raw_latency.p50, "p99_ms": raw_latency.p99, "max_ms": raw_latency.max,
                       "what": "per-INSERT commit latency seen by the 8 raw autocommit connections"}),
    });
    baselines.push(raw_batch);
    baselines.push(raw_read);
    baselines.push(read_burst_baseline);
    stop_all(workers);
    Ok(Report::new(machine, sizes, baselines, figures))
}

const INGEST_HOW: &str = "the sibling rig-ingest binary, spawned against the scratch database (as in production; its CPU is read from /proc separately)";

fn connect_options(url: &str) -> anyhow::Result<PgConnectOptions> {
    // No statement logging: the bulk statements here are slow on purpose, and would fill the log
    // with warnings that mean nothing.
    Ok(rig_log::db::connect_options(url)?
        .disable_statement_logging()
        .application_name("rigctl-bench"))
}

async fn machine_info(pool: &PgPool) -> anyhow::Result<Value> {
    let show = |what: &'static str| async move {
        sqlx::query_scalar::<_, String>(&format!("SHOW {what}"))
            .fetch_one(pool)
            .await
            .unwrap_or_default()
    };
    Ok(json!({
        "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        "postgres": show("server_version").await,
        "fsync": show("fsync").await,
        "synchronous_commit": show("synchronous_commit").await,
        "shared_buffers": show("shared_buffers").await,
    }))
}

async fn drop_database(url: &str, name: &str) -> anyhow::Result<()> {
    let admin = rig_ops::pg::with_database(url, "postgres")?;
    let mut c = PgConnection::connect_with(&connect_options(&admin)?).await?;
    // FORCE: a worker that has not quite exited must not keep the database alive.
    sqlx::query(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
        .execute(&mut c)
        .await?;
    let _ = c.close().await;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Load phases: shared counters and the measured window
// ---------------------------------------------------------------------------------------------

#[derive(Default)]
struct Counters {
    ok: AtomicU64,
    conflicts: AtomicU64,
    errors: AtomicU64,
    stop: AtomicBool,
    /// True inside the measured window (latency samples are kept only then).
    recording: AtomicBool,
    first_error: Mutex<Option<String>>,
}

impl Counters {
    fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    fn recording(&self) -> bool {
        self.recording.load(Ordering::Relaxed)
    }

    fn error(&self, e: String) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        let mut first = self.first_error.lock().unwrap_or_else(|p| p.into_inner());
        if first.is_none() {
            *first = Some(e);
        }
    }

    fn first_error(&self) -> Option<String> {
        self.first_error.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// What the counters and the CPU clocks said at one moment.
struct Snap {
    at: Instant,
    ok: u64,
    conflicts: u64,
    errors: u64,
    ingest_ticks: Option<u64>,
    own_ticks: Option<u64>,
    machine: Option<(u64, u64)>,
}

impl Snap {
    fn take(c: &Counters, ingest_pid: Option<u32>) -> Snap {
        Snap {
            at: Instant::now(),
            ok: c.ok.load(Ordering::Relaxed),
            conflicts: c.conflicts.load(Ordering::Relaxed),
            errors: c.errors.load(Ordering::Relaxed),
            ingest_ticks: ingest_pid.and_then(cpu_ticks),
            own_ticks: cpu_ticks(std::process::id()),
            machine: machine_ticks(),
        }
    }
}

/// The measured window of a load phase.
struct Window {
    secs: f64,
    ok: u64,
    conflicts: u64,
    errors: u64,
    /// CPU seconds spent in the window.
    ingest_cpu: Option<f64>,
    own_cpu: Option<f64>,
    machine_busy_pct: Option<f64>,
    /// Ingest's group commit in the window, from its own metrics (null when not scraped).
    batches: Value,
}

impl Window {
    fn between(a: &Snap, b: &Snap) -> Window {
        let tck = clock_ticks_per_second();
        let secs = b.at.duration_since(a.at).as_secs_f64();
        let cpu = |x: Option<u64>, y: Option<u64>| Some(y?.saturating_sub(x?) as f64 / tck);
        let machine_busy_pct = busy_pct(a.machine, b.machine);
        Window {
            secs,
            ok: b.ok - a.ok,
            conflicts: b.conflicts - a.conflicts,
            errors: b.errors - a.errors,
            ingest_cpu: cpu(a.ingest_ticks, b.ingest_ticks),
            own_cpu: cpu(a.own_ticks, b.own_ticks),
            machine_busy_pct,
            batches: Value::Null,
        }
    }

    fn rate(&self, n: u64) -> f64 {
        n as f64 / self.secs
    }

    /// Where the CPU went in the window: ingest, this load generator, and the whole machine
    /// (the rest is mostly Postgres).
    fn cpu_detail(&self, events: u64) -> Value {
        let pct = |c: Option<f64>| c.map(|c| round(100.0 * c / self.secs, 1));
        let per_event = |c: Option<f64>| c.filter(|_| events > 0).map(|c| round(1e6 * c / events as f64, 2));
        json!({
            "ingest_cpu_pct_of_core": pct(self.ingest_cpu),
            "ingest_cpu_us_per_event": per_event(self.ingest_cpu),
            "load_generator_cpu_pct_of_core": pct(self.own_cpu),
            "machine_busy_pct": self.machine_busy_pct.map(|p| round(p, 1)),
            "ingest_group_commit": self.batches,
        })
    }
}

/// The ingest process a load phase drives: its pid (for CPU) and its `/metrics`.
#[derive(Clone, Copy)]
struct IngestProbe<'a> {
    pid: u32,
    metrics_url: &'a str,
    http: &'a reqwest::Client,
}

/// Sums of ingest's group-commit histograms: (batch seconds, batches, requests).
async fn scrape_batches(i: &IngestProbe<'_>) -> Option<(f64, f64, f64)> {
    let text = i.http.get(i.metrics_url).send().await.ok()?.text().await.ok()?;
    let value = |name: &str| {
        text.lines()
            .find(|l| l.starts_with(name) && l[name.len()..].starts_with([' ', '{']))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<f64>().ok())
    };
    Some((
        value("rig_ingest_batch_duration_seconds_sum")?,
        value("rig_ingest_batch_duration_seconds_count")?,
        value("rig_ingest_batch_requests_sum")?,
    ))
}

/// Lets the workers warm up, measures for the phase's length, then tells them to stop.
async fn measure(c: &Counters, sizes: &Sizes, ingest: Option<IngestProbe<'_>>) -> Window {
    tokio::time::sleep(sizes.warmup()).await;
    let pid = ingest.map(|i| i.pid);
    let m0 = match &ingest {
        Some(i) => scrape_batches(i).await,
        None => None,
    };
    let a = Snap::take(c, pid);
    c.recording.store(true, Ordering::Relaxed);
    tokio::time::sleep(sizes.measure()).await;
    let b = Snap::take(c, pid);
    c.recording.store(false, Ordering::Relaxed);
    let m1 = match &ingest {
        Some(i) => scrape_batches(i).await,
        None => None,
    };
    c.stop.store(true, Ordering::Relaxed);
    let mut w = Window::between(&a, &b);
    if let (Some((s0, n0, r0)), Some((s1, n1, r1))) = (m0, m1) {
        let n = n1 - n0;
        if n > 0.0 {
            w.batches = json!({
                "transactions_per_s": round(n / w.secs, 1),
                "mean_transaction_ms": round(1e3 * (s1 - s0) / n, 3),
                "mean_requests_per_transaction": round((r1 - r0) / n, 2),
                "from": "rig_ingest_batch_duration_seconds and rig_ingest_batch_requests",
            });
        }
    }
    w
}

#[derive(Debug, Clone, Copy, Default)]
struct Percentiles {
    p50: f64,
    p99: f64,
    max: f64,
}

/// Percentiles of millisecond samples (nearest rank).
fn percentiles(mut ms: Vec<f64>) -> Percentiles {
    if ms.is_empty() {
        return Percentiles::default();
    }
    ms.sort_by(f64::total_cmp);
    let at = |q: f64| ms[((q * ms.len() as f64).ceil() as usize).clamp(1, ms.len()) - 1];
    Percentiles {
        p50: round(at(0.50), 3),
        p99: round(at(0.99), 3),
        max: round(at(1.0), 3),
    }
}

// ---------------------------------------------------------------------------------------------
// Raw baselines
// ---------------------------------------------------------------------------------------------

const RAW_CONNECTIONS: usize = 8;

/// The cluster's WAL flushes so far (`pg_stat_wal`, Postgres 14+): how many, and their total time
/// when `track_wal_io_timing` was on for the backends that did them.
#[derive(Clone, Copy)]
struct WalSyncs {
    syncs: f64,
    sync_ms: f64,
}

impl WalSyncs {
    async fn take(pool: &PgPool) -> Option<WalSyncs> {
        let (syncs, sync_ms): (i64, f64) = sqlx::query_as("SELECT wal_sync, wal_sync_time FROM pg_stat_wal")
            .fetch_one(pool)
            .await
            .ok()?;
        Some(WalSyncs {
            syncs: syncs as f64,
            sync_ms,
        })
    }

    /// What the WAL flushes between two snapshots say of `n` commits or requests (`per` names
    /// them). `pg_stat_wal` is cluster-wide and a backend reports to it about once a second, so
    /// this is approximate; it tells whether each commit paid for a flush of its own and what a
    /// flush costs here, i.e. whether the autocommit baseline is bound by fsync (as on the spec's
    /// reference machine) or by CPU.
    fn between(a: Option<WalSyncs>, b: Option<WalSyncs>, n: u64, per: &str, timed: bool) -> Value {
        let (Some(a), Some(b)) = (a, b) else {
            return Value::Null;
        };
        let syncs = b.syncs - a.syncs;
        if syncs <= 0.0 {
            return Value::Null;
        }
        let mut v = json!({
            "wal_syncs": syncs,
            format!("{per}_per_wal_sync"): round(n as f64 / syncs, 2),
            "from": "pg_stat_wal (cluster-wide), over the whole phase",
        });
        if timed && b.sync_ms > a.sync_ms {
            v["mean_wal_sync_ms"] = json!(round((b.sync_ms - a.sync_ms) / syncs, 4));
        }
        v
    }
}

/// One INSERT per statement in autocommit (one commit, one WAL flush each), 8 connections.
async fn raw_insert_autocommit(
    pool: &PgPool,
    opts: &PgConnectOptions,
    sizes: &Sizes,
    wal_timed: bool,
) -> anyhow::Result<(Baseline, Percentiles)> {
    let c = Arc::new(Counters::default());
    let mut tasks: JoinSet<anyhow::Result<Vec<f64>>> = JoinSet::new();
    let mut conns = Vec::new();
    for _ in 0..RAW_CONNECTIONS {
        conns.push(PgConnection::connect_with(opts).await?);
    }
    let wal0 = WalSyncs::take(pool).await;
    for (k, mut conn) in conns.into_iter().enumerate() {
        let c = c.clone();
        tasks.spawn(async move {
            let stream = format!("bench/raw-single#{}", k + 1);
            let mut samples = Vec::new();
            let mut version: i32 = 0;
            while !c.stopped() {
                version += 1;
                let t = Instant::now();
                sqlx::query(
                    "INSERT INTO bench_raw_events (stream_id, version, event_id, event_type, data) \
                     VALUES ($1, $2, $3, 'TOKEN_USAGE', $4::jsonb)",
                )
                .bind(&stream)
                .bind(version)
                .bind(Uuid::new_v4())
                .bind(USAGE_DATA)
                .execute(&mut conn)
                .await?;
                if c.recording() {
                    samples.push(t.elapsed().as_secs_f64() * 1e3);
                }
                c.ok.fetch_add(1, Ordering::Relaxed);
            }
            // Report this backend's WAL counts now (it reports at most once a second otherwise):
            // the flush is asked for, then done when the backend next goes idle.
            let _ = sqlx::query("SELECT pg_stat_force_next_flush()")
                .execute(&mut conn)
                .await;
            let _ = sqlx::query("SELECT 1").execute(&mut conn).await;
            let _ = conn.close().await;
            Ok(samples)
        });
    }
    let w = measure(&c, sizes, None).await;
    let mut samples = Vec::new();
    while let Some(r) = tasks.join_next().await {
        samples.extend(r??);
    }
    let wal = WalSyncs::between(
        wal0,
        WalSyncs::take(pool).await,
        c.ok.load(Ordering::Relaxed),
        "commits",
        wal_timed,
    );
    let lat = percentiles(samples);
    let b = Baseline {
        name: "raw_insert_autocommit_8",
        value: round_sig(w.rate(w.ok)),
        unit: "rows/s",
        detail: json!({"connections": RAW_CONNECTIONS, "rows": w.ok, "seconds": round(w.secs, 3),
                       "table": "bench_raw_events (LIKE events INCLUDING ALL: same columns and indexes, no triggers)",
                       "machine_busy_pct": w.machine_busy_pct.map(|p| round(p, 1)),
                       "wal": wal}),
    };
    Ok((b, lat))
}

/// 100 rows per INSERT … SELECT FROM unnest (one transaction each), 8 connections.
async fn raw_insert_batches(opts: &PgConnectOptions, sizes: &Sizes) -> anyhow::Result<Baseline> {
    const ROWS: usize = 100;
    let c = Arc::new(Counters::default());
    let mut tasks: JoinSet<anyhow::Result<()>> = JoinSet::new();
    for k in 0..RAW_CONNECTIONS {
        let mut conn = PgConnection::connect_with(opts).await?;
        let c = c.clone();
        tasks.spawn(async move {
            let stream = format!("bench/raw-batch#{}", k + 1);
            let streams = vec![stream.as_str(); ROWS];
            let types = vec!["TOKEN_USAGE"; ROWS];
            let data = vec![USAGE_DATA; ROWS];
            let mut next: i32 = 1;
            while !c.stopped() {
                let versions: Vec<i32> = (next..next + ROWS as i32).collect();
                next += ROWS as i32;
                let ids: Vec<Uuid> = (0..ROWS).map(|_| Uuid::new_v4()).collect();
                sqlx::query(
                    "INSERT INTO bench_raw_events (stream_id, version, event_id, event_type, data) \
                     SELECT s, v, id, t, d::jsonb FROM unnest($1::text[], $2::int[], $3::uuid[], $4::text[], $5::text[]) \
                         AS u(s, v, id, t, d)",
                )
                .bind(&streams)
                .bind(&versions)
                .bind(&ids)
                .bind(&types)
                .bind(&data)
                .execute(&mut conn)
                .await?;
                c.ok.fetch_add(ROWS as u64, Ordering::Relaxed);
            }
            let _ = conn.close().await;
            Ok(())
        });
    }
    let w = measure(&c, sizes, None).await;
    while let Some(r) = tasks.join_next().await {
        r??;
    }
    Ok(Baseline {
        name: "raw_insert_100row_8",
        value: round_sig(w.rate(w.ok)),
        unit: "rows/s",
        detail: json!({"connections": RAW_CONNECTIONS, "rows_per_transaction": ROWS, "rows": w.ok,
                       "seconds": round(w.secs, 3), "machine_busy_pct": w.machine_busy_pct.map(|p| round(p, 1))}),
    })
}

/// One sequential scan of `events` with the columns a consumer reads, streamed to one client;
/// the second of two runs (the first warms the caches and sets hint bits, as a rebuild finds it).
async fn raw_read(opts: &PgConnectOptions) -> anyhow::Result<Baseline> {
    let mut conn = PgConnection::connect_with(opts).await?;
    let sql = format!("SELECT {EVENT_COLUMNS} FROM events");
    // The faster of two passes: the first may still be reading pages into the cache.
    let mut best = (0u64, f64::MAX);
    for _ in 0..2 {
        let t = Instant::now();
        let mut rows = sqlx::query(&sql).fetch(&mut conn);
        let mut n = 0u64;
        while rows.try_next().await?.is_some() {
            n += 1;
        }
        drop(rows);
        let secs = t.elapsed().as_secs_f64();
        if secs < best.1 {
            best = (n, secs);
        }
    }
    let _ = conn.close().await;
    let (n, secs) = best;
    Ok(Baseline {
        name: "raw_read_seq",
        value: round_sig(n as f64 / secs),
        unit: "rows/s",
        detail: json!({"rows": n, "seconds": round(secs, 3), "columns": EVENT_COLUMNS,
                       "what": "one SELECT of the consumer's columns over the whole events table, rows streamed to one connection, not decoded"}),
    })
}

// ---------------------------------------------------------------------------------------------
// HTTP phases
// ---------------------------------------------------------------------------------------------

struct HttpResult {
    rate: f64,
    /// Every request answered as expected in the phase, warm-up included.
    total: u64,
    detail: Value,
}

fn append_body(stream: &str, events: usize) -> String {
    append_body_with(stream, events, USAGE_DATA)
}

fn append_body_with(stream: &str, events: usize, data: &str) -> String {
    let one = format!(r#"{{"type":"TOKEN_USAGE","data":{data}}}"#);
    let list = vec![one; events].join(",");
    format!(r#"{{"stream_id":"{stream}","events":[{list}]}}"#)
}

/// What a load phase's clients send.
#[derive(Clone, Copy)]
enum Body {
    /// `USAGE_DATA`: appended, 201.
    Valid,
    /// `USAGE_DATA` with the field validation checks last made invalid: refused, 422
    /// (`http_refused_64`, the HTTP path without the database).
    Refused,
}

const REFUSED_USAGE_DATA: &str = r#"{"agent_id":"bench-agent","model":"claude-sonnet-4-5","input_tokens":1200,"output_tokens":350,"cache_read_tokens":-1}"#;

/// `clients` clients, each appending `per_request` events per request to its own stream; each
/// answer with the status `kind` expects is counted.
async fn http_appends(
    ingest_addr: SocketAddr,
    clients: usize,
    per_request: usize,
    label: &str,
    kind: Body,
    sizes: &Sizes,
    ingest: IngestProbe<'_>,
) -> anyhow::Result<HttpResult> {
    http_appends_among(ingest_addr, clients, per_request, label, kind, 0, sizes, ingest).await
}

/// `http_appends`, with `hostile` more clients sending `hostile_bodies` meanwhile. Their answers
/// are counted apart (`detail.hostile`); one that is not the refusal expected is an error of the
/// phase.
#[allow(clippy::too_many_arguments)]
async fn http_appends_among(
    ingest_addr: SocketAddr,
    clients: usize,
    per_request: usize,
    label: &str,
    kind: Body,
    hostile: usize,
    sizes: &Sizes,
    ingest: IngestProbe<'_>,
) -> anyhow::Result<HttpResult> {
    let c = Arc::new(Counters::default());
    let refused = Arc::new(AtomicU64::new(0));
    let refused_window = Arc::new(AtomicU64::new(0));
    let mut hostile_tasks = JoinSet::new();
    if hostile > 0 {
        let bodies = Arc::new(hostile_bodies());
        for k in 0..hostile {
            let (c, bodies, refused, refused_window) =
                (c.clone(), bodies.clone(), refused.clone(), refused_window.clone());
            hostile_tasks.spawn(async move {
                let mut conn = None;
                let mut i = k;
                while !c.stopped() {
                    let (body, expect) = &bodies[i % bodies.len()];
                    i += 1;
                    match post_raw(&mut conn, ingest_addr, body).await {
                        Ok((status, _)) if status == *expect => {
                            refused.fetch_add(1, Ordering::Relaxed);
                            if c.recording() {
                                refused_window.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                        Ok((status, text)) => c.error(format!(
                            "a hostile body was answered {status}, not {expect}: {}",
                            String::from_utf8_lossy(&text).chars().take(300).collect::<String>()
                        )),
                        Err(e) => {
                            c.error(format!("hostile client: {e}"));
                            tokio::time::sleep(Duration::from_millis(10)).await;
                        }
                    }
                }
            });
        }
    }
    let mut tasks = JoinSet::new();
    for k in 0..clients {
        // No event ids: every request is new, so ingest assigns them.
        let stream = format!("bench/{label}#{}", k + 1);
        let (data, expect) = match kind {
            Body::Valid => (USAGE_DATA, 201),
            Body::Refused => (REFUSED_USAGE_DATA, 422),
        };
        let body = append_body_with(&stream, per_request, data).into_bytes();
        let c = c.clone();
        tasks.spawn(async move {
            let mut samples = Vec::new();
            let mut conn = None;
            while !c.stopped() {
                let t = Instant::now();
                match post_raw(&mut conn, ingest_addr, &body).await {
                    Ok((status, _)) if status == expect => {
                        if c.recording() {
                            samples.push(t.elapsed().as_secs_f64() * 1e3);
                        }
                        c.ok.fetch_add(per_request as u64, Ordering::Relaxed);
                    }
                    Ok((status, text)) => c.error(format!("{status}: {}", String::from_utf8_lossy(&text))),
                    Err(e) => {
                        c.error(e);
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
            }
            samples
        });
    }
    let w = measure(&c, sizes, Some(ingest)).await;
    let mut samples = Vec::new();
    while let Some(r) = tasks.join_next().await {
        samples.extend(r?);
    }
    while let Some(r) = hostile_tasks.join_next().await {
        r?;
    }
    let lat = percentiles(samples);
    if w.ok == 0 {
        bail!(
            "no request was answered as expected: {}",
            c.first_error().unwrap_or_else(|| "no answer".into())
        );
    }
    let rate = w.rate(w.ok);
    let mut detail = json!({
        "clients": clients, "events_per_request": per_request, "events": w.ok,
        "requests_per_s": round(rate / per_request as f64, 1), "errors": w.errors,
        "seconds": round(w.secs, 3), "cpu": w.cpu_detail(w.ok),
        "request_ms": {"p50": lat.p50, "p99": lat.p99, "max": lat.max},
    });
    if let Some(e) = c.first_error() {
        detail["first_error"] = json!(e);
    }
    if hostile > 0 {
        detail["hostile"] = json!({
            "clients": hostile,
            "refused": refused.load(Ordering::Relaxed),
            "refused_per_s": round(refused_window.load(Ordering::Relaxed) as f64 / w.secs, 1),
            "bodies": "a NUL in data, a 5,000-character agent_id, a 100,000-character title, cost_usd 1e28 (422); a repeated key (400)",
        });
    }
    Ok(HttpResult {
        rate,
        total: c.ok.load(Ordering::Relaxed) / per_request as u64,
        detail,
    })
}

/// The bodies hostile clients send, each with the status it must be refused with: what an
/// outside review saw do damage (a NUL, a multi-KB id, a huge title, a `cost_usd` whose sums no
/// longer decode, a repeated key). Each has a stream of its own, so nothing honest is touched
/// even if one were taken.
fn hostile_bodies() -> Vec<(Vec<u8>, u16)> {
    let usage = |stream: &str, data: &str| append_body_with(stream, 1, data).into_bytes();
    vec![
        (
            usage(
                "bench/hostile#1",
                r#"{"agent_id":"bench-agent","model":"claude-sonnet-4-5","input_tokens":1,"output_tokens":1,"note":"a\u0000b"}"#,
            ),
            422,
        ),
        (
            format!(
                r#"{{"stream_id":"bench/hostile#2","events":[{{"type":"ISSUE_ASSIGNED","data":{{"agent_id":"{}"}}}}]}}"#,
                "x".repeat(5000)
            )
            .into_bytes(),
            422,
        ),
        (
            format!(
                r#"{{"stream_id":"bench/hostile#3","events":[{{"type":"ISSUE_APPROVED","data":{{"title":"{}"}}}}]}}"#,
                "t".repeat(100_000)
            )
            .into_bytes(),
            422,
        ),
        (
            usage(
                "bench/hostile#4",
                r#"{"agent_id":"bench-agent","model":"claude-sonnet-4-5","input_tokens":1,"output_tokens":1,"cost_usd":1e28}"#,
            ),
            422,
        ),
        (
            usage(
                "bench/hostile#5",
                r#"{"agent_id":"bench-agent","agent_id":"other","model":"claude-sonnet-4-5","input_tokens":1,"output_tokens":1}"#,
            ),
            400,
        ),
    ]
}

/// Honest single-event appends by 64 clients, alone and then alongside 4 hostile clients (each
/// cycling through `hostile_bodies`), back to back so both see the same machine: the rate with
/// them must stay at least 0.6 of the rate without. Returns the rate without as the baseline and
/// the rate with as the figure.
async fn hostile_phase(
    ingest_addr: SocketAddr,
    sizes: &Sizes,
    probe: IngestProbe<'_>,
    steps: [&str; 2],
) -> anyhow::Result<(Baseline, Figure)> {
    progress(&format!(
        "{} honest single-event appends, 64 clients, no hostile ones, {} s …",
        steps[0], sizes.seconds
    ));
    let alone = http_appends_among(ingest_addr, 64, 1, "honest", Body::Valid, 0, sizes, probe).await?;
    progress(&format!("      {:.0} events/s", alone.rate));
    progress(&format!(
        "{} the same 64 honest clients with 4 hostile ones (NUL, oversize, huge cost_usd, repeated keys), {} s …",
        steps[1], sizes.seconds
    ));
    let with = http_appends_among(ingest_addr, 64, 1, "honest", Body::Valid, 4, sizes, probe).await?;
    progress(&format!(
        "      {:.0} events/s ({:.0} hostile requests/s refused)",
        with.rate, with.detail["hostile"]["refused_per_s"]
    ));
    let baseline = Baseline {
        name: "append_single_http_64_without_hostile",
        value: alone.rate,
        unit: "events/s",
        detail: {
            let mut d = alone.detail;
            d["what"] = json!(
                "the 64 honest clients of the hostile phase alone, measured right before them with 4 hostile clients"
            );
            d
        },
    };
    let figure = Figure::of("append_single_http_64_with_4_hostile", with.rate, "events/s", &baseline)
        .at_least(">= 0.6x the same clients without hostile ones", Some(0.6), None)
        .detail(with.detail);
    Ok((baseline, figure))
}

async fn post(http: &reqwest::Client, url: &str, body: bytes::Bytes) -> Result<(u16, bytes::Bytes), String> {
    let r = http
        .post(url)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(body)
        .send()
        .await
        .map_err(|e| format!("request failed: {e}"))?;
    let status = r.status().as_u16();
    // Reading the body to the end lets the connection be reused.
    let bytes = r.bytes().await.map_err(|e| format!("reading the answer failed: {e}"))?;
    Ok((status, bytes))
}

/// One append over the client's own keep-alive connection (`http_load`), reconnecting after a
/// failure.
async fn post_raw(
    conn: &mut Option<crate::http_load::Conn>,
    addr: SocketAddr,
    body: &[u8],
) -> Result<(u16, Vec<u8>), String> {
    if conn.is_none() {
        *conn = Some(crate::http_load::Conn::connect(addr).await?);
    }
    let c = conn.as_mut().expect("just connected");
    let r = c.post("/v1/events", body).await;
    if r.is_err() {
        *conn = None;
    }
    r
}

/// Readers and the stream they read in the read-burst phase.
const READ_BURST_READERS: usize = 32;
const READ_BURST_EVENTS: usize = 20_000;
/// Single-event appends per second during the read-burst phase, spread over 8 clients: a steady
/// trickle well under the machine's capacity, so what changes between the two windows is the
/// readers alone.
const READ_BURST_RATE: u32 = 500;
const READ_BURST_APPENDERS: usize = 8;

struct ReadBurst {
    quiet: Percentiles,
    busy: Percentiles,
    reads_per_s: f64,
    detail: Value,
}

/// The progress line of the read-burst phase.
fn read_burst_announcement(sizes: &Sizes, step: &str) -> String {
    format!(
        "{step} read burst: {READ_BURST_RATE} appends/s alone, then with {READ_BURST_READERS} readers of a \
         {READ_BURST_EVENTS}-event stream, {} s each …",
        sizes.seconds
    )
}

/// The read burst's baseline (append p99 without readers) and figure (with them).
fn read_burst_figure(burst: ReadBurst) -> (Baseline, Figure) {
    progress(&format!(
        "      append p99 {:.2} ms alone, {:.2} ms with readers; {:.0} reads/s",
        burst.quiet.p99, burst.busy.p99, burst.reads_per_s
    ));
    let baseline = Baseline {
        name: "read_burst_append_p99_without_readers",
        value: burst.quiet.p99,
        unit: "ms (p99)",
        detail: json!({"what": "the same appends, on the same connections, in the window before the readers start",
                       "p50_ms": burst.quiet.p50, "max_ms": burst.quiet.max}),
    };
    let figure = Figure::new(
        "read_burst_append_p99",
        burst.busy.p99,
        "ms",
        "read_burst_append_p99_without_readers",
        burst.quiet.p99,
    )
    .ratio_at_most("p99 <= 1.2x the same appends without readers", 1.2)
    .detail(burst.detail);
    (baseline, figure)
}

/// Append latency at a steady rate, first alone, then while 32 readers in a closed loop read a
/// 20,000-event issue stream (its first page, a time-travel read that folds half of it, and the
/// issue's state, in turn). The appenders run through both windows on the same connections, so
/// the two p99s differ by the readers alone.
async fn read_burst(ingest_addr: SocketAddr, sizes: &Sizes, ingest: IngestProbe<'_>) -> anyhow::Result<ReadBurst> {
    use crate::http_load::Conn;
    let sid = "bench/read-burst#1";
    let enc = sid.replace('/', "%2F").replace('#', "%23");
    let mut conn = Conn::connect(ingest_addr).await.map_err(|e| anyhow!(e))?;
    let approve =
        format!(r#"{{"stream_id":"{sid}","events":[{{"type":"ISSUE_APPROVED","data":{{"title":"read burst"}}}}]}}"#);
    let heartbeats = append_body_with(sid, 1000, r#"{"agent_id":"bench-reader"}"#).replace("TOKEN_USAGE", "HEARTBEAT");
    let bodies = std::iter::once(("creating the stream", approve)).chain(std::iter::repeat_n(
        ("filling the stream", heartbeats),
        READ_BURST_EVENTS / 1000,
    ));
    for (what, body) in bodies {
        let (s, text) = conn.post("/v1/events", body.as_bytes()).await.map_err(|e| anyhow!(e))?;
        if s != 201 {
            bail!("read burst: {what}: {s}: {}", String::from_utf8_lossy(&text));
        }
    }

    // 0 warm-up, 1 quiet window, 2 readers warming up, 3 busy window, 4 stop.
    let phase = Arc::new(std::sync::atomic::AtomicU8::new(0));
    let appends = Arc::new(Counters::default());
    let mut appenders = JoinSet::new();
    let interval = Duration::from_secs_f64(READ_BURST_APPENDERS as f64 / f64::from(READ_BURST_RATE));
    for k in 0..READ_BURST_APPENDERS {
        let body = append_body(&format!("bench/read-burst-appends#{}", k + 1), 1).into_bytes();
        let (phase, c) = (phase.clone(), appends.clone());
        appenders.spawn(async move {
            let (mut quiet, mut busy) = (Vec::new(), Vec::new());
            let mut conn = None;
            let mut ticker = tokio::time::interval(interval);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            loop {
                ticker.tick().await;
                let p = phase.load(Ordering::Relaxed);
                if p >= 4 {
                    break;
                }
                let t = Instant::now();
                match post_raw(&mut conn, ingest_addr, &body).await {
                    Ok((201, _)) => {
                        let ms = t.elapsed().as_secs_f64() * 1e3;
                        match p {
                            1 => quiet.push(ms),
                            3 => busy.push(ms),
                            _ => {}
                        }
                        c.ok.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok((s, text)) => c.error(format!("append: {s}: {}", String::from_utf8_lossy(&text))),
                    Err(e) => c.error(format!("append: {e}")),
                }
            }
            (quiet, busy)
        });
    }
    tokio::time::sleep(sizes.warmup()).await;
    phase.store(1, Ordering::Relaxed);
    let q0 = Snap::take(&appends, Some(ingest.pid));
    tokio::time::sleep(sizes.measure()).await;
    let q1 = Snap::take(&appends, Some(ingest.pid));
    phase.store(2, Ordering::Relaxed);

    let reads = Arc::new(Counters::default());
    let busy_answers = Arc::new(AtomicU64::new(0));
    // The readers run on a runtime of their own: receiving their large answers must not delay
    // the appenders' tasks, whose timings would then measure the load generator, not ingest.
    let reader_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("bench-readers")
        .enable_all()
        .build()?;
    let mut readers = JoinSet::new();
    for r in 0..READ_BURST_READERS {
        let paths = [
            format!("/v1/streams/{enc}"),
            format!("/v1/streams/{enc}?to_version={}&limit=100", READ_BURST_EVENTS / 2 + r),
            format!("/v1/issues/{enc}"),
        ];
        let (phase, c, busy_answers) = (phase.clone(), reads.clone(), busy_answers.clone());
        readers.spawn_on(
            async move {
                let mut samples = Vec::new();
                let mut conn: Option<Conn> = None;
                let mut i = r;
                while phase.load(Ordering::Relaxed) < 4 {
                    i += 1;
                    if conn.is_none() {
                        match Conn::connect(ingest_addr).await {
                            Ok(c) => conn = Some(c),
                            Err(e) => {
                                c.error(e);
                                tokio::time::sleep(Duration::from_millis(10)).await;
                                continue;
                            }
                        }
                    }
                    let Some(cn) = conn.as_mut() else { continue };
                    let t = Instant::now();
                    match cn.get(&paths[i % paths.len()]).await {
                        Ok((200, _)) => {
                            if phase.load(Ordering::Relaxed) == 3 {
                                samples.push(t.elapsed().as_secs_f64() * 1e3);
                            }
                            c.ok.fetch_add(1, Ordering::Relaxed);
                        }
                        // Told to come back later: the read pool was busy for too long.
                        Ok((503 | 408, _)) => {
                            busy_answers.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok((s, text)) => c.error(format!("read: {s}: {}", String::from_utf8_lossy(&text))),
                        Err(e) => {
                            conn = None;
                            c.error(format!("read: {e}"));
                        }
                    }
                }
                samples
            },
            reader_rt.handle(),
        );
    }
    tokio::time::sleep(sizes.warmup()).await;
    phase.store(3, Ordering::Relaxed);
    let b0 = Snap::take(&appends, Some(ingest.pid));
    let r0 = reads.ok.load(Ordering::Relaxed);
    tokio::time::sleep(sizes.measure()).await;
    let b1 = Snap::take(&appends, Some(ingest.pid));
    let r1 = reads.ok.load(Ordering::Relaxed);
    phase.store(4, Ordering::Relaxed);

    let (mut quiet, mut busy) = (Vec::new(), Vec::new());
    while let Some(r) = appenders.join_next().await {
        let (q, b) = r?;
        quiet.extend(q);
        busy.extend(b);
    }
    let mut read_ms = Vec::new();
    while let Some(r) = readers.join_next().await {
        read_ms.extend(r?);
    }
    // Its tasks are done; it cannot be dropped inside this runtime, only let go.
    reader_rt.shutdown_background();
    if quiet.is_empty() || busy.is_empty() {
        bail!(
            "read burst: no append succeeded in a window: {}",
            appends.first_error().unwrap_or_else(|| "no answer".into())
        );
    }
    let (wq, wb) = (Window::between(&q0, &q1), Window::between(&b0, &b1));
    let reads_per_s = (r1 - r0) as f64 / wb.secs;
    let (pq, pb, pr) = (percentiles(quiet), percentiles(busy), percentiles(read_ms));
    let mut detail = json!({
        "stream_events": READ_BURST_EVENTS + 1, "readers": READ_BURST_READERS,
        "appenders": READ_BURST_APPENDERS, "append_rate_per_s": READ_BURST_RATE,
        "reads": "in turn: GET /v1/streams/{id} (the default page), ?to_version=N&limit=100 (a fold of ~10,000 events), GET /v1/issues/{id}",
        "append_ms_without_readers": {"p50": pq.p50, "p99": pq.p99, "max": pq.max, "appends_per_s": round(wq.rate(wq.ok), 1),
                                      "machine_busy_pct": wq.machine_busy_pct.map(|p| round(p, 1))},
        "append_ms_with_readers": {"p50": pb.p50, "p99": pb.p99, "max": pb.max, "appends_per_s": round(wb.rate(wb.ok), 1),
                                   "machine_busy_pct": wb.machine_busy_pct.map(|p| round(p, 1)),
                                   "ingest_cpu_pct_of_core": wb.ingest_cpu.map(|c| round(100.0 * c / wb.secs, 1))},
        "reads_per_s": round(reads_per_s, 1), "read_ms": {"p50": pr.p50, "p99": pr.p99, "max": pr.max},
        "reads_told_to_retry": busy_answers.load(Ordering::Relaxed),
        "append_errors": appends.errors.load(Ordering::Relaxed), "read_errors": reads.errors.load(Ordering::Relaxed),
    });
    if let Some(e) = appends.first_error().or_else(|| reads.first_error()) {
        detail["first_error"] = json!(e);
    }
    Ok(ReadBurst {
        quiet: pq,
        busy: pb,
        reads_per_s,
        detail,
    })
}

struct ClaimResult {
    claims_per_s: f64,
    conflicts_per_s: f64,
    detail: Value,
}

/// 64 agents race for 32 issues; a winner releases its issue at once so the race goes on.
async fn claim_race(
    http: &reqwest::Client,
    url: &str,
    ingest_addr: SocketAddr,
    sizes: &Sizes,
    ingest: IngestProbe<'_>,
) -> anyhow::Result<ClaimResult> {
    const ISSUES: u64 = 32;
    const CLIENTS: usize = 64;
    for n in 1..=ISSUES {
        let body = format!(r#"{{"stream_id":"bench/claims#{n}","events":[{{"type":"ISSUE_APPROVED"}}]}}"#);
        match post(http, url, body.into()).await {
            Ok((201, _)) => {}
            Ok((s, text)) => bail!("approving bench/claims#{n}: {s}: {}", String::from_utf8_lossy(&text)),
            Err(e) => bail!("approving bench/claims#{n}: {e}"),
        }
    }
    let c = Arc::new(Counters::default());
    let releases = Arc::new(AtomicU64::new(0));
    let mut tasks = JoinSet::new();
    for k in 0..CLIENTS {
        let (c, releases) = (c.clone(), releases.clone());
        tasks.spawn(async move {
            let agent = format!("bench-agent-{k}");
            let mut conn = None;
            while !c.stopped() {
                let n = rand::random_range(1..=ISSUES);
                let claim = format!(
                    r#"{{"stream_id":"bench/claims#{n}","events":[{{"type":"ISSUE_ASSIGNED","data":{{"agent_id":"{agent}"}}}}]}}"#
                );
                match post_raw(&mut conn, ingest_addr, claim.as_bytes()).await {
                    Ok((201, _)) => {
                        c.ok.fetch_add(1, Ordering::Relaxed);
                        let release = format!(
                            r#"{{"stream_id":"bench/claims#{n}","events":[{{"type":"ISSUE_UNASSIGNED","data":{{"reason":"bench_release","agent_id":"{agent}"}}}}]}}"#
                        );
                        match post_raw(&mut conn, ingest_addr, release.as_bytes()).await {
                            Ok((201, _)) => {
                                releases.fetch_add(1, Ordering::Relaxed);
                            }
                            Ok((s, text)) => c.error(format!("release: {s}: {}", String::from_utf8_lossy(&text))),
                            Err(e) => c.error(e),
                        }
                    }
                    Ok((409, text)) if text.windows(16).any(|w| w == b"already_assigned") => {
                        c.conflicts.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok((s, text)) => c.error(format!("claim: {s}: {}", String::from_utf8_lossy(&text))),
                    Err(e) => {
                        c.error(e);
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
            }
        });
    }
    let before = releases.load(Ordering::Relaxed);
    let w = measure(&c, sizes, Some(ingest)).await;
    let released = releases.load(Ordering::Relaxed) - before;
    while tasks.join_next().await.is_some() {}
    if w.ok == 0 {
        bail!(
            "no claim succeeded: {}",
            c.first_error().unwrap_or_else(|| "no answer".into())
        );
    }
    let appends = w.ok + released;
    let mut detail = json!({
        "clients": CLIENTS, "issues": ISSUES, "claims": w.ok, "conflicts": w.conflicts,
        "releases_approx": released, "appends_per_s": round(w.rate(appends), 1),
        "requests_per_s": round(w.rate(appends + w.conflicts), 1), "errors": w.errors,
        "seconds": round(w.secs, 3), "cpu": w.cpu_detail(appends),
        "what": "each client claims a random issue (ISSUE_ASSIGNED); a winner releases it at once (ISSUE_UNASSIGNED), a loser gets 409 already_assigned",
    });
    if let Some(e) = c.first_error() {
        detail["first_error"] = json!(e);
    }
    Ok(ClaimResult {
        claims_per_s: w.rate(w.ok),
        conflicts_per_s: w.rate(w.conflicts),
        detail,
    })
}

// ---------------------------------------------------------------------------------------------
// Rebuild
// ---------------------------------------------------------------------------------------------

/// `n` TOKEN_USAGE events in one transaction under the append lock (so positions are ordered as
/// ingest would order them): 1000 streams (issues of 20 repos and 8 agent streams), 8 agents,
/// 4 models (one unpriced), 30 days; a quarter carry `cost_usd`, half of those as strings.
async fn generate_usage_events(pool: &PgPool, n: u64, prefix: &str) -> anyhow::Result<()> {
    let t = Instant::now();
    let mut tx = pool.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(rig_log::db::APPEND_LOCK_KEY)
        .execute(&mut *tx)
        .await?;
    sqlx::query(
        "INSERT INTO events (stream_id, version, event_id, event_type, data, occurred_at) \
         SELECT CASE WHEN s < 992 THEN $2 || '/repo-' || (s % 20) || '#' || (s + 1) \
                     ELSE 'agent:' || $2 || '-' || (s - 992) END, \
                i / 1000 + 1, gen_random_uuid(), 'TOKEN_USAGE', \
                jsonb_build_object('agent_id', 'agent-' || (i % 8), \
                    'model', (ARRAY['claude-sonnet-4-5', 'claude-opus-4-1', 'claude-haiku-4-5', 'unpriced-model'])[1 + i % 4], \
                    'input_tokens', (i * 7919) % 50000, 'output_tokens', (i * 104729) % 8000, \
                    'cache_read_tokens', (i * 31) % 20000, 'cache_write_tokens', (i * 17) % 3000) \
                || CASE i % 8 WHEN 0 THEN jsonb_build_object('cost_usd', ((i % 1000) / 1000.0)::numeric) \
                              WHEN 4 THEN jsonb_build_object('cost_usd', ((i % 1000) / 1000.0)::text) \
                              ELSE '{}'::jsonb END, \
                timestamptz '2025-10-01 00:00:00+00' + (i % 30) * interval '1 day' + (i % 86400) * interval '1 second' \
         FROM generate_series(0::bigint, $1 - 1) AS i, LATERAL (SELECT i % 1000 AS s) x",
    )
    .bind(i64::try_from(n).context("too many events to generate")?)
    .bind(prefix)
    .execute(&mut *tx)
    .await
    .context("generate TOKEN_USAGE events")?;
    tx.commit().await?;
    // What autovacuum would have done on a log of this age: hint bits set and the visibility map
    // filled, so neither the raw read nor the rebuild pays for a fresh bulk load.
    sqlx::query("VACUUM (ANALYZE) events").execute(pool).await?;
    // A bulk load of a million events writes about a gigabyte of WAL, which sets off checkpoints
    // that would land in the phases after it (the latency phase measured a p99 of 52 ms once,
    // against 5-7 ms otherwise). A live rig never loads that much at once, so the bench pays for
    // its own bulk load here rather than in a figure.
    let checkpoint = sqlx::query("CHECKPOINT").execute(pool).await;
    progress(&format!(
        "      generated, vacuumed and checkpointed in {:.1} s{}",
        t.elapsed().as_secs_f64(),
        match checkpoint {
            Ok(_) => String::new(),
            Err(e) => format!(" (CHECKPOINT refused: {e}; a checkpoint may land in the next phase)"),
        }
    ));
    Ok(())
}

fn bench_prices() -> Vec<Price> {
    PRICES
        .iter()
        .filter_map(|(model, from, i, o, cr, cw)| {
            Some(Price {
                model: (*model).to_owned(),
                effective_from: from.parse().ok()?,
                input_per_mtok: i.parse::<Decimal>().ok()?,
                output_per_mtok: o.parse::<Decimal>().ok()?,
                cache_read_per_mtok: cr.parse::<Decimal>().ok()?,
                cache_write_per_mtok: cw.parse::<Decimal>().ok()?,
            })
        })
        .collect()
}

/// The token-projector's own consumer (its lib, in this process), reset to position 0 and run
/// batch after batch until it is idle at the head.
async fn rebuild_token_projector(pool: &PgPool, raw_read: &Baseline) -> anyhow::Result<Figure> {
    let head: i64 = sqlx::query_scalar("SELECT coalesce(max(position), 0) FROM events")
        .fetch_one(pool)
        .await?;
    rig_consumer::reset(pool, &TOKEN_PROJECTOR).await?;
    let cfg = ConsumerConfig::from_settings(&rig_ops::config::ConsumerSettings::default());
    let batch_size = cfg.batch_size;
    let projection = rig_projections::token::TokenProjection::new(PriceTable::new(&bench_prices()));
    let mut consumer = Consumer::new(pool.clone(), projection, cfg);
    let t = Instant::now();
    let mut last_note = Instant::now();
    let (mut scanned, mut batches) = (0u64, 0u64);
    loop {
        match consumer.run_once().await? {
            Outcome::Applied { events, position } => {
                scanned += events as u64;
                batches += 1;
                if last_note.elapsed() > Duration::from_secs(2) {
                    progress(&format!("      … position {position} of {head}"));
                    last_note = Instant::now();
                }
            }
            Outcome::Idle { .. } => break,
            Outcome::Fenced => {}
            Outcome::Paused { position, .. } => {
                bail!("the token-projector paused at position {position} during the rebuild")
            }
            Outcome::Failed { position, error } => bail!("the token-projector failed at position {position}: {error}"),
        }
    }
    let secs = t.elapsed().as_secs_f64();
    let summed: Option<i64> = sqlx::query_scalar("SELECT sum(events)::bigint FROM token_usage")
        .fetch_one(pool)
        .await?;
    let rate = scanned as f64 / secs;
    Ok(Figure::of("token_projector_rebuild", rate, "events/s", raw_read)
        .at_least(">= 150000/s and >= 0.4x raw read", Some(0.4), Some(150_000.0))
        .detail(json!({
            "events": scanned, "head": head, "seconds": round(secs, 3), "batches": batches, "batch_size": batch_size,
            "token_usage_events_summed": summed,
            "how": "rig_projections::token::TokenProjection in rig_consumer::Consumer, in-process, reset to 0, run_once until idle",
        })))
}

// ---------------------------------------------------------------------------------------------
// Latency
// ---------------------------------------------------------------------------------------------

struct LatencyResult {
    p50: f64,
    p99: f64,
    max: f64,
    detail: Value,
}

/// TOKEN_USAGE appended over HTTP at a fixed rate (open loop: a slow answer never slows the
/// next request), while a dedicated connection samples the token-projector's checkpoint every
/// millisecond. The checkpoint is written in the same transaction as `token_usage`, so the first
/// sample at or past an append's position is when `token_usage` reflects it; the latency is from
/// the HTTP acknowledgement to that sample (0 when the projector was faster than the answer).
async fn append_to_projection_latency(
    http: &reqwest::Client,
    url: &str,
    pool: &PgPool,
    opts: &PgConnectOptions,
    sizes: &Sizes,
    token: &mut Worker,
) -> anyhow::Result<LatencyResult> {
    let checkpoint = |pool: PgPool| async move {
        sqlx::query_scalar::<_, i64>("SELECT position FROM checkpoints WHERE consumer = 'token-projector'")
            .fetch_optional(&pool)
            .await
    };
    // The projector starts where the in-process rebuild left its checkpoint: at the head.
    let head: i64 = sqlx::query_scalar("SELECT coalesce(max(position), 0) FROM events")
        .fetch_one(pool)
        .await?;
    let deadline = Instant::now() + Duration::from_secs(120);
    while checkpoint(pool.clone()).await?.unwrap_or(0) < head {
        token.check_alive()?;
        if Instant::now() > deadline {
            bail!("rig-token-projector did not reach the head ({head}) within 120 s");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The projector answers /readyz before its LISTEN connection is up, and until then it only
    // polls (every second). Probe until appends are picked up promptly, so the figure measures
    // the steady state, not the start.
    let probe_deadline = Instant::now() + Duration::from_secs(30);
    let (mut prompt, mut probes) = (0, 0);
    while prompt < 3 && Instant::now() < probe_deadline {
        token.check_alive()?;
        probes += 1;
        let text = match post(http, url, append_body("bench/latency#1", 1).into()).await {
            Ok((201, text)) => text,
            Ok((s, text)) => bail!("latency probe: {s}: {}", String::from_utf8_lossy(&text)),
            Err(e) => bail!("latency probe: {e}"),
        };
        let pos = serde_json::from_slice::<Value>(&text)
            .ok()
            .and_then(|v| v["last_position"].as_i64())
            .context("latency probe: 201 without last_position")?;
        let t = Instant::now();
        while checkpoint(pool.clone()).await?.unwrap_or(0) < pos && t.elapsed() < Duration::from_secs(2) {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        prompt = if t.elapsed() < Duration::from_millis(200) {
            prompt + 1
        } else {
            0
        };
    }
    let warmed_up = prompt >= 3;
    if !warmed_up {
        progress(
            "      the token-projector never picked up appends within 200 ms during 30 s of probes; measuring anyway",
        );
    }

    let done = Arc::new(AtomicBool::new(false));
    let target = Arc::new(AtomicI64::new(i64::MAX));
    let sampling = Arc::new(AtomicBool::new(false));
    // The sampler has a thread and a runtime of its own, so the load generator's tasks never
    // delay a sample.
    let poller = {
        let (done, target, sampling, opts) = (done.clone(), target.clone(), sampling.clone(), opts.clone());
        std::thread::spawn(move || -> anyhow::Result<(Vec<(Instant, i64)>, u64)> {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            rt.block_on(sample_checkpoint(opts, done, target, sampling))
        })
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while !sampling.load(Ordering::Relaxed) {
        if poller.is_finished() || Instant::now() > deadline {
            let r = tokio::task::spawn_blocking(move || poller.join()).await?;
            bail!("the checkpoint sampler did not start: {:?}", r.map(|r| r.err()));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }

    let acks: Arc<Mutex<Vec<(Instant, i64)>>> = Arc::new(Mutex::new(Vec::new()));
    let c = Arc::new(Counters::default());
    let total = (sizes.latency_rate as f64 * sizes.latency_seconds).round().max(1.0) as u64;
    let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(sizes.latency_rate)));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut tasks = JoinSet::new();
    let started = Instant::now();
    let (token_ticks0, machine0) = (cpu_ticks(token.pid()), machine_ticks());
    for i in 0..total {
        ticker.tick().await;
        let body = append_body(&format!("bench/latency#{}", i % 64 + 1), 1);
        let (http, url, acks, c) = (http.clone(), url.to_owned(), acks.clone(), c.clone());
        tasks.spawn(async move {
            match post(&http, &url, body.into()).await {
                Ok((201, text)) => {
                    let at = Instant::now();
                    match serde_json::from_slice::<Value>(&text)
                        .ok()
                        .and_then(|v| v["last_position"].as_i64())
                    {
                        Some(p) => acks.lock().unwrap_or_else(|e| e.into_inner()).push((at, p)),
                        None => c.error(format!("201 without last_position: {}", String::from_utf8_lossy(&text))),
                    }
                }
                Ok((s, text)) => c.error(format!("{s}: {}", String::from_utf8_lossy(&text))),
                Err(e) => c.error(e),
            }
        });
    }
    let sent_in = started.elapsed().as_secs_f64();
    // What a steady trickle costs: the projector's own CPU, and how busy the machine was (the
    // tail of the latency grows as the 2 cores fill up).
    let token_cpu_pct = match (token_ticks0, cpu_ticks(token.pid())) {
        (Some(a), Some(b)) => Some(round(
            100.0 * b.saturating_sub(a) as f64 / clock_ticks_per_second() / sent_in,
            1,
        )),
        _ => None,
    };
    let machine_busy_pct = busy_pct(machine0, machine_ticks()).map(|p| round(p, 1));
    while tasks.join_next().await.is_some() {}
    let acks = std::mem::take(&mut *acks.lock().unwrap_or_else(|e| e.into_inner()));
    let last = acks.iter().map(|(_, p)| *p).max().unwrap_or(0);
    target.store(last, Ordering::Relaxed);
    done.store(true, Ordering::Relaxed);
    let (seen, polls) = tokio::task::spawn_blocking(move || poller.join())
        .await?
        .map_err(|_| anyhow!("the checkpoint sampler panicked"))??;
    token.check_alive()?;
    if acks.is_empty() {
        bail!(
            "no latency append succeeded: {}",
            c.first_error().unwrap_or_else(|| "no answer".into())
        );
    }

    let mut ms = Vec::with_capacity(acks.len());
    let mut unreflected = 0u64;
    for (acked, pos) in &acks {
        let i = seen.partition_point(|(_, p)| *p < *pos);
        match seen.get(i) {
            Some((at, _)) => ms.push(at.saturating_duration_since(*acked).as_secs_f64() * 1e3),
            None => unreflected += 1,
        }
    }
    if unreflected > 0 {
        bail!(
            "{unreflected} of {} appends never reached token_usage within 30 s",
            acks.len()
        );
    }
    let sampled_for = seen
        .last()
        .map(|(t, _)| t.duration_since(started).as_secs_f64())
        .unwrap_or(sent_in);
    let p = percentiles(ms);
    let mut detail = json!({
        "appends": acks.len(), "errors": c.errors.load(Ordering::Relaxed),
        "target_rate_per_s": sizes.latency_rate, "achieved_rate_per_s": round(total as f64 / sent_in, 1),
        "warm_up_probes": probes, "warmed_up": warmed_up, "checkpoint_samples": polls, "mean_sample_interval_ms": round(1e3 * sampled_for / polls.max(1) as f64, 3),
        "poll_interval": "default (1s); the projector wakes on ingest's NOTIFY",
        "token_projector_cpu_pct_of_core": token_cpu_pct, "machine_busy_pct": machine_busy_pct,
        "how": "ack = HTTP 201 received; reflected = first checkpoint sample >= the append's last_position (checkpoint and token_usage commit together)",
    });
    if let Some(e) = c.first_error() {
        detail["first_error"] = json!(e);
    }
    Ok(LatencyResult {
        p50: p.p50,
        p99: p.p99,
        max: p.max,
        detail,
    })
}

/// Samples the token-projector's checkpoint about every millisecond until `done` and the
/// checkpoint reached `target` (or 30 s after `done`). Returns each change with when it was seen.
async fn sample_checkpoint(
    opts: PgConnectOptions,
    done: Arc<AtomicBool>,
    target: Arc<AtomicI64>,
    sampling: Arc<AtomicBool>,
) -> anyhow::Result<(Vec<(Instant, i64)>, u64)> {
    let mut conn = PgConnection::connect_with(&opts).await?;
    let mut seen: Vec<(Instant, i64)> = Vec::new();
    let mut polls = 0u64;
    let mut done_at: Option<Instant> = None;
    loop {
        let p: i64 = sqlx::query_scalar("SELECT position FROM checkpoints WHERE consumer = 'token-projector'")
            .fetch_one(&mut conn)
            .await?;
        let now = Instant::now();
        polls += 1;
        sampling.store(true, Ordering::Relaxed);
        if seen.last().is_none_or(|(_, last)| *last != p) {
            seen.push((now, p));
        }
        if done.load(Ordering::Relaxed) {
            let since = *done_at.get_or_insert(now);
            if p >= target.load(Ordering::Relaxed) || now.duration_since(since) > Duration::from_secs(30) {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let _ = conn.close().await;
    Ok((seen, polls))
}

// ---------------------------------------------------------------------------------------------
// Idle
// ---------------------------------------------------------------------------------------------

/// Waits until every consumer's checkpoint is at the head. Returns the seconds it took.
async fn wait_caught_up(pool: &PgPool, workers: &mut [Worker], timeout_secs: u64) -> anyhow::Result<f64> {
    let t = Instant::now();
    let mut last_note = Instant::now();
    loop {
        for w in workers.iter_mut() {
            w.check_alive()?;
        }
        let head: i64 = sqlx::query_scalar("SELECT coalesce(max(position), 0) FROM events")
            .fetch_one(pool)
            .await?;
        let behind: Vec<(String, i64)> = sqlx::query_as(
            "SELECT n, coalesce(c.position, 0) FROM unnest($1::text[]) AS n LEFT JOIN checkpoints c ON c.consumer = n \
             WHERE coalesce(c.position, 0) < $2",
        )
        .bind(rig_projections::CONSUMERS.iter().map(|c| c.name).collect::<Vec<_>>())
        .bind(head)
        .fetch_all(pool)
        .await?;
        if behind.is_empty() {
            return Ok(t.elapsed().as_secs_f64());
        }
        if t.elapsed() > Duration::from_secs(timeout_secs) {
            bail!("workers still behind the head ({head}) after {timeout_secs} s: {behind:?}");
        }
        if last_note.elapsed() > Duration::from_secs(5) {
            let list: Vec<String> = behind.iter().map(|(n, p)| format!("{n} at {p}")).collect();
            progress(&format!("      … head {head}; {}", list.join(", ")));
            last_note = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn idle_figures(workers: &mut [Worker], sizes: &Sizes) -> anyhow::Result<Vec<Figure>> {
    let before: Vec<Option<u64>> = workers.iter().map(|w| cpu_ticks(w.pid())).collect();
    let t = Instant::now();
    tokio::time::sleep(Duration::from_secs_f64(sizes.idle_seconds)).await;
    let secs = t.elapsed().as_secs_f64();
    let tck = clock_ticks_per_second();
    let mut out = Vec::new();
    for (w, before) in workers.iter_mut().zip(before) {
        w.check_alive()?;
        let after = cpu_ticks(w.pid());
        let (Some(b), Some(a)) = (before, after) else {
            bail!("cannot read /proc/{}/stat of {}", w.pid(), w.name)
        };
        let cpu_pct = 100.0 * a.saturating_sub(b) as f64 / tck / secs;
        let rss = status_kib(w.pid(), "VmRSS:").context("read VmRSS")? as f64 / 1024.0;
        let hwm = status_kib(w.pid(), "VmHWM:").context("read VmHWM")? as f64 / 1024.0;
        let short = w.name.trim_start_matches("rig-").replace('-', "_");
        let window = json!({"pid": w.pid(), "seconds": round(secs, 3), "cpu_ticks": a.saturating_sub(b),
                            "resolution_pct": round(100.0 / tck / secs, 3)});
        out.push(
            Figure::new(format!("idle_cpu_{short}"), cpu_pct, "% of core", "one_core", 100.0)
                .at_most("~0 % (<= 1 % of a core)", IDLE_CPU_MAX_PCT)
                .detail(window),
        );
        out.push(
            Figure::new(
                format!("idle_rss_{short}"),
                rss,
                "MiB",
                "rss_budget_30mib",
                RSS_BUDGET_MIB,
            )
            .at_most("<= 30 MiB (VmRSS)", RSS_BUDGET_MIB),
        );
        out.push(
            Figure::new(
                format!("peak_rss_{short}"),
                hwm,
                "MiB",
                "rss_budget_30mib",
                RSS_BUDGET_MIB,
            )
            .detail(json!({"what": "VmHWM: the peak over the whole run, load included (informational)"})),
        );
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// /proc
// ---------------------------------------------------------------------------------------------

/// utime + stime of a process, in clock ticks.
fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses; the fields after its last ')' do not.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // Fields 14 and 15 of stat(5); `rest` starts at field 3.
    Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
}

/// (busy, total) clock ticks of the whole machine from /proc/stat.
/// The share of the machine's CPU time that was busy between two `machine_ticks` readings.
fn busy_pct(a: Option<(u64, u64)>, b: Option<(u64, u64)>) -> Option<f64> {
    match (a, b) {
        (Some((busy0, total0)), Some((busy1, total1))) if total1 > total0 => {
            Some(100.0 * busy1.saturating_sub(busy0) as f64 / (total1 - total0) as f64)
        }
        _ => None,
    }
}

fn machine_ticks() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().next()?;
    let v: Vec<u64> = line.split_whitespace().skip(1).filter_map(|x| x.parse().ok()).collect();
    let total: u64 = v.iter().take(8).sum();
    let idle = v.get(3)? + v.get(4).copied().unwrap_or(0);
    Some((total - idle, total))
}

fn status_kib(pid: u32, key: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with(key))?;
    line[key.len()..].split_whitespace().next()?.parse().ok()
}

fn clock_ticks_per_second() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

// ---------------------------------------------------------------------------------------------
// Worker processes
// ---------------------------------------------------------------------------------------------

/// Where this rigctl lives: the workers are its siblings (the same cargo profile).
fn bin_dir() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("find this executable")?;
    Ok(exe.parent().context("this executable has no directory")?.to_path_buf())
}

/// Under `cargo run`/`cargo test` (CARGO is set), builds the workers that are missing or older
/// than this rigctl, so `cargo run --release -p rigctl -- bench` needs no separate build step.
fn ensure_built(dir: &Path, bins: &[&str]) -> anyhow::Result<()> {
    let mine = std::env::current_exe()
        .ok()
        .and_then(|e| std::fs::metadata(e).and_then(|m| m.modified()).ok());
    let stale: Vec<&str> = bins
        .iter()
        .copied()
        .filter(
            |b| match (std::fs::metadata(dir.join(b)).and_then(|m| m.modified()).ok(), mine) {
                (None, _) => true,
                (Some(t), Some(m)) => t < m,
                (Some(_), None) => false,
            },
        )
        .collect();
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
    let mut cmd = Command::new(cargo);
    cmd.arg("build").arg("--quiet").current_dir(env!("CARGO_MANIFEST_DIR"));
    if dir.ends_with("release") {
        cmd.arg("--release");
    }
    for b in &stale {
        cmd.arg("-p").arg(b).arg("--bin").arg(b);
    }
    if !cmd.status().context("run cargo build")?.success() {
        bail!("cargo build of {} failed", stale.join(", "));
    }
    Ok(())
}

/// A temporary directory for the workers' configuration and logs, removed on drop.
struct ScratchDir {
    path: PathBuf,
}

impl ScratchDir {
    fn new() -> anyhow::Result<ScratchDir> {
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

struct Ports {
    ingest: u16,
    token: u16,
    cost: u16,
    stale: u16,
    notifier: u16,
}

impl Ports {
    fn new() -> anyhow::Result<Ports> {
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
fn worker_config(p: &Ports) -> String {
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

struct Launcher {
    bin_dir: PathBuf,
    config: PathBuf,
    db_url: String,
    logs: PathBuf,
}

impl Launcher {
    fn spawn(&self, name: &'static str, port: u16) -> anyhow::Result<Worker> {
        let exe = self.bin_dir.join(name);
        let log = self.logs.join(format!("{name}.log"));
        let file = std::fs::File::create(&log)?;
        let mut cmd = Command::new(&exe);
        // Only our configuration: nothing from the operator's RIG_ environment leaks in.
        for (k, _) in std::env::vars_os() {
            let k = k.to_string_lossy().into_owned();
            if k.starts_with("RIG_") || k == "DATABASE_URL" {
                cmd.env_remove(k);
            }
        }
        cmd.env("RIG_CONFIG", &self.config)
            .env("DATABASE_URL", &self.db_url)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file);
        // Own process group: a Ctrl-C at the terminal reaches rigctl, which stops them in order.
        #[cfg(unix)]
        {
            use std::os::unix::process::CommandExt;
            cmd.process_group(0);
        }
        let child = cmd.spawn().with_context(|| format!("start {}", exe.display()))?;
        Ok(Worker { name, child, log, port })
    }
}

/// A worker process, stopped (SIGTERM, then SIGKILL) when dropped.
struct Worker {
    name: &'static str,
    child: Child,
    log: PathBuf,
    port: u16,
}

impl Worker {
    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    fn check_alive(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!(
                "{} exited ({status}); its log ends with:\n{}",
                self.name,
                self.log_tail()
            );
        }
        Ok(())
    }

    async fn wait_ready(&mut self, http: &reqwest::Client, timeout: Duration) -> anyhow::Result<()> {
        let url = format!("http://127.0.0.1:{}/readyz", self.port);
        let deadline = Instant::now() + timeout;
        loop {
            self.check_alive()?;
            if let Ok(r) = http.get(&url).timeout(Duration::from_secs(1)).send().await {
                if r.status().is_success() {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                bail!(
                    "{} did not answer {url} within {timeout:?}; its log ends with:\n{}",
                    self.name,
                    self.log_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// SIGTERM to all first, so they stop in parallel; each drop then waits for its own.
fn stop_all(workers: Vec<Worker>) {
    for w in &workers {
        // SAFETY: signalling our own child process.
        unsafe {
            libc::kill(w.child.id() as i32, libc::SIGTERM);
        }
    }
    drop(workers);
}

impl Drop for Worker {
    fn drop(&mut self) {
        if let Ok(Some(_)) = self.child.try_wait() {
            return;
        }
        // SAFETY: signalling our own child process.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        eprintln!("bench: {} did not stop within 10 s of SIGTERM; killing it", self.name);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_use_the_nearest_rank() {
        let p = percentiles((1..=100).map(f64::from).collect());
        assert_eq!((p.p50, p.p99, p.max), (50.0, 99.0, 100.0));
        let one = percentiles(vec![7.0]);
        assert_eq!((one.p50, one.p99, one.max), (7.0, 7.0, 7.0));
    }

    #[test]
    fn cpu_ticks_reads_this_process() {
        assert!(cpu_ticks(std::process::id()).is_some());
        assert!(status_kib(std::process::id(), "VmRSS:").is_some_and(|k| k > 0));
    }

    #[test]
    fn figures_say_whether_their_target_is_met() {
        let b = Baseline {
            name: "raw",
            value: 1000.0,
            unit: "rows/s",
            detail: Value::Null,
        };
        let f = Figure::of("x", 4100.0, "events/s", &b).at_least(">= 4x", Some(4.0), None);
        assert_eq!((f.ratio, f.met), (4.1, Some(true)));
        let f = Figure::of("x", 3900.0, "events/s", &b).at_least(">= 4x", Some(4.0), None);
        assert_eq!(f.met, Some(false));
        let f = Figure::new("lat", 30.0, "ms", "raw_lat", 3.0).at_most("<= 25", 25.0);
        assert_eq!((f.ratio, f.met), (10.0, Some(false)));
    }

    #[test]
    fn append_bodies_are_valid_json_with_the_asked_number_of_events() {
        let v: Value = serde_json::from_str(&append_body("bench/x#1", 3)).unwrap();
        assert_eq!(v["events"].as_array().unwrap().len(), 3);
        assert_eq!(v["events"][0]["data"]["model"], "claude-sonnet-4-5");
    }

    #[test]
    fn bench_prices_all_parse() {
        assert_eq!(bench_prices().len(), PRICES.len());
    }
}
