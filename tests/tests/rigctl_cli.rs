//! The operator's commands as a script or a person runs them: the real `rigctl`
//! binary against a real database, its stdout, stderr and exit code. `stream` (with time
//! travel), `issues`, `consumers --json` (exactly the keys scripts rely on), `reset`, and `skip`
//! (only ever the consumer's next event, dead-lettered); bad input exits non-zero with a message
//! and changes nothing.
#![allow(clippy::unwrap_used)]

use reqwest::StatusCode;
use rig_tests::{enc, get_json, rigctl, Run, TestDb, TestIngest};
use serde_json::{json, Value};
use std::collections::BTreeSet;

fn json_of(r: &Run) -> Value {
    serde_json::from_str(&r.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {}\n{}", r.stdout, r.stderr))
}

async fn append(c: &reqwest::Client, ingest: &TestIngest, body: Value) {
    let r = c.post(ingest.url("/v1/events")).json(&body).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::CREATED, "{}", r.text().await.unwrap());
}

#[tokio::test]
async fn rigctl_inspects_streams_issues_and_consumers_and_refuses_bad_input() {
    let db = TestDb::new().await;
    let ingest = TestIngest::start(&db).await;
    let c = reqwest::Client::new();
    let sid = "acme/cli#5";
    append(
        &c,
        &ingest,
        json!({"stream_id": sid, "events": [{"type": "ISSUE_APPROVED", "data": {"title": "A CLI"}}]}),
    )
    .await;
    let first: Value = get_json(&c, &ingest.url(&format!("/v1/streams/{}", enc(sid)))).await.1;
    let approved_at = first["events"][0]["recorded_at"].as_str().unwrap().to_owned();
    append(
        &c,
        &ingest,
        json!({"stream_id": sid, "events": [
            {"type": "ISSUE_ASSIGNED", "data": {"agent_id": "dev-c"}},
            {"type": "TOKEN_USAGE", "data": {"agent_id": "dev-c", "model": "claude-sonnet-4-5", "input_tokens": 10, "output_tokens": 5}}
        ]}),
    )
    .await;

    // stream: the timeline and the state, for a person…
    let r = rigctl(&db, &["stream", sid]).await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    for needle in [
        "version 3",
        "ISSUE_APPROVED",
        "ISSUE_ASSIGNED",
        "TOKEN_USAGE",
        "assigned",
        "dev-c",
    ] {
        assert!(
            r.stdout.contains(needle),
            "stream output lacks {needle:?}:\n{}",
            r.stdout
        );
    }
    // …and for a script, with time travel by version and by time.
    let r = rigctl(&db, &["stream", sid, "--to-version", "1", "--json"]).await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    let v = json_of(&r);
    assert_eq!(v["version"], 1, "{v}");
    assert_eq!(v["events"].as_array().unwrap().len(), 1, "{v}");
    assert_eq!(v["state"]["status"], "approved", "{v}");
    // `--at` the first request's time: the second was recorded strictly later (checked, not hoped).
    let second_at: chrono::DateTime<chrono::Utc> =
        sqlx::query_scalar("SELECT recorded_at FROM events WHERE stream_id = $1 AND version = 2")
            .bind(sid)
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert!(second_at > approved_at.parse::<chrono::DateTime<chrono::Utc>>().unwrap());
    let r = rigctl(&db, &["stream", sid, "--at", &approved_at, "--json"]).await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    let v = json_of(&r);
    assert_eq!(v["version"], 1, "--at {approved_at}: {v}");
    assert_eq!(v["state"]["status"], "approved", "{v}");
    let r = rigctl(&db, &["stream", sid, "--json"]).await;
    let whole = json_of(&r);
    assert_eq!(whole["version"], 3);
    assert_eq!(whole["state"]["status"], "assigned");
    assert_eq!(whole["state"]["agent_id"], "dev-c");

    // issues: the board, filtered.
    let r = rigctl(&db, &["issues", "--json"]).await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    let issues = json_of(&r)["issues"].as_array().unwrap().clone();
    assert_eq!(issues.len(), 1, "{issues:?}");
    assert_eq!(issues[0]["stream_id"], sid);
    let r = rigctl(&db, &["issues", "--status", "done", "--json"]).await;
    assert_eq!(json_of(&r)["issues"], json!([]));
    let r = rigctl(&db, &["issues"]).await;
    assert!(
        r.code == 0 && r.stdout.contains(sid) && r.stdout.contains("assigned"),
        "{}",
        r.stdout
    );

    // consumers --json: a list of objects with exactly the documented keys, plus `consumer`.
    let r = rigctl(&db, &["consumers", "--json"]).await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    let list = json_of(&r);
    let list = list.as_array().unwrap();
    let names: BTreeSet<&str> = list.iter().map(|o| o["consumer"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        BTreeSet::from(["token-projector", "cost-projector", "stale-heartbeat", "notifier"])
    );
    let expected_keys = BTreeSet::from(["consumer", "position", "head", "lag", "active", "paused", "last_error"]);
    for o in list {
        let keys: BTreeSet<&str> = o.as_object().unwrap().keys().map(String::as_str).collect();
        assert_eq!(keys, expected_keys, "{o}");
        assert_eq!(o["head"], 3, "the head is the last position: {o}");
        assert_eq!(o["active"], false, "no worker runs here: {o}");
        assert_eq!(o["paused"], false, "{o}");
    }
    let r = rigctl(&db, &["consumers"]).await;
    assert!(
        r.code == 0 && r.stdout.contains("token-projector") && r.stdout.contains("LAG"),
        "{}",
        r.stdout
    );

    // reset: the consumer's checkpoint goes back to the start.
    sqlx::query("INSERT INTO checkpoints (consumer, position) VALUES ('token-projector', 3)")
        .execute(&db.pool)
        .await
        .unwrap();
    let r = rigctl(&db, &["reset", "token-projector"]).await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    let pos: i64 = sqlx::query_scalar("SELECT position FROM checkpoints WHERE consumer = 'token-projector'")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(pos, 0);

    // Bad input: a non-zero exit, a message that says what is wrong, nothing changed.
    let cases: [(&[&str], &str); 7] = [
        (&["stream", "acme/cli#6"], "no events"),
        (&["stream", "no-number"], "stream_id"),
        (&["issues", "--status", "nope"], "--status"),
        (&["reset", "nope"], "token-projector"),
        // Only the consumer's next event can be skipped (here position 1): never a run of them.
        (&["skip", "token-projector", "3"], "token-projector"),
        (&["skip", "token-projector", "99"], "99"),
        (&["skip", "token-projector", "abc"], "abc"),
    ];
    for (args, needle) in cases {
        let r = rigctl(&db, args).await;
        assert_ne!(r.code, 0, "rigctl {args:?} should fail:\n{}", r.stdout);
        assert!(
            r.stderr.contains(needle),
            "rigctl {args:?}: the message should name {needle:?}:\n{}",
            r.stderr
        );
    }
    assert_eq!(db.count("SELECT count(*) FROM dead_letters").await, 0);
    let pos: i64 = sqlx::query_scalar("SELECT position FROM checkpoints WHERE consumer = 'token-projector'")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(pos, 0, "a refused skip moves nothing");

    // The next event can be skipped even without a pause (a consumer that crashes on an event
    // never gets to record one): dead-lettered, never silently.
    let r = rigctl(&db, &["skip", "token-projector", "1"]).await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    let (position, error): (i64, String) =
        sqlx::query_as("SELECT position, error FROM dead_letters WHERE consumer = 'token-projector'")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(position, 1);
    assert!(error.contains("operator"), "{error}");
    let r = rigctl(&db, &["consumers", "--json"]).await;
    let tp = json_of(&r)
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["consumer"] == "token-projector")
        .cloned()
        .unwrap();
    assert_eq!(tp["position"], 1, "{tp}");
    assert_eq!(tp["lag"], 2, "{tp}");
    assert_eq!(db.events().await, 3);
}
