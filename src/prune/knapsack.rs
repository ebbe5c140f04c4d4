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
