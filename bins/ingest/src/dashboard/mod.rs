//! The operator's dashboard: one read-only, server-rendered HTML page at `GET /dashboard` with
//! issues by status, the timeline of a chosen issue (`?issue=<stream id>`), agents and their last
//! heartbeat (stale ones marked, by `stale_heartbeat.threshold`), cost per day as an inline SVG
//! stacked bar chart (by agent, or by repo with `?cost_by=repo`), tokens per issue and each
//! consumer's lag.
//!
//! Promises: no JavaScript at all (the page refreshes itself with `<meta http-equiv="refresh">`,
//! and the Content-Security-Policy forbids scripts, so an escaping slip could not run one either);
//! every string that comes from the data is HTML-escaped; money is Postgres `numeric` read as an
//! exact decimal, rounded only for display (the bar tooltips carry the exact amount); a bounded
//! number of queries, each with a LIMIT, run concurrently on the read pool; long strings (titles,
//! ids) are cut for display, so the page's size is bounded whatever the data holds.
//!
//! The markup is written with `maud`: its `html!` templates are Rust, checked when the crate
//! compiles, and escape every spliced value unless it is marked `PreEscaped`, so escaping is the
//! default rather than a call to remember. Askama would do the escaping too, but keeps templates
//! in separate files in a language of its own; here each section is a short Rust function next
//! to the data it shows.
//!
//! How it is organised: `params` reads the query string and makes the page's links; `data` runs
//! the queries; `page` is the frame (head, header, notices); `sections` the tables; `chart` the
//! cost chart; `format` how numbers, times and long strings read.

mod chart;
mod data;
mod format;
mod page;
mod params;
mod sections;

pub use format::{exact, money};
pub use params::DashboardQuery;

use crate::tenants::{Caller, PathTenant, Scoped};
use crate::AppState;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::Extension;
use params::Params;

/// Rows of the issue list (most recently updated first).
const ISSUE_LIMIT: i64 = 100;
/// Events shown in a timeline (the latest ones when a stream is longer).
const TIMELINE_LIMIT: i64 = 200;
const AGENT_LIMIT: i64 = 200;
const TOKEN_LIMIT: i64 = 20;
const COST_DAYS: i64 = 14;
/// Series drawn in the cost chart; the rest are summed as "other" so the legend stays readable.
const COST_SERIES: usize = 8;
const DEFAULT_REFRESH_SECS: u32 = 5;
/// Characters of a title shown; the rest is cut (with "…"), so one huge title cannot make a
/// huge page.
const TITLE_CHARS: usize = 200;
/// Characters of an id (agent, stream, model list) shown as text. Ids are refused at append
/// when longer than 200, so this cuts only what was stored before that rule, or by hand.
const ID_CHARS: usize = 200;

/// Scripts are refused outright: the page needs none, and it shows untrusted strings.
const CSP: &str =
    "default-src 'none'; style-src 'unsafe-inline'; img-src data:; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// `GET /` → the dashboard.
pub async fn root() -> Redirect {
    Redirect::to("/dashboard")
}

/// `GET /dashboard` (and `/t/{tenant}/dashboard`: see `tenants::scope_dashboard` for who may).
pub async fn page(
    Scoped(state): Scoped,
    caller: Option<Extension<Caller>>,
    Query(q): Query<DashboardQuery>,
) -> Response {
    let mut params = Params::from_query(q);
    if !state.is_default_tenant() {
        params.tenant = Some(state.tenant.to_string());
    }
    if caller.is_some_and(|Extension(c)| c == Caller::Admin) {
        let catalog = state.tenants.catalog();
        let mut enabled: Vec<&String> = catalog
            .entries
            .iter()
            .filter(|(_, e)| e.tenant.enabled)
            .map(|(slug, _)| slug)
            .collect();
        // Only worth a picker when there is somewhere else to go.
        if !enabled.is_empty() {
            enabled.sort();
            params
                .picker
                .push((rig_tenants::DEFAULT.to_owned(), "/dashboard".to_owned()));
            params
                .picker
                .extend(enabled.into_iter().map(|s| (s.clone(), format!("/t/{s}/dashboard"))));
        }
    }
    let threshold = state.settings.stale_heartbeat.threshold;
    match data::load(&state.read_pool, &params).await {
        Ok(data) if data.sums_fit() => html_response(StatusCode::OK, page::dashboard(&params, &data, threshold)),
        Ok(_) => crate::error::ApiError::Internal(
            "the dashboard's cost rows add up to more than a decimal holds; the stored sums need repair".into(),
        )
        .into_response(),
        // A stored value that cannot be read is no outage that retrying mends: a logged 500, as
        // the API answers it.
        Err(e @ (sqlx::Error::ColumnDecode { .. } | sqlx::Error::Decode(_))) => {
            crate::error::ApiError::Database(e).into_response()
        }
        Err(e) => {
            // The page says only that the database is unavailable: SQL text stays in the log.
            tracing::warn!(error = %e, "dashboard query failed");
            html_response(StatusCode::SERVICE_UNAVAILABLE, page::unavailable(&params))
        }
    }
}

