//! RigL (Evci et al., ICML 2020; ALGORITHMS.md "Baselines"): sparse training with a fixed
//! number of weights per layer whose positions move. Every `rigl_every` steps each masked
//! layer drops its `k` smallest-magnitude active weights and grows the `k` inactive ones with
//! the largest dense gradient `|dL/dw|` of that step's batch; `k` is a fraction of the
//! layer's active weights that starts at `rigl_fraction` and decays along a cosine to 0 at
//! `rigl_end` of the phase. Densities are ERK by default. Grown weights start at zero with
//! their optimiser moments reset. Then the session fine-tunes with the masks frozen.
//!
//! The dense gradient: pruned weights are exactly zero in storage, so on an update step the
//! forward pass runs without the mask (computing the same function) and the backward pass
//! gives the gradient at every position. The optimiser's step then also moves pruned
//! weights; the update first re-applies the old masks (zeroing those weights and their
//! moments), so grown weights start from zero with fresh moments, then applies the new ones.
//!
//! From a trained run the masks start as one-shot magnitude masks at the densities; from
//! scratch as random masks at them (the paper's sparse initialisation).

use burn::module::Module;
use burn::optim::GradientsParams;
use serde::{Deserialize, Serialize};

use super::{Flow, MethodContext, MethodOutcome, PruneMethod, phase_config, resolve_phase};
use crate::error::{LopperError, Result};
use crate::model::{Model, NodeHook, param_id};
use crate::prune::allocation::Target;
use crate::prune::weights::{Density, WeightBudget, WeightLayer, WeightMasks, weight_values};
use crate::train::{OptimizerState, StepInfo, TrainHook};

use super::magnitude::sparse_start;

/// Settings of RigL.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RiglPlan {
    /// How the sparsity is spread over the layers [default: erk, as in the paper].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allocation: Option<Density>,
    /// Epochs of sparse training with mask updates (before the session's fine-tuning).
    #[serde(default = "rigl_epochs")]
    pub rigl_epochs: usize,
    /// Steps between mask updates (ΔT; the paper's 100).
    #[serde(default = "rigl_every")]
    pub rigl_every: usize,
    /// The share of each layer's active weights swapped at the first update (the paper's 0.3).
    #[serde(default = "rigl_fraction")]
    pub rigl_fraction: f64,
    /// Where in the phase (share of its steps) the swapped share reaches 0 (the paper's 0.75).
    #[serde(default = "rigl_end")]
    pub rigl_end: f64,
    /// Weight learning rate in the phase [default: the fine-tuning rate, constant, from a
    /// trained run; the model's recipe rate with a warm-up and a cosine from scratch].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rigl_lr: Option<f64>,
}

fn rigl_epochs() -> usize {
    1
}
fn rigl_every() -> usize {
    100
}
fn rigl_fraction() -> f64 {
    0.3
}
fn rigl_end() -> f64 {
    0.75
}

impl Default for RiglPlan {
    fn default() -> Self {
        RiglPlan {
            allocation: None,
            rigl_epochs: rigl_epochs(),
            rigl_every: rigl_every(),
            rigl_fraction: rigl_fraction(),
            rigl_end: rigl_end(),
            rigl_lr: None,
        }
    }
}

impl RiglPlan {
    pub(crate) fn resolve(&mut self, flow: &Flow, target: &Target) -> Result<()> {
        if !matches!(target, Target::Weights(WeightBudget::Sparsity(_))) {
            return Err(LopperError::Config(format!(
                "RigL moves single weights to an unstructured sparsity (sparsity=0.9), not {target}"
            )));
        }
        if !(self.rigl_end > 0.0 && self.rigl_end <= 1.0) {
            return Err(LopperError::Config(
                "rigl_end (--rigl-end) is a share of the phase, in (0, 1]".into(),
            ));
        }
        if !(self.rigl_fraction > 0.0 && self.rigl_fraction <= 1.0) {
            return Err(LopperError::Config(
                "rigl_fraction (--rigl-fraction) is a share of each layer's weights, in (0, 1]"
                    .into(),
            ));
        }
        if self.rigl_every == 0 {
            return Err(LopperError::Config(
                "rigl_every (--rigl-every) must be at least 1".into(),
            ));
        }
        self.allocation.get_or_insert(Density::Erk);
        // The updates run from the first step; the shared checks see a ramp from 0.
        resolve_phase(
            "RigL",
            "rigl",
            flow,
            0.0,
            self.rigl_epochs,
            (&mut Some(0.0), self.rigl_end),
            &mut self.rigl_lr,
        )
    }
}

