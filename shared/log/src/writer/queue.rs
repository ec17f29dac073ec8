//! Group commit: requests wait in one queue, and the writer task drains whatever is waiting
//! into ONE transaction (many requests, one lock hold, one fsync), judged request by request.
//!
//! There is one writer per process. A second one, queued on the append lock with the next
//! batch, measured slower: the same requests split into batches half the size.

use super::flusher::Answers;
use super::store::{self, Decided};
use super::{Append, AppendError, AppendOk};
use crate::db::is_transient;
use sqlx::pool::PoolConnection;
use sqlx::{PgPool, Postgres};
use std::time::Instant;
use tokio::sync::{mpsc, oneshot};

pub(super) type Reply = oneshot::Sender<Result<AppendOk, AppendError>>;

/// A queued request and where its answer goes.
pub(super) struct Job {
    pub append: Append,
    pub reply: Reply,
}

/// The writer task: takes everything waiting (up to `max_batch` requests) as one batch, commits
/// it, hands its answers to the flusher, and starts again at once with what arrived meanwhile.
pub(super) async fn writer_loop(
    pool: PgPool,
    mut rx: mpsc::Receiver<Job>,
    durable: mpsc::Sender<Answers>,
    max_batch: usize,
    release_idle_after: Option<std::time::Duration>,
    gate: Option<std::sync::Arc<tokio::sync::Semaphore>>,
) {
    // A connection of its own, kept across batches; replaced after any error that may have
    // broken it, and given back after `release_idle_after` without work when that is set.
    let mut conn: Option<PoolConnection<Postgres>> = None;
    // The gate's permit, held with the connection (see `WriterOptions::gates`).
    let mut permit: Option<tokio::sync::OwnedSemaphorePermit> = None;
    let mut carry: Vec<Job> = Vec::new();
    loop {
        let mut batch = std::mem::take(&mut carry);
        if batch.is_empty() {
            let next = match (release_idle_after, conn.is_some()) {
                (Some(idle), true) => match tokio::time::timeout(idle, rx.recv()).await {
                    Ok(next) => next,
                    Err(_) => {
                        conn = None;
                        permit = None;
                        continue;
                    }
                },
                _ => rx.recv().await,
            };
            match next {
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
        if let (Some(g), None) = (&gate, &permit) {
            permit = g.clone().acquire_owned().await.ok();
        }
        carry = commit_batch(&pool, &mut conn, &durable, batch).await;
        if gate.as_ref().is_some_and(|g| g.available_permits() == 0) || conn.is_none() {
            // Others wait for a turn: this log takes a connection again for its next batch.
            conn = None;
            permit = None;
        }
        metrics::histogram!("rig_ingest_batch_duration_seconds").record(started.elapsed().as_secs_f64());
        metrics::histogram!("rig_ingest_batch_requests").record((n - carry.len()) as f64);
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
        let result = match store::connection(pool, conn).await {
            Ok(c) => store::commit(c, &part).await,
            Err(e) => Err(e),
        };
        match result {
            Ok(decided) => carry.extend(reply_all(part, decided, durable).await),
            Err(e) if part.len() > 1 && !is_transient(&e) => {
                tracing::warn!(error = %e, requests = part.len(), "batch failed; splitting it to isolate the request at fault");
                metrics::counter!("rig_ingest_batch_splits_total").increment(1);
                store::roll_back(conn).await;
                let second = part.split_off(part.len() / 2);
                parts.push(second);
                parts.push(part);
            }
            Err(e) => {
                if is_transient(&e) {
                    store::discard(conn).await;
                } else {
                    store::roll_back(conn).await;
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
    for (job, answer) in batch.into_iter().zip(decided.answers) {
        match answer {
            Some(result) => replies.push((job.reply, result)),
            None => carry.push(job),
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

/// Answers every job of a batch that failed as a whole: 503 when the database may come back
/// (the client retries), 500 otherwise.
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
