//! The graph IR of d2l.
//!
//! A [`Graph`] is a static dataflow graph of a *small* set of primitive ops
//! ([`Op`]). Every node carries its concrete [`Shape`] and [`DType`] (symbolic
//! dimensions such as the batch size `B` are bound before a graph is built)
//! and, where it came from source text, the [`Loc`] of that text.
//!
//! Invariants every pass may rely on:
//! - nodes are appended only after all their operands, so node index order is
//!   a topological order;
//! - the typed constructors in [`build`] are the only way ops enter a graph,
//!   and they check every shape/dtype rule, so a graph is always well typed;
//! - binary ops never broadcast implicitly: broadcasting is an explicit
//!   [`Op::Broadcast`] node, which keeps autodiff and codegen rules simple.

pub mod build;
mod dtype;
mod graph;
mod op;
mod shape;
pub mod text;

pub use build::ShapeError;
pub use dtype::DType;
pub use graph::{Graph, Loc, Node, NodeId, Output, OutputRole};
pub use op::{BinaryOp, CmpOp, Init, InputRole, Op, PoolKind, RandDist, ReduceOp, UnaryOp};
pub use shape::Shape;
