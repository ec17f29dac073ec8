//! `rigctl up --demo`, shortened: the whole system fed by the simulated rig. Proves that the
//! simulated issues go through the lifecycle to `done`, that the silent agent is caught by
//! stale-heartbeat and its issue requeued, that the projectors fill their tables (with the demo
//! price table), that every running consumer catches up, and that Ctrl-C leaves nothing behind.
//! Checks for a worker apply only when the Procfile runs it.
#![allow(clippy::unwrap_used)]

use rig_tests::{
    enc, get_json, processes_on_database, procfile_workers, wait_for, wait_http_ok, RigctlUp, SystemPorts, TestDb,
};
use serde_json::Value;
use std::time::Duration;

const ISSUES: i64 = 9;

#[tokio::test]
async fn demo_works_issues_to_done_catches_the_silent_agent_and_ctrl_c_stops_everything() {
    let db = TestDb::new().await;
    let workers = procfile_workers();
    let runs = |b: &str| workers.iter().any(|w| w == b);
    let ports = SystemPorts::new();
    let mut env = ports.env(&db);
    // The silent agent stays quiet for threshold + 2 checks + 3 s (8 s); caught after ~3-4 s.
    env.push(("RIG_STALE_HEARTBEAT__THRESHOLD", "3s".into()));
    env.push(("RIG_STALE_HEARTBEAT__CHECK_INTERVAL", "1s".into()));
    // The test built every binary already; no cargo build inside rigctl up.
    let args = [
        "up",
        "--no-build",
        "--demo",
        "--demo-agents",
        "4",
        "--demo-issues",
        "9",
        "--demo-rate",
        "60",
    ];
    let mut up = RigctlUp::spawn(&args, &env, &db.url);
    let up = &mut up.proc;
    let api = format!("http://127.0.0.1:{}", ports.ingest);
    wait_http_ok(&format!("{api}/readyz"), Duration::from_secs(60)).await;

    // While the rig works, the board shows issues in several statuses at the same moment.
    let statuses: Vec<String> = wait_for(
        "issues in at least three statuses at once",
        Duration::from_secs(40),
        || async {
            let s: Vec<String> = sqlx::query_scalar("SELECT DISTINCT status FROM issue_state WHERE status IS NOT NULL")
                .fetch_all(&db.pool)
                .await
                .ok()?;
            (s.len() >= 3).then_some(s)
        },
    )
    .await;
    assert!(statuses.len() >= 3, "{statuses:?}");

    wait_for("every simulated issue to be done", Duration::from_secs(60), || async {
        let done = db.count("SELECT count(*) FROM issue_state WHERE status = 'done'").await;
        (done == ISSUES).then_some(())
    })
    .await;
    // The simulator ends by itself once every issue is done; the system keeps running, and the
    // log no longer grows (stale-heartbeat has nothing left to catch).
    wait_for("the simulator to finish", Duration::from_secs(20), || async {
        up.log_text().contains("simulate finished").then_some(())
    })
    .await;
    let log = up.log_text();
    assert!(log.contains("simulate finished (exit status: 0)"), "{log}");
    assert!(log.contains(&format!("all {ISSUES} issues done")), "{log}");

    let issues = db
        .count("SELECT count(*) FROM issue_state WHERE repo LIKE 'demo/%'")
        .await;
    assert_eq!(issues, ISSUES, "the demo opens exactly --demo-issues issues");
    let done_streams = db
        .count("SELECT count(DISTINCT stream_id) FROM events WHERE event_type = 'ISSUE_DONE'")
        .await;
    assert_eq!(done_streams, ISSUES, "each issue is done once");
    let never_assigned = db
        .count(
            "SELECT count(*) FROM issue_state s WHERE NOT EXISTS \
             (SELECT 1 FROM events e WHERE e.stream_id = s.stream_id AND e.event_type = 'ISSUE_ASSIGNED')",
        )
        .await;
    assert_eq!(never_assigned, 0);

    let http = reqwest::Client::new();
    if runs("rig-stale-heartbeat") {
        // The silent agent was caught: AGENT_STUCK then ISSUE_UNASSIGNED, and at that version the
        // issue was back in `approved` (time travel through the API), later redone by another agent.
        let stuck: Vec<(String, i32, String)> = sqlx::query_as(
            "SELECT stream_id, version, data->>'agent_id' FROM events WHERE event_type = 'AGENT_STUCK' ORDER BY position",
        )
        .fetch_all(&db.pool)
        .await
        .unwrap();
        assert!(
            !stuck.is_empty(),
            "no AGENT_STUCK was appended; log:\n{}",
            up.log_text()
        );
        for (stream, version, _agent) in &stuck {
            let next: (String, Value) =
                sqlx::query_as("SELECT event_type, data FROM events WHERE stream_id = $1 AND version = $2")
                    .bind(stream)
                    .bind(version + 1)
                    .fetch_one(&db.pool)
                    .await
                    .unwrap();
            assert_eq!(next.0, "ISSUE_UNASSIGNED");
            assert_eq!(next.1["reason"], "stale_heartbeat");
            let then: Value = get_json(
                &http,
                &format!("{api}/v1/streams/{}?to_version={}", enc(stream), version + 1),
            )
            .await
            .1;
            assert_eq!(
                then["state"]["status"],
                "approved",
                "{stream} at v{}: {then}",
                version + 1
            );
            let stuck_count: i32 = sqlx::query_scalar("SELECT stuck_count FROM issue_state WHERE stream_id = $1")
                .bind(stream)
                .fetch_one(&db.pool)
                .await
                .unwrap();
            assert!(stuck_count >= 1);
            let reclaimed = db
                .count(&format!(
                    "SELECT count(*) FROM events WHERE stream_id = '{stream}' AND event_type = 'ISSUE_ASSIGNED' AND version > {}",
                    version + 1
                ))
                .await;
            assert!(reclaimed >= 1, "{stream} was claimed again after it was requeued");
        }
    }

    let usage_events = db
        .count("SELECT count(*) FROM events WHERE event_type = 'TOKEN_USAGE'")
        .await;
    assert!(usage_events > ISSUES, "a TOKEN_USAGE after every model call");
    let running: Vec<&str> = rig_projections::CONSUMERS
        .iter()
        .map(|c| c.name)
        .filter(|name| runs(&format!("rig-{name}")))
        .collect();
    // Every consumer the Procfile runs catches up with the log once the rig is done.
    wait_for(
        "every running consumer to reach lag 0",
        Duration::from_secs(30),
        || async {
            let status = rig_projections::status(&db.pool).await.ok()?;
            status
                .iter()
                .filter(|s| running.contains(&s.consumer.as_str()))
                .all(|s| s.lag == 0)
                .then_some(())
        },
    )
    .await;
    for s in rig_projections::status(&db.pool).await.unwrap() {
        if running.contains(&s.consumer.as_str()) {
            assert_eq!(s.lag, 0, "{s:?}");
            assert!(!s.paused, "{s:?}");
        }
    }
    if runs("rig-token-projector") {
        let counted = db
            .count("SELECT coalesce(sum(events), 0)::bigint FROM token_usage")
            .await;
        assert_eq!(counted, usage_events, "token_usage counts every TOKEN_USAGE once");
        // The demo price table reached the projector: priced models cost money, the unpriced one 0.
        let priced = db
            .count("SELECT count(*) FROM token_usage WHERE model LIKE 'claude-%' AND cost_usd > 0")
            .await;
        assert!(priced > 0);
        let unpriced = db
            .count(
                "SELECT count(*) FROM token_usage WHERE model = 'local-qwen3-coder' AND cost_usd <> 0 AND events > 0",
            )
            .await;
        assert_eq!(
            unpriced, 0,
            "the model without a price row stays at 0 USD unless the agent reported a cost"
        );
    }
    if runs("rig-cost-projector") {
        let counted = db
            .count("SELECT coalesce(sum(events), 0)::bigint FROM daily_cost")
            .await;
        assert_eq!(counted, usage_events, "daily_cost counts every TOKEN_USAGE once");
        let repos = db
            .count("SELECT count(DISTINCT repo) FROM daily_cost WHERE cost_usd > 0")
            .await;
        assert_eq!(repos, 3, "cost per demo repository");
    }

    // Ctrl-C (SIGINT only) stops rigctl up and every process it started.
    up.signal(libc::SIGINT);
    let status = wait_for("rigctl up to exit after Ctrl-C", Duration::from_secs(30), || {
        let s = up.try_wait();
        async move { s }
    })
    .await;
    assert!(
        status.success(),
        "rigctl up exits 0 after Ctrl-C; log:\n{}",
        up.log_text()
    );
    let left = wait_for("no process left behind", Duration::from_secs(10), || async {
        let pids = processes_on_database(&db.url);
        pids.is_empty().then_some(pids)
    })
    .await;
    assert!(left.is_empty());
    assert!(up.log_text().contains("all stopped"));
}

