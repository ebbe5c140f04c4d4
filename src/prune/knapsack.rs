//! The one greedy solver for "which channels fit under a cost": a knapsack over group widths
//! in which every group's channels are worth their importance and cost what the budget's cost
//! model says. It takes channels away, a few at a time, from the group whose cut saves the most
//! cost per unit of importance lost until the cost is under a target ([`Knapsack::shrink`]),
//! and gives them back, the most importance per unit of cost first, while they fit
//! ([`Knapsack::grow`]). Hardening DSA's ratios, the iterative method's steps and the latency
//! fill's exchanges are all this solver with different prices and bounds.

/// How a cut or a gift of channels is priced.
#[derive(Debug, Clone, Copy)]
pub enum Price<'a> {
    /// By the cost model at the current widths (what the change really saves or costs).
    Marginal,
    /// A fixed cost per channel of each group (a linearisation at the widths a step started
    /// from, as the iterative method ranks channels once per step).
    Linear(&'a [f64]),
}

/// How channel scores become values that compare across groups.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scale {
    /// Each group's scores over their mean: magnitudes do not compare across layers.
    PerGroupMean,
    /// As they are: loss-change estimates (Taylor) already compare.
    Raw,
}

/// Each group's channel scores scaled by `scale`, in channel order.
pub fn scaled_scores(scores: &[Vec<f64>], scale: Scale) -> Vec<Vec<f64>> {
    scores
        .iter()
        .map(|s| {
            let mean = match scale {
                Scale::PerGroupMean => (s.iter().sum::<f64>() / s.len().max(1) as f64).max(1e-30),
                Scale::Raw => 1.0,
            };
            s.iter().map(|x| x / mean).collect()
        })
        .collect()
}

/// Each group's scaled scores in descending order: `v[g][r]` is what the channel at rank `r`
/// of group `g` is worth (the best first).
pub fn ranked_values(scores: &[Vec<f64>], scale: Scale) -> Vec<Vec<f64>> {
    let mut v = scaled_scores(scores, scale);
    for s in &mut v {
        s.sort_by(|a, b| b.total_cmp(a));
    }
    v
}

/// The problem: per-group bounds on the widths, the step in channels, what each channel is
/// worth (`value(g, rank)`: group `g`'s channel at that rank, best first), what widths cost,
/// and how changes are priced.
pub struct Knapsack<'a> {
    pub min: &'a [usize],
    pub max: &'a [usize],
    /// Widths move by this many channels at a time (fewer at a bound).
    pub unit: usize,
    pub value: &'a dyn Fn(usize, usize) -> f64,
    pub cost: &'a dyn Fn(&[usize]) -> f64,
    pub price: Price<'a>,
    /// Land close under the target: near it, cut (by merit) only what keeps the cost above
    /// the target while there is such a cut, and finish with the cut that crosses it least.
    /// Without it a cheap-to-lose but expensive channel (a sixth of LeNet-5's first
    /// convolution) can end the cut far under the target, the budget unused.
    pub land: bool,
}

impl Knapsack<'_> {
    /// Takes channels away, `unit` at a time from one group, until `cost(counts)` is at most
    /// `target`: each time from the group whose next channels save the most cost per unit of
    /// value lost, never below `min`. Stops short of the target when no cut saves anything
    /// more. Returns the cost reached.
    pub fn shrink(&self, counts: &mut [usize], target: f64) -> f64 {
        let mut current = (self.cost)(counts);
        while current > target {
            // The best cut by merit among those that stay above the target, and among those
            // that cross it the one that crosses least (see `land`).
            let mut best: Option<(f64, usize, usize, f64)> = None;
            let mut closest: Option<(f64, usize, usize, f64)> = None;
            for g in 0..counts.len() {
                let k = self.unit.max(1).min(counts[g].saturating_sub(self.min[g]));
                if k == 0 {
                    continue;
                }
                let lost: f64 = (counts[g] - k..counts[g]).map(|r| (self.value)(g, r)).sum();
                counts[g] -= k;
                let c = (self.cost)(counts);
                counts[g] += k;
                let saved = match self.price {
                    Price::Marginal if current <= c => continue,
                    Price::Marginal => current - c,
                    Price::Linear(per_channel) => per_channel[g] * k as f64,
                };
                let merit = saved / lost.max(1e-12);
                if self.land && c < target {
                    if closest.is_none_or(|(.., cc)| c > cc) {
                        closest = Some((merit, g, k, c));
                    }
                } else if best.is_none_or(|(m, ..)| merit > m) {
                    best = Some((merit, g, k, c));
                }
            }
            let Some((_, g, k, c)) = best.or(closest) else {
                return current;
            };
            counts[g] -= k;
            current = c;
        }
        current
    }

    /// Gives channels back, `unit` at a time to one group, while the cost stays at most
    /// `limit`: each time to the group whose next channels buy the most value per unit of
    /// cost, never above `max`. Returns the cost reached.
    pub fn grow(&self, counts: &mut [usize], limit: f64) -> f64 {
        let mut current = (self.cost)(counts);
        loop {
            let mut best: Option<(f64, usize, usize, f64)> = None;
            for g in 0..counts.len() {
                let k = self.unit.max(1).min(self.max[g].saturating_sub(counts[g]));
                if k == 0 {
                    continue;
                }
                counts[g] += k;
                let c = (self.cost)(counts);
                counts[g] -= k;
                if c > limit {
                    continue;
                }
                let gained: f64 = (counts[g]..counts[g] + k).map(|r| (self.value)(g, r)).sum();
                let paid = match self.price {
                    Price::Marginal => c - current,
                    Price::Linear(per_channel) => per_channel[g] * k as f64,
                };
                let merit = gained / paid.max(1e-12);
                if best.is_none_or(|(m, ..)| merit > m) {
                    best = Some((merit, g, k, c));
                }
            }
            let Some((_, g, k, c)) = best else {
                return current;
            };
            counts[g] += k;
            current = c;
        }
    }
}

