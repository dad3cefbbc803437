//! Lowering a fused graph to an executable plan: numbered buffer slots, the
//! [`LoopKernel`] of every loop, and the steps that run them in order.
//! Backend-neutral: the Cranelift executor runs it on the CPU; a GPU
//! backend would launch the same kernels.

use std::collections::HashMap;

use d2l_ir::{DType, Graph, NodeId, Op, PoolKind, RandDist, Shape};
use d2l_passes::fusion::{Affine, Fusion, RootKind, Source, Value};
use d2l_passes::memory::{self, MemoryPlan};

use crate::kernel::{Access, Inst, LoopKernel, Store, Val};

/// Where a slot's buffer lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Place {
    /// Slot 0: the status word kernels report errors in.
    Status,
    /// The caller's tensor for feed `i`.
    Feed(usize),
    /// The caller's tensor for output `i`.
    Output(usize),
    /// At this byte offset of the arena.
    Arena(usize),
}

#[derive(Clone, Debug)]
pub struct Slot {
    pub node: Option<NodeId>,
    pub dtype: DType,
    pub numel: usize,
    pub place: Place,
}

/// A value read from a slot through a strided map over the reader's dims.
#[derive(Clone, Debug, PartialEq)]
pub struct Operand {
    pub slot: usize,
    pub map: Affine,
}

/// How an output gets its value.
#[derive(Clone, Debug, PartialEq)]
pub enum OutputFill {
    /// Kernels write the output's buffer directly.
    Written,
    /// Copied after the last step from a constant, an index expression or
    /// another slot (outputs that are fed values, views, or named twice).
    Copy(CopySource),
}

#[derive(Clone, Debug, PartialEq)]
pub enum CopySource {
    Const(f64),
    Index(Affine),
    Slot(Operand),
}

#[derive(Clone, Debug)]
pub struct FeedSlot {
    pub name: String,
    pub node: NodeId,
    pub is_param: bool,
    pub dtype: DType,
    pub shape: Shape,
    pub slot: usize,
}

#[derive(Clone, Debug)]
pub struct OutputSlot {
    pub name: String,
    pub node: NodeId,
    pub dtype: DType,
    pub shape: Shape,
    pub slot: usize,
    pub fill: OutputFill,
}

/// Library routines (a backend's own code: `d2l_cpu::routines` on the
/// CPU); operands are contiguous slots.
#[derive(Clone, Debug)]
pub enum Routine {
    Pad { src: usize, dims: Vec<usize>, write: Affine, out_numel: usize, value: f64 },
    /// Per operand: slot, rows of `row_bytes` at byte `at` of each
    /// `stride`-byte output row (operands already in place are left out).
    Concat { parts: Vec<(usize, usize, usize)>, outer: usize, stride: usize },
    Gather { x: usize, split: (usize, usize, usize), idx: usize, m: usize },
    ScatterAdd { idx: usize, m: usize, updates: usize, split: (usize, usize, usize) },
    Pool2d { kind: PoolKind, x: usize, dims: [usize; 4], window: [usize; 2], stride: [usize; 2] },
    ArgMax { x: usize, split: (usize, usize, usize) },
    Rand { dist: RandDist },
    /// Zeros, then each operand added at its pad's positions.
    PadSum { parts: Vec<(usize, Vec<usize>, Affine)>, out_numel: usize },
}

#[derive(Clone, Debug)]
pub enum Step {
    /// A loop kernel over its whole range.
    Loop { kernel: usize },
    /// `[b.., m, k] @ [b.., k, n]` into `out`, then the epilogue loop.
    MatMul { node: NodeId, dtype: DType, batch: Vec<usize>, m: usize, n: usize, k: usize, a: Operand, b: Operand, out: usize, epilogue: Option<usize> },
    /// `conv2d(x[N, C, H, W], w[O, C, kh, kw])` into `out`, then the epilogue.
    /// `pad` (`[top, bottom, left, right]` zeros around x's spatial axes) is
    /// applied by the convolution; `x_dims` are the unpadded input's.
    Conv2d { node: NodeId, dtype: DType, x: Operand, x_dims: [usize; 4], pad: [usize; 4], w: Operand, w_dims: [usize; 4], stride: [usize; 2], out: usize, epilogue: Option<usize> },
    Routine { node: NodeId, routine: Routine, out: usize },
}

