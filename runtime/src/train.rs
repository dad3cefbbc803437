//! The training loop. It runs compiled training-step graphs (forward, loss,
//! backward and optimizer update in one graph, built upstream) over
//! minibatches, carries parameters, optimizer state, buffers and recurrent
//! state from step to step, measures loss, accuracy, log-RMSE and
//! perplexity, and saves resumable checkpoints.
//!
//! Everything it feeds is found from the graphs' typed roles: parameters
//! and buffers are `Param`/`State` nodes, optimizer slots and the step
//! count are inputs with those roles, and every update output replaces the
//! fed tensor of its name after each step. Graphs have static shapes, so
//! there is one step graph per batch size the data produces.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::time::Instant;

use d2l_ir::{DType, Graph, InputRole, Op, OutputRole};

use crate::data::text::SeqBatches;
use crate::data::{Batches, DataError};
use crate::{Backend, Executable, RunError, Tensor, checkpoint};

/// One epoch of minibatches, each a tensor per field (the model's inputs,
/// then the labels), written into the same tensors batch after batch.
pub trait BatchStream {
    /// Batches left in this epoch.
    fn remaining(&self) -> usize;
    /// Writes the next minibatch into `fields`; false when the epoch is over.
    fn next_batch(&mut self, fields: &mut [Tensor]) -> bool;
}

impl BatchStream for Batches<'_> {
    fn remaining(&self) -> usize {
        Batches::remaining(self)
    }
    fn next_batch(&mut self, fields: &mut [Tensor]) -> bool {
        self.next_fields(fields)
    }
}

impl BatchStream for SeqBatches<'_> {
    fn remaining(&self) -> usize {
        SeqBatches::remaining(self)
    }
    fn next_batch(&mut self, fields: &mut [Tensor]) -> bool {
        let [x, y] = fields else { panic!("a sequence stream has two fields (tokens, labels)") };
        self.next_into(x, y)
    }
}

/// When recurrent state (a data input that the step also updates) starts
/// again from zeros.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum StateReset {
    /// Every minibatch: independent examples (random sampling).
    #[default]
    EveryBatch,
    /// At the start of each epoch only: minibatch i+1 continues where
    /// minibatch i stopped (sequential partitioning); no gradient flows into
    /// the previous minibatch, since the state is fed, not computed.
    EveryEpoch,
}

/// Which figures to measure beside the loss.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MetricSet {
    /// The course's house-prices measure (regression on positive targets).
    pub log_rmse: bool,
    /// `exp` of the mean loss (language models).
    pub perplexity: bool,
    /// The loss is a sum over the batch's sequences (the course's
    /// `l.sum()` of §62), reported per valid token: the sum of the losses
    /// over the sum of the last label, each sequence's valid length (the
    /// course's `metric.add(l.sum(), num_tokens)`).
    pub loss_per_token: bool,
}

/// The graphs of one training setup.
pub struct TrainGraphs {
    /// Batch size → training step (outputs `loss`, `output` and updates).
    pub step: BTreeMap<usize, Graph>,
    /// Batch size → evaluation-mode forward + loss (outputs `loss`, `output`).
    pub eval: BTreeMap<usize, Graph>,
    /// The graph input each field of a minibatch feeds, in the stream's
    /// order: the model's inputs, then the labels.
    pub fields: Vec<String>,
    /// How many of `fields`, from the last, are labels (at least one).
    pub labels: usize,
    pub state_reset: StateReset,
    pub metrics: MetricSet,
}

