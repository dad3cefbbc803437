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
//! - Cropped convolutions: a step-1 spatial slice of a stride-1 `conv2d`
//!   that nothing else reads becomes a `conv2d` of just the input window
//!   it needs (through a zero pad, a smaller pad). Autodiff makes these:
//!   the gradient of a padded input is the gradient of the pad's output,
//!   cropped, and computing only the crop saves most of the work on small
//!   feature maps (a 3x3 map padded to 5x5: 9 pixels instead of 25).
//! - Sums of products: `A1 B1 + A2 B2` → `[A1 A2] [B1; B2]`, one product
//!   over the concatenated inner dimension (`merge_matmul_sum`).
//! - One-hot products: `one_hot(i) @ W` → `take(W, i)` and
//!   `one_hot(i)ᵀ @ D` → `scatter_add(i, D)` (`one_hot_product`).
//! - Biases of picked rows: `take(W, i) + b` → `take(W + b, i)`
//!   (`bias_into_table`).
//! - Slices of picked rows: `take(W, i)[a..b]` → `take(W, i[a..b])` when
//!   only slices read the rows (`slice_of_taken_rows`).
//! - Sums of zero pads that tile their result along one axis → the concat
//!   of the pieces (`pads_as_concat`).
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

use d2l_ir::{BinaryOp, CmpOp, DType, Graph, NodeId, Op, ReduceOp, Shape, ShapeError, UnaryOp};

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
    // Folding can orphan the constants it folded (`x*1` leaves the 1 dead),
    // and a rewrite can expose another to the next sweep; sweep again until
    // the size stops changing. Every rule but one shrinks the graph; that
    // one (`slice_of_taken_rows`) moves a slice closer to the inputs, which
    // it can do only finitely often.
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
    let users = user_counts(graph);
    let sliced = read_only_by_slices(graph);
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
        if let Some(cropped) = crop_conv(&mut out, graph, id, &map, &users)? {
            map[id.index()] = Some(cropped);
            continue;
        }
        if let Some(merged) = merge_matmul_sum(&mut out, graph, id, &map, &users)? {
            map[id.index()] = Some(merged);
            continue;
        }
        if let Some(taken) = one_hot_product(&mut out, &node.op, &args)? {
            map[id.index()] = Some(taken);
            continue;
        }
        if let Some(taken) = bias_into_table(&mut out, graph, id, &map, &users)? {
            map[id.index()] = Some(taken);
            continue;
        }
        if let Some(taken) = slice_of_taken_rows(&mut out, graph, id, &map, &sliced)? {
            map[id.index()] = Some(taken);
            continue;
        }
        if let Some(joined) = pads_as_concat(&mut out, &node.op, &args)? {
            map[id.index()] = Some(joined);
            continue;
        }
        let new = match rewrite(&out, &node.op, &args, node.dtype) {
            Rewrite::To(existing) => existing,
            Rewrite::Full(value) => intern(&mut out, &mut built, &Op::Full { value }, &[], node.dtype, &node.shape)?,
            Rewrite::Op(op, args) => intern(&mut out, &mut built, &op, &args, node.dtype, &node.shape)?,
            Rewrite::Keep => intern(&mut out, &mut built, &node.op, &args, node.dtype, &node.shape)?,
        };
        map[id.index()] = Some(new);
    }
    out.set_loc(None);
    for o in graph.outputs() {
        if let Some(new) = map[o.node.index()] {
            out.push_output(o.at(new));
        }
    }
    Ok((out, map))
}

