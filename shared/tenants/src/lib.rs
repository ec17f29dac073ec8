//! Tenants: one organisation's history, kept in a database of its own and invisible to the
//! others, served by the same ingest and the same fleet of workers as every other tenant.
//!
//! The database of `database_url` is the **control database**: it holds this catalog (the
//! `tenants`, `tenant_routes`, `tenant_tokens` and `tenant_settings` tables) and is also the log
//! of the built-in tenant `default`, so a deployment without tenants is exactly a single log.
//! Every other tenant's log is a database of its own, on the control database's server or on
//! another one (which is how a deployment outgrows one Postgres machine).
//!
//! No credentials are stored: a tenant's place is a database name and, when it is on another
//! server, that server's host and port. Each process connects there with its own role and
//! password, the ones of its own `database_url`.

use secrecy::SecretString;
use serde::Serialize;
use sha2::{Digest, Sha256};
use sqlx::postgres::PgConnectOptions;
use sqlx::PgPool;
use std::str::FromStr;

pub mod settings;
pub use settings::{TenantSettings, SETTING_KEYS};

/// The built-in tenant: the control database's own log, served on the unprefixed routes.
pub const DEFAULT: &str = "default";

/// Channel on the control database that wakes the workers for a tenant: ingest sends it (payload:
/// the slug) after each commit in a tenant's database, so that one LISTEN connection per worker
/// hears about every tenant, wherever its database is.
pub const TENANT_EVENTS_CHANNEL: &str = "rig_tenant_events";

/// Channel on the control database that the catalog's triggers notify on every change.
pub const CATALOG_CHANNEL: &str = "rig_tenants";

/// Names a tenant may not take: they are Postgres's own, or words that would be confusing in a
/// URL (`/t/api/…`) or a database name.
const RESERVED: &[&str] = &[
    "default",
    "postgres",
    "template0",
    "template1",
    "admin",
    "public",
    "api",
    "all",
];

/// Why a slug is refused, in words an operator can act on.
pub fn check_slug(slug: &str) -> Result<(), String> {
    let shape = slug.len() >= 2
        && slug.len() <= 20
        && slug.starts_with(|c: char| c.is_ascii_lowercase())
        && slug.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    if !shape {
        return Err(format!(
            "tenant {slug:?}: a tenant is 2 to 20 characters, a lower-case letter then lower-case letters or digits \
             (e.g. acme, team42)"
        ));
    }
    if RESERVED.contains(&slug) || slug.starts_with("pg") || slug.starts_with("kube") {
        return Err(format!(
            "tenant {slug:?} is reserved (not {}, nor anything starting with pg or kube)",
            RESERVED.join(", ")
        ));
    }
    Ok(())
}

/// A tenant as the catalog knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Tenant {
    pub slug: String,
    /// The database holding its log.
    pub database_name: String,
    /// The server, as a URL without credentials, when it is not the control database's.
    pub server: Option<String>,
    pub enabled: bool,
}

impl Tenant {
    /// The built-in tenant, whose log is the control database.
    pub fn builtin(control: &PgConnectOptions) -> Tenant {
        Tenant {
            slug: DEFAULT.to_owned(),
            database_name: control.get_database().unwrap_or("postgres").to_owned(),
            server: None,
            enabled: true,
        }
    }

    pub fn is_default(&self) -> bool {
        self.slug == DEFAULT
    }

    /// How a process reaches this tenant's log: its own connection options for the control
    /// database (role, password, TLS) with this tenant's database, and its server's host and port
    /// when it has one.
    pub fn connect_options(&self, own: &PgConnectOptions) -> anyhow::Result<PgConnectOptions> {
        if self.is_default() {
            return Ok(own.clone());
        }
        let mut opts = own.clone().database(&self.database_name);
        if let Some(server) = &self.server {
            let there = PgConnectOptions::from_str(server).map_err(|e| {
                anyhow::anyhow!("tenant {}: its server {server:?} is not a database URL: {e}", self.slug)
            })?;
            opts = opts.host(there.get_host()).port(there.get_port());
        }
        Ok(opts)
    }

    /// Where the log is, for people: `rig_t_acme` or `rig_t_acme on db2:5432`.
    pub fn place(&self) -> String {
        match &self.server {
            Some(s) => format!("{} on {}", self.database_name, server_label(s)),
            None => self.database_name.clone(),
        }
    }
}

/// `host:port` of a server URL.
fn server_label(url: &str) -> String {
    PgConnectOptions::from_str(url)
        .map(|o| format!("{}:{}", o.get_host(), o.get_port()))
        .unwrap_or_else(|_| url.to_owned())
}

/// A point in `0..interval` fixed by the slug (none for `default`): when a process takes up
/// hundreds of tenants at once, each tenant's periodic work starts at its own moment instead of
/// all of them opening a connection in the same instant.
pub fn spread(slug: &str, interval: std::time::Duration) -> std::time::Duration {
    if slug == DEFAULT {
        return std::time::Duration::ZERO;
    }
    let h = slug.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    interval.mul_f64((h % 1000) as f64 / 1000.0)
}

