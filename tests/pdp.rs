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
