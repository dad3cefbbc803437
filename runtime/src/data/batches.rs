//! Minibatches over in-memory tensors: the course's `data_iter` /
//! `DataLoader(shuffle=...)`, plus the image transforms its loaders use
//! (`Resize` and `RandomHorizontalFlip`).

use ndarray::{ArrayD, IxDyn};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

use super::DataError;
use crate::Tensor;

/// Examples held as named tensors whose first dimension indexes the
/// example: the model's inputs (e.g. f32 features [N, ...]; tokens and
/// valid lengths) and then the labels the loss takes (e.g. i64 classes [N]
/// or f32 targets [N, k]).
#[derive(Clone, Debug, PartialEq)]
pub struct TensorDataset {
    fields: Vec<(String, Tensor)>,
    /// How many of `fields`, from the first, are model inputs.
    inputs: usize,
}

impl TensorDataset {
    /// Features named `x` and labels named `label`; both need rank >= 1 and
    /// the same first dimension.
    pub fn new(features: Tensor, labels: Tensor) -> Result<TensorDataset, DataError> {
        TensorDataset::with_fields(vec![("x".into(), features)], vec![("label".into(), labels)])
    }

    /// Named inputs and labels (at least one of each), all with the same
    /// number of examples. Stored in row-major layout so rows copy as slices.
    pub fn with_fields(inputs: Vec<(String, Tensor)>, labels: Vec<(String, Tensor)>) -> Result<TensorDataset, DataError> {
        if inputs.is_empty() || labels.is_empty() {
            return Err(DataError::Invalid("a dataset needs at least one input and one label tensor".into()));
        }
        let n_inputs = inputs.len();
        let fields: Vec<(String, Tensor)> = inputs.into_iter().chain(labels).map(|(n, t)| (n, standard_layout(t))).collect();
        let describe = |fields: &[(String, Tensor)]| fields.iter().map(|(n, t)| format!("{n} {:?}", t.shape().0)).collect::<Vec<_>>().join(", ");
        if fields.iter().any(|(_, t)| t.shape().0.is_empty()) {
            return Err(DataError::Invalid(format!("every tensor of a dataset needs a leading example dimension; got {}", describe(&fields))));
        }
        let (first, n) = (&fields[0].0, fields[0].1.dims()[0]);
        if let Some((other, t)) = fields.iter().find(|(_, t)| t.dims()[0] != n) {
            return Err(DataError::Invalid(format!(
                "the tensors of a dataset need the same number of examples (first dimension): `{first}` has {n} examples (shape {:?}) but `{other}` has {} (shape {:?})",
                fields[0].1.dims(),
                t.dims()[0],
                t.dims()
            )));
        }
        for (i, (name, _)) in fields.iter().enumerate() {
            if fields[..i].iter().any(|(other, _)| other == name) {
                return Err(DataError::Invalid(format!("a dataset has two tensors named `{name}`")));
            }
        }
        Ok(TensorDataset { fields, inputs: n_inputs })
    }

    pub fn len(&self) -> usize {
        self.fields[0].1.dims()[0]
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The first input (the features of a features/labels dataset).
    pub fn features(&self) -> &Tensor {
        &self.fields[0].1
    }

    /// The first label.
    pub fn labels(&self) -> &Tensor {
        &self.fields[self.inputs].1
    }

    /// Every tensor by name: the inputs, then the labels.
    pub fn fields(&self) -> &[(String, Tensor)] {
        &self.fields
    }

    /// How many fields, from the first, are model inputs.
    pub fn input_count(&self) -> usize {
        self.inputs
    }

    /// The examples at `idx`, in that order (for k-fold splits and subsets).
    pub fn select(&self, idx: &[usize]) -> Result<TensorDataset, DataError> {
        let fields = self.fields.iter().map(|(n, t)| Ok((n.clone(), select_rows(t, idx)?))).collect::<Result<_, DataError>>()?;
        Ok(TensorDataset { fields, inputs: self.inputs })
    }

    /// The minibatches of one epoch. The order (and any random flips) depend
    /// only on `opts.seed` and `epoch`, so a run is reproducible.
    pub fn batches(&self, opts: &BatchOptions, epoch: u64) -> Result<Batches<'_>, DataError> {
        if opts.batch_size == 0 {
            return Err(DataError::Invalid("batch size must be at least 1".into()));
        }
        let fshape = self.features().shape().0;
        if opts.resize.is_some() || opts.random_hflip {
            if !matches!(self.features(), Tensor::F32(_)) || fshape.len() < 3 {
                return Err(DataError::Invalid(format!(
                    "resize and random flips need f32 image features [N, (C,) H, W]; got {} {fshape:?}",
                    self.features().dtype()
                )));
            }
            let (h, w) = (fshape[fshape.len() - 2], fshape[fshape.len() - 1]);
            if h == 0 || w == 0 {
                return Err(DataError::Invalid(format!(
                    "cannot transform empty {h}x{w} images"
                )));
            }
            if let Some((nh, nw)) = opts.resize
                && (nh == 0 || nw == 0)
            {
                return Err(DataError::Invalid(format!(
                    "cannot resize images to {nh}x{nw}"
                )));
            }
        }
        // Mix epoch into the seed so every epoch has its own order.
        let mut rng = StdRng::seed_from_u64(
            opts.seed ^ epoch.wrapping_add(1).wrapping_mul(0x9E37_79B9_7F4A_7C15),
        );
        let mut order: Vec<usize> = (0..self.len()).collect();
        if opts.shuffle {
            order.shuffle(&mut rng);
        }
        if opts.drop_last {
            order.truncate(self.len() - self.len() % opts.batch_size);
        }
        Ok(Batches {
            data: self,
            order,
            pos: 0,
            opts: opts.clone(),
            rng,
            scratch: Vec::new(),
        })
    }
}

