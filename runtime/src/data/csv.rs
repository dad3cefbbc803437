//! CSV reading and the course's house-prices preprocessing (Kaggle "House
//! Prices", files `kaggle_house_pred_{train,test}.csv`).
//!
//! The recipe, as in the course (pandas):
//! ```python
//! all_features = pd.concat((train_data.iloc[:, 1:-1], test_data.iloc[:, 1:]))
//! numeric = all_features.dtypes[all_features.dtypes != 'object'].index
//! all_features[numeric] = all_features[numeric].apply(lambda x: (x - x.mean()) / x.std())
//! all_features[numeric] = all_features[numeric].fillna(0)
//! all_features = pd.get_dummies(all_features, dummy_na=True)
//! ```
//! giving 331 feature columns (the course's printed `(1460, 331)`).

use std::path::{Path, PathBuf};

use super::DataError;
use crate::Tensor;

/// A parsed CSV file: a header and rows of exactly as many fields.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CsvTable {
    /// The file the table came from (for error messages).
    pub path: PathBuf,
    pub header: Vec<String>,
    pub rows: Vec<Vec<String>>,
    /// The 1-based line each row starts on.
    pub lines: Vec<usize>,
}

impl CsvTable {
    /// Index of the column named `name`.
    pub fn column(&self, name: &str) -> Option<usize> {
        self.header.iter().position(|h| h == name)
    }
}

/// Reads a CSV file (see [`parse_csv`]).
pub fn read_csv(path: &Path) -> Result<CsvTable, DataError> {
    let bytes = std::fs::read(path).map_err(|e| DataError::io(path, e))?;
    parse_csv(&bytes, path)
}

/// Parses RFC 4180 CSV: comma-separated fields, `\n` or `\r\n` line ends,
/// double-quoted fields that may contain commas, newlines and `""` (an
/// escaped quote). Blank lines are skipped; the first record is the header
/// and every other record must have as many fields. Errors give
/// `path:line`. `path` is only used in messages.
pub fn parse_csv(bytes: &[u8], path: &Path) -> Result<CsvTable, DataError> {
    let err = |line: usize, msg: String| DataError::Csv {
        path: path.to_path_buf(),
        line,
        msg,
    };
    let text = match std::str::from_utf8(bytes) {
        Ok(t) => t,
        Err(e) => {
            let line = 1 + bytes[..e.valid_up_to()]
                .iter()
                .filter(|&&b| b == b'\n')
                .count();
            return Err(err(
                line,
                format!("not valid UTF-8 (byte offset {})", e.valid_up_to()),
            ));
        }
    };
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);

    let mut records: Vec<(usize, Vec<String>)> = Vec::new();
    let mut fields: Vec<String> = Vec::new();
    let mut field = String::new();
    let mut line = 1;
    let mut record_line = 1;
    // Where the open quote was, while inside a quoted field.
    let mut quote_line: Option<usize> = None;
    // Just closed a quoted field: only a separator or line end may follow.
    let mut after_quote = false;
    let mut chars = text.chars().peekable();

    let mut end_record = |fields: &mut Vec<String>, field: &mut String, record_line: usize| {
        fields.push(std::mem::take(field));
        // A line with nothing on it is blank, not a record with one empty field.
        if !(fields.len() == 1 && fields[0].is_empty()) {
            records.push((record_line, std::mem::take(fields)));
        }
        fields.clear();
    };

    while let Some(c) = chars.next() {
        if quote_line.is_some() {
            match c {
                '"' if chars.peek() == Some(&'"') => {
                    chars.next();
                    field.push('"');
                }
                '"' => {
                    quote_line = None;
                    after_quote = true;
                }
                '\n' => {
                    line += 1;
                    field.push('\n');
                }
                c => field.push(c),
            }
            continue;
        }
        match c {
            ',' => {
                fields.push(std::mem::take(&mut field));
                after_quote = false;
            }
            '\r' if chars.peek() == Some(&'\n') => {}
            '\n' => {
                end_record(&mut fields, &mut field, record_line);
                after_quote = false;
                line += 1;
                record_line = line;
            }
            _ if after_quote => {
                return Err(err(
                    line,
                    format!("unexpected {c:?} after a closing quote (expected , or end of line)"),
                ));
            }
            '"' if field.is_empty() => quote_line = Some(line),
            c => field.push(c),
        }
    }
    if let Some(ql) = quote_line {
        return Err(err(ql, "a quoted field opened here is never closed".into()));
    }
    if !field.is_empty() || !fields.is_empty() || after_quote {
        end_record(&mut fields, &mut field, record_line);
    }

    let mut records = records.into_iter();
    let Some((_, header)) = records.next() else {
        return Err(DataError::CsvFile {
            path: path.to_path_buf(),
            msg: "empty file: expected a header line".into(),
        });
    };
    let mut rows = Vec::new();
    let mut lines = Vec::new();
    for (l, r) in records {
        if r.len() != header.len() {
            return Err(err(
                l,
                format!(
                    "expected {} fields (as in the header), found {}",
                    header.len(),
                    r.len()
                ),
            ));
        }
        rows.push(r);
        lines.push(l);
    }
    Ok(CsvTable {
        path: path.to_path_buf(),
        header,
        rows,
        lines,
    })
}

