//! Weight masks: patterns, layer densities, exact budgets, and masked weights that stay zero
//! through training (gradients and optimiser moments masked, not re-zeroed after the step).

use std::sync::Arc;

use burn::tensor::Device;
use lopper::data::{Batcher, DatasetName};
use lopper::model::Model;
use lopper::prune::weights::{
    DenseReason, Density, Pattern, WeightBudget, WeightLayer, WeightMasks, erk_densities, kept_for,
    measure, nm_mask, solve_masks, weight_layers, weight_values,
};
use lopper::train::{OptimizerState, StepInfo, TrainConfig, TrainData, TrainHook, Trainer};
use rand::{Rng, SeedableRng};

mod common;
use common::{synthetic_mnist, weight_layer};

fn random_scores(n: usize, seed: u64) -> Vec<f64> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    (0..n).map(|_| rng.random::<f64>()).collect()
}

/// Every group of M consecutive input channels (at each output channel and kernel position,
/// or each output of a linear layer) keeps exactly its N highest scores.
#[test]
fn nm_masks_keep_the_n_best_of_every_group_of_m() {
    for (shape, n, m) in [
        (vec![3, 8, 3, 3], 2, 4),
        (vec![5, 12, 1, 1], 1, 4),
        (vec![8, 5], 2, 4),
        (vec![16, 3], 3, 8),
    ] {
        let l = weight_layer(&shape);
        let scores = random_scores(l.numel(), 7);
        let mask = nm_mask(&l, &scores, n, m);
        let mut groups = 0;
        let mut covered = vec![0; l.numel()];
        l.for_each_group(m, |idx| {
            groups += 1;
            let kept: Vec<usize> = idx.iter().copied().filter(|&i| mask[i] == 1.0).collect();
            assert_eq!(kept.len(), n, "{shape:?}");
            let worst_kept = kept.iter().map(|&i| scores[i]).fold(f64::MAX, f64::min);
            for &i in idx {
                covered[i] += 1;
                if mask[i] == 0.0 {
                    assert!(scores[i] < worst_kept, "{shape:?}: a better weight was cut");
                }
            }
        });
        assert_eq!(groups * m, l.numel());
        assert!(covered.iter().all(|&c| c == 1), "groups tile the weight");
    }
    // The groups run along the input channels: for a conv [out, in, kh, kw], the first group
    // is input channels 0..4 of output 0 at kernel position (0, 0).
    let l = weight_layer(&[2, 4, 3, 3]);
    let mut first = None;
    l.for_each_group(4, |idx| {
        first.get_or_insert(idx.to_vec());
    });
    assert_eq!(first.unwrap(), vec![0, 9, 18, 27]);
}

/// A sparsity budget holds exactly for every allocation: the kept weights are
/// `kept_for(total, S)`, whatever the rounding per layer.
#[test]
fn sparsity_budgets_hold_exactly_for_every_allocation() {
    let layers = [
        weight_layer(&[16, 3, 3, 3]),
        weight_layer(&[32, 16, 3, 3]),
        weight_layer(&[120, 7]),
        weight_layer(&[10, 10]),
    ];
    let refs: Vec<&WeightLayer> = layers.iter().collect();
    let scores: Vec<Vec<f64>> = layers
        .iter()
        .enumerate()
        .map(|(i, l)| random_scores(l.numel(), i as u64))
        .collect();
    let total: usize = layers.iter().map(|l| l.numel()).sum();
    for s in [0.5, 0.9, 0.97, 0.123] {
        for density in [Density::Uniform, Density::Global, Density::Erk] {
            let masks = solve_masks(&refs, &scores, WeightBudget::Sparsity(s), density);
            let kept: f32 = masks.iter().flatten().sum();
            assert_eq!(kept as usize, kept_for(total, s), "{density} at {s}");
            assert!(1.0 - kept as f64 / total as f64 >= s);
        }
    }
    // Global keeps the largest scores of all layers: no cut score beats a kept one.
    let masks = solve_masks(&refs, &scores, WeightBudget::Sparsity(0.8), Density::Global);
    let (mut worst_kept, mut best_cut) = (f64::MAX, f64::MIN);
    for (m, s) in masks.iter().zip(&scores) {
        for (&k, &v) in m.iter().zip(s) {
            if k == 1.0 {
                worst_kept = worst_kept.min(v);
            } else {
                best_cut = best_cut.max(v);
            }
        }
    }
    assert!(best_cut <= worst_kept);
}

