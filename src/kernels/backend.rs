//! The kernels plugged into Burn through its backend-extension mechanism: an extension trait
//! implemented for `Flex` (the forward kernel) and for `Autodiff<Flex>` (the forward kernel plus
//! a handwritten backward that calls the gradient kernels). Model code calls [`conv2d`], which
//! routes a convolution the kernels cover on a `flex` device (groups 1, or depthwise) through
//! the extension and every other one (GPU backends, other grouped or
//! dilated convolutions, other dtypes) to Burn's own `conv2d`; and [`batch_norm_train`], which
//! runs BatchNorm with the channel mask and ReLU after it as one op (Burn's three ops
//! elsewhere).
//!
//! [`set_enabled`] (or `LOPPER_KERNELS=burn` in the environment) sends everything to Burn's ops,
//! so the two can be compared side by side in one process.

use std::cell::Cell;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU8, Ordering};

use burn::backend::autodiff::checkpoint::{base::Checkpointer, strategy::CheckpointStrategy};
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::autodiff::{Autodiff, NodeId};
use burn::backend::flex::FlexTensor;
use burn::backend::ops::ModuleOps;
use burn::backend::tensor::FloatTensor;
use burn::backend::{
    AutodiffBackend, Backend, DispatchDevice, ExtensionType, Flex, Scalar, TensorMetadata,
    backend_extension,
};
use burn::tensor::ops::ConvOptions;
use burn::tensor::{DType, Shape, Tensor, TensorData, module as fops};

use super::conv::{self, ConvShape};
use super::direct;
use super::norm::{self, NormShape, Rectifier};

/// What [`batch_norm_train`] applies after the normalisation: a per-channel factor (a channel
/// mask, which may carry gradients) and the rectifier that follows, if any.
#[derive(Debug, Clone, Default)]
pub struct NormEpilogue {
    pub scale: Option<Tensor<1>>,
    pub relu: Rectifier,
}

impl NormEpilogue {
    /// The epilogue by Burn's ops on a BatchNorm output `[N, C, H, W]`, where no kernel
    /// fuses it.
    pub fn apply(self, y: Tensor<4>) -> Tensor<4> {
        let c = y.dims()[1];
        let y = match self.scale {
            Some(m) => y * m.reshape([1, c, 1, 1]),
            None => y,
        };
        match self.relu {
            Rectifier::None => y,
            Rectifier::Relu => burn::tensor::activation::relu(y),
            Rectifier::Relu6 => burn::tensor::activation::relu6(y),
        }
    }
}

/// BatchNorm's training output with the batch statistics (biased variance) it used.
#[derive(ExtensionType)]
pub struct BatchNormOutput<B: Backend> {
    pub output: FloatTensor<B>,
    pub mean: FloatTensor<B>,
    pub variance: FloatTensor<B>,
}

/// The operations the kernels provide, each one backend operation. The default bodies (Burn's
/// own ops) document the contract; the Flex and `Autodiff<Flex>` impls replace them.
#[backend_extension(Flex, Autodiff)]
pub trait KernelOps: Backend {
    /// Convolution without bias.
    fn lopper_conv2d(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        options: ConvOptions<2>,
    ) -> FloatTensor<Self> {
        Self::conv2d(x, weight, None, options)
    }

    /// BatchNorm with batch statistics over axis 1 of an NCHW input, its output multiplied by
    /// a per-channel `scale` (a channel mask; ones for none) and rectified by `relu` (none,
    /// ReLU or ReLU6): `relu(scale·(γ·x̂ + β))`.
    fn lopper_batch_norm_train(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        scale: FloatTensor<Self>,
        epsilon: f64,
        relu: Rectifier,
    ) -> BatchNormOutput<Self> {
        composed_batch_norm_train::<Self>(x, gamma, beta, scale, epsilon, relu)
    }
}

