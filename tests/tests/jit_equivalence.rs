//! The JIT against the reference interpreter: every primitive (in the
//! dtypes and layouts that exercise its code paths: vector and scalar
//! loops, tails, strided and broadcast operands, reductions along inner and
//! outer axes) and every model of `models/` (forward in evaluation mode, and
//! one whole training step: loss, outputs and every updated parameter).
//! Each also runs with its loop kernels through the GPU grid interpreter
//! (`Device::GRID`), which executes them as their GPU schedule maps them
//! onto threads, blocks and reduction trees.

use std::collections::HashMap;

use d2l::train::{TrainStage, stage_graph};
use d2l_dsl::LowerOptions;
use d2l_ir::{BinaryOp, CmpOp, DType, Graph, NodeId, Op, PoolKind, RandDist, ReduceOp, Shape, UnaryOp};
use d2l::Device;
use d2l_runtime::{Interpreter, Tensor, init_params};
use d2l_tests::{Rng, load, model_files};

fn shape(d: &[usize]) -> Shape {
    Shape(d.to_vec())
}

/// A random tensor for a leaf: floats in [-2, 2), i64 in `0..int_range`, bools.
fn random(rng: &mut Rng, dtype: DType, dims: &[usize], int_range: i64) -> Tensor {
    let n: usize = dims.iter().product();
    match dtype {
        DType::F32 => Tensor::from_f32(dims, (0..n).map(|_| (rng.next_f64() * 4.0 - 2.0) as f32).collect()),
        DType::F64 => Tensor::from_f64(dims, (0..n).map(|_| rng.next_f64() * 4.0 - 2.0).collect()),
        DType::I64 => Tensor::from_i64(dims, (0..n).map(|_| (rng.next_f64() * int_range as f64) as i64).collect()),
        DType::Bool => Tensor::from_bool(dims, (0..n).map(|_| rng.next_f64() < 0.5).collect()),
    }
}

/// Feeds for every input and parameter of `graph`; an index stays inside
/// the table it indexes (BERT's segments below 2, its positions below the
/// sequence length).
fn feeds_for(graph: &Graph, seed: u64, int_range: i64) -> HashMap<String, Tensor> {
    let mut rng = Rng(seed);
    let mut feeds = init_params(graph, seed);
    let bounds = d2l_tests::index_bounds(graph);
    for id in graph.ids() {
        let node = graph.node(id);
        if let Op::Input { name, .. } = &node.op {
            let range = bounds.get(name).map_or(int_range, |&b| b.min(int_range));
            feeds.insert(name.clone(), random(&mut rng, node.dtype, node.shape.dims(), range));
        }
    }
    feeds
}

/// Runs `graph` on the JIT and on the grid interpreter and compares every
/// output with the reference interpreter's, elementwise:
/// |got - interp| <= tol · (1 + |interp|), equal NaN-ness, equal ints.
fn check(name: &str, graph: &Graph, feeds: &HashMap<String, Tensor>, tol: f64) {
    check_with(name, graph, feeds, tol, None);
}

