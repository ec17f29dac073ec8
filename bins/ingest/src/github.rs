//! `POST /v1/github/webhook` (also `/api/webhook/github`, the path rig-conductor used): GitHub's
//! own account of an issue's life, turned into catalog events.
//!
//! What it promises:
//! - With `ingest.github.webhook_secret` set, a delivery is read only when `X-Hub-Signature-256`
//!   is the HMAC-SHA256 of the raw body (compared in constant time); anything else is a 401 and
//!   nothing is stored. Bearer tokens do not apply here: the signature is the authentication.
//! - A delivery is stored at most once. Event ids derive from `X-GitHub-Delivery`, the events are
//!   appended first and the delivery recorded after, so a crash in between is healed by
//!   GitHub's redelivery, which the idempotent append turns into a no-op.
//! - A delivery is known by its body too: the SHA-256 of the raw (signed) body is recorded with
//!   it, and the same body under another delivery id is that same delivery (a replayed request
//!   cannot append again by changing the id header, which the signature does not cover). The
//!   deliveries of one body are handled one at a time, across ingest processes.
//! - What cannot be linked to an issue is counted, logged and not stored; still 202, because
//!   GitHub cannot do anything better with it. Such a delivery stays open to a later redelivery
//!   (the PR it needs may have been reported meanwhile); every other recorded delivery answers
//!   a redelivery with 200 and appends nothing.
//! - Bounded work well inside GitHub's 10 s: one indexed lookup, at most `MAX_LINKS` appends,
//!   all under `DEADLINE`.

use crate::api::{body_bytes, parse_json};
use crate::error::ApiError;
use crate::tenants::{PathTenant, Scoped};
use crate::AppState;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use axum::Json;
use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use regex::Regex;
use rig_events as events;
use rig_events::stream_id::MAX_ISSUE_NUMBER;
use rig_events::StreamId;
use rig_log::writer::{Append, AppendError, AppendOk, NewEvent};
use secrecy::ExposeSecret;
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};
use sqlx::PgConnection;
use std::collections::HashMap;
use std::sync::LazyLock;
use std::time::Duration;
use uuid::Uuid;

pub const EVENT_HEADER: &str = "x-github-event";
pub const DELIVERY_HEADER: &str = "x-github-delivery";
pub const SIGNATURE_HEADER: &str = "x-hub-signature-256";

/// Namespace of the uuid v5 event ids `{delivery}:{index}`; never change it, or redeliveries of
/// old deliveries would get new ids and be stored twice.
const NAMESPACE: Uuid = Uuid::from_u128(0x3f0c_52a4_8e1b_4c6e_9a57_d2b1_64e0_a9c3);
/// GitHub gives up after 10 s; answer (even with a 503) well before.
const DEADLINE: Duration = Duration::from_secs(8);
/// Class of the advisory locks that serialize the deliveries of one body (`"ghub"`).
const BODY_LOCK_CLASS: i32 = 0x6768_7562;
/// Most issues one delivery may land on (a PR closing several issues).
const MAX_LINKS: usize = 10;

/// GitHub's closing keywords followed by `#N` or `owner/repo#N`.
static CLOSING: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(?i)\b(?:close[sd]?|fix(?:e[sd])?|resolve[sd]?)\b:?\s+(?:([a-z0-9][a-z0-9-]*/[a-z0-9._-]+))?#(\d+)\b")
        .expect("the closing-keyword pattern is valid")
});

/// Compiles `ingest.github.branch_issue_pattern` once, at start.
pub fn compile_branch_pattern(pattern: &str) -> anyhow::Result<Regex> {
    Regex::new(pattern).map_err(|e| anyhow::anyhow!("ingest.github.branch_issue_pattern: not a valid regex: {e}"))
}

/// `X-Hub-Signature-256` = `sha256=` + hex HMAC-SHA256 of the raw body, checked in constant time.
pub fn verify_signature(secret: &[u8], body: &[u8], header: Option<&str>) -> Result<(), &'static str> {
    let header = header.ok_or("missing X-Hub-Signature-256 header; set the webhook's secret in GitHub")?;
    let hex_sig = header
        .trim()
        .strip_prefix("sha256=")
        .ok_or("X-Hub-Signature-256 must be `sha256=<hex digest>`")?;
    let sig = hex::decode(hex_sig).map_err(|_| "X-Hub-Signature-256 is not a hex digest")?;
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).map_err(|_| "the webhook secret cannot key an HMAC")?;
    mac.update(body);
    mac.verify_slice(&sig)
        .map_err(|_| "X-Hub-Signature-256 does not match the body: wrong secret, or the body was changed")
}

/// The issue numbers a PR body closes in `repo` (`Closes #12`, `fixes owner/repo#12`, …), in
/// order of mention, without repeats. References to other repositories are not ours to link.
pub fn closing_refs(body: &str, repo: &str) -> Vec<i64> {
    let mut out = Vec::new();
    for c in CLOSING.captures_iter(body) {
        if c.get(1).is_some_and(|r| !r.as_str().eq_ignore_ascii_case(repo)) {
            continue;
        }
        // A number no issue can have ("Closes #99999999999999") is no link, not a bad delivery.
        let n = c.get(2).and_then(|m| m.as_str().parse::<i64>().ok());
        if let Some(n) = n.filter(|n| (1..=MAX_ISSUE_NUMBER).contains(n)) {
            if !out.contains(&n) {
                out.push(n);
            }
        }
        if out.len() == MAX_LINKS {
            break;
        }
    }
    out
}

/// The issue number a branch name carries, by `ingest.github.branch_issue_pattern` (group 1).
pub fn branch_issue(re: &Regex, branch: &str) -> Option<i64> {
    re.captures(branch)?
        .get(1)?
        .as_str()
        .parse::<i64>()
        .ok()
        .filter(|n| (1..=MAX_ISSUE_NUMBER).contains(n))
}

/// What a delivery asks of us, decided from the payload alone.
#[derive(Debug, Clone, PartialEq)]
pub enum Plan {
    /// Not a fact we record (type, action, label or conclusion that does not map).
    Ignore(String),
    /// One event, for whichever issues `target` links to in `repo` (lowercased `owner/repo`).
    Emit { repo: String, target: Target, draft: Draft },
}

