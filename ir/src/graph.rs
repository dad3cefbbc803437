use std::sync::Arc;

use petgraph::Direction;
use petgraph::graph::{DiGraph, NodeIndex};

use crate::{DType, Op, Shape};

pub type NodeId = NodeIndex<u32>;

/// Where a node came from in source text (1-based line and column).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Loc {
    pub file: Arc<str>,
    pub line: u32,
    pub col: u32,
}

#[derive(Clone, Debug)]
pub struct Node {
    pub op: Op,
    pub dtype: DType,
    pub shape: Shape,
    /// Operands in order. The petgraph edges mirror these so that users of a
    /// node can be found without a scan; only [`Graph::push`] writes either.
    pub args: Vec<NodeId>,
    pub loc: Option<Loc>,
}

/// A static dataflow graph of primitive ops with named outputs.
#[derive(Clone, Debug, Default)]
pub struct Graph {
    pub name: String,
    graph: DiGraph<Node, u32>,
    outputs: Vec<(String, NodeId)>,
    /// Location attached to nodes built from now on (set by the front end
    /// while it lowers an expression, and by passes to keep provenance).
    current_loc: Option<Loc>,
}

impl Graph {
    pub fn new(name: impl Into<String>) -> Graph {
        Graph { name: name.into(), ..Graph::default() }
    }

    /// Appends a node without checking it. Only the typed builders in
    /// `build.rs` call this; they establish the shape/dtype invariants.
    pub(crate) fn push(&mut self, op: Op, dtype: DType, shape: Shape, args: Vec<NodeId>) -> NodeId {
        let loc = self.current_loc.clone();
        let id = self.graph.add_node(Node { op, dtype, shape, args: args.clone(), loc });
        for (operand, &arg) in args.iter().enumerate() {
            self.graph.add_edge(arg, id, operand as u32);
        }
        id
    }

    pub fn set_loc(&mut self, loc: Option<Loc>) -> Option<Loc> {
        std::mem::replace(&mut self.current_loc, loc)
    }

    pub fn node(&self, id: NodeId) -> &Node {
        &self.graph[id]
    }

    pub fn len(&self) -> usize {
        self.graph.node_count()
    }

    pub fn is_empty(&self) -> bool {
        self.graph.node_count() == 0
    }

    /// All nodes in topological (insertion) order.
    pub fn ids(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.graph.node_indices()
    }

    pub fn shape(&self, id: NodeId) -> &Shape {
        &self.graph[id].shape
    }

    pub fn dtype(&self, id: NodeId) -> DType {
        self.graph[id].dtype
    }

    /// Nodes that take `id` as an operand (each once, in no fixed order).
    pub fn users(&self, id: NodeId) -> Vec<NodeId> {
        let mut users: Vec<NodeId> = self.graph.neighbors_directed(id, Direction::Outgoing).collect();
        users.sort();
        users.dedup();
        users
    }

    pub fn set_output(&mut self, name: impl Into<String>, id: NodeId) {
        let name = name.into();
        match self.outputs.iter_mut().find(|(n, _)| *n == name) {
            Some(slot) => slot.1 = id,
            None => self.outputs.push((name, id)),
        }
    }

    /// Drops the outputs whose name fails `keep` (their nodes stay until DCE).
    pub fn retain_outputs(&mut self, keep: impl Fn(&str) -> bool) {
        self.outputs.retain(|(name, _)| keep(name));
    }

    pub fn outputs(&self) -> &[(String, NodeId)] {
        &self.outputs
    }

    pub fn output(&self, name: &str) -> Option<NodeId> {
        self.outputs.iter().find(|(n, _)| n == name).map(|(_, id)| *id)
    }

    /// `Input` nodes in order of creation.
    pub fn inputs(&self) -> Vec<NodeId> {
        self.ids().filter(|&id| matches!(self.node(id).op, Op::Input { .. })).collect()
    }

    pub fn input_named(&self, name: &str) -> Option<NodeId> {
        self.ids().find(|&id| matches!(&self.node(id).op, Op::Input { name: n } if n == name))
    }

    /// `Param` nodes in order of creation.
    pub fn params(&self) -> Vec<NodeId> {
        self.ids().filter(|&id| matches!(self.node(id).op, Op::Param { .. })).collect()
    }

    /// `State` nodes in order of creation.
    pub fn states(&self) -> Vec<NodeId> {
        self.ids().filter(|&id| matches!(self.node(id).op, Op::State { .. })).collect()
    }

    /// The petgraph view, for algorithms (reachability, dominators, ...).
    pub fn petgraph(&self) -> &DiGraph<Node, u32> {
        &self.graph
    }
}
