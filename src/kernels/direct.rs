//! Direct convolution for stride 1 (any kernel and padding), without an im2col matrix.
//!
//! im2col writes `C_in·kh·kw` copies of every image and GEMM packs them once more: for the
//! 16–64-channel layers of a CIFAR ResNet that traffic, not arithmetic, sets the speed. Here,
//! per image:
//! - the input is copied once into a zero-padded plane per channel, `xp [C_in, Hp, Wp]`;
//! - the output is computed in "padded-width" order, `q = oy·Wp + ox` (the last `Wp − OW`
//!   columns of each row are junk and dropped on the way out), so that for every kernel tap
//!   `(ky, kx)` the input an output reads is `xp[c][q + ky·Wp + kx]`: a contiguous run;
//! - a register-blocked micro-kernel accumulates a block of output channels × positions over
//!   all `(c, ky, kx)`, one weight broadcast per channel and one contiguous load per tap.
//!
//! The micro-kernel is compiled per [`Isa`] level and chosen at run time: AVX-512 with
//! intrinsics (8 channels × 48 positions), AVX2+FMA and the baseline target from plain Rust
//! on fixed-size arrays (4 × 24).
//!
//! The input gradient of a stride-1 convolution is itself a stride-1 convolution of the output
//! gradient (padding `k − 1 − p`, weights flipped and transposed), so it runs here too.

use rayon::prelude::*;

use super::conv::{ConvShape, sum_over_images};
use super::denormal::FlushGuard;
use super::isa::Isa;

/// The register block of each level: output channels × positions per micro-kernel call. AVX2
/// holds 4 × 24 in 12 of its 16 ymm registers; AVX-512 8 × 48 in 24 of its 32 zmm registers,
/// loading 3 input vectors and broadcasting 8 weights per 24 multiply-adds (AVX2: 3 and 4
/// per 12), so it does twice the work per load as well as per instruction.
fn blocking(isa: Isa) -> (usize, usize) {
    match isa {
        Isa::Avx512 => (8, 48),
        Isa::Avx2 | Isa::Baseline => (4, 24),
    }
}

/// The most positions any level reads past a block's start: the padded buffers' slack.
const MAX_Q: usize = 48;

/// Weights re-laid for the micro-kernel: `[C_out / co_block][C_in][kh][kw][co_block]`, output
/// channels past `C_out` zero. `w(co, c, ky, kx)` reads the source weight.
fn pack_weights(
    g: &ConvShape,
    co_block: usize,
    w: impl Fn(usize, usize, usize, usize) -> f32,
) -> Vec<f32> {
    let [kh, kw] = g.kernel;
    let blocks = g.c_out.div_ceil(co_block);
    let mut out = vec![0.0f32; blocks * g.c_in * kh * kw * co_block];
    let mut i = 0;
    for b in 0..blocks {
        for c in 0..g.c_in {
            for ky in 0..kh {
                for kx in 0..kw {
                    for r in 0..co_block {
                        let co = b * co_block + r;
                        if co < g.c_out {
                            out[i] = w(co, c, ky, kx);
                        }
                        i += 1;
                    }
                }
            }
        }
    }
    out
}

/// `acc[r][j] = Σ_taps w[tap][r] · x[tap offset + j]` over all `(c, ky, kx)`, in plain Rust
/// on fixed-size arrays (vectorised by the compiler for the level it is inlined into).
///
/// # Safety
/// `x` must hold `offs.last() + Q` readable elements.
#[inline(always)]
unsafe fn block<const CO: usize, const Q: usize>(
    x: *const f32,
    offs: &[usize],
    wb: &[f32],
    fma: impl Fn(f32, f32, f32) -> f32,
) -> [[f32; Q]; CO] {
    let mut acc = [[0.0f32; Q]; CO];
    for (t, &off) in offs.iter().enumerate() {
        // SAFETY: the caller guarantees Q readable elements at off.
        let xv: [f32; Q] = unsafe { std::ptr::read_unaligned(x.add(off).cast()) };
        let wv = &wb[t * CO..][..CO];
        for r in 0..CO {
            for j in 0..Q {
                acc[r][j] = fma(wv[r], xv[j], acc[r][j]);
            }
        }
    }
    acc
}

