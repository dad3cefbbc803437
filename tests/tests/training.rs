//! Every model in `models/` trains: a short run on real data (a few hundred
//! examples) lowers its loss. The full runs' results are in the README.

use d2l::train::{TrainOptions, prepare};
use d2l_runtime::data::BatchOptions;
use d2l_runtime::train::Silent;
use d2l_tests::{load, model_files};

/// Loss on the training subset before and after `epochs` epochs.
fn loss_before_and_after(file: &str, model: &str, limit: usize, epochs: usize) -> (f64, f64) {
    let program = load(file);
    let opts = TrainOptions { limit: Some(limit), epochs: Some(epochs), seed: 1, ..TrainOptions::default() };
    let mut run = prepare(&program, model, &opts).unwrap_or_else(|e| panic!("{model}: {e}"));
    let before = run.data.evaluate(&mut run.trainer, &run.data.train).unwrap().loss;
    let batches = run.data.train_batches(1);
    for _ in 0..epochs {
        run.trainer.train_epoch(&run.data.train, &batches, &mut Silent).unwrap();
    }
    let after = run.data.evaluate(&mut run.trainer, &run.data.train).unwrap().loss;
    (before, after)
}

#[test]
fn every_model_learns_on_a_small_subset() {
    // (file, model, examples, epochs, required ratio after/before)
    let cases = [
        ("linear_regression.d2l", "linear_regression", 1000, 1, 0.01),
        ("linear_regression.d2l", "linear_regression_concise", 1000, 1, 0.01),
        ("softmax_regression.d2l", "softmax_regression", 1024, 2, 0.7),
        ("softmax_regression.d2l", "softmax_regression_concise", 1024, 2, 0.7),
        ("mlp.d2l", "mlp", 4096, 3, 0.7),
        ("mlp.d2l", "mlp_scratch", 4096, 3, 0.7),
        // Small initial weights and dropout (mlp_dropout), sigmoids (lenet):
        // these start slowly, so a short run moves the loss only a little.
        ("mlp.d2l", "mlp_dropout", 4096, 3, 0.98),
        ("lenet.d2l", "lenet", 2048, 3, 0.985),
        ("house_prices.d2l", "house_prices", 512, 5, 0.95),
        ("house_prices.d2l", "house_prices_tuned", 512, 5, 0.95),
        ("weight_decay.d2l", "weight_decay_none", 20, 10, 0.2),
        ("weight_decay.d2l", "weight_decay", 20, 10, 0.2),
        // One example, ten steps: the course's §19 run.
        ("edge_detector.d2l", "edge_detector", 1, 10, 0.2),
        // Batch norm lets LeNet's sigmoids learn fast (lr 1.0); enough steps
        // (48) for the running statistics that evaluation uses to settle.
        ("batchnorm_lenet.d2l", "batchnorm_lenet", 4096, 3, 0.7),
        ("batchnorm_lenet.d2l", "batchnorm_lenet_concise", 4096, 3, 0.7),
        // The big networks at the course's resolution: a couple of steps on
        // a handful of examples (each step takes seconds in the interpreter).
        ("alexnet.d2l", "alexnet", 16, 2, 0.997),
        ("vgg.d2l", "vgg11", 16, 2, 0.99),
        ("nin.d2l", "nin", 16, 2, 0.998),
        ("googlenet.d2l", "googlenet", 16, 2, 0.99),
        // Evaluation uses batch norm's running statistics, which need a few
        // dozen steps to settle (momentum 0.9): more, smaller steps.
        ("resnet.d2l", "resnet18", 8, 20, 0.9),
    ];
    let mut covered: Vec<String> = Vec::new();
    for (file, model, limit, epochs, ratio) in cases {
        let (before, after) = loss_before_and_after(file, model, limit, epochs);
        eprintln!("{model}: {before} -> {after} ({:.3})", after / before);
        assert!(after < before * ratio, "{model}: loss {before} -> {after}, wanted below {ratio} x");
        covered.push(model.to_string());
    }
    // A new model must join this list.
    for f in model_files() {
        for m in d2l_dsl::Program::load_file(&f).unwrap().model_names() {
            assert!(covered.contains(m), "{m} ({}) has no training test", f.display());
        }
    }
}

#[test]
fn equal_seeds_give_equal_runs() {
    let run = || {
        let program = load("mlp.d2l");
        let opts = TrainOptions { limit: Some(512), epochs: Some(1), seed: 9, ..TrainOptions::default() };
        let mut run = prepare(&program, "mlp_dropout", &opts).unwrap();
        run.trainer.train_epoch(&run.data.train, &BatchOptions::new(run.data.batch).seed(9), &mut Silent).unwrap().loss
    };
    assert_eq!(run(), run());
}
