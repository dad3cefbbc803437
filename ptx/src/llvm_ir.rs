//! Loop kernels as LLVM IR text for the NVPTX target, one `ptx_kernel`
//! function per kernel, laid out as its [`GpuSchedule`] says (the CPU grid
//! interpreter, `d2l_kernels::grid`, executes the same layout and is what
//! the equivalence tests check).
//!
//! Text rather than LLVM's builder API: it needs no LLVM to produce (the
//! default build snapshots it), and reads like the kernel it came from.
//!
//! Entry convention: a kernel takes one argument, a global-memory table of
//! 64-bit addresses indexed by the plan's slot numbers (slot 0 is the
//! status word); every shape, stride and trip count is baked in as an
//! immediate, so nothing else is uploaded per launch.

use std::fmt::Write;

use d2l_ir::{BinaryOp, CmpOp, DType, ReduceOp, UnaryOp};
use d2l_kernels::kernel::{Access, Inst, LoopKernel};
use d2l_kernels::math::{EXP_BOUNDED_HIGHEST, EXP_HIGHEST, EXP_LOWEST, EXP_POLY, LN2_HI, LN2_LO, LOG_POLY, ROUND_MAGIC, TANH_POLY, TANH_SMALL};
use d2l_kernels::schedule::{GpuSchedule, Regime, WARP};

/// The IR type of a value of `d`.
fn ty(d: DType) -> &'static str {
    match d {
        DType::F32 => "float",
        DType::F64 => "double",
        DType::I64 => "i64",
        DType::Bool => "i1",
    }
}

/// The IR type of `d` in memory (bools are bytes).
fn mem_ty(d: DType) -> &'static str {
    if d == DType::Bool { "i8" } else { ty(d) }
}

/// A float constant as LLVM writes it exactly: the double's bits in hex.
fn float_const(d: DType, v: f64) -> String {
    let v = if d == DType::F32 { v as f32 as f64 } else { v };
    format!("0x{:016X}", v.to_bits())
}

fn constant(d: DType, v: f64) -> String {
    match d {
        DType::F32 | DType::F64 => float_const(d, v),
        DType::I64 => (v as i64).to_string(),
        DType::Bool => (v != 0.0).to_string(),
    }
}

fn f32c(v: f32) -> String {
    float_const(DType::F32, v as f64)
}

/// The libdevice functions (`__nv_*`) kernels call, for what has no
/// polynomial of ours: f64 transcendentals, sin, cos and pow.
pub fn libdevice_name(op: &str, d: DType) -> String {
    if d == DType::F32 { format!("__nv_{op}f") } else { format!("__nv_{op}") }
}

/// One kernel function's text being written.
struct Emitter<'k> {
    k: &'k LoopKernel,
    s: &'k GpuSchedule,
    body: String,
    /// Allocas, hoisted to the entry block (promoted to registers by mem2reg).
    entry: String,
    next: usize,
    /// The label of the block being written (phi nodes name their predecessors).
    block: String,
    /// Functions called, declared once per module.
    calls: &'k mut Declarations,
}

/// The declarations a module needs, in first-use order.
#[derive(Default)]
pub struct Declarations {
    lines: Vec<String>,
    /// Whether any kernel calls into libdevice.
    pub libdevice: bool,
}

impl Declarations {
    fn need(&mut self, line: String) {
        if line.contains("@__nv_") {
            self.libdevice = true;
        }
        if !self.lines.contains(&line) {
            self.lines.push(line);
        }
    }
}

