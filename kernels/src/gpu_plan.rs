//! A plan as a GPU runs it: every step a loop kernel. The CPU calls
//! library code for matrix products, convolutions and the routines
//! (`d2l_cpu::routines`); a GPU has none of that, so here each becomes one
//! or more [`LoopKernel`]s that the PTX backend compiles like any other and
//! the grid interpreter executes, so that a whole training step's GPU code
//! is tested on the CPU.
//!
//! These are the straightforward forms, correct first: a matrix product is
//! a loop over `[batch.., m, n, k]` summing along `k`, a convolution one over
//! `[N, O, Ho, Wo, C, kh, kw]` (on a zero-padded copy when it pads), a
//! scatter-add sums, for every output row, the updates whose index names it
//! (no atomics: the same sums in the same order on every run). Faster GPU
//! products (cuBLAS, tiled kernels) are later work. Uniform random numbers
//! (dropout's) are computed per element from ChaCha12 word positions
//! ([`crate::chacha`]): the same numbers the interpreter draws one after
//! another from `StdRng`; normal ones are drawn on the host.

use d2l_ir::{BinaryOp, CmpOp, DType, NodeId, PoolKind, RandDist, ReduceOp};
use d2l_passes::fusion::Affine;

use crate::kernel::{Access, Inst, LoopKernel, Store, Val};
use crate::lower::{CopySource, Operand, OutputFill, Place, Plan, Routine, Slot, Step};

/// Status bits a GPU plan's kernels set (bit 1 is an integer division by zero).
pub const INDEX_OUT_OF_RANGE: i64 = 2;

/// Arena offsets of scratch buffers are multiples of this (cudaMalloc's
/// own alignment).
const ALIGN: usize = 256;

#[derive(Clone, Debug)]
pub enum GpuStep {
    /// Runs `kernel` over its whole range. When it sets
    /// [`INDEX_OUT_OF_RANGE`], `indices` says which index buffer to blame:
    /// (slot, how many, the size of the axis they index).
    Kernel { kernel: usize, node: NodeId, indices: Option<(usize, usize, usize)> },
    /// Normal random numbers into `out`, drawn on the host (their
    /// rejection sampling reads a varying number of words).
    Rand { node: NodeId, dist: RandDist, out: usize },
    /// The random stream's current position (in 32-bit words) written to
    /// i64 slot `slot`, then the position moved `words` on: the uniform
    /// numbers' kernel that follows computes its words from there.
    StreamPosition { slot: usize, words: u64 },
}

#[derive(Clone, Debug)]
pub struct GpuPlan {
    /// The plan's slots, then scratch slots (in the arena past the plan's
    /// own buffers).
    pub slots: Vec<Slot>,
    pub kernels: Vec<LoopKernel>,
    pub steps: Vec<GpuStep>,
    /// Bytes of arena: the memory plan's, then the scratch buffers.
    pub arena_bytes: usize,
}

struct Builder<'p> {
    plan: &'p Plan,
    /// The key of the random stream (ChaCha12's, from the program's seed).
    key: [u32; 8],
    slots: Vec<Slot>,
    kernels: Vec<LoopKernel>,
    steps: Vec<GpuStep>,
    arena_bytes: usize,
}

fn contiguous(dims: &[usize]) -> Vec<i64> {
    Affine::contiguous(dims).strides
}

fn store(value: Val, dtype: DType, slot: usize, offset: i64, strides: Vec<i64>, reduce: Option<ReduceOp>) -> Store {
    Store { value, dtype, access: Access { slot, offset, strides }, reduce }
}

fn load(k: &mut LoopKernel, dtype: DType, slot: usize, offset: i64, strides: Vec<i64>) -> Val {
    k.push(Inst::Load { dtype, access: Access { slot, offset, strides } })
}

