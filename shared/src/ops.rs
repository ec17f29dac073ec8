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
use std::time::Duration;
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

/// Binds `addr` and serves `router` until `shutdown`. Binding errors are returned at once, so
/// a port clash is reported at start, not later.
pub async fn serve(
    addr: SocketAddr,
    router: Router,
    shutdown: CancellationToken,
) -> anyhow::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {addr}: {e}"))?;
    let local = listener.local_addr()?;
    let task = tokio::spawn(async move {
        let r = axum::serve(listener, router)
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await;
        if let Err(e) = r {
            tracing::error!(error = %e, "http server failed");
        }
    });
    Ok((local, task))
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
    let pool = crate::db::pool(database_url, pool_size)?;
    if let Some(role) = crate::roles::Role::for_binary(name) {
        crate::roles::warn_if_privileged(&pool, role);
    }
    let ops = router(OpsState {
        pool: pool.clone(),
        metrics,
    });
    let (addr, server) = serve(listen, ops, shutdown.clone()).await?;
    tracing::info!(%addr, "{name} serving /metrics, /healthz, /readyz");
    Ok((pool, server))
}

/// A worker that is one projection and nothing else (token-projector, cost-projector): start,
/// run the consumer until `shutdown` or a fatal error, then stop the endpoints with it.
pub async fn run_projection<P: crate::consumer::Projection>(
    name: &str,
    settings: &crate::Settings,
    pool_size: u32,
    listen: SocketAddr,
    projection: P,
    metrics: PrometheusHandle,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    // Each projector connects as its own role (see `roles`), named after its binary.
    let url = crate::roles::Role::for_binary(name).map_or(&settings.database_url, |r| settings.database_url_for(r));
    let (pool, server) = start_worker(name, url.expose(), pool_size, listen, metrics, &shutdown).await?;
    let cfg = crate::consumer::ConsumerConfig::from_settings(&settings.consumer);
    let result = crate::consumer::Consumer::new(pool, projection, cfg)
        .run(shutdown.clone())
        .await;
    // The server stops with the consumer, whichever way it ended.
    shutdown.cancel();
    server.await?;
    result
}
