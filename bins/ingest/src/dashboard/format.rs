//! How numbers, times and long strings read on the page. Plain text only: the markup escapes it.

use chrono::{DateTime, Utc};
use rust_decimal::{Decimal, RoundingStrategy};

/// Percent-encodes a query-string value (stream ids hold `/`, `#` and `:`).
pub(super) fn url_enc(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
}

/// Money for reading: 2 to 4 decimals, rounded half away from zero. Display only.
pub fn money(d: Decimal) -> String {
    let mut r = d
        .round_dp_with_strategy(4, RoundingStrategy::MidpointAwayFromZero)
        .normalize();
    if r.scale() < 2 {
        r.rescale(2);
    }
    r.to_string()
}

/// Money exactly as Postgres holds it (trailing zeros dropped).
pub fn exact(d: Decimal) -> String {
    d.normalize().to_string()
}

pub(super) fn thousands(n: i64) -> String {
    let digits = n.unsigned_abs().to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3 + 1);
    if n < 0 {
        out.push('-');
    }
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

pub(super) fn fmt_time(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%SZ").to_string()
}

/// "45s", "12m 5s", "3h 20m", "2d 4h".
pub(super) fn fmt_age(secs: f64) -> String {
    let s = secs.max(0.0).round() as u64;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m {}s", s / 60, s % 60),
        3600..86400 => format!("{}h {}m", s / 3600, (s % 3600) / 60),
        _ => format!("{}d {}h", s / 86400, (s % 86400) / 3600),
    }
}

/// Event data as one line; an empty object shows as nothing.
pub(super) fn compact_json(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::Object(m) if m.is_empty() => String::new(),
        v => v.to_string(),
    }
}

pub(super) fn truncate(s: &str, max_chars: usize) -> String {
    match s.char_indices().nth(max_chars) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_owned(),
    }
}

/// A 1-2-2.5-5 step giving about four gridlines up to `max`.
pub(super) fn nice_step(max: f64) -> f64 {
    let raw = max / 4.0;
    let mag = 10f64.powf(raw.log10().floor());
    let norm = raw / mag;
    let m = if norm <= 1.0 {
        1.0
    } else if norm <= 2.0 {
        2.0
    } else if norm <= 2.5 {
        2.5
    } else if norm <= 5.0 {
        5.0
    } else {
        10.0
    };
    m * mag
}

/// Decimals that show every tick of `step` exactly, at least 2 once cents matter.
pub(super) fn tick_decimals(step: f64) -> usize {
    let d = (0..=6usize).find(|d| {
        let scaled = step * 10f64.powi(*d as i32);
        (scaled - scaled.round()).abs() < 1e-6
    });
    match d.unwrap_or(6) {
        0 => 0,
        d => d.max(2),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::str::FromStr;

    #[test]
    fn money_shows_two_to_four_decimals_and_exact_keeps_every_digit() {
        let d = |s: &str| Decimal::from_str(s).unwrap();
        assert_eq!(money(d("12")), "12.00");
        assert_eq!(money(d("1.5")), "1.50");
        assert_eq!(money(d("0.123456")), "0.1235");
        assert_eq!(money(d("0.00005")), "0.0001");
        assert_eq!(money(d("3.100")), "3.10");
        assert_eq!(exact(d("0.1234567890123")), "0.1234567890123");
        assert_eq!(exact(d("2.500")), "2.5");
    }

    #[test]
    fn chart_steps_are_round_and_labelled_without_losing_digits() {
        let close = |a: f64, b: f64| (a - b).abs() < 1e-9;
        assert!(close(nice_step(10.0), 2.5));
        assert!(close(nice_step(1.0), 0.25));
        assert!(close(nice_step(37.0), 10.0));
        assert_eq!(tick_decimals(10.0), 0);
        assert_eq!(tick_decimals(2.5), 2);
        assert_eq!(tick_decimals(0.025), 3);
    }

    #[test]
    fn helpers_format_counts_ages_and_long_text() {
        assert_eq!(thousands(1234567), "1,234,567");
        assert_eq!(thousands(-1000), "-1,000");
        assert_eq!(thousands(999), "999");
        assert_eq!(fmt_age(59.4), "59s");
        assert_eq!(fmt_age(7260.0), "2h 1m");
        assert_eq!(truncate("ééé", 2), "éé…");
    }
}