/// ERK: density proportional to sum(dims)/prod(dims), total as asked, layers that would pass
/// 1 made dense and the rest solved again.
#[test]
fn erk_densities_follow_the_formula_and_clamp() {
    let shapes = vec![vec![16, 3, 3, 3], vec![32, 16, 3, 3], vec![10, 10]];
    let n: Vec<f64> = shapes
        .iter()
        .map(|s| s.iter().product::<usize>() as f64)
        .collect();
    let total: f64 = n.iter().sum();
    let d = erk_densities(&shapes, 0.2);
    let kept: f64 = d.iter().zip(&n).map(|(d, n)| d * n).sum();
    assert!((kept - 0.2 * total).abs() < 1e-6 * total, "{d:?}");
    // Unclamped layers keep the ratio of their ERK factors.
    let raw = |s: &Vec<usize>| s.iter().sum::<usize>() as f64 / s.iter().product::<usize>() as f64;
    let unclamped: Vec<usize> = (0..3).filter(|&l| d[l] < 1.0).collect();
    assert!(unclamped.len() >= 2, "{d:?}");
    let (a, b) = (unclamped[0], unclamped[1]);
    assert!((d[a] / d[b] - raw(&shapes[a]) / raw(&shapes[b])).abs() < 1e-9);
    // At a high density the small layers clamp at 1 and the rest take up the difference.
    let d = erk_densities(&shapes, 0.8);
    assert!(d.iter().all(|&x| x <= 1.0) && d.contains(&1.0), "{d:?}");
    let kept: f64 = d.iter().zip(&n).map(|(d, n)| d * n).sum();
    assert!((kept - 0.8 * total).abs() < 1e-6 * total, "{d:?}");
}

/// The first layer and the classifier stay dense, so do protected layers and, for N:M, layers
/// whose input channels are not a multiple of M; an unknown name is an error.
#[test]
fn which_layers_are_masked() {
    let g = lopper::zoo::build("lenet5", &[1, 28, 28], 10).unwrap();
    let reasons = |protect: &[String], p: Pattern| -> Vec<(String, Option<DenseReason>)> {
        weight_layers(&g, protect, p)
            .unwrap()
            .into_iter()
            .map(|l| (l.name, l.dense))
            .collect()
    };
    let nm = Pattern::NM { n: 2, m: 4 };
    assert_eq!(
        reasons(&[], nm),
        vec![
            ("conv1".into(), Some(DenseReason::FirstLayer)),
            ("conv2".into(), Some(DenseReason::NotMultipleOfM)), // 6 input channels
            ("fc1".into(), None),
            ("fc2".into(), None),
            ("fc3".into(), Some(DenseReason::Classifier)),
        ]
    );
    let r = reasons(&["fc1".into()], Pattern::Unstructured);
    assert_eq!(r[1].1, None);
    assert_eq!(r[2].1, Some(DenseReason::Protected));
    let e = weight_layers(&g, &["fc9".into()], nm)
        .unwrap_err()
        .to_string();
    assert!(e.contains("fc9"), "{e}");
}

fn data() -> TrainData {
    let pre = DatasetName::Mnist.preprocess();
    TrainData {
        train: Batcher::new(Arc::new(synthetic_mnist(96, 1)), 16, pre.clone(), true),
        val: None,
        test: None,
    }
}

/// Changes the masks at one step, with the optimiser's moments already non-zero everywhere
/// (a GMP update), and keeps them after.
struct MaskAt {
    masks: WeightMasks,
    at: usize,
    budget: WeightBudget,
}

impl TrainHook for MaskAt {
    fn node_hook(&self) -> Option<&dyn lopper::model::NodeHook> {
        Some(&self.masks)
    }
    fn after_step(
        &mut self,
        info: &StepInfo,
        model: Model,
        optim: &mut OptimizerState,
    ) -> lopper::Result<Model> {
        if info.global_step != self.at {
            return Ok(model);
        }
        let host = burn::module::Module::valid(&model);
        let masked: Vec<&WeightLayer> = self
            .masks
            .layers()
            .iter()
            .filter(|l| l.is_masked())
            .collect();
        let scores = masked
            .iter()
            .map(|l| weight_values(&host, l).map(|v| v.iter().map(|x| x.abs() as f64).collect()))
            .collect::<lopper::Result<Vec<_>>>()?;
        let solved = solve_masks(&masked, &scores, self.budget, Density::Global);
        self.masks.set(solved)?;
        self.masks.apply(model, Some(optim))
    }
}

