//! One fleet of workers for many tenants: a projector process serves every enabled tenant, each
//! in its own database with its own checkpoint and tables; tenants added or disabled at run time
//! are picked up without a restart; replicas share the tenants, at most ⌈T / N⌉ each, and a
//! replica killed with SIGKILL under load hands its tenants over within 5 s while every tenant's
//! tables still equal a fold of its own log.
#![allow(clippy::unwrap_used)]

use rig_tests::{append_tx, commit_append, free_port, projection_mismatches, wait_for, wait_http_ok, Proc, TestDb};
use sqlx::PgPool;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const TOKEN: &str = "rig-token-projector";
const COST: &str = "rig-cost-projector";

/// A worker process and the port of its operations endpoints.
struct Worker {
    proc: Proc,
    port: u16,
}

impl Worker {
    fn spawn(binary: &str, control: &TestDb) -> Worker {
        let port = free_port();
        let listen = if binary == TOKEN {
            "RIG_TOKEN_PROJECTOR__METRICS_LISTEN"
        } else {
            "RIG_COST_PROJECTOR__METRICS_LISTEN"
        };
        let env = [
            ("DATABASE_URL", control.url.clone()),
            (listen, format!("127.0.0.1:{port}")),
        ];
        Worker {
            proc: Proc::spawn(binary, &[], &env),
            port,
        }
    }

    async fn ready(&self) {
        wait_http_ok(
            &format!("http://127.0.0.1:{}/readyz", self.port),
            Duration::from_secs(60),
        )
        .await;
    }

    /// The tenants this replica works now (`rig_consumer_active` = 1), `None` if it does not answer.
    async fn active_tenants(&self) -> Option<Vec<String>> {
        let text = reqwest::Client::new()
            .get(format!("http://127.0.0.1:{}/metrics", self.port))
            .timeout(Duration::from_secs(2))
            .send()
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        Some(
            text.lines()
                .filter(|l| l.starts_with("rig_consumer_active{") && l.ends_with(" 1"))
                .filter_map(|l| l.split("tenant=\"").nth(1)?.split('"').next().map(str::to_owned))
                .collect(),
        )
    }
}

/// Appends `n` TOKEN_USAGE events (with their cost given, so no price table is involved) to one
/// tenant's log as ingest would: under the append lock, then the wake-up ingest sends on the
/// control database (`rig_events` for `default`, which is the control database itself).
async fn append_usage(control: &PgPool, log: &PgPool, tenant: &str, n: i64) {
    let mut tx = append_tx(log).await;
    sqlx::query(
        "INSERT INTO events (stream_id, version, event_id, event_type, data, occurred_at) \
         SELECT 'acme/widgets#' || (s.i % 7 + 1), \
                coalesce((SELECT max(version) FROM events e WHERE e.stream_id = 'acme/widgets#' || (s.i % 7 + 1)), 0) \
                    + row_number() OVER (PARTITION BY s.i % 7 ORDER BY s.i), \
                gen_random_uuid(), 'TOKEN_USAGE', \
                jsonb_build_object('agent_id', 'dev-' || (s.i % 3), 'model', 'm-' || (s.i % 2), \
                    'input_tokens', s.i % 1000, 'output_tokens', s.i % 100, 'cost_usd', (s.i % 97) / 100.0), \
                timestamptz '2025-10-01 00:00:00+00' + (s.i % 3) * interval '1 day' \
         FROM generate_series(1, $1) AS s(i)",
    )
    .bind(n)
    .execute(&mut *tx)
    .await
    .unwrap();
    if tenant == rig_tenants::DEFAULT {
        commit_append(tx).await;
    } else {
        tx.commit().await.unwrap();
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(rig_tenants::TENANT_EVENTS_CHANNEL)
            .bind(tenant)
            .execute(control)
            .await
            .unwrap();
    }
}

