//! Data movement: reshape, permute, broadcast, slice, pad, concat.
//!
//! Permute, broadcast and slice are all "read a strided view of the operand
//! in row-major order" and share one copy kernel; pad is its transpose
//! (write the operand into a strided view of the output).

use ndarray::{ArrayD, IxDyn};

use super::elem::Elem;
use super::{OpError, array, flat, ill_typed};
use crate::Tensor;
use d2l_ir::Shape;

/// Row-major strides of `dims`, in elements.
fn standard_strides(dims: &[usize]) -> Vec<isize> {
    Shape(dims.to_vec()).strides().into_iter().map(|s| s as isize).collect()
}

/// Drops size-1 axes and merges neighbours that are one run in memory, so the
/// innermost copy loop is as long as possible (e.g. a bias broadcast over
/// `[N, C, H, W]` becomes a fill of H*W elements, not of W).
fn coalesce(dims: &[usize], strides: &[isize]) -> (Vec<usize>, Vec<isize>) {
    let (mut d, mut s): (Vec<usize>, Vec<isize>) = (Vec::new(), Vec::new());
    for (&dim, &stride) in dims.iter().zip(strides) {
        if dim == 1 {
            continue;
        }
        if let (Some(last_dim), Some(last_stride)) = (d.last_mut(), s.last_mut())
            && *last_stride == stride * dim as isize
        {
            *last_dim *= dim;
            *last_stride = stride;
            continue;
        }
        d.push(dim);
        s.push(stride);
    }
    (d, s)
}

/// Calls `f(base)` for every index `i` of `dims` in row-major order, with
/// `base = start + Σ i[k] * strides[k]` (an odometer: no division per row).
fn for_each_offset(dims: &[usize], strides: &[isize], start: isize, mut f: impl FnMut(isize)) {
    if dims.contains(&0) {
        return;
    }
    let mut idx = vec![0usize; dims.len()];
    let mut base = start;
    loop {
        f(base);
        let mut k = dims.len();
        loop {
            if k == 0 {
                return;
            }
            k -= 1;
            idx[k] += 1;
            base += strides[k];
            if idx[k] < dims[k] {
                break;
            }
            base -= strides[k] * dims[k] as isize;
            idx[k] = 0;
        }
    }
}

/// The elements `src[offset + Σ i[k] * strides[k]]` for all indices `i` of
/// `dims`, row-major. Callers derive strides from the operand's real dims,
/// which keeps every read in bounds.
fn strided_read<T: Copy>(src: &[T], offset: usize, strides: &[isize], dims: &[usize]) -> Vec<T> {
    let numel: usize = dims.iter().product();
    let mut out = Vec::with_capacity(numel);
    if numel == 0 {
        return out;
    }
    let (dims, strides) = coalesce(dims, strides);
    let Some((&len, outer)) = dims.split_last() else {
        out.push(src[offset]);
        return out;
    };
    let step = strides[strides.len() - 1];
    for_each_offset(outer, &strides[..outer.len()], offset as isize, |base| {
        let base = base as usize;
        match step {
            0 => out.extend(std::iter::repeat_n(src[base], len)),
            1 => out.extend_from_slice(&src[base..base + len]),
            _ => out.extend((0..len).map(|j| src[(base as isize + j as isize * step) as usize])),
        }
    });
    out
}

/// Writes `src` (row-major over `dims`) to `dst[offset + Σ i[k] * strides[k]]`.
fn strided_write<T: Copy>(dst: &mut [T], offset: usize, strides: &[isize], dims: &[usize], src: &[T]) {
    if src.is_empty() {
        return;
    }
    let (dims, strides) = coalesce(dims, strides);
    let Some((&len, outer)) = dims.split_last() else {
        dst[offset] = src[0];
        return;
    };
    let step = strides[strides.len() - 1];
    let mut rows = src.chunks_exact(len);
    for_each_offset(outer, &strides[..outer.len()], offset as isize, |base| {
        let (Some(row), base) = (rows.next(), base as usize) else { return };
        if step == 1 {
            dst[base..base + len].copy_from_slice(row);
        } else {
            for (j, &v) in row.iter().enumerate() {
                dst[(base as isize + j as isize * step) as usize] = v;
            }
        }
    });
}

/// Same elements in a new shape; moves the buffer when the tensor is
/// already row-major (always, for values the interpreter made).
pub(super) fn reshape_owned(t: Tensor, dims: &[usize]) -> Result<Tensor, OpError> {
    fn go<T: Clone>(a: ArrayD<T>, dims: &[usize]) -> Result<ArrayD<T>, OpError> {
        let from = a.shape().to_vec();
        let a = if a.is_standard_layout() { a } else { a.as_standard_layout().into_owned() };
        a.into_shape_with_order(IxDyn(dims))
            .or_else(|_| ill_typed(format!("cannot reshape {} to {}", Shape(from), Shape(dims.to_vec()))))
    }
    Ok(map_same!(t, |a| go(a, dims)?))
}

/// Output axis `i` is input axis `perm[i]`.
pub(super) fn permute(x: &Tensor, perm: &[usize]) -> Result<Tensor, OpError> {
    let dims = x.dims();
    let mut seen = vec![false; dims.len()];
    if perm.len() != dims.len() || !perm.iter().all(|&p| p < dims.len() && !std::mem::replace(&mut seen[p], true)) {
        return ill_typed(format!("{perm:?} is not a permutation of the axes of {}", Shape(dims.to_vec())));
    }
    let in_strides = standard_strides(dims);
    let out_dims: Vec<usize> = perm.iter().map(|&p| dims[p]).collect();
    let strides: Vec<isize> = perm.iter().map(|&p| in_strides[p]).collect();
    Ok(map_same!(x, |a| array(&out_dims, strided_read(&flat(a), 0, &strides, &out_dims))?))
}

