//! rig-ingest's native API against the real Postgres: appends, conflicts, idempotency, the claim
//! rule, bad input, append-only enforcement, time travel and the compat endpoint.
#![allow(clippy::unwrap_used)]

use reqwest::StatusCode;
use rig_tests::{enc, get_json, get_text, TestDb, TestIngest};
use serde_json::{json, Value};
use uuid::Uuid;

async fn post(client: &reqwest::Client, url: &str, body: &Value) -> (StatusCode, Value) {
    let r = client.post(url).json(body).send().await.unwrap();
    let status = r.status();
    (status, r.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn claim_race_has_exactly_one_winner() {
    let db = TestDb::new().await;
    let ingest = TestIngest::start(&db).await;
    let c = reqwest::Client::new();
    let url = ingest.url("/v1/events");
    let (s, _) = post(
        &c,
        &url,
        &json!({"stream_id": "acme/widgets#7", "events": [{"type": "ISSUE_APPROVED"}]}),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED);

    let tasks: Vec<_> = (0..50)
        .map(|i| {
            let c = c.clone();
            let url = url.clone();
            tokio::spawn(async move {
                let body = json!({"stream_id": "acme/widgets#7",
                                  "events": [{"type": "ISSUE_ASSIGNED", "data": {"agent_id": format!("agent-{i}")}}]});
                post(&c, &url, &body).await
            })
        })
        .collect();
    let mut winners = Vec::new();
    let mut refused = 0;
    for (i, t) in tasks.into_iter().enumerate() {
        let (status, body) = t.await.unwrap();
        match status {
            StatusCode::CREATED => winners.push(format!("agent-{i}")),
            StatusCode::CONFLICT => {
                assert_eq!(body["error"], "already_assigned", "{body}");
                assert!(body["agent_id"].as_str().unwrap().starts_with("agent-"));
                refused += 1;
            }
            other => panic!("unexpected {other}: {body}"),
        }
    }
    assert_eq!(winners.len(), 1, "exactly one claim wins");
    assert_eq!(refused, 49);
    let (status, agent): (String, String) =
        sqlx::query_as("SELECT status, agent_id FROM issue_state WHERE stream_id = 'acme/widgets#7'")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(status, "assigned");
    assert_eq!(agent, winners[0]);
    assert_eq!(db.events().await, 2);

    // The holder must be unassigned before anyone (even itself) claims again.
    let again = json!({"stream_id": "acme/widgets#7", "expected_version": 2,
                       "events": [{"type": "ISSUE_ASSIGNED", "data": {"agent_id": winners[0]}}]});
    let (s, b) = post(&c, &url, &again).await;
    assert_eq!(
        (s, b["error"].as_str()),
        (StatusCode::CONFLICT, Some("already_assigned"))
    );
    let release = json!({"stream_id": "acme/widgets#7",
                         "events": [{"type": "ISSUE_UNASSIGNED", "data": {"reason": "gave up"}},
                                    {"type": "ISSUE_ASSIGNED", "data": {"agent_id": "agent-x"}}]});
    assert_eq!(post(&c, &url, &release).await.0, StatusCode::CREATED);
}

#[tokio::test]
async fn expected_version_conflicts_and_idempotent_retries() {
    let db = TestDb::new().await;
    let ingest = TestIngest::start(&db).await;
    let c = reqwest::Client::new();
    let url = ingest.url("/v1/events");
    let ids: Vec<String> = (0..3).map(|_| Uuid::new_v4().to_string()).collect();
    let body = json!({"stream_id": "Acme/Widgets#42", "expected_version": 0, "events": [
        {"id": ids[0], "type": "ISSUE_APPROVED", "data": {"title": "Add a thing"}},
        {"id": ids[1], "type": "ISSUE_ASSIGNED", "data": {"agent_id": "dev-e-node"}, "metadata": {"correlation_id": "abc"},
         "occurred_at": "2026-04-21T09:00:05Z"},
    ]});
    let (s, created) = post(&c, &url, &body).await;
    assert_eq!(s, StatusCode::CREATED, "{created}");
    assert_eq!(created["stream_id"], "acme/widgets#42");
    assert_eq!(
        (created["first_version"].as_i64(), created["last_version"].as_i64()),
        (Some(1), Some(2))
    );
    assert!(created["last_position"].as_i64() > created["first_position"].as_i64());

    // The same request again: 200 with the original body, nothing written (checked before
    // expected_version, which is now stale).
    let (s, retry) = post(&c, &url, &body).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(retry, created);
    assert_eq!(db.events().await, 2);

    // expected_version 0 on an existing stream.
    let fresh = json!({"stream_id": "acme/widgets#42", "expected_version": 0, "events": [{"type": "HEARTBEAT", "data": {"agent_id": "dev-e-node"}}]});
    let (s, b) = post(&c, &url, &fresh).await;
    assert_eq!(s, StatusCode::CONFLICT);
    assert_eq!(
        b,
        json!({"error": "wrong_expected_version", "expected_version": 0, "current_version": 2, "detail": b["detail"]})
    );

    // A wrong version names the current one.
    let stale = json!({"stream_id": "acme/widgets#42", "expected_version": 1, "events": [{"type": "WORK_STARTED", "data": {"agent_id": "dev-e-node"}}]});
    let (s, b) = post(&c, &url, &stale).await;
    assert_eq!((s, b["current_version"].as_i64()), (StatusCode::CONFLICT, Some(2)));

    // Some ids stored and some not, or an id stored in another stream: 409 duplicate_event_id.
    let partial = json!({"stream_id": "acme/widgets#42", "events": [
        {"id": ids[1], "type": "ISSUE_ASSIGNED", "data": {"agent_id": "dev-e-node"}},
        {"id": ids[2], "type": "WORK_STARTED", "data": {"agent_id": "dev-e-node"}}]});
    let (s, b) = post(&c, &url, &partial).await;
    assert_eq!(
        (s, b["error"].as_str()),
        (StatusCode::CONFLICT, Some("duplicate_event_id"))
    );
    let elsewhere = json!({"stream_id": "acme/widgets#43", "events": [{"id": ids[0], "type": "ISSUE_APPROVED"}]});
    let (s, b) = post(&c, &url, &elsewhere).await;
    assert_eq!(
        (s, b["error"].as_str()),
        (StatusCode::CONFLICT, Some("duplicate_event_id"))
    );
    assert_eq!(db.events().await, 2);

    // Right version: appended, metadata and occurred_at kept.
    let next = json!({"stream_id": "acme/widgets#42", "expected_version": 2, "events": [{"type": "WORK_STARTED", "data": {"agent_id": "dev-e-node"}}]});
    let (s, b) = post(&c, &url, &next).await;
    assert_eq!((s, b["first_version"].as_i64()), (StatusCode::CREATED, Some(3)));
    let (meta, occurred): (Value, Option<chrono::DateTime<chrono::Utc>>) =
        sqlx::query_as("SELECT metadata, occurred_at FROM events WHERE stream_id = 'acme/widgets#42' AND version = 2")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(meta["correlation_id"], "abc");
    assert_eq!(occurred.unwrap().to_rfc3339(), "2026-04-21T09:00:05+00:00");
}

#[tokio::test]
async fn bad_input_gets_a_json_error_and_writes_nothing() {
    let db = TestDb::new().await;
    let ingest = TestIngest::start_with(&db, |s| {
        s.ingest.auth_tokens = vec!["s3cret-token".to_owned().into()];
        s.ingest.max_body_bytes = 64 * 1024;
    })
    .await;
    let c = reqwest::Client::new();
    let url = ingest.url("/v1/events");
    let send = |body: Vec<u8>, token: Option<&'static str>| {
        let c = c.clone();
        let url = url.clone();
        async move {
            let mut r = c.post(&url).header("content-type", "application/json").body(body);
            if let Some(t) = token {
                r = r.header("authorization", format!("Bearer {t}"));
            }
            let r = r.send().await.unwrap();
            let s = r.status();
            let b: Value = r.json().await.expect("every error body is JSON");
            (s, b)
        }
    };
    let ok = |v: Value| serde_json::to_vec(&v).unwrap();
    let valid = json!({"stream_id": "acme/widgets#1", "events": [{"type": "ISSUE_APPROVED"}]});
    let many: Vec<Value> = (0..1001)
        .map(|_| json!({"type": "HEARTBEAT", "data": {"agent_id": "a"}}))
        .collect();
    let huge =
        json!({"stream_id": "acme/widgets#1", "events": [{"type": "NOTE", "data": {"text": "x".repeat(70_000)}}]});
    type Case = (&'static str, Vec<u8>, Option<&'static str>, StatusCode, &'static str);
    let cases: Vec<Case> = vec![
        (
            "no token",
            ok(valid.clone()),
            None,
            StatusCode::UNAUTHORIZED,
            "unauthorized",
        ),
        (
            "wrong token",
            ok(valid.clone()),
            Some("nope"),
            StatusCode::UNAUTHORIZED,
            "unauthorized",
        ),
        (
            "malformed JSON",
            b"{\"stream_id\": ".to_vec(),
            Some("s3cret-token"),
            StatusCode::BAD_REQUEST,
            "malformed_json",
        ),
        (
            "random bytes",
            vec![0xff, 0x00, 0x13, 0x37],
            Some("s3cret-token"),
            StatusCode::BAD_REQUEST,
            "malformed_json",
        ),
        (
            "not an object",
            ok(json!([1, 2])),
            Some("s3cret-token"),
            StatusCode::BAD_REQUEST,
            "malformed_json",
        ),
        (
            "missing stream",
            ok(json!({"events": [{"type": "ISSUE_APPROVED"}]})),
            Some("s3cret-token"),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_request",
        ),
        (
            "bad stream id",
            ok(json!({"stream_id": "widgets-7", "events": [{"type": "ISSUE_APPROVED"}]})),
            Some("s3cret-token"),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_stream_id",
        ),
        (
            "issue zero",
            ok(json!({"stream_id": "acme/widgets#0", "events": [{"type": "ISSUE_APPROVED"}]})),
            Some("s3cret-token"),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_stream_id",
        ),
        (
            "unknown prefix",
            ok(json!({"stream_id": "user:bob", "events": [{"type": "ISSUE_APPROVED"}]})),
            Some("s3cret-token"),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_stream_id",
        ),
        (
            "lowercase type",
            ok(json!({"stream_id": "acme/widgets#1", "events": [{"type": "issue_approved"}]})),
            Some("s3cret-token"),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_event",
        ),
        (
            "missing field",
            ok(
                json!({"stream_id": "acme/widgets#1", "events": [{"type": "ISSUE_APPROVED"}, {"type": "ISSUE_ASSIGNED", "data": {}}]}),
            ),
            Some("s3cret-token"),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_event",
        ),
        (
            "mistyped field",
            ok(
                json!({"stream_id": "acme/widgets#1", "events": [{"type": "TOKEN_USAGE", "data": {"agent_id": "a", "model": "m", "input_tokens": "12", "output_tokens": 3}}]}),
            ),
            Some("s3cret-token"),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_event",
        ),
        (
            "bad id",
            ok(json!({"stream_id": "acme/widgets#1", "events": [{"id": "not-a-uuid", "type": "ISSUE_APPROVED"}]})),
            Some("s3cret-token"),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_event",
        ),
        (
            "bad time",
            ok(
                json!({"stream_id": "acme/widgets#1", "events": [{"type": "ISSUE_APPROVED", "occurred_at": "yesterday"}]}),
            ),
            Some("s3cret-token"),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_event",
        ),
        (
            "negative version",
            ok(json!({"stream_id": "acme/widgets#1", "expected_version": -1, "events": [{"type": "ISSUE_APPROVED"}]})),
            Some("s3cret-token"),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_request",
        ),
        (
            "misspelt expected_version (would silently drop the concurrency check)",
            ok(json!({"stream_id": "acme/widgets#1", "expectedVersion": 0, "events": [{"type": "ISSUE_APPROVED"}]})),
            Some("s3cret-token"),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_request",
        ),
        (
            "event_id instead of id (would silently lose idempotency)",
            ok(
                json!({"stream_id": "acme/widgets#1", "events": [{"event_id": "0190f5a2-4a4e-7c3b-9d2e-4b1f3c5a6d7e", "type": "ISSUE_APPROVED"}]}),
            ),
            Some("s3cret-token"),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_event",
        ),
        (
            "no events",
            ok(json!({"stream_id": "acme/widgets#1", "events": []})),
            Some("s3cret-token"),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_request",
        ),
        (
            "1001 events",
            ok(json!({"stream_id": "acme/widgets#1", "events": many})),
            Some("s3cret-token"),
            StatusCode::UNPROCESSABLE_ENTITY,
            "too_many_events",
        ),
        (
            "body over the limit",
            ok(huge),
            Some("s3cret-token"),
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
        ),
    ];
    for (name, body, token, status, code) in cases {
        let (s, b) = send(body, token).await;
        assert_eq!(s, status, "{name}: {b}");
        assert_eq!(b["error"], code, "{name}: {b}");
        assert!(
            b["detail"].as_str().is_some_and(|d| !d.is_empty()),
            "{name}: a human detail: {b}"
        );
        assert_eq!(db.events().await, 0, "{name}: nothing written");
    }
    let (s, b) = send(ok(json!({"stream_id": "acme/widgets#1", "events": [{"type": "ISSUE_APPROVED"}, {"type": "ISSUE_ASSIGNED", "data": {"agent_id": 7}}]})), Some("s3cret-token")).await;
    assert_eq!(b["index"], 1, "{b}");
    assert!(b["detail"].as_str().unwrap().contains("agent_id"), "{b}");
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
    // Still serving, and a good request with the token works.
    let (s, _) = send(ok(valid), Some("s3cret-token")).await;
    assert_eq!(s, StatusCode::CREATED);
    assert_eq!(db.events().await, 1);
}

#[tokio::test]
async fn the_events_table_refuses_update_delete_and_truncate() {
    let db = TestDb::new().await;
    let ingest = TestIngest::start(&db).await;
    let c = reqwest::Client::new();
    post(
        &c,
        &ingest.url("/v1/events"),
        &json!({"stream_id": "acme/widgets#1", "events": [{"type": "ISSUE_APPROVED"}]}),
    )
    .await;
    for sql in [
        "UPDATE events SET event_type = 'X'",
        "UPDATE events SET data = '{}' WHERE false",
        "DELETE FROM events",
        "DELETE FROM events WHERE position < 0",
        "TRUNCATE events",
        "TRUNCATE events CASCADE",
    ] {
        let err = sqlx::query(sql).execute(&db.pool).await.expect_err(sql);
        assert!(err.to_string().contains("append-only"), "{sql}: {err}");
    }
    assert_eq!(db.events().await, 1);
}

#[tokio::test]
async fn time_travel_and_the_whole_lifecycle() {
    let db = TestDb::new().await;
    let ingest = TestIngest::start(&db).await;
    let c = reqwest::Client::new();
    let sid = "dashecorp/rig-agent-runtime#88";
    let steps = [
        ("ISSUE_APPROVED", json!({"title": "Make it faster"}), "approved"),
        ("ISSUE_ASSIGNED", json!({"agent_id": "dev-a"}), "assigned"),
        ("WORK_STARTED", json!({"agent_id": "dev-a"}), "in_progress"),
        ("BRANCH_CREATED", json!({"branch": "issue-88-faster"}), "in_progress"),
        (
            "PR_CREATED",
            json!({"pr_number": 101, "branch": "issue-88-faster"}),
            "in_progress",
        ),
        (
            "CI_FAILED",
            json!({"pr_number": 101, "failed_checks": ["test"]}),
            "in_progress",
        ),
        ("CI_PASSED", json!({"pr_number": 101}), "in_progress"),
        ("REVIEW_ASSIGNED", json!({"reviewer": "rev"}), "in_review"),
        ("REVIEW_DISPUTED", json!({"reviewer": "rev"}), "in_review"),
        ("REVIEW_PASSED", json!({"reviewer": "rev"}), "in_review"),
        ("MERGED", json!({"pr_number": 101}), "merged"),
        ("ISSUE_DONE", json!({"duration_minutes": 42}), "done"),
    ];
    let mut positions = Vec::new();
    for (ty, data, status) in &steps {
        let (s, b) = post(
            &c,
            &ingest.url("/v1/events"),
            &json!({"stream_id": sid, "events": [{"type": ty, "data": data}]}),
        )
        .await;
        assert_eq!(s, StatusCode::CREATED, "{b}");
        positions.push(b["last_position"].as_i64().unwrap());
        let live: String = sqlx::query_scalar("SELECT status FROM issue_state WHERE stream_id = $1")
            .bind(sid)
            .fetch_one(&db.pool)
            .await
            .unwrap();
        assert_eq!(&live, status, "issue_state after {ty}");
    }
    let r = c
        .get(ingest.url(&format!("/v1/issues/{}", enc(sid))))
        .send()
        .await
        .unwrap();
    let issue: Value = r.json().await.unwrap();
    assert_eq!(issue["status"], "done");
    assert_eq!(issue["last_ci"], "passed");
    assert_eq!(issue["version"], 12);
    assert_eq!(issue["repo"], "dashecorp/rig-agent-runtime");
    assert_eq!(issue["issue_number"], 88);
    assert!(issue["done_at"].is_string() && issue["first_event_at"].is_string());

    // The whole stream, then at version 5.
    let full: Value = get_json(&c, &ingest.url(&format!("/v1/streams/{}", enc(sid)))).await.1;
    assert_eq!(full["version"], 12);
    assert_eq!(full["events"].as_array().unwrap().len(), 12);
    assert_eq!(
        full["state"], issue,
        "the fold served by time travel equals the inline issue_state"
    );
    let at5: Value = get_json(&c, &ingest.url(&format!("/v1/streams/{}?to_version=5", enc(sid))))
        .await
        .1;
    assert_eq!(at5["version"], 5);
    let evs = at5["events"].as_array().unwrap();
    assert_eq!(evs.len(), 5);
    assert_eq!(evs[4]["type"], "PR_CREATED");
    for key in [
        "position",
        "version",
        "id",
        "type",
        "data",
        "metadata",
        "occurred_at",
        "recorded_at",
    ] {
        assert!(evs[0].get(key).is_some(), "event has {key}");
    }
    assert_eq!(at5["state"]["status"], "in_progress");
    assert_eq!(at5["state"]["pr_number"], 101);
    assert_eq!(at5["state"]["last_ci"], Value::Null);

    // ?at= a moment: the events recorded up to then.
    let recorded_at_3 = evs[2]["recorded_at"].as_str().unwrap();
    let at: Value = c
        .get(ingest.url(&format!("/v1/streams/{}", enc(sid))))
        .query(&[("at", recorded_at_3)])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(at["version"], 3, "{at}");
    assert_eq!(at["state"]["status"], "in_progress");

    // Unknown stream: 404; so is an id no stream can have, with the reason, and a path that
    // does not even decode (JSON, like every error).
    let r = c
        .get(ingest.url("/v1/streams/acme%2Fnothing%231"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    for (path, reason) in [
        ("/v1/streams/nonsense", "owner/repo#number"),
        ("/v1/issues/nonsense", "owner/repo#number"),
        ("/v1/streams/%FF%FE", "UTF-8"),
    ] {
        let (status, body) = get_json(&c, &ingest.url(path)).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}: {body}");
        assert_eq!(body["error"], "not_found", "{path}: {body}");
        assert!(body["detail"].as_str().unwrap().contains(reason), "{path}: {body}");
    }
    // `?at=` with its `+` unencoded (read as a space by form decoding) still means the offset.
    let plus = chrono::DateTime::parse_from_rfc3339(recorded_at_3)
        .unwrap()
        .with_timezone(&chrono::FixedOffset::east_opt(2 * 3600).unwrap())
        .to_rfc3339();
    assert!(plus.contains("+02:00"), "{plus}");
    let (status, at) = get_json(&c, &ingest.url(&format!("/v1/streams/{}?at={plus}", enc(sid)))).await;
    assert_eq!(status, StatusCode::OK, "{at}");
    assert_eq!(at["version"], 3, "{at}");

    // The issue board with filters.
    let list: Value = get_json(&c, &ingest.url("/v1/issues?status=done")).await.1;
    assert_eq!(list["issues"].as_array().unwrap().len(), 1);
    let list: Value = get_json(&c, &ingest.url("/v1/issues?status=assigned")).await.1;
    assert_eq!(list["issues"].as_array().unwrap().len(), 0);
    assert_eq!(
        c.get(ingest.url("/v1/issues?status=bogus"))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::UNPROCESSABLE_ENTITY
    );
}

#[tokio::test]
async fn compat_endpoint_takes_the_deployed_agents_body() {
    let db = TestDb::new().await;
    let ingest = TestIngest::start(&db).await;
    let c = reqwest::Client::new();
    let (s, b) = post(
        &c,
        &ingest.url("/api/events"),
        &json!({"Type":"HEARTBEAT","Repo":"acme/widgets","IssueNumber":42,"AgentId":"dev-e-node"}),
    )
    .await;
    assert!(s.is_success(), "{s}: {b}");
    let (stream, ty, data): (String, String, Value) = sqlx::query_as("SELECT stream_id, event_type, data FROM events")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!((stream.as_str(), ty.as_str()), ("acme/widgets#42", "HEARTBEAT"));
    assert_eq!(data, json!({"agent_id": "dev-e-node"}));
    // The agent's heartbeat shows in /v1/agents.
    let agents: Value = get_json(&c, &ingest.url("/v1/agents")).await.1;
    assert_eq!(agents["agents"][0]["agent_id"], "dev-e-node");
    assert_eq!(agents["agents"][0]["current_stream_id"], "acme/widgets#42");
    assert!(agents["agents"][0]["last_heartbeat_at"].is_string());
    // A heartbeat on the agent's own stream naming the issue by number keeps that issue.
    let (s, b) = post(
        &c,
        &ingest.url("/api/events"),
        &json!({"Type":"HEARTBEAT","AgentId":"dev-e-node","CurrentIssue":42}),
    )
    .await;
    assert!(s.is_success(), "{s}: {b}");
    let agents: Value = get_json(&c, &ingest.url("/v1/agents")).await.1;
    assert_eq!(agents["agents"][0]["current_stream_id"], "acme/widgets#42", "{agents}");
    let data: Value = sqlx::query_scalar("SELECT data FROM events WHERE stream_id = 'agent:dev-e-node'")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(data, json!({"agent_id": "dev-e-node", "current_issue": 42}));

    // No issue: the agent stream; token usage in PascalCase.
    let (s, _) = post(
        &c,
        &ingest.url("/api/events"),
        &json!({"Type":"TOKEN_USAGE","AgentId":"dev-e-node","Model":"claude-sonnet-4-5","InputTokens":1200,"OutputTokens":300,"CostUsd":0.0081}),
    )
    .await;
    assert!(s.is_success());
    let data: Value = sqlx::query_scalar(
        "SELECT data FROM events WHERE stream_id = 'agent:dev-e-node' AND event_type = 'TOKEN_USAGE'",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(data["input_tokens"], 1200);
    assert_eq!(data["cost_usd"], 0.0081);
    // Invalid compat bodies are refused like native ones.
    let (s, b) = post(
        &c,
        &ingest.url("/api/events"),
        &json!({"Type":"HEARTBEAT","Repo":"acme/widgets","IssueNumber":42}),
    )
    .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{b}");
    assert_eq!(db.events().await, 3);
}

#[tokio::test]
async fn ops_endpoints_answer() {
    let db = TestDb::new().await;
    let ingest = TestIngest::start(&db).await;
    let c = reqwest::Client::new();
    post(
        &c,
        &ingest.url("/v1/events"),
        &json!({"stream_id": "acme/widgets#1", "events": [{"type": "ISSUE_APPROVED"}]}),
    )
    .await;
    assert_eq!(
        c.get(ingest.url("/healthz")).send().await.unwrap().status(),
        StatusCode::OK
    );
    assert_eq!(
        c.get(ingest.url("/readyz")).send().await.unwrap().status(),
        StatusCode::OK
    );
    let m = get_text(&c, &ingest.url("/metrics")).await;
    assert!(m.contains("rig_ingest_events_appended_total"), "{m}");
    assert!(m.contains("rig_ingest_requests_total{route=\"/v1/events\""), "{m}");
    for group_commit in [
        "rig_ingest_batch_requests",
        "rig_ingest_batch_duration_seconds",
        "rig_ingest_wal_flush_duration_seconds",
    ] {
        assert!(m.contains(group_commit), "{group_commit} missing from:\n{m}");
    }
    let r = c.get(ingest.url("/nope")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    assert_eq!(r.json::<Value>().await.unwrap()["error"], "not_found");
}

/// The batch's agent ids travel to Postgres inside an SQL literal (writer/store.rs, `begin`): ids with
/// quotes, backslashes and non-ASCII text must arrive intact and change nothing else.
#[tokio::test]
async fn agent_ids_with_quotes_and_backslashes_are_stored_as_sent() {
    let db = TestDb::new().await;
    let ingest = TestIngest::start(&db).await;
    let c = reqwest::Client::new();
    let url = ingest.url("/v1/events");
    let nasty = [
        r"o'brien",
        r"back\slash",
        r"quote'); DROP TABLE events; --",
        "E'\\x27'",
        "ünïcødé 🚀",
    ];
    for (i, agent) in nasty.iter().enumerate() {
        let stream = format!("acme/widgets#{}", 100 + i);
        let (s, b) = post(
            &c,
            &url,
            &json!({"stream_id": stream, "events": [{"type": "ISSUE_APPROVED"},
                    {"type": "ISSUE_ASSIGNED", "data": {"agent_id": agent}},
                    {"type": "HEARTBEAT", "data": {"agent_id": agent}}]}),
        )
        .await;
        assert_eq!(s, StatusCode::CREATED, "{agent}: {b}");
        // A second request reads the holder back through the same path.
        let (s, b) = post(
            &c,
            &url,
            &json!({"stream_id": stream, "events": [{"type": "ISSUE_ASSIGNED", "data": {"agent_id": "someone-else"}}]}),
        )
        .await;
        assert_eq!((s, b["agent_id"].as_str()), (StatusCode::CONFLICT, Some(*agent)), "{b}");
    }
    let mut stored: Vec<String> = sqlx::query_scalar("SELECT agent_id FROM agent_status ORDER BY agent_id")
        .fetch_all(&db.pool)
        .await
        .unwrap();
    let mut expected: Vec<String> = nasty.iter().map(|s| s.to_string()).collect();
    stored.sort();
    expected.sort();
    assert_eq!(stored, expected);
    assert_eq!(db.events().await, 3 * nasty.len() as i64);
}

/// The lookups every append batch makes under the append lock (`rig_append_begin`) must probe
/// `issue_state` by key, whatever its size and statistics: a sequential scan there costs every
/// batch time proportional to the number of issues ever seen. The first version of the function
/// scanned it once a few thousand issues were analyzed (migration 0022 explains).
#[tokio::test]
async fn append_lookups_probe_issue_state_by_key_however_many_issues_exist() {
    let db = TestDb::new().await;
    sqlx::query(
        "INSERT INTO issue_state (stream_id, repo, issue_number, version, first_event_at, updated_at) \
         SELECT 'acme/big#' || g, 'acme/big', g, 1, now(), now() FROM generate_series(1, 2000) g",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    sqlx::query("ANALYZE issue_state").execute(&db.pool).await.unwrap();

    let streams: Vec<String> = (1..=64).map(|i| format!("acme/big#{}", i * 20)).collect();
    let request = json!({"ids": [Uuid::new_v4()], "streams": streams, "agents": ["dev-1"]});
    // One transaction, so the backend's pending table counters are not flushed (and reset)
    // between the two readings.
    let mut tx = db.pool.begin().await.unwrap();
    let scans = "SELECT seq_scan, coalesce(idx_scan, 0) FROM pg_stat_xact_user_tables WHERE relname = 'issue_state'";
    let (seq0, idx0): (i64, i64) = sqlx::query_as(scans).fetch_one(&mut *tx).await.unwrap();
    // Several calls: a plan cache may switch plans after the first few.
    for _ in 0..8 {
        let lookup: Value = sqlx::query_scalar("SELECT rig_append_begin($1, $2)::jsonb")
            .bind(rig_log::db::APPEND_LOCK_KEY)
            .bind(&request)
            .fetch_one(&mut *tx)
            .await
            .unwrap();
        assert_eq!(lookup["issues"].as_array().map(Vec::len), Some(64), "{lookup}");
        assert_eq!(lookup["stored"], json!([]));
    }
    let (seq1, idx1): (i64, i64) = sqlx::query_as(scans).fetch_one(&mut *tx).await.unwrap();
    tx.rollback().await.unwrap();
    assert_eq!(seq1 - seq0, 0, "rig_append_begin scanned issue_state sequentially");
    assert!(
        idx1 - idx0 >= 8 * 64,
        "one index probe per stream and call: {}",
        idx1 - idx0
    );
}

/// A long stream is read a page at a time with `from_version` and `limit`; `version` and `state`
/// still describe the whole stream up to the cut, and the pages put together are the stream.
#[tokio::test]
async fn long_streams_are_read_a_page_at_a_time() {
    let db = TestDb::new().await;
    let ingest = TestIngest::start(&db).await;
    let c = reqwest::Client::new();
    let get = |path: String| {
        let c = c.clone();
        let url = ingest.url(&path);
        async move { get_json(&c, &url).await }
    };
    // An agent stream of 25 heartbeats and an issue stream of 7 events.
    let agent = "agent:dev-pager";
    let beats: Vec<Value> = (0..25)
        .map(|_| json!({"type": "HEARTBEAT", "data": {"agent_id": "dev-pager"}}))
        .collect();
    let (s, b) = post(
        &c,
        &ingest.url("/v1/events"),
        &json!({"stream_id": agent, "events": beats}),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{b}");
    let issue = "acme/pager#7";
    let mut issue_events = vec![
        json!({"type": "ISSUE_APPROVED"}),
        json!({"type": "ISSUE_ASSIGNED", "data": {"agent_id": "dev-pager"}}),
    ];
    issue_events.extend((0..5).map(|_| json!({"type": "HEARTBEAT", "data": {"agent_id": "dev-pager"}})));
    let (s, b) = post(
        &c,
        &ingest.url("/v1/events"),
        &json!({"stream_id": issue, "events": issue_events}),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{b}");

    for (sid, total) in [(agent, 25), (issue, 7)] {
        let (_, whole) = get(format!("/v1/streams/{}", enc(sid))).await;
        assert!(
            whole.get("next_from_version").is_none(),
            "an unpaged read is whole: {whole}"
        );
        let mut pages: Vec<Value> = Vec::new();
        let mut from = 1;
        loop {
            let (s, page) = get(format!("/v1/streams/{}?from_version={from}&limit=4", enc(sid))).await;
            assert_eq!(s, StatusCode::OK, "{page}");
            assert_eq!(
                page["version"], total,
                "version is the stream's, not the page's: {page}"
            );
            assert_eq!(page["state"], whole["state"], "state is the whole stream's: {page}");
            let evs = page["events"].as_array().unwrap();
            assert!(evs.len() <= 4, "{page}");
            pages.extend(evs.iter().cloned());
            match page.get("next_from_version") {
                Some(n) => from = n.as_i64().unwrap(),
                None => break,
            }
        }
        assert_eq!(
            &pages,
            whole["events"].as_array().unwrap(),
            "{sid}: the pages are the stream"
        );
        assert_eq!(pages.len(), total as usize);
    }
    // A page under a time-travel cut stops at the cut.
    let (_, cut) = get(format!(
        "/v1/streams/{}?to_version=10&from_version=9&limit=5",
        enc(agent)
    ))
    .await;
    assert_eq!(cut["version"], 10, "{cut}");
    let versions: Vec<i64> = cut["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["version"].as_i64().unwrap())
        .collect();
    assert_eq!(versions, [9, 10]);
    assert!(cut.get("next_from_version").is_none(), "{cut}");
    // Bad paging parameters: a JSON 422 naming the parameter.
    for q in [
        "limit=0",
        "limit=10001",
        "limit=many",
        "from_version=0",
        "from_version=-3",
    ] {
        let (s, b) = get(format!("/v1/streams/{}?{q}", enc(agent))).await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{q}: {b}");
        assert_eq!(b["error"], "invalid_request", "{q}: {b}");
        let name = q.split('=').next().unwrap();
        assert!(b["detail"].as_str().unwrap().contains(name), "{q}: {b}");
    }
}

/// Every read endpoint refuses a bad query string with a JSON 422 that names the parameter: a
/// value of the wrong type, and an unknown (misspelt) parameter, which would otherwise be ignored
/// and answer a question the caller did not ask.
#[tokio::test]
async fn bad_query_strings_get_a_json_422_naming_the_parameter() {
    let db = TestDb::new().await;
    let ingest = TestIngest::start(&db).await;
    let c = reqwest::Client::new();
    let (s, b) = post(
        &c,
        &ingest.url("/v1/events"),
        &json!({"stream_id": "acme/q#1", "events": [{"type": "ISSUE_APPROVED"}]}),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{b}");
    for (path, name) in [
        ("/v1/issues?limit=abc", "limit"),
        ("/v1/issues?limt=3", "limt"),
        ("/v1/issues?status=approved&agent=dev-a", "agent"),
        ("/v1/usage?agent=dev-a", "agent"),
        ("/v1/costs/daily?day=3", "day"),
        ("/v1/streams/acme%2Fq%231?tover=1", "tover"),
    ] {
        let (status, b) = get_json(&c, &ingest.url(path)).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{path}: {b}");
        assert_eq!(b["error"], "invalid_request", "{path}: {b}");
        assert!(b["detail"].as_str().unwrap().contains(name), "{path}: {b}");
    }
    // The same endpoints with good parameters still answer.
    for path in [
        "/v1/issues?status=approved&limit=5",
        "/v1/usage?agent_id=dev-a",
        "/v1/costs/daily?days=3",
        "/v1/streams/acme%2Fq%231?to_version=1",
    ] {
        let (status, b) = get_json(&c, &ingest.url(path)).await;
        assert_eq!(status, StatusCode::OK, "{path}: {b}");
    }
}

/// The positions an append reports are the positions stored for its first and last events:
/// computed from the batch's one range of positions, or, when that range is broken (here an
/// identity altered to step by 2), read back row by row.
#[tokio::test]
async fn reported_positions_are_the_stored_ones_even_when_positions_are_not_consecutive() {
    let db = TestDb::new().await;
    let ingest = TestIngest::start(&db).await;
    let c = reqwest::Client::new();
    let stored = |id: Uuid| {
        let pool = db.pool.clone();
        async move {
            sqlx::query_scalar::<_, i64>("SELECT position FROM events WHERE event_id = $1")
                .bind(id)
                .fetch_one(&pool)
                .await
                .unwrap()
        }
    };
    for (round, step) in [(1, 1), (2, 2)] {
        if step > 1 {
            sqlx::query(&format!(
                "ALTER TABLE events ALTER COLUMN position SET INCREMENT BY {step}"
            ))
            .execute(&db.pool)
            .await
            .unwrap();
        }
        // Several requests at once, so that they share batches.
        let mut sent = Vec::new();
        let mut tasks = Vec::new();
        for k in 0..8 {
            let ids: Vec<Uuid> = (0..5).map(|_| Uuid::new_v4()).collect();
            let events: Vec<Value> = ids
                .iter()
                .map(|id| json!({"id": id, "type": "TOKEN_USAGE", "data": {"agent_id": "a", "model": "m", "input_tokens": 1, "output_tokens": 1}}))
                .collect();
            let body = json!({"stream_id": format!("acme/pos#{round}{k}"), "events": events});
            let (c, url) = (c.clone(), ingest.url("/v1/events"));
            tasks.push(tokio::spawn(async move { post(&c, &url, &body).await }));
            sent.push(ids);
        }
        for (ids, t) in sent.into_iter().zip(tasks) {
            let (s, b) = t.await.unwrap();
            assert_eq!(s, StatusCode::CREATED, "{b}");
            assert_eq!(b["first_position"], stored(ids[0]).await, "step {step}: {b}");
            assert_eq!(b["last_position"], stored(ids[4]).await, "step {step}: {b}");
            let span = b["last_position"].as_i64().unwrap() - b["first_position"].as_i64().unwrap();
            assert_eq!(span, 4 * step, "step {step}: {b}");
        }
    }
}
