//! Finite-difference checks of every primitive's gradient rule.
//!
//! Each case is a small f32 graph ending in `loss = Σ op(...) · weights`
//! (random fixed weights, so every output element matters differently). The
//! gradient graph is built by `differentiate`, simplified and promoted to
//! f64, and its values, computed by the reference interpreter, must match
//! central differences of the promoted forward graph. Points are drawn away
//! from kinks and ties (abs at 0, max/min with equal operands, equal
//! elements under a max), where a finite difference measures nothing useful.

use std::collections::HashMap;

use d2l_ir::{BinaryOp, CmpOp, DType, Graph, Init, NodeId, PoolKind, ReduceOp, Shape, UnaryOp};
use d2l_passes::{DiffOptions, differentiate, grad_output_name, promote_f64, simplify};
use d2l_runtime::{Interpreter, Tensor};
use d2l_tests::{Rng, fd};

/// How a variable's values are drawn.
#[derive(Clone, Copy)]
enum Values {
    /// Uniform in [lo, hi).
    In(f64, f64),
    /// Magnitude in [lo, hi), random sign: away from 0.
    AwayFromZero(f64, f64),
    /// All different, at least 0.1 apart (a shuffled ramp): no ties for max.
    Distinct,
}

fn shape(dims: &[usize]) -> Shape {
    Shape(dims.to_vec())
}

/// A graph under construction with the values fed to its leaves.
struct Case {
    name: String,
    g: Graph,
    feeds: HashMap<String, Tensor>,
    wrt: Vec<NodeId>,
    rng: Rng,
}

impl Case {
    fn new(name: &str) -> Case {
        let seed = name.bytes().fold(17u64, |h, b| h.wrapping_mul(31).wrapping_add(b as u64));
        Case { name: name.into(), g: Graph::new(name), feeds: HashMap::new(), wrt: Vec::new(), rng: Rng(seed) }
    }

    fn draw(&mut self, n: usize, values: Values) -> Vec<f64> {
        match values {
            Values::In(lo, hi) => (0..n).map(|_| self.rng.uniform(lo, hi)).collect(),
            Values::AwayFromZero(lo, hi) => (0..n)
                .map(|_| {
                    let m = self.rng.uniform(lo, hi);
                    if self.rng.next_f64() < 0.5 { -m } else { m }
                })
                .collect(),
            Values::Distinct => {
                let mut v: Vec<f64> = (0..n).map(|i| (i as f64 - n as f64 / 2.0) * 0.1 + 0.01).collect();
                for i in (1..n).rev() {
                    let j = (self.rng.next_f64() * (i + 1) as f64) as usize;
                    v.swap(i, j.min(i));
                }
                v
            }
        }
    }

    /// A differentiated parameter with drawn values.
    fn param(&mut self, name: &str, dims: &[usize], values: Values) -> NodeId {
        let data = self.draw(dims.iter().product(), values);
        self.param_with(name, dims, data)
    }

    fn param_with(&mut self, name: &str, dims: &[usize], data: Vec<f64>) -> NodeId {
        let id = self.g.param(name, DType::F32, shape(dims), Init::Zeros).unwrap();
        self.feeds.insert(name.into(), Tensor::from_f64(dims, data));
        self.wrt.push(id);
        id
    }

    /// A differentiated input (inputs get gradients like parameters do).
    fn input(&mut self, name: &str, dims: &[usize], values: Values) -> NodeId {
        let data = self.draw(dims.iter().product(), values);
        let id = self.g.input(name, DType::F32, shape(dims));
        self.feeds.insert(name.into(), Tensor::from_f64(dims, data));
        self.wrt.push(id);
        id
    }

    /// An i64 input holding indices.
    fn indices(&mut self, name: &str, dims: &[usize], data: Vec<i64>) -> NodeId {
        let id = self.g.input(name, DType::I64, shape(dims));
        self.feeds.insert(name.into(), Tensor::from_i64(dims, data));
        id
    }