/// `rigctl up --demo --tenants 2`: each tenant its own database with its own simulated rig, an
/// admin token and a token per tenant printed, `/v1/admin/tenants` listing them. On a private
/// Postgres: the tenants' databases are named `rig_t_<slug>`, which no other test may share.
#[tokio::test]
async fn demo_over_tenants_feeds_each_tenant_its_own_rig() {
    let cluster = rig_ops::pg::PrivateCluster::start()
        .await
        .expect("start a private Postgres");
    let url = format!("postgres://postgres@127.0.0.1:{}/rig", cluster.port);
    let ports = SystemPorts::new();
    let listen = |p: u16| format!("127.0.0.1:{p}");
    let env = vec![
        ("DATABASE_URL", url.clone()),
        ("RIG_INGEST__LISTEN", listen(ports.ingest)),
        ("RIG_STALE_HEARTBEAT__METRICS_LISTEN", listen(ports.stale_heartbeat)),
        (
            "RIG_STALE_HEARTBEAT__INGEST_URL",
            format!("http://127.0.0.1:{}", ports.ingest),
        ),
        ("RIG_COST_PROJECTOR__METRICS_LISTEN", listen(ports.cost_projector)),
        ("RIG_TOKEN_PROJECTOR__METRICS_LISTEN", listen(ports.token_projector)),
        ("RIG_NOTIFIER__METRICS_LISTEN", listen(ports.notifier)),
    ];
    let args = [
        "up",
        "--no-build",
        "--demo",
        "--tenants",
        "2",
        "--demo-agents",
        "3",
        "--demo-issues",
        "4",
        "--demo-rate",
        "40",
    ];
    let up = RigctlUp::spawn(&args, &env, &url);
    let api = format!("http://127.0.0.1:{}", ports.ingest);
    wait_http_ok(&format!("{api}/readyz"), Duration::from_secs(60)).await;
    // The tokens, from what `up` printed.
    let token_after = |log: &str, label: &str, key: &str| -> Option<String> {
        let line = log.lines().find(|l| l.trim_start().starts_with(label))?;
        let rest = line.split(key).nth(1)?;
        rest.split_whitespace().next().map(str::to_owned)
    };
    let (admin, acme_token) = wait_for("the tokens printed", Duration::from_secs(30), || async {
        let log = up.proc.log_text();
        Some((
            token_after(&log, "admin token", "admin token")?,
            token_after(&log, "acme ", "token")?,
        ))
    })
    .await;
    let log_of = |slug: &str| format!("postgres://postgres@127.0.0.1:{}/rig_t_{slug}", cluster.port);
    for slug in ["acme", "globex"] {
        let pool = sqlx::PgPool::connect(&log_of(slug)).await.unwrap();
        wait_for(
            &format!("{slug}'s rig and its token usage"),
            Duration::from_secs(60),
            || async {
                let events: i64 = sqlx::query_scalar("SELECT count(*) FROM events")
                    .fetch_one(&pool)
                    .await
                    .ok()?;
                let usage: i64 = sqlx::query_scalar("SELECT count(*) FROM token_usage")
                    .fetch_one(&pool)
                    .await
                    .ok()?;
                (events > 20 && usage > 0).then_some(())
            },
        )
        .await;
        pool.close().await;
    }
    let c = reqwest::Client::new();
    let r = c
        .get(format!("{api}/v1/admin/tenants"))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), reqwest::StatusCode::OK);
    let body: Value = r.json().await.unwrap();
    let listed: Vec<&str> = body["tenants"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|t| t["tenant"].as_str())
        .collect();
    assert_eq!(listed, ["default", "acme", "globex"], "{body}");
    let status = |token: Option<&str>| {
        let mut req = c.get(format!("{api}/t/acme/v1/issues"));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        async move { req.send().await.unwrap().status() }
    };
    assert_eq!(status(Some(&acme_token)).await, reqwest::StatusCode::OK);
    assert_eq!(status(None).await, reqwest::StatusCode::UNAUTHORIZED);
    drop(up);
}
