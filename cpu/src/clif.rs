//! Cranelift lowering of [`LoopKernel`]s: one function per kernel,
//! `fn(table: *const *mut u8, lo: i64, hi: i64)`, running the outermost loop
//! over `lo..hi` (so a kernel can be split over threads or chunks).
//!
//! The innermost loop is vectorised with `f32x4` (the x86-64 backend has
//! 128-bit vectors only; on this machine's FP units that is full rate) when
//! every value it computes is f32 or a mask (or an index compared with row
//! invariants, in f32 lanes: see `vectorizable`), unrolled, with a vector tail
//! and a scalar tail for the remainder. Values that do not change along the
//! innermost loop (bias loads, constants, broadcast operands) are computed
//! once per row. A reduction along the innermost loop keeps vector
//! accumulators in registers; one along an outer loop accumulates in its
//! destination, which the kernel first fills with the identity.

use std::collections::HashMap;

use cranelift_codegen::ir::condcodes::{FloatCC, IntCC};
use cranelift_codegen::ir::{AbiParam, Function, InstBuilder, MemFlagsData, Signature, Type, UserFuncName, Value, types};
use cranelift_codegen::isa::OwnedTargetIsa;
use cranelift_codegen::settings::{self, Configurable};
use cranelift_codegen::{Context, ir};
use cranelift_frontend::{FunctionBuilder, FunctionBuilderContext, Variable};
use cranelift_jit::{JITBuilder, JITModule};
use cranelift_module::{FuncId, Linkage, Module, default_libcall_names};
use d2l_ir::{BinaryOp, CmpOp, DType, ReduceOp, UnaryOp};
use d2l_kernels::kernel::{Inst, LoopKernel, Store, Val};

use crate::math::Math;

/// Vector width in f32 lanes.
const W: usize = 4;
/// Innermost loops up to this long (not the outermost) are fully unrolled.
const SHORT_ROW: usize = 32;
/// Bodies of more instructions than this, counting each transcendental
/// function as the polynomial it becomes, are not unrolled: they have
/// independent work enough in one copy, and each copy is code to compile
/// (an LSTM cell's kernel is ~300 instructions).
const HEAVY_BODY: usize = 64;

/// The signature every kernel has: the buffer table and a range of loop 0.
pub type KernelFn = unsafe extern "C" fn(*const *mut u8, i64, i64);

#[derive(Debug, thiserror::Error)]
pub enum JitError {
    #[error("the Cranelift JIT is not available on this machine: {0}")]
    Isa(String),
    #[error("Cranelift rejected kernel {kernel}: {message}")]
    Compile { kernel: String, message: String },
}

/// Scalar functions the generated code may call: f64 transcendentals
/// (gradient checks only) and the rare f32 ops without a CLIF expansion.
const LIBCALLS: &[(&str, usize, DType)] = &[
    ("d2l_expf64", 1, DType::F64),
    ("d2l_logf64", 1, DType::F64),
    ("d2l_tanhf64", 1, DType::F64),
    ("d2l_sigmoidf64", 1, DType::F64),
    ("d2l_sinf64", 1, DType::F64),
    ("d2l_cosf64", 1, DType::F64),
    ("d2l_powf64", 2, DType::F64),
    ("d2l_sinf32", 1, DType::F32),
    ("d2l_cosf32", 1, DType::F32),
    ("d2l_powf32", 2, DType::F32),
];

extern "C" fn d2l_expf64(x: f64) -> f64 {
    x.exp()
}
extern "C" fn d2l_logf64(x: f64) -> f64 {
    x.ln()
}
extern "C" fn d2l_tanhf64(x: f64) -> f64 {
    x.tanh()
}
extern "C" fn d2l_sigmoidf64(x: f64) -> f64 {
    // As the interpreter: exp only of a non-positive number.
    if x >= 0.0 {
        1.0 / (1.0 + (-x).exp())
    } else {
        let e = x.exp();
        e / (1.0 + e)
    }
}
extern "C" fn d2l_sinf64(x: f64) -> f64 {
    x.sin()
}
extern "C" fn d2l_cosf64(x: f64) -> f64 {
    x.cos()
}
extern "C" fn d2l_powf64(x: f64, y: f64) -> f64 {
    x.powf(y)
}
extern "C" fn d2l_sinf32(x: f32) -> f32 {
    x.sin()
}
extern "C" fn d2l_cosf32(x: f32) -> f32 {
    x.cos()
}
extern "C" fn d2l_powf32(x: f32, y: f32) -> f32 {
    x.powf(y)
}

fn libcall_ptr(name: &str) -> *const u8 {
    match name {
        "d2l_expf64" => d2l_expf64 as *const u8,
        "d2l_logf64" => d2l_logf64 as *const u8,
        "d2l_tanhf64" => d2l_tanhf64 as *const u8,
        "d2l_sigmoidf64" => d2l_sigmoidf64 as *const u8,
        "d2l_sinf64" => d2l_sinf64 as *const u8,
        "d2l_cosf64" => d2l_cosf64 as *const u8,
        "d2l_powf64" => d2l_powf64 as *const u8,
        "d2l_sinf32" => d2l_sinf32 as *const u8,
        "d2l_cosf32" => d2l_cosf32 as *const u8,
        _ => d2l_powf32 as *const u8,
    }
}

/// The host ISA as Cranelift sees it: native features (FMA, AVX), speed.
pub fn host_isa() -> Result<OwnedTargetIsa, JitError> {
    let mut flags = settings::builder();
    for (k, v) in [("opt_level", "speed"), ("is_pic", "false"), ("use_colocated_libcalls", "false")] {
        flags.set(k, v).map_err(|e| JitError::Isa(e.to_string()))?;
    }
    let isa = cranelift_native::builder().map_err(|e| JitError::Isa(e.to_string()))?;
    isa.finish(settings::Flags::new(flags)).map_err(|e| JitError::Isa(e.to_string()))
}

/// A JIT module under construction: kernels are added, then finalised
/// together into executable memory.
pub struct Jit {
    module: JITModule,
    libcalls: HashMap<&'static str, FuncId>,
    ctx: Context,
    fctx: FunctionBuilderContext,
    functions: Vec<FuncId>,
}