    /// loss = Σ y · w for random w, as a [] scalar; then the check.
    fn check(mut self, y: NodeId) {
        let dims = self.g.shape(y).0.clone();
        let weights = self.draw(dims.iter().product(), Values::In(-1.0, 1.0));
        let w = self.g.input("loss_weights", DType::F32, shape(&dims));
        self.feeds.insert("loss_weights".into(), Tensor::from_f64(&dims, weights));
        let yw = self.g.binary(BinaryOp::Mul, y, w).unwrap();
        let axes: Vec<usize> = (0..dims.len()).collect();
        let total = self.g.reduce(ReduceOp::Sum, yw, &axes).unwrap();
        let loss = self.g.reshape(total, Shape::scalar()).unwrap();
        self.g.set_output("loss", loss);
        gradcheck(&self.name, &self.g, &self.wrt, &self.feeds);
    }
}

fn eval_loss(forward: &Graph, feeds: &HashMap<String, Tensor>) -> f64 {
    let outputs = Interpreter::new(0).run(forward, feeds).unwrap();
    let (_, loss) = outputs.iter().find(|(n, _)| n == "loss").unwrap();
    loss.to_f64_vec()[0]
}

/// Analytic gradients (differentiate → simplify → promote_f64 → interpreter)
/// against central differences of the promoted forward graph.
fn gradcheck(name: &str, graph: &Graph, wrt: &[NodeId], feeds: &HashMap<String, Tensor>) {
    let grads = differentiate(graph, "loss", wrt, &DiffOptions::default()).unwrap_or_else(|e| panic!("{name}: {e}"));
    let backward = promote_f64(&simplify(&grads.graph)).unwrap();
    let forward = promote_f64(graph).unwrap();
    let analytic: HashMap<String, Tensor> = Interpreter::new(0)
        .run(&backward, feeds)
        .unwrap_or_else(|e| panic!("{name}: running the gradient graph: {e}"))
        .into_iter()
        .collect();
    let mut worst = 0.0f64;
    let mut feeds = feeds.clone();
    for &w in wrt {
        let leaf = graph.node(w).op.clone();
        let (d2l_ir::Op::Param { name: leaf_name, .. } | d2l_ir::Op::Input { name: leaf_name, .. }) = leaf else {
            panic!("{name}: only leaves are checked")
        };
        let grad = analytic[&grad_output_name(graph, w)].to_f64_vec();
        let every = 0..grad.len();
        worst = worst.max(fd::check_coordinates(name, &mut |f| eval_loss(&forward, f), &mut feeds, &leaf_name, &grad, every));
    }
    eprintln!("{name}: worst relative error {worst:.2e}");
}

// ---------------------------------------------------------------- elementwise

#[test]
fn unary_ops() {
    use UnaryOp::*;
    let cases = [
        (Neg, Values::In(-2.0, 2.0)),
        (Exp, Values::In(-2.0, 2.0)),
        (Log, Values::In(0.3, 3.0)),
        (Sqrt, Values::In(0.3, 3.0)),
        (Tanh, Values::In(-2.0, 2.0)),
        (Sigmoid, Values::In(-3.0, 3.0)),
        (Abs, Values::AwayFromZero(0.1, 2.0)),
        (Sin, Values::In(-3.0, 3.0)),
        (Cos, Values::In(-3.0, 3.0)),
    ];
    for (op, values) in cases {
        let mut c = Case::new(&format!("unary {op:?}"));
        let x = c.param("x", &[2, 3], values);
        let y = c.g.unary(op, x).unwrap();
        c.check(y);
    }
}

