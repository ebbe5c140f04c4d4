//! Importance criteria: what a unit of the network is worth. A criterion is an
//! [`Importance`]: it scores every channel of each group (summed over the group's members) and,
//! for the weight masks of unstructured and N:M sparsity, every weight of a layer. Gradient
//! criteria (Taylor) accumulate from whatever gradients they are fed: the steps of an
//! ordinary training run, through [`ScoreHook`], or extra passes over a few batches when no
//! training runs ([`gather_gradients`]).
//!
//! The criteria: L1 / L2 filter norms of the producers, BatchNorm scale |γ|, first-order
//! Taylor on BatchNorm (Molchanov et al. 2019) and random.

use burn::module::Module;
use burn::optim::GradientsParams;
use burn::tensor::Device;
use rand::{Rng, SeedableRng, rngs::StdRng};
use serde::{Deserialize, Serialize};

use super::groups::{ChannelGroup, Role};
use crate::data::Batcher;
use crate::error::{LopperError, Result};
use crate::graph::Op;
use crate::model::{Layer, Model};
use crate::train::loss::cross_entropy;
use crate::train::{StepInfo, TrainHook};

/// The criteria `lopper prune` accepts by name; [`Criterion::build`] makes the scorer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Criterion {
    /// Sum of |w| of each output filter of the group's producers (Li et al. 2017); for a
    /// single weight, |w|. Also spelled `magnitude`.
    #[value(alias = "magnitude")]
    #[serde(alias = "magnitude")]
    L1,
    /// L2 norm of each output filter, summed over producers.
    L2,
    /// |γ| of the BatchNorms after the producers (network slimming); L1 where there is none.
    Bn,
    /// |Σ γ ∂L/∂γ + β ∂L/∂β| over BatchNorms, averaged over batches (Molchanov 2019); L1
    /// where there is no BatchNorm.
    Taylor,
    /// Uniform random scores (a control).
    Random,
    /// HALP's criterion (IEE's structured one): Taylor importance as `taylor`, spent under the
    /// budget by a knapsack that weighs each channel's importance against what it costs
    /// (its latency, with a latency budget).
    Halp,
}

impl Criterion {
    /// The scorer; `seed` draws the random criterion's scores.
    pub fn build(self, seed: u64) -> Box<dyn Importance> {
        match self {
            Criterion::L1 => Box::new(Magnitude { squared: false }),
            Criterion::L2 => Box::new(Magnitude { squared: true }),
            Criterion::Bn => Box::new(BnScale),
            Criterion::Taylor | Criterion::Halp => Box::new(Taylor::default()),
            Criterion::Random => Box::new(RandomScores { seed }),
        }
    }

    /// The name users type (`l1`, `taylor`).
    pub fn name(self) -> &'static str {
        match self {
            Criterion::L1 => "l1",
            Criterion::L2 => "l2",
            Criterion::Bn => "bn",
            Criterion::Taylor => "taylor",
            Criterion::Random => "random",
            Criterion::Halp => "halp",
        }
    }
}

/// A criterion: scores for channels (structured pruning) and weights (weight masks).
pub trait Importance {
    /// Whether the scores come from gradients: then [`Importance::accumulate`] must have seen
    /// some before the scores mean anything.
    fn wants_gradients(&self) -> bool {
        false
    }
    /// Takes in the gradients of one batch (a training step's, or an extra pass's).
    fn accumulate(&mut self, _model: &Model, _grads: &GradientsParams) -> Result<()> {
        Ok(())
    }
    /// Forgets what was accumulated (the network changed under the scores).
    fn reset(&mut self) {}
    /// One score per channel of every prunable group (empty vectors for protected ones).
    fn channel_scores(&self, model: &Model, groups: &[ChannelGroup]) -> Result<Vec<Vec<f64>>>;
    /// One score per weight of the convolution or linear layer at `node`, in the weight's
    /// row-major order. Criteria without a per-weight form say so.
    fn weight_scores(&self, _model: &Model, node: usize) -> Result<Vec<f64>> {
        Err(LopperError::Config(format!(
            "this criterion has no per-weight scores (node {node})"
        )))
    }
    /// Whether scores compare across groups as they are (loss-change estimates do), or must
    /// be normalised per group first (magnitudes).
    fn comparable_across_groups(&self, _model: &Model, _groups: &[ChannelGroup]) -> bool {
        false
    }
}

/// Feeds a criterion the gradients of every training step it runs in.
pub struct ScoreHook<'a>(pub &'a mut dyn Importance);

impl TrainHook for ScoreHook<'_> {
    fn after_backward(
        &mut self,
        _info: &StepInfo,
        model: &Model,
        grads: GradientsParams,
    ) -> Result<GradientsParams> {
        self.0.accumulate(model, &grads)?;
        Ok(grads)
    }
}