/// Everything needed to run a graph, before code generation.
#[derive(Clone, Debug)]
pub struct Plan {
    pub name: String,
    pub slots: Vec<Slot>,
    pub kernels: Vec<LoopKernel>,
    pub steps: Vec<Step>,
    pub feeds: Vec<FeedSlot>,
    pub outputs: Vec<OutputSlot>,
    pub memory: MemoryPlan,
    /// Node each loop kernel is named after (for error messages).
    pub kernel_nodes: Vec<NodeId>,
}

#[derive(Debug, thiserror::Error)]
pub enum LowerError {
    #[error("{node}: {message}")]
    Unsupported { node: String, message: String },
}

/// `%12 = gather` (numbers as in the text form), for messages.
pub fn describe(graph: &Graph, id: NodeId) -> String {
    let node = graph.node(id);
    let mut s = format!("%{} = {}", id.index(), node.op.mnemonic());
    if let Some(loc) = &node.loc {
        s.push_str(&format!(" at {}:{}:{}", loc.file, loc.line, loc.col));
    }
    s
}

/// Plans `graph`, already fused into `fusion`.
pub fn plan(graph: &Graph, fusion: &Fusion) -> Result<Plan, LowerError> {
    let memory = memory::plan(graph, fusion);
    let mut slots = vec![Slot { node: None, dtype: DType::I64, numel: 1, place: Place::Status }];
    let mut slot_of: HashMap<NodeId, usize> = HashMap::new();
    let mut feeds = Vec::new();
    for id in graph.ids() {
        let node = graph.node(id);
        let (name, is_param) = match &node.op {
            Op::Input { name, .. } => (name.clone(), false),
            Op::Param { name, .. } | Op::State { name, .. } => (name.clone(), true),
            _ => continue,
        };
        if *fusion.value(id) != Value::Feed {
            continue;
        }
        let slot = slots.len();
        slots.push(Slot { node: Some(id), dtype: node.dtype, numel: node.shape.numel(), place: Place::Feed(feeds.len()) });
        slot_of.insert(id, slot);
        feeds.push(FeedSlot { name, node: id, is_param, dtype: node.dtype, shape: node.shape.clone(), slot });
    }
    // Outputs: the first name of a kernel-written node is where the kernel writes.
    let mut outputs = Vec::new();
    for o in graph.outputs() {
        let (name, id) = (&o.name, &o.node);
        let node = graph.node(*id);
        let written = matches!(fusion.value(*id), Value::Root { .. } | Value::Loop { stored: true, .. }) && !slot_of.contains_key(id);
        let slot = slots.len();
        slots.push(Slot { node: Some(*id), dtype: node.dtype, numel: node.shape.numel(), place: Place::Output(outputs.len()) });
        if written {
            slot_of.insert(*id, slot);
        }
        outputs.push(OutputSlot { name: name.clone(), node: *id, dtype: node.dtype, shape: node.shape.clone(), slot, fill: OutputFill::Written });
    }
    for id in graph.ids() {
        if let Some(&offset) = memory.offsets.get(&id) {
            let node = graph.node(id);
            slot_of.insert(id, slots.len());
            slots.push(Slot { node: Some(id), dtype: node.dtype, numel: node.shape.numel(), place: Place::Arena(offset) });
        }
    }
    let mut lower = Lower { graph, fusion, memory: &memory, slot_of, kernels: Vec::new(), kernel_nodes: Vec::new() };
    // Copied outputs read their source after every kernel has run.
    for out in outputs.iter_mut() {
        if lower.slot_of.get(&out.node) != Some(&out.slot) {
            let source = match fusion.source(graph, out.node) {
                Source::Const(v) => CopySource::Const(v),
                Source::Index(m) => CopySource::Index(m),
                Source::Buffer { base, map } => CopySource::Slot(Operand { slot: lower.slot(base)?, map }),
            };
            out.fill = OutputFill::Copy(source);
        }
    }
    let mut steps = Vec::new();
    for k in 0..fusion.kernels.len() {
        steps.push(lower.step(k)?);
    }
    let (kernels, kernel_nodes) = (lower.kernels, lower.kernel_nodes);
    Ok(Plan { name: graph.name.clone(), slots, kernels, steps, feeds, outputs, memory, kernel_nodes })
}

