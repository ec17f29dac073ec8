//! What every load phase shares: the counters its clients bump, the measured window after a
//! warm-up, the CPU spent in it, and percentiles.

use super::*;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Instant;

#[derive(Default)]
pub(super) struct Counters {
    pub(super) ok: AtomicU64,
    pub(super) conflicts: AtomicU64,
    pub(super) errors: AtomicU64,
    pub(super) stop: AtomicBool,
    /// True inside the measured window (latency samples are kept only then).
    pub(super) recording: AtomicBool,
    pub(super) first_error: Mutex<Option<String>>,
}

impl Counters {
    pub(super) fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    pub(super) fn recording(&self) -> bool {
        self.recording.load(Ordering::Relaxed)
    }

    pub(super) fn error(&self, e: String) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        let mut first = self.first_error.lock().unwrap_or_else(|p| p.into_inner());
        if first.is_none() {
            *first = Some(e);
        }
    }

    pub(super) fn first_error(&self) -> Option<String> {
        self.first_error.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// What the counters and the CPU clocks said at one moment.
pub(super) struct Snap {
    pub(super) at: Instant,
    pub(super) ok: u64,
    pub(super) conflicts: u64,
    pub(super) errors: u64,
    pub(super) ingest_ticks: Option<u64>,
    pub(super) own_ticks: Option<u64>,
    pub(super) machine: Option<(u64, u64)>,
}

impl Snap {
    pub(super) fn take(c: &Counters, ingest_pid: Option<u32>) -> Snap {
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
pub(super) struct Window {
    pub(super) secs: f64,
    pub(super) ok: u64,
    pub(super) conflicts: u64,
    pub(super) errors: u64,
    /// CPU seconds spent in the window.
    pub(super) ingest_cpu: Option<f64>,
    pub(super) own_cpu: Option<f64>,
    pub(super) machine_busy_pct: Option<f64>,
    /// Ingest's group commit in the window, from its own metrics (null when not scraped).
    pub(super) batches: Value,
}

impl Window {
    pub(super) fn between(a: &Snap, b: &Snap) -> Window {
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

    pub(super) fn rate(&self, n: u64) -> f64 {
        n as f64 / self.secs
    }

    /// Where the CPU went in the window: ingest, this load generator, and the whole machine
    /// (the rest is mostly Postgres).
    pub(super) fn cpu_detail(&self, events: u64) -> Value {
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
pub(super) struct IngestProbe<'a> {
    pub(super) pid: u32,
    pub(super) metrics_url: &'a str,
    pub(super) http: &'a reqwest::Client,
}

/// Sums of ingest's group-commit histograms: (batch seconds, batches, requests).
pub(super) async fn scrape_batches(i: &IngestProbe<'_>) -> Option<(f64, f64, f64)> {
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
pub(super) async fn measure(c: &Counters, sizes: &Sizes, ingest: Option<IngestProbe<'_>>) -> Window {
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
pub(super) struct Percentiles {
    pub(super) p50: f64,
    pub(super) p99: f64,
    pub(super) max: f64,
}

/// Percentiles of millisecond samples (nearest rank).
pub(super) fn percentiles(mut ms: Vec<f64>) -> Percentiles {
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
