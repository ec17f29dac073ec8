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

use crate::tenants::Scoped;
use axum::extract::Query;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
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

/// `GET /dashboard`
pub async fn page(Scoped(state): Scoped, Query(q): Query<DashboardQuery>) -> Response {
    let params = Params::from_query(q);
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
