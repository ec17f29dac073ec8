//! What the token and cost projections share: both sum `TOKEN_USAGE` events per key in memory
//! and write each transaction's sums with one `unnest` upsert, so they read the same events the
//! same way and turn their sums into the same columns.

use rig_consumer::ApplyError;
use rig_events::money::PriceTable;
use rig_events::usage::{read_usage, Totals, Usage};
use rig_events::{EventType, StoredEvent};
use rust_decimal::Decimal;
use sqlx::postgres::PgArguments;
use sqlx::query::Query;
use sqlx::Postgres;

/// The one type both read (`Projection::event_types`).
pub(crate) const USAGE_TYPES: &[&str] = &[EventType::TokenUsage.name()];

/// While behind, one transaction sums this many chunks of `consumer.batch_size` events before
/// writing (50,000 events at the default 500): the write costs per row touched, not per event,
/// so fewer, bigger transactions rebuild faster. Memory stays bounded by a few chunks plus one
/// entry per row touched.
pub(crate) const CATCH_UP_CHUNKS: i64 = 100;

/// Connections: the batch transaction, its catch-up reader, the LISTEN connection, the head
/// query and `/readyz`.
pub(crate) const POOL_SIZE: u32 = 5;

/// The summed columns of a batch's rows, in the order both upserts bind them after their keys:
/// input, output, cache read and cache write tokens, cost, events.
#[derive(Default)]
pub(crate) struct SumColumns {
    input: Vec<i64>,
    output: Vec<i64>,
    cache_read: Vec<i64>,
    cache_write: Vec<i64>,
    cost: Vec<Decimal>,
    events: Vec<i64>,
}

impl SumColumns {
    pub(crate) fn with_capacity(n: usize) -> Self {
        SumColumns {
            input: Vec::with_capacity(n),
            output: Vec::with_capacity(n),
            cache_read: Vec::with_capacity(n),
            cache_write: Vec::with_capacity(n),
            cost: Vec::with_capacity(n),
            events: Vec::with_capacity(n),
        }
    }

    pub(crate) fn push(&mut self, t: &Totals) {
        self.input.push(t.tokens.input);
        self.output.push(t.tokens.output);
        self.cache_read.push(t.tokens.cache_read);
        self.cache_write.push(t.tokens.cache_write);
        self.cost.push(t.cost_usd);
        self.events.push(t.events);
    }

    /// Binds the six columns, after the keys the caller bound.
    pub(crate) fn bind<'q>(self, q: Query<'q, Postgres, PgArguments>) -> Query<'q, Postgres, PgArguments> {
        q.bind(self.input)
            .bind(self.output)
            .bind(self.cache_read)
            .bind(self.cache_write)
            .bind(self.cost)
            .bind(self.events)
    }
}

/// Reads each `TOKEN_USAGE` of a batch by the one pricing rule and hands it to `add` with its
/// event. An event that cannot be read or added stops the batch at its position (the consumer
/// pauses there; `rigctl skip` dead-letters it): it is never counted as zero.
pub(crate) fn each_usage<'e>(
    events: &'e [StoredEvent],
    prices: &PriceTable,
    mut add: impl FnMut(&'e StoredEvent, &Usage<'e>) -> Result<(), String>,
) -> Result<(), ApplyError> {
    for e in events.iter().filter(|e| e.known_type() == Some(EventType::TokenUsage)) {
        read_usage(e, prices)
            .and_then(|u| add(e, &u))
            .map_err(|error| ApplyError::Poison {
                position: e.position,
                error,
            })?;
    }
    Ok(())
}
