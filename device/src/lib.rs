//! Where graphs run. A [`Device`] names a machine and the backend that
//! compiles graphs for it; everything above this crate (the training
//! library, the facade, the command line) chooses through it, and
//! everything below knows only the runtime's [`Backend`] trait. The host
//! CPU has three backends: the Cranelift JIT (`d2l-cpu`, the default), the
//! reference interpreter (`d2l-runtime`), and the grid interpreter of GPU
//! plans (`d2l-cpu`); NVIDIA GPUs run through `d2l-cuda` (feature `cuda`).

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
    /// NVIDIA GPU number `n`: the graph's GPU plan as PTX, run through the
    /// CUDA driver (`d2l-cuda`; a build with the `cuda` feature, which the
    /// root crate's `gpu` feature turns on). Not yet run on a GPU.
    Cuda(usize),
}

/// Most CUDA devices a process addresses (their backends are statics).
pub const MAX_CUDA_DEVICES: usize = 16;

#[cfg(feature = "cuda")]
static CUDA: [d2l_cuda::CudaBackend; MAX_CUDA_DEVICES] = {
    let mut all = [d2l_cuda::CudaBackend { ordinal: 0 }; MAX_CUDA_DEVICES];
    let mut i = 0;
    while i < MAX_CUDA_DEVICES {
        all[i].ordinal = i;
        i += 1;
    }
    all
};

/// A device this build or machine cannot use: compiling for it fails, saying why.
struct Unavailable(&'static str);

impl Backend for Unavailable {
    fn compile(&self, _graph: &Graph, _seed: u64) -> Result<Box<dyn Executable>, RunError> {
        Err(RunError::Device { device: "cuda".into(), message: self.0.into() })
    }
}

#[cfg(not(feature = "cuda"))]
static NOT_BUILT: Unavailable = Unavailable("this d2l was built without GPU support; rebuild with `cargo build --release --features gpu` (needs LLVM 19, see the README)");
#[cfg(feature = "cuda")]
static TOO_MANY: Unavailable = Unavailable("no such CUDA device number (at most 16)");

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
            #[cfg(feature = "cuda")]
            Device::Cuda(n) => CUDA.get(n).map_or(&TOO_MANY as &dyn Backend, |b| b as &dyn Backend),
            #[cfg(not(feature = "cuda"))]
            Device::Cuda(_) => &NOT_BUILT,
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
            Device::Cuda(_) => "cuda",
        }
    }
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Device::Cpu(_) => write!(f, "cpu ({})", self.name()),
            Device::Cuda(n) => write!(f, "cuda:{n}"),
        }
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
