//! Element traits: what the dtype-generic kernels need from `f32`, `f64`,
//! `i64` and `bool`. Kernels are monomorphised per element type, so the
//! dtype is dispatched once per node, never per element.

use std::ops::Neg;

use ndarray::{ArrayD, LinalgScalar};

use crate::Tensor;

/// Any element type a tensor can hold.
pub(crate) trait Elem: Copy + Default + PartialOrd + Send + Sync + std::fmt::Debug + 'static {
    /// Additive identity (`false` for bool).
    const ZERO: Self;
    /// Identity of [`Elem::max_of`]: `-inf`, `i64::MIN`, `false`.
    const LOWEST: Self;

    /// A constant of this type: `Full` values, pad values, iota indices
    /// (floats round, i64 truncates and saturates, bool is `!= 0`).
    fn from_f64(v: f64) -> Self;

    /// The array inside `t` if it holds this element type.
    fn array_of(t: &Tensor) -> Option<&ArrayD<Self>>;

    fn as_f32(self) -> f32;
    fn as_f64(self) -> f64;
    fn as_i64(self) -> i64;
    fn as_bool(self) -> bool;

    fn is_nan(self) -> bool {
        false
    }

    /// Accumulation for `reduce_sum` and `scatter_add`: wrapping on i64 so a
    /// bad feed cannot panic, `or` on bool.
    fn add(self, other: Self) -> Self;

    /// Maximum that propagates NaN (like `jnp.maximum`), so a NaN in a
    /// `max`/`reduce_max`/`max_pool` operand is visible downstream.
    fn max_of(self, other: Self) -> Self;
    fn min_of(self, other: Self) -> Self;
}

/// The float element types (f32, f64): transcendental functions and GEMM.
pub(crate) trait Float: Elem + LinalgScalar + Neg<Output = Self> {
    const ONE: Self;
    fn exp(self) -> Self;
    fn ln(self) -> Self;
    fn sqrt(self) -> Self;
    fn tanh(self) -> Self;
    fn sin(self) -> Self;
    fn cos(self) -> Self;
    fn abs(self) -> Self;
    fn powf(self, e: Self) -> Self;
    /// `n` as this type (divisor of average pooling).
    fn from_usize(n: usize) -> Self;

    /// Logistic function without overflow: `exp` is only ever taken of a
    /// non-positive number.
    fn sigmoid(self) -> Self {
        if self >= Self::ZERO {
            Self::ONE / (Self::ONE + (-self).exp())
        } else {
            let e = self.exp();
            e / (Self::ONE + e)
        }
    }
}

macro_rules! tensor_variant {
    ($variant:ident) => {
        fn array_of(t: &Tensor) -> Option<&ArrayD<Self>> {
            match t {
                Tensor::$variant(a) => Some(a),
                _ => None,
            }
        }
    };
}

macro_rules! float_elem {
    ($t:ty, $variant:ident) => {
        impl Elem for $t {
            tensor_variant!($variant);
            const ZERO: Self = 0.0;
            const LOWEST: Self = <$t>::NEG_INFINITY;
            fn from_f64(v: f64) -> Self {
                v as $t
            }
            fn as_f32(self) -> f32 {
                self as f32
            }
            fn as_f64(self) -> f64 {
                self as f64
            }
            fn as_i64(self) -> i64 {
                // `as` truncates toward zero, saturates, and maps NaN to 0.
                self as i64
            }
            fn as_bool(self) -> bool {
                self != 0.0
            }
            fn is_nan(self) -> bool {
                <$t>::is_nan(self)
            }
            fn add(self, other: Self) -> Self {
                self + other
            }
            fn max_of(self, other: Self) -> Self {
                if self.is_nan() || other.is_nan() {
                    <$t>::NAN
                } else if other > self {
                    other
                } else {
                    self
                }
            }
            fn min_of(self, other: Self) -> Self {
                if self.is_nan() || other.is_nan() {
                    <$t>::NAN
                } else if other < self {
                    other
                } else {
                    self
                }
            }
        }

        impl Float for $t {
            const ONE: Self = 1.0;
            fn exp(self) -> Self {
                <$t>::exp(self)
            }
            fn ln(self) -> Self {
                <$t>::ln(self)
            }
            fn sqrt(self) -> Self {
                <$t>::sqrt(self)
            }
            fn tanh(self) -> Self {
                <$t>::tanh(self)
            }
            fn sin(self) -> Self {
                <$t>::sin(self)
            }
            fn cos(self) -> Self {
                <$t>::cos(self)
            }
            fn abs(self) -> Self {
                <$t>::abs(self)
            }
            fn powf(self, e: Self) -> Self {
                <$t>::powf(self, e)
            }
            fn from_usize(n: usize) -> Self {
                n as $t
            }
        }
    };
}

float_elem!(f32, F32);
float_elem!(f64, F64);

impl Elem for i64 {
    tensor_variant!(I64);
    const ZERO: Self = 0;
    const LOWEST: Self = i64::MIN;
    fn from_f64(v: f64) -> Self {
        v as i64
    }
    fn as_f32(self) -> f32 {
        self as f32
    }
    fn as_f64(self) -> f64 {
        self as f64
    }
    fn as_i64(self) -> i64 {
        self
    }
    fn as_bool(self) -> bool {
        self != 0
    }
    fn add(self, other: Self) -> Self {
        self.wrapping_add(other)
    }
    fn max_of(self, other: Self) -> Self {
        self.max(other)
    }
    fn min_of(self, other: Self) -> Self {
        self.min(other)
    }
}

impl Elem for bool {
    tensor_variant!(Bool);
    const ZERO: Self = false;
    const LOWEST: Self = false;
    fn from_f64(v: f64) -> Self {
        v != 0.0
    }
    fn as_f32(self) -> f32 {
        if self { 1.0 } else { 0.0 }
    }
    fn as_f64(self) -> f64 {
        if self { 1.0 } else { 0.0 }
    }
    fn as_i64(self) -> i64 {
        self as i64
    }
    fn as_bool(self) -> bool {
        self
    }
    fn add(self, other: Self) -> Self {
        self | other
    }
    fn max_of(self, other: Self) -> Self {
        self | other
    }
    fn min_of(self, other: Self) -> Self {
        self & other
    }
}