/// [`check`]; with `grid_norm`, the grid interpreter's outputs are compared
/// as wholes instead: ‖got − interp‖₂ <= grid_norm · ‖interp‖₂ + tol per
/// output. A GPU sums a block's partials as a tree, not in the
/// interpreter's order; in a deep network's training step those few-ulp
/// differences can flip a ReLU or max-pool decision near a tie and move
/// single values by percents (ResNet-18's: one update moved 4%, and so
/// does the JIT's when the input is scaled by 1 + 2e-7). A wrong mapping
/// moves whole outputs.
fn check_with(name: &str, graph: &Graph, feeds: &HashMap<String, Tensor>, tol: f64, grid_norm: Option<f64>) {
    // Every backend runs twice (the second run reuses every buffer and must
    // not see stale state; random ops draw the same stream twice on all sides).
    let mut interp = Interpreter::new(7);
    let mut want = Vec::new();
    for _ in 0..2 {
        want = interp.run(graph, feeds).unwrap_or_else(|e| panic!("{name}: interpreter: {e}"));
    }
    for device in [Device::JIT, Device::GRID] {
        let mut exe = match device {
            Device::GRID if grid_work(graph) > GRID_BUDGET => d2l_cpu::Jitted::compile_with(graph, 7, d2l_cpu::Loops::Grid).map(|j| Box::new(j) as Box<dyn d2l_runtime::Executable>),
            _ => device.compile(graph, 7),
        }
        .unwrap_or_else(|e| panic!("{name}: {device}: compile: {e}"));
        let mut got = Vec::new();
        for _ in 0..2 {
            exe.run_into(feeds, &mut got).unwrap_or_else(|e| panic!("{name}: {device}: {e}"));
        }
        assert_eq!(got.len(), want.len(), "{name}: number of outputs");
        for ((gn, g), (wn, w)) in got.iter().zip(&want) {
            assert_eq!(gn, wn, "{name}: output order");
            assert_eq!((g.dtype(), g.shape()), (w.dtype(), w.shape()), "{name}: output {wn} type");
            let (gv, wv) = (g.to_f64_vec(), w.to_f64_vec());
            if let (Device::GRID, Some(rel)) = (device, grid_norm) {
                let nans = |v: &[f64]| v.iter().map(|x| x.is_nan()).collect::<Vec<bool>>();
                assert_eq!(nans(&gv), nans(&wv), "{name}: output `{wn}` {device}: NaNs differ");
                let norm = |v: &mut dyn Iterator<Item = f64>| v.filter(|x| !x.is_nan()).map(|x| x * x).sum::<f64>().sqrt();
                let (diff, size) = (norm(&mut gv.iter().zip(&wv).map(|(a, b)| a - b)), norm(&mut wv.iter().copied()));
                assert!(diff <= rel * size + tol, "{name}: output `{wn}` {device}: ‖got − interpreter‖ {diff:e} vs ‖interpreter‖ {size:e} (rel {rel})");
                continue;
            }
            // The grid sums products and convolutions as trees and in other
            // orders than the interpreter's: a few f32 ulps more of slack.
            let tol = if device == Device::GRID { tol.max(5e-5) } else { tol };
            for (i, (a, b)) in gv.iter().zip(&wv).enumerate() {
                let ok = if a.is_nan() || b.is_nan() { a.is_nan() && b.is_nan() } else { (a - b).abs() <= tol * (1.0 + b.abs()) || a == b };
                assert!(ok, "{name}: output `{wn}`[{i}] {device} {a} vs interpreter {b} (tol {tol})");
            }
        }
    }
}

/// Instructions the grid interpreter would execute for one run of
/// `graph`'s GPU plan.
fn grid_work(graph: &Graph) -> u64 {
    let fusion = d2l_passes::fusion::fuse(graph);
    d2l_kernels::lower::plan(graph, &fusion).map_or(0, |plan| d2l_kernels::gpu_plan::GpuPlan::of(&plan, 7).work())
}

/// Most grid-interpreter work per run checked through the whole GPU plan.
/// Above it (the big CNNs' convolutions, BERT's vocabulary-sized gathers:
/// minutes each on the interpreter), only the loop kernels run on the grid
/// interpreter and the JIT does the products, convolutions and routines;
/// the primitive tests above cover those GPU forms.
const GRID_BUDGET: u64 = 100_000_000;

/// One-op graphs: the op applied to inputs of the given types.
struct Case {
    g: Graph,
    int_range: i64,
    tol: f64,
}

impl Case {
    fn new(name: &str) -> Case {
        Case { g: Graph::new(name), int_range: 5, tol: 2e-6 }
    }
    fn input(&mut self, name: &str, dtype: DType, dims: &[usize]) -> NodeId {
        self.g.input(name, dtype, shape(dims))
    }
    fn out(mut self, id: NodeId) {
        self.g.set_output("out", id);
        let name = self.g.name.clone();
        let feeds = feeds_for(&self.g, 11, self.int_range);
        check(&name, &self.g, &feeds, self.tol);
    }
}

