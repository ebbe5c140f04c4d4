//! Channel masks: the one mechanism every structured method uses to switch channels off.
//!
//! A mask is one value per channel of a group (hard 0/1, or soft). It multiplies the output
//! of each *mask point* of the group: every convolution, linear layer or BatchNorm carrying
//! the group whose output does not feed a BatchNorm. So a conv followed by BN is masked after
//! the BN and before the activation, and a layer without BN on its output. With a hard mask
//! every carrier of a masked channel is exactly zero, which is what makes the physically
//! pruned network compute the same function.

use burn::tensor::{Device, Tensor, TensorData};

use super::groups::ChannelGroup;
use crate::graph::{Graph, Node, Op};
use crate::model::NodeHook;

/// Per group: which channels stay (sorted indices), `None` for all.
#[derive(Debug, Clone, PartialEq)]
pub struct Selection {
    pub keep: Vec<Option<Vec<usize>>>,
}

impl Selection {
    /// Keeps everything.
    pub fn all(groups: &[ChannelGroup]) -> Selection {
        Selection {
            keep: vec![None; groups.len()],
        }
    }

    /// Channels kept in group `g`.
    pub fn kept(&self, groups: &[ChannelGroup], g: usize) -> Vec<usize> {
        match &self.keep[g] {
            Some(k) => k.clone(),
            None => (0..groups[g].channels).collect(),
        }
    }

    /// The 0/1 mask of group `g`.
    pub fn mask(&self, groups: &[ChannelGroup], g: usize) -> Vec<f32> {
        let mut m = vec![0.0; groups[g].channels];
        for i in self.kept(groups, g) {
            m[i] = 1.0;
        }
        m
    }
}

/// Whether node `i`'s output is a mask point (see the module docs).
pub fn is_mask_point(graph: &Graph, i: usize) -> bool {
    let node = &graph.nodes[i];
    matches!(
        node.op,
        Op::Conv2d { .. } | Op::Linear { .. } | Op::BatchNorm2d { .. }
    ) && !graph
        .consumers(i)
        .iter()
        .any(|&j| matches!(graph.nodes[j].op, Op::BatchNorm2d { .. }))
}

/// A forward hook multiplying each mask point's output by its groups' masks.
pub struct ChannelMasks {
    per_node: Vec<Option<Tensor<1>>>,
}

impl ChannelMasks {
    /// Masks from one optional tensor per group (`None`: all ones). Tensors may carry
    /// gradients (soft masks); a node carrying several groups (after a concat) gets the
    /// concatenation of their masks.
    pub fn new(
        graph: &Graph,
        groups: &[ChannelGroup],
        masks: &[Option<Tensor<1>>],
        device: &Device,
    ) -> ChannelMasks {
        let mut segments: Vec<Vec<(usize, usize)>> = vec![vec![]; graph.nodes.len()];
        for g in groups {
            for &(node, offset) in &g.carriers {
                segments[node].push((offset, g.id));
            }
        }
        let per_node = (0..graph.nodes.len())
            .map(|i| {
                let segs = &mut segments[i];
                if !is_mask_point(graph, i) || segs.iter().all(|&(_, g)| masks[g].is_none()) {
                    return None;
                }
                segs.sort_unstable();
                let parts: Vec<Tensor<1>> = segs
                    .iter()
                    .map(|&(_, g)| match &masks[g] {
                        Some(m) => m.clone(),
                        None => Tensor::ones([groups[g].channels], device),
                    })
                    .collect();
                Some(Tensor::cat(parts, 0))
            })
            .collect();
        ChannelMasks { per_node }
    }

    /// Hard 0/1 masks of a selection.
    pub fn hard(
        graph: &Graph,
        groups: &[ChannelGroup],
        selection: &Selection,
        device: &Device,
    ) -> ChannelMasks {
        let masks: Vec<Option<Tensor<1>>> = (0..groups.len())
            .map(|g| {
                selection.keep[g].as_ref().map(|_| {
                    let m = selection.mask(groups, g);
                    Tensor::from_data(TensorData::new(m, [groups[g].channels]), device)
                })
            })
            .collect();
        ChannelMasks::new(graph, groups, &masks, device)
    }
}

impl NodeHook for ChannelMasks {
    fn channel_scale(&self, index: usize, _node: &Node, _autodiff: bool) -> Option<Tensor<1>> {
        self.per_node[index].clone()
    }
    fn reads_output(&self, _index: usize, _node: &Node) -> bool {
        false
    }
}
