//! Turns an event into the Discord message a person wants to read: what happened, to which
//! issue (linked on GitHub), which agent, how long, the PR and the failed checks when known.
//!
//! What it promises, whatever the event data holds (huge strings, any Unicode, markdown, fake
//! mentions, odd types): the payload is within Discord's limits (content ≤ 2000; one embed with
//! title ≤ 256, description ≤ 4096, ≤ 25 fields of name ≤ 256 and value ≤ 1024, footer ≤ 2048,
//! all of it ≤ 6000), text from the data is markdown-escaped and cut on character boundaries,
//! and `allowed_mentions` is empty so `@everyone` in a reason pings no one. Lengths are counted
//! in UTF-16 code units, which is never less than Discord's count in characters. Rendering is a
//! pure function of the event and the issue context, and never panics.

use chrono::{DateTime, Utc};
use rig_events::StreamId;
use rig_events::{EventType, StoredEvent};
use serde_json::{json, Map, Value};

pub const CONTENT_MAX: usize = 2000;
pub const TITLE_MAX: usize = 256;
pub const DESCRIPTION_MAX: usize = 4096;
pub const FIELDS_MAX: usize = 25;
pub const FIELD_NAME_MAX: usize = 256;
pub const FIELD_VALUE_MAX: usize = 1024;
pub const FOOTER_MAX: usize = 2048;
pub const EMBED_TOTAL_MAX: usize = 6000;

/// What the issue's inline state adds to an event that does not carry it (`issue_state`).
#[derive(Debug, Clone, Default, sqlx::FromRow)]
pub struct IssueContext {
    pub stream_id: String,
    pub title: Option<String>,
    pub agent_id: Option<String>,
    pub first_event_at: Option<DateTime<Utc>>,
    pub pr_number: Option<i64>,
}

/// Length as Discord may count it (UTF-16 code units: never fewer than characters).
pub fn units(s: &str) -> usize {
    s.encode_utf16().count()
}

/// Characters that Discord markdown gives a meaning to; a backslash makes them literal.
fn is_markdown(c: char) -> bool {
    matches!(
        c,
        '\\' | '*' | '_' | '~' | '`' | '|' | '>' | '<' | '[' | ']' | '(' | ')' | '#' | ':'
    )
}

/// Escapes `s` for inline use (line breaks and control characters become spaces), keeping at
/// most `max` units; a cut ends with `…`.
pub fn inline(s: &str, max: usize) -> String {
    escape(s, max, false)
}

/// Like [`inline`] but keeps line breaks (for descriptions and lists).
pub fn block(s: &str, max: usize) -> String {
    escape(s, max, true)
}

fn escape(s: &str, max: usize, keep_newlines: bool) -> String {
    let mut out = String::new();
    // Every character is at least one unit: more than `max + 1` of them can never fit.
    for c in s.chars().take(max.saturating_add(1)) {
        let c = match c {
            '\n' if keep_newlines => '\n',
            c if c.is_control() => ' ',
            // Invisible characters that would let a reason fake a mention or a link.
            '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2060}'..='\u{2064}' | '\u{FEFF}' => ' ',
            c => c,
        };
        if is_markdown(c) {
            out.push('\\');
        }
        out.push(c);
    }
    clip(&out, max)
}

/// Cuts already-formatted text to `max` units on a character boundary (never inside an escape).
pub fn clip(s: &str, max: usize) -> String {
    if units(s) <= max {
        return s.to_owned();
    }
    if max == 0 {
        return String::new();
    }
    let mut out = String::new();
    let mut used = 0;
    for c in s.chars() {
        if used + c.len_utf16() > max - 1 {
            break;
        }
        out.push(c);
        used += c.len_utf16();
    }
    // An odd run of trailing backslashes would escape the ellipsis' neighbour: drop one.
    let trailing = out.chars().rev().take_while(|c| *c == '\\').count();
    if trailing % 2 == 1 {
        out.pop();
    }
    out.push('…');
    out
}

