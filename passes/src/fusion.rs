//! Fusion: partitions a graph into kernels, by op kind, with a few
//! directional rules (as XLA, Inductor and tinygrad do), in one forward
//! sweep so that compiling stays in milliseconds:
//!
//! 1. Chains of elementwise ops (unary, binary, compare, select, cast) of one
//!    shape become one loop nest. Constants (`full`, `iota`) and views
//!    (`broadcast`, `permute`, `slice`, `reshape`, `stop_gradient`) are not
//!    kernels at all: they become constant operands, index arithmetic and
//!    strided loads inside the loops that read them.
//! 2. A reduction joins the loop that computes its operand (elementwise
//!    producers fuse into reductions); the loop then also writes whatever
//!    other values it computes that are needed elsewhere.
//! 3. Elementwise consumers of a `matmul` or `conv2d` join it as an epilogue
//!    loop (bias, activation, their gradients, the optimizer update of a
//!    weight gradient), run right after the GEMM while its output is in cache.
//! 4. Layout and indexing ops (`pad`, `concat`, `gather`, `scatter_add`,
//!    pooling, `argmax`, `rand`) are kernels of their own, run by library
//!    routines on contiguous operands. A sum of zero-pads (the gradient of
//!    pooling: one interior pad per window offset) is one routine that
//!    scatters every operand into a single output, instead of one full-size
//!    buffer per pad plus a loop adding them. A zero pad of a convolution's
//!    input's spatial axes is part of the convolution (it reads the unpadded
//!    input and skips the zeros).
//!
//! A merge is refused when it would make the kernel graph cyclic (a kernel
//! reading, through another kernel, a value it computes itself), or would
//! read a reduction's result in the loop that is still computing it.
//!
//! After the sweep, a cheap value that a loop computes only for one later
//! loop (a gradient's factor such as `1 - tanh(c)^2`, placed beside
//! `tanh(c)` in the forward loop) moves into that loop, which recomputes it
//! from the value it reads anyway: one buffer fewer written and read back
//! (`sink_cheap_values`).
//!
//! [`text`] prints the result (`d2l ir --stage fused`).

use std::fmt::Write;

use d2l_ir::{BinaryOp, DType, Graph, NodeId, Op, Shape, UnaryOp};

/// `offset + Σ strides[d] · i[d]` over the indices `i` of a node's shape: the
/// element a strided view reads, or the value an index expression (iota)
/// takes. Strides may be 0 (broadcast); all are in elements.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Affine {
    pub offset: i64,
    pub strides: Vec<i64>,
}

impl Affine {
    /// Row-major contiguous access of `dims`.
    pub fn contiguous(dims: &[usize]) -> Affine {
        Affine { offset: 0, strides: Shape(dims.to_vec()).strides().into_iter().map(|s| s as i64).collect() }
    }

    /// Whether this is the row-major layout of `dims` itself (size-1 and
    /// empty axes may have any stride).
    pub fn is_contiguous(&self, dims: &[usize]) -> bool {
        if dims.contains(&0) {
            return true;
        }
        let want = Affine::contiguous(dims);
        self.offset == 0 && dims.iter().zip(self.strides.iter().zip(&want.strides)).all(|(&d, (s, w))| d == 1 || s == w)
    }

    /// The map of `op` applied to a value read through `self` (`from` are
    /// the operand's dims, `to` the result's). `None` when a reshape cannot
    /// be expressed with strides (it would need a copy).
    pub fn through(&self, op: &Op, from: &[usize], to: &[usize]) -> Option<Affine> {
        match op {
            Op::Reshape => reshape_strides(from, &self.strides, to).map(|strides| Affine { offset: self.offset, strides }),
            Op::StopGradient => Some(self.clone()),
            Op::Permute { perm } => Some(Affine { offset: self.offset, strides: perm.iter().map(|&p| self.strides[p]).collect() }),
            Op::Broadcast => {
                let lead = to.len().checked_sub(from.len())?;
                let mut strides = vec![0; to.len()];
                for (j, &d) in from.iter().enumerate() {
                    strides[lead + j] = if d == to[lead + j] { self.strides[j] } else { 0 };
                }
                Some(Affine { offset: self.offset, strides })
            }
            Op::Slice { starts, steps, .. } => {
                let empty = to.contains(&0);
                let offset = self.offset
                    + if empty { 0 } else { starts.iter().zip(&self.strides).map(|(&s, &st)| s as i64 * st).sum::<i64>() };
                Some(Affine { offset, strides: self.strides.iter().zip(steps).map(|(&s, &k)| s * k as i64).collect() })
            }
            _ => None,
        }
    }

    /// The map of a gather along `axis` of a value read through `self`, with
    /// indices `idx` (an affine function of the index positions): the axis
    /// is replaced by the index's axes.
    pub fn gathered(&self, axis: usize, idx: &Affine) -> Affine {
        let step = self.strides[axis];
        let mut strides = self.strides[..axis].to_vec();
        strides.extend(idx.strides.iter().map(|&s| s * step));
        strides.extend(&self.strides[axis + 1..]);
        Affine { offset: self.offset + idx.offset * step, strides }
    }
}

/// For a gather whose indices are an affine function of their position and
/// all in range (a flip's `k-1-iota`, a strided pick): the axis and the
/// index map. Such a gather reads its operand with strides, like a view.
pub fn affine_gather(graph: &Graph, id: NodeId) -> Option<(usize, Affine)> {
    let node = graph.node(id);
    let Op::Gather { axis } = node.op else { return None };
    let (x, idx) = (node.args[0], node.args[1]);
    let map = affine_index(graph, idx, 8)?;
    let dims = graph.shape(idx).dims();
    if dims.contains(&0) {
        return Some((axis, map));
    }
    let (mut lo, mut hi) = (map.offset, map.offset);
    for (&s, &d) in map.strides.iter().zip(dims) {
        let span = s * (d as i64 - 1);
        lo += span.min(0);
        hi += span.max(0);
    }
    (lo >= 0 && hi < graph.shape(x).dims()[axis] as i64).then_some((axis, map))
}

