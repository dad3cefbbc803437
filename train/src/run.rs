//! A training run: the train block's data source, the compiled graphs and
//! the trainer that carries parameters through them; epochs with
//! evaluation, k-fold cross-validation, checkpoints with logs and curves.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use d2l_dsl::{Program, TrainConfig};
use d2l_passes::optimizer::Optimizer;
use d2l_runtime::train::{MetricSet, Metrics, Progress, Silent, TrainGraphs, Trainer};

use crate::graphs::{bind, eval_graph, forward_with_loss, initial_params, step_graph, update_spec};
use crate::logs::{self, EpochLog};
use crate::sources::{self, Source};
use crate::{Error, Stream, TrainOptions, derive_seed};

/// Metric names a train block may ask for beside the loss.
const METRICS: &[&str] = &["accuracy", "log_rmse", "perplexity", "loss_per_token"];

/// Everything a training run needs, ready to run.
pub struct Training {
    pub model: String,
    pub config: TrainConfig,
    pub source: Box<dyn Source>,
    pub trainer: Trainer,
    /// Epochs to train (the train block's, or `--epochs`).
    pub epochs: usize,
    /// Or optimizer steps to train (`steps = N`, or `--steps`), however many
    /// epochs they take: then the log has a row per step.
    pub steps: Option<usize>,
    /// Trained parameter elements (buffers not counted).
    pub param_count: usize,
    /// Building and compiling every graph took this long (ms).
    pub build_ms: f64,
    seed: u64,
}

/// Loads the train block's data and builds a trainer for it.
pub fn prepare(program: &Program, model: &str, opts: &TrainOptions) -> Result<Training, Error> {
    let started = Instant::now();
    let config = program.train_config(model)?;
    let source = sources::open(program, &config.data, opts)?;
    let (trainer, param_count) = build_trainer(program, model, &config, source.as_ref(), opts)?;
    let epochs = opts.epochs.unwrap_or(config.epochs);
    // `--epochs` turns a step-counted block into an epoch-counted run.
    let steps = opts.steps.or(config.steps.filter(|_| opts.epochs.is_none()));
    let build_ms = started.elapsed().as_secs_f64() * 1e3;
    Ok(Training { model: model.to_string(), config, source, trainer, epochs, steps, param_count, build_ms, seed: opts.seed })
}

/// Compiles the training-step and evaluation graphs for every batch size
/// `source` produces, with freshly initialised parameters.
fn build_trainer(program: &Program, model: &str, config: &TrainConfig, source: &dyn Source, opts: &TrainOptions) -> Result<(Trainer, usize), Error> {
    for (m, span) in &config.metrics {
        if !METRICS.contains(&m.as_str()) {
            return Err(program.error_at(*span, format!("unknown metric `{m}` (known: {})", METRICS.join(", "))).into());
        }
    }
    let mut update = update_spec(program, &config.optimizer)?;
    if let Some(lr) = opts.lr {
        if !(lr.is_finite() && lr > 0.0) {
            return Err(Error::Usage(format!("the learning rate must be a positive number, got {lr}")));
        }
        match &mut update.optimizer {
            Optimizer::Sgd { lr: l, .. } | Optimizer::Adam { lr: l, .. } => *l = lr,
        }
    }
    let schema = source.schema();
    let binding = bind(program, model, &schema)?;
    let mut step = BTreeMap::new();
    for b in source.train_batch_sizes() {
        let forward = forward_with_loss(program, model, &config.loss, &schema, &binding, b, true)?;
        step.insert(b, step_graph(&forward, &update)?);
    }
    let mut eval = BTreeMap::new();
    for b in source.eval_batch_sizes() {
        eval.insert(b, eval_graph(forward_with_loss(program, model, &config.loss, &schema, &binding, b, false)?));
    }
    let first = step.values().next().ok_or_else(|| Error::Usage(format!("{} yields no minibatches", source.describe())))?;
    // A language model scores every token of its data's vocabulary: a
    // narrower output would read the last tokens' labels as nothing.
    // So does a translation model, its target vocabulary.
    let tokens = source.vocab().map(|(v, _)| v.len()).or(source.pairs().map(|p| p.tgt_vocab.len()));
    if let (Some(tokens), Some(out)) = (tokens, first.output("output")) {
        let width = first.shape(out).dims().last().copied().unwrap_or(0);
        if width > 1 && width != tokens {
            return Err(Error::Usage(format!("model `{model}` scores {width} tokens, but the vocabulary of its data has {tokens} ({})", source.describe())));
        }
    }
    let params = initial_params(first, config.init.as_ref(), derive_seed(opts.seed, Stream::Init));
    // Buffers (batch-norm statistics) are initialised too, but not counted.
    let param_count = first.params().iter().map(|&p| first.shape(p).numel()).sum();
    let asked = |m: &str| config.metrics.iter().any(|(n, _)| n == m);
    let metrics = MetricSet { log_rmse: asked("log_rmse"), perplexity: asked("perplexity"), loss_per_token: asked("loss_per_token") };
    let graphs = TrainGraphs { step, eval, fields: binding.fields, labels: schema.labels.len(), state_reset: source.state_reset(), metrics };
    let trainer = Trainer::new(graphs, params, opts.device.backend(), derive_seed(opts.seed, Stream::Dropout))?;
    Ok((trainer, param_count))
}

