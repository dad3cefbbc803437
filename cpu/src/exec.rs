//! A compiled graph: the machine code of its loops, its preallocated
//! buffers (one arena, laid out by the memory plan, plus GEMM and im2col
//! scratch per thread) and the steps that run them. Running it writes the
//! caller's output buffers and allocates nothing.

use std::cell::UnsafeCell;
use std::collections::HashMap;
use std::time::Instant;

use d2l_ir::{DType, Graph};
use d2l_kernels::kernel::LoopKernel;
use d2l_kernels::lower::{self, CopySource, FeedSlot, LowerError, OutputFill, OutputSlot, Place, Plan, Routine, Step};
use d2l_kernels::schedule::GpuSchedule;
use d2l_passes::fusion::{self, Affine};
use rand::SeedableRng;
use rand_chacha::ChaCha12Rng;

use crate::clif::{Compiled, Jit, JitError, KernelFn};
use crate::conv;
use crate::gemm::{self, MatMut, MatRef, Scratches};
use crate::pool::{Pool, pool};
use crate::routines::{self, Buf};
use crate::wide::WideKernel;

/// Elementwise loops below this many elements stay on one thread.
const PARALLEL_LOOP: usize = 1 << 15;
/// A loop body at least this costly ([`d2l_kernels::kernel::LoopKernel::body_cost`]: two
/// transcendentals) counts as arithmetic rather than memory traffic.
const HEAVY_BODY: usize = 64;
/// Convolutions with fewer output pixels than this run as one GEMM over all
/// images: per image, the weights would be packed again for a product only
/// this wide.
const BATCHED_PIXELS: usize = 256;

