//! The one finite-difference gradient checker of the test suite: symbolic
//! gradients (computed in f64) against central differences of the loss.
//!
//! Two probes: a single coordinate of a leaf, or the whole leaf along one
//! pseudo-random direction `v` (the directional derivative `∇L·v`, which a
//! wrong gradient anywhere in the tensor changes; two loss evaluations per
//! tensor, so it stays cheap on models with millions of parameters).

use std::collections::HashMap;

use d2l_dsl::{LossSpec, LowerOptions, Program};
use d2l_ir::{DType, Op};
use d2l_passes::{DiffOptions, differentiate_params, promote_f64};
use d2l_runtime::{Interpreter, Tensor, init_params};

use crate::Rng;

/// Step of the central difference (the graphs run in f64). Small, because
/// a step that moves a whole tensor pushes some ReLU inputs of a big
/// network across zero, and the error that makes grows with the step.
pub const EPS: f64 = 1e-7;

/// Largest accepted `|analytic - numeric| / max(1, |analytic|, |numeric|)`.
/// Central differences in f64 at this step are good to ~1e-8 here.
pub const TOL: f64 = 1e-6;

/// The relative error the checker bounds.
pub fn relative_error(analytic: f64, numeric: f64) -> f64 {
    (analytic - numeric).abs() / 1f64.max(analytic.abs()).max(numeric.abs())
}

/// Evaluates the scalar loss for a set of feeds.
pub type Loss<'a> = dyn FnMut(&HashMap<String, Tensor>) -> f64 + 'a;

/// Checks `analytic`, the gradient of the loss with respect to the f64 feed
/// `leaf`, at the coordinates `coords`; panics naming `what` on a mismatch.
/// Returns the worst relative error seen.
pub fn check_coordinates(what: &str, loss: &mut Loss, feeds: &mut HashMap<String, Tensor>, leaf: &str, analytic: &[f64], coords: impl IntoIterator<Item = usize>) -> f64 {
    check_len(what, feeds, leaf, analytic);
    let mut worst = 0.0f64;
    for k in coords {
        let base = values(feeds, leaf)[k];
        let mut at = |x: f64| {
            values(feeds, leaf)[k] = x;
            loss(feeds)
        };
        let numeric = (at(base + EPS) - at(base - EPS)) / (2.0 * EPS);
        values(feeds, leaf)[k] = base;
        let error = relative_error(analytic[k], numeric);
        worst = worst.max(error);
        assert!(error <= TOL, "{what}: d loss / d {leaf}[{k}]: analytic {} vs numeric {numeric} (relative error {error:.2e})", analytic[k]);
    }
    worst
}

/// Checks the whole gradient of `leaf` along a direction drawn from `seed`
/// (entries uniform in [-1, 1)): `analytic · v` against the central
/// difference of the loss along `v`. Returns the relative error.
pub fn check_direction(what: &str, loss: &mut Loss, feeds: &mut HashMap<String, Tensor>, leaf: &str, analytic: &[f64], seed: u64) -> f64 {
    check_len(what, feeds, leaf, analytic);
    let base = values(feeds, leaf).to_vec();
    let mut rng = Rng(seed);
    let direction: Vec<f64> = (0..base.len()).map(|_| rng.uniform(-1.0, 1.0)).collect();
    let mut at = |delta: f64| {
        for ((x, b), v) in values(feeds, leaf).iter_mut().zip(&base).zip(&direction) {
            *x = b + delta * v;
        }
        loss(feeds)
    };
    let numeric = (at(EPS) - at(-EPS)) / (2.0 * EPS);
    values(feeds, leaf).copy_from_slice(&base);
    let projected: f64 = analytic.iter().zip(&direction).map(|(g, v)| g * v).sum();
    let error = relative_error(projected, numeric);
    assert!(error <= TOL, "{what}: d loss / d {leaf} along a random direction: analytic {projected} vs numeric {numeric} (relative error {error:.2e})");
    error
}

