//! A compiled graph: the machine code of its loops, its preallocated
//! buffers (one arena, laid out by the memory plan, plus GEMM and im2col
//! scratch per thread) and the steps that run them. Running it writes the
//! caller's output buffers and allocates nothing.

use std::cell::UnsafeCell;
use std::time::Instant;

use d2l_ir::{DType, Graph};
use d2l_passes::fusion::{self, Affine};
use rand::SeedableRng;
use rand::rngs::StdRng;

use crate::clif::{Compiled, Jit, JitError, KernelFn};
use crate::gemm::{self, MatMut, MatRef, Scratches};
use crate::lower::{self, CopySource, FeedSlot, LowerError, OutputFill, OutputSlot, Place, Plan, Routine, Step};
use crate::pool::{Pool, pool};
use crate::routines::{self, Buf};

/// Elements of one im2col block (per thread): 256 KiB of f32, cache-resident.
const COLS_BUDGET: usize = 1 << 16;
/// Elementwise loops below this many elements stay on one thread.
const PARALLEL_LOOP: usize = 1 << 15;

#[derive(Debug, thiserror::Error)]
pub enum CompileError {
    #[error("{0}")]
    Lower(#[from] LowerError),
    #[error("{0}")]
    Jit(#[from] JitError),
}

/// Why a run failed (the graph is fine, the data is not).
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    #[error("{node}: index {index} is out of range for an axis of size {size}")]
    IndexOutOfRange { node: String, index: i64, size: usize },
    #[error("{node}: integer division by zero")]
    DivisionByZero { node: String },
}

/// How long compiling took, by phase (milliseconds).
#[derive(Clone, Copy, Debug, Default)]
pub struct CompileTimes {
    pub fusion_ms: f64,
    pub plan_ms: f64,
    pub codegen_ms: f64,
}

#[repr(C, align(64))]
#[derive(Clone, Copy)]
struct Line([u8; 64]);

/// A compiled graph, ready to run many times.
pub struct Program {
    plan: Plan,
    code: Compiled,
    /// Per slot, its buffer's address (arena slots fixed, others set per run).
    table: Vec<*mut u8>,
    _arena: Vec<Line>,
    status: Box<i64>,
    gemm: Scratches,
    /// Per thread: im2col block, and per conv a packed weight copy.
    cols: Vec<UnsafeCell<Vec<f32>>>,
    wpack: UnsafeCell<Vec<f32>>,
    rng: StdRng,
    pool: &'static Pool,
    /// Node descriptions for errors, by node index.
    names: Vec<String>,
    pub times: CompileTimes,
}

// SAFETY: the raw pointers in `table` point into buffers this program owns
// or that the caller lends for the duration of `run`.
unsafe impl Send for Program {}

struct SyncCell<'a>(&'a [UnsafeCell<Vec<f32>>]);
// SAFETY: part `i` of a parallel job uses only cell `i`.
unsafe impl Sync for SyncCell<'_> {}

impl SyncCell<'_> {
    /// # Safety
    /// Only the part numbered `i` may use cell `i`.
    #[allow(clippy::mut_from_ref)]
    unsafe fn get(&self, i: usize) -> &mut Vec<f32> {
        unsafe { &mut *self.0[i].get() }
    }
}

