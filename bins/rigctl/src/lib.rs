//! rigctl: migrate, run everything locally (`up`), inspect streams, issues and consumers, reset
//! and skip consumers. Human tables by default, `--json` for scripts.

pub mod bench;
mod http_load;
pub mod inspect;
pub mod simulate;
pub mod tenants;
pub mod up;

use anyhow::Context;
use clap::{Parser, Subcommand};
use rig_log::roles::{Role, ROLES};
use rig_ops::Settings;
use sqlx::PgPool;
use std::process::ExitCode;

#[derive(Debug, Parser)]
#[command(
    name = "rigctl",
    version,
    about = "Operate rig-conductor: an event-sourced memory for an AI coding-agent rig",
    long_about = "Operate rig-conductor: an event-sourced memory for an AI coding-agent rig.\n\n\
        Configuration comes from rig.toml (or the file in RIG_CONFIG), then RIG_… environment \
        variables (RIG_INGEST__LISTEN=0.0.0.0:8080), then DATABASE_URL.\n\n\
        Start here:  rigctl up --demo      (everything, with a simulated rig)\n\
        Then:        rigctl issues | rigctl stream 'acme/widgets#1' | rigctl consumers"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create the database if needed, create the processes' database roles, apply the migrations,
    /// to the control database and then every tenant's log.
    ///
    /// Run it as the role that owns the tables. Each process connects as a role of its own
    /// (rig_ingest, rig_token_projector, rig_cost_projector, rig_stale_heartbeat, rig_notifier):
    /// where a process's URL is configured with a password (ingest.database_url,
    /// token_projector.database_url, …, or RIG_INGEST__DATABASE_URL and so on), that password is
    /// set on its role.
    Migrate,
    /// Run every process of the Procfile (finding or starting Postgres, migrating first) until Ctrl-C.
    Up(up::UpArgs),
    /// Show one stream as a timeline with its folded state; time travel with --to-version or --at.
    Stream {
        /// `owner/repo#number` or `agent:<id>` (quote the `#` in shells).
        stream_id: String,
        /// The tenant whose log to read (default: the default tenant).
        #[arg(long, default_value = rig_tenants::DEFAULT)]
        tenant: String,
        /// Show the stream as it was at this version.
        #[arg(long, conflicts_with = "at")]
        to_version: Option<i64>,
        /// Show the events recorded up to this RFC 3339 time.
        #[arg(long)]
        at: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// The issue board: every issue with its status, agent, version and times.
    Issues {
        /// Only issues in this status (approved, assigned, in_progress, in_review, merged, done).
        #[arg(long)]
        status: Option<String>,
        /// The tenant whose board to show (default: the default tenant).
        #[arg(long, default_value = rig_tenants::DEFAULT)]
        tenant: String,
        #[arg(long)]
        json: bool,
    },
    /// Each consumer's position, the log head, lag, whether an instance is active, paused, last
    /// error: one row per (consumer, tenant), for every tenant that is served.
    Consumers {
        /// Only this tenant's consumers.
        #[arg(long)]
        tenant: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Rebuild a projection: empty its tables and move its checkpoint to the start, in one
    /// transaction (safe while it runs). The notifier restarts at the head instead.
    Reset {
        /// token-projector, cost-projector, stale-heartbeat or notifier.
        consumer: String,
        /// The tenant whose projection to rebuild (default: the default tenant).
        #[arg(long, default_value = rig_tenants::DEFAULT)]
        tenant: String,
    },
    /// Dead-letter the event a paused consumer stopped at, and let it go on.
    Skip {
        consumer: String,
        /// The position it is paused at (see `rigctl consumers`).
        position: i64,
        /// The tenant whose consumer it is (default: the default tenant).
        #[arg(long, default_value = rig_tenants::DEFAULT)]
        tenant: String,
    },
    /// Tenants: organisations whose logs are separate databases, served by the same processes.
    #[command(subcommand)]
    Tenants(tenants::TenantsCommand),
    /// Feed a realistic simulated rig through the HTTP API: agents racing for issues, heartbeats,
    /// branches, PRs, CI, reviews, token usage, and agents going silent for stale-heartbeat to catch.
    Simulate(simulate::SimulateArgs),
    /// Measure throughput, rebuild speed, latency and idle cost next to raw-Postgres baselines,
    /// in a scratch database that is dropped afterwards. JSON on stdout.
    Bench(bench::BenchArgs),
}

pub async fn dispatch(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Migrate => {
            let settings = load_settings()?;
            let url = settings.database_url.expose().to_owned();
            rig_ops::pg::ensure_database(&url)
                .await
                .context("create the database")?;
            let pool = connect(&settings).await?;
            rig_log::db::migrate(&pool).await.context("apply migrations")?;
            let n = rig_log::db::MIGRATOR.iter().count();
            println!(
                "migrated {} ({n} migrations applied or already current)",
                settings.database_url
            );
            // Each process's own URL, where configured, carries its role's password.
            let urls: Vec<(Role, &str)> = ROLES
                .into_iter()
                .filter_map(|r| settings.own_database_url(r).map(|u| (r, u.expose())))
                .collect();
            let (set, notes) = rig_log::roles::set_passwords(&pool.connect_options(), &urls).await?;
            for note in notes {
                println!("{note}");
            }
            let names = |roles: &mut dyn Iterator<Item = Role>| roles.map(Role::name).collect::<Vec<_>>().join(", ");
            println!("database roles: {}", names(&mut ROLES.into_iter()));
            if !set.is_empty() {
                println!(
                    "passwords set from the processes' database URLs: {}",
                    names(&mut set.into_iter())
                );
            }
            // Every tenant's log, disabled ones too (they may be enabled again at any moment).
            let mut failed = 0;
            for t in rig_tenants::list(&pool).await?.into_iter().filter(|t| !t.is_default()) {
                let url = tenants::owner_url(&settings, &t)?;
                match tenants::migrate_log(&settings, &url).await {
                    Ok(()) => println!("migrated tenant {} ({})", t.slug, t.place()),
                    Err(e) => {
                        failed += 1;
                        eprintln!("rigctl: tenant {} ({}): {e:#}", t.slug, t.place());
                    }
                }
            }
            if failed > 0 {
                anyhow::bail!("{failed} tenant log(s) could not be migrated (see above); run `rigctl migrate` again once they are reachable");
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Up(args) => up::run(args).await,
        Command::Bench(args) => bench::run(args).await,
        Command::Simulate(args) => simulate::run(args).await,
        Command::Tenants(cmd) => tenants::run(cmd).await,
        Command::Stream {
            stream_id,
            to_version,
            at,
            json,
            tenant,
        } => {
            let pool = connect_log(&tenant).await?;
            inspect::stream(&pool, &stream_id, to_version, at.as_deref(), json).await
        }
        Command::Issues { status, json, tenant } => {
            let pool = connect_log(&tenant).await?;
            inspect::issues(&pool, status.as_deref(), json).await
        }
        Command::Consumers { json, tenant } => {
            let settings = load_settings()?;
            let control = connect(&settings).await?;
            inspect::consumers(&settings, &control, tenant.as_deref(), json).await
        }
        Command::Reset { consumer, tenant } => {
            let pool = connect_log(&tenant).await?;
            let info = known_consumer(&consumer)?;
            let start = rig_consumer::reset(&pool, info).await?;
            if info.tables.is_empty() {
                println!(
                    "reset {}: checkpoint moved to the head ({start}); nothing from before is sent again",
                    info.name
                );
            } else {
                println!(
                    "reset {}: emptied {} and moved the checkpoint to {start}; the running consumer now replays the log",
                    info.name,
                    info.tables.join(", ")
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Skip {
            consumer,
            position,
            tenant,
        } => {
            let pool = connect_log(&tenant).await?;
            let info = known_consumer(&consumer)?;
            rig_consumer::skip(&pool, info.name, position).await?;
            println!(
                "skipped position {position} for {}: recorded in dead_letters; the consumer goes on",
                info.name
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}

pub fn load_settings() -> anyhow::Result<Settings> {
    Ok(Settings::load()?)
}

fn known_consumer(name: &str) -> anyhow::Result<&'static rig_consumer::ConsumerInfo> {
    rig_projections::consumer_info(name).with_context(|| {
        let names: Vec<&str> = rig_projections::CONSUMERS.iter().map(|c| c.name).collect();
        format!("unknown consumer {name:?}; the consumers are {}", names.join(", "))
    })
}

/// A pool on one tenant's log (`default`: the control database).
async fn connect_log(tenant: &str) -> anyhow::Result<PgPool> {
    let settings = load_settings()?;
    let control = connect(&settings).await?;
    tenants::connect_tenant(&settings, &control, tenant).await
}

pub async fn connect(settings: &Settings) -> anyhow::Result<PgPool> {
    let pool = rig_log::db::pool(settings.database_url.expose(), 4)?;
    sqlx::query("SELECT 1").execute(&pool).await.with_context(|| {
        format!(
            "cannot reach the database at {} (set DATABASE_URL or database_url in rig.toml)",
            settings.database_url
        )
    })?;
    Ok(pool)
}

/// Builds the workspace binaries `stale` under `cargo run`, named together with rigctl itself.
/// Cargo resolves each dependency's features from the packages one build names, so building
/// the workers alone would compile much of the dependency tree a second time with another
/// feature set. Named with rigctl, whose dependencies cover the workers' with the same
/// features (see its Cargo.toml), the resolution is the one `cargo run -p rigctl` made, and
/// only the workers' own crates compile: a newcomer's first `up --demo` builds the tree once.
pub(crate) fn build_with_rigctl(
    cargo: &str,
    dir: &std::path::Path,
    stale: &[&str],
    quiet: bool,
    cwd: Option<&std::path::Path>,
) -> anyhow::Result<()> {
    let mut names = stale.to_vec();
    names.push("rigctl");
    rig_ops::process::cargo_build(cargo, dir, &names, quiet, cwd)
}
