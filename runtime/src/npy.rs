//! NumPy `.npy` files (format versions 1, 2 and 3), for feeding inputs to
//! `d2l run --input x.npy` and exchanging arrays with Python.
//!
//! Reads little-endian `<f4`, `<f8`, `<i8` and `|b1` as the matching
//! [`Tensor`] dtype, and `<i4`, `|u1` (and `|i1`) widened to i64. C order only.
//! Writes f32/f64/i64/bool with the same header bytes NumPy writes.

use std::path::{Path, PathBuf};

use ndarray::{ArrayD, IxDyn};

use crate::Tensor;

const MAGIC: &[u8; 6] = b"\x93NUMPY";
/// NumPy refuses headers above this size by default (`max_header_size`).
const MAX_HEADER_LEN: usize = 1 << 20;

/// Why a `.npy` file could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum NpyError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },

    #[error("{}: not a .npy file (expected the magic bytes \\x93NUMPY, found {found})", path.display())]
    NotNpy { path: PathBuf, found: String },

    #[error("{}: .npy format version {major}.{minor} is not supported (only 1.0, 2.0 and 3.0)", path.display())]
    Version { path: PathBuf, major: u8, minor: u8 },

    #[error("{}: bad .npy header: {msg}", path.display())]
    Header { path: PathBuf, msg: String },

    #[error(
        "{}: the array is stored in Fortran (column-major) order, which is not supported; \
         save it with np.save(path, np.ascontiguousarray(a))",
        path.display()
    )]
    FortranOrder { path: PathBuf },

    #[error(
        "{}: dtype {descr:?} is not supported{why} (supported: <f4, <f8, <i8, |b1, and <i4, |u1, |i1 read as i64)",
        path.display()
    )]
    Dtype {
        path: PathBuf,
        descr: String,
        why: String,
    },

    #[error("{}: {msg}", path.display())]
    Data { path: PathBuf, msg: String },
}

