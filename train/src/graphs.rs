//! The graphs a training run compiles: for each batch size its data
//! produces, the training step (model + loss → gradients → optimizer
//! update, simplified: [`d2l_passes::training_step`]) and the evaluation
//! pass (model + loss in evaluation mode). Also what `d2l ir`, `d2l check`
//! and `d2l bench` show of them.

use std::collections::{BTreeMap, HashMap};

use d2l_dsl::{LabelSpec, LossSpec, LowerOptions, Program, Spec, Value};
use d2l_ir::{Graph, Init, Op, OutputRole};
use d2l_passes::optimizer::{Optimizer, UpdateSpec};
use d2l_runtime::{Tensor, init_params};

use crate::sources::{self, Schema};
use crate::{Error, TrainOptions};

/// How a model's inputs meet a source's fields.
#[derive(Clone, Debug, PartialEq)]
pub struct Binding {
    /// The graph input each field of the schema feeds: the model's inputs,
    /// then the labels.
    pub fields: Vec<String>,
    /// The model's recurrent state: inputs that a result of the same name
    /// updates. Not fed by the source; they start at zeros.
    pub state: Vec<String>,
}

/// Matches `model`'s inputs with `schema`'s: by name (inputs the model
/// does not take are left out of its feeds), or the only one to the only
/// one. Errors name both sides.
pub fn bind(program: &Program, model: &str, schema: &Schema) -> Result<Binding, Error> {
    let probe = program.lower(model, &LowerOptions { default_dim: Some(1), ..LowerOptions::default() })?.graph;
    let names: Vec<String> = probe.data_inputs().iter().filter_map(|&i| probe.leaf_name(i).map(str::to_string)).collect();
    let (state, fed): (Vec<String>, Vec<String>) = names.into_iter().partition(|n| probe.updates().any(|o| o.name == *n));
    let source_inputs: Vec<&str> = schema.inputs.iter().map(|f| f.name.as_str()).collect();
    let mut fields: Vec<String> = match (&source_inputs[..], &fed[..]) {
        ([_], [only]) => vec![only.clone()],
        _ => {
            if let Some(missing) = fed.iter().find(|n| !source_inputs.contains(&n.as_str())) {
                return Err(Error::Usage(format!("model `{model}` takes the input `{missing}`, which its data source does not provide (it provides {})", source_inputs.join(", "))));
            }
            // A source may provide more than a model takes (the source
            // lengths a plain seq2seq encoder ignores): those are not fed.
            // But recurrent state is the model's own, never the data's.
            if let Some(clash) = source_inputs.iter().find(|n| state.contains(&n.to_string())) {
                return Err(Error::Usage(format!("model `{model}` carries the recurrent state `{clash}`, which is also the name of an input of its data source; rename the state")));
            }
            source_inputs.iter().map(|n| n.to_string()).collect()
        }
    };
    for label in &schema.labels {
        if fed.contains(&label.name) || state.contains(&label.name) {
            return Err(Error::Usage(format!("model `{model}` has an input named `{}`, which is also the name of a label of its data source; rename the input", label.name)));
        }
        fields.push(label.name.clone());
    }
    Ok(Binding { fields, state })
}

/// The model with its loss attached, for a batch of `batch`. Every scalar
/// the model or its loss observes (`observe(x, "nsp")`) becomes a figure the
/// trainer reports beside the loss, under the name it was observed by
/// (its block path too where two share a name).
pub fn forward_with_loss(program: &Program, model: &str, loss: &str, schema: &Schema, binding: &Binding, batch: usize, training: bool) -> Result<Graph, Error> {
    let input_shapes = schema.inputs.iter().zip(&binding.fields).map(|(f, name)| (name.clone(), f.batched(batch))).collect();
    let lopts = LowerOptions { input_shapes, training, ..LowerOptions::default() };
    let labels = schema.labels.iter().map(|f| LabelSpec { name: f.name.clone(), dtype: f.dtype, shape: f.batched(batch) }).collect();
    let lowered = program.lower_with_loss(model, &lopts, &LossSpec { loss: loss.to_string(), labels })?;
    let mut graph = lowered.graph;
    let scalars: Vec<&(String, d2l_ir::NodeId)> = lowered.observed.iter().filter(|(_, n)| graph.shape(*n).rank() == 0 && graph.dtype(*n).is_float()).collect();
    let short = |path: &str| path.rsplit('.').next().unwrap_or(path).to_string();
    for (path, node) in &scalars {
        let shared = scalars.iter().filter(|(p, _)| short(p) == short(path)).count() > 1;
        let name = if shared { path.clone() } else { short(path) };
        if graph.output(&name).is_some() {
            return Err(Error::Usage(format!("`{model}` observes a scalar `{name}` and also has a result named `{name}`; rename one")));
        }
        graph.set_metric(name, *node);
    }
    Ok(graph)
}

