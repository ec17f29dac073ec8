//! `rigctl simulate`: a realistic rig fed through ingest's HTTP API, for demos and soak runs.
//!
//! A planner approves issues in a few `demo/*` repositories; N agents race to claim them
//! (several agents go for the same issue; the losers get 409 `already_assigned` and pick
//! another), then work each one through the lifecycle: WORK_STARTED, heartbeats (on the agent's
//! own stream naming the issue, and on the issue stream), branch, PR, CI (failing sometimes,
//! then fixed), review (disputed sometimes), the odd human gate or escalation, merge, done, and
//! a TOKEN_USAGE after every model call. `--silent-agents` of them go quiet once, mid-work, so
//! rig-stale-heartbeat catches them; when such an agent comes back and finds its issue taken
//! away, it moves on.
//!
//! What it promises: every event carries a client-generated id, and a request that fails on the
//! network or with a 5xx is retried with the same ids, so nothing is written twice. The holder
//! writes its issue with `expected_version`, so it notices at once when someone else (the
//! stale-heartbeat worker) wrote to it. A 409 or 422 is reported and handled, never a panic. The
//! pace is `--rate` events per second over all agents. The same `--seed` makes the same choices
//! (the interleaving still depends on timing). It ends when every issue is done, at
//! `--duration`, or on Ctrl-C, and prints a summary.

use anyhow::{bail, Context};
use chrono::{SecondsFormat, Utc};
use clap::Args;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use reqwest::header::{HeaderValue, AUTHORIZATION};
use reqwest::StatusCode;
use rig_events as ev;
use rig_events::money::{PriceTable, Tokens};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

pub const REPOS: &[&str] = &["demo/widgets", "demo/gadgets", "demo/api"];

/// Models with a price row in the demo price table (see `up --demo`), and one without, so the
/// cost views show what an unpriced model looks like.
const MODELS: &[(&str, u32)] = &[
    ("claude-sonnet-4-5", 55),
    ("claude-haiku-4-5", 20),
    ("claude-opus-4-1", 15),
    (UNPRICED_MODEL, 10),
];
pub const UNPRICED_MODEL: &str = "local-qwen3-coder";

const AGENT_NAMES: &[&str] = &[
    "ada", "babbage", "curie", "dijkstra", "euler", "fermat", "gauss", "hopper", "ito", "jacobi", "knuth", "lamport",
];
const REVIEWERS: &[&str] = &["reviewer-lovelace", "reviewer-turing", "reviewer-noether"];

/// A request that keeps failing on the network or with 5xx for this long stops the run.
const GIVE_UP_AFTER: Duration = Duration::from_secs(120);
const PROGRESS_EVERY: Duration = Duration::from_secs(3);

#[derive(Debug, Args)]
pub struct SimulateArgs {
    /// Ingest's base URL (default: http://{ingest.listen} from the configuration).
    #[arg(long)]
    pub url: Option<String>,
    /// Bearer token (default: the first of ingest.auth_tokens); a tenant's token for `--url …/t/<tenant>`.
    #[arg(long, env = "RIG_SIMULATE_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Number of agents.
    #[arg(long, default_value_t = 6)]
    pub agents: usize,
    /// Number of issues, spread over demo/widgets, demo/gadgets and demo/api.
    #[arg(long, default_value_t = 30)]
    pub issues: usize,
    /// Agents that go silent once, mid-work, for rig-stale-heartbeat to catch.
    #[arg(long, default_value_t = 1)]
    pub silent_agents: usize,
    /// How long a silent agent stays quiet (default: the stale threshold + two check intervals + 3 s).
    #[arg(long, value_parser = crate::up::humantime_parse)]
    pub silence: Option<Duration>,
    /// Events per second, over all agents.
    #[arg(long, default_value_t = 20.0)]
    pub rate: f64,
    /// Stop after this long (e.g. "2m"); default: when every issue is done, or Ctrl-C.
    #[arg(long, value_parser = crate::up::humantime_parse)]
    pub duration: Option<Duration>,
    /// Seed of the random choices, to replay a run (printed at start).
    #[arg(long)]
    pub seed: Option<u64>,
}

/// One issue of the run.
#[derive(Debug, Clone)]
struct IssueSpec {
    stream_id: String,
    repo: &'static str,
    number: i64,
    title: String,
    priority: &'static str,
}

/// The part of ingest's issue state the simulator reads.
#[derive(Debug, Clone, Deserialize)]
struct IssueView {
    stream_id: String,
    status: Option<String>,
    agent_id: Option<String>,
    version: i32,
    stuck_count: i32,
    issue_number: i64,
}

#[derive(Default)]
struct Stats {
    events: AtomicU64,
    requests: AtomicU64,
    retries: AtomicU64,
    claims_won: AtomicU64,
    claims_lost: AtomicU64,
    conflicts: AtomicU64,
    rejected: AtomicU64,
    ci_failures: AtomicU64,
    disputes: AtomicU64,
    human_gates: AtomicU64,
    escalations: AtomicU64,
    silences: AtomicU64,
    taken_away: AtomicU64,
    usage_events: AtomicU64,
    input_tokens: AtomicU64,
    output_tokens: AtomicU64,
}

fn inc(a: &AtomicU64) {
    a.fetch_add(1, Ordering::Relaxed);
}

fn get(a: &AtomicU64) -> u64 {
    a.load(Ordering::Relaxed)
}

/// Spaces requests so that all agents together send `rate` events per second. No catch-up
/// burst after idle time: a slot in the past is moved to now.
struct Pacer {
    per_event: Duration,
    next: Mutex<Instant>,
}

