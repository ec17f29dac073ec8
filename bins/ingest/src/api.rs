//! The native JSON API: append, stream reads with time travel, and the read models.

use crate::error::ApiError;
use crate::tenants::Scoped;
use crate::AppState;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{FromRequestParts, Path, Query};
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{DateTime, NaiveDate, Utc};
use futures::TryStreamExt;
use rig_events::fold::{IssueState, StreamFold};
use rig_events::StreamId;
use rig_events::{self as events, StoredEvent, EVENT_COLUMNS};
use rig_log::writer::{Append, AppendOk, NewEvent};
use rust_decimal::Decimal;
use serde::de::{DeserializeOwned, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use std::collections::HashSet;
use std::time::Duration;
use uuid::Uuid;

pub const MAX_EVENTS_PER_REQUEST: usize = 1000;

/// A query string, parsed like axum's `Query` but refused as our JSON 422: an unknown parameter
/// (`?limt=5`) or a value of the wrong type names itself instead of being ignored or answered
/// with a plain-text 400.
pub struct ApiQuery<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        Query::<T>::try_from_uri(&parts.uri)
            .map(|Query(q)| ApiQuery(q))
            .map_err(|r| ApiError::InvalidRequest(r.body_text()))
    }
}

/// The one path parameter of a read (`/v1/streams/{id}`, `/v1/issues/{id}`), percent-decoded,
/// as a stream id. A path that is not a stream id names nothing that exists: 404 with the reason,
/// like any unknown stream (a bad percent-encoding included, which axum would answer in plain
/// text).
pub struct StreamPath(pub StreamId);

impl<S: Send + Sync> FromRequestParts<S> for StreamPath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let Path(raw) = Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(|r| ApiError::NotFound(format!("no such stream: {}", r.body_text())))?;
        StreamId::parse(&raw)
            .map(StreamPath)
            .map_err(|e| ApiError::NotFound(format!("no such stream: {e}")))
    }
}

/// The body as bytes, with the size limit reported as our JSON 413.
pub fn body_bytes(state: &AppState, body: Result<Bytes, BytesRejection>) -> Result<Bytes, ApiError> {
    body.map_err(|r| {
        if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::BodyTooLarge(state.settings.ingest.max_body_bytes)
        } else {
            ApiError::MalformedJson(format!("could not read the body: {r}"))
        }
    })
}

/// A body as JSON. An object with a repeated key is refused: serde_json would keep the last
/// value silently, so `{"expected_version": 5, "expected_version": 0}` would mean whatever the
/// last writer of the body chose, and two readers of it could disagree.
pub fn parse_json(bytes: &[u8]) -> Result<Value, ApiError> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    Strict
        .deserialize(&mut de)
        .and_then(|v| de.end().map(|()| v))
        .map_err(|e| ApiError::MalformedJson(format!("the body is not valid JSON: {e}")))
}

/// Builds a `Value` as serde_json's own deserializer does, except that an object with a
/// repeated key is an error naming the key. The map is checked by the insert it makes anyway,
/// so this costs nothing over `serde_json::from_slice`.
#[derive(Clone, Copy)]
struct Strict;

impl<'de> DeserializeSeed<'de> for Strict {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Strict {
    type Value = Value;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        // JSON has no NaN or infinity, so this is never null for a parsed body.
        Ok(serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1024));
        while let Some(v) = seq.next_element_seed(self)? {
            out.push(v);
        }
        Ok(Value::Array(out))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            match out.entry(key) {
                serde_json::map::Entry::Vacant(slot) => {
                    slot.insert(map.next_value_seed(self)?);
                }
                serde_json::map::Entry::Occupied(slot) => {
                    let shown: String = slot.key().chars().take(100).collect();
                    return Err(serde::de::Error::custom(format_args!(
                        "the key {shown:?} appears twice in one object; send each key once"
                    )));
                }
            }
        }
        Ok(Value::Object(out))
    }
}