/// Whether a tenant's `token_usage` (and `daily_cost`, with `cost`) equal the fold of its own log
/// and cover it.
async fn folded_by(log: &PgPool, cost: bool) -> bool {
    let events: i64 = sqlx::query_scalar("SELECT count(*) FROM events")
        .fetch_one(log)
        .await
        .unwrap();
    let counted: i64 = sqlx::query_scalar("SELECT coalesce(sum(events), 0)::int8 FROM token_usage")
        .fetch_one(log)
        .await
        .unwrap();
    let costed: i64 = sqlx::query_scalar("SELECT coalesce(sum(events), 0)::int8 FROM daily_cost")
        .fetch_one(log)
        .await
        .unwrap_or(0);
    let mismatches: Vec<String> = projection_mismatches(log, &[])
        .await
        .into_iter()
        .filter(|m| cost || m.starts_with("token_usage"))
        .collect();
    events > 0 && counted == events && (!cost || costed == events) && mismatches.is_empty()
}

async fn folded(log: &PgPool) -> bool {
    folded_by(log, true).await
}

#[tokio::test]
async fn one_worker_of_each_projector_serves_every_tenant_and_picks_up_changes_at_run_time() {
    rig_tests::bin(TOKEN);
    rig_tests::bin(COST);
    let control = TestDb::new().await;
    let acme = control.add_tenant("acme").await;
    let globex = control.add_tenant("globex").await;
    let logs = [
        ("default", &control.pool),
        ("acme", &acme.pool),
        ("globex", &globex.pool),
    ];
    // Different amounts per tenant: a leak between tenants would show in the sums.
    for (i, (slug, log)) in logs.iter().enumerate() {
        append_usage(&control.pool, log, slug, 100 * (i as i64 + 1)).await;
    }
    let token = Worker::spawn(TOKEN, &control);
    let cost = Worker::spawn(COST, &control);
    token.ready().await;
    cost.ready().await;
    for (slug, log) in logs {
        wait_for(
            &format!("{slug}'s tables to equal its fold"),
            Duration::from_secs(30),
            || async { folded(log).await.then_some(()) },
        )
        .await;
    }
    // Each tenant's checkpoint is in its own database.
    for (slug, log) in logs {
        let consumers: Vec<String> = sqlx::query_scalar("SELECT consumer FROM checkpoints ORDER BY consumer")
            .fetch_all(log)
            .await
            .unwrap();
        assert_eq!(consumers, ["cost-projector", "token-projector"], "{slug}");
    }
    let mut active = token.active_tenants().await.unwrap();
    active.sort();
    assert_eq!(active, ["acme", "default", "globex"]);

    // Live appends reach the right tenant only.
    append_usage(&control.pool, &globex.pool, "globex", 50).await;
    wait_for("globex's new events to be applied", Duration::from_secs(10), || async {
        folded(&globex.pool).await.then_some(())
    })
    .await;
    for (slug, log) in [("default", &control.pool), ("acme", &acme.pool)] {
        assert!(folded(log).await, "{slug} changed by another tenant's events");
    }

    // A tenant added while the workers run is served within 10 s, without a restart.
    let initech = control.add_tenant("initech").await;
    append_usage(&control.pool, &initech.pool, "initech", 70).await;
    let added = Instant::now();
    wait_for("the new tenant to be served", Duration::from_secs(15), || async {
        folded(&initech.pool).await.then_some(())
    })
    .await;
    assert!(added.elapsed() < Duration::from_secs(10), "took {:?}", added.elapsed());

    // Disabled: no longer served (its data kept); enabled again: served again.
    assert!(rig_tenants::set_enabled(&control.pool, "initech", false).await.unwrap());
    wait_for("initech to be let go", Duration::from_secs(10), || async {
        let a = token.active_tenants().await?;
        (!a.iter().any(|t| t == "initech")).then_some(())
    })
    .await;
    append_usage(&control.pool, &initech.pool, "initech", 5).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        !folded(&initech.pool).await,
        "a disabled tenant's new events were applied"
    );
    assert!(rig_tenants::set_enabled(&control.pool, "initech", true).await.unwrap());
    wait_for("initech to be served again", Duration::from_secs(10), || async {
        folded(&initech.pool).await.then_some(())
    })
    .await;
}