impl Training {
    /// One epoch of training, then the held-out set (if any) in evaluation mode.
    pub fn epoch(&mut self, progress: &mut dyn Progress) -> Result<EpochLog, Error> {
        let mut batches = self.source.train_epoch(self.trainer.epoch as u64)?;
        let train = self.trainer.train_epoch(batches.as_mut(), progress)?;
        drop(batches);
        let test = self.evaluate_test().transpose()?;
        Ok(EpochLog { epoch: self.trainer.epoch, train, test })
    }

    /// Trains until [`Training::steps`] optimizer steps have run in all (the
    /// course's `train_bert`), epoch after epoch, the last one cut short;
    /// returns a row per step taken now. `on_step` sees each row as it comes.
    pub fn train_steps(&mut self, progress: &mut dyn Progress, on_step: &mut dyn FnMut(&EpochLog)) -> Result<Vec<EpochLog>, Error> {
        let Some(total) = self.steps else { return Err(Error::Usage(format!("the train block of `{}` counts epochs, not steps", self.model))) };
        let mut rows = StepRows { inner: progress, rows: Vec::new(), on_step };
        self.trainer.step_limit = Some(total as u64);
        while self.trainer.steps < total as u64 {
            let before = self.trainer.steps;
            let mut batches = self.source.train_epoch(self.trainer.epoch as u64)?;
            self.trainer.train_epoch(batches.as_mut(), &mut rows)?;
            if self.trainer.steps == before {
                return Err(Error::Usage(format!("{} yields no minibatches", self.source.describe())));
            }
        }
        Ok(rows.rows)
    }

    /// The current parameters on the training set, in evaluation mode.
    pub fn evaluate_train(&mut self) -> Result<Metrics, Error> {
        let mut batches = self.source.train_eval()?;
        Ok(self.trainer.evaluate(batches.as_mut())?)
    }

    /// The current parameters on the held-out set, if the source has one.
    pub fn evaluate_test(&mut self) -> Option<Result<Metrics, Error>> {
        let batches = self.source.test()?;
        Some(batches.and_then(|mut b| Ok(self.trainer.evaluate(b.as_mut())?)))
    }

    /// Where a run writes into `dir`: `MODEL.safetensors`, `.csv`, `.json`, `.svg`.
    pub fn files(&self, dir: &Path) -> RunFiles {
        let base = dir.join(&self.model);
        RunFiles { checkpoint: base.with_extension("safetensors"), csv: base.with_extension("csv"), json: base.with_extension("json"), plot: base.with_extension("svg") }
    }

