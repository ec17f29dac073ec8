//! The consumer runtime: the one loop every tailing worker runs.
//!
//! What it promises:
//! - **No skip, no double apply.** Each batch is read, applied and checkpointed in ONE
//!   transaction. The checkpoint row is locked `FOR UPDATE` first and written back as a
//!   compare-and-set on `(position, epoch)`, so a second instance that sneaks in (or a reset that
//!   lands meanwhile) makes the batch roll back instead of applying twice. Reading with a plain
//!   `position > checkpoint` is safe because ingest commits appends in position order (the
//!   argument, with its code and tests: `docs/invariants.md`).
//! - **One active instance per name.** A session advisory lock, held on a dedicated connection;
//!   other replicas wait as hot standbys and take over when it is released (process death closes
//!   the connection). `rig_consumer_active` says which instance works.
//! - **Prompt and cheap.** LISTEN wakes the loop as soon as ingest commits; a poll every
//!   `poll_interval` covers notifications lost across reconnects; nothing spins while idle.
//! - **Bounded memory, fast catch-up.** Events are read in chunks of `batch_size`. A projection
//!   that sums in memory may let one transaction carry many chunks while it is behind
//!   (`catch_up_chunks`): the rest of such a batch streams in on a second connection, decoded
//!   while earlier chunks are applied, and is written once (`flush`). A projection may also
//!   declare the event types it wants (others are not fetched; the checkpoint still passes
//!   them) and that it needs only the lean columns (`lean_events`).
//! - **Transient errors** (database away, restarting) are retried with exponential backoff
//!   (`backon`). **Poison events** (a handler error that is not transient) are narrowed down:
//!   what precedes the failing event is applied in bulk, the event itself is retried alone a few
//!   times, then the consumer pauses at that position with the error stored in `checkpoints` and
//!   exported as `rig_consumer_paused`; it never skips silently. `rigctl skip` records a dead
//!   letter and moves it on.

use backon::{BackoffBuilder, ExponentialBuilder};
use futures::TryStreamExt;
use rig_events::{StoredEvent, EVENT_COLUMNS};
use rig_log::db::is_transient;
use sqlx::postgres::PgRow;
use sqlx::{PgConnection, PgPool, Row};
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

mod fleet;
mod worker;
pub use fleet::{idle_poll, tenant_lock_key, Fleet, TenantCtx};
pub use worker::{companion, run_projection, run_worker, Companion, Worker};

/// Where a consumer without a checkpoint (or after a reset) starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartFrom {
    /// Replay the whole log.
    Beginning,
    /// Only what is appended from now on (the notifier: history is never posted again).
    Head,
}

/// What every tool needs to know about a consumer: its name, the tables it owns (emptied by a
/// reset) and where it starts. The list of the system's consumers is `rig_projections::CONSUMERS`.
#[derive(Debug, Clone, Copy)]
pub struct ConsumerInfo {
    pub name: &'static str,
    pub tables: &'static [&'static str],
    pub start: StartFrom,
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
///
/// One transaction carries one batch: `begin`, then one or more `apply` calls (chunks of at most
/// `batch_size` events, positions ascending across calls), then `flush`, then the checkpoint.
/// If anything fails the transaction rolls back and the next one starts with `begin` again.
pub trait Projection: Send + Sync + 'static {
    fn info(&self) -> &'static ConsumerInfo;

    /// Applies a chunk of events (positions ascending) inside the consumer's transaction.
    fn apply<'a>(
        &'a mut self,
        tx: &'a mut PgConnection,
        events: &'a [StoredEvent],
    ) -> impl Future<Output = Result<(), ApplyError>> + Send + 'a;

    /// Writes what the transaction's `apply` calls gathered in memory, if they deferred writing;
    /// called once, after the last `apply` and before the checkpoint is written.
    fn flush<'a>(&'a mut self, _tx: &'a mut PgConnection) -> impl Future<Output = Result<(), ApplyError>> + Send + 'a {
        async { Ok(()) }
    }

    /// Called before a transaction's first `apply`: forget whatever was gathered for a
    /// transaction that did not commit.
    fn begin(&mut self) {}

    /// Whether the transaction must be durable at commit. Projections that are pure functions
    /// of the log may say no: a commit lost in a Postgres crash loses checkpoint and tables
    /// together, and the batch is simply applied again.
    fn durable_commit(&self) -> bool {
        false
    }

    /// Called after each committed batch.
    fn after_commit(&mut self) {}

    /// The event types `apply` wants; `None` means all. Events of other types are not fetched
    /// at all (less to read and decode), yet the checkpoint moves past them as usual.
    fn event_types(&self) -> Option<&'static [&'static str]> {
        None
    }

    /// How many chunks of `batch_size` events one transaction may carry while the consumer is
    /// behind (memory stays bounded by a few chunks). Worth raising for projections that sum in
    /// memory and write in `flush`: a bigger transaction means fewer row writes and commits per
    /// event. Caught up, a transaction carries what is there, at most one chunk.
    fn catch_up_chunks(&self) -> i64 {
        1
    }

    /// Whether `apply` reads only `position`, `stream_id`, `event_type`, `data`, `occurred_at`
    /// and `recorded_at`. If so the other columns are not read at all, and the events `apply`
    /// gets carry empty values there (nil `event_id`, `version` and `schema_version` 0, null
    /// `metadata`); their `data` comes unparsed, as text in `data_text` (`data` is null), for
    /// `usage::read_usage` or a reader of its own.
    fn lean_events(&self) -> bool {
        false
    }
}

