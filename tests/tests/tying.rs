//! Parameter tying (course §16 "tied parameters"): `share(block, ...)` makes
//! one instance whose every call uses the same parameters.

use std::collections::HashMap;

use d2l_dsl::{LossSpec, LowerOptions, Lowered, Program};
use d2l_ir::{DType, Graph, Op};
use d2l_passes::{DiffOptions, differentiate_params, promote_f64};
use d2l_runtime::{Interpreter, Tensor, init_params};
use d2l_tests::{Rng, compile_error, fd};

/// The course's §16 network: Linear(4, 8), ReLU, a shared Linear(8, 8)
/// applied twice (each followed by ReLU), Linear(8, 1); and the same
/// network with two separate middle layers.
const NETS: &str = "
model tied(x: f32[B, 4]) -> f32[B, 1] {
    x = linear(x, 8) |> relu
    shared = share(linear, out=8)
    x = shared(x) |> relu
    x = x |> shared |> relu
    return linear(x, 1)
}

model untied(x: f32[B, 4]) -> f32[B, 1] {
    x = linear(x, 8) |> relu
    x = linear(x, 8) |> relu
    x = linear(x, 8) |> relu
    return linear(x, 1)
}
";

const BATCH: usize = 3;

fn program(src: &str) -> Program {
    Program::load("tying.d2l", src, None).unwrap_or_else(|e| panic!("{e}"))
}

fn lower(src: &str, model: &str, training: bool) -> Lowered {
    let opts = LowerOptions { default_dim: Some(BATCH), training, ..LowerOptions::default() };
    program(src).lower(model, &opts).unwrap_or_else(|e| panic!("{e}"))
}

fn param_names(graph: &Graph) -> Vec<String> {
    graph.params().into_iter().map(|p| graph.leaf_name(p).unwrap().to_string()).collect()
}

fn param_named(graph: &Graph, name: &str) -> d2l_ir::NodeId {
    let found: Vec<_> = graph.params().into_iter().filter(|&p| graph.leaf_name(p) == Some(name)).collect();
    assert_eq!(found.len(), 1, "exactly one `{name}` in {:?}", param_names(graph));
    found[0]
}

fn random(rng: &mut Rng, dims: &[usize]) -> Vec<f64> {
    (0..dims.iter().product()).map(|_| rng.uniform(-1.0, 1.0)).collect()
}

/// `relu(x W + b)` (or without the relu) on row-major matrices.
fn dense(x: &[f64], rows: usize, w: &[f64], b: &[f64], relu: bool) -> Vec<f64> {
    let (k, n) = (w.len() / b.len(), b.len());
    let mut y = vec![0.0; rows * n];
    for r in 0..rows {
        for j in 0..n {
            let v = b[j] + (0..k).map(|i| x[r * k + i] * w[i * n + j]).sum::<f64>();
            y[r * n + j] = if relu { v.max(0.0) } else { v };
        }
    }
    y
}

