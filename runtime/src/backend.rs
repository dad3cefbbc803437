//! Backends: how a graph becomes something that runs. A graph is compiled
//! once ([`Backend::compile`]) and the result executed many times with
//! different feeds (every training step, every batch).

use std::collections::HashMap;

use d2l_ir::Graph;

use crate::{Interpreter, RunError, Tensor};

/// A graph ready to run. `feeds` maps input and parameter names to tensors;
/// the result is the graph's named outputs, in order.
pub trait Executable {
    fn run(&mut self, feeds: &HashMap<String, Tensor>) -> Result<Vec<(String, Tensor)>, RunError>;
}

/// Which executor runs graphs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Backend {
    /// The reference interpreter (ndarray): every primitive, no compilation.
    #[default]
    Interpreter,
}

impl Backend {
    /// Prepares `graph` for repeated execution; `seed` seeds its random ops.
    pub fn compile(self, graph: &Graph, seed: u64) -> Result<Box<dyn Executable>, RunError> {
        match self {
            Backend::Interpreter => Ok(Box::new(Interpreted { graph: graph.clone(), interp: Interpreter::new(seed) })),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Backend::Interpreter => "interp",
        }
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
