//! Parser tests. Printed syntax trees and rendered diagnostics are insta
//! snapshots under `snapshots/` (read every one that changes); properties
//! check that `parse` never panics, is deterministic, and keeps spans inside
//! the text and on character boundaries.

use d2l_dsl::ast::{DimPat, Expr, ExprKind, FuncDef, IndexItem, Item, Module, Span, Stmt, TypeExpr};
use d2l_dsl::{SourceMap, parse, print};
use proptest::prelude::*;
use proptest::test_runner::FileFailurePersistence;

/// The printed tree of a program that must parse.
fn tree(src: &str) -> String {
    let mut sources = SourceMap::new();
    let file = sources.add("test.d2l", src);
    match parse(file, src) {
        Ok(module) => print::module(&module),
        Err(diagnostic) => panic!("expected a successful parse:\n{}", diagnostic.render(&sources)),
    }
}

/// The rendered diagnostic of a program that must not parse.
fn error(src: &str) -> String {
    let mut sources = SourceMap::new();
    let file = sources.add("test.d2l", src);
    match parse(file, src) {
        Ok(module) => panic!("expected a syntax error, got:\n{}", print::module(&module)),
        Err(diagnostic) => diagnostic.render(&sources),
    }
}

// ---- programs ------------------------------------------------------------------

const LENET: &str = r#"# LeNet-5 (course §23)
model lenet(x: f32[B, 1, 28, 28]) -> f32[B, 10] {
    x = conv2d(x, 6, kernel=5, padding=2) |> sigmoid
    x = avg_pool2d(x, 2, stride=2)
    x = conv2d(x, 16, kernel=5) |> sigmoid
    x = avg_pool2d(x, 2, stride=2)
    x = flatten(x)
    x = linear(x, 120) |> sigmoid
    x = linear(x, 84) |> sigmoid
    return linear(x, 10)
}

train lenet {
    data      = fashion_mnist(batch=256)
    loss      = cross_entropy
    optimizer = sgd(lr=0.9)
    init      = xavier_uniform
    epochs    = 10
}
"#;

/// Every construct of the language at least once.
const CONSTRUCTS: &str = r#"# comment to end of line
use "layers/extra.d2l"

model lenet(x: f32[B, 1, 28, 28]) -> f32[B, 10] {
    x = conv2d(x, 6, kernel=5, padding=2) |> sigmoid
    x = avg_pool2d(x, 2, stride=2)
    x = flatten(x)
    return linear(x, 10)
}
model bert(tokens: i64[B, T], segments: i64[B, T]) -> (mlm: f32[B, T, V], nsp: f32[B, 2]) {
    return (mlm_head(tokens), nsp_head(segments))
}

block residual(x, channels: int, use_1x1: bool = false, stride: int = 1) {
    y = conv2d(x, channels, kernel=3, padding=1, stride=stride) |> batch_norm |> relu
    if use_1x1 { x = conv2d(x, channels, kernel=1, stride=stride) } else if stride > 1 { x = x } else { }
    return relu(y + x)
}
block linear(x: f32[..., I], out: int, bias: bool = true) {
    param W: f32[I, out] = uniform(-1.0 / sqrt(I), 1.0 / sqrt(I))
    param b: f32[out]
    h, c = lstm_cell(x, h, c)
    for (i, (c, n)) in enumerate(arch) { x = vgg_block(x, c, n) }
    for i in 0..n { x = f(x) }
    hs = for t in 0..T { h = tanh(xs[t] @ W_xh + h @ W_hh + b_h); yield h }
    y = x[:, 0:2, ::2, 1:] ; z = x.shape[0]; w = -x ** 2; q = not a and b or c
    t = (1, 2); u = [B, hidden]; e = (); one = (1,)
    return for t in 0..T { yield h }
}

train lenet {
    data      = fashion_mnist(batch=256)
    loss      = cross_entropy
    optimizer = sgd(lr=0.9)
    init      = xavier_uniform
    epochs    = 10
    metrics   = [accuracy]
}
"#;

