//! The periodic stale check, run only by the active instance.
//!
//! Every `check_interval` it takes the held issues in a watched status (`assigned` or
//! `in_progress`, see `rig_projections::stale_heartbeat`) quiet for longer than `threshold` (database time
//! against the server's `recorded_at`) and asks ingest, in ONE append request, for
//! `AGENT_STUCK` then `ISSUE_UNASSIGNED {reason: "stale_heartbeat"}`. Held issues in review,
//! merged or done are waiting on someone else, so their holder's silence is not a fault.
//!
//! What it promises:
//! - **An agent that shows life wins.** The request carries `expected_version` = the stream
//!   version the projection saw, so any event that landed on the issue since (a heartbeat, a
//!   push) makes ingest answer 409 and append nothing. Issues with events the projection has
//!   not applied yet (on the issue stream, or heartbeats on the holder's stream) are left for
//!   the next round, and no check runs while the projection is far behind the log.
//! - **Never twice.** Event ids are UUIDv5 of the stream and that version, so a retry, a restart
//!   in the middle of a check or a second instance sends the same ids, and ingest answers 200
//!   with nothing new written.
//! - **Nothing lost while ingest is away.** Network errors and 5xx are retried with exponential
//!   backoff (`backon`) until ingest answers, this instance stops being active, or shutdown.
//!
//! The ingest token is a secret: it is sent in a header marked sensitive and never logged.

use backon::{ExponentialBuilder, Retryable};
use chrono::{DateTime, SecondsFormat, Utc};
use reqwest::header::{HeaderValue, AUTHORIZATION};
use reqwest::StatusCode;
use rig_ops::config::StaleHeartbeatSettings;
use rig_projections::STALE_HEARTBEAT;
use secrecy::{ExposeSecret, SecretString};
use serde_json::{json, Value};
use sqlx::PgPool;
use std::time::Duration;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// Namespace of the event ids this worker derives (UUIDv5), fixed forever: changing it would let
/// a restarted worker emit a second pair for the same stale version.
pub const ID_NAMESPACE: Uuid = Uuid::from_u128(0x6c0b_3c8e_5f0d_4a57_9b1e_2f6d_8a4c_71e3);

/// Beyond this many unapplied events the projection is catching up (a rebuild, a long stop):
/// its last-seen times are old news, so the round is skipped instead of unassigning busy agents.
const MAX_LAG_FOR_CHECK: i64 = 10_000;

/// Most issues declared stuck per round; the rest wait for the next one.
const MAX_PER_ROUND: i64 = 1_000;

/// How many held issues are in a watched status: the ones a silent holder can be caught on.
/// The status list is the one of [`rig_projections::stale_heartbeat::WATCHED`] and of the partial index of
/// migration 0023 (spelled the same way, so the planner can use it).
const TRACKED: &str = "SELECT count(*) FROM stale_heartbeat_issues WHERE status IN ('assigned', 'in_progress')";

/// The watched held issues quiet for longer than `$1` seconds, oldest first, leaving out those
/// with events the projection has not applied yet.
const STALE: &str = "\
SELECT s.stream_id, s.agent_id, s.version, s.last_seen_at, \
       extract(epoch FROM now() - s.last_seen_at)::float8 AS elapsed_seconds \
FROM stale_heartbeat_issues s \
WHERE s.status IN ('assigned', 'in_progress') \
  AND s.last_seen_at < now() - make_interval(secs => $1) \
  AND NOT EXISTS (SELECT 1 FROM events e WHERE \
      e.position > coalesce((SELECT position FROM checkpoints WHERE consumer = $2), 0) \
      AND (e.stream_id = s.stream_id OR (e.stream_id = 'agent:' || s.agent_id AND e.event_type = 'HEARTBEAT'))) \
ORDER BY s.last_seen_at LIMIT $3";

/// A tracked issue found quiet for too long.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Stale {
    pub stream_id: String,
    pub agent_id: String,
    pub version: i32,
    pub last_seen_at: DateTime<Utc>,
    pub elapsed_seconds: f64,
}