/// Finalised machine code; the functions live as long as this does.
pub struct Compiled {
    module: Option<JITModule>,
    pub functions: Vec<KernelFn>,
}

impl Drop for Compiled {
    fn drop(&mut self) {
        if let Some(module) = self.module.take() {
            // SAFETY: the function pointers die with `self`; nothing can call them after this.
            unsafe { module.free_memory() };
        }
    }
}

// SAFETY: the machine code is immutable after finalisation and may run on any thread.
unsafe impl Send for Compiled {}
unsafe impl Sync for Compiled {}

fn float_ty(d: DType) -> Type {
    if d == DType::F64 { types::F64 } else { types::F32 }
}

impl Jit {
    pub fn new() -> Result<Jit, JitError> {
        let mut builder = JITBuilder::with_isa(host_isa()?, default_libcall_names());
        for (name, _, _) in LIBCALLS {
            builder.symbol(*name, libcall_ptr(name));
        }
        let mut module = JITModule::new(builder);
        let mut libcalls = HashMap::new();
        for &(name, arity, dtype) in LIBCALLS {
            let mut sig = module.make_signature();
            for _ in 0..arity {
                sig.params.push(AbiParam::new(float_ty(dtype)));
            }
            sig.returns.push(AbiParam::new(float_ty(dtype)));
            let id = module
                .declare_function(name, Linkage::Import, &sig)
                .map_err(|e| JitError::Isa(e.to_string()))?;
            libcalls.insert(name, id);
        }
        let ctx = module.make_context();
        Ok(Jit { module, libcalls, ctx, fctx: FunctionBuilderContext::new(), functions: Vec::new() })
    }

    fn signature(&self) -> Signature {
        let mut sig = self.module.make_signature();
        let ptr = self.module.target_config().pointer_type();
        sig.params.extend([AbiParam::new(ptr), AbiParam::new(types::I64), AbiParam::new(types::I64)]);
        sig
    }

    /// Builds `kernel`'s CLIF into the context (not compiled yet).
    fn build(&mut self, kernel: &LoopKernel, index: u32) {
        self.module.clear_context(&mut self.ctx);
        self.ctx.func = Function::with_name_signature(UserFuncName::user(0, index), self.signature());
        let mut calls = HashMap::new();
        for (&name, &id) in &self.libcalls {
            if uses_libcall(kernel, name) {
                calls.insert(name, self.module.declare_func_in_func(id, &mut self.ctx.func));
            }
        }
        let config = self.module.target_config();
        let b = FunctionBuilder::new(&mut self.ctx.func, &mut self.fctx);
        let mut e = Emitter::new(b, kernel, calls);
        e.emit();
        e.b.seal_all_blocks();
        e.b.finalize(config);
    }

    /// The CLIF text of a kernel, as generated (before optimisation).
    pub fn clif_text(&mut self, kernel: &LoopKernel) -> String {
        self.build(kernel, self.functions.len() as u32);
        self.ctx.func.display().to_string()
    }

    /// Compiles a kernel; returns its index among this module's functions.
    pub fn add(&mut self, kernel: &LoopKernel) -> Result<usize, JitError> {
        let index = self.functions.len();
        self.build(kernel, index as u32);
        let err = |e: String| JitError::Compile { kernel: kernel.name.clone(), message: e };
        let sig = self.ctx.func.signature.clone();
        let id = self.module.declare_function(&format!("kernel{index}"), Linkage::Local, &sig).map_err(|e| err(e.to_string()))?;
        self.module.define_function(id, &mut self.ctx).map_err(|e| err(e.to_string()))?;
        self.functions.push(id);
        Ok(index)
    }

    pub fn finish(mut self) -> Result<Compiled, JitError> {
        self.module.finalize_definitions().map_err(|e| JitError::Compile { kernel: "module".into(), message: e.to_string() })?;
        let functions = self
            .functions
            .iter()
            .map(|&id| {
                let ptr = self.module.get_finalized_function(id);
                // SAFETY: every kernel was built with the `KernelFn` signature.
                unsafe { std::mem::transmute::<*const u8, KernelFn>(ptr) }
            })
            .collect();
        Ok(Compiled { module: Some(self.module), functions })
    }
}

/// The libcall an instruction needs, if any.
fn libcall_of(inst: &Inst) -> Option<&'static str> {
    match *inst {
        Inst::Unary { op, dtype: DType::F64, .. } => Some(match op {
            UnaryOp::Exp => "d2l_expf64",
            UnaryOp::Log => "d2l_logf64",
            UnaryOp::Tanh => "d2l_tanhf64",
            UnaryOp::Sigmoid => "d2l_sigmoidf64",
            UnaryOp::Sin => "d2l_sinf64",
            UnaryOp::Cos => "d2l_cosf64",
            _ => return None,
        }),
        Inst::Unary { op: UnaryOp::Sin, dtype: DType::F32, .. } => Some("d2l_sinf32"),
        Inst::Unary { op: UnaryOp::Cos, dtype: DType::F32, .. } => Some("d2l_cosf32"),
        Inst::Binary { op: BinaryOp::Pow, dtype: DType::F64, .. } => Some("d2l_powf64"),
        Inst::Binary { op: BinaryOp::Pow, dtype: DType::F32, .. } => Some("d2l_powf32"),
        _ => None,
    }
}

fn uses_libcall(kernel: &LoopKernel, name: &str) -> bool {
    kernel.insts.iter().any(|i| libcall_of(i) == Some(name))
}

/// Scalar type of a dtype in registers (bool is an i8 0/1).
fn scalar_ty(d: DType) -> Type {
    match d {
        DType::F32 => types::F32,
        DType::F64 => types::F64,
        DType::I64 => types::I64,
        DType::Bool => types::I8,
    }
}


fn flags() -> MemFlagsData {
    // Not `aligned`: vector rows start at any element.
    MemFlagsData::new().with_notrap()
}

/// Lane shape of the code being emitted.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Lanes {
    Scalar,
    Vector,
}

