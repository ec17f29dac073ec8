//! The fuzz targets' bodies (`fuzz_bodies/`, also run by `cargo fuzz` from `fuzz/`) on stable:
//! proptest feeds them arbitrary bytes, arbitrary JSON, and the seed corpora of `fuzz/corpus/`
//! with a few structured edits each (a field removed, replaced by junk, added; an event
//! repeated; the events list grown to the 1000 limit). No panic, and the invariants hold.

mod fuzz_bodies;

use proptest::prelude::*;
use proptest::sample::Index;
use rig_ingest::api::{parse_append, parse_json};
use rig_ingest::compat;
use rig_ingest::github::{self, Plan};
use serde_json::{json, Value};
use std::path::PathBuf;
use std::sync::LazyLock;

/// Values the parsers give meaning to, valid and not; the same ids recur, to make repeats.
const WORDS: &[&str] = &[
    "HEARTBEAT",
    "TOKEN_USAGE",
    "PR_CREATED",
    "FUTURE_TYPE_2",
    "lower",
    "A__B",
    "acme/widgets#42",
    "Acme/Widgets#7",
    "agent:dev-ada",
    "agent:",
    "a/b/c#1",
    "acme/widgets#0",
    "acme/widgets#999999999999",
    "acme/widgets#9999999999999",
    "8f14e45f-ceea-467f-a0e6-1d6d3b2b5f11",
    "8F14E45F-CEEA-467F-A0E6-1D6D3B2B5F11",
    "urn:uuid:8f14e45f-ceea-467f-a0e6-1d6d3b2b5f11",
    "45c48cce-2e2d-4fbd-9a1e-0c1a2b3c4d5e",
    "dev-ada",
    "issue-12-fix",
    "2026-04-21T09:00:05Z",
    "0000-01-01T00:00:00-23:59",
    "9999-12-31T23:59:59+23:59",
    "not a time",
    "0.30",
    "1e3",
    "-1",
    "1e-99999",
    "Closes #12, fixes acme/widgets#13, resolves other/repo#14",
    "Fixes #99999999999999999999",
    "success",
    "failure",
    "branch",
    "agent-ready",
    "approved",
    "",
];
/// Keys the parsers read, native, compat and GitHub's.
const KEYS: &[&str] = &[
    "stream_id",
    "expected_version",
    "events",
    "type",
    "data",
    "id",
    "metadata",
    "occurred_at",
    "schema_version",
    "agent_id",
    "model",
    "input_tokens",
    "cost_usd",
    "pr_number",
    "Type",
    "Repo",
    "IssueNumber",
    "AgentId",
    "Data",
    "EventId",
    "Timestamp",
    "action",
    "number",
    "body",
    "ref",
    "ref_type",
    "merged",
    "conclusion",
    "pull_requests",
    "full_name",
];
const EVENTS: &[&str] = &[
    "issues",
    "create",
    "pull_request",
    "pull_request_review",
    "check_suite",
    "workflow_run",
    "ping",
    "",
];

fn leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        1 => Just(Value::Null),
        1 => any::<bool>().prop_map(Value::Bool),
        2 => prop::sample::select(vec![0i64, 1, 5, -1, i64::MAX, i64::MIN, i64::from(i32::MAX) + 1]).prop_map(|n| json!(n)),
        1 => Just(json!(u64::MAX)),
        1 => any::<f64>().prop_filter("finite", |f| f.is_finite()).prop_map(|f| json!(f)),
        3 => prop::sample::select(WORDS).prop_map(|s| json!(s)),
        1 => "[^\n]{0,20}".prop_map(Value::String),
    ]
}

/// Any JSON, its object keys mostly from the fields the parsers look at.
fn arb_json() -> impl Strategy<Value = Value> {
    leaf().prop_recursive(3, 24, 5, |inner| {
        let key = prop_oneof![3 => prop::sample::select(KEYS).prop_map(str::to_owned), 1 => "[a-zA-Z_]{1,10}"];
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::vec((key, inner), 0..6).prop_map(|kv| Value::Object(kv.into_iter().collect())),
        ]
    })
}

/// One structured change somewhere in a JSON document.
#[derive(Debug, Clone)]
enum Edit {
    /// Remove a key of an object.
    Remove(Index, Index),
    /// Replace the value of a key of an object.
    Replace(Index, Index, Value),
    /// Add (or overwrite) a key of an object.
    Add(Index, String, Value),
    /// Append a copy of an element of an array to it (a repeated event, a repeated id).
    Repeat(Index, Index),
    /// Grow an array to this many elements by copying its first.
    Grow(Index, usize),
}

