//! Structural tests of the gradient table: every primitive has a rule that
//! builds well-typed nodes, errors are clear, gradients stop where they
//! should. Numerical correctness is checked against finite differences in
//! `tests/tests/gradcheck.rs`, which has the interpreter.

use std::collections::HashSet;
use std::sync::Arc;

use d2l_ir::{BinaryOp, CmpOp, DType, Graph, Init, Loc, NodeId, Op, PoolKind, RandDist, ReduceOp, Shape, UnaryOp};
use d2l_passes::{DiffOptions, GradError, differentiate, differentiate_params, simplify};

fn shape(dims: &[usize]) -> Shape {
    Shape(dims.to_vec())
}

/// Sums every element into a [1, ..] scalar and names it the loss.
fn set_loss(g: &mut Graph, y: NodeId) {
    let y = if g.dtype(y).is_float() { y } else { g.cast(y, DType::F32) };
    let axes: Vec<usize> = (0..g.shape(y).rank()).collect();
    let loss = g.reduce(ReduceOp::Sum, y, &axes).unwrap();
    g.set_output("loss", loss);
}

/// The `Op` variant, by an exhaustive match: adding a variant to `Op` breaks
/// this function until `every_primitive_has_a_gradient_rule` covers it.
fn variant(op: &Op) -> usize {
    match op {
        Op::Input { .. } => 0,
        Op::Param { .. } => 1,
        Op::Full { .. } => 2,
        Op::Iota { .. } => 3,
        Op::Rand { .. } => 4,
        Op::Unary(_) => 5,
        Op::Binary(_) => 6,
        Op::Compare(_) => 7,
        Op::Select => 8,
        Op::Reduce { .. } => 9,
        Op::ArgMax { .. } => 10,
        Op::Reshape => 11,
        Op::Permute { .. } => 12,
        Op::Broadcast => 13,
        Op::Slice { .. } => 14,
        Op::Pad { .. } => 15,
        Op::Concat { .. } => 16,
        Op::MatMul => 17,
        Op::Gather { .. } => 18,
        Op::ScatterAdd { .. } => 19,
        Op::Cast => 20,
        Op::StopGradient => 21,
        Op::Conv2d { .. } => 22,
        Op::Pool2d { .. } => 23,
        Op::State { .. } => 24,
    }
}
const VARIANTS: usize = 25;

/// Builds the op under test from the parameters `p` and `q`.
type Build = Box<dyn Fn(&mut Graph, NodeId, NodeId) -> NodeId>;
type Case = (String, Build);

