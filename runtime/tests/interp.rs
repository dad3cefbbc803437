//! The reference interpreter against hand-computed values: every primitive,
//! its edge cases, the error paths, and parameter initialisation.

use std::collections::HashMap;

use d2l_ir::{BinaryOp, CmpOp, DType, Graph, Init, NodeId, PoolKind, RandDist, ReduceOp, Shape, UnaryOp};
use d2l_runtime::{Interpreter, RunError, Tensor, init_params};

fn sh(dims: &[usize]) -> Shape {
    Shape::new(dims.to_vec())
}

fn f32t(dims: &[usize], data: &[f32]) -> Tensor {
    Tensor::from_f32(dims, data.to_vec())
}

fn f64t(dims: &[usize], data: &[f64]) -> Tensor {
    Tensor::from_f64(dims, data.to_vec())
}

fn i64t(dims: &[usize], data: &[i64]) -> Tensor {
    Tensor::from_i64(dims, data.to_vec())
}

fn boolt(dims: &[usize], data: &[bool]) -> Tensor {
    Tensor::from_bool(dims, data.to_vec())
}

fn arange_f32(dims: &[usize]) -> Tensor {
    let n: usize = dims.iter().product();
    Tensor::from_f32(dims, (0..n).map(|i| i as f32).collect())
}

fn feeds(pairs: &[(&str, Tensor)]) -> HashMap<String, Tensor> {
    pairs.iter().map(|(n, t)| (n.to_string(), t.clone())).collect()
}

/// Evaluates `node` with `feeds` through `run` (after naming it the output).
fn eval(g: &mut Graph, node: NodeId, fed: &[(&str, Tensor)]) -> Tensor {
    try_eval(g, node, fed).unwrap_or_else(|e| panic!("evaluation failed: {e}"))
}

fn try_eval(g: &mut Graph, node: NodeId, fed: &[(&str, Tensor)]) -> Result<Tensor, RunError> {
    g.set_output("out", node);
    let mut out = Interpreter::new(0).run(g, &feeds(fed))?;
    assert_eq!(out.len(), 1);
    Ok(out.remove(0).1)
}

/// Same dims and every element within `tol` (absolute + relative).
#[track_caller]
fn assert_close(t: &Tensor, dims: &[usize], expected: &[f64], tol: f64) {
    assert_eq!(t.dims(), dims, "shape");
    let got = t.to_f64_vec();
    assert_eq!(got.len(), expected.len(), "element count");
    for (i, (&g, &e)) in got.iter().zip(expected).enumerate() {
        let ok = (g == e) || (g - e).abs() <= tol * (1.0 + e.abs());
        assert!(ok, "element {i}: got {g}, expected {e}\n got: {got:?}\nwant: {expected:?}");
    }
}

// ---------------------------------------------------------------- leaves

#[test]
fn full_in_every_dtype() {
    let mut g = Graph::new("t");
    let f = g.full(2.5, DType::F32, sh(&[2, 2]));
    assert_eq!(eval(&mut g, f, &[]), f32t(&[2, 2], &[2.5; 4]));
    let i = g.full(-3.7, DType::I64, sh(&[3]));
    assert_eq!(eval(&mut g, i, &[]), i64t(&[3], &[-3, -3, -3]));
    let b = g.full(1.0, DType::Bool, sh(&[]));
    assert_eq!(eval(&mut g, b, &[]), boolt(&[], &[true]));
    let d = g.full(f64::NEG_INFINITY, DType::F64, sh(&[1]));
    assert_eq!(eval(&mut g, d, &[]), f64t(&[1], &[f64::NEG_INFINITY]));
}

#[test]
fn iota_counts_along_its_axis() {
    let mut g = Graph::new("t");
    let a = g.iota(sh(&[2, 3]), 1, DType::I64).unwrap();
    assert_eq!(eval(&mut g, a, &[]), i64t(&[2, 3], &[0, 1, 2, 0, 1, 2]));
    let b = g.iota(sh(&[2, 3]), 0, DType::F32).unwrap();
    assert_eq!(eval(&mut g, b, &[]), f32t(&[2, 3], &[0., 0., 0., 1., 1., 1.]));
    let c = g.iota(sh(&[2, 2, 2]), 1, DType::F64).unwrap();
    assert_eq!(eval(&mut g, c, &[]), f64t(&[2, 2, 2], &[0., 0., 1., 1., 0., 0., 1., 1.]));
}

#[test]
fn inputs_and_params_come_from_feeds() {
    let mut g = Graph::new("t");
    let x = g.input("x", DType::F32, sh(&[2]));
    let w = g.param("w", DType::F32, sh(&[2]), Init::Zeros).unwrap();
    let y = g.binary(BinaryOp::Add, x, w).unwrap();
    let out = eval(&mut g, y, &[("x", f32t(&[2], &[1., 2.])), ("w", f32t(&[2], &[10., 20.]))]);
    assert_eq!(out, f32t(&[2], &[11., 22.]));
}

#[test]
fn transposed_feeds_are_read_in_logical_order() {
    let mut g = Graph::new("t");
    let x = g.input("x", DType::F32, sh(&[2, 3]));
    let y = g.reshape(x, sh(&[6])).unwrap();
    // Column-major storage of [[0, 1, 2], [3, 4, 5]].
    let Tensor::F32(a) = arange_f32(&[3, 2]) else { unreachable!() };
    let transposed = Tensor::F32(a.reversed_axes());
    let mut fed = feeds(&[]);
    fed.insert("x".into(), transposed);
    g.set_output("y", y);
    let out = Interpreter::new(0).run(&g, &fed).unwrap();
    assert_close(&out[0].1, &[6], &[0., 2., 4., 1., 3., 5.], 0.0);
}

