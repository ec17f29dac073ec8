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
use serde::Serialize;
use std::process::ExitCode;
use std::time::{Duration, Instant};
use uuid::Uuid;

mod appends;
mod claims;
mod hostile;
mod http;
mod idle;
mod latency;
mod load;
mod procfs;
mod raw;
mod read_burst;
mod rebuild;
mod report;
mod run;
mod scratch;
mod tenants;
mod workers;

use appends::*;
use claims::*;
use hostile::*;
use http::*;
use idle::*;
use latency::*;
use load::*;
use procfs::*;
use raw::*;
use read_burst::*;
use rebuild::*;
use report::*;
use run::*;
use scratch::*;
use tenants::*;
use workers::*;

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
    /// Tenants made for the tenants phase, each a database of its own on the scratch database's
    /// server [default: 200; --quick: 10].
    #[arg(long)]
    pub tenants: Option<usize>,
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
    /// 32 readers of a long stream; `tenants`, many tenants on one Postgres with every worker.
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
    /// Many tenants on one Postgres, ingest and every worker running: connections, idle CPU,
    /// append → projection latency.
    Tenants,
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
    tenants: usize,
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
            tenants: a.tenants.unwrap_or(if q { 10 } else { 200 }),
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
        if !(1..=1000).contains(&s.tenants) {
            bail!("--tenants must be from 1 to 1000");
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

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
