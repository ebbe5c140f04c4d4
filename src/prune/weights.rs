//! Weight masks: the second mask mechanism (the first, channel masks, is [`super::mask`]).
//!
//! A weight mask is one factor per weight of a convolution or linear layer. It multiplies the
//! weight inside the forward pass ([`NodeHook::weight`]), in training and in evaluation, so
//! the gradient of a masked weight is zero; the stored weight is zeroed whenever the mask
//! changes, and so are its optimiser moments ([`WeightMasks::apply`]). A weight pruned by a
//! hard mask therefore stays exactly zero through any amount of training: its gradient, its
//! weight decay (of a zero) and its momentum are all zero. Soft masks (PDP) are a function of
//! the weight through the same hook.
//!
//! Patterns: unstructured (any weight), and N:M (at most N non-zeros in every group of M
//! consecutive input channels, at each output channel and kernel position: the layout
//! `[out, kh, kw, in]` that sparse tensor cores and NVIDIA's ASP use). A layer whose input
//! channels (per convolution group) are not a multiple of M stays dense; so do the first layer
//! and the classifier by default, and the layers the user protects.

use std::fmt;
use std::str::FromStr;

use base64::Engine;
use burn::tensor::{Device, Tensor, TensorData};
use serde::{Deserialize, Serialize};

use crate::count::node_macs;
use crate::error::{LopperError, Result};
use crate::graph::{Graph, Node, Op};
use crate::model::{Layer, Model, NodeHook, Weight, param_id};
use crate::train::{OptimizerState, TrainHook};

/// Which weights may be zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Pattern {
    /// Any weight.
    Unstructured,
    /// At most `n` non-zeros in every group of `m` consecutive input channels.
    NM { n: usize, m: usize },
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Pattern::Unstructured => f.write_str("unstructured"),
            Pattern::NM { n, m } => write!(f, "{n}:{m}"),
        }
    }
}

/// A weight-sparsity budget: `sparsity=0.9` (the share of the prunable weights that are zero)
/// or `nm=2:4`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum WeightBudget {
    Sparsity(f64),
    NM { n: usize, m: usize },
}

impl WeightBudget {
    pub fn pattern(&self) -> Pattern {
        match *self {
            WeightBudget::Sparsity(_) => Pattern::Unstructured,
            WeightBudget::NM { n, m } => Pattern::NM { n, m },
        }
    }

    /// The share of the prunable weights that are zero at the end.
    pub fn sparsity(&self) -> f64 {
        match *self {
            WeightBudget::Sparsity(s) => s,
            WeightBudget::NM { n, m } => 1.0 - n as f64 / m as f64,
        }
    }

    /// Whether `s` names a weight budget (`sparsity=` or `nm=`) rather than a channel one.
    pub fn is_weight_budget(s: &str) -> bool {
        let kind = s.split_once('=').map_or("", |(k, _)| k.trim());
        kind.eq_ignore_ascii_case("sparsity") || kind.eq_ignore_ascii_case("nm")
    }
}

impl fmt::Display for WeightBudget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WeightBudget::Sparsity(s) => write!(f, "sparsity={s}"),
            WeightBudget::NM { n, m } => write!(f, "nm={n}:{m}"),
        }
    }
}

impl FromStr for WeightBudget {
    type Err = LopperError;
    fn from_str(s: &str) -> Result<WeightBudget> {
        let bad = |why: &str| {
            LopperError::Config(format!(
                "invalid budget '{s}': {why} (examples: sparsity=0.9, nm=2:4)"
            ))
        };
        let (kind, value) = s
            .split_once('=')
            .ok_or_else(|| bad("expected RESOURCE=VALUE"))?;
        let value = value.trim();
        match kind.trim().to_ascii_lowercase().as_str() {
            "sparsity" => {
                let x: f64 = value
                    .parse()
                    .map_err(|_| bad("the sparsity is not a number"))?;
                if !(x > 0.0 && x < 1.0) {
                    return Err(bad(
                        "the sparsity is the share of the weights that are zero, between 0 and 1",
                    ));
                }
                Ok(WeightBudget::Sparsity(x))
            }
            "nm" => {
                let (n, m) = value
                    .split_once(':')
                    .ok_or_else(|| bad("an N:M pattern is two whole numbers, N:M"))?;
                let (n, m): (usize, usize) = match (n.trim().parse(), m.trim().parse()) {
                    (Ok(n), Ok(m)) => (n, m),
                    _ => return Err(bad("an N:M pattern is two whole numbers, N:M")),
                };
                if n == 0 || n >= m || m > 64 {
                    return Err(bad("N:M keeps N of every M weights: 0 < N < M <= 64"));
                }
                Ok(WeightBudget::NM { n, m })
            }
            _ => Err(bad("a weight budget is sparsity= or nm=")),
        }
    }
}

