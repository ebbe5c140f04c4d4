//! Iterative budgeted pruning, the baseline DSA is measured against (ALGORITHMS.md
//! "Baselines"): repeat { remove the channels with the smallest importance per unit of
//! resource, in a step of a share of the remaining gap; fine-tune briefly } until the budget
//! holds. Every step removes channels physically, so later steps train a smaller network.

use burn::module::Module;
use burn::tensor::Device;
use serde::{Deserialize, Serialize};

use super::{Flow, MethodContext, MethodOutcome, PruneMethod};
use crate::data::Batcher;
use crate::error::{LopperError, Result};
use crate::model::Model;
use crate::prune::allocation::{CostModel, counts_cost, min_widths, select as select_top};
use crate::prune::groups::{ChannelGroup, channel_groups};
use crate::prune::importance::{Criterion, channel_scores, comparable_across_groups};
use crate::prune::knapsack::{Knapsack, Price, Scale, ranked_values};
use crate::prune::mask::Selection;
use crate::prune::measured::{CALIBRATION_ROUNDS, calibrate};
use crate::prune::surgery::prune_model;
use crate::train::{Progress, ProgressHook, TrainConfig, TrainData, Trainer};

/// The iterative method's settings, as the recipe and the CLI name them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IterativePlan {
    /// Channel importance (taylor or l1 are the usual choices).
    #[serde(default = "taylor")]
    pub criterion: Criterion,
    /// Share of the remaining budget gap closed per step.
    #[serde(default = "step_share")]
    pub step_share: f64,
    /// Training batches of brief fine-tuning after each step.
    #[serde(default = "step_batches")]
    pub step_batches: usize,
    /// Batches for the Taylor criterion.
    #[serde(default = "super::one_shot::taylor_batches")]
    pub taylor_batches: usize,
}

fn taylor() -> Criterion {
    Criterion::Taylor
}
fn step_share() -> f64 {
    0.3
}
fn step_batches() -> usize {
    100
}

impl Default for IterativePlan {
    fn default() -> Self {
        IterativePlan {
            criterion: taylor(),
            step_share: step_share(),
            step_batches: step_batches(),
            taylor_batches: super::one_shot::taylor_batches(),
        }
    }
}

impl IterativePlan {
    pub(crate) fn check(&self, flow: &Flow) -> Result<()> {
        if flow.from_scratch {
            return Err(LopperError::Config(
                "pruning from scratch works with the dsa, gmp, pdp, rigl and iee methods only"
                    .into(),
            ));
        }
        if self.criterion == Criterion::Halp {
            return Err(LopperError::Config(
                "the halp criterion is IEE's (--method iee); the iterative method ranks by taylor, l1, l2, bn or random (use --method halp for HALP itself)".into(),
            ));
        }
        if !(self.step_share > 0.0 && self.step_share <= 1.0) {
            return Err(LopperError::Config(
                "step_share (--step-share), the share of the gap closed per step, must be in (0, 1]"
                    .into(),
            ));
        }
        Ok(())
    }
}

/// The plug-in: the prune's fine-tuning rate for the brief steps.
pub struct Iterative {
    pub plan: IterativePlan,
}

impl PruneMethod for Iterative {
    fn prune(&mut self, cx: &mut MethodContext) -> Result<MethodOutcome> {
        let icfg = IterativeConfig {
            criterion: self.plan.criterion,
            step_share: self.plan.step_share,
            finetune_batches: self.plan.step_batches,
            taylor_batches: self.plan.taylor_batches,
            round_to: cx.round_to,
        };
        let mut ft = cx.cfg.clone();
        ft.lr = cx.flow.finetune_lr()?;
        let cb = cx.channel_budget()?;
        let meter = cb.meter;
        let measure = meter.map(|meter| move |m: &Model| meter.ms(m));
        let (model, steps) = iterative_prune(
            cx.dense.clone(),
            cx.protect,
            cb.cost,
            cb.limit,
            &icfg,
            &ft,
            &cx.data.train,
            cx.device,
            measure.as_ref().map(|f| f as _),
            cx.progress,
        )?;
        cx.progress
            .message(&format!("iterative: {} pruning step(s)", steps.len()));
        let measured_ms = measure.as_ref().map(|f| f(&model));
        Ok(MethodOutcome {
            model,
            measured_ms,
            allocation: format!(
                "iterative ({}, {} steps)",
                self.plan.criterion.name(),
                steps.len()
            ),
            history: None,
            cost: None,
            collapse: None,
        })
    }
}

