//! The bodies of the fuzz targets: bytes in, no panic out, and the parsers' invariants asserted.
//!
//! One copy serves two runners: `fuzz/fuzz_targets/*.rs` include this file by path (cargo fuzz,
//! nightly, coverage-guided), and `tests/fuzz_stable.rs` feeds it proptest's inputs and the seed
//! corpora on stable, so `cargo test` runs the same checks. It may use only what both have:
//! rig-ingest, rig-events, rig-log, rig-ops, axum, serde_json, hmac, sha2 and hex. Nothing here touches a database.

use axum::response::IntoResponse;
use hmac::{Hmac, Mac};
use rig_events as events;
use rig_events::stream_id::normalize_repo;
use rig_events::StreamId;
use rig_ingest::api::{parse_append, parse_json, MAX_EVENTS_PER_REQUEST};
use rig_ingest::compat;
use rig_ingest::error::ApiError;
use rig_ingest::github::{self, Plan};
use rig_log::writer::Append;
use serde_json::{json, Value};
use sha2::Sha256;
use std::collections::{HashMap, HashSet};
use std::sync::LazyLock;

/// The secret the webhook target signs with (GitHub's own documented test secret).
const SECRET: &[u8] = b"It's a Secret to Everybody";
/// At most this many strings of one payload go through `closing_refs` and `branch_issue`.
const MAX_STRINGS: usize = 256;

static BRANCH_RE: LazyLock<regex::Regex> = LazyLock::new(|| {
    github::compile_branch_pattern(&rig_ops::config::GithubSettings::default().branch_issue_pattern)
        .expect("the default branch pattern compiles")
});

/// `POST /v1/events` and `POST /api/events` without the database: bytes → `parse_json` →
/// `parse_append` (native), and → `compat::translate` → `parse_append` (compat).
pub fn append_body(data: &[u8]) {
    let value = match parse_json(data) {
        Ok(v) => v,
        Err(e) => return assert_client_error(e),
    };
    match parse_append(value.clone()) {
        Ok(append) => check_append(&append),
        Err(e) => assert_client_error(e),
    }
    match compat::translate(value) {
        Ok(native) => match parse_append(native) {
            Ok(append) => {
                assert_eq!(append.events.len(), 1, "a compat body is one event");
                assert!(
                    append.events[0].metadata.get("source").is_some(),
                    "compat events carry a source"
                );
                check_append(&append);
            }
            Err(e) => assert_client_error(e),
        },
        Err(e) => assert_client_error(e),
    }
}

/// What every accepted append promises the writer.
pub fn check_append(a: &Append) {
    let n = a.events.len();
    assert!((1..=MAX_EVENTS_PER_REQUEST).contains(&n), "{n} events accepted");
    let mut ids = HashSet::with_capacity(n);
    for e in &a.events {
        assert!(
            ids.insert(e.event_id),
            "event id {} accepted twice in one append",
            e.event_id
        );
        assert_eq!(
            events::validate(&e.event_type, &e.data),
            Ok(()),
            "an invalid event was accepted"
        );
        assert!(e.metadata.is_object(), "metadata is an object");
        assert!(e.schema_version >= 1, "schema_version {}", e.schema_version);
    }
    assert!(a.expected_version.is_none_or(|v| v >= 0), "{:?}", a.expected_version);
    // The stream is canonical: printed and parsed again, it is the same stream.
    assert_eq!(StreamId::parse(&a.stream.to_string()), Ok(a.stream.clone()));
}

/// A refused body is the client's fault: a 4xx, never a 500.
fn assert_client_error(e: ApiError) {
    let shown = format!("{e:?}");
    let status = e.into_response().status();
    assert!(status.is_client_error(), "{shown} answered {status}");
}

/// `POST /v1/github/webhook` without the database. The input is
/// `<X-GitHub-Event>\n<X-Hub-Signature-256>\n<body>` (an empty header line means no header).
pub fn github_webhook(data: &[u8]) {
    let (event, rest) = split_line(data);
    let (header, body) = split_line(rest);
    let header = std::str::from_utf8(header).ok().filter(|h| !h.is_empty());
    check_signature(SECRET, body, header);
    check_signature(event, body, header);

    let event = String::from_utf8_lossy(event);
    check_payload(&event, body);
    if let Some(form) = github::form_payload(body) {
        check_payload(&event, form.as_bytes());
    }
}

