//! Configuration: one typed struct, layered defaults → TOML file (`rig.toml`, or the path in
//! `RIG_CONFIG`) → `RIG_…` environment variables with `__` for nesting → `DATABASE_URL`.
//! Secrets are `SecretString`s: they print as `[REDACTED]` in `Debug` and never reach logs.
//! A bad value fails at start with the key's name and what was expected.

use crate::money::Price;
use figment::providers::{Env, Format, Toml};
use figment::Figment;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

pub const DEFAULT_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/rig";

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    pub database_url: DatabaseUrl,
    pub ingest: IngestSettings,
    pub consumer: ConsumerSettings,
    pub stale_heartbeat: StaleHeartbeatSettings,
    pub cost_projector: WorkerSettings,
    pub token_projector: WorkerSettings,
    pub notifier: NotifierSettings,
    pub prices: Vec<Price>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            database_url: DatabaseUrl(DEFAULT_DATABASE_URL.to_owned()),
            ingest: IngestSettings::default(),
            consumer: ConsumerSettings::default(),
            stale_heartbeat: StaleHeartbeatSettings::default(),
            cost_projector: WorkerSettings::on(9103),
            token_projector: WorkerSettings::on(9104),
            notifier: NotifierSettings::default(),
            prices: Vec::new(),
        }
    }
}

/// A Postgres URL whose password never shows in `Debug` or `Display`.
#[derive(Clone, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct DatabaseUrl(pub String);

impl DatabaseUrl {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for DatabaseUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&redact_url_password(&self.0))
    }
}

impl std::fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", redact_url_password(&self.0))
    }
}

