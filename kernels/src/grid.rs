//! The GPU schedule executed on the CPU: a loop kernel run block by block
//! and thread by thread exactly as [`GpuSchedule`] maps it onto a GPU
//! (which iterations each thread takes, in which order it reduces them, and
//! how a block's partials meet in its warps' shuffle trees), one
//! instruction at a time. It is slow and exists to test the mapping where
//! there is no GPU: a CPU program whose loop kernels run here is checked
//! against the reference interpreter like the JIT is, so a wrong grid
//! mapping or reduction tree fails on any machine. The arithmetic is the
//! PTX backend's: `crate::math`'s exp, log, tanh and sigmoid for f32.

use d2l_ir::{BinaryOp, CmpOp, DType, ReduceOp, UnaryOp};

use crate::kernel::{Access, Inst, LoopKernel};
use crate::math;
use crate::schedule::{GpuSchedule, Regime, WARP, unflatten};

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Value {
    F32(f32),
    F64(f64),
    I64(i64),
    Bool(bool),
}

/// Runs `kernel` over its whole range as `schedule` says. `bases[s]` is
/// the address of slot `s`'s element 0; `bases[0]` is the status word,
/// which an integer division by zero sets to 1.
///
/// # Safety
/// Every access of the kernel must stay inside the buffer its slot's base
/// points to, and the buffers must hold the dtypes the kernel reads and
/// writes.
pub unsafe fn run(kernel: &LoopKernel, schedule: &GpuSchedule, bases: &[*mut u8]) {
    let mut t = Thread { k: kernel, bases, idx: vec![0; kernel.extents.len()], vals: vec![Value::Bool(false); kernel.insts.len()], status: 0 };
    if kernel.numel() > 0 {
        // SAFETY: as the caller promises.
        unsafe {
            match schedule.regime {
                Regime::Elementwise => t.elementwise(schedule),
                Regime::ThreadPerOutput => t.thread_per_output(schedule),
                Regime::BlockPerOutput => t.block_per_output(schedule),
            }
        }
    }
    if t.status != 0 {
        // SAFETY: slot 0 is the status word, an i64.
        unsafe { *(bases[0] as *mut i64) |= t.status };
    }
}

/// One thread's registers: the loop indices it is at and the value of
/// every instruction there.
struct Thread<'a> {
    k: &'a LoopKernel,
    bases: &'a [*mut u8],
    idx: Vec<i64>,
    vals: Vec<Value>,
    /// Bits for the status word: 1 an integer division by zero, others
    /// from `Flag` instructions.
    status: i64,
}

