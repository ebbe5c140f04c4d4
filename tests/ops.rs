//! Shape inference and forward values of every op against hand-computed numbers, and a
//! finite-difference check of the gradients through conv, BN, add and linear.

use burn::tensor::{Device, Tensor, TensorData};
use lopper::graph::{GraphBuilder, Op, infer_shape};
use lopper::model::{Model, NoHook, Value};

fn dev() -> Device {
    Device::flex()
}

fn data(values: &[f32], shape: &[usize]) -> TensorData {
    TensorData::new(values.to_vec(), shape.to_vec())
}

fn host<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data().try_to_vec_as::<f32>().unwrap()
}

fn close(a: &[f32], b: &[f32], tol: f32) {
    assert_eq!(a.len(), b.len(), "{a:?} vs {b:?}");
    for (x, y) in a.iter().zip(b) {
        assert!((x - y).abs() <= tol, "{a:?} vs {b:?}");
    }
}

/// Runs a one-op graph (node 1) on `input` with the given parameter tensors.
fn run_op(input_shape: &[usize], op: Op, params: &[(&str, TensorData)], x: TensorData) -> Value {
    let mut b = GraphBuilder::new("t", input_shape);
    let y = b.op("op", op, 0);
    let g = b.finish(y).unwrap();
    let m = Model::from_tensors(g, &dev(), |_, name, _| {
        Ok(params.iter().find(|(n, _)| *n == name).unwrap().1.clone())
    })
    .unwrap();
    let input = Tensor::<4>::from_data(x, &dev());
    m.forward_hooked(Value::Spatial(input), false, &NoHook)
        .unwrap()
}

fn spatial(v: Value) -> Vec<f32> {
    match v {
        Value::Spatial(t) => host(t),
        other => panic!("expected spatial, got {:?}", other.dims()),
    }
}

fn flat(v: Value) -> Vec<f32> {
    match v {
        Value::Flat(t) => host(t),
        other => panic!("expected flat, got {:?}", other.dims()),
    }
}

const NINE: [f32; 9] = [1., 2., 3., 4., 5., 6., 7., 8., 9.];

fn conv(i: usize, o: usize, k: usize, s: usize, p: usize, g: usize, bias: bool) -> Op {
    Op::Conv2d {
        in_channels: i,
        out_channels: o,
        kernel: [k, k],
        stride: [s, s],
        padding: [p, p],
        dilation: [1, 1],
        groups: g,
        bias,
    }
}

#[test]
fn conv_shapes_and_values() {
    assert_eq!(
        infer_shape(&conv(3, 8, 3, 1, 1, 1, false), &[&[3, 32, 32]]).unwrap(),
        vec![8, 32, 32]
    );
    assert_eq!(
        infer_shape(&conv(3, 8, 3, 2, 1, 1, false), &[&[3, 32, 32]]).unwrap(),
        vec![8, 16, 16]
    );
    assert_eq!(
        infer_shape(&conv(4, 4, 3, 1, 0, 4, false), &[&[4, 5, 7]]).unwrap(),
        vec![4, 3, 5]
    );
    assert!(infer_shape(&conv(3, 8, 3, 1, 1, 1, false), &[&[4, 8, 8]]).is_err());
    assert!(infer_shape(&conv(3, 8, 3, 1, 1, 2, false), &[&[3, 8, 8]]).is_err());

    // 3x3 input 1..9, 2x2 kernel of ones, bias 0.5: sums of each 2x2 window + 0.5.
    let out = run_op(
        &[1, 3, 3],
        conv(1, 1, 2, 1, 0, 1, true),
        &[
            ("weight", data(&[1.; 4], &[1, 1, 2, 2])),
            ("bias", data(&[0.5], &[1])),
        ],
        data(&NINE, &[1, 1, 3, 3]),
    );
    close(&spatial(out), &[12.5, 16.5, 24.5, 28.5], 1e-5);

    // Padding 1, stride 2: windows at (-1,-1), (-1,1), (1,-1), (1,1).
    let out = run_op(
        &[1, 3, 3],
        conv(1, 1, 2, 2, 1, 1, false),
        &[("weight", data(&[1.; 4], &[1, 1, 2, 2]))],
        data(&NINE, &[1, 1, 3, 3]),
    );
    close(&spatial(out), &[1., 5., 11., 28.], 1e-5);

    // Depthwise: channel 0 scaled by 2 (1x1 kernel), channel 1 by -1.
    let out = run_op(
        &[2, 1, 2],
        conv(2, 2, 1, 1, 0, 2, false),
        &[("weight", data(&[2., -1.], &[2, 1, 1, 1]))],
        data(&[1., 2., 3., 4.], &[1, 2, 1, 2]),
    );
    close(&spatial(out), &[2., 4., -3., -4.], 1e-6);
}

