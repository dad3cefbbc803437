//! Compile-time evaluation: expands a model's blocks, loops and conditionals
//! and lowers every tensor expression to IR primitives, checking names,
//! arities, shapes and dtypes on the way. The result is a static graph.

mod builtins;
pub mod memory;
mod program;
mod train;
mod value;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use d2l_ir::{BinaryOp, CmpOp, DType, Graph, Init, Loc, NodeId, Shape};

use crate::ast::{Arg, BinOp, DeclKind, DimPat, Expr, ExprKind, FuncDef, Ident, IndexItem, Span, Stmt, TypeExpr, UnOp};
use crate::Diagnostic;
pub use memory::{bytes_text, machine_memory};
pub use program::{Error, Program};
pub use train::{Spec, TrainConfig};
pub use value::Value;
use value::{BoundArg, Instance};

type Result<T> = std::result::Result<T, Diagnostic>;

/// How to instantiate a model.
#[derive(Clone, Debug, Default)]
pub struct LowerOptions {
    /// Values of symbolic dims of the model's inputs (`B=256`).
    pub dims: BTreeMap<String, usize>,
    /// Value for any input dim left unbound (`check` and `summary` use 1, as
    /// the course's shape traces do); `None` makes an unbound dim an error.
    pub default_dim: Option<usize>,
    /// Actual shapes of some inputs (e.g. from an .npy file); their dims are
    /// bound by matching against the declared type.
    pub input_shapes: BTreeMap<String, Vec<usize>>,
    /// Train mode (dropout active, batch statistics); visible as `training`.
    pub training: bool,
    /// Most bytes one tensor, and all parameters and buffers together, may
    /// take; `None` means the machine's memory ([`memory::machine_memory`]).
    pub memory_limit: Option<u64>,
}

/// One call made directly by the model body: a row of `d2l summary`.
#[derive(Clone, Debug, PartialEq)]
pub struct Layer {
    pub name: String,
    pub shape: Shape,
    pub dtype: DType,
    /// Parameter elements created by this call.
    pub params: usize,
}

/// A model lowered to a graph, plus what the summary shows.
#[derive(Clone, Debug)]
pub struct Lowered {
    pub graph: Graph,
    pub layers: Vec<Layer>,
    /// Every symbolic input dim and the value it was bound to.
    pub dims: BTreeMap<String, usize>,
    /// The tensors the model passed to `observe`, in the order the calls ran,
    /// each named by its block instance path and label
    /// (`transformer_decoder_0.….dot_product_attention_0.weights`); a block
    /// called at every step lists one per call, under one name. Nothing
    /// makes them outputs: a tool that wants them adds them to the graph.
    pub observed: Vec<(String, NodeId)>,
}

impl Lowered {
    pub fn param_count(&self) -> usize {
        self.graph.params().iter().fold(0usize, |n, &p| n.saturating_add(self.graph.shape(p).numel()))
    }
}

/// How `lower_with_loss` attaches a loss to the model's results.
#[derive(Clone, Debug)]
pub struct LossSpec {
    /// The loss block (`cross_entropy`, `mse`, ...). It is called with the
    /// model's first results (those that update no input; as many as its
    /// required parameters leave room for) and then the labels.
    pub loss: String,
    /// The label inputs fed beside the model's inputs, in the order the loss
    /// takes them.
    pub labels: Vec<LabelSpec>,
}

/// One label input.
#[derive(Clone, Debug, PartialEq)]
pub struct LabelSpec {
    pub name: String,
    pub dtype: DType,
    pub shape: Vec<usize>,
}

impl LossSpec {
    /// `loss(prediction, label)` with one label input named `name`.
    pub fn one_label(loss: &str, name: &str, dtype: DType, shape: Vec<usize>) -> LossSpec {
        LossSpec { loss: loss.into(), labels: vec![LabelSpec { name: name.into(), dtype, shape }] }
    }
}

impl Program {
    /// Expands `model` into a graph whose outputs are the model's results.
    pub fn lower(&self, model: &str, opts: &LowerOptions) -> std::result::Result<Lowered, Error> {
        self.lower_inner(model, opts, None)
    }

    /// Like [`Program::lower`], adding an input for the labels and an output
    /// `loss` (a scalar) computed by the loss block from the model's first
    /// output and the labels.
    pub fn lower_with_loss(&self, model: &str, opts: &LowerOptions, loss: &LossSpec) -> std::result::Result<Lowered, Error> {
        self.lower_inner(model, opts, Some(loss))
    }

    fn lower_inner(&self, model: &str, opts: &LowerOptions, loss: Option<&LossSpec>) -> std::result::Result<Lowered, Error> {
        let Some(def) = self.defs.get(model).filter(|d| d.is_model) else {
            let known = self.models.join(", ");
            return Err(Error { rendered: format!("error: no model named `{model}` (models in this file: {known})\n"), diagnostic: None });
        };
        let mut lw = Lowerer::new(self, opts);
        lw.lower_model(&def.func, loss).map_err(|d| self.error(d))?;
        Ok(Lowered { graph: lw.graph, layers: lw.layers, dims: lw.bound_dims, observed: lw.observed })
    }
}

/// Control flow out of a statement list.
enum Flow {
    Next,
    Return(Value, Span),
}

/// Variables of one block instantiation. `if` and `for` bodies share it.
#[derive(Default)]
struct Frame {
    vars: HashMap<String, Value>,
    /// Buffers declared here: (variable, full name, value at declaration).
    /// A variable bound to another node when the block ends is an update.
    buffers: Vec<(String, String, NodeId, Span)>,
    /// Parameters and buffers declared in this frame: a second declaration
    /// of a name is an error even where a shared instance reuses it.
    declared: HashSet<String>,
}

/// A parameter or buffer declared during a call of a shared instance, which
/// later calls of that instance reuse.
struct SharedDecl {
    id: NodeId,
    kind: DeclKind,
    /// The declaration, and the instance call that made it.
    span: Span,
    call: Span,
}

/// An argument after evaluation.
struct ArgVal {
    name: Option<Ident>,
    value: Value,
    span: Span,
}

const MAX_LOOP_ITERATIONS: i64 = 100_000;

struct Lowerer<'p> {
    prog: &'p Program,
    opts: &'p LowerOptions,
    graph: Graph,
    frames: Vec<Frame>,
    /// Blocks being expanded, with the span of each call (recursion check).
    call_stack: Vec<(String, Span)>,
    /// Parameter name prefix of each active block instance (`linear_1`).
    scopes: Vec<String>,
    /// Per scope, how many instances of each callee were created so far.
    counters: Vec<HashMap<String, usize>>,
    /// Calls of shared instances being expanded: (instance path, call span).
    instances: Vec<(String, Span)>,
    /// Parameters and buffers made inside instance calls, by full name.
    shared_decls: HashMap<String, SharedDecl>,
    /// The latest value of each buffer, by full name: a shared instance's
    /// second call starts from its first call's update.
    buffer_values: HashMap<String, NodeId>,
    /// Stack of `for` expressions collecting `yield`s.
    yields: Vec<Vec<(NodeId, Span)>>,
    layers: Vec<Layer>,
    bound_dims: BTreeMap<String, usize>,
    /// `observe` calls so far (see [`Lowered::observed`]).
    observed: Vec<(String, NodeId)>,
    file_names: HashMap<u32, Arc<str>>,
    /// Nodes below this index have had their size checked.
    sized: usize,
    /// Bytes of the parameters and buffers declared so far.
    state_bytes: u64,
    /// The memory bound in force (see [`LowerOptions::memory_limit`]).
    memory_limit: Option<u64>,
}

fn diag(span: Span, msg: impl Into<String>) -> Diagnostic {
    Diagnostic::new(span, msg)
}

