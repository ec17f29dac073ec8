//! rig-ingest serving many tenants against the real Postgres: `/t/{tenant}/…` reaches that
//! tenant's own database and nothing else, tenant tokens are good for their tenant only (any
//! other answers 404 `unknown_tenant`, as a tenant that does not exist), admin tokens for all;
//! the catalog is followed at run time; GitHub deliveries go where their repository is routed;
//! `/v1/admin/tenants`; and a tenant's append wakes the workers on the control database.
#![allow(clippy::unwrap_used)]

use hmac::{Hmac, Mac};
use reqwest::StatusCode;
use rig_tests::{enc, get_text, wait_for, TestDb, TestIngest};
use secrecy::ExposeSecret;
use serde_json::{json, Value};
use sha2::Sha256;
use std::time::Duration;

const ADMIN: &str = "admin-token-for-tests";
const SECRET: &str = "deployment-webhook-secret";

/// A deployment with two tenants besides `default`, their tokens, and ingest serving them.
struct Deployment {
    control: TestDb,
    acme: TestDb,
    beta: TestDb,
    acme_token: String,
    beta_token: String,
    ingest: TestIngest,
    client: reqwest::Client,
}

impl Deployment {
    async fn start(admin_tokens: bool) -> Deployment {
        let control = TestDb::new().await;
        let acme = control.add_tenant("acme").await;
        let beta = control.add_tenant("beta").await;
        let acme_token = rig_tenants::new_token(&control.pool, "acme").await.unwrap();
        let beta_token = rig_tenants::new_token(&control.pool, "beta").await.unwrap();
        let ingest = TestIngest::start_with(&control, |s| {
            if admin_tokens {
                s.ingest.auth_tokens = vec![ADMIN.to_owned().into()];
            }
            s.ingest.github.webhook_secret = Some(SECRET.to_owned().into());
        })
        .await;
        Deployment {
            control,
            acme,
            beta,
            acme_token: acme_token.expose_secret().to_owned(),
            beta_token: beta_token.expose_secret().to_owned(),
            ingest,
            client: reqwest::Client::new(),
        }
    }

    async fn get(&self, path: &str, token: Option<&str>) -> (StatusCode, String) {
        let mut r = self.client.get(self.ingest.url(path));
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        let r = r.send().await.unwrap();
        (r.status(), r.text().await.unwrap())
    }

    async fn get_json(&self, path: &str, token: Option<&str>) -> (StatusCode, Value) {
        let (s, text) = self.get(path, token).await;
        (s, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    async fn post(&self, path: &str, token: Option<&str>, body: &Value) -> (StatusCode, Value) {
        let mut r = self.client.post(self.ingest.url(path)).json(body);
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        let r = r.send().await.unwrap();
        let status = r.status();
        (status, r.json().await.unwrap_or(Value::Null))
    }
}

fn issue(stream: &str, title: &str) -> Value {
    json!({"stream_id": stream, "events": [{"type": "ISSUE_APPROVED", "data": {"title": title}}]})
}

async fn events_in(db: &TestDb, stream: &str) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM events WHERE stream_id = $1")
        .bind(stream)
        .fetch_one(&db.pool)
        .await
        .unwrap()
}

/// A row in each of the projectors' tables (no projector runs here), named after its tenant.
async fn seed_projections(db: &TestDb, name: &str) {
    sqlx::query(
        "INSERT INTO token_usage (stream_id, agent_id, model, input_tokens, output_tokens, cost_usd, events) \
         VALUES ($1, $2, 'm', 10, 5, 0.5, 1)",
    )
    .bind(format!("{name}/w#1"))
    .bind(format!("{name}-agent"))
    .execute(&db.pool)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO daily_cost (day, repo, agent_id, model, input_tokens, output_tokens, cost_usd, events) \
         VALUES ((now() AT TIME ZONE 'UTC')::date, $1, $2, 'm', 10, 5, 0.5, 1)",
    )
    .bind(format!("{name}/w"))
    .bind(format!("{name}-agent"))
    .execute(&db.pool)
    .await
    .unwrap();
}

