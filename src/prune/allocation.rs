//! Budgets and allocation: how many channels each group keeps so that the pruned network
//! meets a resource budget exactly.
//!
//! - **uniform**: one keep ratio for every prunable group; the largest ratio that meets the
//!   budget, found by bisection.
//! - **global**: all channels ranked by their importance normalised by their group's mean;
//!   the lowest threshold that meets the budget, found by bisection.
//!
//! Within a group the most important channels stay. Every group keeps at least one channel
//! (or `round_to` channels). The cost is the exact resource model, so the budget holds when
//! counted on the pruned graph.

use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::groups::ChannelGroup;
use super::knapsack::{Knapsack, Price, Scale, ranked_values, scaled_scores};
use super::latency::{LatencyModel, LatencyProfile};
use super::mask::Selection;
use super::resource::{Resource, ResourceModel};
use super::weights::WeightBudget;
use crate::count::human;
use crate::error::{LopperError, Result};
use crate::graph::Graph;

/// What a budget bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Metric {
    Macs,
    Params,
    /// Milliseconds, predicted from a latency profile.
    Latency,
}

impl std::fmt::Display for Metric {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Metric::Macs => "MACs",
            Metric::Params => "parameters",
            Metric::Latency => "latency",
        })
    }
}

/// A cost as a function of the per-group keep ratios.
pub trait CostModel {
    fn cost(&self, a: &[f64]) -> f64;
    /// d cost / d a, one entry per group.
    fn grad(&self, a: &[f64]) -> Vec<f64>;
    fn dense_cost(&self) -> f64;
}

impl CostModel for ResourceModel {
    fn cost(&self, a: &[f64]) -> f64 {
        self.eval(a)
    }
    fn grad(&self, a: &[f64]) -> Vec<f64> {
        ResourceModel::grad(self, a)
    }
    fn dense_cost(&self) -> f64 {
        self.dense()
    }
}

impl CostModel for LatencyModel {
    fn cost(&self, a: &[f64]) -> f64 {
        self.eval(a)
    }
    fn grad(&self, a: &[f64]) -> Vec<f64> {
        LatencyModel::grad(self, a)
    }
    fn dense_cost(&self) -> f64 {
        self.dense()
    }
}

/// A resource bound: a fraction of the dense model's cost, or an absolute amount.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Budget {
    pub resource: Metric,
    /// `Fraction(0.5)` for `macs=0.5`, `Absolute(2e7)` for `macs=20M`.
    pub amount: Amount,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Amount {
    Fraction(f64),
    Absolute(f64),
}

/// What a prune must reach: a channel budget (MACs, parameters, latency), met by removing
/// channels, or a weight budget (sparsity, N:M), met by zeroing weights.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Target {
    Channels(Budget),
    Weights(WeightBudget),
}

impl FromStr for Target {
    type Err = LopperError;
    fn from_str(s: &str) -> Result<Target> {
        if WeightBudget::is_weight_budget(s) {
            s.parse().map(Target::Weights)
        } else {
            s.parse().map(Target::Channels)
        }
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Channels(b) => b.fmt(f),
            Target::Weights(w) => w.fmt(f),
        }
    }
}

