//! The cost section: an inline SVG chart of cost per day, stacked by agent or by repo, with its
//! legend. The figures are summed here as exact decimals; only drawing uses floats.

use super::data::Data;
use super::format::{exact, money, nice_step, tick_decimals, truncate};
use super::params::Params;
use super::{COST_DAYS, COST_SERIES, ID_CHARS};
use chrono::{Duration as ChronoDuration, NaiveDate};
use maud::{html, Markup};
use rust_decimal::prelude::ToPrimitive;
use rust_decimal::Decimal;
use std::collections::{BTreeMap, HashMap};

const PALETTE: [&str; COST_SERIES] = [
    "#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#ff9da7",
];
const OTHER_COLOR: &str = "#9c9c9c";

/// The chart's size and margins (SVG user units).
const W: f64 = 900.0;
const H: f64 = 280.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 10.0;
const TOP: f64 = 22.0;
const BOTTOM: f64 = 44.0;
const PLOT_W: f64 = W - LEFT - RIGHT;
const PLOT_H: f64 = H - TOP - BOTTOM;

/// The cost rows summed per day and series.
struct Series<'a> {
    days: Vec<NaiveDate>,
    /// Every key with its total, biggest first.
    keys: Vec<(&'a str, Decimal)>,
    /// (day index, series index, `COST_SERIES` for "other") → amount.
    cells: BTreeMap<(usize, usize), Decimal>,
    day_totals: Vec<Decimal>,
    grand: Decimal,
}