#[test]
fn one_instance_called_twice_reads_one_parameter() {
    let lowered = lower(NETS, "tied", false);
    let g = &lowered.graph;
    // 4*8+8 + 8*8+8 + 8*1+1: the shared layer counts once.
    assert_eq!(lowered.param_count(), 121);
    assert_eq!(param_names(g), ["linear_0.W", "linear_0.b", "linear_1.W", "linear_1.b", "linear_2.W", "linear_2.b"]);
    let w = param_named(g, "linear_1.W");
    let matmuls: Vec<_> = g.users(w).into_iter().filter(|&u| matches!(g.node(u).op, Op::MatMul)).collect();
    assert_eq!(matmuls.len(), 2, "both uses read the same Param node");
    assert_eq!(lower(NETS, "untied", false).param_count(), 121 + 72);

    // The summary rows: the second call of the instance created nothing.
    let linear_rows: Vec<usize> = lowered.layers.iter().filter(|l| l.name == "linear").map(|l| l.params).collect();
    assert_eq!(linear_rows, [40, 72, 0, 9]);

    // The output is the hand computation with the same weights applied twice.
    let params = init_params(g, 11);
    let p = |n: &str| params[n].to_f64_vec();
    let mut rng = Rng(1);
    let x = random(&mut rng, &[BATCH, 4]);
    let mut feeds = params.clone();
    feeds.insert("x".into(), Tensor::from_f32(&[BATCH, 4], x.iter().map(|&v| v as f32).collect()));
    let out = Interpreter::new(0).run(g, &feeds).unwrap();
    let y = out.iter().find(|(n, _)| n == "output").unwrap().1.to_f64_vec();
    let h = dense(&x, BATCH, &p("linear_0.W"), &p("linear_0.b"), true);
    let h = dense(&h, BATCH, &p("linear_1.W"), &p("linear_1.b"), true);
    let h = dense(&h, BATCH, &p("linear_1.W"), &p("linear_1.b"), true);
    let expect = dense(&h, BATCH, &p("linear_2.W"), &p("linear_2.b"), false);
    assert_eq!(y.len(), expect.len());
    for (a, b) in y.iter().zip(&expect) {
        assert!((a - b).abs() <= 1e-5 * (1.0 + b.abs()), "{y:?} vs {expect:?}");
    }
}

/// The f64 training graph of `model` with an MSE loss, its feeds (from
/// `params`, renamed by `rename`, plus fixed x and labels), and the
/// gradient of every parameter by name.
struct Trained {
    forward: Graph,
    feeds: HashMap<String, Tensor>,
    grads: HashMap<String, Vec<f64>>,
}

fn gradients(model: &str, params: &HashMap<String, Tensor>, rename: &[(&str, &str)]) -> Trained {
    let spec = LossSpec::one_label("mse", "label", DType::F32, vec![BATCH, 1]);
    let opts = LowerOptions { default_dim: Some(BATCH), training: true, ..LowerOptions::default() };
    let lowered = program(NETS).lower_with_loss(model, &opts, &spec).unwrap_or_else(|e| panic!("{e}"));
    let forward = promote_f64(&lowered.graph).unwrap();
    let grads = differentiate_params(&forward, "loss", &DiffOptions::default()).unwrap();
    let mut feeds = HashMap::new();
    for (to, from) in rename {
        feeds.insert(to.to_string(), params[*from].cast(DType::F64));
    }
    let mut rng = Rng(5);
    feeds.insert("x".into(), Tensor::from_f64(&[BATCH, 4], random(&mut rng, &[BATCH, 4])));
    feeds.insert("label".into(), Tensor::from_f64(&[BATCH, 1], random(&mut rng, &[BATCH, 1])));
    let values = Interpreter::new(0).eval_nodes(&grads.graph, &feeds).unwrap();
    let names = param_names(&forward);
    assert_eq!(names.len(), rename.len(), "every parameter is fed");
    let grads = names.into_iter().zip(&grads.grads).map(|(n, g)| (n, values[g.index()].to_f64_vec())).collect();
    Trained { forward, feeds, grads }
}

fn loss_of(graph: &Graph, feeds: &HashMap<String, Tensor>) -> f64 {
    let out = Interpreter::new(0).run(graph, feeds).unwrap();
    out.iter().find(|(n, _)| n == "loss").unwrap().1.to_f64_vec()[0]
}

const TIED_PARAMS: [(&str, &str); 6] =
    [("linear_0.W", "linear_0.W"), ("linear_0.b", "linear_0.b"), ("linear_1.W", "linear_1.W"), ("linear_1.b", "linear_1.b"), ("linear_2.W", "linear_2.W"), ("linear_2.b", "linear_2.b")];

#[test]
fn a_tied_gradient_matches_finite_differences() {
    let params = init_params(&lower(NETS, "tied", true).graph, 3);
    let Trained { forward, mut feeds, grads } = gradients("tied", &params, &TIED_PARAMS);
    let mut loss = |f: &HashMap<String, Tensor>| loss_of(&forward, f);
    for (name, _) in TIED_PARAMS {
        let g = &grads[name];
        fd::check_direction("tied", &mut loss, &mut feeds, name, g, 1);
    }
    for name in ["linear_1.W", "linear_1.b"] {
        let g = &grads[name];
        assert!(g.iter().any(|v| v.abs() > 1e-3), "{name}: the gradient is not trivially zero");
        fd::check_coordinates("tied", &mut loss, &mut feeds, name, g, 0..g.len());
    }
}

