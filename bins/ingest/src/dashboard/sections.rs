//! The tables of the page: issues by status, a chosen issue's timeline, agents, tokens per issue
//! and consumers (the cost chart is in `chart`). Each takes what `data` read and gives markup.

use super::data::{AgentRow, Data, IssueRow, Timeline, TokenRow};
use super::format::{compact_json, exact, fmt_age, fmt_time, money, thousands, truncate};
use super::params::Params;
use super::{DEFAULT_REFRESH_SECS, ID_CHARS, ISSUE_LIMIT, TITLE_CHARS, TOKEN_LIMIT};
use crate::api::STATUSES;
use maud::{html, Markup};
use rig_consumer::ConsumerStatus;
use rig_events::StoredEvent;

pub(super) fn issues(p: &Params, d: &Data) -> Markup {
    html! {
        section id="issues" {
            h2 { "Issues by status" }
            (status_cards(p, d))
            (issues_summary(p, d))
            @if d.issues.is_empty() {
                p { "No issues yet." }
            } @else {
                table.issues {
                    (thead(&[("Issue", false), ("Title", false), ("Status", false), ("Agent", false), ("Version", true),
                             ("Stuck", true), ("CI", false), ("PR", false), ("Updated", false)]))
                    tbody { @for i in &d.issues { (issue_row(p, d, i)) } }
                }
            }
        }
    }
}

/// One card per status (each a link filtering the list), with its count.
fn status_cards(p: &Params, d: &Data) -> Markup {
    // Streams with events but no status-setting event yet (only heartbeats, say).
    let none: i64 = d
        .counts
        .iter()
        .filter(|c| c.0.as_deref().is_none_or(|s| !STATUSES.contains(&s)))
        .map(|c| c.1)
        .sum();
    html! {
        div.cards {
            a.card.on[p.status.is_none()] href=(p.with_status(None)) { "all" b { (d.count(None)) } }
            @for s in STATUSES {
                a.card.{ "status-" (s) }.on[p.status.as_deref() == Some(*s)]
                    data-status=(s) href=(p.with_status(Some(s))) {
                    (s.replace('_', " ")) b { (d.count(Some(s))) }
                }
            }
            @if none > 0 {
                span.card { "no status" b { (none) } }
            }
        }
    }
}

fn issues_summary(p: &Params, d: &Data) -> Markup {
    let shown = d.issues.len() as i64;
    let of = d.count(p.status.as_deref());
    html! {
        p.sub {
            @match &p.status {
                Some(s) => { "status " (s) },
                None => "all statuses",
            }
            " · showing " (shown) " of " (of) ", most recently updated first"
            @if shown < of { " (at most " (ISSUE_LIMIT) ")" }
        }
    }
}

fn issue_row(p: &Params, d: &Data, i: &IssueRow) -> Markup {
    html! {
        tr data-stream=(i.stream_id) {
            td { (issue_link(p, &i.stream_id)) }
            td { (truncate(i.title.as_deref().unwrap_or(""), TITLE_CHARS)) }
            td { (status_chip(i.status.as_deref())) }
            td.mono { (truncate(i.agent_id.as_deref().unwrap_or(""), ID_CHARS)) }
            td.num { (i.version) }
            td.num { (i.stuck_count) }
            td { (ci_badge(i.last_ci.as_deref())) }
            td { @if let Some(n) = i.pr_number { "#" (n) } }
            td title=(fmt_time(i.updated_at)) { (fmt_age((d.now - i.updated_at).num_seconds() as f64)) " ago" }
        }
    }
}

pub(super) fn timeline(p: &Params, d: &Data) -> Markup {
    html! {
        section id="timeline" {
            h2 { "Timeline" }
            (issue_form(p))
            @match &d.timeline {
                Timeline::NotChosen => p.sub {
                    "Pick an issue in the table above (or type a stream id) to see what happened to it, and when."
                },
                Timeline::Invalid(e) => p.err { (e) },
                Timeline::Loaded { stream_id, events, .. } if events.is_empty() => p {
                    "No events for " span.mono { (stream_id) } "."
                },
                Timeline::Loaded { stream_id, state, events, total } => {
                    (timeline_heading(stream_id, state.as_ref()))
                    @if (events.len() as i64) < *total {
                        p.sub { "The latest " (events.len()) " of " (total) " events." }
                    }
                    (timeline_table(events))
                }
            }
        }
    }
}

