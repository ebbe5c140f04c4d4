//! 2-D convolution (groups 1, any stride and padding) on NCHW `f32` data: the forward pass,
//! the input gradient and the weight gradient, each as one GEMM per image on an im2col matrix
//! (the `gemm` crate's micro-kernels), images spread over threads.
//!
//! Layout: per image, `cols` is `[K, P]` row-major, `K = C_in·kh·kw` (channel, then kernel
//! row, then column: the order of the weight's `[C_out, C_in, kh, kw]` rows) and `P = OH·OW`.
//! Then, per image `n`,
//! - forward: `y_n [C_out, P] = W [C_out, K] · cols_n`;
//! - weight gradient: `dW [C_out, K] += dy_n [C_out, P] · cols_nᵀ`;
//! - input gradient: `dcols [K, P] = Wᵀ · dy_n`, scattered back (col2im) into `dx_n`.
//!
//! NCHW needs no layout conversion for any of the three (Burn's flex converts to NHWC and
//! back around each), and a 1×1 convolution with stride 1 and no padding uses the image as
//! its own `cols`.

use gemm::{Parallelism, gemm};

use super::denormal::FlushGuard;
use super::direct;
use rayon::prelude::*;

/// The geometry of a convolution.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConvShape {
    pub batch: usize,
    pub c_in: usize,
    pub height: usize,
    pub width: usize,
    pub c_out: usize,
    pub kernel: [usize; 2],
    pub stride: [usize; 2],
    pub padding: [usize; 2],
}

impl ConvShape {
    /// Output height and width.
    pub fn out_hw(&self) -> [usize; 2] {
        let o = |i: usize, k: usize, s: usize, p: usize| (i + 2 * p - k) / s + 1;
        [
            o(self.height, self.kernel[0], self.stride[0], self.padding[0]),
            o(self.width, self.kernel[1], self.stride[1], self.padding[1]),
        ]
    }

    /// Rows of `cols`: `C_in·kh·kw`.
    fn k(&self) -> usize {
        self.c_in * self.kernel[0] * self.kernel[1]
    }

    /// Columns of `cols`: `OH·OW`.
    fn p(&self) -> usize {
        let [oh, ow] = self.out_hw();
        oh * ow
    }

    fn image_len(&self) -> usize {
        self.c_in * self.height * self.width
    }

    fn out_len(&self) -> usize {
        self.c_out * self.p()
    }

    /// A 1×1 convolution whose `cols` is the image itself.
    fn is_pointwise(&self) -> bool {
        self.kernel == [1, 1] && self.stride == [1, 1] && self.padding == [0, 0]
    }

    /// Padded input height and width.
    pub(crate) fn padded(&self) -> [usize; 2] {
        [
            self.height + 2 * self.padding[0],
            self.width + 2 * self.padding[1],
        ]
    }

    /// Whether the direct (no im2col) kernels take this convolution: [`direct::covers`] it
    /// and it is not a 1×1 (which needs no im2col anyway).
    fn is_direct(&self) -> bool {
        direct::covers(self.kernel, self.stride, self.padding) && !self.is_pointwise()
    }

    pub fn input_len(&self) -> usize {
        self.batch * self.image_len()
    }

    pub fn output_len(&self) -> usize {
        self.batch * self.out_len()
    }

    pub fn weight_len(&self) -> usize {
        self.c_out * self.k()
    }
}

/// `cols [K, P]` of one image `x [C_in, H, W]`.
fn im2col(x: &[f32], s: &ConvShape, cols: &mut [f32]) {
    let [oh, ow] = s.out_hw();
    let [kh, kw] = s.kernel;
    let [sh, sw] = s.stride;
    let [ph, pw] = s.padding;
    let (h, w) = (s.height, s.width);
    for c in 0..s.c_in {
        let plane = &x[c * h * w..(c + 1) * h * w];
        for ky in 0..kh {
            for kx in 0..kw {
                let row = &mut cols[((c * kh + ky) * kw + kx) * oh * ow..][..oh * ow];
                for oy in 0..oh {
                    let iy = (oy * sh + ky) as isize - ph as isize;
                    let out = &mut row[oy * ow..(oy + 1) * ow];
                    if iy < 0 || iy >= h as isize {
                        out.fill(0.0);
                        continue;
                    }
                    let src = &plane[iy as usize * w..(iy as usize + 1) * w];
                    for (ox, o) in out.iter_mut().enumerate() {
                        let ix = (ox * sw + kx) as isize - pw as isize;
                        *o = if ix < 0 || ix >= w as isize {
                            0.0
                        } else {
                            src[ix as usize]
                        };
                    }
                }
            }
        }
    }
}

