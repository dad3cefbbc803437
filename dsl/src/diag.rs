//! Source files and diagnostics: every error the front end reports points at
//! the text that caused it (file:line:col, the line, and a caret).

use codespan_reporting::diagnostic::{Diagnostic as CsDiagnostic, Label};
use codespan_reporting::files::SimpleFiles;
use codespan_reporting::term::{self, Config};

use crate::ast::{FileId, Span};

/// The text of every file the compiler has read, for rendering diagnostics.
#[derive(Default)]
pub struct SourceMap {
    files: SimpleFiles<String, String>,
}

impl SourceMap {
    pub fn new() -> SourceMap {
        SourceMap::default()
    }

    pub fn add(&mut self, name: impl Into<String>, text: impl Into<String>) -> FileId {
        self.files.add(name.into(), text.into()) as FileId
    }

    pub fn name(&self, file: FileId) -> &str {
        self.files.get(file as usize).map(|f| f.name().as_str()).unwrap_or("<unknown>")
    }

    pub fn text(&self, file: FileId) -> &str {
        self.files.get(file as usize).map(|f| f.source().as_str()).unwrap_or("")
    }

    /// 1-based (line, column) of a byte offset; columns count characters.
    pub fn line_col(&self, file: FileId, offset: u32) -> (u32, u32) {
        let text = self.text(file);
        let offset = (offset as usize).min(text.len());
        let before = &text[..floor_char_boundary(text, offset)];
        let line = before.matches('\n').count() as u32 + 1;
        let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) as u32 + 1;
        (line, col)
    }
}

fn floor_char_boundary(s: &str, mut i: usize) -> usize {
    while i > 0 && !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

/// An error in user source, with the span that caused it.
#[derive(Clone, Debug, PartialEq)]
pub struct Diagnostic {
    pub message: String,
    pub span: Span,
    /// Text under the primary caret (may be empty).
    pub label: String,
    /// Further places worth showing, e.g. where a name was defined.
    pub secondary: Vec<(Span, String)>,
    /// Free-form help lines.
    pub notes: Vec<String>,
}

impl Diagnostic {
    pub fn new(span: Span, message: impl Into<String>) -> Diagnostic {
        Diagnostic { message: message.into(), span, label: String::new(), secondary: Vec::new(), notes: Vec::new() }
    }

    pub fn with_label(mut self, label: impl Into<String>) -> Diagnostic {
        self.label = label.into();
        self
    }

    pub fn with_secondary(mut self, span: Span, label: impl Into<String>) -> Diagnostic {
        self.secondary.push((span, label.into()));
        self
    }

    pub fn with_note(mut self, note: impl Into<String>) -> Diagnostic {
        self.notes.push(note.into());
        self
    }

    /// Renders like rustc, without colours:
    ///
    /// ```text
    /// error: unknown name `sigmoidd`
    ///   ┌─ models/lenet.d2l:3:31
    ///   │
    /// 3 │     x = conv2d(x, 6) |> sigmoidd
    ///   │                         ^^^^^^^^ not defined
    /// ```
    pub fn render(&self, sources: &SourceMap) -> String {
        let clamp = |s: Span| {
            let len = sources.text(s.file).len();
            let lo = floor_char_boundary(sources.text(s.file), (s.lo as usize).min(len));
            let hi = floor_char_boundary(sources.text(s.file), (s.hi as usize).clamp(lo, len));
            (s.file as usize, lo..hi)
        };
        let (file, range) = clamp(self.span);
        let mut labels = vec![Label::primary(file, range).with_message(&self.label)];
        for (span, text) in &self.secondary {
            let (file, range) = clamp(*span);
            labels.push(Label::secondary(file, range).with_message(text));
        }
        let diagnostic = CsDiagnostic::error().with_message(&self.message).with_labels(labels).with_notes(self.notes.clone());
        let mut out = term::termcolor::NoColor::new(Vec::new());
        match term::emit(&mut out, &Config::default(), &sources.files, &diagnostic) {
            Ok(()) => String::from_utf8_lossy(&out.into_inner()).into_owned(),
            Err(e) => format!("error: {}\n(could not render the source location: {e})\n", self.message),
        }
    }
}
