//! Group commit: the one place that writes `events`.
//!
//! Append requests are validated by the HTTP layer, then queued here. A writer drains whatever
//! is waiting into ONE transaction (many requests, one fsync), yet decides each request's fate
//! on its own: a version conflict, a duplicate id or a refused claim answers that request alone
//! and never fails or delays another in the batch.
//!
//! **No skipped events.** The first statement of every append transaction takes
//! `pg_advisory_xact_lock(APPEND_LOCK_KEY)` (inside `rig_append_begin`, migration 0021).
//! Positions come from an identity column and are drawn only while the lock is held, and the
//! lock is released after the commit is visible, so transactions commit in position order,
//! across any number of ingest processes. A reader that sees position N therefore already sees
//! every committed position below N, and consumers can tail with a plain `position > checkpoint`.
//! A rolled-back append leaves a gap, never a late arrival. We chose this over reading below the
//! xid horizon (`pg_snapshot_xmin`) because group commit already makes the serialised section
//! one transaction per batch, so the lock costs little, and every reader (consumers, `rigctl`,
//! ad-hoc SQL) stays simple and obviously right. The same lock makes the per-stream version
//! checks and the exclusive claim rule race-free.
//!
//! **Throughput.** Only the lock holder makes progress, so the time a batch holds the lock
//! bounds the append rate. A batch holds it for three round trips: BEGIN with
//! `rig_append_begin` (lock, then every read the batch is judged against, as one json), one
//! statement that inserts the events, upserts `issue_state` and `agent_status` and notifies,
//! and COMMIT, which does not wait for its fsync: `flusher_loop`, on a connection of its own,
//! waits for the WAL flush before anyone is answered, while the writer goes on with the next
//! batch. One writer per process: a second one, queued on the lock with the next batch,
//! measured slower (the same requests split into batches half the size).
//!
//! What profiles of the lock holder's backend showed (`perf record` under `wrk`, 64 clients of
//! single-event appends, and 4 clients of 500-event appends), and what each change measured in
//! alternating runs of the old and new binary on one database:
//! - `rig_append_begin` as first written (0021) was over a third of the backend's CPU for single
//!   appends, mostly planning its eight statements anew at each call, and with a few thousand
//!   issues it scanned `issue_state` instead of probing its key. Migration 0022 made it two
//!   statements with generic plans, each lookup an index probe: single appends 7.4-8.3k/s →
//!   9.3-10.8k/s, 500-event appends 75-84 → 82-90 requests/s.
//! - The flusher (the fsync off the writer's path): 500-event appends 75-80 → 86-97 requests/s;
//!   single appends unchanged (8.2-9.7k/s either way).
//! - Event data sent as `text[]` and cast row by row instead of as `jsonb[]`: the large jsonb[]
//!   parameters cost the backend ~8 % in page faults. 500-event appends 92.8 → 101.7 requests/s
//!   (means of six pairs).
//! - Tried and dropped: sending a batch's COMMIT in the same round trip as the next batch's
//!   BEGIN. One round trip fewer, yet slower (single appends 10.3-11.9k/s → 8.5-9.4k/s): a
//!   batch's clients were answered only after the next batch's reads, and batches shrank.
//! - Tried and dropped: the write and its COMMIT in one round trip, the batch sent as one jsonb
//!   document to a plpgsql function (`jsonb_to_recordset`, `jsonb_populate_recordset`) in a
//!   simple query. Single appends 15.9-16.7k/s → 15.0-16.0k/s, 500-event appends 187-191 →
//!   123-153 requests/s: parsing the document and converting its fields cost the backend more
//!   than the round trip saved, which the bound text[]/uuid[]/timestamptz[] arrays avoid.
//!
//! A 500-event append is now the one backend inserting under the lock (~85 % on CPU): index
//! inserts ~36 %, jsonb parsing ~18 %, the event_type CHECK ~6 %, heap inserts ~7 %, WAL ~5 %,
//! sorting rows into array order ~4 %. The raw baseline spreads the same per-row work over 8
//! connections and both cores; one backend inserting 1,000 rows per transaction (pgbench, same
//! table) reaches ~38k rows/s where 8 connections of 100 reach ~51k. For single appends the
//! backend is ~66 % on CPU (a quarter of it in `rig_append_begin`) and ingest spends ~47 µs of
//! CPU per request (hyper, axum, serde_json, allocation, no hot spot).
//!
//! Where a single-event batch's time goes (a later machine, 2026-12: raw autocommit 13k/s, 64
//! `wrk` clients, ~28 requests a batch, each phase timed in a scratch build): BEGIN with
//! `rig_append_begin` 0.69 ms (the function itself ~0.27 ms of it, per pgbench, ~0.11 ms even
//! with nothing to look up), the fold in Rust 0.02 ms, the write statement 1.05 ms, COMMIT
//! 0.16 ms. The writer is busy 97 % of the time and its backend 82 % on CPU while the machine
//! is ~15 % idle: at 64 clients the serial work under the lock bounds the rate, so more clients
//! make bigger batches and more throughput (128 clients: 18-21k/s against 11-16k/s for 64).
//!
//! - The write returns its range of positions (three numbers) instead of a row per event:
//!   500-event appends 162 → 175 requests/s (means of ten alternating pairs), single appends
//!   unchanged. For 500-event appends the write statement is ~92 % of the batch (0.75 ms BEGIN
//!   and lookups, 13 ms write, 0.3 ms COMMIT per 1,000 events, timed in a scratch build).
//!
//! The arithmetic of closed-loop clients (each sends its next request when answered, as `wrk`
//! and the bench do): a client in batch k is answered after that batch commits, when batch k+1
//! has already started with what arrived meanwhile, so its next request joins batch k+2. N
//! clients thus make batches of about N/2, and the rate is about N / (2 × T), T being the time a
//! batch holds the lock. Checked against the bench on 2026-12-01 (run 2): 29.4 requests a batch,
//! T = 3.56 ms, 64 / (2 × 3.56 ms) ≈ 9.0k/s predicted, 8.1k/s measured. So only a shorter T
//! raises the single-append rate at a given client count; 4× raw autocommit (40k/s at 64
//! clients) would need T ≈ 0.8 ms for ~32 requests, on a machine whose HTTP path alone (no
//! database) tops out at 47-58k requests/s.
//!
//! Not tried yet: the lookups validated against a cache in the writer (the reads of
//! `rig_append_begin` skipped when nobody else appended since the writer's last commit), and a
//! pipelined writer (the next batch's reads overlapping this batch's write, with this batch's
//! effects laid over them): each adds state to the one place that decides exactly-once.