/// Adds `cols [K, P]` back into one image's gradient `dx [C_in, H, W]` (the adjoint of
/// [`im2col`]).
fn col2im_add(cols: &[f32], s: &ConvShape, dx: &mut [f32]) {
    let [oh, ow] = s.out_hw();
    let [kh, kw] = s.kernel;
    let [sh, sw] = s.stride;
    let [ph, pw] = s.padding;
    let (h, w) = (s.height, s.width);
    for c in 0..s.c_in {
        let plane = &mut dx[c * h * w..(c + 1) * h * w];
        for ky in 0..kh {
            for kx in 0..kw {
                let row = &cols[((c * kh + ky) * kw + kx) * oh * ow..][..oh * ow];
                for oy in 0..oh {
                    let iy = (oy * sh + ky) as isize - ph as isize;
                    if iy < 0 || iy >= h as isize {
                        continue;
                    }
                    let dst = &mut plane[iy as usize * w..(iy as usize + 1) * w];
                    for (ox, &g) in row[oy * ow..(oy + 1) * ow].iter().enumerate() {
                        let ix = (ox * sw + kx) as isize - pw as isize;
                        if ix >= 0 && ix < w as isize {
                            dst[ix as usize] += g;
                        }
                    }
                }
            }
        }
    }
}

/// A row-major matrix view for [`matmul`]: pointer, row stride, column stride.
#[derive(Clone, Copy)]
struct View {
    ptr: *const f32,
    rs: isize,
    cs: isize,
}

/// `dst [m, n] (row-major) = (accumulate ? dst : 0) + a [m, k] · b [k, n]`, single-threaded
/// (the callers spread images over threads).
///
/// # Safety
/// `a` and `b` must address `m×k` and `k×n` valid elements through their strides, and `dst`
/// must hold `m×n`.
unsafe fn matmul(
    dst: &mut [f32],
    m: usize,
    n: usize,
    k: usize,
    a: View,
    b: View,
    accumulate: bool,
) {
    debug_assert!(dst.len() >= m * n);
    // SAFETY: the caller guarantees the views; dst is a unique slice of m*n.
    unsafe {
        gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            accumulate,
            a.ptr,
            a.cs,
            a.rs,
            b.ptr,
            b.cs,
            b.rs,
            1.0,
            1.0,
            false,
            false,
            false,
            Parallelism::None,
        );
    }
}

/// The forward pass: `y [N, C_out, OH, OW]` from `x [N, C_in, H, W]`, `w [C_out, C_in, kh,
/// kw]` and an optional bias `[C_out]`.
pub fn conv2d(x: &[f32], w: &[f32], bias: Option<&[f32]>, s: &ConvShape) -> Vec<f32> {
    assert_eq!(x.len(), s.input_len(), "conv2d: input size");
    assert_eq!(w.len(), s.weight_len(), "conv2d: weight size");
    let (k, p) = (s.k(), s.p());
    if s.is_direct() {
        let mut y = direct::conv2d(x, w, s);
        if let Some(b) = bias {
            for (i, row) in y.chunks_mut(p).enumerate() {
                let v = b[i % s.c_out];
                row.iter_mut().for_each(|o| *o += v);
            }
        }
        return y;
    }
    let mut y = vec![0.0f32; s.output_len()];
    y.par_chunks_mut(s.out_len())
        .zip(x.par_chunks(s.image_len()))
        .for_each_init(
            || vec![0.0f32; if s.is_pointwise() { 0 } else { k * p }],
            |cols, (yn, xn)| {
                let _flush = FlushGuard::new();
                let c: &[f32] = if s.is_pointwise() {
                    xn
                } else {
                    im2col(xn, s, cols);
                    cols
                };
                if let Some(b) = bias {
                    for (co, row) in yn.chunks_mut(p).enumerate() {
                        row.fill(b[co]);
                    }
                }
                let wa = View {
                    ptr: w.as_ptr(),
                    rs: k as isize,
                    cs: 1,
                };
                let cb = View {
                    ptr: c.as_ptr(),
                    rs: p as isize,
                    cs: 1,
                };
                // SAFETY: w is [C_out, K], c is [K, P], yn is [C_out, P].
                unsafe { matmul(yn, s.c_out, p, k, wa, cb, bias.is_some()) };
            },
        );
    y
}

