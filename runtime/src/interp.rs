//! The reference interpreter: evaluates a graph node by node on host tensors
//! with plain, obviously-correct semantics. It is the oracle every compiled
//! backend is tested against, and it trains small models until the JIT lands.
//!
//! Every value it stores is an owned, standard-layout (row-major contiguous)
//! array, so kernels can work on flat slices. Each node's dtype is matched
//! once and the kernel for that element type runs over the whole tensor.

/// Applies a dtype-generic expression to the array a tensor holds and wraps
/// the result in the same variant (`$a` is bound to the inner array).
macro_rules! map_same {
    ($t:expr, |$a:ident| $body:expr) => {
        match $t {
            crate::Tensor::F32($a) => crate::Tensor::F32($body),
            crate::Tensor::F64($a) => crate::Tensor::F64($body),
            crate::Tensor::I64($a) => crate::Tensor::I64($body),
            crate::Tensor::Bool($a) => crate::Tensor::Bool($body),
        }
    };
}

/// Builds a tensor of a runtime dtype from a dtype-generic expression in
/// which `$t` names the element type.
macro_rules! of_dtype {
    ($dtype:expr, |$t:ident| $body:expr) => {
        match $dtype {
            ::d2l_ir::DType::F32 => {
                type $t = f32;
                crate::Tensor::F32($body)
            }
            ::d2l_ir::DType::F64 => {
                type $t = f64;
                crate::Tensor::F64($body)
            }
            ::d2l_ir::DType::I64 => {
                type $t = i64;
                crate::Tensor::I64($body)
            }
            ::d2l_ir::DType::Bool => {
                type $t = bool;
                crate::Tensor::Bool($body)
            }
        }
    };
}

mod elem;
mod elementwise;
mod index;
mod layout;
mod linalg;
mod reduce;

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;

use d2l_ir::{DType, Graph, Node, NodeId, Op, Shape};
use ndarray::{ArrayD, IxDyn};
use rand::SeedableRng;
use rand::rngs::StdRng;

use crate::Tensor;

/// A dtype and a shape, printed the way the language writes types: `f32[2, 3]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorType {
    pub dtype: DType,
    pub shape: Shape,
}

impl TensorType {
    pub fn of(t: &Tensor) -> TensorType {
        TensorType { dtype: t.dtype(), shape: t.shape() }
    }
}

impl fmt::Display for TensorType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}", self.dtype, self.shape)
    }
}

/// Which kind of leaf a feed is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FeedKind {
    Input,
    Param,
}

impl fmt::Display for FeedKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FeedKind::Input => "input",
            FeedKind::Param => "parameter",
        })
    }
}

/// Why a graph could not be evaluated. `node` fields describe the failing
/// node as `%12 = gather at file:line:col` (numbers as in the text form).
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("missing feed for {kind} `{name}`: expected a tensor of type {expected}")]
    MissingFeed { name: String, kind: FeedKind, expected: TensorType },
    #[error("feed `{name}` has the wrong type: expected {expected}, got {got}")]
    FeedMismatch { name: String, expected: TensorType, got: TensorType },
    #[error("{node}: index {index} is out of range for an axis of size {size}")]
    IndexOutOfRange { node: String, index: i64, size: usize },
    #[error("{node}: integer division by zero")]
    DivisionByZero { node: String },
    /// A node whose operands do not fit its op. The typed builders make this
    /// unreachable; it exists so that a broken invariant is an error, not a panic.
    #[error("{node}: {message}")]
    IllTyped { node: String, message: String },
    /// A compiled backend could not compile the graph.
    #[error("cannot compile graph `{graph}`: {message}")]
    Compile { graph: String, message: String },
    /// The device failed while running (a GPU's driver reported an error).
    #[error("{device}: {message}")]
    Device { device: String, message: String },
}

/// A kernel failure, before the executor attaches the node it happened at.
#[derive(Debug)]
pub(crate) enum OpError {
    IndexOutOfRange { index: i64, size: usize },
    DivisionByZero,
    IllTyped(String),
}

