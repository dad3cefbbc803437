//! Matrix products and windowed ops: matmul, conv2d (im2col + GEMM), pooling.

use d2l_ir::PoolKind;
use ndarray::linalg::general_mat_mul;
use ndarray::{ArrayD, ArrayView2, ArrayViewMut2};

use super::elem::Float;
use super::{OpError, array, flat, ill_typed};
use crate::Tensor;

fn view2<T>(rows: usize, cols: usize, data: &[T]) -> Result<ArrayView2<'_, T>, OpError> {
    ArrayView2::from_shape((rows, cols), data).or_else(|_| ill_typed(format!("{} elements are not {rows}x{cols}", data.len())))
}

fn view2_mut<T>(rows: usize, cols: usize, data: &mut [T]) -> Result<ArrayViewMut2<'_, T>, OpError> {
    let len = data.len();
    ArrayViewMut2::from_shape((rows, cols), data).or_else(|_| ill_typed(format!("{len} elements are not {rows}x{cols}")))
}

/// Applies a float kernel to two operands of one float dtype.
macro_rules! float_pair {
    ($what:expr, $x:expr, $y:expr, |$a:ident, $b:ident| $body:expr) => {
        match ($x, $y) {
            (Tensor::F32($a), Tensor::F32($b)) => Ok(Tensor::F32($body)),
            (Tensor::F64($a), Tensor::F64($b)) => Ok(Tensor::F64($body)),
            (x, y) => ill_typed(format!("{} needs two float tensors of one dtype, got {} and {}", $what, x.dtype(), y.dtype())),
        }
    };
}

/// `[b.., m, k] @ [b.., k, n]`: one GEMM per batch element through ndarray's
/// `general_mat_mul` (the matrixmultiply kernel behind `dot`, writing in place).
pub(super) fn matmul(a: &Tensor, b: &Tensor) -> Result<Tensor, OpError> {
    float_pair!("matmul", a, b, |x, y| matmul_arrays(x, y)?)
}

fn matmul_arrays<T: Float>(a: &ArrayD<T>, b: &ArrayD<T>) -> Result<ArrayD<T>, OpError> {
    let (da, db) = (a.shape(), b.shape());
    let r = da.len();
    if r < 2 || db.len() != r || da[..r - 2] != db[..r - 2] || da[r - 1] != db[r - 2] {
        return ill_typed(format!("matmul: cannot multiply {da:?} by {db:?}"));
    }
    let (m, k, n) = (da[r - 2], da[r - 1], db[r - 1]);
    let mut out_dims = da.to_vec();
    out_dims[r - 1] = n;
    let mut out = vec![T::ZERO; out_dims.iter().product()];
    if m > 0 && n > 0 && k > 0 {
        let (xa, xb) = (flat(a), flat(b));
        for ((sa, sb), sc) in xa.chunks_exact(m * k).zip(xb.chunks_exact(k * n)).zip(out.chunks_exact_mut(m * n)) {
            general_mat_mul(T::ONE, &view2(m, k, sa)?, &view2(k, n, sb)?, T::ZERO, &mut view2_mut(m, n, sc)?);
        }
    }
    array(&out_dims, out)
}

/// Elements of the im2col buffer per GEMM (64 KiB of f32). Measured on
/// LeNet's convs: keeping the buffer cache-resident (about one image per
/// GEMM) beats one wide GEMM over the whole batch by 2-4x; tiny images
/// still share a GEMM.
const COLS_BUDGET: usize = 1 << 14;

/// `conv2d(x[N, C, H, W], w[O, C, kh, kw])`, no padding.
pub(super) fn conv2d(x: &Tensor, w: &Tensor, stride: [usize; 2]) -> Result<Tensor, OpError> {
    float_pair!("conv2d", x, w, |a, b| conv2d_arrays(a, b, stride)?)
}