#[test]
fn batchnorm_inference_values() {
    // y = (x - mean) / sqrt(var + eps) * gamma + beta, per channel.
    let op = Op::BatchNorm2d {
        channels: 2,
        eps: 1e-5,
        momentum: 0.1,
    };
    let out = run_op(
        &[2, 1, 2],
        op,
        &[
            ("weight", data(&[2., 1.], &[2])),
            ("bias", data(&[1., 0.], &[2])),
            ("running_mean", data(&[1., -1.], &[2])),
            ("running_var", data(&[4., 1.], &[2])),
        ],
        data(&[3., 5., 0., 1.], &[1, 2, 1, 2]),
    );
    let s0 = 2.0 / (4.0f32 + 1e-5).sqrt();
    let s1 = 1.0 / (1.0f32 + 1e-5).sqrt();
    close(
        &spatial(out),
        &[1. + 2. * s0, 1. + 4. * s0, s1, 2. * s1],
        1e-5,
    );
}

#[test]
fn linear_flatten_and_pools() {
    // Flatten is channel-major: [C=2, H=1, W=2] -> [c0w0, c0w1, c1w0, c1w1].
    let mut b = GraphBuilder::new("t", &[2, 1, 2]);
    let f = b.op("flatten", Op::Flatten, 0);
    let y = b.linear("fc", f, 1, true);
    let g = b.finish(y).unwrap();
    assert_eq!(g.nodes[f].shape, vec![4]);
    let m = Model::from_tensors(g, &dev(), |_, name, _| {
        Ok(match name {
            "weight" => data(&[1., 10., 100., 1000.], &[4, 1]),
            _ => data(&[0.5], &[1]),
        })
    })
    .unwrap();
    let x = Tensor::<4>::from_data(data(&[1., 2., 3., 4.], &[1, 2, 1, 2]), &dev());
    close(&host(m.forward(x, false)), &[4321.5], 1e-3);

    let x = data(
        &[
            1., 2., 3., 4., 5., 6., 7., 8., 9., 10., 11., 12., 13., 14., 15., 16.,
        ],
        &[1, 1, 4, 4],
    );
    let max = Op::MaxPool2d {
        kernel: [2, 2],
        stride: [2, 2],
        padding: [0, 0],
    };
    assert_eq!(infer_shape(&max, &[&[1, 4, 4]]).unwrap(), vec![1, 2, 2]);
    close(
        &spatial(run_op(&[1, 4, 4], max, &[], x.clone())),
        &[6., 8., 14., 16.],
        0.,
    );
    let avg = Op::AvgPool2d {
        kernel: [2, 2],
        stride: [2, 2],
        padding: [0, 0],
    };
    close(
        &spatial(run_op(&[1, 4, 4], avg, &[], x.clone())),
        &[3.5, 5.5, 11.5, 13.5],
        1e-6,
    );
    let gap = run_op(&[1, 4, 4], Op::GlobalAvgPool, &[], x);
    close(&flat(gap), &[8.5], 1e-6);
    assert_eq!(
        infer_shape(&Op::GlobalAvgPool, &[&[7, 4, 4]]).unwrap(),
        vec![7]
    );
}

