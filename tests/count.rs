//! MACs and parameters counted by lopper against totals worked out by hand, layer by layer.

use lopper::count::count;
use lopper::zoo;

/// MACs and params of a k x k convolution producing `out` channels at `hw` x `hw`.
fn conv(cin: u64, cout: u64, k: u64, hw: u64, groups: u64) -> (u64, u64) {
    (
        cout * hw * hw * (cin / groups) * k * k,
        cout * (cin / groups) * k * k,
    )
}

#[test]
fn resnet20_by_hand() {
    let mut macs = 0;
    let mut params = 0;
    let mut add = |(m, p): (u64, u64)| {
        macs += m;
        params += p;
    };
    add(conv(3, 16, 3, 32, 1));
    add((0, 2 * 16)); // stem BN
    let mut cin = 16;
    let mut hw = 32;
    for (stage, w) in [16u64, 32, 64].into_iter().enumerate() {
        for block in 0..3 {
            let stride = if stage > 0 && block == 0 { 2 } else { 1 };
            hw /= stride;
            add(conv(cin, w, 3, hw, 1));
            add(conv(w, w, 3, hw, 1));
            add((0, 2 * 2 * w)); // two BNs
            if stride == 2 {
                add(conv(cin, w, 1, hw, 1));
                add((0, 2 * w));
            }
            cin = w;
        }
    }
    add((64 * 10, 64 * 10 + 10));
    // The totals the issue quotes: about 41 M MACs and 0.27 M parameters.
    assert_eq!((macs, params), (40_813_184, 272_474));
    let c = count(&zoo::build("resnet20", &[3, 32, 32], 10).unwrap());
    assert_eq!((c.macs, c.params), (macs, params));
    assert_eq!(c.flops, 2 * macs);
    assert_eq!(c.layers.iter().map(|l| l.macs).sum::<u64>(), macs);
}

#[test]
fn mobilenet_v2_by_hand() {
    let cfg = [
        (1u64, 16u64, 1, 1u64),
        (6, 24, 2, 1),
        (6, 32, 3, 2),
        (6, 64, 4, 2),
        (6, 96, 3, 1),
        (6, 160, 3, 2),
        (6, 320, 1, 1),
    ];
    let (mut macs, mut params) = (0u64, 0u64);
    let mut add = |(m, p): (u64, u64), bn: u64| {
        macs += m;
        params += p + 2 * bn;
    };
    add(conv(3, 32, 3, 32, 1), 32);
    let (mut cin, mut hw) = (32u64, 32u64);
    for (t, out, n, s) in cfg {
        for i in 0..n {
            let stride = if i == 0 { s } else { 1 };
            let hidden = cin * t;
            if t != 1 {
                add(conv(cin, hidden, 1, hw, 1), hidden);
            }
            hw /= stride;
            add(conv(hidden, hidden, 3, hw, hidden), hidden);
            add(conv(hidden, out, 1, hw, 1), out);
            cin = out;
        }
    }
    add(conv(320, 1280, 1, hw, 1), 1280);
    add((1280 * 10, 1280 * 10 + 10), 0);
    let c = count(&zoo::build("mobilenet_v2", &[3, 32, 32], 10).unwrap());
    assert_eq!((c.macs, c.params), (macs, params));
    // Sanity: the CIFAR MobileNet-v2 (no shortcut convolutions) is about 2.2 M parameters and 88 M MACs.
    assert!((2_200_000..2_300_000).contains(&params), "{params}");
    assert!((85_000_000..95_000_000).contains(&macs), "{macs}");
}

#[test]
fn every_zoo_model_builds_and_counts() {
    for name in zoo::MODEL_NAMES {
        let shape = if matches!(*name, "mlp" | "lenet5") {
            [1, 28, 28]
        } else {
            [3, 32, 32]
        };
        let g = zoo::build(name, &shape, 10).unwrap();
        assert_eq!(g.output_shape(), &[10], "{name}");
        let c = count(&g);
        assert!(c.macs > 0 && c.params > 0, "{name}");
        assert_eq!(c.params as usize, g.num_params());
    }
    // mlp is 784-300-100-10.
    let c = count(&zoo::build("mlp", &[1, 28, 28], 10).unwrap());
    assert_eq!(c.macs, 784 * 300 + 300 * 100 + 100 * 10);
    assert_eq!(c.params, 784 * 300 + 300 + 300 * 100 + 100 + 100 * 10 + 10);
    assert!(
        zoo::build("resnet21", &[3, 32, 32], 10)
            .unwrap_err()
            .to_string()
            .contains("resnet20")
    );
}
