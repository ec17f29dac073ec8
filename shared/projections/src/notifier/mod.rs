//! The notifier's projection: one `notifier_outbox` row per (chosen event, channel), written in
//! the consumer runtime's transaction together with the checkpoint.
//!
//! What it promises: a chosen event is in the outbox exactly once (`ON CONFLICT DO NOTHING` on
//! `(event_id, channel)`) as soon as its batch commits, with the message already rendered, and
//! the commit is durable (a message owed to people is not lost in a Postgres crash). Delivery is
//! the sender's job; the projection wakes it after each commit that added rows.

pub mod render;

use crate::NOTIFIER;
use render::IssueContext;
use rig_consumer::{ApplyError, ConsumerInfo, Projection};
use rig_events::StoredEvent;
use sqlx::PgConnection;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use tokio::sync::Notify;

pub const CHANNEL: &str = "discord";

pub struct OutboxProjection {
    types: HashSet<String>,
    /// The same list for the runtime, which then reads only these events from the log.
    wanted: &'static [&'static str],
    wake: Arc<Notify>,
    added: bool,
}

impl OutboxProjection {
    /// `types`: the event types to post (`notifier.events`); `wake` is notified after a commit
    /// that added messages.
    pub fn new(types: &[String], wake: Arc<Notify>) -> Self {
        OutboxProjection {
            types: types.iter().cloned().collect(),
            wanted: wanted_list(types),
            wake,
            added: false,
        }
    }
}

/// The runtime wants a `'static` list of types. One is made per distinct list: a tenant's
/// consumer is rebuilt whenever its settings change, and must not leak a list each time.
fn wanted_list(types: &[String]) -> &'static [&'static str] {
    static LISTS: std::sync::Mutex<Vec<&'static [&'static str]>> = std::sync::Mutex::new(Vec::new());
    let mut lists = LISTS.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(l) = lists
        .iter()
        .find(|l| l.iter().copied().eq(types.iter().map(String::as_str)))
    {
        return l;
    }
    let names: Vec<&'static str> = types.iter().map(|t| &*Box::leak(t.clone().into_boxed_str())).collect();
    let l: &'static [&'static str] = Box::leak(names.into_boxed_slice());
    lists.push(l);
    l
}

impl Projection for OutboxProjection {
    fn info(&self) -> &'static ConsumerInfo {
        &NOTIFIER
    }

    async fn apply(&mut self, tx: &mut PgConnection, events: &[StoredEvent]) -> Result<(), ApplyError> {
        let chosen: Vec<&StoredEvent> = events.iter().filter(|e| self.types.contains(&e.event_type)).collect();
        if chosen.is_empty() {
            return Ok(());
        }
        let streams: Vec<&str> = chosen
            .iter()
            .filter(|e| !e.stream_id.starts_with("agent:"))
            .map(|e| e.stream_id.as_str())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let contexts: HashMap<String, IssueContext> = if streams.is_empty() {
            HashMap::new()
        } else {
            sqlx::query_as::<_, IssueContext>(
                "SELECT stream_id, title, agent_id, first_event_at, pr_number FROM issue_state WHERE stream_id = ANY($1)",
            )
            .bind(&streams)
            .fetch_all(&mut *tx)
            .await?
            .into_iter()
            .map(|c| (c.stream_id.clone(), c))
            .collect()
        };
        let payloads: Vec<serde_json::Value> = chosen
            .iter()
            .map(|e| render::render(e, contexts.get(&e.stream_id)))
            .collect();
        let inserted = sqlx::query(
            "INSERT INTO notifier_outbox (position, event_id, channel, event_type, payload) \
             SELECT p, id, $5, t, j FROM unnest($1::int8[], $2::uuid[], $3::text[], $4::jsonb[]) AS u(p, id, t, j) \
             ON CONFLICT (event_id, channel) DO NOTHING",
        )
        .bind(chosen.iter().map(|e| e.position).collect::<Vec<_>>())
        .bind(chosen.iter().map(|e| e.event_id).collect::<Vec<_>>())
        .bind(chosen.iter().map(|e| e.event_type.as_str()).collect::<Vec<_>>())
        .bind(payloads)
        .bind(CHANNEL)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        // Several `apply` calls may share one transaction: any of them adding rows counts.
        // (A rolled-back transaction leaves at most one spurious wake-up behind.)
        self.added |= inserted > 0;
        Ok(())
    }

    fn event_types(&self) -> Option<&'static [&'static str]> {
        Some(self.wanted)
    }

    /// Messages are owed to people: a commit that Postgres acknowledged must survive its crash.
    fn durable_commit(&self) -> bool {
        true
    }

    fn after_commit(&mut self) {
        if std::mem::take(&mut self.added) {
            self.wake.notify_one();
        }
    }
}