use chrono::{DateTime, Utc};
use rig_events::fold::{FoldInput, IssueState};
use rig_events::Event;
use rig_events::StreamId;
use rig_log::db::{is_transient, APPEND_LOCK_KEY, EVENTS_CHANNEL};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sqlx::pool::PoolConnection;
use sqlx::types::Json;
use sqlx::{PgConnection, PgPool, Postgres};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

/// One event of an append request, validated.
#[derive(Debug, Clone)]
pub struct NewEvent {
    pub event_id: Uuid,
    /// False when ingest drew the id itself: a fresh UUID (v7: time and 74 random bits) cannot
    /// be stored already, so the batch does not look it up (the unique constraint still stands
    /// behind it).
    pub id_from_client: bool,
    pub event_type: String,
    pub schema_version: i32,
    pub data: Value,
    /// `data` typed, as validation read it.
    pub event: Event<'static>,
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
    /// Appends submitted and not yet answered (queued, in a batch, or waiting for the flush).
    in_flight: Arc<AtomicUsize>,
}

/// Counts an append as in flight for as long as it lives, also when its client goes away.
struct InFlight<'a>(&'a AtomicUsize);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Writer {
    /// Starts the writer task. It stops when every handle is dropped.
    pub fn spawn(pool: PgPool, max_batch: usize) -> Writer {
        // The append counters exist from the start (at 0), so a rate or an alert over them never
        // finds the series missing before the first append or the first conflict.
        metrics::counter!("rig_ingest_events_appended_total").increment(0);
        metrics::counter!("rig_ingest_idempotent_retries_total").increment(0);
        metrics::counter!("rig_ingest_batch_splits_total").increment(0);
        for kind in ["wrong_expected_version", "duplicate_event_id", "already_assigned"] {
            metrics::counter!("rig_ingest_conflicts_total", "kind" => kind).increment(0);
        }
        let (tx, rx) = mpsc::channel(max_batch * 4);
        let (durable_tx, durable_rx) = mpsc::channel(64);
        tokio::spawn(writer_loop(pool.clone(), rx, durable_tx, max_batch));
        tokio::spawn(flusher_loop(pool, durable_rx));
        Writer {
            tx,
            in_flight: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// Requests waiting for the writer (not yet taken into a batch).
    pub fn queued(&self) -> usize {
        self.tx.max_capacity() - self.tx.capacity()
    }

    /// Appends submitted and not answered yet: whether the writer has work (see
    /// `api::refuse`).
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    pub async fn append(&self, append: Append) -> Result<AppendOk, AppendError> {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        let _in_flight = InFlight(&self.in_flight);
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Job { append, reply })
            .await
            .map_err(|_| AppendError::Internal("the writer has stopped".into()))?;
        rx.await
            .map_err(|_| AppendError::Internal("the writer dropped the request".into()))?
    }
}

async fn writer_loop(pool: PgPool, mut rx: mpsc::Receiver<Job>, durable: mpsc::Sender<Answers>, max_batch: usize) {
    // A connection of its own, kept across batches (no acquire and ping per batch); replaced
    // after any error that may have broken it.
    let mut conn: Option<PoolConnection<Postgres>> = None;
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
        carry = commit_batch(&pool, &mut conn, &durable, batch).await;
        metrics::histogram!("rig_ingest_batch_duration_seconds").record(started.elapsed().as_secs_f64());
        metrics::histogram!("rig_ingest_batch_requests").record((n - carry.len()) as f64);
    }
}

