//! IEE, exploitation and exploration around an importance criterion (Sun et al., WACV 2025;
//! ALGORITHMS.md "IEE"). This file holds the plan, the cycles and the weight variant (a
//! weight budget: unstructured or N:M); [`super::iee_channels`] the channel variant (a channel
//! budget). For weights the masked layers' weights are split into an active set A (trained,
//! in the forward pass) and an exploration set E (masked). Cycles of `H + J + Q` steps run
//! through the first `iee_end` of the phase:
//!
//! 1. train A for `H` steps, then score A by the criterion and move the `k` lowest of each
//!    layer to E (`k` = `iee_swap` of its active weights, decaying along a cosine over the
//!    cycles);
//! 2. train A for `J` steps;
//! 3. reactivate E with the values its weights had when they left A, freeze A, and train only
//!    E for `Q` steps;
//! 4. score E by the same criterion and move its `k` best of each layer back into A; the rest
//!    of E is masked again. Under N:M each group of `M` gets back its best of E until it has
//!    its `N` again, so the pattern holds after every cycle.
//!
//! Then the phase trains with the masks fixed, and the session fine-tunes with them frozen.
//!
//! Design choices (documented as the issue asks):
//! - **Values.** E's weights are zero in storage while masked (so momentum, weight decay and
//!   export see zeros), their last values kept aside; they come back at the start of every
//!   exploration, and grown weights keep the values exploration gave them ("most recently
//!   used", which a summary of the paper reports as better than zeros).
//! - **Freezing A.** During exploration A's gradient is zeroed and its moments set aside and
//!   zeroed; at the end its weights and moments are put back exactly as they were, so A has
//!   no update to either. (Between the steps of exploration only weight decay moves A, by
//!   `lr · wd` of itself per step; that drift is undone at the end.)
//! - **E's optimiser state.** E's moments are zero when it is reactivated (they were zeroed
//!   when its weights left A), build up during exploration, and are dropped at the grow:
//!   grown weights start A with fresh moments, like RigL's.
//! - **Criteria.** `l1` (`magnitude`) scores `|w|`; `taylor` scores `|w · ∂L/∂w|` summed over the
//!   steps that scored set trained (A over the `H` steps, E over the `Q` steps).
//!
//! Criteria: `l1` (magnitude, the default) or `taylor`. Densities are ERK by default (uniform
//! and global too; none under N:M), from one-shot magnitude masks of a trained run or random
//! masks from scratch. `iee_log.jsonl` records every cycle: the swap
//! size, how many grown weights were ones just pruned, and the mean training loss over the
//! `J` steps before exploration and over the `H` steps after the grow.

use burn::module::Module;
use burn::optim::GradientsParams;
use burn::tensor::TensorData;
use serde::{Deserialize, Serialize};

use super::{Flow, MethodContext, MethodOutcome, PruneMethod, phase_config, resolve_phase};
use crate::error::{LopperError, Result};
use crate::model::{Model, NodeHook, param_id};
use crate::prune::allocation::Target;
use crate::prune::importance::Criterion;
use crate::prune::weights::{
    Density, Pattern, WeightBudget, WeightLayer, WeightMasks, set_weight_values, weight_values,
};
use crate::train::{HostState, OptimizerState, StepInfo, TrainHook, mask_gradients};

use super::magnitude::sparse_start;

/// Settings of IEE.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IeePlan {
    /// How the sparsity is spread over the layers [default: erk].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allocation: Option<Density>,
    /// The criterion the sets are scored by [default: l1 (magnitude) for weights, taylor for
    /// channels]: for weights `l1` (|w|) or `taylor` (|w dL/dw|); for channels any channel
    /// criterion, `halp` growing by a knapsack under the budget.
    #[serde(alias = "iee_criterion", skip_serializing_if = "Option::is_none")]
    pub criterion: Option<Criterion>,
    /// Epochs of the phase (before the session's fine-tuning).
    #[serde(default = "iee_epochs")]
    pub iee_epochs: usize,
    /// Steps training the active set before it is scored and pruned.
    #[serde(default = "iee_steps")]
    pub iee_h: usize,
    /// Steps training the active set after the prune.
    #[serde(default = "iee_steps")]
    pub iee_j: usize,
    /// Steps training only the exploration set, the active set frozen.
    #[serde(default = "iee_steps")]
    pub iee_q: usize,
    /// Share of each layer's active weights swapped in the first cycle (decaying along a
    /// cosine over the cycles).
    #[serde(default = "iee_swap")]
    pub iee_swap: f64,
    /// Where in the phase (share of its steps) the last cycle must end.
    #[serde(default = "iee_end")]
    pub iee_end: f64,
    /// Weight learning rate in the phase [default: the fine-tuning rate, constant, from a
    /// trained run; the model's recipe rate with a warm-up and a cosine from scratch].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub iee_lr: Option<f64>,
}