/// Outputs, parameters, inputs, and everything they depend on.
fn live_nodes(graph: &Graph) -> Vec<bool> {
    let mut live = vec![false; graph.len()];
    for id in graph.outputs().iter().map(|o| &o.node) {
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

/// How many times each node is read: as an operand (once per use) or as an output.
fn user_counts(graph: &Graph) -> Vec<usize> {
    let mut users = vec![0; graph.len()];
    for id in graph.ids() {
        for a in &graph.node(id).args {
            users[a.index()] += 1;
        }
    }
    for id in graph.outputs().iter().map(|o| &o.node) {
        users[id.index()] += 1;
    }
    users
}

/// `slice(conv2d(x, w))` over whole batch and channel axes, step 1, of a
/// stride-1 convolution read only by the slice: the convolution of the
/// window of `x` those outputs read (`[start, end + k - 1)` on each spatial
/// axis). A window of a zero pad is a smaller pad of a slice of its operand,
/// so the new convolution still applies the pad itself. `map` sends nodes of
/// `graph` to `out`; `None`: the rule does not apply.
fn crop_conv(out: &mut Graph, graph: &Graph, id: NodeId, map: &NodeMap, users: &[usize]) -> Result<Option<NodeId>, ShapeError> {
    let node = graph.node(id);
    let Op::Slice { starts, ends, steps } = &node.op else { return Ok(None) };
    let conv = node.args[0];
    let Op::Conv2d { stride: [1, 1] } = graph.node(conv).op else { return Ok(None) };
    let full = graph.shape(conv).dims();
    if users[conv.index()] != 1 || full.len() != 4 || steps.iter().any(|&s| s != 1) || starts[..2] != [0, 0] || ends[..2] != full[..2] {
        return Ok(None);
    }
    let (x, w) = (graph.node(conv).args[0], graph.node(conv).args[1]);
    let x_dims = graph.shape(x).dims();
    let k = &graph.shape(w).dims()[2..];
    // The input window, in x's coordinates, per spatial axis.
    let window = |d: usize| (starts[d], ends[d] + k[d - 2] - 1);
    let mapped = |n: NodeId| map[n.index()].ok_or_else(|| ShapeError(format!("operand %{} of a live node is dead", n.index())));
    let input = match &graph.node(x).op {
        Op::Pad { lo, hi, interior, value }
            if *value == 0.0 && interior.iter().all(|&i| i == 0) && lo[..2] == [0, 0] && hi[..2] == [0, 0] =>
        {
            let x0 = graph.node(x).args[0];
            let x0_dims = graph.shape(x0).dims();
            let (mut s0, mut e0) = (vec![0, 0], x0_dims[..2].to_vec());
            let (mut new_lo, mut new_hi) = (vec![0, 0], vec![0, 0]);
            for d in 2..4 {
                let (a, b) = window(d);
                let (l, len) = (lo[d], x0_dims[d]);
                let (from, to) = (a.max(l) - l, b.min(l + len).saturating_sub(l));
                if from >= to {
                    return Ok(None); // the window reads only padding
                }
                s0.push(from);
                e0.push(to);
                new_lo.push(l.saturating_sub(a));
                new_hi.push(b.saturating_sub(l + len));
            }
            let inner = out.slice(mapped(x0)?, &s0, &e0, &[1; 4])?;
            out.pad(inner, &new_lo, &new_hi, &[0; 4], 0.0)?
        }
        _ => {
            let (a2, b2) = window(2);
            let (a3, b3) = window(3);
            out.slice(mapped(x)?, &[0, 0, a2, a3], &[x_dims[0], x_dims[1], b2, b3], &[1; 4])?
        }
    };
    Ok(Some(out.conv2d(input, mapped(w)?, [1, 1])?))
}

/// `add(matmul(A1, B1), matmul(A2, B2))` of 2-D products that only the add
/// reads → `matmul(concat([A1, A2], 1), concat([B1, B2], 0))`: one product
/// over the summed inner dimension. Autodiff makes such sums (the gradient
/// of a weight used at every step of an unrolled loop is one product per
/// step, added up), and one long product runs at the GEMM's rate where many
/// short ones and the additions between them do not. A product that is
/// already such a concatenation contributes its parts, so a chain of
/// additions becomes one product.
fn merge_matmul_sum(out: &mut Graph, graph: &Graph, id: NodeId, map: &NodeMap, users: &[usize]) -> Result<Option<NodeId>, ShapeError> {
    let node = graph.node(id);
    if node.op != Op::Binary(BinaryOp::Add) || node.args.len() != 2 || !node.dtype.is_float() {
        return Ok(None);
    }
    let mut parts = Vec::new();
    for &a in &node.args {
        let (Some(new), 1) = (map[a.index()], users[a.index()]) else { return Ok(None) };
        let product = out.node(new);
        if product.op != Op::MatMul || product.shape.rank() != 2 {
            return Ok(None);
        }
        let (x, y) = (product.args[0], product.args[1]);
        match (&out.node(x).op, &out.node(y).op) {
            // Parts of an earlier merge: pairs of equal inner sizes.
            (Op::Concat { axis: 1 }, Op::Concat { axis: 0 })
                if out.node(x).args.len() == out.node(y).args.len()
                    && out.node(x).args.iter().zip(&out.node(y).args).all(|(&p, &q)| out.shape(p).dims()[1] == out.shape(q).dims()[0]) =>
            {
                parts.extend(out.node(x).args.iter().copied().zip(out.node(y).args.iter().copied()));
            }
            _ => parts.push((x, y)),
        }
    }
    let (xs, ys): (Vec<NodeId>, Vec<NodeId>) = parts.into_iter().unzip();
    let x = out.concat(&xs, 1)?;
    let y = out.concat(&ys, 0)?;
    Ok(Some(out.matmul(x, y)?))
}

/// The class indices `idx` (shape `[.., 1]`, M of them) and class count
/// `n` of a one-hot matrix `x` of shape `[M, n]`: `cast(idx == iota)` over
/// `n` classes, flattened to `[M, n]` by reshapes (the `one_hot` builtin's
/// expansion).
fn one_hot_indices(g: &Graph, x: NodeId) -> Option<(NodeId, usize)> {
    let &[m, n] = g.shape(x).dims() else { return None };
    let mut x = x;
    while g.node(x).op == Op::Reshape {
        x = g.node(x).args[0];
    }
    let cast = g.node(x);
    if cast.op != Op::Cast || !cast.dtype.is_float() {
        return None;
    }
    let eq = g.node(cast.args[0]);
    if eq.op != Op::Compare(CmpOp::Eq) {
        return None;
    }
    let rank = eq.shape.rank();
    if eq.shape.dims().last() != Some(&n) {
        return None;
    }
    let is_iota = |a: NodeId| g.node(a).op == Op::Iota { axis: rank - 1 };
    let spread = |a: NodeId| {
        let b = g.node(a);
        (b.op == Op::Broadcast && g.shape(b.args[0]).rank() == rank && g.shape(b.args[0]).dims().last() == Some(&1)).then(|| b.args[0])
    };
    match (eq.args[0], eq.args[1]) {
        (i, c) | (c, i) if is_iota(c) && spread(i).is_some_and(|idx| g.shape(idx).numel() == m) => Some((spread(i)?, n)),
        _ => None,
    }
}

/// A product with a one-hot matrix picks rows instead of multiplying:
/// `one_hot(i) @ W` → `take(W, i)`, and the gradient autodiff makes of it,
/// `one_hot(i)ᵀ @ D` → `scatter_add(i, D)`. The language models feed
/// one-hot characters to their recurrent layers as the course does, and the
/// products cost V times the work of the rows they select. The values are
/// the product's (for the forward pass exactly; the gradient adds the same
/// rows in another order). An index outside `0..n` is an error afterwards,
/// as for `take`, where the product would have given a zero row.
fn one_hot_product(out: &mut Graph, op: &Op, args: &[NodeId]) -> Result<Option<NodeId>, ShapeError> {
    let (&[a, b], Op::MatMul) = (args, op) else { return Ok(None) };
    if out.shape(a).rank() != 2 || out.shape(b).rank() != 2 {
        return Ok(None);
    }
    // The M indices as a vector.
    let flat = |out: &mut Graph, idx: NodeId| {
        let m = out.shape(idx).numel();
        out.reshape(idx, Shape(vec![m]))
    };
    if let Some((idx, _)) = one_hot_indices(out, a) {
        let idx = flat(out, idx)?;
        return out.gather(b, idx, 0).map(Some);
    }
    let transposed = out.node(a);
    if transposed.op == (Op::Permute { perm: vec![1, 0] })
        && let Some((idx, n)) = one_hot_indices(out, transposed.args[0])
    {
        let idx = flat(out, idx)?;
        let g = out.shape(b).dims()[1];
        return out.scatter_add(idx, b, Shape(vec![n, g]), 0).map(Some);
    }
    Ok(None)
}

/// `take(W, i) + b` → `take(W + b, i)`, for a table `W` of `n` rows of `K`
/// and a bias `b` of `K` broadcast over the picked rows, when no more rows
/// are in the table than are picked: a language model's input projection
/// (after `one_hot_product`) adds its bias to 28 rows instead of 1,120,
/// and the picked rows are written once instead of written, read and
/// written again. Each value is the same single addition, bit for bit.
fn bias_into_table(out: &mut Graph, graph: &Graph, id: NodeId, map: &NodeMap, users: &[usize]) -> Result<Option<NodeId>, ShapeError> {
    let node = graph.node(id);
    if node.op != Op::Binary(BinaryOp::Add) || !node.dtype.is_float() {
        return Ok(None);
    }
    for (x, y) in [(node.args[0], node.args[1]), (node.args[1], node.args[0])] {
        // x: rows taken from a table (through reshapes) that nothing else reads.
        let mut taken = x;
        while users[taken.index()] == 1 && graph.node(taken).op == Op::Reshape {
            taken = graph.node(taken).args[0];
        }
        let (Some(taken_new), Some(bias_new)) = (map[taken.index()], map[y.index()]) else { continue };
        if users[taken.index()] != 1 || out.node(taken_new).op != (Op::Gather { axis: 0 }) {
            continue;
        }
        let (table, idx) = (out.node(taken_new).args[0], out.node(taken_new).args[1]);
        let &[n, k] = out.shape(table).dims() else { continue };
        // y: a bias of K broadcast over every leading axis.
        let spread = out.node(bias_new);
        if spread.op != Op::Broadcast || out.shape(spread.args[0]).dims() != [k] || node.shape.dims().last() != Some(&k) {
            continue;
        }
        if n > out.shape(idx).numel() {
            continue;
        }
        let bias = out.broadcast(spread.args[0], Shape(vec![n, k]))?;
        let biased = out.binary(BinaryOp::Add, table, bias)?;
        let picked = out.gather(biased, idx, 0)?;
        return out.reshape(picked, node.shape.clone()).map(Some);
    }
    Ok(None)
}

/// For each node, whether it is read, and read only by slices (directly or
/// through reshapes that only slices read); outputs are read whole.
fn read_only_by_slices(graph: &Graph) -> Vec<bool> {
    let mut readers: Vec<Vec<NodeId>> = vec![Vec::new(); graph.len()];
    for id in graph.ids() {
        for a in &graph.node(id).args {
            readers[a.index()].push(id);
        }
    }
    let mut whole = vec![false; graph.len()];
    for o in graph.outputs() {
        whole[o.node.index()] = true;
    }
    let mut sliced = vec![false; graph.len()];
    for id in (0..graph.len()).rev() {
        sliced[id] = !whole[id]
            && !readers[id].is_empty()
            && readers[id].iter().all(|r| match graph.node(*r).op {
                Op::Slice { .. } => true,
                Op::Reshape => sliced[r.index()],
                _ => false,
            });
    }
    sliced
}

/// `take(W, i)[s]` → `take(W, i[s])` for a table `W` of rows of `K`, a
/// slice `s` that keeps whole rows (through reshapes that keep the last
/// axis), when only slices read the taken rows. A language model's input
/// projection is taken for all steps at once and each step reads its
/// slice: taken per step instead, each step's rows are written into a
/// buffer the step's cell reads while it is still in cache, and the block
/// of all steps' rows is never written. The values are the same copies.
fn slice_of_taken_rows(out: &mut Graph, graph: &Graph, id: NodeId, map: &NodeMap, sliced: &[bool]) -> Result<Option<NodeId>, ShapeError> {
    let node = graph.node(id);
    let Op::Slice { starts, ends, steps } = &node.op else { return Ok(None) };
    let dims = graph.shape(node.args[0]).dims();
    let Some(&k) = dims.last() else { return Ok(None) };
    let last = dims.len() - 1;
    if starts[last] != 0 || ends[last] != k || steps[last] != 1 {
        return Ok(None);
    }
    // Through reshapes that keep rows of K whole, to a take that only
    // slices read.
    let mut taken = node.args[0];
    while graph.node(taken).op == Op::Reshape && graph.shape(taken).dims().last() == Some(&k) {
        taken = graph.node(taken).args[0];
    }
    let t = graph.node(taken);
    if t.op != (Op::Gather { axis: 0 }) || graph.shape(t.args[0]).rank() != 2 || graph.shape(taken).dims().last() != Some(&k) || !sliced[taken.index()] {
        return Ok(None);
    }
    let (Some(table), Some(idx)) = (map[t.args[0].index()], map[t.args[1].index()]) else { return Ok(None) };
    let rows = out.reshape(idx, Shape(dims[..last].to_vec()))?;
    let picked = out.slice(rows, &starts[..last], &ends[..last], &steps[..last])?;
    out.gather(table, picked, 0).map(Some)
}

/// The nonzero pieces of a float value that is zero except for blocks
/// along one axis: `(axis, [(start, node)])`, sorted and disjoint. A zero
/// pad along one axis is one block; a concat is its operands; a sum of such
/// values along the same axis with disjoint blocks is the union.
fn blocks(g: &Graph, x: NodeId, depth: usize) -> Option<(usize, Vec<(usize, NodeId)>)> {
    let node = g.node(x);
    match &node.op {
        Op::Pad { lo, hi, interior, value } if *value == 0.0 && interior.iter().all(|&i| i == 0) => {
            let mut padded = (0..lo.len()).filter(|&i| lo[i] + hi[i] > 0);
            let axis = padded.next()?;
            padded.next().is_none().then(|| (axis, vec![(lo[axis], node.args[0])]))
        }
        Op::Concat { axis } => {
            let mut at = 0;
            let pieces = node.args.iter().map(|&p| {
                let start = at;
                at += g.shape(p).dims()[*axis];
                (start, p)
            });
            Some((*axis, pieces.collect()))
        }
        Op::Binary(BinaryOp::Add) if depth > 0 => union(g, blocks(g, node.args[0], depth - 1)?, blocks(g, node.args[1], depth - 1)?),
        _ => None,
    }
}

/// The blocks of a sum of two values of [`blocks`]: both along one axis,
/// none overlapping.
fn union(g: &Graph, (axis, mut pieces): (usize, Vec<(usize, NodeId)>), (other, more): (usize, Vec<(usize, NodeId)>)) -> Option<(usize, Vec<(usize, NodeId)>)> {
    if other != axis {
        return None;
    }
    pieces.extend(more);
    pieces.sort_by_key(|&(start, _)| start);
    let disjoint = pieces.windows(2).all(|w| w[0].0 + g.shape(w[0].1).dims()[axis] <= w[1].0);
    disjoint.then_some((axis, pieces))
}

/// A sum of zero pads whose blocks tile the result along one axis → the
/// concat of the blocks. Autodiff makes these: the gradient of slices of
/// one value (a GRU's three gates of one product, a sequence's steps) is
/// each slice's gradient padded to the whole and summed. A concat copies
/// each block once; the pads filled whole buffers with zeros and the sums
/// read them back.
fn pads_as_concat(out: &mut Graph, op: &Op, args: &[NodeId]) -> Result<Option<NodeId>, ShapeError> {
    let (&[x, y], Op::Binary(BinaryOp::Add)) = (args, op) else { return Ok(None) };
    if !out.dtype(x).is_float() {
        return Ok(None);
    }
    // Deep enough for a sequence's steps, bounded so a long chain of
    // additions is not walked from every node of it.
    const DEPTH: usize = 256;
    let Some((axis, pieces)) = blocks(out, x, DEPTH).zip(blocks(out, y, DEPTH)).and_then(|(a, b)| union(out, a, b)) else { return Ok(None) };
    // Disjoint; they tile the axis when they also leave no gap.
    let covered: usize = pieces.iter().map(|&(_, p)| out.shape(p).dims()[axis]).sum();
    if covered != out.shape(x).dims()[axis] {
        return Ok(None);
    }
    let parts: Vec<NodeId> = pieces.into_iter().map(|(_, p)| p).collect();
    out.concat(&parts, axis).map(Some)
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
    for o in graph.outputs() {
        out.push_output(o.at(map[o.node.index()]));
    }
    Ok(out)
}
