//! Pruning methods as plug-ins of the prune session ([`super::session`]).
//!
//! A method is one [`PruneMethod`]: given the dense model, its channel groups, the budget's
//! cost model, the data and a folder of its own, it finds what to keep and returns the pruned
//! model. Everything around it (the source model, data, BatchNorm re-estimation, fine-tuning,
//! evaluation, resume between phases, the report) is the session's. Each method lives in its
//! own file here and is named in the registry, [`MethodPlan`]: its settings are one variant,
//! whose fields are the method's recipe fields (and, with `_` for `-`, its CLI flags). Adding a
//! method is a file here, a variant of [`MethodPlan`] and the CLI's flags for its settings.
//!
//! Methods share the machinery under [`crate::prune`]: criteria ([`Importance`]), allocation
//! and the [`Knapsack`] solver, surgery, the latency search ([`meet_latency`]) and the training
//! loop with its hooks.
//!
//! **Weight budgets.** Methods that zero weights (`magnitude`, `gmp`, `pdp`, `rigl`) take a
//! weight budget ([`Target::Weights`]: `sparsity=` or `nm=`), channel methods a channel budget
//! ([`MethodContext::channel_budget`]); PDP takes either (its weight or its channel mode).
//! The plan refuses a mismatch before any data is read ([`MethodPlan::accepts`]).
//! A weight method scores weights ([`Importance::weight_scores`]), keeps its masks in a
//! [`WeightMasks`] (the forward hook, zeroing in storage and of the optimiser's moments through
//! [`OptimizerState`]) and returns a model whose masked weights are zero; the session
//! fine-tunes it with masks read back from those zeros and counts the budget on the weights it
//! saves.
//!
//! [`WeightMasks`]: crate::prune::weights::WeightMasks
//! [`Importance`]: crate::prune::importance::Importance
//! [`Importance::weight_scores`]: crate::prune::importance::Importance::weight_scores
//! [`Knapsack`]: crate::prune::knapsack::Knapsack
//! [`meet_latency`]: crate::prune::measured::meet_latency
//! [`OptimizerState`]: crate::train::OptimizerState

pub mod dsa;
pub mod gmp;
pub mod halp;
pub mod iee;
pub mod iee_channels;
pub mod iterative;
pub mod magnitude;
pub mod one_shot;
pub mod pdp;
pub mod rigl;

use std::path::Path;

use burn::tensor::Device;
use serde::{Deserialize, Serialize};

use super::allocation::{Budget, CostModel, Target};
use super::groups::ChannelGroup;
use super::latency::{LatencyMeter, LatencyProfile};
use super::mask::Selection;
use super::measured::{LatencyRound, Surgery, meet_latency};
use super::weights::{Density, WeightBudget};
use crate::error::{LopperError, Result};
use crate::model::Model;
use crate::train::{
    Progress, ProgressHook, RunDir, TrainConfig, TrainData, TrainHook, TrainOutcome, Trainer,
};

/// The registry: every method by its recipe name (`method = "dsa"`), with its settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "method", rename_all = "lowercase")]
pub enum MethodPlan {
    /// One shot by the sum of |w| of each output filter (Li et al. 2017).
    L1(one_shot::OneShotPlan),
    /// One shot by the L2 norm of each output filter.
    L2(one_shot::OneShotPlan),
    /// One shot by BatchNorm |γ| (network slimming).
    Bn(one_shot::OneShotPlan),
    /// One shot by first-order Taylor on BatchNorm (Molchanov 2019).
    Taylor(one_shot::OneShotPlan),
    /// One shot by random scores (a control).
    Random(one_shot::OneShotPlan),
    /// Iterative budgeted pruning: remove a little, fine-tune briefly, repeat.
    Iterative(iterative::IterativePlan),
    /// Differentiable sparsity allocation: keep ratios learned under the budget (ADMM).
    Dsa(dsa::DsaPlan),
    /// Channels by an exact knapsack on Taylor importance under falling cost targets while
    /// training (HALP, Shen et al.).
    Halp(halp::HalpPlan),
    /// Weights: one shot by |w| (uniform, global or ERK densities; or N:M).
    Magnitude(magnitude::MagnitudePlan),
    /// Weights: gradual magnitude pruning along a cubic while training (Zhu & Gupta).
    Gmp(gmp::GmpPlan),
    /// Weights or channels: PDP's parameter-free soft masks while training (Cho et al. 2023).
    Pdp(pdp::PdpPlan),
    /// Weights: sparse training that drops by magnitude and grows by gradient (Evci et al.).
    Rigl(rigl::RiglPlan),
    /// Weights: exploitation and exploration around a criterion (Sun et al. 2025).
    Iee(iee::IeePlan),
}

