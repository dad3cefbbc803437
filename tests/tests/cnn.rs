//! Convolutional networks (course §19–29): each model's shape trace and
//! parameter count against the course (inventory §4.3 and §4.4), the
//! course's exact convolution, pooling and normalization checks run through
//! the language, and finite-difference checks of each network's blocks at
//! miniature sizes (the full networks are too big to check in CI).

use std::collections::HashMap;

use d2l::{Options, Tensor};
use d2l_dsl::{LossSpec, LowerOptions, Program};
use d2l_ir::{DType, Op};
use d2l_passes::{DiffOptions, differentiate_params, promote_f64};
use d2l_runtime::{Interpreter, init_params};
use d2l_tests::{fd, load, load_edited, lower, model_path};

/// A row of the course's trace: layer name and output shape without the
/// batch axis. Activations and dropout keep the shape, and the course's
/// traces leave them out, so these rows do too.
type Row = (String, Vec<usize>);

fn course_trace(program: &Program, model: &str) -> Vec<Row> {
    lower(program, model, 1)
        .layers
        .into_iter()
        .filter(|l| !matches!(l.name.as_str(), "relu" | "sigmoid" | "dropout"))
        .map(|l| (l.name, l.shape.0[1..].to_vec()))
        .collect()
}

fn rows(expected: &[(&str, &[usize])]) -> Vec<Row> {
    expected.iter().map(|(n, s)| (n.to_string(), s.to_vec())).collect()
}

fn check_trace(program: &Program, model: &str, expected: &[(&str, &[usize])], params: usize) {
    assert_eq!(course_trace(program, model), rows(expected), "{model}: trace");
    assert_eq!(lower(program, model, 1).param_count(), params, "{model}: parameters");
}

#[test]
fn alexnet_matches_the_course() {
    let expected: &[(&str, &[usize])] = &[
        ("conv2d", &[96, 54, 54]),
        ("max_pool2d", &[96, 26, 26]),
        ("conv2d", &[256, 26, 26]),
        ("max_pool2d", &[256, 12, 12]),
        ("conv2d", &[384, 12, 12]),
        ("conv2d", &[384, 12, 12]),
        ("conv2d", &[256, 12, 12]),
        ("max_pool2d", &[256, 5, 5]),
        ("flatten", &[6400]),
        ("linear", &[4096]),
        ("linear", &[4096]),
        ("linear", &[10]),
    ];
    check_trace(&load("alexnet.d2l"), "alexnet", expected, 46_764_746);
}

#[test]
fn vgg11_matches_the_course_at_both_widths() {
    // The trained variant: channels divided by 4.
    let expected: &[(&str, &[usize])] = &[
        ("vgg_block", &[16, 112, 112]),
        ("vgg_block", &[32, 56, 56]),
        ("vgg_block", &[64, 28, 28]),
        ("vgg_block", &[128, 14, 14]),
        ("vgg_block", &[128, 7, 7]),
        ("flatten", &[6272]),
        ("linear", &[4096]),
        ("linear", &[4096]),
        ("linear", &[10]),
    ];
    check_trace(&load("vgg.d2l"), "vgg11", expected, 43_093_322);
    // Full width, as the course's first trace.
    let full: &[(&str, &[usize])] = &[
        ("vgg_block", &[64, 112, 112]),
        ("vgg_block", &[128, 56, 56]),
        ("vgg_block", &[256, 28, 28]),
        ("vgg_block", &[512, 14, 14]),
        ("vgg_block", &[512, 7, 7]),
        ("flatten", &[25088]),
        ("linear", &[4096]),
        ("linear", &[4096]),
        ("linear", &[10]),
    ];
    check_trace(&load_edited("vgg.d2l", "ratio = 4", "ratio = 1"), "vgg11", full, 128_806_154);
}

#[test]
fn nin_matches_the_course() {
    let expected: &[(&str, &[usize])] = &[
        ("nin_block", &[96, 54, 54]),
        ("max_pool2d", &[96, 26, 26]),
        ("nin_block", &[256, 26, 26]),
        ("max_pool2d", &[256, 12, 12]),
        ("nin_block", &[384, 12, 12]),
        ("max_pool2d", &[384, 5, 5]),
        ("nin_block", &[10, 5, 5]),
        ("global_avg_pool2d", &[10, 1, 1]),
        ("flatten", &[10]),
    ];
    check_trace(&load("nin.d2l"), "nin", expected, 1_992_166);
}

