//! Functions implemented in Rust: thin wrappers over IR primitives, plus
//! compile-time helpers (`range`, `pair`, `sqrt` on numbers, ...). Layers
//! are not here: they are written in d2l in `dsl/std/`.

use d2l_ir::{BinaryOp, DType, Init, NodeId, PoolKind, RandDist, ReduceOp, Shape, UnaryOp};

use std::collections::HashSet;

use super::program::Program;
use super::value::{BoundArg, Instance};
use super::{ArgVal, Lowerer, Result, Value, bind_args, closest, diag, instance_hint, signature_text};
use crate::ast::{BinOp, Expr, ExprKind, IndexItem, Span, Stmt};

/// Every builtin and its parameters; a trailing `?` marks an optional one.
const SIGNATURES: &[(&str, &[&str])] = &[
    // elementwise (tensors) or plain math (compile-time numbers)
    ("exp", &["x"]),
    ("log", &["x"]),
    ("sqrt", &["x"]),
    ("tanh", &["x"]),
    ("sigmoid", &["x"]),
    ("abs", &["x"]),
    ("sin", &["x"]),
    ("cos", &["x"]),
    ("maximum", &["a", "b"]),
    ("minimum", &["a", "b"]),
    ("where", &["cond", "a", "b"]),
    ("stop_gradient", &["x"]),
    // reductions
    ("sum", &["x", "axis?", "keepdim?"]),
    ("mean", &["x", "axis?", "keepdim?"]),
    ("max", &["x", "axis?", "keepdim?"]),
    ("min", &["x", "axis?", "keepdim?"]),
    ("argmax", &["x", "axis?"]),
    // layout
    ("reshape", &["x", "shape"]),
    ("permute", &["x", "perm"]),
    ("transpose", &["x", "a?", "b?"]),
    ("broadcast_to", &["x", "shape"]),
    ("unsqueeze", &["x", "axis"]),
    ("squeeze", &["x", "axis"]),
    ("concat", &["xs", "axis?"]),
    ("pad", &["x", "lo", "hi", "value?"]),
    ("pad2d", &["x", "padding", "value?"]),
    // indexing and types
    ("take", &["x", "idx", "axis?"]),
    ("one_hot", &["idx", "n", "dtype?"]),
    ("cast", &["x", "dtype"]),
    // creation
    ("zeros", &["shape", "dtype?"]),
    ("ones", &["shape", "dtype?"]),
    ("full", &["shape", "value", "dtype?"]),
    ("arange", &["n", "dtype?"]),
    ("rand_uniform", &["shape"]),
    ("rand_normal", &["shape"]),
    // convolution and pooling primitives (no padding; see std/layers.d2l)
    ("conv", &["x", "w", "stride?"]),
    ("pool_max", &["x", "window", "stride?"]),
    ("pool_avg", &["x", "window", "stride?"]),
    // initializers
    ("normal", &["mean?", "std?"]),
    ("uniform", &["low", "high"]),
    ("constant", &["value"]),
    // compile-time helpers
    ("int", &["x"]),
    ("float", &["x"]),
    ("len", &["x"]),
    ("range", &["a", "b?"]),
    ("enumerate", &["xs"]),
    ("zip", &["a", "b"]),
    ("pair", &["x"]),
    // parameter tying: `share(block, key=value, ...)`, handled by `share`
    ("share", &["block"]),
    // inspection: x itself, listed under a name for tools that read it
    ("observe", &["x", "name"]),
];

/// Names usable as values without a call.
const CONSTANTS: &[&str] = &["training", "inf", "pi", "zeros", "ones", "xavier_uniform", "xavier_normal"];

pub(super) const NAMES: &[&str] = &[
    "exp", "log", "sqrt", "tanh", "sigmoid", "abs", "sin", "cos", "maximum", "minimum", "where", "stop_gradient", "sum", "mean", "max", "min", "argmax", "reshape",
    "permute", "transpose", "broadcast_to", "unsqueeze", "squeeze", "concat", "pad", "pad2d", "take", "one_hot", "cast", "zeros", "ones", "full", "arange",
    "rand_uniform", "rand_normal", "conv", "pool_max", "pool_avg", "normal", "uniform", "constant", "int", "float", "len", "range", "enumerate", "zip", "pair",
    "share", "observe", "training", "inf", "pi", "xavier_uniform", "xavier_normal",
];

pub(super) const INIT_HELP: &str = "initializers are zeros, ones, normal(mean, std), uniform(low, high), constant(v), xavier_uniform and xavier_normal";

pub(super) fn is_builtin(name: &str) -> bool {
    SIGNATURES.iter().any(|(n, _)| *n == name)
}

pub(super) fn constant(name: &str, training: bool) -> Option<Value> {
    Some(match name {
        "training" => Value::Bool(training),
        "inf" => Value::Float(f64::INFINITY),
        "pi" => Value::Float(std::f64::consts::PI),
        _ if CONSTANTS.contains(&name) => Value::Func(name.into()),
        _ => return None,
    })
}

