//! IEE for channels (Sun et al., WACV 2025; ALGORITHMS.md "IEE"): the same cycles as the
//! weight variant ([`super::iee`]), on channel groups. The active set A is the channels the
//! hard channel masks keep; the exploration set E the ones they switch off.
//!
//! 1. Train A for `H` steps, score it, and move the `k` lowest channels of each group to E
//!    (`k` = `iee_swap` of the group's active channels, decaying along a cosine over the
//!    cycles; a group keeps at least one).
//! 2. Train A for `J` steps.
//! 3. Switch every channel on, E with the values its parameters had when they left A, freeze
//!    A, and train only E for `Q` steps.
//! 4. Score E and move its best back into A; the rest of E is masked again. With `l1`, `l2`,
//!    `bn`, `taylor` or `random` each group gets back as many as it gave (its width, and so
//!    the budget, is unchanged). With `halp` the growth is a knapsack under the budget: E's
//!    channels, best first in each group, join A by the most importance per unit of cost
//!    (latency from `lopper profile`'s table, with a latency budget) while they fit, so
//!    widths move between groups toward where importance is cheapest.
//!
//! Then the phase trains at the last selection, which is removed physically (repaired to the
//! budget, by measurement for a latency budget) and fine-tuned like every channel method's.
//!
//! Design choices (documented as the issue asks):
//! - **A's elements** are every parameter element that surgery at A would keep (each of its
//!   channel axes indexes an active channel, [`kept_elements`]); E's are the rest: the filters
//!   that write an E channel and the weights that read one.
//! - **Freezing A.** During exploration A's gradients are zeroed, and its optimiser state is
//!   set aside and zeroed; at the grow A's parameters and state are put back as they were, so
//!   A has no update to either (weight decay's drift is undone). BatchNorm running statistics
//!   are buffers, not trained state: they follow the batches as always.
//! - **E's values and state.** E's parameters keep their values in storage (the masks switch
//!   their channels off); the values they had when they left A (or the trained run's, for
//!   channels masked from the start) come back at each exploration, so weight decay while
//!   masked does not shrink them. E starts each exploration with zero optimiser state, and
//!   grown channels join A with fresh state, like grown weights.
//! - **Scores.** `taylor` and `halp` sum first-order Taylor on the BatchNorms (|γ ∂L/∂γ +
//!   β ∂L/∂β|) over the steps the scored set trained: A over the `H` steps, E over the `Q`
//!   steps. Norm criteria score the weights at the moment.
//! - **Start.** From a trained run, the criterion's scores on the dense network (Taylor from
//!   a few batches) allocate the budget: `halp` by HALP's knapsack, the others uniformly (or
//!   globally with `--allocation global`), filled up to the limit. From scratch the same on
//!   the initial weights.

use burn::module::{Module, ParamId};
use burn::optim::GradientsParams;
use burn::tensor::TensorData;
use serde::{Deserialize, Serialize};

use super::halp::knapsack_selection;
use super::iee::{IeeHook, IeePlan, Stage, Units};
use super::{MethodContext, MethodOutcome, build_for_budget, phase_config};
use crate::error::{LopperError, Result};
use crate::graph::Graph;
use crate::model::{Model, NodeHook, param_id};
use crate::prune::allocation::{
    Allocation, Amount, Budget, CostModel, allocate_filled, counts_cost, harden,
};
use crate::prune::groups::ChannelGroup;
use crate::prune::importance::{Criterion, Importance, channel_scores, comparable_across_groups};
use crate::prune::knapsack::{Knapsack, Price, Scale, scaled_scores};
use crate::prune::mask::{ChannelMasks, Selection};
use crate::prune::measured::Surgery;
use crate::prune::surgery::kept_elements;
use crate::prune::weights::Density;
use crate::train::{HostState, OptimizerState, mask_gradients};

/// A trainable parameter: full name, id and shape.
#[derive(Debug, Clone)]
struct ParamInfo {
    name: String,
    id: ParamId,
    shape: Vec<usize>,
}

fn is_buffer(name: &str) -> bool {
    name.ends_with(".running_mean") || name.ends_with(".running_var")
}

fn to_host(d: TensorData) -> Result<Vec<f32>> {
    d.convert::<f32>()
        .try_into_vec::<f32>()
        .map_err(|e| LopperError::Graph(format!("{e:?}")))
}

/// Every parameter's values (no buffers), in the order of `params`.
fn param_values(model: &Model, params: &[ParamInfo]) -> Result<Vec<Vec<f32>>> {
    let mut named: std::collections::HashMap<String, TensorData> =
        model.named_tensors().into_iter().collect();
    params
        .iter()
        .map(|p| {
            named
                .remove(&p.name)
                .ok_or_else(|| LopperError::Graph(format!("the model lost '{}'", p.name)))
                .and_then(to_host)
        })
        .collect()
}