/// [`KernelOps::lopper_batch_norm_train`] from Burn's own ops, for what the kernel does not
/// cover.
fn composed_batch_norm_train<B: Backend>(
    x: FloatTensor<B>,
    gamma: FloatTensor<B>,
    beta: FloatTensor<B>,
    scale: FloatTensor<B>,
    epsilon: f64,
    relu: Rectifier,
) -> BatchNormOutput<B> {
    let r = B::batch_norm_train(x, gamma, beta, epsilon);
    let c = r.mean.shape().num_elements();
    let y = B::float_mul(r.output, B::float_reshape(scale, Shape::new([1, c, 1, 1])));
    BatchNormOutput {
        output: match relu {
            Rectifier::None => y,
            Rectifier::Relu => B::relu(y),
            Rectifier::Relu6 => B::float_clamp(y, Scalar::Float(0.0), Scalar::Float(6.0)),
        },
        mean: r.mean,
        variance: r.variance,
    }
}

const UNSET: u8 = 0;
const ON: u8 = 1;
const OFF: u8 = 2;
static ENABLED: AtomicU8 = AtomicU8::new(UNSET);

/// Turns the kernels on or off for the whole process (off: Burn's composed ops everywhere).
pub fn set_enabled(on: bool) {
    ENABLED.store(if on { ON } else { OFF }, Ordering::Relaxed);
}

/// Whether the kernels are used: on unless [`set_enabled`]`(false)` or `LOPPER_KERNELS=burn`.
pub fn enabled() -> bool {
    static FROM_ENV: OnceLock<bool> = OnceLock::new();
    match ENABLED.load(Ordering::Relaxed) {
        ON => true,
        OFF => false,
        _ => {
            *FROM_ENV.get_or_init(|| std::env::var("LOPPER_KERNELS").map_or(true, |v| v != "burn"))
        }
    }
}

thread_local! {
    static KERNEL_CALLS: Cell<usize> = const { Cell::new(0) };
}

/// How many convolution passes (forward, input or weight gradient) the kernels have run for
/// calls made from this thread: tests and benchmarks check with it that the kernels, not a
/// fallback, did the work.
pub fn kernel_calls() -> usize {
    KERNEL_CALLS.with(Cell::get)
}

fn count_kernel_call() {
    KERNEL_CALLS.with(|c| c.set(c.get() + 1));
}

fn is_flex(device: &DispatchDevice) -> bool {
    matches!(device.clone().inner(), DispatchDevice::Flex(_))
}

/// A 2-D convolution: the kernels where they apply, Burn's `conv2d` elsewhere.
pub fn conv2d(
    x: Tensor<4>,
    weight: Tensor<4>,
    bias: Option<Tensor<1>>,
    options: ConvOptions<2>,
) -> Tensor<4> {
    // Which convolutions the kernels take is decided once, inside the extension (`plan`);
    // here only what the extension needs to exist: a flex device and f32.
    let covered = x.dtype() == DType::F32
        && weight.dtype() == DType::F32
        && enabled()
        && is_flex(x.device().as_dispatch());
    if !covered {
        return fops::conv2d(x, weight, bias, options);
    }
    let y = Tensor::<4>::from_dispatch(<burn::backend::Dispatch as KernelOps>::lopper_conv2d(
        x.into_dispatch(),
        weight.into_dispatch(),
        options,
    ));
    match bias {
        Some(b) => {
            let c = b.dims()[0];
            y + b.reshape([1, c, 1, 1])
        }
        None => y,
    }
}

