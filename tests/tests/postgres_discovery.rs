//! Finding Postgres: the last resort, a private throwaway cluster made with the
//! `initdb`/`pg_ctl` found on this machine, really starts, serves, and is removed on drop.
#![allow(clippy::unwrap_used)]

use sqlx::Connection;

#[tokio::test]
async fn a_private_cluster_starts_serves_and_is_removed() {
    let cluster = rig_ops::pg::PrivateCluster::start()
        .await
        .expect("initdb/pg_ctl are installed on this machine");
    let dir = cluster.dir.clone();
    let url = format!("postgres://postgres@127.0.0.1:{}/postgres", cluster.port);
    rig_ops::pg::ensure_database(&rig_ops::pg::with_database(&url, "rig").unwrap())
        .await
        .unwrap();
    let mut c = sqlx::PgConnection::connect(&rig_ops::pg::with_database(&url, "rig").unwrap())
        .await
        .unwrap();
    let one: i32 = sqlx::query_scalar("SELECT 1").fetch_one(&mut c).await.unwrap();
    assert_eq!(one, 1);
    c.close().await.unwrap();
    drop(cluster);
    assert!(!dir.exists(), "the cluster's directory is removed");
    assert!(
        sqlx::PgConnection::connect(&url).await.is_err(),
        "the cluster is stopped"
    );
}

#[tokio::test]
async fn find_or_start_prefers_a_configured_server_that_answers() {
    let configured = std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/rig_discovery_test".into());
    let pg = rig_ops::pg::find_or_start(Some(&configured), "rig").await.unwrap();
    assert!(pg.private.is_none(), "a reachable server is used, nothing is started");
    assert_eq!(pg.url, configured);
}