/// Per parameter (in the order of `params`), 1 for A's elements under `active`.
fn active_elements(
    model: &Model,
    groups: &[ChannelGroup],
    active: &Selection,
    params: &[ParamInfo],
) -> Result<Vec<Vec<f32>>> {
    let mut kept: std::collections::HashMap<String, Vec<f32>> =
        kept_elements(model, groups, active)?.into_iter().collect();
    params
        .iter()
        .map(|p| {
            kept.remove(&p.name)
                .ok_or_else(|| LopperError::Graph(format!("no element mask for '{}'", p.name)))
        })
        .collect()
}

/// How E grows back.
pub enum Growth<'a> {
    /// Each group gets back as many channels as it gave.
    PerGroup,
    /// A knapsack under the budget (the `halp` criterion).
    Knapsack {
        cost: &'a dyn CostModel,
        limit: f64,
        scale: Scale,
    },
}

/// Exploration in progress: A as it was set aside.
#[derive(Serialize, Deserialize)]
struct Frozen {
    /// Every parameter's values at the start of exploration.
    values: Vec<Vec<f32>>,
    /// A's elements (1) per parameter.
    active: Vec<Vec<f32>>,
    /// The optimiser state: (parameter id, values, shape).
    moments: HostState,
}

/// IEE's units on channels: the prunable groups' channels.
pub struct ChannelUnits<'a> {
    graph: Graph,
    groups: Vec<ChannelGroup>,
    params: Vec<ParamInfo>,
    scorer: Box<dyn Importance>,
    growth: Growth<'a>,
    active: Selection,
    /// Per group, the channels moved to E at the last prune.
    pruned: Vec<Vec<usize>>,
    /// Per parameter, E's last values (meaningful outside A's elements).
    stored: Vec<Vec<f32>>,
    frozen: Option<Frozen>,
    masks: Option<ChannelMasks>,
    train_device: burn::tensor::Device,
    /// Per group, the channels the last grow brought back.
    last_grown: Vec<Vec<usize>>,
}