/// The loop's settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct IterativeConfig {
    /// Channel importance (taylor or l1 are the usual choices).
    pub criterion: Criterion,
    /// Each step removes this share of the remaining gap `R - B`; once the gap is below one
    /// share of the initial gap the next step closes it.
    pub step_share: f64,
    /// Training batches of brief fine-tuning after each step.
    pub finetune_batches: usize,
    /// Batches for the Taylor criterion.
    pub taylor_batches: usize,
    /// Widths move by this many channels at a time (`--round-to`), and a group keeps at least
    /// this many.
    #[serde(default = "one")]
    pub round_to: usize,
}

fn one() -> usize {
    1
}

impl Default for IterativeConfig {
    fn default() -> Self {
        IterativeConfig {
            criterion: Criterion::Taylor,
            step_share: 0.3,
            finetune_batches: 100,
            taylor_batches: 16,
            round_to: 1,
        }
    }
}

/// One pruning step of the log.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct IterativeStep {
    pub step: usize,
    /// Cost (in the budget's units) after the removal; for measured budgets, the prediction
    /// rescaled by the last measurement.
    pub cost: f64,
    pub channels_removed: usize,
}

/// Keep ratios of `current` relative to the dense groups (group ids survive surgery, so the
/// groups of a pruned graph line up with those of its dense one).
pub fn width_ratios(dense: &[ChannelGroup], current: &[ChannelGroup]) -> Vec<f64> {
    dense
        .iter()
        .zip(current)
        .map(|(d, c)| c.channels as f64 / d.channels as f64)
        .collect()
}

/// Measures a model in the budget's units (latency budgets: milliseconds at the profile's
/// batch).
pub type Measure<'a> = &'a dyn Fn(&Model) -> f64;

