//! `.d2l` text to an [`ast::Module`](crate::ast::Module), in three steps:
//!
//! 1. a token pre-scan ([`scan`]) that finds what pest reports badly (an
//!    unterminated string, `1e`, a stray character, unbalanced brackets) and
//!    rejects nesting deeper than [`MAX_NESTING`] *before* pest recurses;
//! 2. the pest grammar in `grammar.pest`;
//! 3. a builder from pest pairs to AST nodes, which also rejects what the
//!    grammar accepts only to explain better (chained comparisons, positional
//!    arguments after keyword ones, ...) and bounds the height of the tree, so
//!    later recursive passes cannot overflow the stack either.
//!
//! When pest fails, [`explain`] turns its "expected one of these rules" into
//! words a user knows ("expected `)` to close this call").

use pest::Parser as _;
use pest::error::{ErrorVariant, InputLocation};
use pest::iterators::{Pair, Pairs};

use crate::ast::{
    Arg, BinOp, DeclKind, DimPat, Expr, ExprKind, FileId, FuncDef, Ident, IndexItem, Item, Module, ParamDef, RetType, Setting, Span,
    Stmt, TrainDef, TypeExpr, UnOp,
};
use crate::diag::Diagnostic;

#[derive(pest_derive::Parser)]
#[grammar = "grammar.pest"]
struct Grammar;

/// The deepest bracket nesting, and the tallest syntax tree, that `parse`
/// accepts. Real models stay far below it; the bound keeps pest, the builder,
/// the printer and later recursive passes from overflowing the stack.
pub const MAX_NESTING: usize = 256;

type Result<T> = std::result::Result<T, Diagnostic>;

/// Stack for the parsing thread. pest and the builder recurse once per
/// nesting level, and an unoptimised build spends tens of KiB of stack on
/// each; this covers [`MAX_NESTING`] levels whatever stack the caller has
/// (test threads get 2 MiB). Only touched pages are ever committed.
const PARSE_STACK: usize = 256 << 20;

/// Parses one `.d2l` file. Spans in the result (and in the error) are byte
/// offsets into `text`, tagged with `file`.
pub fn parse(file: FileId, text: &str) -> Result<Module> {
    std::thread::scope(|scope| {
        let thread = std::thread::Builder::new()
            .name("d2l-parse".to_string())
            .stack_size(PARSE_STACK)
            .spawn_scoped(scope, || parse_here(file, text));
        match thread {
            Ok(handle) => handle.join().unwrap_or_else(|_| {
                Err(Diagnostic::new(Span { file, lo: 0, hi: 0 }, "internal parser error: the parser panicked")
                    .with_note("this is a bug in the d2l parser"))
            }),
            // No thread to be had: parse here; pest's own stack guard still
            // turns exhaustion into an error.
            Err(_) => parse_here(file, text),
        }
    })
}

fn parse_here(file: FileId, text: &str) -> Result<Module> {
    if u32::try_from(text.len()).is_err() {
        return Err(Diagnostic::new(Span { file, lo: 0, hi: 0 }, "this file is too large to compile (over 4 GiB)"));
    }
    let scan = scan(file, text)?;
    let mut pairs = match Grammar::parse(Rule::file, text) {
        Ok(pairs) => pairs,
        Err(error) => return Err(explain(file, text, &scan, error)),
    };
    // The grammar can read a few lexically bad texts another way (`3.x` as
    // field `x` of `3`); the pre-scan's verdict stands.
    if let Some((_, lexical)) = scan.lexical_error {
        return Err(lexical);
    }
    let builder = Builder { file, token_ends: scan.tokens.iter().map(|t| t.hi).collect() };
    match pairs.next() {
        Some(file_pair) => builder.module(file_pair),
        None => Err(builder.bug(Span { file, lo: 0, hi: 0 }, "no `file` pair")),
    }
}

// ---------------------------------------------------------------------------
// Pre-scan
// ---------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum TokenKind {
    Name,
    Keyword,
    Number,
    Str,
    Punct,
}

#[derive(Clone, Copy, Debug)]
struct Token {
    kind: TokenKind,
    lo: usize,
    hi: usize,
}

/// What the pre-scan learned, kept for explaining a pest error.
struct Scan {
    tokens: Vec<Token>,
    /// The first lexical error and its offset. It is reported only if pest
    /// fails at or after it: an earlier syntax error is the first problem.
    lexical_error: Option<(usize, Diagnostic)>,
    /// Offsets of openers that are never closed, and of closers that close
    /// nothing, from matching brackets on the token stream.
    unclosed: Vec<usize>,
    stray_closers: Vec<usize>,
}

const KEYWORDS: [&str; 17] = [
    "model", "block", "train", "use", "param", "buffer", "return", "yield", "if", "else", "for", "in", "and", "or", "not", "true",
    "false",
];

/// Multi-character operators, longest first so `...` wins over `..`.
const LONG_PUNCT: [&str; 9] = ["...", "..", "->", "|>", "**", "==", "!=", "<=", ">="];
const SHORT_PUNCT: &str = "+-*/%@=<>.,:;";

fn is_ident_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