impl Program {
    /// Fuses, plans and JIT-compiles `graph`; `seed` seeds its random ops.
    pub fn compile(graph: &Graph, seed: u64) -> Result<Program, CompileError> {
        let t0 = Instant::now();
        let fusion = fusion::fuse(graph);
        let t1 = Instant::now();
        let plan = lower::plan(graph, &fusion)?;
        let t2 = Instant::now();
        let mut jit = Jit::new()?;
        for k in &plan.kernels {
            jit.add(k)?;
        }
        let code = jit.finish()?;
        let t3 = Instant::now();
        let ms = |a: Instant, b: Instant| (b - a).as_secs_f64() * 1e3;
        let times = CompileTimes { fusion_ms: ms(t0, t1), plan_ms: ms(t1, t2), codegen_ms: ms(t2, t3) };
        let pool = pool();
        let threads = pool.threads();
        let mut arena = vec![Line([0; 64]); plan.memory.size.div_ceil(64)];
        let mut status = Box::new(0i64);
        let mut table: Vec<*mut u8> = vec![std::ptr::null_mut(); plan.slots.len()];
        let base = arena.as_mut_ptr() as *mut u8;
        for (i, slot) in plan.slots.iter().enumerate() {
            table[i] = match slot.place {
                Place::Status => (&mut *status) as *mut i64 as *mut u8,
                // SAFETY: the memory plan keeps every offset + size within the arena.
                Place::Arena(offset) => unsafe { base.add(offset) },
                Place::Feed(_) | Place::Output(_) => std::ptr::null_mut(),
            };
        }
        let (mut max_n, mut cols, mut wpack) = (0usize, 0usize, 0usize);
        for step in &plan.steps {
            match step {
                Step::MatMul { n, .. } => max_n = max_n.max(*n),
                Step::Conv2d { x_dims, w_dims, stride, .. } => {
                    let (pixels, field) = conv_sizes(x_dims, w_dims, *stride);
                    let per_channel = w_dims[2] * w_dims[3] * pixels;
                    cols = cols.max(per_channel.max(COLS_BUDGET / per_channel.max(1) * per_channel));
                    wpack = wpack.max(w_dims[0] * field);
                    max_n = max_n.max(pixels);
                }
                _ => {}
            }
        }
        let names = graph.ids().map(|id| lower::describe(graph, id)).collect();
        Ok(Program {
            gemm: Scratches::new(threads, max_n.max(1)),
            cols: (0..threads).map(|_| UnsafeCell::new(vec![0.0; cols])).collect(),
            wpack: UnsafeCell::new(vec![0.0; wpack]),
            plan,
            code,
            table,
            _arena: arena,
            status,
            rng: StdRng::seed_from_u64(seed),
            pool,
            names,
            times,
        })
    }

    pub fn plan(&self) -> &Plan {
        &self.plan
    }

    pub fn feeds(&self) -> &[FeedSlot] {
        &self.plan.feeds
    }

    pub fn outputs(&self) -> &[OutputSlot] {
        &self.plan.outputs
    }

    /// Runs the graph once.
    ///
    /// # Safety
    /// `feeds[i]` must point to a row-major buffer of feed `i`'s dtype and
    /// shape, `outputs[i]` to a writable one of output `i`'s, none
    /// overlapping an output, all valid for the duration of the call.
    pub unsafe fn run(&mut self, feeds: &[*const u8], outputs: &[*mut u8]) -> Result<(), ExecError> {
        for (i, slot) in self.plan.slots.iter().enumerate() {
            match slot.place {
                Place::Feed(f) => self.table[i] = feeds[f] as *mut u8,
                Place::Output(o) => self.table[i] = outputs[o],
                _ => {}
            }
        }
        *self.status = 0;
        for s in 0..self.plan.steps.len() {
            // SAFETY: the plan's slots describe the buffers `table` points to.
            unsafe { self.step(s)? };
        }
        for o in 0..self.plan.outputs.len() {
            let out = &self.plan.outputs[o];
            let OutputFill::Copy(source) = &out.fill else { continue };
            let dst = Buf { ptr: self.table[out.slot], dtype: out.dtype };
            let dims = out.shape.dims();
            // SAFETY: sources are in range of their slots (fusion's maps).
            unsafe {
                match source {
                    CopySource::Const(v) => routines::fill(dst, out.shape.numel(), *v),
                    CopySource::Index(map) => fill_index(dst, dims, map),
                    CopySource::Slot(op) => routines::gather_strided(Buf { ptr: self.table[op.slot], dtype: out.dtype }, &op.map, dims, dst),
                }
            }
        }
        Ok(())
    }

    fn kernel_fn(&self, k: usize) -> KernelFn {
        self.code.functions[k]
    }

