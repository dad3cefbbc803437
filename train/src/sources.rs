//! The data sources a `train` block can name, as a registry. Each source
//! declares what it feeds per example: the model's inputs (by name, dtype
//! and shape) and then the labels its loss takes. It batches itself: image
//! and table sources cut shuffled minibatches of stored tensors; text
//! sources cut a token corpus into the course's `[batch, steps]`
//! subsequences, and say that recurrent state carries over between
//! minibatches when they are consecutive.
//!
//! A model's inputs are matched to a source's inputs by name, except that a
//! source with one input feeds a model with one (non-state) input whatever
//! either calls it. A model need not take every input a source provides.

use std::path::{Path, PathBuf};

use d2l_dsl::{Program, Spec, Value};
use d2l_ir::DType;
use d2l_runtime::Tensor;
use d2l_runtime::data::text::{SeqDataLoader, SeqOptions, TokenKind, Vocab};
use d2l_runtime::data::{self, BatchOptions, KernelRegressionData, Sampling, Split, TensorDataset};
use d2l_runtime::train::{BatchStream, StateReset};

use crate::{Error, Stream, TrainOptions, derive_seed};

/// A tensor a source yields per example; a minibatch adds a leading batch axis.
#[derive(Clone, Debug, PartialEq)]
pub struct Field {
    pub name: String,
    pub dtype: DType,
    pub dims: Vec<usize>,
}

impl Field {
    fn of(name: &str, t: &Tensor) -> Field {
        Field { name: name.to_string(), dtype: t.dtype(), dims: t.dims()[1..].to_vec() }
    }

    /// The shape of a minibatch of `batch` examples.
    pub fn batched(&self, batch: usize) -> Vec<usize> {
        std::iter::once(batch).chain(self.dims.iter().copied()).collect()
    }
}

/// What a source feeds, known without loading it where possible.
#[derive(Clone, Debug, PartialEq)]
pub struct Schema {
    /// The model's inputs.
    pub inputs: Vec<Field>,
    /// The loss's labels, in the order it takes them.
    pub labels: Vec<Field>,
    pub batch: usize,
}

/// A loaded data source.
pub trait Source {
    /// Where the data came from, for the log.
    fn describe(&self) -> String;
    fn schema(&self) -> Schema;
    /// Examples in the training set, and in the held-out set if there is one
    /// (tokens, for text).
    fn train_len(&self) -> usize;
    fn test_len(&self) -> Option<usize>;
    /// The batch sizes training minibatches have (one compiled step each).
    fn train_batch_sizes(&self) -> Vec<usize>;
    /// The batch sizes evaluation minibatches have.
    fn eval_batch_sizes(&self) -> Vec<usize>;
    /// The training minibatches of `epoch` (shuffled, augmented).
    fn train_epoch(&self, epoch: u64) -> Result<Box<dyn BatchStream + '_>, Error>;
    /// The training set as evaluation sees it: in order, not augmented.
    fn train_eval(&self) -> Result<Box<dyn BatchStream + '_>, Error>;
    /// The held-out set, if any.
    fn test(&self) -> Option<Result<Box<dyn BatchStream + '_>, Error>>;
    /// When recurrent state starts again from zeros.
    fn state_reset(&self) -> StateReset {
        StateReset::EveryBatch
    }
    /// K-fold cross-validation instead of a test set (`folds=K`).
    fn folds(&self) -> Option<usize> {
        None
    }
    /// Fold `i` of [`Source::folds`]: trains on the other folds, tests on fold `i`.
    fn fold(&self, _i: usize) -> Result<Box<dyn Source>, Error> {
        Err(Error::Usage(format!("{} has no folds", self.describe())))
    }
    /// A text source's vocabulary and tokens (for generation).
    fn vocab(&self) -> Option<(&Vocab, TokenKind)> {
        None
    }
    /// A translation source's vocabularies and sentence length (for
    /// decoding, [`crate::translate`]).
    fn pairs(&self) -> Option<&SentencePairs> {
        None
    }
    /// A time series source's whole series and its window `tau` (for
    /// multi-step predictions, [`crate::series`]).
    fn series(&self) -> Option<(&[f32], usize)> {
        None
    }
    /// §64's points, for predicting at its test inputs
    /// ([`crate::kernel_regression`]).
    fn kernel_regression(&self) -> Option<&KernelRegressionData> {
        None
    }
    /// BERT's vocabulary and sequence length (for encoding sentences,
    /// `d2l bert-encode`).
    fn bert_vocab(&self) -> Option<(&Vocab, usize)> {
        None
    }
}

type SchemaFn = fn(&Args) -> Result<Schema, Error>;

/// One kind of source a train block can name.
pub struct SourceKind {
    pub name: &'static str,
    /// Its settings, for `--help` and errors.
    pub usage: &'static str,
    open: fn(&Args) -> Result<Box<dyn Source>, Error>,
    /// Its schema without loading the data, where the settings fix it.
    schema: Option<SchemaFn>,
}

