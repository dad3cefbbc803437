//! A compiled [`Program`] as the runtime's [`Executable`]: feeds and
//! outputs checked against the program's types, then passed as pointers.

use std::collections::HashMap;

use d2l_ir::Graph;
use d2l_kernels::lower::{FeedSlot, OutputSlot};
use d2l_runtime::{Backend, Executable, RunError, Tensor, checked_feed, reused_output};

use crate::grid_exec::GridProgram;
use crate::{ExecError, Loops, Program};

/// The Cranelift JIT as a backend: fused kernels, GEMMs for matmul and
/// convolution, one preallocated arena per graph.
#[derive(Clone, Copy, Debug, Default)]
pub struct JitBackend;

impl Backend for JitBackend {
    fn compile(&self, graph: &Graph, seed: u64) -> Result<Box<dyn Executable>, RunError> {
        Ok(Box::new(Jitted::compile(graph, seed)?))
    }
}

/// A graph's GPU plan (every step a loop kernel) run by the grid
/// interpreter: what a GPU would compute, on the CPU, slowly.
#[derive(Clone, Copy, Debug, Default)]
pub struct GridBackend;

impl Backend for GridBackend {
    fn compile(&self, graph: &Graph, seed: u64) -> Result<Box<dyn Executable>, RunError> {
        let program = GridProgram::compile(graph, seed).map_err(|e| RunError::Compile { graph: graph.name.clone(), message: e.to_string() })?;
        let (feeds, outputs) = (program.feeds().len(), program.outputs().len());
        Ok(Box::new(Gridded { program, bound: Bound::new(feeds, outputs) }))
    }
}

/// A GPU plan on the grid interpreter, as an `Executable`.
struct Gridded {
    program: GridProgram,
    bound: Bound,
}

impl Executable for Gridded {
    fn run(&mut self, feeds: &HashMap<String, Tensor>) -> Result<Vec<(String, Tensor)>, RunError> {
        let mut outputs = Vec::new();
        self.run_into(feeds, &mut outputs)?;
        Ok(outputs)
    }

    fn run_into(&mut self, feeds: &HashMap<String, Tensor>, outputs: &mut Vec<(String, Tensor)>) -> Result<(), RunError> {
        self.bound.bind(self.program.feeds(), self.program.outputs(), feeds, outputs)?;
        // SAFETY: `bind` checked every pointer against the program's types.
        let result = unsafe { self.program.run(&self.bound.feed_ptrs, &self.bound.output_ptrs) };
        result.map_err(run_error)
    }
}

/// A graph compiled by the JIT, with the pointer arrays it is called with.
pub struct Jitted {
    program: Program,
    bound: Bound,
}

/// The pointer arrays a compiled program is called with, and row-major
/// copies of feeds that arrive in another layout.
struct Bound {
    feed_ptrs: Vec<*const u8>,
    output_ptrs: Vec<*mut u8>,
    staged: Vec<Option<Tensor>>,
}

// SAFETY: the pointer arrays are scratch filled and used within one call.
unsafe impl Send for Bound {}

fn run_error(e: ExecError) -> RunError {
    match e {
        ExecError::IndexOutOfRange { node, index, size } => RunError::IndexOutOfRange { node, index, size },
        ExecError::DivisionByZero { node } => RunError::DivisionByZero { node },
    }
}

impl Bound {
    fn new(feeds: usize, outputs: usize) -> Bound {
        Bound { feed_ptrs: vec![std::ptr::null(); feeds], output_ptrs: vec![std::ptr::null_mut(); outputs], staged: vec![None; feeds] }
    }

    /// Checks `feeds` against the program's and points at them (or at
    /// row-major copies); makes `outputs` the program's outputs (reusing
    /// the tensors that fit) and points at them.
    fn bind(&mut self, specs: &[FeedSlot], outs: &[OutputSlot], feeds: &HashMap<String, Tensor>, outputs: &mut Vec<(String, Tensor)>) -> Result<(), RunError> {
        for (i, f) in specs.iter().enumerate() {
            let t = checked_feed(feeds, &f.name, f.is_param, f.dtype, f.shape.dims())?;
            self.feed_ptrs[i] = match data_ptr(t) {
                Some(p) => p,
                None => {
                    // A transposed or sliced feed: run on a row-major copy.
                    let copy = self.staged[i].insert(t.cast(t.dtype()));
                    data_ptr(copy).unwrap_or(std::ptr::null())
                }
            };
        }
        outputs.truncate(outs.len());
        for (i, spec) in outs.iter().enumerate() {
            let t = reused_output(outputs, i, &spec.name, spec.dtype, spec.shape.dims());
            self.output_ptrs[i] = data_ptr_mut(t).unwrap_or(std::ptr::null_mut());
        }
        Ok(())
    }
}

fn data_ptr(t: &Tensor) -> Option<*const u8> {
    match t {
        Tensor::F32(a) => a.as_slice().map(|s| s.as_ptr() as *const u8),
        Tensor::F64(a) => a.as_slice().map(|s| s.as_ptr() as *const u8),
        Tensor::I64(a) => a.as_slice().map(|s| s.as_ptr() as *const u8),
        Tensor::Bool(a) => a.as_slice().map(|s| s.as_ptr() as *const u8),
    }
}

fn data_ptr_mut(t: &mut Tensor) -> Option<*mut u8> {
    match t {
        Tensor::F32(a) => a.as_slice_mut().map(|s| s.as_mut_ptr() as *mut u8),
        Tensor::F64(a) => a.as_slice_mut().map(|s| s.as_mut_ptr() as *mut u8),
        Tensor::I64(a) => a.as_slice_mut().map(|s| s.as_mut_ptr() as *mut u8),
        Tensor::Bool(a) => a.as_slice_mut().map(|s| s.as_mut_ptr() as *mut u8),
    }
}

impl Jitted {
    pub fn compile(graph: &Graph, seed: u64) -> Result<Jitted, RunError> {
        Jitted::compile_with(graph, seed, Loops::Jit)
    }

    pub fn compile_with(graph: &Graph, seed: u64, loops: Loops) -> Result<Jitted, RunError> {
        let program = Program::compile_with(graph, seed, loops).map_err(|e| RunError::Compile { graph: graph.name.clone(), message: e.to_string() })?;
        let (feeds, outputs) = (program.feeds().len(), program.outputs().len());
        Ok(Jitted { program, bound: Bound::new(feeds, outputs) })
    }

    pub fn program(&self) -> &Program {
        &self.program
    }

    pub fn program_mut(&mut self) -> &mut Program {
        &mut self.program
    }
}

impl Executable for Jitted {
    fn run(&mut self, feeds: &HashMap<String, Tensor>) -> Result<Vec<(String, Tensor)>, RunError> {
        let mut outputs = Vec::new();
        self.run_into(feeds, &mut outputs)?;
        Ok(outputs)
    }

    fn run_into(&mut self, feeds: &HashMap<String, Tensor>, outputs: &mut Vec<(String, Tensor)>) -> Result<(), RunError> {
        self.bound.bind(self.program.feeds(), self.program.outputs(), feeds, outputs)?;
        // SAFETY: every pointer was checked above against the program's
        // dtypes and shapes, outputs are distinct fresh or owned tensors, and
        // all of them outlive the call.
        let result = unsafe { self.program.run(&self.bound.feed_ptrs, &self.bound.output_ptrs) };
        result.map_err(run_error)
    }
}
