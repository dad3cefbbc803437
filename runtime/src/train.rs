//! The training loop. It runs compiled training-step graphs (forward, loss,
//! backward and optimizer update in one graph, built upstream) over
//! minibatches, carries parameters and optimizer state from step to step,
//! measures loss and accuracy, and saves resumable checkpoints.
//!
//! Graphs have static shapes, so there is one step graph per batch size the
//! data produces (the full batch and, usually, a smaller last one).

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::time::Instant;

use d2l_ir::{DType, Graph, Shape};

use crate::data::{BatchOptions, DataError, TensorDataset};
use crate::{Backend, Executable, RunError, Tensor, checkpoint};

/// Optimizer state tensor: starts as zeros, fed as input `name`, returned
/// as output `update:<name>`.
#[derive(Clone, Debug, PartialEq)]
pub struct StateSpec {
    pub name: String,
    pub dtype: DType,
    pub shape: Shape,
}

/// The graphs of one training setup.
pub struct TrainGraphs {
    /// Batch size → training step (outputs `loss`, `output`, `update:*`).
    pub step: BTreeMap<usize, Graph>,
    /// Batch size → evaluation-mode forward + loss (outputs `loss`, `output`).
    pub eval: BTreeMap<usize, Graph>,
    pub state: Vec<StateSpec>,
    /// Names of the model's data input and the label input.
    pub input: String,
    pub label: String,
    /// Whether the step takes the scalar input `step` (Adam).
    pub needs_step_counter: bool,
    /// Also measure the course's log-RMSE (regression on positive targets).
    pub log_rmse: bool,
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

/// Loss and accuracy over one pass of a dataset.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Metrics {
    /// Mean loss per example.
    pub loss: f64,
    /// Fraction of correct argmax predictions; `None` when the output is not
    /// class scores against integer labels.
    pub accuracy: Option<f64>,
    /// `sqrt(mean((log(max(pred, 1)) - log(target))^2))`, the course's
    /// house-prices measure, when asked for.
    pub log_rmse: Option<f64>,
    pub examples: usize,
    pub seconds: f64,
}

impl Metrics {
    pub fn examples_per_sec(&self) -> f64 {
        if self.seconds > 0.0 { self.examples as f64 / self.seconds } else { 0.0 }
    }
}

/// Receives progress during an epoch (the CLI draws a progress bar).
pub trait Progress {
    fn batch(&mut self, _done: usize, _total: usize, _running_loss: f64) {}
}

/// No progress reporting.
pub struct Silent;
impl Progress for Silent {}

pub struct Trainer {
    graphs: TrainGraphs,
    /// The step and eval graphs compiled by the chosen backend, by batch size.
    step: BTreeMap<usize, Box<dyn Executable>>,
    eval: BTreeMap<usize, Box<dyn Executable>>,
    /// Parameters, optimizer state, the step counter and the current batch,
    /// by input name: fed to every step and updated in place from its outputs.
    feeds: HashMap<String, Tensor>,
    /// Last outputs per (graph kind, batch size): the next run writes into
    /// them (`run_into`), so steady-state steps allocate nothing.
    outputs: HashMap<(bool, usize), Vec<(String, Tensor)>>,
    /// Epochs completed (also after a resume).
    pub epoch: usize,
    /// Optimizer steps taken.
    pub step_count: u64,
}

impl Trainer {
    /// Compiles every graph with `backend`; `seed` seeds random ops (dropout).
    pub fn new(graphs: TrainGraphs, params: HashMap<String, Tensor>, backend: Backend, seed: u64) -> Result<Trainer, TrainError> {
        let mut feeds = params;
        for s in &graphs.state {
            feeds.insert(s.name.clone(), Tensor::zeros(s.dtype, &s.shape.0));
        }
        let compile = |set: &BTreeMap<usize, Graph>, salt: u64| -> Result<BTreeMap<usize, Box<dyn Executable>>, TrainError> {
            set.iter().map(|(&b, g)| Ok((b, backend.compile(g, seed ^ salt.wrapping_mul(b as u64 + 1))?))).collect()
        };
        let step = compile(&graphs.step, 0x51)?;
        let eval = compile(&graphs.eval, 0xe7)?;
        // The batch lives in the feeds (swapped in and out), so no step
        // inserts a key.
        for name in [&graphs.input, &graphs.label] {
            feeds.insert(name.clone(), Tensor::zeros(DType::F32, &[0]));
        }
        Ok(Trainer { graphs, step, eval, feeds, outputs: HashMap::new(), epoch: 0, step_count: 0 })
    }