fn edit() -> impl Strategy<Value = Edit> {
    let value = || prop_oneof![3 => leaf(), 1 => arb_json()];
    prop_oneof![
        3 => (any::<Index>(), any::<Index>()).prop_map(|(o, k)| Edit::Remove(o, k)),
        4 => (any::<Index>(), any::<Index>(), value()).prop_map(|(o, k, v)| Edit::Replace(o, k, v)),
        3 => (any::<Index>(), prop::sample::select(KEYS), value()).prop_map(|(o, k, v)| Edit::Add(o, k.to_owned(), v)),
        2 => (any::<Index>(), any::<Index>()).prop_map(|(a, i)| Edit::Repeat(a, i)),
        1 => (any::<Index>(), prop::sample::select(vec![999usize, 1000, 1001])).prop_map(|(a, n)| Edit::Grow(a, n)),
    ]
}

/// JSON pointers of every object (or array) in `v`.
fn containers(v: &Value, arrays: bool) -> Vec<String> {
    fn walk(v: &Value, at: String, arrays: bool, out: &mut Vec<String>) {
        match v {
            Value::Object(o) => {
                if !arrays {
                    out.push(at.clone());
                }
                for (k, v) in o {
                    walk(
                        v,
                        format!("{at}/{}", k.replace('~', "~0").replace('/', "~1")),
                        arrays,
                        out,
                    );
                }
            }
            Value::Array(a) => {
                if arrays {
                    out.push(at.clone());
                }
                for (i, v) in a.iter().enumerate() {
                    walk(v, format!("{at}/{i}"), arrays, out);
                }
            }
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk(v, String::new(), arrays, &mut out);
    out
}

fn apply(v: &mut Value, edit: Edit) {
    let arrays = matches!(edit, Edit::Repeat(..) | Edit::Grow(..));
    let spots = containers(v, arrays);
    let pick = |i: &Index| spots.get(i.index(spots.len().max(1))).cloned();
    match edit {
        Edit::Remove(at, k) => {
            if let Some(Value::Object(o)) = pick(&at).and_then(|p| v.pointer_mut(&p)) {
                if !o.is_empty() {
                    let key = o.keys().nth(k.index(o.len())).cloned().unwrap_or_default();
                    o.remove(&key);
                }
            }
        }
        Edit::Replace(at, k, new) => {
            if let Some(Value::Object(o)) = pick(&at).and_then(|p| v.pointer_mut(&p)) {
                if !o.is_empty() {
                    let n = k.index(o.len());
                    if let Some(slot) = o.values_mut().nth(n) {
                        *slot = new;
                    }
                }
            }
        }
        Edit::Add(at, key, new) => {
            if let Some(Value::Object(o)) = pick(&at).and_then(|p| v.pointer_mut(&p)) {
                o.insert(key, new);
            }
        }
        Edit::Repeat(at, i) => {
            if let Some(Value::Array(a)) = pick(&at).and_then(|p| v.pointer_mut(&p)) {
                if !a.is_empty() {
                    let copy = a[i.index(a.len())].clone();
                    a.push(copy);
                }
            }
        }
        Edit::Grow(at, n) => {
            if let Some(Value::Array(a)) = pick(&at).and_then(|p| v.pointer_mut(&p)) {
                if let Some(first) = a.first().cloned() {
                    a.resize(n, first);
                }
            }
        }
    }
}

fn corpus(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../fuzz/corpus")
        .join(target);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("a corpus entry").path())
        // Only the seeds: a local `cargo fuzz run` adds what it finds beside them.
        .filter(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("seed-")))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no seeds in {}", dir.display());
    files
        .into_iter()
        .map(|p| (p.display().to_string(), std::fs::read(&p).expect("a readable seed")))
        .collect()
}

/// A webhook seed as (event, header, payload); a form-encoded body is decoded.
fn delivery_parts(name: &str, bytes: &[u8]) -> (String, String, Value) {
    let mut lines = bytes.splitn(3, |b| *b == b'\n');
    let mut line = || {
        lines
            .next()
            .unwrap_or_else(|| panic!("{name}: not `event\\nheader\\nbody`"))
    };
    let event = String::from_utf8(line().to_vec()).expect("a UTF-8 event name");
    let header = String::from_utf8(line().to_vec()).expect("a UTF-8 header");
    let body = line();
    let form = github::form_payload(body);
    let body = form.as_ref().map_or(body, |f| f.as_bytes());
    let payload = parse_json(body).unwrap_or_else(|e| panic!("{name}: {e:?}"));
    (event, header, payload)
}

