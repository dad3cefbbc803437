//! Sequence models (course §51, §55-§59): the course's exact shape checks
//! (inventory §4.3) and parameter counts (§4.4), finite-difference checks of
//! every recurrent layer (`rnn`, `gru`, `lstm`: one layer, two layers with
//! dropout, bidirectional) and of `embedding`, one GRU and one LSTM step
//! against PyTorch's published equations computed here in plain Rust, the
//! backward direction of a bidirectional layer reading the sequence
//! reversed, the language-model loss's alignment, recurrent state fed
//! back between two calls giving the outputs of one long call, and the
//! simplifier's rewrites of the language models' gradients computing the
//! values of the graphs they rewrite.

use std::collections::HashMap;

use d2l_dsl::{LossSpec, LowerOptions, Program};
use d2l_ir::{DType, Graph};
use d2l_passes::{DiffOptions, differentiate_params, promote_f64};
use d2l_runtime::{Interpreter, Tensor, apply_updates, init_params};
use d2l_tests::{Rng, fd, load, lower};

fn program(src: &str) -> Program {
    Program::load("sequences.d2l", src, None).unwrap_or_else(|e| panic!("{e}"))
}

fn options(dims: &[(&str, usize)], training: bool) -> LowerOptions {
    LowerOptions { dims: dims.iter().map(|&(k, v)| (k.to_string(), v)).collect(), training, ..LowerOptions::default() }
}

fn lower_at(program: &Program, model: &str, dims: &[(&str, usize)]) -> Graph {
    program.lower(model, &options(dims, false)).unwrap_or_else(|e| panic!("{model}: {e}")).graph
}

/// Every output of `graph` (results and state updates) by name.
fn run(graph: &Graph, feeds: &HashMap<String, Tensor>) -> HashMap<String, Tensor> {
    Interpreter::new(5).run(graph, feeds).unwrap_or_else(|e| panic!("{}: {e}", graph.name)).into_iter().collect()
}

fn output_dims(graph: &Graph, name: &str) -> Vec<usize> {
    let id = graph.outputs().iter().find(|o| o.name == name).unwrap_or_else(|| panic!("no output `{name}`")).node;
    graph.shape(id).0.clone()
}

fn assert_close(what: &str, got: &[f64], want: &[f64], tol: f64) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!((g - w).abs() <= tol, "{what}[{i}]: got {g}, want {w}");
    }
}

/// The feed of parameter `suffix` (its name ends with it; there must be one).
fn param_named(graph: &Graph, suffix: &str) -> String {
    let names: Vec<&str> = graph.params().into_iter().filter_map(|p| graph.leaf_name(p)).filter(|n| n.ends_with(suffix)).collect();
    assert_eq!(names.len(), 1, "parameters ending in {suffix}: {names:?}");
    names[0].to_string()
}

// ---- inventory §4.3: shapes ------------------------------------------------------------

#[test]
fn one_hot_of_the_transposed_batch_is_time_major() {
    // `F.one_hot(torch.arange(10).reshape((2, 5)).T, 28)`: (5, 2, 28).
    let p = program("model m(x: i64[2, 5]) -> f32[5, 2, 28] {\n    return one_hot(transpose(x), 28)\n}\n");
    let g = lower_at(&p, "m", &[]);
    let feeds = [("x".to_string(), Tensor::from_i64(&[2, 5], (0..10).collect()))].into();
    let y = &run(&g, &feeds)["output"];
    assert_eq!(y.dims(), [5, 2, 28]);
    let v = y.to_f64_vec();
    for t in 0..5 {
        for b in 0..2 {
            let row = &v[(t * 2 + b) * 28..(t * 2 + b + 1) * 28];
            let hot: Vec<usize> = (0..28).filter(|&k| row[k] == 1.0).collect();
            assert_eq!(hot, vec![b * 5 + t], "step {t}, example {b}");
            assert_eq!(row.iter().sum::<f64>(), 1.0);
        }
    }
}

