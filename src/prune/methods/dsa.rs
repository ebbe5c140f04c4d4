//! DSA as a method of the prune session: the allocation phase (the training loop with the
//! [`Dsa`] hook, in its own run folder so that it resumes epoch by epoch), then hardening the
//! feasible keep ratios into widths that meet the budget.

use burn::module::Module;
use serde::{Deserialize, Serialize};

use super::{Flow, History, MethodContext, MethodOutcome, PruneMethod, build_for_budget};
use crate::error::{LopperError, Result};
use crate::prune::admm::AdmmMetric;
use crate::prune::allocation::harden;
use crate::prune::dsa::{ChannelRank, Dsa, DsaConfig, RatioSignal};
use crate::prune::measured::Surgery;
use crate::train::{ScheduleKind, TrainData};

/// Fewer keep-ratio steps than this and DSA warns: g's quarter epoch on ResNet-20 (17 steps)
/// let the budget projection cut a residual stream to one channel (BENCHMARKS.md g).
const MIN_RATIO_STEPS: usize = 20;

/// DSA's settings, as the recipe and the CLI name them. The ones left `None` take the flow's
/// defaults when the plan is resolved ([`DsaPlan::resolve`]); a resolved plan has them all.
///
/// From a trained run the defaults are the best setting benchmarked against the iterative
/// method (BENCHMARKS.md i–l): 1.5 epochs at a constant rate, the cost-share metric, the last
/// half under the kept widths' masks, a Fisher estimate that forgets (0.8 per ratio step) and
/// an ADMM penalty of 10, large next to the normalised signal (with 1 the widths jumped
/// between far-apart ways of meeting the budget, BENCHMARKS.md l). From scratch that setting
/// has been run on ResNet-20 with one seed only (2.6 points ahead, BENCHMARKS.md m), so the
/// defaults stay the earlier ones until more seeds agree: 3 epochs, ALGORITHMS.md's Euclidean
/// metric, sampled masks throughout, the Fisher mean since the start, a penalty of 1, a
/// cosine after a warm-up, the weights at the model's recipe rate (0.1 for ResNet-20).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DsaPlan {
    /// Epochs of joint weight and keep-ratio training; a fraction (0.5, 1.5) runs ceil(x)
    /// passes over a random x/ceil(x) share of the training split.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dsa_epochs: Option<f64>,
    /// Weight learning rate during allocation (the fine-tuning rate from a trained run, the
    /// model's recipe rate from scratch: a fixed 0.1 made LeNet-5, trained at 0.05, collapse).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dsa_lr: Option<f64>,
    /// The allocation phase's weight-rate schedule from a trained run (constant or cosine);
    /// from scratch always a cosine after a warm-up.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dsa_schedule: Option<ScheduleKind>,
    /// One keep-ratio step every this many weight steps.
    #[serde(default = "ratio_every")]
    pub ratio_every: usize,
    /// Step size of the linearised ADMM update of the keep ratios (1 with the fisher signal,
    /// 0.05 with the sampled one).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ratio_lr: Option<f64>,
    /// Initial ADMM penalty (it grows ×1.05 per epoch).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rho: Option<f64>,
    /// Metric of the ADMM penalty and budget projection.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub admm_metric: Option<AdmmMetric>,
    /// The channel signal of the keep-ratio gradient.
    #[serde(default)]
    pub ratio_signal: RatioSignal,
    /// Share of the allocation phase, at its end, trained under the kept widths' masks.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hard_tail: Option<f64>,
    /// Which channels a group's keep ratio keeps.
    #[serde(default)]
    pub channel_rank: ChannelRank,
    /// Share of the Fisher estimate kept from one ratio step to the next.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fisher_decay: Option<f64>,
    /// Share of the training data held out for the keep-ratio steps.
    #[serde(default = "val_fraction")]
    pub val_fraction: f64,
}

fn ratio_every() -> usize {
    5
}

/// The recipe's defaults (an empty `[dsa]` recipe reads as this).
impl Default for DsaPlan {
    fn default() -> Self {
        DsaPlan {
            dsa_epochs: None,
            dsa_lr: None,
            dsa_schedule: None,
            ratio_every: ratio_every(),
            ratio_lr: None,
            rho: None,
            admm_metric: None,
            ratio_signal: RatioSignal::default(),
            hard_tail: None,
            channel_rank: ChannelRank::default(),
            fisher_decay: None,
            val_fraction: val_fraction(),
        }
    }
}
fn val_fraction() -> f64 {
    0.1
}

