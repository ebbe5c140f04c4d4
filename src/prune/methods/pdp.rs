//! PDP as a method, for weights (unstructured and N:M) and for channels: the model trains
//! under PDP's soft masks ([`crate::prune::pdp`]), recomputed from the weights at every step,
//! while each layer's target sparsity (or each channel group's target width) ramps; then the
//! masks are hardened at `m >= 0.5` with the budget held exactly, and the session fine-tunes:
//! with the weight masks frozen, or the channels removed physically.
//!
//! Schedule (ALGORITHMS.md "PDP"; the shares are design choices): from scratch a dense
//! warm-up (`pdp_start`, default 0.16 of the phase, the paper's 16 of 100 epochs), from a
//! trained run none; at the ramp's start the final targets come from the weights: per-layer
//! sparsities from one magnitude ranking at the final sparsity (`--allocation global`, or
//! uniform or ERK), or for a channel budget the widths that meet it by filter norm
//! (`--allocation uniform`, or global); they ramp linearly to `pdp_end` of the phase and stay.
//! For N:M every pruned layer's soft mask switches on at the ramp's start at its pattern.
//!
//! The channel mode's allocation defaults to uniform: filter norms of different layers do not
//! compare (BatchNorm undoes a filter's scale), so a global ranking of them says little.

use burn::module::Module;
use serde::{Deserialize, Serialize};

use super::{
    Flow, History, MethodContext, MethodOutcome, PruneMethod, build_for_budget, phase_config,
    resolve_phase,
};
use crate::error::{LopperError, Result};
use crate::model::{Model, NodeHook};
use crate::prune::allocation::{Allocation, Amount, Budget, Target, allocate, harden};
use crate::prune::groups::ChannelGroup;
use crate::prune::measured::Surgery;
use crate::prune::pdp::{PdpChannelMask, PdpMask, Temperature, channel_norms};
use crate::prune::weights::{
    Density, SoftWeightMasks, WeightBudget, WeightLayer, WeightMasks, nm_mask, solve_masks, top_k,
    weight_layers, weight_values,
};
use crate::train::{OptimizerState, StepInfo, TrainData, TrainHook};

/// Settings of PDP.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PdpPlan {
    /// How the budget is spread: over layers for a sparsity (uniform, global or erk; default
    /// global), over channel groups for a channel budget (uniform or global; default
    /// uniform); none for N:M.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allocation: Option<Density>,
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
    /// Whether gradients flow into the threshold `t` (through its two boundary scores).
    #[serde(default)]
    pub pdp_t_grad: bool,
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
            allocation: None,
            pdp_epochs: pdp_epochs(),
            pdp_start: None,
            pdp_end: pdp_end(),
            pdp_tau: pdp_tau(),
            pdp_tau_absolute: false,
            pdp_t_grad: false,
            pdp_lr: None,
        }
    }
}

impl PdpPlan {
    pub(crate) fn resolve(&mut self, flow: &Flow, target: &Target) -> Result<()> {
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
        match target {
            Target::Weights(WeightBudget::NM { .. }) if self.allocation.is_some() => {
                return Err(LopperError::Config(format!(
                    "allocation (--allocation) spreads a sparsity over the layers; the budget {target} puts every pruned layer at its pattern"
                )));
            }
            Target::Weights(WeightBudget::Sparsity(_)) => {
                self.allocation.get_or_insert(Density::Global);
            }
            Target::Weights(WeightBudget::NM { .. }) => {}
            Target::Channels(_) => {
                if self.allocation == Some(Density::Erk) {
                    return Err(LopperError::Config(format!(
                        "ERK spreads a weight sparsity over layers; for the channel budget {target} use --allocation uniform or global"
                    )));
                }
                self.allocation.get_or_insert(Density::Uniform);
            }
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

    /// The channel mode's allocation.
    fn channel_allocation(&self) -> Allocation {
        match self.allocation {
            Some(Density::Global) => Allocation::Global,
            _ => Allocation::Uniform,
        }
    }
}

/// The ramp of the targets, from step `start` to `end`: 0 before, 1 from `end` on.
#[derive(Debug, Clone, Copy)]
struct Ramp {
    start: usize,
    end: usize,
}

impl Ramp {
    fn new(plan: &PdpPlan, total: usize) -> Ramp {
        let start = (plan.pdp_start.unwrap_or_default() * total as f64).round() as usize;
        let end = ((plan.pdp_end * total as f64).round() as usize).clamp(start + 1, total.max(1));
        Ramp { start, end }
    }

    fn at(&self, step: usize) -> f64 {
        if step < self.start {
            0.0
        } else {
            ((step - self.start + 1) as f64 / (self.end - self.start).max(1) as f64).min(1.0)
        }
    }
}

/// Samples of one value per layer or group over the run, about a hundred in all, for the
/// report's history plot.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Trace {
    points: Vec<(f64, Vec<f64>)>,
}

impl Trace {
    /// Whether `info`'s step is one to sample.
    fn due(info: &StepInfo) -> bool {
        let every = (info.total_steps() / 100).max(1);
        (info.global_step + 1).is_multiple_of(every) || info.global_step + 1 == info.total_steps()
    }