#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error("{0}")]
    Run(#[from] RunError),
    #[error("{0}")]
    Data(#[from] DataError),
    #[error("{0}")]
    Checkpoint(#[from] checkpoint::CheckpointError),
    #[error("no compiled step for a batch of {0} examples (compiled for {1:?})")]
    NoGraphForBatch(usize, Vec<usize>),
    #[error("checkpoint {path}: {problem}")]
    BadCheckpoint { path: String, problem: String },
    #[error("the loss became {value} at epoch {epoch}, step {step}: lower the learning rate")]
    Diverged { value: f64, epoch: usize, step: u64 },
}

/// Loss and accuracy over one pass of a dataset (or over one step).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Metrics {
    /// Mean loss per example.
    pub loss: f64,
    /// Fraction of correct argmax predictions; `None` when the output is not
    /// class scores against integer labels.
    pub accuracy: Option<f64>,
    /// `sqrt(mean((log(max(pred, 1)) - log(target))^2))`, the course's
    /// house-prices measure, when asked for.
    pub log_rmse: Option<f64>,
    /// `exp(loss)`: the language models' measure, when asked for.
    pub perplexity: Option<f64>,
    pub examples: usize,
    /// Label elements seen (tokens, for a language model), or the valid
    /// tokens when the loss is per token.
    pub tokens: usize,
    /// Whether `loss` is per valid token ([`MetricSet::loss_per_token`]).
    pub loss_per_token: bool,
    /// The graphs' reported figures ([`OutputRole::Metric`] outputs, such
    /// as BERT's masked-LM and next-sentence losses), each a mean per
    /// example like `loss`, in the graph's order.
    pub figures: Vec<(String, f64)>,
    pub seconds: f64,
}

impl Metrics {
    pub fn examples_per_sec(&self) -> f64 {
        if self.seconds > 0.0 { self.examples as f64 / self.seconds } else { 0.0 }
    }

    pub fn tokens_per_sec(&self) -> f64 {
        if self.seconds > 0.0 { self.tokens as f64 / self.seconds } else { 0.0 }
    }
}

/// Receives progress during an epoch (the CLI draws a progress bar).
pub trait Progress {
    fn batch(&mut self, _done: usize, _total: usize, _running_loss: f64) {}
    /// The figures of training step `step` (counted from 1 over the whole
    /// run) alone: its loss, reported figures, examples and time.
    fn step(&mut self, _step: u64, _figures: &Metrics) {}
}

/// No progress reporting.
pub struct Silent;
impl Progress for Silent {}

/// A recurrent-state input: its name, dtype and shape.
type StateShape = (String, DType, Vec<usize>);

pub struct Trainer {
    graphs: TrainGraphs,
    /// The step and eval graphs compiled by the chosen backend, by
    /// (training?, batch size), each when first run: a run counted in steps
    /// may never evaluate, nor meet its last, smaller batch.
    compiled: HashMap<(bool, usize), Box<dyn Executable>>,
    backend: &'static dyn Backend,
    seed: u64,
    /// Parameters, buffers, optimizer state, the step count, recurrent state
    /// and the current batch, by input name: fed to every step and updated
    /// in place from its outputs.
    feeds: HashMap<String, Tensor>,
    /// Recurrent state: data inputs the step graphs also update.
    carried: Vec<String>,
    /// Per (training?, batch size), the recurrent state's zeros: its start.
    state_zeros: HashMap<(bool, usize), Vec<StateShape>>,
    /// The step-count input, if the optimizer takes one (Adam).
    step_count: Option<String>,
    /// Last outputs per (graph kind, batch size): the next run writes into
    /// them (`run_into`), so steady-state steps allocate nothing.
    outputs: HashMap<(bool, usize), Vec<(String, Tensor)>>,
    /// The batch's tensors, reused from batch to batch.
    batch: Vec<Tensor>,
    /// Epochs completed (also after a resume).
    pub epoch: usize,
    /// Optimizer steps taken.
    pub steps: u64,
    /// Training stops (mid-epoch if need be) once `steps` reaches this: the
    /// course's step-counted runs (`train_bert(num_steps)`).
    pub step_limit: Option<u64>,
}

impl Trainer {
    /// Compiles every graph with `backend`; `seed` seeds random ops
    /// (dropout). `params` holds the parameters and buffers; optimizer slots
    /// start at zeros.
    pub fn new(graphs: TrainGraphs, params: HashMap<String, Tensor>, backend: &'static dyn Backend, seed: u64) -> Result<Trainer, TrainError> {
        let mut feeds = params;
        let mut carried = Vec::new();
        let mut step_count = None;
        if let Some(g) = graphs.step.values().next() {
            for id in g.inputs() {
                let Op::Input { name, role } = &g.node(id).op else { continue };
                match role {
                    InputRole::OptimizerSlot { .. } => {
                        feeds.insert(name.clone(), Tensor::zeros(g.dtype(id), g.shape(id).dims()));
                    }
                    InputRole::StepCount => step_count = Some(name.clone()),
                    InputRole::Data if g.updates().any(|o| o.name == *name) => carried.push(name.clone()),
                    InputRole::Data => {}
                }
            }
        }
        let batch = graphs.fields.iter().map(|_| Tensor::zeros(DType::F32, &[0])).collect();
        let mut state_zeros = HashMap::new();
        for (training, set) in [(true, &graphs.step), (false, &graphs.eval)] {
            for (&b, g) in set {
                let zeros = carried.iter().filter_map(|n| g.input_named(n).map(|id| (n.clone(), g.dtype(id), g.shape(id).dims().to_vec()))).collect();
                state_zeros.insert((training, b), zeros);
            }
        }
        let mut trainer = Trainer { graphs, compiled: HashMap::new(), backend, seed, feeds, carried, state_zeros, step_count, outputs: HashMap::new(), batch, epoch: 0, steps: 0, step_limit: None };
        // The full-batch training step now: its errors belong to setup.
        if let Some(&b) = trainer.graphs.step.keys().next_back() {
            trainer.executable(true, b)?;
        }
        Ok(trainer)
    }

    /// The compiled step (`training`) or evaluation graph for a batch of `b`,
    /// compiled now if it was not yet. Dropout draws from a stream of its own
    /// per graph.
    fn executable(&mut self, training: bool, b: usize) -> Result<&mut Box<dyn Executable>, TrainError> {
        let graphs = if training { &self.graphs.step } else { &self.graphs.eval };
        let graph = graphs.get(&b).ok_or_else(|| TrainError::NoGraphForBatch(b, graphs.keys().copied().collect()))?;
        let salt: u64 = if training { 0x51 } else { 0xe7 };
        let seed = self.seed ^ salt.wrapping_mul(b as u64 + 1);
        Ok(match self.compiled.entry((training, b)) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => e.insert(self.backend.compile(graph, seed)?),
        })
    }

    /// Current parameter values (and nothing else), by name.
    pub fn params(&self) -> BTreeMap<String, &Tensor> {
        let mut out = BTreeMap::new();
        if let Some(g) = self.graphs.step.values().next() {
            for p in g.params() {
                if let Some(name) = g.leaf_name(p)
                    && let Some(t) = self.feeds.get(name)
                {
                    out.insert(name.to_string(), t);
                }
            }
        }
        out
    }

    /// Names of the fed tensors a checkpoint holds: parameters, buffers and
    /// optimizer state (not the batch, the step count or recurrent state,
    /// which starts again at each epoch).
    fn persistent(&self) -> Vec<String> {
        let transient = |n: &String| self.graphs.fields.contains(n) || self.carried.contains(n) || self.step_count.as_ref() == Some(n);
        let mut names: Vec<String> = self.feeds.keys().filter(|n| !transient(n)).cloned().collect();
        names.sort();
        names
    }

    /// Zeros the recurrent state the graph (training?, batch size) takes
    /// when the policy says so, or when what is fed has another shape (a
    /// smaller last batch).
    fn prepare_state(&mut self, key: (bool, usize), first: bool) {
        let Some(zeros) = self.state_zeros.get(&key) else { return };
        let stale = zeros.iter().any(|(n, _, dims)| self.feeds.get(n).is_none_or(|t| t.dims() != dims.as_slice()));
        if first || stale || self.graphs.state_reset == StateReset::EveryBatch {
            for (name, dtype, dims) in zeros {
                match self.feeds.get_mut(name) {
                    Some(Tensor::F32(a)) if a.shape() == dims.as_slice() => a.fill(0.0),
                    _ => {
                        self.feeds.insert(name.clone(), Tensor::zeros(*dtype, dims));
                    }
                }
            }
        }
    }

    /// One epoch over `batches`, updating parameters after every minibatch.
    pub fn train_epoch(&mut self, batches: &mut dyn BatchStream, progress: &mut dyn Progress) -> Result<Metrics, TrainError> {
        self.run_epoch(batches, true, progress)
    }

    /// Loss and metrics of the current parameters in evaluation mode.
    pub fn evaluate(&mut self, batches: &mut dyn BatchStream) -> Result<Metrics, TrainError> {
        self.run_epoch(batches, false, &mut Silent)
    }

    fn run_epoch(&mut self, batches: &mut dyn BatchStream, training: bool, progress: &mut dyn Progress) -> Result<Metrics, TrainError> {
        let start = Instant::now();
        let left = self.step_limit.filter(|_| training).map(|l| l.saturating_sub(self.steps) as usize);
        let total = left.map_or(batches.remaining(), |l| l.min(batches.remaining()));
        let mut acc = Accumulator { metrics: self.graphs.metrics, ..Accumulator::default() };
        let mut batch = std::mem::take(&mut self.batch);
        let mut done = 0;
        let first_label = self.first_label();
        let result = (|| {
            while done < total && batches.next_batch(&mut batch) {
                let step_start = Instant::now();
                let b = batch.first().and_then(|t| t.dims().first().copied()).unwrap_or(0);
                self.executable(training, b)?;
                self.prepare_state((training, b), done == 0);
                if training {
                    self.steps += 1;
                    if let Some(name) = &self.step_count {
                        match self.feeds.get_mut(name) {
                            Some(Tensor::F32(a)) => a.fill(self.steps as f32),
                            _ => {
                                self.feeds.insert(name.clone(), Tensor::from_f32(&[], vec![self.steps as f32]));
                            }
                        }
                    }
                }
                // The batch joins the feeds for this run only.
                for (name, t) in self.graphs.fields.iter().zip(batch.iter_mut()) {
                    swap_feed(&mut self.feeds, name, t);
                }
                let exe = self.compiled.get_mut(&(training, b)).expect("compiled above");
                let outputs = self.outputs.entry((training, b)).or_default();
                let run = exe.run_into(&self.feeds, outputs);
                for (name, t) in self.graphs.fields.iter().zip(batch.iter_mut()) {
                    swap_feed(&mut self.feeds, name, t);
                }
                run?;
                let graph = if training { &self.graphs.step[&b] } else { &self.graphs.eval[&b] };
                crate::apply_updates(graph, outputs, &mut self.feeds);
                let mut loss = f64::NAN;
                for (name, t) in outputs.iter() {
                    if name == "loss" {
                        loss = first_value(t);
                    } else if name == "output"
                        && let Some(labels) = batch.get(first_label)
                    {
                        acc.add_predictions(t, labels);
                    }
                }
                // The few metric outputs, looked up by name (a step has
                // hundreds of update outputs to pass over).
                let figures: Vec<(String, f64)> = graph
                    .outputs()
                    .iter()
                    .filter(|o| o.role == OutputRole::Metric)
                    .filter_map(|o| outputs.iter().find(|(n, _)| *n == o.name).map(|(n, t)| (n.clone(), first_value(t))))
                    .collect();
                if training && !loss.is_finite() {
                    return Err(TrainError::Diverged { value: loss, epoch: self.epoch + 1, step: self.steps });
                }
                let tokens = if self.graphs.metrics.loss_per_token {
                    // The valid lengths: whole numbers, exact through f64.
                    batch.last().map_or(0, |lens| lens.to_f64_vec().iter().sum::<f64>() as usize)
                } else {
                    batch.get(first_label).map_or(b, Tensor::numel)
                };
                acc.add_loss(loss, b, tokens);
                acc.add_figures(&figures, b);
                done += 1;
                progress.batch(done, total, acc.mean_loss());
                if training {
                    let mut one = Accumulator { metrics: self.graphs.metrics, ..Accumulator::default() };
                    one.add_loss(loss, b, tokens);
                    one.add_figures(&figures, b);
                    progress.step(self.steps, &one.finish(step_start));
                }
            }
            Ok(())
        })();
        self.batch = batch;
        result?;
        if training {
            self.epoch += 1;
        }
        Ok(acc.finish(start))
    }

    /// Index of the first label among the fields (labels follow the model's
    /// inputs): accuracy compares `output` with it.
    fn first_label(&self) -> usize {
        self.graphs.fields.len() - self.graphs.labels
    }

    /// Writes parameters, buffers, optimizer state and progress counters,
    /// atomically.
    pub fn save(&self, path: &Path, mut metadata: BTreeMap<String, String>) -> Result<(), TrainError> {
        metadata.insert("epoch".into(), self.epoch.to_string());
        metadata.insert("step".into(), self.steps.to_string());
        let names = self.persistent();
        let tensors: Vec<(String, &Tensor)> = names.iter().map(|n| (n.clone(), &self.feeds[n])).collect();
        checkpoint::save(path, &tensors, &metadata)?;
        Ok(())
    }

    /// Restores a checkpoint written by [`Trainer::save`]; every parameter,
    /// buffer and optimizer state tensor must be present with the expected
    /// dtype and shape.
    pub fn resume(&mut self, path: &Path) -> Result<BTreeMap<String, String>, TrainError> {
        let (tensors, metadata) = checkpoint::load(path)?;
        let bad = |problem: String| TrainError::BadCheckpoint { path: path.display().to_string(), problem };
        for name in self.persistent() {
            let current = &self.feeds[&name];
            let Some(t) = tensors.get(&name) else {
                return Err(bad(format!("has no tensor `{name}`; was it written for another model or optimizer?")));
            };
            if t.dtype() != current.dtype() || t.shape() != current.shape() {
                return Err(bad(format!("`{name}` is {}{} but the model needs {}{}", t.dtype(), t.shape(), current.dtype(), current.shape())));
            }
            self.feeds.insert(name, t.clone());
        }
        let number = |key: &str| metadata.get(key).and_then(|v| v.parse::<u64>().ok()).ok_or_else(|| bad(format!("metadata has no valid `{key}`")));
        self.epoch = number("epoch")? as usize;
        self.steps = number("step")?;
        Ok(metadata)
    }
}

