//! Multi-step predictions of a model trained on a time series (§51): the
//! course's point that predicting k steps ahead from predictions drifts
//! away from the data as k grows. For window `tau`, row i of the k-step
//! table starts from the true values `x[i..i+tau]` and predicts `k` steps,
//! each from the previous `tau` values, true or predicted.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use d2l_dsl::{LowerOptions, Program};
use d2l_runtime::files::write_atomic;
use d2l_device::Device;
use d2l_runtime::{Executable, Tensor};

use crate::Error;
use crate::graphs::param_feeds;
use crate::logs::{Series, svg_lines};

/// The horizons the course plots.
pub const STEPS: [usize; 4] = [1, 4, 16, 64];

/// Predictions of every kind and their mean squared errors.
#[derive(Clone, Debug)]
pub struct Predictions {
    pub tau: usize,
    /// One step ahead from true values, for times `tau..n` (0-based).
    pub one_step: Vec<f32>,
    /// From time `start` on, each prediction fed back as an input.
    pub fed_back: Vec<f32>,
    pub fed_back_start: usize,
    /// Per horizon k of [`STEPS`], the k-step predictions for times
    /// `tau + k - 1 ..` (as many as the table has rows).
    pub k_step: Vec<(usize, Vec<f32>)>,
    /// (what, MSE against the series) for each of the above.
    pub mse: Vec<(String, f64)>,
}

/// A model compiled for a batch of `rows` windows.
struct Forward {
    exe: Box<dyn Executable>,
    feeds: HashMap<String, Tensor>,
    input: String,
    output: String,
    tau: usize,
}

impl Forward {
    fn new(program: &Program, model: &str, params: &BTreeMap<String, Tensor>, rows: usize, tau: usize, device: Device) -> Result<Forward, Error> {
        let probe = program.lower(model, &LowerOptions { default_dim: Some(1), ..LowerOptions::default() })?.graph;
        let [input] = probe.data_inputs()[..] else {
            return Err(Error::Usage(format!("multi-step prediction feeds one input, but model `{model}` takes {}", probe.data_inputs().len())));
        };
        let input = probe.leaf_name(input).expect("an input has a name").to_string();
        let graph = program.lower(model, &LowerOptions { input_shapes: [(input.clone(), vec![rows, tau])].into(), ..LowerOptions::default() })?.graph;
        let output = graph.outputs().first().map(|o| o.name.clone()).ok_or_else(|| Error::Usage(format!("model `{model}` has no result")))?;
        let feeds = param_feeds(&graph, params)?;
        Ok(Forward { exe: device.compile(&graph, 0)?, feeds, input, output, tau })
    }

    /// The model's prediction for each window (`rows` windows of `tau`, row-major).
    fn run(&mut self, windows: Vec<f32>) -> Result<Vec<f32>, Error> {
        let rows = windows.len() / self.tau;
        self.feeds.insert(self.input.clone(), Tensor::from_f32(&[rows, self.tau], windows));
        let out = self.exe.run(&self.feeds)?;
        let (_, y) = out.iter().find(|(n, _)| *n == self.output).expect("the graph's output");
        Ok(y.to_f64_vec().into_iter().map(|v| v as f32).collect())
    }
}

fn mse(pred: &[f32], truth: &[f32]) -> f64 {
    let n = pred.len().min(truth.len()).max(1);
    pred.iter().zip(truth).map(|(p, t)| ((p - t) as f64).powi(2)).sum::<f64>() / n as f64
}

