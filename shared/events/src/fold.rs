//! The issue state: a pure fold of an issue stream in version order. The same
//! function feeds the inline `issue_state` table, time travel and `rigctl stream`, so the three
//! can never disagree.

use crate::*;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, sqlx::FromRow)]
pub struct IssueState {
    pub stream_id: String,
    pub repo: String,
    pub issue_number: i64,
    /// `approved`, `assigned`, `in_progress`, `in_review`, `merged`, `done`; `None` until an
    /// event that sets a status arrives.
    pub status: Option<String>,
    pub agent_id: Option<String>,
    pub version: i32,
    pub stuck_count: i32,
    pub last_ci: Option<String>,
    pub pr_number: Option<i64>,
    pub branch: Option<String>,
    pub title: Option<String>,
    pub first_event_at: DateTime<Utc>,
    pub assigned_at: Option<DateTime<Utc>>,
    pub last_heartbeat_at: Option<DateTime<Utc>>,
    pub done_at: Option<DateTime<Utc>>,
    pub updated_at: DateTime<Utc>,
}

/// What the fold needs of an event.
pub struct FoldInput<'a> {
    pub version: i32,
    pub event: &'a Event<'a>,
    pub recorded_at: DateTime<Utc>,
}

impl IssueState {
    pub fn new(stream_id: &str, repo: &str, issue_number: i64, first_event_at: DateTime<Utc>) -> Self {
        IssueState {
            stream_id: stream_id.to_owned(),
            repo: repo.to_owned(),
            issue_number,
            status: None,
            agent_id: None,
            version: 0,
            stuck_count: 0,
            last_ci: None,
            pr_number: None,
            branch: None,
            title: None,
            first_event_at,
            assigned_at: None,
            last_heartbeat_at: None,
            done_at: None,
            updated_at: first_event_at,
        }
    }

    /// Applies one event. Events must come in version order.
    pub fn apply(&mut self, e: &FoldInput<'_>) {
        if let Some(status) = e.event.event_type().and_then(status_set_by) {
            self.status = Some(status.to_owned());
        }
        match e.event {
            Event::IssueApproved(a) => {
                if let Some(t) = &a.title {
                    self.title = Some(t.clone());
                }
            }
            Event::IssueAssigned(a) => {
                self.agent_id = Some(a.agent_id.clone());
                self.assigned_at = Some(e.recorded_at);
            }
            Event::IssueUnassigned(_) => self.agent_id = None,
            Event::BranchCreated(b) => self.branch = Some(b.branch.clone()),
            Event::PrCreated(p) => {
                self.pr_number = Some(p.pr_number);
                if let Some(b) = &p.branch {
                    self.branch = Some(b.clone());
                }
            }
            Event::IssueDone(_) => self.done_at = Some(e.recorded_at),
            Event::CiPassed(_) => self.last_ci = Some("passed".to_owned()),
            Event::CiFailed(_) => self.last_ci = Some("failed".to_owned()),
            Event::AgentStuck(_) => self.stuck_count += 1,
            Event::Heartbeat(_) => self.last_heartbeat_at = Some(e.recorded_at),
            _ => {}
        }
        self.version = e.version;
        self.updated_at = e.recorded_at;
    }
}

/// The status an event of type `ty` gives its issue, or `None` for the types that leave the
/// status as it is. The one table of status transitions: [`IssueState::apply`] uses it, and so
/// does every read model that follows an issue's status (stale-heartbeat).
pub fn status_set_by(ty: EventType) -> Option<&'static str> {
    use EventType::*;
    Some(match ty {
        IssueApproved | IssueUnassigned => "approved",
        IssueAssigned => "assigned",
        WorkStarted | BranchCreated | PrCreated => "in_progress",
        ReviewAssigned | ReviewPassed | ReviewDisputed => "in_review",
        Merged => "merged",
        IssueDone => "done",
        CiPassed | CiFailed | AgentStuck | Heartbeat | HumanGateTriggered | Escalated | TokenUsage => return None,
    })
}

/// Folds stored events of an issue stream (in version order), as time travel and `rigctl
/// stream` read them. `None` for an empty or agent stream.
pub fn fold_stored(stream_id: &str, events: &[StoredEvent]) -> Option<IssueState> {
    let mut fold = StreamFold::new(stream_id);
    for e in events {
        fold.apply(e);
    }
    fold.finish()
}

/// [`fold_stored`] one event at a time, for a reader that pages through a long stream and must
/// not hold all of it: the state is the same whatever the page size.
pub struct StreamFold {
    /// `None` for an agent stream (or an id that is not a stream's): no state to fold.
    issue: Option<(String, String, i64)>,
    state: Option<IssueState>,
}

impl StreamFold {
    pub fn new(stream_id: &str) -> StreamFold {
        let issue = match crate::stream_id::StreamId::parse(stream_id) {
            Ok(crate::stream_id::StreamId::Issue { repo, number }) => Some((stream_id.to_owned(), repo, number)),
            _ => None,
        };
        StreamFold { issue, state: None }
    }

