//! The database roles each process connects as: least privilege.
//!
//! The role that runs the migrations (whoever runs `rigctl migrate`) owns the tables. Nothing else
//! connects as it: ingest has a role that may append to `events` and keep the inline read models,
//! and each tailing worker has a role of its own that may read `events` and write only its own
//! tables and its own checkpoint row. None of them owns a table, so none can disable the
//! append-only triggers; no worker can append to the log. What each role may do is granted by
//! the migrations (`migrations/0025_roles.sql`).
//!
//! Roles belong to the Postgres server, not to one database: every database of a server (one per
//! deployment, or a test's scratch database) shares them, and each database grants them its own
//! privileges. So the roles are created here, by `rigctl migrate`, every time it runs, before the
//! migrations: a database restored onto another server, or migrated long ago elsewhere, finds
//! them too. Creating them needs the `CREATEROLE` attribute (or a superuser); an owner without it
//! can run the migrations once an administrator has created the roles (`CREATE ROLE rig_ingest
//! LOGIN;` and so on).
//!
//! Passwords: a role has the password of the URL its process is configured with
//! (`ingest.database_url`, `token_projector.database_url`, …), which `rigctl migrate` sets when
//! that URL has one. Locally, with `trust` authentication, none is needed.

use anyhow::Context;
use secrecy::{ExposeSecret, SecretString};
use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, Connection};
use std::str::FromStr;

/// A process's database role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    Ingest,
    TokenProjector,
    CostProjector,
    StaleHeartbeat,
    Notifier,
}

pub const ROLES: [Role; 5] = [
    Role::Ingest,
    Role::TokenProjector,
    Role::CostProjector,
    Role::StaleHeartbeat,
    Role::Notifier,
];

impl Role {
    /// The role's name in Postgres.
    pub fn name(self) -> &'static str {
        match self {
            Role::Ingest => "rig_ingest",
            Role::TokenProjector => "rig_token_projector",
            Role::CostProjector => "rig_cost_projector",
            Role::StaleHeartbeat => "rig_stale_heartbeat",
            Role::Notifier => "rig_notifier",
        }
    }

    /// The binary that connects as this role.
    pub fn binary(self) -> &'static str {
        match self {
            Role::Ingest => "rig-ingest",
            Role::TokenProjector => "rig-token-projector",
            Role::CostProjector => "rig-cost-projector",
            Role::StaleHeartbeat => "rig-stale-heartbeat",
            Role::Notifier => "rig-notifier",
        }
    }

    /// The configuration section whose `database_url` is this process's URL.
    pub fn section(self) -> &'static str {
        match self {
            Role::Ingest => "ingest",
            Role::TokenProjector => "token_projector",
            Role::CostProjector => "cost_projector",
            Role::StaleHeartbeat => "stale_heartbeat",
            Role::Notifier => "notifier",
        }
    }

    pub fn for_binary(binary: &str) -> Option<Role> {
        ROLES.into_iter().find(|r| r.binary() == binary)
    }
}

/// `owner_url` with the user swapped for `role` and no password: the URL a process uses on a
/// server with `trust` (or peer, or certificate) authentication, as `rigctl up` and the tests run.
pub fn url_as(owner_url: &str, role: Role) -> anyhow::Result<String> {
    let mut u = url::Url::parse(owner_url).context("database URL is not a URL")?;
    u.set_username(role.name())
        .ok()
        .context("database URL has no host to connect as another user to")?;
    u.set_password(None).ok();
    // A user or password given as a query parameter would override the ones above.
    let query: Vec<(String, String)> = u
        .query_pairs()
        .filter(|(k, _)| k != "user" && k != "password")
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    if query.is_empty() {
        u.set_query(None);
    } else {
        u.query_pairs_mut().clear().extend_pairs(query);
    }
    Ok(u.to_string())
}

/// Creates the roles that do not exist yet. Idempotent, and safe while other databases of the
/// same server run it at the same moment.
pub async fn ensure(owner: &PgConnectOptions) -> anyhow::Result<()> {
    let mut c = owner_connection(owner).await?;
    for role in ROLES {
        if role_exists(&mut c, role).await? {
            continue;
        }
        // NOSUPERUSER etc. are the defaults; said anyway, since nothing less is acceptable here.
        let create = format!(
            "CREATE ROLE {} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS",
            role.name()
        );
        if let Err(e) = sqlx::query(&create).execute(&mut c).await {
            // Another database's migrate may have created it meanwhile.
            if role_exists(&mut c, role).await? {
                continue;
            }
            let denied = e
                .as_database_error()
                .and_then(|d| d.code())
                .is_some_and(|code| code == "42501");
            if denied {
                anyhow::bail!(
                    "cannot create the database role {}: the role running `rigctl migrate` may not create roles. \
                     Have an administrator create the roles once (CREATE ROLE <name> LOGIN; for each of {}), or \
                     grant CREATEROLE to the migrating role",
                    role.name(),
                    ROLES.iter().map(|r| r.name()).collect::<Vec<_>>().join(", ")
                );
            }
            return Err(e).with_context(|| format!("create the database role {}", role.name()));
        }
    }
    let _ = c.close().await;
    Ok(())
}