#[test]
fn scratch_rnn_on_a_batch_of_two_by_five() {
    // The course's `net(X.to(d2l.try_gpu()), state)`: Y (10, 28), new state (2, 512).
    let p = load("rnn.d2l");
    let g = lower_at(&p, "rnn_scratch", &[("B", 2), ("T", 5)]);
    let mut feeds = init_params(&g, 1);
    feeds.insert("tokens".into(), Tensor::from_i64(&[2, 5], (0..10).collect()));
    feeds.insert("state".into(), Tensor::zeros(DType::F32, &[2, 512]));
    let out = run(&g, &feeds);
    assert_eq!(out["logits"].dims(), [10, 28]);
    assert_eq!(out["state"].dims(), [2, 512]);
}

#[test]
fn rnn_layer_on_the_course_batch() {
    // `nn.RNN(28, 256)` on X (35, 32, 28) and zeros (1, 32, 256).
    let p = program("model m(xs: f32[T, B, 28], state: f32[1, B, 256]) -> (ys: f32[T, B, 256], state: f32[1, B, 256]) {\n    return rnn(xs, state, 256)\n}\n");
    let g = lower_at(&p, "m", &[("T", 35), ("B", 32)]);
    assert_eq!(output_dims(&g, "ys"), [35, 32, 256]);
    assert_eq!(output_dims(&g, "state"), [1, 32, 256]);
    assert!(g.updates().any(|o| o.name == "state"), "the state result is the next value of the state input");
}

// ---- inventory §4.4: parameter counts --------------------------------------------------

#[test]
fn parameter_counts_match_the_course() {
    let cases = [
        ("sine_mlp.d2l", "sine_mlp", 61),
        ("rnn.d2l", "rnn_scratch", 291_356),
        ("rnn.d2l", "rnn_scratch_random", 291_356),
        // nn.RNN(28, 256) + Linear(256, 28): two bias vectors per gate set.
        ("rnn.d2l", "rnn_concise", 80_412),
        ("gru.d2l", "gru_scratch", 226_076),
        ("gru.d2l", "gru_concise", 226_844),
        ("lstm.d2l", "lstm_scratch", 299_036),
        ("lstm.d2l", "lstm_concise", 300_060),
        ("lstm.d2l", "lstm_deep", 826_396),
        ("lstm.d2l", "lstm_bidirectional", 2_177_052),
    ];
    for (file, model, count) in cases {
        assert_eq!(lower(&load(file), model, 1).param_count(), count, "{model}");
    }
}

#[test]
fn layer_parameters_are_laid_out_as_pytorch() {
    // nn.LSTM(3, 4, num_layers=2, bidirectional=True): per layer and
    // direction weight_ih [16, in], weight_hh [16, 4], two biases [16];
    // layer 1 reads both directions (in = 8). Ours are the weights transposed.
    let p = program("model m(xs: f32[T, B, 3], h: f32[4, B, 4], c: f32[4, B, 4]) {\n    ys, h, c = lstm(xs, h, c, 4, layers=2, bidirectional=true)\n    return ys\n}\n");
    let g = lower_at(&p, "m", &[("T", 2), ("B", 1)]);
    let mut shapes: Vec<(String, Vec<usize>)> = g.params().into_iter().map(|id| (g.leaf_name(id).unwrap().to_string(), g.shape(id).0.clone())).collect();
    shapes.sort();
    let dir = |k: usize, input: usize| {
        let prefix = format!("lstm_0.recurrent_layers_0.recurrent_direction_{k}");
        vec![(format!("{prefix}.W_hh"), vec![4, 16]), (format!("{prefix}.W_ih"), vec![input, 16]), (format!("{prefix}.b_hh"), vec![16]), (format!("{prefix}.b_ih"), vec![16])]
    };
    let want: Vec<(String, Vec<usize>)> = [dir(0, 3), dir(1, 3), dir(2, 8), dir(3, 8)].concat();
    assert_eq!(shapes, want);
}

// ---- gradients -------------------------------------------------------------------------

