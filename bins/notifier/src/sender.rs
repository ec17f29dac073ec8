//! Delivers the outbox to the Discord webhook, oldest first, only in the active instance.
//!
//! What it promises:
//! - **None lost.** A message leaves the pending set only when Discord answered 2xx (its
//!   message id is stored with `sent_at`) or, in `dry_run`, once it was logged. Failures keep
//!   it pending: 429 waits Discord's `retry_after` and sends the same message again; 5xx and
//!   network errors back off exponentially (`backon`).
//! - **At most the one in flight repeated.** Discord webhooks have no idempotency key: a crash
//!   after Discord accepted a message but before `sent_at` was stored posts that one again.
//!   Nothing else is ever sent twice (one sender per consumer name, one message at a time).
//! - **Loud, not silent, when the webhook is gone.** 401/403/404 mean the URL is wrong or the
//!   webhook was deleted: posting stops, `rig_notifier_webhook_disabled` is 1 and an error that
//!   says what to do is logged at every check; messages stay pending for after the fix.
//! - A message Discord refuses for its content (another 4xx) is set aside (`failed_at`, with
//!   Discord's answer in `last_error`) so it does not block the ones after it.
//!
//! The webhook URL holds a token: it is never logged (request errors are logged without it).

use backon::{BackoffBuilder, ExponentialBuilder};
use reqwest::header::HeaderMap;
use reqwest::{StatusCode, Url};
use serde_json::Value;
use sqlx::PgPool;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{watch, Notify};
use tokio_util::sync::CancellationToken;

/// How often a disabled webhook is reported when nothing new arrives.
const DISABLED_REPORT_EVERY: Duration = Duration::from_secs(60);
/// Longest wait Discord may ask for before we try again anyway.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

/// The sender's metrics at rest, registered once per process: a hot standby, which runs no
/// sender, shows them too.
pub fn register_metrics() {
    for reason in ["rate_limited", "server_error", "network", "rejected"] {
        metrics::counter!("rig_notifier_failed_total", "reason" => reason).increment(0);
    }
    metrics::counter!("rig_notifier_sent_total").increment(0);
    metrics::gauge!("rig_notifier_webhook_disabled").set(0.0);
}

/// The webhook URL with `wait=true`. Holds a token: `Debug` prints nothing of it.
#[derive(Clone)]
pub struct Webhook(Url);

impl std::fmt::Debug for Webhook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Webhook([REDACTED])")
    }
}

impl Webhook {
    /// Parses the configured URL and sets `wait=true` (so Discord answers with the message),
    /// keeping any other query parameter such as `thread_id`.
    pub fn parse(url: &str) -> anyhow::Result<Webhook> {
        // The parse error would not echo the URL, but say nothing of it to be sure.
        let mut u = Url::parse(url.trim()).map_err(|_| {
            anyhow::anyhow!("notifier.discord_webhook_url is not a valid URL (expected https://discord.com/api/webhooks/<id>/<token>)")
        })?;
        let keep: Vec<(String, String)> = u
            .query_pairs()
            .filter(|(k, _)| k != "wait")
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        u.query_pairs_mut()
            .clear()
            .extend_pairs(keep)
            .append_pair("wait", "true");
        Ok(Webhook(u))
    }

    #[cfg(test)]
    fn expose_url(&self) -> &Url {
        &self.0
    }
}

/// One row of the outbox waiting to be sent.
#[derive(Debug, sqlx::FromRow)]
struct Pending {
    id: i64,
    event_id: uuid::Uuid,
    event_type: String,
    payload: Value,
}

/// How one post ended.
#[derive(Debug)]
enum Posted {
    Sent {
        message_id: Option<String>,
        pause: Option<Duration>,
    },
    RateLimited(Duration),
    ServerError(StatusCode),
    Network(String),
    /// 401/403/404: the webhook itself is refused.
    WebhookRefused(StatusCode),
    /// Another 4xx: Discord will never take this payload.
    PayloadRefused(StatusCode, String),
}

pub struct Sender {
    pool: PgPool,
    client: reqwest::Client,
    webhook: Option<Webhook>,
    dry_run: bool,
    wake: Arc<Notify>,
    poll_interval: Duration,
    /// Set on 401/403/404 and kept until restart (the fix is a new URL in the config).
    disabled: Option<StatusCode>,
    /// Before the first look at the outbox, unless a new message wakes it sooner (see
    /// [`Sender::first_look_after`]).
    first_look: Duration,
}