/// The value of an i64 node as `offset + Σ strides·position`, when it is
/// iota and integral constants combined by add, sub, multiplication by a
/// constant and views (looking at most `depth` nodes deep).
fn affine_index(graph: &Graph, id: NodeId, depth: usize) -> Option<Affine> {
    let node = graph.node(id);
    if node.dtype != DType::I64 || depth == 0 {
        return None;
    }
    let dims = node.shape.dims();
    let arg = |k: usize| affine_index(graph, node.args[k], depth - 1);
    let constant = |m: &Affine| m.strides.iter().all(|&s| s == 0).then_some(m.offset);
    match &node.op {
        Op::Iota { axis } => Some(iota_map(dims, *axis)),
        Op::Full { value } if value.fract() == 0.0 && value.abs() < 1e15 => Some(Affine { offset: *value as i64, strides: vec![0; dims.len()] }),
        Op::Binary(b @ (BinaryOp::Add | BinaryOp::Sub | BinaryOp::Mul)) => {
            let (l, r) = (arg(0)?, arg(1)?);
            let zip = |f: fn(i64, i64) -> i64| Affine { offset: f(l.offset, r.offset), strides: l.strides.iter().zip(&r.strides).map(|(&a, &b)| f(a, b)).collect() };
            match b {
                BinaryOp::Add => Some(zip(|a, b| a + b)),
                BinaryOp::Sub => Some(zip(|a, b| a - b)),
                _ => {
                    let (c, m) = match (constant(&l), constant(&r)) {
                        (Some(c), _) => (c, r),
                        (_, Some(c)) => (c, l),
                        _ => return None,
                    };
                    Some(Affine { offset: m.offset * c, strides: m.strides.iter().map(|&s| s * c).collect() })
                }
            }
        }
        op if is_view_op(op) => arg(0)?.through(op, graph.shape(node.args[0]).dims(), dims),
        _ => None,
    }
}

/// Strides for viewing `(dims, strides)` as `to` without moving data
/// (NumPy's no-copy reshape): each group of old axes that merges into or
/// splits across new axes must itself be one strided run.
fn reshape_strides(dims: &[usize], strides: &[i64], to: &[usize]) -> Option<Vec<i64>> {
    if dims.contains(&0) || to.contains(&0) {
        return Some(Affine::contiguous(to).strides);
    }
    let old: Vec<(usize, i64)> = dims.iter().copied().zip(strides.iter().copied()).filter(|&(d, _)| d != 1).collect();
    let new_axes: Vec<usize> = (0..to.len()).filter(|&k| to[k] != 1).collect();
    let mut out = vec![0i64; to.len()];
    let (mut oi, mut ni) = (0, 0);
    while ni < new_axes.len() && oi < old.len() {
        let (mut oj, mut nj) = (oi + 1, ni + 1);
        let (mut op, mut np) = (old[oi].0, to[new_axes[ni]]);
        while op != np {
            if np < op {
                np *= to[*new_axes.get(nj)?];
                nj += 1;
            } else {
                op *= old.get(oj)?.0;
                oj += 1;
            }
        }
        for k in oi..oj - 1 {
            if old[k].1 != old[k + 1].1 * old[k + 1].0 as i64 {
                return None;
            }
        }
        out[new_axes[nj - 1]] = old[oj - 1].1;
        for k in (ni..nj - 1).rev() {
            out[new_axes[k]] = out[new_axes[k + 1]] * to[new_axes[k + 1]] as i64;
        }
        oi = oj;
        ni = nj;
    }
    (oi == old.len() && ni == new_axes.len()).then_some(out)
}

/// Where the elements of an operand come from, as a kernel reads them.
#[derive(Clone, Debug, PartialEq)]
pub enum Source {
    /// The same value everywhere.
    Const(f64),
    /// An index expression (iota and views of it), as i64.
    Index(Affine),
    /// Elements of `base`'s buffer (a fed value or one a kernel writes).
    Buffer { base: NodeId, map: Affine },
}

/// How a node's value exists at run time.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    /// No output depends on it.
    Unused,
    /// An input, parameter or state: the caller's buffer.
    Feed,
    /// A constant, an index expression or a strided view of another buffer:
    /// no kernel, its readers compute it.
    View(Source),
    /// Computed in the loop of kernel `kernel`; `stored` when it is also
    /// written to a buffer of its own (needed elsewhere).
    Loop { kernel: usize, stored: bool },
    /// Written to its own buffer by the root op of kernel `kernel`.
    Root { kernel: usize },
    /// Part of the routine of kernel `kernel` (a pad or add inside a pad sum).
    Absorbed { kernel: usize },
}

/// What a kernel starts with before its loop (if any).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RootKind {
    /// A GEMM: `matmul` or `conv2d`; the loop is its epilogue.
    Contraction,
    /// A library routine (pad, concat, gather, ...); no loop.
    Routine,
}

/// One kernel: an optional root op, then one loop nest over `shape`.
#[derive(Clone, Debug, PartialEq)]
pub struct Kernel {
    pub root: Option<(NodeId, RootKind)>,
    /// The loop's iteration space: the shape of its elementwise members,
    /// and of the operand of its reductions. Empty loop when `body` is.
    pub shape: Shape,
    /// Loop members in topological order (elementwise ops, reductions, and
    /// view ops that are copied into a buffer of their own).
    pub body: Vec<NodeId>,
}

/// The graph partitioned into kernels.
#[derive(Clone, Debug)]
pub struct Fusion {
    /// Per node (by `NodeId::index()`).
    pub values: Vec<Value>,
    /// In an order that respects every dependency (and keeps random draws
    /// in node order, so they match the interpreter's stream).
    pub kernels: Vec<Kernel>,
}

impl Fusion {
    pub fn value(&self, id: NodeId) -> &Value {
        &self.values[id.index()]
    }

    /// Whether `id` has a buffer of its own (written by a kernel or fed).
    pub fn has_buffer(&self, id: NodeId) -> bool {
        matches!(self.value(id), Value::Feed | Value::Root { .. } | Value::Loop { stored: true, .. })
    }

