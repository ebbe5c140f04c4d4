//! Meeting a latency budget by measurement. The latency model only predicts, so a pruned
//! model is built and measured: [`calibrate`] corrects the limit handed to the cost model
//! until the measurement lands in [0.9, 1] of the budget, and [`fill`] searches the widths
//! near the calibrated ones when real latency steps past that window. [`meet_latency`] runs
//! both for a method that turns a limit into a channel selection (the one-shot methods and
//! DSA); the iterative method calibrates its last step.

use super::allocation::{CostModel, counts_cost, select};
use super::groups::ChannelGroup;
use super::knapsack::{Knapsack, Price, Scale, ranked_values};
use super::latency::LatencyMeter;
use super::mask::Selection;
use super::surgery::prune_model;
use crate::error::Result;
use crate::model::Model;
use burn::tensor::Device;

/// Build-and-measure rounds of a latency calibration (the one-shot methods', DSA's and the
/// iterative method's last step): a round is one surgery and one paired measurement, a
/// fraction of a second at batch 1 and seconds at batch 64 on a CPU.
pub const CALIBRATION_ROUNDS: usize = 8;

/// Builds and measures until the measured latency lands in `[0.9 limit, limit]`: the
/// profile only predicts latency (per-layer times do not add up exactly, and a pruned width
/// can run faster or slower than the grid around it suggests), so the limit the build is
/// given (starting at `start`, in the cost model's units) is corrected after each round,
/// aiming at 0.95 of the budget: by budget/measured after the first round, then along the
/// line through two measured rounds (the ones that bracket the budget once there are such),
/// because a fixed cost the profile misses makes the proportional correction crawl. Returns the best model found in
/// `rounds` rounds (within the budget and closest to it; or, if none fits, the fastest) and
/// its measured latency. `log` sees each round's model limit and measurement. A build that
/// fails after the first round (the budget is out of reach at the rescaled limit) ends the
/// search with what was found.
pub fn calibrate<T>(
    limit: f64,
    start: f64,
    rounds: usize,
    mut build: impl FnMut(f64) -> Result<T>,
    measure: impl Fn(&T) -> f64,
    mut log: impl FnMut(usize, f64, f64),
) -> Result<(T, f64)> {
    let mut model_limit = start;
    let mut best: Option<(T, f64)> = None;
    let mut points: Vec<(f64, f64)> = vec![];
    for round in 1..=rounds.max(1) {
        let candidate = match build(model_limit) {
            Ok(m) => m,
            Err(_) if best.is_some() => break,
            Err(e) => return Err(e),
        };
        let measured = measure(&candidate);
        log(round, model_limit, measured);
        let better = match &best {
            None => true,
            Some((_, b)) if *b > limit => measured < *b,
            Some((_, b)) => measured <= limit && measured > *b,
        };
        let done = measured <= limit && measured >= 0.9 * limit;
        if better {
            best = Some((candidate, measured));
        }
        if done {
            break;
        }
        points.push((model_limit, measured));
        model_limit = next_limit(&points, 0.95 * limit);
    }
    Ok(best.expect("at least one round ran"))
}

/// The next model limit of the calibration, aiming the measurement at `aim`, from the
/// (model limit, measured) pairs so far.
fn next_limit(points: &[(f64, f64)], aim: f64) -> f64 {
    let &(x, y) = points.last().expect("one round measured");
    let proportional = x * aim / y.max(f64::MIN_POSITIVE);
    // The two points to interpolate between: the closest ones on each side of `aim` if the
    // rounds bracket it, the last two otherwise.
    let under = points
        .iter()
        .filter(|p| p.1 <= aim)
        .max_by(|a, b| a.0.total_cmp(&b.0));
    let over = points
        .iter()
        .filter(|p| p.1 > aim)
        .min_by(|a, b| a.0.total_cmp(&b.0));
    let (p, q) = match (under, over) {
        (Some(u), Some(o)) => (*u, *o),
        _ if points.len() >= 2 => (points[points.len() - 2], (x, y)),
        _ => return proportional,
    };
    let slope = (q.1 - p.1) / (q.0 - p.0);
    if !(slope.is_finite() && slope > 0.0) {
        // Noise or a flat stretch: the line says nothing.
        return proportional;
    }
    let next = p.0 + (aim - p.1) / slope;
    // An extrapolated line is trusted at most a factor 4 away from the last limit.
    next.clamp(0.25 * x, 4.0 * x)
}

/// Rounds of the measured fill after a calibration that ended under the window.
pub const FILL_ROUNDS: usize = 16;

/// Builds an exchange of [`fill`] may take to find how much to pay for its step.
const EXCHANGE_ROUNDS: usize = 4;