/// Test models return one tensor; the loss weighs each element of it by a
/// fixed random weight, so every element's gradient flows.
/// Checks every parameter's gradient of model `m` in `src` (see
/// [`fd::check_params`]).
fn gradcheck(what: &str, src: &str, dims: &[(&str, usize)], training: bool, vocab: i64) -> usize {
    fd::check_params(what, src, dims, training, vocab)
}

/// A test model running `layer` over xs [T, B, 3] with 4 hidden units and
/// returning its outputs and final states, flattened into one vector.
fn layer_model(layer: &str, states: usize, extra: &str) -> String {
    if layer == "lstm" {
        format!(
            "model m(xs: f32[T, B, 3], h: f32[{states}, B, 4], c: f32[{states}, B, 4]) {{\n    ys, h_n, c_n = lstm(xs, h, c, 4{extra})\n    return concat((reshape(ys, [-1]), reshape(h_n, [-1]), reshape(c_n, [-1])), 0)\n}}\n"
        )
    } else {
        format!("model m(xs: f32[T, B, 3], h: f32[{states}, B, 4]) {{\n    ys, h_n = {layer}(xs, h, 4{extra})\n    return concat((reshape(ys, [-1]), reshape(h_n, [-1])), 0)\n}}\n")
    }
}

#[test]
fn one_layer_gradients() {
    for layer in ["rnn", "gru", "lstm"] {
        let n = gradcheck(layer, &layer_model(layer, 1, ""), &[("T", 3), ("B", 2)], true, 0);
        assert_eq!(n, 4, "{layer}: W_ih, W_hh, b_ih, b_hh");
    }
}

#[test]
fn two_layer_gradients_with_dropout() {
    // Dropout between the layers is drawn in training mode (the same masks
    // in every evaluation: the interpreter's seed is fixed).
    for layer in ["rnn", "gru", "lstm"] {
        let n = gradcheck(&format!("2-layer {layer}"), &layer_model(layer, 2, ", layers=2, dropout=0.3"), &[("T", 3), ("B", 2)], true, 0);
        assert_eq!(n, 8, "{layer}: four per layer");
    }
}

#[test]
fn bidirectional_gradients() {
    for layer in ["rnn", "gru", "lstm"] {
        let n = gradcheck(&format!("bidirectional {layer}"), &layer_model(layer, 4, ", layers=2, bidirectional=true"), &[("T", 3), ("B", 2)], true, 0);
        assert_eq!(n, 16, "{layer}: four per layer and direction");
    }
}

#[test]
fn embedding_and_language_model_gradients() {
    // Repeated tokens: the table's gradient adds up every use of a row.
    let src = "model m(tokens: i64[B, T]) {\n    x = transpose(embedding(tokens, 5, 3), 0, 1)\n    ys, h = gru(x, zeros([1, B, 4]), 4)\n    return reshape(ys, [-1])\n}\n";
    let n = gradcheck("embedding + gru", src, &[("T", 4), ("B", 3)], true, 5);
    assert_eq!(n, 5);
    // A whole language model under its loss: sequence_cross_entropy.
    let p = load("rnn.d2l");
    let opts = options(&[("B", 2), ("T", 3)], true);
    let spec = LossSpec::one_label("sequence_cross_entropy", "label", DType::I64, vec![2, 3]);
    let forward = promote_f64(&p.lower_with_loss("rnn_concise", &opts, &spec).unwrap().graph).unwrap();
    let grads = differentiate_params(&forward, "loss", &DiffOptions::default()).unwrap();
    let mut feeds = init_params(&forward, 2);
    feeds.insert("tokens".into(), Tensor::from_i64(&[2, 3], vec![3, 1, 4, 1, 5, 9]));
    feeds.insert("label".into(), Tensor::from_i64(&[2, 3], vec![1, 4, 1, 5, 9, 2]));
    feeds.insert("state".into(), Tensor::from_f64(&[1, 2, 256], (0..512).map(|i| ((i * 7 % 13) as f64 - 6.0) / 10.0).collect()));
    let values = Interpreter::new(5).eval_nodes(&grads.graph, &feeds).unwrap();
    let mut loss = |f: &HashMap<String, Tensor>| Interpreter::new(5).run(&forward, f).unwrap().into_iter().find(|(n, _)| n == "loss").unwrap().1.to_f64_vec()[0];
    for (k, &param) in forward.params().iter().enumerate() {
        let name = forward.leaf_name(param).unwrap().to_string();
        let analytic = values[grads.grads[k].index()].to_f64_vec();
        fd::check_coordinates("rnn_concise", &mut loss, &mut feeds, &name, &analytic, (0..analytic.len()).step_by(997).take(4));
        fd::check_direction("rnn_concise", &mut loss, &mut feeds, &name, &analytic, k as u64 + 1);
    }
}