/// How to cut a dataset into minibatches.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BatchOptions {
    pub batch_size: usize,
    /// Reshuffle every epoch (training) or keep file order (evaluation).
    pub shuffle: bool,
    /// Drop the last batch if it is smaller than `batch_size`.
    pub drop_last: bool,
    pub seed: u64,
    /// Bilinearly resize images to (height, width), as `Resize` does.
    pub resize: Option<(usize, usize)>,
    /// Flip each image left-right with probability 1/2.
    pub random_hflip: bool,
}

impl BatchOptions {
    /// Shuffled batches of `batch_size`, last partial batch kept, seed 0.
    pub fn new(batch_size: usize) -> BatchOptions {
        BatchOptions {
            batch_size,
            shuffle: true,
            drop_last: false,
            seed: 0,
            resize: None,
            random_hflip: false,
        }
    }
    pub fn shuffle(mut self, on: bool) -> Self {
        self.shuffle = on;
        self
    }
    pub fn drop_last(mut self, on: bool) -> Self {
        self.drop_last = on;
        self
    }
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }
    pub fn resize(mut self, height: usize, width: usize) -> Self {
        self.resize = Some((height, width));
        self
    }
    pub fn random_hflip(mut self, on: bool) -> Self {
        self.random_hflip = on;
        self
    }
}

/// One epoch of (features, labels) minibatches. Use it as an iterator, or
/// call [`Batches::next_into`] to refill the same tensors batch after batch
/// without allocating.
pub struct Batches<'a> {
    data: &'a TensorDataset,
    order: Vec<usize>,
    pos: usize,
    opts: BatchOptions,
    rng: StdRng,
    /// Gathered pixels before resizing (reused across batches).
    scratch: Vec<f32>,
}