/// The share of each layer's active weights swapped after step `step` (counted from 0):
/// `α/2 (1 + cos(π t / T))` at the update steps `t` (every `every`) before `end`, else 0.
pub fn swap_fraction(alpha: f64, every: usize, end: usize, step: usize) -> f64 {
    let t = step + 1;
    if every == 0 || !t.is_multiple_of(every) || t >= end {
        return 0.0;
    }
    0.5 * alpha * (1.0 + (std::f64::consts::PI * t as f64 / end as f64).cos())
}

/// One layer's update: drops the `k` active weights (mask 1) of smallest `|w|` and grows the
/// `k` others with the largest `|g|`, ties to the lower index. Returns the new mask, how
/// many grown weights were among those just dropped, and the sum of the grown ones' `|g|`.
pub fn drop_and_grow(mask: &[f32], w: &[f32], g: &[f32], k: usize) -> (Vec<f32>, usize, f64) {
    let active: Vec<usize> = (0..mask.len()).filter(|&i| mask[i] != 0.0).collect();
    let k = k.min(active.len()).min(mask.len() - active.len());
    let mut out = mask.to_vec();
    if k == 0 {
        return (out, 0, 0.0);
    }
    let mut by_magnitude = active;
    by_magnitude.sort_by(|&a, &b| w[a].abs().total_cmp(&w[b].abs()).then(a.cmp(&b)));
    let dropped = &by_magnitude[..k];
    for &i in dropped {
        out[i] = 0.0;
    }
    // Candidates: every weight inactive after the drop (the just-dropped included, as in
    // the paper's code); the k largest |g|.
    let mut candidates: Vec<usize> = (0..out.len()).filter(|&i| out[i] == 0.0).collect();
    candidates.sort_by(|&a, &b| g[b].abs().total_cmp(&g[a].abs()).then(a.cmp(&b)));
    let (mut regrown, mut signal) = (0, 0.0);
    for &i in &candidates[..k] {
        out[i] = 1.0;
        regrown += usize::from(mask[i] != 0.0);
        signal += g[i].abs() as f64;
    }
    (out, regrown, signal)
}

/// One mask update, as the log records it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RiglUpdate {
    /// Steps done at the update.
    pub step: usize,
    /// Weights dropped (and as many grown) over all layers.
    pub swapped: usize,
    /// Grown weights that were among those just dropped.
    pub regrown_just_dropped: usize,
    /// The mean |dL/dw| of the grown weights: the growth signal.
    pub grown_gradient: f64,
}

/// The training hook: the masks, their updates, the dense gradient on update steps.
pub struct RiglHook {
    masks: WeightMasks,
    alpha: f64,
    every: usize,
    end: usize,
    /// Whether this step is an update step (its forward pass runs without the masks).
    dense: bool,
    /// The dense gradient of each layer (in the masks' layer order) on an update step.
    grads: Vec<Option<Vec<f32>>>,
    log: Vec<RiglUpdate>,
}

impl RiglHook {
    /// RigL on `masks` (the starting masks, whose zeros the model to train already has):
    /// swapping a share `alpha` decaying to 0 at step `end`, every `every` steps.
    pub fn new(masks: WeightMasks, alpha: f64, every: usize, end: usize) -> RiglHook {
        let n = masks.layers().len();
        RiglHook {
            masks,
            alpha,
            every,
            end,
            dense: false,
            grads: vec![None; n],
            log: vec![],
        }
    }

    pub fn masks(&self) -> &WeightMasks {
        &self.masks
    }

    /// The mask updates so far.
    pub fn log(&self) -> &[RiglUpdate] {
        &self.log
    }

