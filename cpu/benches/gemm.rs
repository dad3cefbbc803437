//! `cargo bench -p d2l-cpu --bench gemm`: GFLOP/s of the JIT's SGEMM on
//! square `C = A·B` at 1024² and 2048², on 1 thread and on the worker pool
//! (`D2L_THREADS`, default one per core): the shapes and method of
//! `torch.mm` in `../shared/bench/bench_d2l.py` (≥ 20 runs and ≥ 2 s after
//! warm-up, median and best), so the two compare directly
//! (`bench/compare_pytorch.py` runs both side by side).
//!
//! Pass `--json PATH` (after `--`) to also write the figures as JSON.

use std::time::Instant;

use d2l_cpu::gemm::{MatMut, MatRef, Scratches, sgemm, sgemm_parallel};
use d2l_cpu::pool::pool;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let json_path = args.iter().position(|a| a == "--json").and_then(|i| args.get(i + 1)).cloned();
    let pool = pool();
    let mut rows = Vec::new();
    for n in [1024usize, 2048] {
        let a: Vec<f32> = (0..n * n).map(|i| ((i * 37 % 101) as f32 - 50.0) / 50.0).collect();
        let b: Vec<f32> = (0..n * n).map(|i| ((i * 53 % 97) as f32 - 48.0) / 48.0).collect();
        let mut c = vec![0.0f32; n * n];
        let scratches = Scratches::new(pool.threads(), n);
        for threads in [1, pool.threads()] {
            let am = MatRef::strided(a.as_ptr(), n as isize, 1);
            let bm = MatRef::strided(b.as_ptr(), n as isize, 1);
            let cm = MatMut { ptr: c.as_mut_ptr(), rs: n as isize };
            let run = || unsafe {
                if threads == 1 {
                    sgemm(n, n, n, am, bm, cm, false, scratches.get(0));
                } else {
                    sgemm_parallel(n, n, n, am, bm, cm, false, &scratches, pool);
                }
            };
            for _ in 0..3 {
                run();
            }
            let mut times = Vec::new();
            let start = Instant::now();
            while times.len() < 20 || start.elapsed().as_secs_f64() < 2.0 {
                let t = Instant::now();
                run();
                times.push(t.elapsed().as_secs_f64());
            }
            times.sort_by(f64::total_cmp);
            let flops = 2.0 * (n * n * n) as f64;
            let median = flops / times[times.len() / 2] / 1e9;
            let best = flops / times[0] / 1e9;
            println!("sgemm {n}x{n}x{n}  threads {threads}  {median:6.1} GFLOP/s median  ({best:.1} best, {} runs)", times.len());
            rows.push(format!("{{\"n\": {n}, \"threads\": {threads}, \"gflops_median\": {median:.3}, \"gflops_best\": {best:.3}, \"runs\": {}}}", times.len()));
            if pool.threads() == 1 {
                break;
            }
        }
        // The product must be right, not just fast: spot-check a few entries.
        for &(i, j) in &[(0, 0), (n - 1, n - 1), (n / 3, n / 2)] {
            let want: f64 = (0..n).map(|p| a[i * n + p] as f64 * b[p * n + j] as f64).sum();
            assert!((c[i * n + j] as f64 - want).abs() <= 1e-3 * (1.0 + want.abs()), "C[{i},{j}] = {} vs {want}", c[i * n + j]);
        }
    }
    if let Some(path) = json_path {
        std::fs::write(&path, format!("[{}]\n", rows.join(",\n "))).expect("write the JSON figures");
    }
}
