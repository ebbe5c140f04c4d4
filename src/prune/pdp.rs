//! PDP's soft masks (Cho et al., NeurIPS 2023; ALGORITHMS.md "PDP"): no extra parameters,
//! every forward pass computes `m = sigmoid((s² − t²) / τ)` from the weights themselves, where
//! `s` is a weight's magnitude (weight masks: the layer computes with `m(w) w`) or an output
//! channel's filter norm (channel masks: the channel's output is multiplied by `m`). The
//! threshold `t` comes from the scores' order statistics at the current target: the midpoint
//! between the smallest kept and the largest pruned score, one per layer, per N:M group (its
//! N-th and (N+1)-th largest `|w|`) or per channel group. Found by selection, not a full sort.
//!
//! Design choices (ALGORITHMS.md leaves them open):
//! - `τ` is relative to `t²` by default (`τ = k t²`, so one setting suits layers whose
//!   weights differ in scale by orders of magnitude), absolute on request; `τ` itself never
//!   carries gradient.
//! - `t` carries no gradient by default ([`PdpMask::t_grad`] off). With it on, `t` is computed
//!   on the tensors from its two boundary scores, so those two weights (or channels) also
//!   get the gradient through every other weight's mask, as one public port does. Detached is
//!   the default because it is the simpler rule and, measured on LeNet-5 (BENCHMARKS.md q),
//!   the setting made no difference beyond the spread between seeds.
//! - Hardening at `m ≥ 0.5` is `s ≥ t`: exactly the magnitude masks of [`super::weights`] at
//!   the same targets, or the top channels by filter norm.
//!
//! This module is the masks; the PDP method (its schedule and the session plug-in) builds on
//! them.

use burn::tensor::activation::sigmoid;
use burn::tensor::{Int, Tensor, TensorData};
use serde::{Deserialize, Serialize};

use super::groups::{ChannelGroup, Role};
use super::mask::ChannelMasks;
use super::weights::{Pattern, SoftMask, WeightLayer, kept_for};
use crate::error::{LopperError, Result};
use crate::graph::Node;
use crate::model::{Layer, Model, NodeHook, Weight};

/// PDP's temperature.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Temperature {
    /// `τ = k t²` per threshold.
    Relative(f64),
    /// `τ` as given, for every layer.
    Absolute(f64),
}

impl Temperature {
    /// `τ` for a threshold `t²` (a threshold of 0 keeps a small positive τ).
    fn tau(self, t2: f32) -> f32 {
        match self {
            Temperature::Relative(k) => ((k as f32) * t2).max(1e-12),
            Temperature::Absolute(a) => a as f32,
        }
    }
}

/// Where the scores are cut: for each threshold the index of the smallest kept score and of
/// the largest pruned one, and which threshold each score uses (empty: the only one).
#[derive(Debug, Clone, PartialEq)]
pub struct Cuts {
    pub pairs: Vec<(usize, usize)>,
    pub of: Vec<usize>,
}

impl Cuts {
    /// One cut keeping the `kept` largest of `scores`; `None` when nothing (or everything) is
    /// cut.
    pub fn top(scores: &[f32], kept: usize) -> Option<Cuts> {
        let n = scores.len();
        if kept == 0 || kept >= n {
            return None;
        }
        let mut idx: Vec<usize> = (0..n).collect();
        // After selecting the (n - kept)-th smallest, everything before it is smaller: the
        // largest pruned score is the maximum of that part.
        let cut = n - kept;
        let (pruned, &mut smallest_kept, _) =
            idx.select_nth_unstable_by(cut, |&a, &b| scores[a].total_cmp(&scores[b]));
        let largest_pruned = pruned
            .iter()
            .copied()
            .max_by(|&a, &b| scores[a].total_cmp(&scores[b]))?;
        Some(Cuts {
            pairs: vec![(smallest_kept, largest_pruned)],
            of: vec![],
        })
    }

