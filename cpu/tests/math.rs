//! The CLIF polynomial exp, log, tanh and sigmoid against the standard
//! library (computed in f64 and rounded: a correctly rounded reference),
//! over their useful ranges, in vector and scalar lanes, plus IEEE special
//! values.

use d2l_cpu::clif::Jit;
use d2l_kernels::kernel::{Access, Inst, LoopKernel, Store, Val};
use d2l_ir::{BinaryOp, DType, UnaryOp};

/// Applies `op` to `xs` with a JIT-compiled loop (vector main loop and a
/// scalar tail, since the length is not a multiple of 4).
fn jit(op: UnaryOp, xs: &[f32]) -> Vec<f32> {
    jit_expr(xs, |k, x| k.push(Inst::Unary { op, dtype: DType::F32, x }))
}

/// Applies the expression `body` builds from `x` to `xs`, as [`jit`] does.
fn jit_expr(xs: &[f32], body: impl Fn(&mut LoopKernel, Val) -> Val) -> Vec<f32> {
    let n = xs.len();
    let mut k = LoopKernel::new("math", vec![n]);
    let x = k.push(Inst::Load { dtype: DType::F32, access: Access { slot: 1, offset: 0, strides: vec![1] } });
    let y = body(&mut k, x);
    k.stores.push(Store { value: y, dtype: DType::F32, access: Access { slot: 2, offset: 0, strides: vec![1] }, reduce: None });
    let mut jit = Jit::new().expect("host ISA");
    jit.add(&k).expect("compiles");
    let code = jit.finish().expect("finalises");
    let mut out = vec![0.0f32; n];
    let mut status = 0i64;
    let table = [&mut status as *mut i64 as *mut u8, xs.as_ptr() as *mut u8, out.as_mut_ptr() as *mut u8];
    // SAFETY: slots 1 and 2 hold n f32s; the kernel touches nothing else.
    unsafe { (code.functions[0])(table.as_ptr(), 0, n as i64) };
    out
}

/// Distance in units in the last place (0 for equal, incl. both NaN).
fn ulps(a: f32, b: f32) -> u32 {
    if a.is_nan() || b.is_nan() {
        return if a.is_nan() && b.is_nan() { 0 } else { u32::MAX };
    }
    if a == b {
        return 0;
    }
    if a.is_sign_negative() != b.is_sign_negative() {
        return u32::MAX;
    }
    a.to_bits().abs_diff(b.to_bits())
}

fn worst(op: UnaryOp, xs: &[f32], reference: impl Fn(f64) -> f64) -> (u32, f32) {
    let got = jit(op, xs);
    xs.iter().zip(&got).map(|(&x, &y)| (ulps(y, reference(x as f64) as f32), x)).max_by_key(|p| p.0).unwrap_or((0, 0.0))
}

fn linspace(lo: f32, hi: f32, n: usize) -> Vec<f32> {
    (0..n).map(|i| lo + (hi - lo) * i as f32 / (n - 1) as f32).collect()
}

fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

#[test]
fn exp_is_within_two_ulps() {
    let (u, at) = worst(UnaryOp::Exp, &linspace(-87.0, 88.5, 200_003), f64::exp);
    assert!(u <= 2, "exp: {u} ulps at {at}");
    let special = [f32::INFINITY, f32::NEG_INFINITY, f32::NAN, 0.0, -0.0, 89.0, -104.0, -90.0];
    let got = jit(UnaryOp::Exp, &special);
    for (x, y) in special.iter().zip(got) {
        // Denormal results may flush differently; they must be tiny and non-negative.
        let want = (*x as f64).exp() as f32;
        assert!(ulps(y, want) <= 2 || (want < f32::MIN_POSITIVE && (0.0..f32::MIN_POSITIVE).contains(&y)), "exp({x}) = {y}, want {want}");
    }
}

