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
//! difference, not in the gradient. The language models run over 4 steps
//! instead of 35, from a nonzero recurrent state.
//!
//! Each forward graph is built as training builds it
//! (`d2l_train::graphs`): the inputs and labels its data source declares,
//! the loss of its train block.

use std::collections::HashMap;

use d2l::train::{TrainOptions, graphs, sources};
use d2l_dsl::Program;
use d2l_ir::{DType, Op};
use d2l_passes::{DiffOptions, differentiate_params, promote_f64};
use d2l_runtime::{Interpreter, Tensor, init_params};
use d2l_tests::{Rng, fd, model_files};

/// Above this many parameters only the directional check runs (two loss
/// evaluations per tensor, against two per sampled coordinate): the big
/// networks have 20 to 60 parameter tensors and an f64 pass takes ~0.1 s.
const COORDINATE_CHECK_MAX_PARAMS: usize = 1_000_000;

/// (file, edits of its text): for the big convolutional networks the
/// smallest image each network's downsampling leaves at least one pixel of
/// (the input type and the data's resize); for the language models 4 steps
/// instead of 35 (the same layers, unrolled less).
const MINIATURES: &[(&str, &[(&str, &str)])] = &[
    ("alexnet.d2l", &[("f32[B, 1, 224, 224]", "f32[B, 1, 67, 67]"), ("resize=224", "resize=67")]),
    ("vgg.d2l", &[("f32[B, 1, 224, 224]", "f32[B, 1, 32, 32]"), ("resize=224", "resize=32")]),
    ("nin.d2l", &[("f32[B, 1, 224, 224]", "f32[B, 1, 67, 67]"), ("resize=224", "resize=67")]),
    ("googlenet.d2l", &[("f32[B, 1, 96, 96]", "f32[B, 1, 32, 32]"), ("resize=96", "resize=32")]),
    ("resnet.d2l", &[("f32[B, 1, 96, 96]", "f32[B, 1, 32, 32]"), ("resize=96", "resize=32")]),
    ("rnn.d2l", &[("steps=35", "steps=4")]),
    ("gru.d2l", &[("steps=35", "steps=4")]),
    ("lstm.d2l", &[("steps=35", "steps=4")]),
    // BERT at a small size: 100 words, hidden 16, FFN 32, pairs of 16 tokens.
    ("bert.d2l", &[("20256", "100"), ("128", "16"), ("256", "32"), ("max_len=64", "max_len=16")]),
];

/// A model file with every occurrence of each edit's text replaced.
fn load_miniature(path: &std::path::Path, edits: &[(&str, &str)]) -> Program {
    let mut text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    for (from, to) in edits {
        assert!(text.contains(from), "{} has no `{from}`", path.display());
        text = text.replace(from, to);
    }
    Program::load(&path.display().to_string(), &text, None).unwrap_or_else(|e| panic!("{e}"))
}

fn loss_of(graph: &d2l_ir::Graph, feeds: &HashMap<String, Tensor>) -> f64 {
    // A fresh interpreter with a fixed seed draws the same dropout masks.
    let out = Interpreter::new(5).run(graph, feeds).unwrap();
    out.iter().find(|(n, _)| n == "loss").unwrap().1.to_f64_vec()[0]
}

/// Parameters whose gradient the model stops on purpose, so finite
/// differences (which see through `stop_gradient`) disagree with it by
/// design: (model, parameter, the test that checks it instead).
const DETACHED: &[(&str, &str, &str)] = &[("bert", "bert_encoder_0.positions", "tests/tests/bert.rs: the course's `.data` position table gets no gradient")];