// ---- PyTorch's equations -------------------------------------------------------------

fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

/// `W v + b` for a PyTorch weight [rows, v.len()] given row-major.
fn affine(w: &[f64], v: &[f64], b: &[f64]) -> Vec<f64> {
    b.iter().enumerate().map(|(r, &bias)| bias + v.iter().enumerate().map(|(k, &x)| w[r * v.len() + k] * x).sum::<f64>()).collect()
}

/// A PyTorch weight [rows, cols] as ours, transposed to [cols, rows], in f32.
fn transposed(w: &[f64], rows: usize, cols: usize) -> Tensor {
    Tensor::from_f32(&[cols, rows], (0..cols).flat_map(|c| (0..rows).map(move |r| (r, c))).map(|(r, c)| w[r * cols + c] as f32).collect())
}

fn f32s(v: &[f64]) -> Vec<f32> {
    v.iter().map(|&x| x as f32).collect()
}

/// Inputs of one step: x [B=2, I=3], h (and c) [B=2, H=2].
const X: [[f64; 3]; 2] = [[0.5, -1.0, 2.0], [-0.3, 0.8, 0.1]];
const H0: [[f64; 2]; 2] = [[0.2, -0.4], [0.7, 0.1]];
const C0: [[f64; 2]; 2] = [[-0.6, 0.9], [0.3, -0.2]];

/// Feeds the one-step test model: the step's input, states and parameters
/// (PyTorch's weight_ih_l0, weight_hh_l0, bias_ih_l0, bias_hh_l0).
fn step_feeds(g: &Graph, w_ih: &[f64], w_hh: &[f64], b_ih: &[f64], b_hh: &[f64], gates: usize) -> HashMap<String, Tensor> {
    let rows = gates * 2;
    let mut feeds = HashMap::new();
    feeds.insert(param_named(g, ".W_ih"), transposed(w_ih, rows, 3));
    feeds.insert(param_named(g, ".W_hh"), transposed(w_hh, rows, 2));
    feeds.insert(param_named(g, ".b_ih"), Tensor::from_f32(&[rows], f32s(b_ih)));
    feeds.insert(param_named(g, ".b_hh"), Tensor::from_f32(&[rows], f32s(b_hh)));
    feeds.insert("xs".into(), Tensor::from_f32(&[1, 2, 3], f32s(X.as_flattened())));
    feeds.insert("h".into(), Tensor::from_f32(&[1, 2, 2], f32s(H0.as_flattened())));
    feeds.insert("c".into(), Tensor::from_f32(&[1, 2, 2], f32s(C0.as_flattened())));
    feeds
}

