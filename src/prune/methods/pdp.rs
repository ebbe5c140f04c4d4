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
use crate::prune::allocation::{Allocation, Amount, Budget, Target, allocate_filled, harden};
use crate::prune::groups::ChannelGroup;
use crate::prune::measured::Surgery;
use crate::prune::pdp::{PdpChannelMask, PdpMask, Temperature, channel_norms};
use crate::prune::weights::{
    Density, SoftWeightMasks, WeightBudget, WeightLayer, WeightMasks, nm_mask, solve_masks, top_k,
    weight_layers, weight_values,
};
use crate::train::{OptimizerState, StepInfo, TrainHook};

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
        // A start that rounds to the phase's end still leaves the ramp one step (a late start
        // on a short phase must not make the range empty).
        let start = ((plan.pdp_start.unwrap_or_default() * total as f64).round() as usize)
            .min(total.saturating_sub(1));
        let end =
            ((plan.pdp_end * total as f64).round() as usize).clamp(start + 1, total.max(start + 1));
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

    /// One line per name, the i-th from the i-th value of every sample.
    fn series(&self, names: Vec<String>) -> Vec<(String, Vec<(f64, f64)>)> {
        names
            .into_iter()
            .enumerate()
            .map(|(i, name)| {
                let line = self.points.iter().map(|(x, v)| (*x, v[i])).collect();
                (name, line)
            })
            .collect()
    }
}

/// What PDP's weight and channel modes do differently; the schedule around them is one
/// [`PdpHook`].
trait Mode {
    /// The final targets from a model's weights: the weights each layer keeps (by graph
    /// node), or each group's width.
    fn solve(&self, model: &Model) -> Result<Vec<usize>>;
    /// Sets the masks for a step at share `ramp` of the way to `targets` (none yet: no
    /// mask), from `model`, the model the step runs.
    fn prepare(&mut self, ramp: f64, targets: Option<&[usize]>, model: &Model) -> Result<()>;
    /// The traced value of each masked layer or prunable group after a step.
    fn sample(&self, model: &Model) -> Result<Vec<f64>>;
    /// The plot of the trace.
    fn history(&self, trace: &Trace, graph: &crate::graph::Graph) -> History;
    fn node_hook(&self) -> &dyn NodeHook;
}

/// PDP's training hook: the soft masks of a mode, their targets along the ramp.
struct PdpHook<M: Mode> {
    mode: M,
    ramp: Ramp,
    /// The final targets, once derived (at the ramp's start: from scratch, from the weights
    /// the warm-up trained).
    targets: Option<Vec<usize>>,
    trace: Trace,
}

impl<M: Mode> PdpHook<M> {
    fn new(mode: M, ramp: Ramp, dense: &Model) -> Result<Self> {
        let targets = if ramp.start == 0 {
            Some(mode.solve(dense)?)
        } else {
            None
        };
        Ok(PdpHook {
            mode,
            ramp,
            targets,
            trace: Trace::default(),
        })
    }

    /// The final targets; an error if the phase ended before the ramp started.
    fn targets(&self) -> Result<&[usize]> {
        self.targets
            .as_deref()
            .ok_or_else(|| LopperError::Config("PDP's phase ended before its ramp started".into()))
    }
}

/// What a resumed phase needs to go on: the final targets and the trace so far.
#[derive(Serialize, Deserialize)]
struct PdpState {
    #[serde(alias = "kept")]
    targets: Option<Vec<usize>>,
    #[serde(default)]
    trace: Trace,
}

impl<M: Mode> TrainHook for PdpHook<M> {
    fn node_hook(&self) -> Option<&dyn NodeHook> {
        Some(self.mode.node_hook())
    }
    fn before_step(&mut self, info: &StepInfo, model: &Model) -> Result<()> {
        let ramp = self.ramp.at(info.global_step);
        self.mode.prepare(ramp, self.targets.as_deref(), model)
    }
    fn after_step(
        &mut self,
        info: &StepInfo,
        model: Model,
        _optim: &mut OptimizerState,
    ) -> Result<Model> {
        if self.targets.is_none() && info.global_step + 1 >= self.ramp.start {
            self.targets = Some(self.mode.solve(&model.valid())?);
        }
        if Trace::due(info) {
            self.trace.push(info, self.mode.sample(&model)?);
        }
        Ok(model)
    }
    fn state(&self) -> Result<Option<serde_json::Value>> {
        serde_json::to_value(PdpState {
            targets: self.targets.clone(),
            trace: self.trace.clone(),
        })
        .map(Some)
        .map_err(|e| LopperError::Config(e.to_string()))
    }
    fn restore(&mut self, state: serde_json::Value) -> Result<()> {
        let s: PdpState =
            serde_json::from_value(state).map_err(|e| LopperError::Config(e.to_string()))?;
        (self.targets, self.trace) = (s.targets, s.trace);
        Ok(())
    }
}