    /// Current parameter values (and nothing else), by name.
    pub fn params(&self) -> BTreeMap<String, &Tensor> {
        let mut out = BTreeMap::new();
        for g in self.graphs.step.values().take(1) {
            for p in g.params() {
                if let d2l_ir::Op::Param { name, .. } = &g.node(p).op
                    && let Some(t) = self.feeds.get(name)
                {
                    out.insert(name.clone(), t);
                }
            }
        }
        out
    }

    /// One epoch over `data`, updating parameters after every minibatch.
    pub fn train_epoch(&mut self, data: &TensorDataset, opts: &BatchOptions, progress: &mut dyn Progress) -> Result<Metrics, TrainError> {
        let start = Instant::now();
        let mut batches = data.batches(opts, self.epoch as u64)?;
        let total = batches.remaining();
        let (mut x, mut y) = (Tensor::zeros(DType::F32, &[0]), Tensor::zeros(DType::F32, &[0]));
        let mut acc = Accumulator { log_rmse: self.graphs.log_rmse, ..Accumulator::default() };
        let mut done = 0;
        while batches.next_into(&mut x, &mut y) {
            let b = x.dims()[0];
            let exe = self.step.get_mut(&b).ok_or_else(|| TrainError::NoGraphForBatch(b, self.graphs.step.keys().copied().collect()))?;
            self.step_count += 1;
            if self.graphs.needs_step_counter {
                match self.feeds.get_mut("step") {
                    Some(Tensor::F32(a)) => a.fill(self.step_count as f32),
                    _ => {
                        self.feeds.insert("step".into(), Tensor::from_f32(&[], vec![self.step_count as f32]));
                    }
                }
            }
            swap_feed(&mut self.feeds, &self.graphs.input, &mut x);
            swap_feed(&mut self.feeds, &self.graphs.label, &mut y);
            let outputs = self.outputs.entry((true, b)).or_default();
            let result = exe.run_into(&self.feeds, outputs);
            // Hand the batch buffers back so the next batch reuses them.
            swap_feed(&mut self.feeds, &self.graphs.input, &mut x);
            swap_feed(&mut self.feeds, &self.graphs.label, &mut y);
            result?;
            let mut loss = f64::NAN;
            crate::apply_updates(&self.graphs.step[&b], outputs, &mut self.feeds);
            for (name, t) in outputs.iter_mut() {
                if name == "loss" {
                    loss = first_value(t);
                } else if name == "output" {
                    acc.add_predictions(t, &y);
                }
            }
            if !loss.is_finite() {
                return Err(TrainError::Diverged { value: loss, epoch: self.epoch + 1, step: self.step_count });
            }
            acc.add_loss(loss, b);
            done += 1;
            progress.batch(done, total, acc.mean_loss());
        }
        self.epoch += 1;
        Ok(acc.finish(start))
    }

    /// Loss and accuracy of the current parameters in evaluation mode.
    pub fn evaluate(&mut self, data: &TensorDataset, batch_size: usize) -> Result<Metrics, TrainError> {
        let start = Instant::now();
        let opts = BatchOptions::new(batch_size).shuffle(false);
        let mut batches = data.batches(&opts, 0)?;
        let (mut x, mut y) = (Tensor::zeros(DType::F32, &[0]), Tensor::zeros(DType::F32, &[0]));
        let mut acc = Accumulator { log_rmse: self.graphs.log_rmse, ..Accumulator::default() };
        while batches.next_into(&mut x, &mut y) {
            let b = x.dims()[0];
            let exe = self.eval.get_mut(&b).ok_or_else(|| TrainError::NoGraphForBatch(b, self.graphs.eval.keys().copied().collect()))?;
            // The batch joins the parameters in `feeds` for this run only.
            swap_feed(&mut self.feeds, &self.graphs.input, &mut x);
            swap_feed(&mut self.feeds, &self.graphs.label, &mut y);
            let outputs = self.outputs.entry((false, b)).or_default();
            let result = exe.run_into(&self.feeds, outputs);
            swap_feed(&mut self.feeds, &self.graphs.input, &mut x);
            swap_feed(&mut self.feeds, &self.graphs.label, &mut y);
            result?;
            for (name, t) in outputs.iter() {
                match name.as_str() {
                    "loss" => acc.add_loss(first_value(t), b),
                    "output" => acc.add_predictions(t, &y),
                    _ => {}
                }
            }
        }
        Ok(acc.finish(start))
    }