    /// How kernels outside the one computing `id` read it: from its buffer,
    /// or through the view, constant or index it is.
    pub fn source(&self, graph: &Graph, id: NodeId) -> Source {
        match self.value(id) {
            Value::View(s) => s.clone(),
            _ => Source::Buffer { base: id, map: Affine::contiguous(graph.shape(id).dims()) },
        }
    }

    /// The buffers a kernel reads (bases of its operands' sources), sorted.
    pub fn reads(&self, graph: &Graph, k: usize) -> Vec<NodeId> {
        let kernel = &self.kernels[k];
        let mut sources = Vec::new();
        if let Some((root, _)) = kernel.root {
            sources.extend(self.root_inputs(graph, root).iter().map(|&a| self.source(graph, a)));
        }
        for &m in &kernel.body {
            match self.copy_source(graph, m) {
                // A copied view or constant reads its own source.
                Some(s) => sources.push(s),
                None => sources.extend(graph.node(m).args.iter().filter(|&&a| !self.is_in(k, a)).map(|&a| self.source(graph, a))),
            }
        }
        let mut out: Vec<NodeId> = sources
            .into_iter()
            .filter_map(|s| match s {
                Source::Buffer { base, .. } => Some(base),
                _ => None,
            })
            .collect();
        out.sort();
        out.dedup();
        out
    }

    /// Whether `id` is computed inside kernel `k` (its root or a loop member).
    pub fn is_in(&self, k: usize, id: NodeId) -> bool {
        matches!(self.value(id), Value::Loop { kernel, .. } | Value::Root { kernel } | Value::Absorbed { kernel } if *kernel == k)
    }

    /// The pads a pad-sum routine rooted at `root` adds up (empty for any
    /// other node).
    pub fn pad_sum_parts(&self, graph: &Graph, root: NodeId) -> Vec<NodeId> {
        let mut parts = Vec::new();
        if !matches!(self.value(root), Value::Root { .. }) || !matches!(graph.node(root).op, Op::Binary(BinaryOp::Add)) {
            return parts;
        }
        let mut stack = vec![root];
        while let Some(id) = stack.pop() {
            for &a in graph.node(id).args.iter().rev() {
                match graph.node(a).op {
                    Op::Pad { .. } => parts.push(a),
                    _ => stack.push(a),
                }
            }
        }
        parts.reverse();
        parts
    }

    /// The values a kernel's root reads: its operands, or for a pad sum the
    /// operands of its pads.
    pub fn root_inputs(&self, graph: &Graph, root: NodeId) -> Vec<NodeId> {
        let parts = self.pad_sum_parts(graph, root);
        if !parts.is_empty() {
            return parts.iter().map(|&p| graph.node(p).args[0]).collect();
        }
        let mut args = graph.node(root).args.clone();
        if let Some(a) = args.first_mut()
            && matches!(self.value(*a), Value::Absorbed { .. })
        {
            *a = graph.node(*a).args[0];
        }
        args
    }

    /// For a conv2d: the zero pad of its input it applies itself (lo/hi of
    /// the two spatial axes as `[top, bottom, left, right]`) and the pad's
    /// operand; `None` when its input is not such a pad.
    pub fn conv_pad(&self, graph: &Graph, conv: NodeId) -> Option<([usize; 4], NodeId)> {
        let x = *graph.node(conv).args.first()?;
        if !matches!(self.value(x), Value::Absorbed { .. }) {
            return None;
        }
        let Op::Pad { lo, hi, .. } = &graph.node(x).op else { return None };
        Some(([lo[2], hi[2], lo[3], hi[3]], graph.node(x).args[0]))
    }

    /// For a view op (or constant) that is copied into a buffer by a loop:
    /// what it reads, over its kernel's iteration space. A copied reshape
    /// iterates over its operand's shape (its elements in the same order).
    pub fn copy_source(&self, graph: &Graph, id: NodeId) -> Option<Source> {
        let node = graph.node(id);
        match &node.op {
            Op::Full { value } => Some(Source::Const(*value)),
            Op::Iota { axis } => Some(Source::Index(iota_map(node.shape.dims(), *axis))),
            Op::Reshape => Some(self.source(graph, node.args[0])),
            op if is_view_op(op) => {
                let arg = node.args[0];
                compose(&self.source(graph, arg), op, graph.shape(arg).dims(), node.shape.dims())
            }
            Op::Gather { .. } => {
                let (axis, idx) = affine_gather(graph, id)?;
                Some(gather_source(&self.source(graph, node.args[0]), axis, &idx))
            }
            _ => None,
        }
    }
}

/// A source read through an affine gather.
fn gather_source(src: &Source, axis: usize, idx: &Affine) -> Source {
    match src {
        Source::Const(v) => Source::Const(*v),
        Source::Index(map) => Source::Index(map.gathered(axis, idx)),
        Source::Buffer { base, map } => Source::Buffer { base: *base, map: map.gathered(axis, idx) },
    }
}

/// Whether `id` only reinterprets its operand's elements: a view op or an
/// affine gather.
pub fn is_view(graph: &Graph, id: NodeId) -> bool {
    is_view_op(&graph.node(id).op) || affine_gather(graph, id).is_some()
}

/// Ops that only reinterpret their operand's elements.
pub fn is_view_op(op: &Op) -> bool {
    matches!(op, Op::Reshape | Op::StopGradient | Op::Permute { .. } | Op::Broadcast | Op::Slice { .. })
}

/// Elementwise ops: one output element from the same position of each operand.
pub fn is_elementwise(op: &Op) -> bool {
    matches!(op, Op::Unary(_) | Op::Binary(_) | Op::Compare(_) | Op::Select | Op::Cast)
}

fn iota_map(dims: &[usize], axis: usize) -> Affine {
    let mut strides = vec![0; dims.len()];
    if axis < dims.len() {
        strides[axis] = 1;
    }
    Affine { offset: 0, strides }
}

/// `op` applied to a source; `None` when it needs a copy.
fn compose(src: &Source, op: &Op, from: &[usize], to: &[usize]) -> Option<Source> {
    Some(match src {
        Source::Const(v) => Source::Const(*v),
        Source::Index(map) => Source::Index(map.through(op, from, to)?),
        Source::Buffer { base, map } => Source::Buffer { base: *base, map: map.through(op, from, to)? },
    })
}

