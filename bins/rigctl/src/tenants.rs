//! `rigctl tenants …`: add a tenant (its database created and migrated wherever it is to live),
//! list, disable and enable tenants, make tenant tokens, route GitHub deliveries, and set a
//! tenant's own settings. Also how the other commands reach one tenant's log (`--tenant`).

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use rig_ops::Settings;
use rig_tenants::{RouteKind, Tenant};
use secrecy::ExposeSecret;
use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;
use std::process::ExitCode;

#[derive(Debug, Subcommand)]
pub enum TenantsCommand {
    /// Create a tenant: its own database (rig_t_<slug> on the control database's server, or on
    /// the server of --database-url), migrated, and registered in the catalog.
    Add {
        /// 2–20 lower-case letters and digits, starting with a letter (e.g. acme).
        slug: String,
        /// Put the tenant's database on this server (postgres://owner@host:port/dbname; the
        /// database name defaults to rig_t_<slug>). Only host and port are kept in the catalog:
        /// every process connects there with its own role and password.
        #[arg(long)]
        database_url: Option<String>,
    },
    /// Every tenant, with where its log is, whether it is served, and its settings.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Stop serving a tenant (within 10 s, everywhere); its data is kept.
    Disable { slug: String },
    /// Serve a disabled tenant again.
    Enable { slug: String },
    /// Make a new token for a tenant and print it, once: only its SHA-256 is stored.
    Token { slug: String },
    /// Route GitHub deliveries sent to the unprefixed webhook to this tenant.
    Route(RouteArgs),
    /// Set (or --unset) one of the tenant's own settings. Keys: notifier.discord_webhook_url,
    /// notifier.events, stale_heartbeat.threshold, github.webhook_secret, github.approve_label,
    /// prices. Secrets are never printed back.
    Set {
        slug: String,
        key: String,
        /// The value; omit it with --unset to go back to the deployment's value.
        value: Option<String>,
        #[arg(long, conflicts_with = "value")]
        unset: bool,
    },
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("by").required(true).multiple(false)))]
pub struct RouteArgs {
    slug: String,
    /// A repository's full name, owner/name (matched first).
    #[arg(long, group = "by")]
    repo: Option<String>,
    /// A GitHub App installation id (matched second).
    #[arg(long, group = "by")]
    installation: Option<String>,
    /// An owner's login, user or organisation (matched last).
    #[arg(long, group = "by")]
    owner: Option<String>,
}

