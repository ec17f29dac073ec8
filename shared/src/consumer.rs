//! The consumer runtime: the one loop every tailing worker runs (SPEC §5).
//!
//! What it promises:
//! - **No skip, no double apply.** Each batch is read, applied and checkpointed in ONE
//!   transaction. The checkpoint row is locked `FOR UPDATE` first and written back as a
//!   compare-and-set on `(position, epoch)`, so a second instance that sneaks in (or a reset that
//!   lands meanwhile) makes the batch roll back instead of applying twice. Reading with a plain
//!   `position > checkpoint` is safe because ingest commits appends in position order (see
//!   `bins/ingest/src/writer.rs`).
//! - **One active instance per name.** A session advisory lock, held on a dedicated connection;
//!   other replicas wait as hot standbys and take over when it is released (process death closes
//!   the connection). `rig_consumer_active` says which instance works.
//! - **Prompt and cheap.** LISTEN wakes the loop as soon as ingest commits; a poll every
//!   `poll_interval` covers notifications lost across reconnects; nothing spins while idle.
//! - **Transient errors** (database away, restarting) are retried with exponential backoff
//!   (`backon`). **Poison events** (a handler error that is not transient) are retried a few
//!   times one event at a time, then the consumer pauses at that position with the error stored
//!   in `checkpoints` and exported as `rig_consumer_paused`; it never skips silently.
//!   `rigctl skip` records a dead letter and moves it on.

use crate::db::{consumer_lock_key, is_transient, EVENTS_CHANNEL};
use crate::events::{StoredEvent, EVENT_COLUMNS};
use backon::{BackoffBuilder, ExponentialBuilder};
use sqlx::postgres::PgListener;
use sqlx::{Connection, PgConnection, PgPool};
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{watch, Notify};
use tokio_util::sync::CancellationToken;

/// Where a consumer without a checkpoint (or after a reset) starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartFrom {
    /// Replay the whole log.
    Beginning,
    /// Only what is appended from now on (the notifier: history is never posted again).
    Head,
}

/// What every tool needs to know about a consumer: its name, the tables it owns (emptied by a
/// reset) and where it starts. The one list of consumers in the system.
#[derive(Debug, Clone, Copy)]
pub struct ConsumerInfo {
    pub name: &'static str,
    pub tables: &'static [&'static str],
    pub start: StartFrom,
}

pub const TOKEN_PROJECTOR: ConsumerInfo =
    ConsumerInfo { name: "token-projector", tables: &["token_usage"], start: StartFrom::Beginning };
pub const COST_PROJECTOR: ConsumerInfo =
    ConsumerInfo { name: "cost-projector", tables: &["daily_cost"], start: StartFrom::Beginning };
pub const STALE_HEARTBEAT: ConsumerInfo =
    ConsumerInfo { name: "stale-heartbeat", tables: &["stale_heartbeat_issues"], start: StartFrom::Beginning };
/// The notifier's reset keeps undelivered outbox rows (they are messages owed to people) and
/// moves the checkpoint to the head.
pub const NOTIFIER: ConsumerInfo = ConsumerInfo { name: "notifier", tables: &[], start: StartFrom::Head };

pub const CONSUMERS: &[ConsumerInfo] = &[TOKEN_PROJECTOR, COST_PROJECTOR, STALE_HEARTBEAT, NOTIFIER];

pub fn consumer_info(name: &str) -> Option<&'static ConsumerInfo> {
    CONSUMERS.iter().find(|c| c.name == name)
}

/// Why a batch could not be applied.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error(transparent)]
    Db(#[from] sqlx::Error),
    /// The event at `position` cannot be applied, now or on retry.
    #[error("event at position {position}: {error}")]
    Poison { position: i64, error: String },
}

/// A read model fed by the log. Implementations aggregate the batch in memory and write it
/// with a few set-based statements: no per-event round trips.
pub trait Projection: Send + 'static {
    fn info(&self) -> &'static ConsumerInfo;

    /// Applies a batch (positions ascending) inside the consumer's transaction.
    fn apply<'a>(
        &'a mut self,
        tx: &'a mut PgConnection,
        events: &'a [StoredEvent],
    ) -> impl Future<Output = Result<(), ApplyError>> + Send + 'a;

    /// Whether the transaction must be durable at commit. Projections that are pure functions
    /// of the log may say no: a commit lost in a Postgres crash loses checkpoint and tables
    /// together, and the batch is simply applied again.
    fn durable_commit(&self) -> bool {
        false
    }

    /// Called after each committed batch.
    fn after_commit(&mut self) {}
}