/// Tokenises `text` as the grammar would. Returns `Err` only for nesting
/// deeper than [`MAX_NESTING`], which must stop everything before pest runs.
fn scan(file: FileId, text: &str) -> Result<Scan> {
    let bytes = text.as_bytes();
    let span = |lo: usize, hi: usize| Span { file, lo: lo as u32, hi: hi as u32 };
    let mut tokens = Vec::new();
    let mut lexical_error: Option<(usize, Diagnostic)> = None;
    let mut report = |at: usize, diagnostic: Diagnostic| {
        if lexical_error.is_none() {
            lexical_error = Some((at, diagnostic));
        }
    };
    // Open brackets: (offset, byte).
    let mut open: Vec<(usize, u8)> = Vec::new();
    let mut unclosed = Vec::new();
    let mut stray_closers = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let start = i;
        let b = bytes[i];
        match b {
            b' ' | b'\t' | b'\r' | b'\n' => i += 1,
            b'#' => {
                while i < bytes.len() && bytes[i] != b'\n' {
                    i += 1;
                }
            }
            b'"' => {
                i += 1;
                let mut closed = false;
                while i < bytes.len() {
                    match bytes[i] {
                        b'"' => {
                            i += 1;
                            closed = true;
                            break;
                        }
                        b'\n' => break,
                        b'\\' => {
                            // Escapes are ASCII; anything else is reported,
                            // covering the whole (maybe multi-byte) character.
                            let escaped = text.get(i + 1..).and_then(|rest| rest.chars().next());
                            match escaped {
                                Some('"' | '\\' | 'n' | 't') => i += 2,
                                Some('\n') | None => i += 1,
                                Some(other) => {
                                    let hi = i + 1 + other.len_utf8();
                                    // Ranked by the string's start, where pest fails.
                                    report(
                                        start,
                                        Diagnostic::new(span(i, hi), format!("unknown escape `\\{other}` in string"))
                                            .with_label("unknown escape")
                                            .with_note("the escapes are `\\\"`, `\\\\`, `\\n` and `\\t`"),
                                    );
                                    i = hi;
                                }
                            }
                        }
                        _ => i += 1,
                    }
                }
                if !closed {
                    report(
                        start,
                        Diagnostic::new(span(start, i), "unterminated string")
                            .with_label("this string has no closing `\"`")
                            .with_note("strings end on the line they start on"),
                    );
                }
                tokens.push(Token { kind: TokenKind::Str, lo: start, hi: i });
            }
            b'0'..=b'9' => {
                let (hi, problem) = scan_number(bytes, i);
                i = hi;
                if let Some(note) = problem {
                    let literal = &text[start..hi];
                    report(
                        start,
                        Diagnostic::new(span(start, hi), format!("invalid number literal `{literal}`"))
                            .with_label("not a number")
                            .with_note(note),
                    );
                }
                tokens.push(Token { kind: TokenKind::Number, lo: start, hi });
            }
            b'A'..=b'Z' | b'a'..=b'z' | b'_' => {
                while i < bytes.len() && is_ident_char(bytes[i]) {
                    i += 1;
                }
                let kind = if KEYWORDS.contains(&&text[start..i]) { TokenKind::Keyword } else { TokenKind::Name };
                tokens.push(Token { kind, lo: start, hi: i });
            }
            b'(' | b'[' | b'{' => {
                if open.len() >= MAX_NESTING {
                    let too_deep = Diagnostic::new(span(i, i + 1), "brackets are nested too deeply")
                        .with_label(format!("more than {MAX_NESTING} levels deep"))
                        .with_note("split the expression into several statements");
                    // A lexical error earlier in the file is the first problem.
                    return Err(match lexical_error {
                        Some((_, earlier)) => earlier,
                        None => too_deep,
                    });
                }
                open.push((i, b));
                i += 1;
                tokens.push(Token { kind: TokenKind::Punct, lo: start, hi: i });
            }
            b')' | b']' | b'}' => {
                let opener = match b {
                    b')' => b'(',
                    b']' => b'[',
                    _ => b'{',
                };
                // A closer matches the nearest opener of its kind; openers
                // skipped over on the way are unclosed. No such opener at all
                // makes this a stray closer and leaves the stack alone.
                if let Some(at) = open.iter().rposition(|&(_, o)| o == opener) {
                    unclosed.extend(open.drain(at..).skip(1).map(|(offset, _)| offset));
                } else {
                    stray_closers.push(i);
                }
                i += 1;
                tokens.push(Token { kind: TokenKind::Punct, lo: start, hi: i });
            }
            _ => {
                if let Some(p) = LONG_PUNCT.iter().find(|p| bytes[i..].starts_with(p.as_bytes())) {
                    i += p.len();
                    tokens.push(Token { kind: TokenKind::Punct, lo: start, hi: i });
                } else if SHORT_PUNCT.as_bytes().contains(&b) {
                    i += 1;
                    tokens.push(Token { kind: TokenKind::Punct, lo: start, hi: i });
                } else {
                    // `i` is always on a character boundary: every branch
                    // advances over whole characters.
                    let c = text[i..].chars().next().unwrap_or('\u{fffd}');
                    i += c.len_utf8();
                    let mut diagnostic = Diagnostic::new(span(start, i), format!("unexpected character `{}`", printable(c)))
                        .with_label("not part of the language");
                    if let Some(note) = character_hint(c, bytes.get(i).copied()) {
                        diagnostic = diagnostic.with_note(note);
                    }
                    report(start, diagnostic);
                    tokens.push(Token { kind: TokenKind::Punct, lo: start, hi: i });
                }
            }
        }
    }
    unclosed.extend(open.iter().map(|&(offset, _)| offset));
    unclosed.sort_unstable();
    Ok(Scan { tokens, lexical_error, unclosed, stray_closers })
}

/// Scans a number starting at `bytes[start]` (a digit). Returns its end and,
/// when it is malformed, a note on how to write it.
fn scan_number(bytes: &[u8], start: usize) -> (usize, Option<&'static str>) {
    let digits = |mut i: usize| {
        while i < bytes.len() && bytes[i].is_ascii_digit() {
            i += 1;
        }
        i
    };
    let at = |i: usize| bytes.get(i).copied();
    let mut i = digits(start);
    let mut problem = None;
    if at(i) == Some(b'.') {
        match at(i + 1) {
            Some(b'0'..=b'9') => i = digits(i + 1),
            // `0..n` is a range, not a malformed float.
            Some(b'.') => return (i, None),
            _ => {
                i += 1;
                problem = Some("a decimal point needs digits after it, e.g. `3.0`");
            }
        }
    }
    if problem.is_none() && matches!(at(i), Some(b'e' | b'E')) {
        let mut j = i + 1;
        if matches!(at(j), Some(b'+' | b'-')) {
            j += 1;
        }
        if matches!(at(j), Some(b'0'..=b'9')) {
            i = digits(j);
        } else {
            i = j;
            problem = Some("an exponent needs digits, e.g. `1e5` or `1e-5`");
        }
    }
    // Letters glued on (`12abc`, `0x1f`) belong to the bad literal.
    if at(i).is_some_and(is_ident_char) {
        while at(i).is_some_and(is_ident_char) {
            i += 1;
        }
        problem = problem.or(Some("a number cannot be followed directly by letters"));
    }
    (i, problem)
}

/// A character as it should appear between backticks in a message.
fn printable(c: char) -> String {
    // Invisible characters (byte-order marks, zero-width spaces, bidi
    // controls) are escaped so the message shows something.
    let invisible = matches!(c, '\u{200b}'..='\u{200f}' | '\u{2028}'..='\u{202e}' | '\u{2060}'..='\u{2064}' | '\u{feff}');
    if c.is_control() || c.is_whitespace() || invisible { c.escape_default().to_string() } else { c.to_string() }
}

/// Suggestions for characters people bring from other languages.
fn character_hint(c: char, next: Option<u8>) -> Option<&'static str> {
    match (c, next) {
        ('!', _) => Some("negation is written `not`"),
        ('&', _) => Some("logical and is written `and`"),
        ('|', Some(b'|')) => Some("logical or is written `or`"),
        ('|', _) => Some("the pipe operator is `|>`"),
        ('\'', _) => Some("strings use double quotes: \"...\""),
        _ => None,
    }
}

// ---------------------------------------------------------------------------
// Explaining pest errors
// ---------------------------------------------------------------------------

/// What pest expected at the failure point, in words.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum Expected {
    /// Something that must come next (a token or a construct), with a rank
    /// that orders the message.
    Thing(u8, &'static str),
    /// An operator or suffix that could extend the expression before the
    /// failure point: only worth naming when nothing else was expected.
    Continuation,
    /// Optional tokens (`;`) and end of file, never worth naming.
    Nothing,
}

