//! The operations endpoints every worker serves: `/metrics`, `/healthz` (the process is alive)
//! and `/readyz` (the database answers). Ingest mounts the same routes on its API port; the
//! tailing workers serve them on their own `metrics_listen`.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use metrics_exporter_prometheus::PrometheusHandle;
use serde_json::json;
use sqlx::PgPool;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

#[derive(Clone)]
pub struct OpsState {
    pub pool: PgPool,
    pub metrics: PrometheusHandle,
}

pub fn router(state: OpsState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(state)
}

async fn metrics(State(s): State<OpsState>) -> Response {
    (
        [(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        s.metrics.render(),
    )
        .into_response()
}

async fn healthz() -> Response {
    Json(json!({"status": "alive"})).into_response()
}

async fn readyz(State(s): State<OpsState>) -> Response {
    if database_ready(&s.pool).await {
        Json(json!({"status": "ready"})).into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"error": "database_unavailable", "detail": "the database does not answer"})),
        )
            .into_response()
    }
}

pub async fn database_ready(pool: &PgPool) -> bool {
    let q = sqlx::query_scalar::<_, i32>("SELECT 1").fetch_one(pool);
    matches!(tokio::time::timeout(Duration::from_secs(2), q).await, Ok(Ok(1)))
}

/// How a listener treats its clients: what a slow, idle or numerous client may hold.
#[derive(Debug, Clone, Copy)]
pub struct ServeLimits {
    /// A client has this long to send a request's headers, from the moment its connection opens
    /// or its previous answer was sent. hyper's own timer: it cuts off a client that trickles its
    /// headers (slow loris) and closes a keep-alive connection idle for this long.
    pub header_read_timeout: Duration,
    /// Connections served at once. Past it the listener stops accepting until one closes, so
    /// new clients wait in the kernel's backlog instead of each costing a task and buffers.
    pub max_connections: usize,
    /// After `shutdown`, how long in-flight requests have to finish; connections still open
    /// then are dropped, so the process exits even when a client never lets go.
    pub shutdown_timeout: Duration,
}

impl Default for ServeLimits {
    fn default() -> Self {
        ServeLimits {
            header_read_timeout: Duration::from_secs(10),
            max_connections: 512,
            shutdown_timeout: Duration::from_secs(10),
        }
    }
}

/// Binds `addr`. Binding errors are returned at once, so a port clash is reported at start,
/// not later.
pub async fn bind(addr: SocketAddr) -> anyhow::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {addr}: {e}"))
}

/// Binds `addr` and serves `router` with the default [`ServeLimits`] until `shutdown`.
pub async fn serve(
    addr: SocketAddr,
    router: Router,
    shutdown: CancellationToken,
) -> anyhow::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = bind(addr).await?;
    let local = listener.local_addr()?;
    Ok((local, serve_on(listener, router, ServeLimits::default(), shutdown)))
}

/// Serves `router` over HTTP/1.1 on `listener` within `limits` until `shutdown`; then lets
/// in-flight requests finish for up to `limits.shutdown_timeout` and ends. hyper serves each
/// connection (its `header_read_timeout` needs hyper's builder; `axum::serve` has no such knob),
/// hyper-util's `GracefulShutdown` tells every connection to finish its request and close.
pub fn serve_on(
    listener: tokio::net::TcpListener,
    router: Router,
    limits: ServeLimits,
    shutdown: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    use hyper_util::rt::{TokioIo, TokioTimer};
    use hyper_util::service::TowerToHyperService;

    tokio::spawn(async move {
        let mut builder = hyper::server::conn::http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(limits.header_read_timeout)
            .keep_alive(true);
        let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
        let graceful = hyper_util::server::graceful::GracefulShutdown::new();
        let mut conns = tokio::task::JoinSet::new();
        let open = metrics::gauge!("rig_http_open_connections");
        let mut saturated = false;
        loop {
            while conns.try_join_next().is_some() {}
            if slots.available_permits() == 0 && !saturated {
                saturated = true;
                tracing::warn!(
                    max_connections = limits.max_connections,
                    "connection cap reached: new connections wait until one closes"
                );
            }
            let permit = tokio::select! {
                p = slots.clone().acquire_owned() => match p {
                    Ok(p) => p,
                    Err(_) => break,
                },
                _ = shutdown.cancelled() => break,
            };
            let stream = tokio::select! {
                r = listener.accept() => match r {
                    Ok((stream, _)) => stream,
                    Err(e) => {
                        // Out of file descriptors, say: back off a little instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                _ = shutdown.cancelled() => break,
            };
            if slots.available_permits() > 0 {
                saturated = false;
            }
            let _ = stream.set_nodelay(true);
            let conn = builder.serve_connection(TokioIo::new(stream), TowerToHyperService::new(router.clone()));
            let conn = graceful.watch(conn);
            let open = open.clone();
            open.increment(1.0);
            conns.spawn(async move {
                if let Err(e) = conn.await {
                    tracing::debug!(error = %e, "connection ended with an error");
                }
                open.decrement(1.0);
                drop(permit);
            });
        }
        drop(listener);
        // Idle keep-alive connections close at once; the others finish the request in hand.
        tokio::select! {
            _ = graceful.shutdown() => {}
            _ = tokio::time::sleep(limits.shutdown_timeout) => {
                tracing::warn!(
                    connections = conns.len(),
                    timeout = ?limits.shutdown_timeout,
                    "connections still open at the shutdown deadline: closing them"
                );
            }
        }
        conns.abort_all();
        while conns.join_next().await.is_some() {}
    })
}

/// What every tailing worker starts with: its connection pool and its operations endpoints on
/// `listen`. The server stops when `shutdown` is cancelled; await the handle after that.
pub async fn start_worker(
    name: &str,
    database_url: &str,
    pool_size: u32,
    listen: SocketAddr,
    metrics: PrometheusHandle,
    shutdown: &CancellationToken,
) -> anyhow::Result<(PgPool, tokio::task::JoinHandle<()>)> {
    let pool = rig_log::db::pool(database_url, pool_size)?;
    if let Some(role) = rig_log::roles::Role::for_binary(name) {
        rig_log::roles::warn_if_privileged(&pool, role);
    }
    let ops = router(OpsState {
        pool: pool.clone(),
        metrics,
    });
    let (addr, server) = serve(listen, ops, shutdown.clone()).await?;
    tracing::info!(%addr, "{name} serving /metrics, /healthz, /readyz");
    Ok((pool, server))
}