impl Pacer {
    fn new(rate: f64) -> Self {
        Pacer {
            per_event: Duration::from_secs_f64(1.0 / rate),
            next: Mutex::new(Instant::now()),
        }
    }

    /// Waits for the slot of `n` events; false if stopped meanwhile.
    async fn take(&self, n: usize, stop: &CancellationToken) -> bool {
        let at = {
            let mut next = self.next.lock().unwrap_or_else(|e| e.into_inner());
            let slot = (*next).max(Instant::now());
            *next = slot + self.per_event * n as u32;
            slot
        };
        tokio::select! {
            _ = tokio::time::sleep_until(at.into()) => true,
            _ = stop.cancelled() => false,
        }
    }
}

/// What an append request came to.
#[derive(Debug)]
enum Append {
    Ok { last_version: i32 },
    Conflict { code: String, body: Value },
    Rejected { status: StatusCode, body: Value },
    Stopped,
}

struct Sim {
    http: reqwest::Client,
    base: String,
    auth: Option<HeaderValue>,
    pacer: Pacer,
    /// Cancelled when the run ends (all done, duration, Ctrl-C or a fatal error).
    stop: CancellationToken,
    stats: Stats,
    issues: Vec<IssueSpec>,
    index: HashMap<String, usize>,
    done: Vec<AtomicBool>,
    done_count: AtomicUsize,
    approved: AtomicUsize,
    /// Bumped at every approval: idle agents all wake at once and race for the new issue, as
    /// agents notified by the same label event do.
    approvals: tokio::sync::watch::Sender<u64>,
    claimed_once: Vec<AtomicBool>,
    claimed_count: AtomicUsize,
    agents: usize,
    prices: PriceTable,
    silence: Duration,
    pr_counter: AtomicU64,
    fatal: Mutex<Option<String>>,
    started: Instant,
}

fn say(msg: impl std::fmt::Display) {
    line(format_args!("simulate: {msg}"));
}

/// One line on stderr; a closed stderr (`… 2>&1 | head`) is no reason to panic.
fn line(args: std::fmt::Arguments<'_>) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "{args}");
}

/// `owner/repo#n` → `owner%2Frepo%23n` for a URL path.
fn enc(stream_id: &str) -> String {
    stream_id
        .replace('%', "%25")
        .replace('/', "%2F")
        .replace('#', "%23")
        .replace(':', "%3A")
}

