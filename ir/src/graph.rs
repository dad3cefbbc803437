use std::sync::Arc;

use petgraph::Direction;
use petgraph::graph::{DiGraph, NodeIndex};

use crate::{DType, InputRole, Op, Shape};

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

/// What an output is to whoever runs the graph.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum OutputRole {
    /// A result: predictions, the loss, a gradient.
    Value,
    /// The next value of the fed tensor of the same name (a parameter, a
    /// buffer, an optimizer slot, recurrent state): the caller feeds it in
    /// that tensor's place next time.
    Update,
    /// A scalar figure the trainer averages and reports beside the loss
    /// (the parts of a loss that sums several, such as BERT's masked-LM
    /// and next-sentence losses). Kept by the training step; never
    /// differentiated.
    Metric,
}

/// A named output of a graph.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Output {
    pub name: String,
    pub node: NodeId,
    pub role: OutputRole,
}

impl Output {
    /// The same output computed by `node` (a pass that rebuilds a graph).
    pub fn at(&self, node: NodeId) -> Output {
        Output { node, ..self.clone() }
    }
}

/// A static dataflow graph of primitive ops with named outputs.
#[derive(Clone, Debug, Default)]
pub struct Graph {
    pub name: String,
    graph: DiGraph<Node, u32>,
    outputs: Vec<Output>,
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

    /// Makes `id` the result `name` (replacing an output of that name).
    pub fn set_output(&mut self, name: impl Into<String>, id: NodeId) {
        self.push_output(Output { name: name.into(), node: id, role: OutputRole::Value });
    }

    /// Makes the scalar `id` a figure to report under `name` ([`OutputRole::Metric`]).
    pub fn set_metric(&mut self, name: impl Into<String>, id: NodeId) {
        self.push_output(Output { name: name.into(), node: id, role: OutputRole::Metric });
    }

    /// Makes `id` the next value of the fed tensor `name`.
    pub fn set_update(&mut self, name: impl Into<String>, id: NodeId) {
        self.push_output(Output { name: name.into(), node: id, role: OutputRole::Update });
    }

    /// Adds `output`, replacing any output of the same name.
    pub fn push_output(&mut self, output: Output) {
        match self.outputs.iter_mut().find(|o| o.name == output.name) {
            Some(slot) => *slot = output,
            None => self.outputs.push(output),
        }
    }

    /// Drops the outputs that fail `keep` (their nodes stay until DCE).
    pub fn retain_outputs(&mut self, keep: impl Fn(&Output) -> bool) {
        self.outputs.retain(|o| keep(o));
    }

    pub fn outputs(&self) -> &[Output] {
        &self.outputs
    }

    /// The node of the output `name`, whatever its role.
    pub fn output(&self, name: &str) -> Option<NodeId> {
        self.outputs.iter().find(|o| o.name == name).map(|o| o.node)
    }

    /// The outputs that are next values of fed tensors.
    pub fn updates(&self) -> impl Iterator<Item = &Output> {
        self.outputs.iter().filter(|o| o.role == OutputRole::Update)
    }

    /// The name of the `Input`, `Param` or `State` node `id`, if it is one.
    pub fn leaf_name(&self, id: NodeId) -> Option<&str> {
        match &self.node(id).op {
            Op::Input { name, .. } | Op::Param { name, .. } | Op::State { name, .. } => Some(name),
            _ => None,
        }
    }

    /// `Input` nodes in order of creation.
    pub fn inputs(&self) -> Vec<NodeId> {
        self.ids().filter(|&id| matches!(self.node(id).op, Op::Input { .. })).collect()
    }

    pub fn input_named(&self, name: &str) -> Option<NodeId> {
        self.ids().find(|&id| matches!(&self.node(id).op, Op::Input { name: n, .. } if n == name))
    }

    /// Inputs fed by the caller per run (data, labels, recurrent state), in
    /// order of creation: not optimizer slots or the step count.
    pub fn data_inputs(&self) -> Vec<NodeId> {
        self.ids().filter(|&id| matches!(self.node(id).op, Op::Input { role: InputRole::Data, .. })).collect()
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
