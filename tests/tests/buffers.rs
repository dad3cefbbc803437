//! Buffers: state that is not trained but carried between steps (batch-norm
//! running statistics), and `batch_norm` built on them.

use std::collections::HashMap;

use d2l_dsl::{LowerOptions, Program};
use d2l_runtime::{Interpreter, Tensor, init_params};

const BN: &str = "model bn(x: f32[N, 2]) -> f32[N, 2] {\n    return batch_norm(x)\n}\n";

/// The outputs of one run, and the names of those that are updates.
fn run(training: bool, x: Tensor, state: Option<&HashMap<String, Tensor>>) -> (HashMap<String, Tensor>, Vec<String>) {
    let program = Program::load("bn.d2l", BN, None).unwrap_or_else(|e| panic!("{e}"));
    let opts = LowerOptions { input_shapes: [("x".to_string(), x.shape().0)].into(), training, ..LowerOptions::default() };
    let graph = program.lower("bn", &opts).unwrap_or_else(|e| panic!("{e}")).graph;
    let mut feeds = init_params(&graph, 0);
    if let Some(s) = state {
        feeds.extend(s.clone());
    }
    feeds.insert("x".into(), x);
    let updates = graph.updates().map(|o| o.name.clone()).collect();
    (Interpreter::new(0).run(&graph, &feeds).unwrap().into_iter().collect(), updates)
}

#[test]
fn training_normalizes_by_batch_and_updates_running_statistics() {
    // The course's LayerNorm-vs-BatchNorm check: [[1, 2], [2, 3]] -> [[-1, -1], [1, 1]] (x 0.99998, eps).
    let (out, updates) = run(true, Tensor::from_f32(&[2, 2], vec![1.0, 2.0, 2.0, 3.0]), None);
    assert_eq!(updates, ["batch_norm_0.running_mean", "batch_norm_0.running_var"]);
    let y = out["output"].to_f64_vec();
    let expect = [-1.0, -1.0, 1.0, 1.0].map(|v: f64| v * (0.25f64 / (0.25 + 1e-5)).sqrt());
    for (a, b) in y.iter().zip(expect) {
        assert!((a - b).abs() < 1e-5, "{y:?}");
    }
    // running = 0.9 * initial + 0.1 * batch: mean [1.5, 2.5], biased var [0.25, 0.25].
    let mean = out["batch_norm_0.running_mean"].to_f64_vec();
    let var = out["batch_norm_0.running_var"].to_f64_vec();
    assert!((mean[0] - 0.15).abs() < 1e-6 && (mean[1] - 0.25).abs() < 1e-6, "{mean:?}");
    assert!((var[0] - 0.925).abs() < 1e-6 && (var[1] - 0.925).abs() < 1e-6, "{var:?}");
}

#[test]
fn evaluation_uses_the_running_statistics_and_updates_nothing() {
    let state: HashMap<String, Tensor> = [
        ("batch_norm_0.running_mean".to_string(), Tensor::from_f32(&[2], vec![1.0, -1.0])),
        ("batch_norm_0.running_var".to_string(), Tensor::from_f32(&[2], vec![4.0, 1.0])),
    ]
    .into();
    let (out, updates) = run(false, Tensor::from_f32(&[1, 2], vec![3.0, 0.0]), Some(&state));
    assert!(updates.is_empty(), "{updates:?}");
    assert_eq!(out.keys().collect::<Vec<_>>(), ["output"]);
    let y = out["output"].to_f64_vec();
    assert!((y[0] - 2.0 / (4.0f64 + 1e-5).sqrt()).abs() < 1e-5 && (y[1] - 1.0 / (1.0f64 + 1e-5).sqrt()).abs() < 1e-5, "{y:?}");
}

#[test]
fn buffers_are_not_parameters() {
    let program = Program::load("bn.d2l", BN, None).unwrap();
    let lowered = program.lower("bn", &LowerOptions { default_dim: Some(4), training: true, ..LowerOptions::default() }).unwrap();
    assert_eq!(lowered.param_count(), 4, "gamma and beta only");
    assert_eq!(lowered.graph.states().len(), 2);
    assert_eq!(lowered.graph.params().len(), 2);
}

#[test]
fn a_buffer_must_keep_its_type() {
    let src = "model m(x: f32[N, 2]) {\n    buffer s: f32[2] = zeros\n    s = sum(x)\n    return x\n}\n";
    let err = d2l_tests::compile_error("buffer_type.d2l", src);
    insta::assert_snapshot!(err);
}
