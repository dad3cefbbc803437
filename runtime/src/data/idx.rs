//! IDX files (the MNIST / Fashion-MNIST format), gzipped or raw.
//!
//! Layout: a 4-byte magic `00 00 TT NN` (TT = element type, 0x08 for
//! unsigned bytes; NN = number of dimensions), NN big-endian u32 sizes, then
//! exactly prod(sizes) elements. Images are `0x00000803` [n, rows, cols],
//! labels `0x00000801` [n].

use std::io::{self, Read};
use std::path::{Path, PathBuf};

use flate2::read::MultiGzDecoder;

use super::DataError;
use super::batches::TensorDataset;
use crate::Tensor;

/// Class names in label order, as the course's `get_fashion_mnist_labels`.
pub const FASHION_MNIST_CLASSES: [&str; 10] = [
    "t-shirt",
    "trouser",
    "pullover",
    "dress",
    "coat",
    "sandal",
    "shirt",
    "sneaker",
    "bag",
    "ankle boot",
];

/// Which half of an MNIST-like dataset to load.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Split {
    Train,
    Test,
}

impl Split {
    /// The file-name prefix the IDX distributions use.
    pub fn prefix(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Test => "t10k",
        }
    }
}

/// What an IDX file is expected to hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IdxKind {
    /// `0x00000803`: [n, rows, cols] unsigned bytes.
    Images,
    /// `0x00000801`: [n] unsigned bytes.
    Labels,
}

impl IdxKind {
    fn ndims(self) -> u8 {
        match self {
            IdxKind::Images => 3,
            IdxKind::Labels => 1,
        }
    }

    fn describe(self) -> &'static str {
        match self {
            IdxKind::Images => "0x00000803 (IDX images: unsigned bytes, 3 dimensions)",
            IdxKind::Labels => "0x00000801 (IDX labels: unsigned bytes, 1 dimension)",
        }
    }
}

/// A parsed IDX array of unsigned bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdxArray {
    pub dims: Vec<usize>,
    pub data: Vec<u8>,
}

/// Images with their labels, as stored (pixels 0..=255, row-major
/// [n, rows, cols]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageDataset {
    pub images: Vec<u8>,
    pub labels: Vec<u8>,
    pub n: usize,
    pub rows: usize,
    pub cols: usize,
}

impl ImageDataset {
    /// Pixels of image `i` (row-major rows x cols). Panics if `i >= n`.
    pub fn image(&self, i: usize) -> &[u8] {
        let size = self.rows * self.cols;
        &self.images[i * size..(i + 1) * size]
    }

    /// How many examples each of the 10 classes has.
    pub fn class_counts(&self) -> [usize; 10] {
        let mut counts = [0; 10];
        for &l in &self.labels {
            counts[usize::from(l).min(9)] += 1;
        }
        counts
    }

    /// As `ToTensor` does: features f32 [n, 1, rows, cols] scaled to [0, 1],
    /// labels i64 [n].
    pub fn to_tensor_dataset(&self) -> TensorDataset {
        let x: Vec<f32> = self.images.iter().map(|&p| f32::from(p) / 255.0).collect();
        let y: Vec<i64> = self.labels.iter().map(|&l| i64::from(l)).collect();
        TensorDataset::new(
            Tensor::from_f32(&[self.n, 1, self.rows, self.cols], x),
            Tensor::from_i64(&[self.n], y),
        )
        .expect("an ImageDataset's images and labels agree")
    }
}

/// Parses an IDX file's bytes (gzip-compressed or raw, told apart by the
/// gzip magic `1f 8b`). `path` is only used in error messages.
pub fn parse_idx(bytes: &[u8], path: &Path, kind: IdxKind) -> Result<IdxArray, DataError> {
    if bytes.starts_with(&[0x1f, 0x8b]) {
        parse_stream(MultiGzDecoder::new(bytes), path, kind, true)
    } else {
        parse_stream(bytes, path, kind, false)
    }
}

/// Reads and parses an IDX file.
pub fn read_idx(path: &Path, kind: IdxKind) -> Result<IdxArray, DataError> {
    let bytes = std::fs::read(path).map_err(|e| DataError::io(path, e))?;
    parse_idx(&bytes, path, kind)
}