#[test]
fn googlenet_matches_the_course() {
    let expected: &[(&str, &[usize])] = &[
        ("b1", &[64, 24, 24]),
        ("b2", &[192, 12, 12]),
        ("b3", &[480, 6, 6]),
        ("b4", &[832, 3, 3]),
        ("b5", &[1024]),
        ("linear", &[10]),
    ];
    check_trace(&load("googlenet.d2l"), "googlenet", expected, 5_977_530);
}

#[test]
fn resnet18_matches_the_course_at_both_sizes() {
    // The course prints the trace at 224x224 and trains at 96x96.
    let at = |side: usize| -> Vec<(&'static str, Vec<usize>)> {
        let s = |k: usize| side / k;
        vec![
            ("b1", vec![64, s(4), s(4)]),
            ("resnet_block", vec![64, s(4), s(4)]),
            ("resnet_block", vec![128, s(8), s(8)]),
            ("resnet_block", vec![256, s(16), s(16)]),
            ("resnet_block", vec![512, s(32), s(32)]),
            ("global_avg_pool2d", vec![512, 1, 1]),
            ("flatten", vec![512]),
            ("linear", vec![10]),
        ]
    };
    let program = load("resnet.d2l");
    let expected = at(96);
    let expected: Vec<(&str, &[usize])> = expected.iter().map(|(n, s)| (*n, s.as_slice())).collect();
    check_trace(&program, "resnet18", &expected, 11_178_378);
    let expected = at(224);
    let expected: Vec<(&str, &[usize])> = expected.iter().map(|(n, s)| (*n, s.as_slice())).collect();
    check_trace(&load_edited("resnet.d2l", "f32[B, 1, 96, 96]", "f32[B, 1, 224, 224]"), "resnet18", &expected, 11_178_378);
    // Batch norm's running statistics are buffers, not parameters: two per
    // batch norm (17 of them), each holding one value per channel.
    let g = lower(&program, "resnet18", 1).graph;
    assert_eq!(g.states().len(), 2 * 17);
}

#[test]
fn batchnorm_lenet_matches_the_course() {
    for (model, bn) in [("batchnorm_lenet", "scratch_batch_norm"), ("batchnorm_lenet_concise", "batch_norm")] {
        let expected: &[(&str, &[usize])] = &[
            ("conv2d", &[6, 24, 24]),
            (bn, &[6, 24, 24]),
            ("avg_pool2d", &[6, 12, 12]),
            ("conv2d", &[16, 8, 8]),
            (bn, &[16, 8, 8]),
            ("avg_pool2d", &[16, 4, 4]),
            ("flatten", &[256]),
            ("linear", &[120]),
            (bn, &[120]),
            ("linear", &[84]),
            (bn, &[84]),
            ("linear", &[10]),
        ];
        check_trace(&load("batchnorm_lenet.d2l"), model, expected, 44_878);
    }
}

#[test]
fn edge_detector_matches_the_course() {
    check_trace(&load("edge_detector.d2l"), "edge_detector", &[("conv2d", &[1, 6, 7])], 2);
    // The data: a white image with a black band in columns 2..6, and its edges.
    let (x, y) = d2l::train::sources::edge_detection_data();
    assert_eq!((x.shape().0, y.shape().0), (vec![1, 1, 6, 8], vec![1, 1, 6, 7]));
    let row = |t: &Tensor, w: usize| t.to_f64_vec()[..w].to_vec();
    assert_eq!(row(&x, 8), [1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 1.0]);
    assert_eq!(row(&y, 7), [0.0, 1.0, 0.0, 0.0, 0.0, -1.0, 0.0]);
}

