//! Initial parameter values, drawn per each Param's [`Init`].

use std::collections::HashMap;

use d2l_ir::{DType, Graph, Init, Op};
use ndarray::{ArrayD, IxDyn};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, StandardNormal};

use crate::Tensor;

/// Initial values for every Param and State node of the graph (parameters
/// first, then state), drawn per its `Init` with a `StdRng` seeded by `seed`,
/// in graph order, deterministic.
///
/// Numbers are drawn in f64 and rounded to the parameter's dtype, so the f32
/// graph and its f64 promotion (gradient checks) start from the same point.
/// A name that appears on several Param nodes is drawn once, for the first.
pub fn init_params(graph: &Graph, seed: u64) -> HashMap<String, Tensor> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut params = HashMap::new();
    for id in graph.params().into_iter().chain(graph.states()) {
        let node = graph.node(id);
        let (Op::Param { name, init } | Op::State { name, init }) = &node.op else { continue };
        if params.contains_key(name) {
            continue;
        }
        let values = draw(init, node.shape.dims(), &mut rng);
        let tensor = match node.dtype {
            DType::F32 => Tensor::F32(values.mapv(|v| v as f32)),
            DType::I64 => Tensor::I64(values.mapv(|v| v as i64)),
            DType::Bool => Tensor::Bool(values.mapv(|v| v != 0.0)),
            DType::F64 => Tensor::F64(values),
        };
        params.insert(name.clone(), tensor);
    }
    params
}

/// One parameter's values, row-major.
fn draw(init: &Init, dims: &[usize], rng: &mut StdRng) -> ArrayD<f64> {
    let shape = IxDyn(dims);
    // Sampling by formula rather than `Uniform::new`/`Normal::new`, which
    // reject degenerate arguments (low == high, std == 0) that are harmless here.
    let uniform = |rng: &mut StdRng, low: f64, high: f64| low + (high - low) * rng.random::<f64>();
    let normal = |rng: &mut StdRng, mean: f64, std: f64| {
        let z: f64 = StandardNormal.sample(rng);
        mean + std * z
    };
    let fan_sum = || {
        let (fan_in, fan_out) = Init::fans(dims);
        (fan_in + fan_out).max(1) as f64
    };
    match *init {
        Init::Zeros => ArrayD::zeros(shape),
        Init::Ones => ArrayD::ones(shape),
        Init::Constant(v) => ArrayD::from_elem(shape, v),
        Init::Normal { mean, std } => ArrayD::from_shape_simple_fn(shape, || normal(rng, mean, std)),
        Init::Uniform { low, high } => ArrayD::from_shape_simple_fn(shape, || uniform(rng, low, high)),
        Init::XavierUniform => {
            let a = (6.0 / fan_sum()).sqrt();
            ArrayD::from_shape_simple_fn(shape, || uniform(rng, -a, a))
        }
        Init::XavierNormal => {
            let std = (2.0 / fan_sum()).sqrt();
            ArrayD::from_shape_simple_fn(shape, || normal(rng, 0.0, std))
        }
    }
}
