//! Exported ONNX files run in an independent engine (tract) and compute what lopper computes;
//! exported safetensors hold PyTorch's layout.

use burn::tensor::{Device, Tensor, TensorData};
use lopper::export::{Format, export, to_onnx};
use lopper::graph::{Graph, GraphBuilder, Op};
use lopper::model::{Model, NoHook, Value};
use lopper::prune::{Selection, channel_groups, prune_model};
use lopper::zoo;
use rand::{Rng, SeedableRng, rngs::StdRng};
use tract_onnx::prelude::*;

mod common;
use common::{randomised, shape_for};

const BATCH: usize = 2;

fn random_input(shape: &[usize], seed: u64) -> (Vec<usize>, Vec<f32>) {
    let mut dims = vec![BATCH];
    dims.extend_from_slice(shape);
    let n: usize = dims.iter().product();
    let mut rng = StdRng::seed_from_u64(seed);
    (dims, (0..n).map(|_| rng.random_range(-1.0..1.0)).collect())
}

/// lopper's eval-mode output for an input of any rank.
fn lopper_output(model: &Model, dims: &[usize], x: &[f32]) -> Vec<f32> {
    let dev = Device::flex();
    let data = TensorData::new(x.to_vec(), dims.to_vec());
    let input = match dims.len() {
        2 => Value::Flat(Tensor::<2>::from_data(data, &dev)),
        3 => Value::Seq(Tensor::<3>::from_data(data, &dev)),
        _ => Value::Spatial(Tensor::<4>::from_data(data, &dev)),
    };
    match model.forward_hooked(input, false, &NoHook).unwrap() {
        Value::Flat(t) => t.into_data().try_to_vec::<f32>().unwrap(),
        other => panic!("output of rank {}", other.dims().len()),
    }
}

/// tract's output for the exported ONNX bytes.
fn tract_output(onnx: &[u8], dims: &[usize], x: &[f32]) -> Vec<f32> {
    let model = tract_onnx::onnx()
        .model_for_read(&mut &onnx[..])
        .expect("tract reads the file")
        .with_input_fact(0, f32::fact(dims).into())
        .unwrap()
        .into_optimized()
        .expect("tract optimises the model")
        .into_runnable()
        .unwrap();
    let input = tract_ndarray::ArrayD::from_shape_vec(dims.to_vec(), x.to_vec()).unwrap();
    let out = model
        .run(tvec!(tract_onnx::prelude::Tensor::from(input).into()))
        .expect("tract runs the model");
    out[0]
        .to_array_view::<f32>()
        .unwrap()
        .iter()
        .copied()
        .collect()
}

fn assert_same(model: &Model, seed: u64) {
    let input_shape = match &model.graph.nodes[0].op {
        Op::Input { shape } => shape.clone(),
        op => panic!("first node is {op:?}"),
    };
    let (dims, x) = random_input(&input_shape, seed);
    let onnx = to_onnx(model).unwrap();
    let ours = lopper_output(model, &dims, &x);
    let theirs = tract_output(&onnx, &dims, &x);
    assert_eq!(ours.len(), theirs.len(), "{}", model.graph.name);
    let diff = ours
        .iter()
        .zip(&theirs)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    let scale = ours.iter().map(|v| v.abs()).fold(0.0f32, f32::max);
    eprintln!(
        "{}: max abs diff {diff:.2e}, outputs up to {scale:.2}",
        model.graph.name
    );
    assert!(
        diff <= 1e-4,
        "{}: max abs diff {diff} (outputs up to {scale})",
        model.graph.name
    );
    // The outputs are not trivially equal (all zeros).
    assert!(scale > 1e-3, "{}: output {scale}", model.graph.name);
}

/// Random BatchNorm statistics (far from the identity) with scales small enough that deep
/// residual networks keep trained-model-sized outputs: the 1e-4 bound is absolute.
fn tame(graph: &Graph, seed: u64) -> Model {
    let m = randomised(graph, seed);
    let tensors = m.named_tensors();
    Model::from_tensors(graph.clone(), &Device::flex(), |node, name, _| {
        let full = format!("{}.{name}", node.name);
        let d = tensors.iter().find(|(n, _)| *n == full).unwrap().1.clone();
        if matches!(node.op, Op::BatchNorm2d { .. }) && name == "weight" {
            let v: Vec<f32> = d
                .try_to_vec::<f32>()
                .unwrap()
                .iter()
                .map(|w| w * 0.4)
                .collect();
            return Ok(TensorData::new(v, d.shape().to_vec()));
        }
        Ok(d)
    })
    .unwrap()
}