#[test]
fn a_tied_gradient_is_the_sum_over_its_uses() {
    let params = init_params(&lower(NETS, "tied", true).graph, 3);
    let tied = gradients("tied", &params, &TIED_PARAMS);
    // Two separate middle layers holding the same values.
    let copy = [
        ("linear_0.W", "linear_0.W"),
        ("linear_0.b", "linear_0.b"),
        ("linear_1.W", "linear_1.W"),
        ("linear_1.b", "linear_1.b"),
        ("linear_2.W", "linear_1.W"),
        ("linear_2.b", "linear_1.b"),
        ("linear_3.W", "linear_2.W"),
        ("linear_3.b", "linear_2.b"),
    ];
    let untied = gradients("untied", &params, &copy);
    let (a, b) = (loss_of(&tied.forward, &tied.feeds), loss_of(&untied.forward, &untied.feeds));
    assert!((a - b).abs() <= 1e-12, "same function: {a} vs {b}");
    let close = |what: &str, x: &[f64], y: &[f64]| {
        assert_eq!(x.len(), y.len());
        for (p, q) in x.iter().zip(y) {
            assert!((p - q).abs() <= 1e-12 * (1.0 + q.abs()), "{what}: {x:?} vs {y:?}");
        }
    };
    for p in ["W", "b"] {
        let sum: Vec<f64> = untied.grads[&format!("linear_1.{p}")].iter().zip(&untied.grads[&format!("linear_2.{p}")]).map(|(u, v)| u + v).collect();
        close(&format!("linear_1.{p}"), &tied.grads[&format!("linear_1.{p}")], &sum);
        close(&format!("linear_0.{p}"), &tied.grads[&format!("linear_0.{p}")], &untied.grads[&format!("linear_0.{p}")]);
        close(&format!("linear_2.{p}"), &tied.grads[&format!("linear_2.{p}")], &untied.grads[&format!("linear_3.{p}")]);
    }
}

#[test]
fn the_instance_takes_the_scope_a_call_would_have_taken() {
    let src = "model m(x: f32[B, 4]) {\n    s = share(linear, out=4)\n    x = linear(x, 4)\n    return s(s(x)) |> linear(2)\n}\n";
    let g = lower(src, "m", false).graph;
    assert_eq!(param_names(&g), ["linear_1.W", "linear_1.b", "linear_0.W", "linear_0.b", "linear_2.W", "linear_2.b"]);
}

#[test]
fn nested_layers_of_a_shared_block_get_the_same_names_on_every_call() {
    let src = "
block pair(x, n: int) {
    h = linear(x, n) |> relu
    return linear(h, n)
}

model m(x: f32[B, 4]) {
    p = share(pair, n=4)
    for i in 0..3 {
        x = p(x)
    }
    return pair(x, 4)
}
";
    let g = lower(src, "m", false).graph;
    assert_eq!(
        param_names(&g),
        ["pair_0.linear_0.W", "pair_0.linear_0.b", "pair_0.linear_1.W", "pair_0.linear_1.b", "pair_1.linear_0.W", "pair_1.linear_0.b", "pair_1.linear_1.W", "pair_1.linear_1.b"]
    );
    for w in ["pair_0.linear_0.W", "pair_0.linear_1.W"] {
        assert_eq!(g.users(param_named(&g, w)).len(), 3, "{w} is read by each of the three calls");
    }
}

#[test]
fn an_instance_passed_to_a_block_or_kept_in_a_tuple_names_the_same_parameters() {
    let src = "
block twice(x, layer) {
    return layer(layer(x))
}

model m(x: f32[B, 8]) {
    s = share(linear, out=8)
    layers = (s, s)
    y = twice(x, s)
    for l in layers {
        y = l(y)
    }
    return y
}
";
    let g = lower(src, "m", false).graph;
    assert_eq!(param_names(&g), ["linear_0.W", "linear_0.b"]);
    assert_eq!(g.users(param_named(&g, "linear_0.W")).len(), 4);
}

