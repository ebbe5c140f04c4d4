//! PDP's soft weight mask (Cho et al., NeurIPS 2023; ALGORITHMS.md "PDP"): no extra
//! parameters, every forward pass computes `m(w) = sigmoid((w² − t²) / τ)` from the weights
//! themselves and the layer computes with `m(w) w`. The threshold `t` comes from the weights'
//! order statistics at the layer's current target sparsity: for a whole layer the midpoint
//! between the smallest kept and the largest pruned `|w|`, for N:M one per group of M, the
//! midpoint of its N-th and (N+1)-th largest `|w|`. Found by selection, not a full sort.
//!
//! Design choices (ALGORITHMS.md leaves them open): `τ` is relative to `t²` by default
//! (`τ = k t²`, so one setting suits layers whose weights differ in scale by orders of
//! magnitude), absolute on request; `t` is computed from detached weights, so no gradient
//! flows into it (it depends on two boundary weights only, and their gradient through `t` is
//! noise next to their own). Hardening at `m ≥ 0.5` is `|w| ≥ t`: exactly the magnitude
//! masks of [`super::weights`] at the same targets.
//!
//! This module is the mask; the PDP method (its schedule and the session plug-in) builds on it.

use burn::tensor::activation::sigmoid;
use burn::tensor::{Tensor, TensorData};
use serde::{Deserialize, Serialize};

use super::weights::{Pattern, SoftMask, WeightLayer, kept_for};
use crate::model::Weight;

/// PDP's temperature.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Temperature {
    /// `τ = k t²` per threshold.
    Relative(f64),
    /// `τ` as given, for every layer.
    Absolute(f64),
}

/// `t²` for `values` (a layer's weights, row-major) at `sparsity` under `pattern`: one value
/// for a whole layer, or one per weight (its group's) for N:M. `None` when nothing is pruned.
pub fn thresholds(
    layer: &WeightLayer,
    values: &[f32],
    pattern: Pattern,
    sparsity: f64,
) -> Option<Vec<f32>> {
    match pattern {
        Pattern::Unstructured => {
            let n = values.len();
            let kept = kept_for(n, sparsity);
            if kept == n || n == 0 {
                return None;
            }
            let mut a: Vec<f32> = values.iter().map(|v| v.abs()).collect();
            // After selecting the (n - kept)-th smallest, everything before it is smaller:
            // the largest pruned |w| is the maximum of that part.
            let cut = n - kept;
            let (pruned, &mut smallest_kept, _) = a.select_nth_unstable_by(cut, f32::total_cmp);
            let largest_pruned = pruned.iter().copied().fold(0.0f32, f32::max);
            let t = 0.5 * (smallest_kept + largest_pruned);
            Some(vec![t * t])
        }
        Pattern::NM { n, m } => {
            let mut t2 = vec![0.0f32; values.len()];
            let mut group: Vec<f32> = Vec::with_capacity(m);
            layer.for_each_group(m, |idx| {
                group.clear();
                group.extend(idx.iter().map(|&i| values[i].abs()));
                group.sort_by(|a, b| b.total_cmp(a));
                let t = 0.5 * (group[n - 1] + group[n]);
                for &i in idx {
                    t2[i] = t * t;
                }
            });
            Some(t2)
        }
    }
}

/// `m(w) = sigmoid((w² − t²) / τ)` for weights `w` and thresholds `t2` (broadcast from one
/// value or one per weight), as a tensor on `w`'s device; `t2` carries no gradient.
pub fn soft_mask<const D: usize>(w: &Tensor<D>, t2: &[f32], temperature: Temperature) -> Tensor<D> {
    let dims = w.dims();
    let device = w.device();
    let shape: [usize; D] = if t2.len() == 1 { [1; D] } else { dims };
    let t2_tensor = Tensor::<D>::from_data(TensorData::new(t2.to_vec(), shape), &device);
    let tau = match temperature {
        Temperature::Relative(k) => {
            // A layer (or group) whose threshold is 0 keeps a small positive τ.
            let tau: Vec<f32> = t2.iter().map(|&t| ((k as f32) * t).max(1e-12)).collect();
            Tensor::<D>::from_data(TensorData::new(tau, shape), &device)
        }
        Temperature::Absolute(a) => Tensor::<D>::ones(shape, &device).mul_scalar(a),
    };
    sigmoid((w.clone() * w.clone() - t2_tensor) / tau)
}

/// PDP's soft mask on each masked layer, at per-layer target sparsities (by graph node; the
/// schedule raises them during training). N:M layers use their groups' thresholds.
#[derive(Debug, Clone)]
pub struct PdpMask {
    pub pattern: Pattern,
    pub temperature: Temperature,
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
        let values = match w
            .clone()
            .detach()
            .into_data()
            .convert::<f32>()
            .try_into_vec::<f32>()
        {
            Ok(v) => v,
            Err(_) => return w,
        };
        match thresholds(layer, &values, self.pattern, sparsity) {
            Some(t2) => soft_mask(&w, &t2, self.temperature) * w,
            None => w,
        }
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
