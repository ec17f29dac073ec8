//! The read burst: append latency at a steady rate, alone and then beside readers of a long
//! stream.

use super::*;
use crate::http_load::Conn;
use anyhow::{anyhow, bail};
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::task::JoinSet;

/// Readers and the stream they read in the read-burst phase.
pub(super) const READ_BURST_READERS: usize = 32;
pub(super) const READ_BURST_EVENTS: usize = 20_000;
/// Single-event appends per second during the read-burst phase, spread over 8 clients: a steady
/// trickle well under the machine's capacity, so what changes between the two windows is the
/// readers alone.
pub(super) const READ_BURST_RATE: u32 = 500;
pub(super) const READ_BURST_APPENDERS: usize = 8;

pub(super) struct ReadBurst {
    pub(super) quiet: Percentiles,
    pub(super) busy: Percentiles,
    pub(super) reads_per_s: f64,
    pub(super) detail: Value,
}

/// The progress line of the read-burst phase.
pub(super) fn read_burst_announcement(sizes: &Sizes, step: &str) -> String {
    format!(
        "{step} read burst: {READ_BURST_RATE} appends/s alone, then with {READ_BURST_READERS} readers of a \
         {READ_BURST_EVENTS}-event stream, {} s each …",
        sizes.seconds
    )
}