impl FromStr for Budget {
    type Err = LopperError;
    /// `macs=0.5`, `macs=20M`, `params=0.3`, `params=150K`, `latency=2.5ms`, `latency=0.6`.
    fn from_str(s: &str) -> Result<Budget> {
        let bad = |why: &str| {
            LopperError::Config(format!(
                "invalid budget '{s}': {why} (examples: macs=0.5, macs=20M, params=100K, latency=2ms, sparsity=0.9, nm=2:4)"
            ))
        };
        let (kind, value) = s
            .split_once('=')
            .ok_or_else(|| bad("expected RESOURCE=VALUE"))?;
        let resource = match kind.trim().to_ascii_lowercase().as_str() {
            "macs" => Metric::Macs,
            "params" => Metric::Params,
            "latency" => Metric::Latency,
            _ => {
                return Err(bad(
                    "the resource must be macs, params, latency, sparsity or nm",
                ));
            }
        };
        let v = value.trim();
        if let (Metric::Latency, Some(ms)) = (resource, v.strip_suffix("ms")) {
            let x: f64 = ms
                .trim()
                .parse()
                .map_err(|_| bad("the value is not a number"))?;
            if !(x.is_finite() && x > 0.0) {
                return Err(bad("the value must be positive"));
            }
            return Ok(Budget {
                resource,
                amount: Amount::Absolute(x),
            });
        }
        let (num, mult) = match (resource, v.chars().last()) {
            (Metric::Latency, _) => (v, None),
            (_, Some('K' | 'k')) => (&v[..v.len() - 1], Some(1e3)),
            (_, Some('M' | 'm')) => (&v[..v.len() - 1], Some(1e6)),
            (_, Some('G' | 'g')) => (&v[..v.len() - 1], Some(1e9)),
            _ => (v, None),
        };
        let x: f64 = num
            .trim()
            .parse()
            .map_err(|_| bad("the value is not a number"))?;
        if !(x.is_finite() && x > 0.0) {
            return Err(bad("the value must be positive"));
        }
        // A bare number is a fraction of the dense model; an amount needs its unit, so that
        // `macs=1.5` cannot silently mean one and a half multiply-accumulates.
        let amount = match mult {
            Some(m) => Amount::Absolute(x * m),
            None if x <= 1.0 => Amount::Fraction(x),
            None => {
                return Err(bad(
                    "a bare number is a fraction of the dense model, in (0, 1]; give an absolute amount with its unit (K, M or G for macs and params, ms for latency)",
                ));
            }
        };
        Ok(Budget { resource, amount })
    }
}

impl Budget {
    /// The cost model this budget is measured with; latency needs a profile.
    pub fn cost_model(
        &self,
        graph: &Graph,
        groups: &[ChannelGroup],
        profile: Option<&LatencyProfile>,
    ) -> Result<Box<dyn CostModel>> {
        Ok(match self.resource {
            Metric::Macs => Box::new(ResourceModel::new(Resource::Macs, graph, groups)),
            Metric::Params => Box::new(ResourceModel::new(Resource::Params, graph, groups)),
            Metric::Latency => {
                let p = profile.ok_or_else(|| {
                    LopperError::Config("a latency budget needs a profile: run `lopper profile` and pass --profile FILE".into())
                })?;
                Box::new(LatencyModel::new(p, graph, groups)?)
            }
        })
    }

    /// The bound in absolute units for a model whose dense cost is `dense`.
    pub fn limit(&self, dense: f64) -> f64 {
        match self.amount {
            Amount::Fraction(f) => f * dense,
            Amount::Absolute(a) => a,
        }
    }
}

impl std::fmt::Display for Budget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let r = match self.resource {
            Metric::Macs => "macs",
            Metric::Params => "params",
            Metric::Latency => "latency",
        };
        match (self.amount, self.resource) {
            (Amount::Fraction(x), _) => write!(f, "{r}={x}"),
            (Amount::Absolute(x), Metric::Latency) => write!(f, "{r}={x}ms"),
            (Amount::Absolute(x), _) => write!(f, "{r}={}", human(x as u64)),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Allocation {
    Uniform,
    Global,
}

fn show(x: f64, m: Metric) -> String {
    match m {
        Metric::Latency => format!("{x:.3} ms"),
        _ => human(x.round() as u64),
    }
}

/// Kept count for a ratio: at least one channel (or `round_to`), rounded up to `round_to`.
fn count_for(channels: usize, ratio: f64, round_to: usize) -> usize {
    let m = round_to.max(1);
    let k = (ratio * channels as f64).round().max(1.0) as usize;
    (k.div_ceil(m) * m).clamp(1, channels)
}

/// The fewest channels each group may keep: one unit of `round_to` channels (or the whole
/// group) for a prunable group, all of them for a protected one.
pub fn min_widths(groups: &[ChannelGroup], round_to: usize) -> Vec<usize> {
    groups
        .iter()
        .map(|g| {
            if g.is_prunable() {
                round_to.max(1).min(g.channels)
            } else {
                g.channels
            }
        })
        .collect()
}

/// The `k` highest-scoring channels, sorted by index.
fn top_k(scores: &[f64], k: usize) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..scores.len()).collect();
    // Stable order for ties: lower index first.
    idx.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]).then(a.cmp(&b)));
    let mut keep: Vec<usize> = idx[..k.min(idx.len())].to_vec();
    keep.sort_unstable();
    keep
}