/// Every source a train block can name.
pub const SOURCES: &[SourceKind] = &[
    SourceKind { name: "fashion_mnist", usage: "fashion_mnist(batch, resize=N|(H, W), flip=false)", open: open_images, schema: Some(image_schema) },
    SourceKind { name: "mnist", usage: "mnist(batch, resize=N|(H, W), flip=false)", open: open_images, schema: Some(image_schema) },
    SourceKind { name: "synthetic_linear", usage: "synthetic_linear(w=(..) | w=x dims=N, b=0, n=1000, n_test=.., batch)", open: open_synthetic_linear, schema: None },
    SourceKind { name: "house_prices", usage: "house_prices(batch, folds=K)", open: open_house_prices, schema: None },
    SourceKind { name: "edge_detection", usage: "edge_detection(batch)", open: open_edge_detection, schema: None },
    SourceKind { name: "sine_series", usage: "sine_series(batch, tau=4, n=1000, n_train=600)", open: open_sine_series, schema: Some(sine_schema) },
    SourceKind { name: "time_machine", usage: "time_machine(batch, steps, random=false, max_tokens=10000, tokens=\"char\"|\"word\")", open: open_time_machine, schema: Some(text_schema) },
    SourceKind { name: "text_file", usage: "text_file(path=\"..\", batch, steps, random=false, max_tokens=.., tokens=\"char\"|\"word\")", open: open_text_file, schema: Some(text_schema) },
    SourceKind { name: "npy", usage: "npy(features=\"x.npy\" | ((\"name\", \"file.npy\"), ..), labels=\"y.npy\", test_features=.., test_labels=.., batch)", open: open_npy, schema: None },
    SourceKind { name: "fra_eng", usage: "fra_eng(batch, steps=10, examples=600, path=\"..\")", open: open_fra_eng, schema: Some(nmt_schema) },
    SourceKind { name: "wikitext2", usage: "wikitext2(batch, max_len=64, path=\"..\")", open: open_wikitext2, schema: Some(wikitext2_schema) },
    SourceKind { name: "kernel_regression", usage: "kernel_regression(n=50, batch=n)", open: open_kernel_regression, schema: Some(kernel_regression_schema) },
    SourceKind { name: "csv", usage: "csv(path=\"..\", label=\"column\", classification=false, test=\"..\", batch)", open: open_csv, schema: None },
];

fn kind(program: &Program, spec: &Spec) -> Result<&'static SourceKind, Error> {
    SOURCES.iter().find(|k| k.name == spec.name).ok_or_else(|| {
        let known: Vec<&str> = SOURCES.iter().map(|k| k.usage).collect();
        program.error_at(spec.span, format!("unknown data source `{}` (known: {})", spec.name, known.join("; "))).into()
    })
}

/// Loads the source a train block's `data = ...` names.
pub fn open(program: &Program, spec: &Spec, opts: &TrainOptions) -> Result<Box<dyn Source>, Error> {
    let args = Args { program, spec, opts };
    (kind(program, spec)?.open)(&args)
}

/// What the source feeds, without loading it when its settings tell.
pub fn schema(program: &Program, spec: &Spec, opts: &TrainOptions) -> Result<Schema, Error> {
    let args = Args { program, spec, opts };
    let kind = kind(program, spec)?;
    match kind.schema {
        Some(f) => f(&args),
        None => Ok((kind.open)(&args)?.schema()),
    }
}

/// A data spec being read: errors point at the setting.
struct Args<'a> {
    program: &'a Program,
    spec: &'a Spec,
    opts: &'a TrainOptions,
}

