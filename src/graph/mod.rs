//! The model graph: a small, typed IR that every other part of lopper analyses and rewrites.
//!
//! A [`Graph`] is a list of [`Node`]s in topological order. Each node holds an [`Op`], the
//! indices of its input nodes and its inferred per-sample output shape (no batch axis). The
//! graph is pure data (serialisable as the architecture JSON); the weights live in
//! [`crate::model::Model`], a Burn module built from the graph.

mod builder;
mod shape;

pub use builder::GraphBuilder;

use serde::{Deserialize, Serialize};

use crate::error::{LopperError, Result};

/// One operation of the graph. Channel axes are the first per-sample axis (`[C, H, W]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Op {
    /// The network input; `shape` is per sample, e.g. `[1, 28, 28]` or `[784]`.
    Input {
        shape: Vec<usize>,
    },
    Conv2d {
        in_channels: usize,
        out_channels: usize,
        kernel: [usize; 2],
        stride: [usize; 2],
        padding: [usize; 2],
        dilation: [usize; 2],
        groups: usize,
        bias: bool,
    },
    BatchNorm2d {
        channels: usize,
        eps: f64,
        momentum: f64,
    },
    /// Fully connected layer on the last axis.
    Linear {
        in_features: usize,
        out_features: usize,
        bias: bool,
    },
    Relu,
    Relu6,
    Gelu,
    MaxPool2d {
        kernel: [usize; 2],
        stride: [usize; 2],
        padding: [usize; 2],
    },
    AvgPool2d {
        kernel: [usize; 2],
        stride: [usize; 2],
        padding: [usize; 2],
    },
    /// Mean over the spatial axes: `[C, H, W] -> [C]`.
    GlobalAvgPool,
    /// Element-wise sum of two or more inputs of equal shape.
    Add,
    /// Concatenation along the channel axis.
    Concat,
    /// `[C, H, W] -> [C*H*W]`, channel-major (as PyTorch's `flatten(1)`).
    Flatten,
    /// Inverted dropout, active in training only.
    Dropout {
        p: f64,
    },
    /// Normalisation over the last axis of size `dim`.
    LayerNorm {
        dim: usize,
        eps: f64,
    },
}

impl Op {
    /// A short name of the op kind, used in tables.
    pub fn kind(&self) -> &'static str {
        match self {
            Op::Input { .. } => "input",
            Op::Conv2d {
                groups,
                in_channels,
                ..
            } if *groups == *in_channels && *groups > 1 => "conv2d_dw",
            Op::Conv2d { .. } => "conv2d",
            Op::BatchNorm2d { .. } => "batchnorm2d",
            Op::Linear { .. } => "linear",
            Op::Relu => "relu",
            Op::Relu6 => "relu6",
            Op::Gelu => "gelu",
            Op::MaxPool2d { .. } => "maxpool2d",
            Op::AvgPool2d { .. } => "avgpool2d",
            Op::GlobalAvgPool => "global_avgpool",
            Op::Add => "add",
            Op::Concat => "concat",
            Op::Flatten => "flatten",
            Op::Dropout { .. } => "dropout",
            Op::LayerNorm { .. } => "layernorm",
        }
    }

    /// Whether the op owns trainable parameters.
    pub fn has_params(&self) -> bool {
        matches!(
            self,
            Op::Conv2d { .. } | Op::BatchNorm2d { .. } | Op::Linear { .. } | Op::LayerNorm { .. }
        )
    }

    /// Shapes of the op's parameter tensors, by name, in Lopper's (Burn's) layout:
    /// conv `[out, in/groups, kh, kw]`, linear `[in, out]`.
    pub fn param_shapes(&self) -> Vec<(&'static str, Vec<usize>)> {
        match self {
            Op::Conv2d {
                in_channels,
                out_channels,
                kernel,
                groups,
                bias,
                ..
            } => {
                let mut v = vec![(
                    "weight",
                    vec![*out_channels, in_channels / groups, kernel[0], kernel[1]],
                )];
                if *bias {
                    v.push(("bias", vec![*out_channels]));
                }
                v
            }
            Op::BatchNorm2d { channels, .. } => vec![
                ("weight", vec![*channels]),
                ("bias", vec![*channels]),
                ("running_mean", vec![*channels]),
                ("running_var", vec![*channels]),
            ],
            Op::Linear {
                in_features,
                out_features,
                bias,
            } => {
                let mut v = vec![("weight", vec![*in_features, *out_features])];
                if *bias {
                    v.push(("bias", vec![*out_features]));
                }
                v
            }
            Op::LayerNorm { dim, .. } => vec![("weight", vec![*dim]), ("bias", vec![*dim])],
            _ => vec![],
        }
    }

    /// Number of trainable parameters (BatchNorm running statistics are buffers, not counted).
    pub fn num_params(&self) -> usize {
        self.param_shapes()
            .iter()
            .filter(|(name, _)| !name.starts_with("running_"))
            .map(|(_, s)| s.iter().product::<usize>())
            .sum()
    }
}