#[derive(Debug, Clone)]
pub struct ConsumerConfig {
    pub batch_size: i64,
    pub poll_interval: Duration,
    /// Attempts at a failing event before the consumer pauses on it.
    pub poison_attempts: u32,
}

impl ConsumerConfig {
    pub fn from_settings(s: &crate::config::ConsumerSettings) -> Self {
        ConsumerConfig { batch_size: s.batch_size, poll_interval: s.poll_interval, poison_attempts: 3 }
    }
}

/// What one `run_once` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Applied { events: usize, position: i64 },
    /// Nothing new after `position`.
    Idle { position: i64 },
    /// Stopped at `position` by a poison event, waiting for an operator.
    Paused { position: i64 },
    /// The checkpoint moved under us (reset, skip, or another instance): nothing applied.
    Fenced,
    /// The batch failed with a non-transient error; it will be retried one event at a time.
    Failed { position: i64, error: String },
}

struct Checkpoint {
    position: i64,
    epoch: i64,
    paused_position: Option<i64>,
}

pub struct Consumer<P: Projection> {
    pool: PgPool,
    projection: P,
    cfg: ConsumerConfig,
    active: watch::Sender<bool>,
    /// Set after a non-transient failure: go one event at a time until past `until`.
    single_step_until: Option<i64>,
    failures_at: Option<(i64, u32)>,
    wake: Arc<Notify>,
}

/// Creates the checkpoint row when it does not exist yet (start of log, or head for the notifier).
pub async fn ensure_checkpoint(pool: &PgPool, info: &ConsumerInfo) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO checkpoints (consumer, position) \
         SELECT $1, CASE WHEN $2 THEN coalesce((SELECT max(position) FROM events), 0) ELSE 0 END \
         ON CONFLICT (consumer) DO NOTHING",
    )
    .bind(info.name)
    .bind(info.start == StartFrom::Head)
    .execute(pool)
    .await?;
    Ok(())
}

impl<P: Projection> Consumer<P> {
    pub fn new(pool: PgPool, projection: P, cfg: ConsumerConfig) -> Self {
        let (active, _) = watch::channel(false);
        Consumer {
            pool,
            projection,
            cfg,
            active,
            single_step_until: None,
            failures_at: None,
            wake: Arc::new(Notify::new()),
        }
    }

