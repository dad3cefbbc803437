//! Finite-difference gradient check of every model in `models/`: the
//! symbolic gradient of the training loss (in f64) against central
//! differences, at sampled coordinates of every parameter.

use std::collections::HashMap;

use d2l_dsl::{LossSpec, LowerOptions};
use d2l_ir::{DType, Op};
use d2l_passes::{DiffOptions, differentiate_params, promote_f64};
use d2l_runtime::{Interpreter, Tensor, init_params};
use d2l_tests::{load, model_files};

fn loss_of(graph: &d2l_ir::Graph, feeds: &HashMap<String, Tensor>) -> f64 {
    // A fresh interpreter with a fixed seed draws the same dropout masks.
    let out = Interpreter::new(5).run(graph, feeds).unwrap();
    out.iter().find(|(n, _)| n == "loss").unwrap().1.to_f64_vec()[0]
}

fn check_model(file: &str, model: &str) {
    let program = load(file);
    let config = program.train_config(model).unwrap();
    let classify = matches!(config.data.name.as_str(), "fashion_mnist" | "mnist");
    let batch = 2;
    let probe = program.lower(model, &LowerOptions { default_dim: Some(batch), ..LowerOptions::default() }).unwrap();
    let x_node = probe.graph.inputs()[0];
    let x_shape = probe.graph.shape(x_node).0.clone();
    // Regression targets have the output's shape ([B, 1], or an image for the edge detector).
    let out_node = probe.graph.outputs()[0].1;
    let (label_dtype, label_shape) = if classify { (DType::I64, vec![batch]) } else { (DType::F32, probe.graph.shape(out_node).0.clone()) };
    let lopts = LowerOptions { default_dim: Some(batch), training: true, ..LowerOptions::default() };
    let spec = LossSpec { loss: config.loss.clone(), label_name: "label".into(), label_dtype, label_shape: label_shape.clone() };
    let forward = promote_f64(&program.lower_with_loss(model, &lopts, &spec).unwrap().graph).unwrap();
    let grads = differentiate_params(&forward, "loss", &DiffOptions::default()).unwrap();

    let mut feeds: HashMap<String, Tensor> = init_params(&forward, 3);
    let n: usize = x_shape.iter().product();
    let x_name = match &forward.node(x_node).op {
        Op::Input { name } => name.clone(),
        _ => unreachable!(),
    };
    feeds.insert(x_name, Tensor::from_f64(&x_shape, (0..n).map(|i| ((i * 37 % 101) as f64) / 101.0).collect()));
    let targets = label_shape.iter().product::<usize>();
    let label = if classify { Tensor::from_i64(&label_shape, vec![3, 7]) } else { Tensor::from_f64(&label_shape, (0..targets).map(|i| if i % 2 == 0 { 0.5 } else { -1.0 }).collect()) };
    feeds.insert("label".into(), label);

    let values = Interpreter::new(5).eval_nodes(&grads.graph, &feeds).unwrap();
    for (k, &p) in forward.params().iter().enumerate() {
        let Op::Param { name, .. } = &forward.node(p).op else { unreachable!() };
        let analytic = values[grads.grads[k].index()].to_f64_vec();
        let Tensor::F64(base) = feeds[name].clone() else { panic!("promoted to f64") };
        let len = base.len();
        for j in (0..len).step_by((len / 5).max(1)).take(6) {
            let eps = 1e-6;
            let mut bump = |delta: f64| {
                let mut t = base.clone();
                t.as_slice_mut().unwrap()[j] += delta;
                feeds.insert(name.clone(), Tensor::F64(t));
                loss_of(&forward, &feeds)
            };
            let numeric = (bump(eps) - bump(-eps)) / (2.0 * eps);
            feeds.insert(name.clone(), Tensor::F64(base.clone()));
            let a = analytic[j];
            assert!((a - numeric).abs() <= 1e-6 + 1e-4 * numeric.abs(), "{model}: d loss / d {name}[{j}]: autodiff {a}, finite differences {numeric}");
        }
    }
}

/// Models with more parameters than this (AlexNet, VGG, NiN, GoogLeNet,
/// ResNet-18: 2 to 47 million, at 96x96 to 224x224) take minutes per check
/// in f64; tests/tests/cnn.rs checks their blocks at miniature sizes instead.
const MAX_PARAMS: usize = 1_000_000;

#[test]
fn every_model_gradient_matches_finite_differences() {
    for f in model_files() {
        let program = d2l_dsl::Program::load_file(&f).unwrap();
        let file = f.file_name().unwrap().to_string_lossy().to_string();
        for m in program.model_names() {
            if d2l_tests::lower(&program, m, 1).param_count() > MAX_PARAMS {
                continue;
            }
            check_model(&file, m);
        }
    }
}