    /// Writes parameters, optimizer state and progress counters, atomically.
    pub fn save(&self, path: &Path, mut metadata: BTreeMap<String, String>) -> Result<(), TrainError> {
        metadata.insert("epoch".into(), self.epoch.to_string());
        metadata.insert("step".into(), self.step_count.to_string());
        let mut names: Vec<&String> = self.feeds.keys().filter(|k| *k != "step" && **k != self.graphs.input && **k != self.graphs.label).collect();
        names.sort();
        let tensors: Vec<(String, &Tensor)> = names.into_iter().map(|n| (n.clone(), &self.feeds[n])).collect();
        checkpoint::save(path, &tensors, &metadata)?;
        Ok(())
    }

    /// Restores a checkpoint written by [`Trainer::save`]; every parameter
    /// and state tensor must be present with the expected dtype and shape.
    pub fn resume(&mut self, path: &Path) -> Result<BTreeMap<String, String>, TrainError> {
        let (tensors, metadata) = checkpoint::load(path)?;
        let bad = |problem: String| TrainError::BadCheckpoint { path: path.display().to_string(), problem };
        for (name, current) in self.feeds.iter_mut() {
            if name == "step" || *name == self.graphs.input || *name == self.graphs.label {
                continue;
            }
            let Some(t) = tensors.get(name) else {
                return Err(bad(format!("has no tensor `{name}`; was it written for another model or optimizer?")));
            };
            if t.dtype() != current.dtype() || t.shape() != current.shape() {
                return Err(bad(format!("`{name}` is {}{} but the model needs {}{}", t.dtype(), t.shape(), current.dtype(), current.shape())));
            }
            *current = t.clone();
        }
        let number = |key: &str| metadata.get(key).and_then(|v| v.parse::<u64>().ok()).ok_or_else(|| bad(format!("metadata has no valid `{key}`")));
        self.epoch = number("epoch")? as usize;
        self.step_count = number("step")?;
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
    loss_sum: f64,
    examples: usize,
    correct: usize,
    classified: usize,
    /// Whether to accumulate squared log errors.
    log_rmse: bool,
    log_sq_sum: f64,
    log_count: usize,
}

impl Accumulator {
    fn add_loss(&mut self, batch_mean: f64, batch: usize) {
        self.loss_sum += batch_mean * batch as f64;
        self.examples += batch;
    }

    fn mean_loss(&self) -> f64 {
        if self.examples == 0 { f64::NAN } else { self.loss_sum / self.examples as f64 }
    }

    /// Counts argmax hits when `output` is [b, K] scores and `labels` [b] i64,
    /// and squared log errors when asked for and the labels are floats.
    fn add_predictions(&mut self, output: &Tensor, labels: &Tensor) {
        if self.log_rmse && labels.dtype().is_float() {
            for (p, y) in output.to_f64_vec().into_iter().zip(labels.to_f64_vec()) {
                // Clamping at 1 as the course does keeps log finite.
                self.log_sq_sum += (p.max(1.0).ln() - y.max(1.0).ln()).powi(2);
                self.log_count += 1;
            }
        }
        let Tensor::I64(labels) = labels else { return };
        let &[b, k] = output.dims() else { return };
        if labels.len() != b || k == 0 {
            return;
        }
        // f32 scores are read in place (no copy per step).
        let scores: std::borrow::Cow<'_, [f64]> = match output {
            Tensor::F32(_) => std::borrow::Cow::Borrowed(&[]),
            other => std::borrow::Cow::Owned(other.to_f64_vec()),
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
        Metrics {
            loss: self.mean_loss(),
            accuracy: (self.classified > 0).then(|| self.correct as f64 / self.classified as f64),
            log_rmse: (self.log_count > 0).then(|| (self.log_sq_sum / self.log_count as f64).sqrt()),
            examples: self.examples,
            seconds: start.elapsed().as_secs_f64(),
        }
    }
}

/// Index of the first maximum of a row.
fn argmax_row<T: PartialOrd + Copy>(row: &[T]) -> usize {
    row.iter().enumerate().fold(0, |best, (j, &v)| if v > row[best] { j } else { best })
}
