//! rig-notifier against the real Postgres, a real ingest, the real binary and a fake Discord
//! (wiremock) that records every request and answers scripted statuses: exactly-once delivery
//! in the normal case, 429 and 5xx handled without losing messages, kill -9 mid-burst repeating
//! at most the message in flight, a refused webhook stopping loudly, a message Discord refuses
//! set aside without blocking the rest, Discord's limits kept whatever the data, and no
//! history posted.
#![allow(clippy::unwrap_used)]

use reqwest::StatusCode;
use rig_tests::{free_port, wait_for, wait_http_ok, Proc, TestDb, TestIngest};
use serde_json::{json, Value};
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use wiremock::matchers::method;
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate};

const TOKEN: &str = "very-secret-webhook-token";

#[derive(Clone)]
struct Hit {
    at: Instant,
    path: String,
    query: String,
    body: Value,
}

impl Hit {
    /// The event a message is about: its embed footer names the event id.
    fn event_id(&self) -> String {
        let footer = self.body["embeds"][0]["footer"]["text"].as_str().unwrap_or("");
        footer.rsplit("event ").next().unwrap_or("").to_owned()
    }
}

/// Records each request, then answers with the next scripted response, or 200 with a message id.
#[derive(Clone)]
struct Recorder {
    hits: Arc<Mutex<Vec<Hit>>>,
    script: Arc<Mutex<VecDeque<ResponseTemplate>>>,
    delay: Duration,
}

impl Respond for Recorder {
    fn respond(&self, req: &Request) -> ResponseTemplate {
        let mut hits = self.hits.lock().unwrap();
        hits.push(Hit {
            at: Instant::now(),
            path: req.url.path().to_owned(),
            query: req.url.query().unwrap_or("").to_owned(),
            body: serde_json::from_slice(&req.body).unwrap_or(Value::Null),
        });
        let n = hits.len();
        self.script
            .lock()
            .unwrap()
            .pop_front()
            .unwrap_or_else(|| {
                ResponseTemplate::new(200).set_body_json(json!({"id": format!("{}", 1_000_000 + n), "type": 0}))
            })
            .set_delay(self.delay)
    }
}

struct FakeDiscord {
    server: MockServer,
    rec: Recorder,
}

impl FakeDiscord {
    async fn start(script: Vec<ResponseTemplate>, delay: Duration) -> FakeDiscord {
        let server = MockServer::start().await;
        let rec = Recorder {
            hits: Arc::default(),
            script: Arc::new(Mutex::new(script.into())),
            delay,
        };
        Mock::given(method("POST"))
            .respond_with(rec.clone())
            .mount(&server)
            .await;
        FakeDiscord { server, rec }
    }

    fn url(&self) -> String {
        format!("{}/api/webhooks/123/{TOKEN}", self.server.uri())
    }

    fn hits(&self) -> Vec<Hit> {
        self.rec.hits.lock().unwrap().clone()
    }
}

struct Notifier {
    proc: Proc,
    metrics: String,
}

fn spawn_notifier(db: &TestDb, env: &[(&str, String)]) -> Notifier {
    let port = free_port();
    let mut all = vec![
        ("DATABASE_URL", db.url.clone()),
        ("RIG_NOTIFIER__METRICS_LISTEN", format!("127.0.0.1:{port}")),
        ("RIG_CONSUMER__POLL_INTERVAL", "200ms".to_owned()),
    ];
    all.extend(env.iter().cloned());
    Notifier {
        proc: Proc::spawn("rig-notifier", &[], &all),
        metrics: format!("http://127.0.0.1:{port}/metrics"),
    }
}

async fn start_notifier(db: &TestDb, discord: &FakeDiscord) -> Notifier {
    let n = spawn_notifier(db, &[("RIG_NOTIFIER__DISCORD_WEBHOOK_URL", discord.url())]);
    wait_ready(db, &n).await;
    n
}