/// Choosing a stream by typing its id; the other settings ride along as hidden fields.
fn issue_form(p: &Params) -> Markup {
    html! {
        form method="get" action=(p.base()) {
            input type="text" name="issue" placeholder="owner/repo#42 or agent:id"
                value=(p.issue.as_deref().unwrap_or(""));
            @if p.by_repo {
                input type="hidden" name="cost_by" value="repo";
            }
            @if p.refresh != DEFAULT_REFRESH_SECS {
                input type="hidden" name="refresh" value=(p.refresh);
            }
            " "
            button type="submit" { "Show" }
        }
    }
}

/// The stream id, and the issue's folded state when it has one.
fn timeline_heading(stream_id: &str, state: Option<&IssueRow>) -> Markup {
    html! {
        h3 {
            span.mono { (stream_id) }
            @if let Some(s) = state {
                " " (status_chip(s.status.as_deref())) " " (truncate(s.title.as_deref().unwrap_or(""), TITLE_CHARS))
            }
        }
        @if let Some(s) = state {
            p.sub {
                @if let Some(a) = &s.agent_id { "held by " span.mono { (truncate(a, ID_CHARS)) } " · " }
                @if let Some(c) = &s.last_ci { "last CI " (ci_badge(Some(c))) " · " }
                "version " (s.version) " · stuck " (s.stuck_count) " time(s)"
            }
        }
    }
}

fn timeline_table(events: &[StoredEvent]) -> Markup {
    let first = events.first().map(|e| e.recorded_at);
    html! {
        table.timeline {
            (thead(&[("v", true), ("Recorded (UTC)", false), ("+since first", false), ("Event", false),
                     ("Data", false)]))
            tbody {
                @for e in events {
                    tr data-version=(e.version) {
                        td.num { (e.version) }
                        td title={
                            "position " (e.position)
                            @if let Some(t) = e.occurred_at { ", occurred " (fmt_time(t)) }
                        } {
                            (fmt_time(e.recorded_at))
                        }
                        td {
                            "+"
                            @if let Some(f) = first {
                                (fmt_age((e.recorded_at - f).num_milliseconds() as f64 / 1000.0))
                            }
                        }
                        td.mono.event-type { (e.event_type) }
                        td.mono.data { (truncate(&compact_json(&e.data), 300)) }
                    }
                }
            }
        }
    }
}

pub(super) fn agents(p: &Params, d: &Data, threshold: std::time::Duration) -> Markup {
    let limit = threshold.as_secs_f64();
    let stale_count = d.agents.iter().filter(|a| a.is_stale(limit)).count();
    html! {
        section id="agents" {
            h2 { "Agents" }
            p.sub {
                (d.agents.len()) " agent(s), " (stale_count) " stale (no heartbeat for more than " (fmt_age(limit)) ", "
                code { "stale_heartbeat.threshold" } ")"
            }
            @if d.agents.is_empty() {
                p { "No agents yet." }
            } @else {
                table.agents {
                    (thead(&[("Agent", false), ("Last heartbeat", false), ("", false), ("Status", false),
                             ("Current issue", false)]))
                    tbody { @for a in &d.agents { (agent_row(p, a, a.is_stale(limit))) } }
                }
            }
        }
    }
}

fn agent_row(p: &Params, a: &AgentRow, stale: bool) -> Markup {
    let id = truncate(&a.agent_id, ID_CHARS);
    html! {
        tr class=(if stale { "stale" } else { "fresh" }) data-agent=(id) {
            td.mono { (id) }
            td {
                @match (a.last_heartbeat_at, a.age_seconds) {
                    (Some(t), Some(age)) => span title=(fmt_time(t)) { (fmt_age(age)) " ago" },
                    _ => "never",
                }
            }
            td { @if stale { (badge("stale", "STALE")) } @else { (badge("ok", "ok")) } }
            td { (a.status.as_deref().unwrap_or("")) }
            td { @if let Some(s) = &a.current_stream_id { (issue_link(p, s)) } }
        }
    }
}