    fn push(&mut self, info: &StepInfo, values: Vec<f64>) {
        let x = (info.global_step + 1) as f64 / info.steps_per_epoch.max(1) as f64;
        self.points.push((x, values));
    }

    fn series(&self, names: Vec<(usize, String)>) -> Vec<(String, Vec<(f64, f64)>)> {
        names
            .into_iter()
            .map(|(i, name)| {
                let line = self.points.iter().map(|(x, v)| (*x, v[i])).collect();
                (name, line)
            })
            .collect()
    }
}

/// Per masked layer (by graph node): the weights it keeps at the end, from one magnitude
/// ranking at the final sparsity spread by `density` (N:M: its pattern).
fn final_kept(
    model: &Model,
    layers: &[WeightLayer],
    budget: WeightBudget,
    density: Density,
) -> Result<Vec<usize>> {
    let masked: Vec<&WeightLayer> = layers.iter().filter(|l| l.is_masked()).collect();
    let scores = masked
        .iter()
        .map(|l| weight_values(model, l).map(|v| v.iter().map(|x| x.abs() as f64).collect()))
        .collect::<Result<Vec<Vec<f64>>>>()?;
    let masks = solve_masks(&masked, &scores, budget, density);
    let mut kept = vec![0; model.graph.nodes.len()];
    for (l, m) in masked.iter().zip(&masks) {
        kept[l.node] = m.iter().filter(|&&v| v != 0.0).count();
    }
    Ok(kept)
}

/// The weight mode's training hook: the soft masks, their targets along the ramp.
struct PdpHook {
    soft: SoftWeightMasks<PdpMask>,
    budget: WeightBudget,
    density: Density,
    ramp: Ramp,
    /// The final kept count per graph node, once derived (at the ramp's start).
    kept: Option<Vec<usize>>,
    /// Per masked layer, the share its soft mask takes away (`1 − mean m`).
    trace: Trace,
}

impl PdpHook {
    /// The targets at `step`: each masked layer's final sparsity times the ramp.
    fn set_targets(&mut self, step: usize) {
        let ramp = self.ramp.at(step);
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

    fn history(&self) -> History {
        let masked = self.soft.layers().iter().filter(|l| l.is_masked());
        History {
            file: "sparsity_history".into(),
            title: "PDP soft-mask sparsity per layer".into(),
            x_label: "epoch of PDP's phase".into(),
            y_label: "share of the layer masked (1 − mean m(w))".into(),
            series: self.trace.series(
                masked
                    .enumerate()
                    .map(|(i, l)| (i, l.name.clone()))
                    .collect(),
            ),
        }
    }
}

/// What a resumed phase needs to go on: the final targets and the trace so far.
#[derive(Serialize, Deserialize)]
struct PdpState<K> {
    kept: Option<K>,
    #[serde(default)]
    trace: Trace,
}

fn save<K: Serialize>(kept: &Option<K>, trace: &Trace) -> Result<Option<serde_json::Value>> {
    serde_json::to_value(PdpState {
        kept: kept.as_ref(),
        trace: trace.clone(),
    })
    .map(Some)
    .map_err(|e| LopperError::Config(e.to_string()))
}

fn load<K: for<'de> Deserialize<'de>>(state: serde_json::Value) -> Result<PdpState<K>> {
    serde_json::from_value(state).map_err(|e| LopperError::Config(e.to_string()))
}

impl TrainHook for PdpHook {
    fn node_hook(&self) -> Option<&dyn NodeHook> {
        Some(&self.soft)
    }
    fn before_step(&mut self, info: &StepInfo, _model: &Model) -> Result<()> {
        self.set_targets(info.global_step);
        Ok(())
    }
    fn after_step(
        &mut self,
        info: &StepInfo,
        model: Model,
        _optim: &mut OptimizerState,
    ) -> Result<Model> {
        // From scratch the targets come from the weights the warm-up trained.
        if self.kept.is_none() && info.global_step + 1 >= self.ramp.start {
            self.kept = Some(final_kept(
                &model.valid(),
                self.soft.layers(),
                self.budget,
                self.density,
            )?);
        }
        if Trace::due(info) {
            let mut values = vec![];
            for l in self.soft.layers().iter().filter(|l| l.is_masked()) {
                values.push(self.soft.mask.soft_sparsity(l, &weight_values(&model, l)?));
            }
            self.trace.push(info, values);
        }
        Ok(model)
    }
    fn state(&self) -> Result<Option<serde_json::Value>> {
        save(&self.kept, &self.trace)
    }
    fn restore(&mut self, state: serde_json::Value) -> Result<()> {
        let s = load(state)?;
        (self.kept, self.trace) = (s.kept, s.trace);
        Ok(())
    }
}

/// The final width of every group for a model's weights (the budget met by filter norm).
type WidthSolver = Box<dyn Fn(&Model) -> Result<Vec<usize>>>;

/// The channel mode's training hook: the soft channel masks, recomputed from the weights
/// before every step, their target widths along the ramp.
struct PdpChannelHook {
    mask: PdpChannelMask,
    groups: Vec<ChannelGroup>,
    /// Where the final widths come from: the budget's limit and cost model, the allocation.
    solve: WidthSolver,
    ramp: Ramp,
    /// The final width of each group, once derived (at the ramp's start).
    widths: Option<Vec<usize>>,
    /// Per prunable group, its soft channel count (Σ m).
    trace: Trace,
}

impl PdpChannelHook {
    fn set_targets(&mut self, step: usize) {
        let ramp = self.ramp.at(step);
        for g in &self.groups {
            self.mask.kept[g.id] = match &self.widths {
                Some(w) => {
                    let cut = (ramp * (g.channels - w[g.id]) as f64).round() as usize;
                    g.channels - cut
                }
                None => g.channels,
            };
        }
    }