/// BatchNorm in training mode on an NCHW batch, then the optional channel `scale` (a mask) and
/// ReLU: the output, the batch mean and the biased batch variance. One fused kernel on a `flex`
/// device, Burn's `batch_norm_train`, a multiplication and `relu` elsewhere.
pub fn batch_norm_train(
    x: Tensor<4>,
    gamma: Tensor<1>,
    beta: Tensor<1>,
    epilogue: NormEpilogue,
    epsilon: f64,
) -> (Tensor<4>, Tensor<1>, Tensor<1>) {
    let NormEpilogue { scale, relu } = epilogue;
    let covered = x.dtype() == DType::F32
        && gamma.dtype() == DType::F32
        && beta.dtype() == DType::F32
        && scale.as_ref().is_none_or(|m| m.dtype() == DType::F32)
        && enabled()
        && is_flex(x.device().as_dispatch());
    if !covered {
        let r = fops::batch_norm_train(x, gamma, beta, epsilon);
        let y = NormEpilogue { scale, relu }.apply(r.output);
        return (y, r.mean, r.variance);
    }
    let scale = scale.unwrap_or_else(|| Tensor::ones([x.dims()[1]], &x.device()));
    let r = <burn::backend::Dispatch as KernelOps>::lopper_batch_norm_train(
        x.into_dispatch(),
        gamma.into_dispatch(),
        beta.into_dispatch(),
        scale.into_dispatch(),
        epsilon,
        relu,
    );
    (
        Tensor::from_dispatch(r.output),
        Tensor::from_dispatch(r.mean),
        Tensor::from_dispatch(r.variance),
    )
}

/// The geometry of a convolution the kernels cover, or `None` (then Flex's own op runs).
fn shape_of(x: &FlexTensor, w: &FlexTensor, options: &ConvOptions<2>) -> Option<ConvShape> {
    let (xs, ws) = (x.layout().shape(), w.layout().shape());
    let covered = options.groups == 1
        && options.dilation == [1, 1]
        && x.dtype() == DType::F32
        && w.dtype() == DType::F32
        && xs.num_dims() == 4
        && ws.num_dims() == 4
        && xs[1] == ws[1]
        && options.padding.iter().all(|(begin, end)| begin == end)
        && (0..2).all(|d| xs[2 + d] + 2 * options.padding[d].0 >= ws[2 + d]);
    if !covered {
        return None;
    }
    let s = ConvShape {
        batch: xs[0],
        c_in: xs[1],
        height: xs[2],
        width: xs[3],
        c_out: ws[0],
        kernel: [ws[2], ws[3]],
        stride: options.stride,
        padding: options.padding.map(|(begin, _)| begin),
    };
    // Below 8×8 output positions per image the per-image kernels waste most of their blocks
    // (VGG-11's 4×4 and 2×2 layers ran 0.76× Burn's speed through them): Flex's batched
    // convolution does better there.
    let [oh, ow] = s.out_hw();
    (oh * ow >= MIN_POSITIONS).then_some(s)
}

/// The fewest output positions per image (`OH·OW`) for which the convolution kernels run;
/// smaller convolutions go to Flex's own op.
pub const MIN_POSITIONS: usize = 64;

/// The tensor's elements as one contiguous `f32` slice (copied only when it is a strided view).
fn with_f32<R>(t: &FlexTensor, f: impl FnOnce(&[f32]) -> R) -> R {
    match t.as_slice::<f32>() {
        Some(s) => f(s),
        None => f(t.to_contiguous().as_slice::<f32>().expect("contiguous f32")),
    }
}

/// The geometry of a depthwise convolution the kernels cover: groups = `C_in` = `C_out`,
/// weights `[C, 1, kh, kw]`, any stride, symmetric padding below the kernel size.
fn depthwise_of(x: &FlexTensor, w: &FlexTensor, options: &ConvOptions<2>) -> Option<ConvShape> {
    let (xs, ws) = (x.layout().shape(), w.layout().shape());
    let padding = options.padding.map(|(begin, _)| begin);
    let covered = x.dtype() == DType::F32
        && w.dtype() == DType::F32
        && xs.num_dims() == 4
        && ws.num_dims() == 4
        && options.groups == xs[1]
        && ws[0] == xs[1]
        && ws[1] == 1
        && options.dilation == [1, 1]
        && options.padding.iter().all(|(begin, end)| begin == end)
        && direct::depthwise::covers([ws[2], ws[3]], padding)
        && (0..2).all(|d| xs[2 + d] + 2 * padding[d] >= ws[2 + d]);
    let g = covered.then(|| ConvShape {
        batch: xs[0],
        c_in: xs[1],
        height: xs[2],
        width: xs[3],
        c_out: ws[0],
        kernel: [ws[2], ws[3]],
        stride: options.stride,
        padding,
    })?;
    let [oh, ow] = g.out_hw();
    (oh * ow >= MIN_POSITIONS).then_some(g)
}