impl Batches<'_> {
    /// Batches left in this epoch.
    pub fn remaining(&self) -> usize {
        (self.order.len() - self.pos).div_ceil(self.opts.batch_size)
    }

    /// Writes the next batch of every field into `fields` (one tensor per
    /// field, in the dataset's order), reusing their storage when the dtype
    /// matches; returns false when the epoch is over. The image transforms
    /// apply to the first field.
    pub fn next_fields(&mut self, fields: &mut [Tensor]) -> bool {
        if self.pos >= self.order.len() {
            return false;
        }
        assert_eq!(fields.len(), self.data.fields.len(), "one tensor per field of the dataset");
        let (start, end) = (self.pos, (self.pos + self.opts.batch_size).min(self.order.len()));
        self.pos = end;
        let idx = &self.order[start..end];
        for (k, out) in fields.iter_mut().enumerate().skip(1) {
            *out = gather(&self.data.fields[k].1, idx, std::mem::replace(out, placeholder()));
        }
        let reuse = std::mem::replace(&mut fields[0], placeholder());
        fields[0] = if self.opts.resize.is_none() && !self.opts.random_hflip {
            gather(self.data.features(), idx, reuse)
        } else {
            self.transform_images(start..end, reuse)
        };
        true
    }

    /// [`Batches::next_fields`] for a features/labels dataset.
    pub fn next_into(&mut self, x: &mut Tensor, y: &mut Tensor) -> bool {
        let mut pair = [std::mem::replace(x, placeholder()), std::mem::replace(y, placeholder())];
        let more = self.next_fields(&mut pair);
        let [a, b] = pair;
        (*x, *y) = (a, b);
        more
    }

    /// Gathers, resizes and flips a batch of f32 images [b, C.., H, W].
    fn transform_images(&mut self, range: std::ops::Range<usize>, reuse: Tensor) -> Tensor {
        let idx = &self.order[range];
        let Tensor::F32(src) = self.data.features() else {
            unreachable!("checked in batches()")
        };
        let shape = src.shape();
        let (h, w) = (shape[shape.len() - 2], shape[shape.len() - 1]);
        let (nh, nw) = self.opts.resize.unwrap_or((h, w));
        let row = shape[1..].iter().product::<usize>();
        let channels = row / (h * w);
        let src = src
            .as_slice()
            .expect("TensorDataset stores row-major tensors");

        let mut out = match reuse {
            Tensor::F32(a) => a.into_raw_vec_and_offset().0,
            _ => Vec::new(),
        };
        out.clear();
        out.reserve(idx.len() * channels * nh * nw);
        if (nh, nw) == (h, w) {
            for &i in idx {
                out.extend_from_slice(&src[i * row..(i + 1) * row]);
            }
        } else {
            self.scratch.clear();
            for &i in idx {
                self.scratch.extend_from_slice(&src[i * row..(i + 1) * row]);
            }
            for plane in self.scratch.chunks_exact(h * w) {
                resize_bilinear_into(plane, h, w, nh, nw, &mut out);
            }
        }
        if self.opts.random_hflip {
            random_hflip(&mut out, channels, nh, nw, &mut self.rng);
        }
        let mut out_shape = shape.to_vec();
        out_shape[0] = idx.len();
        let n = out_shape.len();
        out_shape[n - 2] = nh;
        out_shape[n - 1] = nw;
        Tensor::F32(
            ArrayD::from_shape_vec(IxDyn(&out_shape), out).expect("batch buffer matches its shape"),
        )
    }
}

/// A throwaway value to move a tensor's storage out of a `&mut Tensor`.
fn placeholder() -> Tensor {
    Tensor::Bool(ArrayD::default(IxDyn(&[0])))
}

impl Iterator for Batches<'_> {
    type Item = (Tensor, Tensor);

    fn next(&mut self) -> Option<(Tensor, Tensor)> {
        let (mut x, mut y) = (placeholder(), placeholder());
        self.next_into(&mut x, &mut y).then_some((x, y))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.remaining(), Some(self.remaining()))
    }
}

impl ExactSizeIterator for Batches<'_> {}

fn standard_layout(t: Tensor) -> Tensor {
    match t {
        Tensor::F32(a) if !a.is_standard_layout() => {
            Tensor::F32(a.as_standard_layout().into_owned())
        }
        Tensor::F64(a) if !a.is_standard_layout() => {
            Tensor::F64(a.as_standard_layout().into_owned())
        }
        Tensor::I64(a) if !a.is_standard_layout() => {
            Tensor::I64(a.as_standard_layout().into_owned())
        }
        Tensor::Bool(a) if !a.is_standard_layout() => {
            Tensor::Bool(a.as_standard_layout().into_owned())
        }
        t => t,
    }
}

/// Copies rows `idx` of a row-major `src` into `reuse`'s storage (when it
/// has the same dtype): one memcpy per row, no per-element work.
fn gather(src: &Tensor, idx: &[usize], reuse: Tensor) -> Tensor {
    let dims = src.dims();
    let row: usize = dims[1..].iter().product();
    // The batch's shape without a heap allocation (IxDyn keeps up to 4 dims
    // inline), so that a training step allocates nothing.
    let mut small = [0usize; 8];
    let owned;
    let out_shape: &[usize] = if dims.len() <= small.len() {
        small[..dims.len()].copy_from_slice(dims);
        small[0] = idx.len();
        &small[..dims.len()]
    } else {
        let mut v = dims.to_vec();
        v[0] = idx.len();
        owned = v;
        &owned
    };
    macro_rules! go {
        ($variant:ident, $a:expr) => {{
            let s = $a
                .as_slice()
                .expect("TensorDataset stores row-major tensors");
            let mut buf = match reuse {
                Tensor::$variant(b) => b.into_raw_vec_and_offset().0,
                _ => Vec::new(),
            };
            buf.clear();
            buf.reserve(idx.len() * row);
            for &i in idx {
                buf.extend_from_slice(&s[i * row..(i + 1) * row]);
            }
            Tensor::$variant(
                ArrayD::from_shape_vec(IxDyn(out_shape), buf)
                    .expect("batch buffer matches its shape"),
            )
        }};
    }
    match src {
        Tensor::F32(a) => go!(F32, a),
        Tensor::F64(a) => go!(F64, a),
        Tensor::I64(a) => go!(I64, a),
        Tensor::Bool(a) => go!(Bool, a),
    }
}