#[test]
fn the_edge_detector_learns_the_kernel_in_ten_steps() {
    use d2l::train::{TrainOptions, prepare};
    use d2l_runtime::train::Silent;
    // Ten steps from any of a few initialisations: close to [[1, -1]].
    for seed in 0..3 {
        let program = load("edge_detector.d2l");
        let mut run = prepare(&program, "edge_detector", &TrainOptions { seed, ..TrainOptions::default() }).unwrap();
        assert_eq!(run.epochs, 10);
        for _ in 0..run.epochs {
            run.epoch(&mut Silent).unwrap();
        }
        let k = run.trainer.params()["conv2d_0.W"].to_f64_vec();
        assert!((k[0] - 1.0).abs() < 0.15 && (k[1] + 1.0).abs() < 0.15, "seed {seed}: kernel {k:?}");
    }
}

// ---- exact checks through the language ----------------------------------

/// Compiles `src` (one model) and runs it in evaluation mode on `inputs`,
/// as `d2l run` does; returns its output's shape and values.
fn run(src: &str, inputs: &[(&str, Tensor)]) -> (Vec<usize>, Vec<f64>) {
    let compiled = d2l::compile_str("check.d2l", src, &Options::default()).unwrap_or_else(|e| panic!("{e}"));
    let model = compiled.program.default_model().unwrap().to_string();
    let mut session = compiled.session(d2l::Device::JIT).unwrap();
    let feeds: Vec<(&str, &Tensor)> = inputs.iter().map(|(n, t)| (*n, t)).collect();
    let out = session.run(&model, &feeds).unwrap_or_else(|e| panic!("{e}"));
    (out[0].1.shape().0, out[0].1.to_f64_vec())
}

fn arange(shape: &[usize]) -> Tensor {
    let n = shape.iter().product();
    Tensor::from_f32(shape, (0..n).map(|i| i as f32).collect())
}

fn pool(call: &str, x: Tensor) -> (Vec<usize>, Vec<f64>) {
    let src = format!("model pool(x: f32[N, C, H, W]) {{\n    return {call}\n}}\n");
    run(&src, &[("x", x)])
}

#[test]
fn max_pooling_matches_the_course() {
    // §22: X = arange(16).reshape(1, 1, 4, 4).
    let x = || arange(&[1, 1, 4, 4]);
    assert_eq!(pool("max_pool2d(x, 3, padding=1, stride=2)", x()), (vec![1, 1, 2, 2], vec![5.0, 7.0, 13.0, 15.0]));
    assert_eq!(pool("max_pool2d(x, (2, 3), padding=(1, 1), stride=(2, 3))", x()), (vec![1, 1, 3, 2], vec![1.0, 3.0, 9.0, 11.0, 13.0, 15.0]));
    // Two channels, X and X + 1, pooled separately.
    let (shape, y) = pool("max_pool2d(concat((x, x + 1.0), 1), 3, padding=1, stride=2)", x());
    assert_eq!((shape, y), (vec![1, 2, 2, 2], vec![5.0, 7.0, 13.0, 15.0, 6.0, 8.0, 14.0, 16.0]));
    // PyTorch pads max pooling with -inf: padding never wins, even over
    // negative values (zero padding would give 0 in every window here).
    let (_, y) = pool("max_pool2d(x - 100.0, (2, 3), padding=(1, 1), stride=(2, 3))", x());
    assert_eq!(y, vec![-99.0, -97.0, -91.0, -89.0, -87.0, -85.0]);
}

#[test]
fn average_pooling_matches_the_course() {
    // The course's pool2d(X, (2, 2), 'avg') on arange(9).reshape(3, 3).
    assert_eq!(pool("avg_pool2d(x, 2, stride=1)", arange(&[1, 1, 3, 3])), (vec![1, 1, 2, 2], vec![2.0, 3.0, 5.0, 6.0]));
    // Padding counts as zeros in the average (PyTorch's count_include_pad).
    assert_eq!(pool("avg_pool2d(x, 2, padding=1, stride=2)", arange(&[1, 1, 2, 2])), (vec![1, 1, 2, 2], vec![0.0, 0.25, 0.5, 0.75]));
    // Global average pooling: the mean of each channel.
    assert_eq!(pool("global_avg_pool2d(x)", arange(&[1, 2, 2, 2])), (vec![1, 2, 1, 1], vec![1.5, 5.5]));
}

