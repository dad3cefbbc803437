//! The training step as one graph: a forward graph with a scalar `loss`
//! output, differentiated with respect to every parameter, with the
//! optimizer update appended and the whole simplified. This is what a
//! trainer compiles once and runs per minibatch.

use d2l_ir::{Graph, OutputRole};

use crate::optimizer::{UpdateSpec, append_update};
use crate::{DiffOptions, differentiate_params, simplify};

#[derive(Debug, thiserror::Error)]
pub enum StepError {
    #[error("autodiff: {0}")]
    Grad(#[from] crate::autodiff::GradError),
    #[error("{0}")]
    Update(#[from] crate::optimizer::UpdateError),
}

/// The step of `forward` (outputs `loss`, and `output` for metrics) under
/// `update`. It keeps `loss`, `output`, the figures reported beside the
/// loss and every update output: new parameters, optimizer state, buffers
/// and recurrent state.
pub fn training_step(forward: &Graph, update: &UpdateSpec) -> Result<Graph, StepError> {
    let grads = differentiate_params(forward, "loss", &DiffOptions::default())?;
    let mut graph = grads.graph;
    graph.retain_outputs(|o| matches!(o.role, OutputRole::Update | OutputRole::Metric) || o.name == "loss" || o.name == "output");
    let pairs: Vec<_> = graph.params().into_iter().zip(grads.grads.iter().copied()).collect();
    append_update(&mut graph, &pairs, update)?;
    Ok(simplify(&graph))
}
