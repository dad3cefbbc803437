//! Wide loops: elementwise f32 kernels heavy with exp, log, tanh or
//! sigmoid (an LSTM or GRU cell, five or three of them per value) run 8 or
//! 16 values at a time instead of Cranelift's 4 (its x64 vectors are 128
//! bits). A small interpreter walks the kernel's instructions over chunks
//! of the innermost loop; each instruction is a loop over [`CHUNK`] values
//! compiled by rustc for AVX2+FMA or AVX-512, chosen at run time. The
//! values are the Cranelift code's, bit for bit: the same operations in the
//! same order (`math.rs`'s polynomials, its fused multiply-adds, its
//! selects), each rounded by IEEE rules, so a model trains to the same
//! figures whichever code runs its cells (`tests/wide.rs` checks it).
//!
//! Kernels with anything else (reductions, integers, indices, bool
//! buffers, calls) stay with Cranelift, as do light ones, where a chunk's
//! copies would cost more than the width saves. Rows shorter than a chunk
//! (hidden 32) are packed several to a chunk, so that each instruction's
//! dispatch still pays for a whole chunk of lanes.

use d2l_ir::{BinaryOp, CmpOp, DType, UnaryOp};
use d2l_kernels::kernel::{Inst, LoopKernel};

use d2l_kernels::math::{exp, log, sigmoid, tanh};

/// Values per chunk: every instruction's result for a chunk stays in L1.
const CHUNK: usize = 128;
/// Shortest innermost loop run wide. Rows shorter than a chunk share one
/// (4 rows of 32: seq2seq's GRU cells); a row's copy in and out costs about
/// what its arithmetic would at Cranelift's 4 lanes when rows are shorter.
const MIN_INNER: usize = 16;
/// Most instructions a wide kernel may have (its values live on the stack).
const MAX_VALUES: usize = 96;
/// Most loops a wide kernel may have (its indices live on the stack).
const MAX_LOOPS: usize = 8;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Level {
    Avx2,
    Avx512,
}

impl Level {
    /// Whether this CPU has the features of `self`.
    pub fn supported(self) -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            let avx2 = std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma");
            match self {
                Level::Avx2 => avx2,
                Level::Avx512 => avx2 && std::is_x86_feature_detected!("avx512f"),
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        false
    }

    /// The widest level this CPU runs, unless `D2L_WIDE` says `off` or
    /// `avx2` (for comparisons).
    pub fn detect() -> Option<Level> {
        static LEVEL: std::sync::OnceLock<Option<Level>> = std::sync::OnceLock::new();
        *LEVEL.get_or_init(|| {
            #[cfg(target_arch = "x86_64")]
            {
                let (avx2, avx512) = (Level::Avx2.supported(), Level::Avx512.supported());
                match std::env::var("D2L_WIDE").ok().as_deref() {
                    Some("off") => None,
                    Some("avx2") => avx2.then_some(Level::Avx2),
                    _ if avx512 => Some(Level::Avx512),
                    _ => avx2.then_some(Level::Avx2),
                }
            }
            #[cfg(not(target_arch = "x86_64"))]
            None
        })
    }
}

#[derive(Clone, Debug)]
enum Op {
    /// f32 at `slot + offset + Σ strides·i`.
    Load { slot: usize, offset: i64, strides: Vec<i64> },
    Const(f32),
    Unary(UnaryOp, usize),
    Binary(BinaryOp, usize, usize),
    /// A lane mask: all ones where true.
    Compare(CmpOp, usize, usize),
    /// `cond ? a : b`, by bits, as Cranelift's `bitselect`.
    Select(usize, usize, usize),
}

#[derive(Clone, Debug)]
struct WideStore {
    value: usize,
    slot: usize,
    offset: i64,
    strides: Vec<i64>,
}

/// A loop kernel in the form the wide interpreter runs.
#[derive(Clone, Debug)]
pub struct WideKernel {
    extents: Vec<usize>,
    ops: Vec<Op>,
    stores: Vec<WideStore>,
    level: Level,
}