#[test]
fn cross_correlation_matches_the_course() {
    let src = "model corr(x: f32[N, C, H, W], k: f32[O, C, KH, KW]) {\n    return conv(x, k)\n}\n";
    // §19: corr2d(arange(9).reshape(3, 3), [[0, 1], [2, 3]]).
    let k = Tensor::from_f32(&[1, 1, 2, 2], vec![0.0, 1.0, 2.0, 3.0]);
    assert_eq!(run(src, &[("x", arange(&[1, 1, 3, 3])), ("k", k)]), (vec![1, 1, 2, 2], vec![19.0, 25.0, 37.0, 43.0]));
    // §21: two input channels (X, X + 1) summed; three output channels K, K + 1, K + 2.
    let x = Tensor::from_f32(&[1, 2, 3, 3], (0..9).chain(1..10).map(|v| v as f32).collect());
    let k0 = [0.0, 1.0, 2.0, 3.0, 1.0, 2.0, 3.0, 4.0];
    let k: Vec<f32> = (0..3).flat_map(|o| k0.iter().map(move |v| v + o as f32)).collect();
    let (shape, y) = run(src, &[("x", x), ("k", Tensor::from_f32(&[3, 2, 2, 2], k))]);
    assert_eq!(shape, vec![1, 3, 2, 2]);
    assert_eq!(y, vec![56.0, 72.0, 104.0, 120.0, 76.0, 100.0, 148.0, 172.0, 96.0, 128.0, 192.0, 224.0]);
}

#[test]
fn padding_and_stride_shapes_match_the_course() {
    // §20 on an 8x8 input: (kernel, padding, stride) -> output size.
    let cases = [
        ("kernel=3, padding=1", [8, 8]),
        ("kernel=(5, 3), padding=(2, 1)", [8, 8]),
        ("kernel=3, padding=1, stride=2", [4, 4]),
        ("kernel=(3, 5), padding=(0, 1), stride=(3, 4)", [2, 2]),
    ];
    for (args, hw) in cases {
        let src = format!("model m(x: f32[B, 1, 8, 8]) {{\n    return conv2d(x, 1, {args})\n}}\n");
        let program = Program::load("m.d2l", &src, None).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(lower(&program, "m", 1).layers[0].shape.0, vec![1, 1, hw[0], hw[1]], "{args}");
    }
}

/// Runs a one-input model in training mode (batch statistics, as the
/// course's demos in train mode); returns every output by name.
fn run_training(src: &str, x: Tensor) -> HashMap<String, Tensor> {
    let program = Program::load("train.d2l", src, None).unwrap_or_else(|e| panic!("{e}"));
    let model = program.default_model().unwrap().to_string();
    let opts = LowerOptions { input_shapes: [("x".to_string(), x.shape().0)].into(), training: true, ..LowerOptions::default() };
    let graph = program.lower(&model, &opts).unwrap_or_else(|e| panic!("{e}")).graph;
    let mut feeds = init_params(&graph, 0);
    feeds.insert("x".into(), x);
    Interpreter::new(0).run(&graph, &feeds).unwrap().into_iter().collect()
}

#[test]
fn layer_norm_and_batch_norm_normalize_different_axes() {
    // §68: on [[1, 2], [2, 3]], LayerNorm normalizes each row and BatchNorm
    // each column; eps = 1e-5 scales +-1 by sqrt(0.25 / (0.25 + 1e-5)).
    let x = || Tensor::from_f32(&[2, 2], vec![1.0, 2.0, 2.0, 3.0]);
    let scale = (0.25f64 / (0.25 + 1e-5)).sqrt();
    let close = |got: Vec<f64>, want: [f64; 4]| {
        assert!(got.iter().zip(want).all(|(g, w)| (g - w * scale).abs() < 1e-6), "{got:?} vs {want:?} x {scale}");
    };
    let ln = run_training("model ln(x: f32[N, 2]) -> f32[N, 2] {\n    return layer_norm(x)\n}\n", x());
    close(ln["output"].to_f64_vec(), [-1.0, 1.0, -1.0, 1.0]);
    let bn = run_training("model bn(x: f32[N, 2]) -> f32[N, 2] {\n    return batch_norm(x)\n}\n", x());
    close(bn["output"].to_f64_vec(), [-1.0, -1.0, 1.0, 1.0]);
}

