//! Many tenants on one ingest: `/t/{tenant}/…` serves every route for that tenant's log, the
//! unprefixed routes serve the built-in tenant `default` (the control database's own log), so a
//! deployment without tenants behaves exactly as before.
//!
//! How a request finds its tenant:
//! 1. [`strip_tenant`], around the whole router, takes `/t/{slug}` off the path before routing
//!    and keeps the slug as a [`PathTenant`] extension (so the routes, and the `route` label of
//!    the metrics, stay the unprefixed ones: bounded).
//! 2. On each route, [`scope_read`], [`scope_write`] or [`scope_webhook`] checks who asks (before
//!    the body is read) and gives the handler a [`Scoped`] state: the same [`AppState`] with the
//!    tenant's pools and writer.
//!
//! Who may use what: `ingest.auth_tokens` are admin tokens, good for every tenant. A tenant token
//! (`rigctl tenants token`) is good for its own tenant only; for any other tenant, existing or
//! not, and on the unprefixed routes, the answer is 404 `unknown_tenant`, exactly as for a tenant
//! that does not exist, so a token learns nothing about other tenants. A non-default tenant is
//! never open: with no token its routes answer 401 (whether or not the tenant exists).
//!
//! The registry keeps, per enabled tenant and from its first request on, a writer pool, a read
//! pool and a [`Writer`], all of which give their connections back after
//! [`IDLE_TIMEOUT`] without work. The catalog is re-read when the control database notifies
//! [`rig_tenants::CATALOG_CHANNEL`] and at least every [`CATALOG_POLL`].

use crate::error::ApiError;
use crate::{AppState, Writer};
use axum::extract::{FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, Uri};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use rig_log::db::IdleBudget;
use rig_log::writer::{WriterGates, WriterOptions};
use rig_tenants::{Tenant, TenantSettings};
use serde_json::{json, Value};
use sqlx::postgres::{PgConnectOptions, PgListener, PgPoolOptions};
use sqlx::PgPool;
use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// The catalog is re-read at least this often (a notification may be lost while the listening
/// connection reconnects): a tenant disabled at run time is refused within twice this.
pub const CATALOG_POLL: Duration = Duration::from_secs(5);
/// A tenant's connections are closed after this long unused, so a quiet tenant holds none.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections all tenants' writers (and, as many, their flushers) may hold at once.
const WRITER_PERMITS: usize = 6;
/// After this long without appends a tenant's writer gives its connections back to its pool.
const WRITER_IDLE: Duration = Duration::from_secs(1);
/// Idle connections kept across all tenants' pools (beyond these, a connection given back is
/// closed): what bounds ingest's connections when appends touch many tenants in turn.
const IDLE_KEPT: u32 = 8;

/// A tenant's pool of `max` connections, none kept once idle for [`IDLE_TIMEOUT`].
fn tenant_pool(max: u32) -> PgPoolOptions {
    PgPoolOptions::new()
        .max_connections(max)
        .min_connections(0)
        .idle_timeout(IDLE_TIMEOUT)
        .acquire_timeout(Duration::from_secs(5))
}

/// Connections of one tenant's writer pool (the writer and its flusher hold one each while busy;
/// the webhook's bookkeeping takes the others).
const TENANT_WRITE_CONNECTIONS: u32 = 4;
/// Connections of one tenant's read pool.
const TENANT_READ_CONNECTIONS: u32 = 4;
/// How long a token's tenant is remembered (a revoked token also stops working at the next
/// catalog change, which empties the cache).
const TOKEN_TTL: Duration = Duration::from_secs(10);
/// Tokens remembered at most (then the cache is emptied: a flood of made-up tokens cannot grow it).
const TOKEN_CACHE_MAX: usize = 10_000;
/// How long `/v1/admin/tenants` waits for one tenant's database.
const STATS_TIMEOUT: Duration = Duration::from_secs(3);

/// The tenant the path named (`/t/{slug}/…`), exactly as given: not yet checked.
#[derive(Debug, Clone)]
pub struct PathTenant(pub String);

