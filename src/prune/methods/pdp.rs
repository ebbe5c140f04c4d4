//! PDP as a method (unstructured and N:M; the channel mode is still to come): the model trains
//! under PDP's soft masks ([`crate::prune::pdp`]), recomputed from the weights at every step,
//! while each layer's target sparsity ramps up; then the masks are hardened at `m >= 0.5` with
//! the budget held exactly, and the session fine-tunes with them frozen.
//!
//! Schedule (ALGORITHMS.md "PDP"; the shares are design choices): from scratch a dense
//! warm-up (`pdp_start`, default 0.16 of the phase, the paper's 16 of 100 epochs), from a
//! trained run none; at the ramp's start the per-layer targets come from one global magnitude
//! ranking at the final sparsity; they rise linearly to `pdp_end` of the phase and stay.
//! For N:M every pruned layer's soft mask switches on at the ramp's start at its pattern.

use burn::module::Module;
use serde::{Deserialize, Serialize};

use super::{Flow, MethodContext, MethodOutcome, PruneMethod, phase_config, resolve_phase};
use crate::error::{LopperError, Result};
use crate::model::{Model, NodeHook};
use crate::prune::pdp::{PdpMask, Temperature};
use crate::prune::weights::{
    Density, SoftWeightMasks, WeightBudget, WeightLayer, WeightMasks, nm_mask, solve_masks, top_k,
    weight_layers, weight_values,
};
use crate::train::{OptimizerState, StepInfo, TrainData, TrainHook};

/// Settings of PDP.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PdpPlan {
    /// Epochs of training under the soft masks (before the session's fine-tuning).
    #[serde(default = "pdp_epochs")]
    pub pdp_epochs: usize,
    /// Where in the phase (share of its steps) the targets start to rise [default: 0 from a
    /// trained run, 0.16 from scratch].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pdp_start: Option<f64>,
    /// Where the targets reach the final sparsity.
    #[serde(default = "pdp_end")]
    pub pdp_end: f64,
    /// The temperature: `τ = pdp_tau · t²` per threshold, or `τ = pdp_tau` with
    /// `pdp_tau_absolute`.
    #[serde(default = "pdp_tau")]
    pub pdp_tau: f64,
    #[serde(default)]
    pub pdp_tau_absolute: bool,
    /// Weight learning rate in the phase [default: the fine-tuning rate, constant, from a
    /// trained run; the model's recipe rate with a warm-up and a cosine from scratch].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pdp_lr: Option<f64>,
}

fn pdp_epochs() -> usize {
    1
}
fn pdp_end() -> f64 {
    0.75
}
/// `τ = 0.1 t²`: a weight at 1.1 t has m = 0.89, at 1.5 t m = 1.0 to four digits.
fn pdp_tau() -> f64 {
    0.1
}

impl Default for PdpPlan {
    fn default() -> Self {
        PdpPlan {
            pdp_epochs: pdp_epochs(),
            pdp_start: None,
            pdp_end: pdp_end(),
            pdp_tau: pdp_tau(),
            pdp_tau_absolute: false,
            pdp_lr: None,
        }
    }
}

impl PdpPlan {
    pub(crate) fn resolve(&mut self, flow: &Flow) -> Result<()> {
        resolve_phase(
            "PDP",
            "pdp",
            flow,
            0.16,
            self.pdp_epochs,
            (&mut self.pdp_start, self.pdp_end),
            &mut self.pdp_lr,
        )?;
        if !(self.pdp_tau > 0.0 && self.pdp_tau.is_finite()) {
            return Err(LopperError::Config(
                "pdp_tau (--pdp-tau), the temperature, must be positive".into(),
            ));
        }
        Ok(())
    }

    fn temperature(&self) -> Temperature {
        if self.pdp_tau_absolute {
            Temperature::Absolute(self.pdp_tau)
        } else {
            Temperature::Relative(self.pdp_tau)
        }
    }
}