/// The AVX-512 micro-kernel, 8 × 48, written with intrinsics so the 24 accumulators are
/// certain to stay in registers.
///
/// # Safety
/// As [`block`]; the CPU must have AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn block_avx512(x: *const f32, offs: &[usize], wb: &[f32]) -> [[f32; 48]; 8] {
    use std::arch::x86_64::*;
    debug_assert!(wb.len() >= offs.len() * 8);
    let mut acc = [[_mm512_setzero_ps(); 3]; 8];
    for (t, &off) in offs.iter().enumerate() {
        // SAFETY: the caller guarantees 48 readable elements at off, and 8 weights per tap.
        unsafe {
            let p = x.add(off);
            let xv = [
                _mm512_loadu_ps(p),
                _mm512_loadu_ps(p.add(16)),
                _mm512_loadu_ps(p.add(32)),
            ];
            let w = wb.as_ptr().add(t * 8);
            for (r, row) in acc.iter_mut().enumerate() {
                let wr = _mm512_set1_ps(*w.add(r));
                for (a, &v) in row.iter_mut().zip(&xv) {
                    *a = _mm512_fmadd_ps(wr, v, *a);
                }
            }
        }
    }
    let mut out = [[0.0f32; 48]; 8];
    for (o, row) in out.iter_mut().zip(&acc) {
        for (v, &a) in row.iter().enumerate() {
            // SAFETY: 16 floats at 16·v of a 48-float row.
            unsafe { _mm512_storeu_ps(o.as_mut_ptr().add(16 * v), a) };
        }
    }
    out
}