/// Why a convolution or linear layer's weights stay dense.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DenseReason {
    /// The first layer (few weights, and every later layer depends on it).
    FirstLayer,
    /// The layer that produces the logits.
    Classifier,
    /// Named by `--protect`.
    Protected,
    /// Its input channels (per convolution group) are not a multiple of M.
    NotMultipleOfM,
}

impl fmt::Display for DenseReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DenseReason::FirstLayer => "first layer",
            DenseReason::Classifier => "classifier",
            DenseReason::Protected => "protected",
            DenseReason::NotMultipleOfM => "input channels not a multiple of M",
        })
    }
}

/// A convolution or linear layer's weight, and whether it is masked.
#[derive(Debug, Clone, PartialEq)]
pub struct WeightLayer {
    /// The graph node.
    pub node: usize,
    pub name: String,
    /// The stored weight's shape: `[out, in/groups, kh, kw]` or `[in, out]`.
    pub shape: Vec<usize>,
    /// `None`: masked; otherwise why the layer stays dense.
    pub dense: Option<DenseReason>,
}

impl WeightLayer {
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    pub fn is_masked(&self) -> bool {
        self.dense.is_none()
    }

    /// The input-channel count along which N:M groups run.
    fn in_channels(&self) -> usize {
        if self.shape.len() == 4 {
            self.shape[1]
        } else {
            self.shape[0]
        }
    }

    /// Calls `f` with the flat indices of every group of `m` consecutive input channels (see
    /// the module docs for the layout); the layer's input channels must be a multiple of `m`.
    pub fn for_each_group(&self, m: usize, mut f: impl FnMut(&[usize])) {
        let mut idx = vec![0; m];
        if let [out, cin, kh, kw] = self.shape[..] {
            for o in 0..out {
                for cb in (0..cin).step_by(m) {
                    for y in 0..kh {
                        for x in 0..kw {
                            for (j, slot) in idx.iter_mut().enumerate() {
                                *slot = ((o * cin + cb + j) * kh + y) * kw + x;
                            }
                            f(&idx);
                        }
                    }
                }
            }
        } else if let [cin, out] = self.shape[..] {
            for cb in (0..cin).step_by(m) {
                for o in 0..out {
                    for (j, slot) in idx.iter_mut().enumerate() {
                        *slot = (cb + j) * out + o;
                    }
                    f(&idx);
                }
            }
        }
    }
}

/// The convolution and linear layers of `graph`, each marked masked or dense under `pattern`:
/// the first layer and the classifier stay dense, and so do the layers in `protect` (node
/// names; an unknown name is an error).
pub fn weight_layers(
    graph: &Graph,
    protect: &[String],
    pattern: Pattern,
) -> Result<Vec<WeightLayer>> {
    for p in protect {
        if !graph.nodes.iter().any(|n| &n.name == p) {
            return Err(LopperError::Config(format!(
                "--protect names '{p}', which is not a layer of {}",
                graph.name
            )));
        }
    }
    let weighted: Vec<usize> = (0..graph.nodes.len())
        .filter(|&i| matches!(graph.nodes[i].op, Op::Conv2d { .. } | Op::Linear { .. }))
        .collect();
    let first = weighted.first().copied();
    let last = weighted.last().copied();
    Ok(weighted
        .into_iter()
        .map(|i| {
            let node = &graph.nodes[i];
            let shape = node
                .op
                .param_shapes()
                .into_iter()
                .find(|(n, _)| *n == "weight")
                .map(|(_, s)| s)
                .unwrap_or_default();
            let mut layer = WeightLayer {
                node: i,
                name: node.name.clone(),
                shape,
                dense: None,
            };
            layer.dense = if Some(i) == first {
                Some(DenseReason::FirstLayer)
            } else if Some(i) == last {
                Some(DenseReason::Classifier)
            } else if protect.contains(&node.name) {
                Some(DenseReason::Protected)
            } else {
                match pattern {
                    Pattern::NM { m, .. } if !layer.in_channels().is_multiple_of(m) => {
                        Some(DenseReason::NotMultipleOfM)
                    }
                    _ => None,
                }
            };
            layer
        })
        .collect())
}