    fn history(&self, model: &Model) -> History {
        let prunable = self.groups.iter().filter(|g| g.is_prunable());
        History {
            file: "sparsity_history".into(),
            title: "PDP soft channel count per group".into(),
            x_label: "epoch of PDP's phase".into(),
            y_label: "channels (sum of the soft mask m)".into(),
            series: self.trace.series(
                prunable
                    .enumerate()
                    .map(|(i, g)| (i, format!("g{} {}", g.id, g.label(&model.graph))))
                    .collect(),
            ),
        }
    }
}

impl TrainHook for PdpChannelHook {
    fn node_hook(&self) -> Option<&dyn NodeHook> {
        Some(&self.mask)
    }
    fn before_step(&mut self, info: &StepInfo, model: &Model) -> Result<()> {
        self.set_targets(info.global_step);
        self.mask.update(model, &self.groups)
    }
    fn after_step(
        &mut self,
        info: &StepInfo,
        model: Model,
        _optim: &mut OptimizerState,
    ) -> Result<Model> {
        if self.widths.is_none() && info.global_step + 1 >= self.ramp.start {
            self.widths = Some((self.solve)(&model.valid())?);
        }
        if Trace::due(info) {
            let counts = self
                .groups
                .iter()
                .filter(|g| g.is_prunable())
                .map(|g| self.mask.soft_counts[g.id])
                .collect();
            self.trace.push(info, counts);
        }
        Ok(model)
    }
    fn state(&self) -> Result<Option<serde_json::Value>> {
        save(&self.widths, &self.trace)
    }
    fn restore(&mut self, state: serde_json::Value) -> Result<()> {
        let s = load(state)?;
        (self.widths, self.trace) = (s.kept, s.trace);
        Ok(())
    }
}

/// Per group, the L2 norms of its channels' filters (PDP's channel score); protected groups,
/// which keep every channel (the input's has no filters), score 1.
fn norm_scores(model: &Model, groups: &[ChannelGroup]) -> Result<Vec<Vec<f64>>> {
    groups
        .iter()
        .map(|g| {
            if g.is_prunable() {
                Ok(channel_norms(model, g)?
                    .into_iter()
                    .map(f64::from)
                    .collect())
            } else {
                Ok(vec![1.0; g.channels])
            }
        })
        .collect()
}

pub struct Pdp {
    pub plan: PdpPlan,
}

impl Pdp {
    fn train(
        &self,
        cx: &mut MethodContext,
        what: &str,
        hook: &mut dyn TrainHook,
    ) -> Result<(Model, Option<String>)> {
        let p = &self.plan;
        let cfg = phase_config(cx, p.pdp_epochs, p.pdp_lr);
        let (_, resuming) = cx.phase_run();
        cx.progress.message(&format!(
            "PDP: {} epoch(s) under soft masks ({what}, τ {}{}{}), weight lr {}{}",
            p.pdp_epochs,
            p.pdp_tau,
            if p.pdp_tau_absolute { "" } else { " t²" },
            if p.pdp_t_grad {
                ", gradient into t"
            } else {
                ""
            },
            cfg.lr,
            if resuming {
                " (resuming from the last completed epoch)"
            } else {
                ""
            }
        ));
        let data = TrainData {
            train: cx.data.train.clone(),
            val: None,
            test: None,
        };
        let (outcome, collapse) = cx.train_phase("PDP's soft-mask phase", cfg, &data, hook)?;
        Ok((outcome.model.valid(), collapse))
    }