struct Lower<'a> {
    graph: &'a Graph,
    fusion: &'a Fusion,
    memory: &'a MemoryPlan,
    slot_of: HashMap<NodeId, usize>,
    kernels: Vec<LoopKernel>,
    kernel_nodes: Vec<NodeId>,
}

impl Lower<'_> {
    fn unsupported(&self, id: NodeId, message: impl Into<String>) -> LowerError {
        LowerError::Unsupported { node: describe(self.graph, id), message: message.into() }
    }

    fn slot(&self, id: NodeId) -> Result<usize, LowerError> {
        self.slot_of.get(&id).copied().ok_or_else(|| self.unsupported(id, "value has no buffer (fusion invariant broken)"))
    }

    /// A buffer operand (matmul, conv, routines): its base slot and map.
    fn operand(&self, reader: NodeId, a: NodeId) -> Result<Operand, LowerError> {
        match self.fusion.source(self.graph, a) {
            Source::Buffer { base, map } => Ok(Operand { slot: self.slot(base)?, map }),
            _ => Err(self.unsupported(reader, "operand is a constant where a buffer is needed")),
        }
    }

    /// A contiguous operand's slot (routines).
    fn contiguous(&self, reader: NodeId, a: NodeId) -> Result<usize, LowerError> {
        let op = self.operand(reader, a)?;
        if op.map.is_contiguous(self.graph.shape(a).dims()) {
            Ok(op.slot)
        } else {
            Err(self.unsupported(reader, "routine operand is not contiguous (fusion invariant broken)"))
        }
    }

    fn step(&mut self, k: usize) -> Result<Step, LowerError> {
        let kernel = &self.fusion.kernels[k];
        let epilogue = if kernel.body.is_empty() { None } else { Some(self.loop_kernel(k)?) };
        let Some((root, kind)) = kernel.root else {
            return Ok(Step::Loop { kernel: epilogue.unwrap_or(0) });
        };
        let node = self.graph.node(root);
        let out = self.slot(root)?;
        let dims = |id: NodeId| self.graph.shape(id).dims().to_vec();
        if kind == RootKind::Contraction {
            let (a, b) = (node.args[0], node.args[1]);
            return Ok(match &node.op {
                Op::MatMul => {
                    let da = dims(a);
                    let r = da.len();
                    let db = dims(b);
                    Step::MatMul {
                        node: root,
                        dtype: node.dtype,
                        batch: da[..r - 2].to_vec(),
                        m: da[r - 2],
                        k: da[r - 1],
                        n: db[r - 1],
                        a: self.operand(root, a)?,
                        b: self.operand(root, b)?,
                        out,
                        epilogue,
                    }
                }
                Op::Conv2d { stride } => {
                    let four = |d: Vec<usize>| -> Result<[usize; 4], LowerError> { d.try_into().map_err(|_| self.unsupported(root, "conv2d needs rank-4 operands")) };
                    let (pad, x) = self.fusion.conv_pad(self.graph, root).unwrap_or(([0; 4], a));
                    Step::Conv2d {
                        node: root,
                        dtype: node.dtype,
                        x: self.operand(root, x)?,
                        x_dims: four(dims(x))?,
                        pad,
                        w: self.operand(root, b)?,
                        w_dims: four(dims(b))?,
                        stride: *stride,
                        out,
                        epilogue,
                    }
                }
                _ => return Err(self.unsupported(root, "not a contraction")),
            });
        }
        let split = |d: &[usize], axis: usize| -> (usize, usize, usize) { (d[..axis].iter().product(), d[axis], d[axis + 1..].iter().product()) };
        let pads = self.fusion.pad_sum_parts(self.graph, root);
        if !pads.is_empty() {
            let mut parts = Vec::new();
            for &p in &pads {
                let Op::Pad { lo, hi, interior, .. } = &self.graph.node(p).op else { continue };
                let src = self.graph.node(p).args[0];
                let d = dims(src);
                let (write, _) = pad_map(&d, lo, hi, interior);
                parts.push((self.contiguous(root, src)?, d, write));
            }
            return Ok(Step::Routine { node: root, routine: Routine::PadSum { parts, out_numel: node.shape.numel() }, out });
        }
        let routine = match &node.op {
            Op::Pad { lo, hi, interior, value } => {
                let d = dims(node.args[0]);
                let (write, out_numel) = pad_map(&d, lo, hi, interior);
                Routine::Pad { src: self.contiguous(root, node.args[0])?, dims: d, write, out_numel, value: *value }
            }
            Op::Concat { axis } => {
                let size = node.dtype.size_bytes();
                let outer: usize = node.shape.dims()[..*axis].iter().product();
                let row = |d: &[usize]| d[*axis..].iter().product::<usize>() * size;
                let mut parts = Vec::new();
                let mut at = 0;
                for &a in &node.args {
                    let row = row(self.graph.shape(a).dims());
                    // Operands the memory plan put in place are there already.
                    let base = match self.fusion.source(self.graph, a) {
                        Source::Buffer { base, .. } => Some(base),
                        _ => None,
                    };
                    let in_place = base.and_then(|b| self.memory.stored_into.get(&b)).is_some_and(|into| into.iter().any(|(c, _, _)| *c == root));
                    if !in_place {
                        parts.push((self.contiguous(root, a)?, row, at));
                    }
                    at += row;
                }
                Routine::Concat { parts, outer, stride: row(node.shape.dims()) }
            }
            Op::Gather { axis } => {
                let (x, idx) = (node.args[0], node.args[1]);
                Routine::Gather { x: self.contiguous(root, x)?, split: split(&dims(x), *axis), idx: self.contiguous(root, idx)?, m: self.graph.shape(idx).numel() }
            }
            Op::ScatterAdd { axis } => {
                let (idx, upd) = (node.args[0], node.args[1]);
                Routine::ScatterAdd {
                    idx: self.contiguous(root, idx)?,
                    m: self.graph.shape(idx).numel(),
                    updates: self.contiguous(root, upd)?,
                    split: split(node.shape.dims(), *axis),
                }
            }
            Op::Pool2d { kind, window, stride } => {
                let x = node.args[0];
                let d: [usize; 4] = dims(x).try_into().map_err(|_| self.unsupported(root, "pooling needs a rank-4 operand"))?;
                Routine::Pool2d { kind: *kind, x: self.contiguous(root, x)?, dims: d, window: *window, stride: *stride }
            }
            Op::ArgMax { axis } => {
                let x = node.args[0];
                Routine::ArgMax { x: self.contiguous(root, x)?, split: split(&dims(x), *axis) }
            }
            Op::Rand { dist } => Routine::Rand { dist: *dist },
            _ => return Err(self.unsupported(root, "no routine for this op")),
        };
        Ok(Step::Routine { node: root, routine, out })
    }

    /// The loop of fusion kernel `k` as a [`LoopKernel`]; returns its index.
    fn loop_kernel(&mut self, k: usize) -> Result<usize, LowerError> {
        let g = self.graph;
        let kernel = &self.fusion.kernels[k];
        let dims = kernel.shape.dims().to_vec();
        let contiguous = Affine::contiguous(&dims).strides;
        let mut lk = LoopKernel::new(format!("k{k}"), dims.clone());
        let mut vals: HashMap<NodeId, Val> = HashMap::new();
        let root = kernel.root.map(|(r, _)| r);
        for &m in &kernel.body {
            let node = g.node(m);
            let v = if let Some(src) = self.fusion.copy_source(g, m) {
                self.load(&mut lk, m, &src, node.dtype)?
            } else {
                let mut args = Vec::with_capacity(node.args.len());
                for &a in &node.args {
                    let v = match vals.get(&a) {
                        Some(&v) => v,
                        None if Some(a) == root => lk.push(Inst::Load { dtype: g.dtype(a), access: Access { slot: self.slot(a)?, offset: 0, strides: contiguous.clone() } }),
                        None => {
                            let src = self.fusion.source(g, a);
                            self.load(&mut lk, m, &src, g.dtype(a))?
                        }
                    };
                    args.push(v);
                }
                let Some(&arg0) = node.args.first() else {
                    return Err(self.unsupported(m, "not a loop operation"));
                };
                let arg0_dtype = g.dtype(arg0);
                match &node.op {
                    Op::Reduce { op, axes } => {
                        let mut strides = Affine::contiguous(node.shape.dims()).strides;
                        for &a in axes {
                            strides[a] = 0;
                        }
                        lk.stores.push(Store { value: args[0], dtype: node.dtype, access: Access { slot: self.slot(m)?, offset: 0, strides }, reduce: Some(*op) });
                        continue;
                    }
                    Op::Unary(u) => lk.push(Inst::Unary { op: *u, dtype: node.dtype, x: args[0] }),
                    Op::Binary(b) => lk.push(Inst::Binary { op: *b, dtype: node.dtype, a: args[0], b: args[1] }),
                    Op::Compare(c) => lk.push(Inst::Compare { op: *c, dtype: arg0_dtype, a: args[0], b: args[1] }),
                    Op::Select => lk.push(Inst::Select { dtype: node.dtype, cond: args[0], a: args[1], b: args[2] }),
                    Op::Cast => lk.push(Inst::Cast { from: arg0_dtype, to: node.dtype, x: args[0] }),
                    _ => return Err(self.unsupported(m, "not a loop operation")),
                }
            };
            vals.insert(m, v);
            if matches!(self.fusion.value(m), Value::Loop { stored: true, .. }) {
                match self.memory.stored_into.get(&m) {
                    // Straight into the concats that alone read it.
                    Some(into) => {
                        for (concat, offset, strides) in into {
                            let access = Access { slot: self.slot(*concat)?, offset: *offset, strides: strides.clone() };
                            lk.stores.push(Store { value: v, dtype: node.dtype, access, reduce: None });
                        }
                    }
                    None => lk.stores.push(Store { value: v, dtype: node.dtype, access: Access { slot: self.slot(m)?, offset: 0, strides: contiguous.clone() }, reduce: None }),
                }
            }
        }
        lk.normalize();
        lk.hoist_parallel_loop();
        let name_node = kernel.body.first().copied().or(root).unwrap_or(NodeId::new(0));
        self.kernels.push(lk);
        self.kernel_nodes.push(name_node);
        Ok(self.kernels.len() - 1)
    }

    /// Reads `src` as a `dtype` value in the loop's iteration space.
    fn load(&self, lk: &mut LoopKernel, reader: NodeId, src: &Source, dtype: DType) -> Result<Val, LowerError> {
        Ok(match src {
            Source::Const(v) => lk.push(Inst::Const { dtype, value: *v }),
            Source::Index(map) => {
                let i = lk.push(Inst::Index { offset: map.offset, strides: map.strides.clone() });
                if dtype == DType::I64 { i } else { lk.push(Inst::Cast { from: DType::I64, to: dtype, x: i }) }
            }
            Source::Buffer { base, map } => {
                let slot = self.slot_of.get(base).copied().ok_or_else(|| self.unsupported(reader, "operand has no buffer"))?;
                lk.push(Inst::Load { dtype, access: Access { slot, offset: map.offset, strides: map.strides.clone() } })
            }
        })
    }
}

/// Where a pad writes its operand's elements in its output.
pub fn pad_map(dims: &[usize], lo: &[usize], hi: &[usize], interior: &[usize]) -> (Affine, usize) {
    let out_dims: Vec<usize> = (0..dims.len()).map(|k| lo[k] + hi[k] + dims[k] + interior[k] * dims[k].saturating_sub(1)).collect();
    let out_strides = Affine::contiguous(&out_dims).strides;
    let map = Affine {
        offset: (0..dims.len()).map(|k| lo[k] as i64 * out_strides[k]).sum(),
        strides: (0..dims.len()).map(|k| out_strides[k] * (interior[k] as i64 + 1)).collect(),
    };
    (map, out_dims.iter().product())
}