fn assert_unknown(what: &str, status: StatusCode, body: &str, secret_words: &[&str]) {
    assert_eq!(status, StatusCode::NOT_FOUND, "{what}: {body}");
    let v: Value = serde_json::from_str(body).unwrap_or(Value::Null);
    assert_eq!(v["error"], "unknown_tenant", "{what}: {body}");
    for w in secret_words {
        assert!(!body.contains(w), "{what}: the answer names {w:?}: {body}");
    }
}

/// Every read route of a tenant, with a path that finds its data.
fn read_routes(name: &str) -> Vec<String> {
    let stream = enc(&format!("{name}/w#1"));
    vec![
        format!("/v1/streams/{stream}"),
        "/v1/issues".to_owned(),
        format!("/v1/issues/{stream}"),
        "/v1/agents".to_owned(),
        "/v1/usage".to_owned(),
        "/v1/costs/daily".to_owned(),
        "/dashboard".to_owned(),
    ]
}

#[tokio::test]
async fn each_token_reaches_its_own_tenant_only() {
    let d = Deployment::start(true).await;
    let (acme, beta) = (Some(d.acme_token.as_str()), Some(d.beta_token.as_str()));

    // Writes, native and compat, land in the tenant's own database only.
    let (s, b) = d
        .post("/t/acme/v1/events", acme, &issue("acme/w#1", "acme title"))
        .await;
    assert_eq!(s, StatusCode::CREATED, "{b}");
    let heartbeat = json!({"Type": "HEARTBEAT", "AgentId": "acme-agent", "Status": "idle"});
    let (s, b) = d.post("/t/acme/api/events", acme, &heartbeat).await;
    assert!(s.is_success(), "{b}");
    let (s, b) = d
        .post("/t/beta/v1/events", beta, &issue("beta/w#1", "beta title"))
        .await;
    assert_eq!(s, StatusCode::CREATED, "{b}");
    let (s, b) = d
        .post("/v1/events", Some(ADMIN), &issue("default/w#1", "default title"))
        .await;
    assert_eq!(s, StatusCode::CREATED, "{b}");
    assert_eq!(events_in(&d.acme, "acme/w#1").await, 1);
    assert_eq!(events_in(&d.acme, "agent:acme-agent").await, 1);
    assert_eq!(d.acme.events().await, 2);
    assert_eq!(d.beta.events().await, 1);
    assert_eq!(d.control.events().await, 1);
    assert_eq!(events_in(&d.control, "default/w#1").await, 1);
    for name in ["acme", "beta", "default"] {
        let db = match name {
            "acme" => &d.acme,
            "beta" => &d.beta,
            _ => &d.control,
        };
        seed_projections(db, name).await;
    }

    // Reads show only the tenant's data, on every read route.
    for (prefix, token, own, others) in [
        ("/t/acme", acme, "acme", ["beta", "default"]),
        ("/t/beta", beta, "beta", ["acme", "default"]),
        ("", Some(ADMIN), "default", ["acme", "beta"]),
        ("/t/acme", Some(ADMIN), "acme", ["beta", "default"]),
    ] {
        for route in read_routes(own) {
            let path = format!("{prefix}{route}");
            let (s, body) = d.get(&path, token).await;
            assert_eq!(s, StatusCode::OK, "{path}: {body}");
            if route != "/v1/agents" || own == "acme" {
                assert!(
                    body.contains(&format!("{own}/w")) || body.contains(&format!("{own}-agent")),
                    "{path}: {body}"
                );
            }
            for other in others {
                assert!(
                    !body.contains(&format!("{other}/w")) && !body.contains(&format!("{other}-agent")),
                    "{path} shows {other}'s data: {body}"
                );
            }
        }
    }

    // Another tenant's token, on any route of that tenant: as if the tenant did not exist.
    for route in read_routes("beta") {
        let (s, body) = d.get(&format!("/t/beta{route}"), acme).await;
        assert_unknown(&format!("acme's token on /t/beta{route}"), s, &body, &["beta"]);
        // A tenant that does not exist answers the same, for a tenant token and an admin one.
        let (s, body) = d.get(&format!("/t/nosuch{route}"), acme).await;
        assert_unknown(&format!("/t/nosuch{route}"), s, &body, &["nosuch"]);
        let (s, body) = d.get(&format!("/t/nosuch{route}"), Some(ADMIN)).await;
        assert_unknown(&format!("/t/nosuch{route} as admin"), s, &body, &["nosuch"]);
    }
    for path in ["/t/beta/v1/events", "/t/beta/api/events", "/t/nosuch/v1/events"] {
        let body = if path.contains("/api/") {
            json!({"Type": "HEARTBEAT", "AgentId": "intruder"})
        } else {
            issue("beta/w#2", "intruder")
        };
        let (s, b) = d.post(path, acme, &body).await;
        assert_unknown(&format!("acme's token posting to {path}"), s, &b.to_string(), &["beta"]);
    }
    assert_eq!(
        d.beta.events().await,
        1,
        "nothing was written for another tenant's token"
    );

    // A tenant token on the unprefixed routes (default's): 404 too.
    let (s, body) = d.get("/v1/issues", acme).await;
    assert_unknown("acme's token on /v1/issues", s, &body, &["default"]);
    let (s, b) = d.post("/v1/events", acme, &issue("default/w#2", "x")).await;
    assert_unknown("acme's token on /v1/events", s, &b.to_string(), &[]);
    assert_eq!(d.control.events().await, 1);

    // No token, or a token that is nobody's, on a tenant: 401, reads and writes alike.
    for token in [None, Some("not-a-token")] {
        let (s, b) = d.get_json("/t/acme/v1/issues", token).await;
        assert_eq!(
            (s, b["error"].as_str()),
            (StatusCode::UNAUTHORIZED, Some("unauthorized")),
            "{b}"
        );
        let (s, b) = d.post("/t/acme/v1/events", token, &issue("acme/w#3", "x")).await;
        assert_eq!(
            (s, b["error"].as_str()),
            (StatusCode::UNAUTHORIZED, Some("unauthorized")),
            "{b}"
        );
    }
    assert_eq!(d.acme.events().await, 2);

    // Malformed and reserved slugs name no tenant.
    for slug in [
        "ACME",
        "a",
        "default",
        "admin",
        "pgacme",
        "ac-me",
        "x%2Fy",
        "acmeacmeacmeacmeacmeacme",
    ] {
        let (s, body) = d.get(&format!("/t/{slug}/v1/issues"), Some(ADMIN)).await;
        assert_unknown(&format!("slug {slug}"), s, &body, &[]);
    }

    // The admin token writes anywhere.
    let (s, b) = d
        .post("/t/beta/v1/events", Some(ADMIN), &issue("beta/w#9", "by admin"))
        .await;
    assert_eq!(s, StatusCode::CREATED, "{b}");
    assert_eq!(events_in(&d.beta, "beta/w#9").await, 1);

    // Metrics: labelled by tenant, unknown slugs as `unknown`, never by their own name.
    let m = get_text(&d.client, &d.ingest.url("/metrics")).await;
    assert!(
        m.lines()
            .any(|l| l.starts_with("rig_ingest_requests_total") && l.contains("tenant=\"acme\"")),
        "{m}"
    );
    assert!(m.lines().any(|l| l.starts_with("rig_ingest_requests_total")
        && l.contains("route=\"/v1/issues\"")
        && l.contains("tenant=\"unknown\"")));
    assert!(
        !m.contains("nosuch") && !m.contains("pgacme"),
        "raw slugs in the metrics"
    );
    assert!(
        m.lines()
            .any(|l| l.starts_with("rig_ingest_events_appended_total") && l.contains("tenant=\"beta\"")),
        "{m}"
    );
}