impl<'p> Lowerer<'p> {
    /// `name` under the active block instances: `linear_1.W`.
    fn scoped(&self, name: &str) -> String {
        self.scopes.iter().map(String::as_str).chain([name]).collect::<Vec<_>>().join(".")
    }

    fn new(prog: &'p Program, opts: &'p LowerOptions) -> Lowerer<'p> {
        Lowerer {
            prog,
            opts,
            graph: Graph::default(),
            frames: Vec::new(),
            call_stack: Vec::new(),
            scopes: Vec::new(),
            counters: vec![HashMap::new()],
            instances: Vec::new(),
            shared_decls: HashMap::new(),
            buffer_values: HashMap::new(),
            yields: Vec::new(),
            layers: Vec::new(),
            bound_dims: BTreeMap::new(),
            observed: Vec::new(),
            file_names: HashMap::new(),
            sized: 0,
            state_bytes: 0,
            memory_limit: opts.memory_limit.or_else(memory::machine_memory),
        }
    }

    // ---- locations -------------------------------------------------------

    fn loc(&mut self, span: Span) -> Loc {
        let sources = &self.prog.sources;
        let file = self.file_names.entry(span.file).or_insert_with(|| Arc::from(sources.name(span.file))).clone();
        let (line, col) = sources.line_col(span.file, span.lo);
        Loc { file, line, col }
    }

    /// Attributes nodes built from now on to `span`.
    fn at(&mut self, span: Span) {
        let loc = self.loc(span);
        self.graph.set_loc(Some(loc));
    }

    // ---- model ------------------------------------------------------------

    fn lower_model(&mut self, func: &FuncDef, loss: Option<&LossSpec>) -> Result<()> {
        self.graph.name = func.name.name.clone();
        self.frames.push(Frame::default());
        self.call_stack.push((func.name.name.clone(), func.name.span));
        for p in &func.params {
            let Some(TypeExpr::Tensor { dtype, dims, span }) = &p.ty else {
                return Err(diag(p.span, format!("model input `{}` needs a tensor type such as `f32[B, 784]`", p.name.name))
                    .with_label("no tensor type")
                    .with_note("compile-time arguments belong to blocks; a model's inputs are the tensors fed at run time"));
            };
            let dtype = self.dtype_of(dtype)?;
            let shape = self.bind_input_dims(&p.name, dims, *span)?;
            self.at(p.name.span);
            let id = self.graph.input(&p.name.name, dtype, Shape(shape));
            self.check_tensor_size(id, &format!("input `{}`", p.name.name), p.span)?;
            self.sized = self.graph.len();
            self.set_var(&p.name.name, Value::Tensor(id));
        }
        let result = match self.exec_block(&func.body)? {
            Flow::Return(v, span) => (v, span),
            Flow::Next => return Err(diag(func.name.span, format!("model `{}` does not return a value", func.name.name)).with_label("needs a `return`")),
        };
        self.emit_buffer_updates()?;
        let outputs = match &result.0 {
            Value::Tuple(items) => items.clone(),
            v => vec![v.clone()],
        };
        if !func.ret.is_empty() && func.ret.len() != outputs.len() {
            return Err(diag(result.1, format!("model `{}` declares {} results but returns {}", func.name.name, func.ret.len(), outputs.len())));
        }
        let mut results = Vec::new();
        for (i, out) in outputs.iter().enumerate() {
            let Value::Tensor(id) = out else {
                return Err(instance_hint(diag(result.1, format!("a model returns tensors, but result {i} is {}", out.describe(&self.graph))), &[out]));
            };
            let name = match func.ret.get(i) {
                Some(rt) => {
                    if let TypeExpr::Tensor { dtype, dims, span } = &rt.ty {
                        self.check_type(&format!("result {i} of model `{}`", func.name.name), *id, dtype, dims, *span, result.1)?;
                    }
                    rt.name.as_ref().map(|n| n.name.clone())
                }
                None => None,
            };
            let name = name.unwrap_or_else(|| if outputs.len() == 1 { "output".into() } else { format!("output{i}") });
            // A result named like an input is that input's next value
            // (recurrent state): whoever runs the model feeds it back.
            match self.graph.input_named(&name) {
                Some(input) => {
                    if self.graph.dtype(input) != self.graph.dtype(*id) || self.graph.shape(input) != self.graph.shape(*id) {
                        let span = func.ret.get(i).and_then(|r| r.name.as_ref()).map_or(result.1, |n| n.span);
                        return Err(diag(span, format!("result `{name}` is the next value of input `{name}`, so it must have its type {}, but it is {}", Value::Tensor(input).describe(&self.graph), Value::Tensor(*id).describe(&self.graph)))
                            .with_label("named like an input")
                            .with_note("a result named like an input is carried into that input (recurrent state); rename it otherwise"));
                    }
                    self.graph.set_update(name, *id);
                }
                None => {
                    self.graph.set_output(name, *id);
                    results.push(*id);
                }
            }
        }
        if let Some(spec) = loss {
            self.attach_loss(spec, &results, func.name.span)?;
        }
        self.check_sizes(func.name.span)
    }

    fn attach_loss(&mut self, spec: &LossSpec, results: &[NodeId], span: Span) -> Result<()> {
        self.at(span);
        let Some(&pred) = results.first() else {
            return Err(diag(span, "a model trained with a loss needs a result that is not the next value of an input"));
        };
        // The loss takes as many results as its required parameters leave
        // room for beside the labels (at least one).
        let required = match self.prog.defs.get(&spec.loss) {
            Some(def) => def.func.params.iter().filter(|p| p.default.is_none()).count(),
            None => 1 + spec.labels.len(),
        };
        let n = required.saturating_sub(spec.labels.len()).clamp(1, results.len());
        let mut args: Vec<ArgVal> = results[..n].iter().map(|&r| ArgVal { name: None, value: Value::Tensor(r), span }).collect();
        for label in &spec.labels {
            let id = self.graph.input(&label.name, label.dtype, Shape(label.shape.clone()));
            args.push(ArgVal { name: None, value: Value::Tensor(id), span });
        }
        let ident = Ident { name: spec.loss.clone(), span };
        let loss = self.call(&ident, args, span)?;
        let Value::Tensor(id) = loss else {
            return Err(diag(span, format!("loss `{}` must return a tensor, got {}", spec.loss, loss.describe(&self.graph))));
        };
        if self.graph.shape(id).numel() != 1 || !self.graph.dtype(id).is_float() {
            return Err(diag(span, format!("loss `{}` must return a float scalar, got {}", spec.loss, Value::Tensor(id).describe(&self.graph))));
        }
        self.graph.set_output("loss", id);
        // The trainer reads predictions as `output` whatever the model calls them.
        if self.graph.output("output").is_none() {
            self.graph.set_output("output", pred);
        }
        Ok(())
    }

    fn dtype_of(&self, ident: &Ident) -> Result<DType> {
        DType::from_name(&ident.name)
            .ok_or_else(|| diag(ident.span, format!("unknown dtype `{}`", ident.name)).with_label("not a dtype").with_note("dtypes are f32, f64, i64 and bool"))
    }

    fn bind_input_dims(&mut self, input: &Ident, dims: &[DimPat], span: Span) -> Result<Vec<usize>> {
        if let Some(actual) = self.opts.input_shapes.get(&input.name) {
            let actual = actual.clone();
            self.unify(&format!("input `{}`", input.name), dims, &actual, span, span)?;
            return Ok(actual);
        }
        let mut shape = Vec::new();
        for d in dims {
            match d {
                DimPat::Lit(n, _) => shape.push(*n as usize),
                DimPat::Ellipsis(s) => return Err(diag(*s, "a model input needs a fixed rank; `...` is only allowed in block arguments")),
                DimPat::Name(name) => {
                    let value = match self.lookup(&name.name) {
                        Some(Value::Int(v)) if v >= 0 => v as usize,
                        _ => match self.opts.dims.get(&name.name).copied().or(self.opts.default_dim) {
                            Some(v) => v,
                            None => {
                                return Err(diag(name.span, format!("dimension `{}` of input `{}` is not bound", name.name, input.name))
                                    .with_label("needs a value")
                                    .with_note(format!("pass --dim {}=N, or feed an input whose shape fixes it", name.name)));
                            }
                        },
                    };
                    self.bound_dims.insert(name.name.clone(), value);
                    self.set_var(&name.name, Value::Int(value as i64));
                    shape.push(value);
                }
            }
        }
        Ok(shape)
    }

    /// Matches an actual shape against a pattern like `[..., I]`, binding
    /// the names in the current frame; `what` names the value for errors.
    fn unify(&mut self, what: &str, dims: &[DimPat], actual: &[usize], type_span: Span, value_span: Span) -> Result<()> {
        let pattern = pattern_text(dims);
        let mismatch = |extra: String| {
            let d = diag(value_span, format!("{what} has shape {} but {pattern} was expected{extra}", Shape(actual.to_vec())));
            // A fed input has no source text of its own: point at its type only.
            if type_span == value_span {
                d.with_label("expected type declared here")
            } else {
                d.with_label("this value").with_secondary(type_span, "expected type declared here")
            }
        };
        let ellipsis = dims.iter().position(|d| matches!(d, DimPat::Ellipsis(_)));
        let fixed = dims.len() - usize::from(ellipsis.is_some());
        let rank_ok = if ellipsis.is_some() { actual.len() >= fixed } else { actual.len() == fixed };
        if !rank_ok {
            return Err(mismatch(format!(" (rank {} vs {})", actual.len(), fixed)));
        }
        let mut pairs = Vec::new();
        match ellipsis {
            None => pairs.extend(dims.iter().zip(actual.iter().copied())),
            Some(e) => {
                let tail = dims.len() - e - 1;
                pairs.extend(dims[..e].iter().zip(actual[..e].iter().copied()));
                pairs.extend(dims[e + 1..].iter().zip(actual[actual.len() - tail..].iter().copied()));
            }
        }
        for (d, n) in pairs {
            match d {
                DimPat::Lit(v, _) if *v as usize != n => return Err(mismatch(format!(" ({v} vs {n})"))),
                DimPat::Name(name) => match self.lookup(&name.name) {
                    Some(Value::Int(v)) if v as usize != n => {
                        return Err(mismatch(format!(" (`{}` is {v} here but the value has {n})", name.name)));
                    }
                    Some(Value::Int(_)) => {}
                    _ => {
                        if self.call_stack.len() <= 1 {
                            self.bound_dims.insert(name.name.clone(), n);
                        }
                        self.set_var(&name.name, Value::Int(n as i64));
                    }
                },
                _ => {}
            }
        }
        Ok(())
    }

    fn check_type(&mut self, what: &str, id: NodeId, dtype: &Ident, dims: &[DimPat], type_span: Span, value_span: Span) -> Result<()> {
        let want = self.dtype_of(dtype)?;
        let have = self.graph.dtype(id);
        if want != have {
            return Err(diag(value_span, format!("{what} is {have} but {want} was expected")).with_label("this value").with_secondary(type_span, "expected type declared here"));
        }
        let actual = self.graph.shape(id).0.clone();
        self.unify(what, dims, &actual, type_span, value_span)
    }

    // ---- variables --------------------------------------------------------

    fn frame(&mut self) -> &mut Frame {
        self.frames.last_mut().expect("a frame is active while evaluating")
    }

    fn set_var(&mut self, name: &str, v: Value) {
        self.frame().vars.insert(name.to_string(), v);
    }

    fn lookup(&self, name: &str) -> Option<Value> {
        self.frames.last().and_then(|f| f.vars.get(name).cloned())
    }

    fn is_function(&self, name: &str) -> bool {
        self.prog.defs.contains_key(name) || builtins::is_builtin(name)
    }

    fn name_value(&self, name: &str, span: Span) -> Result<Value> {
        if let Some(v) = self.lookup(name) {
            return Ok(v);
        }
        if let Some(v) = builtins::constant(name, self.opts.training) {
            return Ok(v);
        }
        if self.is_function(name) {
            return Ok(Value::Func(name.to_string()));
        }
        Err(self.unknown_name(name, span))
    }

    fn unknown_name(&self, name: &str, span: Span) -> Diagnostic {
        let mut candidates: Vec<&str> = self.frames.last().map(|f| f.vars.keys().map(String::as_str).collect()).unwrap_or_default();
        candidates.extend(self.prog.defs.keys().map(String::as_str));
        candidates.extend(builtins::NAMES.iter().copied());
        let d = diag(span, format!("unknown name `{name}`")).with_label("not defined here");
        match closest(name, &candidates) {
            Some(best) => d.with_note(format!("did you mean `{best}`?")),
            None => d,
        }
    }

    // ---- statements -------------------------------------------------------

    fn exec_block(&mut self, stmts: &[Stmt]) -> Result<Flow> {
        for s in stmts {
            let flow = self.exec(s)?;
            self.check_sizes(stmt_span(s))?;
            if let Flow::Return(v, span) = flow {
                return Ok(Flow::Return(v, span));
            }
        }
        Ok(Flow::Next)
    }

    /// Refuses any tensor built since the last check (by the statement at
    /// `span`) whose size overflows or exceeds the memory bound.
    fn check_sizes(&mut self, span: Span) -> Result<()> {
        let ids: Vec<NodeId> = self.graph.ids().skip(self.sized).collect();
        self.sized = self.graph.len();
        for id in ids {
            self.check_tensor_size(id, "a tensor computed here", span)?;
        }
        Ok(())
    }

    fn check_tensor_size(&self, id: NodeId, what: &str, span: Span) -> Result<u64> {
        let ty = format!("{}{}", self.graph.dtype(id), self.graph.shape(id));
        let bytes = memory::node_bytes(&self.graph, id);
        self.check_bytes(what, &ty, bytes, span)
    }

    /// `bytes` (`None`: overflowed) of `what`, of type `ty`, against the bound.
    fn check_bytes(&self, what: &str, ty: &str, bytes: Option<u64>, span: Span) -> Result<u64> {
        let Some(bytes) = bytes else {
            return Err(self.in_model_call(diag(span, format!("{what} ({ty}) has more elements than can be addressed: it can never be allocated")).with_label("too large")));
        };
        match self.memory_limit {
            Some(limit) if bytes > limit => {
                Err(self.in_model_call(diag(span, format!("{what} ({ty}) needs {}, more than this machine's memory, {}", memory::bytes_text(bytes), memory::bytes_text(limit))).with_label("too large")))
            }
            _ => Ok(bytes),
        }
    }

    /// Points a diagnostic raised inside a block also at the model-body call
    /// that led there (the line of the user's file that asked for it).
    fn in_model_call(&self, d: Diagnostic) -> Diagnostic {
        match self.call_stack.get(1) {
            Some((name, span)) => d.with_secondary(*span, format!("in this call of `{name}`")),
            None => d,
        }
    }


    fn exec(&mut self, stmt: &Stmt) -> Result<Flow> {
        match stmt {
            Stmt::Let { targets, value, span } => {
                let v = self.eval(value)?;
                self.assign(targets, v, *span)?;
            }
            Stmt::Param { kind, name, ty, init, span } => self.declare_param(*kind, name, ty, init.as_ref(), *span)?,
            Stmt::If { cond, then_body, else_body, .. } => {
                let flow = if self.eval_cond(cond)? {
                    self.exec_block(then_body)?
                } else if let Some(body) = else_body {
                    self.exec_block(body)?
                } else {
                    Flow::Next
                };
                return Ok(flow);
            }
            Stmt::For { vars, iter, body, .. } => {
                for item in self.loop_items(iter)? {
                    self.assign(vars, item, iter.span)?;
                    if let Flow::Return(v, s) = self.exec_block(body)? {
                        return Ok(Flow::Return(v, s));
                    }
                }
            }
            Stmt::Return { value, span } => return Ok(Flow::Return(self.eval(value)?, *span)),
            Stmt::Yield { value, span } => {
                let v = self.eval(value)?;
                let Value::Tensor(id) = v else {
                    return Err(diag(value.span, format!("`yield` takes a tensor, got {}", v.describe(&self.graph))));
                };
                match self.yields.last_mut() {
                    Some(collected) => collected.push((id, *span)),
                    None => return Err(diag(*span, "`yield` outside a `for` expression").with_note("write `ys = for t in 0..T { ...; yield y }` to stack the yielded tensors")),
                }
            }
            Stmt::Expr(e) => {
                self.eval(e)?;
            }
        }
        Ok(Flow::Next)
    }

    fn assign(&mut self, targets: &[Ident], v: Value, span: Span) -> Result<()> {
        if let [one] = targets {
            self.set_var(&one.name, v);
            return Ok(());
        }
        match v {
            Value::Tuple(items) if items.len() == targets.len() => {
                for (t, item) in targets.iter().zip(items) {
                    self.set_var(&t.name, item);
                }
                Ok(())
            }
            other => Err(diag(span, format!("cannot unpack {} into {} names", other.describe(&self.graph), targets.len()))),
        }
    }

    fn eval_cond(&mut self, cond: &Expr) -> Result<bool> {
        match self.eval(cond)? {
            Value::Bool(b) => Ok(b),
            other => Err(diag(cond.span, format!("a condition must be a compile-time bool, got {}", other.describe(&self.graph)))
                .with_note("`if` is resolved while compiling; for an elementwise choice between tensors use `where(cond, a, b)`")),
        }
    }

    fn loop_items(&mut self, iter: &Expr) -> Result<Vec<Value>> {
        match self.eval(iter)? {
            Value::Tuple(items) => Ok(items),
            Value::Int(n) if n <= MAX_LOOP_ITERATIONS => Ok((0..n.max(0)).map(Value::Int).collect()),
            other => Err(diag(iter.span, format!("cannot loop over {}", other.describe(&self.graph)))
                .with_note(format!("loops are unrolled at compile time: iterate over a range `a..b` or a tuple (at most {MAX_LOOP_ITERATIONS} iterations)"))),
        }
    }

    fn declare_param(&mut self, kind: DeclKind, name: &Ident, ty: &TypeExpr, init: Option<&Expr>, span: Span) -> Result<()> {
        let TypeExpr::Tensor { dtype, dims, .. } = ty else {
            return Err(diag(span, format!("parameter `{}` needs a tensor type such as `f32[784, 10]`", name.name)));
        };
        let dtype = self.dtype_of(dtype)?;
        let mut shape = Vec::new();
        for d in dims {
            match d {
                DimPat::Lit(n, _) => shape.push(*n as usize),
                DimPat::Name(n) => match self.lookup(&n.name) {
                    Some(Value::Int(v)) if v > 0 => shape.push(v as usize),
                    Some(other) => return Err(diag(n.span, format!("dimension `{}` must be a positive int, got {}", n.name, other.describe(&self.graph)))),
                    None => return Err(self.unknown_name(&n.name, n.span)),
                },
                DimPat::Ellipsis(s) => return Err(diag(*s, "a parameter's shape must be fully known; `...` is not allowed here")),
            }
        }
        let init = match init {
            None => Init::Zeros,
            Some(e) => match self.eval(e)? {
                Value::Init(i) => i,
                Value::Func(f) => builtins::named_init(&f).ok_or_else(|| diag(e.span, format!("`{f}` is not an initializer")).with_note(builtins::INIT_HELP))?,
                Value::Int(v) => Init::Constant(v as f64),
                Value::Float(v) => Init::Constant(v),
                other => return Err(diag(e.span, format!("expected an initializer, got {}", other.describe(&self.graph))).with_note(builtins::INIT_HELP)),
            },
        };
        let full_name = self.scoped(&name.name);
        if self.frame().declared.contains(&name.name) {
            return Err(diag(name.span, format!("`{}` is declared twice in this block", name.name)));
        }
        if !self.instances.is_empty() && self.shared_decls.contains_key(&full_name) {
            return self.reuse_shared(kind, name, dtype, Shape(shape), &full_name, span);
        }
        let taken = self.graph.params().into_iter().chain(self.graph.states()).any(|p| {
            matches!(&self.graph.node(p).op, d2l_ir::Op::Param { name, .. } | d2l_ir::Op::State { name, .. } if *name == full_name)
        });
        if taken {
            return Err(diag(name.span, format!("`{}` is declared twice in this block", name.name)));
        }
        let what = format!("{} `{}`", if kind == DeclKind::Param { "parameter" } else { "buffer" }, name.name);
        let elements = shape.iter().try_fold(1u64, |n, &d| n.checked_mul(d as u64));
        let described = format!("{dtype}{}", Shape(shape.clone()));
        let bytes = self.check_bytes(&what, &described, elements.and_then(|n| n.checked_mul(dtype.size_bytes() as u64)), span)?;
        let total = self.state_bytes.saturating_add(bytes);
        if let Some(limit) = self.memory_limit.filter(|&limit| total > limit) {
            return Err(self.in_model_call(diag(span, format!("with {what} ({described}), the parameters and buffers need {}, more than this machine's memory, {}", memory::bytes_text(total), memory::bytes_text(limit))).with_label("too large")));
        }
        self.state_bytes = total;
        self.at(span);
        let id = match kind {
            DeclKind::Param => self.graph.param(&full_name, dtype, Shape(shape), init).map_err(|e| diag(span, e.0))?,
            DeclKind::Buffer => {
                let id = self.graph.state(&full_name, dtype, Shape(shape), init);
                self.buffer_values.insert(full_name.clone(), id);
                self.frame().buffers.push((name.name.clone(), full_name.clone(), id, span));
                id
            }
        };
        if let Some(&(_, call)) = self.instances.last() {
            self.shared_decls.insert(full_name, SharedDecl { id, kind, span, call });
        }
        self.frame().declared.insert(name.name.clone());
        self.set_var(&name.name, Value::Tensor(id));
        Ok(())
    }

    /// A declaration repeated by a later call of a shared instance: binds
    /// the existing parameter (or the buffer's latest value) if the type is
    /// the same.
    fn reuse_shared(&mut self, kind: DeclKind, name: &Ident, dtype: DType, shape: Shape, full_name: &str, span: Span) -> Result<()> {
        let (instance, call) = self.instances.last().cloned().expect("only called inside an instance call");
        let prev = &self.shared_decls[full_name];
        let (prev_id, prev_kind, prev_span, prev_call) = (prev.id, prev.kind, prev.span, prev.call);
        if kind != prev_kind || dtype != self.graph.dtype(prev_id) || shape != *self.graph.shape(prev_id) {
            let now = format!("{} {dtype}{shape}", kind.keyword());
            let before = format!("{} {}{}", prev_kind.keyword(), self.graph.dtype(prev_id), self.graph.shape(prev_id));
            let mut d = diag(span, format!("`{}` of shared instance `{instance}` would be {now} in this call, but an earlier call declared it {before}", name.name))
                .with_label("declared again here")
                .with_secondary(call, "this call");
            if prev_call != call {
                d = d.with_secondary(prev_call, "the earlier call");
            }
            if prev_span != span {
                d = d.with_secondary(prev_span, "first declared here");
            }
            return Err(d.with_note("every call of a shared instance uses the same parameters, so they must have the same type each time: call it with inputs of the same shape, or `share` the block twice"));
        }
        let id = match kind {
            DeclKind::Param => prev_id,
            DeclKind::Buffer => {
                let latest = self.buffer_values.get(full_name).copied().unwrap_or(prev_id);
                self.frame().buffers.push((name.name.clone(), full_name.to_string(), latest, span));
                latest
            }
        };
        self.frame().declared.insert(name.name.clone());
        self.set_var(&name.name, Value::Tensor(id));
        Ok(())
    }

    /// Turns the buffers of the current frame that were rebound into graph
    /// update outputs, checked to keep their type.
    fn emit_buffer_updates(&mut self) -> Result<()> {
        let buffers = std::mem::take(&mut self.frame().buffers);
        for (var, full_name, declared, span) in buffers {
            match self.lookup(&var) {
                Some(Value::Tensor(id)) if id == declared => {}
                Some(Value::Tensor(id)) if self.graph.shape(id) == self.graph.shape(declared) && self.graph.dtype(id) == self.graph.dtype(declared) => {
                    // A later call of a shared instance replaces the update.
                    self.buffer_values.insert(full_name.clone(), id);
                    self.graph.set_update(full_name, id);
                }
                Some(v) => {
                    return Err(diag(span, format!("buffer `{var}` was reassigned to {}, but it is declared as {}", v.describe(&self.graph), Value::Tensor(declared).describe(&self.graph)))
                        .with_note("a buffer's new value must keep its shape and dtype"));
                }
                None => {}
            }
        }
        Ok(())
    }

    // ---- expressions ------------------------------------------------------

    fn eval(&mut self, e: &Expr) -> Result<Value> {
        match &e.kind {
            ExprKind::Int(v) => Ok(Value::Int(*v)),
            ExprKind::Float(v) => Ok(Value::Float(*v)),
            ExprKind::Bool(v) => Ok(Value::Bool(*v)),
            ExprKind::Str(s) => Ok(Value::Str(s.clone())),
            ExprKind::Name(n) => self.name_value(n, e.span),
            ExprKind::Tuple(items) => Ok(Value::Tuple(items.iter().map(|i| self.eval(i)).collect::<Result<_>>()?)),
            ExprKind::Unary { op, expr } => {
                let v = self.eval(expr)?;
                self.unary(*op, v, e.span)
            }
            ExprKind::Binary { op, lhs, rhs } => {
                let a = self.eval(lhs)?;
                // `and`/`or` short-circuit like Python, so guards such as
                // `p > 0 and training` need only a valid left side.
                match (op, &a) {
                    (BinOp::And, Value::Bool(false)) => return Ok(Value::Bool(false)),
                    (BinOp::Or, Value::Bool(true)) => return Ok(Value::Bool(true)),
                    _ => {}
                }
                let b = self.eval(rhs)?;
                self.binary(*op, a, b, lhs.span, rhs.span, e.span)
            }
            ExprKind::Pipe { lhs, rhs } => {
                let first = ArgVal { name: None, value: self.eval(lhs)?, span: lhs.span };
                match &rhs.kind {
                    ExprKind::Name(n) => {
                        let callee = Ident { name: n.clone(), span: rhs.span };
                        self.call(&callee, vec![first], e.span)
                    }
                    ExprKind::Call { callee, args } => {
                        let mut vals = vec![first];
                        vals.extend(self.eval_args(args)?);
                        self.call(callee, vals, e.span)
                    }
                    _ => Err(diag(rhs.span, "the right side of `|>` must be a function name or a call").with_label("not callable")),
                }
            }
            ExprKind::Call { callee, args } => {
                // `share(typo)`: say what `share` wanted (unless `share` is redefined).
                if callee.name == "share"
                    && !self.prog.defs.contains_key("share")
                    && self.lookup("share").is_none()
                    && let Some(Arg { name: None, value: Expr { kind: ExprKind::Name(block), span } }) = args.first()
                    && self.name_value(block, *span).is_err()
                {
                    let note = "`share` takes a block: one defined with `block` in this program or the standard library (`linear`, `conv2d`, ...)";
                    return Err(self.unknown_name(block, *span).with_note(note));
                }
                let vals = self.eval_args(args)?;
                self.call(callee, vals, e.span)
            }
            ExprKind::Index { base, items } => {
                let v = self.eval(base)?;
                self.index(v, items, base.span, e.span)
            }
            ExprKind::Field { base, name } => {
                let v = self.eval(base)?;
                match (&v, name.name.as_str()) {
                    (Value::Tensor(id), "shape") => Ok(Value::Tuple(self.graph.shape(*id).0.iter().map(|&d| Value::Int(d as i64)).collect())),
                    (Value::Tensor(id), "rank") => Ok(Value::Int(self.graph.shape(*id).rank() as i64)),
                    _ => Err(diag(name.span, format!("{} has no field `{}`", v.describe(&self.graph), name.name)).with_note("tensors have `.shape` and `.rank`")),
                }
            }
            ExprKind::Range { start, end } => {
                let (a, b) = (self.eval(start)?, self.eval(end)?);
                match (a, b) {
                    (Value::Int(a), Value::Int(b)) if b - a <= MAX_LOOP_ITERATIONS => Ok(Value::Tuple((a..b).map(Value::Int).collect())),
                    (Value::Int(_), Value::Int(_)) => Err(diag(e.span, format!("range is longer than {MAX_LOOP_ITERATIONS}"))),
                    (a, b) => Err(diag(e.span, format!("a range needs two ints, got {} and {}", a.describe(&self.graph), b.describe(&self.graph)))),
                }
            }
            ExprKind::For { vars, iter, body } => {
                let items = self.loop_items(iter)?;
                self.yields.push(Vec::new());
                for item in items {
                    self.assign(vars, item, iter.span)?;
                    if let Flow::Return(_, s) = self.exec_block(body)? {
                        self.yields.pop();
                        return Err(diag(s, "`return` inside a `for` expression").with_note("use `yield` to contribute a value"));
                    }
                }
                let collected = self.yields.pop().unwrap_or_default();
                self.stack(&collected, e.span)
            }
        }
    }

    fn eval_args(&mut self, args: &[Arg]) -> Result<Vec<ArgVal>> {
        args.iter().map(|a| Ok(ArgVal { name: a.name.clone(), value: self.eval(&a.value)?, span: a.value.span })).collect()
    }

    /// Stacks yielded tensors along a new leading axis.
    fn stack(&mut self, items: &[(NodeId, Span)], span: Span) -> Result<Value> {
        let Some(&(first, _)) = items.first() else {
            return Err(diag(span, "this `for` expression yields nothing"));
        };
        self.at(span);
        let shape = self.graph.shape(first).clone();
        let mut parts = Vec::new();
        for &(id, s) in items {
            if *self.graph.shape(id) != shape || self.graph.dtype(id) != self.graph.dtype(first) {
                return Err(diag(s, format!("yielded {} but the first iteration yielded {}", Value::Tensor(id).describe(&self.graph), Value::Tensor(first).describe(&self.graph))));
            }
            let mut dims = vec![1];
            dims.extend(&shape.0);
            parts.push(self.graph.reshape(id, Shape(dims)).map_err(|e| diag(s, e.0))?);
        }
        Ok(Value::Tensor(self.graph.concat(&parts, 0).map_err(|e| diag(span, e.0))?))
    }

    fn unary(&mut self, op: UnOp, v: Value, span: Span) -> Result<Value> {
        match (op, v) {
            (UnOp::Neg, Value::Int(i)) => Ok(Value::Int(-i)),
            (UnOp::Neg, Value::Float(f)) => Ok(Value::Float(-f)),
            (UnOp::Neg, Value::Tensor(id)) => {
                self.at(span);
                Ok(Value::Tensor(self.graph.unary(d2l_ir::UnaryOp::Neg, id).map_err(|e| diag(span, e.0))?))
            }
            (UnOp::Not, Value::Bool(b)) => Ok(Value::Bool(!b)),
            (UnOp::Not, Value::Tensor(id)) if self.graph.dtype(id) == DType::Bool => {
                self.at(span);
                let f = self.graph.full(0.0, DType::Bool, self.graph.shape(id).clone());
                Ok(Value::Tensor(self.graph.compare(CmpOp::Eq, id, f).map_err(|e| diag(span, e.0))?))
            }
            (op, v) => {
                let sym = if op == UnOp::Neg { "-" } else { "not" };
                Err(diag(span, format!("`{sym}` cannot be applied to {}", v.describe(&self.graph))))
            }
        }
    }

    /// Turns a scalar operand into a tensor node shaped like `like`.
    fn lift(&mut self, v: &Value, like: NodeId, span: Span) -> Result<NodeId> {
        let dtype = self.graph.dtype(like);
        let value = match v {
            Value::Tensor(id) => return Ok(*id),
            Value::Int(i) => *i as f64,
            Value::Float(f) if dtype.is_float() => *f,
            Value::Bool(b) if dtype == DType::Bool => f64::from(u8::from(*b)),
            Value::Instance(_) => return Err(instance_hint(diag(span, format!("cannot combine {} with a {dtype} tensor", v.describe(&self.graph))), &[v])),
            other => {
                return Err(diag(span, format!("cannot combine {} with a {dtype} tensor", other.describe(&self.graph))).with_note("convert with `cast(x, \"f32\")`"));
            }
        };
        Ok(self.graph.full(value, dtype, Shape::scalar()))
    }

    fn binary(&mut self, op: BinOp, a: Value, b: Value, sa: Span, sb: Span, span: Span) -> Result<Value> {
        if !matches!(a, Value::Tensor(_)) && !matches!(b, Value::Tensor(_)) {
            return builtins::scalar_binary(op, &a, &b).ok_or_else(|| {
                instance_hint(diag(span, format!("`{}` is not defined for {} and {}", op.symbol(), a.describe(&self.graph), b.describe(&self.graph))), &[&a, &b])
            });
        }
        self.at(span);
        if op == BinOp::MatMul {
            let (Value::Tensor(x), Value::Tensor(y)) = (&a, &b) else {
                return Err(diag(span, "`@` needs two tensors"));
            };
            return self.matmul(*x, *y, span).map(Value::Tensor);
        }
        if op == BinOp::Pow && b == Value::Int(2) {
            // x ** 2 as x * x: exact, and a simpler gradient than pow.
            let Value::Tensor(x) = a else { unreachable!("a is the tensor operand when b is an int") };
            return Ok(Value::Tensor(self.graph.binary(BinaryOp::Mul, x, x).map_err(|e| diag(span, e.0))?));
        }
        let like = match (&a, &b) {
            (Value::Tensor(x), _) | (_, Value::Tensor(x)) => *x,
            _ => unreachable!("one operand is a tensor"),
        };
        let x = self.lift(&a, like, sa)?;
        let y = self.lift(&b, like, sb)?;
        let (x, y) = self.graph.broadcast_pair(x, y).map_err(|e| {
            diag(span, format!("`{}`: {}", op.symbol(), e.0))
                .with_secondary(sa, format!("left: {}", Value::Tensor(x).describe(&self.graph)))
                .with_secondary(sb, format!("right: {}", Value::Tensor(y).describe(&self.graph)))
        })?;
        let g = &mut self.graph;
        let r = match op {
            BinOp::Add => g.binary(BinaryOp::Add, x, y),
            BinOp::Sub => g.binary(BinaryOp::Sub, x, y),
            BinOp::Mul => g.binary(BinaryOp::Mul, x, y),
            BinOp::Div => g.binary(BinaryOp::Div, x, y),
            BinOp::Pow => g.binary(BinaryOp::Pow, x, y),
            BinOp::Eq => g.compare(CmpOp::Eq, x, y),
            BinOp::Ne => g.compare(CmpOp::Ne, x, y),
            BinOp::Lt => g.compare(CmpOp::Lt, x, y),
            BinOp::Le => g.compare(CmpOp::Le, x, y),
            BinOp::Gt => g.compare(CmpOp::Gt, x, y),
            BinOp::Ge => g.compare(CmpOp::Ge, x, y),
            BinOp::And => g.binary(BinaryOp::Min, x, y),
            BinOp::Or => g.binary(BinaryOp::Max, x, y),
            BinOp::Rem | BinOp::MatMul => return Err(diag(span, format!("`{}` is not defined on tensors", op.symbol()))),
        };
        Ok(Value::Tensor(r.map_err(|e| diag(span, format!("`{}`: {}", op.symbol(), e.0)))?))
    }

    /// NumPy `@`: 1-D operands are promoted, an N-D left side against a 2-D
    /// right side is flattened into one GEMM, batch dims broadcast.
    fn matmul(&mut self, a: NodeId, b: NodeId, span: Span) -> Result<NodeId> {
        let e = |g: &Graph, msg: String| {
            diag(span, format!("`@`: {msg}")).with_note(format!("left is {}, right is {}", Value::Tensor(a).describe(g), Value::Tensor(b).describe(g)))
        };
        let sa = self.graph.shape(a).0.clone();
        let sb = self.graph.shape(b).0.clone();
        if sa.is_empty() || sb.is_empty() {
            return Err(e(&self.graph, "scalars cannot be multiplied with `@`; use `*`".into()));
        }
        let g = &mut self.graph;
        let a2 = if sa.len() == 1 { g.reshape(a, Shape(vec![1, sa[0]])).map_err(|x| e(g, x.0))? } else { a };
        let b2 = if sb.len() == 1 { g.reshape(b, Shape(vec![sb[0], 1])).map_err(|x| e(g, x.0))? } else { b };
        let (ra, rb) = (g.shape(a2).0.clone(), g.shape(b2).0.clone());
        let (k1, k2) = (ra[ra.len() - 1], rb[rb.len() - 2]);
        if k1 != k2 {
            return Err(e(g, format!("cannot multiply {} by {}: inner dimensions {k1} and {k2} differ", Shape(sa), Shape(sb))));
        }
        let result = if rb.len() == 2 {
            let m: usize = ra[..ra.len() - 1].iter().product();
            let flat = g.reshape(a2, Shape(vec![m, k1])).map_err(|x| e(g, x.0))?;
            let y = g.matmul(flat, b2).map_err(|x| e(g, x.0))?;
            let mut out = ra[..ra.len() - 1].to_vec();
            out.push(rb[1]);
            g.reshape(y, Shape(out)).map_err(|x| e(g, x.0))?
        } else {
            let batch_a = Shape(ra[..ra.len() - 2].to_vec());
            let batch_b = Shape(rb[..rb.len() - 2].to_vec());
            let batch = d2l_ir::build::broadcast_shapes(&batch_a, &batch_b).map_err(|x| e(g, x.0))?;
            let mut ta = batch.0.clone();
            ta.extend(&ra[ra.len() - 2..]);
            let mut tb = batch.0.clone();
            tb.extend(&rb[rb.len() - 2..]);
            let a3 = g.broadcast(a2, Shape(ta)).map_err(|x| e(g, x.0))?;
            let b3 = g.broadcast(b2, Shape(tb)).map_err(|x| e(g, x.0))?;
            g.matmul(a3, b3).map_err(|x| e(g, x.0))?
        };
        // Drop the axes that 1-D operands gained.
        let mut out = g.shape(result).0.clone();
        if sb.len() == 1 {
            out.pop();
        }
        if sa.len() == 1 {
            let at = out.len() - usize::from(sb.len() != 1) - 1;
            out.remove(at);
        }
        g.reshape(result, Shape(out)).map_err(|x| e(g, x.0))
    }

    fn index(&mut self, v: Value, items: &[IndexItem], base_span: Span, span: Span) -> Result<Value> {
        match v {
            Value::Tuple(elems) => {
                let [item] = items else {
                    return Err(diag(span, "a tuple takes one index"));
                };
                match item {
                    IndexItem::At(e) => {
                        let i = self.eval_int(e)?;
                        let n = elems.len() as i64;
                        let j = if i < 0 { i + n } else { i };
                        if !(0..n).contains(&j) {
                            return Err(diag(e.span, format!("index {i} is out of range for a tuple of {n} elements")));
                        }
                        Ok(elems[j as usize].clone())
                    }
                    IndexItem::Range { start, end, step } => {
                        let (a, b, s) = self.range_bounds(start, end, step, elems.len(), span)?;
                        Ok(Value::Tuple((a..b).step_by(s).map(|i| elems[i].clone()).collect()))
                    }
                }
            }
            Value::Tensor(id) => {
                let shape = self.graph.shape(id).0.clone();
                if items.len() > shape.len() {
                    return Err(diag(span, format!("{} indices for a tensor of rank {} ({})", items.len(), shape.len(), Shape(shape.clone()))));
                }
                let (mut starts, mut ends, mut steps) = (vec![0; shape.len()], shape.clone(), vec![1; shape.len()]);
                let mut keep = Vec::new();
                for (axis, item) in items.iter().enumerate() {
                    match item {
                        IndexItem::At(e) => {
                            let i = self.eval_int(e)?;
                            let n = shape[axis] as i64;
                            let j = if i < 0 { i + n } else { i };
                            if !(0..n).contains(&j) {
                                return Err(diag(e.span, format!("index {i} is out of range for axis {axis} of size {n}")).with_secondary(base_span, format!("this is {}", Value::Tensor(id).describe(&self.graph))));
                            }
                            starts[axis] = j as usize;
                            ends[axis] = j as usize + 1;
                        }
                        IndexItem::Range { start, end, step } => {
                            let (a, b, s) = self.range_bounds(start, end, step, shape[axis], span)?;
                            starts[axis] = a;
                            ends[axis] = b.max(a);
                            steps[axis] = s;
                            keep.push(axis);
                        }
                    }
                }
                keep.extend(items.len()..shape.len());
                self.at(span);
                let sliced = self.graph.slice(id, &starts, &ends, &steps).map_err(|e| diag(span, e.0))?;
                let out: Vec<usize> = keep.iter().map(|&a| self.graph.shape(sliced).0[a]).collect();
                Ok(Value::Tensor(self.graph.reshape(sliced, Shape(out)).map_err(|e| diag(span, e.0))?))
            }
            other => Err(diag(base_span, format!("{} cannot be indexed", other.describe(&self.graph)))),
        }
    }

    fn eval_int(&mut self, e: &Expr) -> Result<i64> {
        match self.eval(e)? {
            Value::Int(i) => Ok(i),
            other => Err(diag(e.span, format!("expected a compile-time int, got {}", other.describe(&self.graph)))),
        }
    }

    /// Python slice semantics for `a:b:s` on a length `n` (clamped, negative
    /// from the end); the step must be positive.
    fn range_bounds(&mut self, start: &Option<Expr>, end: &Option<Expr>, step: &Option<Expr>, n: usize, span: Span) -> Result<(usize, usize, usize)> {
        let n = n as i64;
        let norm = |i: i64| if i < 0 { (i + n).max(0) } else { i.min(n) };
        let a = match start { Some(e) => norm(self.eval_int(e)?), None => 0 };
        let b = match end { Some(e) => norm(self.eval_int(e)?), None => n };
        let s = match step { Some(e) => self.eval_int(e)?, None => 1 };
        if s <= 0 {
            return Err(diag(span, format!("slice step must be positive, got {s}")));
        }
        Ok((a as usize, b.max(a) as usize, s as usize))
    }

    // ---- calls ------------------------------------------------------------

    fn call(&mut self, callee: &Ident, args: Vec<ArgVal>, span: Span) -> Result<Value> {
        // A variable holding a function (`loss = cross_entropy; loss(y, t)`)
        // or a shared instance (`shared = share(linear, out=8); shared(x)`).
        let (name, instance) = match self.lookup(&callee.name) {
            Some(Value::Func(f)) => (f, None),
            Some(Value::Instance(inst)) => (inst.block.clone(), Some(inst)),
            Some(other) => return Err(diag(callee.span, format!("`{}` is {}, not a function", callee.name, other.describe(&self.graph)))),
            None => (callee.name.clone(), None),
        };
        let at_model_level = self.call_stack.len() == 1;
        let params_before = self.param_elems();
        let result = if let Some(inst) = instance {
            self.call_instance(&inst, args, span)?
        } else if let Some(def) = self.prog.defs.get(&name) {
            self.call_block(&def.func, args, span)?
        } else if builtins::is_builtin(&name) {
            self.at(span);
            builtins::call(self, &name, args, span)?
        } else {
            return Err(self.unknown_name(&name, callee.span));
        };
        // A layer returning several values (an RNN's outputs and state) is
        // shown by its first tensor.
        let shown = match &result {
            Value::Tensor(id) => Some(*id),
            Value::Tuple(items) => items.iter().find_map(|v| if let Value::Tensor(id) = v { Some(*id) } else { None }),
            _ => None,
        };
        if at_model_level && let Some(id) = shown {
            let params = self.param_elems() - params_before;
            self.layers.push(Layer { name, shape: self.graph.shape(id).clone(), dtype: self.graph.dtype(id), params });
        }
        Ok(result)
    }

    fn param_elems(&self) -> usize {
        self.graph.params().iter().fold(0usize, |n, &p| n.saturating_add(self.graph.shape(p).numel()))
    }

    fn check_recursion(&self, name: &str, span: Span) -> Result<()> {
        match self.call_stack.iter().find(|(n, _)| n == name) {
            Some((_, outer)) => Err(diag(span, format!("block `{name}` calls itself")).with_label("recursive call").with_secondary(*outer, "while expanding this call").with_note("blocks are expanded at compile time, so recursion would never end; use a `for` loop")),
            None => Ok(()),
        }
    }

    fn call_block(&mut self, func: &FuncDef, args: Vec<ArgVal>, span: Span) -> Result<Value> {
        let name = &func.name.name;
        self.check_recursion(name, span)?;
        let bound = bind_args(&func.params.iter().map(|p| (p.name.name.as_str(), p.default.is_some())).collect::<Vec<_>>(), name, args, span, Some(func.name.span))?;
        let index = {
            let counters = self.counters.last_mut().expect("a counter scope is active");
            let c = counters.entry(name.clone()).or_insert(0);
            *c += 1;
            *c - 1
        };
        self.frames.push(Frame::default());
        self.call_stack.push((name.clone(), span));
        self.scopes.push(format!("{name}_{index}"));
        self.counters.push(HashMap::new());
        let result = self.run_block(func, bound, span);
        self.counters.pop();
        self.scopes.pop();
        self.call_stack.pop();
        self.frames.pop();
        result
    }

    /// Expands a shared instance's block in the instance's own scope, with
    /// fresh counters, so every call declares (and reuses) the same names.
    fn call_instance(&mut self, inst: &Instance, args: Vec<ArgVal>, span: Span) -> Result<Value> {
        let prog = self.prog;
        let func = &prog.defs.get(&inst.block).expect("`share` checked that the block exists").func;
        self.check_recursion(&inst.block, span)?;
        let params: Vec<(&str, bool)> = func.params.iter().map(|p| (p.name.name.as_str(), p.default.is_some())).collect();
        let mut positional = 0;
        for a in &args {
            let target = match &a.name {
                Some(n) => Some(n.name.as_str()),
                None => {
                    positional += 1;
                    params.get(positional - 1).map(|p| p.0)
                }
            };
            if let Some(b) = target.and_then(|t| inst.bound.iter().find(|b| b.name == t)) {
                let given = a.name.as_ref().map_or(a.span, |n| Span { hi: a.span.hi, ..n.span });
                return Err(diag(given, format!("argument `{}` of shared instance `{}` is already bound by `share`", b.name, inst.path()))
                    .with_label("given again here")
                    .with_secondary(b.span, "bound here")
                    .with_note("every call of a shared instance receives the arguments given to `share`; for another value, `share` the block again (separate parameters)"));
            }
        }
        let mut args = args;
        args.extend(inst.bound.iter().map(|b: &BoundArg| ArgVal { name: Some(Ident { name: b.name.clone(), span: b.span }), value: b.value.clone(), span: b.span }));
        let bound = bind_args(&params, &inst.block, args, span, Some(func.name.span))?;
        let outer = std::mem::replace(&mut self.scopes, inst.scope.clone());
        self.frames.push(Frame::default());
        self.call_stack.push((inst.block.clone(), span));
        self.counters.push(HashMap::new());
        self.instances.push((inst.path(), span));
        let result = self.run_block(func, bound, span);
        self.instances.pop();
        self.counters.pop();
        self.call_stack.pop();
        self.frames.pop();
        self.scopes = outer;
        result
    }

    fn run_block(&mut self, func: &FuncDef, bound: Vec<Option<(Value, Span)>>, span: Span) -> Result<Value> {
        for (p, arg) in func.params.iter().zip(bound) {
            let (value, vspan) = match arg {
                Some(a) => a,
                None => {
                    let default = p.default.as_ref().expect("bind_args only leaves parameters with defaults unbound");
                    (self.eval(default)?, default.span)
                }
            };
            match (&p.ty, &value) {
                (None, _) => {}
                (Some(TypeExpr::Tensor { dtype, dims, span: ts }), Value::Tensor(id)) => {
                    let what = format!("argument `{}` of `{}`", p.name.name, func.name.name);
                    self.check_type(&what, *id, dtype, dims, *ts, vspan)?;
                }
                (Some(TypeExpr::Scalar { kind, span: ts }), v) if scalar_matches(&kind.name, v) => {
                    let _ = ts;
                }
                (Some(ty), v) => {
                    let ts = match ty { TypeExpr::Tensor { span, .. } | TypeExpr::Scalar { span, .. } => *span };
                    let d = diag(vspan, format!("argument `{}` of `{}` must be {}, got {}", p.name.name, func.name.name, type_text(ty), v.describe(&self.graph)))
                        .with_label("this value")
                        .with_secondary(ts, "expected type declared here");
                    return Err(instance_hint(d, &[v]));
                }
            }
            self.set_var(&p.name.name, value);
        }
        let value = match self.exec_block(&func.body)? {
            Flow::Return(v, _) => v,
            Flow::Next => return Err(diag(span, format!("block `{}` ended without `return`", func.name.name)).with_secondary(func.name.span, "defined here")),
        };
        self.emit_buffer_updates()?;
        Ok(value)
    }
}

