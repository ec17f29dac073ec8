//! `POST /api/events`: the flat PascalCase body that agents deployed against the earlier .NET
//! rig-conductor send, e.g. `{"Type":"HEARTBEAT","Repo":"acme/widgets","IssueNumber":42,
//! "AgentId":"dev-e-node"}`. The stream is `{Repo}#{IssueNumber}` when both are present and
//! IssueNumber > 0, else `agent:{AgentId}`; the remaining fields become `data` in snake_case.

use crate::api::{body_bytes, parse_append, parse_json, refuse, submit};
use crate::error::ApiError;
use crate::tenants::Scoped;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::response::Response;
use serde_json::{json, Map, Value};

/// `POST /api/events` (the token and the Content-Type were checked before the body was read,
/// by the middleware in `app`).
pub async fn append(Scoped(state): Scoped, body: Result<Bytes, BytesRejection>) -> Result<Response, ApiError> {
    let parsed = body_bytes(&state, body)
        .and_then(|b| parse_json(&b))
        .and_then(translate)
        .and_then(parse_append);
    match parsed {
        Ok(append) => submit(&state, append).await,
        Err(e) => refuse(&state, Err(e)).await,
    }
}

/// A .NET `DateTime` of unspecified kind serializes without an offset
/// (`2026-04-21T09:00:05.1234567`); the .NET service stored such times as UTC, and so do we.
/// Anything else goes on to the native check as it is.
fn utc_if_naive(t: Value) -> Value {
    match &t {
        Value::String(s) if chrono::DateTime::parse_from_rfc3339(s).is_err() => {
            match chrono::NaiveDateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S%.f") {
                Ok(naive) => json!(naive.and_utc().to_rfc3339()),
                Err(_) => t,
            }
        }
        _ => t,
    }
}

/// The compat body as a native append body.
pub fn translate(body: Value) -> Result<Value, ApiError> {
    let Value::Object(obj) = body else {
        return Err(ApiError::MalformedJson("the body must be a JSON object".into()));
    };
    let mut fields: Map<String, Value> = Map::new();
    for (k, v) in obj {
        fields.insert(snake_case(&k), v);
    }
    let event_type = match fields.remove("type").or_else(|| fields.remove("event_type")) {
        Some(Value::String(t)) => t,
        _ => {
            return Err(ApiError::InvalidRequest(
                "Type is required (a string such as \"HEARTBEAT\")".into(),
            ))
        }
    };
    // A nested Data object is flattened into data, as the .NET service did (first, so that a
    // Data.AgentId can name the agent stream).
    if let Some(Value::Object(inner)) = fields.remove("data") {
        for (k, v) in inner {
            fields.entry(snake_case(&k)).or_insert(v);
        }
    }
    let repo = fields.remove("repo");
    let number = fields.remove("issue_number");
    // Some clients send the number as a string ("42").
    let number = number.as_ref().and_then(|n| match n {
        Value::String(s) => s.trim().parse::<i64>().ok(),
        n => n.as_i64(),
    });
    let stream_id = match (&repo, number) {
        (Some(Value::String(r)), Some(n)) if n > 0 && !r.is_empty() => format!("{r}#{n}"),
        _ => match fields.get("agent_id") {
            Some(Value::String(a)) if !a.is_empty() => format!("agent:{a}"),
            _ => {
                return Err(ApiError::InvalidStreamId(
                    "give Repo and IssueNumber (> 0) for an issue event, or AgentId for an agent event".into(),
                ))
            }
        },
    };
    let id = fields.remove("id").or_else(|| fields.remove("event_id"));
    let occurred_at = fields
        .remove("occurred_at")
        .or_else(|| fields.remove("timestamp"))
        .map(utc_if_naive);
    let metadata = fields.remove("metadata");
    let expected_version = fields.remove("expected_version");
    let mut event = json!({"type": event_type, "data": Value::Object(fields)});
    if let Some(id) = id {
        event["id"] = id;
    }
    if let Some(t) = occurred_at {
        event["occurred_at"] = t;
    }
    let mut meta = match metadata {
        Some(Value::Object(m)) => m,
        _ => Map::new(),
    };
    meta.entry("source").or_insert_with(|| json!("compat"));
    event["metadata"] = Value::Object(meta);
    let mut body = json!({"stream_id": stream_id, "events": [event]});
    if let Some(v) = expected_version {
        body["expected_version"] = v;
    }
    Ok(body)
}

