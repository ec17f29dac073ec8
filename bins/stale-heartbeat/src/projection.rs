//! The `stale_heartbeat_issues` projection: the issues an agent holds in status `assigned` or
//! `in_progress`, each with the stream version last seen and its last sign of life.
//!
//! What it promises: after each batch the table equals a fold of the log up to the checkpoint.
//! A batch costs three statements whatever its size: the rows it can touch are loaded at once,
//! the events are folded in memory in position order ([`fold`], a pure function), and the result
//! is written back with one upsert and one delete.
//!
//! Last sign of life is the server's `recorded_at` of the latest event on the issue stream since
//! the assignment, or of a `HEARTBEAT` on the holder's own stream (`agent:{id}`) whose
//! `current_issue` names the issue: a stream id (`acme/widgets#42`, any case) or a bare issue
//! number (the issue that agent holds with that number). Such a heartbeat does not change the
//! issue stream's version, so it never makes the checker's `expected_version` stale.

use chrono::{DateTime, Utc};
use serde_json::Value;
use shared::consumer::{ApplyError, ConsumerInfo, Projection, STALE_HEARTBEAT};
use shared::events::{self, StoredEvent};
use shared::StreamId;
use sqlx::PgConnection;
use std::collections::{BTreeSet, HashMap};

/// One tracked issue, as stored.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct Tracked {
    pub stream_id: String,
    pub agent_id: String,
    pub issue_number: i64,
    pub status: String,
    pub version: i32,
    pub assigned_at: DateTime<Utc>,
    pub last_seen_at: DateTime<Utc>,
}

pub const ASSIGNED: &str = "assigned";
pub const IN_PROGRESS: &str = "in_progress";

/// What a batch changes: rows to write and streams no longer tracked.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Changes {
    pub upsert: Vec<Tracked>,
    pub delete: Vec<String>,
}

/// The rows a batch may touch: its issue streams, and every issue held by an agent that sent a
/// heartbeat naming an issue on its own stream.
pub fn keys(events: &[StoredEvent]) -> (Vec<String>, Vec<String>) {
    let mut streams = BTreeSet::new();
    let mut agents = BTreeSet::new();
    for e in events {
        match e.stream_id.strip_prefix("agent:") {
            Some(agent) => {
                if e.event_type == events::HEARTBEAT && current_issue(e).is_some() {
                    agents.insert(agent.to_owned());
                }
            }
            None => {
                streams.insert(e.stream_id.clone());
            }
        }
    }
    (streams.into_iter().collect(), agents.into_iter().collect())
}

/// How a heartbeat names the issue its agent works on.
#[derive(Debug, PartialEq, Eq)]
enum Named {
    Stream(String),
    Number(i64),
}

fn current_issue(e: &StoredEvent) -> Option<Named> {
    match e.data.get("current_issue")? {
        Value::String(s) => match StreamId::parse(s.trim()) {
            Ok(id @ StreamId::Issue { .. }) => Some(Named::Stream(id.to_string())),
            _ => None,
        },
        Value::Number(n) => n.as_i64().filter(|n| *n > 0).map(Named::Number),
        _ => None,
    }
}

/// Folds `events` (positions ascending) into `rows` (the stored rows of [`keys`]) and says what
/// to write back.
pub fn fold(mut rows: HashMap<String, Tracked>, events: &[StoredEvent]) -> Changes {
    let mut dirty = BTreeSet::new();
    let mut deleted = BTreeSet::new();
    for e in events {
        if let Some(agent) = e.stream_id.strip_prefix("agent:") {
            if e.event_type != events::HEARTBEAT {
                continue;
            }
            let matches = |t: &Tracked| match current_issue(e) {
                Some(Named::Stream(s)) => t.stream_id == s,
                Some(Named::Number(n)) => t.issue_number == n,
                None => false,
            };
            for t in rows.values_mut().filter(|t| t.agent_id == agent && matches(t)) {
                if e.recorded_at > t.last_seen_at {
                    t.last_seen_at = e.recorded_at;
                    dirty.insert(t.stream_id.clone());
                }
            }
            continue;
        }
        match e.event_type.as_str() {
            events::ISSUE_ASSIGNED => {
                let Some(agent) = e.str_field("agent_id") else { continue };
                let Some(issue_number) = StreamId::parse(&e.stream_id).ok().and_then(|s| s.issue_number()) else {
                    continue;
                };
                rows.insert(
                    e.stream_id.clone(),
                    Tracked {
                        stream_id: e.stream_id.clone(),
                        agent_id: agent.to_owned(),
                        issue_number,
                        status: ASSIGNED.to_owned(),
                        version: e.version,
                        assigned_at: e.recorded_at,
                        last_seen_at: e.recorded_at,
                    },
                );
                deleted.remove(&e.stream_id);
                dirty.insert(e.stream_id.clone());
            }
            events::ISSUE_UNASSIGNED
            | events::REVIEW_ASSIGNED
            | events::REVIEW_PASSED
            | events::REVIEW_DISPUTED
            | events::MERGED
            | events::ISSUE_DONE => {
                if rows.remove(&e.stream_id).is_some() {
                    dirty.remove(&e.stream_id);
                    deleted.insert(e.stream_id.clone());
                }
            }
            other => {
                let Some(t) = rows.get_mut(&e.stream_id) else { continue };
                if matches!(
                    other,
                    events::WORK_STARTED | events::BRANCH_CREATED | events::PR_CREATED
                ) {
                    t.status = IN_PROGRESS.to_owned();
                }
                t.version = t.version.max(e.version);
                t.last_seen_at = t.last_seen_at.max(e.recorded_at);
                dirty.insert(e.stream_id.clone());
            }
        }
    }
    Changes {
        upsert: dirty.into_iter().filter_map(|s| rows.remove(&s)).collect(),
        delete: deleted.into_iter().collect(),
    }
}