#[test]
fn gru_step_follows_pytorchs_equations() {
    // nn.GRU(3, 2): rows of weight_ih_l0 / weight_hh_l0 are W_ir, W_iz, W_in
    // (2 rows each), likewise W_hr, W_hz, W_hn.
    let w_ih = [0.3, -0.2, 0.5, 0.1, 0.4, -0.3, -0.6, 0.2, 0.1, 0.25, -0.15, 0.35, 0.45, -0.5, 0.05, -0.2, 0.3, 0.6];
    let w_hh = [0.2, 0.7, -0.4, 0.1, 0.5, -0.25, 0.3, 0.35, -0.45, 0.6, 0.15, -0.3];
    let b_ih = [0.1, -0.2, 0.05, 0.3, -0.1, 0.2];
    let b_hh = [-0.05, 0.15, 0.25, -0.3, 0.4, -0.35];
    let p = program("model m(xs: f32[1, 2, 3], h: f32[1, 2, 2]) -> (ys: f32[1, 2, 2], h_n: f32[1, 2, 2]) {\n    return gru(xs, h, 2)\n}\n");
    let g = lower_at(&p, "m", &[]);
    let out = run(&g, &step_feeds(&g, &w_ih, &w_hh, &b_ih, &b_hh, 3));
    let mut want = Vec::new();
    for b in 0..2 {
        let (x, h) = (&X[b], &H0[b]);
        let gi = affine(&w_ih, x, &b_ih);
        let gh = affine(&w_hh, h, &b_hh);
        for j in 0..2 {
            let r = sigmoid(gi[j] + gh[j]);
            let z = sigmoid(gi[2 + j] + gh[2 + j]);
            let n = (gi[4 + j] + r * gh[4 + j]).tanh();
            want.push((1.0 - z) * n + z * h[j]);
        }
    }
    assert_close("gru ys", &out["ys"].to_f64_vec(), &want, 1e-6);
    assert_close("gru h_n", &out["h_n"].to_f64_vec(), &want, 1e-6);
}

#[test]
fn lstm_step_follows_pytorchs_equations() {
    // nn.LSTM(3, 2): rows are W_ii, W_if, W_ig, W_io (2 rows each).
    let w_ih = [0.3, -0.2, 0.5, 0.1, 0.4, -0.3, -0.6, 0.2, 0.1, 0.25, -0.15, 0.35, 0.45, -0.5, 0.05, -0.2, 0.3, 0.6, 0.15, 0.05, -0.4, -0.1, 0.55, 0.2];
    let w_hh = [0.2, 0.7, -0.4, 0.1, 0.5, -0.25, 0.3, 0.35, -0.45, 0.6, 0.15, -0.3, 0.05, -0.65, 0.4, 0.25];
    let b_ih = [0.1, -0.2, 0.05, 0.3, -0.1, 0.2, 0.15, -0.05];
    let b_hh = [-0.05, 0.15, 0.25, -0.3, 0.4, -0.35, 0.1, 0.2];
    let p = program("model m(xs: f32[1, 2, 3], h: f32[1, 2, 2], c: f32[1, 2, 2]) -> (ys: f32[1, 2, 2], h_n: f32[1, 2, 2], c_n: f32[1, 2, 2]) {\n    return lstm(xs, h, c, 2)\n}\n");
    let g = lower_at(&p, "m", &[]);
    let out = run(&g, &step_feeds(&g, &w_ih, &w_hh, &b_ih, &b_hh, 4));
    let (mut want_h, mut want_c) = (Vec::new(), Vec::new());
    for b in 0..2 {
        let gi = affine(&w_ih, &X[b], &b_ih);
        let gh = affine(&w_hh, &H0[b], &b_hh);
        for j in 0..2 {
            let i = sigmoid(gi[j] + gh[j]);
            let f = sigmoid(gi[2 + j] + gh[2 + j]);
            let g = (gi[4 + j] + gh[4 + j]).tanh();
            let o = sigmoid(gi[6 + j] + gh[6 + j]);
            let c = f * C0[b][j] + i * g;
            want_c.push(c);
            want_h.push(o * c.tanh());
        }
    }
    assert_close("lstm ys", &out["ys"].to_f64_vec(), &want_h, 1e-6);
    assert_close("lstm h_n", &out["h_n"].to_f64_vec(), &want_h, 1e-6);
    assert_close("lstm c_n", &out["c_n"].to_f64_vec(), &want_c, 1e-6);
}

// ---- bidirectional: the backward direction reads the sequence reversed --------------

