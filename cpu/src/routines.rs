//! Library routines: the kernels that are not loops we generate. Matmul and
//! convolution run on [`crate::gemm`]; layout and indexing ops (pad, concat,
//! gather, scatter_add, pooling, argmax, random numbers) are data movement
//! that a plain Rust loop does at memory speed. Each works on raw buffers
//! of a known dtype and shape, reads and writes only inside them, and
//! allocates nothing.
//!
//! Semantics match the reference interpreter (`runtime/src/interp/`).

use d2l_ir::{DType, PoolKind, RandDist};
use d2l_passes::fusion::Affine;
use rand::Rng;
use rand_chacha::ChaCha12Rng;
use rand_distr::{Distribution, StandardNormal};

use crate::pool::Pool;

/// A typed view of raw buffer memory.
#[derive(Clone, Copy, Debug)]
pub struct Buf {
    pub ptr: *mut u8,
    pub dtype: DType,
}

// SAFETY: a description of memory; routines that share one across threads
// write disjoint parts of it.
unsafe impl Send for Buf {}
unsafe impl Sync for Buf {}

impl Buf {
    /// # Safety
    /// `i` must be inside the buffer, which must hold `T`s.
    #[inline(always)]
    unsafe fn at<T>(self, i: usize) -> *mut T {
        unsafe { (self.ptr as *mut T).add(i) }
    }
}

/// Calls `f(flat index, element offset)` for every position of `dims` in
/// row-major order, where the offset follows `map` (an odometer: no division).
pub fn for_each_offset(dims: &[usize], map: &Affine, f: impl FnMut(usize, i64)) {
    for_each_offset_of(dims, map.offset, &map.strides, f)
}

/// [`for_each_offset`] with the map's parts given separately (no allocation).
pub fn for_each_offset_of(dims: &[usize], offset: i64, strides: &[i64], mut f: impl FnMut(usize, i64)) {
    if dims.contains(&0) {
        return;
    }
    // Index digits on the stack (ranks above 16 fall back to the heap).
    let mut small = [0usize; 16];
    let mut large = Vec::new();
    let idx: &mut [usize] = if dims.len() <= small.len() {
        &mut small[..dims.len()]
    } else {
        large.resize(dims.len(), 0);
        &mut large
    };
    let mut off = offset;
    let mut flat = 0;
    loop {
        f(flat, off);
        flat += 1;
        let mut k = dims.len();
        loop {
            if k == 0 {
                return;
            }
            k -= 1;
            idx[k] += 1;
            off += strides[k];
            if idx[k] < dims[k] {
                break;
            }
            off -= strides[k] * dims[k] as i64;
            idx[k] = 0;
        }
    }
}

/// Like [`for_each_offset`] but one call per innermost row:
/// `f(flat index of the row's first element, its offset, row length,
/// offset step along the row)`, so callers can run a tight inner loop.
pub fn for_each_row(dims: &[usize], offset: i64, strides: &[i64], mut f: impl FnMut(usize, i64, usize, i64)) {
    let Some((&len, outer)) = dims.split_last() else {
        f(0, offset, 1, 0);
        return;
    };
    if len == 0 {
        return;
    }
    let step = strides[dims.len() - 1];
    for_each_offset_of(outer, offset, &strides[..outer.len()], |row, off| f(row * len, off, len, step));
}

/// Element size in bytes as buffers store it.
fn size_of(dtype: DType) -> usize {
    dtype.size_bytes()
}