impl Emitter<'_> {
    fn tmp(&mut self) -> String {
        self.next += 1;
        format!("%t{}", self.next)
    }

    fn label(&mut self, stem: &str) -> String {
        self.next += 1;
        format!("{stem}{}", self.next)
    }

    fn line(&mut self, s: impl AsRef<str>) {
        self.body.push_str("  ");
        self.body.push_str(s.as_ref());
        self.body.push('\n');
    }

    /// `%tN = <rhs>`; returns `%tN`.
    fn op(&mut self, rhs: impl AsRef<str>) -> String {
        let t = self.tmp();
        self.line(format!("{t} = {}", rhs.as_ref()));
        t
    }

    fn start_block(&mut self, label: &str) {
        let _ = writeln!(self.body, "{label}:");
        self.block = label.to_string();
    }

    fn call(&mut self, ret: &str, name: &str, args: &[(&str, &str)]) -> String {
        let types: Vec<&str> = args.iter().map(|a| a.0).collect();
        self.calls.need(format!("declare {ret} @{name}({})", types.join(", ")));
        let args: Vec<String> = args.iter().map(|(t, v)| format!("{t} {v}")).collect();
        let call = format!("call {ret} @{name}({})", args.join(", "));
        if ret == "void" {
            self.line(call);
            return String::new();
        }
        self.op(call)
    }

    /// `for iv in (start..end).step_by(step)`, `body` at each `iv` (i64).
    fn counted_loop(&mut self, start: &str, end: &str, step: &str, body: &mut dyn FnMut(&mut Self, &str)) {
        let (head, inner, latch, exit) = (self.label("head"), self.label("body"), self.label("latch"), self.label("exit"));
        let before = self.block.clone();
        let iv = self.tmp();
        let next = self.tmp();
        self.line(format!("br label %{head}"));
        self.start_block(&head);
        self.line(format!("{iv} = phi i64 [ {start}, %{before} ], [ {next}, %{latch} ]"));
        let more = self.op(format!("icmp slt i64 {iv}, {end}"));
        self.line(format!("br i1 {more}, label %{inner}, label %{exit}"));
        self.start_block(&inner);
        body(self, &iv);
        self.line(format!("br label %{latch}"));
        self.start_block(&latch);
        self.line(format!("{next} = add i64 {iv}, {step}"));
        self.line(format!("br label %{head}"));
        self.start_block(&exit);
    }

    /// Runs `then` only where `cond` (i1) holds.
    fn when(&mut self, cond: &str, then: &mut dyn FnMut(&mut Self)) {
        let (yes, done) = (self.label("then"), self.label("join"));
        self.line(format!("br i1 {cond}, label %{yes}, label %{done}"));
        self.start_block(&yes);
        then(self);
        self.line(format!("br label %{done}"));
        self.start_block(&done);
    }

    /// A loop index per loop of the kernel, from a linear index over `loops`.
    fn unflatten(&mut self, linear: &str, loops: &[usize], idx: &mut [String]) {
        let mut rest = linear.to_string();
        for (n, &d) in loops.iter().enumerate().rev() {
            let e = self.k.extents[d];
            if n == 0 {
                idx[d] = rest.clone();
            } else {
                idx[d] = self.op(format!("urem i64 {rest}, {e}"));
                rest = self.op(format!("udiv i64 {rest}, {e}"));
            }
        }
    }

    /// `offset + Σ strides[d] · idx[d]` as an i64 operand.
    fn affine(&mut self, offset: i64, strides: &[i64], idx: &[String]) -> String {
        let mut acc = offset.to_string();
        for (d, &st) in strides.iter().enumerate() {
            if st == 0 {
                continue;
            }
            let term = if st == 1 { idx[d].clone() } else { self.op(format!("mul i64 {}, {st}", idx[d])) };
            acc = self.op(format!("add i64 {acc}, {term}"));
        }
        acc
    }

    fn pointer(&mut self, a: &Access, d: DType, idx: &[String]) -> String {
        let e = self.affine(a.offset, &a.strides, idx);
        self.op(format!("getelementptr inbounds {}, ptr addrspace(1) %base{}, i64 {e}", mem_ty(d), a.slot))
    }

    fn load(&mut self, a: &Access, d: DType, idx: &[String]) -> String {
        let p = self.pointer(a, d, idx);
        let v = self.op(format!("load {}, ptr addrspace(1) {p}, align {}", mem_ty(d), d.size_bytes()));
        if d == DType::Bool { self.op(format!("icmp ne i8 {v}, 0")) } else { v }
    }

    fn store(&mut self, a: &Access, d: DType, v: &str, idx: &[String]) {
        let p = self.pointer(a, d, idx);
        let v = if d == DType::Bool { self.op(format!("zext i1 {v} to i8")) } else { v.to_string() };
        self.line(format!("store {} {v}, ptr addrspace(1) {p}, align {}", mem_ty(d), d.size_bytes()));
    }

    fn select(&mut self, c: &str, t: &str, a: &str, b: &str) -> String {
        self.op(format!("select i1 {c}, {t} {a}, {t} {b}"))
    }

    fn fma(&mut self, a: &str, b: &str, c: &str) -> String {
        self.call("float", "llvm.fma.f32", &[("float", a), ("float", b), ("float", c)])
    }

    fn poly(&mut self, x: &str, c: &[f32]) -> String {
        let mut acc = f32c(c[0]);
        for &k in &c[1..] {
            acc = self.fma(&acc, x, &f32c(k));
        }
        acc
    }

    fn fcmp_select(&mut self, cc: &str, x: &str, limit: f32, then: &str, otherwise: &str) -> String {
        let c = self.op(format!("fcmp {cc} float {x}, {}", f32c(limit)));
        self.select(&c, "float", then, otherwise)
    }

    fn pow2(&mut self, n: &str) -> String {
        let e = self.op(format!("add i32 {n}, 127"));
        let e = self.op(format!("shl i32 {e}, 23"));
        self.op(format!("bitcast i32 {e} to float"))
    }

    // `d2l_kernels::math`, operation for operation.

    fn exp_parts(&mut self, x: &str) -> (String, String) {
        let t = self.fma(x, &f32c(std::f32::consts::LOG2_E), &f32c(ROUND_MAGIC));
        let n = self.op(format!("fsub float {t}, {}", f32c(ROUND_MAGIC)));
        let tb = self.op(format!("bitcast float {t} to i32"));
        let ni = self.op(format!("sub i32 {tb}, {}", ROUND_MAGIC.to_bits() as i32));
        let r = self.fma(&n, &f32c(-LN2_HI), x);
        let r = self.fma(&n, &f32c(-LN2_LO), &r);
        let p = self.poly(&r, &EXP_POLY);
        let r2 = self.op(format!("fmul float {r}, {r}"));
        let y = self.fma(&p, &r2, &r);
        (self.op(format!("fadd float {y}, {}", f32c(1.0))), ni)
    }

    fn exp(&mut self, x: &str) -> String {
        let under = self.op(format!("fcmp olt float {x}, {}", f32c(EXP_LOWEST)));
        let x = self.fcmp_select("ogt", x, EXP_HIGHEST, &f32c(EXP_HIGHEST), x);
        let x = self.fcmp_select("olt", &x, EXP_LOWEST, &f32c(EXP_LOWEST), &x);
        let (p, ni) = self.exp_parts(&x);
        let half = self.op(format!("ashr i32 {ni}, 1"));
        let rest = self.op(format!("sub i32 {ni}, {half}"));
        let (s1, s2) = (self.pow2(&half), self.pow2(&rest));
        let y = self.op(format!("fmul float {p}, {s1}"));
        let y = self.op(format!("fmul float {y}, {s2}"));
        self.select(&under, "float", &f32c(0.0), &y)
    }

    fn exp_bounded(&mut self, x: &str) -> String {
        let (p, ni) = self.exp_parts(x);
        let s = self.pow2(&ni);
        self.op(format!("fmul float {p}, {s}"))
    }

    fn log(&mut self, x: &str) -> String {
        let tiny = self.op(format!("fcmp olt float {x}, {}", f32c(f32::MIN_POSITIVE)));
        let scaled = self.op(format!("fmul float {x}, {}", f32c(8_388_608.0)));
        let xs = self.select(&tiny, "float", &scaled, x);
        let adjust = self.select(&tiny, "float", &f32c(23.0), &f32c(0.0));
        let bits = self.op(format!("bitcast float {xs} to i32"));
        let expo = self.op(format!("lshr i32 {bits}, 23"));
        let e = self.op(format!("sub i32 {expo}, 126"));
        let m = self.op(format!("and i32 {bits}, {}", 0x807f_ffff_u32 as i32));
        let m = self.op(format!("or i32 {m}, {}", 0x3f00_0000));
        let m = self.op(format!("bitcast i32 {m} to float"));
        let e = self.op(format!("sitofp i32 {e} to float"));
        let e = self.op(format!("fsub float {e}, {adjust}"));
        let below = self.op(format!("fcmp olt float {m}, {}", f32c(std::f32::consts::FRAC_1_SQRT_2)));
        let e1 = self.op(format!("fsub float {e}, {}", f32c(1.0)));
        let e = self.select(&below, "float", &e1, &e);
        let m2 = self.op(format!("fadd float {m}, {m}"));
        let m = self.select(&below, "float", &m2, &m);
        let f = self.op(format!("fsub float {m}, {}", f32c(1.0)));
        let z = self.op(format!("fmul float {f}, {f}"));
        let p = self.poly(&f, &LOG_POLY);
        let y = self.op(format!("fmul float {p}, {f}"));
        let y = self.op(format!("fmul float {y}, {z}"));
        let y = self.fma(&e, &f32c(LN2_LO), &y);
        let y = self.fma(&z, &f32c(-0.5), &y);
        let r = self.op(format!("fadd float {f}, {y}"));
        let r = self.fma(&e, &f32c(LN2_HI), &r);
        let r = self.fcmp_select("oeq", x, 0.0, &f32c(f32::NEG_INFINITY), &r);
        let r = self.fcmp_select("oeq", x, f32::INFINITY, &f32c(f32::INFINITY), &r);
        self.fcmp_select("oge", x, 0.0, &r, &f32c(f32::NAN))
    }

    fn tanh(&mut self, x: &str) -> String {
        let ax = self.call("float", "llvm.fabs.f32", &[("float", x)]);
        let z = self.op(format!("fmul float {x}, {x}"));
        let p = self.poly(&z, &TANH_POLY);
        let pz = self.op(format!("fmul float {p}, {z}"));
        let small = self.fma(&pz, x, x);
        let ax2 = self.op(format!("fadd float {ax}, {ax}"));
        let ax2 = self.fcmp_select("ogt", &ax2, EXP_BOUNDED_HIGHEST, &f32c(EXP_BOUNDED_HIGHEST), &ax2);
        let e = self.exp_bounded(&ax2);
        let d = self.op(format!("fadd float {e}, {}", f32c(1.0)));
        let q = self.op(format!("fdiv float {}, {d}", f32c(2.0)));
        let large = self.op(format!("fsub float {}, {q}", f32c(1.0)));
        let lb = self.op(format!("bitcast float {large} to i32"));
        let xb = self.op(format!("bitcast float {x} to i32"));
        let sign = self.op(format!("and i32 {xb}, {}", i32::MIN));
        let lb = self.op(format!("or i32 {lb}, {sign}"));
        let large = self.op(format!("bitcast i32 {lb} to float"));
        self.fcmp_select("olt", &ax, TANH_SMALL, &small, &large)
    }

    fn sigmoid(&mut self, x: &str) -> String {
        let nx = self.op(format!("fneg float {x}"));
        let vanishes = self.op(format!("fcmp ogt float {nx}, {}", f32c(EXP_BOUNDED_HIGHEST)));
        let nx = self.select(&vanishes, "float", &f32c(EXP_BOUNDED_HIGHEST), &nx);
        let nx = self.fcmp_select("olt", &nx, EXP_LOWEST, &f32c(EXP_LOWEST), &nx);
        let e = self.exp_bounded(&nx);
        let d = self.op(format!("fadd float {}, {e}", f32c(1.0)));
        let s = self.op(format!("fdiv float {}, {d}", f32c(1.0)));
        self.select(&vanishes, "float", &f32c(0.0), &s)
    }

    fn unary(&mut self, op: UnaryOp, d: DType, x: &str) -> String {
        let t = ty(d);
        match (op, d) {
            (_, DType::Bool) => x.to_string(),
            (UnaryOp::Neg, DType::I64) => self.op(format!("sub i64 0, {x}")),
            (UnaryOp::Abs, DType::I64) => self.call("i64", "llvm.abs.i64", &[("i64", x), ("i1", "false")]),
            (_, DType::I64) => x.to_string(),
            (UnaryOp::Neg, _) => self.op(format!("fneg {t} {x}")),
            (UnaryOp::Abs, _) => self.call(t, &format!("llvm.fabs.{}", if d == DType::F32 { "f32" } else { "f64" }), &[(t, x)]),
            (UnaryOp::Sqrt, _) => self.call(t, &format!("llvm.sqrt.{}", if d == DType::F32 { "f32" } else { "f64" }), &[(t, x)]),
            (UnaryOp::Exp, DType::F32) => self.exp(x),
            (UnaryOp::Log, DType::F32) => self.log(x),
            (UnaryOp::Tanh, DType::F32) => self.tanh(x),
            (UnaryOp::Sigmoid, DType::F32) => self.sigmoid(x),
            (UnaryOp::Sigmoid, _) => {
                let nx = self.op(format!("fneg double {x}"));
                let e = self.call("double", "__nv_exp", &[("double", &nx)]);
                let d = self.op(format!("fadd double 1.0, {e}"));
                self.op(format!("fdiv double 1.0, {d}"))
            }
            (UnaryOp::Exp | UnaryOp::Log | UnaryOp::Tanh | UnaryOp::Sin | UnaryOp::Cos, _) => {
                let name = match op {
                    UnaryOp::Exp => "exp",
                    UnaryOp::Log => "log",
                    UnaryOp::Tanh => "tanh",
                    UnaryOp::Sin => "sin",
                    _ => "cos",
                };
                self.call(t, &libdevice_name(name, d), &[(t, x)])
            }
        }
    }

    fn int_div(&mut self, a: &str, b: &str) -> String {
        let zero = self.op(format!("icmp eq i64 {b}, 0"));
        let m1 = self.op(format!("icmp eq i64 {b}, -1"));
        let safe = self.select(&zero, "i64", "1", b);
        let safe = self.select(&m1, "i64", "1", &safe);
        let q = self.op(format!("sdiv i64 {a}, {safe}"));
        let neg = self.op(format!("sub i64 0, {a}"));
        let q = self.select(&m1, "i64", &neg, &q);
        // A zero divisor sets the status word; only those threads write it.
        self.when(&zero, &mut |e| e.line("atomicrmw or ptr addrspace(1) %base0, i64 1 monotonic, align 8"));
        q
    }

    fn binary(&mut self, op: BinaryOp, d: DType, a: &str, b: &str) -> String {
        let t = ty(d);
        match d {
            DType::F32 | DType::F64 => match op {
                BinaryOp::Add => self.op(format!("fadd {t} {a}, {b}")),
                BinaryOp::Sub => self.op(format!("fsub {t} {a}, {b}")),
                BinaryOp::Mul => self.op(format!("fmul {t} {a}, {b}")),
                BinaryOp::Div => self.op(format!("fdiv {t} {a}, {b}")),
                BinaryOp::Max | BinaryOp::Min => {
                    // The interpreter's: `b` if strictly greater (smaller), else `a`; NaN if either is.
                    let better = self.op(format!("fcmp {} {t} {b}, {a}", if op == BinaryOp::Max { "ogt" } else { "olt" }));
                    let r = self.select(&better, t, b, a);
                    let nan = self.op(format!("fcmp uno {t} {a}, {b}"));
                    self.select(&nan, t, &float_const(d, f64::NAN), &r)
                }
                BinaryOp::Pow => self.call(t, &libdevice_name("pow", d), &[(t, a), (t, b)]),
            },
            DType::I64 => match op {
                BinaryOp::Add => self.op(format!("add i64 {a}, {b}")),
                BinaryOp::Sub => self.op(format!("sub i64 {a}, {b}")),
                BinaryOp::Mul => self.op(format!("mul i64 {a}, {b}")),
                BinaryOp::Max => self.call("i64", "llvm.smax.i64", &[("i64", a), ("i64", b)]),
                BinaryOp::Min => self.call("i64", "llvm.smin.i64", &[("i64", a), ("i64", b)]),
                BinaryOp::Div => self.int_div(a, b),
                BinaryOp::Pow => a.to_string(),
            },
            DType::Bool => match op {
                BinaryOp::Min | BinaryOp::Mul => self.op(format!("and i1 {a}, {b}")),
                _ => self.op(format!("or i1 {a}, {b}")),
            },
        }
    }

    fn compare(&mut self, op: CmpOp, d: DType, a: &str, b: &str) -> String {
        let cc = match (d, op) {
            (DType::F32 | DType::F64, CmpOp::Eq) => "fcmp oeq",
            (DType::F32 | DType::F64, CmpOp::Ne) => "fcmp une",
            (DType::F32 | DType::F64, CmpOp::Lt) => "fcmp olt",
            (DType::F32 | DType::F64, CmpOp::Le) => "fcmp ole",
            (DType::F32 | DType::F64, CmpOp::Gt) => "fcmp ogt",
            (DType::F32 | DType::F64, CmpOp::Ge) => "fcmp oge",
            (_, CmpOp::Eq) => "icmp eq",
            (_, CmpOp::Ne) => "icmp ne",
            (DType::I64, CmpOp::Lt) => "icmp slt",
            (DType::I64, CmpOp::Le) => "icmp sle",
            (DType::I64, CmpOp::Gt) => "icmp sgt",
            (DType::I64, CmpOp::Ge) => "icmp sge",
            (_, CmpOp::Lt) => "icmp ult",
            (_, CmpOp::Le) => "icmp ule",
            (_, CmpOp::Gt) => "icmp ugt",
            (_, CmpOp::Ge) => "icmp uge",
        };
        self.op(format!("{cc} {} {a}, {b}", ty(d)))
    }

    fn cast(&mut self, from: DType, to: DType, x: &str) -> String {
        let (f, t) = (ty(from), ty(to));
        match (from, to) {
            _ if from == to => x.to_string(),
            (DType::F32, DType::F64) => self.op(format!("fpext float {x} to double")),
            (DType::F64, DType::F32) => self.op(format!("fptrunc double {x} to float")),
            (DType::F32 | DType::F64, DType::I64) => {
                self.call("i64", &format!("llvm.fptosi.sat.i64.{}", if from == DType::F32 { "f32" } else { "f64" }), &[(f, x)])
            }
            (DType::F32 | DType::F64, DType::Bool) => self.op(format!("fcmp une {f} {x}, {}", float_const(from, 0.0))),
            (DType::I64, DType::Bool) => self.op(format!("icmp ne i64 {x}, 0")),
            (DType::I64, _) => self.op(format!("sitofp i64 {x} to {t}")),
            (DType::Bool, DType::I64) => self.op(format!("zext i1 {x} to i64")),
            (DType::Bool, _) => self.op(format!("uitofp i1 {x} to {t}")),
            _ => x.to_string(),
        }
    }

    /// Every instruction at loop indices `idx`: their values.
    fn eval(&mut self, idx: &[String]) -> Vec<String> {
        let mut vals: Vec<String> = Vec::with_capacity(self.k.insts.len());
        for inst in &self.k.insts {
            let arg = |v: &d2l_kernels::kernel::Val| vals[v.0 as usize].clone();
            let v = match inst {
                Inst::Load { dtype, access } => self.load(access, *dtype, idx),
                Inst::Const { dtype, value } => constant(*dtype, *value),
                Inst::Index { offset, strides } => self.affine(*offset, strides, idx),
                Inst::Unary { op, dtype, x } => self.unary(*op, *dtype, &arg(x)),
                Inst::Binary { op, dtype, a, b } => self.binary(*op, *dtype, &arg(a), &arg(b)),
                Inst::Compare { op, dtype, a, b } => self.compare(*op, *dtype, &arg(a), &arg(b)),
                Inst::Select { dtype, cond, a, b } => self.select(&arg(cond), ty(*dtype), &arg(a), &arg(b)),
                Inst::Cast { from, to, x } => self.cast(*from, *to, &arg(x)),
                Inst::LoadAt { dtype, slot, offset, at } => {
                    let e = self.op(format!("add i64 {}, {offset}", arg(at)));
                    let p = self.op(format!("getelementptr inbounds {}, ptr addrspace(1) %base{slot}, i64 {e}", mem_ty(*dtype)));
                    let v = self.op(format!("load {}, ptr addrspace(1) {p}, align {}", mem_ty(*dtype), dtype.size_bytes()));
                    if *dtype == DType::Bool { self.op(format!("icmp ne i8 {v}, 0")) } else { v }
                }
                Inst::StreamWord { key, position } => self.stream_word(key, &arg(position)),
                Inst::Flag { cond, bit } => {
                    let c = arg(cond);
                    self.when(&c, &mut |e| e.line(format!("atomicrmw or ptr addrspace(1) %base0, i64 {bit} monotonic, align 8")));
                    c
                }
            };
            vals.push(v);
        }
        vals
    }

    /// `d2l_kernels::chacha::word`, operation for operation: the block's
    /// state from the key and `position / 16`, twelve rounds, the input
    /// added back, and the word `position % 16` (picked by selects).
    fn stream_word(&mut self, key: &[u32; 8], position: &str) -> String {
        use d2l_kernels::chacha::{COLUMNS, DIAGONALS, DOUBLE_ROUNDS, initial_state};
        let block = self.op(format!("lshr i64 {position}, 4"));
        let lo = self.op(format!("trunc i64 {block} to i32"));
        let hi = self.op(format!("lshr i64 {block}, 32"));
        let hi = self.op(format!("trunc i64 {hi} to i32"));
        let init: Vec<String> = initial_state(key, 0)
            .iter()
            .enumerate()
            .map(|(i, w)| match i {
                12 => lo.clone(),
                13 => hi.clone(),
                _ => (*w as i32).to_string(),
            })
            .collect();
        let mut s = init.clone();
        let rotl = |e: &mut Self, x: &str, r: u32| e.call("i32", "llvm.fshl.i32", &[("i32", x), ("i32", x), ("i32", &r.to_string())]);
        for _ in 0..DOUBLE_ROUNDS {
            for [a, b, c, d] in COLUMNS.into_iter().chain(DIAGONALS) {
                for (x, y, z, r) in [(a, b, d, 16), (c, d, b, 12), (a, b, d, 8), (c, d, b, 7)] {
                    s[x] = self.op(format!("add i32 {}, {}", s[x], s[y]));
                    let t = self.op(format!("xor i32 {}, {}", s[z], s[x]));
                    s[z] = rotl(self, &t, r);
                }
            }
        }
        let i = self.op(format!("and i64 {position}, 15"));
        let mut out = "0".to_string();
        for w in 0..16 {
            let v = self.op(format!("add i32 {}, {}", s[w], init[w]));
            let here = self.op(format!("icmp eq i64 {i}, {w}"));
            out = self.select(&here, "i32", &v, &out);
        }
        self.op(format!("zext i32 {out} to i64"))
    }

    fn combine(&mut self, op: ReduceOp, d: DType, a: &str, b: &str) -> String {
        let t = ty(d);
        match (op, d) {
            (_, DType::Bool) => self.op(format!("or i1 {a}, {b}")),
            (ReduceOp::Sum, DType::I64) => self.op(format!("add i64 {a}, {b}")),
            (ReduceOp::Sum, _) => self.op(format!("fadd {t} {a}, {b}")),
            (ReduceOp::Max, DType::I64) => self.call("i64", "llvm.smax.i64", &[("i64", a), ("i64", b)]),
            // IEEE maximum: NaN if either is (`max.NaN` on sm_80 and later).
            (ReduceOp::Max, _) => self.call(t, &format!("llvm.maximum.{}", if d == DType::F32 { "f32" } else { "f64" }), &[(t, a), (t, b)]),
        }
    }

    /// `v` from the lane `step` above (the lane's own value past the warp's end).
    fn shuffle_down(&mut self, d: DType, v: &str, step: usize) -> String {
        let shfl = |e: &mut Self, x: &str| e.call("i32", "llvm.nvvm.shfl.sync.down.i32", &[("i32", "-1"), ("i32", x), ("i32", &step.to_string()), ("i32", "31")]);
        match d {
            DType::F32 => {
                let b = self.op(format!("bitcast float {v} to i32"));
                let s = shfl(self, &b);
                self.op(format!("bitcast i32 {s} to float"))
            }
            DType::Bool => {
                let b = self.op(format!("zext i1 {v} to i32"));
                let s = shfl(self, &b);
                self.op(format!("trunc i32 {s} to i1"))
            }
            DType::F64 | DType::I64 => {
                let b = if d == DType::F64 { self.op(format!("bitcast double {v} to i64")) } else { v.to_string() };
                let lo = self.op(format!("trunc i64 {b} to i32"));
                let hi = self.op(format!("lshr i64 {b}, 32"));
                let hi = self.op(format!("trunc i64 {hi} to i32"));
                let (lo, hi) = (shfl(self, &lo), shfl(self, &hi));
                let lo = self.op(format!("zext i32 {lo} to i64"));
                let hi = self.op(format!("zext i32 {hi} to i64"));
                let hi = self.op(format!("shl i64 {hi}, 32"));
                let b = self.op(format!("or i64 {hi}, {lo}"));
                if d == DType::F64 { self.op(format!("bitcast i64 {b} to double")) } else { b }
            }
        }
    }

    fn warp_reduce(&mut self, op: ReduceOp, d: DType, v: &str) -> String {
        let mut v = v.to_string();
        let mut step = WARP / 2;
        while step > 0 {
            let other = self.shuffle_down(d, &v, step);
            v = self.combine(op, d, &v, &other);
            step /= 2;
        }
        v
    }

    fn alloca(&mut self, d: DType) -> String {
        self.next += 1;
        let a = format!("%acc{}", self.next);
        let _ = writeln!(self.entry, "  {a} = alloca {}, align 8", ty(d));
        a
    }

    fn identity(op: ReduceOp, d: DType) -> String {
        match (op, d) {
            (_, DType::Bool) => "false".into(),
            (ReduceOp::Sum, DType::I64) => "0".into(),
            (ReduceOp::Max, DType::I64) => i64::MIN.to_string(),
            (ReduceOp::Sum, _) => float_const(d, 0.0),
            (ReduceOp::Max, _) => float_const(d, f64::NEG_INFINITY),
        }
    }

    fn kernel(&mut self, name: &str) -> String {
        let r = self.k.extents.len();
        let s = self.s;
        let (n, per) = (s.outputs(self.k).to_string(), s.per_output(self.k).to_string());
        let tid = self.call("i32", "llvm.nvvm.read.ptx.sreg.tid.x", &[]);
        let tid = self.op(format!("zext i32 {tid} to i64"));
        let cta = self.call("i32", "llvm.nvvm.read.ptx.sreg.ctaid.x", &[]);
        let cta = self.op(format!("zext i32 {cta} to i64"));
        let mut idx = vec!["0".to_string(); r];
        let stores = self.k.stores.clone();
        match s.regime {
            Regime::Elementwise | Regime::ThreadPerOutput => {
                let g = self.op(format!("mul i64 {cta}, {}", s.block));
                let g = self.op(format!("add i64 {g}, {tid}"));
                let threads = (s.grid * s.block).to_string();
                let in_register: Vec<bool> = stores.iter().map(|st| st.reduce.is_some() && s.reduced.iter().all(|&d| st.access.strides[d] == 0)).collect();
                let accs: Vec<Option<String>> = stores.iter().zip(&in_register).map(|(st, &reg)| reg.then(|| self.alloca(st.dtype))).collect();
                self.counted_loop(&g, &n, &threads, &mut |e, p| {
                    e.unflatten(p, &s.parallel, &mut idx);
                    if s.regime == Regime::Elementwise {
                        let vals = e.eval(&idx);
                        for st in &stores {
                            let v = match st.reduce {
                                Some(op) => e.combine(op, st.dtype, &Self::identity(op, st.dtype), &vals[st.value.0 as usize]),
                                None => vals[st.value.0 as usize].clone(),
                            };
                            e.store(&st.access, st.dtype, &v, &idx);
                        }
                        return;
                    }
                    for (i, st) in stores.iter().enumerate() {
                        let Some(op) = st.reduce else { continue };
                        let id = Self::identity(op, st.dtype);
                        match &accs[i] {
                            Some(a) => e.line(format!("store {} {id}, ptr {a}", ty(st.dtype))),
                            None => e.counted_loop("0", &per, "1", &mut |e, r| {
                                let mut at = idx.clone();
                                e.unflatten(r, &s.reduced, &mut at);
                                e.store(&st.access, st.dtype, &id, &at);
                            }),
                        }
                    }
                    e.counted_loop("0", &per, "1", &mut |e, r| {
                        let mut at = idx.clone();
                        e.unflatten(r, &s.reduced, &mut at);
                        let vals = e.eval(&at);
                        for (i, st) in stores.iter().enumerate() {
                            let v = &vals[st.value.0 as usize];
                            match (st.reduce, &accs[i]) {
                                (None, _) => e.store(&st.access, st.dtype, v, &at),
                                (Some(op), Some(a)) => {
                                    let old = e.op(format!("load {}, ptr {a}", ty(st.dtype)));
                                    let new = e.combine(op, st.dtype, &old, v);
                                    e.line(format!("store {} {new}, ptr {a}", ty(st.dtype)));
                                }
                                (Some(op), None) => {
                                    let old = e.load(&st.access, st.dtype, &at);
                                    let new = e.combine(op, st.dtype, &old, v);
                                    e.store(&st.access, st.dtype, &new, &at);
                                }
                            }
                        }
                    });
                    for (i, st) in stores.iter().enumerate() {
                        if let Some(a) = &accs[i] {
                            let v = e.op(format!("load {}, ptr {a}", ty(st.dtype)));
                            e.store(&st.access, st.dtype, &v, &idx);
                        }
                    }
                });
            }
            Regime::BlockPerOutput => {
                let lane = self.op(format!("and i64 {tid}, {}", WARP - 1));
                let warp = self.op(format!("lshr i64 {tid}, 5"));
                let warps = s.block / WARP;
                let accs: Vec<Option<String>> = stores.iter().map(|st| st.reduce.map(|_| self.alloca(st.dtype))).collect();
                let grid = s.grid.to_string();
                self.counted_loop(&cta, &n, &grid, &mut |e, p| {
                    e.unflatten(p, &s.parallel, &mut idx);
                    for (st, a) in stores.iter().zip(&accs) {
                        if let (Some(op), Some(a)) = (st.reduce, a) {
                            e.line(format!("store {} {}, ptr {a}", ty(st.dtype), Self::identity(op, st.dtype)));
                        }
                    }
                    e.counted_loop(&tid, &per, &s.block.to_string(), &mut |e, r| {
                        let mut at = idx.clone();
                        e.unflatten(r, &s.reduced, &mut at);
                        let vals = e.eval(&at);
                        for (st, a) in stores.iter().zip(&accs) {
                            let v = &vals[st.value.0 as usize];
                            match (st.reduce, a) {
                                (Some(op), Some(a)) => {
                                    let old = e.op(format!("load {}, ptr {a}", ty(st.dtype)));
                                    let new = e.combine(op, st.dtype, &old, v);
                                    e.line(format!("store {} {new}, ptr {a}", ty(st.dtype)));
                                }
                                _ => e.store(&st.access, st.dtype, v, &at),
                            }
                        }
                    });
                    let mut at = idx.clone();
                    for &d in &s.reduced {
                        at[d] = "0".into();
                    }
                    for (i, (st, a)) in stores.iter().zip(&accs).enumerate() {
                        let (Some(op), Some(a)) = (st.reduce, a) else { continue };
                        let (d, t) = (st.dtype, ty(st.dtype));
                        let id = Self::identity(op, d);
                        let shared = format!("@{name}.s{i}");
                        e.calls.need(format!("{shared} = internal addrspace(3) global [{WARP} x {}] undef, align 8", mem_ty(d)));
                        let v = e.op(format!("load {t}, ptr {a}"));
                        let v = e.warp_reduce(op, d, &v);
                        let first = e.op(format!("icmp eq i64 {lane}, 0"));
                        let vm = if d == DType::Bool { e.op(format!("zext i1 {v} to i8")) } else { v.clone() };
                        e.when(&first, &mut |e| {
                            let slot = e.op(format!("getelementptr inbounds [{WARP} x {}], ptr addrspace(3) {shared}, i64 0, i64 {warp}", mem_ty(d)));
                            e.line(format!("store {} {vm}, ptr addrspace(3) {slot}", mem_ty(d)));
                        });
                        e.call("void", "llvm.nvvm.barrier0", &[]);
                        let warp0 = e.op(format!("icmp eq i64 {warp}, 0"));
                        e.when(&warp0, &mut |e| {
                            let slot = e.op(format!("getelementptr inbounds [{WARP} x {}], ptr addrspace(3) {shared}, i64 0, i64 {lane}", mem_ty(d)));
                            let w = e.op(format!("load {}, ptr addrspace(3) {slot}", mem_ty(d)));
                            let w = if d == DType::Bool { e.op(format!("icmp ne i8 {w}, 0")) } else { w };
                            let real = e.op(format!("icmp ult i64 {lane}, {warps}"));
                            let w = e.select(&real, t, &w, &id);
                            let w = e.warp_reduce(op, d, &w);
                            let zero = e.op(format!("icmp eq i64 {tid}, 0"));
                            e.when(&zero, &mut |e| {
                                let out = e.combine(op, d, &id, &w);
                                e.store(&st.access, d, &out, &at);
                            });
                        });
                        e.call("void", "llvm.nvvm.barrier0", &[]);
                    }
                });
            }
        }
        self.line("ret void");
        let mut f = String::new();
        let _ = writeln!(f, "; {}", s);
        for line in self.k.to_string().lines() {
            let _ = writeln!(f, "; {line}");
        }
        let _ = writeln!(f, "define ptx_kernel void @{name}(ptr addrspace(1) noalias readonly %slots) #0 {{");
        f.push_str("entry:\n");
        f.push_str(&self.entry);
        f.push_str(&self.body);
        f.push_str("}\n");
        f
    }
}