fn iee_epochs() -> usize {
    1
}
/// The paper's best was 150 steps each on ImageNet (thousands of steps an epoch); a LeNet-5
/// epoch has 469, so 50 gives it two cycles in the first 75% of one epoch.
fn iee_steps() -> usize {
    50
}
fn iee_swap() -> f64 {
    0.1
}
fn iee_end() -> f64 {
    0.75
}

impl Default for IeePlan {
    fn default() -> Self {
        IeePlan {
            allocation: None,
            criterion: None,
            iee_epochs: iee_epochs(),
            iee_h: iee_steps(),
            iee_j: iee_steps(),
            iee_q: iee_steps(),
            iee_swap: iee_swap(),
            iee_end: iee_end(),
            iee_lr: None,
        }
    }
}

impl IeePlan {
    pub(crate) fn resolve(&mut self, flow: &Flow, target: &Target) -> Result<()> {
        match target {
            Target::Weights(w) => {
                let criterion = *self.criterion.get_or_insert(Criterion::L1);
                if !matches!(criterion, Criterion::L1 | Criterion::Taylor) {
                    return Err(LopperError::Config(format!(
                        "IEE scores single weights by l1 (magnitude) or taylor; {} is a channel criterion (use a channel budget such as macs=0.5)",
                        criterion.name()
                    )));
                }
                match w {
                    WeightBudget::NM { .. } if self.allocation.is_some() => {
                        return Err(LopperError::Config(format!(
                            "allocation (--allocation) spreads a sparsity over the layers; the budget {target} puts every pruned layer at its pattern"
                        )));
                    }
                    WeightBudget::NM { .. } => {}
                    WeightBudget::Sparsity(_) => {
                        self.allocation.get_or_insert(Density::Erk);
                    }
                }
            }
            Target::Channels(_) => {
                let criterion = *self.criterion.get_or_insert(Criterion::Taylor);
                match self.allocation {
                    Some(Density::Erk) => {
                        return Err(LopperError::Config(format!(
                            "ERK spreads a weight sparsity over layers; for the channel budget {target} use --allocation uniform or global"
                        )));
                    }
                    Some(_) if criterion == Criterion::Halp => {
                        return Err(LopperError::Config(
                            "the halp criterion starts from HALP's knapsack and grows by it; --allocation does not apply".into(),
                        ));
                    }
                    None if criterion != Criterion::Halp => {
                        self.allocation = Some(Density::Uniform);
                    }
                    _ => {}
                }
            }
        }
        if self.iee_h == 0 || self.iee_j == 0 || self.iee_q == 0 {
            return Err(LopperError::Config(
                "iee_h, iee_j and iee_q (--iee-h, --iee-j, --iee-q) must be at least 1".into(),
            ));
        }
        if !(self.iee_swap > 0.0 && self.iee_swap <= 1.0) {
            return Err(LopperError::Config(
                "iee_swap (--iee-swap) is a share of each layer's active weights, in (0, 1]".into(),
            ));
        }
        if !(self.iee_end > 0.0 && self.iee_end <= 1.0) {
            return Err(LopperError::Config(
                "iee_end (--iee-end) is a share of the phase, in (0, 1]".into(),
            ));
        }
        resolve_phase(
            "IEE",
            "iee",
            flow,
            0.0,
            self.iee_epochs,
            (&mut Some(0.0), self.iee_end),
            &mut self.iee_lr,
        )
    }
}