/// Which code runs a convolution pass on Flex.
enum Plan {
    Depthwise(ConvShape),
    Dense(ConvShape),
    Flex,
}

fn plan(x: &FlexTensor, w: &FlexTensor, options: &ConvOptions<2>) -> Plan {
    if let Some(s) = depthwise_of(x, w, options) {
        Plan::Depthwise(s)
    } else if let Some(s) = shape_of(x, w, options) {
        Plan::Dense(s)
    } else {
        Plan::Flex
    }
}

/// A kernel pass on two `f32` operands.
type Pass = fn(&[f32], &[f32], &ConvShape) -> Vec<f32>;

/// Runs `pass` on `a` and `b` and wraps its result with `shape`.
fn run_pass(a: &FlexTensor, b: &FlexTensor, s: &ConvShape, pass: Pass, shape: Shape) -> FlexTensor {
    count_kernel_call();
    let v = with_f32(a, |av| with_f32(b, |bv| pass(av, bv, s)));
    FlexTensor::from_data(TensorData::new(v, shape))
}

fn flex_conv2d(x: FlexTensor, w: FlexTensor, options: ConvOptions<2>) -> FlexTensor {
    let (s, pass): (ConvShape, Pass) = match plan(&x, &w, &options) {
        Plan::Depthwise(s) => (s, direct::depthwise::conv2d),
        Plan::Dense(s) => (s, |x, w, s| conv::conv2d(x, w, None, s)),
        Plan::Flex => return Flex::conv2d(x, w, None, options),
    };
    let [oh, ow] = s.out_hw();
    run_pass(&x, &w, &s, pass, Shape::new([s.batch, s.c_out, oh, ow]))
}

fn flex_input_grad(
    x: FlexTensor,
    w: FlexTensor,
    dy: FlexTensor,
    options: ConvOptions<2>,
) -> FlexTensor {
    let (s, pass): (ConvShape, Pass) = match plan(&x, &w, &options) {
        Plan::Depthwise(s) => (s, direct::depthwise::input_grad),
        Plan::Dense(s) => (s, conv::conv2d_input_grad),
        Plan::Flex => return Flex::conv2d_x_backward(x, w, dy, options),
    };
    run_pass(&w, &dy, &s, pass, x.layout().shape().clone())
}

fn flex_weight_grad(
    x: FlexTensor,
    w: FlexTensor,
    dy: FlexTensor,
    options: ConvOptions<2>,
) -> FlexTensor {
    let (s, pass): (ConvShape, Pass) = match plan(&x, &w, &options) {
        Plan::Depthwise(s) => (s, direct::depthwise::weight_grad),
        Plan::Dense(s) => (s, conv::conv2d_weight_grad),
        Plan::Flex => return Flex::conv2d_weight_backward(x, w, dy, options),
    };
    run_pass(&x, &dy, &s, pass, w.layout().shape().clone())
}

/// The geometry of a BatchNorm input the kernels cover, with its per-channel vectors.
fn norm_shape_of<T: TensorMetadata>(x: &T, per_channel: &[&T]) -> Option<NormShape> {
    let xs = x.shape();
    let covered = x.dtype() == DType::F32
        && xs.num_dims() >= 2
        && per_channel
            .iter()
            .all(|t| t.dtype() == DType::F32 && t.shape().num_elements() == xs[1]);
    covered.then(|| NormShape {
        batch: xs[0],
        channels: xs[1],
        spatial: (2..xs.num_dims()).map(|d| xs[d]).product(),
    })
}

