//! Graph-to-graph passes over the d2l IR.
//!
//! - [`autodiff`]: symbolic reverse mode. [`differentiate`] extends a copy of
//!   a forward graph with the backward nodes of a scalar loss, using one
//!   gradient rule per primitive in one table.
//! - [`simplify`](mod@simplify): dead-code elimination, common-subexpression
//!   elimination, constant folding and a few algebraic identities; and
//!   [`promote_f64`], which gradient checks use to run a graph in double
//!   precision.
//! - [`fusion`]: partitions a graph into kernels (elementwise chains,
//!   reductions with their producers, GEMM epilogues, routines), what
//!   `d2l ir --stage fused` prints and codegen compiles.
//! - [`memory`](mod@memory): liveness-based arena offsets for the buffers
//!   of a fused graph.

pub mod autodiff;
pub mod fusion;
pub mod memory;
pub mod optimizer;
pub mod simplify;
pub mod step;

pub use autodiff::{DiffOptions, GradError, Gradients, differentiate, differentiate_params, grad_output_name};
pub use simplify::{NodeMap, promote_f64, simplify, try_simplify};
pub use step::{StepError, training_step};
