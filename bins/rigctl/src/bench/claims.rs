//! Claims: agents racing for the same issues, one winner each time.

use super::*;
use anyhow::bail;
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinSet;

pub(super) struct ClaimResult {
    pub(super) claims_per_s: f64,
    pub(super) conflicts_per_s: f64,
    pub(super) detail: Value,
}

const ISSUES: u64 = 32;
const CLIENTS: usize = 64;

/// 64 agents race for 32 issues; a winner releases its issue at once so the race goes on.
pub(super) async fn claim_race(
    http: &reqwest::Client,
    url: &str,
    ingest_addr: SocketAddr,
    sizes: &Sizes,
    ingest: IngestProbe<'_>,
) -> anyhow::Result<ClaimResult> {
    approve_issues(http, url).await?;
    let c = Arc::new(Counters::default());
    let releases = Arc::new(AtomicU64::new(0));
    let mut tasks = JoinSet::new();
    for k in 0..CLIENTS {
        tasks.spawn(claim_loop(
            format!("bench-agent-{k}"),
            ingest_addr,
            c.clone(),
            releases.clone(),
        ));
    }
    let before = releases.load(Ordering::Relaxed);
    let w = measure(&c, sizes, Some(ingest)).await;
    let released = releases.load(Ordering::Relaxed) - before;
    while tasks.join_next().await.is_some() {}
    if w.ok == 0 {
        bail!(
            "no claim succeeded: {}",
            c.first_error().unwrap_or_else(|| "no answer".into())
        );
    }
    let appends = w.ok + released;
    let mut detail = json!({
        "clients": CLIENTS, "issues": ISSUES, "claims": w.ok, "conflicts": w.conflicts,
        "releases_approx": released, "appends_per_s": round(w.rate(appends), 1),
        "requests_per_s": round(w.rate(appends + w.conflicts), 1), "errors": w.errors,
        "seconds": round(w.secs, 3), "cpu": w.cpu_detail(appends),
        "what": "each client claims a random issue (ISSUE_ASSIGNED); a winner releases it at once (ISSUE_UNASSIGNED), a loser gets 409 already_assigned",
    });
    if let Some(e) = c.first_error() {
        detail["first_error"] = json!(e);
    }
    Ok(ClaimResult {
        claims_per_s: w.rate(w.ok),
        conflicts_per_s: w.rate(w.conflicts),
        detail,
    })
}

/// The issues raced for, approved.
async fn approve_issues(http: &reqwest::Client, url: &str) -> anyhow::Result<()> {
    for n in 1..=ISSUES {
        let body = format!(r#"{{"stream_id":"bench/claims#{n}","events":[{{"type":"ISSUE_APPROVED"}}]}}"#);
        match post(http, url, body.into()).await {
            Ok((201, _)) => {}
            Ok((s, text)) => bail!("approving bench/claims#{n}: {s}: {}", String::from_utf8_lossy(&text)),
            Err(e) => bail!("approving bench/claims#{n}: {e}"),
        }
    }
    Ok(())
}

/// One agent: claims a random issue, releases it when won, until the phase stops.
async fn claim_loop(agent: String, ingest_addr: SocketAddr, c: Arc<Counters>, releases: Arc<AtomicU64>) {
    let mut conn = None;
    while !c.stopped() {
        let n = rand::random_range(1..=ISSUES);
        let claim = format!(
            r#"{{"stream_id":"bench/claims#{n}","events":[{{"type":"ISSUE_ASSIGNED","data":{{"agent_id":"{agent}"}}}}]}}"#
        );
        match post_raw(&mut conn, ingest_addr, claim.as_bytes()).await {
            Ok((201, _)) => {
                c.ok.fetch_add(1, Ordering::Relaxed);
                let release = format!(
                    r#"{{"stream_id":"bench/claims#{n}","events":[{{"type":"ISSUE_UNASSIGNED","data":{{"reason":"bench_release","agent_id":"{agent}"}}}}]}}"#
                );
                match post_raw(&mut conn, ingest_addr, release.as_bytes()).await {
                    Ok((201, _)) => {
                        releases.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok((s, text)) => c.error(format!("release: {s}: {}", String::from_utf8_lossy(&text))),
                    Err(e) => c.error(e),
                }
            }
            Ok((409, text)) if text.windows(16).any(|w| w == b"already_assigned") => {
                c.conflicts.fetch_add(1, Ordering::Relaxed);
            }
            Ok((s, text)) => c.error(format!("claim: {s}: {}", String::from_utf8_lossy(&text))),
            Err(e) => {
                c.error(e);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

/// Step 8: the claim race, read against raw single-row autocommit INSERTs.
pub(super) async fn claims_phase(
    env: &Env<'_>,
    raw_single: &Baseline,
    figures: &mut Vec<Figure>,
) -> anyhow::Result<()> {
    progress(&format!(
        "[8/14] claims: 64 clients racing for 32 issues, {} s …",
        env.sizes.seconds
    ));
    let claims = claim_race(env.http, env.append_url, env.ingest_addr, env.sizes, env.probe).await?;
    progress(&format!(
        "      {:.0} claims/s, {:.0} conflicts/s",
        claims.claims_per_s, claims.conflicts_per_s
    ));
    figures.push(
        Figure::of("claims_http_64x32", claims.claims_per_s, "claims/s", raw_single).detail(claims.detail.clone()),
    );
    figures.push(Figure::of(
        "claim_conflicts_http_64x32",
        claims.conflicts_per_s,
        "conflicts/s",
        raw_single,
    ));
    Ok(())
}
