//! `d2l bench`: compile time, step time, throughput and achieved GFLOP/s of
//! a model's training step and inference, on one fixed batch reused every
//! step (like the PyTorch harness in `../shared/bench`): the data source's
//! first minibatch when it loads, else synthetic inputs of the right shapes.

use std::collections::{BTreeMap, HashMap};
use std::time::Instant;

use d2l_dsl::Program;
use d2l_ir::{DType, Graph, Op};
use d2l_device::Device;
use d2l_runtime::{Executable, Tensor, init_params};

use crate::Error;
use crate::graphs::{TrainStage, inference_graph, stage_graph};

/// What to measure.
#[derive(Clone, Debug)]
pub struct BenchOptions {
    pub device: Device,
    /// Batch size (default: the `train` block's).
    pub batch: Option<usize>,
    /// Timed steps: at least this many, and at least `min_seconds`.
    pub min_steps: usize,
    pub min_seconds: f64,
    pub warmup: usize,
    /// Also time every step of the JIT's program (`d2l bench --profile`).
    pub profile: bool,
    /// Before timing, run each graph once on the device and once on the
    /// reference interpreter, and compare every output (`--verify`).
    pub verify: bool,
}

impl Default for BenchOptions {
    fn default() -> Self {
        BenchOptions { device: Device::JIT, batch: None, min_steps: 20, min_seconds: 1.0, warmup: 5, profile: false, verify: false }
    }
}

/// Step times of one graph, in seconds.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Timing {
    pub steps: usize,
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

/// One measured graph (training step or inference).
#[derive(Clone, Debug, serde::Serialize)]
pub struct Measured {
    /// Building the graph (lowering, autodiff, simplification), ms.
    pub lower_ms: f64,
    /// The backend's compile (fusion, planning, code generation), ms.
    pub compile_ms: f64,
    pub timing: Timing,
    /// Multiply-adds ×2 of every matmul and convolution in the graph.
    pub flops: f64,
    /// With `profile`: each step of the compiled program and its mean time
    /// per run (seconds), slowest first.
    pub profile: Vec<(String, f64)>,
    /// With `verify`: how far the device's outputs are from the interpreter's.
    pub verified: Option<Verified>,
}

/// The device's outputs of one run against the reference interpreter's.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Verified {
    /// The output furthest from the interpreter's, by ‖device − interp‖₂ / ‖interp‖₂.
    pub worst_output: String,
    pub relative_error: f64,
    /// Largest |device − interp| / (1 + |interp|) over every element.
    pub max_element_error: f64,
    /// Outputs whose NaNs or integers differ (must be none).
    pub mismatched: Vec<String>,
}

impl Verified {
    /// Within what the equivalence tests allow a GPU's summation order:
    /// 2% of an output's norm (a training step's ReLU decisions near zero
    /// can flip), and no differing NaNs or integers.
    pub fn passes(&self) -> bool {
        self.mismatched.is_empty() && self.relative_error <= 2e-2
    }
}

