//! The GitHub webhook against the real Postgres, fed with octokit's real payloads
//! (`tests/fixtures/github/`, MIT, see LICENSE.octokit-webhooks), adapted in the test where a
//! scenario needs it: signatures, mapping, linking, redeliveries and a whole issue story.
#![allow(clippy::unwrap_used)]

use hmac::{Hmac, Mac};
use reqwest::StatusCode;
use rig_tests::{enc, get_json, TestDb, TestIngest};
use serde_json::{json, Value};
use sha2::Sha256;

const SECRET: &str = "webhook-secret-for-tests";
const API_TOKEN: &str = "api-token-for-tests";
const HOOK: &str = "/v1/github/webhook";

fn fixture(name: &str) -> Value {
    let path = format!("{}/fixtures/github/{name}.json", env!("CARGO_MANIFEST_DIR"));
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

fn sign(secret: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// Ingest with a webhook secret AND bearer tokens, so every delivery here also proves that the
/// webhook needs no bearer token.
async fn start(db: &TestDb) -> TestIngest {
    TestIngest::start_with(db, |s| {
        s.ingest.github.webhook_secret = Some(SECRET.to_owned().into());
        s.ingest.auth_tokens = vec![API_TOKEN.to_owned().into()];
    })
    .await
}

/// Posts raw bytes with whichever GitHub headers are given.
async fn send(
    ingest: &TestIngest,
    path: &str,
    event: Option<&str>,
    delivery: Option<&str>,
    signature: Option<&str>,
    body: Vec<u8>,
) -> (StatusCode, Value) {
    let mut req = reqwest::Client::new()
        .post(ingest.url(path))
        .header("content-type", "application/json")
        .body(body);
    if let Some(e) = event {
        req = req.header("X-GitHub-Event", e);
    }
    if let Some(d) = delivery {
        req = req.header("X-GitHub-Delivery", d);
    }
    if let Some(s) = signature {
        req = req.header("X-Hub-Signature-256", s);
    }
    let r = req.send().await.unwrap();
    let status = r.status();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// A correctly signed delivery.
async fn deliver(ingest: &TestIngest, event: &str, delivery: &str, payload: &Value) -> (StatusCode, Value) {
    let body = serde_json::to_vec(payload).unwrap();
    let sig = sign(SECRET, &body);
    send(ingest, HOOK, Some(event), Some(delivery), Some(&sig), body).await
}

/// Asserts the delivery was accepted with `status` (appended / ignored / unlinked).
async fn expect(ingest: &TestIngest, event: &str, delivery: &str, payload: &Value, status: &str) -> Value {
    let (code, body) = deliver(ingest, event, delivery, payload).await;
    assert_eq!(
        (code, body["status"].as_str()),
        (StatusCode::ACCEPTED, Some(status)),
        "{event} {delivery}: {body}"
    );
    body
}

async fn read_stream(ingest: &TestIngest, sid: &str) -> Value {
    let (status, body) = get_json(
        &reqwest::Client::new(),
        &ingest.url(&format!("/v1/streams/{}", enc(sid))),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "stream {sid}: {body}");
    body
}

fn types(stream: &Value) -> Vec<&str> {
    stream["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["type"].as_str().unwrap())
        .collect()
}

/// The value of the metric series whose line starts with `name` and carries every label given.
async fn metric(ingest: &TestIngest, name: &str, labels: &[&str]) -> f64 {
    let text = reqwest::get(ingest.url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) && labels.iter().all(|x| l.contains(x)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test]
async fn a_whole_issue_story_from_webhooks_alone_ends_done() {
    let db = TestDb::new().await;
    let ingest = start(&db).await;
    let branch = "issue-7-fix-readme";

    let mut labeled = fixture("issues.labeled");
    labeled["label"]["name"] = json!("agent-ready");
    labeled["issue"]["number"] = json!(7);
    expect(&ingest, "issues", "story-1", &labeled, "appended").await;

    let mut create = fixture("create");
    create["ref"] = json!(branch);
    create["ref_type"] = json!("branch");
    expect(&ingest, "create", "story-2", &create, "appended").await;

    // No closing keyword: the branch name links it.
    let mut opened = fixture("pull_request.opened");
    opened["pull_request"]["head"]["ref"] = json!(branch);
    expect(&ingest, "pull_request", "story-3", &opened, "appended").await;

    // CI names only the PR number: linked through the PR_CREATED above.
    let mut failed = fixture("check_suite.completed");
    failed["check_suite"]["conclusion"] = json!("failure");
    expect(&ingest, "check_suite", "story-4", &failed, "appended").await;

    // The rig-conductor path takes the same deliveries.
    let mut passed = fixture("workflow_run.completed.with-pull-requests");
    passed["repository"] = opened["repository"].clone();
    let body = serde_json::to_vec(&passed).unwrap();
    let sig = sign(SECRET, &body);
    let (code, b) = send(
        &ingest,
        "/api/webhook/github",
        Some("workflow_run"),
        Some("story-5"),
        Some(&sig),
        body,
    )
    .await;
    assert_eq!(
        (code, b["status"].as_str()),
        (StatusCode::ACCEPTED, Some("appended")),
        "{b}"
    );

    let mut review = fixture("pull_request_review.submitted");
    review["review"]["state"] = json!("approved");
    expect(&ingest, "pull_request_review", "story-6", &review, "appended").await;

    let mut merged = fixture("pull_request.closed");
    merged["pull_request"]["merged"] = json!(true);
    merged["pull_request"]["merged_at"] = json!("2019-05-15T15:21:18Z");
    expect(&ingest, "pull_request", "story-7", &merged, "appended").await;

    let mut closed = fixture("issues.opened");
    closed["action"] = json!("closed");
    closed["issue"]["number"] = json!(7);
    closed["issue"]["state"] = json!("closed");
    closed["issue"]["closed_at"] = json!("2019-05-15T15:25:00Z");
    expect(&ingest, "issues", "story-8", &closed, "appended").await;

    let sid = "codertocat/hello-world#7";
    let stream = read_stream(&ingest, sid).await;
    assert_eq!(
        types(&stream),
        [
            "ISSUE_APPROVED",
            "BRANCH_CREATED",
            "PR_CREATED",
            "CI_FAILED",
            "CI_PASSED",
            "REVIEW_PASSED",
            "MERGED",
            "ISSUE_DONE"
        ]
    );
    let ev = |i: usize| &stream["events"][i];
    assert_eq!(ev(0)["data"], json!({"title": "Spelling error in the README file"}));
    assert_eq!(ev(1)["data"], json!({"branch": branch}));
    assert_eq!(
        ev(2)["data"],
        json!({"pr_number": 2, "pr_url": "https://github.com/Codertocat/Hello-World/pull/2", "branch": branch})
    );
    assert_eq!(ev(3)["data"], json!({"pr_number": 2, "run_id": 118578147}));
    assert_eq!(ev(4)["data"], json!({"pr_number": 2, "run_id": 289782451}));
    assert_eq!(ev(5)["data"], json!({"reviewer": "Codertocat", "pr_number": 2}));
    assert_eq!(
        ev(6)["data"],
        json!({"pr_number": 2, "merge_sha": "c4295bd74fb0f4fda03689c3df3f2803b658fd85"})
    );
    assert_eq!(ev(6)["occurred_at"], "2019-05-15T15:21:18Z");
    assert_eq!(ev(2)["occurred_at"], "2019-05-15T15:20:33Z");
    assert_eq!(
        ev(3)["metadata"],
        json!({"source": "github", "github_delivery": "story-4", "github_event": "check_suite",
               "github_action": "completed", "actor": "Codertocat"})
    );
    assert_eq!(stream["state"]["status"], "done");
    assert_eq!(stream["state"]["last_ci"], "passed");
    assert_eq!(stream["state"]["pr_number"], 2);

    let (status, last_ci, pr, version): (String, String, i64, i32) =
        sqlx::query_as("SELECT status, last_ci, pr_number, version FROM issue_state WHERE stream_id = $1")
            .bind(sid)
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(
        (status.as_str(), last_ci.as_str(), pr, version),
        ("done", "passed", 2, 8)
    );
    assert_eq!(db.events().await, 8, "nothing landed anywhere else");
    assert_eq!(
        db.count("SELECT count(*) FROM github_deliveries WHERE outcome = 'appended'")
            .await,
        8
    );
}

#[tokio::test]
async fn reviews_map_by_state_and_unmapped_deliveries_store_nothing() {
    let db = TestDb::new().await;
    let ingest = start(&db).await;

    let mut opened = fixture("pull_request.opened");
    opened["pull_request"]["body"] = json!("Some context.\n\nFixes #3");
    expect(&ingest, "pull_request", "r-1", &opened, "appended").await;
    // The fixture's body has no keyword and its branch no number: the earlier PR_CREATED links.
    expect(
        &ingest,
        "pull_request",
        "r-2",
        &fixture("pull_request.review_requested"),
        "appended",
    )
    .await;
    let mut disputed = fixture("pull_request_review.submitted");
    disputed["review"]["state"] = json!("CHANGES_REQUESTED");
    expect(&ingest, "pull_request_review", "r-3", &disputed, "appended").await;

    let stream = read_stream(&ingest, "codertocat/hello-world#3").await;
    assert_eq!(types(&stream), ["PR_CREATED", "REVIEW_ASSIGNED", "REVIEW_DISPUTED"]);
    assert_eq!(
        stream["events"][1]["data"],
        json!({"reviewer": "octocat", "pr_number": 2})
    );
    assert_eq!(
        stream["events"][2]["data"],
        json!({"reviewer": "Codertocat", "pr_number": 2})
    );
    assert_eq!(stream["state"]["status"], "in_review");

    let repo = fixture("issues.labeled")["repository"].clone();
    let star = json!({"action": "created", "starred_at": "2019-05-15T15:20:40Z", "repository": repo,
                      "sender": {"login": "Codertocat"}});
    let with = |name: &str, f: &dyn Fn(&mut Value)| {
        let mut v = fixture(name);
        f(&mut v);
        v
    };
    let unmapped: Vec<(&str, Value)> = vec![
        ("star", star),
        ("issues", fixture("issues.assigned")),
        ("issues", fixture("issues.unassigned")),
        ("issues", fixture("issues.opened")),
        ("issues", fixture("issues.labeled")), // label "bug", not the approve label
        ("create", fixture("create")),         // a tag
        ("pull_request", fixture("pull_request.closed")), // closed without merging
        ("pull_request_review", fixture("pull_request_review.submitted")), // "commented"
        ("check_run", fixture("check_run.completed")),
        (
            "check_suite",
            with("check_suite.completed", &|v| {
                v["check_suite"]["conclusion"] = json!("cancelled")
            }),
        ),
        (
            "check_suite",
            with("check_suite.completed", &|v| {
                v["check_suite"]["conclusion"] = json!("neutral")
            }),
        ),
        (
            "workflow_run",
            with("workflow_run.completed.with-pull-requests", &|v| {
                v["workflow_run"]["conclusion"] = json!("skipped")
            }),
        ),
    ];
    for (i, (event, payload)) in unmapped.iter().enumerate() {
        expect(&ingest, event, &format!("u-{i}"), payload, "ignored").await;
    }
    assert_eq!(db.events().await, 3, "ignored deliveries store no events");
    assert_eq!(
        db.count("SELECT count(*) FROM github_deliveries WHERE outcome = 'ignored'")
            .await,
        unmapped.len() as i64
    );
}

#[tokio::test]
async fn a_pr_closing_issue_12_brings_its_ci_along_and_unlinkable_ones_are_counted() {
    let db = TestDb::new().await;
    let ingest = start(&db).await;
    let run = fixture("workflow_run.completed.with-pull-requests");

    // The PR lives in octo-org/octo-repo, where octokit's workflow_run example happens.
    let mut opened = fixture("pull_request.opened");
    opened["repository"] = run["repository"].clone();
    opened["pull_request"]["body"] = json!("Closes #12");
    expect(&ingest, "pull_request", "l-1", &opened, "appended").await;
    // Its PR entry names a PR URL of another repository: linked by this repository and number.
    let b = expect(&ingest, "workflow_run", "l-2", &run, "appended").await;
    assert_eq!(b["streams"], json!(["octo-org/octo-repo#12"]));

    let stream = read_stream(&ingest, "octo-org/octo-repo#12").await;
    assert_eq!(types(&stream), ["PR_CREATED", "CI_PASSED"]);
    assert_eq!(
        stream["events"][1]["data"],
        json!({"pr_number": 2, "run_id": 289782451})
    );
    assert_eq!(stream["state"]["pr_number"], 2);
    assert_eq!(stream["state"]["last_ci"], "passed");

    let unlinked_prs = metric(&ingest, "rig_github_unlinked_total", &[r#"event="pull_request""#]).await;
    let unlinked_runs = metric(&ingest, "rig_github_unlinked_total", &[r#"event="workflow_run""#]).await;
    let outcome = [r#"event="pull_request""#, r#"outcome="unlinked""#];
    let delivered = metric(&ingest, "rig_github_deliveries_total", &outcome).await;
    // Nothing links these: no keyword, branch "changes" / "master", no known PR.
    let b = expect(
        &ingest,
        "pull_request",
        "l-3",
        &fixture("pull_request.opened"),
        "unlinked",
    )
    .await;
    let detail = b["detail"].as_str().unwrap();
    assert!(
        detail.contains("PR #2") && detail.contains("branch_issue_pattern"),
        "{detail}"
    );
    expect(
        &ingest,
        "workflow_run",
        "l-4",
        &fixture("workflow_run.completed"),
        "unlinked",
    )
    .await;
    let mut elsewhere = fixture("pull_request.opened");
    elsewhere["pull_request"]["body"] = json!("Closes octo-org/octo-repo#12");
    expect(&ingest, "pull_request", "l-5", &elsewhere, "unlinked").await;

    assert_eq!(db.events().await, 2, "unlinked deliveries are not stored");
    assert!(metric(&ingest, "rig_github_unlinked_total", &[r#"event="pull_request""#]).await >= unlinked_prs + 2.0);
    assert!(metric(&ingest, "rig_github_unlinked_total", &[r#"event="workflow_run""#]).await >= unlinked_runs + 1.0);
    assert!(metric(&ingest, "rig_github_deliveries_total", &outcome).await >= delivered + 2.0);
}

#[tokio::test]
async fn ci_of_an_issues_first_pr_links_after_a_second_pr_was_opened() {
    let db = TestDb::new().await;
    let ingest = start(&db).await;
    let run = fixture("workflow_run.completed.with-pull-requests");
    // The agent reports its PRs itself: #2 (the one the CI run is for), then a second try, #3.
    for pr in [2, 3] {
        let r = reqwest::Client::new()
            .post(ingest.url("/v1/events"))
            .bearer_auth(API_TOKEN)
            .json(&json!({"stream_id": "Octo-Org/Octo-Repo#12",
                          "events": [{"type": "PR_CREATED", "data": {"pr_number": pr}}]}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::CREATED);
    }
    let b = expect(&ingest, "workflow_run", "first-pr-ci", &run, "appended").await;
    assert_eq!(b["streams"], json!(["octo-org/octo-repo#12"]));
    let stream = read_stream(&ingest, "octo-org/octo-repo#12").await;
    assert_eq!(types(&stream), ["PR_CREATED", "PR_CREATED", "CI_PASSED"]);
    assert_eq!(stream["events"][2]["data"]["pr_number"], 2);
    // A PR of the same number in another repository links nothing here.
    let mut other = run.clone();
    other["repository"]["full_name"] = json!("octo-org/other-repo");
    expect(&ingest, "workflow_run", "other-repo-ci", &other, "unlinked").await;
}

#[tokio::test]
async fn an_unlinked_delivery_links_when_redelivered_after_its_pr_is_known() {
    let db = TestDb::new().await;
    let ingest = start(&db).await;
    let run = fixture("workflow_run.completed.with-pull-requests");
    // GitHub does not promise order: CI can arrive before the PR it belongs to.
    expect(&ingest, "workflow_run", "early-ci", &run, "unlinked").await;
    // A redelivery is answered 200, linked or not.
    let (code, b) = deliver(&ingest, "workflow_run", "early-ci", &run).await;
    assert_eq!((code, b["status"].as_str()), (StatusCode::OK, Some("unlinked")), "{b}");
    assert_eq!(db.events().await, 0);
    let mut opened = fixture("pull_request.opened");
    opened["repository"] = run["repository"].clone();
    opened["pull_request"]["body"] = json!("closes #12");
    expect(&ingest, "pull_request", "the-pr", &opened, "appended").await;
    let (code, b) = deliver(&ingest, "workflow_run", "early-ci", &run).await;
    assert_eq!((code, b["status"].as_str()), (StatusCode::OK, Some("appended")), "{b}");
    assert_eq!(
        types(&read_stream(&ingest, "octo-org/octo-repo#12").await),
        ["PR_CREATED", "CI_PASSED"]
    );
    // Now taken, it is an ordinary redelivery.
    let (code, b) = deliver(&ingest, "workflow_run", "early-ci", &run).await;
    assert_eq!((code, b["status"].as_str()), (StatusCode::OK, Some("redelivery")));
    assert_eq!(db.events().await, 2);
}

#[tokio::test]
async fn bad_signatures_are_refused_and_store_nothing() {
    let db = TestDb::new().await;
    let ingest = start(&db).await;
    let mut labeled = fixture("issues.labeled");
    labeled["label"]["name"] = json!("agent-ready");
    let body = serde_json::to_vec(&labeled).unwrap();
    let good = sign(SECRET, &body);
    let mut tampered = labeled.clone();
    tampered["issue"]["title"] = json!("A title changed after signing");
    let tampered = serde_json::to_vec(&tampered).unwrap();

    let before = metric(&ingest, "rig_github_deliveries_total", &[r#"outcome="bad_signature""#]).await;
    let cases: Vec<(&str, Option<String>, Vec<u8>)> = vec![
        ("missing", None, body.clone()),
        ("not sha256=", Some(good.replace("sha256=", "sha1=")), body.clone()),
        ("not hex", Some("sha256=zz-not-hex".into()), body.clone()),
        ("truncated", Some(good[..good.len() - 2].to_owned()), body.clone()),
        ("wrong secret", Some(sign("another-secret", &body)), body.clone()),
        ("body changed after signing", Some(good.clone()), tampered),
    ];
    for (i, (what, sig, b)) in cases.iter().enumerate() {
        let (code, resp) = send(
            &ingest,
            HOOK,
            Some("issues"),
            Some(&format!("bad-{i}")),
            sig.as_deref(),
            b.clone(),
        )
        .await;
        assert_eq!(code, StatusCode::UNAUTHORIZED, "{what}: {resp}");
        assert_eq!(resp["error"], "bad_signature", "{what}");
        assert!(resp["detail"].as_str().is_some_and(|d| !d.is_empty()), "{what}");
    }
    assert_eq!(db.events().await, 0);
    assert_eq!(db.count("SELECT count(*) FROM github_deliveries").await, 0);
    assert!(metric(&ingest, "rig_github_deliveries_total", &[r#"outcome="bad_signature""#]).await >= before + 6.0);

    // The signature alone authenticates: no bearer token, though ingest requires one for writes.
    let (code, resp) = send(&ingest, HOOK, Some("issues"), Some("good"), Some(&good), body).await;
    assert_eq!(code, StatusCode::ACCEPTED, "{resp}");
    assert_eq!(db.events().await, 1);
    let r = reqwest::Client::new()
        .post(ingest.url("/v1/events"))
        .json(&json!({"stream_id": "acme/widgets#1", "events": [{"type": "ISSUE_APPROVED"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        StatusCode::UNAUTHORIZED,
        "the native API still wants its bearer token"
    );
}

#[tokio::test]
async fn githubs_own_test_vector_is_accepted_end_to_end() {
    let db = TestDb::new().await;
    let ingest = TestIngest::start_with(&db, |s| {
        s.ingest.github.webhook_secret = Some("It's a Secret to Everybody".to_owned().into());
    })
    .await;
    let vector = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";
    let (code, body) = send(
        &ingest,
        HOOK,
        Some("ping"),
        Some("vector"),
        Some(vector),
        b"Hello, World!".to_vec(),
    )
    .await;
    assert_eq!(
        (code, body["status"].as_str()),
        (StatusCode::OK, Some("pong")),
        "{body}"
    );
    let (code, _) = send(
        &ingest,
        HOOK,
        Some("ping"),
        Some("vector-2"),
        Some(vector),
        b"Hello, World?".to_vec(),
    )
    .await;
    assert_eq!(code, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn a_redelivery_appends_nothing_and_answers_200() {
    let db = TestDb::new().await;
    let ingest = start(&db).await;
    let (code, body) = deliver(&ingest, "ping", "ping-1", &fixture("ping")).await;
    assert_eq!((code, body["status"].as_str()), (StatusCode::OK, Some("pong")));

    let mut labeled = fixture("issues.labeled");
    labeled["label"]["name"] = json!("agent-ready");
    expect(&ingest, "issues", "d-1", &labeled, "appended").await;
    let (code, body) = deliver(&ingest, "issues", "d-1", &labeled).await;
    assert_eq!(
        (code, body["status"].as_str()),
        (StatusCode::OK, Some("redelivery")),
        "{body}"
    );
    assert_eq!(db.events().await, 1);

    // A crash after the append but before the delivery was recorded: the redelivery finds its
    // events already stored (same ids) and writes nothing.
    sqlx::query("DELETE FROM github_deliveries")
        .execute(&db.pool)
        .await
        .unwrap();
    let (code, body) = deliver(&ingest, "issues", "d-1", &labeled).await;
    assert_eq!((code, body["events"].as_i64()), (StatusCode::OK, Some(0)), "{body}");
    assert_eq!(db.events().await, 1);
    assert_eq!(
        db.count("SELECT count(*) FROM github_deliveries WHERE delivery_id = 'd-1'")
            .await,
        1
    );

    // Another delivery is a new fact with its own ids (GitHub's bodies of two deliveries always
    // differ, if only in a time; the same body under another id is a replay, see tests/roles.rs).
    labeled["issue"]["updated_at"] = json!("2026-04-21T09:00:00Z");
    expect(&ingest, "issues", "d-2", &labeled, "appended").await;
    assert_eq!(db.events().await, 2);
}

#[tokio::test]
async fn deliveries_without_their_headers_or_json_are_refused() {
    let db = TestDb::new().await;
    let ingest = start(&db).await;
    let payload = serde_json::to_vec(&fixture("issues.assigned")).unwrap();
    let sig = sign(SECRET, &payload);
    let (code, b) = send(&ingest, HOOK, None, Some("h-1"), Some(&sig), payload.clone()).await;
    assert_eq!(
        (code, b["error"].as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("invalid_request")),
        "{b}"
    );
    assert!(b["detail"].as_str().unwrap().contains("x-github-event"), "{b}");
    let (code, b) = send(&ingest, HOOK, Some("issues"), None, Some(&sig), payload.clone()).await;
    assert_eq!(
        (code, b["error"].as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("invalid_request")),
        "{b}"
    );
    let garbage = b"{not json".to_vec();
    let sig = sign(SECRET, &garbage);
    let (code, b) = send(&ingest, HOOK, Some("issues"), Some("h-3"), Some(&sig), garbage).await;
    assert_eq!(
        (code, b["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("malformed_json")),
        "{b}"
    );
    assert_eq!(db.count("SELECT count(*) FROM github_deliveries").await, 0);
    assert_eq!(db.events().await, 0);
}

#[tokio::test]
async fn without_a_secret_unsigned_json_deliveries_are_accepted_and_forms_only_when_signed() {
    let db = TestDb::new().await;
    let ingest = TestIngest::start(&db).await;
    let mut labeled = fixture("issues.labeled");
    labeled["label"]["name"] = json!("agent-ready");
    let (code, b) = send(
        &ingest,
        HOOK,
        Some("issues"),
        Some("n-1"),
        None,
        serde_json::to_vec(&labeled).unwrap(),
    )
    .await;
    assert_eq!(
        (code, b["status"].as_str()),
        (StatusCode::ACCEPTED, Some("appended")),
        "{b}"
    );

    // GitHub's UI defaults to application/x-www-form-urlencoded: `payload=<json>`. Unsigned, a
    // form could come from any web page a browser on this machine opens: refused.
    let mut closed = fixture("issues.opened");
    closed["action"] = json!("closed");
    let body = format!(
        "payload={}",
        percent_encoding::utf8_percent_encode(
            &serde_json::to_string(&closed).unwrap(),
            percent_encoding::NON_ALPHANUMERIC
        )
    );
    let form = |ingest: &TestIngest| {
        reqwest::Client::new()
            .post(ingest.url(HOOK))
            .header("X-GitHub-Event", "issues")
            .header("X-GitHub-Delivery", "n-2")
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body.clone())
    };
    let r = form(&ingest).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert_eq!(
        types(&read_stream(&ingest, "codertocat/hello-world#1").await),
        ["ISSUE_APPROVED"]
    );

    // Signed, it is GitHub's: accepted.
    let signed = start(&db).await;
    let r = form(&signed)
        .header("X-Hub-Signature-256", sign(SECRET, body.as_bytes()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    assert_eq!(
        types(&read_stream(&signed, "codertocat/hello-world#1").await),
        ["ISSUE_APPROVED", "ISSUE_DONE"]
    );
}
