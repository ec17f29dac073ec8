//! rig-stale-heartbeat: finds issues whose agent went quiet and asks ingest to append
//! `AGENT_STUCK` + `ISSUE_UNASSIGNED` for them.
//!
//! Two parts share one process: the projection (`rig_projections::stale_heartbeat`) tails the log through the consumer runtime
//! and keeps `stale_heartbeat_issues` (held issues and their last sign of life), and the
//! [`checker`] looks for quiet issues every `check_interval`, only while this instance is the
//! active one (a hot standby runs neither). It never writes `events` itself: ingest does.

mod checker;

rig_ops::service_allocator!();

use rig_consumer::{Consumer, ConsumerConfig};
use rig_ops::telemetry::PrometheusHandle;
use rig_ops::Settings;
use tokio_util::sync::CancellationToken;

/// Connections: the batch transaction, the head query, the checker, `/readyz`, LISTEN.
const POOL_SIZE: u32 = 5;

/// Serves the ops endpoints, tails the log and checks for stale issues until `shutdown`.
async fn run(settings: Settings, metrics: PrometheusHandle, shutdown: CancellationToken) -> anyhow::Result<()> {
    let (pool, server) = rig_ops::http::start_worker(
        "rig-stale-heartbeat",
        settings.database_url_for(rig_log::roles::Role::StaleHeartbeat).expose(),
        POOL_SIZE,
        settings.stale_heartbeat.metrics_listen,
        metrics,
        &shutdown,
    )
    .await?;
    tracing::info!(
        threshold = ?settings.stale_heartbeat.threshold, check_interval = ?settings.stale_heartbeat.check_interval,
        "rig-stale-heartbeat checking for silent agents"
    );
    let checker = checker::Checker::new(pool.clone(), &settings.stale_heartbeat)?;
    let consumer = Consumer::new(
        pool,
        rig_projections::stale_heartbeat::StaleHeartbeatProjection,
        ConsumerConfig::from_settings(&settings.consumer),
    );
    let check_task = tokio::spawn(checker.run(consumer.active_watch(), shutdown.clone()));
    let result = consumer.run(shutdown.clone()).await;
    // The checker follows the consumer: if the consumer stopped on its own, stop it too.
    shutdown.cancel();
    let _ = check_task.await;
    let _ = server.await;
    tracing::info!("rig-stale-heartbeat stopped");
    result
}

fn main() -> std::process::ExitCode {
    rig_ops::service::main("rig-stale-heartbeat", run)
}