static APPEND_SEEDS: LazyLock<Vec<Value>> = LazyLock::new(|| {
    corpus("append_body")
        .iter()
        .map(|(name, b)| parse_json(b).unwrap_or_else(|e| panic!("{name}: {e:?}")))
        .collect()
});
static WEBHOOK_SEEDS: LazyLock<Vec<(String, Value)>> = LazyLock::new(|| {
    corpus("github_webhook")
        .iter()
        .map(|(name, b)| {
            let (event, _, payload) = delivery_parts(name, b);
            (event, payload)
        })
        .collect()
});

/// A seed append body (native or compat) with 0 to 3 edits, or (one time in six) any JSON.
fn append_json() -> impl Strategy<Value = Value> {
    let edited = (
        prop::sample::select(APPEND_SEEDS.clone()),
        prop::collection::vec(edit(), 0..4),
    )
        .prop_map(|(mut v, edits)| {
            for e in edits {
                apply(&mut v, e);
            }
            v
        });
    prop_oneof![5 => edited, 1 => arb_json()]
}

/// A seed delivery with 0 to 3 edits (its event name now and then swapped), or any JSON.
fn webhook_json() -> impl Strategy<Value = (String, Value)> {
    let edited = (
        prop::sample::select(WEBHOOK_SEEDS.clone()),
        prop::option::weighted(0.1, prop::sample::select(EVENTS)),
        prop::collection::vec(edit(), 0..4),
    )
        .prop_map(|((event, mut v), other, edits)| {
            for e in edits {
                apply(&mut v, e);
            }
            (other.map_or(event, str::to_owned), v)
        });
    let any = (prop::sample::select(EVENTS), arb_json()).prop_map(|(e, v)| (e.to_owned(), v));
    prop_oneof![5 => edited, 1 => any]
}

fn delivery(event: &str, header: &str, payload: &[u8]) -> Vec<u8> {
    let mut input = format!("{event}\n{header}\n").into_bytes();
    input.extend_from_slice(payload);
    input
}

proptest! {
    #[test]
    fn append_body_takes_any_bytes(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        fuzz_bodies::append_body(&bytes);
    }

    #[test]
    fn append_body_takes_any_json(v in append_json()) {
        fuzz_bodies::append_body(&serde_json::to_vec(&v).unwrap());
    }

    #[test]
    fn github_webhook_takes_any_bytes(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        fuzz_bodies::github_webhook(&bytes);
    }

    #[test]
    fn github_webhook_takes_any_json(
        (event, payload) in webhook_json(),
        header in prop_oneof![Just(String::new()), "sha256=[0-9a-f]{0,70}", "[^\n]{0,80}"],
        form in any::<bool>(),
    ) {
        let json = serde_json::to_string(&payload).unwrap();
        let body = if form {
            let encoded = percent_encoding::utf8_percent_encode(&json, percent_encoding::NON_ALPHANUMERIC);
            format!("payload={encoded}")
        } else {
            json
        };
        fuzz_bodies::github_webhook(&delivery(&event, &header, body.as_bytes()));
    }
}

/// The seeds pass the checks, and are worth seeding with: valid bodies that get deep.
#[test]
fn append_body_seeds_pass_and_are_accepted() {
    for (name, bytes) in corpus("append_body") {
        fuzz_bodies::append_body(&bytes);
        let v = parse_json(&bytes).unwrap();
        let native = parse_append(v.clone()).is_ok();
        let compat = compat::translate(v).and_then(parse_append).is_ok();
        assert!(native || compat, "{name} is refused");
    }
}

#[test]
fn github_webhook_seeds_pass_and_emit() {
    for (name, bytes) in corpus("github_webhook") {
        fuzz_bodies::github_webhook(&bytes);
        let (event, _, payload) = delivery_parts(&name, &bytes);
        let plan = github::plan(&event, &payload, "agent-ready").unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(matches!(plan, Plan::Emit { .. }), "{name}: {plan:?}");
    }
}

/// A body at the limit: 1000 events pass with distinct ids, 1001 are refused.
#[test]
fn the_event_limit_holds() {
    let event = json!({"type": "HEARTBEAT", "data": {"agent_id": "dev-ada"}});
    for (n, ok) in [(1000, true), (1001, false), (0, false)] {
        let body = json!({"stream_id": "acme/widgets#1", "events": vec![event.clone(); n]});
        fuzz_bodies::append_body(body.to_string().as_bytes());
        assert_eq!(parse_append(body).is_ok(), ok, "{n} events");
    }
}