impl Thread<'_> {
    unsafe fn elementwise(&mut self, s: &GpuSchedule) {
        let (n, threads) = (s.outputs(self.k), s.grid * s.block);
        for g in 0..threads {
            for e in (g..n).step_by(threads) {
                unflatten(e, &s.parallel, &self.k.extents, &mut self.idx);
                self.eval();
                for st in &self.k.stores {
                    let v = self.vals[st.value.0 as usize];
                    let v = match st.reduce {
                        Some(op) => combine(op, identity(op, st.dtype), v),
                        None => v,
                    };
                    unsafe { self.write(&st.access, v) };
                }
            }
        }
    }

    unsafe fn thread_per_output(&mut self, s: &GpuSchedule) {
        let (n, threads, per) = (s.outputs(self.k), s.grid * s.block, s.per_output(self.k));
        let stores = &self.k.stores;
        // Reductions over every reduced loop accumulate in a register; the
        // others (reducing some of them) in memory, from their identity.
        let in_register: Vec<bool> = stores.iter().map(|st| st.reduce.is_some() && s.reduced.iter().all(|&d| st.access.strides[d] == 0)).collect();
        let mut acc: Vec<Value> = stores.iter().map(|st| identity(st.reduce.unwrap_or(ReduceOp::Sum), st.dtype)).collect();
        for g in 0..threads {
            for p in (g..n).step_by(threads) {
                unflatten(p, &s.parallel, &self.k.extents, &mut self.idx);
                for (i, st) in stores.iter().enumerate() {
                    let Some(op) = st.reduce else { continue };
                    acc[i] = identity(op, st.dtype);
                    if !in_register[i] {
                        for r in 0..per {
                            unflatten(r, &s.reduced, &self.k.extents, &mut self.idx);
                            unsafe { self.write(&st.access, acc[i]) };
                        }
                    }
                }
                for r in 0..per {
                    unflatten(r, &s.reduced, &self.k.extents, &mut self.idx);
                    self.eval();
                    for (i, st) in stores.iter().enumerate() {
                        let v = self.vals[st.value.0 as usize];
                        match st.reduce {
                            None => unsafe { self.write(&st.access, v) },
                            Some(op) if in_register[i] => acc[i] = combine(op, acc[i], v),
                            Some(op) => unsafe {
                                let old = self.read(&st.access, st.dtype);
                                self.write(&st.access, combine(op, old, v));
                            },
                        }
                    }
                }
                self.at_reduced_origin(s);
                for (i, st) in stores.iter().enumerate() {
                    if in_register[i] {
                        unsafe { self.write(&st.access, acc[i]) };
                    }
                }
            }
        }
    }

    unsafe fn block_per_output(&mut self, s: &GpuSchedule) {
        let (n, per) = (s.outputs(self.k), s.per_output(self.k));
        let stores = &self.k.stores;
        let mut partials: Vec<Vec<Value>> = vec![Vec::with_capacity(s.block); stores.len()];
        for b in 0..s.grid {
            for p in (b..n).step_by(s.grid) {
                for part in &mut partials {
                    part.clear();
                }
                unflatten(p, &s.parallel, &self.k.extents, &mut self.idx);
                for t in 0..s.block {
                    let mut acc: Vec<Value> = stores.iter().map(|st| identity(st.reduce.unwrap_or(ReduceOp::Sum), st.dtype)).collect();
                    for r in (t..per).step_by(s.block) {
                        unflatten(r, &s.reduced, &self.k.extents, &mut self.idx);
                        self.eval();
                        for (i, st) in stores.iter().enumerate() {
                            let v = self.vals[st.value.0 as usize];
                            match st.reduce {
                                None => unsafe { self.write(&st.access, v) },
                                Some(op) => acc[i] = combine(op, acc[i], v),
                            }
                        }
                    }
                    for (part, a) in partials.iter_mut().zip(acc) {
                        part.push(a);
                    }
                }
                self.at_reduced_origin(s);
                for (st, part) in stores.iter().zip(&partials) {
                    let Some(op) = st.reduce else { continue };
                    let id = identity(op, st.dtype);
                    let v = block_reduce(op, id, part);
                    unsafe { self.write(&st.access, combine(op, id, v)) };
                }
            }
        }
    }

    /// Zeroes the reduced loops' indices: where a reduction's result goes.
    fn at_reduced_origin(&mut self, s: &GpuSchedule) {
        for &d in &s.reduced {
            self.idx[d] = 0;
        }
    }

    fn address(&self, a: &Access, size: usize) -> *mut u8 {
        let e = a.offset + a.strides.iter().zip(&self.idx).map(|(s, i)| s * i).sum::<i64>();
        self.bases[a.slot].wrapping_offset(e as isize * size as isize)
    }

    unsafe fn read(&self, a: &Access, dtype: DType) -> Value {
        let p = self.address(a, dtype.size_bytes());
        // SAFETY: in bounds by `run`'s contract.
        unsafe {
            match dtype {
                DType::F32 => Value::F32(*(p as *const f32)),
                DType::F64 => Value::F64(*(p as *const f64)),
                DType::I64 => Value::I64(*(p as *const i64)),
                DType::Bool => Value::Bool(*p != 0),
            }
        }
    }

    unsafe fn write(&self, a: &Access, v: Value) {
        // SAFETY: in bounds by `run`'s contract.
        unsafe {
            match v {
                Value::F32(x) => *(self.address(a, 4) as *mut f32) = x,
                Value::F64(x) => *(self.address(a, 8) as *mut f64) = x,
                Value::I64(x) => *(self.address(a, 8) as *mut i64) = x,
                Value::Bool(x) => *self.address(a, 1) = x as u8,
            }
        }
    }

    /// Every instruction at the current loop indices.
    fn eval(&mut self) {
        for i in 0..self.k.insts.len() {
            let v = match &self.k.insts[i] {
                // SAFETY: in bounds by `run`'s contract.
                Inst::Load { dtype, access } => unsafe { self.read(access, *dtype) },
                Inst::Const { dtype, value } => constant(*dtype, *value),
                Inst::Index { offset, strides } => Value::I64(offset + strides.iter().zip(&self.idx).map(|(s, i)| s * i).sum::<i64>()),
                Inst::Unary { op, x, .. } => unary(*op, self.vals[x.0 as usize]),
                Inst::Binary { op, a, b, .. } => {
                    let (a, b) = (self.vals[a.0 as usize], self.vals[b.0 as usize]);
                    if let (BinaryOp::Div, Value::I64(_), Value::I64(0)) = (op, a, b) {
                        self.status |= 1;
                    }
                    binary(*op, a, b)
                }
                Inst::Compare { op, a, b, .. } => Value::Bool(compare(*op, self.vals[a.0 as usize], self.vals[b.0 as usize])),
                Inst::Select { cond, a, b, .. } => {
                    let Value::Bool(c) = self.vals[cond.0 as usize] else { unreachable!("select on a non-bool") };
                    self.vals[if c { a.0 } else { b.0 } as usize]
                }
                Inst::Cast { to, x, .. } => cast(self.vals[x.0 as usize], *to),
                Inst::LoadAt { dtype, slot, offset, at } => {
                    let Value::I64(at) = self.vals[at.0 as usize] else { unreachable!("an address is an i64") };
                    let access = Access { slot: *slot, offset: offset + at, strides: Vec::new() };
                    // SAFETY: in bounds by `run`'s contract (the plan clamps gathered indices).
                    unsafe { self.read(&access, *dtype) }
                }
                Inst::StreamWord { key, position } => {
                    let Value::I64(p) = self.vals[position.0 as usize] else { unreachable!("a position is an i64") };
                    Value::I64(crate::chacha::word(key, p as u64) as i64)
                }
                Inst::Flag { cond, bit } => {
                    let c = self.vals[cond.0 as usize];
                    if c == Value::Bool(true) {
                        self.status |= bit;
                    }
                    c
                }
            };
            self.vals[i] = v;
        }
    }
}

