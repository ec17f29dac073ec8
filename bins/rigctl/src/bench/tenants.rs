//! Many tenants on one Postgres: the scratch database as the control database, `--tenants` tenant
//! logs beside it, ingest and all four workers running. What it measures:
//! - `tenants_connections`: every connection to the scratch databases (`pg_stat_activity`) once
//!   the system is idle, the bench's own one included (target ≤ 60 for 200 tenants);
//! - `tenants_idle_cpu_<worker>`: each process's CPU over `--idle-seconds` with every tenant
//!   served and nothing appended (target ≤ 1 % of a core);
//! - `tenants_append_to_projection_idle_p99`, `…_busy_p99` and `…_spread_p99`: from the HTTP
//!   acknowledgement of an append to its `token_usage` row. Idle: one append at a time to a
//!   random tenant of a quiet system (target p99 ≤ 2 s). Busy: in a few tenants that other
//!   clients keep appending to (≤ 50 ms). Spread: the same load over every tenant, each append to
//!   a random one (no target; see docs/performance.md).

use super::*;
use anyhow::{bail, Context};
use rand::Rng;
use serde_json::json;
use sqlx::postgres::PgPoolOptions;
use sqlx::{Connection, PgConnection, PgPool};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The tenant logs made for the phase, dropped with it.
struct TenantLogs {
    url: String,
    names: Vec<String>,
}

impl TenantLogs {
    async fn drop_all(&self) {
        for name in &self.names {
            if let Err(e) = drop_database(&self.url, name).await {
                eprintln!("bench: could not drop {name}: {e:#}");
            }
        }
    }
}

/// One tenant: its slug, token and log's URL.
#[derive(Clone)]
struct BenchTenant {
    slug: String,
    token: String,
    url: String,
}

pub(super) async fn tenants_phase(
    env: &Env<'_>,
    launcher: &Launcher,
    ports: &Ports,
    count: usize,
    workers: &mut Vec<Worker>,
    step: &str,
) -> anyhow::Result<Vec<Figure>> {
    let control_url = launcher.db_url.clone();
    let control_name = env.opts.get_database().unwrap_or_default().to_owned();
    let template = format!("{control_name}_tt");
    let mut logs = TenantLogs {
        url: control_url.clone(),
        names: vec![template.clone()],
    };
    let result = async {
        progress(&format!("{step} {count} tenants: creating and migrating their logs …"));
        let made = Instant::now();
        let tenants = make_tenants(env.pool, &control_url, &template, count, &mut logs).await?;
        progress(&format!(
            "      {count} tenant logs made in {:.1} s; starting every worker",
            made.elapsed().as_secs_f64()
        ));
        for (name, port) in [
            (TOKEN, ports.token),
            (COST, ports.cost),
            (STALE, ports.stale),
            (NOTIFIER, ports.notifier),
        ] {
            if !workers.iter().any(|w| w.name == name) {
                let mut w = launcher.spawn(name, port)?;
                w.wait_ready(env.http, Duration::from_secs(30)).await?;
                workers.push(w);
            }
        }
        wait_all_served(env.http, workers, count + 1).await?;
        let figures = measure(env, workers, &tenants).await?;
        Ok(figures)
    }
    .await;
    // The workers hold connections to the tenant logs: stop serving them first.
    let _ = sqlx::query("UPDATE tenants SET enabled = false")
        .execute(env.pool)
        .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    logs.drop_all().await;
    let _ = sqlx::query("DELETE FROM tenants").execute(env.pool).await;
    result
}

