//! DSA's pieces: the solved keep probabilities, the implicit keep-ratio gradient against
//! finite differences, the budget projection, hardening with rounding repair, and resuming an
//! interrupted allocation.

use std::ops::{ControlFlow, Range};
use std::sync::Arc;

use burn::module::Module;
use burn::tensor::{Device, Tensor, TensorData};
use lopper::data::{Batcher, DatasetName};
use lopper::graph::{Graph, GraphBuilder, Op};
use lopper::model::{Model, Value};
use lopper::prune::admm::{AdmmMetric, metric_weights, project_weighted, ratio_bounds};
use lopper::prune::dsa::{
    ChannelRank, Dsa, DsaConfig, keep_probabilities, ratio_gradient, top_k_mask,
};
use lopper::prune::{
    ChannelMasks, CostModel, Resource, ResourceModel, channel_groups, harden, keep_ratios,
};
use lopper::train::{EpochRecord, RunDir, StepInfo, TrainConfig, TrainData, TrainHook, Trainer};
use rand::{Rng, SeedableRng, rngs::StdRng};

mod common;
use common::{host_f64, randomised, synthetic_mnist};

#[test]
fn solved_keep_probabilities_have_the_requested_mean() {
    let mut rng = StdRng::seed_from_u64(1);
    for c in [1usize, 3, 16, 64, 257] {
        let log_imp: Vec<f64> = (0..c).map(|_| rng.random_range(-6.0..1.0)).collect();
        for a in [0.01, 0.2, 0.5, 0.77, 0.999] {
            for beta2 in [0.5, 1.0, 5.0, 20.0, 200.0] {
                let (p, _) = keep_probabilities(&log_imp, a, beta2);
                let mean = p.iter().sum::<f64>() / c as f64;
                assert!(
                    (mean - a).abs() <= 1e-6,
                    "C={c} a={a} beta2={beta2}: mean {mean}"
                );
                // More important channels are more likely kept.
                for i in 0..c {
                    for j in 0..c {
                        if log_imp[i] > log_imp[j] {
                            assert!(p[i] >= p[j]);
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn evaluation_mask_keeps_the_most_important_channels() {
    let m = top_k_mask(&[0.1, 3.0, 0.5, 2.0, 0.0], 0.4);
    assert_eq!(m, vec![0.0, 1.0, 0.0, 1.0, 0.0]);
    // At least one channel survives.
    assert_eq!(top_k_mask(&[1.0, 2.0], 0.01), vec![0.0, 1.0]);
}

/// conv(3→8)+BN+GELU → conv(8→6)+BN+GELU → GAP → linear(6→4): smooth everywhere, so
/// finite differences are not thrown off by ReLU kinks.
fn small_graph() -> Graph {
    let mut b = GraphBuilder::new("small", &[3, 8, 8]);
    let x = b.conv_bn_act("c1", 0, 8, 3, 1, 1, Some(Op::Gelu));
    let y = b.conv_bn_act("c2", x, 6, 3, 1, 1, Some(Op::Gelu));
    let p = b.op("gap", Op::GlobalAvgPool, y);
    let fc = b.linear("fc", p, 4, true);
    b.finish(fc).unwrap()
}

#[test]
fn keep_ratio_gradient_matches_finite_differences() {
    let graph = small_graph();
    let groups = channel_groups(&graph, &[]).unwrap();
    let dev = Device::flex();
    let ad = dev.clone().autodiff();
    let model = randomised(&graph, 5);
    let mut rng = StdRng::seed_from_u64(6);
    let n = 16;
    let x: Vec<f32> = (0..n * 3 * 64)
        .map(|_| rng.random_range(-1.0..1.0))
        .collect();
    let beta2 = 3.0;
    for g in groups.iter().filter(|g| g.is_prunable()) {
        let (g, c) = (g.id, g.channels);
        let log_imp: Vec<f64> = (0..c).map(|_| rng.random_range(-2.0..0.5)).collect();

        // A smooth loss (sum of squared logits) with the soft mask p(a) on group g and
        // evaluation-mode BN; f32 finite differences need a loss that moves with a.
        let logits_at = |p: Tensor<1>, device: &Device| -> Tensor<2> {
            let m = model.clone().fork(device);
            let mut masks: Vec<Option<Tensor<1>>> = vec![None; groups.len()];
            masks[g] = Some(p);
            let hook = ChannelMasks::new(&graph, &groups, &masks, device);
            let input = Tensor::<4>::from_data(TensorData::new(x.clone(), [n, 3, 8, 8]), device);
            let Value::Flat(logits) = m
                .forward_hooked(Value::Spatial(input), false, &hook)
                .unwrap()
            else {
                panic!("flat output expected")
            };
            logits
        };
        let to_tensor = |p: &[f64], device: &Device| {
            let v: Vec<f32> = p.iter().map(|&v| v as f32).collect();
            Tensor::<1>::from_data(TensorData::new(v, [c]), device)
        };

        for a in [0.3, 0.55, 0.8] {
            let (p, _) = keep_probabilities(&log_imp, a, beta2);
            let leaf = to_tensor(&p, &ad).require_grad();
            let loss = logits_at(leaf.clone(), &ad).powf_scalar(2.0).sum();
            let grads = loss.backward();
            let dl_dp = host_f64(leaf.grad(&grads).unwrap());
            let analytic = ratio_gradient(&dl_dp, &p);

            let h = 1e-2;
            let value = |a: f64| -> f64 {
                let (p, _) = keep_probabilities(&log_imp, a, beta2);
                // Summed in f64 so the loss itself adds no rounding.
                let l = logits_at(to_tensor(&p, &dev), &dev).into_data();
                let l = l.try_to_vec::<f32>().unwrap();
                l.iter().map(|&v| (v as f64).powi(2)).sum::<f64>()
            };
            // Central differences at h and h/2, Richardson-extrapolated: the O(h^2) error
            // cancels, and h stays large enough for f32 losses to resolve the change.
            let central = |h: f64| (value(a + h) - value(a - h)) / (2.0 * h);
            let numeric = (4.0 * central(h / 2.0) - central(h)) / 3.0;
            let rel = (analytic - numeric).abs() / numeric.abs().max(1e-3);
            eprintln!(
                "group {g} a={a}: implicit {analytic:.6}, numeric {numeric:.6}, rel {rel:.2e}"
            );
            assert!(
                rel <= 1e-3,
                "a={a}: implicit gradient {analytic}, finite differences {numeric} (rel {rel})"
            );
            assert!(numeric.abs() > 1e-2, "a={a}: the loss barely depends on a");
        }
    }
}

#[test]
fn projection_meets_the_budget_and_is_closest() {
    let graph = lopper::zoo::build("resnet20", &[3, 32, 32], 10).unwrap();
    let groups = channel_groups(&graph, &[]).unwrap();
    let cost = ResourceModel::new(Resource::Macs, &graph, &groups);
    let n = groups.len();
    let (lower, upper) = ratio_bounds(&groups);
    let mut rng = StdRng::seed_from_u64(2);
    // Both metrics: Euclidean (w = 1) and weighted by each group's cost share.
    let euclid = metric_weights(AdmmMetric::Euclidean, &groups, &cost);
    let share = metric_weights(AdmmMetric::CostShare, &groups, &cost);
    assert!(euclid.iter().all(|w| *w == 1.0));
    assert!(share.iter().any(|w| (w - 1.0).abs() > 0.5), "{share:?}");
    for (frac, wt) in [
        (0.2, &euclid),
        (0.35, &euclid),
        (0.5, &euclid),
        (0.2, &share),
        (0.5, &share),
    ] {
        let limit = frac * cost.dense_cost();
        let v: Vec<f64> = groups
            .iter()
            .map(|g| {
                if g.is_prunable() {
                    rng.random_range(0.5..1.1)
                } else {
                    1.0
                }
            })
            .collect();
        let z = project_weighted(&v, wt, &lower, &upper, &cost, limit);
        let c = cost.cost(&z);
        assert!(c <= limit, "cost {c} over {limit}");
        let clamped: Vec<f64> = v.iter().map(|x| x.min(1.0)).collect();
        assert!(
            cost.cost(&clamped) > limit,
            "the test needs an infeasible v"
        );
        // The constraint is active: z sits on the budget's boundary.
        assert!(c >= limit * (1.0 - 1e-4), "cost {c} well under {limit}");
        for (i, zi) in z.iter().enumerate() {
            assert!(*zi >= lower[i] - 1e-12 && *zi <= upper[i] + 1e-12);
        }
        // No feasible point on random rays towards the lower bound is closer to v.
        let dist = |p: &[f64]| -> f64 {
            p.iter()
                .zip(&v)
                .zip(wt.iter())
                .map(|((a, b), w)| w * (a - b).powi(2))
                .sum()
        };
        for _ in 0..200 {
            let dir: Vec<f64> = (0..n).map(|_| rng.random_range(0.0..1.0)).collect();
            let at = |t: f64| -> Vec<f64> {
                (0..n)
                    .map(|i| (v[i].min(1.0) - t * dir[i]).clamp(lower[i], upper[i]))
                    .collect()
            };
            let (mut lo, mut hi) = (0.0, 2.0);
            for _ in 0..60 {
                let mid = 0.5 * (lo + hi);
                if cost.cost(&at(mid)) <= limit {
                    hi = mid;
                } else {
                    lo = mid;
                }
            }
            let w = at(hi);
            assert!(dist(&z) <= dist(&w) + 1e-9, "a feasible point is closer");
        }
        // A feasible point projects onto itself (after clamping).
        let inside: Vec<f64> = z.iter().map(|z| (z * 0.9).max(0.0)).collect();
        let inside: Vec<f64> = inside.iter().zip(&lower).map(|(a, l)| a.max(*l)).collect();
        let p = project_weighted(&inside, wt, &lower, &upper, &cost, limit);
        for (a, b) in p.iter().zip(&inside) {
            assert!((a - b).abs() < 1e-12);
        }
    }
}

#[test]
fn hardening_meets_the_budget_exactly_and_uses_it() {
    let graph = lopper::zoo::build("resnet20", &[3, 32, 32], 10).unwrap();
    let groups = channel_groups(&graph, &[]).unwrap();
    let cost = ResourceModel::new(Resource::Macs, &graph, &groups);
    let model = Model::init(graph.clone(), 0, &Device::flex()).unwrap();
    let mut rng = StdRng::seed_from_u64(3);
    let scores: Vec<Vec<f64>> = groups
        .iter()
        .map(|g| {
            (0..g.channels)
                .map(|_| rng.random_range(0.0..1.0))
                .collect()
        })
        .collect();
    for frac in [0.3, 0.5, 0.7] {
        let limit = frac * cost.dense_cost();
        // Ratios slightly off the budget both ways: rounding repair has work to do.
        for scale in [0.9, 1.0, 1.1] {
            let ratios: Vec<f64> = groups
                .iter()
                .map(|g| {
                    if g.is_prunable() {
                        (frac.sqrt() * scale).min(1.0)
                    } else {
                        1.0
                    }
                })
                .collect();
            // Widths in steps of 8 channels meet the budget too.
            let rounded = harden(&groups, &scores, &ratios, &cost, limit, 8).unwrap();
            let r8 = keep_ratios(&groups, &rounded);
            assert!(cost.cost(&r8) <= limit);
            for g in groups.iter().filter(|g| g.is_prunable()) {
                let kept = rounded.kept(&groups, g.id).len();
                assert!(
                    kept.is_multiple_of(8) || kept == g.channels,
                    "group {}: {kept}",
                    g.id
                );
            }
            let sel = harden(&groups, &scores, &ratios, &cost, limit, 1).unwrap();
            let pruned =
                lopper::prune::prune_model(&model, &groups, &sel, &Device::flex()).unwrap();
            let macs = lopper::count::count(&pruned.graph).macs as f64;
            assert!(macs <= limit, "{macs} > {limit}");
            assert_eq!(macs, cost.cost(&keep_ratios(&groups, &sel)).round());
            // No single channel could be added back without breaking the budget.
            let r = keep_ratios(&groups, &sel);
            for g in groups.iter().filter(|g| g.is_prunable()) {
                let mut r2 = r.clone();
                if sel.kept(&groups, g.id).len() < g.channels {
                    r2[g.id] += 1.0 / g.channels as f64;
                    assert!(cost.cost(&r2) > limit, "group {} has room", g.id);
                }
            }
        }
    }
}

/// Stops training after `after` epochs, as a kill after that epoch's checkpoint would.
struct Interrupt {
    after: usize,
}
impl TrainHook for Interrupt {
    fn after_epoch(&mut self, r: &EpochRecord, _: &Model) -> lopper::Result<ControlFlow<()>> {
        Ok(if r.epoch >= self.after {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        })
    }
}

#[test]
fn interrupted_allocation_resumes_where_it_stopped() {
    let pre = DatasetName::Mnist.preprocess();
    let data = TrainData {
        train: Batcher::new(Arc::new(synthetic_mnist(96, 1)), 16, pre.clone(), true),
        val: None,
        test: None,
    };
    let val = Batcher::new(Arc::new(synthetic_mnist(48, 3)), 16, pre, true);
    let cfg = TrainConfig {
        model: "lenet5".into(),
        dataset: DatasetName::Mnist,
        epochs: 3,
        batch_size: 16,
        lr: 0.05,
        seed: 11,
        ..TrainConfig::default()
    };
    let dense = Model::init(
        lopper::zoo::build("lenet5", &[1, 28, 28], 10).unwrap(),
        5,
        &Device::flex(),
    )
    .unwrap();
    let make = |log: Option<std::path::PathBuf>| {
        let groups = channel_groups(&dense.graph, &[]).unwrap();
        let cost = ResourceModel::new(Resource::Macs, &dense.graph, &groups);
        let limit = 0.5 * cost.dense_cost();
        // The Fisher metric carries the most state across a checkpoint (its running sums).
        let dcfg = DsaConfig {
            epochs: 3,
            ratio_every: 2,
            metric: AdmmMetric::Fisher,
            ..DsaConfig::default()
        };
        Dsa::new(
            &dense,
            groups,
            Box::new(cost),
            limit,
            dcfg,
            val.clone(),
            data.train.num_batches(),
            &Device::flex(),
            11,
            log,
        )
        .unwrap()
    };
    let trainer =
        |dir: &std::path::Path| Trainer::new(cfg.clone(), Some(RunDir::new(dir))).unwrap();

    let full_dir = tempfile::tempdir().unwrap();
    let mut full_dsa = make(None);
    let full = trainer(full_dir.path())
        .fit(dense.clone(), &data, &mut [&mut full_dsa])
        .unwrap();

    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("dsa_log.jsonl");
    let mut first = make(Some(log.clone()));
    let part = trainer(dir.path())
        .fit(
            dense.clone(),
            &data,
            &mut [&mut first, &mut Interrupt { after: 1 }],
        )
        .unwrap();
    assert!(part.stopped_early);
    let after_one = first.ratios();
    // A new process: DSA set up afresh from the dense model, then the checkpoint resumed.
    let mut resumed_dsa = make(Some(log.clone()));
    let resumed = trainer(dir.path())
        .resume(&data, &mut [&mut resumed_dsa])
        .unwrap();

    assert_eq!(resumed.history.len(), 3);
    // The Fisher weights came from the gradients: not uniform, mean 1 over prunable groups.
    let w = &resumed_dsa.history().last().unwrap().metric_weights;
    let prunable: Vec<f64> = w[1..w.len() - 1].to_vec();
    assert!(
        prunable.iter().any(|x| (x - 1.0).abs() > 1e-3),
        "weights {w:?}"
    );
    assert!((prunable.iter().sum::<f64>() / prunable.len() as f64 - 1.0).abs() < 1e-9);
    let full_w = &full_dsa.history().last().unwrap().metric_weights;
    for (x, y) in w.iter().zip(full_w) {
        // The checkpoint's JSON round trip may move the last bit.
        assert!(
            (x - y).abs() <= 1e-12 * x.abs().max(1.0),
            "{w:?} vs {full_w:?}"
        );
    }
    let (a, b) = (full_dsa.ratios(), resumed_dsa.ratios());
    assert_ne!(after_one, a, "the ratios moved in epochs 2 and 3");
    for (x, y) in a.iter().zip(&b) {
        assert!((x - y).abs() <= 1e-9, "ratios {a:?} vs resumed {b:?}");
    }
    for (x, y) in full_dsa
        .feasible_ratios()
        .iter()
        .zip(resumed_dsa.feasible_ratios())
    {
        assert!((x - y).abs() <= 1e-9);
    }
    for ((n, x), (_, y)) in full
        .model
        .named_tensors()
        .iter()
        .zip(resumed.model.named_tensors().iter())
    {
        let (x, y) = (
            x.try_to_vec::<f32>().unwrap(),
            y.try_to_vec::<f32>().unwrap(),
        );
        let max = x
            .iter()
            .zip(&y)
            .map(|(p, q)| (p - q).abs())
            .fold(0f32, f32::max);
        assert!(max <= 1e-6, "{n} differs after resume by {max}");
    }
    // The log holds epochs 0..=3 once each.
    let epochs: Vec<usize> = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["epoch"]
                .as_u64()
                .unwrap() as usize
        })
        .collect();
    assert_eq!(epochs, vec![0, 1, 2, 3]);
}

/// LeNet-5 with half of conv2's channels dead (fc1 never reads them, and their filters are
/// the weakest): the budget is exactly what removing them saves. The Fisher signal sees that
/// the loss does not use them (zero gradient, so zero expected loss increase) and every
/// other channel it does, so the allocation takes the budget from conv2's dead half and
/// leaves the other groups whole. Weights are frozen (learning rate 1e-12) so nothing
/// revives.
/// LeNet-5 whose conv2 channels `weak` have filters ten times weaker than the others and
/// whose conv2 channels `unused` feed nothing (fc1 reads zeros from them).
fn lenet5_conv2_variant(weak: Range<usize>, unused: Range<usize>) -> Model {
    let graph = lopper::zoo::build("lenet5", &[1, 28, 28], 10).unwrap();
    let base = Model::init(graph.clone(), 4, &Device::flex()).unwrap();
    let tensors = base.named_tensors();
    Model::from_tensors(graph, &Device::flex(), |node, name, _| {
        let full = format!("{}.{name}", node.name);
        let d = tensors.iter().find(|(n, _)| *n == full).unwrap().1.clone();
        let shape = d.shape().to_vec();
        let mut v = d.try_to_vec::<f32>().unwrap();
        match (node.name.as_str(), name) {
            // conv2's filters [16, 6, 5, 5].
            ("conv2", "weight") => v[weak.start * 150..weak.end * 150]
                .iter_mut()
                .for_each(|w| *w *= 0.1),
            // fc1 reads the flattened [16, 5, 5]: features 25c..25c+25 are channel c.
            ("fc1", "weight") => {
                let inputs_first = shape[0] == 400;
                for (i, w) in v.iter_mut().enumerate() {
                    let feature = if inputs_first { i / shape[1] } else { i % 400 };
                    if unused.contains(&(feature / 25)) {
                        *w = 0.0;
                    }
                }
            }
            _ => {}
        }
        Ok(TensorData::new(v, shape))
    })
    .unwrap()
}

/// Two allocation epochs of DSA on `model` (a LeNet-5) with frozen weights, a ratio step after
/// every weight step, under a MACs budget of conv2 at half width. Returns the hook after
/// training, the resource model, the budget and conv2's group.
fn frozen_allocation(model: Model, cfg: DsaConfig) -> (Dsa, ResourceModel, f64, usize) {
    frozen_allocation_in_stages(vec![(model, 2)], cfg)
}

/// [`frozen_allocation`] over stages: one allocation phase whose weights are replaced by each
/// stage's model (same graph) for that stage's number of epochs.
fn frozen_allocation_in_stages(
    stages: Vec<(Model, usize)>,
    cfg: DsaConfig,
) -> (Dsa, ResourceModel, f64, usize) {
    let epochs: usize = stages.iter().map(|(_, e)| e).sum();
    let graph = stages[0].0.graph.clone();
    let groups = channel_groups(&graph, &[]).unwrap();
    let conv2 = groups
        .iter()
        .position(|g| g.label(&graph).contains("conv2"))
        .unwrap();
    let cost = ResourceModel::new(Resource::Macs, &graph, &groups);
    let mut half = vec![1.0; groups.len()];
    half[conv2] = 0.5;
    let limit = cost.cost(&half);
    let pre = DatasetName::Mnist.preprocess();
    let data = TrainData {
        train: Batcher::new(Arc::new(synthetic_mnist(256, 1)), 16, pre.clone(), true),
        val: None,
        test: None,
    };
    let val = Batcher::new(Arc::new(synthetic_mnist(64, 3)), 16, pre, true);
    let mut dsa = Dsa::new(
        &stages[0].0,
        groups,
        Box::new(cost.clone()),
        limit,
        DsaConfig {
            epochs,
            ratio_every: 1,
            ..cfg
        },
        val,
        data.train.num_batches(),
        &Device::flex(),
        3,
        None,
    )
    .unwrap();
    for (model, epochs) in stages {
        let train_cfg = TrainConfig {
            model: "lenet5".into(),
            dataset: DatasetName::Mnist,
            epochs,
            batch_size: 16,
            // Frozen in effect (zero is refused as a learning rate).
            lr: 1e-12,
            seed: 3,
            ..TrainConfig::default()
        };
        let t = Trainer::new(train_cfg, None).unwrap();
        t.fit(model, &data, &mut [&mut dsa]).unwrap();
    }
    (dsa, cost, limit, conv2)
}

#[test]
fn fisher_signal_takes_the_budget_where_the_loss_does_not_look() {
    // conv2's channels 8.. are weak: the budget should come from them alone.
    let model = lenet5_conv2_variant(8..16, 0..0);
    let (dsa, cost, limit, conv2) = frozen_allocation(model, DsaConfig::default());
    let z = dsa.feasible_ratios();
    assert!(cost.cost(z) <= limit * (1.0 + 1e-9));
    assert!(
        (0.4..=0.6).contains(&z[conv2]),
        "conv2 kept {} (ratios {z:?})",
        z[conv2]
    );
    for (g, &zg) in z.iter().enumerate().filter(|&(g, _)| g != conv2) {
        assert!(zg >= 0.9, "group {g} cut to {zg} ({z:?})");
    }
}

/// conv2's strong channels 0..8 feed nothing and its weak channels 8.. carry the output. The
/// magnitude rank keeps the strong, useless ones; the Fisher rank measures that dropping
/// them costs nothing and keeps the used ones, in its keep probabilities and in the
/// importance hardening reads.
#[test]
fn fisher_channel_rank_keeps_the_channels_the_loss_uses() {
    let keeps = |rank: ChannelRank| -> Vec<usize> {
        let model = lenet5_conv2_variant(8..16, 0..8);
        let cfg = DsaConfig {
            channel_rank: rank,
            ..DsaConfig::default()
        };
        let (dsa, _, _, conv2) = frozen_allocation(model, cfg);
        let importance = &dsa.importance()[conv2];
        let mask = top_k_mask(importance, 0.5);
        (0..16).filter(|&i| mask[i] > 0.0).collect()
    };
    assert_eq!(keeps(ChannelRank::Gamma), (0..8).collect::<Vec<_>>());
    assert_eq!(keeps(ChannelRank::Fisher), (8..16).collect::<Vec<_>>());
}

/// The network changes under the allocation: for three epochs conv2's channels 8.. carry the
/// output, then for one epoch channels 0..8 do. A Fisher estimate that decays follows the
/// change; the mean since the start still remembers the first network.
#[test]
fn decaying_fisher_estimate_follows_the_network() {
    let keeps = |decay: f64| -> Vec<usize> {
        let stages = vec![
            (lenet5_conv2_variant(0..0, 0..8), 3),
            (lenet5_conv2_variant(0..0, 8..16), 1),
        ];
        let cfg = DsaConfig {
            channel_rank: ChannelRank::Fisher,
            fisher_decay: decay,
            ..DsaConfig::default()
        };
        let (dsa, _, _, conv2) = frozen_allocation_in_stages(stages, cfg);
        // The top quarter: two of the random LeNet's conv2 channels are dead (their ReLU
        // never fires), so only six of 0..8 carry anything in the second network.
        let mask = top_k_mask(&dsa.importance()[conv2], 0.25);
        (0..16).filter(|&i| mask[i] > 0.0).collect()
    };
    let (recent, mean) = (keeps(0.2), keeps(1.0));
    assert!(recent.iter().all(|&i| i < 8), "decay 0.2 kept {recent:?}");
    assert!(mean.iter().all(|&i| i >= 8), "decay 1 kept {mean:?}");
}

/// In the hard tail the weight steps' forward pass (autodiff values) uses the deterministic
/// top-k masks of the feasible ADMM iterate z, the widths hardening keeps, even where the keep
/// ratios a are elsewhere; before it, sampled masks at the starting hardness (beta2 = 1, keep
/// probabilities far from 0 and 1) differ from them.
#[test]
fn hard_tail_trains_under_the_masks_of_the_kept_widths() {
    let graph = small_graph();
    let groups = channel_groups(&graph, &[]).unwrap();
    let dev = Device::flex();
    let ad = dev.clone().autodiff();
    let model = randomised(&graph, 8);
    let cost = ResourceModel::new(Resource::Macs, &graph, &groups);
    let limit = 0.5 * cost.dense_cost();
    // The ratio steps' data: not used, no ratio step runs here.
    let val = Batcher::new(
        Arc::new(lopper::data::Dataset {
            images: vec![128; 4 * 3 * 64],
            labels: vec![0, 1, 2, 3],
            shape: [3, 8, 8],
            classes: (0..4).map(|c| c.to_string()).collect(),
        }),
        4,
        DatasetName::Cifar10.preprocess(),
        false,
    );
    let steps_per_epoch = 10;
    let allocation = |init_logit: f64| {
        Dsa::new(
            &model,
            groups.clone(),
            Box::new(cost.clone()),
            limit,
            DsaConfig {
                epochs: 1,
                hard_tail: 0.3,
                init_logit,
                ..DsaConfig::default()
            },
            val.clone(),
            steps_per_epoch,
            &dev,
            1,
            None,
        )
        .unwrap()
    };
    // Ratios a = sigmoid(0) = 0.5 with z moved to 0.25 (through a saved state), and a second
    // allocation whose ratios are 0.25: its evaluation masks are z's top-k masks.
    let mut dsa = allocation(0.0);
    let mut state = dsa.state().unwrap().unwrap();
    let z: Vec<f64> = dsa.feasible_ratios().iter().map(|&z| z.min(0.25)).collect();
    state["z"] = serde_json::json!(z);
    dsa.restore(state).unwrap();
    assert_eq!(dsa.feasible_ratios(), &z[..]);
    let at_z = allocation((0.25f64 / 0.75).ln());
    let mut rng = StdRng::seed_from_u64(2);
    let x: Vec<f32> = (0..8 * 3 * 64)
        .map(|_| rng.random_range(-1.0..1.0))
        .collect();
    let logits = |device: &Device, dsa: &Dsa| -> Vec<f64> {
        let input = Tensor::<4>::from_data(TensorData::new(x.clone(), [8, 3, 8, 8]), device);
        let Value::Flat(out) = model
            .clone()
            .fork(device)
            .forward_hooked(Value::Spatial(input), false, dsa.node_hook().unwrap())
            .unwrap()
        else {
            panic!("flat output expected")
        };
        host_f64(out)
    };
    let evaluation = logits(&dev, &dsa);
    let kept = logits(&dev, &at_z);
    assert!(
        kept.iter()
            .zip(&evaluation)
            .any(|(a, b)| (a - b).abs() > 1e-4),
        "z's masks matched a's"
    );
    let step = |global_step: usize| StepInfo {
        epoch: 0,
        step_in_epoch: global_step,
        global_step,
        lr: 0.1,
        steps_per_epoch: 10,
        epochs: 1,
    };
    let mut sampled_differs = false;
    for s in 0..7 {
        dsa.before_step(&step(s), &model).unwrap();
        let train = logits(&ad, &dsa);
        sampled_differs |= train.iter().zip(&kept).any(|(a, b)| (a - b).abs() > 1e-4);
    }
    assert!(sampled_differs, "sampled masks matched the top-k ones");
    for s in 7..10 {
        dsa.before_step(&step(s), &model).unwrap();
        let train = logits(&ad, &dsa);
        for (a, b) in train.iter().zip(&kept) {
            assert!((a - b).abs() <= 1e-5, "step {s}: {a} vs {b}");
        }
    }
}