/// The writer's connection, connecting if it has none.
async fn connection<'c>(
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
async fn roll_back(conn: &mut Option<PoolConnection<Postgres>>) {
    if let Some(c) = conn.as_mut() {
        let done = tokio::time::timeout(Duration::from_secs(1), sqlx::Executor::execute(&mut **c, "ROLLBACK")).await;
        if matches!(done, Ok(Ok(_))) {
            return;
        }
    }
    discard(conn).await;
}

/// Drops a connection that failed: it may be broken or mid-transaction.
async fn discard(conn: &mut Option<PoolConnection<Postgres>>) {
    if let Some(c) = conn.take() {
        let _ = tokio::time::timeout(Duration::from_secs(1), c.close()).await;
    }
}

/// Commits one batch; returns the jobs to run in the next batch (they reuse ids that an earlier
/// job of this batch writes, so they can only be judged once those rows exist).
///
/// A non-transient database error fails a whole transaction, yet it is one request's doing
/// (validation refuses what it can foresee; this is for what slips through). So that it never
/// fails the others, such a batch is split in halves, each committed on its own, and a half that
/// fails again is split again, until the request that fails is alone and is answered 500. One bad
/// request in a batch of n costs about 2·log2(n) extra transactions, where retrying each request
/// alone cost n: under a stream of bad requests the others keep their group commit. The halves
/// run in arrival order, so each request is still judged after those that arrived before it.
async fn commit_batch(
    pool: &PgPool,
    conn: &mut Option<PoolConnection<Postgres>>,
    durable: &mpsc::Sender<Answers>,
    batch: Vec<Job>,
) -> Vec<Job> {
    let mut carry = Vec::new();
    // Parts still to commit, the next one last.
    let mut parts = vec![batch];
    while let Some(mut part) = parts.pop() {
        let result = match connection(pool, conn).await {
            Ok(c) => try_commit_batch(c, &part).await,
            Err(e) => Err(e),
        };
        match result {
            Ok(decided) => carry.extend(reply_all(part, decided, durable).await),
            Err(e) if part.len() > 1 && !is_transient(&e) => {
                tracing::warn!(error = %e, requests = part.len(), "batch failed; splitting it to isolate the request at fault");
                metrics::counter!("rig_ingest_batch_splits_total").increment(1);
                roll_back(conn).await;
                let second = part.split_off(part.len() / 2);
                parts.push(second);
                parts.push(part);
            }
            Err(e) => {
                if is_transient(&e) {
                    discard(conn).await;
                } else {
                    roll_back(conn).await;
                }
                fail_all(part, &e);
            }
        }
    }
    carry
}

