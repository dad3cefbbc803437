//! A stable, readable text form of the syntax tree: what `d2l ir --stage
//! parsed` prints and what the parser's snapshot tests record.
//!
//! Every node appears; spans do not. Each line is a node tag and its payload,
//! children indented two spaces under it:
//!
//! ```text
//! model lenet(x: f32[B, 1, 28, 28]) -> f32[B, 10]
//!   let x =
//!     pipe
//!       call conv2d(x, 6, kernel=5, padding=2)
//!       name sigmoid
//! ```
//!
//! An expression made only of names, literals, calls, tuples, indexing,
//! fields and simple ranges has no precedence to show, so it is written
//! inline in source syntax after its tag (`call conv2d(x, 6, kernel=5)`);
//! anything with an operator is written as a tree. Tuples are always
//! written with parentheses (`[a, b]` parses to the same node as `(a, b)`),
//! and floats always carry a `.` or an exponent so they differ from ints.

use std::fmt::Write as _;

use crate::ast::{
    Arg, DimPat, Expr, ExprKind, FuncDef, Ident, IndexItem, Item, Module, RetType, Stmt, TrainDef, TypeExpr, UnOp,
};

/// Inline forms longer than this are written as trees instead.
const MAX_INLINE: usize = 72;

/// The text form of a whole module; items are separated by blank lines.
pub fn module(m: &Module) -> String {
    let mut printer = Printer { out: String::new() };
    for (i, item) in m.items.iter().enumerate() {
        if i > 0 {
            printer.out.push('\n');
        }
        printer.item(item);
    }
    printer.out
}

/// The text form of one expression, as it appears under a statement.
pub fn expr(e: &Expr) -> String {
    let mut printer = Printer { out: String::new() };
    printer.expr(0, "", e);
    printer.out
}

struct Printer {
    out: String,
}

impl Printer {
    fn line(&mut self, depth: usize, text: &str) {
        for _ in 0..depth {
            self.out.push_str("  ");
        }
        self.out.push_str(text);
        self.out.push('\n');
    }

    fn item(&mut self, item: &Item) {
        match item {
            Item::Use { path, .. } => self.line(0, &format!("use {}", quote(path))),
            Item::Model(def) => self.func_def("model", def),
            Item::Block(def) => self.func_def("block", def),
            Item::Train(def) => self.train_def(def),
        }
    }

    fn func_def(&mut self, keyword: &str, def: &FuncDef) {
        let params: Vec<String> = def
            .params
            .iter()
            .map(|p| {
                let mut s = p.name.name.clone();
                if let Some(ty) = &p.ty {
                    let _ = write!(s, ": {}", type_expr(ty));
                }
                if let Some(default) = &p.default {
                    let _ = write!(s, " = {}", source(default));
                }
                s
            })
            .collect();
        let mut header = format!("{keyword} {}({})", def.name.name, params.join(", "));
        if !def.ret.is_empty() {
            let _ = write!(header, " -> {}", ret_types(&def.ret));
        }
        self.line(0, &header);
        self.stmts(1, &def.body);
    }

    fn train_def(&mut self, def: &TrainDef) {
        self.line(0, &format!("train {}", def.model.name));
        for setting in &def.settings {
            self.expr(1, &format!("{} = ", setting.key.name), &setting.value);
        }
    }

    fn stmts(&mut self, depth: usize, stmts: &[Stmt]) {
        for stmt in stmts {
            self.stmt(depth, stmt);
        }
    }

    /// A labelled block of statements (`then`, `do`), marked when empty so
    /// that an empty block is visible.
    fn block(&mut self, depth: usize, label: &str, stmts: &[Stmt]) {
        if stmts.is_empty() {
            self.line(depth, &format!("{label} (empty)"));
        } else {
            self.line(depth, label);
            self.stmts(depth + 1, stmts);
        }
    }

