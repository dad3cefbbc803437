//! exp, log, tanh and sigmoid of f32 as straight-line CLIF (polynomials
//! after range reduction, Cephes' coefficients), for `f32` and `f32x4`
//! alike: a loop calls nothing per element. Accuracy is about 1-2 ulp
//! against the standard library (`tests/math.rs` checks it over a range),
//! with IEEE special values (±inf, NaN, 0, denormals) handled by selects.

use cranelift_codegen::ir::{InstBuilder, MemFlagsData, Type, Value, types};
use cranelift_codegen::ir::condcodes::FloatCC;
use cranelift_frontend::FunctionBuilder;

use d2l_kernels::math::{EXP_BOUNDED_HIGHEST, EXP_HIGHEST, EXP_LOWEST, EXP_POLY, LN2_HI, LN2_LO, LOG_POLY, ROUND_MAGIC, TANH_POLY, TANH_SMALL};

/// Emits f32 math for one lane shape: scalar `f32` or vector `f32x4`.
pub struct Math {
    float: Type,
    int: Type,
}

impl Math {
    pub fn new(float: Type) -> Math {
        let int = match float {
            types::F32X4 => types::I32X4,
            types::F64 => types::I64,
            _ => types::I32,
        };
        Math { float, int }
    }

    fn f(&self, b: &mut FunctionBuilder, x: f32) -> Value {
        let s = b.ins().f32const(x);
        if self.float.is_vector() { b.ins().splat(self.float, s) } else { s }
    }

    fn i(&self, b: &mut FunctionBuilder, x: i32) -> Value {
        let s = b.ins().iconst(types::I32, x as i64);
        if self.int.is_vector() { b.ins().splat(self.int, s) } else { s }
    }

    fn to_int(&self, b: &mut FunctionBuilder, x: Value) -> Value {
        b.ins().bitcast(self.int, MemFlagsData::new().with_endianness(cranelift_codegen::ir::Endianness::Little), x)
    }

    fn to_float(&self, b: &mut FunctionBuilder, x: Value) -> Value {
        b.ins().bitcast(self.float, MemFlagsData::new().with_endianness(cranelift_codegen::ir::Endianness::Little), x)
    }

    /// `c ? x : y` for a comparison result `c` of this lane shape.
    pub fn select(&self, b: &mut FunctionBuilder, c: Value, x: Value, y: Value) -> Value {
        if self.float.is_vector() {
            let mask = self.to_float(b, c);
            b.ins().bitselect(mask, x, y)
        } else {
            b.ins().select(c, x, y)
        }
    }

    /// Horner's rule: `c[0]·x^(n-1) + ... + c[n-1]`.
    fn poly(&self, b: &mut FunctionBuilder, x: Value, c: &[f32]) -> Value {
        let mut acc = self.f(b, c[0]);
        for &k in &c[1..] {
            let k = self.f(b, k);
            acc = b.ins().fma(acc, x, k);
        }
        acc
    }

    /// `x` limited to `[lo, hi]`; NaN stays NaN (compare and select,
    /// cheaper than IEEE fmin/fmax on x86).
    fn clamp(&self, b: &mut FunctionBuilder, x: Value, lo: f32, hi: f32) -> Value {
        let hi = self.f(b, hi);
        let lo = self.f(b, lo);
        let above = b.ins().fcmp(FloatCC::GreaterThan, x, hi);
        let x = self.select(b, above, hi, x);
        let below = b.ins().fcmp(FloatCC::LessThan, x, lo);
        self.select(b, below, lo, x)
    }

    /// `p · 2^n` for an integer `n` in [-252, 256], as two exact powers so
    /// that results near the overflow and underflow limits are right (2^128
    /// alone is not a float).
    fn scale(&self, b: &mut FunctionBuilder, p: Value, ni: Value) -> Value {
        let half = b.ins().sshr_imm_s(ni, 1);
        let rest = b.ins().isub(ni, half);
        let bias = self.i(b, 127);
        let e1 = b.ins().iadd(half, bias);
        let e1 = b.ins().ishl_imm_s(e1, 23);
        let e2 = b.ins().iadd(rest, bias);
        let e2 = b.ins().ishl_imm_s(e2, 23);
        let s1 = self.to_float(b, e1);
        let s2 = self.to_float(b, e2);
        let p = b.ins().fmul(p, s1);
        b.ins().fmul(p, s2)
    }