/// The cycles: `h + j + q` steps each, as many as end by step `end`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Cycles {
    pub h: usize,
    pub j: usize,
    pub q: usize,
    pub end: usize,
    pub swap: f64,
}

/// Where a step falls in the cycles.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Training the active set (before the prune, or after it).
    Exploit,
    /// Training only the exploration set.
    Explore,
    /// After the last cycle.
    Fixed,
}

impl Cycles {
    /// Steps per cycle.
    pub fn steps(&self) -> usize {
        self.h + self.j + self.q
    }

    /// How many cycles fit.
    pub fn count(&self) -> usize {
        self.end / self.steps().max(1)
    }

    /// The stage of step `step` (0-based) and its position in its cycle.
    pub fn stage(&self, step: usize) -> (Stage, usize) {
        let p = step % self.steps();
        if step / self.steps() >= self.count() {
            (Stage::Fixed, p)
        } else if p < self.h + self.j {
            (Stage::Exploit, p)
        } else {
            (Stage::Explore, p)
        }
    }

    /// The share swapped in the cycle of step `step`: `swap/2 (1 + cos(π c / C))` for cycle
    /// `c` of `C`.
    pub fn share(&self, step: usize) -> f64 {
        let c = step / self.steps();
        let n = self.count().max(1);
        0.5 * self.swap * (1.0 + (std::f64::consts::PI * c as f64 / n as f64).cos())
    }
}

/// One cycle, as the log records it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IeeCycle {
    /// Steps done at the grow.
    pub step: usize,
    /// Weights moved from A to E at the prune (and back at the grow) over all layers.
    pub swapped: usize,
    /// Grown weights that were among those just pruned.
    pub regrown_just_pruned: usize,
    /// Mean training loss over the `J` steps before exploration.
    pub loss_before: f64,
    /// Mean training loss over the `H` steps after the grow (none for the last cycle until
    /// they run).
    pub loss_after: Option<f64>,
}

/// The losses the log reports per cycle, as the steps go by.
#[derive(Default)]
struct CycleLosses {
    /// Sum and count over the current `J` steps.
    sum: f64,
    n: usize,
}

impl CycleLosses {
    /// Takes in the loss of step `step`: the `J` steps before exploration add up for the next
    /// cycle's `loss_before`; the `H` steps right after a grow (the next cycle's, or the first
    /// `H` of the fixed stage; not its later ones) average into the last cycle's `loss_after`.
    fn step(&mut self, cycles: &Cycles, step: usize, loss: f64, log: &mut [IeeCycle]) {
        let (stage, p) = cycles.stage(step);
        let cycle = step / cycles.steps();
        if stage == Stage::Exploit && p >= cycles.h {
            self.sum += loss;
            self.n += 1;
        } else if p < cycles.h
            && (1..=cycles.count()).contains(&cycle)
            && let Some(last) = log.last_mut()
        {
            let n = p as f64;
            let prev = last.loss_after.unwrap_or(0.0);
            last.loss_after = Some((prev * n + loss) / (n + 1.0));
        }
    }

    /// The mean over the `J` steps just done, starting over.
    fn before(&mut self) -> f64 {
        let mean = self.sum / self.n.max(1) as f64;
        *self = CycleLosses::default();
        mean
    }
}

/// What IEE's cycles act on: single weights ([`WeightUnits`]) or channels
/// ([`super::iee_channels::ChannelUnits`]). [`IeeHook`] runs the cycles and keeps the log; a
/// unit set moves its units between A and E and keeps A frozen while E explores.
pub trait Units {
    /// The forward hook of the current masks (none while exploring: every unit computes).
    fn node_hook(&self) -> Option<&dyn NodeHook>;
    /// Takes in one step's gradients at `stage` (`scoring`: the `H` steps that score A, or
    /// exploration) and returns those that may update: E's alone while exploring.
    fn gradients(
        &mut self,
        stage: Stage,
        scoring: bool,
        model: &Model,
        grads: GradientsParams,
    ) -> Result<GradientsParams>;
    /// Step 1's end: moves `share` of A, its lowest-scoring units, to E.
    fn prune(&mut self, share: f64, model: Model, optim: &mut OptimizerState) -> Result<Model>;
    /// Step 3's start: E comes back with its last values, A is set aside.
    fn explore(&mut self, model: Model, optim: &mut OptimizerState) -> Result<Model>;
    /// Step 4: E's best join A, A is put back. Returns the model, how many units grew back
    /// and how many of those were among the ones just pruned.
    fn grow(&mut self, model: Model, optim: &mut OptimizerState) -> Result<(Model, usize, usize)>;
    /// The checkpoint state.
    fn state(&self) -> Result<serde_json::Value>;
    fn restore(&mut self, state: serde_json::Value) -> Result<()>;
}

