//! Training a model as its `train` block says, as a library: the data
//! sources a train block can name ([`sources`]), the training-step and
//! evaluation graphs built for them ([`graphs`]), the epoch loop with
//! evaluation, k-fold validation and checkpoints ([`run`]), the logs and
//! curves a run writes ([`logs`]), text generation with a trained language
//! model ([`generate`]), translation with a trained encoder–decoder
//! ([`translate`]) and its attention maps drawn as heatmaps ([`heatmap`]),
//! BLEU ([`bleu`]), BERT's contextual encodings ([`bert`]) and step-time
//! benchmarks ([`bench`]).
//!
//! The `d2l` command and the facade crate call this; a Rust program can too:
//!
//! ```no_run
//! let program = d2l_dsl::Program::load_file("models/mlp.d2l".as_ref()).map_err(|e| e.to_string())?;
//! let opts = d2l_train::TrainOptions { epochs: Some(1), ..Default::default() };
//! let mut run = d2l_train::prepare(&program, "mlp", &opts)?;
//! let log = run.epoch(&mut d2l_runtime::train::Silent)?;
//! println!("loss {:.3}", log.train.loss);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod bench;
pub mod bert;
pub mod bleu;
pub mod generate;
pub mod graphs;
pub mod heatmap;
pub mod kernel_regression;
pub mod logs;
pub mod run;
pub mod series;
pub mod sources;
pub mod translate;

use std::path::PathBuf;

pub use d2l_runtime::train::{Metrics, Progress, Silent};
pub use graphs::{Footprint, TrainStage, footprint, stage_graph};
pub use logs::EpochLog;
pub use run::{FoldResult, Training, k_fold, prepare};

/// Anything that can go wrong between a train block and a trained model.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Bad source or settings (already rendered with a caret).
    #[error("{0}")]
    Compile(#[from] d2l_dsl::Error),
    #[error("{0}")]
    Data(#[from] d2l_runtime::data::DataError),
    #[error("{0}")]
    Train(#[from] d2l_runtime::train::TrainError),
    #[error("{0}")]
    Run(#[from] d2l_runtime::RunError),
    #[error("{0}")]
    Checkpoint(#[from] d2l_runtime::checkpoint::CheckpointError),
    #[error("{0}")]
    Usage(String),
}

/// Overrides of a `train` block (the command line's flags).
#[derive(Clone, Debug)]
pub struct TrainOptions {
    /// Where datasets live (`--data DIR`); otherwise the usual search path.
    pub data_dir: Option<PathBuf>,
    pub epochs: Option<usize>,
    /// Train this many optimizer steps instead (see [`Training::steps`]).
    pub steps: Option<usize>,
    /// Replaces the optimizer's learning rate (BERT's notes use 0.001
    /// where the book uses 0.01).
    pub lr: Option<f64>,
    /// Use only the first N training (and test) examples: quick runs.
    pub limit: Option<usize>,
    pub seed: u64,
    /// What executes the graphs: the JIT unless told otherwise.
    pub device: d2l_device::Device,
    /// Replaces the train block's batch size (quick runs, step-time comparisons).
    pub batch: Option<usize>,
}

impl Default for TrainOptions {
    fn default() -> Self {
        TrainOptions { data_dir: None, epochs: None, steps: None, lr: None, limit: None, seed: 0, device: d2l_device::Device::JIT, batch: None }
    }
}

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
