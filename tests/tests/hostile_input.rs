//! Hostile input against rig-ingest and the real Postgres: strings the database cannot store or
//! that are too long, money out of bounds, JSON objects with a repeated key, stored sums that no
//! longer decode, a request the database refuses inside a group commit, and honest clients
//! appending while hostile ones hammer the same server.
#![allow(clippy::unwrap_used)]

use hmac::{Hmac, Mac};
use reqwest::StatusCode;
use rig_events::StreamId;
use rig_log::writer::{Append, AppendError, AppendOk, NewEvent};
use rig_tests::{wait_for, TestDb, TestIngest};
use serde_json::{json, Value};
use sha2::Sha256;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

async fn post_raw(c: &reqwest::Client, url: &str, body: impl Into<reqwest::Body>) -> (StatusCode, Value) {
    let r = c
        .post(url)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap_or_else(|e| panic!("POST {url}: {e}"));
    let status = r.status();
    (status, r.json().await.unwrap_or(Value::Null))
}

async fn post(c: &reqwest::Client, url: &str, body: &Value) -> (StatusCode, Value) {
    post_raw(c, url, serde_json::to_vec(body).unwrap()).await
}

/// Asserts a 422 `invalid_event` whose detail names `field`.
fn assert_refused(what: &str, (status, body): (StatusCode, Value), field: &str) {
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{what}: {body}");
    let detail = body["detail"].as_str().unwrap_or_default();
    assert!(detail.contains(field), "{what}: the detail should name {field}: {body}");
}

fn one(stream: &str, event: Value) -> Value {
    json!({"stream_id": stream, "events": [event]})
}

