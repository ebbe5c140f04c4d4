//! PDP's soft mask: thresholds from the weights' order statistics, the mask's value at the
//! threshold, hardening to exact counts, and its gradient.

use burn::tensor::{Device, Tensor, TensorData};
use lopper::model::{Layer, Model, NodeHook, Weight};
use lopper::prune::pdp::{PdpMask, Temperature, soft_mask, thresholds};
use lopper::prune::weights::{Pattern, SoftWeightMasks, kept_for, nm_mask, top_k, weight_layers};
use rand::{Rng, SeedableRng};

mod common;
use common::weight_layer;

fn weights(n: usize, seed: u64) -> Vec<f32> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect()
}

fn host<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data().try_to_vec::<f32>().unwrap()
}

/// `t` is the midpoint between the smallest kept and the largest pruned |w|: hardening at
/// m >= 0.5 (|w| >= t) keeps exactly the target count, the same weights as the magnitude
/// mask, and a weight at |w| = t has m = 0.5.
#[test]
fn the_unstructured_threshold_splits_the_layer_at_its_target() {
    let dev = Device::flex();
    for (n, s) in [(1000, 0.9), (777, 0.5), (64, 0.3)] {
        let l = weight_layer(&[n]);
        let w = weights(n, n as u64);
        let t2 = thresholds(&l, &w, Pattern::Unstructured, s).unwrap();
        assert_eq!(t2.len(), 1);
        let t = t2[0].sqrt();
        let hard: Vec<f32> = w.iter().map(|v| f32::from(v.abs() >= t)).collect();
        assert_eq!(hard.iter().sum::<f32>() as usize, kept_for(n, s), "n {n}");
        let scores: Vec<f64> = w.iter().map(|v| v.abs() as f64).collect();
        assert_eq!(hard, top_k(&scores, kept_for(n, s)));
        let wt = Tensor::<1>::from_data(TensorData::new(w.clone(), [n]), &dev);
        let m = host(soft_mask(&wt, &t2, Temperature::Relative(0.01)));
        for ((mv, h), v) in m.iter().zip(&hard).zip(&w) {
            assert_eq!(*mv >= 0.5, *h == 1.0, "w {v}, t {t}, m {mv}");
        }
        let at_t = Tensor::<1>::from_data(TensorData::new(vec![t, -t], [2]), &dev);
        for mv in host(soft_mask(&at_t, &t2, Temperature::Absolute(1e-4))) {
            assert!((mv - 0.5).abs() < 1e-4, "m(t) = {mv}");
        }
    }
    // Nothing to prune: no threshold; any positive target prunes at least one weight.
    assert!(
        thresholds(
            &weight_layer(&[10]),
            &weights(10, 1),
            Pattern::Unstructured,
            0.0
        )
        .is_none()
    );
    assert!(
        thresholds(
            &weight_layer(&[10]),
            &weights(10, 1),
            Pattern::Unstructured,
            0.01
        )
        .is_some()
    );
}

/// N:M: each group of M gets its own t, between its N-th and (N+1)-th largest |w|; hardening
/// keeps exactly N per group, the N:M magnitude mask.
#[test]
fn each_nm_group_gets_its_own_threshold() {
    let dev = Device::flex();
    for (shape, n, m) in [(vec![4, 8, 3, 3], 2, 4), (vec![12, 6], 1, 4)] {
        let l = weight_layer(&shape);
        let w = weights(l.numel(), 3);
        let t2 = thresholds(&l, &w, Pattern::NM { n, m }, 0.5).unwrap();
        assert_eq!(t2.len(), l.numel());
        let hard: Vec<f32> = w
            .iter()
            .zip(&t2)
            .map(|(v, t2)| f32::from(v * v >= *t2))
            .collect();
        let scores: Vec<f64> = w.iter().map(|v| v.abs() as f64).collect();
        assert_eq!(hard, nm_mask(&l, &scores, n, m), "{shape:?}");
        let dims: [usize; 2] = [l.numel(), 1];
        let wt = Tensor::<2>::from_data(TensorData::new(w.clone(), dims), &dev);
        let t2_2d: Vec<f32> = t2.clone();
        let soft = host(soft_mask(&wt, &t2_2d, Temperature::Relative(0.05)));
        for (s, h) in soft.iter().zip(&hard) {
            assert_eq!(*s >= 0.5, *h == 1.0);
        }
    }
}

