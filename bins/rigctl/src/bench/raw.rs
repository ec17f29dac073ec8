//! The raw-Postgres baselines: autocommit single-row INSERTs, 100-row INSERTs and a sequential
//! read, on the same database and machine as the figures they are compared with.

use super::*;
use futures::TryStreamExt;
use rig_events::EVENT_COLUMNS;
use serde_json::{json, Value};
use sqlx::postgres::PgConnectOptions;
use sqlx::{Connection, PgConnection, PgPool};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;
use tokio::task::JoinSet;
use uuid::Uuid;

pub(super) const RAW_CONNECTIONS: usize = 8;

/// The cluster's WAL flushes so far (`pg_stat_wal`, Postgres 14+): how many, and their total time
/// when `track_wal_io_timing` was on for the backends that did them.
#[derive(Clone, Copy)]
pub(super) struct WalSyncs {
    pub(super) syncs: f64,
    pub(super) sync_ms: f64,
}

impl WalSyncs {
    pub(super) async fn take(pool: &PgPool) -> Option<WalSyncs> {
        let (syncs, sync_ms): (i64, f64) = sqlx::query_as("SELECT wal_sync, wal_sync_time FROM pg_stat_wal")
            .fetch_one(pool)
            .await
            .ok()?;
        Some(WalSyncs {
            syncs: syncs as f64,
            sync_ms,
        })
    }

    /// What the WAL flushes between two snapshots say of `n` commits or requests (`per` names
    /// them). `pg_stat_wal` is cluster-wide and a backend reports to it about once a second, so
    /// this is approximate; it tells whether each commit paid for a flush of its own and what a
    /// flush costs here, i.e. whether the autocommit baseline is bound by fsync (as on a machine
    /// with slow disks) or by CPU.
    pub(super) fn between(a: Option<WalSyncs>, b: Option<WalSyncs>, n: u64, per: &str, timed: bool) -> Value {
        let (Some(a), Some(b)) = (a, b) else {
            return Value::Null;
        };
        let syncs = b.syncs - a.syncs;
        if syncs <= 0.0 {
            return Value::Null;
        }
        let mut v = json!({
            "wal_syncs": syncs,
            format!("{per}_per_wal_sync"): round(n as f64 / syncs, 2),
            "from": "pg_stat_wal (cluster-wide), over the whole phase",
        });
        if timed && b.sync_ms > a.sync_ms {
            v["mean_wal_sync_ms"] = json!(round((b.sync_ms - a.sync_ms) / syncs, 4));
        }
        v
    }
}

/// One INSERT per statement in autocommit (one commit, one WAL flush each), 8 connections.
pub(super) async fn raw_insert_autocommit(
    pool: &PgPool,
    opts: &PgConnectOptions,
    sizes: &Sizes,
    wal_timed: bool,
) -> anyhow::Result<(Baseline, Percentiles)> {
    let c = Arc::new(Counters::default());
    let mut tasks: JoinSet<anyhow::Result<Vec<f64>>> = JoinSet::new();
    let mut conns = Vec::new();
    for _ in 0..RAW_CONNECTIONS {
        conns.push(PgConnection::connect_with(opts).await?);
    }
    let wal0 = WalSyncs::take(pool).await;
    for (k, mut conn) in conns.into_iter().enumerate() {
        let c = c.clone();
        tasks.spawn(async move {
            let stream = format!("bench/raw-single#{}", k + 1);
            let mut samples = Vec::new();
            let mut version: i32 = 0;
            while !c.stopped() {
                version += 1;
                let t = Instant::now();
                sqlx::query(
                    "INSERT INTO bench_raw_events (stream_id, version, event_id, event_type, data) \
                     VALUES ($1, $2, $3, 'TOKEN_USAGE', $4::jsonb)",
                )
                .bind(&stream)
                .bind(version)
                .bind(Uuid::new_v4())
                .bind(USAGE_DATA)
                .execute(&mut conn)
                .await?;
                if c.recording() {
                    samples.push(t.elapsed().as_secs_f64() * 1e3);
                }
                c.ok.fetch_add(1, Ordering::Relaxed);
            }
            // Report this backend's WAL counts now (it reports at most once a second otherwise):
            // the flush is asked for, then done when the backend next goes idle.
            let _ = sqlx::query("SELECT pg_stat_force_next_flush()")
                .execute(&mut conn)
                .await;
            let _ = sqlx::query("SELECT 1").execute(&mut conn).await;
            let _ = conn.close().await;
            Ok(samples)
        });
    }
    let w = measure(&c, sizes, None).await;
    let mut samples = Vec::new();
    while let Some(r) = tasks.join_next().await {
        samples.extend(r??);
    }
    let wal = WalSyncs::between(
        wal0,
        WalSyncs::take(pool).await,
        c.ok.load(Ordering::Relaxed),
        "commits",
        wal_timed,
    );
    let lat = percentiles(samples);
    let b = Baseline {
        name: "raw_insert_autocommit_8",
        value: round_sig(w.rate(w.ok)),
        unit: "rows/s",
        detail: json!({"connections": RAW_CONNECTIONS, "rows": w.ok, "seconds": round(w.secs, 3),
                       "table": "bench_raw_events (LIKE events INCLUDING ALL: same columns and indexes, no triggers)",
                       "machine_busy_pct": w.machine_busy_pct.map(|p| round(p, 1)),
                       "wal": wal}),
    };
    Ok((b, lat))
}

