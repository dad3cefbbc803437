//! Kernel lowering and the Cranelift CPU JIT.
//!
//! - [`kernel`]: the loop-level kernel representation (shared with a future
//!   PTX backend).
//! - [`clif`]: its Cranelift lowering (f32x4, FMA, polynomial math from
//!   [`math`]).
//! - [`lower`]: a fused graph to slots, loop kernels and steps; [`exec`]:
//!   the compiled program that runs them.
//! - [`gemm`]: the packed SGEMM that matmul and convolutions run on;
//!   [`conv`]: direct convolution for small channel counts.
//! - [`routines`]: layout and indexing ops as library routines.
//! - [`pool`]: the worker threads big kernels are split over.

pub mod clif;
pub mod conv;
pub mod denormals;
pub mod exec;
pub mod gemm;
pub mod kernel;
pub mod lower;
pub mod math;
pub mod pool;
pub mod routines;
pub mod wide;

pub use exec::{CompileError, ExecError, Program};

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
