//! Single-precision GEMM, `C = A·B (+ C)`, for `matmul` and convolutions.
//!
//! BLIS loop order: B is packed in `KC × NC` blocks of `NR`-wide panels, A in
//! `MC × KC` blocks of `MR`-tall panels, and a register-blocked micro-kernel
//! multiplies one A panel by one B panel. Packing reads any strides, so
//! transposed and broadcast operands (what autodiff produces) cost nothing
//! extra. The packing buffers are allocated once per compiled program
//! ([`Scratch`]); a multiplication allocates nothing.
//!
//! The micro-kernel is chosen at run time: 8×32 with AVX-512 (16 zmm
//! accumulators), 6×16 with AVX2+FMA (12 ymm accumulators), else portable
//! Rust that LLVM vectorises for the baseline target; the packed layouts
//! follow its tile (`MR` rows of A, `NR` columns of B per panel). Why not the `gemm` crate: it allocates its packing buffers on
//! every call (gemm-common 0.19 `gemm.rs`: `MemBuffer::new`,
//! `vec![false; mc / MR]`), and steps must not allocate. On square
//! products this kernel matches `torch.mm` on 1 and 2 threads (README
//! "Performance", `cargo bench -p d2l-cpu --bench gemm`).

use crate::pool::Pool;

/// The tile of the AVX2 and portable micro-kernels.
const MR: usize = 6;
const NR: usize = 16;
const KC: usize = 256;
/// A multiple of every kernel's `mr` (6 and 8).
const MC: usize = 120;
/// A multiple of every kernel's `nr` (16 and 32).
const NC: usize = 2048;
/// A blocks of at most this many values (32 KB: in L1) are not packed.
const DIRECT_A: usize = 8192;
/// Below this many multiply-adds, a direct loop beats packing.
pub const SMALL: usize = 4096;
/// Below this many multiply-adds per thread, one thread does it all.
pub const PER_THREAD: usize = 1 << 17;

/// A read-only matrix: element `(i, j)` is at `ptr + row(i) + col(j)`, where
/// `row(i)` is `rows[i]` when a row table is given, else `i·rs` (likewise
/// for columns). Tables make a GEMM operand of any gather pattern, such as
/// the patches of a convolution (implicit im2col: no copy of the patches).
#[derive(Clone, Copy, Debug)]
pub struct MatRef<'t> {
    pub ptr: *const f32,
    pub rs: isize,
    pub cs: isize,
    pub rows: Option<&'t [isize]>,
    pub cols: Option<&'t [isize]>,
}

impl<'t> MatRef<'t> {
    /// A strided matrix.
    pub fn strided(ptr: *const f32, rs: isize, cs: isize) -> MatRef<'t> {
        MatRef { ptr, rs, cs, rows: None, cols: None }
    }

    #[inline(always)]
    fn row(&self, i: usize) -> isize {
        match self.rows {
            Some(t) => t[i],
            None => i as isize * self.rs,
        }
    }

    #[inline(always)]
    fn col(&self, j: usize) -> isize {
        match self.cols {
            Some(t) => t[j],
            None => j as isize * self.cs,
        }
    }

    /// # Safety
    /// `(i, j)` must be inside the matrix.
    #[inline(always)]
    unsafe fn at(&self, i: usize, j: usize) -> f32 {
        unsafe { *self.ptr.offset(self.row(i) + self.col(j)) }
    }

    fn shifted(&self, i: usize, j: usize) -> MatRef<'t> {
        let mut m = *self;
        match self.rows {
            Some(t) => m.rows = Some(&t[i.min(t.len())..]),
            None => m.ptr = m.ptr.wrapping_offset(i as isize * self.rs),
        }
        match self.cols {
            Some(t) => m.cols = Some(&t[j.min(t.len())..]),
            None => m.ptr = m.ptr.wrapping_offset(j as isize * self.cs),
        }
        m
    }

    /// Columns are one unit-stride run (packing can copy rows).
    fn unit_cols(&self) -> bool {
        self.cols.is_none() && self.cs == 1
    }

    /// Rows are one unit-stride run (packing can copy columns).
    fn unit_rows(&self) -> bool {
        self.rows.is_none() && self.rs == 1
    }
}

// SAFETY: descriptors only; parallel parts read shared inputs and write
// disjoint blocks of the output.
unsafe impl Send for MatRef<'_> {}
unsafe impl Sync for MatRef<'_> {}
unsafe impl Send for MatMut {}
unsafe impl Sync for MatMut {}

/// A row-major output: element `(i, j)` at `ptr + i·rs + j`.
#[derive(Clone, Copy, Debug)]
pub struct MatMut {
    pub ptr: *mut f32,
    pub rs: isize,
}

impl MatMut {
    fn shifted(&self, i: usize, j: usize) -> MatMut {
        MatMut { ptr: self.ptr.wrapping_offset(i as isize * self.rs + j as isize), ..*self }
    }
}

/// Packing buffers of one thread.
pub struct Scratch {
    a: Vec<f32>,
    b: Vec<f32>,
}

impl Scratch {
    /// Buffers for products with up to `max_n` columns.
    pub fn new(max_n: usize) -> Scratch {
        let nr = kernel().nr;
        let nc = max_n.clamp(nr, NC).next_multiple_of(nr);
        Scratch { a: vec![0.0; MC * KC], b: vec![0.0; KC * nc] }
    }