pub async fn run(cmd: TenantsCommand) -> anyhow::Result<ExitCode> {
    let settings = crate::load_settings()?;
    let control = crate::connect(&settings).await?;
    match cmd {
        TenantsCommand::Add { slug, database_url } => add(&settings, &control, &slug, database_url.as_deref()).await,
        TenantsCommand::List { json } => list(&control, json).await,
        TenantsCommand::Disable { slug } => enable(&control, &slug, false).await,
        TenantsCommand::Enable { slug } => enable(&control, &slug, true).await,
        TenantsCommand::Token { slug } => {
            let t = existing(&control, &slug).await?;
            if t.is_default() {
                bail!("the default tenant is reached with the deployment's ingest.auth_tokens; tenant tokens are for other tenants");
            }
            let token = rig_tenants::new_token(&control, &slug).await?;
            eprintln!("a new token for {slug}: it is shown this once; only its SHA-256 is stored");
            println!("{}", token.expose_secret());
            Ok(ExitCode::SUCCESS)
        }
        TenantsCommand::Route(r) => {
            let t = existing(&control, &r.slug).await?;
            if t.is_default() {
                bail!("deliveries that match no route go to default already");
            }
            let (kind, key) = match (&r.repo, &r.installation, &r.owner) {
                (Some(k), _, _) => (RouteKind::Repo, k),
                (_, Some(k), _) => (RouteKind::Installation, k),
                (_, _, Some(k)) => (RouteKind::Owner, k),
                _ => bail!("give --repo owner/name, --installation ID or --owner LOGIN"),
            };
            rig_tenants::add_route(&control, &r.slug, kind, key).await?;
            println!("GitHub deliveries for {key} now go to {}", r.slug);
            Ok(ExitCode::SUCCESS)
        }
        TenantsCommand::Set {
            slug,
            key,
            value,
            unset,
        } => {
            let t = existing(&control, &slug).await?;
            if t.is_default() {
                bail!("the default tenant's settings are the deployment's configuration (rig.toml, RIG_… variables)");
            }
            if value.is_none() && !unset {
                bail!("give a value, or --unset to go back to the deployment's value");
            }
            rig_tenants::settings::set(&control, &slug, &key, value.as_deref()).await?;
            if unset {
                println!("{slug}: {key} unset (the deployment's value applies)");
            } else if rig_tenants::settings::is_secret(&key) {
                println!("{slug}: {key} set (a secret: not shown)");
            } else {
                println!("{slug}: {key} set");
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// The tenant, or an error that says how to see which there are.
async fn existing(control: &PgPool, slug: &str) -> anyhow::Result<Tenant> {
    rig_tenants::get(control, slug)
        .await?
        .with_context(|| format!("there is no tenant {slug:?} (see `rigctl tenants list`)"))
}

async fn add(
    settings: &Settings,
    control: &PgPool,
    slug: &str,
    database_url: Option<&str>,
) -> anyhow::Result<ExitCode> {
    rig_tenants::check_slug(slug).map_err(anyhow::Error::msg)?;
    if rig_tenants::get(control, slug).await?.is_some() {
        bail!("tenant {slug} exists already (see `rigctl tenants list`)");
    }
    let (owner_url, tenant) = match database_url {
        Some(url) => {
            let (server, name) = rig_tenants::server_of(url)?;
            let name = name.unwrap_or_else(|| rig_tenants::default_database_name(slug));
            let owner_url = rig_ops::pg::with_database(url, &name)?;
            let tenant = Tenant {
                slug: slug.to_owned(),
                database_name: name,
                server: Some(server),
                enabled: true,
            };
            (owner_url, tenant)
        }
        None => {
            let name = rig_tenants::default_database_name(slug);
            let owner_url = rig_ops::pg::with_database(settings.database_url.expose(), &name)?;
            let tenant = Tenant {
                slug: slug.to_owned(),
                database_name: name,
                server: None,
                enabled: true,
            };
            (owner_url, tenant)
        }
    };
    migrate_log(settings, &owner_url)
        .await
        .with_context(|| format!("tenant {slug}: create and migrate its log, {}", tenant.place()))?;
    rig_tenants::register(control, &tenant).await?;
    println!("tenant {slug} added: its log is {}", tenant.place());
    println!("next: `rigctl tenants token {slug}` for its clients; its routes are /t/{slug}/…");
    Ok(ExitCode::SUCCESS)
}

/// Creates (if needed) and migrates one log database as the owner, creating the processes'
/// roles on its server and setting their passwords where the processes' URLs carry them.
pub async fn migrate_log(settings: &Settings, owner_url: &str) -> anyhow::Result<()> {
    rig_ops::pg::ensure_database(owner_url).await?;
    let pool = PgPoolOptions::new()
        .max_connections(2)
        .connect_with(rig_log::db::connect_options(owner_url)?)
        .await?;
    rig_log::db::migrate(&pool).await?;
    let urls: Vec<(rig_log::roles::Role, &str)> = rig_log::roles::ROLES
        .into_iter()
        .filter_map(|r| settings.own_database_url(r).map(|u| (r, u.expose())))
        .collect();
    rig_log::roles::set_passwords(&pool.connect_options(), &urls).await?;
    pool.close().await;
    Ok(())
}

/// The owner's URL of a tenant's log: the control database's URL (the owner's role and password)
/// with the tenant's database, and its server's host and port.
pub fn owner_url(settings: &Settings, tenant: &Tenant) -> anyhow::Result<String> {
    let own = rig_log::db::connect_options(settings.database_url.expose())?;
    let opts = tenant.connect_options(&own)?;
    let mut u = url::Url::parse(settings.database_url.expose())?;
    u.set_host(Some(opts.get_host()))
        .map_err(|e| anyhow::anyhow!("tenant {}: bad host: {e}", tenant.slug))?;
    u.set_port(Some(opts.get_port())).ok();
    u.set_path(&format!("/{}", tenant.database_name));
    Ok(u.to_string())
}

/// A pool on one tenant's log, as the owner (rigctl's role).
pub async fn connect_tenant(settings: &Settings, control: &PgPool, slug: &str) -> anyhow::Result<PgPool> {
    let t = existing(control, slug).await?;
    if t.is_default() {
        return Ok(control.clone());
    }
    let url = owner_url(settings, &t)?;
    let pool = rig_log::db::pool(&url, 4)?;
    sqlx::query("SELECT 1")
        .execute(&pool)
        .await
        .with_context(|| format!("cannot reach tenant {slug}'s log ({})", t.place()))?;
    Ok(pool)
}

async fn enable(control: &PgPool, slug: &str, enabled: bool) -> anyhow::Result<ExitCode> {
    let t = existing(control, slug).await?;
    if t.is_default() {
        bail!("the default tenant is always served");
    }
    rig_tenants::set_enabled(control, slug, enabled).await?;
    if enabled {
        println!("tenant {slug} enabled: ingest and every worker serve it again within 10 s");
    } else {
        println!(
            "tenant {slug} disabled: within 10 s ingest answers 404 for it and no worker serves it; its data is kept"
        );
    }
    Ok(ExitCode::SUCCESS)
}

async fn list(control: &PgPool, json: bool) -> anyhow::Result<ExitCode> {
    let tenants = rig_tenants::list(control).await?;
    let mut rows = Vec::new();
    for t in &tenants {
        let settings = rig_tenants::settings::shown(control, &t.slug).await?;
        rows.push((t, settings));
    }
    if json {
        let out: Vec<serde_json::Value> = rows
            .iter()
            .map(|(t, s)| {
                serde_json::json!({
                    "tenant": t.slug,
                    "enabled": t.enabled,
                    "database": t.database_name,
                    "server": t.server,
                    "settings": s
                        .iter()
                        .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
                        .collect::<serde_json::Map<_, _>>(),
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!("{:<20} {:<8} {:<40} SETTINGS", "TENANT", "SERVED", "LOG");
    for (t, s) in rows {
        let settings: Vec<String> = s.iter().map(|(k, v)| format!("{k}={v}")).collect();
        println!(
            "{:<20} {:<8} {:<40} {}",
            t.slug,
            if t.enabled { "yes" } else { "DISABLED" },
            t.place(),
            if settings.is_empty() {
                "-".to_owned()
            } else {
                settings.join(" ")
            }
        );
    }
    Ok(ExitCode::SUCCESS)
}
