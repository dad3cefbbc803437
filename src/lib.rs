//! d2l: a compiler for the Dive-into-Deep-Learning model zoo.
//!
//! This crate is the facade over the pipeline crates (`d2l-dsl` → `d2l-ir`
//! → `d2l-passes` → `d2l-kernels` → `d2l-cpu`, with `d2l-runtime` beneath
//! the backends, `d2l-device` choosing one, then `d2l-train`) and the home
//! of the `d2l` command.
//!
//! A [`Device`] says where a session runs: [`Device::JIT`] (the host's
//! cores through the Cranelift JIT, the default) or
//! [`Device::INTERPRETER`] (the reference interpreter).
//!
//! ```no_run
//! use d2l::{Device, Options, Tensor};
//! let program = d2l::compile_file("models/mlp.d2l", &Options::default())?;
//! let mut session = program.session(Device::JIT)?;
//! let batch = Tensor::zeros(d2l::DType::F32, &[4, 1, 28, 28]);
//! let outputs = session.run("mlp", &[("x", &batch)])?;
//! # Ok::<(), d2l::Error>(())
//! ```

// The README's Rust examples run as doc tests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;

/// Training from `train` blocks: data sources, step graphs, the epoch loop,
/// checkpoints, generation, benchmarks.
pub use d2l_train as train;
pub use d2l_train::{TrainOptions, Training};

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

pub use d2l_dsl::{LowerOptions, Lowered, Program};
pub use d2l_ir::{DType, Graph, Shape};
pub use d2l_device::{CpuBackend, Device};
pub use d2l_runtime::Tensor;

/// Anything that can go wrong between source text and results.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Bad source: syntax, names, shapes (already rendered with a caret).
    #[error("{0}")]
    Compile(#[from] d2l_dsl::Error),
    #[error("{0}")]
    Run(#[from] d2l_runtime::RunError),
    #[error("{0}")]
    Checkpoint(#[from] d2l_runtime::checkpoint::CheckpointError),
    #[error("{0}")]
    Train(#[from] d2l_train::Error),
    #[error("{0}")]
    Usage(String),
}

/// Compile-time settings shared by every model of a program.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// Values for symbolic dims not fixed by the inputs (`B=256`).
    pub dims: BTreeMap<String, usize>,
    /// Seed for parameter initialisation and random ops.
    pub seed: u64,
}

/// A parsed and name-checked program, ready to be instantiated.
pub struct Compiled {
    pub program: Program,
    pub options: Options,
}

/// Parses `path` (and what it `use`s) against the standard library.
pub fn compile_file(path: impl AsRef<Path>, options: &Options) -> Result<Compiled, Error> {
    Ok(Compiled { program: Program::load_file(path.as_ref())?, options: options.clone() })
}

/// Parses source text; `use` paths resolve against the current directory.
pub fn compile_str(name: &str, text: &str, options: &Options) -> Result<Compiled, Error> {
    Ok(Compiled { program: Program::load(name, text, None)?, options: options.clone() })
}

impl Compiled {
    /// A session that runs this program's models on `device`.
    pub fn session(&self, device: Device) -> Result<Session<'_>, Error> {
        Ok(Session { compiled: self, params: HashMap::new(), graphs: HashMap::new(), device, executables: HashMap::new() })
    }

    /// Prepares `model` for training as its `train` block says (data,
    /// loss, optimizer, epochs), with `opts` overriding it; run epochs with
    /// [`Training::epoch`].
    pub fn trainer(&self, model: &str, opts: &TrainOptions) -> Result<Training, Error> {
        Ok(d2l_train::prepare(&self.program, model, opts)?)
    }
}

/// A model and the shapes of the inputs it was instantiated for.
type GraphKey = (String, Vec<(String, Vec<usize>)>);

/// Parameters plus the graphs instantiated so far. A model is lowered once
/// per distinct set of input shapes and cached.
pub struct Session<'c> {
    compiled: &'c Compiled,
    params: HashMap<String, Tensor>,
    graphs: HashMap<GraphKey, Graph>,
    /// Where the graphs run; one executable per graph, compiled at its first run.
    device: Device,
    executables: HashMap<GraphKey, Box<dyn d2l_runtime::Executable>>,
}

impl Session<'_> {
    /// Loads parameters from a safetensors checkpoint; they replace any
    /// initialised values and are checked against each graph when it runs.
    pub fn load_params(&mut self, path: impl AsRef<Path>) -> Result<(), Error> {
        let (tensors, _) = d2l_runtime::checkpoint::load(path.as_ref())?;
        self.params.extend(tensors);
        Ok(())
    }

    /// Uses the parameters of a training run (e.g. after [`Training::epoch`]).
    pub fn set_params<'a>(&mut self, params: impl IntoIterator<Item = (String, &'a Tensor)>) {
        self.params.extend(params.into_iter().map(|(n, t)| (n, t.clone())));
    }

    pub fn params(&self) -> &HashMap<String, Tensor> {
        &self.params
    }

    /// Runs graphs on `device` from now on.
    pub fn set_device(&mut self, device: Device) {
        self.device = device;
        self.executables.clear();
    }

    /// Runs `model` in evaluation mode on named inputs; returns its outputs.
    pub fn run(&mut self, model: &str, inputs: &[(&str, &Tensor)]) -> Result<Vec<(String, Tensor)>, Error> {
        let shapes: Vec<(String, Vec<usize>)> = inputs.iter().map(|(n, t)| (n.to_string(), t.shape().0)).collect();
        let key = (model.to_string(), shapes.clone());
        if !self.graphs.contains_key(&key) {
            let opts = LowerOptions { dims: self.compiled.options.dims.clone(), default_dim: None, input_shapes: shapes.into_iter().collect(), training: false, memory_limit: None };
            let lowered = self.compiled.program.lower(model, &opts)?;
            self.graphs.insert(key.clone(), lowered.graph);
        }
        let graph = &self.graphs[&key];
        // Parameters not loaded yet are initialised from their declarations.
        let fresh = d2l_runtime::init_params(graph, self.compiled.options.seed);
        for (name, value) in fresh {
            self.params.entry(name).or_insert(value);
        }
        // Parameters and state (batch-norm statistics) alike.
        let mut feeds: HashMap<String, Tensor> = graph
            .params()
            .into_iter()
            .chain(graph.states())
            .filter_map(|p| match &graph.node(p).op {
                d2l_ir::Op::Param { name, .. } | d2l_ir::Op::State { name, .. } => self.params.get(name).map(|t| (name.clone(), t.clone())),
                _ => None,
            })
            .collect();
        for (name, t) in inputs {
            if graph.input_named(name).is_none() {
                let known: Vec<&str> = graph
                    .inputs()
                    .iter()
                    .filter_map(|&i| match &graph.node(i).op {
                        d2l_ir::Op::Input { name, .. } => Some(name.as_str()),
                        _ => None,
                    })
                    .collect();
                return Err(Error::Usage(format!("model `{model}` has no input `{name}` (inputs: {})", known.join(", "))));
            }
            feeds.insert(name.to_string(), (*t).clone());
        }
        let exe = match self.executables.entry(key) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => e.insert(self.device.compile(graph, self.compiled.options.seed)?),
        };
        Ok(exe.run(&feeds)?)
    }
}
