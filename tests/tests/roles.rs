//! Least privilege, against the real Postgres: what each process's database role may not do
//! (append as a worker, rewrite the log or switch off its triggers as anyone, write another
//! consumer's checkpoint or tables), that `rigctl up` runs every process under its role, that
//! `rigctl migrate` sets a role's password from its process's URL without ever printing it, that a
//! worker connected with more rights than its role's says so, and
//! that a GitHub delivery whose signed body was already taken under another delivery id appends
//! nothing.
#![allow(clippy::unwrap_used)]

use hmac::{Hmac, Mac};
use reqwest::StatusCode;
use rig_tests::{procfile_workers, wait_for, wait_http_ok, RigctlUp, Role, SystemPorts, TestDb, TestIngest};
use serde_json::{json, Value};
use sha2::Sha256;
use sqlx::PgPool;
use std::process::Command;
use std::time::Duration;

/// Each worker role, its consumer name and the table it owns.
const WORKERS: [(Role, &str, &str); 4] = [
    (Role::TokenProjector, "token-projector", "token_usage"),
    (Role::CostProjector, "cost-projector", "daily_cost"),
    (Role::StaleHeartbeat, "stale-heartbeat", "stale_heartbeat_issues"),
    (Role::Notifier, "notifier", "notifier_outbox"),
];

/// A statement that changes a row (or tries to) of each table, by table.
fn write_to(table: &str) -> &'static str {
    match table {
        "token_usage" => "INSERT INTO token_usage (stream_id, agent_id, model) VALUES ('x/y#1', 'a', 'm')",
        "daily_cost" => "INSERT INTO daily_cost (day, repo, agent_id, model) VALUES ('2026-01-01', 'x/y', 'a', 'm')",
        "stale_heartbeat_issues" => {
            "INSERT INTO stale_heartbeat_issues (stream_id, agent_id, issue_number, status, version, assigned_at, \
             last_seen_at) VALUES ('x/y#1', 'a', 1, 'assigned', 1, now(), now())"
        }
        "notifier_outbox" => {
            "INSERT INTO notifier_outbox (position, event_id, channel, event_type, payload) \
             VALUES (1, gen_random_uuid(), 'discord', 'MERGED', '{}')"
        }
        "issue_state" => "UPDATE issue_state SET title = 'forged'",
        "agent_status" => "DELETE FROM agent_status",
        "github_deliveries" => "DELETE FROM github_deliveries",
        "dead_letters" => "INSERT INTO dead_letters (consumer, position) VALUES ('token-projector', 1)",
        other => panic!("no write for {other}"),
    }
}

const APPEND: &str = "INSERT INTO events (stream_id, version, event_id, event_type) \
                      VALUES ('forged/repo#1', 1, gen_random_uuid(), 'ISSUE_DONE')";

/// Runs `sql` as whoever `pool` connects as and returns the SQLSTATE of its failure; panics
/// when it succeeds.
async fn refused(pool: &PgPool, sql: &str) -> String {
    match sqlx::query(sql).execute(pool).await {
        Ok(r) => panic!("{sql:?} succeeded ({} rows)", r.rows_affected()),
        Err(e) => e
            .as_database_error()
            .and_then(|d| d.code())
            .map(|c| c.into_owned())
            .unwrap_or_else(|| panic!("{sql:?}: not a database error: {e}")),
    }
}

