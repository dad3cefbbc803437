//! Direct convolution for the small-channel, stride-1 convolutions of the
//! course's CNNs (LeNet: 1-16 channels). im2col + GEMM moves every input
//! element once per kernel tap and reuses it only once per output channel,
//! so with few channels it is bound by data movement; a direct kernel
//! keeps a 6-output-channel × 16-pixel block of accumulators in registers
//! and streams each input row once per tap. Wider convolutions still go
//! through GEMM (see `exec.rs`).

use d2l_passes::fusion::Affine;

/// Output channels per register block.
pub const OB: usize = 6;

/// Whether [`direct_f32`] handles this convolution on this machine.
pub fn direct_applies(x: &Affine, w_dims: [usize; 4], stride: [usize; 2]) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        let small = w_dims[0] <= 4 * OB && w_dims[1] * w_dims[2] * w_dims[3] <= 1024;
        stride == [1, 1] && x.strides[3] == 1 && small && std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (x, w_dims, stride);
        false
    }
}

/// `out[img, o, y, x] = Σ_{c,i,j} x[img, c, y+i, x+j] · w[o, c, i, j]` for
/// the images `images`, stride 1, `out` row-major `[N, O, Ho, Wo]`.
///
/// # Safety
/// [`direct_applies`] holds; `x` and `w` point at element 0 of their maps'
/// tensors (map offsets included) with `x_dims`/`w_dims`; `out` holds the output.
#[allow(clippy::too_many_arguments)]
pub unsafe fn direct_f32(x: *const f32, xm: &Affine, x_dims: [usize; 4], w: *const f32, wm: &Affine, w_dims: [usize; 4], out: *mut f32, images: std::ops::Range<usize>) {
    #[cfg(target_arch = "x86_64")]
    unsafe {
        x86::direct(x, xm, x_dims, w, wm, w_dims, out, images)
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (x, xm, x_dims, w, wm, w_dims, out, images);
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::OB;
    use d2l_passes::fusion::Affine;

    /// Strides and extents shared by every block of one convolution.
    struct Geometry {
        c: usize,
        kh: usize,
        kw: usize,
        xc: isize,
        xh: isize,
        wo: isize,
        wc: isize,
        wh: isize,
        ww: isize,
    }

    #[target_feature(enable = "avx2,fma")]
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn direct(x: *const f32, xm: &Affine, [_, c, h, wd]: [usize; 4], w: *const f32, wm: &Affine, [o, _, kh, kw]: [usize; 4], out: *mut f32, images: std::ops::Range<usize>) {
        let (ho, wo) = (h - kh + 1, wd - kw + 1);
        let s = |d: usize, m: &Affine| m.strides[d] as isize;
        let g = Geometry { c, kh, kw, xc: s(1, xm), xh: s(2, xm), wo: s(0, wm), wc: s(1, wm), wh: s(2, wm), ww: s(3, wm) };
        let xn = s(0, xm);
        unsafe {
            for img in images {
                let ximg = x.offset(img as isize * xn);
                for ob in (0..o).step_by(OB) {
                    let wblock = w.offset(ob as isize * g.wo);
                    for y in 0..ho {
                        for xb in (0..wo).step_by(16) {
                            let src = ximg.offset(y as isize * g.xh + xb as isize);
                            let dst = out.add(((img * o + ob) * ho + y) * wo + xb);
                            let plane = (ho * wo) as isize;
                            let valid = wo - xb;
                            match o - ob {
                                1 => block::<1>(&g, src, wblock, dst, plane, valid),
                                2 => block::<2>(&g, src, wblock, dst, plane, valid),
                                3 => block::<3>(&g, src, wblock, dst, plane, valid),
                                4 => block::<4>(&g, src, wblock, dst, plane, valid),
                                5 => block::<5>(&g, src, wblock, dst, plane, valid),
                                _ => block::<OB>(&g, src, wblock, dst, plane, valid),
                            }
                        }
                    }
                }
            }
        }
    }

    /// `NB` output channels × 16 pixels (`valid` of them real) of one row.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    unsafe fn block<const NB: usize>(g: &Geometry, src: *const f32, w: *const f32, dst: *mut f32, plane: isize, valid: usize) {
        let lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
        let m0 = _mm256_cmpgt_epi32(_mm256_set1_epi32(valid.min(16) as i32), lane);
        let m1 = _mm256_cmpgt_epi32(_mm256_set1_epi32(valid.min(16) as i32 - 8), lane);
        let full = valid >= 16;
        let mut acc = [[_mm256_setzero_ps(); 2]; NB];
        unsafe {
            for ch in 0..g.c {
                for i in 0..g.kh {
                    let row = src.offset(ch as isize * g.xc + i as isize * g.xh);
                    let wrow = w.offset(ch as isize * g.wc + i as isize * g.wh);
                    for j in 0..g.kw {
                        let p = row.add(j);
                        // Lanes past the output width are masked, which keeps
                        // every load inside the input row.
                        let (v0, v1) = if full {
                            (_mm256_loadu_ps(p), _mm256_loadu_ps(p.add(8)))
                        } else {
                            (_mm256_maskload_ps(p, m0), _mm256_maskload_ps(p.add(8), m1))
                        };
                        let wj = wrow.offset(j as isize * g.ww);
                        for (k, a) in acc.iter_mut().enumerate() {
                            let wv = _mm256_broadcast_ss(&*wj.offset(k as isize * g.wo));
                            a[0] = _mm256_fmadd_ps(wv, v0, a[0]);
                            a[1] = _mm256_fmadd_ps(wv, v1, a[1]);
                        }
                    }
                }
            }
            for (k, a) in acc.iter().enumerate() {
                let d = dst.offset(k as isize * plane);
                if full {
                    _mm256_storeu_ps(d, a[0]);
                    _mm256_storeu_ps(d.add(8), a[1]);
                } else {
                    _mm256_maskstore_ps(d, m0, a[0]);
                    _mm256_maskstore_ps(d.add(8), m1, a[1]);
                }
            }
        }
    }
}