/// `/t/{slug}/rest` → (`slug`, `/rest`), for the routes a tenant has (the API and the dashboard;
/// not the operations endpoints, which are the process's own).
fn split_tenant_path(path: &str) -> Option<(&str, &str)> {
    let after = path.strip_prefix("/t/")?;
    let slash = after.find('/')?;
    let (slug, rest) = after.split_at(slash);
    let served = rest.starts_with("/v1/") || rest.starts_with("/api/") || rest == "/dashboard";
    served.then_some((slug, rest))
}

/// Takes `/t/{slug}` off the path before routing (see the module's documentation). Wraps the
/// whole router: middleware added with `Router::layer` runs after routing.
pub async fn strip_tenant(mut req: Request, next: Next) -> Response {
    let split = split_tenant_path(req.uri().path()).map(|(slug, rest)| {
        let rest = match req.uri().query() {
            Some(q) => format!("{rest}?{q}"),
            None => rest.to_owned(),
        };
        (slug.to_owned(), rest)
    });
    if let Some((slug, rest)) = split {
        let mut parts = req.uri().clone().into_parts();
        match rest.parse() {
            Ok(pq) => parts.path_and_query = Some(pq),
            Err(_) => return ApiError::UnknownTenant.into_response(),
        }
        match Uri::from_parts(parts) {
            Ok(uri) => *req.uri_mut() = uri,
            Err(_) => return ApiError::UnknownTenant.into_response(),
        }
        req.extensions_mut().insert(PathTenant(slug));
    }
    next.run(req).await
}

/// The `tenant` label of a request's metrics: `default` on the unprefixed routes, the slug of a
/// tenant in the catalog, else `unknown` (never a raw slug from the path: bounded).
pub fn tenant_label(registry: &Registry, path: Option<&PathTenant>) -> String {
    match path {
        None => rig_tenants::DEFAULT.to_owned(),
        Some(PathTenant(slug)) if registry.catalog().entries.contains_key(slug) => slug.clone(),
        Some(_) => "unknown".to_owned(),
    }
}

/// One tenant's log as this process reaches it.
pub struct TenantLog {
    pub pool: PgPool,
    pub read_pool: PgPool,
    pub writer: Writer,
    /// The catalog row it was made from: when the row changes (the database moved), it is
    /// made again.
    tenant: Tenant,
}

/// A tenant as the catalog has it, with its settings.
#[derive(Clone)]
pub struct Entry {
    pub tenant: Tenant,
    pub settings: Arc<TenantSettings>,
}

/// The catalog as last read (without `default`, which is always there).
#[derive(Default)]
pub struct Catalog {
    pub entries: HashMap<String, Entry>,
}

/// Coalesced wake-ups for the workers: the slugs whose logs got events since the last
/// notification.
#[derive(Default)]
struct Wake {
    pending: Mutex<BTreeSet<String>>,
    notify: tokio::sync::Notify,
}

/// Token hash → its tenant (`None`: not a tenant token) and when that was read.
type TokenCache = HashMap<Vec<u8>, (Option<String>, Instant)>;

/// Every tenant's log as this process serves it.
pub struct Registry {
    /// Ingest's pool on the control database (the catalog, the wake-ups; `default`'s log).
    control: PgPool,
    /// Ingest's own connection options, which each tenant's log is reached with.
    own: PgConnectOptions,
    statement_timeout: String,
    read_statement_timeout: String,
    max_batch: usize,
    /// The runtime that serves appends: tenant writers and pools are started there, also when a
    /// read (which runs on the read lane's runtime) is a tenant's first request.
    main: tokio::runtime::Handle,
    catalog: RwLock<Arc<Catalog>>,
    logs: Mutex<HashMap<String, Arc<TenantLog>>>,
    /// Turns for the tenants' writers and flushers ([`WRITER_PERMITS`] each).
    gates: WriterGates,
    /// Every tenant's pools (appends, reads), under one budget of idle connections ([`IDLE_KEPT`]).
    pools: IdleBudget,
    tokens: Mutex<TokenCache>,
    wake: Arc<Wake>,
}