#[test]
fn unary_ops_in_vector_and_scalar_loops() {
    use UnaryOp::*;
    for op in [Neg, Exp, Log, Sqrt, Tanh, Sigmoid, Abs, Sin, Cos] {
        // 37 elements: vector main loop, vector tail and scalar tail.
        for dims in [&[37][..], &[3, 5], &[]] {
            let mut c = Case::new(&format!("{op:?}{dims:?}"));
            let x = c.input("x", DType::F32, dims);
            // Log and sqrt of negatives are NaN on both sides, which `check` compares.
            let y = c.g.unary(op, x).unwrap();
            c.out(y);
        }
        let mut c = Case::new(&format!("{op:?} f64"));
        let x = c.input("x", DType::F64, &[9]);
        let y = c.g.unary(op, x).unwrap();
        c.out(y);
    }
    for op in [Neg, Abs] {
        let mut c = Case::new(&format!("{op:?} i64"));
        let x = c.input("x", DType::I64, &[9]);
        let y = c.g.unary(op, x).unwrap();
        c.out(y);
    }
}

#[test]
fn binary_compare_select_and_cast() {
    use BinaryOp::*;
    for op in [Add, Sub, Mul, Div, Max, Min, Pow] {
        for dtype in [DType::F32, DType::F64] {
            let mut c = Case::new(&format!("{op:?} {dtype}"));
            let a = c.input("a", dtype, &[4, 9]);
            let b = c.input("b", dtype, &[4, 9]);
            let y = c.g.binary(op, a, b).unwrap();
            c.out(y);
        }
    }
    for op in [Add, Sub, Mul, Div, Max, Min] {
        let mut c = Case::new(&format!("{op:?} i64"));
        c.int_range = 7;
        let a = c.input("a", DType::I64, &[13]);
        let b = c.input("b", DType::I64, &[13]);
        // Keep divisors nonzero: b + 1.
        let one = c.g.full(1.0, DType::I64, shape(&[13]));
        let b = c.g.binary(Add, b, one).unwrap();
        let y = c.g.binary(op, a, b).unwrap();
        c.out(y);
    }
    for op in [Max, Min] {
        let mut c = Case::new(&format!("{op:?} bool"));
        let a = c.input("a", DType::Bool, &[11]);
        let b = c.input("b", DType::Bool, &[11]);
        let y = c.g.binary(op, a, b).unwrap();
        c.out(y);
    }
    for op in [CmpOp::Eq, CmpOp::Ne, CmpOp::Lt, CmpOp::Le, CmpOp::Gt, CmpOp::Ge] {
        for dtype in [DType::F32, DType::I64, DType::Bool] {
            let mut c = Case::new(&format!("{op:?} {dtype}"));
            c.int_range = 3;
            let a = c.input("a", dtype, &[21]);
            let b = c.input("b", dtype, &[21]);
            let m = c.g.compare(op, a, b).unwrap();
            // Also through select, in a vector loop (f32) and as a stored mask.
            let x = c.input("x", DType::F32, &[21]);
            let zero = c.g.full(0.0, DType::F32, shape(&[21]));
            let s = c.g.select(m, x, zero).unwrap();
            c.g.set_output("mask", m);
            c.out(s);
        }
    }
    // An index along the innermost axis against a per-row integer (one-hot
    // masks, a label's score, length masks): the JIT runs it in f32 lanes,
    // exact below 2^24; rows of 37 (vector main loop and both tails), row
    // integers inside the index range, beyond it on both sides, and past
    // 2^24 where f32 rounds.
    for op in [CmpOp::Eq, CmpOp::Ne, CmpOp::Lt, CmpOp::Le, CmpOp::Gt, CmpOp::Ge] {
        let rows = [3i64, 0, 36, 37, -1, -(1 << 25), (1 << 24) + 1, 1 << 24, (1 << 24) - 1, 20];
        let mut c = Case::new(&format!("index {op:?} row"));
        let n = rows.len();
        let row = c.input("row", DType::I64, &[n, 1]);
        let row = c.g.broadcast(row, shape(&[n, 37])).unwrap();
        let index = c.g.iota(shape(&[n, 37]), 1, DType::I64).unwrap();
        let m = c.g.compare(op, index, row).unwrap();
        let x = c.input("x", DType::F32, &[n, 37]);
        let zero = c.g.full(0.0, DType::F32, shape(&[n, 37]));
        let s = c.g.select(m, x, zero).unwrap();
        // The index as floats too, and a sum of the picked values per row.
        let f = c.g.iota(shape(&[n, 37]), 1, DType::F32).unwrap();
        let y = c.g.binary(Add, s, f).unwrap();
        let total = c.g.reduce(ReduceOp::Sum, y, &[1]).unwrap();
        c.g.set_output("mask", m);
        c.g.set_output("picked", s);
        c.g.set_output("out", total);
        let mut feeds = feeds_for(&c.g, 3, 5);
        feeds.insert("row".into(), Tensor::from_i64(&[n, 1], rows.to_vec()));
        check(&c.g.name.clone(), &c.g, &feeds, 2e-6);
    }
    let dtypes = [DType::F32, DType::F64, DType::I64, DType::Bool];
    for from in dtypes {
        for to in dtypes {
            let mut c = Case::new(&format!("cast {from} -> {to}"));
            c.int_range = 3;
            let x = c.input("x", from, &[10]);
            let y = c.g.cast(x, to);
            c.out(y);
        }
    }
}

