//! The course's synthetic data: linear regression (`synthetic_data`, §08)
//! and the noisy sine series of sequence models (`sine_series`, §51).

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rand_distr::StandardNormal;

use crate::Tensor;

/// Standard deviation of the label noise in the course's `synthetic_data`.
pub const LABEL_NOISE_STD: f32 = 0.01;

/// `synthetic_data(w, b, n)`: features X ~ N(0, 1) of shape [n, len(w)] and
/// labels y = Xw + b + N(0, 0.01²) of shape [n, 1], both f32. The same
/// `seed` gives the same data.
pub fn synthetic_data(w: &[f32], b: f32, n: usize, seed: u64) -> (Tensor, Tensor) {
    let mut rng = StdRng::seed_from_u64(seed);
    let d = w.len();
    let x: Vec<f32> = (0..n * d)
        .map(|_| rng.sample::<f32, _>(StandardNormal))
        .collect();
    let y: Vec<f32> = (0..n)
        .map(|i| {
            let dot: f32 = x[i * d..(i + 1) * d]
                .iter()
                .zip(w)
                .map(|(a, b)| a * b)
                .sum();
            dot + b + LABEL_NOISE_STD * rng.sample::<f32, _>(StandardNormal)
        })
        .collect();
    (Tensor::from_f32(&[n, d], x), Tensor::from_f32(&[n, 1], y))
}

/// The course's §51 series: `x_t = sin(0.01 t) + N(0, 0.2²)` for
/// t = 1..=n, and its pairs of `tau` consecutive values → the next one:
/// features [n - tau, tau] and labels [n - tau, 1], f32. Returns the series
/// too (what k-step predictions are compared with).
pub fn sine_series(n: usize, tau: usize, seed: u64) -> (Vec<f32>, Tensor, Tensor) {
    let mut rng = StdRng::seed_from_u64(seed);
    let x: Vec<f32> = (1..=n).map(|t| (0.01 * t as f64).sin() as f32 + 0.2 * rng.sample::<f32, _>(StandardNormal)).collect();
    let rows = n.saturating_sub(tau);
    let features: Vec<f32> = (0..rows).flat_map(|r| x[r..r + tau].to_vec()).collect();
    let labels: Vec<f32> = (0..rows).map(|r| x[r + tau]).collect();
    (x, Tensor::from_f32(&[rows, tau], features), Tensor::from_f32(&[rows, 1], labels))
}

/// The course's §64 data for Nadaraya–Watson kernel regression.
#[derive(Clone, Debug, PartialEq)]
pub struct KernelRegressionData {
    /// `n` training inputs, uniform in [0, 5), sorted.
    pub x_train: Vec<f32>,
    /// `f(x) + N(0, 0.5²)` at each training input.
    pub y_train: Vec<f32>,
    /// The test inputs 0, 0.1, ..., 4.9 (the course's `arange(0, 5, 0.1)`).
    pub x_test: Vec<f32>,
    /// `f(x)` at each test input, without noise.
    pub y_truth: Vec<f32>,
}

/// The function §64 samples: `f(x) = 2 sin x + x^0.8`.
pub fn kernel_regression_target(x: f32) -> f32 {
    2.0 * x.sin() + x.powf(0.8)
}

/// §64's `n_train` noisy samples of [`kernel_regression_target`] and its
/// 50 test points. The same `seed` gives the same data.
pub fn kernel_regression(n: usize, seed: u64) -> KernelRegressionData {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut x_train: Vec<f32> = (0..n).map(|_| rng.random::<f32>() * 5.0).collect();
    x_train.sort_by(f32::total_cmp);
    let y_train = x_train.iter().map(|&x| kernel_regression_target(x) + 0.5 * rng.sample::<f32, _>(StandardNormal)).collect();
    let x_test: Vec<f32> = (0..50).map(|i| i as f32 * 0.1).collect();
    let y_truth = x_test.iter().map(|&x| kernel_regression_target(x)).collect();
    KernelRegressionData { x_train, y_train, x_test, y_truth }
}

/// Every training point's keys and values without itself (the course's
/// `X_tile[(1 - torch.eye(n)).type(torch.bool)]`): [n, n - 1] each, row i
/// the other points in order.
pub fn leave_one_out(x: &[f32], y: &[f32]) -> (Tensor, Tensor) {
    let n = x.len();
    let others = |v: &[f32]| -> Vec<f32> { (0..n).flat_map(|i| v.iter().enumerate().filter(move |&(j, _)| j != i).map(|(_, &t)| t)).collect() };
    (Tensor::from_f32(&[n, n.saturating_sub(1)], others(x)), Tensor::from_f32(&[n, n.saturating_sub(1)], others(y)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_regression_data_as_the_course_builds_it() {
        let d = kernel_regression(50, 7);
        assert_eq!((d.x_train.len(), d.y_train.len(), d.x_test.len(), d.y_truth.len()), (50, 50, 50, 50));
        assert!(d.x_train.windows(2).all(|w| w[0] <= w[1]) && d.x_train.iter().all(|&x| (0.0..5.0).contains(&x)));
        assert!((d.x_test[49] - 4.9).abs() < 1e-6 && (d.y_truth[10] - (2.0 * 1f32.sin() + 1.0)).abs() < 1e-6);
        // The noise has the course's standard deviation, roughly.
        let var = d.x_train.iter().zip(&d.y_train).map(|(&x, &y)| (y - kernel_regression_target(x)).powi(2)).sum::<f32>() / 50.0;
        assert!((0.1..0.5).contains(&var), "{var}");
        assert_eq!(kernel_regression(50, 7), d);
        assert_ne!(kernel_regression(50, 8), d);
    }

    #[test]
    fn leave_one_out_drops_the_diagonal() {
        let (k, v) = leave_one_out(&[1.0, 2.0, 3.0], &[10.0, 20.0, 30.0]);
        assert_eq!(k.shape().dims(), [3, 2]);
        assert_eq!(k.to_f64_vec(), [2.0, 3.0, 1.0, 3.0, 1.0, 2.0]);
        assert_eq!(v.to_f64_vec(), [20.0, 30.0, 10.0, 30.0, 10.0, 20.0]);
    }
}
