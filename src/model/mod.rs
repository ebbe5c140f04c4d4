//! Execution of a [`Graph`] on Burn: the parameters as a Burn [`Module`] and the forward pass.
//!
//! [`Model`] holds its graph and one optional [`Layer`] per node (index = node index), so Burn's
//! optimisers, autodiff and device moves work on it unchanged, and surgery can rebuild a layer
//! from sliced tensors. Parameter ids are derived from parameter names, which makes optimiser
//! state saved in a checkpoint line up with a model loaded from the same checkpoint.

mod init;
mod io;

pub use io::{
    ARCH_FORMAT_VERSION, load_model, load_weights, read_architecture, safetensors_bytes,
    save_model, weights_bytes, write_architecture,
};

use std::collections::HashMap;

use burn::module::{Module, Param, ParamId, RunningState};
use burn::tensor::activation::{gelu, relu, relu6};
use burn::tensor::ops::{AvgPoolOptions, ConvOptions, MaxPoolOptions};
use burn::tensor::{Device, Distribution, Tensor, TensorData, module as fops};

use crate::error::{LopperError, Result};
use crate::graph::{Graph, Node, Op};
use crate::kernels::Rectifier;

/// Convolution weights, `[out, in/groups, kh, kw]`.
#[derive(Module, Debug)]
pub struct ConvParams {
    pub weight: Param<Tensor<4>>,
    pub bias: Option<Param<Tensor<1>>>,
}

/// Linear weights, `[in, out]` (Burn's layout; export transposes to PyTorch's `[out, in]`).
#[derive(Module, Debug)]
pub struct LinearParams {
    pub weight: Param<Tensor<2>>,
    pub bias: Option<Param<Tensor<1>>>,
}

/// BatchNorm running statistics (buffers: no gradient, updated in training forward passes).
#[derive(Module, Debug)]
pub struct RunningStats {
    pub mean: RunningState<Tensor<1>>,
    pub var: RunningState<Tensor<1>>,
}

/// Affine normalisation parameters (BatchNorm: with running statistics; LayerNorm: without).
#[derive(Module, Debug)]
pub struct NormParams {
    pub weight: Param<Tensor<1>>,
    pub bias: Param<Tensor<1>>,
    pub running: Option<RunningStats>,
}

/// The parameters of one node.
#[derive(Module, Debug)]
pub enum Layer {
    Conv(ConvParams),
    Linear(LinearParams),
    Norm(NormParams),
}

/// A graph with its weights: a Burn module.
#[derive(Module, Debug)]
pub struct Model {
    /// One entry per graph node; `None` for nodes without parameters.
    pub layers: Vec<Option<Layer>>,
    #[module(skip)]
    pub graph: Graph,
}

/// A value flowing along a graph edge, with the batch axis first.
#[derive(Debug, Clone)]
pub enum Value {
    /// `[N, F]`
    Flat(Tensor<2>),
    /// `[N, T, F]`
    Seq(Tensor<3>),
    /// `[N, C, H, W]`
    Spatial(Tensor<4>),
}

/// Applies the same rank-generic expression to whichever tensor a [`Value`] holds.
macro_rules! map_value {
    ($v:expr, |$t:ident| $body:expr) => {
        match $v {
            Value::Flat($t) => Value::Flat($body),
            Value::Seq($t) => Value::Seq($body),
            Value::Spatial($t) => Value::Spatial($body),
        }
    };
}

impl Value {
    pub fn dims(&self) -> Vec<usize> {
        match self {
            Value::Flat(t) => t.dims().to_vec(),
            Value::Seq(t) => t.dims().to_vec(),
            Value::Spatial(t) => t.dims().to_vec(),
        }
    }

    /// Whether the value lives on an autodiff device (a training forward pass).
    pub fn is_autodiff(&self) -> bool {
        match self {
            Value::Flat(t) => t.is_autodiff(),
            Value::Seq(t) => t.is_autodiff(),
            Value::Spatial(t) => t.is_autodiff(),
        }
    }

    fn spatial(self, node: &Node) -> Result<Tensor<4>> {
        match self {
            Value::Spatial(t) => Ok(t),
            other => Err(LopperError::Graph(format!(
                "node '{}' needs a [N, C, H, W] input, got {:?}",
                node.name,
                other.dims()
            ))),
        }
    }

