//! Nullary and elementwise ops: full, iota, rand, unary, binary, compare,
//! select, cast.

use d2l_ir::{BinaryOp, CmpOp, DType, RandDist, UnaryOp};
use ndarray::{ArrayD, IxDyn, Zip};
use rand::Rng;
use rand::rngs::StdRng;
use rand_distr::{Distribution, StandardNormal};

use super::elem::{Elem, Float};
use super::{OpError, array, ill_typed};
use crate::Tensor;

pub(super) fn full(dtype: DType, dims: &[usize], value: f64) -> Tensor {
    of_dtype!(dtype, |T| ArrayD::from_elem(IxDyn(dims), T::from_f64(value)))
}

/// Each element is its index along `axis`.
pub(super) fn iota(dtype: DType, dims: &[usize], axis: usize) -> Result<Tensor, OpError> {
    let Some(&size) = dims.get(axis) else {
        return ill_typed(format!("iota axis {axis} out of range for rank {}", dims.len()));
    };
    // Row-major: the index along `axis` of flat position f is (f / inner) % size.
    let inner: usize = dims[axis + 1..].iter().product::<usize>().max(1);
    let numel: usize = dims.iter().product();
    let indices = (0..numel).map(move |f| ((f / inner) % size) as f64);
    Ok(of_dtype!(dtype, |T| array(dims, indices.map(T::from_f64).collect())?))
}

/// Fresh samples from the interpreter's generator.
pub(super) fn rand(rng: &mut StdRng, dist: RandDist, dtype: DType, dims: &[usize]) -> Result<Tensor, OpError> {
    let shape = IxDyn(dims);
    Ok(match (dist, dtype) {
        (RandDist::Uniform, DType::F32) => Tensor::F32(ArrayD::from_shape_simple_fn(shape, || rng.random::<f32>())),
        (RandDist::Uniform, DType::F64) => Tensor::F64(ArrayD::from_shape_simple_fn(shape, || rng.random::<f64>())),
        (RandDist::Normal, DType::F32) => {
            Tensor::F32(ArrayD::from_shape_simple_fn(shape, || StandardNormal.sample(&mut *rng)))
        }
        (RandDist::Normal, DType::F64) => {
            Tensor::F64(ArrayD::from_shape_simple_fn(shape, || StandardNormal.sample(&mut *rng)))
        }
        (_, d) => return ill_typed(format!("random numbers must be float, not {d}")),
    })
}

pub(super) fn unary(op: UnaryOp, x: &Tensor) -> Result<Tensor, OpError> {
    Ok(match x {
        Tensor::F32(a) => Tensor::F32(unary_float(op, a)),
        Tensor::F64(a) => Tensor::F64(unary_float(op, a)),
        // Wrapping, so that negating i64::MIN from a feed cannot panic.
        Tensor::I64(a) if op == UnaryOp::Neg => Tensor::I64(a.mapv(i64::wrapping_neg)),
        Tensor::I64(a) if op == UnaryOp::Abs => Tensor::I64(a.mapv(i64::wrapping_abs)),
        other => return ill_typed(format!("{op:?} is not defined on {} tensors", other.dtype())),
    })
}

fn unary_float<T: Float>(op: UnaryOp, a: &ArrayD<T>) -> ArrayD<T> {
    match op {
        UnaryOp::Neg => a.mapv(|x| -x),
        UnaryOp::Exp => a.mapv(T::exp),
        UnaryOp::Log => a.mapv(T::ln),
        UnaryOp::Sqrt => a.mapv(T::sqrt),
        UnaryOp::Tanh => a.mapv(T::tanh),
        UnaryOp::Sigmoid => a.mapv(T::sigmoid),
        UnaryOp::Abs => a.mapv(T::abs),
        UnaryOp::Sin => a.mapv(T::sin),
        UnaryOp::Cos => a.mapv(T::cos),
    }
}

/// `f` applied pairwise to two arrays of one shape.
fn zip_map<A: Copy, B: Copy, U>(a: &ArrayD<A>, b: &ArrayD<B>, f: impl Fn(A, B) -> U) -> Result<ArrayD<U>, OpError> {
    if a.shape() != b.shape() {
        return ill_typed(format!("operand shapes {:?} and {:?} differ", a.shape(), b.shape()));
    }
    Ok(Zip::from(a).and(b).map_collect(|&x, &y| f(x, y)))
}

pub(super) fn binary(op: BinaryOp, x: &Tensor, y: &Tensor) -> Result<Tensor, OpError> {
    Ok(match (x, y) {
        (Tensor::F32(a), Tensor::F32(b)) => Tensor::F32(binary_float(op, a, b)?),
        (Tensor::F64(a), Tensor::F64(b)) => Tensor::F64(binary_float(op, a, b)?),
        (Tensor::I64(a), Tensor::I64(b)) => Tensor::I64(binary_i64(op, a, b)?),
        (Tensor::Bool(a), Tensor::Bool(b)) => Tensor::Bool(match op {
            BinaryOp::Max => zip_map(a, b, |p, q| p | q)?,
            BinaryOp::Min => zip_map(a, b, |p, q| p & q)?,
            _ => return ill_typed(format!("{op:?} is not defined on bool tensors")),
        }),
        _ => return ill_typed(format!("{op:?} of {} and {}", x.dtype(), y.dtype())),
    })
}

