//! The database side of a batch: one transaction of three round trips, the only SQL that
//! writes `events`.
//!
//! 1. BEGIN and `rig_append_begin` (migrations 0021, 0022) in one simple query: it turns
//!    `synchronous_commit` off for the transaction, takes the append lock, then reads, in a
//!    snapshot taken after the lock was granted, everything the batch is judged against.
//! 2. [`judge`](super::judge::judge), in Rust, decides each request; then one statement
//!    (`write.sql`) inserts the accepted events, upserts `issue_state` and `agent_status`, and
//!    queues the NOTIFY that wakes the consumers.
//! 3. COMMIT, which releases the lock without waiting for its fsync; `flusher.rs` waits for
//!    it before anyone is answered.

use super::judge::{judge, AgentRow, Answer, Lookup, Row};
use super::queue::Job;
use super::Append;
use crate::db::{APPEND_LOCK_KEY, EVENTS_CHANNEL};
use chrono::{DateTime, Utc};
use rig_events::fold::IssueState;
use rig_events::StreamId;
use serde_json::Value;
use sqlx::pool::PoolConnection;
use sqlx::types::Json;
use sqlx::{PgConnection, PgPool, Postgres};
use std::collections::HashMap;
use std::time::Duration;
use uuid::Uuid;

/// What a committed (or rolled back) batch answers: one answer per job, in order (`None`: the
/// job is carried to the next batch), and whether the answers need a WAL flush before they
/// are sent.
pub(super) struct Decided {
    pub answers: Vec<Answer>,
    pub needs_flush: bool,
}

/// Runs one batch's transaction. An error leaves the transaction open or the connection
/// broken: the caller rolls back or drops the connection.
pub(super) async fn commit(conn: &mut PgConnection, batch: &[Job]) -> Result<Decided, sqlx::Error> {
    let appends: Vec<&Append> = batch.iter().map(|j| &j.append).collect();
    let sids: Vec<String> = appends.iter().map(|a| a.stream.to_string()).collect();
    let client_ids: Vec<Uuid> = appends
        .iter()
        .flat_map(|a| a.events.iter().filter(|e| e.id_from_client).map(|e| e.event_id))
        .collect();
    let mut stream_names: Vec<&str> = sids.iter().map(String::as_str).collect();
    stream_names.sort_unstable();
    stream_names.dedup();
    let agents = named_agents(&appends);

    let lookup = begin(conn, &client_ids, &stream_names, &agents).await?;
    let judged = judge(&appends, &sids, lookup);

    if judged.rows.is_empty() {
        // "Already stored" may rest on another batch's commit that is not durable yet.
        let needs_flush = judged.answers_already_stored();
        sqlx::Executor::execute(&mut *conn, "ROLLBACK").await?;
        return Ok(Decided {
            answers: judged.answers(&[], &sids),
            needs_flush,
        });
    }

    let positions = write(
        conn,
        &appends,
        &sids,
        &judged.rows,
        &judged.issues,
        &judged.agents,
        judged.now,
    )
    .await?;
    // `synchronous_commit` is off for this transaction: the commit releases the append lock
    // without waiting for its fsync, and the flusher waits for it before anyone is answered.
    sqlx::Executor::execute(&mut *conn, "COMMIT").await?;
    Ok(Decided {
        answers: judged.answers(&positions, &sids),
        needs_flush: true,
    })
}

/// The agents a batch may touch, named by the batch itself: agent streams and `agent_id`s in
/// event data. (The current holders of its issues are added by `rig_append_begin`.)
fn named_agents(batch: &[&Append]) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    for a in batch {
        if let StreamId::Agent(name) = &a.stream {
            names.push(name.clone());
        }
        for e in &a.events {
            if let Some(name) = e.data.get("agent_id").and_then(Value::as_str) {
                names.push(name.to_owned());
            }
        }
    }
    names.sort_unstable();
    names.dedup();
    names
}

/// BEGIN, then `rig_append_begin` (lock, then the reads), in ONE round trip: a simple query
/// carrying its argument as a literal, since only the extended protocol takes parameters and it
/// cannot also send BEGIN.
async fn begin(
    conn: &mut PgConnection,
    ids: &[Uuid],
    streams: &[&str],
    agents: &[String],
) -> Result<Lookup, sqlx::Error> {
    let request = serde_json::json!({"ids": ids, "streams": streams, "agents": agents});
    let sql = format!(
        "BEGIN; SELECT rig_append_begin({APPEND_LOCK_KEY}, {}::jsonb)",
        sql_literal(&request.to_string())
    );
    // A plain &str runs as a simple query, which may hold several statements.
    let row = sqlx::Executor::fetch_one(&mut *conn, sql.as_str()).await?;
    let Json(lookup): Json<Lookup> = sqlx::Row::try_get(&row, 0)?;
    Ok(lookup)
}

/// A string as an SQL literal: `E'…'` with quotes and backslashes doubled, correct whatever
/// `standard_conforming_strings` says.
fn sql_literal(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 8);
    out.push_str("E'");
    for c in s.chars() {
        match c {
            '\'' => out.push_str("''"),
            '\\' => out.push_str("\\\\"),
            c => out.push(c),
        }
    }
    out.push('\'');
    out
}

