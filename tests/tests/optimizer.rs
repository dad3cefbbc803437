//! The optimizer update as graph: each optimizer's step against the same
//! step computed by hand on the host, including state carried across steps.

use std::collections::HashMap;

use d2l_ir::{BinaryOp, DType, Graph, Init, InputRole, Op, ReduceOp, Shape};
use d2l_passes::optimizer::{Optimizer, UpdateSpec, append_update};
use d2l_passes::{DiffOptions, differentiate_params};
use d2l_runtime::{Interpreter, Tensor, apply_updates};

/// loss = sum(w * c) + sum(b * c2): gradients are the constants c and c2.
fn linear_loss() -> Graph {
    let mut g = Graph::new("t");
    let w = g.param("w", DType::F32, Shape(vec![2, 2]), Init::Zeros).unwrap();
    let b = g.param("b", DType::F32, Shape(vec![2]), Init::Zeros).unwrap();
    let c = g.input("c", DType::F32, Shape(vec![2, 2]));
    let c2 = g.input("c2", DType::F32, Shape(vec![2]));
    let wc = g.binary(BinaryOp::Mul, w, c).unwrap();
    let bc = g.binary(BinaryOp::Mul, b, c2).unwrap();
    let s1 = g.reduce(ReduceOp::Sum, wc, &[0, 1]).unwrap();
    let s1 = g.reshape(s1, Shape::scalar()).unwrap();
    let s2 = g.reduce(ReduceOp::Sum, bc, &[0]).unwrap();
    let s2 = g.reshape(s2, Shape::scalar()).unwrap();
    let loss = g.binary(BinaryOp::Add, s1, s2).unwrap();
    g.set_output("loss", loss);
    g
}

/// Runs `steps` updates; returns (w, b) after each.
fn run(spec: &UpdateSpec, w0: [f32; 4], b0: [f32; 2], grad_w: [f32; 4], grad_b: [f32; 2], steps: usize) -> Vec<(Vec<f64>, Vec<f64>)> {
    run_with_state(spec, w0, b0, grad_w, grad_b, steps).into_iter().map(|fed| (fed["w"].clone(), fed["b"].clone())).collect()
}

/// Runs `steps` updates; returns every fed tensor (parameters and
/// optimizer state) after each.
fn run_with_state(spec: &UpdateSpec, w0: [f32; 4], b0: [f32; 2], grad_w: [f32; 4], grad_b: [f32; 2], steps: usize) -> Vec<HashMap<String, Vec<f64>>> {
    let forward = linear_loss();
    let grads = differentiate_params(&forward, "loss", &DiffOptions::default()).unwrap();
    let mut graph = grads.graph;
    let pairs: Vec<_> = graph.params().into_iter().zip(grads.grads.iter().copied()).collect();
    append_update(&mut graph, &pairs, spec).unwrap();
    let mut feeds: HashMap<String, Tensor> = HashMap::new();
    feeds.insert("w".into(), Tensor::from_f32(&[2, 2], w0.to_vec()));
    feeds.insert("b".into(), Tensor::from_f32(&[2], b0.to_vec()));
    feeds.insert("c".into(), Tensor::from_f32(&[2, 2], grad_w.to_vec()));
    feeds.insert("c2".into(), Tensor::from_f32(&[2], grad_b.to_vec()));
    // Optimizer slots start at zero.
    for id in graph.ids() {
        if let Op::Input { name, role: InputRole::OptimizerSlot { .. } } = &graph.node(id).op {
            feeds.insert(name.clone(), Tensor::zeros(graph.dtype(id), graph.shape(id).dims()));
        }
    }
    let mut history = Vec::new();
    for step in 1..=steps {
        feeds.insert("step".into(), Tensor::from_f32(&[], vec![step as f32]));
        let mut out = Interpreter::new(0).run(&graph, &feeds).unwrap();
        apply_updates(&graph, &mut out, &mut feeds);
        history.push(feeds.iter().map(|(name, t)| (name.clone(), t.to_f64_vec())).collect());
    }
    history
}

fn close(a: &[f64], b: &[f64]) {
    assert_eq!(a.len(), b.len(), "{a:?} vs {b:?}");
    for (x, y) in a.iter().zip(b) {
        assert!((x - y).abs() < 1e-5 * (1.0 + y.abs()), "{a:?} vs {b:?}");
    }
}

