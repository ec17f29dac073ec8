//! The read models kept from the event log, each a [`Projection`] that plugs into the consumer
//! runtime (`rig_consumer`): token usage per stream, agent and model ([`token`]); cost per day,
//! repository, agent and model ([`cost`]); the held issues the stuck-agent watch looks at
//! ([`stale_heartbeat`]); and the notifier's outbox of messages owed to Discord ([`notifier`]).
//! The worker binaries run them; `rigctl` resets, skips and benchmarks them through the same
//! types.

pub mod cost;
pub mod notifier;
pub mod stale_heartbeat;
mod sums;
pub mod token;

pub use rig_consumer::Projection;
use rig_consumer::{ConsumerInfo, ConsumerStatus, StartFrom};
use sqlx::PgPool;

pub const TOKEN_PROJECTOR: ConsumerInfo = ConsumerInfo {
    name: "token-projector",
    tables: &["token_usage"],
    start: StartFrom::Beginning,
};
pub const COST_PROJECTOR: ConsumerInfo = ConsumerInfo {
    name: "cost-projector",
    tables: &["daily_cost"],
    start: StartFrom::Beginning,
};
pub const STALE_HEARTBEAT: ConsumerInfo = ConsumerInfo {
    name: "stale-heartbeat",
    tables: &["stale_heartbeat_issues"],
    start: StartFrom::Beginning,
};
/// The notifier's reset keeps undelivered outbox rows (they are messages owed to people) and
/// moves the checkpoint to the head.
pub const NOTIFIER: ConsumerInfo = ConsumerInfo {
    name: "notifier",
    tables: &[],
    start: StartFrom::Head,
};

/// Every consumer of the system, in the order tools list them.
pub const CONSUMERS: &[ConsumerInfo] = &[TOKEN_PROJECTOR, COST_PROJECTOR, STALE_HEARTBEAT, NOTIFIER];

pub fn consumer_info(name: &str) -> Option<&'static ConsumerInfo> {
    CONSUMERS.iter().find(|c| c.name == name)
}

/// Where every consumer of the system stands (and any other checkpoint row found).
pub async fn status(pool: &PgPool) -> Result<Vec<ConsumerStatus>, sqlx::Error> {
    rig_consumer::status(pool, pool, rig_tenants::DEFAULT, CONSUMERS).await
}

/// The status of every consumer of `tenant`, whose log is `log`; `control` holds the fleet's locks.
pub async fn tenant_status(log: &PgPool, control: &PgPool, tenant: &str) -> Result<Vec<ConsumerStatus>, sqlx::Error> {
    rig_consumer::status(log, control, tenant, CONSUMERS).await
}
