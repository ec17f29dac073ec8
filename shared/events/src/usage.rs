//! Reading a `TOKEN_USAGE` event and pricing it: the one rule both projectors (token-projector,
//! cost-projector) apply, so their totals can never disagree.
//!
//! What it promises: the cost of an event is its own `cost_usd` when given (read exactly, JSON
//! numbers through their shortest decimal form), else the price table's row in force on the
//! event's day, else 0 USD flagged `unpriced`. The day is the UTC date of `occurred_at`, else of
//! `recorded_at`. Data that cannot be read (wrong types that bypassed ingest's validation) is an
//! error naming the field: the caller treats the event as poison, never as zero.

use crate::money::{PriceTable, Tokens};
use crate::{StoredEvent, TokenUsage};
use chrono::NaiveDate;
use rust_decimal::Decimal;
use std::borrow::Cow;
use std::collections::HashMap;

/// One `TOKEN_USAGE` event, read and priced. Borrows its strings from the event when it can.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Usage<'e> {
    pub agent_id: Cow<'e, str>,
    pub model: Cow<'e, str>,
    pub tokens: Tokens,
    /// Exact; 0 when `unpriced`.
    pub cost_usd: Decimal,
    /// The event had no `cost_usd` and its model no price row on `day`.
    pub unpriced: bool,
    /// UTC date of `occurred_at`, else of `recorded_at`.
    pub day: NaiveDate,
}

/// Reads and prices a `TOKEN_USAGE` event. The error is the catalog's refusal of its data
/// (which field is wrong and how): data stored before a rule held is poison, never zero.
///
/// One reading, [`TokenUsage`]'s: straight from the text when the event was read lean
/// (`StoredEvent::data_text`, no `Value` built), else from the parsed `data`.
pub fn read_usage<'e>(event: &'e StoredEvent, prices: &PriceTable) -> Result<Usage<'e>, String> {
    let day = event.occurred_at.unwrap_or(event.recorded_at).date_naive();
    let usage = match &event.data_text {
        Some(text) => TokenUsage::from_json_text(event.schema_version, text)?,
        None => TokenUsage::from_value(event.schema_version, &event.data)?,
    };
    Usage::priced(usage, day, prices)
}

impl<'e> Usage<'e> {
    /// The cost rule: the event's own `cost_usd` when given, else the price in force on `day`,
    /// else 0 flagged `unpriced`.
    fn priced(u: TokenUsage<'e>, day: NaiveDate, prices: &PriceTable) -> Result<Usage<'e>, String> {
        let tokens = Tokens {
            input: u.input_tokens,
            output: u.output_tokens,
            cache_read: u.cache_read_tokens.unwrap_or(0),
            cache_write: u.cache_write_tokens.unwrap_or(0),
        };
        let priced = match u.cost_usd {
            Some(d) => Some(d),
            None => prices
                .cost(&u.model, day, tokens)
                .map_err(|e| format!("TOKEN_USAGE: {e}"))?,
        };
        let (cost_usd, unpriced) = match priced {
            Some(d) => (d, false),
            None => (Decimal::ZERO, true),
        };
        Ok(Usage {
            agent_id: u.agent_id,
            model: u.model,
            tokens,
            cost_usd,
            unpriced,
            day,
        })
    }
}

/// Sums of usages that share a key (a table row): what a batch adds to that row.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Totals {
    pub tokens: Tokens,
    pub cost_usd: Decimal,
    pub events: i64,
    pub unpriced_events: i64,
}

impl Totals {
    /// Adds one usage; an overflow is an error (the event cannot be applied), never a wrap.
    pub fn add(&mut self, u: &Usage<'_>) -> Result<(), String> {
        let sum = |a: i64, b: i64, what: &str| {
            a.checked_add(b)
                .ok_or_else(|| format!("TOKEN_USAGE: {what} overflow the 64-bit total"))
        };
        self.tokens.input = sum(self.tokens.input, u.tokens.input, "input_tokens")?;
        self.tokens.output = sum(self.tokens.output, u.tokens.output, "output_tokens")?;
        self.tokens.cache_read = sum(self.tokens.cache_read, u.tokens.cache_read, "cache_read_tokens")?;
        self.tokens.cache_write = sum(self.tokens.cache_write, u.tokens.cache_write, "cache_write_tokens")?;
        self.cost_usd = self
            .cost_usd
            .checked_add(u.cost_usd)
            .ok_or_else(|| "TOKEN_USAGE: cost_usd overflows the decimal total".to_owned())?;
        self.events = sum(self.events, 1, "events")?;
        self.unpriced_events = sum(self.unpriced_events, i64::from(u.unpriced), "unpriced events")?;
        Ok(())
    }
}

