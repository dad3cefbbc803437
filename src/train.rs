//! `d2l train`: turns a model's `train` block into training-step graphs
//! (forward + loss + backward + optimizer update), loads its data, and
//! writes what a run produces (checkpoint, log, curves).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use d2l_dsl::{LossSpec, LowerOptions, Program, Spec, TrainConfig, Value};
use d2l_ir::{DType, Graph, Init, Op, Shape};
use d2l_passes::optimizer::{Optimizer, UpdateSpec};
use d2l_runtime::data::{self, BatchOptions, Split, TensorDataset};
use d2l_runtime::train::{Metrics, StateSpec, TrainGraphs, Trainer};
use d2l_runtime::files::write_atomic;
use d2l_runtime::{Tensor, init_params};

use crate::Error;

/// Independent random streams derived from one `--seed`. Using the seed
/// itself everywhere correlates things that must not be: the course's
/// synthetic features would equal the initial weights.
pub fn derive_seed(seed: u64, purpose: Stream) -> u64 {
    // splitmix64 of (seed, purpose)
    let mut z = seed.wrapping_add((purpose as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15));
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// What a derived seed is for.
#[derive(Clone, Copy, Debug)]
pub enum Stream {
    Init,
    Data,
    Shuffle,
    Dropout,
}

/// Command-line overrides of a `train` block.
#[derive(Clone, Debug, Default)]
pub struct TrainOptions {
    /// Where datasets live (`--data DIR`); otherwise the usual search path.
    pub data_dir: Option<PathBuf>,
    pub epochs: Option<usize>,
    /// Use only the first N training (and test) examples: quick runs.
    pub limit: Option<usize>,
    pub seed: u64,
    /// What executes the graphs.
    pub backend: d2l_runtime::Backend,
    /// Replaces the train block's batch size (quick runs, step-time comparisons).
    pub batch: Option<usize>,
}

/// The data a run trains and evaluates on.
pub struct Datasets {
    pub train: TensorDataset,
    pub test: Option<TensorDataset>,
    pub batch: usize,
    /// Where it came from, for the log.
    pub source: String,
    /// K-fold cross-validation on the training set instead of a test set.
    pub folds: Option<usize>,
    /// Applied to each minibatch as it is cut (the stored images keep their size).
    pub transform: ImageTransform,
}

/// The image transforms of a data source (`resize=`, `flip=`), as the
/// course's `load_data_fashion_mnist(resize=...)` and augmentations.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ImageTransform {
    /// Bilinear resize to (height, width), like torchvision's `Resize`.
    pub resize: Option<(usize, usize)>,
    /// Flip training images left-right with probability 1/2 (never when evaluating).
    pub hflip: bool,
}

/// Resized evaluation sets are transformed this many batches at a time, so
/// memory stays bounded (10,000 images at 224x224 would be 2 GB).
const EVAL_CHUNK_BATCHES: usize = 8;

impl Datasets {
    /// How training minibatches are cut: shuffled with `seed`, then transformed.
    pub fn train_batches(&self, seed: u64) -> BatchOptions {
        let opts = BatchOptions::new(self.batch).seed(seed).random_hflip(self.transform.hflip);
        match self.transform.resize {
            Some((h, w)) => opts.resize(h, w),
            None => opts,
        }
    }

    /// The features of one example as the model sees them (after resizing).
    pub fn example_shape(&self) -> Vec<usize> {
        let mut shape = self.train.features().shape().0[1..].to_vec();
        if let (Some((h, w)), n) = (self.transform.resize, shape.len())
            && n >= 2
        {
            shape[n - 2] = h;
            shape[n - 1] = w;
        }
        shape
    }