const W0: [f32; 4] = [1.0, -2.0, 0.5, 3.0];
const B0: [f32; 2] = [0.1, -0.1];
const GW: [f32; 4] = [0.5, -1.0, 2.0, 0.0];
const GB: [f32; 2] = [1.0, -3.0];

#[test]
fn sgd_with_momentum_and_weight_decay() {
    let mut spec = UpdateSpec::new(Optimizer::Sgd { lr: 0.1, momentum: 0.9 });
    spec.weight_decay = 0.01;
    let got = run(&spec, W0, B0, GW, GB, 3);
    // torch.optim.SGD: g = grad + wd * p; v = mu * v + g; p -= lr * v.
    let (mut w, mut b): (Vec<f64>, Vec<f64>) = (W0.iter().map(|&x| x as f64).collect(), B0.iter().map(|&x| x as f64).collect());
    let (mut vw, mut vb) = (vec![0.0; 4], vec![0.0; 2]);
    for (gw, gb) in &got {
        for i in 0..4 {
            vw[i] = 0.9 * vw[i] + GW[i] as f64 + 0.01 * w[i];
            w[i] -= 0.1 * vw[i];
        }
        for i in 0..2 {
            vb[i] = 0.9 * vb[i] + GB[i] as f64 + 0.01 * b[i];
            b[i] -= 0.1 * vb[i];
        }
        close(gw, &w);
        close(gb, &b);
    }
}

#[test]
fn adam_matches_torch_formula() {
    let spec = UpdateSpec::new(Optimizer::Adam { lr: 0.01, beta1: 0.9, beta2: 0.999, eps: 1e-8 });
    let got = run_with_state(&spec, W0, B0, GW, GB, 3);
    // torch.optim.Adam on every parameter: its value and both moments.
    let mut want: Vec<(&str, Vec<f64>, Vec<f64>)> = vec![("w", W0.iter().map(|&x| x as f64).collect(), GW.iter().map(|&g| g as f64).collect()), ("b", B0.iter().map(|&x| x as f64).collect(), GB.iter().map(|&g| g as f64).collect())];
    let mut moments: Vec<(Vec<f64>, Vec<f64>)> = want.iter().map(|(_, p, _)| (vec![0.0; p.len()], vec![0.0; p.len()])).collect();
    for (t, fed) in got.iter().enumerate() {
        let t = (t + 1) as f64;
        for ((name, p, g), (m, v)) in want.iter_mut().zip(moments.iter_mut()) {
            for i in 0..p.len() {
                m[i] = 0.9 * m[i] + 0.1 * g[i];
                v[i] = 0.999 * v[i] + 0.001 * g[i] * g[i];
                let (mh, vh) = (m[i] / (1.0 - 0.9f64.powf(t)), v[i] / (1.0 - 0.999f64.powf(t)));
                p[i] -= 0.01 * mh / (vh.sqrt() + 1e-8);
            }
            close(&fed[*name], p);
            close(&fed[&format!("{name}:m")], m);
            close(&fed[&format!("{name}:v")], v);
        }
    }
}

#[test]
fn global_norm_clipping_scales_all_gradients() {
    let mut spec = UpdateSpec::new(Optimizer::Sgd { lr: 1.0, momentum: 0.0 });
    spec.clip_norm = Some(1.0);
    let got = run(&spec, W0, B0, GW, GB, 1);
    let norm = GW.iter().chain(&GB).map(|&g| (g as f64).powi(2)).sum::<f64>().sqrt();
    let scale = 1.0 / (norm + 1e-6);
    let w: Vec<f64> = (0..4).map(|i| W0[i] as f64 - scale * GW[i] as f64).collect();
    let b: Vec<f64> = (0..2).map(|i| B0[i] as f64 - scale * GB[i] as f64).collect();
    close(&got[0].0, &w);
    close(&got[0].1, &b);
}

#[test]
fn decay_of_weights_only_and_per_parameter_learning_rates() {
    let mut spec = UpdateSpec::new(Optimizer::Sgd { lr: 0.1, momentum: 0.0 });
    spec.weight_decay = 1.0;
    spec.decay_weights_only = true;
    spec.lr_scale = vec![("b".into(), 10.0)];
    let got = run(&spec, W0, B0, GW, GB, 1);
    let w: Vec<f64> = (0..4).map(|i| W0[i] as f64 - 0.1 * (GW[i] as f64 + W0[i] as f64)).collect();
    let b: Vec<f64> = (0..2).map(|i| B0[i] as f64 - 1.0 * GB[i] as f64).collect();
    close(&got[0].0, &w);
    close(&got[0].1, &b);
}