fn expected(rule: Rule) -> Expected {
    use Expected::{Continuation, Nothing, Thing};
    // Ranks order the message: constructs, then tokens, then `,`, then closers
    // ("expected a statement or `}`", "expected `,` or `)`").
    match rule {
        Rule::rparen => Thing(9, "`)`"),
        Rule::rbracket => Thing(9, "`]`"),
        Rule::rbrace => Thing(9, "`}`"),
        Rule::comma => Thing(8, "`,`"),
        Rule::assign => Thing(7, "`=`"),
        Rule::setting_assign => Thing(7, "`=`"),
        Rule::colon => Thing(7, "`:`"),
        Rule::arrow | Rule::ret_types => Thing(7, "`->`"),
        Rule::lbrace | Rule::body => Thing(7, "`{`"),
        Rule::lparen | Rule::param_list => Thing(7, "`(`"),
        Rule::dims_open => Thing(7, "`[`"),
        Rule::lbracket => Thing(7, "`[`"),
        Rule::kw_in => Thing(7, "`in`"),
        Rule::kw_if => Thing(7, "`if`"),
        // `file` itself fails at offset 0 when the first item is wrong.
        Rule::file | Rule::item | Rule::use_item | Rule::model_def | Rule::block_def | Rule::train_def => {
            Thing(0, "`model`, `block`, `train` or `use`")
        }
        Rule::kw_use => Thing(0, "`use`"),
        Rule::kw_model => Thing(0, "`model`"),
        Rule::kw_block => Thing(0, "`block`"),
        Rule::kw_train => Thing(0, "`train`"),
        Rule::stmt
        | Rule::param_stmt
        | Rule::if_stmt
        | Rule::for_stmt
        | Rule::return_stmt
        | Rule::yield_stmt
        | Rule::let_stmt
        | Rule::expr_stmt
        | Rule::kw_param
        | Rule::kw_buffer
        | Rule::kw_return
        | Rule::kw_yield => Thing(4, "a statement"),
        Rule::setting => Thing(4, "a setting (`name = value`)"),
        Rule::param_def => Thing(4, "a parameter"),
        Rule::ret_tuple | Rule::ret_item => Thing(4, "a result type"),
        Rule::type_expr | Rule::tensor_type | Rule::scalar_type => Thing(4, "a type"),
        Rule::dim | Rule::dim_int | Rule::ellipsis => Thing(4, "a dimension"),
        Rule::for_target => Thing(4, "a loop variable"),
        Rule::index_item | Rule::slice_colon => Thing(4, "an index"),
        Rule::expr
        | Rule::prefix
        | Rule::for_expr
        | Rule::kw_for
        | Rule::call
        | Rule::paren
        | Rule::list
        | Rule::float
        | Rule::int
        | Rule::bool
        | Rule::arg
        | Rule::kwarg => Thing(5, "an expression"),
        Rule::string | Rule::string_inner => Thing(5, "a string"),
        Rule::ident | Rule::keyword => Thing(5, "a name"),
        Rule::infix
        | Rule::index
        | Rule::field
        | Rule::kw_else
        | Rule::else_if
        | Rule::else_body => Continuation,
        // Silent rules and the file itself never show up as expectations.
        Rule::semi
        | Rule::EOI
        | Rule::WHITESPACE
        | Rule::COMMENT
        | Rule::atom
        | Rule::exponent
        | Rule::ident_char => Nothing,
    }
}

/// Joins phrases as "a", "a or b", "a, b or c".
fn one_of(phrases: &[&str]) -> String {
    match phrases {
        [] => String::new(),
        [one] => (*one).to_string(),
        [init @ .., last] => format!("{} or {last}", init.join(", ")),
    }
}

