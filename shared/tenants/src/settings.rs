//! Per-tenant settings: what one organisation configures for itself, over the deployment's
//! defaults from the configuration file. Each value is checked before it is stored, so the
//! processes that read them never meet a bad one.

use rig_events::money::Price;
use secrecy::SecretString;
use sqlx::PgPool;
use std::collections::HashMap;
use std::time::Duration;

/// The keys `rigctl tenants set` takes, with what each expects.
pub const SETTING_KEYS: &[(&str, &str)] = &[
    (
        "notifier.discord_webhook_url",
        "the tenant's Discord webhook URL (https://…; secret)",
    ),
    (
        "notifier.events",
        "the event types to post, comma-separated (e.g. AGENT_STUCK,MERGED)",
    ),
    (
        "stale_heartbeat.threshold",
        "how long an agent may be quiet on an issue, e.g. 45m",
    ),
    (
        "github.webhook_secret",
        "the secret of the tenant's GitHub webhooks (secret)",
    ),
    (
        "github.approve_label",
        "the label that approves an issue for the agents, e.g. agent-ready",
    ),
    (
        "prices",
        "the tenant's price table as JSON: [{\"model\": …, \"effective_from\": \"2025-09-29\", …}]",
    ),
];

/// Keys whose values are secrets: stored, never printed back.
pub fn is_secret(key: &str) -> bool {
    matches!(key, "notifier.discord_webhook_url" | "github.webhook_secret")
}

/// A tenant's settings; `None` means "the deployment's value".
#[derive(Debug, Clone, Default)]
pub struct TenantSettings {
    pub discord_webhook_url: Option<SecretString>,
    pub notifier_events: Option<Vec<String>>,
    pub stale_threshold: Option<Duration>,
    pub webhook_secret: Option<SecretString>,
    pub approve_label: Option<String>,
    pub prices: Option<Vec<Price>>,
}

/// Refuses a key that is not a setting, naming the ones there are.
fn known(key: &str) -> Result<(), String> {
    if SETTING_KEYS.iter().any(|(k, _)| *k == key) {
        return Ok(());
    }
    let keys: Vec<&str> = SETTING_KEYS.iter().map(|(k, _)| *k).collect();
    Err(format!("unknown setting {key:?}; the settings are {}", keys.join(", ")))
}

/// Checks one setting; the value as it is stored, or why it is refused.
pub fn check(key: &str, value: &str) -> Result<String, String> {
    known(key)?;
    let value = value.trim();
    if value.is_empty() {
        return Err(format!(
            "{key}: the value is empty (to go back to the deployment's value, use --unset)"
        ));
    }
    if value.contains('\0') {
        return Err(format!("{key}: the value contains a NUL character"));
    }
    match key {
        "notifier.discord_webhook_url" => {
            let u = url::Url::parse(value).map_err(|_| format!("{key}: not a URL"))?;
            if !matches!(u.scheme(), "https" | "http") || u.host_str().is_none() {
                return Err(format!("{key}: expected an https:// webhook URL"));
            }
        }
        "notifier.events" => {
            for t in value.split(',').map(str::trim) {
                if rig_events::EventType::from_name(t).is_none() {
                    return Err(format!("{key}: {t:?} is not an event type"));
                }
            }
            return Ok(value.split(',').map(str::trim).collect::<Vec<_>>().join(","));
        }
        "stale_heartbeat.threshold" => {
            let d = humantime::parse_duration(value).map_err(|e| format!("{key}: {e} (expected e.g. 45m)"))?;
            if d < Duration::from_secs(1) || d > Duration::from_secs(30 * 86_400) {
                return Err(format!("{key}: expected a duration from 1s to 30 days"));
            }
        }
        "github.webhook_secret" => {}
        "github.approve_label" if value.chars().count() > 100 => {
            return Err(format!("{key}: a GitHub label is at most 100 characters"));
        }
        "prices" => {
            let prices: Vec<Price> =
                serde_json::from_str(value).map_err(|e| format!("{key}: not a list of prices: {e}"))?;
            for p in &prices {
                if p.model.trim().is_empty() {
                    return Err(format!("{key}: every price names a model"));
                }
                let rates = [
                    p.input_per_mtok,
                    p.output_per_mtok,
                    p.cache_read_per_mtok,
                    p.cache_write_per_mtok,
                ];
                if rates.iter().any(|r| r.is_sign_negative()) {
                    return Err(format!("{key}: prices are not negative"));
                }
            }
        }
        _ => {}
    }
    Ok(value.to_owned())
}

