//! The `.d2l` language front end: source text to a checked graph.
//!
//! `parser` turns text into an [`ast::Module`]; `eval` expands blocks, loops
//! and conditionals at compile time, checks names, shapes and dtypes, and
//! lowers everything to a [`d2l_ir::Graph`] of primitives. Errors at every
//! stage are [`Diagnostic`]s pointing at the source.

pub mod ast;
mod diag;
mod eval;
mod parser;
pub mod print;

pub use diag::{Diagnostic, SourceMap};
pub use eval::{Error, LabelSpec, Layer, LossSpec, LowerOptions, Lowered, Program, Spec, TrainConfig, Value, bytes_text, machine_memory};
pub use parser::parse;