impl Args<'_> {
    fn err(&self, span: d2l_dsl::ast::Span, msg: impl Into<String>) -> Error {
        self.program.error_at(span, msg).into()
    }

    fn value(&self, key: &str) -> Option<&(Value, d2l_dsl::ast::Span)> {
        self.spec.kwargs.get(key)
    }

    /// Every argument is a keyword in `allowed`.
    fn keys(&self, allowed: &[&str]) -> Result<(), Error> {
        for (key, (_, span)) in &self.spec.kwargs {
            if !allowed.contains(&key.as_str()) {
                return Err(self.err(*span, format!("`{}` takes no argument `{key}` (it takes {})", self.spec.name, allowed.join(", "))));
            }
        }
        if !self.spec.args.is_empty() {
            return Err(self.err(self.spec.span, format!("`{}` takes keyword arguments only ({})", self.spec.name, allowed.join(", "))));
        }
        Ok(())
    }

    fn positive_int(&self, key: &str) -> Result<Option<usize>, Error> {
        match self.value(key) {
            None => Ok(None),
            Some((Value::Int(n), _)) if *n > 0 => Ok(Some(*n as usize)),
            Some((_, span)) => Err(self.err(*span, format!("`{key}` must be a positive int"))),
        }
    }

    fn number(&self, key: &str) -> Result<Option<f64>, Error> {
        match self.value(key) {
            None => Ok(None),
            Some((v, span)) => v.as_f64().filter(|x| x.is_finite()).map(Some).ok_or_else(|| self.err(*span, format!("`{key}` must be a number"))),
        }
    }

    fn flag(&self, key: &str) -> Result<bool, Error> {
        match self.value(key) {
            None => Ok(false),
            Some((Value::Bool(b), _)) => Ok(*b),
            Some((_, span)) => Err(self.err(*span, format!("`{key}` is true or false"))),
        }
    }

    fn string(&self, key: &str) -> Result<Option<String>, Error> {
        match self.value(key) {
            None => Ok(None),
            Some((Value::Str(s), _)) => Ok(Some(s.clone())),
            Some((_, span)) => Err(self.err(*span, format!("`{key}` must be a string"))),
        }
    }

    /// A file named by `key`, relative to the .d2l file the setting is in.
    fn path(&self, key: &str) -> Result<Option<PathBuf>, Error> {
        Ok(self.string(key)?.map(|s| self.resolve(&s)))
    }

    /// `file` relative to the .d2l file the setting is in.
    fn resolve(&self, file: &str) -> PathBuf {
        let path = PathBuf::from(file);
        if path.is_absolute() {
            return path;
        }
        let source = self.program.sources.name(self.spec.span.file);
        let base = Path::new(source).parent().filter(|d| d.is_dir());
        base.map_or(path.clone(), |d| d.join(&path))
    }

    /// `key="file"` (one input named `x`) or `key=(("name", "file"), ...)`
    /// (several named inputs), files relative to the .d2l file.
    fn named_paths(&self, key: &str) -> Result<Option<Vec<(String, PathBuf)>>, Error> {
        let Some((value, span)) = self.value(key) else { return Ok(None) };
        let bad = || self.err(*span, format!("`{key}` is a file name, or a tuple of (input name, file name) pairs"));
        let pairs: Vec<(String, String)> = match value {
            Value::Str(file) => vec![("x".into(), file.clone())],
            Value::Tuple(items) => items
                .iter()
                .map(|item| match item {
                    Value::Tuple(p) => match &p[..] {
                        [Value::Str(name), Value::Str(file)] => Ok((name.clone(), file.clone())),
                        _ => Err(bad()),
                    },
                    _ => Err(bad()),
                })
                .collect::<Result<_, _>>()?,
            _ => return Err(bad()),
        };
        if pairs.is_empty() {
            return Err(bad());
        }
        Ok(Some(pairs.into_iter().map(|(name, file)| (name, self.resolve(&file))).collect()))
    }

    fn required_path(&self, key: &str) -> Result<PathBuf, Error> {
        self.path(key)?.ok_or_else(|| self.err(self.spec.span, format!("`{}` needs `{key}=\"FILE\"`", self.spec.name)))
    }

    /// The minibatch size: `--batch`, or the required `batch=N`.
    fn batch(&self) -> Result<usize, Error> {
        let declared = self.positive_int("batch")?.ok_or_else(|| self.err(self.spec.span, format!("`{}` needs `batch=N`", self.spec.name)))?;
        Ok(self.opts.batch.unwrap_or(declared).max(1))
    }

    fn dataset_dir(&self, name: &str) -> Result<PathBuf, Error> {
        Ok(data::find_dataset(name, self.opts.data_dir.as_deref())?)
    }
}

// ---- tensors in memory: images, tables, arrays ---------------------------------------

/// The image transforms of a data source (`resize=`, `flip=`), as the
/// course's `load_data_fashion_mnist(resize=...)` and augmentations.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ImageTransform {
    /// Bilinear resize to (height, width), like torchvision's `Resize`.
    pub resize: Option<(usize, usize)>,
    /// Flip training images left-right with probability 1/2 (never when evaluating).
    pub hflip: bool,
}

/// Examples held as tensors, cut into shuffled minibatches.
pub struct TensorSource {
    description: String,
    train: TensorDataset,
    test: Option<TensorDataset>,
    batch: usize,
    transform: ImageTransform,
    shuffle_seed: u64,
    folds: Option<usize>,
    /// The series and window of a time-series source.
    series: Option<(Vec<f32>, usize)>,
    /// The vocabularies of sentence pairs.
    pairs: Option<SentencePairs>,
    /// §64's training and test points.
    kernel_regression: Option<KernelRegressionData>,
    /// BERT's vocabulary and `max_len`.
    bert_vocab: Option<(Vocab, usize)>,
}

/// What translating needs of a translation source: both vocabularies and
/// the sentences' length in tokens.
#[derive(Clone, Debug)]
pub struct SentencePairs {
    pub src_vocab: Vocab,
    pub tgt_vocab: Vocab,
    pub steps: usize,
}

impl TensorSource {
    fn new(description: String, train: TensorDataset, test: Option<TensorDataset>, batch: usize, args: &Args) -> Result<TensorSource, Error> {
        let mut source = TensorSource { description, train, test, batch, transform: ImageTransform::default(), shuffle_seed: derive_seed(args.opts.seed, Stream::Shuffle), folds: None, series: None, pairs: None, kernel_regression: None, bert_vocab: None };
        if let Some(limit) = args.opts.limit {
            let head = |d: &TensorDataset| d.select(&(0..limit.min(d.len())).collect::<Vec<_>>());
            source.train = head(&source.train)?;
            source.test = source.test.as_ref().map(head).transpose()?;
        }
        Ok(source)
    }

    /// The training set (for tests and k-fold).
    pub fn train_set(&self) -> &TensorDataset {
        &self.train
    }

    fn options(&self, training: bool) -> BatchOptions {
        let opts = BatchOptions::new(self.batch).shuffle(training).seed(self.shuffle_seed).random_hflip(training && self.transform.hflip);
        match self.transform.resize {
            Some((h, w)) => opts.resize(h, w),
            None => opts,
        }
    }
}

