//! Running d2l graphs on the host: tensors, the reference interpreter (the
//! oracle every compiled backend is tested against), parameters and
//! checkpoints, data loaders and the training loop.

mod tensor;

pub use tensor::Tensor;
