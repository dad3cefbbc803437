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
        let small = w_dims[0] <= 4 * OB && w_dims[1] * w_dims[2] * w_dims[3] <= 1024 && w_dims[3] <= 32;
        stride == [1, 1] && x.strides[3] == 1 && small && std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (x, w_dims, stride);
        false
    }
}

/// `out[img, o, y, x] = Σ_{c,i,j} xp[img, c, y+i, x+j] · w[o, c, i, j]` for
/// the images `images`, stride 1, where `xp` is `x` with `pad` zeros
/// (`[top, bottom, left, right]`) around its spatial axes; `out` is
/// row-major `[N, O, Ho, Wo]`.
///
/// # Safety
/// [`direct_applies`] holds; `x` and `w` point at element 0 of their maps'
/// tensors (map offsets included) with `x_dims` (unpadded) and `w_dims`;
/// `out` holds the output.
#[allow(clippy::too_many_arguments)]
pub unsafe fn direct_f32(x: *const f32, xm: &Affine, x_dims: [usize; 4], pad: [usize; 4], w: *const f32, wm: &Affine, w_dims: [usize; 4], out: *mut f32, images: std::ops::Range<usize>) {
    #[cfg(target_arch = "x86_64")]
    unsafe {
        x86::direct(x, xm, x_dims, pad, w, wm, w_dims, out, images)
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (x, xm, x_dims, pad, w, wm, w_dims, out, images);
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
    pub(super) unsafe fn direct(x: *const f32, xm: &Affine, [_, c, h, wd]: [usize; 4], [pt, pb, pl, pr]: [usize; 4], w: *const f32, wm: &Affine, [o, _, kh, kw]: [usize; 4], out: *mut f32, images: std::ops::Range<usize>) {
        let (ho, wo) = (h + pt + pb - kh + 1, wd + pl + pr - kw + 1);
        let s = |d: usize, m: &Affine| m.strides[d] as isize;
        let g = Geometry { c, kw, xc: s(1, xm), xh: s(2, xm), wo: s(0, wm), wc: s(1, wm), wh: s(2, wm), ww: s(3, wm) };
        let xn = s(0, xm);
        unsafe {
            for img in images {
                let ximg = x.offset(img as isize * xn);
                for ob in (0..o).step_by(OB) {
                    let wblock = w.offset(ob as isize * g.wo);
                    for y in 0..ho {
                        // Kernel rows that land on the input (not on the pad).
                        let rows = pt.saturating_sub(y)..kh.min(h + pt - y);
                        for xb in (0..wo).step_by(16) {
                            let b = Block {
                                // The input row of kernel row 0 (maybe above the input).
                                src: ximg.wrapping_offset((y as isize - pt as isize) * g.xh),
                                col: xb as isize - pl as isize,
                                width: wd as isize,
                                rows: rows.clone(),
                                valid: (wo - xb).min(16),
                            };
                            let dst = out.add(((img * o + ob) * ho + y) * wo + xb);
                            let plane = (ho * wo) as isize;
                            match o - ob {
                                1 => block::<1>(&g, &b, wblock, dst, plane),
                                2 => block::<2>(&g, &b, wblock, dst, plane),
                                3 => block::<3>(&g, &b, wblock, dst, plane),
                                4 => block::<4>(&g, &b, wblock, dst, plane),
                                5 => block::<5>(&g, &b, wblock, dst, plane),
                                _ => block::<OB>(&g, &b, wblock, dst, plane),
                            }
                        }
                    }
                }
            }
        }
    }

    /// Where one 16-pixel block of an output row reads.
    struct Block {
        src: *const f32,
        /// Input column of the block's first pixel at kernel column 0.
        col: isize,
        width: isize,
        rows: std::ops::Range<usize>,
        /// Real pixels of the 16.
        valid: usize,
    }

    /// Lanes `lo..hi` of 16 as two 8-lane masks.
    #[target_feature(enable = "avx2")]
    #[inline]
    fn masks(lo: isize, hi: isize) -> (__m256i, __m256i) {
        let lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
        let m = |base: i32| {
            let l = _mm256_add_epi32(lane, _mm256_set1_epi32(base));
            _mm256_and_si256(_mm256_cmpgt_epi32(l, _mm256_set1_epi32(lo as i32 - 1)), _mm256_cmpgt_epi32(_mm256_set1_epi32(hi as i32), l))
        };
        (m(0), m(8))
    }

    /// `NB` output channels × 16 pixels of one row.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    unsafe fn block<const NB: usize>(g: &Geometry, b: &Block, w: *const f32, dst: *mut f32, plane: isize) {
        let (m0, m1) = masks(0, b.valid as isize);
        // Per kernel column: whether the 16 lanes all read the row, else
        // the lane masks (they depend on the column only, not on the
        // channel or kernel row).
        const MAX_KW: usize = 32;
        let zero = _mm256_setzero_si256();
        let mut lane_masks = [(false, zero, zero); MAX_KW];
        for (j, m) in lane_masks.iter_mut().enumerate().take(g.kw.min(MAX_KW)) {
            let c0 = b.col + j as isize;
            let full = c0 >= 0 && c0 + 16 <= b.width && b.valid == 16;
            let (l0, l1) = if full { (zero, zero) } else { masks((-c0).max(0), (b.width - c0).min(b.valid as isize)) };
            *m = (full, l0, l1);
        }
        let mut acc = [[_mm256_setzero_ps(); 2]; NB];
        unsafe {
            for ch in 0..g.c {
                for i in b.rows.clone() {
                    let row = b.src.wrapping_offset(ch as isize * g.xc + i as isize * g.xh);
                    let wrow = w.offset(ch as isize * g.wc + i as isize * g.wh);
                    for (j, &(full, l0, l1)) in lane_masks.iter().enumerate().take(g.kw) {
                        let c0 = b.col + j as isize;
                        let p = row.wrapping_offset(c0);
                        // Lanes on the pad or past the output width are masked
                        // off (read as zero), which keeps every load in the row.
                        let (v0, v1) = if full {
                            (_mm256_loadu_ps(p), _mm256_loadu_ps(p.add(8)))
                        } else {
                            (_mm256_maskload_ps(p, l0), _mm256_maskload_ps(p.wrapping_add(8), l1))
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
                if b.valid == 16 {
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