pub(super) fn tokens(p: &Params, d: &Data) -> Markup {
    html! {
        section id="tokens" {
            h2 { "Tokens per issue" }
            p.sub {
                "Top " (TOKEN_LIMIT) " issues by cost (issue streams only; "
                "usage reported on agent streams is in the cost chart)"
            }
            @if d.tokens.is_empty() {
                p { "No token usage yet." }
            } @else {
                table.tokens {
                    (thead(&[("Issue", false), ("Agents", false), ("Models", false), ("Input", true), ("Output", true),
                             ("Cache read", true), ("Cache write", true), ("Events", true), ("Cost (USD)", true)]))
                    tbody { @for t in &d.tokens { (token_row(p, t)) } }
                }
            }
        }
    }
}

fn token_row(p: &Params, t: &TokenRow) -> Markup {
    let counts = [
        t.input_tokens,
        t.output_tokens,
        t.cache_read_tokens,
        t.cache_write_tokens,
        t.events,
    ];
    html! {
        tr data-stream=(t.stream_id) {
            td { (issue_link(p, &t.stream_id)) }
            td.mono { (truncate(&t.agents, ID_CHARS)) }
            td.mono { (truncate(&t.models, ID_CHARS)) }
            @for n in counts { td.num { (thousands(n)) } }
            td.num title={ (exact(t.cost_usd)) " USD" } { "$" (money(t.cost_usd)) }
        }
    }
}

pub(super) fn consumers(d: &Data) -> Markup {
    html! {
        section id="consumers" {
            h2 { "Consumers" }
            p.sub {
                "Lag is the number of events a consumer has not applied yet; "
                "active means an instance holds the consumer's lock."
            }
            table.consumers {
                (thead(&[("Consumer", false), ("Active", false), ("Position", true), ("Head", true), ("Lag", true),
                         ("State", false), ("Last error", false)]))
                tbody { @for c in &d.consumers { (consumer_row(c)) } }
            }
        }
    }
}

fn consumer_row(c: &ConsumerStatus) -> Markup {
    let state = if c.paused {
        badge("stale", "PAUSED")
    } else if c.lag > 0 {
        badge("warn", "behind")
    } else {
        badge("ok", "caught up")
    };
    html! {
        tr data-consumer=(c.consumer) {
            td.mono { (c.consumer) }
            td { @if c.active { (badge("ok", "yes")) } @else { (badge("off", "no")) } }
            td.num { (thousands(c.position)) }
            td.num { (thousands(c.head)) }
            td.num.lag { (thousands(c.lag)) }
            td { (state) }
            td.mono.data.err { (truncate(c.last_error.as_deref().unwrap_or(""), 300)) }
        }
    }
}

/// A table's header row: (name, whether the column holds numbers, right-aligned).
fn thead(cols: &[(&str, bool)]) -> Markup {
    html! {
        thead { tr { @for (name, num) in cols { th class=[num.then_some("num")] { (name) } } } }
    }
}

/// A stream id linking to its timeline, the other settings kept.
fn issue_link(p: &Params, stream_id: &str) -> Markup {
    html! {
        a.mono href={ (p.with_issue(Some(stream_id))) "#timeline" } { (stream_id) }
    }
}

fn badge(kind: &str, text: &str) -> Markup {
    html! { span class={ "badge " (kind) } { (text) } }
}

fn status_chip(status: Option<&str>) -> Markup {
    html! {
        @match status {
            Some(s) if STATUSES.contains(&s) => span.status.{ "status-" (s) } { (s.replace('_', " ")) },
            Some(s) => span.status { (truncate(s, 40)) },
            None => span.status { "none" },
        }
    }
}

fn ci_badge(ci: Option<&str>) -> Markup {
    html! {
        @match ci {
            Some("passed") => (badge("ok", "passed")),
            Some("failed") => (badge("stale", "failed")),
            Some(other) => (truncate(other, 40)),
            None => {},
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_from_the_data_are_escaped() {
        let hostile = r#"<script>alert('x' & "y")</script>"#;
        assert_eq!(
            status_chip(Some(hostile)).into_string(),
            r#"<span class="status">&lt;script&gt;alert('x' &amp; &quot;y&quot;)&lt;/script&gt;</span>"#
        );
        let p = Params::default();
        let link = issue_link(&p, "a\"b").into_string();
        assert!(
            link.contains("href=\"/dashboard?issue=a%22b&amp;refresh=0#timeline\""),
            "{link}"
        );
        assert!(link.ends_with(">a&quot;b</a>"), "{link}");
    }
}