#[test]
fn layer_norm_has_a_scale_and_shift_per_feature() {
    let program = Program::load("ln.d2l", "model ln(x: f32[N, T, 8]) -> f32[N, T, 8] {\n    return layer_norm(x)\n}\n", None).unwrap();
    let lowered = lower(&program, "ln", 2);
    assert_eq!(lowered.param_count(), 16);
    assert!(lowered.graph.states().is_empty(), "no running statistics");
}

#[test]
fn scratch_and_builtin_batch_norm_agree() {
    // Same parameters, same batch: equal outputs and equal running statistics
    // after a training step, then equal predictions in evaluation mode.
    let program = load("batchnorm_lenet.d2l");
    let lowered = |model: &str, training: bool| {
        let opts = LowerOptions { input_shapes: [("x".to_string(), vec![4, 1, 28, 28])].into(), training, ..LowerOptions::default() };
        program.lower(model, &opts).unwrap_or_else(|e| panic!("{e}")).graph
    };
    let x = Tensor::from_f32(&[4, 1, 28, 28], (0..4 * 784).map(|i| ((i * 37 % 101) as f32) / 101.0).collect());
    let mut scratch_feeds = init_params(&lowered("batchnorm_lenet", true), 7);
    scratch_feeds.insert("x".into(), x.clone());
    // Conv and linear weights have the same names in both; batch-norm
    // parameters start at ones and zeros in both.
    let concise_graph = lowered("batchnorm_lenet_concise", true);
    let mut concise_feeds = init_params(&concise_graph, 7);
    for (name, t) in concise_feeds.iter_mut() {
        if let Some(v) = scratch_feeds.get(name) {
            *t = v.clone();
        }
    }
    concise_feeds.insert("x".into(), x.clone());
    let a: HashMap<String, Tensor> = Interpreter::new(0).run(&lowered("batchnorm_lenet", true), &scratch_feeds).unwrap().into_iter().collect();
    let b: HashMap<String, Tensor> = Interpreter::new(0).run(&concise_graph, &concise_feeds).unwrap().into_iter().collect();
    let close = |p: &Tensor, q: &Tensor, what: &str| {
        let (p, q) = (p.to_f64_vec(), q.to_f64_vec());
        assert_eq!(p.len(), q.len(), "{what}");
        assert!(p.iter().zip(&q).all(|(u, v)| (u - v).abs() < 1e-4), "{what}: {p:?} vs {q:?}");
    };
    close(&a["output"], &b["output"], "training output");
    for k in 0..4 {
        for (s, c) in [("moving_mean", "running_mean"), ("moving_var", "running_var")] {
            let ours = &a[&format!("scratch_batch_norm_{k}.{s}")];
            let theirs = &b[&format!("batch_norm_{k}.{c}")];
            close(ours, theirs, s);
        }
    }
    // Evaluation with the updated statistics.
    let scratch_graph = lowered("batchnorm_lenet", true);
    for o in scratch_graph.updates() {
        scratch_feeds.insert(o.name.clone(), a[&o.name].clone());
    }
    for o in concise_graph.updates() {
        concise_feeds.insert(o.name.clone(), b[&o.name].clone());
    }
    let output = |model: &str, feeds: &HashMap<String, Tensor>| Interpreter::new(0).run(&lowered(model, false), feeds).unwrap().into_iter().find(|(n, _)| n == "output").unwrap().1;
    close(&output("batchnorm_lenet", &scratch_feeds), &output("batchnorm_lenet_concise", &concise_feeds), "evaluation output");
}

// ---- gradients of each network's blocks, at miniature sizes -------------

