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
