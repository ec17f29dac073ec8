//! Read-only views for operators: a stream as a timeline (with time travel), the issue board,
//! and the consumers' progress. They read the database directly, so they work while ingest is
//! down, and fold streams with the same function ingest uses. Rows stream from the database as
//! they are printed: nothing here holds a whole stream or board.

use anyhow::{bail, Context};
use chrono::{DateTime, Utc};
use futures::TryStreamExt;
use rig_events::fold::{IssueState, StreamFold};
use rig_events::StreamId;
use rig_events::{StoredEvent, EVENT_COLUMNS};
use serde_json::{json, Value};
use sqlx::PgPool;
use std::io::Write;
use std::process::ExitCode;

pub async fn stream(
    pool: &PgPool,
    raw: &str,
    to_version: Option<i64>,
    at: Option<&str>,
    as_json: bool,
) -> anyhow::Result<ExitCode> {
    let sid = StreamId::parse(raw)?.to_string();
    let at: Option<DateTime<Utc>> = match at {
        Some(t) => Some(
            DateTime::parse_from_rfc3339(t)
                .with_context(|| format!("--at {t:?} is not an RFC 3339 time such as 2026-04-21T09:00:05Z"))?
                .with_timezone(&Utc),
        ),
        None => None,
    };
    let total: Option<i32> = sqlx::query_scalar("SELECT max(version) FROM events WHERE stream_id = $1")
        .bind(&sid)
        .fetch_one(pool)
        .await?;
    let Some(total) = total else {
        bail!("stream {sid} has no events")
    };
    let cut =
        "stream_id = $1 AND ($2::bigint IS NULL OR version <= $2) AND ($3::timestamptz IS NULL OR recorded_at <= $3)";
    let version: i32 = sqlx::query_scalar::<_, Option<i32>>(&format!("SELECT max(version) FROM events WHERE {cut}"))
        .bind(&sid)
        .bind(to_version)
        .bind(at)
        .fetch_one(pool)
        .await?
        .unwrap_or(0);
    // The events stream from the database through the fold and out, so a long stream is never
    // held whole (an agent's heartbeats can number millions).
    let sql = format!("SELECT {EVENT_COLUMNS} FROM events WHERE {cut} ORDER BY version");
    let mut rows = sqlx::query_as::<_, StoredEvent>(&sql)
        .bind(&sid)
        .bind(to_version)
        .bind(at)
        .fetch(pool);
    let mut fold = StreamFold::new(&sid);
    if as_json {
        let mut out = std::io::BufWriter::new(std::io::stdout().lock());
        write!(out, "{{\"stream_id\":{},\"version\":{version},\"events\":[", json!(sid))?;
        let mut first = true;
        while let Some(e) = rows.try_next().await? {
            fold.apply(&e);
            if !first {
                out.write_all(b",")?;
            }
            first = false;
            serde_json::to_writer(&mut out, &e)?;
        }
        write!(out, "],\"state\":{}}}", serde_json::to_string(&fold.finish())?)?;
        writeln!(out)?;
        out.flush()?;
        return Ok(ExitCode::SUCCESS);
    }
    let shown = if i64::from(version) < i64::from(total) {
        format!("version {version} of {total} (time travel)")
    } else {
        format!("version {version}")
    };
    println!("{sid}  ·  {shown}\n");
    println!(
        "{:>4}  {:<20}  {:>9}  {:<22}  DETAILS",
        "VER", "RECORDED (UTC)", "+SINCE", "TYPE"
    );
    let mut prev: Option<DateTime<Utc>> = None;
    while let Some(e) = rows.try_next().await? {
        fold.apply(&e);
        let since = prev
            .map(|p| human_duration(e.recorded_at - p))
            .unwrap_or_else(|| "".into());
        prev = Some(e.recorded_at);
        println!(
            "{:>4}  {:<20}  {:>9}  {:<22}  {}",
            e.version,
            e.recorded_at.format("%Y-%m-%d %H:%M:%S"),
            since,
            e.event_type,
            key_fields(&e.data)
        );
    }
    if let Some(s) = &fold.finish() {
        println!("\nstate at version {}:", s.version);
        print_state(s);
    }
    Ok(ExitCode::SUCCESS)
}