    /// Applies the next event (events must come in version order).
    pub fn apply(&mut self, e: &StoredEvent) {
        let Some((sid, repo, number)) = &self.issue else {
            return;
        };
        let s = self
            .state
            .get_or_insert_with(|| IssueState::new(sid, repo, *number, e.recorded_at));
        // An event stored before a rule of the catalog held, and refused by it now, folds as a
        // type the fold does not know: it still counts as the stream's latest version.
        let event = e.event().unwrap_or(Event::Other);
        s.apply(&FoldInput {
            version: e.version,
            event: &event,
            recorded_at: e.recorded_at,
        });
    }

    pub fn finish(self) -> Option<IssueState> {
        self.state
    }
}

/// Folds a whole issue stream (events in version order). `None` for an empty or agent stream.
pub fn fold_issue<'a>(stream_id: &str, events: impl IntoIterator<Item = FoldInput<'a>>) -> Option<IssueState> {
    let sid = crate::stream_id::StreamId::parse(stream_id).ok()?;
    let (repo, number) = match &sid {
        crate::stream_id::StreamId::Issue { repo, number } => (repo.clone(), *number),
        crate::stream_id::StreamId::Agent(_) => return None,
    };
    let mut state: Option<IssueState> = None;
    for e in events {
        let s = state.get_or_insert_with(|| IssueState::new(stream_id, &repo, number, e.recorded_at));
        s.apply(&e);
    }
    state
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_whole_lifecycle_passes_every_status() {
        let t0 = Utc::now();
        let steps: Vec<(&str, Value, Option<&str>)> = vec![
            (ISSUE_APPROVED, json!({"title": "Fix it"}), Some("approved")),
            (ISSUE_ASSIGNED, json!({"agent_id": "a1"}), Some("assigned")),
            (HEARTBEAT, json!({"agent_id": "a1"}), Some("assigned")),
            (AGENT_STUCK, json!({"agent_id": "a1"}), Some("assigned")),
            (ISSUE_UNASSIGNED, json!({"reason": "stale_heartbeat"}), Some("approved")),
            (ISSUE_ASSIGNED, json!({"agent_id": "a2"}), Some("assigned")),
            (WORK_STARTED, json!({"agent_id": "a2"}), Some("in_progress")),
            (BRANCH_CREATED, json!({"branch": "issue-7-fix"}), Some("in_progress")),
            (PR_CREATED, json!({"pr_number": 12}), Some("in_progress")),
            (CI_FAILED, json!({}), Some("in_progress")),
            (REVIEW_ASSIGNED, json!({}), Some("in_review")),
            (CI_PASSED, json!({}), Some("in_review")),
            (REVIEW_PASSED, json!({}), Some("in_review")),
            (MERGED, json!({}), Some("merged")),
            (ISSUE_DONE, json!({}), Some("done")),
            ("SOMETHING_ELSE", json!({}), Some("done")),
        ];
        let mut s = IssueState::new("acme/w#7", "acme/w", 7, t0);
        for (i, (ty, data, status)) in steps.iter().enumerate() {
            let at = t0 + chrono::Duration::seconds(i as i64);
            let event = Event::parse(ty, 1, data).unwrap();
            s.apply(&FoldInput {
                version: i as i32 + 1,
                event: &event,
                recorded_at: at,
            });
            assert_eq!(s.status.as_deref(), *status, "after {ty}");
        }
        assert_eq!(s.version, 16);
        assert_eq!(s.agent_id.as_deref(), Some("a2"));
        assert_eq!(s.stuck_count, 1);
        assert_eq!(s.last_ci.as_deref(), Some("passed"));
        assert_eq!(s.pr_number, Some(12));
        assert_eq!(s.branch.as_deref(), Some("issue-7-fix"));
        assert_eq!(s.title.as_deref(), Some("Fix it"));
        assert_eq!(s.first_event_at, t0);
        assert_eq!(s.done_at, Some(t0 + chrono::Duration::seconds(14)));
        assert_eq!(s.last_heartbeat_at, Some(t0 + chrono::Duration::seconds(2)));
    }

    #[test]
    fn work_after_a_disputed_review_is_in_progress_again() {
        let t0 = Utc::now();
        let mut s = IssueState::new("acme/w#8", "acme/w", 8, t0);
        let mut data = json!({"agent_id": "a", "branch": "b", "pr_number": 1, "reason": "r"});
        for (i, (ty, status)) in [
            (ISSUE_ASSIGNED, "assigned"),
            (PR_CREATED, "in_progress"),
            (REVIEW_DISPUTED, "in_review"),
            (WORK_STARTED, "in_progress"),
            (ISSUE_APPROVED, "approved"),
        ]
        .into_iter()
        .enumerate()
        {
            data["title"] = json!(ty);
            let event = Event::parse(ty, 1, &data).unwrap();
            s.apply(&FoldInput {
                version: i as i32 + 1,
                event: &event,
                recorded_at: t0,
            });
            assert_eq!(s.status.as_deref(), Some(status), "after {ty}");
            assert_eq!(event.event_type().and_then(status_set_by), Some(status));
        }
        for ty in [
            EventType::CiPassed,
            EventType::CiFailed,
            EventType::AgentStuck,
            EventType::Heartbeat,
            EventType::TokenUsage,
        ] {
            assert_eq!(status_set_by(ty), None, "{ty}");
        }
    }
}
