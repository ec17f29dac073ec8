//! rig-stale-heartbeat against the real Postgres, a real ingest and the real binary: quiet
//! issues get exactly one AGENT_STUCK + ISSUE_UNASSIGNED pair, through kill -9, two instances
//! and an ingest that is away; issues that show life never do. Thresholds are seconds here
//! (threshold 2s, check every 500ms). And the house rule for tailing workers: killed with SIGKILL
//! at random moments of a catch-up over ~30k events, its table still equals a fold of the whole
//! log written in this file.
#![allow(clippy::unwrap_used)]

use chrono::{DateTime, Utc};
use rand::{Rng, SeedableRng};
use reqwest::StatusCode;
use rig_tests::{append_tx, commit_append, free_port, wait_for, wait_http_ok, Proc, TestDb, TestIngest};
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{watch, Notify};

const THRESHOLD: &str = "2s";

struct Worker {
    proc: Proc,
    metrics: String,
}

fn spawn_worker(db: &TestDb, ingest_url: &str) -> Worker {
    spawn_worker_with(db, ingest_url, THRESHOLD, &[])
}

/// The worker with another `threshold` and extra settings (later ones win).
fn spawn_worker_with(db: &TestDb, ingest_url: &str, threshold: &str, extra: &[(&str, String)]) -> Worker {
    let port = free_port();
    let mut env = vec![
        ("DATABASE_URL", db.url.clone()),
        ("RIG_STALE_HEARTBEAT__INGEST_TOKEN", INGEST_TOKEN.into()),
        ("RIG_STALE_HEARTBEAT__METRICS_LISTEN", format!("127.0.0.1:{port}")),
        ("RIG_STALE_HEARTBEAT__THRESHOLD", threshold.into()),
        ("RIG_STALE_HEARTBEAT__CHECK_INTERVAL", "500ms".into()),
        ("RIG_STALE_HEARTBEAT__INGEST_URL", ingest_url.to_owned()),
        ("RIG_CONSUMER__POLL_INTERVAL", "200ms".into()),
    ];
    env.extend(extra.iter().map(|(k, v)| (*k, v.clone())));
    let proc = Proc::spawn("rig-stale-heartbeat", &[], &env);
    Worker {
        proc,
        metrics: format!("http://127.0.0.1:{port}/metrics"),
    }
}

/// The value of one series in a Prometheus text page (`name` includes labels, if any).
async fn metric(url: &str, series: &str) -> Option<f64> {
    let text = reqwest::get(url).await.ok()?.text().await.ok()?;
    text.lines()
        .find(|l| l.strip_prefix(series).is_some_and(|rest| rest.starts_with(' ')))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

async fn wait_active(w: &Worker) {
    wait_http_ok(&w.metrics.replace("/metrics", "/readyz"), Duration::from_secs(60)).await;
    wait_for(
        "the worker to be the active instance",
        Duration::from_secs(20),
        || async {
            (metric(
                &w.metrics,
                "rig_consumer_active{consumer=\"stale-heartbeat\",tenant=\"default\"}",
            )
            .await
                == Some(1.0))
            .then_some(())
        },
    )
    .await;
}

/// The bearer token of the test that runs ingest with `auth_tokens` (others ignore it).
const INGEST_TOKEN: &str = "stale-test-secret-token";

async fn append(ingest: &TestIngest, stream: &str, events: Value) {
    let r = reqwest::Client::new()
        .post(ingest.url("/v1/events"))
        .bearer_auth(INGEST_TOKEN)
        .json(&json!({"stream_id": stream, "events": events}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED, "{}", r.text().await.unwrap());
}

async fn assign(ingest: &TestIngest, stream: &str, agent: &str) {
    append(
        ingest,
        stream,
        json!([{"type": "ISSUE_APPROVED"}, {"type": "ISSUE_ASSIGNED", "data": {"agent_id": agent}}]),
    )
    .await;
}

async fn count_type(db: &TestDb, stream: &str, event_type: &str) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM events WHERE stream_id = $1 AND event_type = $2")
        .bind(stream)
        .bind(event_type)
        .fetch_one(&db.pool)
        .await
        .unwrap()
}

async fn issue(db: &TestDb, stream: &str) -> (String, i32, Option<String>) {
    sqlx::query_as("SELECT status, stuck_count, agent_id FROM issue_state WHERE stream_id = $1")
        .bind(stream)
        .fetch_one(&db.pool)
        .await
        .unwrap()
}

/// Waits until the projection has applied the whole log, then until the active worker has run
/// `rounds` more checks: afterwards, anything it was going to append is in the log.
async fn settle(db: &TestDb, w: &Worker, rounds: f64) {
    wait_for("the projection to reach the head", Duration::from_secs(20), || async {
        let lag = db
            .count(
                "SELECT count(*) FROM events WHERE position > \
                 coalesce((SELECT position FROM checkpoints WHERE consumer = 'stale-heartbeat'), 0)",
            )
            .await;
        (lag == 0).then_some(())
    })
    .await;
    let start = metric(&w.metrics, "rig_stale_heartbeat_checks_total")
        .await
        .unwrap_or(0.0);
    wait_for("more check rounds", Duration::from_secs(20), || async {
        (metric(&w.metrics, "rig_stale_heartbeat_checks_total").await? >= start + rounds).then_some(())
    })
    .await;
}

async fn assert_one_pair(db: &TestDb, stream: &str, agent: &str) {
    assert_eq!(
        count_type(db, stream, "AGENT_STUCK").await,
        1,
        "{stream}: exactly one AGENT_STUCK"
    );
    assert_eq!(
        count_type(db, stream, "ISSUE_UNASSIGNED").await,
        1,
        "{stream}: exactly one ISSUE_UNASSIGNED"
    );
    assert_eq!(issue(db, stream).await, ("approved".to_owned(), 1, None), "{stream}");
    let (data, version): (Value, i32) =
        sqlx::query_as("SELECT data, version FROM events WHERE stream_id = $1 AND event_type = 'AGENT_STUCK'")
            .bind(stream)
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(data["agent_id"], agent);
    assert_eq!(data["reason"], "stale_heartbeat");
    assert!(data["elapsed_seconds"].as_f64().unwrap() >= 2.0, "{data}");
    // The pair is one append right after the version the checker saw.
    let next: String = sqlx::query_scalar("SELECT event_type FROM events WHERE stream_id = $1 AND version = $2")
        .bind(stream)
        .bind(version + 1)
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(next, "ISSUE_UNASSIGNED");
}

/// A TCP proxy in front of ingest that can hold the first request until released, and delays
/// every response chunk: it puts the checker's request "in flight" for as long as a test needs.
struct Proxy {
    url: String,
    seen: Arc<Notify>,
    open: watch::Sender<bool>,
}

impl Proxy {
    async fn start(upstream: &str, hold_first: bool, response_delay: Duration) -> Proxy {
        let upstream: SocketAddr = upstream.trim_start_matches("http://").parse().unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let seen = Arc::new(Notify::new());
        let (open, gate) = watch::channel(!hold_first);
        let s = seen.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = tokio::net::TcpStream::connect(upstream).await else {
                    continue;
                };
                let (mut cr, mut cw) = client.into_split();
                let (mut sr, mut sw) = server.into_split();
                let (seen, mut gate) = (s.clone(), gate.clone());
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 65536];
                    loop {
                        let n = match cr.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => n,
                        };
                        if !*gate.borrow() {
                            seen.notify_one();
                            while !*gate.borrow_and_update() {
                                if gate.changed().await.is_err() {
                                    return;
                                }
                            }
                        }
                        if sw.write_all(&buf[..n]).await.is_err() {
                            return;
                        }
                    }
                });
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 65536];
                    loop {
                        let n = match sr.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => n,
                        };
                        tokio::time::sleep(response_delay).await;
                        if cw.write_all(&buf[..n]).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        Proxy { url, seen, open }
    }
}

