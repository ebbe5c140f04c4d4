//! The kernels plugged into Burn through its backend-extension mechanism: an extension trait
//! implemented for `Flex` (the forward kernel) and for `Autodiff<Flex>` (the forward kernel plus
//! a handwritten backward that calls the gradient kernels). Model code calls [`conv2d`], which
//! routes a convolution the kernels cover on a `flex` device through the extension and every
//! other one (GPU backends, groups, dilation, other dtypes) to Burn's own `conv2d`.
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
use burn::backend::{Backend, DispatchDevice, Flex, backend_extension};
use burn::tensor::ops::ConvOptions;
use burn::tensor::{DType, Tensor, TensorData, module as fops};

use super::conv::{self, ConvShape};

/// Convolution without bias, as one backend operation.
#[backend_extension(Flex, Autodiff)]
pub trait KernelOps: Backend {
    fn lopper_conv2d(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        options: ConvOptions<2>,
    ) -> FloatTensor<Self> {
        Self::conv2d(x, weight, None, options)
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
    let covered = options.groups == 1
        && options.dilation == [1, 1]
        && options.padding.iter().all(|(begin, end)| begin == end)
        && x.dtype() == DType::F32
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

/// The geometry of a convolution the kernels cover, or `None` (then Flex's own op runs).
fn shape_of(x: &FlexTensor, w: &FlexTensor, options: &ConvOptions<2>) -> Option<ConvShape> {
    let (xs, ws) = (x.layout().shape(), w.layout().shape());
    let covered = options.groups == 1
        && options.dilation == [1, 1]
        && options.padding.iter().all(|(begin, end)| begin == end)
        && x.dtype() == DType::F32
        && w.dtype() == DType::F32
        && xs.num_dims() == 4
        && ws.num_dims() == 4
        && xs[1] == ws[1]
        && options.padding.iter().all(|(begin, end)| begin == end);
    covered.then(|| ConvShape {
        batch: xs[0],
        c_in: xs[1],
        height: xs[2],
        width: xs[3],
        c_out: ws[0],
        kernel: [ws[2], ws[3]],
        stride: options.stride,
        padding: options.padding.map(|(begin, _)| begin),
    })
}

/// The tensor's elements as one contiguous `f32` slice (copied only when it is a strided view).
fn with_f32<R>(t: &FlexTensor, f: impl FnOnce(&[f32]) -> R) -> R {
    match t.as_slice::<f32>() {
        Some(s) => f(s),
        None => f(t.to_contiguous().as_slice::<f32>().expect("contiguous f32")),
    }
}

fn flex_tensor(values: Vec<f32>, shape: [usize; 4]) -> FlexTensor {
    FlexTensor::from_data(TensorData::new(values, shape))
}

fn flex_conv2d(x: FlexTensor, w: FlexTensor, options: ConvOptions<2>) -> FlexTensor {
    let Some(s) = shape_of(&x, &w, &options) else {
        return Flex::conv2d(x, w, None, options);
    };
    count_kernel_call();
    let y = with_f32(&x, |xv| with_f32(&w, |wv| conv::conv2d(xv, wv, None, &s)));
    let [oh, ow] = s.out_hw();
    flex_tensor(y, [s.batch, s.c_out, oh, ow])
}

fn flex_input_grad(
    x: FlexTensor,
    w: FlexTensor,
    dy: FlexTensor,
    options: ConvOptions<2>,
) -> FlexTensor {
    let Some(s) = shape_of(&x, &w, &options) else {
        return Flex::conv2d_x_backward(x, w, dy, options);
    };
    count_kernel_call();
    let dx = with_f32(&w, |wv| {
        with_f32(&dy, |g| conv::conv2d_input_grad(wv, g, &s))
    });
    flex_tensor(dx, [s.batch, s.c_in, s.height, s.width])
}

fn flex_weight_grad(
    x: FlexTensor,
    w: FlexTensor,
    dy: FlexTensor,
    options: ConvOptions<2>,
) -> FlexTensor {
    let Some(s) = shape_of(&x, &w, &options) else {
        return Flex::conv2d_weight_backward(x, w, dy, options);
    };
    count_kernel_call();
    let dw = with_f32(&x, |xv| {
        with_f32(&dy, |g| conv::conv2d_weight_grad(xv, g, &s))
    });
    flex_tensor(dw, [s.c_out, s.c_in, s.kernel[0], s.kernel[1]])
}

impl KernelOps for Flex {
    fn lopper_conv2d(x: FlexTensor, weight: FlexTensor, options: ConvOptions<2>) -> FlexTensor {
        flex_conv2d(x, weight, options)
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