impl Registry {
    pub fn new(control: PgPool, settings: &rig_ops::Settings, main: tokio::runtime::Handle) -> Registry {
        let own = (*control.connect_options()).clone();
        Registry {
            control,
            own,
            statement_timeout: crate::millis(settings.ingest.statement_timeout),
            read_statement_timeout: crate::millis(settings.ingest.read_statement_timeout),
            max_batch: settings.ingest.max_batch_requests,
            main,
            catalog: RwLock::new(Arc::new(Catalog::default())),
            logs: Mutex::new(HashMap::new()),
            pools: IdleBudget::new(IDLE_KEPT),
            gates: WriterGates::new(WRITER_PERMITS),
            tokens: Mutex::new(HashMap::new()),
            wake: Arc::new(Wake::default()),
        }
    }

    pub fn catalog(&self) -> Arc<Catalog> {
        self.catalog.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// An enabled tenant's entry (`None` for `default`, unknown and disabled tenants).
    pub fn enabled(&self, slug: &str) -> Option<Entry> {
        self.catalog().entries.get(slug).filter(|e| e.tenant.enabled).cloned()
    }

    /// Reads the catalog again; drops the logs of tenants that went away, were disabled or moved.
    pub async fn reload(&self) -> Result<(), sqlx::Error> {
        let tenants = rig_tenants::list(&self.control).await?;
        let mut settings = TenantSettings::load_all(&self.control).await?;
        let entries: HashMap<String, Entry> = tenants
            .into_iter()
            .filter(|t| !t.is_default())
            .map(|t| {
                let s = settings.remove(&t.slug).unwrap_or_default();
                (
                    t.slug.clone(),
                    Entry {
                        tenant: t,
                        settings: Arc::new(s),
                    },
                )
            })
            .collect();
        let stale: Vec<Arc<TenantLog>> = {
            let mut logs = self.logs.lock().unwrap_or_else(|e| e.into_inner());
            let gone: Vec<String> = logs
                .iter()
                .filter(|(slug, log)| {
                    entries
                        .get(*slug)
                        .is_none_or(|e| !e.tenant.enabled || e.tenant != log.tenant)
                })
                .map(|(slug, _)| slug.clone())
                .collect();
            gone.iter().filter_map(|s| logs.remove(s)).collect()
        };
        *self.catalog.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(Catalog { entries });
        self.tokens.lock().unwrap_or_else(|e| e.into_inner()).clear();
        // Requests in flight keep their handles; the pools close once the last one is dropped.
        for log in &stale {
            self.pools.remove(&log.tenant.slug);
        }
        drop(stale);
        Ok(())
    }

    /// The tenant's log, made on its first use.
    fn log(&self, entry: &Entry) -> anyhow::Result<Arc<TenantLog>> {
        let slug = &entry.tenant.slug;
        let mut logs = self.logs.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(log) = logs.get(slug).filter(|l| l.tenant == entry.tenant) {
            return Ok(log.clone());
        }
        let opts = entry.tenant.connect_options(&self.own)?;
        // Pools and the writer start tasks: on the main runtime, whichever runtime asks.
        let _main = self.main.enter();
        let pool = self
            .pools
            .apply(tenant_pool(TENANT_WRITE_CONNECTIONS))
            .connect_lazy_with(
                opts.clone()
                    .options([("statement_timeout", self.statement_timeout.clone())]),
            );
        let read_pool = self
            .pools
            .apply(tenant_pool(TENANT_READ_CONNECTIONS))
            .connect_lazy_with(
                opts.options([("statement_timeout", self.read_statement_timeout.clone())])
                    .application_name("rig-ingest-reads"),
            );
        let wake = self.wake.clone();
        let woken = slug.clone();
        let writer = Writer::spawn_with(
            pool.clone(),
            self.max_batch,
            WriterOptions {
                tenant: slug.clone(),
                on_commit: Some(Arc::new(move || {
                    wake.pending
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .insert(woken.clone());
                    wake.notify.notify_one();
                })),
                release_idle_after: Some(WRITER_IDLE),
                gates: Some(self.gates.clone()),
            },
        );
        // A log made again (its tenant moved) replaces the pools counted for it.
        self.pools.remove(slug);
        self.pools.add(slug, pool.clone());
        self.pools.add(slug, read_pool.clone());
        let log = Arc::new(TenantLog {
            pool,
            read_pool,
            writer,
            tenant: entry.tenant.clone(),
        });
        logs.insert(slug.clone(), log.clone());
        Ok(log)
    }

    /// `state` turned to an enabled tenant's log.
    pub fn scope(&self, state: &AppState, entry: &Entry) -> Result<AppState, ApiError> {
        let log = self.log(entry).map_err(|e| ApiError::Internal(format!("{e:#}")))?;
        let mut s = state.clone();
        s.pool = log.pool.clone();
        s.read_pool = log.read_pool.clone();
        s.writer = log.writer.clone();
        s.tenant = Arc::from(entry.tenant.slug.as_str());
        s.tenant_settings = entry.settings.clone();
        Ok(s)
    }

    /// The tenant a token belongs to, if it is a tenant token (remembered for [`TOKEN_TTL`]).
    pub(crate) async fn tenant_of_token(&self, token: &str) -> Result<Option<String>, sqlx::Error> {
        // Tenant tokens are `rig_{slug}_{64 hex digits}` (`rig_tenants::new_token` makes them):
        // anything else, or one naming no tenant of the catalog, is no tenant token, and costs
        // no query (a client sending made-up tokens must not make ingest query the database).
        let named = token
            .strip_prefix("rig_")
            .and_then(|t| t.rsplit_once('_'))
            .filter(|(_, hex)| hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()))
            .map(|(slug, _)| slug);
        if !named.is_some_and(|slug| self.catalog().entries.contains_key(slug)) {
            return Ok(None);
        }
        let key = rig_tenants::token_hash(token);
        if let Some((tenant, at)) = self.tokens.lock().unwrap_or_else(|e| e.into_inner()).get(&key) {
            if at.elapsed() < TOKEN_TTL {
                return Ok(tenant.clone());
            }
        }
        let tenant = rig_tenants::tenant_of_token(&self.control, token).await?;
        let mut cache = self.tokens.lock().unwrap_or_else(|e| e.into_inner());
        if cache.len() >= TOKEN_CACHE_MAX {
            cache.clear();
        }
        cache.insert(key, (tenant.clone(), Instant::now()));
        Ok(tenant)
    }