/// Copies the elements `src[map(i)]` for all `i` of `dims` to `dst` row-major.
///
/// # Safety
/// Every mapped offset must be inside `src`; `dst` holds `numel(dims)` elements.
pub unsafe fn gather_strided(src: Buf, map: &Affine, dims: &[usize], dst: Buf) {
    // A row at a time, each element moved as its own type: one call per
    // element made a training step's permuted [64, 10, 201] output copy
    // cost a tenth of seq2seq's step.
    unsafe fn rows<T: Copy>(src: *const T, map: &Affine, dims: &[usize], dst: *mut T) {
        for_each_row(dims, map.offset, &map.strides, |flat, off, len, step| unsafe {
            let (from, to) = (src.offset(off as isize), dst.add(flat));
            if step == 1 {
                std::ptr::copy_nonoverlapping(from, to, len);
            } else {
                for j in 0..len {
                    *to.add(j) = *from.offset(j as isize * step as isize);
                }
            }
        });
    }
    unsafe {
        match size_of(src.dtype) {
            1 => rows(src.ptr as *const u8, map, dims, dst.ptr),
            4 => rows(src.ptr as *const u32, map, dims, dst.ptr as *mut u32),
            8 => rows(src.ptr as *const u64, map, dims, dst.ptr as *mut u64),
            size => unreachable!("no dtype is {size} bytes"),
        }
    }
}

/// Fills `n` elements of `dst` with `value` converted to its dtype (as the
/// interpreter's `Elem::from_f64`: floats round, i64 truncates, bool is `!= 0`).
///
/// # Safety
/// `dst` must hold `n` elements.
pub unsafe fn fill(dst: Buf, n: usize, value: f64) {
    unsafe {
        match dst.dtype {
            DType::F32 => std::slice::from_raw_parts_mut(dst.ptr as *mut f32, n).fill(value as f32),
            DType::F64 => std::slice::from_raw_parts_mut(dst.ptr as *mut f64, n).fill(value),
            DType::I64 => std::slice::from_raw_parts_mut(dst.ptr as *mut i64, n).fill(value as i64),
            DType::Bool => std::slice::from_raw_parts_mut(dst.ptr, n).fill(u8::from(value != 0.0)),
        }
    }
}

/// XLA pad over images `images` of dim 0 (which a parallel caller splits;
/// dim 0 must be unpadded unless `images` covers it all): `value`
/// everywhere, then the row-major operand of `dims` written through `write`
/// (stride `interior + 1` from `lo`, see [`d2l_kernels::lower::pad_map`]). With `add`, the
/// operand is added instead (one part of a sum of pads, into zeros).
///
/// # Safety
/// `src` holds `dims`; `write` stays inside `dst`, which holds `out_numel`.
#[allow(clippy::too_many_arguments)]
pub unsafe fn pad(src: Buf, dims: &[usize], write: &Affine, value: Option<f64>, add: bool, dst: Buf, out_numel: usize, images: std::ops::Range<usize>) {
    let n = dims.first().copied().unwrap_or(1).max(1);
    let whole = images.start == 0 && images.end >= n;
    let size = size_of(src.dtype);
    // The slice of the output these images cover.
    let (out_start, out_len) = if whole { (0, out_numel) } else { (images.start * out_numel / n, images.len() * out_numel / n) };
    if let Some(v) = value {
        unsafe { fill(Buf { ptr: dst.ptr.add(out_start * size), dtype: dst.dtype }, out_len, v) };
    }
    if dims.len() > 16 {
        return;
    }
    let mut part_dims = [0usize; 16];
    let rank = dims.len();
    part_dims[..rank].copy_from_slice(dims);
    let mut offset = write.offset;
    let mut src_start = 0;
    if !whole && rank > 0 {
        part_dims[0] = images.len();
        src_start = images.start * dims[1..].iter().product::<usize>();
        offset += images.start as i64 * write.strides[0];
    }
    for_each_row(&part_dims[..rank], offset, &write.strides, |flat, off, len, step| unsafe {
        let flat = src_start + flat;
        match (src.dtype, add) {
            (DType::F32, _) => {
                let (s, d) = (src.at::<f32>(flat), (dst.ptr as *mut f32).offset(off as isize));
                for j in 0..len {
                    let p = d.offset(j as isize * step as isize);
                    *p = if add { *p + *s.add(j) } else { *s.add(j) };
                }
            }
            (DType::F64, true) => {
                for j in 0..len {
                    *dst.at::<f64>((off + j as i64 * step) as usize) += *src.at::<f64>(flat + j);
                }
            }
            (DType::I64, true) => {
                for j in 0..len {
                    let p = dst.at::<i64>((off + j as i64 * step) as usize);
                    *p = (*p).wrapping_add(*src.at::<i64>(flat + j));
                }
            }
            (DType::Bool, true) => {
                for j in 0..len {
                    *dst.at::<u8>((off + j as i64 * step) as usize) |= *src.at::<u8>(flat + j);
                }
            }
            _ => {
                for j in 0..len {
                    std::ptr::copy_nonoverlapping(src.ptr.add((flat + j) * size), dst.ptr.offset((off + j as i64 * step) as isize * size as isize), size);
                }
            }
        }
    });
}