/// One build of [`fill`]: group `group` grown by `added` channels, and for an exchange the
/// channels taken from each other group to pay for it.
#[derive(Debug, Clone, PartialEq)]
pub struct FillStep {
    pub group: usize,
    pub added: usize,
    /// (group, channels removed) of an exchange; empty for a plain growth.
    pub removed: Vec<(usize, usize)>,
    pub measured: f64,
    pub accepted: bool,
}

/// A measured local search after [`calibrate`], for when its best build is more than 10%
/// under the budget. Widths move along one path as the calibration's limit grows, and real
/// latency is a step function of a width (a 6-channel convolution can run slower with 4
/// channels than with 6, and LeNet-5 at batch 64 runs a third slower once its first
/// convolution has 2 channels instead of 1): every limit can land either side of the window.
///
/// The fill starts from the calibrated widths `counts` (measured `measured`) and grows one
/// group at a time: the group with the most importance per predicted millisecond (`value(g,
/// rank)` of its next channels over `predict`'s increase), by as many channels as the
/// prediction says close the gap to 0.95 of the budget. A build measured within the budget is
/// kept (more channels at no more than the budget). One over it halves that group's step;
/// when a single step of a group is over, the group gets one exchange: the step, paid for by
/// taking channels from the other groups (least importance per predicted millisecond first),
/// the amount found by a short [`calibrate`] on the prediction the others are cut to (it
/// starts from the measured excess). An exchange is kept if it measures within the budget
/// and above the best so far; then the group is left where it is.
///
/// Stops in the window, when no group can grow, or after `rounds` builds. `max[g]` is how far
/// group `g` may grow and `min[g]` how far an exchange may shrink it (both its current count
/// for groups not to touch); widths move by multiples of `unit` channels. Returns the widths,
/// the build and its measurement; `log` sees every build.
#[allow(clippy::too_many_arguments)]
pub fn fill<T>(
    limit: f64,
    start: (Vec<usize>, T, f64),
    (min, max): (&[usize], &[usize]),
    unit: usize,
    value: impl Fn(usize, usize) -> f64,
    predict: impl Fn(&[usize]) -> f64,
    mut build: impl FnMut(&[usize]) -> Result<T>,
    measure: impl Fn(&T) -> f64,
    rounds: usize,
    mut log: impl FnMut(FillStep),
) -> Result<(Vec<usize>, T, f64)> {
    let unit = unit.max(1);
    let aim = 0.95 * limit;
    let (mut counts, mut best, mut best_ms) = start;
    let n_groups = counts.len();
    // A group's step after a miss (halved each time), or None for "as the prediction says".
    let mut cap: Vec<Option<usize>> = vec![None; n_groups];
    let mut blocked = vec![false; n_groups];
    let mut built = 0;
    while built < rounds && best_ms < 0.9 * limit {
        let base = predict(&counts);
        // Measurement over prediction: the two differ by a factor the gap is converted with.
        let to_predicted = base / best_ms.max(f64::MIN_POSITIVE);
        let gap = (aim - best_ms) * to_predicted;
        let mut choice: Option<(f64, usize, usize)> = None;
        for g in 0..n_groups {
            let room = max[g].saturating_sub(counts[g]);
            if room == 0 || blocked[g] {
                continue;
            }
            let mut trial = counts.clone();
            let (mut n, mut gain, mut added) = (0, 0.0, 0.0);
            let most = cap[g].unwrap_or(room).min(room);
            while n < most {
                let next = (n + unit).min(room);
                gain += (n..next).map(|r| value(g, counts[g] + r)).sum::<f64>();
                n = next;
                trial[g] = counts[g] + n;
                added = predict(&trial) - base;
                if cap[g].is_none() && added >= gap {
                    break;
                }
            }
            let merit = gain / added.max(1e-9 * base.abs().max(1e-12));
            if choice.is_none_or(|(m, _, _)| merit > m) {
                choice = Some((merit, g, n));
            }
        }
        let Some((_, g, n)) = choice else { break };
        let mut grown = counts.clone();
        grown[g] += n;
        let candidate = build(&grown)?;
        let ms = measure(&candidate);
        built += 1;
        let accepted = ms <= limit;
        log(FillStep {
            group: g,
            added: n,
            removed: vec![],
            measured: ms,
            accepted,
        });
        if accepted {
            (counts, best, best_ms) = (grown, candidate, ms);
            cap[g] = None;
            continue;
        }
        if n > unit {
            cap[g] = Some((n / 2).max(unit));
            continue;
        }
        blocked[g] = true;
        if built >= rounds {
            break;
        }
        // The exchange: pay for the step with the other groups' least valuable channels, as
        // many as a short calibration along that path finds (how much the measurement drops
        // per predicted millisecond is not known before measuring it).
        // The group that grows keeps its new width.
        let mut keep = min.to_vec();
        keep[g] = grown[g];
        let solver = Knapsack {
            min: &keep,
            max: &grown,
            unit,
            value: &value,
            cost: &predict,
            price: Price::Marginal,
            land: false,
        };
        let shrink = |t: f64| -> Vec<usize> {
            let mut trial = grown.clone();
            solver.shrink(&mut trial, t);
            trial
        };
        let start = predict(&grown) - (ms - aim) * to_predicted;
        let rounds_left = EXCHANGE_ROUNDS.min(rounds - built);
        let last = std::cell::RefCell::new(vec![]);
        let ((trial, candidate), ms) = calibrate(
            limit,
            start,
            rounds_left,
            |t| {
                let trial = shrink(t);
                *last.borrow_mut() = trial.clone();
                let candidate = build(&trial)?;
                Ok((trial, candidate))
            },
            |(_, c)| measure(c),
            |_, _, ms| {
                let trial = last.borrow();
                log(FillStep {
                    group: g,
                    added: n,
                    removed: (0..n_groups)
                        .filter(|&h| trial[h] < grown[h])
                        .map(|h| (h, grown[h] - trial[h]))
                        .collect(),
                    measured: ms,
                    accepted: ms <= limit && ms > best_ms,
                })
            },
        )?;
        built += rounds_left;
        if ms <= limit && ms > best_ms {
            (counts, best, best_ms) = (trial, candidate, ms);
            // The other groups' widths changed: their steps are worth another look.
            cap.iter_mut().for_each(|c| *c = None);
            for (h, b) in blocked.iter_mut().enumerate() {
                *b = h == g;
            }
        }
    }
    Ok((counts, best, best_ms))
}