/// The database a new tenant gets when none is named: `rig_t_<slug>`.
pub fn default_database_name(slug: &str) -> String {
    format!("rig_t_{slug}")
}

/// A database URL stripped to what the catalog keeps: scheme, host, port and the query's TLS
/// settings. The user, password and database are dropped (each process brings its own).
pub fn server_of(url: &str) -> anyhow::Result<(String, Option<String>)> {
    let mut u = url::Url::parse(url).map_err(|e| anyhow::anyhow!("--database-url is not a URL: {e}"))?;
    if !matches!(u.scheme(), "postgres" | "postgresql") {
        anyhow::bail!("--database-url must be a postgres:// URL");
    }
    if u.host_str().is_none() {
        anyhow::bail!("--database-url names no host");
    }
    let database = u.path().trim_start_matches('/').to_owned();
    let _ = u.set_username("");
    let _ = u.set_password(None);
    u.set_path("");
    let query: Vec<(String, String)> = u
        .query_pairs()
        .filter(|(k, _)| k.starts_with("ssl"))
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    if query.is_empty() {
        u.set_query(None);
    } else {
        u.query_pairs_mut().clear().extend_pairs(query);
    }
    Ok((u.to_string(), (!database.is_empty()).then_some(database)))
}

/// Every tenant, the built-in one first, then by slug.
pub async fn list(control: &PgPool) -> Result<Vec<Tenant>, sqlx::Error> {
    let rows: Vec<(String, String, Option<String>, bool)> =
        sqlx::query_as("SELECT slug, database_name, database_url, enabled FROM tenants ORDER BY slug")
            .fetch_all(control)
            .await?;
    let mut out = vec![Tenant::builtin(&control.connect_options())];
    out.extend(rows.into_iter().map(|(slug, database_name, server, enabled)| Tenant {
        slug,
        database_name,
        server,
        enabled,
    }));
    Ok(out)
}

/// One tenant, enabled or not; `None` when there is no such tenant.
pub async fn get(control: &PgPool, slug: &str) -> Result<Option<Tenant>, sqlx::Error> {
    if slug == DEFAULT {
        return Ok(Some(Tenant::builtin(&control.connect_options())));
    }
    let row: Option<(String, String, Option<String>, bool)> =
        sqlx::query_as("SELECT slug, database_name, database_url, enabled FROM tenants WHERE slug = $1")
            .bind(slug)
            .fetch_optional(control)
            .await?;
    Ok(row.map(|(slug, database_name, server, enabled)| Tenant {
        slug,
        database_name,
        server,
        enabled,
    }))
}

/// Whether the catalog has any tenant besides `default`. While it has none, every read is as
/// open as it was before tenants existed.
pub async fn any(control: &PgPool) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM tenants)")
        .fetch_one(control)
        .await
}

/// Registers a tenant whose database exists and is migrated. Fails if the slug is taken.
pub async fn register(control: &PgPool, tenant: &Tenant) -> anyhow::Result<()> {
    check_slug(&tenant.slug).map_err(anyhow::Error::msg)?;
    let r = sqlx::query("INSERT INTO tenants (slug, database_name, database_url, enabled) VALUES ($1, $2, $3, $4)")
        .bind(&tenant.slug)
        .bind(&tenant.database_name)
        .bind(&tenant.server)
        .bind(tenant.enabled)
        .execute(control)
        .await;
    match r {
        Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
            anyhow::bail!("tenant {} exists already", tenant.slug)
        }
        r => {
            r?;
            Ok(())
        }
    }
}

/// Enables or disables a tenant (its data is kept). `false` when there is no such tenant.
pub async fn set_enabled(control: &PgPool, slug: &str, enabled: bool) -> Result<bool, sqlx::Error> {
    let r = sqlx::query("UPDATE tenants SET enabled = $2, updated_at = now() WHERE slug = $1")
        .bind(slug)
        .bind(enabled)
        .execute(control)
        .await?;
    Ok(r.rows_affected() == 1)
}

/// SHA-256 of a token, as the catalog stores it.
pub fn token_hash(token: &str) -> Vec<u8> {
    Sha256::digest(token.as_bytes()).to_vec()
}

/// Makes a new token for `slug` and stores its hash. The token is returned once and kept nowhere.
pub async fn new_token(control: &PgPool, slug: &str) -> Result<SecretString, sqlx::Error> {
    let bytes: [u8; 32] = rand::random();
    let token = format!("rig_{slug}_{}", hex::encode(bytes));
    sqlx::query("INSERT INTO tenant_tokens (token_sha256, tenant) VALUES ($1, $2)")
        .bind(token_hash(&token))
        .bind(slug)
        .execute(control)
        .await?;
    Ok(SecretString::from(token))
}