/// The fields an operator looks for first, in a fixed order, then the rest.
fn key_fields(data: &Value) -> String {
    const FIRST: &[&str] = &[
        "agent_id",
        "reason",
        "branch",
        "pr_number",
        "reviewer",
        "model",
        "input_tokens",
        "output_tokens",
        "cost_usd",
        "status",
        "current_issue",
        "title",
    ];
    let Some(obj) = data.as_object() else {
        return String::new();
    };
    let mut parts: Vec<String> = Vec::new();
    for k in FIRST {
        if let Some(v) = obj.get(*k) {
            parts.push(format!("{k}={}", short(v)));
        }
    }
    for (k, v) in obj {
        if !FIRST.contains(&k.as_str()) {
            parts.push(format!("{k}={}", short(v)));
        }
    }
    let line = parts.join("  ");
    if line.chars().count() > 100 {
        format!("{}…", line.chars().take(99).collect::<String>())
    } else {
        line
    }
}

fn short(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

pub fn human_duration(d: chrono::Duration) -> String {
    let s = d.num_seconds();
    if s < 0 {
        return "-".into();
    }
    match s {
        0 => format!("+{}ms", d.num_milliseconds()),
        1..=59 => format!("+{s}s"),
        60..=3599 => format!("+{}m{:02}s", s / 60, s % 60),
        3600..=86_399 => format!("+{}h{:02}m", s / 3600, (s % 3600) / 60),
        _ => format!("+{}d{:02}h", s / 86_400, (s % 86_400) / 3600),
    }
}

fn print_state(s: &IssueState) {
    let t = |d: &Option<DateTime<Utc>>| {
        d.map(|d| d.format("%Y-%m-%d %H:%M:%S").to_string())
            .unwrap_or_else(|| "-".into())
    };
    let o = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
    println!("  status       {}", o(&s.status));
    println!("  agent        {}", o(&s.agent_id));
    println!("  stuck_count  {}", s.stuck_count);
    println!("  last_ci      {}", o(&s.last_ci));
    println!(
        "  pr / branch  {} / {}",
        s.pr_number.map(|n| format!("#{n}")).unwrap_or_else(|| "-".into()),
        o(&s.branch)
    );
    println!("  first event  {}", s.first_event_at.format("%Y-%m-%d %H:%M:%S"));
    println!("  assigned at  {}", t(&s.assigned_at));
    println!("  heartbeat    {}", t(&s.last_heartbeat_at));
    println!("  done at      {}", t(&s.done_at));
    if let Some(done) = s.done_at {
        println!(
            "  took         {}",
            human_duration(done - s.first_event_at).trim_start_matches('+')
        );
    }
}

pub async fn issues(pool: &PgPool, status: Option<&str>, as_json: bool) -> anyhow::Result<ExitCode> {
    const STATUSES: &[&str] = &["approved", "assigned", "in_progress", "in_review", "merged", "done"];
    if let Some(s) = status {
        if !STATUSES.contains(&s) {
            bail!("--status must be one of {}", STATUSES.join(", "));
        }
    }
    // Streamed from the database as printed, so a board of any size is never held whole.
    let mut rows = sqlx::query_as::<_, IssueState>(
        "SELECT * FROM issue_state WHERE ($1::text IS NULL OR status = $1) ORDER BY updated_at DESC, stream_id",
    )
    .bind(status)
    .fetch(pool);
    if as_json {
        let mut out = std::io::BufWriter::new(std::io::stdout().lock());
        out.write_all(b"{\"issues\":[")?;
        let mut first = true;
        while let Some(r) = rows.try_next().await? {
            if !first {
                out.write_all(b",")?;
            }
            first = false;
            serde_json::to_writer(&mut out, &r)?;
        }
        out.write_all(b"]}\n")?;
        out.flush()?;
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{:<40} {:<12} {:<18} {:>4} {:>5} {:<7} {:<20}",
        "ISSUE", "STATUS", "AGENT", "VER", "STUCK", "CI", "UPDATED (UTC)"
    );
    let mut n = 0usize;
    let mut counts = vec![0usize; STATUSES.len()];
    while let Some(r) = rows.try_next().await? {
        n += 1;
        if let Some(i) = STATUSES.iter().position(|s| r.status.as_deref() == Some(*s)) {
            counts[i] += 1;
        }
        println!(
            "{:<40} {:<12} {:<18} {:>4} {:>5} {:<7} {:<20}",
            r.stream_id,
            r.status.as_deref().unwrap_or("-"),
            r.agent_id.as_deref().unwrap_or("-"),
            r.version,
            r.stuck_count,
            r.last_ci.as_deref().unwrap_or("-"),
            r.updated_at.format("%Y-%m-%d %H:%M:%S")
        );
    }
    let counts: Vec<String> = STATUSES
        .iter()
        .zip(counts)
        .filter(|(_, c)| *c > 0)
        .map(|(s, c)| format!("{c} {s}"))
        .collect();
    println!(
        "\n{n} issues{}{}",
        if counts.is_empty() { "" } else { ": " },
        counts.join(", ")
    );
    Ok(ExitCode::SUCCESS)
}

pub async fn consumers(
    settings: &rig_ops::Settings,
    control: &PgPool,
    only: Option<&str>,
    as_json: bool,
) -> anyhow::Result<ExitCode> {
    let tenants: Vec<rig_tenants::Tenant> = match only {
        Some(slug) => vec![rig_tenants::get(control, slug)
            .await?
            .ok_or_else(|| anyhow::anyhow!("there is no tenant {slug:?} (see `rigctl tenants list`)"))?],
        None => rig_tenants::list(control)
            .await?
            .into_iter()
            .filter(|t| t.enabled)
            .collect(),
    };
    let mut list = Vec::new();
    let mut unreachable = Vec::new();
    let mut pools = Vec::new();
    for t in &tenants {
        let log = match crate::tenants::connect_tenant(settings, control, &t.slug).await {
            Ok(p) => p,
            Err(e) => {
                unreachable.push(format!("{}: {e:#}", t.slug));
                continue;
            }
        };
        list.extend(rig_projections::tenant_status(&log, control, &t.slug).await?);
        pools.push((t.slug.clone(), log));
    }
    if as_json {
        let mut rows = serde_json::to_value(&list)?;
        // A deployment without tenants prints exactly the keys it always did.
        if tenants.len() == 1 && only.is_none() {
            for row in rows.as_array_mut().into_iter().flatten() {
                row.as_object_mut().map(|o| o.remove("tenant"));
            }
        }
        println!("{}", serde_json::to_string_pretty(&rows)?);
        for u in &unreachable {
            eprintln!("rigctl: cannot reach tenant {u}");
        }
        return Ok(if unreachable.is_empty() {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        });
    }
    println!(
        "{:<16} {:<20} {:>10} {:>10} {:>8} {:<7} {:<7} LAST ERROR",
        "CONSUMER", "TENANT", "POSITION", "HEAD", "LAG", "ACTIVE", "PAUSED"
    );
    for c in &list {
        println!(
            "{:<16} {:<20} {:>10} {:>10} {:>8} {:<7} {:<7} {}",
            c.consumer,
            c.tenant,
            c.position,
            c.head,
            c.lag,
            if c.active { "yes" } else { "NO" },
            if c.paused { "PAUSED" } else { "no" },
            c.last_error.as_deref().unwrap_or("-")
        );
    }
    for u in &unreachable {
        println!("cannot reach tenant {u}");
    }
    let code = if unreachable.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    };
    for p in list.iter().filter(|c| c.paused) {
        let Some((_, pool)) = pools.iter().find(|(s, _)| *s == p.tenant) else {
            continue;
        };
        let at: Option<i64> = sqlx::query_scalar("SELECT paused_position FROM checkpoints WHERE consumer = $1")
            .bind(&p.consumer)
            .fetch_one(pool)
            .await?;
        let tenant = if p.tenant == rig_tenants::DEFAULT {
            String::new()
        } else {
            format!(" --tenant {}", p.tenant)
        };
        println!(
            "\n{} of {} is paused on a poison event: fix the cause and restart it, or dead-letter the event with\n  rigctl skip {} {}{tenant}",
            p.consumer,
            p.tenant,
            p.consumer,
            at.unwrap_or(p.position + 1)
        );
    }
    Ok(code)
}
