//! The loop-level kernel representation shared by the CPU (Cranelift) and,
//! later, GPU (PTX) backends.
//!
//! A [`LoopKernel`] is one perfect loop nest over `extents` (outermost
//! first) whose body is a list of SSA instructions: strided loads from
//! numbered buffer slots, constants, index arithmetic and the elementwise
//! ops of the IR, then stores. A store with a `reduce` op combines into its
//! destination instead of overwriting it; the destination's stride is 0 along
//! the reduced loops. Every address is `slot base + (offset + Σ stride·i)`
//! elements, so a backend needs no other indexing rule.

use std::fmt::{self, Write};

use d2l_ir::{BinaryOp, CmpOp, DType, ReduceOp, UnaryOp};

/// A value computed by an instruction of the body (its index).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Val(pub u32);

/// `slot`'s buffer at element `offset + Σ strides[d] · i[d]`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Access {
    pub slot: usize,
    pub offset: i64,
    pub strides: Vec<i64>,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Inst {
    Load { dtype: DType, access: Access },
    Const { dtype: DType, value: f64 },
    /// `offset + Σ strides[d] · i[d]` as an i64 (iota).
    Index { offset: i64, strides: Vec<i64> },
    Unary { op: UnaryOp, dtype: DType, x: Val },
    Binary { op: BinaryOp, dtype: DType, a: Val, b: Val },
    /// Compares two values of `dtype`; the result is bool.
    Compare { op: CmpOp, dtype: DType, a: Val, b: Val },
    Select { dtype: DType, cond: Val, a: Val, b: Val },
    Cast { from: DType, to: DType, x: Val },
    /// `slot`'s element `offset + at` (`at` an i64 value): an indirect load
    /// (a gather's rows). Only GPU plans ([`crate::gpu_plan`]) have them.
    LoadAt { dtype: DType, slot: usize, offset: i64, at: Val },
    /// Where `cond` holds, ORs `bit` into the status word (slot 0); the
    /// value is `cond`. Only GPU plans have them (an index out of range).
    Flag { cond: Val, bit: i64 },
    /// The 32-bit word at stream position `position` (an i64 value) of
    /// ChaCha12 keyed by `key` ([`crate::chacha::word`]), as an i64: the
    /// random numbers of GPU plans.
    StreamWord { key: [u32; 8], position: Val },
}

impl Inst {
    /// The dtype of the value this instruction produces.
    pub fn dtype(&self) -> DType {
        match self {
            Inst::Load { dtype, .. } | Inst::Const { dtype, .. } | Inst::LoadAt { dtype, .. } => *dtype,
            Inst::Index { .. } | Inst::StreamWord { .. } => DType::I64,
            Inst::Unary { dtype, .. } | Inst::Binary { dtype, .. } | Inst::Select { dtype, .. } => *dtype,
            Inst::Compare { .. } | Inst::Flag { .. } => DType::Bool,
            Inst::Cast { to, .. } => *to,
        }
    }