pub(super) fn named_init(name: &str) -> Option<Init> {
    Some(match name {
        "zeros" => Init::Zeros,
        "ones" => Init::Ones,
        "xavier_uniform" => Init::XavierUniform,
        "xavier_normal" => Init::XavierNormal,
        _ => return None,
    })
}

/// Arithmetic and comparisons on compile-time numbers and tuples.
pub(super) fn scalar_binary(op: BinOp, a: &Value, b: &Value) -> Option<Value> {
    use Value::{Bool, Float, Int, Tuple};
    Some(match (op, a, b) {
        (BinOp::Add, Int(x), Int(y)) => Int(x.checked_add(*y)?),
        (BinOp::Sub, Int(x), Int(y)) => Int(x.checked_sub(*y)?),
        (BinOp::Mul, Int(x), Int(y)) => Int(x.checked_mul(*y)?),
        // Exact integer division stays an int (shapes), otherwise a float.
        (BinOp::Div, Int(x), Int(y)) if *y != 0 && x % y == 0 => Int(x / y),
        (BinOp::Rem, Int(x), Int(y)) if *y != 0 => Int(x.rem_euclid(*y)),
        (BinOp::Pow, Int(x), Int(y)) if *y >= 0 => Int(x.checked_pow(u32::try_from(*y).ok()?)?),
        (BinOp::Add, Tuple(x), Tuple(y)) => Tuple(x.iter().chain(y).cloned().collect()),
        (BinOp::Eq, x, y) => Bool(x == y || (x.as_f64().is_some() && x.as_f64() == y.as_f64())),
        (BinOp::Ne, x, y) => Bool(!(x == y || (x.as_f64().is_some() && x.as_f64() == y.as_f64()))),
        (BinOp::And, Bool(x), Bool(y)) => Bool(*x && *y),
        (BinOp::Or, Bool(x), Bool(y)) => Bool(*x || *y),
        (op, x, y) => {
            let (x, y) = (x.as_f64()?, y.as_f64()?);
            match op {
                BinOp::Add => Float(x + y),
                BinOp::Sub => Float(x - y),
                BinOp::Mul => Float(x * y),
                BinOp::Div if y != 0.0 => Float(x / y),
                BinOp::Pow => Float(x.powf(y)),
                BinOp::Lt => Bool(x < y),
                BinOp::Le => Bool(x <= y),
                BinOp::Gt => Bool(x > y),
                BinOp::Ge => Bool(x >= y),
                _ => return None,
            }
        }
    })
}

/// Bound arguments of one builtin call, with typed accessors that report
/// errors at the argument's own span.
struct Args<'a> {
    callee: &'a str,
    span: Span,
    names: &'a [&'a str],
    slots: Vec<Option<(Value, Span)>>,
}

impl Args<'_> {
    fn get(&self, i: usize) -> Option<&Value> {
        self.slots[i].as_ref().map(|(v, _)| v)
    }

    fn span(&self, i: usize) -> Span {
        self.slots[i].as_ref().map_or(self.span, |(_, s)| *s)
    }

    fn name(&self, i: usize) -> &str {
        self.names[i].trim_end_matches('?')
    }

    fn wrong(&self, lw: &Lowerer, i: usize, want: &str) -> crate::Diagnostic {
        let got = self.get(i).map_or("nothing".into(), |v| v.describe(&lw.graph));
        let d = diag(self.span(i), format!("argument `{}` of `{}` must be {want}, got {got}", self.name(i), self.callee)).with_label("this argument");
        instance_hint(d, &self.get(i).into_iter().collect::<Vec<_>>())
    }

    fn tensor(&self, lw: &Lowerer, i: usize) -> Result<NodeId> {
        match self.get(i) {
            Some(Value::Tensor(id)) => Ok(*id),
            _ => Err(self.wrong(lw, i, "a tensor")),
        }
    }

    fn int(&self, lw: &Lowerer, i: usize) -> Result<i64> {
        match self.get(i) {
            Some(Value::Int(v)) => Ok(*v),
            _ => Err(self.wrong(lw, i, "an int")),
        }
    }

    fn float(&self, lw: &Lowerer, i: usize) -> Result<f64> {
        self.get(i).and_then(Value::as_f64).ok_or_else(|| self.wrong(lw, i, "a number"))
    }

    fn bool_or(&self, lw: &Lowerer, i: usize, default: bool) -> Result<bool> {
        match self.get(i) {
            None => Ok(default),
            Some(Value::Bool(b)) => Ok(*b),
            _ => Err(self.wrong(lw, i, "a bool")),
        }
    }

    fn ints(&self, lw: &Lowerer, i: usize) -> Result<Vec<i64>> {
        match self.get(i) {
            Some(Value::Int(v)) => Ok(vec![*v]),
            Some(Value::Tuple(items)) => items.iter().map(|v| if let Value::Int(x) = v { Ok(*x) } else { Err(self.wrong(lw, i, "a tuple of ints")) }).collect(),
            _ => Err(self.wrong(lw, i, "a tuple of ints")),
        }
    }

    /// A shape: a tuple of positive ints.
    fn shape(&self, lw: &Lowerer, i: usize) -> Result<Shape> {
        let dims = self.ints(lw, i)?;
        if dims.iter().any(|&d| d < 0) {
            return Err(self.wrong(lw, i, "a shape of non-negative ints"));
        }
        Ok(Shape(dims.into_iter().map(|d| d as usize).collect()))
    }

    /// An (h, w) pair from an int or a 2-tuple, each positive.
    fn pair(&self, lw: &Lowerer, i: usize, default: Option<[usize; 2]>) -> Result<[usize; 2]> {
        if self.get(i).is_none()
            && let Some(d) = default
        {
            return Ok(d);
        }
        match self.ints(lw, i)?[..] {
            [a] if a > 0 => Ok([a as usize; 2]),
            [a, b] if a > 0 && b > 0 => Ok([a as usize, b as usize]),
            _ => Err(self.wrong(lw, i, "a positive int or a pair of them")),
        }
    }

    fn dtype_or(&self, lw: &Lowerer, i: usize, default: DType) -> Result<DType> {
        match self.get(i) {
            None => Ok(default),
            Some(Value::Str(s)) => DType::from_name(s).ok_or_else(|| self.wrong(lw, i, "a dtype name: \"f32\", \"f64\", \"i64\" or \"bool\"")),
            _ => Err(self.wrong(lw, i, "a dtype name such as \"f32\"")),
        }
    }

    /// An axis of a tensor of rank `rank`, negative counting from the end.
    fn axis(&self, lw: &Lowerer, i: usize, rank: usize, default: Option<i64>) -> Result<usize> {
        let a = match (self.get(i), default) {
            (None, Some(d)) => d,
            _ => self.int(lw, i)?,
        };
        let r = rank as i64;
        let norm = if a < 0 { a + r } else { a };
        if !(0..r).contains(&norm) {
            return Err(diag(self.span(i), format!("axis {a} is out of range for a tensor of rank {rank}")).with_label("this axis"));
        }
        Ok(norm as usize)
    }
}