/// The training hook: IEE's cycles over a set of units.
pub struct IeeHook<U: Units> {
    units: U,
    cycles: Cycles,
    losses: CycleLosses,
    log: Vec<IeeCycle>,
}

impl<U: Units> IeeHook<U> {
    pub fn new(units: U, cycles: Cycles) -> IeeHook<U> {
        IeeHook {
            units,
            cycles,
            losses: CycleLosses::default(),
            log: vec![],
        }
    }

    pub fn units(&self) -> &U {
        &self.units
    }

    pub fn log(&self) -> &[IeeCycle] {
        &self.log
    }
}

#[derive(Serialize, Deserialize)]
struct HookState {
    units: serde_json::Value,
    log: Vec<IeeCycle>,
}

impl<U: Units> TrainHook for IeeHook<U> {
    fn node_hook(&self) -> Option<&dyn NodeHook> {
        self.units.node_hook()
    }
    fn after_backward(
        &mut self,
        info: &StepInfo,
        model: &Model,
        grads: GradientsParams,
    ) -> Result<GradientsParams> {
        let (stage, p) = self.cycles.stage(info.global_step);
        let scoring = stage == Stage::Explore || (stage == Stage::Exploit && p < self.cycles.h);
        self.units.gradients(stage, scoring, model, grads)
    }
    fn after_step(
        &mut self,
        info: &StepInfo,
        model: Model,
        optim: &mut OptimizerState,
    ) -> Result<Model> {
        let step = info.global_step;
        let (stage, p) = self.cycles.stage(step);
        let c = self.cycles;
        match stage {
            Stage::Exploit if p == c.h - 1 => self.units.prune(c.share(step), model, optim),
            Stage::Exploit if p == c.h + c.j - 1 => self.units.explore(model, optim),
            Stage::Explore if p == c.steps() - 1 => {
                let (model, swapped, regrown) = self.units.grow(model, optim)?;
                self.log.push(IeeCycle {
                    step: step + 1,
                    swapped,
                    regrown_just_pruned: regrown,
                    loss_before: self.losses.before(),
                    loss_after: None,
                });
                Ok(model)
            }
            _ => Ok(model),
        }
    }
    fn step_done(&mut self, info: &StepInfo, loss: f64, _samples: usize) {
        self.losses
            .step(&self.cycles, info.global_step, loss, &mut self.log);
    }
    fn state(&self) -> Result<Option<serde_json::Value>> {
        serde_json::to_value(HookState {
            units: self.units.state()?,
            log: self.log.clone(),
        })
        .map(Some)
        .map_err(|e| LopperError::Config(e.to_string()))
    }
    fn restore(&mut self, state: serde_json::Value) -> Result<()> {
        let s: HookState =
            serde_json::from_value(state).map_err(|e| LopperError::Config(e.to_string()))?;
        self.log = s.log;
        self.units.restore(s.units)
    }
}

/// Exploration in progress: what was set aside of A.
#[derive(Serialize, Deserialize)]
struct Frozen {
    /// A's weights per layer (masks' layer order; none for dense layers).
    weights: Vec<Option<Vec<f32>>>,
    /// A's optimiser state: (parameter id, values, shape).
    moments: HostState,
}

/// IEE's units on weights: the masked layers' single weights.
pub struct WeightUnits {
    masks: WeightMasks,
    /// Taylor (|w dL/dw|) or magnitude (|w|).
    taylor_scores: bool,
    pattern: Pattern,
    /// E's last values per layer (full size; meaningful where the mask is 0).
    stored: Vec<Option<Vec<f32>>>,
    /// Taylor sums per layer since the last score.
    taylor: Vec<Option<Vec<f64>>>,
    /// Per layer, the weights moved to E at the last prune.
    pruned: Vec<Vec<usize>>,
    frozen: Option<Frozen>,
}

