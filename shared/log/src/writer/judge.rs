//! Judging a batch: which requests are accepted, at which versions, and which are refused and
//! why. Pure: no database, no clock, no I/O. It gets the batch and what `rig_append_begin` read
//! under the append lock ([`Lookup`]) and returns what to write and what to answer; `store.rs`
//! does the reading and the writing around it.
//!
//! Requests are judged one by one in arrival order, each against the state left by the ones
//! before it in the same batch, so a batch decides exactly what the same requests sent one at
//! a time would have: two claims on one issue, one wins; a chain of `expected_version`s holds as
//! long as each link follows the one before. The rules, in the order they are applied:
//!
//! 1. A request reusing a client-given id that an earlier request of this batch writes is
//!    carried to the next batch: it can only be judged once that row exists.
//! 2. Every id already stored in this stream (a retry): answered "already stored" with the
//!    stored range, nothing written.
//! 3. Some id already stored (elsewhere, or only some of them here): `duplicate_event_id`.
//! 4. `expected_version` other than the stream's version: `wrong_expected_version`.
//! 5. An `ISSUE_ASSIGNED` on an issue some agent holds at that point of the request (held
//!    before, or claimed by an earlier event or request): `already_assigned`. The request is
//!    folded onto a copy, so a refused claim changes nothing for the requests after it.
//! 6. Otherwise accepted: its events get the stream's next versions.

use super::{Append, AppendError, AppendOk, Appended};
use chrono::{DateTime, Utc};
use rig_events::fold::{FoldInput, IssueState};
use rig_events::{Event, StreamId};
use serde::Deserialize;
use serde_json::Value;
use std::collections::{HashMap, HashSet};
use std::ops::Range;
use uuid::Uuid;

/// What `rig_append_begin` returns: the state the batch is judged against, read under the lock.
#[derive(Debug, Deserialize)]
pub(super) struct Lookup {
    pub now: DateTime<Utc>,
    /// Client-given ids already stored: (event_id, stream_id, version, position).
    pub stored: Vec<(Uuid, String, i64, i64)>,
    /// The version of each stream of the batch that has events but no `issue_state` row.
    pub versions: HashMap<String, i64>,
    pub issues: Vec<IssueState>,
    pub agents: Vec<AgentRow>,
}

/// A row of `agent_status`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub(super) struct AgentRow {
    pub agent_id: String,
    pub last_heartbeat_at: Option<DateTime<Utc>>,
    pub current_stream_id: Option<String>,
    pub status: Option<String>,
    pub updated_at: DateTime<Utc>,
}

/// One event to insert: event `event` of request `job`, at `version` of the request's stream.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Row {
    pub job: usize,
    pub event: usize,
    pub version: i32,
    /// Who held the issue just before this event (the agent a release or a merge concerns).
    pub holder: Option<String>,
}

/// The fate of one request.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Decision {
    /// Accepted: rows `rows` of the insert.
    Accept { first_version: i64, rows: Range<usize> },
    /// Answered without writing anything: a refusal, or "already stored".
    Done(Result<AppendOk, AppendError>),
    /// Judged in the next batch (rule 1).
    Carry,
}

/// A judged batch: what to write, and what to answer once it is written.
#[derive(Debug)]
pub(super) struct Judged {
    /// The database's clock at the lock: every accepted event's `recorded_at`.
    pub now: DateTime<Utc>,
    /// One per request, in order.
    pub decisions: Vec<Decision>,
    /// The events to insert, in the order they take positions (each stream's in version order).
    pub rows: Vec<Row>,
    /// The `issue_state` rows the accepted requests changed.
    pub issues: Vec<IssueState>,
    /// The `agent_status` rows the accepted requests changed (none when nothing is accepted).
    pub agents: Vec<AgentRow>,
}

/// A request's answer, or `None` when it is carried to the next batch.
pub(super) type Answer = Option<Result<AppendOk, AppendError>>;

impl Judged {
    /// Whether some request is answered "already stored": that answer may rest on another
    /// batch's commit that is not durable yet.
    pub fn answers_already_stored(&self) -> bool {
        self.decisions
            .iter()
            .any(|d| matches!(d, Decision::Done(Ok(AppendOk::AlreadyStored(_)))))
    }

