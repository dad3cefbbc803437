//! Graph simplification: one forward sweep that copies the live nodes into a
//! new graph, folding and hash-consing each one as it goes.
//!
//! - Dead-code elimination: only nodes an output depends on survive, except
//!   parameters and inputs, which always survive (in their original order) so
//!   the runtime can still feed and initialise them.
//! - Common-subexpression elimination: nodes with equal (op, operands, dtype,
//!   shape) are built once. `Rand` nodes are never merged (each is a distinct
//!   draw), nor are inputs and parameters.
//! - Constant folding: elementwise ops, casts, reductions and layout ops
//!   whose operands are all `Full` become a `Full`; `select` on a constant
//!   condition picks its branch.
//! - Algebra: `x+0`, `0+x`, `x-0`, `x*1`, `1*x`, `x/1`, `x^1` → `x`;
//!   `x*0` → `0` (not IEEE-exact for infinities and NaN, which is acceptable
//!   in training graphs); `neg(neg x)` → `x`; `select(c, x, x)` → `x`;
//!   reshape of reshape, broadcast of broadcast and permute of permute
//!   collapse into one node.
//!
//! `stop_gradient` nodes are kept (simplification may run before autodiff)
//! unless their operand is a constant. Output names are kept. [`promote_f64`] lives here too: it is the same kind
//! of copy, with every f32 turned into f64.

use std::collections::HashMap;

use d2l_ir::{BinaryOp, DType, Graph, NodeId, Op, ReduceOp, Shape, ShapeError, UnaryOp};

/// For each node of the original graph (by `NodeId::index()`), the node that
/// computes its value in the simplified graph, or `None` if it was dead.
pub type NodeMap = Vec<Option<NodeId>>;

/// The simplified copy of `graph`. Simplification never changes what a graph
/// computes, so in the (unexpected) event that a rewrite cannot be rebuilt
/// the original graph is returned unchanged.
pub fn simplify(graph: &Graph) -> Graph {
    match try_simplify(graph) {
        Ok((simplified, _)) => simplified,
        Err(e) => {
            debug_assert!(false, "simplify produced an ill-typed node: {e}");
            graph.clone()
        }
    }
}

/// [`simplify`], also returning where each original node went, for callers
/// that hold node ids (gradients, optimizer state).
pub fn try_simplify(graph: &Graph) -> Result<(Graph, NodeMap), ShapeError> {
    let (mut current, mut map) = sweep(graph)?;
    // Folding can orphan the constants it folded (`x*1` leaves the 1 dead);
    // sweep again until nothing more goes. Each sweep only shrinks the graph.
    loop {
        let (next, step) = sweep(&current)?;
        if next.len() == current.len() {
            return Ok((current, map));
        }
        for slot in map.iter_mut() {
            *slot = slot.and_then(|id| step[id.index()]);
        }
        current = next;
    }
}

/// One forward pass: copies the live nodes of `graph`, rewriting and
/// hash-consing each.
fn sweep(graph: &Graph) -> Result<(Graph, NodeMap), ShapeError> {
    let live = live_nodes(graph);
    let mut out = Graph::new(graph.name.clone());
    let mut map: NodeMap = vec![None; graph.len()];
    let mut built: HashMap<String, NodeId> = HashMap::new();
    for id in graph.ids() {
        if !live[id.index()] {
            continue;
        }
        let node = graph.node(id);
        let args = node
            .args
            .iter()
            .map(|a| map[a.index()].ok_or_else(|| ShapeError(format!("operand %{} of a live node is dead", a.index()))))
            .collect::<Result<Vec<_>, _>>()?;
        out.set_loc(node.loc.clone());
        let new = match rewrite(&out, &node.op, &args, node.dtype) {
            Rewrite::To(existing) => existing,
            Rewrite::Full(value) => intern(&mut out, &mut built, &Op::Full { value }, &[], node.dtype, &node.shape)?,
            Rewrite::Op(op, args) => intern(&mut out, &mut built, &op, &args, node.dtype, &node.shape)?,
            Rewrite::Keep => intern(&mut out, &mut built, &node.op, &args, node.dtype, &node.shape)?,
        };
        map[id.index()] = Some(new);
    }
    out.set_loc(None);
    for (name, id) in graph.outputs() {
        if let Some(new) = map[id.index()] {
            out.set_output(name.clone(), new);
        }
    }
    Ok((out, map))
}