#[test]
fn two_share_calls_do_not_share() {
    // Sharing happens only when asked (Flax's warning about Bidirectional).
    let src = "model m(x: f32[B, 8]) {\n    a = share(linear, out=8)\n    b = share(linear, out=8)\n    return x |> a |> b\n}\n";
    let lowered = lower(src, "m", false);
    assert_eq!(param_names(&lowered.graph), ["linear_0.W", "linear_0.b", "linear_1.W", "linear_1.b"]);
    assert_eq!(lowered.param_count(), 2 * 72);
}

#[test]
fn bound_and_call_arguments_combine() {
    let src = "model m(x: f32[B, 4]) {\n    s = share(linear, bias=false)\n    return s(s(x, 4), out=4)\n}\n";
    let g = lower(src, "m", false).graph;
    assert_eq!(param_names(&g), ["linear_0.W"]);
}

/// Batch norm used twice through one instance, in training mode: the
/// second call starts from the first call's running statistics, and the
/// update is the value after both.
#[test]
fn a_shared_buffer_is_updated_by_each_call_in_turn() {
    let src = "model m(x: f32[N, 2]) {\n    bn = share(batch_norm)\n    y = bn(x)\n    return bn(y * 2.0 + 1.0)\n}\n";
    let opts = LowerOptions { input_shapes: [("x".to_string(), vec![2, 2])].into(), training: true, ..LowerOptions::default() };
    let g = program(src).lower("m", &opts).unwrap_or_else(|e| panic!("{e}")).graph;
    assert_eq!(param_names(&g), ["batch_norm_0.gamma", "batch_norm_0.beta"]);
    assert_eq!(g.states().len(), 2);
    let updates: Vec<&str> = g.updates().map(|o| o.name.as_str()).collect();
    assert_eq!(updates, ["batch_norm_0.running_mean", "batch_norm_0.running_var"]);

    let mut feeds = init_params(&g, 0);
    feeds.insert("x".into(), Tensor::from_f32(&[2, 2], vec![1.0, 2.0, 2.0, 3.0]));
    let out: HashMap<String, Tensor> = Interpreter::new(0).run(&g, &feeds).unwrap().into_iter().collect();
    // First call: batch mean [1.5, 2.5], biased variance 0.25, so its output
    // is ±k with k = sqrt(0.25 / (0.25 + eps)); the second call's input
    // 2y + 1 has mean 1 and variance 4k².
    let k2 = 0.25 / (0.25 + 1e-5);
    let mean_after_first = [0.1 * 1.5, 0.1 * 2.5];
    let var_after_first = 0.9 + 0.1 * 0.25;
    let mean = out["batch_norm_0.running_mean"].to_f64_vec();
    let var = out["batch_norm_0.running_var"].to_f64_vec();
    for c in 0..2 {
        let want_mean = 0.9 * mean_after_first[c] + 0.1 * 1.0;
        let want_var = 0.9 * var_after_first + 0.1 * 4.0 * k2;
        assert!((mean[c] - want_mean).abs() < 1e-5, "running mean {mean:?}, want {want_mean}");
        assert!((var[c] - want_var).abs() < 1e-5, "running var {var:?}, want {want_var}");
    }

    // In evaluation both calls read the stored statistics and update nothing.
    let opts = LowerOptions { training: false, ..opts };
    let g = program(src).lower("m", &opts).unwrap().graph;
    assert_eq!(g.updates().count(), 0);
    assert_eq!(g.states().len(), 2);
}

fn error(src: &str) -> String {
    compile_error("tying.d2l", src)
}

fn assert_mentions(err: &str, parts: &[&str]) {
    for p in parts {
        assert!(err.contains(p), "expected `{p}` in:\n{err}");
    }
}