/// Precedence, associativity, literals, slices and layout corner cases.
const EXPRESSIONS: &str = r#"
block exprs(x, n: int = 2 * 3, shape: tuple = (1, 2,), s: float = -1e-5,) -> (f32[B], i64[...]) {
    a = -x ** 2 + 2 ** -1 ** 2          # -(x**2) + 2 ** (-(1**2))
    b = not not a == b and c or d       # ((not (not (a == b))) and c) or d
    c = a - -b * c @ d % e / f          # a - ((((-b) * c) @ d) % e) / f
    d = a - b - c + d                   # ((a - b) - c) + d
    e = 0..n + 1                        # 0..(n + 1)
    f = x
        |> f(1, scale=0.5,)
        |> g
    g = (a + b) * c; h = ((a))
    i = x[i, j:, :k, ::2, a:b:c, :, ]
    j = x.shape[-1].size
    k = "quote \" backslash \\ newline \n tab \t"
    l = [0.01, 1e5, 2.5E+3, 3.0, 0, true, false]
    m = f(for i in 0..3 { yield i * 2 }, axis=0)
    n = a != b; o = a <= b; p = a >= b; q = a < b; r = a > b
    f(x)
    ;;
    return a
}
"#;

const FROM_SCRATCH: &str = r#"
model softmax_regression(x: f32[B, 784]) -> f32[B, 10] {
    param W: f32[784, 10] = normal(0, 0.01)
    param b: f32[10] = zeros
    return x @ W + b
}

block rnn(xs: f32[T, B, I], hidden: int) {
    param W_xh: f32[I, hidden] = normal(0, 0.01)
    param W_hh: f32[hidden, hidden] = normal(0, 0.01)
    param b_h: f32[hidden] = zeros
    h = zeros([B, hidden])
    return for t in 0..T { h = tanh(xs[t] @ W_xh + h @ W_hh + b_h); yield h }
}
"#;

#[test]
fn lenet() {
    insta::assert_snapshot!(tree(LENET));
}

#[test]
fn constructs() {
    insta::assert_snapshot!(tree(CONSTRUCTS));
}

#[test]
fn expressions() {
    insta::assert_snapshot!(tree(EXPRESSIONS));
}

#[test]
fn from_scratch() {
    insta::assert_snapshot!(tree(FROM_SCRATCH));
}

#[test]
fn empty_files_are_empty_modules() {
    for src in ["", "   \n\t\r\n", "# only a comment", "# one\n# two\n"] {
        assert_eq!(parse(0, src), Ok(Module { items: vec![] }), "{src:?}");
    }
}

fn only_def(module: &Module) -> &FuncDef {
    match module.items.as_slice() {
        [Item::Model(def) | Item::Block(def)] => def,
        other => panic!("expected one definition, got {other:?}"),
    }
}

fn text(src: &str, span: Span) -> &str {
    &src[span.lo as usize..span.hi as usize]
}

#[test]
fn spans_cover_their_text() {
    let src = "block f(x: f32[B], k: int = 3) {\n    y = (x + 1) * 2 |> relu\n    return y[0]\n}\n";
    let module = parse(7, src).unwrap();
    let def = only_def(&module);
    assert_eq!(text(src, def.span), src.trim_end());
    assert_eq!(text(src, def.params[1].span), "k: int = 3");
    let Stmt::Let { value, span, .. } = &def.body[0] else { panic!("expected a let") };
    assert_eq!(span.file, 7);
    assert_eq!(text(src, *span), "y = (x + 1) * 2 |> relu");
    // The pipe covers lhs..rhs; the group keeps its parentheses.
    assert_eq!(text(src, value.span), "(x + 1) * 2 |> relu");
    let ExprKind::Pipe { lhs, rhs } = &value.kind else { panic!("expected a pipe") };
    assert_eq!(text(src, lhs.span), "(x + 1) * 2");
    assert_eq!(text(src, rhs.span), "relu");
    let ExprKind::Binary { lhs: group, .. } = &lhs.kind else { panic!("expected a product") };
    assert_eq!(text(src, group.span), "(x + 1)");
    let Stmt::Return { value, span } = &def.body[1] else { panic!("expected a return") };
    assert_eq!(text(src, *span), "return y[0]");
    assert_eq!(text(src, value.span), "y[0]");
    let Some(TypeExpr::Tensor { dims, span, .. }) = &def.params[0].ty else { panic!("expected a tensor type") };
    assert_eq!(text(src, *span), "f32[B]");
    assert!(matches!(&dims[..], [DimPat::Name(b)] if b.name == "B"));
}

#[test]
fn else_if_nests_in_else() {
    let src = "block f(a) { if a { x = 1 } else if b { x = 2 } else { x = 3 } }";
    let module = parse(0, src).unwrap();
    let Stmt::If { else_body: Some(else_body), span, .. } = &only_def(&module).body[0] else { panic!("expected an if") };
    assert_eq!(text(src, *span), "if a { x = 1 } else if b { x = 2 } else { x = 3 }");
    let [Stmt::If { span, else_body: Some(last), .. }] = else_body.as_slice() else { panic!("expected a nested if") };
    assert_eq!(text(src, *span), "if b { x = 2 } else { x = 3 }");
    assert_eq!(last.len(), 1);
}

