//! Channel groups, masks and surgery on every zoo model and on hand-built graphs.

use burn::tensor::{Device, Tensor, TensorData};
use lopper::count::count;
use lopper::graph::{GraphBuilder, Op};
use lopper::model::{Model, NoHook, Value};
use lopper::prune::surgery::kept_indices;
use lopper::prune::{
    ChannelMasks, Resource, ResourceModel, Role, Selection, channel_groups, keep_ratios,
    prune_model,
};
use rand::{Rng, SeedableRng, rngs::StdRng};

mod common;
use common::{randomised, shape_for};

#[test]
fn group_counts_on_the_zoo() {
    // (model, groups, prunable groups), worked out from each architecture by hand.
    let expected = [
        ("mlp", 4, 2),
        ("lenet5", 6, 4),
        ("vgg11", 10, 8),
        ("vgg16", 15, 13),
        ("resnet20", 14, 12),
        ("resnet32", 20, 18),
        ("resnet56", 32, 30),
        ("mobilenet_v1", 16, 14),
        ("mobilenet_v2", 27, 25),
    ];
    for (name, total, prunable) in expected {
        let g = lopper::zoo::build(name, &shape_for(name), 10).unwrap();
        let groups = channel_groups(&g, &[]).unwrap();
        let n = groups.iter().filter(|g| g.is_prunable()).count();
        assert_eq!((groups.len(), n), (total, prunable), "{name}");
    }
    // ResNet-20: the stem and every stage-1 block output are one group (identity shortcuts).
    let g = lopper::zoo::build("resnet20", &[3, 32, 32], 10).unwrap();
    let groups = channel_groups(&g, &[]).unwrap();
    let stem = groups
        .iter()
        .find(|x| x.label(&g).starts_with("stem.conv"))
        .unwrap();
    assert_eq!(
        stem.label(&g),
        "stem.conv + stage1.block0.conv2 + stage1.block1.conv2 + stage1.block2.conv2"
    );
    // Protecting a node by name protects its group; an unknown name is an error.
    let protected = channel_groups(&g, &["stage2.block1.conv1".into()]).unwrap();
    assert_eq!(protected.iter().filter(|x| x.is_prunable()).count(), 11);
    assert!(
        channel_groups(&g, &["nope".into()])
            .unwrap_err()
            .to_string()
            .contains("nope")
    );
}

#[test]
fn concat_and_flatten_index_mapping() {
    let mut b = GraphBuilder::new("cat", &[1, 4, 4]);
    let a = b.conv("a", 0, 2, 1, 1, 0, 1, false);
    let c = b.conv("b", 0, 3, 1, 1, 0, 1, false);
    let cat = b.push("cat", Op::Concat, &[a, c]);
    let d = b.conv("c", cat, 4, 1, 1, 0, 1, false);
    let f = b.op("flatten", Op::Flatten, d);
    let y = b.linear("fc", f, 2, true);
    let g = b.finish(y).unwrap();
    let groups = channel_groups(&g, &[]).unwrap();
    let find = |n: &str| groups.iter().find(|x| x.label(&g) == n).unwrap().id;
    let (ga, gb, gc) = (find("a"), find("b"), find("c"));
    // Consumers record where each group starts in their input and how many features a channel spans.
    let consumer = |gid: usize| {
        groups[gid]
            .members
            .iter()
            .find(|m| m.role == Role::Consumer)
            .cloned()
            .unwrap()
    };
    assert_eq!((consumer(ga).offset, consumer(gb).offset), (0, 2));
    assert_eq!(
        (consumer(gc).node, consumer(gc).repeat),
        (g.node_index("fc").unwrap(), 16)
    );
    let mut sel = Selection::all(&groups);
    sel.keep[ga] = Some(vec![1]);
    sel.keep[gb] = Some(vec![0, 2]);
    sel.keep[gc] = Some(vec![1, 3]);
    let keep = kept_indices(&g, &groups, &sel).unwrap();
    assert_eq!(keep[cat], vec![1, 2, 4]);
    assert_eq!(keep[f], (16..32).chain(48..64).collect::<Vec<_>>());
    // Surgery follows the same mapping and keeps the function.
    check_equivalence(&g, &sel, &groups, 5);
}

