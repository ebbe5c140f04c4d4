//! Channel groups: the sets of channels that must be removed together.
//!
//! Every node's output carries a *channel space*: a list of segments, each a run of channels
//! of one *source* (a layer that creates channels: a dense convolution or a linear layer),
//! possibly repeated `repeat` times per channel (after a flatten, one channel is `H*W`
//! features). Pass-through ops (BN, activations, pooling, dropout, depthwise convolutions)
//! keep their input's space; an add unifies the sources of its inputs; a concat joins the
//! segments of its inputs. Unified sources form one group. Groups that touch the network
//! input, the output, a grouped (non-depthwise) convolution or a layer norm are protected.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::error::{LopperError, Result};
use crate::graph::{Graph, Op};

/// The `len` channels of `source`, each channel spanning `repeat` consecutive features.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Segment {
    source: usize,
    len: usize,
    repeat: usize,
}

/// How a node's parameters index a group's channels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// The node creates the group's channels (conv out channels, linear out features).
    Producer,
    /// The node's per-channel parameters follow the group (BN, depthwise conv).
    PassThrough,
    /// The node reads the group's channels as inputs (conv in channels, linear in features).
    Consumer,
}

/// One place a group's channels appear in a node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Member {
    pub node: usize,
    pub role: Role,
    /// For consumers: the index of the group's first channel in the node's input axis
    /// (non-zero after a concat) and the number of features per channel (`H*W` after a
    /// flatten, else 1). Producers and pass-throughs use offset 0, repeat 1.
    pub offset: usize,
    pub repeat: usize,
}

/// A set of channels removed together.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ChannelGroup {
    pub id: usize,
    /// Number of channels.
    pub channels: usize,
    /// Nodes whose output carries the group (producers and every pass-through op after them),
    /// each with the offset of the group in that output's channel axis: where a mask goes.
    pub carriers: Vec<(usize, usize)>,
    pub members: Vec<Member>,
    /// Protected groups are never pruned; the reason says why.
    pub protected: Option<String>,
}

impl ChannelGroup {
    pub fn is_prunable(&self) -> bool {
        self.protected.is_none()
    }

    /// The nodes that write the group's channels.
    fn producer_nodes(&self) -> impl Iterator<Item = usize> + '_ {
        self.members
            .iter()
            .filter(|m| m.role == Role::Producer)
            .map(|m| m.node)
    }

    /// The producers' names, for display.
    pub fn label(&self, graph: &Graph) -> String {
        let names: Vec<&str> = self
            .producer_nodes()
            .map(|n| graph.nodes[n].name.as_str())
            .collect();
        names.join(" + ")
    }

    /// How many layers write the group's channels: more than one for a residual stream, whose
    /// channels every block of a stage reads and adds to.
    pub fn producers(&self) -> usize {
        self.producer_nodes().count()
    }
}

/// The residual streams (groups several layers write) that a pruned model keeps at a single
/// channel: everything those layers carry then passes through one channel, which a network
/// seldom recovers from in fine-tuning (DSA with a short allocation did this to ResNet-20's
/// stage-1 stream, BENCHMARKS.md g). `dense` and `pruned` are the groups of the dense and the
/// pruned graph (ids line up across surgery); returns the ids.
pub fn collapsed_streams(dense: &[ChannelGroup], pruned: &[ChannelGroup]) -> Vec<usize> {
    dense
        .iter()
        .zip(pruned)
        .filter(|(d, p)| d.producers() > 1 && d.channels > 1 && p.channels == 1)
        .map(|(d, _)| d.id)
        .collect()
}

/// Union-find over sources.
struct Sets(Vec<usize>);
impl Sets {
    fn find(&mut self, x: usize) -> usize {
        let mut r = x;
        while self.0[r] != r {
            r = self.0[r];
        }
        let mut y = x;
        while self.0[y] != r {
            let next = self.0[y];
            self.0[y] = r;
            y = next;
        }
        r
    }
    fn union(&mut self, a: usize, b: usize) {
        let (a, b) = (self.find(a), self.find(b));
        if a != b {
            self.0[b.max(a)] = a.min(b);
        }
    }
}

