//! The bodies the load clients send and how they send them.

use super::*;
use std::net::SocketAddr;

pub(super) fn append_body(stream: &str, events: usize) -> String {
    append_body_with(stream, events, USAGE_DATA)
}

pub(super) fn append_body_with(stream: &str, events: usize, data: &str) -> String {
    let one = format!(r#"{{"type":"TOKEN_USAGE","data":{data}}}"#);
    let list = vec![one; events].join(",");
    format!(r#"{{"stream_id":"{stream}","events":[{list}]}}"#)
}

/// What a load phase's clients send.
#[derive(Clone, Copy)]
pub(super) enum Body {
    /// `USAGE_DATA`: appended, 201.
    Valid,
    /// `USAGE_DATA` with the field validation checks last made invalid: refused, 422
    /// (`http_refused_64`, the HTTP path without the database).
    Refused,
}

pub(super) const REFUSED_USAGE_DATA: &str = r#"{"agent_id":"bench-agent","model":"claude-sonnet-4-5","input_tokens":1200,"output_tokens":350,"cache_read_tokens":-1}"#;

pub(super) async fn post(http: &reqwest::Client, url: &str, body: bytes::Bytes) -> Result<(u16, bytes::Bytes), String> {
    let r = http
        .post(url)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(body)
        .send()
        .await
        .map_err(|e| format!("request failed: {e}"))?;
    let status = r.status().as_u16();
    // Reading the body to the end lets the connection be reused.
    let bytes = r.bytes().await.map_err(|e| format!("reading the answer failed: {e}"))?;
    Ok((status, bytes))
}

/// One append over the client's own keep-alive connection (`http_load`), reconnecting after a
/// failure.
pub(super) async fn post_raw(
    conn: &mut Option<crate::http_load::Conn>,
    addr: SocketAddr,
    body: &[u8],
) -> Result<(u16, Vec<u8>), String> {
    if conn.is_none() {
        *conn = Some(crate::http_load::Conn::connect(addr).await?);
    }
    let c = conn.as_mut().expect("just connected");
    let r = c.post("/v1/events", body).await;
    if r.is_err() {
        *conn = None;
    }
    r
}