/// A masked weight stays exactly zero through training with momentum and weight decay: the
/// mask multiplies it in the forward pass (so its gradient is zero) and its moments were
/// zeroed when the mask changed. Without zeroing the moments, momentum moves it again.
#[test]
fn masked_weights_stay_exactly_zero_through_training() {
    let dev = Device::flex();
    let g = lopper::zoo::build("lenet5", &[1, 28, 28], 10).unwrap();
    let model = Model::init(g.clone(), 3, &dev).unwrap();
    let layers = weight_layers(&g, &[], Pattern::Unstructured).unwrap();
    let cfg = TrainConfig {
        model: "lenet5".into(),
        dataset: DatasetName::Mnist,
        epochs: 2,
        batch_size: 16,
        lr: 0.05,
        momentum: 0.9,
        weight_decay: 5e-4,
        seed: 5,
        ..TrainConfig::default()
    };
    let budget = WeightBudget::Sparsity(0.8);
    let mut hook = MaskAt {
        masks: WeightMasks::new(&g, layers.clone(), &dev),
        at: 3,
        budget,
    };
    let before = model.clone();
    let out = Trainer::new(cfg, None)
        .unwrap()
        .fit(model, &data(), &mut [&mut hook])
        .unwrap();
    let trained = burn::module::Module::valid(&out.model);
    let report = measure(&trained, &layers, Pattern::Unstructured).unwrap();
    assert!(report.meets(budget), "{}", report.markdown());
    assert_eq!(
        report.prunable_nonzero as usize,
        kept_for(report.prunable as usize, 0.8)
    );
    // The steps after the mask change moved the kept weights (so training ran).
    let moved = layers
        .iter()
        .filter(|l| l.is_masked())
        .any(|l| weight_values(&trained, l).unwrap() != weight_values(&before, l).unwrap());
    assert!(moved);
    // The hook's masks are exactly the zeros.
    for (i, l) in layers.iter().enumerate() {
        if let Some(mask) = hook.masks.mask(i) {
            let w = weight_values(&trained, l).unwrap();
            for (m, v) in mask.iter().zip(&w) {
                assert_eq!(*m == 0.0, *v == 0.0, "{}", l.name);
            }
        }
    }
}

/// N:M through training: every group of an N:M-masked layer keeps at most N non-zeros, and
/// the masks restored from the zeros of a pruned model are the masks it was pruned with.
#[test]
fn nm_masks_hold_through_training_and_read_back_from_zeros() {
    let dev = Device::flex();
    let g = lopper::zoo::build("lenet5", &[1, 28, 28], 10).unwrap();
    let model = Model::init(g.clone(), 4, &dev).unwrap();
    let nm = WeightBudget::NM { n: 2, m: 4 };
    let layers = weight_layers(&g, &[], nm.pattern()).unwrap();
    let mut hook = MaskAt {
        masks: WeightMasks::new(&g, layers.clone(), &dev),
        at: 0,
        budget: nm,
    };
    let cfg = TrainConfig {
        model: "lenet5".into(),
        dataset: DatasetName::Mnist,
        epochs: 1,
        batch_size: 16,
        lr: 0.05,
        seed: 5,
        ..TrainConfig::default()
    };
    let out = Trainer::new(cfg, None)
        .unwrap()
        .fit(model, &data(), &mut [&mut hook])
        .unwrap();
    let trained = burn::module::Module::valid(&out.model);
    let r = measure(&trained, &layers, nm.pattern()).unwrap();
    assert_eq!(r.max_nonzero_per_group, Some(2));
    assert!(
        r.meets(nm) && (r.sparsity - 0.5).abs() < 1e-12,
        "{}",
        r.markdown()
    );
    let back = WeightMasks::from_zeros(&trained, layers.clone(), &dev).unwrap();
    for i in 0..layers.len() {
        assert_eq!(back.mask(i), hook.masks.mask(i));
    }
}

