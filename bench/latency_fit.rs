//! How well the latency model predicts measured latency of pruned networks.
//!
//! `cargo run --release --example latency_fit -- [--model resnet20] [--batch 1] [--variants 10] [--min-keep 0.3]`
//!
//! Profiles the model, then builds randomly pruned variants (every prunable group keeps a
//! random share of its channels between `--min-keep` and all), measures each one's forward latency (as lopper does:
//! against the dense model in alternating calls, times the profile's dense time) and compares
//! it with the latency model's prediction, with the floor measurement's scaling of the
//! per-node sum and without it (the plain sum plus a constant, as profiles before it had).
//! Prints a Markdown table and the mean absolute % error of each.

#[path = "args.rs"]
mod args;

use args::arg;
use burn::tensor::Device;
use lopper::model::Model;
use lopper::prune::latency::{LatencyModel, model_latency_ms, profile, relative_latency};
use lopper::prune::{Selection, channel_groups, keep_ratios, prune_model};
use rand::{Rng, SeedableRng, rngs::StdRng};

fn main() {
    let name: String = arg("--model", "resnet20".to_string());
    let batch: usize = arg("--batch", 1);
    let variants: usize = arg("--variants", 10);
    let reps: usize = arg("--reps", 31);
    let min_keep: f64 = arg("--min-keep", 0.3);
    let dev = Device::flex();
    let graph = lopper::zoo::build(&name, &args::input_shape(&name), 10).expect("model");
    let groups = channel_groups(&graph, &[]).expect("groups");
    let p = profile(&graph, &dev, "cpu", batch, 9, |_, _| {}).expect("profile");
    let lm = LatencyModel::new(&p, &graph, &groups).expect("latency model");
    let mut unscaled_profile = p.clone();
    unscaled_profile.floor_ms = None;
    let plain = LatencyModel::new(&unscaled_profile, &graph, &groups).expect("latency model");
    let dense = Model::init(graph.clone(), 0, &dev).expect("init");
    let mut rng = StdRng::seed_from_u64(2026);
    println!(
        "{name}, batch {batch}: dense measured {:.3} ms, profile says {:.3} ms; floor {:.3} ms; node-sum scale {:.3}\n",
        model_latency_ms(&dense, batch, reps, &dev),
        p.dense_ms,
        p.floor_ms.unwrap_or(f64::NAN),
        lm.scale()
    );
    println!(
        "| variant | MACs kept | predicted ms | measured ms | error | unscaled prediction | error |\n|---|---|---|---|---|---|---|"
    );
    let mut errors = vec![];
    let mut plain_errors = vec![];
    for v in 0..variants {
        let mut sel = Selection::all(&groups);
        for g in groups.iter().filter(|g| g.is_prunable()) {
            let keep =
                ((g.channels as f64 * rng.random_range(min_keep..1.0)).round() as usize).max(1);
            let mut idx: Vec<usize> = (0..g.channels).collect();
            for i in (1..idx.len()).rev() {
                idx.swap(i, rng.random_range(0..=i));
            }
            let mut k = idx[..keep].to_vec();
            k.sort_unstable();
            sel.keep[g.id] = Some(k);
        }
        let small = prune_model(&dense, &groups, &sel, &dev).expect("surgery");
        let ratios = keep_ratios(&groups, &sel);
        let predicted = lm.eval(&ratios);
        let unscaled = plain.eval(&ratios);
        let measured = p.dense_ms * relative_latency(&small, &dense, batch, reps, &dev);
        let err = (predicted - measured).abs() / measured;
        let plain_err = (unscaled - measured).abs() / measured;
        errors.push(err);
        plain_errors.push(plain_err);
        let macs = lopper::count::count(&small.graph).macs as f64
            / lopper::count::count(&graph).macs as f64;
        println!(
            "| {} | {:.2} | {predicted:.3} | {measured:.3} | {:.1}% | {unscaled:.3} | {:.1}% |",
            v + 1,
            macs,
            100.0 * err,
            100.0 * plain_err
        );
    }
    let mape = |e: &[f64]| 100.0 * e.iter().sum::<f64>() / e.len() as f64;
    println!(
        "\nmean absolute % error over {variants} variants: {:.1}% (unscaled: {:.1}%)",
        mape(&errors),
        mape(&plain_errors)
    );
}
