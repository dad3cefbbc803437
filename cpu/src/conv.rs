//! Direct convolution for the small-channel, stride-1 convolutions of the
//! course's CNNs (LeNet: 1-16 channels). im2col + GEMM moves every input
//! element once per kernel tap and reuses it only once per output channel,
//! so with few channels it is bound by data movement. The forward kernel
//! keeps 6 output channels × two 8-pixel row segments of accumulators in
//! registers and streams each input row once per tap; the weight-gradient
//! kernel accumulates per-tap products over pixels in vector registers.
//! Wider convolutions go through GEMM (see `exec.rs`).

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

/// Widest forward kernel (the weight gradient's output width) that
/// [`wgrad_f32`] handles: its accumulators must fit the 16 vector registers.
pub const WGRAD_MAX_KW: usize = 7;

/// Whether [`wgrad_f32`] handles this weight-gradient-shaped convolution
/// (`x [n, c, h, w]` with `w [o, c, kh, kw]` giving the small `[n, o, ho,
/// wo]`): stride 1, unit last strides, the forward kernel (`ho × wo`) at
/// most 7 wide, and few channel pairs, where a GEMM's packing would cost
/// more than its reuse saves.
pub fn wgrad_applies(x: &Affine, w: &Affine, [n, _, h, wd]: [usize; 4], [o, _, kh, kw]: [usize; 4], stride: [usize; 2]) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        let (ho, wo) = ((h + 1).saturating_sub(kh), (wd + 1).saturating_sub(kw));
        let shape = (1..=WGRAD_MAX_KW).contains(&wo) && (1..=WGRAD_MAX_KW).contains(&ho) && n * o <= 256;
        stride == [1, 1] && x.strides[3] == 1 && w.strides[3] == 1 && shape && std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (x, w, n, h, wd, o, kh, kw, stride);
        false
    }
}

/// Floats of vector accumulators [`wgrad_f32`] needs beside its `[n, o,
/// ho, wo]` output.
pub fn wgrad_scratch(n: usize, o: usize, (ho, wo): (usize, usize)) -> usize {
    let nb = wgrad_block(wo);
    n * o.div_ceil(nb) * nb * ho * wo * 8
}

/// Output channels per register block for a forward kernel `wo` wide:
/// `nb·wo` accumulators, `nb` gradient rows and one input row in 16 registers.
fn wgrad_block(wo: usize) -> usize {
    match wo {
        1 => 7,
        2 => 4,
        3 | 4 => 3,
        5 | 6 => 2,
        _ => 1,
    }
}