#[tokio::test]
async fn quiet_assigned_issue_gets_exactly_one_stuck_and_unassign() {
    let db = TestDb::new().await;
    // Ingest requires a bearer token here: the worker sends its configured one.
    let ingest = TestIngest::start_with(&db, |s| {
        s.ingest.auth_tokens = serde_json::from_value(json!([INGEST_TOKEN])).unwrap()
    })
    .await;
    let w = spawn_worker(&db, &ingest.base);
    wait_active(&w).await;
    let stream = "acme/widgets#42";
    assign(&ingest, stream, "dev-quiet").await;
    let stuck_after = wait_for("AGENT_STUCK on the quiet issue", Duration::from_secs(15), || async {
        (count_type(&db, stream, "AGENT_STUCK").await > 0).then_some(())
    });
    let started = std::time::Instant::now();
    stuck_after.await;
    assert!(
        started.elapsed() >= Duration::from_millis(1500),
        "not declared stuck before the threshold"
    );
    settle(&db, &w, 3.0).await;
    assert_one_pair(&db, stream, "dev-quiet").await;
    assert_eq!(metric(&w.metrics, "rig_stale_heartbeat_stuck_total").await, Some(1.0));
    assert_eq!(metric(&w.metrics, "rig_stale_heartbeat_tracked").await, Some(0.0));
    assert_eq!(db.count("SELECT count(*) FROM stale_heartbeat_issues").await, 0);
    let log = w.proc.log_text();
    assert!(
        log.contains("agent stuck") && log.contains("dev-quiet"),
        "logged with the agent:\n{log}"
    );
    assert!(!log.contains(INGEST_TOKEN), "the ingest token is a secret");
}

/// The stored row of `stream` as (agent, status, version, whether `last_seen_at` is the latest
/// `recorded_at` of the stream), or `None` if the stream is not held.
async fn held_row(db: &TestDb, stream: &str) -> Option<(String, String, i32, bool)> {
    sqlx::query_as(
        "SELECT agent_id, status, version, \
                last_seen_at = (SELECT max(recorded_at) FROM events WHERE stream_id = $1) \
         FROM stale_heartbeat_issues WHERE stream_id = $1",
    )
    .bind(stream)
    .fetch_optional(&db.pool)
    .await
    .unwrap()
}

#[tokio::test]
async fn silence_after_reworking_a_disputed_review_is_caught_but_review_and_done_are_not() {
    let db = TestDb::new().await;
    let ingest = TestIngest::start(&db).await;
    let w = spawn_worker(&db, &ingest.base);
    wait_active(&w).await;
    let (rework, review, done) = ("acme/widgets#11", "acme/widgets#12", "acme/widgets#13");
    // Each history up to the review is one append, so no issue is ever quiet while watched
    // before the test means it to be. The two that wait on someone else go quiet first: they
    // are quiet for longer than the reworked one whenever the checker looks.
    let worked = |agent: &str, then: Value| {
        let mut events = json!([{"type": "ISSUE_APPROVED"},
            {"type": "ISSUE_ASSIGNED", "data": {"agent_id": agent}},
            {"type": "WORK_STARTED", "data": {"agent_id": agent}},
            {"type": "PR_CREATED", "data": {"pr_number": 5, "agent_id": agent}}]);
        events
            .as_array_mut()
            .unwrap()
            .extend(then.as_array().unwrap().iter().cloned());
        events
    };
    append(
        &ingest,
        review,
        worked(
            "dev-review",
            json!([{"type": "REVIEW_ASSIGNED", "data": {"reviewer": "rev"}}]),
        ),
    )
    .await;
    append(
        &ingest,
        done,
        worked(
            "dev-done",
            json!([{"type": "REVIEW_PASSED", "data": {"reviewer": "rev"}}, {"type": "MERGED", "data": {}},
                   {"type": "ISSUE_DONE", "data": {}}]),
        ),
    )
    .await;
    append(
        &ingest,
        rework,
        worked(
            "dev-rework",
            json!([{"type": "REVIEW_DISPUTED", "data": {"reviewer": "rev"}}]),
        ),
    )
    .await;
    // In review nothing is watched; the rework puts the issue back to in_progress.
    append(
        &ingest,
        rework,
        json!([{"type": "WORK_STARTED", "data": {"agent_id": "dev-rework"}}]),
    )
    .await;
    // Then silence everywhere.
    wait_for("AGENT_STUCK on the reworked issue", Duration::from_secs(15), || async {
        (count_type(&db, rework, "AGENT_STUCK").await > 0).then_some(())
    })
    .await;
    settle(&db, &w, 3.0).await;
    assert_one_pair(&db, rework, "dev-rework").await;
    // Quiet since the WORK_STARTED that put it back to in_progress.
    let since_rework: bool = sqlx::query_scalar(
        "SELECT (s.data->>'last_heartbeat_at')::timestamptz = w.recorded_at \
         FROM events s, events w WHERE s.stream_id = $1 AND s.event_type = 'AGENT_STUCK' \
         AND w.stream_id = $1 AND w.event_type = 'WORK_STARTED' AND w.version = 6",
    )
    .bind(rework)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert!(since_rework, "last sign of life is the WORK_STARTED after the dispute");
    for (s, agent, status) in [(review, "dev-review", "in_review"), (done, "dev-done", "done")] {
        assert_eq!(count_type(&db, s, "AGENT_STUCK").await, 0, "{s} waits on someone else");
        assert_eq!(count_type(&db, s, "ISSUE_UNASSIGNED").await, 0, "{s}");
        assert_eq!(issue(&db, s).await, (status.to_owned(), 0, Some(agent.to_owned())));
        // Still held, in its status, up to date with its stream.
        let last = db
            .count(&format!(
                "SELECT max(version)::int8 FROM events WHERE stream_id = '{s}'"
            ))
            .await;
        assert_eq!(
            held_row(&db, s).await,
            Some((agent.to_owned(), status.to_owned(), last as i32, true)),
            "{s}"
        );
    }
    assert_eq!(held_row(&db, rework).await, None, "unassigned: no longer held");
    // The gauge counts only the issues a silent holder can be caught on.
    assert_eq!(metric(&w.metrics, "rig_stale_heartbeat_tracked").await, Some(0.0));
}