impl TenantSettings {
    /// Builds the settings from stored rows (checked when stored; a row that no longer reads is
    /// ignored rather than stopping a process).
    fn from_rows(rows: impl IntoIterator<Item = (String, String)>) -> TenantSettings {
        let mut s = TenantSettings::default();
        for (key, value) in rows {
            match key.as_str() {
                "notifier.discord_webhook_url" => s.discord_webhook_url = Some(SecretString::from(value)),
                "notifier.events" => s.notifier_events = Some(value.split(',').map(str::to_owned).collect()),
                "stale_heartbeat.threshold" => s.stale_threshold = humantime::parse_duration(&value).ok(),
                "github.webhook_secret" => s.webhook_secret = Some(SecretString::from(value)),
                "github.approve_label" => s.approve_label = Some(value),
                "prices" => s.prices = serde_json::from_str(&value).ok(),
                _ => {}
            }
        }
        s
    }

    /// One tenant's settings.
    pub async fn load(control: &PgPool, slug: &str) -> Result<TenantSettings, sqlx::Error> {
        let rows: Vec<(String, String)> = sqlx::query_as("SELECT key, value FROM tenant_settings WHERE tenant = $1")
            .bind(slug)
            .fetch_all(control)
            .await?;
        Ok(TenantSettings::from_rows(rows))
    }

    /// Every tenant's settings, by slug.
    pub async fn load_all(control: &PgPool) -> Result<HashMap<String, TenantSettings>, sqlx::Error> {
        let rows: Vec<(String, String, String)> =
            sqlx::query_as("SELECT tenant, key, value FROM tenant_settings ORDER BY tenant")
                .fetch_all(control)
                .await?;
        let mut by: HashMap<String, Vec<(String, String)>> = HashMap::new();
        for (t, k, v) in rows {
            by.entry(t).or_default().push((k, v));
        }
        Ok(by
            .into_iter()
            .map(|(t, rows)| (t, TenantSettings::from_rows(rows)))
            .collect())
    }
}

/// Checks and stores one setting (`value` `None` removes it).
pub async fn set(control: &PgPool, slug: &str, key: &str, value: Option<&str>) -> anyhow::Result<()> {
    match value {
        Some(v) => {
            let v = check(key, v).map_err(anyhow::Error::msg)?;
            sqlx::query(
                "INSERT INTO tenant_settings (tenant, key, value) VALUES ($1, $2, $3) \
                 ON CONFLICT (tenant, key) DO UPDATE SET value = EXCLUDED.value, updated_at = now()",
            )
            .bind(slug)
            .bind(key)
            .bind(v)
            .execute(control)
            .await?;
        }
        None => {
            known(key).map_err(anyhow::Error::msg)?;
            sqlx::query("DELETE FROM tenant_settings WHERE tenant = $1 AND key = $2")
                .bind(slug)
                .bind(key)
                .execute(control)
                .await?;
        }
    }
    Ok(())
}

/// The settings a tenant has, for display: secrets show as `(set)`.
pub async fn shown(control: &PgPool, slug: &str) -> Result<Vec<(String, String)>, sqlx::Error> {
    let rows: Vec<(String, String)> =
        sqlx::query_as("SELECT key, value FROM tenant_settings WHERE tenant = $1 ORDER BY key")
            .bind(slug)
            .fetch_all(control)
            .await?;
    Ok(rows
        .into_iter()
        .map(|(k, v)| {
            let v = if is_secret(&k) { "(set)".to_owned() } else { v };
            (k, v)
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_are_checked() {
        assert!(check("notifier.discord_webhook_url", "https://discord.com/api/webhooks/1/x").is_ok());
        assert!(check("notifier.discord_webhook_url", "discord").is_err());
        assert_eq!(
            check("notifier.events", "MERGED, CI_FAILED").unwrap(),
            "MERGED,CI_FAILED"
        );
        assert!(check("notifier.events", "MERGED,NOPE").is_err());
        assert!(check("stale_heartbeat.threshold", "45m").is_ok());
        assert!(check("stale_heartbeat.threshold", "soon").is_err());
        assert!(check("github.approve_label", " ").is_err());
        assert!(check(
            "prices",
            r#"[{"model":"m","effective_from":"2025-01-01","input_per_mtok":"3","output_per_mtok":15}]"#
        )
        .is_ok());
        assert!(check(
            "prices",
            r#"[{"model":"m","effective_from":"2025-01-01","input_per_mtok":"-3","output_per_mtok":15}]"#
        )
        .is_err());
        assert!(check("colour", "blue").unwrap_err().contains("unknown setting"));
    }

    #[test]
    fn stored_rows_read_back() {
        let s = TenantSettings::from_rows([
            ("notifier.events".to_owned(), "MERGED,CI_FAILED".to_owned()),
            ("stale_heartbeat.threshold".to_owned(), "45m".to_owned()),
            ("github.approve_label".to_owned(), "go".to_owned()),
        ]);
        assert_eq!(s.notifier_events.unwrap(), ["MERGED", "CI_FAILED"]);
        assert_eq!(s.stale_threshold, Some(Duration::from_secs(45 * 60)));
        assert_eq!(s.approve_label.as_deref(), Some("go"));
        assert!(s.webhook_secret.is_none());
    }
}