pub fn issue_url(stream: &StreamId) -> Option<String> {
    match stream {
        StreamId::Issue { repo, number } => Some(format!("https://github.com/{repo}/issues/{number}")),
        StreamId::Agent(_) => None,
    }
}

pub fn pr_url(stream: &StreamId, pr: i64) -> Option<String> {
    match stream {
        StreamId::Issue { repo, .. } => Some(format!("https://github.com/{repo}/pull/{pr}")),
        StreamId::Agent(_) => None,
    }
}

/// `45s`, `31m 12s`, `2h 05m`, `3d 4h`.
pub fn human_duration(seconds: f64) -> String {
    if !seconds.is_finite() || seconds < 0.0 {
        return "an unknown time".to_owned();
    }
    let s = seconds.round().min(1e15) as u64;
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m {:02}s", s / 60, s % 60),
        3600..=86_399 => format!("{}h {:02}m", s / 3600, (s % 3600) / 60),
        _ => format!("{}d {}h", s / 86_400, (s % 86_400) / 3600),
    }
}

/// A data value as text: strings as they are, everything else as compact JSON.
fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Array(a) => a.iter().map(text).collect::<Vec<_>>().join(", "),
        other => other.to_string(),
    }
}

fn positive_int(v: Option<&Value>) -> Option<i64> {
    v.and_then(Value::as_i64).filter(|n| *n > 0)
}

fn number(v: Option<&Value>) -> Option<f64> {
    v.and_then(Value::as_f64).filter(|n| n.is_finite() && *n >= 0.0)
}

fn non_empty(v: Option<&Value>) -> Option<String> {
    v.map(text).filter(|s| !s.trim().is_empty())
}

/// Discord renders `<t:unix:R>` as "5 minutes ago" in the reader's time zone.
fn discord_time(t: DateTime<Utc>) -> String {
    format!("<t:{}:f> (<t:{}:R>)", t.timestamp(), t.timestamp())
}

struct Message {
    emoji: &'static str,
    label: String,
    color: u32,
    /// Short clauses after the subject in `content`, already formatted.
    clauses: Vec<String>,
    description: String,
    fields: Vec<(String, String)>,
}

impl Message {
    fn new(emoji: &'static str, label: &str, color: u32) -> Self {
        Message {
            emoji,
            label: label.to_owned(),
            color,
            clauses: vec![],
            description: String::new(),
            fields: vec![],
        }
    }

    fn field(&mut self, name: &str, value: String) {
        if !value.trim().is_empty() {
            self.fields
                .push((clip(name, FIELD_NAME_MAX), clip(&value, FIELD_VALUE_MAX)));
        }
    }
}

