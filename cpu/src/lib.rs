//! The CPU backend: the kernel IR (`d2l-kernels`) compiled by Cranelift
//! for the host's cores, and the library code its plans call.
//!
//! - [`clif`]: loop kernels to Cranelift IR (f32x4, FMA, polynomial math
//!   from [`math`]); [`wide`]: the heavy ones run 8 or 16 lanes wide.
//! - [`exec`]: the compiled program that runs a plan's steps;
//!   [`executable`]: it as the runtime's `Executable` ([`JitBackend`]).
//! - [`grid_exec`]: a graph's GPU plan run by the grid interpreter
//!   ([`GridBackend`]), to test the GPU code on the CPU.
//! - [`gemm`]: the packed SGEMM that matmul and convolutions run on;
//!   [`conv`]: direct convolution for small channel counts.
//! - [`routines`]: layout and indexing ops as library routines.
//! - [`pool`]: the worker threads big kernels are split over.

pub mod clif;
pub mod conv;
pub mod denormals;
pub mod exec;
pub mod executable;
pub mod gemm;
pub mod grid_exec;
pub mod math;
pub mod pool;
pub mod routines;
pub mod wide;

use d2l_kernels::lower;

pub use exec::{CompileError, ExecError, Loops, Program};
pub use executable::{GridBackend, JitBackend, Jitted};

/// The generated code of `graph`'s loop kernels as text, for reading and
/// snapshot tests (`d2l emit --target clif`): per kernel, its loop-level
/// form as comments, then the CLIF Cranelift compiles (before optimisation).
pub fn clif_listing(graph: &d2l_ir::Graph) -> Result<String, CompileError> {
    let fusion = d2l_passes::fusion::fuse(graph);
    let plan = lower::plan(graph, &fusion)?;
    let mut jit = clif::Jit::new()?;
    let mut out = String::new();
    for kernel in &plan.kernels {
        for line in kernel.to_string().lines() {
            out.push_str("; ");
            out.push_str(line);
            out.push('\n');
        }
        out.push_str(&jit.clif_text(kernel));
        out.push('\n');
    }
    Ok(out)
}
