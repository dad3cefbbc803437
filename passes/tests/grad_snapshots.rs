//! The gradient graphs of a few small models, after `simplify`, in the
//! stable text form `d2l ir --stage grad` prints. Each snapshot was read and
//! checked by hand; the comments say what to look for.

use d2l_ir::{BinaryOp, DType, Graph, Init, PoolKind, ReduceOp, Shape, UnaryOp, text};
use d2l_passes::{DiffOptions, differentiate_params, simplify};

fn shape(dims: &[usize]) -> Shape {
    Shape(dims.to_vec())
}

fn grad_text(g: &Graph) -> String {
    let grads = differentiate_params(g, "loss", &DiffOptions::default()).unwrap();
    text::print(&simplify(&grads.graph), false)
}

/// mean((x @ W + b - y)²) as a [] scalar.
fn mse_linear() -> Graph {
    let mut g = Graph::new("mse_linear");
    let x = g.input("x", DType::F32, shape(&[4, 3]));
    let y = g.input("y", DType::F32, shape(&[4, 2]));
    let w = g.param("W", DType::F32, shape(&[3, 2]), Init::XavierUniform).unwrap();
    let b = g.param("b", DType::F32, shape(&[2]), Init::Zeros).unwrap();
    let xw = g.matmul(x, w).unwrap();
    let b = g.broadcast(b, shape(&[4, 2])).unwrap();
    let pred = g.binary(BinaryOp::Add, xw, b).unwrap();
    let err = g.binary(BinaryOp::Sub, pred, y).unwrap();
    let sq = g.binary(BinaryOp::Mul, err, err).unwrap();
    let total = g.reduce(ReduceOp::Sum, sq, &[0, 1]).unwrap();
    let total = g.reshape(total, Shape::scalar()).unwrap();
    let scale = g.full(1.0 / 8.0, DType::F32, Shape::scalar());
    let loss = g.binary(BinaryOp::Mul, total, scale).unwrap();
    g.set_output("loss", loss);
    g
}