fn values(t: TensorData) -> Result<Vec<f32>> {
    t.convert::<f32>()
        .try_into_vec::<f32>()
        .map_err(|e| LopperError::Graph(format!("{e:?}")))
}

impl WeightUnits {
    /// IEE on `masks` (the starting masks, whose zeros the model to train already has, in
    /// `pattern`); `source`, the model before those zeros, gives the masked weights' last
    /// values. `criterion` is `l1` (|w|) or `taylor` (|w dL/dw|).
    pub fn new(
        masks: WeightMasks,
        pattern: Pattern,
        criterion: Criterion,
        source: &Model,
    ) -> Result<WeightUnits> {
        let taylor_scores = match criterion {
            Criterion::L1 => false,
            Criterion::Taylor => true,
            other => {
                return Err(LopperError::Config(format!(
                    "IEE scores single weights by l1 (magnitude) or taylor, not {}",
                    other.name()
                )));
            }
        };
        let n = masks.layers().len();
        let stored = masks
            .layers()
            .iter()
            .map(|l| l.is_masked().then(|| weight_values(source, l)).transpose())
            .collect::<Result<Vec<_>>>()?;
        Ok(WeightUnits {
            masks,
            taylor_scores,
            pattern,
            stored,
            taylor: vec![None; n],
            pruned: vec![vec![]; n],
            frozen: None,
        })
    }

    pub fn masks(&self) -> &WeightMasks {
        &self.masks
    }

    fn layers(&self) -> Vec<(usize, WeightLayer)> {
        self.masks
            .layers()
            .iter()
            .enumerate()
            .filter(|(_, l)| l.is_masked())
            .map(|(i, l)| (i, l.clone()))
            .collect()
    }

    /// The criterion's scores of layer `i` (every position).
    fn scores(&self, i: usize, w: &[f32]) -> Vec<f64> {
        match (self.taylor_scores, &self.taylor[i]) {
            (true, Some(t)) => t.clone(),
            _ => w.iter().map(|v| v.abs() as f64).collect(),
        }
    }

    fn param(l: &WeightLayer) -> burn::module::ParamId {
        param_id(&format!("{}.weight", l.name))
    }