impl<'a> Series<'a> {
    fn new(d: &'a Data) -> Series<'a> {
        let today = d.now.date_naive();
        let days: Vec<NaiveDate> = (0..COST_DAYS).rev().map(|i| today - ChronoDuration::days(i)).collect();
        // The biggest series keep their own colour; the rest are summed into "other".
        let mut totals: HashMap<&str, Decimal> = HashMap::new();
        for r in &d.costs {
            *totals.entry(r.key.as_str()).or_default() += r.cost_usd;
        }
        let mut keys: Vec<(&str, Decimal)> = totals.into_iter().collect();
        keys.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
        let mut cells: BTreeMap<(usize, usize), Decimal> = BTreeMap::new();
        for r in &d.costs {
            let Some(di) = days.iter().position(|x| *x == r.day) else {
                continue;
            };
            let si = keys[..keys.len().min(COST_SERIES)]
                .iter()
                .position(|k| k.0 == r.key)
                .unwrap_or(COST_SERIES);
            *cells.entry((di, si)).or_default() += r.cost_usd;
        }
        let day_totals: Vec<Decimal> = (0..days.len())
            .map(|di| cells.iter().filter(|((d, _), _)| *d == di).map(|(_, v)| *v).sum())
            .collect();
        let grand = day_totals.iter().copied().sum();
        Series {
            days,
            keys,
            cells,
            day_totals,
            grand,
        }
    }

    /// The series drawn in their own colour.
    fn named(&self) -> &[(&'a str, Decimal)] {
        &self.keys[..self.keys.len().min(COST_SERIES)]
    }

    fn others(&self) -> &[(&'a str, Decimal)] {
        &self.keys[self.keys.len().min(COST_SERIES)..]
    }
}

/// The y axis: a round step and the top gridline.
struct Scale {
    step: f64,
    y_max: f64,
}

impl Scale {
    fn new(s: &Series<'_>) -> Scale {
        let max = s
            .day_totals
            .iter()
            .copied()
            .max()
            .unwrap_or_default()
            .to_f64()
            .unwrap_or(0.0);
        let max = if max > 0.0 { max } else { 1.0 };
        let step = nice_step(max);
        Scale {
            step,
            y_max: (max / step).ceil() * step,
        }
    }

    fn y(&self, v: f64) -> f64 {
        TOP + PLOT_H - v / self.y_max * PLOT_H
    }

    fn ticks(&self) -> impl Iterator<Item = f64> + '_ {
        std::iter::successors(Some(0.0), |t| Some(t + self.step)).take_while(|t| *t <= self.y_max + self.step / 2.0)
    }
}

pub(super) fn section(p: &Params, d: &Data) -> Markup {
    let s = Series::new(d);
    let label = |k: &str| series_label(p, k);
    html! {
        section id="costs" {
            h2 { "Cost per day" }
            p.sub {
                "Last " (COST_DAYS) " UTC days, stacked by " (if p.by_repo { "repo" } else { "agent" }) " · "
                a href={ (p.with_by_repo(false)) "#costs" } class=[(!p.by_repo).then_some("on")] { "by agent" }
                " | "
                a href={ (p.with_by_repo(true)) "#costs" } class=[p.by_repo.then_some("on")] { "by repo" }
            }
            (chart(&s, &label))
            div.legend {
                @for (si, (k, total)) in s.named().iter().enumerate() {
                    (legend_item(PALETTE[si], &label(k), *total))
                }
                @if !s.others().is_empty() {
                    (legend_item(
                        OTHER_COLOR,
                        &format!("other ({})", s.others().len()),
                        s.others().iter().map(|x| x.1).sum(),
                    ))
                }
            }
            p.sub {
                "Total for the " (COST_DAYS) " days: " b { "$" (money(s.grand)) }
                " (exact: " (exact(s.grand)) " USD)"
            }
        }
    }
}

/// A series' name as shown: the empty key is usage on agent streams (by repo) or with no agent.
fn series_label(p: &Params, k: &str) -> String {
    match (k.is_empty(), p.by_repo) {
        (true, true) => "(agent streams)".to_owned(),
        (true, false) => "(none)".to_owned(),
        (false, _) => truncate(k, ID_CHARS),
    }
}

fn legend_item(color: &str, name: &str, total: Decimal) -> Markup {
    html! {
        span.legend-item { span.sw style={ "background:" (color) } {} (name) " $" (money(total)) }
    }
}

fn chart(s: &Series<'_>, label: &dyn Fn(&str) -> String) -> Markup {
    let scale = Scale::new(s);
    html! {
        svg.chart viewBox={ "0 0 " (W) " " (H) } role="img"
            aria-label={ "Cost per day in USD, last " (COST_DAYS) " days" } {
            (gridlines(&scale))
            text.axis-title x="14" y=(f1(TOP + PLOT_H / 2.0))
                transform={ "rotate(-90 14 " (f1(TOP + PLOT_H / 2.0)) ")" } text-anchor="middle" { "USD per day" }
            text.axis-title x=(f1(LEFT + PLOT_W / 2.0)) y=(H - 4.0) text-anchor="middle" { "day (UTC)" }
            @for di in 0..s.days.len() {
                (day_bars(s, &scale, di, label))
            }
            @if s.grand.is_zero() {
                text x=(f1(LEFT + PLOT_W / 2.0)) y=(f1(TOP + PLOT_H / 2.0)) text-anchor="middle" {
                    "no cost recorded in the last " (COST_DAYS) " days"
                }
            }
        }
    }
}

fn gridlines(scale: &Scale) -> Markup {
    let decimals = tick_decimals(scale.step);
    html! {
        @for tick in scale.ticks() {
            line x1=(LEFT) x2=(W - RIGHT) y1=(f1(scale.y(tick))) y2=(f1(scale.y(tick)))
                stroke=(if tick == 0.0 { "#8c959f" } else { "#eaeef2" }) stroke-width="1" {}
            text.y-label x=(LEFT - 6.0) y=(f1(scale.y(tick) + 4.0)) text-anchor="end" {
                "$" (format!("{tick:.decimals$}"))
            }
        }
    }
}

/// One segment of a day's stacked bar.
struct Bar {
    /// Top and height, in SVG units.
    top: f64,
    height: f64,
    name: String,
    color: &'static str,
    amount: Decimal,
}

/// The segments of day `di`, bottom up, and the height the stack reaches (in dollars).
fn stack(s: &Series<'_>, scale: &Scale, di: usize, label: &dyn Fn(&str) -> String) -> (Vec<Bar>, f64) {
    let mut base = 0.0_f64;
    let mut bars = Vec::new();
    for si in 0..=COST_SERIES {
        let Some(amount) = s.cells.get(&(di, si)) else {
            continue;
        };
        let v = amount.to_f64().unwrap_or(0.0);
        // Tiny amounts still get a visible sliver; the tooltip has the exact figure.
        let height = (v / scale.y_max * PLOT_H).max(if amount.is_zero() { 0.0 } else { 1.0 });
        let (name, color) = match (s.named().get(si), PALETTE.get(si)) {
            (Some(k), Some(color)) => (label(k.0), *color),
            _ => ("other".to_owned(), OTHER_COLOR),
        };
        bars.push(Bar {
            top: scale.y(base) - height,
            height,
            name,
            color,
            amount: *amount,
        });
        base += v;
    }
    (bars, base)
}

/// One day's stacked bars, its total above them and its date below.
fn day_bars(s: &Series<'_>, scale: &Scale, di: usize, label: &dyn Fn(&str) -> String) -> Markup {
    let slot = PLOT_W / s.days.len() as f64;
    let bar_w = slot * 0.68;
    let x = LEFT + slot * di as f64 + (slot - bar_w) / 2.0;
    let cx = LEFT + slot * di as f64 + slot / 2.0;
    let day = s.days[di].to_string();
    let (bars, base) = stack(s, scale, di, label);
    html! {
        @for b in &bars {
            rect.cost-bar x=(f1(x)) y=(f1(b.top)) width=(f1(bar_w)) height=(f1(b.height)) fill=(b.color)
                data-day=(day) data-key=(b.name) {
                title { (day) " · " (b.name) ": $" (exact(b.amount)) " USD" }
            }
        }
        @if !s.day_totals[di].is_zero() {
            text.bar-total x=(f1(cx)) y=(f1(scale.y(base) - 4.0)) text-anchor="middle" { "$" (money(s.day_totals[di])) }
        }
        text.x-label x=(f1(cx)) y=(f1(TOP + PLOT_H + 15.0)) text-anchor="middle" {
            (s.days[di].format("%m-%d").to_string())
        }
    }
}

/// A coordinate with one decimal, enough for a chart this size.
fn f1(v: f64) -> String {
    format!("{v:.1}")
}
