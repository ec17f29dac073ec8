//! Database access shared by every binary: the pool, the embedded migrations, the error
//! classification the retry logic relies on, and the advisory-lock keys.

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, PgPool};
use std::str::FromStr;
use std::time::Duration;

pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../../migrations");

/// Channel of the one NOTIFY each committed append transaction sends (payload: last position).
pub const EVENTS_CHANNEL: &str = "rig_events";

/// Advisory lock taken as the first statement of every append transaction (see ingest's writer).
pub const APPEND_LOCK_KEY: i64 = 0x7269_675f_6576_7473; // "rig_evts"

/// Session advisory lock key of a consumer: one active instance per name.
pub fn consumer_lock_key(consumer: &str) -> i64 {
    // FNV-1a: stable across builds and processes, unlike std's hasher.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in b"rig-consumer:".iter().chain(consumer.as_bytes()) {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h as i64
}

pub fn connect_options(url: &str) -> Result<PgConnectOptions, sqlx::Error> {
    Ok(PgConnectOptions::from_str(url)?
        .log_statements(tracing::log::LevelFilter::Trace)
        .log_slow_statements(tracing::log::LevelFilter::Warn, Duration::from_secs(2))
        .application_name("rig-conductor"))
}

/// A pool that connects lazily, so a process starts (and answers `/healthz`) while Postgres is
/// still away; queries fail fast with a connection error that callers retry.
pub fn pool(url: &str, max_connections: u32) -> Result<PgPool, sqlx::Error> {
    Ok(PgPoolOptions::new()
        .max_connections(max_connections)
        .min_connections(0)
        .acquire_timeout(Duration::from_secs(5))
        .connect_lazy_with(connect_options(url)?))
}

/// Creates the database roles the processes connect as (see `roles`), then applies the
/// migrations, which grant those roles their privileges in this database.
pub async fn migrate(pool: &PgPool) -> anyhow::Result<()> {
    crate::roles::ensure(&pool.connect_options()).await?;
    accept_reworded_comments(pool).await?;
    MIGRATOR.run(pool).await?;
    Ok(())
}

/// Migrations whose comments were reworded after release: (version, SHA-384 of the text as first
/// applied). The SQL is unchanged, but the migrator compares checksums of the whole file and would
/// refuse a database that applied the earlier text. (In 0021 and 0022 the comments are inside the
/// function's body: such a database keeps the earlier comments in its copy of the function, which
/// does the same.)
const REWORDED: &[(i64, &str)] = &[
    (
        1,
        "2247f979baa1656531c2c22541caf1486b13a3d8346fea76ada396a7dc9519bc933572767e678c48fb9ce61997166df0",
    ),
    (
        21,
        "54deb5aa168bd01343c910cf2a8403c7111bb48147bb380b7d20e2210a67eec061e80bc622770275226c3376da513555",
    ),
    (
        22,
        "df875bf693620ce59abb4f265a3ecd9247e55bf8adda8efce32fb014a6074946b96b435c56e73c3d53c6c6556e332b74",
    ),
    (
        23,
        "7058319dc75d18a2e9323d2dd8b971ae2d2468ada2899af5e6bb6fa9b636c831f2905c1a00902d0d9bebc86b6940ef2b",
    ),
    (
        24,
        "d488ce63447b395e34b23315ef575ccf17ff79f7bd4448cb276119653b0a46ea2127c649212d9cc38278b151cf53f753",
    ),
    (
        25,
        "f7a68f3f7f424741f261a4ca2ecc8ccd7e7ff10a572c5e4e860644f1d967e81a29a1cdbfb0fdea232ac4155d94f795da",
    ),
];