/// Turns a pest failure into a diagnostic that points at the offending token.
fn explain(file: FileId, text: &str, scan: &Scan, error: pest::error::Error<Rule>) -> Diagnostic {
    let span = |lo: usize, hi: usize| Span { file, lo: lo as u32, hi: hi as u32 };
    let at = match error.location {
        InputLocation::Pos(p) => p,
        InputLocation::Span((p, _)) => p,
    };
    // The first problem in the text wins: a bad literal at or before the
    // point where the grammar gave up is usually why it gave up.
    if let Some((offset, lexical)) = &scan.lexical_error
        && *offset <= at
    {
        return lexical.clone();
    }
    let positives = match error.variant {
        ErrorVariant::ParsingError { positives, .. } => positives,
        // pest's own stack guard; the pre-scan normally stops this first.
        ErrorVariant::CustomError { .. } => {
            return Diagnostic::new(span(at, at), "this file is nested too deeply to parse")
                .with_note("split deeply nested expressions into several statements");
        }
    };

    let next_token = scan.tokens.partition_point(|t| t.lo < at);
    let found_token = scan.tokens.get(next_token).filter(|t| t.lo == at).copied();
    let rest = text.get(at..).unwrap_or("");
    let (found, primary) = match (found_token, rest.chars().next()) {
        (Some(token), _) => (describe_token(text, token), span(token.lo, token.hi)),
        (None, Some(c)) if !rest.trim().is_empty() => (format!("`{}`", printable(c)), span(at, at + c.len_utf8())),
        // At the end, point just past the last token rather than at a blank
        // line (or a comment) after it.
        (None, _) => {
            let end = scan.tokens.last().map_or(0, |t| t.hi);
            ("end of file".to_string(), span(end, end))
        }
    };

    let wants_dims = positives.contains(&Rule::dims_open);
    let wants_setting_assign = positives.contains(&Rule::setting_assign);
    let mut things: Vec<(u8, &'static str)> = Vec::new();
    let mut continuation = false;
    // At the start of an operand pest tries every kind of atom one by one;
    // a name, a string, `(` or `[` there all mean "an expression".
    let operand_start = positives.contains(&Rule::prefix);
    for rule in positives {
        let atom = matches!(rule, Rule::ident | Rule::string | Rule::lparen | Rule::lbracket);
        match if operand_start && atom { Expected::Thing(5, "an expression") } else { expected(rule) } {
            Expected::Thing(rank, phrase) => things.push((rank, phrase)),
            Expected::Continuation => continuation = true,
            Expected::Nothing => {}
        }
    }
    things.sort_unstable();
    things.dedup();
    let phrases: Vec<&str> = things.iter().map(|(_, phrase)| *phrase).collect();

    // Expecting the closer of an opener that is never closed: say which.
    let innermost_open = innermost_open_bracket(text, scan, at);
    if let Some(opener) = innermost_open
        && scan.unclosed.contains(&opener)
    {
        let (closer, purpose) = bracket_purpose(text, scan, opener);
        if phrases.contains(&closer) {
            let label = match found_token {
                Some(_) => format!("expected {closer} before this"),
                None => "the file ends here".to_string(),
            };
            return Diagnostic::new(primary, format!("expected {closer} {purpose}, found {found}"))
                .with_label(label)
                .with_secondary(span(opener, opener + 1), "unclosed");
        }
    }

    // A closer that matches no opener is its own problem.
    if let Some(token) = found_token
        && scan.stray_closers.contains(&token.lo)
    {
        let closer = &text[token.lo..token.hi];
        return Diagnostic::new(primary, format!("unexpected `{closer}`"))
            .with_label(format!("this `{closer}` has no matching opening bracket"));
    }

    let message = if !phrases.is_empty() {
        format!("expected {}, found {found}", one_of(&phrases))
    } else if continuation {
        format!("expected an operator, found {found}")
    } else {
        format!("unexpected {found}")
    };
    let mut diagnostic = Diagnostic::new(primary, message);
    if let Some(token) = found_token {
        let word = &text[token.lo..token.hi];
        let wants_name = phrases.iter().any(|p| {
            ["a name", "an expression", "a statement", "a parameter", "a loop variable", "a setting (`name = value`)"]
                .contains(p)
        });
        if token.kind == TokenKind::Keyword && wants_name && word != "true" && word != "false" {
            diagnostic = diagnostic.with_note(format!("`{word}` is a keyword and cannot be used as a name"));
        }
        if word == "=" && phrases.contains(&"a statement") {
            diagnostic = diagnostic.with_note("only names can be assigned to: `x = ...` or `a, b = ...`");
        }
    }
    if wants_dims {
        diagnostic = diagnostic
            .with_note("tensor types are written like `f32[B, 10]`; scalar types are `int`, `float`, `bool` and `tuple`");
    }
    if wants_setting_assign {
        diagnostic = diagnostic.with_note("settings are written `name = value`");
    }
    diagnostic
}

/// The offset of the innermost bracket still open just before `at`, matching
/// brackets with the same rule as [`scan`].
fn innermost_open_bracket(text: &str, scan: &Scan, at: usize) -> Option<usize> {
    let mut open: Vec<(usize, u8)> = Vec::new();
    for token in scan.tokens.iter().take_while(|t| t.lo < at) {
        let Some(&b) = text.as_bytes().get(token.lo) else { continue };
        let opener = match (token.kind, b) {
            (TokenKind::Punct, b'(' | b'[' | b'{') => {
                open.push((token.lo, b));
                continue;
            }
            (TokenKind::Punct, b')') => b'(',
            (TokenKind::Punct, b']') => b'[',
            (TokenKind::Punct, b'}') => b'{',
            _ => continue,
        };
        if let Some(i) = open.iter().rposition(|&(_, o)| o == opener) {
            open.truncate(i);
        }
    }
    open.last().map(|&(offset, _)| offset)
}

/// The closer an opener needs, and what it opens, for "expected `)` to close
/// this call".
fn bracket_purpose(text: &str, scan: &Scan, opener: usize) -> (&'static str, &'static str) {
    let previous = |offset: usize| scan.tokens.iter().rev().find(|t| t.hi <= offset).copied();
    match text.as_bytes().get(opener) {
        Some(b'(') => {
            // `name(` is a call, or a parameter list after `model`/`block`.
            let before = previous(opener);
            match before {
                Some(t) if t.kind == TokenKind::Name => {
                    let definition = previous(t.lo).is_some_and(|k| {
                        k.kind == TokenKind::Keyword && matches!(&text[k.lo..k.hi], "model" | "block")
                    });
                    ("`)`", if definition { "to close the parameter list" } else { "to close this call" })
                }
                _ => ("`)`", "to close this `(`"),
            }
        }
        Some(b'[') => ("`]`", "to close this `[`"),
        _ => ("`}`", "to close this block"),
    }
}

fn describe_token(text: &str, token: Token) -> String {
    let word = &text[token.lo..token.hi];
    match token.kind {
        TokenKind::Keyword if word == "true" || word == "false" => format!("`{word}`"),
        TokenKind::Keyword => format!("keyword `{word}`"),
        TokenKind::Str if word.chars().count() > 24 => "a string".to_string(),
        _ => format!("`{word}`"),
    }
}

// ---------------------------------------------------------------------------
// Pairs to AST
// ---------------------------------------------------------------------------

/// An expression with the height of its tree, so the height bound is checked
/// in constant time per node while folding long operator chains.
struct Built {
    expr: Expr,
    height: usize,
}

struct Builder {
    file: FileId,
    /// End offsets of the pre-scan's tokens, ascending.
    token_ends: Vec<usize>,
}

impl Builder {
    /// The span of a pair, ending at its last token: pest includes the
    /// whitespace and comments skipped after a rule's trailing optional
    /// parts, and a span should cover only the node's own text.
    fn span(&self, pair: &Pair<Rule>) -> Span {
        let s = pair.as_span();
        let (lo, hi) = (s.start(), s.end());
        let last = self.token_ends.partition_point(|&end| end <= hi);
        let hi = last.checked_sub(1).map_or(lo, |i| self.token_ends[i].clamp(lo, hi));
        Span { file: self.file, lo: lo as u32, hi: hi as u32 }
    }

    fn join(&self, lo: Span, hi: Span) -> Span {
        Span { file: self.file, lo: lo.lo, hi: hi.hi }
    }

    /// The grammar fixes the shape of every pair; a surprise is a bug in this
    /// file, reported as an error rather than a panic.
    fn bug(&self, span: Span, what: &str) -> Diagnostic {
        Diagnostic::new(span, format!("internal parser error: {what}")).with_note("this is a bug in the d2l parser")
    }

    fn child<'a>(&self, parent: Span, pairs: &mut Pairs<'a, Rule>, rule: Rule) -> Result<Pair<'a, Rule>> {
        match pairs.next() {
            Some(pair) if pair.as_rule() == rule => Ok(pair),
            Some(pair) => Err(self.bug(self.span(&pair), &format!("expected {rule:?}, got {:?}", pair.as_rule()))),
            None => Err(self.bug(parent, &format!("missing {rule:?}"))),
        }
    }

    fn ident(&self, pair: &Pair<Rule>) -> Ident {
        Ident { name: pair.as_str().to_string(), span: self.span(pair) }
    }

    fn module(&self, file: Pair<Rule>) -> Result<Module> {
        let mut items = Vec::new();
        for pair in file.into_inner() {
            if pair.as_rule() == Rule::item {
                let span = self.span(&pair);
                let inner = pair.into_inner().next().ok_or_else(|| self.bug(span, "empty item"))?;
                items.push(self.item(inner)?);
            }
        }
        Ok(Module { items })
    }

    fn item(&self, pair: Pair<Rule>) -> Result<Item> {
        let span = self.span(&pair);
        match pair.as_rule() {
            Rule::use_item => {
                let mut inner = pair.into_inner();
                self.child(span, &mut inner, Rule::kw_use)?;
                let path = self.string(self.child(span, &mut inner, Rule::string)?)?;
                Ok(Item::Use { path, span })
            }
            Rule::model_def => Ok(Item::Model(self.func_def(pair)?)),
            Rule::block_def => Ok(Item::Block(self.func_def(pair)?)),
            Rule::train_def => Ok(Item::Train(self.train_def(pair)?)),
            other => Err(self.bug(span, &format!("unexpected item {other:?}"))),
        }
    }

    fn func_def(&self, pair: Pair<Rule>) -> Result<FuncDef> {
        let span = self.span(&pair);
        let mut inner = pair.into_inner();
        inner.next(); // `model` or `block`
        let name = self.ident(&self.child(span, &mut inner, Rule::ident)?);
        let mut params = Vec::new();
        for param in self.child(span, &mut inner, Rule::param_list)?.into_inner() {
            if param.as_rule() == Rule::param_def {
                params.push(self.param_def(param)?);
            }
        }
        let mut ret = Vec::new();
        let mut body = Vec::new();
        for pair in inner {
            match pair.as_rule() {
                Rule::ret_types => ret = self.ret_types(pair)?,
                Rule::body => body = self.body(pair)?.0,
                other => return Err(self.bug(span, &format!("unexpected {other:?} in a definition"))),
            }
        }
        Ok(FuncDef { name, params, ret, body, span })
    }

    fn param_def(&self, pair: Pair<Rule>) -> Result<ParamDef> {
        let span = self.span(&pair);
        let mut inner = pair.into_inner();
        let name = self.ident(&self.child(span, &mut inner, Rule::ident)?);
        let (mut ty, mut default) = (None, None);
        for pair in inner {
            match pair.as_rule() {
                Rule::type_expr => ty = Some(self.type_expr(pair)?),
                Rule::expr => default = Some(self.expr(pair)?.expr),
                _ => {}
            }
        }
        Ok(ParamDef { name, ty, default, span })
    }

    fn ret_types(&self, pair: Pair<Rule>) -> Result<Vec<RetType>> {
        let span = self.span(&pair);
        let mut inner = pair.into_inner();
        self.child(span, &mut inner, Rule::arrow)?;
        let result = inner.next().ok_or_else(|| self.bug(span, "missing result type"))?;
        if result.as_rule() == Rule::type_expr {
            return Ok(vec![RetType { name: None, ty: self.type_expr(result)? }]);
        }
        let mut rets = Vec::new();
        for item in result.into_inner().filter(|p| p.as_rule() == Rule::ret_item) {
            let mut name = None;
            let mut ty = None;
            for part in item.into_inner() {
                match part.as_rule() {
                    Rule::ident => name = Some(self.ident(&part)),
                    Rule::type_expr => ty = Some(self.type_expr(part)?),
                    _ => {}
                }
            }
            let ty = ty.ok_or_else(|| self.bug(span, "result without a type"))?;
            rets.push(RetType { name, ty });
        }
        Ok(rets)
    }

    fn type_expr(&self, pair: Pair<Rule>) -> Result<TypeExpr> {
        let span = self.span(&pair);
        let inner = pair.into_inner().next().ok_or_else(|| self.bug(span, "empty type"))?;
        if inner.as_rule() == Rule::scalar_type {
            return Ok(TypeExpr::Scalar { kind: self.ident(&inner), span });
        }
        let mut parts = inner.into_inner();
        let dtype = self.ident(&self.child(span, &mut parts, Rule::ident)?);
        let mut dims = Vec::new();
        for dim in parts.filter(|p| p.as_rule() == Rule::dim) {
            let dim_span = self.span(&dim);
            let dim = dim.into_inner().next().ok_or_else(|| self.bug(dim_span, "empty dimension"))?;
            dims.push(match dim.as_rule() {
                Rule::dim_int => match dim.as_str().parse::<u64>() {
                    Ok(n) => DimPat::Lit(n, dim_span),
                    Err(_) => {
                        return Err(Diagnostic::new(dim_span, format!("dimension `{}` is too large", dim.as_str()))
                            .with_label("does not fit in 64 bits"));
                    }
                },
                Rule::ellipsis => DimPat::Ellipsis(dim_span),
                _ => DimPat::Name(self.ident(&dim)),
            });
        }
        Ok(TypeExpr::Tensor { dtype, dims, span })
    }

    fn train_def(&self, pair: Pair<Rule>) -> Result<TrainDef> {
        let span = self.span(&pair);
        let mut inner = pair.into_inner();
        self.child(span, &mut inner, Rule::kw_train)?;
        let model = self.ident(&self.child(span, &mut inner, Rule::ident)?);
        let mut settings = Vec::new();
        for setting in inner.filter(|p| p.as_rule() == Rule::setting) {
            let setting_span = self.span(&setting);
            let mut parts = setting.into_inner();
            let key = self.ident(&self.child(setting_span, &mut parts, Rule::ident)?);
            self.child(setting_span, &mut parts, Rule::setting_assign)?;
            let value = self.expr(self.child(setting_span, &mut parts, Rule::expr)?)?.expr;
            settings.push(Setting { key, value });
        }
        Ok(TrainDef { model, settings, span })
    }

    // ---- statements ----------------------------------------------------------

    /// The statements of a `{ ... }` body and the height of their tallest tree.
    fn body(&self, pair: Pair<Rule>) -> Result<(Vec<Stmt>, usize)> {
        let mut stmts = Vec::new();
        let mut height = 0;
        for stmt in pair.into_inner().filter(|p| p.as_rule() == Rule::stmt) {
            let span = self.span(&stmt);
            let inner = stmt.into_inner().next().ok_or_else(|| self.bug(span, "empty statement"))?;
            let (stmt, h) = self.stmt(inner)?;
            height = height.max(h);
            stmts.push(stmt);
        }
        Ok((stmts, height))
    }

    fn stmt(&self, pair: Pair<Rule>) -> Result<(Stmt, usize)> {
        let span = self.span(&pair);
        let rule = pair.as_rule();
        let mut inner = pair.into_inner();
        match rule {
            Rule::let_stmt => {
                let mut targets = Vec::new();
                let mut value = None;
                for part in inner {
                    match part.as_rule() {
                        Rule::ident => targets.push(self.ident(&part)),
                        Rule::expr => value = Some(self.expr(part)?),
                        _ => {}
                    }
                }
                let value = value.ok_or_else(|| self.bug(span, "assignment without a value"))?;
                Ok((Stmt::Let { targets, value: value.expr, span }, value.height + 1))
            }
            Rule::param_stmt => {
                let keyword = inner.next().ok_or_else(|| self.bug(span, "declaration without a keyword"))?;
                let kind = if keyword.as_rule() == Rule::kw_buffer { DeclKind::Buffer } else { DeclKind::Param };
                let name = self.ident(&self.child(span, &mut inner, Rule::ident)?);
                self.child(span, &mut inner, Rule::colon)?;
                let ty = self.type_expr(self.child(span, &mut inner, Rule::type_expr)?)?;
                let init = inner.find(|p| p.as_rule() == Rule::expr).map(|p| self.expr(p)).transpose()?;
                let height = init.as_ref().map_or(0, |b| b.height) + 1;
                Ok((Stmt::Param { kind, name, ty, init: init.map(|b| b.expr), span }, height))
            }
            Rule::if_stmt => self.if_stmt(span, inner),
            Rule::for_stmt => {
                let (vars, iter, body, height) = self.for_parts(span, inner)?;
                Ok((Stmt::For { vars, iter: iter.expr, body, span }, height))
            }
            Rule::return_stmt | Rule::yield_stmt => {
                inner.next(); // the keyword
                let value = self.expr(inner.next().ok_or_else(|| self.bug(span, "missing value"))?)?;
                let height = value.height + 1;
                let value = value.expr;
                Ok((if rule == Rule::return_stmt { Stmt::Return { value, span } } else { Stmt::Yield { value, span } }, height))
            }
            Rule::expr_stmt => {
                let value = self.expr(self.child(span, &mut inner, Rule::expr)?)?;
                Ok((Stmt::Expr(value.expr), value.height))
            }
            other => Err(self.bug(span, &format!("unexpected statement {other:?}"))),
        }
    }

    /// `if a {} else if b {} else {}`: the grammar gives a flat chain; the AST
    /// nests each `else if` in the previous `else`.
    fn if_stmt(&self, span: Span, inner: Pairs<Rule>) -> Result<(Stmt, usize)> {
        // (offset of the `if`, condition, then-body, its height) for the `if`
        // and each `else if`.
        let mut arms: Vec<(u32, Built, Vec<Stmt>, usize)> = Vec::new();
        let mut else_body: Option<(Vec<Stmt>, usize)> = None;
        let mut cond = None;
        for part in inner {
            match part.as_rule() {
                Rule::expr => cond = Some(self.expr(part)?),
                Rule::body => {
                    let (body, h) = self.body(part)?;
                    let c = cond.take().ok_or_else(|| self.bug(span, "`if` without a condition"))?;
                    arms.push((span.lo, c, body, h));
                }
                Rule::else_if => {
                    let arm_span = self.span(&part);
                    let mut parts = part.into_inner();
                    self.child(arm_span, &mut parts, Rule::kw_else)?;
                    let kw_if = self.child(arm_span, &mut parts, Rule::kw_if)?;
                    let c = self.expr(self.child(arm_span, &mut parts, Rule::expr)?)?;
                    let (body, h) = self.body(self.child(arm_span, &mut parts, Rule::body)?)?;
                    arms.push((self.span(&kw_if).lo, c, body, h));
                }
                Rule::else_body => {
                    let arm_span = self.span(&part);
                    let body = part.into_inner().find(|p| p.as_rule() == Rule::body);
                    let body = body.ok_or_else(|| self.bug(arm_span, "`else` without a body"))?;
                    else_body = Some(self.body(body)?);
                }
                _ => {}
            }
        }
        // Fold from the last arm: each `if` becomes the whole `else` of the
        // one before it.
        let mut chain: Option<(Stmt, usize)> = None;
        for (lo, cond, then_body, then_height) in arms.into_iter().rev() {
            let (else_body, else_height) = match chain.take() {
                Some((inner_if, height)) => (Some(vec![inner_if]), height),
                None => else_body.take().map_or((None, 0), |(body, height)| (Some(body), height)),
            };
            let height = cond.height.max(then_height).max(else_height) + 1;
            let stmt_span = Span { file: self.file, lo, hi: span.hi };
            if height > MAX_NESTING {
                return Err(too_deep(stmt_span));
            }
            chain = Some((Stmt::If { cond: cond.expr, then_body, else_body, span: stmt_span }, height));
        }
        chain.ok_or_else(|| self.bug(span, "`if` without arms"))
    }

    /// The loop variables, iterable, body and tree height of a `for`.
    fn for_parts(&self, span: Span, mut inner: Pairs<Rule>) -> Result<(Vec<Ident>, Built, Vec<Stmt>, usize)> {
        self.child(span, &mut inner, Rule::kw_for)?;
        let mut vars = Vec::new();
        self.for_target(self.child(span, &mut inner, Rule::for_target)?, &mut vars);
        self.child(span, &mut inner, Rule::kw_in)?;
        let iter = self.expr(self.child(span, &mut inner, Rule::expr)?)?;
        let (body, body_height) = self.body(self.child(span, &mut inner, Rule::body)?)?;
        let height = iter.height.max(body_height) + 1;
        if height > MAX_NESTING {
            return Err(too_deep(span));
        }
        Ok((vars, iter, body, height))
    }

    /// `(i, (c, n))` flattens to `i, c, n`. Recursion depth is bounded by the
    /// bracket pre-scan.
    fn for_target(&self, pair: Pair<Rule>, vars: &mut Vec<Ident>) {
        for part in pair.into_inner() {
            match part.as_rule() {
                Rule::ident => vars.push(self.ident(&part)),
                Rule::for_target => self.for_target(part, vars),
                _ => {}
            }
        }
    }

    // ---- expressions -----------------------------------------------------------

    fn node(&self, kind: ExprKind, span: Span, child_height: usize) -> Result<Built> {
        let height = child_height + 1;
        if height > MAX_NESTING {
            return Err(too_deep(span));
        }
        Ok(Built { expr: Expr { kind, span }, height })
    }

    fn binary(&self, op: BinOp, lhs: Built, rhs: Built) -> Result<Built> {
        let span = self.join(lhs.expr.span, rhs.expr.span);
        let height = lhs.height.max(rhs.height);
        self.node(ExprKind::Binary { op, lhs: Box::new(lhs.expr), rhs: Box::new(rhs.expr) }, span, height)
    }

    fn unary(&self, op: UnOp, op_span: Span, operand: Built) -> Result<Built> {
        let span = self.join(op_span, operand.expr.span);
        self.node(ExprKind::Unary { op, expr: Box::new(operand.expr) }, span, operand.height)
    }

    /// An `expr` pair: a flat run of operands and operators, put into a tree
    /// by precedence climbing ([`Climber`]).
    fn expr(&self, pair: Pair<Rule>) -> Result<Built> {
        let span = self.span(&pair);
        if pair.as_rule() != Rule::expr {
            return Err(self.bug(span, &format!("expected an expression, got {:?}", pair.as_rule())));
        }
        // Suffixes bind tightest, so they are applied to their atom here.
        let mut pieces = Vec::new();
        let mut operand: Option<Built> = None;
        for part in pair.into_inner() {
            let part_span = self.span(&part);
            match part.as_rule() {
                Rule::prefix => {
                    let op = if part.as_str() == "-" { UnOp::Neg } else { UnOp::Not };
                    pieces.push(Piece::Prefix(op, part_span));
                }
                Rule::infix => {
                    pieces.extend(operand.take().map(Piece::Operand));
                    let op = infix_op(part.as_str()).ok_or_else(|| self.bug(part_span, "unknown operator"))?;
                    pieces.push(Piece::Infix(op, part_span));
                }
                Rule::index | Rule::field => {
                    let base = operand.take().ok_or_else(|| self.bug(part_span, "suffix without an operand"))?;
                    operand = Some(self.suffix(base, part)?);
                }
                _ => {
                    if operand.is_some() {
                        return Err(self.bug(part_span, "two operands in a row"));
                    }
                    operand = Some(self.atom(part)?);
                }
            }
        }
        pieces.extend(operand.map(Piece::Operand));
        let mut climber = Climber { builder: self, pieces: pieces.into_iter().peekable(), depth: 0, span };
        let result = climber.climb(0)?;
        match climber.pieces.next() {
            None => Ok(result),
            Some(_) => Err(self.bug(span, "operators left over")),
        }
    }

    fn suffix(&self, base: Built, suffix: Pair<Rule>) -> Result<Built> {
        let suffix_span = self.span(&suffix);
        let whole = self.join(base.expr.span, suffix_span);
        match suffix.as_rule() {
            Rule::field => {
                let name = suffix.into_inner().find(|p| p.as_rule() == Rule::ident);
                let name = self.ident(&name.ok_or_else(|| self.bug(suffix_span, "field without a name"))?);
                self.node(ExprKind::Field { base: Box::new(base.expr), name }, whole, base.height)
            }
            _ => {
                let mut items = Vec::new();
                let mut height = base.height;
                for item in suffix.into_inner().filter(|p| p.as_rule() == Rule::index_item) {
                    let (item, h) = self.index_item(item)?;
                    height = height.max(h);
                    items.push(item);
                }
                self.node(ExprKind::Index { base: Box::new(base.expr), items }, whole, height)
            }
        }
    }

    /// `i`, or up to three optional parts separated by colons: `a:b:s`.
    fn index_item(&self, pair: Pair<Rule>) -> Result<(IndexItem, usize)> {
        let span = self.span(&pair);
        let mut parts: Vec<Option<Built>> = vec![None];
        for part in pair.into_inner() {
            match part.as_rule() {
                Rule::slice_colon => parts.push(None),
                _ => {
                    let value = self.expr(part)?;
                    if let Some(slot) = parts.last_mut() {
                        *slot = Some(value);
                    }
                }
            }
        }
        let height = parts.iter().flatten().map(|b| b.height).max().unwrap_or(0);
        let mut parts = parts.into_iter().map(|p| p.map(|b| b.expr));
        let item = match (parts.next(), parts.next(), parts.next(), parts.next()) {
            (Some(Some(at)), None, None, None) => IndexItem::At(at),
            (Some(start), Some(end), step, None) => IndexItem::Range { start, end, step: step.flatten() },
            _ => return Err(self.bug(span, "malformed index")),
        };
        Ok((item, height))
    }

    fn atom(&self, pair: Pair<Rule>) -> Result<Built> {
        let span = self.span(&pair);
        let text = pair.as_str();
        match pair.as_rule() {
            Rule::int => match text.parse::<i64>() {
                Ok(n) => self.node(ExprKind::Int(n), span, 0),
                Err(_) => Err(Diagnostic::new(span, format!("integer literal `{text}` is too large"))
                    .with_label("does not fit in 64 bits")
                    .with_note(format!("the largest integer is {}", i64::MAX))),
            },
            Rule::float => match text.parse::<f64>() {
                Ok(x) if x.is_finite() => self.node(ExprKind::Float(x), span, 0),
                _ => Err(Diagnostic::new(span, format!("float literal `{text}` is too large"))
                    .with_label("out of range for a 64-bit float")),
            },
            Rule::bool => self.node(ExprKind::Bool(text == "true"), span, 0),
            Rule::string => self.node(ExprKind::Str(self.string(pair)?), span, 0),
            Rule::ident => self.node(ExprKind::Name(text.to_string()), span, 0),
            Rule::call => self.call(pair),
            Rule::paren | Rule::list => {
                let is_paren = pair.as_rule() == Rule::paren;
                let mut elements = Vec::new();
                let mut commas = 0;
                for part in pair.into_inner() {
                    match part.as_rule() {
                        Rule::expr => elements.push(self.expr(part)?),
                        Rule::comma => commas += 1,
                        _ => {}
                    }
                }
                if is_paren && elements.len() == 1 && commas == 0 {
                    // Grouping: the node keeps its kind, its span grows to
                    // cover the parentheses.
                    let mut inner = elements.pop().ok_or_else(|| self.bug(span, "empty group"))?;
                    inner.expr.span = span;
                    return Ok(inner);
                }
                let height = elements.iter().map(|b| b.height).max().unwrap_or(0);
                self.node(ExprKind::Tuple(elements.into_iter().map(|b| b.expr).collect()), span, height)
            }
            Rule::for_expr => {
                let (vars, iter, body, height) = self.for_parts(span, pair.into_inner())?;
                Ok(Built { expr: Expr { kind: ExprKind::For { vars, iter: Box::new(iter.expr), body }, span }, height })
            }
            other => Err(self.bug(span, &format!("unexpected expression {other:?}"))),
        }
    }

    fn call(&self, pair: Pair<Rule>) -> Result<Built> {
        let span = self.span(&pair);
        let mut inner = pair.into_inner();
        let callee = self.ident(&self.child(span, &mut inner, Rule::ident)?);
        let mut args = Vec::new();
        let mut height = 0;
        // The first keyword argument, to point at when a positional one follows.
        let mut first_keyword: Option<Span> = None;
        for arg in inner.filter(|p| p.as_rule() == Rule::arg) {
            let arg_span = self.span(&arg);
            let arg = arg.into_inner().next().ok_or_else(|| self.bug(arg_span, "empty argument"))?;
            if arg.as_rule() == Rule::kwarg {
                let mut parts = arg.into_inner();
                let name = self.ident(&self.child(arg_span, &mut parts, Rule::ident)?);
                let value = self.expr(self.child(arg_span, &mut parts, Rule::expr)?)?;
                first_keyword.get_or_insert(arg_span);
                height = height.max(value.height);
                args.push(Arg { name: Some(name), value: value.expr });
            } else {
                if let Some(keyword) = first_keyword {
                    return Err(Diagnostic::new(arg_span, "positional argument after a keyword argument")
                        .with_label("positional argument")
                        .with_secondary(keyword, "keyword argument")
                        .with_note("positional arguments come first, then keyword arguments (`name=value`)"));
                }
                let value = self.expr(arg)?;
                height = height.max(value.height);
                args.push(Arg { name: None, value: value.expr });
            }
        }
        self.node(ExprKind::Call { callee, args }, span, height)
    }

    /// The contents of a string literal; the pre-scan has already rejected
    /// unknown escapes, so only the four the grammar allows appear here.
    fn string(&self, pair: Pair<Rule>) -> Result<String> {
        let span = self.span(&pair);
        let raw = pair.into_inner().next().map_or("", |p| p.as_str());
        let mut out = String::with_capacity(raw.len());
        let mut chars = raw.chars();
        while let Some(c) = chars.next() {
            if c != '\\' {
                out.push(c);
                continue;
            }
            match chars.next() {
                Some('n') => out.push('\n'),
                Some('t') => out.push('\t'),
                Some(c @ ('"' | '\\')) => out.push(c),
                _ => return Err(self.bug(span, "unknown escape")),
            }
        }
        Ok(out)
    }
}

