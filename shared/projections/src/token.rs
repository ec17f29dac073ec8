//! rig-token-projector: tails the event log and keeps `token_usage`, one row per
//! (stream, agent, model) with summed tokens, exact cost and event count.
//!
//! What it promises: the table always equals a fold of the `TOKEN_USAGE` events up to the
//! checkpoint, because each batch is summed in memory and written with ONE upsert in the
//! consumer runtime's transaction, together with the checkpoint. The cost rule is
//! `rig_events::usage::read_usage`, the one the cost-projector uses too. Other event types are never
//! fetched; the checkpoint still moves past them. An event whose data cannot be read pauses the
//! consumer at that position (`rigctl skip` dead-letters it); it is never counted as zero.

use crate::sums::{each_usage, SumColumns, CATCH_UP_CHUNKS, POOL_SIZE, USAGE_TYPES};
use crate::TOKEN_PROJECTOR;
use rig_consumer::{ApplyError, ConsumerInfo, Projection, TenantCtx};
use rig_events::money::PriceTable;
use rig_events::usage::{key_columns, RowSums};
use rig_events::StoredEvent;
use rig_ops::telemetry::PrometheusHandle;
use rig_ops::Settings;
use sqlx::PgConnection;
use tokio_util::sync::CancellationToken;

pub struct TokenProjection {
    prices: PriceTable,
    /// Per (stream, agent, model): what the transaction in flight adds.
    sums: RowSums,
}

impl TokenProjection {
    pub fn new(prices: PriceTable) -> Self {
        TokenProjection {
            prices,
            sums: RowSums::default(),
        }
    }
}

const UPSERT: &str = "\
INSERT INTO token_usage AS t (stream_id, agent_id, model, input_tokens, output_tokens, \
    cache_read_tokens, cache_write_tokens, cost_usd, events) \
SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::int8[], $5::int8[], $6::int8[], \
    $7::int8[], $8::numeric[], $9::int8[]) \
ON CONFLICT (stream_id, agent_id, model) DO UPDATE SET \
    input_tokens = t.input_tokens + excluded.input_tokens, \
    output_tokens = t.output_tokens + excluded.output_tokens, \
    cache_read_tokens = t.cache_read_tokens + excluded.cache_read_tokens, \
    cache_write_tokens = t.cache_write_tokens + excluded.cache_write_tokens, \
    cost_usd = t.cost_usd + excluded.cost_usd, \
    events = t.events + excluded.events";

impl Projection for TokenProjection {
    fn info(&self) -> &'static ConsumerInfo {
        &TOKEN_PROJECTOR
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
    }

    async fn apply(&mut self, _tx: &mut PgConnection, events: &[StoredEvent]) -> Result<(), ApplyError> {
        let sums = &mut self.sums;
        each_usage(events, &self.prices, |e, u| {
            sums.add(&[&e.stream_id, &u.agent_id, &u.model], u)
        })
    }

    async fn flush(&mut self, tx: &mut PgConnection) -> Result<(), ApplyError> {
        if self.sums.is_empty() {
            return Ok(());
        }
        let rows = self.sums.take();
        let n = rows.len();
        let (mut streams, mut agents, mut models) =
            (Vec::with_capacity(n), Vec::with_capacity(n), Vec::with_capacity(n));
        let mut sums = SumColumns::with_capacity(n);
        for (key, t) in &rows {
            let mut cols = key_columns(key);
            streams.push(cols.next().unwrap_or_default());
            agents.push(cols.next().unwrap_or_default());
            models.push(cols.next().unwrap_or_default());
            sums.push(t);
        }
        sums.bind(sqlx::query(UPSERT).bind(streams).bind(agents).bind(models))
            .execute(&mut *tx)
            .await?;
        Ok(())
    }
}

/// Serves the operations endpoints and runs the consumer of each tenant this replica works (a
/// tenant's own prices, when it has some, over the deployment's) until `shutdown`.
pub async fn run(settings: Settings, metrics: PrometheusHandle, shutdown: CancellationToken) -> anyhow::Result<()> {
    let prices = settings.prices.clone();
    let projection = move |t: &TenantCtx<'_>| {
        Ok(TokenProjection::new(PriceTable::new(
            t.settings.prices.as_deref().unwrap_or(&prices),
        )))
    };
    let worker = rig_consumer::Worker {
        name: "rig-token-projector",
        settings: &settings,
        pool_size: POOL_SIZE,
        listen: settings.token_projector.metrics_listen,
    };
    rig_consumer::run_projection(worker, projection, metrics, shutdown).await
}