/// Copies rows `rows` (of `outer`) of `row_bytes` from `src` to `dst` at
/// `at` bytes, interleaved with the other operands of a concat (`stride`
/// bytes per output row).
///
/// # Safety
/// `src` holds `outer · row_bytes` bytes; `dst` `outer · stride`.
pub unsafe fn concat_part(src: Buf, rows: std::ops::Range<usize>, row_bytes: usize, dst: Buf, at: usize, stride: usize) {
    for o in rows {
        unsafe { std::ptr::copy_nonoverlapping(src.ptr.add(o * row_bytes), dst.ptr.add(o * stride + at), row_bytes) };
    }
}

/// Checked indices: the first out-of-range one is returned as the error.
unsafe fn index_at(idx: Buf, i: usize, size: usize) -> Result<usize, i64> {
    let v = unsafe { *idx.at::<i64>(i) };
    match usize::try_from(v) {
        Ok(u) if u < size => Ok(u),
        _ => Err(v),
    }
}

/// `Err((index, n))` for the first of the `m` indices outside `0..n`.
///
/// # Safety
/// `idx` holds `m` i64s.
pub unsafe fn check_indices(idx: Buf, m: usize, n: usize) -> Result<(), (i64, usize)> {
    for i in 0..m {
        unsafe { index_at(idx, i, n) }.map_err(|v| (v, n))?;
    }
    Ok(())
}

/// `out[o, i, :] = x[o, idx[i], :]` for `i` in `rows`, with `x` viewed as
/// `[outer, n, inner]`; the indices were checked ([`check_indices`]).
///
/// # Safety
/// Buffers hold their shapes: `x` `outer·n·inner`, `idx` `m` i64s, `dst` `outer·m·inner`.
pub unsafe fn gather(x: Buf, (outer, n, inner): (usize, usize, usize), idx: Buf, m: usize, dst: Buf, rows: std::ops::Range<usize>) {
    let size = size_of(x.dtype);
    let row = inner * size;
    for o in 0..outer {
        for i in rows.clone() {
            let r = unsafe { index_at(idx, i, n) }.unwrap_or(0);
            unsafe { std::ptr::copy_nonoverlapping(x.ptr.add((o * n + r) * row), dst.ptr.add((o * m + i) * row), row) };
        }
    }
}