/// How a node's reader needs it, from least to most demanding.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Need {
    /// Loops read anything: constants, index expressions, strided views.
    Any,
    /// GEMM operands: a buffer, read with any strides.
    Buffer,
    /// Routine operands: a row-major buffer.
    Contiguous,
}

/// A group of nodes under construction.
struct Group {
    shape: Shape,
    root: Option<(NodeId, RootKind)>,
    /// Loop members, including reductions.
    body: Vec<NodeId>,
    /// Merged into another group.
    dead: bool,
}

/// A fixed-size set of node indices.
#[derive(Clone)]
struct Bits(Vec<u64>);

impl Bits {
    fn new(n: usize) -> Bits {
        Bits(vec![0; n.div_ceil(64)])
    }
    fn set(&mut self, i: usize) {
        self.0[i / 64] |= 1 << (i % 64);
    }
    fn get(&self, i: usize) -> bool {
        self.0[i / 64] >> (i % 64) & 1 == 1
    }
    fn union(&mut self, other: &Bits) {
        for (a, b) in self.0.iter_mut().zip(&other.0) {
            *a |= b;
        }
    }
    fn intersects(&self, other: &Bits) -> bool {
        self.0.iter().zip(&other.0).any(|(a, b)| a & b != 0)
    }
}

struct Fuser<'g> {
    graph: &'g Graph,
    /// Group of each node that is computed in one (root or loop member).
    group_of: Vec<Option<usize>>,
    groups: Vec<Group>,
    views: Vec<Option<Source>>,
    /// Nodes each node depends on (transitively), for cycle checks.
    ancestors: Vec<Bits>,
    /// What the reader of each node needs it to be.
    need: Vec<Need>,
    live: Vec<bool>,
    /// Pads and adds inside a pad sum (computed by its root's routine), and
    /// the roots of pad sums.
    absorbed: Vec<bool>,
    pad_sum_root: Vec<bool>,
    /// Whether merges also follow the reads of whole kernels (see `try_merge`).
    exact: bool,
}

/// Partitions `graph` into kernels.
pub fn fuse(graph: &Graph) -> Fusion {
    let n = graph.len();
    let mut live = vec![false; n];
    for id in graph.outputs().iter().map(|o| &o.node) {
        live[id.index()] = true;
    }
    let ids: Vec<NodeId> = graph.ids().collect();
    // Affine gathers are views: their indices are never computed.
    let view_gather: Vec<bool> = ids.iter().map(|&id| affine_gather(graph, id).is_some()).collect();
    for &id in ids.iter().rev() {
        if live[id.index()] {
            let args = &graph.node(id).args;
            let read = if view_gather[id.index()] { &args[..1] } else { &args[..] };
            for a in read {
                live[a.index()] = true;
            }
        }
    }
    let mut need = vec![Need::Any; n];
    let mut ancestors = Vec::with_capacity(n);
    for &id in &ids {
        let node = graph.node(id);
        let mut bits = Bits::new(n);
        for a in &node.args {
            bits.union(&ancestors[a.index()]);
            bits.set(a.index());
        }
        ancestors.push(bits);
        let wants = match node.op {
            _ if view_gather[id.index()] => Need::Any,
            _ if is_routine(&node.op) => Need::Contiguous,
            Op::MatMul | Op::Conv2d { .. } => Need::Buffer,
            _ => Need::Any,
        };
        for a in &node.args {
            need[a.index()] = need[a.index()].max(wants);
        }
    }
    let (mut absorbed, pad_sum_root) = pad_sums(graph, &live);
    for id in graph.ids() {
        if live[id.index()] && conv_input_pad(graph, id).is_some() {
            absorbed[id.index()] = true;
        }
    }
    // Quick merge checks first; in the rare graph where they let two
    // kernels wait on each other, again with the exact ones.
    let mut fuser = Fuser { graph, group_of: vec![None; n], groups: Vec::new(), views: vec![None; n], ancestors, need, live, absorbed, pad_sum_root, exact: false };
    loop {
        for &id in &ids {
            if fuser.live[id.index()] && !fuser.absorbed[id.index()] {
                fuser.place(id);
            }
        }
        fuser.sink_cheap_values();
        if let Some(fusion) = fuser.finish() {
            return fusion;
        }
        assert!(!fuser.exact, "exact merge checks keep the kernel graph acyclic");
        fuser.exact = true;
        fuser.group_of.fill(None);
        fuser.groups.clear();
        fuser.views.fill(None);
    }
}

/// For a zero pad of only the last two axes of a rank-4 value whose single
/// use is as a `conv2d`'s input: that conv2d (it applies the pad itself).
pub fn conv_input_pad(graph: &Graph, pad: NodeId) -> Option<NodeId> {
    let node = graph.node(pad);
    let Op::Pad { lo, hi, interior, value } = &node.op else { return None };
    let spatial_only = node.shape.rank() == 4 && lo[..2] == [0, 0] && hi[..2] == [0, 0] && interior.iter().all(|&i| i == 0);
    if !spatial_only || *value != 0.0 || graph.outputs().iter().any(|o| o.node == pad) {
        return None;
    }
    match graph.users(pad)[..] {
        [conv] if matches!(graph.node(conv).op, Op::Conv2d { .. }) && graph.node(conv).args[0] == pad && graph.node(conv).args[1] != pad => Some(conv),
        _ => None,
    }
}

/// Finds sums of zero-pads: adds whose operands are each a zero pad of the
/// sum's shape, or such an add, used nowhere else. Returns (absorbed nodes,
/// roots).
fn pad_sums(graph: &Graph, live: &[bool]) -> (Vec<bool>, Vec<bool>) {
    let n = graph.len();
    let outputs: Vec<NodeId> = graph.outputs().iter().map(|o| o.node).collect();
    let mut is_sum = vec![false; n];
    let only_user = |a: NodeId, id: NodeId| graph.users(a) == [id] && !outputs.contains(&a) && graph.node(id).args.iter().filter(|&&x| x == a).count() == 1;
    for id in graph.ids() {
        let node = graph.node(id);
        if !live[id.index()] || node.op != Op::Binary(BinaryOp::Add) {
            continue;
        }
        is_sum[id.index()] = node.args.iter().all(|&a| {
            let part = graph.node(a);
            let zero_pad = matches!(part.op, Op::Pad { value, .. } if value == 0.0) && part.shape == node.shape;
            (zero_pad || is_sum[a.index()]) && only_user(a, id)
        });
    }
    let mut absorbed = vec![false; n];
    for id in graph.ids() {
        if is_sum[id.index()] {
            for &a in &graph.node(id).args {
                absorbed[a.index()] = true;
            }
        }
    }
    let roots = (0..n).map(|i| is_sum[i] && !absorbed[i]).collect();
    (absorbed, roots)
}