/// Budgets parse to one meaning; bad ones are one error naming the rule.
#[test]
fn weight_budgets_parse() {
    assert_eq!(
        "sparsity=0.9".parse::<WeightBudget>().unwrap(),
        WeightBudget::Sparsity(0.9)
    );
    assert_eq!(
        "nm=2:4".parse::<WeightBudget>().unwrap(),
        WeightBudget::NM { n: 2, m: 4 }
    );
    for bad in [
        "sparsity=1",
        "sparsity=0",
        "sparsity=90%",
        "nm=4:4",
        "nm=0:4",
        "nm=2",
        "nm=a:b",
    ] {
        assert!(bad.parse::<WeightBudget>().is_err(), "{bad}");
    }
    assert!(matches!(
        "nm=1:4"
            .parse::<lopper::prune::allocation::Target>()
            .unwrap(),
        lopper::prune::allocation::Target::Weights(_)
    ));
    assert!(matches!(
        "macs=0.5"
            .parse::<lopper::prune::allocation::Target>()
            .unwrap(),
        lopper::prune::allocation::Target::Channels(_)
    ));
}

/// A soft mask (here `sigmoid((w² − t²)/τ) w` with a fixed t, PDP's form) acts in the forward
/// pass exactly as weights replaced by their masked values would, leaves unmasked layers alone,
/// and passes its gradient into the stored weight: d/dw [m(w) w] = m + w m' , checked against
/// the chain rule on one weight.
#[test]
fn soft_masks_act_in_the_forward_pass_and_pass_gradients() {
    use burn::tensor::activation::sigmoid;
    use burn::tensor::{Tensor, TensorData};
    use lopper::model::{Layer, NodeHook, Value, Weight};
    use lopper::prune::weights::{SoftMask, SoftWeightMasks};

    struct Pdp {
        t: f32,
        tau: f32,
    }
    impl SoftMask for Pdp {
        fn apply(&self, _layer: &WeightLayer, weight: Weight) -> Weight {
            let (t2, tau) = (self.t * self.t, self.tau);
            match weight {
                Weight::Conv(w) => Weight::Conv(
                    sigmoid((w.clone() * w.clone()).sub_scalar(t2).div_scalar(tau)) * w,
                ),
                Weight::Linear(w) => Weight::Linear(
                    sigmoid((w.clone() * w.clone()).sub_scalar(t2).div_scalar(tau)) * w,
                ),
            }
        }
    }
    let dev = Device::flex();
    let g = lopper::zoo::build("mlp", &[1, 28, 28], 10).unwrap();
    let model = Model::init(g.clone(), 9, &dev).unwrap();
    let layers = weight_layers(&g, &[], Pattern::Unstructured).unwrap();
    let pdp = Pdp { t: 0.03, tau: 1e-3 };
    let soft = |w: f32| w / (1.0 + (-(w * w - pdp.t * pdp.t) / pdp.tau).exp());
    let hook = SoftWeightMasks::new(&g, layers.clone(), Pdp { t: 0.03, tau: 1e-3 });
    let masked: Vec<&WeightLayer> = layers.iter().filter(|l| l.is_masked()).collect();
    assert!(!masked.is_empty());
    // The same model with m(w) w stored in the masked layers.
    let tensors = model.named_tensors();
    let replaced = Model::from_tensors(g.clone(), &dev, |node, name, _| {
        let full = format!("{}.{name}", node.name);
        let t = tensors.iter().find(|(n, _)| *n == full).unwrap().1.clone();
        if name == "weight" && masked.iter().any(|l| l.name == node.name) {
            let v: Vec<f32> = t
                .try_to_vec::<f32>()
                .unwrap()
                .into_iter()
                .map(soft)
                .collect();
            Ok(TensorData::new(v, t.shape().clone()))
        } else {
            Ok(t)
        }
    })
    .unwrap();
    let x = Tensor::<4>::random([4, 1, 28, 28], burn::tensor::Distribution::Default, &dev);
    let out = |m: &Model, h: &dyn lopper::model::NodeHook| match m
        .forward_hooked(Value::Spatial(x.clone()), false, h)
        .unwrap()
    {
        Value::Flat(t) => t.into_data().try_to_vec::<f32>().unwrap(),
        _ => unreachable!(),
    };
    let (a, b) = (out(&model, &hook), out(&replaced, &lopper::model::NoHook));
    for (a, b) in a.iter().zip(&b) {
        assert!((a - b).abs() < 1e-5 * (1.0 + b.abs()), "{a} vs {b}");
    }
    // The gradient reaches the stored weight: for the sum of one layer's soft weights it is
    // m(w) + w m'(w) elementwise.
    let ad = dev.clone().autodiff();
    let trained = burn::module::Module::train(burn::module::Module::fork(model, &ad));
    let l = masked[0];
    let Some(Layer::Linear(p)) = &trained.layers[l.node] else {
        panic!("the MLP's layers are linear")
    };
    let Weight::Linear(w_soft) =
        hook.weight(l.node, &g.nodes[l.node], Weight::Linear(p.weight.val()))
    else {
        unreachable!()
    };
    let grads = w_soft.sum().backward();
    let got = p
        .weight
        .val()
        .grad(&grads)
        .unwrap()
        .to_data()
        .try_to_vec::<f32>()
        .unwrap();
    let w = p.weight.val().to_data().try_to_vec::<f32>().unwrap();
    for (g, &w) in got.iter().zip(&w).step_by(97) {
        let e = 1e-3 * pdp.t;
        let fd = (soft(w + e) - soft(w - e)) / (2.0 * e);
        assert!(
            (g - fd).abs() < 2e-2 * (1.0 + fd.abs()),
            "w {w}: autodiff {g}, finite differences {fd}"
        );
    }
}