fn host(v: Value) -> Vec<f32> {
    match v {
        Value::Flat(t) => t.into_data().try_to_vec::<f32>().unwrap(),
        other => panic!("{:?}", other.dims()),
    }
}

/// Masked model output == pruned model output, for a random input.
fn check_equivalence(
    graph: &lopper::graph::Graph,
    sel: &Selection,
    groups: &[lopper::prune::ChannelGroup],
    seed: u64,
) {
    let dev = Device::flex();
    let model = randomised(graph, seed);
    let [c, h, w] = [
        graph.input_shape()[0],
        graph.input_shape()[1],
        graph.input_shape()[2],
    ];
    let mut rng = StdRng::seed_from_u64(seed + 1);
    let x: Vec<f32> = (0..2 * c * h * w)
        .map(|_| rng.random_range(-1.0..1.0))
        .collect();
    let x = Tensor::<4>::from_data(TensorData::new(x, [2, c, h, w]), &dev);
    let masks = ChannelMasks::hard(graph, groups, sel, &dev);
    let masked = host(
        model
            .forward_hooked(Value::Spatial(x.clone()), false, &masks)
            .unwrap(),
    );
    let pruned = prune_model(&model, groups, sel, &dev).unwrap();
    let small = host(
        pruned
            .forward_hooked(Value::Spatial(x.clone()), false, &NoHook)
            .unwrap(),
    );
    let dense = host(
        model
            .forward_hooked(Value::Spatial(x), false, &NoHook)
            .unwrap(),
    );
    let diff = masked
        .iter()
        .zip(&small)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert!(
        diff <= 1e-4,
        "{}: pruned differs from masked by {diff}",
        graph.name
    );
    // The mask did something: the masked output is not the dense one.
    assert!(
        masked.iter().zip(&dense).any(|(a, b)| (a - b).abs() > 1e-4),
        "{}: masks had no effect",
        graph.name
    );
    assert!(pruned.num_params() < model.num_params());
    // The resource models predict exactly what is counted on the pruned graph.
    let a = keep_ratios(groups, sel);
    let counted = count(&pruned.graph);
    for (resource, actual) in [
        (Resource::Macs, counted.macs),
        (Resource::Params, counted.params),
    ] {
        let rm = ResourceModel::new(resource, graph, groups);
        let predicted = rm.eval(&a);
        assert!(
            (predicted - actual as f64).abs() < 0.5,
            "{} {resource:?}: predicted {predicted}, counted {actual}",
            graph.name
        );
        let dense = count(graph);
        let full = if resource == Resource::Macs {
            dense.macs
        } else {
            dense.params
        };
        assert!((rm.dense() - full as f64).abs() < 0.5);
    }
}

#[test]
fn pruned_models_compute_what_masked_models_compute() {
    for (k, name) in lopper::zoo::MODEL_NAMES.iter().enumerate() {
        let g = lopper::zoo::build(name, &shape_for(name), 10).unwrap();
        let groups = channel_groups(&g, &[]).unwrap();
        let mut rng = StdRng::seed_from_u64(k as u64);
        let mut sel = Selection::all(&groups);
        for grp in groups.iter().filter(|g| g.is_prunable()) {
            let mut keep: Vec<usize> = (0..grp.channels).filter(|_| rng.random_bool(0.6)).collect();
            if keep.is_empty() {
                keep.push(rng.random_range(0..grp.channels));
            }
            sel.keep[grp.id] = Some(keep);
        }
        check_equivalence(&g, &sel, &groups, k as u64);
    }
}

#[test]
fn protected_groups_cannot_be_pruned() {
    let g = lopper::zoo::build("lenet5", &[1, 28, 28], 10).unwrap();
    let groups = channel_groups(&g, &[]).unwrap();
    let out = groups.iter().find(|x| x.label(&g) == "fc3").unwrap();
    assert!(out.protected.as_deref().unwrap().contains("output"));
    let mut sel = Selection::all(&groups);
    sel.keep[out.id] = Some(vec![0, 1]);
    let m = Model::init(g.clone(), 0, &Device::flex()).unwrap();
    let e = prune_model(&m, &groups, &sel, &Device::flex())
        .unwrap_err()
        .to_string();
    assert!(e.contains("protected"), "{e}");
}