/// Ops run by a library routine, as kernels of their own.
fn is_routine(op: &Op) -> bool {
    matches!(
        op,
        Op::Pad { .. } | Op::Concat { .. } | Op::Gather { .. } | Op::ScatterAdd { .. } | Op::Pool2d { .. } | Op::ArgMax { .. } | Op::Rand { .. }
    )
}

impl Fuser<'_> {
    fn new_group(&mut self, shape: Shape, root: Option<(NodeId, RootKind)>, body: Vec<NodeId>) -> usize {
        let g = self.groups.len();
        for &id in root.iter().map(|(r, _)| r).chain(&body) {
            self.group_of[id.index()] = Some(g);
        }
        self.groups.push(Group { shape, root, body, dead: false });
        g
    }

    fn is_reduce(&self, id: NodeId) -> bool {
        matches!(self.graph.node(id).op, Op::Reduce { .. })
    }

    /// The group whose loop can read `arg` as a plain value of shape `shape`.
    fn loop_group(&self, arg: NodeId, shape: &Shape) -> Option<usize> {
        let g = self.group_of[arg.index()]?;
        let group = &self.groups[g];
        let is_contraction_root = matches!(group.root, Some((r, RootKind::Contraction)) if r == arg);
        let is_member = group.body.contains(&arg) && !self.is_reduce(arg);
        ((is_contraction_root || is_member) && group.shape == *shape).then_some(g)
    }

    /// Places one node: a view, a new group, or a member of existing ones.
    fn place(&mut self, id: NodeId) {
        let node = self.graph.node(id);
        match &node.op {
            Op::Input { .. } | Op::Param { .. } | Op::State { .. } => {}
            Op::Full { .. } | Op::Iota { .. } => {
                if self.need[id.index()] != Need::Any {
                    self.new_group(node.shape.clone(), None, vec![id]);
                } else {
                    let source = match &node.op {
                        Op::Full { value } => Source::Const(*value),
                        Op::Iota { axis } => Source::Index(iota_map(node.shape.dims(), *axis)),
                        _ => unreachable!("matched above"),
                    };
                    self.views[id.index()] = Some(source);
                }
            }
            op if is_view(self.graph, id) => {
                let arg = node.args[0];
                // A value computed in a loop is stored so the view can read it.
                let source = match self.views[arg.index()].clone() {
                    Some(s) => s,
                    None => Source::Buffer { base: arg, map: Affine::contiguous(self.graph.shape(arg).dims()) },
                };
                let composed = match affine_gather(self.graph, id) {
                    Some((axis, idx)) => Some(gather_source(&source, axis, &idx)),
                    None => compose(&source, op, self.graph.shape(arg).dims(), node.shape.dims()),
                };
                let need = self.need[id.index()];
                let copy_needed = match &composed {
                    None => true,
                    Some(Source::Buffer { map, .. }) => need == Need::Contiguous && !map.is_contiguous(node.shape.dims()),
                    Some(_) => need != Need::Any,
                };
                if copy_needed {
                    // A reshape copy iterates over its operand (same element order).
                    let shape = if matches!(op, Op::Reshape) { self.graph.shape(arg).clone() } else { node.shape.clone() };
                    self.new_group(shape, None, vec![id]);
                } else {
                    self.views[id.index()] = composed;
                }
            }
            Op::MatMul | Op::Conv2d { .. } => {
                self.new_group(node.shape.clone(), Some((id, RootKind::Contraction)), Vec::new());
            }
            op if is_routine(op) => {
                self.new_group(node.shape.clone(), Some((id, RootKind::Routine)), Vec::new());
            }
            _ if self.pad_sum_root[id.index()] => {
                self.new_group(node.shape.clone(), Some((id, RootKind::Routine)), Vec::new());
            }
            Op::Reduce { .. } => {
                let arg = node.args[0];
                let shape = self.graph.shape(arg).clone();
                match self.loop_group(arg, &shape) {
                    Some(g) if self.try_merge(id, &[g]) => {}
                    _ => {
                        self.new_group(shape, None, vec![id]);
                    }
                }
            }
            _ => {
                // Elementwise (the op set is closed; anything else is a bug upstream).
                let mut candidates: Vec<usize> = node.args.iter().filter_map(|&a| self.loop_group(a, &node.shape)).collect();
                candidates.sort();
                candidates.dedup();
                if candidates.len() > 1 && self.try_merge(id, &candidates) {
                    return;
                }
                // Otherwise the largest single group that accepts it.
                candidates.sort_by_key(|&g| std::cmp::Reverse(self.groups[g].body.len()));
                for g in candidates {
                    if self.try_merge(id, &[g]) {
                        return;
                    }
                }
                self.new_group(node.shape.clone(), None, vec![id]);
            }
        }
    }

    /// Moves cheap values that a loop computes only for one later loop into
    /// that loop, where they are recomputed from a value the first loop
    /// stores anyway. The sweep puts a gradient's factor where its operand
    /// is (`1 - tanh(c)^2` in the forward LSTM cell, beside `tanh(c)`), and
    /// the forward loop then stores the factor for the backward one: one
    /// more buffer written per step and read back much later, which the
    /// backward loop can compute from `tanh(c)`, which it loads anyway (or
    /// in its place). Moved: a value whose readers are all members of one
    /// other loop of its shape, with the chain of cheap values only it
    /// reads; what the chain reads from the first loop must be one value
    /// stored anyway (its other reads constants).
    fn sink_cheap_values(&mut self) {
        let graph = self.graph;
        let cheap = |id: NodeId| match &graph.node(id).op {
            Op::Binary(op) => *op != BinaryOp::Pow,
            Op::Unary(op) => matches!(op, UnaryOp::Neg | UnaryOp::Abs),
            Op::Compare(_) | Op::Select | Op::Cast => true,
            _ => false,
        };
        let outputs: Vec<NodeId> = graph.outputs().iter().map(|o| o.node).collect();
        let live_users = |id: NodeId| graph.users(id).into_iter().filter(|u| self.live[u.index()]).collect::<Vec<_>>();
        for g in 0..self.groups.len() {
            if self.groups[g].dead {
                continue;
            }
            let members = self.groups[g].body.clone();
            for &n in members.iter().rev() {
                if self.group_of[n.index()] != Some(g) || !cheap(n) || outputs.contains(&n) || self.views[n.index()].is_some() {
                    continue;
                }
                // Every reader: a member of one other loop of this shape.
                let users = live_users(n);
                let Some(h) = users.first().and_then(|u| self.group_of[u.index()]) else { continue };
                let reads_in_h = |u: &NodeId| self.group_of[u.index()] == Some(h) && self.groups[h].body.contains(u) && self.views[u.index()].is_none();
                if h == g || self.groups[h].shape != *graph.shape(n) || !users.iter().all(reads_in_h) {
                    continue;
                }
                // The chain: cheap members of `g` read by the chain alone.
                let mut chain = vec![n];
                let mut leaves: Vec<NodeId> = Vec::new();
                let mut stack = vec![n];
                let mut ok = true;
                while let Some(x) = stack.pop() {
                    for &a in &graph.node(x).args {
                        if chain.contains(&a) || leaves.contains(&a) {
                            continue;
                        }
                        let in_g = self.group_of[a.index()] == Some(g);
                        if in_g && cheap(a) && !outputs.contains(&a) && live_users(a) == [x] {
                            chain.push(a);
                            stack.push(a);
                        } else if in_g {
                            leaves.push(a);
                        } else if !matches!(self.views[a.index()], Some(Source::Const(_) | Source::Index(_))) {
                            ok = false;
                        }
                    }
                }
                // One leaf, stored anyway: read outside `g` by more than the chain.
                let stored_anyway = |a: NodeId| {
                    self.is_reduce(a)
                        || outputs.contains(&a)
                        || live_users(a).iter().any(|&u| !chain.contains(&u) && (self.group_of[u.index()] != Some(g) || self.views[u.index()].is_some()))
                };
                if !ok || leaves.len() != 1 || !stored_anyway(leaves[0]) {
                    continue;
                }
                for &m in &chain {
                    self.group_of[m.index()] = Some(h);
                }
                self.groups[g].body.retain(|m| !chain.contains(m));
                self.groups[h].body.extend(&chain);
                self.groups[h].body.sort();
            }
        }
    }

    /// Merges `groups` and adds `id` to the result if that keeps the kernel
    /// graph acyclic and every in-loop read legal.
    fn try_merge(&mut self, id: NodeId, groups: &[usize]) -> bool {
        if groups.iter().filter(|&&g| self.groups[g].root.is_some()).count() > 1 {
            return false;
        }
        let n = self.graph.len();
        let mut members = Bits::new(n);
        let mut all: Vec<NodeId> = vec![id];
        for &g in groups {
            let group = &self.groups[g];
            all.extend(group.root.iter().map(|(r, _)| *r));
            all.extend(&group.body);
        }
        for m in &all {
            members.set(m.index());
        }
        let roots: Vec<NodeId> = groups.iter().filter_map(|&g| self.groups[g].root.map(|(r, _)| r)).collect();
        for &m in &all {
            let node = self.graph.node(m);
            for &a in &node.args {
                if members.get(a.index()) {
                    // In-loop reads: never a reduction's result (complete only
                    // after the loop), and a root runs before the loop.
                    if self.is_reduce(a) || roots.contains(&m) {
                        return false;
                    }
                    continue;
                }
                if self.ancestors[a.index()].intersects(&members) {
                    return false;
                }
            }
        }
        // The check above follows the graph's edges; a kernel is more than
        // its nodes, though: a group read from outside may hold another
        // node that depends on the members (`select(mask, 1, 0)` beside
        // `select(mask, sum(exp(w)), 0)`, where the loop of `exp(w)` wants
        // the first). Following the kernels' reads too costs a search per
        // merge, so it runs only when the quick pass made a cycle.
        if !self.exact {
            return self.merge(id, groups);
        }
        let mut visited = vec![false; self.groups.len()];
        for &g in groups {
            visited[g] = true;
        }
        for &m in &all {
            for a in self.inputs_of(m) {
                if members.get(a.index()) {
                    continue;
                }
                if let Some(h) = self.producer(a)
                    && self.group_reaches(h, &members, &mut visited)
                {
                    return false;
                }
            }
        }
        self.merge(id, groups)
    }

    /// Merges `groups` into the first and adds `id` to it.
    fn merge(&mut self, id: NodeId, groups: &[usize]) -> bool {
        let keep = groups[0];
        let mut body: Vec<NodeId> = Vec::new();
        let mut root = None;
        for &g in groups {
            let group = &mut self.groups[g];
            body.append(&mut group.body);
            root = root.or(group.root.take());
            if g != keep {
                group.dead = true;
            }
        }
        body.push(id);
        body.sort();
        for &m in root.iter().map(|(r, _)| r).chain(&body) {
            self.group_of[m.index()] = Some(keep);
        }
        let group = &mut self.groups[keep];
        group.body = body;
        group.root = root;
        true
    }

    /// The group whose kernel writes the buffer `a` is read from (through
    /// a view, its base's), if a kernel does.
    fn producer(&self, a: NodeId) -> Option<usize> {
        let base = match &self.views[a.index()] {
            Some(Source::Buffer { base, .. }) => *base,
            Some(_) => return None,
            None => a,
        };
        self.group_of[base.index()]
    }

    /// Whether group `start`, or a group it reads from (transitively),
    /// reads a node of `members`. Groups marked in `visited` are skipped
    /// (known not to, or the members' own) and what is searched is marked.
    fn group_reaches(&self, start: usize, members: &Bits, visited: &mut [bool]) -> bool {
        let mut stack = vec![start];
        while let Some(g) = stack.pop() {
            if std::mem::replace(&mut visited[g], true) {
                continue;
            }
            let group = &self.groups[g];
            for &m in group.root.iter().map(|(r, _)| r).chain(&group.body) {
                for a in self.inputs_of(m) {
                    if members.get(a.index()) || self.ancestors[a.index()].intersects(members) {
                        return true;
                    }
                    if let Some(h) = self.producer(a)
                        && !visited[h]
                    {
                        stack.push(h);
                    }
                }
            }
        }
        false
    }

    /// What computing `id` reads: its operands, or for a pad-sum root the
    /// operands of its pads.
    fn inputs_of(&self, id: NodeId) -> Vec<NodeId> {
        if !self.pad_sum_root[id.index()] {
            let mut args = self.graph.node(id).args.clone();
            // A convolution that applies its input's pad reads the pad's operand.
            if let Some(a) = args.first_mut()
                && self.absorbed[a.index()]
            {
                *a = self.graph.node(*a).args[0];
            }
            return args;
        }
        let mut out = Vec::new();
        let mut stack = vec![id];
        while let Some(x) = stack.pop() {
            for &a in &self.graph.node(x).args {
                match self.graph.node(a).op {
                    Op::Pad { .. } => out.push(self.graph.node(a).args[0]),
                    _ => stack.push(a),
                }
            }
        }
        out
    }

    /// Orders the groups into kernels and records every node's value.
    /// `None` when the kernels depend on each other in a cycle.
    fn finish(&self) -> Option<Fusion> {
        let graph = self.graph;
        let n = graph.len();
        let alive: Vec<usize> = (0..self.groups.len()).filter(|&g| !self.groups[g].dead).collect();
        // Dependencies between groups, through buffers and views.
        let base_of = |a: NodeId| -> Option<NodeId> {
            match &self.views[a.index()] {
                Some(Source::Buffer { base, .. }) => Some(*base),
                Some(_) => None,
                None => Some(a),
            }
        };
        let mut deps: Vec<Vec<usize>> = vec![Vec::new(); self.groups.len()];
        for &g in &alive {
            let group = &self.groups[g];
            for &m in group.root.iter().map(|(r, _)| r).chain(&group.body) {
                for &a in &self.inputs_of(m) {
                    if let Some(b) = base_of(a)
                        && let Some(h) = self.group_of[b.index()]
                        && h != g
                    {
                        deps[g].push(h);
                    }
                }
            }
        }
        // Kahn's algorithm, always taking the ready group whose first node is
        // earliest: deterministic, and close to the source order.
        let first = |g: usize| -> usize {
            let group = &self.groups[g];
            group.root.iter().map(|(r, _)| r.index()).chain(group.body.iter().map(|m| m.index())).min().unwrap_or(0)
        };
        let mut indegree = vec![0usize; self.groups.len()];
        let mut users: Vec<Vec<usize>> = vec![Vec::new(); self.groups.len()];
        for &g in &alive {
            deps[g].sort();
            deps[g].dedup();
            indegree[g] = deps[g].len();
            for &h in &deps[g] {
                users[h].push(g);
            }
        }
        let mut ready: std::collections::BTreeSet<(usize, usize)> =
            alive.iter().filter(|&&g| indegree[g] == 0).map(|&g| (first(g), g)).collect();
        let mut order = Vec::with_capacity(alive.len());
        while let Some(&(key, g)) = ready.iter().next() {
            ready.remove(&(key, g));
            order.push(g);
            for &u in &users[g] {
                indegree[u] -= 1;
                if indegree[u] == 0 {
                    ready.insert((first(u), u));
                }
            }
        }
        if order.len() != alive.len() {
            return None;
        }
        let mut kernel_of_group = vec![usize::MAX; self.groups.len()];
        for (k, &g) in order.iter().enumerate() {
            kernel_of_group[g] = k;
        }
        // A member needs its own buffer when something outside its loop reads it.
        let mut read_outside = vec![false; n];
        for id in graph.ids() {
            if !self.live[id.index()] {
                continue;
            }
            let here = self.group_of[id.index()];
            for &a in &graph.node(id).args {
                let a_group = self.group_of[a.index()];
                if a_group.is_none() || a_group != here || self.is_reduce(a) {
                    read_outside[a.index()] = true;
                }
                // A view of a loop value reads its buffer.
                if self.views[id.index()].is_some() {
                    read_outside[a.index()] = true;
                }
            }
        }
        // Operands of views that are themselves views, transitively, read the base.
        for id in graph.outputs().iter().map(|o| &o.node) {
            read_outside[id.index()] = true;
        }
        let mut values = vec![Value::Unused; n];
        for id in graph.ids() {
            let i = id.index();
            if !self.live[i] {
                continue;
            }
            values[i] = match (&graph.node(id).op, self.group_of[i], &self.views[i]) {
                (Op::Input { .. } | Op::Param { .. } | Op::State { .. }, _, _) => Value::Feed,
                _ if self.absorbed[i] => Value::Unused,
                (_, Some(g), _) => {
                    let kernel = kernel_of_group[g];
                    if matches!(self.groups[g].root, Some((r, _)) if r == id) {
                        Value::Root { kernel }
                    } else {
                        Value::Loop { kernel, stored: read_outside[i] || self.is_reduce(id) }
                    }
                }
                (_, None, Some(s)) => Value::View(s.clone()),
                (_, None, None) => Value::Unused,
            };
        }
        // Pads and adds inside a pad sum, and a conv's input pad, belong to
        // their root's kernel.
        for id in graph.ids() {
            if let Value::Root { kernel } = values[id.index()]
                && let Some(&x) = graph.node(id).args.first()
                && matches!(graph.node(id).op, Op::Conv2d { .. })
                && self.absorbed[x.index()]
            {
                values[x.index()] = Value::Absorbed { kernel };
            }
            if let Value::Root { kernel } = values[id.index()]
                && self.pad_sum_root[id.index()]
            {
                let mut stack = vec![id];
                while let Some(x) = stack.pop() {
                    for &a in &graph.node(x).args {
                        if self.absorbed[a.index()] {
                            values[a.index()] = Value::Absorbed { kernel };
                            stack.push(a);
                        }
                    }
                }
            }
        }
        let kernels = order
            .iter()
            .map(|&g| {
                let group = &self.groups[g];
                Kernel { root: group.root, shape: group.shape.clone(), body: group.body.clone() }
            })
            .collect();
        Some(Fusion { values, kernels })
    }
}

