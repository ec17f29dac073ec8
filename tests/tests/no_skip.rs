//! The no-skip guarantee, proven the hard way: two real `rig-ingest` processes append
//! to one database under concurrent load, while a test-only trigger makes chosen append
//! transactions slow (sleeping after their positions were drawn) or roll back. A reader tails the
//! log exactly as consumers do (`position > checkpoint`, bounded batches) and must see every
//! committed event exactly once, in order, and nothing that was not committed.
#![allow(clippy::unwrap_used)]

use rig_tests::{free_port, wait_http_ok, Proc, TestDb};
use serde_json::{json, Value};
use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use uuid::Uuid;

const CHAOS_TRIGGER: &str = r#"
CREATE FUNCTION test_chaos() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    -- NEW.position is already drawn here: sleeping holds a low position uncommitted while
    -- others would commit higher ones (the hazard), and raising rolls the whole append back.
    IF NEW.data ? 'sleep_ms' THEN PERFORM pg_sleep((NEW.data->>'sleep_ms')::int / 1000.0); END IF;
    IF NEW.data ? 'fail' THEN RAISE EXCEPTION 'chaos: rolled back on purpose'; END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER test_chaos BEFORE INSERT ON events FOR EACH ROW EXECUTE FUNCTION test_chaos();
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_tailing_reader_sees_every_committed_event_exactly_once() {
    let db = TestDb::new().await;
    sqlx::raw_sql(CHAOS_TRIGGER).execute(&db.pool).await.unwrap();

    let ports = [free_port(), free_port()];
    let _ingests: Vec<Proc> = ports
        .iter()
        .map(|p| {
            Proc::spawn(
                "rig-ingest",
                &[],
                &[
                    ("DATABASE_URL", db.url.clone()),
                    ("RIG_INGEST__LISTEN", format!("127.0.0.1:{p}")),
                ],
            )
        })
        .collect();
    for p in ports {
        wait_http_ok(&format!("http://127.0.0.1:{p}/readyz"), Duration::from_secs(30)).await;
    }

    // The reader: tails like a consumer, from its own checkpoint, in small batches.
    let done = Arc::new(AtomicBool::new(false));
    let reader = {
        let pool = db.pool.clone();
        let done = done.clone();
        tokio::spawn(async move {
            let mut checkpoint = 0i64;
            let mut seen: Vec<(i64, Uuid)> = Vec::new();
            loop {
                let finished = done.load(Ordering::SeqCst);
                let batch: Vec<(i64, Uuid)> = sqlx::query_as(
                    "SELECT position, event_id FROM events WHERE position > $1 ORDER BY position LIMIT 7",
                )
                .bind(checkpoint)
                .fetch_all(&pool)
                .await
                .unwrap();
                if let Some(last) = batch.last() {
                    checkpoint = last.0;
                    seen.extend(batch);
                } else if finished {
                    return seen;
                } else {
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            }
        })
    };

    // Writers: 24 clients spread over both ingests; some appends sleep inside their transaction,
    // some roll back.
    let client = reqwest::Client::new();
    let writers: Vec<_> = (0..24)
        .map(|w| {
            let client = client.clone();
            let port = ports[w % 2];
            tokio::spawn(async move {
                let mut acked: Vec<Uuid> = Vec::new();
                let mut refused = 0;
                for i in 0..25 {
                    let mut data = json!({"writer": w, "i": i});
                    match (w + i) % 9 {
                        0 => data["sleep_ms"] = json!(150),
                        4 => data["fail"] = json!(true),
                        _ => {}
                    }
                    let n = 1 + (i % 3);
                    let ids: Vec<Uuid> = (0..n).map(|_| Uuid::new_v4()).collect();
                    let events: Vec<Value> = ids
                        .iter()
                        .map(|id| json!({"id": id, "type": "CHAOS_TEST", "data": data}))
                        .collect();
                    let body = json!({"stream_id": format!("agent:writer-{w}-{}", i % 4), "events": events});
                    let r = client
                        .post(format!("http://127.0.0.1:{port}/v1/events"))
                        .json(&body)
                        .send()
                        .await
                        .unwrap();
                    if r.status().is_success() {
                        acked.extend(ids);
                    } else {
                        refused += 1;
                    }
                }
                (acked, refused)
            })
        })
        .collect();
    let mut acked: HashSet<Uuid> = HashSet::new();
    let mut refused = 0;
    for w in writers {
        let (ids, r) = w.await.unwrap();
        acked.extend(ids);
        refused += r;
    }
    done.store(true, Ordering::SeqCst);
    let seen = reader.await.unwrap();

    let stored: HashSet<Uuid> = sqlx::query_scalar::<_, Uuid>("SELECT event_id FROM events")
        .fetch_all(&db.pool)
        .await
        .unwrap()
        .into_iter()
        .collect();
    let seen_ids: Vec<Uuid> = seen.iter().map(|(_, id)| *id).collect();
    let seen_set: HashSet<Uuid> = seen_ids.iter().copied().collect();
    assert!(refused > 0, "some appends must have been rolled back on purpose");
    assert!(acked.len() > 500, "enough load: {} acknowledged events", acked.len());
    assert_eq!(seen_ids.len(), seen_set.len(), "the reader saw no event twice");
    assert!(seen.windows(2).all(|w| w[0].0 < w[1].0), "positions arrive in order");
    assert_eq!(
        seen_set, stored,
        "the reader saw exactly the committed events (no skip)"
    );
    assert_eq!(stored, acked, "every acknowledged event is stored and nothing else is");
}
