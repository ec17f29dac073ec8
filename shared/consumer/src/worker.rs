//! A tailing worker process, written once: connect as the worker's own database role, serve
//! `/metrics`, `/healthz` and `/readyz`, and run the fleet (the consumer of every tenant this
//! replica works, each with its companion task), then stop everything together.

use crate::{ConsumerConfig, Fleet, Projection, TenantCtx};
use futures::future::BoxFuture;
use rig_ops::telemetry::PrometheusHandle;
use rig_ops::Settings;
use std::future::Future;
use std::net::SocketAddr;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// Who the worker is.
pub struct Worker<'a> {
    /// Its binary's name, which also names its database role (`rig_log::roles`).
    pub name: &'static str,
    pub settings: &'a Settings,
    /// Connections its consumer of `default` may hold: the batch transaction, its catch-up
    /// reader, the head query and its companion's. (Other tenants' pools are smaller, see
    /// `fleet`.)
    pub pool_size: u32,
    /// Where its operations endpoints listen.
    pub listen: SocketAddr,
}

/// Connections to the control database besides the fleet's lock and LISTEN connections: the
/// catalog, a standby's report and `/readyz`.
const CONTROL_POOL_SIZE: u32 = 2;

/// A task that works beside a tenant's consumer on that tenant's pool, and acts only while the
/// consumer runs (`active` is true): the stuck-agent checker, the notifier's sender. It returns
/// once `shutdown` is cancelled.
pub type Companion = Box<dyn FnOnce(watch::Receiver<bool>, CancellationToken) -> BoxFuture<'static, ()> + Send>;

/// Wraps a companion's `run(active, shutdown)` for [`run_worker`].
pub fn companion<F, Fut>(run: F) -> Option<Companion>
where
    F: FnOnce(watch::Receiver<bool>, CancellationToken) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    Some(Box::new(move |active, shutdown| Box::pin(run(active, shutdown))))
}

/// Runs a worker until `shutdown`. `parts` builds, for each tenant this replica takes up, the
/// tenant's projection and its companion, if any.
pub async fn run_worker<P, F>(
    worker: Worker<'_>,
    metrics: PrometheusHandle,
    shutdown: CancellationToken,
    parts: F,
) -> anyhow::Result<()>
where
    P: Projection,
    F: Fn(&TenantCtx<'_>) -> anyhow::Result<(P, Option<Companion>)> + Send + Sync + 'static,
{
    let Worker {
        name,
        settings,
        pool_size,
        listen,
    } = worker;
    let url = rig_log::roles::Role::for_binary(name).map_or(&settings.database_url, |r| settings.database_url_for(r));
    let (control, server) =
        rig_ops::http::start_worker(name, url.expose(), CONTROL_POOL_SIZE, listen, metrics, &shutdown).await?;
    let consumer = consumer_name(name);
    let fleet = Fleet::new(
        consumer,
        control,
        pool_size,
        ConsumerConfig::from_settings(&settings.consumer),
        Box::new(parts),
    );
    fleet.run(shutdown.clone()).await;
    let _ = server.await;
    tracing::info!("{name} stopped");
    Ok(())
}

/// `rig-token-projector` → `token-projector`: a worker's consumer is its binary's name.
fn consumer_name(binary: &'static str) -> &'static str {
    binary.strip_prefix("rig-").unwrap_or(binary)
}

/// A worker that is one projection per tenant and nothing else (token-projector, cost-projector).
pub async fn run_projection<P, F>(
    worker: Worker<'_>,
    projection: F,
    metrics: PrometheusHandle,
    shutdown: CancellationToken,
) -> anyhow::Result<()>
where
    P: Projection,
    F: Fn(&TenantCtx<'_>) -> anyhow::Result<P> + Send + Sync + 'static,
{
    run_worker(worker, metrics, shutdown, move |t| Ok((projection(t)?, None))).await
}