/// Feeds a gradient criterion the gradients of the first `batches` batches of `batcher`
/// (forward and backward passes in training mode, no optimiser step): scores for a model no
/// training run is about to use.
pub fn gather_gradients(
    criterion: &mut dyn Importance,
    model: &Model,
    batcher: &Batcher,
    batches: usize,
    device: &Device,
) -> Result<()> {
    let ad = device.clone().autodiff();
    let model = model.clone().fork(&ad).train();
    let mut seen = 0;
    for batch in batcher.epoch(0, 0, 0).take(batches.max(1)) {
        let (x, _) = batch.to_tensors(&ad);
        let loss = cross_entropy(model.forward(x, true), &batch.labels, 0.0, &ad);
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        criterion.accumulate(&model, &grads)?;
        seen += 1;
    }
    if seen == 0 {
        return Err(LopperError::Config(
            "the gradient criterion got no data batches".into(),
        ));
    }
    Ok(())
}

/// Scores of every prunable group (empty vectors for protected ones) by `criterion` on the
/// model's weights; gradient criteria first take `data`'s first batches (`batches` of them,
/// on `device`).
pub fn channel_scores(
    criterion: Criterion,
    model: &Model,
    groups: &[ChannelGroup],
    data: Option<(&Batcher, usize)>,
    device: &Device,
    seed: u64,
) -> Result<Vec<Vec<f64>>> {
    let mut scorer = criterion.build(seed);
    if scorer.wants_gradients() {
        let (batcher, n) = data.ok_or_else(|| {
            LopperError::Config(format!("the {} criterion needs data", criterion.name()))
        })?;
        gather_gradients(scorer.as_mut(), model, batcher, n, device)?;
    }
    scorer.channel_scores(model, groups)
}

fn host(t: burn::tensor::TensorData) -> Result<Vec<f32>> {
    t.try_to_vec_as::<f32>()
        .map_err(|e| LopperError::Graph(format!("{e:?}")))
}

/// Per output channel `|w|` sums (L1) or squared sums (for L2) of a producer.
fn filter_stat(model: &Model, node: usize, squared: bool) -> Result<Vec<f64>> {
    let f = |v: f32| {
        if squared {
            (v as f64) * (v as f64)
        } else {
            (v as f64).abs()
        }
    };
    match model.layers[node].as_ref() {
        Some(Layer::Conv(c)) => {
            let w = c.weight.val();
            let [o, i, kh, kw] = w.dims();
            let v = host(w.into_data())?;
            let per = i * kh * kw;
            Ok((0..o)
                .map(|c| v[c * per..(c + 1) * per].iter().map(|&x| f(x)).sum())
                .collect())
        }
        Some(Layer::Linear(l)) => {
            let w = l.weight.val();
            let [i, o] = w.dims();
            let v = host(w.into_data())?;
            Ok((0..o)
                .map(|c| (0..i).map(|r| f(v[r * o + c])).sum())
                .collect())
        }
        _ => Err(LopperError::Graph(format!(
            "node {node} is not a convolution or linear layer"
        ))),
    }
}

/// BatchNorm members of each group (node, offset).
fn bn_members(model: &Model, g: &ChannelGroup) -> Vec<(usize, usize)> {
    g.members
        .iter()
        .filter(|m| {
            m.role == Role::PassThrough
                && matches!(model.graph.nodes[m.node].op, Op::BatchNorm2d { .. })
        })
        .map(|m| (m.node, m.offset))
        .collect()
}

/// L1 or L2 filter scores of a group.
fn norm_scores(model: &Model, g: &ChannelGroup, l2: bool) -> Result<Vec<f64>> {
    let mut s = vec![0.0; g.channels];
    for m in g.members.iter().filter(|m| m.role == Role::Producer) {
        for (acc, v) in s.iter_mut().zip(filter_stat(model, m.node, l2)?) {
            *acc += if l2 { v.sqrt() } else { v };
        }
    }
    Ok(s)
}

/// Whether `criterion`'s scores on `model` compare across groups as they are: Taylor scores
/// estimate the loss change of removing a channel (Molchanov et al. 2019 rank them globally),
/// provided every prunable group has a BatchNorm to take them from (otherwise some groups fall
/// back to filter norms, which do not compare with them).
pub fn comparable_across_groups(
    criterion: Criterion,
    model: &Model,
    groups: &[ChannelGroup],
) -> bool {
    criterion.build(0).comparable_across_groups(model, groups)
}

/// Per-weight magnitudes (|w| or w²) of a convolution or linear layer.
fn weight_magnitudes(model: &Model, node: usize, squared: bool) -> Result<Vec<f64>> {
    let data = match model.layers.get(node).and_then(|l| l.as_ref()) {
        Some(Layer::Conv(c)) => c.weight.val().into_data(),
        Some(Layer::Linear(l)) => l.weight.val().into_data(),
        _ => {
            return Err(LopperError::Graph(format!(
                "node {node} is not a convolution or linear layer"
            )));
        }
    };
    Ok(host(data)?
        .into_iter()
        .map(|v| {
            let v = v as f64;
            if squared { v * v } else { v.abs() }
        })
        .collect())
}

/// L1 or L2 norms of the producers' output filters.
struct Magnitude {
    squared: bool,
}

