//! rig-token-projector and rig-cost-projector as real processes against the real Postgres:
//! catch-up over tens of thousands of events, SIGKILL at random moments, a hot standby taking
//! over, a reset while running, a poison event paused on and then skipped, database connections
//! killed under them, and the NOTIFY wake-up. Every check compares both tables with a fold of
//! the log computed here, in SQL over `events` with its own price table, independently of the
//! projectors' code, and exactly (numeric, not floats).
#![allow(clippy::unwrap_used)]

use rig_tests::{append_tx, commit_append, free_port, get_text, wait_for, wait_http_ok, Proc, TestDb, TestIngest};
use serde_json::json;
use sqlx::PgPool;
use std::path::PathBuf;
use std::time::{Duration, Instant};

const TOKEN: &str = "rig-token-projector";
const COST: &str = "rig-cost-projector";

/// The price table the projectors get. Sonnet's price changes on 2025-10-03; haiku is priced
/// from 2025-10-04 only (earlier haiku events are unpriced); `mystery-model` is never priced.
/// Decimals are written both as strings and as TOML numbers.
const PRICES_TOML: &str = r#"
[[prices]]
model = "claude-sonnet-4-5"
effective_from = "2025-09-29"
input_per_mtok = "3.00"
output_per_mtok = "15.00"
cache_read_per_mtok = "0.30"
cache_write_per_mtok = "3.75"

[[prices]]
model = "claude-sonnet-4-5"
effective_from = "2025-10-03"
input_per_mtok = "2.5"
output_per_mtok = 12.5
cache_read_per_mtok = 0.25
cache_write_per_mtok = "3.125"

[[prices]]
model = "claude-opus-4-1"
effective_from = "2025-08-05"
input_per_mtok = 15
output_per_mtok = 75
cache_read_per_mtok = "1.50"
cache_write_per_mtok = "18.75"

[[prices]]
model = "claude-haiku-4-5"
effective_from = "2025-10-04"
input_per_mtok = 1
output_per_mtok = 5
cache_read_per_mtok = 0.1
cache_write_per_mtok = 1.25
"#;

/// The same table, written again by hand for the fold.
const PRICES_SQL: &str = "VALUES \
    ('claude-sonnet-4-5', date '2025-09-29', 3.00, 15.00, 0.30, 3.75), \
    ('claude-sonnet-4-5', date '2025-10-03', 2.5, 12.5, 0.25, 3.125), \
    ('claude-opus-4-1', date '2025-08-05', 15, 75, 1.50, 18.75), \
    ('claude-haiku-4-5', date '2025-10-04', 1, 5, 0.1, 1.25)";

/// Builds both binaries up front (once per test process), so no test's timing includes a build.
fn built() {
    rig_tests::bin(TOKEN);
    rig_tests::bin(COST);
}

/// A configuration file with the price table, removed when dropped.
struct Config(PathBuf);

impl Config {
    fn new() -> Config {
        let path = std::env::temp_dir().join(format!("rig-projectors-{}.toml", uuid::Uuid::new_v4().simple()));
        std::fs::write(&path, PRICES_TOML).unwrap();
        built();
        Config(path)
    }
}

