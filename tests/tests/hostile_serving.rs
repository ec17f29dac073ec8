//! rig-ingest against hostile clients at the HTTP level: slow and idle connections, the
//! connection cap, the token checked before the body, shutdown with idle clients, bounded
//! metric labels, the browser rules of open mode, bounded reads and a bounded dashboard.
#![allow(clippy::unwrap_used)]

use reqwest::StatusCode;
use rig_tests::{enc, get_json, wait_for, wait_http_ok, Proc, TestDb, TestIngest};
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn addr_of(ingest: &TestIngest) -> SocketAddr {
    ingest.base.trim_start_matches("http://").parse().unwrap()
}

/// Reads from `s` until the peer closes the connection or `limit` passes; returns what arrived
/// and whether the connection was closed.
async fn read_until_closed(s: &mut TcpStream, limit: Duration) -> (Vec<u8>, bool) {
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + limit;
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return (out, true),
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
            Err(_) => return (out, false),
        }
    }
}

/// Reads one HTTP answer's head (status line and headers) within `limit`; `None` if none came.
async fn read_head(s: &mut TcpStream, limit: Duration) -> Option<String> {
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + limit;
    let mut buf = [0u8; 4096];
    loop {
        if let Some(end) = out.windows(4).position(|w| w == b"\r\n\r\n") {
            return Some(String::from_utf8_lossy(&out[..end]).into_owned());
        }
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return None,
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
        }
    }
}

fn status_of(head: &str) -> u16 {
    head.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0)
}

