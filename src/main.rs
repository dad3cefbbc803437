//! The `d2l` command: check, summarise, inspect and run `.d2l` models.

mod image;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};
use d2l::{Compiled, Error, LowerOptions, Options, Tensor};

#[derive(Parser)]
#[command(name = "d2l", version, about = "A compiler for the Dive-into-Deep-Learning model zoo", long_about = "\
A compiler for the Dive-into-Deep-Learning model zoo.

Models are written in .d2l files (see models/ for the whole course), parsed
and checked into a static graph of primitive ops, differentiated, fused into
kernels and compiled to machine code with Cranelift. Start with:

  d2l check models/lenet.d2l        # parse and shape-check
  d2l summary models/lenet.d2l      # layer-by-layer shapes and parameter counts
  d2l train models/mlp.d2l          # train on Fashion-MNIST (about 6 s)
  d2l ir models/lenet.d2l --stage fused   # the kernels of the training step
  d2l bench models/lenet.d2l        # compile and step times, GFLOP/s
  d2l run models/lenet.d2l --params lenet.safetensors --image fashion-mnist:test:0")]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Where graphs run: `cpu` (through --backend), or `cuda` / `cuda:N`,
    /// an NVIDIA GPU (a build with `--features gpu` and a driver).
    #[arg(long, global = true, default_value = "cpu", value_parser = parse_device)]
    device: DeviceArg,
}

#[derive(Clone, Copy, Debug)]
enum DeviceArg {
    Cpu,
    Cuda(usize),
}

fn parse_device(s: &str) -> Result<DeviceArg, String> {
    match s.split_once(':') {
        None if s == "cpu" => Ok(DeviceArg::Cpu),
        None if s == "cuda" => Ok(DeviceArg::Cuda(0)),
        Some(("cuda", n)) => n.parse().map(DeviceArg::Cuda).map_err(|_| format!("`{n}` is not a device number")),
        _ => Err(format!("`{s}` is not a device: cpu, cuda or cuda:N")),
    }
}

/// The device a command runs on: the CPU through `backend`, or a GPU.
fn place(backend: BackendArg, device: DeviceArg) -> d2l::Device {
    match device {
        DeviceArg::Cpu => backend.into(),
        DeviceArg::Cuda(n) => d2l::Device::Cuda(n),
    }
}