pub(super) fn call(lw: &mut Lowerer, name: &str, args: Vec<ArgVal>, span: Span) -> Result<Value> {
    if name == "share" {
        // Any keywords of the shared block, so not bound by signature.
        return share(lw, args, span);
    }
    let names = SIGNATURES.iter().find(|(n, _)| *n == name).map(|(_, p)| *p).expect("call() is only reached for builtins");
    let params: Vec<(&str, bool)> = names.iter().map(|n| (n.trim_end_matches('?'), n.ends_with('?'))).collect();
    let slots = bind_args(&params, name, args, span, None)?;
    let a = Args { callee: name, span, names, slots };
    let shape_err = |e: d2l_ir::ShapeError| diag(span, format!("`{name}`: {}", e.0));
    Ok(match name {
        "exp" | "log" | "sqrt" | "tanh" | "sigmoid" | "abs" | "sin" | "cos" => {
            if let Some(x) = a.get(0).and_then(Value::as_f64) {
                return Ok(Value::Float(scalar_math(name, x)));
            }
            let x = a.tensor(lw, 0)?;
            let op = match name {
                "exp" => UnaryOp::Exp,
                "log" => UnaryOp::Log,
                "sqrt" => UnaryOp::Sqrt,
                "tanh" => UnaryOp::Tanh,
                "sigmoid" => UnaryOp::Sigmoid,
                "abs" => UnaryOp::Abs,
                "sin" => UnaryOp::Sin,
                _ => UnaryOp::Cos,
            };
            Value::Tensor(lw.graph.unary(op, x).map_err(shape_err)?)
        }
        "maximum" | "minimum" => {
            let (x, y) = elementwise_pair(lw, &a, 0, 1)?;
            let op = if name == "maximum" { BinaryOp::Max } else { BinaryOp::Min };
            Value::Tensor(lw.graph.binary(op, x, y).map_err(shape_err)?)
        }
        "where" => {
            let c = a.tensor(lw, 0)?;
            let (x, y) = elementwise_pair(lw, &a, 1, 2)?;
            let shape = d2l_ir::build::broadcast_shapes(lw.graph.shape(c), lw.graph.shape(x)).map_err(shape_err)?;
            let c = lw.graph.broadcast(c, shape.clone()).map_err(shape_err)?;
            let x = lw.graph.broadcast(x, shape.clone()).map_err(shape_err)?;
            let y = lw.graph.broadcast(y, shape).map_err(shape_err)?;
            Value::Tensor(lw.graph.select(c, x, y).map_err(shape_err)?)
        }
        "stop_gradient" => Value::Tensor(lw.graph.stop_gradient(a.tensor(lw, 0)?)),
        "observe" => {
            let x = a.tensor(lw, 0)?;
            let Some(Value::Str(label)) = a.get(1) else { return Err(a.wrong(lw, 1, "a name in quotes, such as \"weights\"")) };
            let path = lw.scoped(label);
            lw.observed.push((path, x));
            Value::Tensor(x)
        }
        "sum" | "mean" | "max" | "min" => {
            if !matches!(a.get(0), Some(Value::Tensor(_))) && (name == "max" || name == "min") {
                // max(a, b) on compile-time numbers.
                let (x, y) = (a.float(lw, 0)?, a.float(lw, 1)?);
                let pick_first = if name == "max" { x >= y } else { x <= y };
                let v = if pick_first { a.get(0) } else { a.get(1) };
                return Ok(v.cloned().expect("both numbers were read"));
            }
            reduce(lw, &a, name)?
        }
        "argmax" => {
            let x = a.tensor(lw, 0)?;
            let shape = lw.graph.shape(x).clone();
            let axis = a.axis(lw, 1, shape.rank(), Some(-1))?;
            let r = lw.graph.argmax(x, axis).map_err(shape_err)?;
            let mut out = shape.0.clone();
            out.remove(axis);
            Value::Tensor(lw.graph.reshape(r, Shape(out)).map_err(shape_err)?)
        }
        "reshape" => {
            let x = a.tensor(lw, 0)?;
            let dims = a.ints(lw, 1)?;
            let shape = infer_reshape(lw.graph.shape(x), &dims).ok_or_else(|| {
                diag(a.span(1), format!("cannot reshape {} to {:?}", Value::Tensor(x).describe(&lw.graph), dims)).with_note("the element counts must agree; at most one dimension may be -1")
            })?;
            Value::Tensor(lw.graph.reshape(x, shape).map_err(shape_err)?)
        }
        "permute" => {
            let x = a.tensor(lw, 0)?;
            let perm: Vec<usize> = a.ints(lw, 1)?.into_iter().map(|p| p.max(0) as usize).collect();
            Value::Tensor(lw.graph.permute(x, &perm).map_err(shape_err)?)
        }
        "transpose" => {
            let x = a.tensor(lw, 0)?;
            let rank = lw.graph.shape(x).rank();
            if rank < 2 {
                return Err(a.wrong(lw, 0, "a tensor of rank 2 or more"));
            }
            let (i, j) = (a.axis(lw, 1, rank, Some(-2))?, a.axis(lw, 2, rank, Some(-1))?);
            let mut perm: Vec<usize> = (0..rank).collect();
            perm.swap(i, j);
            Value::Tensor(lw.graph.permute(x, &perm).map_err(shape_err)?)
        }
        "broadcast_to" => {
            let x = a.tensor(lw, 0)?;
            let shape = a.shape(lw, 1)?;
            Value::Tensor(lw.graph.broadcast(x, shape).map_err(shape_err)?)
        }
        "unsqueeze" => {
            let x = a.tensor(lw, 0)?;
            let mut dims = lw.graph.shape(x).0.clone();
            let axis = a.axis(lw, 1, dims.len() + 1, None)?;
            dims.insert(axis, 1);
            Value::Tensor(lw.graph.reshape(x, Shape(dims)).map_err(shape_err)?)
        }
        "squeeze" => {
            let x = a.tensor(lw, 0)?;
            let mut dims = lw.graph.shape(x).0.clone();
            let axis = a.axis(lw, 1, dims.len(), None)?;
            if dims[axis] != 1 {
                return Err(diag(a.span(1), format!("cannot squeeze axis {axis} of size {}", dims[axis])));
            }
            dims.remove(axis);
            Value::Tensor(lw.graph.reshape(x, Shape(dims)).map_err(shape_err)?)
        }
        "concat" => {
            let Some(Value::Tuple(items)) = a.get(0) else {
                return Err(a.wrong(lw, 0, "a tuple of tensors"));
            };
            let ids: Vec<NodeId> = items.iter().map(|v| if let Value::Tensor(id) = v { Ok(*id) } else { Err(a.wrong(lw, 0, "a tuple of tensors")) }).collect::<Result<_>>()?;
            let Some(&first) = ids.first() else { return Err(a.wrong(lw, 0, "a non-empty tuple of tensors")) };
            let axis = a.axis(lw, 1, lw.graph.shape(first).rank(), Some(0))?;
            Value::Tensor(lw.graph.concat(&ids, axis).map_err(shape_err)?)
        }
        "pad" => {
            let x = a.tensor(lw, 0)?;
            let (lo, hi) = (a.shape(lw, 1)?, a.shape(lw, 2)?);
            let value = if a.get(3).is_some() { a.float(lw, 3)? } else { 0.0 };
            let zeros = vec![0; lo.rank()];
            Value::Tensor(lw.graph.pad(x, &lo.0, &hi.0, &zeros, value).map_err(shape_err)?)
        }
        "pad2d" => {
            let x = a.tensor(lw, 0)?;
            let rank = lw.graph.shape(x).rank();
            if rank < 2 {
                return Err(a.wrong(lw, 0, "a tensor of rank 2 or more"));
            }
            let p = a.ints(lw, 1)?;
            let [top, bottom, left, right] = match p[..] {
                [q] => [q; 4],
                [h, w] => [h, h, w, w],
                [t, b, l, r] => [t, b, l, r],
                _ => return Err(a.wrong(lw, 1, "an int, (h, w) or (top, bottom, left, right)")),
            };
            if [top, bottom, left, right].iter().any(|&v| v < 0) {
                return Err(a.wrong(lw, 1, "non-negative padding"));
            }
            let value = if a.get(2).is_some() { a.float(lw, 2)? } else { 0.0 };
            let (mut lo, mut hi) = (vec![0; rank], vec![0; rank]);
            lo[rank - 2] = top as usize;
            hi[rank - 2] = bottom as usize;
            lo[rank - 1] = left as usize;
            hi[rank - 1] = right as usize;
            Value::Tensor(lw.graph.pad(x, &lo, &hi, &vec![0; rank], value).map_err(shape_err)?)
        }
        "take" => {
            let (x, idx) = (a.tensor(lw, 0)?, a.tensor(lw, 1)?);
            let axis = a.axis(lw, 2, lw.graph.shape(x).rank(), Some(0))?;
            Value::Tensor(lw.graph.gather(x, idx, axis).map_err(shape_err)?)
        }
        "one_hot" => {
            let idx = a.tensor(lw, 0)?;
            if lw.graph.dtype(idx) != DType::I64 {
                return Err(a.wrong(lw, 0, "an i64 tensor of class indices"));
            }
            let n = a.int(lw, 1)?;
            if n <= 0 {
                return Err(a.wrong(lw, 1, "a positive int"));
            }
            let dtype = a.dtype_or(lw, 2, DType::F32)?;
            // An index outside 0..n is an error, as in PyTorch's F.one_hot,
            // on every backend and before or after the simplifier: taking
            // the indices from arange(n) checks them (take's error names
            // this call) and leaves them as they are. The comparison below
            // stays a loop a loss can fuse, never an [.., n] matrix.
            let classes = lw.graph.iota(Shape(vec![n as usize]), 0, DType::I64).map_err(shape_err)?;
            let idx = lw.graph.gather(classes, idx, 0).map_err(shape_err)?;
            let mut dims = lw.graph.shape(idx).0.clone();
            dims.push(n as usize);
            let shape = Shape(dims);
            let iota = lw.graph.iota(shape.clone(), shape.rank() - 1, DType::I64).map_err(shape_err)?;
            let mut col = shape.0.clone();
            *col.last_mut().expect("rank >= 1") = 1;
            let idx = lw.graph.reshape(idx, Shape(col)).map_err(shape_err)?;
            let idx = lw.graph.broadcast(idx, shape).map_err(shape_err)?;
            let eq = lw.graph.compare(d2l_ir::CmpOp::Eq, idx, iota).map_err(shape_err)?;
            Value::Tensor(lw.graph.cast(eq, dtype))
        }
        "cast" => {
            let x = a.tensor(lw, 0)?;
            let dtype = a.dtype_or(lw, 1, DType::F32)?;
            Value::Tensor(lw.graph.cast(x, dtype))
        }
        "zeros" | "ones" => {
            let shape = a.shape(lw, 0)?;
            let dtype = a.dtype_or(lw, 1, DType::F32)?;
            Value::Tensor(lw.graph.full(if name == "ones" { 1.0 } else { 0.0 }, dtype, shape))
        }
        "full" => {
            let shape = a.shape(lw, 0)?;
            let v = a.float(lw, 1)?;
            let dtype = a.dtype_or(lw, 2, DType::F32)?;
            Value::Tensor(lw.graph.full(v, dtype, shape))
        }
        "arange" => {
            let n = a.int(lw, 0)?;
            if n <= 0 {
                return Err(a.wrong(lw, 0, "a positive int"));
            }
            let dtype = a.dtype_or(lw, 1, DType::F32)?;
            Value::Tensor(lw.graph.iota(Shape(vec![n as usize]), 0, dtype).map_err(shape_err)?)
        }
        "rand_uniform" | "rand_normal" => {
            let shape = a.shape(lw, 0)?;
            let dist = if name == "rand_uniform" { RandDist::Uniform } else { RandDist::Normal };
            Value::Tensor(lw.graph.rand(dist, DType::F32, shape).map_err(shape_err)?)
        }
        "conv" => {
            let (x, w) = (a.tensor(lw, 0)?, a.tensor(lw, 1)?);
            let stride = a.pair(lw, 2, Some([1, 1]))?;
            Value::Tensor(lw.graph.conv2d(x, w, stride).map_err(shape_err)?)
        }
        "pool_max" | "pool_avg" => {
            let x = a.tensor(lw, 0)?;
            let window = a.pair(lw, 1, None)?;
            let stride = a.pair(lw, 2, Some(window))?;
            let kind = if name == "pool_max" { PoolKind::Max } else { PoolKind::Avg };
            Value::Tensor(lw.graph.pool2d(kind, x, window, stride).map_err(shape_err)?)
        }
        "normal" => {
            let mean = if a.get(0).is_some() { a.float(lw, 0)? } else { 0.0 };
            let std = if a.get(1).is_some() { a.float(lw, 1)? } else { 1.0 };
            if std < 0.0 || !std.is_finite() || !mean.is_finite() {
                return Err(a.wrong(lw, 1, "a finite, non-negative standard deviation"));
            }
            Value::Init(Init::Normal { mean, std })
        }
        "uniform" => {
            let (low, high) = (a.float(lw, 0)?, a.float(lw, 1)?);
            if low > high || !low.is_finite() || !high.is_finite() {
                return Err(diag(span, format!("uniform({low}, {high}) needs finite bounds with low <= high")));
            }
            Value::Init(Init::Uniform { low, high })
        }
        "constant" => Value::Init(Init::Constant(a.float(lw, 0)?)),
        "int" => match a.get(0) {
            Some(Value::Int(v)) => Value::Int(*v),
            Some(Value::Float(f)) if f.is_finite() => Value::Int(f.trunc() as i64),
            Some(Value::Bool(b)) => Value::Int(i64::from(*b)),
            _ => return Err(a.wrong(lw, 0, "a number")),
        },
        "float" => match a.get(0) {
            Some(Value::Tensor(x)) => Value::Tensor(lw.graph.cast(*x, DType::F32)),
            _ => Value::Float(a.float(lw, 0)?),
        },
        "len" => match a.get(0) {
            Some(Value::Tuple(items)) => Value::Int(items.len() as i64),
            Some(Value::Tensor(x)) => Value::Int(lw.graph.shape(*x).0.first().copied().unwrap_or(0) as i64),
            _ => return Err(a.wrong(lw, 0, "a tuple or tensor")),
        },
        "range" => {
            let (lo, hi) = if a.get(1).is_some() { (a.int(lw, 0)?, a.int(lw, 1)?) } else { (0, a.int(lw, 0)?) };
            if hi - lo > super::MAX_LOOP_ITERATIONS {
                return Err(diag(span, format!("range is longer than {}", super::MAX_LOOP_ITERATIONS)));
            }
            Value::Tuple((lo..hi).map(Value::Int).collect())
        }
        "enumerate" => match a.get(0) {
            Some(Value::Tuple(items)) => Value::Tuple(items.iter().enumerate().map(|(i, v)| Value::Tuple(vec![Value::Int(i as i64), v.clone()])).collect()),
            _ => return Err(a.wrong(lw, 0, "a tuple")),
        },
        "zip" => match (a.get(0), a.get(1)) {
            (Some(Value::Tuple(x)), Some(Value::Tuple(y))) => Value::Tuple(x.iter().zip(y).map(|(p, q)| Value::Tuple(vec![p.clone(), q.clone()])).collect()),
            _ => return Err(a.wrong(lw, 0, "two tuples")),
        },
        "pair" => {
            let [h, w] = a.pair(lw, 0, None)?;
            Value::Tuple(vec![Value::Int(h as i64), Value::Int(w as i64)])
        }
        _ => unreachable!("every builtin in SIGNATURES is handled above"),
    })
}