    /// Each request's answer, given the positions the rows were written at (`positions[i]` is
    /// row `i`'s; empty when nothing was written).
    pub fn answers(self, positions: &[i64], sids: &[String]) -> Vec<Answer> {
        let rows = self.rows;
        self.decisions
            .into_iter()
            .map(|d| match d {
                Decision::Carry => None,
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
}

/// Per-stream state as the batch sees it, updated as requests are accepted.
struct StreamHead {
    version: i64,
    issue: Option<IssueState>,
    issue_dirty: bool,
}

/// Judges `batch` (`sids[i]` is request `i`'s stream id as text) against `lookup`.
pub(super) fn judge(batch: &[&Append], sids: &[String], lookup: Lookup) -> Judged {
    let now = lookup.now;
    let stored: HashMap<Uuid, (String, i64, i64)> =
        lookup.stored.into_iter().map(|(id, s, v, p)| (id, (s, v, p))).collect();
    let mut issue_rows: HashMap<String, IssueState> =
        lookup.issues.into_iter().map(|st| (st.stream_id.clone(), st)).collect();
    let mut heads: HashMap<&str, StreamHead> = HashMap::new();
    for s in sids {
        heads.entry(s.as_str()).or_insert_with(|| {
            let issue = issue_rows.remove(s.as_str());
            StreamHead {
                // An issue stream's version is kept in its row, written with every append.
                version: issue
                    .as_ref()
                    .map(|i| i64::from(i.version))
                    .or_else(|| lookup.versions.get(s.as_str()).copied())
                    .unwrap_or(0),
                issue,
                issue_dirty: false,
            }
        });
    }

    let mut rows: Vec<Row> = Vec::new();
    let mut decisions: Vec<Decision> = Vec::with_capacity(batch.len());
    let mut ids_in_batch: HashSet<Uuid> = HashSet::new();
    for (i, a) in batch.iter().enumerate() {
        let sid = sids[i].as_str();
        // 1. An id an earlier request of this batch writes.
        if a.events
            .iter()
            .any(|e| e.id_from_client && ids_in_batch.contains(&e.event_id))
        {
            decisions.push(Decision::Carry);
            continue;
        }
        // 2. A retry: every id stored in this stream.
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
        // 3. Some id stored, but not as a whole retry of this request.
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
        // 4. The version the client expects.
        let head = heads.get_mut(sid).expect("every stream of the batch has a head");
        if let Some(expected) = a.expected_version {
            if expected != head.version {
                decisions.push(Decision::Done(Err(AppendError::WrongExpectedVersion {
                    expected,
                    current: head.version,
                })));
                continue;
            }
        }
        // 5. Claims. Fold the request onto a copy first, so a refused claim changes nothing.
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
        // 6. Accepted.
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

    let (issues, agents) = if rows.is_empty() {
        (Vec::new(), Vec::new())
    } else {
        let issues = heads
            .into_values()
            .filter(|h| h.issue_dirty)
            .filter_map(|h| h.issue)
            .collect();
        (issues, fold_agents(batch, sids, &rows, lookup.agents, now))
    };
    Judged {
        now,
        decisions,
        rows,
        issues,
        agents,
    }
}

/// `agent_status`: last heartbeat, current issue and status per agent, folded from the batch's
/// accepted events onto the rows `rig_append_begin` read. Returns the rows that changed.
fn fold_agents(
    batch: &[&Append],
    sids: &[String],
    rows: &[Row],
    existing: Vec<AgentRow>,
    now: DateTime<Utc>,
) -> Vec<AgentRow> {
    let mut agents: HashMap<String, AgentRow> = existing.into_iter().map(|a| (a.agent_id.clone(), a)).collect();
    let mut touched: Vec<String> = Vec::new();
    for r in rows {
        let e = &batch[r.job].events[r.event];
        // The agent an event on an issue names; without one, the issue's holder. ISSUE_DONE and
        // MERGED declare no agent, but an agent may still name itself in their data.
        let named = match &e.event {
            Event::Heartbeat(h) => Some(h.agent_id.as_ref()),
            Event::IssueAssigned(a) => Some(a.agent_id.as_ref()),
            Event::IssueUnassigned(u) => u.agent_id.as_deref(),
            Event::AgentStuck(s) => Some(s.agent_id.as_ref()),
            Event::WorkStarted(w) => Some(w.agent_id.as_ref()),
            Event::IssueDone(_) | Event::Merged(_) => e.data.get("agent_id").and_then(Value::as_str),
            _ => continue,
        };
        let sid = sids[r.job].as_str();
        let agent = match &batch[r.job].stream {
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
                    a.status = Some(s.to_string());
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
    use super::*;
    use crate::writer::NewEvent;
    use rig_events as events;
    use serde_json::json;

    const ISSUE: &str = "acme/widgets#1";

    fn t0() -> DateTime<Utc> {
        "2026-12-01T00:00:00Z".parse().expect("a timestamp")
    }

    /// An event whose id ingest drew.
    fn ev(event_type: &str, data: Value) -> NewEvent {
        // An event outside the catalog's rules reads as one of an unknown type, as it would
        // never reach the writer.
        let event = Event::read(event_type, 1, &data)
            .map(Event::into_owned)
            .unwrap_or(Event::Other);
        NewEvent {
            event_id: Uuid::new_v4(),
            id_from_client: false,
            event_type: event_type.to_owned(),
            schema_version: 1,
            data,
            event,
            metadata: json!({}),
            occurred_at: None,
        }
    }

    /// An event with a client-given id.
    fn ev_id(event_type: &str, id: u128) -> NewEvent {
        NewEvent {
            event_id: Uuid::from_u128(id),
            id_from_client: true,
            ..ev(event_type, json!({}))
        }
    }

    fn claim(agent: &str) -> NewEvent {
        ev(events::ISSUE_ASSIGNED, json!({ "agent_id": agent }))
    }

    fn append(stream: &str, expected_version: Option<i64>, events: Vec<NewEvent>) -> Append {
        Append {
            stream: StreamId::parse(stream).expect("a stream id"),
            expected_version,
            events,
        }
    }

    fn empty() -> Lookup {
        Lookup {
            now: t0(),
            stored: Vec::new(),
            versions: HashMap::new(),
            issues: Vec::new(),
            agents: Vec::new(),
        }
    }

    /// `ISSUE`'s row at `version`, held by `agent`.
    fn issue_row(version: i32, agent: Option<&str>) -> IssueState {
        let mut st = IssueState::new(ISSUE, "acme/widgets", 1, t0());
        st.version = version;
        st.agent_id = agent.map(str::to_owned);
        st
    }

    fn run(batch: &[Append], lookup: Lookup) -> Judged {
        let refs: Vec<&Append> = batch.iter().collect();
        let sids: Vec<String> = batch.iter().map(|a| a.stream.to_string()).collect();
        judge(&refs, &sids, lookup)
    }

    fn accepted(first_version: i64, rows: Range<usize>) -> Decision {
        Decision::Accept { first_version, rows }
    }

    fn refused(e: AppendError) -> Decision {
        Decision::Done(Err(e))
    }

    fn versions(j: &Judged) -> Vec<i32> {
        j.rows.iter().map(|r| r.version).collect()
    }

    #[test]
    fn versions_follow_the_stream_whether_new_or_known() {
        let mut lookup = empty();
        lookup.versions.insert("agent:ada".into(), 7);
        let j = run(
            &[
                append(
                    ISSUE,
                    None,
                    vec![ev(events::ISSUE_APPROVED, json!({})), ev(events::CI_PASSED, json!({}))],
                ),
                append("agent:ada", None, vec![ev(events::HEARTBEAT, json!({}))]),
                append(ISSUE, None, vec![ev(events::CI_FAILED, json!({}))]),
            ],
            lookup,
        );
        assert_eq!(
            j.decisions,
            vec![accepted(1, 0..2), accepted(8, 2..3), accepted(3, 3..4)]
        );
        assert_eq!(versions(&j), vec![1, 2, 8, 3]);
        assert_eq!(j.issues.len(), 1);
        assert_eq!(j.issues[0].version, 3);
        assert_eq!(j.issues[0].last_ci.as_deref(), Some("failed"));
    }

    #[test]
    fn an_issue_version_comes_from_its_row() {
        let mut lookup = empty();
        lookup.issues.push(issue_row(5, None));
        let j = run(
            &[append(ISSUE, Some(5), vec![ev(events::CI_PASSED, json!({}))])],
            lookup,
        );
        assert_eq!(j.decisions, vec![accepted(6, 0..1)]);
        assert_eq!(j.issues[0].version, 6);
    }

    #[test]
    fn a_wrong_expected_version_is_refused_and_writes_nothing() {
        let mut lookup = empty();
        lookup.issues.push(issue_row(5, None));
        let j = run(&[append(ISSUE, Some(3), vec![claim("ada")])], lookup);
        assert_eq!(
            j.decisions,
            vec![refused(AppendError::WrongExpectedVersion {
                expected: 3,
                current: 5
            })]
        );
        assert!(j.rows.is_empty() && j.issues.is_empty() && j.agents.is_empty());
        assert!(!j.answers_already_stored());
    }

    #[test]
    fn expected_versions_chain_within_a_batch() {
        let one = || vec![ev(events::HEARTBEAT, json!({}))];
        let j = run(
            &[
                append(ISSUE, Some(0), one()),
                append(
                    ISSUE,
                    Some(1),
                    vec![ev(events::CI_PASSED, json!({})), ev(events::CI_FAILED, json!({}))],
                ),
                // Written against version 1 too, but the request before moved the stream on.
                append(ISSUE, Some(1), one()),
                append(ISSUE, Some(3), one()),
                append(ISSUE, None, one()),
            ],
            empty(),
        );
        assert_eq!(
            j.decisions,
            vec![
                accepted(1, 0..1),
                accepted(2, 1..3),
                refused(AppendError::WrongExpectedVersion {
                    expected: 1,
                    current: 3
                }),
                accepted(4, 3..4),
                accepted(5, 4..5),
            ]
        );
        assert_eq!(versions(&j), vec![1, 2, 3, 4, 5]);
    }

    #[test]
    fn a_refused_request_leaves_the_version_to_the_next() {
        let j = run(
            &[
                append(ISSUE, Some(9), vec![claim("ada")]),
                append(ISSUE, Some(0), vec![claim("babbage")]),
            ],
            empty(),
        );
        assert_eq!(
            j.decisions,
            vec![
                refused(AppendError::WrongExpectedVersion {
                    expected: 9,
                    current: 0
                }),
                accepted(1, 0..1)
            ]
        );
        assert_eq!(j.issues[0].agent_id.as_deref(), Some("babbage"));
    }

    #[test]
    fn of_two_claims_in_one_batch_the_first_wins() {
        let j = run(
            &[
                append(ISSUE, None, vec![claim("ada")]),
                append(ISSUE, None, vec![claim("babbage")]),
            ],
            empty(),
        );
        assert_eq!(
            j.decisions,
            vec![
                accepted(1, 0..1),
                refused(AppendError::AlreadyAssigned { agent_id: "ada".into() })
            ]
        );
        assert_eq!(j.issues.len(), 1);
        assert_eq!(j.issues[0].agent_id.as_deref(), Some("ada"));
        assert_eq!(j.issues[0].version, 1);
        let agents: Vec<&str> = j.agents.iter().map(|a| a.agent_id.as_str()).collect();
        assert_eq!(agents, vec!["ada"], "the loser's agent_status is not touched");
    }

    #[test]
    fn a_claim_on_a_held_issue_is_refused() {
        let mut lookup = empty();
        lookup.issues.push(issue_row(3, Some("ada")));
        let j = run(&[append(ISSUE, None, vec![claim("babbage")])], lookup);
        assert_eq!(
            j.decisions,
            vec![refused(AppendError::AlreadyAssigned { agent_id: "ada".into() })]
        );
        assert!(j.rows.is_empty() && j.issues.is_empty());
    }

    #[test]
    fn a_request_refused_by_its_own_second_claim_writes_nothing() {
        // Its first claim would have taken the issue; since the request is refused as a whole,
        // the next request finds the issue free, at the version before.
        let j = run(
            &[
                append(ISSUE, None, vec![claim("ada"), claim("babbage")]),
                append(ISSUE, None, vec![claim("euler")]),
            ],
            empty(),
        );
        assert_eq!(
            j.decisions,
            vec![
                refused(AppendError::AlreadyAssigned { agent_id: "ada".into() }),
                accepted(1, 0..1)
            ]
        );
        assert_eq!(j.issues[0].agent_id.as_deref(), Some("euler"));
    }

    #[test]
    fn a_release_then_a_claim_in_one_batch_both_pass() {
        let mut lookup = empty();
        lookup.issues.push(issue_row(4, Some("ada")));
        lookup.agents.push(AgentRow {
            agent_id: "ada".into(),
            last_heartbeat_at: None,
            current_stream_id: Some(ISSUE.into()),
            status: Some("working".into()),
            updated_at: t0(),
        });
        let j = run(
            &[
                append(
                    ISSUE,
                    None,
                    vec![ev(events::ISSUE_UNASSIGNED, json!({"reason": "stale_heartbeat"}))],
                ),
                append(ISSUE, Some(5), vec![claim("babbage")]),
            ],
            lookup,
        );
        assert_eq!(j.decisions, vec![accepted(5, 0..1), accepted(6, 1..2)]);
        // The release names no agent: it concerns the holder before it.
        assert_eq!(j.rows[0].holder.as_deref(), Some("ada"));
        assert_eq!(j.rows[1].holder, None);
        assert_eq!(j.issues[0].agent_id.as_deref(), Some("babbage"));
        let ada = j.agents.iter().find(|a| a.agent_id == "ada").expect("ada's row");
        assert_eq!(
            (ada.current_stream_id.as_deref(), ada.status.as_deref()),
            (None, Some("idle"))
        );
        let babbage = j
            .agents
            .iter()
            .find(|a| a.agent_id == "babbage")
            .expect("babbage's row");
        assert_eq!(
            (babbage.current_stream_id.as_deref(), babbage.status.as_deref()),
            (Some(ISSUE), Some("working"))
        );
    }

    #[test]
    fn a_retry_of_stored_ids_is_answered_already_stored() {
        let mut lookup = empty();
        lookup.issues.push(issue_row(9, None));
        lookup.stored = vec![
            (Uuid::from_u128(1), ISSUE.into(), 4, 40),
            (Uuid::from_u128(2), ISSUE.into(), 5, 41),
        ];
        // Its expected_version was right when it was first sent: a retry is answered
        // "already stored" before the version is checked.
        let j = run(
            &[append(
                ISSUE,
                Some(3),
                vec![ev_id(events::CI_PASSED, 1), ev_id(events::CI_FAILED, 2)],
            )],
            lookup,
        );
        let stored = Appended {
            stream_id: ISSUE.into(),
            first_version: 4,
            last_version: 5,
            first_position: 40,
            last_position: 41,
        };
        assert_eq!(j.decisions, vec![Decision::Done(Ok(AppendOk::AlreadyStored(stored)))]);
        assert!(j.rows.is_empty());
        assert!(j.answers_already_stored());
    }

    #[test]
    fn an_id_stored_in_another_stream_is_a_duplicate() {
        let mut lookup = empty();
        lookup.stored = vec![(Uuid::from_u128(1), "acme/widgets#2".into(), 1, 10)];
        let j = run(&[append(ISSUE, None, vec![ev_id(events::CI_PASSED, 1)])], lookup);
        let [Decision::Done(Err(AppendError::DuplicateEventId { event_id, detail }))] = &j.decisions[..] else {
            panic!("expected duplicate_event_id, got {:?}", j.decisions);
        };
        assert_eq!(*event_id, Uuid::from_u128(1));
        assert!(detail.contains("another stream (acme/widgets#2)"), "{detail}");
    }

    #[test]
    fn a_partial_retry_is_a_duplicate() {
        let mut lookup = empty();
        lookup.stored = vec![(Uuid::from_u128(1), ISSUE.into(), 1, 10)];
        let j = run(
            &[append(
                ISSUE,
                None,
                vec![ev_id(events::CI_PASSED, 1), ev_id(events::CI_FAILED, 2)],
            )],
            lookup,
        );
        let [Decision::Done(Err(AppendError::DuplicateEventId { event_id, detail }))] = &j.decisions[..] else {
            panic!("expected duplicate_event_id, got {:?}", j.decisions);
        };
        assert_eq!(*event_id, Uuid::from_u128(1));
        assert!(detail.contains("in this stream but other events"), "{detail}");
    }

    #[test]
    fn an_id_written_earlier_in_the_batch_carries_the_request_over() {
        let j = run(
            &[
                // Refused: its id is not written, so it blocks nobody.
                append(ISSUE, Some(7), vec![ev_id(events::CI_PASSED, 1)]),
                append(ISSUE, None, vec![ev_id(events::CI_PASSED, 1)]),
                // The same id again: judged in the next batch, against the stored row.
                append(ISSUE, None, vec![ev_id(events::CI_PASSED, 1)]),
                append(
                    "acme/widgets#2",
                    None,
                    vec![ev_id(events::CI_FAILED, 3), ev_id(events::CI_PASSED, 1)],
                ),
            ],
            empty(),
        );
        assert_eq!(
            j.decisions,
            vec![
                refused(AppendError::WrongExpectedVersion {
                    expected: 7,
                    current: 0
                }),
                accepted(1, 0..1),
                Decision::Carry,
                Decision::Carry,
            ]
        );
        let sids = vec![ISSUE.to_owned(); 4];
        let answers = j.answers(&[100], &sids);
        assert!(answers[0].is_some() && answers[1].is_some());
        assert_eq!((&answers[2], &answers[3]), (&None, &None));
    }

    #[test]
    fn ids_ingest_drew_are_not_looked_up_in_the_batch() {
        // A drawn id is fresh by construction; only the unique constraint stands behind it.
        let e = ev(events::CI_PASSED, json!({}));
        let j = run(
            &[append(ISSUE, None, vec![e.clone()]), append(ISSUE, None, vec![e])],
            empty(),
        );
        assert_eq!(j.decisions, vec![accepted(1, 0..1), accepted(2, 1..2)]);
    }

    #[test]
    fn answers_carry_the_written_positions() {
        let batch = [
            append(
                ISSUE,
                None,
                vec![claim("ada"), ev(events::WORK_STARTED, json!({"agent_id": "ada"}))],
            ),
            append("agent:ada", None, vec![ev(events::HEARTBEAT, json!({}))]),
        ];
        let sids: Vec<String> = batch.iter().map(|a| a.stream.to_string()).collect();
        let j = run(&batch, empty());
        let answers = j.answers(&[100, 101, 102], &sids);
        let created = |stream_id: &str, first_version, last_version, first_position, last_position| {
            Some(Ok(AppendOk::Created(Appended {
                stream_id: stream_id.into(),
                first_version,
                last_version,
                first_position,
                last_position,
            })))
        };
        assert_eq!(
            answers,
            vec![created(ISSUE, 1, 2, 100, 101), created("agent:ada", 1, 1, 102, 102)]
        );
    }

    #[test]
    fn heartbeats_fold_into_agent_status() {
        let j = run(
            &[
                append(ISSUE, None, vec![claim("ada")]),
                append(
                    "agent:ada",
                    None,
                    vec![ev(
                        events::HEARTBEAT,
                        json!({"agent_id": "ada", "status": "thinking", "current_issue": "Acme/Widgets#1"}),
                    )],
                ),
                append(
                    "agent:babbage",
                    None,
                    vec![ev(
                        events::HEARTBEAT,
                        json!({"agent_id": "babbage", "current_issue": 42}),
                    )],
                ),
                append(
                    "agent:euler",
                    None,
                    vec![ev(events::AGENT_STUCK, json!({"agent_id": "euler"}))],
                ),
            ],
            empty(),
        );
        let by_name: HashMap<&str, &AgentRow> = j.agents.iter().map(|a| (a.agent_id.as_str(), a)).collect();
        let ada = by_name["ada"];
        assert_eq!(ada.current_stream_id.as_deref(), Some(ISSUE));
        assert_eq!(ada.status.as_deref(), Some("thinking"));
        assert_eq!(ada.last_heartbeat_at, Some(t0()));
        // A bare number with no issue to resolve it against is kept as the agent said it.
        assert_eq!(by_name["babbage"].current_stream_id.as_deref(), Some("42"));
        assert_eq!(by_name["euler"].status.as_deref(), Some("stuck"));
    }
}
