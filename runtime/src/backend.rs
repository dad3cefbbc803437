//! Backends: how a graph becomes something that runs. A graph is compiled
//! once ([`Backend::compile`]) and the result executed many times with
//! different feeds (every training step, every batch).
//!
//! This crate knows only the reference interpreter ([`InterpreterBackend`]);
//! code generators are crates of their own on top of it (the Cranelift JIT
//! in `d2l-cpu`), and `d2l-device`'s `Device` picks one.

use std::collections::HashMap;

use d2l_ir::Graph;

use crate::{Interpreter, RunError, Tensor};

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