#[derive(Debug, thiserror::Error)]
pub enum CompileError {
    #[error("{0}")]
    Lower(#[from] LowerError),
    #[error("{0}")]
    Jit(#[from] JitError),
    /// The step's buffers (its memory plan) cannot be allocated.
    #[error("the compiled step needs {bytes} bytes of buffers, which cannot be allocated (free memory, or a smaller batch, would help)")]
    Arena { bytes: usize },
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

/// The address of every slot: the status word, arena offsets from `arena`,
/// and null for feeds and outputs (the caller's, set per run by
/// [`point_at_callers`]).
///
/// # Safety
/// Every arena slot's offset + size must lie within the buffer at `arena`.
pub(crate) unsafe fn slot_table(slots: &[lower::Slot], status: &mut i64, arena: *mut u8) -> Vec<*mut u8> {
    slots
        .iter()
        .map(|slot| match slot.place {
            Place::Status => status as *mut i64 as *mut u8,
            // SAFETY: in bounds by the caller's promise.
            Place::Arena(offset) => unsafe { arena.add(offset) },
            Place::Feed(_) | Place::Output(_) => std::ptr::null_mut(),
        })
        .collect()
}

/// Points the feed and output slots of `table` at the caller's buffers.
pub(crate) fn point_at_callers(table: &mut [*mut u8], slots: &[lower::Slot], feeds: &[*const u8], outputs: &[*mut u8]) {
    for (entry, slot) in table.iter_mut().zip(slots) {
        match slot.place {
            Place::Feed(f) => *entry = feeds[f] as *mut u8,
            Place::Output(o) => *entry = outputs[o],
            _ => {}
        }
    }
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
    /// Per conv2d step, its GEMM operand tables.
    convs: Vec<Option<ConvTables>>,
    /// Per thread: a channel-outer convolution's partial output (cell 0
    /// also holds a batched convolution's `[O, N·P]` product).
    conv_acc: Vec<UnsafeCell<Vec<f32>>>,
    /// A convolution's zero-padded input, for the paths that do not pad as
    /// they read (one convolution runs at a time), and per conv step that
    /// pads its input this way, the copy's (row-major) map.
    padded: UnsafeCell<Vec<Line>>,
    padded_maps: Vec<Option<Affine>>,
    /// `StdRng`'s generator, named so that uniform draws can be split
    /// over threads by word position (`routines::rand`).
    rng: ChaCha12Rng,
    pool: &'static Pool,
    /// Node descriptions for errors, by node index.
    names: Vec<String>,
    pub times: CompileTimes,
    /// Seconds spent in each step, summed over runs, when profiling.
    profile: Option<Vec<f64>>,
    /// Seconds spent in each loop kernel (epilogues apart from their GEMM).
    loop_times: Vec<std::cell::Cell<f64>>,
    /// B operands that several products read (a recurrent weight at every
    /// step), packed once per run; per matmul step, which one it reads and
    /// whether it is the first reader (which packs it).
    packed: Vec<UnsafeCell<gemm::PackedB>>,
    packed_of: Vec<Option<(usize, bool)>>,
    /// Per loop kernel: its machine code (shared by kernels equal up to
    /// where their data is), the (slot, element offset, element size) of
    /// each place it reads or writes in the order the code numbers them, and
    /// the table of their addresses it is called with (filled before each
    /// call).
    kernel_code: Vec<usize>,
    /// Per function of `code`, the kernel as a wide one, run instead of the
    /// function by `run_loop` (same values; 8 or 16 lanes instead of 4).
    wide: Vec<Option<WideKernel>>,
    kernel_slots: Vec<Vec<(usize, i64, usize)>>,
    kernel_tables: Vec<UnsafeCell<Vec<*mut u8>>>,
    /// Per function of `code`, when loop kernels run through the GPU grid
    /// interpreter instead: the kernel (canonical) and its GPU schedule.
    grid: Option<Vec<(LoopKernel, GpuSchedule)>>,
}

/// What runs a program's loop kernels.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Loops {
    /// Cranelift's machine code (or the wide loops), split over threads.
    #[default]
    Jit,
    /// `d2l_kernels::grid`: each kernel executed as its GPU schedule maps
    /// it, thread by thread, and everything else (GEMM, convolutions,
    /// routines) the JIT's: the GPU mapping of the fused loops tested on
    /// graphs too big for the whole GPU plan on the interpreter
    /// (`GridBackend`).
    Grid,
}

// SAFETY: the raw pointers in `table` point into buffers this program owns
// or that the caller lends for the duration of `run`.
unsafe impl Send for Program {}

/// The packed B operands, and per step which one it reads and whether it packs it.
type SharedB = (Vec<UnsafeCell<gemm::PackedB>>, Vec<Option<(usize, bool)>>);

/// The f32 products whose B operand (the same buffer, read through the
/// same view) another product reads too, grouped: one packed B per group,
/// packed by its first step. A buffer keeps its value from its first reader
/// to its last (the memory plan reuses it only after), so the packed copy
/// stays right for the whole group.
fn shared_b_operands(plan: &Plan) -> SharedB {
    type Key = (usize, i64, i64, i64, usize, usize);
    let key = |step: &Step| -> Option<Key> {
        let Step::MatMul { dtype: DType::F32, batch, m, n, k, b, .. } = step else { return None };
        // Batched products move B between batches; tiny ones are not packed.
        (batch.is_empty() && m * n * k > gemm::SMALL).then(|| (b.slot, b.map.offset, b.map.strides[0], b.map.strides[1], *k, *n))
    };
    let mut readers: HashMap<Key, usize> = HashMap::new();
    for step in &plan.steps {
        if let Some(k) = key(step) {
            *readers.entry(k).or_default() += 1;
        }
    }
    let mut index: HashMap<Key, usize> = HashMap::new();
    let mut packed = Vec::new();
    let packed_of = plan
        .steps
        .iter()
        .map(|step| {
            let k = key(step).filter(|k| readers[k] > 1)?;
            let first = !index.contains_key(&k);
            let i = *index.entry(k).or_insert_with(|| {
                packed.push(UnsafeCell::new(gemm::PackedB::new(k.4, k.5)));
                packed.len() - 1
            });
            Some((i, first))
        })
        .collect();
    (packed, packed_of)
}

/// The buffer table, readable from parallel parts of a routine.
struct Slots<'a>(&'a [*mut u8], &'a [lower::Slot]);
// SAFETY: read-only during a step; the buffers' parallel users write disjoint parts.
unsafe impl Sync for Slots<'_> {}

impl Slots<'_> {
    fn buf(&self, slot: usize) -> Buf {
        Buf { ptr: self.0[slot], dtype: self.1[slot].dtype }
    }
}

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
        Program::compile_with(graph, seed, Loops::Jit)
    }

    /// [`Program::compile`], with loop kernels run by `loops`.
    pub fn compile_with(graph: &Graph, seed: u64, loops: Loops) -> Result<Program, CompileError> {
        let t0 = Instant::now();
        let fusion = fusion::fuse(graph);
        let t1 = Instant::now();
        let plan = lower::plan(graph, &fusion)?;
        let t2 = Instant::now();
        // One function per distinct kernel: the steps of an unrolled loop
        // repeat the same kernels on other buffers.
        let mut jit = Jit::new()?;
        let mut functions: HashMap<String, usize> = HashMap::new();
        // Per function, the same kernel run wide, when it is one (see `wide`).
        let mut wide = Vec::new();
        let mut grid = Vec::new();
        let (mut kernel_code, mut kernel_slots) = (Vec::new(), Vec::new());
        for k in &plan.kernels {
            let (canonical, slots) = k.canonical();
            let key = format!("{canonical:?}");
            let f = match functions.get(&key) {
                Some(&f) => f,
                None => {
                    wide.push(WideKernel::new(&canonical));
                    if loops == Loops::Grid {
                        grid.push((canonical.clone(), GpuSchedule::of(&canonical)));
                    }
                    let f = jit.add(&d2l_kernels::kernel::LoopKernel { name: k.name.clone(), ..canonical })?;
                    functions.insert(key, f);
                    f
                }
            };
            kernel_code.push(f);
            kernel_slots.push(slots);
        }
        let code = jit.finish()?;
        let kernel_tables = kernel_slots.iter().map(|s: &Vec<(usize, i64, usize)>| UnsafeCell::new(vec![std::ptr::null_mut(); s.len()])).collect();
        let t3 = Instant::now();
        let ms = |a: Instant, b: Instant| (b - a).as_secs_f64() * 1e3;
        let times = CompileTimes { fusion_ms: ms(t0, t1), plan_ms: ms(t1, t2), codegen_ms: ms(t2, t3) };
        let pool = pool();
        let threads = pool.threads();
        // Refused, not aborted on, when the memory plan is too big to allocate.
        let lines = plan.memory.size.div_ceil(64);
        let mut arena: Vec<Line> = Vec::new();
        arena.try_reserve_exact(lines).map_err(|_| CompileError::Arena { bytes: plan.memory.size })?;
        arena.resize(lines, Line([0; 64]));
        let mut status = Box::new(0i64);
        // SAFETY: the memory plan keeps every offset + size within the arena.
        let table = unsafe { slot_table(&plan.slots, &mut status, arena.as_mut_ptr() as *mut u8) };
        let (mut max_n, mut acc, mut pad_bytes) = (0usize, 0usize, 0usize);
        let mut convs = Vec::with_capacity(plan.steps.len());
        let mut padded_maps = vec![None; plan.steps.len()];
        for (index, step) in plan.steps.iter().enumerate() {
            let mut conv = None;
            match step {
                Step::MatMul { n, .. } => max_n = max_n.max(*n),
                Step::Conv2d { dtype, x, x_dims, pad, w, w_dims, stride, .. } => {
                    let padded = padded_dims(*x_dims, *pad);
                    let (pixels, _) = conv_sizes(&padded, w_dims, *stride);
                    let ho = (padded[2] - w_dims[2]) / stride[0] + 1;
                    let wo = pixels / ho.max(1);
                    // The weight-gradient shape (kernel bigger than the output) always uses GEMM.
                    let direct = *dtype == DType::F32 && w_dims[2] * w_dims[3] <= ho * wo && conv::direct_applies(&x.map, *w_dims, *stride);
                    // Other paths read a padded copy of the input.
                    let materialize = *pad != [0; 4] && !direct;
                    if materialize {
                        pad_bytes = pad_bytes.max(padded.iter().product::<usize>() * dtype.size_bytes());
                        padded_maps[index] = Some(Affine::contiguous(&padded));
                    }
                    if *dtype != DType::F32 {
                        convs.push(None);
                        continue;
                    }
                    let map = if materialize { Affine::contiguous(&padded) } else { x.map.clone() };
                    let batched = !direct && ho * wo < BATCHED_PIXELS && padded[0] > 1 && w_dims[2] * w_dims[3] <= ho * wo;
                    let mut t = ConvTables::new(&map, padded, &w.map, *w_dims, (ho, wo), *stride, batched);
                    t.materialize = materialize;
                    t.direct = direct;
                    t.wgrad = t.channel_outer && conv::wgrad_applies(&map, &w.map, padded, *w_dims, *stride);
                    t.x_dims = *x_dims;
                    t.pad = *pad;
                    max_n = max_n.max(t.gemm_n());
                    if t.wgrad {
                        acc = acc.max(t.o * t.n * t.pixels + conv::wgrad_scratch(padded[0], w_dims[0], (ho, wo)));
                    } else if t.channel_outer || t.batched {
                        acc = acc.max(t.o * t.n * t.pixels);
                    }
                    conv = Some(t);
                }
                _ => {}
            }
            convs.push(conv);
        }
        let names = graph.ids().map(|id| lower::describe(graph, id)).collect();
        let (packed, packed_of) = shared_b_operands(&plan);
        Ok(Program {
            packed,
            packed_of,
            kernel_code,
            wide,
            kernel_slots,
            kernel_tables,
            grid: (loops == Loops::Grid).then_some(grid),
            gemm: Scratches::new(threads, max_n.max(1)),
            convs,
            conv_acc: (0..threads).map(|_| UnsafeCell::new(vec![0.0; acc])).collect(),
            padded: UnsafeCell::new(vec![Line([0; 64]); pad_bytes.div_ceil(64)]),
            padded_maps,
            plan,
            code,
            table,
            _arena: arena,
            status,
            rng: ChaCha12Rng::seed_from_u64(seed),
            pool,
            names,
            times,
            profile: None,
            loop_times: Vec::new(),
        })
    }

    /// Starts (or restarts) timing every step of every run.
    pub fn start_profile(&mut self) {
        self.profile = Some(vec![0.0; self.plan.steps.len()]);
        self.loop_times = (0..self.plan.kernels.len()).map(|_| std::cell::Cell::new(0.0)).collect();
    }

    /// Per step: what it is and the seconds spent in it, slowest first.
    pub fn profile(&self) -> Vec<(String, f64)> {
        let Some(p) = &self.profile else { return Vec::new() };
        let mut rows: Vec<(String, f64)> = Vec::new();
        for (step, &t) in self.plan.steps.iter().zip(p) {
            let epilogue = match step {
                Step::MatMul { epilogue, .. } | Step::Conv2d { epilogue, .. } => *epilogue,
                _ => None,
            };
            let loop_time = epilogue.map_or(0.0, |e| self.loop_times[e].get());
            rows.push((self.step_name(step), t - loop_time));
            if let Some(e) = epilogue {
                rows.push((format!("  its epilogue k{e} {:?}", self.plan.kernels[e].extents), loop_time));
            }
        }
        rows.sort_by(|a, b| b.1.total_cmp(&a.1));
        rows
    }

    fn step_name(&self, step: &Step) -> String {
        match step {
            Step::Loop { kernel } => {
                let wide = if self.wide[self.kernel_code[*kernel]].is_some() { "wide " } else { "" };
                format!("{wide}loop k{} {:?} over {}", kernel, self.plan.kernels[*kernel].extents, self.names[self.plan.kernel_nodes[*kernel].index()])
            }
            Step::MatMul { node, m, n, k, batch, .. } => format!("matmul {batch:?}{m}x{k}x{n} {}", self.names[node.index()]),
            Step::Conv2d { node, x_dims, w_dims, .. } => format!("conv2d {x_dims:?}*{w_dims:?} {}", self.names[node.index()]),
            Step::Routine { node, .. } => format!("routine {}", self.names[node.index()]),
        }
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
        point_at_callers(&mut self.table, &self.plan.slots, feeds, outputs);
        *self.status = 0;
        // The pool's workers flush denormals for good; this thread while it runs kernels.
        let _flush = crate::denormals::FlushDenormals::new();
        for s in 0..self.plan.steps.len() {
            let started = self.profile.is_some().then(Instant::now);
            // SAFETY: the plan's slots describe the buffers `table` points to.
            unsafe { self.step(s)? };
            if let (Some(p), Some(t)) = (self.profile.as_mut(), started) {
                p[s] += t.elapsed().as_secs_f64();
            }
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

    /// Loop kernel `k`'s code and the table to call it with (as an
    /// address, to share with parallel parts), filled from the current
    /// buffer table.
    fn kernel_entry(&self, k: usize) -> (KernelFn, usize) {
        // SAFETY: kernels run one at a time; their parallel parts only read the table.
        let table = unsafe { &mut *self.kernel_tables[k].get() };
        for (entry, &(slot, offset, size)) in table.iter_mut().zip(&self.kernel_slots[k]) {
            *entry = self.table[slot].wrapping_offset(offset as isize * size as isize);
        }
        (self.code.functions[self.kernel_code[k]], table.as_ptr() as usize)
    }

    /// Runs loop kernel `k` over its whole range, split over threads when big.
    unsafe fn run_loop(&self, k: usize) -> Result<(), ExecError> {
        let started = self.profile.is_some().then(Instant::now);
        let result = unsafe { self.run_loop_untimed(k) };
        if let Some(t) = started {
            self.loop_times[k].set(self.loop_times[k].get() + t.elapsed().as_secs_f64());
        }
        result
    }

    unsafe fn run_loop_untimed(&self, k: usize) -> Result<(), ExecError> {
        let kernel = &self.plan.kernels[k];
        let (f, table) = self.kernel_entry(k);
        if let Some(grid) = &self.grid {
            let (canonical, schedule) = &grid[self.kernel_code[k]];
            // SAFETY: the table holds the address of every place the
            // canonical kernel numbers, as for its machine code.
            unsafe {
                let table = std::slice::from_raw_parts(table as *const *mut u8, self.kernel_slots[k].len());
                d2l_kernels::grid::run(canonical, schedule, table);
            }
            return self.check_status(k);
        }
        let extent = kernel.extents[0];
        // Heavy bodies (an LSTM cell's five sigmoids and tanhs) split at
        // fewer elements than light ones, and at twice the weight their cost
        // gives them: a light loop is mostly memory traffic, which a second
        // core shares, a heavy one arithmetic, which it halves (seq2seq's
        // [64, 32] GRU cells, 11 µs each on one core: its step 2.74 ms
        // unsplit, 2.38 split; median of 5 runs each, alternating).
        let cost = kernel.body_cost();
        let weight = if cost >= HEAVY_BODY { cost / 4 } else { cost.max(8) / 8 };
        let work = kernel.numel().saturating_mul(weight);
        let parts = if kernel.splittable() && work >= PARALLEL_LOOP { self.pool.threads().min(extent) } else { 1 };
        let wide = self.wide[self.kernel_code[k]].as_ref();
        // SAFETY: the kernel reads and writes its slots only, which the table holds.
        let run = |lo: usize, hi: usize| unsafe {
            match wide {
                Some(w) => w.run(table as *const *mut u8, lo, hi),
                None => f(table as *const *mut u8, lo as i64, hi as i64),
            }
        };
        if parts <= 1 {
            run(0, extent);
        } else {
            let chunk = extent.div_ceil(parts);
            // Parts cover disjoint ranges of loop 0, which no store reduces over.
            self.pool.run(parts, &|p, _| run((p * chunk).min(extent), ((p + 1) * chunk).min(extent)));
        }
        self.check_status(k)
    }

    /// Runs `f` over ranges of `dims[0]`, split over the threads when the
    /// work (`numel` elements) is big enough. Callers split only routines
    /// whose output slices along dim 0 are disjoint.
    fn split(&self, dims: &[usize], numel: usize, f: impl Fn(std::ops::Range<usize>) + Sync) {
        let n = dims.first().copied().unwrap_or(1);
        let parts = if numel >= PARALLEL_LOOP { self.pool.threads().min(n).max(1) } else { 1 };
        if parts <= 1 {
            f(0..n);
            return;
        }
        let chunk = n.div_ceil(parts);
        self.pool.run(parts, &|p, _| f((p * chunk).min(n)..((p + 1) * chunk).min(n)));
    }

    /// The error loop kernel `k` reported, if any.
    fn check_status(&self, k: usize) -> Result<(), ExecError> {
        if *self.status != 0 {
            return Err(ExecError::DivisionByZero { node: self.names[self.plan.kernel_nodes[k].index()].clone() });
        }
        Ok(())
    }

    /// How to run loop kernel `e` one image at a time (its loop 0 covers
    /// the images, `r` iterations each), if it can be.
    fn per_image(&self, e: Option<usize>, images: usize) -> Option<(KernelFn, usize, usize)> {
        let e = e?;
        // The grid interpreter runs whole kernels only.
        if self.grid.is_some() {
            return None;
        }
        let k = &self.plan.kernels[e];
        let extent = k.extents[0];
        (k.splittable() && !k.hoisted && images > 0 && extent.is_multiple_of(images)).then(|| {
            let (f, table) = self.kernel_entry(e);
            (f, table, extent / images)
        })
    }

    unsafe fn step(&mut self, s: usize) -> Result<(), ExecError> {
        if let Step::Routine { routine: Routine::Rand { dist }, out, .. } = &self.plan.steps[s] {
            let dst = Buf { ptr: self.table[*out], dtype: self.plan.slots[*out].dtype };
            let n = self.plan.slots[*out].numel;
            // SAFETY: the output slot holds `n` elements of its dtype.
            unsafe { routines::rand(&mut self.rng, *dist, dst, n, self.pool) };
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
                // Batch offsets of both operands (row-major digits of bi).
                let offsets = |bi: usize| {
                    let (mut oa, mut ob, mut rest) = (a.map.offset, b.map.offset, bi);
                    for d in (0..r).rev() {
                        let digit = (rest % batch[d]) as i64;
                        rest /= batch[d];
                        oa += digit * a.map.strides[d];
                        ob += digit * b.map.strides[d];
                    }
                    (oa as isize, ob as isize)
                };
                if count > 1 && *dtype == DType::F32 && (m * n * k < gemm::PER_THREAD || count >= 4 * self.pool.threads()) {
                    // Many products (attention's, one per example and head;
                    // BERT's 1,024 of 64 x 64 x 64): the batch is split over
                    // the threads, each product on one thread; splitting each
                    // would cost a hand-off per product. (Big products only
                    // when there are enough of them to share out evenly.) (A B packed once for several
                    // steps is never batched: `shared_b_operands`.)
                    let (pa, pb, out_ptr) = (pa as usize, pb as usize, out_ptr as usize);
                    let (scratches, parts) = (&self.gemm, self.pool.threads().min(count));
                    let chunk = count.div_ceil(parts);
                    self.pool.run(count.div_ceil(chunk), &|part, worker| {
                        for bi in part * chunk..(count.min((part + 1) * chunk)) {
                            let (oa, ob) = offsets(bi);
                            // SAFETY: offsets stay inside the operands (fusion's
                            // maps); each product writes its own slice of C; a
                            // worker runs one part at a time, with its own scratch.
                            unsafe {
                                let am = MatRef::strided((pa as *const f32).offset(oa), ars, acs);
                                let bm = MatRef::strided((pb as *const f32).offset(ob), brs, bcs);
                                let cm = MatMut { ptr: (out_ptr as *mut f32).add(bi * m * n), rs: n as isize };
                                gemm::sgemm(m, n, k, am, bm, cm, false, scratches.get(worker));
                            }
                        }
                    });
                } else {
                    for bi in 0..count {
                        let (oa, ob) = offsets(bi);
                        // SAFETY: offsets stay inside the operands (fusion's maps).
                        unsafe {
                            let c = out_ptr.offset((bi * m * n) as isize * size);
                            match dtype {
                                DType::F64 => routines::dgemm_naive(m, n, k, (pa as *const f64).offset(oa), (ars, acs), (pb as *const f64).offset(ob), (brs, bcs), c as *mut f64, false),
                                _ => {
                                    let am = MatRef::strided((pa as *const f32).offset(oa), ars, acs);
                                    let bm = MatRef::strided((pb as *const f32).offset(ob), brs, bcs);
                                    let cm = MatMut { ptr: c as *mut f32, rs: n as isize };
                                    match self.packed_of[s] {
                                        Some((i, first)) => {
                                            // SAFETY: steps run one at a time; the first reader of
                                            // a shared B packs it before any reader multiplies.
                                            let packed = &mut *self.packed[i].get();
                                            if first {
                                                packed.pack(bm, self.pool);
                                            }
                                            gemm::sgemm_packed_parallel(m, am, packed, cm, false, &self.gemm, self.pool);
                                        }
                                        None => gemm::sgemm_parallel(m, n, k, am, bm, cm, false, &self.gemm, self.pool),
                                    }
                                }
                            }
                        }
                    }
                }
                match epilogue {
                    Some(e) => unsafe { self.run_loop(*e) },
                    None => Ok(()),
                }
            }
            Step::Conv2d { dtype, x, x_dims, pad, w, w_dims, stride, out, epilogue, .. } => {
                let mut fused = false;
                let direct = self.convs[s].as_ref().is_some_and(|t| t.direct);
                // The padded input the non-direct paths read.
                let (xp, xmap, xdims) = match &self.padded_maps[s] {
                    Some(map) if !direct => {
                        // SAFETY: sized at compile time for the largest padded input.
                        let buf = unsafe { (*self.padded.get()).as_mut_ptr() as *mut u8 };
                        unsafe { pad_input(Buf { ptr: self.table[x.slot], dtype: *dtype }, &x.map, *x_dims, *pad, buf) };
                        (buf, map, padded_dims(*x_dims, *pad))
                    }
                    _ => (self.table[x.slot], &x.map, *x_dims),
                };
                unsafe {
                    if *dtype == DType::F64 {
                        conv2d_f64(xp as *const f64, xmap, xdims, self.table[w.slot] as *const f64, &w.map, *w_dims, *stride, self.table[*out] as *mut f64);
                    } else {
                        fused = self.conv2d_f32(s, xp as *const f32, xmap, w, *out, *epilogue);
                    }
                }
                match epilogue {
                    Some(e) if !fused => unsafe { self.run_loop(*e) },
                    Some(e) => self.check_status(*e),
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
                            let (src, value, out_numel) = (buf(*src), *value, *out_numel);
                            self.split(dims, out_numel, |images| routines::pad(src, dims, write, Some(value), false, dst, out_numel, images));
                            Ok(())
                        }
                        Routine::Concat { parts, outer, stride } => {
                            let outer = *outer;
                            let slots = Slots(&self.table, &self.plan.slots);
                            let numel = outer * stride / dst.dtype.size_bytes();
                            // Operands `range` (all rows of each, or `rows` of each).
                            let copy = |range: std::ops::Range<usize>, rows: std::ops::Range<usize>| {
                                for &(slot, row, at) in &parts[range] {
                                    routines::concat_part(slots.buf(slot), rows.clone(), row, dst, at, *stride);
                                }
                            };
                            if outer >= self.pool.threads() {
                                // By output rows, every operand's share of each
                                // (where a loop split by rows left them).
                                self.split(&[outer], numel, |rows| copy(0..parts.len(), rows));
                            } else {
                                // By operands: one row (often the whole operand) each.
                                self.split(&[parts.len()], numel, |range| copy(range, 0..outer));
                            }
                            Ok(())
                        }
                        Routine::Gather { x, split, idx, m } => {
                            let (x, idx, split, m) = (buf(*x), buf(*idx), *split, *m);
                            routines::check_indices(idx, m, split.1).map(|()| {
                                self.split(&[m], split.0 * m * split.2, |rows| routines::gather(x, split, idx, m, dst, rows));
                            })
                        }
                        Routine::ScatterAdd { idx, m, updates, split } => {
                            let (idx, updates, split, m) = (buf(*idx), buf(*updates), *split, *m);
                            // Split by columns: every thread adds the rows in order.
                            routines::check_indices(idx, m, split.1).map(|()| {
                                self.split(&[split.2], split.0 * m * split.2, |cols| routines::scatter_add(idx, m, updates, split, dst, cols));
                            })
                        }
                        Routine::Pool2d { kind, x, dims, window, stride } => {
                            let (kind, x, dims, window, stride) = (*kind, buf(*x), *dims, *window, *stride);
                            let planes = [dims[0] * dims[1]];
                            self.split(&planes, dims.iter().product(), |range| routines::pool2d(kind, x, dims, window, stride, dst, range));
                            Ok(())
                        }
                        Routine::ArgMax { x, split } => {
                            routines::argmax(buf(*x), *split, dst);
                            Ok(())
                        }
                        Routine::Rand { .. } => Ok(()),
                        Routine::PadSum { parts, out_numel } => {
                            let out_numel = *out_numel;
                            let Some((_, dims0, _)) = parts.first() else { return Ok(()) };
                            let slots = Slots(&self.table, &self.plan.slots);
                            self.split(dims0, out_numel, |images| {
                                for (i, (src, dims, write)) in parts.iter().enumerate() {
                                    let value = (i == 0).then_some(0.0);
                                    routines::pad(slots.buf(*src), dims, write, value, true, dst, out_numel, images.clone());
                                }
                            });
                            Ok(())
                        }
                    }
                };
                result.map_err(|(index, size)| ExecError::IndexOutOfRange { node: self.names[node.index()].clone(), index, size })
            }
        }
    }

    /// f32 convolution as implicit GEMM (see [`ConvTables`]): the GEMM
    /// packs patches straight from the input through offset tables, so no
    /// im2col buffer is written.
    ///
    /// Returns whether it also ran `epilogue`, image by image while each
    /// image's output is in cache.
    unsafe fn conv2d_f32(&self, s: usize, x: *const f32, xmap: &Affine, w: &lower::Operand, out: usize, epilogue: Option<usize>) -> bool {
        let Some(t) = &self.convs[s] else { return false };
        let per_image = if t.channel_outer { None } else { self.per_image(epilogue, t.n) };
        let finish = |img: usize| {
            if let Some((f, table, r)) = per_image {
                // SAFETY: disjoint ranges of a splittable kernel's loop 0.
                unsafe { f(table as *const *mut u8, (img * r) as i64, ((img + 1) * r) as i64) };
            }
        };
        let xp = unsafe { x.offset(xmap.offset as isize) };
        let wp = unsafe { (self.table[w.slot] as *const f32).offset(w.map.offset as isize) };
        let outp = self.table[out] as *mut f32;
        let (o, n_out, c, p) = (t.o, t.n, t.c, t.pixels);
        let threads = self.pool.threads();
        let gemm = &self.gemm;
        let pool = self.pool;
        let (xp, wp, outp) = (xp as usize, wp as usize, outp as usize);
        if t.direct {
            let (xm, wm, pad) = (xmap, &w.map, t.pad);
            let (x_dims, w_dims) = (t.x_dims, t.w_dims);
            // Small parts, claimed dynamically: balanced even on a busy machine.
            let parts = (4 * threads).min(n_out).max(1);
            let chunk = n_out.div_ceil(parts);
            pool.run(parts, &|part, _| {
                for img in part * chunk..((part + 1) * chunk).min(n_out) {
                    // SAFETY: `direct` was chosen because it applies; parts write disjoint images.
                    unsafe { conv::direct_f32(xp as *const f32, xm, x_dims, pad, wp as *const f32, wm, w_dims, outp as *mut f32, img..img + 1) };
                    finish(img);
                }
            });
            return per_image.is_some();
        }
        if t.batched {
            // prod [O, N·P] = W [O, C·kh·kw] · patches(x) [C·kh·kw, N·P]
            let a = MatRef { ptr: wp as *const f32, rs: t.w_o, cs: 0, rows: None, cols: Some(&t.a_cols) };
            let b = MatRef { ptr: xp as *const f32, rs: 0, cs: 0, rows: Some(&t.b_rows), cols: Some(&t.b_cols) };
            let np = n_out * p;
            // SAFETY: cell 0 is sized for this product at compile time; no other user during the step.
            let prod = unsafe { (*self.conv_acc[0].get()).as_mut_ptr() };
            unsafe { gemm::sgemm_parallel(o, np, t.a_cols.len(), a, b, MatMut { ptr: prod, rs: np as isize }, false, gemm, pool) };
            // out[n, o, :] = prod[o, n·P..(n+1)·P]
            let prod = prod as usize;
            let parts = if o * np >= PARALLEL_LOOP { threads.min(n_out) } else { 1 };
            let chunk = n_out.div_ceil(parts);
            pool.run(parts, &|part, _| {
                for img in part * chunk..((part + 1) * chunk).min(n_out) {
                    for oc in 0..o {
                        // SAFETY: parts write disjoint images of the output.
                        unsafe { std::ptr::copy_nonoverlapping((prod as *const f32).add(oc * np + img * p), (outp as *mut f32).add((img * o + oc) * p), p) };
                    }
                }
            });
            return false;
        }
        if !t.channel_outer {
            // out[n] [O, P] = W [O, C·kh·kw] · patches(x[n]) [C·kh·kw, P]
            let k = t.a_cols.len();
            let image = |img: usize, worker: usize, parallel_gemm: bool| {
                let a = MatRef { ptr: wp as *const f32, rs: t.w_o, cs: 0, rows: None, cols: Some(&t.a_cols) };
                let b = MatRef { ptr: unsafe { (xp as *const f32).offset(img as isize * t.x_n) }, rs: 0, cs: 0, rows: Some(&t.b_rows), cols: Some(&t.b_cols) };
                let cm = MatMut { ptr: unsafe { (outp as *mut f32).add(img * o * p) }, rs: p as isize };
                unsafe {
                    if parallel_gemm {
                        gemm::sgemm_parallel(o, p, k, a, b, cm, false, gemm, pool);
                    } else {
                        gemm::sgemm(o, p, k, a, b, cm, false, gemm.get(worker));
                    }
                }
                finish(img);
            };
            if n_out >= threads && threads > 1 {
                let parts = (4 * threads).min(n_out);
                let chunk = n_out.div_ceil(parts);
                pool.run(parts, &|part, worker| {
                    for img in part * chunk..((part + 1) * chunk).min(n_out) {
                        image(img, worker, false);
                    }
                });
            } else {
                for img in 0..n_out {
                    image(img, 0, true);
                }
            }
            return per_image.is_some();
        }
        if t.wgrad {
            // Few channels: the direct weight-gradient kernel, the input
            // channels (the forward batch) split over the threads, each
            // part into its own [N, O, P] sum.
            let (xm, wm, x_dims, w_dims) = (xmap, &w.map, padded_dims(t.x_dims, t.pad), t.w_dims);
            let parts = threads.min(c).max(1);
            let chunk = c.div_ceil(parts);
            let size = n_out * o * p;
            let accs = SyncCell(&self.conv_acc);
            pool.run(parts, &|part, _| {
                // SAFETY: part `part` owns accumulator `part`.
                let (sum, scratch) = unsafe { accs.get(part) }.split_at_mut(size);
                let images = (part * chunk).min(c)..((part + 1) * chunk).min(c);
                // SAFETY: `wgrad` was chosen because it applies.
                unsafe { conv::wgrad_f32(xp as *const f32, xm, x_dims, wp as *const f32, wm, w_dims, sum, scratch, images) };
            });
            let out = unsafe { std::slice::from_raw_parts_mut(outp as *mut f32, size) };
            out.copy_from_slice(unsafe { &accs.get(0)[..size] });
            for part in 1..parts {
                for (sum, a) in out.iter_mut().zip(unsafe { &accs.get(part)[..size] }) {
                    *sum += a;
                }
            }
            return false;
        }
        // Weight-gradient shape (kernel bigger than the output): reduce over
        // the input channels outermost, each thread into its own [O, N·P]
        // accumulator: acc += W[:, c] [O, kh·kw] · patches(x[:, c]) [kh·kw, N·P].
        let k = t.a_cols.len();
        let np = n_out * p;
        let parts = threads.min(c).max(1);
        let chunk = c.div_ceil(parts);
        let accs = SyncCell(&self.conv_acc);
        pool.run(parts, &|part, worker| {
            // SAFETY: part `part` owns accumulator `part`; worker `worker` its GEMM scratch.
            let acc = unsafe { accs.get(part) };
            let acc = &mut acc[..o * np];
            let (first, last) = (part * chunk, ((part + 1) * chunk).min(c));
            if first >= last {
                acc.fill(0.0);
            }
            for ch in first..last {
                let a = MatRef { ptr: unsafe { (wp as *const f32).offset(ch as isize * t.w_c) }, rs: t.w_o, cs: 0, rows: None, cols: Some(&t.a_cols) };
                let b = MatRef { ptr: unsafe { (xp as *const f32).offset(ch as isize * t.x_c) }, rs: 0, cs: 0, rows: Some(&t.b_rows), cols: Some(&t.b_cols) };
                let cm = MatMut { ptr: acc.as_mut_ptr(), rs: np as isize };
                unsafe { gemm::sgemm(o, np, k, a, b, cm, ch > first, gemm.get(worker)) };
            }
        });
        // out[n, o, p] = Σ_parts acc[o, n·P + p]
        let out = outp as *mut f32;
        for oc in 0..o {
            for img in 0..n_out {
                for px in 0..p {
                    let mut sum = 0.0f32;
                    for part in 0..parts {
                        // SAFETY: the parallel job is over; read-only now.
                        sum += unsafe { accs.get(part)[oc * np + img * p + px] };
                    }
                    unsafe { *out.add((img * o + oc) * p + px) = sum };
                }
            }
        }
        false
    }
}