fn flex_vector(values: Vec<f32>) -> FlexTensor {
    let n = values.len();
    FlexTensor::from_data(TensorData::new(values, [n]))
}

fn flex_batch_norm_train(
    x: FlexTensor,
    gamma: FlexTensor,
    beta: FlexTensor,
    scale: FlexTensor,
    epsilon: f64,
    relu: Rectifier,
) -> BatchNormOutput<Flex> {
    let Some(s) = norm_shape_of(&x, &[&gamma, &beta, &scale]) else {
        return composed_batch_norm_train::<Flex>(x, gamma, beta, scale, epsilon, relu);
    };
    count_kernel_call();
    let shape = x.layout().shape().clone();
    let (y, mean, var) = with_f32(&x, |xv| {
        with_f32(&gamma, |g| {
            with_f32(&beta, |b| {
                with_f32(&scale, |m| {
                    let epilogue = norm::Epilogue { scale: m, relu };
                    norm::batch_norm_train(xv, g, b, epsilon, epilogue, &s)
                })
            })
        })
    });
    BatchNormOutput {
        output: FlexTensor::from_data(TensorData::new(y, shape)),
        mean: flex_vector(mean),
        variance: flex_vector(var),
    }
}

impl KernelOps for Flex {
    fn lopper_conv2d(x: FlexTensor, weight: FlexTensor, options: ConvOptions<2>) -> FlexTensor {
        flex_conv2d(x, weight, options)
    }

    fn lopper_batch_norm_train(
        x: FlexTensor,
        gamma: FlexTensor,
        beta: FlexTensor,
        scale: FlexTensor,
        epsilon: f64,
        relu: Rectifier,
    ) -> BatchNormOutput<Flex> {
        flex_batch_norm_train(x, gamma, beta, scale, epsilon, relu)
    }
}

/// The backward of [`KernelOps::lopper_batch_norm_train`] on Flex: one kernel call gives the
/// input, `gamma`, `beta` and `scale` gradients. Besides the checkpointed input it keeps the
/// per-channel vectors and statistics (a few floats per channel) and recomputes the ReLU's gate.
#[derive(Debug)]
struct BatchNormBackward;

/// What [`BatchNormBackward`] keeps from the forward pass.
#[derive(Debug, Clone)]
struct NormState {
    x: NodeId,
    gamma: FlexTensor,
    beta: FlexTensor,
    scale: FlexTensor,
    mean: FlexTensor,
    var: FlexTensor,
    epsilon: f64,
    relu: Rectifier,
}

impl Backward<Flex, 4> for BatchNormBackward {
    type State = NormState;

    fn backward(
        self,
        ops: Ops<Self::State, 4>,
        grads: &mut Gradients,
        checkpointer: &mut Checkpointer,
    ) {
        let [node_x, node_gamma, node_beta, node_scale] = ops.parents;
        let dy = grads.consume::<Flex>(&ops.node);
        let st = ops.state;
        let x = checkpointer.retrieve_node_output::<FlexTensor>(st.x);
        let per_channel = [&st.gamma, &st.beta, &st.scale, &st.mean, &st.var];
        // The forward pass ran the kernel (the Autodiff impl checked), so this holds.
        let s = norm_shape_of(&x, &per_channel).expect("BatchNorm kernel: covered shapes");
        count_kernel_call();
        let shape = x.layout().shape().clone();
        let [g, b, m, mu, v] = per_channel.map(|t| with_f32(t, <[f32]>::to_vec));
        let r = with_f32(&x, |xv| {
            with_f32(&dy, |d| {
                let epilogue = norm::Epilogue {
                    scale: &m,
                    relu: st.relu,
                };
                norm::batch_norm_train_backward(xv, &g, &b, &mu, &v, st.epsilon, epilogue, d, &s)
            })
        });
        let (dx, dgamma, dbeta, dscale) = (
            FlexTensor::from_data(TensorData::new(r.x, shape)),
            flex_vector(r.gamma),
            flex_vector(r.beta),
            flex_vector(r.scale),
        );
        for (node, grad) in [
            (node_x, dx),
            (node_gamma, dgamma),
            (node_beta, dbeta),
            (node_scale, dscale),
        ] {
            if let Some(node) = node {
                grads.register::<Flex>(node.id, grad);
            }
        }
    }
}

