//! The writer: the one place that writes `events`.
//!
//! Append requests are validated by the HTTP layer, then queued here. What the writer
//! guarantees:
//!
//! - **Each request has its own fate.** Concurrent requests share a transaction (group
//!   commit), yet a version conflict, a duplicate id or a refused claim answers that request
//!   alone and never fails or delays another in the batch; should the database refuse a
//!   statement, the batch is split until the request at fault is alone.
//! - **Expected-version checks** hold against the stream as it is when the request's turn
//!   comes: what is committed, plus the requests accepted before it in its batch.
//! - **Exclusive claims.** An issue held by an agent (from `ISSUE_ASSIGNED` until
//!   `ISSUE_UNASSIGNED`) cannot be assigned again: of N racing claims, exactly one wins, and
//!   the others get `already_assigned` naming the holder.
//! - **Idempotent retries.** A request whose ids are all stored in its stream is answered
//!   "already stored" with what was stored, and writes nothing.
//! - **No skipped positions.** The first statement of every append transaction takes
//!   `pg_advisory_xact_lock(APPEND_LOCK_KEY)` (inside `rig_append_begin`, migration 0021).
//!   Positions come from an identity column and are drawn only while the lock is held, and the
//!   lock is released after the commit is visible, so transactions commit in position order,
//!   across any number of ingest processes. A reader that sees position N therefore already sees
//!   every committed position below N, and consumers can tail with a plain
//!   `position > checkpoint`. A rolled-back append leaves a gap, never a late arrival. We chose
//!   this over reading below the xid horizon (`pg_snapshot_xmin`) because group commit already
//!   makes the serialised section one transaction per batch, so the lock costs little, and every
//!   reader (consumers, `rigctl`, ad-hoc SQL) stays simple and obviously right. The same lock
//!   makes the version checks and the claim rule race-free.
//! - **Durable before the answer.** No client is answered, not even with a refusal judged
//!   against a fresh commit, before the WAL holding what it is told is flushed.
//!
//! Where each part lives:
//!
//! - `queue.rs`: the queue, the writer task that drains it into batches, the split of a batch
//!   the database refused.
//! - `store.rs`: one batch's transaction (BEGIN with the lock and the reads, one write
//!   statement in `write.sql`, COMMIT) and the writer's connections.
//! - `judge.rs`: the decision for each request of a batch, a pure function of the batch and of
//!   what was read under the lock; also the `agent_status` rows the batch changes.
//! - `flusher.rs`: the WAL flush that answers wait for.
//!
//! Only the lock holder makes progress, so the time a batch holds the lock bounds the append
//! rate. What was measured, kept and dropped to make it short is in `docs/performance.md`.

mod flusher;
mod judge;
mod queue;
mod store;

use chrono::{DateTime, Utc};
use rig_events::{Event, StreamId};
use serde::Serialize;
use serde_json::Value;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
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

/// Called after a flush that made at least one committed append durable (a group commit may
/// cover many batches: it is called once for them). It must not block: the answers of the
/// appends it covers wait for it.
pub type OnCommit = Arc<dyn Fn() + Send + Sync>;

/// How a writer differs from the deployment's single log: whose log it is (the `tenant` label
/// of its metrics), what to do after each commit, and whether it gives its connections back
/// when idle.
#[derive(Clone)]
pub struct WriterOptions {
    /// The `tenant` label of `rig_ingest_events_appended_total`.
    pub tenant: String,
    /// Signalled after each flush that covered committed appends (see [`OnCommit`]).
    pub on_commit: Option<OnCommit>,
    /// Gives the writer's and the flusher's connections back to the pool after this long
    /// without work, so a quiet log holds no connection; `None` keeps them (the busy log's
    /// writer never pays for a new connection).
    pub release_idle_after: Option<std::time::Duration>,
    /// Shared by the writers of many logs (ingest's tenants): a writer or a flusher holds a
    /// connection only with a permit of its gate, and gives both back after a batch when the
    /// gate has none left, so that however many logs are busy, they hold at most as many
    /// connections as the gates have permits, taking turns.
    pub gates: Option<WriterGates>,
}

/// See [`WriterOptions::gates`]. Two gates, so that writers holding every permit can never keep
/// the flushers they wait for from a connection.
#[derive(Clone)]
pub struct WriterGates {
    pub writers: Arc<tokio::sync::Semaphore>,
    pub flushers: Arc<tokio::sync::Semaphore>,
}

impl WriterGates {
    /// Gates of `permits` permits each.
    pub fn new(permits: usize) -> WriterGates {
        WriterGates {
            writers: Arc::new(tokio::sync::Semaphore::new(permits)),
            flushers: Arc::new(tokio::sync::Semaphore::new(permits)),
        }
    }
}

impl Default for WriterOptions {
    fn default() -> Self {
        WriterOptions {
            tenant: "default".to_owned(),
            on_commit: None,
            release_idle_after: None,
            gates: None,
        }
    }
}

/// Handle to the writer task.
#[derive(Clone)]
pub struct Writer {
    tx: mpsc::Sender<queue::Job>,
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
    pub fn spawn(pool: sqlx::PgPool, max_batch: usize) -> Writer {
        Writer::spawn_with(pool, max_batch, WriterOptions::default())
    }

    /// [`Writer::spawn`] with [`WriterOptions`].
    pub fn spawn_with(pool: sqlx::PgPool, max_batch: usize, options: WriterOptions) -> Writer {
        // The append counters exist from the start (at 0), so a rate or an alert over them never
        // finds the series missing before the first append or the first conflict.
        metrics::counter!("rig_ingest_events_appended_total", "tenant" => options.tenant.clone()).increment(0);
        metrics::counter!("rig_ingest_idempotent_retries_total").increment(0);
        metrics::counter!("rig_ingest_batch_splits_total").increment(0);
        for kind in ["wrong_expected_version", "duplicate_event_id", "already_assigned"] {
            metrics::counter!("rig_ingest_conflicts_total", "kind" => kind).increment(0);
        }
        let (tx, rx) = mpsc::channel(max_batch * 4);
        let (durable_tx, durable_rx) = mpsc::channel(64);
        tokio::spawn(queue::writer_loop(
            pool.clone(),
            rx,
            durable_tx,
            max_batch,
            options.release_idle_after,
            options.gates.as_ref().map(|g| g.writers.clone()),
        ));
        tokio::spawn(flusher::flusher_loop(pool, durable_rx, options));
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

    /// Queues `append` and waits for its answer, which comes once what it reports is durable.
    pub async fn append(&self, append: Append) -> Result<AppendOk, AppendError> {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        let _in_flight = InFlight(&self.in_flight);
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(queue::Job { append, reply })
            .await
            .map_err(|_| AppendError::Internal("the writer has stopped".into()))?;
        rx.await
            .map_err(|_| AppendError::Internal("the writer dropped the request".into()))?
    }
}