    fn stmt(&mut self, depth: usize, stmt: &Stmt) {
        match stmt {
            Stmt::Let { targets, value, .. } => {
                let names: Vec<&str> = targets.iter().map(|t| t.name.as_str()).collect();
                self.expr(depth, &format!("let {} = ", names.join(", ")), value);
            }
            Stmt::Param { kind, name, ty, init, .. } => {
                let header = format!("{} {}: {}", kind.keyword(), name.name, type_expr(ty));
                match init {
                    Some(init) => self.expr(depth, &format!("{header} = "), init),
                    None => self.line(depth, &header),
                }
            }
            Stmt::If { cond, then_body, else_body, .. } => {
                self.line(depth, "if");
                self.expr(depth + 1, "cond ", cond);
                self.block(depth + 1, "then", then_body);
                if let Some(else_body) = else_body {
                    self.block(depth + 1, "else", else_body);
                }
            }
            Stmt::For { vars, iter, body, .. } => self.for_loop(depth, "", vars, iter, body),
            Stmt::Return { value, .. } => self.expr(depth, "return ", value),
            Stmt::Yield { value, .. } => self.expr(depth, "yield ", value),
            Stmt::Expr(value) => self.expr(depth, "expr ", value),
        }
    }

    fn for_loop(&mut self, depth: usize, prefix: &str, vars: &[Ident], iter: &Expr, body: &[Stmt]) {
        self.line(depth, &format!("{prefix}for {}", loop_vars(vars)));
        self.expr(depth + 1, "in ", iter);
        self.block(depth + 1, "do", body);
    }

    /// Writes `e` at `depth`, after `prefix` (`let x = `, `return `, ...): on
    /// the prefix's line when it has an inline form, else as a tree below it.
    fn expr(&mut self, depth: usize, prefix: &str, e: &Expr) {
        if let Some(text) = inline(e) {
            self.line(depth, &format!("{prefix}{} {text}", tag(e)));
            return;
        }
        let trimmed = prefix.trim_end();
        let (head_depth, child_depth) = if trimmed.is_empty() {
            (depth, depth + 1)
        } else {
            self.line(depth, trimmed);
            (depth + 1, depth + 2)
        };
        match &e.kind {
            ExprKind::Tuple(elements) => {
                self.line(head_depth, "tuple");
                for element in elements {
                    self.expr(child_depth, "", element);
                }
            }
            ExprKind::Unary { op, expr } => {
                self.line(head_depth, unary_name(*op));
                self.expr(child_depth, "", expr);
            }
            ExprKind::Binary { op, lhs, rhs } => {
                self.line(head_depth, &format!("binary {}", op.symbol()));
                self.expr(child_depth, "", lhs);
                self.expr(child_depth, "", rhs);
            }
            ExprKind::Pipe { lhs, rhs } => {
                self.line(head_depth, "pipe");
                self.expr(child_depth, "", lhs);
                self.expr(child_depth, "", rhs);
            }
            ExprKind::Call { callee, args } => {
                self.line(head_depth, &format!("call {}", callee.name));
                for Arg { name, value } in args {
                    match name {
                        Some(name) => self.expr(child_depth, &format!("{} = ", name.name), value),
                        None => self.expr(child_depth, "", value),
                    }
                }
            }
            ExprKind::Index { base, items } => {
                self.line(head_depth, "index");
                self.expr(child_depth, "", base);
                for item in items {
                    match item {
                        IndexItem::At(at) => self.expr(child_depth, "at ", at),
                        IndexItem::Range { start, end, step } => {
                            self.line(child_depth, "slice");
                            for (label, part) in [("start ", start), ("end ", end), ("step ", step)] {
                                if let Some(part) = part {
                                    self.expr(child_depth + 1, label, part);
                                }
                            }
                        }
                    }
                }
            }
            ExprKind::Field { base, name } => {
                self.line(head_depth, &format!("field .{}", name.name));
                self.expr(child_depth, "", base);
            }
            ExprKind::Range { start, end } => {
                self.line(head_depth, "range");
                self.expr(child_depth, "", start);
                self.expr(child_depth, "", end);
            }
            ExprKind::For { vars, iter, body } => self.for_loop(head_depth, "", vars, iter, body),
            // Leaves always have an inline form; written again here only so
            // the match is total.
            ExprKind::Int(_) | ExprKind::Float(_) | ExprKind::Bool(_) | ExprKind::Str(_) | ExprKind::Name(_) => {
                self.line(head_depth, &format!("{} {}", tag(e), source(e)));
            }
        }
    }
}