/// Reads a `.npy` file into a tensor.
pub fn read_npy(path: impl AsRef<Path>) -> Result<Tensor, NpyError> {
    let path = path.as_ref();
    let bytes = std::fs::read(path).map_err(|source| NpyError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    parse_npy(&bytes, path)
}

/// Writes a tensor as a `.npy` file, atomically: the data goes to
/// `<path>.tmp` in the same folder, is synced, then renamed over `path`, so
/// readers never see a half-written file and a failure leaves any old file.
pub fn write_npy(path: impl AsRef<Path>, tensor: &Tensor) -> Result<(), NpyError> {
    let path = path.as_ref();
    crate::files::write_atomic(path, &npy_bytes(tensor)).map_err(|source| NpyError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// The element layouts we read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Elem {
    F4,
    F8,
    I8,
    I4,
    U1,
    I1,
    B1,
}

impl Elem {
    fn size(self) -> usize {
        match self {
            Elem::F8 | Elem::I8 => 8,
            Elem::F4 | Elem::I4 => 4,
            Elem::U1 | Elem::I1 | Elem::B1 => 1,
        }
    }
}

fn parse_descr(descr: &str, path: &Path) -> Result<Elem, NpyError> {
    let unsupported = |why: &str| NpyError::Dtype {
        path: path.to_path_buf(),
        descr: descr.to_string(),
        why: why.into(),
    };
    // The byte-order mark is one character, which a corrupt header may make
    // a multi-byte one: split after it, not after its first byte.
    let (order, code) = descr.split_at(descr.chars().next().map_or(0, char::len_utf8));
    let elem = match code {
        "f4" => Elem::F4,
        "f8" => Elem::F8,
        "i8" => Elem::I8,
        "i4" => Elem::I4,
        "u1" => Elem::U1,
        "i1" => Elem::I1,
        "b1" => Elem::B1,
        _ => return Err(unsupported("")),
    };
    match order {
        "<" => Ok(elem),
        "|" if elem.size() == 1 => Ok(elem),
        // One-byte types have no byte order, so any marker means the same.
        ">" | "=" if elem.size() == 1 => Ok(elem),
        "=" if cfg!(target_endian = "little") => Ok(elem),
        ">" => Err(unsupported(
            " (big-endian; convert with a.astype(a.dtype.newbyteorder('<')))",
        )),
        _ => Err(unsupported("")),
    }
}

/// Parses `.npy` bytes. `path` is only used in error messages.
pub fn parse_npy(bytes: &[u8], path: &Path) -> Result<Tensor, NpyError> {
    let path_buf = || path.to_path_buf();
    let header_err = |msg: String| NpyError::Header {
        path: path_buf(),
        msg,
    };
    if bytes.len() < 8 || &bytes[..6] != MAGIC {
        let shown: String = bytes
            .iter()
            .take(8)
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(" ");
        let found = if bytes.is_empty() {
            "an empty file".to_string()
        } else {
            format!("bytes {shown}")
        };
        return Err(NpyError::NotNpy {
            path: path_buf(),
            found,
        });
    }
    let (major, minor) = (bytes[6], bytes[7]);
    let (len_size, utf8) = match (major, minor) {
        (1, 0) => (2, false),
        (2, 0) => (4, false),
        (3, 0) => (4, true),
        _ => {
            return Err(NpyError::Version {
                path: path_buf(),
                major,
                minor,
            });
        }
    };
    let Some(len_bytes) = bytes.get(8..8 + len_size) else {
        return Err(header_err("the file ends before the header length".into()));
    };
    let header_len = if len_size == 2 {
        u16::from_le_bytes([len_bytes[0], len_bytes[1]]) as usize
    } else {
        u32_le(len_bytes) as usize
    };
    if header_len > MAX_HEADER_LEN {
        return Err(header_err(format!(
            "header length {header_len} is implausibly large (limit {MAX_HEADER_LEN})"
        )));
    }
    let start = 8 + len_size;
    let Some(header) = bytes.get(start..start + header_len) else {
        return Err(header_err(format!(
            "the header should be {header_len} bytes but the file ends after {}",
            bytes.len() - start
        )));
    };
    // v1/v2 headers are latin-1, v3 UTF-8; the keys and values we accept
    // are ASCII either way.
    if utf8 && std::str::from_utf8(header).is_err() {
        return Err(header_err("a version 3 header must be UTF-8".into()));
    }
    let dict = HeaderParser { s: header, pos: 0 }
        .dict()
        .map_err(header_err)?;

    let elem = parse_descr(&dict.descr, path)?;
    if dict.fortran_order && dict.shape.iter().filter(|&&d| d > 1).count() > 1 {
        return Err(NpyError::FortranOrder { path: path_buf() });
    }
    let shape_text = format!("{:?}", dict.shape);
    let numel = dict
        .shape
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d));
    let Some(nbytes) = numel.and_then(|n| n.checked_mul(elem.size())) else {
        return Err(NpyError::Data {
            path: path_buf(),
            msg: format!("shape {shape_text} is too large"),
        });
    };
    let data = &bytes[start + header_len..];
    if data.len() != nbytes {
        let msg = if data.len() < nbytes {
            format!(
                "truncated: shape {shape_text} of {} needs {nbytes} bytes of data, found {}",
                dict.descr,
                data.len()
            )
        } else {
            format!(
                "{} unexpected bytes after the {nbytes} bytes of data that shape {shape_text} of {} needs",
                data.len() - nbytes,
                dict.descr
            )
        };
        return Err(NpyError::Data {
            path: path_buf(),
            msg,
        });
    }

    let shape = IxDyn(&dict.shape);
    let le8 = |c: &[u8]| [c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]];
    Ok(match elem {
        Elem::F4 => Tensor::F32(array(
            shape,
            data.chunks_exact(4)
                .map(|c| f32::from_bits(u32_le(c)))
                .collect(),
        )),
        Elem::F8 => Tensor::F64(array(
            shape,
            data.chunks_exact(8)
                .map(|c| f64::from_le_bytes(le8(c)))
                .collect(),
        )),
        Elem::I8 => Tensor::I64(array(
            shape,
            data.chunks_exact(8)
                .map(|c| i64::from_le_bytes(le8(c)))
                .collect(),
        )),
        Elem::I4 => Tensor::I64(array(
            shape,
            data.chunks_exact(4)
                .map(|c| i64::from(u32_le(c) as i32))
                .collect(),
        )),
        Elem::U1 => Tensor::I64(array(shape, data.iter().map(|&b| i64::from(b)).collect())),
        Elem::I1 => Tensor::I64(array(
            shape,
            data.iter().map(|&b| i64::from(b as i8)).collect(),
        )),
        Elem::B1 => Tensor::Bool(array(shape, data.iter().map(|&b| b != 0).collect())),
    })
}