const SHARE_USAGE: &str = "write `shared = share(linear, out=8)`, then call `shared(x)` as often as needed: every call uses the same parameters";

/// `share(block, key=value, ...)`: a new instance of `block` with its own
/// parameter scope, named like a call here would have been.
fn share(lw: &mut Lowerer, args: Vec<ArgVal>, span: Span) -> Result<Value> {
    let mut args = args.into_iter();
    let Some(first) = args.next().filter(|a| a.name.is_none()) else {
        return Err(diag(span, "`share` needs the block to share first: `share(block, key=value, ...)`").with_label("no block given").with_note(SHARE_USAGE));
    };
    let prog = lw.prog;
    let block = match &first.value {
        Value::Func(f) if prog.defs.contains_key(f) => f.clone(),
        Value::Func(f) => {
            return Err(diag(first.span, format!("`{f}` is a builtin function: it has no parameters to share"))
                .with_label("not a block")
                .with_note(format!("call `{f}` directly; `share` takes a block that declares parameters, such as `linear` or `conv2d`")));
        }
        Value::Instance(inst) => {
            return Err(diag(first.span, format!("this is already a {}", first.value.describe(&lw.graph)))
                .with_label("already shared")
                .with_note(format!("call it to reuse its parameters, or `share({})` again for a separate set", inst.block)));
        }
        other => return Err(diag(first.span, format!("`share` takes a block, got {}", other.describe(&lw.graph))).with_label("not a block").with_note(SHARE_USAGE)),
    };
    if !may_declare_state(prog, &block, &mut HashSet::new()) {
        return Err(diag(first.span, format!("block `{block}` declares no parameters or buffers, so there is nothing to share"))
            .with_label("nothing to share")
            .with_note(format!("call `{block}` directly; sharing only matters for layers with parameters")));
    }
    let func = &prog.defs[&block].func;
    let params: Vec<(&str, bool)> = func.params.iter().map(|p| (p.name.name.as_str(), p.default.is_some())).collect();
    let mut bound: Vec<BoundArg> = Vec::new();
    for a in args {
        let Some(key) = a.name else {
            return Err(diag(a.span, "`share` binds keyword arguments only; the inputs are given when the instance is called").with_label("positional argument").with_note(SHARE_USAGE));
        };
        if !params.iter().any(|(p, _)| *p == key.name) {
            let names: Vec<&str> = params.iter().map(|(p, _)| *p).collect();
            let d = diag(key.span, format!("`{block}` has no parameter named `{}`", key.name)).with_label("unknown keyword").with_note(format!("the signature is {}", signature_text(&params, &block)));
            let d = match closest(&key.name, &names) {
                Some(best) => d.with_note(format!("did you mean `{best}`?")),
                None => d,
            };
            return Err(d.with_secondary(func.name.span, "defined here"));
        }
        if bound.iter().any(|b| b.name == key.name) {
            return Err(diag(a.span, format!("argument `{}` of `{block}` is given twice", key.name)));
        }
        bound.push(BoundArg { span: Span { hi: a.span.hi, ..key.span }, name: key.name, value: a.value });
    }
    let index = {
        let counters = lw.counters.last_mut().expect("a counter scope is active");
        let c = counters.entry(block.clone()).or_insert(0);
        *c += 1;
        *c - 1
    };
    let mut scope = lw.scopes.clone();
    scope.push(format!("{block}_{index}"));
    Ok(Value::Instance(Box::new(Instance { block, scope, bound })))
}