/// Columns `cols` of the inner axis: zeros, then `out[o, idx[i], :] +=
/// updates[o, i, :]` in the order of `i` (i64 wraps, bool ors), so any
/// split of the columns gives the same sums; the indices were checked
/// ([`check_indices`]).
///
/// # Safety
/// As [`gather`], with `updates` `outer·m·inner` and `dst` `outer·n·inner`.
pub unsafe fn scatter_add(idx: Buf, m: usize, updates: Buf, (outer, n, inner): (usize, usize, usize), dst: Buf, cols: std::ops::Range<usize>) {
    let width = cols.len();
    for row in 0..outer * n {
        unsafe { fill(Buf { ptr: dst.ptr.add((row * inner + cols.start) * size_of(dst.dtype)), dtype: dst.dtype }, width, 0.0) };
    }
    /// `d[j] op= u[j]` over the columns, typed once per row so it vectorises.
    unsafe fn combine<T: Copy>(d: *mut T, u: *const T, width: usize, op: impl Fn(T, T) -> T) {
        let (d, u) = unsafe { (std::slice::from_raw_parts_mut(d, width), std::slice::from_raw_parts(u, width)) };
        for (d, &u) in d.iter_mut().zip(u) {
            *d = op(*d, u);
        }
    }
    for o in 0..outer {
        for i in 0..m {
            let r = unsafe { index_at(idx, i, n) }.unwrap_or(0);
            let (d, u) = ((o * n + r) * inner + cols.start, (o * m + i) * inner + cols.start);
            unsafe {
                match updates.dtype {
                    DType::F32 => combine(dst.at::<f32>(d), updates.at::<f32>(u), width, |a, b| a + b),
                    DType::F64 => combine(dst.at::<f64>(d), updates.at::<f64>(u), width, |a, b| a + b),
                    DType::I64 => combine(dst.at::<i64>(d), updates.at::<i64>(u), width, i64::wrapping_add),
                    DType::Bool => combine(dst.at::<u8>(d), updates.at::<u8>(u), width, |a, b| a | b),
                }
            }
        }
    }
}

/// Max or average pooling over the last two axes of `[n, c, h, w]`, no padding.
///
/// # Safety
/// `x` holds `[n, c, h, w]` floats, `dst` the pooled shape.
pub unsafe fn pool2d(kind: PoolKind, x: Buf, [_, _, h, w]: [usize; 4], [wh, ww]: [usize; 2], [sy, sx]: [usize; 2], dst: Buf, planes: std::ops::Range<usize>) {
    let (ho, wo) = ((h - wh) / sy + 1, (w - ww) / sx + 1);
    let (first, count) = (planes.start, planes.len());
    unsafe {
        match x.dtype {
            DType::F32 => pool_planes::<f32>(kind, (x.ptr as *const f32).add(first * h * w), count, h, w, [wh, ww], [sy, sx], ho, wo, (dst.ptr as *mut f32).add(first * ho * wo)),
            DType::F64 => pool_planes::<f64>(kind, (x.ptr as *const f64).add(first * h * w), count, h, w, [wh, ww], [sy, sx], ho, wo, (dst.ptr as *mut f64).add(first * ho * wo)),
            _ => {}
        }
    }
}

trait PoolElem: Copy + PartialOrd + std::ops::Add<Output = Self> + std::ops::Div<Output = Self> {
    const LOWEST: Self;
    const ZERO: Self;
    fn from_usize(n: usize) -> Self;
    fn is_nan(self) -> bool;
}

impl PoolElem for f32 {
    const LOWEST: Self = f32::NEG_INFINITY;
    const ZERO: Self = 0.0;
    fn from_usize(n: usize) -> Self {
        n as f32
    }
    fn is_nan(self) -> bool {
        f32::is_nan(self)
    }
}

impl PoolElem for f64 {
    const LOWEST: Self = f64::NEG_INFINITY;
    const ZERO: Self = 0.0;
    fn from_usize(n: usize) -> Self {
        n as f64
    }
    fn is_nan(self) -> bool {
        f64::is_nan(self)
    }
}

