//! Appends over HTTP: many clients on distinct streams, single events or batches, valid or
//! refused, with hostile clients alongside when asked.

use super::*;
use anyhow::bail;
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::task::JoinSet;

pub(super) struct HttpResult {
    pub(super) rate: f64,
    /// Every request answered as expected in the phase, warm-up included.
    pub(super) total: u64,
    pub(super) detail: Value,
}

/// `clients` clients, each appending `per_request` events per request to its own stream; each
/// answer with the status `kind` expects is counted.
pub(super) async fn http_appends(
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
pub(super) async fn http_appends_among(
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
    let refused = Refused::default();
    let mut hostile_tasks = spawn_hostile(ingest_addr, hostile, &c, &refused);
    let mut tasks = spawn_honest(ingest_addr, clients, per_request, label, kind, &c);
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
            "refused": refused.all.load(Ordering::Relaxed),
            "refused_per_s": round(refused.in_window.load(Ordering::Relaxed) as f64 / w.secs, 1),
            "bodies": "a NUL in data, a 5,000-character agent_id, a 100,000-character title, cost_usd 1e28 (422); a repeated key (400)",
        });
    }
    Ok(HttpResult {
        rate,
        total: c.ok.load(Ordering::Relaxed) / per_request as u64,
        detail,
    })
}

/// Hostile requests refused as expected: all of them, and those in the measured window.
#[derive(Default)]
struct Refused {
    all: Arc<AtomicU64>,
    in_window: Arc<AtomicU64>,
}

/// `hostile` clients cycling through `hostile_bodies` until the phase stops.
fn spawn_hostile(ingest_addr: SocketAddr, hostile: usize, c: &Arc<Counters>, refused: &Refused) -> JoinSet<()> {
    let mut tasks = JoinSet::new();
    if hostile == 0 {
        return tasks;
    }
    let bodies = Arc::new(hostile_bodies());
    for k in 0..hostile {
        let (c, bodies) = (c.clone(), bodies.clone());
        let (refused, refused_window) = (refused.all.clone(), refused.in_window.clone());
        tasks.spawn(async move {
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
    tasks
}

/// `clients` honest clients, each on its own stream, until the phase stops; each returns its
/// request latencies in the measured window.
fn spawn_honest(
    ingest_addr: SocketAddr,
    clients: usize,
    per_request: usize,
    label: &str,
    kind: Body,
    c: &Arc<Counters>,
) -> JoinSet<Vec<f64>> {
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
    tasks
}

/// The baselines the single-append figure is read against.
pub(super) struct SingleAppends {
    /// Raw single-row autocommit INSERTs.
    pub(super) raw: Baseline,
    /// Their commit latency.
    pub(super) raw_latency: Percentiles,
    /// The HTTP path alone (`http_refused_64`).
    pub(super) http_ceiling: Baseline,
}

/// Steps 1-3: raw single-row autocommit INSERTs, then single-event appends over HTTP by 64
/// clients on distinct streams, then the same clients refused by validation.
pub(super) async fn single_appends_phase(env: &Env<'_>, figures: &mut Vec<Figure>) -> anyhow::Result<SingleAppends> {
    let (sizes, pool) = (env.sizes, env.pool);
    progress(&format!(
        "[1/14] raw single-row autocommit INSERT, 8 connections, {} s …",
        sizes.seconds
    ));
    let (raw, raw_latency) = raw_insert_autocommit(pool, env.opts, sizes, env.wal_timed).await?;
    progress(&format!("      {:.0} rows/s", raw.value));
    progress(&format!(
        "[2/14] single-event appends over HTTP, 64 clients on distinct streams, {} s …",
        sizes.seconds
    ));
    let wal0 = WalSyncs::take(pool).await;
    let mut single = http_appends(env.ingest_addr, 64, 1, "single", Body::Valid, sizes, env.probe).await?;
    single.detail["wal"] = WalSyncs::between(
        wal0,
        WalSyncs::take(pool).await,
        single.total,
        "requests",
        env.wal_timed,
    );
    progress(&format!("      {:.0} events/s", single.rate));
    figures.push(
        Figure::of("append_single_http_64", single.rate, "events/s", &raw)
            .at_least(">= 4x raw autocommit INSERT", Some(4.0), None)
            .detail(single.detail),
    );
    // Where the 4x target sits on this machine: the same clients and body, refused by validation
    // (422), so ingest does all its HTTP and JSON work and no database work. When raw autocommit
    // is fast (a quick fsync), 4x of it can exceed what the HTTP path alone can answer.
    progress(&format!(
        "[3/14] HTTP without the database: the same 64 clients, the body refused by validation (422), {} s …",
        sizes.seconds
    ));
    let refused = http_appends(env.ingest_addr, 64, 1, "refused", Body::Refused, sizes, env.probe).await?;
    progress(&format!("      {:.0} requests/s", refused.rate));
    let http_ceiling = http_ceiling(refused, &raw);
    figures.push(Figure::of(
        "append_single_http_64_vs_http_ceiling",
        single.rate,
        "events/s",
        &http_ceiling,
    ));
    Ok(SingleAppends {
        raw,
        raw_latency,
        http_ceiling,
    })
}

/// The refused appends as the baseline `http_refused_64`, with where 4x raw autocommit sits.
fn http_ceiling(refused: HttpResult, raw_single: &Baseline) -> Baseline {
    Baseline {
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
    }
}

/// Steps 6-7: raw 100-row INSERTs, then 500-event appends over HTTP by 4 clients. Returns the
/// raw baseline.
pub(super) async fn batch_appends_phase(env: &Env<'_>, figures: &mut Vec<Figure>) -> anyhow::Result<Baseline> {
    let sizes = env.sizes;
    progress(&format!(
        "[6/14] raw 100-row INSERT per transaction, 8 connections, {} s …",
        sizes.seconds
    ));
    let raw_batch = raw_insert_batches(env.opts, sizes).await?;
    progress(&format!("      {:.0} rows/s", raw_batch.value));
    progress(&format!(
        "[7/14] 500-event appends over HTTP, 4 clients, {} s …",
        sizes.seconds
    ));
    let batch = http_appends(env.ingest_addr, 4, 500, "batch", Body::Valid, sizes, env.probe).await?;
    progress(&format!("      {:.0} events/s", batch.rate));
    figures.push(
        Figure::of("append_batch500_http_4", batch.rate, "events/s", &raw_batch)
            .at_least(">= 0.6x raw 100-row INSERT", Some(0.6), None)
            .detail(batch.detail),
    );
    Ok(raw_batch)
}