#[derive(Debug, Clone)]
pub struct ConsumerConfig {
    pub batch_size: i64,
    pub poll_interval: Duration,
    /// Attempts at a failing event before the consumer pauses on it.
    pub poison_attempts: u32,
}

impl ConsumerConfig {
    pub fn from_settings(s: &rig_ops::config::ConsumerSettings) -> Self {
        ConsumerConfig {
            batch_size: s.batch_size,
            poll_interval: s.poll_interval,
            poison_attempts: 3,
        }
    }
}

/// What one `run_once` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Applied {
        events: usize,
        position: i64,
    },
    /// Nothing new after `position`.
    Idle {
        position: i64,
    },
    /// Stopped at `position` by a poison event, waiting for an operator; everything up to
    /// `checkpoint` is applied.
    Paused {
        position: i64,
        checkpoint: i64,
    },
    /// The checkpoint moved under us (reset, skip, or another instance): nothing applied.
    Fenced,
    /// The batch failed with a non-transient error; it is narrowed down to the failing event.
    Failed {
        position: i64,
        error: String,
    },
}

/// Positions that may hold the event a failed batch choked on. What precedes `from` is applied
/// in bulk; from there on one event per transaction until past `to`.
#[derive(Debug, Clone, Copy)]
struct Suspects {
    from: i64,
    to: i64,
}

/// One read of the log: the wanted events among the positions up to `upto`.
struct Chunk {
    events: Vec<StoredEvent>,
    /// The last position covered (of any type); `None` when nothing new.
    upto: Option<i64>,
    /// Positions covered, of any type.
    scanned: usize,
}

/// The rest of a catch-up batch, arriving from the reader task.
struct Rest {
    chunks: tokio::sync::mpsc::Receiver<Result<Vec<StoredEvent>, sqlx::Error>>,
    reader: Reader,
    upto: i64,
    scanned: usize,
}

/// The reader task of a catch-up batch; stopped when the batch is abandoned.
struct Reader(tokio::task::JoinHandle<()>);

impl Reader {
    /// True when the reader ended normally (its last chunk, or its error, was delivered).
    async fn finished(mut self) -> bool {
        (&mut self.0).await.is_ok()
    }
}

