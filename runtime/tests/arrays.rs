//! The generic loaders: `.npy` feature/label pairs and CSV files with a
//! label column, with the errors they give on bad files.

use std::path::{Path, PathBuf};

use d2l_runtime::Tensor;
use d2l_runtime::data::{DataError, LabelKind, load_csv_dataset, load_npy_dataset};
use d2l_runtime::npy::write_npy;
use proptest::prelude::*;

fn err_text<T: std::fmt::Debug>(r: Result<T, DataError>) -> String {
    r.expect_err("expected an error").to_string()
}

fn assert_contains(text: &str, parts: &[&str]) {
    for p in parts {
        assert!(text.contains(p), "{text:?} should contain {p:?}");
    }
}

fn npy(dir: &Path, name: &str, t: &Tensor) -> PathBuf {
    let path = dir.join(name);
    write_npy(&path, t).unwrap();
    path
}

fn csv(dir: &Path, text: &str) -> PathBuf {
    let path = dir.join("data.csv");
    std::fs::write(&path, text).unwrap();
    path
}

// -------------------------------------------------------------------- npy

#[test]
fn npy_pair_becomes_a_dataset() {
    let dir = tempfile::tempdir().unwrap();
    let x = Tensor::from_f32(&[4, 3], (0..12).map(|v| v as f32).collect());
    let y = Tensor::from_i64(&[4], vec![0, 1, 2, 1]);
    let ds =
        load_npy_dataset(&npy(dir.path(), "x.npy", &x), &npy(dir.path(), "y.npy", &y)).unwrap();
    assert_eq!(ds.len(), 4);
    assert_eq!((ds.features(), ds.labels()), (&x, &y));
}

#[test]
fn npy_mismatches_name_both_files_and_shapes() {
    let dir = tempfile::tempdir().unwrap();
    let x = npy(
        dir.path(),
        "x.npy",
        &Tensor::from_f32(&[4, 3], vec![0.0; 12]),
    );
    let y5 = npy(dir.path(), "y5.npy", &Tensor::from_i64(&[5], vec![0; 5]));
    let text = err_text(load_npy_dataset(&x, &y5));
    assert_contains(
        &text,
        &[
            &x.display().to_string(),
            "[4, 3]",
            &y5.display().to_string(),
            "[5]",
        ],
    );

    let scalar = npy(dir.path(), "s.npy", &Tensor::from_f32(&[], vec![1.0]));
    let text = err_text(load_npy_dataset(&scalar, &x));
    assert_contains(&text, &["s.npy", "shape []", "leading example dimension"]);

    let missing = dir.path().join("missing.npy");
    let text = err_text(load_npy_dataset(&x, &missing));
    assert_contains(&text, &[&missing.display().to_string(), "No such file"]);

    let junk = dir.path().join("junk.npy");
    std::fs::write(&junk, b"not numpy at all").unwrap();
    let text = err_text(load_npy_dataset(&junk, &x));
    assert_contains(&text, &[&junk.display().to_string(), "not a .npy file"]);
}

// -------------------------------------------------------------------- csv

#[test]
fn csv_regression_and_classification() {
    let dir = tempfile::tempdir().unwrap();
    let path = csv(dir.path(), "a,b,y,c\r\n1,2,0.5,3\r\n4, -5e-1 ,1.5,6\r\n");
    let ds = load_csv_dataset(&path, "y", LabelKind::Regression).unwrap();
    assert_eq!(
        ds.features(),
        &Tensor::from_f32(&[2, 3], vec![1.0, 2.0, 3.0, 4.0, -0.5, 6.0])
    );
    assert_eq!(ds.labels(), &Tensor::from_f32(&[2, 1], vec![0.5, 1.5]));

    let path = csv(dir.path(), "label,x\n2,0.25\n0,1\n1.0,2\n");
    let ds = load_csv_dataset(&path, "label", LabelKind::Classification).unwrap();
    assert_eq!(
        ds.features(),
        &Tensor::from_f32(&[3, 1], vec![0.25, 1.0, 2.0])
    );
    assert_eq!(ds.labels(), &Tensor::from_i64(&[3], vec![2, 0, 1]));
}

#[test]
fn csv_errors_give_line_and_column() {
    let dir = tempfile::tempdir().unwrap();
    let cases: &[(&str, LabelKind, &[&str])] = &[
        (
            "a,y\n1,2\nx,3\n",
            LabelKind::Regression,
            &[":3:", "column \"a\"", "\"x\" is not a number"],
        ),
        (
            "a,y\n1,2\n3,\n",
            LabelKind::Regression,
            &[":3:", "column \"y\"", "empty cell"],
        ),
        (
            "a,y\n1,2\nNaN,3\n",
            LabelKind::Regression,
            &[":3:", "not a finite number"],
        ),
        (
            "a,y\n1,2.5\n",
            LabelKind::Classification,
            &[":2:", "column \"y\"", "\"2.5\" is not a class label"],
        ),
        (
            "a,y\n1,-1\n",
            LabelKind::Classification,
            &[":2:", "non-negative integer"],
        ),
        (
            "a,b\n1,2\n",
            LabelKind::Regression,
            &["no label column \"y\"", "[\"a\", \"b\"]"],
        ),
        (
            "a,y,y\n1,2,3\n",
            LabelKind::Regression,
            &["appears more than once"],
        ),
        ("y\n1\n", LabelKind::Regression, &["only the label column"]),
        ("a,y\n", LabelKind::Regression, &["no data rows"]),
        ("", LabelKind::Regression, &["empty file"]),
        (
            "a,y\n1,2,3\n",
            LabelKind::Regression,
            &[":2:", "expected 2 fields"],
        ),
    ];
    for (text, kind, parts) in cases {
        let path = csv(dir.path(), text);
        let msg = err_text(load_csv_dataset(&path, "y", *kind));
        assert_contains(&msg, &[&path.display().to_string()]);
        assert_contains(&msg, parts);
    }
    let missing = dir.path().join("none.csv");
    let msg = err_text(load_csv_dataset(&missing, "y", LabelKind::Regression));
    assert_contains(&msg, &[&missing.display().to_string(), "No such file"]);
}

proptest! {
    #[test]
    fn csv_loader_never_panics(s in "[a-c0-9y.,\"\r\n -]{0,80}") {
        let dir = tempfile::tempdir().unwrap();
        let path = csv(dir.path(), &s);
        for kind in [LabelKind::Regression, LabelKind::Classification] {
            if let Ok(ds) = load_csv_dataset(&path, "y", kind) {
                prop_assert_eq!(ds.features().dims()[0], ds.len());
            }
        }
    }
}
