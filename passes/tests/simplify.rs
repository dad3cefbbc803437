//! Simplification: what goes, what merges, what folds, what must survive.

use d2l_ir::{BinaryOp, CmpOp, DType, Graph, Init, NodeId, Op, RandDist, ReduceOp, Shape, UnaryOp, text};
use d2l_passes::{promote_f64, simplify, try_simplify};

fn shape(dims: &[usize]) -> Shape {
    Shape(dims.to_vec())
}

fn printed(g: &Graph) -> String {
    text::print(&simplify(g), false)
}

#[test]
fn dead_code_goes_but_params_and_inputs_stay_in_order() {
    let mut g = Graph::new("t");
    let unused_input = g.input("unused", DType::F32, shape(&[2]));
    let x = g.input("x", DType::F32, shape(&[2]));
    let unused_param = g.param("w", DType::F32, shape(&[2]), Init::Zeros).unwrap();
    let _dead = g.unary(UnaryOp::Exp, unused_param).unwrap();
    let _dead2 = g.unary(UnaryOp::Exp, unused_input).unwrap();
    let y = g.unary(UnaryOp::Tanh, x).unwrap();
    g.set_output("y", y);
    insta::assert_snapshot!(printed(&g), @r#"
    graph t
      %0: f32[2] = input "unused"
      %1: f32[2] = input "x"
      %2: f32[2] = param "w" init=zeros
      %3: f32[2] = tanh %1
      output y = %3
    "#);
}

#[test]
fn identical_nodes_merge_but_random_draws_do_not() {
    let mut g = Graph::new("t");
    let x = g.input("x", DType::F32, shape(&[2]));
    let a = g.unary(UnaryOp::Exp, x).unwrap();
    let b = g.unary(UnaryOp::Exp, x).unwrap();
    let r1 = g.rand(RandDist::Uniform, DType::F32, shape(&[2])).unwrap();
    let r2 = g.rand(RandDist::Uniform, DType::F32, shape(&[2])).unwrap();
    let ab = g.binary(BinaryOp::Add, a, b).unwrap();
    let rr = g.binary(BinaryOp::Add, r1, r2).unwrap();
    let y = g.binary(BinaryOp::Mul, ab, rr).unwrap();
    g.set_output("y", y);
    insta::assert_snapshot!(printed(&g), @r#"
    graph t
      %0: f32[2] = input "x"
      %1: f32[2] = exp %0
      %2: f32[2] = rand_uniform
      %3: f32[2] = rand_uniform
      %4: f32[2] = add %1, %1
      %5: f32[2] = add %2, %3
      %6: f32[2] = mul %4, %5
      output y = %6
    "#);
}

#[test]
fn constants_fold_and_identities_vanish() {
    let mut g = Graph::new("t");
    let x = g.input("x", DType::F32, shape(&[2, 3]));
    let zero = g.full(0.0, DType::F32, shape(&[2, 3]));
    let one = g.full(1.0, DType::F32, shape(&[]));
    let one = g.broadcast(one, shape(&[2, 3])).unwrap(); // broadcast of a full: a full
    let two = g.binary(BinaryOp::Add, one, one).unwrap(); // all-constant: folds to 2
    let e = g.unary(UnaryOp::Exp, zero).unwrap(); // exp(0) = 1
    let a = g.binary(BinaryOp::Add, x, zero).unwrap(); // x + 0 = x
    let a = g.binary(BinaryOp::Mul, a, e).unwrap(); // x * 1 = x
    let a = g.unary(UnaryOp::Neg, a).unwrap();
    let a = g.unary(UnaryOp::Neg, a).unwrap(); // neg neg x = x
    let b = g.binary(BinaryOp::Mul, a, zero).unwrap(); // x * 0 = 0
    let c = g.binary(BinaryOp::Sub, two, b).unwrap(); // 2 - 0 = 2
    let y = g.binary(BinaryOp::Div, a, c).unwrap(); // x / 2
    let r = g.reshape(y, shape(&[3, 2])).unwrap();
    let r = g.reshape(r, shape(&[6])).unwrap(); // one reshape
    let s = g.reduce(ReduceOp::Sum, two, &[0, 1]).unwrap(); // 2 * 6 = 12
    g.set_output("y", r);
    g.set_output("s", s);
    insta::assert_snapshot!(printed(&g), @r#"
    graph t
      %0: f32[2, 3] = input "x"
      %1: f32[2, 3] = full 2
      %2: f32[2, 3] = div %0, %1
      %3: f32[6] = reshape %2
      %4: f32[1, 1] = full 12
      output y = %3
      output s = %4
    "#);
}

#[test]
fn folded_constants_round_to_f32() {
    let mut g = Graph::new("t");
    let a = g.full(0.1, DType::F32, shape(&[]));
    let b = g.full(0.2, DType::F32, shape(&[]));
    let c = g.binary(BinaryOp::Add, a, b).unwrap();
    g.set_output("c", c);
    let simple = simplify(&g);
    let Op::Full { value } = simple.node(simple.output("c").unwrap()).op else { panic!("not folded") };
    assert_eq!(value, (0.1f64 + 0.2f64) as f32 as f64);
}

#[test]
fn select_on_a_constant_condition_and_layout_chains() {
    let mut g = Graph::new("t");
    let x = g.input("x", DType::F32, shape(&[2, 3, 4]));
    let yes = g.full(1.0, DType::Bool, shape(&[2, 3, 4]));
    let z = g.full(0.0, DType::F32, shape(&[2, 3, 4]));
    let s = g.select(yes, x, z).unwrap();
    let p = g.permute(s, &[1, 2, 0]).unwrap();
    let p = g.permute(p, &[2, 0, 1]).unwrap(); // composes to the identity
    let q = g.permute(p, &[0, 2, 1]).unwrap();
    let q = g.permute(q, &[1, 0, 2]).unwrap(); // composes to [2, 0, 1]
    let small = g.input("b", DType::F32, shape(&[4]));
    let b = g.broadcast(small, shape(&[3, 4])).unwrap();
    let b = g.broadcast(b, shape(&[2, 3, 4])).unwrap(); // one broadcast
    g.set_output("p", p);
    g.set_output("q", q);
    g.set_output("b", b);
    insta::assert_snapshot!(printed(&g), @r#"
    graph t
      %0: f32[2, 3, 4] = input "x"
      %1: f32[4, 2, 3] = permute %0 perm=[2, 0, 1]
      %2: f32[4] = input "b"
      %3: f32[2, 3, 4] = broadcast %2
      output p = %0
      output q = %1
      output b = %3
    "#);
}

#[test]
fn stop_gradient_survives_simplification() {
    // Simplify may run before autodiff: dropping the marker would change
    // gradients, so only a constant operand removes it.
    let mut g = Graph::new("t");
    let x = g.input("x", DType::F32, shape(&[2]));
    let s = g.stop_gradient(x);
    g.set_output("s", s);
    let simple = simplify(&g);
    assert_eq!(simple.node(simple.output("s").unwrap()).op, Op::StopGradient);
}

#[test]
fn node_map_follows_every_node() {
    let mut g = Graph::new("t");
    let x = g.input("x", DType::F32, shape(&[2]));
    let zero = g.full(0.0, DType::F32, shape(&[2]));
    let a = g.binary(BinaryOp::Add, x, zero).unwrap();
    let dead = g.unary(UnaryOp::Exp, a).unwrap();
    let y = g.unary(UnaryOp::Sin, a).unwrap();
    g.set_output("y", y);
    let (simple, map) = try_simplify(&g).unwrap();
    assert_eq!(map[a.index()], map[x.index()], "x + 0 is x");
    assert_eq!(map[dead.index()], None);
    assert_eq!(map[zero.index()], None, "the folded 0 is dead");
    assert_eq!(map[y.index()], simple.output("y"));
}

#[test]
fn promote_f64_widens_every_f32() {
    let mut g = Graph::new("t");
    let x = g.input("x", DType::F32, shape(&[2]));
    let w = g.param("w", DType::F32, shape(&[2]), Init::Ones).unwrap();
    let i = g.input("i", DType::I64, shape(&[2]));
    let fi = g.cast(i, DType::F32);
    let d = g.cast(x, DType::F64);
    let d = g.cast(d, DType::F32);
    let c = g.full(3.0, DType::F32, shape(&[2]));
    let y = g.binary(BinaryOp::Mul, d, w).unwrap();
    let y = g.binary(BinaryOp::Add, y, fi).unwrap();
    let y = g.binary(BinaryOp::Add, y, c).unwrap();
    g.set_output("y", y);
    insta::assert_snapshot!(text::print(&promote_f64(&g).unwrap(), false), @r#"
    graph t
      %0: f64[2] = input "x"
      %1: f64[2] = param "w" init=ones
      %2: i64[2] = input "i"
      %3: f64[2] = cast %2
      %4: f64[2] = full 3
      %5: f64[2] = mul %0, %1
      %6: f64[2] = add %5, %3
      %7: f64[2] = add %6, %4
      output y = %7
    "#);
}

#[test]
fn a_cropped_convolution_computes_only_the_crop() {
    // What autodiff makes of a padded conv input: the gradient of the padded
    // 5x5 map, cropped to the 3x3 interior. After simplify the convolution
    // reads a smaller pad and produces the 3x3 crop; a second reader of the
    // convolution keeps it whole.
    let mut g = Graph::new("t");
    let dy = g.input("dy", DType::F32, shape(&[1, 2, 3, 3]));
    let k = g.input("k", DType::F32, shape(&[4, 2, 3, 3]));
    let padded = g.pad(dy, &[0, 0, 2, 2], &[0, 0, 2, 2], &[0; 4], 0.0).unwrap();
    let full = g.conv2d(padded, k, [1, 1]).unwrap();
    let crop = g.slice(full, &[0, 0, 1, 1], &[1, 4, 4, 4], &[1; 4]).unwrap();
    g.set_output("crop", crop);
    insta::assert_snapshot!(printed(&g), @r#"
    graph t
      %0: f32[1, 2, 3, 3] = input "dy"
      %1: f32[4, 2, 3, 3] = input "k"
      %2: f32[1, 2, 5, 5] = pad %0 lo=[0, 0, 1, 1] hi=[0, 0, 1, 1] value=0
      %3: f32[1, 4, 3, 3] = conv2d %2, %1 stride=[1, 1]
      output crop = %3
    "#);
    g.set_output("full", full);
    let kept = simplify(&g);
    assert!(kept.ids().any(|id| matches!(kept.node(id).op, Op::Slice { .. })), "{}", text::print(&kept, false));
}

#[test]
fn a_sum_of_products_becomes_one_product_over_the_joined_inner_dimension() {
    // A weight's gradient in an unrolled loop: hᵀ₀ d₀ + hᵀ₁ d₁ + hᵀ₂ d₂.
    let mut g = Graph::new("t");
    let hs: Vec<_> = (0..3).map(|i| g.input(&format!("h{i}"), DType::F32, shape(&[2, 4]))).collect();
    let ds: Vec<_> = (0..3).map(|i| g.input(&format!("d{i}"), DType::F32, shape(&[2, 3]))).collect();
    let products: Vec<_> = hs
        .iter()
        .zip(&ds)
        .map(|(&h, &d)| {
            let ht = g.permute(h, &[1, 0]).unwrap();
            g.matmul(ht, d).unwrap()
        })
        .collect();
    let s = g.binary(BinaryOp::Add, products[0], products[1]).unwrap();
    let s = g.binary(BinaryOp::Add, s, products[2]).unwrap();
    g.set_output("grad", s);
    insta::assert_snapshot!(printed(&g), @r#"
    graph t
      %0: f32[2, 4] = input "h0"
      %1: f32[2, 4] = input "h1"
      %2: f32[2, 4] = input "h2"
      %3: f32[2, 3] = input "d0"
      %4: f32[2, 3] = input "d1"
      %5: f32[2, 3] = input "d2"
      %6: f32[4, 2] = permute %0 perm=[1, 0]
      %7: f32[4, 2] = permute %1 perm=[1, 0]
      %8: f32[4, 2] = permute %2 perm=[1, 0]
      %9: f32[4, 6] = concat %6, %7, %8 axis=1
      %10: f32[6, 3] = concat %3, %4, %5 axis=0
      %11: f32[4, 3] = matmul %9, %10
      output grad = %11
    "#);
}

#[test]
fn products_read_elsewhere_are_not_merged() {
    let mut g = Graph::new("t");
    let a = g.input("a", DType::F32, shape(&[2, 2]));
    let b = g.input("b", DType::F32, shape(&[2, 2]));
    let p = g.matmul(a, b).unwrap();
    let q = g.matmul(b, a).unwrap();
    let s = g.binary(BinaryOp::Add, p, q).unwrap();
    g.set_output("s", s);
    g.set_output("p", p);
    let simplified = simplify(&g);
    assert_eq!(simplified.node(simplified.output("s").unwrap()).op, Op::Binary(BinaryOp::Add));
}

/// `one_hot(idx, n)` as the language's builtin expands it: [m] -> [m, n].
fn one_hot(g: &mut Graph, idx: NodeId, n: usize) -> NodeId {
    let m = g.shape(idx).dims()[0];
    let iota = g.iota(shape(&[m, n]), 1, DType::I64).unwrap();
    let col = g.reshape(idx, shape(&[m, 1])).unwrap();
    let col = g.broadcast(col, shape(&[m, n])).unwrap();
    let eq = g.compare(CmpOp::Eq, col, iota).unwrap();
    g.cast(eq, DType::F32)
}

#[test]
fn one_hot_products_become_a_gather_and_a_scatter_add() {
    // A language model's input layer and the gradient autodiff makes of it.
    let mut g = Graph::new("t");
    let idx = g.input("idx", DType::I64, shape(&[3]));
    let w = g.input("W", DType::F32, shape(&[4, 2]));
    let d = g.input("D", DType::F32, shape(&[3, 2]));
    let x = one_hot(&mut g, idx, 4);
    let y = g.matmul(x, w).unwrap();
    let xt = g.permute(x, &[1, 0]).unwrap();
    let dw = g.matmul(xt, d).unwrap();
    // A product with any other matrix stays one.
    let other = g.input("X", DType::F32, shape(&[3, 4]));
    let z = g.matmul(other, w).unwrap();
    g.set_output("y", y);
    g.set_output("dW", dw);
    g.set_output("z", z);
    insta::assert_snapshot!(printed(&g), @r#"
    graph t
      %0: i64[3] = input "idx"
      %1: f32[4, 2] = input "W"
      %2: f32[3, 2] = input "D"
      %3: f32[3, 2] = gather %1, %0 axis=0
      %4: f32[4, 2] = scatter_add %0, %2 axis=0
      %5: f32[3, 4] = input "X"
      %6: f32[3, 2] = matmul %5, %1
      output y = %3
      output dW = %4
      output z = %6
    "#);
}

#[test]
fn a_bias_on_picked_rows_moves_into_the_table() {
    // A language model's input projection: one_hot(idx) @ W + b over [2, 3]
    // steps, and rewrites that must not happen: a table with more rows than
    // are picked, picked rows something else also reads, a bias per row.
    let mut g = Graph::new("t");
    let idx = g.input("idx", DType::I64, shape(&[6]));
    let w = g.input("W", DType::F32, shape(&[4, 2]));
    let b = g.input("b", DType::F32, shape(&[2]));
    let x = one_hot(&mut g, idx, 4);
    let picked = g.matmul(x, w).unwrap();
    let steps = g.reshape(picked, shape(&[2, 3, 2])).unwrap();
    let bias = g.broadcast(b, shape(&[2, 3, 2])).unwrap();
    let xw = g.binary(BinaryOp::Add, bias, steps).unwrap();
    g.set_output("xw", xw);
    let few = g.input("few", DType::I64, shape(&[3]));
    let few_rows = g.gather(w, few, 0).unwrap();
    let few_bias = g.broadcast(b, shape(&[3, 2])).unwrap();
    let few_xw = g.binary(BinaryOp::Add, few_rows, few_bias).unwrap();
    g.set_output("few", few_xw);
    let idx2 = g.input("idx2", DType::I64, shape(&[6]));
    let shared = g.gather(w, idx2, 0).unwrap();
    let bias6 = g.broadcast(b, shape(&[6, 2])).unwrap();
    let shared_xw = g.binary(BinaryOp::Add, shared, bias6).unwrap();
    g.set_output("shared", shared_xw);
    g.set_output("rows", shared);
    let c = g.input("c", DType::F32, shape(&[6, 1]));
    let idx3 = g.input("idx3", DType::I64, shape(&[6]));
    let rows3 = g.gather(w, idx3, 0).unwrap();
    let per_row = g.broadcast(c, shape(&[6, 2])).unwrap();
    let row_bias = g.binary(BinaryOp::Add, rows3, per_row).unwrap();
    g.set_output("per_row", row_bias);
    insta::assert_snapshot!(printed(&g), @r#"
    graph t
      %0: i64[6] = input "idx"
      %1: f32[4, 2] = input "W"
      %2: f32[2] = input "b"
      %3: f32[4, 2] = broadcast %2
      %4: f32[4, 2] = add %1, %3
      %5: f32[6, 2] = gather %4, %0 axis=0
      %6: f32[2, 3, 2] = reshape %5
      %7: i64[3] = input "few"
      %8: f32[3, 2] = gather %1, %7 axis=0
      %9: f32[3, 2] = broadcast %2
      %10: f32[3, 2] = add %8, %9
      %11: i64[6] = input "idx2"
      %12: f32[6, 2] = gather %1, %11 axis=0
      %13: f32[6, 2] = broadcast %2
      %14: f32[6, 2] = add %12, %13
      %15: f32[6, 1] = input "c"
      %16: i64[6] = input "idx3"
      %17: f32[6, 2] = gather %1, %16 axis=0
      %18: f32[6, 2] = broadcast %15
      %19: f32[6, 2] = add %17, %18
      output xw = %6
      output few = %10
      output shared = %14
      output rows = %12
      output per_row = %19
    "#);
}

#[test]
fn slices_of_picked_rows_pick_from_sliced_indices() {
    // Each of 3 steps reads its 2 rows of a take over all 6 (through a
    // reshape to [steps, batch, K]); and rewrites that must not happen:
    // picked rows also read whole, a slice that cuts the rows' values.
    let mut g = Graph::new("t");
    let idx = g.input("idx", DType::I64, shape(&[6]));
    let w = g.input("W", DType::F32, shape(&[4, 5]));
    let picked = g.gather(w, idx, 0).unwrap();
    let steps = g.reshape(picked, shape(&[3, 2, 5])).unwrap();
    for t in [0, 2] {
        let step = g.slice(steps, &[t, 0, 0], &[t + 1, 2, 5], &[1, 1, 1]).unwrap();
        let step = g.reshape(step, shape(&[2, 5])).unwrap();
        g.set_output(format!("step{t}"), step);
    }
    let idx2 = g.input("idx2", DType::I64, shape(&[6]));
    let whole = g.gather(w, idx2, 0).unwrap();
    let first = g.slice(whole, &[0, 0], &[2, 5], &[1, 1]).unwrap();
    g.set_output("first", first);
    g.set_output("whole", whole);
    let idx3 = g.input("idx3", DType::I64, shape(&[6]));
    let cut = g.gather(w, idx3, 0).unwrap();
    let cols = g.slice(cut, &[0, 1], &[6, 3], &[1, 1]).unwrap();
    g.set_output("cols", cols);
    insta::assert_snapshot!(printed(&g), @r#"
    graph t
      %0: i64[6] = input "idx"
      %1: f32[4, 5] = input "W"
      %2: i64[3, 2] = reshape %0
      %3: i64[1, 2] = slice %2 [0..1, 0..2]
      %4: f32[1, 2, 5] = gather %1, %3 axis=0
      %5: f32[2, 5] = reshape %4
      %6: i64[1, 2] = slice %2 [2..3, 0..2]
      %7: f32[1, 2, 5] = gather %1, %6 axis=0
      %8: f32[2, 5] = reshape %7
      %9: i64[6] = input "idx2"
      %10: f32[6, 5] = gather %1, %9 axis=0
      %11: f32[2, 5] = slice %10 [0..2, 0..5]
      %12: i64[6] = input "idx3"
      %13: f32[6, 5] = gather %1, %12 axis=0
      %14: f32[6, 2] = slice %13 [0..6, 1..3]
      output step0 = %5
      output step2 = %8
      output first = %11
      output whole = %10
      output cols = %14
    "#);
}

#[test]
fn sums_of_zero_pads_that_tile_an_axis_become_a_concat() {
    // The gradient of a GRU's three gate slices of one [2, 6] product, and
    // sums that do not tile: a gap, an overlap, pads along two axes.
    let mut g = Graph::new("t");
    let parts: Vec<_> = (0..3).map(|i| g.input(&format!("p{i}"), DType::F32, shape(&[2, 2]))).collect();
    let pad = |g: &mut Graph, x, lo: usize, hi: usize| g.pad(x, &[0, lo], &[0, hi], &[0, 0], 0.0).unwrap();
    let a = pad(&mut g, parts[2], 4, 0);
    let b = pad(&mut g, parts[1], 2, 2);
    let c = pad(&mut g, parts[0], 0, 4);
    let ab = g.binary(BinaryOp::Add, a, b).unwrap();
    let tiled = g.binary(BinaryOp::Add, ab, c).unwrap();
    let gap = g.binary(BinaryOp::Add, a, c).unwrap();
    let overlap = g.binary(BinaryOp::Add, b, b).unwrap();
    let down = g.pad(parts[0], &[2, 0], &[0, 4], &[0, 0], 0.0).unwrap();
    let up = g.pad(parts[1], &[0, 0], &[2, 4], &[0, 0], 0.0).unwrap();
    let two_axes = g.binary(BinaryOp::Add, down, up).unwrap();
    g.set_output("tiled", tiled);
    g.set_output("gap", gap);
    g.set_output("overlap", overlap);
    g.set_output("two_axes", two_axes);
    insta::assert_snapshot!(printed(&g), @r#"
    graph t
      %0: f32[2, 2] = input "p0"
      %1: f32[2, 2] = input "p1"
      %2: f32[2, 2] = input "p2"
      %3: f32[2, 6] = pad %2 lo=[0, 4] hi=[0, 0] value=0
      %4: f32[2, 6] = pad %1 lo=[0, 2] hi=[0, 2] value=0
      %5: f32[2, 6] = pad %0 lo=[0, 0] hi=[0, 4] value=0
      %6: f32[2, 6] = concat %0, %1, %2 axis=1
      %7: f32[2, 6] = add %3, %5
      %8: f32[2, 6] = add %4, %4
      %9: f32[4, 6] = pad %0 lo=[2, 0] hi=[0, 4] value=0
      %10: f32[4, 6] = pad %1 lo=[0, 0] hi=[2, 4] value=0
      %11: f32[4, 6] = add %9, %10
      output tiled = %6
      output gap = %7
      output overlap = %8
      output two_axes = %11
    "#);
}