#[test]
fn mse_of_a_linear_layer() {
    // d loss/d pred = 2·err/8, built as (0.125·1 broadcast)·err twice and
    // added (err is used twice by the square): %15 = %14 + %14 after CSE.
    // grad.W = xᵀ @ dpred (a matmul on a permute), grad.b = column sums.
    insta::assert_snapshot!(grad_text(&mse_linear()), @r#"
    graph mse_linear
      %0: f32[4, 3] = input "x"
      %1: f32[4, 2] = input "y"
      %2: f32[3, 2] = param "W" init=xavier_uniform
      %3: f32[2] = param "b" init=zeros
      %4: f32[4, 2] = matmul %0, %2
      %5: f32[4, 2] = broadcast %3
      %6: f32[4, 2] = add %4, %5
      %7: f32[4, 2] = sub %6, %1
      %8: f32[4, 2] = mul %7, %7
      %9: f32[1, 1] = reduce_sum %8 axes=[0, 1]
      %10: f32[] = reshape %9
      %11: f32[] = full 0.125
      %12: f32[] = mul %10, %11
      %13: f32[4, 2] = full 0.125
      %14: f32[4, 2] = mul %13, %7
      %15: f32[4, 2] = add %14, %14
      %16: f32[1, 2] = reduce_sum %15 axes=[0]
      %17: f32[2] = reshape %16
      %18: f32[3, 4] = permute %0 perm=[1, 0]
      %19: f32[3, 2] = matmul %18, %15
      output loss = %12
      output grad.W = %19
      output grad.b = %17
    "#);
}

/// Mean softmax cross-entropy of `x @ W` against one-hot labels, with a
/// numerically stable log-sum-exp whose shift is detached.
fn softmax_cross_entropy() -> Graph {
    let mut g = Graph::new("softmax_ce");
    let x = g.input("x", DType::F32, shape(&[2, 4]));
    let onehot = g.input("onehot", DType::F32, shape(&[2, 3]));
    let w = g.param("W", DType::F32, shape(&[4, 3]), Init::Normal { mean: 0.0, std: 0.01 }).unwrap();
    let logits = g.matmul(x, w).unwrap();
    let max = g.reduce(ReduceOp::Max, logits, &[1]).unwrap();
    let max = g.stop_gradient(max);
    let max_b = g.broadcast(max, shape(&[2, 3])).unwrap();
    let shifted = g.binary(BinaryOp::Sub, logits, max_b).unwrap();
    let e = g.unary(UnaryOp::Exp, shifted).unwrap();
    let s = g.reduce(ReduceOp::Sum, e, &[1]).unwrap();
    let lse = g.unary(UnaryOp::Log, s).unwrap();
    let lse = g.binary(BinaryOp::Add, lse, max).unwrap();
    let lse = g.broadcast(lse, shape(&[2, 3])).unwrap();
    let log_p = g.binary(BinaryOp::Sub, logits, lse).unwrap();
    let picked = g.binary(BinaryOp::Mul, onehot, log_p).unwrap();
    let total = g.reduce(ReduceOp::Sum, picked, &[0, 1]).unwrap();
    let scale = g.full(-0.5, DType::F32, shape(&[1, 1]));
    let loss = g.binary(BinaryOp::Mul, total, scale).unwrap();
    g.set_output("loss", loss);
    g
}

#[test]
fn softmax_cross_entropy_through_log_sum_exp() {
    // %19 = d(log_p) = -0.5·onehot. Through the log-sum-exp:
    // %24 = exp(shifted) · (-Σ_row %19) / s = 0.5·softmax for one-hot rows.
    // %25 = %19 + %24 = (softmax - onehot)/N, the textbook result, and
    // grad.W = xᵀ @ %25. Nothing flows into the detached max %5.
    insta::assert_snapshot!(grad_text(&softmax_cross_entropy()), @r#"
    graph softmax_ce
      %0: f32[2, 4] = input "x"
      %1: f32[2, 3] = input "onehot"
      %2: f32[4, 3] = param "W" init=normal(0, 0.01)
      %3: f32[2, 3] = matmul %0, %2
      %4: f32[2, 1] = reduce_max %3 axes=[1]
      %5: f32[2, 1] = stop_gradient %4
      %6: f32[2, 3] = broadcast %5
      %7: f32[2, 3] = sub %3, %6
      %8: f32[2, 3] = exp %7
      %9: f32[2, 1] = reduce_sum %8 axes=[1]
      %10: f32[2, 1] = log %9
      %11: f32[2, 1] = add %10, %5
      %12: f32[2, 3] = broadcast %11
      %13: f32[2, 3] = sub %3, %12
      %14: f32[2, 3] = mul %1, %13
      %15: f32[1, 1] = reduce_sum %14 axes=[0, 1]
      %16: f32[1, 1] = full -0.5
      %17: f32[1, 1] = mul %15, %16
      %18: f32[2, 3] = full -0.5
      %19: f32[2, 3] = mul %18, %1
      %20: f32[2, 3] = neg %19
      %21: f32[2, 1] = reduce_sum %20 axes=[1]
      %22: f32[2, 1] = div %21, %9
      %23: f32[2, 3] = broadcast %22
      %24: f32[2, 3] = mul %23, %8
      %25: f32[2, 3] = add %19, %24
      %26: f32[4, 2] = permute %0 perm=[1, 0]
      %27: f32[4, 3] = matmul %26, %25
      output loss = %17
      output grad.W = %27
    "#);
}

/// sum(avg_pool2d(conv2d(x, K), 2, stride 1)).
fn conv_avg_pool() -> Graph {
    let mut g = Graph::new("conv_pool");
    let x = g.input("x", DType::F32, shape(&[1, 1, 4, 4]));
    let k = g.param("K", DType::F32, shape(&[2, 1, 2, 2]), Init::XavierUniform).unwrap();
    let c = g.conv2d(x, k, [1, 1]).unwrap();
    let p = g.pool2d(PoolKind::Avg, c, [2, 2], [1, 1]).unwrap();
    let loss = g.reduce(ReduceOp::Sum, p, &[0, 1, 2, 3]).unwrap();
    g.set_output("loss", loss);
    g
}

#[test]
fn conv_then_avg_pool() {
    // The pool's gradient: dy/4 placed back at the 4 window offsets by pads
    // and summed; the kernel's gradient: conv of xᵀ with that (stride 1, so
    // no dilation) then permuted back to [O, C, kh, kw]. The input gradient
    // is not built: x is an input, not a parameter.
    insta::assert_snapshot!(grad_text(&conv_avg_pool()), @r#"
    graph conv_pool
      %0: f32[1, 1, 4, 4] = input "x"
      %1: f32[2, 1, 2, 2] = param "K" init=xavier_uniform
      %2: f32[1, 2, 3, 3] = conv2d %0, %1 stride=[1, 1]
      %3: f32[1, 2, 2, 2] = avg_pool2d %2 window=[2, 2] stride=[1, 1]
      %4: f32[1, 1, 1, 1] = reduce_sum %3 axes=[0, 1, 2, 3]
      %5: f32[1, 2, 2, 2] = full 0.25
      %6: f32[1, 2, 3, 3] = pad %5 lo=[0, 0, 0, 0] hi=[0, 0, 1, 1] value=0
      %7: f32[1, 2, 3, 3] = pad %5 lo=[0, 0, 0, 1] hi=[0, 0, 1, 0] value=0
      %8: f32[1, 2, 3, 3] = pad %5 lo=[0, 0, 1, 0] hi=[0, 0, 0, 1] value=0
      %9: f32[1, 2, 3, 3] = pad %5 lo=[0, 0, 1, 1] hi=[0, 0, 0, 0] value=0
      %10: f32[1, 2, 3, 3] = add %6, %7
      %11: f32[1, 2, 3, 3] = add %10, %8
      %12: f32[1, 2, 3, 3] = add %11, %9
      %13: f32[1, 1, 4, 4] = permute %0 perm=[1, 0, 2, 3]
      %14: f32[2, 1, 3, 3] = permute %12 perm=[1, 0, 2, 3]
      %15: f32[1, 2, 2, 2] = conv2d %13, %14 stride=[1, 1]
      %16: f32[2, 1, 2, 2] = permute %15 perm=[1, 0, 2, 3]
      output loss = %4
      output grad.K = %16
    "#);
}

#[test]
fn strided_conv_and_max_pool() {
    // Stride 2 with a 3x2 kernel on a 6x5 input: the windows cover rows 0..5
    // and columns 0..4, so the last row and column never reach the output.
    // Four phases (row and column taps even or odd): kernel taps (2i+p,
    // 2j+q) meet only input positions of the same parities.
    // grad.x: per phase, dy padded by the phase's taps - 1 (and to the
    // phase's share of the 6x5 positions) correlated with the phase's
    // flipped, channel-swapped sub-kernel K[.., p::2, q::2], then
    // interleaved into place (interior pads, summed).
    // grad.K: per phase, x[.., p::2, q::2] correlated with dy (no dilation),
    // giving taps (p::2, q::2) of grad.K, interleaved likewise.
    // The 2x1 max pool sends dy to the positions equal to the window's max,
    // shared among ties.
    let mut g = Graph::new("strided");
    let x = g.param("x", DType::F32, shape(&[1, 1, 6, 5]), Init::Ones).unwrap();
    let k = g.param("K", DType::F32, shape(&[1, 1, 3, 2]), Init::Ones).unwrap();
    let c = g.conv2d(x, k, [2, 2]).unwrap();
    let p = g.pool2d(PoolKind::Max, c, [2, 1], [1, 1]).unwrap();
    let loss = g.reduce(ReduceOp::Sum, p, &[0, 1, 2, 3]).unwrap();
    g.set_output("loss", loss);
    insta::assert_snapshot!(grad_text(&g), @r#"
    graph strided
      %0: f32[1, 1, 6, 5] = param "x" init=ones
      %1: f32[1, 1, 3, 2] = param "K" init=ones
      %2: f32[1, 1, 2, 2] = conv2d %0, %1 stride=[2, 2]
      %3: f32[1, 1, 1, 2] = max_pool2d %2 window=[2, 1] stride=[1, 1]
      %4: f32[1, 1, 1, 1] = reduce_sum %3 axes=[0, 1, 2, 3]
      %5: f32[1, 1, 1, 2] = full 1
      %6: f32[1, 1, 1, 2] = slice %2 [0..1, 0..1, 0..1, 0..2]
      %7: bool[1, 1, 1, 2] = eq %6, %3
      %8: f32[1, 1, 1, 2] = cast %7
      %9: f32[1, 1, 1, 2] = slice %2 [0..1, 0..1, 1..2, 0..2]
      %10: bool[1, 1, 1, 2] = eq %9, %3
      %11: f32[1, 1, 1, 2] = cast %10
      %12: f32[1, 1, 1, 2] = add %8, %11
      %13: f32[1, 1, 1, 2] = div %5, %12
      %14: f32[1, 1, 1, 2] = mul %8, %13
      %15: f32[1, 1, 1, 2] = mul %11, %13
      %16: f32[1, 1, 2, 2] = concat %14, %15 axis=2
      %17: f32[1, 1, 4, 3] = pad %16 lo=[0, 0, 1, 0] hi=[0, 0, 1, 1] value=0
      %18: f32[1, 1, 2, 1] = slice %1 [0..1, 0..1, 0..3:2, 0..2:2]
      %19: i64[2] = iota axis=0
      %20: i64[2] = full 1
      %21: i64[2] = sub %20, %19
      %22: f32[1, 1, 2, 1] = gather %18, %21 axis=2
      %23: f32[1, 1, 2, 1] = permute %22 perm=[1, 0, 2, 3]
      %24: f32[1, 1, 3, 3] = conv2d %17, %23 stride=[1, 1]
      %25: f32[1, 1, 6, 5] = pad %24 lo=[0, 0, 0, 0] hi=[0, 0, 1, 0] interior=[0, 0, 1, 1] value=0
      %26: f32[1, 1, 4, 2] = pad %16 lo=[0, 0, 1, 0] hi=[0, 0, 1, 0] value=0
      %27: f32[1, 1, 2, 1] = slice %1 [0..1, 0..1, 0..3:2, 1..2:2]
      %28: f32[1, 1, 2, 1] = gather %27, %21 axis=2
      %29: f32[1, 1, 2, 1] = permute %28 perm=[1, 0, 2, 3]
      %30: f32[1, 1, 3, 2] = conv2d %26, %29 stride=[1, 1]
      %31: f32[1, 1, 6, 5] = pad %30 lo=[0, 0, 0, 1] hi=[0, 0, 1, 1] interior=[0, 0, 1, 1] value=0
      %32: f32[1, 1, 3, 3] = pad %16 lo=[0, 0, 0, 0] hi=[0, 0, 1, 1] value=0
      %33: f32[1, 1, 1, 1] = slice %1 [0..1, 0..1, 1..3:2, 0..2:2]
      %34: f32[1, 1, 1, 1] = permute %33 perm=[1, 0, 2, 3]
      %35: f32[1, 1, 3, 3] = conv2d %32, %34 stride=[1, 1]
      %36: f32[1, 1, 6, 5] = pad %35 lo=[0, 0, 1, 0] hi=[0, 0, 0, 0] interior=[0, 0, 1, 1] value=0
      %37: f32[1, 1, 3, 2] = pad %16 lo=[0, 0, 0, 0] hi=[0, 0, 1, 0] value=0
      %38: f32[1, 1, 1, 1] = slice %1 [0..1, 0..1, 1..3:2, 1..2:2]
      %39: f32[1, 1, 1, 1] = permute %38 perm=[1, 0, 2, 3]
      %40: f32[1, 1, 3, 2] = conv2d %37, %39 stride=[1, 1]
      %41: f32[1, 1, 6, 5] = pad %40 lo=[0, 0, 1, 1] hi=[0, 0, 0, 1] interior=[0, 0, 1, 1] value=0
      %42: f32[1, 1, 6, 5] = add %25, %31
      %43: f32[1, 1, 6, 5] = add %42, %36
      %44: f32[1, 1, 6, 5] = add %43, %41
      %45: f32[1, 1, 3, 2] = slice %0 [0..1, 0..1, 0..5:2, 0..3:2]
      %46: f32[1, 1, 3, 2] = permute %45 perm=[1, 0, 2, 3]
      %47: f32[1, 1, 2, 2] = permute %16 perm=[1, 0, 2, 3]
      %48: f32[1, 1, 2, 1] = conv2d %46, %47 stride=[1, 1]
      %49: f32[1, 1, 2, 1] = permute %48 perm=[1, 0, 2, 3]
      %50: f32[1, 1, 3, 2] = pad %49 lo=[0, 0, 0, 0] hi=[0, 0, 0, 1] interior=[0, 0, 1, 1] value=0
      %51: f32[1, 1, 3, 2] = slice %0 [0..1, 0..1, 0..5:2, 1..4:2]
      %52: f32[1, 1, 3, 2] = permute %51 perm=[1, 0, 2, 3]
      %53: f32[1, 1, 2, 1] = conv2d %52, %47 stride=[1, 1]
      %54: f32[1, 1, 2, 1] = permute %53 perm=[1, 0, 2, 3]
      %55: f32[1, 1, 3, 2] = pad %54 lo=[0, 0, 0, 1] hi=[0, 0, 0, 0] interior=[0, 0, 1, 1] value=0
      %56: f32[1, 1, 2, 2] = slice %0 [0..1, 0..1, 1..4:2, 0..3:2]
      %57: f32[1, 1, 2, 2] = permute %56 perm=[1, 0, 2, 3]
      %58: f32[1, 1, 1, 1] = conv2d %57, %47 stride=[1, 1]
      %59: f32[1, 1, 1, 1] = permute %58 perm=[1, 0, 2, 3]
      %60: f32[1, 1, 3, 2] = pad %59 lo=[0, 0, 1, 0] hi=[0, 0, 1, 1] interior=[0, 0, 1, 1] value=0
      %61: f32[1, 1, 2, 2] = slice %0 [0..1, 0..1, 1..4:2, 1..4:2]
      %62: f32[1, 1, 2, 2] = permute %61 perm=[1, 0, 2, 3]
      %63: f32[1, 1, 1, 1] = conv2d %62, %47 stride=[1, 1]
      %64: f32[1, 1, 1, 1] = permute %63 perm=[1, 0, 2, 3]
      %65: f32[1, 1, 3, 2] = pad %64 lo=[0, 0, 1, 1] hi=[0, 0, 1, 0] interior=[0, 0, 1, 1] value=0
      %66: f32[1, 1, 3, 2] = add %50, %55
      %67: f32[1, 1, 3, 2] = add %66, %60
      %68: f32[1, 1, 3, 2] = add %67, %65
      output loss = %4
      output grad.x = %44
      output grad.K = %68
    "#);
}