impl Drop for Reader {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Columns read for projections with `lean_events`, in the order `decode_event` expects.
/// `data` comes as text, unparsed, in `StoredEvent::data_text`.
const LEAN_COLUMNS: &str = "position, stream_id, event_type, schema_version, data::text, occurred_at, recorded_at";

/// Decodes a row of `EVENT_COLUMNS` (or `LEAN_COLUMNS`) by index: no lookups by name per row.
fn decode_event(row: &PgRow, lean: bool) -> Result<StoredEvent, sqlx::Error> {
    if lean {
        return Ok(StoredEvent {
            position: row.try_get(0)?,
            stream_id: row.try_get(1)?,
            version: 0,
            event_id: uuid::Uuid::nil(),
            event_type: row.try_get(2)?,
            // The reading of `data` depends on it (`rig_events::Event::parse`).
            schema_version: row.try_get(3)?,
            data: serde_json::Value::Null,
            metadata: serde_json::Value::Null,
            occurred_at: row.try_get(5)?,
            recorded_at: row.try_get(6)?,
            data_text: Some(row.try_get(4)?),
        });
    }
    Ok(StoredEvent {
        position: row.try_get(0)?,
        stream_id: row.try_get(1)?,
        version: row.try_get(2)?,
        event_id: row.try_get(3)?,
        event_type: row.try_get(4)?,
        schema_version: row.try_get(5)?,
        data: row.try_get(6)?,
        metadata: row.try_get(7)?,
        occurred_at: row.try_get(8)?,
        recorded_at: row.try_get(9)?,
        data_text: None,
    })
}

/// The last of the next `limit` positions after `after` (up to `cap`), and how many there
/// are, from the primary key alone; `None` when there are none.
async fn positions_after(
    tx: &mut PgConnection,
    after: i64,
    cap: i64,
    limit: i64,
) -> Result<Option<(i64, usize)>, sqlx::Error> {
    let (upto, n): (Option<i64>, i64) = sqlx::query_as(
        "SELECT max(position), count(*) FROM \
         (SELECT position FROM events WHERE position > $1 AND position <= $2 ORDER BY position LIMIT $3) c",
    )
    .bind(after)
    .bind(cap)
    .bind(limit)
    .fetch_one(&mut *tx)
    .await?;
    Ok(upto.map(|u| (u, usize::try_from(n).unwrap_or(0))))
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
    /// The tenant whose log this is (`default` for the control database's own).
    tenant: String,
    /// Where a batch waits for its turn, when the process limits how many run at once.
    gate: Option<Arc<tokio::sync::Semaphore>>,
    /// Set after a non-transient failure: where the failing event may be.
    suspect: Option<Suspects>,
    failures_at: Option<(i64, u32)>,
    wake: Arc<Notify>,
    /// The log's head as the last batch saw it (at its end when it applied something), for the
    /// head and lag gauges; `None` when that batch read none.
    head: Option<i64>,
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
        Consumer {
            pool,
            projection,
            cfg,
            tenant: rig_tenants::DEFAULT.to_owned(),
            gate: None,
            suspect: None,
            failures_at: None,
            wake: Arc::new(Notify::new()),
            head: None,
        }
    }

