//! Kernel lowering and the Cranelift CPU JIT.
//!
//! - [`gemm`]: the packed SGEMM that matmul and convolutions run on.
//! - [`pool`]: the worker threads big kernels are split over.

pub mod gemm;
pub mod pool;
