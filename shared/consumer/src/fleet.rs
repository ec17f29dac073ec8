//! One worker process serving every enabled tenant, and replicas of it sharing the tenants.
//!
//! **Who works which tenant.** Every (consumer, tenant) has a session advisory lock on the
//! control database, and only the replica holding it runs that tenant's consumer. All of a
//! replica's locks sit on ONE connection (the "lock connection"), so a replica that dies, or
//! loses that connection, releases them all at once and the others take them at their next tick
//! (every second). The locks only decide who works; exactly-once comes, as always, from the
//! checkpoint's compare-and-set in the tenant's own database, which fences a replica that has
//! not noticed yet that it lost a lock.
//!
//! **Balance.** Each replica also holds one "replica slot" lock; the granted slots say how many
//! replicas (N) are alive and each one's rank. With T enabled tenants, a replica holds at most
//! ⌈T / N⌉; since N · ⌈T / N⌉ ≥ T, every tenant finds a holder. A replica prefers the tenants
//! whose index in slug order is its rank modulo N, and when it is over its share it lets go of
//! the others first, so a new replica gets its share within a few ticks.
//!
//! **Connections.** Per process: the lock connection and one LISTEN connection to the control
//! database (wake-ups for every tenant arrive there: ingest notifies the control database after
//! each commit in a tenant's database), a small pool for the catalog and `/readyz`, and per held
//! tenant a pool that keeps no connection once the tenant has been idle for a few seconds.
//!
//! A deployment without tenants is this with T = 1: the active instance holds `default`, the
//! others wait as hot standbys, exactly as one consumer per name always did.

use crate::{Companion, Consumer, ConsumerConfig, Projection};
use rig_log::db::{consumer_lock_key, IdleBudget, EVENTS_CHANNEL};
use rig_tenants::{Tenant, TenantSettings, CATALOG_CHANNEL, DEFAULT, TENANT_EVENTS_CHANNEL};
use sqlx::postgres::{PgConnectOptions, PgListener, PgPoolOptions};
use sqlx::{Connection, PgConnection, PgPool};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{watch, Notify};
use tokio_util::sync::CancellationToken;

/// How often a replica looks at the catalog and the other replicas.
const TICK: Duration = Duration::from_secs(1);
/// How often the catalog is re-read without a notification.
const CATALOG_EVERY: Duration = Duration::from_secs(5);
/// Replica slots per worker: more replicas than this wait until a slot frees.
const MAX_REPLICAS: i64 = 64;
/// A tenant's pool closes connections idle this long: an idle tenant holds none.
const TENANT_IDLE: Duration = Duration::from_secs(5);
/// Connections of one tenant's pool: the batch transaction, its catch-up reader, the companion.
const TENANT_POOL_SIZE: u32 = 3;
/// Batches of tenants other than `default` running at once in one process: with the idle
/// connections kept below, what bounds the process's connections however many tenants are busy.
const TENANT_BATCHES: usize = 4;
/// Idle connections kept across all tenants other than `default` (beyond these, a connection
/// is closed when its batch ends, so busy tenants take turns rather than each keeping one).
const TENANT_IDLE_KEPT: u32 = 4;
/// The safety poll of a tenant other than `default`: its wake-ups come over the control
/// database's LISTEN (and every reconnect of it wakes every tenant), so the poll only covers a
/// notification that was never sent (ingest killed between a commit and its notify). Rare, so
/// that 200 idle tenants cost next to nothing: each look opens a connection to the tenant's
/// database, and every connection opened while other tenants are busy may close one of theirs
/// (`TENANT_IDLE_KEPT`).
const TENANT_POLL: Duration = Duration::from_secs(300);

/// How often a task of `tenant` that waits for wake-ups looks anyway: `poll` for `default`
/// (its LISTEN is the one it always had), [`TENANT_POLL`] or `poll` if longer for the others.
pub fn idle_poll(tenant: &str, poll: Duration) -> Duration {
    if tenant == DEFAULT {
        poll
    } else {
        poll.max(TENANT_POLL)
    }
}