    pub fn name(&self) -> &'static str {
        self.projection.info().name
    }

    pub fn projection(&self) -> &P {
        &self.projection
    }

    /// Each batch first takes a turn from `gate` (and gives it back when done): the fleet bounds
    /// its tenants' batches, and with them their connections, this way.
    pub fn gated(mut self, gate: Arc<tokio::sync::Semaphore>) -> Self {
        self.gate = Some(gate);
        self
    }

    /// The consumer of `tenant`'s log, woken by `wake` (which the fleet's LISTEN signals).
    pub fn for_tenant(mut self, tenant: &str, wake: Arc<Notify>) -> Self {
        self.tenant = tenant.to_owned();
        self.wake = wake;
        self
    }

    /// Applies at most one batch. Tests call this until `Idle` instead of sleeping.
    pub async fn run_once(&mut self) -> Result<Outcome, sqlx::Error> {
        let name = self.name();
        let started = Instant::now();
        self.head = None;
        let mut tx = self.pool.begin().await?;
        // One round trip: the checkpoint row locked, the commit made non-durable where the
        // projection allows it (`durable_commit`), and the log's head for the lag gauges. At a
        // steady trickle of appends each batch carries an event or two, so its round trips are
        // what it costs.
        let cp = sqlx::query_as::<_, (i64, i64, Option<i64>, Option<i64>)>(
            "SELECT c.position, c.epoch, c.paused_position, (SELECT max(position) FROM events) \
             FROM checkpoints c, \
                  set_config('synchronous_commit', \
                             CASE WHEN $2 THEN current_setting('synchronous_commit') ELSE 'off' END, true) \
             WHERE c.consumer = $1 FOR UPDATE OF c",
        )
        .bind(name)
        .bind(self.projection.durable_commit())
        .fetch_optional(&mut *tx)
        .await?
        .map(|(position, epoch, paused_position, head)| {
            self.head = Some(head.unwrap_or(0));
            Checkpoint {
                position,
                epoch,
                paused_position,
            }
        });
        let Some(cp) = cp else {
            tx.rollback().await?;
            ensure_checkpoint(&self.pool, self.projection.info()).await?;
            return Ok(Outcome::Fenced);
        };
        metrics::gauge!("rig_consumer_paused", "consumer" => name, "tenant" => self.tenant.clone())
            .set(if cp.paused_position.is_some() { 1.0 } else { 0.0 });
        metrics::gauge!("rig_consumer_position", "consumer" => name, "tenant" => self.tenant.clone())
            .set(cp.position as f64);
        if let Some(p) = cp.paused_position {
            tx.commit().await?;
            return Ok(Outcome::Paused {
                position: p,
                checkpoint: cp.position,
            });
        }

        // What this transaction may read: normally up to `catch_up_chunks` chunks of
        // `batch_size`; after a failure, what precedes the suspects, or one suspect alone.
        let batch = self.cfg.batch_size;
        let most = batch.saturating_mul(self.projection.catch_up_chunks().max(1));
        let (mut limit, mut cap, mut most) = match self.suspect {
            Some(s) if cp.position < s.to && cp.position + 1 >= s.from => (1, i64::MAX, 1),
            Some(s) if cp.position < s.to => (batch, s.from - 1, most),
            _ => {
                self.suspect = None;
                (batch, i64::MAX, most)
            }
        };
        self.projection.begin();
        let mut position = cp.position;
        let mut scanned = 0usize;
        let mut applied = 0usize;
        let mut first_applied: Option<i64> = None;
        loop {
            let chunk = self.read_chunk(&mut tx, position, cap, limit).await?;
            let Some(upto) = chunk.upto else {
                if scanned == 0 && cap != i64::MAX {
                    // Nothing precedes the suspects any more: the first one goes alone.
                    (limit, cap, most) = (1, i64::MAX, 1);
                    continue;
                }
                break;
            };
            if let (Some(f), Some(l)) = (chunk.events.first(), chunk.events.last()) {
                let (first, last) = (f.position, l.position);
                first_applied.get_or_insert(first);
                applied += chunk.events.len();
                if let Err(err) = self.projection.apply(&mut tx, &chunk.events).await {
                    // An unexplained error of a multi-event chunk: the culprit is in that chunk.
                    let suspects = if chunk.events.len() == 1 {
                        (first, first)
                    } else {
                        (first, last)
                    };
                    return self.failed(tx, cp.position, err, suspects, applied).await;
                }
            }
            position = upto;
            scanned += chunk.scanned;
            if (chunk.scanned as i64) < limit || scanned as i64 >= most {
                break;
            }
            // Behind: the rest of the batch streams in on a second connection, decoded while the
            // chunks before it are applied.
            let rest = self
                .read_rest(&mut tx, position, cap, most - scanned as i64, limit)
                .await?;
            let Some(rest) = rest else { break };
            let mut chunks = rest.chunks;
            while let Some(chunk) = chunks.recv().await {
                let events = chunk?;
                let (Some(f), Some(l)) = (events.first(), events.last()) else {
                    continue;
                };
                let (first, last) = (f.position, l.position);
                first_applied.get_or_insert(first);
                applied += events.len();
                if let Err(err) = self.projection.apply(&mut tx, &events).await {
                    let suspects = if events.len() == 1 {
                        (first, first)
                    } else {
                        (first, last)
                    };
                    return self.failed(tx, cp.position, err, suspects, applied).await;
                }
            }
            if !rest.reader.finished().await {
                return Err(sqlx::Error::WorkerCrashed);
            }
            position = rest.upto;
            scanned += rest.scanned;
            break;
        }
        if scanned == 0 {
            tx.commit().await?;
            return Ok(Outcome::Idle { position: cp.position });
        }
        if let Some(first) = first_applied {
            if let Err(err) = self.projection.flush(&mut tx).await {
                // The write covers the whole batch: any event of it may be the culprit.
                return self.failed(tx, cp.position, err, (first, position), applied).await;
            }
        }
        let moved = sqlx::query_scalar::<_, Option<i64>>(
            "UPDATE checkpoints SET position = $2, last_error = NULL, updated_at = now() \
             WHERE consumer = $1 AND position = $3 AND epoch = $4 \
             RETURNING (SELECT max(position) FROM events)",
        )
        .bind(name)
        .bind(position)
        .bind(cp.position)
        .bind(cp.epoch)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(head) = moved else {
            tx.rollback().await?;
            metrics::counter!("rig_consumer_errors_total", "consumer" => name, "tenant" => self.tenant.clone(), "kind" => "fenced").increment(1);
            return Ok(Outcome::Fenced);
        };
        tx.commit().await?;
        self.head = Some(head.unwrap_or(0));
        self.failures_at = None;
        self.projection.after_commit();
        metrics::counter!("rig_consumer_events_total", "consumer" => name, "tenant" => self.tenant.clone())
            .increment(scanned as u64);
        metrics::gauge!("rig_consumer_position", "consumer" => name, "tenant" => self.tenant.clone())
            .set(position as f64);
        metrics::histogram!("rig_consumer_batch_duration_seconds", "consumer" => name, "tenant" => self.tenant.clone())
            .record(started.elapsed().as_secs_f64());
        Ok(Outcome::Applied {
            events: scanned,
            position,
        })
    }

    /// Reads the next chunk: at most `limit` positions after `after` and up to `cap`, of which
    /// only the wanted types are fetched.
    async fn read_chunk(&self, tx: &mut PgConnection, after: i64, cap: i64, limit: i64) -> Result<Chunk, sqlx::Error> {
        let lean = self.projection.lean_events();
        let Some(types) = self.projection.event_types() else {
            let sql = format!("{} LIMIT $3", self.select_events());
            let events: Vec<StoredEvent> = sqlx::query(&sql)
                .bind(after)
                .bind(cap)
                .bind(limit)
                .try_map(|row: PgRow| decode_event(&row, lean))
                .fetch_all(&mut *tx)
                .await?;
            let upto = events.last().map(|e| e.position);
            let scanned = events.len();
            return Ok(Chunk { events, upto, scanned });
        };
        let Some((upto, scanned)) = positions_after(tx, after, cap, limit).await? else {
            return Ok(Chunk {
                events: Vec::new(),
                upto: None,
                scanned: 0,
            });
        };
        let events: Vec<StoredEvent> = sqlx::query(&self.select_events())
            .bind(after)
            .bind(upto)
            .bind(types)
            .try_map(|row: PgRow| decode_event(&row, lean))
            .fetch_all(&mut *tx)
            .await?;
        Ok(Chunk {
            events,
            upto: Some(upto),
            scanned,
        })
    }

    /// The events after `$1` up to `$2` (and of the types in `$3`, when the projection says),
    /// in position order.
    fn select_events(&self) -> String {
        let columns = if self.projection.lean_events() {
            LEAN_COLUMNS
        } else {
            EVENT_COLUMNS
        };
        let types = if self.projection.event_types().is_some() {
            " AND event_type = ANY($3)"
        } else {
            ""
        };
        format!("SELECT {columns} FROM events WHERE position > $1 AND position <= $2{types} ORDER BY position")
    }

    /// The rest of a catch-up batch: the next `most` positions after `after` (up to `cap`),
    /// streamed by a reader task on its own connection into chunks of `limit` events. Its
    /// snapshot sees every position up to `upto`: they are all committed already (ingest commits
    /// in position order and `upto` is visible here).
    async fn read_rest(
        &self,
        tx: &mut PgConnection,
        after: i64,
        cap: i64,
        most: i64,
        limit: i64,
    ) -> Result<Option<Rest>, sqlx::Error> {
        let Some((upto, scanned)) = positions_after(tx, after, cap, most).await? else {
            return Ok(None);
        };
        let (send, chunks) = tokio::sync::mpsc::channel::<Result<Vec<StoredEvent>, sqlx::Error>>(2);
        let (pool, sql, types, lean) = (
            self.pool.clone(),
            self.select_events(),
            self.projection.event_types(),
            self.projection.lean_events(),
        );
        let chunk_len = usize::try_from(limit).unwrap_or(1).max(1);
        let reader = tokio::spawn(async move {
            let mut conn = match pool.acquire().await {
                Ok(c) => c,
                Err(e) => {
                    let _ = send.send(Err(e)).await;
                    return;
                }
            };
            let mut query = sqlx::query(&sql).bind(after).bind(upto);
            if let Some(types) = types {
                query = query.bind(types);
            }
            let mut rows = query.try_map(|row: PgRow| decode_event(&row, lean)).fetch(&mut *conn);
            let mut chunk = Vec::with_capacity(chunk_len);
            loop {
                match rows.try_next().await {
                    Ok(Some(event)) => {
                        chunk.push(event);
                        if chunk.len() == chunk_len {
                            let full = std::mem::replace(&mut chunk, Vec::with_capacity(chunk_len));
                            if send.send(Ok(full)).await.is_err() {
                                return; // the batch failed; nobody listens any more
                            }
                        }
                    }
                    Ok(None) => {
                        if !chunk.is_empty() {
                            let _ = send.send(Ok(chunk)).await;
                        }
                        return;
                    }
                    Err(e) => {
                        let _ = send.send(Err(e)).await;
                        return;
                    }
                }
            }
        });
        Ok(Some(Rest {
            chunks,
            reader: Reader(reader),
            upto,
            scanned,
        }))
    }

    /// A batch failed. Transient database errors go back to the caller (backoff and retry);
    /// anything else is narrowed down to one event, retried a few times alone, then the
    /// consumer pauses on it. `suspects` is the range of positions that may hold the culprit;
    /// `applied` how many events the failed transaction had applied.
    async fn failed(
        &mut self,
        tx: sqlx::Transaction<'_, sqlx::Postgres>,
        checkpoint: i64,
        err: ApplyError,
        suspects: (i64, i64),
        applied: usize,
    ) -> Result<Outcome, sqlx::Error> {
        let _ = tx.rollback().await;
        let ((from, to), error) = match err {
            ApplyError::Db(e) if is_transient(&e) => return Err(e),
            ApplyError::Db(e) => (suspects, e.to_string()),
            ApplyError::Poison { position, error } => ((position, position), error),
        };
        let name = self.name();
        metrics::counter!("rig_consumer_errors_total", "consumer" => name, "tenant" => self.tenant.clone(), "kind" => "handler").increment(1);
        if from != to || applied > 1 {
            // Apply what precedes the suspects in bulk, then the suspects one per transaction.
            self.suspect = Some(Suspects { from, to });
            tracing::warn!(consumer = name, tenant = %self.tenant, from, to, %error, "batch failed; narrowing it down to the failing event");
            return Ok(Outcome::Failed { position: to, error });
        }
        let position = from;
        let attempts = match self.failures_at {
            Some((p, n)) if p == position => n + 1,
            _ => 1,
        };
        self.failures_at = Some((position, attempts));
        self.suspect = Some(Suspects {
            from: position,
            to: position,
        });
        if attempts < self.cfg.poison_attempts {
            tracing::warn!(consumer = name, tenant = %self.tenant, position, attempt = attempts, %error, "event failed; will retry");
            return Ok(Outcome::Failed { position, error });
        }
        let tenant_flag = if self.tenant == rig_tenants::DEFAULT {
            String::new()
        } else {
            format!(" --tenant {}", self.tenant)
        };
        tracing::error!(
            consumer = name, tenant = %self.tenant, position, %error,
            "poison event: consumer paused. Fix the cause and restart, or `rigctl skip {name} {position}{tenant_flag}` to dead-letter it"
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
        self.suspect = None;
        metrics::gauge!("rig_consumer_paused", "consumer" => name, "tenant" => self.tenant.clone()).set(1.0);
        Ok(Outcome::Paused { position, checkpoint })
    }
    /// Runs until `stop`, as the one instance working this consumer (the fleet holds its lock):
    /// tails the log, backing off while the database is away.
    pub async fn run_led(mut self, stop: CancellationToken) {
        let name = self.name();
        let info = self.projection.info();
        register_metrics(name, &self.tenant);
        metrics::gauge!("rig_consumer_active", "consumer" => name, "tenant" => self.tenant.clone()).set(1.0);
        let mut backoff = new_backoff();
        while !stop.is_cancelled() {
            match self.tail(&stop, info).await {
                Ok(()) => break,
                Err(e) => {
                    let delay = backoff.next().unwrap_or(Duration::from_secs(10));
                    tracing::warn!(consumer = name, tenant = %self.tenant, error = %e, ?delay, "lost the database; retrying");
                    metrics::counter!("rig_consumer_errors_total", "consumer" => name, "tenant" => self.tenant.clone(), "kind" => "transient").increment(1);
                    sleep_or_cancel(delay, &stop).await;
                }
            }
        }
        metrics::gauge!("rig_consumer_active", "consumer" => name, "tenant" => self.tenant.clone()).set(0.0);
    }

    /// Tails the log. Returns Ok on shutdown, Err when the database went away (the caller backs
    /// off and comes back).
    async fn tail(&mut self, shutdown: &CancellationToken, info: &'static ConsumerInfo) -> Result<(), sqlx::Error> {
        let name = info.name;
        {
            // A turn for the first statement too: a fleet taking up hundreds of tenants at once
            // must not open a connection for each of them at the same moment.
            let _turn = match &self.gate {
                Some(g) => g.clone().acquire_owned().await.ok(),
                None => None,
            };
            ensure_checkpoint(&self.pool, info).await?;
        }
        let mut backoff = new_backoff();
        loop {
            if shutdown.is_cancelled() {
                return Ok(());
            }
            let turn = match &self.gate {
                Some(g) => g.clone().acquire_owned().await.ok(),
                None => None,
            };
            let outcome = match self.run_once().await {
                Ok(o) => {
                    backoff = new_backoff();
                    o
                }
                Err(e) if is_transient(&e) => {
                    // Not holding a turn while backing off: one tenant's unreachable database must
                    // not slow the others.
                    drop(turn);
                    let delay = backoff.next().unwrap_or(Duration::from_secs(10));
                    tracing::warn!(consumer = name, tenant = %self.tenant, error = %e, ?delay, "transient database error; backing off");
                    metrics::counter!("rig_consumer_errors_total", "consumer" => name, "tenant" => self.tenant.clone(), "kind" => "transient")
                        .increment(1);
                    sleep_or_cancel(delay, shutdown).await;
                    continue;
                }
                Err(e) => return Err(e),
            };
            // A batch shorter than a chunk read everything committed when it began (outside the
            // narrowing of a failure, which reads in parts): what came after has notified, and
            // that notification's permit wakes the wait below at once. So the loop waits instead
            // of running an empty batch (four round trips) after every small one, which at a
            // steady trickle of appends doubled the queries per event.
            let drained = match outcome {
                Outcome::Applied { events, .. } => (events as i64) < self.cfg.batch_size && self.suspect.is_none(),
                Outcome::Idle { .. } | Outcome::Paused { .. } => true,
                Outcome::Fenced | Outcome::Failed { .. } => false,
            };
            self.export_head(&outcome).await;
            drop(turn);
            match outcome {
                Outcome::Applied { .. } if !drained => {}
                Outcome::Fenced => {}
                Outcome::Failed { .. } => {
                    let delay = backoff.next().unwrap_or(Duration::from_secs(10));
                    sleep_or_cancel(delay, shutdown).await;
                }
                Outcome::Applied { .. } | Outcome::Idle { .. } | Outcome::Paused { .. } => {
                    tokio::select! {
                        _ = self.wake.notified() => {}
                        _ = tokio::time::sleep(self.cfg.poll_interval) => {}
                        _ = shutdown.cancelled() => {}
                    }
                }
            }
        }
    }

    async fn export_head(&mut self, outcome: &Outcome) {
        let name = self.name();
        // While paused the head moves on and the lag grows: an operator's alert must see it.
        let position = match outcome {
            Outcome::Applied { position, .. } | Outcome::Idle { position } => Some(*position),
            Outcome::Paused { checkpoint, .. } => Some(*checkpoint),
            _ => None,
        };
        let head = match self.head {
            Some(head) => Ok(Some(head)),
            None => {
                sqlx::query_scalar::<_, Option<i64>>("SELECT max(position) FROM events")
                    .fetch_one(&self.pool)
                    .await
            }
        };
        if let Ok(head) = head {
            let head = head.unwrap_or(0);
            metrics::gauge!("rig_consumer_head_position", "consumer" => name, "tenant" => self.tenant.clone())
                .set(head as f64);
            if let Some(p) = position {
                metrics::gauge!("rig_consumer_lag_events", "consumer" => name, "tenant" => self.tenant.clone())
                    .set((head - p).max(0) as f64);
            }
        }
    }
}

