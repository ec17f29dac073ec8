//! The token-projector rebuild: generated TOKEN_USAGE history, replayed from position 0 by the
//! projector's own consumer, in-process.

use super::*;
use anyhow::{bail, Context};
use rig_consumer::{Consumer, ConsumerConfig, Outcome};
use rig_events::money::{Price, PriceTable};
use rig_projections::TOKEN_PROJECTOR;
use rust_decimal::Decimal;
use serde_json::json;
use sqlx::PgPool;
use std::time::{Duration, Instant};

/// `n` TOKEN_USAGE events in one transaction under the append lock (so positions are ordered as
/// ingest would order them): 1000 streams (issues of 20 repos and 8 agent streams), 8 agents,
/// 4 models (one unpriced), 30 days; a quarter carry `cost_usd`, half of those as strings.
pub(super) async fn generate_usage_events(pool: &PgPool, n: u64, prefix: &str) -> anyhow::Result<()> {
    let t = Instant::now();
    let mut tx = pool.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(rig_log::db::APPEND_LOCK_KEY)
        .execute(&mut *tx)
        .await?;
    sqlx::query(
        "INSERT INTO events (stream_id, version, event_id, event_type, data, occurred_at) \
         SELECT CASE WHEN s < 992 THEN $2 || '/repo-' || (s % 20) || '#' || (s + 1) \
                     ELSE 'agent:' || $2 || '-' || (s - 992) END, \
                i / 1000 + 1, gen_random_uuid(), 'TOKEN_USAGE', \
                jsonb_build_object('agent_id', 'agent-' || (i % 8), \
                    'model', (ARRAY['claude-sonnet-4-5', 'claude-opus-4-1', 'claude-haiku-4-5', 'unpriced-model'])[1 + i % 4], \
                    'input_tokens', (i * 7919) % 50000, 'output_tokens', (i * 104729) % 8000, \
                    'cache_read_tokens', (i * 31) % 20000, 'cache_write_tokens', (i * 17) % 3000) \
                || CASE i % 8 WHEN 0 THEN jsonb_build_object('cost_usd', ((i % 1000) / 1000.0)::numeric) \
                              WHEN 4 THEN jsonb_build_object('cost_usd', ((i % 1000) / 1000.0)::text) \
                              ELSE '{}'::jsonb END, \
                timestamptz '2025-10-01 00:00:00+00' + (i % 30) * interval '1 day' + (i % 86400) * interval '1 second' \
         FROM generate_series(0::bigint, $1 - 1) AS i, LATERAL (SELECT i % 1000 AS s) x",
    )
    .bind(i64::try_from(n).context("too many events to generate")?)
    .bind(prefix)
    .execute(&mut *tx)
    .await
    .context("generate TOKEN_USAGE events")?;
    tx.commit().await?;
    // What autovacuum would have done on a log of this age: hint bits set and the visibility map
    // filled, so neither the raw read nor the rebuild pays for a fresh bulk load.
    sqlx::query("VACUUM (ANALYZE) events").execute(pool).await?;
    // A bulk load of a million events writes about a gigabyte of WAL, which sets off checkpoints
    // that would land in the phases after it (the latency phase measured a p99 of 52 ms once,
    // against 5-7 ms otherwise). A live rig never loads that much at once, so the bench pays for
    // its own bulk load here rather than in a figure.
    let checkpoint = sqlx::query("CHECKPOINT").execute(pool).await;
    progress(&format!(
        "      generated, vacuumed and checkpointed in {:.1} s{}",
        t.elapsed().as_secs_f64(),
        match checkpoint {
            Ok(_) => String::new(),
            Err(e) => format!(" (CHECKPOINT refused: {e}; a checkpoint may land in the next phase)"),
        }
    ));
    Ok(())
}

pub(super) fn bench_prices() -> Vec<Price> {
    PRICES
        .iter()
        .filter_map(|(model, from, i, o, cr, cw)| {
            Some(Price {
                model: (*model).to_owned(),
                effective_from: from.parse().ok()?,
                input_per_mtok: i.parse::<Decimal>().ok()?,
                output_per_mtok: o.parse::<Decimal>().ok()?,
                cache_read_per_mtok: cr.parse::<Decimal>().ok()?,
                cache_write_per_mtok: cw.parse::<Decimal>().ok()?,
            })
        })
        .collect()
}

/// The token-projector's own consumer (its lib, in this process), reset to position 0 and run
/// batch after batch until it is idle at the head.
pub(super) async fn rebuild_token_projector(pool: &PgPool, raw_read: &Baseline) -> anyhow::Result<Figure> {
    let head: i64 = sqlx::query_scalar("SELECT coalesce(max(position), 0) FROM events")
        .fetch_one(pool)
        .await?;
    rig_consumer::reset(pool, &TOKEN_PROJECTOR).await?;
    let cfg = ConsumerConfig::from_settings(&rig_ops::config::ConsumerSettings::default());
    let batch_size = cfg.batch_size;
    let projection = rig_projections::token::TokenProjection::new(PriceTable::new(&bench_prices()));
    let mut consumer = Consumer::new(pool.clone(), projection, cfg);
    let t = Instant::now();
    let mut last_note = Instant::now();
    let (mut scanned, mut batches) = (0u64, 0u64);
    loop {
        match consumer.run_once().await? {
            Outcome::Applied { events, position } => {
                scanned += events as u64;
                batches += 1;
                if last_note.elapsed() > Duration::from_secs(2) {
                    progress(&format!("      … position {position} of {head}"));
                    last_note = Instant::now();
                }
            }
            Outcome::Idle { .. } => break,
            Outcome::Fenced => {}
            Outcome::Paused { position, .. } => {
                bail!("the token-projector paused at position {position} during the rebuild")
            }
            Outcome::Failed { position, error } => bail!("the token-projector failed at position {position}: {error}"),
        }
    }
    let secs = t.elapsed().as_secs_f64();
    let summed: Option<i64> = sqlx::query_scalar("SELECT sum(events)::bigint FROM token_usage")
        .fetch_one(pool)
        .await?;
    let rate = scanned as f64 / secs;
    Ok(Figure::of("token_projector_rebuild", rate, "events/s", raw_read)
        .at_least(">= 150000/s and >= 0.4x raw read", Some(0.4), Some(150_000.0))
        .detail(json!({
            "events": scanned, "head": head, "seconds": round(secs, 3), "batches": batches, "batch_size": batch_size,
            "token_usage_events_summed": summed,
            "how": "rig_projections::token::TokenProjection in rig_consumer::Consumer, in-process, reset to 0, run_once until idle",
        })))
}

/// Steps 10-11: the generated history, the raw sequential read of it, and the rebuild. Returns
/// the raw read's baseline.
pub(super) async fn rebuild_phase(env: &Env<'_>, figures: &mut Vec<Figure>) -> anyhow::Result<Baseline> {
    progress(&format!(
        "[10/14] generating {} TOKEN_USAGE events in SQL …",
        env.sizes.rebuild_events
    ));
    generate_usage_events(env.pool, env.sizes.rebuild_events, "bench-rebuild").await?;
    progress("[11/14] raw sequential read of events, then token-projector rebuild from position 0 …");
    let raw_read = raw_read(env.opts).await?;
    progress(&format!("      raw read {:.0} rows/s", raw_read.value));
    let rebuild = rebuild_token_projector(env.pool, &raw_read).await?;
    progress(&format!("      rebuild {:.0} events/s", rebuild.value));
    figures.push(rebuild);
    Ok(raw_read)
}