impl<'a> ChannelUnits<'a> {
    /// IEE on `groups` from the selection `start`; `source` (the model training starts
    /// from) gives the masked channels' last values. `device` is the plain training device.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        source: &Model,
        groups: &[ChannelGroup],
        start: Selection,
        criterion: Criterion,
        growth: Growth<'a>,
        seed: u64,
        device: &burn::tensor::Device,
    ) -> Result<ChannelUnits<'a>> {
        let params: Vec<ParamInfo> = source
            .named_tensors()
            .into_iter()
            .filter(|(n, _)| !is_buffer(n))
            .map(|(name, d)| ParamInfo {
                id: param_id(&name),
                shape: d.shape().to_vec(),
                name,
            })
            .collect();
        let stored = param_values(source, &params)?;
        let mut units = ChannelUnits {
            graph: source.graph.clone(),
            groups: groups.to_vec(),
            params,
            scorer: criterion.build(seed),
            growth,
            active: start,
            pruned: vec![vec![]; groups.len()],
            stored,
            frozen: None,
            masks: None,
            train_device: device.clone().autodiff(),
            last_grown: vec![vec![]; groups.len()],
        };
        units.mask();
        Ok(units)
    }

    /// The active set now.
    pub fn active(&self) -> &Selection {
        &self.active
    }

    /// Per group, the channels the last grow brought back into the active set.
    pub fn last_grown(&self) -> &[Vec<usize>] {
        &self.last_grown
    }

    fn mask(&mut self) {
        self.masks = Some(ChannelMasks::hard(
            &self.graph,
            &self.groups,
            &self.active,
            &self.train_device,
        ));
    }

    /// The criterion's scores now (a gradient criterion that has seen no step since its last
    /// reset, as after a resume, falls back to filter norms).
    fn scores(&self, model: &Model) -> Result<Vec<Vec<f64>>> {
        match self.scorer.channel_scores(model, &self.groups) {
            Err(_) if self.scorer.wants_gradients() => {
                Criterion::L1.build(0).channel_scores(model, &self.groups)
            }
            other => other,
        }
    }

    fn ids(&self) -> Vec<ParamId> {
        self.params.iter().map(|p| p.id).collect()
    }

    /// Step 1's end: the `k` lowest-scoring active channels of each group move to E.
    fn prune_channels(
        &mut self,
        share: f64,
        model: Model,
        optim: &mut OptimizerState,
    ) -> Result<Model> {
        let host = model.valid();
        let scores = self.scores(&host)?;
        let before = active_elements(&host, &self.groups, &self.active, &self.params)?;
        let values = param_values(&host, &self.params)?;
        for g in self.groups.iter().filter(|g| g.is_prunable()) {
            let mut active = self.active.kept(&self.groups, g.id);
            let k = ((share * active.len() as f64).round() as usize).min(active.len() - 1);
            active.sort_by(|&a, &b| scores[g.id][a].total_cmp(&scores[g.id][b]).then(a.cmp(&b)));
            self.pruned[g.id] = active[..k].to_vec();
            let mut kept = active[k..].to_vec();
            kept.sort_unstable();
            self.active.keep[g.id] = Some(kept);
        }
        // What leaves A keeps its values aside; its optimiser state goes.
        for ((stored, v), a) in self.stored.iter_mut().zip(&values).zip(&before) {
            for e in 0..v.len() {
                if a[e] != 0.0 {
                    stored[e] = v[e];
                }
            }
        }
        let after = active_elements(&host, &self.groups, &self.active, &self.params)?;
        optim.scale(&self.ids().into_iter().zip(after).collect::<Vec<_>>())?;
        self.scorer.reset();
        self.mask();
        Ok(model)
    }

    /// Step 3's start: E gets its last values back, A is set aside, every channel computes.
    fn explore_channels(&mut self, model: Model, optim: &mut OptimizerState) -> Result<Model> {
        let host = model.valid();
        let active = active_elements(&host, &self.groups, &self.active, &self.params)?;
        let values = param_values(&host, &self.params)?;
        let with_e: Vec<Vec<f32>> = values
            .iter()
            .zip(&self.stored)
            .zip(&active)
            .map(|((v, s), a)| {
                (0..v.len())
                    .map(|e| if a[e] != 0.0 { v[e] } else { s[e] })
                    .collect()
            })
            .collect();
        let model = self.put(model, with_e)?;
        let moments = optim.snapshot_host(&self.ids())?;
        optim.reset(&self.ids())?;
        self.frozen = Some(Frozen {
            values,
            active,
            moments,
        });
        self.scorer.reset();
        self.masks = None;
        Ok(model)
    }

    /// `model` with every parameter set to `values` (in the order of `params`).
    fn put(&self, model: Model, values: Vec<Vec<f32>>) -> Result<Model> {
        let mut by_name: std::collections::HashMap<&str, Vec<f32>> = self
            .params
            .iter()
            .map(|p| p.name.as_str())
            .zip(values)
            .collect();
        model.set_params(|name| by_name.remove(name))
    }

    /// The channels of E that join A, per group.
    fn grown(&self, scores: &[Vec<f64>]) -> Vec<Vec<usize>> {
        // E's channels of each group, best first.
        let explored: Vec<Vec<usize>> = self
            .groups
            .iter()
            .map(|g| {
                let active = self.active.kept(&self.groups, g.id);
                let mut e: Vec<usize> = (0..g.channels).filter(|c| !active.contains(c)).collect();
                if g.is_prunable() {
                    e.sort_by(|&a, &b| scores[g.id][b].total_cmp(&scores[g.id][a]).then(a.cmp(&b)));
                }
                e
            })
            .collect();
        let counts: Vec<usize> = match &self.growth {
            Growth::PerGroup => self.pruned.iter().map(Vec::len).collect(),
            Growth::Knapsack { cost, limit, scale } => {
                let values = scaled_scores(scores, *scale);
                let min: Vec<usize> = self
                    .groups
                    .iter()
                    .map(|g| g.channels - explored[g.id].len())
                    .collect();
                let max: Vec<usize> = self.groups.iter().map(|g| g.channels).collect();
                // The channel at rank r of a group (A first) is E's (r - |A|)-th best.
                let value = |g: usize, r: usize| values[g][explored[g][r - min[g]]];
                let cost_of = |c: &[usize]| counts_cost(&self.groups, *cost, c);
                let mut widths = min.clone();
                Knapsack {
                    min: &min,
                    max: &max,
                    unit: 1,
                    value: &value,
                    cost: &cost_of,
                    price: Price::Marginal,
                    land: false,
                }
                .grow(&mut widths, *limit);
                widths.iter().zip(&min).map(|(w, m)| w - m).collect()
            }
        };
        explored
            .into_iter()
            .zip(counts)
            .map(|(mut e, k)| {
                e.truncate(k);
                e
            })
            .collect()
    }

    /// Step 4: E's best join A with their explored values; A and its optimiser state are put
    /// back; the rest of E keeps its values aside and is masked again.
    fn grow_channels(
        &mut self,
        model: Model,
        optim: &mut OptimizerState,
    ) -> Result<(Model, usize, usize)> {
        let frozen = self
            .frozen
            .take()
            .ok_or_else(|| LopperError::Config("IEE's grow came without an exploration".into()))?;
        let host = model.valid();
        let scores = self.scores(&host)?;
        let grown = self.grown(&scores);
        let values = param_values(&host, &self.params)?;
        let mut next = Vec::with_capacity(values.len());
        for ((v, stored), (kept, a)) in values
            .iter()
            .zip(self.stored.iter_mut())
            .zip(frozen.values.iter().zip(&frozen.active))
        {
            next.push(
                (0..v.len())
                    .map(|e| {
                        if a[e] != 0.0 {
                            kept[e]
                        } else {
                            stored[e] = v[e];
                            v[e]
                        }
                    })
                    .collect(),
            );
        }
        let model = self.put(model, next)?;
        optim.restore_host(frozen.moments)?;
        // Only A's elements keep their state: grown channels start fresh.
        optim.scale(
            &self
                .ids()
                .into_iter()
                .zip(frozen.active)
                .collect::<Vec<_>>(),
        )?;
        let (mut swapped, mut regrown) = (0, 0);
        for g in self.groups.iter().filter(|g| g.is_prunable()) {
            let add = &grown[g.id];
            swapped += add.len();
            regrown += add.iter().filter(|c| self.pruned[g.id].contains(c)).count();
            let mut kept = self.active.kept(&self.groups, g.id);
            kept.extend(add);
            kept.sort_unstable();
            self.active.keep[g.id] = (kept.len() < g.channels).then_some(kept);
        }
        self.last_grown = grown;
        self.scorer.reset();
        self.mask();
        Ok((model, swapped, regrown))
    }

    /// Zeroes A's gradients (exploration trains E alone).
    fn zero_active(&self, grads: GradientsParams) -> Result<GradientsParams> {
        let Some(frozen) = &self.frozen else {
            return Ok(grads);
        };
        let e_only: Vec<_> = self
            .params
            .iter()
            .zip(&frozen.active)
            .map(|(p, a)| (p.id, p.shape.clone(), a.iter().map(|x| 1.0 - x).collect()))
            .collect();
        mask_gradients(grads, &e_only)
    }
}