impl MethodPlan {
    /// The method's name, as the recipe and the report spell it.
    pub fn name(&self) -> &'static str {
        match self {
            MethodPlan::L1(_) => "l1",
            MethodPlan::L2(_) => "l2",
            MethodPlan::Bn(_) => "bn",
            MethodPlan::Taylor(_) => "taylor",
            MethodPlan::Random(_) => "random",
            MethodPlan::Iterative(_) => "iterative",
            MethodPlan::Dsa(_) => "dsa",
            MethodPlan::Halp(_) => "halp",
            MethodPlan::Magnitude(_) => "magnitude",
            MethodPlan::Gmp(_) => "gmp",
            MethodPlan::Pdp(_) => "pdp",
            MethodPlan::Rigl(_) => "rigl",
            MethodPlan::Iee(_) => "iee",
        }
    }

    /// A weight method's layer allocation (how a sparsity is spread over layers).
    pub fn weight_allocation(&mut self) -> Option<&mut Option<Density>> {
        match self {
            MethodPlan::Magnitude(p) => Some(&mut p.allocation),
            MethodPlan::Gmp(p) => Some(&mut p.allocation),
            _ => None,
        }
    }

    /// Whether the method takes `target`: weight methods (`magnitude`, `gmp`, `rigl`) weight
    /// budgets, channel methods channel budgets, PDP and IEE both (their weight or channel
    /// variants).
    pub fn accepts(&self, target: &Target) -> bool {
        let weights = matches!(target, Target::Weights(_));
        match self {
            MethodPlan::Pdp(_) | MethodPlan::Iee(_) => true,
            MethodPlan::Magnitude(_) | MethodPlan::Gmp(_) | MethodPlan::Rigl(_) => weights,
            _ => !weights,
        }
    }

    /// Fills the defaults that depend on the flow (from a trained run or from scratch) and
    /// on the budget, and checks the settings, before any data is read.
    pub fn resolve(&mut self, flow: &Flow, target: &Target) -> Result<()> {
        match self {
            MethodPlan::Dsa(p) => p.resolve(flow),
            MethodPlan::Halp(p) => p.resolve(flow),
            MethodPlan::Gmp(p) => p.resolve(flow),
            MethodPlan::Pdp(p) => p.resolve(flow, target),
            MethodPlan::Rigl(p) => p.resolve(flow, target),
            MethodPlan::Iee(p) => p.resolve(flow, target),
            MethodPlan::Magnitude(p) => p.check(flow),
            MethodPlan::Iterative(p) => p.check(flow),
            MethodPlan::L1(p)
            | MethodPlan::L2(p)
            | MethodPlan::Bn(p)
            | MethodPlan::Taylor(p)
            | MethodPlan::Random(p) => p.check(flow),
        }
    }

    /// The method, ready to run.
    pub fn build(&self) -> Box<dyn PruneMethod> {
        use crate::prune::importance::Criterion;
        let one_shot = |criterion, p: &one_shot::OneShotPlan| -> Box<dyn PruneMethod> {
            Box::new(one_shot::OneShot {
                criterion,
                plan: p.clone(),
            })
        };
        match self {
            MethodPlan::L1(p) => one_shot(Criterion::L1, p),
            MethodPlan::L2(p) => one_shot(Criterion::L2, p),
            MethodPlan::Bn(p) => one_shot(Criterion::Bn, p),
            MethodPlan::Taylor(p) => one_shot(Criterion::Taylor, p),
            MethodPlan::Random(p) => one_shot(Criterion::Random, p),
            MethodPlan::Iterative(p) => Box::new(iterative::Iterative { plan: p.clone() }),
            MethodPlan::Dsa(p) => Box::new(dsa::DsaMethod { plan: p.clone() }),
            MethodPlan::Halp(p) => Box::new(halp::Halp { plan: p.clone() }),
            MethodPlan::Magnitude(p) => Box::new(magnitude::Magnitude { plan: p.clone() }),
            MethodPlan::Gmp(p) => Box::new(gmp::Gmp { plan: p.clone() }),
            MethodPlan::Pdp(p) => Box::new(pdp::Pdp { plan: p.clone() }),
            MethodPlan::Rigl(p) => Box::new(rigl::Rigl { plan: p.clone() }),
            MethodPlan::Iee(p) => Box::new(iee::Iee { plan: p.clone() }),
        }
    }
}