/// Through the hook on a model's weight: the gradient of the soft weights' sum matches finite
/// differences at weights away from the cut (where t does not move: it carries no gradient).
#[test]
fn the_soft_masked_weight_has_the_chain_rule_gradient() {
    let dev = Device::flex();
    let g = lopper::zoo::build("mlp", &[1, 28, 28], 10).unwrap();
    let model = Model::init(g.clone(), 2, &dev).unwrap();
    let layers = weight_layers(&g, &[], Pattern::Unstructured).unwrap();
    let l = layers.iter().find(|l| l.is_masked()).unwrap().clone();
    let mut targets = vec![0.0; g.nodes.len()];
    targets[l.node] = 0.8;
    let temperature = Temperature::Relative(0.1);
    let hook = SoftWeightMasks::new(
        &g,
        layers,
        PdpMask {
            pattern: Pattern::Unstructured,
            temperature,
            t_grad: false,
            targets,
        },
    );
    let ad = dev.clone().autodiff();
    let trained = burn::module::Module::train(burn::module::Module::fork(model, &ad));
    let Some(Layer::Linear(p)) = &trained.layers[l.node] else {
        panic!("the MLP's layers are linear")
    };
    let w = host(p.weight.val());
    let t2 = thresholds(&l, &w, Pattern::Unstructured, 0.8).unwrap()[0];
    let Weight::Linear(soft) =
        hook.weight(l.node, &g.nodes[l.node], Weight::Linear(p.weight.val()))
    else {
        unreachable!()
    };
    let grads = soft.sum().backward();
    let got = host(p.weight.val().grad(&grads).unwrap());
    let tau = 0.1 * t2;
    let f = |w: f32| w / (1.0 + (-(w * w - t2) / tau).exp());
    let mut checked = 0;
    for (i, (&g, &w)) in got.iter().zip(&w).enumerate().step_by(61) {
        // Weights right at the cut move t when perturbed; the rest do not.
        if (w * w - t2).abs() < 0.05 * t2 {
            continue;
        }
        let e = 1e-3 * t2.sqrt();
        let fd = (f(w + e) - f(w - e)) / (2.0 * e);
        assert!(
            (g - fd).abs() < 2e-2 * (1.0 + fd.abs()),
            "weight {i} = {w}: autodiff {g}, finite differences {fd}"
        );
        checked += 1;
    }
    assert!(checked > 100, "{checked}");
}

/// `Σ c_i m(w_i) w_i` on the host, in f64, with `τ` held at `tau` and `t` either fixed or
/// taken from the boundary weights `a` and `b` (a perturbation that keeps their order).
fn soft_sum(w: &[f64], c: &[f64], t: Option<f64>, (a, b): (usize, usize), tau: f64) -> f64 {
    let t = t.unwrap_or_else(|| 0.5 * (w[a].abs() + w[b].abs()));
    w.iter()
        .zip(c)
        .map(|(w, c)| c * w / (1.0 + (-(w * w - t * t) / tau).exp()))
        .sum()
}

/// With gradient into `t`, the two weights around the cut get the gradient through every
/// other weight's mask too: autodiff matches finite differences at every weight, the
/// boundary ones included; with `t` detached it matches the fixed-`t` function instead.
#[test]
fn gradient_into_t_reaches_the_boundary_weights() {
    let n = 40;
    let l = weight_layer(&[n, 1]);
    let w = weights(n, 11);
    let c: Vec<f64> = weights(n, 12).iter().map(|&v| v as f64).collect();
    let t2 = thresholds(&l, &w, Pattern::Unstructured, 0.5).unwrap()[0] as f64;
    // The boundary pair: the smallest kept and the largest pruned |w|.
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&i, &j| w[i].abs().total_cmp(&w[j].abs()));
    let (b, a) = (order[n / 2 - 1], order[n / 2]);
    let tau = 0.1 * t2;
    let w64: Vec<f64> = w.iter().map(|&v| v as f64).collect();
    let mut boundary_grads = vec![];
    for t_grad in [false, true] {
        let mask = PdpMask {
            pattern: Pattern::Unstructured,
            temperature: Temperature::Relative(0.1),
            t_grad,
            targets: vec![0.5],
        };
        let ad = Device::flex().autodiff();
        let wt = Tensor::<2>::from_data(TensorData::new(w.clone(), [n, 1]), &ad).require_grad();
        let ct = Tensor::<2>::from_data(
            TensorData::new(c.iter().map(|&v| v as f32).collect(), [n, 1]),
            &ad,
        );
        let Weight::Linear(soft) =
            lopper::prune::weights::SoftMask::apply(&mask, &l, Weight::Linear(wt.clone()))
        else {
            unreachable!()
        };
        let grads = (soft * ct).sum().backward();
        let got = host(wt.grad(&grads).unwrap());
        let fixed_t = (!t_grad).then(|| t2.sqrt());
        for i in 0..n {
            let e = 1e-5;
            let (mut up, mut down) = (w64.clone(), w64.clone());
            up[i] += e;
            down[i] -= e;
            let fd = (soft_sum(&up, &c, fixed_t, (a, b), tau)
                - soft_sum(&down, &c, fixed_t, (a, b), tau))
                / (2.0 * e);
            let g = got[i] as f64;
            assert!(
                (g - fd).abs() < 1e-2 * (1.0 + fd.abs()),
                "t_grad {t_grad}, weight {i} (boundary {a}, {b}): autodiff {g}, finite differences {fd}"
            );
        }
        boundary_grads.push((got[a], got[b]));
    }
    // The setting matters where it should: at the boundary weights.
    let (off, on) = (boundary_grads[0], boundary_grads[1]);
    assert!(
        (off.0 - on.0).abs() > 1e-3 && (off.1 - on.1).abs() > 1e-3,
        "{off:?} {on:?}"
    );
}