#[test]
fn backward_direction_reads_the_sequence_reversed() {
    // T = 4 steps, one example, 2 features, 3 hidden units per direction.
    let (t_len, hidden) = (4, 3);
    let p = program("model m(xs: f32[4, 1, 2], h: f32[2, 1, 3]) -> (ys: f32[4, 1, 6], h_n: f32[2, 1, 3]) {\n    return rnn(xs, h, 3, bidirectional=true)\n}\n");
    let g = lower_at(&p, "m", &[]);
    let params = init_params(&g, 4);
    let xs: Vec<f32> = vec![0.5, -0.2, 0.9, 0.1, -0.7, 0.4, 0.3, -0.8];
    let outputs = |xs: &[f32]| {
        let mut feeds = params.clone();
        feeds.insert("xs".into(), Tensor::from_f32(&[4, 1, 2], xs.to_vec()));
        feeds.insert("h".into(), Tensor::zeros(DType::F32, &[2, 1, 3]));
        let out = run(&g, &feeds);
        (out["ys"].to_f64_vec(), out["h_n"].to_f64_vec())
    };
    // ys[t] is [forward 3 | backward 3].
    let half = |ys: &[f64], t: usize, backward: bool| -> Vec<f64> {
        let at = t * 2 * hidden + if backward { hidden } else { 0 };
        ys[at..at + hidden].to_vec()
    };
    let (ys, h_n) = outputs(&xs);
    // PyTorch's final states: the forward direction's after the last step,
    // the backward direction's after the first.
    assert_eq!(h_n[..hidden], half(&ys, t_len - 1, false)[..]);
    assert_eq!(h_n[hidden..], half(&ys, 0, true)[..]);

    // Only the last step differs: the forward outputs before it are the
    // same, the backward direction's first output (at t = 0, which has read
    // the whole sequence from its end) changes.
    let mut last = xs.clone();
    last[(t_len - 1) * 2] += 0.5;
    let (ys_last, _) = outputs(&last);
    for t in 0..t_len - 1 {
        assert_eq!(half(&ys_last, t, false), half(&ys, t, false), "forward output {t}");
    }
    for t in 0..t_len {
        assert_ne!(half(&ys_last, t, true), half(&ys, t, true), "backward output {t}");
    }

    // Only the first step differs: every forward output changes, and of the
    // backward ones only the one at t = 0 (its last step).
    let mut first = xs.clone();
    first[0] += 0.5;
    let (ys_first, _) = outputs(&first);
    for t in 0..t_len {
        assert_ne!(half(&ys_first, t, false), half(&ys, t, false), "forward output {t}");
    }
    assert_ne!(half(&ys_first, 0, true), half(&ys, 0, true));
    for t in 1..t_len {
        assert_eq!(half(&ys_first, t, true), half(&ys, t, true), "backward output {t}");
    }
}

#[test]
fn dropout_acts_between_layers_only_in_training() {
    let src = |layers: usize| format!("model m(xs: f32[3, 2, 3], h: f32[{layers}, 2, 4]) -> f32[3, 2, 4] {{\n    ys, h_n = gru(xs, h, 4, layers={layers}, dropout=0.5)\n    return ys\n}}\n");
    let output = |layers: usize, training: bool| {
        let g = program(&src(layers)).lower("m", &options(&[], training)).unwrap().graph;
        let mut feeds = init_params(&g, 8);
        let mut rng = Rng(3);
        feeds.insert("xs".into(), Tensor::from_f32(&[3, 2, 3], (0..18).map(|_| rng.uniform(-1.0, 1.0) as f32).collect()));
        feeds.insert("h".into(), Tensor::zeros(DType::F32, &[layers, 2, 4]));
        run(&g, &feeds)["output"].to_f64_vec()
    };
    // One layer: nothing between layers, so training and evaluation agree.
    assert_eq!(output(1, true), output(1, false));
    // Two layers: the first layer's outputs are dropped in training only.
    assert_ne!(output(2, true), output(2, false));
}

// ---- the language-model loss ----------------------------------------------------------

