//! Counting multiply-accumulates and parameters, per layer and in total.
//!
//! What counts: MACs of convolutions (`out_c * H_out * W_out * in_c/groups * kh * kw`) and
//! linear layers (`in * out`, times the sequence length for `[T, F]` inputs), per sample.
//! BatchNorm, activations, pooling, additions and biases count no MACs. FLOPs, where shown,
//! are reported as 2 x MACs. Parameters are the trainable ones (weights, biases, norm scales
//! and shifts); BatchNorm running statistics are buffers and do not count.

use serde::Serialize;

use crate::graph::{Graph, Op};

/// Counts for one node.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct LayerCount {
    pub name: String,
    pub kind: String,
    pub output_shape: Vec<usize>,
    pub macs: u64,
    pub params: u64,
}

/// Counts for a whole graph, per sample.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ModelCount {
    pub model: String,
    pub input_shape: Vec<usize>,
    pub macs: u64,
    pub flops: u64,
    pub params: u64,
    pub layers: Vec<LayerCount>,
}

/// MACs of node `i` for one sample.
pub fn node_macs(graph: &Graph, i: usize) -> u64 {
    let node = &graph.nodes[i];
    match &node.op {
        Op::Conv2d {
            in_channels,
            kernel,
            groups,
            ..
        } => {
            let out: usize = node.shape.iter().product();
            (out * (in_channels / groups) * kernel[0] * kernel[1]) as u64
        }
        Op::Linear {
            in_features,
            out_features,
            ..
        } => {
            let rows: usize = node.shape[..node.shape.len() - 1].iter().product();
            (rows * in_features * out_features) as u64
        }
        _ => 0,
    }
}

/// Per-layer and total MACs and parameters of `graph`.
pub fn count(graph: &Graph) -> ModelCount {
    let layers: Vec<LayerCount> = graph
        .nodes
        .iter()
        .enumerate()
        .map(|(i, n)| LayerCount {
            name: n.name.clone(),
            kind: n.op.kind().to_string(),
            output_shape: n.shape.clone(),
            macs: node_macs(graph, i),
            params: n.op.num_params() as u64,
        })
        .collect();
    let macs = layers.iter().map(|l| l.macs).sum();
    ModelCount {
        model: graph.name.clone(),
        input_shape: graph.input_shape().to_vec(),
        macs,
        flops: 2 * macs,
        params: layers.iter().map(|l| l.params).sum(),
        layers,
    }
}

/// `1234567` -> `"1.23M"`.
pub fn human(n: u64) -> String {
    match n {
        n if n >= 1_000_000_000 => format!("{:.2}G", n as f64 / 1e9),
        n if n >= 1_000_000 => format!("{:.2}M", n as f64 / 1e6),
        n if n >= 1_000 => format!("{:.2}K", n as f64 / 1e3),
        n => n.to_string(),
    }
}

impl ModelCount {
    /// A plain-text table: every node with parameters or MACs, then the totals.
    pub fn table(&self) -> String {
        let mut s = format!(
            "{:<32} {:<14} {:<16} {:>12} {:>10}\n",
            "layer", "op", "output", "MACs", "params"
        );
        for l in self.layers.iter().filter(|l| l.macs > 0 || l.params > 0) {
            s += &format!(
                "{:<32} {:<14} {:<16} {:>12} {:>10}\n",
                l.name,
                l.kind,
                format!("{:?}", l.output_shape),
                l.macs,
                l.params
            );
        }
        s += &format!(
            "total: {} MACs ({} FLOPs = 2 x MACs), {} parameters, per {:?} input\n",
            human(self.macs),
            human(self.flops),
            human(self.params),
            self.input_shape
        );
        s
    }
}
