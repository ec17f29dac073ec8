//! `rigctl up`: finds the database, migrates, starts every process of the Procfile, serves, and
//! stops all of them cleanly on Ctrl-C (SIGINT), leaving no process behind.
#![allow(clippy::unwrap_used)]

use rig_tests::{bin, processes_with_env, wait_for, wait_http_ok, Proc, SystemPorts, TestDb};
use std::time::Duration;

#[tokio::test]
async fn rigctl_up_starts_everything_and_ctrl_c_stops_it_all() {
    let db = TestDb::new().await;
    // Build what the Procfile names, so rigctl finds fresh binaries beside itself.
    let procfile = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../Procfile")).unwrap();
    let workers: Vec<String> = procfile
        .lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(_, cmd)| cmd.split_whitespace().next().unwrap().to_owned())
        .collect();
    for w in &workers {
        bin(w);
    }
    let ports = SystemPorts::new();
    let mut up = Proc::spawn("rigctl", &["up"], &ports.env(&db));
    wait_http_ok(
        &format!("http://127.0.0.1:{}/readyz", ports.ingest),
        Duration::from_secs(60),
    )
    .await;
    let expected = workers.iter().filter(|w| w.as_str() != "rigctl").count();
    let running = wait_for("every Procfile process to run", Duration::from_secs(30), || async {
        let pids = processes_with_env("DATABASE_URL", &db.url);
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
        let pids = processes_with_env("DATABASE_URL", &db.url);
        pids.is_empty().then_some(pids)
    })
    .await;
    assert!(left.is_empty());
    let log = up.log_text();
    assert!(log.contains("all stopped"), "{log}");
}