/// The deterministic event ids of the pair for `stream` at `version`.
pub fn event_ids(stream: &str, version: i32) -> (Uuid, Uuid) {
    (
        Uuid::new_v5(&ID_NAMESPACE, format!("stuck:{stream}:{version}").as_bytes()),
        Uuid::new_v5(&ID_NAMESPACE, format!("unassign:{stream}:{version}").as_bytes()),
    )
}

/// The append request for one stale issue.
pub fn append_request(s: &Stale) -> Value {
    let (stuck, unassign) = event_ids(&s.stream_id, s.version);
    let meta = json!({"source": "rig-stale-heartbeat", "correlation_id": stuck});
    json!({
        "stream_id": s.stream_id,
        "expected_version": s.version,
        "events": [
            {"id": stuck, "type": "AGENT_STUCK", "data": {
                "agent_id": s.agent_id,
                "reason": "stale_heartbeat",
                "elapsed_seconds": s.elapsed_seconds.max(0.0).floor() as u64,
                "last_heartbeat_at": s.last_seen_at.to_rfc3339_opts(SecondsFormat::Micros, true),
            }, "metadata": meta},
            {"id": unassign, "type": "ISSUE_UNASSIGNED", "data": {
                "reason": "stale_heartbeat",
                "agent_id": s.agent_id,
            }, "metadata": meta},
        ],
    })
}

/// How one append request ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Reply {
    /// 201: the pair was appended now.
    Appended,
    /// 200: the pair was already stored (a restart or the other instance did it).
    AlreadyStored,
    /// 409: something landed on the stream meanwhile; the agent is not stuck.
    Conflict(String),
    /// Any other 4xx: retrying the same request cannot help.
    Refused(StatusCode, String),
}

#[derive(Debug, thiserror::Error)]
enum Transient {
    #[error("cannot reach ingest: {0}")]
    Network(reqwest::Error),
    #[error("ingest answered {0}")]
    Server(StatusCode),
}

/// The path prefix of a tenant's routes on ingest: none for `default`.
fn tenant_prefix(tenant: &str) -> String {
    if tenant == rig_tenants::DEFAULT {
        String::new()
    } else {
        format!("/t/{tenant}")
    }
}

/// The checker's metrics at rest, registered once per process: a hot standby, which runs no
/// checker, shows them too.
pub fn register_metrics() {
    for kind in ["network", "server", "refused", "database"] {
        metrics::counter!("rig_stale_heartbeat_errors_total", "kind" => kind).increment(0);
    }
    metrics::counter!("rig_stale_heartbeat_stuck_total").increment(0);
    metrics::counter!("rig_stale_heartbeat_checks_total").increment(0);
    metrics::counter!("rig_stale_heartbeat_conflicts_total").increment(0);
}

pub struct Checker {
    pool: PgPool,
    client: reqwest::Client,
    events_url: String,
    token: Option<SecretString>,
    threshold: Duration,
    check_interval: Duration,
    /// Before the first check: nothing for `default`; for other tenants a share of
    /// `check_interval` fixed by the slug, so that hundreds of tenants taken up at once do not
    /// all check (each on a connection of its own) in the same instant.
    first_delay: Duration,
}

impl Checker {
    /// The checker of `tenant`'s log: it appends through that tenant's routes of ingest, and
    /// `threshold` (the tenant's own, when it has one) replaces the deployment's.
    pub fn new(
        pool: PgPool,
        s: &StaleHeartbeatSettings,
        tenant: &str,
        threshold: Option<Duration>,
    ) -> anyhow::Result<Self> {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .connect_timeout(Duration::from_secs(5))
            .user_agent(concat!("rig-stale-heartbeat/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Checker {
            pool,
            client,
            events_url: format!(
                "{}{}/v1/events",
                s.ingest_url.trim_end_matches('/'),
                tenant_prefix(tenant)
            ),
            token: s.ingest_token.clone(),
            threshold: threshold.unwrap_or(s.threshold),
            check_interval: s.check_interval,
            first_delay: rig_tenants::spread(tenant, s.check_interval),
        })
    }

