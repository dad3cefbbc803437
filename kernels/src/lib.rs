//! The kernel IR every backend reads, and how a fused graph becomes it.
//!
//! - [`kernel`]: the loop-level kernel representation: one loop nest of
//!   strided loads, elementwise instructions and stores.
//! - [`lower`]: a fused graph (`d2l_passes::fusion`) and its memory plan
//!   to a [`lower::Plan`]: numbered buffer slots, the loop kernels, and the
//!   steps that run them with the library calls in between (matmul,
//!   convolution, routines).
//! - [`math`]: the f32 exp, log, tanh and sigmoid every backend computes.
//! - [`gpu_plan`]: a plan as a GPU runs it, every step a loop kernel.
//! - [`schedule`]: how a kernel maps onto a GPU grid (threads, blocks,
//!   reduction trees); [`grid`] executes that mapping on the CPU.
//!
//! Nothing here generates code: the Cranelift backend (`d2l-cpu`) compiles
//! a plan's kernels for the host's cores, the PTX backend (`d2l-ptx`) a
//! GPU plan's for NVIDIA GPUs.

pub mod chacha;
pub mod kernel;
pub mod gpu_plan;
pub mod grid;
pub mod lower;
pub mod math;
pub mod schedule;