/// How a store is carried out (see the module comment).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum StoreKind {
    /// Overwrite, one element per iteration.
    Plain,
    /// Combine into the destination each iteration (it starts at identity).
    Accumulate(ReduceOp),
    /// Reduce the innermost loop in registers, then write (or combine into
    /// the destination when outer loops reduce too).
    Register { op: ReduceOp, combine: bool },
}

struct Emitter<'k, 'f> {
    b: FunctionBuilder<'f>,
    k: &'k LoopKernel,
    calls: HashMap<&'static str, ir::FuncRef>,
    /// Depends on the innermost loop index.
    variant: Vec<bool>,
    vector: bool,
    store_kinds: Vec<StoreKind>,
    bases: HashMap<usize, Value>,
    /// Accumulator variables of register reductions, per store: vector ones
    /// (one per unrolled copy) and a scalar one.
    accs: HashMap<usize, (Vec<Variable>, Variable)>,
    unroll: usize,
    /// The innermost loop is short and of fixed length: emit it unrolled,
    /// without loop control (rows of 10 classes cost more in branches
    /// than in arithmetic otherwise).
    straight: bool,
}

impl<'k, 'f> Emitter<'k, 'f> {
    fn new(b: FunctionBuilder<'f>, k: &'k LoopKernel, calls: HashMap<&'static str, ir::FuncRef>) -> Emitter<'k, 'f> {
        let r = k.extents.len();
        let mut variant = vec![false; k.insts.len()];
        for (i, inst) in k.insts.iter().enumerate() {
            variant[i] = match inst {
                Inst::Load { access, .. } => access.strides[r - 1] != 0,
                Inst::Index { strides, .. } => strides[r - 1] != 0,
                Inst::Const { .. } => false,
                _ => inst.operands().iter().any(|v| variant[v.0 as usize]),
            };
        }
        let store_kinds: Vec<StoreKind> = k
            .stores
            .iter()
            .map(|s| {
                let outer_zero = s.access.strides[..r - 1].contains(&0);
                match (s.reduce, s.access.strides[r - 1] == 0) {
                    (None, _) => StoreKind::Plain,
                    (Some(op), true) => StoreKind::Register { op, combine: outer_zero },
                    (Some(op), false) if outer_zero => StoreKind::Accumulate(op),
                    (Some(_), false) => StoreKind::Plain,
                }
            })
            .collect();
        let inner = k.extents[r - 1];
        let mut e = Emitter { b, k, calls, variant, vector: false, store_kinds, bases: HashMap::new(), accs: HashMap::new(), unroll: 1, straight: false };
        e.vector = inner >= W && e.vectorizable();
        e.straight = r >= 2 && inner <= SHORT_ROW;
        let heavy = k.body_cost() > HEAVY_BODY;
        e.unroll = if e.straight {
            (inner / W).max(1)
        } else if heavy {
            1
        } else if inner >= 8 * W {
            4
        } else if inner >= 2 * W {
            2
        } else {
            1
        };
        e
    }

    /// Whether the innermost loop can run on f32x4 lanes.
    ///
    /// An index (iota) along it runs there too, as f32 lanes, when every
    /// value it takes is below 2^24 in magnitude (so exactly an f32) and it
    /// is only compared with row-invariant integers or cast to f32 (one-hot
    /// masks, picking a label's score, causal and length masks): a
    /// comparison with an invariant integer, itself converted to f32, then
    /// gives the integer comparison's answer (one beyond ±2^24 rounds to a
    /// value no index takes).
    fn vectorizable(&self) -> bool {
        let r = self.k.extents.len();
        let lane_ok = |d: DType| matches!(d, DType::F32 | DType::Bool);
        let index_lanes = |v: Val| self.variant[v.0 as usize] && self.index_fits_f32(v.0 as usize);
        for (i, inst) in self.k.insts.iter().enumerate() {
            if !self.variant[i] {
                continue;
            }
            let integer_lanes = match inst {
                Inst::Index { .. } => Some(index_lanes(Val(i as u32))),
                Inst::Compare { dtype: DType::I64, a, b, .. } => Some([a, b].iter().all(|&&v| index_lanes(v) || !self.variant[v.0 as usize])),
                Inst::Cast { from: DType::I64, to: DType::F32, x } => Some(index_lanes(*x)),
                _ => None,
            };
            match integer_lanes {
                Some(true) => continue,
                Some(false) => return false,
                None => {}
            }
            if !lane_ok(inst.dtype()) || libcall_of(inst).is_some() {
                return false;
            }
            if inst.operands().iter().any(|v| !lane_ok(self.k.insts[v.0 as usize].dtype())) {
                return false;
            }
            let ok = match inst {
                Inst::Load { dtype, access } => lane_ok(*dtype) && access.strides[r - 1] == 1,
                Inst::Index { .. } => false,
                _ => true,
            };
            if !ok {
                return false;
            }
        }
        self.k.stores.iter().zip(&self.store_kinds).all(|(s, kind)| {
            let stride = s.access.strides[r - 1];
            let value_ok = lane_ok(self.k.insts[s.value.0 as usize].dtype());
            value_ok
                && match kind {
                    StoreKind::Register { .. } => true,
                    StoreKind::Plain => lane_ok(s.dtype) && stride == 1,
                    StoreKind::Accumulate(_) => s.dtype == DType::F32 && stride == 1,
                }
        })
    }

    /// Whether index instruction `i` stays below 2^24 in magnitude over the
    /// whole loop nest.
    fn index_fits_f32(&self, i: usize) -> bool {
        let Inst::Index { offset, strides } = &self.k.insts[i] else { return false };
        let reach: i64 = strides.iter().zip(&self.k.extents).map(|(&s, &n)| s.saturating_abs().saturating_mul(n.saturating_sub(1) as i64)).fold(offset.saturating_abs(), i64::saturating_add);
        reach < 1 << 24
    }

    fn iconst(&mut self, v: i64) -> Value {
        self.b.ins().iconst(types::I64, v)
    }