#[test]
fn binary_ops() {
    use BinaryOp::*;
    for op in [Add, Sub, Mul, Div, Max, Min, Pow] {
        let mut c = Case::new(&format!("binary {op:?}"));
        let (a, b) = match op {
            // Divisor away from 0.
            Div => (c.param("a", &[2, 3], Values::In(-2.0, 2.0)), c.param("b", &[2, 3], Values::AwayFromZero(0.5, 2.0))),
            // Positive base (log a in d/db).
            Pow => (c.param("a", &[2, 3], Values::In(0.5, 2.0)), c.param("b", &[2, 3], Values::In(-1.5, 2.5))),
            // No ties: b = a ± [0.2, 1).
            Max | Min => {
                let a_vals = c.draw(6, Values::In(-1.0, 1.0));
                let offsets = c.draw(6, Values::AwayFromZero(0.2, 1.0));
                let b_vals = a_vals.iter().zip(&offsets).map(|(a, d)| a + d).collect();
                (c.param_with("a", &[2, 3], a_vals), c.param_with("b", &[2, 3], b_vals))
            }
            _ => (c.param("a", &[2, 3], Values::In(-2.0, 2.0)), c.param("b", &[2, 3], Values::In(-2.0, 2.0))),
        };
        let y = c.g.binary(op, a, b).unwrap();
        c.check(y);
    }
}

#[test]
fn pow_with_a_constant_exponent() {
    let mut c = Case::new("pow constant exponent");
    let a = c.param("a", &[3], Values::In(0.5, 2.0));
    let three = c.g.full(3.0, DType::F32, shape(&[3]));
    let y = c.g.binary(BinaryOp::Pow, a, three).unwrap();
    c.check(y);
}

#[test]
fn compare_and_select() {
    for op in [CmpOp::Eq, CmpOp::Ne, CmpOp::Lt, CmpOp::Le, CmpOp::Gt, CmpOp::Ge] {
        let mut c = Case::new(&format!("select on {op:?}"));
        let a_vals = c.draw(6, Values::In(-1.0, 1.0));
        let offsets = c.draw(6, Values::AwayFromZero(0.2, 1.0));
        // No ties: a comparison flips inside a finite difference at a tie.
        let b_vals: Vec<f64> = a_vals.iter().zip(&offsets).map(|(a, d)| a + d).collect();
        let a = c.param_with("a", &[2, 3], a_vals);
        let b = c.param_with("b", &[2, 3], b_vals);
        let cond = c.g.compare(op, a, b).unwrap();
        let on_true = c.g.binary(BinaryOp::Mul, a, b).unwrap();
        let on_false = c.g.unary(UnaryOp::Sin, b).unwrap();
        let y = c.g.select(cond, on_true, on_false).unwrap();
        c.check(y);
    }
}

#[test]
fn leaky_relu_from_max() {
    let mut c = Case::new("leaky relu");
    let x = c.param("x", &[4, 3], Values::AwayFromZero(0.1, 2.0));
    let slope = c.g.full(0.1, DType::F32, shape(&[4, 3]));
    let leak = c.g.binary(BinaryOp::Mul, x, slope).unwrap();
    let y = c.g.binary(BinaryOp::Max, x, leak).unwrap();
    c.check(y);
}

#[test]
fn constants_iota_and_integer_casts() {
    // Full and iota feed values but take no gradient; the cast through i64 is
    // piecewise constant (x kept away from integers), the f32 → f64 → f32
    // round trip is the identity.
    let mut c = Case::new("constants and casts");
    let x = c.param("x", &[2, 3], Values::In(0.1, 0.9));
    let iota = c.g.iota(shape(&[2, 3]), 1, DType::I64).unwrap();
    let iota = c.g.cast(iota, DType::F32);
    let two = c.g.full(2.0, DType::F32, shape(&[2, 3]));
    let shifted = c.g.binary(BinaryOp::Add, x, iota).unwrap();
    let truncated = c.g.cast(shifted, DType::I64);
    let truncated = c.g.cast(truncated, DType::F32);
    let wide = c.g.cast(x, DType::F64);
    let wide = c.g.unary(UnaryOp::Exp, wide).unwrap();
    let narrow = c.g.cast(wide, DType::F32);
    let y = c.g.binary(BinaryOp::Mul, shifted, truncated).unwrap();
    let y = c.g.binary(BinaryOp::Mul, y, two).unwrap();
    let y = c.g.binary(BinaryOp::Add, y, narrow).unwrap();
    c.check(y);
}

// ---------------------------------------------------------------- reductions

