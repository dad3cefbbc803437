//! The optimizer update as graph nodes, so one training step is one graph:
//! forward, backward and update. Optimizer state (momentum, Adam moments)
//! is fed as inputs `<param>:<slot>` with the role
//! [`InputRole::OptimizerSlot`] and comes back as update outputs of the
//! same name; each parameter's new value is the update output named like
//! it. The step counter (Adam's bias correction) is the scalar input
//! `step` with the role [`InputRole::StepCount`], counting from 1.

use d2l_ir::{BinaryOp, DType, Graph, InputRole, NodeId, Op, ReduceOp, Shape, UnaryOp};

#[derive(Clone, Debug, PartialEq)]
pub enum Optimizer {
    /// PyTorch's SGD: `v = momentum * v + g; p -= lr * v` (plain `p -= lr * g`
    /// without momentum).
    Sgd { lr: f64, momentum: f64 },
    /// Adam with bias correction (Kingma & Ba), as `torch.optim.Adam`.
    Adam { lr: f64, beta1: f64, beta2: f64, eps: f64 },
}

#[derive(Clone, Debug, PartialEq)]
pub struct UpdateSpec {
    pub optimizer: Optimizer,
    /// L2 penalty added to the gradient: `g += weight_decay * p`.
    pub weight_decay: f64,
    /// Apply weight decay to weights (rank >= 2) only, not biases.
    pub decay_weights_only: bool,
    /// Rescale all gradients so their global L2 norm is at most this.
    pub clip_norm: Option<f64>,
    /// Learning-rate multipliers by parameter-name prefix (first match wins).
    pub lr_scale: Vec<(String, f64)>,
}