/// What turns widths into a pruned model: the model pruned from, its channel groups, the
/// channel scores that pick the channels a width keeps, the cost model and the device.
pub struct Surgery<'a> {
    pub source: &'a Model,
    pub groups: &'a [ChannelGroup],
    pub scores: &'a [Vec<f64>],
    pub cost: &'a dyn CostModel,
    /// Widths move in multiples of this many channels (`--round-to`).
    pub unit: usize,
    pub device: &'a Device,
}

impl Surgery<'_> {
    pub fn build(&self, selection: &Selection) -> Result<Model> {
        prune_model(self.source, self.groups, selection, self.device)
    }
}

/// A build of [`meet_latency`], for progress output.
#[derive(Debug, Clone, PartialEq)]
pub enum LatencyRound {
    Calibration {
        round: usize,
        model_limit: f64,
        measured: f64,
    },
    Fill(FillStep),
}

/// The pruned model for the budget `limit` (in the cost model's units), `select_at(l)` giving
/// the widths for a limit `l`. Without a meter that is the selection at the limit. With one,
/// [`calibrate`] corrects the limit until the measured latency lands in [0.9, 1] of the
/// budget, and if its best build is under that window, [`fill`] grows single groups towards it
/// (real latency moves in steps the calibration's one path of widths can straddle). Returns
/// the model and its measured latency; `log` sees every build.
pub fn meet_latency(
    limit: f64,
    meter: Option<&LatencyMeter>,
    surgery: &Surgery,
    select_at: impl Fn(f64) -> Result<Selection>,
    mut log: impl FnMut(LatencyRound),
) -> Result<(Model, Option<f64>)> {
    let Some(meter) = meter else {
        return Ok((surgery.build(&select_at(limit)?)?, None));
    };
    let ((selection, model), measured) = calibrate(
        limit,
        limit,
        CALIBRATION_ROUNDS,
        |lim| {
            let selection = select_at(lim)?;
            let model = surgery.build(&selection)?;
            Ok((selection, model))
        },
        |(_, m)| meter.ms(m),
        |round, model_limit, measured| {
            log(LatencyRound::Calibration {
                round,
                model_limit,
                measured,
            })
        },
    )?;
    if measured > limit || measured >= 0.9 * limit {
        return Ok((model, Some(measured)));
    }
    let groups = surgery.groups;
    let counts: Vec<usize> = groups
        .iter()
        .map(|g| selection.kept(groups, g.id).len())
        .collect();
    let bound = |prunable: usize, g: &ChannelGroup| {
        if g.is_prunable() {
            prunable
        } else {
            counts[g.id]
        }
    };
    let max: Vec<usize> = groups.iter().map(|g| bound(g.channels, g)).collect();
    let min: Vec<usize> = groups
        .iter()
        .map(|g| bound(surgery.unit.min(g.channels), g))
        .collect();
    let ranked = ranked_values(surgery.scores, Scale::PerGroupMean);
    let (_, model, measured) = fill(
        limit,
        (counts, model, measured),
        (&min, &max),
        surgery.unit,
        |g, rank| ranked[g][rank],
        |counts| counts_cost(groups, surgery.cost, counts),
        |counts| surgery.build(&select(groups, surgery.scores, counts)),
        |m| meter.ms(m),
        FILL_ROUNDS,
        |step| log(LatencyRound::Fill(step)),
    )?;
    Ok((model, Some(measured)))
}
