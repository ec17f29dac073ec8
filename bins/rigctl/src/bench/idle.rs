//! Every worker idle: caught up, then its CPU and memory from /proc.

use super::*;
use anyhow::{bail, Context};
use serde_json::json;
use sqlx::PgPool;
use std::time::{Duration, Instant};

/// Waits until every consumer's checkpoint is at the head. Returns the seconds it took.
pub(super) async fn wait_caught_up(pool: &PgPool, workers: &mut [Worker], timeout_secs: u64) -> anyhow::Result<f64> {
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

pub(super) async fn idle_figures(workers: &mut [Worker], sizes: &Sizes) -> anyhow::Result<Vec<Figure>> {
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

/// Step 13: starts the other workers beside `running`, waits for every one to catch up, and
/// samples them idle. Returns every worker, still running.
pub(super) async fn idle_phase(
    env: &Env<'_>,
    launcher: &Launcher,
    ports: &Ports,
    running: Vec<Worker>,
    figures: &mut Vec<Figure>,
) -> anyhow::Result<Vec<Worker>> {
    let sizes = env.sizes;
    progress("[13/14] every worker idle: starting the others and waiting for them to catch up …");
    let mut workers = running;
    for (bin, port) in [(COST, ports.cost), (STALE, ports.stale), (NOTIFIER, ports.notifier)] {
        let mut w = launcher.spawn(bin, port)?;
        w.wait_ready(env.http, Duration::from_secs(30)).await?;
        workers.push(w);
    }
    let catch_up = wait_caught_up(env.pool, &mut workers, if sizes.quick { 60 } else { 600 }).await?;
    tokio::time::sleep(Duration::from_secs_f64(if sizes.quick { 0.5 } else { 2.0 })).await;
    progress(&format!(
        "      caught up in {catch_up:.1} s; sampling CPU for {} s …",
        sizes.idle_seconds
    ));
    figures.extend(idle_figures(&mut workers, sizes).await?);
    Ok(workers)
}
