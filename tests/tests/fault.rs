//! The whole-system fault test: every worker of the rig runs as a real process against
//! a Postgres of its own, over two tenants (`default` and `acme`, each its own database), fed by
//! `rigctl simulate` in each tenant and by writers of this test, while the test
//! SIGKILLs tailing workers at random moments, kills one of the two ingests, crashes Postgres
//! once (immediate shutdown: no checkpoint, unflushed WAL lost, crash recovery at start), and
//! sends a stream of bad requests to both ingests.
//!
//! What it proves once the feeding stops: no process crashed, every bad request got a clear 4xx
//! (or 503 while the database was away) and wrote nothing, every consumer of both tenants caught
//! up, each tenant's projector tables equal a fold of its own log computed here, every event a
//! client got a 2xx for is
//! in the log, and the fake Discord got every notifiable event at least once, and each repeat
//! of a message is explained by its own notifier kill or Postgres restart that came between the
//! two posts (the one message in flight at such a moment; usually twice, three times when two
//! kills in a row catch the same message), one such message per tenant.
//!
//! `RIG_FAULT_SECONDS` sets the chaos phase (default 40 s, for CI); `RIG_FAULT_SEED` the seed of
//! the schedule and of the generated traffic. Figures are printed (`--nocapture` shows them).
#![allow(clippy::unwrap_used)]

use chrono::NaiveDate;
use hmac::{Hmac, Mac};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use reqwest::StatusCode;
use rig_events::money::Price;
use rig_tests::{free_port, projection_mismatches, wait_for, wait_http_ok, Proc, SystemPorts};
use rust_decimal::Decimal;
use serde_json::{json, Value};
use sqlx::PgPool;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;
use wiremock::matchers::method;
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate};

const TOKEN: &str = "fault-token";
const WEBHOOK_SECRET: &str = "fault-secret";
/// Small, so oversized bodies are cheap to send.
const MAX_BODY_BYTES: usize = 65_536;
const NOTIFIABLE: &[&str] = &[
    "AGENT_STUCK",
    "CI_FAILED",
    "HUMAN_GATE_TRIGGERED",
    "ESCALATED",
    "MERGED",
    "ISSUE_DONE",
];
const WRITERS: usize = 3;

// Indexes into the test's `workers` (0 is ingest A, which is never killed).
const INGEST_B: usize = 1;
const TOKEN_PROJECTOR: usize = 2;
const COST_PROJECTOR: usize = 3;
const STALE_HEARTBEAT: usize = 4;
const NOTIFIER: usize = 5;
const TAILING: [usize; 4] = [TOKEN_PROJECTOR, COST_PROJECTOR, STALE_HEARTBEAT, NOTIFIER];

// ---------------------------------------------------------------------------------------------
// The system under test.

/// One worker process, respawned with the same environment after each kill.
struct Worker {
    binary: &'static str,
    env: Vec<(&'static str, String)>,
    ready_url: String,
    proc: Option<Proc>,
    kills: u32,
    /// Log lines of killed incarnations that show a panic or a shutdown signal the test did not
    /// send (their log files go with them).
    panics: Vec<String>,
    foreign_signals: Vec<String>,
    /// Logs of killed incarnations, to explain a failure.
    old_logs: Vec<String>,
}

impl Worker {
    fn spawn(&mut self) {
        self.proc = Some(Proc::spawn(self.binary, &[], &self.env));
    }

    fn kill9(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.kill9();
            let log = p.log_text();
            self.panics.extend(panic_lines(&log));
            self.foreign_signals.extend(signal_lines(&log));
            self.old_logs.push(log);
            self.kills += 1;
        }
    }

    /// Fails the test, with the log, when the process exited on its own.
    fn assert_running(&mut self, when: &str) {
        let p = self.proc.as_mut().unwrap();
        if let Some(status) = p.try_wait() {
            let log = p.log_text();
            let cause = if signal_lines(&log).is_empty() {
                "by itself"
            } else {
                "on a SIGTERM/SIGINT the test did not send (another process signalling a reused pid?)"
            };
            panic!(
                "{} exited {cause} ({status}) {when}; log:\n{}",
                self.binary,
                tail(&log, 60)
            );
        }
    }
}

fn panic_lines(log: &str) -> Vec<String> {
    log.lines()
        .filter(|l| l.contains("panicked"))
        .map(str::to_owned)
        .collect()
}