/// Values read as missing (pandas' default `na_values`, except "None": in
/// the house data "None" is a real category, e.g. MasVnrType = no veneer,
/// and the course's 331 columns count it as one).
const MISSING: &[&str] = &[
    "", "NA", "N/A", "n/a", "NaN", "nan", "-NaN", "-nan", "NULL", "null", "#N/A", "#NA", "<NA>",
];

fn is_missing(s: &str) -> bool {
    MISSING.contains(&s)
}

/// A finite number, or None.
fn parse_number(s: &str) -> Option<f64> {
    s.trim().parse::<f64>().ok().filter(|x| x.is_finite())
}

/// The house-prices data after the course's preprocessing.
#[derive(Clone, Debug, PartialEq)]
pub struct HousePrices {
    /// f32 [n_train, d]: standardized numeric columns, then one-hot columns.
    pub train_features: Tensor,
    /// f32 [n_train, 1]: SalePrice.
    pub train_labels: Tensor,
    /// f32 [n_test, d].
    pub test_features: Tensor,
    /// The test rows' Id column (for writing a submission).
    pub test_ids: Vec<i64>,
    /// The d column names, as pandas names them (`LotArea`, `MSZoning_RL`,
    /// `MSZoning_nan`, ...).
    pub feature_names: Vec<String>,
}

pub const HOUSE_TRAIN_FILE: &str = "kaggle_house_pred_train.csv";
pub const HOUSE_TEST_FILE: &str = "kaggle_house_pred_test.csv";

/// Loads and preprocesses `kaggle_house_pred_{train,test}.csv` from `dir`.
pub fn load_house_prices(dir: &Path) -> Result<HousePrices, DataError> {
    let train = read_csv(&dir.join(HOUSE_TRAIN_FILE))?;
    let test = read_csv(&dir.join(HOUSE_TEST_FILE))?;
    preprocess_house_prices(&train, &test)
}