/// The masks survive a checkpoint: the hook state (one bit per weight) restores them exactly
/// into a fresh hook, and a state for another model is refused.
#[test]
fn weight_masks_round_trip_through_the_checkpoint_state() {
    let dev = Device::flex();
    let g = lopper::zoo::build("lenet5", &[1, 28, 28], 10).unwrap();
    let layers = weight_layers(&g, &[], Pattern::Unstructured).unwrap();
    let mut masks = WeightMasks::new(&g, layers.clone(), &dev);
    let masked: Vec<&WeightLayer> = layers.iter().filter(|l| l.is_masked()).collect();
    let scores: Vec<Vec<f64>> = masked
        .iter()
        .enumerate()
        .map(|(i, l)| random_scores(l.numel(), 40 + i as u64))
        .collect();
    masks
        .set(solve_masks(
            &masked,
            &scores,
            WeightBudget::Sparsity(0.7),
            Density::Erk,
        ))
        .unwrap();
    let state = masks.state().unwrap().unwrap();
    let mut fresh = WeightMasks::new(&g, layers.clone(), &dev);
    fresh.restore(state.clone()).unwrap();
    for i in 0..layers.len() {
        assert_eq!(fresh.mask(i), masks.mask(i));
    }
    let other = lopper::zoo::build("mlp", &[1, 28, 28], 10).unwrap();
    let other_layers = weight_layers(&other, &[], Pattern::Unstructured).unwrap();
    let mut wrong = WeightMasks::new(&other, other_layers, &dev);
    assert!(wrong.restore(state).is_err());
}