    pub fn name(&self) -> &'static str {
        self.projection.info().name
    }

    pub fn projection(&self) -> &P {
        &self.projection
    }

    /// Follows whether this instance is the active one (side tasks run only while it is).
    pub fn active_watch(&self) -> watch::Receiver<bool> {
        self.active.subscribe()
    }

    /// Applies at most one batch. Tests call this until `Idle` instead of sleeping.
    pub async fn run_once(&mut self) -> Result<Outcome, sqlx::Error> {
        let name = self.name();
        let started = Instant::now();
        let mut tx = self.pool.begin().await?;
        if !self.projection.durable_commit() {
            sqlx::query("SET LOCAL synchronous_commit = off").execute(&mut *tx).await?;
        }
        let cp = sqlx::query_as::<_, (i64, i64, Option<i64>)>(
            "SELECT position, epoch, paused_position FROM checkpoints WHERE consumer = $1 FOR UPDATE",
        )
        .bind(name)
        .fetch_optional(&mut *tx)
        .await?
        .map(|(position, epoch, paused_position)| Checkpoint { position, epoch, paused_position });
        let Some(cp) = cp else {
            tx.rollback().await?;
            ensure_checkpoint(&self.pool, self.projection.info()).await?;
            return Ok(Outcome::Fenced);
        };
        metrics::gauge!("rig_consumer_paused", "consumer" => name).set(if cp.paused_position.is_some() { 1.0 } else { 0.0 });
        metrics::gauge!("rig_consumer_position", "consumer" => name).set(cp.position as f64);
        if let Some(p) = cp.paused_position {
            tx.commit().await?;
            return Ok(Outcome::Paused { position: p });
        }
        let limit = match self.single_step_until {
            Some(until) if cp.position < until => 1,
            _ => {
                self.single_step_until = None;
                self.cfg.batch_size
            }
        };
        let events: Vec<StoredEvent> = sqlx::query_as(&format!(
            "SELECT {EVENT_COLUMNS} FROM events WHERE position > $1 ORDER BY position LIMIT $2"
        ))
        .bind(cp.position)
        .bind(limit)
        .fetch_all(&mut *tx)
        .await?;
        let Some(last) = events.last().map(|e| e.position) else {
            tx.commit().await?;
            return Ok(Outcome::Idle { position: cp.position });
        };
        let first = events[0].position;
        match self.projection.apply(&mut tx, &events).await {
            Ok(()) => {}
            Err(ApplyError::Db(e)) if is_transient(&e) => return Err(e),
            Err(err) => {
                let _ = tx.rollback().await;
                let (position, error) = match err {
                    ApplyError::Poison { position, error } => (position, error),
                    ApplyError::Db(e) => (if events.len() == 1 { first } else { last }, e.to_string()),
                };
                return self.failed(cp.position, first, position, error, events.len()).await;
            }
        }
        let moved = sqlx::query(
            "UPDATE checkpoints SET position = $2, last_error = NULL, updated_at = now() \
             WHERE consumer = $1 AND position = $3 AND epoch = $4",
        )
        .bind(name)
        .bind(last)
        .bind(cp.position)
        .bind(cp.epoch)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if moved != 1 {
            tx.rollback().await?;
            metrics::counter!("rig_consumer_errors_total", "consumer" => name, "kind" => "fenced").increment(1);
            return Ok(Outcome::Fenced);
        }
        tx.commit().await?;
        self.failures_at = None;
        self.projection.after_commit();
        metrics::counter!("rig_consumer_events_total", "consumer" => name).increment(events.len() as u64);
        metrics::gauge!("rig_consumer_position", "consumer" => name).set(last as f64);
        metrics::histogram!("rig_consumer_batch_duration_seconds", "consumer" => name)
            .record(started.elapsed().as_secs_f64());
        Ok(Outcome::Applied { events: events.len(), position: last })
    }

    /// A non-transient failure: narrow it down to one event, retry that a few times, then pause.
    async fn failed(
        &mut self,
        checkpoint: i64,
        first: i64,
        position: i64,
        error: String,
        batch_len: usize,
    ) -> Result<Outcome, sqlx::Error> {
        let name = self.name();
        metrics::counter!("rig_consumer_errors_total", "consumer" => name, "kind" => "handler").increment(1);
        if batch_len > 1 || position != first {
            // Find the culprit: from here on, one event per transaction until past it.
            self.single_step_until = Some(position.max(first));
            tracing::warn!(consumer = name, position, %error, "batch failed; retrying one event at a time");
            return Ok(Outcome::Failed { position, error });
        }
        let attempts = match self.failures_at {
            Some((p, n)) if p == position => n + 1,
            _ => 1,
        };
        self.failures_at = Some((position, attempts));
        if attempts < self.cfg.poison_attempts {
            tracing::warn!(consumer = name, position, attempt = attempts, %error, "event failed; will retry");
            return Ok(Outcome::Failed { position, error });
        }
        tracing::error!(
            consumer = name, position, %error,
            "poison event: consumer paused. Fix the cause and restart, or `rigctl skip {name} {position}` to dead-letter it"
        );
        sqlx::query(
            "UPDATE checkpoints SET paused_position = $2, last_error = $3, paused_at = now(), updated_at = now() \
             WHERE consumer = $1 AND position = $4",
        )
        .bind(name)
        .bind(position)
        .bind(&error)
        .bind(checkpoint)
        .execute(&self.pool)
        .await?;
        self.failures_at = None;
        self.single_step_until = None;
        metrics::gauge!("rig_consumer_paused", "consumer" => name).set(1.0);
        Ok(Outcome::Paused { position })
    }

    /// Runs until `shutdown`: waits to become the active instance, then tails the log.
    pub async fn run(mut self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let name = self.name();
        let info = self.projection.info();
        metrics::gauge!("rig_consumer_active", "consumer" => name).set(0.0);
        metrics::gauge!("rig_consumer_paused", "consumer" => name).set(0.0);
        self.spawn_listener(shutdown.clone());
        let mut backoff = new_backoff();
        while !shutdown.is_cancelled() {
            // 1. Become the active instance.
            let lock = match self.acquire_leadership(&shutdown).await {
                Ok(Some(conn)) => conn,
                Ok(None) => break,
                Err(e) => {
                    let delay = backoff.next().unwrap_or(Duration::from_secs(10));
                    tracing::warn!(consumer = name, error = %e, ?delay, "cannot reach the database; retrying");
                    metrics::counter!("rig_consumer_errors_total", "consumer" => name, "kind" => "transient").increment(1);
                    sleep_or_cancel(delay, &shutdown).await;
                    continue;
                }
            };
            tracing::info!(consumer = name, "active instance: tailing the log");
            metrics::gauge!("rig_consumer_active", "consumer" => name).set(1.0);
            self.active.send_replace(true);
            let r = self.tail(lock, &shutdown, info).await;
            self.active.send_replace(false);
            metrics::gauge!("rig_consumer_active", "consumer" => name).set(0.0);
            if let Err(e) = r {
                let delay = backoff.next().unwrap_or(Duration::from_secs(10));
                tracing::warn!(consumer = name, error = %e, ?delay, "lost the database; standing down and retrying");
                metrics::counter!("rig_consumer_errors_total", "consumer" => name, "kind" => "transient").increment(1);
                sleep_or_cancel(delay, &shutdown).await;
            } else {
                backoff = new_backoff();
            }
        }
        tracing::info!(consumer = name, "stopped");
        Ok(())
    }

    /// Tails while holding the leadership lock. Returns Ok on shutdown, Err when the database
    /// went away (the caller stands down, backs off and competes for the lock again).
    async fn tail(
        &mut self,
        mut lock: PgConnection,
        shutdown: &CancellationToken,
        info: &'static ConsumerInfo,
    ) -> Result<(), sqlx::Error> {
        let name = info.name;
        ensure_checkpoint(&self.pool, info).await?;
        let mut backoff = new_backoff();
        let mut lock_checked = Instant::now();
        let mut head_checked: Option<Instant> = None;
        loop {
            if shutdown.is_cancelled() {
                let _ = lock.close().await;
                return Ok(());
            }
            if lock_checked.elapsed() > Duration::from_secs(1) {
                // The lock lives as long as its connection; a dead connection means we are no
                // longer the active instance (the compare-and-set keeps us honest meanwhile).
                sqlx::query("SELECT 1").execute(&mut lock).await?;
                lock_checked = Instant::now();
            }
            let outcome = match self.run_once().await {
                Ok(o) => {
                    backoff = new_backoff();
                    o
                }
                Err(e) if is_transient(&e) => {
                    let delay = backoff.next().unwrap_or(Duration::from_secs(10));
                    tracing::warn!(consumer = name, error = %e, ?delay, "transient database error; backing off");
                    metrics::counter!("rig_consumer_errors_total", "consumer" => name, "kind" => "transient").increment(1);
                    sleep_or_cancel(delay, shutdown).await;
                    if sqlx::query("SELECT 1").execute(&mut lock).await.is_err() {
                        return Err(e);
                    }
                    continue;
                }
                Err(e) => return Err(e),
            };
            let refresh_head = head_checked.is_none_or(|t| t.elapsed() > Duration::from_millis(500))
                || !matches!(outcome, Outcome::Applied { .. });
            if refresh_head {
                self.export_head(&outcome).await;
                head_checked = Some(Instant::now());
            }
            match outcome {
                Outcome::Applied { events, .. } if events as i64 >= self.cfg.batch_size => {}
                Outcome::Applied { .. } | Outcome::Fenced => {}
                Outcome::Failed { .. } => {
                    let delay = backoff.next().unwrap_or(Duration::from_secs(10));
                    sleep_or_cancel(delay, shutdown).await;
                }
                Outcome::Idle { .. } | Outcome::Paused { .. } => {
                    tokio::select! {
                        _ = self.wake.notified() => {}
                        _ = tokio::time::sleep(self.cfg.poll_interval) => {}
                        _ = shutdown.cancelled() => {}
                    }
                }
            }
        }
    }

    async fn export_head(&self, outcome: &Outcome) {
        let name = self.name();
        let position = match outcome {
            Outcome::Applied { position, .. } | Outcome::Idle { position } => Some(*position),
            _ => None,
        };
        if let Ok(head) =
            sqlx::query_scalar::<_, Option<i64>>("SELECT max(position) FROM events").fetch_one(&self.pool).await
        {
            let head = head.unwrap_or(0);
            metrics::gauge!("rig_consumer_head_position", "consumer" => name).set(head as f64);
            if let Some(p) = position {
                metrics::gauge!("rig_consumer_lag_events", "consumer" => name).set((head - p).max(0) as f64);
            }
        }
    }

    /// Takes the session advisory lock on a dedicated connection, waiting as a hot standby while
    /// another instance holds it. `None` on shutdown.
    async fn acquire_leadership(&self, shutdown: &CancellationToken) -> Result<Option<PgConnection>, sqlx::Error> {
        let name = self.name();
        let key = consumer_lock_key(name);
        let mut conn = PgConnection::connect_with(&self.pool.connect_options()).await?;
        let mut logged = false;
        loop {
            let got: bool =
                sqlx::query_scalar("SELECT pg_try_advisory_lock($1)").bind(key).fetch_one(&mut conn).await?;
            if got {
                return Ok(Some(conn));
            }
            if !logged {
                tracing::info!(consumer = name, "another instance is active; waiting as hot standby");
                logged = true;
            }
            // A standby still reports where the active instance is.
            if let Ok((pos, head)) = sqlx::query_as::<_, (i64, Option<i64>)>(
                "SELECT c.position, (SELECT max(position) FROM events) FROM checkpoints c WHERE c.consumer = $1",
            )
            .bind(name)
            .fetch_one(&mut conn)
            .await
            {
                let head = head.unwrap_or(0);
                metrics::gauge!("rig_consumer_position", "consumer" => name).set(pos as f64);
                metrics::gauge!("rig_consumer_head_position", "consumer" => name).set(head as f64);
                metrics::gauge!("rig_consumer_lag_events", "consumer" => name).set((head - pos).max(0) as f64);
            }
            tokio::select! {
                _ = tokio::time::sleep(self.cfg.poll_interval.min(Duration::from_secs(1))) => {}
                _ = shutdown.cancelled() => {
                    let _ = conn.close().await;
                    return Ok(None);
                }
            }
        }
    }

    /// LISTEN in its own task; every notification (and every reconnect) wakes the loop.
    fn spawn_listener(&self, shutdown: CancellationToken) {
        let pool = self.pool.clone();
        let wake = self.wake.clone();
        tokio::spawn(async move {
            let mut backoff = new_backoff();
            while !shutdown.is_cancelled() {
                let mut listener = match PgListener::connect_with(&pool).await {
                    Ok(l) => l,
                    Err(_) => {
                        sleep_or_cancel(backoff.next().unwrap_or(Duration::from_secs(10)), &shutdown).await;
                        continue;
                    }
                };
                if listener.listen(EVENTS_CHANNEL).await.is_err() {
                    sleep_or_cancel(backoff.next().unwrap_or(Duration::from_secs(10)), &shutdown).await;
                    continue;
                }
                backoff = new_backoff();
                // Anything appended while we were not listening is found by this wake-up.
                wake.notify_one();
                loop {
                    tokio::select! {
                        r = listener.try_recv() => match r {
                            Ok(Some(_)) => wake.notify_one(),
                            // Connection lost: reconnect (and wake once, above).
                            Ok(None) | Err(_) => break,
                        },
                        _ = shutdown.cancelled() => return,
                    }
                }
            }
        });
    }
}