#[allow(clippy::too_many_arguments)]
unsafe fn pool_planes<T: PoolElem>(kind: PoolKind, x: *const T, planes: usize, h: usize, w: usize, window: [usize; 2], stride: [usize; 2], ho: usize, wo: usize, dst: *mut T) {
    // The common column strides as constants, so the row loops vectorise
    // (a stride-2 load is two vector loads and a shuffle).
    unsafe {
        match (kind, stride[1]) {
            (PoolKind::Max, 1) => pool_rows::<T, true, 1>(x, planes, h, w, window, stride[0], ho, wo, dst),
            (PoolKind::Max, 2) => pool_rows::<T, true, 2>(x, planes, h, w, window, stride[0], ho, wo, dst),
            (PoolKind::Avg, 1) => pool_rows::<T, false, 1>(x, planes, h, w, window, stride[0], ho, wo, dst),
            (PoolKind::Avg, 2) => pool_rows::<T, false, 2>(x, planes, h, w, window, stride[0], ho, wo, dst),
            (PoolKind::Max, sx) => pool_rows_strided::<T, true>(x, planes, h, w, window, [stride[0], sx], ho, wo, dst),
            (PoolKind::Avg, sx) => pool_rows_strided::<T, false>(x, planes, h, w, window, [stride[0], sx], ho, wo, dst),
        }
    }
}

#[allow(clippy::too_many_arguments)]
unsafe fn pool_rows<T: PoolElem, const MAX: bool, const SX: usize>(x: *const T, planes: usize, h: usize, w: usize, window: [usize; 2], sy: usize, ho: usize, wo: usize, dst: *mut T) {
    unsafe { pool_rows_strided::<T, MAX>(x, planes, h, w, window, [sy, SX], ho, wo, dst) }
}

/// Pooling one output row at a time, the row itself the accumulator: for
/// each window tap, a pass along the row (a loop the compiler vectorises).
/// Every output sums or compares its taps in the interpreter's order.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
unsafe fn pool_rows_strided<T: PoolElem, const MAX: bool>(x: *const T, planes: usize, h: usize, w: usize, [wh, ww]: [usize; 2], [sy, sx]: [usize; 2], ho: usize, wo: usize, dst: *mut T) {
    let area = T::from_usize(wh * ww);
    for p in 0..planes {
        let plane = unsafe { x.add(p * h * w) };
        for oy in 0..ho {
            // SAFETY: row `oy` of plane `p` of the output.
            let out = unsafe { std::slice::from_raw_parts_mut(dst.add((p * ho + oy) * wo), wo) };
            out.fill(if MAX { T::LOWEST } else { T::ZERO });
            for ki in 0..wh {
                let row = unsafe { plane.add((oy * sy + ki) * w) };
                for kj in 0..ww {
                    for (ox, acc) in out.iter_mut().enumerate() {
                        let v = unsafe { *row.add(ox * sx + kj) };
                        *acc = if !MAX {
                            *acc + v
                        } else if v > *acc || (v.is_nan() && !acc.is_nan()) {
                            // Larger, or NaN (NaN-propagating, as the interpreter's max_of).
                            v
                        } else {
                            *acc
                        };
                    }
                }
            }
            if !MAX {
                for acc in out.iter_mut() {
                    *acc = *acc / area;
                }
            }
        }
    }
}

/// Index of the maximum along the middle axis of `[outer, n, inner]`, first
/// on ties, a NaN counting as the maximum.
///
/// # Safety
/// `x` holds `outer·n·inner` elements, `dst` `outer·inner` i64s.
pub unsafe fn argmax(x: Buf, (outer, n, inner): (usize, usize, usize), dst: Buf) {
    fn go<T: Copy + PartialOrd>(x: *const T, (outer, n, inner): (usize, usize, usize), dst: *mut i64, is_nan: impl Fn(T) -> bool) {
        for o in 0..outer {
            for j in 0..inner {
                let at = |k: usize| unsafe { *x.add((o * n + k) * inner + j) };
                let mut best = 0;
                for k in 1..n {
                    let (v, b) = (at(k), at(best));
                    if v > b || (is_nan(v) && !is_nan(b)) {
                        best = k;
                    }
                }
                unsafe { *dst.add(o * inner + j) = best as i64 };
            }
        }
    }
    if n == 0 {
        return;
    }
    let dst = x_as::<i64>(dst);
    match x.dtype {
        DType::F32 => go(x.ptr as *const f32, (outer, n, inner), dst, f32::is_nan),
        DType::F64 => go(x.ptr as *const f64, (outer, n, inner), dst, f64::is_nan),
        DType::I64 => go(x.ptr as *const i64, (outer, n, inner), dst, |_| false),
        DType::Bool => go(x.ptr as *const u8, (outer, n, inner), dst, |_| false),
    }
}

