//! Helpers shared by the integration tests.
#![allow(dead_code)]

use burn::tensor::{Device, TensorData};
use lopper::graph::Op;
use lopper::model::Model;
use rand::{Rng, SeedableRng, rngs::StdRng};

/// The per-sample input shape of a zoo model.
pub fn shape_for(name: &str) -> [usize; 3] {
    if matches!(name, "mlp" | "lenet5") {
        [1, 28, 28]
    } else {
        [3, 32, 32]
    }
}

/// A zoo model with seeded random weights and random BatchNorm scales, shifts and running
/// statistics, so that eval-mode BatchNorm is far from the identity.
pub fn randomised(graph: &lopper::graph::Graph, seed: u64) -> Model {
    let base = Model::init(graph.clone(), seed, &Device::flex()).unwrap();
    let tensors = base.named_tensors();
    let mut rng = StdRng::seed_from_u64(seed);
    Model::from_tensors(graph.clone(), &Device::flex(), |node, name, _| {
        let full = format!("{}.{name}", node.name);
        let d = tensors.iter().find(|(n, _)| *n == full).unwrap().1.clone();
        if !matches!(node.op, Op::BatchNorm2d { .. }) {
            return Ok(d);
        }
        let n = d.shape()[0];
        let v: Vec<f32> = (0..n)
            .map(|_| match name {
                "weight" => rng.random_range(0.5..1.5),
                "bias" => rng.random_range(-0.2..0.2),
                "running_mean" => rng.random_range(-0.1..0.1),
                _ => rng.random_range(0.5..1.5),
            })
            .collect();
        Ok(TensorData::new(v, [n]))
    })
    .unwrap()
}

/// MNIST-shaped synthetic data with a learnable rule: the label is the brightest of ten
/// horizontal bands.
pub fn synthetic_mnist(n: usize, seed: u64) -> lopper::data::Dataset {
    let mut images = Vec::with_capacity(n * 784);
    let mut labels = Vec::with_capacity(n);
    let mut s = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
    let mut next = || {
        s = s
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (s >> 33) as u32
    };
    for _ in 0..n {
        let label = (next() % 10) as usize;
        for y in 0..28 {
            for _ in 0..28 {
                let band = (y * 10 / 28).min(9);
                let base = if band == label { 180 } else { 40 };
                images.push((base + next() % 60) as u8);
            }
        }
        labels.push(label as u8);
    }
    lopper::data::Dataset {
        images,
        labels,
        shape: [1, 28, 28],
        classes: (0..10).map(|i| i.to_string()).collect(),
    }
}

/// A tensor's values as f64, for host-side checks.
pub fn host_f64<const D: usize>(t: burn::tensor::Tensor<D>) -> Vec<f64> {
    t.into_data()
        .try_to_vec::<f32>()
        .unwrap()
        .into_iter()
        .map(f64::from)
        .collect()
}

/// `bytes` gzipped.
pub fn gz(bytes: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

/// An IDX file: magic `0x0000_08{kind}`, the big-endian dimensions, the body.
pub fn idx(kind: u8, dims: &[u32], body: &[u8]) -> Vec<u8> {
    let mut v = vec![0, 0, 8, kind];
    for d in dims {
        v.extend(d.to_be_bytes());
    }
    v.extend(body);
    v
}

/// A `w`x`h` PNG whose pixels are (seed, x, y).
pub fn png(w: u32, h: u32, seed: u8) -> Vec<u8> {
    let img = image::RgbImage::from_fn(w, h, |x, y| image::Rgb([seed, x as u8, y as u8]));
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png).unwrap();
    out.into_inner()
}

/// A masked weight layer of `shape` (node 0), for the weight-mask and PDP tests.
pub fn weight_layer(shape: &[usize]) -> lopper::prune::weights::WeightLayer {
    lopper::prune::weights::WeightLayer {
        node: 0,
        name: "l".into(),
        shape: shape.to_vec(),
        dense: None,
    }
}