    /// Keeps the catalog current until `shutdown`: LISTEN on the control database, and a read
    /// every [`CATALOG_POLL`] whatever it hears.
    pub async fn watch_catalog(self: Arc<Self>, shutdown: CancellationToken) {
        let mut listener: Option<PgListener> = None;
        loop {
            // Listening starts before the read, so no change falls between the two.
            if listener.is_none() {
                match PgListener::connect_with(&self.control).await {
                    Ok(mut l) => match l.listen(rig_tenants::CATALOG_CHANNEL).await {
                        Ok(()) => listener = Some(l),
                        Err(e) => tracing::warn!(error = %e, "cannot listen for catalog changes; reading it every 5 s"),
                    },
                    Err(e) => tracing::warn!(error = %e, "cannot listen for catalog changes; reading it every 5 s"),
                }
            }
            if let Err(e) = self.reload().await {
                tracing::warn!(error = %e, "cannot read the tenant catalog; serving the tenants last read");
            }
            let heard = async {
                match listener.as_mut() {
                    Some(l) => l.recv().await.map(drop),
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = shutdown.cancelled() => return,
                r = heard => if r.is_err() { listener = None },
                _ = tokio::time::sleep(CATALOG_POLL) => {}
            }
        }
    }

    /// Sends the workers' wake-ups until `shutdown`: after commits in tenants' logs, one
    /// `pg_notify(rig_tenant_events, slug)` per tenant, all in one statement on the control
    /// database (the workers listen there only). Appends never wait for it.
    pub async fn send_wakeups(self: Arc<Self>, shutdown: CancellationToken) {
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = self.wake.notify.notified() => {}
            }
            let slugs: Vec<String> = std::mem::take(&mut *self.wake.pending.lock().unwrap_or_else(|e| e.into_inner()))
                .into_iter()
                .collect();
            if slugs.is_empty() {
                continue;
            }
            let sent = sqlx::query("SELECT pg_notify($1, s) FROM unnest($2::text[]) AS s")
                .bind(rig_tenants::TENANT_EVENTS_CHANNEL)
                .bind(&slugs)
                .execute(&self.control)
                .await;
            if let Err(e) = sent {
                // The workers also poll: a lost wake-up delays them, it loses nothing.
                tracing::warn!(error = %e, tenants = slugs.len(), "cannot wake the workers for tenants' new events");
            }
        }
    }
}