fn x_as<T>(b: Buf) -> *mut T {
    b.ptr as *mut T
}

/// Below this many numbers, one thread draws them all.
const PARALLEL_RAND: usize = 1 << 16;

/// Fresh random numbers, drawn exactly as the interpreter draws them (the
/// same generator: `StdRng` is ChaCha12; same order), so equal seeds give
/// equal dropout masks. A uniform number is one 32-bit word of the stream
/// per f32 (two per f64), so each thread fills its own range from the word
/// that range starts at (ChaCha is a counter: `set_word_pos` jumps there),
/// and the numbers do not depend on the thread count. Normal draws use a
/// varying number of words: one thread.
///
/// # Safety
/// `dst` holds `n` elements of its (float) dtype.
pub unsafe fn rand(rng: &mut ChaCha12Rng, dist: RandDist, dst: Buf, n: usize, pool: &Pool) {
    let words = match (dist, dst.dtype) {
        (RandDist::Uniform, DType::F32) => 1,
        (RandDist::Uniform, DType::F64) => 2,
        _ => {
            for i in 0..n {
                unsafe {
                    match dst.dtype {
                        DType::F32 => *dst.at::<f32>(i) = StandardNormal.sample(rng),
                        DType::F64 => *dst.at::<f64>(i) = StandardNormal.sample(rng),
                        _ => {}
                    }
                }
            }
            return;
        }
    };
    let start = rng.get_word_pos();
    let parts = if n >= PARALLEL_RAND { pool.threads() } else { 1 };
    let chunk = n.div_ceil(parts).max(1);
    let shared = &*rng;
    let dst_addr = dst.ptr as usize;
    pool.run(n.div_ceil(chunk), &|part, _| {
        let (lo, hi) = (part * chunk, ((part + 1) * chunk).min(n));
        let mut r = shared.clone();
        r.set_word_pos(start + (lo * words) as u128);
        // SAFETY: parts write disjoint ranges of `dst`, which holds `n` values.
        unsafe {
            if words == 1 {
                // The words in bulk, then f32 exactly as `random::<f32>()`
                // makes one: the top 24 bits, scaled into [0, 1).
                let out = std::slice::from_raw_parts_mut((dst_addr as *mut u32).add(lo), hi - lo);
                r.fill(out);
                for x in out.iter_mut() {
                    *x = ((*x >> 8) as f32 * (1.0 / (1u32 << 24) as f32)).to_bits();
                }
            } else {
                let out = std::slice::from_raw_parts_mut((dst_addr as *mut f64).add(lo), hi - lo);
                for x in out {
                    *x = r.random::<f64>();
                }
            }
        }
    });
    rng.set_word_pos(start + (n * words) as u128);
}

/// f64 `C[m, n] = A·B` by direct loops (gradient checks run in f64; speed
/// does not matter there).
///
/// # Safety
/// Strided `a` (`m × k`) and `b` (`k × n`) in range; `c` row-major `m × n`.
#[allow(clippy::too_many_arguments)]
pub unsafe fn dgemm_naive(m: usize, n: usize, k: usize, a: *const f64, (ars, acs): (isize, isize), b: *const f64, (brs, bcs): (isize, isize), c: *mut f64, accumulate: bool) {
    for i in 0..m {
        for j in 0..n {
            let mut s = 0.0;
            for p in 0..k {
                unsafe { s += *a.offset(i as isize * ars + p as isize * acs) * *b.offset(p as isize * brs + j as isize * bcs) };
            }
            unsafe {
                let d = c.add(i * n + j);
                *d = if accumulate { *d + s } else { s };
            }
        }
    }
}
