//! The operator's dashboard (`GET /dashboard` on rig-ingest) against the real Postgres: issues by
//! status, a chosen issue's timeline, agents with stale ones marked, the cost chart, tokens per
//! issue and consumer lag; untrusted strings escaped; and the page as headless Chromium renders it.
//!
//! The projector tables (`token_usage`, `daily_cost`) and checkpoints are filled with SQL here:
//! the dashboard only reads them, and this keeps the test independent of the projector binaries.
#![allow(clippy::unwrap_used)]

use reqwest::StatusCode;
use rig_tests::{TestDb, TestIngest};
use serde_json::{json, Value};
use std::path::PathBuf;
use std::time::Duration;

const SCRIPT_TITLE: &str = "<script>alert(1)</script>";
const EVIL_STATUS: &str = "\"><img src=x onerror=alert(2)>";
const EVIL_AGENT: &str = "bot'<i>x</i>\"";

async fn append(c: &reqwest::Client, ingest: &TestIngest, stream: &str, events: Value) {
    let r = c
        .post(ingest.url("/v1/events"))
        .json(&json!({"stream_id": stream, "events": events}))
        .send()
        .await
        .unwrap();
    let status = r.status();
    let body = r.text().await.unwrap();
    assert_eq!(status, StatusCode::CREATED, "append to {stream}: {body}");
}