/// The test sends SIGTERM only at the very end: a worker that logged a shutdown signal before
/// was signalled by someone else (on a shared machine, another program signalling a pid it
/// already reaped, which the kernel handed to our worker). Named so such a failure is not
/// mistaken for a bug of the worker.
fn signal_lines(log: &str) -> Vec<String> {
    log.lines()
        .filter(|l| l.contains("shutdown signal received"))
        .map(str::to_owned)
        .collect()
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

fn prices() -> Vec<Price> {
    let row = |model: &str, from: &str, i: &str, o: &str, cr: &str, cw: &str| Price {
        model: model.into(),
        effective_from: NaiveDate::from_str(from).unwrap(),
        input_per_mtok: Decimal::from_str(i).unwrap(),
        output_per_mtok: Decimal::from_str(o).unwrap(),
        cache_read_per_mtok: Decimal::from_str(cr).unwrap(),
        cache_write_per_mtok: Decimal::from_str(cw).unwrap(),
    };
    vec![
        // The simulator's models, one with a price change so the day decides the row.
        row("claude-sonnet-4-5", "2025-01-01", "3.00", "15.00", "0.30", "3.75"),
        row("claude-sonnet-4-5", "2025-09-29", "2.50", "12.50", "0.25", "3.125"),
        row("claude-haiku-4-5", "2025-01-01", "1", "5", "0.1", "1.25"),
        row("claude-opus-4-1", "2025-01-01", "15", "75", "1.50", "18.75"),
        // Priced only from mid-2025: earlier days are unpriced.
        row("fault-model", "2025-06-01", "0.0000003", "7.123456789", "0", "0.5"),
    ]
}

/// The `[[prices]]` of the config file. haiku's row is written as bare TOML numbers, read through
/// their shortest decimal form; the others as strings.
fn prices_toml(prices: &[Price]) -> String {
    prices
        .iter()
        .map(|p| {
            let q = |d: &Decimal| {
                if p.model == "claude-haiku-4-5" {
                    d.to_string()
                } else {
                    format!("\"{d}\"")
                }
            };
            format!(
                "[[prices]]\nmodel = \"{}\"\neffective_from = \"{}\"\ninput_per_mtok = {}\noutput_per_mtok = {}\n\
                 cache_read_per_mtok = {}\ncache_write_per_mtok = {}\n\n",
                p.model,
                p.effective_from,
                q(&p.input_per_mtok),
                q(&p.output_per_mtok),
                q(&p.cache_read_per_mtok),
                q(&p.cache_write_per_mtok)
            )
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// The fake Discord: records every post, answers 200 with a message id after a short delay, as
// the real one takes its time: a kill then often lands while a message is in flight.

#[derive(Clone, Default)]
struct Discord {
    /// `<webhook>:<event id>` of each post (the webhook's id in its path: each tenant posts to
    /// its own, and event ids derived from a stream and a version, such as stale-heartbeat's,
    /// repeat across tenants), with the arrival time, in arrival order.
    posts: Arc<Mutex<Vec<(String, Instant)>>>,
}

impl Respond for Discord {
    fn respond(&self, req: &Request) -> ResponseTemplate {
        let body: Value = serde_json::from_slice(&req.body).unwrap_or(Value::Null);
        let footer = body["embeds"][0]["footer"]["text"].as_str().unwrap_or("");
        let event = footer.rsplit("event ").next().unwrap_or("");
        let webhook = req.url.path().split('/').nth(3).unwrap_or("");
        let mut posts = self.posts.lock().unwrap();
        posts.push((format!("{webhook}:{event}"), Instant::now()));
        ResponseTemplate::new(200)
            .set_body_json(json!({"id": format!("{}", posts.len()), "type": 0}))
            .set_delay(Duration::from_millis(40))
    }
}

// ---------------------------------------------------------------------------------------------
// Writers: valid appends over HTTP to both ingests, retried with the same ids.

#[derive(Default)]
struct WriterReport {
    acked: Vec<Uuid>,
    requests: u64,
    retries: u64,
    gave_up: u64,
    network_errors: u64,
    /// Non-2xx statuses seen, by code.
    statuses: BTreeMap<u16, u64>,
    /// Answers a valid append must never get (a 4xx, a 5xx other than 503), with their bodies.
    unexpected: Vec<String>,
}

fn uuid(rng: &mut StdRng) -> Uuid {
    uuid::Builder::from_random_bytes(rng.random()).into_uuid()
}

/// One valid append request: (stream, events, their ids).
fn valid_request(rng: &mut StdRng, writer: usize) -> (String, Vec<Value>, Vec<Uuid>) {
    let agent_stream = rng.random_bool(0.3);
    let stream = if agent_stream {
        format!("agent:fault-w{writer}-{}", rng.random_range(0..3))
    } else {
        // Now and then in another case: GitHub names are one stream whatever their case.
        let owner = if rng.random_bool(0.1) { "Fault" } else { "fault" };
        format!("{owner}/w{writer}#{}", rng.random_range(1..=20))
    };
    let n = rng.random_range(1..=4);
    let mut events = Vec::with_capacity(n);
    let mut ids = Vec::with_capacity(n);
    for _ in 0..n {
        let id = uuid(rng);
        let mut e = if rng.random_bool(0.6) {
            json!({"id": id, "type": "TOKEN_USAGE", "data": usage(rng, writer)})
        } else if agent_stream {
            let t = ["HEARTBEAT", "FAULT_PROBE"][rng.random_range(0..2)];
            json!({"id": id, "type": t, "data": {"agent_id": format!("fault-w{writer}"), "status": "busy"}})
        } else {
            let pr = rng.random_range(1..500);
            let (t, data) = match rng.random_range(0..9) {
                0 => ("ISSUE_APPROVED", json!({"title": "fault"})),
                1 => ("CI_FAILED", json!({"pr_number": pr, "failed_checks": ["test"]})),
                2 => ("CI_PASSED", json!({"pr_number": pr})),
                3 => ("MERGED", json!({"pr_number": pr, "merge_sha": "abc"})),
                4 => ("ISSUE_DONE", json!({})),
                5 => ("ESCALATED", json!({"reason": "fault test", "attempts": 2})),
                6 => ("HUMAN_GATE_TRIGGERED", json!({"reason": "fault test", "pr_number": pr})),
                7 => ("REVIEW_PASSED", json!({"reviewer": "r", "pr_number": pr})),
                _ => ("FAULT_PROBE", json!({"n": pr})),
            };
            json!({"id": id, "type": t, "data": data})
        };
        if rng.random_bool(0.2) {
            e["metadata"] = json!({"source": "fault-test", "correlation_id": format!("w{writer}")});
        }
        events.push(e);
        ids.push(id);
    }
    (stream, events, ids)
}

/// A TOKEN_USAGE body covering the cost rule's cases: with and without cache counts (absent or
/// null), the agent's own `cost_usd` as a string or a number, days before, at and after a price
/// change (some given with an offset that moves the UTC day), or no `occurred_at` at all.
fn usage(rng: &mut StdRng, writer: usize) -> Value {
    let models = [
        "claude-sonnet-4-5",
        "claude-haiku-4-5",
        "claude-opus-4-1",
        "fault-model",
        "fault-unpriced",
    ];
    let mut d = json!({
        "agent_id": format!("fault-w{writer}-a{}", rng.random_range(0..3)),
        "model": models[rng.random_range(0..models.len())],
        "input_tokens": rng.random_range(0..200_000),
        "output_tokens": rng.random_range(0..20_000),
    });
    for k in ["cache_read_tokens", "cache_write_tokens"] {
        match rng.random_range(0..4) {
            0 => d[k] = json!(rng.random_range(0..90_000)),
            1 => d[k] = Value::Null,
            _ => {}
        }
    }
    match rng.random_range(0..10) {
        0 => d["cost_usd"] = json!(format!("0.{:06}", rng.random_range(0..1_000_000))),
        1 => d["cost_usd"] = json!(f64::from(rng.random_range(0..100_000u32)) / 1000.0),
        _ => {}
    }
    d
}

fn occurred_at(rng: &mut StdRng) -> Option<&'static str> {
    const DAYS: &[&str] = &[
        "2024-12-31T23:59:59Z",
        "2025-05-31T12:00:00Z",
        "2025-06-01T00:00:00Z",
        "2025-09-28T23:30:00-02:00",
        "2025-09-29T00:30:00+03:00",
        "2025-12-01T08:00:00Z",
    ];
    rng.random_bool(0.7).then(|| DAYS[rng.random_range(0..DAYS.len())])
}

async fn writer(k: usize, seed: u64, bases: [String; 2], stop: CancellationToken) -> WriterReport {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let mut rng = StdRng::seed_from_u64(seed.wrapping_add(100 + k as u64));
    let mut rep = WriterReport::default();
    let mut target = k % 2;
    while !stop.is_cancelled() {
        let (stream, mut events, ids) = valid_request(&mut rng, k);
        for e in &mut events {
            if e["type"] == "TOKEN_USAGE" {
                if let Some(at) = occurred_at(&mut rng) {
                    e["occurred_at"] = json!(at);
                }
            }
        }
        let body = json!({"stream_id": stream, "events": events});
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut delay = Duration::from_millis(100);
        loop {
            rep.requests += 1;
            let r = client
                .post(format!("{}/v1/events", bases[target]))
                .bearer_auth(TOKEN)
                .json(&body)
                .send()
                .await;
            match r {
                Ok(r) if r.status().is_success() => {
                    rep.acked.extend(&ids);
                    break;
                }
                Ok(r) => {
                    let status = r.status();
                    *rep.statuses.entry(status.as_u16()).or_default() += 1;
                    if status != StatusCode::SERVICE_UNAVAILABLE {
                        let text = r.text().await.unwrap_or_default();
                        rep.unexpected.push(format!("{status} {text} for {body}"));
                    }
                    if !status.is_server_error() {
                        break;
                    }
                }
                // The ingest is away (killed): the same ids go to the other one.
                Err(_) => {
                    rep.network_errors += 1;
                    target = 1 - target;
                }
            }
            if Instant::now() > deadline {
                rep.gave_up += 1;
                break;
            }
            rep.retries += 1;
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(2));
        }
        target = rng.random_range(0..2);
        tokio::time::sleep(Duration::from_millis(rng.random_range(10..50))).await;
    }
    rep
}

// ---------------------------------------------------------------------------------------------
// Bad requests.

#[derive(Default)]
struct BadReport {
    /// kind → status (0 = no answer) → count.
    by_kind: BTreeMap<&'static str, BTreeMap<u16, u64>>,
    violations: Vec<String>,
    /// Ids carried by refused requests: none may be in the log.
    ids: Vec<Uuid>,
}

fn sign(secret: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// One bad request: its kind, the request, the statuses that are right for it, and the ids of
/// otherwise valid events it carries.
fn bad_request(
    rng: &mut StdRng,
    client: &reqwest::Client,
    base: &str,
) -> (&'static str, reqwest::RequestBuilder, &'static [u16], Vec<Uuid>) {
    let events_url = format!("{base}/v1/events");
    let hook_url = format!(
        "{base}{}",
        ["/v1/github/webhook", "/api/webhook/github"][rng.random_range(0..2)]
    );
    let json_post = |url: &str, body: Vec<u8>| {
        client
            .post(url)
            .header("content-type", "application/json")
            .bearer_auth(TOKEN)
            .body(body)
    };
    let id = uuid(rng);
    let valid =
        json!({"stream_id": "fault/bad#1", "events": [{"id": id, "type": "CI_FAILED", "data": {"pr_number": 1}}]});
    match rng.random_range(0..10) {
        0 => {
            let cut = [
                "{\"stream_id\": \"fault/bad#1\", \"events\": [",
                "{",
                "[1,2",
                "{\"a\":}",
                "nul",
                "\"open",
            ];
            let body = cut[rng.random_range(0..cut.len())].as_bytes().to_vec();
            ("malformed_json", json_post(&events_url, body), &[400], vec![])
        }
        1 => {
            let n = rng.random_range(1..3000);
            let body: Vec<u8> = (0..n).map(|_| rng.random()).collect();
            let url = [events_url.as_str(), &format!("{base}/api/events")][rng.random_range(0..2)].to_owned();
            ("random_bytes", json_post(&url, body), &[400, 422], vec![])
        }
        2 => {
            let pad = "x".repeat(MAX_BODY_BYTES + rng.random_range(1..5000));
            let body = json!({"stream_id": "fault/bad#1", "events": [{"id": id, "type": "FAULT_PROBE", "data": {"pad": pad}}]});
            (
                "oversized",
                json_post(&events_url, body.to_string().into_bytes()),
                &[413],
                vec![id],
            )
        }
        3 => {
            let req = client.post(&events_url).json(&valid);
            ("missing_token", req, &[401], vec![id])
        }
        4 => {
            let auth = [
                "Bearer wrong-token",
                "Bearer ",
                "Basic ZmF1bHQtdG9rZW4=",
                "fault-token",
                "Bearer fault-token-x",
            ];
            let req = client
                .post(&events_url)
                .header("authorization", auth[rng.random_range(0..auth.len())])
                .json(&valid);
            ("wrong_token", req, &[401], vec![id])
        }
        5 => {
            let payload =
                json!({"action": "closed", "issue": {"number": 7}, "repository": {"full_name": "fault/hook"}});
            let body = payload.to_string().into_bytes();
            let sig = match rng.random_range(0..4) {
                0 => sign("not-the-secret", &body),
                1 => "sha256=zz".to_owned(),
                2 => sign(WEBHOOK_SECRET, b"another body"),
                _ => format!("sha1={}", hex::encode([7u8; 20])),
            };
            let req = client
                .post(&hook_url)
                .header("content-type", "application/json")
                .header("X-GitHub-Event", "issues")
                .header("X-GitHub-Delivery", Uuid::new_v4().to_string())
                .header("X-Hub-Signature-256", sig)
                .body(body);
            ("bad_signature", req, &[401], vec![])
        }
        6 => {
            let req = client
                .post(&hook_url)
                .header("content-type", "application/json")
                .header("X-GitHub-Event", "issues")
                .header("X-GitHub-Delivery", Uuid::new_v4().to_string())
                .body(r#"{"action":"closed","issue":{"number":7},"repository":{"full_name":"fault/hook"}}"#);
            ("missing_signature", req, &[401], vec![])
        }
        7 => {
            let ids: Vec<Uuid> = (0..2).map(|_| uuid(rng)).collect();
            let ok = json!({"id": ids[0], "type": "CI_PASSED", "data": {}});
            let bad = |e: Value| json!({"stream_id": "fault/bad#2", "events": [ok.clone(), e]});
            let body = match rng.random_range(0..9) {
                0 => json!({"stream_id": "no-such-form", "events": [ok]}),
                1 => bad(json!({"id": ids[1], "type": "lower_case", "data": {}})),
                2 => bad(
                    json!({"id": ids[1], "type": "TOKEN_USAGE", "data": {"agent_id": "a", "input_tokens": 1, "output_tokens": 1}}),
                ),
                3 => bad(json!({"id": ids[1], "type": "TOKEN_USAGE",
                                "data": {"agent_id": "a", "model": "m", "input_tokens": "many", "output_tokens": 1}})),
                4 => bad(json!({"id": "not-a-uuid", "type": "CI_PASSED", "data": {}})),
                5 => bad(json!({"id": ids[0], "type": "CI_PASSED", "data": {}})),
                6 => json!({"stream_id": "fault/bad#2", "expected_version": -1, "events": [ok]}),
                7 => bad(json!({"id": ids[1], "type": "ISSUE_ASSIGNED", "data": {"agent_id": 5}})),
                _ => {
                    json!({"stream_id": "fault/bad#2", "events": (0..1001).map(|_| json!({"type": "FAULT_PROBE"})).collect::<Vec<_>>()})
                }
            };
            (
                "invalid_event",
                json_post(&events_url, body.to_string().into_bytes()),
                &[400, 422],
                ids,
            )
        }
        8 => {
            let bodies = [
                json!({"Repo": "fault/compat", "IssueNumber": 3}),
                json!({"Type": "HEARTBEAT", "Repo": "fault/compat", "IssueNumber": 3}),
                json!({"Type": "nope", "AgentId": "a"}),
                json!(["Type", "HEARTBEAT"]),
            ];
            let body = bodies[rng.random_range(0..bodies.len())].to_string().into_bytes();
            (
                "compat_invalid",
                json_post(&format!("{base}/api/events"), body),
                &[400, 422],
                vec![],
            )
        }
        _ => {
            // A valid body on a route or method that does not take it.
            let req = match rng.random_range(0..3) {
                0 => client.put(&events_url).bearer_auth(TOKEN).json(&valid),
                1 => client.post(format!("{base}/v1/nope")).bearer_auth(TOKEN).json(&valid),
                _ => client
                    .delete(format!("{base}/v1/streams/fault%2Fbad%231"))
                    .bearer_auth(TOKEN),
            };
            ("wrong_route", req, &[404, 405], vec![id])
        }
    }
}

async fn bad_requests(seed: u64, bases: [String; 2], stop: CancellationToken) -> BadReport {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let mut rng = StdRng::seed_from_u64(seed.wrapping_add(7));
    let mut rep = BadReport::default();
    let mut i = 0usize;
    while !stop.is_cancelled() {
        let target = i % 2;
        i += 1;
        let (kind, req, ok, ids) = bad_request(&mut rng, &client, &bases[target]);
        rep.ids.extend(ids);
        let status = match req.send().await {
            Ok(r) => {
                let status = r.status();
                let body: Value = r.json().await.unwrap_or(Value::Null);
                let clear = body["error"].is_string() && body["detail"].is_string();
                if status != StatusCode::SERVICE_UNAVAILABLE && !ok.contains(&status.as_u16()) {
                    rep.violations.push(format!(
                        "{kind} to ingest {}: {status} {body}",
                        "AB".as_bytes()[target] as char
                    ));
                } else if !clear {
                    rep.violations
                        .push(format!("{kind}: {status} without a JSON error and detail: {body}"));
                }
                status.as_u16()
            }
            Err(e) => {
                // Only ingest B is ever down on purpose.
                if target == 0 {
                    rep.violations.push(format!("{kind} to ingest A: no answer: {e}"));
                }
                0
            }
        };
        *rep.by_kind.entry(kind).or_default().entry(status).or_default() += 1;
        tokio::time::sleep(Duration::from_millis(rng.random_range(5..25))).await;
    }
    rep
}

// ---------------------------------------------------------------------------------------------

/// Removes a temporary file when the test ends, passed or failed.
struct RemoveOnDrop(std::path::PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[derive(Debug, Clone, Copy)]
enum Action {
    KillWorker(usize),
    KillIngestB,
    RestartPostgres,
}

/// When to do what (seconds into the chaos phase): each tailing worker killed at least once,
/// more at random, ingest B once, Postgres once.
fn schedule(rng: &mut StdRng, secs: f64) -> Vec<(f64, Action)> {
    let kills = ((secs / 5.0) as usize).max(TAILING.len());
    let mut first = TAILING.to_vec();
    first.shuffle(rng);
    let mut plan: Vec<(f64, Action)> = (0..kills)
        .map(|i| {
            let w = first
                .get(i)
                .copied()
                .unwrap_or_else(|| TAILING[rng.random_range(0..TAILING.len())]);
            (rng.random_range(0.05..0.92) * secs, Action::KillWorker(w))
        })
        .collect();
    plan.push((0.35 * secs, Action::KillIngestB));
    plan.push((0.6 * secs, Action::RestartPostgres));
    plan.sort_by(|a, b| a.0.total_cmp(&b.0));
    plan
}

async fn wait_ready(w: &Worker) {
    wait_http_ok(&w.ready_url, Duration::from_secs(60)).await;
}

/// Consumers (name, lag, paused); issues an agent still holds (stale-heartbeat will unassign
/// them, appending more); outbox messages not delivered yet.
async fn catch_up_state(pool: &PgPool) -> (Option<Vec<(String, i64, bool)>>, Option<i64>, Option<i64>) {
    let lags = rig_projections::status(pool)
        .await
        .ok()
        .map(|s| s.into_iter().map(|c| (c.consumer, c.lag, c.paused)).collect());
    let held = sqlx::query_scalar(
        "SELECT count(*) FROM issue_state WHERE status IN ('assigned', 'in_progress') AND agent_id IS NOT NULL",
    )
    .fetch_one(pool)
    .await
    .ok();
    let pending =
        sqlx::query_scalar("SELECT count(*) FROM notifier_outbox WHERE sent_at IS NULL AND failed_at IS NULL")
            .fetch_one(pool)
            .await
            .ok();
    (lags, held, pending)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_rig_survives_kills_a_postgres_restart_and_bad_input_without_losing_or_doubling() {
    let secs: f64 = std::env::var("RIG_FAULT_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(40.0);
    let seed: u64 = std::env::var("RIG_FAULT_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed_fa17);
    let mut rng = StdRng::seed_from_u64(seed);
    println!("fault test: {secs} s of chaos, seed {seed}");
    // Built up front, so no build lands in the middle of the timed phases.
    let built = Instant::now();
    for b in [
        "rig-ingest",
        "rig-token-projector",
        "rig-cost-projector",
        "rig-stale-heartbeat",
        "rig-notifier",
        "rigctl",
    ] {
        rig_tests::bin(b);
    }
    println!("binaries up to date in {:.1} s", built.elapsed().as_secs_f64());

    // Postgres of our own: restarting it harms no other test.
    let cluster = Arc::new(
        rig_ops::pg::PrivateCluster::start()
            .await
            .expect("start a private Postgres"),
    );
    let url = format!("postgres://postgres@127.0.0.1:{}/rig_fault", cluster.port);
    rig_ops::pg::ensure_database(&url).await.unwrap();
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(4)
        .connect(&url)
        .await
        .unwrap();
    rig_log::db::migrate(&pool).await.unwrap();
    // The second tenant: a database of its own on the same server, registered in the catalog.
    let acme_url = format!("postgres://postgres@127.0.0.1:{}/rig_fault_acme", cluster.port);
    rig_ops::pg::ensure_database(&acme_url).await.unwrap();
    let acme = sqlx::postgres::PgPoolOptions::new()
        .max_connections(4)
        .connect(&acme_url)
        .await
        .unwrap();
    rig_log::db::migrate(&acme).await.unwrap();
    rig_tenants::register(
        &pool,
        &rig_tenants::Tenant {
            slug: "acme".into(),
            database_name: "rig_fault_acme".into(),
            server: None,
            enabled: true,
        },
    )
    .await
    .unwrap();
    let logs = [("default", &pool), ("acme", &acme)];
    // Each tenant's webhook: the deployment's is /api/webhooks/1/…, acme's its own.
    let webhook_ids = ["1", "2"];

    let discord = Discord::default();
    let discord_server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(discord.clone())
        .mount(&discord_server)
        .await;

    rig_tenants::settings::set(
        &pool,
        "acme",
        "notifier.discord_webhook_url",
        Some(&format!("{}/api/webhooks/2/acme", discord_server.uri())),
    )
    .await
    .unwrap();
    let prices = prices();
    let config = std::env::temp_dir().join(format!("rig-fault-{}.toml", Uuid::new_v4().simple()));
    let toml = format!(
        "[ingest]\nmax_body_bytes = {MAX_BODY_BYTES}\n\n[consumer]\npoll_interval = \"250ms\"\n\n\
         [stale_heartbeat]\nthreshold = \"3s\"\ncheck_interval = \"500ms\"\n\n{}",
        prices_toml(&prices)
    );
    std::fs::write(&config, toml).unwrap();
    let _config_guard = RemoveOnDrop(config.clone());

    let ports = SystemPorts::new();
    let port_b = free_port();
    let base = |p: u16| format!("http://127.0.0.1:{p}");
    let bases = [base(ports.ingest), base(port_b)];
    let common = || {
        vec![
            ("DATABASE_URL", url.clone()),
            ("RIG_CONFIG", config.display().to_string()),
        ]
    };
    let ingest_env = |port: u16| {
        let mut env = common();
        env.push(("RIG_INGEST__LISTEN", format!("127.0.0.1:{port}")));
        env.push(("RIG_INGEST__AUTH_TOKENS", format!("[\"{TOKEN}\"]")));
        env.push(("RIG_INGEST__GITHUB__WEBHOOK_SECRET", WEBHOOK_SECRET.to_owned()));
        env
    };
    let worker_env = |extra: Vec<(&'static str, String)>| {
        let mut env = common();
        env.extend(extra);
        env
    };
    let listen = |p: u16| format!("127.0.0.1:{p}");
    let worker = |binary: &'static str, env: Vec<(&'static str, String)>, ready_port: u16| Worker {
        binary,
        env,
        ready_url: format!("http://127.0.0.1:{ready_port}/readyz"),
        proc: None,
        kills: 0,
        panics: Vec::new(),
        foreign_signals: Vec::new(),
        old_logs: Vec::new(),
    };
    let mut workers = vec![
        worker("rig-ingest", ingest_env(ports.ingest), ports.ingest),
        worker("rig-ingest", ingest_env(port_b), port_b),
        worker(
            "rig-token-projector",
            worker_env(vec![(
                "RIG_TOKEN_PROJECTOR__METRICS_LISTEN",
                listen(ports.token_projector),
            )]),
            ports.token_projector,
        ),
        worker(
            "rig-cost-projector",
            worker_env(vec![(
                "RIG_COST_PROJECTOR__METRICS_LISTEN",
                listen(ports.cost_projector),
            )]),
            ports.cost_projector,
        ),
        worker(
            "rig-stale-heartbeat",
            worker_env(vec![
                ("RIG_STALE_HEARTBEAT__METRICS_LISTEN", listen(ports.stale_heartbeat)),
                ("RIG_STALE_HEARTBEAT__INGEST_URL", bases[0].clone()),
                ("RIG_STALE_HEARTBEAT__INGEST_TOKEN", TOKEN.to_owned()),
            ]),
            ports.stale_heartbeat,
        ),
        worker(
            "rig-notifier",
            worker_env(vec![
                ("RIG_NOTIFIER__METRICS_LISTEN", listen(ports.notifier)),
                (
                    "RIG_NOTIFIER__DISCORD_WEBHOOK_URL",
                    format!("{}/api/webhooks/1/fault", discord_server.uri()),
                ),
            ]),
            ports.notifier,
        ),
    ];
    let started = Instant::now();
    for w in &mut workers {
        w.spawn();
    }
    for w in &workers {
        wait_ready(w).await;
    }
    // The notifier starts at the head of each tenant's log: what comes after its checkpoint is
    // owed.
    let mut notifier_starts = Vec::new();
    for (tenant, log) in logs {
        let start: i64 = wait_for(
            &format!("{tenant}'s notifier checkpoint"),
            Duration::from_secs(30),
            || async {
                sqlx::query_scalar("SELECT position FROM checkpoints WHERE consumer = 'notifier'")
                    .fetch_optional(log)
                    .await
                    .ok()
                    .flatten()
            },
        )
        .await;
        notifier_starts.push(start);
    }
    println!("system up in {:.1} s", started.elapsed().as_secs_f64());

    // Feeders.
    let stop = CancellationToken::new();
    let mut simulate = Proc::spawn(
        "rigctl",
        &[
            "simulate",
            "--url",
            &bases[1],
            "--agents",
            "6",
            "--issues",
            "1000",
            "--silent-agents",
            "2",
            "--rate",
            "25",
            "--duration",
            &format!("{}s", secs.ceil() as u64 + 5),
            "--seed",
            &seed.to_string(),
        ],
        &[
            ("DATABASE_URL", url.clone()),
            ("RIG_CONFIG", config.display().to_string()),
            ("RIG_SIMULATE_TOKEN", TOKEN.to_owned()),
        ],
    );
    // acme's rig, through ingest A's routes for acme (ingest B feeds default's).
    let mut simulate_acme = Proc::spawn(
        "rigctl",
        &[
            "simulate",
            "--url",
            &format!("{}/t/acme", bases[0]),
            "--agents",
            "4",
            "--issues",
            "1000",
            "--silent-agents",
            "1",
            "--rate",
            "15",
            "--duration",
            &format!("{}s", secs.ceil() as u64 + 5),
            "--seed",
            &(seed + 1).to_string(),
        ],
        &[
            ("DATABASE_URL", url.clone()),
            ("RIG_CONFIG", config.display().to_string()),
            ("RIG_SIMULATE_TOKEN", TOKEN.to_owned()),
        ],
    );
    let writers: Vec<_> = (0..WRITERS)
        .map(|k| tokio::spawn(writer(k, seed, bases.clone(), stop.clone())))
        .collect();
    let bad = tokio::spawn(bad_requests(seed, bases.clone(), stop.clone()));

    // Chaos.
    let chaos_start = Instant::now();
    let mut pg_restarts = 0;
    // When the notifier's sender could lose track of a message Discord took: its kills, and the
    // Postgres restart (the leadership connection dies with it).
    // Each is a time window: from the kill to the restart, the Postgres restart's duration.
    let mut notifier_disruptions: Vec<(Instant, Instant)> = Vec::new();
    let mut pg_downtime = Duration::ZERO;
    for (at, action) in schedule(&mut rng, secs) {
        tokio::time::sleep_until((chaos_start + Duration::from_secs_f64(at)).into()).await;
        for w in &mut workers {
            w.assert_running(&format!("{at:.1} s into the chaos"));
        }
        let when = chaos_start.elapsed().as_secs_f64();
        let victim = match action {
            Action::KillWorker(i) => Some(i),
            Action::KillIngestB => Some(INGEST_B),
            Action::RestartPostgres => None,
        };
        if let Some(i) = victim {
            let killed_at = Instant::now();
            workers[i].kill9();
            let down = Duration::from_millis(rng.random_range(0..1500));
            println!("{when:>6.1} s  SIGKILL {} (down {down:?})", workers[i].binary);
            tokio::time::sleep(down).await;
            if i == NOTIFIER {
                // A request written just before the kill may reach Discord a moment after it:
                // the window runs until a new instance could post again.
                notifier_disruptions.push((killed_at, Instant::now()));
            }
            workers[i].spawn();
            wait_ready(&workers[i]).await;
        } else {
            let c = cluster.clone();
            let t = Instant::now();
            tokio::task::spawn_blocking(move || c.crash_and_restart())
                .await
                .unwrap()
                .expect("crash and restart Postgres");
            pg_downtime = t.elapsed();
            notifier_disruptions.push((t, Instant::now()));
            pg_restarts += 1;
            println!(
                "{when:>6.1} s  Postgres crashed (pg_ctl -m immediate) and restarted ({:.2} s)",
                pg_downtime.as_secs_f64()
            );
        }
    }
    tokio::time::sleep_until((chaos_start + Duration::from_secs_f64(secs)).into()).await;

    // Stop feeding.
    stop.cancel();
    let mut reports = Vec::new();
    for w in writers {
        reports.push(w.await.unwrap());
    }
    let bad = bad.await.unwrap();
    println!(
        "{:>6.1} s  test writers and bad requests stopped",
        chaos_start.elapsed().as_secs_f64()
    );
    let mut sim_logs = Vec::new();
    for sim in [&mut simulate, &mut simulate_acme] {
        sim.signal(libc::SIGINT);
        let sim_status = sim.terminate(Duration::from_secs(30)).unwrap();
        let sim_log = sim.log_text();
        assert!(
            sim_status.success(),
            "rigctl simulate failed ({sim_status}); log:\n{}",
            tail(&sim_log, 60)
        );
        sim_logs.push(sim_log);
    }
    let fed = Instant::now();
    println!(
        "{:>6.1} s  simulator stopped; waiting for the consumers",
        chaos_start.elapsed().as_secs_f64()
    );

    // Catch up: every consumer at the head, the agents the simulator left holding issues
    // unassigned by stale-heartbeat (which appends more), and the outbox delivered.
    // The notifier posts one message at a time, so a long run leaves a backlog to drain (its
    // throughput is a figure printed below, not an assertion).
    let allowed = Duration::from_secs_f64(120.0 + secs / 2.0);
    let deadline = Instant::now() + allowed;
    let final_lags = loop {
        let (mut lags, mut held, mut pending) = (Some(Vec::new()), Some(0), Some(0));
        for (_, log) in logs {
            let (l, h, p) = catch_up_state(log).await;
            lags = lags.zip(l).map(|(mut a, b)| {
                a.extend(b);
                a
            });
            held = held.zip(h).map(|(a, b)| a + b);
            pending = pending.zip(p).map(|(a, b)| a + b);
        }
        if let Some(lags) = lags.filter(|l| held == Some(0) && pending == Some(0) && l.iter().all(|c| c.1 == 0)) {
            break lags;
        }
        for w in &mut workers {
            w.assert_running("while catching up");
        }
        if Instant::now() > deadline {
            let logs: Vec<String> = workers
                .iter()
                .map(|w| {
                    format!(
                        "--- {} ---\n{}",
                        w.binary,
                        tail(&w.proc.as_ref().unwrap().log_text(), 15)
                    )
                })
                .collect();
            panic!(
                "not caught up {allowed:?} after the feeding stopped: consumers {:?} and acme's {:?}, issues still held \
                 {held:?}, messages pending {pending:?}\n{}",
                rig_projections::status(&pool).await,
                rig_projections::status(&acme).await,
                logs.join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let catch_up = fed.elapsed();

    // No process crashed: the ones never killed ran all along, the restarted ones since.
    for w in &mut workers {
        w.assert_running("after the run");
    }
    for (name, _, paused) in &final_lags {
        assert!(
            !paused,
            "consumer {name} paused: {:?}",
            rig_projections::status(&pool).await.unwrap()
        );
    }

    println!("checks start at {:.1} s", started.elapsed().as_secs_f64());
    // Each tenant's projector tables equal a fold of its own log.
    for (tenant, log) in logs {
        let mismatches = projection_mismatches(log, &prices).await;
        assert!(
            mismatches.is_empty(),
            "{tenant}: token_usage / daily_cost differ from the fold of its log ({} rows):\n{}",
            mismatches.len(),
            mismatches.iter().take(20).cloned().collect::<Vec<_>>().join("\n")
        );
    }
    let acme_events: i64 = sqlx::query_scalar("SELECT count(*) FROM events")
        .fetch_one(&acme)
        .await
        .unwrap();
    assert!(acme_events > 100, "acme's rig appended only {acme_events} events");

    // Every acknowledged event is in the log; nothing a refused request carried is.
    let stored: HashSet<Uuid> = sqlx::query_scalar("SELECT event_id FROM events")
        .fetch_all(&pool)
        .await
        .unwrap()
        .into_iter()
        .collect();
    let acked: Vec<Uuid> = reports.iter().flat_map(|r| r.acked.iter().copied()).collect();
    let missing: Vec<&Uuid> = acked.iter().filter(|id| !stored.contains(id)).collect();
    assert!(
        missing.is_empty(),
        "{} acknowledged events are not in the log, e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(5)]
    );
    let written_bad: Vec<&Uuid> = bad.ids.iter().filter(|id| stored.contains(id)).collect();
    assert!(written_bad.is_empty(), "refused requests wrote events: {written_bad:?}");
    let unexpected: Vec<&String> = reports.iter().flat_map(|r| &r.unexpected).collect();
    assert!(
        unexpected.is_empty(),
        "valid appends got answers they never should:\n{unexpected:#?}"
    );
    assert!(
        bad.violations.is_empty(),
        "bad requests not refused with a clear 4xx:\n{:#?}",
        bad.violations
    );

    // Discord got every notifiable event of both tenants once, or twice for a message in flight
    // at a kill (event ids are unique across tenants).
    let mut owed: HashSet<String> = HashSet::new();
    for (((_, log), start), webhook) in logs.iter().zip(&notifier_starts).zip(webhook_ids) {
        owed.extend(
            sqlx::query_scalar::<_, Uuid>("SELECT event_id FROM events WHERE position > $1 AND event_type = ANY($2)")
                .bind(start)
                .bind(NOTIFIABLE.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .fetch_all(*log)
                .await
                .unwrap()
                .into_iter()
                .map(|u| format!("{webhook}:{u}")),
        );
    }
    let posts = discord.posts.lock().unwrap().clone();
    let mut per_event: HashMap<&str, Vec<Instant>> = HashMap::new();
    for (id, at) in &posts {
        per_event.entry(id.as_str()).or_default().push(*at);
    }
    let never: Vec<&String> = owed.iter().filter(|id| !per_event.contains_key(id.as_str())).collect();
    assert!(
        never.is_empty(),
        "{} notifiable events never reached Discord, e.g. {:?}",
        never.len(),
        &never[..never.len().min(5)]
    );
    let strangers: Vec<&&str> = per_event.keys().filter(|id| !owed.contains(**id)).collect();
    assert!(
        strangers.is_empty(),
        "Discord got posts for events not owed: {strangers:?}"
    );
    // Each repeat (a post after an earlier one of the same message) needs a disruption between
    // the two, and one disruption explains one repeat: one message is in flight at a time.
    // Matched greedily: repeats by time, each to the unused window that closes first.
    let mut repeats: Vec<(Instant, Instant, &str)> = per_event
        .iter()
        .flat_map(|(id, times)| times.windows(2).map(move |w| (w[0], w[1], *id)))
        .collect();
    repeats.sort_by_key(|r| r.1);
    // Each tenant has a sender of its own, with its own message in flight: a disruption explains
    // one repeat per webhook.
    let mut used: HashSet<(usize, &str)> = HashSet::new();
    let mut unexplained: Vec<String> = Vec::new();
    let at = |t: Instant| format!("{:.3} s", t.saturating_duration_since(chaos_start).as_secs_f64());
    for (before, after, id) in &repeats {
        let webhook = id.split(':').next().unwrap_or("");
        let found = (0..notifier_disruptions.len())
            .filter(|&k| {
                !used.contains(&(k, webhook))
                    && notifier_disruptions[k].0 < *after
                    && *before < notifier_disruptions[k].1
            })
            .min_by_key(|&k| notifier_disruptions[k].1);
        match found {
            Some(k) => {
                used.insert((k, webhook));
            }
            None => {
                let n = &workers[NOTIFIER];
                let current = n.proc.as_ref().unwrap().log_text();
                let lines: Vec<&str> = n
                    .old_logs
                    .iter()
                    .chain([&current])
                    .flat_map(|l| l.lines())
                    .filter(|l| l.contains(id.rsplit(':').next().unwrap_or(id)))
                    .collect();
                unexplained.push(format!(
                    "{id} posted at {} and again at {}; the notifier's logs about it:\n{}",
                    at(*before),
                    at(*after),
                    lines.join("\n")
                ));
            }
        }
    }
    assert!(
        unexplained.is_empty(),
        "messages posted again with no notifier kill or Postgres restart of their own in between:\n{}\n\
         (kill-to-restart and Postgres windows: {})",
        unexplained.join("\n"),
        notifier_disruptions
            .iter()
            .map(|(a, b)| format!("{}..{}", at(*a), at(*b)))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let mut copies: BTreeMap<usize, usize> = BTreeMap::new();
    for times in per_event.values() {
        *copies.entry(times.len()).or_default() += 1;
    }

    // No incarnation panicked (killed ones were checked at their kill).
    let mut panics: Vec<String> = workers.iter().flat_map(|w| w.panics.clone()).collect();
    for w in &workers {
        panics.extend(panic_lines(&w.proc.as_ref().unwrap().log_text()));
    }
    for sim_log in &sim_logs {
        panics.extend(panic_lines(sim_log));
    }
    assert!(panics.is_empty(), "panics in the logs:\n{}", panics.join("\n"));
    let mut foreign: Vec<String> = workers.iter().flat_map(|w| w.foreign_signals.clone()).collect();
    for w in &workers {
        foreign.extend(signal_lines(&w.proc.as_ref().unwrap().log_text()));
    }
    assert!(
        foreign.is_empty(),
        "workers got a shutdown signal the test did not send (another process on this machine signalling a \
         reused pid?):\n{}",
        foreign.join("\n")
    );

    // Figures.
    let total_events: i64 = sqlx::query_scalar("SELECT count(*) FROM events")
        .fetch_one(&pool)
        .await
        .unwrap();
    let by_source: Vec<(String, i64)> = sqlx::query_as(
        "SELECT CASE WHEN stream_id LIKE 'demo/%' OR stream_id LIKE 'agent:dev-%' THEN 'simulator' \
                     WHEN stream_id LIKE 'fault/%' OR stream_id LIKE 'agent:fault-%' THEN 'test writers' \
                     ELSE 'other' END, count(*) FROM events GROUP BY 1 ORDER BY 1",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    let stuck: i64 = sqlx::query_scalar("SELECT count(*) FROM events WHERE event_type = 'AGENT_STUCK'")
        .fetch_one(&pool)
        .await
        .unwrap();
    let sum = |f: fn(&WriterReport) -> u64| reports.iter().map(f).sum::<u64>();
    let mut statuses: BTreeMap<u16, u64> = BTreeMap::new();
    for r in &reports {
        for (s, n) in &r.statuses {
            *statuses.entry(*s).or_default() += n;
        }
    }
    println!("---- fault test figures (seed {seed}, {secs} s of chaos) ----");
    println!("events in the log: {total_events} {by_source:?}; AGENT_STUCK appended by stale-heartbeat: {stuck}");
    println!(
        "test writers: {} events acknowledged, {} requests, {} retries, {} network errors, {} given up, non-2xx {statuses:?}",
        acked.len(),
        sum(|r| r.requests),
        sum(|r| r.retries),
        sum(|r| r.network_errors),
        sum(|r| r.gave_up)
    );
    for (sim_log, tenant) in sim_logs.iter().zip(["default", "acme"]) {
        let sim_summary: Vec<&str> = sim_log
            .lines()
            .rev()
            .take(12)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        println!("simulator summary ({tenant}):\n  {}", sim_summary.join("\n  "));
    }
    let kills: Vec<String> = workers
        .iter()
        .filter(|w| w.kills > 0)
        .map(|w| format!("{} ×{}", w.binary, w.kills))
        .collect();
    println!("SIGKILLs (each followed by a restart): {}", kills.join(", "));
    println!(
        "Postgres restarts: {pg_restarts} ({:.2} s for pg_ctl restart)",
        pg_downtime.as_secs_f64()
    );
    let bad_total: u64 = bad.by_kind.values().flat_map(|m| m.values()).sum();
    println!("bad requests refused: {bad_total} (status 0 = ingest B away)");
    for (kind, m) in &bad.by_kind {
        println!("  {kind:<18} {m:?}");
    }
    println!(
        "Discord: {} posts for {} owed events; events by number of posts {copies:?}; {} repeats, each after its \
         own notifier kill or Postgres restart ({} of those)",
        posts.len(),
        owed.len(),
        repeats.len(),
        notifier_disruptions.len()
    );
    println!(
        "caught up {:.2} s after the feeding stopped; final lags {final_lags:?}",
        catch_up.as_secs_f64()
    );

    // A clean stop is the last proof of health.
    let stopping = Instant::now();
    for w in &mut workers {
        let p = w.proc.as_mut().unwrap();
        let t = Instant::now();
        let status = p.terminate(Duration::from_secs(20)).unwrap();
        println!("{} stopped on SIGTERM in {:.2} s", w.binary, t.elapsed().as_secs_f64());
        assert!(
            status.success(),
            "{} did not stop cleanly on SIGTERM ({status}); log:\n{}",
            w.binary,
            tail(&p.log_text(), 40)
        );
    }
    println!(
        "all stopped in {:.1} s; total {:.1} s",
        stopping.elapsed().as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
}
