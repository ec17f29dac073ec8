//! Append → `token_usage` latency, with the token-projector as a real process.

use super::*;
use anyhow::{anyhow, bail, Context};
use serde_json::{json, Value};
use sqlx::postgres::PgConnectOptions;
use sqlx::{Connection, PgConnection, PgPool};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::task::JoinSet;

pub(super) struct LatencyResult {
    pub(super) p50: f64,
    pub(super) p99: f64,
    pub(super) max: f64,
    pub(super) detail: Value,
}

/// TOKEN_USAGE appended over HTTP at a fixed rate (open loop: a slow answer never slows the
/// next request), while a dedicated connection samples the token-projector's checkpoint every
/// millisecond. The checkpoint is written in the same transaction as `token_usage`, so the first
/// sample at or past an append's position is when `token_usage` reflects it; the latency is from
/// the HTTP acknowledgement to that sample (0 when the projector was faster than the answer).
pub(super) async fn append_to_projection_latency(
    http: &reqwest::Client,
    url: &str,
    pool: &PgPool,
    opts: &PgConnectOptions,
    sizes: &Sizes,
    token: &mut Worker,
) -> anyhow::Result<LatencyResult> {
    wait_at_head(pool, token).await?;
    let (probes, warmed_up) = warm_up(http, url, pool, token).await?;
    let sampler = Sampler::start(opts).await?;
    let sent = send_at_rate(http, url, sizes, token).await;
    let last = sent.acks.iter().map(|(_, p)| *p).max().unwrap_or(0);
    let (seen, polls) = sampler.finish(last).await?;
    token.check_alive()?;
    if sent.acks.is_empty() {
        bail!(
            "no latency append succeeded: {}",
            sent.counters.first_error().unwrap_or_else(|| "no answer".into())
        );
    }
    let ms = latencies(&sent.acks, &seen)?;
    let sampled_for = seen
        .last()
        .map(|(t, _)| t.duration_since(sent.started).as_secs_f64())
        .unwrap_or(sent.secs);
    let p = percentiles(ms);
    let mut detail = json!({
        "appends": sent.acks.len(), "errors": sent.counters.errors.load(Ordering::Relaxed),
        "target_rate_per_s": sizes.latency_rate, "achieved_rate_per_s": round(sent.total as f64 / sent.secs, 1),
        "warm_up_probes": probes, "warmed_up": warmed_up, "checkpoint_samples": polls, "mean_sample_interval_ms": round(1e3 * sampled_for / polls.max(1) as f64, 3),
        "poll_interval": "default (1s); the projector wakes on ingest's NOTIFY",
        "token_projector_cpu_pct_of_core": sent.token_cpu_pct, "machine_busy_pct": sent.machine_busy_pct,
        "how": "ack = HTTP 201 received; reflected = first checkpoint sample >= the append's last_position (checkpoint and token_usage commit together)",
    });
    if let Some(e) = sent.counters.first_error() {
        detail["first_error"] = json!(e);
    }
    Ok(LatencyResult {
        p50: p.p50,
        p99: p.p99,
        max: p.max,
        detail,
    })
}

/// The token-projector's checkpoint, if it has one.
async fn token_checkpoint(pool: &PgPool) -> sqlx::Result<Option<i64>> {
    sqlx::query_scalar::<_, i64>("SELECT position FROM checkpoints WHERE consumer = 'token-projector'")
        .fetch_optional(pool)
        .await
}

