//! Every error the API returns, mapped to its status code in one place. Bodies are JSON with an
//! `error` code and a human `detail`; SQL text never reaches a client.

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use rig_log::writer::AppendError;
use serde_json::{json, Value};

#[derive(Debug)]
pub enum ApiError {
    MalformedJson(String),
    InvalidRequest(String),
    InvalidStreamId(String),
    InvalidEvent {
        index: usize,
        detail: String,
    },
    TooManyEvents(usize),
    BodyTooLarge(usize),
    Unauthorized(&'static str),
    NotFound(String),
    Append(AppendError),
    Database(sqlx::Error),
    BadSignature(&'static str),
    /// Something that should not happen, such as stored data that cannot be read: logged with
    /// its detail, answered 500 without it.
    Internal(String),
    /// A write whose body is not declared `application/json`.
    UnsupportedMediaType(&'static str),
    /// A request from another site's page (its `Origin`).
    ForbiddenOrigin(String),
    /// A `Host` that is not this server's name (DNS rebinding).
    MisdirectedRequest(String),
    /// `ingest.request_timeout` passed before the answer was ready.
    RequestTimeout,
    /// Every read slot stayed taken while the read waited.
    Busy(&'static str),
    /// The path names no tenant this caller may use: a malformed or reserved slug, an unknown or
    /// disabled tenant, or another tenant than the token's. One answer for all, naming nothing.
    UnknownTenant,
}

impl From<AppendError> for ApiError {
    fn from(e: AppendError) -> Self {
        ApiError::Append(e)
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> Self {
        ApiError::Database(e)
    }
}

impl ApiError {
    fn parts(&self) -> (StatusCode, Value) {
        use ApiError::*;
        let body = |code: &str, detail: String| json!({"error": code, "detail": detail});
        match self {
            MalformedJson(d) => (StatusCode::BAD_REQUEST, body("malformed_json", d.clone())),
            InvalidRequest(d) => (StatusCode::UNPROCESSABLE_ENTITY, body("invalid_request", d.clone())),
            InvalidStreamId(d) => (StatusCode::UNPROCESSABLE_ENTITY, body("invalid_stream_id", d.clone())),
            InvalidEvent { index, detail } => (
                StatusCode::UNPROCESSABLE_ENTITY,
                json!({"error": "invalid_event", "index": index, "detail": detail}),
            ),
            TooManyEvents(n) => (
                StatusCode::UNPROCESSABLE_ENTITY,
                body(
                    "too_many_events",
                    format!("{n} events in one request; at most 1000 are allowed, split the request"),
                ),
            ),
            BodyTooLarge(max) => (
                StatusCode::PAYLOAD_TOO_LARGE,
                body(
                    "body_too_large",
                    format!("the body is larger than ingest.max_body_bytes ({max} bytes)"),
                ),
            ),
            Unauthorized(d) => (StatusCode::UNAUTHORIZED, body("unauthorized", (*d).to_owned())),
            BadSignature(d) => (StatusCode::UNAUTHORIZED, body("bad_signature", (*d).to_owned())),
            NotFound(d) => (StatusCode::NOT_FOUND, body("not_found", d.clone())),
            UnsupportedMediaType(d) => (
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                body("unsupported_media_type", (*d).to_owned()),
            ),
            ForbiddenOrigin(d) => (StatusCode::FORBIDDEN, body("forbidden_origin", d.clone())),
            MisdirectedRequest(d) => (StatusCode::MISDIRECTED_REQUEST, body("misdirected_request", d.clone())),
            Busy(d) => (StatusCode::SERVICE_UNAVAILABLE, body("busy", (*d).to_owned())),
            UnknownTenant => (
                StatusCode::NOT_FOUND,
                body(
                    "unknown_tenant",
                    "no such tenant (or not one this token may use)".into(),
                ),
            ),
            RequestTimeout => (
                StatusCode::REQUEST_TIMEOUT,
                body(
                    "request_timeout",
                    "the request took longer than ingest.request_timeout; retry (with the same event ids)".into(),
                ),
            ),
            Append(e) => match e {
                AppendError::WrongExpectedVersion { expected, current } => (
                    StatusCode::CONFLICT,
                    json!({"error": "wrong_expected_version", "expected_version": expected,
                           "current_version": current, "detail": e.to_string()}),
                ),
                AppendError::DuplicateEventId { event_id, detail } => (
                    StatusCode::CONFLICT,
                    json!({"error": "duplicate_event_id", "event_id": event_id, "detail": detail}),
                ),
                AppendError::AlreadyAssigned { agent_id } => (
                    StatusCode::CONFLICT,
                    json!({"error": "already_assigned", "agent_id": agent_id,
                           "detail": format!("the issue is held by agent {agent_id}; it must be unassigned first")}),
                ),
                AppendError::Unavailable(_) => unavailable(),
                AppendError::Internal(d) => (StatusCode::INTERNAL_SERVER_ERROR, body("internal", d.clone())),
            },
            Internal(d) => {
                tracing::error!(detail = %d, "internal error");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    body(
                        "internal",
                        "the server could not answer this request; see its log".into(),
                    ),
                )
            }
            Database(e) if rig_log::db::is_transient(e) => unavailable(),
            Database(e @ (sqlx::Error::ColumnDecode { .. } | sqlx::Error::Decode(_))) => {
                tracing::error!(error = %e, "a stored value could not be read");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    body(
                        "internal",
                        "a stored value could not be read; the server's log names it".into(),
                    ),
                )
            }
            Database(e) => {
                tracing::error!(error = %e, "database error");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    body("internal", "the database refused the request".into()),
                )
            }
        }
    }
}

fn unavailable() -> (StatusCode, Value) {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        json!({"error": "database_unavailable", "detail": "the database is unavailable; retry with the same event ids"}),
    )
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, body) = self.parts();
        let mut resp = (status, Json(body)).into_response();
        if status == StatusCode::UNAUTHORIZED {
            resp.headers_mut()
                .insert(header::WWW_AUTHENTICATE, header::HeaderValue::from_static("Bearer"));
        }
        if status == StatusCode::SERVICE_UNAVAILABLE {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
        }
        resp
    }
}
