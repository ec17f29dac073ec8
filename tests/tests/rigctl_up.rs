//! `rigctl up`: finds the database, migrates, starts every process of the Procfile, serves, and
//! stops all of them cleanly on Ctrl-C (SIGINT), leaving no process behind.
#![allow(clippy::unwrap_used)]

use rig_tests::{processes_on_database, procfile_workers, wait_for, wait_http_ok, RigctlUp, SystemPorts, TestDb};
use std::time::Duration;

#[tokio::test]
async fn rigctl_up_starts_everything_and_ctrl_c_stops_it_all() {
    let db = TestDb::new().await;
    let workers = procfile_workers();
    let ports = SystemPorts::new();
    let mut up = RigctlUp::spawn(&["up"], &ports.env(&db), &db.url);
    let up = &mut up.proc;
    wait_http_ok(
        &format!("http://127.0.0.1:{}/readyz", ports.ingest),
        Duration::from_secs(60),
    )
    .await;
    let expected = workers.iter().filter(|w| w.as_str() != "rigctl").count();
    let running = wait_for("every Procfile process to run", Duration::from_secs(30), || async {
        let pids = processes_on_database(&db.url);
        // rigctl itself got DATABASE_URL from the test too.
        (pids.len() > expected).then_some(pids)
    })
    .await;
    assert!(running.len() > expected, "{running:?}");

    up.signal(libc::SIGINT);
    let status = up.terminate(Duration::from_secs(30)).unwrap();
    assert!(
        status.success(),
        "rigctl up exits 0 after Ctrl-C; log:\n{}",
        up.log_text()
    );
    let left = wait_for("no process left behind", Duration::from_secs(10), || async {
        let pids = processes_on_database(&db.url);
        pids.is_empty().then_some(pids)
    })
    .await;
    assert!(left.is_empty());
    let log = up.log_text();
    assert!(log.contains("all stopped"), "{log}");
}
