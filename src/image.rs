//! `d2l run --image`: classify one picture with an image model and print
//! the most likely classes, as the course's `predict_ch3` shows labels.
//!
//! The picture is a PNG or JPEG file, or an example of an IDX dataset named
//! `fashion-mnist:test:123` (dataset, split, index). It is converted as the
//! training data is: grayscale (or RGB for a 3-channel model), scaled to
//! [0, 1], bilinearly resized to the model's input size.

use std::path::{Path, PathBuf};

use d2l::{Compiled, Device, Error, LowerOptions, Tensor};
use d2l_runtime::data::{self, FASHION_MNIST_CLASSES, Split};

/// Class names of MNIST, whose labels are the digits themselves.
const DIGITS: [&str; 10] = ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"];

/// Where the picture comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ImageSource {
    File(PathBuf),
    /// Example `index` of an IDX dataset (`fashion-mnist` or `mnist`).
    Idx { dataset: String, split: Split, index: usize },
}

impl ImageSource {
    /// `DATASET:SPLIT:INDEX` for a known dataset, otherwise a file path.
    pub fn parse(spec: &str) -> Result<ImageSource, Error> {
        let parts: Vec<&str> = spec.split(':').collect();
        let [dataset @ ("fashion-mnist" | "mnist"), split, index] = parts[..] else {
            return Ok(ImageSource::File(PathBuf::from(spec)));
        };
        let split = match split {
            "train" => Split::Train,
            "test" => Split::Test,
            other => return Err(Error::Usage(format!("`{spec}`: the split is `train` or `test`, not `{other}`"))),
        };
        let index = index.parse().map_err(|_| Error::Usage(format!("`{spec}`: `{index}` is not an example index")))?;
        Ok(ImageSource::Idx { dataset: dataset.to_string(), split, index })
    }
}

/// A picture ready for the model.
pub struct Picture {
    /// [1, channels, height, width], values in [0, 1].
    pub tensor: Tensor,
    /// The true class, for a dataset example.
    pub label: Option<usize>,
    /// The class names of the dataset it came from, if any.
    pub classes: Option<&'static [&'static str; 10]>,
}

/// Reads the picture and converts it to `[1, channels, height, width]`.
pub fn load(source: &ImageSource, channels: usize, height: usize, width: usize, data_dir: Option<&Path>) -> Result<Picture, Error> {
    if channels != 1 && channels != 3 {
        return Err(Error::Usage(format!("--image feeds 1 (grayscale) or 3 (RGB) channels, but the model's input has {channels}")));
    }
    // Planes of `channels` x h x w pixels in [0, 1], at the source's size.
    let (planes, h, w, label, classes) = match source {
        ImageSource::File(path) => {
            let img = image::ImageReader::open(path)
                .map_err(|e| Error::Usage(format!("cannot read {}: {e}", path.display())))?
                .with_guessed_format()
                .map_err(|e| Error::Usage(format!("cannot read {}: {e}", path.display())))?
                .decode()
                .map_err(|e| Error::Usage(format!("{}: not a PNG or JPEG image we can decode: {e}", path.display())))?;
            let (w, h) = (img.width() as usize, img.height() as usize);
            let pixels: Vec<f32> = if channels == 1 {
                img.to_luma8().into_raw().into_iter().map(|p| f32::from(p) / 255.0).collect()
            } else {
                // Interleaved RGB -> planar [3, h, w].
                let rgb = img.to_rgb8().into_raw();
                (0..3).flat_map(|c| rgb.iter().skip(c).step_by(3).map(|&p| f32::from(p) / 255.0).collect::<Vec<_>>()).collect()
            };
            (pixels, h, w, None, None)
        }
        ImageSource::Idx { dataset, split, index } => {
            let data_err = |e: data::DataError| Error::Usage(e.to_string());
            let dir = data::find_dataset(dataset, data_dir).map_err(data_err)?;
            let set = data::load_mnist_like(&dir, *split).map_err(data_err)?;
            if *index >= set.n {
                let split = if *split == Split::Train { "train" } else { "test" };
                return Err(Error::Usage(format!("{dataset} {split} has {} examples; index {index} is out of range", set.n)));
            }
            let gray: Vec<f32> = set.image(*index).iter().map(|&p| f32::from(p) / 255.0).collect();
            // A grayscale image feeds an RGB model as three equal planes.
            let pixels = gray.repeat(channels);
            let classes = if dataset == "mnist" { &DIGITS } else { &FASHION_MNIST_CLASSES };
            (pixels, set.rows, set.cols, Some(usize::from(set.labels[*index])), Some(classes))
        }
    };
    if h == 0 || w == 0 {
        return Err(Error::Usage("the image is empty".into()));
    }
    let plane = h * w;
    let resized: Vec<f32> = if (h, w) == (height, width) {
        planes
    } else {
        planes.chunks(plane).flat_map(|p| data::resize_bilinear(p, h, w, height, width)).collect()
    };
    Ok(Picture { tensor: Tensor::from_f32(&[1, channels, height, width], resized), label, classes })
}