/// The evaluation pass: loss, predictions and recurrent state, simplified.
pub fn eval_graph(mut forward: Graph) -> Graph {
    forward.retain_outputs(|o| o.name == "loss" || o.name == "output" || matches!(o.role, OutputRole::Update | OutputRole::Metric));
    d2l_passes::simplify(&forward)
}

/// The training step of `forward` under `update`.
pub fn step_graph(forward: &Graph, update: &UpdateSpec) -> Result<Graph, Error> {
    d2l_passes::training_step(forward, update).map_err(|e| Error::Usage(e.to_string()))
}

fn kw<'a>(spec: &'a Spec, key: &str) -> Option<&'a (Value, d2l_dsl::ast::Span)> {
    spec.kwargs.get(key)
}

/// Reads `optimizer = sgd(lr=.., momentum=.., weight_decay=.., clip=..)` or `adam(...)`.
pub fn update_spec(program: &Program, spec: &Spec) -> Result<UpdateSpec, Error> {
    let err = |span, msg: &str| -> Error { program.error_at(span, msg).into() };
    let number = |key: &str| -> Result<Option<f64>, Error> {
        match kw(spec, key) {
            None => Ok(None),
            Some((v, span)) => v.as_f64().filter(|x| x.is_finite()).map(Some).ok_or_else(|| err(*span, &format!("`{key}` must be a number"))),
        }
    };
    let check_keys = |allowed: &[&str]| -> Result<(), Error> {
        for (key, (_, span)) in &spec.kwargs {
            if !allowed.contains(&key.as_str()) {
                return Err(err(*span, &format!("`{}` takes no argument `{key}` (it takes {})", spec.name, allowed.join(", "))));
            }
        }
        if !spec.args.is_empty() {
            return Err(err(spec.span, &format!("`{}` takes keyword arguments only ({})", spec.name, allowed.join(", "))));
        }
        Ok(())
    };
    let common = ["lr", "weight_decay", "decay", "clip", "lr_scale"];
    let optimizer = match spec.name.as_str() {
        "sgd" => {
            check_keys(&[&common[..], &["momentum"]].concat())?;
            let lr = number("lr")?.ok_or_else(|| err(spec.span, "`sgd` needs a learning rate `lr=...`"))?;
            Optimizer::Sgd { lr, momentum: number("momentum")?.unwrap_or(0.0) }
        }
        "adam" => {
            check_keys(&[&common[..], &["beta1", "beta2", "eps"]].concat())?;
            Optimizer::Adam { lr: number("lr")?.unwrap_or(1e-3), beta1: number("beta1")?.unwrap_or(0.9), beta2: number("beta2")?.unwrap_or(0.999), eps: number("eps")?.unwrap_or(1e-8) }
        }
        other => return Err(err(spec.span, &format!("unknown optimizer `{other}` (known: sgd, adam)"))),
    };
    let mut update = UpdateSpec::new(optimizer);
    update.weight_decay = number("weight_decay")?.unwrap_or(0.0);
    update.clip_norm = number("clip")?;
    // lr_scale=(("linear_2", 10.0),): multiply the learning rate of every
    // parameter whose name starts with the prefix (the course's fine-tuning).
    if let Some((v, span)) = kw(spec, "lr_scale") {
        let bad = || err(*span, "`lr_scale` is a tuple of (name prefix, factor) pairs, e.g. ((\"linear_2\", 10.0),)");
        let Value::Tuple(pairs) = v else { return Err(bad()) };
        for pair in pairs {
            match pair {
                Value::Tuple(p) if p.len() == 2 => match (&p[0], p[1].as_f64()) {
                    (Value::Str(prefix), Some(factor)) if factor.is_finite() => update.lr_scale.push((prefix.clone(), factor)),
                    _ => return Err(bad()),
                },
                _ => return Err(bad()),
            }
        }
    }
    update.decay_weights_only = match kw(spec, "decay") {
        None => false,
        Some((Value::Str(s), _)) if s == "weights" => true,
        Some((Value::Str(s), _)) if s == "all" => false,
        Some((_, span)) => return Err(err(*span, "`decay` is \"all\" (default) or \"weights\" (rank >= 2 parameters only)")),
    };
    Ok(update)
}