#[tokio::test]
async fn nul_characters_anywhere_are_a_422_naming_the_field_and_nothing_is_written() {
    let db = TestDb::new().await;
    let ingest = TestIngest::start(&db).await;
    let c = reqwest::Client::new();
    let url = ingest.url("/v1/events");
    let nul = "a\u{0}b";
    let cases = [
        (
            "NUL in a title",
            one(
                "acme/widgets#1",
                json!({"type": "ISSUE_APPROVED", "data": {"title": nul}}),
            ),
            "data.title",
        ),
        (
            "NUL deep in data",
            one(
                "acme/widgets#1",
                json!({"type": "SOMETHING_NEW", "data": {"x": [1, {"y": nul}]}}),
            ),
            "data.x[1].y",
        ),
        (
            "NUL in a data key",
            one("acme/widgets#1", json!({"type": "SOMETHING_NEW", "data": {nul: 1}})),
            "data",
        ),
        (
            "NUL in a metadata value",
            one(
                "acme/widgets#1",
                json!({"type": "ISSUE_APPROVED", "metadata": {"correlation_id": nul}}),
            ),
            "metadata.correlation_id",
        ),
        (
            "NUL in a metadata key",
            one(
                "acme/widgets#1",
                json!({"type": "ISSUE_APPROVED", "metadata": {"k": {nul: "v"}}}),
            ),
            "metadata.k",
        ),
        (
            "NUL in the type",
            one("acme/widgets#1", json!({"type": "ISSUE\u{0}APPROVED"})),
            "type",
        ),
        (
            "NUL in an agent_id",
            one(
                "acme/widgets#1",
                json!({"type": "ISSUE_ASSIGNED", "data": {"agent_id": nul}}),
            ),
            "data.agent_id",
        ),
    ];
    for (what, body, field) in cases {
        assert_refused(what, post(&c, &url, &body).await, field);
    }
    // The stream id itself.
    let (s, b) = post(
        &c,
        &url,
        &one(
            "agent:dev\u{0}1",
            json!({"type": "HEARTBEAT", "data": {"agent_id": "d"}}),
        ),
    )
    .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{b}");
    // The compat endpoint, whose fields become data.
    let compat = ingest.url("/api/events");
    let (s, b) = post(
        &c,
        &compat,
        &json!({"Type": "HEARTBEAT", "AgentId": "dev-1", "Status": nul}),
    )
    .await;
    assert_refused("compat NUL", (s, b), "data.status");
    assert_eq!(db.events().await, 0, "nothing was written");
    // And the server still appends.
    let (s, b) = post(
        &c,
        &url,
        &one(
            "acme/widgets#1",
            json!({"type": "ISSUE_APPROVED", "data": {"title": "ok"}}),
        ),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{b}");
}

#[tokio::test]
async fn ids_titles_and_strings_over_their_caps_are_refused_and_at_their_caps_accepted() {
    let db = TestDb::new().await;
    let ingest = TestIngest::start(&db).await;
    let c = reqwest::Client::new();
    let url = ingest.url("/v1/events");
    let long = |n: usize| "x".repeat(n);

    // Refused: one character over each cap, and the multi-KB agent_id that once made
    // Postgres refuse an index row.
    let refused = [
        (
            "agent_id of 201 characters",
            one(
                "acme/widgets#2",
                json!({"type": "ISSUE_ASSIGNED", "data": {"agent_id": long(201)}}),
            ),
            "data.agent_id",
        ),
        (
            "agent_id of 5000 characters",
            one(
                "acme/widgets#2",
                json!({"type": "ISSUE_ASSIGNED", "data": {"agent_id": long(5000)}}),
            ),
            "data.agent_id",
        ),
        (
            "reviewer of 201 characters",
            one(
                "acme/widgets#2",
                json!({"type": "REVIEW_PASSED", "data": {"reviewer": long(201)}}),
            ),
            "data.reviewer",
        ),
        (
            "model of 201 characters",
            one(
                "agent:dev-1",
                json!({"type": "TOKEN_USAGE", "data": {"agent_id": "dev-1", "model": long(201),
                       "input_tokens": 1, "output_tokens": 1}}),
            ),
            "data.model",
        ),
        (
            "branch of 201 characters",
            one(
                "acme/widgets#2",
                json!({"type": "BRANCH_CREATED", "data": {"branch": long(201)}}),
            ),
            "data.branch",
        ),
        (
            "metadata correlation_id of 201 characters",
            one(
                "acme/widgets#2",
                json!({"type": "ISSUE_APPROVED", "metadata": {"correlation_id": long(201)}}),
            ),
            "metadata.correlation_id",
        ),
        (
            "title of 1001 characters",
            one(
                "acme/widgets#2",
                json!({"type": "ISSUE_APPROVED", "data": {"title": long(1001)}}),
            ),
            "data.title",
        ),
        (
            "a string of 64 KiB + 1",
            one(
                "acme/widgets#2",
                json!({"type": "SOMETHING_NEW", "data": {"notes": long(65_537)}}),
            ),
            "data.notes",
        ),
        (
            "a metadata string of 64 KiB + 1",
            one(
                "acme/widgets#2",
                json!({"type": "SOMETHING_NEW", "metadata": {"trace": long(65_537)}}),
            ),
            "metadata.trace",
        ),
    ];
    for (what, body, field) in refused {
        let (s, b) = post(&c, &url, &body).await;
        assert_refused(what, (s, b.clone()), field);
        assert_eq!(b["error"], "invalid_event", "{what}: {b}");
        assert_eq!(b["index"], 0, "{what}: {b}");
    }
    // An agent stream id over the cap names the stream.
    let (s, b) = post(
        &c,
        &url,
        &one(
            &format!("agent:{}", long(201)),
            json!({"type": "HEARTBEAT", "data": {"agent_id": "a"}}),
        ),
    )
    .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{b}");
    // The compat body's AgentId names the agent stream and becomes data.agent_id.
    let (s, b) = post(
        &c,
        &ingest.url("/api/events"),
        &json!({"Type": "HEARTBEAT", "AgentId": long(5000)}),
    )
    .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{b}");
    assert_eq!(db.events().await, 0, "nothing was written");

    // Accepted: exactly at each cap.
    let accepted = [
        one(
            "acme/widgets#3",
            json!({"type": "ISSUE_APPROVED", "data": {"title": long(1000)},
                                     "metadata": {"correlation_id": long(200)}}),
        ),
        one(
            "acme/widgets#3",
            json!({"type": "ISSUE_ASSIGNED", "data": {"agent_id": long(200)}}),
        ),
        one(
            "acme/widgets#3",
            json!({"type": "SOMETHING_NEW", "data": {"notes": long(65_536)}}),
        ),
        one(
            &format!("agent:{}", long(200)),
            json!({"type": "HEARTBEAT", "data": {"agent_id": long(200)}}),
        ),
    ];
    for body in accepted {
        let (s, b) = post(&c, &url, &body).await;
        assert_eq!(s, StatusCode::CREATED, "{b}");
    }
    assert_eq!(db.events().await, 4);
}

#[tokio::test]
async fn cost_usd_must_be_between_0_and_a_million() {
    let db = TestDb::new().await;
    let ingest = TestIngest::start(&db).await;
    let c = reqwest::Client::new();
    let url = ingest.url("/v1/events");
    let usage = |cost: Value| {
        one(
            "agent:dev-1",
            json!({"type": "TOKEN_USAGE", "data": {"agent_id": "dev-1", "model": "m",
                   "input_tokens": 1, "output_tokens": 1, "cost_usd": cost}}),
        )
    };
    for cost in [
        json!(1e28),
        json!("1e28"),
        json!(1_000_000.01),
        json!("1000000.000001"),
        json!(-1),
        json!("-0.5"),
    ] {
        assert_refused(
            &format!("cost_usd {cost}"),
            post(&c, &url, &usage(cost.clone())).await,
            "data.cost_usd",
        );
    }
    // Through the compat endpoint too.
    let (s, b) = post(
        &c,
        &ingest.url("/api/events"),
        &json!({"Type": "TOKEN_USAGE", "AgentId": "dev-1", "Model": "m", "InputTokens": 1, "OutputTokens": 1,
                "CostUsd": 1e28}),
    )
    .await;
    assert_refused("compat cost_usd 1e28", (s, b), "data.cost_usd");
    assert_eq!(db.events().await, 0, "nothing was written");
    for cost in [json!(0), json!(1_000_000), json!("1000000.00"), json!(0.000045)] {
        let (s, b) = post(&c, &url, &usage(cost.clone())).await;
        assert_eq!(s, StatusCode::CREATED, "cost_usd {cost}: {b}");
    }
}

fn sign(secret: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

#[tokio::test]
async fn objects_with_a_repeated_key_are_malformed_json_in_every_body() {
    const SECRET: &str = "webhook-secret-for-tests";
    let db = TestDb::new().await;
    let ingest = TestIngest::start_with(&db, |s| {
        s.ingest.github.webhook_secret = Some(SECRET.to_owned().into());
    })
    .await;
    let c = reqwest::Client::new();
    let assert_repeated = |what: &str, (s, b): (StatusCode, Value), key: &str| {
        assert_eq!(s, StatusCode::BAD_REQUEST, "{what}: {b}");
        assert_eq!(b["error"], "malformed_json", "{what}: {b}");
        let detail = b["detail"].as_str().unwrap_or_default();
        assert!(detail.contains(key), "{what}: the detail should name {key:?}: {b}");
    };
    let native = ingest.url("/v1/events");
    // `expected_version` given twice: the last one would silently win.
    let body = r#"{"stream_id":"acme/widgets#1","expected_version":5,"expected_version":0,"events":[{"type":"ISSUE_APPROVED"}]}"#;
    assert_repeated(
        "native, top level",
        post_raw(&c, &native, body).await,
        "expected_version",
    );
    let body =
        r#"{"stream_id":"acme/widgets#1","events":[{"type":"ISSUE_ASSIGNED","data":{"agent_id":"a","agent_id":"b"}}]}"#;
    assert_repeated("native, in data", post_raw(&c, &native, body).await, "agent_id");
    let body = r#"{"stream_id":"acme/widgets#1","events":[{"type":"ISSUE_APPROVED","metadata":{"x":{"k":1,"k":2}}}]}"#;
    assert_repeated("native, nested in metadata", post_raw(&c, &native, body).await, "k");
    let compat = ingest.url("/api/events");
    let body = r#"{"Type":"HEARTBEAT","AgentId":"dev-1","AgentId":"dev-2"}"#;
    assert_repeated("compat", post_raw(&c, &compat, body).await, "AgentId");

    // A signed delivery with a repeated key: the signature holds, the body is still refused.
    let hook = ingest.url("/v1/github/webhook");
    let body = r#"{"action":"labeled","label":{"name":"agent-ready"},"issue":{"number":3,"title":"t","number":4},
                   "repository":{"full_name":"acme/widgets"},"sender":{"login":"octocat"}}"#;
    let r = c
        .post(&hook)
        .header("content-type", "application/json")
        .header("X-GitHub-Event", "issues")
        .header("X-GitHub-Delivery", "d-repeated-1")
        .header("X-Hub-Signature-256", sign(SECRET, body.as_bytes()))
        .body(body)
        .send()
        .await
        .unwrap();
    let status = r.status();
    let answer: Value = r.json().await.unwrap_or(Value::Null);
    assert_repeated("signed webhook", (status, answer), "number");
    // Unsigned, it is still the signature that is refused first.
    let r = c
        .post(&hook)
        .header("content-type", "application/json")
        .header("X-GitHub-Event", "issues")
        .header("X-GitHub-Delivery", "d-repeated-2")
        .header("X-Hub-Signature-256", sign("wrong", body.as_bytes()))
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);

    assert_eq!(db.events().await, 0, "nothing was written");
    assert_eq!(
        db.count("SELECT count(*) FROM github_deliveries").await,
        0,
        "no delivery was recorded"
    );
    // The same bodies without the repeat are taken.
    let body = r#"{"stream_id":"acme/widgets#1","expected_version":0,"events":[{"type":"ISSUE_APPROVED"}]}"#;
    assert_eq!(post_raw(&c, &native, body).await.0, StatusCode::CREATED);
}