/// Checks the symbolic gradient of cross-entropy of `model` (from `file`
/// plus `extra` source, which may use the file's blocks) against central
/// differences in f64, in training mode, at a batch of 2.
fn gradcheck(file: &str, extra: &str, model: &str) {
    let text = std::fs::read_to_string(model_path(file)).unwrap() + extra;
    let program = Program::load(file, &text, None).unwrap_or_else(|e| panic!("{e}"));
    let opts = LowerOptions { default_dim: Some(2), training: true, ..LowerOptions::default() };
    let spec = LossSpec::one_label("cross_entropy", "label", DType::I64, vec![2]);
    let forward = promote_f64(&program.lower_with_loss(model, &opts, &spec).unwrap_or_else(|e| panic!("{e}")).graph).unwrap();
    let grads = differentiate_params(&forward, "loss", &DiffOptions::default()).unwrap();
    let mut feeds = init_params(&forward, 3);
    let x = forward.inputs().into_iter().find(|&i| matches!(&forward.node(i).op, Op::Input { name, .. } if name == "x")).unwrap();
    let shape = forward.shape(x).0.clone();
    let n: usize = shape.iter().product();
    // Distinct values: no ties under max pooling.
    feeds.insert("x".into(), Tensor::from_f64(&shape, (0..n).map(|i| ((i * 37 % 101) as f64) / 101.0 - 0.3).collect()));
    feeds.insert("label".into(), Tensor::from_i64(&[2], vec![1, 3]));
    let mut loss = |feeds: &HashMap<String, Tensor>| Interpreter::new(5).run(&forward, feeds).unwrap().into_iter().find(|(n, _)| n == "loss").unwrap().1.to_f64_vec()[0];
    let values = Interpreter::new(5).eval_nodes(&grads.graph, &feeds).unwrap();
    let what = format!("{file} {model}");
    for (k, &p) in forward.params().iter().enumerate() {
        let Op::Param { name, .. } = &forward.node(p).op else { unreachable!() };
        let analytic = values[grads.grads[k].index()].to_f64_vec();
        let coords = (0..analytic.len()).step_by((analytic.len() / 3).max(1)).take(4);
        fd::check_coordinates(&what, &mut loss, &mut feeds, name, &analytic, coords);
        fd::check_direction(&what, &mut loss, &mut feeds, name, &analytic, k as u64 + 1);
    }
}

#[test]
fn vgg_block_gradients() {
    gradcheck("vgg.d2l", "model tiny(x: f32[B, 1, 8, 8]) {\n    x = vgg_block(x, 2, 3)\n    return linear(flatten(x), 4)\n}\n", "tiny");
}

#[test]
fn nin_block_gradients() {
    gradcheck("nin.d2l", "model tiny(x: f32[B, 2, 7, 7]) {\n    x = nin_block(x, 4, kernel=3, stride=2, padding=1)\n    return flatten(global_avg_pool2d(x))\n}\n", "tiny");
}

#[test]
fn inception_gradients() {
    gradcheck("googlenet.d2l", "model tiny(x: f32[B, 3, 5, 5]) {\n    x = inception(x, 2, (2, 3), (1, 2), 2)\n    return linear(flatten(global_avg_pool2d(x)), 4)\n}\n", "tiny");
}

#[test]
fn residual_gradients() {
    // Both kinds of residual block, with batch norm in training mode.
    let tiny = "model tiny(x: f32[B, 2, 6, 6]) {\n    x = resnet_block(x, 3, 2)\n    return linear(flatten(global_avg_pool2d(x)), 4)\n}\n";
    gradcheck("resnet.d2l", tiny, "tiny");
}

// ---- image data sources ---------------------------------------------------

