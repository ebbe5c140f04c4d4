//! BatchNorm's training forward and backward on NCHW `f32` data, each in two passes over the
//! activations (Burn's composed op takes about six forward and ten backward, through strided
//! reductions), with the channel mask and the ReLU that follow it folded in ([`Epilogue`]):
//! the masked, activated output costs no pass of its own.
//!
//! - Forward: per image row of a channel, its mean and squared deviations (`f32` lanes; the
//!   row is still in L1 for the second read), rows combined exactly in `f64`; then
//!   `y = max(x·a + b, 0)` in one pass, `a = m·γ/σ`, `b = m·(β − mean·γ/σ)` for mask `m`.
//! - Backward: with `g = dy` where the ReLU let the value through (the gate recomputed from
//!   `x`), per-channel `Σg` and `Σg·(x−mean)` in one read of `x` and `dy`, then
//!   `dx = a·g + b·x + c` per channel in one pass, with `a = m·γ/σ`,
//!   `b = −a·Σg(x−mean)/(M·σ²)` and `c = −a·Σg/M − b·mean` (`M = N·H·W`, `σ = √(var+ε)`);
//!   the mask's gradient `γ/σ·Σg(x−mean) + β·Σg` comes from the same sums.
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

/// The rectifier after a BatchNorm that its kernels apply in their element-wise pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Rectifier {
    /// None: the normalised (and scaled) value itself.
    #[default]
    None,
    /// `max(z, 0)`.
    Relu,
    /// `min(max(z, 0), 6)` (MobileNet-v2's).
    Relu6,
}

impl Rectifier {
    /// `z` rectified.
    #[inline(always)]
    fn apply(self, z: f32) -> f32 {
        match self {
            Rectifier::None => z,
            Rectifier::Relu => z.max(0.0),
            Rectifier::Relu6 => z.clamp(0.0, 6.0),
        }
    }

    /// Whether the gradient passes at `z`, as Burn's ops pass it: `relu` for `z > 0`, and
    /// `relu6` (a clamp, by masked fills) on the closed interval `[0, 6]`.
    #[inline(always)]
    fn passes(self, z: f32) -> bool {
        match self {
            Rectifier::None => true,
            Rectifier::Relu => z > 0.0,
            Rectifier::Relu6 => (0.0..=6.0).contains(&z),
        }
    }
}

/// What BatchNorm's kernels fold into their element-wise pass: a per-channel factor (the
/// channel mask the pruning methods put on the output, all ones without one) and the rectifier
/// that follows: `y = rect(scale·(γ·x̂ + β))`, the mask applied before the rectifier as the
/// executor applies it to the BatchNorm's output (for ReLU and `scale ≥ 0`, the same as after).
#[derive(Debug, Clone, Copy)]
pub struct Epilogue<'a> {
    pub scale: &'a [f32],
    pub relu: Rectifier,
}

/// Per channel the `(a, b)` of `y = x·a + b` before the ReLU. Forward and backward compute it
/// with this one function from the same `f32` statistics, so the backward's ReLU gate is
/// bit-for-bit the forward's.
fn affine(gamma: f32, beta: f32, scale: f32, mean: f32, var: f32, eps: f64) -> (f32, f32) {
    let a = gamma as f64 / (var as f64 + eps).sqrt();
    let m = scale as f64;
    ((m * a) as f32, (m * (beta as f64 - mean as f64 * a)) as f32)
}

/// The training forward pass: the output, the batch mean and the biased batch variance.
pub fn batch_norm_train(
    x: &[f32],
    gamma: &[f32],
    beta: &[f32],
    eps: f64,
    epilogue: Epilogue,
    s: &NormShape,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    assert_eq!(x.len(), s.len(), "batch_norm_train: input size");
    assert_eq!(gamma.len(), s.channels, "batch_norm_train: gamma size");
    assert_eq!(beta.len(), s.channels, "batch_norm_train: beta size");
    assert_eq!(
        epilogue.scale.len(),
        s.channels,
        "batch_norm_train: scale size"
    );
    let m = s.count().max(1) as f64;
    let (mean, var): (Vec<f32>, Vec<f32>) = (0..s.channels)
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
            (mean as f32, (m2 / m) as f32)
        })
        .unzip();
    let coef: Vec<(f32, f32)> = (0..s.channels)
        .map(|c| affine(gamma[c], beta[c], epilogue.scale[c], mean[c], var[c], eps))
        .collect();
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
                    let (a, b) = coef[c];
                    match epilogue.relu {
                        Rectifier::None => yr.iter_mut().zip(xr).for_each(|(o, &v)| *o = v * a + b),
                        Rectifier::Relu => yr
                            .iter_mut()
                            .zip(xr)
                            .for_each(|(o, &v)| *o = Rectifier::Relu.apply(v * a + b)),
                        Rectifier::Relu6 => yr
                            .iter_mut()
                            .zip(xr)
                            .for_each(|(o, &v)| *o = Rectifier::Relu6.apply(v * a + b)),
                    }
                }
            });
    }
    (y, mean, var)
}

/// The gradients of [`batch_norm_train`]'s input, `gamma`, `beta` and the epilogue's scale.
pub struct NormGrads {
    pub x: Vec<f32>,
    pub gamma: Vec<f32>,
    pub beta: Vec<f32>,
    pub scale: Vec<f32>,
}