/// RigL through training: each layer keeps its number of active weights while their positions
/// move (dropped by magnitude, grown by the dense gradient), the swapped share falls update by
/// update, and every weight outside the final masks is exactly zero.
#[test]
fn rigl_moves_the_masks_and_keeps_the_counts() {
    use lopper::prune::methods::rigl::RiglHook;
    use lopper::prune::weights::{Density, solve_masks};
    let dev = Device::flex();
    let g = lopper::zoo::build("lenet5", &[1, 28, 28], 10).unwrap();
    let model = Model::init(g.clone(), 6, &dev).unwrap();
    let layers = weight_layers(&g, &[], Pattern::Unstructured).unwrap();
    let budget = WeightBudget::Sparsity(0.8);
    let mut masks = WeightMasks::new(&g, layers.clone(), &dev);
    let masked: Vec<_> = layers.iter().filter(|l| l.is_masked()).collect();
    let scores: Vec<Vec<f64>> = masked
        .iter()
        .map(|l| {
            weight_values(&model, l)
                .unwrap()
                .iter()
                .map(|v| v.abs() as f64)
                .collect()
        })
        .collect();
    masks
        .set(solve_masks(&masked, &scores, budget, Density::Erk))
        .unwrap();
    let initial: Vec<Option<Vec<f32>>> = (0..layers.len())
        .map(|i| masks.mask(i).map(|m| m.to_vec()))
        .collect();
    let start = masks.apply(model, None).unwrap();
    // 96 images in batches of 16: 6 steps an epoch, 24 in all; updates every 3 steps until
    // step 18.
    let cfg = TrainConfig {
        model: "lenet5".into(),
        dataset: DatasetName::Mnist,
        epochs: 4,
        batch_size: 16,
        lr: 0.05,
        momentum: 0.9,
        weight_decay: 5e-4,
        seed: 5,
        ..TrainConfig::default()
    };
    let mut hook = RiglHook::new(masks, 0.3, 3, 18);
    let out = Trainer::new(cfg, None)
        .unwrap()
        .fit(start, &data(), &mut [&mut hook])
        .unwrap();
    let trained = burn::module::Module::valid(&out.model);
    let log = hook.log();
    assert_eq!(
        log.iter().map(|u| u.step).collect::<Vec<_>>(),
        vec![3, 6, 9, 12, 15]
    );
    assert!(
        log.windows(2).all(|w| w[0].swapped >= w[1].swapped),
        "{log:?}"
    );
    // Growth follows the dense gradient: the pruned weights' gradient is not masked away,
    // so weights that were inactive before the update are grown, not only those just dropped
    // (the only inactive ones a masked gradient would reach).
    assert!(
        log[0].swapped > 0
            && log[0].grown_gradient > 0.0
            && log[0].regrown_just_dropped < log[0].swapped / 2,
        "{log:?}"
    );
    let mut moved = false;
    for (i, l) in layers.iter().enumerate() {
        let (Some(now), Some(was)) = (hook.masks().mask(i), &initial[i]) else {
            continue;
        };
        assert_eq!(
            now.iter().sum::<f32>(),
            was.iter().sum::<f32>(),
            "{}: the active count changed",
            l.name
        );
        moved |= now != was.as_slice();
        for (m, v) in now.iter().zip(weight_values(&trained, l).unwrap()) {
            if *m == 0.0 {
                assert_eq!(v, 0.0, "{}: a pruned weight is not zero", l.name);
            }
        }
    }
    assert!(moved, "no mask moved");
    let report = measure(&trained, &layers, Pattern::Unstructured).unwrap();
    assert!(report.meets(budget), "{}", report.markdown());
}

/// Records the model's masked weights and their optimiser moments after one given step.
struct SnapshotAt {
    at: usize,
    layers: Vec<lopper::prune::weights::WeightLayer>,
    weights: Vec<Vec<f32>>,
    moments: Vec<(u64, Vec<f32>)>,
}

impl TrainHook for SnapshotAt {
    fn after_step(
        &mut self,
        info: &StepInfo,
        model: Model,
        optim: &mut OptimizerState,
    ) -> lopper::Result<Model> {
        if info.global_step == self.at {
            let host = burn::module::Module::valid(&model);
            let masked: Vec<_> = self.layers.iter().filter(|l| l.is_masked()).collect();
            self.weights = masked
                .iter()
                .map(|l| weight_values(&host, l).unwrap())
                .collect();
            let ids: Vec<_> = masked
                .iter()
                .map(|l| burn::module::ParamId::from(fnv(&format!("{}.weight", l.name))))
                .collect();
            self.moments = optim
                .snapshot(&ids)?
                .into_iter()
                .map(|(id, d)| (id, d.convert::<f32>().try_into_vec::<f32>().unwrap()))
                .collect();
        }
        Ok(model)
    }
}

/// lopper's parameter ids: FNV-1a of the parameter's name.
fn fnv(name: &str) -> u64 {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in name.bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x100000001b3);
    }
    h
}

/// One IEE cycle (H = J = Q = 2 steps): the active set's weights and momentum come out of
/// exploration exactly as they went in; grown weights bring the values exploration gave them;
/// the rest of the exploration set is zero again, and the budget holds.
#[test]
fn iee_freezes_the_active_set_while_exploring() {
    iee_cycle(WeightBudget::Sparsity(0.8));
}

/// The same under N:M: every group of 4 has its 2 again after the grow.
#[test]
fn iee_keeps_the_nm_pattern_through_a_cycle() {
    iee_cycle(WeightBudget::NM { n: 2, m: 4 });
}

