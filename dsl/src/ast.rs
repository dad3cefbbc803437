//! The syntax tree of a `.d2l` file, as the parser produces it: nothing is
//! resolved or checked yet. Every node carries the [`Span`] of its text.

/// Index of a file in a [`crate::SourceMap`].
pub type FileId = u32;

/// A byte range in one source file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct Span {
    pub file: FileId,
    pub lo: u32,
    pub hi: u32,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Ident {
    pub name: String,
    pub span: Span,
}

/// One parsed source file.
#[derive(Clone, Debug, PartialEq)]
pub struct Module {
    pub items: Vec<Item>,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Item {
    /// `use "layers/extra.d2l"`: the path is relative to the using file.
    Use { path: String, span: Span },
    /// `model name(...) -> ... { ... }`: an entry point with tensor inputs.
    Model(FuncDef),
    /// `block name(...) { ... }`: a reusable layer, expanded at each call.
    Block(FuncDef),
    /// `train name { key = value ... }`: how to train the model `name`.
    Train(TrainDef),
}

#[derive(Clone, Debug, PartialEq)]
pub struct FuncDef {
    pub name: Ident,
    pub params: Vec<ParamDef>,
    /// Declared result types (a model's outputs); empty when not written.
    pub ret: Vec<RetType>,
    pub body: Vec<Stmt>,
    pub span: Span,
}

/// `name: type = default` in a signature; the type and default are optional.
#[derive(Clone, Debug, PartialEq)]
pub struct ParamDef {
    pub name: Ident,
    pub ty: Option<TypeExpr>,
    pub default: Option<Expr>,
    pub span: Span,
}

/// One declared result: `-> f32[B, 10]` or `-> (logits: f32[B, 10], ...)`.
#[derive(Clone, Debug, PartialEq)]
pub struct RetType {
    pub name: Option<Ident>,
    pub ty: TypeExpr,
}

#[derive(Clone, Debug, PartialEq)]
pub enum TypeExpr {
    /// `f32[B, 1, 28, 28]`, `i64[..., T]`; `dtype` is checked later.
    Tensor { dtype: Ident, dims: Vec<DimPat>, span: Span },
    /// `int`, `float`, `bool`, `tuple`: compile-time values.
    Scalar { kind: Ident, span: Span },
}

/// A dimension in a tensor type: a number, a name (bound on first use, checked
/// after), or `...` for any number of leading dims.
#[derive(Clone, Debug, PartialEq)]
pub enum DimPat {
    Lit(u64, Span),
    Name(Ident),
    Ellipsis(Span),
}

#[derive(Clone, Debug, PartialEq)]
pub enum Stmt {
    /// `x = e` or `a, b = e` (rebinding is allowed; the graph is SSA anyway).
    Let { targets: Vec<Ident>, value: Expr, span: Span },
    /// `param W: f32[I, O] = normal(0, 0.01)`; without `=`, a default init.
    /// `buffer` declares state that is not trained (batch-norm statistics):
    /// reassigning it in a block makes the new value the next step's state.
    Param { kind: DeclKind, name: Ident, ty: TypeExpr, init: Option<Expr>, span: Span },
    /// Compile-time conditional; `else if` nests in `else_body`.
    If { cond: Expr, then_body: Vec<Stmt>, else_body: Option<Vec<Stmt>>, span: Span },
    /// Compile-time loop, unrolled: `for i in 0..n { }`, `for (c, n) in arch { }`.
    For { vars: Vec<Ident>, iter: Expr, body: Vec<Stmt>, span: Span },
    Return { value: Expr, span: Span },
    /// Inside a `for` expression: the value this iteration contributes.
    Yield { value: Expr, span: Span },
    Expr(Expr),
}

/// What a `param`-like declaration declares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeclKind {
    /// Trained by the optimizer.
    Param,
    /// State carried between steps, updated by the model itself.
    Buffer,
}

impl DeclKind {
    pub fn keyword(self) -> &'static str {
        match self {
            DeclKind::Param => "param",
            DeclKind::Buffer => "buffer",
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Expr {
    pub kind: ExprKind,
    pub span: Span,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UnOp {
    Neg,
    Not,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BinOp {
    Add,
    Sub,
    Mul,
    Div,
    /// `%`
    Rem,
    /// `**`
    Pow,
    /// `@`
    MatMul,
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    And,
    Or,
}

impl BinOp {
    /// The operator as written in source.
    pub fn symbol(self) -> &'static str {
        match self {
            BinOp::Add => "+",
            BinOp::Sub => "-",
            BinOp::Mul => "*",
            BinOp::Div => "/",
            BinOp::Rem => "%",
            BinOp::Pow => "**",
            BinOp::MatMul => "@",
            BinOp::Eq => "==",
            BinOp::Ne => "!=",
            BinOp::Lt => "<",
            BinOp::Le => "<=",
            BinOp::Gt => ">",
            BinOp::Ge => ">=",
            BinOp::And => "and",
            BinOp::Or => "or",
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Arg {
    /// `Some` for keyword arguments (`kernel=5`).
    pub name: Option<Ident>,
    pub value: Expr,
}

#[derive(Clone, Debug, PartialEq)]
pub enum IndexItem {
    /// `x[i]`: drops the axis.
    At(Expr),
    /// `x[a:b:s]`, any part optional; `x[:]` is all three `None`.
    Range { start: Option<Expr>, end: Option<Expr>, step: Option<Expr> },
}

#[derive(Clone, Debug, PartialEq)]
pub enum ExprKind {
    Int(i64),
    Float(f64),
    Bool(bool),
    Str(String),
    Name(String),
    /// `(a, b)` or `[a, b]`: a compile-time tuple (also used for shapes).
    Tuple(Vec<Expr>),
    Unary { op: UnOp, expr: Box<Expr> },
    Binary { op: BinOp, lhs: Box<Expr>, rhs: Box<Expr> },
    /// `lhs |> rhs`: `rhs` is a name or a call; `lhs` becomes its first argument.
    Pipe { lhs: Box<Expr>, rhs: Box<Expr> },
    Call { callee: Ident, args: Vec<Arg> },
    Index { base: Box<Expr>, items: Vec<IndexItem> },
    /// `base.name`, e.g. `x.shape`.
    Field { base: Box<Expr>, name: Ident },
    /// `a..b`: a range of compile-time ints, for loops.
    Range { start: Box<Expr>, end: Box<Expr> },
    /// `for v in iter { ...; yield e }` as an expression: the yielded tensors
    /// stacked along a new leading axis.
    For { vars: Vec<Ident>, iter: Box<Expr>, body: Vec<Stmt> },
}

#[derive(Clone, Debug, PartialEq)]
pub struct TrainDef {
    pub model: Ident,
    pub settings: Vec<Setting>,
    pub span: Span,
}

/// `key = value` inside a `train` block.
#[derive(Clone, Debug, PartialEq)]
pub struct Setting {
    pub key: Ident,
    pub value: Expr,
}