    /// `for iv in start..end (step)`, with `body` emitted once.
    fn for_loop(&mut self, start: Value, end: Value, step: i64, body: &mut dyn FnMut(&mut Self, Value)) {
        let var = self.b.declare_var(types::I64);
        self.b.def_var(var, start);
        let header = self.b.create_block();
        let body_block = self.b.create_block();
        let exit = self.b.create_block();
        self.b.ins().jump(header, &[]);
        self.b.switch_to_block(header);
        let iv = self.b.use_var(var);
        let more = self.b.ins().icmp(IntCC::SignedLessThan, iv, end);
        self.b.ins().brif(more, body_block, &[], exit, &[]);
        self.b.switch_to_block(body_block);
        body(self, iv);
        let next = self.b.ins().iadd_imm_s(iv, step);
        self.b.def_var(var, next);
        self.b.ins().jump(header, &[]);
        self.b.switch_to_block(exit);
    }

    fn emit(&mut self) {
        let entry = self.b.create_block();
        self.b.append_block_params_for_function_params(entry);
        self.b.switch_to_block(entry);
        let params = self.b.block_params(entry).to_vec();
        let (table, lo, hi) = (params[0], params[1], params[2]);
        let mut slots: Vec<usize> = self.k.insts.iter().filter_map(|i| if let Inst::Load { access, .. } = i { Some(access.slot) } else { None }).collect();
        slots.extend(self.k.stores.iter().map(|s| s.access.slot));
        // Integer division reports a zero divisor in the status word.
        if self.k.insts.iter().any(|i| matches!(i, Inst::Binary { op: BinaryOp::Div, dtype: DType::I64, .. })) {
            slots.push(0);
        }
        slots.sort();
        slots.dedup();
        for slot in slots {
            let base = self.b.ins().load(types::I64, MemFlagsData::trusted().with_readonly(), table, (slot * 8) as i32);
            self.bases.insert(slot, base);
        }
        for s in 0..self.k.stores.len() {
            let needs_init = matches!(self.store_kinds[s], StoreKind::Accumulate(_) | StoreKind::Register { combine: true, .. });
            if needs_init {
                self.fill_identity(s, lo, hi);
            }
        }
        let r = self.k.extents.len();
        self.level(0, r, vec![None; self.items()], lo, hi);
        self.b.ins().return_(&[]);
    }

    /// Affine items: every load, every index, every store (in that order),
    /// as (offset, strides).
    fn items(&self) -> usize {
        self.k.insts.iter().filter(|i| matches!(i, Inst::Load { .. } | Inst::Index { .. })).count() + self.k.stores.len()
    }

    fn item_affine(&self, item: usize) -> (i64, &[i64]) {
        let mut n = 0;
        for inst in &self.k.insts {
            match inst {
                Inst::Load { access, .. } => {
                    if n == item {
                        return (access.offset, &access.strides);
                    }
                    n += 1;
                }
                Inst::Index { offset, strides } => {
                    if n == item {
                        return (*offset, strides);
                    }
                    n += 1;
                }
                _ => {}
            }
        }
        let s = &self.k.stores[item - n];
        (s.access.offset, &s.access.strides)
    }

    /// Item number of instruction `i` (a load or index) or of store `s`.
    fn item_of_inst(&self, i: usize) -> usize {
        self.k.insts[..i].iter().filter(|x| matches!(x, Inst::Load { .. } | Inst::Index { .. })).count()
    }

    fn item_of_store(&self, s: usize) -> usize {
        self.items() - self.k.stores.len() + s
    }

    /// Emits loop `d` of `r`; `offsets` are each item's element offset so far
    /// (without its constant offset; `None` for zero).
    fn level(&mut self, d: usize, r: usize, offsets: Vec<Option<Value>>, lo: Value, hi: Value) {
        let (start, end) = if d == 0 { (lo, hi) } else { (self.iconst(0), self.iconst(self.k.extents[d] as i64)) };
        if d == r - 1 {
            self.inner(offsets, start, end);
            return;
        }
        self.for_loop(start, end, 1, &mut |e: &mut Self, iv| {
            let next: Vec<Option<Value>> = (0..offsets.len())
                .map(|item| {
                    let stride = e.item_affine(item).1[d];
                    if stride == 0 {
                        return offsets[item];
                    }
                    let step = if stride == 1 { iv } else { e.b.ins().imul_imm_s(iv, stride) };
                    Some(match offsets[item] {
                        Some(o) => e.b.ins().iadd(o, step),
                        None => step,
                    })
                })
                .collect();
            e.level(d + 1, r, next, lo, hi);
        });
    }

    /// Byte address of an item's element at the start of the current row.
    fn row_pointer(&mut self, item: usize, slot: usize, size: usize, offset: Option<Value>) -> Value {
        let (constant, _) = self.item_affine(item);
        let base = self.bases[&slot];
        let base = if constant == 0 { base } else { self.b.ins().iadd_imm_s(base, constant * size as i64) };
        match offset {
            None => base,
            Some(o) => {
                let bytes = self.b.ins().imul_imm_s(o, size as i64);
                self.b.ins().iadd(base, bytes)
            }
        }
    }

    /// An index item's value at the start of the current row.
    fn row_index(&mut self, constant: i64, offset: Option<Value>) -> Value {
        match offset {
            None => self.iconst(constant),
            Some(o) if constant == 0 => o,
            Some(o) => self.b.ins().iadd_imm_s(o, constant),
        }
    }