    /// The cuts of `values` (a layer's weights, row-major, scored by |w|) at `sparsity` under
    /// `pattern`.
    pub fn of_weights(
        layer: &WeightLayer,
        values: &[f32],
        pattern: Pattern,
        sparsity: f64,
    ) -> Option<Cuts> {
        match pattern {
            Pattern::Unstructured => {
                let abs: Vec<f32> = values.iter().map(|v| v.abs()).collect();
                Cuts::top(&abs, kept_for(values.len(), sparsity))
            }
            Pattern::NM { n, m } => {
                let mut cuts = Cuts {
                    pairs: vec![],
                    of: vec![0; values.len()],
                };
                let mut group: Vec<usize> = Vec::with_capacity(m);
                layer.for_each_group(m, |idx| {
                    group.clear();
                    group.extend_from_slice(idx);
                    group.sort_by(|&a, &b| values[b].abs().total_cmp(&values[a].abs()));
                    for &i in idx {
                        cuts.of[i] = cuts.pairs.len();
                    }
                    cuts.pairs.push((group[n - 1], group[n]));
                });
                Some(cuts)
            }
        }
    }

    /// `t` per threshold from the scores (host values).
    fn t(&self, scores: &[f32]) -> Vec<f32> {
        self.pairs
            .iter()
            .map(|&(a, b)| 0.5 * (scores[a] + scores[b]))
            .collect()
    }

    /// `t` per threshold on the scores' tensor (flattened), carrying their gradient.
    fn t_tensor(&self, scores: Tensor<1>) -> Tensor<1> {
        let device = scores.device();
        let index = |pick: fn(&(usize, usize)) -> usize| {
            let v: Vec<i64> = self.pairs.iter().map(|p| pick(p) as i64).collect();
            let n = v.len();
            Tensor::<1, Int>::from_data(TensorData::new(v, [n]), &device)
        };
        (scores.clone().select(0, index(|p| p.0)) + scores.select(0, index(|p| p.1))) * 0.5
    }

    /// Spreads one value per threshold to one per score (a no-op for a single threshold).
    fn spread(&self, per_cut: &[f32]) -> Vec<f32> {
        if self.of.is_empty() {
            per_cut.to_vec()
        } else {
            self.of.iter().map(|&c| per_cut[c]).collect()
        }
    }

    fn spread_tensor(&self, per_cut: Tensor<1>) -> Tensor<1> {
        if self.of.is_empty() {
            return per_cut;
        }
        let device = per_cut.device();
        let v: Vec<i64> = self.of.iter().map(|&c| c as i64).collect();
        let n = v.len();
        per_cut.select(
            0,
            Tensor::<1, Int>::from_data(TensorData::new(v, [n]), &device),
        )
    }
}

/// `t²` for `values` (a layer's weights, row-major) at `sparsity` under `pattern`: one value
/// for a whole layer, or one per weight (its group's) for N:M. `None` when nothing is pruned.
pub fn thresholds(
    layer: &WeightLayer,
    values: &[f32],
    pattern: Pattern,
    sparsity: f64,
) -> Option<Vec<f32>> {
    let cuts = Cuts::of_weights(layer, values, pattern, sparsity)?;
    let abs: Vec<f32> = values.iter().map(|v| v.abs()).collect();
    let t2: Vec<f32> = cuts.t(&abs).iter().map(|t| t * t).collect();
    Some(cuts.spread(&t2))
}

/// `m(w) = sigmoid((w² − t²) / τ)` for weights `w` and thresholds `t2` (broadcast from one
/// value or one per weight), as a tensor on `w`'s device; `t2` carries no gradient.
pub fn soft_mask<const D: usize>(w: &Tensor<D>, t2: &[f32], temperature: Temperature) -> Tensor<D> {
    let dims = w.dims();
    let device = w.device();
    let shape: [usize; D] = if t2.len() == 1 { [1; D] } else { dims };
    let t2_tensor = Tensor::<D>::from_data(TensorData::new(t2.to_vec(), shape), &device);
    let tau: Vec<f32> = t2.iter().map(|&t| temperature.tau(t)).collect();
    let tau = Tensor::<D>::from_data(TensorData::new(tau, shape), &device);
    sigmoid((w.clone() * w.clone() - t2_tensor) / tau)
}