impl OpError {
    fn at(self, graph: &Graph, id: NodeId) -> RunError {
        let node = describe(graph, id);
        match self {
            OpError::IndexOutOfRange { index, size } => RunError::IndexOutOfRange { node, index, size },
            OpError::DivisionByZero => RunError::DivisionByZero { node },
            OpError::IllTyped(message) => RunError::IllTyped { node, message },
        }
    }
}

pub(crate) fn ill_typed<T>(message: impl Into<String>) -> Result<T, OpError> {
    Err(OpError::IllTyped(message.into()))
}

/// `%12 = gather at models/x.d2l:3:7` (node numbers match the text form,
/// which numbers nodes densely in insertion order).
fn describe(graph: &Graph, id: NodeId) -> String {
    let node = graph.node(id);
    let mut s = format!("%{} = {}", id.index(), node.op.mnemonic());
    if let Some(loc) = &node.loc {
        s.push_str(&format!(" at {}:{}:{}", loc.file, loc.line, loc.col));
    }
    s
}

/// The elements of a (standard-layout) array as one row-major slice; copies
/// only if some caller handed in a non-contiguous array.
pub(crate) fn flat<T: Copy>(a: &ArrayD<T>) -> Cow<'_, [T]> {
    match a.as_slice() {
        Some(s) => Cow::Borrowed(s),
        None => Cow::Owned(a.iter().copied().collect()),
    }
}

/// Wraps row-major data of the given dims as an array.
pub(crate) fn array<T>(dims: &[usize], data: Vec<T>) -> Result<ArrayD<T>, OpError> {
    let len = data.len();
    ArrayD::from_shape_vec(IxDyn(dims), data)
        .or_else(|_| ill_typed(format!("{len} elements do not fill shape {}", Shape(dims.to_vec()))))
}

/// A standard-layout copy of a tensor (feeds may arrive transposed or sliced).
fn standard_copy(t: &Tensor) -> Tensor {
    map_same!(t, |a| a.as_standard_layout().into_owned())
}

/// Takes exactly `N` operands.
fn operands<'a, const N: usize>(op: &Op, args: &[&'a Tensor]) -> Result<[&'a Tensor; N], OpError> {
    <[&Tensor; N]>::try_from(args)
        .or_else(|_| ill_typed(format!("{} takes {N} operands, got {}", op.mnemonic(), args.len())))
}

/// Which nodes to evaluate, and after which node each value may be dropped.
struct Plan {
    needed: Vec<bool>,
    /// Index of the last node reading each value; `usize::MAX` = keep it.
    last_use: Vec<usize>,
}

impl Plan {
    /// Evaluate everything, keep everything (`eval_nodes`).
    fn keep_all(graph: &Graph) -> Plan {
        Plan { needed: vec![true; graph.len()], last_use: vec![usize::MAX; graph.len()] }
    }

    /// Evaluate only what the named outputs depend on, and free each
    /// intermediate right after its last reader (`run`).
    fn outputs_only(graph: &Graph) -> Plan {
        let n = graph.len();
        let mut needed = vec![false; n];
        for id in graph.outputs().iter().map(|o| &o.node) {
            needed[id.index()] = true;
        }
        // Index order is topological, so one backward sweep finds every ancestor.
        let ids: Vec<NodeId> = graph.ids().collect();
        for &id in ids.iter().rev() {
            if needed[id.index()] {
                for a in &graph.node(id).args {
                    needed[a.index()] = true;
                }
            }
        }
        let mut last_use = vec![0; n];
        for &id in &ids {
            if needed[id.index()] {
                for a in &graph.node(id).args {
                    last_use[a.index()] = id.index();
                }
            }
        }
        for id in graph.outputs().iter().map(|o| &o.node) {
            last_use[id.index()] = usize::MAX;
        }
        Plan { needed, last_use }
    }
}