/// im2col: for a chunk of images, column `(image, oy, ox)` of `cols` holds
/// the receptive field `(c, ki, kj)` of that output pixel, so one GEMM
/// `w[O, C*kh*kw] @ cols` computes every output of the chunk.
fn conv2d_arrays<T: Float>(x: &ArrayD<T>, w: &ArrayD<T>, stride: [usize; 2]) -> Result<ArrayD<T>, OpError> {
    let (&[n, c, h, wd], &[o, ci, kh, kw]) = (x.shape(), w.shape()) else {
        return ill_typed(format!("conv2d needs [N, C, H, W] and [O, C, kh, kw], got {:?} and {:?}", x.shape(), w.shape()));
    };
    let [sy, sx] = stride;
    if c != ci || kh == 0 || kw == 0 || kh > h || kw > wd || sy == 0 || sx == 0 {
        return ill_typed(format!("conv2d of {:?} with kernel {:?} and stride {stride:?}", x.shape(), w.shape()));
    }
    let (ho, wo) = ((h - kh) / sy + 1, (wd - kw) / sx + 1);
    let (pixels, field) = (ho * wo, c * kh * kw);
    let out_dims = [n, o, ho, wo];
    let mut out = vec![T::ZERO; n * o * pixels];
    if out.is_empty() || field == 0 {
        return array(&out_dims, out);
    }
    let (xs, ws) = (flat(x), flat(w));
    let kernel = view2(o, field, &ws)?;
    let chunk = (COLS_BUDGET / (field * pixels)).clamp(1, n);
    let mut cols = vec![T::ZERO; field * chunk * pixels];
    let mut prod = vec![T::ZERO; o * chunk * pixels];
    for first in (0..n).step_by(chunk) {
        let images = chunk.min(n - first);
        let width = images * pixels;
        for img in 0..images {
            let image = &xs[(first + img) * c * h * wd..][..c * h * wd];
            for ch in 0..c {
                for ki in 0..kh {
                    for kj in 0..kw {
                        let row = (ch * kh + ki) * kw + kj;
                        let dst = &mut cols[row * width + img * pixels..][..pixels];
                        for (oy, d) in dst.chunks_exact_mut(wo).enumerate() {
                            let src = &image[(ch * h + oy * sy + ki) * wd + kj..];
                            if sx == 1 {
                                d.copy_from_slice(&src[..wo]);
                            } else {
                                for (ox, v) in d.iter_mut().enumerate() {
                                    *v = src[ox * sx];
                                }
                            }
                        }
                    }
                }
            }
        }
        let cols_view = view2(field, width, &cols[..field * width])?;
        general_mat_mul(T::ONE, &kernel, &cols_view, T::ZERO, &mut view2_mut(o, width, &mut prod[..o * width])?);
        // `prod` is [O, (image, pixel)]; the output is [image, O, pixel].
        for img in 0..images {
            for oc in 0..o {
                out[((first + img) * o + oc) * pixels..][..pixels].copy_from_slice(&prod[oc * width + img * pixels..][..pixels]);
            }
        }
    }
    array(&out_dims, out)
}

/// Max or average over `window`-sized patches of the last two axes, no padding.
pub(super) fn pool2d(kind: PoolKind, x: &Tensor, window: [usize; 2], stride: [usize; 2]) -> Result<Tensor, OpError> {
    fn go<T: Float>(kind: PoolKind, a: &ArrayD<T>, window: [usize; 2], stride: [usize; 2]) -> Result<ArrayD<T>, OpError> {
        let area = T::from_usize(window[0] * window[1]);
        match kind {
            PoolKind::Max => pool_planes(a, window, stride, T::LOWEST, T::max_of, |m| m),
            PoolKind::Avg => pool_planes(a, window, stride, T::ZERO, |s, v| s + v, |s| s / area),
        }
    }
    Ok(match x {
        Tensor::F32(a) => Tensor::F32(go(kind, a, window, stride)?),
        Tensor::F64(a) => Tensor::F64(go(kind, a, window, stride)?),
        other => return ill_typed(format!("pooling needs a float tensor, got {}", other.dtype())),
    })
}

/// Folds `combine` over each window of each `[H, W]` plane, then `finish`.
fn pool_planes<T: Float>(
    a: &ArrayD<T>,
    [wh, ww]: [usize; 2],
    [sy, sx]: [usize; 2],
    init: T,
    combine: impl Fn(T, T) -> T,
    finish: impl Fn(T) -> T,
) -> Result<ArrayD<T>, OpError> {
    let &[n, c, h, w] = a.shape() else {
        return ill_typed(format!("pooling needs [N, C, H, W], got {:?}", a.shape()));
    };
    if wh == 0 || ww == 0 || wh > h || ww > w || sy == 0 || sx == 0 {
        return ill_typed(format!("pooling window {wh}x{ww} stride {sy}x{sx} on {h}x{w}"));
    }
    let (ho, wo) = ((h - wh) / sy + 1, (w - ww) / sx + 1);
    let mut out = Vec::with_capacity(n * c * ho * wo);
    for plane in flat(a).chunks_exact(h * w) {
        for oy in 0..ho {
            for ox in 0..wo {
                let mut acc = init;
                for ki in 0..wh {
                    for &v in &plane[(oy * sy + ki) * w + ox * sx..][..ww] {
                        acc = combine(acc, v);
                    }
                }
                out.push(finish(acc));
            }
        }
    }
    array(&[n, c, ho, wo], out)
}
