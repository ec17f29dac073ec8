//! Stream identifiers. Two forms exist and nothing else is accepted:
//! an issue stream `{owner}/{repo}#{number}` and an agent stream `agent:{agent_id}`.
//! GitHub names are case-insensitive, so the canonical form of an issue stream has
//! `owner/repo` lowercased: `Acme/Widgets#7` and `acme/widgets#7` are one stream.

use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum StreamId {
    Issue { repo: String, number: i64 },
    Agent(String),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid stream_id {input:?}: {reason}; expected `owner/repo#number` (e.g. `acme/widgets#42`) or `agent:<agent_id>`")]
pub struct StreamIdError {
    pub input: String,
    pub reason: &'static str,
}

const MAX_AGENT_ID: usize = 200;

/// The largest issue number a stream id holds (12 digits).
pub const MAX_ISSUE_NUMBER: i64 = 999_999_999_999;

impl StreamId {
    pub fn parse(input: &str) -> Result<Self, StreamIdError> {
        let err = |reason| StreamIdError {
            input: truncate_for_error(input),
            reason,
        };
        if let Some(agent) = input.strip_prefix("agent:") {
            validate_agent_id(agent).map_err(err)?;
            return Ok(StreamId::Agent(agent.to_owned()));
        }
        let (repo, number) = input.rsplit_once('#').ok_or_else(|| err("no `#number`"))?;
        let number = parse_issue_number(number).ok_or_else(|| err("the issue number must be a positive integer"))?;
        let repo = normalize_repo(repo).map_err(err)?;
        Ok(StreamId::Issue { repo, number })
    }

    pub fn issue(repo: &str, number: i64) -> Result<Self, StreamIdError> {
        Self::parse(&format!("{repo}#{number}"))
    }

    pub fn repo(&self) -> Option<&str> {
        match self {
            StreamId::Issue { repo, .. } => Some(repo),
            StreamId::Agent(_) => None,
        }
    }

    pub fn issue_number(&self) -> Option<i64> {
        match self {
            StreamId::Issue { number, .. } => Some(*number),
            StreamId::Agent(_) => None,
        }
    }

    pub fn is_issue(&self) -> bool {
        matches!(self, StreamId::Issue { .. })
    }
}

impl fmt::Display for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StreamId::Issue { repo, number } => write!(f, "{repo}#{number}"),
            StreamId::Agent(agent) => write!(f, "agent:{agent}"),
        }
    }
}

fn parse_issue_number(s: &str) -> Option<i64> {
    if s.is_empty() || s.len() > 12 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse::<i64>().ok().filter(|n| *n > 0)
}

/// `owner/repo` lowercased, with GitHub's character rules: owner 1–39 of `[a-z0-9-]`,
/// repository 1–100 of `[a-z0-9._-]` (and not `.` or `..`).
pub fn normalize_repo(repo: &str) -> Result<String, &'static str> {
    let (owner, name) = repo.split_once('/').ok_or("the repository must be `owner/repo`")?;
    if owner.is_empty() || owner.len() > 39 || !owner.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
        return Err("the owner must be 1-39 letters, digits or hyphens");
    }
    if name.is_empty()
        || name.len() > 100
        || name == "."
        || name == ".."
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
    {
        return Err("the repository name must be 1-100 letters, digits, `-`, `_` or `.`");
    }
    Ok(repo.to_ascii_lowercase())
}

pub fn validate_agent_id(agent: &str) -> Result<(), &'static str> {
    if agent.is_empty() {
        return Err("the agent id is empty");
    }
    if agent.len() > MAX_AGENT_ID {
        return Err("the agent id is longer than 200 bytes");
    }
    if !agent
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':' | b'@' | b'/'))
    {
        return Err("the agent id may hold only letters, digits and `-_.:@/`");
    }
    Ok(())
}

fn truncate_for_error(s: &str) -> String {
    s.chars().take(120).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issue_streams_are_lowercased_and_agent_streams_kept() {
        let a = StreamId::parse("Acme/Widgets#7").unwrap();
        assert_eq!(a.to_string(), "acme/widgets#7");
        assert_eq!(a, StreamId::parse("acme/widgets#7").unwrap());
        assert_eq!(StreamId::parse("agent:Dev-E").unwrap().to_string(), "agent:Dev-E");
        assert_eq!(
            StreamId::parse("dashecorp/rig-agent-runtime#88")
                .unwrap()
                .issue_number(),
            Some(88)
        );
    }

    #[test]
    fn malformed_stream_ids_are_rejected() {
        for bad in [
            "",
            "acme",
            "acme/widgets",
            "acme/widgets#",
            "acme/widgets#0",
            "acme/widgets#-1",
            "acme/widgets#1x",
            "acme#1",
            "/widgets#1",
            "acme/#1",
            "acme/wid gets#1",
            "a/b/c#1",
            "agent:",
            "agent:has space",
            "issue:42",
            "acme/widgets#99999999999999",
        ] {
            assert!(StreamId::parse(bad).is_err(), "{bad:?} should be rejected");
        }
    }
}
