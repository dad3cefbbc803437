//! What a run leaves besides its checkpoint: the per-epoch (or, for a run
//! counted in steps, per-step) log as CSV and JSON, and an SVG plot of its
//! curves like the course's `Animator`.

use std::path::Path;

use d2l_runtime::files::write_atomic;
use d2l_runtime::train::Metrics;

/// One epoch's figures, as logged (or one step's, in a run counted in steps).
#[derive(Clone, Debug)]
pub struct EpochLog {
    /// The epoch's number, or the step's.
    pub epoch: usize,
    pub train: Metrics,
    pub test: Option<Metrics>,
}

/// The columns after the first (`epoch` or `step`); the reported figures
/// (BERT's `mlm_loss`, `nsp_loss`, ...) follow them.
const COLUMNS: &str = "train_loss,train_acc,test_loss,test_acc,examples_per_sec,seconds,train_log_rmse,test_log_rmse,train_perplexity,tokens_per_sec";

/// What a log row counts: epochs, or steps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unit {
    Epoch,
    Step,
}

impl Unit {
    pub fn name(self) -> &'static str {
        match self {
            Unit::Epoch => "epoch",
            Unit::Step => "step",
        }
    }
}

/// The reported figures' names, in the log's first row's order.
fn figure_names(log: &[EpochLog]) -> Vec<String> {
    log.first().map_or(Vec::new(), |e| e.train.figures.iter().map(|(n, _)| n.clone()).collect())
}

fn figure(m: &Metrics, name: &str) -> Option<f64> {
    m.figures.iter().find(|(n, _)| n == name).map(|(_, v)| *v)
}

/// Writes the log as CSV and JSON, a row per epoch or step.
pub fn write_logs(csv_path: &Path, json_path: &Path, log: &[EpochLog], unit: Unit) -> std::io::Result<()> {
    let opt = |v: Option<f64>| v.map_or(String::new(), |x| format!("{x:.6}"));
    let names = figure_names(log);
    let mut csv = std::iter::once(unit.name().to_string()).chain(std::iter::once(COLUMNS.to_string())).chain(names.iter().cloned()).collect::<Vec<_>>().join(",");
    csv.push('\n');
    let mut json = Vec::new();
    for e in log {
        let test = e.test.as_ref();
        let extra: String = names.iter().map(|n| format!(",{}", opt(figure(&e.train, n)))).collect();
        csv.push_str(&format!(
            "{},{:.6},{},{},{},{:.1},{:.3},{},{},{},{:.1}{extra}\n",
            e.epoch,
            e.train.loss,
            opt(e.train.accuracy),
            opt(test.map(|t| t.loss)),
            opt(test.and_then(|t| t.accuracy)),
            e.train.examples_per_sec(),
            e.train.seconds,
            opt(e.train.log_rmse),
            opt(test.and_then(|t| t.log_rmse)),
            opt(e.train.perplexity),
            e.train.tokens_per_sec(),
        ));
        let num = |v: Option<f64>| v.map_or("null".to_string(), |x| if x.is_finite() { format!("{x}") } else { "null".into() });
        let extra: String = names.iter().map(|n| format!(", \"{n}\": {}", num(figure(&e.train, n)))).collect();
        json.push(format!(
            "{{\"{}\": {}, \"train_loss\": {}, \"train_acc\": {}, \"test_loss\": {}, \"test_acc\": {}, \"train_perplexity\": {}, \"examples_per_sec\": {}, \"tokens_per_sec\": {}{extra}}}",
            unit.name(),
            e.epoch,
            num(Some(e.train.loss)),
            num(e.train.accuracy),
            num(test.map(|t| t.loss)),
            num(test.and_then(|t| t.accuracy)),
            num(e.train.perplexity),
            num(Some(e.train.examples_per_sec())),
            num(Some(e.train.tokens_per_sec()))
        ));
    }
    write_atomic(csv_path, csv.as_bytes())?;
    write_atomic(json_path, format!("[\n  {}\n]\n", json.join(",\n  ")).as_bytes())
}