/// Rows `idx` (along the first dimension) of any tensor, in that order.
pub fn select_rows(t: &Tensor, idx: &[usize]) -> Result<Tensor, DataError> {
    let shape = t.shape().0;
    let Some(&n) = shape.first() else {
        return Err(DataError::Invalid(
            "cannot select rows of a scalar (rank-0) tensor".into(),
        ));
    };
    if let Some(&bad) = idx.iter().find(|&&i| i >= n) {
        return Err(DataError::Invalid(format!(
            "row index {bad} is out of range for {n} rows"
        )));
    }
    Ok(gather(&standard_layout(t.clone()), idx, placeholder()))
}

/// Resizes one `h` x `w` plane (row-major) to `new_h` x `new_w` by bilinear
/// interpolation, as torchvision's `Resize` on tensors does
/// (`interpolate(mode="bilinear", align_corners=False)`; no antialiasing, so
/// downscaling matches `antialias=False`; upscaling, the course's use, is
/// the same either way). Panics if `img.len() != h * w`.
pub fn resize_bilinear(img: &[f32], h: usize, w: usize, new_h: usize, new_w: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity(new_h * new_w);
    resize_bilinear_into(img, h, w, new_h, new_w, &mut out);
    out
}

/// Source taps for one output coordinate: (i0, i1, weight0, weight1).
fn taps(in_size: usize, out_size: usize) -> Vec<(usize, usize, f32, f32)> {
    // Same arithmetic as PyTorch's CPU kernel (in f32 for f32 data):
    // src = (dst + 0.5) * in/out - 0.5, clamped at 0.
    let scale = in_size as f32 / out_size as f32;
    (0..out_size)
        .map(|d| {
            let src = (scale * (d as f32 + 0.5) - 0.5).max(0.0);
            let i0 = (src as usize).min(in_size - 1);
            let i1 = if i0 + 1 < in_size { i0 + 1 } else { i0 };
            let l1 = (src - i0 as f32).clamp(0.0, 1.0);
            (i0, i1, 1.0 - l1, l1)
        })
        .collect()
}

fn resize_bilinear_into(
    img: &[f32],
    h: usize,
    w: usize,
    new_h: usize,
    new_w: usize,
    out: &mut Vec<f32>,
) {
    assert_eq!(
        img.len(),
        h * w,
        "resize_bilinear: image has {} values, not {h}x{w}",
        img.len()
    );
    if h == 0 || w == 0 {
        out.extend(std::iter::repeat_n(0.0, new_h * new_w));
        return;
    }
    let xs = taps(w, new_w);
    for (y0, y1, ly0, ly1) in taps(h, new_h) {
        let (r0, r1) = (&img[y0 * w..(y0 + 1) * w], &img[y1 * w..(y1 + 1) * w]);
        out.extend(xs.iter().map(|&(x0, x1, lx0, lx1)| {
            ly0 * (lx0 * r0[x0] + lx1 * r0[x1]) + ly1 * (lx0 * r1[x0] + lx1 * r1[x1])
        }));
    }
}

/// Mirrors one `h` x `w` plane left-right in place.
pub fn hflip(img: &mut [f32], h: usize, w: usize) {
    for row in img.chunks_exact_mut(w.max(1)).take(h) {
        row.reverse();
    }
}

/// Flips each image of `images` ([n, channels, h, w], row-major) left-right
/// with probability 1/2, all its channels together, as
/// `RandomHorizontalFlip` does; one draw from `rng` per image.
pub fn random_hflip(images: &mut [f32], channels: usize, h: usize, w: usize, rng: &mut impl Rng) {
    let plane = h * w;
    if plane == 0 || channels == 0 {
        return;
    }
    for image in images.chunks_exact_mut(channels * plane) {
        if rng.random_bool(0.5) {
            for p in image.chunks_exact_mut(plane) {
                hflip(p, h, w);
            }
        }
    }
}