    /// Loss and metrics of the trainer's model on `set` (these datasets or a
    /// subset of them), in evaluation mode: resized, never flipped.
    pub fn evaluate(&self, trainer: &mut Trainer, set: &TensorDataset) -> Result<Metrics, Error> {
        let run_err = |e: d2l_runtime::train::TrainError| Error::Usage(e.to_string());
        let Some((h, w)) = self.transform.resize else {
            return trainer.evaluate(set, self.batch).map_err(run_err);
        };
        // The trainer batches stored tensors as they are: resize whole
        // batches a chunk at a time and combine the chunks' figures.
        let opts = BatchOptions::new(self.batch * EVAL_CHUNK_BATCHES).shuffle(false).resize(h, w);
        let mut total = Metrics::default();
        let (mut loss_sum, mut correct) = (0.0, None::<f64>);
        for (x, y) in set.batches(&opts, 0).map_err(|e| Error::Usage(e.to_string()))? {
            let chunk = TensorDataset::new(x, y).map_err(|e| Error::Usage(e.to_string()))?;
            let m = trainer.evaluate(&chunk, self.batch).map_err(run_err)?;
            loss_sum += m.loss * m.examples as f64;
            if let Some(a) = m.accuracy {
                *correct.get_or_insert(0.0) += a * m.examples as f64;
            }
            total.examples += m.examples;
            total.seconds += m.seconds;
        }
        let n = total.examples.max(1) as f64;
        total.loss = if total.examples == 0 { f64::NAN } else { loss_sum / n };
        total.accuracy = correct.map(|c| c / n);
        Ok(total)
    }
}

/// Everything `d2l train` needs, ready to run.
pub struct Training {
    pub config: TrainConfig,
    pub data: Datasets,
    pub trainer: Trainer,
    pub epochs: usize,
    pub param_count: usize,
}

const DATA_SOURCES: &str = "fashion_mnist(batch=.., resize=.., flip=..), mnist(batch=.., resize=.., flip=..), synthetic_linear(w=.., b=.., n=.., batch=..), house_prices(batch=.., folds=..), edge_detection(batch=..)";

fn kw<'a>(spec: &'a Spec, key: &str) -> Option<&'a (Value, d2l_dsl::ast::Span)> {
    spec.kwargs.get(key)
}

fn check_keys(program: &Program, spec: &Spec, allowed: &[&str]) -> Result<(), Error> {
    for (key, (_, span)) in &spec.kwargs {
        if !allowed.contains(&key.as_str()) {
            return Err(program.error_at(*span, format!("`{}` takes no argument `{key}` (it takes {})", spec.name, allowed.join(", "))).into());
        }
    }
    if let Some(v) = spec.args.first() {
        let _ = v;
        return Err(program.error_at(spec.span, format!("`{}` takes keyword arguments only ({})", spec.name, allowed.join(", "))).into());
    }
    Ok(())
}

fn positive_int(program: &Program, spec: &Spec, key: &str) -> Result<Option<usize>, Error> {
    match kw(spec, key) {
        None => Ok(None),
        Some((Value::Int(n), _)) if *n > 0 => Ok(Some(*n as usize)),
        Some((_, span)) => Err(program.error_at(*span, format!("`{key}` must be a positive int")).into()),
    }
}

fn number(program: &Program, spec: &Spec, key: &str) -> Result<Option<f64>, Error> {
    match kw(spec, key) {
        None => Ok(None),
        Some((v, span)) => v.as_f64().filter(|x| x.is_finite()).map(Some).ok_or_else(|| program.error_at(*span, format!("`{key}` must be a number")).into()),
    }
}