/// A block's partials (one per thread) combined as the PTX does: a
/// down-shuffle tree in each warp, then warp 0 runs the same tree over the
/// warps' results (the identity in lanes past the last warp).
pub fn block_reduce(op: ReduceOp, id: Value, partials: &[Value]) -> Value {
    let firsts: Vec<Value> = partials.chunks(WARP).map(|w| warp_reduce(op, id, w)).collect();
    if firsts.len() == 1 { firsts[0] } else { warp_reduce(op, id, &firsts) }
}

/// Lane 0 of `shfl.down` steps 16, 8, 4, 2, 1, each lane combining its
/// value with the one `step` lanes above (lanes past the warp's end hold
/// the identity here; on the GPU they hold values lane 0 never reads).
fn warp_reduce(op: ReduceOp, id: Value, lanes: &[Value]) -> Value {
    let mut v: Vec<Value> = (0..WARP).map(|l| lanes.get(l).copied().unwrap_or(id)).collect();
    let mut step = WARP / 2;
    while step > 0 {
        let old = v.clone();
        for l in 0..WARP - step {
            v[l] = combine(op, old[l], old[l + step]);
        }
        step /= 2;
    }
    v[0]
}

pub fn identity(op: ReduceOp, dtype: DType) -> Value {
    match (op, dtype) {
        (ReduceOp::Sum, DType::F32) => Value::F32(0.0),
        (ReduceOp::Max, DType::F32) => Value::F32(f32::NEG_INFINITY),
        (ReduceOp::Sum, DType::F64) => Value::F64(0.0),
        (ReduceOp::Max, DType::F64) => Value::F64(f64::NEG_INFINITY),
        (ReduceOp::Sum, DType::I64) => Value::I64(0),
        (ReduceOp::Max, DType::I64) => Value::I64(i64::MIN),
        (_, DType::Bool) => Value::Bool(false),
    }
}