/// Warns, once at start, when a process connects with more rights than its role's: as the owner
/// of the log (it could switch the append-only triggers off) or as a superuser. Runs in the
/// background: a database that is not there yet only delays the look.
pub fn warn_if_privileged(pool: &sqlx::PgPool, role: Role) {
    let pool = pool.clone();
    tokio::spawn(async move {
        let seen = sqlx::query_as::<_, (String, bool, bool)>(
            "SELECT current_user::text, r.rolsuper, \
                    coalesce((SELECT pg_has_role(current_user, c.relowner, 'USAGE') FROM pg_class c \
                              WHERE c.oid = to_regclass('events')), false) \
             FROM pg_roles r WHERE r.rolname = current_user",
        )
        .fetch_one(&pool)
        .await;
        if let Ok((user, superuser, owner)) = seen {
            if superuser || owner {
                tracing::warn!(
                    user,
                    expected = role.name(),
                    "connected to the database as {}: least privilege wants {} (set {}.database_url, see \
                     \"Database roles\" in the README)",
                    if superuser {
                        "a superuser"
                    } else {
                        "the owner of the tables"
                    },
                    role.name(),
                    role.section()
                );
            }
        }
    });
}

async fn role_exists(c: &mut sqlx::PgConnection, role: Role) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = $1)")
        .bind(role.name())
        .fetch_one(c)
        .await
}

/// Sets each role's password from the URL its process is configured with, where that URL names
/// the role and holds a password. Returns the roles whose password was set, and notes for URLs
/// that name another user (left alone: that role is managed elsewhere). The password itself
/// never leaves this process: Postgres gets a SCRAM-SHA-256 verifier, and the statement is not
/// logged.
pub async fn set_passwords(
    owner: &PgConnectOptions,
    urls: &[(Role, &str)],
) -> anyhow::Result<(Vec<Role>, Vec<String>)> {
    let mut set = Vec::new();
    let mut notes = Vec::new();
    let mut todo: Vec<(Role, SecretString)> = Vec::new();
    for (role, url) in urls {
        let opts = PgConnectOptions::from_str(url)
            .with_context(|| format!("{}.database_url is not a valid database URL", role.section()))?;
        let Some(password) = url::Url::parse(url).ok().and_then(|u| u.password().map(percent_decode)) else {
            continue;
        };
        if opts.get_username() != role.name() {
            notes.push(format!(
                "{}.database_url connects as {:?}, not {}: its password is not managed by rigctl migrate",
                role.section(),
                opts.get_username(),
                role.name()
            ));
            continue;
        }
        todo.push((*role, SecretString::from(password)));
    }
    if todo.is_empty() {
        return Ok((set, notes));
    }
    let mut c = owner_connection(owner).await?;
    for (role, password) in todo {
        let verifier = postgres_protocol::password::scram_sha_256(password.expose_secret().as_bytes());
        // A verifier is base64 and `$:`; it cannot hold a quote. ALTER ROLE takes no bind
        // parameters, hence the literal.
        debug_assert!(!verifier.contains('\''));
        sqlx::query(&format!("ALTER ROLE {} PASSWORD '{verifier}'", role.name()))
            .execute(&mut c)
            .await
            .with_context(|| format!("set the password of the database role {}", role.name()))?;
        set.push(role);
    }
    let _ = c.close().await;
    Ok((set, notes))
}

fn percent_decode(s: &str) -> String {
    percent_encoding::percent_decode_str(s).decode_utf8_lossy().into_owned()
}

/// A connection as the owner whose statements are never logged (one may carry a password
/// verifier).
async fn owner_connection(owner: &PgConnectOptions) -> anyhow::Result<sqlx::PgConnection> {
    let opts = owner.clone().disable_statement_logging();
    sqlx::PgConnection::connect_with(&opts)
        .await
        .context("connect to the database as the owner")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_role_url_swaps_the_user_and_drops_the_password() {
        let u = url_as(
            "postgres://postgres:owner-secret@db.example:5433/rig?sslmode=require",
            Role::Ingest,
        )
        .unwrap();
        assert_eq!(u, "postgres://rig_ingest@db.example:5433/rig?sslmode=require");
        let u = url_as("postgres://127.0.0.1/rig?user=postgres&password=x", Role::Notifier).unwrap();
        assert_eq!(u, "postgres://rig_notifier@127.0.0.1/rig");
    }

    #[test]
    fn every_role_has_its_own_name_binary_and_section() {
        for r in ROLES {
            assert_eq!(Role::for_binary(r.binary()), Some(r));
            assert_eq!(r.name(), format!("rig_{}", r.section()));
        }
    }

    #[test]
    fn percent_encoded_passwords_are_decoded() {
        assert_eq!(percent_decode("a%40b%3Ac"), "a@b:c");
        assert_eq!(percent_decode("plain"), "plain");
        assert_eq!(percent_decode("100%"), "100%");
    }
}