/// How the prune starts. A plan is resolved twice: before any data is read (bad settings fail
/// early) and once the source is read, when the rates that follow it are known.
#[derive(Debug, Clone, Copy)]
pub struct Flow {
    /// Training a new model from random weights while pruning, instead of a trained run.
    pub from_scratch: bool,
    /// The fine-tuning learning rate (a method's own rates may default to it); `None` until
    /// the source is read, always set in a [`MethodContext`].
    pub lr: Option<f64>,
    /// The source's training rate (from scratch: the model's recipe rate); `None` until the
    /// source is read.
    pub source_lr: Option<f64>,
}

impl Flow {
    /// The fine-tuning rate, once the source is read.
    pub fn finetune_lr(&self) -> Result<f64> {
        self.lr.ok_or_else(|| {
            LopperError::Config("the fine-tuning rate is set once the source is read".into())
        })
    }
}

/// Everything a method may use.
pub struct MethodContext<'a> {
    /// The model to prune (the trained run's, or a fresh one from scratch), on `device`.
    pub dense: &'a Model,
    /// The source's training configuration, with the prune's seed, device, data limits and
    /// the method's validation share.
    pub cfg: &'a TrainConfig,
    pub data: &'a TrainData,
    pub groups: &'a [ChannelGroup],
    /// What the prune must reach.
    pub target: Target,
    /// For a channel budget: its cost model, limit and latency tools.
    pub channels: Option<ChannelBudget<'a>>,
    /// Nodes whose channels (channel budgets) or weights (weight budgets) must stay.
    pub protect: &'a [String],
    /// Widths are kept a multiple of this many channels (or a whole group), and move by it.
    pub round_to: usize,
    pub flow: Flow,
    /// The plain (non-autodiff) device.
    pub device: &'a Device,
    /// A folder of the method's own (checkpoints, logs), inside the prune's run folder.
    pub work_dir: &'a Path,
    /// Whether an interrupted prune is being continued (the method's checkpoints are in
    /// `work_dir`).
    pub resume: bool,
    pub progress: &'a mut dyn Progress,
}

/// A channel budget as the channel methods use it.
#[derive(Clone, Copy)]
pub struct ChannelBudget<'a> {
    pub budget: Budget,
    pub cost: &'a dyn CostModel,
    /// The budget in the cost model's units.
    pub limit: f64,
    /// The latency profile, for latency budgets.
    pub profile: Option<&'a LatencyProfile>,
    /// For latency budgets with a profile: measures candidates against the dense model.
    pub meter: Option<&'a LatencyMeter<'a>>,
}

impl<'a> MethodContext<'a> {
    /// The channel budget; an error for a weight budget (the plan's checks refuse that
    /// pairing before any data is read, so this is a second line).
    pub fn channel_budget(&self) -> Result<ChannelBudget<'a>> {
        self.channels.ok_or_else(|| {
            LopperError::Config(format!(
                "this method removes channels; the budget {} is a weight budget",
                self.target
            ))
        })
    }

    /// The weight budget; an error for a channel budget.
    pub fn weight_budget(&self) -> Result<WeightBudget> {
        match self.target {
            Target::Weights(w) => Ok(w),
            Target::Channels(b) => Err(LopperError::Config(format!(
                "this method zeroes weights; the budget {b} is a channel budget (use sparsity= or nm=)"
            ))),
        }
    }
}

