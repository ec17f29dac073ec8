//! rig-ingest: validates and appends events (the ONLY writer of `events`), keeps the inline read
//! models in the same transaction, and serves reads, the GitHub webhook, the dashboard and the
//! operations endpoints.

pub mod api;
pub mod compat;
pub mod dashboard;
pub mod error;
pub mod github;
pub mod writer;

use anyhow::bail;
use axum::extract::{MatchedPath, Request};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use error::ApiError;
use shared::telemetry::PrometheusHandle;
use shared::Settings;
use sqlx::PgPool;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;
use tokio_util::sync::CancellationToken;

pub use writer::Writer;

#[derive(Clone)]
pub struct AppState {
    pub pool: PgPool,
    pub writer: Writer,
    pub settings: Arc<Settings>,
    /// `ingest.github.branch_issue_pattern`, compiled once at start. In an `Arc` because the
    /// state is cloned for every request, and cloning a `Regex` builds a new match cache.
    pub branch_issue_re: Arc<regex::Regex>,
}

/// The whole HTTP surface, separate from serving so tests can call it in-process.
pub fn app(state: AppState, metrics: PrometheusHandle) -> Router {
    let ops = shared::ops::router(shared::ops::OpsState {
        pool: state.pool.clone(),
        metrics,
    });
    Router::new()
        .route("/", get(dashboard::root))
        .route("/dashboard", get(dashboard::page))
        .route("/v1/events", post(api::append))
        .route("/v1/streams/{*stream_id}", get(api::read_stream))
        .route("/v1/issues", get(api::list_issues))
        .route("/v1/issues/{*stream_id}", get(api::get_issue))
        .route("/v1/agents", get(api::list_agents))
        .route("/v1/usage", get(api::usage))
        .route("/v1/costs/daily", get(api::daily_costs))
        .route("/api/events", post(compat::append))
        .route("/v1/github/webhook", post(github::webhook))
        .route("/api/webhook/github", post(github::webhook))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state.clone())
        .merge(ops)
        .layer(axum::extract::DefaultBodyLimit::max(
            state.settings.ingest.max_body_bytes,
        ))
        .layer(axum::middleware::from_fn(track_requests))
}

async fn not_found() -> Response {
    ApiError::NotFound("no such route; see the API reference in README.md".into()).into_response()
}

async fn method_not_allowed() -> Response {
    (
        StatusCode::METHOD_NOT_ALLOWED,
        axum::Json(
            serde_json::json!({"error": "method_not_allowed", "detail": "this route does not take that method"}),
        ),
    )
        .into_response()
}

/// Request count and latency by matched route (never the raw path: ids are unbounded).
async fn track_requests(req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    let method = req.method().as_str().to_owned();
    let started = Instant::now();
    let resp = next.run(req).await;
    let status = resp.status().as_u16().to_string();
    metrics::counter!("rig_ingest_requests_total", "route" => route.clone(), "method" => method.clone(), "status" => status)
        .increment(1);
    metrics::histogram!("rig_ingest_request_duration_seconds", "route" => route, "method" => method)
        .record(started.elapsed().as_secs_f64());
    resp
}

/// Checks the bearer token when `ingest.auth_tokens` is set.
pub fn authorize(state: &AppState, headers: &axum::http::HeaderMap) -> Result<(), ApiError> {
    if state.settings.ingest.auth_tokens.is_empty() {
        return Ok(());
    }
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Err(ApiError::Unauthorized("missing Authorization: Bearer <token> header"));
    };
    let token = value
        .to_str()
        .ok()
        // The scheme is case-insensitive (RFC 9110 §11.1).
        .and_then(|v| {
            v.split_once(' ')
                .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        })
        .map(|(_, token)| token.trim())
        .ok_or(ApiError::Unauthorized(
            "the Authorization header must be `Bearer <token>`",
        ))?;
    if state.settings.ingest.token_ok(token) {
        Ok(())
    } else {
        Err(ApiError::Unauthorized(
            "the bearer token is not one of ingest.auth_tokens",
        ))
    }
}

/// Refuses an open API on a non-loopback address unless told `ingest.allow_open = true`.
pub fn check_exposure(settings: &Settings) -> anyhow::Result<()> {
    let i = &settings.ingest;
    if i.listen.ip().is_loopback() || i.allow_open {
        if i.auth_tokens.is_empty() {
            tracing::warn!(listen = %i.listen, "ingest.auth_tokens is empty: writes are not authenticated");
        }
        if i.github.webhook_secret.is_none() {
            tracing::warn!(listen = %i.listen, "ingest.github.webhook_secret is unset: GitHub webhook signatures are not checked");
        }
        return Ok(());
    }
    if i.auth_tokens.is_empty() {
        bail!(
            "refusing to listen on {} (not loopback) with no ingest.auth_tokens: anyone could write events. \
             Set ingest.auth_tokens (RIG_INGEST__AUTH_TOKENS='[\"…\"]'), or ingest.allow_open = true to accept that",
            i.listen
        );
    }
    if i.github.webhook_secret.is_none() {
        bail!(
            "refusing to listen on {} (not loopback) with no ingest.github.webhook_secret: anyone could forge GitHub \
             webhooks. Set it (and ingest.auth_tokens), or ingest.allow_open = true to accept that",
            i.listen
        );
    }
    Ok(())
}

/// Connects, migrates, serves until `shutdown`.
pub async fn run(settings: Settings, metrics: PrometheusHandle, shutdown: CancellationToken) -> anyhow::Result<()> {
    check_exposure(&settings)?;
    let pool = shared::db::pool(settings.database_url_for(shared::roles::Role::Ingest).expose(), 16)?;
    shared::db::check_schema(&pool).await?;
    shared::roles::warn_if_privileged(&pool, shared::roles::Role::Ingest);
    let (addr, server) = start(settings, pool, metrics, shutdown).await?;
    tracing::info!(%addr, "rig-ingest listening");
    server.await?;
    tracing::info!("rig-ingest stopped");
    Ok(())
}

/// Binds and serves in the background; returns the bound address (port 0 picks a free one).
pub async fn start(
    settings: Settings,
    pool: PgPool,
    metrics: PrometheusHandle,
    shutdown: CancellationToken,
) -> anyhow::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let branch_issue_re = github::compile_branch_pattern(&settings.ingest.github.branch_issue_pattern)?;
    let writer = Writer::spawn(pool.clone(), settings.ingest.max_batch_requests);
    let listen = settings.ingest.listen;
    let state = AppState {
        pool,
        writer,
        settings: Arc::new(settings),
        branch_issue_re: Arc::new(branch_issue_re),
    };
    shared::ops::serve(listen, app(state, metrics), shutdown).await
}