/// Loads the data named by the train block's `data = ...`.
pub fn load_data(program: &Program, spec: &Spec, opts: &TrainOptions) -> Result<Datasets, Error> {
    let need_batch = || -> Result<usize, Error> {
        positive_int(program, spec, "batch")?.ok_or_else(|| program.error_at(spec.span, format!("`{}` needs `batch=N`", spec.name)).into())
    };
    let data_err = |e: data::DataError| Error::Usage(e.to_string());
    let mut sets = match spec.name.as_str() {
        "fashion_mnist" | "mnist" => {
            check_keys(program, spec, &["batch", "resize", "flip"])?;
            let batch = need_batch()?;
            let transform = image_transform(program, spec)?;
            let folder = if spec.name == "mnist" { "mnist" } else { "fashion-mnist" };
            let dir = data::find_dataset(folder, opts.data_dir.as_deref()).map_err(data_err)?;
            let train = data::load_mnist_like(&dir, Split::Train).map_err(data_err)?.to_tensor_dataset();
            let test = data::load_mnist_like(&dir, Split::Test).map_err(data_err)?.to_tensor_dataset();
            Datasets { train, test: Some(test), batch, source: format!("{} ({})", spec.name, dir.display()), folds: None, transform }
        }
        "synthetic_linear" => {
            check_keys(program, spec, &["w", "dims", "b", "n", "n_test", "batch"])?;
            let batch = need_batch()?;
            let n = positive_int(program, spec, "n")?.unwrap_or(1000);
            let n_test = positive_int(program, spec, "n_test")?;
            let b = number(program, spec, "b")?.unwrap_or(0.0) as f32;
            // `w` is either the true weights, or one value repeated `dims` times.
            let w: Vec<f32> = match kw(spec, "w") {
                Some((Value::Tuple(items), span)) => items.iter().map(|v| v.as_f64().map(|x| x as f32)).collect::<Option<_>>().ok_or_else(|| program.error_at(*span, "`w` must be numbers"))?,
                Some((v, span)) => {
                    let x = v.as_f64().ok_or_else(|| program.error_at(*span, "`w` must be a number or a tuple of numbers"))?;
                    vec![x as f32; positive_int(program, spec, "dims")?.unwrap_or(1)]
                }
                None => return Err(program.error_at(spec.span, "`synthetic_linear` needs the true weights `w=[...]`").into()),
            };
            let data_seed = derive_seed(opts.seed, Stream::Data);
            let (x, y) = data::synthetic_data(&w, b, n, data_seed);
            let train = TensorDataset::new(x, y).map_err(data_err)?;
            let test = match n_test {
                Some(m) => {
                    let (x, y) = data::synthetic_data(&w, b, m, data_seed.wrapping_add(1));
                    Some(TensorDataset::new(x, y).map_err(data_err)?)
                }
                None => None,
            };
            Datasets { train, test, batch, source: format!("synthetic_linear (n={n}, {} features)", w.len()), folds: None, transform: ImageTransform::default() }
        }
        "house_prices" => {
            check_keys(program, spec, &["batch", "folds"])?;
            let batch = need_batch()?;
            let folds = positive_int(program, spec, "folds")?;
            if folds == Some(1) {
                return Err(program.error_at(kw(spec, "folds").map_or(spec.span, |(_, s)| *s), "`folds` must be at least 2").into());
            }
            let dir = data::find_dataset("kaggle-house", opts.data_dir.as_deref()).map_err(data_err)?;
            let h = data::load_house_prices(&dir).map_err(data_err)?;
            let features = h.train_features.shape().0[1];
            let train = TensorDataset::new(h.train_features, h.train_labels).map_err(data_err)?;
            Datasets { train, test: None, batch, source: format!("house_prices ({}, {features} features)", dir.display()), folds, transform: ImageTransform::default() }
        }
        "edge_detection" => {
            check_keys(program, spec, &["batch"])?;
            let batch = need_batch()?;
            let (x, y) = edge_detection_data();
            let train = TensorDataset::new(x, y).map_err(data_err)?;
            Datasets { train, test: None, batch, source: "edge_detection (one 6x8 image and its edges)".into(), folds: None, transform: ImageTransform::default() }
        }
        other => return Err(program.error_at(spec.span, format!("unknown data source `{other}` (known: {DATA_SOURCES})")).into()),
    };
    if let Some(batch) = opts.batch {
        sets.batch = batch.max(1);
    }
    if let Some(limit) = opts.limit {
        let head = |d: &TensorDataset| -> Result<TensorDataset, Error> { d.select(&(0..limit.min(d.len())).collect::<Vec<_>>()).map_err(data_err) };
        sets.train = head(&sets.train)?;
        sets.test = sets.test.as_ref().map(head).transpose()?;
    }
    Ok(sets)
}

/// Reads `resize=N` or `resize=(H, W)` and `flip=true|false`.
fn image_transform(program: &Program, spec: &Spec) -> Result<ImageTransform, Error> {
    let side = |v: &Value| match v {
        Value::Int(n) if (1..=4096).contains(n) => Some(*n as usize),
        _ => None,
    };
    let resize = match kw(spec, "resize") {
        None => None,
        Some((Value::Tuple(hw), span)) => match &hw[..] {
            [h, w] => Some(side(h).zip(side(w)).ok_or_else(|| program.error_at(*span, "`resize` sides must be ints in 1..=4096"))?),
            _ => return Err(program.error_at(*span, "`resize` is N or (height, width)").into()),
        },
        Some((v, span)) => Some(side(v).map(|n| (n, n)).ok_or_else(|| program.error_at(*span, "`resize` is N or (height, width), ints in 1..=4096"))?),
    };
    let hflip = match kw(spec, "flip") {
        None => false,
        Some((Value::Bool(b), _)) => *b,
        Some((_, span)) => return Err(program.error_at(*span, "`flip` is true or false").into()),
    };
    Ok(ImageTransform { resize, hflip })
}

