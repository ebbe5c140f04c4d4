//! A small builder that appends nodes, infers their shapes on the way and names them.

use super::{Graph, Node, Op, shape};
use crate::error::{LopperError, Result};

/// Appends nodes in order. Every method returns the new node's index, to wire later nodes.
#[derive(Debug, Clone)]
pub struct GraphBuilder {
    graph: Graph,
    /// First error met; reported by [`GraphBuilder::finish`] so zoo code reads straight.
    error: Option<String>,
}

impl GraphBuilder {
    /// Starts a graph whose node 0 is the input of the given per-sample shape.
    pub fn new(name: &str, input_shape: &[usize]) -> Self {
        let mut b = GraphBuilder {
            graph: Graph {
                name: name.to_string(),
                nodes: vec![],
                output: 0,
            },
            error: None,
        };
        b.push(
            "input",
            Op::Input {
                shape: input_shape.to_vec(),
            },
            &[],
        );
        b
    }

    /// Per-sample shape of node `i`.
    pub fn shape(&self, i: usize) -> &[usize] {
        self.graph
            .nodes
            .get(i)
            .map(|n| n.shape.as_slice())
            .unwrap_or(&[])
    }

    /// Appends a node; shape errors are kept and reported by `finish`.
    pub fn push(&mut self, name: &str, op: Op, inputs: &[usize]) -> usize {
        let idx = self.graph.nodes.len();
        let shapes: Vec<&[usize]> = inputs.iter().map(|&i| self.shape(i)).collect();
        let shape = match shape::infer(&op, &shapes) {
            Ok(s) => s,
            Err(e) => {
                self.error.get_or_insert(format!("node '{name}': {e}"));
                vec![]
            }
        };
        self.graph.nodes.push(Node {
            name: name.to_string(),
            op,
            inputs: inputs.to_vec(),
            shape,
        });
        idx
    }

    /// Convolution with square kernel, stride and padding; output channels from the argument,
    /// input channels from `x`'s shape.
    #[allow(clippy::too_many_arguments)]
    pub fn conv(
        &mut self,
        name: &str,
        x: usize,
        out_channels: usize,
        kernel: usize,
        stride: usize,
        padding: usize,
        groups: usize,
        bias: bool,
    ) -> usize {
        let in_channels = self.shape(x).first().copied().unwrap_or(0);
        self.push(
            name,
            Op::Conv2d {
                in_channels,
                out_channels,
                kernel: [kernel; 2],
                stride: [stride; 2],
                padding: [padding; 2],
                dilation: [1, 1],
                groups,
                bias,
            },
            &[x],
        )
    }

    pub fn bn(&mut self, name: &str, x: usize) -> usize {
        let channels = self.shape(x).first().copied().unwrap_or(0);
        self.push(
            name,
            Op::BatchNorm2d {
                channels,
                eps: 1e-5,
                momentum: 0.1,
            },
            &[x],
        )
    }

    pub fn linear(&mut self, name: &str, x: usize, out_features: usize, bias: bool) -> usize {
        let in_features = self.shape(x).last().copied().unwrap_or(0);
        self.push(
            name,
            Op::Linear {
                in_features,
                out_features,
                bias,
            },
            &[x],
        )
    }

    pub fn op(&mut self, name: &str, op: Op, x: usize) -> usize {
        self.push(name, op, &[x])
    }

    pub fn relu(&mut self, name: &str, x: usize) -> usize {
        self.push(name, Op::Relu, &[x])
    }

    pub fn max_pool(&mut self, name: &str, x: usize, kernel: usize, stride: usize) -> usize {
        self.push(
            name,
            Op::MaxPool2d {
                kernel: [kernel; 2],
                stride: [stride; 2],
                padding: [0, 0],
            },
            &[x],
        )
    }

    /// Conv, batch norm, then an optional activation: the unit most CNNs are made of.
    #[allow(clippy::too_many_arguments)]
    pub fn conv_bn_act(
        &mut self,
        prefix: &str,
        x: usize,
        out_channels: usize,
        kernel: usize,
        stride: usize,
        groups: usize,
        act: Option<Op>,
    ) -> usize {
        let c = self.conv(
            &format!("{prefix}.conv"),
            x,
            out_channels,
            kernel,
            stride,
            kernel / 2,
            groups,
            false,
        );
        let b = self.bn(&format!("{prefix}.bn"), c);
        match act {
            Some(op) => self.push(&format!("{prefix}.act"), op, &[b]),
            None => b,
        }
    }

    /// Marks `output` as the graph's output, validates and returns the graph.
    pub fn finish(mut self, output: usize) -> Result<Graph> {
        if let Some(e) = self.error {
            return Err(LopperError::Graph(e));
        }
        self.graph.output = output;
        self.graph.validate()?;
        Ok(self.graph)
    }
}