/// One small graph per primitive (and per kind of unary, binary, compare,
/// reduce and pool op), built from two f32[2, 3] parameters `p` and `q`.
fn cases() -> Vec<Case> {
    let mut cases: Vec<Case> = Vec::new();
    let mut case = |name: &str, f: Build| cases.push((name.to_string(), f));
    case("input", Box::new(|g, p, _| {
        let x = g.input("x", DType::F32, shape(&[2, 3]));
        g.binary(BinaryOp::Mul, p, x).unwrap()
    }));
    case("state", Box::new(|g, p, _| {
        let s = g.state("s", DType::F32, shape(&[2, 3]), Init::Zeros);
        g.binary(BinaryOp::Mul, p, s).unwrap()
    }));
    case("full", Box::new(|g, p, _| {
        let c = g.full(2.0, DType::F32, shape(&[2, 3]));
        g.binary(BinaryOp::Mul, p, c).unwrap()
    }));
    case("iota", Box::new(|g, p, _| {
        let i = g.iota(shape(&[2, 3]), 1, DType::I64).unwrap();
        let i = g.cast(i, DType::F32);
        g.binary(BinaryOp::Mul, p, i).unwrap()
    }));
    for dist in [RandDist::Uniform, RandDist::Normal] {
        case("rand", Box::new(move |g, p, _| {
            let r = g.rand(dist, DType::F32, shape(&[2, 3])).unwrap();
            g.binary(BinaryOp::Mul, p, r).unwrap()
        }));
    }
    use UnaryOp::*;
    for u in [Neg, Exp, Log, Sqrt, Tanh, Sigmoid, Abs, Sin, Cos] {
        case("unary", Box::new(move |g, p, _| g.unary(u, p).unwrap()));
    }
    use BinaryOp::*;
    for b in [Add, Sub, Mul, Div, Max, Min, Pow] {
        case("binary", Box::new(move |g, p, q| g.binary(b, p, q).unwrap()));
    }
    for c in [CmpOp::Eq, CmpOp::Ne, CmpOp::Lt, CmpOp::Le, CmpOp::Gt, CmpOp::Ge] {
        case("compare+select", Box::new(move |g, p, q| {
            let m = g.compare(c, p, q).unwrap();
            g.select(m, p, q).unwrap()
        }));
    }
    for r in [ReduceOp::Sum, ReduceOp::Max] {
        case("reduce", Box::new(move |g, p, _| g.reduce(r, p, &[1]).unwrap()));
    }
    case("argmax+gather", Box::new(|g, p, _| {
        let i = g.argmax(p, 1).unwrap();
        let i = g.reshape(i, shape(&[2])).unwrap();
        g.gather(p, i, 1).unwrap()
    }));
    case("reshape", Box::new(|g, p, _| g.reshape(p, shape(&[3, 2])).unwrap()));
    case("permute", Box::new(|g, p, _| g.permute(p, &[1, 0]).unwrap()));
    case("broadcast", Box::new(|g, p, _| {
        let r = g.reduce(ReduceOp::Sum, p, &[0]).unwrap();
        g.broadcast(r, shape(&[4, 2, 3])).unwrap()
    }));
    case("slice", Box::new(|g, p, _| g.slice(p, &[0, 1], &[2, 3], &[1, 2]).unwrap()));
    case("pad", Box::new(|g, p, _| g.pad(p, &[1, 0], &[0, 2], &[1, 1], 0.5).unwrap()));
    case("concat", Box::new(|g, p, q| g.concat(&[p, q, p], 1).unwrap()));
    case("matmul", Box::new(|g, p, q| {
        let qt = g.permute(q, &[1, 0]).unwrap();
        g.matmul(p, qt).unwrap()
    }));
    case("gather", Box::new(|g, p, _| {
        let i = g.input("idx", DType::I64, shape(&[4]));
        g.gather(p, i, 1).unwrap()
    }));
    case("scatter_add", Box::new(|g, p, _| {
        let i = g.input("idx", DType::I64, shape(&[3]));
        g.scatter_add(i, p, shape(&[2, 5]), 1).unwrap()
    }));
    case("cast", Box::new(|g, p, _| {
        let d = g.cast(p, DType::F64);
        let i = g.cast(p, DType::I64);
        let i = g.cast(i, DType::F64);
        g.binary(BinaryOp::Mul, d, i).unwrap()
    }));
    case("stop_gradient", Box::new(|g, p, q| {
        let s = g.stop_gradient(q);
        g.binary(BinaryOp::Mul, p, s).unwrap()
    }));
    for stride in [[1, 1], [2, 1]] {
        case("conv2d", Box::new(move |g, p, q| {
            let x = g.reshape(p, shape(&[1, 1, 2, 3])).unwrap();
            let x = g.pad(x, &[0, 0, 2, 1], &[0, 0, 1, 1], &[0, 0, 0, 0], 0.0).unwrap();
            let w = g.reshape(q, shape(&[2, 1, 1, 3])).unwrap();
            g.conv2d(x, w, stride).unwrap()
        }));
    }
    for kind in [PoolKind::Max, PoolKind::Avg] {
        case("pool2d", Box::new(move |g, p, _| {
            let x = g.reshape(p, shape(&[1, 2, 1, 3])).unwrap();
            let x = g.pad(x, &[0, 0, 2, 0], &[0, 0, 0, 0], &[0, 0, 0, 1], 0.0).unwrap();
            g.pool2d(kind, x, [2, 2], [1, 2]).unwrap()
        }));
    }
    cases
}

fn two_params(g: &mut Graph) -> (NodeId, NodeId) {
    let p = g.param("p", DType::F32, shape(&[2, 3]), Init::Ones).unwrap();
    let q = g.param("q", DType::F32, shape(&[2, 3]), Init::Ones).unwrap();
    (p, q)
}

#[test]
fn every_primitive_has_a_gradient_rule() {
    let mut seen = [false; VARIANTS];
    for (name, build) in cases() {
        let mut g = Graph::new(name.clone());
        let (p, q) = two_params(&mut g);
        let y = build(&mut g, p, q);
        set_loss(&mut g, y);
        for id in g.ids() {
            seen[variant(&g.node(id).op)] = true;
        }
        // Every float leaf is differentiated, so every rule on the way runs.
        let wrt: Vec<NodeId> = g.ids().filter(|&id| g.node(id).args.is_empty() && g.dtype(id).is_float()).collect();
        let grads = differentiate(&g, "loss", &wrt, &DiffOptions::default()).unwrap_or_else(|e| panic!("{name}: {e}"));
        for (&w, &dw) in wrt.iter().zip(&grads.grads) {
            assert_eq!(grads.graph.shape(dw), g.shape(w), "{name}");
            assert_eq!(grads.graph.dtype(dw), g.dtype(w), "{name}");
        }
        // The forward graph is a prefix of the gradient graph.
        for id in g.ids() {
            assert_eq!(grads.graph.node(id).op, g.node(id).op);
        }
        assert_eq!(grads.graph.output("loss"), g.output("loss"));
        // Simplifying keeps every output.
        let simple = simplify(&grads.graph);
        assert_eq!(simple.outputs().len(), grads.graph.outputs().len(), "{name}");
    }
    let missing: Vec<usize> = (0..VARIANTS).filter(|&v| !seen[v]).collect();
    assert!(missing.is_empty(), "no case exercises variants {missing:?}");
}