/// Softmax of one row of class scores, sorted by probability (highest first).
pub fn ranked(scores: &[f64]) -> Vec<(usize, f64)> {
    let max = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let exp: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
    let total: f64 = exp.iter().sum();
    let mut out: Vec<(usize, f64)> = exp.into_iter().map(|e| e / total).enumerate().collect();
    out.sort_by(|a, b| b.1.total_cmp(&a.1));
    out
}

/// Runs `model` on the picture `spec` and returns the report `d2l run
/// --image` prints: the `top` most likely classes with probabilities.
pub fn classify(compiled: &Compiled, model: &str, spec: &str, params: Option<&Path>, top: usize, device: Device) -> Result<String, Error> {
    let source = ImageSource::parse(spec)?;
    let probe = compiled.program.lower(model, &LowerOptions { default_dim: Some(1), ..LowerOptions::default() })?;
    let inputs = probe.graph.inputs();
    let [input] = inputs[..] else {
        return Err(Error::Usage(format!("--image feeds one input, but model `{model}` has {}", inputs.len())));
    };
    let name = match &probe.graph.node(input).op {
        d2l_ir::Op::Input { name, .. } => name.clone(),
        _ => unreachable!("inputs() returns Input nodes"),
    };
    let &[_, channels, height, width] = &probe.graph.shape(input).0[..] else {
        return Err(Error::Usage(format!("--image needs a model taking images [B, C, H, W]; `{model}` takes {}", probe.graph.shape(input))));
    };
    // Class names: the dataset's for an example, else the model's training data's.
    let trained_on_mnist = compiled.program.train_config(model).is_ok_and(|c| c.data.name == "mnist");
    let picture = load(&source, channels, height, width, None)?;
    let classes = picture.classes.unwrap_or(if trained_on_mnist { &DIGITS } else { &FASHION_MNIST_CLASSES });

    let mut session = compiled.session(device)?;
    if let Some(p) = params {
        session.load_params(p)?;
    }
    let outputs = session.run(model, &[(name.as_str(), &picture.tensor)])?;
    let scores = outputs.first().map(|(_, t)| t.to_f64_vec()).unwrap_or_default();
    if scores.len() != classes.len() {
        return Err(Error::Usage(format!("--image needs {} class scores from `{model}`, but its output has {} values", classes.len(), scores.len())));
    }
    let mut report = spec.to_string();
    if let Some(label) = picture.label {
        report.push_str(&format!(" (true class: {})", classes[label.min(classes.len() - 1)]));
    }
    report.push('\n');
    for (class, p) in ranked(&scores).into_iter().take(top.max(1)) {
        report.push_str(&format!("  {:<10}  {p:.4}\n", classes[class]));
    }
    Ok(report)
}