/// Active and holding its checkpoint (it starts at the head: what is appended before is history).
async fn wait_ready(db: &TestDb, n: &Notifier) {
    wait_http_ok(&n.metrics.replace("/metrics", "/readyz"), Duration::from_secs(60)).await;
    wait_for(
        "the notifier to be active at the head",
        Duration::from_secs(20),
        || async {
            let active = metric(
                &n.metrics,
                "rig_consumer_active{consumer=\"notifier\",tenant=\"default\"}",
            )
            .await
                == Some(1.0);
            (active
                && db
                    .count("SELECT count(*) FROM checkpoints WHERE consumer = 'notifier'")
                    .await
                    == 1)
                .then_some(())
        },
    )
    .await;
}

async fn metric(url: &str, series: &str) -> Option<f64> {
    let text = reqwest::get(url).await.ok()?.text().await.ok()?;
    text.lines()
        .find(|l| l.strip_prefix(series).is_some_and(|rest| rest.starts_with(' ')))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

async fn append(ingest: &TestIngest, stream: &str, events: Value) {
    let r = reqwest::Client::new()
        .post(ingest.url("/v1/events"))
        .json(&json!({"stream_id": stream, "events": events}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED, "{}", r.text().await.unwrap());
}

async fn event_ids(db: &TestDb, types: &[&str]) -> Vec<String> {
    let types: Vec<String> = types.iter().map(|s| s.to_string()).collect();
    sqlx::query_scalar::<_, uuid::Uuid>("SELECT event_id FROM events WHERE event_type = ANY($1) ORDER BY position")
        .bind(&types)
        .fetch_all(&db.pool)
        .await
        .unwrap()
        .into_iter()
        .map(|u| u.to_string())
        .collect()
}

async fn wait_all_sent(db: &TestDb, expected: i64) {
    wait_for(
        &format!("{expected} outbox rows sent"),
        Duration::from_secs(30),
        || async {
            (db.count("SELECT count(*) FROM notifier_outbox WHERE sent_at IS NOT NULL")
                .await
                == expected)
                .then_some(())
        },
    )
    .await;
}

/// Discord's limits, counted in characters as Discord does (independent of the renderer's code).
fn assert_within_discord_limits(p: &Value) {
    let len = |v: &Value| v.as_str().map(|s| s.chars().count()).unwrap_or(0);
    assert!(len(&p["content"]) <= 2000, "content too long");
    assert!(len(&p["content"]) > 0, "empty content");
    assert_eq!(p["allowed_mentions"], json!({"parse": []}), "mentions must ping no one");
    let embeds = p["embeds"].as_array().unwrap();
    assert!(embeds.len() <= 10);
    for e in embeds {
        let mut total = len(&e["title"]) + len(&e["description"]) + len(&e["footer"]["text"]);
        assert!(len(&e["title"]) <= 256);
        assert!(len(&e["description"]) <= 4096);
        assert!(len(&e["footer"]["text"]) <= 2048);
        let fields = e["fields"].as_array().cloned().unwrap_or_default();
        assert!(fields.len() <= 25);
        for f in &fields {
            assert!((1..=256).contains(&len(&f["name"])), "{f}");
            assert!((1..=1024).contains(&len(&f["value"])), "{f}");
            total += len(&f["name"]) + len(&f["value"]);
        }
        assert!(total <= 6000, "embed total {total}");
    }
}

#[tokio::test]
async fn each_notifiable_event_is_delivered_exactly_once() {
    let db = TestDb::new().await;
    let ingest = TestIngest::start(&db).await;
    let discord = FakeDiscord::start(vec![], Duration::ZERO).await;
    let n = start_notifier(&db, &discord).await;
    let s = "Acme/Widgets#42";
    append(
        &ingest,
        s,
        json!([
            {"type": "ISSUE_APPROVED", "data": {"title": "Add a widget"}},
            {"type": "ISSUE_ASSIGNED", "data": {"agent_id": "dev-e-node"}},
            {"type": "WORK_STARTED", "data": {"agent_id": "dev-e-node"}},
            {"type": "HEARTBEAT", "data": {"agent_id": "dev-e-node"}},
            {"type": "PR_CREATED", "data": {"pr_number": 57}},
            {"type": "CI_FAILED", "data": {"pr_number": 57, "failed_checks": ["build", "unit tests"]}},
            {"type": "AGENT_STUCK", "data": {"agent_id": "dev-e-node", "reason": "stale_heartbeat", "elapsed_seconds": 1900}},
            {"type": "HUMAN_GATE_TRIGGERED", "data": {"reason": "touches billing", "pr_number": 57}},
            {"type": "ESCALATED", "data": {"reason": "three failed reviews", "attempts": 3}},
            {"type": "MERGED", "data": {"pr_number": 57, "merge_sha": "deadbeefcafe0123"}},
            {"type": "ISSUE_DONE", "data": {"duration_minutes": 95}},
            {"type": "TOKEN_USAGE", "data": {"agent_id": "dev-e-node", "model": "m", "input_tokens": 1, "output_tokens": 1}},
        ]),
    )
    .await;
    let chosen = [
        "AGENT_STUCK",
        "CI_FAILED",
        "HUMAN_GATE_TRIGGERED",
        "ESCALATED",
        "MERGED",
        "ISSUE_DONE",
    ];
    wait_all_sent(&db, 6).await;
    let hits = discord.hits();
    assert_eq!(hits.len(), 6, "one post per notifiable event");
    let posted: Vec<String> = hits.iter().map(Hit::event_id).collect();
    assert_eq!(posted, event_ids(&db, &chosen).await, "each once, in log order");
    for h in &hits {
        assert_eq!(h.path, format!("/api/webhooks/123/{TOKEN}"));
        assert_eq!(h.query, "wait=true");
        assert_within_discord_limits(&h.body);
    }
    // Readable: what, which issue (linked), which agent, how long, the PR and the checks.
    let content = |i: usize| hits[i].body["content"].as_str().unwrap().to_owned();
    assert!(
        content(0).contains("CI failed") && content(0).contains("https://github.com/acme/widgets/pull/57"),
        "{}",
        content(0)
    );
    assert!(
        content(0).contains("build") && content(0).contains("unit tests"),
        "{}",
        content(0)
    );
    assert!(
        content(1).contains("Agent stuck") && content(1).contains("dev-e-node") && content(1).contains("31m 40s"),
        "{}",
        content(1)
    );
    assert!(
        content(1).contains("https://github.com/acme/widgets/issues/42") && content(1).contains("Add a widget"),
        "{}",
        content(1)
    );
    assert!(
        content(5).contains("Done") && content(5).contains("1h 35m"),
        "{}",
        content(5)
    );
    // Discord's message ids are stored with the delivery.
    let ids: Vec<Option<String>> = sqlx::query_scalar("SELECT message_id FROM notifier_outbox ORDER BY id")
        .fetch_all(&db.pool)
        .await
        .unwrap();
    assert_eq!(
        ids,
        (1..=6).map(|i| Some(format!("{}", 1_000_000 + i))).collect::<Vec<_>>()
    );
    assert_eq!(metric(&n.metrics, "rig_notifier_sent_total").await, Some(6.0));
    wait_for("pending back to 0", Duration::from_secs(5), || async {
        (metric(&n.metrics, "rig_notifier_pending").await == Some(0.0)).then_some(())
    })
    .await;
    assert!(!n.proc.log_text().contains(TOKEN), "the webhook URL is a secret");
}

#[tokio::test]
async fn rate_limited_delivery_waits_retry_after_then_succeeds() {
    let db = TestDb::new().await;
    let ingest = TestIngest::start(&db).await;
    let limited = ResponseTemplate::new(429)
        .set_body_json(json!({"message": "You are being rate limited.", "retry_after": 1.2, "global": false}));
    let discord = FakeDiscord::start(vec![limited], Duration::ZERO).await;
    let n = start_notifier(&db, &discord).await;
    append(
        &ingest,
        "acme/widgets#1",
        json!([{"type": "MERGED", "data": {"pr_number": 3}}]),
    )
    .await;
    wait_all_sent(&db, 1).await;
    let hits = discord.hits();
    assert_eq!(hits.len(), 2, "the same message again after the wait");
    assert_eq!(hits[0].event_id(), hits[1].event_id());
    let waited = hits[1].at - hits[0].at;
    assert!(
        waited >= Duration::from_millis(1200),
        "waited only {waited:?} of retry_after 1.2s"
    );
    assert!(waited < Duration::from_secs(5), "waited {waited:?}");
    assert_eq!(
        metric(&n.metrics, "rig_notifier_failed_total{reason=\"rate_limited\"}").await,
        Some(1.0)
    );
    assert_eq!(metric(&n.metrics, "rig_notifier_sent_total").await, Some(1.0));
}

#[tokio::test]
async fn server_errors_back_off_then_deliver_once() {
    let db = TestDb::new().await;
    let ingest = TestIngest::start(&db).await;
    let errors = vec![
        ResponseTemplate::new(500),
        ResponseTemplate::new(502),
        ResponseTemplate::new(503),
    ];
    let discord = FakeDiscord::start(errors, Duration::ZERO).await;
    let n = start_notifier(&db, &discord).await;
    append(&ingest, "acme/widgets#1", json!([{"type": "ISSUE_DONE"}])).await;
    wait_all_sent(&db, 1).await;
    let hits = discord.hits();
    assert_eq!(hits.len(), 4, "three failures, then the delivery");
    assert!(hits.iter().all(|h| h.event_id() == hits[0].event_id()));
    for pair in hits.windows(2) {
        let gap = pair[1].at - pair[0].at;
        assert!(gap >= Duration::from_millis(240), "backed off only {gap:?}");
    }
    let (attempts, last_error): (i32, Option<String>) =
        sqlx::query_as("SELECT attempts, last_error FROM notifier_outbox")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!((attempts, last_error), (4, None));
    assert_eq!(
        metric(&n.metrics, "rig_notifier_failed_total{reason=\"server_error\"}").await,
        Some(3.0)
    );
    assert_eq!(metric(&n.metrics, "rig_notifier_sent_total").await, Some(1.0));
}

#[tokio::test]
async fn sigkill_mid_burst_loses_nothing_and_repeats_at_most_the_one_in_flight() {
    let db = TestDb::new().await;
    let ingest = TestIngest::start(&db).await;
    let discord = FakeDiscord::start(vec![], Duration::from_millis(50)).await;
    let mut n = start_notifier(&db, &discord).await;
    for i in 1..=50 {
        append(
            &ingest,
            &format!("acme/widgets#{i}"),
            json!([{"type": "ESCALATED", "data": {"reason": format!("burst {i}")}}]),
        )
        .await;
    }
    wait_for("a third of the burst posted", Duration::from_secs(20), || async {
        (discord.hits().len() >= 15).then_some(())
    })
    .await;
    n.proc.kill9();
    let at_kill = discord.hits().len();
    assert!(at_kill < 50, "the kill must land mid-burst");
    let n = start_notifier(&db, &discord).await;
    wait_all_sent(&db, 50).await;
    let mut per_event: HashMap<String, usize> = HashMap::new();
    for h in discord.hits() {
        *per_event.entry(h.event_id()).or_default() += 1;
    }
    let expected = event_ids(&db, &["ESCALATED"]).await;
    assert_eq!(per_event.len(), 50, "none lost");
    assert!(expected.iter().all(|id| per_event.contains_key(id)));
    let repeats: usize = per_event.values().map(|c| c - 1).sum();
    assert!(
        repeats <= 1,
        "at most the message in flight is repeated, found {repeats} repeats"
    );
    assert_eq!(db.count("SELECT count(*) FROM notifier_outbox").await, 50);
    drop(n);
}

#[tokio::test]
async fn non_notifiable_events_and_history_send_nothing() {
    let db = TestDb::new().await;
    let ingest = TestIngest::start(&db).await;
    // History: appended before the notifier ever ran. Never posted.
    append(
        &ingest,
        "acme/widgets#1",
        json!([{"type": "MERGED", "data": {"pr_number": 1}}]),
    )
    .await;
    let discord = FakeDiscord::start(vec![], Duration::ZERO).await;
    let _n = start_notifier(&db, &discord).await;
    append(
        &ingest,
        "acme/widgets#2",
        json!([
            {"type": "ISSUE_APPROVED"},
            {"type": "ISSUE_ASSIGNED", "data": {"agent_id": "a"}},
            {"type": "WORK_STARTED", "data": {"agent_id": "a"}},
            {"type": "HEARTBEAT", "data": {"agent_id": "a"}},
            {"type": "CI_PASSED", "data": {"pr_number": 4}},
            {"type": "REVIEW_PASSED"},
            {"type": "SOMETHING_NEW", "data": {"x": 1}},
        ]),
    )
    .await;
    append(
        &ingest,
        "agent:a",
        json!([{"type": "HEARTBEAT", "data": {"agent_id": "a", "current_issue": 2}}]),
    )
    .await;
    // A notifiable event after all of them: once it is delivered, the others had their chance.
    append(&ingest, "acme/widgets#3", json!([{"type": "ISSUE_DONE"}])).await;
    wait_all_sent(&db, 1).await;
    let hits = discord.hits();
    assert_eq!(hits.len(), 1);
    assert_eq!(vec![hits[0].event_id()], event_ids(&db, &["ISSUE_DONE"]).await);
    assert_eq!(db.count("SELECT count(*) FROM notifier_outbox").await, 1);
}

#[tokio::test]
async fn refused_webhook_stops_posting_and_says_so() {
    let db = TestDb::new().await;
    let ingest = TestIngest::start(&db).await;
    let gone = ResponseTemplate::new(404).set_body_json(json!({"message": "Unknown Webhook", "code": 10015}));
    let discord = FakeDiscord::start(vec![gone], Duration::ZERO).await;
    let n = start_notifier(&db, &discord).await;
    append(
        &ingest,
        "acme/widgets#1",
        json!([{"type": "ISSUE_DONE"}, {"type": "MERGED"}]),
    )
    .await;
    wait_for("rig_notifier_webhook_disabled 1", Duration::from_secs(15), || async {
        (metric(&n.metrics, "rig_notifier_webhook_disabled").await == Some(1.0)).then_some(())
    })
    .await;
    // A new message is not posted either, and the refusal is reported again.
    append(
        &ingest,
        "acme/widgets#2",
        json!([{"type": "ESCALATED", "data": {"reason": "x"}}]),
    )
    .await;
    wait_for(
        "the new message counted as pending",
        Duration::from_secs(15),
        || async { (metric(&n.metrics, "rig_notifier_pending").await == Some(3.0)).then_some(()) },
    )
    .await;
    assert_eq!(discord.hits().len(), 1, "no post after the 404");
    assert_eq!(
        db.count("SELECT count(*) FROM notifier_outbox WHERE sent_at IS NULL")
            .await,
        3,
        "messages kept"
    );
    assert_eq!(
        metric(&n.metrics, "rig_notifier_failed_total{reason=\"rejected\"}").await,
        Some(1.0)
    );
    let log = n.proc.log_text();
    let errors: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("ERROR") && l.contains("notifier.discord_webhook_url"))
        .collect();
    assert!(errors.len() >= 2, "an error naming the fix at every check:\n{log}");
    assert!(errors[0].contains("restart"), "{}", errors[0]);
    assert!(!log.contains(TOKEN), "the webhook URL is a secret");
}

#[tokio::test]
async fn hostile_event_data_still_fits_discord_limits() {
    let db = TestDb::new().await;
    let ingest = TestIngest::start(&db).await;
    let discord = FakeDiscord::start(vec![], Duration::ZERO).await;
    let _n = start_notifier(&db, &discord).await;
    // Markdown, mentions, combining marks and bidi controls, each string as long as ingest takes
    // it (a title 1,000 characters, an id 200, any other string up to 64 KiB).
    let huge = "@everyone **<@&1>** [x](https://evil.example) 💥e\u{301}\u{202E}`|| ".repeat(800);
    let title: String = huge.chars().take(rig_events::MAX_TITLE_CHARS).collect();
    let id: String = huge.chars().take(rig_events::MAX_ID_CHARS).collect();
    let checks: Vec<String> = (0..100).map(|i| format!("check-{i}-{}", "ü".repeat(900))).collect();
    append(
        &ingest,
        "acme/widgets#5",
        json!([
            {"type": "ISSUE_APPROVED", "data": {"title": title}},
            {"type": "ISSUE_ASSIGNED", "data": {"agent_id": id}},
            {"type": "HUMAN_GATE_TRIGGERED", "data": {"reason": huge}},
            {"type": "CI_FAILED", "data": {"failed_checks": checks, "run_id": id}},
            {"type": "AGENT_STUCK", "data": {"agent_id": id, "reason": huge, "elapsed_seconds": 1e18}},
        ]),
    )
    .await;
    wait_all_sent(&db, 3).await;
    let hits = discord.hits();
    assert_eq!(hits.len(), 3);
    for h in &hits {
        assert_within_discord_limits(&h.body);
        let content = h.body["content"].as_str().unwrap();
        assert!(
            !content.contains("[x](https"),
            "masked links from data are escaped: {content}"
        );
    }
}

#[tokio::test]
async fn refuses_to_start_without_a_webhook_and_dry_run_logs_instead() {
    let db = TestDb::new().await;
    let mut none = spawn_notifier(&db, &[]);
    let status = wait_for("the notifier to refuse to start", Duration::from_secs(60), || {
        let s = none.proc.try_wait();
        async move { s }
    })
    .await;
    assert!(!status.success());
    let log = none.proc.log_text();
    assert!(
        log.contains("notifier.discord_webhook_url") && log.contains("notifier.dry_run"),
        "{log}"
    );

    let ingest = TestIngest::start(&db).await;
    let dry = spawn_notifier(&db, &[("RIG_NOTIFIER__DRY_RUN", "true".to_owned())]);
    wait_ready(&db, &dry).await;
    append(
        &ingest,
        "acme/widgets#8",
        json!([{"type": "MERGED", "data": {"pr_number": 9}}]),
    )
    .await;
    wait_all_sent(&db, 1).await;
    let message_id: Option<String> = sqlx::query_scalar("SELECT message_id FROM notifier_outbox")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(message_id, None);
    let log = dry.proc.log_text();
    assert!(log.contains("dry run") && log.contains("Merged"), "{log}");
}

#[tokio::test]
async fn message_discord_refuses_is_set_aside_and_the_next_one_goes_out() {
    let db = TestDb::new().await;
    let ingest = TestIngest::start(&db).await;
    let invalid = ResponseTemplate::new(400).set_body_json(json!({"message": "Invalid Form Body", "code": 50035}));
    let discord = FakeDiscord::start(vec![invalid], Duration::ZERO).await;
    let n = start_notifier(&db, &discord).await;
    append(
        &ingest,
        "acme/widgets#1",
        json!([{"type": "ISSUE_DONE"}, {"type": "MERGED"}]),
    )
    .await;
    wait_all_sent(&db, 1).await;
    let hits = discord.hits();
    assert_eq!(hits.len(), 2, "the refused message is not retried");
    assert_eq!(
        hits.iter().map(Hit::event_id).collect::<Vec<_>>(),
        event_ids(&db, &["ISSUE_DONE", "MERGED"]).await
    );
    let (event_type, last_error): (String, String) = sqlx::query_as(
        "SELECT event_type, last_error FROM notifier_outbox WHERE failed_at IS NOT NULL AND sent_at IS NULL",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(event_type, "ISSUE_DONE");
    assert!(
        last_error.contains("400") && last_error.contains("Invalid Form Body"),
        "{last_error}"
    );
    assert_eq!(metric(&n.metrics, "rig_notifier_webhook_disabled").await, Some(0.0));
    wait_for("pending back to 0", Duration::from_secs(5), || async {
        (metric(&n.metrics, "rig_notifier_pending").await == Some(0.0)).then_some(())
    })
    .await;
}

/// Appends one event to a tenant's log behind ingest's back, as ingest would (the append lock,
/// then the wake-up on the control database).
async fn append_to_tenant(control: &TestDb, log: &TestDb, tenant: &str, stream: &str, event_type: &str, data: Value) {
    let mut tx = rig_tests::append_tx(&log.pool).await;
    sqlx::query(
        "INSERT INTO events (stream_id, version, event_id, event_type, data) \
         SELECT $1, coalesce(max(version), 0) + 1, gen_random_uuid(), $2, $3 FROM events WHERE stream_id = $1",
    )
    .bind(stream)
    .bind(event_type)
    .bind(data)
    .execute(&mut *tx)
    .await
    .unwrap();
    tx.commit().await.unwrap();
    sqlx::query("SELECT pg_notify($1, $2)")
        .bind(rig_tenants::TENANT_EVENTS_CHANNEL)
        .bind(tenant)
        .execute(&control.pool)
        .await
        .unwrap();
}

#[tokio::test]
async fn each_tenant_posts_to_its_own_webhook_with_its_own_event_list() {
    let control = TestDb::new().await;
    let acme = control.add_tenant("acme").await;
    let ingest = TestIngest::start(&control).await;
    let deployment = FakeDiscord::start(vec![], Duration::ZERO).await;
    let own = FakeDiscord::start(vec![], Duration::ZERO).await;
    rig_tenants::settings::set(&control.pool, "acme", "notifier.discord_webhook_url", Some(&own.url()))
        .await
        .unwrap();
    rig_tenants::settings::set(&control.pool, "acme", "notifier.events", Some("MERGED"))
        .await
        .unwrap();
    let n = start_notifier(&control, &deployment).await;
    // acme's consumer starts at acme's head once it is taken up.
    wait_for("acme's notifier checkpoint", Duration::from_secs(20), || async {
        (acme
            .count("SELECT count(*) FROM checkpoints WHERE consumer = 'notifier'")
            .await
            == 1)
            .then_some(())
    })
    .await;

    append_to_tenant(
        &control,
        &acme,
        "acme",
        "acme/widgets#7",
        "CI_FAILED",
        json!({"pr_number": 70}),
    )
    .await;
    append_to_tenant(
        &control,
        &acme,
        "acme",
        "acme/widgets#7",
        "MERGED",
        json!({"pr_number": 70}),
    )
    .await;
    append(
        &ingest,
        "globex/app#3",
        json!([{"type": "CI_FAILED", "data": {"pr_number": 30}}, {"type": "MERGED", "data": {"pr_number": 30}}]),
    )
    .await;
    wait_all_sent(&control, 2).await;
    wait_for("acme's message", Duration::from_secs(20), || async {
        (acme
            .count("SELECT count(*) FROM notifier_outbox WHERE sent_at IS NOT NULL")
            .await
            == 1)
            .then_some(())
    })
    .await;
    // acme's list has MERGED only: its CI_FAILED is not even in its outbox.
    assert_eq!(acme.count("SELECT count(*) FROM notifier_outbox").await, 1);
    let to_own: Vec<String> = own.hits().iter().map(|h| h.body.to_string()).collect();
    let to_deployment: Vec<String> = deployment.hits().iter().map(|h| h.body.to_string()).collect();
    assert_eq!(to_own.len(), 1, "{to_own:?}");
    assert!(to_own[0].contains("acme/widgets"), "{to_own:?}");
    assert_eq!(to_deployment.len(), 2, "{to_deployment:?}");
    assert!(to_deployment
        .iter()
        .all(|b| b.contains("globex/app") && !b.contains("acme/widgets")));
    drop(n);
}