/// The backward of [`KernelOps::lopper_conv2d`] on Flex: input and weight gradients from the
/// kernels, each computed only when its parent needs it.
#[derive(Debug)]
struct Conv2dBackward;

impl Backward<Flex, 2> for Conv2dBackward {
    type State = (NodeId, NodeId, ConvOptions<2>);

    fn backward(
        self,
        ops: Ops<Self::State, 2>,
        grads: &mut Gradients,
        checkpointer: &mut Checkpointer,
    ) {
        let [node_x, node_w] = ops.parents;
        let dy = grads.consume::<Flex>(&ops.node);
        let (x_id, w_id, options) = ops.state;
        let x = checkpointer.retrieve_node_output::<FlexTensor>(x_id);
        let w = checkpointer.retrieve_node_output::<FlexTensor>(w_id);
        if let Some(node) = node_x {
            let dx = flex_input_grad(x.clone(), w.clone(), dy.clone(), options.clone());
            grads.register::<Flex>(node.id, dx);
        }
        if let Some(node) = node_w {
            grads.register::<Flex>(node.id, flex_weight_grad(x, w, dy, options));
        }
    }
}

impl<C: CheckpointStrategy> KernelOps for Autodiff<Flex, C> {
    fn lopper_batch_norm_train(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        scale: FloatTensor<Self>,
        epsilon: f64,
        relu: Rectifier,
    ) -> BatchNormOutput<Self> {
        if norm_shape_of(&x, &[&gamma, &beta, &scale]).is_none() {
            return composed_batch_norm_train::<Self>(x, gamma, beta, scale, epsilon, relu);
        }
        match BatchNormBackward
            .prepare::<C>([x.node(), gamma.node(), beta.node(), scale.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(mut prep) => {
                let x_id = prep.checkpoint(&x);
                let (gamma, beta, scale) = (
                    gamma.into_primitive(),
                    beta.into_primitive(),
                    scale.into_primitive(),
                );
                let r = flex_batch_norm_train(
                    x.into_primitive(),
                    gamma.clone(),
                    beta.clone(),
                    scale.clone(),
                    epsilon,
                    relu,
                );
                let state = NormState {
                    x: x_id,
                    gamma,
                    beta,
                    scale,
                    mean: r.mean.clone(),
                    var: r.variance.clone(),
                    epsilon,
                    relu,
                };
                BatchNormOutput {
                    output: prep.finish(state, r.output),
                    mean: Self::from_inner(r.mean),
                    variance: Self::from_inner(r.variance),
                }
            }
            OpsKind::UnTracked(prep) => {
                let r = flex_batch_norm_train(
                    x.into_primitive(),
                    gamma.into_primitive(),
                    beta.into_primitive(),
                    scale.into_primitive(),
                    epsilon,
                    relu,
                );
                BatchNormOutput {
                    output: prep.finish(r.output),
                    mean: Self::from_inner(r.mean),
                    variance: Self::from_inner(r.variance),
                }
            }
        }
    }

    fn lopper_conv2d(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        options: ConvOptions<2>,
    ) -> FloatTensor<Self> {
        match Conv2dBackward
            .prepare::<C>([x.node(), weight.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(mut prep) => {
                let x_id = prep.checkpoint(&x);
                let w_id = prep.checkpoint(&weight);
                let y = flex_conv2d(x.into_primitive(), weight.into_primitive(), options.clone());
                prep.finish((x_id, w_id, options), y)
            }
            OpsKind::UnTracked(prep) => prep.finish(flex_conv2d(
                x.into_primitive(),
                weight.into_primitive(),
                options,
            )),
        }
    }
}
