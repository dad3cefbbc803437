//! Symbolic reverse-mode automatic differentiation.
//!
//! [`differentiate`] copies a forward graph and appends, for a scalar loss,
//! the backward nodes that compute its gradient with respect to chosen nodes
//! (usually the parameters). Every backward node is an ordinary primitive, so
//! later passes (simplification, fusion, codegen) treat forward and backward
//! alike; and every backward node carries the [`Loc`] of the forward node it
//! differentiates, so an error or a profile of the backward pass points at
//! source text.
//!
//! The rules live in one table, `vjp`: an exhaustive `match` on [`Op`] with
//! one arm per primitive. A primitive added to [`Op`] without a rule fails to
//! compile there; a rule that declines to produce a gradient an operand needs
//! is reported as [`GradError::NoRule`] rather than treated as zero.
//!
//! Choices where the derivative is not unique:
//! - `max(a, b)` sends the gradient to `a` where `a >= b`, else to `b`;
//!   `min(a, b)` to `a` where `a <= b`. So `relu(x) = max(x, 0)` has slope 1
//!   at 0.
//! - `abs` has slope +1 at 0.
//! - `reduce_max` and max pooling divide the gradient equally among all
//!   positions that equal the maximum (ties share it), which keeps the total
//!   gradient equal to the incoming one.
//! - Integer and bool values never carry gradients: `compare`, `argmax`,
//!   casts to integer types and the indices of `gather`/`scatter_add` stop
//!   the flow (their derivative is zero almost everywhere).
//! - `stop_gradient(x)` ([`Op::StopGradient`]) and the nodes listed in
//!   [`DiffOptions::stop_at`] pass no gradient to their operands.

use std::collections::HashSet;

use d2l_ir::{BinaryOp, CmpOp, DType, Graph, Loc, NodeId, Op, PoolKind, ReduceOp, Shape, ShapeError, UnaryOp};

/// How to differentiate.
#[derive(Clone, Debug, Default)]
pub struct DiffOptions {
    /// Nodes that gradients do not flow through, in addition to every
    /// [`Op::StopGradient`] node (`stop_gradient(x)` in the language). Such a
    /// node may still receive a gradient (if it is itself in `wrt`), but
    /// passes none to its operands, as if its value were a constant.
    pub stop_at: HashSet<NodeId>,
}

/// The result of [`differentiate`].
#[derive(Clone, Debug)]
pub struct Gradients {
    /// The forward graph (same node ids, same outputs) extended with the
    /// backward nodes, and one more output per `wrt` node named by
    /// [`grad_output_name`].
    pub graph: Graph,
    /// The loss node (in `graph`, which keeps the forward ids).
    pub loss: NodeId,
    /// `grads[i]` is the gradient of the loss with respect to `wrt[i]`: same
    /// shape and dtype as `wrt[i]`.
    pub grads: Vec<NodeId>,
    /// The `wrt` nodes the loss does not depend on differentiably (not
    /// connected, or only through integer values or `stop_at` nodes). Their
    /// gradient is an explicit zero; a front end may want to warn about them.
    pub disconnected: Vec<NodeId>,
}