/// Per masked layer (by graph node): the weights it keeps at the end, from one global
/// magnitude ranking at the final sparsity (N:M: its pattern).
fn final_kept(model: &Model, layers: &[WeightLayer], budget: WeightBudget) -> Result<Vec<usize>> {
    let masked: Vec<&WeightLayer> = layers.iter().filter(|l| l.is_masked()).collect();
    let scores = masked
        .iter()
        .map(|l| weight_values(model, l).map(|v| v.iter().map(|x| x.abs() as f64).collect()))
        .collect::<Result<Vec<Vec<f64>>>>()?;
    let masks = solve_masks(&masked, &scores, budget, Density::Global);
    let mut kept = vec![0; model.graph.nodes.len()];
    for (l, m) in masked.iter().zip(&masks) {
        kept[l.node] = m.iter().filter(|&&v| v != 0.0).count();
    }
    Ok(kept)
}

/// The training hook: the soft masks, their targets along the ramp.
struct PdpHook {
    soft: SoftWeightMasks<PdpMask>,
    budget: WeightBudget,
    /// Ramp from step `start` to `end`.
    start: usize,
    end: usize,
    /// The final kept count per graph node, once derived (at the ramp's start).
    kept: Option<Vec<usize>>,
}

impl PdpHook {
    /// The targets at `step`: each masked layer's final sparsity times the ramp.
    fn set_targets(&mut self, step: usize) {
        let ramp = if step < self.start {
            0.0
        } else {
            ((step - self.start + 1) as f64 / (self.end - self.start).max(1) as f64).min(1.0)
        };
        let mut targets = vec![0.0; self.soft.mask.targets.len()];
        if let Some(kept) = &self.kept {
            for l in self.soft.layers().iter().filter(|l| l.is_masked()) {
                let r = match self.budget {
                    WeightBudget::NM { .. } => 1.0,
                    WeightBudget::Sparsity(_) => 1.0 - kept[l.node] as f64 / l.numel() as f64,
                };
                targets[l.node] = ramp * r;
            }
        }
        self.soft.mask.targets = targets;
    }

    /// Hardened masks: `m >= 0.5` at the final targets, i.e. the `kept` largest |w| of each
    /// layer (N:M: the N largest of each group), so the budget holds exactly.
    fn harden(&self, model: &Model, device: &burn::tensor::Device) -> Result<WeightMasks> {
        let kept = self.kept.as_ref().ok_or_else(|| {
            LopperError::Config("PDP's phase ended before its ramp started".into())
        })?;
        let layers = self.soft.layers().to_vec();
        let mut masks = vec![];
        for l in layers.iter().filter(|l| l.is_masked()) {
            let scores: Vec<f64> = weight_values(model, l)?
                .iter()
                .map(|x| x.abs() as f64)
                .collect();
            masks.push(match self.budget {
                WeightBudget::NM { n, m } => nm_mask(l, &scores, n, m),
                WeightBudget::Sparsity(_) => top_k(&scores, kept[l.node]),
            });
        }
        let mut hard = WeightMasks::new(&model.graph, layers, device);
        hard.set(masks)?;
        Ok(hard)
    }
}

#[derive(Serialize, Deserialize)]
struct PdpState {
    kept: Option<Vec<usize>>,
}

impl TrainHook for PdpHook {
    fn node_hook(&self) -> Option<&dyn NodeHook> {
        Some(&self.soft)
    }
    fn before_step(&mut self, info: &StepInfo) {
        self.set_targets(info.global_step);
    }
    fn after_step(
        &mut self,
        info: &StepInfo,
        model: Model,
        _optim: &mut OptimizerState,
    ) -> Result<Model> {
        // From scratch the targets come from the weights the warm-up trained.
        if self.kept.is_none() && info.global_step + 1 >= self.start {
            self.kept = Some(final_kept(&model.valid(), self.soft.layers(), self.budget)?);
        }
        Ok(model)
    }
    fn state(&self) -> Result<Option<serde_json::Value>> {
        serde_json::to_value(PdpState {
            kept: self.kept.clone(),
        })
        .map(Some)
        .map_err(|e| LopperError::Config(e.to_string()))
    }
    fn restore(&mut self, state: serde_json::Value) -> Result<()> {
        let s: PdpState =
            serde_json::from_value(state).map_err(|e| LopperError::Config(e.to_string()))?;
        self.kept = s.kept;
        Ok(())
    }
}

pub struct Pdp {
    pub plan: PdpPlan,
}

