//! Helpers for the whole-system tests: a fresh database per test on the real Postgres (found
//! like `rigctl up` finds it), the real binaries spawned as processes with real signals, and
//! waiting for conditions with a deadline instead of sleeping.
#![allow(clippy::unwrap_used)]

use anyhow::{bail, Context};
use rig_ops::process::{OnDrop, Output, Spawn, Supervised};
use sqlx::{Connection, PgConnection, PgPool};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};
use tokio::sync::OnceCell;

pub use rig_log::roles::Role;

/// The Postgres server the suite uses: DATABASE_URL, else 127.0.0.1:5432, else a private cluster
/// (kept for the life of the test process).
static SERVER: OnceCell<String> = OnceCell::const_new();
static CLUSTER: OnceLock<rig_ops::pg::PrivateCluster> = OnceLock::new();

async fn server_url() -> &'static str {
    SERVER
        .get_or_init(|| async {
            let configured = std::env::var("DATABASE_URL").ok();
            let pg = rig_ops::pg::find_or_start(configured.as_deref(), "postgres")
                .await
                .expect("find or start Postgres");
            if let Some(c) = pg.private {
                let _ = CLUSTER.set(c);
            }
            pg.url
        })
        .await
}

fn migrations_fingerprint() -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for m in rig_log::db::MIGRATOR.iter() {
        for b in m.checksum.iter() {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    format!("{h:016x}")
}

/// A fresh, migrated database, dropped when the value is dropped.
pub struct TestDb {
    pub url: String,
    pub name: String,
    pub pool: PgPool,
    admin_url: String,
}

impl TestDb {
    pub async fn new() -> TestDb {
        Self::create(format!("rig_test_{}", uuid::Uuid::new_v4().simple())).await
    }

    /// A tenant of this database's deployment: a fresh, migrated database of its own (named
    /// after this one), registered in this database's catalog as `slug`, dropped with the value.
    pub async fn add_tenant(&self, slug: &str) -> TestDb {
        let db = Self::create(format!("{}_{slug}", self.name)).await;
        let tenant = rig_tenants::Tenant {
            slug: slug.to_owned(),
            database_name: db.name.clone(),
            server: None,
            enabled: true,
        };
        rig_tenants::register(&self.pool, &tenant).await.unwrap();
        db
    }

    async fn create(name: String) -> TestDb {
        let server = server_url().await;
        let admin_url = rig_ops::pg::with_database(server, "postgres").unwrap();
        let template = format!("rig_tmpl_{}", migrations_fingerprint());
        let mut admin = PgConnection::connect(&admin_url).await.expect("connect to Postgres");
        // One process at a time builds the migrated template; the others wait for it.
        sqlx::query("SELECT pg_advisory_lock(7262100)")
            .execute(&mut admin)
            .await
            .unwrap();
        let exists: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
            .bind(&template)
            .fetch_one(&mut admin)
            .await
            .unwrap();
        if !exists {
            let building = format!("{template}_build");
            sqlx::query(&format!("DROP DATABASE IF EXISTS {building}"))
                .execute(&mut admin)
                .await
                .unwrap();
            sqlx::query(&format!("CREATE DATABASE {building}"))
                .execute(&mut admin)
                .await
                .unwrap();
            let url = rig_ops::pg::with_database(server, &building).unwrap();
            let pool = PgPool::connect(&url).await.unwrap();
            rig_log::db::migrate(&pool).await.expect("migrations apply");
            pool.close().await;
            sqlx::query(&format!("ALTER DATABASE {building} RENAME TO {template}"))
                .execute(&mut admin)
                .await
                .unwrap();
        }
        sqlx::query(&format!("CREATE DATABASE {name} TEMPLATE {template}"))
            .execute(&mut admin)
            .await
            .unwrap();
        sqlx::query("SELECT pg_advisory_unlock(7262100)")
            .execute(&mut admin)
            .await
            .unwrap();
        let _ = admin.close().await;
        let url = rig_ops::pg::with_database(server, &name).unwrap();
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(20)
            .connect(&url)
            .await
            .unwrap();
        TestDb {
            url,
            name,
            pool,
            admin_url,
        }
    }

    /// The URL of this database for `role`'s process: the owner's with the role's name (the
    /// suite's server trusts local connections).
    pub fn url_as(&self, role: Role) -> String {
        rig_log::roles::url_as(&self.url, role).unwrap()
    }

    /// A small pool connected as `role`.
    pub async fn pool_as(&self, role: Role) -> PgPool {
        sqlx::postgres::PgPoolOptions::new()
            .max_connections(4)
            .connect(&self.url_as(role))
            .await
            .unwrap_or_else(|e| panic!("connect as {}: {e}", role.name()))
    }

    pub async fn count(&self, sql: &str) -> i64 {
        sqlx::query_scalar::<_, i64>(sql).fetch_one(&self.pool).await.unwrap()
    }

    pub async fn events(&self) -> i64 {
        self.count("SELECT count(*) FROM events").await
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        // The pool is not closed first (that would wait for connections held by tasks of the
        // blocked test runtime); FORCE ends them instead.
        drop_database(&self.admin_url, &self.name);
    }
}

/// Drops database `name` (`WITH (FORCE)`) through the server's `admin_url`. Usable from `Drop`,
/// which cannot be async: it runs on a thread with its own small runtime.
pub fn drop_database(admin_url: &str, name: &str) {
    let (admin, name) = (admin_url.to_owned(), name.to_owned());
    let _ = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            if let Ok(mut c) = PgConnection::connect(&admin).await {
                let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                    .execute(&mut c)
                    .await;
            }
        });
    })
    .join();
}

