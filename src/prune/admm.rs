//! ADMM for a resource budget on keep ratios (ALGORITHMS.md, DSA step 5).
//!
//! The keep ratios `a` follow the loss; an auxiliary `z` always satisfies `R(z) <= B`; the
//! scaled dual `u` accumulates the disagreement. The penalty `rho/2 |a - z + u|^2` joins the
//! loss in the update of `a`, and `rho` grows every epoch so that `a` ends up feasible.

use super::allocation::CostModel;
use super::groups::ChannelGroup;

/// Bounds of the keep ratios: `[1/C, 1]` for prunable groups (one channel always stays),
/// `[1, 1]` for protected ones.
pub fn ratio_bounds(groups: &[ChannelGroup]) -> (Vec<f64>, Vec<f64>) {
    let lower = groups
        .iter()
        .map(|g| {
            if g.is_prunable() {
                1.0 / g.channels as f64
            } else {
                1.0
            }
        })
        .collect();
    (lower, vec![1.0; groups.len()])
}

/// The state of the ADMM iteration over one keep ratio per group.
#[derive(Debug, Clone)]
pub struct Admm {
    pub z: Vec<f64>,
    pub u: Vec<f64>,
    pub rho: f64,
    /// Per-group bounds of z: `[1/C, 1]` for prunable groups, `[1, 1]` for protected ones.
    pub lower: Vec<f64>,
    pub upper: Vec<f64>,
    /// The budget in the cost model's units.
    pub limit: f64,
    /// Per-group weights of the ADMM metric `sum_g w_g (z_g - v_g)^2` (all 1: Euclidean).
    pub weights: Vec<f64>,
}

/// The metric of the ADMM penalty and projection.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Default,
    serde::Serialize,
    serde::Deserialize,
    clap::ValueEnum,
)]
#[serde(rename_all = "kebab-case")]
pub enum AdmmMetric {
    /// `|z - v|^2`, as ALGORITHMS.md states it. A group whose ratio carries much cost per
    /// unit (lenet5's conv1, whose width scales conv1 and conv2) is where the projection
    /// cuts first.
    #[default]
    Euclidean,
    /// `sum_g w_g (z_g - v_g)^2` with `w_g` the group's share of the dense cost's gradient
    /// (mean 1 over prunable groups): from a dense start the projection lowers every ratio
    /// by about the same amount (a uniform prior), and the loss decides the differences.
    CostShare,
    /// `w_g` the empirical Fisher information of the keep ratio, the running mean of
    /// `(dL/da_g)^2` over the ratio steps (normalised to mean 1 over prunable groups, floored
    /// at 1e-2; Euclidean until the first ratio step). Penalty and projection then form a
    /// second-order model of the validation loss: the projection cuts group g by about
    /// `lambda (dR/da_g) / F_g`, so the budget is taken where the loss is least sensitive
    /// per unit of cost, the trade Taylor-per-cost makes for the iterative method. The
    /// per-batch gradient of a trained model is mostly noise around zero (its BatchNorm
    /// scales sit at a minimum), so its mean alone hardly moves the ratios; its spread does
    /// measure sensitivity.
    Fisher,
}

/// The weights of `metric` for `groups` under `cost` (1 for protected groups).
pub fn metric_weights(
    metric: AdmmMetric,
    groups: &[ChannelGroup],
    cost: &dyn CostModel,
) -> Vec<f64> {
    let n = groups.len();
    match metric {
        // The Fisher weights come from the ratio steps; before the first, Euclidean.
        AdmmMetric::Euclidean | AdmmMetric::Fisher => vec![1.0; n],
        AdmmMetric::CostShare => normalised_weights(groups, &cost.grad(&vec![1.0; n]), 1e-3),
    }
}

/// Per-group weights proportional to `raw` with mean 1 over the prunable groups, at least
/// `floor`; 1 for protected groups (and for all when `raw` is zero on every prunable group).
pub fn normalised_weights(groups: &[ChannelGroup], raw: &[f64], floor: f64) -> Vec<f64> {
    let prunable: Vec<usize> = (0..groups.len())
        .filter(|&i| groups[i].is_prunable())
        .collect();
    let mean =
        prunable.iter().map(|&i| raw[i].max(0.0)).sum::<f64>() / prunable.len().max(1) as f64;
    (0..groups.len())
        .map(|i| {
            if groups[i].is_prunable() && mean > 0.0 {
                (raw[i].max(0.0) / mean).max(floor)
            } else {
                1.0
            }
        })
        .collect()
}