/// How a sparsity is spread over the masked layers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Density {
    /// Every layer at the same sparsity.
    #[default]
    Uniform,
    /// One threshold on the scores of all layers.
    Global,
    /// Erdős–Rényi-Kernel: density proportional to (sum of the weight's dims) / (their
    /// product), clamped at 1 (ALGORITHMS.md).
    Erk,
}

impl fmt::Display for Density {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Density::Uniform => "uniform",
            Density::Global => "global",
            Density::Erk => "erk",
        })
    }
}

/// How many weights stay when a share `sparsity` of `total` must be zero (at least that
/// share: the budget holds exactly).
pub fn kept_for(total: usize, sparsity: f64) -> usize {
    // 1e-9 absorbs the rounding of products like 0.9 * 1000.
    let zeros = ((sparsity * total as f64) - 1e-9).ceil().max(0.0) as usize;
    total - zeros.min(total)
}

/// ERK densities of layers with weights of `shapes` for an overall density `density`: each
/// layer's density is `eps * sum(dims) / prod(dims)`, `eps` solved so the kept weights total
/// `density` of all; a layer whose density would pass 1 is made dense and `eps` solved again.
pub fn erk_densities(shapes: &[Vec<usize>], density: f64) -> Vec<f64> {
    let n: Vec<f64> = shapes
        .iter()
        .map(|s| s.iter().product::<usize>() as f64)
        .collect();
    let raw: Vec<f64> = shapes
        .iter()
        .zip(&n)
        .map(|(s, &n)| s.iter().sum::<usize>() as f64 / n)
        .collect();
    let total: f64 = n.iter().sum();
    let mut dense = vec![false; shapes.len()];
    loop {
        let dense_n: f64 = (0..n.len()).filter(|&l| dense[l]).map(|l| n[l]).sum();
        let free: f64 = (0..n.len())
            .filter(|&l| !dense[l])
            .map(|l| raw[l] * n[l])
            .sum();
        let eps = if free > 0.0 {
            (density * total - dense_n).max(0.0) / free
        } else {
            0.0
        };
        let over: Vec<usize> = (0..n.len())
            .filter(|&l| !dense[l] && eps * raw[l] > 1.0)
            .collect();
        if over.is_empty() {
            return (0..n.len())
                .map(|l| if dense[l] { 1.0 } else { eps * raw[l] })
                .collect();
        }
        for l in over {
            dense[l] = true;
        }
    }
}

/// Per-layer kept counts that sum to exactly `kept` from real-valued shares `want` (largest
/// remainders first), each within its layer's size.
fn round_counts(want: &[f64], sizes: &[usize], kept: usize) -> Vec<usize> {
    let mut counts: Vec<usize> = want
        .iter()
        .zip(sizes)
        .map(|(&w, &n)| (w.floor().max(0.0) as usize).min(n))
        .collect();
    let mut order: Vec<usize> = (0..want.len()).collect();
    order.sort_by(|&a, &b| {
        let (ra, rb) = (want[a] - want[a].floor(), want[b] - want[b].floor());
        rb.total_cmp(&ra).then(a.cmp(&b))
    });
    let mut left = kept.saturating_sub(counts.iter().sum());
    // Rounds until the total is reached (a layer full in one round is skipped in the next).
    while left > 0 {
        let before = left;
        for &l in &order {
            if left == 0 {
                break;
            }
            if counts[l] < sizes[l] {
                counts[l] += 1;
                left -= 1;
            }
        }
        if left == before {
            break;
        }
    }
    counts
}

/// The 0/1 mask keeping the `k` largest `scores` (ties: the lower index stays).
pub fn top_k(scores: &[f64], k: usize) -> Vec<f32> {
    let mut mask = vec![0.0; scores.len()];
    if k == 0 {
        return mask;
    }
    let mut order: Vec<usize> = (0..scores.len()).collect();
    let k = k.min(scores.len());
    order.select_nth_unstable_by(k - 1, |&a, &b| {
        scores[b].total_cmp(&scores[a]).then(a.cmp(&b))
    });
    for &i in &order[..k] {
        mask[i] = 1.0;
    }
    mask
}