#[test]
fn integer_division_by_zero_is_an_error() {
    let mut g = Graph::new("div0");
    let a = g.input("a", DType::I64, shape(&[3]));
    let b = g.input("b", DType::I64, shape(&[3]));
    let q = g.binary(BinaryOp::Div, a, b).unwrap();
    g.set_output("q", q);
    let feeds: HashMap<String, Tensor> = [("a".to_string(), Tensor::from_i64(&[3], vec![1, 2, 3])), ("b".to_string(), Tensor::from_i64(&[3], vec![1, 0, 1]))].into();
    let mut exe = Device::JIT.compile(&g, 0).unwrap();
    let err = exe.run(&feeds).unwrap_err().to_string();
    assert!(err.contains("division by zero"), "{err}");
}

#[test]
fn reductions_along_inner_outer_and_several_axes() {
    for op in [ReduceOp::Sum, ReduceOp::Max] {
        for axes in [&[0][..], &[1], &[2], &[0, 2], &[0, 1, 2], &[1, 2]] {
            for dtype in [DType::F32, DType::I64] {
                let mut c = Case::new(&format!("{op:?}{axes:?} {dtype}"));
                let x = c.input("x", dtype, &[3, 5, 19]);
                // An elementwise producer fused into the reduction, stored too.
                let y = c.g.unary(UnaryOp::Neg, x).unwrap();
                let r = c.g.reduce(op, y, axes).unwrap();
                c.g.set_output("neg", y);
                c.out(r);
            }
        }
    }
    let mut c = Case::new("argmax");
    let x = c.input("x", DType::F32, &[4, 7]);
    let y = c.g.argmax(x, 1).unwrap();
    c.out(y);
}

