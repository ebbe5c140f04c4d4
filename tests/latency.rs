//! Latency profiles and the latency model: consistency with the profile, gradients, budgets.

use burn::tensor::Device;
use lopper::prune::latency::{LatencyModel, LatencyProfile, profile};
use lopper::prune::{Allocation, Budget, allocate, channel_groups, keep_ratios};

#[test]
fn latency_model_matches_profile_and_has_gradients() {
    let dev = Device::flex();
    let g = lopper::zoo::build("resnet20", &[3, 32, 32], 10).unwrap();
    let p = profile(&g, &dev, "cpu", 1, 3, |_, _| {}).unwrap();
    assert!(p.dense_ms > 0.0);
    assert!(
        p.nodes
            .iter()
            .all(|t| t.ms.iter().flatten().all(|v| v.is_finite() && *v >= 0.0))
    );
    // Round trip through the file format.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p.json");
    p.save(&path).unwrap();
    let p = LatencyProfile::load(&path).unwrap();
    let groups = channel_groups(&g, &[]).unwrap();
    let m = LatencyModel::new(&p, &g, &groups).unwrap();
    // At full width the model reproduces the measured dense latency by construction, and at
    // the floor (every group at 1/8, rounded up) the measured floor latency.
    assert!((m.dense() - p.dense_ms).abs() < 1e-9);
    let floor_ms = p.floor_ms.expect("a floor measurement");
    assert!(
        floor_ms > 0.0 && floor_ms < p.dense_ms,
        "floor {floor_ms} ms"
    );
    let floor: Vec<f64> = groups
        .iter()
        .map(|x| {
            if x.is_prunable() {
                x.channels.div_ceil(8) as f64 / x.channels as f64
            } else {
                1.0
            }
        })
        .collect();
    assert!(
        (m.eval(&floor) - floor_ms).abs() < 1e-9 * floor_ms,
        "the model at the floor: {} ms, measured {floor_ms} ms",
        m.eval(&floor)
    );
    assert!(m.scale() > 0.0 && m.scale() != 1.0);
    // The gradient is the slope of the piecewise-linear interpolation.
    let a: Vec<f64> = (0..groups.len())
        .map(|i| 0.33 + 0.05 * (i % 7) as f64)
        .collect();
    let grad = m.grad(&a);
    for k in 0..a.len() {
        let (mut up, mut down) = (a.clone(), a.clone());
        up[k] += 1e-6;
        down[k] -= 1e-6;
        let fd = (m.eval(&up) - m.eval(&down)) / 2e-6;
        assert!(
            (fd - grad[k]).abs() <= 1e-6 * fd.abs().max(1.0),
            "group {k}: {fd} vs {}",
            grad[k]
        );
    }
    // A latency budget is met by the prediction, and a profile of another model is refused.
    let b: Budget = "latency=0.6".parse().unwrap();
    let cm = b.cost_model(&g, &groups, Some(&p)).unwrap();
    let scores: Vec<Vec<f64>> = groups
        .iter()
        .map(|x| {
            if x.is_prunable() {
                vec![1.0; x.channels]
            } else {
                vec![]
            }
        })
        .collect();
    let sel = allocate(&groups, &scores, &b, cm.as_ref(), Allocation::Uniform, 1).unwrap();
    assert!(cm.cost(&keep_ratios(&groups, &sel)) <= 0.6 * cm.dense_cost() + 1e-9);
    let other = lopper::zoo::build("lenet5", &[1, 28, 28], 10).unwrap();
    let og = channel_groups(&other, &[]).unwrap();
    let e = LatencyModel::new(&p, &other, &og)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("profile"), "{e}");
    assert!(
        b.cost_model(&g, &groups, None)
            .err()
            .unwrap()
            .to_string()
            .contains("--profile")
    );
    let ms: Budget = "latency=2.5ms".parse().unwrap();
    assert_eq!(ms.to_string(), "latency=2.5ms");
}

/// The build-and-measure search lands in [0.9, 1] of the budget on a "device" whose latency
/// is not what the cost model predicts (here: a fixed 30% plus a curve of the predicted
/// cost), keeps the best candidate, and returns the fastest one when nothing fits.
#[test]
fn calibration_lands_in_the_window_of_the_measurement() {
    use lopper::prune::measured::calibrate;
    let device = |predicted: &f64| 0.3 + 0.7 * predicted.max(0.0).powf(0.6);
    let mut rounds = vec![];
    let (built, measured) = calibrate(0.5, 0.5, 5, Ok, device, |r, lim, ms| {
        rounds.push((r, lim, ms))
    })
    .unwrap();
    assert!(
        (0.45..=0.5).contains(&measured),
        "measured {measured} after {rounds:?}"
    );
    assert_eq!(measured, device(&built));
    // The first round (the prediction taken at its word) misses: 0.3 + 0.7 * 0.5^0.6 > 0.5.
    assert!(rounds[0].2 > 0.5 && rounds.len() > 1, "{rounds:?}");
    // Nothing reaches the budget: the fastest build is returned.
    let (built, measured) = calibrate(0.1, 0.1, 3, Ok, device, |_, _, _| {}).unwrap();
    assert!(measured > 0.1);
    let fastest = device(&built);
    assert!(fastest <= device(&0.1) + 1e-12);
    // A failing first build is an error; a failing later one ends the search.
    assert!(
        calibrate(
            0.5,
            0.5,
            3,
            |_| Err::<f64, _>(lopper::LopperError::Config("x".into())),
            device,
            |_, _, _| {}
        )
        .is_err()
    );
    let mut n = 0;
    let (built, _) = calibrate(
        0.5,
        0.5,
        5,
        |lim| {
            n += 1;
            if n == 1 {
                Ok(lim)
            } else {
                Err(lopper::LopperError::Config("out of reach".into()))
            }
        },
        device,
        |_, _, _| {},
    )
    .unwrap();
    assert_eq!(built, 0.5);
}