/// The node kind shown before an inline form.
fn tag(e: &Expr) -> &'static str {
    match &e.kind {
        ExprKind::Int(_) => "int",
        ExprKind::Float(_) => "float",
        ExprKind::Bool(_) => "bool",
        ExprKind::Str(_) => "str",
        ExprKind::Name(_) => "name",
        ExprKind::Tuple(_) => "tuple",
        ExprKind::Unary { op, .. } => unary_name(*op),
        ExprKind::Binary { .. } => "binary",
        ExprKind::Pipe { .. } => "pipe",
        ExprKind::Call { .. } => "call",
        ExprKind::Index { .. } => "index",
        ExprKind::Field { .. } => "field",
        ExprKind::Range { .. } => "range",
        ExprKind::For { .. } => "for",
    }
}

/// The source form of `e` if it needs no tree: no operators (a range of two
/// simple operands is allowed) and short enough to read on one line.
fn inline(e: &Expr) -> Option<String> {
    fn simple(e: &Expr) -> bool {
        match &e.kind {
            ExprKind::Int(_) | ExprKind::Float(_) | ExprKind::Bool(_) | ExprKind::Str(_) | ExprKind::Name(_) => true,
            ExprKind::Tuple(elements) => elements.iter().all(simple),
            ExprKind::Call { args, .. } => args.iter().all(|a| simple(&a.value)),
            ExprKind::Index { base, items } => {
                simple(base)
                    && items.iter().all(|item| match item {
                        IndexItem::At(at) => simple(at),
                        IndexItem::Range { start, end, step } => [start, end, step].into_iter().flatten().all(simple),
                    })
            }
            ExprKind::Field { base, .. } => simple(base),
            ExprKind::Unary { .. } | ExprKind::Binary { .. } | ExprKind::Pipe { .. } | ExprKind::For { .. } => false,
            ExprKind::Range { .. } => false,
        }
    }
    let text = match &e.kind {
        ExprKind::Range { start, end } if simple(start) && simple(end) => format!("{}..{}", source(start), source(end)),
        _ if simple(e) => source(e),
        _ => return None,
    };
    (text.len() <= MAX_INLINE).then_some(text)
}

/// Source syntax for any expression, with every operator parenthesised so
/// the tree is unambiguous. Used inline and for parameter defaults.
pub fn source(e: &Expr) -> String {
    match &e.kind {
        ExprKind::Int(n) => n.to_string(),
        ExprKind::Float(x) => float(*x),
        ExprKind::Bool(b) => b.to_string(),
        ExprKind::Str(s) => quote(s),
        ExprKind::Name(name) => name.clone(),
        ExprKind::Tuple(elements) => match elements.as_slice() {
            [one] => format!("({},)", source(one)),
            _ => format!("({})", elements.iter().map(source).collect::<Vec<_>>().join(", ")),
        },
        ExprKind::Unary { op: UnOp::Neg, expr } => format!("(-{})", source(expr)),
        ExprKind::Unary { op: UnOp::Not, expr } => format!("(not {})", source(expr)),
        ExprKind::Binary { op, lhs, rhs } => format!("({} {} {})", source(lhs), op.symbol(), source(rhs)),
        ExprKind::Pipe { lhs, rhs } => format!("({} |> {})", source(lhs), source(rhs)),
        ExprKind::Call { callee, args } => {
            let args: Vec<String> = args
                .iter()
                .map(|a| match &a.name {
                    Some(name) => format!("{}={}", name.name, source(&a.value)),
                    None => source(&a.value),
                })
                .collect();
            format!("{}({})", callee.name, args.join(", "))
        }
        ExprKind::Index { base, items } => {
            let items: Vec<String> = items
                .iter()
                .map(|item| match item {
                    IndexItem::At(at) => source(at),
                    IndexItem::Range { start, end, step } => {
                        let part = |p: &Option<Expr>| p.as_ref().map(source).unwrap_or_default();
                        match step {
                            Some(step) => format!("{}:{}:{}", part(start), part(end), source(step)),
                            None => format!("{}:{}", part(start), part(end)),
                        }
                    }
                })
                .collect();
            format!("{}[{}]", source(base), items.join(", "))
        }
        ExprKind::Field { base, name } => format!("{}.{}", source(base), name.name),
        ExprKind::Range { start, end } => format!("({}..{})", source(start), source(end)),
        ExprKind::For { vars, iter, body } => {
            let body: Vec<String> = body.iter().map(stmt_source).collect();
            format!("(for {} in {} {{ {} }})", loop_vars(vars), source(iter), body.join("; "))
        }
    }
}