    /// Step 1's end: the `k` lowest-scoring active weights of each layer move to E.
    fn prune_weights(
        &mut self,
        share: f64,
        model: Model,
        optim: &mut OptimizerState,
    ) -> Result<Model> {
        let host = model.valid();
        let mut next = vec![];
        for (i, l) in self.layers() {
            let w = weight_values(&host, &l)?;
            let scores = self.scores(i, &w);
            let mask = self.masks.mask(i).unwrap_or_default().to_vec();
            let mut active: Vec<usize> = (0..mask.len()).filter(|&p| mask[p] != 0.0).collect();
            let k = ((share * active.len() as f64).round() as usize).min(mask.len() - active.len());
            active.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]).then(a.cmp(&b)));
            let stored = self.stored[i].get_or_insert_with(|| vec![0.0; mask.len()]);
            let mut m = mask;
            for &p in &active[..k] {
                m[p] = 0.0;
                stored[p] = w[p];
            }
            self.pruned[i] = active[..k].to_vec();
            next.push(m);
        }
        self.masks.set(next)?;
        self.taylor.iter_mut().for_each(|t| *t = None);
        self.masks.apply(model, Some(optim))
    }

    /// Step 3's start: E gets its last values back, A is set aside and its moments zeroed.
    fn explore_weights(&mut self, model: Model, optim: &mut OptimizerState) -> Result<Model> {
        let host = model.valid();
        let mut model = model;
        let mut weights = vec![None; self.masks.layers().len()];
        let mut ids = vec![];
        let mut e_only = vec![];
        for (i, l) in self.layers() {
            let w = weight_values(&host, &l)?;
            let mask = self.masks.mask(i).unwrap_or_default();
            let stored = self.stored[i].get_or_insert_with(|| vec![0.0; mask.len()]);
            let with_e: Vec<f32> = (0..w.len())
                .map(|p| if mask[p] != 0.0 { w[p] } else { stored[p] })
                .collect();
            model = set_weight_values(model, &l, with_e)?;
            weights[i] = Some(w);
            ids.push(Self::param(&l));
            e_only.push((Self::param(&l), mask.iter().map(|m| 1.0 - m).collect()));
        }
        let moments = optim.snapshot_host(&ids)?;
        optim.scale(&e_only)?;
        self.frozen = Some(Frozen { weights, moments });
        self.taylor.iter_mut().for_each(|t| *t = None);
        Ok(model)
    }

    /// Step 4: the `k` best of E in each layer join A with their values; A and its moments
    /// are put back; the rest of E is set aside and masked.
    fn grow_weights(
        &mut self,
        model: Model,
        optim: &mut OptimizerState,
    ) -> Result<(Model, usize, usize)> {
        let frozen = self
            .frozen
            .take()
            .ok_or_else(|| LopperError::Config("IEE's grow came without an exploration".into()))?;
        let host = model.valid();
        let mut model = model;
        let mut next = vec![];
        let (mut swapped, mut regrown) = (0, 0);
        for (i, l) in self.layers() {
            let w = weight_values(&host, &l)?;
            let scores = self.scores(i, &w);
            let mask = self.masks.mask(i).unwrap_or_default().to_vec();
            let grown = self.grown(i, &l, &mask, &scores);
            let kept_a = frozen.weights[i].clone().unwrap_or_default();
            let stored = self.stored[i].get_or_insert_with(|| vec![0.0; mask.len()]);
            let mut m = mask.clone();
            for &p in &grown {
                m[p] = 1.0;
                regrown += usize::from(self.pruned[i].contains(&p));
            }
            swapped += grown.len();
            let new: Vec<f32> = (0..w.len())
                .map(|p| {
                    if mask[p] != 0.0 {
                        kept_a[p]
                    } else if m[p] != 0.0 {
                        w[p]
                    } else {
                        stored[p] = w[p];
                        0.0
                    }
                })
                .collect();
            model = set_weight_values(model, &l, new)?;
            next.push(m);
        }
        optim.restore_host(frozen.moments)?;
        self.masks.set(next)?;
        self.taylor.iter_mut().for_each(|t| *t = None);
        // E's moments from exploration are dropped with the rest of E (and the grown
        // weights' with them: they restart A with fresh moments).
        let model = self.masks.apply(model, Some(optim))?;
        Ok((model, swapped, regrown))
    }

    /// The weights of layer `i` that grow back at the end of an exploration: the `k` best of
    /// E (as many as were pruned), or under N:M, in each group of `M` the best of E until the
    /// group has its `N` again.
    fn grown(&self, i: usize, l: &WeightLayer, mask: &[f32], scores: &[f64]) -> Vec<usize> {
        let best_first = |mut e: Vec<usize>| {
            e.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]).then(a.cmp(&b)));
            e
        };
        match self.pattern {
            Pattern::Unstructured => {
                let mut explored =
                    best_first((0..mask.len()).filter(|&p| mask[p] == 0.0).collect());
                explored.truncate(self.pruned[i].len());
                explored
            }
            Pattern::NM { n, m } => {
                let mut grown = vec![];
                l.for_each_group(m, |idx| {
                    let active = idx.iter().filter(|&&p| mask[p] != 0.0).count();
                    let e = best_first(idx.iter().copied().filter(|&p| mask[p] == 0.0).collect());
                    grown.extend(e.into_iter().take(n.saturating_sub(active)));
                });
                grown
            }
        }
    }

    /// Adds `|w · g|` of the set that trains this step to the Taylor sums.
    fn accumulate(&mut self, model: &Model, grads: &GradientsParams, explore: bool) -> Result<()> {
        let host = model.valid();
        for (i, l) in self.layers() {
            let id = Self::param(&l);
            let g = if l.shape.len() == 4 {
                grads.get::<4>(id).map(|g| g.into_data())
            } else {
                grads.get::<2>(id).map(|g| g.into_data())
            };
            let Some(g) = g else { continue };
            let g = values(g)?;
            let w = weight_values(&host, &l)?;
            let mask = self.masks.mask(i).unwrap_or_default();
            let acc = self.taylor[i].get_or_insert_with(|| vec![0.0; w.len()]);
            for p in 0..w.len() {
                if (mask[p] == 0.0) == explore {
                    acc[p] += (w[p] * g[p]).abs() as f64;
                }
            }
        }
        Ok(())
    }
}

