//! Indexing: gather and its transpose scatter_add.
//!
//! With `x` viewed as `[outer, n, inner]` around `axis` and the indices
//! flattened to `[m]`, gather is `out[o, i, :] = x[o, idx[i], :]` and
//! scatter_add is `out[o, idx[i], :] += updates[o, i, :]`.

use ndarray::ArrayD;

use super::elem::Elem;
use super::{OpError, array, flat, ill_typed};
use crate::Tensor;

/// The indices as offsets, each checked to lie in `0..size`.
fn checked_indices(idx: &Tensor, size: usize) -> Result<Vec<usize>, OpError> {
    let Tensor::I64(idx) = idx else {
        return ill_typed(format!("indices must be i64, not {}", idx.dtype()));
    };
    idx.iter()
        .map(|&i| match usize::try_from(i) {
            Ok(u) if u < size => Ok(u),
            _ => Err(OpError::IndexOutOfRange { index: i, size }),
        })
        .collect()
}

pub(super) fn gather(x: &Tensor, idx: &Tensor, axis: usize) -> Result<Tensor, OpError> {
    fn go<T: Elem>(a: &ArrayD<T>, idx: &Tensor, axis: usize) -> Result<ArrayD<T>, OpError> {
        let dims = a.shape();
        if axis >= dims.len() {
            return ill_typed(format!("gather axis {axis} out of range for rank {}", dims.len()));
        }
        let (outer, n, inner): (usize, usize, usize) =
            (dims[..axis].iter().product(), dims[axis], dims[axis + 1..].iter().product());
        let rows = checked_indices(idx, n)?;
        let mut out_dims = dims[..axis].to_vec();
        out_dims.extend_from_slice(idx.dims());
        out_dims.extend_from_slice(&dims[axis + 1..]);
        let data = flat(a);
        let mut out = Vec::with_capacity(outer * rows.len() * inner);
        // Non-empty `rows` implies n > 0, so the chunk size is positive.
        if inner > 0 && !rows.is_empty() {
            for block in data.chunks_exact(n * inner).take(outer) {
                for &r in &rows {
                    out.extend_from_slice(&block[r * inner..(r + 1) * inner]);
                }
            }
        }
        array(&out_dims, out)
    }
    Ok(map_same!(x, |a| go(a, idx, axis)?))
}

/// Zeros of `out_dims`, with each update row added at its index.
pub(super) fn scatter_add(idx: &Tensor, updates: &Tensor, axis: usize, out_dims: &[usize]) -> Result<Tensor, OpError> {
    fn go<T: Elem>(idx: &Tensor, u: &ArrayD<T>, axis: usize, out_dims: &[usize]) -> Result<ArrayD<T>, OpError> {
        if axis >= out_dims.len() {
            return ill_typed(format!("scatter_add axis {axis} out of range for rank {}", out_dims.len()));
        }
        let (outer, n, inner): (usize, usize, usize) =
            (out_dims[..axis].iter().product(), out_dims[axis], out_dims[axis + 1..].iter().product());
        let rows = checked_indices(idx, n)?;
        let mut expect = out_dims[..axis].to_vec();
        expect.extend_from_slice(idx.dims());
        expect.extend_from_slice(&out_dims[axis + 1..]);
        if u.shape() != expect {
            return ill_typed(format!("scatter_add updates {:?} do not match indices (expected {expect:?})", u.shape()));
        }
        let mut out = vec![T::ZERO; outer * n * inner];
        let upd = flat(u);
        if inner > 0 && !rows.is_empty() {
            for (dst, src) in out.chunks_exact_mut(n * inner).zip(upd.chunks_exact(rows.len() * inner)) {
                for (&r, row) in rows.iter().zip(src.chunks_exact(inner)) {
                    for (d, &v) in dst[r * inner..(r + 1) * inner].iter_mut().zip(row) {
                        *d = d.add(v);
                    }
                }
            }
        }
        array(out_dims, out)
    }
    Ok(map_same!(updates, |u| go(idx, u, axis, out_dims)?))
}
