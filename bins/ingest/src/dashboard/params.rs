//! The query string of `/dashboard`, validated, and the links that change one setting of it.

use super::format::url_enc;
use super::DEFAULT_REFRESH_SECS;
use crate::api::STATUSES;
use rig_events::StreamId;
use serde::Deserialize;

#[derive(Debug, Default, Deserialize)]
pub struct DashboardQuery {
    issue: Option<String>,
    cost_by: Option<String>,
    status: Option<String>,
    refresh: Option<String>,
}

/// The query string, validated; links on the page keep every setting but the one they change.
#[derive(Debug, Clone, Default)]
pub(super) struct Params {
    pub issue: Option<String>,
    pub by_repo: bool,
    pub status: Option<String>,
    pub refresh: u32,
    /// What was wrong with the query string, said at the top of the page.
    pub notices: Vec<String>,
    /// The tenant shown, when it is not `default` (its page is `/t/{tenant}/dashboard`).
    pub tenant: Option<String>,
    /// The dashboards an admin may switch to: (name, link), `default` first.
    pub picker: Vec<(String, String)>,
}

impl Params {
    pub fn from_query(q: DashboardQuery) -> Params {
        let mut p = Params {
            refresh: DEFAULT_REFRESH_SECS,
            ..Params::default()
        };
        // Canonical when valid, so links carry `acme/widgets#3` however it was typed; kept as
        // typed otherwise, for the timeline to say what is wrong with it.
        p.issue = q
            .issue
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
            .map(|s| StreamId::parse(&s).map(|id| id.to_string()).unwrap_or(s));
        match q.cost_by.as_deref() {
            None | Some("") | Some("agent") => {}
            Some("repo") => p.by_repo = true,
            Some(other) => p
                .notices
                .push(format!("cost_by={other:?} is not `agent` or `repo`; showing by agent")),
        }
        match q.status.as_deref() {
            None | Some("") => {}
            Some(s) if STATUSES.contains(&s) => p.status = Some(s.to_owned()),
            Some(s) => p.notices.push(format!(
                "status={s:?} is not one of {}; showing all",
                STATUSES.join(", ")
            )),
        }
        match q.refresh.as_deref() {
            None | Some("") => {}
            Some(r) => match r.parse::<u32>() {
                Ok(0) => p.refresh = 0,
                Ok(n) => p.refresh = n.clamp(2, 3600),
                Err(_) => p.notices.push(format!(
                    "refresh={r:?} is not a number of seconds; using {DEFAULT_REFRESH_SECS}"
                )),
            },
        }
        p
    }

    /// The page's own path: `/dashboard`, or `/t/{tenant}/dashboard`.
    pub fn base(&self) -> String {
        match &self.tenant {
            Some(t) => format!("/t/{t}/dashboard"),
            None => "/dashboard".to_owned(),
        }
    }

    pub fn href(&self) -> String {
        let mut parts = Vec::new();
        if let Some(i) = &self.issue {
            parts.push(format!("issue={}", url_enc(i)));
        }
        if self.by_repo {
            parts.push("cost_by=repo".to_owned());
        }
        if let Some(s) = &self.status {
            parts.push(format!("status={}", url_enc(s)));
        }
        if self.refresh != DEFAULT_REFRESH_SECS {
            parts.push(format!("refresh={}", self.refresh));
        }
        if parts.is_empty() {
            self.base()
        } else {
            format!("{}?{}", self.base(), parts.join("&"))
        }
    }

    pub fn with_issue(&self, issue: Option<&str>) -> String {
        Params {
            issue: issue.map(str::to_owned),
            ..self.clone()
        }
        .href()
    }
    pub fn with_status(&self, status: Option<&str>) -> String {
        Params {
            status: status.map(str::to_owned),
            ..self.clone()
        }
        .href()
    }
    pub fn with_by_repo(&self, by_repo: bool) -> String {
        Params {
            by_repo,
            ..self.clone()
        }
        .href()
    }
    pub fn with_refresh(&self, refresh: u32) -> String {
        Params {
            refresh,
            ..self.clone()
        }
        .href()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_keep_the_other_settings_and_encode_stream_ids() {
        let p = Params {
            by_repo: true,
            refresh: 0,
            ..Params::default()
        };
        assert_eq!(
            p.with_issue(Some("acme/w#1")),
            "/dashboard?issue=acme%2Fw%231&cost_by=repo&refresh=0"
        );
        let p = Params {
            refresh: DEFAULT_REFRESH_SECS,
            ..Params::default()
        };
        assert_eq!(p.href(), "/dashboard");
        let p = Params {
            tenant: Some("acme".into()),
            ..p
        };
        assert_eq!(p.with_refresh(0), "/t/acme/dashboard?refresh=0");
    }
}