#[test]
fn resource_gradient_matches_finite_differences() {
    let g = lopper::zoo::build("mobilenet_v2", &[3, 32, 32], 10).unwrap();
    let groups = channel_groups(&g, &[]).unwrap();
    let mut rng = StdRng::seed_from_u64(9);
    let a: Vec<f64> = groups.iter().map(|_| rng.random_range(0.2..1.0)).collect();
    for resource in [Resource::Macs, Resource::Params] {
        let rm = ResourceModel::new(resource, &g, &groups);
        let grad = rm.grad(&a);
        for k in 0..a.len() {
            let (mut up, mut down) = (a.clone(), a.clone());
            up[k] += 1e-4;
            down[k] -= 1e-4;
            let fd = (rm.eval(&up) - rm.eval(&down)) / 2e-4;
            assert!(
                (fd - grad[k]).abs() <= 1e-6 * fd.abs().max(1.0),
                "{resource:?} group {k}: {fd} vs {}",
                grad[k]
            );
        }
        // Halving every prunable group's ratio: each quadratic term shrinks by 4, linear by 2.
        assert!(rm.eval(&vec![0.5; a.len()]) < 0.5 * rm.dense());
    }
}

/// The loss the fusion tests differentiate: the logits weighted by a fixed pattern, so the
/// logits' gradients differ from one another.
fn patterned_loss(logits: Tensor<2>, device: &Device) -> Tensor<1> {
    let [n, k] = logits.dims();
    let pattern = (0..n * k).map(|i| (i % 7) as f32 - 3.0).collect();
    (logits * Tensor::<2>::from_data(TensorData::new(pattern, [n, k]), device)).sum()
}

/// One training forward and backward pass of a 4×3×16×16 batch under `hook`: the logits, the
/// input's gradient, then the gradient of each of `params` (empty for a parameter the pass
/// did not reach, such as the mask of a group without a mask point).
fn training_pass(
    model: &Model,
    x: &[f32],
    hook: &dyn lopper::model::NodeHook,
    params: &[Tensor<1>],
    device: &Device,
) -> Vec<Vec<f32>> {
    let input =
        Tensor::<4>::from_data(TensorData::new(x.to_vec(), [4, 3, 16, 16]), device).require_grad();
    let Value::Flat(logits) = model
        .forward_hooked(Value::Spatial(input.clone()), true, hook)
        .unwrap()
    else {
        panic!("logits")
    };
    let grads = patterned_loss(logits.clone(), device).backward();
    let host = |t: Tensor<1>| t.into_data().try_to_vec::<f32>().unwrap();
    let mut out = vec![
        host(logits.flatten(0, 1)),
        host(input.grad(&grads).unwrap().flatten(0, 3)),
    ];
    out.extend(
        params
            .iter()
            .map(|p| p.grad(&grads).map(host).unwrap_or_default()),
    );
    out
}

/// Each tensor of `fused` equals the one of `unfused` to `tol` relative to the latter's
/// largest magnitude.
fn assert_all_close(what: &str, fused: &[Vec<f32>], unfused: &[Vec<f32>], tol: f32) {
    assert_eq!(fused.len(), unfused.len(), "{what}: tensor count");
    for (k, (x, y)) in fused.iter().zip(unfused).enumerate() {
        assert_eq!(x.len(), y.len(), "{what}: tensor {k} length");
        let scale = y.iter().fold(0.0f32, |m, v| m.max(v.abs())).max(1e-6);
        for (i, (p, q)) in x.iter().zip(y).enumerate() {
            assert!(
                (p - q).abs() <= tol * scale,
                "{what}: tensor {k}[{i}]: fused {p}, unfused {q} (scale {scale})"
            );
        }
    }
}

/// The old way of masking: the factor applied to the value after the node, with the executor
/// told that the hook reads outputs, so nothing is fused.
struct UnfusedMasks<'a>(&'a ChannelMasks);

impl lopper::model::NodeHook for UnfusedMasks<'_> {
    fn after_node(&self, index: usize, node: &lopper::graph::Node, value: Value) -> Value {
        match self.0.channel_scale(index, node, value.is_autodiff()) {
            Some(m) => value.scale_channels(m),
            None => value,
        }
    }
}