/// Why a graph could not be differentiated.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum GradError {
    #[error("the graph has no output named `{0}` to differentiate")]
    NoSuchOutput(String),
    #[error("the loss `{name}` must be a scalar (shape [] or all dimensions 1), but it has shape {shape}")]
    LossNotScalar { name: String, shape: Shape },
    #[error("the loss `{name}` must be a float tensor, but it is {dtype}")]
    LossNotFloat { name: String, dtype: DType },
    #[error("cannot differentiate with respect to node %{0}: it is not in the graph")]
    UnknownNode(usize),
    #[error("cannot differentiate with respect to {what}: it is {dtype}, and only float tensors have gradients")]
    WrtNotFloat { what: String, dtype: DType },
    /// A gradient must flow into an operand of `op` and no rule provides it.
    #[error("{}no gradient rule for `{op}` (operand {operand})", at(.loc))]
    NoRule { op: &'static str, operand: usize, loc: Option<Loc> },
    /// A rule built an ill-typed node: a bug in this module, reported with
    /// the forward op it was differentiating.
    #[error("{}building the gradient of `{op}`: {message}", at(.loc))]
    Rule { op: &'static str, message: String, loc: Option<Loc> },
}

fn at(loc: &Option<Loc>) -> String {
    match loc {
        Some(l) => format!("{}:{}:{}: ", l.file, l.line, l.col),
        None => String::new(),
    }
}

/// The output name under which [`differentiate`] exposes the gradient of
/// `wrt`: `grad.<name>` for a parameter or input, `grad.%<index>` otherwise.
pub fn grad_output_name(graph: &Graph, wrt: NodeId) -> String {
    match &graph.node(wrt).op {
        Op::Param { name, .. } | Op::Input { name, .. } => format!("grad.{name}"),
        _ => format!("grad.%{}", wrt.index()),
    }
}

/// Differentiates the output `loss_output` with respect to every parameter.
pub fn differentiate_params(graph: &Graph, loss_output: &str, options: &DiffOptions) -> Result<Gradients, GradError> {
    differentiate(graph, loss_output, &graph.params(), options)
}

/// Extends a copy of `graph` with the gradient of its scalar float output
/// `loss_output` with respect to each node in `wrt` (float nodes of any
/// kind: parameters, inputs, intermediates).
pub fn differentiate(graph: &Graph, loss_output: &str, wrt: &[NodeId], options: &DiffOptions) -> Result<Gradients, GradError> {
    let loss = graph.output(loss_output).ok_or_else(|| GradError::NoSuchOutput(loss_output.into()))?;
    let loss_node = graph.node(loss);
    if !loss_node.dtype.is_float() {
        return Err(GradError::LossNotFloat { name: loss_output.into(), dtype: loss_node.dtype });
    }
    if loss_node.shape.numel() != 1 {
        return Err(GradError::LossNotScalar { name: loss_output.into(), shape: loss_node.shape.clone() });
    }
    for &w in wrt {
        if w.index() >= graph.len() {
            return Err(GradError::UnknownNode(w.index()));
        }
        let dtype = graph.dtype(w);
        if !dtype.is_float() {
            let what = match &graph.node(w).op {
                Op::Param { name, .. } | Op::Input { name, .. } => format!("`{name}`"),
                op => format!("node %{} ({})", w.index(), op.mnemonic()),
            };
            return Err(GradError::WrtNotFloat { what, dtype });
        }
    }

    // Which nodes carry a gradient: float values that depend on a `wrt` node
    // through differentiable edges. Index order is topological.
    let wrt_set: HashSet<NodeId> = wrt.iter().copied().collect();
    let stops = |id: NodeId| options.stop_at.contains(&id) || graph.node(id).op == Op::StopGradient;
    let mut carries = vec![false; graph.len()];
    for id in graph.ids() {
        let node = graph.node(id);
        carries[id.index()] =
            wrt_set.contains(&id) || (node.dtype.is_float() && !stops(id) && node.args.iter().any(|a| carries[a.index()]));
    }

    // The copy keeps every forward node id; backward nodes are appended.
    let mut g = graph.clone();
    let saved_loc = g.set_loc(None);
    let mut cotangent: Vec<Option<NodeId>> = vec![None; graph.len()];
    if carries[loss.index()] {
        g.set_loc(loss_node.loc.clone());
        cotangent[loss.index()] = Some(g.full(1.0, loss_node.dtype, loss_node.shape.clone()));
    }
    for id in (0..graph.len()).rev().map(NodeId::new) {
        let Some(dy) = cotangent[id.index()] else { continue };
        let node = graph.node(id);
        let needs: Vec<bool> = node.args.iter().map(|a| carries[a.index()]).collect();
        if stops(id) || !needs.contains(&true) {
            continue;
        }
        g.set_loc(node.loc.clone());
        let op = node.op.mnemonic();
        let rule_error = |e: ShapeError| GradError::Rule { op, message: e.0, loc: node.loc.clone() };
        let arg_grads = vjp(&mut g, id, dy, &needs).map_err(rule_error)?;
        for (operand, &arg) in node.args.iter().enumerate() {
            if !needs[operand] {
                continue;
            }
            let Some(&Some(grad)) = arg_grads.get(operand) else {
                return Err(GradError::NoRule { op, operand, loc: node.loc.clone() });
            };
            if g.shape(grad) != graph.shape(arg) || g.dtype(grad) != graph.dtype(arg) {
                let message = format!(
                    "the gradient of operand {operand} is {}{} but the operand is {}{}",
                    g.dtype(grad),
                    g.shape(grad),
                    graph.dtype(arg),
                    graph.shape(arg)
                );
                return Err(GradError::Rule { op, message, loc: node.loc.clone() });
            }
            // Fan-out: a value used several times gets the sum of its gradients.
            let total = match cotangent[arg.index()] {
                Some(previous) => g.add(previous, grad).map_err(rule_error)?,
                None => grad,
            };
            cotangent[arg.index()] = Some(total);
        }
    }

    let mut grads = Vec::with_capacity(wrt.len());
    let mut disconnected = Vec::new();
    for &w in wrt {
        let grad = match cotangent[w.index()] {
            Some(grad) => grad,
            None => {
                disconnected.push(w);
                g.set_loc(graph.node(w).loc.clone());
                g.full(0.0, graph.dtype(w), graph.shape(w).clone())
            }
        };
        g.set_output(grad_output_name(graph, w), grad);
        grads.push(grad);
    }
    g.set_loc(saved_loc);
    Ok(Gradients { graph: g, loss, grads, disconnected })
}

/// Short names for the elementwise builders the rules use most.
trait Arith {
    fn add(&mut self, a: NodeId, b: NodeId) -> Result<NodeId, ShapeError>;
    fn sub(&mut self, a: NodeId, b: NodeId) -> Result<NodeId, ShapeError>;
    fn mul(&mut self, a: NodeId, b: NodeId) -> Result<NodeId, ShapeError>;
    fn div(&mut self, a: NodeId, b: NodeId) -> Result<NodeId, ShapeError>;
    fn neg(&mut self, a: NodeId) -> Result<NodeId, ShapeError>;
    /// `value` in the shape and dtype of `like`.
    fn full_like(&mut self, value: f64, like: NodeId) -> NodeId;
}

impl Arith for Graph {
    fn add(&mut self, a: NodeId, b: NodeId) -> Result<NodeId, ShapeError> {
        self.binary(BinaryOp::Add, a, b)
    }
    fn sub(&mut self, a: NodeId, b: NodeId) -> Result<NodeId, ShapeError> {
        self.binary(BinaryOp::Sub, a, b)
    }
    fn mul(&mut self, a: NodeId, b: NodeId) -> Result<NodeId, ShapeError> {
        self.binary(BinaryOp::Mul, a, b)
    }
    fn div(&mut self, a: NodeId, b: NodeId) -> Result<NodeId, ShapeError> {
        self.binary(BinaryOp::Div, a, b)
    }
    fn neg(&mut self, a: NodeId) -> Result<NodeId, ShapeError> {
        self.unary(UnaryOp::Neg, a)
    }
    fn full_like(&mut self, value: f64, like: NodeId) -> NodeId {
        let (dtype, shape) = (self.dtype(like), self.shape(like).clone());
        self.full(value, dtype, shape)
    }
}

/// The operands of `node`, checked against the arity its rule expects.
fn operands<const N: usize>(g: &Graph, y: NodeId) -> Result<[NodeId; N], ShapeError> {
    let node = g.node(y);
    node.args.as_slice().try_into().map_err(|_| ShapeError(format!("expected {N} operands, found {}", node.args.len())))
}

fn dims<const N: usize>(g: &Graph, id: NodeId) -> Result<[usize; N], ShapeError> {
    let shape = g.shape(id);
    shape.0.as_slice().try_into().map_err(|_| ShapeError(format!("expected a rank-{N} tensor, found shape {shape}")))
}

/// `Some(grad())` when the operand needs a gradient: branches nobody needs
/// (e.g. the exponent of `pow`) are never built.
fn when(need: bool, grad: impl FnOnce() -> Result<NodeId, ShapeError>) -> Result<Option<NodeId>, ShapeError> {
    if need { grad().map(Some) } else { Ok(None) }
}

/// The gradient table: given the forward node `y` (whose operands are in
/// `g`) and the gradient `dy` of the loss with respect to it, builds the
/// gradient with respect to each operand whose `needs` flag is set. Returns
/// one entry per operand (`None`: no gradient flows there).
fn vjp(g: &mut Graph, y: NodeId, dy: NodeId, needs: &[bool]) -> Result<Vec<Option<NodeId>>, ShapeError> {
    let op = g.node(y).op.clone();
    let need = |i: usize| needs.get(i).copied().unwrap_or(false);
    Ok(match op {
        // No operands.
        Op::Input { .. } | Op::Param { .. } | Op::State { .. } | Op::Full { .. } | Op::Iota { .. } | Op::Rand { .. } => vec![],
        // Bool / integer results: piecewise constant, no gradient.
        Op::Compare(_) => vec![None, None],
        Op::ArgMax { .. } => vec![None],
        // Detached on purpose (`differentiate` never asks, this is for completeness).
        Op::StopGradient => vec![None],

        Op::Unary(u) => {
            let [x] = operands(g, y)?;
            let dx = match u {
                UnaryOp::Neg => g.neg(dy)?,
                UnaryOp::Exp => g.mul(dy, y)?,
                UnaryOp::Log => g.div(dy, x)?,
                UnaryOp::Sqrt => {
                    let two_y = g.add(y, y)?;
                    g.div(dy, two_y)?
                }
                UnaryOp::Tanh => {
                    let (one, y2) = (g.full_like(1.0, y), g.mul(y, y)?);
                    let slope = g.sub(one, y2)?;
                    g.mul(dy, slope)?
                }
                UnaryOp::Sigmoid => {
                    let one = g.full_like(1.0, y);
                    let one_minus_y = g.sub(one, y)?;
                    let slope = g.mul(y, one_minus_y)?;
                    g.mul(dy, slope)?
                }
                UnaryOp::Abs => {
                    let zero = g.full_like(0.0, x);
                    let negative = g.compare(CmpOp::Lt, x, zero)?;
                    let minus_dy = g.neg(dy)?;
                    g.select(negative, minus_dy, dy)?
                }
                UnaryOp::Sin => {
                    let cos = g.unary(UnaryOp::Cos, x)?;
                    g.mul(dy, cos)?
                }
                UnaryOp::Cos => {
                    let sin = g.unary(UnaryOp::Sin, x)?;
                    let dy_sin = g.mul(dy, sin)?;
                    g.neg(dy_sin)?
                }
            };
            vec![Some(dx)]
        }

        Op::Binary(b) => {
            let [lhs, rhs] = operands(g, y)?;
            match b {
                BinaryOp::Add => vec![Some(dy), Some(dy)],
                BinaryOp::Sub => vec![Some(dy), when(need(1), || g.neg(dy))?],
                BinaryOp::Mul => vec![when(need(0), || g.mul(dy, rhs))?, when(need(1), || g.mul(dy, lhs))?],
                BinaryOp::Div => {
                    // d(a/b)/db = -a/b² = -y/b.
                    let da = when(need(0), || g.div(dy, rhs))?;
                    let db = when(need(1), || {
                        let dy_y = g.mul(dy, y)?;
                        let q = g.div(dy_y, rhs)?;
                        g.neg(q)
                    })?;
                    vec![da, db]
                }
                BinaryOp::Max | BinaryOp::Min => {
                    let first_wins = g.compare(if b == BinaryOp::Max { CmpOp::Ge } else { CmpOp::Le }, lhs, rhs)?;
                    let zero = g.full_like(0.0, dy);
                    vec![when(need(0), || g.select(first_wins, dy, zero))?, when(need(1), || g.select(first_wins, zero, dy))?]
                }
                BinaryOp::Pow => {
                    // d(a^b)/da = b·a^(b-1); d(a^b)/db = a^b·log(a).
                    let da = when(need(0), || {
                        let one = g.full_like(1.0, rhs);
                        let b_minus_1 = g.sub(rhs, one)?;
                        let a_pow = g.binary(BinaryOp::Pow, lhs, b_minus_1)?;
                        let slope = g.mul(rhs, a_pow)?;
                        g.mul(dy, slope)
                    })?;
                    let db = when(need(1), || {
                        let log_a = g.unary(UnaryOp::Log, lhs)?;
                        let slope = g.mul(y, log_a)?;
                        g.mul(dy, slope)
                    })?;
                    vec![da, db]
                }
            }
        }

        Op::Select => {
            let [cond, _, _] = operands(g, y)?;
            let zero = g.full_like(0.0, dy);
            vec![None, when(need(1), || g.select(cond, dy, zero))?, when(need(2), || g.select(cond, zero, dy))?]
        }

        Op::Reduce { op: ReduceOp::Sum, .. } => {
            let [x] = operands(g, y)?;
            let shape = g.shape(x).clone();
            vec![Some(g.broadcast(dy, shape)?)]
        }
        Op::Reduce { op: ReduceOp::Max, axes } => {
            // Ties share the gradient equally.
            let [x] = operands(g, y)?;
            let (dtype, shape) = (g.dtype(x), g.shape(x).clone());
            let max = g.broadcast(y, shape.clone())?;
            let is_max = g.compare(CmpOp::Eq, x, max)?;
            let is_max = g.cast(is_max, dtype);
            let ties = g.reduce(ReduceOp::Sum, is_max, &axes)?;
            let share = g.div(dy, ties)?;
            let share = g.broadcast(share, shape)?;
            vec![Some(g.mul(is_max, share)?)]
        }

        Op::Reshape => {
            let [x] = operands(g, y)?;
            let shape = g.shape(x).clone();
            vec![Some(g.reshape(dy, shape)?)]
        }
        Op::Permute { perm } => {
            let mut inverse = vec![0; perm.len()];
            for (i, &p) in perm.iter().enumerate() {
                inverse[p] = i;
            }
            vec![Some(g.permute(dy, &inverse)?)]
        }
        Op::Broadcast => {
            // Sum over the axes broadcasting created or stretched.
            let [x] = operands(g, y)?;
            let (from, to) = (g.shape(x).clone(), g.shape(y).clone());
            let lead = to.rank() - from.rank();
            let axes: Vec<usize> = (0..to.rank()).filter(|&i| i < lead || (from.0[i - lead] == 1 && to.0[i] != 1)).collect();
            let summed = if axes.is_empty() { dy } else { g.reduce(ReduceOp::Sum, dy, &axes)? };
            vec![Some(g.reshape(summed, from)?)]
        }
        Op::Slice { starts, steps, .. } => {
            // Put each element back where it came from: interior padding
            // undoes the step, lo/hi padding the range.
            let [x] = operands(g, y)?;
            let (full, out) = (g.shape(x).clone(), g.shape(y).clone());
            let interior: Vec<usize> = steps.iter().map(|s| s - 1).collect();
            let hi: Vec<usize> = (0..full.rank()).map(|i| full.0[i] - starts[i] - spanned(out.0[i], steps[i])).collect();
            vec![Some(g.pad(dy, &starts, &hi, &interior, 0.0)?)]
        }
        Op::Pad { lo, interior, .. } => {
            let [x] = operands(g, y)?;
            let shape = g.shape(x).clone();
            let steps: Vec<usize> = interior.iter().map(|p| p + 1).collect();
            let ends: Vec<usize> = (0..shape.rank()).map(|i| lo[i] + spanned(shape.0[i], steps[i])).collect();
            vec![Some(g.slice(dy, &lo, &ends, &steps)?)]
        }
        Op::Concat { axis } => {
            let args = g.node(y).args.clone();
            let out = g.shape(y).clone();
            let mut offset = 0;
            let mut grads = Vec::with_capacity(args.len());
            for (k, &arg) in args.iter().enumerate() {
                let len = g.shape(arg).0[axis];
                grads.push(when(need(k), || {
                    let mut starts = vec![0; out.rank()];
                    let mut ends = out.0.clone();
                    (starts[axis], ends[axis]) = (offset, offset + len);
                    g.slice(dy, &starts, &ends, &vec![1; out.rank()])
                })?);
                offset += len;
            }
            grads
        }
        Op::MatMul => {
            // dA = dC·Bᵀ, dB = Aᵀ·dC: matmuls, so they reach the GEMM.
            let [a, b] = operands(g, y)?;
            let rank = g.shape(y).rank();
            let mut transpose: Vec<usize> = (0..rank).collect();
            transpose.swap(rank - 1, rank - 2);
            let da = when(need(0), || {
                let bt = g.permute(b, &transpose)?;
                g.matmul(dy, bt)
            })?;
            let db = when(need(1), || {
                let at = g.permute(a, &transpose)?;
                g.matmul(at, dy)
            })?;
            vec![da, db]
        }
        Op::Gather { axis } => {
            let [x, idx] = operands(g, y)?;
            let shape = g.shape(x).clone();
            vec![Some(g.scatter_add(idx, dy, shape, axis)?), None]
        }
        Op::ScatterAdd { axis } => {
            let [idx, _] = operands(g, y)?;
            vec![None, Some(g.gather(dy, idx, axis)?)]
        }
        Op::Cast => {
            let [x] = operands(g, y)?;
            let from = g.dtype(x);
            vec![if from.is_float() && g.dtype(y).is_float() { Some(g.cast(dy, from)) } else { None }]
        }
        Op::Conv2d { stride } => conv2d_vjp(g, y, dy, stride, needs)?,
        Op::Pool2d { kind, window, stride } => {
            let [x] = operands(g, y)?;
            vec![Some(pool2d_vjp(g, x, y, dy, kind, window, stride)?)]
        }
    })
}

/// Extent of `n` elements taken every `step`: from the first to the last, inclusive.
fn spanned(n: usize, step: usize) -> usize {
    if n == 0 { 0 } else { (n - 1) * step + 1 }
}

/// Reverses `x` along `axis`: a gather with indices `(k-1) - iota`.
fn flip(g: &mut Graph, x: NodeId, axis: usize) -> Result<NodeId, ShapeError> {
    let k = g.shape(x).0[axis];
    if k == 1 {
        return Ok(x);
    }
    let iota = g.iota(Shape(vec![k]), 0, DType::I64)?;
    let last = g.full((k - 1) as f64, DType::I64, Shape(vec![k]));
    let reversed = g.sub(last, iota)?;
    g.gather(x, reversed, axis)
}

/// Conv2d `y = x ⋆ w` (cross-correlation, stride s), split by phase: the
/// kernel taps `i ≡ p (mod s)` (one phase per residue of each spatial axis)
/// touch only the input positions `≡ p`, so each phase is a stride-1
/// convolution on undilated operands, and the phases interleave (interior
/// pads, summed). Dilating `dy` instead would multiply by `s0·s1 - 1` zeros
/// for every useful product. With stride 1 there is one phase:
/// - `dx`: `dy` zero-padded by `k-1` on each side (plus the rows/columns the
///   forward windows never reached), correlated with `w` flipped in both
///   spatial axes and with in/out channels swapped (per phase: the phase's
///   sub-kernel `w[:, :, p::s, q::s]`, and the phase's positions of `dx`);
/// - `dw`: `x` correlated with `dy`, treating the batch axis as the channel
///   axis of both (hence the permutes) (per phase: the strided slice
///   `x[:, :, p::s, q::s]`, giving the phase's taps of `dw`).
fn conv2d_vjp(g: &mut Graph, y: NodeId, dy: NodeId, stride: [usize; 2], needs: &[bool]) -> Result<Vec<Option<NodeId>>, ShapeError> {
    let [x, w] = operands(g, y)?;
    let [n, c, h, wd] = dims(g, x)?;
    let [o, _, kh, kw] = dims(g, w)?;
    let [_, _, ho, wo] = dims(g, y)?;
    let [s0, s1] = stride;
    let channels_first = [1, 0, 2, 3];
    // Along an axis with stride s: the kernel taps of phase p (p, p+s, ...
    // below k), and the input positions of phase r (r, r+s, ... below len).
    let taps = |k: usize, s: usize, p: usize| (k - p).div_ceil(s);
    let positions = |len: usize, s: usize, r: usize| (len - r).div_ceil(s);
    // Phases without taps (s > k) take no part: zeros there.
    let phases: Vec<(usize, usize)> = (0..s0.min(kh)).flat_map(|p| (0..s1.min(kw)).map(move |q| (p, q))).collect();
    let dx = when(needs.first() == Some(&true), || {
        let mut parts = Vec::with_capacity(phases.len());
        for &(r, t) in &phases {
            let (a, b) = (taps(kh, s0, r), taps(kw, s1, t));
            let (hr, wt) = (positions(h, s0, r), positions(wd, s1, t));
            // hr >= ho + a - 1: every position the forward reached, and zeros beyond.
            let padded = g.pad(dy, &[0, 0, a - 1, b - 1], &[0, 0, hr - ho, wt - wo], &[0; 4], 0.0)?;
            let sub = g.slice(w, &[0, 0, r, t], &[o, c, kh, kw], &[1, 1, s0, s1])?;
            let flipped = flip(g, sub, 2)?;
            let flipped = flip(g, flipped, 3)?;
            let kernel = g.permute(flipped, &channels_first)?;
            let part = g.conv2d(padded, kernel, [1, 1])?;
            let hi = [0, 0, h - r - (s0 * (hr - 1) + 1), wd - t - (s1 * (wt - 1) + 1)];
            parts.push(g.pad(part, &[0, 0, r, t], &hi, &[0, 0, s0 - 1, s1 - 1], 0.0)?);
        }
        sum(g, &parts)
    })?;
    let dw = when(needs.get(1) == Some(&true), || {
        let mut parts = Vec::with_capacity(phases.len());
        let mut dy_t = None;
        for &(p, q) in &phases {
            let (a, b) = (taps(kh, s0, p), taps(kw, s1, q));
            let ends = [n, c, p + s0 * (ho + a - 2) + 1, q + s1 * (wo + b - 2) + 1];
            let used = g.slice(x, &[0, 0, p, q], &ends, &[1, 1, s0, s1])?;
            let x_t = g.permute(used, &channels_first)?;
            let dy_t = match dy_t {
                Some(t) => t,
                None => *dy_t.insert(g.permute(dy, &channels_first)?),
            };
            let part_t = g.conv2d(x_t, dy_t, [1, 1])?;
            let part = g.permute(part_t, &channels_first)?;
            let hi = [0, 0, kh - p - (s0 * (a - 1) + 1), kw - q - (s1 * (b - 1) + 1)];
            parts.push(g.pad(part, &[0, 0, p, q], &hi, &[0, 0, s0 - 1, s1 - 1], 0.0)?);
        }
        sum(g, &parts)
    })?;
    Ok(vec![dx, dw])
}

/// Pooling, unrolled over the `kh·kw` offsets of the window: the strided
/// slice of `x` at offset (i, j) holds each window's element (i, j); its
/// share of `dy` goes back to those positions through interior padding (the
/// transpose of the strided slice).
fn pool2d_vjp(
    g: &mut Graph,
    x: NodeId,
    y: NodeId,
    dy: NodeId,
    kind: PoolKind,
    window: [usize; 2],
    stride: [usize; 2],
) -> Result<NodeId, ShapeError> {
    let [n, c, h, w] = dims(g, x)?;
    let [_, _, ho, wo] = dims(g, y)?;
    let (span_h, span_w) = (spanned(ho, stride[0]), spanned(wo, stride[1]));
    let offsets: Vec<(usize, usize)> = (0..window[0]).flat_map(|i| (0..window[1]).map(move |j| (i, j))).collect();
    let place_back = |g: &mut Graph, v: NodeId, (i, j): (usize, usize)| {
        let hi = [0, 0, h - i - span_h, w - j - span_w];
        g.pad(v, &[0, 0, i, j], &hi, &[0, 0, stride[0] - 1, stride[1] - 1], 0.0)
    };
    let mut parts = Vec::with_capacity(offsets.len());
    match kind {
        PoolKind::Avg => {
            let size = g.full_like((window[0] * window[1]) as f64, dy);
            let share = g.div(dy, size)?;
            for &at in &offsets {
                parts.push(place_back(g, share, at)?);
            }
        }
        PoolKind::Max => {
            // Ties within a window share the gradient equally.
            let dtype = g.dtype(x);
            let mut masks = Vec::with_capacity(offsets.len());
            for &(i, j) in &offsets {
                let taken = g.slice(x, &[0, 0, i, j], &[n, c, i + span_h, j + span_w], &[1, 1, stride[0], stride[1]])?;
                let is_max = g.compare(CmpOp::Eq, taken, y)?;
                masks.push(g.cast(is_max, dtype));
            }
            let ties = sum(g, &masks)?;
            let share = g.div(dy, ties)?;
            for (&mask, &at) in masks.iter().zip(&offsets) {
                let part = g.mul(mask, share)?;
                parts.push(place_back(g, part, at)?);
            }
        }
    }
    sum(g, &parts)
}

fn sum(g: &mut Graph, terms: &[NodeId]) -> Result<NodeId, ShapeError> {
    let (&first, rest) = terms.split_first().ok_or_else(|| ShapeError("sum of no terms".into()))?;
    rest.iter().try_fold(first, |acc, &t| g.add(acc, t))
}