/// The tenant a token belongs to, if it is a tenant token.
pub async fn tenant_of_token(control: &PgPool, token: &str) -> Result<Option<String>, sqlx::Error> {
    sqlx::query_scalar("SELECT tenant FROM tenant_tokens WHERE token_sha256 = $1")
        .bind(token_hash(token))
        .fetch_optional(control)
        .await
}

/// What a GitHub route matches on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteKind {
    /// `owner/name`, the repository's full name.
    Repo,
    /// The GitHub App installation id.
    Installation,
    /// The owner's login (a user or an organisation).
    Owner,
}

impl RouteKind {
    fn name(self) -> &'static str {
        match self {
            RouteKind::Repo => "repo",
            RouteKind::Installation => "installation",
            RouteKind::Owner => "owner",
        }
    }
}

/// Routes GitHub deliveries matching `key` to `slug` (replacing an earlier route of that key).
pub async fn add_route(control: &PgPool, slug: &str, kind: RouteKind, key: &str) -> anyhow::Result<()> {
    let key = key.trim().to_lowercase();
    let ok = match kind {
        RouteKind::Repo => key
            .split_once('/')
            .is_some_and(|(o, n)| !o.is_empty() && !n.is_empty() && !n.contains('/')),
        RouteKind::Installation => !key.is_empty() && key.chars().all(|c| c.is_ascii_digit()),
        RouteKind::Owner => !key.is_empty() && !key.contains('/'),
    };
    if !ok {
        anyhow::bail!(
            "{key:?} is not a {}: give --repo owner/name, --installation 12345 or --owner login",
            kind.name()
        );
    }
    sqlx::query(
        "INSERT INTO tenant_routes (kind, key, tenant) VALUES ($1, $2, $3) \
         ON CONFLICT (kind, key) DO UPDATE SET tenant = EXCLUDED.tenant",
    )
    .bind(kind.name())
    .bind(&key)
    .bind(slug)
    .execute(control)
    .await?;
    Ok(())
}

/// The tenant a GitHub delivery goes to: by repository full name, then installation id, then
/// owner login; `default` when no route matches. A disabled tenant's route still wins (its
/// deliveries are then refused, not delivered to someone else).
pub async fn route(
    control: &PgPool,
    repo: Option<&str>,
    installation: Option<i64>,
    owner: Option<&str>,
) -> Result<String, sqlx::Error> {
    let found: Option<String> = sqlx::query_scalar(
        "SELECT tenant FROM tenant_routes WHERE (kind = 'repo' AND key = lower($1)) \
         OR (kind = 'installation' AND key = $2) OR (kind = 'owner' AND key = lower($3)) \
         ORDER BY CASE kind WHEN 'repo' THEN 0 WHEN 'installation' THEN 1 ELSE 2 END LIMIT 1",
    )
    .bind(repo)
    .bind(installation.map(|i| i.to_string()))
    .bind(owner)
    .fetch_optional(control)
    .await?;
    Ok(found.unwrap_or_else(|| DEFAULT.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slugs() {
        for ok in ["acme", "team42", "ab", "a1234567890123456789"] {
            assert!(check_slug(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "a",
            "Acme",
            "1acme",
            "ac-me",
            "ac_me",
            "a12345678901234567890",
            "default",
            "admin",
            "api",
            "all",
            "public",
            "postgres",
            "template1",
            "pgfoo",
            "kubesystem",
            "acmé",
        ] {
            assert!(check_slug(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn servers_keep_no_credentials() {
        let (server, db) =
            server_of("postgres://bob:secret@db2.internal:6543/rig_acme?sslmode=require&user=x").unwrap();
        assert_eq!(server, "postgres://db2.internal:6543?sslmode=require");
        assert_eq!(db.as_deref(), Some("rig_acme"));
        assert!(server_of("mysql://h/db").is_err());
        assert!(server_of("not a url").is_err());
    }

    #[test]
    fn tenant_connects_with_the_process_own_role() {
        let own = PgConnectOptions::from_str("postgres://rig_ingest:pw@127.0.0.1:5432/rig").unwrap();
        let t = Tenant {
            slug: "acme".into(),
            database_name: "rig_t_acme".into(),
            server: Some("postgres://db2:6543".into()),
            enabled: true,
        };
        let o = t.connect_options(&own).unwrap();
        assert_eq!(
            (o.get_host(), o.get_port(), o.get_database()),
            ("db2", 6543, Some("rig_t_acme"))
        );
        assert_eq!(o.get_username(), "rig_ingest");
        let here = Tenant { server: None, ..t };
        let o = here.connect_options(&own).unwrap();
        assert_eq!(
            (o.get_host(), o.get_port(), o.get_database()),
            ("127.0.0.1", 5432, Some("rig_t_acme"))
        );
    }
}