#[test]
fn rand_is_fresh_each_run_and_reproducible_per_seed() {
    let mut g = Graph::new("t");
    let u = g.rand(RandDist::Uniform, DType::F32, sh(&[1000])).unwrap();
    let n = g.rand(RandDist::Normal, DType::F64, sh(&[20000])).unwrap();
    g.set_output("u", u);
    g.set_output("n", n);
    let mut interp = Interpreter::new(7);
    let first = interp.run(&g, &feeds(&[])).unwrap();
    let second = interp.run(&g, &feeds(&[])).unwrap();
    assert_ne!(first[0].1, second[0].1, "a second execution draws new numbers");
    let again = Interpreter::new(7).run(&g, &feeds(&[])).unwrap();
    assert_eq!(first[0].1, again[0].1, "same seed, same numbers");

    let u = first[0].1.to_f64_vec();
    assert!(u.iter().all(|&v| (0.0..1.0).contains(&v)));
    let mean_u = u.iter().sum::<f64>() / u.len() as f64;
    assert!((mean_u - 0.5).abs() < 0.05, "uniform mean {mean_u}");
    let z = first[1].1.to_f64_vec();
    let mean = z.iter().sum::<f64>() / z.len() as f64;
    let var = z.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / z.len() as f64;
    assert!(mean.abs() < 0.05 && (var - 1.0).abs() < 0.05, "normal mean {mean}, variance {var}");
}

// ---------------------------------------------------------------- elementwise

fn unary_f32(op: UnaryOp, data: &[f32]) -> Tensor {
    let mut g = Graph::new("t");
    let x = g.input("x", DType::F32, sh(&[data.len()]));
    let y = g.unary(op, x).unwrap();
    eval(&mut g, y, &[("x", f32t(&[data.len()], data))])
}

#[test]
fn unary_float_ops() {
    let t = 1e-6;
    assert_close(&unary_f32(UnaryOp::Neg, &[-1., 0., 2.5]), &[3], &[1., 0., -2.5], 0.0);
    assert_close(&unary_f32(UnaryOp::Exp, &[-1., 0., 1., 2.]), &[4], &[0.36787944, 1., 2.7182817, 7.389056], t);
    assert_close(&unary_f32(UnaryOp::Log, &[1., std::f32::consts::E, 0.25]), &[3], &[0., 1., -1.3862944], t);
    assert_close(&unary_f32(UnaryOp::Sqrt, &[4., 3., 0.25]), &[3], &[2., 1.7320508, 0.5], t);
    assert_close(&unary_f32(UnaryOp::Tanh, &[0., 1., -2.]), &[3], &[0., 0.7615942, -0.9640276], t);
    assert_close(&unary_f32(UnaryOp::Abs, &[-3., 0., 2.]), &[3], &[3., 0., 2.], 0.0);
    let half_pi = std::f32::consts::FRAC_PI_2;
    assert_close(&unary_f32(UnaryOp::Sin, &[0., half_pi, -half_pi]), &[3], &[0., 1., -1.], t);
    assert_close(&unary_f32(UnaryOp::Cos, &[0., std::f32::consts::PI]), &[2], &[1., -1.], t);
}

#[test]
fn sigmoid_is_stable_at_both_ends() {
    let s = unary_f32(UnaryOp::Sigmoid, &[0., 2., -2., 1000., -1000.]);
    assert_close(&s, &[5], &[0.5, 0.880797, 0.11920292, 1.0, 0.0], 1e-6);
    let mut g = Graph::new("t");
    let x = g.input("x", DType::F64, sh(&[3]));
    let y = g.unary(UnaryOp::Sigmoid, x).unwrap();
    let out = eval(&mut g, y, &[("x", f64t(&[3], &[-100., 100., -1.]))]);
    assert_close(&out, &[3], &[3.720075976020836e-44, 1.0, 0.2689414213699951], 1e-12);
}

#[test]
fn neg_and_abs_on_i64() {
    for (op, want) in [(UnaryOp::Neg, [3, 0, -5, i64::MIN]), (UnaryOp::Abs, [3, 0, 5, i64::MIN])] {
        let mut g = Graph::new("t");
        let x = g.input("x", DType::I64, sh(&[4]));
        let y = g.unary(op, x).unwrap();
        // i64::MIN wraps instead of panicking.
        assert_eq!(eval(&mut g, y, &[("x", i64t(&[4], &[-3, 0, 5, i64::MIN]))]), i64t(&[4], &want));
    }
}

fn binary(op: BinaryOp, a: Tensor, b: Tensor) -> Result<Tensor, RunError> {
    let mut g = Graph::new("t");
    let x = g.input("a", a.dtype(), a.shape());
    let y = g.input("b", b.dtype(), b.shape());
    let z = g.binary(op, x, y).unwrap();
    try_eval(&mut g, z, &[("a", a), ("b", b)])
}

#[test]
fn binary_float_ops() {
    let a = f32t(&[4], &[1., 2., 3., -4.]);
    let b = f32t(&[4], &[2., 2., -1., 0.5]);
    let cases = [
        (BinaryOp::Add, [3., 4., 2., -3.5]),
        (BinaryOp::Sub, [-1., 0., 4., -4.5]),
        (BinaryOp::Mul, [2., 4., -3., -2.]),
        (BinaryOp::Div, [0.5, 1., -3., -8.]),
        (BinaryOp::Max, [2., 2., 3., 0.5]),
        (BinaryOp::Min, [1., 2., -1., -4.]),
    ];
    for (op, want) in cases {
        assert_close(&binary(op, a.clone(), b.clone()).unwrap(), &[4], &want, 0.0);
        let (a64, b64) = (a.cast(DType::F64), b.cast(DType::F64));
        assert_close(&binary(op, a64, b64).unwrap(), &[4], &want, 0.0);
    }
    let p = binary(BinaryOp::Pow, f64t(&[3], &[2., 9., 4.]), f64t(&[3], &[3., 0.5, -1.])).unwrap();
    assert_close(&p, &[3], &[8., 3., 0.25], 1e-15);
}

#[test]
fn max_propagates_nan() {
    let out = binary(BinaryOp::Max, f32t(&[2], &[f32::NAN, 1.]), f32t(&[2], &[0., f32::NAN])).unwrap();
    assert!(out.to_f64_vec().iter().all(|v| v.is_nan()));
}