fn array<T>(shape: IxDyn, values: Vec<T>) -> ArrayD<T> {
    ArrayD::from_shape_vec(shape, values).expect("data length checked against the shape")
}

fn u32_le(b: &[u8]) -> u32 {
    u32::from_le_bytes([b[0], b[1], b[2], b[3]])
}

/// The header dict's three required entries.
struct HeaderDict {
    descr: String,
    fortran_order: bool,
    shape: Vec<usize>,
}

/// A recursive-descent parser for the tiny Python-literal subset NumPy
/// writes: `{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }`.
struct HeaderParser<'a> {
    s: &'a [u8],
    pos: usize,
}

impl HeaderParser<'_> {
    fn skip_ws(&mut self) {
        while self.pos < self.s.len() && matches!(self.s[self.pos], b' ' | b'\t' | b'\n' | b'\r') {
            self.pos += 1;
        }
    }

    fn peek(&mut self) -> Option<u8> {
        self.skip_ws();
        self.s.get(self.pos).copied()
    }

    fn expect(&mut self, c: u8) -> Result<(), String> {
        match self.peek() {
            Some(x) if x == c => {
                self.pos += 1;
                Ok(())
            }
            Some(x) => Err(format!(
                "expected '{}' at byte {} of the header, found '{}'",
                c as char,
                self.pos,
                x.escape_ascii()
            )),
            None => Err(format!("expected '{}' but the header ends", c as char)),
        }
    }

    fn string(&mut self) -> Result<String, String> {
        let quote = match self.peek() {
            Some(q @ (b'\'' | b'"')) => q,
            _ => {
                return Err(format!(
                    "expected a quoted string at byte {} of the header",
                    self.pos
                ));
            }
        };
        self.pos += 1;
        let start = self.pos;
        while self.pos < self.s.len() && self.s[self.pos] != quote {
            if self.s[self.pos] == b'\\' {
                return Err("escapes in header strings are not supported".into());
            }
            self.pos += 1;
        }
        if self.pos >= self.s.len() {
            return Err("unterminated string in the header".into());
        }
        let text = String::from_utf8_lossy(&self.s[start..self.pos]).into_owned();
        self.pos += 1;
        Ok(text)
    }

    fn int(&mut self) -> Result<usize, String> {
        self.skip_ws();
        let start = self.pos;
        while self.pos < self.s.len() && self.s[self.pos].is_ascii_digit() {
            self.pos += 1;
        }
        let digits = std::str::from_utf8(&self.s[start..self.pos]).unwrap_or("");
        if digits.is_empty() {
            return Err(format!(
                "expected a non-negative integer in the shape at byte {start} of the header"
            ));
        }
        // Python 2 era files write longs as `3L`.
        if self.s.get(self.pos) == Some(&b'L') {
            self.pos += 1;
        }
        digits
            .parse()
            .map_err(|_| format!("shape entry {digits} is too large"))
    }

    /// What is at the cursor, for messages.
    fn found(&mut self) -> String {
        self.skip_ws();
        let rest = &self.s[self.pos.min(self.s.len())..];
        if rest.is_empty() {
            return "the end of the header".into();
        }
        // The token at the cursor: up to the next delimiter (at least 1 byte).
        let len = rest
            .iter()
            .take(20)
            .take_while(|b| !b",:})] \n".contains(b))
            .count()
            .max(1);
        format!("'{}'", rest[..len].escape_ascii())
    }

    fn descr(&mut self) -> Result<String, String> {
        match self.peek() {
            Some(b'[') => Err("structured (record) dtypes are not supported".into()),
            Some(b'\'' | b'"') => self.string(),
            _ => Err(format!(
                "'descr' must be a string like '<f4', found {}",
                self.found()
            )),
        }
    }

    fn bool(&mut self) -> Result<bool, String> {
        self.skip_ws();
        for (word, value) in [(&b"True"[..], true), (&b"False"[..], false)] {
            if self.s[self.pos..].starts_with(word) {
                self.pos += word.len();
                return Ok(value);
            }
        }
        Err(format!(
            "'fortran_order' must be True or False, found {}",
            self.found()
        ))
    }

    fn shape(&mut self) -> Result<Vec<usize>, String> {
        if self.peek() != Some(b'(') {
            return Err(format!(
                "'shape' must be a tuple like (2, 3), found {}",
                self.found()
            ));
        }
        self.pos += 1;
        let mut dims = Vec::new();
        loop {
            if self.peek() == Some(b')') {
                self.pos += 1;
                return Ok(dims);
            }
            dims.push(self.int()?);
            match self.peek() {
                Some(b',') => self.pos += 1,
                Some(b')') => {}
                _ => {
                    return Err(format!(
                        "expected ',' or ')' in the shape tuple, found {}",
                        self.found()
                    ));
                }
            }
            if dims.len() > 64 {
                return Err("the shape has more than 64 dimensions".into());
            }
        }
    }

    fn dict(mut self) -> Result<HeaderDict, String> {
        self.expect(b'{')?;
        let (mut descr, mut fortran, mut shape) = (None, None, None);
        loop {
            if self.peek() == Some(b'}') {
                self.pos += 1;
                break;
            }
            let key = self.string()?;
            self.expect(b':')?;
            match key.as_str() {
                "descr" => descr = Some(self.descr()?),
                "fortran_order" => fortran = Some(self.bool()?),
                "shape" => shape = Some(self.shape()?),
                _ => {
                    return Err(format!(
                        "unexpected key '{key}' (expected descr, fortran_order, shape)"
                    ));
                }
            }
            match self.peek() {
                Some(b',') => self.pos += 1,
                Some(b'}') => {}
                _ => {
                    let found = self.found();
                    return Err(format!(
                        "expected ',' or '}}' at byte {}, found {found}",
                        self.pos
                    ));
                }
            }
        }
        if self.peek().is_some() {
            return Err(format!(
                "unexpected text after the header dict at byte {}",
                self.pos
            ));
        }
        match (descr, fortran, shape) {
            (Some(descr), Some(fortran_order), Some(shape)) => Ok(HeaderDict {
                descr,
                fortran_order,
                shape,
            }),
            _ => Err(
                "the header dict must have the keys 'descr', 'fortran_order' and 'shape'".into(),
            ),
        }
    }
}

