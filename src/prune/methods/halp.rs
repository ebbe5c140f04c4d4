//! HALP, hardware-aware latency pruning (Shen et al., NeurIPS 2022; ALGORITHMS.md "HALP
//! knapsack"): while the network trains, every few steps channels are chosen by an exact
//! knapsack that keeps the most importance under a cost target falling geometrically from
//! dense to the budget; then the channels are removed physically and the network fine-tuned.
//!
//! - Importance: first-order Taylor on the BatchNorms (`|γ ∂L/∂γ + β ∂L/∂β|`, summed over a
//!   group), averaged over the steps since the last pruning step ([`Taylor`]).
//! - Each group's channels, ranked, form blocks of `halp_block`; a group keeps a prefix of its
//!   blocks. A prefix costs what the budget's cost model says of that width with the other
//!   groups at their current widths (for a latency budget, `lopper profile`'s table: the
//!   latency of the group's layers at their current input width), relative to its narrowest.
//! - [`prefix_knapsack`] picks every group's prefix by dynamic programming; the widths are
//!   then repaired to the target exactly (the costs are linearised at the current widths) by
//!   the same step that hardens DSA's ratios ([`harden`]).
//! - Targets: `L_t = exp(a log L_budget + (1 − a) log L_dense)`, `a = t / T`, at `halp_steps`
//!   steps spread over the first `halp_end` of the phase; the chosen channels are masked in
//!   between (a mask after the BatchNorm zeroes their Taylor score, so they stay out).
//! - At the end the last widths, on the last step's scores, are built for the budget: by the
//!   cost model, or by measurement for a latency budget with a profile.

use burn::module::Module;
use burn::optim::GradientsParams;
use serde::{Deserialize, Serialize};

use super::{Flow, MethodContext, MethodOutcome, PruneMethod, build_for_budget, phase_config};
use crate::error::{LopperError, Result};
use crate::graph::Graph;
use crate::model::{Model, NodeHook};
use crate::prune::allocation::{CostModel, counts_cost, harden};
use crate::prune::groups::ChannelGroup;
use crate::prune::importance::{Criterion, Importance, Taylor, comparable_across_groups};
use crate::prune::knapsack::{Scale, prefix_knapsack, scaled_scores};
use crate::prune::mask::{ChannelMasks, Selection};
use crate::prune::measured::Surgery;
use crate::train::{OptimizerState, StepInfo, TrainHook};

/// Settings of HALP.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HalpPlan {
    /// Epochs of the pruning phase (before the session's fine-tuning).
    #[serde(default = "halp_epochs")]
    pub halp_epochs: usize,
    /// Pruning steps, the targets falling geometrically from dense to the budget.
    #[serde(default = "halp_steps")]
    pub halp_steps: usize,
    /// Where in the phase (share of its steps) the last pruning step falls; the rest trains
    /// at the final widths.
    #[serde(default = "halp_end")]
    pub halp_end: f64,
    /// Channels per block: widths move by whole blocks of a group's ranking.
    #[serde(default = "halp_block")]
    pub halp_block: usize,
    /// Weight learning rate in the phase [default: the fine-tuning rate, constant].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub halp_lr: Option<f64>,
}

fn halp_epochs() -> usize {
    1
}
fn halp_steps() -> usize {
    10
}
fn halp_end() -> f64 {
    0.5
}
fn halp_block() -> usize {
    2
}

impl Default for HalpPlan {
    fn default() -> Self {
        HalpPlan {
            halp_epochs: halp_epochs(),
            halp_steps: halp_steps(),
            halp_end: halp_end(),
            halp_block: halp_block(),
            halp_lr: None,
        }
    }
}

