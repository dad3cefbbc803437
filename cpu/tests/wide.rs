//! Wide loops (`d2l_cpu::wide`) give the Cranelift code's values bit for
//! bit, at every level this CPU runs: each math function over its whole
//! useful range and at special values, and kernels like a recurrent cell's
//! (several loops, contiguous, broadcast and strided accesses, compares,
//! selects, max/min), split into parts of loop 0 as the executor splits them.

use d2l_cpu::clif::Jit;
use d2l_kernels::kernel::{Access, Inst, LoopKernel, Store, Val};
use d2l_cpu::wide::{Level, WideKernel};
use d2l_ir::{BinaryOp, CmpOp, DType, UnaryOp};

fn levels() -> Vec<Level> {
    [Level::Avx2, Level::Avx512].into_iter().filter(|l| l.supported()).collect()
}

/// Every slot's buffer after one run.
type Buffers = Vec<Vec<f32>>;

/// Runs `k` over slots `buffers` (slot i + 1 is `buffers[i]`) with
/// Cranelift, and with the wide interpreter at each level in `parts` parts
/// of loop 0; returns the Cranelift buffers and each wide run's.
fn run_both(k: &LoopKernel, buffers: &[Vec<f32>], parts: usize) -> (Buffers, Vec<(Level, Buffers)>) {
    let table_of = |bufs: &mut Vec<Vec<f32>>, status: &mut i64| {
        let mut t = vec![status as *mut i64 as *mut u8];
        t.extend(bufs.iter_mut().map(|b| b.as_mut_ptr() as *mut u8));
        t
    };
    let mut jit = Jit::new().expect("host ISA");
    jit.add(k).expect("compiles");
    let code = jit.finish().expect("finalises");
    let mut clif = buffers.to_vec();
    let mut status = 0i64;
    let table = table_of(&mut clif, &mut status);
    // SAFETY: the test kernels' accesses fit their buffers.
    unsafe { (code.functions[0])(table.as_ptr(), 0, k.extents[0] as i64) };
    let wide = WideKernel::new(k).expect("a wide kernel");
    let mut runs = Vec::new();
    for level in levels() {
        let w = wide.clone().at_level(level);
        let mut bufs = buffers.to_vec();
        let table = table_of(&mut bufs, &mut status);
        let n = k.extents[0];
        let chunk = n.div_ceil(parts);
        for p in 0..parts {
            // SAFETY: as above.
            unsafe { w.run(table.as_ptr(), (p * chunk).min(n), ((p + 1) * chunk).min(n)) };
        }
        runs.push((level, bufs));
    }
    (clif, runs)
}

fn same_bits(what: &str, a: &[f32], b: &[f32]) {
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        assert!(x.to_bits() == y.to_bits() || (x.is_nan() && y.is_nan()), "{what}: element {i}: cranelift {x} vs wide {y}");
    }
}

fn load(k: &mut LoopKernel, slot: usize, offset: i64, strides: Vec<i64>) -> Val {
    k.push(Inst::Load { dtype: DType::F32, access: Access { slot, offset, strides } })
}

fn store(k: &mut LoopKernel, value: Val, slot: usize, strides: Vec<i64>) {
    k.stores.push(Store { value, dtype: DType::F32, access: Access { slot, offset: 0, strides }, reduce: None });
}