#[tokio::test]
async fn sigkill_in_the_middle_of_a_check_never_emits_twice() {
    let db = TestDb::new().await;
    let ingest = TestIngest::start(&db).await;
    // Each answer from ingest takes 150 ms to come back: a round over 20 issues takes ~3 s, and
    // the kill lands while a request is in flight (appended by ingest, not yet seen by the worker).
    let proxy = Proxy::start(&ingest.base, false, Duration::from_millis(150)).await;
    let mut w = spawn_worker(&db, &proxy.url);
    wait_active(&w).await;
    let streams: Vec<String> = (1..=20).map(|n| format!("acme/widgets#{n}")).collect();
    for (i, s) in streams.iter().enumerate() {
        assign(&ingest, s, &format!("dev-{i}")).await;
    }
    wait_for("a few issues declared stuck", Duration::from_secs(20), || async {
        (db.count("SELECT count(*) FROM events WHERE event_type = 'AGENT_STUCK'")
            .await
            >= 5)
            .then_some(())
    })
    .await;
    w.proc.kill9();
    let killed_at = db
        .count("SELECT count(*) FROM events WHERE event_type = 'AGENT_STUCK'")
        .await;
    assert!(
        killed_at < 20,
        "the kill must land mid-round (found {killed_at} of 20 already)"
    );

    let w = spawn_worker(&db, &proxy.url);
    wait_active(&w).await;
    wait_for("every issue declared stuck", Duration::from_secs(30), || async {
        (db.count("SELECT count(*) FROM events WHERE event_type = 'ISSUE_UNASSIGNED'")
            .await
            == 20)
            .then_some(())
    })
    .await;
    settle(&db, &w, 3.0).await;
    for (i, s) in streams.iter().enumerate() {
        assert_one_pair(&db, s, &format!("dev-{i}")).await;
    }
    assert_eq!(
        db.count("SELECT count(*) FROM events WHERE event_type = 'AGENT_STUCK'")
            .await,
        20
    );
}

#[tokio::test]
async fn two_instances_emit_once_and_the_standby_takes_over() {
    let db = TestDb::new().await;
    let ingest = TestIngest::start(&db).await;
    let mut a = spawn_worker(&db, &ingest.base);
    wait_active(&a).await;
    let b = spawn_worker(&db, &ingest.base);
    wait_http_ok(&b.metrics.replace("/metrics", "/readyz"), Duration::from_secs(60)).await;
    assert_eq!(
        metric(
            &b.metrics,
            "rig_consumer_active{consumer=\"stale-heartbeat\",tenant=\"default\"}"
        )
        .await,
        Some(0.0)
    );

    assign(&ingest, "acme/widgets#1", "dev-1").await;
    wait_for("the pair for #1", Duration::from_secs(15), || async {
        (count_type(&db, "acme/widgets#1", "ISSUE_UNASSIGNED").await > 0).then_some(())
    })
    .await;
    settle(&db, &a, 3.0).await;
    assert_one_pair(&db, "acme/widgets#1", "dev-1").await;
    // The hot standby never checks.
    assert_eq!(metric(&b.metrics, "rig_stale_heartbeat_checks_total").await, Some(0.0));

    a.proc.kill9();
    wait_active(&b).await;
    assign(&ingest, "acme/widgets#2", "dev-2").await;
    wait_for(
        "the pair for #2 from the former standby",
        Duration::from_secs(15),
        || async { (count_type(&db, "acme/widgets#2", "ISSUE_UNASSIGNED").await > 0).then_some(()) },
    )
    .await;
    settle(&db, &b, 3.0).await;
    assert_one_pair(&db, "acme/widgets#1", "dev-1").await;
    assert_one_pair(&db, "acme/widgets#2", "dev-2").await;
}

#[tokio::test]
async fn issues_that_keep_heartbeating_are_never_stuck() {
    let db = TestDb::new().await;
    let ingest = TestIngest::start(&db).await;
    let w = spawn_worker(&db, &ingest.base);
    wait_active(&w).await;
    // #1 heartbeats on its issue stream, #2 names itself from the agent stream (another case),
    // #3 by number from the agent stream, #4 is silent: the control that proves checks run.
    // #5's heartbeats come from an agent that does not hold it: they keep nothing alive.
    for n in 1..=5 {
        assign(&ingest, &format!("acme/widgets#{n}"), &format!("agent-{n}")).await;
    }
    let stop = tokio_util::sync::CancellationToken::new();
    let beats = {
        let stop = stop.clone();
        let base = ingest.base.clone();
        tokio::spawn(async move {
            let c = reqwest::Client::new();
            let post = |stream: &'static str, data: Value| {
                c.post(format!("{base}/v1/events"))
                    .json(&json!({"stream_id": stream, "events": [{"type": "HEARTBEAT", "data": data}]}))
                    .send()
            };
            while !stop.is_cancelled() {
                for r in [
                    post("acme/widgets#1", json!({"agent_id": "agent-1"})).await,
                    post(
                        "agent:agent-2",
                        json!({"agent_id": "agent-2", "current_issue": "Acme/Widgets#2"}),
                    )
                    .await,
                    post("agent:agent-3", json!({"agent_id": "agent-3", "current_issue": 3})).await,
                    post(
                        "agent:intruder",
                        json!({"agent_id": "intruder", "current_issue": "acme/widgets#5"}),
                    )
                    .await,
                ] {
                    assert_eq!(r.unwrap().status(), StatusCode::CREATED);
                }
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        })
    };
    wait_for(
        "the silent control issues declared stuck",
        Duration::from_secs(15),
        || async {
            (count_type(&db, "acme/widgets#4", "AGENT_STUCK").await == 1
                && count_type(&db, "acme/widgets#5", "AGENT_STUCK").await == 1)
                .then_some(())
        },
    )
    .await;
    // Keep heartbeating for two more thresholds' worth of checks.
    let start = metric(&w.metrics, "rig_stale_heartbeat_checks_total").await.unwrap();
    wait_for("8 more check rounds", Duration::from_secs(20), || async {
        (metric(&w.metrics, "rig_stale_heartbeat_checks_total").await? >= start + 8.0).then_some(())
    })
    .await;
    stop.cancel();
    beats.await.unwrap();
    for n in 1..=3 {
        let s = format!("acme/widgets#{n}");
        assert_eq!(count_type(&db, &s, "AGENT_STUCK").await, 0, "{s} kept heartbeating");
        assert_eq!(
            issue(&db, &s).await,
            ("assigned".to_owned(), 0, Some(format!("agent-{n}")))
        );
    }
    assert_one_pair(&db, "acme/widgets#4", "agent-4").await;
    assert_one_pair(&db, "acme/widgets#5", "agent-5").await;
}