#[test]
fn sequence_cross_entropy_lines_labels_up_with_time_major_outputs() {
    // Logits row t*B + b scores example b's token t + 1: `Y.T.reshape(-1)`.
    let (b_len, t_len, v) = (2, 3, 4);
    let p = program("model m(logits: f32[6, 4], labels: i64[2, 3]) -> f32[] {\n    return sequence_cross_entropy(logits, labels)\n}\n");
    let g = lower_at(&p, "m", &[]);
    let mut rng = Rng(9);
    let logits: Vec<f64> = (0..t_len * b_len * v).map(|_| rng.uniform(-2.0, 2.0)).collect();
    let labels: Vec<i64> = vec![0, 3, 1, 2, 2, 0];
    let feeds = [("logits".to_string(), Tensor::from_f32(&[6, 4], f32s(&logits))), ("labels".to_string(), Tensor::from_i64(&[2, 3], labels.clone()))].into();
    let got = run(&g, &feeds)["output"].to_f64_vec()[0];
    let mut total = 0.0;
    for t in 0..t_len {
        for b in 0..b_len {
            let row = &logits[(t * b_len + b) * v..(t * b_len + b + 1) * v];
            let log_z = row.iter().map(|x| x.exp()).sum::<f64>().ln();
            total += log_z - row[labels[b * t_len + t] as usize];
        }
    }
    assert!((got - total / 6.0).abs() < 1e-5, "got {got}, want {}", total / 6.0);
}

// ---- recurrent state ---------------------------------------------------------------

#[test]
fn state_fed_back_continues_the_sequence() {
    // The scratch RNN on 6 steps in one call, and on its two halves of 3
    // with the first call's state result fed into the second (as the
    // trainer and `generate` do): the same outputs and final state.
    let p = load("rnn.d2l");
    let whole = lower_at(&p, "rnn_scratch", &[("B", 2), ("T", 6)]);
    let half = lower_at(&p, "rnn_scratch", &[("B", 2), ("T", 3)]);
    let mut feeds = init_params(&whole, 6);
    // Weights N(0, 0.01) barely move the state: larger ones make the test say something.
    let mut rng = Rng(1);
    for name in ["rnn_scratch_net_0.W_hh", "rnn_scratch_net_0.W_xh"] {
        let dims = feeds[name].dims().to_vec();
        let n: usize = dims.iter().product();
        feeds.insert(name.into(), Tensor::from_f32(&dims, (0..n).map(|_| rng.uniform(-0.1, 0.1) as f32).collect()));
    }
    let tokens: [[i64; 6]; 2] = [[3, 1, 4, 1, 5, 9], [2, 6, 5, 3, 5, 8]];
    let state0: Vec<f32> = (0..1024).map(|i| ((i % 17) as f32 - 8.0) / 10.0).collect();
    feeds.insert("tokens".into(), Tensor::from_i64(&[2, 6], tokens.as_flattened().to_vec()));
    feeds.insert("state".into(), Tensor::from_f32(&[2, 512], state0.clone()));
    let all = run(&whole, &feeds);

    let mut logits = Vec::new();
    feeds.insert("state".into(), Tensor::from_f32(&[2, 512], state0));
    for part in 0..2 {
        let chunk: Vec<i64> = tokens.iter().flat_map(|row| row[part * 3..part * 3 + 3].to_vec()).collect();
        feeds.insert("tokens".into(), Tensor::from_i64(&[2, 3], chunk));
        let mut out = Interpreter::new(5).run(&half, &feeds).unwrap();
        logits.extend(out.iter().find(|(n, _)| n == "logits").unwrap().1.to_f64_vec());
        apply_updates(&half, &mut out, &mut feeds);
    }
    // Time-major: the first half's 3 steps are the first 6 rows.
    assert_close("logits", &logits, &all["logits"].to_f64_vec(), 1e-6);
    assert_close("state", &feeds["state"].to_f64_vec(), &all["state"].to_f64_vec(), 1e-6);
    assert_ne!(feeds["state"].to_f64_vec(), vec![0.0; 1024]);
}