/// Renders `e` into a Discord webhook payload. `ctx` is the issue's inline state, when known.
pub fn render(e: &StoredEvent, ctx: Option<&IssueContext>) -> Value {
    let empty = Map::new();
    let data = e.data.as_object().unwrap_or(&empty);
    // Dispatched on the catalog type; fields are read as they come, whatever they hold (an event
    // stored before a rule of the catalog held still renders).
    let ty = e.known_type();
    let stream = StreamId::parse(&e.stream_id).ok();
    let link = stream.as_ref().and_then(issue_url);
    let subject_text = inline(&e.stream_id, 120);
    let subject = match &link {
        // Angle brackets: a link without a preview card.
        Some(url) => format!("[{subject_text}](<{url}>)"),
        None => subject_text.clone(),
    };
    let title = ctx.and_then(|c| c.title.as_deref()).filter(|t| !t.trim().is_empty());
    let agent = non_empty(data.get("agent_id")).or_else(|| ctx.and_then(|c| c.agent_id.clone()));
    let pr = positive_int(data.get("pr_number")).or_else(|| {
        // The issue's PR only for events about that PR.
        matches!(ty, Some(EventType::Merged | EventType::CiFailed))
            .then(|| ctx.and_then(|c| c.pr_number))
            .flatten()
    });
    let pr_link = |n: i64| match stream.as_ref().and_then(|s| pr_url(s, n)) {
        Some(u) => format!("[PR #{n}](<{u}>)"),
        None => format!("PR #{n}"),
    };
    let since_start = ctx
        .and_then(|c| c.first_event_at)
        .map(|t| (e.recorded_at - t).num_milliseconds() as f64 / 1000.0)
        .filter(|s| *s >= 0.0);

    let mut m = match ty {
        Some(EventType::AgentStuck) => {
            let mut m = Message::new("🛑", "Agent stuck", 0xE6_7E22);
            let elapsed = number(data.get("elapsed_seconds"));
            let reason = non_empty(data.get("reason"));
            let mut clause = match &agent {
                Some(a) => format!("agent {}", inline(a, 100)),
                None => "its agent".to_owned(),
            };
            if let Some(s) = elapsed {
                clause.push_str(&format!(" quiet for {}", human_duration(s)));
            }
            m.clauses.push(clause);
            if reason.as_deref() == Some("stale_heartbeat") {
                m.clauses.push("the issue goes back to the queue".to_owned());
            } else if let Some(r) = &reason {
                m.clauses.push(inline(r, 300));
            }
            m.field("Agent", agent.as_deref().map(|a| inline(a, 200)).unwrap_or_default());
            m.field("Quiet for", elapsed.map(human_duration).unwrap_or_default());
            let last = data
                .get("last_heartbeat_at")
                .and_then(Value::as_str)
                .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
                .map(|t| discord_time(t.with_timezone(&Utc)));
            m.field("Last sign of life", last.unwrap_or_default());
            match reason.as_deref() {
                Some("stale_heartbeat") => {
                    m.description = "No sign of life (heartbeat or issue activity) for longer than the threshold: \
                                     the issue was unassigned and waits for an agent again."
                        .to_owned();
                }
                Some(r) => m.description = block(r, DESCRIPTION_MAX),
                None => {}
            }
            m
        }
        Some(EventType::CiFailed) => {
            let mut m = Message::new("❌", "CI failed", 0xE7_4C3C);
            if let Some(n) = pr {
                m.clauses.push(pr_link(n));
            }
            let checks: Vec<String> = data
                .get("failed_checks")
                .and_then(Value::as_array)
                .map(|a| a.iter().map(text).filter(|s| !s.trim().is_empty()).collect())
                .unwrap_or_default();
            if !checks.is_empty() {
                let shown: Vec<String> = checks.iter().take(3).map(|c| inline(c, 80)).collect();
                let more = if checks.len() > 3 {
                    format!(" (+{} more)", checks.len() - 3)
                } else {
                    String::new()
                };
                m.clauses.push(format!("failed: {}{more}", shown.join(", ")));
                m.field(
                    &format!("Failed checks ({})", checks.len()),
                    list(&checks, FIELD_VALUE_MAX),
                );
            }
            m.field("Pull request", pr.map(pr_link).unwrap_or_default());
            m.field(
                "Run",
                non_empty(data.get("run_id"))
                    .map(|r| inline(&r, 200))
                    .unwrap_or_default(),
            );
            m.field("Agent", agent.as_deref().map(|a| inline(a, 200)).unwrap_or_default());
            m
        }
        Some(EventType::HumanGateTriggered) => {
            let mut m = Message::new("✋", "Needs a human", 0xF1_C40F);
            let reason = non_empty(data.get("reason"));
            if let Some(r) = &reason {
                m.clauses.push(inline(r, 300));
                m.description = block(r, DESCRIPTION_MAX);
            }
            m.field("Pull request", pr.map(pr_link).unwrap_or_default());
            m.field("Agent", agent.as_deref().map(|a| inline(a, 200)).unwrap_or_default());
            m
        }
        Some(EventType::Escalated) => {
            let mut m = Message::new("⚠️", "Escalated", 0xC0_392B);
            let attempts = data.get("attempts").and_then(Value::as_u64);
            if let Some(n) = attempts {
                m.clauses
                    .push(format!("after {n} attempt{}", if n == 1 { "" } else { "s" }));
            }
            let reason = non_empty(data.get("reason"));
            if let Some(r) = &reason {
                m.clauses.push(inline(r, 300));
                m.description = block(r, DESCRIPTION_MAX);
            }
            m.field("Attempts", attempts.map(|n| n.to_string()).unwrap_or_default());
            m.field("Agent", agent.as_deref().map(|a| inline(a, 200)).unwrap_or_default());
            m
        }
        Some(EventType::Merged) => {
            let mut m = Message::new("🟣", "Merged", 0x8E_44AD);
            if let Some(n) = pr {
                m.clauses.push(pr_link(n));
            }
            let sha = non_empty(data.get("merge_sha"));
            if let Some(s) = &sha {
                m.clauses.push(format!(
                    "commit {}",
                    inline(&s.chars().take(12).collect::<String>(), 40)
                ));
            }
            if let Some(s) = since_start {
                m.clauses.push(format!("{} after the first event", human_duration(s)));
            }
            m.field("Pull request", pr.map(pr_link).unwrap_or_default());
            m.field("Commit", sha.map(|s| inline(&s, 200)).unwrap_or_default());
            m.field("Agent", agent.as_deref().map(|a| inline(a, 200)).unwrap_or_default());
            m
        }
        Some(EventType::IssueDone) => {
            let mut m = Message::new("✅", "Done", 0x2E_CC71);
            let took = number(data.get("duration_minutes"))
                .map(|min| min * 60.0)
                .or(since_start);
            if let Some(s) = took {
                m.clauses.push(format!("took {}", human_duration(s)));
            }
            if let Some(a) = &agent {
                m.clauses.push(format!("by {}", inline(a, 100)));
            }
            m.field("Took", took.map(human_duration).unwrap_or_default());
            m.field("Agent", agent.as_deref().map(|a| inline(a, 200)).unwrap_or_default());
            m
        }
        _ => {
            // A type chosen in `notifier.events` that this renderer has no words for.
            let mut m = Message::new("📣", &e.event_type, 0x34_98DB);
            if let Some(a) = &agent {
                m.clauses.push(format!("agent {}", inline(a, 100)));
            }
            for (k, v) in data.iter().take(FIELDS_MAX) {
                m.field(&inline(k, FIELD_NAME_MAX), inline(&text(v), FIELD_VALUE_MAX));
            }
            m
        }
    };
    m.label = inline(&m.label, 100);

    let mut content = format!("{} **{}** · {subject}", m.emoji, m.label);
    if let Some(t) = title {
        content.push_str(&format!(" “{}”", inline(t, 150)));
    }
    for c in &m.clauses {
        content.push_str(" · ");
        content.push_str(c);
    }

    let mut embed_title = format!("{}: {}", m.label, inline(&e.stream_id, 120));
    if let Some(t) = title {
        embed_title.push_str(" — ");
        embed_title.push_str(&inline(t, TITLE_MAX));
    }
    // Footers show text as it is (no markdown, no mentions): the type is UPPER_SNAKE, unescaped.
    let footer = format!(
        "{} · position {} · event {}",
        clip(&e.event_type, 100),
        e.position,
        e.event_id
    );
    let mut embed = json!({
        "title": clip(&embed_title, TITLE_MAX),
        "color": m.color,
        "timestamp": e.recorded_at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        "footer": {"text": clip(&footer, FOOTER_MAX)},
    });
    if let Some(url) = &link {
        embed["url"] = json!(url);
    }
    let (fields, description) = fit_embed(
        units(&clip(&embed_title, TITLE_MAX)) + units(&clip(&footer, FOOTER_MAX)),
        m.fields,
        clip(&m.description, DESCRIPTION_MAX),
    );
    if !description.is_empty() {
        embed["description"] = json!(description);
    }
    if !fields.is_empty() {
        embed["fields"] = Value::Array(
            fields
                .into_iter()
                .map(|(name, value)| json!({"name": name, "value": value, "inline": units(&value) <= 40}))
                .collect(),
        );
    }
    json!({
        "content": clip(&content, CONTENT_MAX),
        "embeds": [embed],
        "allowed_mentions": {"parse": []},
    })
}