/// The kernels as text, one block per kernel (what `d2l ir --stage fused`
/// prints): what each computes, what it reads and what it writes.
pub fn text(graph: &Graph, fusion: &Fusion) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "fused {}: {} kernels", graph.name, fusion.kernels.len());
    let name = |id: NodeId| format!("%{}", id.index());
    let ty = |id: NodeId| format!("{}{}", graph.dtype(id), graph.shape(id));
    for (k, kernel) in fusion.kernels.iter().enumerate() {
        let kind = kernel_kind(graph, kernel);
        let _ = writeln!(out, "k{k}: {kind}");
        if let Some((root, _)) = kernel.root {
            let node = graph.node(root);
            let parts = fusion.pad_sum_parts(graph, root);
            if parts.is_empty() {
                let args: Vec<String> = node.args.iter().map(|&a| operand(graph, fusion, k, a)).collect();
                let _ = writeln!(out, "  {}: {} = {} {}", name(root), ty(root), node.op.mnemonic(), args.join(", "));
            } else {
                let args: Vec<String> = parts.iter().map(|&p| format!("pad({})", operand(graph, fusion, k, graph.node(p).args[0]))).collect();
                let _ = writeln!(out, "  {}: {} = pad_sum {}", name(root), ty(root), args.join(", "));
            }
        }
        if !kernel.body.is_empty() {
            let _ = writeln!(out, "  loop {}:", kernel.shape);
            for &m in &kernel.body {
                let node = graph.node(m);
                let args: Vec<String> = if is_copy(graph, m) {
                    vec![match fusion.copy_source(graph, m) {
                        Some(s) => source_text(&s),
                        None => "?".into(),
                    }]
                } else {
                    node.args.iter().map(|&a| operand(graph, fusion, k, a)).collect()
                };
                let stored = if matches!(fusion.value(m), Value::Loop { stored: true, .. }) { " -> buffer" } else { "" };
                let mut op = node.op.mnemonic().to_string();
                if let Op::Reduce { axes, .. } = &node.op {
                    op.push_str(&format!("{axes:?}"));
                }
                let _ = writeln!(out, "    {}: {} = {} {}{stored}", name(m), ty(m), op, args.join(", "));
            }
        }
    }
    out
}