#[test]
fn slices() {
    let src = "block f(x) { return x[1, 2:, :3, ::4, 5:6:7, :] }";
    let module = parse(0, src).unwrap();
    let Stmt::Return { value, .. } = &only_def(&module).body[0] else { panic!("expected a return") };
    let ExprKind::Index { items, .. } = &value.kind else { panic!("expected an index") };
    let shape: Vec<String> = items
        .iter()
        .map(|item| match item {
            IndexItem::At(_) => "at".to_string(),
            IndexItem::Range { start, end, step } => {
                format!("{}{}{}", start.is_some() as u8, end.is_some() as u8, step.is_some() as u8)
            }
        })
        .collect();
    assert_eq!(shape, ["at", "100", "010", "001", "111", "000"]);
}

// ---- errors ------------------------------------------------------------------

#[test]
fn error_missing_close_paren() {
    insta::assert_snapshot!(error("model m(x) {\n    x = conv2d(x, 6\n    y = relu(x)\n}\n"));
}

#[test]
fn error_missing_close_brace() {
    insta::assert_snapshot!(error("model m(x) {\n    x = relu(x)\n\n# the end\n"));
}

#[test]
fn error_mismatched_bracket() {
    insta::assert_snapshot!(error("model m(x) { y = [1, 2) }"));
}

#[test]
fn error_stray_closer() {
    insta::assert_snapshot!(error("model m(x) { return x }\n)\n"));
}

#[test]
fn error_bad_exponent() {
    insta::assert_snapshot!(error("model m(x) { y = x * 1e }"));
}

#[test]
fn error_trailing_dot() {
    insta::assert_snapshot!(error("model m(x) { y = 3. }"));
}

#[test]
fn error_letters_after_number() {
    insta::assert_snapshot!(error("model m(x) { y = 12abc }"));
}

#[test]
fn error_integer_too_large() {
    insta::assert_snapshot!(error("model m(x) { y = 99999999999999999999 }"));
}

#[test]
fn error_unterminated_string() {
    insta::assert_snapshot!(error("use \"layers/extra.d2l\nmodel m(x) { }"));
}