fn iee_cycle(budget: WeightBudget) {
    use lopper::prune::importance::Criterion;
    use lopper::prune::methods::iee::{Cycles, IeeHook, WeightUnits};
    use lopper::prune::weights::{Density, solve_masks};
    let dev = Device::flex();
    let g = lopper::zoo::build("lenet5", &[1, 28, 28], 10).unwrap();
    let model = Model::init(g.clone(), 8, &dev).unwrap();
    let pattern = budget.pattern();
    let layers = weight_layers(&g, &[], pattern).unwrap();
    let mut masks = WeightMasks::new(&g, layers.clone(), &dev);
    let masked: Vec<_> = layers.iter().filter(|l| l.is_masked()).collect();
    let scores: Vec<Vec<f64>> = masked
        .iter()
        .map(|l| {
            weight_values(&model, l)
                .unwrap()
                .iter()
                .map(|v| v.abs() as f64)
                .collect()
        })
        .collect();
    masks
        .set(solve_masks(&masked, &scores, budget, Density::Erk))
        .unwrap();
    let start = masks.apply(model.clone(), None).unwrap();
    // 96 images in batches of 16: 6 steps, one cycle ending at the last.
    let cfg = TrainConfig {
        model: "lenet5".into(),
        dataset: DatasetName::Mnist,
        epochs: 1,
        batch_size: 16,
        lr: 0.05,
        momentum: 0.9,
        weight_decay: 5e-4,
        seed: 5,
        ..TrainConfig::default()
    };
    let cycles = Cycles {
        h: 2,
        j: 2,
        q: 2,
        end: 6,
        swap: 0.2,
    };
    let units = WeightUnits::new(masks, pattern, Criterion::L1, &model).unwrap();
    let mut iee = IeeHook::new(units, cycles);
    let snap = |at| SnapshotAt {
        at,
        layers: layers.clone(),
        weights: vec![],
        moments: vec![],
    };
    // Before IEE's hook at step 3 (the end of J: A as exploration freezes it), after it at
    // step 5 (the grow).
    let (mut frozen, mut grown) = (snap(3), snap(5));
    let out = Trainer::new(cfg, None)
        .unwrap()
        .fit(start, &data(), &mut [&mut frozen, &mut iee, &mut grown])
        .unwrap();
    let trained = burn::module::Module::valid(&out.model);
    let log = iee.log();
    assert_eq!(log.len(), 1, "{log:?}");
    let swapped = log[0].swapped;
    assert!(swapped > 0);
    let mut new_weights = 0;
    for (k, l) in masked.iter().enumerate() {
        let before = &frozen.weights[k];
        let after = &grown.weights[k];
        assert_eq!(after, &weight_values(&trained, l).unwrap());
        for (p, (b, a)) in before.iter().zip(after).enumerate() {
            if *b != 0.0 {
                assert_eq!(a, b, "{} weight {p}: the active set moved", l.name);
            } else if *a != 0.0 {
                new_weights += 1;
            }
        }
    }
    assert_eq!(
        new_weights, swapped,
        "grown weights should bring their explored values"
    );
    // Momentum: the active set's as it was; the exploration set's dropped.
    assert_eq!(frozen.moments.len(), grown.moments.len());
    for ((id, b), (id2, a)) in frozen.moments.iter().zip(&grown.moments) {
        assert_eq!(id, id2);
        let k = masked
            .iter()
            .position(|l| fnv(&format!("{}.weight", l.name)) == *id)
            .unwrap();
        let w = &frozen.weights[k];
        for p in 0..a.len() {
            if w[p] != 0.0 {
                assert_eq!(a[p], b[p], "{}: a frozen moment moved", masked[k].name);
            } else {
                assert_eq!(
                    a[p], 0.0,
                    "{}: an exploration moment survived",
                    masked[k].name
                );
            }
        }
    }
    let report = measure(&trained, &layers, pattern).unwrap();
    assert!(report.meets(budget), "{}", report.markdown());
}

/// Every parameter's values and optimiser state after one given step.
struct ParamsAt {
    at: usize,
    values: Vec<(String, Vec<f32>)>,
    moments: Vec<(u64, Vec<f32>)>,
}

impl TrainHook for ParamsAt {
    fn after_step(
        &mut self,
        info: &StepInfo,
        model: Model,
        optim: &mut OptimizerState,
    ) -> lopper::Result<Model> {
        if info.global_step == self.at {
            let host = burn::module::Module::valid(&model);
            self.values = host
                .named_tensors()
                .into_iter()
                .filter(|(n, _)| !n.contains(".running_"))
                .map(|(n, d)| (n, d.convert::<f32>().try_into_vec::<f32>().unwrap()))
                .collect();
            let ids: Vec<_> = self
                .values
                .iter()
                .map(|(n, _)| burn::module::ParamId::from(fnv(n)))
                .collect();
            self.moments = optim
                .snapshot(&ids)?
                .into_iter()
                .map(|(id, d)| (id, d.convert::<f32>().try_into_vec::<f32>().unwrap()))
                .collect();
        }
        Ok(model)
    }
}

