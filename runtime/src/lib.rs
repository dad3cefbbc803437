//! Running d2l graphs on the host: tensors, the reference interpreter (the
//! oracle every compiled backend is tested against), parameters and
//! checkpoints, data loaders and the training loop.

pub mod backend;
mod interp;
mod params;
mod tensor;

pub mod checkpoint;
pub mod data;
pub mod files;
pub mod npy;
pub mod train;

pub use backend::{Backend, Executable, InterpreterBackend, apply_updates, checked_feed, reused_output};
pub use interp::{FeedKind, Interpreter, RunError, TensorType};
pub use params::init_params;
pub use tensor::Tensor;