impl WideKernel {
    /// The kernel as a wide one, when it is all f32 elementwise work with at
    /// least one transcendental and its innermost loop fills a chunk; else
    /// None (Cranelift runs it).
    pub fn new(kernel: &LoopKernel) -> Option<WideKernel> {
        let level = Level::detect()?;
        let inner = *kernel.extents.last()?;
        if inner < MIN_INNER || kernel.extents.len() > MAX_LOOPS || kernel.insts.len() > MAX_VALUES || kernel.stores.is_empty() {
            return None;
        }
        let f32_only = |d: DType| d == DType::F32;
        let mut heavy = false;
        let mut ops = Vec::with_capacity(kernel.insts.len());
        for inst in &kernel.insts {
            ops.push(match inst {
                Inst::Load { dtype, access } if f32_only(*dtype) => Op::Load { slot: access.slot, offset: access.offset, strides: access.strides.clone() },
                Inst::Const { dtype, value } if f32_only(*dtype) => Op::Const(*value as f32),
                Inst::Unary { op, dtype, x } if f32_only(*dtype) => {
                    match op {
                        UnaryOp::Exp | UnaryOp::Log | UnaryOp::Tanh | UnaryOp::Sigmoid => heavy = true,
                        UnaryOp::Neg | UnaryOp::Abs | UnaryOp::Sqrt => {}
                        UnaryOp::Sin | UnaryOp::Cos => return None,
                    }
                    Op::Unary(*op, x.0 as usize)
                }
                Inst::Binary { op, dtype, a, b } if f32_only(*dtype) && *op != BinaryOp::Pow => Op::Binary(*op, a.0 as usize, b.0 as usize),
                Inst::Compare { op, dtype, a, b } if f32_only(*dtype) => Op::Compare(*op, a.0 as usize, b.0 as usize),
                Inst::Select { dtype, cond, a, b } if f32_only(*dtype) => Op::Select(cond.0 as usize, a.0 as usize, b.0 as usize),
                _ => return None,
            });
        }
        let mut stores = Vec::with_capacity(kernel.stores.len());
        for s in &kernel.stores {
            if s.reduce.is_some() || s.dtype != DType::F32 {
                return None;
            }
            stores.push(WideStore { value: s.value.0 as usize, slot: s.access.slot, offset: s.access.offset, strides: s.access.strides.clone() });
        }
        heavy.then(|| WideKernel { extents: kernel.extents.clone(), ops, stores, level })
    }

    /// The same kernel run at `level` (which this CPU must support: see
    /// [`Level::supported`]), for tests and comparisons.
    pub fn at_level(self, level: Level) -> WideKernel {
        assert!(level.supported(), "{level:?} needs CPU features this machine lacks");
        WideKernel { level, ..self }
    }