/// Matches call arguments to parameter names: positionals in order, then
/// keywords. Returns one slot per parameter (`None` = use its default).
fn bind_args(params: &[(&str, bool)], callee: &str, args: Vec<ArgVal>, span: Span, def_span: Option<Span>) -> Result<Vec<Option<(Value, Span)>>> {
    let signature = || signature_text(params, callee);
    let with_def = |d: Diagnostic| match def_span {
        Some(s) => d.with_secondary(s, "defined here"),
        None => d,
    };
    let mut slots: Vec<Option<(Value, Span)>> = vec![None; params.len()];
    let mut positional = 0;
    for a in args {
        let i = match &a.name {
            None => {
                if positional >= params.len() {
                    return Err(with_def(diag(a.span, format!("too many arguments: {} takes {}", signature(), params.len())).with_label("extra argument")));
                }
                positional += 1;
                positional - 1
            }
            Some(n) => match params.iter().position(|(p, _)| *p == n.name) {
                Some(i) => i,
                None => {
                    let names: Vec<&str> = params.iter().map(|(p, _)| *p).collect();
                    let d = diag(n.span, format!("`{callee}` has no parameter named `{}`", n.name)).with_label("unknown keyword").with_note(format!("the signature is {}", signature()));
                    let d = match closest(&n.name, &names) {
                        Some(best) => d.with_note(format!("did you mean `{best}`?")),
                        None => d,
                    };
                    return Err(with_def(d));
                }
            },
        };
        if slots[i].is_some() {
            return Err(diag(a.span, format!("argument `{}` of `{callee}` is given twice", params[i].0)));
        }
        slots[i] = Some((a.value, a.span));
    }
    for (i, (name, has_default)) in params.iter().enumerate() {
        if slots[i].is_none() && !has_default {
            return Err(with_def(diag(span, format!("missing argument `{name}` in call to `{callee}`")).with_label(format!("needs `{name}`")).with_note(format!("the signature is {}", signature()))));
        }
    }
    Ok(slots)
}