/// The request's state, turned to its tenant by [`scope_read`], [`scope_write`] or
/// [`scope_webhook`].
pub struct Scoped(pub AppState);

impl FromRequestParts<AppState> for Scoped {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        match parts.extensions.get::<ScopedState>() {
            Some(ScopedState(s)) => Ok(Scoped(s.clone())),
            // A route without a scope layer serves `default` only.
            None if parts.extensions.get::<PathTenant>().is_none() => Ok(Scoped(state.clone())),
            None => Err(ApiError::UnknownTenant),
        }
    }
}

/// The extension [`Scoped`] reads.
#[derive(Clone)]
struct ScopedState(AppState);

/// Who a request comes from, as far as its tenant's rules go (the dashboard shows an admin the
/// tenant picker).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Caller {
    /// An admin token, or anyone on the unprefixed routes while ingest has no `auth_tokens`.
    Admin,
    /// A tenant token, on its own tenant.
    Tenant,
    Anonymous,
}

/// What a route does, for who may do it.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Access {
    Read,
    Write,
    /// Authenticated by its signature, in the handler.
    Webhook,
}

/// The bearer token, if the request has an `Authorization` header.
pub(crate) fn bearer(headers: &HeaderMap) -> Option<Result<&str, ApiError>> {
    let value = headers.get(header::AUTHORIZATION)?;
    Some(
        value
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
            )),
    )
}

/// The token a request presents: its bearer token, else, for a read, the dashboard's cookie (a
/// browser cannot send a header; the cookie is `SameSite=Strict`, and never taken for a write).
fn presented(headers: &HeaderMap, access: Access) -> Option<Result<String, ApiError>> {
    match bearer(headers) {
        Some(t) => Some(t.map(str::to_owned)),
        None if access == Access::Read => crate::dashboard::cookie_token(headers).map(Ok),
        None => None,
    }
}

/// Refuses a tenant token on the unprefixed routes (they are `default`'s), as if the route named
/// an unknown tenant. Anything else is left to the rules `default` always had.
async fn refuse_tenant_token_on_default(state: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(Ok(token)) = bearer(headers) else {
        return Ok(());
    };
    // While there are no tenants there are no tenant tokens: nothing to look up.
    if state.settings.ingest.token_ok(token) || state.tenants.catalog().entries.is_empty() {
        return Ok(());
    }
    match state.tenants.tenant_of_token(token).await? {
        Some(_) => Err(ApiError::UnknownTenant),
        None => Ok(()),
    }
}