#[derive(Subcommand)]
enum Command {
    /// Parse and shape-check every model in a file (or the one named).
    Check(ModelArgs),
    /// Print each layer's output shape and parameter count, like the course's traces.
    Summary(ModelArgs),
    /// Print the program after a pipeline stage.
    Ir {
        #[command(flatten)]
        model: ModelArgs,
        /// Which stage to print.
        #[arg(long, value_enum, default_value_t = Stage::Graph)]
        stage: Stage,
        /// Append the source location of each node (`@ file:line:col`).
        #[arg(long)]
        locs: bool,
    },
    /// Train a model as its `train` block says; writes MODEL.safetensors, a CSV/JSON log and an SVG plot.
    Train {
        #[command(flatten)]
        model: ModelArgs,
        /// Override the number of epochs.
        #[arg(long)]
        epochs: Option<usize>,
        /// Train this many optimizer steps instead of epochs (BERT's train
        /// block counts steps: 50); the log then has a row per step.
        #[arg(long, value_name = "N", conflicts_with = "epochs")]
        steps: Option<usize>,
        /// The optimizer's learning rate, instead of the train block's.
        #[arg(long, value_name = "LR")]
        lr: Option<f64>,
        /// Directory holding the datasets (default: search $D2L_DATA, ../shared/data, /usr/share/datasets, ~/.cache/d2l).
        #[arg(long, value_name = "DIR")]
        data: Option<PathBuf>,
        /// Where to write the checkpoint, log and plot.
        #[arg(long, value_name = "DIR", default_value = ".")]
        out: PathBuf,
        /// Seed for initialisation, shuffling and dropout: equal seeds give equal runs.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Continue from the checkpoint in --out (parameters, optimizer state, epoch).
        #[arg(long)]
        resume: bool,
        /// Minibatch size, instead of the train block's.
        #[arg(long, value_name = "N")]
        batch: Option<usize>,
        /// Train and test on the first N examples only (quick runs).
        #[arg(long, value_name = "N")]
        limit: Option<usize>,
        /// What executes the graphs.
        #[arg(long, value_enum, default_value_t = BackendArg::Jit)]
        backend: BackendArg,
    },
    /// Print the code generated for a model's loop kernels (of its training
    /// step when it has a `train` block, else of its forward graph).
    Emit {
        #[command(flatten)]
        model: ModelArgs,
        /// Which code: Cranelift IR for the CPU, or for NVIDIA GPUs the
        /// LLVM IR (each kernel laid out by its GPU schedule) and the PTX
        /// LLVM makes of it (needs a build with `--features gpu`).
        #[arg(long, value_enum, default_value_t = Target::Clif)]
        target: Target,
        /// GPU architecture of `--target ptx`: sm_80 (A100) or sm_90 (H100, H200).
        #[arg(long, default_value = "sm_90", value_parser = parse_arch)]
        arch: d2l_ptx::Arch,
    },
    /// Measure compile time, step time (median/min/max), samples/s and GFLOP/s
    /// of a model's training step and inference, on synthetic inputs.
    Bench {
        #[command(flatten)]
        model: ModelArgs,
        /// What executes the graphs.
        #[arg(long, value_enum, default_value_t = BackendArg::Jit)]
        backend: BackendArg,
        /// Batch size (default: the `train` block's).
        #[arg(long)]
        batch: Option<usize>,
        /// Timed steps at least (after 5 warm-up steps; also at least --seconds).
        #[arg(long, default_value_t = 20)]
        steps: usize,
        /// Timed seconds at least (the PyTorch harness uses 3).
        #[arg(long, default_value_t = 1.0)]
        seconds: f64,
        /// Peak GFLOP/s for the "% of peak" column (default: measured FMA peak of all cores).
        #[arg(long)]
        peak: Option<f64>,
        /// Also print the time of each step of the compiled program (JIT only).
        #[arg(long)]
        profile: bool,
        /// First run each graph once on the device and once on the reference
        /// interpreter and compare every output; fails when they differ (use
        /// a small --batch: the interpreter is slow).
        #[arg(long)]
        verify: bool,
        /// Also write the figures as JSON (times in seconds), e.g. for `bench/compare_pytorch.py`.
        #[arg(long, value_name = "PATH")]
        json: Option<PathBuf>,
    },
    /// Write text with a trained language model: it reads the prefix, then
    /// predicts one token at a time, greedily (the course's `predict_ch8`).
    Generate {
        #[command(flatten)]
        model: ModelArgs,
        /// The trained parameters (the MODEL.safetensors `d2l train` wrote).
        #[arg(long, value_name = "FILE")]
        params: PathBuf,
        /// The text to continue; tokens not in the vocabulary read as <unk>.
        #[arg(long, default_value = "time traveller")]
        prefix: String,
        /// How many tokens to predict.
        #[arg(long, default_value_t = 50)]
        len: usize,
        /// What executes the model.
        #[arg(long, value_enum, default_value_t = BackendArg::Jit)]
        backend: BackendArg,
    },
    /// Translate sentences with a trained encoder-decoder (greedy, or beam
    /// search with --beam), as the course's `predict_seq2seq`; with
    /// references, also print each translation's BLEU (the course's, k = 2).
    ///
    /// Example: d2l translate models/seq2seq.d2l --params seq2seq.safetensors "go ." "i lost ." --reference "va !" --reference "j'ai perdu ."
    Translate {
        #[command(flatten)]
        model: ModelArgs,
        /// The trained parameters (the MODEL.safetensors `d2l train` wrote).
        #[arg(long, value_name = "FILE")]
        params: PathBuf,
        /// Sentences in the source language, tokens separated by spaces as
        /// the data has them ("i lost ."); unknown words read as <unk>.
        #[arg(required = true, value_name = "SENTENCE")]
        sentences: Vec<String>,
        /// The reference translation of each sentence, in order (repeatable).
        #[arg(long = "reference", value_name = "TEXT")]
        references: Vec<String>,
        /// Beam size: keep the k best candidates at every step (1: greedy).
        #[arg(long, default_value_t = 1)]
        beam: usize,
        /// Draw the attention weights behind each translation as heatmaps
        /// (§66's and §68's figures): every tensor the model passes to
        /// `observe` (the standard attention blocks observe their weights),
        /// a row per attention layer, a panel per head, queries down, keys
        /// across. Several sentences write FILE-1.svg, FILE-2.svg, ...
        #[arg(long, value_name = "FILE.svg")]
        attention: Option<PathBuf>,
        /// What executes the model.
        #[arg(long, value_enum, default_value_t = BackendArg::Jit)]
        backend: BackendArg,
    },
    /// Contextual encodings of a trained BERT (the course's
    /// `get_bert_encoding`, §69): the sentence, or the pair, read as `<cls>`
    /// A `<sep>` [B `<sep>`]; prints the encoding's shape and the first
    /// values of each token's vector. Without sentences, the course's
    /// examples: "a crane is flying" and the pair "a crane driver came" /
    /// "he just left", and the cosine similarity of their two "crane"s.
    ///
    /// Example: d2l bert-encode models/bert.d2l --params bert.safetensors "a crane is flying"
    BertEncode {
        #[command(flatten)]
        model: ModelArgs,
        /// The trained parameters (the MODEL.safetensors `d2l train` wrote).
        #[arg(long, value_name = "FILE")]
        params: PathBuf,
        /// Sentence A, then optionally sentence B; words separated by spaces.
        #[arg(value_name = "SENTENCE", num_args = 0..=2)]
        sentences: Vec<String>,
        /// Directory holding the datasets (the vocabulary is WikiText-2's, rebuilt from it).
        #[arg(long, value_name = "DIR")]
        data: Option<PathBuf>,
        /// The seed the model was trained with (default: the one the
        /// checkpoint records): it shuffles the paragraphs, and so orders
        /// the words of equal frequency in the vocabulary.
        #[arg(long)]
        seed: Option<u64>,
        /// What executes the model.
        #[arg(long, value_enum, default_value_t = BackendArg::Jit)]
        backend: BackendArg,
    },
    /// Download a dataset from its public URL into ~/.cache/d2l, checking its SHA-256.
    Fetch {
        /// fashion-mnist, mnist, time-machine, ... (see `d2l fetch --list`)
        name: Option<String>,
        /// List the datasets d2l knows.
        #[arg(long)]
        list: bool,
    },
    /// Run a model on inputs from .npy files and print (or save) its outputs, or classify an image.
    Run {
        #[command(flatten)]
        model: ModelArgs,
        /// Input as NAME=FILE.npy, or just FILE.npy for a model with one input.
        #[arg(long = "input", value_name = "[NAME=]FILE", required_unless_present = "image")]
        inputs: Vec<String>,
        /// Classify a picture instead: a PNG/JPEG file, or a dataset example such
        /// as fashion-mnist:test:123; prints the most likely classes.
        #[arg(long, value_name = "FILE|DATASET:SPLIT:INDEX", conflicts_with_all = ["inputs", "output"])]
        image: Option<String>,
        /// How many classes --image prints.
        #[arg(long, default_value_t = 3, requires = "image")]
        top: usize,
        /// Parameters from a safetensors checkpoint (default: freshly initialised with --seed).
        #[arg(long, value_name = "FILE")]
        params: Option<PathBuf>,
        /// Also write the first output to this .npy file.
        #[arg(long, value_name = "FILE")]
        output: Option<PathBuf>,
        /// Seed for parameter initialisation and random ops.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// What executes the model (--input only).
        #[arg(long, value_enum, default_value_t = BackendArg::Interp)]
        backend: BackendArg,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum BackendArg {
    /// The reference interpreter.
    Interp,
    /// Fused kernels compiled with Cranelift.
    Jit,
    /// The GPU code (every step a loop kernel) executed as a GPU would run
    /// it, one thread at a time on the CPU (slow: for testing GPU code).
    Grid,
}

impl From<BackendArg> for d2l::Device {
    fn from(b: BackendArg) -> Self {
        match b {
            BackendArg::Interp => d2l::Device::INTERPRETER,
            BackendArg::Jit => d2l::Device::JIT,
            BackendArg::Grid => d2l::Device::GRID,
        }
    }
}

#[derive(Clone, Copy, ValueEnum)]
enum Target {
    /// Cranelift IR of every loop kernel, with the kernel's loop-level form as comments.
    Clif,
    /// LLVM IR for NVPTX of every loop kernel, with its GPU schedule and loop-level form as comments.
    Llvm,
    /// PTX of every loop kernel, for --arch.
    Ptx,
}

fn parse_arch(s: &str) -> Result<d2l_ptx::Arch, String> {
    d2l_ptx::Arch::parse(s).ok_or_else(|| format!("`{s}` is not a supported architecture (sm_80, sm_90)"))
}

#[derive(Clone, Copy, ValueEnum)]
enum Stage {
    /// The syntax tree of the file, as parsed.
    Parsed,
    /// The graph of primitive ops after expansion and shape checking.
    Graph,
    /// Forward, loss (from the train block) and the gradient of every parameter, simplified.
    Grad,
    /// The whole training step: gradients plus the optimizer update, simplified.
    Opt,
    /// The kernels fusion makes of the training step (of the forward graph
    /// for a model without a `train` block): what each loop computes and stores.
    Fused,
}

#[derive(Args)]
struct ModelArgs {
    /// The .d2l source file.
    file: PathBuf,
    /// Which model of the file (default: the only one, or the one a `train` block names).
    #[arg(long, short)]
    model: Option<String>,
    /// Bind a symbolic dimension, e.g. --dim B=256 (repeatable; unbound dims are 1).
    #[arg(long = "dim", value_name = "NAME=N", value_parser = parse_dim)]
    dims: Vec<(String, usize)>,
}

fn parse_dim(s: &str) -> Result<(String, usize), String> {
    let (name, value) = s.split_once('=').ok_or_else(|| format!("expected NAME=N, got `{s}`"))?;
    let n = value.trim().parse::<usize>().map_err(|_| format!("`{value}` is not a non-negative integer"))?;
    Ok((name.trim().to_string(), n))
}

fn main() -> ExitCode {
    // `d2l ir ... | head` closes the pipe early: end quietly, as Unix
    // tools do, instead of panicking in the next print.
    #[cfg(unix)]
    // SAFETY: restores the default action of one signal before any thread starts.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let text = e.to_string();
            if text.starts_with("error") {
                eprint!("{text}");
            } else {
                eprintln!("error: {text}");
            }
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<(), Error> {
    let device = cli.device;
    match cli.command {
        Command::Check(args) => check(&args),
        Command::Summary(args) => summary(&args),
        Command::Ir { model, stage, locs } => ir(&model, stage, locs),
        Command::Train { model, epochs, steps, lr, data, out, seed, resume, batch, limit, backend } => {
            let opts = d2l::TrainOptions { data_dir: data, epochs, steps, lr, limit, seed, device: place(backend, device), batch };
            train(&model, &opts, &out, resume)
        }
        Command::Emit { model, target, arch } => emit(&model, target, arch),
        Command::BertEncode { model, params, sentences, data, seed, backend } => bert_encode(&model, &params, &sentences, data, seed, place(backend, device)),
        Command::Bench { model, backend, batch, steps, seconds, peak, profile, verify, json } => {
            let compiled = load(&model, 0)?;
            let name = pick_model(&compiled, &model)?;
            let opts = d2l::train::bench::BenchOptions { device: place(backend, device), batch, min_steps: steps, min_seconds: seconds, profile, verify, ..Default::default() };
            let report = d2l::train::bench::bench(&compiled.program, &name, &opts)?;
            let peak = peak.unwrap_or_else(d2l::train::bench::measured_peak_gflops);
            print!("{}", d2l::train::bench::render(&report, peak));
            let failed = [report.train.as_ref(), Some(&report.infer)].into_iter().flatten().any(|m| m.verified.as_ref().is_some_and(|v| !v.passes()));
            if let Some(path) = json {
                let text = serde_json::to_string_pretty(&report).map_err(|e| Error::Usage(format!("cannot encode the figures as JSON: {e}")))?;
                std::fs::write(&path, text + "\n").map_err(|e| Error::Usage(format!("cannot write {}: {e}", path.display())))?;
            }
            if failed {
                return Err(Error::Usage("the device's outputs differ from the reference interpreter's (see above)".into()));
            }
            Ok(())
        }
        Command::Translate { model, params, sentences, references, beam, attention, backend } => translate(&model, &params, &sentences, &references, beam, attention.as_deref(), place(backend, device)),
        Command::Fetch { name, list } => fetch(name.as_deref(), list),
        Command::Generate { model, params, prefix, len, backend } => generate(&model, &params, &prefix, len, place(backend, device)),
        Command::Run { model, image: Some(spec), params, seed, top, .. } => {
            let compiled = load(&model, seed)?;
            let name = pick_model(&compiled, &model)?;
            print!("{}", image::classify(&compiled, &name, &spec, params.as_deref(), top, place(BackendArg::Jit, device))?);
            Ok(())
        }
        Command::Run { model, inputs, params, output, seed, backend, .. } => run_model(&model, &inputs, params.as_deref(), output.as_deref(), seed, place(backend, device)),
    }
}

fn load(args: &ModelArgs, seed: u64) -> Result<Compiled, Error> {
    let options = Options { dims: args.dims.iter().cloned().collect(), seed };
    d2l::compile_file(&args.file, &options)
}

fn pick_model(compiled: &Compiled, args: &ModelArgs) -> Result<String, Error> {
    match &args.model {
        Some(m) => Ok(m.clone()),
        None => compiled.program.default_model().map(str::to_string).ok_or_else(|| Error::Usage(format!("{} defines no model", args.file.display()))),
    }
}

/// Check and summary bind every unbound dim to 1, as the course's traces do.
fn trace_options(args: &ModelArgs) -> LowerOptions {
    LowerOptions { dims: args.dims.iter().cloned().collect::<BTreeMap<_, _>>(), default_dim: Some(1), ..LowerOptions::default() }
}

fn check(args: &ModelArgs) -> Result<(), Error> {
    let compiled = load(args, 0)?;
    let models: Vec<String> = match &args.model {
        Some(m) => vec![m.clone()],
        None => compiled.program.model_names().to_vec(),
    };
    if models.is_empty() {
        println!("{}: ok (no models)", args.file.display());
    }
    for name in models {
        let lowered = compiled.program.lower(&name, &trace_options(args))?;
        let g = &lowered.graph;
        let sig = |ids: Vec<d2l_ir::NodeId>| ids.iter().map(|&i| format!("{}{}", g.dtype(i), g.shape(i))).collect::<Vec<_>>().join(", ");
        let outs = sig(g.outputs().iter().map(|o| o.node).collect());
        println!("{}: model {name}({}) -> {outs}: ok, {} parameters, {} nodes", args.file.display(), sig(g.inputs()), group_digits(lowered.param_count()), g.len());
        println!("  {}", footprint_text(&d2l::train::footprint(&compiled.program, &name, &args.dims.iter().cloned().collect())?));
    }
    Ok(())
}

/// `parameters 246,824 bytes (246.8 KB); training step at batch 256: 12,345,678 bytes (12.3 MB) of buffers`
fn footprint_text(f: &d2l::train::Footprint) -> String {
    let step = if f.training { "training step" } else { "forward pass" };
    format!("parameters {}; {step} at batch {}: {} of buffers", d2l_dsl::bytes_text(f.param_bytes), f.batch, d2l_dsl::bytes_text(f.arena_bytes))
}

fn summary(args: &ModelArgs) -> Result<(), Error> {
    let compiled = load(args, 0)?;
    let model = pick_model(&compiled, args)?;
    let lowered = compiled.program.lower(&model, &trace_options(args))?;
    print!("{}", summary_text(&model, &lowered));
    println!("memory: {}", footprint_text(&d2l::train::footprint(&compiled.program, &model, &args.dims.iter().cloned().collect())?));
    Ok(())
}

/// The course-style trace: one row per layer the model body calls.
fn summary_text(model: &str, lowered: &d2l::Lowered) -> String {
    let g = &lowered.graph;
    let dims: Vec<String> = lowered.dims.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let mut out = format!("model {model}");
    if !dims.is_empty() {
        out.push_str(&format!(" ({})", dims.join(", ")));
    }
    out.push('\n');
    let rows: Vec<(String, String, String)> = g
        .inputs()
        .iter()
        .map(|&i| (format!("input {}", input_name(g, i)), format!("{}{}", g.dtype(i), g.shape(i)), String::new()))
        .chain(lowered.layers.iter().map(|l| (l.name.clone(), format!("{}{}", l.dtype, l.shape), group_digits(l.params))))
        .collect();
    let w0 = rows.iter().map(|r| r.0.len()).max().unwrap_or(0).max(5);
    let w1 = rows.iter().map(|r| r.1.len()).max().unwrap_or(0).max(12);
    out.push_str(&format!("  {:<w0$}  {:<w1$}  {:>11}\n", "layer", "output shape", "params"));
    for (a, b, c) in rows {
        out.push_str(&format!("  {a:<w0$}  {b:<w1$}  {c:>11}\n"));
    }
    let in_layers: usize = lowered.layers.iter().map(|l| l.params).sum();
    let total = lowered.param_count();
    if total != in_layers {
        out.push_str(&format!("  ({} parameters declared directly in the model body)\n", group_digits(total - in_layers)));
    }
    out.push_str(&format!("total parameters: {}\n", group_digits(total)));
    out
}

fn input_name(g: &d2l_ir::Graph, id: d2l_ir::NodeId) -> &str {
    match &g.node(id).op {
        d2l_ir::Op::Input { name, .. } => name,
        _ => "?",
    }
}

fn group_digits(n: usize) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn ir(args: &ModelArgs, stage: Stage, locs: bool) -> Result<(), Error> {
    match stage {
        Stage::Parsed => {
            let text = std::fs::read_to_string(&args.file).map_err(|e| Error::Usage(format!("cannot read {}: {e}", args.file.display())))?;
            let mut sources = d2l_dsl::SourceMap::new();
            let file = sources.add(args.file.display().to_string(), text.clone());
            match d2l_dsl::parse(file, &text) {
                Ok(module) => print!("{}", d2l_dsl::print::module(&module)),
                Err(d) => return Err(Error::Usage(d.render(&sources))),
            }
        }
        Stage::Graph => {
            let compiled = load(args, 0)?;
            let model = pick_model(&compiled, args)?;
            let lowered = compiled.program.lower(&model, &trace_options(args))?;
            print!("{}", d2l_ir::text::print(&lowered.graph, locs));
        }
        Stage::Grad | Stage::Opt => {
            let compiled = load(args, 0)?;
            let model = pick_model(&compiled, args)?;
            let which = if matches!(stage, Stage::Grad) { d2l::train::TrainStage::Grad } else { d2l::train::TrainStage::Opt };
            let dims = args.dims.iter().cloned().collect();
            let graph = d2l::train::stage_graph(&compiled.program, &model, which, 1, &dims)?;
            print!("{}", d2l_ir::text::print(&graph, locs));
        }
        Stage::Fused => {
            let graph = step_or_forward(args)?;
            print!("{}", d2l_passes::fusion::text(&graph, &d2l_passes::fusion::fuse(&graph)));
        }
    }
    Ok(())
}

/// The graph the JIT compiles for a model: its training step when it has a
/// `train` block, else its forward graph (unbound dims are 1, or --dim).
fn step_or_forward(args: &ModelArgs) -> Result<d2l::Graph, Error> {
    let compiled = load(args, 0)?;
    let model = pick_model(&compiled, args)?;
    if compiled.program.train_config(&model).is_ok() {
        let dims = args.dims.iter().cloned().collect();
        Ok(d2l::train::stage_graph(&compiled.program, &model, d2l::train::TrainStage::Opt, 1, &dims)?)
    } else {
        Ok(d2l_passes::simplify(&compiled.program.lower(&model, &trace_options(args))?.graph))
    }
}

fn emit(args: &ModelArgs, target: Target, arch: d2l_ptx::Arch) -> Result<(), Error> {
    let graph = step_or_forward(args)?;
    let usage = |e: &dyn std::fmt::Display| Error::Usage(e.to_string());
    match target {
        Target::Clif => print!("{}", d2l_cpu::clif_listing(&graph).map_err(|e| usage(&e))?),
        Target::Llvm => print!("{}", d2l_ptx::llvm_listing(&graph).map_err(|e| usage(&e))?),
        Target::Ptx => print!("{}", d2l_ptx::ptx_listing(&graph, arch).map_err(|e| usage(&e))?),
    }
    Ok(())
}

fn fetch(name: Option<&str>, list: bool) -> Result<(), Error> {
    use d2l_runtime::data::locate::KNOWN_DATASETS;
    match (name, list) {
        (Some(name), false) => {
            let dir = d2l_runtime::data::fetch(name, None).map_err(|e| Error::Usage(e.to_string()))?;
            println!("{name}: {}", dir.display());
            Ok(())
        }
        _ => {
            for d in KNOWN_DATASETS {
                println!("{:<16} {} file(s)", d.name, d.files.len());
            }
            Ok(())
        }
    }
}

/// Draws a progress bar per epoch with the running loss and throughput.
struct Bar(indicatif::ProgressBar);

impl d2l_runtime::train::Progress for Bar {
    fn batch(&mut self, done: usize, total: usize, running_loss: f64) {
        self.0.set_length(total as u64);
        self.0.set_position(done as u64);
        self.0.set_message(format!("loss {running_loss:.4}"));
    }
}

/// The course's prefixes for its language models' sample text.
const PREFIXES: [&str; 2] = ["time traveller", "traveller"];

/// The course's test sentences for its translation models, with their
/// references (§62, §66, §68).
const TRANSLATIONS: [(&str, &str); 4] = [("go .", "va !"), ("i lost .", "j'ai perdu ."), ("he's calm .", "il est calme ."), ("i'm home .", "je suis chez moi .")];

/// Prints `sentence => translation`, with its BLEU when there is a
/// reference; returns each translation's tokens.
fn print_translations(translator: &mut d2l::train::translate::Translator, pairs: &[(&str, Option<&str>)], beam: usize) -> Result<Vec<Vec<usize>>, Error> {
    let mut chosen = Vec::new();
    for &(sentence, reference) in pairs {
        let tokens = translator.beam_tokens(sentence, beam)?;
        let translation = translator.words(&tokens);
        match reference {
            Some(r) => println!("{sentence} => {translation}, bleu {:.3}", d2l::train::bleu::bleu(&translation, r, 2)),
            None => println!("{sentence} => {translation}"),
        }
        chosen.push(tokens);
    }
    Ok(chosen)
}

fn train(args: &ModelArgs, opts: &d2l::TrainOptions, out: &Path, resume: bool) -> Result<(), Error> {
    let compiled = load(args, opts.seed)?;
    let model = pick_model(&compiled, args)?;
    let mut run = compiled.trainer(&model, opts)?;
    std::fs::create_dir_all(out).map_err(|e| Error::Usage(format!("cannot create {}: {e}", out.display())))?;
    let mut log = Vec::new();
    if resume {
        log = run.resume(out)?;
        match run.steps {
            Some(_) => eprintln!("resumed {} at step {}", run.files(out).checkpoint.display(), run.trainer.steps),
            None => eprintln!("resumed {} at epoch {}", run.files(out).checkpoint.display(), run.trainer.epoch),
        }
    }
    let held_out = run.source.test_len().map_or(String::new(), |n| format!(" / {n} test"));
    let unit = if run.source.vocab().is_some() { "tokens" } else { "examples" };
    eprintln!(
        "training {model}: {} parameters, data {}, {} train{held_out} {unit}, batch {}, {} (graphs built in {:.0} ms)",
        group_digits(run.param_count),
        run.source.describe(),
        run.source.train_len(),
        run.source.schema().batch,
        match run.steps {
            Some(n) => format!("{n} steps"),
            None => format!("{} epochs", run.epochs),
        },
        run.build_ms,
    );
    if run.source.folds().is_some() {
        return train_k_fold(&compiled.program, &run, opts);
    }
    if run.steps.is_some() {
        return train_steps(&compiled.program, &model, &mut run, log, out, opts.device);
    }
    let style = indicatif::ProgressStyle::with_template("epoch {prefix:>3} [{bar:30}] {pos}/{len} {msg} ({per_sec}, eta {eta})")
        .expect("valid template")
        .progress_chars("=> ");
    let mut saved = false;
    while run.trainer.epoch < run.epochs {
        let bar = indicatif::ProgressBar::new(0).with_style(style.clone()).with_prefix((run.trainer.epoch + 1).to_string());
        let mut progress = Bar(bar);
        let entry = run.epoch(&mut progress)?;
        progress.0.finish_and_clear();
        eprintln!("epoch {:>3}: {}", entry.epoch, epoch_line(&entry));
        log.push(entry);
        run.save(out, &log)?;
        saved = true;
    }
    // No epoch left to run (`--epochs 0`: the initial parameters; a resumed
    // run that had finished): still write what the last line says it wrote.
    let files = if saved { run.files(out) } else { run.save(out, &log)? };
    if let Some(last) = log.last() {
        println!("{}", epoch_line(last));
    }
    let params = run.trainer.params();
    if let Some(norm) = d2l::train::run::weight_norm(&params) {
        println!("weights L2 norm {norm:.4}");
    }
    // Small models (linear regression) show what they learned.
    if run.param_count <= 16 {
        for (name, t) in &params {
            let values: Vec<String> = t.to_f64_vec().iter().map(|v| format!("{v:.4}")).collect();
            println!("{name} = [{}]", values.join(", "));
        }
    }
    // What a trained model shows below (text, translations, predictions)
    // runs on a copy of its parameters, made only for that.
    let trained = || -> std::collections::BTreeMap<String, Tensor> { params.iter().map(|(n, t)| (n.clone(), (*t).clone())).collect() };
    // Language models show what they write, as the course does.
    if let Some((vocab, kind)) = run.source.vocab() {
        let mut generator = d2l::train::generate::Generator::new(&compiled.program, &model, &trained(), vocab.clone(), kind, opts.device)?;
        for prefix in PREFIXES {
            println!("{prefix:?} -> {:?}", generator.generate(prefix, 50)?);
        }
    }
    // A translation model translates the course's test sentences.
    if let Some(pairs) = run.source.pairs() {
        let mut translator = d2l::train::translate::Translator::new(&compiled.program, &model, &trained(), pairs.clone(), opts.device)?;
        let tests: Vec<(&str, Option<&str>)> = TRANSLATIONS.iter().map(|&(s, r)| (s, Some(r))).collect();
        for beam in [1, 3] {
            println!("{}:", if beam == 1 { "greedy".to_string() } else { format!("beam search, k = {beam}") });
            print_translations(&mut translator, &tests, beam)?;
        }
    }
    // A time series: the course's one-step and k-step predictions.
    if let Some((series, tau)) = run.source.series() {
        let predictions = d2l::train::series::predict(&compiled.program, &model, &trained(), series, tau, run.source.train_len() + tau, opts.device)?;
        let base = out.join(format!("{model}-predictions"));
        let (csv, svg) = (base.with_extension("csv"), base.with_extension("svg"));
        d2l::train::series::write(&predictions, series, &csv, &svg).map_err(|e| Error::Usage(format!("cannot write the predictions: {e}")))?;
        let errors: Vec<String> = predictions.mse.iter().map(|(what, e)| format!("{what} {e:.4}")).collect();
        println!("prediction MSE: {}", errors.join(", "));
        println!("wrote {}, {}", csv.display(), svg.display());
    }
    // §64: predictions at the test inputs and the attention weights.
    if let Some(data) = run.source.kernel_regression() {
        let predictions = d2l::train::kernel_regression::predict(&compiled.program, &model, &trained(), data, opts.device)?;
        let base = out.join(format!("{model}-predictions"));
        let (csv, svg, heat) = (base.with_extension("csv"), base.with_extension("svg"), out.join(format!("{model}-attention.svg")));
        d2l::train::kernel_regression::write(&predictions, data, &csv, &svg, &heat).map_err(|e| Error::Usage(format!("cannot write the predictions: {e}")))?;
        println!("test MSE against 2 sin x + x^0.8: {:.4}", predictions.mse);
        let heat = if predictions.weights.is_some() { format!(", {}", heat.display()) } else { String::new() };
        println!("wrote {}, {}{heat}", csv.display(), svg.display());
    }
    println!("wrote {}, {}, {}, {}", files.checkpoint.display(), files.csv.display(), files.json.display(), files.plot.display());
    Ok(())
}

/// A run counted in optimizer steps (the course's `train_bert`): a line per
/// step; a BERT then encodes the course's sentences; last, the means over
/// the steps, as `train_bert` prints them.
fn train_steps(program: &d2l::Program, model: &str, run: &mut d2l::Training, mut log: Vec<d2l::train::EpochLog>, out: &Path, device: d2l::Device) -> Result<(), Error> {
    let style = indicatif::ProgressStyle::with_template("step {pos:>4}/{len} [{bar:30}] {msg} (eta {eta})").expect("valid template").progress_chars("=> ");
    let bar = indicatif::ProgressBar::new(0).with_style(style);
    let printer = bar.clone();
    let mut progress = Bar(bar);
    let done = run.trainer.steps;
    let rows = run.train_steps(&mut progress, &mut |row| printer.suspend(|| eprintln!("step {:>4}: {}", row.epoch, step_line(&row.train))));
    progress.0.finish_and_clear();
    let rows = rows?;
    log.extend(rows);
    let files = run.save(out, &log)?;
    println!("wrote {}, {}, {}, {}", files.checkpoint.display(), files.csv.display(), files.json.display(), files.plot.display());
    if let Some((vocab, max_len)) = run.source.bert_vocab() {
        let params = run.trainer.params().into_iter().map(|(n, t)| (n, t.clone())).collect();
        let encoder = d2l::train::bert::Encoder { program, model, params: &params, vocab, max_len, device };
        print_encodings(&encoder, &[])?;
    }
    let taken = &log[log.len().min(done as usize)..];
    if !taken.is_empty() {
        let examples: usize = taken.iter().map(|r| r.train.examples).sum();
        let seconds: f64 = taken.iter().map(|r| r.train.seconds).sum();
        let mean = |f: &dyn Fn(&d2l_runtime::train::Metrics) -> Option<f64>| -> f64 { taken.iter().filter_map(|r| f(&r.train).map(|v| v * r.train.examples as f64)).sum::<f64>() / examples.max(1) as f64 };
        let mut line = format!("mean over steps {}-{}: loss {:.3}", taken[0].epoch, taken[taken.len() - 1].epoch, mean(&|m| Some(m.loss)));
        for (name, _) in &taken[0].train.figures {
            line.push_str(&format!(", {name} {:.3}", mean(&|m| m.figures.iter().find(|(n, _)| n == name).map(|(_, v)| *v))));
        }
        line.push_str(&format!(", {:.1} examples/sec", examples as f64 / seconds.max(1e-9)));
        println!("{line}");
    }
    Ok(())
}

/// One step's figures: `loss 6.612, mlm 5.900, mlm_weighted 7.580, nsp 0.712, 812.3 examples/sec`.
fn step_line(m: &d2l_runtime::train::Metrics) -> String {
    let mut line = format!("loss {:.3}", m.loss);
    for (name, v) in &m.figures {
        line.push_str(&format!(", {name} {v:.3}"));
    }
    line.push_str(&format!(", {:.1} examples/sec", m.examples_per_sec()));
    line
}

/// K-fold validation: one fresh model per fold, as the course's `k_fold`.
fn train_k_fold(program: &d2l::Program, run: &d2l::Training, opts: &d2l::TrainOptions) -> Result<(), Error> {
    let k = run.source.folds().unwrap_or(0);
    eprintln!("{k}-fold cross-validation, {} epochs per fold", run.epochs);
    let results = d2l::train::k_fold(program, run, opts, &mut |r| {
        eprintln!("fold {}: train loss {:.4}, {}, valid {}", r.fold, r.train.loss, metric_text(&r.train), metric_text(&r.valid));
    })?;
    let mean = |f: &dyn Fn(&d2l::train::FoldResult) -> Option<f64>| -> Option<f64> {
        let v: Vec<f64> = results.iter().filter_map(f).collect();
        (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
    };
    let mut line = format!("{k}-fold average:");
    if let Some(t) = mean(&|r| r.train.log_rmse) {
        line.push_str(&format!(" train log rmse {t:.4}, valid log rmse {:.4}", mean(&|r| r.valid.log_rmse).unwrap_or(f64::NAN)));
    }
    line.push_str(&format!(" train loss {:.4}, valid loss {:.4}", mean(&|r| Some(r.train.loss)).unwrap_or(f64::NAN), mean(&|r| Some(r.valid.loss)).unwrap_or(f64::NAN)));
    println!("{line}");
    Ok(())
}

fn metric_text(m: &d2l_runtime::train::Metrics) -> String {
    match (m.log_rmse, m.accuracy) {
        (Some(l), _) => format!("log rmse {l:.4}"),
        (None, Some(a)) => format!("acc {a:.4}"),
        (None, None) => format!("loss {:.4}", m.loss),
    }
}

/// The course's summary line: `loss 0.469, train acc 0.823, test acc 0.779,
/// 5500.2 examples/sec`, for a language model `perplexity 1.0, 81234.5
/// tokens/sec`, and for a translation model `loss 0.019, 12745.1 tokens/sec`.
fn epoch_line(e: &d2l::train::EpochLog) -> String {
    if let Some(p) = e.train.perplexity {
        return format!("perplexity {p:.3}, loss {:.4}, {:.1} tokens/sec", e.train.loss, e.train.tokens_per_sec());
    }
    if e.train.loss_per_token {
        return format!("loss {:.3}, {:.1} tokens/sec", e.train.loss, e.train.tokens_per_sec());
    }
    let loss = e.train.loss;
    let mut line = if loss.abs() < 0.01 { format!("loss {loss:.3e}") } else { format!("loss {loss:.3}") };
    if let Some(a) = e.train.accuracy {
        line.push_str(&format!(", train acc {a:.3}"));
    }
    match &e.test {
        Some(t) if t.accuracy.is_some() => line.push_str(&format!(", test acc {:.3}", t.accuracy.unwrap_or_default())),
        Some(t) => line.push_str(&format!(", test loss {:.3}", t.loss)),
        None => {}
    }
    line.push_str(&format!(", {:.1} examples/sec", e.train.examples_per_sec()));
    line
}

/// `d2l generate`: text from a trained language model.
fn generate(args: &ModelArgs, params: &Path, prefix: &str, len: usize, device: d2l::Device) -> Result<(), Error> {
    let compiled = load(args, 0)?;
    let model = pick_model(&compiled, args)?;
    let config = compiled.program.train_config(&model)?;
    let source = d2l::train::sources::open(&compiled.program, &config.data, &d2l::TrainOptions::default())?;
    let Some((vocab, kind)) = source.vocab() else {
        return Err(Error::Usage(format!("model `{model}` trains on {}, which has no vocabulary to generate text with", source.describe())));
    };
    let (tensors, _) = d2l_runtime::checkpoint::load(params)?;
    let mut generator = d2l::train::generate::Generator::new(&compiled.program, &model, &tensors, vocab.clone(), kind, device)?;
    println!("{}", generator.generate(prefix, len)?);
    Ok(())
}

/// `d2l translate`: sentences through a trained encoder-decoder.
fn translate(args: &ModelArgs, params: &Path, sentences: &[String], references: &[String], beam: usize, attention: Option<&Path>, device: d2l::Device) -> Result<(), Error> {
    if !references.is_empty() && references.len() != sentences.len() {
        return Err(Error::Usage(format!("{} sentences but {} references: give one --reference per sentence, or none", sentences.len(), references.len())));
    }
    let compiled = load(args, 0)?;
    let model = pick_model(&compiled, args)?;
    let config = compiled.program.train_config(&model)?;
    let source = d2l::train::sources::open(&compiled.program, &config.data, &d2l::TrainOptions::default())?;
    let Some(pairs) = source.pairs() else {
        return Err(Error::Usage(format!("model `{model}` trains on {}, which has no sentence pairs to translate with", source.describe())));
    };
    let (tensors, _) = d2l_runtime::checkpoint::load(params)?;
    let mut translator = d2l::train::translate::Translator::new(&compiled.program, &model, &tensors, pairs.clone(), device)?;
    let pairs: Vec<(&str, Option<&str>)> = sentences.iter().enumerate().map(|(i, s)| (s.as_str(), references.get(i).map(String::as_str))).collect();
    let chosen = print_translations(&mut translator, &pairs, beam)?;
    let Some(path) = attention else { return Ok(()) };
    for (i, (sentence, tokens)) in sentences.iter().zip(&chosen).enumerate() {
        let file = match sentences.len() {
            1 => path.to_path_buf(),
            _ => path.with_file_name(format!("{}-{}.svg", path.file_stem().unwrap_or_default().to_string_lossy(), i + 1)),
        };
        draw_attention(&mut translator, sentence, tokens, &file)?;
        println!("wrote {}", file.display());
    }
    Ok(())
}

/// `d2l bert-encode`: a trained BERT's encodings of sentences.
fn bert_encode(args: &ModelArgs, params: &Path, sentences: &[String], data: Option<PathBuf>, seed: Option<u64>, device: d2l::Device) -> Result<(), Error> {
    let (tensors, metadata) = d2l_runtime::checkpoint::load(params)?;
    // The vocabulary is rebuilt as training built it, from the same seed.
    let seed = seed.or_else(|| metadata.get("seed").and_then(|s| s.parse().ok())).unwrap_or(0);
    let opts = d2l::TrainOptions { data_dir: data, seed, ..d2l::TrainOptions::default() };
    let compiled = load(args, seed)?;
    let model = pick_model(&compiled, args)?;
    let config = compiled.program.train_config(&model)?;
    let source = d2l::train::sources::open(&compiled.program, &config.data, &opts)?;
    let Some((vocab, max_len)) = source.bert_vocab() else {
        return Err(Error::Usage(format!("model `{model}` trains on {}, which has no BERT vocabulary", source.describe())));
    };
    let encoder = d2l::train::bert::Encoder { program: &compiled.program, model: &model, params: &tensors, vocab, max_len, device };
    print_encodings(&encoder, sentences)
}

/// The encodings of one sentence or a pair, or of the course's examples
/// (with the cosine similarity of their two "crane"s) when none is given.
fn print_encodings(encoder: &d2l::train::bert::Encoder, sentences: &[String]) -> Result<(), Error> {
    let vocab = encoder.vocab;
    let encode = |a: &str, b: Option<&str>| encoder.encode(a, b);
    let show = |e: &d2l::train::bert::Encoding, what: &str| {
        println!("{what}: {} tokens -> encoding {:?}", e.tokens.len(), e.values.dims());
        for (i, token) in e.tokens.iter().enumerate() {
            let v: Vec<String> = e.vector(i).iter().take(3).map(|x| format!("{x:.4}")).collect();
            let unknown = if vocab.index(token) == vocab.unk() && token != "<unk>" { " (unknown: <unk>)" } else { "" };
            println!("  {token:<12} [{}, ...]{unknown}", v.join(", "));
        }
    };
    match sentences {
        [a] => show(&encode(a, None)?, &format!("{a:?}")),
        [a, b] => show(&encode(a, Some(b))?, &format!("{a:?} / {b:?}")),
        _ => {
            // The course's examples: "crane" is token 2 of both.
            let single = encode("a crane is flying", None)?;
            let pair = encode("a crane driver came", Some("he just left"))?;
            show(&single, "\"a crane is flying\"");
            show(&pair, "\"a crane driver came\" / \"he just left\"");
            let similarity = d2l::train::bert::cosine(&single.vector(2), &pair.vector(2));
            println!("cosine similarity of the two \"crane\" encodings: {similarity:.4}");
        }
    }
    Ok(())
}

/// The attention maps behind one translation (`tokens`, as decoding chose
/// them) as an SVG of heatmaps.
fn draw_attention(translator: &mut d2l::train::translate::Translator, sentence: &str, tokens: &[usize], file: &Path) -> Result<(), Error> {
    use d2l::train::heatmap::{Heatmap, svg_heatmaps};
    let maps = translator.attention(sentence, tokens)?;
    let (src, dec) = translator.positions(sentence, tokens);
    let grid: Vec<(String, Vec<Heatmap>)> = maps
        .iter()
        .map(|m| {
            let panels = (0..m.heads)
                .map(|h| Heatmap { title: if m.heads > 1 { format!("head {}", h + 1) } else { String::new() }, rows: m.queries, cols: m.keys, values: m.weights[h].clone() })
                .collect();
            (m.name.clone(), panels)
        })
        .collect();
    let notes = vec![
        format!("{sentence} => {}", translator.words(tokens)),
        format!("source positions: {}", src.join(" ")),
        format!("decoder positions: {}", dec.join(" ")),
    ];
    let svg = svg_heatmaps(&grid, ("queries", "keys"), &notes);
    d2l_runtime::files::write_atomic(file, svg.as_bytes()).map_err(|e| Error::Usage(format!("cannot write {}: {e}", file.display())))
}

fn run_model(args: &ModelArgs, inputs: &[String], params: Option<&Path>, output: Option<&Path>, seed: u64, device: d2l::Device) -> Result<(), Error> {
    let compiled = load(args, seed)?;
    let model = pick_model(&compiled, args)?;
    let mut feeds: Vec<(String, Tensor)> = Vec::new();
    for spec in inputs {
        let (name, path) = match spec.split_once('=') {
            Some((n, p)) => (n.to_string(), PathBuf::from(p)),
            None => (String::new(), PathBuf::from(spec)),
        };
        let tensor = d2l_runtime::npy::read_npy(&path).map_err(|e| Error::Usage(e.to_string()))?;
        feeds.push((name, tensor));
    }
    // An unnamed input goes to the model's only input.
    if feeds.iter().any(|(n, _)| n.is_empty()) {
        let lowered = compiled.program.lower(&model, &LowerOptions { default_dim: Some(1), ..LowerOptions::default() })?;
        let names: Vec<String> = lowered.graph.inputs().iter().map(|&i| input_name(&lowered.graph, i).to_string()).collect();
        if names.len() != 1 || feeds.len() != 1 {
            return Err(Error::Usage(format!("model `{model}` has inputs {}; name each one with --input NAME=FILE.npy", names.join(", "))));
        }
        feeds[0].0 = names[0].clone();
    }
    let mut session = compiled.session(device)?;
    if let Some(p) = params {
        session.load_params(p)?;
    }
    let refs: Vec<(&str, &Tensor)> = feeds.iter().map(|(n, t)| (n.as_str(), t)).collect();
    let outputs = session.run(&model, &refs)?;
    for (name, t) in &outputs {
        println!("{name}: {}{}", t.dtype(), t.shape());
        println!("{}", format_tensor(t));
    }
    if let (Some(path), Some((_, t))) = (output, outputs.first()) {
        d2l_runtime::npy::write_npy(path, t).map_err(|e| Error::Usage(e.to_string()))?;
    }
    Ok(())
}

/// NumPy-like nested brackets, eliding the middle of long axes.
fn format_tensor(t: &Tensor) -> String {
    let shape = t.shape().0;
    let values = t.to_f64_vec();
    let is_int = matches!(t.dtype(), d2l::DType::I64 | d2l::DType::Bool);
    let fmt_one = |v: f64| if is_int { format!("{v}") } else { format!("{v:.4}") };
    fn rec(shape: &[usize], values: &[f64], depth: usize, fmt_one: &dyn Fn(f64) -> String, out: &mut String) {
        let Some((&n, rest)) = shape.split_first() else {
            out.push_str(&fmt_one(values[0]));
            return;
        };
        let inner: usize = rest.iter().product();
        out.push('[');
        let shown: Vec<usize> = if n > 12 { (0..5).chain(n - 5..n).collect() } else { (0..n).collect() };
        for (k, &i) in shown.iter().enumerate() {
            if k > 0 {
                out.push_str(if rest.is_empty() { ", " } else { ",\n" });
                if !rest.is_empty() {
                    out.push_str(&" ".repeat(depth + 1));
                }
            }
            if n > 12 && k == 5 {
                out.push_str(if rest.is_empty() { "..., " } else { "...,\n" });
                if !rest.is_empty() {
                    out.push_str(&" ".repeat(depth + 1));
                }
            }
            rec(rest, &values[i * inner..(i + 1) * inner], depth + 1, fmt_one, out);
        }
        out.push(']');
    }
    let mut out = String::new();
    rec(&shape, &values, 0, &fmt_one, &mut out);
    out
}
