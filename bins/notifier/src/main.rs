//! rig-notifier: posts chosen events (`notifier.events`) to a Discord webhook.
//!
//! Discord webhooks have no idempotency key, so delivery goes through an outbox: the
//! outbox projection (`rig_projections::notifier`) writes one rendered message per chosen event in the same transaction
//! as the consumer's checkpoint, and the [`sender`] posts them afterwards, only in the active
//! instance, marking each sent with Discord's message id. A fresh start or a reset begins at
//! the head of the log: history is never posted. Its renderer keeps every message within
//! Discord's limits whatever the event data holds.

mod sender;

rig_ops::service_allocator!();

use anyhow::bail;
use rig_ops::telemetry::PrometheusHandle;
use rig_ops::Settings;
use secrecy::ExposeSecret;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// Connections: the batch transaction, the head query, the sender, `/readyz`, LISTEN.
const POOL_SIZE: u32 = 5;

/// Over how long the tenants' senders take their first look at their outboxes.
const FIRST_LOOK_SPREAD: Duration = Duration::from_secs(10);

/// Serves the ops endpoints, fills the outbox and delivers it until `shutdown`.
async fn run(settings: Settings, metrics: PrometheusHandle, shutdown: CancellationToken) -> anyhow::Result<()> {
    let n = &settings.notifier;
    let webhook = match (&n.discord_webhook_url, n.dry_run) {
        (Some(url), _) => Some(sender::Webhook::parse(url.expose_secret())?),
        (None, true) => None,
        (None, false) => bail!(
            "notifier.discord_webhook_url is not set, so there is nowhere to post. Set it \
             (RIG_NOTIFIER__DISCORD_WEBHOOK_URL=https://discord.com/api/webhooks/<id>/<token>), or set \
             notifier.dry_run = true (RIG_NOTIFIER__DRY_RUN=true) to log the messages instead"
        ),
    };
    let worker = rig_consumer::Worker {
        name: "rig-notifier",
        settings: &settings,
        pool_size: POOL_SIZE,
        listen: n.metrics_listen,
    };
    tracing::info!(events = ?n.events, dry_run = n.dry_run, "rig-notifier notifies of these events");
    if n.dry_run {
        tracing::warn!("notifier.dry_run = true: messages are logged, not posted");
    }
    sender::register_metrics();
    let (events, dry_run, poll_interval) = (n.events.clone(), n.dry_run, settings.consumer.poll_interval);
    rig_consumer::run_worker(worker, metrics, shutdown, move |t| {
        // A tenant's own webhook and event list, when it has them, over the deployment's.
        let webhook = match &t.settings.discord_webhook_url {
            Some(url) => Some(sender::Webhook::parse(url.expose_secret())?),
            None => webhook.clone(),
        };
        let events = t.settings.notifier_events.as_deref().unwrap_or(&events);
        let wake = Arc::new(Notify::new());
        let poll = rig_consumer::idle_poll(t.slug, poll_interval);
        let sender = sender::Sender::new(t.pool.clone(), webhook, dry_run, wake.clone(), poll)?
            .first_look_after(rig_tenants::spread(t.slug, FIRST_LOOK_SPREAD));
        let outbox = rig_projections::notifier::OutboxProjection::new(events, wake);
        Ok((
            outbox,
            rig_consumer::companion(move |active, shutdown| sender.run(active, shutdown)),
        ))
    })
    .await
}

fn main() -> std::process::ExitCode {
    rig_ops::service::main("rig-notifier", run)
}
