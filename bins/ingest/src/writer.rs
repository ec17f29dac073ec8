//! Group commit: the one place that writes `events`.
//!
//! Append requests are validated by the HTTP layer, then queued here. One writer task drains
//! whatever is waiting into ONE transaction (many requests, one fsync), yet decides each
//! request's fate on its own: a version conflict, a duplicate id or a refused claim answers that
//! request alone and never fails or delays another in the batch.
//!
//! **No skipped events (SPEC §2).** The first statement of every append transaction is
//! `pg_advisory_xact_lock(APPEND_LOCK_KEY)`. Positions come from an identity column and are
//! drawn only while the lock is held, and the lock is released after the commit is visible, so
//! transactions commit in position order, across any number of ingest processes. A reader that
//! sees position N therefore already sees every committed position below N, and consumers can
//! tail with a plain `position > checkpoint`. A rolled-back append leaves a gap, never a late
//! arrival. We chose this over reading below the xid horizon (`pg_snapshot_xmin`) because group
//! commit already makes the serialised section one transaction per batch, so the lock costs
//! little, and every reader (consumers, `rigctl`, ad-hoc SQL) stays simple and obviously right.
//! The same lock makes the per-stream version checks and the exclusive claim rule race-free.

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use shared::db::{is_transient, APPEND_LOCK_KEY, EVENTS_CHANNEL};
use shared::events;
use shared::fold::{FoldInput, IssueState};
use shared::StreamId;
use sqlx::types::Json;
use sqlx::PgPool;
use std::collections::{HashMap, HashSet};
use std::time::Instant;
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

/// One event of an append request, validated.
#[derive(Debug, Clone)]
pub struct NewEvent {
    pub event_id: Uuid,
    pub event_type: String,
    pub schema_version: i32,
    pub data: Value,
    pub metadata: Value,
    pub occurred_at: Option<DateTime<Utc>>,
}