    fn total_steps(&self, cx: &MethodContext) -> usize {
        cx.data.train.num_batches() * self.plan.pdp_epochs
    }

    fn prune_weights(
        &mut self,
        cx: &mut MethodContext,
        budget: WeightBudget,
    ) -> Result<MethodOutcome> {
        let p = &self.plan;
        let graph = &cx.dense.graph;
        let layers = weight_layers(graph, cx.protect, budget.pattern())?;
        let ramp = Ramp::new(p, self.total_steps(cx));
        let density = p.allocation.unwrap_or(Density::Global);
        let kept = if ramp.start == 0 {
            Some(final_kept(cx.dense, &layers, budget, density)?)
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
                    t_grad: p.pdp_t_grad,
                    targets: vec![0.0; graph.nodes.len()],
                },
            ),
            budget,
            density,
            ramp,
            kept,
            trace: Trace::default(),
        };
        let what = format!(
            "{budget}, targets rising from step {} to {}",
            ramp.start, ramp.end
        );
        let (trained, collapse) = self.train(cx, &what, &mut hook)?;
        let model = hook.harden(&trained, cx.device)?.apply(trained, None)?;
        Ok(MethodOutcome {
            model,
            measured_ms: None,
            allocation: match budget {
                WeightBudget::NM { .. } => format!("pdp {}", budget.pattern()),
                WeightBudget::Sparsity(_) => format!("pdp {density}"),
            },
            history: Some(hook.history()),
            cost: None,
            collapse,
        })
    }

