//! The bench's load generator: one bare HTTP/1.1 keep-alive connection per simulated client.
//!
//! The load generator shares the machine's 2 cores with ingest and Postgres, so whatever it
//! spends per request is taken from what it measures. A general client (reqwest: connection
//! pool, header maps, body streams) cost ~35 µs of CPU per request here; this one writes a
//! prebuilt request and parses the answer in place with `httparse`, as wrk does, for a few µs.

use std::net::SocketAddr;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub struct Conn {
    stream: TcpStream,
    host: String,
    buf: Vec<u8>,
}

impl Conn {
    pub async fn connect(addr: SocketAddr) -> Result<Conn, String> {
        let stream = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect to {addr}: {e}"))?;
        stream.set_nodelay(true).map_err(|e| e.to_string())?;
        Ok(Conn {
            stream,
            host: addr.to_string(),
            buf: Vec::with_capacity(4096),
        })
    }

    /// POSTs a JSON body to `path`; returns the status and the answer's body.
    pub async fn post(&mut self, path: &str, body: &[u8]) -> Result<(u16, Vec<u8>), String> {
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            self.host,
            body.len()
        );
        let mut req = Vec::with_capacity(head.len() + body.len());
        req.extend_from_slice(head.as_bytes());
        req.extend_from_slice(body);
        self.stream
            .write_all(&req)
            .await
            .map_err(|e| format!("request failed: {e}"))?;
        self.read_response().await
    }

    /// GETs `path`; returns the status and the answer's body.
    pub async fn get(&mut self, path: &str) -> Result<(u16, Vec<u8>), String> {
        let head = format!("GET {path} HTTP/1.1\r\nHost: {}\r\n\r\n", self.host);
        self.stream
            .write_all(head.as_bytes())
            .await
            .map_err(|e| format!("request failed: {e}"))?;
        self.read_response().await
    }

    async fn read_response(&mut self) -> Result<(u16, Vec<u8>), String> {
        self.buf.clear();
        loop {
            let mut headers = [httparse::EMPTY_HEADER; 32];
            let mut resp = httparse::Response::new(&mut headers);
            match resp.parse(&self.buf) {
                Ok(httparse::Status::Complete(head_len)) => {
                    let status = resp.code.unwrap_or(0);
                    let len = resp
                        .headers
                        .iter()
                        .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                        .and_then(|h| std::str::from_utf8(h.value).ok()?.trim().parse::<usize>().ok())
                        .ok_or("the answer has no Content-Length")?;
                    while self.buf.len() < head_len + len {
                        self.fill().await?;
                    }
                    return Ok((status, self.buf[head_len..head_len + len].to_vec()));
                }
                Ok(httparse::Status::Partial) => self.fill().await?,
                Err(e) => return Err(format!("malformed answer: {e}")),
            }
        }
    }

    async fn fill(&mut self) -> Result<(), String> {
        let mut chunk = [0u8; 4096];
        let n = self
            .stream
            .read(&mut chunk)
            .await
            .map_err(|e| format!("reading the answer failed: {e}"))?;
        if n == 0 {
            return Err("the server closed the connection".into());
        }
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(())
    }
}