    fn update(&mut self, step: usize, model: Model, optim: &mut OptimizerState) -> Result<Model> {
        // The step moved the pruned weights and their moments: zero them again, so that grown
        // weights start at zero with fresh moments.
        let model = self.masks.apply(model, Some(optim))?;
        let f = swap_fraction(self.alpha, self.every, self.end, step);
        let host = model.valid();
        let layers: Vec<WeightLayer> = self.masks.layers().to_vec();
        let mut next = vec![];
        let (mut swapped, mut regrown, mut signal) = (0, 0, 0.0);
        for (i, l) in layers.iter().enumerate() {
            let Some(mask) = self.masks.mask(i) else {
                continue;
            };
            let grad = self.grads[i].take().ok_or_else(|| {
                LopperError::Graph(format!("no gradient for '{}' on a RigL update", l.name))
            })?;
            let active = mask.iter().filter(|&&m| m != 0.0).count();
            let k = (f * active as f64).round() as usize;
            let (m, r, g) = drop_and_grow(mask, &weight_values(&host, l)?, &grad, k);
            swapped += k.min(active).min(l.numel() - active);
            regrown += r;
            signal += g;
            next.push(m);
        }
        self.masks.set(next)?;
        self.log.push(RiglUpdate {
            step: step + 1,
            swapped,
            regrown_just_dropped: regrown,
            grown_gradient: signal / swapped.max(1) as f64,
        });
        self.masks.apply(model, Some(optim))
    }
}

#[derive(Serialize, Deserialize)]
struct RiglState {
    masks: serde_json::Value,
    log: Vec<RiglUpdate>,
}

impl TrainHook for RiglHook {
    fn node_hook(&self) -> Option<&dyn NodeHook> {
        // On an update step the forward pass computes the same function unmasked (pruned
        // weights are zero in storage) and the backward pass reaches every weight.
        (!self.dense).then_some(&self.masks as &dyn NodeHook)
    }
    fn before_step(&mut self, info: &StepInfo, _model: &Model) -> Result<()> {
        self.dense = swap_fraction(self.alpha, self.every, self.end, info.global_step) > 0.0;
        Ok(())
    }
    fn after_backward(
        &mut self,
        _info: &StepInfo,
        _model: &Model,
        grads: GradientsParams,
    ) -> Result<GradientsParams> {
        if !self.dense {
            return Ok(grads);
        }
        let host = |d: burn::tensor::TensorData| {
            d.convert::<f32>()
                .try_into_vec::<f32>()
                .map_err(|e| LopperError::Graph(format!("{e:?}")))
        };
        for (i, l) in self.masks.layers().iter().enumerate() {
            if !l.is_masked() {
                continue;
            }
            let id = param_id(&format!("{}.weight", l.name));
            let g = if l.shape.len() == 4 {
                grads.get::<4>(id).map(|g| g.into_data())
            } else {
                grads.get::<2>(id).map(|g| g.into_data())
            };
            self.grads[i] = g.map(host).transpose()?;
        }
        Ok(grads)
    }
    fn after_step(
        &mut self,
        info: &StepInfo,
        model: Model,
        optim: &mut OptimizerState,
    ) -> Result<Model> {
        if !std::mem::take(&mut self.dense) {
            return Ok(model);
        }
        self.update(info.global_step, model, optim)
    }
    fn state(&self) -> Result<Option<serde_json::Value>> {
        let masks = self.masks.state()?.unwrap_or_default();
        serde_json::to_value(RiglState {
            masks,
            log: self.log.clone(),
        })
        .map(Some)
        .map_err(|e| LopperError::Config(e.to_string()))
    }
    fn restore(&mut self, state: serde_json::Value) -> Result<()> {
        let s: RiglState =
            serde_json::from_value(state).map_err(|e| LopperError::Config(e.to_string()))?;
        self.log = s.log;
        self.masks.restore(s.masks)
    }
}

pub struct Rigl {
    pub plan: RiglPlan,
}

