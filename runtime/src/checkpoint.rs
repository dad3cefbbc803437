//! Checkpoints: named tensors plus string metadata in the safetensors
//! format (readable by PyTorch's `safetensors.torch.load_file`).

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use ndarray::{ArrayD, IxDyn};
use safetensors::tensor::{Dtype, View};
use safetensors::{SafeTensorError, SafeTensors};

use crate::Tensor;

/// What a checkpoint holds: tensors by name, and string metadata.
pub type Contents = (BTreeMap<String, Tensor>, BTreeMap<String, String>);

/// Why a checkpoint could not be saved or loaded.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("checkpoint {} does not exist", path.display())]
    NotFound { path: PathBuf },

    #[error("checkpoint {}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },

    #[error("checkpoint {} is not a valid safetensors file (corrupt or truncated?): {source}", path.display())]
    Corrupt {
        path: PathBuf,
        source: SafeTensorError,
    },

    /// A corruption found by our own checks before safetensors parses it.
    #[error("checkpoint {} is not a valid safetensors file (corrupt or truncated?): {msg}", path.display())]
    Malformed { path: PathBuf, msg: String },

    #[error(
        "checkpoint {}: tensor `{name}` has dtype {dtype}, which d2l cannot load (supported: F32, F64, I64, BOOL)",
        path.display()
    )]
    UnsupportedDtype {
        path: PathBuf,
        name: String,
        dtype: String,
    },

    #[error("checkpoint {}: tensor name `{name}` appears twice", path.display())]
    DuplicateName { path: PathBuf, name: String },

    #[error("checkpoint {}: could not encode: {source}", path.display())]
    Encode {
        path: PathBuf,
        source: SafeTensorError,
    },
}

/// A tensor's bytes as safetensors wants them (little-endian, row-major).
struct Encoded {
    dtype: Dtype,
    shape: Vec<usize>,
    data: Vec<u8>,
}

impl View for &Encoded {
    fn dtype(&self) -> Dtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(&self.data)
    }
    fn data_len(&self) -> usize {
        self.data.len()
    }
}

fn encode(t: &Tensor) -> Encoded {
    // `iter()` walks in logical row-major order whatever the memory layout.
    let (dtype, data): (Dtype, Vec<u8>) = match t {
        Tensor::F32(a) => (Dtype::F32, a.iter().flat_map(|x| x.to_le_bytes()).collect()),
        Tensor::F64(a) => (Dtype::F64, a.iter().flat_map(|x| x.to_le_bytes()).collect()),
        Tensor::I64(a) => (Dtype::I64, a.iter().flat_map(|x| x.to_le_bytes()).collect()),
        Tensor::Bool(a) => (Dtype::BOOL, a.iter().map(|&x| u8::from(x)).collect()),
    };
    Encoded {
        dtype,
        shape: t.shape().0,
        data,
    }
}