/// The paired statistic ranks a model against its reference the right way round, and a model
/// against itself near 1 (wide bounds: this is the mechanics, not a speed target).
#[test]
fn relative_latency_orders_a_cut_model_below_its_reference() {
    use lopper::model::Model;
    use lopper::prune::latency::{LatencyMeter, relative_latency};
    use lopper::prune::{Selection, prune_model};
    let dev = Device::flex();
    let g = lopper::zoo::build("resnet20", &[3, 32, 32], 10).unwrap();
    let groups = channel_groups(&g, &[]).unwrap();
    let dense = Model::init(g.clone(), 0, &dev).unwrap();
    // Every block-internal convolution cut to 1/16 of its channels: about 8% of the MACs.
    let mut sel = Selection::all(&groups);
    for grp in groups
        .iter()
        .filter(|x| x.is_prunable() && x.label(&g).contains("conv1"))
    {
        sel.keep[grp.id] = Some((0..grp.channels / 16).collect());
    }
    let small = prune_model(&dense, &groups, &sel, &dev).unwrap();
    let down = relative_latency(&small, &dense, 8, 30, &dev);
    let up = relative_latency(&dense, &small, 8, 30, &dev);
    let same = relative_latency(&dense, &dense, 8, 30, &dev);
    assert!(down < 0.8, "cut model at {down} of the dense latency");
    assert!(up > 1.25, "dense model at {up} of the cut one's latency");
    assert!((0.7..1.4).contains(&same), "a model against itself: {same}");
    let meter = LatencyMeter {
        reference: &dense,
        reference_ms: 10.0,
        batch: 8,
        reps: 30,
        device: dev.clone(),
    };
    let ms = meter.ms(&small);
    assert!(
        ms > 0.0 && ms < 8.0,
        "meter: {ms} ms against a 10 ms reference"
    );
}

/// The measured fill after a calibration that ends under the window: on a "device" where a
/// second channel in group 0 makes group 1 cost almost twice as much (a step the linear
/// prediction misses, like LeNet-5's first convolution at batch 64), it grows the groups the
/// prediction can close the gap with, pays for group 0's step with group 1's channels once
/// growing alone is over, lands in [0.9, 1] of the budget and never keeps a build over it.
#[test]
fn fill_reaches_the_window_past_a_step_the_prediction_misses() {
    use lopper::prune::measured::{FillStep, fill};
    let device = |c: &[usize]| {
        let jump = if c[0] >= 2 { 0.08 * c[1] as f64 } else { 0.0 };
        1.0 + 0.05 * c[0] as f64 + 0.1 * c[1] as f64 + 0.001 * c[2] as f64 + jump
    };
    let predict = |c: &[usize]| 1.0 + 0.05 * c[0] as f64 + 0.1 * c[1] as f64 + 0.001 * c[2] as f64;
    // Every channel is worth the same; ties go to the cheaper prediction.
    let value = |_: usize, _: usize| 1.0;
    let run = |start: Vec<usize>, limit: f64| {
        let mut steps: Vec<FillStep> = vec![];
        let measured = device(&start);
        let (counts, built, ms) = fill(
            limit,
            (start.clone(), start, measured),
            (&[1, 1, 1], &[6, 16, 120]),
            1,
            value,
            predict,
            |c| Ok(c.to_vec()),
            |c: &Vec<usize>| device(c),
            16,
            |s| steps.push(s),
        )
        .unwrap();
        assert_eq!(counts, built);
        assert_eq!(ms, device(&counts));
        (counts, ms, steps)
    };

    // Past the step, latency is linear in the widths (at another slope than predicted):
    // growth alone closes the gap.
    let (counts, ms, steps) = run(vec![2, 4, 60], 2.5);
    assert!(device(&[2, 4, 60]) < 0.8 * 2.5);
    assert!((0.9 * 2.5..=2.5).contains(&ms), "{ms} after {steps:?}");
    assert!(counts[1] > 4, "{counts:?}");
    assert!(steps.iter().all(|s| s.removed.is_empty()), "{steps:?}");

    // Only group 0 can grow, and growing it alone is over the budget: an exchange.
    let (counts, ms, steps) = run(vec![1, 16, 120], 3.3);
    assert!(device(&[1, 16, 120]) < 0.9 * 3.3);
    assert!((0.9 * 3.3..=3.3).contains(&ms), "{ms} after {steps:?}");
    assert_eq!(counts[0], 2, "{counts:?}");
    assert!(counts[1] < 16, "{counts:?}");
    let exchange = steps.iter().find(|s| s.accepted && !s.removed.is_empty());
    assert!(exchange.is_some(), "{steps:?}");
    for s in &steps {
        assert!(s.measured <= 3.3 || !s.accepted, "{s:?}");
    }
    // The first exchange's try (paying for the measured excess at the predicted rate) is
    // too much, so the search along the exchange path took more than one build.
    assert!(
        steps.iter().filter(|s| !s.removed.is_empty()).count() > 1,
        "{steps:?}"
    );

    // In the window already: nothing is built.
    let (counts, _, steps) = run(vec![1, 16, 120], 2.9);
    assert_eq!(counts, vec![1, 16, 120]);
    assert!(steps.is_empty());
}