fn image_program(data: &str) -> Program {
    let src = format!(
        "model m(x: f32[B, 1, 32, 32]) -> f32[B, 10] {{\n    return linear(flatten(x), 10)\n}}\n\ntrain m {{\n    data = {data}\n    loss = cross_entropy\n    optimizer = sgd(lr=0.1)\n}}\n"
    );
    Program::load("images.d2l", &src, None).unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn fashion_mnist_resizes_and_flips_per_batch() {
    use d2l::train::{TrainOptions, prepare};
    use d2l_runtime::data::{BatchOptions, TensorDataset};
    let program = image_program("fashion_mnist(batch=4, resize=32, flip=true)");
    let mut run = prepare(&program, "m", &TrainOptions { limit: Some(40), ..TrainOptions::default() }).unwrap_or_else(|e| panic!("{e}"));
    // The model sees 32x32 images: the schema and every batch say so.
    assert_eq!(run.source.schema().inputs[0].dims, vec![1, 32, 32]);
    let mut fields = vec![Tensor::zeros(d2l::DType::F32, &[0]); 2];
    assert!(run.source.train_epoch(0).unwrap().next_batch(&mut fields));
    assert_eq!((fields[0].dims(), fields[1].dims()), (&[4, 1, 32, 32][..], &[4][..]));
    // Without `flip` the same seed cuts the same batches: each image is the
    // unflipped one or its mirror, and some are mirrored.
    let plain = prepare(&image_program("fashion_mnist(batch=4, resize=32)"), "m", &TrainOptions { limit: Some(40), ..TrainOptions::default() }).unwrap();
    let (mut flipped, mut same) = (vec![Tensor::zeros(d2l::DType::F32, &[0]); 2], vec![Tensor::zeros(d2l::DType::F32, &[0]); 2]);
    let (mut a, mut b) = (run.source.train_epoch(1).unwrap(), plain.source.train_epoch(1).unwrap());
    let mut mirrored = 0;
    while a.next_batch(&mut flipped) {
        assert!(b.next_batch(&mut same));
        assert_eq!(flipped[1].to_f64_vec(), same[1].to_f64_vec(), "same examples");
        let (x, y) = (flipped[0].to_f64_vec(), same[0].to_f64_vec());
        for (img, orig) in x.chunks(32 * 32).zip(y.chunks(32 * 32)) {
            let mirror: Vec<f64> = orig.chunks(32).flat_map(|row| row.iter().rev().copied()).collect();
            assert!(img == orig || img == mirror.as_slice(), "an image is itself or its mirror");
            mirrored += usize::from(img != orig);
        }
    }
    assert!((5..=35).contains(&mirrored), "{mirrored} of 40 images mirrored");
    drop((a, b));
    run.epoch(&mut d2l_runtime::train::Silent).unwrap();
    // Evaluation resizes each batch (never flips): the same figures as the
    // whole test set resized at once and cut into the same batches.
    let resized = run.evaluate_test().unwrap().unwrap();
    let test = d2l_runtime::data::load_mnist_like(&d2l_runtime::data::find_dataset("fashion-mnist", None).unwrap(), d2l_runtime::data::Split::Test).unwrap().to_tensor_dataset();
    let first: Vec<usize> = (0..40).collect();
    let (x, y) = test.select(&first).unwrap().batches(&BatchOptions::new(40).shuffle(false).resize(32, 32), 0).unwrap().next().unwrap();
    let whole = TensorDataset::new(x, y).unwrap();
    let reference = run.trainer.evaluate(&mut whole.batches(&BatchOptions::new(4).shuffle(false), 0).unwrap()).unwrap();
    assert_eq!(resized.examples, 40);
    assert!((resized.loss - reference.loss).abs() < 1e-9 && resized.accuracy == reference.accuracy, "{resized:?} vs {reference:?}");
}

#[test]
fn bad_image_options_are_reported_at_the_source() {
    use d2l::train::{TrainOptions, prepare};
    for (data, message) in [
        ("fashion_mnist(batch=4, resize=0)", "`resize` is N or (height, width)"),
        ("fashion_mnist(batch=4, resize=(32, 32, 1))", "`resize` is N or (height, width)"),
        ("fashion_mnist(batch=4, resize=(32, -1))", "`resize` sides must be ints"),
        ("fashion_mnist(batch=4, flip=1)", "`flip` is true or false"),
        ("edge_detection(batch=1, resize=8)", "takes no argument `resize`"),
    ] {
        let err = match prepare(&image_program(data), "m", &TrainOptions { limit: Some(8), ..TrainOptions::default() }) {
            Ok(_) => panic!("{data} should be rejected"),
            Err(e) => e.to_string(),
        };
        assert!(err.contains(message) && err.contains("images.d2l:6:"), "{data}: {err}");
    }
}