#[test]
fn activations_dropout_and_layernorm() {
    let x = data(&[-2., -0.5, 1., 7.], &[1, 1, 1, 4]);
    close(
        &spatial(run_op(&[1, 1, 4], Op::Relu, &[], x.clone())),
        &[0., 0., 1., 7.],
        0.,
    );
    close(
        &spatial(run_op(&[1, 1, 4], Op::Relu6, &[], x.clone())),
        &[0., 0., 1., 6.],
        0.,
    );
    // GELU(x) = x * Phi(x): Phi(-2) = 0.0227501, Phi(-0.5) = 0.3085375, Phi(1) = 0.8413447.
    close(
        &spatial(run_op(&[1, 1, 4], Op::Gelu, &[], x.clone())),
        &[-2. * 0.022_750_1, -0.5 * 0.308_537_5, 0.841_344_7, 7.0],
        1e-4,
    );
    // Dropout is the identity outside training.
    close(
        &spatial(run_op(&[1, 1, 4], Op::Dropout { p: 0.5 }, &[], x.clone())),
        &[-2., -0.5, 1., 7.],
        0.,
    );
    // LayerNorm over the last axis (4): mean 1.375, biased variance.
    let ln = Op::LayerNorm { dim: 4, eps: 1e-5 };
    let out = spatial(run_op(
        &[1, 1, 4],
        ln,
        &[
            ("weight", data(&[1., 1., 1., 2.], &[4])),
            ("bias", data(&[0., 0., 0., 1.], &[4])),
        ],
        x,
    ));
    let v = [-2f32, -0.5, 1., 7.];
    let mean = v.iter().sum::<f32>() / 4.;
    let var = v.iter().map(|a| (a - mean).powi(2)).sum::<f32>() / 4.;
    let n: Vec<f32> = v.iter().map(|a| (a - mean) / (var + 1e-5).sqrt()).collect();
    close(&out, &[n[0], n[1], n[2], 2. * n[3] + 1.], 1e-5);
}

#[test]
fn add_and_concat() {
    let mut b = GraphBuilder::new("t", &[1, 1, 2]);
    let r = b.relu("r", 0);
    let a = b.push("add", Op::Add, &[0, r]);
    let c = b.push("cat", Op::Concat, &[0, a]);
    let g = b.finish(c).unwrap();
    assert_eq!(g.nodes[c].shape, vec![2, 1, 2]);
    let m = Model::init(g, 0, &dev()).unwrap();
    let x = Tensor::<4>::from_data(data(&[-1., 2.], &[1, 1, 1, 2]), &dev());
    let out = m.forward_hooked(Value::Spatial(x), false, &NoHook).unwrap();
    close(&spatial(out), &[-1., 2., -1., 4.], 0.);
    assert!(infer_shape(&Op::Add, &[&[1, 2, 2], &[2, 2, 2]]).is_err());
    assert!(infer_shape(&Op::Concat, &[&[1, 2, 2], &[2, 2, 3]]).is_err());
    assert_eq!(
        infer_shape(&Op::Concat, &[&[1, 2, 2], &[3, 2, 2]]).unwrap(),
        vec![4, 2, 2]
    );
}

#[test]
fn builder_reports_bad_wiring() {
    let mut b = GraphBuilder::new("t", &[3, 8, 8]);
    let f = b.op("flatten", Op::Flatten, 0);
    let c = b.conv("conv", f, 4, 3, 1, 1, 1, false);
    let err = b.finish(c).unwrap_err().to_string();
    assert!(err.contains("conv"), "{err}");
}

/// A small graph with conv, BN (training statistics), a residual add, GAP and linear.
fn small_graph() -> lopper::graph::Graph {
    // 8×8, so that the convolutions have the kernels' minimum of 64 output positions.
    let mut b = GraphBuilder::new("fd", &[2, 8, 8]);
    let c1 = b.conv("conv1", 0, 3, 3, 1, 1, 1, true);
    let bn = b.bn("bn", c1);
    let sc = b.conv("shortcut", 0, 3, 1, 1, 0, 1, false);
    let a = b.push("add", Op::Add, &[bn, sc]);
    let p = b.op("pool", Op::GlobalAvgPool, a);
    let y = b.linear("fc", p, 2, true);
    b.finish(y).unwrap()
}

/// Loss = sum(logits * c) with fixed `c`, so every output entry matters.
fn loss_of(m: &Model, x: &TensorData, device: &Device) -> Tensor<1> {
    let x = Tensor::<4>::from_data(x.clone(), device);
    let logits = m.forward(x, true);
    let c = Tensor::<2>::from_data(data(&[0.3, -1.2, 0.7, 0.4, -0.5, 1.1], &[3, 2]), device);
    (logits * c).sum()
}