#[tokio::test]
async fn heartbeat_racing_the_check_wins() {
    let db = TestDb::new().await;
    let ingest = TestIngest::start(&db).await;
    // The checker's first request is held in the proxy until the heartbeat has landed.
    let proxy = Proxy::start(&ingest.base, true, Duration::ZERO).await;
    let w = spawn_worker(&db, &proxy.url);
    wait_active(&w).await;
    let stream = "acme/widgets#7";
    assign(&ingest, stream, "dev-7").await;
    tokio::time::timeout(Duration::from_secs(15), proxy.seen.notified())
        .await
        .expect("the checker sends its request");
    append(
        &ingest,
        stream,
        json!([{"type": "HEARTBEAT", "data": {"agent_id": "dev-7"}}]),
    )
    .await;
    proxy.open.send_replace(true);
    wait_for("the checker to meet the 409", Duration::from_secs(15), || async {
        (metric(&w.metrics, "rig_stale_heartbeat_conflicts_total").await? >= 1.0).then_some(())
    })
    .await;
    assert_eq!(count_type(&db, stream, "AGENT_STUCK").await, 0);
    assert_eq!(count_type(&db, stream, "ISSUE_UNASSIGNED").await, 0);
    assert_eq!(
        issue(&db, stream).await,
        ("assigned".to_owned(), 0, Some("dev-7".to_owned()))
    );
    assert_eq!(
        db.count("SELECT count(*) FROM events").await,
        3,
        "nothing appended by the checker"
    );
    assert!(w.proc.log_text().contains("409"), "the conflict is logged");
}

#[tokio::test]
async fn unreachable_ingest_is_retried_and_appends_exactly_one_pair() {
    let db = TestDb::new().await;
    let ingest = TestIngest::start(&db).await;
    let port = free_port();
    let w = spawn_worker(&db, &format!("http://127.0.0.1:{port}"));
    wait_active(&w).await;
    let stream = "acme/widgets#9";
    assign(&ingest, stream, "dev-9").await;
    wait_for("network errors being retried", Duration::from_secs(20), || async {
        (metric(&w.metrics, "rig_stale_heartbeat_errors_total{kind=\"network\"}").await? >= 3.0).then_some(())
    })
    .await;
    assert_eq!(count_type(&db, stream, "AGENT_STUCK").await, 0);
    let late = TestIngest::start_with(&db, |s| s.ingest.listen = format!("127.0.0.1:{port}").parse().unwrap()).await;
    wait_for("the pair once ingest is back", Duration::from_secs(30), || async {
        (count_type(&db, stream, "ISSUE_UNASSIGNED").await > 0).then_some(())
    })
    .await;
    settle(&db, &w, 3.0).await;
    assert_one_pair(&db, stream, "dev-9").await;
    assert_eq!(metric(&w.metrics, "rig_stale_heartbeat_stuck_total").await, Some(1.0));
    drop(late);
}

// SIGKILL during a long catch-up, then the table against a fold of the whole log written here.

/// The repositories of the synthetic rig. Every repository has issues with the same numbers, so
/// an agent can hold `acme/widgets#5` and `acme/gadgets#5` at once.
const REPOS: [&str; 4] = ["acme/widgets", "acme/gadgets", "other-org/thing.js", "acme/widgets-2"];
const AGENTS: usize = 12;
/// Issues the generator may open, and how many are in flight at once.
const ISSUES: usize = 1_200;
const IN_FLIGHT: usize = 120;
/// The log stops growing at about this many events (then a last round of heartbeats).
const LOG_SIZE: usize = 30_000;

fn agent(i: usize) -> String {
    format!("dev-{i}")
}

/// One event of the synthetic log, as generated.
struct NewEvent {
    stream_id: String,
    version: i32,
    event_type: &'static str,
    data: Value,
    recorded_at: DateTime<Utc>,
}

/// Where an issue is in its life, as the generator drives it (not the status the fold computes:
/// an ISSUE_APPROVED while held changes the status, not the stage).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    Fresh,
    Open,
    Assigned,
    Started,
    Branch,
    Pr,
    InReview,
    Disputed,
    Passed,
    Merged,
    Done,
    /// Out of the lifecycle: done (held or let go); only unrelated events reach it.
    Finished,
}

struct Issue {
    stream: String,
    number: i64,
    holder: Option<String>,
    held_before: Vec<String>,
    stage: Stage,
}

/// The synthetic log under construction: a seeded generator, the server clock and stream versions.
struct Log {
    rng: rand::rngs::StdRng,
    clock: DateTime<Utc>,
    versions: HashMap<String, i32>,
    events: Vec<NewEvent>,
}

impl Log {
    fn new(seed: u64) -> Log {
        use chrono::TimeZone;
        Log {
            rng: rand::rngs::StdRng::seed_from_u64(seed),
            clock: Utc.with_ymd_and_hms(2025, 10, 1, 8, 0, 0).unwrap(),
            versions: HashMap::new(),
            events: Vec::new(),
        }
    }

