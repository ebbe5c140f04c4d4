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
    // At full width the model reproduces the measured dense latency by construction.
    assert!((m.dense() - p.dense_ms).abs() < 1e-9);
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