#[test]
fn layout_ops_as_views_and_copies() {
    let mut c = Case::new("reshape of a transpose");
    let x = c.input("x", DType::F32, &[3, 4]);
    let t = c.g.permute(x, &[1, 0]).unwrap();
    let r = c.g.reshape(t, shape(&[12])).unwrap();
    let e = c.g.unary(UnaryOp::Exp, r).unwrap();
    c.g.set_output("flat", r);
    c.out(e);

    let mut c = Case::new("broadcast and strided slice");
    let x = c.input("x", DType::F32, &[6, 1]);
    let b = c.g.broadcast(x, shape(&[2, 6, 5])).unwrap();
    let s = c.g.slice(b, &[0, 1, 0], &[2, 6, 5], &[1, 2, 2]).unwrap();
    let y = c.input("y", DType::F32, &[2, 3, 3]);
    let z = c.g.binary(BinaryOp::Mul, s, y).unwrap();
    c.g.set_output("slice", s);
    c.out(z);

    let mut c = Case::new("pad with interior");
    let x = c.input("x", DType::F32, &[2, 3, 3]);
    let p = c.g.pad(x, &[0, 1, 2], &[1, 0, 1], &[0, 1, 2], 0.5).unwrap();
    c.out(p);

    // A sum of interior pads (pooling's gradient) is one routine; a pad
    // that is also used elsewhere stays a kernel of its own.
    let mut c = Case::new("sum of pads");
    let x = c.input("x", DType::F32, &[2, 3, 4, 4]);
    let y = c.input("y", DType::F32, &[2, 3, 4, 4]);
    let pads: Vec<NodeId> = [(0, 1), (1, 0), (1, 1)]
        .iter()
        .map(|&(a, b)| c.g.pad(if a == b { y } else { x }, &[0, 0, a, b], &[0, 0, 1 - a, 1 - b], &[0, 0, 1, 1], 0.0).unwrap())
        .collect();
    let s = c.g.binary(BinaryOp::Add, pads[0], pads[1]).unwrap();
    let s = c.g.binary(BinaryOp::Add, s, pads[2]).unwrap();
    let shared = c.g.pad(x, &[0, 0, 0, 0], &[0, 0, 1, 1], &[0, 0, 1, 1], 0.0).unwrap();
    let t = c.g.binary(BinaryOp::Add, s, shared).unwrap();
    c.g.set_output("shared pad", shared);
    c.out(t);

    let mut c = Case::new("concat of a view");
    let x = c.input("x", DType::F32, &[2, 3]);
    let y = c.input("y", DType::F32, &[3, 2]);
    let yt = c.g.permute(y, &[1, 0]).unwrap();
    let z = c.g.concat(&[x, yt, x], 1).unwrap();
    c.out(z);

    let mut c = Case::new("gather and scatter_add");
    c.int_range = 4;
    let x = c.input("x", DType::F32, &[3, 4, 2]);
    let idx = c.input("idx", DType::I64, &[5]);
    let g = c.g.gather(x, idx, 1).unwrap();
    let s = c.g.scatter_add(idx, g, shape(&[3, 4, 2]), 1).unwrap();
    c.g.set_output("gathered", g);
    c.out(s);

    let mut c = Case::new("full, iota and stop_gradient outputs");
    let x = c.input("x", DType::F32, &[2, 3]);
    let f = c.g.full(1.5, DType::F32, shape(&[2, 3]));
    let i = c.g.iota(shape(&[2, 3]), 1, DType::F32).unwrap();
    let s = c.g.stop_gradient(x);
    let y = c.g.binary(BinaryOp::Add, f, i).unwrap();
    c.g.set_output("iota", i);
    c.g.set_output("full", f);
    c.g.set_output("x again", s);
    c.g.set_output("x", x);
    c.out(y);
}