async fn post(c: &reqwest::Client, url: &str, body: &Value) -> (StatusCode, Value) {
    let r = c.post(url).json(body).send().await.unwrap();
    let status = r.status();
    (status, r.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn a_client_sending_headers_byte_by_byte_is_cut_off() {
    let db = TestDb::new().await;
    let ingest = TestIngest::start_with(&db, |s| s.ingest.header_read_timeout = Duration::from_secs(1)).await;
    let mut s = TcpStream::connect(addr_of(&ingest)).await.unwrap();
    let head = format!(
        "GET /v1/issues HTTP/1.1\r\nHost: {}\r\nX-Padding: {}\r\n\r\n",
        addr_of(&ingest),
        "a".repeat(200)
    );
    let started = Instant::now();
    let mut cut = false;
    // One byte every 100 ms would take ~25 s to finish the head; the server must hang up long
    // before that.
    for b in head.as_bytes() {
        if s.write_all(&[*b]).await.is_err() {
            cut = true;
            break;
        }
        let (_, closed) = read_until_closed(&mut s, Duration::from_millis(100)).await;
        if closed {
            cut = true;
            break;
        }
        if started.elapsed() > Duration::from_secs(10) {
            break;
        }
    }
    assert!(
        cut,
        "a client still sending its headers after {:?} was not cut off",
        started.elapsed()
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "cut off only after {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn an_unauthenticated_post_is_refused_before_its_body_is_read() {
    let db = TestDb::new().await;
    let ingest = TestIngest::start_with(&db, |s| s.ingest.auth_tokens = vec!["sekrit".to_owned().into()]).await;
    // Headers announcing a body that never comes: a server that reads the body first waits for
    // it; one that checks the token first answers at once. 10 MB is over the body limit, 500 KB
    // under it.
    for len in [10_485_760, 500_000] {
        let mut s = TcpStream::connect(addr_of(&ingest)).await.unwrap();
        let head = format!(
            "POST /v1/events HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {len}\r\n\r\n",
            addr_of(&ingest)
        );
        s.write_all(head.as_bytes()).await.unwrap();
        let answer = read_head(&mut s, Duration::from_secs(5))
            .await
            .unwrap_or_else(|| panic!("no answer within 5 s to a {len}-byte POST without a token"));
        assert_eq!(status_of(&answer), 401, "{answer}");
        // The same on the compat route.
        let mut s = TcpStream::connect(addr_of(&ingest)).await.unwrap();
        let head = head.replace("/v1/events", "/api/events");
        s.write_all(head.as_bytes()).await.unwrap();
        let answer = read_head(&mut s, Duration::from_secs(5)).await.unwrap();
        assert_eq!(status_of(&answer), 401, "{answer}");
    }
    assert_eq!(db.events().await, 0);
}

#[tokio::test]
async fn connections_past_the_cap_wait_for_a_free_slot() {
    let db = TestDb::new().await;
    let ingest = TestIngest::start_with(&db, |s| {
        s.ingest.max_connections = 4;
        s.ingest.header_read_timeout = Duration::from_secs(60);
    })
    .await;
    let addr = addr_of(&ingest);
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(TcpStream::connect(addr).await.unwrap());
    }
    let mut fifth = TcpStream::connect(addr).await.unwrap();
    fifth
        .write_all(format!("GET /healthz HTTP/1.1\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    assert!(
        read_head(&mut fifth, Duration::from_secs(1)).await.is_none(),
        "a fifth connection was served while four were open and the cap is 4"
    );
    drop(held.pop());
    let head = read_head(&mut fifth, Duration::from_secs(5))
        .await
        .expect("served once a slot is free");
    assert_eq!(status_of(&head), 200, "{head}");
}

#[tokio::test]
async fn sigterm_with_idle_clients_exits_within_the_shutdown_deadline() {
    let db = TestDb::new().await;
    let port = rig_tests::free_port();
    let mut ingest = Proc::spawn(
        "rig-ingest",
        &[],
        &[
            ("DATABASE_URL", db.url.clone()),
            ("RIG_INGEST__LISTEN", format!("127.0.0.1:{port}")),
            ("RIG_INGEST__SHUTDOWN_TIMEOUT", "2s".into()),
            ("RIG_INGEST__HEADER_READ_TIMEOUT", "60s".into()),
        ],
    );
    let base = format!("http://127.0.0.1:{port}");
    wait_http_ok(&format!("{base}/healthz"), Duration::from_secs(30)).await;
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    // One keep-alive client that was answered and stays connected, one that connected and said
    // nothing, one that stopped halfway through its headers, and one in the middle of a request whose body it finishes after the signal.
    let mut kept = TcpStream::connect(addr).await.unwrap();
    kept.write_all(format!("GET /healthz HTTP/1.1\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    assert_eq!(
        status_of(&read_head(&mut kept, Duration::from_secs(5)).await.unwrap()),
        200
    );
    let _silent = TcpStream::connect(addr).await.unwrap();
    let mut stalled = TcpStream::connect(addr).await.unwrap();
    stalled
        .write_all(format!("GET /healthz HTTP/1.1\r\nHost: {addr}\r\n").as_bytes())
        .await
        .unwrap();
    let body = json!({"stream_id": "agent:dev-t", "events": [{"type": "HEARTBEAT", "data": {"agent_id": "dev-t"}}]})
        .to_string();
    let mut busy = TcpStream::connect(addr).await.unwrap();
    busy.write_all(
        format!(
            "POST /v1/events HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    busy.write_all(&body.as_bytes()[..10]).await.unwrap();
    // Wait until the server has the request in hand (the connection is accepted and reading).
    tokio::time::sleep(Duration::from_millis(200)).await;

    let signalled = Instant::now();
    ingest.signal(libc::SIGTERM);
    busy.write_all(&body.as_bytes()[10..]).await.unwrap();
    let head = read_head(&mut busy, Duration::from_secs(5))
        .await
        .expect("the in-flight request is answered after SIGTERM");
    assert_eq!(status_of(&head), 201, "{head}");
    let status = tokio::task::spawn_blocking(move || {
        let r = ingest.terminate(Duration::from_secs(6));
        (r.map_err(|e| e.to_string()), ingest)
    })
    .await
    .unwrap();
    let waited = signalled.elapsed();
    let (status, _ingest) = status;
    let status = status.unwrap_or_else(|e| panic!("{e}"));
    assert!(status.success(), "exit status {status:?}");
    assert!(
        waited < Duration::from_secs(5),
        "exited only after {waited:?} (deadline 2 s)"
    );
    assert_eq!(db.events().await, 1);
}

#[tokio::test]
async fn the_method_label_takes_known_methods_only() {
    let db = TestDb::new().await;
    let ingest = TestIngest::start(&db).await;
    let c = reqwest::Client::new();
    for i in 0..30 {
        let m = reqwest::Method::from_bytes(format!("ZQX{i}METHOD").as_bytes()).unwrap();
        let _ = c.request(m, ingest.url("/v1/issues")).send().await.unwrap();
    }
    let metrics = rig_tests::get_text(&c, &ingest.url("/metrics")).await;
    let leaked: Vec<&str> = metrics.lines().filter(|l| l.contains("ZQX")).collect();
    assert!(leaked.is_empty(), "client methods became labels: {leaked:?}");
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("rig_ingest_requests_total") && l.contains("method=\"other\"")),
        "unknown methods are counted as `other`"
    );
}

#[tokio::test]
async fn open_mode_refuses_what_a_browser_page_could_send() {
    let db = TestDb::new().await;
    let ingest = TestIngest::start(&db).await;
    let addr = addr_of(&ingest);
    let c = reqwest::Client::new();
    let body = json!({"stream_id": "agent:dev-b", "events": [{"type": "HEARTBEAT", "data": {"agent_id": "dev-b"}}]});

    // A form or fetch() with text/plain needs no CORS preflight: refused however valid the JSON.
    for (path, ct) in [
        ("/v1/events", "text/plain"),
        ("/v1/events", "application/x-www-form-urlencoded"),
        ("/api/events", "text/plain"),
        ("/v1/github/webhook", "text/plain"),
    ] {
        let r = c
            .post(ingest.url(path))
            .header("content-type", ct)
            .body(body.to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE, "{path} with {ct}");
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["error"], "unsupported_media_type", "{v}");
    }
    let r = c
        .post(ingest.url("/v1/events"))
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE, "no Content-Type at all");

    // Another site's page.
    for (method, path) in [("POST", "/v1/events"), ("GET", "/v1/issues"), ("GET", "/dashboard")] {
        let r = c
            .request(method.parse().unwrap(), ingest.url(path))
            .header("origin", "http://evil.example")
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::FORBIDDEN, "{method} {path} from another origin");
    }
    // DNS rebinding: a name that resolves here but is not ours.
    for host in [
        "evil.example",
        "evil.example:80",
        &format!("rebind.example:{}", addr.port()),
    ] {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(format!("GET /v1/issues HTTP/1.1\r\nHost: {host}\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let head = read_head(&mut s, Duration::from_secs(5)).await.unwrap();
        assert_eq!(status_of(&head), 421, "Host {host}: {head}");
    }
    assert_eq!(db.events().await, 0, "nothing refused was written");

    // Our own name, the same origin, and localhost are served.
    let own = format!("http://{addr}");
    let (s, v) = post(&c, &ingest.url("/v1/events"), &body).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let r = c
        .post(ingest.url("/v1/events"))
        .header("origin", &own)
        .header("content-type", "application/json; charset=utf-8")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET /v1/issues HTTP/1.1\r\nHost: localhost:{}\r\n\r\n", addr.port()).as_bytes())
        .await
        .unwrap();
    assert_eq!(
        status_of(&read_head(&mut s, Duration::from_secs(5)).await.unwrap()),
        200
    );
}

#[tokio::test]
async fn token_mode_keeps_the_origin_rule_and_takes_any_declared_type() {
    let db = TestDb::new().await;
    let ingest = TestIngest::start_with(&db, |s| s.ingest.auth_tokens = vec!["sekrit".to_owned().into()]).await;
    let c = reqwest::Client::new();
    let body = json!({"stream_id": "agent:dev-b", "events": [{"type": "HEARTBEAT", "data": {"agent_id": "dev-b"}}]});
    // A foreign page's Origin is refused, token or not.
    let r = c
        .post(ingest.url("/v1/events"))
        .bearer_auth("sekrit")
        .header("origin", "https://evil.example")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    // Without the token the answer is 401 whatever the Content-Type.
    let r = c
        .post(ingest.url("/v1/events"))
        .header("content-type", "text/plain")
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    // With it, the token proves the sender (no page can set Authorization cross-origin without a
    // preflight): a script that declares no type, or text/plain, is served like a JSON client.
    for ct in [None, Some("text/plain"), Some("application/json")] {
        let mut req = c
            .post(ingest.url("/v1/events"))
            .bearer_auth("sekrit")
            .body(body.to_string());
        if let Some(ct) = ct {
            req = req.header("content-type", ct);
        }
        let r = req.send().await.unwrap();
        assert_eq!(r.status(), StatusCode::CREATED, "Content-Type {ct:?}");
    }
    assert_eq!(db.count("SELECT count(*) FROM events").await, 3);
}

/// Appends `n` events to `stream` in requests of up to 1000.
async fn fill(c: &reqwest::Client, url: &str, stream: &str, ty: &str, n: usize) {
    let agent = "dev-fill";
    let mut left = n;
    while left > 0 {
        let k = left.min(1000);
        let events: Vec<Value> = (0..k)
            .map(|_| json!({"type": ty, "data": {"agent_id": agent}}))
            .collect();
        let (s, v) = post(c, url, &json!({"stream_id": stream, "events": events})).await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
        left -= k;
    }
}

#[tokio::test]
async fn stream_reads_are_paged_by_default_and_say_where_to_go_on() {
    let db = TestDb::new().await;
    let ingest = TestIngest::start(&db).await;
    let c = reqwest::Client::new();
    let issue = "acme/long#1";
    let (s, _) = post(
        &c,
        &ingest.url("/v1/events"),
        &json!({"stream_id": issue, "events": [{"type": "ISSUE_APPROVED", "data": {"title": "long"}}]}),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED);
    fill(&c, &ingest.url("/v1/events"), issue, "HEARTBEAT", 1499).await;
    fill(&c, &ingest.url("/v1/events"), "agent:dev-long", "HEARTBEAT", 1500).await;

    for sid in [issue, "agent:dev-long"] {
        let (s, v) = get_json(&c, &ingest.url(&format!("/v1/streams/{}", enc(sid)))).await;
        assert_eq!(s, StatusCode::OK, "{v}");
        assert_eq!(v["events"].as_array().unwrap().len(), 1000, "{sid}: the default page");
        assert_eq!(v["next_from_version"], 1001, "{sid}");
        assert_eq!(v["version"], 1500, "{sid}: the whole stream's version");
        // Paging on to the end.
        let (_, rest) = get_json(&c, &ingest.url(&format!("/v1/streams/{}?from_version=1001", enc(sid)))).await;
        assert_eq!(rest["events"].as_array().unwrap().len(), 500);
        assert!(
            rest.get("next_from_version").is_none(),
            "{sid}: nothing follows the last page"
        );
        assert_eq!(rest["events"][0]["version"], 1001);
    }
    // The issue's state is the whole stream's, up to a cut too.
    let (_, v) = get_json(&c, &ingest.url(&format!("/v1/streams/{}?limit=2", enc(issue)))).await;
    assert_eq!(v["state"]["version"], 1500);
    assert_eq!(v["state"]["title"], "long");
    assert_eq!(v["next_from_version"], 3);
    let (_, v) = get_json(
        &c,
        &ingest.url(&format!("/v1/streams/{}?to_version=1200&from_version=1190", enc(issue))),
    )
    .await;
    assert_eq!(v["state"]["version"], 1200);
    assert_eq!(v["version"], 1200);
    assert_eq!(v["events"].as_array().unwrap().len(), 11);
    // Past the maximum: refused, naming the parameter.
    let (s, v) = get_json(&c, &ingest.url(&format!("/v1/streams/{}?limit=10001", enc(issue)))).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    assert!(v["detail"].as_str().unwrap().contains("limit"), "{v}");
}

#[tokio::test]
async fn lists_take_a_limit_and_say_when_more_follow() {
    let db = TestDb::new().await;
    let ingest = TestIngest::start(&db).await;
    let c = reqwest::Client::new();
    for i in 1..=3 {
        let agent = format!("dev-{i}");
        let (s, v) = post(
            &c,
            &ingest.url("/v1/events"),
            &json!({"stream_id": format!("acme/list#{i}"), "events": [
                {"type": "ISSUE_APPROVED", "data": {"title": "t"}},
                {"type": "ISSUE_ASSIGNED", "data": {"agent_id": agent}},
                {"type": "HEARTBEAT", "data": {"agent_id": agent}},
                {"type": "TOKEN_USAGE", "data": {"agent_id": agent, "model": "m", "input_tokens": 1, "output_tokens": 1, "cost_usd": "0.01"}}]}),
        )
        .await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
    }
    for list in ["issues", "agents"] {
        let (s, first) = get_json(&c, &ingest.url(&format!("/v1/{list}?limit=2"))).await;
        assert_eq!(s, StatusCode::OK, "{first}");
        assert_eq!(first[list].as_array().unwrap().len(), 2, "{first}");
        assert_eq!(first["next_offset"], 2, "{list}: {first}");
        let (_, rest) = get_json(&c, &ingest.url(&format!("/v1/{list}?limit=2&offset=2"))).await;
        assert_eq!(rest[list].as_array().unwrap().len(), 1, "{rest}");
        assert!(rest.get("next_offset").is_none(), "{list}: {rest}");
        let (s, v) = get_json(&c, &ingest.url(&format!("/v1/{list}?limit=10001"))).await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{list}: {v}");
    }
    // The projector tables: written here by hand, as the projectors would.
    for i in 1..=3 {
        sqlx::query(
            "INSERT INTO token_usage (stream_id, agent_id, model, input_tokens, output_tokens, cache_read_tokens, \
             cache_write_tokens, cost_usd, events) VALUES ($1, 'a', 'm', 1, 1, 0, 0, 1, 1)",
        )
        .bind(format!("acme/list#{i}"))
        .execute(&db.pool)
        .await
        .unwrap();
        sqlx::query(
            "INSERT INTO daily_cost (day, repo, agent_id, model, input_tokens, output_tokens, cache_read_tokens, \
             cache_write_tokens, cost_usd, events, unpriced_events) \
             VALUES ((now() AT TIME ZONE 'UTC')::date, 'acme/list', $1, 'm', 1, 1, 0, 0, 1, 1, 0)",
        )
        .bind(format!("a{i}"))
        .execute(&db.pool)
        .await
        .unwrap();
    }
    for (path, key) in [
        ("/v1/usage?limit=2", "usage"),
        ("/v1/costs/daily?days=1&limit=2", "costs"),
    ] {
        let (s, v) = get_json(&c, &ingest.url(path)).await;
        assert_eq!(s, StatusCode::OK, "{v}");
        assert_eq!(v[key].as_array().unwrap().len(), 2, "{path}: {v}");
        assert_eq!(v["next_offset"], 2, "{path}: {v}");
    }
}

#[tokio::test]
async fn a_huge_title_does_not_make_a_huge_dashboard() {
    let db = TestDb::new().await;
    let ingest = TestIngest::start(&db).await;
    let huge = "T".repeat(900_000);
    sqlx::query(
        "INSERT INTO issue_state (stream_id, repo, issue_number, status, agent_id, title, version, first_event_at, updated_at) \
         VALUES ('acme/huge#1', 'acme/huge', 1, 'approved', $2, $1, 1, now(), now())",
    )
    .bind(&huge)
    .bind("A".repeat(100_000))
    .execute(&db.pool)
    .await
    .unwrap();
    let c = reqwest::Client::new();
    for path in ["/dashboard", "/dashboard?issue=acme%2Fhuge%231"] {
        let r = c.get(ingest.url(path)).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        let page = r.text().await.unwrap();
        assert!(page.contains("TTTTTTTTTT"), "the title's beginning is shown");
        assert!(page.len() < 100_000, "{path}: the page is {} bytes", page.len());
    }
}

#[tokio::test]
async fn readers_of_a_long_stream_get_bounded_answers_while_appends_go_on() {
    let db = TestDb::new().await;
    // The real binary: ingest's threads are its own, as in production, not the test's.
    let port = rig_tests::free_port();
    let _proc = Proc::spawn(
        "rig-ingest",
        &[],
        &[
            ("DATABASE_URL", db.url.clone()),
            ("RIG_INGEST__LISTEN", format!("127.0.0.1:{port}")),
        ],
    );
    let base = format!("http://127.0.0.1:{port}");
    wait_http_ok(&format!("{base}/healthz"), Duration::from_secs(30)).await;
    let url = |path: &str| format!("{base}{path}");
    let c = reqwest::Client::new();
    let sid = "acme/burst#1";
    let (s, _) = post(
        &c,
        &url("/v1/events"),
        &json!({"stream_id": sid, "events": [{"type": "ISSUE_APPROVED", "data": {"title": "burst"}}]}),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED);
    // 5,000 events: a default page (1,000) is a fifth of it. The bench's read-burst phase measures
    // the 20,000-event case and the append latency; this test checks behaviour, not timing.
    fill(&c, &url("/v1/events"), sid, "HEARTBEAT", 4_999).await;

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut readers = Vec::new();
    for r in 0..32 {
        let c = c.clone();
        let stop = stop.clone();
        let url = if r % 2 == 0 {
            url(&format!("/v1/streams/{}", enc(sid)))
        } else {
            url(&format!("/v1/streams/{}?to_version={}", enc(sid), 2_000 + r))
        };
        readers.push(tokio::spawn(async move {
            let (mut ok, mut busy) = (0u32, 0u32);
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let resp = c.get(&url).send().await.unwrap();
                match resp.status() {
                    StatusCode::OK => {
                        let v: Value = resp.json().await.unwrap();
                        let n = v["events"].as_array().unwrap().len();
                        assert!(n <= 1000, "a read answered {n} events");
                        assert!(v["next_from_version"].as_i64().is_some(), "more follow");
                        ok += 1;
                    }
                    // Readers queued past the read pool's wait are told to come back.
                    StatusCode::SERVICE_UNAVAILABLE => busy += 1,
                    other => panic!("a read answered {other}"),
                }
            }
            (ok, busy)
        }));
    }
    // Appends from 4 clients while the readers run: every one must succeed.
    let mut writers = Vec::new();
    for w in 0..4 {
        let c = c.clone();
        let url = url("/v1/events");
        writers.push(tokio::spawn(async move {
            for _ in 0..10 {
                let body = json!({"stream_id": format!("agent:burst-{w}"),
                                  "events": [{"type": "HEARTBEAT", "data": {"agent_id": format!("burst-{w}")}}]});
                let (s, v) = post(&c, &url, &body).await;
                assert_eq!(s, StatusCode::CREATED, "{v}");
            }
        }));
    }
    for w in writers {
        w.await.unwrap();
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut reads = 0;
    for r in readers {
        reads += r.await.unwrap().0;
    }
    assert!(reads > 0, "some reads were answered");
    let n = wait_for("the appends to be stored", Duration::from_secs(5), || async {
        let n = db
            .count("SELECT count(*) FROM events WHERE stream_id LIKE 'agent:burst-%'")
            .await;
        (n == 40).then_some(n)
    })
    .await;
    assert_eq!(n, 40);
}

#[tokio::test]
async fn reads_run_on_their_own_pool_with_a_statement_timeout() {
    let db = TestDb::new().await;
    let mut settings = rig_ops::Settings::default();
    settings.ingest.read_statement_timeout = Duration::from_millis(1500);
    settings.ingest.read_pool_size = 3;
    let reads = rig_ingest::read_pool(&db.pool, &settings);
    let timeout: String = sqlx::query_scalar("SHOW statement_timeout")
        .fetch_one(&reads)
        .await
        .unwrap();
    assert_eq!(timeout, "1500ms");
    assert_eq!(reads.options().get_max_connections(), 3);
    // A statement past the timeout is cancelled by Postgres, not left running.
    let slow = sqlx::query("SELECT pg_sleep(10)").execute(&reads).await;
    let code = slow
        .unwrap_err()
        .into_database_error()
        .and_then(|e| e.code().map(|c| c.into_owned()));
    assert_eq!(code.as_deref(), Some("57014"), "query_canceled");
}
