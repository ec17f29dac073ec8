//! A tailing worker process, written once: connect as the worker's own database role, serve
//! `/metrics`, `/healthz` and `/readyz`, run the consumer (active, or a hot standby until the
//! active instance goes), and run any companion task beside it, then stop everything together.

use crate::{Consumer, ConsumerConfig, Projection};
use futures::future::BoxFuture;
use rig_ops::telemetry::PrometheusHandle;
use rig_ops::Settings;
use sqlx::PgPool;
use std::future::Future;
use std::net::SocketAddr;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// Who the worker is.
pub struct Worker<'a> {
    /// Its binary's name, which also names its database role (`rig_log::roles`).
    pub name: &'static str,
    pub settings: &'a Settings,
    /// Connections it may hold: the batch transaction, its catch-up reader, LISTEN, the head
    /// query, `/readyz`, and its companion's.
    pub pool_size: u32,
    /// Where its operations endpoints listen.
    pub listen: SocketAddr,
}

/// A task that works beside the consumer on the worker's pool and acts only while this instance
/// is the active one (`active` is true): the stuck-agent checker, the notifier's sender. It
/// returns once `shutdown` is cancelled.
pub type Companion = Box<dyn FnOnce(watch::Receiver<bool>, CancellationToken) -> BoxFuture<'static, ()> + Send>;

/// Wraps a companion's `run(active, shutdown)` for [`run_worker`].
pub fn companion<F, Fut>(run: F) -> Option<Companion>
where
    F: FnOnce(watch::Receiver<bool>, CancellationToken) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    Some(Box::new(move |active, shutdown| Box::pin(run(active, shutdown))))
}

/// Runs a worker until `shutdown` or a fatal error of its consumer. `parts` gets the pool once
/// the endpoints serve, and returns the projection and the companion, if any.
pub async fn run_worker<P: Projection>(
    worker: Worker<'_>,
    metrics: PrometheusHandle,
    shutdown: CancellationToken,
    parts: impl FnOnce(&PgPool) -> anyhow::Result<(P, Option<Companion>)>,
) -> anyhow::Result<()> {
    let Worker {
        name,
        settings,
        pool_size,
        listen,
    } = worker;
    let url = rig_log::roles::Role::for_binary(name).map_or(&settings.database_url, |r| settings.database_url_for(r));
    let (pool, server) = rig_ops::http::start_worker(name, url.expose(), pool_size, listen, metrics, &shutdown).await?;
    let (projection, companion) = parts(&pool)?;
    let consumer = Consumer::new(pool, projection, ConsumerConfig::from_settings(&settings.consumer));
    let beside = companion.map(|run| tokio::spawn(run(consumer.active_watch(), shutdown.clone())));
    let result = consumer.run(shutdown.clone()).await;
    // Everything stops with the consumer, whichever way it ended: a companion must not act
    // for a consumer that is gone.
    shutdown.cancel();
    if let Some(task) = beside {
        let _ = task.await;
    }
    let _ = server.await;
    tracing::info!("{name} stopped");
    result
}

/// A worker that is one projection and nothing else (token-projector, cost-projector).
pub async fn run_projection<P: Projection>(
    worker: Worker<'_>,
    projection: P,
    metrics: PrometheusHandle,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    run_worker(worker, metrics, shutdown, |_| Ok((projection, None))).await
}