#[tokio::test]
async fn sums_that_no_longer_decode_answer_500_and_the_server_keeps_serving() {
    let db = TestDb::new().await;
    let ingest = TestIngest::start(&db).await;
    let c = reqwest::Client::new();
    // What two events of cost_usd 1e28 and more once left behind: sums beyond what a decimal
    // holds, and rows whose sum together overflows one.
    sqlx::raw_sql(
        "INSERT INTO token_usage (stream_id, agent_id, model, input_tokens, output_tokens, cost_usd, events) VALUES \
             ('acme/widgets#1', 'dev-1', 'm', 1, 1, 1e30, 2), \
             ('acme/widgets#2', 'dev-1', 'm', 1, 1, 5e28, 1), \
             ('acme/widgets#3', 'dev-1', 'm', 1, 1, 5e28, 1); \
         INSERT INTO daily_cost (day, repo, agent_id, model, input_tokens, output_tokens, cost_usd, events) VALUES \
             ((now() AT TIME ZONE 'UTC')::date, 'acme/widgets', 'dev-1', 'm', 1, 1, 1e30, 2), \
             ((now() AT TIME ZONE 'UTC')::date, 'acme/widgets', 'dev-2', 'm', 1, 1, 5e28, 1), \
             ((now() AT TIME ZONE 'UTC')::date, 'acme/widgets', 'dev-3', 'm', 1, 1, 5e28, 1);",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    let get = |path: &str| {
        let c = c.clone();
        let url = ingest.url(path);
        async move {
            let r = c
                .get(&url)
                .send()
                .await
                .unwrap_or_else(|e| panic!("GET {url}: the connection was dropped: {e}"));
            let status = r.status();
            let ctype = r
                .headers()
                .get("content-type")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned();
            (status, ctype, r.text().await.unwrap())
        }
    };
    for path in [
        "/v1/usage",
        "/v1/usage?agent_id=dev-1",
        "/v1/usage?stream_id=acme/widgets%231",
        "/v1/costs/daily",
        "/dashboard",
    ] {
        let (status, ctype, text) = get(path).await;
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{path}: {text}");
        assert!(ctype.starts_with("application/json"), "{path}: {ctype}");
        let body: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(body["error"], "internal", "{path}: {body}");
        assert!(body["detail"].is_string(), "{path}: {body}");
    }
    // One readable row alone still reads; other requests are served as ever.
    sqlx::query("DELETE FROM token_usage WHERE stream_id <> 'acme/widgets#2'")
        .execute(&db.pool)
        .await
        .unwrap();
    let (status, _, text) = get("/v1/usage").await;
    assert_eq!(status, StatusCode::OK, "{text}");
    // The exact amount, as written (a JSON parser here would make it a float).
    assert!(
        text.contains(r#""cost_usd":50000000000000000000000000000,"events":1}}"#),
        "{text}"
    );
    let (status, _, _) = get("/healthz").await;
    assert_eq!(status, StatusCode::OK);
    let (status, _, text) = get("/v1/issues").await;
    assert_eq!(status, StatusCode::OK, "{text}");
}

fn usage_append(stream: &str, data: Value) -> Append {
    Append {
        stream: StreamId::parse(stream).unwrap(),
        expected_version: None,
        events: vec![NewEvent {
            event_id: uuid::Uuid::new_v4(),
            id_from_client: true,
            event_type: "SOMETHING_NEW".into(),
            schema_version: 1,
            data,
            event: rig_events::Event::Other,
            metadata: json!({}),
            occurred_at: None,
        }],
    }
}

/// The database refuses one request of a 64-request group commit. That request alone fails; the
/// other 63 are written, and the batch is split in halves to find it (a handful of
/// transactions), not retried one request at a time (64).
#[tokio::test]
async fn a_request_the_database_refuses_is_isolated_by_splitting_its_batch() {
    let db = TestDb::new().await;
    sqlx::raw_sql(
        "CREATE SEQUENCE test_insert_attempts; \
         CREATE FUNCTION test_count_attempt() RETURNS trigger LANGUAGE plpgsql AS $$ \
             BEGIN PERFORM nextval('test_insert_attempts'); RETURN NULL; END $$; \
         CREATE TRIGGER test_count_attempt BEFORE INSERT ON events \
             FOR EACH STATEMENT EXECUTE FUNCTION test_count_attempt(); \
         CREATE FUNCTION test_refuse() RETURNS trigger LANGUAGE plpgsql AS $$ \
             BEGIN RAISE EXCEPTION 'refused by a test trigger'; END $$; \
         CREATE TRIGGER test_refuse BEFORE INSERT ON events \
             FOR EACH ROW WHEN (NEW.data ? 'refuse_me') EXECUTE FUNCTION test_refuse();",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    let writer = rig_log::writer::Writer::spawn(db.pool.clone(), 128);

    // Hold the append lock so that the requests queue up and are drained as ONE batch.
    let mut gate = db.pool.begin().await.unwrap();
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(rig_log::db::APPEND_LOCK_KEY)
        .execute(&mut *gate)
        .await
        .unwrap();
    let w = writer.clone();
    let first = tokio::spawn(async move { w.append(usage_append("acme/bisect#1000", json!({"n": 0}))).await });
    wait_for(
        "the writer to wait for the append lock",
        Duration::from_secs(10),
        || async {
            // This database's only: other tests' writers wait for their own append locks.
            let waiting: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted \
                 AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
            )
            .fetch_one(&db.pool)
            .await
            .unwrap();
            (waiting > 0).then_some(())
        },
    )
    .await;
    const BAD: usize = 41;
    let tasks: Vec<_> = (1..=64)
        .map(|i| {
            let w = writer.clone();
            let data = if i == BAD {
                json!({"refuse_me": true})
            } else {
                json!({"n": i})
            };
            tokio::spawn(async move { w.append(usage_append(&format!("acme/bisect#{i}"), data)).await })
        })
        .collect();
    wait_for(
        "64 requests queued behind the first",
        Duration::from_secs(10),
        || async { (writer.queued() == 64).then_some(()) },
    )
    .await;
    gate.rollback().await.unwrap();

    assert!(matches!(first.await.unwrap(), Ok(AppendOk::Created(_))));
    for (k, t) in tasks.into_iter().enumerate() {
        let i = k + 1;
        let r = t.await.unwrap();
        if i == BAD {
            assert!(
                matches!(r, Err(AppendError::Internal(_))),
                "the refused request fails: {r:?}"
            );
        } else {
            assert!(matches!(r, Ok(AppendOk::Created(_))), "request {i} is written: {r:?}");
        }
    }
    assert_eq!(db.events().await, 64);
    let attempts: i64 = sqlx::query_scalar("SELECT last_value FROM test_insert_attempts")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    // The first request (1), the batch of 64 (1), then two halves at each of 6 levels (12).
    assert!(
        attempts <= 14,
        "{attempts} insert statements for 65 requests: the failed batch was not split in halves"
    );
}

/// Honest clients append alone, then alongside hostile ones; every honest append succeeds and
/// every hostile body is refused as bad input (what that does to the honest rate is measured by
/// `rigctl bench`, not asserted here).
#[tokio::test]
async fn honest_appends_all_succeed_while_hostile_clients_are_all_refused() {
    let db = TestDb::new().await;
    let ingest = TestIngest::start(&db).await;
    let c = reqwest::Client::new();
    let url = ingest.url("/v1/events");
    let hostile_bodies: Vec<(String, u16)> = vec![
        (
            one(
                "agent:h1",
                json!({"type": "HEARTBEAT", "data": {"agent_id": "h1", "status": "a\u{0}b"}}),
            )
            .to_string(),
            422,
        ),
        (
            one(
                "acme/h#1",
                json!({"type": "ISSUE_ASSIGNED", "data": {"agent_id": "x".repeat(5000)}}),
            )
            .to_string(),
            422,
        ),
        (
            one(
                "acme/h#2",
                json!({"type": "ISSUE_APPROVED", "data": {"title": "t".repeat(100_000)}}),
            )
            .to_string(),
            422,
        ),
        (
            one(
                "agent:h2",
                json!({"type": "TOKEN_USAGE", "data": {"agent_id": "h2", "model": "m", "input_tokens": 1,
                       "output_tokens": 1, "cost_usd": 1e28}}),
            )
            .to_string(),
            422,
        ),
        (
            r#"{"stream_id":"agent:h3","events":[{"type":"HEARTBEAT","data":{"agent_id":"h3","agent_id":"h4"}}]}"#
                .to_owned(),
            400,
        ),
    ];
    let hostile_bodies = Arc::new(hostile_bodies);

    for with_hostile in [false, true] {
        let stop = Arc::new(AtomicBool::new(false));
        let honest_ok = Arc::new(AtomicU64::new(0));
        let hostile_refused = Arc::new(AtomicU64::new(0));
        let wrong = Arc::new(Mutex::new(Vec::<String>::new()));
        let mut tasks = Vec::new();
        for k in 0..16 {
            let (c, url, stop, ok, wrong) = (c.clone(), url.clone(), stop.clone(), honest_ok.clone(), wrong.clone());
            tasks.push(tokio::spawn(async move {
                let body = one(
                    &format!("agent:honest-{k}"),
                    json!({"type": "HEARTBEAT", "data": {"agent_id": format!("honest-{k}")}}),
                );
                while !stop.load(Ordering::Relaxed) {
                    let (s, b) = post(&c, &url, &body).await;
                    if s == StatusCode::CREATED {
                        ok.fetch_add(1, Ordering::Relaxed);
                    } else {
                        wrong.lock().unwrap().push(format!("honest: {s} {b}"));
                    }
                }
            }));
        }
        if with_hostile {
            for k in 0..4 {
                let (c, url, stop, refused, wrong, bodies) = (
                    c.clone(),
                    url.clone(),
                    stop.clone(),
                    hostile_refused.clone(),
                    wrong.clone(),
                    hostile_bodies.clone(),
                );
                tasks.push(tokio::spawn(async move {
                    let mut i = k;
                    while !stop.load(Ordering::Relaxed) {
                        let (body, expect) = &bodies[i % bodies.len()];
                        i += 1;
                        let (s, b) = post_raw(&c, &url, body.clone()).await;
                        if s.as_u16() == *expect {
                            refused.fetch_add(1, Ordering::Relaxed);
                        } else {
                            wrong
                                .lock()
                                .unwrap()
                                .push(format!("hostile: expected {expect}, got {s} {b}"));
                        }
                    }
                }));
            }
        }
        let started = Instant::now();
        wait_for(
            "honest appends to go on for a second",
            Duration::from_secs(30),
            || async {
                (started.elapsed() >= Duration::from_secs(1) && honest_ok.load(Ordering::Relaxed) > 0).then_some(())
            },
        )
        .await;
        stop.store(true, Ordering::Relaxed);
        for t in tasks {
            t.await.unwrap();
        }
        let wrong = wrong.lock().unwrap();
        assert!(
            wrong.is_empty(),
            "with_hostile={with_hostile}: {} wrong answers, first: {:?}",
            wrong.len(),
            wrong.first()
        );
        if with_hostile {
            assert!(hostile_refused.load(Ordering::Relaxed) > 0);
        }
    }
    let hostile_written = db
        .count("SELECT count(*) FROM events WHERE stream_id NOT LIKE 'agent:honest-%'")
        .await;
    assert_eq!(hostile_written, 0, "no hostile body was written");
}