/// A convolution as GEMM operands, prepared at compile time. Image-outer
/// (the forward and input-gradient shape): per image, `W [O, C·kh·kw]`
/// times the image's patches. Channel-outer (the weight-gradient shape,
/// where the "kernel" is the big forward output): per input channel,
/// `W[:, c] [O, kh·kw]` times the channel's patches across all images.
/// Offsets are in elements, relative to the operand's (image or channel) base.
struct ConvTables {
    /// Small channels, stride 1: the direct kernel (no GEMM), which applies
    /// `pad` as it reads; `x_dims` are then the unpadded input's.
    direct: bool,
    /// Weight-gradient shape with few channels: the direct kernel
    /// ([`conv::wgrad_f32`]) over the padded copy, no GEMM.
    wgrad: bool,
    /// Image-outer with few output pixels: one GEMM over all images,
    /// `[O, N·P]` into scratch, then transposed into `[N, O, P]`.
    batched: bool,
    pad: [usize; 4],
    /// The input is padded into a copy first (the tables describe the copy).
    materialize: bool,
    x_dims: [usize; 4],
    w_dims: [usize; 4],
    channel_outer: bool,
    o: usize,
    n: usize,
    c: usize,
    pixels: usize,
    /// Strides of x along n and c, and of w along o and c.
    x_n: isize,
    x_c: isize,
    w_o: isize,
    w_c: isize,
    /// Column offsets of the weight matrix A (its reduction index).
    a_cols: Vec<isize>,
    /// Patch matrix B: rows are the reduction index, columns the outputs.
    b_rows: Vec<isize>,
    b_cols: Vec<isize>,
}