impl MethodContext<'_> {
    /// The run folder of the method's own training phase, and whether a resumed prune left a
    /// checkpoint there to go on from.
    pub fn phase_run(&self) -> (RunDir, bool) {
        let run = RunDir::new(self.work_dir.join(super::session::METHOD_DIR));
        let resuming = self.resume && run.has_checkpoint();
        (run, resuming)
    }

    /// The data of a method's training phase: the training split, with no evaluation passes
    /// between its epochs (the session evaluates the result).
    pub fn phase_data(&self) -> TrainData {
        TrainData {
            train: self.data.train.clone(),
            val: None,
            test: None,
        }
    }

    /// Trains the method's own phase (DSA's allocation, GMP's pruning) in its run folder with
    /// `hook`, going on from its last epoch when the prune resumes, and shows its progress as
    /// `phase`. Returns the outcome and, from a trained run, why the phase collapsed if its
    /// loss ended at chance level: the network knew the task, so the method destroyed it.
    pub fn train_phase(
        &mut self,
        phase: &str,
        cfg: TrainConfig,
        data: &TrainData,
        hook: &mut dyn TrainHook,
    ) -> Result<(TrainOutcome, Option<String>)> {
        self.train_phase_from(self.dense.clone(), phase, cfg, data, hook)
    }

    /// [`Self::train_phase`] starting from `start` instead of the dense model (RigL starts
    /// from the dense weights with the pruned ones zeroed).
    pub fn train_phase_from(
        &mut self,
        start: Model,
        phase: &str,
        cfg: TrainConfig,
        data: &TrainData,
        hook: &mut dyn TrainHook,
    ) -> Result<(TrainOutcome, Option<String>)> {
        let (run, resuming) = self.phase_run();
        let trainer = Trainer::new(cfg, Some(run))?;
        let outcome = {
            let mut shown = ProgressHook::new(phase, &mut *self.progress);
            if resuming {
                trainer.resume(data, &mut [hook, &mut shown])?
            } else {
                trainer.fit(start, data, &mut [hook, &mut shown])?
            }
        };
        let collapse = if self.flow.from_scratch {
            None
        } else {
            let classes = self.dense.graph.output_shape().iter().product();
            loss_collapse(phase, &outcome.history, classes)
        };
        Ok((outcome, collapse))
    }
}

/// Resolves the settings a weight method's training phase shares (GMP's, PDP's; `prefix`
/// names their fields and flags): the ramp's start (0 from a trained run, `scratch_start`
/// from scratch) and end as shares of the phase, its epochs, and its weight rate (the
/// fine-tuning rate from a trained run, the source's rate from scratch).
pub(crate) fn resolve_phase(
    name: &str,
    prefix: &str,
    flow: &Flow,
    scratch_start: f64,
    epochs: usize,
    (start, end): (&mut Option<f64>, f64),
    lr: &mut Option<f64>,
) -> Result<()> {
    let start = *start.get_or_insert(if flow.from_scratch {
        scratch_start
    } else {
        0.0
    });
    if let Some(default) = if flow.from_scratch {
        flow.source_lr
    } else {
        flow.lr
    } {
        lr.get_or_insert(default);
    }
    if !((0.0..1.0).contains(&start) && end > start && end <= 1.0) {
        return Err(LopperError::Config(format!(
            "{name}'s ramp is a share of its phase: 0 <= {prefix}_start (--{prefix}-start) < {prefix}_end (--{prefix}-end) <= 1"
        )));
    }
    if epochs == 0 {
        return Err(LopperError::Config(format!(
            "{prefix}_epochs (--{prefix}-epochs) must be at least 1"
        )));
    }
    if lr.is_some_and(|lr| !(lr > 0.0 && lr.is_finite())) {
        return Err(LopperError::Config(format!(
            "{prefix}_lr (--{prefix}-lr) must be positive"
        )));
    }
    Ok(())
}

/// The training configuration of a weight method's phase: `epochs` at `lr`, constant from a
/// trained run, a warm-up and a cosine from scratch.
pub(crate) fn phase_config(cx: &MethodContext, epochs: usize, lr: Option<f64>) -> TrainConfig {
    let mut cfg = cx.cfg.clone();
    cfg.epochs = epochs;
    cfg.lr = lr.unwrap_or(cfg.lr);
    if cx.flow.from_scratch {
        cfg.schedule = crate::train::ScheduleKind::Cosine;
        cfg.warmup_epochs = 0.3_f64.min(epochs as f64 / 2.0);
    } else {
        cfg.schedule = crate::train::ScheduleKind::Constant;
        cfg.warmup_epochs = 0.0;
    }
    cfg
}

/// What a method found.
pub struct MethodOutcome {
    /// The pruned model, made physical (channels removed).
    pub model: Model,
    /// For latency budgets: the pruned model's measured latency at the profile's batch.
    pub measured_ms: Option<f64>,
    /// How the widths were found, for the report (`uniform`, `dsa`, `iterative (taylor, 5
    /// steps)`).
    pub allocation: String,
    /// How the method's allocation moved over its run (DSA's keep ratios, PDP's sparsities),
    /// for the report's line plot.
    pub history: Option<History>,
    /// The cost the method reached in the budget's units, where it is not counted on the
    /// pruned graph (weight sparsity); `None` for channel budgets.
    pub cost: Option<f64>,
    /// Why the method's own training collapsed (its loss rose to chance level), if it did.
    pub collapse: Option<String>,
}