/// The weight mode: soft weight masks at per-layer target sparsities.
struct WeightMode {
    soft: SoftWeightMasks<PdpMask>,
    budget: WeightBudget,
    density: Density,
}

impl WeightMode {
    fn masked(&self) -> impl Iterator<Item = &WeightLayer> {
        self.soft.layers().iter().filter(|l| l.is_masked())
    }

    /// Hardened masks: `m >= 0.5` at the final targets, i.e. the `kept` largest |w| of each
    /// layer (N:M: the N largest of each group), so the budget holds exactly.
    fn harden(
        &self,
        kept: &[usize],
        model: &Model,
        device: &burn::tensor::Device,
    ) -> Result<WeightMasks> {
        let mut masks = vec![];
        for l in self.masked() {
            let scores: Vec<f64> = weight_values(model, l)?
                .iter()
                .map(|x| x.abs() as f64)
                .collect();
            masks.push(match self.budget {
                WeightBudget::NM { n, m } => nm_mask(l, &scores, n, m),
                WeightBudget::Sparsity(_) => top_k(&scores, kept[l.node]),
            });
        }
        let mut hard = WeightMasks::new(&model.graph, self.soft.layers().to_vec(), device);
        hard.set(masks)?;
        Ok(hard)
    }
}

impl Mode for WeightMode {
    /// Per masked layer (by graph node): the weights it keeps at the end, from one magnitude
    /// ranking at the final sparsity spread by the allocation (N:M: its pattern).
    fn solve(&self, model: &Model) -> Result<Vec<usize>> {
        let masked: Vec<&WeightLayer> = self.masked().collect();
        let scores = masked
            .iter()
            .map(|l| weight_values(model, l).map(|v| v.iter().map(|x| x.abs() as f64).collect()))
            .collect::<Result<Vec<Vec<f64>>>>()?;
        let masks = solve_masks(&masked, &scores, self.budget, self.density);
        let mut kept = vec![0; model.graph.nodes.len()];
        for (l, m) in masked.iter().zip(&masks) {
            kept[l.node] = m.iter().filter(|&&v| v != 0.0).count();
        }
        Ok(kept)
    }

    /// Each masked layer's final sparsity times the ramp (the masks themselves are computed
    /// in the forward pass, from the weights it sees).
    fn prepare(&mut self, ramp: f64, kept: Option<&[usize]>, _model: &Model) -> Result<()> {
        let mut targets = vec![0.0; self.soft.mask.targets.len()];
        if let Some(kept) = kept {
            for l in self.masked() {
                let r = match self.budget {
                    WeightBudget::NM { .. } => 1.0,
                    WeightBudget::Sparsity(_) => 1.0 - kept[l.node] as f64 / l.numel() as f64,
                };
                targets[l.node] = ramp * r;
            }
        }
        self.soft.mask.targets = targets;
        Ok(())
    }

    /// The share of each masked layer its soft mask takes away (`1 − mean m`).
    fn sample(&self, model: &Model) -> Result<Vec<f64>> {
        self.masked()
            .map(|l| Ok(self.soft.mask.soft_sparsity(l, &weight_values(model, l)?)))
            .collect()
    }

    fn history(&self, trace: &Trace, _graph: &crate::graph::Graph) -> History {
        History {
            file: "sparsity_history".into(),
            title: "PDP soft-mask sparsity per layer".into(),
            x_label: "epoch of PDP's phase".into(),
            y_label: "share of the layer masked (1 − mean m(w))".into(),
            series: trace.series(self.masked().map(|l| l.name.clone()).collect()),
        }
    }