// Simplification rewrites the language models' one-hot products into a
// gather and a scatter-add, and the sums of zero pads autodiff makes of
// slices (gates of one product, steps of one sequence) into concats: the
// simplified training gradients are the unsimplified graph's, in f64.
#[test]
fn simplified_language_model_gradients_equal_the_unsimplified_ones() {
    use d2l::train::{TrainOptions, graphs, sources};
    for (file, model) in [("rnn.d2l", "rnn_scratch"), ("gru.d2l", "gru_concise"), ("lstm.d2l", "lstm_concise")] {
        let program = d2l_tests::load_edited(file, "steps=35", "steps=4");
        let config = program.train_config(model).unwrap();
        let schema = sources::schema(&program, &config.data, &TrainOptions::default()).unwrap();
        let binding = graphs::bind(&program, model, &schema).unwrap();
        let forward = graphs::forward_with_loss(&program, model, &config.loss, &schema, &binding, 3, true).unwrap();
        let forward = promote_f64(&forward).unwrap();
        let grads = differentiate_params(&forward, "loss", &DiffOptions::default()).unwrap();
        let simplified = d2l_passes::simplify(&grads.graph);
        let ops: Vec<&str> = simplified.ids().map(|id| simplified.node(id).op.mnemonic()).collect();
        for (op, present) in [("gather", true), ("scatter_add", true), ("concat", true), ("pad", false)] {
            assert_eq!(ops.contains(&op), present, "{model}: {op} in the simplified gradients");
        }
        let mut rng = Rng(11);
        let mut feeds = init_params(&forward, 3);
        for name in binding.fields.iter().chain(&binding.state) {
            let Some(id) = forward.input_named(name) else { continue };
            let dims = forward.shape(id).dims().to_vec();
            let n: usize = dims.iter().product();
            let t = match forward.dtype(id) {
                DType::I64 => Tensor::from_i64(&dims, (0..n).map(|_| (rng.next_f64() * 28.0) as i64).collect()),
                _ => Tensor::from_f64(&dims, (0..n).map(|_| rng.uniform(-0.5, 0.5)).collect()),
            };
            feeds.insert(name.clone(), t);
        }
        let want = run(&grads.graph, &feeds);
        let got = run(&simplified, &feeds);
        for (name, w) in &want {
            let w = w.to_f64_vec();
            let scale = w.iter().fold(1e-3f64, |m, v| m.max(v.abs()));
            assert_close(&format!("{model} {name}"), &got[name].to_f64_vec(), &w, 1e-12 * scale);
        }
    }
}

// A character id outside the vocabulary is an error naming the `one_hot`
// call on both backends, as PyTorch's `F.one_hot` refuses it, before the
// simplifier (`d2l run`) and after it (training), where the product has
// become a row lookup; negative ids too.
#[test]
fn an_out_of_range_one_hot_id_is_a_clear_error_on_every_path() {
    let p = program("model m(x: i64[4]) -> f32[4, 3] {\n    param W: f32[5, 3] = normal(0, 1)\n    return one_hot(x, 5) @ W\n}\n");
    let plain = lower_at(&p, "m", &[]);
    let simplified = d2l_passes::simplify(&plain);
    for graph in [plain, simplified] {
        let mut feeds = init_params(&graph, 1);
        for (ids, bad) in [(vec![0, 2, 7, 1], "index 7 "), (vec![0, -1, 3, 1], "index -1 ")] {
            feeds.insert("x".into(), Tensor::from_i64(&[4], ids));
            let interp = Interpreter::new(5).run(&graph, &feeds).expect_err(bad).to_string();
            let jit = d2l::Device::JIT.compile(&graph, 0).unwrap().run(&feeds).expect_err(bad).to_string();
            for text in [interp, jit] {
                assert!(text.contains(bad) && text.contains("sequences.d2l:3:12") && text.contains("size 5"), "{text}");
            }
        }
        feeds.insert("x".into(), Tensor::from_i64(&[4], vec![0, 2, 4, 1]));
        Interpreter::new(5).run(&graph, &feeds).expect("ids in range");
    }
}