/// The course's predictions of `model` (with `params`) on `series`:
/// one-step, fed back from `train_end` (the end of the training windows),
/// and k-step for each of [`STEPS`].
pub fn predict(program: &Program, model: &str, params: &BTreeMap<String, Tensor>, series: &[f32], tau: usize, train_end: usize, device: Device) -> Result<Predictions, Error> {
    let n = series.len();
    let max_k = *STEPS.last().expect("not empty");
    if n < tau + max_k {
        return Err(Error::Usage(format!("a series of {n} values is too short for {max_k}-step predictions with a window of {tau}")));
    }
    // One step ahead, every window at once.
    let windows: Vec<f32> = (0..n - tau).flat_map(|i| series[i..i + tau].to_vec()).collect();
    let one_step = Forward::new(program, model, params, n - tau, tau, device)?.run(windows)?;
    // Fed back: from `train_end` on, each prediction is the next input.
    let mut single = Forward::new(program, model, params, 1, tau, device)?;
    let mut fed = series[..train_end].to_vec();
    for i in train_end..n {
        let y = single.run(fed[i - tau..i].to_vec())?;
        fed.push(y[0]);
    }
    // The k-step table: `rows` rows of `tau + max_k` columns.
    let rows = n - tau - max_k + 1;
    let mut table = vec![0.0f32; rows * (tau + max_k)];
    let width = tau + max_k;
    for r in 0..rows {
        table[r * width..r * width + tau].copy_from_slice(&series[r..r + tau]);
    }
    let mut batch = Forward::new(program, model, params, rows, tau, device)?;
    for c in tau..width {
        let windows: Vec<f32> = (0..rows).flat_map(|r| table[r * width + c - tau..r * width + c].to_vec()).collect();
        for (r, y) in batch.run(windows)?.into_iter().enumerate() {
            table[r * width + c] = y;
        }
    }
    let k_step: Vec<(usize, Vec<f32>)> = STEPS.iter().map(|&k| (k, (0..rows).map(|r| table[r * width + tau + k - 1]).collect())).collect();
    let mut errors = vec![("one-step".to_string(), mse(&one_step, &series[tau..])), (format!("fed back from t = {}", train_end + 1), mse(&fed[train_end..], &series[train_end..]))];
    for (k, p) in &k_step {
        errors.push((format!("{k}-step"), mse(p, &series[tau + k - 1..])));
    }
    Ok(Predictions { tau, one_step, fed_back: fed[train_end..].to_vec(), fed_back_start: train_end, k_step, mse: errors })
}

/// Writes the predictions beside the series as CSV (`t` counts from 1, as
/// the course's `time`) and as the course's plots in one SVG.
pub fn write(p: &Predictions, series: &[f32], csv: &Path, svg: &Path) -> std::io::Result<()> {
    let n = series.len();
    let cell = |v: Option<&f32>| v.map_or(String::new(), |x| format!("{x:.6}"));
    let mut text = String::from("t,x,one_step,fed_back");
    for (k, _) in &p.k_step {
        text.push_str(&format!(",step_{k}"));
    }
    text.push('\n');
    for (t, x) in series.iter().enumerate() {
        text.push_str(&format!("{},{x:.6},{},{}", t + 1, cell(t.checked_sub(p.tau).and_then(|i| p.one_step.get(i))), cell(t.checked_sub(p.fed_back_start).and_then(|i| p.fed_back.get(i)))));
        for (k, v) in &p.k_step {
            text.push_str(&format!(",{}", cell(t.checked_sub(p.tau + k - 1).and_then(|i| v.get(i)))));
        }
        text.push('\n');
    }
    write_atomic(csv, text.as_bytes())?;
    let at = |start: usize, v: &[f32]| -> Vec<(f64, f64)> { v.iter().enumerate().map(|(i, &y)| ((start + i + 1) as f64, y as f64)).collect() };
    let colors = ["#ff7f0e", "#2ca02c", "#d62728", "#9467bd"];
    let labels: Vec<String> = p.k_step.iter().map(|(k, _)| format!("{k}-step")).collect();
    // The one-step predictions are the k = 1 line's values (that line ends
    // where the 64-step one does, as the course's plot), so they are drawn once.
    let mut lines: Vec<Series> = vec![("data", "#1f77b4", at(0, series)), ("fed back", "#7f7f7f", at(p.fed_back_start, &p.fed_back))];
    for (((k, v), label), color) in p.k_step.iter().zip(&labels).zip(colors) {
        lines.push((label, color, at(p.tau + k - 1, v)));
    }
    write_atomic(svg, svg_lines(&lines, "time", 1.0, n as f64).as_bytes())
}