/// IEEE maximum: NaN if either is, +0 above -0 (PTX `max.NaN`).
fn nan_max_f64(a: f64, b: f64) -> f64 {
    if a.is_nan() || b.is_nan() {
        f64::NAN
    } else if a == b {
        if a.is_sign_negative() { b } else { a }
    } else {
        a.max(b)
    }
}

pub fn combine(op: ReduceOp, a: Value, b: Value) -> Value {
    match (op, a, b) {
        (ReduceOp::Sum, Value::F32(a), Value::F32(b)) => Value::F32(a + b),
        (ReduceOp::Sum, Value::F64(a), Value::F64(b)) => Value::F64(a + b),
        (ReduceOp::Sum, Value::I64(a), Value::I64(b)) => Value::I64(a.wrapping_add(b)),
        (ReduceOp::Max, Value::F32(a), Value::F32(b)) => Value::F32(nan_max_f64(a as f64, b as f64) as f32),
        (ReduceOp::Max, Value::F64(a), Value::F64(b)) => Value::F64(nan_max_f64(a, b)),
        (ReduceOp::Max, Value::I64(a), Value::I64(b)) => Value::I64(a.max(b)),
        (_, Value::Bool(a), Value::Bool(b)) => Value::Bool(a | b),
        _ => unreachable!("combining {a:?} with {b:?}"),
    }
}

fn constant(dtype: DType, v: f64) -> Value {
    match dtype {
        DType::F32 => Value::F32(v as f32),
        DType::F64 => Value::F64(v),
        DType::I64 => Value::I64(v as i64),
        DType::Bool => Value::Bool(v != 0.0),
    }
}

fn unary(op: UnaryOp, x: Value) -> Value {
    match x {
        Value::F32(x) => Value::F32(match op {
            UnaryOp::Neg => -x,
            UnaryOp::Abs => x.abs(),
            UnaryOp::Sqrt => x.sqrt(),
            UnaryOp::Exp => math::exp(x),
            UnaryOp::Log => math::log(x),
            UnaryOp::Tanh => math::tanh(x),
            UnaryOp::Sigmoid => math::sigmoid(x),
            UnaryOp::Sin => x.sin(),
            UnaryOp::Cos => x.cos(),
        }),
        Value::F64(x) => Value::F64(match op {
            UnaryOp::Neg => -x,
            UnaryOp::Abs => x.abs(),
            UnaryOp::Sqrt => x.sqrt(),
            UnaryOp::Exp => x.exp(),
            UnaryOp::Log => x.ln(),
            UnaryOp::Tanh => x.tanh(),
            UnaryOp::Sigmoid => 1.0 / (1.0 + (-x).exp()),
            UnaryOp::Sin => x.sin(),
            UnaryOp::Cos => x.cos(),
        }),
        Value::I64(i) => Value::I64(match op {
            UnaryOp::Neg => i.wrapping_neg(),
            UnaryOp::Abs => i.wrapping_abs(),
            _ => i,
        }),
        Value::Bool(_) => x,
    }
}

/// The interpreter's max/min: `b` if strictly greater (smaller), else `a`;
/// NaN if either is.
fn float_max_min(max: bool, a: f64, b: f64) -> f64 {
    if a.is_nan() || b.is_nan() {
        return f64::NAN;
    }
    if (max && b > a) || (!max && b < a) { b } else { a }
}

