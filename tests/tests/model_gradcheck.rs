//! Finite-difference gradient check of every model in `models/`: the
//! symbolic gradient of the training loss (in f64) against central
//! differences, for every parameter tensor along a random direction (its
//! whole gradient at once) and, in models under a million parameters, at
//! sampled coordinates.
//!
//! The big convolutional networks run at miniature input sizes (the same
//! layers on a smaller image): at the course's 96x96 to 224x224 an f64 pass
//! takes a second, and the more ReLU inputs there are, the more of them a
//! finite-difference step pushes across zero, which is error in the
//! difference, not in the gradient.

use std::collections::HashMap;

use d2l_dsl::{LossSpec, LowerOptions, Program};
use d2l_ir::{DType, Op};
use d2l_passes::{DiffOptions, differentiate_params, promote_f64};
use d2l_runtime::{Interpreter, Tensor, init_params};
use d2l_tests::{Rng, fd, load_edited, model_files};

/// (file, the course's input type, the miniature one): the smallest image
/// each network's downsampling leaves at least one pixel of.
/// Above this many parameters only the directional check runs (two loss
/// evaluations per tensor, against two per sampled coordinate): the big
/// networks have 20 to 60 parameter tensors and an f64 pass takes ~0.1 s.
const COORDINATE_CHECK_MAX_PARAMS: usize = 1_000_000;

const MINIATURES: &[(&str, &str, &str)] = &[
    ("alexnet.d2l", "f32[B, 1, 224, 224]", "f32[B, 1, 67, 67]"),
    ("vgg.d2l", "f32[B, 1, 224, 224]", "f32[B, 1, 32, 32]"),
    ("nin.d2l", "f32[B, 1, 224, 224]", "f32[B, 1, 67, 67]"),
    ("googlenet.d2l", "f32[B, 1, 96, 96]", "f32[B, 1, 32, 32]"),
    ("resnet.d2l", "f32[B, 1, 96, 96]", "f32[B, 1, 32, 32]"),
];

fn loss_of(graph: &d2l_ir::Graph, feeds: &HashMap<String, Tensor>) -> f64 {
    // A fresh interpreter with a fixed seed draws the same dropout masks.
    let out = Interpreter::new(5).run(graph, feeds).unwrap();
    out.iter().find(|(n, _)| n == "loss").unwrap().1.to_f64_vec()[0]
}

/// Returns the worst relative error.
fn check_model(program: &Program, model: &str) -> f64 {
    let config = program.train_config(model).unwrap_or_else(|e| panic!("{model}: {e}"));
    let classify = matches!(config.data.name.as_str(), "fashion_mnist" | "mnist");
    // Four examples: batch norm over the 1x1 pixels of ResNet's last stage
    // normalises two values to exactly ±1 at a batch of 2, a point where
    // the loss is smooth but so curved that central differences are off.
    let batch = 4;
    let probe = program.lower(model, &LowerOptions { default_dim: Some(batch), ..LowerOptions::default() }).unwrap_or_else(|e| panic!("{model}: {e}"));
    let x_node = probe.graph.inputs()[0];
    let x_shape = probe.graph.shape(x_node).0.clone();
    // Regression targets have the output's shape ([B, 1], or an image for the edge detector).
    let out_node = probe.graph.outputs()[0].node;
    let (label_dtype, label_shape) = if classify { (DType::I64, vec![batch]) } else { (DType::F32, probe.graph.shape(out_node).0.clone()) };
    let lopts = LowerOptions { default_dim: Some(batch), training: true, ..LowerOptions::default() };
    let spec = LossSpec::one_label(&config.loss, "label", label_dtype, label_shape.clone());
    let forward = promote_f64(&program.lower_with_loss(model, &lopts, &spec).unwrap().graph).unwrap();
    let grads = differentiate_params(&forward, "loss", &DiffOptions::default()).unwrap();

    let mut feeds: HashMap<String, Tensor> = init_params(&forward, 3);
    let n: usize = x_shape.iter().product();
    let Op::Input { name: x_name, .. } = &forward.node(x_node).op else { unreachable!("inputs()[0] is an input") };
    let mut rng = Rng(7);
    feeds.insert(x_name.clone(), Tensor::from_f64(&x_shape, (0..n).map(|_| rng.next_f64()).collect()));
    let targets = label_shape.iter().product::<usize>();
    let label = if classify { Tensor::from_i64(&label_shape, (0..batch as i64).map(|i| (3 + 4 * i) % 10).collect()) } else { Tensor::from_f64(&label_shape, (0..targets).map(|i| if i % 2 == 0 { 0.5 } else { -1.0 }).collect()) };
    feeds.insert("label".into(), label);

    let values = Interpreter::new(5).eval_nodes(&grads.graph, &feeds).unwrap();
    let total: usize = forward.params().iter().map(|&p| forward.shape(p).numel()).sum();
    let mut worst = 0.0f64;
    let mut loss = |f: &HashMap<String, Tensor>| loss_of(&forward, f);
    for (k, &p) in forward.params().iter().enumerate() {
        let Op::Param { name, .. } = &forward.node(p).op else { unreachable!("params() are params") };
        let analytic = values[grads.grads[k].index()].to_f64_vec();
        worst = worst.max(fd::check_direction(model, &mut loss, &mut feeds, name, &analytic, k as u64 + 1));
        if total <= COORDINATE_CHECK_MAX_PARAMS {
            let coords = (0..analytic.len()).step_by((analytic.len() / 5).max(1)).take(6);
            worst = worst.max(fd::check_coordinates(model, &mut loss, &mut feeds, name, &analytic, coords));
        }
    }
    worst
}

#[test]
fn every_model_gradient_matches_finite_differences() {
    let mut checked = Vec::new();
    for f in model_files() {
        let file = f.file_name().unwrap().to_string_lossy().to_string();
        let program = match MINIATURES.iter().find(|m| m.0 == file) {
            Some((_, course, miniature)) => load_edited(&file, course, miniature),
            None => Program::load_file(&f).unwrap_or_else(|e| panic!("{e}")),
        };
        for m in program.model_names() {
            let started = std::time::Instant::now();
            let worst = check_model(&program, m);
            eprintln!("{m}: worst relative error {worst:.1e} ({:.1} s)", started.elapsed().as_secs_f64());
            checked.push(m.clone());
        }
    }
    // Every file of models/ has at least one model, and each was checked.
    assert!(checked.len() >= model_files().len(), "checked {checked:?}");
}