/// Runs `graph` once on `exe` and once on the interpreter, from the same feeds.
fn verify(graph: &Graph, exe: &mut dyn Executable, feeds: &HashMap<String, Tensor>) -> Result<Verified, Error> {
    let want = d2l_runtime::Interpreter::new(1).run(graph, feeds)?;
    let got = exe.run(feeds)?;
    let mut v = Verified { worst_output: String::new(), relative_error: 0.0, max_element_error: 0.0, mismatched: Vec::new() };
    for ((name, gt), (_, wt)) in got.iter().zip(&want) {
        let is_int = matches!(wt.dtype(), DType::I64 | DType::Bool);
        let (g, w) = (gt.to_f64_vec(), wt.to_f64_vec());
        let nan_or_int_differs = g.iter().zip(&w).any(|(a, b)| a.is_nan() != b.is_nan());
        if nan_or_int_differs || (is_int && g != w) {
            v.mismatched.push(name.clone());
            continue;
        }
        let (mut diff, mut size) = (0.0, 0.0);
        for (a, b) in g.iter().zip(&w).filter(|(a, _)| !a.is_nan()) {
            diff += (a - b) * (a - b);
            size += b * b;
            v.max_element_error = v.max_element_error.max((a - b).abs() / (1.0 + b.abs()));
        }
        let rel = if size > 0.0 { (diff / size).sqrt() } else { diff.sqrt() };
        if rel >= v.relative_error {
            (v.relative_error, v.worst_output) = (rel, name.clone());
        }
    }
    Ok(v)
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct BenchReport {
    pub model: String,
    pub batch: usize,
    pub backend: &'static str,
    /// What the inputs were: the data source's first minibatch when it
    /// loads here, else synthetic values of the right shapes.
    pub inputs: &'static str,
    pub train: Option<Measured>,
    pub infer: Measured,
}

/// FLOPs of the graph's contractions (what the PyTorch harness counts).
pub fn contraction_flops(graph: &Graph) -> f64 {
    let mut total = 0.0;
    for id in graph.ids() {
        let node = graph.node(id);
        match &node.op {
            Op::MatMul => {
                let a = graph.shape(node.args[0]).dims();
                let k = a[a.len() - 1] as f64;
                total += 2.0 * node.shape.numel() as f64 * k;
            }
            Op::Conv2d { .. } => {
                let w = graph.shape(node.args[1]).dims();
                let field: usize = w[1..].iter().product();
                total += 2.0 * node.shape.numel() as f64 * field as f64;
            }
            _ => {}
        }
    }
    total
}

/// Synthetic feeds: parameters as initialised, zero state, random inputs,
/// labels valid for the loss (class indices below the output width) and
/// token indices valid for the tables they index.
fn synthetic_feeds(graph: &Graph, classes: usize) -> HashMap<String, Tensor> {
    let mut feeds = init_params(graph, 1);
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state >> 11) as f64 / (1u64 << 53) as f64
    };
    for id in graph.ids() {
        let node = graph.node(id);
        let Op::Input { name, .. } = &node.op else { continue };
        let dims = node.shape.dims();
        let n = node.shape.numel();
        let t = match node.dtype {
            DType::F32 => Tensor::from_f32(dims, (0..n).map(|_| next() as f32).collect()),
            DType::F64 => Tensor::from_f64(dims, (0..n).map(|_| next()).collect()),
            DType::I64 => {
                // Indices into a table (an embedding) stay inside it; the
                // others (class labels) below the output width.
                let bound = table_bound(graph, id).unwrap_or(classes);
                Tensor::from_i64(dims, (0..n).map(|_| (next() * bound as f64) as i64).collect())
            }
            DType::Bool => Tensor::from_bool(dims, (0..n).map(|_| next() < 0.5).collect()),
        };
        feeds.insert(name.clone(), t);
    }
    feeds
}

/// The size of the table axis an index input gathers from directly.
fn table_bound(graph: &Graph, input: d2l_ir::NodeId) -> Option<usize> {
    graph
        .users(input)
        .iter()
        .filter_map(|&u| match graph.node(u).op {
            Op::Gather { axis } if graph.node(u).args.get(1) == Some(&input) => Some(graph.shape(graph.node(u).args[0]).dims()[axis]),
            _ => None,
        })
        .min()
}

/// The first training minibatch of `model`'s data source at `batch`, by
/// graph input name: inputs whose valid values synthetic ones cannot know
/// (BERT's prediction positions index each example's tokens; its labels
/// are words). `None` when the source cannot be loaded here or yields
/// another batch size.
fn data_feeds(program: &Program, model: &str, batch: usize) -> Option<HashMap<String, Tensor>> {
    let config = program.train_config(model).ok()?;
    let opts = crate::TrainOptions { batch: Some(batch), ..crate::TrainOptions::default() };
    let source = crate::sources::open(program, &config.data, &opts).ok()?;
    let binding = crate::graphs::bind(program, model, &source.schema()).ok()?;
    let mut stream = source.train_epoch(0).ok()?;
    let mut fields: Vec<Tensor> = binding.fields.iter().map(|_| Tensor::zeros(DType::F32, &[0])).collect();
    if !stream.next_batch(&mut fields) || fields.first()?.dims().first() != Some(&batch) {
        return None;
    }
    Some(binding.fields.into_iter().zip(fields).collect())
}

