//! How a [`LoopKernel`] maps onto a GPU grid: which of its loops are
//! spread over threads and blocks, which loops a thread walks itself, and
//! how a reduction's partial values meet. The PTX backend emits exactly
//! this schedule, and [`crate::grid`] executes it on the CPU, thread by
//! thread, so the mapping is tested where no GPU is.
//!
//! Three regimes, after CUDA.jl's `mapreduce` (see
//! `shared/research/gpu-anchors.md`); none uses atomics, so a kernel's
//! result does not depend on which thread runs first:
//! - **elementwise**: no loop is reduced; each thread takes iterations
//!   `g, g + T, g + 2T, …` of the whole nest (`g` its global index, `T` the
//!   number of threads);
//! - **thread per output**: each thread takes outputs the same way and
//!   walks the reduced loops serially (many outputs: the grid fills);
//! - **block per output**: each block takes outputs the same way; its
//!   threads split the reduced loops (`t, t + B, …`), then combine their
//!   partials: a down-shuffle tree within each warp, the warps' results
//!   through shared memory, and the same tree in warp 0 (few outputs, long
//!   reductions: a loss, a bias gradient).

use std::fmt;

use crate::kernel::LoopKernel;

/// Threads of a warp.
pub const WARP: usize = 32;
/// Most threads per block.
pub const MAX_BLOCK: usize = 256;
/// Most blocks per grid; larger spaces are covered by striding.
pub const MAX_GRID: usize = 65_535;
/// Fewer outputs than this, each reduced over at least
/// [`BLOCK_REDUCE_MIN`] values, get a block each: one thread per output
/// would leave most of the GPU idle.
pub const BLOCK_REDUCE_OUTPUTS: usize = 4096;
pub const BLOCK_REDUCE_MIN: usize = 64;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Regime {
    Elementwise,
    ThreadPerOutput,
    BlockPerOutput,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GpuSchedule {
    pub regime: Regime,
    /// The kernel's loops spread over the grid (outermost first): no
    /// reduction runs along them.
    pub parallel: Vec<usize>,
    /// The loops some reduction runs along, walked inside a thread (or a
    /// block), outermost first.
    pub reduced: Vec<usize>,
    /// Threads per block (a multiple of [`WARP`]) and blocks.
    pub block: usize,
    pub grid: usize,
}

impl GpuSchedule {
    /// The schedule of `kernel`.
    pub fn of(kernel: &LoopKernel) -> GpuSchedule {
        let r = kernel.extents.len();
        let reduced_along = |d: usize| kernel.stores.iter().any(|s| s.reduce.is_some() && s.access.strides[d] == 0);
        let (reduced, parallel): (Vec<usize>, Vec<usize>) = (0..r).partition(|&d| reduced_along(d));
        let outputs: usize = parallel.iter().map(|&d| kernel.extents[d]).product();
        let per_output: usize = reduced.iter().map(|&d| kernel.extents[d]).product();
        // A block can combine partials in registers only when every
        // reduction covers all the reduced loops.
        let whole = kernel.stores.iter().filter(|s| s.reduce.is_some()).all(|s| reduced.iter().all(|&d| s.access.strides[d] == 0));
        let regime = if reduced.is_empty() {
            Regime::Elementwise
        } else if whole && outputs < BLOCK_REDUCE_OUTPUTS && per_output >= BLOCK_REDUCE_MIN {
            Regime::BlockPerOutput
        } else {
            Regime::ThreadPerOutput
        };
        let warps = |n: usize| n.div_ceil(WARP).clamp(1, MAX_BLOCK / WARP) * WARP;
        let (block, grid) = match regime {
            Regime::BlockPerOutput => (warps(per_output), outputs.clamp(1, MAX_GRID)),
            _ => {
                let block = warps(outputs);
                (block, outputs.div_ceil(block).clamp(1, MAX_GRID))
            }
        };
        GpuSchedule { regime, parallel, reduced, block, grid }
    }

    /// Iterations of the parallel loops (outputs of a reduction).
    pub fn outputs(&self, kernel: &LoopKernel) -> usize {
        self.parallel.iter().map(|&d| kernel.extents[d]).product()
    }

    /// Iterations of the reduced loops per output.
    pub fn per_output(&self, kernel: &LoopKernel) -> usize {
        self.reduced.iter().map(|&d| kernel.extents[d]).product()
    }
}

impl fmt::Display for GpuSchedule {
    /// `block per output: grid 10 x block 256, loops [0] over threads, [1, 2] reduced`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let regime = match self.regime {
            Regime::Elementwise => "elementwise",
            Regime::ThreadPerOutput => "thread per output",
            Regime::BlockPerOutput => "block per output",
        };
        write!(f, "{regime}: grid {} x block {}, loops {:?} parallel", self.grid, self.block, self.parallel)?;
        if !self.reduced.is_empty() {
            write!(f, ", {:?} reduced", self.reduced)?;
        }
        Ok(())
    }
}

/// Splits a linear index over `dims` (extents, outermost first) into one
/// index per loop, written to `out` at the loops' positions.
pub fn unflatten(mut linear: usize, loops: &[usize], extents: &[usize], out: &mut [i64]) {
    for &d in loops.iter().rev() {
        let e = extents[d];
        out[d] = (linear % e) as i64;
        linear /= e;
    }
}

#[cfg(test)]
mod tests {
    use d2l_ir::{BinaryOp, DType, ReduceOp};

    use super::*;
    use crate::kernel::{Access, Inst, Store};

    fn kernel(extents: Vec<usize>, store_strides: Vec<i64>, reduce: bool) -> LoopKernel {
        let mut k = LoopKernel::new("t", extents.clone());
        let strides = d2l_passes::fusion::Affine::contiguous(&extents).strides;
        let x = k.push(Inst::Load { dtype: DType::F32, access: Access { slot: 1, offset: 0, strides } });
        let y = k.push(Inst::Binary { op: BinaryOp::Mul, dtype: DType::F32, a: x, b: x });
        let reduce = reduce.then_some(ReduceOp::Sum);
        k.stores.push(Store { value: y, dtype: DType::F32, access: Access { slot: 2, offset: 0, strides: store_strides }, reduce });
        k
    }

    #[test]
    fn regimes_follow_outputs_and_reduction_length() {
        let s = GpuSchedule::of(&kernel(vec![1000, 7], vec![7, 1], false));
        assert_eq!(s.to_string(), "elementwise: grid 28 x block 256, loops [0, 1] parallel");
        // A loss: everything into one value.
        let s = GpuSchedule::of(&kernel(vec![256, 10], vec![0, 0], true));
        assert_eq!(s.to_string(), "block per output: grid 1 x block 256, loops [] parallel, [0, 1] reduced");
        // Row sums of many short rows: a thread each.
        let s = GpuSchedule::of(&kernel(vec![10000, 10], vec![1, 0], true));
        assert_eq!(s.to_string(), "thread per output: grid 40 x block 256, loops [0] parallel, [1] reduced");
        // Short rows, few of them: still a thread each, one warp.
        let s = GpuSchedule::of(&kernel(vec![3, 10], vec![1, 0], true));
        assert_eq!(s.to_string(), "thread per output: grid 1 x block 32, loops [0] parallel, [1] reduced");
    }
}