/// One IEE cycle on the channels of a residual network (H = J = Q = 2 steps, Taylor scores):
/// every parameter element the active set owns comes out of exploration with the value and
/// optimiser state it went in with; exploration trained the rest; grown channels start with
/// fresh state; each group keeps its width.
#[test]
fn iee_channels_freeze_the_active_set_while_exploring() {
    use lopper::prune::importance::Criterion;
    use lopper::prune::methods::iee::{Cycles, IeeHook};
    use lopper::prune::methods::iee_channels::{ChannelUnits, Growth};
    use lopper::prune::surgery::kept_elements;
    use lopper::prune::{Selection, channel_groups};
    let dev = Device::flex();
    let g = lopper::zoo::build("resnet20", &[1, 28, 28], 10).unwrap();
    let model = Model::init(g.clone(), 8, &dev).unwrap();
    let groups = channel_groups(&g, &[]).unwrap();
    let mut start = Selection::all(&groups);
    for gr in groups.iter().filter(|gr| gr.is_prunable()) {
        start.keep[gr.id] = Some((0..gr.channels * 3 / 4).collect());
    }
    let cycles = Cycles {
        h: 2,
        j: 2,
        q: 2,
        end: 6,
        swap: 0.25,
    };
    let units = ChannelUnits::new(
        &model,
        &groups,
        start.clone(),
        Criterion::Taylor,
        Growth::PerGroup,
        5,
        &dev,
    )
    .unwrap();
    let mut iee = IeeHook::new(units, cycles);
    let cfg = TrainConfig {
        model: "resnet20".into(),
        dataset: DatasetName::Mnist,
        epochs: 1,
        batch_size: 16,
        lr: 0.05,
        momentum: 0.9,
        weight_decay: 5e-4,
        seed: 5,
        ..TrainConfig::default()
    };
    let snap = |at| ParamsAt {
        at,
        values: vec![],
        moments: vec![],
    };
    let (mut frozen, mut grown) = (snap(3), snap(5));
    Trainer::new(cfg, None)
        .unwrap()
        .fit(
            model.clone(),
            &data(),
            &mut [&mut frozen, &mut iee, &mut grown],
        )
        .unwrap();
    let log = iee.log();
    assert_eq!(log.len(), 1, "{log:?}");
    assert!(log[0].swapped > 0);
    // The active set as exploration froze it: the final one less what grew back.
    let mut at_freeze = iee.units().active().clone();
    for gr in groups.iter().filter(|gr| gr.is_prunable()) {
        let now = iee.units().active().kept(&groups, gr.id);
        assert_eq!(
            now.len(),
            gr.channels * 3 / 4,
            "group {} changed width",
            gr.id
        );
        let back = &iee.units().last_grown()[gr.id];
        at_freeze.keep[gr.id] = Some(now.into_iter().filter(|c| !back.contains(c)).collect());
    }
    let owned: std::collections::HashMap<String, Vec<f32>> =
        kept_elements(&model, &groups, &at_freeze)
            .unwrap()
            .into_iter()
            .collect();
    let mut explored_moved = 0;
    for ((name, before), (name2, after)) in frozen.values.iter().zip(&grown.values) {
        assert_eq!(name, name2);
        let a = &owned[name];
        for e in 0..before.len() {
            if a[e] != 0.0 {
                assert_eq!(before[e], after[e], "{name}[{e}]: the active set moved");
            } else if before[e] != after[e] {
                explored_moved += 1;
            }
        }
    }
    assert!(explored_moved > 0, "exploration trained nothing");
    assert_eq!(frozen.moments.len(), grown.moments.len());
    for ((id, b), (id2, after)) in frozen.moments.iter().zip(&grown.moments) {
        assert_eq!(id, id2);
        let (name, _) = frozen.values.iter().find(|(n, _)| fnv(n) == *id).unwrap();
        let a = &owned[name];
        for e in 0..after.len() {
            if a[e] != 0.0 {
                assert_eq!(after[e], b[e], "{name}: a frozen moment moved");
            } else {
                assert_eq!(after[e], 0.0, "{name}: an exploration moment survived");
            }
        }
    }
}
