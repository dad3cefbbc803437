//! Backends: how a graph becomes something that runs. A graph is compiled
//! once ([`Backend::compile`]) and the result executed many times with
//! different feeds (every training step, every batch).
//!
//! This crate knows only the reference interpreter ([`InterpreterBackend`]);
//! code generators are crates of their own on top of it (the Cranelift JIT
//! in `d2l-cpu`), and `d2l-device`'s `Device` picks one.

use std::collections::HashMap;

use d2l_ir::{DType, Graph};

use crate::{FeedKind, Interpreter, RunError, Tensor, TensorType};

/// A graph ready to run. `feeds` maps input and parameter names to tensors;
/// the result is the graph's named outputs, in order.
pub trait Executable {
    fn run(&mut self, feeds: &HashMap<String, Tensor>) -> Result<Vec<(String, Tensor)>, RunError>;

    /// [`Executable::run`] into `outputs`, reusing its tensors' buffers when
    /// they already have the output's name, dtype and shape (as left by the
    /// previous call): a training loop that runs a step this way allocates
    /// nothing per step with the JIT.
    fn run_into(&mut self, feeds: &HashMap<String, Tensor>, outputs: &mut Vec<(String, Tensor)>) -> Result<(), RunError> {
        *outputs = self.run(feeds)?;
        Ok(())
    }
}

/// Feed `name` from `feeds`, checked against the type a compiled graph
/// declares for it: a missing or mistyped feed is an error naming it.
pub fn checked_feed<'a>(feeds: &'a HashMap<String, Tensor>, name: &str, is_param: bool, dtype: DType, dims: &[usize]) -> Result<&'a Tensor, RunError> {
    let expected = || TensorType { dtype, shape: d2l_ir::Shape(dims.to_vec()) };
    let kind = if is_param { FeedKind::Param } else { FeedKind::Input };
    let Some(t) = feeds.get(name) else {
        return Err(RunError::MissingFeed { name: name.to_string(), kind, expected: expected() });
    };
    if t.dtype() != dtype || t.dims() != dims {
        return Err(RunError::FeedMismatch { name: name.to_string(), expected: expected(), got: TensorType::of(t) });
    }
    Ok(t)
}

/// Output `i` of a compiled run, written in place: the tensor the previous
/// run left in `outputs[i]` when it has this name, dtype and shape and is
/// row-major, else a fresh one put there ([`Executable::run_into`]).
pub fn reused_output<'a>(outputs: &'a mut Vec<(String, Tensor)>, i: usize, name: &str, dtype: DType, dims: &[usize]) -> &'a mut Tensor {
    let fits = outputs.get(i).is_some_and(|(n, t)| n == name && t.dtype() == dtype && t.dims() == dims && t.is_row_major());
    if !fits {
        let fresh = (name.to_string(), Tensor::zeros(dtype, dims));
        if i < outputs.len() {
            outputs[i] = fresh;
        } else {
            outputs.push(fresh);
        }
    }
    &mut outputs[i].1
}

/// Feeds each update output of `graph` back in place of the fed tensor it
/// updates (parameters, optimizer state, buffers, recurrent state): the
/// new value becomes the feed and the old one takes its place in
/// `outputs`, to be overwritten by the next run, so no tensor is allocated
/// once every feed exists.
pub fn apply_updates(graph: &Graph, outputs: &mut [(String, Tensor)], feeds: &mut HashMap<String, Tensor>) {
    for (name, t) in outputs.iter_mut() {
        if !graph.updates().any(|o| o.name == *name) {
            continue;
        }
        match feeds.get_mut(name.as_str()) {
            Some(slot) => std::mem::swap(slot, t),
            None => {
                feeds.insert(name.clone(), t.clone());
            }
        }
    }
}

/// What turns a graph into an [`Executable`]: one device and way of
/// running graphs. The training loop ([`crate::train::Trainer`]) compiles
/// its step and evaluation graphs through one.
pub trait Backend: Send + Sync {
    /// Prepares `graph` for repeated execution; `seed` seeds its random ops.
    fn compile(&self, graph: &Graph, seed: u64) -> Result<Box<dyn Executable>, RunError>;
}

/// The reference interpreter as a backend: every primitive, no compilation.
#[derive(Clone, Copy, Debug, Default)]
pub struct InterpreterBackend;

impl Backend for InterpreterBackend {
    fn compile(&self, graph: &Graph, seed: u64) -> Result<Box<dyn Executable>, RunError> {
        Ok(Box::new(Interpreted { graph: graph.clone(), interp: Interpreter::new(seed) }))
    }
}

/// A graph run by the reference interpreter.
struct Interpreted {
    graph: Graph,
    interp: Interpreter,
}

impl Executable for Interpreted {
    fn run(&mut self, feeds: &HashMap<String, Tensor>) -> Result<Vec<(String, Tensor)>, RunError> {
        self.interp.run(&self.graph, feeds)
    }
}
