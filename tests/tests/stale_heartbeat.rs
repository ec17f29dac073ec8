//! rig-stale-heartbeat against the real Postgres, a real ingest and the real binary: quiet
//! issues get exactly one AGENT_STUCK + ISSUE_UNASSIGNED pair, through kill -9, two instances
//! and an ingest that is away; issues that show life never do. Thresholds are seconds here
//! (threshold 2s, check every 500ms).
#![allow(clippy::unwrap_used)]

use reqwest::StatusCode;
use rig_tests::{free_port, wait_for, wait_http_ok, Proc, TestDb, TestIngest};
use serde_json::{json, Value};
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
    let port = free_port();
    let proc = Proc::spawn(
        "rig-stale-heartbeat",
        &[],
        &[
            ("DATABASE_URL", db.url.clone()),
            ("RIG_STALE_HEARTBEAT__INGEST_TOKEN", INGEST_TOKEN.into()),
            ("RIG_STALE_HEARTBEAT__METRICS_LISTEN", format!("127.0.0.1:{port}")),
            ("RIG_STALE_HEARTBEAT__THRESHOLD", THRESHOLD.into()),
            ("RIG_STALE_HEARTBEAT__CHECK_INTERVAL", "500ms".into()),
            ("RIG_STALE_HEARTBEAT__INGEST_URL", ingest_url.to_owned()),
            ("RIG_CONSUMER__POLL_INTERVAL", "200ms".into()),
        ],
    );
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
            (metric(&w.metrics, "rig_consumer_active{consumer=\"stale-heartbeat\"}").await == Some(1.0)).then_some(())
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
        metric(&b.metrics, "rig_consumer_active{consumer=\"stale-heartbeat\"}").await,
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
