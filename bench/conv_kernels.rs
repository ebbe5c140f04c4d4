//! The hand-written convolution kernels (`lopper::kernels::conv`) against Burn's flex ops on
//! ResNet-20's convolutions at batch 128 (issue 26): forward, and forward plus both
//! gradients, side by side in one run, interleaved, median of `--reps` rounds.
//!
//! `cargo run --release --example conv_kernels -- [--batch 128] [--reps 5] [--isa avx512,avx2]`
//!
//! Prints one row per shape: Burn's forward and forward+backward times (autodiff, both
//! gradients read back to the host), the kernels' forward, input-gradient and weight-gradient
//! times, and the ratios (Burn over kernels). The kernels work on host slices already, so
//! Burn's times include reading its results back and the kernels' do not. `--isa` names the
//! vector levels to time the kernels at (`lopper::kernels::isa`; default the widest this CPU
//! has): with two, a second table gives each shape's forward + both gradients at each level
//! and the ratio of the second to the first, timed interleaved.

#[path = "args.rs"]
mod args;

use std::time::Instant;

use args::arg;
use burn::tensor::module::conv2d;
use burn::tensor::ops::ConvOptions;
use burn::tensor::{Device, Distribution, Tensor};
use lopper::kernels::conv::{ConvShape, conv2d as k_conv2d, conv2d_input_grad, conv2d_weight_grad};
use lopper::kernels::isa::{self, Isa};

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn host<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data().try_to_vec_as::<f32>().unwrap()
}

fn main() {
    let batch: usize = arg("--batch", 128);
    let reps: usize = arg("--reps", 5);
    let isa_names: String = arg("--isa", String::new());
    let isas: Vec<Isa> = if isa_names.is_empty() {
        vec![Isa::detected()]
    } else {
        isa_names
            .split(',')
            .map(|n| {
                let isa = Isa::parse(n).unwrap_or_else(|| panic!("--isa: unknown level {n}"));
                assert!(isa <= Isa::detected(), "--isa {n}: this CPU lacks it");
                isa
            })
            .collect()
    };
    let mut by_isa: Vec<(String, Vec<f64>)> = Vec::new();
    let dev = Device::flex();
    let ad = dev.clone().autodiff();
    // ResNet-20's convolutions: (c_in, size, c_out, kernel, stride, padding).
    let shapes = [
        (3, 32, 16, 3, 1, 1),
        (16, 32, 16, 3, 1, 1),
        (16, 32, 32, 3, 2, 1),
        (32, 16, 32, 3, 1, 1),
        (32, 16, 64, 3, 2, 1),
        (64, 8, 64, 3, 1, 1),
        (16, 32, 32, 1, 2, 0),
    ];
    println!(
        "| conv | burn fwd | burn fwd+bwd | kernel fwd | kernel dx | kernel dw | fwd ratio | fwd+bwd ratio |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    let (mut burn_total, mut ours_total) = (0.0, 0.0);
    for (ci, hw, co, k, s, p) in shapes {
        let shape = ConvShape {
            batch,
            c_in: ci,
            height: hw,
            width: hw,
            c_out: co,
            kernel: [k, k],
            stride: [s, s],
            padding: [p, p],
        };
        let [oh, ow] = shape.out_hw();
        let opts = || ConvOptions::new([s, s], [p, p], [1, 1], 1);
        let x = Tensor::<4>::random([batch, ci, hw, hw], Distribution::Normal(0.0, 1.0), &dev);
        let w = Tensor::<4>::random([co, ci, k, k], Distribution::Normal(0.0, 0.1), &dev);
        let r = Tensor::<4>::random([batch, co, oh, ow], Distribution::Normal(0.0, 1.0), &dev);
        let (xv, wv, rv) = (host(x.clone()), host(w.clone()), host(r.clone()));
        let (mut bf, mut bb, mut kf, mut kdx, mut kdw) = (vec![], vec![], vec![], vec![], vec![]);
        let mut per_isa = vec![vec![]; isas.len()];
        for _ in 0..reps + 1 {
            let t = Instant::now();
            let y = conv2d(x.clone(), w.clone(), None, opts());
            let _ = host(y);
            bf.push(t.elapsed().as_secs_f64());

            let xa = Tensor::<4>::from_data(x.to_data(), &ad).require_grad();
            let wa = Tensor::<4>::from_data(w.to_data(), &ad).require_grad();
            let ra = Tensor::<4>::from_data(r.to_data(), &ad);
            let t = Instant::now();
            let g = (conv2d(xa.clone(), wa.clone(), None, opts()) * ra)
                .sum()
                .backward();
            let _ = (host(xa.grad(&g).unwrap()), host(wa.grad(&g).unwrap()));
            bb.push(t.elapsed().as_secs_f64());

            for (i, &level) in isas.iter().enumerate() {
                isa::with_limit(level, || {
                    let t = Instant::now();
                    std::hint::black_box(k_conv2d(&xv, &wv, None, &shape));
                    let f = t.elapsed().as_secs_f64();
                    let t = Instant::now();
                    std::hint::black_box(conv2d_input_grad(&wv, &rv, &shape));
                    let dx = t.elapsed().as_secs_f64();
                    let t = Instant::now();
                    std::hint::black_box(conv2d_weight_grad(&xv, &rv, &shape));
                    let dw = t.elapsed().as_secs_f64();
                    per_isa[i].push(f + dx + dw);
                    if i == 0 {
                        kf.push(f);
                        kdx.push(dx);
                        kdw.push(dw);
                    }
                });
            }
        }
        // The first round warms caches and thread pools.
        let m = |v: Vec<f64>| median(v[1..].to_vec()) * 1e3;
        by_isa.push((
            format!("{ci}→{co} {k}×{k}/{s} at {hw}²"),
            per_isa.into_iter().map(m).collect(),
        ));
        let (bf, bb, kf, kdx, kdw) = (m(bf), m(bb), m(kf), m(kdx), m(kdw));
        let ours = kf + kdx + kdw;
        burn_total += bb;
        ours_total += ours;
        println!(
            "| {ci}→{co} {k}×{k}/{s} at {hw}² | {bf:.1} ms | {bb:.1} ms | {kf:.1} ms | {kdx:.1} ms | {kdw:.1} ms | {:.2} | {:.2} |",
            bf / kf,
            bb / ours
        );
    }
    println!(
        "| all | | {burn_total:.1} ms | | | {ours_total:.1} ms | | {:.2} |",
        burn_total / ours_total
    );
    if isas.len() > 1 {
        println!();
        let names: Vec<String> = isas.iter().map(|i| format!("{i:?}")).collect();
        println!(
            "| conv | {} | speed-up, {} over {} |",
            names.join(" | "),
            names[1],
            names[0]
        );
        println!("|---|{}---|", "---|".repeat(isas.len()));
        let mut totals = vec![0.0; isas.len()];
        for (name, times) in &by_isa {
            totals.iter_mut().zip(times).for_each(|(t, v)| *t += v);
            let cells: Vec<String> = times.iter().map(|t| format!("{t:.1} ms")).collect();
            println!(
                "| {name} | {} | {:.2} |",
                cells.join(" | "),
                times[0] / times[1]
            );
        }
        let cells: Vec<String> = totals.iter().map(|t| format!("{t:.1} ms")).collect();
        println!(
            "| all | {} | {:.2} |",
            cells.join(" | "),
            totals[0] / totals[1]
        );
    }
}