/// One node of the graph.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Node {
    /// Unique, human-readable name (e.g. `stage2.block0.conv1`); parameter names derive from it.
    pub name: String,
    pub op: Op,
    /// Indices of the input nodes; always smaller than this node's own index.
    pub inputs: Vec<usize>,
    /// Inferred per-sample output shape.
    pub shape: Vec<usize>,
}

/// A model graph: nodes in topological order, node 0 the input, one output node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Graph {
    /// The zoo name or a user label, shown in reports.
    pub name: String,
    pub nodes: Vec<Node>,
    pub output: usize,
}

impl Graph {
    /// Per-sample input shape.
    pub fn input_shape(&self) -> &[usize] {
        &self.nodes[0].shape
    }

    /// Per-sample output shape (for a classifier, `[num_classes]`).
    pub fn output_shape(&self) -> &[usize] {
        &self.nodes[self.output].shape
    }

    /// Looks a node up by name.
    pub fn node_index(&self, name: &str) -> Option<usize> {
        self.nodes.iter().position(|n| n.name == name)
    }

    /// Indices of the nodes that read node `i`'s output.
    pub fn consumers(&self, i: usize) -> Vec<usize> {
        self.nodes
            .iter()
            .enumerate()
            .filter(|(_, n)| n.inputs.contains(&i))
            .map(|(j, _)| j)
            .collect()
    }

    /// Checks the wiring (topological order, unique names, one input node) and re-infers every
    /// shape, failing if a stored shape disagrees. Call after loading or rewriting a graph.
    pub fn validate(&self) -> Result<()> {
        if self.nodes.is_empty() {
            return Err(LopperError::Graph("the graph has no nodes".into()));
        }
        if !matches!(self.nodes[0].op, Op::Input { .. }) {
            return Err(LopperError::Graph("node 0 must be the input".into()));
        }
        if self.output >= self.nodes.len() {
            return Err(LopperError::Graph(format!(
                "output index {} is out of range ({} nodes)",
                self.output,
                self.nodes.len()
            )));
        }
        let mut names = std::collections::HashSet::new();
        for (i, node) in self.nodes.iter().enumerate() {
            if !names.insert(node.name.as_str()) {
                return Err(LopperError::Graph(format!(
                    "duplicate node name '{}'",
                    node.name
                )));
            }
            if i > 0 && matches!(node.op, Op::Input { .. }) {
                return Err(LopperError::Graph(format!(
                    "node '{}': only node 0 may be an input",
                    node.name
                )));
            }
            if let Some(&bad) = node.inputs.iter().find(|&&j| j >= i) {
                return Err(LopperError::Graph(format!(
                    "node '{}' (#{i}) reads node #{bad}, which does not come before it",
                    node.name
                )));
            }
            let inputs: Vec<&[usize]> = node
                .inputs
                .iter()
                .map(|&j| self.nodes[j].shape.as_slice())
                .collect();
            let inferred = shape::infer(&node.op, &inputs)
                .map_err(|e| LopperError::Graph(format!("node '{}': {e}", node.name)))?;
            if inferred != node.shape {
                return Err(LopperError::Graph(format!(
                    "node '{}': stored shape {:?} but the inputs give {:?}",
                    node.name, node.shape, inferred
                )));
            }
        }
        Ok(())
    }

    /// Total number of trainable parameters.
    pub fn num_params(&self) -> usize {
        self.nodes.iter().map(|n| n.op.num_params()).sum()
    }
}

pub use shape::infer as infer_shape;