#[test]
fn sharing_something_that_is_not_a_block_with_parameters_is_an_error() {
    let wrap = |body: &str| format!("model m(x: f32[B, 4]) {{\n{body}\n    return x\n}}\n");
    assert_mentions(&error(&wrap("    s = share(sigmoid)")), &["`sigmoid` is a builtin function: it has no parameters to share", "2:15"]);
    assert_mentions(&error(&wrap("    s = share(relu)")), &["block `relu` declares no parameters or buffers, so there is nothing to share"]);
    assert_mentions(&error(&wrap("    s = share(no_such_block)")), &["unknown name `no_such_block`"]);
    assert_mentions(&error(&wrap("    s = share(x)")), &["`share` takes a block, got tensor f32[1, 4]"]);
    assert_mentions(&error(&wrap("    s = share()")), &["`share` needs the block to share first"]);
    assert_mentions(&error(&wrap("    s = share(linear, 8)")), &["`share` binds keyword arguments only"]);
    assert_mentions(&error(&wrap("    s = share(linear, outs=8)")), &["`linear` has no parameter named `outs`", "did you mean `out`?"]);
    assert_mentions(&error(&wrap("    s = share(linear, out=8)\n    t = share(s)")), &["this is already a shared instance of `linear` (linear_0)"]);
}

#[test]
fn calling_an_instance_wrongly_is_an_error() {
    let wrap = |body: &str| format!("model m(x: f32[B, 4]) {{\n    s = share(linear, out=8)\n{body}\n}}\n");
    let given_again = "argument `out` of shared instance `linear_0` is already bound by `share`";
    assert_mentions(&error(&wrap("    return s(x, out=4)")), &[given_again, "bound here", "given again here"]);
    assert_mentions(&error(&wrap("    return s(x, 4)")), &[given_again]);
    assert_mentions(&error(&wrap("    return s(x, bais=false)")), &["`linear` has no parameter named `bais`"]);
    assert_mentions(&error(&wrap("    return s()")), &["missing argument `x` in call to `linear`"]);
    // Inputs of another width would need another weight shape.
    assert_mentions(
        &error(&wrap("    y = s(x)\n    return s(y)")),
        &["`W` of shared instance `linear_0` would be param f32[8, 8] in this call, but an earlier call declared it param f32[4, 8]", "this call", "the earlier call"],
    );
}

#[test]
fn an_instance_is_not_a_tensor() {
    let wrap = |body: &str| format!("model m(x: f32[B, 4]) {{\n    s = share(linear, out=8)\n{body}\n}}\n");
    let hint = "a shared instance is a layer, not a value";
    assert_mentions(&error(&wrap("    return s + 1.0")), &["`+` is not defined for shared instance of `linear` (linear_0) and float 1", hint]);
    assert_mentions(&error(&wrap("    return x * s")), &["cannot combine shared instance of `linear` (linear_0) with a f32 tensor", hint]);
    assert_mentions(&error(&wrap("    return linear(s, 2)")), &["argument `x` of `linear` must be f32[..., I], got shared instance", hint]);
    assert_mentions(&error(&wrap("    return s")), &["a model returns tensors, but result 0 is shared instance of `linear` (linear_0)", hint]);
    assert_mentions(&error(&wrap("    return exp(s)")), &["argument `x` of `exp` must be a tensor, got shared instance", hint]);
}

#[test]
fn a_name_declared_twice_in_one_call_is_still_an_error() {
    let src = "block b(x) {\n    param W: f32[4, 4] = zeros\n    param W: f32[4, 4] = zeros\n    return x @ W\n}\nmodel m(x: f32[B, 4]) {\n    s = share(b)\n    return s(x)\n}\n";
    assert_mentions(&error(src), &["`W` is declared twice in this block", "3:11"]);
    // And a loop that declares in the same frame.
    let src = "block b(x) {\n    for i in 0..2 {\n        param W: f32[4, 4] = zeros\n        x = x @ W\n    }\n    return x\n}\nmodel m(x: f32[B, 4]) {\n    s = share(b)\n    return s(s(x))\n}\n";
    assert_mentions(&error(src), &["`W` is declared twice in this block"]);
}