/// Totals per table row, gathered over a batch. A row's text key columns are joined by NUL
/// into one string (neither Postgres text nor jsonb strings can hold NUL), so an event costs a
/// lookup and no allocation unless its row is new.
#[derive(Debug, Default)]
pub struct RowSums {
    rows: HashMap<String, Totals>,
    key: String,
}

impl RowSums {
    pub fn add(&mut self, key: &[&str], u: &Usage<'_>) -> Result<(), String> {
        self.key.clear();
        for (i, part) in key.iter().enumerate() {
            if i > 0 {
                self.key.push('\0');
            }
            self.key.push_str(part);
        }
        match self.rows.get_mut(self.key.as_str()) {
            Some(t) => t.add(u),
            None => self.rows.entry(self.key.clone()).or_default().add(u),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    pub fn len(&self) -> usize {
        self.rows.len()
    }

    pub fn clear(&mut self) {
        self.rows.clear();
    }

    /// Takes the rows out: each key (split back into its columns) with its totals.
    pub fn take(&mut self) -> Vec<(String, Totals)> {
        self.rows.drain().collect()
    }
}

/// Splits a `RowSums` key back into its columns.
pub fn key_columns(key: &str) -> std::str::Split<'_, char> {
    key.split('\0')
}

/// The `owner/repo` of an issue stream, `""` for an agent stream (the cost-projector's `repo`).
pub fn repo_of(stream_id: &str) -> Result<&str, String> {
    if stream_id.starts_with("agent:") {
        return Ok("");
    }
    match stream_id.rsplit_once('#') {
        Some((repo, _)) if !repo.is_empty() => Ok(repo),
        _ => Err(format!(
            "stream_id {stream_id:?} is neither an issue nor an agent stream"
        )),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::money::Price;
    use crate::MAX_TOKENS;
    use chrono::{DateTime, Utc};
    use serde_json::json;
    use serde_json::Value;
    use std::str::FromStr;

    fn event(data: Value, occurred_at: Option<&str>) -> StoredEvent {
        let t = |s: &str| DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc);
        StoredEvent {
            position: 1,
            stream_id: "acme/widgets#1".into(),
            version: 1,
            event_id: uuid::Uuid::nil(),
            event_type: "TOKEN_USAGE".into(),
            schema_version: 1,
            data,
            metadata: json!({}),
            occurred_at: occurred_at.map(t),
            recorded_at: t("2025-10-05T23:59:59Z"),
            data_text: None,
        }
    }

    fn prices() -> PriceTable {
        let d = |s| NaiveDate::parse_from_str(s, "%Y-%m-%d").unwrap();
        let dec = |s| Decimal::from_str(s).unwrap();
        PriceTable::new(&[
            Price {
                model: "m".into(),
                effective_from: d("2025-10-01"),
                input_per_mtok: dec("3.00"),
                output_per_mtok: dec("15"),
                cache_read_per_mtok: dec("0.30"),
                cache_write_per_mtok: dec("3.75"),
            },
            Price {
                model: "m".into(),
                effective_from: d("2025-10-05"),
                input_per_mtok: dec("1"),
                output_per_mtok: dec("1"),
                cache_read_per_mtok: dec("0"),
                cache_write_per_mtok: dec("0"),
            },
        ])
    }

    #[test]
    fn cost_comes_from_the_event_then_the_price_in_force_then_zero() {
        let data = json!({"agent_id": "a", "model": "m", "input_tokens": 1_000_000, "output_tokens": 2,
                          "cache_read_tokens": 10, "cache_write_tokens": null});
        let prices = prices();
        let e = event(data.clone(), Some("2025-10-04T12:00:00+02:00"));
        let u = read_usage(&e, &prices).unwrap();
        assert_eq!(u.day.to_string(), "2025-10-04");
        assert_eq!(
            u.tokens,
            Tokens {
                input: 1_000_000,
                output: 2,
                cache_read: 10,
                cache_write: 0
            }
        );
        assert_eq!(u.cost_usd, Decimal::from_str("3.000033").unwrap());
        assert!(!u.unpriced);

        // No occurred_at: the day is recorded_at's, where the newer price is in force.
        let e = event(data.clone(), None);
        let u = read_usage(&e, &prices).unwrap();
        assert_eq!(u.day.to_string(), "2025-10-05");
        assert_eq!(u.cost_usd, Decimal::from_str("1.000002").unwrap());

        let mut with_cost = data.clone();
        with_cost["cost_usd"] = json!(0.1);
        assert_eq!(
            read_usage(&event(with_cost.clone(), None), &prices)
                .unwrap()
                .cost_usd
                .to_string(),
            "0.1"
        );
        with_cost["cost_usd"] = json!("0.30");
        assert_eq!(
            read_usage(&event(with_cost, None), &prices)
                .unwrap()
                .cost_usd
                .to_string(),
            "0.30"
        );

        let e = event(data, Some("2025-09-30T23:00:00Z"));
        let before = read_usage(&e, &prices).unwrap();
        assert!(before.unpriced);
        assert_eq!(before.cost_usd, Decimal::ZERO);
    }

    #[test]
    fn unreadable_data_is_an_error_naming_the_field() {
        let bad = |data: Value| read_usage(&event(data, None), &prices()).unwrap_err();
        let e = bad(json!({"agent_id": "a", "model": "m", "input_tokens": "lots", "output_tokens": 1}));
        assert_eq!(
            e,
            r#"TOKEN_USAGE: data.input_tokens must be an integer >= 0, found "lots""#
        );
        assert!(bad(json!({"agent_id": "a", "model": "m", "input_tokens": 1})).contains("output_tokens is missing"));
        assert!(bad(json!({"agent_id": 5, "model": "m", "input_tokens": 1, "output_tokens": 1})).contains("agent_id"));
        let e = bad(json!({"agent_id": "a", "model": "m", "input_tokens": 1, "output_tokens": 1, "cost_usd": "-1"}));
        assert!(e.contains("cost_usd"), "{e}");
        // Above the bound ingest holds to (an event stored before it held): poison, not a sum.
        let e = bad(json!({"agent_id": "a", "model": "m", "input_tokens": 1, "output_tokens": 1, "cost_usd": 1e28}));
        assert!(e.contains("cost_usd must be a decimal amount from 0 to 1000000"), "{e}");
        assert!(bad(json!({"agent_id": "a", "model": "m", "input_tokens": -1, "output_tokens": 1})).contains(">= 0"));
        assert!(bad(json!([1])).contains("not a JSON object"));
        // Token counts above the door's bound, stored before it held, are still read (a sum they
        // overflow is refused where it is written).
        let big = json!({"agent_id": "a", "model": "m", "input_tokens": MAX_TOKENS + 1, "output_tokens": 1});
        assert_eq!(
            read_usage(&event(big, None), &prices()).unwrap().tokens.input,
            MAX_TOKENS + 1
        );
    }

    /// The event as a lean consumer reads it: data as the text Postgres gives for the jsonb.
    fn lean(text: &str, occurred_at: Option<&str>) -> StoredEvent {
        let mut e = event(Value::Null, occurred_at);
        e.data_text = Some(text.to_owned());
        e
    }

    #[test]
    fn data_read_from_text_gives_what_the_parsed_data_gives() {
        // One reading (`TokenUsage`) over two inputs: the stored text and the parsed data.
        let prices = prices();
        let cases = [
            // Well-formed.
            r#"{"model": "m", "agent_id": "dev-1", "input_tokens": 1000, "output_tokens": 2}"#,
            r#"{"model": "m", "agent_id": "dev-1", "input_tokens": 0, "output_tokens": 0, "cache_read_tokens": 7, "cache_write_tokens": 9, "extra": {"x": [1]}}"#,
            r#"{"model": "unknown", "agent_id": "dev-1", "input_tokens": 1, "output_tokens": 1}"#,
            // Escapes, given costs, repeated keys (the last one counts, as in parsed data),
            // and data refused in every way the catalog words.
            r#"{"model": "m", "agent_id": "dev\n1", "input_tokens": 1, "output_tokens": 1}"#,
            r#"{"model": "m\u00e9", "agent_id": "d", "input_tokens": 1, "output_tokens": 1}"#,
            r#"{"model": "m", "agent_id": "a", "input_tokens": 1, "output_tokens": 1, "cost_usd": 0.1}"#,
            r#"{"model": "m", "agent_id": "a", "input_tokens": 1, "output_tokens": 1, "cost_usd": "0.30"}"#,
            r#"{"model": "m", "agent_id": "a", "input_tokens": 1, "output_tokens": 1, "cost_usd": null}"#,
            r#"{"model": "m", "agent_id": "a", "input_tokens": 1, "output_tokens": 1, "cost_usd": "-1"}"#,
            r#"{"model": "m", "agent_id": "a", "input_tokens": 1, "output_tokens": 1, "cost_usd": 1e28}"#,
            r#"{"model": "m", "agent_id": "a", "input_tokens": 1, "output_tokens": 1, "agent_id": "b"}"#,
            r#"{"model": "m", "agent_id": "", "input_tokens": 1, "output_tokens": 1}"#,
            r#"{"model": "m", "agent_id": null, "input_tokens": 1, "output_tokens": 1}"#,
            r#"{"model": "m", "agent_id": 5, "input_tokens": 1, "output_tokens": 1}"#,
            r#"{"model": "m", "agent_id": "a", "input_tokens": "lots", "output_tokens": 1}"#,
            r#"{"model": "m", "agent_id": "a", "input_tokens": -1, "output_tokens": 1}"#,
            r#"{"model": "m", "agent_id": "a", "input_tokens": 5.0, "output_tokens": 1}"#,
            r#"{"model": "m", "agent_id": "a", "input_tokens": 9223372036854775808, "output_tokens": 1}"#,
            r#"{"model": "m", "agent_id": "a", "input_tokens": 1}"#,
            r#"{"model": "m", "agent_id": "a", "input_tokens": 1, "output_tokens": null}"#,
            r#"{"model": "m", "agent_id": "a", "input_tokens": 1, "output_tokens": 1, "cache_write_tokens": -3}"#,
            r#"{"model": "m", "agent_id": "a", "input_tokens": 1000000000001, "output_tokens": 1}"#,
            r#"{"model": "m", "agent_id": "dev-1", "input_tokens": 9223372036854775807, "output_tokens": 1, "cache_read_tokens": null}"#,
            r#"{"model": "m", "agent_id": "dev-1", "input_tokens": 1000000000000, "output_tokens": 1, "cache_read_tokens": null}"#,
            r#"{"model": "m", "agent_id": "a", "input_tokens": 1, "output_tokens": 1, "cost_usd": 0.1, "cost_usd": "x"}"#,
            r#"[1]"#,
            r#""text""#,
            r#"{}"#,
        ];
        for text in cases {
            for at in [None, Some("2025-10-02T10:00:00Z"), Some("2025-09-30T23:00:00Z")] {
                let parsed = event(serde_json::from_str(text).unwrap(), at);
                let from_value = read_usage(&parsed, &prices);
                let lean = lean(text, at);
                let from_text = read_usage(&lean, &prices);
                assert_eq!(from_text, from_value, "{text} at {at:?}");
            }
        }
        // The common case borrows from the text: no allocation per event.
        let e = lean(cases[0], None);
        let u = read_usage(&e, &prices).unwrap();
        assert!(matches!(u.agent_id, Cow::Borrowed("dev-1")) && matches!(u.model, Cow::Borrowed("m")));
        let e = lean(cases[6], None);
        let u = read_usage(&e, &prices).unwrap();
        assert_eq!(u.cost_usd.to_string(), "0.30");
        assert!(matches!(u.agent_id, Cow::Borrowed("a")));
    }

    #[test]
    fn repo_is_owner_slash_repo_or_empty_for_agents() {
        assert_eq!(repo_of("acme/widgets#88").unwrap(), "acme/widgets");
        assert_eq!(repo_of("agent:dev-1").unwrap(), "");
        assert!(repo_of("nonsense").is_err());
    }
}