    /// The innermost loop over `start..end`, with its row prologue and the
    /// write-back of register reductions.
    fn inner(&mut self, offsets: Vec<Option<Value>>, start: Value, end: Value) {
        let r = self.k.extents.len();
        // Row pointers (loads, stores) and row index values.
        let mut rows: HashMap<usize, Value> = HashMap::new();
        for (i, inst) in self.k.insts.iter().enumerate() {
            let item = self.item_of_inst(i);
            match inst {
                Inst::Load { dtype, access } => {
                    let p = self.row_pointer(item, access.slot, dtype.size_bytes(), offsets[item]);
                    rows.insert(item, p);
                }
                Inst::Index { offset, .. } => {
                    let v = self.row_index(*offset, offsets[item]);
                    rows.insert(item, v);
                }
                _ => {}
            }
        }
        for (s, store) in self.k.stores.iter().enumerate() {
            let item = self.item_of_store(s);
            let p = self.row_pointer(item, store.access.slot, store.dtype.size_bytes(), offsets[item]);
            rows.insert(item, p);
        }
        // Row invariants, scalar.
        let mut invariant: Vec<Option<Value>> = vec![None; self.k.insts.len()];
        for i in 0..self.k.insts.len() {
            if !self.variant[i] {
                let v = self.inst(i, Lanes::Scalar, &rows, None, 0, &invariant);
                invariant[i] = Some(v);
            }
        }
        let mut splats: Vec<Option<Value>> = vec![None; self.k.insts.len()];
        if self.vector {
            for i in 0..self.k.insts.len() {
                if let Some(v) = invariant[i] {
                    splats[i] = Some(self.splat(self.k.insts[i].dtype(), v));
                }
            }
        }
        // Register accumulators start at the identity.
        self.accs.clear();
        for (s, kind) in self.store_kinds.clone().into_iter().enumerate() {
            if let StoreKind::Register { op, .. } = kind {
                let dtype = self.k.stores[s].dtype;
                let id = self.identity(op, dtype, Lanes::Scalar);
                let scalar = self.b.declare_var(scalar_ty(dtype));
                self.b.def_var(scalar, id);
                let mut vecs = Vec::new();
                if self.vector {
                    let idv = self.identity(op, dtype, Lanes::Vector);
                    for _ in 0..self.unroll {
                        let v = self.b.declare_var(types::F32X4);
                        self.b.def_var(v, idv);
                        vecs.push(v);
                    }
                }
                self.accs.insert(s, (vecs, scalar));
            }
        }
        if self.straight {
            let n = self.k.extents[r - 1];
            let vectors = if self.vector { n / W } else { 0 };
            if vectors > 0 {
                self.body(Lanes::Vector, &rows, start, vectors, &splats);
            }
            for t in vectors * W..n {
                let j = self.iconst(t as i64);
                self.body(Lanes::Scalar, &rows, j, 1, &invariant);
            }
        } else {
            // The innermost loop of a nest runs over its whole extent: the
            // loops its length cannot reach are not emitted.
            let known = (r >= 2).then(|| self.k.extents[r - 1]);
            self.loops(&rows, start, end, known, &invariant, &splats);
        }
        self.write_back(&rows);
    }

    /// The innermost loop as loops: unrolled vector, vector, scalar tail.
    fn loops(&mut self, rows: &HashMap<usize, Value>, start: Value, end: Value, known: Option<usize>, invariant: &[Option<Value>], splats: &[Option<Value>]) {
        // With a known length, each loop is emitted only if it runs.
        let runs = |from: usize, step: usize| known.is_none_or(|n| (n - from) / step > 0);
        let mut scalar_from = start;
        if self.vector {
            let u = self.unroll;
            let count = self.b.ins().isub(end, start);
            let main = self.b.ins().band_imm_s(count, !((W * u) as i64 - 1));
            let main_end = self.b.ins().iadd(start, main);
            if u > 1 && runs(0, W * u) {
                self.for_loop(start, main_end, (W * u) as i64, &mut |e: &mut Self, j| {
                    e.body(Lanes::Vector, rows, j, u, splats);
                });
            }
            let vec = self.b.ins().band_imm_s(count, !(W as i64 - 1));
            let vec_end = self.b.ins().iadd(start, vec);
            let vec_start = if u > 1 { main_end } else { start };
            let main_len = if u > 1 { known.map_or(0, |n| n / (W * u) * W * u) } else { 0 };
            if runs(main_len, W) {
                self.for_loop(vec_start, vec_end, W as i64, &mut |e: &mut Self, j| {
                    e.body(Lanes::Vector, rows, j, 1, splats);
                });
            }
            scalar_from = vec_end;
        }
        let vector_len = if self.vector { known.map_or(0, |n| n / W * W) } else { 0 };
        if runs(vector_len, 1) {
            self.for_loop(scalar_from, end, 1, &mut |e: &mut Self, j| {
                e.body(Lanes::Scalar, rows, j, 1, invariant);
            });
        }
    }

    /// Writes back register reductions after the innermost loop.
    fn write_back(&mut self, rows: &HashMap<usize, Value>) {
        for (s, kind) in self.store_kinds.clone().into_iter().enumerate() {
            let StoreKind::Register { op, combine } = kind else { continue };
            let store = &self.k.stores[s];
            let dtype = store.dtype;
            let (vecs, scalar) = self.accs[&s].clone();
            let mut total = self.b.use_var(scalar);
            if let Some((&first, rest)) = vecs.split_first() {
                let mut v = self.b.use_var(first);
                for &other in rest {
                    let o = self.b.use_var(other);
                    v = self.combine(op, dtype, v, o);
                }
                let lanes: Vec<Value> = (0..W as u8).map(|l| self.b.ins().extractlane(v, l)).collect();
                let a = self.combine(op, dtype, lanes[0], lanes[1]);
                let c = self.combine(op, dtype, lanes[2], lanes[3]);
                let h = self.combine(op, dtype, a, c);
                total = self.combine(op, dtype, h, total);
            }
            let ptr = rows[&self.item_of_store(s)];
            if combine {
                let old = self.b.ins().load(scalar_ty(dtype), flags(), ptr, 0);
                total = self.combine(op, dtype, old, total);
            }
            self.b.ins().store(flags(), total, ptr, 0);
        }
    }