/// The slots a kernel touches, in order.
fn slots(k: &LoopKernel) -> Vec<usize> {
    let mut s: Vec<usize> = k
        .insts
        .iter()
        .filter_map(|i| match i {
            Inst::Load { access, .. } => Some(access.slot),
            Inst::LoadAt { slot, .. } => Some(*slot),
            _ => None,
        })
        .collect();
    s.extend(k.stores.iter().map(|st| st.access.slot));
    s.push(0);
    s.sort();
    s.dedup();
    s
}

/// An LLVM module for NVPTX with one kernel function per loop kernel
/// (`names[i]` for `kernels[i]`), and whether it calls libdevice.
pub fn module(kernels: &[(String, &LoopKernel)]) -> (String, bool) {
    let mut calls = Declarations::default();
    let mut functions = String::new();
    for (name, k) in kernels {
        let s = GpuSchedule::of(k);
        let mut e = Emitter { k, s: &s, body: String::new(), entry: String::new(), next: 0, block: "entry".into(), calls: &mut calls };
        // Each slot's base address, read from the table once.
        for slot in slots(k) {
            let _ = writeln!(e.entry, "  %slot{slot} = getelementptr inbounds i64, ptr addrspace(1) %slots, i64 {slot}");
            let _ = writeln!(e.entry, "  %addr{slot} = load i64, ptr addrspace(1) %slot{slot}, align 8, !invariant.load !0");
            let _ = writeln!(e.entry, "  %base{slot} = inttoptr i64 %addr{slot} to ptr addrspace(1)");
        }
        functions.push_str(&e.kernel(name));
        functions.push('\n');
    }
    let mut m = String::from("target triple = \"nvptx64-nvidia-cuda\"\n\n");
    for line in &calls.lines {
        m.push_str(line);
        m.push('\n');
    }
    m.push('\n');
    m.push_str(&functions);
    m.push_str("attributes #0 = { nounwind }\n!0 = !{}\n");
    (m, calls.libdevice)
}
