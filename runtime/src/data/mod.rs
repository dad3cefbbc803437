//! Data for the course's models: finding and fetching datasets, reading
//! IDX images (Fashion-MNIST, MNIST), the house-prices CSV, text corpora,
//! and generic `.npy` / CSV datasets, generating synthetic regression data,
//! and cutting any of them into minibatches.
//!
//! Every loader returns a [`DataError`] that names the file and says what
//! was expected and what was found; none of them panics on bad input.

pub mod arrays;
pub mod batches;
pub mod csv;
pub mod idx;
pub mod locate;
pub mod nmt;
pub mod synthetic;
pub mod text;
pub mod wiki;

use std::path::PathBuf;

pub use arrays::{LabelKind, load_csv_dataset, load_npy_dataset};
pub use batches::{
    BatchOptions, Batches, TensorDataset, random_hflip, resize_bilinear, select_rows,
};
pub use csv::{HousePrices, k_fold, load_house_prices};
pub use idx::{FASHION_MNIST_CLASSES, ImageDataset, Split, load_mnist_like};
pub use locate::{fetch, find_dataset, verify_checksum};
pub use nmt::{NmtData, load_data_nmt};
pub use synthetic::{KernelRegressionData, kernel_regression, leave_one_out, sine_series, synthetic_data};
pub use text::{
    Sampling, SeqBatches, SeqDataLoader, SeqOptions, TokenKind, Vocab, load_corpus,
    load_data_time_machine, read_lines, read_time_machine,
};
pub use wiki::{BertData, load_data_wiki};

/// Everything that can go wrong while locating, fetching, parsing or
/// batching data.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error(
        "dataset `{name}` not found; searched:\n{}\n{hint}",
        list_paths(searched)
    )]
    NotFound {
        name: String,
        searched: Vec<String>,
        hint: String,
    },

    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },

    #[error("{}: not a valid gzip stream (corrupt or truncated download?): {source}", path.display())]
    Gzip {
        path: PathBuf,
        source: std::io::Error,
    },

    /// A structurally invalid IDX file (bad magic, wrong size, bad labels...).
    #[error("{}: {msg}", path.display())]
    Idx { path: PathBuf, msg: String },

    /// A CSV syntax or content problem at a specific line (1-based).
    #[error("{}:{line}: {msg}", path.display())]
    Csv {
        path: PathBuf,
        line: usize,
        msg: String,
    },

    /// A CSV problem that is about the file as a whole (header, columns).
    #[error("{}: {msg}", path.display())]
    CsvFile { path: PathBuf, msg: String },

    #[error(
        "{}: {algorithm} checksum mismatch{}: expected {expected}, found {actual} \
         (the file is corrupt, truncated or a different version; delete it and fetch again)",
        path.display(),
        if *decompressed { " of the decompressed contents" } else { "" }
    )]
    Checksum {
        path: PathBuf,
        algorithm: &'static str,
        expected: String,
        actual: String,
        decompressed: bool,
    },

    /// A text file that is not UTF-8 or has no usable text.
    #[error("{}: {msg}", path.display())]
    Text { path: PathBuf, msg: String },

    #[error(transparent)]
    Npy(#[from] crate::npy::NpyError),

    #[error("fetching dataset `{name}`: {msg}")]
    Fetch { name: String, msg: String },

    /// A caller passed arguments that cannot work (mismatched lengths,
    /// batch size 0, k-fold with k < 2, ...).
    #[error("{0}")]
    Invalid(String),
}

fn list_paths(paths: &[String]) -> String {
    paths
        .iter()
        .map(|p| format!("  - {p}"))
        .collect::<Vec<_>>()
        .join("\n")
}

impl DataError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> DataError {
        DataError::Io {
            path: path.into(),
            source,
        }
    }
}