#[test]
fn i64_arithmetic_truncates_and_reports_division_by_zero() {
    let q = binary(BinaryOp::Div, i64t(&[4], &[7, -7, 7, -7]), i64t(&[4], &[2, 2, -2, -2])).unwrap();
    assert_eq!(q, i64t(&[4], &[3, -3, -3, 3]));
    let s = binary(BinaryOp::Sub, i64t(&[2], &[5, 1]), i64t(&[2], &[7, 1])).unwrap();
    assert_eq!(s, i64t(&[2], &[-2, 0]));
    let m = binary(BinaryOp::Max, i64t(&[2], &[5, -1]), i64t(&[2], &[7, -3])).unwrap();
    assert_eq!(m, i64t(&[2], &[7, -1]));
    let err = binary(BinaryOp::Div, i64t(&[2], &[1, 2]), i64t(&[2], &[1, 0])).unwrap_err();
    assert!(matches!(err, RunError::DivisionByZero { .. }));
    assert!(err.to_string().contains("div") && err.to_string().contains("division by zero"), "{err}");
}

#[test]
fn max_and_min_on_bool_are_or_and_and() {
    let a = boolt(&[4], &[true, true, false, false]);
    let b = boolt(&[4], &[true, false, true, false]);
    assert_eq!(binary(BinaryOp::Max, a.clone(), b.clone()).unwrap(), boolt(&[4], &[true, true, true, false]));
    assert_eq!(binary(BinaryOp::Min, a, b).unwrap(), boolt(&[4], &[true, false, false, false]));
}

#[test]
fn comparisons() {
    let cases = [
        (CmpOp::Eq, [false, true, false]),
        (CmpOp::Ne, [true, false, true]),
        (CmpOp::Lt, [true, false, false]),
        (CmpOp::Le, [true, true, false]),
        (CmpOp::Gt, [false, false, true]),
        (CmpOp::Ge, [false, true, true]),
    ];
    for (op, want) in cases {
        for (a, b) in [
            (f32t(&[3], &[1., 2., 3.]), f32t(&[3], &[2., 2., 2.])),
            (i64t(&[3], &[1, 2, 3]), i64t(&[3], &[2, 2, 2])),
        ] {
            let mut g = Graph::new("t");
            let x = g.input("a", a.dtype(), a.shape());
            let y = g.input("b", b.dtype(), b.shape());
            let c = g.compare(op, x, y).unwrap();
            assert_eq!(eval(&mut g, c, &[("a", a), ("b", b)]), boolt(&[3], &want), "{op:?}");
        }
    }
}

#[test]
fn select_picks_per_element() {
    let mut g = Graph::new("t");
    let c = g.input("c", DType::Bool, sh(&[3]));
    let a = g.input("a", DType::F32, sh(&[3]));
    let b = g.input("b", DType::F32, sh(&[3]));
    let s = g.select(c, a, b).unwrap();
    let fed = [
        ("c", boolt(&[3], &[true, false, true])),
        ("a", f32t(&[3], &[1., 2., 3.])),
        ("b", f32t(&[3], &[10., 20., 30.])),
    ];
    assert_eq!(eval(&mut g, s, &fed), f32t(&[3], &[1., 20., 3.]));
}

#[test]
fn casts() {
    let x = f32t(&[4], &[1.7, -1.7, 0., 2.5]);
    let mut g = Graph::new("t");
    let xi = g.input("x", DType::F32, sh(&[4]));
    let to_i = g.cast(xi, DType::I64);
    let to_b = g.cast(xi, DType::Bool);
    let to_d = g.cast(xi, DType::F64);
    g.set_output("i", to_i);
    g.set_output("b", to_b);
    g.set_output("d", to_d);
    let out = Interpreter::new(0).run(&g, &feeds(&[("x", x)])).unwrap();
    assert_eq!(out[0].1, i64t(&[4], &[1, -1, 0, 2]));
    assert_eq!(out[1].1, boolt(&[4], &[true, true, false, true]));
    assert_close(&out[2].1, &[4], &[1.7f32 as f64, -1.7f32 as f64, 0., 2.5], 0.0);

    let mut g = Graph::new("t");
    let b = g.input("b", DType::Bool, sh(&[2]));
    let bf = g.cast(b, DType::F32);
    assert_eq!(eval(&mut g, bf, &[("b", boolt(&[2], &[true, false]))]), f32t(&[2], &[1., 0.]));
    let mut g = Graph::new("t");
    let i = g.input("i", DType::I64, sh(&[1]));
    let f = g.cast(i, DType::F64);
    assert_eq!(eval(&mut g, f, &[("i", i64t(&[1], &[-5]))]), f64t(&[1], &[-5.]));
    // Out-of-range floats saturate and NaN becomes 0 (Rust `as`), never a panic.
    let mut g = Graph::new("t");
    let x = g.input("x", DType::F32, sh(&[3]));
    let i = g.cast(x, DType::I64);
    let out = eval(&mut g, i, &[("x", f32t(&[3], &[f32::NAN, 1e30, -1e30]))]);
    assert_eq!(out, i64t(&[3], &[0, i64::MAX, i64::MIN]));
}

// ---------------------------------------------------------------- reductions