impl Builder<'_> {
    fn dtype(&self, slot: usize) -> DType {
        self.slots[slot].dtype
    }

    fn scratch(&mut self, dtype: DType, numel: usize) -> usize {
        let offset = self.arena_bytes.div_ceil(ALIGN) * ALIGN;
        self.arena_bytes = offset + numel * dtype.size_bytes();
        self.slots.push(Slot { node: None, dtype, numel, place: Place::Arena(offset) });
        self.slots.len() - 1
    }

    fn kernel(&mut self, mut k: LoopKernel, node: NodeId, indices: Option<(usize, usize, usize)>) {
        k.name = format!("g{}", self.kernels.len());
        k.normalize();
        self.kernels.push(k);
        self.steps.push(GpuStep::Kernel { kernel: self.kernels.len() - 1, node, indices });
    }

    /// `out[i] = value` over `numel` elements.
    fn fill(&mut self, out: usize, numel: usize, value: f64, node: NodeId) {
        let dtype = self.dtype(out);
        let mut k = LoopKernel::new("", vec![numel]);
        let v = k.push(Inst::Const { dtype, value });
        k.stores.push(store(v, dtype, out, 0, vec![1], None));
        self.kernel(k, node, None);
    }

    /// `out` (contiguous over `dims`) from `src` read through `map`.
    fn copy(&mut self, src: &Operand, dims: &[usize], out: usize, write: &Affine, node: NodeId) {
        let dtype = self.dtype(out);
        let mut k = LoopKernel::new("", dims.to_vec());
        let v = load(&mut k, dtype, src.slot, src.map.offset, src.map.strides.clone());
        k.stores.push(store(v, dtype, out, write.offset, write.strides.clone(), None));
        self.kernel(k, node, None);
    }

    fn step(&mut self, step: &Step) {
        match step {
            Step::Loop { kernel } => {
                let node = self.plan.kernel_nodes[*kernel];
                self.kernels.push(self.plan.kernels[*kernel].clone());
                self.steps.push(GpuStep::Kernel { kernel: self.kernels.len() - 1, node, indices: None });
            }
            Step::MatMul { node, dtype, batch, m, n, k: kk, a, b, out, epilogue } => {
                let r = batch.len();
                let mut dims = batch.clone();
                dims.extend([*m, *n, *kk]);
                let mut k = LoopKernel::new("", dims);
                // a [.., m, k] and b [.., k, n] onto the loops [.., m, n, k].
                let mut sa = a.map.strides[..r].to_vec();
                sa.extend([a.map.strides[r], 0, a.map.strides[r + 1]]);
                let mut sb = b.map.strides[..r].to_vec();
                sb.extend([0, b.map.strides[r + 1], b.map.strides[r]]);
                let x = load(&mut k, *dtype, a.slot, a.map.offset, sa);
                let y = load(&mut k, *dtype, b.slot, b.map.offset, sb);
                let p = k.push(Inst::Binary { op: BinaryOp::Mul, dtype: *dtype, a: x, b: y });
                let mut so = contiguous(&[batch.as_slice(), &[*m, *n]].concat());
                so.push(0);
                k.stores.push(store(p, *dtype, *out, 0, so, Some(ReduceOp::Sum)));
                self.kernel(k, *node, None);
                if let Some(e) = epilogue {
                    self.step(&Step::Loop { kernel: *e });
                }
            }
            Step::Conv2d { node, dtype, x, x_dims, pad, w, w_dims, stride, out, epilogue } => {
                let [n, c, h, wd] = *x_dims;
                let [o, _, kh, kw] = *w_dims;
                let (hp, wp) = (h + pad[0] + pad[1], wd + pad[2] + pad[3]);
                // A padded input is a zeroed copy with x written inside.
                let x = if *pad == [0; 4] {
                    x.clone()
                } else {
                    let padded = self.scratch(*dtype, n * c * hp * wp);
                    self.fill(padded, n * c * hp * wp, 0.0, *node);
                    let inner = Affine { offset: (pad[0] * wp + pad[2]) as i64, strides: contiguous(&[n, c, hp, wp]) };
                    self.copy(x, x_dims, padded, &inner, *node);
                    Operand { slot: padded, map: Affine::contiguous(&[n, c, hp, wp]) }
                };
                let (ho, wo) = ((hp - kh) / stride[0] + 1, (wp - kw) / stride[1] + 1);
                let mut k = LoopKernel::new("", vec![n, o, ho, wo, c, kh, kw]);
                let xs = &x.map.strides;
                let sx = vec![xs[0], 0, xs[2] * stride[0] as i64, xs[3] * stride[1] as i64, xs[1], xs[2], xs[3]];
                let ws = &w.map.strides;
                let sw = vec![0, ws[0], 0, 0, ws[1], ws[2], ws[3]];
                let a = load(&mut k, *dtype, x.slot, x.map.offset, sx);
                let b = load(&mut k, *dtype, w.slot, w.map.offset, sw);
                let p = k.push(Inst::Binary { op: BinaryOp::Mul, dtype: *dtype, a, b });
                let mut so = contiguous(&[n, o, ho, wo]);
                so.extend([0, 0, 0]);
                k.stores.push(store(p, *dtype, *out, 0, so, Some(ReduceOp::Sum)));
                self.kernel(k, *node, None);
                if let Some(e) = epilogue {
                    self.step(&Step::Loop { kernel: *e });
                }
            }
            Step::Routine { node, routine, out } => self.routine(*node, routine, *out),
        }
    }

    fn routine(&mut self, node: NodeId, routine: &Routine, out: usize) {
        let dtype = self.dtype(out);
        match routine {
            Routine::Pad { src, dims, write, out_numel, value } => {
                self.fill(out, *out_numel, *value, node);
                self.copy(&Operand { slot: *src, map: Affine::contiguous(dims) }, dims, out, write, node);
            }
            Routine::Concat { parts, outer, stride } => {
                let size = dtype.size_bytes();
                for &(src, row_bytes, at) in parts {
                    let row = row_bytes / size;
                    let write = Affine { offset: (at / size) as i64, strides: vec![(stride / size) as i64, 1] };
                    self.copy(&Operand { slot: src, map: Affine::contiguous(&[*outer, row]) }, &[*outer, row], out, &write, node);
                }
            }
            Routine::PadSum { parts, out_numel } => {
                self.fill(out, *out_numel, 0.0, node);
                for (src, dims, write) in parts {
                    let mut k = LoopKernel::new("", dims.clone());
                    let old = load(&mut k, dtype, out, write.offset, write.strides.clone());
                    let add = load(&mut k, dtype, *src, 0, contiguous(dims));
                    let v = k.push(Inst::Binary { op: BinaryOp::Add, dtype, a: old, b: add });
                    k.stores.push(store(v, dtype, out, write.offset, write.strides.clone(), None));
                    self.kernel(k, node, None);
                }
            }
            Routine::Gather { x, split: (outer, n, inner), idx, m } => {
                // out[o, i, j] = x[o, idx[i], j], an index outside 0..n flagged
                // (and read as 0, to stay in bounds).
                let (outer, n, inner, m) = (*outer, *n, *inner, *m);
                let mut k = LoopKernel::new("", vec![outer, m, inner]);
                let i = load(&mut k, DType::I64, *idx, 0, vec![0, 1, 0]);
                let row = self.checked_index(&mut k, i, n);
                let width = k.push(Inst::Const { dtype: DType::I64, value: inner as f64 });
                let at = k.push(Inst::Binary { op: BinaryOp::Mul, dtype: DType::I64, a: row, b: width });
                let rest = k.push(Inst::Index { offset: 0, strides: vec![(n * inner) as i64, 0, 1] });
                let at = k.push(Inst::Binary { op: BinaryOp::Add, dtype: DType::I64, a: at, b: rest });
                let v = k.push(Inst::LoadAt { dtype, slot: *x, offset: 0, at });
                k.stores.push(store(v, dtype, out, 0, contiguous(&[outer, m, inner]), None));
                self.kernel(k, node, Some((*idx, m, n)));
            }
            Routine::ScatterAdd { idx, m, updates, split: (outer, n, inner) } => {
                // out[o, r, j] = Σ_i (idx[i] == r ? updates[o, i, j] : 0), in
                // the order of i; indices outside 0..n flagged first.
                let (outer, n, inner, m) = (*outer, *n, *inner, *m);
                let mut check = LoopKernel::new("", vec![m]);
                let i = load(&mut check, DType::I64, *idx, 0, vec![1]);
                self.checked_index(&mut check, i, n);
                self.kernel(check, node, Some((*idx, m, n)));
                let mut k = LoopKernel::new("", vec![outer, n, inner, m]);
                let i = load(&mut k, DType::I64, *idx, 0, vec![0, 0, 0, 1]);
                let r = k.push(Inst::Index { offset: 0, strides: vec![0, 1, 0, 0] });
                let hit = k.push(Inst::Compare { op: CmpOp::Eq, dtype: DType::I64, a: i, b: r });
                let u = load(&mut k, dtype, *updates, 0, vec![(m * inner) as i64, 0, 1, inner as i64]);
                let zero = k.push(Inst::Const { dtype, value: 0.0 });
                let v = k.push(Inst::Select { dtype, cond: hit, a: u, b: zero });
                let mut so = contiguous(&[outer, n, inner]);
                so.push(0);
                k.stores.push(store(v, dtype, out, 0, so, Some(if dtype == DType::Bool { ReduceOp::Max } else { ReduceOp::Sum })));
                self.kernel(k, node, None);
            }
            Routine::Pool2d { kind, x, dims: [n, c, h, w], window: [kh, kw], stride: [sy, sx] } => {
                let (ho, wo) = ((h - kh) / sy + 1, (w - kw) / sx + 1);
                let mut k = LoopKernel::new("", vec![*n, *c, ho, wo, *kh, *kw]);
                let (w, hw) = (*w as i64, (*h * *w) as i64);
                let v = load(&mut k, dtype, *x, 0, vec![*c as i64 * hw, hw, w * *sy as i64, *sx as i64, w, 1]);
                let mut so = contiguous(&[*n, *c, ho, wo]);
                so.extend([0, 0]);
                let op = if *kind == PoolKind::Max { ReduceOp::Max } else { ReduceOp::Sum };
                k.stores.push(store(v, dtype, out, 0, so, Some(op)));
                self.kernel(k, node, None);
                if *kind == PoolKind::Avg {
                    let numel = n * c * ho * wo;
                    let mut k = LoopKernel::new("", vec![numel]);
                    let s = load(&mut k, dtype, out, 0, vec![1]);
                    let count = k.push(Inst::Const { dtype, value: (kh * kw) as f64 });
                    let v = k.push(Inst::Binary { op: BinaryOp::Div, dtype, a: s, b: count });
                    k.stores.push(store(v, dtype, out, 0, vec![1], None));
                    self.kernel(k, node, None);
                }
            }
            Routine::ArgMax { x, split: (outer, n, inner) } => {
                // The first index of the maximum (of the first NaN, if any):
                // the maximum, then the largest `n - 1 - r` where x equals it.
                let (outer, n, inner) = (*outer, *n, *inner);
                let xd = self.dtype(*x);
                let best = self.scratch(xd, outer * inner);
                let xs = vec![(n * inner) as i64, 1, inner as i64];
                let mut k = LoopKernel::new("", vec![outer, inner, n]);
                let v = load(&mut k, xd, *x, 0, xs.clone());
                k.stores.push(store(v, xd, best, 0, vec![inner as i64, 1, 0], Some(ReduceOp::Max)));
                self.kernel(k, node, None);
                let mut k = LoopKernel::new("", vec![outer, inner, n]);
                let v = load(&mut k, xd, *x, 0, xs);
                let b = load(&mut k, xd, best, 0, vec![inner as i64, 1, 0]);
                let eq = k.push(Inst::Compare { op: CmpOp::Eq, dtype: xd, a: v, b });
                let v_nan = k.push(Inst::Compare { op: CmpOp::Ne, dtype: xd, a: v, b: v });
                let b_nan = k.push(Inst::Compare { op: CmpOp::Ne, dtype: xd, a: b, b });
                let both = k.push(Inst::Binary { op: BinaryOp::Mul, dtype: DType::Bool, a: v_nan, b: b_nan });
                let hit = k.push(Inst::Binary { op: BinaryOp::Add, dtype: DType::Bool, a: eq, b: both });
                let back = k.push(Inst::Index { offset: n as i64 - 1, strides: vec![0, 0, -1] });
                let none = k.push(Inst::Const { dtype: DType::I64, value: -1.0 });
                let v = k.push(Inst::Select { dtype: DType::I64, cond: hit, a: back, b: none });
                k.stores.push(store(v, DType::I64, out, 0, vec![inner as i64, 1, 0], Some(ReduceOp::Max)));
                self.kernel(k, node, None);
                let mut k = LoopKernel::new("", vec![outer * inner]);
                let v = load(&mut k, DType::I64, out, 0, vec![1]);
                let last = k.push(Inst::Const { dtype: DType::I64, value: n as f64 - 1.0 });
                let r = k.push(Inst::Binary { op: BinaryOp::Sub, dtype: DType::I64, a: last, b: v });
                k.stores.push(store(r, DType::I64, out, 0, vec![1], None));
                self.kernel(k, node, None);
            }
            Routine::Rand { dist: RandDist::Uniform } if matches!(dtype, DType::F32 | DType::F64) => {
                // As `rand` makes a uniform number: f32 from one word's top 24
                // bits, f64 from two words' top 53, scaled into [0, 1).
                let n = self.slots[out].numel;
                let words = if dtype == DType::F32 { 1 } else { 2 };
                let at = self.scratch(DType::I64, 1);
                self.steps.push(GpuStep::StreamPosition { slot: at, words: (n * words) as u64 });
                let mut k = LoopKernel::new("", vec![n]);
                let start = load(&mut k, DType::I64, at, 0, vec![0]);
                let offset = k.push(Inst::Index { offset: 0, strides: vec![words as i64] });
                let pos = k.push(Inst::Binary { op: BinaryOp::Add, dtype: DType::I64, a: start, b: offset });
                let int = |k: &mut LoopKernel, v: f64| k.push(Inst::Const { dtype: DType::I64, value: v });
                let w = k.push(Inst::StreamWord { key: self.key, position: pos });
                let (bits, scale) = if dtype == DType::F32 {
                    let d = int(&mut k, 256.0);
                    (k.push(Inst::Binary { op: BinaryOp::Div, dtype: DType::I64, a: w, b: d }), 1.0 / (1u64 << 24) as f64)
                } else {
                    let one = int(&mut k, 1.0);
                    let next = k.push(Inst::Binary { op: BinaryOp::Add, dtype: DType::I64, a: pos, b: one });
                    let hi = k.push(Inst::StreamWord { key: self.key, position: next });
                    let (up, down) = (int(&mut k, (1u64 << 21) as f64), int(&mut k, (1u64 << 11) as f64));
                    let hi = k.push(Inst::Binary { op: BinaryOp::Mul, dtype: DType::I64, a: hi, b: up });
                    let lo = k.push(Inst::Binary { op: BinaryOp::Div, dtype: DType::I64, a: w, b: down });
                    (k.push(Inst::Binary { op: BinaryOp::Add, dtype: DType::I64, a: hi, b: lo }), 1.0 / (1u64 << 53) as f64)
                };
                let f = k.push(Inst::Cast { from: DType::I64, to: dtype, x: bits });
                let s = k.push(Inst::Const { dtype, value: scale });
                let v = k.push(Inst::Binary { op: BinaryOp::Mul, dtype, a: f, b: s });
                k.stores.push(store(v, dtype, out, 0, vec![1], None));
                self.kernel(k, node, None);
            }
            Routine::Rand { dist } => self.steps.push(GpuStep::Rand { node, dist: *dist, out }),
        }
    }

    /// `i` if it lies in `0..n`, else 0 with [`INDEX_OUT_OF_RANGE`] flagged.
    fn checked_index(&self, k: &mut LoopKernel, i: Val, n: usize) -> Val {
        let zero = k.push(Inst::Const { dtype: DType::I64, value: 0.0 });
        let size = k.push(Inst::Const { dtype: DType::I64, value: n as f64 });
        let low = k.push(Inst::Compare { op: CmpOp::Lt, dtype: DType::I64, a: i, b: zero });
        let high = k.push(Inst::Compare { op: CmpOp::Ge, dtype: DType::I64, a: i, b: size });
        let bad = k.push(Inst::Binary { op: BinaryOp::Add, dtype: DType::Bool, a: low, b: high });
        k.push(Inst::Flag { cond: bad, bit: INDEX_OUT_OF_RANGE });
        k.push(Inst::Select { dtype: DType::I64, cond: bad, a: zero, b: i })
    }
}

