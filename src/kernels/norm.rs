//! BatchNorm's training forward and backward on NCHW `f32` data, each in two passes over the
//! activations (Burn's composed op takes about six forward and ten backward, through strided
//! reductions).
//!
//! - Forward: per-channel mean, then biased variance around it (two reads, accumulated in
//!   `f64` so a large batch loses nothing), then `y = x·scale + shift` in one pass.
//! - Backward: per-channel `Σdy` and `Σdy·(x−mean)` in one read of `x` and `dy`, then
//!   `dx = a·dy + b·x + c` per channel in one pass, with `a = γ/σ`,
//!   `b = −γ·Σdy(x−mean)/(M·σ³)` and `c = −a·Σdy/M − b·mean` (`M = N·H·W`, `σ = √(var+ε)`).
//!
//! Statistics run in parallel over channels, the element-wise passes over images.

use rayon::prelude::*;

/// The geometry of a BatchNorm input: `[batch, channels, spatial]` with `spatial = H·W`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NormShape {
    pub batch: usize,
    pub channels: usize,
    pub spatial: usize,
}

impl NormShape {
    pub fn len(&self) -> usize {
        self.batch * self.channels * self.spatial
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Elements per channel: `N·H·W`.
    fn count(&self) -> usize {
        self.batch * self.spatial
    }

    /// The rows (one per image) of channel `c` in an NCHW buffer.
    fn rows<'a>(&self, t: &'a [f32], c: usize) -> impl Iterator<Item = &'a [f32]> + 'a {
        let (cs, hw) = (self.channels * self.spatial, self.spatial);
        (0..self.batch).map(move |n| &t[n * cs + c * hw..][..hw])
    }
}

/// The training forward pass: the output, the batch mean and the biased batch variance.
pub fn batch_norm_train(
    x: &[f32],
    gamma: &[f32],
    beta: &[f32],
    eps: f64,
    s: &NormShape,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    assert_eq!(x.len(), s.len(), "batch_norm_train: input size");
    assert_eq!(gamma.len(), s.channels, "batch_norm_train: gamma size");
    assert_eq!(beta.len(), s.channels, "batch_norm_train: beta size");
    let m = s.count().max(1) as f64;
    let stats: Vec<(f64, f64)> = (0..s.channels)
        .into_par_iter()
        .map(|c| {
            let mean = s
                .rows(x, c)
                .map(|r| r.iter().map(|&v| v as f64).sum::<f64>())
                .sum::<f64>()
                / m;
            let var = s
                .rows(x, c)
                .map(|r| {
                    r.iter()
                        .map(|&v| {
                            let d = v as f64 - mean;
                            d * d
                        })
                        .sum::<f64>()
                })
                .sum::<f64>()
                / m;
            (mean, var)
        })
        .collect();
    let (scale, shift): (Vec<f32>, Vec<f32>) = stats
        .iter()
        .enumerate()
        .map(|(c, &(mean, var))| {
            let a = gamma[c] as f64 / (var + eps).sqrt();
            (a as f32, (beta[c] as f64 - mean * a) as f32)
        })
        .unzip();
    let mut y = vec![0.0f32; s.len()];
    let image = s.channels * s.spatial;
    if image > 0 {
        y.par_chunks_mut(image)
            .zip(x.par_chunks(image))
            .for_each(|(yn, xn)| {
                for (c, (yr, xr)) in yn
                    .chunks_mut(s.spatial)
                    .zip(xn.chunks(s.spatial))
                    .enumerate()
                {
                    let (a, b) = (scale[c], shift[c]);
                    yr.iter_mut().zip(xr).for_each(|(o, &v)| *o = v * a + b);
                }
            });
    }
    let mean = stats.iter().map(|&(mu, _)| mu as f32).collect();
    let var = stats.iter().map(|&(_, v)| v as f32).collect();
    (y, mean, var)
}

/// The backward pass of [`batch_norm_train`] given the output gradient `dy`: the gradients of
/// the input, `gamma` and `beta`.
pub fn batch_norm_train_backward(
    x: &[f32],
    gamma: &[f32],
    mean: &[f32],
    var: &[f32],
    eps: f64,
    dy: &[f32],
    s: &NormShape,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    assert_eq!(x.len(), s.len(), "batch_norm_train_backward: input size");
    assert_eq!(
        dy.len(),
        s.len(),
        "batch_norm_train_backward: gradient size"
    );
    let m = s.count().max(1) as f64;
    // Per channel: Σdy and Σdy·(x − mean).
    let sums: Vec<(f64, f64)> = (0..s.channels)
        .into_par_iter()
        .map(|c| {
            let mu = mean[c];
            s.rows(x, c)
                .zip(s.rows(dy, c))
                .map(|(xr, gr)| {
                    xr.iter()
                        .zip(gr)
                        .fold((0.0f64, 0.0f64), |(a, b), (&v, &g)| {
                            (a + g as f64, b + (g * (v - mu)) as f64)
                        })
                })
                .fold((0.0, 0.0), |(a, b), (p, q)| (a + p, b + q))
        })
        .collect();
    let mut dgamma = Vec::with_capacity(s.channels);
    let mut dbeta = Vec::with_capacity(s.channels);
    let mut coef = Vec::with_capacity(s.channels);
    for (c, &(sum_dy, sum_dyx)) in sums.iter().enumerate() {
        let inv = 1.0 / (var[c] as f64 + eps).sqrt();
        let a = gamma[c] as f64 * inv;
        let b = -a * inv * inv * sum_dyx / m;
        let k = -a * sum_dy / m - b * mean[c] as f64;
        dgamma.push((sum_dyx * inv) as f32);
        dbeta.push(sum_dy as f32);
        coef.push((a as f32, b as f32, k as f32));
    }
    let mut dx = vec![0.0f32; s.len()];
    let image = s.channels * s.spatial;
    if image > 0 {
        dx.par_chunks_mut(image)
            .zip(x.par_chunks(image).zip(dy.par_chunks(image)))
            .for_each(|(dxn, (xn, gn))| {
                for (c, (o, (xr, gr))) in dxn
                    .chunks_mut(s.spatial)
                    .zip(xn.chunks(s.spatial).zip(gn.chunks(s.spatial)))
                    .enumerate()
                {
                    let (a, b, k) = coef[c];
                    for ((d, &v), &g) in o.iter_mut().zip(xr).zip(gr) {
                        *d = a * g + b * v + k;
                    }
                }
            });
    }
    (dx, dgamma, dbeta)
}
