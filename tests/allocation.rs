//! Importance criteria, budgets and allocation: the budget holds when counted on the
//! pruned graph, the most important channels stay, unreachable budgets are clear errors.

use std::sync::Arc;

use burn::tensor::{Device, TensorData};
use lopper::count::count;
use lopper::data::{Batcher, Dataset, DatasetName};
use lopper::graph::GraphBuilder;
use lopper::model::Model;
use lopper::prune::allocation::Amount;
use lopper::prune::importance::{Importance, ScoreHook, Taylor};
use lopper::prune::{
    Allocation, Budget, Criterion, Metric, Resource, ResourceModel, Selection, allocate,
    channel_groups, channel_scores, collapsed_streams, prune_model,
};
use lopper::train::{TrainConfig, TrainData, Trainer};

#[test]
fn budgets_parse() {
    let b: Budget = "macs=0.5".parse().unwrap();
    assert_eq!(
        (b.resource, b.amount),
        (Metric::Macs, Amount::Fraction(0.5))
    );
    let b: Budget = "macs=20M".parse().unwrap();
    assert_eq!(b.amount, Amount::Absolute(20e6));
    let b: Budget = "params=150K".parse().unwrap();
    assert_eq!(
        (b.resource, b.amount),
        (Metric::Params, Amount::Absolute(150e3))
    );
    let b: Budget = "macs=1".parse().unwrap();
    assert_eq!(b.amount, Amount::Fraction(1.0));
    let b: Budget = "latency=0.6".parse().unwrap();
    assert_eq!(b.amount, Amount::Fraction(0.6));
    let b: Budget = "latency=3ms".parse().unwrap();
    assert_eq!(
        (b.resource, b.amount),
        (Metric::Latency, Amount::Absolute(3.0))
    );
    for bad in [
        "macs",
        "flops=0.5",
        "macs=-1",
        "macs=abc",
        "macs=0",
        "latency=xms",
        // A bare number over 1 is neither a fraction nor an amount with its unit.
        "macs=1.5",
        "params=150000",
        "latency=2.5",
        "latency=2K",
        "macs=5ms",
        "macs=nanM",
        "macs=infK",
    ] {
        assert!(bad.parse::<Budget>().is_err(), "{bad}");
    }
}

#[test]
fn l1_and_bn_scores_by_hand() {
    let mut b = GraphBuilder::new("t", &[1, 2, 2]);
    let c = b.conv("conv", 0, 3, 1, 1, 0, 1, false);
    let n = b.bn("bn", c);
    let f = b.op("flatten", lopper::graph::Op::Flatten, n);
    let y = b.linear("fc", f, 2, true);
    let g = b.finish(y).unwrap();
    let m = Model::from_tensors(g.clone(), &Device::flex(), |node, name, shape| {
        let n: usize = shape.iter().product();
        Ok(match (node.name.as_str(), name) {
            ("conv", "weight") => TensorData::new(vec![-1.0f32, 3.0, 0.5], shape.to_vec()),
            ("bn", "weight") => TensorData::new(vec![0.2f32, -2.0, 1.0], shape.to_vec()),
            ("bn", "running_var") => TensorData::new(vec![1.0f32; n], shape.to_vec()),
            _ => TensorData::new(vec![0.0f32; n], shape.to_vec()),
        })
    })
    .unwrap();
    let groups = channel_groups(&g, &[]).unwrap();
    let conv_group = groups.iter().find(|x| x.label(&g) == "conv").unwrap().id;
    let dev = Device::flex();
    let l1 = channel_scores(Criterion::L1, &m, &groups, None, &dev, 0).unwrap();
    assert_eq!(l1[conv_group], vec![1.0, 3.0, 0.5]);
    let bn = channel_scores(Criterion::Bn, &m, &groups, None, &dev, 0).unwrap();
    assert_eq!(
        bn[conv_group]
            .iter()
            .map(|v| (v * 1e6).round() / 1e6)
            .collect::<Vec<_>>(),
        vec![0.2, 2.0, 1.0]
    );
}

fn scores(model: &Model, groups: &[lopper::prune::ChannelGroup]) -> Vec<Vec<f64>> {
    channel_scores(Criterion::L1, model, groups, None, &Device::flex(), 0).unwrap()
}