/// How a delivery finds its issue.
#[derive(Debug, Clone, PartialEq)]
pub enum Target {
    /// `issues` events name it.
    Issue(i64),
    /// `create`: the branch name.
    Branch(String),
    /// PR events: an earlier PR_CREATED for the PR, else closing keywords, else the branch name.
    Pr {
        number: i64,
        body: String,
        branch: Option<String>,
    },
    /// CI: an earlier PR_CREATED for one of its PRs, else the branch name.
    Ci { prs: Vec<i64>, branch: Option<String> },
}

#[derive(Debug, Clone, PartialEq)]
pub struct Draft {
    pub event_type: &'static str,
    pub data: Map<String, Value>,
    pub occurred_at: Option<DateTime<Utc>>,
}

/// One issue a delivery lands on; CI learns its PR number from the link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Link {
    pub issue: i64,
    pub pr_number: Option<i64>,
}

fn str_at<'a>(p: &'a Value, ptr: &str) -> Option<&'a str> {
    p.pointer(ptr).and_then(Value::as_str).filter(|s| !s.is_empty())
}

fn int_at(p: &Value, ptr: &str) -> Result<i64, String> {
    p.pointer(ptr)
        .and_then(Value::as_i64)
        .filter(|n| *n > 0)
        .ok_or_else(|| format!("the payload lacks a positive integer at {ptr}"))
}

fn time_at(p: &Value, ptr: &str) -> Option<DateTime<Utc>> {
    str_at(p, ptr)
        .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
        .map(|t| t.with_timezone(&Utc))
}

fn put(data: &mut Map<String, Value>, key: &str, v: Option<&str>) {
    if let Some(v) = v {
        data.insert(key.to_owned(), Value::String(v.to_owned()));
    }
}

/// Maps a delivery to the event it means. `Err` is a payload that lacks what its
/// type and action promise.
pub fn plan(event: &str, p: &Value, approve_label: &str) -> Result<Plan, String> {
    let action = str_at(p, "/action");
    let ignore = |why: String| -> Result<Plan, String> { Ok(Plan::Ignore(why)) };
    let emit = |target: Target,
                event_type: &'static str,
                data: Map<String, Value>,
                occurred_at: Option<DateTime<Utc>>|
     -> Result<Plan, String> {
        let full_name = str_at(p, "/repository/full_name").ok_or("the payload lacks repository.full_name")?;
        let repo = rig_events::stream_id::normalize_repo(full_name)
            .map_err(|e| format!("repository.full_name {full_name:?} is not owner/repo: {e}"))?;
        Ok(Plan::Emit {
            repo,
            target,
            draft: Draft {
                event_type,
                data,
                occurred_at,
            },
        })
    };
    let pr_target = |p: &Value| -> Result<Target, String> {
        Ok(Target::Pr {
            number: int_at(p, "/pull_request/number")?,
            body: str_at(p, "/pull_request/body").unwrap_or_default().to_owned(),
            branch: str_at(p, "/pull_request/head/ref").map(str::to_owned),
        })
    };
    let mut data = Map::new();
    match (event, action) {
        ("issues", Some("labeled")) => {
            let label = str_at(p, "/label/name").unwrap_or_default();
            if !label.eq_ignore_ascii_case(approve_label) {
                return ignore(format!("label {label:?} is not the approve label {approve_label:?}"));
            }
            put(&mut data, "title", str_at(p, "/issue/title"));
            emit(
                Target::Issue(int_at(p, "/issue/number")?),
                events::ISSUE_APPROVED,
                data,
                time_at(p, "/issue/updated_at"),
            )
        }
        ("issues", Some("closed")) => emit(
            Target::Issue(int_at(p, "/issue/number")?),
            events::ISSUE_DONE,
            data,
            time_at(p, "/issue/closed_at"),
        ),
        ("create", _) => {
            if str_at(p, "/ref_type") != Some("branch") {
                return ignore(format!(
                    "create of a {} is not mapped",
                    str_at(p, "/ref_type").unwrap_or("ref")
                ));
            }
            let branch = str_at(p, "/ref").ok_or("the payload lacks ref")?;
            put(&mut data, "branch", Some(branch));
            emit(Target::Branch(branch.to_owned()), events::BRANCH_CREATED, data, None)
        }
        ("pull_request", Some("opened")) => {
            let target = pr_target(p)?;
            data.insert("pr_number".into(), json!(int_at(p, "/pull_request/number")?));
            put(&mut data, "pr_url", str_at(p, "/pull_request/html_url"));
            put(&mut data, "branch", str_at(p, "/pull_request/head/ref"));
            emit(target, events::PR_CREATED, data, time_at(p, "/pull_request/created_at"))
        }
        ("pull_request", Some("review_requested")) => {
            let target = pr_target(p)?;
            let reviewer = str_at(p, "/requested_reviewer/login").or_else(|| str_at(p, "/requested_team/slug"));
            put(&mut data, "reviewer", reviewer);
            data.insert("pr_number".into(), json!(int_at(p, "/pull_request/number")?));
            emit(
                target,
                events::REVIEW_ASSIGNED,
                data,
                time_at(p, "/pull_request/updated_at"),
            )
        }
        ("pull_request", Some("closed")) => {
            if p.pointer("/pull_request/merged") != Some(&Value::Bool(true)) {
                return ignore("pull_request closed without merging is not mapped".into());
            }
            let target = pr_target(p)?;
            data.insert("pr_number".into(), json!(int_at(p, "/pull_request/number")?));
            put(&mut data, "merge_sha", str_at(p, "/pull_request/merge_commit_sha"));
            let at = time_at(p, "/pull_request/merged_at").or_else(|| time_at(p, "/pull_request/closed_at"));
            emit(target, events::MERGED, data, at)
        }
        ("pull_request_review", Some("submitted")) => {
            let state = str_at(p, "/review/state").unwrap_or_default();
            let event_type = if state.eq_ignore_ascii_case("approved") {
                events::REVIEW_PASSED
            } else if state.eq_ignore_ascii_case("changes_requested") {
                events::REVIEW_DISPUTED
            } else {
                return ignore(format!("a review in state {state:?} is not mapped"));
            };
            let target = pr_target(p)?;
            put(&mut data, "reviewer", str_at(p, "/review/user/login"));
            data.insert("pr_number".into(), json!(int_at(p, "/pull_request/number")?));
            emit(target, event_type, data, time_at(p, "/review/submitted_at"))
        }
        ("check_suite" | "workflow_run", Some("completed")) => {
            let obj = &p[event];
            let conclusion = obj.get("conclusion").and_then(Value::as_str).unwrap_or("none");
            let event_type = match conclusion {
                "success" => events::CI_PASSED,
                "failure" | "timed_out" => events::CI_FAILED,
                other => return ignore(format!("{event} concluded {other:?}, which is not mapped")),
            };
            if let Some(id) = obj.get("id").filter(|v| v.is_i64() || v.is_u64()) {
                data.insert("run_id".into(), id.clone());
            }
            if event_type == events::CI_FAILED && event == "workflow_run" {
                if let Some(name) = str_at(obj, "/name") {
                    data.insert("failed_checks".into(), json!([name]));
                }
            }
            let mut prs: Vec<i64> = obj
                .get("pull_requests")
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(|pr| pr.get("number")?.as_i64())
                        .filter(|n| *n > 0)
                        .collect()
                })
                .unwrap_or_default();
            let mut seen = Vec::new();
            prs.retain(|n| {
                let new = !seen.contains(n);
                seen.push(*n);
                new
            });
            prs.truncate(MAX_LINKS);
            let branch = str_at(obj, "/head_branch").map(str::to_owned);
            emit(
                Target::Ci { prs, branch },
                event_type,
                data,
                time_at(obj, "/updated_at"),
            )
        }
        (e, Some(a)) => ignore(format!("{e} {a} is not mapped")),
        (e, None) => ignore(format!("{e} is not mapped")),
    }
}