/// The channel mode: per channel group, the filter norms' soft mask through the channel masks.
/// Hardening (m >= 0.5) keeps exactly the target width, the top channels by norm; the mask is
/// sigmoid((s² − t²)/τ) with t the midpoint of the norms around the cut; its gradient matches
/// finite differences, with and without gradient into t.
#[test]
fn the_channel_mask_cuts_each_group_at_its_width() {
    use lopper::prune::pdp::{PdpChannelMask, channel_norms};
    use lopper::prune::{channel_groups, mask::is_mask_point};
    let g = lopper::zoo::build("lenet5", &[1, 28, 28], 10).unwrap();
    let groups = channel_groups(&g, &[]).unwrap();
    let group = groups
        .iter()
        .find(|gr| gr.label(&g) == "conv2")
        .unwrap()
        .clone();
    let point = group
        .carriers
        .iter()
        .map(|&(n, _)| n)
        .find(|&n| is_mask_point(&g, n))
        .unwrap();
    let conv = group.members[0].node;
    let model = Model::init(g.clone(), 5, &Device::flex()).unwrap();
    let norms = channel_norms(&model, &group).unwrap();
    let channels = group.channels;
    let kept = 10;
    let mut sorted = norms.clone();
    sorted.sort_by(|a, b| b.total_cmp(a));
    let t = 0.5 * (sorted[kept - 1] + sorted[kept]) as f64;
    let tau = 0.1 * t * t;
    let ad = Device::flex().autodiff();
    for t_grad in [false, true] {
        let trained = burn::module::Module::train(burn::module::Module::fork(model.clone(), &ad));
        let mut mask = PdpChannelMask::new(&groups, Temperature::Relative(0.1), t_grad);
        mask.kept[group.id] = kept;
        mask.update(&trained, &groups).unwrap();
        let m = mask
            .channel_scale(point, &g.nodes[point], true)
            .expect("the mask point has a mask");
        let mv = host(m.clone());
        // Exactly the target width at m >= 0.5, the top channels by norm.
        let hard: Vec<bool> = mv.iter().map(|&v| v >= 0.5).collect();
        assert_eq!(hard.iter().filter(|&&h| h).count(), kept);
        for (h, s) in hard.iter().zip(&norms) {
            assert_eq!(*h, *s >= sorted[kept - 1], "norm {s}");
        }
        for (v, s) in mv.iter().zip(&norms) {
            let s = *s as f64;
            let want = 1.0 / (1.0 + (-(s * s - t * t) / tau).exp());
            assert!((*v as f64 - want).abs() < 1e-4, "m {v}, want {want}");
        }
        assert!(
            (mask.soft_counts[group.id] - mv.iter().map(|&v| v as f64).sum::<f64>()).abs() < 1e-3
        );
        // The gradient of Σ c_k m_k with respect to the filters.
        let c: Vec<f64> = weights(channels, 7).iter().map(|&v| v as f64).collect();
        let ct = Tensor::<1>::from_data(
            TensorData::new(c.iter().map(|&v| v as f32).collect(), [channels]),
            &ad,
        );
        let grads = (m * ct).sum().backward();
        let Some(Layer::Conv(p)) = &trained.layers[conv] else {
            panic!("conv2 is a convolution")
        };
        let got = host(p.weight.val().grad(&grads).unwrap());
        let w: Vec<f64> = host(p.weight.val()).iter().map(|&v| v as f64).collect();
        let per = w.len() / channels;
        let boundary = |k: usize| {
            let s = norms[k];
            s == sorted[kept - 1] || s == sorted[kept]
        };
        let f = |w: &[f64]| -> f64 {
            let s: Vec<f64> = (0..channels)
                .map(|k| {
                    w[k * per..(k + 1) * per]
                        .iter()
                        .map(|v| v * v)
                        .sum::<f64>()
                        .sqrt()
                })
                .collect();
            let t = if t_grad {
                let b: Vec<f64> = (0..channels)
                    .filter(|&k| boundary(k))
                    .map(|k| s[k])
                    .collect();
                0.5 * (b[0] + b[1])
            } else {
                t
            };
            (0..channels)
                .map(|k| c[k] / (1.0 + (-(s[k] * s[k] - t * t) / tau).exp()))
                .sum()
        };
        let mut checked = 0;
        for i in (0..w.len()).filter(|i| i % 13 == 0 || boundary(i / per)) {
            let e = 1e-4;
            let (mut up, mut down) = (w.clone(), w.clone());
            up[i] += e;
            down[i] -= e;
            let fd = (f(&up) - f(&down)) / (2.0 * e);
            let g = got[i] as f64;
            assert!(
                (g - fd).abs() < 2e-2 * (1.0 + fd.abs()),
                "t_grad {t_grad}, weight {i} (channel {}): autodiff {g}, finite differences {fd}",
                i / per
            );
            checked += 1;
        }
        assert!(checked > 200, "{checked}");
    }
}