/// Issues in every status, three agents (one quiet for two hours), token usage, daily costs and
/// two checkpoints (one consumer behind, one paused).
async fn seed(db: &TestDb, ingest: &TestIngest) {
    let c = reqwest::Client::new();
    append(
        &c,
        ingest,
        "acme/widgets#1",
        json!([{"type": "ISSUE_APPROVED", "data": {"title": SCRIPT_TITLE}}]),
    )
    .await;
    append(
        &c,
        ingest,
        "acme/widgets#2",
        json!([{"type": "ISSUE_APPROVED", "data": {"title": "Add retries"}},
               {"type": "ISSUE_ASSIGNED", "data": {"agent_id": "dev-a"}}]),
    )
    .await;
    append(
        &c,
        ingest,
        "acme/widgets#3",
        json!([{"type": "ISSUE_APPROVED", "data": {"title": "Fix the flaky test"}},
               {"type": "ISSUE_ASSIGNED", "data": {"agent_id": "dev-b"}},
               {"type": "WORK_STARTED", "data": {"agent_id": "dev-b"}},
               {"type": "BRANCH_CREATED", "data": {"branch": "issue-3-flaky", "agent_id": "dev-b"}},
               {"type": "CI_FAILED", "data": {"run_id": 77}}]),
    )
    .await;
    append(
        &c,
        ingest,
        "acme/widgets#4",
        json!([{"type": "ISSUE_APPROVED", "data": {"title": "Document the API"}},
               {"type": "ISSUE_ASSIGNED", "data": {"agent_id": "dev-c"}},
               {"type": "PR_CREATED", "data": {"pr_number": 14, "agent_id": "dev-c"}},
               {"type": "REVIEW_ASSIGNED", "data": {"reviewer": "rev-1", "pr_number": 14}}]),
    )
    .await;
    append(
        &c,
        ingest,
        "tools/gadget#5",
        json!([{"type": "ISSUE_APPROVED", "data": {"title": "Ship v2"}},
               {"type": "ISSUE_ASSIGNED", "data": {"agent_id": "dev-c"}},
               {"type": "MERGED", "data": {"pr_number": 3}},
               {"type": "ISSUE_DONE", "data": {}}]),
    )
    .await;
    append(
        &c,
        ingest,
        "tools/gadget#6",
        json!([{"type": "ISSUE_APPROVED", "data": {"title": "Merged, not closed"}},
               {"type": "ISSUE_ASSIGNED", "data": {"agent_id": EVIL_AGENT}},
               {"type": "MERGED", "data": {"pr_number": 4}}]),
    )
    .await;
    append(
        &c,
        ingest,
        "agent:dev-a",
        json!([{"type": "HEARTBEAT", "data": {"agent_id": "dev-a", "status": "working", "current_issue": "acme/widgets#2"}}]),
    )
    .await;
    append(
        &c,
        ingest,
        "agent:dev-b",
        json!([{"type": "HEARTBEAT", "data": {"agent_id": "dev-b", "status": EVIL_STATUS}}]),
    )
    .await;
    append(
        &c,
        ingest,
        "agent:dev-old",
        json!([{"type": "HEARTBEAT", "data": {"agent_id": "dev-old", "status": "idle"}}]),
    )
    .await;
    // A heartbeat two hours old cannot be appended (times are the server's); age it in place.
    sqlx::query("UPDATE agent_status SET last_heartbeat_at = now() - interval '2 hours' WHERE agent_id = 'dev-old'")
        .execute(&db.pool)
        .await
        .unwrap();

    sqlx::query(
        "INSERT INTO token_usage (stream_id, agent_id, model, input_tokens, output_tokens, cache_read_tokens, \
                                  cache_write_tokens, cost_usd, events) VALUES \
         ('acme/widgets#2', 'dev-a', 'claude-sonnet-4-5', 1200000, 34000, 5000, 100, 4.1234567, 3), \
         ('acme/widgets#3', 'dev-b', 'claude-sonnet-4-5', 500, 200, 0, 0, 0.75, 1), \
         ('acme/widgets#3', 'dev-b', 'claude-haiku-4-5', 900, 100, 0, 0, 0.05, 1), \
         ('agent:dev-a', 'dev-a', 'claude-sonnet-4-5', 100, 10, 0, 0, 9.99, 1)",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO daily_cost (day, repo, agent_id, model, cost_usd, events) VALUES \
         ((now() AT TIME ZONE 'UTC')::date,     'acme/widgets', 'dev-a', 'claude-sonnet-4-5', 1.234567, 2), \
         ((now() AT TIME ZONE 'UTC')::date,     'acme/widgets', 'dev-b', 'claude-sonnet-4-5', 0.5, 1), \
         ((now() AT TIME ZONE 'UTC')::date - 1, 'tools/gadget', 'dev-a', 'claude-sonnet-4-5', 2.25, 1), \
         ((now() AT TIME ZONE 'UTC')::date - 3, '',             'dev-b', 'claude-haiku-4-5', 0.1, 1), \
         ((now() AT TIME ZONE 'UTC')::date - 30, 'acme/widgets', 'dev-a', 'claude-sonnet-4-5', 100, 1)",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO checkpoints (consumer, position, paused_position, last_error, paused_at) VALUES \
         ('token-projector', 3, NULL, NULL, NULL), \
         ('notifier', 5, 6, 'boom: <b>bad</b> payload', now())",
    )
    .execute(&db.pool)
    .await
    .unwrap();
}

async fn get(url: &str) -> (StatusCode, String, String) {
    let r = reqwest::get(url).await.unwrap();
    let status = r.status();
    let ctype = r
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    (status, ctype, r.text().await.unwrap())
}

/// The `<tr …>…</tr>` holding `needle`.
fn row<'a>(html: &'a str, needle: &str) -> &'a str {
    let at = html
        .find(needle)
        .unwrap_or_else(|| panic!("{needle:?} not in the page"));
    let start = html[..at]
        .rfind("<tr")
        .unwrap_or_else(|| panic!("{needle:?} is not in a table row"));
    let end = at + html[at..].find("</tr>").unwrap();
    &html[start..end]
}

