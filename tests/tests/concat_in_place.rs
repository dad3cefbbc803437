//! Concats written in place (`d2l_passes::memory`): a value only concats
//! read is stored by its loop straight into each of them; one that anything
//! else reads, or that a concat takes twice, keeps its buffer and is copied.
//! The JIT's results equal the interpreter's either way.

use std::collections::HashMap;

use d2l_ir::{BinaryOp, DType, Graph, NodeId, Shape, UnaryOp};
use d2l::Device;
use d2l_runtime::{Interpreter, Tensor};

fn graph() -> (Graph, [NodeId; 6]) {
    let mut g = Graph::new("concats");
    let x = g.input("x", DType::F32, Shape(vec![4, 3]));
    let y = g.input("y", DType::F32, Shape(vec![4, 3]));
    // p: read by two concats; q: by one; r: by a concat and a sum; s: twice by one concat.
    let p = g.unary(UnaryOp::Tanh, x).unwrap();
    let q = g.unary(UnaryOp::Exp, y).unwrap();
    let r = g.binary(BinaryOp::Mul, x, y).unwrap();
    let s = g.unary(UnaryOp::Sigmoid, y).unwrap();
    let c1 = g.concat(&[p, q], 1).unwrap();
    let c2 = g.concat(&[r, p], 1).unwrap();
    let c3 = g.concat(&[s, s], 0).unwrap();
    // u and v: blocks along the first axis.
    let u = g.unary(UnaryOp::Abs, x).unwrap();
    let v = g.unary(UnaryOp::Neg, y).unwrap();
    let c4 = g.concat(&[u, v], 0).unwrap();
    let c4 = g.unary(UnaryOp::Tanh, c4).unwrap();
    let total = g.reduce(d2l_ir::ReduceOp::Sum, r, &[0, 1]).unwrap();
    let a = g.binary(BinaryOp::Mul, c1, c2).unwrap();
    let b = g.unary(UnaryOp::Neg, c3).unwrap();
    g.set_output("a", a);
    g.set_output("b", b);
    g.set_output("total", total);
    g.set_output("c", c4);
    (g, [p, q, r, s, u, v])
}

#[test]
fn values_only_concats_read_are_stored_into_them() {
    let (g, [p, q, r, s, u, v]) = graph();
    let plan = d2l_passes::memory::plan(&g, &d2l_passes::fusion::fuse(&g));
    let mut stored: Vec<NodeId> = plan.stored_into.keys().copied().collect();
    stored.sort();
    assert_eq!(stored, [p, q, u, v], "r is summed too; s is taken twice");
    assert_eq!(plan.stored_into[&p].len(), 2, "p goes into both concats");
    for id in [p, q, u, v] {
        assert!(!plan.offsets.contains_key(&id), "no buffer of its own");
    }
    for id in [r, s] {
        assert!(plan.offsets.contains_key(&id));
    }
}

#[test]
fn the_jit_gives_the_interpreters_values() {
    let (g, _) = graph();
    let wave = |n: usize, f: f32| Tensor::from_f32(&[4, 3], (0..n).map(|i| (i as f32 * f).sin()).collect());
    let feeds: HashMap<String, Tensor> = [("x".to_string(), wave(12, 0.7)), ("y".to_string(), wave(12, 1.3))].into();
    let want: HashMap<String, Tensor> = Interpreter::new(0).run(&g, &feeds).unwrap().into_iter().collect();
    let got: HashMap<String, Tensor> = Device::JIT.compile(&g, 0).unwrap().run(&feeds).unwrap().into_iter().collect();
    for name in ["a", "b", "c", "total"] {
        let (w, o) = (want[name].to_f64_vec(), got[name].to_f64_vec());
        assert_eq!(w.len(), o.len());
        for (i, (a, b)) in w.iter().zip(&o).enumerate() {
            assert!((a - b).abs() <= 1e-6 * (1.0 + a.abs()), "{name}[{i}]: interpreter {a}, JIT {b}");
        }
    }
}