#[test]
fn every_zoo_model_runs_in_tract_as_in_lopper() {
    for (k, name) in zoo::MODEL_NAMES.iter().enumerate() {
        let graph = zoo::build(name, &shape_for(name), 10).unwrap();
        assert_same(&tame(&graph, k as u64), k as u64);
    }
}

#[test]
fn pruned_models_export_too() {
    // Uneven widths after surgery (odd channel counts, shrunken flatten → linear).
    for (k, name) in ["lenet5", "resnet20", "mobilenet_v2"].iter().enumerate() {
        let graph = zoo::build(name, &shape_for(name), 10).unwrap();
        let model = tame(&graph, 50 + k as u64);
        let groups = channel_groups(&graph, &[]).unwrap();
        let mut rng = StdRng::seed_from_u64(k as u64);
        let keep = groups
            .iter()
            .map(|g| {
                g.is_prunable().then(|| {
                    let n = rng.random_range(1..=g.channels);
                    let mut idx: Vec<usize> = (0..g.channels).collect();
                    for i in 0..n {
                        let j = rng.random_range(i..g.channels);
                        idx.swap(i, j);
                    }
                    let mut kept = idx[..n].to_vec();
                    kept.sort_unstable();
                    kept
                })
            })
            .collect();
        let pruned = prune_model(&model, &groups, &Selection { keep }, &Device::flex()).unwrap();
        assert_same(&pruned, 60 + k as u64);
    }
}

/// Ops the zoo does not use: GELU, LayerNorm, average pooling, concat, ReLU6, dropout, a
/// three-way add, and linear layers on sequences.
fn odd_graphs() -> Vec<Graph> {
    let mut b = GraphBuilder::new("odd_spatial", &[3, 12, 12]);
    let x = b.conv("a", 0, 6, 3, 1, 1, 1, true);
    let g = b.op("gelu", Op::Gelu, x);
    let y = b.conv("b", 0, 6, 1, 1, 0, 1, false);
    let r6 = b.op("relu6", Op::Relu6, y);
    let cat = b.push("cat", Op::Concat, &[g, r6]);
    let c = b.conv("c", 0, 12, 3, 1, 1, 1, false);
    let sum = b.push("sum", Op::Add, &[cat, c, cat]);
    let pool = b.op(
        "avg",
        Op::AvgPool2d {
            kernel: [3, 3],
            stride: [2, 2],
            padding: [1, 1],
        },
        sum,
    );
    let drop = b.op("drop", Op::Dropout { p: 0.5 }, pool);
    let flat = b.op("flatten", Op::Flatten, drop);
    let fc = b.linear("fc", flat, 5, true);
    let spatial = b.finish(fc).unwrap();

    let mut b = GraphBuilder::new("odd_seq", &[4, 8]);
    let h = b.linear("proj", 0, 16, true);
    let n = b.op("ln", Op::LayerNorm { dim: 16, eps: 1e-5 }, h);
    let a = b.op("gelu", Op::Gelu, n);
    let o = b.linear("out", a, 8, false);
    let flat = b.op("flatten", Op::Flatten, o);
    let fc = b.linear("fc", flat, 3, true);
    let seq = b.finish(fc).unwrap();
    vec![spatial, seq]
}

#[test]
fn ops_outside_the_zoo_export_too() {
    for (k, g) in odd_graphs().into_iter().enumerate() {
        let model = Model::init(g, 7 + k as u64, &Device::flex()).unwrap();
        assert_same(&model, 70 + k as u64);
    }
}

#[test]
fn safetensors_export_has_pytorch_layout() {
    let graph = zoo::build("lenet5", &shape_for("lenet5"), 10).unwrap();
    let model = randomised(&graph, 3);
    let bytes = export(&model, Format::Safetensors).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let ours: std::collections::HashMap<String, TensorData> =
        model.named_tensors().into_iter().collect();
    assert_eq!(st.len(), ours.len());
    for (name, data) in &ours {
        let t = st.tensor(name).unwrap();
        let vals: Vec<f32> = t
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        let src = data.try_to_vec::<f32>().unwrap();
        let shape = data.shape();
        let is_linear = graph
            .nodes
            .iter()
            .any(|n| matches!(n.op, Op::Linear { .. }) && *name == format!("{}.weight", n.name));
        if is_linear {
            // [in, out] in lopper, [out, in] in PyTorch: element (i, o) moves to (o, i).
            let (i_n, o_n) = (shape[0], shape[1]);
            assert_eq!(t.shape(), [o_n, i_n], "{name}");
            for i in 0..i_n {
                for o in 0..o_n {
                    assert_eq!(vals[o * i_n + i], src[i * o_n + o], "{name}[{i},{o}]");
                }
            }
        } else {
            assert_eq!(t.shape(), &shape.to_vec()[..], "{name}");
            assert_eq!(vals, src, "{name}");
        }
    }
}