#[tokio::test]
async fn tenants_disabled_added_and_enabled_at_run_time() {
    let d = Deployment::start(true).await;
    let acme = Some(d.acme_token.as_str());
    let (s, _) = d.get("/t/acme/v1/issues", acme).await;
    assert_eq!(s, StatusCode::OK);

    rig_tenants::set_enabled(&d.control.pool, "acme", false).await.unwrap();
    wait_for("acme refused once disabled", Duration::from_secs(10), || async {
        let (s, body) = d.get("/t/acme/v1/issues", acme).await;
        (s == StatusCode::NOT_FOUND).then_some(body)
    })
    .await;
    let (s, b) = d.post("/t/acme/v1/events", Some(ADMIN), &issue("acme/w#1", "x")).await;
    assert_unknown("append to a disabled tenant", s, &b.to_string(), &[]);
    assert_eq!(d.acme.events().await, 0);

    rig_tenants::set_enabled(&d.control.pool, "acme", true).await.unwrap();
    wait_for("acme served again", Duration::from_secs(10), || async {
        let (s, _) = d.get("/t/acme/v1/issues", acme).await;
        (s == StatusCode::OK).then_some(())
    })
    .await;

    // A tenant added while ingest runs is served without a restart.
    let gamma = d.control.add_tenant("gamma").await;
    let token = rig_tenants::new_token(&d.control.pool, "gamma").await.unwrap();
    let token = Some(token.expose_secret());
    wait_for("gamma served", Duration::from_secs(10), || async {
        let (s, _) = d.post("/t/gamma/v1/events", token, &issue("gamma/w#1", "new")).await;
        (s == StatusCode::CREATED).then_some(())
    })
    .await;
    assert_eq!(gamma.events().await, 1);
    assert_eq!(
        d.control.events().await + d.acme.events().await + d.beta.events().await,
        0
    );
}