impl UpdateSpec {
    pub fn new(optimizer: Optimizer) -> UpdateSpec {
        UpdateSpec { optimizer, weight_decay: 0.0, decay_weights_only: false, clip_norm: None, lr_scale: Vec::new() }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("optimizer update: {0}")]
pub struct UpdateError(String);

impl From<d2l_ir::ShapeError> for UpdateError {
    fn from(e: d2l_ir::ShapeError) -> UpdateError {
        UpdateError(e.0)
    }
}

/// Appends the update of every `(param, grad)` pair to `graph`.
pub fn append_update(graph: &mut Graph, params_and_grads: &[(NodeId, NodeId)], spec: &UpdateSpec) -> Result<(), UpdateError> {
    let mut grads: Vec<NodeId> = params_and_grads.iter().map(|&(_, g)| g).collect();
    if let Some(max_norm) = spec.clip_norm {
        grads = clip_global_norm(graph, &grads, max_norm)?;
    }
    let step = match spec.optimizer {
        Optimizer::Adam { .. } => Some(graph.input_with_role("step", InputRole::StepCount, DType::F32, Shape::scalar())),
        Optimizer::Sgd { .. } => None,
    };
    for (&(param, _), &grad) in params_and_grads.iter().zip(&grads) {
        let node = graph.node(param).clone();
        let Op::Param { name, .. } = &node.op else {
            return Err(UpdateError(format!("node {} is not a parameter", param.index())));
        };
        let (dtype, shape) = (node.dtype, node.shape.clone());
        let full = |g: &mut Graph, v: f64| g.full(v, dtype, shape.clone());
        let scale = spec.lr_scale.iter().find(|(prefix, _)| name.starts_with(prefix.as_str())).map_or(1.0, |(_, s)| *s);
        let mut g = grad;
        if spec.weight_decay != 0.0 && (!spec.decay_weights_only || shape.rank() >= 2) {
            let wd = full(graph, spec.weight_decay);
            let decay = graph.binary(BinaryOp::Mul, wd, param)?;
            g = graph.binary(BinaryOp::Add, g, decay)?;
        }
        let state = |graph: &mut Graph, slot: &str| {
            let state_name = format!("{name}:{slot}");
            (graph.input_with_role(&state_name, InputRole::OptimizerSlot { param: name.clone() }, dtype, shape.clone()), state_name)
        };
        let delta = match spec.optimizer {
            Optimizer::Sgd { lr, momentum } => {
                let dir = if momentum != 0.0 {
                    let (v, v_name) = state(graph, "momentum");
                    let mu = full(graph, momentum);
                    let mv = graph.binary(BinaryOp::Mul, mu, v)?;
                    let v_new = graph.binary(BinaryOp::Add, mv, g)?;
                    graph.set_update(v_name, v_new);
                    v_new
                } else {
                    g
                };
                let lr = full(graph, lr * scale);
                graph.binary(BinaryOp::Mul, lr, dir)?
            }
            Optimizer::Adam { lr, beta1, beta2, eps } => {
                let (m, m_name) = state(graph, "m");
                let (v, v_name) = state(graph, "v");
                let m_new = lerp(graph, m, g, beta1)?;
                let g2 = graph.binary(BinaryOp::Mul, g, g)?;
                let v_new = lerp(graph, v, g2, beta2)?;
                graph.set_update(m_name, m_new);
                graph.set_update(v_name, v_new);
                // Bias corrections 1 - beta^t, with t the fed step count.
                let t = step.expect("Adam allocates the step input");
                let t = graph.cast(t, dtype);
                let t = graph.broadcast(t, shape.clone())?;
                let c1 = one_minus_pow(graph, beta1, t)?;
                let c2 = one_minus_pow(graph, beta2, t)?;
                let m_hat = graph.binary(BinaryOp::Div, m_new, c1)?;
                let v_hat = graph.binary(BinaryOp::Div, v_new, c2)?;
                let root = graph.unary(UnaryOp::Sqrt, v_hat)?;
                let eps = full(graph, eps);
                let denom = graph.binary(BinaryOp::Add, root, eps)?;
                let ratio = graph.binary(BinaryOp::Div, m_hat, denom)?;
                let lr = full(graph, lr * scale);
                graph.binary(BinaryOp::Mul, lr, ratio)?
            }
        };
        let new_param = graph.binary(BinaryOp::Sub, param, delta)?;
        graph.set_update(name.clone(), new_param);
    }
    Ok(())
}

/// `beta * old + (1 - beta) * new`.
fn lerp(graph: &mut Graph, old: NodeId, new: NodeId, beta: f64) -> Result<NodeId, UpdateError> {
    let (dtype, shape) = (graph.dtype(old), graph.shape(old).clone());
    let b = graph.full(beta, dtype, shape.clone());
    let one_minus_b = graph.full(1.0 - beta, dtype, shape);
    let x = graph.binary(BinaryOp::Mul, b, old)?;
    let y = graph.binary(BinaryOp::Mul, one_minus_b, new)?;
    Ok(graph.binary(BinaryOp::Add, x, y)?)
}

/// `1 - beta^t` as `1 - exp(t * ln beta)`.
fn one_minus_pow(graph: &mut Graph, beta: f64, t: NodeId) -> Result<NodeId, UpdateError> {
    let (dtype, shape) = (graph.dtype(t), graph.shape(t).clone());
    let ln_beta = graph.full(beta.ln(), dtype, shape.clone());
    let x = graph.binary(BinaryOp::Mul, t, ln_beta)?;
    let p = graph.unary(UnaryOp::Exp, x)?;
    let one = graph.full(1.0, dtype, shape);
    Ok(graph.binary(BinaryOp::Sub, one, p)?)
}

/// Scales all gradients by `min(1, max_norm / (norm + 1e-6))`, `norm` being
/// the L2 norm of all of them together (`torch.nn.utils.clip_grad_norm_`).
fn clip_global_norm(graph: &mut Graph, grads: &[NodeId], max_norm: f64) -> Result<Vec<NodeId>, UpdateError> {
    let Some(&first) = grads.first() else { return Ok(Vec::new()) };
    let dtype = graph.dtype(first);
    let mut total: Option<NodeId> = None;
    for &g in grads {
        let sq = graph.binary(BinaryOp::Mul, g, g)?;
        let axes: Vec<usize> = (0..graph.shape(g).rank()).collect();
        let s = graph.reduce(ReduceOp::Sum, sq, &axes)?;
        let s = graph.reshape(s, Shape::scalar())?;
        total = Some(match total {
            None => s,
            Some(t) => graph.binary(BinaryOp::Add, t, s)?,
        });
    }
    let norm = graph.unary(UnaryOp::Sqrt, total.expect("at least one gradient"))?;
    let eps = graph.full(1e-6, dtype, Shape::scalar());
    let denom = graph.binary(BinaryOp::Add, norm, eps)?;
    let max = graph.full(max_norm, dtype, Shape::scalar());
    let ratio = graph.binary(BinaryOp::Div, max, denom)?;
    let one = graph.full(1.0, dtype, Shape::scalar());
    let scale = graph.binary(BinaryOp::Min, ratio, one)?;
    grads
        .iter()
        .map(|&g| {
            let s = graph.broadcast(scale, graph.shape(g).clone())?;
            Ok(graph.binary(BinaryOp::Mul, g, s)?)
        })
        .collect()
}