/// A resolved field (see [`DsaPlan::resolve`]).
fn got<T: Copy>(v: Option<T>) -> T {
    v.expect("DsaPlan::resolve fills every setting")
}

impl DsaPlan {
    /// The defaults for every knob, flow-dependent ones included (see the type's docs).
    pub(crate) fn resolve(&mut self, flow: &Flow) -> Result<()> {
        let scratch = flow.from_scratch;
        if scratch && self.dsa_schedule.is_some_and(|k| k != ScheduleKind::Cosine) {
            return Err(LopperError::Config(
                "dsa_schedule (--dsa-schedule) applies to a prune from a trained run; from scratch the allocation phase trains the new weights with a warm-up and a cosine".into(),
            ));
        }
        let pick = |scratch_default, run_default| {
            if scratch {
                scratch_default
            } else {
                run_default
            }
        };
        self.dsa_epochs.get_or_insert(pick(3.0, 1.5));
        // The weights train at the source's rate from scratch, at the fine-tuning rate from a
        // trained run; both are known once the source is read.
        let lr_default = if scratch { flow.source_lr } else { flow.lr };
        if let Some(lr) = lr_default {
            self.dsa_lr.get_or_insert(lr);
        }
        if self.dsa_lr.is_some_and(|lr| !(lr > 0.0 && lr.is_finite())) {
            return Err(LopperError::Config(
                "dsa_lr (--dsa-lr) must be positive".into(),
            ));
        }
        self.dsa_schedule.get_or_insert(if scratch {
            ScheduleKind::Cosine
        } else {
            ScheduleKind::Constant
        });
        self.admm_metric.get_or_insert(if scratch {
            AdmmMetric::Euclidean
        } else {
            AdmmMetric::CostShare
        });
        self.hard_tail.get_or_insert(pick(0.0, 0.5));
        self.fisher_decay.get_or_insert(pick(1.0, 0.8));
        self.rho.get_or_insert(pick(1.0, 10.0));
        self.ratio_lr.get_or_insert(match self.ratio_signal {
            RatioSignal::Fisher => 1.0,
            RatioSignal::Sampled => 0.05,
        });
        let epochs = got(self.dsa_epochs);
        if !(epochs > 0.0 && epochs.is_finite()) {
            return Err(LopperError::Config(
                "dsa_epochs (--dsa-epochs) must be positive".into(),
            ));
        }
        let rho = got(self.rho);
        if !(rho > 0.0 && rho.is_finite()) {
            return Err(LopperError::Config(
                "rho (--rho), the ADMM penalty, must be positive".into(),
            ));
        }
        if !(0.0..=1.0).contains(&got(self.hard_tail)) {
            return Err(LopperError::Config(
                "hard_tail (--hard-tail) is a share of the allocation phase, from 0 to 1".into(),
            ));
        }
        if !(self.val_fraction > 0.0 && self.val_fraction < 1.0) {
            return Err(LopperError::Config(
                "DSA needs a validation split: val_fraction (--val-fraction) must be in (0, 1)"
                    .into(),
            ));
        }
        Ok(())
    }
}

/// The plug-in.
pub struct DsaMethod {
    pub plan: DsaPlan,
}

impl PruneMethod for DsaMethod {
    fn held_out(&self) -> Option<f64> {
        Some(self.plan.val_fraction)
    }