    fn pct(&mut self) -> u32 {
        self.rng.random_range(0..100)
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.rng.random_range(0..items.len())]
    }

    /// Appends one event. Server time never goes backwards and neighbours often share an instant
    /// (as the events of one append do).
    fn emit(&mut self, stream: &str, event_type: &'static str, data: Value) {
        self.clock += chrono::Duration::milliseconds(self.rng.random_range(0..=3));
        let version = self.versions.entry(stream.to_owned()).or_insert(0);
        *version += 1;
        self.events.push(NewEvent {
            stream_id: stream.to_owned(),
            version: *version,
            event_type,
            data,
            recorded_at: self.clock,
        });
    }

    /// `stream` with its `owner/repo` in a random mix of cases (the number as it is).
    fn any_case(&mut self, stream: &str) -> String {
        let (repo, number) = stream.rsplit_once('#').unwrap();
        let repo: String = repo
            .chars()
            .map(|c| {
                if self.rng.random_bool(0.5) {
                    c.to_ascii_uppercase()
                } else {
                    c
                }
            })
            .collect();
        format!("{repo}#{number}")
    }

    /// The next step in the life of `issue`: approval and assignment while nobody holds it; while
    /// held, the lifecycle (rework after a dispute included) mixed with heartbeats on the issue
    /// stream, CI, ISSUE_APPROVED, token usage, unknown types, and unassignment (by the checker,
    /// with AGENT_STUCK, or released), after which another agent takes it.
    fn step(&mut self, issue: &mut Issue) {
        let s = issue.stream.clone();
        let r = self.pct();
        let Some(holder) = issue.holder.clone() else {
            if issue.stage == Stage::Fresh && r < 90 {
                self.emit(
                    &s,
                    "ISSUE_APPROVED",
                    json!({"title": format!("issue {s}"), "priority": r % 3}),
                );
                issue.stage = Stage::Open;
            } else if r < 80 {
                let last = issue.held_before.last().cloned();
                let to = loop {
                    let a = agent(self.rng.random_range(0..AGENTS));
                    if Some(&a) != last.as_ref() {
                        break a;
                    }
                };
                let attempt = issue.held_before.len() + 1;
                self.emit(&s, "ISSUE_ASSIGNED", json!({"agent_id": to, "attempt": attempt}));
                issue.holder = Some(to);
                issue.stage = Stage::Assigned;
            } else {
                // Facts about an issue nobody holds: they make no row.
                let someone = agent(r as usize % AGENTS);
                match r % 3 {
                    0 => self.emit(&s, "CI_FAILED", json!({"run_id": r})),
                    1 => self.emit(&s, "HEARTBEAT", json!({"agent_id": someone})),
                    _ => self.emit(&s, "TOKEN_USAGE", usage(&someone, r)),
                }
            }
            return;
        };
        match r {
            0..4 => self.emit(&s, "ISSUE_APPROVED", json!({"title": "re-approved while held"})),
            4..8 => {
                if r < 6 {
                    self.emit(
                        &s,
                        "AGENT_STUCK",
                        json!({"agent_id": holder, "reason": "stale_heartbeat", "elapsed_seconds": 1900}),
                    );
                    self.emit(
                        &s,
                        "ISSUE_UNASSIGNED",
                        json!({"reason": "stale_heartbeat", "agent_id": holder}),
                    );
                } else if r == 6 {
                    self.emit(
                        &s,
                        "ISSUE_UNASSIGNED",
                        json!({"reason": "released", "agent_id": holder}),
                    );
                } else {
                    self.emit(&s, "ISSUE_UNASSIGNED", json!({"reason": "operator"}));
                }
                issue.held_before.push(holder);
                issue.holder = None;
                issue.stage = Stage::Open;
            }
            8..18 => self.emit(&s, "HEARTBEAT", json!({"agent_id": holder, "status": "working"})),
            18..24 => {
                let t = if r.is_multiple_of(2) { "CI_PASSED" } else { "CI_FAILED" };
                self.emit(&s, t, json!({"pr_number": issue.number, "run_id": r}));
            }
            24..26 => self.emit(&s, "TOKEN_USAGE", usage(&holder, r)),
            26 => self.emit(&s, "LABEL_ADDED", json!({"label": "needs-thought"})),
            _ => self.progress(issue, &holder, r),
        }
    }

    fn progress(&mut self, issue: &mut Issue, holder: &str, r: u32) {
        let s = issue.stream.clone();
        let pr = json!({"pr_number": issue.number, "agent_id": holder});
        let (t, data, next) = match issue.stage {
            Stage::Assigned => ("WORK_STARTED", json!({"agent_id": holder}), Stage::Started),
            Stage::Started => (
                "BRANCH_CREATED",
                json!({"branch": format!("fix-{}", issue.number)}),
                Stage::Branch,
            ),
            Stage::Branch => ("PR_CREATED", pr, Stage::Pr),
            Stage::Pr => ("REVIEW_ASSIGNED", json!({"reviewer": "rev"}), Stage::InReview),
            Stage::InReview if r % 5 < 2 => ("REVIEW_DISPUTED", json!({"reviewer": "rev"}), Stage::Disputed),
            Stage::InReview => ("REVIEW_PASSED", json!({"reviewer": "rev"}), Stage::Passed),
            // Rework after a dispute, back to in_progress with the same holder.
            Stage::Disputed => match r % 3 {
                0 => ("WORK_STARTED", json!({"agent_id": holder}), Stage::Started),
                1 => ("BRANCH_CREATED", json!({"branch": "rework"}), Stage::Branch),
                _ => ("PR_CREATED", pr, Stage::Pr),
            },
            Stage::Passed => ("MERGED", json!({"merge_sha": "abc123"}), Stage::Merged),
            Stage::Merged => ("ISSUE_DONE", json!({"duration_minutes": 42}), Stage::Done),
            Stage::Done => {
                // Some let go of a done issue; the others keep holding it.
                if r.is_multiple_of(3) {
                    self.emit(&s, "ISSUE_UNASSIGNED", json!({"reason": "done", "agent_id": holder}));
                    issue.held_before.push(holder.to_owned());
                    issue.holder = None;
                }
                issue.stage = Stage::Finished;
                return;
            }
            Stage::Fresh | Stage::Open | Stage::Finished => return,
        };
        self.emit(&s, t, data);
        issue.stage = next;
    }

    /// A HEARTBEAT on `agent:{a}`: naming one of its issues by stream id in any case or by number,
    /// or naming what it does not hold (an issue it held before, another agent's issue, a number
    /// of none of its issues), or nothing usable.
    fn agent_heartbeat(&mut self, issues: &[Issue], a: &str) {
        let mine: Vec<&Issue> = issues.iter().filter(|i| i.holder.as_deref() == Some(a)).collect();
        let not_mine: Vec<&Issue> = issues
            .iter()
            .filter(|i| i.stage != Stage::Fresh && i.holder.as_deref() != Some(a))
            .collect();
        let r = self.pct();
        let named = match r {
            0..35 if !mine.is_empty() => {
                let s = self.pick(&mine).stream.clone();
                json!(self.any_case(&s))
            }
            35..60 if !mine.is_empty() => json!(self.pick(&mine).number),
            60..72 => {
                let before: Vec<&&Issue> = not_mine
                    .iter()
                    .filter(|i| i.held_before.iter().any(|h| h == a))
                    .collect();
                if before.is_empty() {
                    json!(null)
                } else {
                    let s = self.pick(&before).stream.clone();
                    json!(self.any_case(&s))
                }
            }
            72..82 if !not_mine.is_empty() => {
                let other = self.pick(&not_mine);
                if r.is_multiple_of(2) || mine.iter().any(|m| m.number == other.number) {
                    json!(other.stream.clone())
                } else {
                    json!(other.number)
                }
            }
            _ => self
                .pick(&[
                    json!("idle"),
                    json!(0),
                    json!(-4),
                    json!("acme/widgets#0"),
                    json!({"stream": 1}),
                ])
                .clone(),
        };
        let mut data = json!({"agent_id": a, "status": "working"});
        if r < 95 {
            data["current_issue"] = named;
        }
        self.emit(&format!("agent:{a}"), "HEARTBEAT", data);
    }
}