    fn nc(&self) -> usize {
        self.b.len() / KC
    }
}

/// One scratch per thread of a pool, each used by one part of a job at a time.
pub struct Scratches(Vec<std::cell::UnsafeCell<Scratch>>);

// SAFETY: part `i` of a job uses only scratch `i`, and parts run on distinct
// threads; a single-threaded call uses scratch 0 alone.
unsafe impl Sync for Scratches {}

impl Scratches {
    pub fn new(threads: usize, max_n: usize) -> Scratches {
        Scratches((0..threads.max(1)).map(|_| std::cell::UnsafeCell::new(Scratch::new(max_n))).collect())
    }

    /// # Safety
    /// No other reference to scratch `i` may be alive.
    #[allow(clippy::mut_from_ref)]
    pub unsafe fn get(&self, i: usize) -> &mut Scratch {
        unsafe { &mut *self.0[i].get() }
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// `(kc, a, a row stride, a step stride, b, c, rows, cols, load_c)`.
type MicroKernel = unsafe fn(usize, *const f32, isize, isize, *const f32, MatMut, usize, usize, bool);

/// A micro-kernel and its register tile: it multiplies an `mr`-row panel
/// of A by an `nr`-column panel of B.
#[derive(Clone, Copy)]
pub struct Kernel {
    pub mr: usize,
    pub nr: usize,
    f: MicroKernel,
    pub name: &'static str,
}

/// Every micro-kernel this CPU runs, fastest first.
pub fn kernels() -> Vec<Kernel> {
    let mut all = Vec::new();
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx512f") {
            all.push(Kernel { mr: 8, nr: 32, f: x86::kernel_8x32, name: "avx512" });
        }
        if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
            all.push(Kernel { mr: MR, nr: NR, f: x86::kernel_6x16, name: "avx2" });
        }
    }
    all.push(Kernel { mr: MR, nr: NR, f: portable_kernel, name: "portable" });
    all
}

/// The fastest micro-kernel this CPU runs (detected once). `D2L_GEMM=avx2`
/// or `portable` picks a slower one (for comparisons).
pub fn kernel() -> Kernel {
    static KERNEL: std::sync::OnceLock<Kernel> = std::sync::OnceLock::new();
    *KERNEL.get_or_init(|| {
        let all = kernels();
        let wanted = std::env::var("D2L_GEMM").ok();
        all.iter().find(|k| wanted.as_deref().is_none_or(|w| w == k.name)).copied().unwrap_or(all[0])
    })
}

/// `C = A·B`, or `C += A·B` when `accumulate`, with `A` `m × k` and `B` `k × n`.
///
/// # Safety
/// The matrices must be valid for those shapes; `C` must not overlap `A` or `B`.
#[allow(clippy::too_many_arguments)]
pub unsafe fn sgemm(m: usize, n: usize, k: usize, a: MatRef<'_>, b: MatRef<'_>, c: MatMut, accumulate: bool, scratch: &mut Scratch) {
    unsafe { sgemm_with(kernel(), m, n, k, a, b, c, accumulate, scratch) }
}

/// [`sgemm`] with a given micro-kernel (whose `nr` is at most [`kernel`]'s).
#[allow(clippy::too_many_arguments)]
unsafe fn sgemm_with(kern: Kernel, m: usize, n: usize, k: usize, a: MatRef<'_>, b: MatRef<'_>, c: MatMut, accumulate: bool, scratch: &mut Scratch) {
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 || m * n * k <= SMALL {
        unsafe { small(m, n, k, a, b, c, accumulate) };
        return;
    }
    let nc_max = scratch.nc() / kern.nr * kern.nr;
    for jc in (0..n).step_by(nc_max) {
        let nc = nc_max.min(n - jc);
        for pc in (0..k).step_by(KC) {
            let kc = KC.min(k - pc);
            unsafe { pack_b(kc, nc, b.shifted(pc, jc), scratch.b.as_mut_ptr(), kern.nr) };
            let panels = unsafe { std::slice::from_raw_parts(scratch.b.as_ptr(), kc * nc.next_multiple_of(kern.nr)) };
            unsafe { multiply_block(m, nc, kc, a.shifted(0, pc), panels, c.shifted(0, jc), accumulate || pc > 0, &mut scratch.a, kern) };
        }
    }
}

/// `C (+)= A·B` for one `kc`-deep block: `A` `m × kc`, `B` already packed as
/// `nc` columns of `kern.nr`-wide panels (`kc` rows each).
#[allow(clippy::too_many_arguments)]
unsafe fn multiply_block(m: usize, nc: usize, kc: usize, a: MatRef<'_>, b: &[f32], c: MatMut, load_c: bool, a_buf: &mut [f32], kern: Kernel) {
    let (mr, nr) = (kern.mr, kern.nr);
    // A block is reused across column panels; with a single panel (narrow
    // C) packing it would cost as much as the product, and a block that
    // fits in L1 (attention's 64 x 64 per head, a recurrent step's 32 x
    // 256) is read from there at any strides as fast as packed, so the
    // micro-kernel reads a plain strided A directly.
    let plain = a.rows.is_none() && a.cols.is_none();
    for ic in (0..m).step_by(MC) {
        let mc = MC.min(m - ic);
        let direct_a = plain && (nc <= nr || mc * kc <= DIRECT_A);
        if !direct_a {
            unsafe { pack_a(mc, kc, a.shifted(ic, 0), a_buf.as_mut_ptr(), mr) };
        }
        for jr in (0..nc).step_by(nr) {
            for ir in (0..mc).step_by(mr) {
                let (ap, ars, acs) = if direct_a { (a.shifted(ic + ir, 0).ptr, a.rs, a.cs) } else { (unsafe { a_buf.as_ptr().add(ir * kc) }, 1, mr as isize) };
                unsafe { (kern.f)(kc, ap, ars, acs, b.as_ptr().add(jr * kc), c.shifted(ic + ir, jr), mr.min(mc - ir), nr.min(nc - jr), load_c) };
            }
        }
    }
}