/// Batch sizes of `n` examples cut into batches of `batch`: the full size
/// and, when it does not divide, the last one's.
fn batch_sizes(n: usize, batch: usize) -> Vec<usize> {
    let mut sizes = vec![batch.min(n).max(1)];
    if n > batch && !n.is_multiple_of(batch) {
        sizes.push(n % batch);
    }
    sizes
}

impl Source for TensorSource {
    fn describe(&self) -> String {
        self.description.clone()
    }

    fn schema(&self) -> Schema {
        let fields = self.train.fields();
        let k = self.train.input_count();
        let mut inputs: Vec<Field> = fields[..k].iter().map(|(n, t)| Field::of(n, t)).collect();
        if let (Some((h, w)), Some(first)) = (self.transform.resize, inputs.first_mut())
            && first.dims.len() >= 2
        {
            let n = first.dims.len();
            first.dims[n - 2] = h;
            first.dims[n - 1] = w;
        }
        Schema { inputs, labels: fields[k..].iter().map(|(n, t)| Field::of(n, t)).collect(), batch: self.batch }
    }

    fn train_len(&self) -> usize {
        self.train.len()
    }

    fn test_len(&self) -> Option<usize> {
        self.test.as_ref().map(TensorDataset::len)
    }

    fn train_batch_sizes(&self) -> Vec<usize> {
        batch_sizes(self.train.len(), self.batch)
    }

    fn eval_batch_sizes(&self) -> Vec<usize> {
        let mut sizes = self.train_batch_sizes();
        if let Some(t) = &self.test {
            sizes.extend(batch_sizes(t.len(), self.batch));
        }
        sizes.sort_unstable();
        sizes.dedup();
        sizes
    }

    fn train_epoch(&self, epoch: u64) -> Result<Box<dyn BatchStream + '_>, Error> {
        Ok(Box::new(self.train.batches(&self.options(true), epoch)?))
    }

    fn train_eval(&self) -> Result<Box<dyn BatchStream + '_>, Error> {
        Ok(Box::new(self.train.batches(&self.options(false), 0)?))
    }

    fn test(&self) -> Option<Result<Box<dyn BatchStream + '_>, Error>> {
        let test = self.test.as_ref()?;
        Some(test.batches(&self.options(false), 0).map(|b| Box::new(b) as Box<dyn BatchStream>).map_err(Error::from))
    }

    fn folds(&self) -> Option<usize> {
        self.folds
    }

    fn fold(&self, i: usize) -> Result<Box<dyn Source>, Error> {
        let k = self.folds.ok_or_else(|| Error::Usage(format!("{} has no folds", self.description)))?;
        let (train_idx, valid_idx) = data::k_fold(self.train.len(), k, i)?;
        Ok(Box::new(TensorSource {
            description: format!("{}, fold {} of {k}", self.description, i + 1),
            train: self.train.select(&train_idx)?,
            test: Some(self.train.select(&valid_idx)?),
            batch: self.batch,
            transform: self.transform,
            shuffle_seed: self.shuffle_seed.wrapping_add(i as u64),
            folds: None,
            series: None,
            pairs: self.pairs.clone(),
            kernel_regression: None,
            bert_vocab: None,
        }))
    }

    fn series(&self) -> Option<(&[f32], usize)> {
        self.series.as_ref().map(|(x, tau)| (x.as_slice(), *tau))
    }

    fn kernel_regression(&self) -> Option<&KernelRegressionData> {
        self.kernel_regression.as_ref()
    }

    fn pairs(&self) -> Option<&SentencePairs> {
        self.pairs.as_ref()
    }

    fn bert_vocab(&self) -> Option<(&Vocab, usize)> {
        self.bert_vocab.as_ref().map(|(v, len)| (v, *len))
    }
}

fn image_transform(args: &Args) -> Result<ImageTransform, Error> {
    let side = |v: &Value| match v {
        Value::Int(n) if (1..=4096).contains(n) => Some(*n as usize),
        _ => None,
    };
    let resize = match args.value("resize") {
        None => None,
        Some((Value::Tuple(hw), span)) => match &hw[..] {
            [h, w] => Some(side(h).zip(side(w)).ok_or_else(|| args.err(*span, "`resize` sides must be ints in 1..=4096"))?),
            _ => return Err(args.err(*span, "`resize` is N or (height, width)")),
        },
        Some((v, span)) => Some(side(v).map(|n| (n, n)).ok_or_else(|| args.err(*span, "`resize` is N or (height, width), ints in 1..=4096"))?),
    };
    Ok(ImageTransform { resize, hflip: args.flag("flip")? })
}

fn image_schema(args: &Args) -> Result<Schema, Error> {
    args.keys(&["batch", "resize", "flip"])?;
    let (h, w) = image_transform(args)?.resize.unwrap_or((28, 28));
    Ok(Schema {
        inputs: vec![Field { name: "x".into(), dtype: DType::F32, dims: vec![1, h, w] }],
        labels: vec![Field { name: "label".into(), dtype: DType::I64, dims: vec![] }],
        batch: args.batch()?,
    })
}

