//! Exact money. Prices and costs are decimals, never floats summed over time. A JSON number is
//! read through its shortest decimal form (`0.3` is 0.3, not 0.29999999999999998889…).

use chrono::NaiveDate;
use rust_decimal::Decimal;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;
use std::str::FromStr;

/// A decimal from a JSON number (shortest round-trip form) or a decimal string.
pub fn decimal_from_json(v: &Value) -> Option<Decimal> {
    match v {
        Value::String(s) => parse_decimal(s),
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                Some(Decimal::from(i))
            } else if let Some(u) = n.as_u64() {
                Some(Decimal::from(u))
            } else {
                n.as_f64().and_then(decimal_from_f64)
            }
        }
        _ => None,
    }
}

/// Rust's `Display` for `f64` prints the shortest string that reads back to the same float.
pub fn decimal_from_f64(f: f64) -> Option<Decimal> {
    if !f.is_finite() {
        return None;
    }
    Decimal::from_str(&format!("{f}")).ok()
}

/// Money in a JSON answer: a JSON number written with the decimal's own digits (`0.000045`,
/// `12.5`, never a float's rounding), so that scripts can add it up (jq, JavaScript) and a
/// decimal-aware reader gets it exactly. Use with `#[serde(serialize_with = "…")]` in a struct
/// that is written straight to JSON: through `serde_json::to_value` (and so `json!`) it would
/// become a float.
pub fn serialize_exact<S: Serializer>(d: &Decimal, s: S) -> Result<S::Ok, S::Error> {
    let raw = serde_json::value::RawValue::from_string(d.normalize().to_string()).map_err(serde::ser::Error::custom)?;
    raw.serialize(s)
}

pub fn parse_decimal(s: &str) -> Option<Decimal> {
    let s = s.trim();
    if s.is_empty() || s.len() > 40 {
        return None;
    }
    Decimal::from_str(s).or_else(|_| Decimal::from_scientific(s)).ok()
}

/// Deserializes a decimal written either as a string (`"0.30"`) or as a number (`0.3`).
pub fn deserialize_decimal<'de, D: Deserializer<'de>>(d: D) -> Result<Decimal, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Str(String),
        Int(i64),
        Float(f64),
    }
    let parsed = match Raw::deserialize(d)? {
        Raw::Str(s) => parse_decimal(&s),
        Raw::Int(i) => Some(Decimal::from(i)),
        Raw::Float(f) => decimal_from_f64(f),
    };
    match parsed {
        Some(v) if !v.is_sign_negative() => Ok(v),
        _ => Err(serde::de::Error::custom(
            "expected a decimal amount >= 0, written as a string like \"0.30\" or a number",
        )),
    }
}

/// One row of the price table: USD per million tokens, valid from `effective_from` on.
#[derive(Debug, Clone, PartialEq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct Price {
    pub model: String,
    pub effective_from: NaiveDate,
    #[serde(deserialize_with = "deserialize_decimal")]
    pub input_per_mtok: Decimal,
    #[serde(deserialize_with = "deserialize_decimal")]
    pub output_per_mtok: Decimal,
    #[serde(deserialize_with = "deserialize_decimal", default)]
    pub cache_read_per_mtok: Decimal,
    #[serde(deserialize_with = "deserialize_decimal", default)]
    pub cache_write_per_mtok: Decimal,
}

/// Token counts of one TOKEN_USAGE event.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tokens {
    pub input: i64,
    pub output: i64,
    pub cache_read: i64,
    pub cache_write: i64,
}

/// The price table, grouped by model and sorted by date, for lookups by (model, day).
#[derive(Debug, Clone, Default)]
pub struct PriceTable {
    by_model: std::collections::HashMap<String, Vec<Price>>,
}

impl PriceTable {
    pub fn new(prices: &[Price]) -> Self {
        let mut by_model: std::collections::HashMap<String, Vec<Price>> = Default::default();
        for p in prices {
            by_model.entry(p.model.clone()).or_default().push(p.clone());
        }
        for rows in by_model.values_mut() {
            rows.sort_by_key(|p| p.effective_from);
        }
        Self { by_model }
    }

    /// The row with the latest `effective_from` on or before `day`.
    pub fn price_on(&self, model: &str, day: NaiveDate) -> Option<&Price> {
        self.by_model.get(model)?.iter().rev().find(|p| p.effective_from <= day)
    }

    /// Cost of the tokens at the price in force on `day`, exactly; `Ok(None)` when unpriced, an
    /// error when the amount outgrows a decimal (counts no event can carry, or absurd prices).
    pub fn cost(&self, model: &str, day: NaiveDate, t: Tokens) -> Result<Option<Decimal>, String> {
        let Some(p) = self.price_on(model, day) else {
            return Ok(None);
        };
        let term = |n: i64, per_mtok: Decimal| Decimal::from(n).checked_mul(per_mtok);
        let per_token = [
            (t.input, p.input_per_mtok),
            (t.output, p.output_per_mtok),
            (t.cache_read, p.cache_read_per_mtok),
            (t.cache_write, p.cache_write_per_mtok),
        ]
        .into_iter()
        .try_fold(Decimal::ZERO, |sum, (n, price)| sum.checked_add(term(n, price)?));
        per_token
            .and_then(|d| d.checked_div(Decimal::from(1_000_000)))
            .map(Some)
            .ok_or_else(|| format!("the cost of these tokens at the price of {model} outgrows a decimal"))
    }
}