/// `IssueNumber` → `issue_number`, `PRNumber` → `pr_number`, `costUsd` → `cost_usd`.
pub fn snake_case(s: &str) -> String {
    let chars: Vec<char> = s.chars().collect();
    let mut out = String::with_capacity(s.len() + 4);
    for (i, &c) in chars.iter().enumerate() {
        if c.is_ascii_uppercase() {
            let prev = i.checked_sub(1).map(|p| chars[p]);
            let next = chars.get(i + 1);
            let boundary = match prev {
                Some(p) if p.is_ascii_lowercase() || p.is_ascii_digit() => true,
                Some(p) if p.is_ascii_uppercase() => next.is_some_and(|n| n.is_ascii_lowercase()),
                _ => false,
            };
            if boundary && !out.ends_with('_') {
                out.push('_');
            }
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pascal_case_becomes_snake_case() {
        assert_eq!(snake_case("IssueNumber"), "issue_number");
        assert_eq!(snake_case("AgentId"), "agent_id");
        assert_eq!(snake_case("PRNumber"), "pr_number");
        assert_eq!(snake_case("CostUsd"), "cost_usd");
        assert_eq!(snake_case("costUsd"), "cost_usd");
        assert_eq!(snake_case("Type"), "type");
        assert_eq!(snake_case("already_snake"), "already_snake");
        assert_eq!(snake_case("InputTokens"), "input_tokens");
    }

    #[test]
    fn the_stream_comes_from_repo_and_issue_or_the_agent() {
        let b = translate(json!({"Type":"HEARTBEAT","Repo":"acme/widgets","IssueNumber":42,"AgentId":"dev-e-node"}))
            .unwrap();
        assert_eq!(b["stream_id"], "acme/widgets#42");
        assert_eq!(b["events"][0]["data"], json!({"agent_id": "dev-e-node"}));
        let b = translate(json!({"Type":"HEARTBEAT","Repo":"acme/widgets","IssueNumber":0,"AgentId":"dev-e"})).unwrap();
        assert_eq!(b["stream_id"], "agent:dev-e");
        assert!(translate(json!({"Type":"HEARTBEAT"})).is_err());
        let b = translate(json!({"Type":"HEARTBEAT","Repo":"acme/widgets","IssueNumber":"42","AgentId":"a"})).unwrap();
        assert_eq!(b["stream_id"], "acme/widgets#42");
        // A nested Data object is read before the stream is chosen.
        let b = translate(json!({"Type":"HEARTBEAT","Data":{"AgentId":"dev-x","Status":"idle"}})).unwrap();
        assert_eq!(b["stream_id"], "agent:dev-x");
        assert_eq!(b["events"][0]["data"], json!({"agent_id": "dev-x", "status": "idle"}));
    }

    #[test]
    fn a_dotnet_time_without_an_offset_is_utc() {
        let at = |t: &str| {
            translate(json!({"Type":"HEARTBEAT","AgentId":"a","Timestamp":t})).unwrap()["events"][0]["occurred_at"]
                .clone()
        };
        assert_eq!(at("2026-04-21T09:00:05"), "2026-04-21T09:00:05+00:00");
        assert_eq!(at("2026-04-21T09:00:05.1234567"), "2026-04-21T09:00:05.123456700+00:00");
        assert_eq!(at("2026-04-21T09:00:05+02:00"), "2026-04-21T09:00:05+02:00");
        // Not a time at all: left for the native check to refuse with its message.
        assert_eq!(at("yesterday"), "yesterday");
    }
}