fn open_images(args: &Args) -> Result<Box<dyn Source>, Error> {
    args.keys(&["batch", "resize", "flip"])?;
    let folder = if args.spec.name == "mnist" { "mnist" } else { "fashion-mnist" };
    let dir = args.dataset_dir(folder)?;
    let train = data::load_mnist_like(&dir, Split::Train)?.to_tensor_dataset();
    let test = data::load_mnist_like(&dir, Split::Test)?.to_tensor_dataset();
    let mut source = TensorSource::new(format!("{} ({})", args.spec.name, dir.display()), train, Some(test), args.batch()?, args)?;
    source.transform = image_transform(args)?;
    Ok(Box::new(source))
}

fn open_synthetic_linear(args: &Args) -> Result<Box<dyn Source>, Error> {
    args.keys(&["w", "dims", "b", "n", "n_test", "batch"])?;
    let n = args.positive_int("n")?.unwrap_or(1000);
    let b = args.number("b")?.unwrap_or(0.0) as f32;
    // `w` is either the true weights, or one value repeated `dims` times.
    let w: Vec<f32> = match args.value("w") {
        Some((Value::Tuple(items), span)) => items.iter().map(|v| v.as_f64().map(|x| x as f32)).collect::<Option<_>>().ok_or_else(|| args.err(*span, "`w` must be numbers"))?,
        Some((v, span)) => {
            let x = v.as_f64().ok_or_else(|| args.err(*span, "`w` must be a number or a tuple of numbers"))?;
            vec![x as f32; args.positive_int("dims")?.unwrap_or(1)]
        }
        None => return Err(args.err(args.spec.span, "`synthetic_linear` needs the true weights `w=[...]`")),
    };
    let seed = derive_seed(args.opts.seed, Stream::Data);
    let (x, y) = data::synthetic_data(&w, b, n, seed);
    let train = TensorDataset::new(x, y)?;
    let test = match args.positive_int("n_test")? {
        Some(m) => {
            let (x, y) = data::synthetic_data(&w, b, m, seed.wrapping_add(1));
            Some(TensorDataset::new(x, y)?)
        }
        None => None,
    };
    Ok(Box::new(TensorSource::new(format!("synthetic_linear (n={n}, {} features)", w.len()), train, test, args.batch()?, args)?))
}

fn open_house_prices(args: &Args) -> Result<Box<dyn Source>, Error> {
    args.keys(&["batch", "folds"])?;
    let folds = args.positive_int("folds")?;
    if folds == Some(1) {
        return Err(args.err(args.value("folds").map_or(args.spec.span, |(_, s)| *s), "`folds` must be at least 2"));
    }
    let dir = args.dataset_dir("kaggle-house")?;
    let h = data::load_house_prices(&dir)?;
    let features = h.train_features.dims()[1];
    let train = TensorDataset::new(h.train_features, h.train_labels)?;
    let mut source = TensorSource::new(format!("house_prices ({}, {features} features)", dir.display()), train, None, args.batch()?, args)?;
    source.folds = folds;
    Ok(Box::new(source))
}

fn open_edge_detection(args: &Args) -> Result<Box<dyn Source>, Error> {
    args.keys(&["batch"])?;
    let (x, y) = edge_detection_data();
    Ok(Box::new(TensorSource::new("edge_detection (one 6x8 image and its edges)".into(), TensorDataset::new(x, y)?, None, args.batch()?, args)?))
}

/// The course's §19 data: a 6x8 image, white (1) with a black (0) band in
/// columns 2..6, and its edges, the image cross-correlated with [[1, -1]]:
/// 1 where white turns black, -1 where black turns white, 0 elsewhere.
pub fn edge_detection_data() -> (Tensor, Tensor) {
    let (h, w) = (6, 8);
    let x: Vec<f32> = (0..h * w).map(|i| if (2..6).contains(&(i % w)) { 0.0 } else { 1.0 }).collect();
    let y: Vec<f32> = (0..h).flat_map(|r| (0..w - 1).map(move |c| (r, c))).map(|(r, c)| x[r * w + c] - x[r * w + c + 1]).collect();
    (Tensor::from_f32(&[1, 1, h, w], x), Tensor::from_f32(&[1, 1, h, w - 1], y))
}

fn sine_settings(args: &Args) -> Result<(usize, usize, usize), Error> {
    args.keys(&["batch", "tau", "n", "n_train"])?;
    let tau = args.positive_int("tau")?.unwrap_or(4);
    let n = args.positive_int("n")?.unwrap_or(1000);
    let n_train = args.positive_int("n_train")?.unwrap_or(600);
    if n <= tau + 1 || n_train >= n - tau {
        return Err(args.err(args.spec.span, format!("`sine_series` makes n - tau = {} pairs, so it needs n > tau + 1 and n_train below that", n.saturating_sub(tau))));
    }
    Ok((tau, n, n_train))
}

fn sine_schema(args: &Args) -> Result<Schema, Error> {
    let (tau, _, _) = sine_settings(args)?;
    Ok(Schema {
        inputs: vec![Field { name: "x".into(), dtype: DType::F32, dims: vec![tau] }],
        labels: vec![Field { name: "label".into(), dtype: DType::F32, dims: vec![1] }],
        batch: args.batch()?,
    })
}