/// The complete `.npy` file for a tensor, byte for byte what
/// `np.save` writes for the same array (version 1.0 unless the header
/// needs more than 64 KiB).
pub fn npy_bytes(tensor: &Tensor) -> Vec<u8> {
    let (descr, data): (&str, Vec<u8>) = match tensor {
        Tensor::F32(a) => ("<f4", a.iter().flat_map(|x| x.to_le_bytes()).collect()),
        Tensor::F64(a) => ("<f8", a.iter().flat_map(|x| x.to_le_bytes()).collect()),
        Tensor::I64(a) => ("<i8", a.iter().flat_map(|x| x.to_le_bytes()).collect()),
        Tensor::Bool(a) => ("|b1", a.iter().map(|&x| u8::from(x)).collect()),
    };
    let shape = tensor.shape().0;
    let shape_repr = match shape.as_slice() {
        [] => "()".to_string(),
        [d] => format!("({d},)"),
        dims => format!(
            "({})",
            dims.iter()
                .map(|d| d.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    let mut dict =
        format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape_repr}, }}");
    // NumPy leaves room to grow the first axis in place (21 digits).
    if let Some(first) = shape.first() {
        dict.push_str(&" ".repeat(21usize.saturating_sub(first.to_string().len())));
    }
    // Pad with spaces and a final newline so the data starts at a multiple
    // of 64 bytes (NumPy always adds 1..=64 spaces).
    let hlen = dict.len() + 1;
    let pad_for = |prefix_len: usize| 64 - (prefix_len + hlen) % 64;
    // Version 1.0 stores the header length in a u16; 2.0 in a u32.
    let v1 = hlen + pad_for(10) <= usize::from(u16::MAX);
    let prefix_len = if v1 { 10 } else { 12 };
    let pad = pad_for(prefix_len);
    let mut out = Vec::with_capacity(prefix_len + hlen + pad + data.len());
    out.extend_from_slice(MAGIC);
    if v1 {
        out.extend_from_slice(&[1, 0]);
        out.extend_from_slice(&((hlen + pad) as u16).to_le_bytes());
    } else {
        out.extend_from_slice(&[2, 0]);
        out.extend_from_slice(&((hlen + pad) as u32).to_le_bytes());
    }
    out.extend_from_slice(dict.as_bytes());
    out.extend(std::iter::repeat_n(b' ', pad));
    out.push(b'\n');
    out.extend_from_slice(&data);
    out
}
