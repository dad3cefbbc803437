//! Predictions of a model trained on §64's kernel regression data: each
//! test input is a query over all training points (keys: their inputs,
//! values: their noisy outputs), where training left each point out of its
//! own keys. Written as the course plots them: the prediction beside the
//! true function and the noisy points, and the attention weights of every
//! test input over the training inputs as a heatmap.

use std::collections::BTreeMap;
use std::path::Path;

use d2l_dsl::{LowerOptions, Program};
use d2l_runtime::data::KernelRegressionData;
use d2l_runtime::files::write_atomic;
use d2l_device::Device;
use d2l_runtime::Tensor;

use crate::Error;
use crate::graphs::param_feeds;
use crate::heatmap::{Heatmap, svg_heatmaps};
use crate::logs::{Series, svg_lines};

/// The model's answers at the test inputs.
#[derive(Clone, Debug)]
pub struct Predictions {
    pub y_hat: Vec<f32>,
    /// Test inputs x training points, row-major: what the model observed
    /// (its attention weights), if it observed one tensor of that shape.
    pub weights: Option<Vec<f64>>,
    /// Mean squared error against the true function.
    pub mse: f64,
}

/// Runs `model` (inputs `queries` [N], `keys` and `values` [N, K]) on the
/// test inputs, every training point a key.
pub fn predict(program: &Program, model: &str, params: &BTreeMap<String, Tensor>, data: &KernelRegressionData, device: Device) -> Result<Predictions, Error> {
    let (m, n) = (data.x_test.len(), data.x_train.len());
    let shapes = [("queries".to_string(), vec![m]), ("keys".to_string(), vec![m, n]), ("values".to_string(), vec![m, n])];
    let lowered = program.lower(model, &LowerOptions { input_shapes: shapes.into_iter().collect(), ..LowerOptions::default() })?;
    let mut graph = lowered.graph;
    let output = graph.outputs().first().map(|o| o.name.clone()).ok_or_else(|| Error::Usage(format!("model `{model}` has no result")))?;
    let observed = match &lowered.observed[..] {
        [(_, node)] if graph.shape(*node).dims() == [m, n] => {
            graph.set_output("observed weights", *node);
            true
        }
        _ => false,
    };
    let mut feeds = param_feeds(&graph, params)?;
    feeds.insert("queries".into(), Tensor::from_f32(&[m], data.x_test.clone()));
    feeds.insert("keys".into(), Tensor::from_f32(&[m, n], data.x_train.repeat(m)));
    feeds.insert("values".into(), Tensor::from_f32(&[m, n], data.y_train.repeat(m)));
    let mut exe = device.compile(&graph, 0)?;
    let mut outputs = Vec::new();
    exe.run_into(&feeds, &mut outputs)?;
    let get = |name: &str| outputs.iter().find(|(o, _)| o == name).map(|(_, t)| t.to_f64_vec());
    let y_hat: Vec<f32> = get(&output).expect("the graph's output").into_iter().map(|v| v as f32).collect();
    if y_hat.len() != m {
        return Err(Error::Usage(format!("model `{model}` returns {} values for {m} queries; kernel regression needs one per query", y_hat.len())));
    }
    let mse = y_hat.iter().zip(&data.y_truth).map(|(p, t)| ((p - t) as f64).powi(2)).sum::<f64>() / m as f64;
    Ok(Predictions { y_hat, weights: if observed { get("observed weights") } else { None }, mse })
}

/// The predictions as CSV (x, truth, prediction), their plot, and the
/// heatmap of the attention weights (when the model observed them).
pub fn write(p: &Predictions, data: &KernelRegressionData, csv: &Path, plot: &Path, heatmap: &Path) -> std::io::Result<()> {
    let mut text = String::from("x,truth,prediction\n");
    for ((x, t), y) in data.x_test.iter().zip(&data.y_truth).zip(&p.y_hat) {
        text.push_str(&format!("{x},{t},{y}\n"));
    }
    write_atomic(csv, text.as_bytes())?;
    let pairs = |xs: &[f32], ys: &[f32]| -> Vec<(f64, f64)> { xs.iter().zip(ys).map(|(&x, &y)| (x as f64, y as f64)).collect() };
    let series: Vec<Series> = vec![
        ("truth", "#1f77b4", pairs(&data.x_test, &data.y_truth)),
        ("prediction", "#d62728", pairs(&data.x_test, &p.y_hat)),
        ("noisy points", "#bbbbbb", pairs(&data.x_train, &data.y_train)),
    ];
    write_atomic(plot, svg_lines(&series, "x", 0.0, 5.0).as_bytes())?;
    if let Some(w) = &p.weights {
        let panel = Heatmap { title: String::new(), rows: data.x_test.len(), cols: data.x_train.len(), values: w.clone() };
        let notes = vec!["attention weights of each test input (rows, 0 to 4.9) over the sorted training inputs (columns)".to_string()];
        write_atomic(heatmap, svg_heatmaps(&[(String::new(), vec![panel])], ("sorted testing inputs", "sorted training inputs"), &notes).as_bytes())?;
    }
    Ok(())
}