#[test]
fn reduce_sum_and_max_keep_axes() {
    let x = arange_f32(&[2, 3]);
    let mut g = Graph::new("t");
    let xi = g.input("x", DType::F32, sh(&[2, 3]));
    let r1 = g.reduce(ReduceOp::Sum, xi, &[1]).unwrap();
    let r0 = g.reduce(ReduceOp::Sum, xi, &[0]).unwrap();
    let r01 = g.reduce(ReduceOp::Sum, xi, &[1, 0]).unwrap();
    let m1 = g.reduce(ReduceOp::Max, xi, &[1]).unwrap();
    let all = Interpreter::new(0).eval_nodes(&g, &feeds(&[("x", x)])).unwrap();
    assert_close(&all[r1.index()], &[2, 1], &[3., 12.], 0.0);
    assert_close(&all[r0.index()], &[1, 3], &[3., 5., 7.], 0.0);
    assert_close(&all[r01.index()], &[1, 1], &[15.], 0.0);
    assert_close(&all[m1.index()], &[2, 1], &[2., 5.], 0.0);

    // A middle axis of a rank-3 tensor.
    let mut g = Graph::new("t");
    let xi = g.input("x", DType::F32, sh(&[2, 3, 4]));
    let r = g.reduce(ReduceOp::Sum, xi, &[1]).unwrap();
    let out = eval(&mut g, r, &[("x", arange_f32(&[2, 3, 4]))]);
    assert_close(&out, &[2, 1, 4], &[12., 15., 18., 21., 48., 51., 54., 57.], 0.0);

    let mut g = Graph::new("t");
    let xi = g.input("x", DType::F64, sh(&[2, 3]));
    let m = g.reduce(ReduceOp::Max, xi, &[0]).unwrap();
    let out = eval(&mut g, m, &[("x", f64t(&[2, 3], &[1., -5., 2., -3., -1., -2.]))]);
    assert_close(&out, &[1, 3], &[1., -1., 2.], 0.0);

    // A lane longer than the 8-way unrolled sum, with a remainder: 0+..+18 = 171.
    let mut g = Graph::new("t");
    let xi = g.input("x", DType::I64, sh(&[19]));
    let s = g.reduce(ReduceOp::Sum, xi, &[0]).unwrap();
    assert_eq!(eval(&mut g, s, &[("x", i64t(&[19], &(0..19).collect::<Vec<_>>()))]), i64t(&[1], &[171]));
}

#[test]
fn argmax_takes_the_first_on_ties() {
    let x = f32t(&[3, 3], &[1., 3., 3., 2., 2., 1., 0., -1., 5.]);
    let mut g = Graph::new("t");
    let xi = g.input("x", DType::F32, sh(&[3, 3]));
    let a1 = g.argmax(xi, 1).unwrap();
    let a0 = g.argmax(xi, 0).unwrap();
    let all = Interpreter::new(0).eval_nodes(&g, &feeds(&[("x", x)])).unwrap();
    assert_eq!(all[a1.index()], i64t(&[3, 1], &[1, 0, 2]));
    assert_eq!(all[a0.index()], i64t(&[1, 3], &[1, 0, 2]));
}

// ---------------------------------------------------------------- layout

#[test]
fn reshape_is_row_major() {
    let mut g = Graph::new("t");
    let x = g.input("x", DType::F32, sh(&[2, 3]));
    let y = g.reshape(x, sh(&[3, 2])).unwrap();
    let out = eval(&mut g, y, &[("x", arange_f32(&[2, 3]))]);
    assert_eq!(out, arange_f32(&[3, 2]));
}

#[test]
fn permute_moves_axes() {
    let mut g = Graph::new("t");
    let x = g.input("x", DType::F32, sh(&[2, 3, 4]));
    let y = g.permute(x, &[2, 0, 1]).unwrap();
    let out = eval(&mut g, y, &[("x", arange_f32(&[2, 3, 4]))]);
    let want = [0., 4., 8., 12., 16., 20., 1., 5., 9., 13., 17., 21., 2., 6., 10., 14., 18., 22., 3., 7., 11., 15., 19., 23.];
    assert_close(&out, &[4, 2, 3], &want, 0.0);

    let mut g = Graph::new("t");
    let x = g.input("x", DType::I64, sh(&[2, 3]));
    let y = g.permute(x, &[1, 0]).unwrap();
    let out = eval(&mut g, y, &[("x", i64t(&[2, 3], &[1, 2, 3, 4, 5, 6]))]);
    assert_eq!(out, i64t(&[3, 2], &[1, 4, 2, 5, 3, 6]));
}

fn broadcast(x: Tensor, to: &[usize]) -> Tensor {
    let mut g = Graph::new("t");
    let xi = g.input("x", x.dtype(), x.shape());
    let y = g.broadcast(xi, sh(to)).unwrap();
    eval(&mut g, y, &[("x", x)])
}

#[test]
fn broadcast_follows_numpy() {
    // Rank 0 to anything.
    assert_eq!(broadcast(f32t(&[], &[7.]), &[2, 3]), f32t(&[2, 3], &[7.; 6]));
    // New leading axis.
    assert_eq!(broadcast(f32t(&[3], &[1., 2., 3.]), &[2, 3]), f32t(&[2, 3], &[1., 2., 3., 1., 2., 3.]));
    // Size-1 trailing axis.
    assert_eq!(broadcast(f32t(&[2, 1], &[1., 2.]), &[2, 3]), f32t(&[2, 3], &[1., 1., 1., 2., 2., 2.]));
    // Both at once, on bool.
    let b = broadcast(boolt(&[3, 1], &[true, false, true]), &[2, 3, 2]);
    let t = true;
    let f = false;
    assert_eq!(b, boolt(&[2, 3, 2], &[t, t, f, f, t, t, t, t, f, f, t, t]));
    // Size-1 middle axis of a rank-4 tensor (a conv bias).
    let out = broadcast(f32t(&[1, 2, 1, 1], &[1., 2.]), &[2, 2, 1, 3]);
    assert_eq!(out, f32t(&[2, 2, 1, 3], &[1., 1., 1., 2., 2., 2., 1., 1., 1., 2., 2., 2.]));
}

#[test]
fn slice_with_steps() {
    let mut g = Graph::new("t");
    let x = g.input("x", DType::F32, sh(&[10]));
    let y = g.slice(x, &[1], &[8], &[3]).unwrap();
    assert_eq!(eval(&mut g, y, &[("x", arange_f32(&[10]))]), f32t(&[3], &[1., 4., 7.]));

    let mut g = Graph::new("t");
    let x = g.input("x", DType::F32, sh(&[3, 4]));
    let y = g.slice(x, &[0, 1], &[3, 4], &[2, 2]).unwrap();
    assert_eq!(eval(&mut g, y, &[("x", arange_f32(&[3, 4]))]), f32t(&[2, 2], &[1., 3., 9., 11.]));

    let mut g = Graph::new("t");
    let x = g.input("x", DType::I64, sh(&[2, 3]));
    let y = g.slice(x, &[1, 0], &[2, 2], &[1, 1]).unwrap();
    assert_eq!(eval(&mut g, y, &[("x", i64t(&[2, 3], &[1, 2, 3, 4, 5, 6]))]), i64t(&[1, 2], &[4, 5]));
}