#[tokio::test]
async fn a_tenant_append_wakes_the_workers_on_the_control_database() {
    let d = Deployment::start(true).await;
    let mut listener = sqlx::postgres::PgListener::connect_with(&d.control.pool).await.unwrap();
    listener.listen(rig_tenants::TENANT_EVENTS_CHANNEL).await.unwrap();
    let (s, b) = d
        .post("/t/acme/v1/events", Some(&d.acme_token), &issue("acme/w#1", "x"))
        .await;
    assert_eq!(s, StatusCode::CREATED, "{b}");
    let n = tokio::time::timeout(Duration::from_secs(10), listener.recv())
        .await
        .expect("a notification within 10 s")
        .unwrap();
    assert_eq!(n.payload(), "acme");
}

#[tokio::test]
async fn admin_lists_every_tenant() {
    let d = Deployment::start(true).await;
    for i in 0..2 {
        let (s, _) = d
            .post(
                "/t/acme/v1/events",
                Some(&d.acme_token),
                &issue(&format!("acme/w#{}", i + 1), "x"),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED);
    }
    rig_tenants::set_enabled(&d.control.pool, "beta", false).await.unwrap();
    // A tenant whose database cannot be reached is listed, with the reason.
    let lost = rig_tenants::Tenant {
        slug: "lost".into(),
        database_name: format!("{}_nowhere", d.control.name),
        server: None,
        enabled: true,
    };
    rig_tenants::register(&d.control.pool, &lost).await.unwrap();

    let (s, b) = d.get_json("/v1/admin/tenants", None).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "{b}");
    let (s, body) = d.get("/v1/admin/tenants", Some(&d.acme_token)).await;
    assert_unknown("a tenant token on the admin list", s, &body, &["beta"]);
    let (s, b) = d.get_json("/t/acme/v1/admin/tenants", Some(ADMIN)).await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{b}");

    let (s, b) = d.get_json("/v1/admin/tenants", Some(ADMIN)).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let tenants = b["tenants"].as_array().unwrap();
    let slugs: Vec<&str> = tenants.iter().map(|t| t["tenant"].as_str().unwrap()).collect();
    assert_eq!(slugs, ["default", "acme", "beta", "lost"], "{b}");
    let consumers: Vec<&str> = rig_projections::CONSUMERS.iter().map(|c| c.name).collect();
    for t in &tenants[..3] {
        assert!(t.get("error").is_none(), "{t}");
        let lags: Vec<(&str, i64)> = t["consumers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| (c["consumer"].as_str().unwrap(), c["lag"].as_i64().unwrap()))
            .collect();
        let events = t["events"].as_i64().unwrap();
        assert_eq!(
            lags.iter().map(|l| l.0).collect::<Vec<_>>(),
            consumers,
            "every consumer, in order: {t}"
        );
        assert!(
            lags.iter().all(|l| l.1 == events),
            "no checkpoint yet: lag = events: {t}"
        );
    }
    assert_eq!(tenants[0]["database"], json!(d.control.name));
    assert_eq!(tenants[0]["events"], 0);
    assert_eq!(tenants[0]["last_event_at"], Value::Null);
    assert_eq!(tenants[1]["database"], json!(d.acme.name));
    assert_eq!(
        (tenants[1]["enabled"].as_bool(), tenants[1]["events"].as_i64()),
        (Some(true), Some(2))
    );
    let last = tenants[1]["last_event_at"].as_str().unwrap();
    assert!(chrono::DateTime::parse_from_rfc3339(last).is_ok(), "{last}");
    assert_eq!(tenants[2]["enabled"], false);
    assert_eq!(tenants[2]["events"], 0);
    assert!(tenants[3]["error"].as_str().is_some(), "{}", tenants[3]);
}