#[test]
fn log_is_within_two_ulps() {
    // Log-uniform over the normal range, plus denormals.
    let xs: Vec<f32> = (0..200_003).map(|i| 2f32.powf(-126.0 + 253.0 * i as f32 / 200_002.0)).chain([1e-40, 3e-42, 1.0, 0.5]).collect();
    let (u, at) = worst(UnaryOp::Log, &xs, f64::ln);
    assert!(u <= 2, "log: {u} ulps at {at}");
    let special = [0.0, -0.0, -1.0, f32::INFINITY, f32::NEG_INFINITY, f32::NAN];
    let got = jit(UnaryOp::Log, &special);
    for (x, y) in special.iter().zip(got) {
        let want = x.ln();
        assert!(ulps(y, want) == 0, "log({x}) = {y}, want {want}");
    }
}

#[test]
fn tanh_and_sigmoid_are_within_a_few_ulps() {
    let (u, at) = worst(UnaryOp::Tanh, &linspace(-12.0, 12.0, 200_003), f64::tanh);
    assert!(u <= 3, "tanh: {u} ulps at {at}");
    let (u, at) = worst(UnaryOp::Sigmoid, &linspace(-80.0, 30.0, 200_003), sigmoid);
    assert!(u <= 3, "sigmoid: {u} ulps at {at}");
    for (op, x, want) in [(UnaryOp::Tanh, f32::INFINITY, 1.0), (UnaryOp::Tanh, f32::NEG_INFINITY, -1.0), (UnaryOp::Sigmoid, f32::INFINITY, 1.0), (UnaryOp::Sigmoid, f32::NEG_INFINITY, 0.0)] {
        assert_eq!(jit(op, &[x])[0], want, "{op:?}({x})");
    }
    assert!(jit(UnaryOp::Tanh, &[f32::NAN])[0].is_nan());
}

/// Sigmoid and tanh scale their inner exponential with one power of two
/// instead of exp's two: the same values, bit for bit, as the formulas
/// written with the `exp` op, wherever those do not saturate.
#[test]
fn tanh_and_sigmoid_agree_bit_for_bit_with_their_formulas_on_exp() {
    let binary = |k: &mut LoopKernel, op, a, b| k.push(Inst::Binary { op, dtype: DType::F32, a, b });
    let constant = |k: &mut LoopKernel, value| k.push(Inst::Const { dtype: DType::F32, value });
    let xs = linspace(-87.3, 87.3, 200_003);
    let formula = jit_expr(&xs, |k, x| {
        let nx = k.push(Inst::Unary { op: UnaryOp::Neg, dtype: DType::F32, x });
        let e = k.push(Inst::Unary { op: UnaryOp::Exp, dtype: DType::F32, x: nx });
        let one = constant(k, 1.0);
        let d = binary(k, BinaryOp::Add, one, e);
        binary(k, BinaryOp::Div, one, d)
    });
    let got = jit(UnaryOp::Sigmoid, &xs);
    for ((x, a), b) in xs.iter().zip(&got).zip(&formula) {
        assert_eq!(a.to_bits(), b.to_bits(), "sigmoid({x}) = {a}, formula {b}");
    }
    // tanh's exponential branch (|x| >= 0.625): 1 - 2 / (e^{2x} + 1).
    let xs = linspace(0.625, 44.0, 200_003);
    let formula = jit_expr(&xs, |k, x| {
        let x2 = binary(k, BinaryOp::Add, x, x);
        let e = k.push(Inst::Unary { op: UnaryOp::Exp, dtype: DType::F32, x: x2 });
        let one = constant(k, 1.0);
        let two = constant(k, 2.0);
        let d = binary(k, BinaryOp::Add, e, one);
        let q = binary(k, BinaryOp::Div, two, d);
        binary(k, BinaryOp::Sub, one, q)
    });
    let got = jit(UnaryOp::Tanh, &xs);
    for ((x, a), b) in xs.iter().zip(&got).zip(&formula) {
        assert_eq!(a.to_bits(), b.to_bits(), "tanh({x}) = {a}, formula {b}");
    }
}