/// `http://{listen}`, with a wildcard address replaced by loopback (one cannot connect to 0.0.0.0).
pub fn default_url(listen: SocketAddr) -> String {
    let ip = match listen.ip() {
        IpAddr::V4(v4) if v4.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(v6) if v6.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    format!("http://{}", SocketAddr::new(ip, listen.port()))
}

impl Sim {
    fn fail(&self, msg: String) {
        let mut f = self.fatal.lock().unwrap_or_else(|e| e.into_inner());
        if f.is_none() {
            say(format!("error: {msg}"));
            *f = Some(msg);
        }
        self.stop.cancel();
    }

    fn envelope(actor: &str, correlation: &str, kind: &str, data: Value) -> Value {
        json!({
            "id": uuid::Uuid::new_v4(),
            "type": kind,
            "data": data,
            "metadata": {"source": "rigctl-simulate", "actor": actor, "correlation_id": correlation},
            "occurred_at": Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true),
        })
    }

    /// Appends `events` (type, data) to `stream`, paced, with ids generated once and reused by
    /// every retry of this call.
    async fn append(&self, actor: &str, stream: &str, expected: Option<i32>, events: &[(&str, Value)]) -> Append {
        if !self.pacer.take(events.len(), &self.stop).await {
            return Append::Stopped;
        }
        let correlation = stream.to_owned();
        let list: Vec<Value> = events
            .iter()
            .map(|(t, d)| Self::envelope(actor, &correlation, t, d.clone()))
            .collect();
        let mut body = json!({"stream_id": stream, "events": list});
        if let Some(v) = expected {
            body["expected_version"] = json!(v);
        }
        let out = self.post(&body).await;
        if let Append::Ok { .. } = out {
            self.stats.events.fetch_add(events.len() as u64, Ordering::Relaxed);
            for (t, d) in events {
                if *t == ev::TOKEN_USAGE {
                    inc(&self.stats.usage_events);
                    let n = |k: &str| d.get(k).and_then(Value::as_u64).unwrap_or(0);
                    self.stats.input_tokens.fetch_add(n("input_tokens"), Ordering::Relaxed);
                    self.stats
                        .output_tokens
                        .fetch_add(n("output_tokens"), Ordering::Relaxed);
                }
            }
        }
        out
    }

    /// POST /v1/events with retries on network errors and 5xx (the same body, so the same ids).
    async fn post(&self, body: &Value) -> Append {
        let url = format!("{}/v1/events", self.base);
        let first_failure = Instant::now();
        let mut delay = Duration::from_millis(100);
        let mut attempt = 0u32;
        loop {
            let mut req = self.http.post(&url).json(body);
            if let Some(a) = &self.auth {
                req = req.header(AUTHORIZATION, a.clone());
            }
            inc(&self.stats.requests);
            let problem = match req.send().await {
                Ok(resp) => {
                    let status = resp.status();
                    let json: Value = resp.json().await.unwrap_or(Value::Null);
                    match status {
                        StatusCode::OK | StatusCode::CREATED => {
                            let last_version = json.get("last_version").and_then(Value::as_i64).unwrap_or(0) as i32;
                            return Append::Ok { last_version };
                        }
                        StatusCode::CONFLICT => {
                            inc(&self.stats.conflicts);
                            let code = json
                                .get("error")
                                .and_then(Value::as_str)
                                .unwrap_or("conflict")
                                .to_owned();
                            return Append::Conflict { code, body: json };
                        }
                        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
                            self.fail(format!(
                                "ingest refused the token ({status}); pass --token or set RIG_SIMULATE_TOKEN to one of ingest.auth_tokens"
                            ));
                            return Append::Stopped;
                        }
                        s if s.is_server_error() || s == StatusCode::TOO_MANY_REQUESTS => {
                            format!("{s} {}", json.get("error").and_then(Value::as_str).unwrap_or(""))
                        }
                        s => {
                            inc(&self.stats.rejected);
                            return Append::Rejected { status: s, body: json };
                        }
                    }
                }
                Err(e) => format!("network error: {e}"),
            };
            if first_failure.elapsed() > GIVE_UP_AFTER {
                self.fail(format!(
                    "ingest at {} keeps failing ({problem}) for {GIVE_UP_AFTER:?}; giving up",
                    self.base
                ));
                return Append::Stopped;
            }
            attempt += 1;
            inc(&self.stats.retries);
            if attempt == 1 || attempt.is_multiple_of(10) {
                say(format!(
                    "append to {} failed ({problem}); retrying with the same event ids",
                    body["stream_id"]
                ));
            }
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = self.stop.cancelled() => return Append::Stopped,
            }
            delay = (delay * 2).min(Duration::from_secs(5));
        }
    }

    async fn get_json(&self, path: &str) -> Option<Value> {
        let resp = self.http.get(format!("{}{path}", self.base)).send().await.ok()?;
        if !resp.status().is_success() {
            return None;
        }
        resp.json().await.ok()
    }

    /// This run's issues as ingest sees them.
    async fn our_issues(&self, status: Option<&str>) -> Option<Vec<IssueView>> {
        let filter = status.map(|s| format!("status={s}&")).unwrap_or_default();
        let mut out = Vec::new();
        let mut offset = 0;
        // Page by page: ingest answers at most 10,000 issues a request.
        loop {
            let v = self
                .get_json(&format!("/v1/issues?{filter}limit=10000&offset={offset}"))
                .await?;
            let list: Vec<IssueView> = serde_json::from_value(v.get("issues")?.clone()).ok()?;
            out.extend(list.into_iter().filter(|i| self.index.contains_key(&i.stream_id)));
            match v.get("next_offset").and_then(Value::as_i64) {
                Some(next) => offset = next,
                None => return Some(out),
            }
        }
    }

    async fn issue(&self, stream: &str) -> Option<IssueView> {
        serde_json::from_value(self.get_json(&format!("/v1/issues/{}", enc(stream))).await?).ok()
    }

    fn mark_done(&self, idx: usize) {
        if !self.done[idx].swap(true, Ordering::SeqCst) {
            self.done_count.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn all_done(&self) -> bool {
        self.done_count.load(Ordering::SeqCst) >= self.issues.len()
    }

    /// A model call's usage: realistic counts, now and then the agent's own `cost_usd`.
    fn usage(&self, rng: &mut StdRng, agent: &str) -> (&'static str, Value) {
        let total: u32 = MODELS.iter().map(|m| m.1).sum();
        let mut pick = rng.random_range(0..total);
        let mut model = MODELS[0].0;
        for (m, w) in MODELS {
            if pick < *w {
                model = m;
                break;
            }
            pick -= w;
        }
        let input: i64 = rng.random_range(2_000..=60_000);
        let output: i64 = rng.random_range(200..=8_000);
        let cache_read: i64 = if rng.random_bool(0.7) {
            rng.random_range(1_000..=80_000)
        } else {
            0
        };
        let cache_write: i64 = if rng.random_bool(0.3) {
            rng.random_range(500..=12_000)
        } else {
            0
        };
        let mut data = json!({
            "agent_id": agent, "model": model, "input_tokens": input, "output_tokens": output,
            "cache_read_tokens": cache_read, "cache_write_tokens": cache_write,
        });
        if rng.random_bool(0.2) {
            let tokens = Tokens {
                input,
                output,
                cache_read,
                cache_write,
            };
            if let Some(cost) = self.prices.cost(model, Utc::now().date_naive(), tokens).ok().flatten() {
                // Agents that report a cost round it, as billing APIs do.
                data["cost_usd"] = json!(cost.round_dp(6).normalize().to_string());
            }
        }
        (ev::TOKEN_USAGE, data)
    }
}

/// One step of an agent's work on an issue.
enum Step {
    /// Events on the issue stream, written with `expected_version`.
    Issue(Vec<(&'static str, Value)>),
    /// Events on the agent's own stream.
    Agent(Vec<(&'static str, Value)>),
    /// The agent goes quiet: no heartbeat, no work.
    Silence,
}

fn heartbeat(agent: &str, status: &str, issue: Option<&str>) -> (&'static str, Value) {
    let mut d = json!({"agent_id": agent, "status": status});
    if let Some(i) = issue {
        d["current_issue"] = json!(i);
    }
    (ev::HEARTBEAT, d)
}

/// The agent's whole run at one issue, decided up front from its random generator.
fn plan(sim: &Sim, rng: &mut StdRng, agent: &str, spec: &IssueSpec, go_silent: bool) -> Vec<Step> {
    let sid = spec.stream_id.as_str();
    let slug: String = spec
        .title
        .split_whitespace()
        .take(3)
        .map(|w| {
            w.to_ascii_lowercase()
                .chars()
                .filter(char::is_ascii_alphanumeric)
                .collect::<String>()
        })
        .collect::<Vec<_>>()
        .join("-");
    let branch = format!("agent/{}-{slug}", spec.number);
    let pr = 100 + sim.pr_counter.fetch_add(1, Ordering::Relaxed) as i64;
    let reviewer = REVIEWERS[rng.random_range(0..REVIEWERS.len())];
    let mut steps = vec![
        // Reading the issue and planning: the board shows it `assigned` meanwhile.
        Step::Agent(vec![heartbeat(agent, "reading the issue", Some(sid))]),
        Step::Issue(vec![sim.usage(rng, agent)]),
        Step::Issue(vec![(ev::WORK_STARTED, json!({"agent_id": agent}))]),
        Step::Issue(vec![sim.usage(rng, agent)]),
        Step::Issue(vec![(ev::BRANCH_CREATED, json!({"branch": branch, "agent_id": agent}))]),
    ];
    if go_silent {
        steps.push(Step::Silence);
    }
    for k in 0..rng.random_range(2..=4) {
        steps.push(Step::Issue(vec![sim.usage(rng, agent)]));
        if k % 2 == 0 {
            steps.push(Step::Agent(vec![heartbeat(agent, "coding", Some(sid))]));
        } else {
            steps.push(Step::Issue(vec![heartbeat(agent, "coding", None)]));
        }
    }
    steps.push(Step::Issue(vec![
        sim.usage(rng, agent),
        (
            ev::PR_CREATED,
            json!({"pr_number": pr, "pr_url": format!("https://github.com/{}/pull/{pr}", spec.repo),
                   "branch": branch, "agent_id": agent}),
        ),
    ]));
    let run_id = |rng: &mut StdRng| rng.random_range(10_000_000_000u64..20_000_000_000);
    let mut failures = 0u32;
    while failures < 2 && rng.random_bool(if failures == 0 { 0.3 } else { 0.25 }) {
        failures += 1;
        let checks = [
            ["test (ubuntu-latest)"].as_slice(),
            &["clippy"],
            &["test (ubuntu-latest)", "fmt"],
        ];
        let failed = checks[rng.random_range(0..checks.len())];
        steps.push(Step::Issue(vec![(
            ev::CI_FAILED,
            json!({"pr_number": pr, "run_id": run_id(rng), "failed_checks": failed}),
        )]));
        steps.push(Step::Agent(vec![heartbeat(agent, "fixing CI", Some(sid))]));
        steps.push(Step::Issue(vec![sim.usage(rng, agent)]));
    }
    if failures == 2 && rng.random_bool(0.5) {
        steps.push(Step::Issue(vec![(
            ev::ESCALATED,
            json!({"reason": "CI failed twice on the same PR", "attempts": 2}),
        )]));
    }
    steps.push(Step::Issue(vec![(
        ev::CI_PASSED,
        json!({"pr_number": pr, "run_id": run_id(rng)}),
    )]));
    steps.push(Step::Issue(vec![(
        ev::REVIEW_ASSIGNED,
        json!({"reviewer": reviewer, "pr_number": pr}),
    )]));
    steps.push(Step::Issue(vec![sim.usage(rng, reviewer)]));
    let mut attempt = 0u32;
    while attempt < 2 && rng.random_bool(0.3) {
        attempt += 1;
        steps.push(Step::Issue(vec![(
            ev::REVIEW_DISPUTED,
            json!({"reviewer": reviewer, "pr_number": pr, "attempt": attempt}),
        )]));
        steps.push(Step::Agent(vec![heartbeat(agent, "addressing review", Some(sid))]));
        steps.push(Step::Issue(vec![sim.usage(rng, agent)]));
        steps.push(Step::Issue(vec![(
            ev::CI_PASSED,
            json!({"pr_number": pr, "run_id": run_id(rng)}),
        )]));
        steps.push(Step::Issue(vec![sim.usage(rng, reviewer)]));
    }
    if rng.random_bool(0.12) {
        let reasons = [
            "the PR changes the deploy pipeline",
            "the PR touches authentication code",
            "the migration drops a column",
        ];
        let reason = reasons[rng.random_range(0..reasons.len())];
        steps.push(Step::Issue(vec![(
            ev::HUMAN_GATE_TRIGGERED,
            json!({"reason": reason, "pr_number": pr}),
        )]));
    }
    let sha: String = (0..40)
        .map(|_| char::from(b"0123456789abcdef"[rng.random_range(0..16)]))
        .collect();
    steps.push(Step::Issue(vec![(
        ev::REVIEW_PASSED,
        json!({"reviewer": reviewer, "pr_number": pr}),
    )]));
    steps.push(Step::Issue(vec![(
        ev::MERGED,
        json!({"pr_number": pr, "merge_sha": sha}),
    )]));
    // duration_minutes is filled in when the event is sent.
    steps.push(Step::Issue(vec![(ev::ISSUE_DONE, json!({"duration_minutes": 0}))]));
    steps.push(Step::Agent(vec![heartbeat(agent, "idle", None)]));
    steps
}

/// An approved issue to go for: one of the oldest few, so agents often collide on the same one.
async fn pick(sim: &Sim, rng: &mut StdRng) -> Option<(usize, i32)> {
    let mut approved = sim.our_issues(Some("approved")).await?;
    approved.retain(|i| {
        sim.index
            .get(&i.stream_id)
            .is_some_and(|&x| !sim.done[x].load(Ordering::SeqCst))
    });
    if approved.is_empty() {
        return None;
    }
    // Oldest approval first: the planner approves in index order.
    approved.sort_by_key(|i| sim.index[&i.stream_id]);
    let i = &approved[rng.random_range(0..approved.len().min(3))];
    Some((sim.index[&i.stream_id], i.stuck_count))
}

async fn agent_loop(sim: Arc<Sim>, agent: String, mut rng: StdRng, mut will_go_silent: bool) {
    let mut last_idle_beat: Option<Instant> = None;
    let agent_stream = format!("agent:{agent}");
    let mut approvals = sim.approvals.subscribe();
    while !sim.stop.is_cancelled() {
        let Some((idx, stuck_count)) = pick(&sim, &mut rng).await else {
            if last_idle_beat.is_none_or(|t| t.elapsed() > Duration::from_secs(5)) {
                last_idle_beat = Some(Instant::now());
                sim.append(&agent, &agent_stream, None, &[heartbeat(&agent, "idle", None)])
                    .await;
            }
            // Requeued issues come without an approval: look again now and then anyway.
            tokio::select! {
                _ = approvals.changed() => {}
                _ = tokio::time::sleep(Duration::from_millis(750)) => {}
                _ = sim.stop.cancelled() => return,
            }
            continue;
        };
        let spec = &sim.issues[idx];
        let claim = (
            ev::ISSUE_ASSIGNED,
            json!({"agent_id": agent, "attempt": stuck_count + 1}),
        );
        // No expected_version: a claim is decided by who holds the issue, so racing agents get
        // `already_assigned`, exactly one winning.
        let version = match sim.append(&agent, &spec.stream_id, None, &[claim]).await {
            Append::Ok { last_version } => last_version,
            Append::Conflict { code, body } if code == "already_assigned" => {
                inc(&sim.stats.claims_lost);
                let holder = body.get("agent_id").and_then(Value::as_str).unwrap_or("another agent");
                say(format!(
                    "{agent} lost the race for {} to {holder}; picking another",
                    spec.stream_id
                ));
                continue;
            }
            Append::Conflict { code, .. } => {
                say(format!(
                    "{agent} could not claim {}: 409 {code}; picking another",
                    spec.stream_id
                ));
                continue;
            }
            Append::Rejected { status, body } => {
                say(format!("{agent} could not claim {}: {status} {body}", spec.stream_id));
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
            Append::Stopped => return,
        };
        inc(&sim.stats.claims_won);
        if !sim.claimed_once[idx].swap(true, Ordering::SeqCst) {
            sim.claimed_count.fetch_add(1, Ordering::SeqCst);
        }
        let go_silent = std::mem::take(&mut will_go_silent);
        work(&sim, &agent, &mut rng, idx, version, go_silent).await;
    }
}

/// Works one claimed issue to the end, or until it is taken away.
async fn work(sim: &Sim, agent: &str, rng: &mut StdRng, idx: usize, mut version: i32, go_silent: bool) {
    let spec = &sim.issues[idx];
    let sid = spec.stream_id.as_str();
    let agent_stream = format!("agent:{agent}");
    let claimed_at = Instant::now();
    let minutes = |at: Instant| (at.elapsed().as_secs_f64() / 60.0 * 100.0).round() / 100.0;
    let steps = plan(sim, rng, agent, spec, go_silent);
    for step in steps {
        match step {
            Step::Silence => {
                inc(&sim.stats.silences);
                say(format!(
                    "{agent} goes silent on {sid} for {:?}: no heartbeat, no work (rig-stale-heartbeat should catch it)",
                    sim.silence
                ));
                tokio::select! {
                    _ = tokio::time::sleep(sim.silence) => {}
                    _ = sim.stop.cancelled() => return,
                }
                say(format!("{agent} is back and carries on with {sid}"));
            }
            Step::Agent(events) => match sim.append(agent, &agent_stream, None, &events).await {
                Append::Stopped => return,
                Append::Ok { .. } => {}
                other => say(format!("{agent}: heartbeat refused: {other:?}")),
            },
            Step::Issue(mut events) => {
                for (t, d) in events.iter_mut() {
                    match *t {
                        ev::CI_FAILED => inc(&sim.stats.ci_failures),
                        ev::REVIEW_DISPUTED => inc(&sim.stats.disputes),
                        ev::HUMAN_GATE_TRIGGERED => inc(&sim.stats.human_gates),
                        ev::ESCALATED => inc(&sim.stats.escalations),
                        ev::ISSUE_DONE => d["duration_minutes"] = json!(minutes(claimed_at)),
                        _ => {}
                    }
                }
                loop {
                    match sim.append(agent, sid, Some(version), &events).await {
                        Append::Ok { last_version } => {
                            version = last_version;
                            break;
                        }
                        Append::Stopped => return,
                        Append::Conflict { code, .. } if code == "wrong_expected_version" => {
                            // Someone else wrote to the issue: still ours, or taken away?
                            match sim.issue(sid).await {
                                Some(s)
                                    if s.agent_id.as_deref() == Some(agent)
                                        && s.status.as_deref() != Some("approved") =>
                                {
                                    version = s.version;
                                }
                                Some(s) => {
                                    inc(&sim.stats.taken_away);
                                    let now = match (&s.status, &s.agent_id) {
                                        (Some(st), Some(a)) => format!("now {st}, held by {a}"),
                                        (Some(st), None) => format!("now {st}"),
                                        _ => "state unknown".to_owned(),
                                    };
                                    say(format!(
                                        "{agent}: {sid} was taken away (stuck_count {}, {now}); moving on",
                                        s.stuck_count
                                    ));
                                    return;
                                }
                                None => {
                                    say(format!("{agent}: cannot read {sid} after a conflict; moving on"));
                                    return;
                                }
                            }
                        }
                        other => {
                            // An agent that cannot go on gives the issue back instead of holding it.
                            say(format!(
                                "{agent}: {sid} refused {}: {other:?}; giving the issue back",
                                events[0].0
                            ));
                            let back = (
                                ev::ISSUE_UNASSIGNED,
                                json!({"reason": "agent_gave_up", "agent_id": agent}),
                            );
                            sim.append(agent, sid, Some(version), &[back]).await;
                            return;
                        }
                    }
                }
                if events.iter().any(|(t, _)| *t == ev::ISSUE_DONE) {
                    sim.mark_done(idx);
                }
            }
        }
    }
}

/// Approves issues in order, keeping about one approved-and-unclaimed issue per agent waiting.
async fn planner(sim: Arc<Sim>) {
    for (idx, spec) in sim.issues.iter().enumerate() {
        loop {
            let backlog = sim
                .approved
                .load(Ordering::SeqCst)
                .saturating_sub(sim.claimed_count.load(Ordering::SeqCst));
            if backlog < sim.agents.max(2) {
                break;
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                _ = sim.stop.cancelled() => return,
            }
        }
        let data = json!({"title": spec.title, "priority": spec.priority});
        match sim
            .append("planner", &spec.stream_id, Some(0), &[(ev::ISSUE_APPROVED, data)])
            .await
        {
            Append::Ok { .. } => {
                sim.approved.fetch_add(1, Ordering::SeqCst);
                sim.approvals.send_modify(|n| *n += 1);
            }
            Append::Stopped => return,
            other => {
                // Not ours to finish: leave it out of the run so the run can still end.
                say(format!(
                    "could not approve {}: {other:?}; leaving it out",
                    spec.stream_id
                ));
                sim.mark_done(idx);
            }
        }
    }
}

fn counts(list: &[IssueView]) -> BTreeMap<&'static str, usize> {
    let mut m: BTreeMap<&'static str, usize> = BTreeMap::new();
    for st in ["approved", "assigned", "in_progress", "in_review", "merged", "done"] {
        m.insert(st, list.iter().filter(|i| i.status.as_deref() == Some(st)).count());
    }
    m
}

fn board_line(sim: &Sim, list: &[IssueView]) -> String {
    let c = counts(list);
    let order = ["approved", "assigned", "in_progress", "in_review", "merged", "done"];
    let mut parts: Vec<String> = order.iter().map(|s| format!("{s} {}", c[s])).collect();
    parts.push(format!(
        "not yet approved {}",
        sim.issues.len().saturating_sub(list.len())
    ));
    parts.join(", ")
}

async fn progress(sim: Arc<Sim>) {
    let mut tick = tokio::time::interval(PROGRESS_EVERY);
    tick.tick().await;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = sim.stop.cancelled() => return,
        }
        let elapsed = sim.started.elapsed().as_secs_f64();
        let events = get(&sim.stats.events);
        let board = match sim.our_issues(None).await {
            Some(list) => {
                let stuck: i64 = list.iter().map(|i| i64::from(i.stuck_count)).sum();
                format!("{} · stuck caught {stuck}", board_line(&sim, &list))
            }
            None => "board unavailable".to_owned(),
        };
        say(format!(
            "{elapsed:>5.0}s  events {events} ({:.1}/s)  issues: {board}  ·  claims won {} lost {}  conflicts {}",
            events as f64 / elapsed.max(0.001),
            get(&sim.stats.claims_won),
            get(&sim.stats.claims_lost),
            get(&sim.stats.conflicts),
        ));
    }
}

async fn wait_ready(http: &reqwest::Client, base: &str, shutdown: &CancellationToken) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(r) = http
            .get(format!("{}/readyz", server_of(base)))
            .timeout(Duration::from_secs(2))
            .send()
            .await
        {
            if r.status().is_success() {
                return Ok(());
            }
        }
        if Instant::now() > deadline {
            bail!("ingest at {base} is not ready after 60 s (is rig-ingest running? see --url)");
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(250)) => {}
            _ = shutdown.cancelled() => bail!("interrupted while waiting for ingest"),
        }
    }
}