/// The cost of keeping `counts[g]` channels of each group.
pub fn counts_cost(groups: &[ChannelGroup], model: &dyn CostModel, counts: &[usize]) -> f64 {
    let a: Vec<f64> = groups
        .iter()
        .map(|g| counts[g.id] as f64 / g.channels as f64)
        .collect();
    model.cost(&a)
}

/// Selection keeping the `counts[g]` highest-scoring channels of each prunable group.
pub fn select(groups: &[ChannelGroup], scores: &[Vec<f64>], counts: &[usize]) -> Selection {
    let mut sel = Selection::all(groups);
    for g in groups.iter().filter(|g| g.is_prunable()) {
        if counts[g.id] < g.channels {
            sel.keep[g.id] = Some(top_k(&scores[g.id], counts[g.id]));
        }
    }
    sel
}

/// Finds the selection meeting `budget` under `model` (see [`Budget::cost_model`]).
/// `scores[g]` are the channel scores of group `g` (empty for protected groups).
pub fn allocate(
    groups: &[ChannelGroup],
    scores: &[Vec<f64>],
    budget: &Budget,
    model: &dyn CostModel,
    allocation: Allocation,
    round_to: usize,
) -> Result<Selection> {
    let dense = model.dense_cost();
    let limit = budget.limit(dense);
    let cost = |counts: &[usize]| counts_cost(groups, model, counts);
    let prunable: Vec<&ChannelGroup> = groups.iter().filter(|g| g.is_prunable()).collect();
    let min_counts = min_widths(groups, round_to);
    let floor = cost(&min_counts);
    if limit < floor - 1e-6 {
        return Err(LopperError::Config(format!(
            "budget {budget} ({} {}) cannot be met: the smallest reachable cost, with every prunable group at {} channel(s), is {} ({:.4} of the dense {})",
            show(limit, budget.resource),
            budget.resource,
            round_to.max(1),
            show(floor, budget.resource),
            floor / dense,
            show(dense, budget.resource),
        )));
    }
    if limit >= dense || prunable.is_empty() {
        return Ok(Selection::all(groups));
    }
    let scaled = scaled_scores(scores, Scale::PerGroupMean);
    // Counts as a function of a scalar knob; cost falls monotonically as `t` rises.
    let counts_at = |t: f64| -> Vec<usize> {
        match allocation {
            Allocation::Uniform => groups
                .iter()
                .map(|g| {
                    if g.is_prunable() {
                        count_for(g.channels, 1.0 - t, round_to)
                    } else {
                        g.channels
                    }
                })
                .collect(),
            Allocation::Global => groups
                .iter()
                .map(|g| {
                    if !g.is_prunable() {
                        return g.channels;
                    }
                    let above = scaled[g.id].iter().filter(|&&v| v >= t).count();
                    count_for(g.channels, above as f64 / g.channels as f64, round_to)
                })
                .collect(),
        }
    };
    let hi_start = match allocation {
        Allocation::Uniform => 1.0,
        Allocation::Global => {
            groups
                .iter()
                .filter(|g| g.is_prunable())
                .map(|g| scaled[g.id].iter().cloned().fold(0.0, f64::max))
                .fold(0.0, f64::max)
                * 1.0001
                + 1e-12
        }
    };
    // Invariant: cost(lo) > limit, cost(hi) <= limit.
    let (mut lo, mut hi) = (0.0, hi_start);
    let mut counts = if cost(&counts_at(hi)) > limit {
        // Even the knob's end leaves more than the floor (rounding): start from the floor.
        min_counts.clone()
    } else {
        for _ in 0..100 {
            let mid = 0.5 * (lo + hi);
            if cost(&counts_at(mid)) <= limit {
                hi = mid;
            } else {
                lo = mid;
            }
            if hi - lo < 1e-12 {
                break;
            }
        }
        counts_at(hi)
    };
    if allocation == Allocation::Global || cost(&counts) < limit && counts == min_counts {
        // A threshold moves every channel with the same score at once: with ties (all-zero
        // scores at worst) the last step can drop many channels, leaving the budget unused.
        // Give back what still fits, the most importance per unit of cost first.
        let ranked = ranked_values(scores, Scale::PerGroupMean);
        let value = |g: usize, r: usize| ranked[g][r];
        let max: Vec<usize> = groups.iter().map(|g| g.channels).collect();
        Knapsack {
            min: &min_counts,
            max: &max,
            unit: round_to.max(1),
            value: &value,
            cost: &cost,
            price: Price::Marginal,
            land: false,
        }
        .grow(&mut counts, limit);
    }
    Ok(select(groups, scores, &counts))
}