#[tokio::test]
async fn three_replicas_share_nine_tenants_and_a_killed_one_hands_over_within_five_seconds() {
    rig_tests::bin(TOKEN);
    let control = TestDb::new().await;
    let mut tenants: Vec<(String, TestDb)> = Vec::new();
    for i in 0..8 {
        let slug = format!("team{i}");
        tenants.push((slug.clone(), control.add_tenant(&slug).await));
    }
    let mut logs: Vec<(String, PgPool)> = vec![("default".to_owned(), control.pool.clone())];
    logs.extend(tenants.iter().map(|(s, db)| (s.clone(), db.pool.clone())));
    for (slug, log) in &logs {
        append_usage(&control.pool, log, slug, 40).await;
    }
    let mut replicas: Vec<Worker> = (0..3).map(|_| Worker::spawn(TOKEN, &control)).collect();
    for r in &replicas {
        r.ready().await;
    }
    // Balanced: each of the three works exactly ⌈9 / 3⌉ = 3, and together all nine.
    let spread = |held: &[Vec<String>]| {
        let mut all: Vec<&String> = held.iter().flatten().collect();
        all.sort();
        all.dedup();
        (
            all.len(),
            held.iter().map(Vec::len).max().unwrap_or(0),
            held.iter().map(Vec::len).sum::<usize>(),
        )
    };
    wait_for(
        "three replicas with three tenants each",
        Duration::from_secs(20),
        || async {
            let mut held = Vec::new();
            for r in &replicas {
                held.push(r.active_tenants().await?);
            }
            (spread(&held) == (9, 3, 9)).then_some(())
        },
    )
    .await;

    // Load: appends to every tenant in turn until told to stop.
    let stop = Arc::new(AtomicBool::new(false));
    let load = {
        let (stop, logs, control) = (stop.clone(), logs.clone(), control.pool.clone());
        tokio::spawn(async move {
            let mut i = 0usize;
            while !stop.load(Ordering::Relaxed) {
                let (slug, log) = &logs[i % logs.len()];
                append_usage(&control, log, slug, 20).await;
                i += 1;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            i
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    let victim = replicas.remove(1);
    let victims_tenants = victim.active_tenants().await.unwrap();
    assert_eq!(victims_tenants.len(), 3);
    let mut victim = victim;
    victim.proc.kill9();
    let killed = Instant::now();
    wait_for(
        "the survivors to take every tenant",
        Duration::from_secs(10),
        || async {
            let mut held = Vec::new();
            for r in &replicas {
                held.push(r.active_tenants().await?);
            }
            // ⌈9 / 2⌉ = 5 at most each, nine in all, none twice.
            let (distinct, most, sum) = spread(&held);
            (distinct == 9 && sum == 9 && most <= 5).then_some(())
        },
    )
    .await;
    let handed_over = killed.elapsed();
    assert!(handed_over <= Duration::from_secs(5), "hand-over took {handed_over:?}");

    // A new replica takes its share within 10 s.
    replicas.push(Worker::spawn(TOKEN, &control));
    replicas[2].ready().await;
    let joined = Instant::now();
    wait_for("the new replica to take its share", Duration::from_secs(15), || async {
        let mut held = Vec::new();
        for r in &replicas {
            held.push(r.active_tenants().await?);
        }
        (spread(&held) == (9, 3, 9)).then_some(())
    })
    .await;
    assert!(
        joined.elapsed() <= Duration::from_secs(10),
        "took {:?}",
        joined.elapsed()
    );

    stop.store(true, Ordering::Relaxed);
    let batches = load.await.unwrap();
    assert!(batches > 20, "the load ran ({batches} appends)");
    for (slug, log) in &logs {
        wait_for(
            &format!("{slug}'s token_usage to equal its fold"),
            Duration::from_secs(30),
            || async { folded_by(log, false).await.then_some(()) },
        )
        .await;
    }
    eprintln!("hand-over after SIGKILL: {handed_over:?}; {batches} appends under load");
}

/// Reads one counter or gauge of a worker: the sum over the series of `name` whose labels
/// contain every one of `labels`.
async fn metric_sum(w: &Worker, name: &str, labels: &[&str]) -> Option<f64> {
    let text = reqwest::get(format!("http://127.0.0.1:{}/metrics", w.port))
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    Some(
        text.lines()
            .filter(|l| l.starts_with(name) && l[name.len()..].starts_with('{'))
            .filter(|l| labels.iter().all(|x| l.contains(x)))
            .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
            .sum(),
    )
}

#[tokio::test]
async fn a_tenant_on_a_second_server_is_served_by_the_same_workers_and_its_outage_harms_no_other() {
    rig_tests::bin(TOKEN);
    let control = TestDb::new().await;
    let acme = control.add_tenant("acme").await;
    // A second Postgres server of the test's own, placed with the real command.
    let cluster = rig_ops::pg::PrivateCluster::start()
        .await
        .expect("start a second Postgres");
    let far_url = format!("postgres://postgres@127.0.0.1:{}/rig_t_far", cluster.port);
    let out = tokio::process::Command::new(rig_tests::bin("rigctl"))
        .args(["tenants", "add", "far", "--database-url", &far_url])
        .env("RIG_CONFIG", "/dev/null")
        .env("DATABASE_URL", &control.url)
        .output()
        .await
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let far = sqlx::postgres::PgPoolOptions::new()
        .max_connections(2)
        .connect(&far_url)
        .await
        .unwrap();
    let logs = [
        ("default", control.pool.clone()),
        ("acme", acme.pool.clone()),
        ("far", far.clone()),
    ];
    for (slug, log) in &logs {
        append_usage(&control.pool, log, slug, 30).await;
    }
    let token = Worker::spawn(TOKEN, &control);
    token.ready().await;
    for (slug, log) in &logs {
        wait_for(&format!("{slug} folded"), Duration::from_secs(30), || async {
            folded_by(log, false).await.then_some(())
        })
        .await;
    }

    // The far server goes away: its tenant's consumer backs off and says so; the others go on.
    far.close().await;
    cluster.stop().unwrap();
    let errors_before = metric_sum(
        &token,
        "rig_consumer_errors_total",
        &["tenant=\"far\"", "kind=\"transient\""],
    )
    .await
    .unwrap();
    sqlx::query("SELECT pg_notify($1, 'far')")
        .bind(rig_tenants::TENANT_EVENTS_CHANNEL)
        .execute(&control.pool)
        .await
        .unwrap();
    wait_for(
        "the far tenant's consumer to report its errors",
        Duration::from_secs(15),
        || async {
            let n = metric_sum(
                &token,
                "rig_consumer_errors_total",
                &["tenant=\"far\"", "kind=\"transient\""],
            )
            .await?;
            (n > errors_before).then_some(())
        },
    )
    .await;
    for (slug, log) in [("default", &control.pool), ("acme", &acme.pool)] {
        append_usage(&control.pool, log, slug, 25).await;
        wait_for(
            &format!("{slug} served while the far server is down"),
            Duration::from_secs(10),
            || async { folded_by(log, false).await.then_some(()) },
        )
        .await;
    }

    // Back: the same process serves it again, and nothing was lost or doubled.
    cluster.start_again().unwrap();
    let far = sqlx::postgres::PgPoolOptions::new()
        .max_connections(2)
        .connect(&far_url)
        .await
        .unwrap();
    append_usage(&control.pool, &far, "far", 40).await;
    wait_for("the far tenant served again", Duration::from_secs(30), || async {
        folded_by(&far, false).await.then_some(())
    })
    .await;
    let mut token = token;
    assert!(token.proc.try_wait().is_none(), "the worker exited");
}