#[test]
fn error_unknown_escape() {
    insta::assert_snapshot!(error(r#"use "layers\extra.d2l""#));
}

#[test]
fn error_keyword_as_definition_name() {
    insta::assert_snapshot!(error("model for(x) { }"));
}

#[test]
fn error_keyword_as_variable() {
    insta::assert_snapshot!(error("model m(x) {\n    in = 3\n}"));
}

#[test]
fn error_positional_after_keyword() {
    insta::assert_snapshot!(error("model m(x) { y = conv2d(x, kernel=3, 5) }"));
}

#[test]
fn error_missing_comma() {
    insta::assert_snapshot!(error("model m(x) { y = f(a b) }"));
}

#[test]
fn error_setting_without_equals() {
    insta::assert_snapshot!(error("train lenet {\n    epochs 10\n}"));
}

#[test]
fn error_top_level_statement() {
    insta::assert_snapshot!(error("x = 3"));
}

#[test]
fn error_missing_operand() {
    insta::assert_snapshot!(error("model m(x) { y = x + }"));
}

#[test]
fn error_chained_comparison() {
    insta::assert_snapshot!(error("model m(x) { y = a < b < c }"));
}

#[test]
fn error_not_inside_comparison() {
    insta::assert_snapshot!(error("model m(x) { y = a == not b }"));
}

#[test]
fn error_pipe_into_literal() {
    insta::assert_snapshot!(error("model m(x) { y = x |> 3 }"));
}

#[test]
fn error_assign_to_index() {
    insta::assert_snapshot!(error("model m(x) { x[0] = 1 }"));
}

#[test]
fn error_tensor_type_without_dims() {
    insta::assert_snapshot!(error("model m(x: f32) -> f32[B] { }"));
}

#[test]
fn error_unexpected_character() {
    insta::assert_snapshot!(error("model m(x) { y = !x }"));
}

#[test]
fn error_empty_index() {
    insta::assert_snapshot!(error("model m(x) { y = x[] }"));
}

#[test]
fn error_missing_else_body() {
    insta::assert_snapshot!(error("model m(x) { if x { } else }"));
}

#[test]
fn error_missing_body() {
    insta::assert_snapshot!(error("model m(x) y = 3"));
}

#[test]
fn error_too_deep() {
    // One bracket per line, so the snapshot shows just the offending one.
    insta::assert_snapshot!(error(&format!("model m(x) {{\n y = {}x{} }}", "(\n".repeat(300), ")".repeat(300))));
}

/// Inputs that would nest the parser, the builder, the printer or a later
/// pass 10,000 levels deep are refused with a diagnostic instead.
#[test]
fn deep_nesting_is_an_error_not_a_stack_overflow() {
    let n = 10_000;
    let cases = [
        "(".repeat(n),
        "[".repeat(n),
        "{".repeat(n),
        "([{".repeat(n),
        format!("model m(x) {{ y = {}x{} }}", "(".repeat(n), ")".repeat(n)),
        format!("model m(x) {{ y = {}x{} }}", "f(".repeat(n), ")".repeat(n)),
        format!("model m(x) {{ y = {}x }}", "-".repeat(n)),
        format!("model m(x) {{ y = {}x }}", "not ".repeat(n)),
        format!("model m(x) {{ y = x{} }}", " + x".repeat(n)),
        format!("model m(x) {{ y = x{} }}", " ** x".repeat(n)),
        format!("model m(x) {{ y = x{} }}", " |> f".repeat(n)),
        format!("model m(x) {{ y = x{} }}", "[0]".repeat(n)),
        format!("model m(x) {{ y = x{} }}", ".a".repeat(n)),
        format!("model m(x) {{ if a {{ }} {} }}", "else if a { } ".repeat(n)),
    ];
    for src in &cases {
        let diagnostic = parse(0, src).expect_err("nesting this deep must be refused");
        assert!(diagnostic.message.contains("nested too deeply"), "{}: {}", &src[..40], diagnostic.message);
    }
}

#[test]
fn moderate_nesting_is_fine() {
    let n = 200;
    for src in [
        format!("model m(x) {{ y = {}x{} }}", "(".repeat(n), ")".repeat(n)),
        format!("model m(x) {{ y = {}x{} }}", "f(".repeat(n), ")".repeat(n)),
        format!("model m(x) {{ y = {}x{} }}", "x[".repeat(n), "]".repeat(n)),
        format!("model m(x) {{ {} }}", "for i in x { ".repeat(n) + &"}".repeat(n)),
        format!("model m(x) {{ y = x{} }}", " + x".repeat(n)),
    ] {
        if let Err(diagnostic) = parse(0, &src) {
            panic!("{}: {}", &src[..40], diagnostic.message);
        }
    }
}

// ---- properties ----------------------------------------------------------------

/// Every span in a module, each paired with the span of its parent (or
/// `None` at the top), to check containment.
fn spans(module: &Module) -> Vec<(Span, Option<Span>)> {
    fn expr(e: &Expr, parent: Option<Span>, out: &mut Vec<(Span, Option<Span>)>) {
        out.push((e.span, parent));
        let me = Some(e.span);
        match &e.kind {
            ExprKind::Int(_) | ExprKind::Float(_) | ExprKind::Bool(_) | ExprKind::Str(_) | ExprKind::Name(_) => {}
            ExprKind::Tuple(elements) => elements.iter().for_each(|x| expr(x, me, out)),
            ExprKind::Unary { expr: operand, .. } => expr(operand, me, out),
            ExprKind::Binary { lhs, rhs, .. } | ExprKind::Pipe { lhs, rhs } | ExprKind::Range { start: lhs, end: rhs } => {
                expr(lhs, me, out);
                expr(rhs, me, out);
            }
            ExprKind::Call { callee, args } => {
                out.push((callee.span, me));
                for arg in args {
                    if let Some(name) = &arg.name {
                        out.push((name.span, me));
                    }
                    expr(&arg.value, me, out);
                }
            }
            ExprKind::Index { base, items } => {
                expr(base, me, out);
                for item in items {
                    match item {
                        IndexItem::At(at) => expr(at, me, out),
                        IndexItem::Range { start, end, step } => {
                            [start, end, step].into_iter().flatten().for_each(|x| expr(x, me, out))
                        }
                    }
                }
            }
            ExprKind::Field { base, name } => {
                expr(base, me, out);
                out.push((name.span, me));
            }
            ExprKind::For { vars, iter, body } => {
                vars.iter().for_each(|v| out.push((v.span, me)));
                expr(iter, me, out);
                body.iter().for_each(|s| stmt(s, me, out));
            }
        }
    }
    fn ty(t: &TypeExpr, parent: Option<Span>, out: &mut Vec<(Span, Option<Span>)>) {
        match t {
            TypeExpr::Scalar { kind, span } => {
                out.push((*span, parent));
                out.push((kind.span, Some(*span)));
            }
            TypeExpr::Tensor { dtype, dims, span } => {
                out.push((*span, parent));
                out.push((dtype.span, Some(*span)));
                for dim in dims {
                    let dim_span = match dim {
                        DimPat::Lit(_, s) | DimPat::Ellipsis(s) => *s,
                        DimPat::Name(name) => name.span,
                    };
                    out.push((dim_span, Some(*span)));
                }
            }
        }
    }
    fn stmt(s: &Stmt, parent: Option<Span>, out: &mut Vec<(Span, Option<Span>)>) {
        match s {
            Stmt::Let { targets, value, span } => {
                out.push((*span, parent));
                targets.iter().for_each(|t| out.push((t.span, Some(*span))));
                expr(value, Some(*span), out);
            }
            Stmt::Param { name, ty: t, init, span, .. } => {
                out.push((*span, parent));
                out.push((name.span, Some(*span)));
                ty(t, Some(*span), out);
                init.iter().for_each(|x| expr(x, Some(*span), out));
            }
            Stmt::If { cond, then_body, else_body, span } => {
                out.push((*span, parent));
                expr(cond, Some(*span), out);
                then_body.iter().chain(else_body.iter().flatten()).for_each(|x| stmt(x, Some(*span), out));
            }
            Stmt::For { vars, iter, body, span } => {
                out.push((*span, parent));
                vars.iter().for_each(|v| out.push((v.span, Some(*span))));
                expr(iter, Some(*span), out);
                body.iter().for_each(|x| stmt(x, Some(*span), out));
            }
            Stmt::Return { value, span } | Stmt::Yield { value, span } => {
                out.push((*span, parent));
                expr(value, Some(*span), out);
            }
            Stmt::Expr(value) => expr(value, parent, out),
        }
    }
    let mut out = Vec::new();
    for item in &module.items {
        match item {
            Item::Use { span, .. } => out.push((*span, None)),
            Item::Model(def) | Item::Block(def) => {
                let me = Some(def.span);
                out.push((def.span, None));
                out.push((def.name.span, me));
                for param in &def.params {
                    out.push((param.span, me));
                    out.push((param.name.span, Some(param.span)));
                    param.ty.iter().for_each(|t| ty(t, Some(param.span), &mut out));
                    param.default.iter().for_each(|x| expr(x, Some(param.span), &mut out));
                }
                for ret in &def.ret {
                    ret.name.iter().for_each(|n| out.push((n.span, me)));
                    ty(&ret.ty, me, &mut out);
                }
                def.body.iter().for_each(|s| stmt(s, me, &mut out));
            }
            Item::Train(def) => {
                let me = Some(def.span);
                out.push((def.span, None));
                out.push((def.model.span, me));
                for setting in &def.settings {
                    out.push((setting.key.span, me));
                    expr(&setting.value, me, &mut out);
                }
            }
        }
    }
    out
}

/// Parses `src` (file 3) and checks everything that must hold for any
/// input: no panic, the same answer twice, spans inside the text, on
/// character boundaries and inside their parent's, and no internal errors.
fn check_any_input(src: &str) -> Result<(), TestCaseError> {
    let first = parse(3, src);
    prop_assert_eq!(&first, &parse(3, src), "parsing is not deterministic");
    let in_text = |span: Span| {
        span.file == 3
            && span.lo <= span.hi
            && (span.hi as usize) <= src.len()
            && src.is_char_boundary(span.lo as usize)
            && src.is_char_boundary(span.hi as usize)
    };
    match &first {
        Ok(module) => {
            for (span, parent) in spans(module) {
                prop_assert!(in_text(span), "span {:?} outside {:?}", span, src);
                if let Some(parent) = parent {
                    prop_assert!(parent.lo <= span.lo && span.hi <= parent.hi, "span {:?} escapes {:?}", span, parent);
                }
            }
            // Printing must not panic either.
            print::module(module);
        }
        Err(diagnostic) => {
            prop_assert!(in_text(diagnostic.span), "error span {:?} outside the text", diagnostic.span);
            for (span, _) in &diagnostic.secondary {
                prop_assert!(in_text(*span), "secondary span {:?} outside the text", span);
            }
            prop_assert!(!diagnostic.message.contains("internal"), "{}", diagnostic.message);
            // Outside backticks (which quote the user's text) a message has
            // no grammar rule names.
            let prose: String = diagnostic.message.split('`').step_by(2).collect();
            for word in prose.split(|c: char| !(c.is_alphanumeric() || c == '_')) {
                let rule_like = word.contains('_')
                    || ["expr", "stmt", "ident", "lparen", "rparen", "Rule", "EOI", "atom", "infix", "prefix"].contains(&word);
                prop_assert!(!rule_like, "rule name in {:?}", diagnostic.message);
            }
            // Rendering must not panic: file 3 needs three files before it.
            let mut sources = SourceMap::new();
            for _ in 0..4 {
                sources.add("fuzz.d2l", src);
            }
            diagnostic.render(&sources);
        }
    }
    Ok(())
}

/// Fragments of the language, to build inputs that get deep into the grammar.
const FRAGMENTS: &[&str] = &[
    "model", "block", "train", "use", "param", "return", "yield", "if", "else", "for", "in", "and", "or", "not", "true",
    "false", "x", "f", "B", "f32", "int", "0", "1.5", "1e-5", "\"s\"", "(", ")", "[", "]", "{", "}", ",", ":", ";", "=",
    "==", "->", "|>", "+", "-", "*", "**", "/", "@", "<", "..", "...", ".", "\n", " ", "#c\n",
];

/// A byte position in `s`, moved back to a character boundary.
fn boundary(s: &str, at: usize) -> usize {
    let mut at = at % (s.len() + 1);
    while !s.is_char_boundary(at) {
        at -= 1;
    }
    at
}

#[derive(Clone, Debug)]
enum Mutation {
    Delete(usize, usize),
    Insert(usize, char),
    Duplicate(usize, usize),
}

fn mutate(src: &str, mutations: &[Mutation]) -> String {
    let mut s = src.to_string();
    for m in mutations {
        match *m {
            Mutation::Delete(at, len) => {
                let lo = boundary(&s, at);
                let hi = boundary(&s, lo + len % 8);
                s.replace_range(lo..hi.max(lo), "");
            }
            Mutation::Insert(at, c) => {
                let at = boundary(&s, at);
                s.insert(at, c);
            }
            Mutation::Duplicate(at, len) => {
                let lo = boundary(&s, at);
                let hi = boundary(&s, lo + len % 16).max(lo);
                let copy = s[lo..hi].to_string();
                s.insert_str(hi, &copy);
            }
        }
    }
    s
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let interesting = prop::sample::select(vec!['(', ')', '[', ']', '{', '}', ',', '=', '"', '\\', '.', '-', '#', '\n', 'é', 'e', '1']);
    prop_oneof![
        (any::<usize>(), any::<usize>()).prop_map(|(at, len)| Mutation::Delete(at, len)),
        (any::<usize>(), prop_oneof![interesting, any::<char>()]).prop_map(|(at, c)| Mutation::Insert(at, c)),
        (any::<usize>(), any::<usize>()).prop_map(|(at, len)| Mutation::Duplicate(at, len)),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 512,
        // Integration tests have no lib.rs for the default persistence to
        // find; keep failures next to this file instead.
        failure_persistence: Some(Box::new(FileFailurePersistence::WithSource("regressions"))),
        ..ProptestConfig::default()
    })]

    #[test]
    fn arbitrary_strings(src in any::<String>()) {
        check_any_input(&src)?;
    }

    #[test]
    fn arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        check_any_input(&String::from_utf8_lossy(&bytes))?;
    }

    #[test]
    fn fragment_soup(parts in prop::collection::vec(prop::sample::select(FRAGMENTS), 0..64)) {
        check_any_input(&parts.join(" "))?;
        check_any_input(&parts.concat())?;
    }

    #[test]
    fn mutated_programs(
        which in 0..4usize,
        mutations in prop::collection::vec(mutation(), 1..6),
    ) {
        let src = [LENET, CONSTRUCTS, EXPRESSIONS, FROM_SCRATCH][which];
        check_any_input(&mutate(src, &mutations))?;
    }
}

#[test]
fn valid_programs_pass_the_property_checks() {
    for src in [LENET, CONSTRUCTS, EXPRESSIONS, FROM_SCRATCH] {
        assert!(parse(3, src).is_ok());
        check_any_input(src).unwrap();
    }
}