fn open_sine_series(args: &Args) -> Result<Box<dyn Source>, Error> {
    let (tau, n, n_train) = sine_settings(args)?;
    let (series, x, y) = data::sine_series(n, tau, derive_seed(args.opts.seed, Stream::Data));
    let all = TensorDataset::new(x, y)?;
    let train = all.select(&(0..n_train).collect::<Vec<_>>())?;
    let test = all.select(&(n_train..all.len()).collect::<Vec<_>>())?;
    let description = format!("sine_series (n={n}, tau={tau}: {n_train} training pairs, {} held out)", all.len() - n_train);
    let mut source = TensorSource::new(description, train, Some(test), args.batch()?, args)?;
    source.series = Some((series, tau));
    Ok(Box::new(source))
}

fn kernel_regression_settings(args: &Args) -> Result<(usize, usize), Error> {
    args.keys(&["n", "batch"])?;
    let n = args.positive_int("n")?.unwrap_or(50);
    if n < 2 {
        return Err(args.err(args.spec.span, "`kernel_regression` needs n >= 2: every point's keys are the other points"));
    }
    Ok((n, args.positive_int("batch")?.unwrap_or(n)))
}

/// §64: each training point is a query whose keys and values are the other
/// points (leave-one-out); labels are the points' own values.
fn kernel_regression_schema(args: &Args) -> Result<Schema, Error> {
    let (n, batch) = kernel_regression_settings(args)?;
    let field = |name: &str, dims: Vec<usize>| Field { name: name.into(), dtype: DType::F32, dims };
    Ok(Schema { inputs: vec![field("queries", vec![]), field("keys", vec![n - 1]), field("values", vec![n - 1])], labels: vec![field("label", vec![])], batch })
}

fn open_kernel_regression(args: &Args) -> Result<Box<dyn Source>, Error> {
    let (n, batch) = kernel_regression_settings(args)?;
    let d = data::kernel_regression(n, derive_seed(args.opts.seed, Stream::Data));
    let (keys, values) = data::leave_one_out(&d.x_train, &d.y_train);
    let fields = vec![("queries".into(), Tensor::from_f32(&[n], d.x_train.clone())), ("keys".into(), keys), ("values".into(), values)];
    let train = TensorDataset::with_fields(fields, vec![("label".into(), Tensor::from_f32(&[n], d.y_train.clone()))])?;
    let mut source = TensorSource::new(format!("kernel_regression (§64: {n} noisy points of 2 sin x + x^0.8)"), train, None, batch, args)?;
    source.kernel_regression = Some(d);
    Ok(Box::new(source))
}

fn open_npy(args: &Args) -> Result<Box<dyn Source>, Error> {
    args.keys(&["features", "labels", "test_features", "test_labels", "batch"])?;
    let load = |features: &str, labels: &str| -> Result<Option<(TensorDataset, String)>, Error> {
        let (Some(inputs), Some(y)) = (args.named_paths(features)?, args.path(labels)?) else { return Ok(None) };
        let mut fields = Vec::new();
        for (name, path) in &inputs {
            fields.push((name.clone(), d2l_runtime::npy::read_npy(path).map_err(data::DataError::from)?));
        }
        let label = d2l_runtime::npy::read_npy(&y).map_err(data::DataError::from)?;
        let files: Vec<String> = inputs.iter().map(|(_, p)| p.display().to_string()).chain([y.display().to_string()]).collect();
        Ok(Some((TensorDataset::with_fields(fields, vec![("label".into(), label)])?, files.join(", "))))
    };
    let Some((train, files)) = load("features", "labels")? else {
        return Err(args.err(args.spec.span, "`npy` needs `features=\"x.npy\"` (or several inputs, `features=((\"name\", \"file.npy\"), ...)`) and `labels=\"y.npy\"`"));
    };
    let test = match (args.value("test_features"), args.value("test_labels")) {
        (Some(_), Some(_)) => load("test_features", "test_labels")?.map(|(t, _)| t),
        (None, None) => None,
        _ => return Err(args.err(args.spec.span, "`test_features` and `test_labels` go together")),
    };
    Ok(Box::new(TensorSource::new(format!("npy ({files})"), train, test, args.batch()?, args)?))
}

fn open_csv(args: &Args) -> Result<Box<dyn Source>, Error> {
    args.keys(&["path", "label", "classification", "test", "batch"])?;
    let path = args.required_path("path")?;
    let label = args.string("label")?.ok_or_else(|| args.err(args.spec.span, "`csv` needs the name of its label column, `label=\"...\"`"))?;
    let kind = if args.flag("classification")? { data::LabelKind::Classification } else { data::LabelKind::Regression };
    let train = data::load_csv_dataset(&path, &label, kind)?;
    let test = args.path("test")?.map(|p| data::load_csv_dataset(&p, &label, kind)).transpose()?;
    let description = format!("csv ({}, label `{label}`)", path.display());
    Ok(Box::new(TensorSource::new(description, train, test, args.batch()?, args)?))
}

// ---- text: a token corpus cut into subsequences ---------------------------------------------

/// A token corpus cut into `[batch, steps]` subsequences, each with the
/// next tokens as labels (the course's `load_data_time_machine`).
pub struct SequenceSource {
    description: String,
    loader: SeqDataLoader,
    vocab: Vocab,
    tokens: TokenKind,
    corpus_len: usize,
}