    /// One iteration of the innermost loop at index `j`: `copies` unrolled
    /// copies of `lanes` width each.
    fn body(&mut self, lanes: Lanes, rows: &HashMap<usize, Value>, j: Value, copies: usize, invariant: &[Option<Value>]) {
        let r = self.k.extents.len();
        let width = if lanes == Lanes::Vector { W } else { 1 };
        for c in 0..copies {
            let mut vals: Vec<Option<Value>> = invariant.to_vec();
            let lane_offset = (c * width) as i64;
            for i in 0..self.k.insts.len() {
                if self.variant[i] {
                    let v = self.inst(i, lanes, rows, Some(j), lane_offset, &vals);
                    vals[i] = Some(v);
                }
            }
            for (s, store) in self.k.stores.iter().enumerate() {
                let value = vals[store.value.0 as usize].expect("store of a computed value");
                let stride = store.access.strides[r - 1];
                let item = self.item_of_store(s);
                match self.store_kinds[s] {
                    StoreKind::Register { op, .. } => {
                        let (vecs, scalar) = self.accs[&s].clone();
                        let var = if lanes == Lanes::Vector { vecs[c] } else { scalar };
                        let acc = self.b.use_var(var);
                        let next = self.combine(op, store.dtype, acc, value);
                        self.b.def_var(var, next);
                    }
                    kind => {
                        let addr = self.address(rows[&item], j, stride, store.dtype.size_bytes());
                        let off = (lane_offset * stride * store.dtype.size_bytes() as i64) as i32;
                        if lanes == Lanes::Vector && store.dtype == DType::Bool {
                            // Lane mask 0/-1 → four bytes 0/1.
                            let ones = self.b.ins().ineg(value);
                            let halves = self.b.ins().snarrow(ones, ones);
                            let bytes = self.b.ins().snarrow(halves, halves);
                            let words = self.b.ins().bitcast(types::I32X4, little(), bytes);
                            let word = self.b.ins().extractlane(words, 0);
                            self.b.ins().store(flags(), word, addr, off);
                            continue;
                        }
                        let value = if let StoreKind::Accumulate(op) = kind {
                            let ty = if lanes == Lanes::Vector { types::F32X4 } else { scalar_ty(store.dtype) };
                            let old = self.b.ins().load(ty, flags(), addr, off);
                            self.combine(op, store.dtype, old, value)
                        } else {
                            value
                        };
                        self.b.ins().store(flags(), value, addr, off);
                    }
                }
            }
        }
    }

    /// `row + j·stride·size`.
    fn address(&mut self, row: Value, j: Value, stride: i64, size: usize) -> Value {
        if stride == 0 {
            return row;
        }
        let step = stride * size as i64;
        let off = if step.count_ones() == 1 && step > 0 { self.b.ins().ishl_imm_u(j, step.trailing_zeros() as i64) } else { self.b.ins().imul_imm_s(j, step) };
        self.b.ins().iadd(row, off)
    }

    fn splat(&mut self, dtype: DType, v: Value) -> Value {
        if dtype == DType::Bool {
            // 0/1 → 0/-1 lane mask.
            let w = self.b.ins().uextend(types::I32, v);
            let m = self.b.ins().ineg(w);
            self.b.ins().splat(types::I32X4, m)
        } else if dtype == DType::I64 {
            // Integers compared with an index's lanes are f32 there.
            let f = self.b.ins().fcvt_from_sint(types::F32, v);
            self.b.ins().splat(types::F32X4, f)
        } else {
            self.b.ins().splat(types::F32X4, v)
        }
    }

    fn identity(&mut self, op: ReduceOp, dtype: DType, lanes: Lanes) -> Value {
        let s = match (op, dtype) {
            (ReduceOp::Sum, DType::F32) => self.b.ins().f32const(0.0),
            (ReduceOp::Max, DType::F32) => self.b.ins().f32const(f32::NEG_INFINITY),
            (ReduceOp::Sum, DType::F64) => self.b.ins().f64const(0.0),
            (ReduceOp::Max, DType::F64) => self.b.ins().f64const(f64::NEG_INFINITY),
            (ReduceOp::Sum, DType::I64) => self.iconst(0),
            (ReduceOp::Max, DType::I64) => self.iconst(i64::MIN),
            (_, DType::Bool) => self.b.ins().iconst(types::I8, 0),
        };
        if lanes == Lanes::Vector { self.b.ins().splat(types::F32X4, s) } else { s }
    }

    fn combine(&mut self, op: ReduceOp, dtype: DType, a: Value, b: Value) -> Value {
        match (op, dtype) {
            (ReduceOp::Sum, DType::F32 | DType::F64) => self.b.ins().fadd(a, b),
            (ReduceOp::Max, DType::F32 | DType::F64) => self.b.ins().fmax(a, b),
            (ReduceOp::Sum, _) => self.b.ins().iadd(a, b),
            (ReduceOp::Max, _) => self.b.ins().smax(a, b),
        }
    }

    /// Fills the part of store `s`'s destination that `lo..hi` covers with
    /// the reduction's identity.
    fn fill_identity(&mut self, s: usize, lo: Value, hi: Value) {
        let store: Store = self.k.stores[s].clone();
        let Some(op) = store.reduce else { return };
        let id = self.identity(op, store.dtype, Lanes::Scalar);
        let base = self.bases[&store.access.slot];
        let size = store.dtype.size_bytes() as i64;
        let r = self.k.extents.len();
        let start = self.b.ins().iadd_imm_s(base, store.access.offset * size);
        self.fill_level(0, r, &store, start, lo, hi, id, size);
    }

    #[allow(clippy::too_many_arguments)]
    fn fill_level(&mut self, d: usize, r: usize, store: &Store, ptr: Value, lo: Value, hi: Value, id: Value, size: i64) {
        if d == r {
            self.b.ins().store(flags(), id, ptr, 0);
            return;
        }
        let stride = store.access.strides[d];
        if stride == 0 {
            self.fill_level(d + 1, r, store, ptr, lo, hi, id, size);
            return;
        }
        let (start, end) = if d == 0 { (lo, hi) } else { (self.iconst(0), self.iconst(self.k.extents[d] as i64)) };
        self.for_loop(start, end, 1, &mut |e: &mut Self, iv| {
            let step = e.b.ins().imul_imm_s(iv, stride * size);
            let p = e.b.ins().iadd(ptr, step);
            e.fill_level(d + 1, r, store, p, lo, hi, id, size);
        });
    }