#[tokio::test]
async fn open_mode_keeps_default_open_and_tenants_closed() {
    let d = Deployment::start(false).await;
    // Default as before: no token needed.
    let (s, b) = d.post("/v1/events", None, &issue("default/w#1", "x")).await;
    assert_eq!(s, StatusCode::CREATED, "{b}");
    let (s, _) = d.get("/v1/issues", None).await;
    assert_eq!(s, StatusCode::OK);
    let (s, b) = d.get_json("/v1/admin/tenants", None).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(b["tenants"].as_array().map(Vec::len), Some(3), "{b}");
    // A tenant still takes its token.
    let (s, _) = d.get("/t/acme/v1/issues", None).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    let (s, b) = d
        .post("/t/acme/v1/events", Some(&d.acme_token), &issue("acme/w#1", "x"))
        .await;
    assert_eq!(s, StatusCode::CREATED, "{b}");
    let (s, body) = d.get("/t/acme/v1/issues", Some(&d.beta_token)).await;
    assert_unknown("beta's token on acme", s, &body, &["acme"]);
}

fn fixture(name: &str) -> Value {
    let path = format!("{}/fixtures/github/{name}.json", env!("CARGO_MANIFEST_DIR"));
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

fn sign(secret: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// An `issues.labeled` delivery for `owner/name`, with `label`.
fn labeled(owner: &str, name: &str, label: &str) -> Value {
    let mut p = fixture("issues.labeled");
    p["label"]["name"] = json!(label);
    p["repository"]["full_name"] = json!(format!("{owner}/{name}"));
    p["repository"]["name"] = json!(name);
    p["repository"]["owner"]["login"] = json!(owner);
    p
}

async fn deliver(d: &Deployment, path: &str, secret: &str, delivery: &str, payload: &Value) -> (StatusCode, Value) {
    let body = serde_json::to_vec(payload).unwrap();
    let r = d
        .client
        .post(d.ingest.url(path))
        .header("content-type", "application/json")
        .header("X-GitHub-Event", "issues")
        .header("X-GitHub-Delivery", delivery)
        .header("X-Hub-Signature-256", sign(secret, &body))
        .body(body)
        .send()
        .await
        .unwrap();
    let status = r.status();
    (status, r.json().await.unwrap_or(Value::Null))
}

async fn deliveries(db: &TestDb) -> Vec<String> {
    sqlx::query_scalar("SELECT delivery_id FROM github_deliveries ORDER BY delivery_id")
        .fetch_all(&db.pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn github_deliveries_go_where_their_repository_is_routed() {
    let d = Deployment::start(true).await;
    let c = &d.control.pool;
    // acme by repository, beta by owner, with a secret and an approve label of its own.
    rig_tenants::add_route(c, "acme", rig_tenants::RouteKind::Repo, "Codertocat/Hello-World")
        .await
        .unwrap();
    rig_tenants::add_route(c, "beta", rig_tenants::RouteKind::Owner, "BetaOrg")
        .await
        .unwrap();
    rig_tenants::settings::set(c, "beta", "github.webhook_secret", Some("beta-secret"))
        .await
        .unwrap();
    rig_tenants::settings::set(c, "beta", "github.approve_label", Some("beta-go"))
        .await
        .unwrap();
    let hook = "/v1/github/webhook";
    // The catalog change reaches ingest by its notification (or within 5 s).
    let probe = labeled("BetaOrg", "probe", "not-an-approve-label");
    wait_for("beta's secret in use", Duration::from_secs(10), || async {
        let (s, _) = deliver(&d, hook, "beta-secret", "probe", &probe).await;
        s.is_success().then_some(())
    })
    .await;

    let (s, b) = deliver(
        &d,
        hook,
        SECRET,
        "d-acme",
        &labeled("Codertocat", "Hello-World", "agent-ready"),
    )
    .await;
    assert_eq!(
        (s, b["status"].as_str()),
        (StatusCode::ACCEPTED, Some("appended")),
        "{b}"
    );
    let (s, b) = deliver(
        &d,
        hook,
        "beta-secret",
        "d-beta",
        &labeled("BetaOrg", "tools", "beta-go"),
    )
    .await;
    assert_eq!(
        (s, b["status"].as_str()),
        (StatusCode::ACCEPTED, Some("appended")),
        "{b}"
    );
    // beta's own secret and label: the deployment's are not beta's.
    let (s, b) = deliver(
        &d,
        hook,
        SECRET,
        "d-beta-forged",
        &labeled("BetaOrg", "tools", "beta-go"),
    )
    .await;
    assert_eq!(
        (s, b["error"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("bad_signature")),
        "{b}"
    );
    let (s, b) = deliver(
        &d,
        "/api/webhook/github",
        SECRET,
        "d-default",
        &labeled("Nobody", "else", "agent-ready"),
    )
    .await;
    assert_eq!(
        (s, b["status"].as_str()),
        (StatusCode::ACCEPTED, Some("appended")),
        "{b}"
    );
    // On /t/{slug}/… the delivery goes to that tenant whatever its repository.
    let (s, b) = deliver(
        &d,
        "/t/acme/v1/github/webhook",
        SECRET,
        "d-direct",
        &labeled("Nobody", "direct", "agent-ready"),
    )
    .await;
    assert_eq!(
        (s, b["status"].as_str()),
        (StatusCode::ACCEPTED, Some("appended")),
        "{b}"
    );

    assert_eq!(events_in(&d.acme, "codertocat/hello-world#1").await, 1);
    assert_eq!(events_in(&d.acme, "nobody/direct#1").await, 1);
    assert_eq!(d.acme.events().await, 2);
    assert_eq!(events_in(&d.beta, "betaorg/tools#1").await, 1);
    assert_eq!(d.beta.events().await, 1);
    assert_eq!(events_in(&d.control, "nobody/else#1").await, 1);
    assert_eq!(d.control.events().await, 1);
    // Each delivery's bookkeeping is in its tenant's database.
    assert_eq!(deliveries(&d.acme).await, ["d-acme", "d-direct"]);
    assert_eq!(deliveries(&d.beta).await, ["d-beta", "probe"]);
    assert_eq!(deliveries(&d.control).await, ["d-default"]);

    // A disabled tenant's deliveries are refused and stored nowhere.
    rig_tenants::set_enabled(c, "beta", false).await.unwrap();
    let p = labeled("BetaOrg", "tools2", "beta-go");
    wait_for("beta disabled", Duration::from_secs(10), || async {
        let (s, _) = d.get("/t/beta/v1/issues", Some(ADMIN)).await;
        (s == StatusCode::NOT_FOUND).then_some(())
    })
    .await;
    let (s, b) = deliver(&d, hook, "beta-secret", "d-beta-off", &p).await;
    assert_eq!(
        (s, b["error"].as_str()),
        (StatusCode::NOT_FOUND, Some("unknown_tenant")),
        "{b}"
    );
    let (s, b) = deliver(&d, "/t/beta/v1/github/webhook", "beta-secret", "d-beta-off2", &p).await;
    assert_eq!(
        (s, b["error"].as_str()),
        (StatusCode::NOT_FOUND, Some("unknown_tenant")),
        "{b}"
    );
    assert_eq!(d.beta.events().await, 1);
    assert_eq!(d.control.events().await, 1);
    assert_eq!(d.acme.events().await, 2);
    for db in [&d.control, &d.acme, &d.beta] {
        assert!(!deliveries(db).await.iter().any(|x| x.starts_with("d-beta-off")));
    }
}

/// `Set-Cookie` of a sign-in answer, and the `Cookie` a browser would send back.
fn cookie_of(r: &reqwest::Response) -> (String, String) {
    let set = r
        .headers()
        .get("set-cookie")
        .expect("a Set-Cookie")
        .to_str()
        .unwrap()
        .to_owned();
    let pair = set.split(';').next().unwrap().to_owned();
    (set, pair)
}

#[tokio::test]
async fn a_browser_signs_in_to_a_tenants_dashboard_once() {
    let d = Deployment::start(true).await;
    let (s, b) = d
        .post(
            "/t/acme/v1/events",
            Some(&d.acme_token),
            &issue("acme/w#1", "acme title"),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{b}");
    let (s, b) = d
        .post(
            "/t/beta/v1/events",
            Some(&d.beta_token),
            &issue("beta/w#1", "beta title"),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{b}");
    let no_redirects = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();

    // Without a token the page is the sign-in form, which posts the token (never in a URL).
    let (s, html) = d.get("/t/acme/dashboard", None).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "{html}");
    assert!(
        html.contains("<form method=\"post\" action=\"/t/acme/dashboard\""),
        "{html}"
    );
    assert!(html.contains("type=\"password\" name=\"token\""), "{html}");

    let sign_in = |path: &str, token: &str| {
        no_redirects
            .post(d.ingest.url(path))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(format!(
                "token={}",
                percent_encoding::utf8_percent_encode(token, percent_encoding::NON_ALPHANUMERIC)
            ))
            .send()
    };
    // Another tenant's token does not open it, and no cookie is set.
    let r = sign_in("/t/acme/dashboard", &d.beta_token).await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert!(r.headers().get("set-cookie").is_none());
    let html = r.text().await.unwrap();
    assert!(
        html.contains("does not open this dashboard") && !html.contains("beta"),
        "{html}"
    );

    let r = sign_in("/t/acme/dashboard", &d.acme_token).await.unwrap();
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    let location = r.headers()["location"].to_str().unwrap().to_owned();
    assert_eq!(location, "/t/acme/dashboard");
    let (set, cookie) = cookie_of(&r);
    assert!(set.contains("HttpOnly") && set.contains("SameSite=Strict"), "{set}");

    // The cookie opens the tenant's reads: its dashboard (links kept under /t/acme), its API reads.
    let get = |path: &str, cookie: &str| {
        no_redirects
            .get(d.ingest.url(path))
            .header("cookie", cookie.to_owned())
            .send()
    };
    let r = get("/t/acme/dashboard", &cookie).await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let html = r.text().await.unwrap();
    assert!(html.contains("acme/w#1") && !html.contains("beta"), "{html}");
    assert!(html.contains("href=\"/t/acme/dashboard?refresh=0\""), "{html}");
    assert!(!html.contains("Tenants: "), "a tenant's user gets no picker");
    let r = get("/t/acme/v1/issues", &cookie).await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    // Not another tenant's, and never a write.
    let r = get("/t/beta/dashboard", &cookie).await.unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let r = no_redirects
        .post(d.ingest.url("/t/acme/v1/events"))
        .header("cookie", cookie.clone())
        .json(&issue("acme/w#2", "by cookie"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(d.acme.events().await, 1);

    // Signing out forgets the token.
    let r = no_redirects
        .post(d.ingest.url("/t/acme/dashboard"))
        .header("content-type", "application/x-www-form-urlencoded")
        .header("cookie", cookie.clone())
        .body("logout=1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    let (set, cleared) = cookie_of(&r);
    assert!(set.contains("Max-Age=0"), "{set}");
    let r = get("/t/acme/dashboard", &cleared).await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);

    // An admin gets a picker of every tenant's dashboard.
    let r = sign_in("/t/acme/dashboard", ADMIN).await.unwrap();
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    let (_, admin_cookie) = cookie_of(&r);
    let html = get("/t/beta/dashboard", &admin_cookie)
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(html.contains("beta/w#1"), "{html}");
    for link in ["href=\"/dashboard\"", "href=\"/t/acme/dashboard\""] {
        assert!(html.contains(link), "{link}: {html}");
    }
}

/// The status line's code of an answer read from a raw connection, within 5 s.
async fn status_of_raw(ingest: &TestIngest, head: &str) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = ingest.base.trim_start_matches("http://").to_owned();
    let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
    s.write_all(head.replace("{host}", &addr).as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    let read = async {
        let mut chunk = [0u8; 1024];
        while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = s.read(&mut chunk).await.unwrap();
            assert!(n > 0, "the connection closed without an answer");
            buf.extend_from_slice(&chunk[..n]);
        }
    };
    tokio::time::timeout(Duration::from_secs(5), read)
        .await
        .expect("an answer before the body was sent");
    let text = String::from_utf8_lossy(&buf).into_owned();
    text.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[tokio::test]
async fn a_tenants_token_is_checked_before_the_body_is_read() {
    let d = Deployment::start(true).await;
    // Headers announcing a body that never comes: only an answer given before reading it arrives.
    for (auth, expected) in [
        (String::new(), 401),
        (format!("Authorization: Bearer {}\r\n", d.beta_token), 404),
    ] {
        for path in ["/t/acme/v1/events", "/t/acme/api/events"] {
            let head = format!(
                "POST {path} HTTP/1.1\r\nHost: {{host}}\r\n{auth}Content-Type: application/json\r\nContent-Length: 500000\r\n\r\n"
            );
            assert_eq!(status_of_raw(&d.ingest, &head).await, expected, "{path} {auth:?}");
        }
    }
    assert_eq!(d.acme.events().await, 0);
}

/// A quiet tenant holds no connection: its writer, its flusher and its pools give theirs back
/// (`IDLE_TIMEOUT` in ingest, 10 s, once for the writer and once for the pool, whose reaper
/// runs every 10 s: about 30 s in all).
#[tokio::test]
async fn a_quiet_tenant_holds_no_connection() {
    let d = Deployment::start(true).await;
    let (s, b) = d
        .post("/t/acme/v1/events", Some(&d.acme_token), &issue("acme/w#1", "x"))
        .await;
    assert_eq!(s, StatusCode::CREATED, "{b}");
    let (s, _) = d.get("/t/acme/v1/issues", Some(&d.acme_token)).await;
    assert_eq!(s, StatusCode::OK);
    let held = || async {
        sqlx::query_scalar::<_, i64>(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND usename = 'rig_ingest'",
        )
        .bind(&d.acme.name)
        .fetch_one(&d.control.pool)
        .await
        .unwrap()
    };
    assert!(
        held().await > 0,
        "the append and the read used connections to acme's database"
    );
    wait_for("acme's connections closed", Duration::from_secs(60), || async {
        (held().await == 0).then_some(())
    })
    .await;
}