/// [`sgemm`] split over the pool's threads when it is big enough: by
/// column panels when `C` is wide, else by row panels.
///
/// # Safety
/// As [`sgemm`]; `scratches` has one entry per pool worker and no other
/// user during the call.
#[allow(clippy::too_many_arguments)]
pub unsafe fn sgemm_parallel(m: usize, n: usize, k: usize, a: MatRef<'_>, b: MatRef<'_>, c: MatMut, accumulate: bool, scratches: &Scratches, pool: &Pool) {
    unsafe { sgemm_parallel_with(kernel(), m, n, k, a, b, c, accumulate, scratches, pool) }
}

#[allow(clippy::too_many_arguments)]
unsafe fn sgemm_parallel_with(kern: Kernel, m: usize, n: usize, k: usize, a: MatRef<'_>, b: MatRef<'_>, c: MatMut, accumulate: bool, scratches: &Scratches, pool: &Pool) {
    let work = m * n * k;
    let threads = pool.threads().min(scratches.len()).min(work / PER_THREAD).max(1);
    if threads == 1 {
        unsafe { sgemm_with(kern, m, n, k, a, b, c, accumulate, scratches.get(0)) };
        return;
    }
    // Split the dimension with more micro-tiles.
    let by_cols = n.div_ceil(kern.nr) >= m.div_ceil(kern.mr);
    let (extent, unit) = if by_cols { (n, kern.nr) } else { (m, kern.mr) };
    let chunk = extent.div_ceil(unit).div_ceil(threads) * unit;
    let parts = extent.div_ceil(chunk);
    pool.run(parts, &move |part, worker| {
        let start = part * chunk;
        let len = chunk.min(extent - start);
        // SAFETY: a worker runs one part at a time, with its own scratch.
        let scratch = unsafe { scratches.get(worker) };
        unsafe {
            if by_cols {
                sgemm_with(kern, m, len, k, a, b.shifted(0, start), c.shifted(0, start), accumulate, scratch);
            } else {
                sgemm_with(kern, len, n, k, a.shifted(start, 0), b, c.shifted(start, 0), accumulate, scratch);
            }
        }
    });
}

/// B packed once for several products: a weight that every step of an
/// unrolled loop multiplies is packed at its first use in a run, not at
/// each of its 35 uses. The whole `k × n`: `KC`-row blocks one after
/// another, each as the kernel's `nr`-column panels (`sgemm`'s layout).
pub struct PackedB {
    data: Vec<f32>,
    k: usize,
    n: usize,
    nr: usize,
    kern: Kernel,
}

impl PackedB {
    pub fn new(k: usize, n: usize) -> PackedB {
        PackedB::for_kernel(k, n, kernel())
    }

    fn for_kernel(k: usize, n: usize, kern: Kernel) -> PackedB {
        PackedB { data: vec![0.0; k * n.next_multiple_of(kern.nr)], k, n, nr: kern.nr, kern }
    }

    /// Whether this holds a `k × n` B.
    pub fn fits(&self, k: usize, n: usize) -> bool {
        (self.k, self.n) == (k, n)
    }

    /// Packs `b` (`k × n`), split over the pool by column panels.
    ///
    /// # Safety
    /// `b` must be valid for `k × n`.
    pub unsafe fn pack(&mut self, b: MatRef<'_>, pool: &Pool) {
        let (k, n, nr) = (self.k, self.n, self.nr);
        let padded = n.next_multiple_of(nr);
        let panels = n.div_ceil(nr);
        let parts = pool.threads().min(panels).max(1);
        let chunk = panels.div_ceil(parts) * nr;
        let dst = SendPtr(self.data.as_mut_ptr());
        pool.run(n.div_ceil(chunk), &move |part, _| {
            let col0 = part * chunk;
            let cols = chunk.min(n - col0);
            for pc in (0..k).step_by(KC) {
                let kc = KC.min(k - pc);
                // SAFETY: each part writes its own panels of each block.
                unsafe { pack_b(kc, cols, b.shifted(pc, col0), dst.at(pc * padded + col0 * kc), nr) };
            }
        });
    }
}

#[derive(Clone, Copy)]
struct SendPtr(*mut f32);
// SAFETY: parallel parts write disjoint ranges.
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}

impl SendPtr {
    /// # Safety
    /// `offset` must stay inside the buffer.
    unsafe fn at(self, offset: usize) -> *mut f32 {
        unsafe { self.0.add(offset) }
    }
}