    /// Emits instruction `i` in `lanes` at loop index `j` (None: row prologue).
    fn inst(&mut self, i: usize, lanes: Lanes, rows: &HashMap<usize, Value>, j: Option<Value>, lane_offset: i64, vals: &[Option<Value>]) -> Value {
        let r = self.k.extents.len();
        let arg = |v: Val| vals[v.0 as usize].expect("operands are emitted first");
        let vector = lanes == Lanes::Vector;
        match self.k.insts[i].clone() {
            Inst::Load { dtype, access } => {
                let row = rows[&self.item_of_inst(i)];
                let stride = access.strides[r - 1];
                let size = dtype.size_bytes();
                let addr = match j {
                    Some(j) => self.address(row, j, stride, size),
                    None => row,
                };
                let off = (lane_offset * stride * size as i64) as i32;
                if vector && dtype == DType::Bool {
                    // Four bytes 0/1 → an i32x4 lane mask 0/-1.
                    let word = self.b.ins().load(types::I32, flags(), addr, off);
                    let v = self.b.ins().scalar_to_vector(types::I32X4, word);
                    let bytes = self.b.ins().bitcast(types::I8X16, little(), v);
                    let halves = self.b.ins().uwiden_low(bytes);
                    let words = self.b.ins().uwiden_low(halves);
                    return self.b.ins().ineg(words);
                }
                let ty = if vector { types::F32X4 } else { scalar_ty(dtype) };
                self.b.ins().load(ty, flags(), addr, off)
            }
            Inst::Index { strides, .. } => {
                let row = rows[&self.item_of_inst(i)];
                let at = match j {
                    Some(j) => {
                        let step = self.b.ins().imul_imm_s(j, strides[r - 1]);
                        self.b.ins().iadd(row, step)
                    }
                    None => row,
                };
                if !vector {
                    return at;
                }
                // Lanes at + (lane_offset + l)·stride, as f32 (vectorizable()
                // checked that they are exact).
                let stride = strides[r - 1];
                let first = self.b.ins().iadd_imm_s(at, lane_offset * stride);
                let first = self.b.ins().fcvt_from_sint(types::F32, first);
                let first = self.b.ins().splat(types::F32X4, first);
                let steps: Vec<u8> = (0..W as i64).flat_map(|l| ((l * stride) as f32).to_le_bytes()).collect();
                let handle = self.b.func.dfg.constants.insert(steps.into());
                let steps = self.b.ins().vconst(types::F32X4, handle);
                self.b.ins().fadd(first, steps)
            }
            Inst::Const { dtype, value } => match dtype {
                DType::F32 => self.b.ins().f32const(value as f32),
                DType::F64 => self.b.ins().f64const(value),
                DType::I64 => self.iconst(value as i64),
                DType::Bool => self.b.ins().iconst(types::I8, i64::from(value != 0.0)),
            },
            Inst::Unary { op, dtype, x } => self.unary(op, dtype, arg(x), lanes),
            Inst::Binary { op: op @ (BinaryOp::Max | BinaryOp::Min), dtype: dtype @ (DType::F32 | DType::F64), a, b } => {
                let b_const = matches!(self.k.insts[b.0 as usize], Inst::Const { value, .. } if !value.is_nan());
                self.float_max_min(op == BinaryOp::Max, arg(a), arg(b), b_const, dtype, lanes)
            }
            Inst::Binary { op, dtype, a, b } => self.binary(op, dtype, arg(a), arg(b), lanes),
            Inst::Compare { op, dtype, a, b } => self.compare(op, dtype, arg(a), arg(b), lanes),
            Inst::Select { dtype, cond, a, b } => {
                let (c, x, y) = (arg(cond), arg(a), arg(b));
                if vector {
                    let mask = if dtype == DType::Bool { c } else { self.b.ins().bitcast(types::F32X4, little(), c) };
                    self.b.ins().bitselect(mask, x, y)
                } else {
                    self.b.ins().select(c, x, y)
                }
            }
            Inst::Cast { from, to, x } => self.cast(from, to, arg(x), lanes),
            Inst::LoadAt { .. } | Inst::Flag { .. } | Inst::StreamWord { .. } => unreachable!("indirect loads, flags and stream words are in GPU plans only (d2l_kernels::gpu_plan)"),
        }
    }

    fn call(&mut self, name: &'static str, args: &[Value]) -> Value {
        let f = self.calls[name];
        let call = self.b.ins().call(f, args);
        self.b.inst_results(call)[0]
    }

    fn unary(&mut self, op: UnaryOp, dtype: DType, x: Value, lanes: Lanes) -> Value {
        let math = Math::new(if lanes == Lanes::Vector { types::F32X4 } else { types::F32 });
        match (op, dtype) {
            (UnaryOp::Neg, DType::I64) => self.b.ins().ineg(x),
            (UnaryOp::Abs, DType::I64) => self.b.ins().iabs(x),
            (UnaryOp::Neg, _) => self.b.ins().fneg(x),
            (UnaryOp::Abs, _) => self.b.ins().fabs(x),
            (UnaryOp::Sqrt, _) => self.b.ins().sqrt(x),
            (UnaryOp::Exp, DType::F32) => math.exp(&mut self.b, x),
            (UnaryOp::Log, DType::F32) => math.log(&mut self.b, x),
            (UnaryOp::Tanh, DType::F32) => math.tanh(&mut self.b, x),
            (UnaryOp::Sigmoid, DType::F32) => math.sigmoid(&mut self.b, x),
            _ => {
                let inst = Inst::Unary { op, dtype, x: Val(0) };
                match libcall_of(&inst) {
                    Some(name) => self.call(name, &[x]),
                    None => x,
                }
            }
        }
    }

    fn binary(&mut self, op: BinaryOp, dtype: DType, a: Value, b: Value, lanes: Lanes) -> Value {
        let _ = lanes;
        match dtype {
            DType::F32 | DType::F64 => match op {
                BinaryOp::Add => self.b.ins().fadd(a, b),
                BinaryOp::Sub => self.b.ins().fsub(a, b),
                BinaryOp::Mul => self.b.ins().fmul(a, b),
                BinaryOp::Div => self.b.ins().fdiv(a, b),
                BinaryOp::Max => self.b.ins().fmax(a, b),
                BinaryOp::Min => self.b.ins().fmin(a, b),
                BinaryOp::Pow => self.call(if dtype == DType::F64 { "d2l_powf64" } else { "d2l_powf32" }, &[a, b]),
            },
            DType::I64 => match op {
                BinaryOp::Add => self.b.ins().iadd(a, b),
                BinaryOp::Sub => self.b.ins().isub(a, b),
                BinaryOp::Mul => self.b.ins().imul(a, b),
                BinaryOp::Max => self.b.ins().smax(a, b),
                BinaryOp::Min => self.b.ins().smin(a, b),
                BinaryOp::Div => self.int_div(a, b),
                // The IR rejects pow on i64; keep a value rather than fail.
                BinaryOp::Pow => a,
            },
            DType::Bool => match op {
                BinaryOp::Min | BinaryOp::Mul => self.b.ins().band(a, b),
                _ => self.b.ins().bor(a, b),
            },
        }
    }