fn html_response(status: StatusCode, body: maud::Markup) -> Response {
    let mut resp = (status, body.into_string()).into_response();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    resp
}

/// The cookie a browser keeps its dashboard token in: `HttpOnly` (no script reads it: the page
/// runs none anyway), `SameSite=Strict` (another site's page cannot make the browser send it),
/// and taken for reads only (see `tenants::presented`). The token is never in a URL.
pub const TOKEN_COOKIE: &str = "rig_token";
/// How long a browser keeps the token.
const COOKIE_MAX_AGE_SECS: u32 = 12 * 3600;

/// The dashboard token a request's cookie holds.
pub fn cookie_token(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == TOKEN_COOKIE)
        .and_then(|(_, v)| percent_encoding::percent_decode_str(v).decode_utf8().ok())
        .map(|t| t.trim().to_owned())
        .filter(|t| !t.is_empty())
}

/// The sign-in page of a tenant's dashboard (401: the page needs a token).
pub fn login_page(slug: &str, message: Option<&str>) -> Response {
    let p = Params {
        tenant: Some(slug.to_owned()),
        ..Params::default()
    };
    html_response(StatusCode::UNAUTHORIZED, page::login(&p, message))
}

/// The fields of the sign-in form (`application/x-www-form-urlencoded`).
fn form_field(body: &[u8], name: &str) -> Option<String> {
    body.split(|b| *b == b'&').find_map(|pair| {
        let value = pair.strip_prefix(name.as_bytes())?.strip_prefix(b"=")?;
        let spaced: Vec<u8> = value.iter().map(|&b| if b == b'+' { b' ' } else { b }).collect();
        percent_encoding::percent_decode(&spaced)
            .decode_utf8()
            .ok()
            .map(|s| s.trim().to_owned())
    })
}

fn set_cookie(resp: &mut Response, value: &str, max_age: u32, secure: bool) {
    let value = percent_encoding::utf8_percent_encode(value, percent_encoding::NON_ALPHANUMERIC);
    let secure = if secure { "; Secure" } else { "" };
    let cookie = format!("{TOKEN_COOKIE}={value}; Path=/; HttpOnly; SameSite=Strict; Max-Age={max_age}{secure}");
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        resp.headers_mut().append(header::SET_COOKIE, v);
    }
}

/// `POST /t/{tenant}/dashboard` (and `/dashboard`, for an admin token: the tenant picker): takes
/// the token from the form, checks it as the API would, keeps it in the cookie and goes back to
/// the page; `logout=1` forgets it. A token that does not open this dashboard (wrong, another
/// tenant's, or a tenant that does not exist) gets the form again with one message for all.
pub async fn login(
    State(state): State<AppState>,
    path: Option<Extension<PathTenant>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let slug = path.map(|Extension(PathTenant(s))| s);
    let base = match &slug {
        Some(s) => format!("/t/{s}/dashboard"),
        None => "/dashboard".to_owned(),
    };
    // Behind a proxy that ends TLS the cookie is marked to travel over HTTPS only.
    let secure = headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("https"));
    let refuse = |message: &str| match &slug {
        Some(s) => login_page(s, Some(message)),
        None => crate::error::ApiError::Unauthorized("the dashboard's sign-in takes an admin token").into_response(),
    };
    let Ok(body) = body else {
        return refuse("The form could not be read; try again.");
    };
    if form_field(&body, "logout").is_some() {
        let mut resp = Redirect::to(&base).into_response();
        set_cookie(&mut resp, "", 0, secure);
        return resp;
    }
    let Some(token) = form_field(&body, "token").filter(|t| !t.is_empty()) else {
        return refuse("Give a token.");
    };
    let admin = state.settings.ingest.token_ok(&token);
    let opens = match &slug {
        None => admin,
        Some(s) => {
            let own = if admin {
                true
            } else {
                match state.tenants.tenant_of_token(&token).await {
                    Ok(t) => t.as_deref() == Some(s.as_str()),
                    Err(e) => return crate::error::ApiError::Database(e).into_response(),
                }
            };
            own && rig_tenants::check_slug(s).is_ok() && state.tenants.enabled(s).is_some()
        }
    };
    if !opens {
        return refuse("That token does not open this dashboard.");
    }
    let mut resp = Redirect::to(&base).into_response();
    set_cookie(&mut resp, &token, COOKIE_MAX_AGE_SECS, secure);
    resp
}