/// Source id 0 is the network input.
const INPUT_SOURCE: usize = 0;

/// Computes the channel groups of `graph`. Nodes named in `protect` keep all their channels.
pub fn channel_groups(graph: &Graph, protect: &[String]) -> Result<Vec<ChannelGroup>> {
    for name in protect {
        if graph.node_index(name).is_none() {
            return Err(LopperError::Config(format!(
                "cannot protect '{name}': the model has no node of that name"
            )));
        }
    }
    let mut source_len = vec![graph.input_shape()[0]];
    let mut producer_of: Vec<Option<usize>> = vec![None]; // source -> producing node
    let mut spaces: Vec<Vec<Segment>> = Vec::with_capacity(graph.nodes.len());
    let mut protect_sources: Vec<(usize, String)> = vec![];
    let mut unions: Vec<(usize, usize)> = vec![];
    let new_source = |node: usize,
                      len: usize,
                      source_len: &mut Vec<usize>,
                      producer_of: &mut Vec<Option<usize>>| {
        source_len.push(len);
        producer_of.push(Some(node));
        vec![Segment {
            source: source_len.len() - 1,
            len,
            repeat: 1,
        }]
    };
    for (i, node) in graph.nodes.iter().enumerate() {
        let input = |k: usize| spaces[node.inputs[k]].clone();
        let space = match &node.op {
            Op::Input { shape } => vec![Segment {
                source: INPUT_SOURCE,
                len: shape[0],
                repeat: 1,
            }],
            Op::Conv2d {
                groups,
                in_channels,
                out_channels,
                ..
            } => {
                if *groups == 1 {
                    new_source(i, *out_channels, &mut source_len, &mut producer_of)
                } else if groups == in_channels && groups == out_channels {
                    input(0) // depthwise: channel c reads channel c
                } else {
                    for s in input(0) {
                        protect_sources.push((
                            s.source,
                            format!("feeds grouped convolution '{}'", node.name),
                        ));
                    }
                    let out = new_source(i, *out_channels, &mut source_len, &mut producer_of);
                    protect_sources.push((
                        out[0].source,
                        format!("made by grouped convolution '{}'", node.name),
                    ));
                    out
                }
            }
            Op::Linear { out_features, .. } => {
                if node.shape.len() > 1 {
                    // [T, F] inputs: features are the last axis; the group logic above the
                    // feature axis is the transformer issue's. Protect for now.
                    for s in input(0) {
                        protect_sources
                            .push((s.source, format!("feeds sequence linear '{}'", node.name)));
                    }
                }
                new_source(i, *out_features, &mut source_len, &mut producer_of)
            }
            Op::LayerNorm { .. } => {
                for s in input(0) {
                    protect_sources.push((
                        s.source,
                        format!("normalised by layer norm '{}'", node.name),
                    ));
                }
                input(0)
            }
            Op::BatchNorm2d { .. }
            | Op::Relu
            | Op::Relu6
            | Op::Gelu
            | Op::Dropout { .. }
            | Op::MaxPool2d { .. }
            | Op::AvgPool2d { .. }
            | Op::GlobalAvgPool => input(0),
            Op::Add => {
                let first = input(0);
                for k in 1..node.inputs.len() {
                    let other = input(k);
                    if other.len() != first.len()
                        || other
                            .iter()
                            .zip(&first)
                            .any(|(a, b)| a.len != b.len || a.repeat != b.repeat)
                    {
                        // Misaligned segments (e.g. add of two different concats): tie all.
                        for s in other.iter().chain(&first) {
                            protect_sources
                                .push((s.source, format!("misaligned add '{}'", node.name)));
                        }
                    }
                    for (a, b) in first.iter().zip(&other) {
                        unions.push((a.source, b.source));
                    }
                }
                first
            }
            Op::Concat => (0..node.inputs.len()).flat_map(&input).collect(),
            Op::Flatten => {
                let x = &graph.nodes[node.inputs[0]].shape;
                let per_channel: usize = x[1..].iter().product();
                input(0)
                    .into_iter()
                    .map(|s| Segment {
                        repeat: s.repeat * per_channel,
                        ..s
                    })
                    .collect()
            }
        };
        spaces.push(space);
    }
    for s in &spaces[graph.output] {
        protect_sources.push((s.source, "produces the network output".into()));
    }
    protect_sources.push((INPUT_SOURCE, "is the network input".into()));
    for name in protect {
        let i = graph.node_index(name).expect("checked above");
        for s in &spaces[i] {
            protect_sources.push((s.source, format!("protected by the user ('{name}')")));
        }
    }

    let mut sets = Sets((0..source_len.len()).collect());
    for (a, b) in unions {
        sets.union(a, b);
    }
    // Group ids in order of first appearance of a root.
    let mut group_of_root: BTreeMap<usize, usize> = BTreeMap::new();
    let mut groups: Vec<ChannelGroup> = vec![];
    for s in 0..source_len.len() {
        let r = sets.find(s);
        if let std::collections::btree_map::Entry::Vacant(e) = group_of_root.entry(r) {
            e.insert(groups.len());
            groups.push(ChannelGroup {
                id: groups.len(),
                channels: source_len[r],
                carriers: vec![],
                members: vec![],
                protected: None,
            });
        }
    }
    let group = |sets: &mut Sets, s: usize| group_of_root[&sets.find(s)];
    for (s, p) in producer_of.iter().enumerate() {
        if let Some(node) = p {
            let g = group(&mut sets, s);
            groups[g].members.push(Member {
                node: *node,
                role: Role::Producer,
                offset: 0,
                repeat: 1,
            });
        }
    }
    for (s, why) in protect_sources {
        let g = group(&mut sets, s);
        groups[g].protected.get_or_insert(why);
    }
    for (i, node) in graph.nodes.iter().enumerate() {
        // Carriers: every node's output segments (where a mask can act).
        let mut offset = 0;
        for seg in &spaces[i] {
            if seg.repeat == 1 && !matches!(node.op, Op::Input { .. }) {
                let g = group(&mut sets, seg.source);
                groups[g].carriers.push((i, offset));
            }
            offset += seg.len * seg.repeat;
        }
        // Per-channel parameters (pass-through) follow each input segment's group slice;
        // consumers read each segment's channels, `repeat` features apiece.
        let role = match &node.op {
            op if is_pass_through(op) => Some(Role::PassThrough),
            Op::Conv2d { .. } | Op::Linear { .. } => Some(Role::Consumer),
            _ => None,
        };
        if let Some(role) = role {
            let mut off = 0;
            for seg in &spaces[node.inputs[0]] {
                let g = group(&mut sets, seg.source);
                let repeat = if role == Role::Consumer {
                    seg.repeat
                } else {
                    1
                };
                groups[g].members.push(Member {
                    node: i,
                    role,
                    offset: off,
                    repeat,
                });
                off += seg.len * repeat;
            }
        }
    }
    Ok(groups)
}

/// Ops whose parameters are per channel of their input (BN, layer norm, depthwise conv).
pub fn is_pass_through(op: &Op) -> bool {
    match op {
        Op::BatchNorm2d { .. } | Op::LayerNorm { .. } => true,
        Op::Conv2d {
            groups,
            in_channels,
            out_channels,
            ..
        } => groups == in_channels && groups == out_channels && *groups > 1,
        _ => false,
    }
}

/// The group each producer node (dense conv or linear layer) creates channels for.
pub fn producer_groups(groups: &[ChannelGroup]) -> BTreeMap<usize, usize> {
    groups
        .iter()
        .flat_map(|g| {
            g.members
                .iter()
                .filter(|m| m.role == Role::Producer)
                .map(move |m| (m.node, g.id))
        })
        .collect()
}