fn binary(op: BinaryOp, a: Value, b: Value) -> Value {
    match (a, b) {
        (Value::F32(a), Value::F32(b)) => Value::F32(match op {
            BinaryOp::Add => a + b,
            BinaryOp::Sub => a - b,
            BinaryOp::Mul => a * b,
            BinaryOp::Div => a / b,
            BinaryOp::Max => float_max_min(true, a as f64, b as f64) as f32,
            BinaryOp::Min => float_max_min(false, a as f64, b as f64) as f32,
            BinaryOp::Pow => a.powf(b),
        }),
        (Value::F64(a), Value::F64(b)) => Value::F64(match op {
            BinaryOp::Add => a + b,
            BinaryOp::Sub => a - b,
            BinaryOp::Mul => a * b,
            BinaryOp::Div => a / b,
            BinaryOp::Max => float_max_min(true, a, b),
            BinaryOp::Min => float_max_min(false, a, b),
            BinaryOp::Pow => a.powf(b),
        }),
        (Value::I64(a), Value::I64(b)) => Value::I64(match op {
            BinaryOp::Add => a.wrapping_add(b),
            BinaryOp::Sub => a.wrapping_sub(b),
            BinaryOp::Mul => a.wrapping_mul(b),
            BinaryOp::Max => a.max(b),
            BinaryOp::Min => a.min(b),
            // A zero divisor is reported (the caller sets the status word)
            // and leaves `a`; `MIN / -1` wraps.
            BinaryOp::Div if b == 0 => a,
            BinaryOp::Div => a.wrapping_div(b),
            BinaryOp::Pow => a,
        }),
        (Value::Bool(a), Value::Bool(b)) => Value::Bool(match op {
            BinaryOp::Min | BinaryOp::Mul => a & b,
            _ => a | b,
        }),
        _ => unreachable!("{op:?} of {a:?} and {b:?}"),
    }
}

fn compare(op: CmpOp, a: Value, b: Value) -> bool {
    fn cmp<T: PartialOrd>(op: CmpOp, a: T, b: T) -> bool {
        match op {
            CmpOp::Eq => a == b,
            CmpOp::Ne => a != b,
            CmpOp::Lt => a < b,
            CmpOp::Le => a <= b,
            CmpOp::Gt => a > b,
            CmpOp::Ge => a >= b,
        }
    }
    match (a, b) {
        (Value::F32(a), Value::F32(b)) => cmp(op, a, b),
        (Value::F64(a), Value::F64(b)) => cmp(op, a, b),
        (Value::I64(a), Value::I64(b)) => cmp(op, a, b),
        (Value::Bool(a), Value::Bool(b)) => cmp(op, a, b),
        _ => unreachable!("comparing {a:?} with {b:?}"),
    }
}

fn cast(x: Value, to: DType) -> Value {
    match (x, to) {
        (Value::F32(v), _) => float_cast(v as f64, v != 0.0, to, Value::F32(v)),
        (Value::F64(v), _) => float_cast(v, v != 0.0, to, Value::F64(v)),
        (Value::I64(i), DType::F32) => Value::F32(i as f32),
        (Value::I64(i), DType::F64) => Value::F64(i as f64),
        (Value::I64(i), DType::Bool) => Value::Bool(i != 0),
        (Value::I64(_), DType::I64) => x,
        (Value::Bool(b), DType::F32) => Value::F32(b as u8 as f32),
        (Value::Bool(b), DType::F64) => Value::F64(b as u8 as f64),
        (Value::Bool(b), DType::I64) => Value::I64(b as i64),
        (Value::Bool(_), DType::Bool) => x,
    }
}