    /// `(p, n)` with `e^x = p · 2^n` and `p` near 1 (within [0.7, 1.42]),
    /// for `x` already limited to [-87.34, 88.8]; `n` as an integer.
    fn exp_parts(&self, b: &mut FunctionBuilder, x: Value) -> (Value, Value) {
        // n = round(x·log2 e), by ROUND_MAGIC.
        let log2e = self.f(b, std::f32::consts::LOG2_E);
        let magic = self.f(b, ROUND_MAGIC);
        let t = b.ins().fma(x, log2e, magic);
        let n = b.ins().fsub(t, magic);
        let tbits = self.to_int(b, t);
        let mbits = self.i(b, ROUND_MAGIC.to_bits() as i32);
        let ni = b.ins().isub(tbits, mbits);
        // r = x - n·ln2, in two parts so the subtraction is exact.
        let c1 = self.f(b, -LN2_HI);
        let c2 = self.f(b, -LN2_LO);
        let r = b.ins().fma(n, c1, x);
        let r = b.ins().fma(n, c2, r);
        let p = self.poly(b, r, &EXP_POLY);
        let r2 = b.ins().fmul(r, r);
        let one = self.f(b, 1.0);
        let y = b.ins().fma(p, r2, r);
        (b.ins().fadd(y, one), ni)
    }

    pub fn exp(&self, b: &mut FunctionBuilder, x: Value) -> Value {
        // Below ln(f32::MIN_POSITIVE) the result would be denormal: it is 0
        // instead (off by < 1.2e-38). Denormals cost ~100 cycles in every
        // later operation on this CPU family; a masked softmax's -1e6
        // scores made its whole backward pass slow on them.
        let lowest = self.f(b, EXP_LOWEST);
        let underflows = b.ins().fcmp(FloatCC::LessThan, x, lowest);
        let x = self.clamp(b, x, EXP_LOWEST, EXP_HIGHEST);
        let (p, ni) = self.exp_parts(b, x);
        let y = self.scale(b, p, ni);
        let zero = self.f(b, 0.0);
        self.select(b, underflows, zero, y)
    }

    /// `e^x` for `x` in [ln(f32::MIN_POSITIVE), 88] (or NaN), as tanh and
    /// sigmoid use it: there `2^n` is one normal float, so the scale is a
    /// single product, and no special case applies. Bit for bit
    /// [`Math::exp`] on that range.
    fn exp_bounded(&self, b: &mut FunctionBuilder, x: Value) -> Value {
        let (p, ni) = self.exp_parts(b, x);
        let bias = self.i(b, 127);
        let e = b.ins().iadd(ni, bias);
        let e = b.ins().ishl_imm_s(e, 23);
        let scale = self.to_float(b, e);
        b.ins().fmul(p, scale)
    }

