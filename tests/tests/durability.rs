//! An append is answered only once its commit is on disk.
//!
//! Ingest commits with `synchronous_commit = off` (so the append lock is released before the
//! fsync) and answers only after a separate flush (`flusher_loop` in
//! shared/log/src/writer/flusher.rs).
//! The whole-system fault test crashes Postgres once at a random moment, which catches a missing
//! flush only by luck: the notifier's durable commits flush the WAL now and then. Here
//! nothing else commits and the WAL writer is slowed to 10 s, so a commit that was answered
//! before it was flushed would still sit in Postgres' WAL buffers when the test crashes the
//! server right after the answer, and would be lost.
#![allow(clippy::unwrap_used)]

use rig_ops::pg::PrivateCluster;
use rig_tests::{free_port, wait_for, wait_http_ok, Proc};
use serde_json::json;
use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;
use std::sync::Arc;
use std::time::Duration;
use uuid::Uuid;

async fn connect(url: &str) -> PgPool {
    wait_for(
        "the crashed Postgres to take connections",
        Duration::from_secs(60),
        || async { PgPoolOptions::new().max_connections(2).connect(url).await.ok() },
    )
    .await
}

#[tokio::test]
async fn an_answered_append_survives_a_database_crash_right_after_the_answer() {
    let cluster = Arc::new(PrivateCluster::start().await.expect("start a private Postgres"));
    let url = format!("postgres://postgres@127.0.0.1:{}/rig_durability", cluster.port);
    rig_ops::pg::ensure_database(&url).await.unwrap();
    let pool = connect(&url).await;
    rig_log::db::migrate(&pool).await.unwrap();
    // Asynchronous commits reach the disk when the WAL writer next runs, or when a synchronous
    // commit flushes them: make the first as late as Postgres allows.
    sqlx::query("ALTER SYSTEM SET wal_writer_delay = '10s'")
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query("SELECT pg_reload_conf()").execute(&pool).await.unwrap();
    pool.close().await;

    let port = free_port();
    let ingest = Proc::spawn(
        "rig-ingest",
        &[],
        &[
            ("DATABASE_URL", url.clone()),
            ("RIG_INGEST__LISTEN", format!("127.0.0.1:{port}")),
        ],
    );
    let base = format!("http://127.0.0.1:{port}");
    wait_http_ok(&format!("{base}/readyz"), Duration::from_secs(30)).await;
    let http = reqwest::Client::new();

    let mut answered: Vec<Uuid> = Vec::new();
    for round in 0..3 {
        // A few appends, each answered before the next is sent; the crash comes right after
        // the last answer.
        for k in 0..10 {
            let id = Uuid::new_v4();
            let body = json!({"stream_id": format!("acme/durable#{}", round * 10 + k + 1),
                              "events": [{"id": id, "type": "ISSUE_APPROVED"}]});
            // Ingest's connections break at each crash: retry (the event id makes it idempotent)
            // until answered.
            wait_for("ingest to take the append", Duration::from_secs(60), || async {
                let r = http.post(format!("{base}/v1/events")).json(&body).send().await.ok()?;
                r.status().is_success().then_some(())
            })
            .await;
            answered.push(id);
        }
        let c = cluster.clone();
        tokio::task::spawn_blocking(move || c.crash_and_restart())
            .await
            .unwrap()
            .expect("crash and restart Postgres");

        let pool = connect(&url).await;
        let stored: Vec<Uuid> = sqlx::query_scalar("SELECT event_id FROM events WHERE event_id = ANY ($1)")
            .bind(&answered)
            .fetch_all(&pool)
            .await
            .unwrap();
        let lost: Vec<&Uuid> = answered.iter().filter(|id| !stored.contains(id)).collect();
        let in_log: i64 = sqlx::query_scalar("SELECT count(*) FROM events")
            .fetch_one(&pool)
            .await
            .unwrap();
        assert!(
            lost.is_empty(),
            "round {round}: {} of {} answered appends were lost in the crash ({in_log} events in the log): \
             {lost:?}\ningest's log:\n{}",
            lost.len(),
            answered.len(),
            ingest.log_text()
        );
        pool.close().await;
    }
}