    /// Runs loop kernel `k` over its whole range, split over threads when big.
    unsafe fn run_loop(&self, k: usize) -> Result<(), ExecError> {
        let kernel = &self.plan.kernels[k];
        let f = self.kernel_fn(k);
        let extent = kernel.extents[0];
        let table = self.table.as_ptr() as usize;
        let parts = if kernel.splittable() && kernel.numel() >= PARALLEL_LOOP { self.pool.threads().min(extent) } else { 1 };
        if parts <= 1 {
            // SAFETY: the kernel reads and writes its slots only.
            unsafe { f(self.table.as_ptr(), 0, extent as i64) };
        } else {
            let chunk = extent.div_ceil(parts);
            self.pool.run(parts, &|p| {
                let lo = (p * chunk).min(extent);
                let hi = ((p + 1) * chunk).min(extent);
                // SAFETY: parts cover disjoint ranges of loop 0, which no store reduces over.
                unsafe { f(table as *const *mut u8, lo as i64, hi as i64) };
            });
        }
        if *self.status != 0 {
            return Err(ExecError::DivisionByZero { node: self.names[self.plan.kernel_nodes[k].index()].clone() });
        }
        Ok(())
    }

    unsafe fn step(&mut self, s: usize) -> Result<(), ExecError> {
        if let Step::Routine { routine: Routine::Rand { dist }, out, .. } = &self.plan.steps[s] {
            let dst = Buf { ptr: self.table[*out], dtype: self.plan.slots[*out].dtype };
            let n = self.plan.slots[*out].numel;
            // SAFETY: the output slot holds `n` elements of its dtype.
            unsafe { routines::rand(&mut self.rng, *dist, dst, n) };
            return Ok(());
        }
        unsafe { self.step_shared(s) }
    }

    /// Every step but random numbers (which advance the generator).
    unsafe fn step_shared(&self, s: usize) -> Result<(), ExecError> {
        match &self.plan.steps[s] {
            Step::Loop { kernel } => unsafe { self.run_loop(*kernel) },
            Step::MatMul { dtype, batch, m, n, k, a, b, out, epilogue, .. } => {
                let (m, n, k) = (*m, *n, *k);
                let r = batch.len();
                let out_ptr = self.table[*out];
                let (pa, pb) = (self.table[a.slot], self.table[b.slot]);
                let size = dtype.size_bytes() as isize;
                let (ars, acs, brs, bcs) = (a.map.strides[r] as isize, a.map.strides[r + 1] as isize, b.map.strides[r] as isize, b.map.strides[r + 1] as isize);
                let count: usize = batch.iter().product();
                for bi in 0..count {
                    // Batch offsets of both operands (row-major digits of bi).
                    let (mut oa, mut ob, mut rest) = (a.map.offset, b.map.offset, bi);
                    for d in (0..r).rev() {
                        let digit = (rest % batch[d]) as i64;
                        rest /= batch[d];
                        oa += digit * a.map.strides[d];
                        ob += digit * b.map.strides[d];
                    }
                    // SAFETY: offsets stay inside the operands (fusion's maps).
                    unsafe {
                        let c = out_ptr.offset((bi * m * n) as isize * size);
                        match dtype {
                            DType::F64 => routines::dgemm_naive(m, n, k, (pa as *const f64).offset(oa as isize), (ars, acs), (pb as *const f64).offset(ob as isize), (brs, bcs), c as *mut f64, false),
                            _ => gemm::sgemm_parallel(
                                m,
                                n,
                                k,
                                MatRef { ptr: (pa as *const f32).offset(oa as isize), rs: ars, cs: acs },
                                MatRef { ptr: (pb as *const f32).offset(ob as isize), rs: brs, cs: bcs },
                                MatMut { ptr: c as *mut f32, rs: n as isize },
                                false,
                                &self.gemm,
                                self.pool,
                            ),
                        }
                    }
                }
                match epilogue {
                    Some(e) => unsafe { self.run_loop(*e) },
                    None => Ok(()),
                }
            }
            Step::Conv2d { dtype, x, x_dims, w, w_dims, stride, out, epilogue, .. } => {
                unsafe {
                    if *dtype == DType::F64 {
                        conv2d_f64(self.table[x.slot] as *const f64, &x.map, *x_dims, self.table[w.slot] as *const f64, &w.map, *w_dims, *stride, self.table[*out] as *mut f64);
                    } else {
                        self.conv2d_f32(x, *x_dims, w, *w_dims, *stride, *out);
                    }
                }
                match epilogue {
                    Some(e) => unsafe { self.run_loop(*e) },
                    None => Ok(()),
                }
            }
            Step::Routine { node, routine, out } => {
                let dst = Buf { ptr: self.table[*out], dtype: self.plan.slots[*out].dtype };
                let buf = |slot: usize| Buf { ptr: self.table[slot], dtype: self.plan.slots[slot].dtype };
                let node = *node;
                let result = unsafe {
                    match routine {
                        Routine::Pad { src, dims, write, out_numel, value } => {
                            routines::pad(buf(*src), dims, write, *value, dst, *out_numel);
                            Ok(())
                        }
                        Routine::Concat { parts, outer, stride } => {
                            let mut at = 0;
                            for &(slot, row) in parts {
                                routines::concat_part(buf(slot), *outer, row, dst, at, *stride);
                                at += row;
                            }
                            Ok(())
                        }
                        Routine::Gather { x, split, idx, m } => routines::gather(buf(*x), *split, buf(*idx), *m, dst),
                        Routine::ScatterAdd { idx, m, updates, split } => routines::scatter_add(buf(*idx), *m, buf(*updates), *split, dst),
                        Routine::Pool2d { kind, x, dims, window, stride } => {
                            routines::pool2d(*kind, buf(*x), *dims, *window, *stride, dst);
                            Ok(())
                        }
                        Routine::ArgMax { x, split } => {
                            routines::argmax(buf(*x), *split, dst);
                            Ok(())
                        }
                        Routine::Rand { .. } => Ok(()),
                    }
                };
                result.map_err(|(index, size)| ExecError::IndexOutOfRange { node: self.names[node.index()].clone(), index, size })
            }
        }
    }