/// The N:M mask keeping the `n` largest scores of each group of `m` (ties: the lower index).
pub fn nm_mask(layer: &WeightLayer, scores: &[f64], n: usize, m: usize) -> Vec<f32> {
    let mut mask = vec![0.0; scores.len()];
    let mut order: Vec<usize> = Vec::with_capacity(m);
    layer.for_each_group(m, |idx| {
        order.clear();
        order.extend(idx.iter().copied());
        order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]).then(a.cmp(&b)));
        for &i in &order[..n] {
            mask[i] = 1.0;
        }
    });
    mask
}

/// Masks for the masked layers (in order) from per-weight `scores` (larger: more important):
/// an unstructured sparsity spread by `density`, or every layer at the N:M pattern. The
/// budget holds exactly: the kept weights are `kept_for(all masked weights, sparsity)`.
pub fn solve_masks(
    layers: &[&WeightLayer],
    scores: &[Vec<f64>],
    budget: WeightBudget,
    density: Density,
) -> Vec<Vec<f32>> {
    let sparsity = match budget {
        WeightBudget::NM { n, m } => {
            return layers
                .iter()
                .zip(scores)
                .map(|(l, s)| nm_mask(l, s, n, m))
                .collect();
        }
        WeightBudget::Sparsity(s) => s,
    };
    let sizes: Vec<usize> = layers.iter().map(|l| l.numel()).collect();
    let total: usize = sizes.iter().sum();
    let kept = kept_for(total, sparsity);
    let counts = match density {
        Density::Uniform => {
            let share = kept as f64 / total.max(1) as f64;
            let want: Vec<f64> = sizes.iter().map(|&n| share * n as f64).collect();
            round_counts(&want, &sizes, kept)
        }
        Density::Erk => {
            let shapes: Vec<Vec<usize>> = layers.iter().map(|l| l.shape.clone()).collect();
            let d = erk_densities(&shapes, kept as f64 / total.max(1) as f64);
            let want: Vec<f64> = d.iter().zip(&sizes).map(|(d, &n)| d * n as f64).collect();
            round_counts(&want, &sizes, kept)
        }
        Density::Global => {
            // One ranking over every layer's scores (ties: earlier layer, lower index).
            let mut all: Vec<(f64, u32, u32)> = scores
                .iter()
                .enumerate()
                .flat_map(|(l, s)| {
                    s.iter()
                        .enumerate()
                        .map(move |(i, &v)| (v, l as u32, i as u32))
                })
                .collect();
            let mut counts = vec![0; layers.len()];
            if kept > 0 {
                all.select_nth_unstable_by(kept - 1, |a, b| {
                    b.0.total_cmp(&a.0).then((a.1, a.2).cmp(&(b.1, b.2)))
                });
                for &(_, l, _) in &all[..kept] {
                    counts[l as usize] += 1;
                }
            }
            counts
        }
    };
    scores
        .iter()
        .zip(&counts)
        .map(|(s, &k)| top_k(s, k))
        .collect()
}

/// One masked layer's mask on both kinds of device.
struct DeviceMask {
    train: Weight,
    eval: Weight,
}

/// Hard masks on the masked weight layers of a model: the forward hook that applies them,
/// and the training hook that keeps them (fixed, as in fine-tuning; methods that change masks
/// during training wrap it).
pub struct WeightMasks {
    layers: Vec<WeightLayer>,
    /// One 0/1 mask per layer (`None` for dense ones), row-major in the weight's layout.
    masks: Vec<Option<Vec<f32>>>,
    /// The masks as tensors, by graph node.
    per_node: Vec<Option<DeviceMask>>,
    device: Device,
}

impl WeightMasks {
    /// All-ones masks on the masked layers of `layers` (`device`: the plain device; training
    /// forward passes get the masks on its autodiff device).
    pub fn new(graph: &Graph, layers: Vec<WeightLayer>, device: &Device) -> WeightMasks {
        let masks = layers
            .iter()
            .map(|l| l.is_masked().then(|| vec![1.0; l.numel()]))
            .collect();
        let mut w = WeightMasks {
            layers,
            masks,
            per_node: (0..graph.nodes.len()).map(|_| None).collect(),
            device: device.clone(),
        };
        w.upload();
        w
    }