/// The read burst's baseline (append p99 without readers) and figure (with them).
pub(super) fn read_burst_figure(burst: ReadBurst) -> (Baseline, Figure) {
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
pub(super) async fn read_burst(
    ingest_addr: SocketAddr,
    sizes: &Sizes,
    ingest: IngestProbe<'_>,
) -> anyhow::Result<ReadBurst> {
    let sid = "bench/read-burst#1";
    fill_stream(ingest_addr, sid).await?;
    // 0 warm-up, 1 quiet window, 2 readers warming up, 3 busy window, 4 stop.
    let phase = Arc::new(AtomicU8::new(0));
    let appends = Arc::new(Counters::default());
    let mut appenders = spawn_appenders(ingest_addr, &phase, &appends);
    tokio::time::sleep(sizes.warmup()).await;
    phase.store(1, Ordering::Relaxed);
    let q0 = Snap::take(&appends, Some(ingest.pid));
    tokio::time::sleep(sizes.measure()).await;
    let q1 = Snap::take(&appends, Some(ingest.pid));
    phase.store(2, Ordering::Relaxed);

    let readers = Readers::new(sid)?;
    let mut reading = readers.spawn(ingest_addr, &phase);
    tokio::time::sleep(sizes.warmup()).await;
    phase.store(3, Ordering::Relaxed);
    let b0 = Snap::take(&appends, Some(ingest.pid));
    let r0 = readers.counters.ok.load(Ordering::Relaxed);
    tokio::time::sleep(sizes.measure()).await;
    let b1 = Snap::take(&appends, Some(ingest.pid));
    let r1 = readers.counters.ok.load(Ordering::Relaxed);
    phase.store(4, Ordering::Relaxed);

    let (mut quiet, mut busy) = (Vec::new(), Vec::new());
    while let Some(r) = appenders.join_next().await {
        let (q, b) = r?;
        quiet.extend(q);
        busy.extend(b);
    }
    let mut read_ms = Vec::new();
    while let Some(r) = reading.join_next().await {
        read_ms.extend(r?);
    }
    // Its tasks are done; it cannot be dropped inside this runtime, only let go.
    readers.rt.shutdown_background();
    if quiet.is_empty() || busy.is_empty() {
        bail!(
            "read burst: no append succeeded in a window: {}",
            appends.first_error().unwrap_or_else(|| "no answer".into())
        );
    }
    let (wq, wb) = (Window::between(&q0, &q1), Window::between(&b0, &b1));
    let reads_per_s = (r1 - r0) as f64 / wb.secs;
    let samples = Samples {
        quiet: percentiles(quiet),
        busy: percentiles(busy),
        read: percentiles(read_ms),
    };
    let retried = readers.busy_answers.load(Ordering::Relaxed);
    let detail = read_burst_detail(
        &samples,
        [&wq, &wb],
        reads_per_s,
        [&appends, &readers.counters],
        retried,
    );
    Ok(ReadBurst {
        quiet: samples.quiet,
        busy: samples.busy,
        reads_per_s,
        detail,
    })
}

/// Creates the stream the readers read: approved, then `READ_BURST_EVENTS` heartbeats.
async fn fill_stream(ingest_addr: SocketAddr, sid: &str) -> anyhow::Result<()> {
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
    Ok(())
}

/// The appenders, at `READ_BURST_RATE` in all, each returning its latencies in the quiet and
/// the busy window.
fn spawn_appenders(
    ingest_addr: SocketAddr,
    phase: &Arc<AtomicU8>,
    appends: &Arc<Counters>,
) -> JoinSet<(Vec<f64>, Vec<f64>)> {
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
    appenders
}

/// The readers of the read burst: what they read, what they counted, and their runtime.
struct Readers {
    enc: String,
    counters: Arc<Counters>,
    /// Answers telling a reader to come back later (the read pool was busy for too long).
    busy_answers: Arc<AtomicU64>,
    /// The readers run on a runtime of their own: receiving their large answers must not delay
    /// the appenders' tasks, whose timings would then measure the load generator, not ingest.
    rt: tokio::runtime::Runtime,
}

impl Readers {
    fn new(sid: &str) -> anyhow::Result<Readers> {
        Ok(Readers {
            enc: sid.replace('/', "%2F").replace('#', "%23"),
            counters: Arc::new(Counters::default()),
            busy_answers: Arc::new(AtomicU64::new(0)),
            rt: tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .thread_name("bench-readers")
                .enable_all()
                .build()?,
        })
    }

    /// `READ_BURST_READERS` readers in a closed loop until the phase is 4, each returning its
    /// read latencies in the busy window.
    fn spawn(&self, ingest_addr: SocketAddr, phase: &Arc<AtomicU8>) -> JoinSet<Vec<f64>> {
        let mut readers = JoinSet::new();
        for r in 0..READ_BURST_READERS {
            let enc = &self.enc;
            let paths = [
                format!("/v1/streams/{enc}"),
                format!("/v1/streams/{enc}?to_version={}&limit=100", READ_BURST_EVENTS / 2 + r),
                format!("/v1/issues/{enc}"),
            ];
            let (phase, c, busy) = (phase.clone(), self.counters.clone(), self.busy_answers.clone());
            readers.spawn_on(read_loop(ingest_addr, r, paths, phase, c, busy), self.rt.handle());
        }
        readers
    }
}

/// One reader: reads `paths` in turn, from `first`, until the phase is 4.
async fn read_loop(
    ingest_addr: SocketAddr,
    first: usize,
    paths: [String; 3],
    phase: Arc<AtomicU8>,
    c: Arc<Counters>,
    busy_answers: Arc<AtomicU64>,
) -> Vec<f64> {
    let mut samples = Vec::new();
    let mut conn: Option<Conn> = None;
    let mut i = first;
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
}

/// The latencies of the read burst: appends without and with readers, and the reads.
struct Samples {
    quiet: Percentiles,
    busy: Percentiles,
    read: Percentiles,
}

/// The read burst's detail: both windows, the reads, and what went wrong.
fn read_burst_detail(
    s: &Samples,
    windows: [&Window; 2],
    reads_per_s: f64,
    counters: [&Counters; 2],
    retried: u64,
) -> Value {
    let (pq, pb, pr) = (s.quiet, s.busy, s.read);
    let ([wq, wb], [appends, reads]) = (windows, counters);
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
        "reads_told_to_retry": retried,
        "append_errors": appends.errors.load(Ordering::Relaxed), "read_errors": reads.errors.load(Ordering::Relaxed),
    });
    if let Some(e) = appends.first_error().or_else(|| reads.first_error()) {
        detail["first_error"] = json!(e);
    }
    detail
}
