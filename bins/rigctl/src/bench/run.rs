//! The run: the phases in order, on one scratch database, with ingest and the workers as real
//! processes.

use super::*;
use anyhow::Context;
use rig_ops::process;
use serde_json::{json, Value};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::PgPool;
use std::net::SocketAddr;
use std::time::Duration;

/// What every phase runs against: the scratch database, ingest, and the HTTP client.
#[derive(Clone, Copy)]
pub(super) struct Env<'a> {
    pub(super) sizes: &'a Sizes,
    pub(super) pool: &'a PgPool,
    pub(super) opts: &'a PgConnectOptions,
    /// Whether the backends time their WAL flushes (`track_wal_io_timing`).
    pub(super) wal_timed: bool,
    pub(super) http: &'a reqwest::Client,
    pub(super) ingest_addr: SocketAddr,
    pub(super) append_url: &'a str,
    pub(super) probe: IngestProbe<'a>,
}

/// The scratch database, connected and migrated.
struct Database {
    opts: PgConnectOptions,
    pool: PgPool,
    machine: Value,
    wal_timed: bool,
}

pub(super) async fn bench(sizes: &Sizes, url: &str) -> anyhow::Result<Report> {
    let db = prepare_database(url).await?;
    // Ingest runs as the sibling `rig-ingest` binary, not in-process: it is how production runs
    // it, the load generator (this process) and ingest then compete for the 2 cores the way a
    // client and a server do, and ingest's CPU per event can be read from /proc on its own. The
    // latency and idle phases need the other workers as real processes anyway.
    let bin_dir = process::binary_dir()?;
    // One phase needs ingest alone.
    let needed: &[&str] = match sizes.only {
        Some(Phase::Tenants) | None => &WORKERS,
        Some(_) => &[INGEST],
    };
    ensure_built(&bin_dir, needed)?;
    let scratch = ScratchDir::new()?;
    let ports = Ports::new()?;
    let config = scratch.path.join("rig.toml");
    std::fs::write(&config, worker_config(&ports)).context("write the workers' configuration")?;
    let launcher = Launcher {
        bin_dir,
        config,
        db_url: url.to_owned(),
        logs: scratch.path.clone(),
    };
    let http = reqwest::Client::builder()
        .tcp_nodelay(true)
        .pool_max_idle_per_host(256)
        .timeout(Duration::from_secs(30))
        .build()?;
    seed_history(&db.pool, sizes).await?;

    let mut ingest = launcher.spawn(INGEST, ports.ingest)?;
    ingest.wait_ready(&http, Duration::from_secs(30)).await?;
    let base = format!("http://127.0.0.1:{}", ports.ingest);
    progress(&format!("rig-ingest is up on {base} (pid {})", ingest.pid()));
    let (append_url, metrics_url) = (format!("{base}/v1/events"), format!("{base}/metrics"));
    let env = Env {
        sizes,
        pool: &db.pool,
        opts: &db.opts,
        wal_timed: db.wal_timed,
        http: &http,
        ingest_addr: SocketAddr::from(([127, 0, 0, 1], ports.ingest)),
        append_url: &append_url,
        probe: IngestProbe {
            pid: ingest.pid(),
            metrics_url: &metrics_url,
            http: &http,
        },
    };
    let (baselines, figures, workers) = match sizes.only {
        Some(Phase::Tenants) => {
            let mut workers = vec![ingest];
            let figures = tenants_phase(&env, &launcher, &ports, sizes.tenants, &mut workers, "[1/1]").await?;
            (Vec::new(), figures, workers)
        }
        Some(phase) => {
            let (alone, figure) = only_phase(&env, phase).await?;
            (vec![alone], vec![figure], vec![ingest])
        }
        None => every_phase(&env, &launcher, &ports, ingest).await?,
    };
    stop_all(workers);
    Ok(Report::new(db.machine, sizes, baselines, figures))
}

/// Connects to the scratch database and migrates it.
async fn prepare_database(url: &str) -> anyhow::Result<Database> {
    let opts = connect_options(url)?;
    let pool = PgPoolOptions::new()
        .max_connections(4)
        .connect_with(opts.clone())
        .await
        .context("connect to the scratch database")?;
    rig_log::db::migrate(&pool)
        .await
        .context("migrate the scratch database")?;
    let machine = machine_info(&pool).await?;
    progress(&format!("migrated; {machine}"));
    // Every backend on the scratch database, ingest's included, times its WAL flushes, so the
    // report can tell whether a commit here waits for the disk or for the CPU (a superuser
    // setting; without it the flushes are counted but not timed).
    let wal_timed = sqlx::query(&format!(
        "ALTER DATABASE \"{}\" SET track_wal_io_timing = on",
        opts.get_database().unwrap_or_default()
    ))
    .execute(&pool)
    .await
    .is_ok();
    Ok(Database {
        opts,
        pool,
        machine,
        wal_timed,
    })
}