/// Curves like the course's Animator: train loss, train and test accuracy,
/// perplexity for language models, and the reported figures (BERT's MLM
/// and NSP losses).
pub fn write_plot(path: &Path, log: &[EpochLog], unit: Unit) -> std::io::Result<()> {
    let mut series: Vec<Series> = vec![
        ("train loss", "#1f77b4", log.iter().map(|e| (e.epoch as f64, e.train.loss)).collect()),
        ("train acc", "#ff7f0e", log.iter().filter_map(|e| e.train.accuracy.map(|a| (e.epoch as f64, a))).collect()),
        ("test acc", "#2ca02c", log.iter().filter_map(|e| e.test.as_ref().and_then(|t| t.accuracy).map(|a| (e.epoch as f64, a))).collect()),
        ("perplexity", "#d62728", log.iter().filter_map(|e| e.train.perplexity.map(|p| (e.epoch as f64, p))).collect()),
    ];
    let names = figure_names(log);
    const COLOURS: [&str; 4] = ["#9467bd", "#8c564b", "#e377c2", "#17becf"];
    for (name, colour) in names.iter().zip(COLOURS.iter().cycle()) {
        series.push((name, colour, log.iter().filter_map(|e| figure(&e.train, name).map(|v| (e.epoch as f64, v))).collect()));
    }
    let x_min = log.first().map_or(1.0, |e| e.epoch as f64);
    let x_max = log.last().map_or(1.0, |e| e.epoch as f64).max(x_min + 1.0);
    write_atomic(path, svg_lines(&series, unit.name(), x_min, x_max).as_bytes())
}

/// A curve: its label, its colour and its (x, y) points.
pub type Series<'a> = (&'a str, &'a str, Vec<(f64, f64)>);

/// A line chart: each series (label, colour, points) over `x_label` from
/// `x_min` to `x_max`, y from 0 to the largest finite value (at least 1).
pub fn svg_lines(series: &[Series], x_label: &str, x_min: f64, x_max: f64) -> String {
    let (w, h, pad) = (480.0, 320.0, 40.0);
    let max_y = series.iter().flat_map(|s| s.2.iter().map(|p| p.1)).filter(|v| v.is_finite()).fold(1.0f64, f64::max);
    let min_y = series.iter().flat_map(|s| s.2.iter().map(|p| p.1)).filter(|v| v.is_finite()).fold(0.0f64, f64::min);
    let sx = |x: f64| pad + (x - x_min).max(0.0) / (x_max - x_min).max(1e-9) * (w - 2.0 * pad);
    let sy = |y: f64| h - pad - (y - min_y) / (max_y - min_y).max(1e-9) * (h - 2.0 * pad);
    let mut svg = format!("<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"12\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n");
    svg.push_str(&format!("<line x1=\"{pad}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"black\"/>\n", h - pad, w - pad, h - pad));
    svg.push_str(&format!("<line x1=\"{pad}\" y1=\"{pad}\" x2=\"{pad}\" y2=\"{}\" stroke=\"black\"/>\n", h - pad));
    svg.push_str(&format!("<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">{x_label}</text>\n", w / 2.0, h - 8.0));
    svg.push_str(&format!("<text x=\"4\" y=\"{}\">{max_y:.2}</text><text x=\"4\" y=\"{}\">{min_y:.2}</text>\n", pad + 4.0, h - pad));
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
    svg
}

/// Reads back a log written by [`write_logs`] (its CSV), for `--resume`.
pub fn read_log(csv_path: &Path) -> Option<Vec<EpochLog>> {
    let text = std::fs::read_to_string(csv_path).ok()?;
    let mut out = Vec::new();
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next()?.split(',').collect();
    let fixed = 1 + COLUMNS.split(',').count();
    for line in lines {
        let f: Vec<&str> = line.split(',').collect();
        let num = |i: usize| f.get(i).and_then(|s| s.parse::<f64>().ok());
        let figures = header.iter().enumerate().skip(fixed).filter_map(|(i, n)| num(i).map(|v| (n.to_string(), v))).collect();
        let seconds = num(6)?;
        let examples = (num(5)? * seconds).round() as usize;
        let tokens = (num(10).unwrap_or(0.0) * seconds).round() as usize;
        let train = Metrics { loss: num(1)?, accuracy: num(2), log_rmse: num(7), perplexity: num(9), examples, tokens, loss_per_token: false, figures, seconds };
        let test = num(3).map(|loss| Metrics { loss, accuracy: num(4), log_rmse: num(8), ..Metrics::default() });
        out.push(EpochLog { epoch: f.first()?.parse().ok()?, train, test });
    }
    Some(out)
}
