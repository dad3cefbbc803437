//! Host tensors: what the interpreter computes on, what data loaders produce
//! and what checkpoints store.

use d2l_ir::{DType, Shape};
use ndarray::{ArrayD, IxDyn};

/// A dense, row-major host tensor of one of the IR's dtypes.
#[derive(Clone, Debug, PartialEq)]
pub enum Tensor {
    F32(ArrayD<f32>),
    F64(ArrayD<f64>),
    I64(ArrayD<i64>),
    Bool(ArrayD<bool>),
}

impl Tensor {
    pub fn dtype(&self) -> DType {
        match self {
            Tensor::F32(_) => DType::F32,
            Tensor::F64(_) => DType::F64,
            Tensor::I64(_) => DType::I64,
            Tensor::Bool(_) => DType::Bool,
        }
    }

    pub fn shape(&self) -> Shape {
        Shape(match self {
            Tensor::F32(a) => a.shape().to_vec(),
            Tensor::F64(a) => a.shape().to_vec(),
            Tensor::I64(a) => a.shape().to_vec(),
            Tensor::Bool(a) => a.shape().to_vec(),
        })
    }

    /// The dimensions, without allocating a [`Shape`].
    pub fn dims(&self) -> &[usize] {
        match self {
            Tensor::F32(a) => a.shape(),
            Tensor::F64(a) => a.shape(),
            Tensor::I64(a) => a.shape(),
            Tensor::Bool(a) => a.shape(),
        }
    }

    /// Number of elements (without building a `Shape`: no allocation).
    /// Whether its elements lie in row-major order in one buffer (a
    /// transposed or sliced array's do not), as compiled code reads them.
    pub fn is_row_major(&self) -> bool {
        match self {
            Tensor::F32(a) => a.is_standard_layout(),
            Tensor::F64(a) => a.is_standard_layout(),
            Tensor::I64(a) => a.is_standard_layout(),
            Tensor::Bool(a) => a.is_standard_layout(),
        }
    }

    pub fn numel(&self) -> usize {
        self.dims().iter().product()
    }

    /// A tensor from row-major f32 data. Panics if `data` does not fit `shape`
    /// (a programming error, not a user one).
    pub fn from_f32(shape: &[usize], data: Vec<f32>) -> Tensor {
        Tensor::F32(ArrayD::from_shape_vec(IxDyn(shape), data).expect("data length matches shape"))
    }

    pub fn from_f64(shape: &[usize], data: Vec<f64>) -> Tensor {
        Tensor::F64(ArrayD::from_shape_vec(IxDyn(shape), data).expect("data length matches shape"))
    }

    pub fn from_i64(shape: &[usize], data: Vec<i64>) -> Tensor {
        Tensor::I64(ArrayD::from_shape_vec(IxDyn(shape), data).expect("data length matches shape"))
    }

    pub fn from_bool(shape: &[usize], data: Vec<bool>) -> Tensor {
        Tensor::Bool(ArrayD::from_shape_vec(IxDyn(shape), data).expect("data length matches shape"))
    }

    pub fn zeros(dtype: DType, shape: &[usize]) -> Tensor {
        match dtype {
            DType::F32 => Tensor::F32(ArrayD::zeros(IxDyn(shape))),
            DType::F64 => Tensor::F64(ArrayD::zeros(IxDyn(shape))),
            DType::I64 => Tensor::I64(ArrayD::zeros(IxDyn(shape))),
            DType::Bool => Tensor::Bool(ArrayD::from_elem(IxDyn(shape), false)),
        }
    }

    /// Every element as f64, row-major (for printing, comparing, metrics).
    pub fn to_f64_vec(&self) -> Vec<f64> {
        match self {
            Tensor::F32(a) => a.iter().map(|&x| x as f64).collect(),
            Tensor::F64(a) => a.iter().copied().collect(),
            Tensor::I64(a) => a.iter().map(|&x| x as f64).collect(),
            Tensor::Bool(a) => a.iter().map(|&x| if x { 1.0 } else { 0.0 }).collect(),
        }
    }

    /// Converts to another dtype (floats truncate toward zero into i64;
    /// nonzero is `true`).
    pub fn cast(&self, dtype: DType) -> Tensor {
        let shape = self.shape();
        let v = self.to_f64_vec();
        match dtype {
            DType::F32 => Tensor::from_f32(&shape.0, v.iter().map(|&x| x as f32).collect()),
            DType::F64 => Tensor::from_f64(&shape.0, v),
            DType::I64 => Tensor::from_i64(&shape.0, v.iter().map(|&x| x as i64).collect()),
            DType::Bool => Tensor::from_bool(&shape.0, v.iter().map(|&x| x != 0.0).collect()),
        }
    }
}