fn binary_float<T: Float>(op: BinaryOp, a: &ArrayD<T>, b: &ArrayD<T>) -> Result<ArrayD<T>, OpError> {
    match op {
        BinaryOp::Add => zip_map(a, b, |p, q| p + q),
        BinaryOp::Sub => zip_map(a, b, |p, q| p - q),
        BinaryOp::Mul => zip_map(a, b, |p, q| p * q),
        BinaryOp::Div => zip_map(a, b, |p, q| p / q),
        BinaryOp::Max => zip_map(a, b, T::max_of),
        BinaryOp::Min => zip_map(a, b, T::min_of),
        BinaryOp::Pow => zip_map(a, b, T::powf),
    }
}

fn binary_i64(op: BinaryOp, a: &ArrayD<i64>, b: &ArrayD<i64>) -> Result<ArrayD<i64>, OpError> {
    // Wrapping arithmetic: overflow from a feed must not panic.
    match op {
        BinaryOp::Add => zip_map(a, b, i64::wrapping_add),
        BinaryOp::Sub => zip_map(a, b, i64::wrapping_sub),
        BinaryOp::Mul => zip_map(a, b, i64::wrapping_mul),
        BinaryOp::Div => {
            if b.iter().any(|&q| q == 0) {
                return Err(OpError::DivisionByZero);
            }
            // Truncates toward zero; i64::MIN / -1 wraps to i64::MIN.
            zip_map(a, b, i64::wrapping_div)
        }
        BinaryOp::Max => zip_map(a, b, i64::max),
        BinaryOp::Min => zip_map(a, b, i64::min),
        BinaryOp::Pow => ill_typed("pow is not defined on i64 tensors"),
    }
}

pub(super) fn compare(op: CmpOp, x: &Tensor, y: &Tensor) -> Result<Tensor, OpError> {
    Ok(Tensor::Bool(match (x, y) {
        (Tensor::F32(a), Tensor::F32(b)) => compare_arrays(op, a, b)?,
        (Tensor::F64(a), Tensor::F64(b)) => compare_arrays(op, a, b)?,
        (Tensor::I64(a), Tensor::I64(b)) => compare_arrays(op, a, b)?,
        (Tensor::Bool(a), Tensor::Bool(b)) => compare_arrays(op, a, b)?,
        _ => return ill_typed(format!("comparing {} with {}", x.dtype(), y.dtype())),
    }))
}

/// IEEE comparisons: anything involving NaN is false, except `ne`.
fn compare_arrays<T: Elem>(op: CmpOp, a: &ArrayD<T>, b: &ArrayD<T>) -> Result<ArrayD<bool>, OpError> {
    match op {
        CmpOp::Eq => zip_map(a, b, |p, q| p == q),
        CmpOp::Ne => zip_map(a, b, |p, q| p != q),
        CmpOp::Lt => zip_map(a, b, |p, q| p < q),
        CmpOp::Le => zip_map(a, b, |p, q| p <= q),
        CmpOp::Gt => zip_map(a, b, |p, q| p > q),
        CmpOp::Ge => zip_map(a, b, |p, q| p >= q),
    }
}

pub(super) fn select(cond: &Tensor, on_true: &Tensor, on_false: &Tensor) -> Result<Tensor, OpError> {
    let Tensor::Bool(c) = cond else {
        return ill_typed(format!("select condition must be bool, not {}", cond.dtype()));
    };
    fn pick<T: Copy>(c: &ArrayD<bool>, a: &ArrayD<T>, b: &ArrayD<T>) -> Result<ArrayD<T>, OpError> {
        if c.shape() != a.shape() || a.shape() != b.shape() {
            return ill_typed(format!("select of shapes {:?}, {:?}, {:?}", c.shape(), a.shape(), b.shape()));
        }
        Ok(Zip::from(c).and(a).and(b).map_collect(|&c, &x, &y| if c { x } else { y }))
    }
    Ok(match (on_true, on_false) {
        (Tensor::F32(a), Tensor::F32(b)) => Tensor::F32(pick(c, a, b)?),
        (Tensor::F64(a), Tensor::F64(b)) => Tensor::F64(pick(c, a, b)?),
        (Tensor::I64(a), Tensor::I64(b)) => Tensor::I64(pick(c, a, b)?),
        (Tensor::Bool(a), Tensor::Bool(b)) => Tensor::Bool(pick(c, a, b)?),
        _ => return ill_typed(format!("select between {} and {}", on_true.dtype(), on_false.dtype())),
    })
}

/// Direct conversion per (from, to) pair, so i64 values above 2^53 survive
/// a round trip through i64 (no detour through f64). Float to i64 truncates
/// toward zero (saturating, NaN to 0); to bool is `!= 0`.
pub(super) fn cast(x: &Tensor, to: DType) -> Tensor {
    fn convert<T: Elem>(a: &ArrayD<T>, to: DType) -> Tensor {
        match to {
            DType::F32 => Tensor::F32(a.mapv(T::as_f32)),
            DType::F64 => Tensor::F64(a.mapv(T::as_f64)),
            DType::I64 => Tensor::I64(a.mapv(T::as_i64)),
            DType::Bool => Tensor::Bool(a.mapv(T::as_bool)),
        }
    }
    match x {
        Tensor::F32(a) => convert(a, to),
        Tensor::F64(a) => convert(a, to),
        Tensor::I64(a) => convert(a, to),
        Tensor::Bool(a) => convert(a, to),
    }
}
