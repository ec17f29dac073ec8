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

use crate::api::STATUSES;
use crate::AppState;
use axum::extract::{Query, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use chrono::{DateTime, Duration as ChronoDuration, NaiveDate, Utc};
use rig_consumer::ConsumerStatus;
use rig_events::StreamId;
use rig_events::{StoredEvent, EVENT_COLUMNS};
use rust_decimal::prelude::ToPrimitive;
use rust_decimal::{Decimal, RoundingStrategy};
use serde::Deserialize;
use sqlx::PgPool;
use std::collections::{BTreeMap, HashMap};
use std::fmt::Write;

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

const PALETTE: [&str; COST_SERIES] = [
    "#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#ff9da7",
];
const OTHER_COLOR: &str = "#9c9c9c";

/// Scripts are refused outright: the page needs none, and it shows untrusted strings.
const CSP: &str =
    "default-src 'none'; style-src 'unsafe-inline'; img-src data:; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

#[derive(Debug, Default, Deserialize)]
pub struct DashboardQuery {
    issue: Option<String>,
    cost_by: Option<String>,
    status: Option<String>,
    refresh: Option<String>,
}

/// The query string, validated; links on the page keep every setting but the one they change.
#[derive(Debug, Clone, Default)]
struct Params {
    issue: Option<String>,
    by_repo: bool,
    status: Option<String>,
    refresh: u32,
    notices: Vec<String>,
}

impl Params {
    fn from_query(q: DashboardQuery) -> Params {
        let mut p = Params {
            refresh: DEFAULT_REFRESH_SECS,
            ..Params::default()
        };
        // Canonical when valid, so links carry `acme/widgets#3` however it was typed; kept as
        // typed otherwise, for the timeline to say what is wrong with it.
        p.issue = q
            .issue
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
            .map(|s| StreamId::parse(&s).map(|id| id.to_string()).unwrap_or(s));
        match q.cost_by.as_deref() {
            None | Some("") | Some("agent") => {}
            Some("repo") => p.by_repo = true,
            Some(other) => p
                .notices
                .push(format!("cost_by={other:?} is not `agent` or `repo`; showing by agent")),
        }
        match q.status.as_deref() {
            None | Some("") => {}
            Some(s) if STATUSES.contains(&s) => p.status = Some(s.to_owned()),
            Some(s) => p.notices.push(format!(
                "status={s:?} is not one of {}; showing all",
                STATUSES.join(", ")
            )),
        }
        match q.refresh.as_deref() {
            None | Some("") => {}
            Some(r) => match r.parse::<u32>() {
                Ok(0) => p.refresh = 0,
                Ok(n) => p.refresh = n.clamp(2, 3600),
                Err(_) => p.notices.push(format!(
                    "refresh={r:?} is not a number of seconds; using {DEFAULT_REFRESH_SECS}"
                )),
            },
        }
        p
    }

    fn href(&self) -> String {
        let mut parts = Vec::new();
        if let Some(i) = &self.issue {
            parts.push(format!("issue={}", url_enc(i)));
        }
        if self.by_repo {
            parts.push("cost_by=repo".to_owned());
        }
        if let Some(s) = &self.status {
            parts.push(format!("status={}", url_enc(s)));
        }
        if self.refresh != DEFAULT_REFRESH_SECS {
            parts.push(format!("refresh={}", self.refresh));
        }
        if parts.is_empty() {
            "/dashboard".to_owned()
        } else {
            format!("/dashboard?{}", parts.join("&"))
        }
    }

    fn with_issue(&self, issue: Option<&str>) -> String {
        Params {
            issue: issue.map(str::to_owned),
            ..self.clone()
        }
        .href()
    }
    fn with_status(&self, status: Option<&str>) -> String {
        Params {
            status: status.map(str::to_owned),
            ..self.clone()
        }
        .href()
    }
    fn with_by_repo(&self, by_repo: bool) -> String {
        Params {
            by_repo,
            ..self.clone()
        }
        .href()
    }
    fn with_refresh(&self, refresh: u32) -> String {
        Params {
            refresh,
            ..self.clone()
        }
        .href()
    }
}

/// `GET /` → the dashboard.
pub async fn root() -> Redirect {
    Redirect::to("/dashboard")
}

/// `GET /dashboard`
pub async fn page(State(state): State<AppState>, Query(q): Query<DashboardQuery>) -> Response {
    let params = Params::from_query(q);
    let threshold = state.settings.stale_heartbeat.threshold;
    match load(&state.read_pool, &params).await {
        Ok(data) if sums_fit(&data) => html_response(StatusCode::OK, render(&params, &data, threshold)),
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
            html_response(StatusCode::SERVICE_UNAVAILABLE, render_unavailable(&params))
        }
    }
}

/// Whether every sum the page makes of the cost rows fits a decimal: the sum of their sizes
/// bounds every partial sum (per series, per day, in total), so rendering cannot overflow.
fn sums_fit(d: &Data) -> bool {
    rig_events::money::checked_sum(d.costs.iter().map(|r| r.cost_usd.abs())).is_some()
}