impl PruneMethod for Pdp {
    fn prune(&mut self, cx: &mut MethodContext) -> Result<MethodOutcome> {
        let budget = cx.weight_budget()?;
        let p = &self.plan;
        let graph = &cx.dense.graph;
        let layers = weight_layers(graph, cx.protect, budget.pattern())?;
        let total = cx.data.train.num_batches() * p.pdp_epochs;
        let start = (p.pdp_start.unwrap_or_default() * total as f64).round() as usize;
        let end = ((p.pdp_end * total as f64).round() as usize).clamp(start + 1, total.max(1));
        let kept = if start == 0 {
            Some(final_kept(cx.dense, &layers, budget)?)
        } else {
            None
        };
        let mut hook = PdpHook {
            soft: SoftWeightMasks::new(
                graph,
                layers,
                PdpMask {
                    pattern: budget.pattern(),
                    temperature: p.temperature(),
                    targets: vec![0.0; graph.nodes.len()],
                },
            ),
            budget,
            start,
            end,
            kept,
        };
        let cfg = phase_config(cx, p.pdp_epochs, p.pdp_lr);
        let (_, resuming) = cx.phase_run();
        cx.progress.message(&format!(
            "PDP: {} epoch(s) under soft masks ({}, τ {}{}), targets rising from step {start} to {end} of {total}, weight lr {}{}",
            p.pdp_epochs,
            budget,
            p.pdp_tau,
            if p.pdp_tau_absolute { "" } else { " t²" },
            cfg.lr,
            if resuming { " (resuming from the last completed epoch)" } else { "" }
        ));
        let data = TrainData {
            train: cx.data.train.clone(),
            val: None,
            test: None,
        };
        let (outcome, collapse) = cx.train_phase("PDP's soft-mask phase", cfg, &data, &mut hook)?;
        let trained = outcome.model.valid();
        let model = hook.harden(&trained, cx.device)?.apply(trained, None)?;
        Ok(MethodOutcome {
            model,
            measured_ms: None,
            allocation: match budget {
                WeightBudget::NM { .. } => format!("pdp {}", budget.pattern()),
                WeightBudget::Sparsity(_) => "pdp global".into(),
            },
            ratio_history: vec![],
            cost: None,
            collapse,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::PdpHook;
    use crate::prune::pdp::{PdpMask, Temperature};
    use crate::prune::weights::{Pattern, SoftWeightMasks, WeightBudget, weight_layers};

    /// Before the ramp nothing is masked; the targets rise linearly to each layer's final
    /// sparsity by the ramp's end and stay.
    #[test]
    fn targets_ramp_to_each_layers_final_sparsity() {
        let g = crate::zoo::build("lenet5", &[1, 28, 28], 10).unwrap();
        let layers = weight_layers(&g, &[], Pattern::Unstructured).unwrap();
        let mut kept = vec![0; g.nodes.len()];
        for l in layers.iter().filter(|l| l.is_masked()) {
            kept[l.node] = l.numel() / 4;
        }
        let mask = PdpMask {
            pattern: Pattern::Unstructured,
            temperature: Temperature::Relative(0.1),
            targets: vec![0.0; g.nodes.len()],
        };
        let mut hook = PdpHook {
            soft: SoftWeightMasks::new(&g, layers.clone(), mask),
            budget: WeightBudget::Sparsity(0.75),
            start: 10,
            end: 20,
            kept: Some(kept),
        };
        let fc1 = layers.iter().find(|l| l.name == "fc1").unwrap().node;
        let conv1 = layers.iter().find(|l| l.name == "conv1").unwrap().node;
        let at = |hook: &mut PdpHook, step| {
            hook.set_targets(step);
            (hook.soft.mask.targets[fc1], hook.soft.mask.targets[conv1])
        };
        assert_eq!(at(&mut hook, 9), (0.0, 0.0));
        let (mid, first) = at(&mut hook, 14);
        assert!((mid - 0.75 * 0.5).abs() < 1e-12 && first == 0.0, "{mid}");
        assert!((at(&mut hook, 19).0 - 0.75).abs() < 1e-12);
        assert!((at(&mut hook, 500).0 - 0.75).abs() < 1e-12);
    }
}