#[test]
fn budgets_hold_on_the_pruned_graph() {
    let g = lopper::zoo::build("resnet20", &[3, 32, 32], 10).unwrap();
    let model = Model::init(g.clone(), 1, &Device::flex()).unwrap();
    let groups = channel_groups(&g, &[]).unwrap();
    let s = scores(&model, &groups);
    let dense = count(&g);
    for (budget, allocation, round_to) in [
        ("macs=0.5", Allocation::Uniform, 1),
        ("macs=0.5", Allocation::Global, 1),
        ("macs=0.3", Allocation::Global, 1),
        ("params=0.4", Allocation::Uniform, 1),
        ("macs=15M", Allocation::Global, 1),
        ("macs=0.5", Allocation::Uniform, 8),
    ] {
        let b: Budget = budget.parse().unwrap();
        let cm = b.cost_model(&g, &groups, None).unwrap();
        let sel = allocate(&groups, &s, &b, cm.as_ref(), allocation, round_to).unwrap();
        let pruned = prune_model(&model, &groups, &sel, &Device::flex()).unwrap();
        let c = count(&pruned.graph);
        let (got, full) = match b.resource {
            Metric::Macs => (c.macs as f64, dense.macs as f64),
            Metric::Params => (c.params as f64, dense.params as f64),
            Metric::Latency => unreachable!(),
        };
        let limit = b.limit(full);
        assert!(got <= limit, "{budget} {allocation:?}: {got} > {limit}");
        // Tight: the allocation does not throw away much more than it must (widths in
        // multiples of 8 leave few choices on 16-channel layers).
        let slack = if round_to == 1 { 0.85 } else { 0.7 };
        assert!(
            got >= slack * limit,
            "{budget} {allocation:?}: {got} far below {limit}"
        );
        if round_to == 8 {
            for grp in groups.iter().filter(|x| x.is_prunable()) {
                let k = sel.kept(&groups, grp.id).len();
                assert!(
                    k.is_multiple_of(8) || k == grp.channels,
                    "group {} keeps {k}",
                    grp.id
                );
            }
        }
    }
}

#[test]
fn global_allocation_keeps_the_most_important_channels() {
    let g = lopper::zoo::build("lenet5", &[1, 28, 28], 10).unwrap();
    let model = Model::init(g.clone(), 0, &Device::flex()).unwrap();
    let groups = channel_groups(&g, &[]).unwrap();
    let mut s = scores(&model, &groups);
    let fc1 = groups.iter().find(|x| x.label(&g) == "fc1").unwrap().id;
    // Channels 0..60 of fc1 matter much more than 60..120.
    s[fc1] = (0..120)
        .map(|c| if c < 60 { 10.0 + c as f64 } else { 0.01 })
        .collect();
    let b: Budget = "params=0.5".parse().unwrap();
    let cm = b.cost_model(&g, &groups, None).unwrap();
    let sel = allocate(&groups, &s, &b, cm.as_ref(), Allocation::Global, 1).unwrap();
    let kept = sel.kept(&groups, fc1);
    assert!(
        kept.len() <= 60 || kept[..60] == (0..60).collect::<Vec<_>>()[..],
        "{kept:?}"
    );
    assert!(kept.iter().all(|&c| c < 60) || kept.len() > 60, "{kept:?}");
}

#[test]
fn unreachable_budget_states_the_smallest_reachable_value() {
    let g = lopper::zoo::build("resnet20", &[3, 32, 32], 10).unwrap();
    let model = Model::init(g.clone(), 0, &Device::flex()).unwrap();
    let groups = channel_groups(&g, &[]).unwrap();
    let b: Budget = "macs=0.001".parse().unwrap();
    let rm = ResourceModel::new(Resource::Macs, &g, &groups);
    let e = allocate(
        &groups,
        &scores(&model, &groups),
        &b,
        &rm,
        Allocation::Uniform,
        1,
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("cannot be met") && e.contains("smallest reachable"),
        "{e}"
    );
}

