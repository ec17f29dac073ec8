//! Logs and metrics for every binary: `tracing` with an `EnvFilter` (`RUST_LOG`, default
//! `info`), JSON lines when `RIG_LOG_FORMAT=json`; one process-wide Prometheus recorder.

pub use metrics_exporter_prometheus::PrometheusHandle;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};
use std::sync::OnceLock;
use tracing_subscriber::{fmt, EnvFilter};

static PROMETHEUS: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the log subscriber and the metrics recorder. Safe to call more than once.
pub fn init(service: &'static str) -> PrometheusHandle {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn,hyper=warn,tower_http=warn"));
    let json = std::env::var("RIG_LOG_FORMAT").is_ok_and(|v| v.eq_ignore_ascii_case("json"));
    let _ = if json {
        fmt().with_env_filter(filter).json().with_current_span(false).try_init()
    } else {
        fmt().with_env_filter(filter).with_target(false).try_init()
    };
    let handle = metrics_handle();
    metrics::gauge!("rig_build_info", "service" => service, "version" => env!("CARGO_PKG_VERSION")).set(1.0);
    handle
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
            handle
        })
        .clone()
}