    fn node_hook(&self) -> &dyn NodeHook {
        &self.soft
    }
}

/// The final width of every group for a model's weights (the budget met by filter norm).
type WidthSolver = Box<dyn Fn(&Model) -> Result<Vec<usize>>>;

/// The channel mode: soft channel masks from the filter norms, recomputed before every step,
/// at per-group target widths.
struct ChannelMode {
    mask: PdpChannelMask,
    groups: Vec<ChannelGroup>,
    /// The budget's limit and cost model and the allocation, behind one call.
    solve: WidthSolver,
}

impl ChannelMode {
    fn prunable(&self) -> impl Iterator<Item = &ChannelGroup> {
        self.groups.iter().filter(|g| g.is_prunable())
    }
}

impl Mode for ChannelMode {
    fn solve(&self, model: &Model) -> Result<Vec<usize>> {
        (self.solve)(model)
    }

    fn prepare(&mut self, ramp: f64, widths: Option<&[usize]>, model: &Model) -> Result<()> {
        for g in &self.groups {
            self.mask.kept[g.id] = match widths {
                Some(w) => {
                    let cut = (ramp * (g.channels - w[g.id]) as f64).round() as usize;
                    g.channels - cut
                }
                None => g.channels,
            };
        }
        self.mask.update(model, &self.groups)
    }

    /// Each prunable group's soft channel count (Σ m) at the step's masks.
    fn sample(&self, _model: &Model) -> Result<Vec<f64>> {
        Ok(self
            .prunable()
            .map(|g| self.mask.soft_counts[g.id])
            .collect())
    }

    fn history(&self, trace: &Trace, graph: &crate::graph::Graph) -> History {
        History {
            file: "sparsity_history".into(),
            title: "PDP soft channel count per group".into(),
            x_label: "epoch of PDP's phase".into(),
            y_label: "channels (sum of the soft mask m)".into(),
            series: trace.series(
                self.prunable()
                    .map(|g| format!("g{} {}", g.id, g.label(graph)))
                    .collect(),
            ),
        }
    }

