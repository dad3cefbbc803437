//! The course's linear-regression data (`synthetic_data`, §08).

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