fn usage(agent: &str, r: u32) -> Value {
    json!({"agent_id": agent, "model": "claude-sonnet-4-5", "input_tokens": 100 + r, "output_tokens": r})
}

/// The synthetic log (deterministic for a seed): issues of four repositories going through their
/// lives, a few dozen at a time, interleaved with agent-stream heartbeats and events no projection
/// of this worker cares about; then a last round of heartbeats on every held issue, from its
/// holder and from agents that do not hold it.
fn synthetic_log(seed: u64) -> Vec<NewEvent> {
    let mut log = Log::new(seed);
    let mut issues: Vec<Issue> = (0..ISSUES)
        .map(|i| {
            let number = (i / REPOS.len()) as i64 + 1;
            Issue {
                stream: format!("{}#{number}", REPOS[i % REPOS.len()]),
                number,
                holder: None,
                held_before: Vec::new(),
                stage: Stage::Fresh,
            }
        })
        .collect();
    let mut in_flight: Vec<usize> = (0..IN_FLIGHT).collect();
    let mut next = IN_FLIGHT;
    while log.events.len() < LOG_SIZE && !in_flight.is_empty() {
        let r = log.pct();
        match r {
            0..55 => {
                let k = log.rng.random_range(0..in_flight.len());
                let i = in_flight[k];
                log.step(&mut issues[i]);
                if issues[i].stage == Stage::Finished {
                    if next < ISSUES {
                        in_flight[k] = next;
                        next += 1;
                    } else {
                        in_flight.swap_remove(k);
                    }
                }
            }
            55..85 => {
                let a = agent(log.rng.random_range(0..AGENTS));
                log.agent_heartbeat(&issues, &a);
            }
            85..92 => {
                let a = agent(r as usize % AGENTS);
                let mut data = usage(&a, r);
                data["current_issue"] = json!(issues[in_flight[0]].stream.clone());
                log.emit(&format!("agent:{a}"), "TOKEN_USAGE", data);
            }
            _ => {
                // Unrelated events on any issue opened so far, held or not.
                let s = issues[log.rng.random_range(0..next)].stream.clone();
                let t = *log.pick(&["TOKEN_USAGE", "LABEL_ADDED", "HEARTBEAT"]);
                let a = agent(r as usize % AGENTS);
                let data = if t == "TOKEN_USAGE" {
                    usage(&a, r)
                } else {
                    json!({"agent_id": a})
                };
                log.emit(&s, t, data);
            }
        }
    }
    // Last round: the holder names its issue (any case, or by number), then someone else names it.
    for issue in &issues {
        let Some(holder) = issue.holder.clone() else {
            continue;
        };
        let (s, number) = (issue.stream.clone(), issue.number);
        let r = log.pct();
        if r < 70 {
            let named = if r < 40 { json!(log.any_case(&s)) } else { json!(number) };
            log.emit(
                &format!("agent:{holder}"),
                "HEARTBEAT",
                json!({"agent_id": holder, "current_issue": named}),
            );
        }
        if r.is_multiple_of(2) {
            let other = agent((holder[4..].parse::<usize>().unwrap() + 1 + r as usize) % AGENTS);
            if other != holder {
                let named = json!(log.any_case(&s));
                log.emit(
                    &format!("agent:{other}"),
                    "HEARTBEAT",
                    json!({"agent_id": other, "current_issue": named}),
                );
            }
        }
    }
    log.events
}

/// Inserts `events` straight into the log, in transactions of `chunk` that first take the append
/// lock as ingest does (so commit order is position order), positions in the order given.
async fn insert_log(pool: &sqlx::PgPool, events: &[NewEvent], chunk: usize) {
    for part in events.chunks(chunk) {
        let mut tx = append_tx(pool).await;
        sqlx::query(
            "INSERT INTO events (stream_id, version, event_id, event_type, data, recorded_at) \
             SELECT s, v, id, t, d::jsonb, r \
             FROM unnest($1::text[], $2::int4[], $3::uuid[], $4::text[], $5::text[], $6::timestamptz[]) \
                  WITH ORDINALITY AS e(s, v, id, t, d, r, n) \
             ORDER BY n",
        )
        .bind(part.iter().map(|e| e.stream_id.clone()).collect::<Vec<_>>())
        .bind(part.iter().map(|e| e.version).collect::<Vec<_>>())
        .bind(
            part.iter()
                .map(|e| {
                    uuid::Uuid::new_v5(
                        &uuid::Uuid::NAMESPACE_OID,
                        format!("{}:{}", e.stream_id, e.version).as_bytes(),
                    )
                })
                .collect::<Vec<_>>(),
        )
        .bind(part.iter().map(|e| e.event_type).collect::<Vec<_>>())
        .bind(part.iter().map(|e| e.data.to_string()).collect::<Vec<_>>())
        .bind(part.iter().map(|e| e.recorded_at).collect::<Vec<_>>())
        .execute(&mut *tx)
        .await
        .unwrap();
        commit_append(tx).await;
    }
}

/// An event as read back: (position, stream_id, version, event_type, data, recorded_at).
type Stored = (i64, String, i32, String, Value, DateTime<Utc>);

/// A row of `stale_heartbeat_issues`: (agent_id, issue_number, status, version, assigned_at,
/// last_seen_at), keyed by stream id.
type Held = (String, i64, String, i32, DateTime<Utc>, DateTime<Utc>);

/// The same with its stream id first, as selected.
type HeldRow = (String, String, i64, String, i32, DateTime<Utc>, DateTime<Utc>);