impl Drop for Config {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// A projector process and the port of its operations endpoints.
struct Projector {
    proc: Proc,
    port: u16,
}

impl Projector {
    fn spawn(binary: &str, db: &TestDb, config: &Config, extra: &[(&str, String)]) -> Projector {
        let port = free_port();
        let listen_key = if binary == TOKEN {
            "RIG_TOKEN_PROJECTOR__METRICS_LISTEN"
        } else {
            "RIG_COST_PROJECTOR__METRICS_LISTEN"
        };
        let mut env = vec![
            ("DATABASE_URL", db.url.clone()),
            ("RIG_CONFIG", config.0.display().to_string()),
            (listen_key, format!("127.0.0.1:{port}")),
        ];
        env.extend(extra.iter().map(|(k, v)| (*k, v.clone())));
        Projector {
            proc: Proc::spawn(binary, &[], &env),
            port,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    async fn metrics(&self) -> Option<String> {
        let r = reqwest::Client::new()
            .get(self.url("/metrics"))
            .timeout(Duration::from_secs(2))
            .send()
            .await
            .ok()?;
        r.status().is_success().then_some(())?;
        r.text().await.ok()
    }

    /// A gauge or counter of this process (the first series of that name whose labels contain
    /// `label`).
    async fn metric(&self, name: &str, label: &str) -> Option<f64> {
        metric(&self.metrics().await?, name, label)
    }

    fn alive(&mut self) -> bool {
        self.proc.try_wait().is_none()
    }
}

fn metric(text: &str, name: &str, label: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        let rest = l.strip_prefix(name)?;
        if !(rest.starts_with('{') || rest.starts_with(' ')) || !rest.contains(label) {
            return None;
        }
        l.rsplit_once(' ')?.1.parse().ok()
    })
}

/// Appends events `start..start + n` of a synthetic rig in ONE transaction that first takes the
/// append lock, as ingest does, so commit order stays position order. TOKEN_USAGE of 6 agents on
/// issues of 5 repositories and on agent streams, 4 models (one never priced), 8 days (and some
/// without `occurred_at`, dated by `recorded_at`), with `cost_usd` absent, a JSON number, an
/// integer or a string, optional cache counts missing or null; every 13th event a HEARTBEAT the
/// projectors must pass over.
async fn append_log(pool: &PgPool, start: i64, n: i64) {
    let mut tx = append_tx(pool).await;
    sqlx::query(
        "INSERT INTO events (stream_id, version, event_id, event_type, data, occurred_at) \
         SELECT CASE WHEN i % 11 = 0 THEN 'agent:dev-' || (i % 4) ELSE 'acme/widgets-' || (i % 5) || '#' || (i % 37 + 1) END, \
                i + 1, gen_random_uuid(), \
                CASE WHEN i % 13 = 0 THEN 'HEARTBEAT' ELSE 'TOKEN_USAGE' END, \
                CASE WHEN i % 13 = 0 THEN jsonb_build_object('agent_id', 'dev-' || (i % 6)) ELSE \
                    jsonb_build_object( \
                        'agent_id', 'dev-' || (i % 6), \
                        'model', (ARRAY['claude-sonnet-4-5', 'claude-opus-4-1', 'claude-haiku-4-5', 'mystery-model'])[1 + (i / 7) % 4], \
                        'input_tokens', (i * 7919) % 50000, \
                        'output_tokens', (i * 104729) % 8000, \
                        'cache_write_tokens', CASE WHEN i % 5 = 0 THEN NULL ELSE (i * 17) % 3000 END) \
                    || CASE WHEN i % 3 = 0 THEN '{}'::jsonb ELSE jsonb_build_object('cache_read_tokens', (i * 31) % 20000) END \
                    || CASE i % 10 WHEN 1 THEN jsonb_build_object('cost_usd', round((i % 997) / 1000.0, 3)) \
                                   WHEN 2 THEN jsonb_build_object('cost_usd', round((i % 997) / 100.0, 2)::text) \
                                   WHEN 3 THEN jsonb_build_object('cost_usd', i % 4) \
                                   ELSE '{}'::jsonb END \
                END, \
                CASE WHEN i % 9 = 0 THEN NULL \
                     ELSE timestamptz '2025-10-01 00:00:00+00' + (i % 8) * interval '1 day' + ((i * 7) % 86400) * interval '1 second' END \
         FROM generate_series($1::bigint, $2::bigint) AS i",
    )
    .bind(start)
    .bind(start + n - 1)
    .execute(&mut *tx)
    .await
    .unwrap();
    commit_append(tx).await;
}

/// The cost and token fold over `events` up to `upto` (without the events dead-lettered for
/// `consumer`): cost is the event's `cost_usd`, else the price in force on its UTC day
/// (`occurred_at`, else `recorded_at`), else 0 and unpriced. Prices are multiplied by 0.000001 so
/// Postgres computes exactly. Written here, apart from the projectors' code.
const FOLD: &str = "\
    WITH prices(model, effective_from, input, output, cache_read, cache_write) AS ({prices}), \
    usage AS ( \
        SELECT stream_id, \
               CASE WHEN stream_id LIKE 'agent:%' THEN '' ELSE split_part(stream_id, '#', 1) END AS repo, \
               data->>'agent_id' AS agent_id, data->>'model' AS model, \
               (data->>'input_tokens')::int8 AS input_tokens, (data->>'output_tokens')::int8 AS output_tokens, \
               coalesce((data->>'cache_read_tokens')::int8, 0) AS cache_read_tokens, \
               coalesce((data->>'cache_write_tokens')::int8, 0) AS cache_write_tokens, \
               (coalesce(occurred_at, recorded_at) AT TIME ZONE 'UTC')::date AS day, \
               (data->>'cost_usd')::numeric AS given \
        FROM events \
        WHERE event_type = 'TOKEN_USAGE' AND position <= $1 \
          AND position NOT IN (SELECT position FROM dead_letters WHERE consumer = $2)), \
    priced AS ( \
        SELECT u.*, \
               coalesce(u.given, (u.input_tokens * p.input + u.output_tokens * p.output \
                   + u.cache_read_tokens * p.cache_read + u.cache_write_tokens * p.cache_write) * 0.000001, 0) AS cost_usd, \
               CASE WHEN u.given IS NULL AND p.model IS NULL THEN 1 ELSE 0 END AS unpriced \
        FROM usage u LEFT JOIN LATERAL ( \
            SELECT * FROM prices p WHERE p.model = u.model AND p.effective_from <= u.day \
            ORDER BY p.effective_from DESC LIMIT 1) p ON true)";

/// Rows where the consumer's table differs from the fold up to `upto` (empty: equal), and how
/// many rows the fold has.
async fn mismatches(pool: &PgPool, consumer: &str, upto: i64) -> (Vec<String>, i64) {
    let fold = FOLD.replace("{prices}", PRICES_SQL);
    let (sums, keys, table) = if consumer == "token-projector" {
        (
            "sum(cost_usd) AS cost_usd, count(*) AS events",
            vec!["stream_id", "agent_id", "model"],
            "token_usage",
        )
    } else {
        (
            "sum(cost_usd) AS cost_usd, count(*) AS events, sum(unpriced) AS unpriced_events",
            vec!["day", "repo", "agent_id", "model"],
            "daily_cost",
        )
    };
    let mut values = vec![
        "input_tokens",
        "output_tokens",
        "cache_read_tokens",
        "cache_write_tokens",
        "cost_usd",
        "events",
    ];
    if table == "daily_cost" {
        values.push("unpriced_events");
    }
    let cols = |alias: &str, names: &[&str]| {
        names
            .iter()
            .map(|n| format!("{alias}.{n}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let sql = format!(
        "{fold}, fold AS ( \
            SELECT {keys}, sum(input_tokens) AS input_tokens, sum(output_tokens) AS output_tokens, \
                   sum(cache_read_tokens) AS cache_read_tokens, sum(cache_write_tokens) AS cache_write_tokens, {sums} \
            FROM priced GROUP BY {keys}) \
        SELECT format('{table}: fold %s, table %s', to_jsonb(f), to_jsonb(t)), (SELECT count(*) FROM fold) \
        FROM fold f FULL JOIN {table} t ON ({fk}) = ({tk}) \
        WHERE ({fv}) IS DISTINCT FROM ({tv}) \
        UNION ALL SELECT NULL, (SELECT count(*) FROM fold)",
        keys = keys.join(", "),
        fk = cols("f", &keys),
        tk = cols("t", &keys),
        fv = cols("f", &values),
        tv = cols("t", &values),
    );
    let rows: Vec<(Option<String>, i64)> = sqlx::query_as(&sql)
        .bind(upto)
        .bind(consumer)
        .fetch_all(pool)
        .await
        .expect("fold the log");
    let n = rows.last().map_or(0, |r| r.1);
    (rows.into_iter().filter_map(|r| r.0).take(5).collect(), n)
}

/// Asserts that the consumer's table equals the fold of the log up to `upto`, and that the
/// fold is not trivially small.
async fn assert_equals_fold(pool: &PgPool, consumer: &str, upto: i64) {
    let (diff, rows) = mismatches(pool, consumer, upto).await;
    assert!(
        diff.is_empty(),
        "{consumer}'s table differs from the fold of the log:\n{}",
        diff.join("\n")
    );
    assert!(
        rows >= 20,
        "the fold of {consumer} has only {rows} rows: the test data is too thin"
    );
}

async fn checkpoint(pool: &PgPool, consumer: &str) -> i64 {
    sqlx::query_scalar::<_, i64>("SELECT position FROM checkpoints WHERE consumer = $1")
        .bind(consumer)
        .fetch_optional(pool)
        .await
        .unwrap()
        .unwrap_or(0)
}

async fn head(pool: &PgPool) -> i64 {
    sqlx::query_scalar::<_, Option<i64>>("SELECT max(position) FROM events")
        .fetch_one(pool)
        .await
        .unwrap()
        .unwrap_or(0)
}

/// Waits until the consumer's checkpoint is at the head of the log; returns the head.
async fn wait_caught_up(pool: &PgPool, consumer: &str, timeout: Duration) -> i64 {
    let head = head(pool).await;
    wait_for(&format!("{consumer} to reach the head {head}"), timeout, || async {
        (checkpoint(pool, consumer).await == head).then_some(())
    })
    .await;
    head
}

#[tokio::test]
async fn catch_up_over_tens_of_thousands_of_events_equals_an_independent_fold() {
    let db = TestDb::new().await;
    append_log(&db.pool, 0, 15_000).await;
    append_log(&db.pool, 15_000, 10_000).await;
    let config = Config::new();
    let started = Instant::now();
    let mut token = Projector::spawn(TOKEN, &db, &config, &[]);
    let mut cost = Projector::spawn(COST, &db, &config, &[]);
    let head = wait_caught_up(&db.pool, "token-projector", Duration::from_secs(60)).await;
    eprintln!(
        "token-projector caught up with {head} events in {:?}",
        started.elapsed()
    );
    wait_caught_up(&db.pool, "cost-projector", Duration::from_secs(60)).await;
    eprintln!("cost-projector caught up with {head} events in {:?}", started.elapsed());
    assert_equals_fold(&db.pool, "token-projector", i64::MAX).await;
    assert_equals_fold(&db.pool, "cost-projector", i64::MAX).await;

    // Every TOKEN_USAGE event counted once; the heartbeats in between were passed over.
    let usage = db
        .count("SELECT count(*) FROM events WHERE event_type = 'TOKEN_USAGE'")
        .await;
    assert_eq!(db.count("SELECT sum(events)::int8 FROM token_usage").await, usage);
    assert_eq!(db.count("SELECT sum(events)::int8 FROM daily_cost").await, usage);
    assert!(usage < head, "the log also holds events the projectors must skip");

    // The unpriced events are in the table and in the metric, and there are some.
    let unpriced = db.count("SELECT sum(unpriced_events)::int8 FROM daily_cost").await;
    assert!(unpriced > 0);
    let exported = wait_for("the unpriced counter", Duration::from_secs(5), || async {
        cost.metric("rig_cost_unpriced_events_total", "").await
    })
    .await;
    assert_eq!(exported as i64, unpriced);

    for p in [&token, &cost] {
        wait_http_ok(&p.url("/healthz"), Duration::from_secs(5)).await;
        wait_http_ok(&p.url("/readyz"), Duration::from_secs(5)).await;
        let lag = wait_for("lag 0 in /metrics", Duration::from_secs(5), || async {
            p.metric("rig_consumer_lag_events", "consumer=")
                .await
                .filter(|l| *l == 0.0)
        })
        .await;
        assert_eq!(lag, 0.0);
        assert_eq!(p.metric("rig_consumer_active", "consumer=").await, Some(1.0));
        assert_eq!(p.metric("rig_consumer_position", "consumer=").await, Some(head as f64));
    }
    assert!(token.alive() && cost.alive());
}

/// Kills `binary` with SIGKILL `kills` times at random moments of its catch-up, restarting it
/// each time, then lets it finish. Returns the checkpoints seen at the kills.
async fn kill_repeatedly(db: &TestDb, config: &Config, binary: &str, consumer: &str, kills: usize) -> Vec<i64> {
    let settings = [("RIG_CONSUMER__BATCH_SIZE", "10".to_owned())];
    let mut seen = Vec::new();
    let mut last = checkpoint(&db.pool, consumer).await;
    for _ in 0..kills {
        let mut p = Projector::spawn(binary, db, config, &settings);
        // Let it commit something first, so each kill interrupts real progress.
        wait_for(
            &format!("{consumer} to make progress past {last}"),
            Duration::from_secs(30),
            || async { (checkpoint(&db.pool, consumer).await > last).then_some(()) },
        )
        .await;
        tokio::time::sleep(Duration::from_millis(rand::random_range(0..80))).await;
        p.proc.kill9();
        last = checkpoint(&db.pool, consumer).await;
        seen.push(last);
    }
    let _finisher = Projector::spawn(binary, db, config, &settings);
    wait_caught_up(&db.pool, consumer, Duration::from_secs(60)).await;
    seen
}

#[tokio::test]
async fn sigkill_at_random_moments_of_catch_up_loses_and_doubles_nothing() {
    let db = TestDb::new().await;
    append_log(&db.pool, 0, 25_000).await;
    let head = head(&db.pool).await;
    let config = Config::new();
    let (token_kills, cost_kills) = tokio::join!(
        kill_repeatedly(&db, &config, TOKEN, "token-projector", 6),
        kill_repeatedly(&db, &config, COST, "cost-projector", 6),
    );
    for (name, kills) in [("token-projector", &token_kills), ("cost-projector", &cost_kills)] {
        let mid = kills.iter().filter(|p| **p > 0 && **p < head).count();
        assert!(
            mid >= 5,
            "{name}: only {mid} of the kills landed during the catch-up: {kills:?} (head {head})"
        );
        assert_equals_fold(&db.pool, name, i64::MAX).await;
    }
}

#[tokio::test]
async fn a_hot_standby_takes_over_when_the_active_instance_is_killed() {
    let db = TestDb::new().await;
    append_log(&db.pool, 0, 20_000).await;
    let config = Config::new();
    let settings = [("RIG_CONSUMER__BATCH_SIZE", "50".to_owned())];
    let mut a = Projector::spawn(TOKEN, &db, &config, &settings);
    let mut b = Projector::spawn(TOKEN, &db, &config, &settings);

    // Exactly one is active; the other waits, and both answer as healthy and ready.
    let (active_a, active_b) = wait_for(
        "one active and one standby instance",
        Duration::from_secs(20),
        || async {
            let x = a.metric("rig_consumer_active", "consumer=").await?;
            let y = b.metric("rig_consumer_active", "consumer=").await?;
            (x + y == 1.0).then_some((x, y))
        },
    )
    .await;
    for p in [&a, &b] {
        wait_http_ok(&p.url("/healthz"), Duration::from_secs(5)).await;
        wait_http_ok(&p.url("/readyz"), Duration::from_secs(5)).await;
    }
    for _ in 0..5 {
        let x = a.metric("rig_consumer_active", "consumer=").await.unwrap();
        let y = b.metric("rig_consumer_active", "consumer=").await.unwrap();
        assert_eq!(
            (x, y),
            (active_a, active_b),
            "the active instance must not change while it lives"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (active, standby) = if active_a == 1.0 {
        (&mut a, &mut b)
    } else {
        (&mut b, &mut a)
    };
    // The standby shows the whole set of consumer metrics, so a dashboard or an alert never finds a series
    // missing (its position, head and lag, those of the checkpoint it waits on, from its first
    // look at the database).
    let text = wait_for("the standby's position", Duration::from_secs(5), || async {
        let text = standby.metrics().await?;
        metric(&text, "rig_consumer_position", "consumer=").map(|_| text)
    })
    .await;
    for name in [
        "rig_consumer_position",
        "rig_consumer_head_position",
        "rig_consumer_lag_events",
        "rig_consumer_events_total",
        "rig_consumer_batch_duration_seconds_count",
        "rig_consumer_errors_total",
        "rig_consumer_paused",
        "rig_consumer_active",
    ] {
        assert!(
            metric(&text, name, "consumer=\"token-projector\"").is_some(),
            "{name} missing from the standby's metrics:\n{text}"
        );
    }
    let at_kill = checkpoint(&db.pool, "token-projector").await;
    active.proc.kill9();

    // More appends: only the standby can apply them.
    append_log(&db.pool, 20_000, 5_000).await;
    let killed = Instant::now();
    wait_for("the standby to become active", Duration::from_secs(10), || async {
        (standby.metric("rig_consumer_active", "consumer=").await == Some(1.0)).then_some(())
    })
    .await;
    let took_over = killed.elapsed();
    let head = wait_caught_up(&db.pool, "token-projector", Duration::from_secs(60)).await;
    assert!(at_kill < head);
    assert!(standby.alive());
    assert_equals_fold(&db.pool, "token-projector", i64::MAX).await;
    eprintln!("standby took over {took_over:?} after the SIGKILL (checkpoint {at_kill} of {head} at the kill)");
}

#[tokio::test]
async fn reset_while_running_rebuilds_the_tables_from_the_log() {
    let db = TestDb::new().await;
    append_log(&db.pool, 0, 15_000).await;
    let config = Config::new();
    let token = Projector::spawn(TOKEN, &db, &config, &[]);
    let cost = Projector::spawn(COST, &db, &config, &[]);
    wait_caught_up(&db.pool, "token-projector", Duration::from_secs(60)).await;
    wait_caught_up(&db.pool, "cost-projector", Duration::from_secs(60)).await;
    let applied_before = token.metric("rig_consumer_events_total", "consumer=").await.unwrap();

    // A "bug" damages both tables; the fold sees it.
    sqlx::query("UPDATE token_usage SET input_tokens = input_tokens + 1000")
        .execute(&db.pool)
        .await
        .unwrap();
    sqlx::query("UPDATE daily_cost SET cost_usd = cost_usd * 2")
        .execute(&db.pool)
        .await
        .unwrap();
    assert!(!mismatches(&db.pool, "token-projector", i64::MAX).await.0.is_empty());
    assert!(!mismatches(&db.pool, "cost-projector", i64::MAX).await.0.is_empty());

    // Reset while the projectors run and new events keep coming.
    append_log(&db.pool, 15_000, 5_000).await;
    let epoch_before = db
        .count("SELECT epoch FROM checkpoints WHERE consumer = 'token-projector'")
        .await;
    assert_eq!(
        rig_consumer::reset(&db.pool, &rig_projections::TOKEN_PROJECTOR)
            .await
            .unwrap(),
        0
    );
    assert_eq!(
        rig_consumer::reset(&db.pool, &rig_projections::COST_PROJECTOR)
            .await
            .unwrap(),
        0
    );
    assert!(
        db.count("SELECT epoch FROM checkpoints WHERE consumer = 'token-projector'")
            .await
            > epoch_before
    );
    append_log(&db.pool, 20_000, 2_000).await;

    let head = wait_caught_up(&db.pool, "token-projector", Duration::from_secs(60)).await;
    wait_caught_up(&db.pool, "cost-projector", Duration::from_secs(60)).await;
    assert_equals_fold(&db.pool, "token-projector", i64::MAX).await;
    assert_equals_fold(&db.pool, "cost-projector", i64::MAX).await;
    // The whole log was applied again after the reset.
    let applied_after = token.metric("rig_consumer_events_total", "consumer=").await.unwrap();
    assert!(
        applied_after >= applied_before + head as f64,
        "{applied_before} then {applied_after} (head {head})"
    );
    assert!(cost.metric("rig_consumer_active", "consumer=").await == Some(1.0));
}

#[tokio::test]
async fn a_poison_event_pauses_the_consumer_until_an_operator_skips_it() {
    let db = TestDb::new().await;
    append_log(&db.pool, 0, 3_000).await;
    // Bad types that bypassed ingest's validation.
    let mut tx = append_tx(&db.pool).await;
    let poison: i64 = sqlx::query_scalar(
        "INSERT INTO events (stream_id, version, event_id, event_type, data) \
         VALUES ('acme/widgets-0#1', 1000000, gen_random_uuid(), 'TOKEN_USAGE', \
                 '{\"agent_id\": \"dev-0\", \"model\": \"claude-opus-4-1\", \"input_tokens\": \"lots\", \"output_tokens\": 1}') \
         RETURNING position",
    )
    .fetch_one(&mut *tx)
    .await
    .unwrap();
    tx.commit().await.unwrap();
    append_log(&db.pool, 3_000, 2_000).await;

    let config = Config::new();
    let mut token = Projector::spawn(TOKEN, &db, &config, &[]);
    let mut cost = Projector::spawn(COST, &db, &config, &[]);
    let mut more = 5_000;
    for (p, consumer) in [(&mut token, "token-projector"), (&mut cost, "cost-projector")] {
        let (paused_at, error): (i64, String) =
            wait_for(&format!("{consumer} to pause"), Duration::from_secs(30), || async {
                sqlx::query_as::<_, (Option<i64>, Option<String>)>(
                    "SELECT paused_position, last_error FROM checkpoints WHERE consumer = $1",
                )
                .bind(consumer)
                .fetch_optional(&db.pool)
                .await
                .unwrap()
                .and_then(|(p, e)| Some((p?, e?)))
            })
            .await;
        assert_eq!(paused_at, poison);
        assert!(error.contains("input_tokens") && error.contains("lots"), "{error}");
        // Everything before the poison event is applied, nothing after it.
        assert_eq!(checkpoint(&db.pool, consumer).await, poison - 1);
        assert_equals_fold(&db.pool, consumer, poison - 1).await;
        let paused = wait_for("rig_consumer_paused 1", Duration::from_secs(5), || async {
            p.metric("rig_consumer_paused", "consumer=").await.filter(|v| *v == 1.0)
        })
        .await;
        assert_eq!(paused, 1.0);
        // The lag counts what waits behind the poison event, and keeps counting while paused.
        for _ in 0..2 {
            let lag = (head(&db.pool).await - (poison - 1)) as f64;
            wait_for("the lag while paused", Duration::from_secs(10), || async {
                p.metric("rig_consumer_lag_events", "consumer=")
                    .await
                    .filter(|v| *v == lag)
            })
            .await;
            append_log(&db.pool, more, 10).await;
            more += 10;
        }
        wait_http_ok(&p.url("/healthz"), Duration::from_secs(5)).await;
        assert!(p.alive(), "a poison event must not stop the process");
        assert_eq!(checkpoint(&db.pool, consumer).await, poison - 1, "still paused");
    }

    for (p, consumer) in [(&token, "token-projector"), (&cost, "cost-projector")] {
        rig_consumer::skip(&db.pool, consumer, poison).await.unwrap();
        let (position, event_type, error): (i64, String, String) =
            sqlx::query_as("SELECT position, event_type, error FROM dead_letters WHERE consumer = $1")
                .bind(consumer)
                .fetch_one(&db.pool)
                .await
                .unwrap();
        assert_eq!((position, event_type.as_str()), (poison, "TOKEN_USAGE"));
        assert!(error.contains("lots"), "{error}");
        wait_caught_up(&db.pool, consumer, Duration::from_secs(30)).await;
        assert_equals_fold(&db.pool, consumer, i64::MAX).await;
        let resumed = wait_for("rig_consumer_paused 0", Duration::from_secs(5), || async {
            p.metric("rig_consumer_paused", "consumer=").await.filter(|v| *v == 0.0)
        })
        .await;
        assert_eq!(resumed, 0.0);
    }
}

#[tokio::test]
async fn the_worker_recovers_by_itself_when_its_database_connections_are_killed() {
    let db = TestDb::new().await;
    append_log(&db.pool, 0, 25_000).await;
    let head = head(&db.pool).await;
    let config = Config::new();
    let settings = [("RIG_CONSUMER__BATCH_SIZE", "10".to_owned())];
    let mut token = Projector::spawn(TOKEN, &db, &config, &settings);
    let pid = token.proc.pid();

    // A connection of its own, so the test never ends one it is using.
    let mut admin = <sqlx::PgConnection as sqlx::Connection>::connect(&db.url)
        .await
        .unwrap();
    let mut kills_mid_catch_up = 0;
    let mut last = 0;
    for _ in 0..4 {
        wait_for("progress before the next kill", Duration::from_secs(30), || async {
            (checkpoint(&db.pool, "token-projector").await > last).then_some(())
        })
        .await;
        let ended: Vec<bool> = sqlx::query_scalar(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE datname = current_database() AND application_name = 'rig-conductor' AND pid <> pg_backend_pid()",
        )
        .fetch_all(&mut admin)
        .await
        .unwrap();
        assert!(!ended.is_empty(), "the projector's connections were found");
        last = checkpoint(&db.pool, "token-projector").await;
        if last < head {
            kills_mid_catch_up += 1;
        }
    }
    assert!(
        kills_mid_catch_up >= 3,
        "only {kills_mid_catch_up} of the connection kills landed during the catch-up"
    );
    wait_caught_up(&db.pool, "token-projector", Duration::from_secs(60)).await;
    assert!(token.alive(), "the worker must recover without a restart");
    assert_eq!(token.proc.pid(), pid);
    assert_equals_fold(&db.pool, "token-projector", i64::MAX).await;
    let transient = token
        .metric("rig_consumer_errors_total", "kind=\"transient\"")
        .await
        .unwrap_or(0.0);
    assert!(transient >= 1.0, "the lost connections were seen and retried");
}

#[tokio::test]
async fn an_append_wakes_the_projector_through_notify_not_the_poll() {
    let db = TestDb::new().await;
    let ingest = TestIngest::start(&db).await;
    let config = Config::new();
    // The poll fallback is a minute away: only NOTIFY can make an append visible in seconds.
    let token = Projector::spawn(
        TOKEN,
        &db,
        &config,
        &[("RIG_CONSUMER__POLL_INTERVAL", "60s".to_owned())],
    );
    wait_for("the projector to be active", Duration::from_secs(20), || async {
        (token.metric("rig_consumer_active", "consumer=").await == Some(1.0)).then_some(())
    })
    .await;
    let client = reqwest::Client::new();
    let mut last_position = 0;
    for n in 1..=3i64 {
        let r = client
            .post(ingest.url("/v1/events"))
            .json(
                &json!({"stream_id": "acme/widgets#7", "events": [{"type": "TOKEN_USAGE", "data": {
                "agent_id": "dev-1", "model": "claude-opus-4-1", "input_tokens": 1000, "output_tokens": 10,
                "cost_usd": "0.25"}}]}),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), reqwest::StatusCode::CREATED);
        let sent = Instant::now();
        last_position = r.json::<serde_json::Value>().await.unwrap()["last_position"]
            .as_i64()
            .unwrap();
        wait_for("the append to reach token_usage", Duration::from_secs(5), || async {
            let events: Option<i64> =
                sqlx::query_scalar("SELECT events FROM token_usage WHERE stream_id = 'acme/widgets#7'")
                    .fetch_optional(&db.pool)
                    .await
                    .unwrap();
            (events == Some(n)).then_some(())
        })
        .await;
        eprintln!("append {n} visible in token_usage after {:?}", sent.elapsed());
    }
    // After a small batch the loop now waits for the next notification instead of running an
    // empty batch, which used to refresh the gauges: the head and lag must still be current
    // without the (minute-long) poll, as they come with the batch itself.
    wait_for(
        "the lag gauge at 0 with the head at the last append",
        Duration::from_secs(5),
        || async {
            let head = token.metric("rig_consumer_head_position", "consumer=").await;
            let lag = token.metric("rig_consumer_lag_events", "consumer=").await;
            (head == Some(last_position as f64) && lag == Some(0.0)).then_some(())
        },
    )
    .await;
    let cost: String = sqlx::query_scalar("SELECT cost_usd::text FROM token_usage WHERE stream_id = 'acme/widgets#7'")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(cost, "0.75");

    // The read API gives money as JSON numbers with their exact digits.
    let body = get_text(&client, &ingest.url("/v1/usage?stream_id=acme%2Fwidgets%237")).await;
    assert!(body.contains(r#""cost_usd":0.75,"events":3}"#), "{body}");
    let usage: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(usage["total"]["cost_usd"].as_f64(), Some(0.75), "{body}");
    assert_eq!(usage["total"]["input_tokens"], 3000, "{body}");
    sqlx::query(
        "INSERT INTO daily_cost (day, repo, agent_id, model, input_tokens, output_tokens, cache_read_tokens, \
         cache_write_tokens, cost_usd, events) \
         VALUES ((now() AT TIME ZONE 'UTC')::date, 'acme/widgets', 'dev-1', 'm', 1, 1, 0, 0, 12345678.000000123456789, 2)",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    let body = get_text(&client, &ingest.url("/v1/costs/daily?days=1")).await;
    assert!(body.contains(r#""total_cost_usd":12345678.000000123456789"#), "{body}");
    assert!(body.contains(r#""cost_usd":12345678.000000123456789,"#), "{body}");
}

/// Inserts one TOKEN_USAGE event under the append lock; returns its position.
async fn append_usage(pool: &PgPool, stream: &str, version: i64, input_tokens: i64) -> i64 {
    let mut tx = append_tx(pool).await;
    let position: i64 = sqlx::query_scalar(
        "INSERT INTO events (stream_id, version, event_id, event_type, data) \
         VALUES ($1, $2, gen_random_uuid(), 'TOKEN_USAGE', \
                 jsonb_build_object('agent_id', 'dev-9', 'model', 'claude-opus-4-1', 'input_tokens', $3::int8, 'output_tokens', 1)) \
         RETURNING position",
    )
    .bind(stream)
    .bind(version)
    .bind(input_tokens)
    .fetch_one(&mut *tx)
    .await
    .unwrap();
    commit_append(tx).await;
    position
}

#[tokio::test]
async fn a_failing_batch_write_is_narrowed_down_to_its_event_and_paused_on() {
    let db = TestDb::new().await;
    let config = Config::new();
    let token = Projector::spawn(TOKEN, &db, &config, &[]);
    append_usage(&db.pool, "acme/big#1", 1, 1_000).await;
    wait_caught_up(&db.pool, "token-projector", Duration::from_secs(30)).await;

    // Each event is fine alone, but adding this one to the row already written overflows the
    // bigint column: the database refuses the batch's upsert, and nothing says which event.
    let culprit = append_usage(&db.pool, "acme/big#1", 2, i64::MAX - 10).await;
    append_log(&db.pool, 0, 2_000).await;
    let paused_at: i64 = wait_for("the projector to pause", Duration::from_secs(60), || async {
        sqlx::query_scalar::<_, Option<i64>>(
            "SELECT paused_position FROM checkpoints WHERE consumer = 'token-projector'",
        )
        .fetch_one(&db.pool)
        .await
        .unwrap()
    })
    .await;
    assert_eq!(
        paused_at, culprit,
        "paused on the event whose write fails, not on the batch"
    );
    let error: String = sqlx::query_scalar("SELECT last_error FROM checkpoints WHERE consumer = 'token-projector'")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert!(error.contains("out of range"), "{error}");
    assert_eq!(checkpoint(&db.pool, "token-projector").await, culprit - 1);
    assert_eq!(token.metric("rig_consumer_paused", "consumer=").await, Some(1.0));

    rig_consumer::skip(&db.pool, "token-projector", culprit).await.unwrap();
    wait_caught_up(&db.pool, "token-projector", Duration::from_secs(60)).await;
    assert_equals_fold(&db.pool, "token-projector", i64::MAX).await;
}