    pub fn log(&self, b: &mut FunctionBuilder, x: Value) -> Value {
        // Denormals: scale by 2^23 first and remove 23 from the exponent.
        let tiny = self.f(b, f32::MIN_POSITIVE);
        let is_tiny = b.ins().fcmp(FloatCC::LessThan, x, tiny);
        let big = self.f(b, 8_388_608.0);
        let scaled = b.ins().fmul(x, big);
        let xs = self.select(b, is_tiny, scaled, x);
        let zero_f = self.f(b, 0.0);
        let k23 = self.f(b, 23.0);
        let adjust = self.select(b, is_tiny, k23, zero_f);
        // x = m · 2^e with m in [0.5, 1).
        let bits = self.to_int(b, xs);
        let expo = b.ins().ushr_imm_s(bits, 23);
        let k126 = self.i(b, 126);
        let e = b.ins().isub(expo, k126);
        let mant_mask = self.i(b, 0x807f_ffff_u32 as i32);
        let half_bits = self.i(b, 0x3f00_0000);
        let m = b.ins().band(bits, mant_mask);
        let m = b.ins().bor(m, half_bits);
        let m = self.to_float(b, m);
        let e = b.ins().fcvt_from_sint(self.float, e);
        let e = b.ins().fsub(e, adjust);
        // Keep m in [sqrt(1/2), sqrt(2)): below, use 2m and e - 1.
        let sqrth = self.f(b, std::f32::consts::FRAC_1_SQRT_2);
        let below = b.ins().fcmp(FloatCC::LessThan, m, sqrth);
        let one = self.f(b, 1.0);
        let e_minus = b.ins().fsub(e, one);
        let e = self.select(b, below, e_minus, e);
        let m2 = b.ins().fadd(m, m);
        let m = self.select(b, below, m2, m);
        let f = b.ins().fsub(m, one);
        let z = b.ins().fmul(f, f);
        let p = self.poly(b, f, &LOG_POLY);
        let y = b.ins().fmul(p, f);
        let y = b.ins().fmul(y, z);
        let q1 = self.f(b, LN2_LO);
        let y = b.ins().fma(e, q1, y);
        let mhalf = self.f(b, -0.5);
        let y = b.ins().fma(z, mhalf, y);
        let r = b.ins().fadd(f, y);
        let q2 = self.f(b, LN2_HI);
        let r = b.ins().fma(e, q2, r);
        // Special values: log(0) = -inf, log(+inf) = +inf, log(<0 or NaN) = NaN.
        let is_zero = b.ins().fcmp(FloatCC::Equal, x, zero_f);
        let ninf = self.f(b, f32::NEG_INFINITY);
        let r = self.select(b, is_zero, ninf, r);
        let inf = self.f(b, f32::INFINITY);
        let is_inf = b.ins().fcmp(FloatCC::Equal, x, inf);
        let r = self.select(b, is_inf, inf, r);
        let bad = b.ins().fcmp(FloatCC::UnorderedOrLessThan, x, zero_f);
        let nan = self.f(b, f32::NAN);
        self.select(b, bad, nan, r)
    }

    pub fn tanh(&self, b: &mut FunctionBuilder, x: Value) -> Value {
        // Small |x|: odd polynomial; else 1 - 2/(e^{2|x|} + 1) with x's sign.
        let ax = b.ins().fabs(x);
        let z = b.ins().fmul(x, x);
        let p = self.poly(b, z, &TANH_POLY);
        let pz = b.ins().fmul(p, z);
        let small = b.ins().fma(pz, x, x);
        let ax2 = b.ins().fadd(ax, ax);
        // Past 88, e^{2|x|} + 1 is still above 2^126 and the quotient
        // rounds to 1 as it does at +inf (and NaN stays NaN).
        let limit = self.f(b, EXP_BOUNDED_HIGHEST);
        let above = b.ins().fcmp(FloatCC::GreaterThan, ax2, limit);
        let ax2 = self.select(b, above, limit, ax2);
        let e = self.exp_bounded(b, ax2);
        let one = self.f(b, 1.0);
        let two = self.f(b, 2.0);
        let d = b.ins().fadd(e, one);
        let q = b.ins().fdiv(two, d);
        let large = b.ins().fsub(one, q);
        // copysign(large, x) with bit operations (no f32x4 fcopysign on x64).
        let sign = self.i(b, i32::MIN);
        let xbits = self.to_int(b, x);
        let xsign = b.ins().band(xbits, sign);
        let lbits = self.to_int(b, large);
        let lbits = b.ins().bor(lbits, xsign);
        let large = self.to_float(b, lbits);
        let limit = self.f(b, TANH_SMALL);
        let is_small = b.ins().fcmp(FloatCC::LessThan, ax, limit);
        self.select(b, is_small, small, large)
    }

    /// `1 / (1 + e^{-x})`.
    pub fn sigmoid(&self, b: &mut FunctionBuilder, x: Value) -> Value {
        let nx = b.ins().fneg(x);
        // Past -x = 88 sigmoid is a denormal, 0 here as after flushing;
        // below -x = -87.3, e^{-x} is below 2^-126 and 1 + it rounds to 1,
        // as it does at the limit.
        let big = self.f(b, EXP_BOUNDED_HIGHEST);
        let vanishes = b.ins().fcmp(FloatCC::GreaterThan, nx, big);
        let nx = self.select(b, vanishes, big, nx);
        let lowest = self.f(b, EXP_LOWEST);
        let below = b.ins().fcmp(FloatCC::LessThan, nx, lowest);
        let nx = self.select(b, below, lowest, nx);
        let e = self.exp_bounded(b, nx);
        let one = self.f(b, 1.0);
        let d = b.ins().fadd(one, e);
        let s = b.ins().fdiv(one, d);
        let zero = self.f(b, 0.0);
        self.select(b, vanishes, zero, s)
    }
}