impl Source for SequenceSource {
    fn describe(&self) -> String {
        self.description.clone()
    }

    fn schema(&self) -> Schema {
        let o = self.loader.options();
        let field = |name: &str| Field { name: name.into(), dtype: DType::I64, dims: vec![o.num_steps] };
        Schema { inputs: vec![field("tokens")], labels: vec![field("label")], batch: o.batch_size }
    }

    fn train_len(&self) -> usize {
        self.corpus_len
    }

    fn test_len(&self) -> Option<usize> {
        None
    }

    fn train_batch_sizes(&self) -> Vec<usize> {
        vec![self.loader.options().batch_size]
    }

    fn eval_batch_sizes(&self) -> Vec<usize> {
        self.train_batch_sizes()
    }

    fn train_epoch(&self, epoch: u64) -> Result<Box<dyn BatchStream + '_>, Error> {
        Ok(Box::new(self.loader.epoch(epoch)))
    }

    fn train_eval(&self) -> Result<Box<dyn BatchStream + '_>, Error> {
        Ok(Box::new(self.loader.epoch(0)))
    }

    fn test(&self) -> Option<Result<Box<dyn BatchStream + '_>, Error>> {
        None
    }

    fn state_reset(&self) -> StateReset {
        match self.loader.options().sampling {
            Sampling::Sequential => StateReset::EveryEpoch,
            Sampling::Random => StateReset::EveryBatch,
        }
    }

    fn vocab(&self) -> Option<(&Vocab, TokenKind)> {
        Some((&self.vocab, self.tokens))
    }
}

fn text_settings(args: &Args) -> Result<(SeqOptions, TokenKind, Option<usize>), Error> {
    let steps = args.positive_int("steps")?.ok_or_else(|| args.err(args.spec.span, format!("`{}` needs the subsequence length `steps=N`", args.spec.name)))?;
    let sampling = if args.flag("random")? { Sampling::Random } else { Sampling::Sequential };
    let tokens = match args.string("tokens")?.as_deref() {
        None | Some("char") => TokenKind::Char,
        Some("word") => TokenKind::Word,
        Some(other) => return Err(args.err(args.value("tokens").map_or(args.spec.span, |(_, s)| *s), format!("`tokens` is \"char\" or \"word\", not \"{other}\""))),
    };
    let default_max = (args.spec.name == "time_machine").then_some(10_000);
    let max_tokens = args.positive_int("max_tokens")?.or(default_max);
    // `--limit N` keeps the first N tokens of the corpus.
    let max_tokens = match (max_tokens, args.opts.limit) {
        (Some(m), Some(l)) => Some(m.min(l)),
        (m, l) => m.or(l),
    };
    let opts = SeqOptions::new(args.batch()?, steps).sampling(sampling).seed(derive_seed(args.opts.seed, Stream::Shuffle));
    Ok((opts, tokens, max_tokens))
}

fn text_schema(args: &Args) -> Result<Schema, Error> {
    args.keys(&["path", "batch", "steps", "random", "max_tokens", "tokens"])?;
    let (opts, _, _) = text_settings(args)?;
    let field = |name: &str| Field { name: name.into(), dtype: DType::I64, dims: vec![opts.num_steps] };
    Ok(Schema { inputs: vec![field("tokens")], labels: vec![field("label")], batch: opts.batch_size })
}

fn open_text(args: &Args, path: &Path, what: String) -> Result<Box<dyn Source>, Error> {
    let (opts, tokens, max_tokens) = text_settings(args)?;
    let (corpus, vocab) = data::text::load_corpus(path, tokens, max_tokens)?;
    let loader = SeqDataLoader::new(&corpus, opts)?;
    let sampling = match loader.options().sampling {
        Sampling::Sequential => "sequential partitioning",
        Sampling::Random => "random sampling",
    };
    let description = format!("{what}: {} tokens, vocabulary of {}, {sampling}", corpus.len(), vocab.len());
    Ok(Box::new(SequenceSource { description, loader, vocab, tokens, corpus_len: corpus.len() }))
}

fn open_time_machine(args: &Args) -> Result<Box<dyn Source>, Error> {
    args.keys(&["batch", "steps", "random", "max_tokens", "tokens"])?;
    let dir = args.dataset_dir("time-machine")?;
    open_text(args, &dir.join(data::text::TIME_MACHINE_FILE), format!("time_machine ({})", dir.display()))
}

fn open_text_file(args: &Args) -> Result<Box<dyn Source>, Error> {
    args.keys(&["path", "batch", "steps", "random", "max_tokens", "tokens"])?;
    let path = args.required_path("path")?;
    open_text(args, &path, format!("text_file ({})", path.display()))
}

// ---- sentence pairs: machine translation ----------------------------------------------

fn nmt_settings(args: &Args) -> Result<(usize, usize), Error> {
    args.keys(&["batch", "steps", "examples", "path"])?;
    Ok((args.positive_int("steps")?.unwrap_or(10), args.positive_int("examples")?.unwrap_or(600)))
}