/// The PR numbers whose earlier PR_CREATED must be looked up to link `target`.
pub fn prs_to_look_up(target: &Target) -> Vec<i64> {
    match target {
        Target::Pr { number, .. } => vec![*number],
        Target::Ci { prs, .. } => prs.clone(),
        Target::Issue(_) | Target::Branch(_) => Vec::new(),
    }
}

/// The issues `target` lands on, given `known`: PR number → issues that recorded a PR_CREATED
/// for it in this repository. Empty = cannot be linked.
pub fn links(target: &Target, repo: &str, branch_re: &Regex, known: &HashMap<i64, Vec<i64>>) -> Vec<Link> {
    let plain = |n: i64| Link {
        issue: n,
        pr_number: None,
    };
    let mut out: Vec<Link> = match target {
        Target::Issue(n) => vec![plain(*n)],
        Target::Branch(b) => branch_issue(branch_re, b).map(plain).into_iter().collect(),
        Target::Pr { number, body, branch } => {
            // The issue that already holds this PR wins: a body edited later must not move it.
            let mut issues = known.get(number).cloned().unwrap_or_default();
            if issues.is_empty() {
                issues = closing_refs(body, repo);
            }
            if issues.is_empty() {
                issues.extend(branch.as_deref().and_then(|b| branch_issue(branch_re, b)));
            }
            issues.into_iter().map(plain).collect()
        }
        Target::Ci { prs, branch } => {
            let mut out: Vec<Link> = prs
                .iter()
                .flat_map(|pr| {
                    known.get(pr).into_iter().flatten().map(|n| Link {
                        issue: *n,
                        pr_number: Some(*pr),
                    })
                })
                .collect();
            if out.is_empty() {
                if let Some(n) = branch.as_deref().and_then(|b| branch_issue(branch_re, b)) {
                    out.push(Link {
                        issue: n,
                        pr_number: prs.first().copied(),
                    });
                }
            }
            out
        }
    };
    let mut seen = Vec::new();
    out.retain(|l| {
        let new = !seen.contains(&l.issue);
        seen.push(l.issue);
        new
    });
    out.truncate(MAX_LINKS);
    out
}

/// The event id of the `index`-th event of a delivery: the same on every redelivery.
pub fn event_id(delivery: &str, index: usize) -> Uuid {
    Uuid::new_v5(&NAMESPACE, format!("{delivery}:{index}").as_bytes())
}

/// A bounded metric label for a GitHub event name (the header is not trusted before the
/// signature is checked, and never unbounded).
fn event_label(event: Option<&str>) -> &'static str {
    const KNOWN: &[&str] = &[
        "ping",
        "issues",
        "create",
        "delete",
        "push",
        "pull_request",
        "pull_request_review",
        "pull_request_review_comment",
        "issue_comment",
        "check_suite",
        "check_run",
        "workflow_run",
        "workflow_job",
        "status",
        "star",
        "watch",
    ];
    event
        .and_then(|e| KNOWN.iter().find(|k| **k == e).copied())
        .unwrap_or("other")
}

fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

fn required_header<'a>(
    headers: &'a HeaderMap,
    name: &'static str,
    ok: impl Fn(&str) -> bool,
) -> Result<&'a str, ApiError> {
    let v = header_str(headers, name)
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .ok_or_else(|| ApiError::InvalidRequest(format!("the {name} header is required")))?;
    if !ok(v) {
        return Err(ApiError::InvalidRequest(format!("the {name} header is malformed")));
    }
    Ok(v)
}

/// The payload, as JSON or as GitHub's `application/x-www-form-urlencoded` (`payload=<json>`,
/// the default content type when a webhook is set up in GitHub's UI).
fn parse_payload(headers: &HeaderMap, bytes: &[u8]) -> Result<Value, ApiError> {
    let form = header_str(headers, header::CONTENT_TYPE.as_str()).is_some_and(|c| {
        c.trim()
            .to_ascii_lowercase()
            .starts_with("application/x-www-form-urlencoded")
    });
    let payload = if form {
        let json = form_payload(bytes).ok_or_else(|| {
            ApiError::MalformedJson("a form-encoded delivery must carry a payload=<json> field".into())
        })?;
        parse_json(json.as_bytes())?
    } else {
        parse_json(bytes)?
    };
    if !payload.is_object() {
        return Err(ApiError::MalformedJson("the payload must be a JSON object".into()));
    }
    Ok(payload)
}