impl Sender {
    pub fn new(
        pool: PgPool,
        webhook: Option<Webhook>,
        dry_run: bool,
        wake: Arc<Notify>,
        poll_interval: Duration,
    ) -> anyhow::Result<Sender> {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(15))
            .connect_timeout(Duration::from_secs(5))
            .user_agent(concat!("rig-notifier/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Sender {
            pool,
            client,
            webhook,
            dry_run,
            wake,
            poll_interval,
            disabled: None,
            first_look: Duration::ZERO,
        })
    }

    /// Waits `d` before the first look at the outbox (messages left from before a restart),
    /// unless a new message comes first: a process taking up hundreds of tenants at once then
    /// does not open a connection for each of them in the same instant.
    pub fn first_look_after(mut self, d: Duration) -> Sender {
        self.first_look = d;
        self
    }

    /// Sends while this instance is the active one, until `shutdown`.
    pub async fn run(mut self, mut active: watch::Receiver<bool>, shutdown: CancellationToken) {
        loop {
            while !*active.borrow_and_update() {
                tokio::select! {
                    r = active.changed() => if r.is_err() { return },
                    _ = shutdown.cancelled() => return,
                }
            }
            if !self.first_look.is_zero() {
                tokio::select! {
                    _ = tokio::time::sleep(self.first_look) => {}
                    _ = self.wake.notified() => {}
                    _ = shutdown.cancelled() => return,
                }
                self.first_look = Duration::ZERO;
            }
            self.drain(&active, &shutdown).await;
            if shutdown.is_cancelled() {
                return;
            }
        }
    }

    /// Sends pending messages one at a time; returns on shutdown or loss of leadership.
    async fn drain(&mut self, active: &watch::Receiver<bool>, shutdown: &CancellationToken) {
        let mut backoff = new_backoff();
        loop {
            if shutdown.is_cancelled() || !*active.borrow() {
                return;
            }
            if let Some(status) = self.disabled {
                let pending = self.export_pending().await;
                tracing::error!(
                    %status, pending,
                    "Discord refused the webhook ({status}): nothing is being posted. The webhook URL is wrong or the \
                     webhook was deleted: put a valid one in notifier.discord_webhook_url (RIG_NOTIFIER__DISCORD_WEBHOOK_URL) \
                     and restart rig-notifier. Undelivered messages are kept and will be sent then."
                );
                self.idle(DISABLED_REPORT_EVERY, active, shutdown).await;
                continue;
            }
            let next = sqlx::query_as::<_, Pending>(
                "SELECT id, event_id, event_type, payload FROM notifier_outbox \
                 WHERE sent_at IS NULL AND failed_at IS NULL AND channel = $1 ORDER BY id LIMIT 1",
            )
            .bind(rig_projections::notifier::CHANNEL)
            .fetch_optional(&self.pool)
            .await;
            let row = match next {
                Ok(Some(row)) => row,
                Ok(None) => {
                    self.export_pending().await;
                    self.idle(self.poll_interval, active, shutdown).await;
                    continue;
                }
                Err(e) => {
                    let delay = backoff.next().unwrap_or(Duration::from_secs(30));
                    tracing::warn!(error = %e, ?delay, "cannot read the outbox; retrying");
                    sleep_unless(delay, active, shutdown).await;
                    continue;
                }
            };
            if self.dry_run {
                let content = row.payload.get("content").and_then(Value::as_str).unwrap_or("");
                tracing::info!(
                    event_type = %row.event_type, event_id = %row.event_id, content,
                    "dry run: message logged, not posted"
                );
                if self.mark_sent(&row, None, active, shutdown).await {
                    metrics::counter!("rig_notifier_sent_total").increment(1);
                    self.export_pending().await;
                }
                continue;
            }
            // Not cancelled by shutdown: a post cut off mid-flight may have been delivered and
            // would be sent again; the client's timeout bounds the wait.
            match self.post(&row.payload).await {
                Posted::Sent { message_id, pause } => {
                    backoff = new_backoff();
                    if self.mark_sent(&row, message_id.as_deref(), active, shutdown).await {
                        metrics::counter!("rig_notifier_sent_total").increment(1);
                        tracing::info!(event_type = %row.event_type, event_id = %row.event_id, message_id = message_id.as_deref().unwrap_or(""), "posted to Discord");
                        self.export_pending().await;
                    }
                    if let Some(d) = pause {
                        // The bucket is empty: wait for it instead of collecting a 429.
                        sleep_unless(d, active, shutdown).await;
                    }
                }
                Posted::RateLimited(d) => {
                    metrics::counter!("rig_notifier_failed_total", "reason" => "rate_limited").increment(1);
                    tracing::warn!(event_id = %row.event_id, retry_after = ?d, "Discord rate limit (429): waiting, then sending the same message");
                    self.note_failure(&row, "429 rate limited").await;
                    sleep_unless(d, active, shutdown).await;
                }
                Posted::ServerError(status) => {
                    metrics::counter!("rig_notifier_failed_total", "reason" => "server_error").increment(1);
                    let delay = backoff.next().unwrap_or(Duration::from_secs(60));
                    tracing::warn!(event_id = %row.event_id, %status, ?delay, "Discord server error; backing off, message kept");
                    self.note_failure(&row, &format!("{status}")).await;
                    sleep_unless(delay, active, shutdown).await;
                }
                Posted::Network(error) => {
                    metrics::counter!("rig_notifier_failed_total", "reason" => "network").increment(1);
                    let delay = backoff.next().unwrap_or(Duration::from_secs(60));
                    tracing::warn!(event_id = %row.event_id, %error, ?delay, "cannot reach Discord; backing off, message kept");
                    self.note_failure(&row, &error).await;
                    sleep_unless(delay, active, shutdown).await;
                }
                Posted::WebhookRefused(status) => {
                    metrics::counter!("rig_notifier_failed_total", "reason" => "rejected").increment(1);
                    metrics::gauge!("rig_notifier_webhook_disabled").set(1.0);
                    self.note_failure(&row, &format!("{status}: webhook refused")).await;
                    self.disabled = Some(status);
                }
                Posted::PayloadRefused(status, body) => {
                    metrics::counter!("rig_notifier_failed_total", "reason" => "rejected").increment(1);
                    tracing::error!(
                        event_type = %row.event_type, event_id = %row.event_id, %status, discord = %body,
                        "Discord refused this message's content; it is set aside (notifier_outbox.failed_at) and the next one is sent"
                    );
                    let r = sqlx::query(
                        "UPDATE notifier_outbox SET failed_at = now(), attempts = attempts + 1, last_error = $2 WHERE id = $1",
                    )
                    .bind(row.id)
                    .bind(format!("{status}: {body}"))
                    .execute(&self.pool)
                    .await;
                    if let Err(e) = r {
                        tracing::warn!(error = %e, "cannot set the refused message aside; retrying");
                        sleep_unless(backoff.next().unwrap_or(Duration::from_secs(30)), active, shutdown).await;
                    }
                }
            }
        }
    }

    async fn post(&self, payload: &Value) -> Posted {
        let Some(webhook) = &self.webhook else {
            return Posted::WebhookRefused(StatusCode::NOT_FOUND);
        };
        let resp = match self.client.post(webhook.0.clone()).json(payload).send().await {
            Ok(r) => r,
            Err(e) => return Posted::Network(e.without_url().to_string()),
        };
        let status = resp.status();
        let headers = resp.headers().clone();
        let body = resp.bytes().await.unwrap_or_default();
        let json: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        if status.is_success() {
            let message_id = match json.get("id") {
                Some(Value::String(s)) => Some(s.clone()),
                Some(Value::Number(n)) => Some(n.to_string()),
                _ => None,
            };
            return Posted::Sent {
                message_id,
                pause: bucket_pause(&headers),
            };
        }
        match status {
            StatusCode::TOO_MANY_REQUESTS => Posted::RateLimited(retry_after(&json, &headers)),
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN | StatusCode::NOT_FOUND => Posted::WebhookRefused(status),
            s if s.is_server_error() => Posted::ServerError(s),
            s => Posted::PayloadRefused(s, String::from_utf8_lossy(&body).chars().take(500).collect()),
        }
    }

    /// Stores the delivery, retrying until the database takes it: forgetting it would post the
    /// message again. Returns false on shutdown or loss of leadership.
    async fn mark_sent(
        &self,
        row: &Pending,
        message_id: Option<&str>,
        active: &watch::Receiver<bool>,
        shutdown: &CancellationToken,
    ) -> bool {
        let mut backoff = new_backoff();
        loop {
            let r = sqlx::query(
                "UPDATE notifier_outbox SET sent_at = now(), message_id = $2, attempts = attempts + 1, last_error = NULL \
                 WHERE id = $1 AND sent_at IS NULL",
            )
            .bind(row.id)
            .bind(message_id)
            .execute(&self.pool)
            .await;
            match r {
                Ok(_) => return true,
                Err(e) => {
                    let delay = backoff.next().unwrap_or(Duration::from_secs(30));
                    tracing::warn!(error = %e, ?delay, event_id = %row.event_id, "message posted but not yet recorded as sent; retrying");
                    if shutdown.is_cancelled() || !*active.borrow() {
                        return false;
                    }
                    sleep_unless(delay, active, shutdown).await;
                }
            }
        }
    }

    async fn note_failure(&self, row: &Pending, error: &str) {
        let r = sqlx::query("UPDATE notifier_outbox SET attempts = attempts + 1, last_error = $2 WHERE id = $1")
            .bind(row.id)
            .bind(error)
            .execute(&self.pool)
            .await;
        if let Err(e) = r {
            tracing::warn!(error = %e, "cannot record the failed attempt");
        }
    }

    /// Exports `rig_notifier_pending` and returns it.
    async fn export_pending(&self) -> i64 {
        match sqlx::query_scalar::<_, i64>(
            "SELECT count(*) FROM notifier_outbox WHERE sent_at IS NULL AND failed_at IS NULL",
        )
        .fetch_one(&self.pool)
        .await
        {
            Ok(n) => {
                metrics::gauge!("rig_notifier_pending").set(n as f64);
                n
            }
            Err(_) => -1,
        }
    }

    /// Waits for new messages (the projection's wake-up), `max`, shutdown or loss of leadership.
    async fn idle(&self, max: Duration, active: &watch::Receiver<bool>, shutdown: &CancellationToken) {
        tokio::select! {
            _ = self.wake.notified() => {}
            _ = sleep_unless(max, active, shutdown) => {}
        }
    }
}