/// Outputs, parameters, inputs, and everything they depend on.
fn live_nodes(graph: &Graph) -> Vec<bool> {
    let mut live = vec![false; graph.len()];
    for (_, id) in graph.outputs() {
        live[id.index()] = true;
    }
    for id in (0..graph.len()).rev().map(NodeId::new) {
        let node = graph.node(id);
        if matches!(node.op, Op::Param { .. } | Op::State { .. } | Op::Input { .. }) {
            live[id.index()] = true;
        }
        if live[id.index()] {
            for a in &node.args {
                live[a.index()] = true;
            }
        }
    }
    live
}

/// Builds `op` unless an identical node already exists.
fn intern(
    out: &mut Graph,
    built: &mut HashMap<String, NodeId>,
    op: &Op,
    args: &[NodeId],
    dtype: DType,
    shape: &Shape,
) -> Result<NodeId, ShapeError> {
    if matches!(op, Op::Rand { .. } | Op::Input { .. } | Op::Param { .. } | Op::State { .. }) {
        return out.add_op(op, args, dtype, shape);
    }
    // `Debug` of an `Op` spells every attribute, f64s exactly.
    let key = format!("{op:?} {args:?} {dtype} {shape}");
    if let Some(&id) = built.get(&key) {
        return Ok(id);
    }
    let id = out.add_op(op, args, dtype, shape)?;
    built.insert(key, id);
    Ok(id)
}

enum Rewrite {
    /// The value is that of an existing node.
    To(NodeId),
    /// The value is a constant.
    Full(f64),
    /// A cheaper op computes the value.
    Op(Op, Vec<NodeId>),
    /// No rewrite applies.
    Keep,
}

fn full_value(g: &Graph, id: NodeId) -> Option<f64> {
    match g.node(id).op {
        Op::Full { value } => Some(value),
        _ => None,
    }
}