    /// Masks that keep exactly the non-zero weights of `model`'s masked layers: a pruned
    /// model's masks, for fine-tuning it without regrowing what was cut. (A kept weight that
    /// is exactly zero stays zero too, which only adds to the sparsity.)
    pub fn from_zeros(
        model: &Model,
        layers: Vec<WeightLayer>,
        device: &Device,
    ) -> Result<WeightMasks> {
        let mut w = WeightMasks::new(&model.graph, layers, device);
        for (l, layer) in w.layers.iter().enumerate() {
            if layer.is_masked() {
                let values = weight_values(model, layer)?;
                w.masks[l] = Some(values.iter().map(|&v| f32::from(v != 0.0)).collect());
            }
        }
        w.upload();
        Ok(w)
    }

    pub fn layers(&self) -> &[WeightLayer] {
        &self.layers
    }

    /// The mask of layer `l` (in [`Self::layers`] order), `None` for a dense layer.
    pub fn mask(&self, l: usize) -> Option<&[f32]> {
        self.masks[l].as_deref()
    }

    /// Replaces the masks of the masked layers (in order; each the size of its weight).
    pub fn set(&mut self, masks: Vec<Vec<f32>>) -> Result<()> {
        let mut given = masks.into_iter();
        for (l, layer) in self.layers.iter().enumerate() {
            if layer.is_masked() {
                let m = given.next().ok_or_else(|| {
                    LopperError::Config("fewer weight masks than masked layers".into())
                })?;
                if m.len() != layer.numel() {
                    return Err(LopperError::Config(format!(
                        "the weight mask of '{}' has {} entries for {} weights",
                        layer.name,
                        m.len(),
                        layer.numel()
                    )));
                }
                self.masks[l] = Some(m);
            }
        }
        self.upload();
        Ok(())
    }

    fn upload(&mut self) {
        let train_device = self.device.clone().autodiff();
        for (layer, mask) in self.layers.iter().zip(&self.masks) {
            self.per_node[layer.node] = mask.as_ref().map(|m| {
                let on = |d: &Device| {
                    let data = TensorData::new(m.clone(), layer.shape.clone());
                    if layer.shape.len() == 4 {
                        Weight::Conv(Tensor::from_data(data, d))
                    } else {
                        Weight::Linear(Tensor::from_data(data, d))
                    }
                };
                DeviceMask {
                    train: on(&train_device),
                    eval: on(&self.device),
                }
            });
        }
    }

    /// `model` with its masked weights zeroed in storage (so exported weights are really
    /// zero) and, when given, their optimiser moments zeroed (so momentum cannot move them).
    pub fn apply(&self, mut model: Model, optim: Option<&mut OptimizerState>) -> Result<Model> {
        let mut moments = vec![];
        for (layer, mask) in self.layers.iter().zip(&self.masks) {
            let Some(mask) = mask else {
                continue;
            };
            let slot = model.layers.get_mut(layer.node).and_then(|l| l.take());
            let masked = match slot {
                Some(Layer::Conv(mut p)) => {
                    p.weight = p.weight.map(|t| mask_stored(t, mask));
                    Layer::Conv(p)
                }
                Some(Layer::Linear(mut p)) => {
                    p.weight = p.weight.map(|t| mask_stored(t, mask));
                    Layer::Linear(p)
                }
                _ => {
                    return Err(LopperError::Graph(format!(
                        "layer '{}' has no weight to mask",
                        layer.name
                    )));
                }
            };
            model.layers[layer.node] = Some(masked);
            moments.push((param_id(&format!("{}.weight", layer.name)), mask.clone()));
        }
        if let Some(optim) = optim {
            optim.scale(&moments)?;
        }
        Ok(model)
    }

    /// The masks, packed (one bit per weight, base64): a checkpoint's hook state.
    fn packed(&self) -> Vec<Option<String>> {
        self.masks
            .iter()
            .map(|m| {
                m.as_ref().map(|m| {
                    let mut bytes = vec![0u8; m.len().div_ceil(8)];
                    for (i, &v) in m.iter().enumerate() {
                        if v != 0.0 {
                            bytes[i / 8] |= 1 << (i % 8);
                        }
                    }
                    base64::engine::general_purpose::STANDARD.encode(bytes)
                })
            })
            .collect()
    }

