//! How fast DSA's keep ratios reach the ADMM optimum, without training: a simulation of the
//! ratio step on resnet20's MACs model at macs=0.5.
//!
//! `cargo run --release --example dsa_ratio_sim -- [--steps 17] [--ratio-lr 1] [--rho 1]`
//!
//! The loss's pull on each group's ratio is modelled as `dL/da_g = -s_g / a_g` (a boundary
//! that moves to more important channels as the group shrinks), with `s_g` the Fisher
//! signals logged by a real ResNet-20 run (`dsa_log.jsonl`, `loss_grad` times the ratio),
//! normalised to mean magnitude 1 as DSA does. The update is DSA's own: the linearised ADMM
//! step on `a`, the projection of `a + u` onto the budget (ramped over the first half of
//! the steps) and the dual update. The optimum is the same problem solved with 20000 small
//! steps. Prints both and the model loss `sum_g -s_g ln a_g` of each.

#[path = "args.rs"]
mod args;

use args::arg;
use lopper::prune::admm::{Admm, ratio_bounds};
use lopper::prune::{CostModel, Resource, ResourceModel, channel_groups};

/// Per-group signals of a ResNet-20 run (stem/stage 1, its three blocks, stage 2, its
/// blocks, stage 3, its blocks; the first and last groups are protected).
const SIGNAL: [f64; 14] = [
    0.0, 2.09, 0.46, 0.17, 0.31, 0.31, 2.3, 0.38, 0.35, 0.45, 4.46, 0.37, 0.32, 0.0,
];

fn main() {
    let steps: usize = arg("--steps", 17);
    let eta: f64 = arg("--ratio-lr", 1.0);
    let rho: f64 = arg("--rho", 1.0);
    let graph = lopper::zoo::build("resnet20", &[3, 32, 32], 10).expect("resnet20 builds");
    let groups = channel_groups(&graph, &[]).expect("resnet20 has channel groups");
    assert_eq!(groups.len(), SIGNAL.len(), "resnet20's groups changed");
    let cost = ResourceModel::new(Resource::Macs, &graph, &groups);
    let limit = 0.5 * cost.dense_cost();
    let (lower, upper) = ratio_bounds(&groups);
    let prunable: Vec<usize> = (0..groups.len())
        .filter(|&g| groups[g].is_prunable())
        .collect();
    let signal = |a: &[f64]| -> Vec<f64> {
        let raw: Vec<f64> = (0..a.len()).map(|g| -SIGNAL[g] / a[g]).collect();
        let mean = prunable.iter().map(|&g| raw[g].abs()).sum::<f64>() / prunable.len() as f64;
        raw.iter().map(|x| x / mean).collect()
    };
    let run = |eta: f64, steps: usize, ramp: bool| -> Vec<f64> {
        let mut a: Vec<f64> = groups
            .iter()
            .map(|g| if g.is_prunable() { 0.9933 } else { 1.0 })
            .collect();
        let mut admm = Admm::new(&a, lower.clone(), upper.clone(), rho, limit);
        let dense = cost.dense_cost();
        for t in 1..=steps {
            let grad = signal(&a);
            for &g in &prunable {
                let target = admm.z[g] - admm.u[g];
                let next = (a[g] / eta - grad[g] + rho * target) / (1.0 / eta + rho);
                a[g] = next.clamp(lower[g], 1.0 - 1e-6);
            }
            let share = if ramp {
                (t as f64 / (0.5 * steps as f64)).min(1.0)
            } else {
                1.0
            };
            admm.limit = dense - share * (dense - limit);
            admm.update(&a, &cost);
        }
        admm.z
    };
    let optimum = run(0.01, 20000, false);
    let reached = run(eta, steps, true);
    let show = |v: &[f64]| {
        v.iter()
            .map(|x| format!("{x:.2}"))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let loss = |v: &[f64]| {
        prunable
            .iter()
            .map(|&g| -SIGNAL[g] * v[g].ln())
            .sum::<f64>()
    };
    println!(
        "optimum            {}  loss {:.3}",
        show(&optimum),
        loss(&optimum)
    );
    println!(
        "{steps} steps at {eta:<5} {}  loss {:.3}",
        show(&reached),
        loss(&reached)
    );
}