/// Whether expanding block `name` could declare a parameter or buffer:
/// a `param`/`buffer` statement, a call of such a block, or a call of a
/// local name (a function or instance passed in), which may do anything.
fn may_declare_state(prog: &Program, name: &str, seen: &mut HashSet<String>) -> bool {
    let Some(def) = prog.defs.get(name) else { return false };
    if !seen.insert(name.to_string()) {
        return false;
    }
    let mut locals: HashSet<&str> = def.func.params.iter().map(|p| p.name.name.as_str()).collect();
    let mut calls = Vec::new();
    let declares = scan_stmts(&def.func.body, &mut locals, &mut calls);
    declares || calls.iter().any(|c| locals.contains(c) || may_declare_state(prog, c, seen))
}

/// Collects assigned names and called names; true if a declaration is seen.
fn scan_stmts<'a>(stmts: &'a [Stmt], locals: &mut HashSet<&'a str>, calls: &mut Vec<&'a str>) -> bool {
    let mut declares = false;
    for s in stmts {
        match s {
            Stmt::Let { targets, value, .. } => {
                locals.extend(targets.iter().map(|t| t.name.as_str()));
                scan_expr(value, locals, calls, &mut declares);
            }
            Stmt::Param { .. } => declares = true,
            Stmt::If { cond, then_body, else_body, .. } => {
                scan_expr(cond, locals, calls, &mut declares);
                declares |= scan_stmts(then_body, locals, calls);
                declares |= else_body.as_ref().is_some_and(|b| scan_stmts(b, locals, calls));
            }
            Stmt::For { vars, iter, body, .. } => {
                locals.extend(vars.iter().map(|v| v.name.as_str()));
                scan_expr(iter, locals, calls, &mut declares);
                declares |= scan_stmts(body, locals, calls);
            }
            Stmt::Return { value, .. } | Stmt::Yield { value, .. } | Stmt::Expr(value) => scan_expr(value, locals, calls, &mut declares),
        }
    }
    declares
}