/// What a worker builds for each tenant it takes up.
pub struct TenantCtx<'a> {
    pub slug: &'a str,
    /// The tenant's log, connected as the worker's role.
    pub pool: &'a PgPool,
    /// The tenant's own settings, over the deployment's.
    pub settings: &'a TenantSettings,
}

/// The session advisory lock key of (consumer, tenant). `default`'s is the consumer's own key,
/// as it was before tenants, so that `rigctl consumers` finds the active instance either way.
pub fn tenant_lock_key(consumer: &str, tenant: &str) -> i64 {
    if tenant == DEFAULT {
        consumer_lock_key(consumer)
    } else {
        consumer_lock_key(&format!("{consumer}@{tenant}"))
    }
}

fn slot_key(consumer: &str, slot: i64) -> i64 {
    consumer_lock_key(&format!("{consumer}#replica{slot}"))
}

/// A tenant this replica works.
struct Held {
    key: i64,
    fingerprint: u64,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

/// The replica's standing with the others.
struct Standing {
    lock: PgConnection,
    slot: i64,
}

/// Builds a tenant's projection and companion.
pub type Parts<P> = dyn Fn(&TenantCtx<'_>) -> anyhow::Result<(P, Option<Companion>)> + Send + Sync;

/// The fleet of one worker process.
pub struct Fleet<P: Projection> {
    consumer: &'static str,
    control: PgPool,
    /// The worker's own connection options (its role) to the control database.
    own: PgConnectOptions,
    default_pool_size: u32,
    cfg: ConsumerConfig,
    parts: Box<Parts<P>>,
    wakes: Arc<Mutex<HashMap<String, Arc<Notify>>>>,
    catalog_changed: Arc<Notify>,
    held: HashMap<String, Held>,
    standing: Option<Standing>,
    tenants: Vec<Tenant>,
    settings: HashMap<String, TenantSettings>,
    catalog_read: Option<Instant>,
    /// The pools of the tenants other than `default` this replica works, under one budget of
    /// idle connections ([`TENANT_IDLE_KEPT`]).
    pools: IdleBudget,
    /// Turns for batches of tenants other than `default`.
    gate: Arc<tokio::sync::Semaphore>,
}

impl<P: Projection> Fleet<P> {
    pub fn new(
        consumer: &'static str,
        control: PgPool,
        default_pool_size: u32,
        cfg: ConsumerConfig,
        parts: Box<Parts<P>>,
    ) -> Self {
        let own = (*control.connect_options()).clone();
        Fleet {
            consumer,
            control,
            own,
            default_pool_size,
            cfg,
            parts,
            wakes: Arc::default(),
            catalog_changed: Arc::new(Notify::new()),
            held: HashMap::new(),
            standing: None,
            tenants: Vec::new(),
            settings: HashMap::new(),
            catalog_read: None,
            pools: IdleBudget::new(TENANT_IDLE_KEPT),
            gate: Arc::new(tokio::sync::Semaphore::new(TENANT_BATCHES)),
        }
    }

    /// Runs until `shutdown`: listens for wake-ups, takes and lets go of tenants, and stops every
    /// tenant's consumer before returning.
    pub async fn run(mut self, shutdown: CancellationToken) {
        crate::register_metrics(self.consumer, DEFAULT);
        self.spawn_listener(shutdown.clone());
        let mut backoff = crate::new_backoff();
        while !shutdown.is_cancelled() {
            match self.tick().await {
                Ok(()) => backoff = crate::new_backoff(),
                Err(e) => {
                    let delay = backoff.next().unwrap_or(Duration::from_secs(10));
                    tracing::warn!(consumer = self.consumer, error = %e, ?delay,
                        "lost the control database; standing down every tenant and retrying");
                    metrics::counter!("rig_consumer_errors_total", "consumer" => self.consumer, "tenant" => DEFAULT, "kind" => "transient")
                        .increment(1);
                    self.stand_down().await;
                    crate::sleep_or_cancel(delay, &shutdown).await;
                    continue;
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(TICK) => {}
                _ = self.catalog_changed.notified() => { self.catalog_read = None; }
                _ = shutdown.cancelled() => {}
            }
        }
        self.stand_down().await;
        tracing::info!(consumer = self.consumer, "stopped");
    }

    /// Stops every tenant's consumer and gives up the locks (closing the lock connection).
    async fn stand_down(&mut self) {
        let slugs: Vec<String> = self.held.keys().cloned().collect();
        for slug in slugs {
            self.release(&slug, false).await;
        }
        if let Some(s) = self.standing.take() {
            let _ = s.lock.close().await;
        }
    }

    async fn tick(&mut self) -> anyhow::Result<()> {
        if self.standing.is_none() {
            self.standing = Some(self.take_slot().await?);
        }
        if self.catalog_read.is_none_or(|t| t.elapsed() >= CATALOG_EVERY) {
            self.read_catalog().await?;
        }
        let (live, rank) = self.replicas().await?;
        let enabled: Vec<Tenant> = self.tenants.iter().filter(|t| t.enabled).cloned().collect();
        let total = enabled.len();
        let share = total.div_ceil(live.max(1));
        let preferred = |i: usize| live > 0 && i % live == rank;

        // Let go of what is no longer ours to work: disabled or removed tenants, and, when over
        // our share, the tenants another replica prefers.
        let enabled_slugs: Vec<String> = enabled.iter().map(|t| t.slug.clone()).collect();
        let gone: Vec<String> = self
            .held
            .keys()
            .filter(|s| !enabled_slugs.contains(s))
            .cloned()
            .collect();
        for slug in gone {
            tracing::info!(consumer = self.consumer, tenant = %slug, "tenant disabled or removed: no longer served");
            self.release(&slug, true).await;
        }
        if self.held.len() > share {
            let mut extra: Vec<(bool, String)> = self
                .held
                .keys()
                .map(|s| {
                    let i = enabled_slugs.iter().position(|e| e == s).unwrap_or(0);
                    (preferred(i), s.clone())
                })
                .collect();
            extra.sort();
            let n = self.held.len() - share;
            for (_, slug) in extra.into_iter().take(n) {
                tracing::info!(consumer = self.consumer, tenant = %slug, share, "over this replica's share: handing the tenant over");
                self.release(&slug, true).await;
            }
        }
        // Settings changed: the tenant's consumer is rebuilt with the new ones (same lock).
        let changed: Vec<String> = self
            .held
            .iter()
            .filter(|(slug, h)| self.settings.get(*slug).map_or(0, |s| s.fingerprint) != h.fingerprint)
            .map(|(slug, _)| slug.clone())
            .collect();
        for slug in changed {
            if let Some(t) = enabled.iter().find(|t| t.slug == slug).cloned() {
                tracing::info!(consumer = self.consumer, tenant = %slug, "tenant settings changed: restarting its consumer");
                if let Some(h) = self.held.remove(&slug) {
                    h.stop.cancel();
                    let _ = h.task.await;
                    self.pools.remove(&slug);
                    self.start(&t, h.key)?;
                }
            }
        }
        // Take up to our share: preferred tenants first, then any that nobody holds.
        if self.held.len() < share {
            let mut order: Vec<(bool, usize)> = (0..enabled.len()).map(|i| (!preferred(i), i)).collect();
            order.sort();
            let candidates: Vec<Tenant> = order
                .into_iter()
                .map(|(_, i)| enabled[i].clone())
                .filter(|t| !self.held.contains_key(&t.slug))
                .collect();
            for t in candidates {
                if self.held.len() >= share {
                    break;
                }
                let key = tenant_lock_key(self.consumer, &t.slug);
                let standing = self
                    .standing
                    .as_mut()
                    .ok_or_else(|| anyhow::anyhow!("no lock connection"))?;
                let got: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
                    .bind(key)
                    .fetch_one(&mut standing.lock)
                    .await?;
                if got {
                    if let Err(e) = self.start(&t, key) {
                        tracing::error!(consumer = self.consumer, tenant = %t.slug, error = %e, "cannot start the tenant's consumer");
                        if let Some(s) = self.standing.as_mut() {
                            let _ = sqlx::query("SELECT pg_advisory_unlock($1)")
                                .bind(key)
                                .execute(&mut s.lock)
                                .await;
                        }
                    }
                }
            }
        }
        self.report_standby().await;
        Ok(())
    }

    /// Connects the lock connection and takes the lowest free replica slot.
    async fn take_slot(&self) -> anyhow::Result<Standing> {
        let mut lock = PgConnection::connect_with(&self.own).await?;
        for slot in 0..MAX_REPLICAS {
            let got: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
                .bind(slot_key(self.consumer, slot))
                .fetch_one(&mut lock)
                .await?;
            if got {
                tracing::info!(consumer = self.consumer, slot, "joined the replicas of this worker");
                return Ok(Standing { lock, slot });
            }
        }
        anyhow::bail!("{MAX_REPLICAS} replicas of {} are running already", self.consumer)
    }

    /// The live replicas (by their granted slot locks) and this one's rank among them. Runs on the
    /// lock connection, so it also proves that connection (and with it our locks) is alive.
    async fn replicas(&mut self) -> anyhow::Result<(usize, usize)> {
        let keys: Vec<i64> = (0..MAX_REPLICAS).map(|s| slot_key(self.consumer, s)).collect();
        let standing = self
            .standing
            .as_mut()
            .ok_or_else(|| anyhow::anyhow!("no lock connection"))?;
        let live: Vec<i64> = sqlx::query_scalar(
            "SELECT s.slot - 1 FROM unnest($1::bigint[]) WITH ORDINALITY AS s(key, slot) \
             WHERE EXISTS (SELECT 1 FROM pg_locks l WHERE l.locktype = 'advisory' AND l.granted \
               AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database()) \
               AND ((l.classid::bigint << 32) | l.objid::bigint) = s.key) \
             ORDER BY s.slot",
        )
        .bind(&keys)
        .fetch_all(&mut standing.lock)
        .await?;
        let rank = live.iter().position(|s| *s == standing.slot).unwrap_or(0);
        Ok((live.len(), rank))
    }

    async fn read_catalog(&mut self) -> anyhow::Result<()> {
        self.tenants = rig_tenants::list(&self.control).await?;
        self.settings = TenantSettings::load_all(&self.control).await?;
        self.catalog_read = Some(Instant::now());
        for t in &self.tenants {
            if t.enabled && !self.held.contains_key(&t.slug) {
                // Every enabled tenant shows in the metrics, worked here or not.
                crate::register_metrics(self.consumer, &t.slug);
            }
        }
        Ok(())
    }

    /// Starts a tenant's consumer (and companion) under the lock `key`, which we hold.
    fn start(&mut self, tenant: &Tenant, key: i64) -> anyhow::Result<()> {
        let slug = tenant.slug.clone();
        let pool = if tenant.is_default() {
            PgPoolOptions::new()
                .max_connections(self.default_pool_size)
                .min_connections(0)
                .acquire_timeout(Duration::from_secs(5))
                .connect_lazy_with(self.own.clone())
        } else {
            let options = PgPoolOptions::new()
                .max_connections(TENANT_POOL_SIZE)
                .min_connections(0)
                .idle_timeout(TENANT_IDLE)
                .acquire_timeout(Duration::from_secs(5));
            let pool = self
                .pools
                .apply(options)
                .connect_lazy_with(tenant.connect_options(&self.own)?);
            self.pools.add(&slug, pool.clone());
            pool
        };
        let settings = self.settings.get(&slug).cloned().unwrap_or_default();
        let (projection, companion) = (self.parts)(&TenantCtx {
            slug: &slug,
            pool: &pool,
            settings: &settings,
        })?;
        let wake = self
            .wakes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(slug.clone())
            .or_default()
            .clone();
        let mut cfg = self.cfg.clone();
        cfg.poll_interval = idle_poll(&slug, cfg.poll_interval);
        let mut consumer = Consumer::new(pool.clone(), projection, cfg).for_tenant(&slug, wake);
        if !tenant.is_default() {
            consumer = consumer.gated(self.gate.clone());
        }
        let stop = CancellationToken::new();
        let (active, active_rx) = watch::channel(true);
        let beside = companion.map(|run| tokio::spawn(run(active_rx, stop.clone())));
        let (name, stop2) = (self.consumer, stop.clone());
        tracing::info!(consumer = name, tenant = %slug, place = %tenant.place(), "serving the tenant");
        let task = tokio::spawn(async move {
            consumer.run_led(stop2.clone()).await;
            // The companion acts only for a consumer that runs.
            active.send_replace(false);
            stop2.cancel();
            if let Some(t) = beside {
                let _ = t.await;
            }
            pool.close().await;
        });
        self.held.insert(
            slug,
            Held {
                key,
                fingerprint: settings.fingerprint,
                stop,
                task,
            },
        );
        Ok(())
    }

    /// Stops a tenant's consumer, then lets go of its lock (`unlock`: false when the lock
    /// connection is being closed anyway).
    async fn release(&mut self, slug: &str, unlock: bool) {
        let Some(h) = self.held.remove(slug) else { return };
        h.stop.cancel();
        let _ = h.task.await;
        self.pools.remove(slug);
        if unlock {
            if let Some(s) = self.standing.as_mut() {
                let _ = sqlx::query("SELECT pg_advisory_unlock($1)")
                    .bind(h.key)
                    .execute(&mut s.lock)
                    .await;
            }
        }
        metrics::gauge!("rig_consumer_active", "consumer" => self.consumer, "tenant" => slug.to_owned()).set(0.0);
    }

    /// A hot standby of `default` still reports where the active instance is, from the control
    /// database (which is `default`'s log): an operator sees the lag whichever replica is scraped.
    async fn report_standby(&self) {
        if self.held.contains_key(DEFAULT) {
            return;
        }
        if let Ok((pos, head)) = sqlx::query_as::<_, (i64, Option<i64>)>(
            "SELECT coalesce((SELECT position FROM checkpoints WHERE consumer = $1), 0), \
                    (SELECT max(position) FROM events)",
        )
        .bind(self.consumer)
        .fetch_one(&self.control)
        .await
        {
            let head = head.unwrap_or(0);
            let l = [("consumer", self.consumer), ("tenant", DEFAULT)];
            metrics::gauge!("rig_consumer_position", &l).set(pos as f64);
            metrics::gauge!("rig_consumer_head_position", &l).set(head as f64);
            metrics::gauge!("rig_consumer_lag_events", &l).set((head - pos).max(0) as f64);
        }
    }

    /// LISTEN on the control database, in its own task: `rig_events` wakes `default`,
    /// `rig_tenant_events` the tenant it names, `rig_tenants` the catalog. Every (re)connect
    /// wakes every tenant and re-reads the catalog: what was said while not listening is found.
    fn spawn_listener(&self, shutdown: CancellationToken) {
        let (control, wakes, catalog) = (self.control.clone(), self.wakes.clone(), self.catalog_changed.clone());
        tokio::spawn(async move {
            let mut backoff = crate::new_backoff();
            while !shutdown.is_cancelled() {
                let mut listener = match PgListener::connect_with(&control).await {
                    Ok(l) => l,
                    Err(_) => {
                        crate::sleep_or_cancel(backoff.next().unwrap_or(Duration::from_secs(10)), &shutdown).await;
                        continue;
                    }
                };
                if listener
                    .listen_all([EVENTS_CHANNEL, TENANT_EVENTS_CHANNEL, CATALOG_CHANNEL])
                    .await
                    .is_err()
                {
                    crate::sleep_or_cancel(backoff.next().unwrap_or(Duration::from_secs(10)), &shutdown).await;
                    continue;
                }
                backoff = crate::new_backoff();
                for w in wakes.lock().unwrap_or_else(|e| e.into_inner()).values() {
                    w.notify_one();
                }
                catalog.notify_one();
                loop {
                    tokio::select! {
                        r = listener.try_recv() => match r {
                            Ok(Some(n)) => {
                                let slug = match n.channel() {
                                    c if c == EVENTS_CHANNEL => DEFAULT,
                                    c if c == TENANT_EVENTS_CHANNEL => n.payload(),
                                    _ => { catalog.notify_one(); continue; }
                                };
                                if let Some(w) = wakes.lock().unwrap_or_else(|e| e.into_inner()).get(slug) {
                                    w.notify_one();
                                }
                            }
                            Ok(None) | Err(_) => break,
                        },
                        _ = shutdown.cancelled() => return,
                    }
                }
            }
        });
    }
}