/// The `payload` field of a form-encoded delivery, percent-decoded (public for the fuzz targets).
pub fn form_payload(body: &[u8]) -> Option<String> {
    let raw = body
        .split(|b| *b == b'&')
        .find_map(|pair| pair.strip_prefix(b"payload="))?;
    let spaced: Vec<u8> = raw.iter().map(|&b| if b == b'+' { b' ' } else { b }).collect();
    percent_encoding::percent_decode(&spaced)
        .decode_utf8()
        .ok()
        .map(|s| s.into_owned())
}

/// A finished delivery: status, bounded outcome label, JSON body.
struct Answer {
    status: StatusCode,
    outcome: &'static str,
    body: Value,
}

/// `POST /v1/github/webhook` and `POST /api/webhook/github`; on `/t/{slug}/…` for that tenant,
/// else for the tenant the delivery's repository is routed to (`rigctl tenants route`).
pub async fn webhook(
    Scoped(state): Scoped,
    by_path: Option<Extension<PathTenant>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let label = event_label(header_str(&headers, EVENT_HEADER));
    let handled = handle(&state, by_path.is_some(), &headers, body);
    let result = match tokio::time::timeout(DEADLINE, handled).await {
        Ok(r) => r,
        // The append may still commit; the redelivery is then an idempotent no-op.
        Err(_) => Err(ApiError::Append(AppendError::Unavailable(
            "the delivery took too long".into(),
        ))),
    };
    let (outcome, resp) = match result {
        Ok(a) => (a.outcome, (a.status, Json(a.body)).into_response()),
        Err(e) => {
            let outcome = match &e {
                ApiError::BadSignature(why) => {
                    tracing::warn!(event = label, reason = why, "github delivery refused: bad signature");
                    "bad_signature"
                }
                ApiError::Append(_) | ApiError::Database(_) => "error",
                _ => "invalid",
            };
            (outcome, e.into_response())
        }
    };
    metrics::counter!("rig_github_deliveries_total", "event" => label, "outcome" => outcome).increment(1);
    resp
}

/// The tenant an unprefixed delivery goes to: by its repository's full name, its installation,
/// then its owner (`rig_tenants::route`); `None` for `default`. A delivery routed to a tenant
/// that is disabled (or gone) is refused 404 `unknown_tenant` and stored nowhere, once its
/// signature has been checked with that tenant's secret (an unsigned sender learns nothing).
async fn route_delivery(state: &AppState, headers: &HeaderMap, bytes: &[u8]) -> Result<Option<AppState>, ApiError> {
    let catalog = state.tenants.catalog();
    // Without tenants every delivery is default's, as it always was: no lookup.
    if catalog.entries.is_empty() {
        return Ok(None);
    }
    // A payload that does not read names no route; default's checks then refuse it.
    let Ok(payload) = parse_payload(headers, bytes) else {
        return Ok(None);
    };
    let repo = str_at(&payload, "/repository/full_name");
    let installation = payload.pointer("/installation/id").and_then(Value::as_i64);
    let owner = str_at(&payload, "/repository/owner/login").or_else(|| str_at(&payload, "/organization/login"));
    let slug = rig_tenants::route(&state.pool, repo, installation, owner).await?;
    if slug == rig_tenants::DEFAULT {
        return Ok(None);
    }
    match catalog.entries.get(&slug) {
        Some(e) if e.tenant.enabled => Ok(Some(state.tenants.scope(state, e)?)),
        other => {
            let secret = other.and_then(|e| e.settings.webhook_secret.as_ref()).or(state
                .settings
                .ingest
                .github
                .webhook_secret
                .as_ref());
            if let Some(secret) = secret {
                verify_signature(
                    secret.expose_secret().as_bytes(),
                    bytes,
                    header_str(headers, SIGNATURE_HEADER),
                )
                .map_err(ApiError::BadSignature)?;
            }
            Err(ApiError::UnknownTenant)
        }
    }
}

