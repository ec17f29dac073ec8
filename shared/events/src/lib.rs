//! The events of the log: the catalog (`catalog`: each type declared once, with its typed
//! struct, its `EventType` and `Event` variants and the fields it requires) and validation that
//! says precisely what is wrong. Unknown UPPER_SNAKE types are accepted as they are: the rig
//! adds types over time and projections ignore what they do not know.
//!
//! Every string of an event is checked before anything is written (`validate_event`), whatever
//! the route it came by (native append, compat body, GitHub webhook). The rules, in one place:
//! - No string, and no object key, at any depth of `data` or `metadata` holds a NUL character:
//!   Postgres text and jsonb cannot store one, and the write would fail.
//! - Identifiers hold at most [`MAX_ID_CHARS`] characters: the value of a top-level key of
//!   `data` or `metadata` that ends in `_id` (`agent_id`, `correlation_id`, …) or is one of
//!   [`ID_FIELDS`] (`reviewer`, `model`, `branch`, …), and every object key at any depth. Stream
//!   ids have their own, stricter rules (`stream_id`), and event types at most 100 characters.
//! - A title (`title` at the top of `data` or `metadata`) holds at most [`MAX_TITLE_CHARS`]
//!   characters.
//! - Any other string holds at most [`MAX_STRING_BYTES`] bytes (64 KiB).
//! - `cost_usd` is from 0 to [`MAX_COST_USD`]; token counts from 0 to [`MAX_TOKENS`].
//!
//! A refusal names the field by its path (`data.title`, `metadata.trace`, `data.x[1].y`).

pub mod catalog;
pub mod fold;
pub mod money;
pub mod stream_id;
pub mod usage;

pub use catalog::*;
pub use stream_id::StreamId;

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::Serialize;
use serde_json::{Map, Value};
use uuid::Uuid;

/// Most tokens one TOKEN_USAGE event may report for one kind: a trillion, far above any model
/// call, and low enough that the projectors' bigint sums cannot overflow before millions of such
/// events (an overflow would stop them at that event).
pub const MAX_TOKENS: i64 = 1_000_000_000_000;

/// Most USD one event may report in `cost_usd`: far above any model call, and low enough that
/// no sum of such amounts the projectors keep can outgrow a decimal (~7.9e28).
pub const MAX_COST_USD: Decimal = Decimal::from_parts(1_000_000, 0, 0, false, 0);

/// Most characters of an identifier (see the module's rules).
pub const MAX_ID_CHARS: usize = 200;
/// Most characters of a title.
pub const MAX_TITLE_CHARS: usize = 1_000;
/// Most bytes of any one string.
pub const MAX_STRING_BYTES: usize = 64 * 1024;

/// Top-level keys of `data` and `metadata` whose values are identifiers, besides those ending
/// in `_id`.
pub const ID_FIELDS: &[&str] = &[
    "reviewer",
    "model",
    "branch",
    "merge_sha",
    "sha",
    "status",
    "priority",
    "current_issue",
    "actor",
    "source",
];

/// True for the catalog's types (validated); false for types the rig added later.
pub fn is_known_type(event_type: &str) -> bool {
    EventType::from_name(event_type).is_some()
}

/// `UPPER_SNAKE`: `A-Z` first, then `A-Z`/`0-9` in `_`-separated words.
pub fn is_upper_snake(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 100
        && s.as_bytes()[0].is_ascii_uppercase()
        && !s.ends_with('_')
        && !s.contains("__")
        && s.bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
}

/// Checks a whole event: its strings (the module's rules), then its type and data, and gives
/// its data typed. The message names the field and what is wrong with it.
pub fn validate_event<'a>(
    event_type: &str,
    schema_version: i32,
    data: &'a Value,
    metadata: &Value,
) -> Result<Event<'a>, String> {
    // The type first, as its own message (it also refuses a NUL or a long type).
    if is_upper_snake(event_type) {
        check_strings("data", data)?;
        check_strings("metadata", metadata)?;
    }
    Event::parse(event_type, schema_version, data)
}

/// Where a string sits, for the message: `data.x[1].y`.
enum Step<'a> {
    Key(&'a str),
    Index(usize),
}

fn path(root: &str, steps: &[Step<'_>]) -> String {
    let mut out = root.to_owned();
    for s in steps {
        match s {
            Step::Key(k) => {
                out.push('.');
                out.extend(k.chars().take(MAX_ID_CHARS));
            }
            Step::Index(i) => out.push_str(&format!("[{i}]")),
        }
    }
    out
}

/// Checks every string and key of `v` (`data` or `metadata`, named `root`) against the rules.
pub fn check_strings(root: &str, v: &Value) -> Result<(), String> {
    let mut steps = Vec::new();
    walk(v, &mut steps).map_err(|(steps, what)| format!("{}: {what}", path(root, &steps)))
}

type WalkError<'a> = (Vec<Step<'a>>, String);