fn new_backoff() -> impl Iterator<Item = Duration> {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(250))
        .with_max_delay(Duration::from_secs(60))
        .with_jitter()
        .without_max_times()
        .build()
}

async fn sleep_unless(d: Duration, active: &watch::Receiver<bool>, shutdown: &CancellationToken) {
    let mut active = active.clone();
    tokio::select! {
        _ = tokio::time::sleep(d) => {}
        _ = shutdown.cancelled() => {}
        _ = async {
            while *active.borrow_and_update() {
                if active.changed().await.is_err() { break }
            }
        } => {}
    }
}

/// Discord's wait after a 429: `retry_after` in the JSON body (seconds, float), else the
/// `Retry-After` header, else one second.
pub fn retry_after(body: &Value, headers: &HeaderMap) -> Duration {
    let secs = body
        .get("retry_after")
        .and_then(Value::as_f64)
        .or_else(|| {
            headers
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .and_then(|s| s.trim().parse::<f64>().ok())
        })
        .filter(|s| s.is_finite() && *s >= 0.0)
        .unwrap_or(1.0);
    Duration::from_secs_f64(secs.min(MAX_RETRY_AFTER.as_secs_f64())).max(Duration::from_millis(50))
}

/// When Discord says the bucket is empty (`X-RateLimit-Remaining: 0`), how long until it refills.
fn bucket_pause(headers: &HeaderMap) -> Option<Duration> {
    let get = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .and_then(|s| s.trim().parse::<f64>().ok())
    };
    if get("x-ratelimit-remaining")? > 0.0 {
        return None;
    }
    let secs = get("x-ratelimit-reset-after")?;
    (secs.is_finite() && secs > 0.0).then(|| Duration::from_secs_f64(secs.min(MAX_RETRY_AFTER.as_secs_f64())))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    #[test]
    fn wait_true_is_added_once_and_other_parameters_kept() {
        let w = |u: &str| Webhook::parse(u).unwrap().expose_url().to_string();
        assert_eq!(
            w("https://discord.com/api/webhooks/1/tok"),
            "https://discord.com/api/webhooks/1/tok?wait=true"
        );
        assert_eq!(
            w("https://discord.com/api/webhooks/1/tok?thread_id=5"),
            "https://discord.com/api/webhooks/1/tok?thread_id=5&wait=true"
        );
        assert_eq!(
            w("https://discord.com/api/webhooks/1/tok?wait=false"),
            "https://discord.com/api/webhooks/1/tok?wait=true"
        );
        let e = Webhook::parse("not a url with secret-token").unwrap_err().to_string();
        assert!(
            e.contains("notifier.discord_webhook_url") && !e.contains("secret-token"),
            "{e}"
        );
        assert!(!format!(
            "{:?}",
            Webhook::parse("https://x.test/api/webhooks/1/secret-token").unwrap()
        )
        .contains("secret"));
    }

    #[test]
    fn retry_after_comes_from_the_body_then_the_header() {
        let mut h = HeaderMap::new();
        assert_eq!(
            retry_after(&json!({"retry_after": 0.75}), &h),
            Duration::from_millis(750)
        );
        h.insert("retry-after", "2".parse().unwrap());
        assert_eq!(retry_after(&Value::Null, &h), Duration::from_secs(2));
        assert_eq!(retry_after(&json!({"retry_after": 1e12}), &h), MAX_RETRY_AFTER);
        assert_eq!(retry_after(&Value::Null, &HeaderMap::new()), Duration::from_secs(1));
        let mut b = HeaderMap::new();
        b.insert("x-ratelimit-remaining", "0".parse().unwrap());
        b.insert("x-ratelimit-reset-after", "1.5".parse().unwrap());
        assert_eq!(bucket_pause(&b), Some(Duration::from_millis(1500)));
        b.insert("x-ratelimit-remaining", "3".parse().unwrap());
        assert_eq!(bucket_pause(&b), None);
    }
}