impl GpuPlan {
    /// Instructions one run executes, summed over every iteration of every
    /// kernel: what the grid interpreter's time is proportional to.
    pub fn work(&self) -> u64 {
        self.kernels.iter().map(|k| k.numel() as u64 * (k.insts.len() + k.stores.len()) as u64).sum()
    }

    /// `plan`'s steps as loop kernels, then the output copies; `seed`
    /// keys the random stream (as the interpreter's `StdRng`).
    pub fn of(plan: &Plan, seed: u64) -> GpuPlan {
        let mut b = Builder { plan, key: crate::chacha::key_of_seed(seed), slots: plan.slots.clone(), kernels: Vec::new(), steps: Vec::new(), arena_bytes: plan.memory.size };
        for step in &plan.steps {
            b.step(step);
        }
        for out in &plan.outputs {
            let OutputFill::Copy(source) = &out.fill else { continue };
            let dims = out.shape.dims().to_vec();
            let numel: usize = dims.iter().product();
            match source {
                CopySource::Const(v) => b.fill(out.slot, numel, *v, out.node),
                CopySource::Index(map) => {
                    let mut k = LoopKernel::new("", dims.clone());
                    let i = k.push(Inst::Index { offset: map.offset, strides: map.strides.clone() });
                    let v = if out.dtype == DType::I64 { i } else { k.push(Inst::Cast { from: DType::I64, to: out.dtype, x: i }) };
                    k.stores.push(store(v, out.dtype, out.slot, 0, contiguous(&dims), None));
                    b.kernel(k, out.node, None);
                }
                CopySource::Slot(src) => b.copy(src, &dims, out.slot, &Affine::contiguous(&dims), out.node),
            }
        }
        GpuPlan { slots: b.slots, kernels: b.kernels, steps: b.steps, arena_bytes: b.arena_bytes }
    }
}