/// Runs `exe` until both `min_steps` and `min_seconds` are reached, after
/// `warmup` runs; a training step's updates are fed back like the trainer does.
fn time(graph: &Graph, exe: &mut dyn Executable, feeds: &mut HashMap<String, Tensor>, opts: &BenchOptions) -> Result<Timing, Error> {
    let mut outputs = Vec::new();
    let mut step = |feeds: &mut HashMap<String, Tensor>, outputs: &mut Vec<(String, Tensor)>| -> Result<(), Error> {
        exe.run_into(feeds, outputs)?;
        d2l_runtime::apply_updates(graph, outputs, feeds);
        Ok(())
    };
    for _ in 0..opts.warmup {
        step(feeds, &mut outputs)?;
    }
    let mut times = Vec::new();
    let started = Instant::now();
    while times.len() < opts.min_steps || started.elapsed().as_secs_f64() < opts.min_seconds {
        let t = Instant::now();
        step(feeds, &mut outputs)?;
        times.push(t.elapsed().as_secs_f64());
        if times.len() >= 100_000 {
            break;
        }
    }
    times.sort_by(f64::total_cmp);
    Ok(Timing { steps: times.len(), median: times[times.len() / 2], min: times[0], max: times[times.len() - 1] })
}

fn measure(graph: &Graph, lower_ms: f64, classes: usize, data: Option<&HashMap<String, Tensor>>, opts: &BenchOptions) -> Result<Measured, Error> {
    let mut feeds = synthetic_feeds(graph, classes);
    for (name, t) in data.into_iter().flatten() {
        if graph.input_named(name).is_some() {
            feeds.insert(name.clone(), t.clone());
        }
    }
    let started = Instant::now();
    if opts.profile && opts.device == Device::JIT {
        let mut exe = d2l_cpu::Jitted::compile(graph, 1)?;
        let compile_ms = started.elapsed().as_secs_f64() * 1e3;
        let verified = if opts.verify { Some(verify(graph, &mut exe, &feeds)?) } else { None };
        exe.program_mut().start_profile();
        let timing = time(graph, &mut exe, &mut feeds, opts)?;
        let runs = (timing.steps + opts.warmup) as f64;
        let profile = exe.program().profile().into_iter().map(|(name, t)| (name, t / runs)).collect();
        return Ok(Measured { lower_ms, compile_ms, timing, flops: contraction_flops(graph), profile, verified });
    }
    let mut exe = opts.device.compile(graph, 1)?;
    let compile_ms = started.elapsed().as_secs_f64() * 1e3;
    let verified = if opts.verify { Some(verify(graph, exe.as_mut(), &feeds)?) } else { None };
    let timing = time(graph, exe.as_mut(), &mut feeds, opts)?;
    Ok(Measured { lower_ms, compile_ms, timing, flops: contraction_flops(graph), profile: Vec::new(), verified })
}

/// Measures `model`'s training step (when it has a `train` block) and its inference.
pub fn bench(program: &Program, model: &str, opts: &BenchOptions) -> Result<BenchReport, Error> {
    let config = program.train_config(model).ok();
    let batch = match (opts.batch, &config) {
        (Some(b), _) => b,
        (None, Some(c)) => match c.data.kwargs.get("batch") {
            Some((d2l_dsl::Value::Int(b), _)) if *b > 0 => *b as usize,
            _ => 1,
        },
        (None, None) => 1,
    };
    let started = Instant::now();
    let forward = d2l_passes::simplify(&inference_graph(program, model, batch)?);
    let infer_lower_ms = started.elapsed().as_secs_f64() * 1e3;
    // Class labels index the last axis of the model's (first) output.
    let classes = forward.outputs().first().map_or(1, |o| forward.shape(o.node).dims().last().copied().unwrap_or(1)).max(1);
    let data = data_feeds(program, model, batch);
    let train = match config {
        Some(_) => {
            let started = Instant::now();
            let step = stage_graph(program, model, TrainStage::Opt, batch, &BTreeMap::new())?;
            let lower_ms = started.elapsed().as_secs_f64() * 1e3;
            Some(measure(&step, lower_ms, classes, data.as_ref(), opts)?)
        }
        None => None,
    };
    let infer = measure(&forward, infer_lower_ms, classes, data.as_ref(), opts)?;
    let inputs = if data.is_some() { "the data's first minibatch" } else { "synthetic" };
    Ok(BenchReport { model: model.to_string(), batch, backend: opts.device.name(), inputs, train, infer })
}

/// The machine's FMA peak, measured: independent f32 multiply-adds on every
/// core for a few milliseconds (GFLOP/s). What "% of peak" is relative to.
pub fn measured_peak_gflops() -> f64 {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..cores).map(|_| s.spawn(core_peak_gflops)).collect();
        handles.into_iter().map(|h| h.join().unwrap_or(0.0)).sum()
    })
}

