//! Configuration: one typed struct, layered defaults → TOML file (`rig.toml`, or the path in
//! `RIG_CONFIG`) → `RIG_…` environment variables with `__` for nesting → `DATABASE_URL`.
//! Secrets are `SecretString`s: they print as `[REDACTED]` in `Debug` and never reach logs, and
//! an error about one names the key but never shows the value.
//! A bad value fails at start with the key's name and what was expected.
//!
//! Environment variables: `RIG_A__B=v` sets `a.b`. A variable whose top-level name is not a
//! setting (`RIG_LOG_FORMAT`, `RIG_FAULT_SEED`, Kubernetes' `RIG_INGEST_SERVICE_HOST`) is not
//! configuration and is ignored; one under a known section is checked as strictly as the file,
//! so `RIG_INGEST__LISTN` fails naming `listn`. Values are parsed as figment's `Env` does
//! (`[1, 2]` is a list, `123` a number), except secrets, which are taken as the exact text:
//! `RIG_STALE_HEARTBEAT__INGEST_TOKEN=0123` is the token "0123", not the number 123.

use figment::error::{Actual, Kind};
use figment::providers::{Format, Toml};
use figment::value::{Dict, Map, Value};
use figment::{Figment, Metadata, Profile, Provider};
use rig_events::money::Price;
use secrecy::{ExposeSecret, SecretString};
use serde::de::{self, Deserializer, Unexpected, Visitor};
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

pub const DEFAULT_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/rig";

/// The top-level keys of [`Settings`]: a `RIG_` variable is configuration only under one of them.
pub const SETTINGS_KEYS: &[&str] = &[
    "database_url",
    "ingest",
    "consumer",
    "stale_heartbeat",
    "cost_projector",
    "token_projector",
    "notifier",
    "prices",
];

/// The keys whose values are secrets: read from the environment as exact text, and never shown
/// in an error message.
pub const SECRET_KEYS: &[&str] = &[
    "database_url",
    "ingest.database_url",
    "token_projector.database_url",
    "cost_projector.database_url",
    "stale_heartbeat.database_url",
    "notifier.database_url",
    "ingest.auth_tokens",
    "ingest.github.webhook_secret",
    "stale_heartbeat.ingest_token",
    "notifier.discord_webhook_url",
];

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    pub database_url: DatabaseUrl,
    pub ingest: IngestSettings,
    pub consumer: ConsumerSettings,
    pub stale_heartbeat: StaleHeartbeatSettings,
    #[serde(deserialize_with = "cost_projector_section")]
    pub cost_projector: WorkerSettings,
    #[serde(deserialize_with = "token_projector_section")]
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

impl Settings {
    /// The URL `role`'s process connects with: its section's `database_url` when set (the URL of
    /// its own least-privilege role, see `roles`), else the top-level `database_url`.
    pub fn database_url_for(&self, role: rig_log::roles::Role) -> &DatabaseUrl {
        self.own_database_url(role).unwrap_or(&self.database_url)
    }

    /// `role`'s section's `database_url`, when set.
    pub fn own_database_url(&self, role: rig_log::roles::Role) -> Option<&DatabaseUrl> {
        use rig_log::roles::Role;
        match role {
            Role::Ingest => self.ingest.database_url.as_ref(),
            Role::TokenProjector => self.token_projector.database_url.as_ref(),
            Role::CostProjector => self.cost_projector.database_url.as_ref(),
            Role::StaleHeartbeat => self.stale_heartbeat.database_url.as_ref(),
            Role::Notifier => self.notifier.database_url.as_ref(),
        }
    }
}

/// A Postgres URL whose password never shows in `Debug` or `Display`.
#[derive(Clone, PartialEq, Eq)]
pub struct DatabaseUrl(pub String);