    /// f32 convolution: per image, im2col in channel blocks that fit the
    /// cache, each block one GEMM accumulated into the image's output.
    /// Images are split over threads; with fewer images than threads the
    /// GEMMs themselves are.
    unsafe fn conv2d_f32(&self, x: &lower::Operand, x_dims: [usize; 4], w: &lower::Operand, w_dims: [usize; 4], stride: [usize; 2], out: usize) {
        let [n, c, h, wd] = x_dims;
        let [o, _, kh, kw] = w_dims;
        let (pixels, field) = conv_sizes(&x_dims, &w_dims, stride);
        let (ho, wo) = ((h - kh) / stride[0] + 1, (wd - kw) / stride[1] + 1);
        let _ = (ho, wd);
        if n == 0 || o == 0 || pixels == 0 {
            return;
        }
        let xp = self.table[x.slot] as *const f32;
        let wp = self.table[w.slot] as *const f32;
        let outp = self.table[out] as *mut f32;
        // The weight as an [O, C·kh·kw] matrix: in place when its (c, i, j)
        // axes are one run, else packed once.
        let ws = &w.map.strides;
        let flat = ws[2] == kw as i64 * ws[3] && ws[1] == kh as i64 * ws[2] && ws[3] == 1;
        let (wmat, wrs) = if flat {
            (unsafe { wp.offset(w.map.offset as isize) }, ws[0] as isize)
        } else {
            let dims = [o, c, kh, kw];
            // SAFETY: one conv runs at a time; this is its packed weight.
            let wpack = unsafe { &mut *self.wpack.get() };
            let dst = Buf { ptr: wpack.as_mut_ptr() as *mut u8, dtype: DType::F32 };
            unsafe { routines::gather_strided(Buf { ptr: wp as *mut u8, dtype: DType::F32 }, &w.map, &dims, dst) };
            (wpack.as_ptr(), field as isize)
        };
        let per_channel = kh * kw * pixels;
        let block = (COLS_BUDGET / per_channel).clamp(1, c);
        let threads = self.pool.threads();
        let by_image = n >= threads && threads > 1;
        let cols = SyncCell(&self.cols);
        let gemm = &self.gemm;
        let pool = self.pool;
        let xm = &x.map;
        let wmat_addr = wmat as usize;
        let (xp_addr, out_addr) = (xp as usize, outp as usize);
        let image = move |img: usize, part: usize, parallel_gemm: bool| {
            // SAFETY: part `part` owns cols cell `part` and GEMM scratch `part`.
            let buf = unsafe { cols.get(part) };
            let xp = xp_addr as *const f32;
            let wmat = wmat_addr as *const f32;
            let dst = unsafe { (out_addr as *mut f32).add(img * o * pixels) };
            for c0 in (0..c).step_by(block) {
                let cb = block.min(c - c0);
                // im2col: row (ch, i, j), column (oy, ox).
                for ch in 0..cb {
                    let base = xm.offset + img as i64 * xm.strides[0] + (c0 + ch) as i64 * xm.strides[1];
                    for i in 0..kh {
                        for j in 0..kw {
                            let row = ((ch * kh + i) * kw + j) * pixels;
                            for oy in 0..ho {
                                let src = base + (oy * stride[0] + i) as i64 * xm.strides[2] + j as i64 * xm.strides[3];
                                let d = &mut buf[row + oy * wo..row + (oy + 1) * wo];
                                let step = stride[1] as i64 * xm.strides[3];
                                for (ox, v) in d.iter_mut().enumerate() {
                                    // SAFETY: in range of x by the conv's shape rule.
                                    *v = unsafe { *xp.offset((src + ox as i64 * step) as isize) };
                                }
                            }
                        }
                    }
                }
                let a = MatRef { ptr: unsafe { wmat.offset(c0 as isize * (kh * kw) as isize) }, rs: wrs, cs: 1 };
                let b = MatRef { ptr: buf.as_ptr(), rs: pixels as isize, cs: 1 };
                let cmat = MatMut { ptr: dst, rs: pixels as isize };
                unsafe {
                    if parallel_gemm {
                        gemm::sgemm_parallel(o, pixels, cb * kh * kw, a, b, cmat, c0 > 0, gemm, pool);
                    } else {
                        gemm::sgemm(o, pixels, cb * kh * kw, a, b, cmat, c0 > 0, gemm.get(part));
                    }
                }
            }
        };
        if by_image {
            let chunk = n.div_ceil(threads);
            self.pool.run(threads, &|part| {
                for img in part * chunk..((part + 1) * chunk).min(n) {
                    image(img, part, false);
                }
            });
        } else {
            for img in 0..n {
                image(img, 0, true);
            }
        }
    }
}