/// Checks the gradient of every parameter of model `m`, written in `src`
/// (dims bound by `dims`, in training mode or not), under the loss
/// `sum(y * w)` for a fed `w`: in f64, at a few coordinates and along a
/// random direction. Inputs get values uniform in [-1, 1), i64 inputs
/// integers in `0..vocab` that stay inside the tables they index. Returns the number of parameter tensors checked;
/// panics naming `what` on a mismatch or a gradient that is all zeros (a
/// check that would say nothing).
pub fn check_params(what: &str, src: &str, dims: &[(&str, usize)], training: bool, vocab: i64) -> usize {
    const WEIGHTED_SUM: &str = "block weighted_sum(y, w) {\n    return sum(y * w)\n}\n";
    let program = Program::load("gradcheck.d2l", &format!("{src}{WEIGHTED_SUM}"), None).unwrap_or_else(|e| panic!("{what}: {e}"));
    let opts = LowerOptions { dims: dims.iter().map(|&(k, v)| (k.to_string(), v)).collect(), training, ..LowerOptions::default() };
    let probe = program.lower("m", &opts).unwrap_or_else(|e| panic!("{what}: {e}")).graph;
    let out_dims = probe.shape(probe.outputs()[0].node).0.clone();
    let spec = LossSpec::one_label("weighted_sum", "w", DType::F32, out_dims);
    let forward = promote_f64(&program.lower_with_loss("m", &opts, &spec).unwrap_or_else(|e| panic!("{what}: {e}")).graph).unwrap();
    let grads = differentiate_params(&forward, "loss", &DiffOptions::default()).unwrap();
    let mut feeds = init_params(&forward, 3);
    let mut rng = Rng(11);
    let bounds = crate::index_bounds(&forward);
    for id in forward.inputs() {
        let node = forward.node(id);
        let Op::Input { name, .. } = &node.op else { continue };
        let dims = node.shape.dims();
        let n: usize = dims.iter().product();
        let range = bounds.get(name).map_or(vocab, |&b| b.min(vocab));
        let t = match node.dtype {
            DType::I64 => Tensor::from_i64(dims, (0..n).map(|_| (rng.next_f64() * range as f64) as i64).collect()),
            _ => Tensor::from_f64(dims, (0..n).map(|_| rng.uniform(-1.0, 1.0)).collect()),
        };
        feeds.insert(name.clone(), t);
    }
    let values = Interpreter::new(5).eval_nodes(&grads.graph, &feeds).unwrap();
    let mut loss = |f: &HashMap<String, Tensor>| Interpreter::new(5).run(&forward, f).unwrap().into_iter().find(|(n, _)| n == "loss").unwrap().1.to_f64_vec()[0];
    let params = forward.params();
    for (k, &p) in params.iter().enumerate() {
        let name = forward.leaf_name(p).unwrap().to_string();
        let analytic = values[grads.grads[k].index()].to_f64_vec();
        assert!(analytic.iter().any(|&g| g != 0.0), "{what}: the gradient of {name} is zero: the check would say nothing");
        let coords = (0..analytic.len()).step_by((analytic.len() / 3).max(1)).take(4);
        check_coordinates(what, &mut loss, &mut feeds, &name, &analytic, coords);
        check_direction(what, &mut loss, &mut feeds, &name, &analytic, k as u64 + 1);
    }
    params.len()
}

fn check_len(what: &str, feeds: &mut HashMap<String, Tensor>, leaf: &str, analytic: &[f64]) {
    let n = values(feeds, leaf).len();
    assert_eq!(analytic.len(), n, "{what}: the gradient of `{leaf}` has {} elements, the leaf {n}", analytic.len());
}

/// The f64 values of feed `leaf`, to perturb in place.
fn values<'a>(feeds: &'a mut HashMap<String, Tensor>, leaf: &str) -> &'a mut [f64] {
    match feeds.get_mut(leaf) {
        Some(Tensor::F64(a)) => a.as_slice_mut().unwrap_or_else(|| panic!("`{leaf}` is not contiguous")),
        Some(t) => panic!("finite differences need the f64 graph (promote_f64): `{leaf}` is {}", t.dtype()),
        None => panic!("no feed `{leaf}`"),
    }
}
