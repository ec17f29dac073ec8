//! What the page shows, read from the read models in one round of concurrent queries, each with
//! a LIMIT.

use super::params::Params;
use super::{AGENT_LIMIT, COST_DAYS, ISSUE_LIMIT, TIMELINE_LIMIT, TOKEN_LIMIT};
use chrono::{DateTime, NaiveDate, Utc};
use rig_consumer::ConsumerStatus;
use rig_events::StreamId;
use rig_events::{StoredEvent, EVENT_COLUMNS};
use rust_decimal::Decimal;
use sqlx::PgPool;

/// The columns of an [`IssueRow`], for the issue list and the timeline's heading alike.
const ISSUE_COLUMNS: &str = "stream_id, title, status, agent_id, version, stuck_count, last_ci, pr_number, updated_at";

#[derive(Debug, sqlx::FromRow)]
pub(super) struct IssueRow {
    pub stream_id: String,
    pub title: Option<String>,
    pub status: Option<String>,
    pub agent_id: Option<String>,
    pub version: i32,
    pub stuck_count: i32,
    pub last_ci: Option<String>,
    pub pr_number: Option<i64>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, sqlx::FromRow)]
pub(super) struct AgentRow {
    pub agent_id: String,
    pub last_heartbeat_at: Option<DateTime<Utc>>,
    pub current_stream_id: Option<String>,
    pub status: Option<String>,
    /// Seconds since the last heartbeat by the database's clock, the clock that stamped it.
    pub age_seconds: Option<f64>,
}

impl AgentRow {
    /// An agent with no heartbeat at all has shown no sign of life either.
    pub fn is_stale(&self, limit_secs: f64) -> bool {
        self.age_seconds.is_none_or(|age| age > limit_secs)
    }
}

#[derive(Debug, sqlx::FromRow)]
pub(super) struct CostRow {
    pub day: NaiveDate,
    pub key: String,
    /// Money is read as text (`::text`), so a sum too large for a decimal is an error, not a panic.
    #[sqlx(try_from = "rig_events::money::NumericText")]
    pub cost_usd: Decimal,
}

#[derive(Debug, sqlx::FromRow)]
pub(super) struct TokenRow {
    pub stream_id: String,
    pub agents: String,
    pub models: String,
    pub input_tokens: i64,
    pub output_tokens: i64,
    pub cache_read_tokens: i64,
    pub cache_write_tokens: i64,
    #[sqlx(try_from = "rig_events::money::NumericText")]
    pub cost_usd: Decimal,
    pub events: i64,
}

#[derive(Debug)]
pub(super) enum Timeline {
    NotChosen,
    Invalid(String),
    Loaded {
        stream_id: String,
        state: Option<IssueRow>,
        events: Vec<StoredEvent>,
        total: i64,
    },
}

pub(super) struct Data {
    pub now: DateTime<Utc>,
    pub counts: Vec<(Option<String>, i64)>,
    pub issues: Vec<IssueRow>,
    pub timeline: Timeline,
    pub agents: Vec<AgentRow>,
    pub costs: Vec<CostRow>,
    pub tokens: Vec<TokenRow>,
    pub consumers: Vec<ConsumerStatus>,
}

impl Data {
    /// Whether every sum the page makes of the cost rows fits a decimal: the sum of their sizes
    /// bounds every partial sum (per series, per day, in total), so rendering cannot overflow.
    pub fn sums_fit(&self) -> bool {
        rig_events::money::checked_sum(self.costs.iter().map(|r| r.cost_usd.abs())).is_some()
    }

    /// Issues with `status` (all of them for `None`).
    pub fn count(&self, status: Option<&str>) -> i64 {
        match status {
            Some(s) => self
                .counts
                .iter()
                .find(|c| c.0.as_deref() == Some(s))
                .map_or(0, |c| c.1),
            None => self.counts.iter().map(|c| c.1).sum(),
        }
    }
}

pub(super) async fn load(pool: &PgPool, p: &Params) -> Result<Data, sqlx::Error> {
    let now = sqlx::query_scalar::<_, DateTime<Utc>>("SELECT now()").fetch_one(pool);
    let counts = sqlx::query_as::<_, (Option<String>, i64)>(
        "SELECT status, count(*) FROM issue_state GROUP BY status ORDER BY status",
    )
    .fetch_all(pool);
    let issues_sql = format!(
        "SELECT {ISSUE_COLUMNS} \
         FROM issue_state WHERE ($1::text IS NULL OR status = $1) ORDER BY updated_at DESC, stream_id LIMIT $2"
    );
    let issues = sqlx::query_as::<_, IssueRow>(&issues_sql)
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
    let state_sql = format!("SELECT {ISSUE_COLUMNS} FROM issue_state WHERE stream_id = $1");
    let state = sqlx::query_as::<_, IssueRow>(&state_sql)
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