    fn unpack(&mut self, packed: Vec<Option<String>>) -> Result<()> {
        let bad =
            || LopperError::Config("the checkpoint's weight masks do not fit this model".into());
        if packed.len() != self.layers.len() {
            return Err(bad());
        }
        let mut masks = vec![];
        for (layer, p) in self.layers.iter().zip(packed) {
            match (layer.is_masked(), p) {
                (true, Some(p)) => {
                    let bytes = base64::engine::general_purpose::STANDARD
                        .decode(p)
                        .map_err(|_| bad())?;
                    if bytes.len() != layer.numel().div_ceil(8) {
                        return Err(bad());
                    }
                    masks.push(
                        (0..layer.numel())
                            .map(|i| f32::from(bytes[i / 8] >> (i % 8) & 1 == 1))
                            .collect(),
                    );
                }
                (false, None) => {}
                _ => return Err(bad()),
            }
        }
        self.set(masks)
    }
}

/// `t * mask` as a stored parameter: a leaf that keeps `t`'s gradient setting.
fn mask_stored<const D: usize>(t: Tensor<D>, mask: &[f32]) -> Tensor<D> {
    let m = Tensor::from_data(TensorData::new(mask.to_vec(), t.dims()), &t.device());
    let grad = t.is_require_grad();
    (t * m).detach().set_require_grad(grad)
}

/// `model` with `layer`'s weight replaced by `values` (row-major, the weight's size), as a
/// leaf that keeps the parameter's gradient setting.
pub fn set_weight_values(mut model: Model, layer: &WeightLayer, values: Vec<f32>) -> Result<Model> {
    fn put<const D: usize>(t: Tensor<D>, values: Vec<f32>) -> Tensor<D> {
        let grad = t.is_require_grad();
        Tensor::<D>::from_data(TensorData::new(values, t.dims()), &t.device())
            .set_require_grad(grad)
    }
    if values.len() != layer.numel() {
        return Err(LopperError::Config(format!(
            "{} values for the {} weights of '{}'",
            values.len(),
            layer.numel(),
            layer.name
        )));
    }
    let slot = model.layers.get_mut(layer.node).and_then(|l| l.take());
    let replaced = match slot {
        Some(Layer::Conv(mut p)) => {
            p.weight = p.weight.map(|t| put(t, values));
            Layer::Conv(p)
        }
        Some(Layer::Linear(mut p)) => {
            p.weight = p.weight.map(|t| put(t, values));
            Layer::Linear(p)
        }
        _ => {
            return Err(LopperError::Graph(format!(
                "layer '{}' has no weight",
                layer.name
            )));
        }
    };
    model.layers[layer.node] = Some(replaced);
    Ok(model)
}

/// The values of `layer`'s weight in `model`, row-major.
pub fn weight_values(model: &Model, layer: &WeightLayer) -> Result<Vec<f32>> {
    let data = match model.layers.get(layer.node).and_then(|l| l.as_ref()) {
        Some(Layer::Conv(p)) => p.weight.val().into_data(),
        Some(Layer::Linear(p)) => p.weight.val().into_data(),
        _ => {
            return Err(LopperError::Graph(format!(
                "layer '{}' has no weight",
                layer.name
            )));
        }
    };
    data.convert::<f32>()
        .try_into_vec::<f32>()
        .map_err(|e| LopperError::Graph(format!("{e:?}")))
}

/// The checkpoint state of [`WeightMasks`].
#[derive(Serialize, Deserialize)]
struct MaskState {
    masks: Vec<Option<String>>,
}

impl NodeHook for WeightMasks {
    fn reads_output(&self, _index: usize, _node: &Node) -> bool {
        false
    }
    fn weight(&self, index: usize, _node: &Node, weight: Weight) -> Weight {
        let Some(dm) = self.per_node.get(index).and_then(|m| m.as_ref()) else {
            return weight;
        };
        match weight {
            Weight::Conv(w) => {
                let m = if w.is_autodiff() { &dm.train } else { &dm.eval };
                match m {
                    Weight::Conv(m) => Weight::Conv(w * m.clone()),
                    _ => Weight::Conv(w),
                }
            }
            Weight::Linear(w) => {
                let m = if w.is_autodiff() { &dm.train } else { &dm.eval };
                match m {
                    Weight::Linear(m) => Weight::Linear(w * m.clone()),
                    _ => Weight::Linear(w),
                }
            }
        }
    }
}