    fn prune_channels(&mut self, cx: &mut MethodContext) -> Result<MethodOutcome> {
        let cb = cx.channel_budget()?;
        let p = &self.plan;
        let allocation = p.channel_allocation();
        let ramp = Ramp::new(p, self.total_steps(cx));
        let groups = cx.groups.to_vec();
        let (resource, limit, round_to) = (cb.budget.resource, cb.limit, cx.round_to);
        // The final widths: the budget met by filter norm, on the weights at the ramp's start.
        // The cost model is borrowed from the session; the closure owns what it needs.
        let cost = cb
            .budget
            .cost_model(&cx.dense.graph, cx.groups, cb.profile)?;
        let solve_groups = groups.clone();
        let solve = move |model: &Model| -> Result<Vec<usize>> {
            let scores = norm_scores(model, &solve_groups)?;
            let budget = Budget {
                resource,
                amount: Amount::Absolute(limit),
            };
            let sel = allocate(
                &solve_groups,
                &scores,
                &budget,
                cost.as_ref(),
                allocation,
                round_to,
            )?;
            // Filled up to the limit now, as hardening would at the end: the phase then trains
            // toward the widths it will keep, and no channel the mask switched off comes back.
            let ratios: Vec<f64> = solve_groups
                .iter()
                .map(|g| sel.kept(&solve_groups, g.id).len() as f64 / g.channels as f64)
                .collect();
            let filled = harden(
                &solve_groups,
                &scores,
                &ratios,
                cost.as_ref(),
                limit,
                round_to,
            )?;
            Ok((0..solve_groups.len())
                .map(|g| filled.kept(&solve_groups, g).len())
                .collect())
        };
        let widths = if ramp.start == 0 {
            Some(solve(cx.dense)?)
        } else {
            None
        };
        let mut hook = PdpChannelHook {
            mask: PdpChannelMask::new(&groups, p.temperature(), p.pdp_t_grad),
            groups,
            solve: Box::new(solve),
            ramp,
            widths,
            trace: Trace::default(),
        };
        let what = format!(
            "{}, {} allocation, widths narrowing from step {} to {}",
            cb.budget,
            value_name(allocation),
            ramp.start,
            ramp.end
        );
        let (trained, collapse) = self.train(cx, &what, &mut hook)?;
        let widths = hook.widths.clone().ok_or_else(|| {
            LopperError::Config("PDP's phase ended before its ramp started".into())
        })?;
        // Hardening: each group's top channels by filter norm at its final width (m >= 0.5),
        // repaired to the budget exactly; for a measured latency budget, by measurement.
        let scores = norm_scores(&trained, cx.groups)?;
        let ratios: Vec<f64> = cx
            .groups
            .iter()
            .map(|g| widths[g.id] as f64 / g.channels as f64)
            .collect();
        let surgery = Surgery {
            source: &trained,
            groups: cx.groups,
            scores: &scores,
            cost: cb.cost,
            unit: cx.round_to.max(1),
            device: cx.device,
        };
        let (groups, cost) = (cx.groups, cb.cost);
        let (model, measured_ms) = build_for_budget(cx, &surgery, |lim| {
            harden(groups, &scores, &ratios, cost, lim, round_to)
        })?;
        Ok(MethodOutcome {
            model,
            measured_ms,
            allocation: format!("pdp {}", value_name(allocation)),
            history: Some(hook.history(cx.dense)),
            cost: None,
            collapse,
        })
    }
}

fn value_name(a: Allocation) -> &'static str {
    match a {
        Allocation::Uniform => "uniform",
        Allocation::Global => "global",
    }
}

impl PruneMethod for Pdp {
    fn prune(&mut self, cx: &mut MethodContext) -> Result<MethodOutcome> {
        match cx.target {
            Target::Weights(budget) => self.prune_weights(cx, budget),
            Target::Channels(_) => self.prune_channels(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{PdpHook, PdpPlan, Ramp, Trace};
    use crate::prune::allocation::Target;
    use crate::prune::methods::Flow;

    /// The allocation's default follows the budget (global over layers for a sparsity,
    /// uniform over groups for channels); ERK with channels and any allocation with N:M are
    /// refused.
    #[test]
    fn the_allocation_follows_the_budget() {
        let flow = Flow {
            from_scratch: false,
            lr: Some(0.01),
            source_lr: Some(0.1),
        };
        let resolved = |allocation, budget: &str| {
            let mut p = PdpPlan {
                allocation,
                ..PdpPlan::default()
            };
            let target: Target = budget.parse().unwrap();
            p.resolve(&flow, &target).map(|_| p.allocation)
        };
        assert_eq!(
            resolved(None, "sparsity=0.9").unwrap(),
            Some(Density::Global)
        );
        assert_eq!(resolved(None, "macs=0.5").unwrap(), Some(Density::Uniform));
        assert_eq!(resolved(None, "nm=2:4").unwrap(), None);
        assert_eq!(
            resolved(Some(Density::Global), "params=0.5").unwrap(),
            Some(Density::Global)
        );
        assert!(resolved(Some(Density::Erk), "macs=0.5").is_err());
        assert!(resolved(Some(Density::Uniform), "nm=2:4").is_err());
    }
    use crate::prune::pdp::{PdpMask, Temperature};
    use crate::prune::weights::{Density, Pattern, SoftWeightMasks, WeightBudget, weight_layers};

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
            t_grad: false,
            targets: vec![0.0; g.nodes.len()],
        };
        let mut hook = PdpHook {
            soft: SoftWeightMasks::new(&g, layers.clone(), mask),
            budget: WeightBudget::Sparsity(0.75),
            density: Density::Global,
            ramp: Ramp { start: 10, end: 20 },
            kept: Some(kept),
            trace: Trace::default(),
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