/// Returns the worst relative error.
fn check_model(program: &Program, model: &str) -> f64 {
    let config = program.train_config(model).unwrap_or_else(|e| panic!("{model}: {e}"));
    // The model with its loss as training builds it: inputs and labels as
    // its data source declares them (images and classes, regression
    // targets, tokens and next tokens), recurrent state as inputs.
    let schema = sources::schema(program, &config.data, &TrainOptions::default()).unwrap_or_else(|e| panic!("{model}: {e}"));
    let binding = graphs::bind(program, model, &schema).unwrap_or_else(|e| panic!("{model}: {e}"));
    // Four examples: batch norm over the 1x1 pixels of ResNet's last stage
    // normalises two values to exactly ±1 at a batch of 2, a point where
    // the loss is smooth but so curved that central differences are off.
    let batch = 4;
    let forward = graphs::forward_with_loss(program, model, &config.loss, &schema, &binding, batch, true).unwrap_or_else(|e| panic!("{model}: {e}"));
    let forward = promote_f64(&forward).unwrap();
    let grads = differentiate_params(&forward, "loss", &DiffOptions::default()).unwrap();

    // Class labels and tokens index the model's predictions: below their width.
    let prediction = forward.output("output").expect("the loss names the predictions `output`");
    let classes = *forward.shape(prediction).dims().last().expect("predictions have a class axis") as i64;
    let mut feeds: HashMap<String, Tensor> = init_params(&forward, 3);
    let mut rng = Rng(7);
    // Token inputs may index a smaller table than the predictions' (a
    // translation's source vocabulary): ids below 64 fit every model here.
    let tokens = classes.min(64);
    // Indices stay inside the tables they index (BERT's segments, positions).
    let bounds = d2l_tests::index_bounds(&forward);
    for (k, name) in binding.fields.iter().enumerate() {
        // A source may provide inputs the model does not take.
        let Some(id) = forward.input_named(name) else {
            assert!(k < schema.inputs.len(), "{model}: no label `{name}`");
            continue;
        };
        let dims = forward.shape(id).dims().to_vec();
        let n: usize = dims.iter().product();
        let is_label = k >= schema.inputs.len();
        let t = match (forward.dtype(id), is_label) {
            (DType::I64, false) => {
                let range = bounds.get(name).map_or(tokens, |&b| b.min(tokens));
                Tensor::from_i64(&dims, (0..n).map(|_| (rng.next_f64() * range as f64) as i64).collect())
            }
            (DType::I64, true) => {
                let range = bounds.get(name).map_or(classes, |&b| b.min(classes));
                Tensor::from_i64(&dims, (0..n as i64).map(|i| (3 + 4 * i) % range).collect())
            }
            (_, false) => Tensor::from_f64(&dims, (0..n).map(|_| rng.next_f64()).collect()),
            (_, true) => Tensor::from_f64(&dims, (0..n).map(|i| if i % 2 == 0 { 0.5 } else { -1.0 }).collect()),
        };
        feeds.insert(name.clone(), t);
    }
    // Recurrent state as an earlier minibatch leaves it, not zeros (so the
    // first step's `h @ W_hh` is not zero either).
    for name in &binding.state {
        let id = forward.input_named(name).unwrap_or_else(|| panic!("{model}: no state `{name}`"));
        let dims = forward.shape(id).dims().to_vec();
        let n: usize = dims.iter().product();
        feeds.insert(name.clone(), Tensor::from_f64(&dims, (0..n).map(|_| rng.uniform(-0.5, 0.5)).collect()));
    }

    let values = Interpreter::new(5).eval_nodes(&grads.graph, &feeds).unwrap();
    let total: usize = forward.params().iter().map(|&p| forward.shape(p).numel()).sum();
    let mut worst = 0.0f64;
    let mut loss = |f: &HashMap<String, Tensor>| loss_of(&forward, f);
    for (k, &p) in forward.params().iter().enumerate() {
        let Op::Param { name, .. } = &forward.node(p).op else { unreachable!("params() are params") };
        if DETACHED.iter().any(|(m, param, _)| *m == model && name == param) {
            continue;
        }
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
            Some((_, edits)) => load_miniature(&f, edits),
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