impl TrainHook for WeightMasks {
    fn node_hook(&self) -> Option<&dyn NodeHook> {
        Some(self)
    }
    fn state(&self) -> Result<Option<serde_json::Value>> {
        serde_json::to_value(MaskState {
            masks: self.packed(),
        })
        .map(Some)
        .map_err(|e| LopperError::Config(e.to_string()))
    }
    fn restore(&mut self, state: serde_json::Value) -> Result<()> {
        let s: MaskState =
            serde_json::from_value(state).map_err(|e| LopperError::Config(e.to_string()))?;
        self.unpack(s.masks)
    }
}

/// A soft weight mask: a differentiable function of a masked layer's weight, computed in
/// every forward pass (PDP's `m(w) w`). The gradient flows through it into the stored weight.
pub trait SoftMask {
    /// The weight layer `layer` computes with, from its stored `weight` (on whichever device
    /// the forward pass runs).
    fn apply(&self, layer: &WeightLayer, weight: Weight) -> Weight;
}

/// The forward hook of a [`SoftMask`] on the masked layers of `layers`.
pub struct SoftWeightMasks<S: SoftMask> {
    layers: Vec<WeightLayer>,
    /// Graph node → index in `layers`, for masked layers.
    by_node: Vec<Option<usize>>,
    pub mask: S,
}

impl<S: SoftMask> SoftWeightMasks<S> {
    pub fn new(graph: &Graph, layers: Vec<WeightLayer>, mask: S) -> Self {
        let mut by_node = vec![None; graph.nodes.len()];
        for (i, l) in layers.iter().enumerate() {
            if l.is_masked() {
                by_node[l.node] = Some(i);
            }
        }
        SoftWeightMasks {
            layers,
            by_node,
            mask,
        }
    }

    pub fn layers(&self) -> &[WeightLayer] {
        &self.layers
    }
}

impl<S: SoftMask> NodeHook for SoftWeightMasks<S> {
    fn reads_output(&self, _index: usize, _node: &Node) -> bool {
        false
    }
    fn weight(&self, index: usize, _node: &Node, weight: Weight) -> Weight {
        match self.by_node.get(index).copied().flatten() {
            Some(l) => self.mask.apply(&self.layers[l], weight),
            None => weight,
        }
    }
}

/// One layer's counts under a weight mask.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LayerSparsity {
    pub name: String,
    /// `conv` or `linear`.
    pub kind: String,
    /// The pattern the layer was pruned to, or `dense`.
    pub pattern: String,
    /// Why the layer stayed dense, if it did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dense_reason: Option<DenseReason>,
    pub params: u64,
    pub nonzero: u64,
    /// MACs per sample, and those whose weight is non-zero.
    pub macs: u64,
    pub nonzero_macs: u64,
}

impl LayerSparsity {
    pub fn sparsity(&self) -> f64 {
        1.0 - self.nonzero as f64 / self.params.max(1) as f64
    }
}

/// The weight sparsity of a model, per layer and in total (the export sidecar).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SparsityReport {
    pub model: String,
    pub pattern: Pattern,
    pub layers: Vec<LayerSparsity>,
    /// Weights of the masked layers, and how many are non-zero.
    pub prunable: u64,
    pub prunable_nonzero: u64,
    /// The share of the masked layers' weights that are zero.
    pub sparsity: f64,
    /// Convolution and linear weights of every layer, and the non-zero ones.
    pub weights: u64,
    pub weights_nonzero: u64,
    pub macs: u64,
    pub nonzero_macs: u64,
    /// N:M: the most non-zeros found in one group of M of a masked layer (at most N when the
    /// pattern holds).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_nonzero_per_group: Option<usize>,
}