/// NumPy `broadcast_to`: operand axes align to the right; size-1 axes (and
/// missing leading ones) repeat with stride 0.
pub(super) fn broadcast(x: &Tensor, out_dims: &[usize]) -> Result<Tensor, OpError> {
    let dims = x.dims();
    let Some(lead) = out_dims.len().checked_sub(dims.len()) else {
        return ill_typed(format!("cannot broadcast {} to {}", Shape(dims.to_vec()), Shape(out_dims.to_vec())));
    };
    let in_strides = standard_strides(dims);
    let mut strides = vec![0isize; out_dims.len()];
    for (j, &d) in dims.iter().enumerate() {
        strides[lead + j] = match d {
            _ if d == out_dims[lead + j] => in_strides[j],
            1 => 0,
            _ => {
                return ill_typed(format!("cannot broadcast {} to {}", Shape(dims.to_vec()), Shape(out_dims.to_vec())));
            }
        };
    }
    Ok(map_same!(x, |a| array(out_dims, strided_read(&flat(a), 0, &strides, out_dims))?))
}

/// Per axis `start..end` by `step`.
pub(super) fn slice(x: &Tensor, starts: &[usize], ends: &[usize], steps: &[usize]) -> Result<Tensor, OpError> {
    let dims = x.dims();
    let r = dims.len();
    if starts.len() != r || ends.len() != r || steps.len() != r {
        return ill_typed(format!("slice needs {r} ranges"));
    }
    let in_strides = standard_strides(dims);
    let (mut offset, mut strides, mut out_dims) = (0usize, Vec::with_capacity(r), Vec::with_capacity(r));
    for k in 0..r {
        if steps[k] == 0 || starts[k] > ends[k] || ends[k] > dims[k] {
            return ill_typed(format!("slice {}..{}:{} out of range for axis {k} of size {}", starts[k], ends[k], steps[k], dims[k]));
        }
        let n = (ends[k] - starts[k]).div_ceil(steps[k]);
        if n > 0 {
            offset += starts[k] * in_strides[k] as usize;
        }
        out_dims.push(n);
        strides.push(in_strides[k] * steps[k] as isize);
    }
    if out_dims.contains(&0) {
        offset = 0;
    }
    Ok(map_same!(x, |a| array(&out_dims, strided_read(&flat(a), offset, &strides, &out_dims))?))
}

/// XLA pad: `lo`/`hi` copies of `value` at the ends of each axis and
/// `interior` copies between neighbours.
pub(super) fn pad(x: &Tensor, lo: &[usize], hi: &[usize], interior: &[usize], value: f64) -> Result<Tensor, OpError> {
    fn go<T: Elem>(a: &ArrayD<T>, lo: &[usize], hi: &[usize], interior: &[usize], value: T) -> Result<ArrayD<T>, OpError> {
        let dims = a.shape();
        let out_dims: Vec<usize> = (0..dims.len())
            .map(|k| lo[k] + hi[k] + dims[k] + interior[k] * dims[k].saturating_sub(1))
            .collect();
        let mut out = vec![value; out_dims.iter().product()];
        let out_strides = standard_strides(&out_dims);
        let offset: usize = (0..dims.len()).map(|k| lo[k] * out_strides[k] as usize).sum();
        let strides: Vec<isize> = (0..dims.len()).map(|k| out_strides[k] * (interior[k] as isize + 1)).collect();
        strided_write(&mut out, offset, &strides, dims, &flat(a));
        array(&out_dims, out)
    }
    let r = x.dims().len();
    if lo.len() != r || hi.len() != r || interior.len() != r {
        return ill_typed(format!("pad needs {r} (lo, hi, interior) triples"));
    }
    Ok(map_same!(x, |a| go(a, lo, hi, interior, Elem::from_f64(value))?))
}

/// Joins operands along `axis`: viewing each as `[outer, n_k * inner]`, output
/// row `o` is the rows `o` of all operands one after another.
pub(super) fn concat(args: &[&Tensor], axis: usize, out_dims: &[usize]) -> Result<Tensor, OpError> {
    fn go<T: Elem>(args: &[&Tensor], axis: usize, out_dims: &[usize]) -> Result<ArrayD<T>, OpError> {
        let mut parts = Vec::with_capacity(args.len());
        let mut total = 0;
        for t in args {
            let Some(a) = T::array_of(t) else { return ill_typed("concat operands differ in dtype") };
            let d = a.shape();
            let fits = d.len() == out_dims.len() && (0..d.len()).all(|k| k == axis || d[k] == out_dims[k]);
            if !fits {
                return ill_typed(format!("concat operand {} does not fit {}", Shape(d.to_vec()), Shape(out_dims.to_vec())));
            }
            total += d[axis];
            parts.push(flat(a));
        }
        if total != out_dims[axis] {
            return ill_typed(format!("concat operands sum to {total} along axis {axis}, not {}", out_dims[axis]));
        }
        let outer: usize = out_dims[..axis].iter().product();
        let numel: usize = out_dims.iter().product();
        let mut out = Vec::with_capacity(numel);
        if numel > 0 {
            let rows: Vec<usize> = parts.iter().map(|p| p.len() / outer).collect();
            for o in 0..outer {
                for (p, &row) in parts.iter().zip(&rows) {
                    out.extend_from_slice(&p[o * row..(o + 1) * row]);
                }
            }
        }
        array(out_dims, out)
    }
    let Some(first) = args.first() else { return ill_typed("concat of nothing") };
    if axis >= out_dims.len() {
        return ill_typed(format!("concat axis {axis} out of range"));
    }
    let dtype = first.dtype();
    Ok(of_dtype!(dtype, |T| go::<T>(args, axis, out_dims)?))
}