/// One event in the log, and a checkpoint row for every consumer, written as the owner.
async fn seed(db: &TestDb) {
    sqlx::query(APPEND.replace("forged", "acme").as_str())
        .execute(&db.pool)
        .await
        .unwrap();
    for (_, consumer, _) in WORKERS {
        sqlx::query("INSERT INTO checkpoints (consumer, position) VALUES ($1, 0)")
            .bind(consumer)
            .execute(&db.pool)
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn a_worker_role_reads_the_log_and_writes_only_its_own_checkpoint_and_tables() {
    let db = TestDb::new().await;
    seed(&db).await;
    for (role, consumer, own_table) in WORKERS {
        let who = role.name();
        let pool = db.pool_as(role).await;
        let user: String = sqlx::query_scalar("SELECT current_user::text")
            .fetch_one(&pool)
            .await
            .unwrap();
        assert_eq!(user, who);

        // What it needs: read the log, move its own checkpoint, write its own table.
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM events")
            .fetch_one(&pool)
            .await
            .unwrap();
        assert_eq!(n, 1, "{who} reads the log");
        let moved = sqlx::query("UPDATE checkpoints SET position = 1 WHERE consumer = $1")
            .bind(consumer)
            .execute(&pool)
            .await
            .unwrap();
        assert_eq!(moved.rows_affected(), 1, "{who} moves its own checkpoint");
        sqlx::query(write_to(own_table)).execute(&pool).await.unwrap();

        // The log: no append, no rewrite, no switching the append-only triggers off.
        assert_eq!(refused(&pool, APPEND).await, "42501", "{who} appends");
        assert_eq!(refused(&pool, "UPDATE events SET data = '{}'").await, "42501", "{who}");
        assert_eq!(refused(&pool, "DELETE FROM events").await, "42501", "{who}");
        assert_eq!(refused(&pool, "TRUNCATE events").await, "42501", "{who}");
        for sql in [
            "ALTER TABLE events DISABLE TRIGGER events_no_update",
            "ALTER TABLE events DISABLE TRIGGER ALL",
            "DROP TRIGGER events_no_delete ON events",
        ] {
            // 42501: must be owner of table events.
            assert_eq!(refused(&pool, sql).await, "42501", "{who}: {sql}");
        }

        // Other consumers' checkpoints: invisible, so an UPDATE changes nothing and a new row
        // under another name is refused.
        for (_, other, other_table) in WORKERS.iter().filter(|(r, _, _)| *r != role) {
            let r = sqlx::query("UPDATE checkpoints SET position = 999 WHERE consumer = $1")
                .bind(other)
                .execute(&pool)
                .await
                .unwrap();
            assert_eq!(r.rows_affected(), 0, "{who} moved {other}'s checkpoint");
            let r = sqlx::query("DELETE FROM checkpoints WHERE consumer = $1")
                .bind(other)
                .execute(&pool)
                .await;
            assert!(
                r.is_err() || r.unwrap().rows_affected() == 0,
                "{who} deleted {other}'s checkpoint"
            );
            // Another worker's table.
            assert_eq!(
                refused(&pool, write_to(other_table)).await,
                "42501",
                "{who} writes {other_table}"
            );
        }
        let forged = format!("INSERT INTO checkpoints (consumer, position) VALUES ('{consumer}-2', 5)");
        assert_eq!(refused(&pool, &forged).await, "42501", "{who} adds a checkpoint row");
        // Ingest's tables and the operator's dead letters.
        for table in ["issue_state", "agent_status", "github_deliveries", "dead_letters"] {
            assert_eq!(refused(&pool, write_to(table)).await, "42501", "{who} writes {table}");
        }
        // The append transaction's first statement is ingest's alone.
        assert_eq!(
            refused(&pool, "SELECT rig_append_begin(1, '{}'::jsonb)").await,
            "42501",
            "{who} calls rig_append_begin"
        );
        pool.close().await;
    }
    // Every other consumer's checkpoint is where the owner left it.
    let moved: Vec<(String, i64)> = sqlx::query_as("SELECT consumer, position FROM checkpoints ORDER BY consumer")
        .fetch_all(&db.pool)
        .await
        .unwrap();
    assert!(moved.iter().all(|(_, p)| *p == 1), "{moved:?}");
    assert_eq!(db.events().await, 1);
}

#[tokio::test]
async fn the_ingest_role_appends_but_cannot_rewrite_the_log_or_switch_its_triggers_off() {
    let db = TestDb::new().await;
    seed(&db).await;
    let pool = db.pool_as(Role::Ingest).await;
    sqlx::query(APPEND).execute(&pool).await.unwrap();
    assert_eq!(db.events().await, 2);
    for sql in [
        "UPDATE events SET data = '{}'",
        "DELETE FROM events",
        "TRUNCATE events",
        "ALTER TABLE events DISABLE TRIGGER events_no_update",
        "ALTER TABLE events DISABLE TRIGGER ALL",
        "DROP TRIGGER events_no_delete ON events",
        "ALTER TABLE events OWNER TO rig_ingest",
        // The projectors' tables and the consumers' checkpoints are read, not written.
        "UPDATE checkpoints SET position = 0",
        "DELETE FROM token_usage",
        "INSERT INTO daily_cost (day, repo, agent_id, model) VALUES ('2026-01-01', 'x/y', 'a', 'm')",
        "DELETE FROM stale_heartbeat_issues",
        "DELETE FROM notifier_outbox",
        "DELETE FROM dead_letters",
    ] {
        assert_eq!(refused(&pool, sql).await, "42501", "rig_ingest: {sql}");
    }
    // It reads every consumer's checkpoint (the dashboard shows them all).
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM checkpoints")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(n, 4);
    assert_eq!(db.events().await, 2);
}

/// The users connected to `db` right now.
async fn connected_users(db: &TestDb) -> Vec<String> {
    sqlx::query_scalar(
        "SELECT DISTINCT usename::text FROM pg_stat_activity WHERE datname = current_database() ORDER BY 1",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap()
}

#[tokio::test]
async fn rigctl_up_runs_every_process_under_its_own_role() {
    let db = TestDb::new().await;
    procfile_workers();
    let ports = SystemPorts::new();
    let mut env = ports.env(&db);
    env.push(("RIG_CONSUMER__POLL_INTERVAL", "200ms".into()));
    let up = RigctlUp::spawn(&["up"], &env, &db.url);
    let api = format!("http://127.0.0.1:{}", ports.ingest);
    wait_http_ok(&format!("{api}/readyz"), Duration::from_secs(60)).await;

    // Work flows through every role: an append by ingest, projected by the token-projector.
    let r = reqwest::Client::new()
        .post(format!("{api}/v1/events"))
        .json(
            &json!({"stream_id": "acme/widgets#1", "events": [{"type": "TOKEN_USAGE",
            "data": {"agent_id": "dev-a", "model": "m", "input_tokens": 10, "output_tokens": 5}}]}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED, "{}", r.text().await.unwrap());
    wait_for("token_usage to be projected", Duration::from_secs(30), || async {
        (db.count("SELECT coalesce(sum(input_tokens), 0)::int8 FROM token_usage")
            .await
            == 10)
            .then_some(())
    })
    .await;

    let roles: Vec<String> = rig_log::roles::ROLES.iter().map(|r| r.name().to_owned()).collect();
    let users = wait_for(
        "every process to connect as its role",
        Duration::from_secs(30),
        || async {
            let users = connected_users(&db).await;
            roles.iter().all(|r| users.contains(r)).then_some(users)
        },
    )
    .await;
    // Nobody else but the owner (rigctl up itself, and this test).
    let owner: String = sqlx::query_scalar("SELECT current_user::text")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    for u in &users {
        assert!(roles.contains(u) || *u == owner, "unexpected user {u} among {users:?}");
    }
    drop(up);
}

#[tokio::test]
async fn a_worker_connected_as_the_owner_says_so_at_start() {
    let db = TestDb::new().await;
    let port = rig_tests::free_port();
    // Its own key, set to the owner's URL, wins over the DATABASE_URL the spawn turns into its role's.
    let p = rig_tests::Proc::spawn(
        "rig-token-projector",
        &[],
        &[
            ("DATABASE_URL", db.url.clone()),
            ("RIG_TOKEN_PROJECTOR__DATABASE_URL", db.url.clone()),
            ("RIG_TOKEN_PROJECTOR__METRICS_LISTEN", format!("127.0.0.1:{port}")),
        ],
    );
    let line = wait_for("the owner warning", Duration::from_secs(30), || async {
        p.log_text()
            .lines()
            .find(|l| l.contains("least privilege wants rig_token_projector"))
            .map(str::to_owned)
    })
    .await;
    assert!(line.contains("token_projector.database_url"), "{line}");
}

#[tokio::test]
async fn rigctl_migrate_sets_a_roles_password_from_its_process_url_and_never_prints_it() {
    let db = TestDb::new().await;
    let password = "pw-from-the-notifier-url-7f3a";
    let notifier_url = rig_log::roles::url_as(&db.url, Role::Notifier).unwrap().replacen(
        "rig_notifier@",
        &format!("rig_notifier:{password}@"),
        1,
    );
    let out = Command::new(rig_tests::bin("rigctl"))
        .arg("migrate")
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("RIG_CONFIG", "/dev/null")
        .env("RUST_LOG", "trace")
        .env("DATABASE_URL", &db.url)
        .env("RIG_NOTIFIER__DATABASE_URL", &notifier_url)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // Roles are the server's: put the password back however this ends.
    let verifier: Option<String> =
        sqlx::query_scalar("SELECT rolpassword FROM pg_authid WHERE rolname = 'rig_notifier'")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    sqlx::query("ALTER ROLE rig_notifier PASSWORD NULL")
        .execute(&db.pool)
        .await
        .unwrap();
    assert!(out.status.success(), "{text}");
    assert!(text.contains("rig_notifier"), "{text}");
    assert!(!text.contains(password), "the password was printed:\n{text}");
    let verifier = verifier.unwrap_or_default();
    assert!(verifier.starts_with("SCRAM-SHA-256$4096:"), "{verifier}");
    assert!(!verifier.contains(password));
}

// ---------------------------------------------------------------------------------------------
// GitHub: the same signed body under another delivery id.

const SECRET: &str = "webhook-secret-for-roles";

fn sign(body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

async fn deliver(ingest: &TestIngest, event: &str, delivery: &str, body: &[u8]) -> (StatusCode, Value) {
    let r = reqwest::Client::new()
        .post(ingest.url("/v1/github/webhook"))
        .header("content-type", "application/json")
        .header("X-GitHub-Event", event)
        .header("X-GitHub-Delivery", delivery)
        .header("X-Hub-Signature-256", sign(body))
        .body(body.to_vec())
        .send()
        .await
        .unwrap();
    let status = r.status();
    (status, r.json().await.unwrap_or(Value::Null))
}

fn labeled(updated_at: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "action": "labeled",
        "label": {"name": "agent-ready"},
        "issue": {"number": 42, "title": "Add a widget", "updated_at": updated_at},
        "repository": {"full_name": "acme/widgets"},
        "sender": {"login": "octocat"}
    }))
    .unwrap()
}

#[tokio::test]
async fn a_signed_body_already_accepted_under_another_delivery_id_appends_nothing() {
    let db = TestDb::new().await;
    let ingest = TestIngest::start_with(&db, |s| {
        s.ingest.github.webhook_secret = Some(SECRET.to_owned().into());
    })
    .await;
    let body = labeled("2026-01-01T00:00:00Z");
    let (code, first) = deliver(&ingest, "issues", "delivery-1", &body).await;
    assert_eq!(
        (code, first["status"].as_str()),
        (StatusCode::ACCEPTED, Some("appended")),
        "{first}"
    );
    assert_eq!(db.events().await, 1);

    // The same bytes, replayed under fresh delivery ids (one of them claiming another event
    // type): answered like a redelivery, nothing appended.
    for (event, delivery) in [
        ("issues", "delivery-2"),
        ("issues", "delivery-3"),
        ("pull_request", "delivery-4"),
    ] {
        let (code, again) = deliver(&ingest, event, delivery, &body).await;
        assert_eq!(
            (code, again["status"].as_str()),
            (StatusCode::OK, Some("redelivery")),
            "{delivery}: {again}"
        );
        assert_eq!(again["duplicate_of"], "delivery-1", "{again}");
    }
    // Copies sent at once cannot both get through either.
    let copies: Vec<_> = (0..8)
        .map(|i| {
            let (ingest, body) = (&ingest, &body);
            async move { deliver(ingest, "issues", &format!("burst-{i}"), body).await }
        })
        .collect();
    for (code, r) in futures::future::join_all(copies).await {
        assert_eq!(code, StatusCode::OK, "{r}");
    }
    assert_eq!(db.events().await, 1, "a replayed body was appended again");

    // Another change of the same issue is another body: appended.
    let (code, other) = deliver(&ingest, "issues", "delivery-5", &labeled("2026-01-02T00:00:00Z")).await;
    assert_eq!(
        (code, other["status"].as_str()),
        (StatusCode::ACCEPTED, Some("appended")),
        "{other}"
    );
    assert_eq!(db.events().await, 2);
}

#[tokio::test]
async fn an_unlinked_body_replayed_under_another_id_is_taken_as_the_first_delivery() {
    let db = TestDb::new().await;
    let ingest = TestIngest::start_with(&db, |s| {
        s.ingest.github.webhook_secret = Some(SECRET.to_owned().into());
    })
    .await;
    // CI for PR #7 before anyone reported that PR: not linked, nothing stored.
    let body = serde_json::to_vec(&json!({
        "action": "completed",
        "check_suite": {"id": 99, "conclusion": "success", "pull_requests": [{"number": 7}]},
        "repository": {"full_name": "acme/widgets"}
    }))
    .unwrap();
    let (code, r) = deliver(&ingest, "check_suite", "ci-1", &body).await;
    assert_eq!(
        (code, r["status"].as_str()),
        (StatusCode::ACCEPTED, Some("unlinked")),
        "{r}"
    );
    assert_eq!(db.events().await, 0);

    // The PR becomes known; the same body comes again under a new id: it links now, as the
    // first delivery (its event ids), once.
    let r = reqwest::Client::new()
        .post(ingest.url("/v1/events"))
        .json(&json!({"stream_id": "acme/widgets#3", "events": [{"type": "PR_CREATED", "data": {"pr_number": 7}}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED, "{}", r.text().await.unwrap());
    let (code, r) = deliver(&ingest, "check_suite", "ci-2", &body).await;
    assert_eq!((code, r["status"].as_str()), (StatusCode::OK, Some("appended")), "{r}");
    let (id, delivery): (uuid::Uuid, String) =
        sqlx::query_as("SELECT event_id, metadata ->> 'github_delivery' FROM events WHERE event_type = 'CI_PASSED'")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(
        (id, delivery.as_str()),
        (rig_ingest::github::event_id("ci-1", 0), "ci-1")
    );
    for again in ["ci-1", "ci-3"] {
        let (code, r) = deliver(&ingest, "check_suite", again, &body).await;
        assert_eq!(
            (code, r["status"].as_str()),
            (StatusCode::OK, Some("redelivery")),
            "{again}: {r}"
        );
    }
    assert_eq!(db.events().await, 2);
}
