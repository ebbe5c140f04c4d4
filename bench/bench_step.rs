//! Training-step throughput of a zoo model on the default backend, and where the time goes.
//!
//! `cargo run --release --example bench_step -- [--model resnet20] [--batch 128] [--steps 20]
//! [--device cpu|cuda|wgpu] [--reps 3] [--kernels on|off|both]` (`--reps 0` skips the per-op
//! profile; `--kernels` picks lopper's convolution kernels, Burn's own op, or both side by side;
//! `--mask channels|pdp` times DSA's or PDP's masked step against the plain one; `unfused`
//! and `channels-unfused` the steps without BatchNorm's fused mask and ReLU; `--isa avx2,avx512`
//! the kernels at two vector levels side by side)
//!
//! Prints one JSON line with images/s for the full step, then a profile table: the step split
//! into data preparation, forward (+ loss), backward and optimiser (each timed with a device
//! sync), and the forward and backward time of each op kind, measured by running every node of
//! the model alone on its real input shape.

#[path = "args.rs"]
mod args;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use args::arg;
use burn::module::Module;
use burn::optim::GradientsParams;
use burn::tensor::{Device, Distribution, Tensor};
use lopper::data::{Batcher, Dataset, DatasetName};
use lopper::graph::{Graph, GraphBuilder, Op};
use lopper::kernels::isa::{self, Isa};
use lopper::model::{Model, NoHook, NodeHook, Value};
use lopper::train::{TrainConfig, loss::cross_entropy, optim::build_optimizer};

fn sync(device: &Device) {
    device.sync().expect("device sync");
}

/// A random CIFAR-shaped data set, so the data phase does real augmentation work.
fn random_data(n: usize) -> Dataset {
    let mut s = 12345u64;
    let images = (0..n * 3072)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (s >> 56) as u8
        })
        .collect();
    Dataset {
        images,
        labels: (0..n).map(|i| (i % 10) as u8).collect(),
        shape: [3, 32, 32],
        classes: (0..10).map(|i| i.to_string()).collect(),
    }
}

/// Seconds per call of `f`, after one warm-up call, averaged over `reps`.
fn time(reps: usize, mut f: impl FnMut()) -> f64 {
    f();
    let t = Instant::now();
    for _ in 0..reps {
        f();
    }
    t.elapsed().as_secs_f64() / reps as f64
}

/// Profile bucket of an op.
fn bucket(op: &Op) -> &'static str {
    match op {
        Op::Conv2d { .. } => "conv",
        Op::BatchNorm2d { .. } => "batch norm",
        Op::Relu | Op::Relu6 | Op::Gelu | Op::Add | Op::Dropout { .. } => "element-wise",
        Op::Linear { .. } => "linear",
        _ => "pooling/reshape",
    }
}

/// Forward and forward+backward seconds of node `i` of `graph` run alone at batch `batch`.
fn node_times(graph: &Graph, i: usize, batch: usize, device: &Device, reps: usize) -> (f64, f64) {
    let node = &graph.nodes[i];
    let ins: Vec<Vec<usize>> = node
        .inputs
        .iter()
        .map(|&j| graph.nodes[j].shape.clone())
        .collect();
    let mut b = GraphBuilder::new("one", &ins[0]);
    let extra: Vec<usize> = (1..ins.len())
        .map(|k| b.op(&format!("copy{k}"), Op::Relu, 0))
        .collect();
    let mut inputs = vec![0];
    inputs.extend(extra);
    let y = b.push(&node.name, node.op.clone(), &inputs);
    let g = b.finish(y).expect("single-op graph");
    let m = Model::init(g, 0, device)
        .expect("init")
        .fork(device)
        .train();
    let mut shape = vec![batch];
    shape.extend(&ins[0]);
    let dims: [usize; 4] = match shape.len() {
        4 => [shape[0], shape[1], shape[2], shape[3]],
        2 => [shape[0], shape[1], 1, 1],
        _ => return (0.0, 0.0),
    };
    let x4 = Tensor::<4>::random(dims, Distribution::Normal(0.0, 1.0), device);
    let input = |x: Tensor<4>| {
        if shape.len() == 2 {
            Value::Flat(x.reshape([dims[0], dims[1]]))
        } else {
            Value::Spatial(x)
        }
    };
    let sum = |v: Value| match v {
        Value::Spatial(t) => t.sum(),
        Value::Flat(t) => t.sum(),
        Value::Seq(t) => t.sum(),
    };
    // An add's second input is a ReLU copy of the first; its small cost is included.
    let fwd = time(reps, || {
        let y = m
            .forward_hooked(input(x4.clone()), true, &NoHook)
            .expect("forward");
        let _ = sum(y).into_scalar::<f32>();
    });
    let x_grad = x4.clone().require_grad();
    let fwd_bwd = time(reps, || {
        let y = m
            .forward_hooked(input(x_grad.clone()), true, &NoHook)
            .expect("forward");
        let g = sum(y).backward();
        drop(g);
        sync(device);
    });
    (fwd, (fwd_bwd - fwd).max(0.0))
}

