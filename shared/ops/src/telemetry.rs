//! Logs and metrics for every binary: `tracing` with an `EnvFilter` (`RUST_LOG`, default
//! `info`), JSON lines when `RIG_LOG_FORMAT=json`; one process-wide Prometheus recorder.
//! Services log to stdout; `rigctl` logs to stderr, since its stdout is its output (`--json`).

pub use metrics_exporter_prometheus::PrometheusHandle;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};
use std::sync::OnceLock;
use tracing_subscriber::fmt::writer::BoxMakeWriter;
use tracing_subscriber::{fmt, EnvFilter};

static PROMETHEUS: OnceLock<PrometheusHandle> = OnceLock::new();

/// Where log lines go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogOutput {
    Stdout,
    /// For a command whose stdout is its result (tables, `--json`), which a log line must not corrupt.
    Stderr,
}

/// Installs the log subscriber (on stdout) and the metrics recorder. Safe to call more than once.
pub fn init(service: &'static str) -> PrometheusHandle {
    init_with(service, LogOutput::Stdout)
}

/// [`init`], with the logs going to `output`.
pub fn init_with(service: &'static str, output: LogOutput) -> PrometheusHandle {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn,hyper=warn,tower_http=warn"));
    let json = std::env::var("RIG_LOG_FORMAT").is_ok_and(|v| v.eq_ignore_ascii_case("json"));
    let writer = match output {
        LogOutput::Stdout => BoxMakeWriter::new(std::io::stdout),
        LogOutput::Stderr => BoxMakeWriter::new(std::io::stderr),
    };
    let _ = if json {
        fmt()
            .with_env_filter(filter)
            .with_writer(writer)
            .json()
            .with_current_span(false)
            .try_init()
    } else {
        fmt()
            .with_env_filter(filter)
            .with_writer(writer)
            .with_target(false)
            .try_init()
    };
    let handle = metrics_handle();
    metrics::gauge!("rig_build_info", "service" => service, "version" => env!("CARGO_PKG_VERSION")).set(1.0);
    handle
}

/// How often the recorder's histogram samples are folded into their buckets.
pub const UPKEEP_INTERVAL: std::time::Duration = std::time::Duration::from_secs(5);

/// Folds the recorder's pending histogram samples into their buckets every `every`. The recorder
/// keeps every sample recorded until a scrape or an upkeep drains it, so without this a process
/// nobody scrapes grows by every request it serves. A thread, not a task: the recorder is made
/// before (and outlives) any runtime, and the work is a few microseconds.
fn spawn_upkeep(handle: PrometheusHandle, every: std::time::Duration) {
    let spawned = std::thread::Builder::new()
        .name("metrics-upkeep".into())
        .spawn(move || loop {
            std::thread::sleep(every);
            handle.run_upkeep();
        });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "cannot start the metrics upkeep thread: histograms grow until scraped");
    }
}

/// The process's Prometheus handle, installing the recorder on first use.
pub fn metrics_handle() -> PrometheusHandle {
    PROMETHEUS
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(
                    Matcher::Suffix("_duration_seconds".into()),
                    &[
                        0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                    ],
                )
                .expect("static bucket list is not empty");
            let recorder = builder.build_recorder();
            let handle = recorder.handle();
            // A second recorder in one process (tests) keeps the first; the handle still renders.
            let _ = metrics::set_global_recorder(recorder);
            spawn_upkeep(handle.clone(), UPKEEP_INTERVAL);
            handle
        })
        .clone()
}