/// Counts `model`'s zeros in the layers of `layers` (as marked for `pattern`).
pub fn measure(model: &Model, layers: &[WeightLayer], pattern: Pattern) -> Result<SparsityReport> {
    let mut out = vec![];
    let mut max_group = 0;
    for layer in layers {
        let values = weight_values(model, layer)?;
        let nonzero = values.iter().filter(|&&v| v != 0.0).count() as u64;
        let params = values.len() as u64;
        let macs = node_macs(&model.graph, layer.node);
        if let (true, Pattern::NM { m, .. }) = (layer.is_masked(), pattern) {
            layer.for_each_group(m, |idx| {
                max_group = max_group.max(idx.iter().filter(|&&i| values[i] != 0.0).count());
            });
        }
        out.push(LayerSparsity {
            name: layer.name.clone(),
            kind: if layer.shape.len() == 4 {
                "conv"
            } else {
                "linear"
            }
            .into(),
            pattern: if layer.is_masked() {
                pattern.to_string()
            } else {
                "dense".into()
            },
            dense_reason: layer.dense,
            params,
            nonzero,
            macs,
            // Every weight of a layer takes part in the same number of MACs.
            nonzero_macs: macs / params.max(1) * nonzero,
        });
    }
    let sum = |f: &dyn Fn(&LayerSparsity) -> u64, masked_only: bool| -> u64 {
        out.iter()
            .zip(layers)
            .filter(|(_, l)| !masked_only || l.is_masked())
            .map(|(s, _)| f(s))
            .sum()
    };
    let prunable = sum(&|s| s.params, true);
    let prunable_nonzero = sum(&|s| s.nonzero, true);
    Ok(SparsityReport {
        model: model.graph.name.clone(),
        pattern,
        prunable,
        prunable_nonzero,
        sparsity: 1.0 - prunable_nonzero as f64 / prunable.max(1) as f64,
        weights: sum(&|s| s.params, false),
        weights_nonzero: sum(&|s| s.nonzero, false),
        macs: sum(&|s| s.macs, false),
        nonzero_macs: sum(&|s| s.nonzero_macs, false),
        max_nonzero_per_group: matches!(pattern, Pattern::NM { .. }).then_some(max_group),
        layers: out,
    })
}

impl SparsityReport {
    /// Whether `budget` holds on the counted weights.
    pub fn meets(&self, budget: WeightBudget) -> bool {
        match budget {
            WeightBudget::Sparsity(s) => {
                self.prunable_nonzero as usize <= kept_for(self.prunable as usize, s)
            }
            WeightBudget::NM { n, .. } => self.max_nonzero_per_group.is_some_and(|g| g <= n),
        }
    }

    /// The per-layer table in Markdown.
    pub fn markdown(&self) -> String {
        let mut s = String::from(
            "| layer | kind | pattern | weights | non-zero | sparsity | MACs | non-zero MACs |\n|---|---|---|---|---|---|---|---|\n",
        );
        for l in &self.layers {
            let pattern = match &l.dense_reason {
                Some(r) => format!("dense ({r})"),
                None => l.pattern.clone(),
            };
            s += &format!(
                "| {} | {} | {} | {} | {} | {:.1}% | {} | {} |\n",
                l.name,
                l.kind,
                pattern,
                l.params,
                l.nonzero,
                100.0 * l.sparsity(),
                crate::count::human(l.macs),
                crate::count::human(l.nonzero_macs)
            );
        }
        s += &format!(
            "| **total** | | {} | {} | {} | {:.1}% of all, {:.2}% of the pruned layers | {} | {} |\n",
            self.pattern,
            self.weights,
            self.weights_nonzero,
            100.0 * (1.0 - self.weights_nonzero as f64 / self.weights.max(1) as f64),
            100.0 * self.sparsity,
            crate::count::human(self.macs),
            crate::count::human(self.nonzero_macs)
        );
        s
    }
}

impl SparsityReport {
    /// The layers this report marks (masked, or dense and why), found again in `graph`.
    pub fn weight_layers(&self, graph: &Graph) -> Result<Vec<WeightLayer>> {
        let mut layers = weight_layers(graph, &[], Pattern::Unstructured)?;
        if layers.len() != self.layers.len() {
            return Err(LopperError::Config(format!(
                "the sparsity record lists {} layers, the model has {} convolution and linear layers",
                self.layers.len(),
                layers.len()
            )));
        }
        for (l, s) in layers.iter_mut().zip(&self.layers) {
            if l.name != s.name {
                return Err(LopperError::Config(format!(
                    "the sparsity record's layer '{}' is '{}' in the model",
                    s.name, l.name
                )));
            }
            l.dense = s.dense_reason;
        }
        Ok(layers)
    }

    /// Counts `model` again with this report's layers and pattern (the weights as they are
    /// now, not as they were recorded).
    pub fn recount(&self, model: &Model) -> Result<SparsityReport> {
        measure(model, &self.weight_layers(&model.graph)?, self.pattern)
    }

    /// Reads a sparsity record (a prune's `sparsity.json`).
    pub fn read(path: &std::path::Path) -> Result<SparsityReport> {
        serde_json::from_slice(&crate::fsutil::read(path)?)
            .map_err(|e| LopperError::bad_file(path, e.to_string()))
    }
}
