//! rig-ingest: validates and appends events (the ONLY writer of `events`), keeps the inline read
//! models in the same transaction, and serves reads, the GitHub webhook, the dashboard and the
//! operations endpoints.

pub mod api;
pub mod compat;
pub mod dashboard;
pub mod error;
pub mod github;
pub mod tenants;

use anyhow::bail;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use error::ApiError;
use rig_ops::telemetry::PrometheusHandle;
use rig_ops::Settings;
use sqlx::PgPool;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;
use tokio_util::sync::CancellationToken;

pub use rig_log::writer::Writer;

#[derive(Clone)]
pub struct AppState {
    /// The writer's pool (appends, the webhook's bookkeeping, `/readyz`).
    pub pool: PgPool,
    /// Every read (streams, lists, the dashboard): its own connections, so a burst of reads
    /// queues here and never takes the connections appends need.
    pub read_pool: PgPool,
    /// Where reads run ([`limit_reads`]): as many at once as the read pool has connections.
    pub read_lane: ReadLane,
    /// The address ingest answers on (the bound one, when `listen` asked for port 0): the one
    /// `Host` and `Origin` a browser may name.
    pub local_addr: SocketAddr,
    pub writer: Writer,
    pub settings: Arc<Settings>,
    /// `ingest.github.branch_issue_pattern`, compiled once at start. In an `Arc` because the
    /// state is cloned for every request, and cloning a `Regex` builds a new match cache.
    pub branch_issue_re: Arc<regex::Regex>,
    /// The tenant whose log `pool`, `read_pool` and `writer` are: `default` in the router's
    /// state, the request's own in a [`tenants::Scoped`] one.
    pub tenant: Arc<str>,
    /// That tenant's settings (none for `default`: the deployment's apply).
    pub tenant_settings: Arc<rig_tenants::TenantSettings>,
    pub tenants: Arc<tenants::Registry>,
}

impl AppState {
    pub fn is_default_tenant(&self) -> bool {
        &*self.tenant == rig_tenants::DEFAULT
    }
}

/// The whole HTTP surface, separate from serving so tests can call it in-process.
///
/// Order of the checks on a request, outermost first: the tenant prefix (`/t/{tenant}`) taken
/// off the path; metrics; the browser rules (`Host`, `Origin`); the request deadline; then, on
/// each route, its tenant and who asks (`tenants::scope_*`: on the routes that write, the bearer
/// token) and the `Content-Type`, both before the body is read; then the handler, which reads the
/// body within `ingest.max_body_bytes`.
pub fn app(state: AppState, metrics: PrometheusHandle) -> Router {
    // The tenant prefix comes off before routing (see `tenants`): around the whole router.
    Router::new()
        .fallback_service(routes(state, metrics))
        .layer(axum::middleware::from_fn(tenants::strip_tenant))
}