#[test]
fn pad_with_interior() {
    let mut g = Graph::new("t");
    let x = g.input("x", DType::F32, sh(&[3]));
    let y = g.pad(x, &[1], &[2], &[1], 0.0).unwrap();
    let out = eval(&mut g, y, &[("x", f32t(&[3], &[1., 2., 3.]))]);
    assert_eq!(out, f32t(&[8], &[0., 1., 0., 2., 0., 3., 0., 0.]));

    let mut g = Graph::new("t");
    let x = g.input("x", DType::F32, sh(&[2, 2]));
    let y = g.pad(x, &[1, 0], &[0, 1], &[1, 1], -1.0).unwrap();
    let out = eval(&mut g, y, &[("x", f32t(&[2, 2], &[1., 2., 3., 4.]))]);
    #[rustfmt::skip]
    let want = [
        -1., -1., -1., -1.,
         1., -1.,  2., -1.,
        -1., -1., -1., -1.,
         3., -1.,  4., -1.,
    ];
    assert_close(&out, &[4, 4], &want, 0.0);
}

#[test]
fn concat_of_three() {
    let mut g = Graph::new("t");
    let a = g.input("a", DType::F32, sh(&[2, 1]));
    let b = g.input("b", DType::F32, sh(&[2, 2]));
    let c = g.input("c", DType::F32, sh(&[2, 1]));
    let y = g.concat(&[a, b, c], 1).unwrap();
    let fed = [("a", f32t(&[2, 1], &[1., 2.])), ("b", f32t(&[2, 2], &[3., 4., 5., 6.])), ("c", f32t(&[2, 1], &[7., 8.]))];
    assert_eq!(eval(&mut g, y, &fed), f32t(&[2, 4], &[1., 3., 4., 7., 2., 5., 6., 8.]));

    let mut g = Graph::new("t");
    let a = g.input("a", DType::I64, sh(&[1, 2]));
    let b = g.input("b", DType::I64, sh(&[2, 2]));
    let y = g.concat(&[a, b, a], 0).unwrap();
    let fed = [("a", i64t(&[1, 2], &[1, 2])), ("b", i64t(&[2, 2], &[3, 4, 5, 6]))];
    assert_eq!(eval(&mut g, y, &fed), i64t(&[4, 2], &[1, 2, 3, 4, 5, 6, 1, 2]));
}

#[test]
fn stop_gradient_is_identity() {
    let mut g = Graph::new("t");
    let x = g.input("x", DType::F32, sh(&[2]));
    let y = g.stop_gradient(x);
    assert_eq!(eval(&mut g, y, &[("x", f32t(&[2], &[1., -2.]))]), f32t(&[2], &[1., -2.]));
}

// ---------------------------------------------------------------- linear algebra

#[test]
fn matmul_2d_and_batched() {
    let mut g = Graph::new("t");
    let a = g.input("a", DType::F32, sh(&[2, 3]));
    let b = g.input("b", DType::F32, sh(&[3, 2]));
    let c = g.matmul(a, b).unwrap();
    let fed = [("a", f32t(&[2, 3], &[1., 2., 3., 4., 5., 6.])), ("b", f32t(&[3, 2], &[7., 8., 9., 10., 11., 12.]))];
    assert_eq!(eval(&mut g, c, &fed), f32t(&[2, 2], &[58., 64., 139., 154.]));

    let mut g = Graph::new("t");
    let a = g.input("a", DType::F64, sh(&[2, 2, 2]));
    let b = g.input("b", DType::F64, sh(&[2, 2, 1]));
    let c = g.matmul(a, b).unwrap();
    let fed = [("a", f64t(&[2, 2, 2], &[1., 2., 3., 4., 5., 6., 7., 8.])), ("b", f64t(&[2, 2, 1], &[1., 1., 1., 2.]))];
    assert_eq!(eval(&mut g, c, &fed), f64t(&[2, 2, 1], &[3., 7., 17., 23.]));
}

#[test]
fn matmul_matches_a_naive_triple_loop() {
    // Sizes that are not multiples of any GEMM kernel's tile.
    let (m, k, n) = (33, 47, 29);
    let a: Vec<f64> = (0..m * k).map(|i| ((i * 7) % 13) as f64 - 6.0).collect();
    let b: Vec<f64> = (0..k * n).map(|i| ((i * 5) % 11) as f64 * 0.5 - 2.0).collect();
    let mut want = vec![0.0; m * n];
    for i in 0..m {
        for j in 0..n {
            want[i * n + j] = (0..k).map(|p| a[i * k + p] * b[p * n + j]).sum();
        }
    }
    let mut g = Graph::new("t");
    let x = g.input("a", DType::F64, sh(&[m, k]));
    let y = g.input("b", DType::F64, sh(&[k, n]));
    let c = g.matmul(x, y).unwrap();
    let out = eval(&mut g, c, &[("a", f64t(&[m, k], &a)), ("b", f64t(&[k, n], &b))]);
    assert_close(&out, &[m, n], &want, 1e-12);
}

#[test]
fn conv2d_stride_2_by_hand() {
    let mut g = Graph::new("t");
    let x = g.input("x", DType::F32, sh(&[1, 1, 4, 4]));
    let w = g.input("w", DType::F32, sh(&[1, 1, 2, 2]));
    let y = g.conv2d(x, w, [2, 2]).unwrap();
    let out = eval(&mut g, y, &[("x", arange_f32(&[1, 1, 4, 4])), ("w", f32t(&[1, 1, 2, 2], &[1., 2., 3., 4.]))]);
    // (0,0): 0*1 + 1*2 + 4*3 + 5*4 = 34, (0,1): 2 + 6 + 18 + 28 = 54, ...
    assert_eq!(out, f32t(&[1, 1, 2, 2], &[34., 54., 114., 134.]));
}

