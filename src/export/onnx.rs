//! ONNX export (opset 13, IR version 7) of a model graph with its weights, for inference.
//!
//! Every lopper op maps to standard ONNX operators: Conv, BatchNormalization, Gemm (or MatMul +
//! Add on sequences), Relu, Clip (ReLU6), Erf-based GELU, MaxPool, AveragePool,
//! GlobalAveragePool + Flatten, Add, Concat, Flatten, and LayerNorm decomposed into ReduceMean
//! arithmetic (LayerNormalization only exists from opset 17). Dropout is the identity at
//! inference and is left out. The batch axis is symbolic (`N`).

use std::collections::HashMap;

use burn::tensor::TensorData;

use super::protobuf::Message;
use crate::error::{LopperError, Result};
use crate::graph::Op;
use crate::model::Model;

pub const OPSET: i64 = 13;
const IR_VERSION: i64 = 7;
const FLOAT: i64 = 1; // TensorProto.DataType.FLOAT

/// The name of the graph's input and output values.
pub const INPUT_NAME: &str = "input";
pub const OUTPUT_NAME: &str = "logits";

enum Attr<'a> {
    Int(&'a str, i64),
    Ints(&'a str, Vec<i64>),
    Float(&'a str, f32),
}

/// Nodes and initialisers of the ONNX graph under construction.
#[derive(Default)]
struct OnnxGraph {
    nodes: Vec<Message>,
    initializers: Vec<Message>,
}

impl OnnxGraph {
    fn node(&mut self, op: &str, name: &str, inputs: &[&str], output: &str, attrs: &[Attr]) {
        let mut n = Message::new();
        for i in inputs {
            n.string(1, i);
        }
        n.string(2, output).string(3, name).string(4, op);
        for a in attrs {
            let mut m = Message::new();
            match a {
                Attr::Int(k, v) => m.string(1, k).int(20, 2).int(3, *v),
                Attr::Ints(k, v) => m.string(1, k).int(20, 7).ints(8, v),
                Attr::Float(k, v) => m.string(1, k).int(20, 1).float(2, *v),
            };
            n.message(5, &m);
        }
        self.nodes.push(n);
    }

    fn initializer(&mut self, name: &str, dims: &[usize], values: &[f32]) {
        let mut t = Message::new();
        t.ints(1, &dims.iter().map(|&d| d as i64).collect::<Vec<_>>())
            .int(2, FLOAT)
            .string(8, name)
            .bytes(
                9,
                &values
                    .iter()
                    .flat_map(|v| v.to_le_bytes())
                    .collect::<Vec<_>>(),
            );
        self.initializers.push(t);
    }
}

fn value_info(name: &str, dims: &[usize]) -> Message {
    let mut shape = Message::new();
    let mut batch = Message::new();
    batch.string(2, "N");
    shape.message(1, &batch);
    for &d in dims {
        let mut dim = Message::new();
        dim.int(1, d as i64);
        shape.message(1, &dim);
    }
    let mut tensor = Message::new();
    tensor.int(1, FLOAT).message(2, &shape);
    let mut ty = Message::new();
    ty.message(1, &tensor);
    let mut v = Message::new();
    v.string(1, name).message(2, &ty);
    v
}

fn pair(v: [usize; 2]) -> Vec<i64> {
    vec![v[0] as i64, v[1] as i64]
}

/// ONNX pads are [begin_h, begin_w, end_h, end_w]; lopper pads symmetrically.
fn pads(p: [usize; 2]) -> Vec<i64> {
    vec![p[0] as i64, p[1] as i64, p[0] as i64, p[1] as i64]
}

fn pool(kernel: &[usize; 2], stride: &[usize; 2], padding: &[usize; 2]) -> Vec<Attr<'static>> {
    vec![
        Attr::Ints("kernel_shape", pair(*kernel)),
        Attr::Ints("strides", pair(*stride)),
        Attr::Ints("pads", pads(*padding)),
    ]
}

/// The model as an ONNX file's bytes.
pub fn to_onnx(model: &Model) -> Result<Vec<u8>> {
    let graph = &model.graph;
    let weights: HashMap<String, TensorData> = model.named_tensors().into_iter().collect();
    let mut g = OnnxGraph::default();
    let add_param = |g: &mut OnnxGraph, node: &str, param: &str| -> Result<String> {
        let name = format!("{node}.{param}");
        let data = weights
            .get(&name)
            .ok_or_else(|| LopperError::Export(format!("no tensor '{name}'")))?;
        let values = data
            .try_to_vec::<f32>()
            .map_err(|e| LopperError::Export(format!("tensor '{name}': {e:?}")))?;
        g.initializer(&name, data.shape(), &values);
        Ok(name)
    };
    // The ONNX value holding each node's output (a node that ONNX does not need, such as
    // dropout, forwards its input's value).
    let mut value: Vec<String> = Vec::with_capacity(graph.nodes.len());
    let mut input_dims = vec![];
    for (i, node) in graph.nodes.iter().enumerate() {
        let name = node.name.as_str();
        let ins: Vec<&str> = node.inputs.iter().map(|&j| value[j].as_str()).collect();
        let x = ins.first().copied().unwrap_or("");
        let out = if i == graph.output {
            OUTPUT_NAME.to_string()
        } else {
            name.to_string()
        };
        let input_rank = node
            .inputs
            .first()
            .map_or(0, |&j| graph.nodes[j].shape.len());
        match &node.op {
            Op::Input { shape } => {
                input_dims = shape.clone();
                value.push(INPUT_NAME.to_string());
                continue;
            }
            Op::Conv2d {
                kernel,
                stride,
                padding,
                dilation,
                groups,
                bias,
                ..
            } => {
                let w = add_param(&mut g, name, "weight")?;
                let mut inputs = vec![x, w.as_str()];
                let b = if *bias {
                    Some(add_param(&mut g, name, "bias")?)
                } else {
                    None
                };
                if let Some(b) = &b {
                    inputs.push(b);
                }
                g.node(
                    "Conv",
                    name,
                    &inputs,
                    &out,
                    &[
                        Attr::Ints("kernel_shape", pair(*kernel)),
                        Attr::Ints("strides", pair(*stride)),
                        Attr::Ints("pads", pads(*padding)),
                        Attr::Ints("dilations", pair(*dilation)),
                        Attr::Int("group", *groups as i64),
                    ],
                );
            }
            Op::BatchNorm2d { eps, .. } => {
                let p: Vec<String> = ["weight", "bias", "running_mean", "running_var"]
                    .iter()
                    .map(|p| add_param(&mut g, name, p))
                    .collect::<Result<_>>()?;
                let inputs: Vec<&str> = std::iter::once(x)
                    .chain(p.iter().map(String::as_str))
                    .collect();
                g.node(
                    "BatchNormalization",
                    name,
                    &inputs,
                    &out,
                    &[Attr::Float("epsilon", *eps as f32)],
                );
            }
            Op::Linear { bias, .. } => {
                // lopper stores the weight as [in, out], so x·W needs no transposition.
                let w = add_param(&mut g, name, "weight")?;
                let b = if *bias {
                    Some(add_param(&mut g, name, "bias")?)
                } else {
                    None
                };
                if input_rank == 1 {
                    let mut inputs = vec![x, w.as_str()];
                    if let Some(b) = &b {
                        inputs.push(b);
                    }
                    g.node("Gemm", name, &inputs, &out, &[]);
                } else {
                    match &b {
                        Some(b) => {
                            let mm = format!("{name}.matmul");
                            g.node("MatMul", &mm, &[x, &w], &mm, &[]);
                            g.node("Add", name, &[&mm, b], &out, &[]);
                        }
                        None => g.node("MatMul", name, &[x, &w], &out, &[]),
                    }
                }
            }
            Op::Relu => g.node("Relu", name, &[x], &out, &[]),
            Op::Relu6 => {
                let (lo, hi) = (format!("{name}.min"), format!("{name}.max"));
                g.initializer(&lo, &[], &[0.0]);
                g.initializer(&hi, &[], &[6.0]);
                g.node("Clip", name, &[x, &lo, &hi], &out, &[]);
            }
            Op::Gelu => {
                // Exact GELU, as Burn computes it: x · ½ · (1 + erf(x / √2)).
                let c = |s: &str| format!("{name}.{s}");
                g.initializer(&c("sqrt2"), &[], &[std::f32::consts::SQRT_2]);
                g.initializer(&c("one"), &[], &[1.0]);
                g.initializer(&c("half"), &[], &[0.5]);
                g.node("Div", &c("div"), &[x, &c("sqrt2")], &c("div"), &[]);
                g.node("Erf", &c("erf"), &[&c("div")], &c("erf"), &[]);
                g.node("Add", &c("add"), &[&c("erf"), &c("one")], &c("add"), &[]);
                g.node("Mul", &c("mul"), &[x, &c("add")], &c("mul"), &[]);
                g.node("Mul", name, &[&c("mul"), &c("half")], &out, &[]);
            }
            Op::MaxPool2d {
                kernel,
                stride,
                padding,
            } => g.node("MaxPool", name, &[x], &out, &pool(kernel, stride, padding)),
            Op::AvgPool2d {
                kernel,
                stride,
                padding,
            } => {
                // Burn's average pooling counts the zero padding, as PyTorch's default does.
                let mut attrs = pool(kernel, stride, padding);
                attrs.push(Attr::Int("count_include_pad", 1));
                g.node("AveragePool", name, &[x], &out, &attrs);
            }
            Op::GlobalAvgPool => {
                let pooled = format!("{name}.pool");
                g.node("GlobalAveragePool", &pooled, &[x], &pooled, &[]);
                g.node("Flatten", name, &[&pooled], &out, &[Attr::Int("axis", 1)]);
            }
            Op::Add => {
                // ONNX Add is binary: chain it over two or more inputs.
                let mut acc = x.to_string();
                for (k, y) in ins.iter().enumerate().skip(1) {
                    let o = if k + 1 == ins.len() {
                        out.clone()
                    } else {
                        format!("{name}.sum{k}")
                    };
                    g.node("Add", &o, &[&acc, y], &o, &[]);
                    acc = o;
                }
            }
            Op::Concat => g.node("Concat", name, &ins, &out, &[Attr::Int("axis", 1)]),
            Op::Flatten if input_rank > 1 => {
                g.node("Flatten", name, &[x], &out, &[Attr::Int("axis", 1)])
            }
            Op::Flatten | Op::Dropout { .. } => {
                if i == graph.output {
                    g.node("Identity", name, &[x], &out, &[]);
                } else {
                    value.push(x.to_string());
                    continue;
                }
            }
            Op::LayerNorm { eps, .. } => {
                // (x - mean) / sqrt(var + eps) · γ + β over the last axis.
                let gamma = add_param(&mut g, name, "weight")?;
                let beta = add_param(&mut g, name, "bias")?;
                let c = |s: &str| format!("{name}.{s}");
                let last = Attr::Ints("axes", vec![-1]);
                g.initializer(&c("eps"), &[], &[*eps as f32]);
                g.node("ReduceMean", &c("mean"), &[x], &c("mean"), &[last]);
                g.node("Sub", &c("centred"), &[x, &c("mean")], &c("centred"), &[]);
                let sq = [c("centred"), c("centred")];
                g.node("Mul", &c("sq"), &[&sq[0], &sq[1]], &c("sq"), &[]);
                let last = Attr::Ints("axes", vec![-1]);
                g.node("ReduceMean", &c("var"), &[&c("sq")], &c("var"), &[last]);
                g.node(
                    "Add",
                    &c("var_eps"),
                    &[&c("var"), &c("eps")],
                    &c("var_eps"),
                    &[],
                );
                g.node("Sqrt", &c("std"), &[&c("var_eps")], &c("std"), &[]);
                g.node(
                    "Div",
                    &c("norm"),
                    &[&c("centred"), &c("std")],
                    &c("norm"),
                    &[],
                );
                g.node(
                    "Mul",
                    &c("scaled"),
                    &[&c("norm"), &gamma],
                    &c("scaled"),
                    &[],
                );
                g.node("Add", name, &[&c("scaled"), &beta], &out, &[]);
            }
        }
        value.push(out);
    }

    let mut gp = Message::new();
    for n in &g.nodes {
        gp.message(1, n);
    }
    gp.string(2, &graph.name);
    for t in &g.initializers {
        gp.message(5, t);
    }
    gp.message(11, &value_info(INPUT_NAME, &input_dims));
    gp.message(
        12,
        &value_info(OUTPUT_NAME, &graph.nodes[graph.output].shape),
    );

    let mut opset = Message::new();
    opset.string(1, "").int(2, OPSET);
    let mut m = Message::new();
    m.int(1, IR_VERSION)
        .string(2, "lopper")
        .string(3, env!("CARGO_PKG_VERSION"))
        .message(8, &opset)
        .message(7, &gp);
    Ok(m.into_bytes())
}