/// How much of what the fold must get right the log really exercises, counted by the fold.
#[derive(Debug, Default)]
struct Coverage {
    /// Final rows whose last sign of life is an agent-stream heartbeat naming the issue by a
    /// stream id not in its canonical case / by number.
    seen_by_other_case: usize,
    seen_by_number: usize,
    /// Agent-stream heartbeats that name a held issue (by stream id or by number) without being
    /// from its holder, later than the row's last sign of life: counting them would be wrong.
    decoys: usize,
    /// ISSUE_ASSIGNED to another agent than the one who held the issue before.
    reassigned: usize,
    /// A held issue going from `in_review` back to `in_progress` (rework after a dispute).
    reworked: usize,
    /// Final rows per status.
    statuses: BTreeMap<String, usize>,
}

/// The issue status after `event_type`, as the issue fold's table says (`None`: unchanged).
fn status_after(event_type: &str) -> Option<&'static str> {
    match event_type {
        "ISSUE_APPROVED" | "ISSUE_UNASSIGNED" => Some("approved"),
        "ISSUE_ASSIGNED" => Some("assigned"),
        "WORK_STARTED" | "BRANCH_CREATED" | "PR_CREATED" => Some("in_progress"),
        "REVIEW_ASSIGNED" | "REVIEW_PASSED" | "REVIEW_DISPUTED" => Some("in_review"),
        "MERGED" => Some("merged"),
        "ISSUE_DONE" => Some("done"),
        _ => None,
    }
}

/// What a heartbeat's `current_issue` names: a canonical issue stream id (any case of
/// `owner/repo` accepted), or a bare issue number.
enum Names {
    Stream(String),
    Number(i64),
    Nothing,
}

fn names(data: &Value) -> Names {
    match data.get("current_issue") {
        Some(Value::String(s)) => {
            let Some((repo, number)) = s.rsplit_once('#') else {
                return Names::Nothing;
            };
            let number = number.parse::<i64>().ok().filter(|n| *n > 0);
            match number {
                Some(n) if repo.contains('/') => Names::Stream(format!("{}#{n}", repo.to_ascii_lowercase())),
                _ => Names::Nothing,
            }
        }
        Some(Value::Number(n)) => n.as_i64().filter(|n| *n > 0).map_or(Names::Nothing, Names::Number),
        _ => Names::Nothing,
    }
}

/// The table the log should produce, folded here from the events in position order without the
/// worker's code: a row per issue from its ISSUE_ASSIGNED until its ISSUE_UNASSIGNED, with the
/// holder, the issue number, the status of the issue fold, the stream's latest version, the time of
/// the assignment, and the time of the latest sign of life since then (an event on the issue
/// stream, or a HEARTBEAT on the holder's own agent stream naming the issue by stream id or by
/// the number of an issue it holds).
fn expected_table(events: &[Stored]) -> (BTreeMap<String, Held>, Coverage) {
    let mut status: HashMap<&str, &'static str> = HashMap::new();
    let mut last_holder: HashMap<&str, String> = HashMap::new();
    let mut rows: BTreeMap<String, Held> = BTreeMap::new();
    // Which kind of heartbeat last moved a row's last sign of life (1: other case, 2: number).
    let mut seen_by: HashMap<String, u8> = HashMap::new();
    let mut cov = Coverage::default();
    for (_, stream, version, event_type, data, at) in events {
        if let Some(a) = stream.strip_prefix("agent:") {
            if event_type != "HEARTBEAT" {
                continue;
            }
            match names(data) {
                Names::Stream(s) => {
                    let other_case = data["current_issue"].as_str() != Some(s.as_str());
                    if let Some(row) = rows.get_mut(&s) {
                        if row.0 == a {
                            if *at > row.5 {
                                row.5 = *at;
                                seen_by.insert(s.clone(), if other_case { 1 } else { 0 });
                            }
                        } else if *at > row.5 {
                            cov.decoys += 1;
                        }
                    }
                }
                Names::Number(n) => {
                    for (s, row) in rows.iter_mut().filter(|(_, r)| r.1 == n) {
                        if row.0 == a {
                            if *at > row.5 {
                                row.5 = *at;
                                seen_by.insert(s.clone(), 2);
                            }
                        } else if *at > row.5 {
                            cov.decoys += 1;
                        }
                    }
                }
                Names::Nothing => {}
            }
            continue;
        }
        let before = status.get(stream.as_str()).copied();
        if let Some(st) = status_after(event_type) {
            status.insert(stream, st);
        }
        let now = status.get(stream.as_str()).copied().unwrap_or("");
        match event_type.as_str() {
            "ISSUE_ASSIGNED" => {
                let a = data["agent_id"].as_str().unwrap().to_owned();
                let number: i64 = stream.rsplit_once('#').unwrap().1.parse().unwrap();
                if last_holder.get(stream.as_str()).is_some_and(|h| *h != a) {
                    cov.reassigned += 1;
                }
                last_holder.insert(stream, a.clone());
                rows.insert(stream.clone(), (a, number, now.to_owned(), *version, *at, *at));
                seen_by.remove(stream);
            }
            "ISSUE_UNASSIGNED" => {
                rows.remove(stream);
                seen_by.remove(stream);
            }
            _ => {
                if let Some(row) = rows.get_mut(stream) {
                    if before == Some("in_review") && now == "in_progress" {
                        cov.reworked += 1;
                    }
                    row.2 = now.to_owned();
                    row.3 = *version;
                    if *at >= row.5 {
                        row.5 = *at;
                        seen_by.remove(stream);
                    }
                }
            }
        }
    }
    for (s, row) in &rows {
        *cov.statuses.entry(row.2.clone()).or_default() += 1;
        match seen_by.get(s) {
            Some(1) => cov.seen_by_other_case += 1,
            Some(2) => cov.seen_by_number += 1,
            _ => {}
        }
    }
    (rows, cov)
}

async fn stale_checkpoint(pool: &sqlx::PgPool) -> i64 {
    sqlx::query_scalar::<_, i64>("SELECT position FROM checkpoints WHERE consumer = 'stale-heartbeat'")
        .fetch_optional(pool)
        .await
        .unwrap()
        .unwrap_or(0)
}