/// `out[a, b, i, j] = Σ_{c ∈ images} Σ_{y,x} x[a, c, i+y, j+x] · w[b, c, y, x]`:
/// the weight gradient of a stride-1 convolution, where `x` is the forward
/// input with batch and channels swapped and `w` the output's gradient
/// likewise. A direct kernel: each step loads 8 pixels of `nb` gradient
/// rows and of `wo` shifted input rows and does `nb·wo` FMAs into vector
/// accumulators; lanes are summed once at the end. `out` is row-major
/// `[n, o, ho, wo]`; `scratch` holds [`wgrad_scratch`] floats. Calls over
/// disjoint `images` with their own `out` and `scratch` sum to the whole.
///
/// # Safety
/// [`wgrad_applies`] holds; `x` and `w` point at element 0 of their maps'
/// tensors (offsets included), `x_dims` and `w_dims` are theirs.
#[allow(clippy::too_many_arguments)]
pub unsafe fn wgrad_f32(x: *const f32, xm: &Affine, x_dims: [usize; 4], w: *const f32, wm: &Affine, w_dims: [usize; 4], out: &mut [f32], scratch: &mut [f32], images: std::ops::Range<usize>) {
    #[cfg(target_arch = "x86_64")]
    unsafe {
        x86::wgrad(x, xm, x_dims, w, wm, w_dims, out, scratch, images)
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (x, xm, x_dims, w, wm, w_dims, out, scratch, images);
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
        // The output cut into 8-pixel row segments, paired with the segment
        // below (same columns, so the same lane masks): an 8-wide output
        // fills both halves of a block.
        unsafe {
            for img in images {
                let ximg = x.offset(img as isize * xn);
                let segment = |y: usize, xb: usize| Segment {
                    // The input row of kernel row 0 (maybe above the input).
                    src: ximg.wrapping_offset((y as isize - pt as isize) * g.xh),
                    // Kernel rows that land on the input (not on the pad).
                    rows: pt.saturating_sub(y)..kh.min((h + pt).saturating_sub(y)),
                    out: y * wo + xb,
                };
                for ob in (0..o).step_by(OB) {
                    let wblock = w.offset(ob as isize * g.wo);
                    let dst = out.add((img * o + ob) * ho * wo);
                    for xb in (0..wo).step_by(8) {
                        let columns = Columns::new(&g, xb as isize - pl as isize, wd as isize, (wo - xb).min(8));
                        for y in (0..ho).step_by(2) {
                            // An odd last row is paired with an empty one.
                            let below = if y + 1 < ho { segment(y + 1, xb) } else { Segment { rows: 0..0, ..segment(y, xb) } };
                            let halves = if y + 1 < ho { 2 } else { 1 };
                            let b = Block { pair: [segment(y, xb), below], halves, columns: &columns };
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

    /// Up to 8 consecutive output pixels of one row, and where they read.
    struct Segment {
        src: *const f32,
        /// Kernel rows on the input (empty: a half with nothing to compute).
        rows: std::ops::Range<usize>,
        /// Offset of the first pixel in an output plane.
        out: usize,
    }

    /// Two segments at the same columns of two rows, one per half of the
    /// 16-lane accumulators.
    struct Block<'c> {
        pair: [Segment; 2],
        /// 1 when the second half is empty (below an odd last row).
        halves: usize,
        columns: &'c Columns,
    }

    /// Widest kernel the direct kernel takes ([`super::direct_applies`]).
    const MAX_KW: usize = 32;
    /// A lane mask's "on" (the sign bit set).
    const ONES: i32 = -1;

    /// What the 8 columns of a segment read, per kernel column (the same
    /// for every row, channel and kernel row): the kernel columns whose
    /// lanes reach the input, each with its lane mask; a column whose lanes
    /// are all on the pad or past the output is left out.
    struct Columns {
        /// Kernel column and its lane mask (all set when the 8 lanes read the row).
        taps: [(usize, __m256i); MAX_KW],
        count: usize,
        /// Every tap reads all 8 lanes.
        all_full: bool,
        /// Input column of the first pixel at kernel column 0.
        col: isize,
        /// Real pixels of the 8.
        valid: usize,
    }

    impl Columns {
        #[target_feature(enable = "avx2")]
        fn new(g: &Geometry, col: isize, width: isize, valid: usize) -> Columns {
            let mut c = Columns { taps: [(0, _mm256_setzero_si256()); MAX_KW], count: 0, all_full: true, col, valid };
            for j in 0..g.kw.min(MAX_KW) {
                let c0 = col + j as isize;
                let (lo, hi) = ((-c0).max(0), (width - c0).min(valid as isize));
                if lo < hi {
                    c.all_full &= lo == 0 && hi == 8;
                    c.taps[c.count] = (j, masks(lo, hi).0);
                    c.count += 1;
                }
            }
            c
        }
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

    /// `NB` output channels × two 8-pixel segments.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    unsafe fn block<const NB: usize>(g: &Geometry, b: &Block, w: *const f32, dst: *mut f32, plane: isize) {
        let cols = b.columns;
        let [s0, s1] = &b.pair;
        let rows = s0.rows.start.min(s1.rows.start)..s0.rows.end.max(s1.rows.end);
        let fz = _mm256_setzero_ps();
        let mut acc = [[fz; 2]; NB];
        unsafe {
            for ch in 0..g.c {
                for i in rows.clone() {
                    // A half whose row is on the pad (or which is empty) reads zeros.
                    let (on0, on1) = (s0.rows.contains(&i), s1.rows.contains(&i));
                    let row0 = s0.src.wrapping_offset(ch as isize * g.xc + i as isize * g.xh + cols.col);
                    let row1 = s1.src.wrapping_offset(ch as isize * g.xc + i as isize * g.xh + cols.col);
                    let wrow = w.offset(ch as isize * g.wc + i as isize * g.wh);
                    let taps = &cols.taps[..cols.count];
                    // The 8 lanes of kernel column j times every output channel's tap.
                    let mut fma = |j: usize, v0: __m256, v1: __m256| {
                        let wj = wrow.offset(j as isize * g.ww);
                        for (k, a) in acc.iter_mut().enumerate() {
                            let wv = _mm256_broadcast_ss(&*wj.offset(k as isize * g.wo));
                            a[0] = _mm256_fmadd_ps(wv, v0, a[0]);
                            a[1] = _mm256_fmadd_ps(wv, v1, a[1]);
                        }
                    };
                    if on0 && on1 && cols.all_full {
                        for &(j, _) in taps {
                            fma(j, _mm256_loadu_ps(row0.add(j)), _mm256_loadu_ps(row1.add(j)));
                        }
                    } else {
                        // Lanes on the pad, past the output width or in a half
                        // whose row is on the pad are masked off (read as
                        // zero), which keeps every load in the row.
                        let (r0, r1) = (if on0 { ONES } else { 0 }, if on1 { ONES } else { 0 });
                        let (r0, r1) = (_mm256_set1_epi32(r0), _mm256_set1_epi32(r1));
                        for &(j, m) in taps {
                            let v0 = _mm256_maskload_ps(row0.wrapping_add(j), _mm256_and_si256(m, r0));
                            let v1 = _mm256_maskload_ps(row1.wrapping_add(j), _mm256_and_si256(m, r1));
                            fma(j, v0, v1);
                        }
                    }
                }
            }
            for (k, a) in acc.iter().enumerate() {
                for (half, seg) in b.pair.iter().enumerate().take(b.halves) {
                    let d = dst.offset(k as isize * plane).add(seg.out);
                    if cols.valid == 8 {
                        _mm256_storeu_ps(d, a[half]);
                    } else {
                        // Through the stack: a masked store is slow on AMD cores.
                        let mut lanes = [0.0f32; 8];
                        _mm256_storeu_ps(lanes.as_mut_ptr(), a[half]);
                        std::ptr::copy_nonoverlapping(lanes.as_ptr(), d, cols.valid);
                    }
                }
            }
        }
    }

    /// Strides of one weight-gradient convolution (elements).
    struct WGeom {
        kh: usize,
        kw: usize,
        ho: usize,
        /// Channels per block (the accumulator layout's; the last block may use fewer).
        nb: usize,
        xc: isize,
        xh: isize,
        wob: isize,
        wc: isize,
        wh: isize,
    }

    #[target_feature(enable = "avx2,fma")]
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn wgrad(x: *const f32, xm: &Affine, [n, _, h, wd]: [usize; 4], w: *const f32, wm: &Affine, [o, _, kh, kw]: [usize; 4], out: &mut [f32], scratch: &mut [f32], images: std::ops::Range<usize>) {
        let (ho, wo) = (h + 1 - kh, wd + 1 - kw);
        let nb = super::wgrad_block(wo);
        let blocks = o.div_ceil(nb);
        let s = |d: usize, m: &Affine| m.strides[d] as isize;
        let g = WGeom { kh, kw, ho, nb, xc: s(1, xm), xh: s(2, xm), wob: s(0, wm), wc: s(1, wm), wh: s(2, wm) };
        let (xn, per_a) = (s(0, xm), blocks * ho * nb * wo * 8);
        let vacc = &mut scratch[..n * per_a];
        vacc.fill(0.0);
        unsafe {
            for c in images {
                for a in 0..n {
                    let xa = x.offset(a as isize * xn + c as isize * g.xc);
                    for blk in 0..blocks {
                        let b0 = blk * nb;
                        let wb = w.offset(b0 as isize * g.wob + c as isize * g.wc);
                        let acc = vacc.as_mut_ptr().add(a * per_a + blk * ho * nb * wo * 8) as *mut __m256;
                        wgrad_dispatch(&g, xa, wb, (o - b0).min(nb), wo, acc);
                    }
                }
            }
            // Sum each accumulator's lanes into out[a, b, i, j].
            for a in 0..n {
                for b in 0..o {
                    let (blk, bb) = (b / nb, b % nb);
                    for i in 0..ho {
                        for j in 0..wo {
                            let v = &vacc[a * per_a + ((blk * ho + i) * nb + bb) * wo * 8 + j * 8..][..8];
                            out[((a * o + b) * ho + i) * wo + j] = v.iter().sum();
                        }
                    }
                }
            }
        }
    }

    /// Picks the register block for `nb` channels (at most the block size
    /// of `wo`) and a forward kernel `wo` wide.
    #[target_feature(enable = "avx2,fma")]
    unsafe fn wgrad_dispatch(g: &WGeom, xa: *const f32, wb: *const f32, nb: usize, wo: usize, acc: *mut __m256) {
        macro_rules! pick {
            ($($wo:literal => [$($nb:literal)*]),*) => {
                match (wo, nb) {
                    $($(($wo, $nb) => wgrad_rows::<$nb, $wo>(g, xa, wb, acc),)*)*
                    _ => unreachable!("wgrad_applies admits no {wo}-wide kernel with {nb} channels per block"),
                }
            };
        }
        unsafe {
            pick!(1 => [1 2 3 4 5 6 7], 2 => [1 2 3 4], 3 => [1 2 3], 4 => [1 2 3], 5 => [1 2], 6 => [1 2], 7 => [1])
        }
    }

    /// One image and one channel pair block: for every output row `i`,
    /// `acc[i][b][j] += Σ_{y, x} x[i+y, j+x] · w[b][y, x]` over 8-pixel
    /// steps of `x` (the last one masked), accumulators in registers.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    unsafe fn wgrad_rows<const NB: usize, const WO: usize>(g: &WGeom, xa: *const f32, wb: *const f32, acc: *mut __m256) {
        let (full, rest) = (g.kw / 8, g.kw % 8);
        let (tail, _) = masks(0, rest as isize);
        // 8 pixels from `col` of every gradient row and every shifted input
        // row (masked loads read zeros past the row), multiplied pairwise.
        macro_rules! step {
            ($r:ident, $xrow:ident, $wrow:ident, $col:expr, $load:expr) => {{
                let mut wv = [_mm256_setzero_ps(); NB];
                for (b, v) in wv.iter_mut().enumerate() {
                    *v = $load($wrow.offset(b as isize * g.wob).add($col));
                }
                for j in 0..WO {
                    let xv = $load($xrow.add($col + j));
                    for b in 0..NB {
                        $r[b][j] = _mm256_fmadd_ps(wv[b], xv, $r[b][j]);
                    }
                }
            }};
        }
        unsafe {
            for i in 0..g.ho {
                let slot = acc.add(i * g.nb * WO);
                let mut r = [[_mm256_setzero_ps(); WO]; NB];
                for (b, row) in r.iter_mut().enumerate() {
                    for (j, v) in row.iter_mut().enumerate() {
                        *v = _mm256_loadu_ps(slot.add(b * WO + j) as *const f32);
                    }
                }
                for y in 0..g.kh {
                    let xrow = xa.offset((i + y) as isize * g.xh);
                    let wrow = wb.offset(y as isize * g.wh);
                    for k in 0..full {
                        step!(r, xrow, wrow, k * 8, |p| _mm256_loadu_ps(p));
                    }
                    if rest > 0 {
                        step!(r, xrow, wrow, full * 8, |p| _mm256_maskload_ps(p, tail));
                    }
                }
                for (b, row) in r.iter().enumerate() {
                    for (j, v) in row.iter().enumerate() {
                        _mm256_storeu_ps(slot.add(b * WO + j) as *mut f32, *v);
                    }
                }
            }
        }
    }
}