pub fn parse_stream_id(s: &str) -> Result<StreamId, ApiError> {
    StreamId::parse(s).map_err(|e| ApiError::InvalidStreamId(e.to_string()))
}

/// A client's string as an error message shows it: at most 100 characters (it may be 1 MB).
fn clip(s: &str) -> String {
    match s.char_indices().nth(100) {
        Some((end, _)) => format!("{}…", &s[..end]),
        None => s.to_owned(),
    }
}

/// Turns a native append body into a validated `Append`. Nothing is written on error.
pub fn parse_append(body: Value) -> Result<Append, ApiError> {
    let Value::Object(mut obj) = body else {
        return Err(ApiError::MalformedJson("the body must be a JSON object".into()));
    };
    let stream = match obj.remove("stream_id") {
        Some(Value::String(s)) => parse_stream_id(&s)?,
        Some(_) => return Err(ApiError::InvalidRequest("stream_id must be a string".into())),
        None => return Err(ApiError::InvalidRequest("stream_id is required".into())),
    };
    let expected_version = match obj.remove("expected_version") {
        None | Some(Value::Null) => None,
        Some(v) => match v.as_i64() {
            Some(n) if n >= 0 => Some(n),
            _ => {
                return Err(ApiError::InvalidRequest(
                    "expected_version must be an integer >= 0".into(),
                ))
            }
        },
    };
    let list = match obj.remove("events") {
        Some(Value::Array(a)) => a,
        Some(_) => return Err(ApiError::InvalidRequest("events must be an array".into())),
        None => return Err(ApiError::InvalidRequest("events is required".into())),
    };
    // A misspelt key must not be dropped silently: `expectedVersion` would turn off the
    // concurrency check the client asked for.
    if let Some(k) = obj.keys().next() {
        return Err(ApiError::InvalidRequest(format!(
            "unknown field {:?}; a request has stream_id, expected_version and events",
            clip(k)
        )));
    }
    if list.is_empty() {
        return Err(ApiError::InvalidRequest(
            "events is empty; send 1 to 1000 events".into(),
        ));
    }
    if list.len() > MAX_EVENTS_PER_REQUEST {
        return Err(ApiError::TooManyEvents(list.len()));
    }
    let mut seen = HashSet::with_capacity(list.len());
    let mut out = Vec::with_capacity(list.len());
    for (index, e) in list.into_iter().enumerate() {
        let ev = parse_event(e).map_err(|detail| ApiError::InvalidEvent { index, detail })?;
        if !seen.insert(ev.event_id) {
            return Err(ApiError::InvalidEvent {
                index,
                detail: format!("id {} appears twice in the request", ev.event_id),
            });
        }
        out.push(ev);
    }
    Ok(Append {
        stream,
        expected_version,
        events: out,
    })
}