/// The course's §19 data: a 6x8 image, white (1) with a black (0) band in
/// columns 2..6, and its edges, the image cross-correlated with [[1, -1]]:
/// 1 where white turns black, -1 where black turns white, 0 elsewhere.
pub fn edge_detection_data() -> (Tensor, Tensor) {
    let (h, w) = (6, 8);
    let x: Vec<f32> = (0..h * w).map(|i| if (2..6).contains(&(i % w)) { 0.0 } else { 1.0 }).collect();
    let y: Vec<f32> = (0..h).flat_map(|r| (0..w - 1).map(move |c| (r, c))).map(|(r, c)| x[r * w + c] - x[r * w + c + 1]).collect();
    (Tensor::from_f32(&[1, 1, h, w], x), Tensor::from_f32(&[1, 1, h, w - 1], y))
}

/// Reads `optimizer = sgd(lr=.., momentum=.., weight_decay=.., clip=..)` or `adam(...)`.
pub fn update_spec(program: &Program, spec: &Spec) -> Result<UpdateSpec, Error> {
    let common = ["lr", "weight_decay", "decay", "clip", "lr_scale"];
    let optimizer = match spec.name.as_str() {
        "sgd" => {
            check_keys(program, spec, &[&common[..], &["momentum"]].concat())?;
            let lr = number(program, spec, "lr")?.ok_or_else(|| program.error_at(spec.span, "`sgd` needs a learning rate `lr=...`"))?;
            Optimizer::Sgd { lr, momentum: number(program, spec, "momentum")?.unwrap_or(0.0) }
        }
        "adam" => {
            check_keys(program, spec, &[&common[..], &["beta1", "beta2", "eps"]].concat())?;
            Optimizer::Adam {
                lr: number(program, spec, "lr")?.unwrap_or(1e-3),
                beta1: number(program, spec, "beta1")?.unwrap_or(0.9),
                beta2: number(program, spec, "beta2")?.unwrap_or(0.999),
                eps: number(program, spec, "eps")?.unwrap_or(1e-8),
            }
        }
        other => return Err(program.error_at(spec.span, format!("unknown optimizer `{other}` (known: sgd, adam)")).into()),
    };
    let mut update = UpdateSpec::new(optimizer);
    update.weight_decay = number(program, spec, "weight_decay")?.unwrap_or(0.0);
    update.clip_norm = number(program, spec, "clip")?;
    // lr_scale=(("linear_2", 10.0),): multiply the learning rate of every
    // parameter whose name starts with the prefix (the course's fine-tuning).
    if let Some((v, span)) = kw(spec, "lr_scale") {
        let bad = || program.error_at(*span, "`lr_scale` is a tuple of (name prefix, factor) pairs, e.g. ((\"linear_2\", 10.0),)");
        let Value::Tuple(pairs) = v else { return Err(bad().into()) };
        for pair in pairs {
            match pair {
                Value::Tuple(p) if p.len() == 2 => match (&p[0], p[1].as_f64()) {
                    (Value::Str(prefix), Some(factor)) if factor.is_finite() => update.lr_scale.push((prefix.clone(), factor)),
                    _ => return Err(bad().into()),
                },
                _ => return Err(bad().into()),
            }
        }
    }
    update.decay_weights_only = match kw(spec, "decay") {
        None => false,
        Some((Value::Str(s), _)) if s == "weights" => true,
        Some((Value::Str(s), _)) if s == "all" => false,
        Some((_, span)) => return Err(program.error_at(*span, "`decay` is \"all\" (default) or \"weights\" (rank >= 2 parameters only)").into()),
    };
    Ok(update)
}

/// The model's single data input: its name and its shape without the batch axis.
fn data_input(program: &Program, model: &str) -> Result<String, Error> {
    let probe = program.lower(model, &LowerOptions { default_dim: Some(1), ..LowerOptions::default() })?;
    let inputs = probe.graph.inputs();
    match inputs[..] {
        [one] => match &probe.graph.node(one).op {
            Op::Input { name, .. } => Ok(name.clone()),
            _ => unreachable!("inputs() returns Input nodes"),
        },
        _ => Err(Error::Usage(format!("`d2l train` feeds one input, but model `{model}` has {}", inputs.len()))),
    }
}