async fn handle(
    state: &AppState,
    by_path: bool,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Answer, ApiError> {
    let bytes = body_bytes(state, body)?;
    let routed = if by_path {
        None
    } else {
        route_delivery(state, headers, &bytes).await?
    };
    let state = routed.as_ref().unwrap_or(state);
    // The tenant's own secret when it has one, else the deployment's.
    let secret = state
        .tenant_settings
        .webhook_secret
        .as_ref()
        .or(state.settings.ingest.github.webhook_secret.as_ref());
    if let Some(secret) = secret {
        verify_signature(
            secret.expose_secret().as_bytes(),
            &bytes,
            header_str(headers, SIGNATURE_HEADER),
        )
        .map_err(ApiError::BadSignature)?;
    }
    let event = required_header(headers, EVENT_HEADER, |v| {
        v.len() <= 64
            && v.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
    })?;
    let delivery = required_header(headers, DELIVERY_HEADER, |v| {
        v.len() <= 128 && v.bytes().all(|b| b.is_ascii_graphic())
    })?;

    // One body at a time: copies sent at once are looked up after each other, so only the first
    // can append. A transaction-scoped advisory lock (released when `serial` ends, however this
    // ends), keyed on the body's hash in a class of its own, apart from the single-key locks of
    // the append and the consumers. The delivery's own reads and its record use that same
    // connection, so the lock holder never waits for the pool behind the copies waiting for it;
    // the record commits as the lock is released.
    let body_sha256: [u8; 32] = Sha256::digest(&bytes).into();
    let mut serial = state.pool.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock($1, $2)")
        .bind(BODY_LOCK_CLASS)
        .bind(i32::from_be_bytes([
            body_sha256[0],
            body_sha256[1],
            body_sha256[2],
            body_sha256[3],
        ]))
        .execute(&mut *serial)
        .await?;
    let answer = handle_delivery(state, &mut serial, headers, &bytes, event, delivery, &body_sha256).await?;
    serial.commit().await?;
    Ok(answer)
}

/// A delivery, once no other with the same body is being handled.
async fn handle_delivery(
    state: &AppState,
    db: &mut PgConnection,
    headers: &HeaderMap,
    bytes: &[u8],
    event: &str,
    delivery: &str,
    body_sha256: &[u8; 32],
) -> Result<Answer, ApiError> {
    let approve_label = state
        .tenant_settings
        .approve_label
        .as_deref()
        .unwrap_or(&state.settings.ingest.github.approve_label);
    // This delivery's record, else the record of the delivery that brought the same body.
    let previous: Option<(String, String)> = sqlx::query_as(
        "SELECT delivery_id, outcome FROM github_deliveries WHERE delivery_id = $1 OR body_sha256 = $2 \
         ORDER BY delivery_id = $1 DESC LIMIT 1",
    )
    .bind(delivery)
    .bind(&body_sha256[..])
    .fetch_optional(&mut *db)
    .await?;
    let (first, previous) = match previous {
        Some((id, outcome)) => (Some(id), Some(outcome)),
        None => (None, None),
    };
    if let Some(first) = first.as_deref().filter(|f| *f != delivery) {
        let outcome = previous.as_deref().unwrap_or_default();
        if outcome != "unlinked" {
            tracing::info!(
                delivery,
                first,
                event,
                "github delivery repeats the body of an earlier one: nothing to do"
            );
            return Ok(Answer {
                status: StatusCode::OK,
                outcome: "redelivery",
                body: json!({"status": "redelivery", "delivery": delivery, "duplicate_of": first, "outcome": outcome}),
            });
        }
    }
    // The same body as an earlier delivery that could not be linked: that delivery again, under
    // its own id (its event ids, its record).
    let delivery = first.as_deref().unwrap_or(delivery);
    // A redelivery is answered 200 and never stores anything twice. One that could
    // not be linked before is looked at again (its PR may be known by now: an operator fixes
    // the link and redelivers), as the same event ids.
    let redelivered = previous.is_some();
    if let Some(outcome) = previous.filter(|o| o != "unlinked") {
        tracing::debug!(delivery, event, "github redelivery: nothing to do");
        return Ok(Answer {
            status: StatusCode::OK,
            outcome: "redelivery",
            body: json!({"status": "redelivery", "delivery": delivery, "outcome": outcome}),
        });
    }
    if event == "ping" {
        record(&mut *db, delivery, body_sha256, event, None, "ping").await?;
        return Ok(Answer {
            status: StatusCode::OK,
            outcome: "ignored",
            body: json!({"status": "pong", "delivery": delivery}),
        });
    }

    let payload = parse_payload(headers, bytes)?;
    let action = str_at(&payload, "/action");
    // The action is recorded with the delivery, whatever it maps to: held to the rules of an id.
    if let Some(a) = action {
        events::check_id("action", a).map_err(|e| ApiError::InvalidRequest(format!("the payload's {e}")))?;
    }
    let answer = |status, outcome, fields: Value| {
        let mut body = json!({"status": outcome, "delivery": delivery, "event": event, "action": action});
        if let (Some(b), Value::Object(f)) = (body.as_object_mut(), fields) {
            b.extend(f);
        }
        Answer { status, outcome, body }
    };
    let (repo, target, draft) = match plan(event, &payload, approve_label).map_err(ApiError::InvalidRequest)? {
        Plan::Ignore(why) => {
            tracing::debug!(delivery, event, action, why, "github delivery ignored");
            record(&mut *db, delivery, body_sha256, event, action, "ignored").await?;
            return Ok(answer(StatusCode::ACCEPTED, "ignored", json!({"detail": why})));
        }
        Plan::Emit { repo, target, draft } => (repo, target, draft),
    };

    let known = issues_of_prs(&mut *db, &repo, &prs_to_look_up(&target)).await?;
    let links = links(&target, &repo, &state.branch_issue_re, &known);
    if links.is_empty() {
        metrics::counter!("rig_github_unlinked_total", "event" => event_label(Some(event))).increment(1);
        tracing::info!(
            delivery,
            event,
            action,
            repo,
            "github delivery not linked to any issue; not stored"
        );
        record(&mut *db, delivery, body_sha256, event, action, "unlinked").await?;
        let detail = unlinked_detail(&repo, &target);
        let status = if redelivered {
            StatusCode::OK
        } else {
            StatusCode::ACCEPTED
        };
        return Ok(answer(status, "unlinked", json!({"detail": detail})));
    }

    let mut metadata =
        json!({"source": "github", "github_delivery": delivery, "github_event": event, "github_action": action});
    if let Some(actor) = str_at(&payload, "/sender/login") {
        metadata["actor"] = json!(actor);
    }
    let mut streams = Vec::with_capacity(links.len());
    let mut written = 0usize;
    for (index, link) in links.iter().enumerate() {
        let stream = StreamId::issue(&repo, link.issue)
            .map_err(|e| ApiError::InvalidRequest(format!("cannot name the issue stream: {e}")))?;
        let mut data = draft.data.clone();
        if let Some(pr) = link.pr_number {
            data.entry("pr_number").or_insert(json!(pr));
        }
        let data = Value::Object(data);
        let event = events::validate_event(draft.event_type, 1, &data, &metadata)
            .map_err(|detail| ApiError::InvalidRequest(format!("the payload maps to an invalid event: {detail}")))?
            .into_owned();
        let append = Append {
            stream: stream.clone(),
            expected_version: None,
            events: vec![NewEvent {
                event_id: event_id(delivery, index),
                id_from_client: true,
                event_type: draft.event_type.to_owned(),
                schema_version: 1,
                data,
                event,
                metadata: metadata.clone(),
                occurred_at: draft.occurred_at,
            }],
        };
        match state.writer.append(append).await {
            Ok(AppendOk::Created(_)) => written += 1,
            Ok(AppendOk::AlreadyStored(_)) => {}
            // The id is ours alone, so it was stored by an earlier attempt of this very
            // delivery (linked differently then): it must not be stored twice.
            Err(AppendError::DuplicateEventId { .. }) => {
                tracing::info!(delivery, %stream, "github delivery's event already stored in another stream");
                continue;
            }
            Err(e) => return Err(e.into()),
        }
        streams.push(stream.to_string());
    }
    record(&mut *db, delivery, body_sha256, event, action, "appended").await?;
    let fields = json!({"type": draft.event_type, "streams": streams, "events": written});
    if written == 0 {
        // Stored by an attempt whose answer was lost before the delivery was recorded.
        return Ok(answer(StatusCode::OK, "redelivery", fields));
    }
    tracing::info!(
        delivery,
        event,
        action,
        ?streams,
        redelivered,
        "github delivery appended"
    );
    let status = if redelivered {
        StatusCode::OK
    } else {
        StatusCode::ACCEPTED
    };
    Ok(answer(status, "appended", fields))
}

/// Why nothing linked, in the terms an operator can act on.
fn unlinked_detail(repo: &str, target: &Target) -> String {
    let pattern = "the branch name does not match ingest.github.branch_issue_pattern";
    match target {
        Target::Issue(_) => format!("no issue of {repo} found"),
        Target::Branch(b) => format!("branch {b:?} names no issue of {repo}: {pattern}"),
        Target::Pr { number, .. } => format!(
            "PR #{number} of {repo} names no issue: no earlier PR_CREATED for it, no closing keyword \
             (`Closes #12`) in its body, and {pattern}"
        ),
        Target::Ci { prs, .. } => {
            format!("the run names no issue of {repo}: none of its PRs {prs:?} has a PR_CREATED, and {pattern}")
        }
    }
}

/// PR number → issues of `repo` whose stream recorded a PR_CREATED for it, any time: from
/// GitHub or from an agent, first attempt or latest.
async fn issues_of_prs(db: &mut PgConnection, repo: &str, prs: &[i64]) -> Result<HashMap<i64, Vec<i64>>, sqlx::Error> {
    let mut known: HashMap<i64, Vec<i64>> = HashMap::new();
    if prs.is_empty() {
        return Ok(known);
    }
    // Every PR_CREATED ever recorded for these numbers, not only an issue's latest PR
    // (migration 0024 indexes exactly this). Issue streams of `repo` are `{repo}#{number}`.
    let numbers: Vec<String> = prs.iter().map(i64::to_string).collect();
    let rows: Vec<(String, String)> = sqlx::query_as(
        "SELECT DISTINCT data ->> 'pr_number', stream_id FROM events \
         WHERE event_type = 'PR_CREATED' AND data ->> 'pr_number' = ANY($2) \
           AND left(stream_id, length($1) + 1) = $1 || '#' \
         ORDER BY 2 LIMIT 100",
    )
    .bind(repo)
    .bind(&numbers)
    .fetch_all(db)
    .await?;
    for (pr, stream) in rows {
        let issue = StreamId::parse(&stream).ok().and_then(|s| s.issue_number());
        if let (Ok(pr), Some(issue)) = (pr.parse::<i64>(), issue) {
            known.entry(pr).or_default().push(issue);
        }
    }
    for issues in known.values_mut() {
        issues.sort_unstable();
    }
    Ok(known)
}

/// Records a taken delivery; an unlinked one may be upgraded by a later redelivery.
async fn record(
    db: &mut PgConnection,
    delivery: &str,
    body_sha256: &[u8; 32],
    event: &str,
    action: Option<&str>,
    outcome: &str,
) -> Result<(), sqlx::Error> {
    // A delivery recorded before bodies were (NULL) gets its body's hash when it comes again.
    sqlx::query(
        "INSERT INTO github_deliveries (delivery_id, github_event, action, outcome, body_sha256) \
         VALUES ($1, $2, $3, $4, $5) \
         ON CONFLICT (delivery_id) DO UPDATE SET outcome = excluded.outcome, received_at = now(), \
         body_sha256 = coalesce(github_deliveries.body_sha256, excluded.body_sha256) \
         WHERE github_deliveries.outcome = 'unlinked'",
    )
    .bind(delivery)
    .bind(event)
    .bind(action)
    .bind(outcome)
    .bind(&body_sha256[..])
    .execute(db)
    .await?;
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn sign(secret: &str, body: &[u8]) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
        mac.update(body);
        format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
    }

    fn default_branch_re() -> Regex {
        compile_branch_pattern(&rig_ops::config::GithubSettings::default().branch_issue_pattern).unwrap()
    }

    #[test]
    fn githubs_own_test_vector_verifies() {
        let secret = b"It's a Secret to Everybody";
        let good = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";
        assert_eq!(sign("It's a Secret to Everybody", b"Hello, World!"), good);
        assert_eq!(verify_signature(secret, b"Hello, World!", Some(good)), Ok(()));
        assert!(verify_signature(secret, b"Hello, World?", Some(good)).is_err());
        assert!(verify_signature(b"another secret", b"Hello, World!", Some(good)).is_err());
    }

    #[test]
    fn missing_or_malformed_signatures_are_refused() {
        let s = b"s";
        assert!(verify_signature(s, b"x", None).is_err());
        assert!(verify_signature(s, b"x", Some("")).is_err());
        assert!(verify_signature(s, b"x", Some("sha1=0123")).is_err());
        assert!(verify_signature(s, b"x", Some("sha256=not-hex")).is_err());
        assert!(
            verify_signature(s, b"x", Some("sha256=abcd")).is_err(),
            "a short digest never matches"
        );
        let good = sign("s", b"x");
        assert_eq!(verify_signature(s, b"x", Some(&good)), Ok(()));
        assert_eq!(verify_signature(s, b"x", Some(&format!(" {good} "))), Ok(()));
    }

    #[test]
    fn closing_keywords_link_only_this_repository() {
        let repo = "acme/widgets";
        assert_eq!(closing_refs("Closes #12", repo), vec![12]);
        assert_eq!(
            closing_refs("this fixes #3 and RESOLVED #4; also closes: #5", repo),
            vec![3, 4, 5]
        );
        assert_eq!(
            closing_refs("fix #7, fixed #8, close #9, resolve #10", repo),
            vec![7, 8, 9, 10]
        );
        assert_eq!(closing_refs("Fixes Acme/Widgets#21", repo), vec![21]);
        assert_eq!(closing_refs("Fixes other/repo#21", repo), Vec::<i64>::new());
        assert_eq!(
            closing_refs("see #12, refs #13, prefixes #14, closesx #15", repo),
            Vec::<i64>::new()
        );
        assert_eq!(closing_refs("Closes #12 and closes #12", repo), vec![12]);
        // No issue has a 13-digit number: such a mention links nothing (and refuses nothing).
        assert_eq!(closing_refs("Closes #9999999999999, fixes #6", repo), vec![6]);
        assert_eq!(closing_refs("Closes #999999999999", repo), vec![999_999_999_999]);
        assert_eq!(closing_refs("Closes #0", repo), Vec::<i64>::new());
        assert_eq!(closing_refs("Closes #12abc", repo), Vec::<i64>::new());
    }

    #[test]
    fn the_default_branch_pattern_finds_issue_numbers() {
        let re = default_branch_re();
        assert_eq!(branch_issue(&re, "issue-42-fix-login"), Some(42));
        assert_eq!(branch_issue(&re, "42-fix-login"), Some(42));
        assert_eq!(branch_issue(&re, "agent/dev-e/issue-7"), Some(7));
        assert_eq!(branch_issue(&re, "feature/88-thing"), Some(88));
        assert_eq!(branch_issue(&re, "master"), None);
        assert_eq!(branch_issue(&re, "changes"), None);
        assert_eq!(branch_issue(&re, "v2-release"), None);
        assert_eq!(branch_issue(&re, "issue-0"), None);
    }

    fn repo_payload(extra: Value) -> Value {
        let mut p = json!({"repository": {"full_name": "Acme/Widgets"}, "sender": {"login": "octocat"}});
        if let (Some(p), Value::Object(e)) = (p.as_object_mut(), extra) {
            p.extend(e);
        }
        p
    }

    fn emitted(plan: Result<Plan, String>) -> (String, Target, Draft) {
        match plan.unwrap() {
            Plan::Emit { repo, target, draft } => (repo, target, draft),
            Plan::Ignore(why) => panic!("ignored: {why}"),
        }
    }

    #[test]
    fn issue_events_map_by_action_and_label() {
        let labeled = repo_payload(json!({"action": "labeled", "label": {"name": "Agent-Ready"},
            "issue": {"number": 12, "title": "Fix it", "updated_at": "2026-04-21T09:00:05Z", "closed_at": null}}));
        let (repo, target, draft) = emitted(plan("issues", &labeled, "agent-ready"));
        assert_eq!(repo, "acme/widgets");
        assert_eq!(target, Target::Issue(12));
        assert_eq!(draft.event_type, events::ISSUE_APPROVED);
        assert_eq!(Value::Object(draft.data), json!({"title": "Fix it"}));
        assert_eq!(draft.occurred_at.unwrap().to_rfc3339(), "2026-04-21T09:00:05+00:00");
        assert!(matches!(plan("issues", &labeled, "ready"), Ok(Plan::Ignore(_))));

        let closed =
            repo_payload(json!({"action": "closed", "issue": {"number": 12, "closed_at": "2026-04-22T10:00:00Z"}}));
        assert_eq!(
            emitted(plan("issues", &closed, "agent-ready")).2.event_type,
            events::ISSUE_DONE
        );
        let assigned = repo_payload(json!({"action": "assigned", "issue": {"number": 12}}));
        assert!(matches!(plan("issues", &assigned, "agent-ready"), Ok(Plan::Ignore(_))));
        let no_number = repo_payload(json!({"action": "closed", "issue": {}}));
        assert!(plan("issues", &no_number, "agent-ready").is_err());
    }

    #[test]
    fn pull_request_reviews_and_ci_map_to_their_events() {
        let pr = json!({"number": 5, "body": "Closes #12", "head": {"ref": "issue-12-x"},
                        "html_url": "https://github.com/acme/widgets/pull/5", "merged": true,
                        "merge_commit_sha": "abc", "merged_at": "2026-04-21T09:00:05Z"});
        let opened = repo_payload(json!({"action": "opened", "pull_request": pr}));
        let (_, target, draft) = emitted(plan("pull_request", &opened, "agent-ready"));
        assert_eq!(draft.event_type, events::PR_CREATED);
        assert_eq!(
            Value::Object(draft.data),
            json!({"pr_number": 5, "pr_url": "https://github.com/acme/widgets/pull/5", "branch": "issue-12-x"})
        );
        assert_eq!(
            target,
            Target::Pr {
                number: 5,
                body: "Closes #12".into(),
                branch: Some("issue-12-x".into())
            }
        );

        let merged = repo_payload(json!({"action": "closed", "pull_request": pr}));
        let (_, _, draft) = emitted(plan("pull_request", &merged, "agent-ready"));
        assert_eq!(
            (draft.event_type, Value::Object(draft.data)),
            (events::MERGED, json!({"pr_number": 5, "merge_sha": "abc"}))
        );
        let mut unmerged = merged.clone();
        unmerged["pull_request"]["merged"] = json!(false);
        assert!(matches!(
            plan("pull_request", &unmerged, "agent-ready"),
            Ok(Plan::Ignore(_))
        ));

        let requested = repo_payload(json!({"action": "review_requested", "pull_request": pr,
                                             "requested_reviewer": {"login": "rev"}}));
        let (_, _, draft) = emitted(plan("pull_request", &requested, "agent-ready"));
        assert_eq!(
            (draft.event_type, Value::Object(draft.data)),
            (events::REVIEW_ASSIGNED, json!({"reviewer": "rev", "pr_number": 5}))
        );

        for (state, expected) in [
            ("APPROVED", Some(events::REVIEW_PASSED)),
            ("changes_requested", Some(events::REVIEW_DISPUTED)),
            ("Changes_Requested", Some(events::REVIEW_DISPUTED)),
            ("commented", None),
            ("dismissed", None),
        ] {
            let review = repo_payload(json!({"action": "submitted", "pull_request": pr,
                                              "review": {"state": state, "user": {"login": "rev"}}}));
            match (plan("pull_request_review", &review, "agent-ready").unwrap(), expected) {
                (Plan::Emit { draft, .. }, Some(t)) => assert_eq!(draft.event_type, t, "{state}"),
                (Plan::Ignore(_), None) => {}
                (other, _) => panic!("{state}: {other:?}"),
            }
        }

        for (event, conclusion, expected) in [
            ("check_suite", "success", Some(events::CI_PASSED)),
            ("check_suite", "failure", Some(events::CI_FAILED)),
            ("workflow_run", "timed_out", Some(events::CI_FAILED)),
            ("workflow_run", "cancelled", None),
            ("workflow_run", "skipped", None),
            ("check_suite", "neutral", None),
        ] {
            let run = repo_payload(
                json!({"action": "completed", event: {"id": 99, "name": "CI", "conclusion": conclusion,
                "head_branch": "issue-12-x", "pull_requests": [{"number": 5, "url": "https://api.github.com/repos/other/repo/pulls/5"}]}}),
            );
            match (plan(event, &run, "agent-ready").unwrap(), expected) {
                (Plan::Emit { target, draft, .. }, Some(t)) => {
                    assert_eq!(draft.event_type, t, "{event} {conclusion}");
                    assert_eq!(draft.data["run_id"], json!(99));
                    assert_eq!(
                        target,
                        Target::Ci {
                            prs: vec![5],
                            branch: Some("issue-12-x".into())
                        }
                    );
                }
                (Plan::Ignore(_), None) => {}
                (other, _) => panic!("{event} {conclusion}: {other:?}"),
            }
        }

        let tag = repo_payload(json!({"ref": "v1.0", "ref_type": "tag"}));
        assert!(matches!(plan("create", &tag, "agent-ready"), Ok(Plan::Ignore(_))));
        let branch = repo_payload(json!({"ref": "issue-12-x", "ref_type": "branch"}));
        let (_, target, draft) = emitted(plan("create", &branch, "agent-ready"));
        assert_eq!(
            (target, draft.event_type),
            (Target::Branch("issue-12-x".into()), events::BRANCH_CREATED)
        );
        assert!(matches!(
            plan("star", &repo_payload(json!({"action": "created"})), "agent-ready"),
            Ok(Plan::Ignore(_))
        ));
        assert!(matches!(
            plan(
                "check_run",
                &repo_payload(json!({"action": "completed"})),
                "agent-ready"
            ),
            Ok(Plan::Ignore(_))
        ));
    }

    #[test]
    fn linking_prefers_the_earlier_pr_then_keywords_then_the_branch() {
        let re = default_branch_re();
        let repo = "acme/widgets";
        let none = HashMap::new();
        let pr = |body: &str, branch: &str| Target::Pr {
            number: 5,
            body: body.into(),
            branch: Some(branch.into()),
        };
        let issues = |ls: Vec<Link>| ls.iter().map(|l| l.issue).collect::<Vec<_>>();

        assert_eq!(
            issues(links(&pr("Closes #12", "issue-7-x"), repo, &re, &none)),
            vec![12]
        );
        assert_eq!(issues(links(&pr("nothing", "issue-7-x"), repo, &re, &none)), vec![7]);
        assert_eq!(
            issues(links(&pr("nothing", "changes"), repo, &re, &none)),
            Vec::<i64>::new()
        );
        let known = HashMap::from([(5, vec![3])]);
        assert_eq!(
            issues(links(&pr("Closes #12", "issue-7-x"), repo, &re, &known)),
            vec![3]
        );
        assert_eq!(
            issues(links(&pr("Fixes #1, fixes #2", "x"), repo, &re, &none)),
            vec![1, 2]
        );

        let ci = Target::Ci {
            prs: vec![5, 6],
            branch: Some("issue-7-x".into()),
        };
        assert_eq!(
            links(&ci, repo, &re, &known),
            vec![Link {
                issue: 3,
                pr_number: Some(5)
            }],
            "the PR number links, and the event carries it"
        );
        assert_eq!(
            links(&ci, repo, &re, &none),
            vec![Link {
                issue: 7,
                pr_number: Some(5)
            }]
        );
        let bare = Target::Ci {
            prs: vec![],
            branch: Some("master".into()),
        };
        assert!(links(&bare, repo, &re, &none).is_empty());
        assert_eq!(
            links(&Target::Branch("issue-9".into()), repo, &re, &none),
            vec![Link {
                issue: 9,
                pr_number: None
            }]
        );
        assert!(links(&Target::Branch("main".into()), repo, &re, &none).is_empty());
        assert_eq!(
            links(&Target::Issue(4), repo, &re, &none),
            vec![Link {
                issue: 4,
                pr_number: None
            }]
        );
    }

    #[test]
    fn event_ids_are_deterministic_per_delivery_and_index() {
        let d = "72d3162e-cc78-11e3-81ab-4c9367dc0958";
        assert_eq!(event_id(d, 0), event_id(d, 0));
        assert_ne!(event_id(d, 0), event_id(d, 1));
        assert_ne!(event_id(d, 0), event_id("another", 0));
        assert_eq!(event_id(d, 0).get_version_num(), 5);
    }

    #[test]
    fn form_encoded_deliveries_carry_the_payload_field() {
        let body = b"payload=%7B%22zen%22%3A%22Keep+it+logically+awesome.%22%7D";
        assert_eq!(form_payload(body).unwrap(), r#"{"zen":"Keep it logically awesome."}"#);
        assert_eq!(form_payload(b"other=1"), None);
    }

    #[test]
    fn metric_labels_stay_bounded() {
        assert_eq!(event_label(Some("pull_request")), "pull_request");
        assert_eq!(event_label(Some("anything-an-attacker-sends")), "other");
        assert_eq!(event_label(None), "other");
    }
}