#[test]
fn taylor_scores_from_data() {
    let g = lopper::zoo::build("resnet20", &[3, 32, 32], 10).unwrap();
    let model = Model::init(g.clone(), 0, &Device::flex()).unwrap();
    let groups = channel_groups(&g, &[]).unwrap();
    let data = Dataset {
        images: (0..16 * 3072).map(|i| (i * 7 % 256) as u8).collect(),
        labels: (0..16).map(|i| (i % 10) as u8).collect(),
        shape: [3, 32, 32],
        classes: (0..10).map(|i| i.to_string()).collect(),
    };
    let batcher = Batcher::new(Arc::new(data), 8, DatasetName::Cifar10.preprocess(), false);
    let s = channel_scores(
        Criterion::Taylor,
        &model,
        &groups,
        Some((&batcher, 2)),
        &Device::flex(),
        0,
    )
    .unwrap();
    for grp in groups.iter().filter(|x| x.is_prunable()) {
        let v = &s[grp.id];
        assert_eq!(v.len(), grp.channels);
        assert!(v.iter().all(|x| x.is_finite() && *x >= 0.0));
        assert!(
            v.iter().any(|x| *x > 0.0),
            "group {} has all-zero Taylor scores",
            grp.id
        );
    }

    // Fed by the gradients of ordinary training steps over the same batches (a ScoreHook in
    // the training loop, weights frozen in effect), the criterion scores as its extra passes
    // did.
    let cfg = TrainConfig {
        model: "resnet20".into(),
        dataset: DatasetName::Cifar10,
        epochs: 1,
        batch_size: 8,
        lr: 1e-12,
        momentum: 0.0,
        weight_decay: 0.0,
        seed: 0,
        ..TrainConfig::default()
    };
    let mut taylor = Taylor::default();
    let train = TrainData {
        train: batcher,
        val: None,
        test: None,
    };
    Trainer::new(cfg, None)
        .unwrap()
        .fit(model.clone(), &train, &mut [&mut ScoreHook(&mut taylor)])
        .unwrap();
    let during = taylor.channel_scores(&model, &groups).unwrap();
    let mut compared = 0;
    for (a, b) in s.iter().flatten().zip(during.iter().flatten()) {
        assert!((a - b).abs() <= 1e-4 * a.abs().max(1e-6), "{a} vs {b}");
        compared += 1;
    }
    assert!(compared > 100, "{compared}");
}

#[test]
fn taylor_scores_compare_across_groups_only_where_every_group_has_batchnorm() {
    use lopper::prune::importance::comparable_across_groups;
    let r20 = lopper::zoo::build("resnet20", &[3, 32, 32], 10).unwrap();
    let lenet = lopper::zoo::build("lenet5", &[1, 28, 28], 10).unwrap();
    let (r20m, lenetm) = (
        Model::init(r20.clone(), 0, &Device::flex()).unwrap(),
        Model::init(lenet.clone(), 0, &Device::flex()).unwrap(),
    );
    let (g20, gl) = (
        channel_groups(&r20, &[]).unwrap(),
        channel_groups(&lenet, &[]).unwrap(),
    );
    assert!(comparable_across_groups(Criterion::Taylor, &r20m, &g20));
    assert!(!comparable_across_groups(Criterion::L1, &r20m, &g20));
    // LeNet-5 has no BatchNorm: its "taylor" scores are filter norms.
    assert!(!comparable_across_groups(Criterion::Taylor, &lenetm, &gl));
}

#[test]
fn a_residual_stream_cut_to_one_channel_is_flagged() {
    let g = lopper::zoo::build("resnet20", &[3, 32, 32], 10).unwrap();
    let model = Model::init(g.clone(), 1, &Device::flex()).unwrap();
    let groups = channel_groups(&g, &[]).unwrap();
    let stream = groups
        .iter()
        .find(|gr| gr.label(&g).starts_with("stem.conv"))
        .unwrap();
    assert!(stream.producers() > 1, "{}", stream.label(&g));
    let inner = groups.iter().find(|gr| gr.producers() == 1).unwrap();
    // Keep `k` channels of group `id`, every channel of the others.
    let pruned_groups = |cuts: &[(usize, usize)]| {
        let keep = groups
            .iter()
            .map(|gr| {
                cuts.iter()
                    .find(|(id, _)| *id == gr.id)
                    .map(|&(_, k)| (0..k).collect::<Vec<usize>>())
            })
            .collect();
        let pruned = prune_model(&model, &groups, &Selection { keep }, &Device::flex()).unwrap();
        channel_groups(&pruned.graph, &[]).unwrap()
    };
    assert_eq!(
        collapsed_streams(&groups, &pruned_groups(&[(stream.id, 1)])),
        vec![stream.id]
    );
    // Two channels, or a single-producer group at one channel, are narrow but not collapsed.
    assert!(collapsed_streams(&groups, &pruned_groups(&[(stream.id, 2)])).is_empty());
    assert!(collapsed_streams(&groups, &pruned_groups(&[(inner.id, 1)])).is_empty());
}