/// `--mask NAME-unfused` (or `unfused` alone): the inner hook's channel factor multiplied into
/// the value after the node, and every node's output read, so the executor fuses nothing:
/// the step as it ran before BatchNorm took the mask and the ReLU into its kernel.
struct Unfused(Option<Box<dyn NodeHook>>);

impl NodeHook for Unfused {
    fn after_node(&self, index: usize, node: &lopper::graph::Node, value: Value) -> Value {
        match self
            .0
            .as_ref()
            .and_then(|h| h.channel_scale(index, node, value.is_autodiff()))
        {
            Some(m) => value.scale_channels(m),
            None => value,
        }
    }
    fn weight(
        &self,
        index: usize,
        node: &lopper::graph::Node,
        w: lopper::model::Weight,
    ) -> lopper::model::Weight {
        match &self.0 {
            Some(h) => h.weight(index, node, w),
            None => w,
        }
    }
}

/// The forward hook of `--mask`: DSA's soft channel masks (one per channel group, values in
/// [0.5, 1], with gradients) or PDP's soft weight masks at 90% on every conv and linear;
/// with `-unfused`, see [`Unfused`].
fn mask_hook(kind: &str, graph: &Graph, device: &Device) -> Option<Box<dyn NodeHook>> {
    use lopper::prune::pdp::{PdpMask, Temperature};
    use lopper::prune::weights::{Pattern, SoftWeightMasks, weight_layers};
    use lopper::prune::{groups::channel_groups, mask::ChannelMasks};
    if kind == "unfused" {
        return Some(Box::new(Unfused(None)));
    }
    if let Some(inner) = kind.strip_suffix("-unfused") {
        return Some(Box::new(Unfused(mask_hook(inner, graph, device))));
    }
    match kind {
        "none" => None,
        "channels" => {
            let groups = channel_groups(graph, &[]).expect("channel groups");
            let masks: Vec<Option<Tensor<1>>> = groups
                .iter()
                .map(|g| {
                    Some(
                        Tensor::<1>::random([g.channels], Distribution::Uniform(0.5, 1.0), device)
                            .require_grad(),
                    )
                })
                .collect();
            Some(Box::new(ChannelMasks::new(graph, &groups, &masks, device)))
        }
        "pdp" => {
            let layers = weight_layers(graph, &[], Pattern::Unstructured).expect("weight layers");
            let mut targets = vec![0.0; graph.nodes.len()];
            for l in &layers {
                targets[l.node] = 0.9;
            }
            let mask = PdpMask {
                pattern: Pattern::Unstructured,
                temperature: Temperature::Relative(1e-2),
                t_grad: false,
                targets,
            };
            Some(Box::new(SoftWeightMasks::new(graph, layers, mask)))
        }
        other => {
            eprintln!(
                "bench_step: --mask takes none, channels, pdp, unfused or channels-unfused, \
                 not '{other}'"
            );
            std::process::exit(2);
        }
    }
}

