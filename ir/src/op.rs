//! The primitive op set. Autodiff rules and backends exist for these only;
//! every layer of the language lowers to them.

/// How a parameter's initial value is drawn.
#[derive(Clone, Debug, PartialEq)]
pub enum Init {
    Zeros,
    Ones,
    Constant(f64),
    Normal { mean: f64, std: f64 },
    Uniform { low: f64, high: f64 },
    /// Glorot uniform; fans as in [`Init::fans`].
    XavierUniform,
    XavierNormal,
}

impl Init {
    /// (fan_in, fan_out) of a weight shape, following PyTorch: a rank-2
    /// weight here is stored `[in, out]` (it is used as `x @ W`); rank >= 3 is
    /// a convolution kernel `[out, in, k...]`. Xavier is symmetric in the two,
    /// so only their sum matters for the initializers above.
    pub fn fans(dims: &[usize]) -> (usize, usize) {
        match dims {
            [] => (1, 1),
            [n] => (*n, *n),
            [i, o] => (*i, *o),
            [o, i, k @ ..] => {
                let field: usize = k.iter().product();
                (i * field, o * field)
            }
        }
    }
}

impl std::fmt::Display for Init {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Init::Zeros => write!(f, "zeros"),
            Init::Ones => write!(f, "ones"),
            Init::Constant(v) => write!(f, "constant({v})"),
            Init::Normal { mean, std } => write!(f, "normal({mean}, {std})"),
            Init::Uniform { low, high } => write!(f, "uniform({low}, {high})"),
            Init::XavierUniform => write!(f, "xavier_uniform"),
            Init::XavierNormal => write!(f, "xavier_normal"),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum UnaryOp {
    Neg,
    Exp,
    Log,
    Sqrt,
    Tanh,
    Sigmoid,
    Abs,
    Sin,
    Cos,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BinaryOp {
    Add,
    Sub,
    Mul,
    Div,
    Max,
    Min,
    Pow,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CmpOp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ReduceOp {
    Sum,
    Max,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PoolKind {
    Max,
    Avg,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RandDist {
    /// Uniform on [0, 1).
    Uniform,
    /// Standard normal.
    Normal,
}

/// Who provides an input's value.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum InputRole {
    /// The caller, per run: data, labels, recurrent state.
    Data,
    /// Optimizer state of the parameter `param` (momentum, Adam's moments):
    /// zeros at first, then the graph's update output of the same name.
    OptimizerSlot { param: String },
    /// The number of the optimizer step being taken, counting from 1 (Adam's
    /// bias correction).
    StepCount,
}

/// A primitive operation. The result's shape and dtype live on the node;
/// operands are the node's `args`, in the order documented per variant.
#[derive(Clone, Debug, PartialEq)]
pub enum Op {
    /// A value fed at run time; `role` says by whom. No operands.
    Input { name: String, role: InputRole },
    /// A trainable parameter, initialised once by the runtime. No operands.
    Param { name: String, init: Init },
    /// State that is carried between executions but not trained (batch-norm
    /// running statistics): initialised like a parameter, fed like one, and
    /// updated through the graph's update output of the same name. No operands.
    State { name: String, init: Init },
    /// A tensor of the node's shape filled with `value`. No operands.
    Full { value: f64 },
    /// Index along `axis` at every position of the node's shape. No operands.
    Iota { axis: usize },
    /// Fresh random numbers of the node's shape at every execution. No operands.
    Rand { dist: RandDist },
    /// Elementwise; one operand.
    Unary(UnaryOp),
    /// Elementwise on two operands of identical shape and dtype.
    Binary(BinaryOp),
    /// Elementwise comparison of two identical shapes; result is bool.
    Compare(CmpOp),
    /// `select(cond, on_true, on_false)`, all of one shape.
    Select,
    /// Reduce over `axes`, keeping them as size 1.
    Reduce { op: ReduceOp, axes: Vec<usize> },
    /// Index (i64) of the maximum along `axis`, kept as size 1. First on ties.
    ArgMax { axis: usize },
    /// Same elements, the node's shape.
    Reshape,
    /// Output axis `i` is input axis `perm[i]`.
    Permute { perm: Vec<usize> },
    /// NumPy `broadcast_to` the node's shape (operand aligned to the right).
    Broadcast,
    /// Per axis `start..end` with `step` (all positive, in range).
    Slice { starts: Vec<usize>, ends: Vec<usize>, steps: Vec<usize> },
    /// Constant padding: `lo[i]` before, `hi[i]` after, and `interior[i]`
    /// between neighbouring elements of axis `i` (XLA's pad). Interior padding
    /// is what makes strided slices, convolutions and pooling differentiable
    /// with primitives alone: it is the transpose of a strided slice.
    Pad { lo: Vec<usize>, hi: Vec<usize>, interior: Vec<usize>, value: f64 },
    /// Any number of operands, equal except along `axis`.
    Concat { axis: usize },
    /// `[b.., m, k] @ [b.., k, n] -> [b.., m, n]`, batch dims equal.
    MatMul,
    /// `gather(x, idx)`: out shape = x[..axis] ++ idx ++ x[axis+1..].
    Gather { axis: usize },
    /// `scatter_add(idx, updates)` into zeros of the node's shape: the
    /// transpose of `Gather` with the same `axis` (its gradient).
    ScatterAdd { axis: usize },
    /// Convert to the node's dtype.
    Cast,
    /// Identity on values; autodiff propagates no gradient through it
    /// (`detach`). A node of its own so CSE cannot merge it with its input.
    StopGradient,
    /// `conv2d(x[N, C, H, W], w[O, C, kh, kw]) -> [N, O, Ho, Wo]`, no padding
    /// (padding is a separate `Pad`), `Ho = (H - kh) / stride + 1`.
    Conv2d { stride: [usize; 2] },
    /// Pooling over the last two axes of `[N, C, H, W]`, no padding.
    Pool2d { kind: PoolKind, window: [usize; 2], stride: [usize; 2] },
}

impl Op {
    /// Lower-case mnemonic used by the text format.
    pub fn mnemonic(&self) -> &'static str {
        match self {
            Op::Input { .. } => "input",
            Op::Param { .. } => "param",
            Op::State { .. } => "state",
            Op::Full { .. } => "full",
            Op::Iota { .. } => "iota",
            Op::Rand { dist: RandDist::Uniform } => "rand_uniform",
            Op::Rand { dist: RandDist::Normal } => "rand_normal",
            Op::Unary(u) => match u {
                UnaryOp::Neg => "neg",
                UnaryOp::Exp => "exp",
                UnaryOp::Log => "log",
                UnaryOp::Sqrt => "sqrt",
                UnaryOp::Tanh => "tanh",
                UnaryOp::Sigmoid => "sigmoid",
                UnaryOp::Abs => "abs",
                UnaryOp::Sin => "sin",
                UnaryOp::Cos => "cos",
            },
            Op::Binary(b) => match b {
                BinaryOp::Add => "add",
                BinaryOp::Sub => "sub",
                BinaryOp::Mul => "mul",
                BinaryOp::Div => "div",
                BinaryOp::Max => "max",
                BinaryOp::Min => "min",
                BinaryOp::Pow => "pow",
            },
            Op::Compare(c) => match c {
                CmpOp::Eq => "eq",
                CmpOp::Ne => "ne",
                CmpOp::Lt => "lt",
                CmpOp::Le => "le",
                CmpOp::Gt => "gt",
                CmpOp::Ge => "ge",
            },
            Op::Select => "select",
            Op::Reduce { op: ReduceOp::Sum, .. } => "reduce_sum",
            Op::Reduce { op: ReduceOp::Max, .. } => "reduce_max",
            Op::ArgMax { .. } => "argmax",
            Op::Reshape => "reshape",
            Op::Permute { .. } => "permute",
            Op::Broadcast => "broadcast",
            Op::Slice { .. } => "slice",
            Op::Pad { .. } => "pad",
            Op::Concat { .. } => "concat",
            Op::MatMul => "matmul",
            Op::Gather { .. } => "gather",
            Op::ScatterAdd { .. } => "scatter_add",
            Op::Cast => "cast",
            Op::StopGradient => "stop_gradient",
            Op::Conv2d { .. } => "conv2d",
            Op::Pool2d { kind: PoolKind::Max, .. } => "max_pool2d",
            Op::Pool2d { kind: PoolKind::Avg, .. } => "avg_pool2d",
        }
    }

    /// Ops whose value does not depend on any operand and is the same at every
    /// execution (candidates for constant folding).
    pub fn is_constant(&self) -> bool {
        matches!(self, Op::Full { .. } | Op::Iota { .. })
    }
}