#[test]
fn conv2d_sums_over_channels_per_output_channel() {
    let mut g = Graph::new("t");
    let x = g.input("x", DType::F64, sh(&[1, 2, 2, 2]));
    let w = g.input("w", DType::F64, sh(&[2, 2, 2, 2]));
    let y = g.conv2d(x, w, [1, 1]).unwrap();
    let kernel = [1., 1., 1., 1., 1., 1., 1., 1., 1., 1., 1., 1., -1., -1., -1., -1.];
    let out = eval(&mut g, y, &[("x", f64t(&[1, 2, 2, 2], &[1., 2., 3., 4., 5., 6., 7., 8.])), ("w", f64t(&[2, 2, 2, 2], &kernel))]);
    // Output 0 sums everything (36); output 1 is channel 0 minus channel 1 (10 - 26).
    assert_eq!(out, f64t(&[1, 2, 1, 1], &[36., -16.]));
}

#[test]
fn conv2d_matches_a_naive_loop() {
    let (n, c, h, w, o, kh, kw, sy, sx) = (3, 2, 7, 6, 4, 3, 2, 2, 1);
    let (ho, wo) = ((h - kh) / sy + 1, (w - kw) / sx + 1);
    let xs: Vec<f64> = (0..n * c * h * w).map(|i| ((i * 7) % 17) as f64 - 8.0).collect();
    let ws: Vec<f64> = (0..o * c * kh * kw).map(|i| ((i * 3) % 5) as f64 - 2.0).collect();
    let mut want = vec![0.0; n * o * ho * wo];
    for b in 0..n {
        for oc in 0..o {
            for oy in 0..ho {
                for ox in 0..wo {
                    let mut s = 0.0;
                    for ch in 0..c {
                        for ki in 0..kh {
                            for kj in 0..kw {
                                s += xs[((b * c + ch) * h + oy * sy + ki) * w + ox * sx + kj] * ws[((oc * c + ch) * kh + ki) * kw + kj];
                            }
                        }
                    }
                    want[((b * o + oc) * ho + oy) * wo + ox] = s;
                }
            }
        }
    }
    let mut g = Graph::new("t");
    let x = g.input("x", DType::F64, sh(&[n, c, h, w]));
    let k = g.input("k", DType::F64, sh(&[o, c, kh, kw]));
    let y = g.conv2d(x, k, [sy, sx]).unwrap();
    let out = eval(&mut g, y, &[("x", f64t(&[n, c, h, w], &xs)), ("k", f64t(&[o, c, kh, kw], &ws))]);
    assert_close(&out, &[n, o, ho, wo], &want, 1e-12);
}

#[test]
fn max_and_avg_pool() {
    let mut g = Graph::new("t");
    let x = g.input("x", DType::F32, sh(&[1, 1, 4, 4]));
    let mx = g.pool2d(PoolKind::Max, x, [2, 2], [2, 2]).unwrap();
    let av = g.pool2d(PoolKind::Avg, x, [2, 2], [2, 2]).unwrap();
    let ov = g.pool2d(PoolKind::Max, x, [3, 3], [1, 1]).unwrap();
    let all = Interpreter::new(0).eval_nodes(&g, &feeds(&[("x", arange_f32(&[1, 1, 4, 4]))])).unwrap();
    assert_eq!(all[mx.index()], f32t(&[1, 1, 2, 2], &[5., 7., 13., 15.]));
    assert_eq!(all[av.index()], f32t(&[1, 1, 2, 2], &[2.5, 4.5, 10.5, 12.5]));
    assert_eq!(all[ov.index()], f32t(&[1, 1, 2, 2], &[10., 11., 14., 15.]));
}

#[test]
fn max_pool_3_stride_2_over_minus_infinity_padding() {
    // The course's check: arange(16).reshape(1, 1, 4, 4), padding 1, window 3, stride 2.
    let mut g = Graph::new("t");
    let x = g.input("x", DType::F32, sh(&[1, 1, 4, 4]));
    let p = g.pad(x, &[0, 0, 1, 1], &[0, 0, 1, 1], &[0, 0, 0, 0], f64::NEG_INFINITY).unwrap();
    let y = g.pool2d(PoolKind::Max, p, [3, 3], [2, 2]).unwrap();
    let out = eval(&mut g, y, &[("x", arange_f32(&[1, 1, 4, 4]))]);
    assert_eq!(out, f32t(&[1, 1, 2, 2], &[5., 7., 13., 15.]));
}

#[test]
fn avg_pool_in_f64_over_two_channels() {
    let mut g = Graph::new("t");
    let x = g.input("x", DType::F64, sh(&[1, 2, 2, 3]));
    let y = g.pool2d(PoolKind::Avg, x, [2, 2], [1, 1]).unwrap();
    let data: Vec<f64> = (0..12).map(f64::from).collect();
    let out = eval(&mut g, y, &[("x", f64t(&[1, 2, 2, 3], &data))]);
    // Channel 0 windows: (0+1+3+4)/4, (1+2+4+5)/4; channel 1 adds 6 to each.
    assert_eq!(out, f64t(&[1, 2, 1, 2], &[2., 3., 8., 9.]));
}

// ---------------------------------------------------------------- indexing

#[test]
fn gather_rows_and_columns() {
    let mut g = Graph::new("t");
    let x = g.input("x", DType::F32, sh(&[3, 2]));
    let i = g.input("i", DType::I64, sh(&[3]));
    let y = g.gather(x, i, 0).unwrap();
    let fed = [("x", f32t(&[3, 2], &[1., 2., 3., 4., 5., 6.])), ("i", i64t(&[3], &[2, 0, 2]))];
    assert_eq!(eval(&mut g, y, &fed), f32t(&[3, 2], &[5., 6., 1., 2., 5., 6.]));

    // Along axis 1 with a rank-2 index: out[o, i, j] = x[o, idx[i, j]].
    let mut g = Graph::new("t");
    let x = g.input("x", DType::I64, sh(&[2, 3]));
    let i = g.input("i", DType::I64, sh(&[2, 2]));
    let y = g.gather(x, i, 1).unwrap();
    let fed = [("x", i64t(&[2, 3], &[1, 2, 3, 4, 5, 6])), ("i", i64t(&[2, 2], &[2, 0, 1, 1]))];
    assert_eq!(eval(&mut g, y, &fed), i64t(&[2, 2, 2], &[3, 1, 2, 2, 6, 4, 5, 5]));
}