    /// Multiplies the channel axis (axis 1 for spatial values, the last axis otherwise) by a
    /// per-channel factor: the hook structured pruning masks go through.
    pub fn scale_channels(self, factor: Tensor<1>) -> Value {
        let c = factor.dims()[0];
        match self {
            Value::Spatial(t) => Value::Spatial(t * factor.reshape([1, c, 1, 1])),
            Value::Seq(t) => Value::Seq(t * factor.reshape([1, 1, c])),
            Value::Flat(t) => Value::Flat(t * factor.reshape([1, c])),
        }
    }
}

/// A convolution's or linear layer's weight as the forward pass computes with it.
#[derive(Debug, Clone)]
pub enum Weight {
    /// `[out, in/groups, kh, kw]`
    Conv(Tensor<4>),
    /// `[in, out]`
    Linear(Tensor<2>),
}

/// Observes or rewrites the forward pass: a per-channel factor on a node's output (channel
/// masks), which the executor applies itself so that it can fold it into the node's kernel;
/// a node's output (activation statistics, any rewrite), called for every node after the op,
/// before its consumers read the value; and the weight a convolution or linear node computes
/// with (weight masks: a transform of the parameter inside the forward pass, so gradients flow
/// through it, while the stored parameter stays as it is, like Burn's `Reparameterization`
/// without changing the module).
pub trait NodeHook {
    /// A factor per output channel of node `index` (`None`: none), multiplied in before
    /// [`NodeHook::after_node`] sees the value. `autodiff` tells a training forward pass (its
    /// values carry gradients) from an evaluation one.
    fn channel_scale(&self, _index: usize, _node: &Node, _autodiff: bool) -> Option<Tensor<1>> {
        None
    }
    fn after_node(&self, _index: usize, _node: &Node, value: Value) -> Value {
        value
    }
    /// Whether [`NodeHook::after_node`] needs node `index`'s own output. `false` lets the
    /// executor fuse the node with the one after it (BatchNorm with its ReLU), and then
    /// `after_node` sees the fused output. Hooks that only scale channels or transform weights
    /// say `false`.
    fn reads_output(&self, _index: usize, _node: &Node) -> bool {
        true
    }
    fn weight(&self, _index: usize, _node: &Node, weight: Weight) -> Weight {
        weight
    }
}

/// `value` times the hook's channel factor for node `index`, if it has one.
fn channel_scaled(hook: &dyn NodeHook, index: usize, node: &Node, value: Value) -> Value {
    match hook.channel_scale(index, node, value.is_autodiff()) {
        Some(m) => value.scale_channels(m),
        None => value,
    }
}

/// The hook that does nothing.
pub struct NoHook;
impl NodeHook for NoHook {
    fn reads_output(&self, _index: usize, _node: &Node) -> bool {
        false
    }
}

/// A stable parameter id from a parameter's name (FNV-1a), see the module docs.
pub(crate) fn param_id(name: &str) -> ParamId {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in name.bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x100000001b3);
    }
    ParamId::from(h)
}

fn param<const D: usize>(name: &str, data: TensorData, device: &Device) -> Param<Tensor<D>> {
    // `from_tensor` marks the parameter trainable even on a plain device (so a later `fork` to
    // an autodiff device tracks it); re-wrap it with the stable id.
    let (_, value, mapper) = Param::from_tensor(Tensor::<D>::from_data(data, device)).consume();
    Param::from_mapped_value(param_id(name), value, mapper)
}

impl Layer {
    /// Builds the layer of `node` from named tensors (`weight`, `bias`, `running_mean`, ...).
    /// `get` returns the data of a named tensor with the shape the op declares.
    pub fn from_tensors(
        node: &Node,
        device: &Device,
        mut get: impl FnMut(&str, &[usize]) -> Result<TensorData>,
    ) -> Result<Option<Layer>> {
        let shapes: HashMap<&str, Vec<usize>> = node.op.param_shapes().into_iter().collect();
        if shapes.is_empty() {
            return Ok(None);
        }
        let mut take = |name: &str| -> Result<TensorData> { get(name, &shapes[name]) };
        let full = |p: &str| format!("{}.{p}", node.name);
        let layer = match &node.op {
            Op::Conv2d { bias, .. } => Layer::Conv(ConvParams {
                weight: param(&full("weight"), take("weight")?, device),
                bias: if *bias {
                    Some(param(&full("bias"), take("bias")?, device))
                } else {
                    None
                },
            }),
            Op::Linear { bias, .. } => Layer::Linear(LinearParams {
                weight: param(&full("weight"), take("weight")?, device),
                bias: if *bias {
                    Some(param(&full("bias"), take("bias")?, device))
                } else {
                    None
                },
            }),
            Op::BatchNorm2d { .. } => Layer::Norm(NormParams {
                weight: param(&full("weight"), take("weight")?, device),
                bias: param(&full("bias"), take("bias")?, device),
                running: Some(RunningStats {
                    mean: RunningState::with_id(
                        param_id(&full("running_mean")),
                        Tensor::from_data(take("running_mean")?, device),
                    ),
                    var: RunningState::with_id(
                        param_id(&full("running_var")),
                        Tensor::from_data(take("running_var")?, device),
                    ),
                }),
            }),
            Op::LayerNorm { .. } => Layer::Norm(NormParams {
                weight: param(&full("weight"), take("weight")?, device),
                bias: param(&full("bias"), take("bias")?, device),
                running: None,
            }),
            _ => return Ok(None),
        };
        Ok(Some(layer))
    }