/// Records the current checksum of a reworded migration on a database that applied its earlier
/// text, so that the migrator accepts it. Only that exact earlier checksum is replaced: a file
/// changed any other way is still refused.
async fn accept_reworded_comments(pool: &PgPool) -> anyhow::Result<()> {
    let exists: bool = sqlx::query_scalar("SELECT to_regclass('_sqlx_migrations') IS NOT NULL")
        .fetch_one(pool)
        .await?;
    if !exists {
        return Ok(());
    }
    for (version, earlier) in REWORDED {
        let Some(m) = MIGRATOR.iter().find(|m| m.version == *version) else {
            continue;
        };
        sqlx::query("UPDATE _sqlx_migrations SET checksum = $2 WHERE version = $1 AND checksum = decode($3, 'hex')")
            .bind(version)
            .bind(m.checksum.as_ref())
            .bind(earlier)
            .execute(pool)
            .await?;
    }
    Ok(())
}

/// True for errors worth retrying: the database is away, restarting, overloaded, or the
/// transaction lost a race (serialization failure, deadlock).
pub fn is_transient(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Tls(_) => true,
        sqlx::Error::Protocol(_) | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(db) => {
            let code = db.code();
            let code = code.as_deref().unwrap_or("");
            // 08: connection exception; 40001/40P01: serialization failure / deadlock;
            // 53: insufficient resources; 57P0x: admin shutdown, crash shutdown, cannot connect now;
            // 55P03 lock not available.
            code.starts_with("08")
                || code == "40001"
                || code == "40P01"
                || code.starts_with("53")
                || code.starts_with("57P")
                || code == "55P03"
        }
        _ => false,
    }
}

/// Refuses to run against a database whose schema is older than this build (the operator
/// forgot `rigctl migrate`). An unreachable database is not an error here: the process starts,
/// reports not-ready and retries, so a worker can start before Postgres does.
pub async fn check_schema(pool: &PgPool) -> anyhow::Result<()> {
    let needed = MIGRATOR.iter().map(|m| m.version).max().unwrap_or(0);
    let applied = sqlx::query_scalar::<_, Option<i64>>("SELECT max(version) FROM _sqlx_migrations WHERE success")
        .fetch_one(pool)
        .await;
    match applied {
        Ok(Some(v)) if v >= needed => Ok(()),
        Ok(v) => anyhow::bail!(
            "the database schema is at migration {} but this build needs {needed}: run `rigctl migrate` first",
            v.unwrap_or(0)
        ),
        Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("42P01") => {
            anyhow::bail!("the database has no rig-conductor schema yet: run `rigctl migrate` first")
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot check the database schema yet; starting anyway and retrying");
            Ok(())
        }
    }
}

/// Pools (a process's pools for many tenants' databases) that share one budget of idle
/// connections: a connection given back while their pools together hold more than `keep` is
/// closed instead of kept, so however many databases are busy in turn, idle connections stay
/// bounded, and each pool's own `idle_timeout` closes the rest once it is quiet.
#[derive(Clone)]
pub struct IdleBudget {
    pools: std::sync::Arc<std::sync::Mutex<std::collections::HashMap<String, Vec<PgPool>>>>,
    keep: u32,
}

impl IdleBudget {
    pub fn new(keep: u32) -> IdleBudget {
        IdleBudget {
            pools: std::sync::Arc::default(),
            keep,
        }
    }

    /// Connections open in the budget's pools together.
    pub fn open(&self) -> u32 {
        self.pools
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .flatten()
            .map(PgPool::size)
            .sum()
    }

    /// `options` with the budget's rule applied each time a connection is given back.
    pub fn apply(&self, options: PgPoolOptions) -> PgPoolOptions {
        let budget = self.clone();
        options.after_release(move |_, _| {
            let keep = budget.open() <= budget.keep;
            Box::pin(async move { Ok(keep) })
        })
    }

    /// Counts `pool` (made with [`IdleBudget::apply`]) under `key`.
    pub fn add(&self, key: &str, pool: PgPool) {
        self.pools
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(key.to_owned())
            .or_default()
            .push(pool);
    }

    /// Stops counting the pools of `key` (closed or about to be).
    pub fn remove(&self, key: &str) {
        self.pools.lock().unwrap_or_else(|e| e.into_inner()).remove(key);
    }
}