/// The state for this request's tenant and who asks, or why it is refused.
async fn resolve(
    state: &AppState,
    headers: &HeaderMap,
    path: Option<&PathTenant>,
    access: Access,
) -> Result<(AppState, Caller), ApiError> {
    let Some(PathTenant(slug)) = path else {
        if access != Access::Webhook {
            refuse_tenant_token_on_default(state, headers).await?;
        }
        if access == Access::Write {
            crate::authorize(state, headers)?;
        }
        let admin = state.settings.ingest.auth_tokens.is_empty()
            || matches!(presented(headers, access), Some(Ok(t)) if state.settings.ingest.token_ok(&t));
        let caller = if admin { Caller::Admin } else { Caller::Anonymous };
        return Ok((state.clone(), caller));
    };
    if rig_tenants::check_slug(slug).is_err() {
        return Err(ApiError::UnknownTenant);
    }
    let mut caller = Caller::Anonymous;
    if access != Access::Webhook {
        // Checked before the tenant is looked up: without a valid token, every tenant answers
        // alike, existing or not.
        let token = presented(headers, access).ok_or(ApiError::Unauthorized(
            "missing Authorization: Bearer <token> header (a tenant's routes take its token or an admin token)",
        ))??;
        if state.settings.ingest.token_ok(&token) {
            caller = Caller::Admin;
        } else {
            match state.tenants.tenant_of_token(&token).await? {
                Some(own) if own == *slug => caller = Caller::Tenant,
                Some(_) => return Err(ApiError::UnknownTenant),
                None => {
                    return Err(ApiError::Unauthorized(
                        "the bearer token is neither one of ingest.auth_tokens nor a tenant token",
                    ))
                }
            }
        }
    }
    let entry = state.tenants.enabled(slug).ok_or(ApiError::UnknownTenant)?;
    Ok((state.tenants.scope(state, &entry)?, caller))
}

async fn scope(state: AppState, mut req: Request, next: Next, access: Access) -> Response {
    let path = req.extensions().get::<PathTenant>().cloned();
    match resolve(&state, req.headers(), path.as_ref(), access).await {
        Ok((scoped, caller)) => {
            req.extensions_mut().insert(ScopedState(scoped));
            req.extensions_mut().insert(caller);
            next.run(req).await
        }
        Err(e) => e.into_response(),
    }
}

/// The dashboard's [`scope_read`]: a browser without a token for a tenant is shown the form that
/// takes one (its `POST` is the login, which checks the token itself).
pub async fn scope_dashboard(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    if req.method() == axum::http::Method::POST {
        return next.run(req).await;
    }
    let path = req.extensions().get::<PathTenant>().cloned();
    match resolve(&state, req.headers(), path.as_ref(), Access::Read).await {
        Ok((scoped, caller)) => {
            req.extensions_mut().insert(ScopedState(scoped));
            req.extensions_mut().insert(caller);
            next.run(req).await
        }
        Err(ApiError::Unauthorized(_)) => match &path {
            Some(PathTenant(slug)) => crate::dashboard::login_page(slug, None),
            None => ApiError::Unauthorized("missing token").into_response(),
        },
        Err(e) => e.into_response(),
    }
}

/// The tenant of a read, checked before it runs.
pub async fn scope_read(State(state): State<AppState>, req: Request, next: Next) -> Response {
    scope(state, req, next, Access::Read).await
}

/// The tenant of a write, checked (with the token) before the body is read.
pub async fn scope_write(State(state): State<AppState>, req: Request, next: Next) -> Response {
    scope(state, req, next, Access::Write).await
}

/// The tenant of a GitHub delivery on `/t/{slug}/…` (the unprefixed webhook routes each delivery
/// by its repository, in the handler).
pub async fn scope_webhook(State(state): State<AppState>, req: Request, next: Next) -> Response {
    scope(state, req, next, Access::Webhook).await
}