/// One image: `y [C_out, OH, OW]` from the padded input `xp`, `CO × Q` blocks at a time by
/// `block(x at the block's first position, offs, the block's packed weights)`.
#[inline(always)]
fn image<const CO: usize, const Q: usize>(
    g: &ConvShape,
    xp: &[f32],
    packed: &[f32],
    offs: &[usize],
    y: &mut [f32],
    block: impl Fn(*const f32, &[usize], &[f32]) -> [[f32; Q]; CO],
) {
    let [oh, ow] = g.out_hw();
    let wp = g.padded()[1];
    let q_total = oh * wp;
    let taps = offs.len();
    let plane = oh * ow;
    assert!(xp.len() >= offs.last().map_or(0, |o| o + 1) + q_total + Q);
    for b in 0..g.c_out.div_ceil(CO) {
        let wb = &packed[b * taps * CO..][..taps * CO];
        let rows = (g.c_out - b * CO).min(CO);
        let (mut q0, mut oy0, mut ox0) = (0, 0, 0);
        while q0 < q_total {
            // SAFETY: asserted above: Q readable elements past every tap of this block.
            let acc = block(unsafe { xp.as_ptr().add(q0) }, offs, wb);
            // Copy the block's runs of real columns (`ox < OW`) row by row, dropping the
            // junk columns of the padded width.
            let (mut oy, mut ox, mut j) = (oy0, ox0, 0);
            let n = Q.min(q_total - q0);
            while j < n {
                let run = if ox < ow { (ow - ox).min(n - j) } else { 0 };
                if run > 0 {
                    for (r, a) in acc.iter().enumerate().take(rows) {
                        y[(b * CO + r) * plane + oy * ow + ox..][..run]
                            .copy_from_slice(&a[j..j + run]);
                    }
                }
                let step = (wp - ox).min(n - j);
                j += step;
                ox += step;
                if ox == wp {
                    ox = 0;
                    oy += 1;
                }
            }
            (oy0, ox0) = (oy, ox);
            q0 += Q;
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn image_avx512(g: &ConvShape, xp: &[f32], packed: &[f32], offs: &[usize], y: &mut [f32]) {
    // SAFETY: image hands block a pointer with 48 readable elements past every offset.
    image::<8, 48>(g, xp, packed, offs, y, |x, o, w| unsafe {
        block_avx512(x, o, w)
    })
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn image_avx2(g: &ConvShape, xp: &[f32], packed: &[f32], offs: &[usize], y: &mut [f32]) {
    // SAFETY: as above, 24 elements.
    image::<4, 24>(g, xp, packed, offs, y, |x, o, w| unsafe {
        block(x, o, w, |a, b, c| a.mul_add(b, c))
    })
}

fn image_baseline(g: &ConvShape, xp: &[f32], packed: &[f32], offs: &[usize], y: &mut [f32]) {
    // SAFETY: as above, 24 elements.
    image::<4, 24>(g, xp, packed, offs, y, |x, o, w| unsafe {
        block(x, o, w, |a, b, c| a * b + c)
    })
}

/// [`image`] at `isa`, whose weights were packed with [`blocking`]`(isa)`.
fn image_at(isa: Isa, g: &ConvShape, xp: &[f32], packed: &[f32], offs: &[usize], y: &mut [f32]) {
    match isa {
        // SAFETY: Isa::current() never exceeds what the CPU was detected to have.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => unsafe { image_avx512(g, xp, packed, offs, y) },
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => unsafe { image_avx2(g, xp, packed, offs, y) },
        _ => image_baseline(g, xp, packed, offs, y),
    }
}

/// The shared body of the forward pass and the input gradient: `y = conv(x, w)` with stride 1,
/// `w` given through the accessor.
fn convolve(x: &[f32], g: &ConvShape, w: impl Fn(usize, usize, usize, usize) -> f32) -> Vec<f32> {
    assert!(
        covers(g.kernel, g.stride, g.padding),
        "direct kernels: stride 1 and padding below the kernel only"
    );
    let [oh, ow] = g.out_hw();
    let [hp, wp] = g.padded();
    let [kh, kw] = g.kernel;
    let isa = Isa::current();
    let packed = pack_weights(g, blocking(isa).0, w);
    let offs: Vec<usize> = (0..g.c_in)
        .flat_map(|c| (0..kh).flat_map(move |ky| (0..kw).map(move |kx| (c, ky, kx))))
        .map(|(c, ky, kx)| c * hp * wp + ky * wp + kx)
        .collect();
    let padded_len = g.c_in * hp * wp + kw + MAX_Q + wp;
    let (image_len, out_len) = (g.c_in * g.height * g.width, g.c_out * oh * ow);
    let mut y = vec![0.0f32; g.batch * out_len];
    if out_len == 0 {
        return y;
    }
    y.par_chunks_mut(out_len)
        .zip(x.par_chunks(image_len.max(1)))
        .for_each_init(
            || vec![0.0f32; padded_len],
            |xp, (yn, xn)| {
                let _flush = FlushGuard::new();
                pad_image(g, xn, xp);
                image_at(isa, g, xp, &packed, &offs, yn);
            },
        );
    y
}

/// Copies one plane `src [H, W]` into the interior of the zero-bordered `xp [Hp, Wp]` (the
/// borders stay zero from the allocation, so a buffer is reused across images of one call).
fn pad_plane(g: &ConvShape, src: &[f32], xp: &mut [f32]) {
    let wp = g.padded()[1];
    let [ph, pw] = g.padding;
    for iy in 0..g.height {
        xp[(iy + ph) * wp + pw..][..g.width].copy_from_slice(&src[iy * g.width..][..g.width]);
    }
}

/// Copies an image `[C_in, H, W]` into its padded planes `xp [C_in, Hp, Wp]`.
fn pad_image(g: &ConvShape, x: &[f32], xp: &mut [f32]) {
    let [hp, wp] = g.padded();
    let plane = g.height * g.width;
    for c in 0..g.c_in {
        pad_plane(g, &x[c * plane..][..plane], &mut xp[c * hp * wp..]);
    }
}

/// Whether [`conv2d`] and [`input_grad`] take this convolution: stride 1, padding below the
/// kernel size (so the input gradient's padding `k − 1 − p` is not negative).
pub fn covers(kernel: [usize; 2], stride: [usize; 2], padding: [usize; 2]) -> bool {
    stride == [1, 1] && padding[0] < kernel[0] && padding[1] < kernel[1]
}

/// The forward pass of a stride-1 convolution, `x [N, C_in, H, W]`, `w [C_out, C_in, kh, kw]`.
pub fn conv2d(x: &[f32], w: &[f32], g: &ConvShape) -> Vec<f32> {
    let [kh, kw] = g.kernel;
    assert_eq!(
        x.len(),
        g.batch * g.c_in * g.height * g.width,
        "direct conv2d: input size"
    );
    assert_eq!(
        w.len(),
        g.c_out * g.c_in * kh * kw,
        "direct conv2d: weight size"
    );
    convolve(x, g, |co, c, ky, kx| {
        w[((co * g.c_in + c) * kh + ky) * kw + kx]
    })
}

/// The geometry of a stride-1 convolution's input gradient as a convolution of `dy` (of
/// `dy_len` elements): channels swapped, the output's size in, padding `k − 1 − p`, giving the
/// input's size out.
fn gradient_shape(g: &ConvShape, dy_len: usize) -> ConvShape {
    let [oh, ow] = g.out_hw();
    assert_eq!(
        dy_len,
        g.batch * g.c_out * oh * ow,
        "direct input gradient: gradient size"
    );
    let t = ConvShape {
        batch: g.batch,
        c_in: g.c_out,
        height: oh,
        width: ow,
        c_out: g.c_in,
        kernel: g.kernel,
        stride: [1, 1],
        padding: [
            g.kernel[0] - 1 - g.padding[0],
            g.kernel[1] - 1 - g.padding[1],
        ],
    };
    debug_assert_eq!(t.out_hw(), [g.height, g.width]);
    t
}

/// The input gradient of [`conv2d`] given `dy [N, C_out, OH, OW]`: a stride-1 convolution of
/// `dy` with padding `k − 1 − p` and the weights flipped and transposed.
pub fn input_grad(w: &[f32], dy: &[f32], g: &ConvShape) -> Vec<f32> {
    let [kh, kw] = g.kernel;
    let t = gradient_shape(g, dy.len());
    convolve(dy, &t, |c, co, ky, kx| {
        w[((co * g.c_in + c) * kh + (kh - 1 - ky)) * kw + (kw - 1 - kx)]
    })
}

/// The weight gradient of [`conv2d`] given `dy [N, C_out, OH, OW]`, without an im2col matrix:
/// with `dy` laid out in padded-width order (junk columns zero), each tap's gradient is one
/// GEMM, `dW[:, :, ky, kx] += dy_n [C_out, Q] · xp_nᵀ` shifted by `ky·Wp + kx` (`Q = OH·Wp`),
/// reading the padded input in place. Threads sum their images into their own `dW`.
pub fn weight_grad(x: &[f32], dy: &[f32], g: &ConvShape) -> Vec<f32> {
    assert!(
        covers(g.kernel, g.stride, g.padding),
        "direct kernels: stride 1 and padding below the kernel only"
    );
    let [kh, kw] = g.kernel;
    let [oh, ow] = g.out_hw();
    let [hp, wp] = g.padded();
    let (image_len, out_len) = (g.c_in * g.height * g.width, g.c_out * oh * ow);
    assert_eq!(
        x.len(),
        g.batch * image_len,
        "direct weight_grad: input size"
    );
    assert_eq!(
        dy.len(),
        g.batch * out_len,
        "direct weight_grad: gradient size"
    );
    #[cfg(target_arch = "x86_64")]
    if Isa::current() == Isa::Avx512 && g.c_in.is_multiple_of(channels_last::LANES) {
        return channels_last::weight_grad(x, dy, g);
    }
    let taps = kh * kw;
    let weight_len = g.c_out * g.c_in * taps;
    let q_total = oh * wp;
    let padded_len = g.c_in * hp * wp + kw + wp;
    sum_over_images(g.batch, weight_len, |images| {
        let mut dw = vec![0.0f32; weight_len];
        let mut xp = vec![0.0f32; padded_len];
        let mut dyp = vec![0.0f32; g.c_out * q_total];
        for n in images {
            let xn = &x[n * image_len..][..image_len];
            let dyn_ = &dy[n * out_len..][..out_len];
            pad_image(g, xn, &mut xp);
            for co in 0..g.c_out {
                for oy in 0..oh {
                    dyp[co * q_total + oy * wp..][..ow]
                        .copy_from_slice(&dyn_[(co * oh + oy) * ow..][..ow]);
                }
            }
            for ky in 0..kh {
                for kx in 0..kw {
                    // SAFETY: dst addresses dW[co, c, ky, kx] for co < C_out, c < C_in;
                    // lhs is dyp [C_out, Q]; rhs element (q, c) is xp[c·Hp·Wp + ky·Wp +
                    // kx + q], inside xp (padded_len covers the last tap's last q).
                    unsafe {
                        gemm::gemm(
                            g.c_out,
                            g.c_in,
                            q_total,
                            dw.as_mut_ptr().add(ky * kw + kx),
                            taps as isize,
                            (g.c_in * taps) as isize,
                            true,
                            dyp.as_ptr(),
                            1,
                            q_total as isize,
                            xp.as_ptr().add(ky * wp + kx),
                            (hp * wp) as isize,
                            1,
                            1.0,
                            1.0,
                            false,
                            false,
                            false,
                            gemm::Parallelism::None,
                        );
                    }
                }
            }
        }
        dw
    })
}

/// The weight gradient on AVX-512 without a GEMM, for `C_in` a multiple of 16.
///
/// The per-tap GEMMs of [`weight_grad`] reduce over positions: each output is a dot product
/// across a row, whose vector lanes must be summed at the end, and the GEMM packs both
/// operands for every (image, tap). Here the lanes run over 16 input channels instead: with
/// the padded input channels-last (`xh [Hp·Wp][C_in]`), `dW[co, c₀..c₀+16, tap]` gains
/// `dy[co, p] · xh[p + tap offset, c₀..c₀+16]` at every output position `p`, one broadcast
/// and one vector multiply-add with no reduction across lanes. A block of 8 output channels
/// × 3 taps keeps 24 accumulators in registers through all positions of an image, with 8
/// broadcasts and 3 loads per 24 multiply-adds. Threads sum their images into their own
/// `[C_out][tap][C_in]` buffer, transposed to the weight's layout at the end.
#[cfg(target_arch = "x86_64")]
mod channels_last {
    use super::{ConvShape, sum_over_images};

    /// Input channels per vector.
    pub const LANES: usize = 16;
    /// Output channels per block.
    const CO: usize = 8;
    /// Taps per block.
    const TAPS: usize = 3;

    pub fn weight_grad(x: &[f32], dy: &[f32], g: &ConvShape) -> Vec<f32> {
        assert!(std::arch::is_x86_feature_detected!("avx512f"));
        assert!(
            g.c_in.is_multiple_of(LANES),
            "channels-last weight gradient: C_in"
        );
        let [kh, kw] = g.kernel;
        let [oh, ow] = g.out_hw();
        let [hp, wp] = g.padded();
        let [ph, pw] = g.padding;
        let (h, w) = (g.height, g.width);
        let (ci, taps) = (g.c_in, kh * kw);
        let (image_len, out_len) = (ci * h * w, g.c_out * oh * ow);
        let co_pad = g.c_out.div_ceil(CO) * CO;
        if image_len == 0 || out_len == 0 {
            return vec![0.0f32; g.c_out * ci * taps];
        }
        let offs: Vec<usize> = (0..taps).map(|t| (t / kw) * wp + t % kw).collect();
        let acc = sum_over_images(g.batch, co_pad * taps * ci, |images| {
            let mut acc = vec![0.0f32; co_pad * taps * ci];
            // Borders stay zero from the allocation; each image rewrites the interior.
            let mut xh = vec![0.0f32; hp * wp * ci];
            // Rows past C_out stay zero.
            let mut dyb = vec![0.0f32; co_pad * oh * ow];
            for n in images {
                let xn = &x[n * image_len..][..image_len];
                for (c, plane) in xn.chunks_exact(h * w).enumerate() {
                    for (iy, row) in plane.chunks_exact(w).enumerate() {
                        let base = ((iy + ph) * wp + pw) * ci + c;
                        for (ix, &v) in row.iter().enumerate() {
                            xh[base + ix * ci] = v;
                        }
                    }
                }
                dyb[..out_len].copy_from_slice(&dy[n * out_len..][..out_len]);
                // SAFETY: the CPU has AVX-512F (asserted above); the buffers have the
                // sizes `image` documents.
                unsafe { image(g, &xh, &dyb, &offs, &mut acc) };
            }
            acc
        });
        // [co_pad][tap][C_in] → the weight's [C_out][C_in][tap].
        let mut dw = vec![0.0f32; g.c_out * ci * taps];
        for co in 0..g.c_out {
            for t in 0..taps {
                let src = &acc[(co * taps + t) * ci..][..ci];
                for (c, &v) in src.iter().enumerate() {
                    dw[(co * ci + c) * taps + t] = v;
                }
            }
        }
        dw
    }

    /// One image: `acc [co_pad][taps][C_in] += dyb [co_pad][OH·OW] ⊗ xh [Hp·Wp][C_in]` at the
    /// tap offsets `offs` (in padded positions).
    ///
    /// # Safety
    /// The CPU must have AVX-512F; `xh` must hold `Hp·Wp·C_in`, `dyb` `co_pad·OH·OW` and `acc`
    /// `co_pad·taps·C_in` elements, `co_pad` a multiple of 8.
    #[target_feature(enable = "avx512f")]
    unsafe fn image(g: &ConvShape, xh: &[f32], dyb: &[f32], offs: &[usize], acc: &mut [f32]) {
        use std::arch::x86_64::*;
        let ci = g.c_in;
        let [oh, ow] = g.out_hw();
        let [hp, wp] = g.padded();
        let positions = oh * ow;
        let taps = offs.len();
        let co_pad = dyb.len() / positions.max(1);
        assert!(xh.len() >= hp * wp * ci && acc.len() >= co_pad * taps * ci);
        assert!(co_pad.is_multiple_of(CO) && dyb.len() == co_pad * positions);
        // The last tap's reach from the last position stays inside the padded image: for
        // stride 1, (OH−1)·Wp + OW−1 + (kh−1)·Wp + kw−1 = Hp·Wp − 1.
        debug_assert!((oh - 1) * wp + ow - 1 + offs[taps - 1] < hp * wp);
        for cb in (0..ci).step_by(LANES) {
            for co0 in (0..co_pad).step_by(CO) {
                for t0 in (0..taps).step_by(TAPS) {
                    let live = (taps - t0).min(TAPS);
                    // A short last group repeats its last tap; those sums are dropped.
                    let o: [usize; TAPS] = std::array::from_fn(|k| offs[t0 + k.min(live - 1)]);
                    let mut a = [[_mm512_setzero_ps(); TAPS]; CO];
                    for oy in 0..oh {
                        for ox in 0..ow {
                            let (q, p) = (oy * wp + ox, oy * ow + ox);
                            // SAFETY: q + o[k] < Hp·Wp (above), and cb + 16 ≤ C_in; the
                            // rows co0..co0+8 of dyb exist.
                            unsafe {
                                let base = xh.as_ptr().add(q * ci + cb);
                                let xv: [__m512; TAPS] =
                                    std::array::from_fn(|k| _mm512_loadu_ps(base.add(o[k] * ci)));
                                let d = dyb.as_ptr().add(co0 * positions + p);
                                for (r, row) in a.iter_mut().enumerate() {
                                    let dv = _mm512_set1_ps(*d.add(r * positions));
                                    for (acc_v, &xk) in row.iter_mut().zip(&xv) {
                                        *acc_v = _mm512_fmadd_ps(dv, xk, *acc_v);
                                    }
                                }
                            }
                        }
                    }
                    for (r, row) in a.iter().enumerate() {
                        for (k, &v) in row.iter().enumerate().take(live) {
                            let i = ((co0 + r) * taps + t0 + k) * ci + cb;
                            // SAFETY: i + 16 ≤ acc.len() (asserted sizes).
                            unsafe {
                                let dst = acc.as_mut_ptr().add(i);
                                _mm512_storeu_ps(dst, _mm512_add_ps(_mm512_loadu_ps(dst), v));
                            }
                        }
                    }
                }
            }
        }
    }
}

/// Depthwise convolution (groups = `C_in` = `C_out`, weights `[C, 1, kh, kw]`) on the same
/// padded planes. At stride 1 in padded-width order: each channel's output is `Σ_taps w·xp`
/// shifted, a run of contiguous multiply-adds. At larger strides the taps of neighbouring
/// outputs are not contiguous, so each pass walks the output plane and gathers (forward,
/// weight gradient) or scatters (input gradient) at the stride; these layers are few and
/// small (a MobileNet's downsampling blocks), and Flex's grouped convolution is slower.
pub mod depthwise {
    use rayon::prelude::*;

    use super::{ConvShape, Isa};

    /// One channel: `y [OH, OW] = Σ_t w[t] · xp[q + off_t]` over the padded plane `xp`, via
    /// the padded-width buffer `acc [OH·Wp]`.
    #[inline(always)]
    fn plane(
        g: &ConvShape,
        xp: &[f32],
        w: &[f32],
        acc: &mut [f32],
        y: &mut [f32],
        fma: impl Fn(f32, f32, f32) -> f32,
    ) {
        let [kh, kw] = g.kernel;
        let [oh, ow] = g.out_hw();
        let wp = g.padded()[1];
        acc.fill(0.0);
        for ky in 0..kh {
            for kx in 0..kw {
                let wt = w[ky * kw + kx];
                let src = &xp[ky * wp + kx..][..acc.len()];
                for (a, &v) in acc.iter_mut().zip(src) {
                    *a = fma(wt, v, *a);
                }
            }
        }
        for oy in 0..oh {
            y[oy * ow..][..ow].copy_from_slice(&acc[oy * wp..][..ow]);
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    fn plane_avx512(g: &ConvShape, xp: &[f32], w: &[f32], acc: &mut [f32], y: &mut [f32]) {
        plane(g, xp, w, acc, y, |a, b, c| a.mul_add(b, c))
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    fn plane_avx2(g: &ConvShape, xp: &[f32], w: &[f32], acc: &mut [f32], y: &mut [f32]) {
        plane(g, xp, w, acc, y, |a, b, c| a.mul_add(b, c))
    }

    /// [`plane`] compiled for `isa` (chosen by the caller on its own thread, see
    /// [`Isa::current`]).
    fn plane_at(isa: Isa, g: &ConvShape, xp: &[f32], w: &[f32], acc: &mut [f32], y: &mut [f32]) {
        match isa {
            // SAFETY: Isa::current() never exceeds what the CPU was detected to have.
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => unsafe { plane_avx512(g, xp, w, acc, y) },
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => unsafe { plane_avx2(g, xp, w, acc, y) },
            _ => plane(g, xp, w, acc, y, |a, b, c| a * b + c),
        }
    }

    /// The plane buffer length: the padded plane plus the last tap's over-read.
    fn padded_len(g: &ConvShape) -> usize {
        let [hp, wp] = g.padded();
        hp * wp + g.kernel[1] + wp
    }

    /// Whether the depthwise kernels take this convolution: padding below the kernel size (at
    /// stride 1 the input gradient's padding `k − 1 − p` must not be negative), any stride.
    pub fn covers(kernel: [usize; 2], padding: [usize; 2]) -> bool {
        padding[0] < kernel[0] && padding[1] < kernel[1]
    }

    /// `(oy, ox, t)` → the padded-plane offset of tap `t` of output `(oy, ox)`.
    #[inline(always)]
    fn tap_offset(g: &ConvShape, oy: usize, ox: usize, t: usize) -> usize {
        let wp = g.padded()[1];
        let kw = g.kernel[1];
        (oy * g.stride[0] + t / kw) * wp + ox * g.stride[1] + t % kw
    }

    /// One channel at a stride above 1: `y [OH, OW] = Σ_t w[t] · xp[tap]`, gathered.
    fn strided_plane(g: &ConvShape, xp: &[f32], w: &[f32], y: &mut [f32]) {
        let [oh, ow] = g.out_hw();
        for oy in 0..oh {
            let row = &mut y[oy * ow..][..ow];
            row.fill(0.0);
            for (t, &wt) in w.iter().enumerate() {
                for (ox, o) in row.iter_mut().enumerate() {
                    *o += wt * xp[tap_offset(g, oy, ox, t)];
                }
            }
        }
    }

    /// The input gradient of one channel at a stride above 1: `dy` scattered through the taps
    /// into the padded plane `dxp`, then cropped into `dx [H, W]`.
    fn strided_plane_input_grad(
        g: &ConvShape,
        dy: &[f32],
        w: &[f32],
        dxp: &mut [f32],
        dx: &mut [f32],
    ) {
        let [oh, ow] = g.out_hw();
        let wp = g.padded()[1];
        let [ph, pw] = g.padding;
        dxp.fill(0.0);
        for oy in 0..oh {
            let row = &dy[oy * ow..][..ow];
            for (t, &wt) in w.iter().enumerate() {
                for (ox, &d) in row.iter().enumerate() {
                    dxp[tap_offset(g, oy, ox, t)] += wt * d;
                }
            }
        }
        for iy in 0..g.height {
            dx[iy * g.width..][..g.width].copy_from_slice(&dxp[(iy + ph) * wp + pw..][..g.width]);
        }
    }

    fn convolve(x: &[f32], g: &ConvShape, w: impl Fn(usize, usize) -> f32 + Sync) -> Vec<f32> {
        assert!(
            covers(g.kernel, g.padding),
            "depthwise kernels: padding below the kernel only"
        );
        let [kh, kw] = g.kernel;
        let [oh, ow] = g.out_hw();
        let wp = g.padded()[1];
        let (hw, out) = (g.height * g.width, oh * ow);
        let mut y = vec![0.0f32; g.batch * g.c_out * out];
        if out == 0 || hw == 0 {
            return y;
        }
        let taps: Vec<f32> = (0..g.c_out * kh * kw)
            .map(|i| w(i / (kh * kw), i % (kh * kw)))
            .collect();
        let isa = Isa::current();
        y.par_chunks_mut(out)
            .zip(x.par_chunks(hw))
            .enumerate()
            .for_each_init(
                || (vec![0.0f32; padded_len(g)], vec![0.0f32; oh * wp]),
                |(xp, acc), (i, (yc, xc))| {
                    let _flush = crate::kernels::denormal::FlushGuard::new();
                    let c = i % g.c_out;
                    super::pad_plane(g, xc, xp);
                    let w = &taps[c * kh * kw..][..kh * kw];
                    if g.stride == [1, 1] {
                        plane_at(isa, g, xp, w, acc, yc);
                    } else {
                        strided_plane(g, xp, w, yc);
                    }
                },
            );
        y
    }

    /// The forward pass: `x [N, C, H, W]`, `w [C, 1, kh, kw]`.
    pub fn conv2d(x: &[f32], w: &[f32], g: &ConvShape) -> Vec<f32> {
        let [kh, kw] = g.kernel;
        assert_eq!(g.c_in, g.c_out, "depthwise: C_in = C_out");
        assert_eq!(
            x.len(),
            g.batch * g.c_in * g.height * g.width,
            "depthwise: input size"
        );
        assert_eq!(w.len(), g.c_out * kh * kw, "depthwise: weight size");
        convolve(x, g, |c, t| w[c * kh * kw + t])
    }

    /// The input gradient: at stride 1 the depthwise convolution of `dy` with the kernel
    /// flipped and padding `k − 1 − p`; above it, `dy` scattered through the taps.
    pub fn input_grad(w: &[f32], dy: &[f32], g: &ConvShape) -> Vec<f32> {
        let [kh, kw] = g.kernel;
        if g.stride != [1, 1] {
            return strided_input_grad(w, dy, g);
        }
        // C_in = C_out, so the swap of channels is no change.
        let t = super::gradient_shape(g, dy.len());
        convolve(dy, &t, |c, tap| {
            let (ky, kx) = (tap / kw, tap % kw);
            w[c * kh * kw + (kh - 1 - ky) * kw + (kw - 1 - kx)]
        })
    }

    fn strided_input_grad(w: &[f32], dy: &[f32], g: &ConvShape) -> Vec<f32> {
        let [kh, kw] = g.kernel;
        let [oh, ow] = g.out_hw();
        let (hw, out) = (g.height * g.width, oh * ow);
        assert_eq!(
            dy.len(),
            g.batch * g.c_out * out,
            "depthwise: gradient size"
        );
        let mut dx = vec![0.0f32; g.batch * g.c_in * hw];
        if out == 0 || hw == 0 {
            return dx;
        }
        dx.par_chunks_mut(hw)
            .zip(dy.par_chunks(out))
            .enumerate()
            .for_each_init(
                || vec![0.0f32; padded_len(g)],
                |dxp, (i, (dxc, dyc))| {
                    let _flush = crate::kernels::denormal::FlushGuard::new();
                    let c = i % g.c_out;
                    strided_plane_input_grad(g, dyc, &w[c * kh * kw..][..kh * kw], dxp, dxc);
                },
            );
        dx
    }

    /// The weight gradient `[C, 1, kh, kw]`: per channel and tap, the dot product of the
    /// output gradient with the input the tap read (at stride 1 the padded-width output
    /// gradient with the shifted padded input), summed over images.
    pub fn weight_grad(x: &[f32], dy: &[f32], g: &ConvShape) -> Vec<f32> {
        assert!(
            covers(g.kernel, g.padding),
            "depthwise kernels: padding below the kernel only"
        );
        let [kh, kw] = g.kernel;
        let [oh, ow] = g.out_hw();
        let wp = g.padded()[1];
        let (hw, out) = (g.height * g.width, oh * ow);
        assert_eq!(x.len(), g.batch * g.c_in * hw, "depthwise: input size");
        assert_eq!(
            dy.len(),
            g.batch * g.c_out * out,
            "depthwise: gradient size"
        );
        let taps = kh * kw;
        // Per channel (in parallel), summed over images in order: deterministic.
        let per_channel: Vec<Vec<f64>> = (0..g.c_out)
            .into_par_iter()
            .map(|c| {
                let _flush = crate::kernels::denormal::FlushGuard::new();
                let mut xp = vec![0.0f32; padded_len(g)];
                let mut dyp = vec![0.0f32; oh * wp];
                let mut sums = vec![0.0f64; taps];
                for n in 0..g.batch {
                    let img = n * g.c_out + c;
                    super::pad_plane(g, &x[img * hw..][..hw], &mut xp);
                    let dyc = &dy[img * out..][..out];
                    if g.stride != [1, 1] {
                        for (t, s) in sums.iter_mut().enumerate() {
                            let mut acc = 0.0f32;
                            for oy in 0..oh {
                                for (ox, &d) in dyc[oy * ow..][..ow].iter().enumerate() {
                                    acc += d * xp[tap_offset(g, oy, ox, t)];
                                }
                            }
                            *s += acc as f64;
                        }
                        continue;
                    }
                    for oy in 0..oh {
                        dyp[oy * wp..][..ow].copy_from_slice(&dyc[oy * ow..][..ow]);
                    }
                    for (t, s) in sums.iter_mut().enumerate() {
                        let off = (t / kw) * wp + t % kw;
                        *s += super::super::norm::dot(&dyp, &xp[off..][..dyp.len()]) as f64;
                    }
                }
                sums
            })
            .collect();
        per_channel
            .into_iter()
            .flatten()
            .map(|v| v as f32)
            .collect()
    }
}
