//! The `stale_heartbeat_issues` projection: every issue an agent holds, with the issue's status,
//! the stream version last seen and its last sign of life. The checker only looks at the rows in
//! a watched status ([`WATCHED`]: `assigned` or `in_progress`).
//!
//! The rule: a row exists from an `ISSUE_ASSIGNED` until the next `ISSUE_UNASSIGNED` (a new
//! `ISSUE_ASSIGNED` replaces it), which is exactly when an agent holds the issue,
//! and its `status` is the one the shared issue fold computes ([`rig_events::fold::status_set_by`],
//! the same transitions as `IssueState::apply`). Rows are not dropped when the issue goes to
//! review, is merged or done: a `REVIEW_DISPUTED` followed by `WORK_STARTED`, `BRANCH_CREATED` or
//! `PR_CREATED` puts the issue back to `in_progress` with the same holder, and an agent that goes
//! silent then must still be caught (the simulator's rework path does exactly this). A row in
//! any other status (`approved`, `in_review`, `merged`, `done`) is kept up to date but never
//! declared stuck. So the table grows with the issues ever assigned and not unassigned (at most
//! one row per issue, like `issue_state`); the checker's query and its gauge stay on the watched
//! rows through a partial index (migration 0023).
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

use crate::STALE_HEARTBEAT;
use chrono::{DateTime, Utc};
use rig_consumer::{ApplyError, ConsumerInfo, Projection};
use rig_events::fold::status_set_by;
use rig_events::{CurrentIssue, Event, EventType, Heartbeat, StoredEvent, StreamId};
use sqlx::PgConnection;
use std::collections::{BTreeSet, HashMap};

/// One tracked issue, as stored.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct Tracked {
    pub stream_id: String,
    pub agent_id: String,
    pub issue_number: i64,
    /// The issue's status as the shared fold computes it.
    pub status: String,
    pub version: i32,
    pub assigned_at: DateTime<Utc>,
    pub last_seen_at: DateTime<Utc>,
}

pub const ASSIGNED: &str = "assigned";
pub const IN_PROGRESS: &str = "in_progress";

/// The statuses in which a silent holder is declared stuck. The checker's queries and the
/// partial index of migration 0023 spell the same list in SQL.
pub const WATCHED: [&str; 2] = [ASSIGNED, IN_PROGRESS];

/// What a batch changes: rows to write and streams no longer held.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Changes {
    pub upsert: Vec<Tracked>,
    pub delete: Vec<String>,
}

/// The rows a batch may touch, as the load query selects them: the issue streams of the batch
/// and the streams named by agent heartbeats (`streams`), and the rows whose `agent_id` is in
/// `agents` and `issue_number` in `numbers` (heartbeats naming a bare number). The second part
/// may load a few rows no heartbeat names (another agent's number); [`fold`] leaves them as they
/// are. An agent's other held issues, however many, are not loaded.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Keys {
    pub streams: Vec<String>,
    pub agents: Vec<String>,
    pub numbers: Vec<i64>,
}

impl Keys {
    pub fn is_empty(&self) -> bool {
        self.streams.is_empty() && self.agents.is_empty()
    }
}

/// The [`Keys`] of a batch.
pub fn keys(events: &[StoredEvent]) -> Keys {
    let mut streams = BTreeSet::new();
    let mut agents = BTreeSet::new();
    let mut numbers = BTreeSet::new();
    for e in events {
        match e.stream_id.strip_prefix("agent:") {
            Some(agent) => match heartbeat(e).as_ref().map(Heartbeat::current_issue) {
                Some(CurrentIssue::Stream(s)) => {
                    streams.insert(s);
                }
                Some(CurrentIssue::Number(n)) => {
                    agents.insert(agent.to_owned());
                    numbers.insert(n);
                }
                _ => {}
            },
            None => {
                streams.insert(e.stream_id.clone());
            }
        }
    }
    Keys {
        streams: streams.into_iter().collect(),
        agents: agents.into_iter().collect(),
        numbers: numbers.into_iter().collect(),
    }
}