    /// The layer's tensors by name, in the order of [`Op::param_shapes`], as plain f32 data.
    pub fn tensors(&self) -> Vec<(&'static str, TensorData)> {
        fn data<const D: usize>(t: Tensor<D>) -> TensorData {
            t.without_autodiff().into_data()
        }
        match self {
            Layer::Conv(c) => {
                let mut v = vec![("weight", data(c.weight.val()))];
                if let Some(b) = &c.bias {
                    v.push(("bias", data(b.val())));
                }
                v
            }
            Layer::Linear(l) => {
                let mut v = vec![("weight", data(l.weight.val()))];
                if let Some(b) = &l.bias {
                    v.push(("bias", data(b.val())));
                }
                v
            }
            Layer::Norm(n) => {
                let mut v = vec![
                    ("weight", data(n.weight.val())),
                    ("bias", data(n.bias.val())),
                ];
                if let Some(r) = &n.running {
                    v.push(("running_mean", data(r.mean.value_sync())));
                    v.push(("running_var", data(r.var.value_sync())));
                }
                v
            }
        }
    }
}

impl Model {
    /// A freshly initialised model (Kaiming-normal convolutions, PyTorch-default linear layers,
    /// unit BatchNorm), deterministic for a given seed on every backend.
    pub fn init(graph: Graph, seed: u64, device: &Device) -> Result<Model> {
        let mut rng = init::Rng::new(seed);
        Model::from_tensors(graph, device, |node, name, shape| {
            Ok(init::initial_tensor(&node.op, name, shape, &mut rng))
        })
    }