/// The highest issue number already used in each demo repository, so a second run on the same
/// database opens new issues instead of colliding with old streams.
async fn highest_numbers(http: &reqwest::Client, base: &str) -> anyhow::Result<HashMap<&'static str, i64>> {
    let mut out = HashMap::new();
    for repo in REPOS {
        let mut highest = 0;
        let mut offset = 0;
        loop {
            let v: Value = http
                .get(format!("{base}/v1/issues?repo={repo}&limit=10000&offset={offset}"))
                .send()
                .await
                .and_then(reqwest::Response::error_for_status)
                .with_context(|| format!("list the issues of {repo}"))?
                .json()
                .await?;
            let list: Vec<IssueView> =
                serde_json::from_value(v.get("issues").cloned().unwrap_or(Value::Null)).unwrap_or_default();
            highest = list.iter().map(|i| i.issue_number).fold(highest, i64::max);
            match v.get("next_offset").and_then(Value::as_i64) {
                Some(next) => offset = next,
                None => break,
            }
        }
        out.insert(*repo, highest);
    }
    Ok(out)
}

fn title(rng: &mut StdRng) -> String {
    const VERBS: &[&str] = &[
        "Fix", "Add", "Refactor", "Speed up", "Document", "Harden", "Remove", "Test",
    ];
    const THINGS: &[&str] = &[
        "retry logic in the webhook client",
        "pagination of the issue list",
        "flaky integration test for checkout",
        "rate limiting on the public API",
        "CSV export of invoices",
        "config loading from environment",
        "dark mode toggle in settings",
        "N+1 query on the dashboard",
        "error messages for invalid tokens",
        "timezone handling in reports",
        "dead code in the billing module",
        "graceful shutdown of workers",
    ];
    format!(
        "{} {}",
        VERBS[rng.random_range(0..VERBS.len())],
        THINGS[rng.random_range(0..THINGS.len())]
    )
}