/// The course's preprocessing of the parsed train and test tables: drop Id
/// (and SalePrice, which becomes the label), standardize numeric columns
/// over train+test with missing values then set to 0 (the mean), and
/// one-hot encode the other columns with an extra `_nan` column.
///
/// A column is numeric when all its present values are numbers. One where
/// most values are numbers but a few are not is reported as an error at the
/// first bad value rather than silently turned into hundreds of one-hot
/// columns.
pub fn preprocess_house_prices(
    train: &CsvTable,
    test: &CsvTable,
) -> Result<HousePrices, DataError> {
    let file_err = |t: &CsvTable, msg: String| DataError::CsvFile {
        path: t.path.clone(),
        msg,
    };
    let cell_err = |t: &CsvTable, row: usize, msg: String| DataError::Csv {
        path: t.path.clone(),
        line: t.lines[row],
        msg,
    };

    // Columns: train = Id, features..., SalePrice; test = Id, features...
    if train.header.len() < 3
        || train.header[0] != "Id"
        || train.header.last().is_none_or(|h| h != "SalePrice")
    {
        return Err(file_err(
            train,
            format!(
                "expected columns Id, <features>..., SalePrice; found {}",
                summarize_header(&train.header)
            ),
        ));
    }
    let names = &train.header[1..train.header.len() - 1];
    if test.header.first().is_none_or(|h| h != "Id") || test.header[1..] != *names {
        let first_diff = (0..names.len().max(test.header.len().saturating_sub(1)))
            .find(|&j| names.get(j) != test.header.get(j + 1))
            .unwrap_or(0);
        return Err(file_err(
            test,
            format!(
                "expected columns Id and the training file's {} feature columns in the same order; \
                 column {} is {:?} here but {:?} in {}",
                names.len(),
                first_diff + 2,
                test.header
                    .get(first_diff + 1)
                    .map_or("(missing)", |s| s.as_str()),
                names.get(first_diff).map_or("(missing)", |s| s.as_str()),
                train.path.display()
            ),
        ));
    }

    let price_col = train.header.len() - 1;
    let mut labels = Vec::with_capacity(train.rows.len());
    for (r, row) in train.rows.iter().enumerate() {
        match parse_number(&row[price_col]) {
            Some(p) => labels.push(p as f32),
            None => {
                return Err(cell_err(
                    train,
                    r,
                    format!("SalePrice {:?} is not a number", row[price_col]),
                ));
            }
        }
    }
    let mut test_ids = Vec::with_capacity(test.rows.len());
    for (r, row) in test.rows.iter().enumerate() {
        match row[0].trim().parse::<i64>() {
            Ok(id) => test_ids.push(id),
            Err(_) => {
                return Err(cell_err(
                    test,
                    r,
                    format!("Id {:?} is not an integer", row[0]),
                ));
            }
        }
    }

    // All feature cells of column j, train rows then test rows, with where
    // they came from (for error messages).
    let (n_train, n_test) = (train.rows.len(), test.rows.len());
    let n = n_train + n_test;
    let cells = |j: usize| {
        let tr = train
            .rows
            .iter()
            .enumerate()
            .map(move |(r, row)| (train, r, row[j + 1].as_str()));
        let te = test
            .rows
            .iter()
            .enumerate()
            .map(move |(r, row)| (test, r, row[j + 1].as_str()));
        tr.chain(te)
    };

    let mut numeric_cols: Vec<(String, Vec<f32>)> = Vec::new();
    let mut onehot_cols: Vec<(String, Vec<f32>)> = Vec::new();
    for (j, name) in names.iter().enumerate() {
        let (mut numbers, mut others) = (0usize, 0usize);
        let mut first_other = None;
        for (t, r, s) in cells(j) {
            if is_missing(s) {
                continue;
            }
            if parse_number(s).is_some() {
                numbers += 1;
            } else {
                others += 1;
                first_other.get_or_insert((t, r, s));
            }
        }
        let values: Vec<&str> = cells(j).map(|(_, _, s)| s).collect();
        if others == 0 {
            numeric_cols.push((name.clone(), standardize(&values)));
        } else if numbers > others {
            let (t, r, s) = first_other.expect("others > 0");
            return Err(cell_err(
                t,
                r,
                format!(
                    "column {name}: {s:?} is not a number, but {numbers} of the column's values are; \
                     fix it or write NA for a missing value"
                ),
            ));
        } else {
            onehot_cols.extend(one_hot(name, &values));
        }
    }

    let columns: Vec<(String, Vec<f32>)> = numeric_cols.into_iter().chain(onehot_cols).collect();
    let d = columns.len();
    let mut all = vec![0f32; n * d];
    for (c, (_, col)) in columns.iter().enumerate() {
        for (r, &v) in col.iter().enumerate() {
            all[r * d + c] = v;
        }
    }
    let test_part = all.split_off(n_train * d);
    Ok(HousePrices {
        train_features: Tensor::from_f32(&[n_train, d], all),
        train_labels: Tensor::from_f32(&[n_train, 1], labels),
        test_features: Tensor::from_f32(&[n_test, d], test_part),
        test_ids,
        feature_names: columns.into_iter().map(|(name, _)| name).collect(),
    })
}