fn kernel_kind(graph: &Graph, kernel: &Kernel) -> String {
    let reduces = kernel.body.iter().any(|&m| matches!(graph.node(m).op, Op::Reduce { .. }));
    let loop_kind = if reduces { "reduce" } else { "elementwise" };
    match kernel.root {
        Some((r, RootKind::Contraction)) if kernel.body.is_empty() => graph.node(r).op.mnemonic().to_string(),
        Some((r, RootKind::Contraction)) => format!("{} + {loop_kind} epilogue", graph.node(r).op.mnemonic()),
        Some((r, RootKind::Routine)) if matches!(graph.node(r).op, Op::Binary(_)) => "pad_sum".into(),
        Some((r, RootKind::Routine)) => graph.node(r).op.mnemonic().to_string(),
        None if kernel.body.len() == 1 && is_copy(graph, kernel.body[0]) => "copy".into(),
        None => loop_kind.into(),
    }
}

fn is_copy(graph: &Graph, id: NodeId) -> bool {
    is_view(graph, id) || matches!(graph.node(id).op, Op::Full { .. } | Op::Iota { .. })
}

/// How kernel `k` reads operand `a`: a value of its own loop, or a source.
fn operand(graph: &Graph, fusion: &Fusion, k: usize, a: NodeId) -> String {
    if matches!(fusion.value(a), Value::Absorbed { .. }) && matches!(graph.node(a).op, Op::Pad { .. }) {
        return format!("pad({})", operand(graph, fusion, k, graph.node(a).args[0]));
    }
    if fusion.is_in(k, a) {
        return format!("%{}", a.index());
    }
    match fusion.source(graph, a) {
        Source::Buffer { base, map } if base == a && map.is_contiguous(graph.shape(a).dims()) => format!("%{}", a.index()),
        s => format!("%{}={}", a.index(), source_text(&s)),
    }
}