/// Parameters as declared, except that `init = ...` in the train block
/// replaces the initializer of every weight (rank >= 2), like the course's
/// `net.apply(init_weights)`.
pub fn initial_params(graph: &Graph, init: Option<&Init>, seed: u64) -> HashMap<String, Tensor> {
    let mut params = init_params(graph, seed);
    let Some(init) = init else { return params };
    for (i, p) in graph.params().into_iter().enumerate() {
        let node = graph.node(p);
        let Op::Param { name, .. } = &node.op else { continue };
        // Vectors keep theirs, and so do lookup tables (an embedding's: a
        // gather reads rows of it, no product multiplies by it; the update
        // arithmetic of a step graph reads it too): Xavier's fan-in and
        // fan-out describe a map, and the course applies it to linear and
        // recurrent weights only.
        let users = graph.users(p);
        let gathered = users.iter().any(|&u| matches!(graph.node(u).op, Op::Gather { .. }) && graph.node(u).args[0] == p);
        let multiplied = users.iter().any(|&u| matches!(graph.node(u).op, Op::MatMul | Op::Conv2d { .. }));
        let table = gathered && !multiplied;
        if node.shape.rank() < 2 || table {
            continue;
        }
        // A one-parameter graph draws the replacement; the seed is mixed with
        // the parameter's position so equal shapes get different values.
        let mut g = Graph::new("init");
        if g.param(name, node.dtype, node.shape.clone(), init.clone()).is_ok() {
            params.extend(init_params(&g, seed ^ (0x9e37_79b9_7f4a_7c15u64.wrapping_mul(i as u64 + 1))));
        }
    }
    params
}

/// Which training graph `d2l ir` prints.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TrainStage {
    /// Forward + loss + gradients of every parameter.
    Grad,
    /// The whole step: gradients plus the optimizer update.
    Opt,
}

/// The training graph of `model` at `stage`. Dims not in `dims` are bound
/// to `batch`, and the batch the model's first fed input then has is the
/// batch of the whole step (`--dim B=256` sets it). The data source's
/// settings fix the other input and label shapes; sources whose shapes
/// depend on their files (house prices, npy, csv) are read.
pub fn stage_graph(program: &Program, model: &str, stage: TrainStage, batch: usize, dims: &BTreeMap<String, usize>) -> Result<Graph, Error> {
    let config = program.train_config(model)?;
    let schema = sources::schema(program, &config.data, &TrainOptions::default())?;
    let binding = bind(program, model, &schema)?;
    let probe = program.lower(model, &LowerOptions { dims: dims.clone(), default_dim: Some(batch), ..LowerOptions::default() })?.graph;
    let first_fed = binding.fields.first().and_then(|n| probe.input_named(n));
    let batch = first_fed.and_then(|id| probe.shape(id).dims().first().copied()).unwrap_or(batch);
    let forward = forward_with_loss(program, model, &config.loss, &schema, &binding, batch, true)?;
    match stage {
        TrainStage::Grad => {
            let grads = d2l_passes::differentiate_params(&forward, "loss", &d2l_passes::DiffOptions::default()).map_err(|e| Error::Usage(format!("autodiff: {e}")))?;
            Ok(d2l_passes::simplify(&grads.graph))
        }
        TrainStage::Opt => step_graph(&forward, &update_spec(program, &config.optimizer)?),
    }
}