/// Gathers with indices affine in their position are strided views (no
/// routine, no index buffer): a flip, a strided pick along a middle axis, a
/// 2-D index from broadcast iotas, feeding a loop and a matmul.
#[test]
fn affine_gathers_read_as_views() {
    let mut c = Case::new("affine gathers");
    let x = c.input("x", DType::F32, &[4, 6, 3]);
    let i6 = c.g.iota(shape(&[6]), 0, DType::I64).unwrap();
    let five = c.g.full(5.0, DType::I64, shape(&[6]));
    let rev = c.g.binary(BinaryOp::Sub, five, i6).unwrap();
    let flipped = c.g.gather(x, rev, 1).unwrap();
    let i3 = c.g.iota(shape(&[3]), 0, DType::I64).unwrap();
    let two = c.g.full(2.0, DType::I64, shape(&[3]));
    let one = c.g.full(1.0, DType::I64, shape(&[3]));
    let odd = c.g.binary(BinaryOp::Mul, i3, two).unwrap();
    let odd = c.g.binary(BinaryOp::Add, odd, one).unwrap();
    let picked = c.g.gather(flipped, odd, 1).unwrap();
    let rows = c.g.iota(shape(&[2, 3]), 0, DType::I64).unwrap();
    let cols = c.g.iota(shape(&[2, 3]), 1, DType::I64).unwrap();
    let grid = c.g.binary(BinaryOp::Add, rows, cols).unwrap();
    let grid_picked = c.g.gather(x, grid, 1).unwrap();
    let e = c.g.unary(UnaryOp::Exp, picked).unwrap();
    c.g.set_output("grid", grid_picked);
    c.g.set_output("exp", e);
    let w = c.input("w", DType::F32, &[3, 5]);
    let flat = c.g.reshape(picked, shape(&[12, 3])).unwrap();
    let y = c.g.matmul(flat, w).unwrap();
    c.g.set_output("y", y);
    let fused = d2l_passes::fusion::fuse(&c.g);
    let routines: Vec<String> = fused.kernels.iter().filter_map(|k| k.root).map(|(r, _)| c.g.node(r).op.mnemonic().to_string()).collect();
    assert!(!routines.iter().any(|r| r == "gather"), "gathers left as routines: {routines:?}");
    c.out(y);
}

#[test]
fn gather_out_of_range_is_an_error() {
    let mut g = Graph::new("bad index");
    let x = g.input("x", DType::F32, shape(&[3]));
    let i = g.input("i", DType::I64, shape(&[2]));
    let y = g.gather(x, i, 0).unwrap();
    g.set_output("y", y);
    let feeds: HashMap<String, Tensor> = [("x".to_string(), Tensor::from_f32(&[3], vec![1.0, 2.0, 3.0])), ("i".to_string(), Tensor::from_i64(&[2], vec![0, 3]))].into();
    let err = Device::JIT.compile(&g, 0).unwrap().run(&feeds).unwrap_err().to_string();
    assert!(err.contains("index 3 is out of range"), "{err}");
}

#[test]
fn matmul_plain_batched_and_transposed() {
    for (m, k, n) in [(1, 1, 1), (5, 7, 3), (33, 70, 20), (64, 300, 130)] {
        let mut c = Case::new(&format!("matmul {m}x{k}x{n}"));
        let a = c.input("a", DType::F32, &[m, k]);
        let b = c.input("b", DType::F32, &[n, k]);
        let bt = c.g.permute(b, &[1, 0]).unwrap();
        let y = c.g.matmul(a, bt).unwrap();
        // A bias + relu epilogue.
        let bias = c.input("bias", DType::F32, &[n]);
        let bias = c.g.broadcast(bias, shape(&[m, n])).unwrap();
        let z = c.g.binary(BinaryOp::Add, y, bias).unwrap();
        let zero = c.g.full(0.0, DType::F32, shape(&[m, n]));
        let z = c.g.binary(BinaryOp::Max, z, zero).unwrap();
        c.out(z);
    }
    let mut c = Case::new("batched matmul");
    let a = c.input("a", DType::F32, &[2, 3, 4, 5]);
    let b = c.input("b", DType::F32, &[2, 3, 5, 6]);
    let y = c.g.matmul(a, b).unwrap();
    c.out(y);
    let mut c = Case::new("f64 matmul");
    let a = c.input("a", DType::F64, &[3, 4]);
    let b = c.input("b", DType::F64, &[4, 2]);
    let y = c.g.matmul(a, b).unwrap();
    c.out(y);
}

