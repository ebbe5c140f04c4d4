//! Physical removal of channels: a smaller graph with the kept slices of every weight.
//!
//! For each node we track which indices of its output channel axis survive (`keep`): a dense
//! convolution or linear layer keeps its group's selection; pass-through ops keep their
//! input's; a concat joins its inputs' at their offsets; a flatten expands each kept channel
//! to its `H*W` features. Every layer is then rebuilt from the slices its input and output
//! keep lists select.

use std::collections::HashMap;

use burn::tensor::{Device, TensorData};

use super::groups::{ChannelGroup, producer_groups};
use super::mask::Selection;
use crate::error::{LopperError, Result};
use crate::graph::{Graph, Op, infer_shape};
use crate::model::Model;

/// Selects `idx` along `axis` of a row-major tensor.
fn select(values: &[f32], shape: &[usize], axis: usize, idx: &[usize]) -> (Vec<f32>, Vec<usize>) {
    let outer: usize = shape[..axis].iter().product();
    let inner: usize = shape[axis + 1..].iter().product();
    let n = shape[axis];
    let mut out = Vec::with_capacity(outer * idx.len() * inner);
    for o in 0..outer {
        for &i in idx {
            let start = (o * n + i) * inner;
            out.extend_from_slice(&values[start..start + inner]);
        }
    }
    let mut s = shape.to_vec();
    s[axis] = idx.len();
    (out, s)
}

/// The kept indices of every node's output channel axis (the first per-sample axis of an
/// image, the last of a flat value), under `selection`.
pub fn kept_indices(
    graph: &Graph,
    groups: &[ChannelGroup],
    selection: &Selection,
) -> Result<Vec<Vec<usize>>> {
    let producer_group = producer_groups(groups);
    for (g, keep) in selection.keep.iter().enumerate() {
        if let Some(k) = keep {
            let group = &groups[g];
            if group.protected.is_some() && k.len() != group.channels {
                return Err(LopperError::Config(format!(
                    "group {g} ({}) is protected: it {}",
                    group.label(graph),
                    group.protected.as_deref().unwrap_or("")
                )));
            }
            if k.is_empty()
                || k.windows(2).any(|w| w[0] >= w[1])
                || k.iter().any(|&c| c >= group.channels)
            {
                return Err(LopperError::Config(format!(
                    "group {g}: kept channels must be sorted, unique, in range and not empty"
                )));
            }
        }
    }
    let mut keep: Vec<Vec<usize>> = Vec::with_capacity(graph.nodes.len());
    for (i, node) in graph.nodes.iter().enumerate() {
        let input = |k: usize| -> &Vec<usize> { &keep[node.inputs[k]] };
        let k = match &node.op {
            Op::Input { shape } => (0..shape[0]).collect(),
            Op::Conv2d { .. } if super::groups::is_pass_through(&node.op) => input(0).clone(),
            Op::Conv2d { .. } | Op::Linear { .. } => match producer_group.get(&i) {
                Some(&g) => selection.kept(groups, g),
                None => (0..*node.shape.last().unwrap_or(&0)).collect(),
            },
            Op::Concat => {
                let mut out = vec![];
                let mut offset = 0;
                for (k, &j) in node.inputs.iter().enumerate() {
                    out.extend(input(k).iter().map(|c| c + offset));
                    offset += graph.nodes[j].shape[0];
                }
                out
            }
            Op::Flatten => {
                let x = &graph.nodes[node.inputs[0]].shape;
                let per: usize = x[1..].iter().product();
                input(0)
                    .iter()
                    .flat_map(|&c| c * per..(c + 1) * per)
                    .collect()
            }
            _ => input(0).clone(),
        };
        keep.push(k);
    }
    Ok(keep)
}

/// The axes of tensor `name` of node `i` that index channels, each with the indices of it that
/// `keep` (from [`kept_indices`]) keeps: output channels by the node's list, input channels by
/// its input's.
fn tensor_axes<'a>(
    graph: &Graph,
    keep: &'a [Vec<usize>],
    i: usize,
    name: &str,
) -> Result<Vec<(usize, &'a [usize])>> {
    let node = &graph.nodes[i];
    let out_keep = keep[i].as_slice();
    let in_keep = node.inputs.first().map(|&j| keep[j].as_slice());
    Ok(match (&node.op, name) {
        // Linear weights are [in, out]: axis 0 is the input.
        (Op::Linear { .. }, "weight") => vec![
            (
                0,
                in_keep.ok_or_else(|| LopperError::Graph("linear without input".into()))?,
            ),
            (1, out_keep),
        ],
        (Op::Conv2d { groups: 1, .. }, "weight") if !super::groups::is_pass_through(&node.op) => {
            match in_keep {
                Some(ik) => vec![(0, out_keep), (1, ik)],
                None => vec![(0, out_keep)],
            }
        }
        _ => vec![(0, out_keep)],
    })
}