fn summarize_header(h: &[String]) -> String {
    match h {
        [] => "no columns".into(),
        [only] => format!("only {only:?}"),
        [first, .., last] => format!("{} columns, {first:?} ... {last:?}", h.len()),
    }
}

/// (x - mean) / std over the present values (std with n-1, as pandas), then
/// missing -> 0. A constant or single-valued column becomes all zeros, as
/// pandas' NaN-then-fillna(0) does.
fn standardize(values: &[&str]) -> Vec<f32> {
    let parsed: Vec<Option<f64>> = values
        .iter()
        .map(|s| if is_missing(s) { None } else { parse_number(s) })
        .collect();
    let present: Vec<f64> = parsed.iter().flatten().copied().collect();
    let count = present.len() as f64;
    let mean = present.iter().sum::<f64>() / count;
    let var = present.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / (count - 1.0);
    let std = var.sqrt();
    if present.len() < 2 || !std.is_finite() || std == 0.0 {
        return vec![0.0; parsed.len()];
    }
    parsed
        .iter()
        .map(|v| v.map_or(0.0, |x| ((x - mean) / std) as f32))
        .collect()
}

/// `pd.get_dummies(col, dummy_na=True)`: one 0/1 column per distinct value
/// (sorted), named `{name}_{value}`, then `{name}_nan` for missing values.
fn one_hot(name: &str, values: &[&str]) -> Vec<(String, Vec<f32>)> {
    let n = values.len();
    let mut cats: Vec<&str> = values.iter().copied().filter(|s| !is_missing(s)).collect();
    cats.sort_unstable();
    cats.dedup();
    let mut cols: Vec<(String, Vec<f32>)> = cats
        .iter()
        .map(|c| (format!("{name}_{c}"), vec![0.0; n]))
        .collect();
    cols.push((format!("{name}_nan"), vec![0.0; n]));
    let nan_col = cols.len() - 1;
    for (r, &s) in values.iter().enumerate() {
        let c = if is_missing(s) {
            nan_col
        } else {
            cats.binary_search(&s).expect("every value is a category")
        };
        cols[c].1[r] = 1.0;
    }
    cols
}

/// The course's `get_k_fold_data` split of `n` examples: fold `i` of `k`
/// contiguous folds of `n / k` examples is the validation set, the other
/// folds (in order) the training set. As in the course, the last `n % k`
/// examples are in neither.
pub fn k_fold(n: usize, k: usize, i: usize) -> Result<(Vec<usize>, Vec<usize>), DataError> {
    if k < 2 {
        return Err(DataError::Invalid(format!(
            "k-fold needs k >= 2, got k = {k}"
        )));
    }
    if i >= k {
        return Err(DataError::Invalid(format!(
            "fold index {i} is out of range for k = {k} (0..{k})"
        )));
    }
    if n < k {
        return Err(DataError::Invalid(format!(
            "cannot split {n} examples into {k} folds"
        )));
    }
    let fold = n / k;
    let valid: Vec<usize> = (i * fold..(i + 1) * fold).collect();
    let train: Vec<usize> = (0..k * fold).filter(|&x| x / fold != i).collect();
    Ok((train, valid))
}