fn core_peak_gflops() -> f64 {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
        // SAFETY: the features were just detected.
        return unsafe { fma_peak() };
    }
    // Portable: 64 independent multiply-adds (mul + add, no FMA).
    let mut acc = [0.0f32; 64];
    let (a, b) = (std::hint::black_box(0.999_f32), std::hint::black_box(1e-3f32));
    let iters = 1_000_000u64;
    let start = Instant::now();
    for _ in 0..iters {
        for v in acc.iter_mut() {
            *v = *v * a + b;
        }
    }
    std::hint::black_box(&acc);
    (iters * 64 * 2) as f64 / start.elapsed().as_secs_f64() / 1e9
}

/// Ten independent 8-wide FMA chains: enough to fill two FMA pipes of
/// latency 4-5 (Zen, Skylake).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn fma_peak() -> f64 {
    use std::arch::x86_64::*;
    let a = _mm256_set1_ps(std::hint::black_box(0.999));
    let b = _mm256_set1_ps(std::hint::black_box(1e-3));
    let mut acc = [_mm256_setzero_ps(); 10];
    let iters = 4_000_000u64;
    let start = Instant::now();
    for _ in 0..iters {
        for v in acc.iter_mut() {
            *v = _mm256_fmadd_ps(*v, a, b);
        }
    }
    std::hint::black_box(&acc);
    (iters * 10 * 16) as f64 / start.elapsed().as_secs_f64() / 1e9
}

/// A duration, in µs below a millisecond.
fn duration(seconds: f64) -> String {
    if seconds < 1e-3 { format!("{:.2} µs", seconds * 1e6) } else { format!("{:.3} ms", seconds * 1e3) }
}

/// The report as the CLI prints it.
pub fn render(r: &BenchReport, peak: f64) -> String {
    let mut out = format!("{} (batch {}, backend {}, {} inputs, peak {:.0} GFLOP/s)\n", r.model, r.batch, r.backend, r.inputs, peak);
    let mut row = |what: &str, m: &Measured| {
        let t = &m.timing;
        let gflops = m.flops / t.median / 1e9;
        out.push_str(&format!(
            "  {what:<9} compile {:>6.1} ms (graph {:.1} + backend {:.1})  step median {:>10}  min {}  max {}  ({} steps)  {:>10.0} samples/s  {:>6.1} GFLOP/s  {:>5.1}% of peak\n",
            m.lower_ms + m.compile_ms,
            m.lower_ms,
            m.compile_ms,
            duration(t.median),
            duration(t.min),
            duration(t.max),
            t.steps,
            r.batch as f64 / t.median,
            gflops,
            100.0 * gflops / peak
        ));
        if let Some(v) = &m.verified {
            let verdict = if v.passes() { "agrees with" } else { "DIFFERS from" };
            out.push_str(&format!(
                "      {verdict} the interpreter: worst output `{}` ‖Δ‖/‖x‖ {:.1e}, largest element error {:.1e}{}\n",
                v.worst_output,
                v.relative_error,
                v.max_element_error,
                if v.mismatched.is_empty() { String::new() } else { format!(", NaNs or integers differ in {}", v.mismatched.join(", ")) }
            ));
        }
        for (name, t) in m.profile.iter().take(25) {
            out.push_str(&format!("      {:>10} {:>5.1}%  {name}\n", duration(*t), 100.0 * t / m.timing.median));
        }
        if !m.profile.is_empty() {
            // Every step, by kind (a name's first word: conv2d, matmul, loop, wide (a
            // loop run 8 or 16 lanes wide), routine; epilogues under loop).
            let mut kinds: BTreeMap<&str, (usize, f64)> = BTreeMap::new();
            for (name, t) in &m.profile {
                let kind = match name.split_whitespace().next() {
                    Some("its") => "loop",
                    Some(k) => k,
                    None => continue,
                };
                let e = kinds.entry(kind).or_default();
                e.0 += 1;
                e.1 += t;
            }
            let parts: Vec<String> = kinds.iter().map(|(k, (n, t))| format!("{k} {} ({n}, {:.0}%)", duration(*t), 100.0 * t / m.timing.median)).collect();
            out.push_str(&format!("      all {} steps: {}\n", m.profile.len(), parts.join(", ")));
        }
    };
    if let Some(t) = &r.train {
        row("train", t);
    }
    row("inference", &r.infer);
    out
}
