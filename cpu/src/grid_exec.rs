//! A plan run as a GPU would run it, on the CPU: its GPU form
//! (`d2l_kernels::gpu_plan`, every step a loop kernel: matrix products,
//! convolutions and routines included) executed by the grid interpreter
//! (`d2l_kernels::grid`), thread by thread as each kernel's GPU schedule
//! maps it. Slow; it is how the GPU code's semantics are tested where there
//! is no GPU (`Device::GRID`, `--backend grid`). Uniform random numbers
//! come from their kernels (ChaCha12 words by position), normal ones are
//! drawn as the JIT draws them; both from the interpreter's stream.

use d2l_ir::{DType, Graph};
use d2l_kernels::gpu_plan::{GpuPlan, GpuStep, INDEX_OUT_OF_RANGE};
use d2l_kernels::lower::{self, FeedSlot, OutputSlot, Plan};
use d2l_kernels::schedule::GpuSchedule;
use d2l_passes::fusion;
use rand::SeedableRng;
use rand_chacha::ChaCha12Rng;

use crate::pool::pool;
use crate::routines::{self, Buf};
use crate::exec::{point_at_callers, slot_table};
use crate::{CompileError, ExecError};

/// A graph's GPU plan, with the arena its kernels run in.
pub struct GridProgram {
    plan: Plan,
    gpu: GpuPlan,
    schedules: Vec<GpuSchedule>,
    table: Vec<*mut u8>,
    _arena: Vec<u64>,
    status: Box<i64>,
    rng: ChaCha12Rng,
    names: Vec<String>,
}

// SAFETY: as `Program`'s: the table points into buffers this program owns
// or that the caller lends for the duration of `run`.
unsafe impl Send for GridProgram {}

impl GridProgram {
    pub fn compile(graph: &Graph, seed: u64) -> Result<GridProgram, CompileError> {
        let fusion = fusion::fuse(graph);
        let plan = lower::plan(graph, &fusion)?;
        let gpu = GpuPlan::of(&plan, seed);
        let schedules = gpu.kernels.iter().map(GpuSchedule::of).collect();
        let words = gpu.arena_bytes.div_ceil(8);
        let mut arena: Vec<u64> = Vec::new();
        arena.try_reserve_exact(words).map_err(|_| CompileError::Arena { bytes: gpu.arena_bytes })?;
        arena.resize(words, 0);
        let mut status = Box::new(0i64);
        // SAFETY: the GPU plan keeps every offset + size within its arena.
        let table = unsafe { slot_table(&gpu.slots, &mut status, arena.as_mut_ptr() as *mut u8) };
        let names = graph.ids().map(|id| lower::describe(graph, id)).collect();
        Ok(GridProgram { plan, gpu, schedules, table, _arena: arena, status, rng: ChaCha12Rng::seed_from_u64(seed), names })
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
    /// As [`crate::Program::run`].
    pub unsafe fn run(&mut self, feeds: &[*const u8], outputs: &[*mut u8]) -> Result<(), ExecError> {
        point_at_callers(&mut self.table, &self.gpu.slots, feeds, outputs);
        *self.status = 0;
        for step in &self.gpu.steps {
            match step {
                GpuStep::Kernel { kernel, node, indices } => {
                    // SAFETY: the GPU plan's kernels stay inside their slots.
                    unsafe { d2l_kernels::grid::run(&self.gpu.kernels[*kernel], &self.schedules[*kernel], &self.table) };
                    let status = std::mem::take(&mut *self.status);
                    if status & 1 != 0 {
                        return Err(ExecError::DivisionByZero { node: self.names[node.index()].clone() });
                    }
                    if status & INDEX_OUT_OF_RANGE != 0 {
                        let (slot, count, size) = indices.expect("only index checks flag an index");
                        // SAFETY: the index slot holds `count` i64s.
                        let idx = unsafe { std::slice::from_raw_parts(self.table[slot] as *const i64, count) };
                        let index = idx.iter().copied().find(|&i| i < 0 || i >= size as i64).unwrap_or(0);
                        return Err(ExecError::IndexOutOfRange { node: self.names[node.index()].clone(), index, size });
                    }
                }
                GpuStep::StreamPosition { slot, words } => {
                    let at = self.rng.get_word_pos();
                    // SAFETY: the slot is an i64 scratch word of the arena.
                    unsafe { *(self.table[*slot] as *mut i64) = at as i64 };
                    self.rng.set_word_pos(at + *words as u128);
                }
                GpuStep::Rand { dist, out, .. } => {
                    let slot = &self.gpu.slots[*out];
                    let dst = Buf { ptr: self.table[*out], dtype: slot.dtype };
                    debug_assert!(matches!(slot.dtype, DType::F32 | DType::F64));
                    // SAFETY: the slot holds `numel` elements of its dtype.
                    unsafe { routines::rand(&mut self.rng, *dist, dst, slot.numel, pool()) };
                }
            }
        }
        Ok(())
    }
}
