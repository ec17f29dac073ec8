//! `rigctl bench --quick --json` as an operator runs it: the real binary, the real workers,
//! the real Postgres. It proves the report's shape (every figure, each with its baseline and
//! ratio, as numbers) and that the scratch database is gone afterwards. It asserts nothing
//! about speed: this machine is shared and the build is a debug one.
#![allow(clippy::unwrap_used)]

use rig_tests::{bin, Proc, TestDb};
use serde_json::Value;
use std::time::{Duration, Instant};

const WORKERS: [&str; 5] = [
    "ingest",
    "token_projector",
    "cost_projector",
    "stale_heartbeat",
    "notifier",
];

fn expected_figures() -> Vec<String> {
    let mut names: Vec<String> = [
        "append_single_http_64",
        "append_single_http_64_vs_http_ceiling",
        "append_single_http_64_with_4_hostile",
        "append_batch500_http_4",
        "claims_http_64x32",
        "claim_conflicts_http_64x32",
        "read_burst_append_p99",
        "token_projector_rebuild",
        "append_to_projection_latency_p50",
        "append_to_projection_latency_p99",
        "append_to_projection_latency_max",
        "tenants_connections",
        "tenants_append_to_projection_idle_p99",
        "tenants_append_to_projection_busy_p99",
        "tenants_append_to_projection_spread_p99",
    ]
    .map(String::from)
    .to_vec();
    for w in WORKERS {
        for kind in ["idle_cpu", "idle_rss", "peak_rss", "tenants_idle_cpu"] {
            names.push(format!("{kind}_{w}"));
        }
    }
    names
}

/// The JSON report: the one line of the log that parses as an object with `figures` (stdout and
/// stderr share the log file).
fn report(log: &str) -> Option<Value> {
    log.lines()
        .filter(|l| l.starts_with('{'))
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|v| v.get("figures").is_some())
}

#[tokio::test]
async fn bench_quick_reports_every_figure_with_baseline_and_ratio_and_drops_its_scratch_database() {
    let db = TestDb::new().await;
    // Built here, so the bench finds fresh siblings next to rigctl.
    for b in [
        "rig-ingest",
        "rig-token-projector",
        "rig-cost-projector",
        "rig-stale-heartbeat",
        "rig-notifier",
    ] {
        bin(b);
    }
    // The bench makes its own scratch database on the server DATABASE_URL names.
    let mut p = Proc::spawn(
        "rigctl",
        &["bench", "--quick", "--json"],
        &[("DATABASE_URL", db.url.clone())],
    );
    let deadline = Instant::now() + Duration::from_secs(300);
    let status = loop {
        if let Some(s) = p.try_wait() {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "rigctl bench --quick did not finish in 300 s; log:\n{}",
            p.log_text()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let log = p.log_text();
    assert!(status.success(), "rigctl bench failed ({status}); log:\n{log}");
    let r = report(&log).unwrap_or_else(|| panic!("no JSON report in the output:\n{log}"));

    let baselines = r["baselines"].as_array().unwrap();
    for name in [
        "raw_insert_autocommit_8",
        "raw_insert_autocommit_8_latency",
        "http_refused_64",
        "append_single_http_64_without_hostile",
        "raw_insert_100row_8",
        "raw_read_seq",
    ] {
        let b = baselines
            .iter()
            .find(|b| b["name"] == name)
            .unwrap_or_else(|| panic!("baseline {name} missing: {r}"));
        assert!(b["value"].is_number(), "baseline {name} has no numeric value: {b}");
        assert!(b["unit"].is_string(), "baseline {name} has no unit: {b}");
    }

    // The HTTP ceiling counts only the 422 answers it asked for: every request was refused by
    // validation, none written, none failed otherwise.
    let ceiling = baselines.iter().find(|b| b["name"] == "http_refused_64").unwrap();
    assert_eq!(ceiling["detail"]["errors"], 0, "{ceiling}");
    assert!(ceiling["value"].as_f64().unwrap() > 0.0, "{ceiling}");

    // The hostile phase: every hostile body was refused as it should be, and no honest append
    // failed meanwhile.
    let hostile = r["figures"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["name"] == "append_single_http_64_with_4_hostile")
        .unwrap_or_else(|| panic!("no hostile figure: {r}"));
    assert_eq!(hostile["detail"]["errors"], 0, "{hostile}");
    assert!(
        hostile["detail"]["hostile"]["refused"].as_u64().unwrap() > 0,
        "{hostile}"
    );
    assert_eq!(
        hostile["baseline"], "append_single_http_64_without_hostile",
        "{hostile}"
    );
    assert!(hostile["met"].is_boolean(), "{hostile}");

    let figures = r["figures"].as_array().unwrap();
    for name in expected_figures() {
        let f = figures
            .iter()
            .find(|f| f["name"] == name.as_str())
            .unwrap_or_else(|| panic!("figure {name} missing: {r}"));
        for key in ["value", "baseline_value", "ratio"] {
            assert!(f[key].is_number(), "figure {name}: {key} is not a number: {f}");
        }
        assert!(
            f["unit"].is_string() && f["baseline"].is_string(),
            "figure {name} lacks unit or baseline: {f}"
        );
        // A figure compared with a measured baseline names one that the report holds.
        let base = f["baseline"].as_str().unwrap();
        if (base.starts_with("raw_") || base.starts_with("http_")) && !base.contains("_latency_") {
            assert!(
                baselines.iter().any(|b| b["name"] == base),
                "figure {name} names unknown baseline {base}"
            );
        }
        // Where a figure has a target, the report says whether it was met.
        if f["target_ratio"].is_number() || f["target_value"].is_number() {
            assert!(f["met"].is_boolean(), "figure {name} has a target but no verdict: {f}");
        }
    }
    for name in [
        "append_single_http_64",
        "append_batch500_http_4",
        "token_projector_rebuild",
        "append_to_projection_latency_p99",
    ] {
        let f = figures.iter().find(|f| f["name"] == name).unwrap();
        assert!(f["met"].is_boolean(), "figure {name} must carry its target: {f}");
    }
    assert!(r["all_met"].is_boolean());

    let scratch = r["database"].as_str().unwrap();
    assert!(scratch.starts_with("rig_bench_"), "scratch database {scratch:?}");
    assert_eq!(r["kept"], false);
    let exists: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
        .bind(scratch)
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert!(!exists, "the scratch database {scratch} was not dropped");
    // Nor any of the tenants' logs of the tenants phase.
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM pg_database WHERE datname LIKE $1 || '\\_%'")
        .bind(scratch)
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(left, 0, "tenant logs of {scratch} were not dropped");
    // The bench never writes to the database it was pointed at.
    assert_eq!(db.events().await, 0);
}