impl ConvTables {
    fn new(x: &Affine, [n, c, h, wd]: [usize; 4], w: &Affine, [o, _, kh, kw]: [usize; 4], (ho, wo): (usize, usize), [sy, sx]: [usize; 2], batched: bool) -> ConvTables {
        let (xs, ws) = (&x.strides, &w.strides);
        let pixel = |y: usize, x: usize| (y * sy) as isize * xs[2] as isize + (x * sx) as isize * xs[3] as isize;
        let tap = |i: usize, j: usize| i as isize * xs[2] as isize + j as isize * xs[3] as isize;
        let wtap = |i: usize, j: usize| i as isize * ws[2] as isize + j as isize * ws[3] as isize;
        let channel_outer = kh * kw > ho * wo;
        let mut t = ConvTables {
            direct: false,
            wgrad: false,
            batched,
            pad: [0; 4],
            materialize: false,
            x_dims: [n, c, h, wd],
            w_dims: [o, c, kh, kw],
            channel_outer,
            o,
            n,
            c,
            pixels: ho * wo,
            x_n: xs[0] as isize,
            x_c: xs[1] as isize,
            w_o: ws[0] as isize,
            w_c: ws[1] as isize,
            a_cols: Vec::new(),
            b_rows: Vec::new(),
            b_cols: Vec::new(),
        };
        if channel_outer {
            for i in 0..kh {
                for j in 0..kw {
                    t.a_cols.push(wtap(i, j));
                    t.b_rows.push(tap(i, j));
                }
            }
            for img in 0..n {
                for y in 0..ho {
                    for x in 0..wo {
                        t.b_cols.push(img as isize * t.x_n + pixel(y, x));
                    }
                }
            }
        } else {
            for ch in 0..c {
                for i in 0..kh {
                    for j in 0..kw {
                        t.a_cols.push(ch as isize * t.w_c + wtap(i, j));
                        t.b_rows.push(ch as isize * t.x_c + tap(i, j));
                    }
                }
            }
            // Batched: the columns run over every image's pixels.
            for img in 0..if batched { n } else { 1 } {
                for y in 0..ho {
                    for x in 0..wo {
                        t.b_cols.push(img as isize * t.x_n + pixel(y, x));
                    }
                }
            }
        }
        t
    }