/// The reference interpreter. Holds the random state that `Rand` nodes draw
/// from, so two interpreters with one seed produce the same numbers.
pub struct Interpreter {
    rng: StdRng,
}

impl Interpreter {
    pub fn new(seed: u64) -> Interpreter {
        Interpreter { rng: StdRng::seed_from_u64(seed) }
    }

    /// Values of every node, indexed by `NodeId::index()`. `feeds` maps Input
    /// names and Param names to tensors.
    pub fn eval_nodes(&mut self, graph: &Graph, feeds: &HashMap<String, Tensor>) -> Result<Vec<Tensor>, RunError> {
        let slots = self.execute(graph, feeds, &Plan::keep_all(graph))?;
        slots
            .into_iter()
            .enumerate()
            .map(|(i, v)| {
                v.ok_or_else(|| RunError::IllTyped { node: format!("%{i}"), message: "node was not evaluated".into() })
            })
            .collect()
    }

    /// The graph's named outputs, in `graph.outputs()` order. Only their
    /// ancestors are evaluated, and intermediates are freed after their last use.
    pub fn run(&mut self, graph: &Graph, feeds: &HashMap<String, Tensor>) -> Result<Vec<(String, Tensor)>, RunError> {
        let mut slots = self.execute(graph, feeds, &Plan::outputs_only(graph))?;
        let outputs = graph.outputs();
        let mut result = Vec::with_capacity(outputs.len());
        for (k, (name, id)) in outputs.iter().map(|o| (&o.name, &o.node)).enumerate() {
            let slot = &mut slots[id.index()];
            // One node may be named by several outputs: move it out at its last mention.
            let again = outputs[k + 1..].iter().any(|later| later.node == *id);
            let value = if again { slot.clone() } else { slot.take() };
            let value = value.ok_or_else(|| RunError::IllTyped {
                node: describe(graph, *id),
                message: format!("output `{name}` was not evaluated"),
            })?;
            result.push((name.clone(), value));
        }
        Ok(result)
    }

    fn execute(
        &mut self,
        graph: &Graph,
        feeds: &HashMap<String, Tensor>,
        plan: &Plan,
    ) -> Result<Vec<Option<Tensor>>, RunError> {
        let mut slots: Vec<Option<Tensor>> = (0..graph.len()).map(|_| None).collect();
        for id in graph.ids() {
            let i = id.index();
            if !plan.needed[i] {
                continue;
            }
            let node = graph.node(id);
            let value = match (&node.op, &node.args[..]) {
                (Op::Input { name, .. }, _) => feed(node, name, FeedKind::Input, feeds)?,
                (Op::Param { name, .. } | Op::State { name, .. }, _) => feed(node, name, FeedKind::Param, feeds)?,
                // Value-preserving ops whose operand dies here take it over
                // instead of copying it (a flatten in every training step).
                (Op::Reshape | Op::StopGradient, [arg]) if plan.last_use[arg.index()] == i => {
                    let t = slots[arg.index()].take().ok_or_else(|| missing_operand(graph, id))?;
                    layout::reshape_owned(t, node.shape.dims()).map_err(|e| e.at(graph, id))?
                }
                _ => {
                    let args = node
                        .args
                        .iter()
                        .map(|a| slots[a.index()].as_ref().ok_or_else(|| missing_operand(graph, id)))
                        .collect::<Result<Vec<&Tensor>, RunError>>()?;
                    self.eval_op(node, &args).map_err(|e| e.at(graph, id))?
                }
            };
            // Cheap self-check that keeps later kernels' slice arithmetic in bounds.
            if value.dtype() != node.dtype || value.dims() != node.shape.dims() {
                return Err(RunError::IllTyped {
                    node: describe(graph, id),
                    message: format!("computed {} but the node declares {}{}", TensorType::of(&value), node.dtype, node.shape),
                });
            }
            for a in &node.args {
                if plan.last_use[a.index()] == i {
                    slots[a.index()] = None;
                }
            }
            slots[i] = Some(value);
        }
        Ok(slots)
    }