/// Waits for the projector to reach the head: it starts where the in-process rebuild left its
/// checkpoint.
async fn wait_at_head(pool: &PgPool, token: &mut Worker) -> anyhow::Result<()> {
    let head: i64 = sqlx::query_scalar("SELECT coalesce(max(position), 0) FROM events")
        .fetch_one(pool)
        .await?;
    let deadline = Instant::now() + Duration::from_secs(120);
    while token_checkpoint(pool).await?.unwrap_or(0) < head {
        token.check_alive()?;
        if Instant::now() > deadline {
            bail!("rig-token-projector did not reach the head ({head}) within 120 s");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// The projector answers /readyz before its LISTEN connection is up, and until then it only
/// polls (every second). Probes until appends are picked up promptly, so the figure measures
/// the steady state, not the start. Returns the probes sent and whether it warmed up.
async fn warm_up(http: &reqwest::Client, url: &str, pool: &PgPool, token: &mut Worker) -> anyhow::Result<(u32, bool)> {
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
        while token_checkpoint(pool).await?.unwrap_or(0) < pos && t.elapsed() < Duration::from_secs(2) {
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
    Ok((probes, warmed_up))
}

/// Each change of the checkpoint with when it was seen, and the number of samples taken.
type Samples = (Vec<(Instant, i64)>, u64);

/// The checkpoint sampler: a thread and a runtime of its own, so the load generator's tasks
/// never delay a sample.
struct Sampler {
    poller: std::thread::JoinHandle<anyhow::Result<Samples>>,
    done: Arc<AtomicBool>,
    target: Arc<AtomicI64>,
}

impl Sampler {
    /// Starts sampling; returns once the first sample is taken.
    async fn start(opts: &PgConnectOptions) -> anyhow::Result<Sampler> {
        let done = Arc::new(AtomicBool::new(false));
        let target = Arc::new(AtomicI64::new(i64::MAX));
        let sampling = Arc::new(AtomicBool::new(false));
        let poller = {
            let (done, target, sampling, opts) = (done.clone(), target.clone(), sampling.clone(), opts.clone());
            std::thread::spawn(move || -> anyhow::Result<Samples> {
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
        Ok(Sampler { poller, done, target })
    }

    /// Stops once the checkpoint reaches `last` (or 30 s from now); every change seen, with
    /// when, and the number of samples.
    async fn finish(self, last: i64) -> anyhow::Result<Samples> {
        self.target.store(last, Ordering::Relaxed);
        self.done.store(true, Ordering::Relaxed);
        let poller = self.poller;
        tokio::task::spawn_blocking(move || poller.join())
            .await?
            .map_err(|_| anyhow!("the checkpoint sampler panicked"))?
    }
}

/// The appends of the latency phase, as sent.
struct Sent {
    /// When each 201 arrived, with the append's position.
    acks: Vec<(Instant, i64)>,
    counters: Arc<Counters>,
    total: u64,
    started: Instant,
    /// How long sending took.
    secs: f64,
    token_cpu_pct: Option<f64>,
    machine_busy_pct: Option<f64>,
}

/// `sizes.latency_rate` appends a second for `sizes.latency_seconds`, open loop; waits for
/// every answer.
async fn send_at_rate(http: &reqwest::Client, url: &str, sizes: &Sizes, token: &Worker) -> Sent {
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
    let secs = started.elapsed().as_secs_f64();
    // What a steady trickle costs: the projector's own CPU, and how busy the machine was (the
    // tail of the latency grows as the 2 cores fill up).
    let token_cpu_pct = match (token_ticks0, cpu_ticks(token.pid())) {
        (Some(a), Some(b)) => Some(round(
            100.0 * b.saturating_sub(a) as f64 / clock_ticks_per_second() / secs,
            1,
        )),
        _ => None,
    };
    let machine_busy_pct = busy_pct(machine0, machine_ticks()).map(|p| round(p, 1));
    while tasks.join_next().await.is_some() {}
    let acks = std::mem::take(&mut *acks.lock().unwrap_or_else(|e| e.into_inner()));
    Sent {
        acks,
        counters: c,
        total,
        started,
        secs,
        token_cpu_pct,
        machine_busy_pct,
    }
}

/// Milliseconds from each acknowledgement to the first checkpoint sample at or past its
/// position; an error if any append was never reflected.
fn latencies(acks: &[(Instant, i64)], seen: &[(Instant, i64)]) -> anyhow::Result<Vec<f64>> {
    let mut ms = Vec::with_capacity(acks.len());
    let mut unreflected = 0u64;
    for (acked, pos) in acks {
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
    Ok(ms)
}

/// Samples the token-projector's checkpoint about every millisecond until `done` and the
/// checkpoint reached `target` (or 30 s after `done`). Returns each change with when it was seen.
pub(super) async fn sample_checkpoint(
    opts: PgConnectOptions,
    done: Arc<AtomicBool>,
    target: Arc<AtomicI64>,
    sampling: Arc<AtomicBool>,
) -> anyhow::Result<Samples> {
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

/// Step 12: starts the token-projector and measures the latency; returns the projector, still
/// running, for the idle phase.
pub(super) async fn latency_phase(
    env: &Env<'_>,
    launcher: &Launcher,
    ports: &Ports,
    raw_latency: &Percentiles,
    figures: &mut Vec<Figure>,
) -> anyhow::Result<Worker> {
    let sizes = env.sizes;
    let mut token = launcher.spawn(TOKEN, ports.token)?;
    token.wait_ready(env.http, Duration::from_secs(30)).await?;
    progress(&format!(
        "[12/14] append → token_usage latency at {}/s for {} s (rig-token-projector pid {}) …",
        sizes.latency_rate,
        sizes.latency_seconds,
        token.pid()
    ));
    let latency = append_to_projection_latency(env.http, env.append_url, env.pool, env.opts, sizes, &mut token).await?;
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
    Ok(token)
}