#[test]
fn gradients_match_finite_differences() {
    let ad = Device::flex().autodiff();
    let graph = small_graph();
    let base = Model::init(graph.clone(), 7, &Device::flex()).unwrap();
    let tensors = base.named_tensors();
    let xs: Vec<f32> = (0..3 * 2 * 64)
        .map(|i| ((i * 37 % 23) as f32 / 11.0) - 1.0)
        .collect();
    let x = data(&xs, &[3, 2, 8, 8]);
    let build = |over: Option<(&str, usize, f32)>, device: &Device| {
        Model::from_tensors(graph.clone(), device, |node, name, _| {
            let full = format!("{}.{name}", node.name);
            let mut d = tensors.iter().find(|(n, _)| *n == full).unwrap().1.clone();
            if let Some((_, i, delta)) = over.filter(|(target, _, _)| *target == full) {
                let mut v = d.try_to_vec::<f32>().unwrap();
                v[i] += delta;
                d = TensorData::new(v, d.shape().to_vec());
            }
            Ok(d)
        })
        .unwrap()
    };
    let m = build(None, &ad);
    let before = lopper::kernels::kernel_calls();
    let grads = loss_of(&m, &x, &ad).backward();
    // On flex the model's convolutions and BatchNorm run through lopper's kernels: two conv
    // forwards and weight gradients (the input needs no gradient), BN forward and backward.
    if lopper::kernels::enabled() {
        assert_eq!(lopper::kernels::kernel_calls() - before, 6, "kernel passes");
    }
    let analytic = |name: &str| -> Vec<f32> {
        let node = m.graph.node_index(name.split('.').next().unwrap()).unwrap();
        match (m.layers[node].as_ref().unwrap(), name.ends_with("bias")) {
            (lopper::model::Layer::Conv(c), false) => host(c.weight.val().grad(&grads).unwrap()),
            (lopper::model::Layer::Conv(c), true) => {
                host(c.bias.as_ref().unwrap().val().grad(&grads).unwrap())
            }
            (lopper::model::Layer::Linear(l), false) => host(l.weight.val().grad(&grads).unwrap()),
            (lopper::model::Layer::Linear(l), true) => {
                host(l.bias.as_ref().unwrap().val().grad(&grads).unwrap())
            }
            (lopper::model::Layer::Norm(n), false) => host(n.weight.val().grad(&grads).unwrap()),
            (lopper::model::Layer::Norm(n), true) => host(n.bias.val().grad(&grads).unwrap()),
        }
    };
    let h = 1e-2f32;
    // Training-mode BN (batch statistics) runs on the autodiff device only: evaluate there.
    let eval = |over| {
        let m = build(Some(over), &ad);
        host(loss_of(&m, &x, &ad))[0] as f64
    };
    let mut checked = 0;
    for name in [
        "conv1.weight",
        "conv1.bias",
        "bn.weight",
        "bn.bias",
        "shortcut.weight",
        "fc.weight",
        "fc.bias",
    ] {
        let g = analytic(name);
        for i in (0..g.len()).step_by((g.len() / 4).max(1)) {
            let fd = (eval((name, i, h)) - eval((name, i, -h))) / (2.0 * h as f64);
            let a = g[i] as f64;
            assert!(
                (fd - a).abs() <= 2e-2 * a.abs().max(fd.abs()) + 2e-3,
                "{name}[{i}]: autodiff {a}, finite difference {fd}"
            );
            checked += 1;
        }
    }
    assert!(checked >= 20);
}