fn walk<'a>(v: &'a Value, steps: &mut Vec<Step<'a>>) -> Result<(), WalkError<'a>> {
    match v {
        Value::String(s) => {
            let cap = match steps.as_slice() {
                [Step::Key(k)] if *k == "title" => Some(MAX_TITLE_CHARS),
                [Step::Key(k)] if k.ends_with("_id") || ID_FIELDS.contains(k) => Some(MAX_ID_CHARS),
                _ => None,
            };
            check_str(s, cap).map_err(|what| (std::mem::take(steps), what))
        }
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                steps.push(Step::Index(i));
                walk(item, steps)?;
                steps.pop();
            }
            Ok(())
        }
        Value::Object(map) => {
            for (k, item) in map {
                if let Err(what) = check_str(k, Some(MAX_ID_CHARS)) {
                    let shown: String = k.chars().take(40).filter(|c| *c != '\0').collect();
                    return Err((std::mem::take(steps), format!("a key ({shown:?}…) {what}")));
                }
                steps.push(Step::Key(k));
                walk(item, steps)?;
                steps.pop();
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

/// One identifier outside `data` and `metadata` (`name` says which), by the module's rules.
pub fn check_id(name: &str, s: &str) -> Result<(), String> {
    check_str(s, Some(MAX_ID_CHARS)).map_err(|what| format!("{name}: {what}"))
}

/// One string: no NUL, at most `cap` characters when given, never more than 64 KiB.
fn check_str(s: &str, cap: Option<usize>) -> Result<(), String> {
    if s.contains('\0') {
        return Err("holds a NUL character (\\u0000), which cannot be stored".to_owned());
    }
    if s.len() > MAX_STRING_BYTES {
        return Err(format!(
            "{} bytes long; a string may hold at most {MAX_STRING_BYTES} bytes (64 KiB)",
            s.len()
        ));
    }
    if let Some(cap) = cap {
        // Bytes bound characters from above: count only a string that might be too long.
        if s.len() > cap {
            let n = s.chars().count();
            if n > cap {
                return Err(format!("{n} characters, longer than {cap} characters"));
            }
        }
    }
    Ok(())
}

/// Checks an event's type and data. The message names the field and what was expected.
pub fn validate(event_type: &str, data: &Value) -> Result<(), String> {
    Event::parse(event_type, 1, data).map(drop)
}

/// An event as stored in the log.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct StoredEvent {
    pub position: i64,
    pub stream_id: String,
    pub version: i32,
    #[serde(rename = "id")]
    pub event_id: Uuid,
    #[serde(rename = "type")]
    pub event_type: String,
    pub schema_version: i32,
    pub data: Value,
    pub metadata: Value,
    pub occurred_at: Option<DateTime<Utc>>,
    pub recorded_at: DateTime<Utc>,
    /// `data` as JSON text, not parsed, in the events a lean consumer reads
    /// (`Projection::lean_events`); `data` is then null. Building a `Value` for every event was
    /// most of a summing projector's own CPU in a rebuild, and the one reader of lean events
    /// (`usage::read_usage`) reads its few fields straight from the text.
    #[serde(skip)]
    #[sqlx(skip)]
    pub data_text: Option<String>,
}

impl StoredEvent {
    /// Its catalog type; `None` for a type the rig added later.
    pub fn known_type(&self) -> Option<EventType> {
        EventType::from_name(&self.event_type)
    }

    /// Its data, typed by its type and schema version ([`Event::read`]).
    pub fn event(&self) -> Result<Event<'_>, String> {
        Event::read(&self.event_type, self.schema_version, &self.data)
    }

    pub fn str_field(&self, field: &str) -> Option<&str> {
        self.data.get(field).and_then(Value::as_str)
    }

    pub fn data_obj(&self) -> Option<&Map<String, Value>> {
        self.data.as_object()
    }
}