    /// The interpreter's max/min: `b` if it is strictly greater (smaller),
    /// else `a`, and NaN if either is. Compare and select: one `blendv`
    /// when `b` is a known non-NaN constant (ReLU), cheaper than fmax.
    fn float_max_min(&mut self, max: bool, a: Value, b: Value, b_const: bool, dtype: DType, lanes: Lanes) -> Value {
        let math = Math::new(if lanes == Lanes::Vector { types::F32X4 } else { float_ty(dtype) });
        let cc = if max { FloatCC::GreaterThan } else { FloatCC::LessThan };
        let better = self.b.ins().fcmp(cc, b, a);
        let r = math.select(&mut self.b, better, b, a);
        if b_const {
            return r;
        }
        let b_nan = self.b.ins().fcmp(FloatCC::Unordered, b, b);
        math.select(&mut self.b, b_nan, b, r)
    }

    /// i64 division as the interpreter does it: truncating, `MIN / -1`
    /// wraps, and a zero divisor sets the status word (slot 0) instead of
    /// trapping.
    fn int_div(&mut self, a: Value, b: Value) -> Value {
        let zero = self.iconst(0);
        let one = self.iconst(1);
        let is_zero = self.b.ins().icmp(IntCC::Equal, b, zero);
        let is_m1 = self.b.ins().icmp_imm_s(IntCC::Equal, b, -1);
        let safe = self.b.ins().select(is_zero, one, b);
        let safe = self.b.ins().select(is_m1, one, safe);
        let q = self.b.ins().sdiv(a, safe);
        let neg = self.b.ins().ineg(a);
        let q = self.b.ins().select(is_m1, neg, q);
        let status = self.bases[&0];
        let old = self.b.ins().load(types::I64, flags(), status, 0);
        let flag = self.b.ins().uextend(types::I64, is_zero);
        let new = self.b.ins().bor(old, flag);
        self.b.ins().store(flags(), new, status, 0);
        q
    }

    fn compare(&mut self, op: CmpOp, dtype: DType, a: Value, b: Value, lanes: Lanes) -> Value {
        // In vector lanes integers are f32 (an index against invariants: see
        // vectorizable()).
        if dtype.is_float() || (lanes == Lanes::Vector && dtype == DType::I64) {
            let cc = match op {
                CmpOp::Eq => FloatCC::Equal,
                CmpOp::Ne => FloatCC::NotEqual,
                CmpOp::Lt => FloatCC::LessThan,
                CmpOp::Le => FloatCC::LessThanOrEqual,
                CmpOp::Gt => FloatCC::GreaterThan,
                CmpOp::Ge => FloatCC::GreaterThanOrEqual,
            };
            self.b.ins().fcmp(cc, a, b)
        } else {
            // Signed for i64; bools (0/1 or 0/-1 masks) compare unsigned.
            let signed = dtype == DType::I64;
            let cc = match (op, signed) {
                (CmpOp::Eq, _) => IntCC::Equal,
                (CmpOp::Ne, _) => IntCC::NotEqual,
                (CmpOp::Lt, true) => IntCC::SignedLessThan,
                (CmpOp::Le, true) => IntCC::SignedLessThanOrEqual,
                (CmpOp::Gt, true) => IntCC::SignedGreaterThan,
                (CmpOp::Ge, true) => IntCC::SignedGreaterThanOrEqual,
                (CmpOp::Lt, false) => IntCC::UnsignedLessThan,
                (CmpOp::Le, false) => IntCC::UnsignedLessThanOrEqual,
                (CmpOp::Gt, false) => IntCC::UnsignedGreaterThan,
                (CmpOp::Ge, false) => IntCC::UnsignedGreaterThanOrEqual,
            };
            self.b.ins().icmp(cc, a, b)
        }
    }

    fn cast(&mut self, from: DType, to: DType, x: Value, lanes: Lanes) -> Value {
        if from == to {
            return x;
        }
        if lanes == Lanes::Vector {
            // An index's lanes are f32 already; otherwise only f32 <-> mask
            // reach vector code.
            if from == DType::I64 {
                return x;
            }
            return if to == DType::Bool {
                let zero = self.b.ins().f32const(0.0);
                let zero = self.b.ins().splat(types::F32X4, zero);
                self.b.ins().fcmp(FloatCC::NotEqual, x, zero)
            } else {
                let one = self.b.ins().f32const(1.0);
                let one = self.b.ins().splat(types::F32X4, one);
                let mask = self.b.ins().bitcast(types::F32X4, little(), x);
                self.b.ins().band(mask, one)
            };
        }
        match (from, to) {
            (DType::F32, DType::F64) => self.b.ins().fpromote(types::F64, x),
            (DType::F64, DType::F32) => self.b.ins().fdemote(types::F32, x),
            (DType::F32 | DType::F64, DType::I64) => self.b.ins().fcvt_to_sint_sat(types::I64, x),
            (DType::F32 | DType::F64, DType::Bool) => {
                let zero = if from == DType::F32 { self.b.ins().f32const(0.0) } else { self.b.ins().f64const(0.0) };
                self.b.ins().fcmp(FloatCC::NotEqual, x, zero)
            }
            (DType::I64, DType::F32 | DType::F64) => self.b.ins().fcvt_from_sint(float_ty(to), x),
            (DType::I64, DType::Bool) => self.b.ins().icmp_imm_s(IntCC::NotEqual, x, 0),
            (DType::Bool, DType::I64) => self.b.ins().uextend(types::I64, x),
            (DType::Bool, _) => {
                let w = self.b.ins().uextend(types::I32, x);
                self.b.ins().fcvt_from_uint(float_ty(to), w)
            }
            _ => x,
        }
    }
}

fn little() -> MemFlagsData {
    MemFlagsData::new().with_endianness(ir::Endianness::Little)
}