impl HalpPlan {
    pub(crate) fn resolve(&mut self, flow: &Flow) -> Result<()> {
        if flow.from_scratch {
            return Err(LopperError::Config(
                "HALP prunes a trained network: give --run DIR".into(),
            ));
        }
        if let Some(lr) = flow.lr {
            self.halp_lr.get_or_insert(lr);
        }
        if self.halp_lr.is_some_and(|lr| !(lr > 0.0 && lr.is_finite())) {
            return Err(LopperError::Config(
                "halp_lr (--halp-lr) must be positive".into(),
            ));
        }
        if self.halp_epochs == 0 || self.halp_steps == 0 || self.halp_block == 0 {
            return Err(LopperError::Config(
                "halp_epochs, halp_steps and halp_block (--halp-epochs, --halp-steps, --halp-block) must be at least 1".into(),
            ));
        }
        if !(self.halp_end > 0.0 && self.halp_end <= 1.0) {
            return Err(LopperError::Config(
                "halp_end (--halp-end) is a share of the phase, in (0, 1]".into(),
            ));
        }
        Ok(())
    }
}

/// The cost target of pruning step `t` of `steps` (1-based): geometric from `dense` to `limit`.
pub fn target_at(dense: f64, limit: f64, t: usize, steps: usize) -> f64 {
    let a = t as f64 / steps.max(1) as f64;
    (a * limit.ln() + (1.0 - a) * dense.ln()).exp()
}

/// The widths a group may take: whole blocks of `block` channels (a multiple of `round_to`),
/// the last one whatever is left.
fn widths(channels: usize, block: usize, round_to: usize) -> Vec<usize> {
    let unit = round_to.max(1);
    let b = block.div_ceil(unit).max(1) * unit;
    let mut w: Vec<usize> = (1..).map(|k| k * b).take_while(|&w| w < channels).collect();
    w.push(channels);
    w
}

/// HALP's selection under `target`: each prunable group keeps a prefix of its blocks, ranked
/// by `scores`, chosen by [`prefix_knapsack`] with every prefix costed at the other groups'
/// `current` widths, then repaired to the target exactly.
#[allow(clippy::too_many_arguments)]
pub fn knapsack_selection(
    groups: &[ChannelGroup],
    scores: &[Vec<f64>],
    scale: Scale,
    cost: &dyn CostModel,
    current: &[usize],
    target: f64,
    block: usize,
    round_to: usize,
) -> Result<Selection> {
    let values = scaled_scores(scores, scale);
    let mut counts = current.to_vec();
    let mut options: Vec<Vec<usize>> = vec![];
    let (mut value_rows, mut cost_rows) = (vec![], vec![]);
    // The narrowest widths: what every group's costs are relative to.
    let narrowest: Vec<usize> = groups
        .iter()
        .map(|g| {
            if g.is_prunable() {
                widths(g.channels, block, round_to)[0]
            } else {
                g.channels
            }
        })
        .collect();
    let base = counts_cost(groups, cost, &narrowest);
    for g in groups {
        let w = if g.is_prunable() {
            widths(g.channels, block, round_to)
        } else {
            vec![g.channels]
        };
        let mut ranked = values[g.id].clone();
        ranked.sort_by(|a, b| b.total_cmp(a));
        counts[g.id] = w[0];
        let floor = counts_cost(groups, cost, &counts);
        let mut vrow = vec![];
        let mut crow = vec![];
        for &width in &w {
            counts[g.id] = width;
            vrow.push(ranked.iter().take(width).sum::<f64>());
            crow.push(counts_cost(groups, cost, &counts) - floor);
        }
        counts[g.id] = current[g.id];
        options.push(w);
        value_rows.push(vrow);
        cost_rows.push(crow);
    }
    let chosen = prefix_knapsack(&value_rows, &cost_rows, (target - base).max(0.0), 4096)
        .unwrap_or_else(|| vec![0; groups.len()]);
    let ratios: Vec<f64> = groups
        .iter()
        .map(|g| options[g.id][chosen[g.id]] as f64 / g.channels as f64)
        .collect();
    harden(groups, scores, &ratios, cost, target, round_to)
}