/// `http://host:port/t/acme` → `http://host:port`: the operations endpoints are the server's,
/// not a tenant's.
fn server_of(base: &str) -> &str {
    match base.find("/t/") {
        Some(i) if base[..i].matches('/').count() == 2 => &base[..i],
        _ => base,
    }
}

pub async fn run(args: SimulateArgs) -> anyhow::Result<ExitCode> {
    if args.agents == 0 || args.issues == 0 {
        bail!("--agents and --issues must be at least 1");
    }
    if !(args.rate.is_finite() && args.rate > 0.0) {
        bail!("--rate must be a number of events per second above 0");
    }
    let settings = crate::load_settings()?;
    let base = args.url.clone().unwrap_or_else(|| default_url(settings.ingest.listen));
    let base = base.trim_end_matches('/').to_owned();
    let token: Option<SecretString> = args
        .token
        .clone()
        .map(SecretString::from)
        .or_else(|| settings.ingest.auth_tokens.first().cloned());
    let auth = match &token {
        Some(t) => {
            let mut h = HeaderValue::from_str(&format!("Bearer {}", t.expose_secret()))
                .context("the token has characters a header cannot carry")?;
            h.set_sensitive(true);
            Some(h)
        }
        None => None,
    };
    let seed = args.seed.unwrap_or_else(rand::random);
    let shutdown = rig_ops::shutdown::on_signal();
    // The token goes with every request: a tenant's reads need it as much as its writes.
    let mut headers = reqwest::header::HeaderMap::new();
    if let Some(a) = &auth {
        headers.insert(reqwest::header::AUTHORIZATION, a.clone());
    }
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .default_headers(headers)
        .build()?;
    wait_ready(&http, &base, &shutdown).await?;

    let mut rng = StdRng::seed_from_u64(seed);
    let highest = highest_numbers(&http, &base).await?;
    let issues: Vec<IssueSpec> = (0..args.issues)
        .map(|i| {
            let repo = REPOS[i % REPOS.len()];
            let number = highest[repo] + (i / REPOS.len()) as i64 + 1;
            let priority = ["p1", "p2", "p2", "p3"][rng.random_range(0..4)];
            IssueSpec {
                stream_id: format!("{repo}#{number}"),
                repo,
                number,
                title: title(&mut rng),
                priority,
            }
        })
        .collect();
    let names: Vec<String> = (0..args.agents)
        .map(|i| match AGENT_NAMES.get(i) {
            Some(n) => format!("dev-{n}"),
            None => format!("dev-agent-{}", i + 1),
        })
        .collect();
    let mut order: Vec<usize> = (0..args.agents).collect();
    order.shuffle(&mut rng);
    let silent: Vec<usize> = order.into_iter().take(args.silent_agents.min(args.agents)).collect();
    let st = &settings.stale_heartbeat;
    let silence = args
        .silence
        .unwrap_or(st.threshold + st.check_interval * 2 + Duration::from_secs(3));

    let stop = shutdown.child_token();
    let sim = Arc::new(Sim {
        http,
        base: base.clone(),
        auth,
        pacer: Pacer::new(args.rate),
        stop: stop.clone(),
        stats: Stats::default(),
        index: issues
            .iter()
            .enumerate()
            .map(|(i, s)| (s.stream_id.clone(), i))
            .collect(),
        done: issues.iter().map(|_| AtomicBool::new(false)).collect(),
        claimed_once: issues.iter().map(|_| AtomicBool::new(false)).collect(),
        issues,
        done_count: AtomicUsize::new(0),
        approved: AtomicUsize::new(0),
        approvals: tokio::sync::watch::Sender::new(0),
        claimed_count: AtomicUsize::new(0),
        agents: args.agents,
        prices: PriceTable::new(&settings.prices),
        silence,
        // Past the PR numbers of earlier runs on this database (at most about two per issue).
        pr_counter: AtomicU64::new(2 * highest.values().sum::<i64>().max(0) as u64),
        fatal: Mutex::new(None),
        started: Instant::now(),
    });
    let first = &sim.issues[0].stream_id;
    say(format!(
        "{} agents, {} issues ({first} …) in {}, {} events/s, seed {seed}, ingest {base}",
        args.agents,
        args.issues,
        REPOS.join(", "),
        args.rate
    ));
    if !silent.is_empty() {
        let who: Vec<&str> = silent.iter().map(|&i| names[i].as_str()).collect();
        say(format!(
            "{} will go silent mid-work for {silence:?} (stale-heartbeat threshold {:?}, checked every {:?})",
            who.join(", "),
            st.threshold,
            st.check_interval
        ));
    }
    if settings.prices.is_empty() {
        say("no [[prices]] configured: agents report no cost_usd and usage counts 0 USD (`rigctl up --demo` brings demo prices)");
    }

    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(planner(sim.clone()));
    tasks.spawn(progress(sim.clone()));
    for (i, name) in names.iter().enumerate() {
        let agent_rng = StdRng::seed_from_u64(seed.wrapping_add(1 + i as u64));
        tasks.spawn(agent_loop(sim.clone(), name.clone(), agent_rng, silent.contains(&i)));
    }

    let why = loop {
        if sim.all_done() {
            break format!("all {} issues done", sim.issues.len());
        }
        if let Some(d) = args.duration {
            if sim.started.elapsed() >= d {
                break format!("--duration {d:?} reached");
            }
        }
        if shutdown.is_cancelled() {
            break "interrupted".to_owned();
        }
        if stop.is_cancelled() {
            break "stopped by an error".to_owned();
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
            _ = stop.cancelled() => {}
        }
    };
    stop.cancel();
    let drain = async { while tasks.join_next().await.is_some() {} };
    if tokio::time::timeout(Duration::from_secs(3), drain).await.is_err() {
        tasks.abort_all();
    }
    summary(&sim, &why).await;
    let fatal = sim.fatal.lock().unwrap_or_else(|e| e.into_inner()).clone();
    match fatal {
        Some(f) => bail!(f),
        None => Ok(ExitCode::SUCCESS),
    }
}

