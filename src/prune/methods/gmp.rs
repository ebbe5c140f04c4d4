//! Gradual magnitude pruning (Zhu & Gupta 2017): while the model trains, every `gmp_every`
//! steps the smallest-magnitude weights are masked, the sparsity rising along a cubic from 0
//! to the budget between two points of the phase. From a trained run or from scratch; the
//! session then fine-tunes with the masks frozen.
//!
//! For an N:M budget the cubic raises the share pruned in every group of M: the groups keep
//! M, then fewer, down to N non-zeros (`ceil(M (1 - s_t))`, never below N).

use burn::module::Module;
use serde::{Deserialize, Serialize};

use super::{Flow, MethodContext, MethodOutcome, PruneMethod, phase_config, resolve_phase};
use crate::error::{LopperError, Result};
use crate::model::Model;
use crate::prune::weights::{Density, WeightBudget, WeightMasks, weight_layers};
use crate::train::{OptimizerState, StepInfo, TrainHook};

use super::magnitude::magnitude_masks;

/// Settings of gradual magnitude pruning.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GmpPlan {
    /// How an unstructured sparsity is spread over the layers at each step [default:
    /// uniform]; none for an N:M budget.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allocation: Option<Density>,
    /// Epochs of the pruning phase (before the session's fine-tuning).
    #[serde(default = "gmp_epochs")]
    pub gmp_epochs: usize,
    /// Where in the phase (a share of its steps) the sparsity starts to rise [default: 0 from
    /// a trained run, 0.2 from scratch: a dense warm-up first].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gmp_start: Option<f64>,
    /// Where in the phase the sparsity reaches the budget; the rest trains at it.
    #[serde(default = "gmp_end")]
    pub gmp_end: f64,
    /// Steps between mask updates.
    #[serde(default = "gmp_every")]
    pub gmp_every: usize,
    /// Weight learning rate during the phase [default: the fine-tuning rate, constant, from a
    /// trained run; the model's recipe rate with a warm-up and a cosine from scratch].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gmp_lr: Option<f64>,
}

fn gmp_epochs() -> usize {
    1
}
fn gmp_end() -> f64 {
    0.75
}
fn gmp_every() -> usize {
    50
}

impl Default for GmpPlan {
    fn default() -> Self {
        GmpPlan {
            allocation: None,
            gmp_epochs: gmp_epochs(),
            gmp_start: None,
            gmp_end: gmp_end(),
            gmp_every: gmp_every(),
            gmp_lr: None,
        }
    }
}

impl GmpPlan {
    pub(crate) fn resolve(&mut self, flow: &Flow) -> Result<()> {
        resolve_phase(
            "GMP",
            "gmp",
            flow,
            0.2,
            self.gmp_epochs,
            (&mut self.gmp_start, self.gmp_end),
            &mut self.gmp_lr,
        )?;
        if self.gmp_every == 0 {
            return Err(LopperError::Config(
                "gmp_every (--gmp-every) must be at least 1".into(),
            ));
        }
        Ok(())
    }
}

/// Zhu & Gupta's cubic: the sparsity `s_t = S (1 - (1 - (t - t0) / (t1 - t0))^3)` from step
/// `t0` to `t1`, 0 before, `S` after; masks change every `every` steps and at `t1`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Cubic {
    pub start: usize,
    pub end: usize,
    pub every: usize,
    pub sparsity: f64,
}

impl Cubic {
    pub fn at(&self, step: usize) -> f64 {
        if step < self.start {
            return 0.0;
        }
        if step >= self.end {
            return self.sparsity;
        }
        let x = (step - self.start) as f64 / (self.end - self.start) as f64;
        self.sparsity * (1.0 - (1.0 - x).powi(3))
    }

    /// Whether the masks are updated after step `step` (counted from 0).
    pub fn updates_at(&self, step: usize) -> bool {
        step == self.end
            || (step >= self.start
                && step < self.end
                && (step - self.start).is_multiple_of(self.every))
    }
}

/// The budget on the way to `final_budget` at sparsity `s`.
fn budget_at(final_budget: WeightBudget, s: f64) -> WeightBudget {
    match final_budget {
        WeightBudget::Sparsity(_) => WeightBudget::Sparsity(s),
        WeightBudget::NM { n, m } => {
            let keep = ((m as f64) * (1.0 - s) - 1e-9).ceil().max(n as f64) as usize;
            WeightBudget::NM { n: keep.min(m), m }
        }
    }
}

/// The training hook: the masks, and their updates along the cubic.
struct GmpHook {
    masks: WeightMasks,
    schedule: Cubic,
    budget: WeightBudget,
    density: Density,
}