/// Drops a database of the test's server when dropped: one a test made beside its `TestDb`.
pub struct DropDatabase {
    pub admin_url: String,
    pub name: String,
}

impl Drop for DropDatabase {
    fn drop(&mut self) {
        drop_database(&self.admin_url, &self.name);
    }
}

/// What a run of `rigctl` printed and how it ended.
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

/// Runs the real `rigctl args…` against `db`, with no configuration but DATABASE_URL.
pub async fn rigctl(db: &TestDb, args: &[&str]) -> Run {
    let mut cmd = tokio::process::Command::new(bin("rigctl"));
    cmd.args(args);
    for (k, _) in std::env::vars() {
        if k.starts_with("RIG_") || k == "DATABASE_URL" {
            cmd.env_remove(k);
        }
    }
    cmd.env("RIG_CONFIG", "/dev/null").env("DATABASE_URL", &db.url);
    let out = tokio::time::timeout(Duration::from_secs(60), cmd.output())
        .await
        .unwrap_or_else(|_| panic!("rigctl {args:?} did not finish in 60 s"))
        .unwrap();
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Polls `check` until it returns `Some`, or fails the test after `timeout`.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        if Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The directory holding the workspace's binaries (`target/debug` for this test build).
pub fn target_dir() -> PathBuf {
    rig_ops::process::binary_dir().unwrap()
}

/// Path of a workspace binary, built (once per test process) so a test never runs a stale
/// one: `cargo test` builds binaries only for packages with integration tests, and a narrower
/// `cargo test -p rig-tests` builds none. Up-to-date builds take a fraction of a second.
pub fn bin(name: &str) -> PathBuf {
    static BUILT: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
    let path = target_dir().join(name);
    let mut built = BUILT.lock().unwrap_or_else(|e| e.into_inner());
    if !built.iter().any(|b| b == name) {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        // The shared build: it drops what `cargo test` set for this test binary
        // (CARGO_MANIFEST_DIR, …), which would otherwise make build scripts run again.
        rig_ops::process::cargo_build(
            &cargo,
            &target_dir(),
            &[name],
            true,
            Some(Path::new(env!("CARGO_MANIFEST_DIR"))),
        )
        .unwrap_or_else(|e| panic!("{e:#}"));
        built.push(name.to_owned());
    }
    assert!(path.exists(), "binary {} not found", path.display());
    path
}

/// A real process of one of the workspace binaries, killed (SIGKILL) when dropped.
pub struct Proc {
    pub name: String,
    process: Supervised,
    pub log: PathBuf,
}

impl Proc {
    /// Spawns `binary` with the given environment (on top of a clean RIG_ environment). A
    /// process that has a database role of its own (ingest and the workers) connects as it: the
    /// `DATABASE_URL` given names the owner, as for `rigctl`, and is given to it with the role's
    /// name instead, as `rigctl up` does.
    pub fn spawn(binary: &str, args: &[&str], env: &[(&str, String)]) -> Proc {
        let log = std::env::temp_dir().join(format!("rig-test-{binary}-{}.log", uuid::Uuid::new_v4().simple()));
        let role = Role::for_binary(binary);
        let env = env.iter().map(|(k, v)| match role {
            Some(role) if *k == "DATABASE_URL" => (*k, rig_log::roles::url_as(v, role).unwrap()),
            _ => (*k, v.clone()),
        });
        let process = Spawn::new(binary, bin(binary))
            .args(args.iter().copied())
            .isolated()
            .env("RIG_CONFIG", "/dev/null")
            .env("RUST_LOG", "info")
            .envs(env)
            .output(Output::File(log.clone()))
            .on_drop(OnDrop::Kill)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {binary}: {e:#}"));
        Proc {
            name: binary.to_owned(),
            process,
            log,
        }
    }

    pub fn pid(&self) -> i32 {
        self.process.pid() as i32
    }

    /// Sends `sig`, unless the process has already been reaped (its pid may be someone else's).
    pub fn signal(&self, sig: i32) {
        self.process.signal(sig);
    }

    /// SIGKILL and reap.
    pub fn kill9(&mut self) {
        self.process.kill();
    }

    /// SIGTERM, then wait up to `timeout` for a clean exit; returns the exit status.
    pub fn terminate(&mut self, timeout: Duration) -> anyhow::Result<std::process::ExitStatus> {
        self.signal(libc::SIGTERM);
        if let Some(status) = self.process.wait_until(Instant::now() + timeout)? {
            return Ok(status);
        }
        self.kill9();
        bail!(
            "{} did not stop within {timeout:?} of SIGTERM; log:\n{}",
            self.name,
            self.log_text()
        );
    }

    pub fn try_wait(&mut self) -> Option<std::process::ExitStatus> {
        self.process.try_wait().ok().flatten()
    }

    pub fn log_text(&self) -> String {
        self.process.log_text()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        // The process goes (killed on drop) before its log.
        if self.try_wait().is_none() {
            self.kill9();
        }
        let _ = std::fs::remove_file(&self.log);
    }
}

/// GETs `url`; returns the status and the body as JSON (`Null` when it is not JSON).
pub async fn get_json(client: &reqwest::Client, url: &str) -> (reqwest::StatusCode, serde_json::Value) {
    let r = client
        .get(url)
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"));
    let status = r.status();
    (status, r.json().await.unwrap_or(serde_json::Value::Null))
}

/// GETs `url`; returns the body as text (a `/metrics` page, or JSON whose exact text matters).
pub async fn get_text(client: &reqwest::Client, url: &str) -> String {
    client
        .get(url)
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"))
        .text()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: body: {e}"))
}

/// A transaction that writes `events` behind ingest's back, as ingest would: it first takes the
/// append lock, so commit order stays position order. Finish it with [`commit_append`].
pub async fn append_tx(pool: &PgPool) -> sqlx::Transaction<'static, sqlx::Postgres> {
    let mut tx = pool.begin().await.unwrap();
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(rig_log::db::APPEND_LOCK_KEY)
        .execute(&mut *tx)
        .await
        .unwrap();
    tx
}

/// Commits an [`append_tx`] with the NOTIFY ingest sends, so consumers wake as they would.
pub async fn commit_append(mut tx: sqlx::Transaction<'static, sqlx::Postgres>) {
    sqlx::query("SELECT pg_notify($1, '')")
        .bind(rig_log::db::EVENTS_CHANNEL)
        .execute(&mut *tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();
}

/// Waits until `url` answers 200.
pub async fn wait_http_ok(url: &str, timeout: Duration) {
    let client = reqwest::Client::new();
    wait_for(&format!("{url} to answer 200"), timeout, || async {
        match client.get(url).timeout(Duration::from_secs(1)).send().await {
            Ok(r) if r.status().is_success() => Some(()),
            _ => None,
        }
    })
    .await
}

/// An in-process ingest on a free port, against `db`.
pub struct TestIngest {
    pub base: String,
    pub shutdown: tokio_util::sync::CancellationToken,
}

impl TestIngest {
    pub async fn start(db: &TestDb) -> TestIngest {
        Self::start_with(db, |_| {}).await
    }

    /// Ingest connects as its own role, `rig_ingest`, as it does in production.
    pub async fn start_with(db: &TestDb, tweak: impl FnOnce(&mut rig_ops::Settings)) -> TestIngest {
        let mut settings = rig_ops::Settings {
            database_url: rig_ops::config::DatabaseUrl(db.url.clone()),
            ..Default::default()
        };
        settings.ingest.database_url = Some(rig_ops::config::DatabaseUrl(db.url_as(Role::Ingest)));
        settings.ingest.listen = "127.0.0.1:0".parse().unwrap();
        tweak(&mut settings);
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(20)
            .connect(settings.database_url_for(Role::Ingest).expose())
            .await
            .unwrap();
        let shutdown = tokio_util::sync::CancellationToken::new();
        let metrics = rig_ops::telemetry::metrics_handle();
        let (addr, _task) = rig_ingest::start(settings, pool, metrics, shutdown.clone())
            .await
            .context("start ingest")
            .unwrap();
        TestIngest {
            base: format!("http://{addr}"),
            shutdown,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }
}

impl Drop for TestIngest {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// Percent-encodes a stream id for a URL path.
pub fn enc(stream_id: &str) -> String {
    stream_id
        .replace('%', "%25")
        .replace('/', "%2F")
        .replace('#', "%23")
        .replace(':', "%3A")
}

/// Pids of live processes whose environment holds `key=value` (how a test finds every process a
/// launcher started for it, to prove none is left behind).
pub fn processes_with_env(key: &str, value: &str) -> Vec<i32> {
    let needle = format!("{key}={value}");
    let mut out = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return out;
    };
    for entry in dir.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(environ) = std::fs::read(entry.path().join("environ")) else {
            continue;
        };
        // Zombies keep no environment, so a reaped-or-dying process does not count.
        if environ.split(|b| *b == 0).any(|kv| kv == needle.as_bytes()) {
            out.push(pid);
        }
    }
    out
}

/// Pids of live processes connected to `db_url`'s database, as its owner or as any of the
/// roles (`rigctl up` gives each process its role's URL).
pub fn processes_on_database(db_url: &str) -> Vec<i32> {
    let mut pids = processes_with_env("DATABASE_URL", db_url);
    for role in rig_log::roles::ROLES {
        pids.extend(processes_with_env(
            "DATABASE_URL",
            &rig_log::roles::url_as(db_url, role).unwrap(),
        ));
    }
    pids
}

/// Environment for a whole system under test: the database and a free port for every listener.
pub struct SystemPorts {
    pub ingest: u16,
    pub stale_heartbeat: u16,
    pub cost_projector: u16,
    pub token_projector: u16,
    pub notifier: u16,
}

impl SystemPorts {
    pub fn new() -> Self {
        SystemPorts {
            ingest: free_port(),
            stale_heartbeat: free_port(),
            cost_projector: free_port(),
            token_projector: free_port(),
            notifier: free_port(),
        }
    }

    pub fn env(&self, db: &TestDb) -> Vec<(&'static str, String)> {
        vec![
            ("DATABASE_URL", db.url.clone()),
            ("RIG_INGEST__LISTEN", format!("127.0.0.1:{}", self.ingest)),
            (
                "RIG_STALE_HEARTBEAT__METRICS_LISTEN",
                format!("127.0.0.1:{}", self.stale_heartbeat),
            ),
            (
                "RIG_STALE_HEARTBEAT__INGEST_URL",
                format!("http://127.0.0.1:{}", self.ingest),
            ),
            (
                "RIG_COST_PROJECTOR__METRICS_LISTEN",
                format!("127.0.0.1:{}", self.cost_projector),
            ),
            (
                "RIG_TOKEN_PROJECTOR__METRICS_LISTEN",
                format!("127.0.0.1:{}", self.token_projector),
            ),
            ("RIG_NOTIFIER__METRICS_LISTEN", format!("127.0.0.1:{}", self.notifier)),
        ]
    }
}

impl Default for SystemPorts {
    fn default() -> Self {
        Self::new()
    }
}

/// The rows where `token_usage` or `daily_cost` differ from a fold of the log computed here,
/// independently of the projectors: SQL over `events` with `prices` bound as a table. Empty when
/// both tables equal the fold. The rule folded is the cost-projector's: the event's `cost_usd` when given,
/// else the price row with the latest `effective_from` on or before the event's UTC day
/// (`occurred_at`, else `recorded_at`), else 0 USD counted as unpriced. Costs are multiplied by
/// 0.000001 rather than divided by a million, so Postgres computes them exactly too.
pub async fn projection_mismatches(pool: &PgPool, prices: &[rig_events::money::Price]) -> Vec<String> {
    const FOLD: &str = "\
        WITH prices(model, effective_from, input, output, cache_read, cache_write) AS ( \
            SELECT * FROM unnest($1::text[], $2::date[], $3::numeric[], $4::numeric[], $5::numeric[], $6::numeric[])), \
        usage AS ( \
            SELECT stream_id, \
                   CASE WHEN stream_id LIKE 'agent:%' THEN '' ELSE regexp_replace(stream_id, '#[^#]*$', '') END AS repo, \
                   data->>'agent_id' AS agent_id, data->>'model' AS model, \
                   (data->>'input_tokens')::int8 AS input_tokens, \
                   (data->>'output_tokens')::int8 AS output_tokens, \
                   coalesce((data->>'cache_read_tokens')::int8, 0) AS cache_read_tokens, \
                   coalesce((data->>'cache_write_tokens')::int8, 0) AS cache_write_tokens, \
                   (coalesce(occurred_at, recorded_at) AT TIME ZONE 'UTC')::date AS day, \
                   (data->>'cost_usd')::numeric AS given \
            FROM events WHERE event_type = 'TOKEN_USAGE'), \
        priced AS ( \
            SELECT u.*, \
                   coalesce(u.given, (u.input_tokens * p.input + u.output_tokens * p.output \
                       + u.cache_read_tokens * p.cache_read + u.cache_write_tokens * p.cache_write) * 0.000001, 0) AS cost_usd, \
                   (u.given IS NULL AND p.model IS NULL)::int AS unpriced \
            FROM usage u LEFT JOIN LATERAL ( \
                SELECT * FROM prices p WHERE p.model = u.model AND p.effective_from <= u.day \
                ORDER BY p.effective_from DESC LIMIT 1) p ON true)";
    let token_usage = format!(
        "{FOLD}, fold AS ( \
            SELECT stream_id, agent_id, model, sum(input_tokens) AS input_tokens, sum(output_tokens) AS output_tokens, \
                   sum(cache_read_tokens) AS cache_read_tokens, sum(cache_write_tokens) AS cache_write_tokens, \
                   sum(cost_usd) AS cost_usd, count(*) AS events \
            FROM priced GROUP BY stream_id, agent_id, model) \
        SELECT format('token_usage (%s, %s, %s): fold %s, table %s', coalesce(f.stream_id, t.stream_id), \
                      coalesce(f.agent_id, t.agent_id), coalesce(f.model, t.model), to_jsonb(f), to_jsonb(t)) \
        FROM fold f FULL JOIN token_usage t ON (f.stream_id, f.agent_id, f.model) = (t.stream_id, t.agent_id, t.model) \
        WHERE (f.input_tokens, f.output_tokens, f.cache_read_tokens, f.cache_write_tokens, f.cost_usd, f.events) \
              IS DISTINCT FROM (t.input_tokens, t.output_tokens, t.cache_read_tokens, t.cache_write_tokens, t.cost_usd, t.events)"
    );
    let daily_cost = format!(
        "{FOLD}, fold AS ( \
            SELECT day, repo, agent_id, model, sum(input_tokens) AS input_tokens, sum(output_tokens) AS output_tokens, \
                   sum(cache_read_tokens) AS cache_read_tokens, sum(cache_write_tokens) AS cache_write_tokens, \
                   sum(cost_usd) AS cost_usd, count(*) AS events, sum(unpriced) AS unpriced_events \
            FROM priced GROUP BY day, repo, agent_id, model) \
        SELECT format('daily_cost (%s, %s, %s, %s): fold %s, table %s', coalesce(f.day, t.day), coalesce(f.repo, t.repo), \
                      coalesce(f.agent_id, t.agent_id), coalesce(f.model, t.model), to_jsonb(f), to_jsonb(t)) \
        FROM fold f FULL JOIN daily_cost t ON (f.day, f.repo, f.agent_id, f.model) = (t.day, t.repo, t.agent_id, t.model) \
        WHERE (f.input_tokens, f.output_tokens, f.cache_read_tokens, f.cache_write_tokens, f.cost_usd, f.events, f.unpriced_events) \
              IS DISTINCT FROM (t.input_tokens, t.output_tokens, t.cache_read_tokens, t.cache_write_tokens, t.cost_usd, t.events, \
                                t.unpriced_events)"
    );
    let mut out = Vec::new();
    for sql in [token_usage, daily_cost] {
        let rows: Vec<String> = sqlx::query_scalar(&sql)
            .bind(prices.iter().map(|p| p.model.clone()).collect::<Vec<_>>())
            .bind(prices.iter().map(|p| p.effective_from).collect::<Vec<_>>())
            .bind(prices.iter().map(|p| p.input_per_mtok).collect::<Vec<_>>())
            .bind(prices.iter().map(|p| p.output_per_mtok).collect::<Vec<_>>())
            .bind(prices.iter().map(|p| p.cache_read_per_mtok).collect::<Vec<_>>())
            .bind(prices.iter().map(|p| p.cache_write_per_mtok).collect::<Vec<_>>())
            .fetch_all(pool)
            .await
            .expect("fold the log");
        out.extend(rows);
    }
    out
}

/// The binaries the repository's `Procfile` runs, built (so `rigctl up` finds fresh ones beside
/// itself and need not build).
pub fn procfile_workers() -> Vec<String> {
    let procfile =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../Procfile")).expect("read the Procfile");
    let workers: Vec<String> = procfile
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .filter_map(|l| l.split_once(':'))
        .filter_map(|(_, cmd)| cmd.split_whitespace().next().map(str::to_owned))
        .collect();
    for w in &workers {
        bin(w);
    }
    workers
}

/// `rigctl up` under test. Dropping a `Proc` SIGKILLs it, which would orphan the workers it
/// started (each in its own process group); so a failing test first lets it stop them (Ctrl-C),
/// then kills whatever still runs with this test's database.
pub struct RigctlUp {
    pub proc: Proc,
    db_url: String,
}

impl RigctlUp {
    pub fn spawn(args: &[&str], env: &[(&str, String)], db_url: &str) -> RigctlUp {
        RigctlUp {
            proc: Proc::spawn("rigctl", args, env),
            db_url: db_url.to_owned(),
        }
    }
}

impl Drop for RigctlUp {
    fn drop(&mut self) {
        if self.proc.try_wait().is_none() {
            self.proc.signal(libc::SIGINT);
            let deadline = Instant::now() + Duration::from_secs(15);
            while self.proc.try_wait().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        for pid in processes_on_database(&self.db_url) {
            // SAFETY: signalling a process this test started (found by its unique database URL).
            unsafe {
                libc::kill(pid, libc::SIGKILL);
            }
        }
    }
}