/// Prunes `model` (on the plain `device`) until `cost <= limit`, fine-tuning
/// `cfg.finetune_batches` batches of `train` after every step with `ft` (its learning rate is
/// used constant). Returns the pruned model and the step log.
///
/// With `measure` (latency budgets) the loop stops on the measured cost, not the predicted
/// one, and every step's target is rescaled by measured/predicted at the current widths: the
/// cost model only predicts latency, and without the correction its error decides where the
/// loop stops (a profile that overestimates the saving stops it far under the budget).
#[allow(clippy::too_many_arguments)]
pub fn iterative_prune(
    model: Model,
    protect: &[String],
    cost: &dyn CostModel,
    limit: f64,
    cfg: &IterativeConfig,
    ft: &TrainConfig,
    train: &Batcher,
    device: &Device,
    measure: Option<Measure>,
    progress: &mut dyn Progress,
) -> Result<(Model, Vec<IterativeStep>)> {
    if !(cfg.step_share > 0.0 && cfg.step_share <= 1.0) {
        return Err(LopperError::Config(
            "the iterative step share must be in (0, 1]".into(),
        ));
    }
    let dense_groups = channel_groups(&model.graph, protect)?;
    let mut initial_gap = None;
    let mut model = model;
    let mut log = vec![];
    for step in 1.. {
        let groups = channel_groups(&model.graph, protect)?;
        if groups.len() != dense_groups.len() {
            return Err(LopperError::Graph(
                "channel groups changed under surgery".into(),
            ));
        }
        let r = width_ratios(&dense_groups, &groups);
        let predicted = cost.cost(&r);
        // `scale` converts the cost model's units into measured ones at the current widths.
        let (now, scale) = match measure {
            Some(m) => {
                let t = m(&model);
                (t, t / predicted.max(f64::MIN_POSITIVE))
            }
            None => (predicted, 1.0),
        };
        if now <= limit {
            break;
        }
        let gap = now - limit;
        let initial_gap = *initial_gap.get_or_insert(gap);
        let last = gap <= cfg.step_share * initial_gap;
        let target = if last {
            limit
        } else {
            limit + (1.0 - cfg.step_share) * gap
        } / scale;
        let scores = channel_scores(
            cfg.criterion,
            &model,
            &groups,
            Some((train, cfg.taylor_batches)),
            device,
            ft.seed.wrapping_add(step as u64),
        )?;
        // Importance per unit of resource: score over the cost of one channel of the group
        // at the current widths. Taylor scores (loss-change estimates) compare across groups
        // as they are; magnitudes are normalised by their group's mean. Normalising Taylor
        // too would leave the cost per channel alone to pick the group to cut: on resnet20
        // that took the stage-1 residual group from 16 channels to 1.
        let values = if comparable_across_groups(cfg.criterion, &model, &groups) {
            Scale::Raw
        } else {
            Scale::PerGroupMean
        };
        let ranked = ranked_values(&scores, values);
        let grad = cost.grad(&r);
        let per_channel: Vec<f64> = groups
            .iter()
            .map(|g| (grad[g.id] / dense_groups[g.id].channels as f64).max(1e-30))
            .collect();
        let value = |g: usize, rank: usize| ranked[g][rank];
        let counts_now: Vec<usize> = groups.iter().map(|g| g.channels).collect();
        let cost_of = |counts: &[usize]| counts_cost(&dense_groups, cost, counts);
        let unit = cfg.round_to.max(1);
        let min = min_widths(&groups, unit);
        // The channels to keep for a target in the cost model's units: the least important
        // per unit of resource (priced at the step's widths) go first until the cost is under
        // the target; the last cut can overshoot by a whole channel of an expensive group
        // (one of lenet5's six conv1 channels is several percent of its MACs), so the removed
        // channels that still fit, most important first, come back.
        let select = |target: f64| -> Result<(Selection, f64, usize)> {
            let solver = Knapsack {
                min: &min,
                max: &counts_now,
                unit,
                value: &value,
                cost: &cost_of,
                price: Price::Linear(&per_channel),
                // Channels removed in a step are gone for the next: a step that ends far under
                // its target (LeNet-5 at macs=0.4 ended at 0.285, whole conv1 channels at a
                // time) leaves budget no later step can give back.
                land: true,
            };
            let mut counts = counts_now.clone();
            solver.shrink(&mut counts, target);
            let current = solver.grow(&mut counts, target);
            let removed: usize = counts_now.iter().zip(&counts).map(|(a, b)| a - b).sum();
            if removed == 0 {
                return Err(LopperError::Config(format!(
                    "iterative pruning is stuck at cost {current:.6e} above the budget {limit:.6e}"
                )));
            }
            Ok((select_top(&groups, &scores, &counts), current, removed))
        };
        let build = |target: f64| -> Result<(Model, f64, usize)> {
            let (selection, current, removed) = select(target)?;
            Ok((
                prune_model(&model, &groups, &selection, device)?,
                current,
                removed,
            ))
        };
        // The last step of a measured budget is a build-and-measure search (as the one-shot
        // methods do): the measured/predicted scale of the current widths drifts as the
        // widths shrink, so one rescaled target can land well under the budget.
        let (next, current, removed) = match measure {
            Some(m) if last => {
                calibrate(
                    limit,
                    target,
                    CALIBRATION_ROUNDS,
                    build,
                    |(pruned, _, _)| m(pruned),
                    |round, model_limit, measured| {
                        progress.message(&format!(
                            "iterative step {step}, latency round {round}: predicted limit {model_limit:.3}, measured {measured:.3} (budget {limit:.3})"
                        ));
                    },
                )?
                .0
            }
            _ => build(target)?,
        };
        model = next;
        log.push(IterativeStep {
            step,
            cost: current * scale,
            channels_removed: removed,
        });
        progress.message(&format!(
            "iterative step {step}: removed {removed} channels, cost {:.4} of the budget{}",
            current * scale / limit,
            if measure.is_some() {
                " (predicted)"
            } else {
                ""
            }
        ));
        if cfg.finetune_batches > 0 {
            let n = (cfg.finetune_batches * ft.batch_size).min(train.dataset().len());
            let fraction = n as f64 / train.dataset().len() as f64;
            let subset = if fraction < 1.0 {
                train
                    .dataset()
                    .split(fraction, ft.seed.wrapping_add(step as u64))?
                    .1
            } else {
                train.dataset().clone()
            };
            let data = TrainData {
                train: train.with_dataset(subset, ft.batch_size),
                val: None,
                test: None,
            };
            let mut brief = ft.clone();
            brief.epochs = 1;
            brief.schedule = crate::train::ScheduleKind::Constant;
            brief.warmup_epochs = 0.0;
            let trainer = Trainer::new(brief, None)?;
            let phase = format!("iterative step {step}");
            let mut shown = ProgressHook::new(&phase, progress);
            model = trainer.fit(model, &data, &mut [&mut shown])?.model.valid();
        }
    }
    Ok((model, log))
}
