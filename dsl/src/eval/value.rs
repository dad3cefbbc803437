//! Compile-time values of the evaluator.

use d2l_ir::{Graph, Init, NodeId};

use crate::ast::Span;

/// What a name or expression evaluates to while a model is expanded. Only
/// `Tensor`s become graph nodes; everything else exists at compile time.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    Tensor(NodeId),
    Int(i64),
    Float(f64),
    Bool(bool),
    Str(String),
    Tuple(Vec<Value>),
    /// A block or builtin, by name (for `|> relu`, `loss = cross_entropy`).
    Func(String),
    /// An initializer expression such as `normal(0, 0.01)`.
    Init(Init),
    /// A block instance made by `share`: every call uses its parameters.
    Instance(Box<Instance>),
}

/// `share(block, key=value, ...)`: a block bound to one parameter scope.
#[derive(Clone, Debug, PartialEq)]
pub struct Instance {
    pub block: String,
    /// The full scope path (`["linear_1"]`), fixed where `share` ran, so the
    /// instance names the same parameters wherever it is called.
    pub scope: Vec<String>,
    /// Keyword arguments every call receives.
    pub bound: Vec<BoundArg>,
}

/// One keyword argument bound by `share`; `span` covers `key=value`.
#[derive(Clone, Debug, PartialEq)]
pub struct BoundArg {
    pub name: String,
    pub value: Value,
    pub span: Span,
}

impl Instance {
    /// The scope as parameter names spell it: `linear_1`, `block_0.linear_1`.
    pub fn path(&self) -> String {
        self.scope.join(".")
    }
}

impl Value {
    /// A short description for error messages: `tensor f32[2, 3]`, `int 5`.
    pub fn describe(&self, graph: &Graph) -> String {
        match self {
            Value::Tensor(id) => format!("tensor {}{}", graph.dtype(*id), graph.shape(*id)),
            Value::Int(v) => format!("int {v}"),
            Value::Float(v) => format!("float {v}"),
            Value::Bool(v) => format!("bool {v}"),
            Value::Str(s) => format!("string {s:?}"),
            Value::Tuple(items) => {
                let inner: Vec<String> = items.iter().map(|v| v.brief(graph)).collect();
                format!("tuple ({})", inner.join(", "))
            }
            Value::Func(name) => format!("function `{name}`"),
            Value::Init(init) => format!("initializer {init}"),
            Value::Instance(inst) => format!("shared instance of `{}` ({})", inst.block, inst.path()),
        }
    }

    fn brief(&self, graph: &Graph) -> String {
        match self {
            Value::Int(v) => v.to_string(),
            Value::Float(v) => v.to_string(),
            Value::Bool(v) => v.to_string(),
            other => other.describe(graph),
        }
    }

    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Value::Int(v) => Some(*v as f64),
            Value::Float(v) => Some(*v),
            _ => None,
        }
    }
}