/// The backward pass of [`batch_norm_train`] given the output gradient `dy`. With the ReLU, the
/// gate `x·a + b > 0` is recomputed from `x` rather than stored.
#[allow(clippy::too_many_arguments)]
pub fn batch_norm_train_backward(
    x: &[f32],
    gamma: &[f32],
    beta: &[f32],
    mean: &[f32],
    var: &[f32],
    eps: f64,
    epilogue: Epilogue,
    dy: &[f32],
    s: &NormShape,
) -> NormGrads {
    assert_eq!(x.len(), s.len(), "batch_norm_train_backward: input size");
    assert_eq!(
        dy.len(),
        s.len(),
        "batch_norm_train_backward: gradient size"
    );
    let m = s.count().max(1) as f64;
    let fwd: Vec<(f32, f32)> = (0..s.channels)
        .map(|c| affine(gamma[c], beta[c], epilogue.scale[c], mean[c], var[c], eps))
        .collect();
    // Per channel, with g = dy behind the ReLU's gate: Σg and Σg·(x − mean), in f32 lanes per
    // image row, rows summed in f64.
    let sums: Vec<(f64, f64)> = (0..s.channels)
        .into_par_iter()
        .map(|c| {
            let (mu, (a, b)) = (mean[c], fwd[c]);
            s.rows(x, c)
                .zip(s.rows(dy, c))
                .map(|(xr, gr)| {
                    let (p, q) = match epilogue.relu {
                        Rectifier::None => lanes_dot(xr, gr, mu, |_| true),
                        Rectifier::Relu => {
                            lanes_dot(xr, gr, mu, |v| Rectifier::Relu.passes(v * a + b))
                        }
                        Rectifier::Relu6 => {
                            lanes_dot(xr, gr, mu, |v| Rectifier::Relu6.passes(v * a + b))
                        }
                    };
                    (p as f64, q as f64)
                })
                .fold((0.0, 0.0), |(a, b), (p, q)| (a + p, b + q))
        })
        .collect();
    let mut grads = NormGrads {
        x: vec![0.0f32; s.len()],
        gamma: Vec::with_capacity(s.channels),
        beta: Vec::with_capacity(s.channels),
        scale: Vec::with_capacity(s.channels),
    };
    // dx = a·g + b·x + k per channel: BatchNorm's backward for dz = scale·g, where z = γx̂ + β.
    let mut coef = Vec::with_capacity(s.channels);
    for (c, &(sum_g, sum_gx)) in sums.iter().enumerate() {
        let inv = 1.0 / (var[c] as f64 + eps).sqrt();
        let (ms, g) = (epilogue.scale[c] as f64, gamma[c] as f64);
        let a = g * inv * ms;
        let b = -a * inv * inv * sum_gx / m;
        let k = -a * sum_g / m - b * mean[c] as f64;
        grads.gamma.push((ms * sum_gx * inv) as f32);
        grads.beta.push((ms * sum_g) as f32);
        grads
            .scale
            .push((g * inv * sum_gx + beta[c] as f64 * sum_g) as f32);
        coef.push((a as f32, b as f32, k as f32));
    }
    let image = s.channels * s.spatial;
    if image > 0 {
        grads
            .x
            .par_chunks_mut(image)
            .zip(x.par_chunks(image).zip(dy.par_chunks(image)))
            .for_each(|(dxn, (xn, gn))| {
                for (c, (o, (xr, gr))) in dxn
                    .chunks_mut(s.spatial)
                    .zip(xn.chunks(s.spatial).zip(gn.chunks(s.spatial)))
                    .enumerate()
                {
                    let (a, b, k) = coef[c];
                    let (fa, fb) = fwd[c];
                    if epilogue.relu != Rectifier::None {
                        let rect = epilogue.relu;
                        for ((d, &v), &g) in o.iter_mut().zip(xr).zip(gr) {
                            let g = if rect.passes(v * fa + fb) { g } else { 0.0 };
                            *d = a * g + b * v + k;
                        }
                    } else {
                        for ((d, &v), &g) in o.iter_mut().zip(xr).zip(gr) {
                            *d = a * g + b * v + k;
                        }
                    }
                }
            });
    }
    grads
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

/// `(Σ g, Σ g·(x − mu))` over a row pair, counting `g` only where `open(x)` (a ReLU's gate), in
/// `LANES` independent accumulators.
#[inline(always)]
fn lanes_dot(x: &[f32], g: &[f32], mu: f32, open: impl Fn(f32) -> bool) -> (f32, f32) {
    let (mut a, mut b) = ([0.0f32; LANES], [0.0f32; LANES]);
    let (xc, gc) = (x.chunks_exact(LANES), g.chunks_exact(LANES));
    let (xt, gt) = (xc.remainder(), gc.remainder());
    for (xs, gs) in xc.zip(gc) {
        for l in 0..LANES {
            let d = if open(xs[l]) { gs[l] } else { 0.0 };
            a[l] += d;
            b[l] += d * (xs[l] - mu);
        }
    }
    let (mut sa, mut sb) = (a.iter().sum::<f32>(), b.iter().sum::<f32>());
    for (&v, &d) in xt.iter().zip(gt) {
        let d = if open(v) { d } else { 0.0 };
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