/// Reads into `buf` until it is full or the stream ends; returns the count.
fn read_up_to<R: Read>(r: &mut R, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match r.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

fn parse_stream<R: Read>(
    mut r: R,
    path: &Path,
    kind: IdxKind,
    gz: bool,
) -> Result<IdxArray, DataError> {
    let bad = |msg: String| DataError::Idx {
        path: path.to_path_buf(),
        msg,
    };
    let io_err = |e: io::Error| {
        if gz {
            DataError::Gzip {
                path: path.to_path_buf(),
                source: e,
            }
        } else {
            DataError::io(path, e)
        }
    };
    let what = if gz { "decompressed data" } else { "file" };

    let mut magic = [0u8; 4];
    let got = read_up_to(&mut r, &mut magic).map_err(io_err)?;
    if got < 4 {
        return Err(bad(format!(
            "{what} is too short for an IDX header: expected at least 4 bytes of magic number, found {got}"
        )));
    }
    let want_ndims = kind.ndims();
    if magic[0] != 0 || magic[1] != 0 || magic[2] != 0x08 || magic[3] != want_ndims {
        let found = u32::from_be_bytes(magic);
        let mut msg = format!(
            "bad magic number 0x{found:08x}, expected {}",
            kind.describe()
        );
        if magic[..3] == [0, 0, 0x08] && (magic[3] == 1 || magic[3] == 3) {
            let other = if magic[3] == 1 { "a label" } else { "an image" };
            msg += &format!("; this looks like {other} file (were the file names swapped?)");
        } else if magic[..2] == [0, 0] && magic[2] != 0x08 {
            msg += &format!(
                "; element type 0x{:02x} is not supported (only unsigned bytes, 0x08)",
                magic[2]
            );
        } else {
            msg += "; this is not an IDX file";
        }
        return Err(bad(msg));
    }

    let mut header = vec![0u8; 4 * usize::from(want_ndims)];
    let got = read_up_to(&mut r, &mut header).map_err(io_err)?;
    if got < header.len() {
        return Err(bad(format!(
            "{what} ends inside the IDX header: expected {} bytes of dimension sizes, found {got}",
            header.len()
        )));
    }
    let dims: Vec<usize> = header
        .chunks_exact(4)
        .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]) as usize)
        .collect();
    let dims_text = dims
        .iter()
        .map(|d| d.to_string())
        .collect::<Vec<_>>()
        .join("x");
    let expected = dims
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| bad(format!("dimensions {dims_text} overflow the address space")))?;
    if kind == IdxKind::Images && (dims[1] == 0 || dims[2] == 0) {
        return Err(bad(format!(
            "images of size {}x{} are empty",
            dims[1], dims[2]
        )));
    }

    // Never trust the header for the allocation size: grow as data arrives.
    let mut data = Vec::with_capacity(expected.min(1 << 26));
    (&mut r)
        .take(expected as u64)
        .read_to_end(&mut data)
        .map_err(io_err)?;
    let header_len = 4 + header.len();
    if data.len() < expected {
        return Err(bad(format!(
            "truncated: the header ({dims_text}) promises {expected} bytes of data after the \
             {header_len}-byte header, but only {} bytes follow ({what})",
            data.len()
        )));
    }
    // Count what is left (capped, to bound the work on a hostile stream);
    // reading to the end also makes the gzip decoder check its CRC.
    let extra = io::copy(&mut (&mut r).take(1 << 30), &mut io::sink()).map_err(io_err)?;
    if extra > 0 {
        return Err(bad(format!(
            "{extra} unexpected bytes after the {expected} bytes of data the header ({dims_text}) \
             promises (trailing garbage, or a wrong count in the header)"
        )));
    }
    Ok(IdxArray { dims, data })
}

/// The first of `names` that exists in `dir`.
fn find_file(dir: &Path, names: &[String], what: &str) -> Result<PathBuf, DataError> {
    names
        .iter()
        .map(|n| dir.join(n))
        .find(|p| p.is_file())
        .ok_or_else(|| DataError::Idx {
            path: dir.to_path_buf(),
            msg: format!("no {what} file here; looked for {}", names.join(", ")),
        })
}

/// Loads one split of an MNIST-like dataset (Fashion-MNIST, MNIST) from
/// `dir`: `{train,t10k}-images-idx3-ubyte[.gz]` and
/// `{train,t10k}-labels-idx1-ubyte[.gz]` (also the `images.idx3-ubyte`
/// spelling some copies use). Checks that counts agree and labels are < 10.
pub fn load_mnist_like(dir: &Path, split: Split) -> Result<ImageDataset, DataError> {
    let p = split.prefix();
    let names = |kind: &str, nd: u8| {
        let mut v = Vec::new();
        for stem in [
            format!("{p}-{kind}-idx{nd}-ubyte"),
            format!("{p}-{kind}.idx{nd}-ubyte"),
        ] {
            v.push(format!("{stem}.gz"));
            v.push(stem);
        }
        v
    };
    let images_path = find_file(dir, &names("images", 3), &format!("{split:?} images"))?;
    let labels_path = find_file(dir, &names("labels", 1), &format!("{split:?} labels"))?;

    let images = read_idx(&images_path, IdxKind::Images)?;
    let labels = read_idx(&labels_path, IdxKind::Labels)?;
    let (n, rows, cols) = (images.dims[0], images.dims[1], images.dims[2]);
    if labels.dims[0] != n {
        return Err(DataError::Idx {
            path: labels_path,
            msg: format!(
                "has {} labels but {} has {n} images",
                labels.dims[0],
                images_path.display()
            ),
        });
    }
    if let Some((i, &l)) = labels.data.iter().enumerate().find(|&(_, &l)| l >= 10) {
        return Err(DataError::Idx {
            path: labels_path,
            msg: format!("label {l} at index {i} is out of range (expected 0..=9)"),
        });
    }
    Ok(ImageDataset {
        images: images.data,
        labels: labels.data,
        n,
        rows,
        cols,
    })
}