/// Everything the batch writes, in one statement (`write.sql`): the events, `issue_state`,
/// `agent_status`, and the NOTIFY that wakes the consumers (delivered at commit). Returns each
/// row's position.
async fn write(
    conn: &mut PgConnection,
    batch: &[&Append],
    sids: &[String],
    rows: &[Row],
    issues: &[IssueState],
    agents: &[AgentRow],
    now: DateTime<Utc>,
) -> Result<Vec<i64>, sqlx::Error> {
    let ev = |r: &Row| &batch[r.job].events[r.event];
    let ids: Vec<Uuid> = rows.iter().map(|r| ev(r).event_id).collect();
    macro_rules! issue_col {
        ($f:ident) => {
            issues.iter().map(|s| s.$f.clone()).collect::<Vec<_>>()
        };
    }
    // Event data goes as text[] cast row by row, not as jsonb[]: the large jsonb[] parameters
    // cost the backend ~8 % in page faults (see docs/performance.md).
    let (first, last, count): (Option<i64>, Option<i64>, i64) = sqlx::query_as(include_str!("write.sql"))
        .bind(rows.iter().map(|r| sids[r.job].as_str()).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.version).collect::<Vec<_>>())
        .bind(&ids)
        .bind(rows.iter().map(|r| ev(r).event_type.as_str()).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| ev(r).schema_version).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| ev(r).data.to_string()).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| ev(r).metadata.to_string()).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| ev(r).occurred_at).collect::<Vec<_>>())
        .bind(now)
        .bind(issue_col!(stream_id))
        .bind(issue_col!(repo))
        .bind(issue_col!(issue_number))
        .bind(issue_col!(status))
        .bind(issue_col!(agent_id))
        .bind(issue_col!(version))
        .bind(issue_col!(stuck_count))
        .bind(issue_col!(last_ci))
        .bind(issue_col!(pr_number))
        .bind(issue_col!(branch))
        .bind(issue_col!(title))
        .bind(issue_col!(first_event_at))
        .bind(issue_col!(assigned_at))
        .bind(issue_col!(last_heartbeat_at))
        .bind(issue_col!(done_at))
        .bind(issue_col!(updated_at))
        .bind(agents.iter().map(|a| a.agent_id.as_str()).collect::<Vec<_>>())
        .bind(agents.iter().map(|a| a.last_heartbeat_at).collect::<Vec<_>>())
        .bind(
            agents
                .iter()
                .map(|a| a.current_stream_id.as_deref())
                .collect::<Vec<_>>(),
        )
        .bind(agents.iter().map(|a| a.status.as_deref()).collect::<Vec<_>>())
        .bind(agents.iter().map(|a| a.updated_at).collect::<Vec<_>>())
        .bind(EVENTS_CHANNEL)
        .fetch_one(&mut *conn)
        .await?;
    // Only appends draw positions, each under the append lock, so a batch's positions are one
    // unbroken range in array order: three numbers come back instead of a row per event
    // (see docs/performance.md). Should the range ever be broken (a hand-made INSERT drawing
    // from the identity meanwhile, or an identity altered to step by more than 1), each row's
    // own position is read back instead.
    let n = rows.len() as i64;
    match (first, last) {
        (Some(first), Some(last)) if count == n && last - first + 1 == n => Ok((first..=last).collect()),
        _ => {
            let found: Vec<(Uuid, i64)> =
                sqlx::query_as("SELECT event_id, position FROM events WHERE event_id = ANY($1)")
                    .bind(&ids)
                    .fetch_all(&mut *conn)
                    .await?;
            let by_id: HashMap<Uuid, i64> = found.into_iter().collect();
            ids.iter()
                .map(|id| {
                    by_id
                        .get(id)
                        .copied()
                        .ok_or_else(|| sqlx::Error::Protocol(format!("event {id} was not inserted")))
                })
                .collect()
        }
    }
}

/// The connection in `conn`, connecting if there is none. The writer and the flusher each keep
/// one across batches (no acquire and ping per batch) and replace it after any error that may
/// have broken it.
pub(super) async fn connection<'c>(
    pool: &PgPool,
    conn: &'c mut Option<PoolConnection<Postgres>>,
) -> Result<&'c mut PgConnection, sqlx::Error> {
    if conn.is_none() {
        *conn = Some(pool.acquire().await?);
    }
    Ok(conn.as_mut().expect("just set"))
}

/// Ends the failed transaction of a connection that is otherwise sound (the database refused a
/// statement), keeping the connection; drops it when even that fails.
pub(super) async fn roll_back(conn: &mut Option<PoolConnection<Postgres>>) {
    if let Some(c) = conn.as_mut() {
        let done = tokio::time::timeout(Duration::from_secs(1), sqlx::Executor::execute(&mut **c, "ROLLBACK")).await;
        if matches!(done, Ok(Ok(_))) {
            return;
        }
    }
    discard(conn).await;
}

/// Drops a connection that failed: it may be broken or mid-transaction.
pub(super) async fn discard(conn: &mut Option<PoolConnection<Postgres>>) {
    if let Some(c) = conn.take() {
        let _ = tokio::time::timeout(Duration::from_secs(1), c.close()).await;
    }
}

#[cfg(test)]
mod tests {
    use super::sql_literal;

    #[test]
    fn sql_literals_double_quotes_and_backslashes() {
        assert_eq!(sql_literal("plain"), "E'plain'");
        assert_eq!(sql_literal("o'brien"), "E'o''brien'");
        assert_eq!(sql_literal(r"a\b"), r"E'a\\b'");
        assert_eq!(sql_literal(r#"{"a":"\"'"}"#), r#"E'{"a":"\\"''"}'"#);
    }
}