async fn summary(sim: &Sim, why: &str) {
    let s = &sim.stats;
    let elapsed = sim.started.elapsed().as_secs_f64();
    let events = get(&s.events);
    let board = tokio::time::timeout(Duration::from_secs(3), sim.our_issues(None))
        .await
        .ok()
        .flatten();
    let (board_text, stuck) = match &board {
        Some(list) => (
            board_line(sim, list),
            list.iter().map(|i| i64::from(i.stuck_count)).sum::<i64>(),
        ),
        None => ("unavailable".to_owned(), 0),
    };
    let mtok = |n: u64| format!("{:.2}M", n as f64 / 1e6);
    say(format!("finished after {elapsed:.1}s: {why}"));
    let lines = [
        format!(
            "  events        {events} in {} requests ({:.1}/s), {} retried after network errors or 5xx",
            get(&s.requests),
            events as f64 / elapsed.max(0.001),
            get(&s.retries)
        ),
        format!(
            "  claims        won {}, lost {} (409 already_assigned)",
            get(&s.claims_won),
            get(&s.claims_lost)
        ),
        format!(
            "  conflicts     {} (409s in all), {} other refusals",
            get(&s.conflicts),
            get(&s.rejected)
        ),
        format!(
            "  work          {} CI failures, {} review disputes, {} human gates, {} escalations",
            get(&s.ci_failures),
            get(&s.disputes),
            get(&s.human_gates),
            get(&s.escalations)
        ),
        format!(
            "  stuck caught  {stuck} (AGENT_STUCK by rig-stale-heartbeat); {} agent(s) went silent, {} found their issue taken away",
            get(&s.silences),
            get(&s.taken_away)
        ),
        format!(
            "  tokens        {} TOKEN_USAGE events: {} input, {} output",
            get(&s.usage_events),
            mtok(get(&s.input_tokens)),
            mtok(get(&s.output_tokens))
        ),
        format!("  issues        {board_text}"),
    ];
    for l in lines {
        line(format_args!("{l}"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcard_listen_addresses_become_loopback() {
        assert_eq!(server_of("http://127.0.0.1:8080/t/acme"), "http://127.0.0.1:8080");
        assert_eq!(server_of("http://127.0.0.1:8080"), "http://127.0.0.1:8080");
        assert_eq!(default_url("0.0.0.0:8080".parse().unwrap()), "http://127.0.0.1:8080");
        assert_eq!(default_url("[::]:8080".parse().unwrap()), "http://[::1]:8080");
        assert_eq!(default_url("10.1.2.3:9000".parse().unwrap()), "http://10.1.2.3:9000");
    }

    #[test]
    fn every_planned_event_passes_ingest_validation() {
        let sim = Sim {
            http: reqwest::Client::new(),
            base: String::new(),
            auth: None,
            pacer: Pacer::new(1.0),
            stop: CancellationToken::new(),
            stats: Stats::default(),
            issues: Vec::new(),
            index: HashMap::new(),
            done: Vec::new(),
            done_count: AtomicUsize::new(0),
            approved: AtomicUsize::new(0),
            approvals: tokio::sync::watch::Sender::new(0),
            claimed_once: Vec::new(),
            claimed_count: AtomicUsize::new(0),
            agents: 1,
            prices: PriceTable::default(),
            silence: Duration::ZERO,
            pr_counter: AtomicU64::new(0),
            fatal: Mutex::new(None),
            started: Instant::now(),
        };
        let spec = IssueSpec {
            stream_id: "demo/widgets#3".into(),
            repo: "demo/widgets",
            number: 3,
            title: "Fix retry logic".into(),
            priority: "p2",
        };
        let mut types = std::collections::HashSet::new();
        for seed in 0..200 {
            let mut rng = StdRng::seed_from_u64(seed);
            for step in plan(&sim, &mut rng, "dev-ada", &spec, seed % 2 == 0) {
                if let Step::Issue(events) | Step::Agent(events) = step {
                    for (t, d) in events {
                        ev::validate(t, &d).unwrap_or_else(|e| panic!("{t}: {e}"));
                        types.insert(t);
                    }
                }
            }
        }
        // Over enough seeds every branch of the lifecycle shows up.
        for t in [
            ev::CI_FAILED,
            ev::REVIEW_DISPUTED,
            ev::HUMAN_GATE_TRIGGERED,
            ev::ESCALATED,
            ev::ISSUE_DONE,
        ] {
            assert!(types.contains(t), "{t} never planned");
        }
    }
}