    /// Runs loop 0 over `lo..hi` (the other loops whole), as the Cranelift
    /// function of the kernel does when called with the same table.
    ///
    /// # Safety
    /// `table` holds the address of every slot the kernel reads or writes,
    /// each valid for the accesses of the whole iteration space.
    pub unsafe fn run(&self, table: *const *mut u8, lo: usize, hi: usize) {
        // SAFETY: `detect` found the features each level needs.
        unsafe {
            match self.level {
                #[cfg(target_arch = "x86_64")]
                Level::Avx512 => self.run_avx512(table, lo, hi),
                #[cfg(target_arch = "x86_64")]
                Level::Avx2 => self.run_avx2(table, lo, hi),
                #[cfg(not(target_arch = "x86_64"))]
                _ => self.run_generic(table, lo, hi),
            }
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx2,fma")]
    unsafe fn run_avx512(&self, table: *const *mut u8, lo: usize, hi: usize) {
        unsafe { self.run_generic(table, lo, hi) }
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn run_avx2(&self, table: *const *mut u8, lo: usize, hi: usize) {
        unsafe { self.run_generic(table, lo, hi) }
    }

    /// The interpreter, inlined into each level's function so that its
    /// chunk loops compile for that level's vectors.
    #[inline(always)]
    unsafe fn run_generic(&self, table: *const *mut u8, lo: usize, hi: usize) {
        use std::mem::MaybeUninit;
        let r = self.extents.len();
        let inner = self.extents[r - 1];
        // Each value's chunk: its register, or for a contiguous load of a
        // whole chunk the buffer itself (no copy). Every register read was
        // first written in full (loads pad a partial chunk with zeros).
        let mut regs = [const { MaybeUninit::<[f32; CHUNK]>::uninit() }; MAX_VALUES];
        let mut src = [std::ptr::null::<[f32; CHUNK]>(); MAX_VALUES];
        for (i, op) in self.ops.iter().enumerate() {
            if let Op::Const(v) = op {
                src[i] = regs[i].write([*v; CHUNK]);
            }
        }
        // The outer loops' indices (loop 0 from `lo`), an odometer; with one
        // loop, `lo..hi` is the inner range itself.
        let (inner_lo, inner_hi) = if r == 1 { (lo, hi) } else { (0, inner) };
        let mut index = [0usize; MAX_LOOPS];
        if r > 1 {
            if lo >= hi {
                return;
            }
            index[0] = lo;
        }
        let outer = |index: &[usize], strides: &[i64], offset: i64| offset + index.iter().zip(&strides[..r - 1]).map(|(&i, &s)| i as i64 * s).sum::<i64>();
        // Rows shorter than a chunk share one: a chunk is `rows` whole rows
        // (the odometer's next ones), each `inner` lanes at lane k·inner.
        let rows_per_chunk = if r > 1 && inner < CHUNK { CHUNK / inner } else { 1 };
        if rows_per_chunk > 1 {
            let mut rows = [[0usize; MAX_LOOPS - 1]; CHUNK];
            loop {
                // Gather the chunk's rows.
                let mut n = 0;
                let mut more = true;
                while n < rows_per_chunk && more {
                    rows[n][..r - 1].copy_from_slice(&index[..r - 1]);
                    n += 1;
                    more = advance(&mut index[..r - 1], &self.extents, hi);
                }
                let len = n * inner;
                // SAFETY: the caller's table covers the kernel's accesses.
                unsafe {
                    self.run_chunk(&mut regs, &mut src, |slot, offset, strides, out| {
                        let step = strides[r - 1];
                        for (k, row) in rows[..n].iter().enumerate() {
                            let at = (*table.add(slot) as *const f32).offset(outer(&row[..r - 1], strides, offset) as isize);
                            load_row(&mut out[k * inner..(k + 1) * inner], at, step);
                        }
                        out[len..].fill(0.0);
                        None
                    })
                };
                for s in &self.stores {
                    let step = s.strides[r - 1];
                    // SAFETY: the value was computed this chunk, and the
                    // kernel's accesses stay inside its buffers.
                    let value = unsafe { &*src[s.value] };
                    for (k, row) in rows[..n].iter().enumerate() {
                        unsafe {
                            let at = (*table.add(s.slot) as *mut f32).offset(outer(&row[..r - 1], &s.strides, s.offset) as isize);
                            store_row(&value[k * inner..(k + 1) * inner], at, step);
                        }
                    }
                }
                if !more {
                    return;
                }
            }
        }
        loop {
            let mut j0 = inner_lo;
            while j0 < inner_hi {
                let len = CHUNK.min(inner_hi - j0);
                // SAFETY: the caller's table covers the kernel's accesses.
                unsafe {
                    self.run_chunk(&mut regs, &mut src, |slot, offset, strides, out| {
                        let step = strides[r - 1];
                        let start = outer(&index[..r - 1], strides, offset) + step * j0 as i64;
                        let at = (*table.add(slot) as *const f32).offset(start as isize);
                        if step == 1 && len == CHUNK {
                            return Some(at as *const [f32; CHUNK]);
                        }
                        load(out, at, step, len);
                        None
                    })
                };
                for s in &self.stores {
                    let step = s.strides[r - 1];
                    let start = outer(&index[..r - 1], &s.strides, s.offset) + step * j0 as i64;
                    // SAFETY: as for loads; the value was computed this chunk.
                    unsafe {
                        let at = (*table.add(s.slot) as *mut f32).offset(start as isize);
                        store(&*src[s.value], at, step, len);
                    }
                }
                j0 += len;
            }
            if r == 1 || !advance(&mut index[..r - 1], &self.extents, hi) {
                return;
            }
        }
    }

    /// Runs the instructions over one chunk. `load(slot, offset, strides,
    /// register)` fills a load's register, or returns the buffer itself
    /// when the chunk can be read in place.
    ///
    /// # Safety
    /// `load` reads inside the kernel's buffers and fills what it does not
    /// return in full; constants' registers were written beforehand.
    #[inline(always)]
    unsafe fn run_chunk(
        &self,
        regs: &mut [std::mem::MaybeUninit<[f32; CHUNK]>; MAX_VALUES],
        src: &mut [*const [f32; CHUNK]; MAX_VALUES],
        mut load: impl FnMut(usize, i64, &[i64], &mut [f32; CHUNK]) -> Option<*const [f32; CHUNK]>,
    ) {
        for (i, op) in self.ops.iter().enumerate() {
            let out = regs[i].as_mut_ptr();
            // SAFETY: `out` is this value's register, which no operand is; it
            // is written in full before `src` points at it. Operands come
            // earlier (SSA order) and were written in full this chunk, or are
            // constants or buffers.
            let out_ref = unsafe { &mut *out };
            let arg = |x: &usize| unsafe { &*src[*x] };
            match op {
                Op::Load { slot, offset, strides } => {
                    if let Some(buffer) = load(*slot, *offset, strides, out_ref) {
                        src[i] = buffer;
                        continue;
                    }
                }
                Op::Const(_) => continue,
                Op::Unary(u, x) => unary(*u, arg(x), out_ref),
                Op::Binary(b, x, y) => binary(*b, arg(x), arg(y), out_ref),
                Op::Compare(c, x, y) => compare(*c, arg(x), arg(y), out_ref),
                Op::Select(c, x, y) => select(arg(c), arg(x), arg(y), out_ref),
            }
            src[i] = out;
        }
    }
}

/// Steps the outer loops' odometer `index` (loop 0 stops at `hi`, loop d at
/// `extents[d]`); false when it has run out.
#[inline(always)]
fn advance(index: &mut [usize], extents: &[usize], hi: usize) -> bool {
    let mut d = index.len();
    while d > 0 {
        d -= 1;
        index[d] += 1;
        let end = if d == 0 { hi } else { extents[d] };
        if index[d] < end {
            return true;
        }
        if d == 0 {
            return false;
        }
        index[d] = 0;
    }
    false
}

/// Copies `len` values in vectors of 16: rows are short (32 values), and
/// a call to `memcpy` per row cost more than the copy.
#[inline(always)]
unsafe fn copy_row(from: *const f32, to: *mut f32, len: usize) {
    // SAFETY: the caller's ranges hold `len` values and do not overlap.
    unsafe {
        let mut j = 0;
        while j + 16 <= len {
            std::ptr::write_unaligned(to.add(j) as *mut [f32; 16], std::ptr::read_unaligned(from.add(j) as *const [f32; 16]));
            j += 16;
        }
        while j < len {
            *to.add(j) = *from.add(j);
            j += 1;
        }
    }
}

/// One row of `out.len()` values `step` apart from `at` (a broadcast when 0).
#[inline(always)]
unsafe fn load_row(out: &mut [f32], at: *const f32, step: i64) {
    // SAFETY (all): the kernel's accesses stay inside its buffers.
    unsafe {
        match step {
            0 => out.fill(*at),
            1 => copy_row(at, out.as_mut_ptr(), out.len()),
            _ => out.iter_mut().enumerate().for_each(|(j, o)| *o = *at.offset(step as isize * j as isize)),
        }
    }
}

/// One row of `value` stored `step` apart from `at`.
#[inline(always)]
unsafe fn store_row(value: &[f32], at: *mut f32, step: i64) {
    // SAFETY: as for `load_row`; a stored value's stride is never 0 here.
    unsafe {
        if step == 1 {
            copy_row(value.as_ptr(), at, value.len());
        } else {
            value.iter().enumerate().for_each(|(j, v)| *at.offset(step as isize * j as isize) = *v);
        }
    }
}

/// A chunk of `len` values `step` apart from `at` (a broadcast when 0),
/// padded with zeros to the whole chunk.
#[inline(always)]
fn load(out: &mut [f32; CHUNK], at: *const f32, step: i64, len: usize) {
    // SAFETY (both): the kernel's accesses stay inside its buffers.
    unsafe {
        if step == 0 {
            *out = [*at; CHUNK];
            return;
        }
        for (j, o) in out.iter_mut().enumerate() {
            *o = if j < len { *at.offset(step as isize * j as isize) } else { 0.0 };
        }
    }
}

#[inline(always)]
fn store(value: &[f32; CHUNK], at: *mut f32, step: i64, len: usize) {
    // SAFETY: as for `load`; a stored value's stride is never 0 here
    // (reductions stay with Cranelift).
    unsafe {
        if step == 1 && len == CHUNK {
            *(at as *mut [f32; CHUNK]) = *value;
        } else {
            for (j, v) in value.iter().enumerate().take(len) {
                *at.offset(step as isize * j as isize) = *v;
            }
        }
    }
}

#[inline(always)]
fn map(x: &[f32; CHUNK], out: &mut [f32; CHUNK], f: impl Fn(f32) -> f32) {
    for (o, &v) in out.iter_mut().zip(x) {
        *o = f(v);
    }
}

#[inline(always)]
fn zip(a: &[f32; CHUNK], b: &[f32; CHUNK], out: &mut [f32; CHUNK], f: impl Fn(f32, f32) -> f32) {
    for ((o, &x), &y) in out.iter_mut().zip(a).zip(b) {
        *o = f(x, y);
    }
}

#[inline(always)]
fn unary(op: UnaryOp, x: &[f32; CHUNK], out: &mut [f32; CHUNK]) {
    match op {
        UnaryOp::Neg => map(x, out, |v| -v),
        UnaryOp::Abs => map(x, out, f32::abs),
        UnaryOp::Sqrt => map(x, out, f32::sqrt),
        UnaryOp::Exp => map(x, out, exp),
        UnaryOp::Log => map(x, out, log),
        UnaryOp::Tanh => map(x, out, tanh),
        UnaryOp::Sigmoid => map(x, out, sigmoid),
        UnaryOp::Sin | UnaryOp::Cos => unreachable!("not wide"),
    }
}

#[inline(always)]
fn binary(op: BinaryOp, a: &[f32; CHUNK], b: &[f32; CHUNK], out: &mut [f32; CHUNK]) {
    match op {
        BinaryOp::Add => zip(a, b, out, |x, y| x + y),
        BinaryOp::Sub => zip(a, b, out, |x, y| x - y),
        BinaryOp::Mul => zip(a, b, out, |x, y| x * y),
        BinaryOp::Div => zip(a, b, out, |x, y| x / y),
        // The interpreter's (and Cranelift's): b if strictly better, NaN if b is.
        BinaryOp::Max => zip(a, b, out, |x, y| if y.is_nan() || y > x { y } else { x }),
        BinaryOp::Min => zip(a, b, out, |x, y| if y.is_nan() || y < x { y } else { x }),
        BinaryOp::Pow => unreachable!("not wide"),
    }
}

const TRUE: f32 = f32::from_bits(u32::MAX);

#[inline(always)]
fn compare(op: CmpOp, a: &[f32; CHUNK], b: &[f32; CHUNK], out: &mut [f32; CHUNK]) {
    let mask = |c: bool| if c { TRUE } else { 0.0 };
    match op {
        CmpOp::Eq => zip(a, b, out, |x, y| mask(x == y)),
        // Unordered or not equal, as Cranelift's `NotEqual`.
        CmpOp::Ne => zip(a, b, out, |x, y| mask(x != y)),
        CmpOp::Lt => zip(a, b, out, |x, y| mask(x < y)),
        CmpOp::Le => zip(a, b, out, |x, y| mask(x <= y)),
        CmpOp::Gt => zip(a, b, out, |x, y| mask(x > y)),
        CmpOp::Ge => zip(a, b, out, |x, y| mask(x >= y)),
    }
}

#[inline(always)]
fn select(c: &[f32; CHUNK], a: &[f32; CHUNK], b: &[f32; CHUNK], out: &mut [f32; CHUNK]) {
    for (((o, &m), &x), &y) in out.iter_mut().zip(c).zip(a).zip(b) {
        let m = m.to_bits();
        *o = f32::from_bits((x.to_bits() & m) | (y.to_bits() & !m));
    }
}