/// The feeds of `graph`'s parameters and buffers, taken from `params` (a
/// checkpoint's or a trainer's tensors; optimizer state and anything else
/// in it is ignored). A missing tensor or one of another dtype or shape is
/// the user's error: the parameters were written for another model.
pub fn param_feeds(graph: &Graph, params: &BTreeMap<String, Tensor>) -> Result<HashMap<String, Tensor>, Error> {
    let mut feeds = HashMap::new();
    for p in graph.params().into_iter().chain(graph.states()) {
        let name = graph.leaf_name(p).expect("a parameter has a name");
        let t = params.get(name).ok_or_else(|| Error::Usage(format!("the parameters have no `{name}`; were they written for another model?")))?;
        if t.dtype() != graph.dtype(p) || t.dims() != graph.shape(p).dims() {
            return Err(Error::Usage(format!("parameter `{name}` is {}{} but the model needs {}{}", t.dtype(), t.shape(), graph.dtype(p), graph.shape(p))));
        }
        feeds.insert(name.to_string(), t.clone());
    }
    Ok(feeds)
}

/// `model`'s forward graph in evaluation mode for a batch of `batch`, its
/// inputs shaped as its data source feeds them when it has a `train`
/// block (a language model's 35 steps, not 35 bound to the batch), other
/// dims bound to `batch`.
pub fn inference_graph(program: &Program, model: &str, batch: usize) -> Result<Graph, Error> {
    let mut lopts = LowerOptions { default_dim: Some(batch), training: false, ..LowerOptions::default() };
    if let Ok(config) = program.train_config(model) {
        let schema = sources::schema(program, &config.data, &TrainOptions::default())?;
        let binding = bind(program, model, &schema)?;
        lopts.input_shapes = schema.inputs.iter().zip(&binding.fields).map(|(f, name)| (name.clone(), f.batched(batch))).collect();
    }
    Ok(program.lower(model, &lopts)?.graph)
}

/// What a model's compiled training step (or, without a `train` block, its
/// forward graph) keeps in memory, as `d2l check` and `d2l summary` report.
#[derive(Clone, Debug, PartialEq)]
pub struct Footprint {
    /// Bytes of the trained parameters.
    pub param_bytes: u64,
    /// The batch the step is planned for (the train block's or `--dim`'s, or 1).
    pub batch: usize,
    /// Whether this is the training step (else the forward graph).
    pub training: bool,
    /// Bytes of the step's arena: its intermediates, laid out by the memory plan.
    pub arena_bytes: u64,
}

/// The footprint of `model` at the train block's batch size (`dims`
/// override it); unbound dims of a model without a train block are 1.
pub fn footprint(program: &Program, model: &str, dims: &BTreeMap<String, usize>) -> Result<Footprint, Error> {
    let (graph, training) = match program.train_config(model) {
        Ok(config) => {
            let batch = match kw(&config.data, "batch") {
                Some((Value::Int(b), _)) if *b > 0 => *b as usize,
                _ => 1,
            };
            (stage_graph(program, model, TrainStage::Opt, batch, dims)?, true)
        }
        Err(_) if program.train_def(model).is_none() => {
            let lopts = LowerOptions { dims: dims.clone(), default_dim: Some(1), ..LowerOptions::default() };
            (d2l_passes::simplify(&program.lower(model, &lopts)?.graph), false)
        }
        Err(e) => return Err(e.into()),
    };
    let batch = graph.data_inputs().first().and_then(|&x| graph.shape(x).dims().first().copied()).unwrap_or(1);
    let param_bytes = graph.params().iter().map(|&p| (graph.shape(p).numel() * graph.dtype(p).size_bytes()) as u64).sum();
    let plan = d2l_passes::memory::plan(&graph, &d2l_passes::fusion::fuse(&graph));
    Ok(Footprint { param_bytes, batch, training, arena_bytes: plan.size as u64 })
}
