//! Weight initialisation, done on the host with our own seeded generator so that a seed gives
//! the same model on every backend.

use burn::tensor::TensorData;
use rand::{Rng as _, SeedableRng, rngs::StdRng};

use crate::graph::Op;

pub struct Rng(StdRng);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(StdRng::seed_from_u64(seed))
    }

    fn normal(&mut self) -> f32 {
        // Box-Muller; u1 in (0, 1] so the log is finite.
        let u1: f64 = 1.0 - self.0.random::<f64>();
        let u2: f64 = self.0.random::<f64>();
        ((-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()) as f32
    }

    fn uniform(&mut self, bound: f32) -> f32 {
        self.0.random_range(-bound..=bound)
    }
}

/// The initial value of parameter `name` of `op`:
/// - conv weight: Kaiming normal, fan-out mode, ReLU gain (as torchvision's ResNets); bias 0;
/// - linear weight and bias: uniform(±1/sqrt(fan_in)) (PyTorch's default);
/// - normalisation: weight 1, bias 0, running mean 0, running variance 1.
pub fn initial_tensor(op: &Op, name: &str, shape: &[usize], rng: &mut Rng) -> TensorData {
    let n: usize = shape.iter().product();
    let values: Vec<f32> = match (op, name) {
        (Op::Conv2d { .. }, "weight") => {
            let fan_out = (shape[0] * shape[2] * shape[3]) as f32;
            let std = (2.0 / fan_out).sqrt();
            (0..n).map(|_| rng.normal() * std).collect()
        }
        (Op::Linear { in_features, .. }, _) => {
            let bound = 1.0 / (*in_features as f32).sqrt();
            (0..n).map(|_| rng.uniform(bound)).collect()
        }
        (_, "weight") | (_, "running_var") => vec![1.0; n],
        _ => vec![0.0; n],
    };
    TensorData::new(values, shape.to_vec())
}