    /// One non-leaf node on its evaluated operands.
    fn eval_op(&mut self, node: &Node, args: &[&Tensor]) -> Result<Tensor, OpError> {
        let dims = node.shape.dims();
        let op = &node.op;
        match op {
            Op::Input { .. } | Op::Param { .. } | Op::State { .. } => ill_typed("leaves are read from the feeds"),
            Op::Full { value } => Ok(elementwise::full(node.dtype, dims, *value)),
            Op::Iota { axis } => elementwise::iota(node.dtype, dims, *axis),
            Op::Rand { dist } => elementwise::rand(&mut self.rng, *dist, node.dtype, dims),
            Op::Unary(u) => {
                let [x] = operands(op, args)?;
                elementwise::unary(*u, x)
            }
            Op::Binary(b) => {
                let [x, y] = operands(op, args)?;
                elementwise::binary(*b, x, y)
            }
            Op::Compare(c) => {
                let [x, y] = operands(op, args)?;
                elementwise::compare(*c, x, y)
            }
            Op::Select => {
                let [c, x, y] = operands(op, args)?;
                elementwise::select(c, x, y)
            }
            Op::Cast => {
                let [x] = operands(op, args)?;
                Ok(elementwise::cast(x, node.dtype))
            }
            Op::Reduce { op: r, axes } => {
                let [x] = operands(op, args)?;
                reduce::reduce(*r, x, axes)
            }
            Op::ArgMax { axis } => {
                let [x] = operands(op, args)?;
                reduce::argmax(x, *axis)
            }
            Op::Reshape | Op::StopGradient => {
                let [x] = operands(op, args)?;
                layout::reshape_owned(x.clone(), dims)
            }
            Op::Permute { perm } => {
                let [x] = operands(op, args)?;
                layout::permute(x, perm)
            }
            Op::Broadcast => {
                let [x] = operands(op, args)?;
                layout::broadcast(x, dims)
            }
            Op::Slice { starts, ends, steps } => {
                let [x] = operands(op, args)?;
                layout::slice(x, starts, ends, steps)
            }
            Op::Pad { lo, hi, interior, value } => {
                let [x] = operands(op, args)?;
                layout::pad(x, lo, hi, interior, *value)
            }
            Op::Concat { axis } => layout::concat(args, *axis, dims),
            Op::MatMul => {
                let [a, b] = operands(op, args)?;
                linalg::matmul(a, b)
            }
            Op::Gather { axis } => {
                let [x, idx] = operands(op, args)?;
                index::gather(x, idx, *axis)
            }
            Op::ScatterAdd { axis } => {
                let [idx, updates] = operands(op, args)?;
                index::scatter_add(idx, updates, *axis, dims)
            }
            Op::Conv2d { stride } => {
                let [x, w] = operands(op, args)?;
                linalg::conv2d(x, w, *stride)
            }
            Op::Pool2d { kind, window, stride } => {
                let [x] = operands(op, args)?;
                linalg::pool2d(*kind, x, *window, *stride)
            }
        }
    }
}

fn missing_operand(graph: &Graph, id: NodeId) -> RunError {
    RunError::IllTyped { node: describe(graph, id), message: "an operand has no value (graph not in topological order?)".into() }
}

/// Reads and checks the feed of an Input or Param node.
fn feed(node: &Node, name: &str, kind: FeedKind, feeds: &HashMap<String, Tensor>) -> Result<Tensor, RunError> {
    let expected = TensorType { dtype: node.dtype, shape: node.shape.clone() };
    let Some(t) = feeds.get(name) else {
        return Err(RunError::MissingFeed { name: name.to_string(), kind, expected });
    };
    if t.dtype() != node.dtype || t.dims() != node.shape.dims() {
        return Err(RunError::FeedMismatch { name: name.to_string(), expected, got: TensorType::of(t) });
    }
    Ok(standard_copy(t))
}
