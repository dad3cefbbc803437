//! Reductions: reduce_sum / reduce_max over axes, argmax.
//!
//! Reducing one axis of a row-major array is viewed as `[outer, n, inner]`
//! → `[outer, 1, inner]`. With `inner == 1` each output is a fold of one
//! contiguous lane; otherwise whole rows of `inner` elements are combined,
//! which streams through memory in order.

use d2l_ir::{ReduceOp, Shape};
use ndarray::ArrayD;

use super::elem::Elem;
use super::{OpError, array, flat, ill_typed};
use crate::Tensor;

/// (outer, n, inner) of `dims` around `axis`.
fn split(dims: &[usize], axis: usize) -> (usize, usize, usize) {
    (dims[..axis].iter().product(), dims[axis], dims[axis + 1..].iter().product())
}

/// Sum of a contiguous lane with eight independent accumulators: this
/// vectorises and loses less precision than one running sum.
fn lane_sum<T: Elem>(lane: &[T]) -> T {
    let mut acc = [T::ZERO; 8];
    let chunks = lane.chunks_exact(8);
    let rest = chunks.remainder();
    for c in chunks {
        for k in 0..8 {
            acc[k] = acc[k].add(c[k]);
        }
    }
    let pairs = [acc[0].add(acc[4]), acc[1].add(acc[5]), acc[2].add(acc[6]), acc[3].add(acc[7])];
    let mut total = pairs[0].add(pairs[2]).add(pairs[1].add(pairs[3]));
    for &x in rest {
        total = total.add(x);
    }
    total
}

/// Reduces one axis of a row-major buffer.
fn reduce_axis<T: Elem>(op: ReduceOp, data: &[T], dims: &[usize], axis: usize) -> Vec<T> {
    let (outer, n, inner) = split(dims, axis);
    let combine = match op {
        ReduceOp::Sum => T::add,
        ReduceOp::Max => T::max_of,
    };
    let init = match op {
        ReduceOp::Sum => T::ZERO,
        ReduceOp::Max => T::LOWEST,
    };
    let mut out = vec![init; outer * inner];
    if n == 0 || inner == 0 {
        return out;
    }
    for (o, block) in data.chunks_exact(n * inner).enumerate() {
        let dst = &mut out[o * inner..(o + 1) * inner];
        if inner == 1 {
            dst[0] = match op {
                ReduceOp::Sum => lane_sum(block),
                ReduceOp::Max => block.iter().fold(init, |m, &x| m.max_of(x)),
            };
        } else {
            for row in block.chunks_exact(inner) {
                for (d, &x) in dst.iter_mut().zip(row) {
                    *d = combine(*d, x);
                }
            }
        }
    }
    out
}

/// Reduces over `axes`, keeping each as size 1.
pub(super) fn reduce(op: ReduceOp, x: &Tensor, axes: &[usize]) -> Result<Tensor, OpError> {
    fn go<T: Elem>(op: ReduceOp, a: &ArrayD<T>, axes: &[usize]) -> Result<ArrayD<T>, OpError> {
        let mut dims = a.shape().to_vec();
        let mut data = flat(a).into_owned();
        for &axis in axes {
            if axis >= dims.len() {
                return ill_typed(format!("reduce axis {axis} out of range for {}", Shape(dims)));
            }
            data = reduce_axis(op, &data, &dims, axis);
            dims[axis] = 1;
        }
        array(&dims, data)
    }
    Ok(match x {
        Tensor::F32(a) => Tensor::F32(go(op, a, axes)?),
        Tensor::F64(a) => Tensor::F64(go(op, a, axes)?),
        Tensor::I64(a) => Tensor::I64(go(op, a, axes)?),
        Tensor::Bool(_) => return ill_typed("reduce is not defined on bool tensors"),
    })
}

/// Index of the maximum along `axis` (kept as size 1), the first one on
/// ties; a NaN counts as the maximum (as in NumPy).
pub(super) fn argmax(x: &Tensor, axis: usize) -> Result<Tensor, OpError> {
    fn go<T: Elem>(a: &ArrayD<T>, axis: usize) -> Result<ArrayD<i64>, OpError> {
        let mut dims = a.shape().to_vec();
        if axis >= dims.len() {
            return ill_typed(format!("argmax axis {axis} out of range for {}", Shape(dims)));
        }
        let (outer, n, inner) = split(&dims, axis);
        let data = flat(a);
        let mut out = vec![0i64; outer * inner];
        if n > 0 && inner > 0 {
            let mut best: Vec<T> = Vec::with_capacity(inner);
            for (o, block) in data.chunks_exact(n * inner).enumerate() {
                let idx = &mut out[o * inner..(o + 1) * inner];
                best.clear();
                best.extend_from_slice(&block[..inner]);
                // Strictly greater (or a first NaN) replaces: earlier wins ties.
                for (k, row) in block.chunks_exact(inner).enumerate().skip(1) {
                    for ((b, i), &v) in best.iter_mut().zip(idx.iter_mut()).zip(row) {
                        if v > *b || (v.is_nan() && !b.is_nan()) {
                            *b = v;
                            *i = k as i64;
                        }
                    }
                }
            }
        }
        dims[axis] = 1;
        array(&dims, out)
    }
    Ok(Tensor::I64(match x {
        Tensor::F32(a) => go(a, axis)?,
        Tensor::F64(a) => go(a, axis)?,
        Tensor::I64(a) => go(a, axis)?,
        Tensor::Bool(a) => go(a, axis)?,
    }))
}