/// An infix operator: the binary ones, plus `|>` and `..`, which build
/// their own node kinds.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Infix {
    Binary(BinOp),
    Pipe,
    Range,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Assoc {
    Left,
    Right,
    /// `a < b < c` and `0..n..m` are errors.
    None,
}

fn infix_op(text: &str) -> Option<Infix> {
    use BinOp::*;
    Some(match text {
        "|>" => Infix::Pipe,
        ".." => Infix::Range,
        "or" => Infix::Binary(Or),
        "and" => Infix::Binary(And),
        "==" => Infix::Binary(Eq),
        "!=" => Infix::Binary(Ne),
        "<" => Infix::Binary(Lt),
        "<=" => Infix::Binary(Le),
        ">" => Infix::Binary(Gt),
        ">=" => Infix::Binary(Ge),
        "+" => Infix::Binary(Add),
        "-" => Infix::Binary(Sub),
        "*" => Infix::Binary(Mul),
        "/" => Infix::Binary(Div),
        "%" => Infix::Binary(Rem),
        "@" => Infix::Binary(MatMul),
        "**" => Infix::Binary(Pow),
        _ => return None,
    })
}

/// Binding power (higher binds tighter) and associativity of an infix
/// operator. The prefix operators sit between: `not` at [`NOT_POWER`],
/// unary `-` at [`NEG_POWER`].
fn binding(op: Infix) -> (u8, Assoc) {
    use BinOp::*;
    match op {
        Infix::Pipe => (1, Assoc::Left),
        Infix::Binary(Or) => (2, Assoc::Left),
        Infix::Binary(And) => (3, Assoc::Left),
        Infix::Binary(Eq | Ne | Lt | Le | Gt | Ge) => (5, Assoc::None),
        Infix::Range => (6, Assoc::None),
        Infix::Binary(Add | Sub) => (7, Assoc::Left),
        Infix::Binary(Mul | Div | Rem | MatMul) => (8, Assoc::Left),
        Infix::Binary(Pow) => (10, Assoc::Right),
    }
}