/// A sum over the batch's images, split into one contiguous run of images per thread: each
/// thread adds its images into its own buffer (`part(images)` returns it), and the buffers
/// are added at the end. Used by the weight gradients, which sum over images.
pub(crate) fn sum_over_images(
    batch: usize,
    len: usize,
    part: impl Fn(std::ops::Range<usize>) -> Vec<f32> + Sync,
) -> Vec<f32> {
    let threads = rayon::current_num_threads().max(1);
    let per = batch.div_ceil(threads).max(1);
    let partial: Vec<Vec<f32>> = (0..batch.div_ceil(per))
        .into_par_iter()
        .map(|t| {
            let _flush = FlushGuard::new();
            part(t * per..((t + 1) * per).min(batch))
        })
        .collect();
    let mut sum = vec![0.0f32; len];
    for part in partial {
        debug_assert_eq!(part.len(), len);
        sum.iter_mut().zip(part).for_each(|(a, b)| *a += b);
    }
    sum
}

/// The weight gradient `dW [C_out, C_in, kh, kw]` of `y = conv2d(x, W)` given `dy`.
pub fn conv2d_weight_grad(x: &[f32], dy: &[f32], s: &ConvShape) -> Vec<f32> {
    assert_eq!(x.len(), s.input_len(), "conv2d_weight_grad: input size");
    assert_eq!(
        dy.len(),
        s.output_len(),
        "conv2d_weight_grad: output gradient size"
    );
    if s.is_direct() {
        return direct::weight_grad(x, dy, s);
    }
    let (k, p) = (s.k(), s.p());
    sum_over_images(s.batch, s.weight_len(), |images| {
        let mut dw = vec![0.0f32; s.weight_len()];
        let mut cols = vec![0.0f32; if s.is_pointwise() { 0 } else { k * p }];
        for n in images {
            let xn = &x[n * s.image_len()..][..s.image_len()];
            let dyn_ = &dy[n * s.out_len()..][..s.out_len()];
            let c: &[f32] = if s.is_pointwise() {
                xn
            } else {
                im2col(xn, s, &mut cols);
                &cols
            };
            let a = View {
                ptr: dyn_.as_ptr(),
                rs: p as isize,
                cs: 1,
            };
            // colsᵀ: element (p, k) at k·P + p.
            let b = View {
                ptr: c.as_ptr(),
                rs: 1,
                cs: p as isize,
            };
            // SAFETY: dy_n is [C_out, P], colsᵀ is [P, K], dw is [C_out, K].
            unsafe { matmul(&mut dw, s.c_out, k, p, a, b, true) };
        }
        dw
    })
}

/// The bias gradient `[C_out]`: `dy` summed over images and positions.
pub fn conv2d_bias_grad(dy: &[f32], s: &ConvShape) -> Vec<f32> {
    let p = s.p();
    let mut db = vec![0.0f32; s.c_out];
    for yn in dy.chunks(s.out_len()) {
        for (co, row) in yn.chunks(p).enumerate() {
            db[co] += row.iter().sum::<f32>();
        }
    }
    db
}

/// The input gradient `dx [N, C_in, H, W]` of `y = conv2d(x, W)` given `dy`.
pub fn conv2d_input_grad(w: &[f32], dy: &[f32], s: &ConvShape) -> Vec<f32> {
    assert_eq!(w.len(), s.weight_len(), "conv2d_input_grad: weight size");
    assert_eq!(
        dy.len(),
        s.output_len(),
        "conv2d_input_grad: output gradient size"
    );
    if s.is_direct() {
        return direct::input_grad(w, dy, s);
    }
    let (k, p) = (s.k(), s.p());
    let mut dx = vec![0.0f32; s.input_len()];
    dx.par_chunks_mut(s.image_len())
        .zip(dy.par_chunks(s.out_len()))
        .for_each_init(
            || vec![0.0f32; if s.is_pointwise() { 0 } else { k * p }],
            |cols, (dxn, dyn_)| {
                let _flush = FlushGuard::new();
                // Wᵀ: element (k, co) at co·K + k.
                let a = View {
                    ptr: w.as_ptr(),
                    rs: 1,
                    cs: k as isize,
                };
                let b = View {
                    ptr: dyn_.as_ptr(),
                    rs: p as isize,
                    cs: 1,
                };
                if s.is_pointwise() {
                    // SAFETY: Wᵀ is [K, C_out], dy_n is [C_out, P], dx_n is [K = C_in, P].
                    unsafe { matmul(dxn, k, p, s.c_out, a, b, false) };
                } else {
                    // SAFETY: as above, into cols [K, P].
                    unsafe { matmul(cols, k, p, s.c_out, a, b, false) };
                    col2im_add(cols, s, dxn);
                }
            },
        );
    dx
}