/// The hand-written convolution kernels (forward, input and weight gradients) equal Burn's
/// composed ops to 1e-4 relative on random shapes: odd sizes, stride 2, padding, 1×1.
#[test]
fn conv_kernels_match_burn() {
    use burn::tensor::module::conv2d;
    use burn::tensor::ops::ConvOptions;
    use lopper::kernels::conv::{
        ConvShape, conv2d as k_conv2d, conv2d_bias_grad, conv2d_input_grad, conv2d_weight_grad,
    };
    use lopper::kernels::isa::{self, Isa};
    use rand::{Rng, SeedableRng, rngs::StdRng};
    let mut rng = StdRng::seed_from_u64(26);
    let ad = dev().autodiff();
    let cases = [
        // (batch, c_in, h, w, c_out, k, stride, pad)
        (2, 3, 7, 5, 4, 3, 1, 1),
        (3, 5, 9, 9, 6, 3, 2, 1),
        (2, 4, 8, 6, 3, 1, 1, 0),
        (1, 6, 10, 7, 5, 1, 2, 0),
        (2, 2, 6, 6, 3, 5, 1, 2),
        (4, 16, 11, 11, 8, 3, 2, 0),
        // Stride 1 across several register blocks of channels and positions, with a ragged
        // last block of each (AVX-512: 8 channels × 48 positions).
        (2, 9, 13, 11, 19, 3, 1, 1),
        (1, 17, 5, 3, 10, 3, 1, 2),
        // Input channels a multiple of 16 at stride 1: AVX-512's channels-last weight
        // gradient, with a 5×5 kernel's short last group of taps.
        (2, 16, 7, 9, 11, 3, 1, 1),
        (1, 32, 6, 6, 5, 5, 1, 2),
    ];
    let rel = |a: &[f32], b: &[f32], what: &str| {
        let scale = b.iter().fold(0.0f32, |m, v| m.max(v.abs())).max(1e-6);
        for (i, (x, y)) in a.iter().zip(b).enumerate() {
            assert!(
                (x - y).abs() <= 1e-4 * scale,
                "{what}[{i}]: kernel {x}, burn {y} (scale {scale})"
            );
        }
        assert_eq!(a.len(), b.len(), "{what}: length");
    };
    for (n, ci, h, w, co, k, s, p) in cases {
        let shape = ConvShape {
            batch: n,
            c_in: ci,
            height: h,
            width: w,
            c_out: co,
            kernel: [k, k],
            stride: [s, s],
            padding: [p, p],
        };
        let mut draw =
            |len: usize| -> Vec<f32> { (0..len).map(|_| rng.random_range(-1.0..1.0)).collect() };
        let x = draw(shape.input_len());
        let wt = draw(shape.weight_len());
        let b = draw(co);
        let r = draw(shape.output_len());
        let [oh, ow] = shape.out_hw();
        let what = format!("{shape:?}");
        // Burn: y = conv2d(x, w, b); L = sum(y * r), so dL/dy = r.
        let xt = Tensor::<4>::from_data(data(&x, &[n, ci, h, w]), &ad).require_grad();
        let wtt = Tensor::<4>::from_data(data(&wt, &[co, ci, k, k]), &ad).require_grad();
        let bt = Tensor::<1>::from_data(data(&b, &[co]), &ad).require_grad();
        let rt = Tensor::<4>::from_data(data(&r, &[n, co, oh, ow]), &ad);
        let y = conv2d(
            xt.clone(),
            wtt.clone(),
            Some(bt.clone()),
            ConvOptions::new([s, s], [p, p], [1, 1], 1),
        );
        let grads = (y.clone() * rt).sum().backward();
        let (y, dx, dw) = (
            host(y),
            host(xt.grad(&grads).unwrap()),
            host(wtt.grad(&grads).unwrap()),
        );
        // Every vector level this CPU has: each has its own micro-kernel.
        for level in Isa::available() {
            isa::with_limit(level, || {
                let what = format!("{what} at {level:?}");
                rel(
                    &k_conv2d(&x, &wt, Some(&b), &shape),
                    &y,
                    &format!("{what} forward"),
                );
                rel(
                    &conv2d_input_grad(&wt, &r, &shape),
                    &dx,
                    &format!("{what} dx"),
                );
                rel(
                    &conv2d_weight_grad(&x, &r, &shape),
                    &dw,
                    &format!("{what} dw"),
                );
            });
        }
        rel(
            &conv2d_bias_grad(&r, &shape),
            &host(bt.grad(&grads).unwrap()),
            &format!("{what} db"),
        );
    }
}

/// The depthwise kernels give the same forward and input gradient at every vector level this
/// CPU has (the widest is checked against Burn's op in
/// `conv_extension_matches_burn_on_random_shapes`), at stride 1 and 2.
#[test]
fn depthwise_kernels_agree_across_vector_levels() {
    use lopper::kernels::conv::ConvShape;
    use lopper::kernels::direct::depthwise;
    use lopper::kernels::isa::{self, Isa};
    use rand::{Rng, SeedableRng, rngs::StdRng};
    let mut rng = StdRng::seed_from_u64(27);
    for (n, c, h, w, k, s, p) in [(2, 5, 13, 11, 3, 1, 1), (3, 4, 9, 10, 3, 2, 1)] {
        let g = ConvShape {
            batch: n,
            c_in: c,
            height: h,
            width: w,
            c_out: c,
            kernel: [k, k],
            stride: [s, s],
            padding: [p, p],
        };
        let mut draw =
            |len: usize| -> Vec<f32> { (0..len).map(|_| rng.random_range(-1.0..1.0)).collect() };
        let x = draw(g.input_len());
        let wt = draw(c * k * k);
        let dy = draw(g.output_len());
        let at = |level| {
            isa::with_limit(level, || {
                (
                    depthwise::conv2d(&x, &wt, &g),
                    depthwise::input_grad(&wt, &dy, &g),
                )
            })
        };
        let (y0, dx0) = at(Isa::Baseline);
        for level in Isa::available() {
            let (y, dx) = at(level);
            for (what, a, b) in [("forward", &y, &y0), ("dx", &dx, &dx0)] {
                assert_eq!(a.len(), b.len());
                for (i, (u, v)) in a.iter().zip(b.iter()).enumerate() {
                    assert!(
                        (u - v).abs() <= 1e-5 * (1.0 + v.abs()),
                        "{g:?} {what}[{i}] at {level:?}: {u} against baseline {v}"
                    );
                }
            }
        }
    }
}