#[test]
fn reduce_sum_and_max() {
    for (op, axes) in [
        (ReduceOp::Sum, vec![1]),
        (ReduceOp::Sum, vec![0, 2]),
        (ReduceOp::Max, vec![1]),
        (ReduceOp::Max, vec![0, 2]),
        (ReduceOp::Max, vec![0, 1, 2]),
    ] {
        let mut c = Case::new(&format!("reduce {op:?} {axes:?}"));
        let x = c.param("x", &[2, 3, 4], Values::Distinct);
        let y = c.g.reduce(op, x, &axes).unwrap();
        c.check(y);
    }
}

#[test]
fn max_through_argmax_and_gather() {
    let mut c = Case::new("argmax + gather");
    let x = c.param("x", &[3, 4], Values::Distinct);
    let i = c.g.argmax(x, 1).unwrap();
    let i = c.g.reshape(i, shape(&[3])).unwrap();
    let picked = c.g.gather(x, i, 1).unwrap(); // [3, 3]: x[r, argmax of row c]
    c.check(picked);
}

// ---------------------------------------------------------------- layout

#[test]
fn reshape_and_permute() {
    let mut c = Case::new("reshape + permute");
    let x = c.param("x", &[2, 3, 4], Values::In(-1.0, 1.0));
    let r = c.g.reshape(x, shape(&[6, 4])).unwrap();
    let r = c.g.unary(UnaryOp::Sin, r).unwrap();
    let r = c.g.reshape(r, shape(&[3, 2, 4])).unwrap();
    let y = c.g.permute(r, &[2, 0, 1]).unwrap();
    c.check(y);
}

#[test]
fn broadcasts() {
    for (from, to) in [(vec![3, 1], vec![2, 3, 4]), (vec![4], vec![2, 3, 4]), (vec![], vec![2, 3]), (vec![1, 3, 1], vec![2, 3, 2])] {
        let mut c = Case::new(&format!("broadcast {from:?} to {to:?}"));
        let x = c.param("x", &from, Values::In(-1.0, 1.0));
        let y = c.g.broadcast(x, shape(&to)).unwrap();
        let y = c.g.unary(UnaryOp::Tanh, y).unwrap();
        c.check(y);
    }
}

#[test]
fn slices_with_steps() {
    for (dims, starts, ends, steps) in [
        (vec![5, 7], vec![1, 0], vec![5, 7], vec![2, 3]),
        (vec![4, 5, 6], vec![0, 1, 2], vec![3, 5, 6], vec![1, 2, 4]),
        (vec![6], vec![2], vec![3], vec![5]),
    ] {
        let mut c = Case::new(&format!("slice {starts:?}..{ends:?}:{steps:?}"));
        let x = c.param("x", &dims, Values::In(-1.0, 1.0));
        let y = c.g.slice(x, &starts, &ends, &steps).unwrap();
        c.check(y);
    }
}

#[test]
fn pads_with_interior() {
    let mut c = Case::new("pad interior");
    let x = c.param("x", &[3, 4], Values::In(-1.0, 1.0));
    let y = c.g.pad(x, &[1, 0], &[2, 1], &[1, 2], 0.5).unwrap();
    let y = c.g.unary(UnaryOp::Exp, y).unwrap();
    c.check(y);
}

#[test]
fn concat_with_a_repeated_operand() {
    let mut c = Case::new("concat");
    let a = c.param("a", &[2, 3, 2], Values::In(-1.0, 1.0));
    let b = c.param("b", &[2, 1, 2], Values::In(-1.0, 1.0));
    let y = c.g.concat(&[a, b, a], 1).unwrap();
    let y = c.g.binary(BinaryOp::Mul, y, y).unwrap();
    c.check(y);
}

// ---------------------------------------------------------------- contractions and indexing

