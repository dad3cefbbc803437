//! Kernel lowering and the Cranelift CPU JIT.
//!
//! - [`kernel`]: the loop-level kernel representation (shared with a future
//!   PTX backend).
//! - [`clif`]: its Cranelift lowering (f32x4, FMA, polynomial math from
//!   [`math`]).
//! - [`gemm`]: the packed SGEMM that matmul and convolutions run on.
//! - [`pool`]: the worker threads big kernels are split over.

pub mod clif;
pub mod gemm;
pub mod kernel;
pub mod math;
pub mod pool;
