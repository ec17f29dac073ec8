//! The report: the baselines measured in the run, the figures next to them, the JSON and the
//! human table.

use super::*;
use serde::Serialize;
use serde_json::Value;

#[derive(Debug, Serialize)]
pub(super) struct Report {
    pub(super) database: String,
    pub(super) kept: bool,
    pub(super) duration_seconds: f64,
    pub(super) machine: Value,
    pub(super) sizes: Sizes,
    /// How ingest ran and why (see `bench`).
    pub(super) ingest: &'static str,
    /// Every target met.
    pub(super) all_met: bool,
    pub(super) baselines: Vec<Baseline>,
    pub(super) figures: Vec<Figure>,
}

impl Report {
    /// The report of the phases run; the caller fills in the database's name and the run time.
    pub(super) fn new(machine: Value, sizes: &Sizes, baselines: Vec<Baseline>, figures: Vec<Figure>) -> Report {
        Report {
            database: String::new(),
            kept: false,
            duration_seconds: 0.0,
            machine,
            sizes: sizes.clone(),
            ingest: INGEST_HOW,
            all_met: figures.iter().all(|f| f.met != Some(false)),
            baselines,
            figures,
        }
    }
}

/// A reference measured in this run: raw Postgres, or (`http_refused_64`) ingest's HTTP path
/// with no database work.
#[derive(Debug, Clone, Serialize)]
pub(super) struct Baseline {
    pub(super) name: &'static str,
    pub(super) value: f64,
    pub(super) unit: &'static str,
    pub(super) detail: Value,
}

/// A measured figure next to its baseline.
#[derive(Debug, Clone, Serialize)]
pub(super) struct Figure {
    pub(super) name: String,
    pub(super) value: f64,
    pub(super) unit: &'static str,
    pub(super) baseline: String,
    pub(super) baseline_value: f64,
    /// value / baseline_value
    pub(super) ratio: f64,
    /// The target in words, when the figure has one.
    pub(super) target: Option<String>,
    /// Lowest acceptable ratio.
    pub(super) target_ratio: Option<f64>,
    /// Absolute bound on the value: a minimum for rates, a maximum for times, CPU and memory.
    pub(super) target_value: Option<f64>,
    pub(super) met: Option<bool>,
    pub(super) detail: Value,
}

impl Figure {
    pub(super) fn new(
        name: impl Into<String>,
        value: f64,
        unit: &'static str,
        baseline: &str,
        baseline_value: f64,
    ) -> Figure {
        let ratio = if baseline_value > 0.0 {
            value / baseline_value
        } else {
            0.0
        };
        Figure {
            name: name.into(),
            value: round_sig(value),
            unit,
            baseline: baseline.to_owned(),
            baseline_value: round_sig(baseline_value),
            ratio: round(ratio, 3),
            target: None,
            target_ratio: None,
            target_value: None,
            met: None,
            detail: Value::Null,
        }
    }

    pub(super) fn of(name: impl Into<String>, value: f64, unit: &'static str, b: &Baseline) -> Figure {
        Figure::new(name, value, unit, b.name, b.value)
    }

    /// A rate that must reach `target_ratio` × its baseline (and `min_value`, if any).
    pub(super) fn at_least(mut self, target: &str, target_ratio: Option<f64>, min_value: Option<f64>) -> Figure {
        let ok_ratio = target_ratio.is_none_or(|t| self.ratio >= t);
        let ok_value = min_value.is_none_or(|m| self.value >= m);
        self.target = Some(target.to_owned());
        self.target_ratio = target_ratio;
        self.target_value = min_value;
        self.met = Some(ok_ratio && ok_value);
        self
    }

    /// A value that must stay at or below `max`.
    pub(super) fn at_most(mut self, target: &str, max: f64) -> Figure {
        self.target = Some(target.to_owned());
        self.target_value = Some(max);
        self.met = Some(self.value <= max);
        self
    }

    /// A value that must stay at or below `max_ratio` × its baseline.
    pub(super) fn ratio_at_most(mut self, target: &str, max_ratio: f64) -> Figure {
        self.target = Some(target.to_owned());
        self.target_ratio = Some(max_ratio);
        self.met = Some(self.ratio <= max_ratio);
        self
    }

    pub(super) fn detail(mut self, d: Value) -> Figure {
        self.detail = d;
        self
    }
}

pub(super) fn round(v: f64, decimals: i32) -> f64 {
    let f = 10f64.powi(decimals);
    (v * f).round() / f
}

/// Keeps about four significant digits: rates in the thousands need no decimals, milliseconds do.
pub(super) fn round_sig(v: f64) -> f64 {
    match v.abs() {
        a if a >= 1000.0 => v.round(),
        a if a >= 10.0 => round(v, 1),
        a if a >= 1.0 => round(v, 2),
        _ => round(v, 3),
    }
}

pub(super) fn print_table(r: &Report) {
    let num = |v: f64| {
        if v.abs() >= 100.0 {
            format!("{v:.0}")
        } else {
            format!("{v:.2}")
        }
    };
    eprintln!();
    eprintln!(
        "rigctl bench — scratch database {} ({}), {:.0} s",
        r.database,
        if r.kept { "kept" } else { "dropped" },
        r.duration_seconds
    );
    eprintln!("machine: {}", r.machine);
    eprintln!();
    eprintln!("{:<38} {:>12}  unit", "baseline (raw Postgres; HTTP alone)", "value");
    for b in &r.baselines {
        eprintln!("{:<38} {:>12}  {}", b.name, num(b.value), b.unit);
    }
    eprintln!();
    eprintln!(
        "{:<38} {:>10} {:<11} {:<38} {:>10} {:>8}  {:<34} met",
        "figure", "value", "unit", "baseline", "base", "ratio", "target"
    );
    for f in &r.figures {
        let met = match f.met {
            Some(true) => "yes",
            Some(false) => "NO",
            None => "",
        };
        eprintln!(
            "{:<38} {:>10} {:<11} {:<38} {:>10} {:>8}  {:<34} {}",
            f.name,
            num(f.value),
            f.unit,
            f.baseline,
            num(f.baseline_value),
            format!("{:.3}", f.ratio),
            f.target.as_deref().unwrap_or(""),
            met
        );
    }
    eprintln!();
    eprintln!("all targets met: {}", if r.all_met { "yes" } else { "no" });
    eprintln!();
}

pub(super) const INGEST_HOW: &str = "the sibling rig-ingest binary, spawned against the scratch database (as in production; its CPU is read from /proc separately)";
