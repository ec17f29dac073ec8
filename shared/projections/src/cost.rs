//! rig-cost-projector: tails the event log and keeps `daily_cost`, one row per (UTC day, repo,
//! agent, model) with summed tokens, exact cost, event count and the events that could not be
//! priced.
//!
//! What it promises: the table always equals a fold of the `TOKEN_USAGE` events up to the
//! checkpoint, because each batch is summed in memory and written with ONE upsert in the
//! consumer runtime's transaction, together with the checkpoint. Cost follows
//! `rig_events::usage::read_usage`, the same rule as the token-projector's. An event without
//! `cost_usd` whose model has no price on its day counts 0 USD, in `unpriced_events` and in
//! `rig_cost_unpriced_events_total`. Unreadable data pauses the consumer at that event.

use crate::sums::{each_usage, SumColumns, CATCH_UP_CHUNKS, POOL_SIZE, USAGE_TYPES};
use crate::COST_PROJECTOR;
use chrono::NaiveDate;
use rig_consumer::{ApplyError, ConsumerInfo, Projection, TenantCtx};
use rig_events::money::PriceTable;
use rig_events::usage::{key_columns, repo_of, RowSums, Totals};
use rig_events::StoredEvent;
use rig_ops::telemetry::PrometheusHandle;
use rig_ops::Settings;
use sqlx::PgConnection;
use std::collections::HashMap;
use tokio_util::sync::CancellationToken;

pub struct CostProjection {
    prices: PriceTable,
    /// Per day, then per (repo, agent, model): what the transaction in flight adds.
    sums: HashMap<NaiveDate, RowSums>,
    /// Unpriced events of the transaction in flight, exported once it commits (a rolled-back
    /// batch is applied again and must not count twice).
    unpriced_pending: u64,
}

impl CostProjection {
    pub fn new(prices: PriceTable) -> Self {
        // Exported from the start, so "no unpriced events" reads as 0 rather than as absent.
        metrics::counter!("rig_cost_unpriced_events_total").increment(0);
        CostProjection {
            prices,
            sums: HashMap::new(),
            unpriced_pending: 0,
        }
    }
}

const UPSERT: &str = "\
INSERT INTO daily_cost AS t (day, repo, agent_id, model, input_tokens, output_tokens, \
    cache_read_tokens, cache_write_tokens, cost_usd, events, unpriced_events) \
SELECT * FROM unnest($1::date[], $2::text[], $3::text[], $4::text[], $5::int8[], $6::int8[], \
    $7::int8[], $8::int8[], $9::numeric[], $10::int8[], $11::int8[]) \
ON CONFLICT (day, repo, agent_id, model) DO UPDATE SET \
    input_tokens = t.input_tokens + excluded.input_tokens, \
    output_tokens = t.output_tokens + excluded.output_tokens, \
    cache_read_tokens = t.cache_read_tokens + excluded.cache_read_tokens, \
    cache_write_tokens = t.cache_write_tokens + excluded.cache_write_tokens, \
    cost_usd = t.cost_usd + excluded.cost_usd, \
    events = t.events + excluded.events, \
    unpriced_events = t.unpriced_events + excluded.unpriced_events";

impl Projection for CostProjection {
    fn info(&self) -> &'static ConsumerInfo {
        &COST_PROJECTOR
    }

    fn event_types(&self) -> Option<&'static [&'static str]> {
        Some(USAGE_TYPES)
    }

    fn catch_up_chunks(&self) -> i64 {
        CATCH_UP_CHUNKS
    }

    fn lean_events(&self) -> bool {
        true
    }

    fn begin(&mut self) {
        self.sums.clear();
        self.unpriced_pending = 0;
    }

    async fn apply(&mut self, _tx: &mut PgConnection, events: &[StoredEvent]) -> Result<(), ApplyError> {
        let sums = &mut self.sums;
        each_usage(events, &self.prices, |e, u| {
            let repo = repo_of(&e.stream_id)?;
            sums.entry(u.day).or_default().add(&[repo, &u.agent_id, &u.model], u)
        })
    }

    async fn flush(&mut self, tx: &mut PgConnection) -> Result<(), ApplyError> {
        let days: Vec<(NaiveDate, Vec<(String, Totals)>)> =
            self.sums.iter_mut().map(|(day, sums)| (*day, sums.take())).collect();
        self.sums.clear();
        let n: usize = days.iter().map(|(_, rows)| rows.len()).sum();
        if n == 0 {
            return Ok(());
        }
        let (mut day_col, mut repos, mut agents, mut models) = (
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
        );
        let mut sums = SumColumns::with_capacity(n);
        let mut unpriced = Vec::with_capacity(n);
        let mut unpriced_total = 0i64;
        for (day, rows) in &days {
            for (key, t) in rows {
                let mut cols = key_columns(key);
                day_col.push(*day);
                repos.push(cols.next().unwrap_or_default());
                agents.push(cols.next().unwrap_or_default());
                models.push(cols.next().unwrap_or_default());
                sums.push(t);
                unpriced.push(t.unpriced_events);
                // Only a metric: saturating is enough (each row's count is checked in `Totals`).
                unpriced_total = unpriced_total.saturating_add(t.unpriced_events);
            }
        }
        let keys = sqlx::query(UPSERT).bind(day_col).bind(repos).bind(agents).bind(models);
        sums.bind(keys).bind(unpriced).execute(&mut *tx).await?;
        self.unpriced_pending = u64::try_from(unpriced_total).unwrap_or(0);
        Ok(())
    }

    fn after_commit(&mut self) {
        if self.unpriced_pending > 0 {
            metrics::counter!("rig_cost_unpriced_events_total").increment(self.unpriced_pending);
            self.unpriced_pending = 0;
        }
    }
}

/// Serves the operations endpoints and runs the consumer of each tenant this replica works (a
/// tenant's own prices, when it has some, over the deployment's) until `shutdown`.
pub async fn run(settings: Settings, metrics: PrometheusHandle, shutdown: CancellationToken) -> anyhow::Result<()> {
    let prices = settings.prices.clone();
    let projection = move |t: &TenantCtx<'_>| {
        Ok(CostProjection::new(PriceTable::new(
            t.settings.prices.as_deref().unwrap_or(&prices),
        )))
    };
    let worker = rig_consumer::Worker {
        name: "rig-cost-projector",
        settings: &settings,
        pool_size: POOL_SIZE,
        listen: settings.cost_projector.metrics_listen,
    };
    rig_consumer::run_projection(worker, projection, metrics, shutdown).await
}