pub struct StaleHeartbeatProjection;

const UPSERT: &str = "\
INSERT INTO stale_heartbeat_issues (stream_id, agent_id, issue_number, status, version, assigned_at, last_seen_at) \
SELECT * FROM unnest($1::text[], $2::text[], $3::int8[], $4::text[], $5::int4[], $6::timestamptz[], $7::timestamptz[]) \
ON CONFLICT (stream_id) DO UPDATE SET agent_id = excluded.agent_id, issue_number = excluded.issue_number, \
    status = excluded.status, version = excluded.version, assigned_at = excluded.assigned_at, \
    last_seen_at = excluded.last_seen_at";

impl Projection for StaleHeartbeatProjection {
    fn info(&self) -> &'static ConsumerInfo {
        &STALE_HEARTBEAT
    }

    async fn apply(&mut self, tx: &mut PgConnection, events: &[StoredEvent]) -> Result<(), ApplyError> {
        let (streams, agents) = keys(events);
        if streams.is_empty() && agents.is_empty() {
            return Ok(());
        }
        let stored: Vec<Tracked> = sqlx::query_as(
            "SELECT stream_id, agent_id, issue_number, status, version, assigned_at, last_seen_at \
             FROM stale_heartbeat_issues WHERE stream_id = ANY($1) OR agent_id = ANY($2)",
        )
        .bind(&streams)
        .bind(&agents)
        .fetch_all(&mut *tx)
        .await?;
        let rows = stored.into_iter().map(|t| (t.stream_id.clone(), t)).collect();
        let changes = fold(rows, events);
        if !changes.delete.is_empty() {
            sqlx::query("DELETE FROM stale_heartbeat_issues WHERE stream_id = ANY($1)")
                .bind(&changes.delete)
                .execute(&mut *tx)
                .await?;
        }
        if !changes.upsert.is_empty() {
            let u = &changes.upsert;
            sqlx::query(UPSERT)
                .bind(u.iter().map(|t| t.stream_id.as_str()).collect::<Vec<_>>())
                .bind(u.iter().map(|t| t.agent_id.as_str()).collect::<Vec<_>>())
                .bind(u.iter().map(|t| t.issue_number).collect::<Vec<_>>())
                .bind(u.iter().map(|t| t.status.as_str()).collect::<Vec<_>>())
                .bind(u.iter().map(|t| t.version).collect::<Vec<_>>())
                .bind(u.iter().map(|t| t.assigned_at).collect::<Vec<_>>())
                .bind(u.iter().map(|t| t.last_seen_at).collect::<Vec<_>>())
                .execute(&mut *tx)
                .await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use chrono::TimeZone;
    use serde_json::json;

    fn at(s: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(1_700_000_000 + s, 0).unwrap()
    }

    fn ev(position: i64, stream: &str, version: i32, t: &str, data: Value, secs: i64) -> StoredEvent {
        StoredEvent {
            position,
            stream_id: stream.to_owned(),
            version,
            event_id: uuid::Uuid::new_v4(),
            event_type: t.to_owned(),
            schema_version: 1,
            data,
            metadata: json!({}),
            occurred_at: None,
            recorded_at: at(secs),
        }
    }

    fn run(rows: Vec<Tracked>, events: &[StoredEvent]) -> Changes {
        fold(rows.into_iter().map(|t| (t.stream_id.clone(), t)).collect(), events)
    }

    #[test]
    fn assignment_starts_tracking_and_work_moves_it_to_in_progress() {
        let s = "acme/widgets#42";
        let c = run(
            vec![],
            &[
                ev(1, s, 1, "ISSUE_APPROVED", json!({}), 0),
                ev(2, s, 2, "ISSUE_ASSIGNED", json!({"agent_id": "dev-1"}), 10),
                ev(3, s, 3, "WORK_STARTED", json!({"agent_id": "dev-1"}), 20),
                ev(4, s, 4, "CI_PASSED", json!({}), 30),
            ],
        );
        assert!(c.delete.is_empty());
        assert_eq!(
            c.upsert,
            vec![Tracked {
                stream_id: s.into(),
                agent_id: "dev-1".into(),
                issue_number: 42,
                status: IN_PROGRESS.into(),
                version: 4,
                assigned_at: at(10),
                last_seen_at: at(30),
            }]
        );
    }

    #[test]
    fn review_merge_done_and_unassign_stop_tracking() {
        for t in [
            "ISSUE_UNASSIGNED",
            "REVIEW_ASSIGNED",
            "REVIEW_PASSED",
            "REVIEW_DISPUTED",
            "MERGED",
            "ISSUE_DONE",
        ] {
            let s = "acme/widgets#1";
            let c = run(
                vec![],
                &[
                    ev(1, s, 1, "ISSUE_ASSIGNED", json!({"agent_id": "a"}), 0),
                    ev(2, s, 2, t, json!({"reason": "x"}), 1),
                ],
            );
            assert_eq!(
                c,
                Changes {
                    upsert: vec![],
                    delete: vec![s.into()]
                },
                "{t}"
            );
        }
        // Events on an issue nobody holds change nothing.
        let c = run(vec![], &[ev(1, "acme/widgets#9", 5, "CI_FAILED", json!({}), 0)]);
        assert_eq!(c, Changes::default());
    }

    #[test]
    fn heartbeats_on_the_agent_stream_refresh_only_the_named_issue_of_that_agent() {
        let held = |stream: &str, n: i64, agent: &str| Tracked {
            stream_id: stream.into(),
            agent_id: agent.into(),
            issue_number: n,
            status: ASSIGNED.into(),
            version: 3,
            assigned_at: at(0),
            last_seen_at: at(0),
        };
        let rows = vec![
            held("acme/widgets#1", 1, "a"),
            held("acme/widgets#2", 2, "a"),
            held("acme/gadgets#7", 7, "b"),
        ];
        let c = run(
            rows,
            &[
                // A stream id in another case names the same issue.
                ev(
                    10,
                    "agent:a",
                    1,
                    "HEARTBEAT",
                    json!({"agent_id": "a", "current_issue": "Acme/Widgets#1"}),
                    50,
                ),
                // An issue number names the issue this agent holds with that number.
                ev(
                    11,
                    "agent:a",
                    2,
                    "HEARTBEAT",
                    json!({"agent_id": "a", "current_issue": 2}),
                    60,
                ),
                // Another agent naming an issue it does not hold keeps nothing alive.
                ev(
                    12,
                    "agent:x",
                    1,
                    "HEARTBEAT",
                    json!({"agent_id": "x", "current_issue": "acme/gadgets#7"}),
                    70,
                ),
                // Garbage is ignored.
                ev(
                    13,
                    "agent:b",
                    1,
                    "HEARTBEAT",
                    json!({"agent_id": "b", "current_issue": "nope"}),
                    80,
                ),
            ],
        );
        assert!(c.delete.is_empty());
        let seen: Vec<(&str, DateTime<Utc>, i32)> = c
            .upsert
            .iter()
            .map(|t| (t.stream_id.as_str(), t.last_seen_at, t.version))
            .collect();
        assert_eq!(seen, vec![("acme/widgets#1", at(50), 3), ("acme/widgets#2", at(60), 3)]);
        let (streams, agents) = keys(&[
            ev(10, "agent:a", 1, "HEARTBEAT", json!({"current_issue": 3}), 0),
            ev(11, "agent:c", 1, "HEARTBEAT", json!({}), 0),
            ev(12, "acme/widgets#3", 1, "HEARTBEAT", json!({}), 0),
        ]);
        assert_eq!(
            (streams, agents),
            (vec!["acme/widgets#3".to_owned()], vec!["a".to_owned()])
        );
    }

    #[test]
    fn reassignment_in_one_batch_keeps_the_latest_holder() {
        let s = "acme/widgets#5";
        let c = run(
            vec![],
            &[
                ev(1, s, 1, "ISSUE_ASSIGNED", json!({"agent_id": "a"}), 0),
                ev(2, s, 2, "AGENT_STUCK", json!({"agent_id": "a"}), 5),
                ev(3, s, 3, "ISSUE_UNASSIGNED", json!({"reason": "stale_heartbeat"}), 5),
                ev(4, s, 4, "ISSUE_ASSIGNED", json!({"agent_id": "b"}), 9),
            ],
        );
        assert!(c.delete.is_empty());
        assert_eq!(c.upsert.len(), 1);
        assert_eq!((c.upsert[0].agent_id.as_str(), c.upsert[0].version), ("b", 4));
    }
}
