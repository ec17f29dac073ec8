//! The scratch database: how the bench connects to it, what it says of the server, dropping it.

use serde_json::{json, Value};
use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, Connection, PgConnection, PgPool};

pub(super) fn connect_options(url: &str) -> anyhow::Result<PgConnectOptions> {
    // No statement logging: the bulk statements here are slow on purpose, and would fill the log
    // with warnings that mean nothing.
    Ok(rig_log::db::connect_options(url)?
        .disable_statement_logging()
        .application_name("rigctl-bench"))
}

pub(super) async fn machine_info(pool: &PgPool) -> anyhow::Result<Value> {
    let show = |what: &'static str| async move {
        sqlx::query_scalar::<_, String>(&format!("SHOW {what}"))
            .fetch_one(pool)
            .await
            .unwrap_or_default()
    };
    Ok(json!({
        "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        "postgres": show("server_version").await,
        "fsync": show("fsync").await,
        "synchronous_commit": show("synchronous_commit").await,
        "shared_buffers": show("shared_buffers").await,
    }))
}

pub(super) async fn drop_database(url: &str, name: &str) -> anyhow::Result<()> {
    let admin = rig_ops::pg::with_database(url, "postgres")?;
    let mut c = PgConnection::connect_with(&connect_options(&admin)?).await?;
    // FORCE: a worker that has not quite exited must not keep the database alive.
    sqlx::query(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
        .execute(&mut c)
        .await?;
    let _ = c.close().await;
    Ok(())
}
