//! Is forward latency monotone in the channel widths? Times ResNet-style models with the
//! chosen groups cut to every width from 1/`--steps` to full, against the dense model, and
//! prints the latency of each as a share of the dense one: by default lopper's statistic
//! (`relative_latency`, alternating calls), with `--unpaired` as the dense time and the
//! variant's time taken apart (`model_latency_ms`, one block each, per round). Each row gives
//! the median, smallest and largest share over `--rounds`.
//!
//!   cargo run --release --example width_sweep -- [--model resnet20] [--batch 1] \
//!       [--steps 16] [--only conv1] [--rounds 5] [--reps 30] [--unpaired]
//!
//! `--only` keeps the groups whose producers' label contains the text (`conv1`: the
//! block-internal convolutions, the groups every allocation here cuts hardest); without it
//! every prunable group is cut. Each row cuts the chosen groups to round(f · channels),
//! at least 1, for f = k / steps.

#[path = "args.rs"]
mod args;

use args::arg;
use burn::tensor::Device;
use lopper::count::count;
use lopper::model::Model;
use lopper::prune::latency::model_latency_ms;
use lopper::prune::{Selection, channel_groups, prune_model};

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let name: String = arg("--model", "resnet20".to_string());
    let batch: usize = arg("--batch", 1);
    let steps: usize = arg("--steps", 16);
    let only: String = arg("--only", String::new());
    let rounds: usize = arg("--rounds", 5);
    let reps: usize = arg("--reps", 30);
    let dev = Device::flex();
    let graph = lopper::zoo::build(&name, &args::input_shape(&name), 10).expect("model");
    let groups = channel_groups(&graph, &[]).expect("groups");
    let chosen: Vec<usize> = groups
        .iter()
        .filter(|g| g.is_prunable() && g.label(&graph).contains(&only))
        .map(|g| g.id)
        .collect();
    let dense = Model::init(graph.clone(), 0, &dev).expect("init");
    let dense_macs = count(&graph).macs as f64;
    let variants: Vec<(usize, Model)> = (1..=steps)
        .map(|k| {
            let mut sel = Selection::all(&groups);
            for &g in &chosen {
                let c = groups[g].channels;
                let keep = ((c * k) as f64 / steps as f64).round().max(1.0) as usize;
                sel.keep[g] = Some((0..keep.min(c)).collect());
            }
            (
                k,
                prune_model(&dense, &groups, &sel, &dev).expect("surgery"),
            )
        })
        .collect();
    let mut shares = vec![vec![]; variants.len()];
    let mut dense_ms = vec![];
    let paired = !std::env::args().any(|a| a == "--unpaired");
    for _ in 0..rounds {
        let d = model_latency_ms(&dense, batch, reps, &dev);
        dense_ms.push(d);
        for (i, (_, m)) in variants.iter().enumerate() {
            shares[i].push(if paired {
                lopper::prune::latency::relative_latency(m, &dense, batch, reps, &dev)
            } else {
                model_latency_ms(m, batch, reps, &dev) / d
            });
        }
    }
    println!(
        "{name}, batch {batch}, cutting {} group(s){}: dense {:.3} ms (median of {rounds} rounds)\n",
        chosen.len(),
        if only.is_empty() {
            String::new()
        } else {
            format!(" whose label contains '{only}'")
        },
        median(dense_ms)
    );
    println!("| width | MACs kept | latency / dense (median) | min | max |\n|---|---|---|---|---|");
    for ((k, m), s) in variants.iter().zip(shares) {
        let lo = s.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = s.iter().copied().fold(0.0, f64::max);
        println!(
            "| {k}/{steps} | {:.3} | {:.3} | {lo:.3} | {hi:.3} |",
            count(&m.graph).macs as f64 / dense_macs,
            median(s)
        );
    }
}