fn host(data: &TensorData) -> Result<(Vec<f32>, Vec<usize>)> {
    let values = data
        .clone()
        .try_to_vec_as::<f32>()
        .map_err(|e| LopperError::Graph(format!("{e:?}")))?;
    Ok((values, data.shape().to_vec()))
}

/// For every tensor of `model` by full name (`<node>.<param>`): 1 where the element survives
/// `selection` (each of its channel axes indexes a kept channel), 0 where surgery would remove
/// it. What a method that trains only the removed part (IEE's exploration) must not touch of
/// the rest.
pub fn kept_elements(
    model: &Model,
    groups: &[ChannelGroup],
    selection: &Selection,
) -> Result<Vec<(String, Vec<f32>)>> {
    let graph = &model.graph;
    let keep = kept_indices(graph, groups, selection)?;
    let mut out = vec![];
    for (i, (node, layer)) in graph.nodes.iter().zip(&model.layers).enumerate() {
        let Some(layer) = layer else { continue };
        for (name, data) in layer.tensors() {
            let shape = data.shape().to_vec();
            let mut mask = vec![1.0f32; shape.iter().product()];
            for (axis, idx) in tensor_axes(graph, &keep, i, name)? {
                let n = shape[axis];
                let inner: usize = shape[axis + 1..].iter().product();
                let mut kept = vec![false; n];
                idx.iter().for_each(|&c| kept[c] = true);
                for (e, m) in mask.iter_mut().enumerate() {
                    if !kept[(e / inner) % n] {
                        *m = 0.0;
                    }
                }
            }
            out.push((format!("{}.{name}", node.name), mask));
        }
    }
    Ok(out)
}

/// Builds the physically smaller model: every channel outside `selection` removed.
pub fn prune_model(
    model: &Model,
    groups: &[ChannelGroup],
    selection: &Selection,
    device: &Device,
) -> Result<Model> {
    let graph = &model.graph;
    let keep = kept_indices(graph, groups, selection)?;
    let mut new = graph.clone();
    for (i, node) in new.nodes.iter_mut().enumerate() {
        let out = keep[i].len();
        let inp = node.inputs.first().map(|&j| keep[j].len()).unwrap_or(0);
        match &mut node.op {
            Op::Conv2d {
                in_channels,
                out_channels,
                groups: cg,
                ..
            } => {
                if *cg > 1 && *cg == *in_channels && *cg == *out_channels {
                    *cg = out;
                }
                *in_channels = inp;
                *out_channels = out;
            }
            Op::Linear {
                in_features,
                out_features,
                ..
            } => {
                *in_features = inp;
                *out_features = out;
            }
            Op::BatchNorm2d { channels, .. } => *channels = out,
            Op::LayerNorm { dim, .. } => *dim = out,
            _ => {}
        }
    }
    for i in 0..new.nodes.len() {
        let shapes: Vec<Vec<usize>> = new.nodes[i]
            .inputs
            .iter()
            .map(|&j| new.nodes[j].shape.clone())
            .collect();
        let refs: Vec<&[usize]> = shapes.iter().map(|s| s.as_slice()).collect();
        let node = &new.nodes[i];
        new.nodes[i].shape = if matches!(node.op, Op::Input { .. }) {
            node.shape.clone()
        } else {
            infer_shape(&node.op, &refs).map_err(|e| {
                LopperError::Graph(format!("surgery broke node '{}': {e}", node.name))
            })?
        };
    }
    new.validate()?;

    // Slice every tensor: output-channel parameters by the node's keep list, input-channel
    // parameters by its input's.
    let mut sliced: HashMap<String, TensorData> = HashMap::new();
    for (i, (node, layer)) in graph.nodes.iter().zip(&model.layers).enumerate() {
        let Some(layer) = layer else { continue };
        for (name, data) in layer.tensors() {
            let (mut v, mut s) = host(&data)?;
            for (axis, idx) in tensor_axes(graph, &keep, i, name)? {
                (v, s) = select(&v, &s, axis, idx);
            }
            sliced.insert(format!("{}.{name}", node.name), TensorData::new(v, s));
        }
    }
    Model::from_tensors(new, device, |node, name, _| {
        sliced
            .remove(&format!("{}.{name}", node.name))
            .ok_or_else(|| LopperError::Graph(format!("surgery lost {}.{name}", node.name)))
    })
}