    /// Writes the checkpoint (parameters, optimizer state, progress), the
    /// log and the curves into `dir`, each atomically.
    pub fn save(&self, dir: &Path, log: &[EpochLog]) -> Result<RunFiles, Error> {
        let files = self.files(dir);
        let meta = [("model".to_string(), self.model.clone()), ("seed".to_string(), self.seed.to_string())].into();
        self.trainer.save(&files.checkpoint, meta)?;
        let io = |what: &str, e: std::io::Error| Error::Usage(format!("cannot write the {what}: {e}"));
        let unit = if self.steps.is_some() { logs::Unit::Step } else { logs::Unit::Epoch };
        logs::write_logs(&files.csv, &files.json, log, unit).map_err(|e| io("log", e))?;
        logs::write_plot(&files.plot, log, unit).map_err(|e| io("plot", e))?;
        Ok(files)
    }

    /// Continues from the checkpoint in `dir`; returns the log of the epochs
    /// already run (empty if the log is unreadable).
    pub fn resume(&mut self, dir: &Path) -> Result<Vec<EpochLog>, Error> {
        let files = self.files(dir);
        self.trainer.resume(&files.checkpoint)?;
        let mut log = logs::read_log(&files.csv).unwrap_or_default();
        log.truncate(if self.steps.is_some() { self.trainer.steps as usize } else { self.trainer.epoch });
        Ok(log)
    }
}

/// Passes progress on and keeps each step's figures as a log row.
struct StepRows<'a> {
    inner: &'a mut dyn Progress,
    rows: Vec<EpochLog>,
    on_step: &'a mut dyn FnMut(&EpochLog),
}

impl Progress for StepRows<'_> {
    fn batch(&mut self, done: usize, total: usize, running_loss: f64) {
        self.inner.batch(done, total, running_loss);
    }

    fn step(&mut self, step: u64, figures: &Metrics) {
        self.inner.step(step, figures);
        let row = EpochLog { epoch: step as usize, train: figures.clone(), test: None };
        (self.on_step)(&row);
        self.rows.push(row);
    }
}

/// The files a run writes.
#[derive(Clone, Debug, PartialEq)]
pub struct RunFiles {
    pub checkpoint: PathBuf,
    pub csv: PathBuf,
    pub json: PathBuf,
    pub plot: PathBuf,
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
pub fn k_fold(program: &Program, run: &Training, opts: &TrainOptions, on_fold: &mut dyn FnMut(&FoldResult)) -> Result<Vec<FoldResult>, Error> {
    let k = run.source.folds().ok_or_else(|| Error::Usage(format!("{} has no folds", run.source.describe())))?;
    let mut results = Vec::new();
    for i in 0..k {
        let source = run.source.fold(i)?;
        let (trainer, param_count) = build_trainer(program, &run.model, &run.config, source.as_ref(), opts)?;
        let mut fold = Training { model: run.model.clone(), config: run.config.clone(), source, trainer, epochs: run.epochs, steps: None, param_count, build_ms: 0.0, seed: opts.seed };
        for _ in 0..run.epochs {
            let mut batches = fold.source.train_epoch(fold.trainer.epoch as u64)?;
            fold.trainer.train_epoch(batches.as_mut(), &mut Silent)?;
        }
        let train = fold.evaluate_train()?;
        let valid = fold.evaluate_test().ok_or_else(|| Error::Usage("a fold has no validation set".into()))??;
        let result = FoldResult { fold: i + 1, train, valid };
        on_fold(&result);
        results.push(result);
    }
    Ok(results)
}

/// L2 norm of all weights (rank >= 2 parameters): what weight decay shrinks.
/// `None` when the model has no weights (rank >= 2) at all.
pub fn weight_norm(params: &BTreeMap<String, &d2l_runtime::Tensor>) -> Option<f64> {
    let weights: Vec<&&d2l_runtime::Tensor> = params.values().filter(|t| t.shape().rank() >= 2).collect();
    (!weights.is_empty()).then(|| weights.iter().flat_map(|t| t.to_f64_vec()).map(|v| v * v).sum::<f64>().sqrt())
}