fn routes(state: AppState, metrics: PrometheusHandle) -> Router {
    let ops = rig_ops::http::router(rig_ops::http::OpsState {
        pool: state.pool.clone(),
        metrics,
    });
    // The webhook is authenticated by its signature, which needs the body; it gets the
    // Content-Type rule and the body limit, not the token.
    let writes = Router::new()
        .route("/v1/events", post(api::append))
        .route("/api/events", post(compat::append))
        .route_layer(axum::middleware::from_fn_with_state(state.clone(), require_json))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            tenants::scope_write,
        ));
    let webhooks = Router::new()
        .route("/v1/github/webhook", post(github::webhook))
        .route("/api/webhook/github", post(github::webhook))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            require_json_for_webhook,
        ))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            tenants::scope_webhook,
        ));
    let dashboard = Router::new()
        .route("/dashboard", get(dashboard::page).post(dashboard::login))
        .route_layer(axum::middleware::from_fn_with_state(
            state.read_lane.clone(),
            limit_reads,
        ))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            tenants::scope_dashboard,
        ));
    let reads = Router::new()
        .route("/v1/streams/{*stream_id}", get(api::read_stream))
        .route("/v1/issues", get(api::list_issues))
        .route("/v1/issues/{*stream_id}", get(api::get_issue))
        .route("/v1/agents", get(api::list_agents))
        .route("/v1/usage", get(api::usage))
        .route("/v1/costs/daily", get(api::daily_costs))
        .route_layer(axum::middleware::from_fn_with_state(
            state.read_lane.clone(),
            limit_reads,
        ))
        .route_layer(axum::middleware::from_fn_with_state(state.clone(), tenants::scope_read));
    let admin = Router::new()
        .route("/v1/admin/tenants", get(tenants::list))
        .route_layer(axum::middleware::from_fn_with_state(
            state.read_lane.clone(),
            limit_reads,
        ));
    let request_timeout = state.settings.ingest.request_timeout;
    let browser = BrowserRules::new(state.local_addr);
    Router::new()
        .route("/", get(dashboard::root))
        .merge(reads)
        .merge(writes)
        .merge(webhooks)
        .merge(admin)
        .merge(dashboard)
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state.clone())
        .merge(ops)
        .layer(axum::extract::DefaultBodyLimit::max(
            state.settings.ingest.max_body_bytes,
        ))
        .layer(axum::middleware::map_response(json_timeout))
        .layer(tower_http::timeout::TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            request_timeout,
        ))
        .layer(axum::middleware::from_fn_with_state(browser, browser_rules))
        .layer(axum::middleware::from_fn_with_state(
            state.tenants.clone(),
            track_requests,
        ))
}

/// How long a read waits for one of the read slots before it is answered 503.
const READ_SLOT_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Where reads run: a slot (at most `ingest.read_pool_size` reads at once, from the query to the
/// answer's last byte of JSON) and a thread of their own.
#[derive(Clone)]
pub struct ReadLane {
    slots: Arc<tokio::sync::Semaphore>,
    runtime: tokio::runtime::Handle,
}

impl ReadLane {
    /// A lane with `slots` slots on a one-thread runtime that ends when `shutdown` is cancelled.
    fn start(slots: usize, shutdown: CancellationToken) -> anyhow::Result<ReadLane> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("rig-ingest-reads")
            .on_thread_start(lower_priority)
            .enable_all()
            .build()?;
        let runtime = rt.handle().clone();
        std::thread::Builder::new()
            .name("rig-ingest-reads".into())
            .spawn(move || rt.block_on(shutdown.cancelled()))?;
        Ok(ReadLane {
            slots: Arc::new(tokio::sync::Semaphore::new(slots)),
            runtime,
        })
    }
}

/// Lowers the calling thread's scheduling priority (nice 10): when reads and appends both want
/// the CPU, the kernel gives it to the appends first, and reads take what is left.
fn lower_priority() {
    #[cfg(target_os = "linux")]
    // SAFETY: setpriority on the calling thread (Linux: PRIO_PROCESS with 0 is this thread);
    // it only lowers our own priority, which needs no privilege.
    unsafe {
        if libc::setpriority(libc::PRIO_PROCESS, 0, 10) != 0 {
            tracing::debug!("cannot lower the read thread's priority");
        }
    }
}

/// Runs a read in the read lane. The read pool alone bounds the database's share of a burst of
/// reads; ingest's own share (decoding rows, folding, writing large JSON answers) is bounded
/// here: reads run on one thread of their own, so the appends' requests never wait behind them
/// on the threads that serve appends, and the kernel shares the cores between the two. A read
/// that waits [`READ_SLOT_WAIT`] for a slot is told to come back (503).
async fn limit_reads(State(lane): State<ReadLane>, req: Request, next: Next) -> Response {
    let slot = match tokio::time::timeout(READ_SLOT_WAIT, lane.slots.clone().acquire_owned()).await {
        Ok(Ok(slot)) => slot,
        _ => return ApiError::Busy("too many reads at once; retry shortly").into_response(),
    };
    let read = lane.runtime.spawn(async move {
        let resp = next.run(req).await;
        drop(slot);
        resp
    });
    match read.await {
        Ok(resp) => resp,
        Err(e) => {
            tracing::error!(error = %e, "a read failed");
            ApiError::Busy("the read was interrupted; retry").into_response()
        }
    }
}