/// The soft mask of scores `s` (a tensor whose squares are `s2`) cut at `cuts`: `t` from the
/// host scores, or, with `t_grad`, from the tensor so that it carries gradient.
fn cut_mask(
    s: impl FnOnce() -> Tensor<1>,
    s2: Tensor<1>,
    host: &[f32],
    cuts: &Cuts,
    temperature: Temperature,
    t_grad: bool,
) -> Tensor<1> {
    let device = s2.device();
    // One threshold broadcasts over every score; several come one per score.
    let n = if cuts.of.is_empty() { 1 } else { host.len() };
    let t = cuts.t(host);
    let tau: Vec<f32> = cuts.spread(&t.iter().map(|t| temperature.tau(t * t)).collect::<Vec<_>>());
    let tau = Tensor::<1>::from_data(TensorData::new(tau, [n]), &device);
    let t2 = if t_grad {
        let t = cuts.spread_tensor(cuts.t_tensor(s()));
        t.clone() * t
    } else {
        let t2: Vec<f32> = cuts.spread(&t.iter().map(|t| t * t).collect::<Vec<_>>());
        Tensor::<1>::from_data(TensorData::new(t2, [n]), &device)
    };
    sigmoid((s2 - t2) / tau)
}

fn host_values<const D: usize>(t: &Tensor<D>) -> Option<Vec<f32>> {
    t.clone()
        .detach()
        .into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .ok()
}

/// PDP's soft mask on each masked layer, at per-layer target sparsities (by graph node; the
/// schedule raises them during training). N:M layers use their groups' thresholds.
#[derive(Debug, Clone)]
pub struct PdpMask {
    pub pattern: Pattern,
    pub temperature: Temperature,
    /// Whether `t` carries gradient (see the module docs).
    pub t_grad: bool,
    /// Target sparsity by graph node (0: the layer computes with its weights unchanged). For
    /// N:M a positive target switches the layer's mask on at the pattern.
    pub targets: Vec<f64>,
}

impl PdpMask {
    fn masked<const D: usize>(&self, layer: &WeightLayer, w: Tensor<D>) -> Tensor<D> {
        let sparsity = self.targets.get(layer.node).copied().unwrap_or(0.0);
        if sparsity <= 0.0 {
            return w;
        }
        let Some(values) = host_values(&w) else {
            return w;
        };
        let Some(cuts) = Cuts::of_weights(layer, &values, self.pattern, sparsity) else {
            return w;
        };
        let dims = w.dims();
        let n = values.len();
        let flat = w.clone().reshape([n]);
        let abs: Vec<f32> = values.iter().map(|v| v.abs()).collect();
        let m = cut_mask(
            || flat.clone().abs(),
            flat.clone() * flat.clone(),
            &abs,
            &cuts,
            self.temperature,
            self.t_grad,
        );
        m.reshape(dims) * w
    }

    /// `1 − mean m(w)` over a layer's weights at its current target: the share of the layer
    /// the soft mask takes away (the target itself once the mask is sharp).
    pub fn soft_sparsity(&self, layer: &WeightLayer, values: &[f32]) -> f64 {
        let sparsity = self.targets.get(layer.node).copied().unwrap_or(0.0);
        let Some(t2) = (sparsity > 0.0)
            .then(|| thresholds(layer, values, self.pattern, sparsity))
            .flatten()
        else {
            return 0.0;
        };
        let kept: f64 = values
            .iter()
            .enumerate()
            .map(|(i, w)| {
                let t2 = if t2.len() == 1 { t2[0] } else { t2[i] };
                let z = (w * w - t2) / self.temperature.tau(t2);
                1.0 / (1.0 + (-z as f64).exp())
            })
            .sum();
        1.0 - kept / values.len().max(1) as f64
    }
}

impl SoftMask for PdpMask {
    fn apply(&self, layer: &WeightLayer, weight: Weight) -> Weight {
        match weight {
            Weight::Conv(w) => Weight::Conv(self.masked(layer, w)),
            Weight::Linear(w) => Weight::Linear(self.masked(layer, w)),
        }
    }
}