#[derive(Serialize, Deserialize)]
struct ChannelState {
    keep: Vec<Option<Vec<usize>>>,
    pruned: Vec<Vec<usize>>,
    stored: Vec<Vec<f32>>,
    frozen: Option<Frozen>,
}

impl Units for ChannelUnits<'_> {
    fn node_hook(&self) -> Option<&dyn NodeHook> {
        self.masks.as_ref().map(|m| m as &dyn NodeHook)
    }
    fn gradients(
        &mut self,
        stage: Stage,
        scoring: bool,
        model: &Model,
        grads: GradientsParams,
    ) -> Result<GradientsParams> {
        // Scores accumulate over the steps the scored set trains (A's H, E's Q) and, for the
        // final build, the fixed stage.
        if self.scorer.wants_gradients() && (scoring || stage == Stage::Fixed) {
            self.scorer.accumulate(model, &grads)?;
        }
        if stage == Stage::Explore {
            self.zero_active(grads)
        } else {
            Ok(grads)
        }
    }
    fn prune(&mut self, share: f64, model: Model, optim: &mut OptimizerState) -> Result<Model> {
        self.prune_channels(share, model, optim)
    }
    fn explore(&mut self, model: Model, optim: &mut OptimizerState) -> Result<Model> {
        self.explore_channels(model, optim)
    }
    fn grow(&mut self, model: Model, optim: &mut OptimizerState) -> Result<(Model, usize, usize)> {
        self.grow_channels(model, optim)
    }
    fn state(&self) -> Result<serde_json::Value> {
        serde_json::to_value(ChannelState {
            keep: self.active.keep.clone(),
            pruned: self.pruned.clone(),
            stored: self.stored.clone(),
            frozen: self.frozen.as_ref().map(|f| Frozen {
                values: f.values.clone(),
                active: f.active.clone(),
                moments: f.moments.clone(),
            }),
        })
        .map_err(|e| LopperError::Config(e.to_string()))
    }
    fn restore(&mut self, state: serde_json::Value) -> Result<()> {
        let s: ChannelState =
            serde_json::from_value(state).map_err(|e| LopperError::Config(e.to_string()))?;
        if s.keep.len() != self.groups.len() || s.stored.len() != self.params.len() {
            return Err(LopperError::Config(
                "the checkpoint's IEE state does not fit this model".into(),
            ));
        }
        self.active = Selection { keep: s.keep };
        (self.pruned, self.stored, self.frozen) = (s.pruned, s.stored, s.frozen);
        if self.frozen.is_some() {
            self.masks = None;
        } else {
            self.mask();
        }
        Ok(())
    }
}