/// One escaped line per item, as many as fit in `max` units, then `… and N more`.
fn list(items: &[String], max: usize) -> String {
    let mut out = String::new();
    for (i, item) in items.iter().enumerate() {
        let line = format!("• {}", inline(item, 200));
        let rest = items.len() - i - 1;
        let tail = if rest > 0 {
            units(&format!("\n… and {rest} more"))
        } else {
            0
        };
        let sep = usize::from(!out.is_empty());
        if units(&out) + sep + units(&line) + tail > max {
            let more = format!("… and {} more", items.len() - i);
            if !out.is_empty() {
                out.push('\n');
            }
            out.push_str(&more);
            return clip(&out, max);
        }
        if sep == 1 {
            out.push('\n');
        }
        out.push_str(&line);
    }
    out
}

/// Keeps the embed within the 6000-unit total: drops fields from the end first (while they
/// crowd out a readable description), then shortens the description.
fn fit_embed(fixed: usize, mut fields: Vec<(String, String)>, description: String) -> (Vec<(String, String)>, String) {
    fields.truncate(FIELDS_MAX);
    let field_units = |f: &[(String, String)]| f.iter().map(|(n, v)| units(n) + units(v)).sum::<usize>();
    let keep_description = units(&description).min(1500);
    while !fields.is_empty() && fixed + field_units(&fields) + keep_description > EMBED_TOTAL_MAX {
        fields.pop();
    }
    let room = EMBED_TOTAL_MAX.saturating_sub(fixed + field_units(&fields));
    (fields, clip(&description, room))
}