/// (output pixels per image, receptive field size) of a convolution.
fn conv_sizes(x: &[usize; 4], w: &[usize; 4], stride: [usize; 2]) -> (usize, usize) {
    let ho = (x[2].saturating_sub(w[2])) / stride[0].max(1) + 1;
    let wo = (x[3].saturating_sub(w[3])) / stride[1].max(1) + 1;
    (ho * wo, w[1] * w[2] * w[3])
}

/// Writes an index expression's values (as the output's dtype).
unsafe fn fill_index(dst: Buf, dims: &[usize], map: &Affine) {
    routines::for_each_offset(dims, map, |flat, v| unsafe {
        match dst.dtype {
            DType::F32 => *(dst.ptr as *mut f32).add(flat) = v as f32,
            DType::F64 => *(dst.ptr as *mut f64).add(flat) = v as f64,
            DType::I64 => *(dst.ptr as *mut i64).add(flat) = v,
            DType::Bool => *dst.ptr.add(flat) = u8::from(v != 0),
        }
    });
}

/// f64 convolution by direct loops (gradient checks only).
#[allow(clippy::too_many_arguments)]
unsafe fn conv2d_f64(x: *const f64, xm: &Affine, [n, c, h, wd]: [usize; 4], w: *const f64, wm: &Affine, [o, _, kh, kw]: [usize; 4], [sy, sx]: [usize; 2], out: *mut f64) {
    let (ho, wo) = ((h - kh) / sy + 1, (wd - kw) / sx + 1);
    let at = |m: &Affine, i: [usize; 4]| -> isize { (m.offset + (0..4).map(|d| i[d] as i64 * m.strides[d]).sum::<i64>()) as isize };
    let mut q = 0;
    for img in 0..n {
        for oc in 0..o {
            for oy in 0..ho {
                for ox in 0..wo {
                    let mut s = 0.0;
                    for ch in 0..c {
                        for i in 0..kh {
                            for j in 0..kw {
                                unsafe { s += *x.offset(at(xm, [img, ch, oy * sy + i, ox * sx + j])) * *w.offset(at(wm, [oc, ch, i, j])) };
                            }
                        }
                    }
                    unsafe { *out.add(q) = s };
                    q += 1;
                }
            }
        }
    }
}