/// Zeroes the gradient of every active weight (exploration trains E alone).
fn zero_active(masks: &WeightMasks, grads: GradientsParams) -> Result<GradientsParams> {
    let e_only: Vec<_> = masks
        .layers()
        .iter()
        .enumerate()
        .filter_map(|(i, l)| {
            let mask = masks.mask(i)?;
            let e = mask.iter().map(|m| 1.0 - m).collect();
            Some((param_id(&format!("{}.weight", l.name)), l.shape.clone(), e))
        })
        .collect();
    mask_gradients(grads, &e_only)
}

#[derive(Serialize, Deserialize)]
struct WeightState {
    masks: serde_json::Value,
    stored: Vec<Option<Vec<f32>>>,
    pruned: Vec<Vec<usize>>,
    frozen: Option<Frozen>,
}

impl Units for WeightUnits {
    fn node_hook(&self) -> Option<&dyn NodeHook> {
        // Exploring, every weight computes: A frozen, E with its values back.
        self.frozen
            .is_none()
            .then_some(&self.masks as &dyn NodeHook)
    }
    fn gradients(
        &mut self,
        stage: Stage,
        scoring: bool,
        model: &Model,
        grads: GradientsParams,
    ) -> Result<GradientsParams> {
        let explore = stage == Stage::Explore;
        if self.taylor_scores && scoring {
            self.accumulate(model, &grads, explore)?;
        }
        if explore {
            zero_active(&self.masks, grads)
        } else {
            Ok(grads)
        }
    }
    fn prune(&mut self, share: f64, model: Model, optim: &mut OptimizerState) -> Result<Model> {
        self.prune_weights(share, model, optim)
    }
    fn explore(&mut self, model: Model, optim: &mut OptimizerState) -> Result<Model> {
        self.explore_weights(model, optim)
    }
    fn grow(&mut self, model: Model, optim: &mut OptimizerState) -> Result<(Model, usize, usize)> {
        self.grow_weights(model, optim)
    }
    fn state(&self) -> Result<serde_json::Value> {
        serde_json::to_value(WeightState {
            masks: self.masks.state()?.unwrap_or_default(),
            stored: self.stored.clone(),
            pruned: self.pruned.clone(),
            frozen: self.frozen.as_ref().map(|f| Frozen {
                weights: f.weights.clone(),
                moments: f.moments.clone(),
            }),
        })
        .map_err(|e| LopperError::Config(e.to_string()))
    }
    fn restore(&mut self, state: serde_json::Value) -> Result<()> {
        let s: WeightState =
            serde_json::from_value(state).map_err(|e| LopperError::Config(e.to_string()))?;
        self.masks.restore(s.masks)?;
        (self.stored, self.pruned, self.frozen) = (s.stored, s.pruned, s.frozen);
        Ok(())
    }
}

pub struct Iee {
    pub plan: IeePlan,
}

impl IeePlan {
    /// The cycles of a phase of `total` steps.
    pub(crate) fn cycles(&self, total: usize) -> Cycles {
        Cycles {
            h: self.iee_h,
            j: self.iee_j,
            q: self.iee_q,
            end: (self.iee_end * total as f64).round() as usize,
            swap: self.iee_swap,
        }
    }

    /// The phase's opening line: its length, cycles and rate.
    pub(crate) fn describe(&self, what: &str, cycles: &Cycles, lr: f64, resuming: bool) -> String {
        format!(
            "IEE: {} epoch(s) at {what} ({} criterion), {} cycle(s) of H {} + J {} + Q {} steps swapping {} of the active units at first, weight lr {lr}{}",
            self.iee_epochs,
            self.criterion.unwrap_or(Criterion::L1).name(),
            cycles.count(),
            self.iee_h,
            self.iee_j,
            self.iee_q,
            self.iee_swap,
            if resuming {
                " (resuming from the last completed epoch)"
            } else {
                ""
            }
        )
    }