impl Importance for Magnitude {
    fn channel_scores(&self, model: &Model, groups: &[ChannelGroup]) -> Result<Vec<Vec<f64>>> {
        per_group(groups, |g| norm_scores(model, g, self.squared))
    }
    fn weight_scores(&self, model: &Model, node: usize) -> Result<Vec<f64>> {
        weight_magnitudes(model, node, self.squared)
    }
}

/// |γ| of the group's BatchNorms; L1 of the filters where there is none.
struct BnScale;

impl Importance for BnScale {
    fn channel_scores(&self, model: &Model, groups: &[ChannelGroup]) -> Result<Vec<Vec<f64>>> {
        per_group(groups, |g| {
            bn_sums(model, g, |node| match model.layers[node].as_ref() {
                Some(Layer::Norm(n)) => Ok(Some(
                    host(n.weight.val().into_data())?
                        .into_iter()
                        .map(|v| v.abs() as f64)
                        .collect(),
                )),
                _ => Ok(None),
            })
        })
    }
}

/// Uniform random scores, drawn group by group from one seeded generator.
struct RandomScores {
    seed: u64,
}

impl Importance for RandomScores {
    fn channel_scores(&self, _model: &Model, groups: &[ChannelGroup]) -> Result<Vec<Vec<f64>>> {
        let mut rng = StdRng::seed_from_u64(self.seed);
        per_group(groups, |g| {
            Ok((0..g.channels).map(|_| rng.random::<f64>()).collect())
        })
    }
}

/// First-order Taylor on BatchNorm: per BatchNorm node and channel, the mean over the batches
/// seen of |γ ∂L/∂γ + β ∂L/∂β|.
#[derive(Default)]
pub struct Taylor {
    sums: Vec<Vec<f64>>,
    seen: usize,
}

impl Importance for Taylor {
    fn wants_gradients(&self) -> bool {
        true
    }

    fn accumulate(&mut self, model: &Model, grads: &GradientsParams) -> Result<()> {
        if self.sums.len() != model.layers.len() {
            self.sums = vec![vec![]; model.layers.len()];
        }
        for (i, layer) in model.layers.iter().enumerate() {
            let Some(Layer::Norm(n)) = layer else {
                continue;
            };
            if n.running.is_none() {
                continue;
            }
            let (Some(gg), Some(gb)) = (grads.get::<1>(n.weight.id), grads.get::<1>(n.bias.id))
            else {
                continue;
            };
            let (w, b) = (
                host(n.weight.val().into_data())?,
                host(n.bias.val().into_data())?,
            );
            let (gg, gb) = (host(gg.into_data())?, host(gb.into_data())?);
            let acc = &mut self.sums[i];
            if acc.len() != w.len() {
                *acc = vec![0.0; w.len()];
            }
            for c in 0..w.len() {
                acc[c] += ((w[c] * gg[c] + b[c] * gb[c]) as f64).abs();
            }
        }
        self.seen += 1;
        Ok(())
    }

    fn reset(&mut self) {
        self.sums.clear();
        self.seen = 0;
    }

    fn channel_scores(&self, model: &Model, groups: &[ChannelGroup]) -> Result<Vec<Vec<f64>>> {
        if self.seen == 0 {
            return Err(LopperError::Config(
                "the taylor criterion has seen no gradients yet".into(),
            ));
        }
        per_group(groups, |g| {
            bn_sums(model, g, |node| {
                Ok(self
                    .sums
                    .get(node)
                    .filter(|v| !v.is_empty())
                    .map(|v| v.iter().map(|x| x / self.seen as f64).collect()))
            })
        })
    }

    fn comparable_across_groups(&self, model: &Model, groups: &[ChannelGroup]) -> bool {
        groups
            .iter()
            .filter(|g| g.is_prunable())
            .all(|g| !bn_members(model, g).is_empty())
    }
}

/// A group's scores summed over its BatchNorm members, `per_node(node)` giving a BatchNorm's
/// per-channel values (`None`: it has none); L1 of the filters where the group has no
/// BatchNorm.
fn bn_sums(
    model: &Model,
    g: &ChannelGroup,
    mut per_node: impl FnMut(usize) -> Result<Option<Vec<f64>>>,
) -> Result<Vec<f64>> {
    let bns = bn_members(model, g);
    if bns.is_empty() {
        return norm_scores(model, g, false);
    }
    let mut s = vec![0.0; g.channels];
    for (node, off) in bns {
        if let Some(values) = per_node(node)? {
            for (c, acc) in s.iter_mut().enumerate() {
                *acc += values[off + c];
            }
        }
    }
    Ok(s)
}

/// `f` of every prunable group, in group order; empty vectors for protected ones.
fn per_group(
    groups: &[ChannelGroup],
    mut f: impl FnMut(&ChannelGroup) -> Result<Vec<f64>>,
) -> Result<Vec<Vec<f64>>> {
    groups
        .iter()
        .map(|g| if g.is_prunable() { f(g) } else { Ok(vec![]) })
        .collect()
}
