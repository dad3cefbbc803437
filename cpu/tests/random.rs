//! The JIT's random numbers split over threads by ChaCha's word position;
//! they must still be the interpreter's sequential `StdRng` stream, number
//! for number, whatever the size, thread count or starting position.

use d2l_cpu::pool::pool;
use d2l_cpu::routines::{Buf, rand};
use d2l_ir::{DType, RandDist};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha12Rng;

#[test]
fn uniform_draws_split_over_threads_are_the_sequential_stream() {
    // Sizes around the threading threshold and not multiples of a ChaCha
    // block (16 words) or of the thread count.
    for n in [0usize, 1, 17, 1000, (1 << 16) - 1, (1 << 16) + 33, 200_003] {
        for skip in [0usize, 3, 16, 61] {
            let mut reference = StdRng::seed_from_u64(7);
            let mut jit = ChaCha12Rng::seed_from_u64(7);
            for _ in 0..skip {
                assert_eq!(reference.random::<f32>(), jit.random::<f32>());
            }
            let mut got = vec![0.0f32; n];
            unsafe { rand(&mut jit, RandDist::Uniform, Buf { ptr: got.as_mut_ptr() as *mut u8, dtype: DType::F32 }, n, pool()) };
            let want: Vec<f32> = (0..n).map(|_| reference.random::<f32>()).collect();
            assert!(got == want, "f32 n={n} skip={skip}: first difference at {:?}", got.iter().zip(&want).position(|(a, b)| a != b));
            // The generator ends where the sequential one does.
            assert_eq!(reference.random::<u32>(), jit.random::<u32>(), "position after n={n} skip={skip}");

            let mut got = vec![0.0f64; n];
            unsafe { rand(&mut jit, RandDist::Uniform, Buf { ptr: got.as_mut_ptr() as *mut u8, dtype: DType::F64 }, n, pool()) };
            let want: Vec<f64> = (0..n).map(|_| reference.random::<f64>()).collect();
            assert!(got == want, "f64 n={n} skip={skip}");
            assert_eq!(reference.random::<u32>(), jit.random::<u32>());
        }
    }
}

#[test]
fn normal_draws_are_the_sequential_stream() {
    use rand_distr::{Distribution, StandardNormal};
    let mut reference = StdRng::seed_from_u64(3);
    let mut jit = ChaCha12Rng::seed_from_u64(3);
    let n = 100_000;
    let mut got = vec![0.0f32; n];
    unsafe { rand(&mut jit, RandDist::Normal, Buf { ptr: got.as_mut_ptr() as *mut u8, dtype: DType::F32 }, n, pool()) };
    let want: Vec<f32> = (0..n).map(|_| StandardNormal.sample(&mut reference)).collect();
    assert!(got == want);
    assert_eq!(reference.random::<u32>(), jit.random::<u32>());
}