/// `C = A·B` (or `C += A·B`) with `B` packed in advance, `A` `m × k`;
/// split over the pool like [`sgemm_parallel`].
///
/// # Safety
/// As [`sgemm_parallel`]; `b` was packed from a `k × n` matrix.
#[allow(clippy::too_many_arguments)]
pub unsafe fn sgemm_packed_parallel(m: usize, a: MatRef<'_>, b: &PackedB, c: MatMut, accumulate: bool, scratches: &Scratches, pool: &Pool) {
    let (n, k, nr, kern) = (b.n, b.k, b.nr, b.kern);
    if m == 0 || n == 0 {
        return;
    }
    let padded = n.next_multiple_of(nr);
    // One thread's share: columns [col0, col0 + cols) of rows [row0, row0 + rows).
    let run = |row0: usize, rows: usize, col0: usize, cols: usize, scratch: &mut Scratch| {
        for pc in (0..k).step_by(KC) {
            let kc = KC.min(k - pc);
            let block = &b.data[pc * padded + col0 * kc..(pc + kc) * padded];
            unsafe { multiply_block(rows, cols, kc, a.shifted(row0, pc), block, c.shifted(row0, col0), accumulate || pc > 0, &mut scratch.a, kern) };
        }
    };
    let threads = pool.threads().min(scratches.len()).min(m * n * k / PER_THREAD).max(1);
    if threads == 1 {
        run(0, m, 0, n, unsafe { scratches.get(0) });
        return;
    }
    let by_cols = n.div_ceil(nr) >= m.div_ceil(kern.mr);
    let (extent, unit) = if by_cols { (n, nr) } else { (m, kern.mr) };
    let chunk = extent.div_ceil(unit).div_ceil(threads) * unit;
    pool.run(extent.div_ceil(chunk), &move |part, worker| {
        let start = part * chunk;
        let len = chunk.min(extent - start);
        // SAFETY: a worker runs one part at a time, with its own scratch.
        let scratch = unsafe { scratches.get(worker) };
        if by_cols {
            run(0, m, start, len, scratch);
        } else {
            run(start, len, 0, n, scratch);
        }
    });
}

/// Lanes of a tile row, and rows of a tile, of [`small`].
const SMALL_W: usize = 8;
const SMALL_R: usize = 4;

/// `x` (`rows x cols`) copied row-major into `dst`, as a plain strided matrix.
#[inline(always)]
unsafe fn pack_small<'d>(x: MatRef<'_>, rows: usize, cols: usize, dst: &'d mut [std::mem::MaybeUninit<f32>]) -> MatRef<'d> {
    for i in 0..rows {
        for j in 0..cols {
            dst[i * cols + j].write(unsafe { x.at(i, j) });
        }
    }
    MatRef::strided(dst.as_ptr() as *const f32, cols as isize, 1)
}

/// Tiny products, where packing for the micro-kernels costs more than it
/// saves: C in tiles of `SMALL_R` rows by `SMALL_W` columns, each
/// accumulated in registers over all of k: independent multiply-adds, none
/// waiting on a store. A is read in place at any strides; B in place when
/// its rows are contiguous, else (attention's `q·kᵀ` reads it across its
/// rows) it is copied first, as is an operand with gather tables: at most
/// `SMALL` values each, as `m·n·k <= SMALL`.
unsafe fn small(m: usize, n: usize, k: usize, a: MatRef<'_>, b: MatRef<'_>, c: MatMut, accumulate: bool) {
    let mut a_buf = [std::mem::MaybeUninit::<f32>::uninit(); SMALL];
    let mut b_buf = [std::mem::MaybeUninit::<f32>::uninit(); SMALL];
    let a = if a.rows.is_some() || a.cols.is_some() { unsafe { pack_small(a, m, k, &mut a_buf) } } else { a };
    let b = if b.rows.is_some() || b.cols.is_some() || b.cs != 1 { unsafe { pack_small(b, k, n, &mut b_buf) } } else { b };
    static ZERO: f32 = 0.0;
    let tile = small_tile();
    for i0 in (0..m).step_by(SMALL_R) {
        // Rows past m read a zero (stride 0) instead.
        let mut rows = [(&ZERO as *const f32, 0isize); SMALL_R];
        for (r, row) in rows.iter_mut().enumerate().take(m - i0) {
            *row = (a.ptr.wrapping_offset((i0 + r) as isize * a.rs), a.cs);
        }
        for j0 in (0..n).step_by(SMALL_W) {
            let cols = SMALL_W.min(n - j0);
            // SAFETY: rows of A hold k values at their strides; B's rows hold
            // n >= j0 + cols contiguous values.
            let acc = unsafe { tile(k, &rows, b.ptr.wrapping_add(j0), b.rs, cols) };
            for (r, acc_row) in acc.iter().enumerate().take(m - i0) {
                // SAFETY: C's row i0 + r has n >= j0 + cols values.
                let dst = unsafe { std::slice::from_raw_parts_mut(c.shifted(i0 + r, j0).ptr, cols) };
                for (d, &v) in dst.iter_mut().zip(acc_row) {
                    *d = if accumulate { *d + v } else { v };
                }
            }
        }
    }
}

/// One tile of C: `Σ_p rows[r][p] · b[p, 0..cols]`, rows of A given as
/// (start, stride), B's rows `brs` apart with `cols <= SMALL_W` contiguous
/// values each (lanes past `cols` are not read, and come out 0).
///
/// # Safety
/// Every row of A holds k values at its stride; B's rows hold `cols`.
type SmallTile = unsafe fn(usize, &[(*const f32, isize); SMALL_R], *const f32, isize, usize) -> [[f32; SMALL_W]; SMALL_R];