    fn prune(&mut self, cx: &mut MethodContext) -> Result<MethodOutcome> {
        let p = &self.plan;
        let (epochs, schedule) = (got(p.dsa_epochs), got(p.dsa_schedule));
        let passes = epochs.ceil() as usize;
        let share = epochs / passes as f64;
        let cfg = cx.cfg;
        let alloc_train = if share < 0.999 {
            let subset = cx.data.train.dataset().split(share, cfg.seed ^ 0xA110C)?.1;
            cx.data.train.with_dataset(subset, cfg.batch_size)
        } else {
            cx.data.train.clone()
        };
        // No evaluation passes between allocation epochs: the ratio steps already report the
        // validation loss, and a test pass per epoch would only add time.
        let alloc_data = TrainData {
            train: alloc_train,
            val: None,
            test: None,
        };
        let dcfg = DsaConfig {
            epochs: passes,
            ratio_every: p.ratio_every,
            ratio_lr: got(p.ratio_lr),
            rho: got(p.rho),
            metric: got(p.admm_metric),
            signal: p.ratio_signal,
            hard_tail: got(p.hard_tail),
            channel_rank: p.channel_rank,
            fisher_decay: got(p.fisher_decay),
            ..DsaConfig::default()
        };
        let val = cx
            .data
            .val
            .as_ref()
            .ok_or_else(|| {
                LopperError::Config(
                    "DSA needs a validation split: the held-out share of the training data is empty".into(),
                )
            })?
            .shuffled(cfg.batch_size);
        let log = cx.work_dir.join("dsa_log.jsonl");
        let cb = cx.channel_budget()?;
        let cost_model = cb
            .budget
            .cost_model(&cx.dense.graph, cx.groups, cb.profile)?;
        let mut dsa = Dsa::new(
            cx.dense,
            cx.groups.to_vec(),
            cost_model,
            cb.limit,
            dcfg,
            val,
            alloc_data.train.num_batches(),
            cx.device,
            cfg.seed,
            Some(log),
        )?;
        let (weight_steps, ratio_steps) = dsa.planned_steps();
        if ratio_steps < MIN_RATIO_STEPS {
            cx.progress.warning(&format!(
                "DSA's allocation phase has only {ratio_steps} keep-ratio step(s) (one every {} weight steps over {weight_steps} batches); the ratios cannot learn from the loss in so few, and the widths will mostly be the budget projection's. Use more --dsa-epochs, a smaller --ratio-every or more training data",
                p.ratio_every,
            ));
        }
        let mut alloc_cfg = cfg.clone();
        alloc_cfg.epochs = passes;
        alloc_cfg.lr = p.dsa_lr.unwrap_or(cfg.lr);
        alloc_cfg.schedule = schedule;
        alloc_cfg.warmup_epochs = if cx.flow.from_scratch { 0.3 } else { 0.0 };
        let (_, resume_alloc) = cx.phase_run();
        cx.progress.message(&format!(
            "DSA: {} allocation pass(es) over {:.0}% of the training split, one ratio step every {} weight steps, {} weight lr, {} metric, hard tail {}{}",
            passes,
            100.0 * share,
            p.ratio_every,
            value_name(&schedule),
            value_name(&got(p.admm_metric)),
            got(p.hard_tail),
            if resume_alloc {
                " (resuming from the last completed epoch)"
            } else {
                ""
            }
        ));
        let (outcome, collapse) =
            cx.train_phase("DSA's allocation phase", alloc_cfg, &alloc_data, &mut dsa)?;
        let trained = outcome.model.valid();
        let importance = dsa.importance();
        let surgery = Surgery {
            source: &trained,
            groups: cx.groups,
            scores: &importance,
            cost: cb.cost,
            unit: cx.round_to.max(1),
            device: cx.device,
        };
        let (groups, cost, round_to) = (cx.groups, cb.cost, cx.round_to);
        let (model, measured_ms) = build_for_budget(cx, &surgery, |lim| {
            harden(
                groups,
                &importance,
                dsa.feasible_ratios(),
                cost,
                lim,
                round_to,
            )
        })?;
        Ok(MethodOutcome {
            model,
            measured_ms,
            allocation: "dsa".into(),
            history: Some(History {
                file: "keep_ratio_history".into(),
                title: "DSA keep ratios".into(),
                x_label: "allocation epoch".into(),
                y_label: "keep ratio a = sigmoid(s)".into(),
                series: cx
                    .groups
                    .iter()
                    .filter(|g| g.is_prunable())
                    .map(|g| {
                        (
                            format!("g{} {}", g.id, g.label(&cx.dense.graph)),
                            dsa.history()
                                .iter()
                                .map(|e| (e.epoch as f64, e.ratios[g.id]))
                                .collect(),
                        )
                    })
                    .collect(),
            }),
            cost: None,
            collapse,
        })
    }
}

/// How a value is spelled in a recipe or on the command line (`cost-share`, not `CostShare`).
pub fn value_name<T: clap::ValueEnum>(v: &T) -> String {
    v.to_possible_value()
        .map_or_else(String::new, |p| p.get_name().to_owned())
}