/// Every per-consumer metric, registered at start with its resting value, so that a
/// hot standby, or a consumer that has not applied anything yet, already shows the whole set (an
/// alert that finds a series missing cannot tell "zero" from "not running").
fn register_metrics(name: &'static str, tenant: &str) {
    metrics::gauge!("rig_consumer_active", "consumer" => name, "tenant" => tenant.to_owned()).set(0.0);
    metrics::gauge!("rig_consumer_paused", "consumer" => name, "tenant" => tenant.to_owned()).set(0.0);
    metrics::counter!("rig_consumer_events_total", "consumer" => name, "tenant" => tenant.to_owned()).increment(0);
    for kind in ["transient", "handler", "fenced"] {
        metrics::counter!("rig_consumer_errors_total", "consumer" => name, "tenant" => tenant.to_owned(), "kind" => kind).increment(0);
    }
    // Registered, not recorded: it renders with a count of 0.
    let _ =
        metrics::histogram!("rig_consumer_batch_duration_seconds", "consumer" => name, "tenant" => tenant.to_owned());
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
    NotNext {
        consumer: String,
        position: i64,
        checkpoint: i64,
        next: Option<i64>,
    },
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
    let Some((checkpoint, last_error)) = cp else {
        return Err(SkipError::NoCheckpoint(consumer.to_owned()));
    };
    let next: Option<i64> = sqlx::query_scalar("SELECT min(position) FROM events WHERE position > $1")
        .bind(checkpoint)
        .fetch_one(&mut *tx)
        .await?;
    let event: Option<(uuid::Uuid, String)> =
        sqlx::query_as("SELECT event_id, event_type FROM events WHERE position = $1")
            .bind(position)
            .fetch_optional(&mut *tx)
            .await?;
    let Some((event_id, event_type)) = event else {
        return Err(SkipError::NoEvent(position));
    };
    if next != Some(position) {
        return Err(SkipError::NotNext {
            consumer: consumer.to_owned(),
            position,
            checkpoint,
            next,
        });
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
    /// Whose log: `default` for the control database's own.
    pub tenant: String,
    pub position: i64,
    pub head: i64,
    /// Events after `position`: exact up to `EXACT_LAG_UP_TO` behind, `head - position` beyond.
    pub lag: i64,
    pub active: bool,
    pub paused: bool,
    pub last_error: Option<String>,
}

/// Status of every known consumer (and any other checkpoint row found).
/// Up to this many positions behind, `status` counts a consumer's lag exactly.
const EXACT_LAG_UP_TO: i64 = 100_000;

/// `log` is the tenant's database and `control` the control database, where the fleet's locks
/// say which instance is active (for `default` both are the same database).
pub async fn status(
    log: &PgPool,
    control: &PgPool,
    tenant: &str,
    known: &[ConsumerInfo],
) -> Result<Vec<ConsumerStatus>, sqlx::Error> {
    let pool = log;
    let head: i64 = sqlx::query_scalar("SELECT coalesce(max(position), 0) FROM events")
        .fetch_one(pool)
        .await?;
    let rows: Vec<(String, i64, Option<i64>, Option<String>)> =
        sqlx::query_as("SELECT consumer, position, paused_position, last_error FROM checkpoints")
            .fetch_all(pool)
            .await?;
    let mut names: Vec<String> = known.iter().map(|c| c.name.to_owned()).collect();
    for (n, ..) in &rows {
        if !names.contains(n) {
            names.push(n.clone());
        }
    }
    let mut out = Vec::new();
    for name in names {
        let row = rows.iter().find(|r| r.0 == name);
        let position = row.map_or(0, |r| r.1);
        // Events not yet applied. Rolled-back appends leave gaps in positions, so the exact
        // figure is a count; far behind (a rebuild), counting costs a scan of everything
        // behind, for every call of the dashboard, and the position difference, which can
        // only overstate by the gaps, is given instead.
        let lag: i64 = if head - position > EXACT_LAG_UP_TO {
            head - position
        } else {
            sqlx::query_scalar("SELECT count(*) FROM events WHERE position > $1")
                .bind(position)
                .fetch_one(pool)
                .await?
        };
        // The active instance holds the session advisory lock.
        let active: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND granted \
             AND ((classid::bigint << 32) | objid::bigint) = $1 AND database = (SELECT oid FROM pg_database WHERE datname = current_database()))",
        )
        .bind(tenant_lock_key(&name, tenant))
        .fetch_one(control)
        .await?;
        out.push(ConsumerStatus {
            tenant: tenant.to_owned(),
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