/// tower-http's deadline answers a bare 408; clients get our JSON error like any other.
async fn json_timeout(resp: Response) -> Response {
    if resp.status() == StatusCode::REQUEST_TIMEOUT && !resp.headers().contains_key(header::CONTENT_TYPE) {
        return ApiError::RequestTimeout.into_response();
    }
    resp
}

/// In open mode (no `ingest.auth_tokens`), writes are JSON and say so. A browser page may send
/// a cross-origin POST without asking first (no CORS preflight) only as `text/plain`, a form or
/// multipart; refusing every other type keeps such a page from writing events through a
/// visitor's browser. With tokens the bearer token already proves the sender (a page cannot set
/// `Authorization` cross-origin without a preflight, which ingest never grants), so any client
/// that sends one is served whatever type it declares.
///
/// A tenant's routes always take a token (checked before this, in `tenants::scope_write`).
async fn require_json(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let tenant = req.extensions().get::<tenants::PathTenant>().is_some();
    if tenant || !state.settings.ingest.auth_tokens.is_empty() || is_json(req.headers()) {
        next.run(req).await
    } else {
        ApiError::UnsupportedMediaType(
            "send the body as JSON, with Content-Type: application/json (ingest has no auth_tokens, so it \
             refuses what a web page could send)",
        )
        .into_response()
    }
}

/// [`require_json`] for the GitHub webhook, which is authenticated by its signature, not a token.
/// With `ingest.github.webhook_secret` set the signature proves the sender, so any type is taken
/// (GitHub sends JSON, or a form, `payload=<json>`, its settings' default). Without a secret the
/// webhook takes JSON only: a form could come from any web page.
///
/// On `/t/{slug}/…` the tenant's own secret counts too.
async fn require_json_for_webhook(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let tenant_secret = req
        .extensions()
        .get::<tenants::PathTenant>()
        .and_then(|t| state.tenants.enabled(&t.0))
        .is_some_and(|e| e.settings.webhook_secret.is_some());
    if tenant_secret || state.settings.ingest.github.webhook_secret.is_some() || is_json(req.headers()) {
        next.run(req).await
    } else {
        ApiError::UnsupportedMediaType(
            "with no ingest.github.webhook_secret the webhook takes JSON only (a form could come from any web page): \
             set its Content type to application/json in the repository's webhook settings, or set the secret",
        )
        .into_response()
    }
}

/// `application/json`, with or without parameters (`; charset=utf-8`), in any case.
fn is_json(headers: &axum::http::HeaderMap) -> bool {
    has_media_type(headers, "application/json")
}

fn has_media_type(headers: &axum::http::HeaderMap, media_type: &str) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|t| t.trim().eq_ignore_ascii_case(media_type))
}

/// What a browser may name when it talks to ingest. A page from another site must not use ingest
/// through its visitor's browser: its requests carry an `Origin` that is not ingest's own
/// (refused, 403, on every route and in every mode: no legitimate client of ingest is another
/// site's page), or, through DNS rebinding, a `Host` that is the attacker's domain name (refused,
/// 421, when ingest listens on loopback: there a client names it by an address or `localhost`,
/// never by a domain). The `Host` port is not compared, so a local proxy that forwards the
/// client's `Host` (a test's TCP relay, say) still works; a browser always sends the name it
/// resolved, which is what the rule is about.
#[derive(Clone)]
pub struct BrowserRules {
    local: SocketAddr,
    check_host: bool,
}

impl BrowserRules {
    pub fn new(local: SocketAddr) -> BrowserRules {
        BrowserRules {
            local,
            check_host: local.ip().is_loopback(),
        }
    }

    /// The host part of a `Host` header is `localhost` or a loopback address (or ours).
    fn host_is_local(&self, authority: &str) -> bool {
        let (host, _) = split_authority(authority);
        host.eq_ignore_ascii_case("localhost")
            || parse_ip(host).is_some_and(|ip| ip.is_loopback() || ip == self.local.ip())
    }