impl PruneMethod for Rigl {
    fn prune(&mut self, cx: &mut MethodContext) -> Result<MethodOutcome> {
        let budget = cx.weight_budget()?;
        let p = &self.plan;
        let total = cx.data.train.num_batches() * p.rigl_epochs;
        let end = (p.rigl_end * total as f64).round() as usize;
        if p.rigl_every >= end {
            // No update would run: that is sparse training at fixed masks, not RigL.
            return Err(LopperError::Config(format!(
                "RigL: no mask update fits: the first is due at step {} and updates stop at step {end} of the phase's {total}; use a smaller --rigl-every, more --rigl-epochs or a later --rigl-end",
                p.rigl_every
            )));
        }
        let density = p.allocation.unwrap_or(Density::Erk);
        let (masks, start) = sparse_start(cx, budget, density, 0x816)?;
        let mut hook = RiglHook::new(masks, p.rigl_fraction, p.rigl_every, end);
        let cfg = phase_config(cx, p.rigl_epochs, p.rigl_lr);
        let (_, resuming) = cx.phase_run();
        cx.progress.message(&format!(
            "RigL: {} epoch(s) at {budget} ({density}), every {} steps drop and grow a share falling from {} to 0 at step {end} of {total}, weight lr {}{}",
            p.rigl_epochs,
            p.rigl_every,
            p.rigl_fraction,
            cfg.lr,
            if resuming { " (resuming from the last completed epoch)" } else { "" }
        ));
        let data = cx.phase_data();
        let (outcome, collapse) =
            cx.train_phase_from(start, "RigL's sparse-training phase", cfg, &data, &mut hook)?;
        let log = cx.work_dir.join("rigl_log.jsonl");
        crate::fsutil::write_jsonl(&log, hook.log())?;
        let model = hook.masks.apply(outcome.model.valid(), None)?;
        Ok(MethodOutcome {
            model,
            measured_ms: None,
            allocation: format!("rigl {density}"),
            history: None,
            cost: None,
            collapse,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::{drop_and_grow, swap_fraction};

    #[test]
    fn the_swapped_share_decays_along_a_cosine_to_the_end() {
        // Updates after steps 99, 199, ... (t = 100, 200, ...) until t = 750.
        assert_eq!(swap_fraction(0.3, 100, 750, 0), 0.0);
        assert_eq!(swap_fraction(0.3, 100, 750, 98), 0.0);
        let first = swap_fraction(0.3, 100, 750, 99);
        let want = 0.15 * (1.0 + (std::f64::consts::PI * 100.0 / 750.0).cos());
        assert!((first - want).abs() < 1e-12);
        let shares: Vec<f64> = (1..=7)
            .map(|u| swap_fraction(0.3, 100, 750, 100 * u - 1))
            .collect();
        assert!(shares.windows(2).all(|w| w[0] > w[1]), "{shares:?}");
        assert_eq!(swap_fraction(0.3, 100, 750, 799), 0.0);
    }

    #[test]
    fn drop_the_smallest_active_grow_the_largest_gradients() {
        let mask = [1.0, 1.0, 1.0, 0.0, 0.0, 0.0];
        let w = [0.5, -0.1, 0.3, 0.0, 0.0, 0.0];
        let g = [0.0, 0.0, 0.0, 0.2, -0.9, 0.1];
        let (m, regrown, signal) = drop_and_grow(&mask, &w, &g, 1);
        assert_eq!(m, vec![1.0, 0.0, 1.0, 0.0, 1.0, 0.0]);
        assert_eq!(regrown, 0);
        assert!((signal - 0.9).abs() < 1e-6);
        // The active count never changes; a just-dropped weight may come back.
        let g = [0.0, 5.0, 0.0, 0.2, 0.0, 0.1];
        let (m, regrown, _) = drop_and_grow(&mask, &w, &g, 2);
        assert_eq!(m.iter().sum::<f32>(), 3.0);
        assert_eq!(m, vec![1.0, 1.0, 0.0, 1.0, 0.0, 0.0]);
        assert_eq!(regrown, 1);
        assert_eq!(drop_and_grow(&mask, &w, &g, 0).0, mask.to_vec());
    }
}