/// Columns of `events` in the order `StoredEvent` reads them.
pub const EVENT_COLUMNS: &str =
    "position, stream_id, version, event_id, event_type, schema_version, data, metadata, occurred_at, recorded_at";

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn known_types_check_required_fields_and_types() {
        assert!(validate("ISSUE_ASSIGNED", &json!({"agent_id": "dev-1"})).is_ok());
        let e = validate("ISSUE_ASSIGNED", &json!({})).unwrap_err();
        assert!(e.contains("requires data.agent_id"), "{e}");
        let e = validate("ISSUE_ASSIGNED", &json!({"agent_id": 5})).unwrap_err();
        assert!(
            e.contains("data.agent_id must be a non-empty string, found number 5"),
            "{e}"
        );
        let e = validate(
            "TOKEN_USAGE",
            &json!({"agent_id": "a", "model": "m", "input_tokens": -1, "output_tokens": 1}),
        )
        .unwrap_err();
        assert!(e.contains("input_tokens"), "{e}");
        assert!(validate(
            "TOKEN_USAGE",
            &json!({"agent_id": "a", "model": "m", "input_tokens": 1, "output_tokens": 1, "cost_usd": "0.30"})
        )
        .is_ok());
        assert!(validate("PR_CREATED", &json!({"pr_number": 0})).is_err());
        assert!(validate("HEARTBEAT", &json!({"agent_id": "a", "status": null})).is_ok());
    }

    #[test]
    fn numbers_the_projectors_could_not_read_are_refused_at_the_door() {
        let usage = |tokens: Value| json!({"agent_id": "a", "model": "m", "input_tokens": tokens, "output_tokens": 1});
        assert!(validate("TOKEN_USAGE", &usage(json!(MAX_TOKENS))).is_ok());
        for bad in [json!(MAX_TOKENS + 1), json!(u64::MAX), json!(1.5), json!("5")] {
            let e = validate("TOKEN_USAGE", &usage(bad.clone())).unwrap_err();
            assert!(
                e.contains("input_tokens must be an integer from 0 to 1000000000000"),
                "{bad}: {e}"
            );
        }
        assert!(validate("ESCALATED", &json!({"reason": "r", "attempts": i64::MAX})).is_ok());
        assert!(validate("ESCALATED", &json!({"reason": "r", "attempts": u64::MAX})).is_err());
        // Whatever a CI reports of each failed check.
        let checks = json!({"failed_checks": ["lint", {"name": "test", "url": "https://ci/1"}]});
        assert!(validate("CI_FAILED", &checks).is_ok());
        assert!(validate("CI_FAILED", &json!({"failed_checks": "lint"})).is_err());
    }

    #[test]
    fn strings_are_checked_for_nul_and_length_at_every_depth() {
        let ok = |data: Value, meta: Value| validate_event("SOMETHING_NEW", 1, &data, &meta).map(drop);
        let err = |data: Value, meta: Value| ok(data, meta).unwrap_err();
        assert!(ok(
            json!({"title": "t".repeat(1000), "agent_id": "a".repeat(200)}),
            json!({})
        )
        .is_ok());
        assert!(ok(json!({"deep": {"notes": "é".repeat(MAX_STRING_BYTES / 2)}}), json!({})).is_ok());
        let e = err(json!({"x": [1, {"y": "a\0b"}]}), json!({}));
        assert!(e.starts_with("data.x[1].y: holds a NUL character"), "{e}");
        let e = err(json!({}), json!({"k": {"a\0": 1}}));
        assert!(e.starts_with("metadata.k: a key"), "{e}");
        let e = err(json!({"title": "t".repeat(1001)}), json!({}));
        assert_eq!(e, "data.title: 1001 characters, longer than 1000 characters");
        // Characters, not bytes: 200 two-byte characters are an id of 200.
        assert!(ok(json!({"agent_id": "é".repeat(200)}), json!({})).is_ok());
        let e = err(json!({}), json!({"correlation_id": "c".repeat(201)}));
        assert!(e.starts_with("metadata.correlation_id: 201 characters"), "{e}");
        let e = err(json!({"reviewer": "r".repeat(201)}), json!({}));
        assert!(e.starts_with("data.reviewer"), "{e}");
        // An id only at the top: deeper, the same key is any string.
        assert!(ok(json!({"nested": {"agent_id": "a".repeat(201)}}), json!({})).is_ok());
        let e = err(json!({"notes": "n".repeat(MAX_STRING_BYTES + 1)}), json!({}));
        assert!(e.starts_with("data.notes: 65537 bytes long"), "{e}");
        let e = err(json!({"k".repeat(201): 1}), json!({}));
        assert!(e.starts_with("data: a key"), "{e}");
        // The catalog's own checks still run after the strings'.
        assert!(validate_event("ISSUE_ASSIGNED", 1, &json!({}), &json!({})).is_err());
        let e = validate_event("BAD\0TYPE", 1, &json!({}), &json!({})).unwrap_err();
        assert!(e.starts_with("type "), "{e}");
    }

    #[test]
    fn cost_usd_is_bounded_at_a_million() {
        let usage = |cost: Value| json!({"agent_id": "a", "model": "m", "input_tokens": 1, "output_tokens": 1, "cost_usd": cost});
        for good in [json!(0), json!(1_000_000), json!("1000000.000"), json!(0.3)] {
            assert!(validate("TOKEN_USAGE", &usage(good.clone())).is_ok(), "{good}");
        }
        for bad in [
            json!(1e28),
            json!("1e28"),
            json!(1_000_000.5),
            json!(-1),
            json!("-0.01"),
            json!(1e300),
        ] {
            let e = validate("TOKEN_USAGE", &usage(bad.clone())).unwrap_err();
            assert!(
                e.contains("data.cost_usd must be a decimal amount from 0 to 1000000"),
                "{bad}: {e}"
            );
        }
    }

    #[test]
    fn unknown_upper_snake_types_pass_and_others_fail() {
        assert!(validate("SOMETHING_NEW_2", &json!({"x": 1})).is_ok());
        for bad in ["heartbeat", "Heartbeat", "_X", "X_", "A__B", "", "A-B", "1ABC"] {
            assert!(validate(bad, &json!({})).is_err(), "{bad:?}");
        }
        assert!(validate("X", &json!([1]))
            .unwrap_err()
            .contains("data must be a JSON object"));
    }
}