/// PDP's channel score, squared: per output channel of `group`, the sum of squares of its
/// filters in every producer of the group (one L2 norm over them all), as a tensor on the
/// model's device, carrying the weights' gradient on an autodiff device.
pub fn channel_norms2(model: &Model, group: &ChannelGroup) -> Result<Tensor<1>> {
    let mut total: Option<Tensor<1>> = None;
    for m in group.members.iter().filter(|m| m.role == Role::Producer) {
        let s = match model.layers.get(m.node).and_then(|l| l.as_ref()) {
            Some(Layer::Conv(c)) => {
                let w = c.weight.val();
                let [o, i, kh, kw] = w.dims();
                (w.clone() * w)
                    .reshape([o, i * kh * kw])
                    .sum_dim(1)
                    .reshape([o])
            }
            Some(Layer::Linear(l)) => {
                let w = l.weight.val();
                let [_, o] = w.dims();
                (w.clone() * w).sum_dim(0).reshape([o])
            }
            _ => {
                return Err(LopperError::Graph(format!(
                    "node {} produces channels but is not a convolution or linear layer",
                    m.node
                )));
            }
        };
        total = Some(match total {
            Some(t) => t + s,
            None => s,
        });
    }
    total.ok_or_else(|| LopperError::Graph(format!("channel group {} has no producer", group.id)))
}

/// The channel norms of `group` on the host (for selections and reports).
pub fn channel_norms(model: &Model, group: &ChannelGroup) -> Result<Vec<f32>> {
    let s2 = channel_norms2(model, group)?;
    let v = host_values(&s2)
        .ok_or_else(|| LopperError::Graph("cannot read the channel norms".into()))?;
    Ok(v.into_iter().map(f32::sqrt).collect())
}

/// PDP's soft channel masks: per channel group at its current target width, the filter norms'
/// mask `m_c = sigmoid((s_c² − t²) / τ)` on the group's channels, through the channel masks
/// every structured method uses ([`ChannelMasks`]), so the hardened result is removed
/// physically. Recomputed from the weights before every forward pass ([`Self::update`]).
pub struct PdpChannelMask {
    pub temperature: Temperature,
    pub t_grad: bool,
    /// Channels each group keeps at its current target (its full width: no mask).
    pub kept: Vec<usize>,
    /// The soft channel count of each group at the last update (Σ m; its width unmasked).
    pub soft_counts: Vec<f64>,
    masks: Option<ChannelMasks>,
}

impl PdpChannelMask {
    pub fn new(groups: &[ChannelGroup], temperature: Temperature, t_grad: bool) -> Self {
        let kept: Vec<usize> = groups.iter().map(|g| g.channels).collect();
        PdpChannelMask {
            temperature,
            t_grad,
            soft_counts: kept.iter().map(|&k| k as f64).collect(),
            kept,
            masks: None,
        }
    }

    /// Recomputes the masks from `model`'s weights for the forward passes to come; on an
    /// autodiff device they carry the weights' gradient.
    pub fn update(&mut self, model: &Model, groups: &[ChannelGroup]) -> Result<()> {
        let mut masks: Vec<Option<Tensor<1>>> = vec![None; groups.len()];
        let mut device = None;
        for g in groups {
            let k = self.kept[g.id];
            self.soft_counts[g.id] = g.channels as f64;
            if k >= g.channels {
                continue;
            }
            let s2 = channel_norms2(model, g)?;
            let host: Vec<f32> = host_values(&s2)
                .ok_or_else(|| LopperError::Graph("cannot read the channel norms".into()))?
                .into_iter()
                .map(f32::sqrt)
                .collect();
            let Some(cuts) = Cuts::top(&host, k) else {
                continue;
            };
            let t = cuts.t(&host)[0];
            let tau = self.temperature.tau(t * t);
            self.soft_counts[g.id] = host
                .iter()
                .map(|s| 1.0 / (1.0 + (-((s * s - t * t) / tau) as f64).exp()))
                .sum();
            device = Some(s2.device());
            // The square root's gradient at a zero norm is infinite; a tiny floor keeps it
            // finite.
            let root = s2.clone();
            masks[g.id] = Some(cut_mask(
                move || root.add_scalar(1e-12).sqrt(),
                s2,
                &host,
                &cuts,
                self.temperature,
                self.t_grad,
            ));
        }
        self.masks = device.map(|d| ChannelMasks::new(&model.graph, groups, &masks, &d));
        Ok(())
    }
}

impl NodeHook for PdpChannelMask {
    fn channel_scale(&self, index: usize, node: &Node, autodiff: bool) -> Option<Tensor<1>> {
        self.masks
            .as_ref()
            .and_then(|m| m.channel_scale(index, node, autodiff))
    }
    fn reads_output(&self, _index: usize, _node: &Node) -> bool {
        false
    }
}