    /// Columns of the GEMM's output (what GEMM scratch must hold).
    fn gemm_n(&self) -> usize {
        if self.channel_outer || self.batched { self.n * self.pixels } else { self.pixels }
    }
}

/// `[n, c, h, w]` with `[top, bottom, left, right]` zeros around h and w.
fn padded_dims([n, c, h, w]: [usize; 4], [t, b, l, r]: [usize; 4]) -> [usize; 4] {
    [n, c, h + t + b, w + l + r]
}

/// Copies `x` (through its map) into the middle of a zeroed, row-major
/// padded buffer.
unsafe fn pad_input(x: Buf, map: &Affine, dims: [usize; 4], pad: [usize; 4], dst: *mut u8) {
    let p = padded_dims(dims, pad);
    let size = x.dtype.size_bytes();
    unsafe { routines::fill(Buf { ptr: dst, dtype: x.dtype }, p.iter().product(), 0.0) };
    let s = &map.strides;
    for n in 0..dims[0] {
        for c in 0..dims[1] {
            for y in 0..dims[2] {
                for xx in 0..dims[3] {
                    let src = map.offset + n as i64 * s[0] + c as i64 * s[1] + y as i64 * s[2] + xx as i64 * s[3];
                    let d = ((n * p[1] + c) * p[2] + y + pad[0]) * p[3] + xx + pad[2];
                    unsafe { std::ptr::copy_nonoverlapping(x.ptr.offset(src as isize * size as isize), dst.add(d * size), size) };
                }
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
