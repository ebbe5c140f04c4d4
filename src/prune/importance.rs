//! Channel importance criteria, one score per channel of each group, summed over the group's
//! members: L1 / L2 filter norms of the producers, BatchNorm scale |γ|, first-order Taylor on
//! BatchNorm (Molchanov et al. 2019) and random.

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

/// The criteria `lopper prune --method` accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Criterion {
    /// Sum of |w| of each output filter of the group's producers (Li et al. 2017).
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
    criterion == Criterion::Taylor
        && groups
            .iter()
            .filter(|g| g.is_prunable())
            .all(|g| !bn_members(model, g).is_empty())
}

/// Scores of every prunable group (empty vectors for protected ones), on the model's weights.
/// `data` is used by the Taylor criterion only (`batches` batches of it, on `device`).
pub fn channel_scores(
    criterion: Criterion,
    model: &Model,
    groups: &[ChannelGroup],
    data: Option<(&Batcher, usize)>,
    device: &Device,
    seed: u64,
) -> Result<Vec<Vec<f64>>> {
    let taylor = match criterion {
        Criterion::Taylor => {
            let (batcher, n) =
                data.ok_or_else(|| LopperError::Config("the taylor criterion needs data".into()))?;
            Some(taylor_bn(model, batcher, n, device)?)
        }
        _ => None,
    };
    let mut rng = StdRng::seed_from_u64(seed);
    groups
        .iter()
        .map(|g| {
            if !g.is_prunable() {
                return Ok(vec![]);
            }
            let bns = bn_members(model, g);
            match criterion {
                Criterion::L1 => norm_scores(model, g, false),
                Criterion::L2 => norm_scores(model, g, true),
                Criterion::Random => Ok((0..g.channels).map(|_| rng.random::<f64>()).collect()),
                Criterion::Bn | Criterion::Taylor if bns.is_empty() => norm_scores(model, g, false),
                Criterion::Bn => {
                    let mut s = vec![0.0; g.channels];
                    for (node, off) in bns {
                        if let Some(Layer::Norm(n)) = model.layers[node].as_ref() {
                            let gamma = host(n.weight.val().into_data())?;
                            for (c, acc) in s.iter_mut().enumerate() {
                                *acc += gamma[off + c].abs() as f64;
                            }
                        }
                    }
                    Ok(s)
                }
                Criterion::Taylor => {
                    let per_node = taylor.as_ref().expect("computed above");
                    let mut s = vec![0.0; g.channels];
                    for (node, off) in bns {
                        for (c, acc) in s.iter_mut().enumerate() {
                            *acc += per_node[node][off + c];
                        }
                    }
                    Ok(s)
                }
            }
        })
        .collect()
}

/// Per BatchNorm node and channel: the mean over batches of |γ ∂L/∂γ + β ∂L/∂β|.
fn taylor_bn(
    model: &Model,
    batcher: &Batcher,
    batches: usize,
    device: &Device,
) -> Result<Vec<Vec<f64>>> {
    let model = model.clone().fork(&device.clone().autodiff()).train();
    let ad = device.clone().autodiff();
    let mut acc: Vec<Vec<f64>> = model.graph.nodes.iter().map(|_| vec![]).collect();
    let mut seen = 0;
    for batch in batcher.epoch(0, 0, 0).take(batches.max(1)) {
        let (x, _) = batch.to_tensors(&ad);
        let loss = cross_entropy(model.forward(x, true), &batch.labels, 0.0, &ad);
        let grads = GradientsParams::from_grads(loss.backward(), &model);
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
            if acc[i].is_empty() {
                acc[i] = vec![0.0; w.len()];
            }
            for c in 0..w.len() {
                acc[i][c] += ((w[c] * gg[c] + b[c] * gb[c]) as f64).abs();
            }
        }
        seen += 1;
    }
    if seen == 0 {
        return Err(LopperError::Config(
            "the taylor criterion got no data batches".into(),
        ));
    }
    for a in &mut acc {
        a.iter_mut().for_each(|v| *v /= seen as f64);
    }
    Ok(acc)
}
