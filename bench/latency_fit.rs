//! How well the latency model predicts measured latency of pruned networks.
//!
//! `cargo run --release --example latency_fit -- [--model resnet20] [--batch 1] [--variants 10]`
//!
//! Profiles the model, then builds randomly pruned variants (every prunable group keeps a
//! random 30–100% of its channels), measures each one's forward latency and compares it with
//! the latency model's prediction. Prints a Markdown table and the mean absolute % error.

#[path = "args.rs"]
mod args;

use args::arg;
use burn::tensor::Device;
use lopper::model::Model;
use lopper::prune::latency::{LatencyModel, model_latency_ms, profile};
use lopper::prune::{Selection, channel_groups, keep_ratios, prune_model};
use rand::{Rng, SeedableRng, rngs::StdRng};

fn main() {
    let name: String = arg("--model", "resnet20".to_string());
    let batch: usize = arg("--batch", 1);
    let variants: usize = arg("--variants", 10);
    let reps: usize = arg("--reps", 31);
    let dev = Device::flex();
    let graph = lopper::zoo::build(&name, &[3, 32, 32], 10).expect("model");
    let groups = channel_groups(&graph, &[]).expect("groups");
    let p = profile(&graph, &dev, "cpu", batch, 9, |_, _| {}).expect("profile");
    let lm = LatencyModel::new(&p, &graph, &groups).expect("latency model");
    let dense = Model::init(graph.clone(), 0, &dev).expect("init");
    let mut rng = StdRng::seed_from_u64(2026);
    println!(
        "{name}, batch {batch}: dense measured {:.3} ms, profile says {:.3} ms\n",
        model_latency_ms(&dense, batch, reps, &dev),
        p.dense_ms
    );
    println!("| variant | MACs kept | predicted ms | measured ms | error |\n|---|---|---|---|---|");
    let mut errors = vec![];
    for v in 0..variants {
        let mut sel = Selection::all(&groups);
        for g in groups.iter().filter(|g| g.is_prunable()) {
            let keep = ((g.channels as f64 * rng.random_range(0.3..1.0)).round() as usize).max(1);
            let mut idx: Vec<usize> = (0..g.channels).collect();
            for i in (1..idx.len()).rev() {
                idx.swap(i, rng.random_range(0..=i));
            }
            let mut k = idx[..keep].to_vec();
            k.sort_unstable();
            sel.keep[g.id] = Some(k);
        }
        let small = prune_model(&dense, &groups, &sel, &dev).expect("surgery");
        let predicted = lm.eval(&keep_ratios(&groups, &sel));
        let measured = model_latency_ms(&small, batch, reps, &dev);
        let err = (predicted - measured).abs() / measured;
        errors.push(err);
        let macs = lopper::count::count(&small.graph).macs as f64
            / lopper::count::count(&graph).macs as f64;
        println!(
            "| {} | {:.2} | {predicted:.3} | {measured:.3} | {:.1}% |",
            v + 1,
            macs,
            100.0 * err
        );
    }
    let mape = errors.iter().sum::<f64>() / errors.len() as f64;
    println!(
        "\nmean absolute % error over {variants} variants: {:.1}%",
        100.0 * mape
    );
}