impl TrainHook for GmpHook {
    fn node_hook(&self) -> Option<&dyn crate::model::NodeHook> {
        Some(&self.masks)
    }
    fn after_step(
        &mut self,
        info: &StepInfo,
        model: Model,
        optim: &mut OptimizerState,
    ) -> Result<Model> {
        if !self.schedule.updates_at(info.global_step) {
            return Ok(model);
        }
        let s = self.schedule.at(info.global_step);
        let at = budget_at(self.budget, s);
        if matches!(at, WeightBudget::NM { n, m } if n == m) || s <= 0.0 {
            return Ok(model);
        }
        // Masked weights are zero, so they rank last: masks only grow, as in the paper.
        let host = model.valid();
        magnitude_masks(&host, &mut self.masks, at, self.density)?;
        self.masks.apply(model, Some(optim))
    }
    fn state(&self) -> Result<Option<serde_json::Value>> {
        self.masks.state()
    }
    fn restore(&mut self, state: serde_json::Value) -> Result<()> {
        self.masks.restore(state)
    }
}

pub struct Gmp {
    pub plan: GmpPlan,
}

impl PruneMethod for Gmp {
    fn prune(&mut self, cx: &mut MethodContext) -> Result<MethodOutcome> {
        let budget = cx.weight_budget()?;
        let p = &self.plan;
        let layers = weight_layers(&cx.dense.graph, cx.protect, budget.pattern())?;
        let steps_per_epoch = cx.data.train.num_batches();
        let total = steps_per_epoch * p.gmp_epochs;
        // A start that rounds to the phase's end still updates once, at the last step.
        let start = ((p.gmp_start.unwrap_or_default() * total as f64).round() as usize)
            .min(total.saturating_sub(1));
        let end = ((p.gmp_end * total as f64).round() as usize)
            .clamp(start + 1, total.max(start + 1))
            - 1;
        let schedule = Cubic {
            start,
            end: end.max(start),
            every: p.gmp_every,
            sparsity: budget.sparsity(),
        };
        let mut hook = GmpHook {
            masks: WeightMasks::new(&cx.dense.graph, layers, cx.device),
            schedule,
            budget,
            density: p.allocation.unwrap_or_default(),
        };
        let cfg = phase_config(cx, p.gmp_epochs, p.gmp_lr);
        let (_, resuming) = cx.phase_run();
        cx.progress.message(&format!(
            "GMP: {} epoch(s), sparsity 0 → {:.3} ({}) from step {start} to {} of {total}, masks updated every {} steps, weight lr {}{}",
            p.gmp_epochs,
            budget.sparsity(),
            budget.pattern(),
            schedule.end,
            p.gmp_every,
            cfg.lr,
            if resuming { " (resuming from the last completed epoch)" } else { "" }
        ));
        let data = cx.phase_data();
        let (outcome, collapse) = cx.train_phase("GMP's pruning phase", cfg, &data, &mut hook)?;
        let model = hook.masks.apply(outcome.model.valid(), None)?;
        Ok(MethodOutcome {
            model,
            measured_ms: None,
            allocation: match budget {
                WeightBudget::NM { .. } => format!("gmp {}", budget.pattern()),
                WeightBudget::Sparsity(_) => format!("gmp {}", p.allocation.unwrap_or_default()),
            },
            history: None,
            cost: None,
            collapse,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::{Cubic, budget_at};
    use crate::prune::weights::WeightBudget;

    #[test]
    fn the_cubic_rises_from_zero_to_the_budget() {
        let c = Cubic {
            start: 10,
            end: 110,
            every: 25,
            sparsity: 0.9,
        };
        assert_eq!(c.at(0), 0.0);
        assert_eq!(c.at(10), 0.0);
        assert!((c.at(60) - 0.9 * (1.0 - 0.5f64.powi(3))).abs() < 1e-12);
        assert_eq!(c.at(110), 0.9);
        assert_eq!(c.at(500), 0.9);
        let s: Vec<f64> = (0..120).map(|t| c.at(t)).collect();
        assert!(s.windows(2).all(|w| w[0] <= w[1]));
        let updates: Vec<usize> = (0..200).filter(|&t| c.updates_at(t)).collect();
        assert_eq!(updates, vec![10, 35, 60, 85, 110]);
    }

    #[test]
    fn an_nm_ramp_keeps_fewer_per_group_down_to_n() {
        let nm = WeightBudget::NM { n: 2, m: 4 };
        assert_eq!(budget_at(nm, 0.0), WeightBudget::NM { n: 4, m: 4 });
        assert_eq!(budget_at(nm, 0.2), WeightBudget::NM { n: 4, m: 4 });
        assert_eq!(budget_at(nm, 0.3), WeightBudget::NM { n: 3, m: 4 });
        assert_eq!(budget_at(nm, 0.5), WeightBudget::NM { n: 2, m: 4 });
        assert_eq!(
            budget_at(WeightBudget::Sparsity(0.9), 0.4),
            WeightBudget::Sparsity(0.4)
        );
    }
}