fn split_line(data: &[u8]) -> (&[u8], &[u8]) {
    match data.iter().position(|b| *b == b'\n') {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[]),
    }
}

fn sign(secret: &[u8], body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes a key of any length");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// The right signature verifies; an arbitrary header verifies only if it is that signature.
fn check_signature(secret: &[u8], body: &[u8], header: Option<&str>) {
    let good = sign(secret, body);
    assert_eq!(github::verify_signature(secret, body, Some(&good)), Ok(()));
    if github::verify_signature(secret, body, header).is_ok() {
        let digest = header
            .and_then(|h| h.trim().strip_prefix("sha256="))
            .expect("a verified header has the sha256= form");
        assert!(
            digest.eq_ignore_ascii_case(&good["sha256=".len()..]),
            "{header:?} verified, but the signature is {good}"
        );
    }
}

fn check_payload(event: &str, body: &[u8]) {
    let Ok(payload) = parse_json(body) else { return };
    let repo = payload
        .pointer("/repository/full_name")
        .and_then(Value::as_str)
        .unwrap_or("acme/widgets");
    for s in strings(&payload) {
        check_refs(s, repo);
        if let Some(n) = github::branch_issue(&BRANCH_RE, s) {
            assert!(n > 0, "branch {s:?} gave issue {n}");
        }
    }
    match github::plan(event, &payload, "agent-ready") {
        Err(why) => assert!(!why.is_empty()),
        Ok(Plan::Ignore(_)) => {}
        Ok(Plan::Emit { repo, target, draft }) => {
            assert_eq!(normalize_repo(&repo).as_deref(), Ok(repo.as_str()), "repo is canonical");
            assert!(events::is_upper_snake(draft.event_type));
            let none = HashMap::new();
            // As if every PR the delivery names had an earlier PR_CREATED on the issue of its number.
            let known: HashMap<i64, Vec<i64>> = github::prs_to_look_up(&target)
                .into_iter()
                .map(|pr| (pr, vec![pr]))
                .collect();
            for known in [&none, &known] {
                let links = github::links(&target, &repo, &BRANCH_RE, known);
                assert!(links.len() <= 10, "{} links", links.len());
                let mut issues = HashSet::new();
                for link in links {
                    assert!(link.issue > 0 && issues.insert(link.issue), "{link:?}");
                    // May refuse an issue number of more than 12 digits (then the handler answers 422).
                    let _ = StreamId::issue(&repo, link.issue);
                    let mut data = draft.data.clone();
                    if let Some(pr) = link.pr_number {
                        data.entry("pr_number").or_insert(json!(pr));
                    }
                    assert_eq!(
                        events::validate(draft.event_type, &Value::Object(data)),
                        Ok(()),
                        "a delivery mapped to an invalid {}",
                        draft.event_type
                    );
                }
            }
        }
    }
}

fn check_refs(body: &str, repo: &str) {
    let refs = github::closing_refs(body, repo);
    assert!(refs.len() <= 10, "{} closing refs", refs.len());
    let distinct: HashSet<_> = refs.iter().collect();
    assert_eq!(distinct.len(), refs.len(), "repeated closing refs {refs:?}");
    assert!(refs.iter().all(|n| *n > 0), "{refs:?}");
}

/// The first `MAX_STRINGS` strings of a JSON value, object keys included.
fn strings(v: &Value) -> Vec<&str> {
    let mut out = Vec::new();
    let mut stack = vec![v];
    while let Some(v) = stack.pop() {
        if out.len() >= MAX_STRINGS {
            break;
        }
        match v {
            Value::String(s) => out.push(s.as_str()),
            Value::Array(a) => stack.extend(a),
            Value::Object(o) => {
                out.extend(o.keys().map(String::as_str));
                stack.extend(o.values());
            }
            _ => {}
        }
    }
    out.truncate(MAX_STRINGS);
    out
}