/// Per example: the source sentence and its valid length, the decoder's
/// input (`<bos>` and the target shifted right: teacher forcing, built
/// here so that models need no shift), then the labels: the target and
/// its valid length, what `masked_softmax_ce(pred, tgt, tgt_len)` takes.
fn nmt_schema(args: &Args) -> Result<Schema, Error> {
    let (steps, _) = nmt_settings(args)?;
    let tokens = |name: &str| Field { name: name.into(), dtype: DType::I64, dims: vec![steps] };
    let length = |name: &str| Field { name: name.into(), dtype: DType::I64, dims: vec![] };
    Ok(Schema { inputs: vec![tokens("src"), length("src_len"), tokens("dec_in")], labels: vec![tokens("tgt"), length("tgt_len")], batch: args.batch()? })
}

/// The course's `load_data_nmt` (§60) on `fra.txt` of the `fra-eng`
/// dataset, or on `path=` (any file of tab-separated sentence pairs).
fn open_fra_eng(args: &Args) -> Result<Box<dyn Source>, Error> {
    let (steps, examples) = nmt_settings(args)?;
    let path = match args.path("path")? {
        Some(p) => p,
        None => args.dataset_dir("fra-eng")?.join(data::nmt::FRA_ENG_FILE),
    };
    let nmt = data::load_data_nmt(&path, steps, Some(examples))?;
    let description = format!(
        "fra_eng ({}): {} sentence pairs, source vocabulary of {}, target vocabulary of {}",
        path.display(),
        nmt.len(),
        nmt.src_vocab.len(),
        nmt.tgt_vocab.len()
    );
    let inputs = vec![("src".to_string(), nmt.src.clone()), ("src_len".into(), nmt.src_len.clone()), ("dec_in".into(), nmt.decoder_input())];
    let labels = vec![("tgt".to_string(), nmt.tgt.clone()), ("tgt_len".into(), nmt.tgt_len.clone())];
    let train = TensorDataset::with_fields(inputs, labels)?;
    let mut source = TensorSource::new(description, train, None, args.batch()?, args)?;
    source.pairs = Some(SentencePairs { src_vocab: nmt.src_vocab, tgt_vocab: nmt.tgt_vocab, steps });
    Ok(Box::new(source))
}

// ---- BERT pretraining: WikiText-2 sentence pairs ---------------------------------------

fn wikitext2_settings(args: &Args) -> Result<(usize, usize), Error> {
    args.keys(&["batch", "max_len", "path"])?;
    let max_len = args.positive_int("max_len")?.unwrap_or(64);
    if max_len < 5 {
        return Err(args.err(args.value("max_len").map_or(args.spec.span, |(_, s)| *s), "`max_len` must be at least 5: `<cls>`, two `<sep>` and a word of each sentence"));
    }
    Ok((max_len, data::wiki::max_mlm_preds(max_len)))
}

/// Per example, the seven arrays of the course's `load_data_wiki` (§69):
/// the model's inputs (the pair's tokens and segments, its valid length,
/// the positions to predict), then the labels (the positions' weights,
/// 1 for a real prediction and 0 for padding, the original tokens there,
/// and whether B follows A).
fn wikitext2_schema(args: &Args) -> Result<Schema, Error> {
    let (max_len, preds) = wikitext2_settings(args)?;
    let field = |name: &str, dtype: DType, dims: Vec<usize>| Field { name: name.into(), dtype, dims };
    Ok(Schema {
        inputs: vec![field("tokens", DType::I64, vec![max_len]), field("segments", DType::I64, vec![max_len]), field("valid_lens", DType::I64, vec![]), field("pred_positions", DType::I64, vec![preds])],
        labels: vec![field("mlm_weights", DType::F32, vec![preds]), field("mlm_labels", DType::I64, vec![preds]), field("nsp_labels", DType::I64, vec![])],
        batch: args.batch()?,
    })
}

/// The course's `load_data_wiki`: WikiText-2's training text (or `path=`,
/// a file or a folder), paragraphs shuffled by `--seed`, next-sentence
/// pairs and masked-LM targets drawn once, as `_WikiTextDataset` does.
fn open_wikitext2(args: &Args) -> Result<Box<dyn Source>, Error> {
    let (max_len, _) = wikitext2_settings(args)?;
    let path = match args.path("path")? {
        Some(p) => p,
        None => args.dataset_dir("wikitext-2")?,
    };
    let wiki = data::wiki::load_data_wiki(&path, max_len, derive_seed(args.opts.seed, Stream::Data))?;
    let description = format!(
        "wikitext2 ({}): {} paragraphs, {} sentence pairs ({} longer than {max_len} tokens skipped), vocabulary of {}",
        path.display(),
        wiki.paragraphs,
        wiki.tokens.dims()[0],
        wiki.skipped,
        wiki.vocab.len()
    );
    let inputs = vec![("tokens".to_string(), wiki.tokens), ("segments".into(), wiki.segments), ("valid_lens".into(), wiki.valid_lens), ("pred_positions".into(), wiki.pred_positions)];
    let labels = vec![("mlm_weights".to_string(), wiki.mlm_weights), ("mlm_labels".into(), wiki.mlm_labels), ("nsp_labels".into(), wiki.nsp_labels)];
    let train = TensorDataset::with_fields(inputs, labels)?;
    let mut source = TensorSource::new(description, train, None, args.batch()?, args)?;
    source.bert_vocab = Some((wiki.vocab, max_len));
    Ok(Box::new(source))
}