/// Hands a decided batch's answers to the flusher; returns the jobs to carry to the next batch.
async fn reply_all(batch: Vec<Job>, decided: Decided, durable: &mpsc::Sender<Answers>) -> Vec<Job> {
    let mut carry = Vec::new();
    let mut replies = Vec::with_capacity(batch.len());
    for (i, (job, decision)) in batch.into_iter().zip(decided.decisions).enumerate() {
        if decided.carry.contains(&i) {
            carry.push(job);
        } else if let Some(result) = decision {
            replies.push((job.reply, result));
        }
    }
    let answers = Answers {
        replies,
        needs_flush: decided.needs_flush,
    };
    if let Err(mpsc::error::SendError(a)) = durable.send(answers).await {
        // Only when the process is going down: nobody can vouch for durability any more.
        for (reply, _) in a.replies {
            let _ = reply.send(Err(AppendError::Unavailable("ingest is shutting down".into())));
        }
    }
    carry
}

/// A batch's answers, waiting for the WAL flush that makes what they report durable.
struct Answers {
    replies: Vec<(Reply, Result<AppendOk, AppendError>)>,
    /// The batch committed, or answered "already stored" (which may rest on another batch's
    /// commit that is not flushed yet).
    needs_flush: bool,
}

/// Answers clients only once what they are told is on disk, so that the writer never waits
/// for an fsync: it commits with `synchronous_commit = off` (set by `rig_append_begin`) and
/// goes on with the next batch while this task, on a connection of its own, commits one WAL
/// record synchronously. A flush covers all WAL written before it, so one flush makes every
/// batch committed before it started durable, however many there are (a group flush on top of
/// the group commit). Since the commit releases the append lock before its fsync, another
/// ingest process (production runs two) takes the lock at once instead of queueing behind it.
///
/// Readers may see a batch a moment before it is durable; a consumer's own (synchronous) commit
/// flushes the events it read, so no checkpoint can get ahead of the durable log.
///
/// Answers leave in batch order, and a round without a batch that needs the flush comes after
/// every earlier batch was flushed: so even a refusal judged against a fresh commit (a 409) is
/// only sent once that commit is durable. If the flush fails, nobody can say whether the
/// round's commits survived: every request of the round is answered 503 and its client retries
/// (an append with its own event ids is then answered "already stored" if it had landed).
async fn flusher_loop(pool: PgPool, mut rx: mpsc::Receiver<Answers>) {
    let mut conn: Option<PoolConnection<Postgres>> = None;
    let mut round: Vec<Answers> = Vec::new();
    while rx.recv_many(&mut round, 1024).await > 0 {
        let flushed = if round.iter().any(|a| a.needs_flush) {
            let started = Instant::now();
            let result = match connection(&pool, &mut conn).await {
                Ok(c) => sqlx::query("SELECT pg_logical_emit_message(true, 'rig-ingest', 'durable')")
                    .execute(c)
                    .await
                    .map(drop),
                Err(e) => Err(e),
            };
            // How long clients wait for the disk after their batch committed: the first place
            // a slow or saturated WAL device shows.
            metrics::histogram!("rig_ingest_wal_flush_duration_seconds").record(started.elapsed().as_secs_f64());
            if let Err(e) = &result {
                tracing::warn!(error = %e, "the WAL flush failed; the appends it was to cover are answered 503 and retried by their clients");
                discard(&mut conn).await;
            }
            result
        } else {
            Ok(())
        };
        for answers in round.drain(..) {
            for (reply, result) in answers.replies {
                let result = match &flushed {
                    Ok(()) => result,
                    Err(e) => Err(AppendError::Unavailable(format!(
                        "the append may not be durable (its WAL flush failed: {e}); retry it"
                    ))),
                };
                record_outcome(&result);
                let _ = reply.send(result);
            }
        }
    }
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

/// What a batch decided: an answer per job (in order), the jobs to carry to the next batch, and
/// whether the answers need a WAL flush before they are sent.
struct Decided {
    decisions: Vec<Option<Result<AppendOk, AppendError>>>,
    carry: HashSet<usize>,
    needs_flush: bool,
}

/// What `rig_append_begin` returns: the state the batch is judged against, read under the lock.
#[derive(Deserialize)]
struct Lookup {
    now: DateTime<Utc>,
    /// Client-given ids already stored: (event_id, stream_id, version, position).
    stored: Vec<(Uuid, String, i64, i64)>,
    /// Current version of each stream of the batch that has events.
    /// The version of each stream of the batch that has events but no `issue_state` row.
    versions: HashMap<String, i64>,
    issues: Vec<IssueState>,
    agents: Vec<AgentRow>,
}

#[derive(Clone, Debug, Deserialize)]
struct AgentRow {
    agent_id: String,
    last_heartbeat_at: Option<DateTime<Utc>>,
    current_stream_id: Option<String>,
    status: Option<String>,
    updated_at: DateTime<Utc>,
}

/// Per-stream state as the batch sees it, updated as requests are accepted.
struct StreamHead {
    version: i64,
    issue: Option<IssueState>,
    issue_dirty: bool,
}

/// One event to insert: event `event` of job `job`, at `version` of the job's stream.
struct Row {
    job: usize,
    event: usize,
    version: i32,
    /// Who held the issue just before this event (the agent a release or a merge concerns).
    holder: Option<String>,
}

enum Decision {
    /// Accepted: rows `rows` of the insert.
    Accept {
        first_version: i64,
        rows: std::ops::Range<usize>,
    },
    Done(Result<AppendOk, AppendError>),
}

/// The agents a batch may touch, named by the batch itself: agent streams and `agent_id`s in
/// event data. (The current holders of its issues are added by `rig_append_begin`.)
fn named_agents(batch: &[Job]) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    for j in batch {
        if let StreamId::Agent(a) = &j.append.stream {
            names.push(a.clone());
        }
        for e in &j.append.events {
            if let Some(a) = e.data.get("agent_id").and_then(Value::as_str) {
                names.push(a.to_owned());
            }
        }
    }
    names.sort_unstable();
    names.dedup();
    names
}