/// HALP's exact solver (ALGORITHMS.md "HALP knapsack"): every group picks one option, the
/// options of group `g` being keeping a prefix of its ranked channel blocks, worth
/// `values[g][p]` and costing `costs[g][p]` (both for the whole prefix `p`). Maximises the
/// total value with the total cost at most `capacity`, by dynamic programming over costs in
/// `units` integer steps of `capacity / units`, each cost rounded up (so the answer never
/// exceeds the capacity). Returns each group's option, or `None` when even the cheapest
/// options do not fit.
pub fn prefix_knapsack(
    values: &[Vec<f64>],
    costs: &[Vec<f64>],
    capacity: f64,
    units: usize,
) -> Option<Vec<usize>> {
    if capacity < 0.0 || !capacity.is_finite() {
        return None;
    }
    let units = units.max(1);
    let step = (capacity / units as f64).max(f64::MIN_POSITIVE);
    let as_units = |c: f64| -> Option<usize> {
        let u = (c.max(0.0) / step - 1e-9).ceil();
        (u <= units as f64).then_some(u as usize)
    };
    // best[c]: the best value at a total cost of exactly c units so far; choice[g][c]: the
    // option of group g on that path.
    const NONE: f64 = f64::NEG_INFINITY;
    let mut best = vec![NONE; units + 1];
    best[0] = 0.0;
    let mut choice: Vec<Vec<usize>> = Vec::with_capacity(values.len());
    for (v, c) in values.iter().zip(costs) {
        let mut next = vec![NONE; units + 1];
        let mut pick = vec![usize::MAX; units + 1];
        for (p, (&vp, &cp)) in v.iter().zip(c).enumerate() {
            let Some(cu) = as_units(cp) else { continue };
            for (from, &before) in best.iter().enumerate().take(units + 1 - cu) {
                if before == NONE {
                    continue;
                }
                let to = from + cu;
                let val = before + vp;
                if val > next[to] {
                    next[to] = val;
                    pick[to] = p;
                }
            }
        }
        // Remember where each cell came from: its option and the cost before it.
        best = next;
        choice.push(pick);
    }
    let (mut at, _) = best
        .iter()
        .enumerate()
        .filter(|(_, v)| **v != NONE)
        .max_by(|a, b| a.1.total_cmp(b.1))?;
    let mut options = vec![0; values.len()];
    for g in (0..values.len()).rev() {
        let p = choice[g][at];
        options[g] = p;
        at -= as_units(costs[g][p]).unwrap_or(0);
    }
    Some(options)
}

#[cfg(test)]
mod tests {
    use super::prefix_knapsack;
    use rand::{Rng, SeedableRng};

    /// Against every combination of options on small random problems: the same best value
    /// (up to the cost rounding, which only makes the solver more careful) and never over the
    /// capacity.
    #[test]
    fn the_prefix_knapsack_finds_the_best_combination() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        for _ in 0..200 {
            let groups = rng.random_range(1..4);
            let mut values = vec![];
            let mut costs = vec![];
            for _ in 0..groups {
                let n = rng.random_range(1..5);
                let (mut v, mut c) = (0.0, 0.0);
                let (mut vs, mut cs) = (vec![], vec![]);
                for _ in 0..n {
                    v += rng.random_range(0.0..1.0);
                    c += rng.random_range(0.0..1.0);
                    vs.push(v);
                    cs.push(c);
                }
                values.push(vs);
                costs.push(cs);
            }
            let capacity = rng.random_range(0.0..2.0 * groups as f64);
            let got = prefix_knapsack(&values, &costs, capacity, 20_000);
            // Brute force.
            let mut best: Option<f64> = None;
            let mut idx = vec![0usize; groups];
            loop {
                let c: f64 = idx.iter().enumerate().map(|(g, &p)| costs[g][p]).sum();
                if c <= capacity {
                    let v: f64 = idx.iter().enumerate().map(|(g, &p)| values[g][p]).sum();
                    best = Some(best.map_or(v, |b: f64| b.max(v)));
                }
                let mut g = 0;
                while g < groups {
                    idx[g] += 1;
                    if idx[g] < values[g].len() {
                        break;
                    }
                    idx[g] = 0;
                    g += 1;
                }
                if g == groups {
                    break;
                }
            }
            match (got, best) {
                (None, None) => {}
                (Some(opt), Some(b)) => {
                    let c: f64 = opt.iter().enumerate().map(|(g, &p)| costs[g][p]).sum();
                    let v: f64 = opt.iter().enumerate().map(|(g, &p)| values[g][p]).sum();
                    assert!(c <= capacity + 1e-9, "{c} > {capacity}");
                    assert!(v >= b - 1e-3 * groups as f64, "{v} < {b}");
                }
                (None, Some(b)) => {
                    // Only a combination right at the capacity can be lost to rounding.
                    let cheapest: f64 = costs.iter().map(|c| c[0]).sum();
                    assert!(cheapest > capacity * (1.0 - 1e-3), "missed {b}");
                }
                (Some(o), None) => panic!("{o:?} fits where nothing does"),
            }
        }
    }
}
