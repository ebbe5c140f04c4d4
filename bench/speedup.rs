//! Inference speed-up of pruned runs over their dense run, measured alone and interleaved.
//!
//!   cargo run --release --example speedup -- --dense bench/runs/resnet20-cifar10 \
//!       --pruned bench/runs/prune-l1-uniform,bench/runs/prune-taylor-global [--reps 30]
//!
//! Each round times the dense model and then every pruned one (median of `--reps` forward
//! passes each, eval mode), so slow phases of a shared machine hit all models alike; the
//! table reports the median over `--rounds` rounds.

#[path = "args.rs"]
mod args;

use lopper::count::count;
use lopper::prune::latency::model_latency_ms;
use lopper::train::RunDir;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let dense: String = args::arg("--dense", String::new());
    let pruned: String = args::arg("--pruned", String::new());
    let reps: usize = args::arg("--reps", 30);
    let rounds: usize = args::arg("--rounds", 5);
    let device = lopper::device::device("cpu").expect("the CPU backend");
    let load = |p: &str| {
        RunDir::new(p)
            .load_model(&device)
            .unwrap_or_else(|e| panic!("{p}: {e}"))
    };
    let d = load(&dense);
    let runs: Vec<(String, lopper::model::Model)> = pruned
        .split(',')
        .filter(|s| !s.is_empty())
        .map(|p| (p.to_string(), load(p)))
        .collect();
    println!("| run | MACs after/before | speed-up batch 1 | speed-up batch 64 |");
    println!("|---|---|---|---|");
    let dm = count(&d.graph).macs as f64;
    let mut rows = vec![];
    for (name, m) in &runs {
        let mut r1 = vec![];
        let mut r64 = vec![];
        for _ in 0..rounds {
            for (batch, out) in [(1, &mut r1), (64, &mut r64)] {
                let reps = if batch == 1 { reps } else { reps.div_ceil(5) };
                let base = model_latency_ms(&d, batch, reps, &device);
                let ours = model_latency_ms(m, batch, reps, &device);
                out.push(base / ours);
            }
        }
        rows.push(format!(
            "| {name} | {:.3} | {:.2}x | {:.2}x |",
            count(&m.graph).macs as f64 / dm,
            median(r1),
            median(r64)
        ));
    }
    for r in rows {
        println!("{r}");
    }
}