/// `not a == b` is `not (a == b)`; `not a and b` is `(not a) and b`.
const NOT_POWER: u8 = 4;
/// `-a * b` is `(-a) * b`, but `-a ** b` is `-(a ** b)`.
const NEG_POWER: u8 = 9;

enum Piece {
    Prefix(UnOp, Span),
    Operand(Built),
    Infix(Infix, Span),
}

/// Precedence climbing over the pieces of one `expr`. Recursion happens once
/// per operand of a tighter (or right-associative) operator, so its depth is
/// bounded by the height of the tree it builds, which is checked.
struct Climber<'a> {
    builder: &'a Builder,
    pieces: std::iter::Peekable<std::vec::IntoIter<Piece>>,
    depth: usize,
    /// The whole expression, for internal errors.
    span: Span,
}

impl Climber<'_> {
    /// Parses operators binding at least as tightly as `min_power`.
    fn climb(&mut self, min_power: u8) -> Result<Built> {
        self.depth += 1;
        if self.depth > MAX_NESTING {
            return Err(too_deep(self.span));
        }
        let b = self.builder;
        let mut lhs = match self.pieces.next() {
            Some(Piece::Operand(operand)) => operand,
            Some(Piece::Prefix(UnOp::Neg, span)) => {
                let operand = self.climb(NEG_POWER + 1)?;
                b.unary(UnOp::Neg, span, operand)?
            }
            Some(Piece::Prefix(UnOp::Not, span)) => {
                // Inside a tighter operator (`a == not b`), `not` would
                // swallow the rest of the comparison: ask for parentheses.
                if min_power > NOT_POWER + 1 {
                    return Err(Diagnostic::new(span, "`not` needs parentheses here")
                        .with_label("inside a tighter operator")
                        .with_note("`not` binds more loosely than comparisons and arithmetic: write `a == (not b)`"));
                }
                let operand = self.climb(NOT_POWER + 1)?;
                b.unary(UnOp::Not, span, operand)?
            }
            Some(Piece::Infix(_, span)) => return Err(b.bug(span, "operator without a left side")),
            None => return Err(b.bug(self.span, "missing operand")),
        };
        while let Some(&Piece::Infix(op, op_span)) = self.pieces.peek() {
            let (power, assoc) = binding(op);
            if power < min_power {
                break;
            }
            self.pieces.next();
            let rhs = self.climb(if assoc == Assoc::Right { power } else { power + 1 })?;
            lhs = self.combine(op, op_span, lhs, rhs)?;
            if assoc == Assoc::None
                && let Some(&Piece::Infix(next, next_span)) = self.pieces.peek()
                && binding(next).0 == power
            {
                return Err(chained(op, op_span, next_span));
            }
        }
        self.depth -= 1;
        Ok(lhs)
    }

    fn combine(&self, op: Infix, op_span: Span, lhs: Built, rhs: Built) -> Result<Built> {
        let b = self.builder;
        let span = b.join(lhs.expr.span, rhs.expr.span);
        let height = lhs.height.max(rhs.height);
        match op {
            Infix::Binary(op) => b.binary(op, lhs, rhs),
            Infix::Range => b.node(ExprKind::Range { start: Box::new(lhs.expr), end: Box::new(rhs.expr) }, span, height),
            Infix::Pipe => {
                if !matches!(rhs.expr.kind, ExprKind::Name(_) | ExprKind::Call { .. }) {
                    return Err(Diagnostic::new(rhs.expr.span, "the right side of `|>` must be a function name or a call")
                        .with_label("not a name or a call")
                        .with_secondary(op_span, "the pipe")
                        .with_note("`x |> f` means `f(x)`, and `x |> f(a)` means `f(x, a)`"));
                }
                b.node(ExprKind::Pipe { lhs: Box::new(lhs.expr), rhs: Box::new(rhs.expr) }, span, height)
            }
        }
    }
}

/// `a < b < c` or `0..n..m`.
fn chained(first: Infix, first_span: Span, second_span: Span) -> Diagnostic {
    let (message, note) = if first == Infix::Range {
        ("ranges cannot be chained", "a range is written `start..end`")
    } else {
        ("comparisons cannot be chained", "write `a < b and b < c` instead of `a < b < c`")
    };
    Diagnostic::new(second_span, message)
        .with_label("second operator")
        .with_secondary(first_span, "first operator")
        .with_note(note)
}

fn too_deep(span: Span) -> Diagnostic {
    Diagnostic::new(span, "this is nested too deeply")
        .with_label(format!("more than {MAX_NESTING} levels deep"))
        .with_note("split it into several statements")
}