fn batch_sizes(n: usize, batch: usize) -> Vec<usize> {
    let mut sizes = vec![batch.min(n)];
    if n > batch && !n.is_multiple_of(batch) {
        sizes.push(n % batch);
    }
    sizes
}

/// Loads the train block's data and builds a trainer for it.
pub fn prepare(program: &Program, model: &str, opts: &TrainOptions) -> Result<Training, Error> {
    let config = program.train_config(model)?;
    let data = load_data(program, &config.data, opts)?;
    let (trainer, param_count) = build_trainer(program, model, &config, &data, &data.train, data.test.as_ref(), opts)?;
    let epochs = opts.epochs.unwrap_or(config.epochs);
    Ok(Training { config, data, trainer, epochs, param_count })
}

/// Metric names the trainer knows.
const METRICS: &[&str] = &["accuracy", "log_rmse"];

/// Builds the training-step and evaluation graphs for `train` and `test`
/// (`data` or subsets of it, which set the batch size and image transform),
/// and a trainer with freshly initialised parameters.
pub fn build_trainer(
    program: &Program,
    model: &str,
    config: &TrainConfig,
    data: &Datasets,
    train: &TensorDataset,
    test: Option<&TensorDataset>,
    opts: &TrainOptions,
) -> Result<(Trainer, usize), Error> {
    let batch = data.batch;
    for (m, span) in &config.metrics {
        if !METRICS.contains(&m.as_str()) {
            return Err(program.error_at(*span, format!("unknown metric `{m}` (known: {})", METRICS.join(", "))).into());
        }
    }
    let update = update_spec(program, &config.optimizer)?;
    let input = data_input(program, model)?;
    let x_tail = data.example_shape();
    let y_tail = train.labels().shape().0[1..].to_vec();
    let label_dtype = train.labels().dtype();
    let lower = |batch: usize, training: bool| -> Result<Graph, Error> {
        let mut x_shape = vec![batch];
        x_shape.extend(&x_tail);
        let mut y_shape = vec![batch];
        y_shape.extend(&y_tail);
        let lopts = LowerOptions { input_shapes: [(input.clone(), x_shape)].into(), training, ..LowerOptions::default() };
        let loss = LossSpec::one_label(&config.loss, "label", label_dtype, y_shape);
        Ok(program.lower_with_loss(model, &lopts, &loss)?.graph)
    };
    let mut step = BTreeMap::new();
    let mut state: Vec<StateSpec> = Vec::new();
    for b in batch_sizes(train.len(), batch) {
        let (graph, slots) = step_graph(lower(b, true)?, &update)?;
        state = slots;
        step.insert(b, graph);
    }
    let mut eval = BTreeMap::new();
    for set in [Some(train), test].into_iter().flatten() {
        for b in batch_sizes(set.len(), batch) {
            if let std::collections::btree_map::Entry::Vacant(slot) = eval.entry(b) {
                let mut g = lower(b, false)?;
                g.retain_outputs(|o| o.name == "loss" || o.name == "output");
                slot.insert(d2l_passes::simplify(&g));
            }
        }
    }
    let first = step.values().next().expect("a dataset yields at least one batch size");
    let params = initial_params(first, config.init.as_ref(), derive_seed(opts.seed, Stream::Init));
    // Buffers (batch-norm statistics) are initialised too, but not counted.
    let param_count = first.params().iter().map(|&p| first.shape(p).numel()).sum();
    let needs_step_counter = matches!(update.optimizer, Optimizer::Adam { .. });
    let log_rmse = config.metrics.iter().any(|(m, _)| m == "log_rmse");
    let graphs = TrainGraphs { step, eval, state, input, label: "label".into(), needs_step_counter, log_rmse };
    let trainer = Trainer::new(graphs, params, opts.backend, derive_seed(opts.seed, Stream::Dropout)).map_err(|e| Error::Usage(e.to_string()))?;
    Ok((trainer, param_count))
}

/// One fold of a k-fold run: final training and validation metrics.
#[derive(Clone, Debug)]
pub struct FoldResult {
    pub fold: usize,
    pub train: Metrics,
    pub valid: Metrics,
}