    pub fn operands(&self) -> Vec<Val> {
        match self {
            Inst::Load { .. } | Inst::Const { .. } | Inst::Index { .. } => vec![],
            Inst::Unary { x, .. } | Inst::Cast { x, .. } => vec![*x],
            Inst::LoadAt { at, .. } => vec![*at],
            Inst::Flag { cond, .. } => vec![*cond],
            Inst::StreamWord { position, .. } => vec![*position],
            Inst::Binary { a, b, .. } | Inst::Compare { a, b, .. } => vec![*a, *b],
            Inst::Select { cond, a, b, .. } => vec![*cond, *a, *b],
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Store {
    pub value: Val,
    pub dtype: DType,
    pub access: Access,
    /// Combine into the destination (which starts at the op's identity)
    /// instead of overwriting it.
    pub reduce: Option<ReduceOp>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct LoopKernel {
    pub name: String,
    pub extents: Vec<usize>,
    pub insts: Vec<Inst>,
    pub stores: Vec<Store>,
    /// Loop 0 was moved out of the middle of the nest (see
    /// [`LoopKernel::hoist_parallel_loop`]): it no longer covers the
    /// iteration space's leading axis.
    pub hoisted: bool,
}

impl LoopKernel {
    /// The kernel with each distinct (slot, offset) it reads or writes
    /// renamed by first use (loads in order, then stores) as a slot of its
    /// own at offset 0 (slot 0, the status word, stays 0), and without its
    /// name; and those (slot, offset, element size) in that order. Two
    /// kernels doing the same work on other buffers or other parts of a
    /// buffer (the steps of an unrolled loop) have equal canonical forms, so
    /// one machine-code function serves both, each called with a table of
    /// its own addresses.
    pub fn canonical(&self) -> (LoopKernel, Vec<(usize, i64, usize)>) {
        let mut places = vec![(0, 0, 8)];
        let mut rename = |access: &mut Access, size: usize| {
            let place = (access.slot, access.offset, size);
            let i = match places.iter().position(|p| (p.0, p.1) == (place.0, place.1)) {
                Some(i) => i,
                None => {
                    places.push(place);
                    places.len() - 1
                }
            };
            access.slot = i;
            access.offset = 0;
        };
        let mut k = self.clone();
        k.name = String::new();
        for inst in &mut k.insts {
            match inst {
                Inst::Load { access, dtype } => rename(access, dtype.size_bytes()),
                Inst::LoadAt { dtype, slot, offset, .. } => {
                    let mut access = Access { slot: *slot, offset: *offset, strides: Vec::new() };
                    rename(&mut access, dtype.size_bytes());
                    (*slot, *offset) = (access.slot, access.offset);
                }
                _ => {}
            }
        }
        for store in &mut k.stores {
            let size = store.dtype.size_bytes();
            rename(&mut store.access, size);
        }
        (k, places)
    }

    pub fn new(name: impl Into<String>, extents: Vec<usize>) -> LoopKernel {
        LoopKernel { name: name.into(), extents, insts: Vec::new(), stores: Vec::new(), hoisted: false }
    }

    /// Appends an instruction, reusing an identical load, constant or index.
    pub fn push(&mut self, inst: Inst) -> Val {
        if matches!(inst, Inst::Load { .. } | Inst::Const { .. } | Inst::Index { .. })
            && let Some(i) = self.insts.iter().position(|x| *x == inst)
        {
            return Val(i as u32);
        }
        self.insts.push(inst);
        Val(self.insts.len() as u32 - 1)
    }

    pub fn numel(&self) -> usize {
        self.extents.iter().product()
    }

    /// The body's cost per iteration in instructions, each transcendental
    /// counted as the polynomial it becomes (~30).
    pub fn body_cost(&self) -> usize {
        self.insts
            .iter()
            .map(|i| match i {
                Inst::Unary { op: UnaryOp::Exp | UnaryOp::Log | UnaryOp::Tanh | UnaryOp::Sigmoid, .. } => 30,
                _ => 1,
            })
            .sum::<usize>()
            + self.stores.len()
    }

    /// Every stride vector of the kernel (loads, indices, stores).
    fn stride_vectors_mut(&mut self) -> impl Iterator<Item = &mut Vec<i64>> {
        let insts = self.insts.iter_mut().filter_map(|i| match i {
            Inst::Load { access, .. } => Some(&mut access.strides),
            Inst::Index { strides, .. } => Some(strides),
            _ => None,
        });
        insts.chain(self.stores.iter_mut().map(|s| &mut s.access.strides))
    }

    fn stride_vectors(&self) -> impl Iterator<Item = &Vec<i64>> {
        let insts = self.insts.iter().filter_map(|i| match i {
            Inst::Load { access, .. } => Some(&access.strides),
            Inst::Index { strides, .. } => Some(strides),
            _ => None,
        });
        insts.chain(self.stores.iter().map(|s| &s.access.strides))
    }

    /// Drops unit loops and merges neighbouring loops that every access
    /// walks as one run (`stride[d] = stride[d+1] · extent[d+1]`), so the
    /// innermost loop is as long as possible. Always leaves at least one loop.
    pub fn normalize(&mut self) {
        let keep: Vec<usize> = (0..self.extents.len()).filter(|&d| self.extents[d] != 1).collect();
        let extents: Vec<usize> = keep.iter().map(|&d| self.extents[d]).collect();
        for s in self.stride_vectors_mut() {
            *s = keep.iter().map(|&d| s[d]).collect();
        }
        self.extents = extents;
        let mut d = self.extents.len();
        while d >= 2 {
            d -= 1;
            let inner = self.extents[d];
            if self.stride_vectors().all(|s| s[d - 1] == s[d] * inner as i64) {
                self.extents[d - 1] *= inner;
                self.extents.remove(d);
                for s in self.stride_vectors_mut() {
                    let st = s.remove(d);
                    s[d - 1] = st;
                }
            }
        }
        if self.extents.is_empty() || self.extents.contains(&0) {
            let empty = self.extents.contains(&0);
            self.extents = vec![if empty { 0 } else { 1 }];
            for s in self.stride_vectors_mut() {
                *s = vec![0];
            }
        }
    }

    /// Makes a reduction kernel splittable when it can be: moves the
    /// largest middle loop that no reduction runs along to the outside
    /// (e.g. a bias gradient over `[N, C, HW]` becomes `[C, N, HW]`, split
    /// over channels). The innermost loop stays.
    pub fn hoist_parallel_loop(&mut self) {
        let r = self.extents.len();
        if self.splittable() || r < 3 {
            return;
        }
        let free = |d: usize| self.stores.iter().all(|s| s.reduce.is_none() || s.access.strides[d] != 0);
        let Some(d) = (1..r - 1).filter(|&d| free(d) && self.extents[d] >= 2).max_by_key(|&d| self.extents[d]) else { return };
        let e = self.extents.remove(d);
        self.extents.insert(0, e);
        for s in self.stride_vectors_mut() {
            let st = s.remove(d);
            s.insert(0, st);
        }
        self.hoisted = true;
    }

    /// Whether loop 0 can be split into ranges run independently (in
    /// parallel, or per chunk of a convolution): no reduction along it.
    pub fn splittable(&self) -> bool {
        self.stores.iter().all(|s| s.reduce.is_none() || s.access.strides[0] != 0)
    }
}

fn dt(d: DType) -> &'static str {
    d.name()
}

impl fmt::Display for Access {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "b{}[", self.slot)?;
        if self.offset != 0 {
            write!(f, "{}; ", self.offset)?;
        }
        let s: Vec<String> = self.strides.iter().map(i64::to_string).collect();
        write!(f, "{}]", s.join(" "))
    }
}

impl fmt::Display for LoopKernel {
    /// `kernel k3 [256, 10]` then one line per instruction and store.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "kernel {} {:?}", self.name, self.extents)?;
        for (i, inst) in self.insts.iter().enumerate() {
            let mut line = format!("  v{i}: {} = ", dt(inst.dtype()));
            let _ = match inst {
                Inst::Load { access, .. } => write!(line, "load {access}"),
                Inst::Const { value, .. } => write!(line, "const {value}"),
                Inst::Index { offset, strides } => write!(line, "index {offset} + {strides:?}·i"),
                Inst::Unary { op, x, .. } => write!(line, "{op:?} v{}", x.0),
                Inst::Binary { op, a, b, .. } => write!(line, "{op:?} v{}, v{}", a.0, b.0),
                Inst::Compare { op, dtype, a, b } => write!(line, "{op:?}.{} v{}, v{}", dt(*dtype), a.0, b.0),
                Inst::Select { cond, a, b, .. } => write!(line, "select v{}, v{}, v{}", cond.0, a.0, b.0),
                Inst::Cast { from, x, .. } => write!(line, "cast.{} v{}", dt(*from), x.0),
                Inst::LoadAt { slot, offset, at, .. } => write!(line, "load b{slot}[{offset} + v{}]", at.0),
                Inst::Flag { cond, bit } => write!(line, "flag {bit} if v{}", cond.0),
                Inst::StreamWord { position, .. } => write!(line, "chacha12 word v{}", position.0),
            };
            writeln!(f, "{}", line.to_lowercase())?;
        }
        for s in &self.stores {
            match s.reduce {
                Some(op) => writeln!(f, "  {} {} v{}", format!("{op:?}").to_lowercase(), s.access, s.value.0)?,
                None => writeln!(f, "  store {} v{}", s.access, s.value.0)?,
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalize_merges_contiguous_loops_and_keeps_broadcasts_apart() {
        // out[i, j] = x[i, j] + b[j] over [4, 1, 8]: the unit loop goes, and
        // the bias (stride 0 along i) keeps the two loops apart.
        let mut k = LoopKernel::new("t", vec![4, 1, 8]);
        let x = k.push(Inst::Load { dtype: DType::F32, access: Access { slot: 1, offset: 0, strides: vec![8, 8, 1] } });
        let b = k.push(Inst::Load { dtype: DType::F32, access: Access { slot: 2, offset: 0, strides: vec![0, 0, 1] } });
        let y = k.push(Inst::Binary { op: BinaryOp::Add, dtype: DType::F32, a: x, b });
        k.stores.push(Store { value: y, dtype: DType::F32, access: Access { slot: 3, offset: 0, strides: vec![8, 8, 1] }, reduce: None });
        k.normalize();
        assert_eq!(k.extents, vec![4, 8]);
        // Without the bias everything is one run of 32.
        k.insts[1] = Inst::Const { dtype: DType::F32, value: 1.0 };
        k.normalize();
        assert_eq!(k.extents, vec![32]);
        assert!(k.splittable());
    }
}