    /// Checks every `check_interval` while this instance is the active one, until `shutdown`.
    pub async fn run(self, mut active: watch::Receiver<bool>, shutdown: CancellationToken) {
        loop {
            // Wait to become the active instance.
            while !*active.borrow_and_update() {
                tokio::select! {
                    r = active.changed() => if r.is_err() { return },
                    _ = shutdown.cancelled() => return,
                }
            }
            tracing::info!(
                threshold = ?self.threshold, check_interval = ?self.check_interval,
                "active: checking for stale heartbeats"
            );
            let mut tick =
                tokio::time::interval_at(tokio::time::Instant::now() + self.first_delay, self.check_interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    r = active.changed() => {
                        if r.is_err() { return }
                        if !*active.borrow_and_update() { break }
                        continue;
                    }
                    _ = shutdown.cancelled() => return,
                }
                if let Err(e) = self.check_once(&active, &shutdown).await {
                    metrics::counter!("rig_stale_heartbeat_errors_total", "kind" => "database").increment(1);
                    tracing::warn!(error = %e, "stale check failed; will try again next round");
                }
            }
        }
    }

    /// One round: finds the stale issues and asks ingest to unassign each.
    pub async fn check_once(
        &self,
        active: &watch::Receiver<bool>,
        shutdown: &CancellationToken,
    ) -> anyhow::Result<usize> {
        metrics::counter!("rig_stale_heartbeat_checks_total").increment(1);
        let tracked: i64 = sqlx::query_scalar(TRACKED).fetch_one(&self.pool).await?;
        metrics::gauge!("rig_stale_heartbeat_tracked").set(tracked as f64);
        let lag: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM (SELECT 1 FROM events WHERE position > \
             coalesce((SELECT position FROM checkpoints WHERE consumer = $1), 0) LIMIT $2) l",
        )
        .bind(STALE_HEARTBEAT.name)
        .bind(MAX_LAG_FOR_CHECK + 1)
        .fetch_one(&self.pool)
        .await?;
        if lag > MAX_LAG_FOR_CHECK {
            tracing::info!(
                lag,
                "the projection is catching up with the log; stale check skipped this round"
            );
            return Ok(0);
        }
        let stale: Vec<Stale> = sqlx::query_as(STALE)
            .bind(self.threshold.as_secs_f64())
            .bind(STALE_HEARTBEAT.name)
            .bind(MAX_PER_ROUND)
            .fetch_all(&self.pool)
            .await?;
        let mut appended = 0;
        for s in &stale {
            if shutdown.is_cancelled() || !*active.borrow() {
                break;
            }
            let reply = tokio::select! {
                r = self.declare_stuck(s) => r,
                _ = shutdown.cancelled() => break,
                _ = lost(active.clone()) => break,
            };
            match reply {
                Reply::Appended => {
                    appended += 1;
                    metrics::counter!("rig_stale_heartbeat_stuck_total").increment(1);
                    tracing::warn!(
                        stream_id = %s.stream_id, agent_id = %s.agent_id, elapsed_seconds = s.elapsed_seconds.floor(),
                        "agent stuck: no sign of life for longer than the threshold; issue unassigned"
                    );
                }
                Reply::AlreadyStored => {
                    tracing::info!(stream_id = %s.stream_id, agent_id = %s.agent_id, "agent stuck already recorded");
                }
                Reply::Conflict(detail) => {
                    metrics::counter!("rig_stale_heartbeat_conflicts_total").increment(1);
                    tracing::info!(
                        stream_id = %s.stream_id, agent_id = %s.agent_id, %detail,
                        "the issue moved meanwhile (409): not stuck, nothing appended"
                    );
                }
                Reply::Refused(status, detail) => {
                    metrics::counter!("rig_stale_heartbeat_errors_total", "kind" => "refused").increment(1);
                    let hint = if matches!(status, StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN) {
                        "check stale_heartbeat.ingest_token against ingest.auth_tokens"
                    } else {
                        "this is a bug; the issue is retried next round"
                    };
                    tracing::error!(stream_id = %s.stream_id, %status, %detail, hint, "ingest refused the stuck report");
                }
            }
        }
        Ok(appended)
    }

    /// Sends the pair for `s`, retrying network errors and 5xx with exponential backoff until
    /// ingest gives a definite answer. Cancelled by the caller on shutdown or loss of leadership.
    async fn declare_stuck(&self, s: &Stale) -> Reply {
        let body = append_request(s);
        let backoff = ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(200))
            .with_max_delay(Duration::from_secs(10))
            .with_jitter()
            .without_max_times();
        let attempt = || self.post(&body);
        let retried = attempt
            .retry(backoff)
            .sleep(tokio::time::sleep)
            .notify(|e: &Transient, delay| {
                let kind = match e {
                    Transient::Network(_) => "network",
                    Transient::Server(_) => "server",
                };
                metrics::counter!("rig_stale_heartbeat_errors_total", "kind" => kind).increment(1);
                tracing::warn!(stream_id = %s.stream_id, error = %e, ?delay, "stuck report not delivered; retrying");
            })
            .await;
        match retried {
            Ok(r) => r,
            // `without_max_times` never gives up; kept total for the type checker.
            Err(e) => Reply::Refused(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
        }
    }

    async fn post(&self, body: &Value) -> Result<Reply, Transient> {
        let mut req = self.client.post(&self.events_url).json(body);
        if let Some(t) = &self.token {
            if let Ok(mut v) = HeaderValue::from_str(&format!("Bearer {}", t.expose_secret())) {
                v.set_sensitive(true);
                req = req.header(AUTHORIZATION, v);
            }
        }
        let resp = req.send().await.map_err(|e| Transient::Network(e.without_url()))?;
        let status = resp.status();
        if status.is_server_error() {
            return Err(Transient::Server(status));
        }
        let detail = || async move {
            let v: Value = resp.json().await.unwrap_or(Value::Null);
            let code = v.get("error").and_then(Value::as_str).unwrap_or("").to_owned();
            let text = v
                .get("detail")
                .and_then(Value::as_str)
                .unwrap_or("")
                .chars()
                .take(300)
                .collect::<String>();
            format!("{code}: {text}")
        };
        Ok(match status {
            StatusCode::CREATED => Reply::Appended,
            StatusCode::OK => Reply::AlreadyStored,
            StatusCode::CONFLICT => Reply::Conflict(detail().await),
            s => Reply::Refused(s, detail().await),
        })
    }
}

