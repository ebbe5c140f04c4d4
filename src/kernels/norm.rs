//! BatchNorm's training forward and backward on NCHW `f32` data, each in two passes over the
//! activations (Burn's composed op takes about six forward and ten backward, through strided
//! reductions).
//!
//! - Forward: per image row of a channel, its mean and squared deviations (`f32` lanes; the
//!   row is still in L1 for the second read), rows combined exactly in `f64`; then
//!   `y = x·scale + shift` in one pass.
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
            // Per image row: its mean and the squared deviations around it (the row is in L1
            // for the second read); rows combine exactly in f64 (Chan et al.).
            let rows: Vec<(f64, f64)> = s
                .rows(x, c)
                .map(|r| {
                    let mu = lanes_sum(r, |v| v) / r.len().max(1) as f32;
                    (mu as f64, lanes_sum(r, |v| (v - mu) * (v - mu)) as f64)
                })
                .collect();
            let hw = s.spatial as f64;
            let mean = rows.iter().map(|&(mu, _)| mu).sum::<f64>() / s.batch.max(1) as f64;
            let m2: f64 = rows
                .iter()
                .map(|&(mu, m2)| m2 + hw * (mu - mean) * (mu - mean))
                .sum();
            (mean, m2 / m)
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
    // Per channel: Σdy and Σdy·(x − mean), in f32 lanes per image row, rows summed in f64.
    let sums: Vec<(f64, f64)> = (0..s.channels)
        .into_par_iter()
        .map(|c| {
            let mu = mean[c];
            s.rows(x, c)
                .zip(s.rows(dy, c))
                .map(|(xr, gr)| {
                    let (a, b) = lanes_dot(xr, gr, mu);
                    (a as f64, b as f64)
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

const LANES: usize = 8;

/// `Σ f(v)` over a row, in `LANES` independent accumulators so the compiler vectorises it.
#[inline(always)]
fn lanes_sum(r: &[f32], f: impl Fn(f32) -> f32) -> f32 {
    let mut acc = [0.0f32; LANES];
    let chunks = r.chunks_exact(LANES);
    let tail = chunks.remainder();
    for ch in chunks {
        for (a, &v) in acc.iter_mut().zip(ch) {
            *a += f(v);
        }
    }
    acc.iter().sum::<f32>() + tail.iter().map(|&v| f(v)).sum::<f32>()
}

/// `(Σ g, Σ g·(x − mu))` over a row pair, in `LANES` independent accumulators.
#[inline(always)]
fn lanes_dot(x: &[f32], g: &[f32], mu: f32) -> (f32, f32) {
    let (mut a, mut b) = ([0.0f32; LANES], [0.0f32; LANES]);
    let (xc, gc) = (x.chunks_exact(LANES), g.chunks_exact(LANES));
    let (xt, gt) = (xc.remainder(), gc.remainder());
    for (xs, gs) in xc.zip(gc) {
        for l in 0..LANES {
            a[l] += gs[l];
            b[l] += gs[l] * (xs[l] - mu);
        }
    }
    let (mut sa, mut sb) = (a.iter().sum::<f32>(), b.iter().sum::<f32>());
    for (&v, &d) in xt.iter().zip(gt) {
        sa += d;
        sb += d * (v - mu);
    }
    (sa, sb)
}

/// `Σ a·b` in `LANES` independent accumulators (vectorised).
pub(crate) fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; LANES];
    let (ac, bc) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let tail: f32 = ac
        .remainder()
        .iter()
        .zip(bc.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (xs, ys) in ac.zip(bc) {
        for l in 0..LANES {
            acc[l] += xs[l] * ys[l];
        }
    }
    acc.iter().sum::<f32>() + tail
}