fn scan_expr<'a>(e: &'a Expr, locals: &mut HashSet<&'a str>, calls: &mut Vec<&'a str>, declares: &mut bool) {
    match &e.kind {
        ExprKind::Int(_) | ExprKind::Float(_) | ExprKind::Bool(_) | ExprKind::Str(_) | ExprKind::Name(_) => {}
        ExprKind::Tuple(items) => items.iter().for_each(|i| scan_expr(i, locals, calls, declares)),
        ExprKind::Unary { expr, .. } => scan_expr(expr, locals, calls, declares),
        ExprKind::Binary { lhs, rhs, .. } | ExprKind::Range { start: lhs, end: rhs } => {
            scan_expr(lhs, locals, calls, declares);
            scan_expr(rhs, locals, calls, declares);
        }
        ExprKind::Pipe { lhs, rhs } => {
            scan_expr(lhs, locals, calls, declares);
            match &rhs.kind {
                ExprKind::Name(n) => calls.push(n),
                _ => scan_expr(rhs, locals, calls, declares),
            }
        }
        ExprKind::Call { callee, args } => {
            calls.push(&callee.name);
            args.iter().for_each(|a| scan_expr(&a.value, locals, calls, declares));
        }
        ExprKind::Index { base, items } => {
            scan_expr(base, locals, calls, declares);
            for item in items {
                match item {
                    IndexItem::At(i) => scan_expr(i, locals, calls, declares),
                    IndexItem::Range { start, end, step } => [start, end, step].into_iter().flatten().for_each(|i| scan_expr(i, locals, calls, declares)),
                }
            }
        }
        ExprKind::Field { base, .. } => scan_expr(base, locals, calls, declares),
        ExprKind::For { vars, iter, body } => {
            locals.extend(vars.iter().map(|v| v.name.as_str()));
            scan_expr(iter, locals, calls, declares);
            *declares |= scan_stmts(body, locals, calls);
        }
    }
}