/// Migrates one log, then copies it (`CREATE DATABASE … TEMPLATE`) for each tenant, registers
/// each in the catalog with a token of its own.
async fn make_tenants(
    control: &PgPool,
    control_url: &str,
    template: &str,
    count: usize,
    logs: &mut TenantLogs,
) -> anyhow::Result<Vec<BenchTenant>> {
    let template_url = rig_ops::pg::with_database(control_url, template)?;
    rig_ops::pg::ensure_database(&template_url).await?;
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .connect_with(connect_options(&template_url)?)
        .await?;
    rig_log::db::migrate(&pool)
        .await
        .context("migrate the tenants' template")?;
    pool.close().await;
    let admin = rig_ops::pg::with_database(control_url, "postgres")?;
    let mut c = PgConnection::connect_with(&connect_options(&admin)?).await?;
    // A copy needs the template to itself: a connection of the migration that has not quite
    // gone yet would make CREATE DATABASE fail.
    sqlx::query(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()",
    )
    .bind(template)
    .execute(&mut c)
    .await?;
    let mut out = Vec::with_capacity(count);
    for i in 0..count {
        let slug = format!("t{i:04}");
        let name = format!("{template}{i:04}");
        sqlx::query(&format!("CREATE DATABASE \"{name}\" TEMPLATE \"{template}\""))
            .execute(&mut c)
            .await
            .with_context(|| format!("create {name}"))?;
        logs.names.push(name.clone());
        let tenant = rig_tenants::Tenant {
            slug: slug.clone(),
            database_name: name.clone(),
            server: None,
            enabled: true,
        };
        rig_tenants::register(control, &tenant).await?;
        let token = rig_tenants::new_token(control, &slug).await?;
        out.push(BenchTenant {
            slug,
            token: secrecy::ExposeSecret::expose_secret(&token).to_owned(),
            url: rig_ops::pg::with_database(control_url, &name)?,
        });
        if (i + 1) % 50 == 0 {
            progress(&format!("      … {} of {count}", i + 1));
        }
    }
    let _ = c.close().await;
    Ok(out)
}