/// One quantity per group or layer over a method's run, plotted in the report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct History {
    /// The plot's file name in the run folder, without extension (`keep_ratio_history`).
    pub file: String,
    /// What is plotted (the report adds the model and budget).
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    /// One line per group or layer: its name and (x, y) points.
    pub series: Vec<(String, Vec<(f64, f64)>)>,
}

/// Whether a training phase that started from a trained model ended with its training loss
/// at chance level (at least 90% of ln(classes), the loss of a uniform guess): the method
/// destroyed what the network knew. Returns why, for the report.
pub fn loss_collapse(
    phase: &str,
    history: &[crate::train::EpochRecord],
    classes: usize,
) -> Option<String> {
    let chance = (classes.max(2) as f64).ln();
    let last = history.last()?;
    (last.train_loss >= 0.9 * chance).then(|| {
        format!(
            "{phase}'s training loss rose to {:.3}, chance level for {classes} classes (ln {classes} = {chance:.3})",
            last.train_loss
        )
    })
}

/// A pruning method.
pub trait PruneMethod {
    /// The share of the training split the method holds out for itself (DSA's keep ratios
    /// learn on data the weights do not see); fine-tuning gets it back.
    fn held_out(&self) -> Option<f64> {
        None
    }
    /// Finds what to keep under the budget and returns the pruned model.
    fn prune(&mut self, cx: &mut MethodContext) -> Result<MethodOutcome>;
    /// Hooks the fine-tuning after this method trains with (weight masks that must stay
    /// applied); none for channel methods, whose result is already physically smaller.
    fn finetune_hooks(&mut self) -> Vec<Box<dyn TrainHook>> {
        vec![]
    }
}

/// The pruned model for the budget (see [`meet_latency`]): the selection at the limit, or for
/// a measured latency budget the build-and-measure search, its builds reported.
pub fn build_for_budget(
    cx: &mut MethodContext,
    surgery: &Surgery,
    select_at: impl Fn(f64) -> Result<Selection>,
) -> Result<(Model, Option<f64>)> {
    let cb = cx.channel_budget()?;
    let limit = cb.limit;
    let progress = &mut *cx.progress;
    meet_latency(limit, cb.meter, surgery, select_at, |r| {
        match r {
        LatencyRound::Calibration {
            round,
            model_limit,
            measured,
        } => progress.message(&format!(
            "latency calibration round {round}: predicted limit {model_limit:.3} ms, measured {measured:.3} ms (budget {limit:.3} ms)"
        )),
        LatencyRound::Fill(step) => {
            let paid: Vec<String> = step
                .removed
                .iter()
                .map(|(h, k)| format!("group {h} -{k}"))
                .collect();
            progress.message(&format!(
                "latency fill: group {} +{} channel(s){}, measured {:.3} ms (budget {limit:.3} ms){}",
                step.group,
                step.added,
                if paid.is_empty() {
                    String::new()
                } else {
                    format!(" for {}", paid.join(", "))
                },
                step.measured,
                if step.accepted { "" } else { ": not kept" }
            ));
        }
    }
    })
}

#[cfg(test)]
mod tests {
    use super::loss_collapse;
    use crate::train::EpochRecord;

    fn epoch(train_loss: f64) -> EpochRecord {
        EpochRecord {
            epoch: 1,
            lr: 0.01,
            train_loss,
            train_top1: 0.1,
            val: None,
            test: None,
            seconds: 1.0,
            images_per_sec: 1.0,
        }
    }

    #[test]
    fn a_loss_at_chance_level_is_a_collapse() {
        // ln 10 = 2.303: DSA's collapsed LeNet-5 allocations ended there.
        let why = loss_collapse("DSA", &[epoch(0.1), epoch(2.30)], 10).unwrap();
        assert!(why.contains("2.300") && why.contains("ln 10"), "{why}");
        assert!(loss_collapse("DSA", &[epoch(2.2), epoch(0.4)], 10).is_none());
        assert!(loss_collapse("DSA", &[], 10).is_none());
    }
}