/// Saves tensors and metadata to `path` atomically: the bytes go to
/// `<path>.tmp`, are fsynced, then renamed over `path`. If anything fails,
/// the previous file at `path` (if any) is untouched and the temp file is
/// removed.
pub fn save(
    path: impl AsRef<Path>,
    tensors: &[(String, &Tensor)],
    metadata: &BTreeMap<String, String>,
) -> Result<(), CheckpointError> {
    let path = path.as_ref();
    let mut seen = std::collections::HashSet::new();
    if let Some((name, _)) = tensors.iter().find(|(name, _)| !seen.insert(name.as_str())) {
        return Err(CheckpointError::DuplicateName {
            path: path.to_path_buf(),
            name: name.clone(),
        });
    }
    let encoded: Vec<(String, Encoded)> = tensors
        .iter()
        .map(|(name, t)| (name.clone(), encode(t)))
        .collect();
    let meta: Option<HashMap<String, String>> = (!metadata.is_empty()).then(|| {
        metadata
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    });
    let bytes = safetensors::serialize(encoded.iter().map(|(n, e)| (n.as_str(), e)), meta)
        .map_err(|source| CheckpointError::Encode {
            path: path.to_path_buf(),
            source,
        })?;
    crate::files::write_atomic(path, &bytes).map_err(|source| CheckpointError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// Loads every tensor and the metadata (`__metadata__`) of a checkpoint.
pub fn load(path: impl AsRef<Path>) -> Result<Contents, CheckpointError> {
    let path = path.as_ref();
    let bytes = fs::read(path).map_err(|source| match source.kind() {
        io::ErrorKind::NotFound => CheckpointError::NotFound {
            path: path.to_path_buf(),
        },
        _ => CheckpointError::Io {
            path: path.to_path_buf(),
            source,
        },
    })?;
    parse(&bytes, path)
}

/// Parses checkpoint bytes; `path` is only used in error messages.
pub fn parse(bytes: &[u8], path: &Path) -> Result<Contents, CheckpointError> {
    precheck(bytes).map_err(|msg| CheckpointError::Malformed {
        path: path.to_path_buf(),
        msg,
    })?;
    let corrupt = |source| CheckpointError::Corrupt {
        path: path.to_path_buf(),
        source,
    };
    let (_, header) = SafeTensors::read_metadata(bytes).map_err(corrupt)?;
    let st = SafeTensors::deserialize(bytes).map_err(corrupt)?;

    let mut tensors = BTreeMap::new();
    for (name, view) in st.iter() {
        let shape = IxDyn(view.shape());
        let data = view.data();
        let tensor = match view.dtype() {
            Dtype::F32 => {
                ArrayD::from_shape_vec(shape.clone(), data.chunks_exact(4).map(le_f32).collect())
                    .map(Tensor::F32)
            }
            Dtype::F64 => {
                ArrayD::from_shape_vec(shape.clone(), data.chunks_exact(8).map(le_f64).collect())
                    .map(Tensor::F64)
            }
            Dtype::I64 => {
                ArrayD::from_shape_vec(shape.clone(), data.chunks_exact(8).map(le_i64).collect())
                    .map(Tensor::I64)
            }
            Dtype::BOOL => {
                ArrayD::from_shape_vec(shape.clone(), data.iter().map(|&b| b != 0).collect())
                    .map(Tensor::Bool)
            }
            other => {
                return Err(CheckpointError::UnsupportedDtype {
                    path: path.to_path_buf(),
                    name: name.to_string(),
                    dtype: format!("{other:?}"),
                });
            }
        }
        .map_err(|e| CheckpointError::Malformed {
            path: path.to_path_buf(),
            msg: format!("tensor `{name}`: {e}"),
        })?;
        tensors.insert(name.to_string(), tensor);
    }
    let metadata = header
        .metadata()
        .as_ref()
        .map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect());
    Ok((tensors, metadata.unwrap_or_default()))
}

fn le_f32(c: &[u8]) -> f32 {
    f32::from_le_bytes([c[0], c[1], c[2], c[3]])
}

fn le_f64(c: &[u8]) -> f64 {
    f64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]])
}

fn le_i64(c: &[u8]) -> i64 {
    i64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]])
}

/// Checks the header's data offsets against the file length before handing
/// the bytes to safetensors, whose own check adds offsets that a hostile
/// header can make overflow. Also gives a plainer message for truncation.
fn precheck(bytes: &[u8]) -> Result<(), String> {
    let Some(len_bytes) = bytes.get(..8) else {
        return Err(format!(
            "the file has {} bytes, fewer than the 8-byte header length",
            bytes.len()
        ));
    };
    let n = u64::from_le_bytes(len_bytes.try_into().expect("8 bytes"));
    let available = bytes.len() as u64 - 8;
    if n > available {
        return Err(format!(
            "the header claims {n} bytes but only {available} bytes follow the length field"
        ));
    }
    let header = &bytes[8..8 + n as usize];
    let data_len = available - n;
    // Anything unparsable is left for safetensors to report.
    let Ok(serde_json::Value::Object(map)) = serde_json::from_slice::<serde_json::Value>(header)
    else {
        return Ok(());
    };
    for (name, info) in &map {
        if name == "__metadata__" {
            continue;
        }
        let end = info
            .get("data_offsets")
            .and_then(|o| o.get(1))
            .and_then(|e| e.as_u64());
        if let Some(end) = end
            && end > data_len
        {
            return Err(format!(
                "tensor `{name}` needs data up to byte {end} but the file has only {data_len} bytes of data (truncated?)"
            ));
        }
    }
    Ok(())
}