#[test]
fn math_functions_match_cranelift_bit_for_bit() {
    assert!(!levels().is_empty(), "the CI machines have AVX2 and FMA");
    // Their ranges, special values and the edges of each branch.
    let mut xs: Vec<f32> = (0..40_000).map(|i| -100.0 + 200.0 * i as f32 / 39_999.0).collect();
    xs.extend((0..20_000).map(|i| 2f32.powf(-130.0 + 260.0 * i as f32 / 19_999.0)));
    xs.extend([0.0, -0.0, f32::INFINITY, f32::NEG_INFINITY, f32::NAN, 1e-40, -1e-40, 0.625, -0.625, 88.0, -88.0, 88.8, -87.336_54, 44.0, f32::MAX, f32::MIN]);
    let n = xs.len();
    for op in [UnaryOp::Exp, UnaryOp::Log, UnaryOp::Tanh, UnaryOp::Sigmoid, UnaryOp::Sqrt, UnaryOp::Neg, UnaryOp::Abs] {
        let mut k = LoopKernel::new("math", vec![n]);
        let x = load(&mut k, 1, 0, vec![1]);
        // A transcendental in every kernel, so that each is a wide one.
        let heavy = k.push(Inst::Unary { op: UnaryOp::Exp, dtype: DType::F32, x });
        let y = k.push(Inst::Unary { op, dtype: DType::F32, x });
        store(&mut k, y, 2, vec![1]);
        store(&mut k, heavy, 3, vec![1]);
        let (clif, runs) = run_both(&k, &[xs.clone(), vec![0.0; n], vec![0.0; n]], 3);
        for (level, bufs) in runs {
            same_bits(&format!("{op:?} at {level:?}"), &clif[1], &bufs[1]);
        }
    }
}

/// An LSTM-like cell over [rows, hidden]: gates read from a [rows, 4·hidden]
/// buffer at column offsets, a bias broadcast down the rows, a scalar
/// broadcast everywhere, a transposed (strided) read, and every binary,
/// compare and select form.
fn recurrent_cell_matches_cranelift(rows: usize, hidden: usize) {
    let g = 4 * hidden as i64;
    let mut k = LoopKernel::new("cell", vec![rows, hidden]);
    let gate = |k: &mut LoopKernel, q: i64| load(k, 1, q * hidden as i64, vec![g, 1]);
    let (i, f, c_in, o) = (gate(&mut k, 0), gate(&mut k, 1), gate(&mut k, 2), gate(&mut k, 3));
    let bias = load(&mut k, 2, 0, vec![0, 1]);
    let scale = load(&mut k, 3, 0, vec![0, 0]);
    let c_prev = load(&mut k, 4, 0, vec![1, rows as i64]);
    let unary = |k: &mut LoopKernel, op, x| k.push(Inst::Unary { op, dtype: DType::F32, x });
    let binary = |k: &mut LoopKernel, op, a, b| k.push(Inst::Binary { op, dtype: DType::F32, a, b });
    let ib = binary(&mut k, BinaryOp::Add, i, bias);
    let i = unary(&mut k, UnaryOp::Sigmoid, ib);
    let f = unary(&mut k, UnaryOp::Sigmoid, f);
    let g_ = unary(&mut k, UnaryOp::Tanh, c_in);
    let o = unary(&mut k, UnaryOp::Sigmoid, o);
    let fc = binary(&mut k, BinaryOp::Mul, f, c_prev);
    let ig = binary(&mut k, BinaryOp::Mul, i, g_);
    let c = binary(&mut k, BinaryOp::Add, fc, ig);
    let tc = unary(&mut k, UnaryOp::Tanh, c);
    let h = binary(&mut k, BinaryOp::Mul, o, tc);
    let hs = binary(&mut k, BinaryOp::Div, h, scale);
    let hmax = binary(&mut k, BinaryOp::Max, hs, c);
    let hmin = binary(&mut k, BinaryOp::Min, hmax, ib);
    let lt = k.push(Inst::Compare { op: CmpOp::Lt, dtype: DType::F32, a: c, b: h });
    let ne = k.push(Inst::Compare { op: CmpOp::Ne, dtype: DType::F32, a: c, b: ib });
    let picked = k.push(Inst::Select { dtype: DType::F32, cond: lt, a: hmin, b: fc });
    let picked = k.push(Inst::Select { dtype: DType::F32, cond: ne, a: picked, b: o });
    let lg = unary(&mut k, UnaryOp::Log, o);
    let d = binary(&mut k, BinaryOp::Sub, picked, lg);
    store(&mut k, c, 5, vec![hidden as i64, 1]);
    store(&mut k, h, 6, vec![hidden as i64, 1]);
    store(&mut k, d, 7, vec![1, rows as i64]);
    let n = rows * hidden;
    let wave = |len: usize, a: f32| (0..len).map(|j| (j as f32 * a).sin() * 6.0).collect::<Vec<f32>>();
    let mut gates = wave(rows * 4 * hidden, 0.37);
    gates[5] = f32::NAN;
    gates[17] = f32::INFINITY;
    gates[30] = -1e30;
    let buffers = [gates, wave(hidden, 0.11), vec![0.75], wave(n, 0.05), vec![0.0; n], vec![0.0; n], vec![0.0; n]];
    for parts in [1, 2, 5] {
        let (clif, runs) = run_both(&k, &buffers, parts);
        for (level, bufs) in runs {
            for slot in [4, 5, 6] {
                same_bits(&format!("[{rows}, {hidden}]: store {slot} at {level:?}, {parts} parts"), &clif[slot], &bufs[slot]);
            }
        }
    }
}