#[test]
fn scatter_add_accumulates_repeated_indices() {
    let mut g = Graph::new("t");
    let i = g.input("i", DType::I64, sh(&[3]));
    let u = g.input("u", DType::F32, sh(&[3, 2]));
    let y = g.scatter_add(i, u, sh(&[3, 2]), 0).unwrap();
    let fed = [("i", i64t(&[3], &[2, 0, 2])), ("u", f32t(&[3, 2], &[1., 1., 2., 2., 3., 3.]))];
    assert_eq!(eval(&mut g, y, &fed), f32t(&[3, 2], &[2., 2., 0., 0., 4., 4.]));
}

#[test]
fn scatter_add_is_the_transpose_of_gather() {
    // <gather(x, idx), u> == <x, scatter_add(idx, u)> for all x, u.
    let mut g = Graph::new("t");
    let x = g.input("x", DType::F64, sh(&[2, 3]));
    let i = g.input("i", DType::I64, sh(&[4]));
    let u = g.input("u", DType::F64, sh(&[2, 4]));
    let gx = g.gather(x, i, 1).unwrap();
    let su = g.scatter_add(i, u, sh(&[2, 3]), 1).unwrap();
    let xs = [1., -2., 3., 0.5, 4., -1.];
    let us = [2., 1., -1., 3., 0., 5., 2., -2.];
    let fed = feeds(&[("x", f64t(&[2, 3], &xs)), ("i", i64t(&[4], &[1, 1, 0, 2])), ("u", f64t(&[2, 4], &us))]);
    let all = Interpreter::new(0).eval_nodes(&g, &fed).unwrap();
    // gather: row 0 -> [-2, -2, 1, 3], row 1 -> [4, 4, 0.5, -1]
    assert_eq!(all[gx.index()], f64t(&[2, 4], &[-2., -2., 1., 3., 4., 4., 0.5, -1.]));
    // scatter: row 0 -> [-1, 2+1, 3], row 1 -> [2, 0+5, -2]
    assert_eq!(all[su.index()], f64t(&[2, 3], &[-1., 3., 3., 2., 5., -2.]));
    let dot = |a: &Tensor, b: &[f64]| a.to_f64_vec().iter().zip(b).map(|(p, q)| p * q).sum::<f64>();
    // Both sides are -4 - 2 - 1 + 9 + 0 + 20 + 1 + 2 = 25.
    assert_eq!(dot(&all[gx.index()], &us), 25.0);
    assert_eq!(dot(&all[su.index()], &xs), 25.0);
}

// ---------------------------------------------------------------- errors

#[test]
fn missing_feed_names_the_input_and_its_type() {
    let mut g = Graph::new("t");
    let x = g.input("pixels", DType::F32, sh(&[2, 3]));
    let y = g.unary(UnaryOp::Exp, x).unwrap();
    let err = try_eval(&mut g, y, &[]).unwrap_err();
    assert!(matches!(err, RunError::MissingFeed { .. }));
    assert_eq!(err.to_string(), "missing feed for input `pixels`: expected a tensor of type f32[2, 3]");

    let mut g = Graph::new("t");
    let w = g.param("layer.W", DType::F64, sh(&[4]), Init::Zeros).unwrap();
    let err = try_eval(&mut g, w, &[]).unwrap_err();
    assert_eq!(err.to_string(), "missing feed for parameter `layer.W`: expected a tensor of type f64[4]");
}

#[test]
fn wrong_feed_shape_or_dtype_is_reported() {
    let mut g = Graph::new("t");
    let x = g.input("x", DType::F32, sh(&[2, 3]));
    let y = g.unary(UnaryOp::Exp, x).unwrap();
    let err = try_eval(&mut g, y, &[("x", arange_f32(&[3, 2]))]).unwrap_err();
    assert!(matches!(err, RunError::FeedMismatch { .. }));
    assert_eq!(err.to_string(), "feed `x` has the wrong type: expected f32[2, 3], got f32[3, 2]");
    let err = try_eval(&mut g, y, &[("x", f64t(&[2, 3], &[0.; 6]))]).unwrap_err();
    assert_eq!(err.to_string(), "feed `x` has the wrong type: expected f32[2, 3], got f64[2, 3]");
}

#[test]
fn gather_index_out_of_range_is_an_error() {
    for bad in [3, -1] {
        let mut g = Graph::new("t");
        let x = g.input("x", DType::F32, sh(&[3, 2]));
        let i = g.input("i", DType::I64, sh(&[2]));
        let y = g.gather(x, i, 0).unwrap();
        let err = try_eval(&mut g, y, &[("x", arange_f32(&[3, 2])), ("i", i64t(&[2], &[0, bad]))]).unwrap_err();
        assert!(matches!(err, RunError::IndexOutOfRange { index, size: 3, .. } if index == bad));
        let msg = err.to_string();
        assert!(msg.contains("gather"), "{msg}");
        assert!(msg.contains(&format!("index {bad} is out of range for an axis of size 3")), "{msg}");
    }
    let mut g = Graph::new("t");
    let i = g.input("i", DType::I64, sh(&[1]));
    let u = g.input("u", DType::F32, sh(&[1]));
    let y = g.scatter_add(i, u, sh(&[2]), 0).unwrap();
    let err = try_eval(&mut g, y, &[("i", i64t(&[1], &[2])), ("u", f32t(&[1], &[1.]))]).unwrap_err();
    assert!(err.to_string().contains("scatter_add") && err.to_string().contains("index 2"), "{err}");
}

// ---------------------------------------------------------------- run vs eval_nodes

#[test]
fn rank_0_tensors() {
    let mut g = Graph::new("t");
    let x = g.input("x", DType::F32, sh(&[]));
    let y = g.unary(UnaryOp::Neg, x).unwrap();
    let s = g.reduce(ReduceOp::Sum, y, &[]).unwrap();
    let r = g.reshape(s, sh(&[1, 1])).unwrap();
    assert_eq!(eval(&mut g, r, &[("x", f32t(&[], &[3.]))]), f32t(&[1, 1], &[-3.]));
}