/// `postgres://user:secret@host/db` → `postgres://user:***@host/db`.
pub fn redact_url_password(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return url.to_owned();
    };
    let rest = &url[scheme_end + 3..];
    let Some(at) = rest.find('@') else {
        return url.to_owned();
    };
    let creds = &rest[..at];
    match creds.find(':') {
        Some(colon) => format!("{}{}:***{}", &url[..scheme_end + 3], &creds[..colon], &rest[at..]),
        None => url.to_owned(),
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IngestSettings {
    pub listen: SocketAddr,
    /// Bearer tokens accepted for writes; empty = open (allowed on loopback only).
    pub auth_tokens: Vec<SecretString>,
    pub allow_open: bool,
    pub max_body_bytes: usize,
    pub github: GithubSettings,
    /// Most append requests one group-commit transaction takes.
    pub max_batch_requests: usize,
}

impl Default for IngestSettings {
    fn default() -> Self {
        IngestSettings {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            auth_tokens: Vec::new(),
            allow_open: false,
            max_body_bytes: 1_048_576,
            github: GithubSettings::default(),
            max_batch_requests: 512,
        }
    }
}

impl IngestSettings {
    /// True when `token` is one of the configured tokens (constant time per candidate).
    pub fn token_ok(&self, token: &str) -> bool {
        self.auth_tokens.iter().fold(false, |ok, t| {
            ok | constant_time_eq(t.expose_secret().as_bytes(), token.as_bytes())
        })
    }
}

pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GithubSettings {
    /// Unset = signatures not checked (allowed on loopback only).
    pub webhook_secret: Option<SecretString>,
    pub approve_label: String,
    pub branch_issue_pattern: String,
}

impl Default for GithubSettings {
    fn default() -> Self {
        GithubSettings {
            webhook_secret: None,
            approve_label: "agent-ready".to_owned(),
            branch_issue_pattern: r"(?:^|/)(?:issue-)?(\d+)(?:-|$)".to_owned(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ConsumerSettings {
    pub batch_size: i64,
    #[serde(with = "humantime_serde")]
    pub poll_interval: Duration,
}

impl Default for ConsumerSettings {
    fn default() -> Self {
        ConsumerSettings {
            batch_size: 500,
            poll_interval: Duration::from_secs(1),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkerSettings {
    pub metrics_listen: SocketAddr,
}

impl WorkerSettings {
    fn on(port: u16) -> Self {
        WorkerSettings {
            metrics_listen: SocketAddr::from(([127, 0, 0, 1], port)),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StaleHeartbeatSettings {
    pub metrics_listen: SocketAddr,
    #[serde(with = "humantime_serde")]
    pub threshold: Duration,
    #[serde(with = "humantime_serde")]
    pub check_interval: Duration,
    pub ingest_url: String,
    pub ingest_token: Option<SecretString>,
}

impl Default for StaleHeartbeatSettings {
    fn default() -> Self {
        StaleHeartbeatSettings {
            metrics_listen: SocketAddr::from(([127, 0, 0, 1], 9102)),
            threshold: Duration::from_secs(30 * 60),
            check_interval: Duration::from_secs(60),
            ingest_url: "http://127.0.0.1:8080".to_owned(),
            ingest_token: None,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NotifierSettings {
    pub metrics_listen: SocketAddr,
    pub discord_webhook_url: Option<SecretString>,
    pub events: Vec<String>,
    pub dry_run: bool,
}

impl Default for NotifierSettings {
    fn default() -> Self {
        NotifierSettings {
            metrics_listen: SocketAddr::from(([127, 0, 0, 1], 9105)),
            discord_webhook_url: None,
            events: [
                "AGENT_STUCK",
                "CI_FAILED",
                "HUMAN_GATE_TRIGGERED",
                "ESCALATED",
                "MERGED",
                "ISSUE_DONE",
            ]
            .map(String::from)
            .to_vec(),
            dry_run: false,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration file {path} (from RIG_CONFIG) does not exist")]
    MissingFile { path: PathBuf },
    #[error("bad configuration: {0}")]
    Invalid(String),
}

impl Settings {
    /// Loads the layered configuration from the process environment.
    pub fn load() -> Result<Settings, ConfigError> {
        let path = std::env::var_os("RIG_CONFIG").map(PathBuf::from);
        if let Some(p) = &path {
            if !p.exists() {
                return Err(ConfigError::MissingFile { path: p.clone() });
            }
        }
        Self::figment(path.unwrap_or_else(|| PathBuf::from("rig.toml"))).and_then(Self::extract)
    }

    /// The layered providers, for tests that add their own on top.
    pub fn figment(toml_path: PathBuf) -> Result<Figment, ConfigError> {
        // No rig.toml is fine (defaults and environment); RIG_CONFIG naming a missing file is not,
        // and `load` reports that before we get here.
        let mut fig = Figment::new();
        if toml_path.exists() {
            fig = fig.merge(Toml::file_exact(toml_path));
        }
        fig = fig.merge(
            // RIG_CONFIG and RIG_LOG_FORMAT steer the process, they are not settings; nor is
            // RIG_SIMULATE_TOKEN, the token `rigctl simulate` sends (read by clap).
            Env::prefixed("RIG_")
                .ignore(&["config", "log_format", "simulate_token"])
                .split("__"),
        );
        if let Ok(url) = std::env::var("DATABASE_URL") {
            fig = fig.merge(("database_url", url));
        }
        Ok(fig)
    }

    pub fn extract(fig: Figment) -> Result<Settings, ConfigError> {
        let s: Settings = fig
            .extract()
            .map_err(|e| ConfigError::Invalid(describe_figment_error(e)))?;
        s.validate()?;
        Ok(s)
    }

    /// Checks that serde's types cannot express.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |key: &str, what: &str| Err(ConfigError::Invalid(format!("{key}: {what}")));
        let url = self.database_url.expose();
        if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
            return bad("database_url", "expected a postgres:// URL");
        }
        if self.ingest.max_body_bytes < 1024 {
            return bad("ingest.max_body_bytes", "expected at least 1024 bytes");
        }
        if self.ingest.max_batch_requests == 0 {
            return bad("ingest.max_batch_requests", "expected at least 1");
        }
        if self
            .ingest
            .auth_tokens
            .iter()
            .any(|t| t.expose_secret().trim().is_empty())
        {
            return bad("ingest.auth_tokens", "expected non-empty tokens");
        }
        if let Err(e) = regex::Regex::new(&self.ingest.github.branch_issue_pattern) {
            return bad("ingest.github.branch_issue_pattern", &format!("not a valid regex: {e}"));
        }
        if !(1..=100_000).contains(&self.consumer.batch_size) {
            return bad("consumer.batch_size", "expected an integer from 1 to 100000");
        }
        if self.consumer.poll_interval.is_zero() {
            return bad("consumer.poll_interval", "expected a duration above zero, e.g. \"1s\"");
        }
        if self.stale_heartbeat.threshold.is_zero() {
            return bad(
                "stale_heartbeat.threshold",
                "expected a duration above zero, e.g. \"30m\"",
            );
        }
        if self.stale_heartbeat.check_interval.is_zero() {
            return bad(
                "stale_heartbeat.check_interval",
                "expected a duration above zero, e.g. \"60s\"",
            );
        }
        let u = &self.stale_heartbeat.ingest_url;
        if !(u.starts_with("http://") || u.starts_with("https://")) {
            return bad("stale_heartbeat.ingest_url", "expected an http:// or https:// URL");
        }
        if let Some(u) = &self.notifier.discord_webhook_url {
            let u = u.expose_secret();
            if !(u.starts_with("http://") || u.starts_with("https://")) {
                return bad("notifier.discord_webhook_url", "expected an http:// or https:// URL");
            }
        }
        for (i, t) in self.notifier.events.iter().enumerate() {
            if !crate::events::is_upper_snake(t) {
                return bad(&format!("notifier.events[{i}]"), "expected an UPPER_SNAKE event type");
            }
        }
        let mut seen = std::collections::HashSet::new();
        for (i, p) in self.prices.iter().enumerate() {
            if p.model.trim().is_empty() {
                return bad(&format!("prices[{i}].model"), "expected a model name");
            }
            if !seen.insert((p.model.clone(), p.effective_from)) {
                return bad(
                    &format!("prices[{i}]"),
                    &format!("a second row for model {:?} from {}", p.model, p.effective_from),
                );
            }
        }
        Ok(())
    }
}

/// figment's message, reduced to one line per problem that names the key.
fn describe_figment_error(e: figment::Error) -> String {
    e.into_iter()
        .map(|e| {
            let key = if e.path.is_empty() {
                "(top level)".to_owned()
            } else {
                e.path.join(".")
            };
            let source = e
                .metadata
                .as_ref()
                .map(|m| format!(" (from {})", m.name))
                .unwrap_or_default();
            format!("{key}: {}{source}", e.kind)
        })
        .collect::<Vec<_>>()
        .join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use figment::providers::Serialized;

    fn from_toml(toml: &str) -> Result<Settings, ConfigError> {
        Settings::extract(Figment::new().merge(Toml::string(toml)))
    }

    #[test]
    fn a_missing_rig_toml_means_defaults() {
        let fig = Settings::figment(PathBuf::from("/nonexistent/rig.toml")).unwrap();
        let s: Settings = fig.extract().unwrap();
        assert_eq!(s.ingest.listen.port(), 8080);
    }

    #[test]
    fn defaults_match_the_spec() {
        let s = from_toml("").unwrap();
        assert_eq!(s.ingest.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(s.ingest.max_body_bytes, 1_048_576);
        assert_eq!(s.consumer.batch_size, 500);
        assert_eq!(s.stale_heartbeat.threshold, Duration::from_secs(1800));
        assert_eq!(s.stale_heartbeat.metrics_listen.port(), 9102);
        assert_eq!(s.cost_projector.metrics_listen.port(), 9103);
        assert_eq!(s.token_projector.metrics_listen.port(), 9104);
        assert_eq!(s.notifier.metrics_listen.port(), 9105);
        assert_eq!(s.notifier.events.len(), 6);
        assert_eq!(s.ingest.github.approve_label, "agent-ready");
    }

    #[test]
    fn bad_values_name_their_key() {
        let e = from_toml("[ingest]\nlisten = \"nope\"").unwrap_err().to_string();
        assert!(e.contains("ingest.listen"), "{e}");
        let e = from_toml("[consumer]\npoll_interval = \"soon\"")
            .unwrap_err()
            .to_string();
        assert!(e.contains("consumer.poll_interval"), "{e}");
        let e = from_toml("[consumer]\nbatch_size = 0").unwrap_err().to_string();
        assert!(e.contains("consumer.batch_size"), "{e}");
        let e = from_toml("[ingest]\nlisen = \"x\"").unwrap_err().to_string();
        assert!(e.contains("lisen"), "{e}");
        let e = from_toml(
            "[[prices]]\nmodel = \"m\"\neffective_from = \"2025-01-01\"\ninput_per_mtok = \"-1\"\noutput_per_mtok = 1",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("prices"), "{e}");
    }

    #[test]
    fn prices_accept_strings_and_numbers() {
        let s = from_toml(
            "[[prices]]\nmodel = \"m\"\neffective_from = \"2025-09-29\"\ninput_per_mtok = \"3.00\"\noutput_per_mtok = 15\ncache_read_per_mtok = 0.3\ncache_write_per_mtok = \"3.75\"",
        )
        .unwrap();
        assert_eq!(s.prices[0].input_per_mtok.to_string(), "3.00");
        assert_eq!(s.prices[0].cache_read_per_mtok.to_string(), "0.3");
    }

    #[test]
    fn secrets_never_show_in_debug() {
        let s = Settings::extract(
            Figment::new()
                .merge(Serialized::default("ingest.auth_tokens", vec!["tok-very-secret"]))
                .merge(Serialized::default("ingest.github.webhook_secret", "hook-very-secret"))
                .merge(Serialized::default(
                    "notifier.discord_webhook_url",
                    "https://discord.test/api/webhooks/1/very-secret",
                ))
                .merge(Serialized::default(
                    "stale_heartbeat.ingest_token",
                    "ingest-very-secret",
                ))
                .merge(Serialized::default("database_url", "postgres://u:pw-very-secret@h/db")),
        )
        .unwrap();
        let dbg = format!("{s:?}");
        assert!(!dbg.contains("very-secret"), "{dbg}");
        assert!(s.ingest.token_ok("tok-very-secret"));
        assert!(!s.ingest.token_ok("tok-very-secreT"));
    }
}