fn main() {
    let model_name: String = arg("--model", "resnet20".to_string());
    let batch = arg("--batch", 128);
    let steps: usize = arg("--steps", 20);
    let device_name: String = arg("--device", "cpu".to_string());
    let device = match lopper::device::training_device(&device_name) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("bench_step: {e}");
            std::process::exit(2);
        }
    };
    device.seed(0);
    let graph = lopper::zoo::build(&model_name, &[3, 32, 32], 10).expect("model");
    let mut model = Model::init(graph.clone(), 0, &device).expect("init");
    let cfg = TrainConfig {
        model: model_name.clone(),
        batch_size: batch,
        ..TrainConfig::default()
    };
    let mut optim = build_optimizer(&cfg);
    let data = random_data(batch * 4);
    let batcher = Batcher::new(
        Arc::new(data),
        batch,
        DatasetName::Cifar10.preprocess(),
        true,
    );
    let batches: Vec<_> = batcher.epoch(0, 0, 0).collect();

    // Full steps, data prepared ahead (as in training). With `--kernels both`, rounds with
    // lopper's kernels and with Burn's own convolution alternate, so both see the same machine.
    let kernels: String = arg("--kernels", "on".to_string());
    let modes: Vec<bool> = match kernels.as_str() {
        "on" => vec![true],
        "off" => vec![false],
        "both" => vec![true, false],
        other => {
            eprintln!("bench_step: --kernels takes on, off or both, not '{other}'");
            std::process::exit(2);
        }
    };
    // `--mask channels|pdp`: the masked step of DSA (soft channel masks with gradients) or of
    // PDP (soft weight masks at 90%) against the plain step, alternating, kernels as chosen.
    let mask_kind: String = arg("--mask", "none".to_string());
    let masked = mask_hook(&mask_kind, &graph, &device);
    if masked.is_some() && modes.len() > 1 {
        eprintln!("bench_step: --mask compares against the plain step; give --kernels on or off");
        std::process::exit(2);
    }
    // `--isa a,b`: the kernels capped at two vector levels, alternating.
    let isa_names: String = arg("--isa", String::new());
    let isas: Vec<Isa> = isa_names
        .split(',')
        .filter(|n| !n.is_empty())
        .map(|n| match Isa::parse(n) {
            Some(i) if i <= Isa::detected() => i,
            _ => {
                eprintln!(
                    "bench_step: --isa {n}: not a level this CPU has (baseline, avx2, avx512)"
                );
                std::process::exit(2);
            }
        })
        .collect();
    if isas.len() > 1 && (masked.is_some() || modes != [true]) {
        eprintln!(
            "bench_step: --isa compares levels of the plain step; give --kernels on and no --mask"
        );
        std::process::exit(2);
    }
    let top = isas.first().copied().unwrap_or(Isa::detected());
    // (kernels on, masked, vector level) per mode.
    let modes: Vec<(bool, bool, Isa)> = match &masked {
        Some(_) => vec![(modes[0], false, top), (modes[0], true, top)],
        None if isas.len() > 1 => isas.iter().map(|&i| (true, false, i)).collect(),
        None => modes.iter().map(|&k| (k, false, top)).collect(),
    };
    let rounds = if modes.len() > 1 { 2 } else { 1 };
    let per_round = steps.div_ceil(rounds);
    let mut phase: BTreeMap<((bool, bool, Isa), &str), f64> = BTreeMap::new();
    let mut timed: BTreeMap<(bool, bool, Isa), (f64, usize)> = BTreeMap::new();
    let warmup = 3;
    for _ in 0..rounds {
        for &on in &modes {
            lopper::kernels::set_enabled(on.0);
            let _cap = isa::Cap::new(on.2);
            for b in 0..warmup + per_round {
                let is_timed = b >= warmup;
                let batch = &batches[b % batches.len()];
                let t0 = Instant::now();
                let (x, _) = batch.to_tensors(&device);
                let logits = match (&masked, on.1) {
                    (Some(_), true) => {
                        // A fresh hook each step, as DSA builds its masks each step (a soft
                        // mask's graph is consumed by the step's backward).
                        let hook = mask_hook(&mask_kind, &graph, &device).expect("mask hook");
                        match model.forward_hooked(Value::Spatial(x), true, hook.as_ref()) {
                            Ok(Value::Flat(t)) => t,
                            _ => panic!("masked forward"),
                        }
                    }
                    _ => model.forward(x, true),
                };
                let loss = cross_entropy(logits, &batch.labels, 0.0, &device);
                let _ = loss.clone().into_scalar::<f32>();
                let t1 = Instant::now();
                let grads = GradientsParams::from_grads(loss.backward(), &model);
                sync(&device);
                let t2 = Instant::now();
                model = optim.step(0.05, model, grads);
                sync(&device);
                let t3 = Instant::now();
                if is_timed {
                    *phase.entry((on, "forward + loss")).or_default() += (t1 - t0).as_secs_f64();
                    *phase.entry((on, "backward")).or_default() += (t2 - t1).as_secs_f64();
                    *phase.entry((on, "optimiser")).or_default() += (t3 - t2).as_secs_f64();
                    let t = timed.entry(on).or_default();
                    t.0 += (t3 - t0).as_secs_f64();
                    t.1 += 1;
                }
            }
        }
    }
    lopper::kernels::set_enabled(modes[0].0);
    let step_of = |on: (bool, bool, Isa)| timed[&on].0 / timed[&on].1 as f64;
    let step_secs = step_of(modes[0]);
    let engine = match device_name.as_str() {
        "cpu" | "flex" => "burn flex",
        other => other,
    };
    let data_secs = time(5, || {
        let _ = batcher.epoch(7, 1, 0).next();
    });
    let label = |on: (bool, bool, Isa)| match on {
        (true, false, i) if isas.len() > 1 => format!("lopper kernels at {i:?}"),
        (true, false, _) => "lopper kernels".to_string(),
        (false, false, _) => "burn conv".to_string(),
        (k, true, _) => format!(
            "{} + {mask_kind} masks",
            if k { "lopper kernels" } else { "burn conv" }
        ),
    };
    println!(
        "{{\"engine\": \"lopper ({engine}, {})\", \"model\": \"{model_name}\", \"batch\": {batch}, \"steps\": {}, \"images_per_sec\": {:.2}, \"step_seconds\": {:.4}}}",
        label(modes[0]),
        timed[&modes[0]].1,
        batch as f64 / step_secs,
        step_secs
    );
    if masked.is_some() {
        let with = step_of(modes[1]);
        println!(
            "\nSide by side ({rounds} alternating rounds of {per_round} steps): plain {:.1} images/s, {} {:.1} images/s, masked step costs {:+.1}%",
            batch as f64 / step_secs,
            label(modes[1]),
            batch as f64 / with,
            100.0 * (with / step_secs - 1.0)
        );
    } else if isas.len() > 1 {
        let other = step_of(modes[1]);
        println!(
            "\nSide by side ({rounds} alternating rounds of {per_round} steps): {} {:.1} images/s, {} {:.1} images/s, speed-up {:.2}",
            label(modes[0]),
            batch as f64 / step_secs,
            label(modes[1]),
            batch as f64 / other,
            step_secs / other
        );
    } else if modes.len() > 1 {
        let other = step_of(modes[1]);
        println!(
            "\nSide by side ({rounds} alternating rounds of {per_round} steps): lopper kernels {:.1} images/s, burn conv {:.1} images/s, ratio {:.2}",
            batch as f64 / step_secs,
            batch as f64 / other,
            other / step_secs
        );
    }

    for &on in &modes {
        let n = timed[&on].1 as f64;
        println!(
            "\nStep phases, {} (mean seconds per step, each followed by a device sync):",
            label(on)
        );
        println!("| phase | seconds | share |\n|---|---|---|");
        let total: f64 = phase
            .iter()
            .filter(|((m, _), _)| *m == on)
            .map(|(_, v)| v)
            .sum::<f64>()
            / n;
        for ((_, k), v) in phase.iter().filter(|((m, _), _)| *m == on) {
            let v = v / n;
            println!("| {k} | {v:.4} | {:.1}% |", 100.0 * v / total);
        }
    }
    println!("| data (prepared on a worker thread, overlapped) | {data_secs:.4} | — |");

    // Per op kind: every node alone on its real input shape.
    let plain_reps = arg("--reps", 3);
    if plain_reps == 0 {
        return;
    }
    let mut fwd: BTreeMap<&str, f64> = BTreeMap::new();
    let mut bwd: BTreeMap<&str, f64> = BTreeMap::new();
    for (i, node) in graph.nodes.iter().enumerate().skip(1) {
        let (f, b) = node_times(&graph, i, batch, &device, plain_reps);
        *fwd.entry(bucket(&node.op)).or_default() += f;
        *bwd.entry(bucket(&node.op)).or_default() += b;
    }
    println!("\nPer op kind (each node run alone at batch {batch}; sums over the model's nodes):");
    println!("| op kind | forward s | backward s | share of sum |\n|---|---|---|---|");
    let sum: f64 = fwd.values().sum::<f64>() + bwd.values().sum::<f64>();
    for k in fwd.keys() {
        println!(
            "| {k} | {:.4} | {:.4} | {:.1}% |",
            fwd[k],
            bwd[k],
            100.0 * (fwd[k] + bwd[k]) / sum
        );
    }
    println!(
        "| sum of ops | {:.4} | {:.4} | (full step {step_secs:.4}) |",
        fwd.values().sum::<f64>(),
        bwd.values().sum::<f64>()
    );
}