/// `lopper::kernels::conv2d` (the kernels through Burn's backend extension, forward and
/// handwritten backward on `Autodiff<Flex>`) against Burn's own `conv2d` on random geometries:
/// odd sizes, strides 1–3, padding, 1×1 to 5×5, with and without bias, strided (non-contiguous)
/// inputs, depthwise at stride 1 and above, and grouped or dilated convolutions, which must
/// fall back to Burn's op.
#[test]
fn conv_extension_matches_burn_on_random_shapes() {
    use burn::tensor::module::conv2d;
    use burn::tensor::ops::ConvOptions;
    use lopper::kernels;
    use rand::{Rng, SeedableRng, rngs::StdRng};
    let mut rng = StdRng::seed_from_u64(2026);
    let ad = dev().autodiff();
    let rel = |a: &[f32], b: &[f32], what: &str, floor: f32| {
        assert_eq!(a.len(), b.len(), "{what}: length");
        // `floor`: the size of the terms summed, so that cancellation (a bias gradient of ~1e-6
        // summed from O(1) terms in another order) is not read as a relative error.
        let scale = b.iter().fold(0.0f32, |m, v| m.max(v.abs())).max(floor);
        for (i, (x, y)) in a.iter().zip(b).enumerate() {
            assert!(
                (x - y).abs() <= 1e-4 * scale,
                "{what}[{i}]: extension {x}, burn {y} (scale {scale})"
            );
        }
    };
    let mut covered = 0;
    let mut depthwise_covered = 0;
    let mut strided_depthwise_covered = 0;
    for case in 0..64 {
        let k = [1, 3, 3, 5][rng.random_range(0..4)];
        let stride = rng.random_range(1..=3);
        let pad = rng.random_range(0..=k / 2 + 1);
        let grouped = case % 8 == 7;
        let dilated = case % 8 == 6;
        // Depthwise (groups = C_in = C_out): half at stride 1, half at the case's stride.
        let depthwise = case % 8 == 5;
        let dilation = if dilated { 2 } else { 1 };
        let (groups, ci, co) = if depthwise {
            let c = rng.random_range(1..=7);
            (c, c, c)
        } else if grouped {
            (2, 2 * rng.random_range(2..=3), 2 * rng.random_range(1..=3))
        } else {
            (1, rng.random_range(1..=6), rng.random_range(1..=5))
        };
        let stride = if depthwise && case % 16 == 5 || case % 3 == 0 {
            1
        } else {
            stride
        };
        // Strided depthwise at stride 2 on planes of at least 20², so that it reaches
        // MIN_POSITIONS (as a MobileNet's downsampling blocks do).
        let strided_depthwise = depthwise && stride > 1;
        let stride = if strided_depthwise { 2 } else { stride };
        let low = if strided_depthwise { 20 } else { 1 };
        let n = rng.random_range(1..=3);
        let h = rng.random_range((dilation * (k - 1) + 1).max(low)..=21 + 12 * low / 20);
        let w = rng.random_range((dilation * (k - 1) + 1).max(low)..=19 + 12 * low / 20);
        let out_positions = ((h + 2 * pad - dilation * (k - 1) - 1) / stride + 1)
            * ((w + 2 * pad - dilation * (k - 1) - 1) / stride + 1);
        let bias = rng.random_bool(0.5);
        let transposed = rng.random_bool(0.3);
        let opts = ConvOptions::new([stride, stride], [pad, pad], [dilation, dilation], groups);
        let what = format!(
            "case {case}: x [{n},{ci},{h},{w}] w [{co},{},{k},{k}] stride {stride} pad {pad} \
             groups {groups} dilation {dilation} bias {bias} transposed {transposed}",
            ci / groups
        );
        let mut draw =
            |len: usize| -> Vec<f32> { (0..len).map(|_| rng.random_range(-1.0..1.0)).collect() };
        let xv = draw(n * ci * h * w);
        let wv = draw(co * (ci / groups) * k * k);
        let bv = draw(co);
        let run = |ours: bool| {
            // A transposed input is stored [N, C, W, H] and swapped back: a strided view.
            let leaf_shape = if transposed {
                [n, ci, w, h]
            } else {
                [n, ci, h, w]
            };
            let leaf = Tensor::<4>::from_data(data(&xv, &leaf_shape), &ad).require_grad();
            let x = if transposed {
                leaf.clone().swap_dims(2, 3)
            } else {
                leaf.clone()
            };
            let wt =
                Tensor::<4>::from_data(data(&wv, &[co, ci / groups, k, k]), &ad).require_grad();
            let bt = bias.then(|| Tensor::<1>::from_data(data(&bv, &[co]), &ad).require_grad());
            let y = if ours {
                kernels::conv2d(x.clone(), wt.clone(), bt.clone(), opts.clone())
            } else {
                conv2d(x.clone(), wt.clone(), bt.clone(), opts.clone())
            };
            // L = sum(y * r) with a fixed r, so dL/dy = r.
            let r = Tensor::<4>::from_data(
                data(
                    &(0..y.shape().num_elements())
                        .map(|i| ((i * 7919) % 13) as f32 / 6.0 - 1.0)
                        .collect::<Vec<_>>(),
                    &y.dims(),
                ),
                &ad,
            );
            let grads = (y.clone() * r).sum().backward();
            (
                host(y),
                host(leaf.grad(&grads).unwrap()),
                host(wt.grad(&grads).unwrap()),
                bt.map(|b| host(b.grad(&grads).unwrap())),
            )
        };
        let before = kernels::kernel_calls();
        let ours = run(true);
        let ran = kernels::kernel_calls() - before;
        let theirs = run(false);
        // Below MIN_POSITIONS output positions per image Flex's own op runs.
        let by_kernels = !dilated
            && out_positions >= lopper::kernels::MIN_POSITIONS
            && (groups == 1 || (depthwise && pad < k));
        if !by_kernels {
            assert_eq!(ran, 0, "{what}: the kernels cannot run this one");
        } else {
            assert!(ran >= 3, "{what}: the kernels ran {ran} passes, not 3");
            covered += 1;
            depthwise_covered += (groups > 1) as usize;
            strided_depthwise_covered += (groups > 1 && stride > 1) as usize;
        }
        rel(&ours.0, &theirs.0, &format!("{what} forward"), 1e-3);
        rel(&ours.1, &theirs.1, &format!("{what} dx"), 1e-3);
        rel(&ours.2, &theirs.2, &format!("{what} dw"), 1e-3);
        if let (Some(a), Some(b)) = (ours.3, theirs.3) {
            rel(&a, &b, &format!("{what} db"), 1.0);
        }
    }
    assert!(
        covered >= 15,
        "only {covered} cases went through the kernels"
    );
    assert!(
        depthwise_covered >= 2,
        "only {depthwise_covered} depthwise cases went through the kernels"
    );
    assert!(
        strided_depthwise_covered >= 1,
        "no strided depthwise case went through the kernels"
    );
}

