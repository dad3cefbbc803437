//! Generic datasets from files: a pair of `.npy` arrays, or a CSV table
//! with a label column.

use std::path::Path;

use super::csv::read_csv;
use super::{DataError, TensorDataset};
use crate::Tensor;
use crate::npy::read_npy;

/// Features and labels from two `.npy` files whose first dimensions (the
/// example counts) agree; any dtype [`read_npy`] reads.
pub fn load_npy_dataset(features: &Path, labels: &Path) -> Result<TensorDataset, DataError> {
    let (x, y) = (read_npy(features)?, read_npy(labels)?);
    let (xs, ys) = (x.dims(), y.dims());
    if xs.is_empty() || xs.first() != ys.first() {
        return Err(DataError::Invalid(format!(
            "{} has shape {xs:?} and {} has shape {ys:?}; features and labels need a \
             leading example dimension of the same size",
            features.display(),
            labels.display()
        )));
    }
    TensorDataset::new(x, y)
}

/// What the label column of a CSV dataset holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LabelKind {
    /// Numbers, as f32 labels [N, 1].
    Regression,
    /// Class indices (non-negative integers), as i64 labels [N].
    Classification,
}

/// A CSV file with a header: the column named `label_column` becomes the
/// labels (see [`LabelKind`]), every other column, in file order, a
/// feature, as f32 [N, columns - 1]. Every cell must be a finite number;
/// errors give `path:line` and the column.
pub fn load_csv_dataset(
    path: &Path,
    label_column: &str,
    kind: LabelKind,
) -> Result<TensorDataset, DataError> {
    let table = read_csv(path)?;
    let file_err = |msg: String| DataError::CsvFile {
        path: path.to_path_buf(),
        msg,
    };
    let label = match table
        .header
        .iter()
        .enumerate()
        .filter(|(_, h)| *h == label_column)
        .map(|(j, _)| j)
        .collect::<Vec<_>>()[..]
    {
        [j] => j,
        [] => {
            return Err(file_err(format!(
                "no label column {label_column:?}; the columns are {:?}",
                table.header
            )));
        }
        _ => {
            return Err(file_err(format!(
                "the label column {label_column:?} appears more than once in the header"
            )));
        }
    };
    if table.header.len() < 2 {
        return Err(file_err(format!(
            "only the label column {label_column:?}; expected feature columns too"
        )));
    }
    if table.rows.is_empty() {
        return Err(file_err("a header but no data rows".into()));
    }

    let (n, d) = (table.rows.len(), table.header.len() - 1);
    let mut features = Vec::with_capacity(n * d);
    let mut targets = Vec::new();
    let mut classes = Vec::new();
    for (row, &line) in table.rows.iter().zip(&table.lines) {
        let cell_err = |j: usize, what: &str| DataError::Csv {
            path: path.to_path_buf(),
            line,
            msg: format!("column {:?}: {what}", table.header[j]),
        };
        for (j, cell) in row.iter().enumerate() {
            let value = parse_number(cell).map_err(|what| cell_err(j, &what))?;
            if j != label {
                features.push(value as f32);
            } else if kind == LabelKind::Regression {
                targets.push(value as f32);
            } else if value >= 0.0 && value.fract() == 0.0 && value < 2f64.powi(53) {
                classes.push(value as i64);
            } else {
                return Err(cell_err(
                    j,
                    &format!("{cell:?} is not a class label (a non-negative integer)"),
                ));
            }
        }
    }
    let labels = match kind {
        LabelKind::Regression => Tensor::from_f32(&[n, 1], targets),
        LabelKind::Classification => Tensor::from_i64(&[n], classes),
    };
    TensorDataset::new(Tensor::from_f32(&[n, d], features), labels)
}

/// A finite number, or what is wrong with the cell.
fn parse_number(cell: &str) -> Result<f64, String> {
    let s = cell.trim();
    if s.is_empty() {
        return Err("empty cell (expected a number)".into());
    }
    match s.parse::<f64>() {
        Ok(x) if x.is_finite() => Ok(x),
        Ok(_) => Err(format!("{cell:?} is not a finite number")),
        Err(_) => Err(format!("{cell:?} is not a number")),
    }
}