#[test]
fn matmuls() {
    let mut c = Case::new("matmul");
    let a = c.param("a", &[3, 4], Values::In(-1.0, 1.0));
    let b = c.input("b", &[4, 5], Values::In(-1.0, 1.0));
    let y = c.g.matmul(a, b).unwrap();
    c.check(y);

    let mut c = Case::new("batched matmul");
    let a = c.param("a", &[2, 3, 4], Values::In(-1.0, 1.0));
    let b = c.param("b", &[2, 4, 5], Values::In(-1.0, 1.0));
    let y = c.g.matmul(a, b).unwrap();
    c.check(y);

    // A weight applied at three steps, as in an unrolled recurrence: its
    // gradient is a sum of three products, which simplification merges
    // into one product over the concatenated steps.
    let mut c = Case::new("weight used at three steps");
    let w = c.param("w", &[4, 4], Values::In(-0.5, 0.5));
    let mut h = c.input("h0", &[2, 4], Values::In(-1.0, 1.0));
    for _ in 0..3 {
        let z = c.g.matmul(h, w).unwrap();
        h = c.g.unary(UnaryOp::Tanh, z).unwrap();
    }
    c.check(h);
}

#[test]
fn gather_with_repeated_indices() {
    let mut c = Case::new("gather axis 0");
    let table = c.param("table", &[5, 3], Values::In(-1.0, 1.0));
    let idx = c.indices("idx", &[2, 3], vec![4, 0, 4, 2, 2, 1]);
    let y = c.g.gather(table, idx, 0).unwrap(); // [2, 3, 3]
    c.check(y);

    let mut c = Case::new("gather axis 1");
    let x = c.param("x", &[2, 4, 3], Values::In(-1.0, 1.0));
    let idx = c.indices("idx", &[5], vec![3, 3, 0, 1, 3]);
    let y = c.g.gather(x, idx, 1).unwrap(); // [2, 5, 3]
    c.check(y);
}

#[test]
fn scatter_add_with_repeated_indices() {
    let mut c = Case::new("scatter_add");
    let updates = c.param("updates", &[2, 4, 3], Values::In(-1.0, 1.0));
    let idx = c.indices("idx", &[4], vec![1, 0, 1, 4]);
    let y = c.g.scatter_add(idx, updates, shape(&[2, 5, 3]), 1).unwrap();
    let y = c.g.binary(BinaryOp::Mul, y, y).unwrap();
    c.check(y);
}

// ---------------------------------------------------------------- convolution and pooling

#[test]
fn conv2d_strides_and_asymmetric_kernels() {
    for (x_dims, k_dims, stride) in [
        ([2, 2, 5, 6], [3, 2, 3, 2], [1, 1]),
        ([1, 2, 7, 6], [2, 2, 3, 3], [2, 2]), // the last row is never covered
        ([2, 1, 6, 7], [2, 1, 2, 3], [2, 1]),
        ([1, 3, 8, 8], [2, 3, 1, 1], [3, 3]), // 1x1 kernel skipping rows and columns
        ([2, 2, 13, 14], [2, 2, 5, 6], [4, 3]), // phases with 2 taps and with 1 (AlexNet's 11x11 stride 4)
    ] {
        let mut c = Case::new(&format!("conv2d {x_dims:?} * {k_dims:?} stride {stride:?}"));
        let x = c.param("x", &x_dims, Values::In(-1.0, 1.0));
        let k = c.param("k", &k_dims, Values::In(-1.0, 1.0));
        let y = c.g.conv2d(x, k, stride).unwrap();
        c.check(y);
    }
}

/// Gradients through a zero-padded hidden layer: simplify computes only the
/// cropped part of the padded input's gradient (symmetric and uneven pads,
/// a pad wider than the kernel reaches, and a window starting in the pad).
#[test]
fn conv2d_of_a_padded_hidden_layer() {
    for (lo, hi) in [([1, 1], [1, 1]), ([2, 0], [0, 1]), ([3, 3], [3, 3])] {
        let mut c = Case::new(&format!("conv2d of a padded hidden layer, pad lo {lo:?} hi {hi:?}"));
        let x = c.input("x", &[2, 2, 4, 5], Values::In(-1.0, 1.0));
        let k1 = c.param("k1", &[3, 2, 3, 3], Values::In(-0.5, 0.5));
        let k2 = c.param("k2", &[2, 3, 3, 2], Values::In(-0.5, 0.5));
        let h = c.g.conv2d(x, k1, [1, 1]).unwrap();
        let h = c.g.unary(UnaryOp::Tanh, h).unwrap();
        let h = c.g.pad(h, &[0, 0, lo[0], lo[1]], &[0, 0, hi[0], hi[1]], &[0; 4], 0.0).unwrap();
        let y = c.g.conv2d(h, k2, [1, 1]).unwrap();
        c.check(y);
    }
}