/// Global allocation uses the budget even when every score ties (all zero): the threshold
/// would cut every group to one channel at once; the fill gives back what fits, until no
/// group can take one more channel.
#[test]
fn global_allocation_fills_the_budget_when_scores_tie() {
    let g = lopper::zoo::build("lenet5", &[1, 28, 28], 10).unwrap();
    let groups = channel_groups(&g, &[]).unwrap();
    let rm = ResourceModel::new(Resource::Macs, &g, &groups);
    let scores: Vec<Vec<f64>> = groups
        .iter()
        .map(|x| {
            if x.is_prunable() {
                vec![0.0; x.channels]
            } else {
                vec![]
            }
        })
        .collect();
    let budget: Budget = "macs=0.5".parse().unwrap();
    let limit = budget.limit(rm.dense());
    let sel = allocate(&groups, &scores, &budget, &rm, Allocation::Global, 1).unwrap();
    let r = lopper::prune::keep_ratios(&groups, &sel);
    let cost = rm.eval(&r);
    assert!(cost <= limit, "{cost} > {limit}");
    assert!(
        cost > 0.8 * limit,
        "the budget is left unused: {cost} of {limit}"
    );
    for grp in groups.iter().filter(|x| x.is_prunable()) {
        if sel.kept(&groups, grp.id).len() < grp.channels {
            let mut r2 = r.clone();
            r2[grp.id] += 1.0 / grp.channels as f64;
            assert!(rm.eval(&r2) > limit, "group {} has room", grp.id);
        }
    }
}

/// HALP's knapsack on ResNet-20's MACs: the widths meet the target (filled up to it), every
/// group keeps its top channels, and the kept importance is at least what a uniform cut to the
/// same target keeps: the knapsack spends the budget where the importance is.
#[test]
fn halps_knapsack_keeps_the_most_importance_under_the_target() {
    use lopper::prune::knapsack::Scale;
    use lopper::prune::methods::halp::knapsack_selection;
    use rand::{Rng, SeedableRng};
    let g = lopper::zoo::build("resnet20", &[3, 32, 32], 10).unwrap();
    let groups = channel_groups(&g, &[]).unwrap();
    let budget: Budget = "macs=0.5".parse().unwrap();
    let cm = budget.cost_model(&g, &groups, None).unwrap();
    let dense = cm.dense_cost();
    let mut rng = rand::rngs::StdRng::seed_from_u64(9);
    // Importance that differs between groups by orders of magnitude.
    let scores: Vec<Vec<f64>> = groups
        .iter()
        .map(|gr| {
            let scale = 10f64.powi(rng.random_range(-2..2));
            (0..gr.channels)
                .map(|_| scale * rng.random_range(0.0..1.0))
                .collect()
        })
        .collect();
    let full: Vec<usize> = groups.iter().map(|gr| gr.channels).collect();
    let counts_of = |sel: &Selection| -> Vec<usize> {
        (0..groups.len())
            .map(|i| sel.kept(&groups, i).len())
            .collect()
    };
    let cost_of = |counts: &[usize]| {
        let a: Vec<f64> = groups
            .iter()
            .map(|gr| counts[gr.id] as f64 / gr.channels as f64)
            .collect();
        cm.cost(&a)
    };
    let value_of = |sel: &Selection| -> f64 {
        (0..groups.len())
            .map(|i| {
                sel.kept(&groups, i)
                    .iter()
                    .map(|&c| scores[i][c])
                    .sum::<f64>()
            })
            .sum()
    };
    for target in [0.7 * dense, 0.5 * dense, 0.3 * dense] {
        let sel = knapsack_selection(
            &groups,
            &scores,
            Scale::Raw,
            cm.as_ref(),
            &full,
            target,
            2,
            1,
        )
        .unwrap();
        let counts = counts_of(&sel);
        let cost = cost_of(&counts);
        assert!(cost <= target && cost > 0.97 * target, "{cost} vs {target}");
        for (i, gr) in groups.iter().enumerate() {
            let kept = sel.kept(&groups, i);
            let worst_kept = kept.iter().map(|&c| scores[i][c]).fold(f64::MAX, f64::min);
            let best_cut = (0..gr.channels)
                .filter(|c| !kept.contains(c))
                .map(|c| scores[i][c])
                .fold(f64::MIN, f64::max);
            assert!(worst_kept >= best_cut, "group {i} cut a better channel");
        }
        let b = Budget {
            resource: budget.resource,
            amount: Amount::Absolute(target),
        };
        let uniform = allocate(&groups, &scores, &b, cm.as_ref(), Allocation::Uniform, 1).unwrap();
        assert!(
            value_of(&sel) >= value_of(&uniform),
            "knapsack {} < uniform {}",
            value_of(&sel),
            value_of(&uniform)
        );
    }
}