#[test]
fn run_agrees_with_eval_nodes() {
    // A small MLP-like chain exercising the buffer hand-over of reshape.
    let mut g = Graph::new("t");
    let x = g.input("x", DType::F32, sh(&[2, 1, 2, 2]));
    let w = g.param("w", DType::F32, sh(&[4, 3]), Init::Zeros).unwrap();
    let flat = g.reshape(x, sh(&[2, 4])).unwrap();
    let h = g.matmul(flat, w).unwrap();
    let t = g.unary(UnaryOp::Tanh, h).unwrap();
    let out = g.reshape(t, sh(&[6])).unwrap();
    g.set_output("out", out);
    let xs: Vec<f32> = (0..8).map(|i| i as f32 * 0.1).collect();
    let ws: Vec<f32> = (0..12).map(|i| (i as f32 - 6.0) * 0.05).collect();
    let fed = feeds(&[("x", f32t(&[2, 1, 2, 2], &xs)), ("w", f32t(&[4, 3], &ws))]);
    let all = Interpreter::new(0).eval_nodes(&g, &fed).unwrap();
    let ran = Interpreter::new(0).run(&g, &fed).unwrap();
    assert_eq!(all.len(), g.len());
    assert_eq!(ran[0].1, all[out.index()]);
    // Row 0 of x @ w: [0, .1, .2, .3] . columns of w.
    let h0: Vec<f64> = (0..3)
        .map(|j| (0..4).map(|k| xs[k] as f64 * ws[k * 3 + j] as f64).sum::<f64>().tanh())
        .collect();
    assert_close(&Tensor::from_f64(&[3], ran[0].1.to_f64_vec()[..3].to_vec()), &[3], &h0, 1e-6);
}

#[test]
fn run_evaluates_only_what_outputs_need() {
    let mut g = Graph::new("t");
    let x = g.input("x", DType::F32, sh(&[2, 2]));
    let unused = g.input("unused", DType::F32, sh(&[1]));
    let _dead = g.unary(UnaryOp::Exp, unused).unwrap();
    let flat = g.reshape(x, sh(&[4])).unwrap();
    let doubled = g.binary(BinaryOp::Add, flat, flat).unwrap();
    let back = g.reshape(doubled, sh(&[2, 2])).unwrap();
    let s = g.reduce(ReduceOp::Sum, back, &[0, 1]).unwrap();
    g.set_output("sum", s);
    g.set_output("flat", flat);
    g.set_output("again", s);
    let fed = feeds(&[("x", f32t(&[2, 2], &[1., 2., 3., 4.]))]);
    let out = Interpreter::new(0).run(&g, &fed).unwrap();
    let names: Vec<&str> = out.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["sum", "flat", "again"]);
    assert_eq!(out[0].1, f32t(&[1, 1], &[20.]));
    assert_eq!(out[1].1, f32t(&[4], &[1., 2., 3., 4.]));
    assert_eq!(out[2].1, f32t(&[1, 1], &[20.]));
    // eval_nodes evaluates everything, so it needs every feed.
    let err = Interpreter::new(0).eval_nodes(&g, &fed).unwrap_err();
    assert!(matches!(err, RunError::MissingFeed { ref name, .. } if name == "unused"));
}

// ---------------------------------------------------------------- params

fn param_graph(dtype: DType) -> Graph {
    let mut g = Graph::new("p");
    g.param("w1", dtype, sh(&[784, 256]), Init::XavierUniform).unwrap();
    g.param("b1", dtype, sh(&[256]), Init::Zeros).unwrap();
    g.param("k", dtype, sh(&[6, 1, 5, 5]), Init::XavierNormal).unwrap();
    g.param("n", dtype, sh(&[100, 100]), Init::Normal { mean: 1.0, std: 0.01 }).unwrap();
    g.param("u", dtype, sh(&[1000]), Init::Uniform { low: -2.0, high: 3.0 }).unwrap();
    g.param("c", dtype, sh(&[2]), Init::Constant(0.25)).unwrap();
    g.param("o", dtype, sh(&[]), Init::Ones).unwrap();
    g
}

#[test]
fn init_params_is_deterministic_per_seed() {
    let g = param_graph(DType::F32);
    let a = init_params(&g, 42);
    let b = init_params(&g, 42);
    let c = init_params(&g, 43);
    assert_eq!(a.len(), 7);
    assert_eq!(a, b);
    assert_ne!(a["w1"], c["w1"]);
    assert_eq!(a["b1"], Tensor::zeros(DType::F32, &[256]));
    assert_eq!(a["c"], f32t(&[2], &[0.25, 0.25]));
    assert_eq!(a["o"], f32t(&[], &[1.0]));
    // The f64 promotion of the graph starts from the same values.
    let d = init_params(&param_graph(DType::F64), 42);
    assert_eq!(d["w1"].dtype(), DType::F64);
    assert_eq!(d["w1"].cast(DType::F32), a["w1"]);
}

#[test]
fn initializers_respect_their_distributions() {
    let p = init_params(&param_graph(DType::F64), 1);
    // Xavier uniform on [784, 256]: a = sqrt(6 / (784 + 256)) = 0.0759554...
    let bound = 0.07595545_f64;
    let w = p["w1"].to_f64_vec();
    assert!(w.iter().all(|v| v.abs() <= bound), "all within the bound");
    assert!(w.iter().any(|&v| v > 0.99 * bound) && w.iter().any(|&v| v < -0.99 * bound), "and filling it");
    let stats = |v: &[f64]| {
        let mean = v.iter().sum::<f64>() / v.len() as f64;
        (mean, (v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / v.len() as f64).sqrt())
    };
    // Xavier normal on a [6, 1, 5, 5] kernel: fans 25 and 150, std = sqrt(2 / 175) = 0.1069.
    let (mean, std) = stats(&p["k"].to_f64_vec());
    assert!(mean.abs() < 0.03 && (std - 0.1069).abs() < 0.02, "{mean} {std}");
    let (mean, std) = stats(&p["n"].to_f64_vec());
    assert!((mean - 1.0).abs() < 0.001 && (std - 0.01).abs() < 0.001, "{mean} {std}");
    let u = p["u"].to_f64_vec();
    assert!(u.iter().all(|&v| (-2.0..3.0).contains(&v)));
}