impl<'de> Deserialize<'de> for DatabaseUrl {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        SecretText::deserialize(d).map(|t| DatabaseUrl(t.0))
    }
}

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
    /// The database URL ingest connects with, as the `rig_ingest` role; unset = `database_url`.
    pub database_url: Option<DatabaseUrl>,
    pub listen: SocketAddr,
    /// Bearer tokens accepted for writes; empty = open (allowed on loopback only). A list, or
    /// one string of comma-separated tokens (`RIG_INGEST__AUTH_TOKENS=tok1,tok2`).
    #[serde(deserialize_with = "secret_list")]
    pub auth_tokens: Vec<SecretString>,
    pub allow_open: bool,
    pub max_body_bytes: usize,
    pub github: GithubSettings,
    /// Most append requests one group-commit transaction takes.
    pub max_batch_requests: usize,
    /// Connections in the pool that serves reads (streams, lists, the dashboard), apart from the
    /// writer's, so a burst of reads queues here instead of taking the appends' connections.
    pub read_pool_size: u32,
    /// Longest any one SQL statement of ingest's writer may run before Postgres cancels it.
    #[serde(with = "humantime_serde")]
    pub statement_timeout: Duration,
    /// Longest any one SQL statement of a read may run.
    #[serde(with = "humantime_serde")]
    pub read_statement_timeout: Duration,
    /// How long a client has to send a request's headers, counted from the moment the
    /// connection opens or its previous answer was sent: a slow sender is cut off, and an idle
    /// keep-alive connection is closed after this long.
    #[serde(with = "humantime_serde")]
    pub header_read_timeout: Duration,
    /// Longest one request may take, body read and answer included (408 after it).
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// Most client connections served at once; past it, new connections wait to be accepted.
    pub max_connections: usize,
    /// After SIGTERM, how long in-flight requests have to finish before ingest exits anyway.
    #[serde(with = "humantime_serde")]
    pub shutdown_timeout: Duration,
}