/// Exchanges `t` with the feed `name` (inserting it the first time).
fn swap_feed(feeds: &mut HashMap<String, Tensor>, name: &str, t: &mut Tensor) {
    match feeds.get_mut(name) {
        Some(slot) => std::mem::swap(slot, t),
        None => {
            feeds.insert(name.to_string(), std::mem::replace(t, Tensor::zeros(DType::F32, &[0])));
        }
    }
}

/// The first element (a scalar loss) as f64, without copying the tensor.
fn first_value(t: &Tensor) -> f64 {
    match t {
        Tensor::F32(a) => a.iter().next().map_or(f64::NAN, |&v| v as f64),
        Tensor::F64(a) => a.iter().next().copied().unwrap_or(f64::NAN),
        Tensor::I64(a) => a.iter().next().map_or(f64::NAN, |&v| v as f64),
        Tensor::Bool(a) => a.iter().next().map_or(f64::NAN, |&v| f64::from(u8::from(v))),
    }
}

/// Running sums for [`Metrics`].
#[derive(Default)]
struct Accumulator {
    metrics: MetricSet,
    loss_sum: f64,
    examples: usize,
    tokens: usize,
    correct: usize,
    classified: usize,
    log_sq_sum: f64,
    log_count: usize,
    /// Per reported figure, its sum weighted by the batch size.
    figure_sums: Vec<(String, f64)>,
}