/// The folding and algebraic rules. `args` are nodes of `g`, the graph being
/// built; `dtype` is the result dtype. Every rewrite keeps the result type.
fn rewrite(g: &Graph, op: &Op, args: &[NodeId], dtype: DType) -> Rewrite {
    let consts: Option<Vec<f64>> = args.iter().map(|&a| full_value(g, a)).collect();
    let consts = consts.filter(|c| !c.is_empty());
    // Folded values are rounded to the result dtype, as the runtime would.
    let folded = |v: f64| Rewrite::Full(if dtype == DType::F32 { v as f32 as f64 } else { v });
    // The single operand of `args` when it is built by `op`, and its operands.
    let operand_of = |want: fn(&Op) -> bool| match args {
        [a] if want(&g.node(*a).op) => Some((&g.node(*a).op, g.node(*a).args.clone())),
        _ => None,
    };
    match (op, args, consts.as_deref()) {
        (Op::Unary(u), _, Some(&[v])) if dtype.is_float() => folded(eval_unary(*u, v)),
        (Op::Unary(UnaryOp::Neg), _, _) => match operand_of(|o| *o == Op::Unary(UnaryOp::Neg)) {
            Some((_, inner)) => Rewrite::To(inner[0]),
            None => Rewrite::Keep,
        },
        (Op::Binary(b), _, Some(&[x, y])) if dtype.is_float() => folded(eval_binary(*b, x, y)),
        (Op::Binary(b), &[lhs, rhs], _) if dtype != DType::Bool => {
            let (l, r) = (full_value(g, lhs), full_value(g, rhs));
            match b {
                BinaryOp::Add if r == Some(0.0) => Rewrite::To(lhs),
                BinaryOp::Add if l == Some(0.0) => Rewrite::To(rhs),
                BinaryOp::Sub if r == Some(0.0) => Rewrite::To(lhs),
                BinaryOp::Mul if r == Some(1.0) => Rewrite::To(lhs),
                BinaryOp::Mul if l == Some(1.0) => Rewrite::To(rhs),
                BinaryOp::Mul if l == Some(0.0) || r == Some(0.0) => Rewrite::Full(0.0),
                BinaryOp::Div | BinaryOp::Pow if r == Some(1.0) => Rewrite::To(lhs),
                _ => Rewrite::Keep,
            }
        }
        (Op::Select, &[cond, on_true, on_false], _) => match full_value(g, cond) {
            Some(c) => Rewrite::To(if c != 0.0 { on_true } else { on_false }),
            None if on_true == on_false => Rewrite::To(on_true),
            None => Rewrite::Keep,
        },
        (Op::Cast, _, Some(&[v])) if dtype.is_float() => folded(v),
        (Op::Reduce { op: ReduceOp::Sum, axes }, &[x], Some(&[v])) if dtype.is_float() => {
            let reduced: usize = axes.iter().map(|&a| g.shape(x).0[a]).product();
            folded(v * reduced as f64)
        }
        (Op::Reduce { op: ReduceOp::Max, .. }, &[x], Some(&[v])) if g.shape(x).numel() > 0 => Rewrite::Full(v),
        // Layout ops move elements around; a constant stays the constant (and
        // has no gradient to stop).
        (Op::Reshape | Op::Broadcast | Op::Permute { .. } | Op::Slice { .. } | Op::StopGradient, _, Some(&[v])) => Rewrite::Full(v),
        (Op::Pad { value, .. }, _, Some(&[v])) if *value == v => Rewrite::Full(v),
        (Op::Reshape, _, _) => match operand_of(|o| *o == Op::Reshape) {
            Some((_, inner)) => Rewrite::Op(Op::Reshape, inner),
            None => Rewrite::Keep,
        },
        (Op::Broadcast, _, _) => match operand_of(|o| *o == Op::Broadcast) {
            Some((_, inner)) => Rewrite::Op(Op::Broadcast, inner),
            None => Rewrite::Keep,
        },
        (Op::Permute { perm: outer }, _, _) => match operand_of(|o| matches!(o, Op::Permute { .. })) {
            Some((Op::Permute { perm: inner_perm }, inner)) => {
                let perm = outer.iter().map(|&p| inner_perm[p]).collect();
                Rewrite::Op(Op::Permute { perm }, inner)
            }
            _ => Rewrite::Keep,
        },
        _ => Rewrite::Keep,
    }
}

fn eval_unary(op: UnaryOp, x: f64) -> f64 {
    match op {
        UnaryOp::Neg => -x,
        UnaryOp::Exp => x.exp(),
        UnaryOp::Log => x.ln(),
        UnaryOp::Sqrt => x.sqrt(),
        UnaryOp::Tanh => x.tanh(),
        UnaryOp::Sigmoid => 1.0 / (1.0 + (-x).exp()),
        UnaryOp::Abs => x.abs(),
        UnaryOp::Sin => x.sin(),
        UnaryOp::Cos => x.cos(),
    }
}

fn eval_binary(op: BinaryOp, x: f64, y: f64) -> f64 {
    match op {
        BinaryOp::Add => x + y,
        BinaryOp::Sub => x - y,
        BinaryOp::Mul => x * y,
        BinaryOp::Div => x / y,
        BinaryOp::Max => x.max(y),
        BinaryOp::Min => x.min(y),
        BinaryOp::Pow => x.powf(y),
    }
}

/// A copy of `graph` computing in f64 wherever it computed in f32: nullary
/// ops and casts are rebuilt with the wider dtype, everything else follows
/// from its operands. Gradient checks run the interpreter on this.
pub fn promote_f64(graph: &Graph) -> Result<Graph, ShapeError> {
    let mut out = Graph::new(graph.name.clone());
    let mut map: Vec<NodeId> = Vec::with_capacity(graph.len());
    for id in graph.ids() {
        let node = graph.node(id);
        let args: Vec<NodeId> = node.args.iter().map(|a| map[a.index()]).collect();
        let dtype = if node.dtype == DType::F32 { DType::F64 } else { node.dtype };
        out.set_loc(node.loc.clone());
        map.push(out.add_op(&node.op, &args, dtype, &node.shape)?);
    }
    out.set_loc(None);
    for (name, id) in graph.outputs() {
        out.set_output(name.clone(), map[id.index()]);
    }
    Ok(out)
}