fn parse_event(e: Value) -> Result<NewEvent, String> {
    let Value::Object(mut o) = e else {
        return Err("each event must be a JSON object".into());
    };
    let event_type = match o.remove("type") {
        Some(Value::String(t)) => t,
        Some(_) => return Err("type must be a string".into()),
        None => return Err("type is required".into()),
    };
    let data = match o.remove("data") {
        None | Some(Value::Null) => Value::Object(Map::new()),
        Some(d) => d,
    };
    let metadata = match o.remove("metadata") {
        None | Some(Value::Null) => Value::Object(Map::new()),
        Some(m @ Value::Object(_)) => m,
        Some(_) => return Err("metadata must be a JSON object".into()),
    };
    // Read before the data (its reading depends on it), refused in its turn after it.
    let schema_version = match o.remove("schema_version") {
        None | Some(Value::Null) => Ok(1),
        Some(v) => v
            .as_i64()
            .filter(|n| (1..=i64::from(i32::MAX)).contains(n))
            .map(|n| n as i32)
            .ok_or("schema_version must be an integer >= 1"),
    };
    let event = events::validate_event(&event_type, schema_version.unwrap_or(1), &data, &metadata)?.into_owned();
    let (event_id, id_from_client) = match o.remove("id") {
        // Time-ordered (v7): consecutive appends then land on the same few pages of the
        // event_id index instead of one random page each.
        None | Some(Value::Null) => (Uuid::now_v7(), false),
        Some(Value::String(s)) => (
            Uuid::parse_str(&s).map_err(|_| format!("id {:?} is not a UUID", clip(&s)))?,
            true,
        ),
        Some(_) => return Err("id must be a UUID string".into()),
    };
    let occurred_at = match o.remove("occurred_at") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(
            DateTime::parse_from_rfc3339(&s)
                .map_err(|_| {
                    format!(
                        "occurred_at {:?} is not an RFC 3339 time such as 2026-04-21T09:00:05Z",
                        clip(&s)
                    )
                })?
                .with_timezone(&Utc),
        ),
        Some(_) => return Err("occurred_at must be an RFC 3339 string".into()),
    };
    let schema_version = schema_version?;
    // A misspelt `id` (`event_id`, say) would silently cost the client its idempotent retries.
    if let Some(k) = o.keys().next() {
        let hint = if k == "event_id" {
            " (the event's id is \"id\")"
        } else {
            ""
        };
        return Err(format!(
            "unknown field {:?}{hint}; an event has id, type, data, metadata, occurred_at and schema_version",
            clip(k)
        ));
    }
    Ok(NewEvent {
        event_id,
        id_from_client,
        event_type,
        schema_version,
        data,
        event,
        metadata,
        occurred_at,
    })
}

/// Appends and answers 201 (written), 200 (an idempotent retry) or the error.
pub async fn submit(state: &AppState, append: Append) -> Result<Response, ApiError> {
    match state.writer.append(append).await? {
        AppendOk::Created(a) => Ok((StatusCode::CREATED, Json(a)).into_response()),
        AppendOk::AlreadyStored(a) => Ok((StatusCode::OK, Json(a)).into_response()),
    }
}

/// How long a refusal of bad input waits before it is answered while appends are in flight.
///
/// A refusal costs no database work, so a client that sends nothing but bad bodies (a hostile
/// one, or a broken one in a retry loop) is answered at once, sends the next, and can take the
/// CPU that the appends in flight need: four such clients on two cores cut 64 honest clients'
/// append rate by half. Making those clients wait a moment while honest work is waiting bounds
/// each of their connections to a few hundred requests a second. With no append in flight a
/// refusal is answered at once, so a client that made a mistake learns of it without delay.
pub const REFUSAL_PAUSE: Duration = Duration::from_millis(10);

/// Whether an error is the client's bad input (refused before the writer saw it).
fn is_bad_input(e: &ApiError) -> bool {
    matches!(
        e,
        ApiError::MalformedJson(_)
            | ApiError::InvalidRequest(_)
            | ApiError::InvalidStreamId(_)
            | ApiError::InvalidEvent { .. }
            | ApiError::TooManyEvents(_)
            | ApiError::BodyTooLarge(_)
    )
}

/// Answers `result`; a refusal of bad input yields to the appends in flight (`REFUSAL_PAUSE`).
pub async fn refuse(state: &AppState, result: Result<Response, ApiError>) -> Result<Response, ApiError> {
    if let Err(e) = &result {
        if is_bad_input(e) && state.writer.in_flight() > 0 {
            tokio::time::sleep(REFUSAL_PAUSE).await;
        }
    }
    result
}