    fn node_hook(&self) -> &dyn NodeHook {
        &self.mask
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
    /// PDP's phase with `hook`, described as `what`; returns the trained model.
    fn train<M: Mode>(
        &self,
        cx: &mut MethodContext,
        what: &str,
        hook: &mut PdpHook<M>,
    ) -> Result<(Model, Option<String>)> {
        let p = &self.plan;
        let cfg = phase_config(cx, p.pdp_epochs, p.pdp_lr);
        let (_, resuming) = cx.phase_run();
        cx.progress.message(&format!(
            "PDP: {} epoch(s) under soft masks ({what}, targets moving from step {} to {}, τ {}{}{}), weight lr {}{}",
            p.pdp_epochs,
            hook.ramp.start,
            hook.ramp.end,
            p.pdp_tau,
            if p.pdp_tau_absolute { "" } else { " t²" },
            if p.pdp_t_grad { ", gradient into t" } else { "" },
            cfg.lr,
            if resuming { " (resuming from the last completed epoch)" } else { "" }
        ));
        let data = cx.phase_data();
        let (outcome, collapse) = cx.train_phase("PDP's soft-mask phase", cfg, &data, hook)?;
        Ok((outcome.model.valid(), collapse))
    }

    fn ramp(&self, cx: &MethodContext) -> Ramp {
        Ramp::new(
            &self.plan,
            cx.data.train.num_batches() * self.plan.pdp_epochs,
        )
    }

    fn prune_weights(
        &mut self,
        cx: &mut MethodContext,
        budget: WeightBudget,
    ) -> Result<MethodOutcome> {
        let p = &self.plan;
        let graph = &cx.dense.graph;
        let layers = weight_layers(graph, cx.protect, budget.pattern())?;
        let density = p.allocation.unwrap_or(Density::Global);
        let mode = WeightMode {
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
        };
        let mut hook = PdpHook::new(mode, self.ramp(cx), cx.dense)?;
        let (trained, collapse) = self.train(cx, &budget.to_string(), &mut hook)?;
        let hard = hook.mode.harden(hook.targets()?, &trained, cx.device)?;
        let model = hard.apply(trained, None)?;
        Ok(MethodOutcome {
            model,
            measured_ms: None,
            allocation: match budget {
                WeightBudget::NM { .. } => format!("pdp {}", budget.pattern()),
                WeightBudget::Sparsity(_) => format!("pdp {density}"),
            },
            history: Some(hook.mode.history(&hook.trace, &cx.dense.graph)),
            cost: None,
            collapse,
        })
    }

    fn prune_channels(&mut self, cx: &mut MethodContext) -> Result<MethodOutcome> {
        let cb = cx.channel_budget()?;
        let p = &self.plan;
        let allocation = p.channel_allocation();
        let groups = cx.groups.to_vec();
        let (resource, limit, round_to) = (cb.budget.resource, cb.limit, cx.round_to);
        // The final widths: the budget met by filter norm, on the weights at the ramp's start.
        // The closure owns its cost model (the session's is borrowed).
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
            // Filled up to the limit now, as hardening would at the end: the phase then trains
            // toward the widths it will keep, and no channel the mask switched off comes back.
            let filled = allocate_filled(
                &solve_groups,
                &scores,
                &budget,
                cost.as_ref(),
                allocation,
                round_to,
            )?;
            Ok((0..solve_groups.len())
                .map(|g| filled.kept(&solve_groups, g).len())
                .collect())
        };
        let mode = ChannelMode {
            mask: PdpChannelMask::new(&groups, p.temperature(), p.pdp_t_grad),
            groups,
            solve: Box::new(solve),
        };
        let mut hook = PdpHook::new(mode, self.ramp(cx), cx.dense)?;
        let what = format!("{}, {} allocation", cb.budget, value_name(allocation));
        let (trained, collapse) = self.train(cx, &what, &mut hook)?;
        let widths = hook.targets()?;
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
            history: Some(hook.mode.history(&hook.trace, &cx.dense.graph)),
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
    use super::{PdpHook, PdpPlan, Ramp, Trace, WeightMode};
    use crate::prune::allocation::Target;
    use crate::prune::methods::Flow;
    use crate::train::{StepInfo, TrainHook};

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

    /// A start that rounds to the end of a short phase still gives a ramp (no empty range).
    #[test]
    fn a_late_start_on_a_short_phase_still_ramps() {
        let plan = PdpPlan {
            pdp_start: Some(0.99),
            pdp_end: 1.0,
            ..PdpPlan::default()
        };
        let r = Ramp::new(&plan, 30);
        assert_eq!((r.start, r.end), (29, 30));
        assert_eq!(r.at(28), 0.0);
        assert_eq!(r.at(29), 1.0);
        let r = Ramp::new(&plan, 0);
        assert!(r.end > r.start);
    }

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
            mode: WeightMode {
                soft: SoftWeightMasks::new(&g, layers.clone(), mask),
                budget: WeightBudget::Sparsity(0.75),
                density: Density::Global,
            },
            ramp: Ramp { start: 10, end: 20 },
            targets: Some(kept),
            trace: Trace::default(),
        };
        let model = crate::model::Model::init(g.clone(), 0, &burn::tensor::Device::flex()).unwrap();
        let fc1 = layers.iter().find(|l| l.name == "fc1").unwrap().node;
        let conv1 = layers.iter().find(|l| l.name == "conv1").unwrap().node;
        let at = |hook: &mut PdpHook<WeightMode>, global_step| {
            let info = StepInfo {
                epoch: 0,
                step_in_epoch: global_step,
                global_step,
                lr: 0.1,
                steps_per_epoch: 1000,
                epochs: 1,
            };
            hook.before_step(&info, &model).unwrap();
            let t = &hook.mode.soft.mask.targets;
            (t[fc1], t[conv1])
        };
        assert_eq!(at(&mut hook, 9), (0.0, 0.0));
        let (mid, first) = at(&mut hook, 14);
        assert!((mid - 0.75 * 0.5).abs() < 1e-12 && first == 0.0, "{mid}");
        assert!((at(&mut hook, 19).0 - 0.75).abs() < 1e-12);
        assert!((at(&mut hook, 500).0 - 0.75).abs() < 1e-12);
    }
}