/// `GET /v1/admin/tenants`: every tenant (`default` first) with its log's size, its last event
/// and each consumer's lag. `events` is the log's last position (the count of events unless
/// rolled-back appends left gaps); a consumer that has no checkpoint yet lags by every event. A
/// tenant whose database cannot be reached is listed with `error` instead.
pub async fn list(State(state): State<AppState>, req: Request) -> Result<Response, ApiError> {
    if req.extensions().get::<PathTenant>().is_some() {
        return Err(ApiError::NotFound(
            "no such route; see the API reference in README.md".into(),
        ));
    }
    let headers = req.headers();
    refuse_tenant_token_on_default(&state, headers).await?;
    // Admin only; open like the other unprefixed routes when ingest has no auth_tokens.
    crate::authorize(&state, headers)?;
    let tenants = rig_tenants::list(&state.pool).await?;
    let rows = tenants.iter().map(|t| {
        let state = &state;
        async move {
            let mut row = json!({
                "tenant": t.slug,
                "enabled": t.enabled,
                "database": t.place(),
            });
            let stats = tokio::time::timeout(STATS_TIMEOUT, stats(state, t)).await;
            let stats = match stats {
                Ok(r) => r,
                Err(_) => Err(format!("its database did not answer within {STATS_TIMEOUT:?}")),
            };
            match stats {
                Ok(Value::Object(fields)) => {
                    if let Some(r) = row.as_object_mut() {
                        r.extend(fields);
                    }
                }
                Ok(_) => {}
                Err(e) => row["error"] = json!(e),
            }
            row
        }
    });
    let rows: Vec<Value> = futures::future::join_all(rows).await;
    Ok(Json(json!({ "tenants": rows })).into_response())
}

/// One tenant's figures, read from its log.
async fn stats(state: &AppState, t: &Tenant) -> Result<Value, String> {
    // `default` and enabled tenants are read through their read pools; a disabled tenant (which
    // has none) through a connection of its own, closed after.
    let (pool, temporary) = if t.is_default() {
        (state.read_pool.clone(), false)
    } else if let Some(entry) = state.tenants.enabled(&t.slug) {
        let log = state.tenants.log(&entry).map_err(|e| format!("{e:#}"))?;
        (log.read_pool.clone(), false)
    } else {
        let opts = t.connect_options(&state.tenants.own).map_err(|e| format!("{e:#}"))?;
        (
            PgPoolOptions::new()
                .max_connections(1)
                .acquire_timeout(STATS_TIMEOUT)
                .connect_lazy_with(opts),
            true,
        )
    };
    let figures = async {
        let consumers = rig_projections::status(&pool).await?;
        let last: Option<chrono::DateTime<chrono::Utc>> =
            sqlx::query_scalar("SELECT recorded_at FROM events ORDER BY position DESC LIMIT 1")
                .fetch_optional(&pool)
                .await?;
        let head: i64 = match consumers.first() {
            Some(c) => c.head,
            None => {
                sqlx::query_scalar("SELECT coalesce(max(position), 0) FROM events")
                    .fetch_one(&pool)
                    .await?
            }
        };
        Ok::<_, sqlx::Error>(json!({
            "events": head,
            "last_event_at": last.map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)),
            "consumers": consumers.iter().map(|c| json!({"consumer": c.consumer, "lag": c.lag})).collect::<Vec<_>>(),
        }))
    }
    .await;
    if temporary {
        pool.close().await;
    }
    figures.map_err(|e| {
        tracing::warn!(tenant = %t.slug, error = %e, "cannot read a tenant's figures");
        if rig_log::db::is_transient(&e) {
            "its database is unreachable".to_owned()
        } else {
            "its database refused the query (see ingest's log)".to_owned()
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenant_paths_split_only_for_tenant_routes() {
        assert_eq!(split_tenant_path("/t/acme/v1/events"), Some(("acme", "/v1/events")));
        assert_eq!(split_tenant_path("/t/acme/api/events"), Some(("acme", "/api/events")));
        assert_eq!(split_tenant_path("/t/acme/dashboard"), Some(("acme", "/dashboard")));
        assert_eq!(
            split_tenant_path("/t/ACME/v1/streams/x"),
            Some(("ACME", "/v1/streams/x"))
        );
        assert_eq!(split_tenant_path("/t//v1/events"), Some(("", "/v1/events")));
        assert_eq!(split_tenant_path("/t/acme/metrics"), None);
        assert_eq!(split_tenant_path("/t/acme"), None);
        assert_eq!(split_tenant_path("/v1/events"), None);
        assert_eq!(split_tenant_path("/tx/acme/v1/events"), None);
    }
}
