//! The page around the sections: head (title, self-refresh, style), header with the section
//! links, notices about the query string; and the page shown while the database is away.

use super::data::Data;
use super::format::fmt_time;
use super::params::Params;
use super::{chart, sections, DEFAULT_REFRESH_SECS};
use maud::{html, Markup, PreEscaped, DOCTYPE};

/// The sections, in page order: (id, name in the header's links).
const SECTIONS: [(&str, &str); 6] = [
    ("issues", "Issues"),
    ("timeline", "Timeline"),
    ("agents", "Agents"),
    ("costs", "Cost per day"),
    ("tokens", "Tokens per issue"),
    ("consumers", "Consumers"),
];

pub(super) fn dashboard(p: &Params, d: &Data, threshold: std::time::Duration) -> Markup {
    let body = html! {
        (header(p, d))
        @for n in &p.notices {
            p.notice { (n) }
        }
        (sections::issues(p, d))
        (sections::timeline(p, d))
        (sections::agents(p, d, threshold))
        (chart::section(p, d))
        (sections::tokens(p, d))
        (sections::consumers(d))
    };
    layout(p, "rig-conductor dashboard", body)
}

/// The form a browser gives a tenant's token in (once: it is then kept in a cookie).
pub(super) fn login(p: &Params, message: Option<&str>) -> Markup {
    let body = html! {
        header { h1 { "rig-conductor" } }
        @if let Some(m) = message {
            p.notice { (m) }
        }
        section {
            h2 { "Sign in" }
            p { "This dashboard takes the tenant's token (or an admin token). It is kept in this browser as a cookie until you sign out." }
            form method="post" action=(p.base()) {
                input type="password" name="token" autocomplete="off" required placeholder="token";
                " "
                button type="submit" { "Open" }
            }
        }
    };
    layout(p, "rig-conductor dashboard: sign in", body)
}

pub(super) fn unavailable(p: &Params) -> Markup {
    let body = html! {
        header { h1 { "rig-conductor" } }
        p.notice { "The database is unavailable; this page retries by itself." }
    };
    layout(p, "rig-conductor dashboard: database unavailable", body)
}

fn layout(p: &Params, title: &str, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                @if p.refresh > 0 {
                    // Meta refresh reloads the current URL, query string included, so the view
                    // is kept.
                    meta http-equiv="refresh" content=(p.refresh);
                }
                title { (title) }
                // The style is this file's own text, not data: it goes in as written.
                style { (PreEscaped(STYLE)) }
            }
            body { (body) }
        }
    }
}

fn header(p: &Params, d: &Data) -> Markup {
    html! {
        header {
            h1 { "rig-conductor" }
            p.meta {
                "Generated " (fmt_time(d.now)) " · "
                @if p.refresh == 0 {
                    "auto-refresh off (" a href=(p.with_refresh(DEFAULT_REFRESH_SECS)) { "turn on" } ")"
                } @else {
                    "refreshes every " (p.refresh) " s (" a href=(p.with_refresh(0)) { "pause" } ")"
                }
            }
            nav {
                @for (i, (id, name)) in SECTIONS.iter().enumerate() {
                    @if i > 0 { " " }
                    a href={ "#" (id) } { (name) }
                }
            }
            @if let Some(t) = &p.tenant {
                p.meta {
                    "Tenant " b { (t) } " · "
                    form method="post" action=(p.base()) {
                        input type="hidden" name="logout" value="1";
                        button type="submit" { "sign out" }
                    }
                }
            }
            @if !p.picker.is_empty() {
                nav.tenants {
                    "Tenants: "
                    @for (name, href) in &p.picker {
                        @if p.tenant.as_deref().unwrap_or(rig_tenants::DEFAULT) == name.as_str() {
                            b { (name) } " "
                        } @else {
                            a href=(href) { (name) } " "
                        }
                    }
                }
            }
        }
    }
}

const STYLE: &str = "\
body{font:14px/1.4 system-ui,-apple-system,'Segoe UI',sans-serif;margin:0 auto;max-width:1180px;padding:0 16px 40px;color:#1f2328;background:#f6f8fa}\
header{display:flex;flex-wrap:wrap;align-items:baseline;gap:4px 16px;border-bottom:1px solid #d0d7de;margin-bottom:8px}\
h1{font-size:20px;margin:12px 0 6px}h2{font-size:16px;margin:0 0 8px}\
nav a{margin-right:10px}.meta,.sub{color:#656d76;font-size:12px}\
section{background:#fff;border:1px solid #d0d7de;border-radius:6px;padding:12px 14px;margin:12px 0}\
table{border-collapse:collapse;width:100%}th,td{text-align:left;padding:3px 8px;border-bottom:1px solid #eaeef2;vertical-align:top}\
th{font-weight:600;color:#424a53;background:#f6f8fa}td.num,th.num{text-align:right;font-variant-numeric:tabular-nums}\
a{color:#0969da;text-decoration:none}a:hover{text-decoration:underline}\
.cards{display:flex;flex-wrap:wrap;gap:8px;margin-bottom:10px}\
.card{display:block;border:1px solid #d0d7de;border-radius:6px;padding:6px 12px;min-width:84px;color:inherit}\
.card b{display:block;font-size:20px}.card.on{outline:2px solid #0969da}\
.status{display:inline-block;padding:0 6px;border-radius:10px;font-size:12px;background:#eaeef2}\
.status-approved{background:#ddf4ff}.status-assigned{background:#fff8c5}.status-in_progress{background:#ffe2b3}\
.status-in_review{background:#fbefff}.status-merged{background:#d8f3dc}.status-done{background:#c8e6c9}\
tr.stale td{background:#ffebe9}.badge{display:inline-block;padding:0 6px;border-radius:4px;font-size:11px;font-weight:600}\
.badge.stale{background:#cf222e;color:#fff}.badge.ok{background:#1a7f37;color:#fff}.badge.warn{background:#bf8700;color:#fff}\
.badge.off{background:#8c959f;color:#fff}.notice{background:#fff8c5;border:1px solid #d4a72c;padding:6px 10px;border-radius:6px}\
.err{color:#cf222e}code,.mono{font-family:ui-monospace,SFMono-Regular,Menlo,monospace;font-size:12px}\
.data{max-width:520px;overflow-wrap:anywhere}.legend{display:flex;flex-wrap:wrap;gap:4px 14px;font-size:12px;margin:6px 0}\
.sw{display:inline-block;width:10px;height:10px;margin-right:4px;vertical-align:middle}\
svg.chart{width:100%;height:auto;max-width:900px}svg text{font:11px system-ui,sans-serif;fill:#424a53}\
form{display:inline}input[type=text]{width:260px}\
";