fn source_text(s: &Source) -> String {
    match s {
        Source::Const(v) => format!("{v}"),
        Source::Index(m) => format!("index{}", map_text(m)),
        Source::Buffer { base, map } => format!("%{}{}", base.index(), map_text(map)),
    }
}

fn map_text(m: &Affine) -> String {
    let strides: Vec<String> = m.strides.iter().map(i64::to_string).collect();
    if m.offset == 0 { format!("[{}]", strides.join(" ")) } else { format!("[{}; +{}]", strides.join(" "), m.offset) }
}

/// Bytes of one element of `dtype` in kernel buffers.
pub fn element_bytes(dtype: DType) -> usize {
    dtype.size_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reshape_strides_follow_numpy() {
        // Contiguous: any reshape works.
        assert_eq!(reshape_strides(&[2, 3], &[3, 1], &[6]), Some(vec![1]));
        assert_eq!(reshape_strides(&[6], &[1], &[2, 1, 3]), Some(vec![3, 0, 1]));
        // Transposed [3, 2] -> [6] needs a copy; adding unit axes does not.
        assert_eq!(reshape_strides(&[3, 2], &[1, 3], &[6]), None);
        assert_eq!(reshape_strides(&[3, 2], &[1, 3], &[3, 1, 2]), Some(vec![1, 0, 3]));
        // A broadcast row splits but does not merge with the column axis.
        assert_eq!(reshape_strides(&[4, 6], &[0, 1], &[4, 2, 3]), Some(vec![0, 3, 1]));
        assert_eq!(reshape_strides(&[4, 6], &[1, 0], &[24]), None);
    }
}