impl Admm {
    pub fn new(a: &[f64], lower: Vec<f64>, upper: Vec<f64>, rho: f64, limit: f64) -> Admm {
        Admm {
            z: a.to_vec(),
            u: vec![0.0; a.len()],
            rho,
            lower,
            upper,
            limit,
            weights: vec![1.0; a.len()],
        }
    }

    /// The z and u updates after an a step.
    pub fn update(&mut self, a: &[f64], cost: &dyn CostModel) {
        let v: Vec<f64> = a.iter().zip(&self.u).map(|(a, u)| a + u).collect();
        self.z = project_weighted(
            &v,
            &self.weights,
            &self.lower,
            &self.upper,
            cost,
            self.limit,
        );
        for ((u, a), z) in self.u.iter_mut().zip(a).zip(&self.z) {
            *u += a - z;
        }
    }
}

/// `argmin |z - v|^2` subject to `cost(z) <= limit` and `lower <= z <= upper`.
///
/// For a multiplier `lambda` the penalised problem `|z - v|^2 / 2 + lambda cost(z) / dense`
/// is solved by projected gradient descent; `lambda` is then found by bisection as the
/// smallest value whose solution meets the budget. The cost is normalised by the dense cost
/// so that one step size suits MACs, parameters and milliseconds alike. If even `lower`
/// misses the limit, `lower` is returned (the caller checks reachability beforehand).
pub fn project(
    v: &[f64],
    lower: &[f64],
    upper: &[f64],
    cost: &dyn CostModel,
    limit: f64,
) -> Vec<f64> {
    project_weighted(v, &vec![1.0; v.len()], lower, upper, cost, limit)
}

/// `argmin sum_i w_i (z_i - v_i)^2` subject to `cost(z) <= limit` and `lower <= z <= upper`
/// (`w > 0`); [`project`] is the case `w = 1`.
pub fn project_weighted(
    v: &[f64],
    w: &[f64],
    lower: &[f64],
    upper: &[f64],
    cost: &dyn CostModel,
    limit: f64,
) -> Vec<f64> {
    let clamp = |z: &mut [f64]| {
        for ((z, lo), hi) in z.iter_mut().zip(lower).zip(upper) {
            *z = z.clamp(*lo, *hi);
        }
    };
    let dense = cost.dense_cost().max(1e-30);
    let solve = |lambda: f64| -> Vec<f64> {
        let mut z = v.to_vec();
        clamp(&mut z);
        // The normalised cost's curvature is at most about 2 (a bilinear form whose
        // coefficients sum to 1), so this (diagonally scaled) step is stable.
        for _ in 0..500 {
            let g = cost.grad(&z);
            let mut moved = 0.0f64;
            for i in 0..z.len() {
                let step = 1.0 / (w[i] + 2.0 * lambda);
                let new = (z[i] - step * (w[i] * (z[i] - v[i]) + lambda * g[i] / dense))
                    .clamp(lower[i], upper[i]);
                moved = moved.max((new - z[i]).abs());
                z[i] = new;
            }
            if moved < 1e-12 {
                break;
            }
        }
        z
    };
    let fits = |z: &[f64]| cost.cost(z) <= limit;
    let z0 = solve(0.0);
    if fits(&z0) {
        return z0;
    }
    let mut hi = 1.0;
    let mut z_hi = solve(hi);
    while !fits(&z_hi) {
        hi *= 2.0;
        if hi > 1e9 {
            return lower.to_vec();
        }
        z_hi = solve(hi);
    }
    let mut lo = 0.0;
    for _ in 0..60 {
        let mid = 0.5 * (lo + hi);
        let z = solve(mid);
        if fits(&z) {
            hi = mid;
            z_hi = z;
        } else {
            lo = mid;
        }
        if hi - lo < 1e-9 * hi.max(1.0) {
            break;
        }
    }
    z_hi
}