/// The heartbeat `e` is, if it is one the catalog reads.
fn heartbeat(e: &StoredEvent) -> Option<Heartbeat> {
    if e.known_type() != Some(EventType::Heartbeat) {
        return None;
    }
    match e.event() {
        Ok(Event::Heartbeat(h)) => Some(h),
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
            let Some(h) = heartbeat(e) else { continue };
            let named = h.current_issue();
            for t in rows
                .values_mut()
                .filter(|t| t.agent_id == agent && named.names(&t.stream_id))
            {
                if e.recorded_at > t.last_seen_at {
                    t.last_seen_at = e.recorded_at;
                    dirty.insert(t.stream_id.clone());
                }
            }
            continue;
        }
        let Some(ty) = e.known_type() else {
            // A type the rig added later: activity on the issue all the same.
            if let Some(t) = rows.get_mut(&e.stream_id) {
                t.version = t.version.max(e.version);
                t.last_seen_at = t.last_seen_at.max(e.recorded_at);
                dirty.insert(e.stream_id.clone());
            }
            continue;
        };
        match ty {
            EventType::IssueAssigned => {
                let Ok(Event::IssueAssigned(a)) = e.event() else {
                    continue;
                };
                let Some(issue_number) = StreamId::parse(&e.stream_id).ok().and_then(|s| s.issue_number()) else {
                    continue;
                };
                rows.insert(
                    e.stream_id.clone(),
                    Tracked {
                        stream_id: e.stream_id.clone(),
                        agent_id: a.agent_id,
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
            EventType::IssueUnassigned => {
                if rows.remove(&e.stream_id).is_some() {
                    dirty.remove(&e.stream_id);
                    deleted.insert(e.stream_id.clone());
                }
            }
            other => {
                let Some(t) = rows.get_mut(&e.stream_id) else { continue };
                if let Some(status) = status_set_by(other) {
                    t.status = status.to_owned();
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
        let keys = keys(events);
        if keys.is_empty() {
            return Ok(());
        }
        let stored: Vec<Tracked> = sqlx::query_as(
            "SELECT stream_id, agent_id, issue_number, status, version, assigned_at, last_seen_at \
             FROM stale_heartbeat_issues \
             WHERE stream_id = ANY($1) OR (agent_id = ANY($2) AND issue_number = ANY($3))",
        )
        .bind(&keys.streams)
        .bind(&keys.agents)
        .bind(&keys.numbers)
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
    use serde_json::{json, Value};

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
            data_text: None,
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

    fn held(stream: &str, n: i64, agent: &str, status: &str) -> Tracked {
        Tracked {
            stream_id: stream.into(),
            agent_id: agent.into(),
            issue_number: n,
            status: status.into(),
            version: 3,
            assigned_at: at(0),
            last_seen_at: at(0),
        }
    }

    #[test]
    fn rework_after_a_disputed_review_is_watched_again_from_its_last_event() {
        let s = "acme/widgets#42";
        let c = run(
            vec![],
            &[
                ev(1, s, 1, "ISSUE_APPROVED", json!({}), 0),
                ev(2, s, 2, "ISSUE_ASSIGNED", json!({"agent_id": "dev-1"}), 10),
                ev(3, s, 3, "PR_CREATED", json!({"pr_number": 7}), 20),
                ev(4, s, 4, "REVIEW_DISPUTED", json!({"reviewer": "r"}), 30),
                ev(5, s, 5, "WORK_STARTED", json!({"agent_id": "dev-1"}), 40),
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
                version: 5,
                assigned_at: at(10),
                last_seen_at: at(40),
            }]
        );
        // The same path split over batches, the row in review stored in between.
        let c = run(
            vec![Tracked {
                status: "in_review".into(),
                version: 4,
                last_seen_at: at(30),
                ..held(s, 42, "dev-1", ASSIGNED)
            }],
            &[ev(9, s, 5, "BRANCH_CREATED", json!({"branch": "b"}), 50)],
        );
        assert_eq!(
            (
                c.upsert[0].status.as_str(),
                c.upsert[0].version,
                c.upsert[0].last_seen_at
            ),
            (IN_PROGRESS, 5, at(50))
        );
    }

    #[test]
    fn the_status_follows_the_issue_fold_and_only_unassignment_ends_the_row() {
        let s = "acme/widgets#1";
        let mut log = vec![ev(1, s, 1, "ISSUE_ASSIGNED", json!({"agent_id": "a"}), 0)];
        for (i, (t, status)) in [
            ("WORK_STARTED", IN_PROGRESS),
            ("REVIEW_ASSIGNED", "in_review"),
            ("REVIEW_PASSED", "in_review"),
            ("CI_FAILED", "in_review"),
            ("MERGED", "merged"),
            ("ISSUE_DONE", "done"),
            ("HEARTBEAT", "done"),
            ("SOMETHING_NEW", "done"),
            ("ISSUE_APPROVED", "approved"),
        ]
        .into_iter()
        .enumerate()
        {
            let v = i as i32 + 2;
            log.push(ev(v.into(), s, v, t, json!({"agent_id": "a"}), v.into()));
            let c = run(vec![], &log);
            assert!(c.delete.is_empty(), "{t}");
            let row = &c.upsert[0];
            // The same status as the shared fold of the stream.
            let folded = rig_events::fold::fold_stored(s, &log).unwrap();
            assert_eq!(Some(row.status.as_str()), folded.status.as_deref(), "after {t}");
            assert_eq!(row.status, status, "after {t}");
            assert_eq!((row.version, row.last_seen_at), (v, at(v.into())), "after {t}");
        }
        // Merged and done issues stay held, but out of the watched statuses.
        for status in ["merged", "done", "in_review", "approved"] {
            assert!(!WATCHED.contains(&status));
        }
        // Unassignment deletes the row, whatever the status.
        for status in [ASSIGNED, IN_PROGRESS, "in_review", "done"] {
            let c = run(
                vec![held(s, 1, "a", status)],
                &[ev(20, s, 4, "ISSUE_UNASSIGNED", json!({"reason": "x"}), 30)],
            );
            assert_eq!(
                c,
                Changes {
                    upsert: vec![],
                    delete: vec![s.into()]
                },
                "{status}"
            );
        }
        // Events on an issue nobody holds change nothing.
        let c = run(vec![], &[ev(1, "acme/widgets#9", 5, "CI_FAILED", json!({}), 0)]);
        assert_eq!(c, Changes::default());
    }

    #[test]
    fn the_watched_statuses_are_the_shared_folds() {
        assert_eq!(status_set_by(EventType::IssueAssigned), Some(ASSIGNED));
        assert_eq!(status_set_by(EventType::WorkStarted), Some(IN_PROGRESS));
    }

    #[test]
    fn heartbeats_on_the_agent_stream_refresh_only_the_named_issue_of_that_agent() {
        let rows = vec![
            held("acme/widgets#1", 1, "a", ASSIGNED),
            held("acme/widgets#2", 2, "a", IN_PROGRESS),
            held("acme/gadgets#7", 7, "b", ASSIGNED),
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
        let k = keys(&[
            ev(
                10,
                "agent:a",
                1,
                "HEARTBEAT",
                json!({"agent_id": "a", "current_issue": 3}),
                0,
            ),
            ev(11, "agent:c", 1, "HEARTBEAT", json!({}), 0),
            ev(12, "acme/widgets#3", 1, "HEARTBEAT", json!({}), 0),
            ev(
                13,
                "agent:d",
                1,
                "HEARTBEAT",
                json!({"agent_id": "d", "current_issue": "Acme/Gadgets#5"}),
                0,
            ),
            ev(14, "agent:e", 1, "TOKEN_USAGE", json!({"current_issue": 4}), 0),
        ]);
        assert_eq!(
            k,
            Keys {
                streams: vec!["acme/gadgets#5".to_owned(), "acme/widgets#3".to_owned()],
                agents: vec!["a".to_owned()],
                numbers: vec![3],
            }
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
