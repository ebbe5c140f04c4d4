//! Model zoo: graph builders for the networks the papers prune, sized for MNIST/CIFAR inputs.

use crate::error::{LopperError, Result};
use crate::graph::{Graph, GraphBuilder, Op};

/// Names accepted by [`build`].
pub const MODEL_NAMES: &[&str] = &[
    "mlp",
    "lenet5",
    "vgg11",
    "vgg16",
    "resnet20",
    "resnet32",
    "resnet56",
    "mobilenet_v1",
    "mobilenet_v2",
];

/// What a zoo model trains well with when the user does not say: run configurations and flags
/// override it. The networks without BatchNorm (mlp, lenet5) diverge or stall at the rate
/// that suits the BatchNorm networks (0.1 gave LeNet-5 93.6–97% in 2 epochs, 0.05 with batch 64
/// gives 99%, BENCHMARKS.md b).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Recipe {
    pub lr: f64,
    pub batch_size: usize,
    /// Fine-tuning epochs of a prune of this model.
    pub finetune_epochs: usize,
}

/// The default recipe of a model; models lopper does not know get the BatchNorm networks'.
pub fn recipe(name: &str) -> Recipe {
    match name {
        "mlp" | "lenet5" => Recipe {
            lr: 0.05,
            batch_size: 64,
            finetune_epochs: 1,
        },
        _ => Recipe {
            lr: 0.1,
            batch_size: 128,
            finetune_epochs: 2,
        },
    }
}

/// Builds the named model for inputs of per-sample shape `[C, H, W]` and `classes` outputs.
pub fn build(name: &str, input_shape: &[usize], classes: usize) -> Result<Graph> {
    if input_shape.len() != 3 {
        return Err(LopperError::Config(format!(
            "zoo models take a [C, H, W] input shape, got {input_shape:?}"
        )));
    }
    if classes == 0 {
        return Err(LopperError::Config(
            "the class count must be positive".into(),
        ));
    }
    match name {
        "mlp" => mlp(input_shape, classes),
        "lenet5" => lenet5(input_shape, classes),
        "vgg11" => vgg(name, input_shape, classes, VGG11),
        "vgg16" => vgg(name, input_shape, classes, VGG16),
        "resnet20" => resnet(name, input_shape, classes, 3),
        "resnet32" => resnet(name, input_shape, classes, 5),
        "resnet56" => resnet(name, input_shape, classes, 9),
        "mobilenet_v1" => mobilenet_v1(input_shape, classes),
        "mobilenet_v2" => mobilenet_v2(input_shape, classes),
        _ => Err(LopperError::Unknown {
            kind: "model",
            name: name.into(),
            known: MODEL_NAMES.join(", "),
        }),
    }
}

/// 784-300-100-10 (for MNIST; any input is flattened first).
fn mlp(input: &[usize], classes: usize) -> Result<Graph> {
    let mut b = GraphBuilder::new("mlp", input);
    let x = b.op("flatten", Op::Flatten, 0);
    let x = b.linear("fc1", x, 300, true);
    let x = b.relu("relu1", x);
    let x = b.linear("fc2", x, 100, true);
    let x = b.relu("relu2", x);
    let x = b.linear("fc3", x, classes, true);
    b.finish(x)
}

/// LeNet-5 with ReLU and max pooling; conv1 pads by 2 so 28x28 keeps its size.
fn lenet5(input: &[usize], classes: usize) -> Result<Graph> {
    let mut b = GraphBuilder::new("lenet5", input);
    let x = b.conv("conv1", 0, 6, 5, 1, 2, 1, true);
    let x = b.relu("relu1", x);
    let x = b.max_pool("pool1", x, 2, 2);
    let x = b.conv("conv2", x, 16, 5, 1, 0, 1, true);
    let x = b.relu("relu2", x);
    let x = b.max_pool("pool2", x, 2, 2);
    let x = b.op("flatten", Op::Flatten, x);
    let x = b.linear("fc1", x, 120, true);
    let x = b.relu("relu3", x);
    let x = b.linear("fc2", x, 84, true);
    let x = b.relu("relu4", x);
    let x = b.linear("fc3", x, classes, true);
    b.finish(x)
}

/// 0 marks a 2x2 max pool.
const VGG11: &[usize] = &[64, 0, 128, 0, 256, 256, 0, 512, 512, 0, 512, 512, 0];
const VGG16: &[usize] = &[
    64, 64, 0, 128, 128, 0, 256, 256, 256, 0, 512, 512, 512, 0, 512, 512, 512, 0,
];

/// CIFAR VGG with BatchNorm: conv-bn-relu stages, flatten, one linear classifier.
fn vgg(name: &str, input: &[usize], classes: usize, cfg: &[usize]) -> Result<Graph> {
    let mut b = GraphBuilder::new(name, input);
    let mut x = 0;
    let (mut conv_i, mut pool_i) = (0, 0);
    for &c in cfg {
        if c == 0 {
            pool_i += 1;
            x = b.max_pool(&format!("pool{pool_i}"), x, 2, 2);
        } else {
            conv_i += 1;
            x = b.conv_bn_act(&format!("features.{conv_i}"), x, c, 3, 1, 1, Some(Op::Relu));
        }
    }
    let x = b.op("flatten", Op::Flatten, x);
    let x = b.linear("classifier", x, classes, true);
    b.finish(x)
}