fn html_response(status: StatusCode, body: String) -> Response {
    let mut resp = (status, body).into_response();
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

// ---------------------------------------------------------------------------------------------
// Data

#[derive(Debug, sqlx::FromRow)]
struct IssueRow {
    stream_id: String,
    title: Option<String>,
    status: Option<String>,
    agent_id: Option<String>,
    version: i32,
    stuck_count: i32,
    last_ci: Option<String>,
    pr_number: Option<i64>,
    updated_at: DateTime<Utc>,
}

#[derive(Debug, sqlx::FromRow)]
struct AgentRow {
    agent_id: String,
    last_heartbeat_at: Option<DateTime<Utc>>,
    current_stream_id: Option<String>,
    status: Option<String>,
    /// Seconds since the last heartbeat by the database's clock, the clock that stamped it.
    age_seconds: Option<f64>,
}

#[derive(Debug, sqlx::FromRow)]
struct CostRow {
    day: NaiveDate,
    key: String,
    /// Money is read as text (`::text`), so a sum too large for a decimal is an error, not a panic.
    #[sqlx(try_from = "rig_events::money::NumericText")]
    cost_usd: Decimal,
}

#[derive(Debug, sqlx::FromRow)]
struct TokenRow {
    stream_id: String,
    agents: String,
    models: String,
    input_tokens: i64,
    output_tokens: i64,
    cache_read_tokens: i64,
    cache_write_tokens: i64,
    #[sqlx(try_from = "rig_events::money::NumericText")]
    cost_usd: Decimal,
    events: i64,
}

#[derive(Debug)]
enum Timeline {
    NotChosen,
    Invalid(String),
    Loaded {
        stream_id: String,
        state: Option<IssueRow>,
        events: Vec<StoredEvent>,
        total: i64,
    },
}

struct Data {
    now: DateTime<Utc>,
    counts: Vec<(Option<String>, i64)>,
    issues: Vec<IssueRow>,
    timeline: Timeline,
    agents: Vec<AgentRow>,
    costs: Vec<CostRow>,
    tokens: Vec<TokenRow>,
    consumers: Vec<ConsumerStatus>,
}

async fn load(pool: &PgPool, p: &Params) -> Result<Data, sqlx::Error> {
    let now = sqlx::query_scalar::<_, DateTime<Utc>>("SELECT now()").fetch_one(pool);
    let counts = sqlx::query_as::<_, (Option<String>, i64)>(
        "SELECT status, count(*) FROM issue_state GROUP BY status ORDER BY status",
    )
    .fetch_all(pool);
    let issues = sqlx::query_as::<_, IssueRow>(
        "SELECT stream_id, title, status, agent_id, version, stuck_count, last_ci, pr_number, updated_at \
         FROM issue_state WHERE ($1::text IS NULL OR status = $1) ORDER BY updated_at DESC, stream_id LIMIT $2",
    )
    .bind(&p.status)
    .bind(ISSUE_LIMIT)
    .fetch_all(pool);
    let agents = sqlx::query_as::<_, AgentRow>(
        "SELECT agent_id, last_heartbeat_at, current_stream_id, status, \
                extract(epoch FROM now() - last_heartbeat_at)::float8 AS age_seconds \
         FROM agent_status ORDER BY agent_id LIMIT $1",
    )
    .bind(AGENT_LIMIT)
    .fetch_all(pool);
    let cost_key = if p.by_repo { "repo" } else { "agent_id" };
    let cost_sql = format!(
        "SELECT day, {cost_key} AS key, sum(cost_usd)::text AS cost_usd FROM daily_cost \
         WHERE day > (now() AT TIME ZONE 'UTC')::date - $1::int AND day <= (now() AT TIME ZONE 'UTC')::date \
         GROUP BY 1, 2 ORDER BY 1, 2 LIMIT 5000"
    );
    let costs = sqlx::query_as::<_, CostRow>(&cost_sql)
        .bind(COST_DAYS as i32)
        .fetch_all(pool);
    // Agent streams carry usage too, but it belongs to no issue; the cost chart includes it.
    let tokens = sqlx::query_as::<_, TokenRow>(
        "SELECT stream_id, string_agg(DISTINCT agent_id, ', ') AS agents, string_agg(DISTINCT model, ', ') AS models, \
                sum(input_tokens)::bigint AS input_tokens, sum(output_tokens)::bigint AS output_tokens, \
                sum(cache_read_tokens)::bigint AS cache_read_tokens, sum(cache_write_tokens)::bigint AS cache_write_tokens, \
                sum(cost_usd)::text AS cost_usd, sum(events)::bigint AS events \
         FROM token_usage WHERE stream_id NOT LIKE 'agent:%' \
         GROUP BY stream_id ORDER BY sum(cost_usd) DESC, sum(input_tokens + output_tokens) DESC, stream_id LIMIT $1",
    )
    .bind(TOKEN_LIMIT)
    .fetch_all(pool);
    let consumers = rig_projections::status(pool);
    let timeline = load_timeline(pool, p.issue.as_deref());
    let (now, counts, issues, agents, costs, tokens, consumers, timeline) =
        tokio::try_join!(now, counts, issues, agents, costs, tokens, consumers, timeline)?;
    Ok(Data {
        now,
        counts,
        issues,
        timeline,
        agents,
        costs,
        tokens,
        consumers,
    })
}

async fn load_timeline(pool: &PgPool, issue: Option<&str>) -> Result<Timeline, sqlx::Error> {
    let Some(raw) = issue else {
        return Ok(Timeline::NotChosen);
    };
    let sid = match StreamId::parse(raw) {
        Ok(s) => s.to_string(),
        Err(e) => return Ok(Timeline::Invalid(e.to_string())),
    };
    let state = sqlx::query_as::<_, IssueRow>(
        "SELECT stream_id, title, status, agent_id, version, stuck_count, last_ci, pr_number, updated_at \
         FROM issue_state WHERE stream_id = $1",
    )
    .bind(&sid)
    .fetch_optional(pool);
    let events_sql = format!("SELECT {EVENT_COLUMNS} FROM events WHERE stream_id = $1 ORDER BY version DESC LIMIT $2");
    let events = sqlx::query_as::<_, StoredEvent>(&events_sql)
        .bind(&sid)
        .bind(TIMELINE_LIMIT)
        .fetch_all(pool);
    let total = sqlx::query_scalar::<_, Option<i32>>("SELECT max(version) FROM events WHERE stream_id = $1")
        .bind(&sid)
        .fetch_one(pool);
    let (state, mut events, total) = tokio::try_join!(state, events, total)?;
    events.reverse();
    Ok(Timeline::Loaded {
        stream_id: sid,
        state,
        events,
        total: i64::from(total.unwrap_or(0)),
    })
}

// ---------------------------------------------------------------------------------------------
// Rendering. Writing into a String cannot fail, so the `fmt::Result`s are plumbing only.

fn render(p: &Params, d: &Data, threshold: std::time::Duration) -> String {
    let mut out = String::with_capacity(64 * 1024);
    let _ = render_into(&mut out, p, d, threshold);
    out
}

fn render_into(out: &mut String, p: &Params, d: &Data, threshold: std::time::Duration) -> std::fmt::Result {
    head(out, p, "rig-conductor dashboard")?;
    write!(
        out,
        "<header><h1>rig-conductor</h1><p class=\"meta\">Generated {} · ",
        esc(&fmt_time(d.now))
    )?;
    if p.refresh == 0 {
        write!(
            out,
            "auto-refresh off (<a href=\"{}\">turn on</a>)",
            esc(&p.with_refresh(DEFAULT_REFRESH_SECS))
        )?;
    } else {
        write!(
            out,
            "refreshes every {} s (<a href=\"{}\">pause</a>)",
            p.refresh,
            esc(&p.with_refresh(0))
        )?;
    }
    out.push_str(
        "</p><nav><a href=\"#issues\">Issues</a> <a href=\"#timeline\">Timeline</a> <a href=\"#agents\">Agents</a> \
         <a href=\"#costs\">Cost per day</a> <a href=\"#tokens\">Tokens per issue</a> <a href=\"#consumers\">Consumers</a></nav></header>\n",
    );
    for n in &p.notices {
        write!(out, "<p class=\"notice\">{}</p>", esc(n))?;
    }
    issues_section(out, p, d)?;
    timeline_section(out, p, d)?;
    agents_section(out, p, d, threshold)?;
    costs_section(out, p, d)?;
    tokens_section(out, p, d)?;
    consumers_section(out, d)?;
    out.push_str("</body></html>\n");
    Ok(())
}

fn render_unavailable(p: &Params) -> String {
    let mut out = String::new();
    let _ = head(&mut out, p, "rig-conductor dashboard: database unavailable");
    out.push_str(
        "<header><h1>rig-conductor</h1></header><p class=\"notice\">The database is unavailable; \
         this page retries by itself.</p></body></html>\n",
    );
    out
}

fn head(out: &mut String, p: &Params, title: &str) -> std::fmt::Result {
    out.push_str("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">");
    out.push_str("<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">");
    if p.refresh > 0 {
        // Meta refresh reloads the current URL, query string included, so the view is kept.
        write!(out, "<meta http-equiv=\"refresh\" content=\"{}\">", p.refresh)?;
    }
    writeln!(out, "<title>{}</title><style>{STYLE}</style></head><body>", esc(title))
}

const STYLE: &str = "\
body{font:14px/1.4 system-ui,-apple-system,'Segoe UI',sans-serif;margin:0 auto;max-width:1180px;padding:0 16px 40px;color:#1f2328;background:#f6f8fa}\
header{display:flex;flex-wrap:wrap;align-items:baseline;gap:4px 16px;border-bottom:1px solid #d0d7de;margin-bottom:8px}\
h1{font-size:20px;margin:12px 0 6px}h2{font-size:16px;margin:0 0 8px}\
nav a{margin-right:10px}.meta,.sub{color:#656d76;font-size:12px}\
section{background:#fff;border:1px solid #d0d7de;border-radius:6px;padding:12px 14px;margin:12px 0}\
table{border-collapse:collapse;width:100%}th,td{text-align:left;padding:3px 8px;border-bottom:1px solid #eaeef2;vertical-align:top}\
th{font-weight:600;color:#424a53;background:#f6f8fa}td.num,th.num{text-align:right;font-variant-numeric:tabular-nums}\
a{color:#0969da;text-decoration:none}a:hover{text-decoration:underline}\
.cards{display:flex;flex-wrap:wrap;gap:8px;margin-bottom:10px}\
.card{display:block;border:1px solid #d0d7de;border-radius:6px;padding:6px 12px;min-width:84px;color:inherit}\
.card b{display:block;font-size:20px}.card.on{outline:2px solid #0969da}\
.status{display:inline-block;padding:0 6px;border-radius:10px;font-size:12px;background:#eaeef2}\
.status-approved{background:#ddf4ff}.status-assigned{background:#fff8c5}.status-in_progress{background:#ffe2b3}\
.status-in_review{background:#fbefff}.status-merged{background:#d8f3dc}.status-done{background:#c8e6c9}\
tr.stale td{background:#ffebe9}.badge{display:inline-block;padding:0 6px;border-radius:4px;font-size:11px;font-weight:600}\
.badge.stale{background:#cf222e;color:#fff}.badge.ok{background:#1a7f37;color:#fff}.badge.warn{background:#bf8700;color:#fff}\
.badge.off{background:#8c959f;color:#fff}.notice{background:#fff8c5;border:1px solid #d4a72c;padding:6px 10px;border-radius:6px}\
.err{color:#cf222e}code,.mono{font-family:ui-monospace,SFMono-Regular,Menlo,monospace;font-size:12px}\
.data{max-width:520px;overflow-wrap:anywhere}.legend{display:flex;flex-wrap:wrap;gap:4px 14px;font-size:12px;margin:6px 0}\
.sw{display:inline-block;width:10px;height:10px;margin-right:4px;vertical-align:middle}\
svg.chart{width:100%;height:auto;max-width:900px}svg text{font:11px system-ui,sans-serif;fill:#424a53}\
form{display:inline}input[type=text]{width:260px}\
";

fn issues_section(out: &mut String, p: &Params, d: &Data) -> std::fmt::Result {
    let total: i64 = d.counts.iter().map(|c| c.1).sum();
    out.push_str("<section id=\"issues\"><h2>Issues by status</h2><div class=\"cards\">");
    write!(
        out,
        "<a class=\"card{}\" href=\"{}\">all<b>{total}</b></a>",
        if p.status.is_none() { " on" } else { "" },
        esc(&p.with_status(None))
    )?;
    for s in STATUSES {
        let n = d.counts.iter().find(|c| c.0.as_deref() == Some(*s)).map_or(0, |c| c.1);
        write!(
            out,
            "<a class=\"card status-{s}{}\" data-status=\"{s}\" href=\"{}\">{}<b>{n}</b></a>",
            if p.status.as_deref() == Some(*s) { " on" } else { "" },
            esc(&p.with_status(Some(s))),
            s.replace('_', " ")
        )?;
    }
    // Streams with events but no status-setting event yet (only heartbeats, say).
    let none: i64 = d
        .counts
        .iter()
        .filter(|c| c.0.as_deref().is_none_or(|s| !STATUSES.contains(&s)))
        .map(|c| c.1)
        .sum();
    if none > 0 {
        write!(out, "<span class=\"card\">no status<b>{none}</b></span>")?;
    }
    out.push_str("</div>");
    let shown = d.issues.len();
    let of = match &p.status {
        Some(s) => d
            .counts
            .iter()
            .find(|c| c.0.as_deref() == Some(s.as_str()))
            .map_or(0, |c| c.1),
        None => total,
    };
    write!(
        out,
        "<p class=\"sub\">{} · showing {shown} of {of}, most recently updated first{}</p>",
        match &p.status {
            Some(s) => format!("status {}", esc(s)),
            None => "all statuses".to_owned(),
        },
        if (shown as i64) < of {
            format!(" (at most {ISSUE_LIMIT})")
        } else {
            String::new()
        }
    )?;
    if d.issues.is_empty() {
        out.push_str("<p>No issues yet.</p></section>\n");
        return Ok(());
    }
    out.push_str(
        "<table class=\"issues\"><thead><tr><th>Issue</th><th>Title</th><th>Status</th><th>Agent</th><th class=\"num\">Version</th>\
         <th class=\"num\">Stuck</th><th>CI</th><th>PR</th><th>Updated</th></tr></thead><tbody>",
    );
    for i in &d.issues {
        write!(
            out,
            "<tr data-stream=\"{sid}\"><td><a class=\"mono\" href=\"{href}#timeline\">{sid}</a></td><td>{title}</td><td>{status}</td>\
             <td class=\"mono\">{agent}</td><td class=\"num\">{v}</td><td class=\"num\">{stuck}</td><td>{ci}</td><td>{pr}</td>\
             <td title=\"{upd}\">{ago} ago</td></tr>",
            sid = esc(&i.stream_id),
            href = esc(&p.with_issue(Some(&i.stream_id))),
            title = esc(&truncate(i.title.as_deref().unwrap_or(""), TITLE_CHARS)),
            status = status_chip(i.status.as_deref()),
            agent = esc(&truncate(i.agent_id.as_deref().unwrap_or(""), ID_CHARS)),
            v = i.version,
            stuck = i.stuck_count,
            ci = ci_badge(i.last_ci.as_deref()),
            pr = i.pr_number.map(|n| format!("#{n}")).unwrap_or_default(),
            upd = esc(&fmt_time(i.updated_at)),
            ago = esc(&fmt_age((d.now - i.updated_at).num_seconds() as f64)),
        )?;
    }
    out.push_str("</tbody></table></section>\n");
    Ok(())
}

fn timeline_section(out: &mut String, p: &Params, d: &Data) -> std::fmt::Result {
    out.push_str("<section id=\"timeline\"><h2>Timeline</h2>");
    write!(
        out,
        "<form method=\"get\" action=\"/dashboard\"><input type=\"text\" name=\"issue\" placeholder=\"owner/repo#42 or agent:id\" value=\"{}\">",
        esc(p.issue.as_deref().unwrap_or(""))
    )?;
    if p.by_repo {
        out.push_str("<input type=\"hidden\" name=\"cost_by\" value=\"repo\">");
    }
    if p.refresh != DEFAULT_REFRESH_SECS {
        write!(out, "<input type=\"hidden\" name=\"refresh\" value=\"{}\">", p.refresh)?;
    }
    out.push_str(" <button type=\"submit\">Show</button></form>");
    match &d.timeline {
        Timeline::NotChosen => {
            out.push_str("<p class=\"sub\">Pick an issue in the table above (or type a stream id) to see what happened to it, and when.</p>");
        }
        Timeline::Invalid(e) => write!(out, "<p class=\"err\">{}</p>", esc(e))?,
        Timeline::Loaded { stream_id, events, .. } if events.is_empty() => {
            write!(
                out,
                "<p>No events for <span class=\"mono\">{}</span>.</p>",
                esc(stream_id)
            )?;
        }
        Timeline::Loaded {
            stream_id,
            state,
            events,
            total,
        } => {
            write!(out, "<h3><span class=\"mono\">{}</span>", esc(stream_id))?;
            if let Some(s) = state {
                write!(
                    out,
                    " {} {}</h3><p class=\"sub\">{}{}version {} · stuck {} time(s)</p>",
                    status_chip(s.status.as_deref()),
                    esc(&truncate(s.title.as_deref().unwrap_or(""), TITLE_CHARS)),
                    s.agent_id
                        .as_deref()
                        .map(|a| format!("held by <span class=\"mono\">{}</span> · ", esc(&truncate(a, ID_CHARS))))
                        .unwrap_or_default(),
                    s.last_ci
                        .as_deref()
                        .map(|c| format!("last CI {} · ", ci_badge(Some(c))))
                        .unwrap_or_default(),
                    s.version,
                    s.stuck_count,
                )?;
            } else {
                out.push_str("</h3>");
            }
            if (events.len() as i64) < *total {
                write!(
                    out,
                    "<p class=\"sub\">The latest {} of {total} events.</p>",
                    events.len()
                )?;
            }
            let first = events.first().map(|e| e.recorded_at);
            out.push_str(
                "<table class=\"timeline\"><thead><tr><th class=\"num\">v</th><th>Recorded (UTC)</th><th>+since first</th>\
                 <th>Event</th><th>Data</th></tr></thead><tbody>",
            );
            for e in events {
                let since = first
                    .map(|f| fmt_age((e.recorded_at - f).num_milliseconds() as f64 / 1000.0))
                    .unwrap_or_default();
                write!(
                    out,
                    "<tr data-version=\"{}\"><td class=\"num\">{}</td><td title=\"position {}{}\">{}</td><td>+{}</td>\
                     <td class=\"mono event-type\">{}</td><td class=\"mono data\">{}</td></tr>",
                    e.version,
                    e.version,
                    e.position,
                    e.occurred_at
                        .map(|t| format!(", occurred {}", esc(&fmt_time(t))))
                        .unwrap_or_default(),
                    esc(&fmt_time(e.recorded_at)),
                    esc(&since),
                    esc(&e.event_type),
                    esc(&truncate(&compact_json(&e.data), 300)),
                )?;
            }
            out.push_str("</tbody></table>");
        }
    }
    out.push_str("</section>\n");
    Ok(())
}

fn agents_section(out: &mut String, p: &Params, d: &Data, threshold: std::time::Duration) -> std::fmt::Result {
    let limit = threshold.as_secs_f64();
    let stale_count = d.agents.iter().filter(|a| is_stale(a, limit)).count();
    write!(
        out,
        "<section id=\"agents\"><h2>Agents</h2><p class=\"sub\">{} agent(s), {stale_count} stale (no heartbeat for more than {}, \
         <code>stale_heartbeat.threshold</code>)</p>",
        d.agents.len(),
        esc(&fmt_age(limit))
    )?;
    if d.agents.is_empty() {
        out.push_str("<p>No agents yet.</p></section>\n");
        return Ok(());
    }
    out.push_str(
        "<table class=\"agents\"><thead><tr><th>Agent</th><th>Last heartbeat</th><th></th><th>Status</th><th>Current issue</th></tr></thead><tbody>",
    );
    for a in &d.agents {
        let stale = is_stale(a, limit);
        let beat = match (a.last_heartbeat_at, a.age_seconds) {
            (Some(t), Some(age)) => format!(
                "<span title=\"{}\">{} ago</span>",
                esc(&fmt_time(t)),
                esc(&fmt_age(age))
            ),
            _ => "never".to_owned(),
        };
        let current = match &a.current_stream_id {
            Some(s) => format!(
                "<a class=\"mono\" href=\"{}#timeline\">{}</a>",
                esc(&p.with_issue(Some(s))),
                esc(s)
            ),
            None => String::new(),
        };
        write!(
            out,
            "<tr class=\"{}\" data-agent=\"{}\"><td class=\"mono\">{}</td><td>{beat}</td><td>{}</td><td>{}</td><td>{current}</td></tr>",
            if stale { "stale" } else { "fresh" },
            esc(&truncate(&a.agent_id, ID_CHARS)),
            esc(&truncate(&a.agent_id, ID_CHARS)),
            if stale { "<span class=\"badge stale\">STALE</span>" } else { "<span class=\"badge ok\">ok</span>" },
            esc(a.status.as_deref().unwrap_or("")),
        )?;
    }
    out.push_str("</tbody></table></section>\n");
    Ok(())
}

/// An agent with no heartbeat at all has shown no sign of life either.
fn is_stale(a: &AgentRow, limit_secs: f64) -> bool {
    a.age_seconds.is_none_or(|age| age > limit_secs)
}

fn costs_section(out: &mut String, p: &Params, d: &Data) -> std::fmt::Result {
    let today = d.now.date_naive();
    let days: Vec<NaiveDate> = (0..COST_DAYS).rev().map(|i| today - ChronoDuration::days(i)).collect();
    write!(
        out,
        "<section id=\"costs\"><h2>Cost per day</h2><p class=\"sub\">Last {COST_DAYS} UTC days, stacked by {} · \
         <a href=\"{}#costs\"{}>by agent</a> | <a href=\"{}#costs\"{}>by repo</a></p>",
        if p.by_repo { "repo" } else { "agent" },
        esc(&p.with_by_repo(false)),
        if p.by_repo { "" } else { " class=\"on\"" },
        esc(&p.with_by_repo(true)),
        if p.by_repo { " class=\"on\"" } else { "" },
    )?;
    let label = |k: &str| -> String {
        if k.is_empty() {
            if p.by_repo {
                "(agent streams)".to_owned()
            } else {
                "(none)".to_owned()
            }
        } else {
            truncate(k, ID_CHARS)
        }
    };

    // The biggest series keep their own colour; the rest are summed into "other".
    let mut totals: HashMap<&str, Decimal> = HashMap::new();
    for r in &d.costs {
        *totals.entry(r.key.as_str()).or_default() += r.cost_usd;
    }
    let mut keys: Vec<(&str, Decimal)> = totals.into_iter().collect();
    keys.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    let has_other = keys.len() > COST_SERIES;
    let named: Vec<&str> = keys.iter().take(COST_SERIES).map(|k| k.0).collect();
    let series_of = |k: &str| named.iter().position(|n| *n == k);

    // (day index, series index or None for "other") → amount
    let mut cells: BTreeMap<(usize, usize), Decimal> = BTreeMap::new();
    for r in &d.costs {
        let Some(di) = days.iter().position(|x| *x == r.day) else {
            continue;
        };
        let si = series_of(&r.key).unwrap_or(COST_SERIES);
        *cells.entry((di, si)).or_default() += r.cost_usd;
    }
    let day_totals: Vec<Decimal> = (0..days.len())
        .map(|di| cells.iter().filter(|((d, _), _)| *d == di).map(|(_, v)| *v).sum())
        .collect();
    let grand: Decimal = day_totals.iter().copied().sum();
    let max = day_totals
        .iter()
        .copied()
        .max()
        .unwrap_or_default()
        .to_f64()
        .unwrap_or(0.0);

    let (w, h) = (900.0_f64, 280.0_f64);
    let (left, right, top, bottom) = (70.0, 10.0, 22.0, 44.0);
    let plot_w = w - left - right;
    let plot_h = h - top - bottom;
    let step = nice_step(if max > 0.0 { max } else { 1.0 });
    let y_max = (if max > 0.0 { max } else { 1.0 } / step).ceil() * step;
    let y = |v: f64| top + plot_h - v / y_max * plot_h;
    let slot = plot_w / days.len() as f64;
    let bar_w = slot * 0.68;

    write!(
        out,
        "<svg class=\"chart\" viewBox=\"0 0 {w} {h}\" role=\"img\" aria-label=\"Cost per day in USD, last {COST_DAYS} days\">"
    )?;
    let decimals = tick_decimals(step);
    let mut tick = 0.0;
    while tick <= y_max + step / 2.0 {
        let ty = y(tick);
        write!(
            out,
            "<line x1=\"{left}\" x2=\"{}\" y1=\"{ty:.1}\" y2=\"{ty:.1}\" stroke=\"{}\" stroke-width=\"1\"/>\
             <text class=\"y-label\" x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">${tick:.decimals$}</text>",
            w - right,
            if tick == 0.0 { "#8c959f" } else { "#eaeef2" },
            left - 6.0,
            ty + 4.0,
        )?;
        tick += step;
    }
    write!(
        out,
        "<text class=\"axis-title\" x=\"14\" y=\"{:.1}\" transform=\"rotate(-90 14 {:.1})\" text-anchor=\"middle\">USD per day</text>\
         <text class=\"axis-title\" x=\"{:.1}\" y=\"{}\" text-anchor=\"middle\">day (UTC)</text>",
        top + plot_h / 2.0,
        top + plot_h / 2.0,
        left + plot_w / 2.0,
        h - 4.0
    )?;
    for (di, day) in days.iter().enumerate() {
        let x = left + slot * di as f64 + (slot - bar_w) / 2.0;
        let mut base = 0.0_f64;
        for si in 0..=COST_SERIES {
            let Some(amount) = cells.get(&(di, si)) else {
                continue;
            };
            let v = amount.to_f64().unwrap_or(0.0);
            // Tiny amounts still get a visible sliver; the tooltip has the exact figure.
            let bh = (v / y_max * plot_h).max(if amount.is_zero() { 0.0 } else { 1.0 });
            let by = y(base) - bh;
            base += v;
            let (name, color) = if si < COST_SERIES {
                (label(named[si]), PALETTE[si])
            } else {
                ("other".to_owned(), OTHER_COLOR)
            };
            write!(
                out,
                "<rect class=\"cost-bar\" x=\"{x:.1}\" y=\"{by:.1}\" width=\"{bar_w:.1}\" height=\"{bh:.1}\" fill=\"{color}\" \
                 data-day=\"{day}\" data-key=\"{}\"><title>{day} · {}: ${} USD</title></rect>",
                esc(&name),
                esc(&name),
                exact(*amount),
            )?;
        }
        let cx = left + slot * di as f64 + slot / 2.0;
        if !day_totals[di].is_zero() {
            write!(
                out,
                "<text class=\"bar-total\" x=\"{cx:.1}\" y=\"{:.1}\" text-anchor=\"middle\">${}</text>",
                y(base) - 4.0,
                money(day_totals[di])
            )?;
        }
        write!(
            out,
            "<text class=\"x-label\" x=\"{cx:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>",
            top + plot_h + 15.0,
            day.format("%m-%d")
        )?;
    }
    if grand.is_zero() {
        write!(
            out,
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">no cost recorded in the last {COST_DAYS} days</text>",
            left + plot_w / 2.0,
            top + plot_h / 2.0
        )?;
    }
    out.push_str("</svg><div class=\"legend\">");
    for (si, k) in named.iter().enumerate() {
        let t = keys.iter().find(|x| x.0 == *k).map(|x| x.1).unwrap_or_default();
        write!(
            out,
            "<span class=\"legend-item\"><span class=\"sw\" style=\"background:{}\"></span>{} ${}</span>",
            PALETTE[si],
            esc(&label(k)),
            money(t)
        )?;
    }
    if has_other {
        let t: Decimal = keys.iter().skip(COST_SERIES).map(|x| x.1).sum();
        write!(
            out,
            "<span class=\"legend-item\"><span class=\"sw\" style=\"background:{OTHER_COLOR}\"></span>other ({}) ${}</span>",
            keys.len() - COST_SERIES,
            money(t)
        )?;
    }
    writeln!(
        out,
        "</div><p class=\"sub\">Total for the {COST_DAYS} days: <b>${}</b> (exact: {} USD)</p></section>",
        money(grand),
        exact(grand)
    )
}

fn tokens_section(out: &mut String, p: &Params, d: &Data) -> std::fmt::Result {
    write!(
        out,
        "<section id=\"tokens\"><h2>Tokens per issue</h2><p class=\"sub\">Top {TOKEN_LIMIT} issues by cost (issue streams only; \
         usage reported on agent streams is in the cost chart)</p>"
    )?;
    if d.tokens.is_empty() {
        out.push_str("<p>No token usage yet.</p></section>\n");
        return Ok(());
    }
    out.push_str(
        "<table class=\"tokens\"><thead><tr><th>Issue</th><th>Agents</th><th>Models</th><th class=\"num\">Input</th>\
         <th class=\"num\">Output</th><th class=\"num\">Cache read</th><th class=\"num\">Cache write</th><th class=\"num\">Events</th>\
         <th class=\"num\">Cost (USD)</th></tr></thead><tbody>",
    );
    for t in &d.tokens {
        write!(
            out,
            "<tr data-stream=\"{sid}\"><td><a class=\"mono\" href=\"{href}#timeline\">{sid}</a></td><td class=\"mono\">{}</td><td class=\"mono\">{}</td>\
             <td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td>\
             <td class=\"num\" title=\"{} USD\">${}</td></tr>",
            esc(&truncate(&t.agents, ID_CHARS)),
            esc(&truncate(&t.models, ID_CHARS)),
            thousands(t.input_tokens),
            thousands(t.output_tokens),
            thousands(t.cache_read_tokens),
            thousands(t.cache_write_tokens),
            thousands(t.events),
            exact(t.cost_usd),
            money(t.cost_usd),
            sid = esc(&t.stream_id),
            href = esc(&p.with_issue(Some(&t.stream_id))),
        )?;
    }
    out.push_str("</tbody></table></section>\n");
    Ok(())
}

fn consumers_section(out: &mut String, d: &Data) -> std::fmt::Result {
    out.push_str(
        "<section id=\"consumers\"><h2>Consumers</h2><p class=\"sub\">Lag is the number of events a consumer has not applied yet; \
         active means an instance holds the consumer's lock.</p>\
         <table class=\"consumers\"><thead><tr><th>Consumer</th><th>Active</th><th class=\"num\">Position</th><th class=\"num\">Head</th>\
         <th class=\"num\">Lag</th><th>State</th><th>Last error</th></tr></thead><tbody>",
    );
    for c in &d.consumers {
        let state = if c.paused {
            "<span class=\"badge stale\">PAUSED</span>"
        } else if c.lag > 0 {
            "<span class=\"badge warn\">behind</span>"
        } else {
            "<span class=\"badge ok\">caught up</span>"
        };
        write!(
            out,
            "<tr data-consumer=\"{name}\"><td class=\"mono\">{name}</td><td>{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td>\
             <td class=\"num lag\">{}</td><td>{state}</td><td class=\"mono data err\">{}</td></tr>",
            if c.active { "<span class=\"badge ok\">yes</span>" } else { "<span class=\"badge off\">no</span>" },
            thousands(c.position),
            thousands(c.head),
            thousands(c.lag),
            esc(&truncate(c.last_error.as_deref().unwrap_or(""), 300)),
            name = esc(&c.consumer),
        )?;
    }
    out.push_str("</tbody></table></section>\n");
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Small formatting helpers.

/// HTML-escapes text for element content and quoted attribute values.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + s.len() / 8);
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Percent-encodes a query-string value (stream ids hold `/`, `#` and `:`).
fn url_enc(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
}

/// Money for reading: 2 to 4 decimals, rounded half away from zero. Display only.
pub fn money(d: Decimal) -> String {
    let mut r = d
        .round_dp_with_strategy(4, RoundingStrategy::MidpointAwayFromZero)
        .normalize();
    if r.scale() < 2 {
        r.rescale(2);
    }
    r.to_string()
}

/// Money exactly as Postgres holds it (trailing zeros dropped).
pub fn exact(d: Decimal) -> String {
    d.normalize().to_string()
}

fn thousands(n: i64) -> String {
    let digits = n.unsigned_abs().to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3 + 1);
    if n < 0 {
        out.push('-');
    }
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn fmt_time(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%SZ").to_string()
}

/// "45s", "12m 5s", "3h 20m", "2d 4h".
fn fmt_age(secs: f64) -> String {
    let s = secs.max(0.0).round() as u64;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m {}s", s / 60, s % 60),
        3600..86400 => format!("{}h {}m", s / 3600, (s % 3600) / 60),
        _ => format!("{}d {}h", s / 86400, (s % 86400) / 3600),
    }
}

fn status_chip(status: Option<&str>) -> String {
    match status {
        Some(s) if STATUSES.contains(&s) => format!("<span class=\"status status-{s}\">{}</span>", s.replace('_', " ")),
        Some(s) => format!("<span class=\"status\">{}</span>", esc(&truncate(s, 40))),
        None => "<span class=\"status\">none</span>".to_owned(),
    }
}

fn ci_badge(ci: Option<&str>) -> String {
    match ci {
        Some("passed") => "<span class=\"badge ok\">passed</span>".to_owned(),
        Some("failed") => "<span class=\"badge stale\">failed</span>".to_owned(),
        Some(other) => esc(&truncate(other, 40)),
        None => String::new(),
    }
}

fn compact_json(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::Object(m) if m.is_empty() => String::new(),
        v => v.to_string(),
    }
}

fn truncate(s: &str, max_chars: usize) -> String {
    match s.char_indices().nth(max_chars) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_owned(),
    }
}

/// A 1-2-2.5-5 step giving about four gridlines up to `max`.
fn nice_step(max: f64) -> f64 {
    let raw = max / 4.0;
    let mag = 10f64.powf(raw.log10().floor());
    let norm = raw / mag;
    let m = if norm <= 1.0 {
        1.0
    } else if norm <= 2.0 {
        2.0
    } else if norm <= 2.5 {
        2.5
    } else if norm <= 5.0 {
        5.0
    } else {
        10.0
    };
    m * mag
}

/// Decimals that show every tick of `step` exactly, at least 2 once cents matter.
fn tick_decimals(step: f64) -> usize {
    let d = (0..=6usize).find(|d| {
        let scaled = step * 10f64.powi(*d as i32);
        (scaled - scaled.round()).abs() < 1e-6
    });
    match d.unwrap_or(6) {
        0 => 0,
        d => d.max(2),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::str::FromStr;

    #[test]
    fn escaping_covers_the_five_html_specials() {
        assert_eq!(
            esc(r#"<script>alert('x' & "y")</script>"#),
            "&lt;script&gt;alert(&#39;x&#39; &amp; &quot;y&quot;)&lt;/script&gt;"
        );
        assert_eq!(esc("plain ümlaut"), "plain ümlaut");
    }

    #[test]
    fn money_shows_two_to_four_decimals_and_exact_keeps_every_digit() {
        let d = |s: &str| Decimal::from_str(s).unwrap();
        assert_eq!(money(d("12")), "12.00");
        assert_eq!(money(d("1.5")), "1.50");
        assert_eq!(money(d("0.123456")), "0.1235");
        assert_eq!(money(d("0.00005")), "0.0001");
        assert_eq!(money(d("3.100")), "3.10");
        assert_eq!(exact(d("0.1234567890123")), "0.1234567890123");
        assert_eq!(exact(d("2.500")), "2.5");
    }

    #[test]
    fn chart_steps_are_round_and_labelled_without_losing_digits() {
        let close = |a: f64, b: f64| (a - b).abs() < 1e-9;
        assert!(close(nice_step(10.0), 2.5));
        assert!(close(nice_step(1.0), 0.25));
        assert!(close(nice_step(37.0), 10.0));
        assert_eq!(tick_decimals(10.0), 0);
        assert_eq!(tick_decimals(2.5), 2);
        assert_eq!(tick_decimals(0.025), 3);
    }

    #[test]
    fn links_keep_the_other_settings_and_encode_stream_ids() {
        let p = Params {
            by_repo: true,
            refresh: 0,
            ..Params::default()
        };
        assert_eq!(
            p.with_issue(Some("acme/w#1")),
            "/dashboard?issue=acme%2Fw%231&cost_by=repo&refresh=0"
        );
        let p = Params {
            refresh: DEFAULT_REFRESH_SECS,
            ..Params::default()
        };
        assert_eq!(p.href(), "/dashboard");
    }

    #[test]
    fn helpers_format_counts_ages_and_long_text() {
        assert_eq!(thousands(1234567), "1,234,567");
        assert_eq!(thousands(-1000), "-1,000");
        assert_eq!(thousands(999), "999");
        assert_eq!(fmt_age(59.4), "59s");
        assert_eq!(fmt_age(7260.0), "2h 1m");
        assert_eq!(truncate("ééé", 2), "éé…");
    }
}