/// Resolves when this instance stops being the active one.
async fn lost(mut active: watch::Receiver<bool>) {
    loop {
        if !*active.borrow_and_update() {
            return;
        }
        if active.changed().await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn queries_watch_exactly_the_projection_s_watched_statuses() {
        let list = rig_projections::stale_heartbeat::WATCHED
            .map(|w| format!("'{w}'"))
            .join(", ");
        for q in [TRACKED, STALE] {
            assert!(q.contains(&format!("status IN ({list})")), "{q}");
        }
    }

    #[test]
    fn ids_depend_only_on_stream_and_version() {
        let (a, b) = event_ids("acme/widgets#42", 7);
        assert_eq!((a, b), event_ids("acme/widgets#42", 7));
        assert_ne!(a, b);
        assert_ne!(a, event_ids("acme/widgets#42", 8).0);
        assert_ne!(a, event_ids("acme/widgets#43", 7).0);
    }

    #[test]
    fn request_is_one_append_of_stuck_then_unassigned_at_the_seen_version() {
        let s = Stale {
            stream_id: "acme/widgets#42".into(),
            agent_id: "dev-1".into(),
            version: 3,
            last_seen_at: "2026-04-21T09:00:05Z".parse().unwrap(),
            elapsed_seconds: 1860.7,
        };
        let body = append_request(&s);
        assert_eq!(body["stream_id"], "acme/widgets#42");
        assert_eq!(body["expected_version"], 3);
        let events = body["events"].as_array().unwrap();
        assert_eq!(events.len(), 2);
        assert_eq!(events[0]["type"], "AGENT_STUCK");
        assert_eq!(events[0]["data"]["elapsed_seconds"], 1860);
        assert_eq!(events[0]["data"]["reason"], "stale_heartbeat");
        assert_eq!(events[0]["data"]["last_heartbeat_at"], "2026-04-21T09:00:05.000000Z");
        assert_eq!(events[1]["type"], "ISSUE_UNASSIGNED");
        assert_eq!(
            events[1]["data"],
            json!({"reason": "stale_heartbeat", "agent_id": "dev-1"})
        );
        for e in events {
            rig_events::validate(e["type"].as_str().unwrap(), &e["data"]).unwrap();
        }
        assert_eq!(events[0]["id"], json!(event_ids("acme/widgets#42", 3).0));
    }
}