#[test]
fn pooling_windows_and_strides() {
    for kind in [PoolKind::Max, PoolKind::Avg] {
        for (window, stride) in [([2, 2], [2, 2]), ([2, 2], [1, 1]), ([3, 2], [2, 1]), ([2, 2], [3, 3])] {
            let mut c = Case::new(&format!("{kind:?} pool {window:?} stride {stride:?}"));
            let x = c.param("x", &[2, 2, 7, 6], Values::Distinct);
            let y = c.g.pool2d(kind, x, window, stride).unwrap();
            c.check(y);
        }
    }
}

// ---------------------------------------------------------------- small models

#[test]
fn lenet_like_block() {
    // conv → sigmoid → avg pool → flatten → linear, padding as a Pad node.
    let mut c = Case::new("lenet block");
    let x = c.input("x", &[2, 1, 6, 6], Values::In(-1.0, 1.0));
    let k = c.param("k", &[2, 1, 3, 3], Values::In(-0.5, 0.5));
    let w = c.param("w", &[18, 3], Values::In(-0.5, 0.5));
    let b = c.param("b", &[3], Values::In(-0.5, 0.5));
    let xp = c.g.pad(x, &[0, 0, 1, 1], &[0, 0, 1, 1], &[0; 4], 0.0).unwrap();
    let h = c.g.conv2d(xp, k, [1, 1]).unwrap();
    let h = c.g.unary(UnaryOp::Sigmoid, h).unwrap();
    let h = c.g.pool2d(PoolKind::Avg, h, [2, 2], [2, 2]).unwrap();
    let h = c.g.reshape(h, shape(&[2, 18])).unwrap();
    let h = c.g.matmul(h, w).unwrap();
    let b = c.g.broadcast(b, shape(&[2, 3])).unwrap();
    let y = c.g.binary(BinaryOp::Add, h, b).unwrap();
    c.check(y);
}

#[test]
fn softmax_cross_entropy() {
    let mut c = Case::new("softmax cross-entropy");
    let logits = c.param("logits", &[3, 5], Values::In(-2.0, 2.0));
    let labels = c.indices("labels", &[3], vec![4, 0, 2]);
    let max = c.g.reduce(ReduceOp::Max, logits, &[1]).unwrap();
    let max = c.g.stop_gradient(max);
    let max_b = c.g.broadcast(max, shape(&[3, 5])).unwrap();
    let shifted = c.g.binary(BinaryOp::Sub, logits, max_b).unwrap();
    let e = c.g.unary(UnaryOp::Exp, shifted).unwrap();
    let s = c.g.reduce(ReduceOp::Sum, e, &[1]).unwrap();
    let lse = c.g.unary(UnaryOp::Log, s).unwrap();
    let lse = c.g.broadcast(lse, shape(&[3, 5])).unwrap();
    let log_p = c.g.binary(BinaryOp::Sub, shifted, lse).unwrap();
    // Pick each row's label with an iota == label mask.
    let classes = c.g.iota(shape(&[3, 5]), 1, DType::I64).unwrap();
    let labels = c.g.reshape(labels, shape(&[3, 1])).unwrap();
    let labels = c.g.broadcast(labels, shape(&[3, 5])).unwrap();
    let hit = c.g.compare(CmpOp::Eq, classes, labels).unwrap();
    let zero = c.g.full(0.0, DType::F32, shape(&[3, 5]));
    let picked = c.g.select(hit, log_p, zero).unwrap();
    let y = c.g.unary(UnaryOp::Neg, picked).unwrap();
    c.check(y);
}

// ---------------------------------------------------------------- rules finite differences cannot see