    /// A model of `graph` whose tensors come from `get(node, param_name, shape)`, which must
    /// return data of exactly that shape (checked).
    pub fn from_tensors(
        graph: Graph,
        device: &Device,
        mut get: impl FnMut(&Node, &str, &[usize]) -> Result<TensorData>,
    ) -> Result<Model> {
        graph.validate()?;
        let layers = graph
            .nodes
            .iter()
            .map(|node| {
                Layer::from_tensors(node, device, |name, shape| {
                    let data = get(node, name, shape)?;
                    if data.shape().to_vec() != shape {
                        return Err(LopperError::WeightMismatch(format!(
                            "{}.{name}: got shape {:?}, expected {shape:?}",
                            node.name,
                            data.shape().to_vec()
                        )));
                    }
                    Ok(data)
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Model { layers, graph })
    }

    /// All tensors by full name (`<node>.<param>`), in graph order.
    pub fn named_tensors(&self) -> Vec<(String, TensorData)> {
        self.graph
            .nodes
            .iter()
            .zip(&self.layers)
            .filter_map(|(n, l)| l.as_ref().map(|l| (n, l)))
            .flat_map(|(n, l)| {
                l.tensors()
                    .into_iter()
                    .map(move |(p, d)| (format!("{}.{p}", n.name), d))
            })
            .collect()
    }

    /// Forward pass of an image batch `[N, C, H, W]` to the output node (`[N, classes]`).
    /// `train` enables dropout and BatchNorm batch statistics (on an autodiff device).
    pub fn forward(&self, x: Tensor<4>, train: bool) -> Tensor<2> {
        match self.forward_hooked(Value::Spatial(x), train, &NoHook) {
            Ok(Value::Flat(t)) => t,
            Ok(other) => panic!("the model's output is not [N, F]: {:?}", other.dims()),
            Err(e) => panic!("{e}"),
        }
    }

    /// Forward pass with a hook on every node; errors on a value of the wrong rank.
    pub fn forward_hooked(&self, input: Value, train: bool, hook: &dyn NodeHook) -> Result<Value> {
        let nodes = &self.graph.nodes;
        // Drop each value after its last reader so peak memory stays at the live frontier.
        let mut last_use = vec![0usize; nodes.len()];
        for (i, n) in nodes.iter().enumerate() {
            for &j in &n.inputs {
                last_use[j] = i;
            }
        }
        last_use[self.graph.output] = usize::MAX;
        let fused = self.rectifier_fusions(hook);
        let mut values: Vec<Option<Value>> = vec![None; nodes.len()];
        let mut input = Some(input);
        for (i, node) in nodes.iter().enumerate() {
            let args: Vec<Value> = node
                .inputs
                .iter()
                .enumerate()
                .map(|(k, &j)| {
                    // A node may read one value twice (x + x): move it out on the last read.
                    let last_read = last_use[j] == i && !node.inputs[k + 1..].contains(&j);
                    let v = if last_read {
                        values[j].take()
                    } else {
                        values[j].clone()
                    };
                    v.ok_or_else(|| LopperError::Graph(format!("node #{j} has no value")))
                })
                .collect::<Result<_>>()?;
            let out = match &node.op {
                Op::Input { .. } => {
                    let x = input
                        .take()
                        .ok_or_else(|| LopperError::Graph("the input was read twice".into()))?;
                    channel_scaled(hook, i, node, x)
                }
                // The BatchNorm before it applied this rectifier in its kernel.
                Op::Relu | Op::Relu6 if fused[node.inputs[0]] != Rectifier::None => {
                    let x = args.into_iter().next().ok_or_else(|| {
                        LopperError::Graph(format!("node '{}' has no input", node.name))
                    })?;
                    channel_scaled(hook, i, node, x)
                }
                op => self.apply(i, node, op, args, train, hook, fused[i])?,
            };
            values[i] = Some(hook.after_node(i, node, out));
        }
        values[self.graph.output]
            .take()
            .ok_or_else(|| LopperError::Graph("the output node has no value".into()))
    }

    /// Per node: the rectifier (ReLU or ReLU6) a BatchNorm applies in its own kernel for the
    /// node reading it (its only reader), as the hook allows (see [`NodeHook::reads_output`]);
    /// `None` for every other node.
    fn rectifier_fusions(&self, hook: &dyn NodeHook) -> Vec<Rectifier> {
        let nodes = &self.graph.nodes;
        let mut readers = vec![Vec::new(); nodes.len()];
        for (j, n) in nodes.iter().enumerate() {
            for &i in &n.inputs {
                readers[i].push(j);
            }
        }
        (0..nodes.len())
            .map(|i| {
                let fusable = matches!(nodes[i].op, Op::BatchNorm2d { .. })
                    && i != self.graph.output
                    && !hook.reads_output(i, &nodes[i]);
                match readers[i][..] {
                    [j] if fusable && nodes[j].op == Op::Relu => Rectifier::Relu,
                    [j] if fusable && nodes[j].op == Op::Relu6 => Rectifier::Relu6,
                    _ => Rectifier::None,
                }
            })
            .collect()
    }

    /// Node `i`'s op on its inputs, with the hook's channel scale applied to the output (folded
    /// into BatchNorm's kernel, like the rectifier after it when `fused` is not `None`).
    #[allow(clippy::too_many_arguments)]
    fn apply(
        &self,
        i: usize,
        node: &Node,
        op: &Op,
        args: Vec<Value>,
        train: bool,
        hook: &dyn NodeHook,
        fused: Rectifier,
    ) -> Result<Value> {
        let mut args = args.into_iter();
        let x = args
            .next()
            .ok_or_else(|| LopperError::Graph(format!("node '{}' has no input", node.name)))?;
        if let Op::BatchNorm2d { eps, momentum, .. } = op {
            let scale = hook.channel_scale(i, node, x.is_autodiff());
            let x = x.spatial(node)?;
            return self.batch_norm(i, node, x, *eps, *momentum, train, scale, fused);
        }
        let out = self.apply_op(i, node, op, x, args, train, hook)?;
        Ok(channel_scaled(hook, i, node, out))
    }

    /// BatchNorm on an image batch: batch statistics (updating the running ones) in training,
    /// running statistics otherwise; then the channel scale and, when fused, the rectifier.
    #[allow(clippy::too_many_arguments)]
    fn batch_norm(
        &self,
        i: usize,
        node: &Node,
        x: Tensor<4>,
        eps: f64,
        momentum: f64,
        train: bool,
        scale: Option<Tensor<1>>,
        relu: Rectifier,
    ) -> Result<Value> {
        let Some(Some(Layer::Norm(p))) = self.layers.get(i) else {
            return Err(LopperError::Graph(format!(
                "node '{}' has no parameters",
                node.name
            )));
        };
        let Some(stats) = &p.running else {
            return Err(LopperError::Graph(format!(
                "node '{}' has no running statistics",
                node.name
            )));
        };
        if train && x.is_autodiff() {
            let epilogue = crate::kernels::NormEpilogue { scale, relu };
            let (output, batch_mean, batch_var) =
                crate::kernels::batch_norm_train(x, p.weight.val(), p.bias.val(), epilogue, eps);
            let n = output.dims();
            let count = (n[0] * n[2] * n[3]) as f64;
            // Running variance is the unbiased estimate, as in PyTorch.
            let unbias = if count > 1.0 {
                count / (count - 1.0)
            } else {
                1.0
            };
            let mean = stats.mean.value_sync().mul_scalar(1.0 - momentum)
                + batch_mean.detach().without_autodiff().mul_scalar(momentum);
            let var = stats.var.value_sync().mul_scalar(1.0 - momentum)
                + batch_var
                    .detach()
                    .without_autodiff()
                    .mul_scalar(momentum * unbias);
            stats.mean.update(mean);
            stats.var.update(var);
            return Ok(Value::Spatial(output));
        }
        let y = fops::batch_norm(
            x,
            p.weight.val(),
            p.bias.val(),
            stats.mean.value_sync(),
            stats.var.value_sync(),
            eps,
        );
        let epilogue = crate::kernels::NormEpilogue { scale, relu };
        Ok(Value::Spatial(epilogue.apply(y)))
    }

    #[allow(clippy::too_many_arguments)]
    fn apply_op(
        &self,
        i: usize,
        node: &Node,
        op: &Op,
        mut x: Value,
        args: std::vec::IntoIter<Value>,
        train: bool,
        hook: &dyn NodeHook,
    ) -> Result<Value> {
        let layer = self.layers.get(i).and_then(|l| l.as_ref());
        let missing = || LopperError::Graph(format!("node '{}' has no parameters", node.name));
        Ok(match op {
            Op::Input { .. } => x,
            Op::Conv2d {
                stride,
                padding,
                dilation,
                groups,
                ..
            } => {
                let Some(Layer::Conv(p)) = layer else {
                    return Err(missing());
                };
                let opts = ConvOptions::new(*stride, *padding, *dilation, *groups);
                let Weight::Conv(w) = hook.weight(i, node, Weight::Conv(p.weight.val())) else {
                    return Err(LopperError::Graph(format!(
                        "a hook changed the kind of '{}''s weight",
                        node.name
                    )));
                };
                Value::Spatial(crate::kernels::conv2d(
                    x.spatial(node)?,
                    w,
                    p.bias.as_ref().map(|b| b.val()),
                    opts,
                ))
            }
            Op::BatchNorm2d { .. } => unreachable!("BatchNorm runs in Model::batch_norm"),
            Op::Linear { .. } => {
                let Some(Layer::Linear(p)) = layer else {
                    return Err(missing());
                };
                let Weight::Linear(w) = hook.weight(i, node, Weight::Linear(p.weight.val())) else {
                    return Err(LopperError::Graph(format!(
                        "a hook changed the kind of '{}''s weight",
                        node.name
                    )));
                };
                let b = p.bias.as_ref().map(|b| b.val());
                match x {
                    Value::Flat(t) => Value::Flat(fops::linear(t, w, b)),
                    Value::Seq(t) => Value::Seq(fops::linear(t, w, b)),
                    Value::Spatial(_) => {
                        return Err(LopperError::Graph(format!(
                            "linear '{}' applied to an image; flatten first",
                            node.name
                        )));
                    }
                }
            }
            Op::LayerNorm { eps, .. } => {
                let Some(Layer::Norm(p)) = layer else {
                    return Err(missing());
                };
                let (g, b) = (p.weight.val(), p.bias.val());
                map_value!(x, |t| fops::layer_norm(t, g.clone(), Some(b.clone()), *eps))
            }
            Op::Relu => map_value!(x, |t| relu(t)),
            Op::Relu6 => map_value!(x, |t| relu6(t)),
            Op::Gelu => map_value!(x, |t| gelu(t)),
            Op::Dropout { p } => {
                if train && *p > 0.0 {
                    let keep = 1.0 - p;
                    map_value!(x, |t| {
                        let mask = t.random_like(Distribution::Bernoulli(keep));
                        t * mask.div_scalar(keep)
                    })
                } else {
                    x
                }
            }
            Op::MaxPool2d {
                kernel,
                stride,
                padding,
            } => {
                let opts = MaxPoolOptions::new(*kernel)
                    .with_stride(*stride)
                    .with_padding(*padding);
                Value::Spatial(fops::max_pool2d(x.spatial(node)?, opts))
            }
            Op::AvgPool2d {
                kernel,
                stride,
                padding,
            } => {
                let opts = AvgPoolOptions::new(*kernel)
                    .with_stride(*stride)
                    .with_padding(*padding);
                Value::Spatial(fops::avg_pool2d(x.spatial(node)?, opts))
            }
            Op::GlobalAvgPool => {
                let t = x.spatial(node)?;
                let [n, c, _, _] = t.dims();
                Value::Flat(t.mean_dims(&[2, 3]).reshape([n, c]))
            }
            Op::Flatten => match x {
                Value::Spatial(t) => Value::Flat(t.flatten(1, 3)),
                Value::Seq(t) => Value::Flat(t.flatten(1, 2)),
                flat => flat,
            },
            Op::Add => {
                for y in args {
                    x = match (x, y) {
                        (Value::Spatial(a), Value::Spatial(b)) => Value::Spatial(a + b),
                        (Value::Flat(a), Value::Flat(b)) => Value::Flat(a + b),
                        (Value::Seq(a), Value::Seq(b)) => Value::Seq(a + b),
                        _ => {
                            return Err(LopperError::Graph(format!(
                                "add '{}' of values of different rank",
                                node.name
                            )));
                        }
                    };
                }
                x
            }
            Op::Concat => {
                let rest: Vec<Value> = args.collect();
                match x {
                    Value::Spatial(a) => {
                        let mut all = vec![a];
                        for v in rest {
                            all.push(v.spatial(node)?);
                        }
                        Value::Spatial(Tensor::cat(all, 1))
                    }
                    _ => {
                        return Err(LopperError::Graph(format!(
                            "concat '{}' is defined on [N, C, H, W] values",
                            node.name
                        )));
                    }
                }
            }
        })
    }

    /// The model with new values for the parameters `values(full name)` returns some for
    /// (row-major, the parameter's size), each a leaf that keeps its id and gradient setting
    /// (so the optimiser's state still belongs to it); the others, and the running statistics,
    /// are left as they are.
    pub fn set_params(mut self, mut values: impl FnMut(&str) -> Option<Vec<f32>>) -> Result<Model> {
        fn put<const D: usize>(
            p: Param<Tensor<D>>,
            name: String,
            values: &mut dyn FnMut(&str) -> Option<Vec<f32>>,
        ) -> Result<Param<Tensor<D>>> {
            let Some(v) = values(&name) else {
                return Ok(p);
            };
            let t = p.val();
            let dims = t.dims();
            if v.len() != dims.iter().product::<usize>() {
                return Err(LopperError::Config(format!(
                    "{} values for the {:?} parameter '{name}'",
                    v.len(),
                    dims
                )));
            }
            Ok(p.map(|t| {
                let grad = t.is_require_grad();
                Tensor::<D>::from_data(TensorData::new(v, dims), &t.device()).set_require_grad(grad)
            }))
        }
        for (node, slot) in self.graph.nodes.iter().zip(self.layers.iter_mut()) {
            let full = |p: &str| format!("{}.{p}", node.name);
            let Some(layer) = slot.take() else { continue };
            *slot = Some(match layer {
                Layer::Conv(mut c) => {
                    c.weight = put(c.weight, full("weight"), &mut values)?;
                    c.bias = c
                        .bias
                        .map(|b| put(b, full("bias"), &mut values))
                        .transpose()?;
                    Layer::Conv(c)
                }
                Layer::Linear(mut l) => {
                    l.weight = put(l.weight, full("weight"), &mut values)?;
                    l.bias = l
                        .bias
                        .map(|b| put(b, full("bias"), &mut values))
                        .transpose()?;
                    Layer::Linear(l)
                }
                Layer::Norm(mut n) => {
                    n.weight = put(n.weight, full("weight"), &mut values)?;
                    n.bias = put(n.bias, full("bias"), &mut values)?;
                    Layer::Norm(n)
                }
            });
        }
        Ok(self)
    }

    /// Number of trainable parameters (from the graph; equals Burn's count minus buffers).
    pub fn num_params(&self) -> usize {
        self.graph.num_params()
    }
}