/// Checks a payload against Discord's limits; `Err` names the first one broken.
pub fn check_limits(p: &Value) -> Result<(), String> {
    let len = |v: &Value| v.as_str().map(units).unwrap_or(0);
    let over = |what: &str, n: usize, max: usize| {
        if n > max {
            Err(format!("{what}: {n} > {max}"))
        } else {
            Ok(())
        }
    };
    over("content", len(&p["content"]), CONTENT_MAX)?;
    if p["allowed_mentions"] != json!({"parse": []}) {
        return Err("allowed_mentions must be {\"parse\": []}".into());
    }
    let embeds = p["embeds"].as_array().cloned().unwrap_or_default();
    over("embeds", embeds.len(), 10)?;
    let mut total = 0;
    for e in &embeds {
        let t = len(&e["title"]);
        let d = len(&e["description"]);
        let f = len(&e["footer"]["text"]);
        over("title", t, TITLE_MAX)?;
        over("description", d, DESCRIPTION_MAX)?;
        over("footer", f, FOOTER_MAX)?;
        total += t + d + f;
        let fields = e["fields"].as_array().cloned().unwrap_or_default();
        over("fields", fields.len(), FIELDS_MAX)?;
        for field in &fields {
            let (n, v) = (len(&field["name"]), len(&field["value"]));
            over("field name", n, FIELD_NAME_MAX)?;
            over("field value", v, FIELD_VALUE_MAX)?;
            if n == 0 || v == 0 {
                return Err("empty field name or value".into());
            }
            total += n + v;
        }
    }
    over("embed total", total, EMBED_TOTAL_MAX)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use chrono::TimeZone;

    fn ev(stream: &str, t: &str, data: Value) -> StoredEvent {
        StoredEvent {
            position: 42,
            stream_id: stream.to_owned(),
            version: 3,
            event_id: uuid::Uuid::new_v4(),
            event_type: t.to_owned(),
            schema_version: 1,
            data,
            metadata: json!({}),
            occurred_at: None,
            recorded_at: Utc.with_ymd_and_hms(2026, 4, 21, 9, 30, 0).unwrap(),
            data_text: None,
        }
    }

    fn ctx() -> IssueContext {
        IssueContext {
            stream_id: "acme/widgets#42".into(),
            title: Some("Add a thing".into()),
            agent_id: Some("dev-e-node".into()),
            first_event_at: Some(Utc.with_ymd_and_hms(2026, 4, 21, 7, 0, 0).unwrap()),
            pr_number: Some(57),
        }
    }

    #[test]
    fn stuck_message_names_issue_link_agent_and_how_long() {
        let e = ev(
            "acme/widgets#42",
            "AGENT_STUCK",
            json!({"agent_id": "dev-e-node", "reason": "stale_heartbeat", "elapsed_seconds": 1872,
                   "last_heartbeat_at": "2026-04-21T08:58:48Z"}),
        );
        let p = render(&e, Some(&ctx()));
        check_limits(&p).unwrap();
        let content = p["content"].as_str().unwrap();
        assert!(content.contains("**Agent stuck**"), "{content}");
        assert!(
            content.contains("(<https://github.com/acme/widgets/issues/42>)"),
            "{content}"
        );
        assert!(content.contains("dev-e-node quiet for 31m 12s"), "{content}");
        assert!(content.contains("Add a thing"), "{content}");
        let embed = &p["embeds"][0];
        assert_eq!(embed["url"], "https://github.com/acme/widgets/issues/42");
        assert!(embed["footer"]["text"]
            .as_str()
            .unwrap()
            .contains(&e.event_id.to_string()));
        assert_eq!(p["allowed_mentions"], json!({"parse": []}));
    }

    #[test]
    fn ci_failed_links_the_pr_and_lists_failed_checks() {
        let e = ev(
            "acme/widgets#42",
            "CI_FAILED",
            json!({"pr_number": 57, "failed_checks": ["build", "test", "lint", "e2e"]}),
        );
        let p = render(&e, Some(&ctx()));
        check_limits(&p).unwrap();
        let content = p["content"].as_str().unwrap();
        assert!(
            content.contains("[PR #57](<https://github.com/acme/widgets/pull/57>)"),
            "{content}"
        );
        assert!(content.contains("failed: build, test, lint (+1 more)"), "{content}");
        let fields = p["embeds"][0]["fields"].as_array().unwrap();
        let checks = fields.iter().find(|f| f["name"] == "Failed checks (4)").unwrap();
        assert_eq!(checks["value"], "• build\n• test\n• lint\n• e2e");
    }

    #[test]
    fn merged_and_done_say_how_long_it_took() {
        let p = render(
            &ev("acme/widgets#42", "ISSUE_DONE", json!({"duration_minutes": 125})),
            Some(&ctx()),
        );
        let content = p["content"].as_str().unwrap();
        assert!(
            content.contains("took 2h 05m") && content.contains("by dev-e-node"),
            "{content}"
        );
        // Without duration_minutes: from the issue's first event.
        let p = render(&ev("acme/widgets#42", "ISSUE_DONE", json!({})), Some(&ctx()));
        assert!(
            p["content"].as_str().unwrap().contains("took 2h 30m"),
            "{}",
            p["content"]
        );
        let p = render(
            &ev(
                "acme/widgets#42",
                "MERGED",
                json!({"merge_sha": "0123456789abcdef0123"}),
            ),
            Some(&ctx()),
        );
        let content = p["content"].as_str().unwrap();
        assert!(
            content.contains("[PR #57](<https://github.com/acme/widgets/pull/57>)"),
            "{content}"
        );
        assert!(content.contains("commit 0123456789ab"), "{content}");
        // An agent stream has no GitHub link.
        let p = render(
            &ev(
                "agent:dev-1",
                "ESCALATED",
                json!({"reason": "out of ideas", "attempts": 3}),
            ),
            None,
        );
        assert!(
            p["content"]
                .as_str()
                .unwrap()
                .starts_with("⚠️ **Escalated** · agent\\:dev-1 · after 3 attempts"),
            "{}",
            p["content"]
        );
        assert!(p["embeds"][0].get("url").is_none());
    }

    #[test]
    fn markdown_and_mentions_in_data_are_inert() {
        let e = ev(
            "acme/widgets#42",
            "HUMAN_GATE_TRIGGERED",
            json!({"reason": "@everyone <@123> **bold** [click](https://evil.example) `code` ||spoiler|| # head\nline2\u{200B}"}),
        );
        let p = render(&e, None);
        check_limits(&p).unwrap();
        let content = p["content"].as_str().unwrap();
        assert!(!content.contains("[click]("), "{content}");
        assert!(!content.contains("**bold**"), "{content}");
        assert!(content.contains("\\*\\*bold\\*\\*"), "{content}");
        assert!(content.contains("\\<@123\\>"), "{content}");
        assert!(!content.contains('\n'), "inline text has no line breaks: {content}");
        assert!(!content.contains('\u{200B}'));
        assert_eq!(p["allowed_mentions"], json!({"parse": []}));
    }

    #[test]
    fn adversarial_data_never_breaks_discord_limits() {
        let huge = "💥a\u{301}*_`[](<@everyone>)\\".repeat(2_000);
        let many: Map<String, Value> = (0..200).map(|i| (format!("{i}{huge}"), json!(huge))).collect();
        let checks: Vec<Value> = (0..300).map(|i| json!(format!("{i}-{huge}"))).collect();
        let agent = format!("agent:{}", "x".repeat(200));
        let cases = vec![
            ev(
                "acme/widgets#42",
                "AGENT_STUCK",
                json!({"agent_id": huge, "reason": huge, "elapsed_seconds": 1e300, "last_heartbeat_at": huge}),
            ),
            ev(
                "acme/widgets#42",
                "CI_FAILED",
                json!({"pr_number": 9_223_372_036_854_775_807i64, "failed_checks": checks, "run_id": huge}),
            ),
            ev(
                "acme/widgets#42",
                "HUMAN_GATE_TRIGGERED",
                json!({"reason": huge, "pr_number": 1}),
            ),
            ev(
                "acme/widgets#42",
                "ESCALATED",
                json!({"reason": huge, "attempts": u64::MAX}),
            ),
            ev("acme/widgets#42", "MERGED", json!({"merge_sha": huge, "pr_number": -5})),
            ev("acme/widgets#42", "ISSUE_DONE", json!({"duration_minutes": f64::MAX})),
            ev(&agent, "SOMETHING_CUSTOM", Value::Object(many)),
            ev("acme/widgets#42", "SOMETHING_CUSTOM", json!([huge])),
            ev("not a stream", "AGENT_STUCK", json!("string data")),
            ev(
                "acme/widgets#42",
                "CI_FAILED",
                json!({"failed_checks": [{"nested": huge}, null, 5, ""]}),
            ),
        ];
        let big_ctx = IssueContext {
            title: Some(huge.clone()),
            agent_id: Some(huge.clone()),
            ..ctx()
        };
        for e in &cases {
            for c in [None, Some(&big_ctx)] {
                let p = render(e, c);
                check_limits(&p).unwrap_or_else(|err| panic!("{} broke a limit: {err}", e.event_type));
                let content = p["content"].as_str().unwrap();
                assert!(!content.is_empty());
                // Never a dangling escape before the cut mark.
                assert!(!content.ends_with("\\…") || content.ends_with("\\\\…"), "{content}");
            }
        }
    }

    #[test]
    fn cutting_keeps_characters_whole_and_marks_the_cut() {
        assert_eq!(inline("abc", 3), "abc");
        assert_eq!(inline("abcd", 3), "ab…");
        assert_eq!(inline("a*b", 10), "a\\*b");
        assert_eq!(inline("**", 3), "\\*…");
        assert_eq!(units(&inline(&"😀".repeat(10), 5)), 5);
        assert_eq!(inline(&"😀".repeat(10), 5), "😀😀…");
        assert_eq!(clip("ab\\*cd", 4), "ab…");
        assert_eq!(clip("abc", 0), "");
        assert_eq!(inline("line\nbreak\ttab", 100), "line break tab");
        assert_eq!(block("line\nbreak", 100), "line\nbreak");
        assert_eq!(human_duration(59.4), "59s");
        assert_eq!(human_duration(3600.0 * 50.0), "2d 2h");
        assert_eq!(human_duration(f64::NAN), "an unknown time");
    }
}