#[test]
fn loss_must_be_a_float_scalar() {
    let mut g = Graph::new("t");
    let (p, _) = two_params(&mut g);
    g.set_output("not_scalar", p);
    let i = g.argmax(p, 1).unwrap();
    let i = g.reduce(ReduceOp::Sum, i, &[0]).unwrap();
    g.set_output("int", i);
    let e = differentiate(&g, "not_scalar", &[p], &DiffOptions::default()).unwrap_err();
    assert_eq!(e.to_string(), "the loss `not_scalar` must be a scalar (shape [] or all dimensions 1), but it has shape [2, 3]");
    let e = differentiate(&g, "int", &[p], &DiffOptions::default()).unwrap_err();
    assert_eq!(e.to_string(), "the loss `int` must be a float tensor, but it is i64");
    let e = differentiate(&g, "nope", &[p], &DiffOptions::default()).unwrap_err();
    assert_eq!(e, GradError::NoSuchOutput("nope".into()));
}

#[test]
fn integers_have_no_gradient() {
    let mut g = Graph::new("t");
    let (p, _) = two_params(&mut g);
    let idx = g.input("idx", DType::I64, shape(&[2]));
    let loss = g.reduce(ReduceOp::Sum, p, &[0, 1]).unwrap();
    g.set_output("loss", loss);
    let e = differentiate(&g, "loss", &[idx], &DiffOptions::default()).unwrap_err();
    assert_eq!(e.to_string(), "cannot differentiate with respect to `idx`: it is i64, and only float tensors have gradients");
    let e = differentiate(&g, "loss", &[NodeId::new(99)], &DiffOptions::default()).unwrap_err();
    assert_eq!(e, GradError::UnknownNode(99));
}

#[test]
fn stop_gradient_and_stop_at_block_the_flow() {
    let mut g = Graph::new("t");
    let (p, q) = two_params(&mut g);
    let r = g.param("r", DType::F32, shape(&[2, 3]), Init::Ones).unwrap();
    let detached = g.stop_gradient(q);
    let masked = g.unary(UnaryOp::Exp, r).unwrap();
    let pq = g.binary(BinaryOp::Mul, p, detached).unwrap();
    let y = g.binary(BinaryOp::Add, pq, masked).unwrap();
    set_loss(&mut g, y);
    let options = DiffOptions { stop_at: HashSet::from([masked]) };
    let grads = differentiate_params(&g, "loss", &options).unwrap();
    assert_eq!(grads.disconnected, vec![q, r]);
    let simple = simplify(&grads.graph);
    let text = d2l_ir::text::print(&simple, false);
    // p's gradient is q (through the detached value); q's and r's are zeros.
    insta::assert_snapshot!(text, @r#"
    graph t
      %0: f32[2, 3] = param "p" init=ones
      %1: f32[2, 3] = param "q" init=ones
      %2: f32[2, 3] = param "r" init=ones
      %3: f32[2, 3] = stop_gradient %1
      %4: f32[2, 3] = exp %2
      %5: f32[2, 3] = mul %0, %3
      %6: f32[2, 3] = add %5, %4
      %7: f32[1, 1] = reduce_sum %6 axes=[0, 1]
      %8: f32[2, 3] = full 0
      output loss = %7
      output grad.p = %3
      output grad.q = %8
      output grad.r = %8
    "#);
}

#[test]
fn fan_out_gradients_add_up_and_keep_source_locations() {
    let mut g = Graph::new("t");
    let (p, _) = two_params(&mut g);
    let loc = Loc { file: Arc::from("m.d2l"), line: 3, col: 7 };
    g.set_loc(Some(loc.clone()));
    let y = g.binary(BinaryOp::Mul, p, p).unwrap();
    g.set_loc(None);
    set_loss(&mut g, y);
    let grads = differentiate(&g, "loss", &[p], &DiffOptions::default()).unwrap();
    let dp = grads.grads[0];
    let add = grads.graph.node(dp);
    assert_eq!(add.op, Op::Binary(BinaryOp::Add), "p is used twice: its two gradients are summed");
    assert_eq!(add.loc.as_ref(), Some(&loc), "backward nodes point at the forward op they differentiate");
}

#[test]
fn pow_builds_the_exponent_branch_only_when_needed() {
    let mut g = Graph::new("t");
    let (p, _) = two_params(&mut g);
    let two = g.full(2.0, DType::F32, shape(&[2, 3]));
    let y = g.binary(BinaryOp::Pow, p, two).unwrap();
    set_loss(&mut g, y);
    let grads = differentiate(&g, "loss", &[p], &DiffOptions::default()).unwrap();
    let has_log = grads.graph.ids().any(|id| grads.graph.node(id).op == Op::Unary(UnaryOp::Log));
    assert!(!has_log, "d/db of a^b needs log(a), which must not be built for a constant exponent");
}