/// One pruning step, as the log records it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HalpStep {
    /// Training steps done at it.
    pub step: usize,
    /// The cost target and the cost of the chosen widths (the budget's units).
    pub target: f64,
    pub cost: f64,
    /// Channels kept per group.
    pub widths: Vec<usize>,
}

/// The training hook: Taylor importance between pruning steps, the masks of the last step.
struct HalpHook<'a> {
    graph: Graph,
    groups: Vec<ChannelGroup>,
    cost: &'a dyn CostModel,
    dense: f64,
    limit: f64,
    block: usize,
    round_to: usize,
    /// The pruning steps: after these global steps (0-based), in order.
    at: Vec<usize>,
    taylor: Taylor,
    scale: Scale,
    selection: Selection,
    /// The scores the selection was made with.
    scores: Option<Vec<Vec<f64>>>,
    masks: Option<ChannelMasks>,
    train_device: burn::tensor::Device,
    log: Vec<HalpStep>,
}

impl HalpHook<'_> {
    fn widths(&self) -> Vec<usize> {
        (0..self.groups.len())
            .map(|g| self.selection.kept(&self.groups, g).len())
            .collect()
    }

    fn mask(&mut self) {
        self.masks = Some(ChannelMasks::hard(
            &self.graph,
            &self.groups,
            &self.selection,
            &self.train_device,
        ));
    }
}

#[derive(Serialize, Deserialize)]
struct HalpState {
    keep: Vec<Option<Vec<usize>>>,
    scores: Option<Vec<Vec<f64>>>,
    log: Vec<HalpStep>,
}

impl TrainHook for HalpHook<'_> {
    fn node_hook(&self) -> Option<&dyn NodeHook> {
        self.masks.as_ref().map(|m| m as &dyn NodeHook)
    }
    fn after_backward(
        &mut self,
        _info: &StepInfo,
        model: &Model,
        grads: GradientsParams,
    ) -> Result<GradientsParams> {
        self.taylor.accumulate(model, &grads)?;
        Ok(grads)
    }
    fn after_step(
        &mut self,
        info: &StepInfo,
        model: Model,
        _optim: &mut OptimizerState,
    ) -> Result<Model> {
        let Some(t) = self.at.iter().position(|&s| s == info.global_step) else {
            return Ok(model);
        };
        let target = target_at(self.dense, self.limit, t + 1, self.at.len());
        let host = model.valid();
        let scores = self.taylor.channel_scores(&host, &self.groups)?;
        let current = self.widths();
        self.selection = knapsack_selection(
            &self.groups,
            &scores,
            self.scale,
            self.cost,
            &current,
            target,
            self.block,
            self.round_to,
        )?;
        self.scores = Some(scores);
        self.taylor.reset();
        self.mask();
        let widths = self.widths();
        self.log.push(HalpStep {
            step: info.global_step + 1,
            target,
            cost: counts_cost(&self.groups, self.cost, &widths),
            widths,
        });
        Ok(model)
    }
    fn state(&self) -> Result<Option<serde_json::Value>> {
        serde_json::to_value(HalpState {
            keep: self.selection.keep.clone(),
            scores: self.scores.clone(),
            log: self.log.clone(),
        })
        .map(Some)
        .map_err(|e| LopperError::Config(e.to_string()))
    }
    fn restore(&mut self, state: serde_json::Value) -> Result<()> {
        let s: HalpState =
            serde_json::from_value(state).map_err(|e| LopperError::Config(e.to_string()))?;
        if s.keep.len() != self.groups.len() {
            return Err(LopperError::Config(
                "the checkpoint's HALP selection does not fit this model".into(),
            ));
        }
        self.selection = Selection { keep: s.keep };
        (self.scores, self.log) = (s.scores, s.log);
        self.mask();
        Ok(())
    }
}

pub struct Halp {
    pub plan: HalpPlan,
}