fn new_backoff() -> impl Iterator<Item = Duration> {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(100))
        .with_max_delay(Duration::from_secs(10))
        .with_jitter()
        .without_max_times()
        .build()
}

pub async fn sleep_or_cancel(d: Duration, shutdown: &CancellationToken) {
    tokio::select! {
        _ = tokio::time::sleep(d) => {}
        _ = shutdown.cancelled() => {}
    }
}

/// Empties a consumer's tables and moves its checkpoint to its start, in one transaction. Safe
/// while the consumer runs: the checkpoint row lock waits for its batch in flight, and the epoch
/// bump fences any batch read before the reset.
pub async fn reset(pool: &PgPool, info: &ConsumerInfo) -> Result<i64, sqlx::Error> {
    let mut tx = pool.begin().await?;
    sqlx::query("INSERT INTO checkpoints (consumer) VALUES ($1) ON CONFLICT DO NOTHING")
        .bind(info.name)
        .execute(&mut *tx)
        .await?;
    sqlx::query("SELECT 1 FROM checkpoints WHERE consumer = $1 FOR UPDATE")
        .bind(info.name)
        .execute(&mut *tx)
        .await?;
    for table in info.tables {
        sqlx::query(&format!("DELETE FROM {table}")).execute(&mut *tx).await?;
    }
    let start: i64 = sqlx::query_scalar(
        "UPDATE checkpoints SET position = CASE WHEN $2 THEN coalesce((SELECT max(position) FROM events), 0) ELSE 0 END, \
         epoch = epoch + 1, paused_position = NULL, paused_at = NULL, last_error = NULL, updated_at = now() \
         WHERE consumer = $1 RETURNING position",
    )
    .bind(info.name)
    .bind(info.start == StartFrom::Head)
    .fetch_one(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(start)
}

#[derive(Debug, thiserror::Error)]
pub enum SkipError {
    #[error("consumer {0} has no checkpoint yet")]
    NoCheckpoint(String),
    #[error("there is no event at position {0}")]
    NoEvent(i64),
    #[error("position {position} is not the next event of {consumer} (its checkpoint is {checkpoint}, next event {next:?}); skip only the event it stopped at")]
    NotNext { consumer: String, position: i64, checkpoint: i64, next: Option<i64> },
    #[error(transparent)]
    Db(#[from] sqlx::Error),
}

/// Dead-letters the event at `position` (which must be the consumer's next event) and moves
/// the checkpoint past it, clearing a pause.
pub async fn skip(pool: &PgPool, consumer: &str, position: i64) -> Result<(), SkipError> {
    let mut tx = pool.begin().await?;
    let cp: Option<(i64, Option<String>)> =
        sqlx::query_as("SELECT position, last_error FROM checkpoints WHERE consumer = $1 FOR UPDATE")
            .bind(consumer)
            .fetch_optional(&mut *tx)
            .await?;
    let Some((checkpoint, last_error)) = cp else { return Err(SkipError::NoCheckpoint(consumer.to_owned())) };
    let next: Option<i64> = sqlx::query_scalar("SELECT min(position) FROM events WHERE position > $1")
        .bind(checkpoint)
        .fetch_one(&mut *tx)
        .await?;
    let event: Option<(uuid::Uuid, String)> =
        sqlx::query_as("SELECT event_id, event_type FROM events WHERE position = $1")
            .bind(position)
            .fetch_optional(&mut *tx)
            .await?;
    let Some((event_id, event_type)) = event else { return Err(SkipError::NoEvent(position)) };
    if next != Some(position) {
        return Err(SkipError::NotNext { consumer: consumer.to_owned(), position, checkpoint, next });
    }
    sqlx::query(
        "INSERT INTO dead_letters (consumer, position, event_id, event_type, error) VALUES ($1, $2, $3, $4, $5) \
         ON CONFLICT (consumer, position) DO NOTHING",
    )
    .bind(consumer)
    .bind(position)
    .bind(event_id)
    .bind(&event_type)
    .bind(last_error.unwrap_or_else(|| "skipped by operator".into()))
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "UPDATE checkpoints SET position = $2, paused_position = NULL, paused_at = NULL, last_error = NULL, \
         epoch = epoch + 1, updated_at = now() WHERE consumer = $1",
    )
    .bind(consumer)
    .bind(position)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(())
}

/// A consumer's status as `rigctl consumers` shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ConsumerStatus {
    pub consumer: String,
    pub position: i64,
    pub head: i64,
    pub lag: i64,
    pub active: bool,
    pub paused: bool,
    pub last_error: Option<String>,
}

