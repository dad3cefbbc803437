//! §64, Nadaraya–Watson kernel regression (`models/nadaraya_watson.d2l`):
//! the learned kernel's loss falls at every one of the course's five
//! epochs, and the fixed kernel's predictions and attention weights at the
//! test inputs agree with a direct computation.

use d2l_dsl::Program;
use d2l_device::Device;
use d2l_runtime::train::Silent;
use d2l_train::{TrainOptions, kernel_regression, prepare};

fn program() -> Program {
    Program::load_file("../models/nadaraya_watson.d2l".as_ref()).unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn the_learned_kernels_loss_falls_every_epoch() {
    let program = program();
    for seed in 0..3 {
        let mut run = prepare(&program, "nadaraya_watson", &TrainOptions { seed, ..TrainOptions::default() }).unwrap();
        let losses: Vec<f64> = (0..5).map(|_| run.epoch(&mut Silent).unwrap().train.loss).collect();
        assert!(losses.windows(2).all(|w| w[1] < w[0]), "seed {seed}: {losses:?}");
    }
}

#[test]
fn fixed_kernel_predictions_by_hand() {
    let program = program();
    let run = prepare(&program, "nadaraya_watson_fixed", &TrainOptions::default()).unwrap();
    let data = run.source.kernel_regression().expect("§64's data").clone();
    for backend in [Device::JIT, Device::INTERPRETER] {
        let p = kernel_regression::predict(&program, "nadaraya_watson_fixed", &Default::default(), &data, backend).unwrap();
        let weights = p.weights.as_ref().expect("the model observes its weights");
        assert_eq!((p.y_hat.len(), weights.len()), (50, 50 * 50));
        let mut mse = 0.0;
        for (q, &x) in data.x_test.iter().enumerate() {
            // softmax over the training inputs of -(x - x_i)² / 2.
            let scores: Vec<f64> = data.x_train.iter().map(|&k| -((x - k) as f64).powi(2) / 2.0).collect();
            let max = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let total: f64 = scores.iter().map(|s| (s - max).exp()).sum();
            let want: Vec<f64> = scores.iter().map(|s| (s - max).exp() / total).collect();
            let y: f64 = want.iter().zip(&data.y_train).map(|(w, &v)| w * v as f64).sum();
            assert!((p.y_hat[q] as f64 - y).abs() < 1e-5, "{backend:?} query {x}: {} vs {y}", p.y_hat[q]);
            for (got, w) in weights[q * 50..(q + 1) * 50].iter().zip(&want) {
                assert!((got - w).abs() < 1e-6, "{backend:?} query {x}");
            }
            mse += (y - data.y_truth[q] as f64).powi(2) / 50.0;
        }
        assert!((p.mse - mse).abs() < 1e-5, "{} vs {mse}", p.mse);
    }
}