impl PruneMethod for Halp {
    fn prune(&mut self, cx: &mut MethodContext) -> Result<MethodOutcome> {
        let cb = cx.channel_budget()?;
        let p = &self.plan;
        let total = cx.data.train.num_batches() * p.halp_epochs;
        let last = ((p.halp_end * total as f64).round() as usize).clamp(1, total.max(1));
        // Pruning after steps last/K, 2 last/K, ..., last (0-based: minus one), distinct.
        let mut at: Vec<usize> = (1..=p.halp_steps)
            .map(|k| (k * last).div_ceil(p.halp_steps).max(1) - 1)
            .collect();
        at.dedup();
        let scale = if comparable_across_groups(Criterion::Taylor, cx.dense, cx.groups) {
            Scale::Raw
        } else {
            Scale::PerGroupMean
        };
        let mut hook = HalpHook {
            graph: cx.dense.graph.clone(),
            groups: cx.groups.to_vec(),
            cost: cb.cost,
            dense: cb.cost.dense_cost(),
            limit: cb.limit,
            block: p.halp_block,
            round_to: cx.round_to,
            at: at.clone(),
            taylor: Taylor::default(),
            scale,
            selection: Selection::all(cx.groups),
            scores: None,
            masks: None,
            train_device: cx.device.clone().autodiff(),
            log: vec![],
        };
        let cfg = phase_config(cx, p.halp_epochs, p.halp_lr);
        let (_, resuming) = cx.phase_run();
        cx.progress.message(&format!(
            "HALP: {} epoch(s), {} pruning step(s) from step {} to {} of {total}, the target falling from {:.4e} to {:.4e}, blocks of {} channel(s), weight lr {}{}",
            p.halp_epochs,
            at.len(),
            at[0] + 1,
            at[at.len() - 1] + 1,
            hook.dense,
            hook.limit,
            p.halp_block,
            cfg.lr,
            if resuming { " (resuming from the last completed epoch)" } else { "" }
        ));
        let data = cx.phase_data();
        let (outcome, collapse) = cx.train_phase("HALP's pruning phase", cfg, &data, &mut hook)?;
        let trained = outcome.model.valid();
        let scores = hook.scores.clone().ok_or_else(|| {
            LopperError::Config("HALP's phase ended before its first pruning step".into())
        })?;
        let log = cx.work_dir.join("halp_log.jsonl");
        crate::fsutil::write_jsonl(&log, &hook.log)?;
        let ratios: Vec<f64> = cx
            .groups
            .iter()
            .map(|g| hook.widths()[g.id] as f64 / g.channels as f64)
            .collect();
        let surgery = Surgery {
            source: &trained,
            groups: cx.groups,
            scores: &scores,
            cost: cb.cost,
            unit: cx.round_to.max(1),
            device: cx.device,
        };
        let (groups, cost, round_to) = (cx.groups, cb.cost, cx.round_to);
        let (model, measured_ms) = build_for_budget(cx, &surgery, |lim| {
            harden(groups, &scores, &ratios, cost, lim, round_to)
        })?;
        Ok(MethodOutcome {
            model,
            measured_ms,
            allocation: format!("halp ({} steps)", at.len()),
            history: None,
            cost: None,
            collapse,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::{target_at, widths};

    #[test]
    fn targets_fall_geometrically_to_the_budget() {
        assert!((target_at(100.0, 25.0, 0, 4) - 100.0).abs() < 1e-9);
        assert!((target_at(100.0, 25.0, 2, 4) - 50.0).abs() < 1e-9);
        assert!((target_at(100.0, 25.0, 4, 4) - 25.0).abs() < 1e-9);
    }

    #[test]
    fn widths_move_by_whole_blocks() {
        assert_eq!(widths(10, 4, 1), vec![4, 8, 10]);
        assert_eq!(widths(8, 4, 1), vec![4, 8]);
        assert_eq!(widths(3, 4, 1), vec![3]);
        assert_eq!(widths(16, 3, 2), vec![4, 8, 12, 16]);
    }
}
