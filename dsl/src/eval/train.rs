//! Reading a `train` block: which data, loss, optimizer, initializer and
//! how many epochs. The data source and optimizer stay generic [`Spec`]s
//! (name + arguments + span) because the crates that know them (runtime,
//! passes) sit downstream; they report errors through [`Program::error_at`].

use std::collections::BTreeMap;

use d2l_ir::Init;

use super::{Error, Lowerer, Program, Result, Value, builtins, diag};
use crate::ast::{Expr, ExprKind, Span};
use crate::{Diagnostic, LowerOptions};

/// `name(arg, key=value)` as written in a train block, arguments evaluated.
#[derive(Clone, Debug, PartialEq)]
pub struct Spec {
    pub name: String,
    pub args: Vec<Value>,
    pub kwargs: BTreeMap<String, (Value, Span)>,
    pub span: Span,
}

impl Spec {
    /// A keyword argument as a number.
    pub fn number(&self, key: &str) -> Option<f64> {
        self.kwargs.get(key).and_then(|(v, _)| v.as_f64())
    }
}

#[derive(Clone, Debug)]
pub struct TrainConfig {
    pub model: String,
    pub data: Spec,
    /// The loss block's name.
    pub loss: String,
    pub optimizer: Spec,
    /// Replaces the declared initializer of every weight (rank >= 2 param).
    pub init: Option<Init>,
    pub epochs: usize,
    /// Train for this many optimizer steps instead of whole epochs (the
    /// course's `train_bert(num_steps)`): minibatches are drawn epoch after
    /// epoch until the count is reached.
    pub steps: Option<usize>,
    /// Metrics to report beside the loss (`metrics = [accuracy, log_rmse]`),
    /// with the span of each name for downstream checks.
    pub metrics: Vec<(String, Span)>,
    pub span: Span,
}

const KEYS: &[&str] = &["data", "loss", "optimizer", "init", "epochs", "steps", "metrics"];

impl Program {
    /// An error at `span` in this program's sources (for downstream checks of
    /// train settings, such as an unknown dataset).
    pub fn error_at(&self, span: Span, message: impl Into<String>) -> Error {
        self.error(Diagnostic::new(span, message))
    }

    /// The model's `train` block, checked and evaluated.
    pub fn train_config(&self, model: &str) -> std::result::Result<TrainConfig, Error> {
        let Some(def) = self.train_def(model) else {
            return Err(Error { rendered: format!("error: model `{model}` has no `train` block\n"), diagnostic: None });
        };
        self.read_train(def).map_err(|d| self.error(d))
    }

    fn read_train(&self, def: &crate::ast::TrainDef) -> Result<TrainConfig> {
        if !self.defs.get(&def.model.name).is_some_and(|d| d.is_model) {
            return Err(diag(def.model.span, format!("`train {}` names no model", def.model.name)).with_label("not a model in this program"));
        }
        let opts = LowerOptions::default();
        let mut lw = Lowerer::new(self, &opts);
        lw.frames.push(super::Frame::default());
        let mut found: BTreeMap<&str, (&Expr, Span)> = BTreeMap::new();
        for s in &def.settings {
            let key = s.key.name.as_str();
            if !KEYS.contains(&key) {
                let d = diag(s.key.span, format!("unknown train setting `{key}`")).with_label("not a setting").with_note(format!("settings are {}", KEYS.join(", ")));
                return Err(match super::closest(key, KEYS) {
                    Some(best) => d.with_note(format!("did you mean `{best}`?")),
                    None => d,
                });
            }
            if found.insert(key, (&s.value, s.key.span)).is_some() {
                return Err(diag(s.key.span, format!("`{key}` is set twice")));
            }
        }
        let need = |key: &str| found.get(key).map(|(e, _)| *e).ok_or_else(|| diag(def.span, format!("train block for `{}` has no `{key}` setting", def.model.name)).with_label(format!("needs `{key} = ...`")));
        let data = spec(&mut lw, need("data")?)?;
        let loss_expr = need("loss")?;
        let loss = spec(&mut lw, loss_expr)?;
        if !self.defs.contains_key(&loss.name) {
            return Err(lw.unknown_name(&loss.name, loss.span).with_note("the loss is a block taking (prediction, target), such as cross_entropy, mse or squared_loss"));
        }
        let optimizer = spec(&mut lw, need("optimizer")?)?;
        let init = match found.get("init") {
            None => None,
            Some((e, _)) => Some(match lw.eval(e)? {
                Value::Init(i) => i,
                Value::Func(f) => builtins::named_init(&f).ok_or_else(|| diag(e.span, format!("`{f}` is not an initializer")).with_note(builtins::INIT_HELP))?,
                other => return Err(diag(e.span, format!("expected an initializer, got {}", other.describe(&lw.graph))).with_note(builtins::INIT_HELP)),
            }),
        };
        let epochs = match found.get("epochs") {
            None => 1,
            Some((e, _)) => match lw.eval(e)? {
                Value::Int(n) if (1..=1_000_000).contains(&n) => n as usize,
                other => return Err(diag(e.span, format!("`epochs` must be a positive int, got {}", other.describe(&lw.graph)))),
            },
        };
        let steps = match found.get("steps") {
            None => None,
            Some((e, span)) => {
                if found.contains_key("epochs") {
                    return Err(diag(*span, "a train block sets `epochs` or `steps`, not both").with_note("`steps = N` trains N minibatches, however many epochs that takes"));
                }
                match lw.eval(e)? {
                    Value::Int(n) if (1..=100_000_000).contains(&n) => Some(n as usize),
                    other => return Err(diag(e.span, format!("`steps` must be a positive int, got {}", other.describe(&lw.graph)))),
                }
            }
        };
        let metrics = match found.get("metrics") {
            None => Vec::new(),
            Some((e, _)) => {
                let items = match &e.kind {
                    ExprKind::Tuple(items) => items.iter().collect(),
                    _ => vec![*e],
                };
                items
                    .into_iter()
                    .map(|m| match &m.kind {
                        ExprKind::Name(n) => Ok((n.clone(), m.span)),
                        _ => Err(diag(m.span, "a metric is a name, such as `accuracy` or `log_rmse`")),
                    })
                    .collect::<Result<_>>()?
            }
        };
        Ok(TrainConfig { model: def.model.name.clone(), data, loss: loss.name, optimizer, init, epochs, steps, metrics, span: def.span })
    }
}

/// Reads `name` or `name(args...)` without calling anything: the name is
/// interpreted downstream, the arguments are compile-time constants.
fn spec(lw: &mut Lowerer, e: &Expr) -> Result<Spec> {
    match &e.kind {
        ExprKind::Name(n) => Ok(Spec { name: n.clone(), args: Vec::new(), kwargs: BTreeMap::new(), span: e.span }),
        ExprKind::Call { callee, args } => {
            let mut spec = Spec { name: callee.name.clone(), args: Vec::new(), kwargs: BTreeMap::new(), span: e.span };
            for a in args {
                let v = lw.eval(&a.value)?;
                if matches!(v, Value::Tensor(_)) {
                    return Err(diag(a.value.span, "train settings take compile-time values, not tensors"));
                }
                match &a.name {
                    Some(k) => {
                        if spec.kwargs.insert(k.name.clone(), (v, a.value.span)).is_some() {
                            return Err(diag(k.span, format!("`{}` is given twice", k.name)));
                        }
                    }
                    None => spec.args.push(v),
                }
            }
            Ok(spec)
        }
        _ => Err(diag(e.span, "expected a name or a call such as `sgd(lr=0.1)`")),
    }
}
