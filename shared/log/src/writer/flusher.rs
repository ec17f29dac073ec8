//! Durability before the answer: clients are told only what is on disk, yet the writer never
//! waits for an fsync.
//!
//! The writer commits with `synchronous_commit = off` (set by `rig_append_begin`) and goes on
//! with the next batch while this task, on a connection of its own, commits one WAL record
//! synchronously. A flush covers all WAL written before it, so one flush makes every batch
//! committed before it started durable, however many there are (a group flush on top of the
//! group commit). Since the commit releases the append lock before its fsync, another ingest
//! process (production runs two) takes the lock at once instead of queueing behind it.
//!
//! Readers may see a batch a moment before it is durable. No consumer's checkpoint can get ahead
//! of the durable log all the same: its own commit record follows the events' in the WAL, and
//! crash recovery replays a prefix of the WAL (docs/invariants.md).

use super::queue::Reply;
use super::store;
use super::{AppendError, AppendOk, WriterOptions};
use sqlx::pool::PoolConnection;
use sqlx::{PgPool, Postgres};
use std::time::Instant;
use tokio::sync::mpsc;

/// A batch's answers, waiting for the WAL flush that makes what they report durable.
pub(super) struct Answers {
    pub replies: Vec<(Reply, Result<AppendOk, AppendError>)>,
    /// The batch committed, or answered "already stored" (which may rest on another batch's
    /// commit that is not flushed yet).
    pub needs_flush: bool,
}

/// Answers leave in batch order, and a round without a batch that needs the flush comes after
/// every earlier batch was flushed: so even a refusal judged against a fresh commit (a 409) is
/// only sent once that commit is durable. If the flush fails, nobody can say whether the
/// round's commits survived: every request of the round is answered 503 and its client retries
/// (an append with its own event ids is then answered "already stored" if it had landed).
pub(super) async fn flusher_loop(pool: PgPool, mut rx: mpsc::Receiver<Answers>, options: WriterOptions) {
    let mut conn: Option<PoolConnection<Postgres>> = None;
    // The gate's permit, held with the connection (see `WriterOptions::gates`).
    let gate = options.gates.as_ref().map(|g| g.flushers.clone());
    let mut permit: Option<tokio::sync::OwnedSemaphorePermit> = None;
    let mut round: Vec<Answers> = Vec::new();
    loop {
        let received = match (options.release_idle_after, conn.is_some()) {
            (Some(idle), true) => match tokio::time::timeout(idle, rx.recv_many(&mut round, 1024)).await {
                Ok(n) => n,
                Err(_) => {
                    conn = None;
                    permit = None;
                    continue;
                }
            },
            _ => rx.recv_many(&mut round, 1024).await,
        };
        if received == 0 {
            break;
        }
        let flushed = if round.iter().any(|a| a.needs_flush) {
            let started = Instant::now();
            if let (Some(g), None) = (&gate, &permit) {
                permit = g.clone().acquire_owned().await.ok();
            }
            let result = match store::connection(&pool, &mut conn).await {
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
                store::discard(&mut conn).await;
            }
            if gate.as_ref().is_some_and(|g| g.available_permits() == 0) || conn.is_none() {
                conn = None;
                permit = None;
            }
            result
        } else {
            Ok(())
        };
        let mut created = false;
        for answers in round.drain(..) {
            for (reply, result) in answers.replies {
                let result = match &flushed {
                    Ok(()) => result,
                    Err(e) => Err(AppendError::Unavailable(format!(
                        "the append may not be durable (its WAL flush failed: {e}); retry it"
                    ))),
                };
                created |= matches!(result, Ok(AppendOk::Created(_)));
                record_outcome(&options.tenant, &result);
                let _ = reply.send(result);
            }
        }
        if created {
            if let Some(on_commit) = &options.on_commit {
                on_commit();
            }
        }
    }
}

/// Counts an answer as it leaves (after the flush, so the counters follow what clients heard).
fn record_outcome(tenant: &str, r: &Result<AppendOk, AppendError>) {
    match r {
        Ok(AppendOk::Created(a)) => {
            metrics::counter!("rig_ingest_events_appended_total", "tenant" => tenant.to_owned())
                .increment((a.last_version - a.first_version + 1) as u64)
        }
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
