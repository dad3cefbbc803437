//! Where graphs run. A [`Device`] names a machine and the backend that
//! compiles graphs for it; everything above this crate (the training
//! library, the facade, the command line) chooses through it, and
//! everything below knows only the runtime's [`Backend`] trait. The host
//! CPU has two backends: the Cranelift JIT (`d2l-cpu`, the default) and
//! the reference interpreter (`d2l-runtime`). A GPU backend (PTX through
//! LLVM) would be a crate beside `d2l-cpu` and a variant here.

use std::fmt;

use d2l_cpu::{GridBackend, JitBackend};
use d2l_ir::Graph;
use d2l_runtime::{Backend, Executable, InterpreterBackend, RunError};

/// How graphs run on the host CPU.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum CpuBackend {
    /// Fused kernels compiled by Cranelift, GEMMs for matmul and
    /// convolution, one preallocated arena per graph.
    #[default]
    Jit,
    /// The reference interpreter (ndarray): every primitive, no
    /// compilation; the oracle the JIT is tested against.
    Interpreter,
    /// The graph's GPU plan (every step a loop kernel, matrix products and
    /// convolutions included) executed as a GPU would run it (grid, blocks,
    /// warps, reduction trees), one thread at a time: slow; it tests the
    /// GPU code where there is no GPU.
    Grid,
}

/// Where graphs run, and through which backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Device {
    Cpu(CpuBackend),
}

impl Default for Device {
    fn default() -> Device {
        Device::JIT
    }
}

impl Device {
    /// The host CPU through the JIT (the default).
    pub const JIT: Device = Device::Cpu(CpuBackend::Jit);
    /// The host CPU through the reference interpreter.
    pub const INTERPRETER: Device = Device::Cpu(CpuBackend::Interpreter);
    /// The host CPU, the GPU plan through the grid interpreter.
    pub const GRID: Device = Device::Cpu(CpuBackend::Grid);

    /// The backend that compiles graphs for this device.
    pub fn backend(self) -> &'static dyn Backend {
        match self {
            Device::Cpu(CpuBackend::Jit) => &JitBackend,
            Device::Cpu(CpuBackend::Interpreter) => &InterpreterBackend,
            Device::Cpu(CpuBackend::Grid) => &GridBackend,
        }
    }

    /// Prepares `graph` for repeated execution here; `seed` seeds its random ops.
    pub fn compile(self, graph: &Graph, seed: u64) -> Result<Box<dyn Executable>, RunError> {
        self.backend().compile(graph, seed)
    }

    /// The backend's short name, as the command line's `--backend` spells
    /// it and benchmark reports record it.
    pub fn name(self) -> &'static str {
        match self {
            Device::Cpu(CpuBackend::Jit) => "jit",
            Device::Cpu(CpuBackend::Interpreter) => "interp",
            Device::Cpu(CpuBackend::Grid) => "grid",
        }
    }
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "cpu ({})", self.name())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use d2l_ir::{BinaryOp, DType, Graph, Shape, UnaryOp};
    use d2l_runtime::Tensor;

    use super::*;

    /// Both host backends run a graph through the same seam, to the same values.
    #[test]
    fn every_cpu_backend_compiles_and_runs_a_graph() {
        let mut g = Graph::new("g");
        let x = g.input("x", DType::F32, Shape(vec![2, 20]));
        let t = g.unary(UnaryOp::Tanh, x).unwrap();
        let y = g.binary(BinaryOp::Mul, t, x).unwrap();
        g.set_output("y", y);
        let feeds = HashMap::from([("x".to_string(), Tensor::from_f32(&[2, 20], (0..40).map(|i| i as f32 / 10.0 - 2.0).collect()))]);
        let want: Vec<f64> = (0..40).map(|i| i as f64 / 10.0 - 2.0).map(|v| (v.tanh() * v) as f32 as f64).collect();
        for device in [Device::JIT, Device::INTERPRETER, Device::GRID, Device::default()] {
            let out = device.compile(&g, 0).unwrap().run(&feeds).unwrap();
            assert_eq!(out[0].0, "y");
            for (got, want) in out[0].1.to_f64_vec().iter().zip(&want) {
                assert!((got - want).abs() < 1e-6, "{device}: {got} vs {want}");
            }
        }
        assert_eq!((Device::JIT.name(), Device::INTERPRETER.name(), Device::default()), ("jit", "interp", Device::JIT));
    }
}