/// A validated append to one stream.
#[derive(Debug, Clone)]
pub struct Append {
    pub stream: StreamId,
    pub expected_version: Option<i64>,
    pub events: Vec<NewEvent>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Appended {
    pub stream_id: String,
    pub first_version: i64,
    pub last_version: i64,
    pub first_position: i64,
    pub last_position: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AppendOk {
    /// Written now (201).
    Created(Appended),
    /// Every id was already stored in this stream: nothing written (200).
    AlreadyStored(Appended),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AppendError {
    #[error("expected version {expected} but the stream is at {current}")]
    WrongExpectedVersion { expected: i64, current: i64 },
    #[error("{detail}")]
    DuplicateEventId { event_id: Uuid, detail: String },
    #[error("the issue is held by agent {agent_id}")]
    AlreadyAssigned { agent_id: String },
    #[error("the database is unavailable: {0}")]
    Unavailable(String),
    #[error("internal error: {0}")]
    Internal(String),
}

type Reply = oneshot::Sender<Result<AppendOk, AppendError>>;

struct Job {
    append: Append,
    reply: Reply,
}

/// Handle to the writer task.
#[derive(Clone)]
pub struct Writer {
    tx: mpsc::Sender<Job>,
}

impl Writer {
    /// Starts the writer task. It stops when every handle is dropped.
    pub fn spawn(pool: PgPool, max_batch: usize) -> Writer {
        let (tx, rx) = mpsc::channel(max_batch * 4);
        tokio::spawn(writer_loop(pool, rx, max_batch));
        Writer { tx }
    }

    pub async fn append(&self, append: Append) -> Result<AppendOk, AppendError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Job { append, reply })
            .await
            .map_err(|_| AppendError::Internal("the writer has stopped".into()))?;
        rx.await
            .map_err(|_| AppendError::Internal("the writer dropped the request".into()))?
    }
}

async fn writer_loop(pool: PgPool, mut rx: mpsc::Receiver<Job>, max_batch: usize) {
    let mut carry: Vec<Job> = Vec::new();
    loop {
        let mut batch = std::mem::take(&mut carry);
        if batch.is_empty() {
            match rx.recv().await {
                Some(job) => batch.push(job),
                None => return,
            }
        }
        while batch.len() < max_batch {
            match rx.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        // Jobs whose client already went away need no work.
        batch.retain(|j| !j.reply.is_closed());
        if batch.is_empty() {
            continue;
        }
        let started = Instant::now();
        let n = batch.len();
        carry = commit_batch(&pool, batch).await;
        metrics::histogram!("rig_ingest_batch_duration_seconds").record(started.elapsed().as_secs_f64());
        metrics::histogram!("rig_ingest_batch_requests").record((n - carry.len()) as f64);
    }
}

/// Per-stream state as the batch sees it, updated as requests are accepted.
struct StreamHead {
    version: i64,
    issue: Option<IssueState>,
    issue_dirty: bool,
}

#[derive(Clone, Debug, sqlx::FromRow)]
struct AgentRow {
    agent_id: String,
    last_heartbeat_at: Option<DateTime<Utc>>,
    current_stream_id: Option<String>,
    status: Option<String>,
    updated_at: DateTime<Utc>,
}

struct Row {
    stream_id: String,
    version: i32,
    event_id: Uuid,
    event_type: String,
    schema_version: i32,
    data: Value,
    metadata: Value,
    occurred_at: Option<DateTime<Utc>>,
}

enum Decision {
    /// Accepted: rows `range` of the insert.
    Accept {
        first_version: i64,
        rows: std::ops::Range<usize>,
    },
    Done(Result<AppendOk, AppendError>),
}

/// Commits one batch; returns the jobs to run in the next batch (they reuse ids that an earlier
/// job of this batch writes, so they can only be judged once those rows exist).
///
/// A non-transient database error fails a whole transaction; so that one request's failure
/// never fails the others, such a batch is retried one request per transaction.
async fn commit_batch(pool: &PgPool, batch: Vec<Job>) -> Vec<Job> {
    match try_commit_batch(pool, &batch).await {
        Ok(decided) => reply_all(batch, decided),
        Err(e) if batch.len() > 1 && !is_transient(&e) => {
            tracing::warn!(error = %e, requests = batch.len(), "batch failed; retrying each request alone");
            let mut carry = Vec::new();
            for job in batch {
                match try_commit_batch(pool, std::slice::from_ref(&job)).await {
                    Ok(decided) => carry.extend(reply_all(vec![job], decided)),
                    Err(e) => fail_all(vec![job], &e),
                }
            }
            carry
        }
        Err(e) => {
            fail_all(batch, &e);
            Vec::new()
        }
    }
}

fn reply_all(batch: Vec<Job>, (decisions, carry_idx): Decided) -> Vec<Job> {
    let mut carry = Vec::new();
    for (i, (job, decision)) in batch.into_iter().zip(decisions).enumerate() {
        if carry_idx.contains(&i) {
            carry.push(job);
            continue;
        }
        if let Some(result) = decision {
            record_outcome(&result);
            let _ = job.reply.send(result);
        }
    }
    carry
}

fn fail_all(batch: Vec<Job>, e: &sqlx::Error) {
    let err = if is_transient(e) {
        AppendError::Unavailable(e.to_string())
    } else {
        tracing::error!(error = %e, "append transaction failed");
        AppendError::Internal("the append failed; nothing was written".into())
    };
    for job in batch {
        let _ = job.reply.send(Err(err.clone()));
    }
}

fn record_outcome(r: &Result<AppendOk, AppendError>) {
    match r {
        Ok(AppendOk::Created(a)) => metrics::counter!("rig_ingest_events_appended_total")
            .increment((a.last_version - a.first_version + 1) as u64),
        Ok(AppendOk::AlreadyStored(_)) => metrics::counter!("rig_ingest_idempotent_retries_total").increment(1),
        Err(AppendError::WrongExpectedVersion { .. }) => {
            metrics::counter!("rig_ingest_conflicts_total", "kind" => "wrong_expected_version").increment(1)
        }
        Err(AppendError::DuplicateEventId { .. }) => {
            metrics::counter!("rig_ingest_conflicts_total", "kind" => "duplicate_event_id").increment(1)
        }
        Err(AppendError::AlreadyAssigned { .. }) => {
            metrics::counter!("rig_ingest_conflicts_total", "kind" => "already_assigned").increment(1)
        }
        Err(_) => {}
    }
}

type Decided = (Vec<Option<Result<AppendOk, AppendError>>>, HashSet<usize>);

async fn try_commit_batch(pool: &PgPool, batch: &[Job]) -> Result<Decided, sqlx::Error> {
    let mut tx = pool.begin().await?;
    // Must stay the first statement: it orders commits by position (see the module doc).
    let now: DateTime<Utc> = sqlx::query_scalar("SELECT clock_timestamp() FROM pg_advisory_xact_lock($1)")
        .bind(APPEND_LOCK_KEY)
        .fetch_one(&mut *tx)
        .await?;

    // What is stored already: ids, stream heads, issue states.
    let all_ids: Vec<Uuid> = batch
        .iter()
        .flat_map(|j| j.append.events.iter().map(|e| e.event_id))
        .collect();
    let stored: HashMap<Uuid, (String, i64, i64)> = sqlx::query_as::<_, (Uuid, String, i32, i64)>(
        "SELECT event_id, stream_id, version, position FROM events WHERE event_id = ANY($1)",
    )
    .bind(&all_ids)
    .fetch_all(&mut *tx)
    .await?
    .into_iter()
    .map(|(id, s, v, p)| (id, (s, i64::from(v), p)))
    .collect();
    let mut stream_names: Vec<String> = batch.iter().map(|j| j.append.stream.to_string()).collect();
    stream_names.sort();
    stream_names.dedup();
    let versions: Vec<(String, Option<i32>)> = sqlx::query_as(
        "SELECT s, (SELECT max(version) FROM events e WHERE e.stream_id = s) FROM unnest($1::text[]) AS s",
    )
    .bind(&stream_names)
    .fetch_all(&mut *tx)
    .await?;
    let issue_names: Vec<&String> = stream_names.iter().filter(|s| !s.starts_with("agent:")).collect();
    let issues: Vec<IssueState> = if issue_names.is_empty() {
        Vec::new()
    } else {
        sqlx::query_as("SELECT * FROM issue_state WHERE stream_id = ANY($1)")
            .bind(&issue_names)
            .fetch_all(&mut *tx)
            .await?
    };
    let mut heads: HashMap<String, StreamHead> = versions
        .into_iter()
        .map(|(s, v)| {
            (
                s,
                StreamHead {
                    version: i64::from(v.unwrap_or(0)),
                    issue: None,
                    issue_dirty: false,
                },
            )
        })
        .collect();
    for st in issues {
        if let Some(h) = heads.get_mut(&st.stream_id) {
            h.issue = Some(st);
        }
    }

    // Judge each request in arrival order against the state left by the ones before it.
    let mut rows: Vec<Row> = Vec::new();
    let mut decisions: Vec<Decision> = Vec::with_capacity(batch.len());
    let mut carry: HashSet<usize> = HashSet::new();
    let mut ids_in_batch: HashSet<Uuid> = HashSet::new();
    let mut agent_touch: Vec<(usize, Option<String>)> = Vec::new(); // (row index, holder before)
    for (i, job) in batch.iter().enumerate() {
        let a = &job.append;
        let sid = a.stream.to_string();
        if a.events.iter().any(|e| ids_in_batch.contains(&e.event_id)) {
            carry.insert(i);
            decisions.push(Decision::Done(Err(AppendError::Internal("carried".into()))));
            continue;
        }
        let found: Vec<Option<&(String, i64, i64)>> = a.events.iter().map(|e| stored.get(&e.event_id)).collect();
        if found.iter().all(|f| f.is_some_and(|(s, ..)| *s == sid)) {
            let versions = found.iter().flatten().map(|(_, v, _)| *v);
            let positions = found.iter().flatten().map(|(_, _, p)| *p);
            decisions.push(Decision::Done(Ok(AppendOk::AlreadyStored(Appended {
                stream_id: sid,
                first_version: versions.clone().min().unwrap_or(0),
                last_version: versions.max().unwrap_or(0),
                first_position: positions.clone().min().unwrap_or(0),
                last_position: positions.max().unwrap_or(0),
            }))));
            continue;
        }
        if let Some((e, f)) = a.events.iter().zip(&found).find_map(|(e, f)| f.map(|f| (e, f))) {
            let detail = if f.0 == sid {
                format!("event id {} is already stored in this stream but other events of the request are not; send either all stored ids (a retry) or new ids", e.event_id)
            } else {
                format!("event id {} is already stored in another stream ({})", e.event_id, f.0)
            };
            decisions.push(Decision::Done(Err(AppendError::DuplicateEventId {
                event_id: e.event_id,
                detail,
            })));
            continue;
        }
        let head = heads.get_mut(&sid).expect("every stream of the batch was loaded");
        if let Some(expected) = a.expected_version {
            if expected != head.version {
                decisions.push(Decision::Done(Err(AppendError::WrongExpectedVersion {
                    expected,
                    current: head.version,
                })));
                continue;
            }
        }
        // Fold the request onto a copy first, so a refused claim changes nothing.
        let mut issue = head.issue.clone();
        let mut refused = None;
        let mut holders = Vec::with_capacity(a.events.len());
        for (k, e) in a.events.iter().enumerate() {
            if let StreamId::Issue { repo, number } = &a.stream {
                let st = issue.get_or_insert_with(|| IssueState::new(&sid, repo, *number, now));
                if e.event_type == events::ISSUE_ASSIGNED {
                    if let Some(holder) = &st.agent_id {
                        refused = Some(holder.clone());
                        break;
                    }
                }
                holders.push(st.agent_id.clone());
                st.apply(&FoldInput {
                    version: (head.version + 1 + k as i64) as i32,
                    event_type: &e.event_type,
                    data: &e.data,
                    recorded_at: now,
                });
            } else {
                holders.push(None);
            }
        }
        if let Some(agent_id) = refused {
            decisions.push(Decision::Done(Err(AppendError::AlreadyAssigned { agent_id })));
            continue;
        }
        let first_version = head.version + 1;
        let start = rows.len();
        for (k, (e, holder)) in a.events.iter().zip(holders).enumerate() {
            ids_in_batch.insert(e.event_id);
            agent_touch.push((rows.len(), holder));
            rows.push(Row {
                stream_id: sid.clone(),
                version: (first_version + k as i64) as i32,
                event_id: e.event_id,
                event_type: e.event_type.clone(),
                schema_version: e.schema_version,
                data: e.data.clone(),
                metadata: e.metadata.clone(),
                occurred_at: e.occurred_at,
            });
        }
        head.version += a.events.len() as i64;
        if issue.is_some() {
            head.issue = issue;
            head.issue_dirty = true;
        }
        decisions.push(Decision::Accept {
            first_version,
            rows: start..rows.len(),
        });
    }

    if rows.is_empty() {
        tx.rollback().await?;
        return Ok((finish(decisions, &[], &rows), carry));
    }

    let positions = insert_rows(&mut tx, &rows, now).await?;
    upsert_issues(
        &mut tx,
        heads
            .values()
            .filter(|h| h.issue_dirty)
            .filter_map(|h| h.issue.as_ref()),
    )
    .await?;
    upsert_agents(&mut tx, &rows, &agent_touch, now).await?;
    let last = positions.last().copied().unwrap_or(0);
    sqlx::query("SELECT pg_notify($1, $2)")
        .bind(EVENTS_CHANNEL)
        .bind(last.to_string())
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok((finish(decisions, &positions, &rows), carry))
}

fn finish(decisions: Vec<Decision>, positions: &[i64], rows: &[Row]) -> Vec<Option<Result<AppendOk, AppendError>>> {
    decisions
        .into_iter()
        .map(|d| match d {
            Decision::Done(r) => Some(r),
            Decision::Accept {
                first_version,
                rows: range,
            } => Some(Ok(AppendOk::Created(Appended {
                stream_id: rows[range.start].stream_id.clone(),
                first_version,
                last_version: first_version + range.len() as i64 - 1,
                first_position: positions[range.start],
                last_position: positions[range.end - 1],
            }))),
        })
        .collect()
}

async fn insert_rows(tx: &mut sqlx::PgConnection, rows: &[Row], now: DateTime<Utc>) -> Result<Vec<i64>, sqlx::Error> {
    let stream_ids: Vec<&str> = rows.iter().map(|r| r.stream_id.as_str()).collect();
    let versions: Vec<i32> = rows.iter().map(|r| r.version).collect();
    let ids: Vec<Uuid> = rows.iter().map(|r| r.event_id).collect();
    let types: Vec<&str> = rows.iter().map(|r| r.event_type.as_str()).collect();
    let schema: Vec<i32> = rows.iter().map(|r| r.schema_version).collect();
    let data: Vec<Json<&Value>> = rows.iter().map(|r| Json(&r.data)).collect();
    let meta: Vec<Json<&Value>> = rows.iter().map(|r| Json(&r.metadata)).collect();
    let occurred: Vec<Option<DateTime<Utc>>> = rows.iter().map(|r| r.occurred_at).collect();
    // Identity values are drawn in the order of the SELECT, i.e. the order of the arrays.
    let inserted: Vec<(Uuid, i64)> = sqlx::query_as(
        "INSERT INTO events (stream_id, version, event_id, event_type, schema_version, data, metadata, occurred_at, recorded_at) \
         SELECT s, v, id, t, sv, d, m, o, $9 \
         FROM unnest($1::text[], $2::int[], $3::uuid[], $4::text[], $5::int[], $6::jsonb[], $7::jsonb[], $8::timestamptz[]) \
              WITH ORDINALITY AS u(s, v, id, t, sv, d, m, o, n) \
         ORDER BY n \
         RETURNING event_id, position",
    )
    .bind(&stream_ids)
    .bind(&versions)
    .bind(&ids)
    .bind(&types)
    .bind(&schema)
    .bind(&data)
    .bind(&meta)
    .bind(&occurred)
    .bind(now)
    .fetch_all(&mut *tx)
    .await?;
    let by_id: HashMap<Uuid, i64> = inserted.into_iter().collect();
    Ok(ids.iter().map(|id| by_id[id]).collect())
}

async fn upsert_issues<'a>(
    tx: &mut sqlx::PgConnection,
    states: impl Iterator<Item = &'a IssueState>,
) -> Result<(), sqlx::Error> {
    let states: Vec<&IssueState> = states.collect();
    if states.is_empty() {
        return Ok(());
    }
    macro_rules! col {
        ($f:ident) => {
            states.iter().map(|s| s.$f.clone()).collect::<Vec<_>>()
        };
    }
    sqlx::query(
        "INSERT INTO issue_state (stream_id, repo, issue_number, status, agent_id, version, stuck_count, last_ci, \
             pr_number, branch, title, first_event_at, assigned_at, last_heartbeat_at, done_at, updated_at) \
         SELECT * FROM unnest($1::text[], $2::text[], $3::bigint[], $4::text[], $5::text[], $6::int[], $7::int[], \
             $8::text[], $9::bigint[], $10::text[], $11::text[], $12::timestamptz[], $13::timestamptz[], \
             $14::timestamptz[], $15::timestamptz[], $16::timestamptz[]) \
         ON CONFLICT (stream_id) DO UPDATE SET status = excluded.status, agent_id = excluded.agent_id, \
             version = excluded.version, stuck_count = excluded.stuck_count, last_ci = excluded.last_ci, \
             pr_number = excluded.pr_number, branch = excluded.branch, title = excluded.title, \
             assigned_at = excluded.assigned_at, last_heartbeat_at = excluded.last_heartbeat_at, \
             done_at = excluded.done_at, updated_at = excluded.updated_at",
    )
    .bind(col!(stream_id))
    .bind(col!(repo))
    .bind(col!(issue_number))
    .bind(col!(status))
    .bind(col!(agent_id))
    .bind(col!(version))
    .bind(col!(stuck_count))
    .bind(col!(last_ci))
    .bind(col!(pr_number))
    .bind(col!(branch))
    .bind(col!(title))
    .bind(col!(first_event_at))
    .bind(col!(assigned_at))
    .bind(col!(last_heartbeat_at))
    .bind(col!(done_at))
    .bind(col!(updated_at))
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// `agent_status`: last heartbeat, current issue and status per agent, folded from the batch.
async fn upsert_agents(
    tx: &mut sqlx::PgConnection,
    rows: &[Row],
    touch: &[(usize, Option<String>)],
    now: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    let agent_of = |r: &Row, holder: &Option<String>| -> Option<String> {
        if let Some(a) = r.stream_id.strip_prefix("agent:") {
            return Some(a.to_owned());
        }
        r.data
            .get("agent_id")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .or_else(|| holder.clone())
    };
    let relevant = |t: &str| {
        matches!(
            t,
            events::HEARTBEAT
                | events::ISSUE_ASSIGNED
                | events::ISSUE_UNASSIGNED
                | events::AGENT_STUCK
                | events::WORK_STARTED
                | events::ISSUE_DONE
                | events::MERGED
        )
    };
    let mut names: Vec<String> = touch
        .iter()
        .filter(|(i, _)| relevant(&rows[*i].event_type))
        .filter_map(|(i, h)| agent_of(&rows[*i], h))
        .collect();
    if names.is_empty() {
        return Ok(());
    }
    names.sort();
    names.dedup();
    let existing: Vec<AgentRow> = sqlx::query_as("SELECT * FROM agent_status WHERE agent_id = ANY($1)")
        .bind(&names)
        .fetch_all(&mut *tx)
        .await?;
    let mut agents: HashMap<String, AgentRow> = existing.into_iter().map(|a| (a.agent_id.clone(), a)).collect();
    for (i, holder) in touch {
        let r = &rows[*i];
        if !relevant(&r.event_type) {
            continue;
        }
        let Some(agent) = agent_of(r, holder) else { continue };
        let a = agents.entry(agent.clone()).or_insert_with(|| AgentRow {
            agent_id: agent,
            last_heartbeat_at: None,
            current_stream_id: None,
            status: None,
            updated_at: now,
        });
        a.updated_at = now;
        let on_issue = !r.stream_id.starts_with("agent:");
        match r.event_type.as_str() {
            events::HEARTBEAT => {
                a.last_heartbeat_at = Some(now);
                if let Some(s) = r.data.get("status").and_then(Value::as_str) {
                    a.status = Some(s.to_owned());
                }
                match r.data.get("current_issue") {
                    Some(Value::String(s)) => {
                        a.current_stream_id =
                            Some(StreamId::parse(s).map(|s| s.to_string()).unwrap_or_else(|_| s.clone()))
                    }
                    Some(Value::Number(n)) => a.current_stream_id = Some(n.to_string()),
                    Some(Value::Null) => a.current_stream_id = None,
                    _ if on_issue => a.current_stream_id = Some(r.stream_id.clone()),
                    _ => {}
                }
            }
            events::ISSUE_ASSIGNED | events::WORK_STARTED if on_issue => {
                a.current_stream_id = Some(r.stream_id.clone());
                a.status = Some("working".to_owned());
            }
            // The agent is done with the issue: it no longer counts as its current one.
            events::ISSUE_UNASSIGNED | events::ISSUE_DONE | events::MERGED
                if on_issue && a.current_stream_id.as_deref() == Some(r.stream_id.as_str()) =>
            {
                a.current_stream_id = None;
                a.status = Some("idle".to_owned());
            }
            events::AGENT_STUCK => a.status = Some("stuck".to_owned()),
            _ => {}
        }
    }
    let agents: Vec<AgentRow> = agents.into_values().collect();
    sqlx::query(
        "INSERT INTO agent_status (agent_id, last_heartbeat_at, current_stream_id, status, updated_at) \
         SELECT * FROM unnest($1::text[], $2::timestamptz[], $3::text[], $4::text[], $5::timestamptz[]) \
         ON CONFLICT (agent_id) DO UPDATE SET last_heartbeat_at = excluded.last_heartbeat_at, \
             current_stream_id = excluded.current_stream_id, status = excluded.status, updated_at = excluded.updated_at",
    )
    .bind(agents.iter().map(|a| a.agent_id.clone()).collect::<Vec<_>>())
    .bind(agents.iter().map(|a| a.last_heartbeat_at).collect::<Vec<_>>())
    .bind(agents.iter().map(|a| a.current_stream_id.clone()).collect::<Vec<_>>())
    .bind(agents.iter().map(|a| a.status.clone()).collect::<Vec<_>>())
    .bind(agents.iter().map(|a| a.updated_at).collect::<Vec<_>>())
    .execute(&mut *tx)
    .await?;
    Ok(())
}