    /// `host[:port]` names this server exactly: its own address or `localhost`, on its port.
    fn names_us(&self, authority: &str) -> bool {
        let (host, port) = split_authority(authority);
        let port = match port {
            None => 80,
            Some(p) => match p.parse::<u16>() {
                Ok(p) => p,
                Err(_) => return false,
            },
        };
        port == self.local.port()
            && (host.eq_ignore_ascii_case("localhost") || parse_ip(host).is_some_and(|ip| ip == self.local.ip()))
    }
}

/// `127.0.0.1` or `[::1]` as an address.
fn parse_ip(host: &str) -> Option<std::net::IpAddr> {
    host.trim_start_matches('[').trim_end_matches(']').parse().ok()
}

/// `example.com:8080` → (`example.com`, `8080`); `[::1]:8080` → (`[::1]`, `8080`).
fn split_authority(a: &str) -> (&str, Option<&str>) {
    if a.starts_with('[') {
        return match a.find(']') {
            Some(end) => (&a[..=end], a[end + 1..].strip_prefix(':')),
            None => (a, None),
        };
    }
    match a.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') => (h, Some(p)),
        _ => (a, None),
    }
}

async fn browser_rules(State(rules): State<BrowserRules>, req: Request, next: Next) -> Response {
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .or_else(|| req.uri().authority().map(|a| a.as_str().to_owned()));
    if rules.check_host && !host.as_deref().is_some_and(|h| rules.host_is_local(h)) {
        return ApiError::MisdirectedRequest(format!(
            "listening on loopback, this server answers to its address or localhost only, not Host {:?}",
            host.unwrap_or_default()
        ))
        .into_response();
    }
    if let Some(origin) = req.headers().get(header::ORIGIN) {
        let origin = origin.to_str().unwrap_or("");
        let authority = origin
            .strip_prefix("http://")
            .or_else(|| origin.strip_prefix("https://"))
            .filter(|a| !a.is_empty() && !a.contains('/'));
        let ours =
            authority.is_some_and(|a| rules.names_us(a) || host.as_deref().is_some_and(|h| h.eq_ignore_ascii_case(a)));
        if !ours {
            return ApiError::ForbiddenOrigin(format!(
                "requests from web pages of other sites are refused (Origin {origin:?})"
            ))
            .into_response();
        }
    }
    next.run(req).await
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

/// Request count and latency by matched route (never the raw path: ids are unbounded), and by
/// tenant (see `tenants::tenant_label`: bounded too).
async fn track_requests(State(registry): State<Arc<tenants::Registry>>, req: Request, next: Next) -> Response {
    let tenant = tenants::tenant_label(&registry, req.extensions().get::<tenants::PathTenant>());
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    let method = method_label(req.method());
    let started = Instant::now();
    let resp = next.run(req).await;
    let status = resp.status().as_u16().to_string();
    metrics::counter!("rig_ingest_requests_total", "route" => route.clone(), "method" => method, "status" => status, "tenant" => tenant)
        .increment(1);
    metrics::histogram!("rig_ingest_request_duration_seconds", "route" => route, "method" => method)
        .record(started.elapsed().as_secs_f64());
    resp
}

/// The `method` label: the methods HTTP defines, else `other`, so a client inventing methods
/// cannot make new time series.
fn method_label(m: &axum::http::Method) -> &'static str {
    use axum::http::Method;
    match *m {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::OPTIONS => "OPTIONS",
        Method::CONNECT => "CONNECT",
        Method::TRACE => "TRACE",
        _ => "other",
    }
}