impl Accumulator {
    /// `loss` is the batch's mean, or its sum with `loss_per_token`.
    fn add_loss(&mut self, loss: f64, batch: usize, tokens: usize) {
        self.loss_sum += if self.metrics.loss_per_token { loss } else { loss * batch as f64 };
        self.examples += batch;
        self.tokens += tokens;
    }

    /// A step's reported figures, each its batch's mean.
    fn add_figures(&mut self, figures: &[(String, f64)], batch: usize) {
        for (name, value) in figures {
            match self.figure_sums.iter_mut().find(|(n, _)| n == name) {
                Some((_, sum)) => *sum += value * batch as f64,
                None => self.figure_sums.push((name.clone(), value * batch as f64)),
            }
        }
    }

    fn mean_loss(&self) -> f64 {
        let count = if self.metrics.loss_per_token { self.tokens } else { self.examples };
        if count == 0 { f64::NAN } else { self.loss_sum / count as f64 }
    }

    /// Counts argmax hits when `output` is [b, K] scores and `labels` [b] i64,
    /// and squared log errors when asked for and the labels are floats.
    fn add_predictions(&mut self, output: &Tensor, labels: &Tensor) {
        if self.metrics.log_rmse && labels.dtype().is_float() {
            for (p, y) in output.to_f64_vec().into_iter().zip(labels.to_f64_vec()) {
                // Clamping at 1 as the course does keeps log finite.
                self.log_sq_sum += (p.max(1.0).ln() - y.max(1.0).ln()).powi(2);
                self.log_count += 1;
            }
        }
        let Tensor::I64(labels) = labels else { return };
        let &[b, k] = output.dims() else { return };
        if labels.len() != b || labels.ndim() != 1 || k == 0 {
            return;
        }
        // f32 scores are read in place (no copy per step).
        let owned;
        let scores: &[f64] = match output {
            Tensor::F32(_) => &[],
            other => {
                owned = other.to_f64_vec();
                &owned
            }
        };
        let f32_scores = match output {
            Tensor::F32(a) => a.as_slice(),
            _ => None,
        };
        for (i, &label) in labels.iter().enumerate() {
            let best = match f32_scores {
                Some(s) => argmax_row(&s[i * k..(i + 1) * k]),
                None if scores.len() == b * k => argmax_row(&scores[i * k..(i + 1) * k]),
                None => continue,
            };
            self.correct += usize::from(best as i64 == label);
        }
        self.classified += b;
    }

    fn finish(&self, start: Instant) -> Metrics {
        let loss = self.mean_loss();
        Metrics {
            loss,
            accuracy: (self.classified > 0).then(|| self.correct as f64 / self.classified as f64),
            log_rmse: (self.log_count > 0).then(|| (self.log_sq_sum / self.log_count as f64).sqrt()),
            perplexity: self.metrics.perplexity.then(|| loss.exp()),
            examples: self.examples,
            tokens: self.tokens,
            loss_per_token: self.metrics.loss_per_token,
            figures: self.figure_sums.iter().map(|(n, s)| (n.clone(), s / self.examples.max(1) as f64)).collect(),
            seconds: start.elapsed().as_secs_f64(),
        }
    }
}

/// Index of the first maximum of a row.
fn argmax_row<T: PartialOrd + Copy>(row: &[T]) -> usize {
    row.iter().enumerate().fold(0, |best, (j, &v)| if v > row[best] { j } else { best })
}