#[test]
fn convolution_and_pooling() {
    for (stride, dtype) in [([1, 1], DType::F32), ([2, 1], DType::F32), ([1, 2], DType::F64)] {
        let mut c = Case::new(&format!("conv2d {stride:?} {dtype}"));
        let x = c.input("x", dtype, &[3, 2, 9, 8]);
        let w = c.input("w", dtype, &[4, 2, 3, 2]);
        let y = c.g.conv2d(x, w, stride).unwrap();
        c.out(y);
    }
    // Wide rows (a full 16-pixel block and a partial one) and output
    // channels in a full block of 6 and a partial one.
    let mut c = Case::new("conv2d wide");
    let x = c.input("x", DType::F32, &[2, 3, 20, 21]);
    let w = c.input("w", DType::F32, &[8, 3, 3, 4]);
    let y = c.g.conv2d(x, w, [1, 1]).unwrap();
    c.out(y);
    // A zero pad of the input is applied by the convolution: uneven pads,
    // on the direct path, the GEMM path (stride 2) and in f64.
    for (stride, dtype, w_dims) in [([1, 1], DType::F32, [7, 2, 3, 4]), ([2, 2], DType::F32, [3, 2, 3, 3]), ([1, 1], DType::F64, [3, 2, 2, 2]), ([1, 1], DType::F32, [2, 2, 6, 6]), ([1, 1], DType::F32, [2, 2, 8, 20])] {
        let mut c = Case::new(&format!("conv2d of a padded input {stride:?} {dtype} {w_dims:?}"));
        // Long reductions, summed in another order than the interpreter's.
        c.tol = 1e-5;
        let x = c.input("x", dtype, &[2, 2, 7, 19]);
        let w = c.input("w", dtype, &w_dims);
        let p = c.g.pad(x, &[0, 0, 2, 0], &[0, 0, 1, 3], &[0, 0, 0, 0], 0.0).unwrap();
        let y = c.g.conv2d(p, w, stride).unwrap();
        c.out(y);
    }
    // Wide convolutions go through the GEMM: one product over all images
    // when the output is small (6x6), one per image when it is not (18x18).
    for (x_dims, w_dims) in [([3, 40, 8, 8], [30, 40, 3, 3]), ([2, 3, 20, 20], [30, 3, 3, 3])] {
        let mut c = Case::new(&format!("conv2d on the GEMM, x {x_dims:?}, w {w_dims:?}"));
        c.tol = 1e-5;
        let x = c.input("x", DType::F32, &x_dims);
        let w = c.input("w", DType::F32, &w_dims);
        let y = c.g.conv2d(x, w, [1, 1]).unwrap();
        c.out(y);
    }
    // A pad taller than the kernel: whole output rows read only zeros (an
    // odd number of them, so the direct kernel pairs the last with nothing).
    let mut c = Case::new("conv2d with rows on the pad only");
    let x = c.input("x", DType::F32, &[2, 2, 3, 9]);
    let w = c.input("w", DType::F32, &[3, 2, 3, 3]);
    let p = c.g.pad(x, &[0, 0, 4, 1], &[0, 0, 4, 0], &[0, 0, 0, 0], 0.0).unwrap();
    let y = c.g.conv2d(p, w, [1, 1]).unwrap();
    c.out(y);
    // The weight-gradient form autodiff produces: both operands permuted.
    let mut c = Case::new("conv2d of permuted operands");
    let x = c.input("x", DType::F32, &[3, 2, 8, 8]);
    let dy = c.input("dy", DType::F32, &[3, 4, 6, 6]);
    let xt = c.g.permute(x, &[1, 0, 2, 3]).unwrap();
    let dyt = c.g.permute(dy, &[1, 0, 2, 3]).unwrap();
    let dw = c.g.conv2d(xt, dyt, [1, 1]).unwrap();
    let dw = c.g.permute(dw, &[1, 0, 2, 3]).unwrap();
    c.out(dw);
    // The same on the direct weight-gradient kernel's edges: every kernel
    // width it takes (1-7) with partial channel blocks, rows with a masked
    // tail, a padded input (LeNet's first layer); and on the GEMM for a
    // kernel wider than 7 and for many channel pairs.
    let mut cases: Vec<([usize; 4], [usize; 4], usize)> = (1..=7).map(|k| ([3, 2, 5, 8 + k], [3, 5, 4, 9], 0)).collect();
    cases.extend([([5, 3, 12, 13], [5, 7, 8, 9], 0), ([4, 1, 28, 28], [4, 6, 28, 28], 2), ([2, 3, 12, 12], [2, 2, 4, 4], 0), ([2, 17, 6, 6], [2, 16, 4, 4], 0)]);
    for (x_dims, dy_dims, pad) in cases {
        let mut c = Case::new(&format!("weight gradient of x {x_dims:?}, dy {dy_dims:?}, pad {pad}"));
        // Sums of up to 3,136 products of values in [-2, 2), in f32, in
        // another order than the interpreter's: rounding reaches ~3e-5.
        c.tol = 1e-4;
        let x = c.input("x", DType::F32, &x_dims);
        let dy = c.input("dy", DType::F32, &dy_dims);
        let x = if pad > 0 { c.g.pad(x, &[0, 0, pad, pad], &[0, 0, pad, pad], &[0, 0, 0, 0], 0.0).unwrap() } else { x };
        let xt = c.g.permute(x, &[1, 0, 2, 3]).unwrap();
        let dyt = c.g.permute(dy, &[1, 0, 2, 3]).unwrap();
        let dw = c.g.conv2d(xt, dyt, [1, 1]).unwrap();
        c.out(dw);
    }
    for kind in [PoolKind::Max, PoolKind::Avg] {
        let mut c = Case::new(&format!("{kind:?} pool"));
        let x = c.input("x", DType::F32, &[2, 3, 7, 6]);
        let y = c.g.pool2d(kind, x, [3, 2], [2, 2]).unwrap();
        c.out(y);
    }
}