#[test]
fn a_recurrent_cell_matches_cranelift_bit_for_bit() {
    // Rows of more than a chunk, and rows packed several to a chunk: 4 of
    // 32 (seq2seq's cells), 3 of 40 with lanes left over, 8 of 16.
    for (rows, hidden) in [(13, 150), (13, 32), (11, 40), (9, 16)] {
        recurrent_cell_matches_cranelift(rows, hidden);
    }
}

/// Three loops, the outer two packed into chunks across their boundary
/// ([3, 5, 24]: 5 rows to a chunk, so chunks straddle loop 0's steps), a
/// transposed read and a row broadcast.
#[test]
fn packed_rows_cross_outer_loops() {
    let (a, b, c) = (3usize, 5usize, 24usize);
    let mut k = LoopKernel::new("packed", vec![a, b, c]);
    let x = load(&mut k, 1, 0, vec![(b * c) as i64, c as i64, 1]);
    let t = load(&mut k, 2, 3, vec![1, a as i64, (a * b) as i64]);
    let w = load(&mut k, 3, 0, vec![0, 1, 0]);
    let s = k.push(Inst::Unary { op: UnaryOp::Tanh, dtype: DType::F32, x });
    let p = k.push(Inst::Binary { op: BinaryOp::Mul, dtype: DType::F32, a: s, b: t });
    let y = k.push(Inst::Binary { op: BinaryOp::Add, dtype: DType::F32, a: p, b: w });
    store(&mut k, y, 4, vec![(b * c) as i64, c as i64, 1]);
    let n = a * b * c;
    let wave = |len: usize, f: f32| (0..len).map(|j| (j as f32 * f).sin() * 3.0).collect::<Vec<f32>>();
    let buffers = [wave(n, 0.3), wave(n + 3, 0.7), wave(b, 1.1), vec![0.0; n]];
    for parts in [1, 2, 3] {
        let (clif, runs) = run_both(&k, &buffers, parts);
        for (level, bufs) in runs {
            same_bits(&format!("{level:?}, {parts} parts"), &clif[3], &bufs[3]);
        }
    }
}

#[test]
fn light_integer_and_reducing_kernels_stay_with_cranelift() {
    let mut k = LoopKernel::new("light", vec![4, 128]);
    let x = load(&mut k, 1, 0, vec![128, 1]);
    let y = k.push(Inst::Binary { op: BinaryOp::Mul, dtype: DType::F32, a: x, b: x });
    store(&mut k, y, 2, vec![128, 1]);
    assert!(WideKernel::new(&k).is_none(), "no transcendental: Cranelift's 4 lanes suffice");
    let e = k.push(Inst::Unary { op: UnaryOp::Exp, dtype: DType::F32, x: y });
    k.stores.push(Store { value: e, dtype: DType::F32, access: Access { slot: 3, offset: 0, strides: vec![1, 0] }, reduce: Some(d2l_ir::ReduceOp::Sum) });
    assert!(WideKernel::new(&k).is_none(), "a reduction");
    k.stores.pop();
    store(&mut k, e, 3, vec![128, 1]);
    if !levels().is_empty() {
        assert!(WideKernel::new(&k).is_some());
    }
    let mut short = LoopKernel::new("short", vec![64, 8]);
    let x = load(&mut short, 1, 0, vec![8, 1]);
    let e = short.push(Inst::Unary { op: UnaryOp::Exp, dtype: DType::F32, x });
    store(&mut short, e, 2, vec![8, 1]);
    assert!(WideKernel::new(&short).is_none(), "rows of 8 cost more to copy than they save");
}