/// 100 rows per INSERT … SELECT FROM unnest (one transaction each), 8 connections.
pub(super) async fn raw_insert_batches(opts: &PgConnectOptions, sizes: &Sizes) -> anyhow::Result<Baseline> {
    const ROWS: usize = 100;
    let c = Arc::new(Counters::default());
    let mut tasks: JoinSet<anyhow::Result<()>> = JoinSet::new();
    for k in 0..RAW_CONNECTIONS {
        let mut conn = PgConnection::connect_with(opts).await?;
        let c = c.clone();
        tasks.spawn(async move {
            let stream = format!("bench/raw-batch#{}", k + 1);
            let streams = vec![stream.as_str(); ROWS];
            let types = vec!["TOKEN_USAGE"; ROWS];
            let data = vec![USAGE_DATA; ROWS];
            let mut next: i32 = 1;
            while !c.stopped() {
                let versions: Vec<i32> = (next..next + ROWS as i32).collect();
                next += ROWS as i32;
                let ids: Vec<Uuid> = (0..ROWS).map(|_| Uuid::new_v4()).collect();
                sqlx::query(
                    "INSERT INTO bench_raw_events (stream_id, version, event_id, event_type, data) \
                     SELECT s, v, id, t, d::jsonb FROM unnest($1::text[], $2::int[], $3::uuid[], $4::text[], $5::text[]) \
                         AS u(s, v, id, t, d)",
                )
                .bind(&streams)
                .bind(&versions)
                .bind(&ids)
                .bind(&types)
                .bind(&data)
                .execute(&mut conn)
                .await?;
                c.ok.fetch_add(ROWS as u64, Ordering::Relaxed);
            }
            let _ = conn.close().await;
            Ok(())
        });
    }
    let w = measure(&c, sizes, None).await;
    while let Some(r) = tasks.join_next().await {
        r??;
    }
    Ok(Baseline {
        name: "raw_insert_100row_8",
        value: round_sig(w.rate(w.ok)),
        unit: "rows/s",
        detail: json!({"connections": RAW_CONNECTIONS, "rows_per_transaction": ROWS, "rows": w.ok,
                       "seconds": round(w.secs, 3), "machine_busy_pct": w.machine_busy_pct.map(|p| round(p, 1))}),
    })
}

/// One sequential scan of `events` with the columns a consumer reads, streamed to one client;
/// the second of two runs (the first warms the caches and sets hint bits, as a rebuild finds it).
pub(super) async fn raw_read(opts: &PgConnectOptions) -> anyhow::Result<Baseline> {
    let mut conn = PgConnection::connect_with(opts).await?;
    let sql = format!("SELECT {EVENT_COLUMNS} FROM events");
    // The faster of two passes: the first may still be reading pages into the cache.
    let mut best = (0u64, f64::MAX);
    for _ in 0..2 {
        let t = Instant::now();
        let mut rows = sqlx::query(&sql).fetch(&mut conn);
        let mut n = 0u64;
        while rows.try_next().await?.is_some() {
            n += 1;
        }
        drop(rows);
        let secs = t.elapsed().as_secs_f64();
        if secs < best.1 {
            best = (n, secs);
        }
    }
    let _ = conn.close().await;
    let (n, secs) = best;
    Ok(Baseline {
        name: "raw_read_seq",
        value: round_sig(n as f64 / secs),
        unit: "rows/s",
        detail: json!({"rows": n, "seconds": round(secs, 3), "columns": EVENT_COLUMNS,
                       "what": "one SELECT of the consumer's columns over the whole events table, rows streamed to one connection, not decoded"}),
    })
}