/// `lopper::kernels::batch_norm_train` (the BatchNorm kernel through the backend extension,
/// with its handwritten backward) against Burn's `batch_norm_train` on random shapes: output,
/// batch statistics, and the gradients of the input, `gamma` and `beta`, on contiguous and
/// strided inputs, with activations far from zero mean; with and without the fused epilogue
/// (a channel scale with some zeros, carrying a gradient, and the ReLU), against Burn's
/// multiplication and `relu` after its BatchNorm.
#[test]
fn batch_norm_extension_matches_burn_on_random_shapes() {
    use burn::tensor::module::batch_norm_train;
    use lopper::kernels;
    use rand::{Rng, SeedableRng, rngs::StdRng};
    let mut rng = StdRng::seed_from_u64(1926);
    let mut pick = StdRng::seed_from_u64(6);
    let ad = dev().autodiff();
    let rel = |a: &[f32], b: &[f32], what: &str| {
        assert_eq!(a.len(), b.len(), "{what}: length");
        let scale = b.iter().fold(0.0f32, |m, v| m.max(v.abs())).max(1e-6);
        for (i, (x, y)) in a.iter().zip(b).enumerate() {
            assert!(
                (x - y).abs() <= 1e-4 * scale,
                "{what}[{i}]: extension {x}, burn {y} (scale {scale})"
            );
        }
    };
    for case in 0..30 {
        let n = rng.random_range(1..=6);
        let c = rng.random_range(1..=9);
        let h = rng.random_range(1..=9);
        let w = rng.random_range(1..=7);
        let offset = rng.random_range(-3.0..3.0f32);
        let transposed = rng.random_bool(0.3);
        let scaled = rng.random_bool(0.5);
        // Which rectifier, from a second stream so the shapes and values stay those the
        // test drew before ReLU6 joined.
        let relu = match (rng.random_bool(0.5), pick.random_bool(0.5)) {
            (false, _) => kernels::Rectifier::None,
            (true, false) => kernels::Rectifier::Relu,
            (true, true) => kernels::Rectifier::Relu6,
        };
        let what = format!(
            "case {case}: [{n},{c},{h},{w}] offset {offset} transposed {transposed} \
             scaled {scaled} rectifier {relu:?}"
        );
        let mut draw = |len: usize, off: f32| -> Vec<f32> {
            (0..len)
                .map(|_| off + rng.random_range(-1.0..1.0))
                .collect()
        };
        let xv = draw(n * c * h * w, offset);
        // With ReLU6, scales large enough that its upper bound of 6 cuts too.
        let gain = if relu == kernels::Rectifier::Relu6 {
            4.0
        } else {
            1.0
        };
        let gv: Vec<f32> = draw(c, 1.0).into_iter().map(|v| v * gain).collect();
        let bv = draw(c, 0.0);
        // Channel masks: soft values, some exactly zero (a pruned channel).
        let sv: Vec<f32> = draw(c, 0.5)
            .into_iter()
            .map(|v| if v < 0.0 { 0.0 } else { v })
            .collect();
        let r: Vec<f32> = (0..n * c * h * w)
            .map(|i| ((i * 7919) % 17) as f32 / 8.0 - 1.0)
            .collect();
        let run = |ours: bool| {
            let leaf_shape = if transposed {
                [n, c, w, h]
            } else {
                [n, c, h, w]
            };
            let leaf = Tensor::<4>::from_data(data(&xv, &leaf_shape), &ad).require_grad();
            let x = if transposed {
                leaf.clone().swap_dims(2, 3)
            } else {
                leaf.clone()
            };
            let g = Tensor::<1>::from_data(data(&gv, &[c]), &ad).require_grad();
            let b = Tensor::<1>::from_data(data(&bv, &[c]), &ad).require_grad();
            let m = Tensor::<1>::from_data(data(&sv, &[c]), &ad).require_grad();
            let scale = scaled.then(|| m.clone());
            let (y, mean, var) = if ours {
                let epilogue = kernels::NormEpilogue { scale, relu };
                kernels::batch_norm_train(x, g.clone(), b.clone(), epilogue, 1e-5)
            } else {
                let o = batch_norm_train(x, g.clone(), b.clone(), 1e-5);
                let y = match scale {
                    Some(m) => o.output * m.reshape([1, c, 1, 1]),
                    None => o.output,
                };
                let y = match relu {
                    kernels::Rectifier::None => y,
                    kernels::Rectifier::Relu => burn::tensor::activation::relu(y),
                    kernels::Rectifier::Relu6 => burn::tensor::activation::relu6(y),
                };
                (y, o.mean, o.variance)
            };
            let rt = Tensor::<4>::from_data(data(&r, &y.dims()), &ad);
            let grads = (y.clone() * rt).sum().backward();
            (
                [host(y), host(mean), host(var)],
                [
                    host(leaf.grad(&grads).unwrap()),
                    host(g.grad(&grads).unwrap()),
                    host(b.grad(&grads).unwrap()),
                    m.grad(&grads).map(host).unwrap_or_default(),
                ],
            )
        };
        let before = kernels::kernel_calls();
        let ours = run(true);
        assert_eq!(
            kernels::kernel_calls() - before,
            2,
            "{what}: the kernels ran no forward and backward"
        );
        let theirs = run(false);
        for (k, name) in ["output", "mean", "variance"].iter().enumerate() {
            rel(&ours.0[k], &theirs.0[k], &format!("{what} {name}"));
        }
        assert_eq!(
            ours.1[3].len(),
            if scaled { c } else { 0 },
            "{what}: dscale"
        );
        for (k, name) in ["dx", "dgamma", "dbeta", "dscale"].iter().enumerate() {
            rel(&ours.1[k], &theirs.1[k], &format!("{what} {name}"));
        }
    }
}