/// Checks the bearer token when `ingest.auth_tokens` is set.
pub fn authorize(state: &AppState, headers: &axum::http::HeaderMap) -> Result<(), ApiError> {
    if state.settings.ingest.auth_tokens.is_empty() {
        return Ok(());
    }
    let token = tenants::bearer(headers).unwrap_or(Err(ApiError::Unauthorized(
        "missing Authorization: Bearer <token> header",
    )))?;
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

/// Connects, checks that the schema is migrated, serves until `shutdown`.
pub async fn run(settings: Settings, metrics: PrometheusHandle, shutdown: CancellationToken) -> anyhow::Result<()> {
    check_exposure(&settings)?;
    let opts = rig_log::db::connect_options(settings.database_url_for(rig_log::roles::Role::Ingest).expose())?
        .options([("statement_timeout", millis(settings.ingest.statement_timeout))]);
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(16)
        .min_connections(0)
        .acquire_timeout(std::time::Duration::from_secs(5))
        .connect_lazy_with(opts);
    rig_log::db::check_schema(&pool).await?;
    rig_log::roles::warn_if_privileged(&pool, rig_log::roles::Role::Ingest);
    let (addr, server) = start(settings, pool, metrics, shutdown).await?;
    tracing::info!(%addr, "rig-ingest listening");
    server.await?;
    tracing::info!("rig-ingest stopped");
    Ok(())
}

/// A duration as Postgres takes `statement_timeout`: whole milliseconds.
pub(crate) fn millis(d: std::time::Duration) -> String {
    d.as_millis().max(1).to_string()
}

/// The pool every read uses: the writer pool's connection options (database, role, TLS), its
/// own `ingest.read_pool_size` connections, and `ingest.read_statement_timeout` on each
/// statement. A read that waits 5 s for a connection is answered 503.
pub fn read_pool(pool: &PgPool, settings: &Settings) -> PgPool {
    let opts = (*pool.connect_options())
        .clone()
        .options([("statement_timeout", millis(settings.ingest.read_statement_timeout))])
        .application_name("rig-ingest-reads");
    sqlx::postgres::PgPoolOptions::new()
        .max_connections(settings.ingest.read_pool_size)
        .min_connections(0)
        .acquire_timeout(std::time::Duration::from_secs(5))
        .connect_lazy_with(opts)
}

/// Binds and serves in the background; returns the bound address (port 0 picks a free one).
/// `pool` is the writer's; reads get a pool of their own made from its options ([`read_pool`]).
pub async fn start(
    settings: Settings,
    pool: PgPool,
    metrics: PrometheusHandle,
    shutdown: CancellationToken,
) -> anyhow::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let branch_issue_re = github::compile_branch_pattern(&settings.ingest.github.branch_issue_pattern)?;
    let listener = rig_ops::http::bind(settings.ingest.listen).await?;
    let local_addr = listener.local_addr()?;
    let writer = Writer::spawn(pool.clone(), settings.ingest.max_batch_requests);
    let limits = rig_ops::http::ServeLimits {
        header_read_timeout: settings.ingest.header_read_timeout,
        max_connections: settings.ingest.max_connections,
        shutdown_timeout: settings.ingest.shutdown_timeout,
    };
    let lane_stop = CancellationToken::new();
    let registry = Arc::new(tenants::Registry::new(
        pool.clone(),
        &settings,
        tokio::runtime::Handle::current(),
    ));
    // Tenants known at start are served from the first request; a failure here is retried by
    // the watcher within seconds (and `default` needs no catalog).
    if let Err(e) = registry.reload().await {
        tracing::warn!(error = %e, "cannot read the tenant catalog yet; serving default only until it can be read");
    }
    tokio::spawn(registry.clone().watch_catalog(lane_stop.clone()));
    tokio::spawn(registry.clone().send_wakeups(lane_stop.clone()));
    let state = AppState {
        read_pool: read_pool(&pool, &settings),
        read_lane: ReadLane::start(settings.ingest.read_pool_size as usize, lane_stop.clone())?,
        pool,
        local_addr,
        writer,
        settings: Arc::new(settings),
        branch_issue_re: Arc::new(branch_issue_re),
        tenant: Arc::from(rig_tenants::DEFAULT),
        tenant_settings: Arc::new(rig_tenants::TenantSettings::default()),
        tenants: registry,
    };
    let serving = rig_ops::http::serve_on(listener, app(state, metrics), limits, shutdown);
    // The read lane outlives the server, so reads in flight at SIGTERM finish too.
    let server = tokio::spawn(async move {
        if let Err(e) = serving.await {
            tracing::error!(error = %e, "the server task failed");
        }
        lane_stop.cancel();
    });
    Ok((local_addr, server))
}