impl Default for IngestSettings {
    fn default() -> Self {
        IngestSettings {
            database_url: None,
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            auth_tokens: Vec::new(),
            allow_open: false,
            max_body_bytes: 1_048_576,
            github: GithubSettings::default(),
            max_batch_requests: 512,
            read_pool_size: 4,
            statement_timeout: Duration::from_secs(30),
            read_statement_timeout: Duration::from_secs(5),
            header_read_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(30),
            max_connections: 512,
            shutdown_timeout: Duration::from_secs(10),
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
    #[serde(deserialize_with = "some_secret")]
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

/// A worker whose only setting is where it serves `/metrics`. Each section has its own default
/// port, so it is read through [`cost_projector_section`] or [`token_projector_section`].
#[derive(Debug, Clone)]
pub struct WorkerSettings {
    /// The database URL the worker connects with, as its own role; unset = `database_url`.
    pub database_url: Option<DatabaseUrl>,
    pub metrics_listen: SocketAddr,
}

impl WorkerSettings {
    fn on(port: u16) -> Self {
        WorkerSettings {
            database_url: None,
            metrics_listen: SocketAddr::from(([127, 0, 0, 1], port)),
        }
    }
}

/// A worker section as written: any field left out takes its default.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WorkerSection {
    database_url: Option<DatabaseUrl>,
    metrics_listen: Option<SocketAddr>,
}

fn worker_section<'de, D: Deserializer<'de>>(d: D, port: u16) -> Result<WorkerSettings, D::Error> {
    let section = WorkerSection::deserialize(d)?;
    let default = WorkerSettings::on(port);
    Ok(WorkerSettings {
        database_url: section.database_url,
        metrics_listen: section.metrics_listen.unwrap_or(default.metrics_listen),
    })
}

fn cost_projector_section<'de, D: Deserializer<'de>>(d: D) -> Result<WorkerSettings, D::Error> {
    worker_section(d, 9103)
}

fn token_projector_section<'de, D: Deserializer<'de>>(d: D) -> Result<WorkerSettings, D::Error> {
    worker_section(d, 9104)
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StaleHeartbeatSettings {
    /// The database URL the worker connects with, as its own role; unset = `database_url`.
    pub database_url: Option<DatabaseUrl>,
    pub metrics_listen: SocketAddr,
    #[serde(with = "humantime_serde")]
    pub threshold: Duration,
    #[serde(with = "humantime_serde")]
    pub check_interval: Duration,
    pub ingest_url: String,
    #[serde(deserialize_with = "some_secret")]
    pub ingest_token: Option<SecretString>,
}

impl Default for StaleHeartbeatSettings {
    fn default() -> Self {
        StaleHeartbeatSettings {
            database_url: None,
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
    /// The database URL the worker connects with, as its own role; unset = `database_url`.
    pub database_url: Option<DatabaseUrl>,
    pub metrics_listen: SocketAddr,
    #[serde(deserialize_with = "some_secret")]
    pub discord_webhook_url: Option<SecretString>,
    pub events: Vec<String>,
    pub dry_run: bool,
}

impl Default for NotifierSettings {
    fn default() -> Self {
        NotifierSettings {
            database_url: None,
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

    /// The layered providers over the process environment, for tests that add their own on top.
    pub fn figment(toml_path: PathBuf) -> Result<Figment, ConfigError> {
        let vars =
            std::env::vars_os().map(|(k, v)| (k.to_string_lossy().into_owned(), v.to_string_lossy().into_owned()));
        Self::figment_with_env(toml_path, vars)
    }

    /// The layered providers, with `vars` standing in for the process environment.
    pub fn figment_with_env(
        toml_path: PathBuf,
        vars: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Figment, ConfigError> {
        // No rig.toml is fine (defaults and environment); RIG_CONFIG naming a missing file is not,
        // and `load` reports that before we get here.
        let mut fig = Figment::new();
        if toml_path.exists() {
            fig = fig.merge(Toml::file_exact(toml_path));
        }
        let vars: Vec<(String, String)> = vars.into_iter().collect();
        let (rig, ignored) = EnvLayer::rig(&vars);
        for name in ignored {
            // Only the name: the value may be anything, a secret included.
            if name.contains("__") {
                tracing::warn!(variable = %name, "ignoring an environment variable: its top-level name is not a setting");
            } else {
                tracing::debug!(variable = %name, "ignoring an environment variable that is not a setting");
            }
        }
        fig = fig.merge(rig);
        if let Some((_, url)) = vars.iter().find(|(k, _)| k == "DATABASE_URL") {
            fig = fig.merge(EnvLayer::database_url(url));
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
        let urls = std::iter::once(("database_url".to_owned(), Some(&self.database_url))).chain(
            rig_log::roles::ROLES
                .into_iter()
                .map(|r| (format!("{}.database_url", r.section()), self.own_database_url(r))),
        );
        for (key, url) in urls {
            if let Some(url) = url.map(DatabaseUrl::expose) {
                if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
                    return bad(&key, "expected a postgres:// URL");
                }
            }
        }
        if self.ingest.max_body_bytes < 1024 {
            return bad("ingest.max_body_bytes", "expected at least 1024 bytes");
        }
        if self.ingest.max_batch_requests == 0 {
            return bad("ingest.max_batch_requests", "expected at least 1");
        }
        if !(1..=1000).contains(&self.ingest.read_pool_size) {
            return bad("ingest.read_pool_size", "expected an integer from 1 to 1000");
        }
        if !(1..=1_000_000).contains(&self.ingest.max_connections) {
            return bad("ingest.max_connections", "expected an integer from 1 to 1000000");
        }
        for (key, d) in [
            ("ingest.statement_timeout", self.ingest.statement_timeout),
            ("ingest.read_statement_timeout", self.ingest.read_statement_timeout),
            ("ingest.header_read_timeout", self.ingest.header_read_timeout),
            ("ingest.request_timeout", self.ingest.request_timeout),
            ("ingest.shutdown_timeout", self.ingest.shutdown_timeout),
        ] {
            // Postgres takes statement_timeout in whole milliseconds; 0 there would mean "none".
            if d < Duration::from_millis(1) || d > Duration::from_secs(24 * 3600) {
                return bad(key, "expected a duration from 1ms to 24h, e.g. \"10s\"");
            }
        }
        if self
            .ingest
            .auth_tokens
            .iter()
            .any(|t| t.expose_secret().trim().is_empty())
        {
            return bad("ingest.auth_tokens", "expected non-empty tokens");
        }
        // A secret set to nothing is a mistake (a variable left empty, a template not filled in),
        // never a request to switch the check off: leave the key out for that.
        let optional_secrets = [
            ("ingest.github.webhook_secret", &self.ingest.github.webhook_secret),
            ("stale_heartbeat.ingest_token", &self.stale_heartbeat.ingest_token),
            ("notifier.discord_webhook_url", &self.notifier.discord_webhook_url),
        ];
        for (key, secret) in optional_secrets {
            if secret.as_ref().is_some_and(|s| s.expose_secret().trim().is_empty()) {
                return bad(key, "expected a non-empty value; leave the key out to unset it");
            }
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
            if !rig_events::is_upper_snake(t) {
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

/// Settings from environment variables, as a figment provider.
struct EnvLayer {
    name: &'static str,
    dict: Dict,
}

impl EnvLayer {
    /// The `RIG_…` variables under a top-level setting, and the names of the others (ignored:
    /// `RIG_CONFIG`, `RIG_LOG_FORMAT`, `RIG_SIMULATE_TOKEN` and whatever else shares the prefix).
    /// Keys as figment's `Env::prefixed("RIG_").split("__")` makes them.
    fn rig(vars: &[(String, String)]) -> (EnvLayer, Vec<String>) {
        let mut dict = Dict::new();
        let mut ignored = Vec::new();
        for (name, raw) in vars {
            // figment's prefix match ignores case; so does this one.
            let Some(rest) = name
                .split_at_checked(4)
                .and_then(|(head, rest)| head.eq_ignore_ascii_case("RIG_").then_some(rest))
            else {
                continue;
            };
            let key = rest.trim().replace("__", ".").to_ascii_lowercase();
            let path: Vec<&str> = key.split('.').collect();
            if path.iter().any(|s| s.is_empty()) || !SETTINGS_KEYS.contains(&path[0]) {
                ignored.push(name.clone());
                continue;
            }
            let value = if SECRET_KEYS.contains(&key.as_str()) {
                secret_env_value(raw)
            } else {
                raw.parse().unwrap_or_else(|never| match never {})
            };
            insert_at(&mut dict, &path, value);
        }
        let layer = EnvLayer {
            name: "`RIG_` environment variable(s)",
            dict,
        };
        (layer, ignored)
    }

    fn database_url(raw: &str) -> EnvLayer {
        let mut dict = Dict::new();
        dict.insert("database_url".to_owned(), secret_env_value(raw));
        EnvLayer {
            name: "`DATABASE_URL` environment variable",
            dict,
        }
    }
}

impl Provider for EnvLayer {
    fn metadata(&self) -> Metadata {
        Metadata::named(self.name)
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        Ok(Profile::Default.collect(self.dict.clone()))
    }
}

/// A secret from the environment is its exact text (trimmed, as figment trims), not a number or a
/// list: `0123` stays "0123". A value in double quotes (the old way around numbers) is unquoted.
fn secret_env_value(raw: &str) -> Value {
    let text = raw.trim();
    if text.len() >= 2 && text.starts_with('"') && text.ends_with('"') {
        if let v @ Value::String(..) = text.parse().unwrap_or_else(|never| match never {}) {
            return v;
        }
    }
    Value::from(text.to_owned())
}

/// Sets `path` in `dict` to `value`, making the sections on the way.
fn insert_at(dict: &mut Dict, path: &[&str], value: Value) {
    let [first, rest @ ..] = path else { return };
    if rest.is_empty() {
        dict.insert((*first).to_owned(), value);
        return;
    }
    let entry = dict
        .entry((*first).to_owned())
        .or_insert_with(|| Value::from(Dict::new()));
    if !matches!(entry, Value::Dict(..)) {
        *entry = Value::from(Dict::new());
    }
    if let Value::Dict(_, inner) = entry {
        insert_at(inner, rest, value);
    }
}

/// A secret's text: a string, or an integer or boolean taken as its text (TOML `123456`).
struct SecretText(String);

impl<'de> Deserialize<'de> for SecretText {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = SecretText;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a string")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<SecretText, E> {
                Ok(SecretText(v.to_owned()))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<SecretText, E> {
                Ok(SecretText(v))
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<SecretText, E> {
                Ok(SecretText(v.to_string()))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<SecretText, E> {
                Ok(SecretText(v.to_string()))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<SecretText, E> {
                Ok(SecretText(v.to_string()))
            }
            fn visit_i128<E: de::Error>(self, v: i128) -> Result<SecretText, E> {
                Ok(SecretText(v.to_string()))
            }
            fn visit_u128<E: de::Error>(self, v: u128) -> Result<SecretText, E> {
                Ok(SecretText(v.to_string()))
            }
        }
        d.deserialize_any(V)
    }
}

/// An optional secret (`Option<SecretString>` fields).
fn some_secret<'de, D: Deserializer<'de>>(d: D) -> Result<Option<SecretString>, D::Error> {
    Option::<SecretText>::deserialize(d).map(|t| t.map(|t| SecretString::from(t.0)))
}

/// `ingest.auth_tokens`: a list, or one string holding a list (`["tok1", "tok2"]`, as figment
/// reads lists from the environment) or comma-separated tokens (`tok1, tok2`; a single token is
/// the one-token case). A string with no tokens at all is refused rather than read as "open".
fn secret_list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<SecretString>, D::Error> {
    struct V;
    impl<'de> Visitor<'de> for V {
        type Value = Vec<SecretString>;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a list of tokens, or a string of comma-separated tokens")
        }
        fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            let mut tokens = Vec::new();
            while let Some(SecretText(t)) = seq.next_element()? {
                tokens.push(SecretString::from(t));
            }
            Ok(tokens)
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
            let v = v.trim();
            if v.starts_with('[') {
                let list: Value = v.parse().unwrap_or_else(|never| match never {});
                let tokens = Vec::<SecretText>::deserialize(&list).map_err(|_| {
                    E::invalid_value(
                        Unexpected::Other("list"),
                        &"a list of strings like [\"tok1\", \"tok2\"]",
                    )
                })?;
                return Ok(tokens.into_iter().map(|t| SecretString::from(t.0)).collect());
            }
            let tokens: Vec<SecretString> = v
                .split(',')
                .map(str::trim)
                .filter(|t| !t.is_empty())
                .map(|t| SecretString::from(t.to_owned()))
                .collect();
            if tokens.is_empty() {
                return Err(E::invalid_value(
                    Unexpected::Other("empty"),
                    &"one or more comma-separated tokens (or [] for none)",
                ));
            }
            Ok(tokens)
        }
        fn visit_bool<E: de::Error>(self, v: bool) -> Result<Self::Value, E> {
            Ok(vec![SecretString::from(v.to_string())])
        }
        fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
            Ok(vec![SecretString::from(v.to_string())])
        }
        fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
            Ok(vec![SecretString::from(v.to_string())])
        }
    }
    d.deserialize_any(V)
}

/// figment's message, reduced to one line per problem that names the key. For a secret key (or
/// a section holding one) the value figment found is left out: it may be the secret.
fn describe_figment_error(e: figment::Error) -> String {
    e.into_iter()
        .map(|e| {
            let key = if e.path.is_empty() {
                "(top level)".to_owned()
            } else {
                e.path.join(".")
            };
            let what = if touches_secret(&e.path) {
                redacted(&e.kind)
            } else {
                e.kind.to_string()
            };
            let source = e
                .metadata
                .as_ref()
                .map(|m| format!(" (from {})", m.name))
                .unwrap_or_default();
            format!("{key}: {what}{source}")
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// True when `path` is a secret key, inside one, or a section holding one.
fn touches_secret(path: &[String]) -> bool {
    let key = path.join(".");
    SECRET_KEYS.iter().any(|s| {
        key.is_empty()
            || key == *s
            || key.strip_prefix(s).is_some_and(|r| r.starts_with('.'))
            || s.strip_prefix(key.as_str()).is_some_and(|r| r.starts_with('.'))
    })
}

/// An error kind without the value it found: what kind of value, and what was expected.
fn redacted(kind: &Kind) -> String {
    let kind_of = |a: &Actual| match a {
        Actual::Bool(_) => "a boolean".to_owned(),
        Actual::Unsigned(_) | Actual::Signed(_) => "an integer".to_owned(),
        Actual::Float(_) => "a float".to_owned(),
        Actual::Char(_) => "a character".to_owned(),
        Actual::Str(_) => "a string".to_owned(),
        Actual::Bytes(_) => "bytes".to_owned(),
        Actual::Other(_) => "a value".to_owned(),
        other => other.to_string(),
    };
    match kind {
        Kind::InvalidType(a, expected) => format!("invalid type: found {}, expected {expected}", kind_of(a)),
        Kind::InvalidValue(_, expected) => format!("invalid value, expected {expected}"),
        Kind::Unsupported(a) => format!("unsupported type {}", kind_of(a)),
        Kind::UnsupportedKey(a, need) => format!("unsupported key type {}, need {need}", kind_of(a)),
        Kind::UnknownVariant(_, expected) => format!("unknown variant, expected one of {}", expected.join(", ")),
        Kind::ISizeOutOfRange(_) | Kind::USizeOutOfRange(_) => "integer out of range".to_owned(),
        Kind::Message(_) => "invalid value (not shown: it may be a secret)".to_owned(),
        Kind::InvalidLength(..) | Kind::UnknownField(..) | Kind::MissingField(_) | Kind::DuplicateField(_) => {
            kind.to_string()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use figment::providers::Serialized;

    fn from_toml(toml: &str) -> Result<Settings, ConfigError> {
        Settings::extract(Figment::new().merge(Toml::string(toml)))
    }

    /// Settings from defaults and these environment variables only (no file, no process env).
    fn from_env(vars: &[(&str, &str)]) -> Result<Settings, ConfigError> {
        let vars = vars.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned()));
        Settings::figment_with_env(PathBuf::from("/nonexistent/rig.toml"), vars).and_then(Settings::extract)
    }

    fn tokens(s: &Settings) -> Vec<&str> {
        s.ingest.auth_tokens.iter().map(|t| t.expose_secret()).collect()
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
        assert_eq!(s.ingest.shutdown_timeout, Duration::from_secs(10));
        assert_eq!(s.ingest.header_read_timeout, Duration::from_secs(10));
        assert_eq!(s.ingest.read_pool_size, 4);
        let s = from_env(&[
            ("RIG_INGEST__SHUTDOWN_TIMEOUT", "3s"),
            ("RIG_INGEST__MAX_CONNECTIONS", "8"),
        ])
        .unwrap();
        assert_eq!(s.ingest.shutdown_timeout, Duration::from_secs(3));
        assert_eq!(s.ingest.max_connections, 8);
        for bad in ["read_pool_size = 0", "max_connections = 0", "request_timeout = \"0s\""] {
            let e = from_toml(&format!("[ingest]\n{bad}")).unwrap_err().to_string();
            assert!(e.contains(bad.split(' ').next().unwrap()), "{bad}: {e}");
        }
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

    #[test]
    fn auth_tokens_take_a_list_one_token_or_comma_separated_tokens() {
        for (raw, want) in [
            ("tok", vec!["tok"]),
            (" tok1, tok2,,tok3 ,", vec!["tok1", "tok2", "tok3"]),
            (r#"["tok"]"#, vec!["tok"]),
            (r#"["a,b", 0123]"#, vec!["a,b", "123"]),
            ("[]", vec![]),
            ("123456", vec!["123456"]),
            ("0123,true", vec!["0123", "true"]),
            (r#""tok1,tok2""#, vec!["tok1", "tok2"]),
        ] {
            let s = from_env(&[("RIG_INGEST__AUTH_TOKENS", raw)]).unwrap_or_else(|e| panic!("{raw}: {e}"));
            assert_eq!(tokens(&s), want, "{raw}");
        }
        let s = from_toml("[ingest]\nauth_tokens = \"a, b\"").unwrap();
        assert_eq!(tokens(&s), ["a", "b"]);
        let s = from_toml("[ingest]\nauth_tokens = [\"a\", 123456]").unwrap();
        assert_eq!(tokens(&s), ["a", "123456"]);
        // Set but holding no token is a mistake (an unset secret), not a request for an open API.
        for raw in ["", " , ", r#"["tok""#] {
            let e = from_env(&[("RIG_INGEST__AUTH_TOKENS", raw)]).unwrap_err().to_string();
            assert!(e.contains("ingest.auth_tokens") && e.contains("expected"), "{raw}: {e}");
        }
    }

    #[test]
    fn secrets_from_the_environment_keep_their_exact_text() {
        let s = from_env(&[
            ("RIG_INGEST__GITHUB__WEBHOOK_SECRET", "0123456"),
            ("RIG_STALE_HEARTBEAT__INGEST_TOKEN", "123456"),
            (
                "RIG_NOTIFIER__DISCORD_WEBHOOK_URL",
                "https://discord.test/api/webhooks/1/2",
            ),
            ("RIG_DATABASE_URL", "postgres://u:1.50@h/db"),
        ])
        .unwrap();
        let text = |s: &Option<SecretString>| s.as_ref().map(|s| s.expose_secret().to_owned());
        assert_eq!(text(&s.ingest.github.webhook_secret).as_deref(), Some("0123456"));
        assert_eq!(text(&s.stale_heartbeat.ingest_token).as_deref(), Some("123456"));
        assert_eq!(s.database_url.expose(), "postgres://u:1.50@h/db");
        // Other values are still typed as before: a number, a boolean, a list.
        let s = from_env(&[
            ("RIG_STALE_HEARTBEAT__INGEST_TOKEN", "\"42\""),
            ("RIG_INGEST__GITHUB__WEBHOOK_SECRET", "true"),
            ("RIG_CONSUMER__BATCH_SIZE", "7"),
            ("RIG_NOTIFIER__DRY_RUN", "true"),
            ("RIG_NOTIFIER__EVENTS", "[MERGED, ISSUE_DONE]"),
        ])
        .unwrap();
        assert_eq!(text(&s.stale_heartbeat.ingest_token).as_deref(), Some("42"));
        assert_eq!(text(&s.ingest.github.webhook_secret).as_deref(), Some("true"));
        assert_eq!(s.consumer.batch_size, 7);
        assert!(s.notifier.dry_run);
        assert_eq!(s.notifier.events, ["MERGED", "ISSUE_DONE"]);
        // In the file, an unquoted integer or boolean is taken as its text.
        let s = from_toml("[stale_heartbeat]\ningest_token = 123456\n[ingest.github]\nwebhook_secret = false").unwrap();
        assert_eq!(text(&s.stale_heartbeat.ingest_token).as_deref(), Some("123456"));
        assert_eq!(text(&s.ingest.github.webhook_secret).as_deref(), Some("false"));
        // DATABASE_URL wins over RIG_DATABASE_URL.
        let s = from_env(&[
            ("RIG_DATABASE_URL", "postgres://a@h/one"),
            ("DATABASE_URL", "postgres://a@h/two"),
        ])
        .unwrap();
        assert_eq!(s.database_url.expose(), "postgres://a@h/two");
    }

    #[test]
    fn a_bad_secret_names_its_key_but_never_shows_the_value() {
        // A float is the one scalar a secret refuses, and figment's message would show it.
        for key in SECRET_KEYS {
            let e = Settings::extract(Figment::new().merge(Serialized::default(key, 31.4159)))
                .unwrap_err()
                .to_string();
            assert!(e.contains(key) && e.contains("expected"), "{key}: {e}");
            assert!(!e.contains("31.4159"), "{key}: {e}");
        }
        let numeric = [
            ("RIG_NOTIFIER__DISCORD_WEBHOOK_URL", "987654321"),
            ("RIG_DATABASE_URL", "987654321"),
            ("DATABASE_URL", "987654321"),
        ];
        for (var, raw) in numeric {
            let e = from_env(&[(var, raw)]).unwrap_err().to_string();
            assert!(e.contains("_url: expected"), "{var}: {e}");
            assert!(!e.contains(raw), "{var}: {e}");
        }
        // A whole section set to a string: the value could be anything, so it is not shown either.
        let e = from_env(&[("RIG_STALE_HEARTBEAT", "very-secret")])
            .unwrap_err()
            .to_string();
        assert!(e.contains("stale_heartbeat: invalid type: found a string"), "{e}");
        assert!(!e.contains("very-secret"), "{e}");
        // Other keys keep figment's full message.
        let e = from_env(&[("RIG_NOTIFIER__DRY_RUN", "maybe")]).unwrap_err().to_string();
        assert!(e.contains("notifier.dry_run") && e.contains("\"maybe\""), "{e}");
    }

    #[test]
    fn an_empty_or_blank_secret_is_a_configuration_error_naming_its_key() {
        for (var, key) in [
            ("RIG_INGEST__GITHUB__WEBHOOK_SECRET", "ingest.github.webhook_secret"),
            ("RIG_STALE_HEARTBEAT__INGEST_TOKEN", "stale_heartbeat.ingest_token"),
            ("RIG_NOTIFIER__DISCORD_WEBHOOK_URL", "notifier.discord_webhook_url"),
            ("RIG_INGEST__DATABASE_URL", "ingest.database_url"),
            ("RIG_NOTIFIER__DATABASE_URL", "notifier.database_url"),
            ("DATABASE_URL", "database_url"),
        ] {
            for blank in ["", "   ", "\t"] {
                let e = from_env(&[(var, blank)]).unwrap_err().to_string();
                assert!(e.contains(key), "{var}={blank:?}: {e}");
            }
        }
        for toml in [
            "[ingest.github]\nwebhook_secret = \"\"",
            "[ingest.github]\nwebhook_secret = \" \"",
            "[stale_heartbeat]\ningest_token = \"\"",
            "[notifier]\ndiscord_webhook_url = \" \"",
            "[ingest]\nauth_tokens = [\"tok\", \" \"]",
        ] {
            let e = from_toml(toml).unwrap_err().to_string();
            let key = if toml.contains("webhook_secret") {
                "ingest.github.webhook_secret"
            } else if toml.contains("ingest_token") {
                "stale_heartbeat.ingest_token"
            } else if toml.contains("discord") {
                "notifier.discord_webhook_url"
            } else {
                "ingest.auth_tokens"
            };
            assert!(e.contains(key), "{toml}: {e}");
        }
        // A secret with surrounding blanks is kept as it is written; only an empty one is refused.
        let s = from_toml("[ingest.github]\nwebhook_secret = \" s3cret \"").unwrap();
        assert!(s.ingest.github.webhook_secret.is_some());
    }

    #[test]
    fn each_process_may_have_a_database_url_of_its_own() {
        use rig_log::roles::{Role, ROLES};
        let s = from_env(&[
            ("DATABASE_URL", "postgres://owner@h/rig"),
            ("RIG_INGEST__DATABASE_URL", "postgres://rig_ingest:pw-very-secret@h/rig"),
            (
                "RIG_TOKEN_PROJECTOR__DATABASE_URL",
                "postgres://rig_token_projector@h/rig",
            ),
        ])
        .unwrap();
        assert_eq!(
            s.database_url_for(Role::Ingest).expose(),
            "postgres://rig_ingest:pw-very-secret@h/rig"
        );
        assert_eq!(
            s.database_url_for(Role::TokenProjector).expose(),
            "postgres://rig_token_projector@h/rig"
        );
        assert_eq!(s.database_url_for(Role::Notifier).expose(), "postgres://owner@h/rig");
        assert!(!format!("{s:?}").contains("very-secret"));
        for r in ROLES {
            let toml = format!("[{}]\ndatabase_url = \"mysql://x\"", r.section());
            let e = from_toml(&toml).unwrap_err().to_string();
            assert!(e.contains(&format!("{}.database_url", r.section())), "{e}");
        }
    }

    #[test]
    fn a_partial_section_takes_the_defaults_of_the_fields_it_leaves_out() {
        let s = from_toml(
            "[ingest]\n[ingest.github]\n[consumer]\n[stale_heartbeat]\n[cost_projector]\n[token_projector]\n[notifier]",
        )
        .unwrap();
        assert_eq!(s.ingest.listen.port(), 8080);
        assert_eq!(s.ingest.github.approve_label, "agent-ready");
        assert_eq!(s.consumer.batch_size, 500);
        assert_eq!(s.stale_heartbeat.metrics_listen.port(), 9102);
        assert_eq!(s.cost_projector.metrics_listen.port(), 9103);
        assert_eq!(s.token_projector.metrics_listen.port(), 9104);
        assert_eq!(s.notifier.metrics_listen.port(), 9105);
        let s = from_toml("[stale_heartbeat]\nthreshold = \"5m\"\n[notifier]\ndry_run = true").unwrap();
        assert_eq!(s.stale_heartbeat.metrics_listen.port(), 9102);
        assert_eq!(s.stale_heartbeat.threshold, Duration::from_secs(300));
        assert_eq!(s.notifier.metrics_listen.port(), 9105);
        assert_eq!(s.notifier.events.len(), 6);
        let s = from_env(&[("RIG_TOKEN_PROJECTOR__METRICS_LISTEN", "127.0.0.1:19104")]).unwrap();
        assert_eq!(s.token_projector.metrics_listen.port(), 19104);
        assert_eq!(s.cost_projector.metrics_listen.port(), 9103);
        // Still strict about what a section may hold.
        let e = from_toml("[cost_projector]\nmetrics_listn = \"127.0.0.1:1\"")
            .unwrap_err()
            .to_string();
        assert!(e.contains("cost_projector") && e.contains("metrics_listn"), "{e}");
        let e = from_toml("[token_projector]\nmetrics_listen = \"nope\"")
            .unwrap_err()
            .to_string();
        assert!(e.contains("token_projector.metrics_listen"), "{e}");
    }

    #[test]
    fn rig_variables_outside_the_settings_are_ignored_but_typos_inside_a_section_fail() {
        let s = from_env(&[
            ("RIG_LOG", "debug"),
            ("RIG_FAULT_SEED", "7"),
            ("RIG_CONFIG", "/etc/rig.toml"),
            ("RIG_LOG_FORMAT", "json"),
            ("RIG_SIMULATE_TOKEN", "123"),
            ("RIG_INGEST_SERVICE_HOST", "10.0.0.1"),
            ("RIG_", "x"),
            ("RIG_INGEST__LISTEN", "127.0.0.1:18080"),
        ])
        .unwrap();
        assert_eq!(s.ingest.listen.port(), 18080);
        let e = from_env(&[("RIG_INGEST__LISTN", "x")]).unwrap_err().to_string();
        assert!(e.contains("ingest") && e.contains("listn"), "{e}");
        let e = from_env(&[("RIG_INGEST__GITHUB__WEBHOOK_SECRT", "x")])
            .unwrap_err()
            .to_string();
        assert!(e.contains("ingest.github") && e.contains("webhook_secrt"), "{e}");
        // The file stays strict at the top level too.
        let e = from_toml("log = \"debug\"").unwrap_err().to_string();
        assert!(e.contains("unknown field: found `log`"), "{e}");
    }

    #[test]
    fn settings_keys_are_the_fields_of_settings() {
        let e = Figment::new()
            .merge(Toml::string("not_a_setting = 1"))
            .extract::<Settings>()
            .unwrap_err();
        match e.kind {
            Kind::UnknownField(_, fields) => assert_eq!(fields, SETTINGS_KEYS),
            other => panic!("{other}"),
        }
    }
}