/// Gradients of `loss` (already an output of `g`) with respect to `wrt`, in f64.
fn gradients(g: &Graph, wrt: &[NodeId], feeds: &HashMap<String, Tensor>) -> Vec<Vec<f64>> {
    let grads = differentiate(g, "loss", wrt, &DiffOptions::default()).unwrap();
    let backward = promote_f64(&simplify(&grads.graph)).unwrap();
    let outputs: HashMap<String, Tensor> = Interpreter::new(0).run(&backward, feeds).unwrap().into_iter().collect();
    wrt.iter().map(|&w| outputs[&grad_output_name(g, w)].to_f64_vec()).collect()
}

fn sum_as_loss(g: &mut Graph, y: NodeId) {
    let axes: Vec<usize> = (0..g.shape(y).rank()).collect();
    let loss = g.reduce(ReduceOp::Sum, y, &axes).unwrap();
    g.set_output("loss", loss);
}

#[test]
fn ties_share_the_gradient_of_a_max() {
    let mut g = Graph::new("ties");
    let x = g.param("x", DType::F32, shape(&[2, 3]), Init::Zeros).unwrap();
    let m = g.reduce(ReduceOp::Max, x, &[1]).unwrap();
    let p = g.reshape(x, shape(&[1, 1, 2, 3])).unwrap();
    let p = g.pool2d(PoolKind::Max, p, [2, 2], [1, 1]).unwrap();
    let p = g.reshape(p, shape(&[2, 1])).unwrap();
    let y = g.binary(BinaryOp::Add, m, p).unwrap();
    sum_as_loss(&mut g, y);
    let feeds = HashMap::from([("x".to_string(), Tensor::from_f64(&[2, 3], vec![3.0, 3.0, 1.0, 3.0, 3.0, 3.0]))]);
    let [dx] = &gradients(&g, &[x], &feeds)[..] else { unreachable!() };
    // reduce_max: row 0 splits 1 between two 3s, row 1 among three.
    // max pool: window 0 (columns 0-1) has four 3s, window 1 (columns 1-2) three.
    let third = 1.0 / 3.0;
    let expected = [0.5 + 0.25, 0.5 + 0.25 + third, 0.0, third + 0.25, third + 0.25 + third, third + third];
    for (got, want) in dx.iter().zip(expected) {
        assert!((got - want).abs() < 1e-12, "{dx:?} vs {expected:?}");
    }
}

#[test]
fn max_and_min_send_ties_to_the_first_operand() {
    let mut g = Graph::new("ties");
    let a = g.param("a", DType::F32, shape(&[2]), Init::Zeros).unwrap();
    let b = g.param("b", DType::F32, shape(&[2]), Init::Zeros).unwrap();
    let hi = g.binary(BinaryOp::Max, a, b).unwrap();
    let lo = g.binary(BinaryOp::Min, a, b).unwrap();
    let two = g.full(2.0, DType::F32, shape(&[2]));
    let lo = g.binary(BinaryOp::Mul, lo, two).unwrap();
    let y = g.binary(BinaryOp::Add, hi, lo).unwrap();
    sum_as_loss(&mut g, y);
    let feeds = HashMap::from([
        ("a".to_string(), Tensor::from_f64(&[2], vec![1.0, 1.0])),
        ("b".to_string(), Tensor::from_f64(&[2], vec![1.0, 2.0])),
    ]);
    let grads = gradients(&g, &[a, b], &feeds);
    assert_eq!(grads, vec![vec![3.0, 2.0], vec![0.0, 1.0]]);
}

#[test]
fn stop_gradient_detaches() {
    // y = x · stop_gradient(x): dy/dx = stop_gradient(x) = x, not 2x.
    let mut g = Graph::new("detach");
    let x = g.param("x", DType::F32, shape(&[3]), Init::Zeros).unwrap();
    let s = g.stop_gradient(x);
    let y = g.binary(BinaryOp::Mul, x, s).unwrap();
    sum_as_loss(&mut g, y);
    let feeds = HashMap::from([("x".to_string(), Tensor::from_f64(&[3], vec![1.0, -2.0, 0.5]))]);
    assert_eq!(gradients(&g, &[x], &feeds), vec![vec![1.0, -2.0, 0.5]]);
}