/// The rows where `stale_heartbeat_issues` differs from `expected` (empty: equal).
async fn table_mismatches(pool: &sqlx::PgPool, expected: &BTreeMap<String, Held>) -> Vec<String> {
    let stored: Vec<HeldRow> = sqlx::query_as(
        "SELECT stream_id, agent_id, issue_number, status, version, assigned_at, last_seen_at \
             FROM stale_heartbeat_issues",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    let actual: BTreeMap<String, Held> = stored
        .into_iter()
        .map(|(s, a, n, st, v, at, seen)| (s, (a, n, st, v, at, seen)))
        .collect();
    let mut keys: Vec<&String> = expected.keys().chain(actual.keys()).collect();
    keys.sort();
    keys.dedup();
    keys.into_iter()
        .filter(|k| expected.get(*k) != actual.get(*k))
        .map(|k| format!("{k}: expected {:?}, table {:?}", expected.get(k), actual.get(k)))
        .collect()
}

/// The house rule for tailing workers: rig-stale-heartbeat catches up on a ~30k-event log in
/// batches of 20, is killed with SIGKILL at random moments of the catch-up and restarted each
/// time, and when it reaches the head its table equals a fold of the whole log computed by this
/// test, row by row and column by column. The threshold is a century, and ingest is not there:
/// the worker cannot add anything to the log while it runs.
#[tokio::test]
async fn sigkill_at_random_moments_of_catch_up_leaves_the_table_equal_to_an_independent_fold() {
    const KILLS: usize = 8;
    let db = TestDb::new().await;
    let generated = synthetic_log(0x57a1e);
    insert_log(&db.pool, &generated, 2_500).await;
    let head = db.count("SELECT coalesce(max(position), 0) FROM events").await;
    assert_eq!(head, generated.len() as i64);

    // Read the log back in position order: the fold works on what the worker reads.
    let events: Vec<Stored> = sqlx::query_as(
        "SELECT position, stream_id, version, event_type, data, recorded_at FROM events ORDER BY position",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert!(
        events.windows(2).all(|w| w[0].5 <= w[1].5),
        "server time never goes backwards in the log, so `latest` and `max` agree"
    );
    let (expected, cov) = expected_table(&events);
    eprintln!("{} events, {} rows expected, {cov:?}", events.len(), expected.len());
    // The log exercises every rule, in numbers that make a wrong rule show.
    assert!(expected.len() >= 100, "only {} rows expected", expected.len());
    for status in ["assigned", "in_progress", "in_review", "merged", "done", "approved"] {
        assert!(
            cov.statuses.get(status).copied().unwrap_or(0) >= 3,
            "few rows {status}: {cov:?}"
        );
    }
    assert!(cov.seen_by_other_case >= 10 && cov.seen_by_number >= 10, "{cov:?}");
    assert!(
        cov.decoys >= 50 && cov.reassigned >= 50 && cov.reworked >= 50,
        "{cov:?}"
    );

    // Nothing listens at this address: even a wrong check could not append.
    let nowhere = format!("http://127.0.0.1:{}", free_port());
    let settings = [
        ("RIG_CONSUMER__BATCH_SIZE", "20".to_owned()),
        ("RIG_STALE_HEARTBEAT__CHECK_INTERVAL", "200ms".to_owned()),
    ];
    let started = std::time::Instant::now();
    let mut last = 0;
    let mut at_kills = Vec::new();
    for k in 0..KILLS {
        let mut w = spawn_worker_with(&db, &nowhere, "100years", &settings);
        // Let it commit a random stretch past the last kill (the kills spread over the whole
        // catch-up, never reaching the head), then kill it at a random moment.
        let stretch = (head - last) / (KILLS - k + 1) as i64;
        let target = last + rand::random_range(1..=stretch);
        wait_for(
            &format!("the worker to get past {target}"),
            Duration::from_secs(60),
            || async { (stale_checkpoint(&db.pool).await > target).then_some(()) },
        )
        .await;
        tokio::time::sleep(Duration::from_millis(rand::random_range(0..50))).await;
        w.proc.kill9();
        last = stale_checkpoint(&db.pool).await;
        at_kills.push(last);
    }
    let mut finisher = spawn_worker_with(&db, &nowhere, "100years", &settings);
    wait_for("the worker to reach the head", Duration::from_secs(180), || async {
        (stale_checkpoint(&db.pool).await == head).then_some(())
    })
    .await;
    eprintln!(
        "caught up with {head} events in {:?}; checkpoints at the kills: {at_kills:?}",
        started.elapsed()
    );
    let mid = at_kills.iter().filter(|p| **p > 0 && **p < head).count();
    assert_eq!(
        mid, KILLS,
        "every kill lands during the catch-up: {at_kills:?} (head {head})"
    );

    let diff = table_mismatches(&db.pool, &expected).await;
    assert!(
        diff.is_empty(),
        "stale_heartbeat_issues differs from the fold of the log in {} rows:\n{}",
        diff.len(),
        diff.iter().take(30).cloned().collect::<Vec<_>>().join("\n")
    );
    assert_eq!(stale_checkpoint(&db.pool).await, head, "the checkpoint is the head");
    assert_eq!(db.events().await, head, "the worker appended nothing");
    assert!(finisher.proc.try_wait().is_none(), "the worker is still running");
}

#[tokio::test]
async fn each_tenant_is_checked_with_its_own_threshold_through_its_own_routes() {
    let control = TestDb::new().await;
    let acme = control.add_tenant("acme").await;
    // The deployment waits an hour; acme only two seconds.
    rig_tenants::settings::set(&control.pool, "acme", "stale_heartbeat.threshold", Some("2s"))
        .await
        .unwrap();
    let ingest = TestIngest::start_with(&control, |s| {
        s.ingest.auth_tokens = serde_json::from_value(json!([INGEST_TOKEN])).unwrap()
    })
    .await;
    let w = spawn_worker_with(&control, &ingest.base, "1h", &[]);
    wait_active(&w).await;
    wait_for("acme taken up", Duration::from_secs(20), || async {
        (metric(
            &w.metrics,
            "rig_consumer_active{consumer=\"stale-heartbeat\",tenant=\"acme\"}",
        )
        .await
            == Some(1.0))
        .then_some(())
    })
    .await;
    let r = reqwest::Client::new()
        .post(ingest.url("/t/acme/v1/events"))
        .bearer_auth(INGEST_TOKEN)
        .json(&json!({"stream_id": "acme/widgets#1", "events": [
            {"type": "ISSUE_APPROVED"}, {"type": "ISSUE_ASSIGNED", "data": {"agent_id": "dev-a"}}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    assign(&ingest, "globex/app#1", "dev-b").await;
    wait_for("acme's quiet issue unassigned", Duration::from_secs(20), || async {
        (count_type(&acme, "acme/widgets#1", "ISSUE_UNASSIGNED").await == 1).then_some(())
    })
    .await;
    assert_eq!(count_type(&acme, "acme/widgets#1", "AGENT_STUCK").await, 1);
    // Appended in acme's log only, and default's issue, under the deployment's hour, untouched.
    assert_eq!(count_type(&control, "acme/widgets#1", "AGENT_STUCK").await, 0);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(count_type(&control, "globex/app#1", "AGENT_STUCK").await, 0);
    assert_eq!(issue(&control, "globex/app#1").await.0, "assigned");
}