/// A hook that changes nothing but reads every node's output, so the executor fuses no
/// rectifier into a BatchNorm.
struct ReadsEveryOutput;

impl lopper::model::NodeHook for ReadsEveryOutput {}

/// MobileNet-v2's BatchNorm + ReLU6 pairs, fused into the BatchNorm kernel, give the training
/// logits and input gradient of the unfused pass (BatchNorm, then Burn's `relu6`).
#[test]
fn fused_relu6_keeps_training_values_and_gradients() {
    let ad = Device::flex().autodiff();
    let mut g = lopper::zoo::build("mobilenet_v2", &[3, 16, 16], 10).unwrap();
    // No dropout: both passes must see the same network.
    for node in &mut g.nodes {
        if let lopper::graph::Op::Dropout { p } = &mut node.op {
            *p = 0.0;
        }
    }
    let model = burn::module::Module::train(burn::module::Module::fork(randomised(&g, 5), &ad));
    let mut rng = StdRng::seed_from_u64(12);
    let x: Vec<f32> = (0..4 * 3 * 16 * 16)
        .map(|_| rng.random_range(-3.0..3.0))
        .collect();
    let run = |fused: bool| {
        let h: &dyn lopper::model::NodeHook = if fused {
            &lopper::model::NoHook
        } else {
            &ReadsEveryOutput
        };
        training_pass(&model, &x, h, &[], &ad)
    };
    assert_all_close("mobilenet_v2", &run(true), &run(false), 1e-4);
}

/// A training forward and backward pass with soft channel masks (some exactly zero) on
/// models with BatchNorm + ReLU (fused into the BatchNorm kernel with the mask) gives the
/// logits and the gradients of the input and of the masks themselves that the unfused pass
/// (BatchNorm, then the mask, then ReLU) gives.
#[test]
fn fused_mask_and_relu_keep_training_values_and_gradients() {
    use lopper::model::NodeHook;
    let ad = Device::flex().autodiff();
    for name in ["resnet20", "mobilenet_v1"] {
        let g = lopper::zoo::build(name, &[3, 16, 16], 10).unwrap();
        let groups = channel_groups(&g, &[]).unwrap();
        let model = burn::module::Module::train(burn::module::Module::fork(randomised(&g, 3), &ad));
        let mut rng = StdRng::seed_from_u64(11);
        let mask_values: Vec<Vec<f32>> = groups
            .iter()
            .map(|gr| {
                (0..gr.channels)
                    .map(|_| rng.random_range(-0.3..1.2f32).max(0.0))
                    .collect()
            })
            .collect();
        let x: Vec<f32> = (0..4 * 3 * 16 * 16)
            .map(|_| rng.random_range(-1.0..1.0))
            .collect();
        let run = |fused: bool| {
            let masks: Vec<Tensor<1>> = mask_values
                .iter()
                .map(|m| {
                    Tensor::<1>::from_data(TensorData::new(m.clone(), [m.len()]), &ad)
                        .require_grad()
                })
                .collect();
            let hook = ChannelMasks::new(
                &g,
                &groups,
                &masks.iter().cloned().map(Some).collect::<Vec<_>>(),
                &ad,
            );
            let unfused = UnfusedMasks(&hook);
            let h: &dyn NodeHook = if fused { &hook } else { &unfused };
            training_pass(&model, &x, h, &masks, &ad)
        };
        let before = lopper::kernels::kernel_calls();
        let (a, b) = (run(true), run(false));
        assert!(
            lopper::kernels::kernel_calls() > before,
            "{name}: no kernel ran"
        );
        assert_eq!(a.len(), b.len());
        let with_grad = a[2..].iter().filter(|g| !g.is_empty()).count();
        assert!(
            with_grad + 1 >= groups.len(),
            "{name}: {with_grad} masks have gradients"
        );
        // 1e-3: MobileNet's last BatchNorms normalise over 4 values (batch 4, 1×1), which
        // amplifies the rounding of `(m·a)·x + m·b` against `m·(a·x + b)`.
        assert_all_close(name, &a, &b, 1e-3);
    }
}