/// The course's K-fold cross-validation (`k_fold`, §15): for each fold a
/// fresh model trains on the other folds for the configured epochs and is
/// evaluated on the held-out one. `on_fold` sees each result as it comes.
pub fn k_fold(program: &Program, run: &Training, k: usize, opts: &TrainOptions, on_fold: &mut dyn FnMut(&FoldResult)) -> Result<Vec<FoldResult>, Error> {
    let data_err = |e: data::DataError| Error::Usage(e.to_string());
    let mut results = Vec::new();
    for i in 0..k {
        let (train_idx, valid_idx) = data::k_fold(run.data.train.len(), k, i).map_err(data_err)?;
        let train = run.data.train.select(&train_idx).map_err(data_err)?;
        let valid = run.data.train.select(&valid_idx).map_err(data_err)?;
        let (mut trainer, _) = build_trainer(program, &run.config.model, &run.config, &run.data, &train, Some(&valid), opts)?;
        let batches = run.data.train_batches(derive_seed(opts.seed, Stream::Shuffle).wrapping_add(i as u64));
        for _ in 0..run.epochs {
            trainer.train_epoch(&train, &batches, &mut d2l_runtime::train::Silent).map_err(|e| Error::Usage(e.to_string()))?;
        }
        let train_m = run.data.evaluate(&mut trainer, &train)?;
        let valid_m = run.data.evaluate(&mut trainer, &valid)?;
        let result = FoldResult { fold: i + 1, train: train_m, valid: valid_m };
        on_fold(&result);
        results.push(result);
    }
    Ok(results)
}

/// Differentiates the loss, appends the optimizer update and simplifies.
fn step_graph(forward: Graph, update: &UpdateSpec) -> Result<(Graph, Vec<StateSpec>), Error> {
    let graph = d2l_passes::training_step(&forward, update).map_err(|e| Error::Usage(e.to_string()))?;
    let state = graph
        .ids()
        .filter(|&id| matches!(graph.node(id).op, Op::Input { role: d2l_ir::InputRole::OptimizerSlot { .. }, .. }))
        .map(|id| StateSpec { name: graph.leaf_name(id).unwrap_or_default().to_string(), dtype: graph.dtype(id), shape: graph.shape(id).clone() })
        .collect();
    Ok((graph, state))
}