/// `POST /v1/events` (the token and the Content-Type were checked before the body was read,
/// by the middleware in `app`).
pub async fn append(Scoped(state): Scoped, body: Result<Bytes, BytesRejection>) -> Result<Response, ApiError> {
    let bytes = body_bytes(&state, body);
    let parsed = bytes.and_then(|b| parse_json(&b)).and_then(parse_append);
    match parsed {
        Ok(append) => submit(&state, append).await,
        Err(e) => refuse(&state, Err(e)).await,
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamQuery {
    to_version: Option<String>,
    at: Option<String>,
    from_version: Option<String>,
    limit: Option<String>,
}

/// Rows a read answers when the client gives no `limit`: one page of a stream, one page of a list.
pub const DEFAULT_LIMIT: i64 = 1000;
/// Most rows one read may ask for (`limit`).
pub const MAX_LIMIT: i64 = 10_000;
/// Deepest `offset` a list takes: paging deeper costs the database the rows skipped.
pub const MAX_OFFSET: i64 = 1_000_000;
/// Most events one page of a stream read may ask for.
pub const MAX_STREAM_PAGE: i64 = MAX_LIMIT;

#[derive(Serialize)]
struct StreamView {
    stream_id: String,
    version: i64,
    events: Vec<StoredEvent>,
    state: Option<IssueState>,
    /// Where the next page starts, when more events follow this page (up to the cut).
    #[serde(skip_serializing_if = "Option::is_none")]
    next_from_version: Option<i64>,
}

/// An optional integer query parameter within `min..=max`.
fn int_param(name: &str, raw: Option<&str>, min: i64, max: i64) -> Result<Option<i64>, ApiError> {
    raw.map(|v| {
        v.parse::<i64>()
            .ok()
            .filter(|n| (min..=max).contains(n))
            .ok_or_else(|| {
                ApiError::InvalidRequest(if max == i64::MAX {
                    format!("{name} must be an integer >= {min}")
                } else {
                    format!("{name} must be an integer from {min} to {max}")
                })
            })
    })
    .transpose()
}

/// A list's `limit` (default [`DEFAULT_LIMIT`], at most [`MAX_LIMIT`]) and `offset` (at most
/// [`MAX_OFFSET`]).
fn page_params(limit: Option<&str>, offset: Option<&str>) -> Result<(i64, i64), ApiError> {
    Ok((
        int_param("limit", limit, 1, MAX_LIMIT)?.unwrap_or(DEFAULT_LIMIT),
        int_param("offset", offset, 0, MAX_OFFSET)?.unwrap_or(0),
    ))
}

/// Cuts a list read with `limit + 1` rows to `limit`; the offset of the next page when the
/// extra row showed that more follow.
fn cut_page<T>(rows: &mut Vec<T>, limit: i64, offset: i64) -> Option<i64> {
    let l = usize::try_from(limit).unwrap_or(usize::MAX);
    (rows.len() > l).then(|| {
        rows.truncate(l);
        offset + limit
    })
}

/// `GET /v1/streams/{stream_id}?to_version=N | ?at=TIME`: the events and the folded state then.
/// `from_version` and `limit` (default [`DEFAULT_LIMIT`], at most [`MAX_LIMIT`]) page through a
/// stream, `next_from_version` says where the next page starts; `version` and `state` always
/// describe the whole stream up to the cut, whatever page is shown.
pub async fn read_stream(
    Scoped(state): Scoped,
    StreamPath(stream): StreamPath,
    ApiQuery(q): ApiQuery<StreamQuery>,
) -> Result<Response, ApiError> {
    let sid = stream.to_string();
    let to_version = int_param("to_version", q.to_version.as_deref(), 0, i64::MAX)?;
    let from_version = int_param("from_version", q.from_version.as_deref(), 1, i64::MAX)?.unwrap_or(1);
    let limit = int_param("limit", q.limit.as_deref(), 1, MAX_LIMIT)?.unwrap_or(DEFAULT_LIMIT);
    let at = match q.at.as_deref() {
        None => None,
        // An unencoded `+` in `?at=…+02:00` arrives as a space (form decoding); no RFC 3339 time
        // has a space there, so it is read back as the `+` it was.
        Some(t) => Some(
            DateTime::parse_from_rfc3339(t)
                .or_else(|e| match t.rsplit_once(' ') {
                    Some((time, offset)) => DateTime::parse_from_rfc3339(&format!("{time}+{offset}")),
                    None => Err(e),
                })
                .map_err(|_| {
                    ApiError::InvalidRequest(format!("at {t:?} is not an RFC 3339 time such as 2026-04-21T09:00:05Z"))
                })?
                .with_timezone(&Utc),
        ),
    };
    if to_version.is_some() && at.is_some() {
        return Err(ApiError::InvalidRequest("give to_version or at, not both".into()));
    }
    let pool = &state.read_pool;
    let exists: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM events WHERE stream_id = $1)")
        .bind(&sid)
        .fetch_one(pool)
        .await?;
    if !exists {
        return Err(ApiError::NotFound(format!("stream {sid} has no events")));
    }
    let is_issue = matches!(stream, StreamId::Issue { .. });
    // The inline read model is the fold of the whole stream, kept in each append's transaction by
    // the same function: with no cut it is the state, and only the page need be read.
    let current: Option<IssueState> = if is_issue && to_version.is_none() && at.is_none() {
        sqlx::query_as("SELECT * FROM issue_state WHERE stream_id = $1")
            .bind(&sid)
            .fetch_optional(pool)
            .await?
    } else {
        None
    };
    // One row more than the page tells whether another page follows.
    let page_sql = format!(
        "SELECT {EVENT_COLUMNS} FROM events WHERE stream_id = $1 \
         AND ($2::bigint IS NULL OR version <= $2) AND ($3::timestamptz IS NULL OR recorded_at <= $3) \
         AND version >= $4 ORDER BY version LIMIT $5"
    );
    let (version, state_at, mut events) = if let Some(current) = current {
        let version = i64::from(current.version);
        let events: Vec<StoredEvent> = sqlx::query_as(&page_sql)
            .bind(&sid)
            .bind(version)
            .bind(None::<DateTime<Utc>>)
            .bind(from_version)
            .bind(limit + 1)
            .fetch_all(pool)
            .await?;
        (version, Some(current), events)
    } else if is_issue {
        // The state at a cut is the fold of the prefix: the events stream through the fold and
        // only the page is kept, so a long stream is never held whole.
        let mut fold = StreamFold::new(&sid);
        let mut page = Vec::new();
        let mut version = 0;
        let keep = usize::try_from(limit + 1).unwrap_or(usize::MAX);
        let mut rows = sqlx::query_as::<_, StoredEvent>(&page_sql)
            .bind(&sid)
            .bind(to_version)
            .bind(at)
            .bind(1_i64)
            .bind(None::<i64>)
            .fetch(pool);
        while let Some(e) = rows.try_next().await? {
            fold.apply(&e);
            version = i64::from(e.version);
            if version >= from_version && page.len() < keep {
                page.push(e);
            }
        }
        (version, fold.finish(), page)
    } else {
        let events: Vec<StoredEvent> = sqlx::query_as(&page_sql)
            .bind(&sid)
            .bind(to_version)
            .bind(at)
            .bind(from_version)
            .bind(limit + 1)
            .fetch_all(pool)
            .await?;
        let version: Option<i32> = sqlx::query_scalar(
            "SELECT max(version) FROM events WHERE stream_id = $1 \
             AND ($2::bigint IS NULL OR version <= $2) AND ($3::timestamptz IS NULL OR recorded_at <= $3)",
        )
        .bind(&sid)
        .bind(to_version)
        .bind(at)
        .fetch_one(pool)
        .await?;
        (version.map_or(0, i64::from), None, events)
    };
    let mut next_from_version = None;
    if events.len() > usize::try_from(limit).unwrap_or(usize::MAX) {
        events.truncate(usize::try_from(limit).unwrap_or(usize::MAX));
        next_from_version = events.last().map(|e| i64::from(e.version) + 1);
    }
    Ok(Json(StreamView {
        stream_id: sid,
        version,
        events,
        state: state_at,
        next_from_version,
    })
    .into_response())
}

/// `GET /v1/issues/{stream_id}`
pub async fn get_issue(Scoped(state): Scoped, StreamPath(stream): StreamPath) -> Result<Response, ApiError> {
    let sid = stream.to_string();
    let row: Option<IssueState> = sqlx::query_as("SELECT * FROM issue_state WHERE stream_id = $1")
        .bind(&sid)
        .fetch_optional(&state.read_pool)
        .await?;
    match row {
        Some(s) => Ok(Json(s).into_response()),
        None => Err(ApiError::NotFound(format!("no issue {sid}"))),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IssuesQuery {
    status: Option<String>,
    agent_id: Option<String>,
    repo: Option<String>,
    limit: Option<String>,
    offset: Option<String>,
}

pub const STATUSES: &[&str] = &["approved", "assigned", "in_progress", "in_review", "merged", "done"];

/// `GET /v1/issues?status=…&agent_id=…&repo=…&limit=…&offset=…`: most recently updated first;
/// `next_offset` when more follow.
pub async fn list_issues(Scoped(state): Scoped, ApiQuery(q): ApiQuery<IssuesQuery>) -> Result<Response, ApiError> {
    if let Some(s) = &q.status {
        if !STATUSES.contains(&s.as_str()) {
            return Err(ApiError::InvalidRequest(format!(
                "status must be one of {}",
                STATUSES.join(", ")
            )));
        }
    }
    let (limit, offset) = page_params(q.limit.as_deref(), q.offset.as_deref())?;
    let repo = q.repo.as_ref().map(|r| r.to_ascii_lowercase());
    let issues: Vec<IssueState> = sqlx::query_as(
        "SELECT * FROM issue_state WHERE ($1::text IS NULL OR status = $1) AND ($2::text IS NULL OR agent_id = $2) \
         AND ($3::text IS NULL OR repo = $3) ORDER BY updated_at DESC, stream_id LIMIT $4 OFFSET $5",
    )
    .bind(&q.status)
    .bind(&q.agent_id)
    .bind(&repo)
    .bind(limit + 1)
    .bind(offset)
    .fetch_all(&state.read_pool)
    .await?;
    let mut issues = issues;
    let mut answer = json!({});
    if let Some(next) = cut_page(&mut issues, limit, offset) {
        answer["next_offset"] = json!(next);
    }
    answer["issues"] = json!(issues);
    Ok(Json(answer).into_response())
}

#[derive(Debug, Serialize, sqlx::FromRow)]
pub struct AgentView {
    pub agent_id: String,
    pub last_heartbeat_at: Option<DateTime<Utc>>,
    pub current_stream_id: Option<String>,
    pub status: Option<String>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PageQuery {
    limit: Option<String>,
    offset: Option<String>,
}

/// `GET /v1/agents?limit=…&offset=…`: by agent id; `next_offset` when more follow.
pub async fn list_agents(Scoped(state): Scoped, ApiQuery(q): ApiQuery<PageQuery>) -> Result<Response, ApiError> {
    let (limit, offset) = page_params(q.limit.as_deref(), q.offset.as_deref())?;
    let mut agents: Vec<AgentView> = sqlx::query_as(
        "SELECT agent_id, last_heartbeat_at, current_stream_id, status, updated_at FROM agent_status \
         ORDER BY agent_id LIMIT $1 OFFSET $2",
    )
    .bind(limit + 1)
    .bind(offset)
    .fetch_all(&state.read_pool)
    .await?;
    let mut answer = json!({});
    if let Some(next) = cut_page(&mut agents, limit, offset) {
        answer["next_offset"] = json!(next);
    }
    answer["agents"] = json!(agents);
    Ok(Json(answer).into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UsageQuery {
    stream_id: Option<String>,
    agent_id: Option<String>,
    limit: Option<String>,
    offset: Option<String>,
}

/// A row of `token_usage`.
#[derive(Debug, Serialize, sqlx::FromRow)]
pub struct UsageRow {
    pub stream_id: String,
    pub agent_id: String,
    pub model: String,
    #[serde(flatten)]
    #[sqlx(flatten)]
    pub sums: UsageSums,
}

/// The columns of `token_usage` as `UsageRow` reads them.
const USAGE_COLUMNS: &str = "stream_id, agent_id, model, input_tokens, output_tokens, cache_read_tokens, \
     cache_write_tokens, cost_usd::text AS cost_usd, events";

/// The summed columns `token_usage` and `daily_cost` share, and the total of an answer's rows.
#[derive(Debug, Default, Serialize, sqlx::FromRow)]
pub struct UsageSums {
    pub input_tokens: i64,
    pub output_tokens: i64,
    pub cache_read_tokens: i64,
    pub cache_write_tokens: i64,
    /// Read as text (`USAGE_COLUMNS`): a stored sum too large for a decimal is then an error
    /// for this request, never a panic.
    #[serde(serialize_with = "rig_events::money::serialize_exact")]
    #[sqlx(try_from = "rig_events::money::NumericText")]
    pub cost_usd: Decimal,
    pub events: i64,
}

impl UsageSums {
    /// `self + other`, every sum checked: `None` when one outgrows its type.
    fn checked_add(&self, o: &UsageSums) -> Option<UsageSums> {
        Some(UsageSums {
            input_tokens: self.input_tokens.checked_add(o.input_tokens)?,
            output_tokens: self.output_tokens.checked_add(o.output_tokens)?,
            cache_read_tokens: self.cache_read_tokens.checked_add(o.cache_read_tokens)?,
            cache_write_tokens: self.cache_write_tokens.checked_add(o.cache_write_tokens)?,
            cost_usd: self.cost_usd.checked_add(o.cost_usd)?,
            events: self.events.checked_add(o.events)?,
        })
    }
}

/// Money stays exact only if the answer is written straight to JSON (see
/// `rig_events::money::serialize_exact`), so the answers are structs, not `json!`.
#[derive(Serialize)]
struct UsageAnswer {
    usage: Vec<UsageRow>,
    total: UsageSums,
    /// The `offset` of the next page, when more rows follow.
    #[serde(skip_serializing_if = "Option::is_none")]
    next_offset: Option<i64>,
}

/// `GET /v1/usage?stream_id=…|agent_id=…&limit=…&offset=…`: token usage (token-projector's
/// table); `total` sums the rows listed, `next_offset` says when more follow.
pub async fn usage(Scoped(state): Scoped, ApiQuery(q): ApiQuery<UsageQuery>) -> Result<Response, ApiError> {
    let sid = match &q.stream_id {
        Some(s) => Some(parse_stream_id(s)?.to_string()),
        None => None,
    };
    let (limit, offset) = page_params(q.limit.as_deref(), q.offset.as_deref())?;
    let mut rows: Vec<UsageRow> = sqlx::query_as(&format!(
        "SELECT {USAGE_COLUMNS} FROM token_usage WHERE ($1::text IS NULL OR stream_id = $1) AND ($2::text IS NULL OR agent_id = $2) \
         ORDER BY stream_id, agent_id, model LIMIT $3 OFFSET $4"
    ))
    .bind(&sid)
    .bind(&q.agent_id)
    .bind(limit + 1)
    .bind(offset)
    .fetch_all(&state.read_pool)
    .await?;
    let next_offset = cut_page(&mut rows, limit, offset);
    let total = rows
        .iter()
        .try_fold(UsageSums::default(), |t, r| t.checked_add(&r.sums))
        .ok_or_else(|| {
            ApiError::Internal(
                "the usage rows add up to more than a total can hold; the stored sums need repair".into(),
            )
        })?;
    Ok(Json(UsageAnswer {
        usage: rows,
        total,
        next_offset,
    })
    .into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CostQuery {
    days: Option<String>,
    limit: Option<String>,
    offset: Option<String>,
}

/// A row of `daily_cost`.
#[derive(Debug, Serialize, sqlx::FromRow)]
pub struct DailyCostRow {
    pub day: NaiveDate,
    pub repo: String,
    pub agent_id: String,
    pub model: String,
    #[serde(flatten)]
    #[sqlx(flatten)]
    pub sums: UsageSums,
    pub unpriced_events: i64,
}

/// The columns of `daily_cost` as `DailyCostRow` reads them (money as text, as in `UsageRow`).
const DAILY_COST_COLUMNS: &str = "day, repo, agent_id, model, input_tokens, output_tokens, cache_read_tokens, \
     cache_write_tokens, cost_usd::text AS cost_usd, events, unpriced_events";

#[derive(Serialize)]
struct DailyCostAnswer {
    days: i32,
    costs: Vec<DailyCostRow>,
    #[serde(serialize_with = "rig_events::money::serialize_exact")]
    total_cost_usd: Decimal,
    /// The `offset` of the next page, when more rows follow.
    #[serde(skip_serializing_if = "Option::is_none")]
    next_offset: Option<i64>,
}

/// `GET /v1/costs/daily?days=N&limit=…&offset=…`: the last N UTC days (today included) of
/// `daily_cost`; `total_cost_usd` sums the rows listed, `next_offset` says when more follow.
pub async fn daily_costs(Scoped(state): Scoped, ApiQuery(q): ApiQuery<CostQuery>) -> Result<Response, ApiError> {
    let days = int_param("days", q.days.as_deref(), 1, 3660)?.map_or(7, |d| d as i32);
    let (limit, offset) = page_params(q.limit.as_deref(), q.offset.as_deref())?;
    let mut rows: Vec<DailyCostRow> = sqlx::query_as(&format!(
        "SELECT {DAILY_COST_COLUMNS} FROM daily_cost WHERE day > (now() AT TIME ZONE 'UTC')::date - $1 \
         ORDER BY day, repo, agent_id, model LIMIT $2 OFFSET $3"
    ))
    .bind(days)
    .bind(limit + 1)
    .bind(offset)
    .fetch_all(&state.read_pool)
    .await?;
    let next_offset = cut_page(&mut rows, limit, offset);
    let total_cost_usd = rig_events::money::checked_sum(rows.iter().map(|r| r.sums.cost_usd)).ok_or_else(|| {
        ApiError::Internal("the daily costs add up to more than a total can hold; the stored sums need repair".into())
    })?;
    Ok(Json(DailyCostAnswer {
        days,
        costs: rows,
        total_cost_usd,
        next_offset,
    })
    .into_response())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn bodies_parse_as_serde_json_does_but_refuse_repeated_keys() {
        let same = [
            r#"{"a":1,"b":[true,null,-2,3.5,"s\u00e9"],"c":{"d":{}},"e":18446744073709551615}"#,
            r#"[{"a":1},{"a":2}]"#,
            r#""plain""#,
            r#"{"k":{"a":1},"k2":{"a":1}}"#,
        ];
        for text in same {
            let expected: Value = serde_json::from_str(text).unwrap();
            assert_eq!(parse_json(text.as_bytes()).unwrap(), expected, "{text}");
        }
        for (text, key) in [
            (r#"{"a":1,"a":2}"#, "\"a\""),
            (r#"{"x":[{"k":1,"k":1}]}"#, "\"k\""),
            (r#"{"o":{"deep":{"z":0,"y":1,"z":2}}}"#, "\"z\""),
        ] {
            let Err(ApiError::MalformedJson(detail)) = parse_json(text.as_bytes()) else {
                panic!("{text} was accepted");
            };
            assert!(detail.contains(&format!("the key {key} appears twice")), "{detail}");
        }
        assert!(parse_json(b"{\"a\":1} trailing").is_err());
        assert!(parse_json(b"{\"a\":").is_err());
    }
}