fn scalar_math(name: &str, x: f64) -> f64 {
    match name {
        "exp" => x.exp(),
        "log" => x.ln(),
        "sqrt" => x.sqrt(),
        "tanh" => x.tanh(),
        "sigmoid" => 1.0 / (1.0 + (-x).exp()),
        "abs" => x.abs(),
        "sin" => x.sin(),
        _ => x.cos(),
    }
}

/// Two operands of an elementwise builtin, scalars lifted and broadcast.
fn elementwise_pair(lw: &mut Lowerer, a: &Args, i: usize, j: usize) -> Result<(NodeId, NodeId)> {
    let like = match (a.get(i), a.get(j)) {
        (Some(Value::Tensor(x)), _) | (_, Some(Value::Tensor(x))) => *x,
        _ => return Err(a.wrong(lw, i, "a tensor (at least one operand must be)")),
    };
    let x = lw.lift(a.get(i).expect("bound"), like, a.span(i))?;
    let y = lw.lift(a.get(j).expect("bound"), like, a.span(j))?;
    lw.graph.broadcast_pair(x, y).map_err(|e| diag(a.span, format!("`{}`: {}", a.callee, e.0)))
}

fn reduce(lw: &mut Lowerer, a: &Args, name: &str) -> Result<Value> {
    let x = a.tensor(lw, 0)?;
    let shape = lw.graph.shape(x).clone();
    let axes: Vec<usize> = match a.get(1) {
        None => (0..shape.rank()).collect(),
        Some(Value::Tuple(items)) => {
            let mut axes = Vec::new();
            for (k, v) in items.iter().enumerate() {
                let Value::Int(ax) = v else { return Err(a.wrong(lw, 1, "an int or a tuple of ints")) };
                let r = shape.rank() as i64;
                let n = if *ax < 0 { ax + r } else { *ax };
                if !(0..r).contains(&n) || axes.contains(&(n as usize)) {
                    return Err(diag(a.span(1), format!("axis {ax} (item {k}) is out of range or repeated for rank {}", shape.rank())));
                }
                axes.push(n as usize);
            }
            axes
        }
        Some(_) => vec![a.axis(lw, 1, shape.rank(), None)?],
    };
    let keepdim = a.bool_or(lw, 2, false)?;
    let err = |e: d2l_ir::ShapeError| diag(a.span, format!("`{name}`: {}", e.0));
    let g = &mut lw.graph;
    let mut r = match name {
        "sum" | "mean" => g.reduce(ReduceOp::Sum, x, &axes).map_err(err)?,
        "max" => g.reduce(ReduceOp::Max, x, &axes).map_err(err)?,
        _ => {
            // min(x) = -max(-x): keeps the primitive set small.
            let neg = g.unary(UnaryOp::Neg, x).map_err(err)?;
            let m = g.reduce(ReduceOp::Max, neg, &axes).map_err(err)?;
            g.unary(UnaryOp::Neg, m).map_err(err)?
        }
    };
    if name == "mean" {
        if !g.dtype(r).is_float() {
            return Err(diag(a.span, "`mean` needs a float tensor; cast it first"));
        }
        let count: usize = axes.iter().map(|&ax| shape.0[ax]).product();
        let n = g.full(count as f64, g.dtype(r), g.shape(r).clone());
        r = g.binary(BinaryOp::Div, r, n).map_err(err)?;
    }
    if !keepdim {
        let out: Vec<usize> = (0..shape.rank()).filter(|ax| !axes.contains(ax)).map(|ax| shape.0[ax]).collect();
        r = g.reshape(r, Shape(out)).map_err(err)?;
    }
    Ok(Value::Tensor(r))
}

/// Resolves one `-1` in a reshape target.
fn infer_reshape(from: &Shape, dims: &[i64]) -> Option<Shape> {
    let unknown = dims.iter().filter(|&&d| d == -1).count();
    if unknown > 1 || dims.iter().any(|&d| d < -1) {
        return None;
    }
    let known: usize = dims.iter().filter(|&&d| d >= 0).map(|&d| d as usize).product();
    let out: Vec<usize> = if unknown == 1 {
        if known == 0 || !from.numel().is_multiple_of(known) {
            return None;
        }
        dims.iter().map(|&d| if d == -1 { from.numel() / known } else { d as usize }).collect()
    } else {
        dims.iter().map(|&d| d as usize).collect()
    };
    (out.iter().product::<usize>() == from.numel()).then_some(Shape(out))
}