async fn try_commit_batch(conn: &mut PgConnection, batch: &[Job]) -> Result<Decided, sqlx::Error> {
    let sids: Vec<String> = batch.iter().map(|j| j.append.stream.to_string()).collect();
    let client_ids: Vec<Uuid> = batch
        .iter()
        .flat_map(|j| j.append.events.iter().filter(|e| e.id_from_client).map(|e| e.event_id))
        .collect();
    let mut stream_names: Vec<&str> = sids.iter().map(String::as_str).collect();
    stream_names.sort_unstable();
    stream_names.dedup();
    let agents = named_agents(batch);

    let mut lookup = begin(conn, &client_ids, &stream_names, &agents).await?;
    let now = lookup.now;

    let stored: HashMap<Uuid, (String, i64, i64)> =
        lookup.stored.into_iter().map(|(id, s, v, p)| (id, (s, v, p))).collect();
    let mut issue_rows: HashMap<String, IssueState> = std::mem::take(&mut lookup.issues)
        .into_iter()
        .map(|st| (st.stream_id.clone(), st))
        .collect();
    let mut heads: HashMap<&str, StreamHead> = stream_names
        .iter()
        .map(|s| {
            let issue = issue_rows.remove(*s);
            let head = StreamHead {
                // An issue stream's version is kept in its row, written with every append.
                version: issue
                    .as_ref()
                    .map(|i| i64::from(i.version))
                    .or_else(|| lookup.versions.get(*s).copied())
                    .unwrap_or(0),
                issue,
                issue_dirty: false,
            };
            (*s, head)
        })
        .collect();

    // Judge each request in arrival order against the state left by the ones before it.
    let mut rows: Vec<Row> = Vec::new();
    let mut decisions: Vec<Decision> = Vec::with_capacity(batch.len());
    let mut carry: HashSet<usize> = HashSet::new();
    let mut ids_in_batch: HashSet<Uuid> = HashSet::new();
    for (i, job) in batch.iter().enumerate() {
        let a = &job.append;
        let sid = sids[i].as_str();
        if a.events
            .iter()
            .any(|e| e.id_from_client && ids_in_batch.contains(&e.event_id))
        {
            carry.insert(i);
            decisions.push(Decision::Done(Err(AppendError::Internal("carried".into()))));
            continue;
        }
        let found: Vec<Option<&(String, i64, i64)>> = a.events.iter().map(|e| stored.get(&e.event_id)).collect();
        if found.iter().all(|f| f.is_some_and(|(s, ..)| s == sid)) {
            let versions = found.iter().flatten().map(|(_, v, _)| *v);
            let positions = found.iter().flatten().map(|(_, _, p)| *p);
            decisions.push(Decision::Done(Ok(AppendOk::AlreadyStored(Appended {
                stream_id: sid.to_owned(),
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
        let head = heads.get_mut(sid).expect("every stream of the batch was looked up");
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
                let st = issue.get_or_insert_with(|| IssueState::new(sid, repo, *number, now));
                if let Event::IssueAssigned(_) = e.event {
                    if let Some(holder) = &st.agent_id {
                        refused = Some(holder.clone());
                        break;
                    }
                }
                holders.push(st.agent_id.clone());
                st.apply(&FoldInput {
                    version: (head.version + 1 + k as i64) as i32,
                    event: &e.event,
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
            if e.id_from_client {
                ids_in_batch.insert(e.event_id);
            }
            rows.push(Row {
                job: i,
                event: k,
                version: (first_version + k as i64) as i32,
                holder,
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
        // "Already stored" may rest on another batch's commit that is not durable yet.
        let answers_stored = decisions
            .iter()
            .any(|d| matches!(d, Decision::Done(Ok(AppendOk::AlreadyStored(_)))));
        sqlx::Executor::execute(&mut *conn, "ROLLBACK").await?;
        return Ok(Decided {
            decisions: finish(decisions, &[], &rows, &sids),
            carry,
            needs_flush: answers_stored,
        });
    }

    let issues: Vec<&IssueState> = heads
        .values()
        .filter(|h| h.issue_dirty)
        .filter_map(|h| h.issue.as_ref())
        .collect();
    let agents = fold_agents(batch, &sids, &rows, lookup.agents, now);
    let positions = write(conn, batch, &sids, &rows, &issues, &agents, now).await?;
    // `synchronous_commit` is off for this transaction: the commit releases the append lock
    // without waiting for its fsync, and the flusher waits for it before anyone is answered.
    sqlx::Executor::execute(&mut *conn, "COMMIT").await?;
    Ok(Decided {
        decisions: finish(decisions, &positions, &rows, &sids),
        carry,
        needs_flush: true,
    })
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

fn finish(
    decisions: Vec<Decision>,
    positions: &[i64],
    rows: &[Row],
    sids: &[String],
) -> Vec<Option<Result<AppendOk, AppendError>>> {
    decisions
        .into_iter()
        .map(|d| match d {
            Decision::Done(r) => Some(r),
            Decision::Accept {
                first_version,
                rows: range,
            } => Some(Ok(AppendOk::Created(Appended {
                stream_id: sids[rows[range.start].job].clone(),
                first_version,
                last_version: first_version + range.len() as i64 - 1,
                first_position: positions[range.start],
                last_position: positions[range.end - 1],
            }))),
        })
        .collect()
}

/// Everything the batch writes, in one statement: the events, `issue_state`, `agent_status`,
/// and the NOTIFY that wakes the consumers (delivered at commit). Returns each row's position.
async fn write(
    conn: &mut PgConnection,
    batch: &[Job],
    sids: &[String],
    rows: &[Row],
    issues: &[&IssueState],
    agents: &[AgentRow],
    now: DateTime<Utc>,
) -> Result<Vec<i64>, sqlx::Error> {
    let ev = |r: &Row| &batch[r.job].append.events[r.event];
    let ids: Vec<Uuid> = rows.iter().map(|r| ev(r).event_id).collect();
    macro_rules! issue_col {
        ($f:ident) => {
            issues.iter().map(|s| s.$f.clone()).collect::<Vec<_>>()
        };
    }
    // Identity values are drawn in the order of the SELECT, i.e. the order of the arrays (the
    // plan is a function scan WITH ORDINALITY feeding the insert, no sort: the order that also
    // keeps each stream's positions in version order).
    let (first, last, count): (Option<i64>, Option<i64>, i64) = sqlx::query_as(
        "WITH ins AS ( \
             INSERT INTO events (stream_id, version, event_id, event_type, schema_version, data, metadata, occurred_at, recorded_at) \
             SELECT s, v, id, t, sv, d::jsonb, m::jsonb, o, $9 \
             FROM unnest($1::text[], $2::int[], $3::uuid[], $4::text[], $5::int[], $6::text[], $7::text[], $8::timestamptz[]) \
                  WITH ORDINALITY AS u(s, v, id, t, sv, d, m, o, n) \
             ORDER BY n \
             RETURNING event_id, position), \
         issues AS ( \
             INSERT INTO issue_state (stream_id, repo, issue_number, status, agent_id, version, stuck_count, last_ci, \
                 pr_number, branch, title, first_event_at, assigned_at, last_heartbeat_at, done_at, updated_at) \
             SELECT * FROM unnest($10::text[], $11::text[], $12::bigint[], $13::text[], $14::text[], $15::int[], \
                 $16::int[], $17::text[], $18::bigint[], $19::text[], $20::text[], $21::timestamptz[], \
                 $22::timestamptz[], $23::timestamptz[], $24::timestamptz[], $25::timestamptz[]) \
             ON CONFLICT (stream_id) DO UPDATE SET status = excluded.status, agent_id = excluded.agent_id, \
                 version = excluded.version, stuck_count = excluded.stuck_count, last_ci = excluded.last_ci, \
                 pr_number = excluded.pr_number, branch = excluded.branch, title = excluded.title, \
                 assigned_at = excluded.assigned_at, last_heartbeat_at = excluded.last_heartbeat_at, \
                 done_at = excluded.done_at, updated_at = excluded.updated_at), \
         agents AS ( \
             INSERT INTO agent_status (agent_id, last_heartbeat_at, current_stream_id, status, updated_at) \
             SELECT * FROM unnest($26::text[], $27::timestamptz[], $28::text[], $29::text[], $30::timestamptz[]) \
             ON CONFLICT (agent_id) DO UPDATE SET last_heartbeat_at = excluded.last_heartbeat_at, \
                 current_stream_id = excluded.current_stream_id, status = excluded.status, \
                 updated_at = excluded.updated_at), \
         wake AS (SELECT pg_notify($31, (SELECT max(position) FROM ins)::text)) \
         SELECT min(ins.position), max(ins.position), count(*) FROM ins, wake",
    )
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
    .bind(agents.iter().map(|a| a.current_stream_id.as_deref()).collect::<Vec<_>>())
    .bind(agents.iter().map(|a| a.status.as_deref()).collect::<Vec<_>>())
    .bind(agents.iter().map(|a| a.updated_at).collect::<Vec<_>>())
    .bind(EVENTS_CHANNEL)
    .fetch_one(&mut *conn)
    .await?;
    // Only appends draw positions, each under the append lock, so a batch's positions are one
    // unbroken range in array order: three numbers come back instead of a row per event
    // (500-event appends, ten alternating pairs: 162 → 175 requests/s; single appends the same).
    // Should the range ever be broken (a hand-made INSERT drawing from the identity meanwhile, or
    // an identity altered to step by more than 1), each row's own position is read back instead.
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

/// `agent_status`: last heartbeat, current issue and status per agent, folded from the batch's
/// accepted events onto the rows `rig_append_begin` read. Returns the rows that changed.
fn fold_agents(
    batch: &[Job],
    sids: &[String],
    rows: &[Row],
    existing: Vec<AgentRow>,
    now: DateTime<Utc>,
) -> Vec<AgentRow> {
    let mut agents: HashMap<String, AgentRow> = existing.into_iter().map(|a| (a.agent_id.clone(), a)).collect();
    let mut touched: Vec<String> = Vec::new();
    for r in rows {
        let e = &batch[r.job].append.events[r.event];
        let named = match &e.event {
            Event::Heartbeat(h) => Some(h.agent_id.as_str()),
            Event::IssueAssigned(a) => Some(a.agent_id.as_str()),
            Event::IssueUnassigned(u) => u.agent_id.as_deref(),
            Event::AgentStuck(s) => Some(s.agent_id.as_str()),
            Event::WorkStarted(w) => Some(w.agent_id.as_str()),
            Event::IssueDone(_) | Event::Merged(_) => None,
            _ => continue,
        };
        let sid = sids[r.job].as_str();
        let agent = match &batch[r.job].append.stream {
            StreamId::Agent(a) => Some(a.clone()),
            StreamId::Issue { .. } => named.map(str::to_owned).or_else(|| r.holder.clone()),
        };
        let Some(agent) = agent else { continue };
        touched.push(agent.clone());
        let a = agents.entry(agent.clone()).or_insert_with(|| AgentRow {
            agent_id: agent,
            last_heartbeat_at: None,
            current_stream_id: None,
            status: None,
            updated_at: now,
        });
        a.updated_at = now;
        let on_issue = !sid.starts_with("agent:");
        match &e.event {
            Event::Heartbeat(h) => {
                a.last_heartbeat_at = Some(now);
                if let Some(s) = &h.status {
                    a.status = Some(s.clone());
                }
                a.current_stream_id = h.current_issue().resolve(sid, a.current_stream_id.as_deref());
            }
            Event::IssueAssigned(_) | Event::WorkStarted(_) if on_issue => {
                a.current_stream_id = Some(sid.to_owned());
                a.status = Some("working".to_owned());
            }
            // The agent is done with the issue: it no longer counts as its current one.
            Event::IssueUnassigned(_) | Event::IssueDone(_) | Event::Merged(_)
                if on_issue && a.current_stream_id.as_deref() == Some(sid) =>
            {
                a.current_stream_id = None;
                a.status = Some("idle".to_owned());
            }
            Event::AgentStuck(_) => a.status = Some("stuck".to_owned()),
            _ => {}
        }
    }
    touched.sort_unstable();
    touched.dedup();
    touched.into_iter().filter_map(|name| agents.remove(&name)).collect()
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