#[test]
fn random_numbers_match_the_interpreter_stream() {
    let mut c = Case::new("rand");
    let u = c.g.rand(RandDist::Uniform, DType::F32, shape(&[5, 3])).unwrap();
    let n = c.g.rand(RandDist::Normal, DType::F32, shape(&[7])).unwrap();
    // f64 takes two words per number, and an odd count leaves the stream
    // mid-block for the next draw.
    let d = c.g.rand(RandDist::Uniform, DType::F64, shape(&[9])).unwrap();
    let after = c.g.rand(RandDist::Uniform, DType::F32, shape(&[21])).unwrap();
    c.g.set_output("uniform", u);
    c.g.set_output("uniform_f64", d);
    c.g.set_output("uniform_after", after);
    c.out(n);
}

/// Every model: the forward pass (evaluation mode) and a training step.
#[test]
fn every_model_forward_and_training_step() {
    for path in model_files() {
        let file = path.file_name().and_then(|f| f.to_str()).expect("utf-8 name").to_string();
        let program = load(&file);
        for model in program.model_names().to_vec() {
            let started = std::time::Instant::now();
            let forward = program
                .lower(&model, &LowerOptions { default_dim: Some(3), ..LowerOptions::default() })
                .unwrap_or_else(|e| panic!("{model}: {e}"))
                .graph;
            let forward = d2l_passes::simplify(&forward);
            check(&format!("{model} forward"), &forward, &feeds_for(&forward, 5, 10), 1e-4);
            // Every model in models/ trains; a train block that does not
            // load is a failure here, not a reason to skip the step.
            let step = stage_graph(&program, &model, TrainStage::Opt, 3, &Default::default()).unwrap_or_else(|e| panic!("{model}: {e}"));
            check_with(&format!("{model} training step"), &step, &feeds_for(&step, 6, 10), 1e-4, Some(2e-2));
            eprintln!("{model}: {:.1} s", started.elapsed().as_secs_f64());
        }
    }
}