/// The [`SmallTile`] this CPU runs: AVX2 and FMA where it has them.
fn small_tile() -> SmallTile {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
        return small_tile_avx2;
    }
    small_tile_generic
}

/// A [`SmallTile`] in plain Rust, for CPUs without AVX2.
unsafe fn small_tile_generic(k: usize, rows: &[(*const f32, isize); SMALL_R], b: *const f32, brs: isize, cols: usize) -> [[f32; SMALL_W]; SMALL_R] {
    let mut acc = [[0.0f32; SMALL_W]; SMALL_R];
    for p in 0..k {
        for (acc_row, &(ptr, cs)) in acc.iter_mut().zip(rows) {
            let av = unsafe { *ptr.offset(p as isize * cs) };
            for (j, x) in acc_row.iter_mut().enumerate().take(cols) {
                *x = av.mul_add(unsafe { *b.offset(p as isize * brs + j as isize) }, *x);
            }
        }
    }
    acc
}

/// A [`SmallTile`] in four AVX registers; a partial tile's B is read with
/// a masked load.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn small_tile_avx2(k: usize, rows: &[(*const f32, isize); SMALL_R], b: *const f32, brs: isize, cols: usize) -> [[f32; SMALL_W]; SMALL_R] {
    use std::arch::x86_64::*;
    let lanes: [i32; SMALL_W] = std::array::from_fn(|j| if j < cols { -1 } else { 0 });
    // SAFETY: `lanes` holds 8 i32s; the caller guarantees the reads.
    unsafe {
        let mask = _mm256_loadu_si256(lanes.as_ptr() as *const __m256i);
        let mut acc = [_mm256_setzero_ps(); SMALL_R];
        for p in 0..k as isize {
            let row = b.offset(p * brs);
            let bv = if cols == SMALL_W { _mm256_loadu_ps(row) } else { _mm256_maskload_ps(row, mask) };
            for (x, &(ptr, cs)) in acc.iter_mut().zip(rows) {
                *x = _mm256_fmadd_ps(_mm256_set1_ps(*ptr.offset(p * cs)), bv, *x);
            }
        }
        let mut out = [[0.0f32; SMALL_W]; SMALL_R];
        for (o, x) in out.iter_mut().zip(acc) {
            _mm256_storeu_ps(o.as_mut_ptr(), x);
        }
        out
    }
}

/// The widest tile of any kernel, for stack arrays.
const MAX_TILE: usize = 32;

/// Packs an `mc × kc` block of A as `mr`-row panels, each `kc` columns of
/// `mr` consecutive values (zero-padded rows at the bottom edge).
unsafe fn pack_a(mc: usize, kc: usize, a: MatRef<'_>, dst: *mut f32, mr: usize) {
    let mut d = dst;
    for ir in (0..mc).step_by(mr) {
        let rows = mr.min(mc - ir);
        let panel = a.shifted(ir, 0);
        unsafe {
            if rows == mr && panel.unit_rows() {
                for p in 0..kc {
                    std::ptr::copy_nonoverlapping(panel.ptr.offset(panel.col(p)), d, mr);
                    d = d.add(mr);
                }
            } else {
                // Row bases once per panel (missing rows read row 0, then
                // are zeroed), then one column offset per step.
                let mut bases = [panel.ptr; MAX_TILE];
                for (i, b) in bases.iter_mut().enumerate().take(rows) {
                    *b = panel.ptr.offset(panel.row(i));
                }
                for p in 0..kc {
                    let off = panel.col(p);
                    for (i, b) in bases.iter().enumerate().take(mr) {
                        *d.add(i) = if i < rows { *b.offset(off) } else { 0.0 };
                    }
                    d = d.add(mr);
                }
            }
        }
    }
}

/// Packs a `kc × nc` block of B as `nr`-column panels, each `kc` rows of
/// `nr` consecutive values (zero-padded columns at the right edge).
unsafe fn pack_b(kc: usize, nc: usize, b: MatRef<'_>, dst: *mut f32, nr: usize) {
    let mut d = dst;
    for jr in (0..nc).step_by(nr) {
        let cols = nr.min(nc - jr);
        let panel = b.shifted(0, jr);
        unsafe {
            if cols == nr && panel.unit_cols() {
                for p in 0..kc {
                    std::ptr::copy_nonoverlapping(panel.ptr.offset(panel.row(p)), d, nr);
                    d = d.add(nr);
                }
            } else if panel.unit_rows() {
                // A transposed B (a weight read as Wᵀ): each column is a
                // run, so read it in order and scatter into the panel,
                // which is in L1; reading across columns would touch a
                // new cache line per value (an LSTM's [1024, 256] Wᵀ,
                // one core: 0.27 ms instead of 0.7).
                // Eight columns at a time: eight sequential reads, one
                // 32-byte write per step.
                for j0 in (0..nr).step_by(8) {
                    let mut src = [panel.ptr; 8];
                    for (jj, s) in src.iter_mut().enumerate() {
                        if j0 + jj < cols {
                            *s = panel.ptr.offset(panel.col(j0 + jj));
                        }
                    }
                    let live = cols.saturating_sub(j0).min(8);
                    for p in 0..kc {
                        let row = d.add(p * nr + j0);
                        for (jj, s) in src.iter().enumerate() {
                            *row.add(jj) = if jj < live { *s.add(p) } else { 0.0 };
                        }
                    }
                }
                d = d.add(kc * nr);
            } else {
                // Gather: column offsets once per panel, then one row base per step.
                let mut offs = [0isize; MAX_TILE];
                for (j, o) in offs.iter_mut().enumerate().take(cols) {
                    *o = panel.col(j);
                }
                for p in 0..kc {
                    let base = panel.ptr.offset(panel.row(p));
                    for (j, &o) in offs.iter().enumerate().take(nr) {
                        *d.add(j) = if j < cols { *base.offset(o) } else { 0.0 };
                    }
                    d = d.add(nr);
                }
            }
        }
    }
}