/// CIFAR ResNet (He et al. 2016, sec. 4.2) with `n` basic blocks per stage, widths 16/32/64,
/// 1x1 conv + BN projection shortcuts where the shape changes.
fn resnet(name: &str, input: &[usize], classes: usize, n: usize) -> Result<Graph> {
    let mut b = GraphBuilder::new(name, input);
    let mut x = b.conv_bn_act("stem", 0, 16, 3, 1, 1, Some(Op::Relu));
    for (stage, width) in [16usize, 32, 64].into_iter().enumerate() {
        for block in 0..n {
            let stride = if stage > 0 && block == 0 { 2 } else { 1 };
            let p = format!("stage{}.block{block}", stage + 1);
            let y = b.conv(&format!("{p}.conv1"), x, width, 3, stride, 1, 1, false);
            let y = b.bn(&format!("{p}.bn1"), y);
            let y = b.relu(&format!("{p}.relu1"), y);
            let y = b.conv(&format!("{p}.conv2"), y, width, 3, 1, 1, 1, false);
            let y = b.bn(&format!("{p}.bn2"), y);
            let shortcut = if stride != 1 || b.shape(x)[0] != width {
                let s = b.conv(
                    &format!("{p}.shortcut.conv"),
                    x,
                    width,
                    1,
                    stride,
                    0,
                    1,
                    false,
                );
                b.bn(&format!("{p}.shortcut.bn"), s)
            } else {
                x
            };
            let sum = b.push(&format!("{p}.add"), Op::Add, &[y, shortcut]);
            x = b.relu(&format!("{p}.relu2"), sum);
        }
    }
    let x = b.op("pool", Op::GlobalAvgPool, x);
    let x = b.linear("fc", x, classes, true);
    b.finish(x)
}

/// CIFAR MobileNet-v1: 3x3 stem at stride 1, 13 depthwise-separable blocks.
fn mobilenet_v1(input: &[usize], classes: usize) -> Result<Graph> {
    const CFG: &[(usize, usize)] = &[
        (64, 1),
        (128, 2),
        (128, 1),
        (256, 2),
        (256, 1),
        (512, 2),
        (512, 1),
        (512, 1),
        (512, 1),
        (512, 1),
        (512, 1),
        (1024, 2),
        (1024, 1),
    ];
    let mut b = GraphBuilder::new("mobilenet_v1", input);
    let mut x = b.conv_bn_act("stem", 0, 32, 3, 1, 1, Some(Op::Relu));
    for (i, &(out, stride)) in CFG.iter().enumerate() {
        let c = b.shape(x)[0];
        let dw = b.conv(&format!("block{i}.dw.conv"), x, c, 3, stride, 1, c, false);
        let dw = b.bn(&format!("block{i}.dw.bn"), dw);
        let dw = b.relu(&format!("block{i}.dw.act"), dw);
        x = b.conv_bn_act(&format!("block{i}.pw"), dw, out, 1, 1, 1, Some(Op::Relu));
    }
    let x = b.op("pool", Op::GlobalAvgPool, x);
    let x = b.linear("fc", x, classes, true);
    b.finish(x)
}

/// CIFAR MobileNet-v2: inverted residuals with ReLU6, stride-1 stem, 1x1 head to 1280.
fn mobilenet_v2(input: &[usize], classes: usize) -> Result<Graph> {
    // (expansion, out channels, blocks, stride of the first block)
    const CFG: &[(usize, usize, usize, usize)] = &[
        (1, 16, 1, 1),
        (6, 24, 2, 1),
        (6, 32, 3, 2),
        (6, 64, 4, 2),
        (6, 96, 3, 1),
        (6, 160, 3, 2),
        (6, 320, 1, 1),
    ];
    let mut b = GraphBuilder::new("mobilenet_v2", input);
    let mut x = b.conv_bn_act("stem", 0, 32, 3, 1, 1, Some(Op::Relu6));
    let mut i = 0;
    for &(t, out, n, s) in CFG {
        for k in 0..n {
            let stride = if k == 0 { s } else { 1 };
            let c = b.shape(x)[0];
            let hidden = c * t;
            let p = format!("block{i}");
            let mut y = x;
            if t != 1 {
                y = b.conv_bn_act(&format!("{p}.expand"), y, hidden, 1, 1, 1, Some(Op::Relu6));
            }
            y = b.conv_bn_act(
                &format!("{p}.dw"),
                y,
                hidden,
                3,
                stride,
                hidden,
                Some(Op::Relu6),
            );
            y = b.conv_bn_act(&format!("{p}.project"), y, out, 1, 1, 1, None);
            x = if stride == 1 && c == out {
                b.push(&format!("{p}.add"), Op::Add, &[y, x])
            } else {
                y
            };
            i += 1;
        }
    }
    let x = b.conv_bn_act("head", x, 1280, 1, 1, 1, Some(Op::Relu6));
    let x = b.op("pool", Op::GlobalAvgPool, x);
    let x = b.op("dropout", Op::Dropout { p: 0.2 }, x);
    let x = b.linear("fc", x, classes, true);
    b.finish(x)
}