/// A `numeric` column read as its text (`SELECT cost_usd::text AS cost_usd`), to become a
/// `Decimal` with `#[sqlx(try_from = "rig_events::money::NumericText")]`.
///
/// sqlx's own decoding of `numeric` into `Decimal` panics on some values a `numeric` holds but a
/// decimal cannot (beyond ~7.9e28), which took the whole request down with the connection. Read
/// as text, such a value is a decode error instead: a logged 500 for that request alone. Digits
/// past the 28 a decimal keeps after the point are rounded, as a decimal would.
#[derive(Debug, Clone, sqlx::Type)]
#[sqlx(transparent)]
pub struct NumericText(pub String);

impl TryFrom<NumericText> for Decimal {
    type Error = String;

    fn try_from(t: NumericText) -> Result<Decimal, String> {
        Decimal::from_str(t.0.trim()).map_err(|e| {
            let shown: String = t.0.chars().take(60).collect();
            format!("the stored amount {shown} does not fit a decimal (at most ~7.9e28): {e}")
        })
    }
}

/// Adds amounts, or says that the sum outgrows a decimal.
pub fn checked_sum(amounts: impl IntoIterator<Item = Decimal>) -> Option<Decimal> {
    amounts.into_iter().try_fold(Decimal::ZERO, |a, b| a.checked_add(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn money_is_written_as_an_exact_json_number() {
        #[derive(Serialize)]
        struct Row {
            #[serde(serialize_with = "serialize_exact")]
            cost_usd: Decimal,
        }
        let json = |s: &str| {
            serde_json::to_string(&Row {
                cost_usd: Decimal::from_str(s).unwrap(),
            })
            .unwrap()
        };
        assert_eq!(json("0.30"), r#"{"cost_usd":0.3}"#);
        assert_eq!(json("0.000045"), r#"{"cost_usd":0.000045}"#);
        assert_eq!(json("3.000000"), r#"{"cost_usd":3}"#);
        assert_eq!(json("0"), r#"{"cost_usd":0}"#);
        // More digits than a float holds, kept.
        assert_eq!(json("123456789.123456789012"), r#"{"cost_usd":123456789.123456789012}"#);
    }
    use serde_json::json;

    #[test]
    fn json_numbers_read_through_their_shortest_decimal_form() {
        assert_eq!(decimal_from_json(&json!(0.3)).unwrap().to_string(), "0.3");
        assert_eq!(decimal_from_json(&json!("0.30")).unwrap().to_string(), "0.30");
        assert_eq!(decimal_from_json(&json!(12)).unwrap().to_string(), "12");
        assert_eq!(decimal_from_json(&json!(1e-7)).unwrap().to_string(), "0.0000001");
        assert!(decimal_from_json(&json!("abc")).is_none());
        assert!(decimal_from_json(&json!(true)).is_none());
    }

    #[test]
    fn price_in_force_is_the_latest_on_or_before_the_day() {
        let d = |s: &str| NaiveDate::parse_from_str(s, "%Y-%m-%d").unwrap();
        let p = |from: &str, input: &str| Price {
            model: "m".into(),
            effective_from: d(from),
            input_per_mtok: Decimal::from_str(input).unwrap(),
            output_per_mtok: Decimal::ZERO,
            cache_read_per_mtok: Decimal::ZERO,
            cache_write_per_mtok: Decimal::ZERO,
        };
        let t = PriceTable::new(&[p("2025-10-01", "2"), p("2025-09-01", "1")]);
        assert!(t.price_on("m", d("2025-08-31")).is_none());
        assert_eq!(
            t.price_on("m", d("2025-09-30")).unwrap().input_per_mtok.to_string(),
            "1"
        );
        assert_eq!(
            t.price_on("m", d("2025-10-01")).unwrap().input_per_mtok.to_string(),
            "2"
        );
        let tokens = Tokens {
            input: 1,
            ..Default::default()
        };
        assert_eq!(
            t.cost("m", d("2025-10-02"), tokens).unwrap().unwrap().to_string(),
            "0.000002"
        );
        assert!(t.cost("other", d("2025-10-02"), tokens).unwrap().is_none());
        // Counts no event can carry at an absurd price: an error, never a panic.
        let huge = PriceTable::new(&[Price {
            input_per_mtok: Decimal::MAX,
            ..p("2025-09-01", "1")
        }]);
        let many = Tokens {
            input: i64::MAX,
            ..Default::default()
        };
        assert!(huge.cost("m", d("2025-10-02"), many).is_err());
    }

    #[test]
    fn stored_amounts_read_as_text_never_panic() {
        let read = |s: &str| Decimal::try_from(NumericText(s.to_owned()));
        assert_eq!(read("0.30").unwrap().to_string(), "0.30");
        assert_eq!(
            read("50000000000000000000000000000").unwrap().to_string(),
            "50000000000000000000000000000"
        );
        assert!(read("1000000000000000000000000000000").is_err());
        assert!(read("NaN").is_err());
        // More digits after the point than a decimal keeps: rounded, not refused.
        let long = read("1000000.00000000000000000000000000001").unwrap();
        assert_eq!(long, Decimal::from(1_000_000));
        assert!(checked_sum([Decimal::MAX, Decimal::ONE]).is_none());
        assert_eq!(checked_sum([Decimal::ONE, Decimal::TWO]), Some(Decimal::from(3)));
    }
}