/// A float `v` (f64-widened; `nonzero` from its own type) as `to`: integers
/// saturate and NaN becomes 0, as `cvt.rzi.sat` does.
fn float_cast(v: f64, nonzero: bool, to: DType, same: Value) -> Value {
    match (to, same) {
        (DType::F32, Value::F32(_)) | (DType::F64, Value::F64(_)) => same,
        (DType::F32, _) => Value::F32(v as f32),
        (DType::F64, _) => Value::F64(v),
        (DType::I64, _) => Value::I64(v as i64),
        (DType::Bool, _) => Value::Bool(nonzero),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::Store;

    #[test]
    fn the_shuffle_tree_sums_every_lane_once() {
        // 300 partials: 10 warps, the last one short.
        let parts: Vec<Value> = (0..300).map(|i| Value::I64(1 << (i % 40))).collect();
        let want: i64 = (0..300).map(|i| 1i64 << (i % 40)).sum();
        assert_eq!(block_reduce(ReduceOp::Sum, Value::I64(0), &parts), Value::I64(want));
        let parts: Vec<Value> = (0..64).map(|i| Value::F32(i as f32)).collect();
        assert_eq!(block_reduce(ReduceOp::Max, Value::F32(f32::NEG_INFINITY), &parts), Value::F32(63.0));
    }

    /// Two reductions over different loops in one kernel: the one over
    /// fewer loops accumulates in memory (each thread owns its outputs),
    /// in every regime that can take the kernel.
    #[test]
    fn a_partial_reduction_accumulates_in_memory() {
        // a[i] = Σ_{j,k} x[i, j, k] and b[i, j] = Σ_k x[i, j, k] over [4, 5, 70].
        let mut k = LoopKernel::new("t", vec![4, 5, 70]);
        let x = k.push(Inst::Load { dtype: DType::F64, access: Access { slot: 1, offset: 0, strides: vec![350, 70, 1] } });
        k.stores.push(Store { value: x, dtype: DType::F64, access: Access { slot: 2, offset: 0, strides: vec![1, 0, 0] }, reduce: Some(ReduceOp::Sum) });
        k.stores.push(Store { value: x, dtype: DType::F64, access: Access { slot: 3, offset: 0, strides: vec![5, 1, 0] }, reduce: Some(ReduceOp::Sum) });
        let s = GpuSchedule::of(&k);
        assert_eq!((s.regime, s.reduced.clone()), (Regime::ThreadPerOutput, vec![1, 2]), "b keeps a block from owning its rows");
        let xs: Vec<f64> = (0..1400).map(|i| ((i * 37) % 101) as f64).collect();
        for (block, grid) in [(32, 1), (32, 3)] {
            let s = GpuSchedule { block, grid, ..s.clone() };
            let (mut status, mut a, mut b) = (0i64, vec![f64::NAN; 4], vec![f64::NAN; 20]);
            let bases = [&mut status as *mut i64 as *mut u8, xs.as_ptr() as *mut u8, a.as_mut_ptr() as *mut u8, b.as_mut_ptr() as *mut u8];
            unsafe { run(&k, &s, &bases) };
            for i in 0..4 {
                assert_eq!(a[i], xs[i * 350..(i + 1) * 350].iter().sum::<f64>());
                for j in 0..5 {
                    assert_eq!(b[i * 5 + j], xs[i * 350 + j * 70..i * 350 + (j + 1) * 70].iter().sum::<f64>());
                }
            }
        }
    }

    #[test]
    fn store_kinds_follow_the_regimes() {
        // out[i] = Σ_j x[i, j] and y[i, j] = 2·x[i, j], over [3, 100]: block
        // per output (few rows, long ones).
        let mut k = LoopKernel::new("t", vec![3, 100]);
        let x = k.push(Inst::Load { dtype: DType::F32, access: Access { slot: 1, offset: 0, strides: vec![100, 1] } });
        let two = k.push(Inst::Const { dtype: DType::F32, value: 2.0 });
        let y = k.push(Inst::Binary { op: BinaryOp::Mul, dtype: DType::F32, a: x, b: two });
        k.stores.push(Store { value: x, dtype: DType::F32, access: Access { slot: 2, offset: 0, strides: vec![1, 0] }, reduce: Some(ReduceOp::Sum) });
        k.stores.push(Store { value: y, dtype: DType::F32, access: Access { slot: 3, offset: 0, strides: vec![100, 1] }, reduce: None });
        let xs: Vec<f32> = (0..300).map(|i| (i % 7) as f32).collect();
        for regime in [Regime::BlockPerOutput, Regime::ThreadPerOutput] {
            let mut s = GpuSchedule::of(&k);
            assert_eq!(s.regime, Regime::BlockPerOutput);
            if regime == Regime::ThreadPerOutput {
                s = GpuSchedule { regime, block: 32, grid: 1, ..s };
            }
            let (mut status, mut sums, mut ys) = (0i64, vec![f32::NAN; 3], vec![0f32; 300]);
            let bases = [&mut status as *mut i64 as *mut u8, xs.as_ptr() as *mut u8, sums.as_mut_ptr() as *mut u8, ys.as_mut_ptr() as *mut u8];
            unsafe { run(&k, &s, &bases) };
            for r in 0..3 {
                assert_eq!(sums[r], xs[r * 100..(r + 1) * 100].iter().sum::<f32>(), "{regime:?}");
            }
            assert!(ys.iter().zip(&xs).all(|(y, x)| *y == 2.0 * x));
            assert_eq!(status, 0);
        }
    }
}
