//! rig-stale-heartbeat: finds issues whose agent went quiet and asks ingest to append
//! `AGENT_STUCK` + `ISSUE_UNASSIGNED` for them.
//!
//! Two parts share one process: the projection (`rig_projections::stale_heartbeat`) tails the log through the consumer runtime
//! and keeps `stale_heartbeat_issues` (held issues and their last sign of life), and the
//! [`checker`] looks for quiet issues every `check_interval`, only while this instance is the
//! active one (a hot standby runs neither). It never writes `events` itself: ingest does.

mod checker;

rig_ops::service_allocator!();

use rig_ops::telemetry::PrometheusHandle;
use rig_ops::Settings;
use tokio_util::sync::CancellationToken;

/// Connections: the batch transaction, the head query, the checker, `/readyz`, LISTEN.
const POOL_SIZE: u32 = 5;

/// Serves the ops endpoints, tails the log and checks for stale issues until `shutdown`.
async fn run(settings: Settings, metrics: PrometheusHandle, shutdown: CancellationToken) -> anyhow::Result<()> {
    let worker = rig_consumer::Worker {
        name: "rig-stale-heartbeat",
        settings: &settings,
        pool_size: POOL_SIZE,
        listen: settings.stale_heartbeat.metrics_listen,
    };
    checker::register_metrics();
    let s = settings.stale_heartbeat.clone();
    tracing::info!(threshold = ?s.threshold, check_interval = ?s.check_interval, "rig-stale-heartbeat checking for silent agents");
    rig_consumer::run_worker(worker, metrics, shutdown, move |t| {
        let checker = checker::Checker::new(t.pool.clone(), &s, t.slug, t.settings.stale_threshold)?;
        let projection = rig_projections::stale_heartbeat::StaleHeartbeatProjection;
        Ok((
            projection,
            rig_consumer::companion(move |active, shutdown| checker.run(active, shutdown)),
        ))
    })
    .await
}

fn main() -> std::process::ExitCode {
    rig_ops::service::main("rig-stale-heartbeat", run)
}