/// [`allocate`], then filled up to the limit by [`harden`] at the widths it found: the
/// widths a method that trains at fixed widths (PDP's channel mode, IEE's channels) starts
/// from, so that training aims at widths it will keep.
pub fn allocate_filled(
    groups: &[ChannelGroup],
    scores: &[Vec<f64>],
    budget: &Budget,
    model: &dyn CostModel,
    allocation: Allocation,
    round_to: usize,
) -> Result<Selection> {
    let sel = allocate(groups, scores, budget, model, allocation, round_to)?;
    let ratios: Vec<f64> = groups
        .iter()
        .map(|g| sel.kept(groups, g.id).len() as f64 / g.channels as f64)
        .collect();
    harden(
        groups,
        scores,
        &ratios,
        model,
        budget.limit(model.dense_cost()),
        round_to,
    )
}

/// Turns continuous keep ratios into a selection that meets `limit` exactly (the last step of
/// DSA, ALGORITHMS.md step 7): keep `round(ratio * C)` of each group's most important
/// channels, then repair the rounding greedily. While over the limit, drop the channel that
/// saves the most cost per unit of (group-normalised) importance; then, while some channel
/// still fits, take back the one that buys the most importance per unit of cost. Widths are
/// multiples of `round_to` channels (or a whole group), and move by `round_to` at a time.
pub fn harden(
    groups: &[ChannelGroup],
    scores: &[Vec<f64>],
    ratios: &[f64],
    model: &dyn CostModel,
    limit: f64,
    round_to: usize,
) -> Result<Selection> {
    let unit = round_to.max(1);
    let mut counts: Vec<usize> = groups
        .iter()
        .map(|g| {
            if g.is_prunable() {
                count_for(g.channels, ratios[g.id], unit)
            } else {
                g.channels
            }
        })
        .collect();
    let ranked = ranked_values(scores, Scale::PerGroupMean);
    let value = |g: usize, rank: usize| ranked[g][rank];
    let cost = |counts: &[usize]| counts_cost(groups, model, counts);
    let min = min_widths(groups, unit);
    let max: Vec<usize> = groups.iter().map(|g| g.channels).collect();
    let solver = Knapsack {
        min: &min,
        max: &max,
        unit,
        value: &value,
        cost: &cost,
        price: Price::Marginal,
        land: false,
    };
    let current = solver.shrink(&mut counts, limit);
    if current > limit {
        return Err(LopperError::Config(format!(
            "the budget ({limit:.6e}) cannot be met even with {unit} channel(s) per group (cost {current:.6e})"
        )));
    }
    solver.grow(&mut counts, limit);
    Ok(select(groups, scores, &counts))
}