/// Multiplies a packed A panel by a packed B panel into the `rows × cols`
/// corner of a `MR × NR` tile of C.
#[allow(clippy::too_many_arguments)]
unsafe fn portable_kernel(kc: usize, a: *const f32, ars: isize, acs: isize, b: *const f32, c: MatMut, rows: usize, cols: usize, load_c: bool) {
    let mut acc = [[0.0f32; NR]; MR];
    for p in 0..kc {
        let bp = unsafe { std::slice::from_raw_parts(b.add(p * NR), NR) };
        for (i, row) in acc.iter_mut().enumerate().take(rows) {
            let ai = unsafe { *a.offset(i as isize * ars + p as isize * acs) };
            for j in 0..NR {
                row[j] = ai.mul_add(bp[j], row[j]);
            }
        }
    }
    for (i, row) in acc.iter().enumerate().take(rows) {
        let dst = c.shifted(i, 0).ptr;
        for (j, &v) in row.iter().enumerate().take(cols) {
            unsafe {
                let d = dst.add(j);
                *d = if load_c { *d + v } else { v };
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::{MR, MatMut, NR};

    /// The 8×32 AVX-512 micro-kernel: 16 zmm accumulators, two B vectors
    /// and one broadcast A value per row and step.
    ///
    /// # Safety
    /// The CPU must support AVX-512F; `a` holds `rows × kc` values at
    /// strides (`ars`, `acs`), `b` `kc` packed steps of 32.
    #[target_feature(enable = "avx512f")]
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn kernel_8x32(kc: usize, a: *const f32, ars: isize, acs: isize, b: *const f32, c: MatMut, rows: usize, cols: usize, load_c: bool) {
        const R: usize = 8;
        unsafe {
            let mut acc = [[_mm512_setzero_ps(); 2]; R];
            // Rows past `rows` (a bottom edge of a direct, unpacked A) read row 0.
            let mut rowp = [a; R];
            for (i, r) in rowp.iter_mut().enumerate().take(rows) {
                *r = a.offset(i as isize * ars);
            }
            for i in 0..rows {
                let row = c.ptr.offset(i as isize * c.rs) as *const i8;
                _mm_prefetch::<_MM_HINT_T0>(row);
                _mm_prefetch::<_MM_HINT_T0>(row.wrapping_add(64));
            }
            let mut b = b;
            let mut off = 0isize;
            for _ in 0..kc {
                let b0 = _mm512_loadu_ps(b);
                let b1 = _mm512_loadu_ps(b.add(16));
                for (i, row) in acc.iter_mut().enumerate() {
                    let ai = _mm512_set1_ps(*rowp[i].offset(off));
                    row[0] = _mm512_fmadd_ps(ai, b0, row[0]);
                    row[1] = _mm512_fmadd_ps(ai, b1, row[1]);
                }
                off += acs;
                b = b.add(32);
            }
            // Masks select the `cols` columns a right-edge tile has.
            let m0: __mmask16 = if cols >= 16 { 0xffff } else { (1u32 << cols) as u16 - 1 };
            let m1: __mmask16 = if cols >= 32 { 0xffff } else if cols > 16 { (1u32 << (cols - 16)) as u16 - 1 } else { 0 };
            for (i, row) in acc.iter().enumerate().take(rows) {
                let dst = c.ptr.offset(i as isize * c.rs);
                let (mut v0, mut v1) = (row[0], row[1]);
                if load_c {
                    v0 = _mm512_add_ps(v0, _mm512_maskz_loadu_ps(m0, dst));
                    v1 = _mm512_add_ps(v1, _mm512_maskz_loadu_ps(m1, dst.add(16)));
                }
                _mm512_mask_storeu_ps(dst, m0, v0);
                _mm512_mask_storeu_ps(dst.add(16), m1, v1);
            }
        }
    }

    /// The 6×16 AVX2+FMA micro-kernel: 12 ymm accumulators, two B vectors
    /// and one broadcast A value per step (FMA-bound, not load-bound).
    ///
    /// # Safety
    /// The CPU must support AVX2 and FMA; `a` holds `rows × kc` values at
    /// strides (`ars`, `acs`), `b` `kc` packed steps.
    #[target_feature(enable = "avx2,fma")]
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn kernel_6x16(kc: usize, a: *const f32, ars: isize, acs: isize, b: *const f32, c: MatMut, rows: usize, cols: usize, load_c: bool) {
        unsafe {
            let mut acc = [[_mm256_setzero_ps(); 2]; MR];
            // Rows past `rows` (a bottom edge of a direct, unpacked A) read row 0.
            let mut rowp = [a; MR];
            for (i, r) in rowp.iter_mut().enumerate().take(rows) {
                *r = a.offset(i as isize * ars);
            }
            // Fetch the C tile while the products run: its rows are far
            // apart (a row of C each), and the stores at the end stalled.
            for i in 0..rows {
                let row = c.ptr.offset(i as isize * c.rs) as *const i8;
                _mm_prefetch::<_MM_HINT_T0>(row);
                _mm_prefetch::<_MM_HINT_T0>(row.wrapping_add(60));
            }
            let mut b = b;
            let mut off = 0isize;
            for _ in 0..kc {
                let b0 = _mm256_loadu_ps(b);
                let b1 = _mm256_loadu_ps(b.add(8));
                for (i, row) in acc.iter_mut().enumerate() {
                    let ai = _mm256_broadcast_ss(&*rowp[i].offset(off));
                    row[0] = _mm256_fmadd_ps(ai, b0, row[0]);
                    row[1] = _mm256_fmadd_ps(ai, b1, row[1]);
                }
                off += acs;
                b = b.add(NR);
            }
            if cols == NR {
                for (i, row) in acc.iter().enumerate().take(rows) {
                    let dst = c.ptr.offset(i as isize * c.rs);
                    let (mut v0, mut v1) = (row[0], row[1]);
                    if load_c {
                        v0 = _mm256_add_ps(v0, _mm256_loadu_ps(dst));
                        v1 = _mm256_add_ps(v1, _mm256_loadu_ps(dst.add(8)));
                    }
                    _mm256_storeu_ps(dst, v0);
                    _mm256_storeu_ps(dst.add(8), v1);
                }
            } else {
                // Right edge: masked loads and stores touch only `cols` columns.
                let lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
                let m0 = _mm256_cmpgt_epi32(_mm256_set1_epi32(cols as i32), lane);
                let m1 = _mm256_cmpgt_epi32(_mm256_set1_epi32(cols as i32 - 8), lane);
                for (i, row) in acc.iter().enumerate().take(rows) {
                    let dst = c.ptr.offset(i as isize * c.rs);
                    let (mut v0, mut v1) = (row[0], row[1]);
                    if load_c {
                        v0 = _mm256_add_ps(v0, _mm256_maskload_ps(dst, m0));
                        v1 = _mm256_add_ps(v1, _mm256_maskload_ps(dst.add(8), m1));
                    }
                    _mm256_maskstore_ps(dst, m0, v0);
                    _mm256_maskstore_ps(dst.add(8), m1, v1);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reference(m: usize, n: usize, k: usize, a: &[f32], a_t: bool, b: &[f32]) -> Vec<f32> {
        let mut c = vec![0.0f32; m * n];
        for i in 0..m {
            for j in 0..n {
                let mut s = 0.0f64;
                for p in 0..k {
                    let av = if a_t { a[p * m + i] } else { a[i * k + p] };
                    s += av as f64 * b[p * n + j] as f64;
                }
                c[i * n + j] = s as f32;
            }
        }
        c
    }

    /// A prepacked B gives the same products as packing per call, at every
    /// edge, split by rows and by columns, for several A's in a row.
    #[test]
    fn prepacked_b_matches_a_reference() {
        let pool = crate::pool::pool();
        for &(m, n, k) in &[(7, 17, 5), (32, 256, 300), (130, 40, 260), (250, 33, 70), (1, 600, 3)] {
            let b: Vec<f32> = (0..k * n).map(|i| ((i * 53 % 97) as f32 - 48.0) / 48.0).collect();
            for b_t in [false, true] {
                // B itself, or B stored transposed and read through strides.
                let stored: Vec<f32> = if b_t { (0..n * k).map(|i| b[(i % k) * n + i / k]).collect() } else { b.clone() };
                let bm = if b_t { MatRef::strided(stored.as_ptr(), 1, k as isize) } else { MatRef::strided(stored.as_ptr(), n as isize, 1) };
                for (kern, seed) in kernels().into_iter().flat_map(|k| [(k, 0), (k, 1)]) {
                    let mut packed = PackedB::for_kernel(k, n, kern);
                    unsafe { packed.pack(bm, pool) };
                    let scratches = Scratches::new(pool.threads(), n);
                    let a: Vec<f32> = (0..m * k).map(|i| (((i + seed) * 37 % 101) as f32 - 50.0) / 50.0).collect();
                    let want = reference(m, n, k, &a, false, &b);
                    let mut c = vec![1.0f32; m * n];
                    unsafe { sgemm_packed_parallel(m, MatRef::strided(a.as_ptr(), k as isize, 1), &packed, MatMut { ptr: c.as_mut_ptr(), rs: n as isize }, true, &scratches, pool) };
                    for (got, want) in c.iter().zip(&want) {
                        assert!((got - 1.0 - want).abs() <= 1e-4 * (1.0 + want.abs()), "{} {m}x{n}x{k} b_t={b_t}: {got} vs {}", kern.name, want + 1.0);
                    }
                }
            }
        }
    }

    /// Small products (`m·n·k <= SMALL`, attention's): partial tiles in both
    /// directions, B read along or across its rows, A through a gather
    /// table, with and without accumulation; and each tile's plain-Rust
    /// path against the AVX2 one on the same operands.
    #[test]
    fn small_products_match_a_reference() {
        for &(m, n, k) in &[(1, 1, 1), (3, 5, 7), (4, 8, 8), (5, 9, 3), (10, 10, 8), (12, 17, 4), (1, 4096, 1), (4096, 1, 1), (1, 1, 4096), (2, 3, 600)] {
            assert!(m * n * k <= SMALL);
            let a: Vec<f32> = (0..m * k).map(|i| ((i * 37 % 101) as f32 - 50.0) / 50.0).collect();
            let b: Vec<f32> = (0..k * n).map(|i| ((i * 53 % 97) as f32 - 48.0) / 48.0).collect();
            let row_table: Vec<isize> = (0..m).map(|i| (i * k) as isize).collect();
            for a_t in [false, true] {
                let want = reference(m, n, k, &a, a_t, &b);
                let b_t: Vec<f32> = (0..n * k).map(|i| b[(i % k) * n + i / k]).collect();
                for (b_view, a_table) in [(false, false), (true, false), (false, true)] {
                    let mut am = if a_t { MatRef::strided(a.as_ptr(), 1, m as isize) } else { MatRef::strided(a.as_ptr(), k as isize, 1) };
                    if a_table && !a_t {
                        am.rows = Some(&row_table);
                    }
                    let bm = if b_view { MatRef::strided(b_t.as_ptr(), 1, k as isize) } else { MatRef::strided(b.as_ptr(), n as isize, 1) };
                    for accumulate in [false, true] {
                        let mut c = vec![1.0f32; m * n];
                        unsafe { small(m, n, k, am, bm, MatMut { ptr: c.as_mut_ptr(), rs: n as isize }, accumulate) };
                        let base = if accumulate { 1.0 } else { 0.0 };
                        for (got, want) in c.iter().zip(&want) {
                            assert!((got - base - want).abs() <= 1e-4 * (1.0 + want.abs()), "{m}x{n}x{k} a_t={a_t} b_view={b_view} table={a_table}: {got} vs {}", want + base);
                        }
                    }
                }
            }
            // The two tile paths on the first tile, B read along its rows.
            let rows: [(*const f32, isize); SMALL_R] = std::array::from_fn(|r| if r < m { (a[r * k..].as_ptr(), 1) } else { (&0.0f32 as *const f32, 0) });
            let cols = SMALL_W.min(n);
            let generic = unsafe { small_tile_generic(k, &rows, b.as_ptr(), n as isize, cols) };
            assert_eq!(generic, unsafe { small_tile()(k, &rows, b.as_ptr(), n as isize, cols) }, "{m}x{n}x{k}");
        }
    }

    /// Every micro-kernel this CPU runs: edges of micro-tiles, of K and MC
    /// blocks, transposed A, 1 and 2 threads
    /// (the last shape is split over the threads by rows).
    #[test]
    fn matches_a_reference_on_edges_and_transposes() {
        let pool = crate::pool::pool();
        // Packed and direct (L1-sized) A blocks, one or several column panels.
        for &(m, n, k) in &[(1, 1, 1), (7, 17, 5), (13, 33, 300), (130, 20, 260), (6, 16, 256), (250, 300, 70), (37, 10, 300), (41, 16, 90), (610, 530, 420), (64, 64, 64), (32, 1024, 256), (70, 100, 117)] {
            for (a_t, b_t) in [(false, false), (true, false), (false, true)] {
                let a: Vec<f32> = (0..m * k).map(|i| ((i * 37 % 101) as f32 - 50.0) / 50.0).collect();
                let b: Vec<f32> = (0..k * n).map(|i| ((i * 53 % 97) as f32 - 48.0) / 48.0).collect();
                let want = reference(m, n, k, &a, a_t, &b);
                let am = if a_t { MatRef::strided(a.as_ptr(), 1, m as isize) } else { MatRef::strided(a.as_ptr(), k as isize, 1) };
                // B itself, or B stored transposed (a weight read as Wᵀ).
                let stored: Vec<f32> = if b_t { (0..n * k).map(|i| b[(i % k) * n + i / k]).collect() } else { b.clone() };
                let bm = if b_t { MatRef::strided(stored.as_ptr(), 1, k as isize) } else { MatRef::strided(stored.as_ptr(), n as isize, 1) };
                for (kern, threads) in kernels().into_iter().flat_map(|k| [(k, 1), (k, 2)]) {
                    let scratches = Scratches::new(pool.threads(), n);
                    let mut c = vec![1.0f32; m * n];
                    unsafe {
                        if threads == 1 {
                            sgemm_with(kern, m, n, k, am, bm, MatMut { ptr: c.as_mut_ptr(), rs: n as isize }, true, scratches.get(0));
                        } else {
                            sgemm_parallel_with(kern, m, n, k, am, bm, MatMut { ptr: c.as_mut_ptr(), rs: n as isize }, true, &scratches, pool);
                        }
                    }
                    for (got, want) in c.iter().zip(&want) {
                        assert!((got - 1.0 - want).abs() <= 1e-4 * (1.0 + want.abs()), "{} {m}x{n}x{k} a_t={a_t} b_t={b_t}: {got} vs {}", kern.name, want + 1.0);
                    }
                }
            }
        }
    }
}