/// Parameters as declared, except that `init = ...` in the train block
/// replaces the initializer of every weight (rank >= 2), like the course's
/// `net.apply(init_weights)`.
fn initial_params(graph: &Graph, init: Option<&Init>, seed: u64) -> HashMap<String, Tensor> {
    let mut params = init_params(graph, seed);
    let Some(init) = init else { return params };
    for (i, p) in graph.params().into_iter().enumerate() {
        let node = graph.node(p);
        let Op::Param { name, .. } = &node.op else { continue };
        if node.shape.rank() < 2 {
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

/// One epoch's figures, as logged.
#[derive(Clone, Debug)]
pub struct EpochLog {
    pub epoch: usize,
    pub train: Metrics,
    pub test: Option<Metrics>,
}

/// Writes the per-epoch log as CSV and JSON.
pub fn write_logs(base: &Path, log: &[EpochLog]) -> std::io::Result<(PathBuf, PathBuf)> {
    let opt = |v: Option<f64>| v.map_or(String::new(), |x| format!("{x:.6}"));
    let mut csv = String::from("epoch,train_loss,train_acc,test_loss,test_acc,examples_per_sec,seconds,train_log_rmse,test_log_rmse\n");
    let mut json = Vec::new();
    for e in log {
        csv.push_str(&format!(
            "{},{:.6},{},{},{},{:.1},{:.3},{},{}\n",
            e.epoch,
            e.train.loss,
            opt(e.train.accuracy),
            opt(e.test.map(|t| t.loss)),
            opt(e.test.and_then(|t| t.accuracy)),
            e.train.examples_per_sec(),
            e.train.seconds,
            opt(e.train.log_rmse),
            opt(e.test.and_then(|t| t.log_rmse)),
        ));
        let num = |v: Option<f64>| v.map_or("null".to_string(), |x| if x.is_finite() { format!("{x}") } else { "null".into() });
        json.push(format!(
            "{{\"epoch\": {}, \"train_loss\": {}, \"train_acc\": {}, \"test_loss\": {}, \"test_acc\": {}, \"examples_per_sec\": {}}}",
            e.epoch,
            num(Some(e.train.loss)),
            num(e.train.accuracy),
            num(e.test.map(|t| t.loss)),
            num(e.test.and_then(|t| t.accuracy)),
            num(Some(e.train.examples_per_sec()))
        ));
    }
    let csv_path = base.with_extension("csv");
    let json_path = base.with_extension("json");
    write_atomic(&csv_path, csv.as_bytes())?;
    write_atomic(&json_path, format!("[\n  {}\n]\n", json.join(",\n  ")).as_bytes())?;
    Ok((csv_path, json_path))
}

/// Curves like the course's Animator: train loss, train acc, test acc.
pub fn write_plot(path: &Path, log: &[EpochLog]) -> std::io::Result<()> {
    type Series<'a> = (&'a str, &'a str, Vec<(f64, f64)>);
    let series: Vec<Series> = vec![
        ("train loss", "#1f77b4", log.iter().map(|e| (e.epoch as f64, e.train.loss)).collect()),
        ("train acc", "#ff7f0e", log.iter().filter_map(|e| e.train.accuracy.map(|a| (e.epoch as f64, a))).collect()),
        ("test acc", "#2ca02c", log.iter().filter_map(|e| e.test.and_then(|t| t.accuracy).map(|a| (e.epoch as f64, a))).collect()),
    ];
    let (w, h, pad) = (480.0, 320.0, 40.0);
    let max_x = log.len().max(1) as f64;
    let max_y = series.iter().flat_map(|s| s.2.iter().map(|p| p.1)).filter(|v| v.is_finite()).fold(1.0f64, f64::max);
    let sx = |x: f64| pad + (x - 1.0).max(0.0) / (max_x - 1.0).max(1.0) * (w - 2.0 * pad);
    let sy = |y: f64| h - pad - y / max_y * (h - 2.0 * pad);
    let mut svg = format!("<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"12\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n");
    svg.push_str(&format!("<line x1=\"{pad}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"black\"/>\n", h - pad, w - pad, h - pad));
    svg.push_str(&format!("<line x1=\"{pad}\" y1=\"{pad}\" x2=\"{pad}\" y2=\"{}\" stroke=\"black\"/>\n", h - pad));
    svg.push_str(&format!("<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">epoch</text>\n", w / 2.0, h - 8.0));
    svg.push_str(&format!("<text x=\"4\" y=\"{}\">{max_y:.2}</text><text x=\"4\" y=\"{}\">0</text>\n", pad + 4.0, h - pad));
    for (k, (name, color, points)) in series.iter().enumerate() {
        if points.is_empty() {
            continue;
        }
        let pts: Vec<String> = points.iter().filter(|p| p.1.is_finite()).map(|&(x, y)| format!("{:.1},{:.1}", sx(x), sy(y))).collect();
        svg.push_str(&format!("<polyline fill=\"none\" stroke=\"{color}\" stroke-width=\"2\" points=\"{}\"/>\n", pts.join(" ")));
        let ly = pad + 16.0 * k as f64;
        svg.push_str(&format!("<line x1=\"{}\" y1=\"{ly}\" x2=\"{}\" y2=\"{ly}\" stroke=\"{color}\" stroke-width=\"2\"/><text x=\"{}\" y=\"{}\">{name}</text>\n", w - 140.0, w - 120.0, w - 114.0, ly + 4.0));
    }
    svg.push_str("</svg>\n");
    write_atomic(path, svg.as_bytes())
}

/// L2 norm of all weights (rank >= 2 parameters): what weight decay shrinks.
pub fn weight_norm(params: &BTreeMap<String, &Tensor>) -> f64 {
    params.values().filter(|t| t.shape().rank() >= 2).flat_map(|t| t.to_f64_vec()).map(|v| v * v).sum::<f64>().sqrt()
}

/// Shape of a model input with its batch axis replaced (for messages).
pub fn describe_shape(dtype: DType, shape: &Shape) -> String {
    format!("{dtype}{shape}")
}

/// Reads back a log written by [`write_logs`] (its CSV), for `--resume`.
pub fn read_log(base: &Path) -> Option<Vec<EpochLog>> {
    let text = std::fs::read_to_string(base.with_extension("csv")).ok()?;
    let mut out = Vec::new();
    for line in text.lines().skip(1) {
        let f: Vec<&str> = line.split(',').collect();
        let num = |i: usize| f.get(i).and_then(|s| s.parse::<f64>().ok());
        let seconds = num(6)?;
        let examples = (num(5)? * seconds).round() as usize;
        let train = Metrics { loss: num(1)?, accuracy: num(2), log_rmse: num(7), examples, seconds };
        let test = num(3).map(|loss| Metrics { loss, accuracy: num(4), log_rmse: num(8), examples: 0, seconds: 0.0 });
        out.push(EpochLog { epoch: f.first()?.parse().ok()?, train, test });
    }
    Some(out)
}

/// The dtype and per-example shape of the labels a data source yields,
/// known without loading it.
fn label_type(program: &Program, spec: &Spec) -> Result<(DType, Vec<usize>), Error> {
    match spec.name.as_str() {
        "fashion_mnist" | "mnist" => Ok((DType::I64, vec![])),
        "synthetic_linear" | "house_prices" => Ok((DType::F32, vec![1])),
        "edge_detection" => Ok((DType::F32, vec![1, 6, 7])),
        other => Err(program.error_at(spec.span, format!("unknown data source `{other}` (known: {DATA_SOURCES})")).into()),
    }
}

/// Which training graph `d2l ir` prints.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TrainStage {
    /// Forward + loss + gradients of every parameter.
    Grad,
    /// The whole step: gradients plus the optimizer update.
    Opt,
}

/// The training graph of `model` at `stage`, for a batch of `batch`.
pub fn stage_graph(program: &Program, model: &str, stage: TrainStage, batch: usize, dims: &BTreeMap<String, usize>) -> Result<Graph, Error> {
    let config = program.train_config(model)?;
    let (label_dtype, tail) = label_type(program, &config.data)?;
    // Dims not given are bound to `batch`; the label's leading dim is the
    // batch the model's first input then has (`--dim B=256` sets both).
    let lopts = LowerOptions { dims: dims.clone(), default_dim: Some(batch), training: true, ..LowerOptions::default() };
    let probe = program.lower(model, &lopts)?;
    let first_input = probe.graph.ids().find(|&id| matches!(probe.graph.node(id).op, Op::Input { .. }));
    let label_batch = first_input.and_then(|id| probe.graph.shape(id).dims().first().copied()).unwrap_or(batch);
    let mut label_shape = vec![label_batch];
    label_shape.extend(tail);
    let lopts = LowerOptions { dims: probe.dims, ..lopts };
    let loss = LossSpec::one_label(&config.loss, "label", label_dtype, label_shape);
    let forward = program.lower_with_loss(model, &lopts, &loss)?.graph;
    match stage {
        TrainStage::Grad => {
            let grads = d2l_passes::differentiate_params(&forward, "loss", &d2l_passes::DiffOptions::default()).map_err(|e| Error::Usage(format!("autodiff: {e}")))?;
            Ok(d2l_passes::simplify(&grads.graph))
        }
        TrainStage::Opt => Ok(step_graph(forward, &update_spec(program, &config.optimizer)?)?.0),
    }
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
    let (graph, batch, training) = match program.train_config(model) {
        Ok(config) => {
            let batch = positive_int(program, &config.data, "batch")?.unwrap_or(1);
            (stage_graph(program, model, TrainStage::Opt, batch, dims)?, batch, true)
        }
        Err(_) if program.train_def(model).is_none() => {
            let lopts = LowerOptions { dims: dims.clone(), default_dim: Some(1), ..LowerOptions::default() };
            (d2l_passes::simplify(&program.lower(model, &lopts)?.graph), 1, false)
        }
        Err(e) => return Err(e.into()),
    };
    // `--dim` may have replaced the train block's batch.
    let batch = graph.inputs().first().and_then(|&x| graph.shape(x).dims().first().copied()).unwrap_or(batch);
    let param_bytes = graph.params().iter().map(|&p| (graph.shape(p).numel() * graph.dtype(p).size_bytes()) as u64).sum();
    let plan = d2l_passes::memory::plan(&graph, &d2l_passes::fusion::fuse(&graph));
    Ok(Footprint { param_bytes, batch, training, arena_bytes: plan.size as u64 })
}