/// Waits until each worker reports `rig_consumer_active` 1 for `count` tenants.
async fn wait_all_served(http: &reqwest::Client, workers: &mut [Worker], count: usize) -> anyhow::Result<()> {
    let t = Instant::now();
    loop {
        let mut short = Vec::new();
        for w in workers.iter_mut().filter(|w| w.name != INGEST) {
            w.check_alive()?;
            let text = http
                .get(format!("http://127.0.0.1:{}/metrics", w.port))
                .send()
                .await?
                .text()
                .await?;
            let n = text
                .lines()
                .filter(|l| l.starts_with("rig_consumer_active{") && l.ends_with(" 1"))
                .count();
            if n < count {
                short.push(format!("{} serves {n}", w.name));
            }
        }
        if short.is_empty() {
            progress(&format!(
                "      every worker serves all {count} tenants ({:.1} s)",
                t.elapsed().as_secs_f64()
            ));
            return Ok(());
        }
        if t.elapsed() > Duration::from_secs(120) {
            bail!(
                "workers did not take up every tenant within 120 s: {}",
                short.join(", ")
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

async fn measure(env: &Env<'_>, workers: &mut [Worker], tenants: &[BenchTenant]) -> anyhow::Result<Vec<Figure>> {
    let mut figures = Vec::new();
    let databases: Vec<String> = std::iter::once(env.opts.get_database().unwrap_or_default().to_owned())
        .chain(
            tenants
                .iter()
                .map(|t| t.url.rsplit('/').next().unwrap_or_default().to_owned()),
        )
        .collect();
    // Idle: tenants' pools let their connections go after a few seconds without work.
    progress("      letting the system go idle …");
    let settle = Instant::now();
    let mut connections = count_connections(env.pool, &databases).await?;
    while settle.elapsed() < Duration::from_secs(20) {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = count_connections(env.pool, &databases).await?;
        if now == connections && settle.elapsed() > Duration::from_secs(8) {
            break;
        }
        connections = now;
    }
    let by_app: Vec<(String, i64)> = sqlx::query_as(
        "SELECT usename::text || coalesce(' ' || nullif(application_name, ''), ''), count(*) FROM pg_stat_activity \
         WHERE datname = ANY($1) GROUP BY 1 ORDER BY 2 DESC",
    )
    .bind(&databases)
    .fetch_all(env.pool)
    .await?;
    figures.push(
        Figure::new(
            "tenants_connections",
            connections as f64,
            "connections",
            "connection_budget",
            60.0,
        )
        .at_most("<= 60 with ingest and every worker running", 60.0)
        .detail(json!({"tenants": tenants.len(), "by_role_and_application": by_app,
                       "how": "pg_stat_activity rows on the control database and every tenant log, the bench's own included, once idle"})),
    );
    // Idle CPU of each process, every tenant served.
    let before: Vec<Option<u64>> = workers.iter().map(|w| cpu_ticks(w.pid())).collect();
    let t = Instant::now();
    tokio::time::sleep(Duration::from_secs_f64(env.sizes.idle_seconds.max(2.0))).await;
    let secs = t.elapsed().as_secs_f64();
    let tck = clock_ticks_per_second();
    for (w, before) in workers.iter_mut().zip(before) {
        w.check_alive()?;
        let (Some(b), Some(a)) = (before, cpu_ticks(w.pid())) else {
            bail!("cannot read /proc/{}/stat of {}", w.name, w.pid())
        };
        let pct = 100.0 * a.saturating_sub(b) as f64 / tck / secs;
        let short = w.name.trim_start_matches("rig-").replace('-', "_");
        figures.push(
            Figure::new(format!("tenants_idle_cpu_{short}"), pct, "% of core", "one_core", 100.0)
                .at_most("<= 1 % of a core", IDLE_CPU_MAX_PCT)
                .detail(
                    json!({"seconds": round(secs, 2), "cpu_ticks": a.saturating_sub(b), "tenants": tenants.len(),
                               "resolution_pct": round(100.0 / tck / secs, 3)}),
                ),
        );
    }
    // Append → projection, one at a time on a quiet system.
    let base = format!("http://{}", env.ingest_addr);
    let samples = if env.sizes.quick { 20 } else { 100 };
    progress(&format!(
        "      append → token_usage in random tenants, idle ({samples} appends) …"
    ));
    let idle = latencies(env.http, &base, tenants, samples, Duration::from_millis(200)).await?;
    let p = percentiles(idle.clone());
    figures.push(
        Figure::new("tenants_append_to_projection_idle_p99", p.p99, "ms", "target_ms", 2000.0)
            .at_most("p99 <= 2 s at idle", 2000.0)
            .detail(json!({"samples": idle.len(), "p50_ms": p.p50, "max_ms": p.max, "tenants": tenants.len(),
                           "how": "HTTP 201 of an append to /t/<tenant>/v1/events → its stream's token_usage row seen (polled every 2 ms)"})),
    );
    // Busy tenants: a few tenants under steady appends, sampled among themselves: their
    // connections stay open, as a busy tenant's do.
    let mut busy_set: Vec<BenchTenant> = Vec::new();
    while busy_set.len() < BUSY_TENANTS.min(tenants.len()) {
        let t = &tenants[rand::rng().random_range(0..tenants.len())];
        if !busy_set.iter().any(|b| b.slug == t.slug) {
            busy_set.push(t.clone());
        }
    }
    progress(&format!(
        "      append → token_usage in {} busy tenants ({samples} appends) …",
        busy_set.len()
    ));
    let (busy, rate) = under_load(env, &base, &busy_set, samples).await?;
    let p = percentiles(busy.clone());
    figures.push(
        Figure::new("tenants_append_to_projection_busy_p99", p.p99, "ms", "target_ms", 50.0)
            .at_most("p99 <= 50 ms in a busy tenant", 50.0)
            .detail(
                json!({"samples": busy.len(), "p50_ms": p.p50, "max_ms": p.max, "tenants": tenants.len(),
                           "busy_tenants": busy_set.len(), "background_appends_per_s": round(rate, 1),
                           "background_clients": LOAD_CLIENTS,
                           "background_target_per_s": LOAD_RATE,
                           "how": "the background clients and the samples append to the same few tenants"}),
            ),
    );
    // Spread: the same load over every tenant, each append to a random one. No target: almost
    // every append finds its tenant without a kept connection (see docs/performance.md).
    progress(&format!(
        "      append → token_usage with the load spread over all {} tenants ({samples} appends) …",
        tenants.len()
    ));
    let (spread, rate) = under_load(env, &base, tenants, samples).await?;
    let p = percentiles(spread.clone());
    figures.push(
        Figure::new(
            "tenants_append_to_projection_spread_p99",
            p.p99,
            "ms",
            "target_ms",
            50.0,
        )
        .detail(
            json!({"samples": spread.len(), "p50_ms": p.p50, "max_ms": p.max, "tenants": tenants.len(),
                   "background_appends_per_s": round(rate, 1), "background_clients": LOAD_CLIENTS,
                   "how": "background clients and samples each append to a random tenant of all of them"}),
        ),
    );
    Ok(figures)
}

/// Tenants under steady load in the busy figure.
const BUSY_TENANTS: usize = 4;
/// Clients appending in the background of the busy and spread figures.
const LOAD_CLIENTS: usize = 8;
/// Their appends per second, together.
const LOAD_RATE: f64 = 200.0;

/// `samples` latencies (see [`latencies`]) while [`LOAD_CLIENTS`] clients append to random
/// tenants of `set` meanwhile, [`LOAD_RATE`] appends per second together; also the rate they
/// achieved.
async fn under_load(env: &Env<'_>, base: &str, set: &[BenchTenant], samples: usize) -> anyhow::Result<(Vec<f64>, f64)> {
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let mut load = Vec::new();
    for _ in 0..LOAD_CLIENTS {
        let (stop, sent, http, base, set) = (
            stop.clone(),
            sent.clone(),
            env.http.clone(),
            base.to_owned(),
            set.to_vec(),
        );
        load.push(tokio::spawn(async move {
            // Paced, not flat out: a busy rig, not a saturated machine.
            let mut tick = tokio::time::interval(Duration::from_secs_f64(LOAD_CLIENTS as f64 / LOAD_RATE));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            while !stop.load(Ordering::Relaxed) {
                tick.tick().await;
                let t = &set[rand::rng().random_range(0..set.len())];
                let stream = format!("bench/load#{}", rand::rng().random_range(1..1000));
                let ok = http
                    .post(format!("{base}/t/{}/v1/events", t.slug))
                    .bearer_auth(&t.token)
                    .header("content-type", "application/json")
                    .body(append_body(&stream, 1))
                    .send()
                    .await
                    .is_ok_and(|r| r.status().is_success());
                if ok {
                    sent.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let started = Instant::now();
    let before = sent.load(Ordering::Relaxed);
    let measured = latencies(env.http, base, set, samples, Duration::from_millis(20)).await;
    let rate = (sent.load(Ordering::Relaxed) - before) as f64 / started.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    for l in load {
        let _ = l.await;
    }
    Ok((measured?, rate))
}

async fn count_connections(pool: &PgPool, databases: &[String]) -> anyhow::Result<i64> {
    Ok(
        sqlx::query_scalar("SELECT count(*) FROM pg_stat_activity WHERE datname = ANY($1)")
            .bind(databases)
            .fetch_one(pool)
            .await?,
    )
}

/// `samples` appends, each to a random tenant, one at a time with `pause` between them; for
/// each, the milliseconds from the HTTP acknowledgement to its `token_usage` row.
async fn latencies(
    http: &reqwest::Client,
    base: &str,
    tenants: &[BenchTenant],
    samples: usize,
    pause: Duration,
) -> anyhow::Result<Vec<f64>> {
    let mut out = Vec::with_capacity(samples);
    for _ in 0..samples {
        let t = &tenants[rand::rng().random_range(0..tenants.len())];
        let stream = format!("bench/probe#{}", rand::rng().random_range(1..1_000_000_000u64));
        // Connected before the append: the probe's own connection is not part of the figure.
        let mut probe = PgConnection::connect_with(&connect_options(&t.url)?).await?;
        let r = http
            .post(format!("{base}/t/{}/v1/events", t.slug))
            .bearer_auth(&t.token)
            .header("content-type", "application/json")
            .body(append_body(&stream, 1))
            .send()
            .await?;
        let acked = Instant::now();
        if !r.status().is_success() {
            bail!(
                "an append to tenant {} was answered {}: {}",
                t.slug,
                r.status(),
                r.text().await?
            );
        }
        loop {
            let seen: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM token_usage WHERE stream_id = $1)")
                .bind(&stream)
                .fetch_one(&mut probe)
                .await?;
            if seen {
                out.push(acked.elapsed().as_secs_f64() * 1e3);
                break;
            }
            if acked.elapsed() > Duration::from_secs(30) {
                bail!("tenant {}'s token_usage did not show an append within 30 s", t.slug);
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let _ = probe.close().await;
        tokio::time::sleep(pause).await;
    }
    Ok(out)
}
