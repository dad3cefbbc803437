//! The f32 exp, log, tanh and sigmoid every backend computes: range
//! reduction, then polynomials on Cephes' coefficients, with IEEE special
//! values (±inf, NaN, 0, denormals) handled by selects. The CPU backend
//! emits them as straight-line Cranelift code (`d2l_cpu::math`, one vector
//! lane or four), its wide loops and the GPU grid interpreter call the
//! scalar functions below, and the PTX backend emits the same operations as
//! LLVM IR, so every backend rounds alike, step by step (fused
//! multiply-adds where these use `mul_add`). About 1-2 ulp from the
//! standard library's.

/// ln(f32::MIN_POSITIVE): below it, e^x is denormal.
pub const EXP_LOWEST: f32 = -87.336_54;
/// Above this, e^x is +inf in f32 (exp clamps to it, keeping n small).
pub const EXP_HIGHEST: f32 = 88.8;
/// Where tanh and sigmoid clamp the argument of their exponential: one
/// power-of-two scale suffices there (see `exp_bounded`).
pub const EXP_BOUNDED_HIGHEST: f32 = 88.0;
/// 1.5·2^23: adding it rounds to an integer and leaves it in the low
/// mantissa bits (no float-to-int conversion).
pub const ROUND_MAGIC: f32 = 12_582_912.0;
/// ln 2 in two parts (Cephes' C1, C2), the first with few mantissa bits,
/// so that `x - n·ln 2` is exact.
pub const LN2_HI: f32 = 0.693_359_4;
pub const LN2_LO: f32 = -2.121_944_4e-4;
/// e^r - 1 - r = r²·EXP_POLY(r) on the reduced range.
pub const EXP_POLY: [f32; 6] = [1.987_569_1e-4, 1.398_199_9e-3, 8.333_452e-3, 4.166_579_6e-2, 1.666_666_5e-1, 5e-1];
/// log(1 + f) = f - f²/2 + f³·LOG_POLY(f) for m = 1 + f in [sqrt(1/2), sqrt(2)).
pub const LOG_POLY: [f32; 9] = [7.037_683_6e-2, -1.151_461_e-1, 1.167_699_9e-1, -1.242_014_1e-1, 1.424_932_3e-1, -1.666_805_8e-1, 2.000_071_4e-1, -2.499_999_4e-1, 3.333_333e-1];
/// tanh x = x + x·x²·TANH_POLY(x²) below TANH_SMALL.
pub const TANH_POLY: [f32; 5] = [-5.704_988_7e-3, 2.063_909e-2, -5.373_971_6e-2, 1.333_144_2e-1, -3.333_328e-1];
pub const TANH_SMALL: f32 = 0.625;

#[inline(always)]
fn poly(x: f32, c: &[f32]) -> f32 {
    let mut acc = c[0];
    for &k in &c[1..] {
        acc = acc.mul_add(x, k);
    }
    acc
}

#[inline(always)]
fn clamp(x: f32, lo: f32, hi: f32) -> f32 {
    let x = if x > hi { hi } else { x };
    if x < lo { lo } else { x }
}

#[inline(always)]
fn exp_parts(x: f32) -> (f32, i32) {
    let t = x.mul_add(std::f32::consts::LOG2_E, ROUND_MAGIC);
    let n = t - ROUND_MAGIC;
    let ni = (t.to_bits() as i32).wrapping_sub(ROUND_MAGIC.to_bits() as i32);
    let r = n.mul_add(-LN2_HI, x);
    let r = n.mul_add(-LN2_LO, r);
    let p = poly(r, &EXP_POLY);
    let r2 = r * r;
    let y = p.mul_add(r2, r);
    (y + 1.0, ni)
}

#[inline(always)]
pub fn exp(x: f32) -> f32 {
    let underflows = x < EXP_LOWEST;
    let x = clamp(x, EXP_LOWEST, EXP_HIGHEST);
    let (p, ni) = exp_parts(x);
    let half = ni >> 1;
    let rest = ni.wrapping_sub(half);
    let s1 = f32::from_bits((half.wrapping_add(127) << 23) as u32);
    let s2 = f32::from_bits((rest.wrapping_add(127) << 23) as u32);
    let y = p * s1 * s2;
    if underflows { 0.0 } else { y }
}

#[inline(always)]
fn exp_bounded(x: f32) -> f32 {
    let (p, ni) = exp_parts(x);
    p * f32::from_bits((ni.wrapping_add(127) << 23) as u32)
}

#[inline(always)]
pub fn log(x: f32) -> f32 {
    let is_tiny = x < f32::MIN_POSITIVE;
    let xs = if is_tiny { x * 8_388_608.0 } else { x };
    let adjust = if is_tiny { 23.0 } else { 0.0 };
    let bits = xs.to_bits() as i32;
    let expo = ((bits as u32) >> 23) as i32;
    let e = expo.wrapping_sub(126);
    let m = f32::from_bits(((bits & 0x807f_ffff_u32 as i32) | 0x3f00_0000) as u32);
    let e = e as f32 - adjust;
    let below = m < std::f32::consts::FRAC_1_SQRT_2;
    let e_minus = e - 1.0;
    let e = if below { e_minus } else { e };
    let m2 = m + m;
    let m = if below { m2 } else { m };
    let f = m - 1.0;
    let z = f * f;
    let p = poly(f, &LOG_POLY);
    let y = p * f;
    let y = y * z;
    let y = e.mul_add(LN2_LO, y);
    let y = z.mul_add(-0.5, y);
    let r = f + y;
    let r = e.mul_add(LN2_HI, r);
    let r = if x == 0.0 { f32::NEG_INFINITY } else { r };
    let r = if x == f32::INFINITY { f32::INFINITY } else { r };
    // NaN or below zero: ordered `x >= 0` is false for both.
    if x >= 0.0 { r } else { f32::NAN }
}

#[inline(always)]
pub fn tanh(x: f32) -> f32 {
    let ax = x.abs();
    let z = x * x;
    let p = poly(z, &TANH_POLY);
    let pz = p * z;
    let small = pz.mul_add(x, x);
    let ax2 = ax + ax;
    let ax2 = if ax2 > EXP_BOUNDED_HIGHEST { EXP_BOUNDED_HIGHEST } else { ax2 };
    let e = exp_bounded(ax2);
    let d = e + 1.0;
    let q = 2.0 / d;
    let large = 1.0 - q;
    let large = f32::from_bits(large.to_bits() | (x.to_bits() & 0x8000_0000));
    if ax < TANH_SMALL { small } else { large }
}

#[inline(always)]
pub fn sigmoid(x: f32) -> f32 {
    let nx = -x;
    let vanishes = nx > EXP_BOUNDED_HIGHEST;
    let nx = if vanishes { EXP_BOUNDED_HIGHEST } else { nx };
    let nx = if nx < EXP_LOWEST { EXP_LOWEST } else { nx };
    let e = exp_bounded(nx);
    let d = 1.0 + e;
    let s = 1.0 / d;
    if vanishes { 0.0 } else { s }
}