/// The `<section id="…">` of that name.
fn section<'a>(html: &'a str, id: &str) -> &'a str {
    let start = html
        .find(&format!("<section id=\"{id}\""))
        .unwrap_or_else(|| panic!("no section {id}"));
    let end = start + html[start..].find("</section>").unwrap();
    &html[start..end]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn root_redirects_and_dashboard_is_self_refreshing_html_with_issues_by_status() {
    let db = TestDb::new().await;
    let ingest = TestIngest::start(&db).await;
    seed(&db, &ingest).await;

    let no_follow = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let r = no_follow.get(ingest.url("/")).send().await.unwrap();
    assert!(r.status().is_redirection(), "GET / answers {}", r.status());
    assert_eq!(r.headers()["location"], "/dashboard");

    let (status, ctype, html) = get(&ingest.url("/dashboard")).await;
    assert_eq!(status, StatusCode::OK);
    assert!(ctype.starts_with("text/html"), "content-type {ctype}");
    assert!(html.starts_with("<!DOCTYPE html>"));
    assert!(html.contains("<meta http-equiv=\"refresh\" content=\"5\">"));
    for id in ["issues", "timeline", "agents", "costs", "tokens", "consumers"] {
        assert!(html.contains(&format!("<section id=\"{id}\"")), "section {id} missing");
    }

    // Counts per status: one issue in each, two merged.
    let issues = section(&html, "issues");
    for (s, n) in [
        ("approved", 1),
        ("assigned", 1),
        ("in_progress", 1),
        ("in_review", 1),
        ("merged", 1),
        ("done", 1),
    ] {
        let card_at = issues.find(&format!("data-status=\"{s}\"")).unwrap();
        let card = &issues[card_at..card_at + issues[card_at..].find("</a>").unwrap()];
        assert!(card.contains(&format!("<b>{n}</b>")), "status {s}: {card}");
    }
    assert!(issues.contains("all<b>6</b>"));
    for (sid, status) in [
        ("acme/widgets#1", "approved"),
        ("acme/widgets#2", "assigned"),
        ("acme/widgets#3", "in_progress"),
        ("acme/widgets#4", "in_review"),
        ("tools/gadget#5", "done"),
        ("tools/gadget#6", "merged"),
    ] {
        let r = row(issues, &format!("data-stream=\"{sid}\""));
        assert!(
            r.contains(&format!("status-{status}")),
            "{sid} should show {status}: {r}"
        );
    }
    assert!(
        row(issues, "data-stream=\"acme/widgets#3\"").contains("failed"),
        "last CI shown"
    );

    // A status filter narrows the list and keeps the counts.
    let (_, _, filtered) = get(&ingest.url("/dashboard?status=in_review")).await;
    let issues = section(&filtered, "issues");
    assert!(issues.contains("data-stream=\"acme/widgets#4\""));
    assert!(!issues.contains("data-stream=\"acme/widgets#2\""));
    assert!(issues.contains("all<b>6</b>"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn untrusted_strings_from_the_data_are_html_escaped() {
    let db = TestDb::new().await;
    let ingest = TestIngest::start(&db).await;
    seed(&db, &ingest).await;
    let (status, _, html) = get(&ingest.url("/dashboard?issue=acme%2Fwidgets%231")).await;
    assert_eq!(status, StatusCode::OK);

    assert!(
        html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"),
        "the title is shown, escaped"
    );
    assert!(!html.contains("<script"), "no script element may reach the page");
    assert!(
        html.contains("&quot;&gt;&lt;img src=x onerror=alert(2)&gt;"),
        "heartbeat status escaped"
    );
    assert!(!html.contains("<img"));
    // An apostrophe needs no escaping: every attribute value is in double quotes.
    assert!(html.contains("bot'&lt;i&gt;x&lt;/i&gt;&quot;"), "agent id escaped");
    assert!(!html.contains("<i>x"));
    assert!(
        html.contains("boom: &lt;b&gt;bad&lt;/b&gt; payload"),
        "consumer error escaped"
    );
    // The timeline shows event data, also escaped.
    assert!(section(&html, "timeline").contains("{&quot;title&quot;:&quot;&lt;script&gt;"));

    // Query parameters are untrusted too.
    let (status, _, html) = get(&ingest.url("/dashboard?issue=%3Cb%3Eno%3C%2Fb%3E&cost_by=%3Cu%3E")).await;
    assert_eq!(status, StatusCode::OK);
    assert!(!html.contains("<b>no") && !html.contains("<u>"));
    assert!(html.contains("&lt;b&gt;no&lt;/b&gt;"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeline_shows_the_chosen_issue_events_in_version_order() {
    let db = TestDb::new().await;
    let ingest = TestIngest::start(&db).await;
    seed(&db, &ingest).await;

    // Any spelling of the stream id works: owner/repo is case-insensitive.
    let (status, _, html) = get(&ingest.url("/dashboard?issue=Acme%2FWidgets%233")).await;
    assert_eq!(status, StatusCode::OK);
    let tl = section(&html, "timeline");
    assert!(tl.contains("acme/widgets#3"));
    assert!(tl.contains("Fix the flaky test") && tl.contains("status-in_progress") && tl.contains("dev-b"));
    let order = [
        "ISSUE_APPROVED",
        "ISSUE_ASSIGNED",
        "WORK_STARTED",
        "BRANCH_CREATED",
        "CI_FAILED",
    ];
    let at: Vec<usize> = order
        .iter()
        .map(|t| {
            tl.find(&format!("event-type\">{t}<"))
                .unwrap_or_else(|| panic!("{t} not in the timeline"))
        })
        .collect();
    assert!(at.windows(2).all(|w| w[0] < w[1]), "events in version order: {at:?}");
    for v in 1..=5 {
        assert!(tl.contains(&format!("data-version=\"{v}\"")));
    }
    assert!(!tl.contains("data-version=\"6\""));
    assert!(tl.contains("issue-3-flaky"), "event data shown");

    // Links to other views keep the chosen issue.
    assert!(html.contains("href=\"/dashboard?issue=acme%2Fwidgets%233&amp;cost_by=repo#costs\""));

    let (status, _, html) = get(&ingest.url("/dashboard?issue=not-a-stream")).await;
    assert_eq!(status, StatusCode::OK, "a bad id does not break the page");
    assert!(section(&html, "timeline").contains("invalid stream_id"));
    let (_, _, html) = get(&ingest.url("/dashboard?issue=acme%2Fwidgets%23999")).await;
    assert!(section(&html, "timeline").contains("No events for"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_quiet_longer_than_the_configured_threshold_are_marked_stale() {
    let db = TestDb::new().await;
    let ingest = TestIngest::start(&db).await;
    seed(&db, &ingest).await;
    let (_, _, html) = get(&ingest.url("/dashboard")).await;
    let agents = section(&html, "agents");
    // Default threshold 30 min: two hours is stale, just now is not.
    let old = row(agents, "data-agent=\"dev-old\"");
    assert!(old.starts_with("<tr class=\"stale\"") && old.contains("STALE"), "{old}");
    assert!(old.contains("2h 0m ago"), "{old}");
    let fresh = row(agents, "data-agent=\"dev-a\"");
    assert!(
        fresh.starts_with("<tr class=\"fresh\"") && !fresh.contains("STALE"),
        "{fresh}"
    );
    assert!(fresh.contains("acme/widgets#2"), "current issue shown: {fresh}");
    // dev-c was assigned but never sent a heartbeat: no sign of life counts as stale.
    assert!(row(agents, "data-agent=\"dev-c\"").contains("never"));

    // The threshold comes from settings.
    drop(ingest);
    let ingest = TestIngest::start_with(&db, |s| s.stale_heartbeat.threshold = Duration::from_secs(3 * 3600)).await;
    let (_, _, html) = get(&ingest.url("/dashboard")).await;
    let old = row(section(&html, "agents"), "data-agent=\"dev-old\"");
    assert!(
        old.starts_with("<tr class=\"fresh\""),
        "under a 3 h threshold dev-old is fine: {old}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cost_chart_stacks_by_agent_or_repo_with_exact_amounts_and_tokens_rank_issues_by_cost() {
    let db = TestDb::new().await;
    let ingest = TestIngest::start(&db).await;
    seed(&db, &ingest).await;

    let (_, _, html) = get(&ingest.url("/dashboard")).await;
    let costs = section(&html, "costs");
    // Four (day, agent) cells in the last 14 days; the 30-day-old row is outside the window.
    assert_eq!(costs.matches("<rect class=\"cost-bar\"").count(), 4, "{costs}");
    assert!(
        costs.contains("dev-a: $1.234567 USD</title>"),
        "exact amount in the tooltip"
    );
    assert!(costs.contains("dev-b: $0.5 USD</title>"));
    assert!(
        costs.contains(">$1.7346</text>"),
        "today's total labelled, rounded for display"
    );
    assert!(
        costs.contains("USD per day") && costs.contains("day (UTC)"),
        "axis titles"
    );
    assert!(
        costs.contains("class=\"x-label\"") && costs.contains("class=\"y-label\""),
        "axis labels"
    );
    assert!(costs.contains("exact: 4.084567 USD"), "14-day total is exact: {costs}");
    assert!(!costs.contains("$100 USD"), "costs older than 14 days are not drawn");

    let (_, _, html) = get(&ingest.url("/dashboard?cost_by=repo")).await;
    let costs = section(&html, "costs");
    assert_eq!(costs.matches("<rect class=\"cost-bar\"").count(), 3, "{costs}");
    assert!(
        costs.contains("acme/widgets: $1.734567 USD</title>"),
        "agents summed per repo and day"
    );
    assert!(costs.contains("tools/gadget: $2.25 USD</title>"));
    assert!(costs.contains("(agent streams): $0.1 USD</title>"));

    let tokens = section(&html, "tokens");
    let first = tokens.find("data-stream=\"acme/widgets#2\"").unwrap();
    let second = tokens.find("data-stream=\"acme/widgets#3\"").unwrap();
    assert!(first < second, "ranked by cost");
    assert!(!tokens.contains("agent:dev-a"), "agent streams are not issues");
    let r = row(tokens, "data-stream=\"acme/widgets#2\"");
    assert!(r.contains("1,200,000") && r.contains("34,000"), "{r}");
    assert!(
        r.contains("title=\"4.1234567 USD\">$4.1235<"),
        "exact in the tooltip, rounded on show: {r}"
    );
    let r = row(tokens, "data-stream=\"acme/widgets#3\"");
    assert!(
        r.contains("$0.80<") && r.contains("claude-haiku-4-5") && r.contains("claude-sonnet-4-5"),
        "{r}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumers_show_position_head_lag_and_pause() {
    let db = TestDb::new().await;
    let ingest = TestIngest::start(&db).await;
    seed(&db, &ingest).await;
    let head = db.count("SELECT max(position) FROM events").await;
    let (_, _, html) = get(&ingest.url("/dashboard")).await;
    let consumers = section(&html, "consumers");
    for name in rig_projections::CONSUMERS.iter().map(|c| c.name) {
        assert!(
            consumers.contains(&format!("data-consumer=\"{name}\"")),
            "{name} listed"
        );
    }
    let tp = row(consumers, "data-consumer=\"token-projector\"");
    assert!(tp.contains(&format!("num lag\">{}<", head - 3)), "lag = head - 3: {tp}");
    assert!(tp.contains(&format!("num\">{head}<")) && tp.contains("behind"), "{tp}");
    let n = row(consumers, "data-consumer=\"notifier\"");
    assert!(n.contains("PAUSED") && n.contains("boom:"), "{n}");
    let sh = row(consumers, "data-consumer=\"stale-heartbeat\"");
    assert!(
        sh.contains(&format!("num lag\">{head}<")),
        "never run: the whole log is lag: {sh}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_its_database_the_page_answers_503_html_that_keeps_retrying() {
    let db = TestDb::new().await;
    let ingest = TestIngest::start(&db).await;
    let (status, _, _) = get(&ingest.url("/dashboard")).await;
    assert_eq!(status, StatusCode::OK);

    let admin = rig_ops::pg::with_database(&db.url, "postgres").unwrap();
    let mut c = <sqlx::PgConnection as sqlx::Connection>::connect(&admin).await.unwrap();
    sqlx::query(&format!("DROP DATABASE {} WITH (FORCE)", db.name))
        .execute(&mut c)
        .await
        .unwrap();

    let (status, ctype, html) = get(&ingest.url("/dashboard")).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(ctype.starts_with("text/html"), "{ctype}");
    assert!(
        html.contains("The database is unavailable") && html.contains("http-equiv=\"refresh\""),
        "{html}"
    );
    assert!(
        !html.contains(&db.name) && !html.to_lowercase().contains("sql"),
        "no database detail leaks: {html}"
    );
}

// ---------------------------------------------------------------------------------------------
// Headless Chromium

fn chromium() -> PathBuf {
    let found = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join("chromium"))
        .find(|p| p.is_file());
    found.unwrap_or_else(|| {
        panic!(
            "chromium is not installed, and the dashboard test needs it: \
             apt-get install chromium chromium-driver (.ci/run installs it when absent)"
        )
    })
}

/// Runs headless Chromium on `url` with `extra` flags; returns stdout (the DOM with --dump-dom).
async fn run_chromium(url: &str, extra: &[String]) -> String {
    let profile = std::env::temp_dir().join(format!("rig-chromium-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&profile).unwrap();
    let mut cmd = tokio::process::Command::new(chromium());
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
    ])
    .arg(format!("--user-data-dir={}", profile.display()))
    .args(extra)
    .arg(url)
    .kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(90), cmd.output())
        .await
        .expect("chromium finished within 90 s")
        .expect("run chromium");
    let _ = std::fs::remove_dir_all(&profile);
    assert!(
        out.status.success(),
        "chromium failed ({}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headless_chromium_renders_the_issues_agents_consumers_and_cost_bars() {
    let browser = chromium();
    assert!(browser.exists());
    let db = TestDb::new().await;
    let ingest = TestIngest::start(&db).await;
    seed(&db, &ingest).await;
    let url = ingest.url("/dashboard?issue=acme%2Fwidgets%233");

    let dom = run_chromium(&url, &["--dump-dom".to_owned()]).await;
    assert!(
        dom.contains("<title>rig-conductor dashboard</title>"),
        "the page loaded:\n{dom}"
    );
    for sid in [
        "acme/widgets#1",
        "acme/widgets#2",
        "acme/widgets#3",
        "acme/widgets#4",
        "tools/gadget#5",
        "tools/gadget#6",
    ] {
        assert!(dom.contains(&format!("data-stream=\"{sid}\"")), "issue {sid} shown");
    }
    for s in ["in progress", "in review", "assigned", "approved", "merged", "done"] {
        assert!(dom.contains(&format!("\">{s}</span>")), "status {s} shown");
    }
    for a in ["dev-a", "dev-b", "dev-c", "dev-old"] {
        assert!(dom.contains(&format!("data-agent=\"{a}\"")), "agent {a} shown");
    }
    assert!(
        dom.contains("<tr class=\"stale\" data-agent=\"dev-old\">"),
        "stale agent marked"
    );
    for c in ["token-projector", "cost-projector", "stale-heartbeat", "notifier"] {
        assert!(dom.contains(&format!("data-consumer=\"{c}\"")), "consumer {c} shown");
    }
    let bars = dom.matches("<rect class=\"cost-bar\"").count();
    assert_eq!(bars, 4, "the cost chart has its bars");
    assert!(
        dom.contains("event-type\">CI_FAILED<"),
        "the chosen issue's timeline rendered"
    );
    // The browser parsed the hostile title as text: no script element exists in the DOM.
    assert!(dom.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
    assert!(!dom.contains("<script"), "no script element in the rendered DOM");

    // For a human look: DASHBOARD_SCREENSHOT=/tmp/dashboard.png cargo test -p rig-tests --test dashboard
    if let Some(path) = std::env::var_os("DASHBOARD_SCREENSHOT") {
        let path = PathBuf::from(path);
        run_chromium(
            &url,
            &[
                format!("--screenshot={}", path.display()),
                "--window-size=1280,2600".to_owned(),
            ],
        )
        .await;
        assert!(
            std::fs::metadata(&path).unwrap().len() > 10_000,
            "a real screenshot was written"
        );
    }
}