/// Explains a shared instance used where a value was expected.
fn instance_hint(d: Diagnostic, values: &[&Value]) -> Diagnostic {
    if values.iter().any(|v| matches!(v, Value::Instance(_))) {
        d.with_note("a shared instance is a layer, not a value: call it on a tensor, as in `y = shared(x)` or `x |> shared`")
    } else {
        d
    }
}

/// `` `linear(x, out, bias=..)` `` for messages.
fn signature_text(params: &[(&str, bool)], callee: &str) -> String {
    let names: Vec<String> = params.iter().map(|(n, has_default)| if *has_default { format!("{n}=..") } else { n.to_string() }).collect();
    format!("`{callee}({})`", names.join(", "))
}

fn scalar_matches(kind: &str, v: &Value) -> bool {
    matches!((kind, v), ("int", Value::Int(_)) | ("float", Value::Float(_) | Value::Int(_)) | ("bool", Value::Bool(_)) | ("tuple", Value::Tuple(_)))
}

fn pattern_text(dims: &[DimPat]) -> String {
    let parts: Vec<String> = dims
        .iter()
        .map(|d| match d {
            DimPat::Lit(n, _) => n.to_string(),
            DimPat::Name(i) => i.name.clone(),
            DimPat::Ellipsis(_) => "...".into(),
        })
        .collect();
    format!("[{}]", parts.join(", "))
}

fn type_text(ty: &TypeExpr) -> String {
    match ty {
        TypeExpr::Tensor { dtype, dims, .. } => format!("{}{}", dtype.name, pattern_text(dims)),
        TypeExpr::Scalar { kind, .. } => format!("an {}", kind.name),
    }
}

/// The candidate closest to `name` by edit distance, if close enough to be a
/// plausible typo.
fn closest<'a>(name: &str, candidates: &[&'a str]) -> Option<&'a str> {
    let limit = (name.chars().count() / 3).max(1);
    candidates.iter().map(|c| (edit_distance(name, c), *c)).filter(|(d, _)| *d <= limit).min().map(|(_, c)| c)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            cur[j + 1] = (prev[j] + usize::from(ca != *cb)).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

fn stmt_span(s: &Stmt) -> Span {
    match s {
        Stmt::Let { span, .. } | Stmt::Param { span, .. } | Stmt::If { span, .. } | Stmt::For { span, .. } | Stmt::Return { span, .. } | Stmt::Yield { span, .. } => *span,
        Stmt::Expr(e) => e.span,
    }
}