/// IEE on channel groups under the context's channel budget.
pub(crate) fn prune(plan: &IeePlan, cx: &mut MethodContext) -> Result<MethodOutcome> {
    let cb = cx.channel_budget()?;
    let total = cx.data.train.num_batches() * plan.iee_epochs;
    let cycles = plan.cycles(total);
    plan.check_cycles(&cycles, total)?;
    let criterion = plan.criterion.unwrap_or(Criterion::Taylor);
    let groups = cx.groups;
    let round_to = cx.round_to;
    let scale = if comparable_across_groups(criterion, cx.dense, groups) {
        Scale::Raw
    } else {
        Scale::PerGroupMean
    };
    // The start: the budget allocated by the criterion on the source weights.
    let scores = channel_scores(
        criterion,
        cx.dense,
        groups,
        Some((&cx.data.train, super::one_shot::taylor_batches())),
        cx.device,
        cx.cfg.seed,
    )?;
    let budget = Budget {
        resource: cb.budget.resource,
        amount: Amount::Absolute(cb.limit),
    };
    let (start, growth, how) = if criterion == Criterion::Halp {
        let dense: Vec<usize> = groups.iter().map(|g| g.channels).collect();
        let sel = knapsack_selection(
            groups, &scores, scale, cb.cost, &dense, cb.limit, 1, round_to,
        )?;
        let growth = Growth::Knapsack {
            cost: cb.cost,
            limit: cb.limit,
            scale,
        };
        (sel, growth, "knapsack".to_string())
    } else {
        let allocation = match plan.allocation {
            Some(Density::Global) => Allocation::Global,
            _ => Allocation::Uniform,
        };
        let sel = allocate_filled(groups, &scores, &budget, cb.cost, allocation, round_to)?;
        let name = match allocation {
            Allocation::Global => "global",
            Allocation::Uniform => "uniform",
        };
        (sel, Growth::PerGroup, name.to_string())
    };
    let units = ChannelUnits::new(
        cx.dense,
        groups,
        start,
        criterion,
        growth,
        cx.cfg.seed,
        cx.device,
    )?;
    let mut hook = IeeHook::new(units, cycles);
    let cfg = phase_config(cx, plan.iee_epochs, plan.iee_lr);
    let (_, resuming) = cx.phase_run();
    let what = format!("{}, {how} start", cb.budget);
    cx.progress
        .message(&plan.describe(&what, &cycles, cfg.lr, resuming));
    let data = cx.phase_data();
    let (outcome, collapse) = cx.train_phase("IEE's phase", cfg, &data, &mut hook)?;
    crate::fsutil::write_jsonl(&cx.work_dir.join("iee_log.jsonl"), hook.log())?;
    let units = hook.units();
    let trained = outcome.model.valid();
    // The build keeps A: its channels rank above E's in every group (each set in the order of
    // the criterion's last scores), and the repair to the budget trades by those ranks.
    let last = units.scores(&trained)?;
    let ranked: Vec<Vec<f64>> = groups
        .iter()
        .map(|g| {
            if !g.is_prunable() {
                return vec![];
            }
            let kept = units.active.kept(groups, g.id);
            let top = last[g.id].iter().copied().fold(0.0f64, f64::max).max(1e-30);
            (0..g.channels)
                .map(|c| {
                    let s = 0.5 * last[g.id][c] / top;
                    if kept.contains(&c) { 1.0 + s } else { s }
                })
                .collect()
        })
        .collect();
    let ratios: Vec<f64> = groups
        .iter()
        .map(|g| units.active.kept(groups, g.id).len() as f64 / g.channels as f64)
        .collect();
    let surgery = Surgery {
        source: &trained,
        groups,
        scores: &ranked,
        cost: cb.cost,
        unit: round_to.max(1),
        device: cx.device,
    };
    let cost = cb.cost;
    let (model, measured_ms) = build_for_budget(cx, &surgery, |lim| {
        harden(groups, &ranked, &ratios, cost, lim, round_to)
    })?;
    Ok(MethodOutcome {
        model,
        measured_ms,
        allocation: format!("iee {} ({how} start)", criterion.name()),
        history: None,
        cost: None,
        collapse,
    })
}
