//! `d2l run --image`: classifying a picture file or a dataset example
//! (this file belongs to the root package, whose binary it runs).

use std::path::Path;
use std::process::{Command, Output};

fn d2l(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_d2l")).args(args).current_dir(env!("CARGO_MANIFEST_DIR")).output().expect("the d2l binary runs")
}

/// Stdout of a run that must succeed.
fn ok(args: &[&str]) -> String {
    let o = d2l(args);
    assert!(o.status.success(), "d2l {args:?} failed: {}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Stderr of a run that must fail.
fn fails(args: &[&str]) -> String {
    let o = d2l(args);
    assert!(!o.status.success(), "d2l {args:?} should fail");
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The ranked (class, probability) lines of a report.
fn ranking(report: &str) -> Vec<(String, f64)> {
    report
        .lines()
        .skip(1)
        .map(|l| {
            let (class, p) = l.trim().rsplit_once("  ").expect("class and probability");
            (class.trim().to_string(), p.trim().parse().expect("a probability"))
        })
        .collect()
}

/// Fashion-MNIST test example `index` as 8-bit grayscale pixels.
fn test_image(index: usize) -> (Vec<u8>, u8) {
    let dir = d2l_runtime::data::find_dataset("fashion-mnist", None).expect("Fashion-MNIST is installed");
    let set = d2l_runtime::data::load_mnist_like(&dir, d2l_runtime::data::Split::Test).unwrap();
    (set.image(index).to_vec(), set.labels[index])
}

fn save(path: &Path, pixels: Vec<u8>, side: u32) {
    image::GrayImage::from_raw(side, side, pixels).unwrap().save(path).unwrap();
}

#[test]
fn a_dataset_example_prints_ranked_class_names() {
    let report = ok(&["run", "models/lenet.d2l", "--image", "fashion-mnist:test:123", "--top", "10"]);
    let (_, label) = test_image(123);
    let true_class = d2l_runtime::data::FASHION_MNIST_CLASSES[usize::from(label)];
    assert!(report.starts_with(&format!("fashion-mnist:test:123 (true class: {true_class})\n")), "{report}");
    let ranks = ranking(&report);
    assert_eq!(ranks.len(), 10, "{report}");
    let mut names: Vec<&str> = ranks.iter().map(|(c, _)| c.as_str()).collect();
    names.sort();
    let mut all = d2l_runtime::data::FASHION_MNIST_CLASSES.to_vec();
    all.sort();
    assert_eq!(names, all, "every class once");
    assert!(ranks.windows(2).all(|w| w[0].1 >= w[1].1), "highest first: {report}");
    assert!((ranks.iter().map(|r| r.1).sum::<f64>() - 1.0).abs() < 1e-3, "probabilities sum to 1: {report}");
}

#[test]
fn a_png_of_an_example_classifies_as_the_example() {
    // PNG is lossless: the file and the dataset give the model equal inputs.
    let dir = tempfile::tempdir().unwrap();
    let png = dir.path().join("example.png");
    let (pixels, _) = test_image(7);
    save(&png, pixels, 28);
    let from_file = ok(&["run", "models/lenet.d2l", "--image", png.to_str().unwrap(), "--top", "3"]);
    let from_idx = ok(&["run", "models/lenet.d2l", "--image", "fashion-mnist:test:7", "--top", "3"]);
    assert_eq!(ranking(&from_file), ranking(&from_idx), "{from_file}\n{from_idx}");
    assert!(from_file.starts_with(png.to_str().unwrap()), "{from_file}");
}

#[test]
fn larger_and_colour_jpegs_are_converted_to_the_model_input() {
    // A 56x56 colour JPEG: made grayscale and resized to LeNet's 28x28.
    let dir = tempfile::tempdir().unwrap();
    let jpg = dir.path().join("shirt.jpg");
    let (pixels, _) = test_image(3);
    let big = image::imageops::resize(&image::GrayImage::from_raw(28, 28, pixels).unwrap(), 56, 56, image::imageops::FilterType::Triangle);
    image::DynamicImage::ImageLuma8(big).to_rgb8().save(&jpg).unwrap();
    let report = ok(&["run", "models/lenet.d2l", "--image", jpg.to_str().unwrap()]);
    assert_eq!(ranking(&report).len(), 3, "{report}");
    // And a model at 224x224 takes the same file.
    let report = ok(&["run", "models/alexnet.d2l", "--image", jpg.to_str().unwrap(), "--top", "1"]);
    assert_eq!(ranking(&report).len(), 1, "{report}");
}

#[test]
fn trained_parameters_are_used() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let o = d2l(&["train", "models/lenet.d2l", "--epochs", "1", "--limit", "512", "--out", out.to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let params = out.join("lenet.safetensors");
    let trained = ok(&["run", "models/lenet.d2l", "--params", params.to_str().unwrap(), "--image", "fashion-mnist:test:0"]);
    let fresh = ok(&["run", "models/lenet.d2l", "--image", "fashion-mnist:test:0"]);
    assert_ne!(ranking(&trained), ranking(&fresh), "{trained}\n{fresh}");
}

#[test]
fn bad_pictures_are_errors_not_panics() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.png");
    assert!(fails(&["run", "models/lenet.d2l", "--image", missing.to_str().unwrap()]).contains("cannot read"));
    let garbage = dir.path().join("garbage.png");
    std::fs::write(&garbage, b"not an image at all").unwrap();
    let err = fails(&["run", "models/lenet.d2l", "--image", garbage.to_str().unwrap()]);
    assert!(err.contains("garbage.png") && !err.contains("panicked"), "{err}");
    assert!(fails(&["run", "models/lenet.d2l", "--image", "fashion-mnist:test:10000"]).contains("out of range"));
    assert!(fails(&["run", "models/lenet.d2l", "--image", "fashion-mnist:valid:3"]).contains("`train` or `test`"));
    assert!(fails(&["run", "models/lenet.d2l", "--image", "fashion-mnist:test:x"]).contains("not an example index"));
    // A model that does not take images.
    let err = fails(&["run", "models/linear_regression.d2l", "--image", "fashion-mnist:test:0"]);
    assert!(err.contains("[B, C, H, W]"), "{err}");
    // --image replaces --input.
    let err = fails(&["run", "models/lenet.d2l", "--image", "fashion-mnist:test:0", "--input", "x.npy"]);
    assert!(err.contains("cannot be used with"), "{err}");
}