    /// Refuses a phase in which no cycle fits: it would train fixed masks and call that IEE.
    pub(crate) fn check_cycles(&self, cycles: &Cycles, total: usize) -> Result<()> {
        if cycles.count() == 0 {
            return Err(LopperError::Config(format!(
                "IEE: no cycle of {} steps (H {} + J {} + Q {}) fits in the first {} of the phase's {total} steps; use smaller --iee-h/--iee-j/--iee-q, more --iee-epochs or a later --iee-end",
                cycles.steps(),
                self.iee_h,
                self.iee_j,
                self.iee_q,
                cycles.end
            )));
        }
        Ok(())
    }
}

impl PruneMethod for Iee {
    fn prune(&mut self, cx: &mut MethodContext) -> Result<MethodOutcome> {
        if cx.channels.is_some() {
            return super::iee_channels::prune(&self.plan, cx);
        }
        let budget = cx.weight_budget()?;
        let p = &self.plan;
        let total = cx.data.train.num_batches() * p.iee_epochs;
        let cycles = p.cycles(total);
        p.check_cycles(&cycles, total)?;
        let density = p.allocation.unwrap_or(Density::Erk);
        let (masks, start) = sparse_start(cx, budget, density, 0x1EE)?;
        let criterion = p.criterion.unwrap_or(Criterion::L1);
        let units = WeightUnits::new(masks, budget.pattern(), criterion, cx.dense)?;
        let mut hook = IeeHook::new(units, cycles);
        let cfg = phase_config(cx, p.iee_epochs, p.iee_lr);
        let (_, resuming) = cx.phase_run();
        let what = match budget {
            WeightBudget::NM { .. } => budget.to_string(),
            WeightBudget::Sparsity(_) => format!("{budget}, {density}"),
        };
        cx.progress
            .message(&p.describe(&what, &cycles, cfg.lr, resuming));
        let data = cx.phase_data();
        let (outcome, collapse) =
            cx.train_phase_from(start, "IEE's phase", cfg, &data, &mut hook)?;
        crate::fsutil::write_jsonl(&cx.work_dir.join("iee_log.jsonl"), hook.log())?;
        let model = hook.units().masks.apply(outcome.model.valid(), None)?;
        Ok(MethodOutcome {
            model,
            measured_ms: None,
            allocation: match budget {
                WeightBudget::NM { .. } => format!("iee {}", budget.pattern()),
                WeightBudget::Sparsity(_) => format!("iee {density}"),
            },
            history: None,
            cost: None,
            collapse,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::{Cycles, IeePlan, Stage};

    #[test]
    fn a_phase_without_a_whole_cycle_is_refused() {
        // ResNet-20 on 10,000 images: 78 steps, the cycles end by step 59.
        let plan = IeePlan::default();
        let e = plan.check_cycles(&plan.cycles(78), 78).unwrap_err();
        assert!(e.to_string().contains("--iee-h"), "{e}");
        let short = IeePlan {
            iee_h: 6,
            iee_j: 6,
            iee_q: 6,
            ..IeePlan::default()
        };
        assert_eq!(short.cycles(78).count(), 3);
        assert!(short.check_cycles(&short.cycles(78), 78).is_ok());
    }

    #[test]
    fn cycles_run_exploit_then_explore_and_stop_in_time() {
        let c = Cycles {
            h: 2,
            j: 3,
            q: 4,
            end: 20,
            swap: 0.1,
        };
        assert_eq!(c.count(), 2);
        let stages: Vec<Stage> = (0..20).map(|s| c.stage(s).0).collect();
        use Stage::*;
        assert_eq!(
            stages,
            vec![
                Exploit, Exploit, Exploit, Exploit, Exploit, Explore, Explore, Explore, Explore,
                Exploit, Exploit, Exploit, Exploit, Exploit, Explore, Explore, Explore, Explore,
                Fixed, Fixed
            ]
        );
        assert!((c.share(0) - 0.1).abs() < 1e-12);
        assert!((c.share(9) - 0.05).abs() < 1e-12);
    }
}