fn stmt_source(stmt: &Stmt) -> String {
    let block = |stmts: &[Stmt]| format!("{{ {} }}", stmts.iter().map(stmt_source).collect::<Vec<_>>().join("; "));
    match stmt {
        Stmt::Let { targets, value, .. } => {
            let names: Vec<&str> = targets.iter().map(|t| t.name.as_str()).collect();
            format!("{} = {}", names.join(", "), source(value))
        }
        Stmt::Param { kind, name, ty, init: Some(init), .. } => format!("{} {}: {} = {}", kind.keyword(), name.name, type_expr(ty), source(init)),
        Stmt::Param { kind, name, ty, init: None, .. } => format!("{} {}: {}", kind.keyword(), name.name, type_expr(ty)),
        Stmt::If { cond, then_body, else_body, .. } => {
            let mut s = format!("if {} {}", source(cond), block(then_body));
            if let Some(else_body) = else_body {
                let _ = write!(s, " else {}", block(else_body));
            }
            s
        }
        Stmt::For { vars, iter, body, .. } => format!("for {} in {} {}", loop_vars(vars), source(iter), block(body)),
        Stmt::Return { value, .. } => format!("return {}", source(value)),
        Stmt::Yield { value, .. } => format!("yield {}", source(value)),
        Stmt::Expr(value) => source(value),
    }
}

fn loop_vars(vars: &[Ident]) -> String {
    match vars {
        [one] => one.name.clone(),
        _ => format!("({})", vars.iter().map(|v| v.name.as_str()).collect::<Vec<_>>().join(", ")),
    }
}

fn type_expr(ty: &TypeExpr) -> String {
    match ty {
        TypeExpr::Scalar { kind, .. } => kind.name.clone(),
        TypeExpr::Tensor { dtype, dims, .. } => {
            let dims: Vec<String> = dims
                .iter()
                .map(|d| match d {
                    DimPat::Lit(n, _) => n.to_string(),
                    DimPat::Name(name) => name.name.clone(),
                    DimPat::Ellipsis(_) => "...".to_string(),
                })
                .collect();
            format!("{}[{}]", dtype.name, dims.join(", "))
        }
    }
}

fn ret_types(rets: &[RetType]) -> String {
    let one = |r: &RetType| match &r.name {
        Some(name) => format!("{}: {}", name.name, type_expr(&r.ty)),
        None => type_expr(&r.ty),
    };
    match rets {
        [single] if single.name.is_none() => one(single),
        _ => format!("({})", rets.iter().map(one).collect::<Vec<_>>().join(", ")),
    }
}

fn unary_name(op: UnOp) -> &'static str {
    match op {
        UnOp::Neg => "neg",
        UnOp::Not => "not",
    }
}

/// Shortest text that reads back as the same `f64`; always with a `.` or an
/// exponent, so a float never prints like an int.
fn float(x: f64) -> String {
    let s = format!("{x:?}");
    if s.contains(['.', 'e', 'E']) || !x.is_finite() { s } else { format!("{s}.0") }
}

/// A string literal with the language's escapes.
fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}