/// The raw baseline table, and a log with some history, in both tables alike and analyzed, as
/// autovacuum keeps a live system: on a fresh, never-analyzed table ingest's prepared lookups
/// keep the sequential-scan plans made while it was empty, and the figures would measure that
/// instead (see the report).
async fn seed_history(pool: &PgPool, sizes: &Sizes) -> anyhow::Result<()> {
    sqlx::query("CREATE TABLE bench_raw_events (LIKE events INCLUDING ALL)")
        .execute(pool)
        .await
        .context("create the raw baseline table")?;
    if sizes.history_events == 0 {
        return Ok(());
    }
    progress(&format!(
        "[0/14] seeding a history of {} events (log and raw table alike) …",
        sizes.history_events
    ));
    generate_usage_events(pool, sizes.history_events, "bench-history").await?;
    // Their issues' rows too, as ingest would have left them (TOKEN_USAGE changes nothing but
    // the version): a live rig's issue_state is not empty, and a lookup that scans it
    // instead of probing its key must show here, not first in production.
    sqlx::query(
        "INSERT INTO issue_state (stream_id, repo, issue_number, version, first_event_at, updated_at) \
         SELECT stream_id, split_part(stream_id, '#', 1), split_part(stream_id, '#', 2)::bigint, \
                max(version), min(recorded_at), max(recorded_at) \
         FROM events WHERE stream_id NOT LIKE 'agent:%' GROUP BY stream_id",
    )
    .execute(pool)
    .await
    .context("seed issue_state for the history")?;
    sqlx::query("VACUUM (ANALYZE) issue_state").execute(pool).await?;
    sqlx::query(
        "INSERT INTO bench_raw_events (stream_id, version, event_id, event_type, schema_version, data, metadata, \
             occurred_at, recorded_at) \
         SELECT stream_id, version, event_id, event_type, schema_version, data, metadata, occurred_at, recorded_at \
         FROM events ORDER BY position",
    )
    .execute(pool)
    .await
    .context("copy the history into the raw table")?;
    sqlx::query("VACUUM (ANALYZE) bench_raw_events").execute(pool).await?;
    Ok(())
}

/// `--only`: one phase, with ingest alone.
async fn only_phase(env: &Env<'_>, phase: Phase) -> anyhow::Result<(Baseline, Figure)> {
    Ok(match phase {
        Phase::Hostile => hostile_phase(env.ingest_addr, env.sizes, env.probe, ["[1/2]", "[2/2]"]).await?,
        Phase::ReadBurst => {
            progress(&read_burst_announcement(env.sizes, "[1/1]"));
            read_burst_figure(read_burst(env.ingest_addr, env.sizes, env.probe).await?)
        }
        Phase::Tenants => anyhow::bail!("the tenants phase runs with every worker, in `bench`"),
    })
}

/// Every phase, in order; returns the baselines, the figures and the workers still running.
async fn every_phase(
    env: &Env<'_>,
    launcher: &Launcher,
    ports: &Ports,
    ingest: Worker,
) -> anyhow::Result<(Vec<Baseline>, Vec<Figure>, Vec<Worker>)> {
    let mut figures = Vec::new();
    // 1. single-row autocommit vs single-event appends, and the HTTP path alone.
    let single = single_appends_phase(env, &mut figures).await?;
    let (alone, with_hostile) = hostile_phase(env.ingest_addr, env.sizes, env.probe, ["[4/14]", "[5/14]"]).await?;
    figures.push(with_hostile);
    // 2. 100-row transactions vs 500-event appends.
    let raw_batch = batch_appends_phase(env, &mut figures).await?;
    // 3. claims, then a burst of reads while appends go on.
    claims_phase(env, &single.raw, &mut figures).await?;
    progress(&read_burst_announcement(env.sizes, "[9/14]"));
    let (read_burst_baseline, read_burst_fig) =
        read_burst_figure(read_burst(env.ingest_addr, env.sizes, env.probe).await?);
    figures.push(read_burst_fig);
    // 4. rebuild.
    let raw_read = rebuild_phase(env, &mut figures).await?;
    // 5. latency, with the token-projector as a real process.
    let token = latency_phase(env, launcher, ports, &single.raw_latency, &mut figures).await?;
    // 6. idle.
    let mut workers = idle_phase(env, launcher, ports, vec![ingest, token], &mut figures).await?;
    // 7. many tenants, every worker running.
    figures.extend(tenants_phase(env, launcher, ports, env.sizes.tenants, &mut workers, "[14/14]").await?);

    let raw_latency = single.raw_latency;
    let baselines = vec![
        single.raw,
        single.http_ceiling,
        alone,
        Baseline {
            name: "raw_insert_autocommit_8_latency",
            value: raw_latency.p99,
            unit: "ms (p99)",
            detail: json!({"p50_ms": raw_latency.p50, "p99_ms": raw_latency.p99, "max_ms": raw_latency.max,
                           "what": "per-INSERT commit latency seen by the 8 raw autocommit connections"}),
        },
        raw_batch,
        raw_read,
        read_burst_baseline,
    ];
    Ok((baselines, figures, workers))
}