/// Status of every known consumer (and any other checkpoint row found).
pub async fn status(pool: &PgPool) -> Result<Vec<ConsumerStatus>, sqlx::Error> {
    let head: i64 = sqlx::query_scalar("SELECT coalesce(max(position), 0) FROM events").fetch_one(pool).await?;
    let rows: Vec<(String, i64, Option<i64>, Option<String>)> =
        sqlx::query_as("SELECT consumer, position, paused_position, last_error FROM checkpoints")
            .fetch_all(pool)
            .await?;
    let mut names: Vec<String> = CONSUMERS.iter().map(|c| c.name.to_owned()).collect();
    for (n, ..) in &rows {
        if !names.contains(n) {
            names.push(n.clone());
        }
    }
    let mut out = Vec::new();
    for name in names {
        let row = rows.iter().find(|r| r.0 == name);
        let position = row.map_or(0, |r| r.1);
        // Exact lag: events not yet applied (rolled-back appends leave gaps in positions).
        let lag: i64 = sqlx::query_scalar("SELECT count(*) FROM events WHERE position > $1")
            .bind(position)
            .fetch_one(pool)
            .await?;
        // The active instance holds the session advisory lock.
        let active: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND granted \
             AND ((classid::bigint << 32) | objid::bigint) = $1 AND database = (SELECT oid FROM pg_database WHERE datname = current_database()))",
        )
        .bind(consumer_lock_key(&name))
        .fetch_one(pool)
        .await?;
        out.push(ConsumerStatus {
            consumer: name,
            position,
            head,
            lag,
            active,
            paused: row.is_some_and(|r| r.2.is_some()),
            last_error: row.and_then(|r| r.3.clone()),
        });
    }
    Ok(out)
}
