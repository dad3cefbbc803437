//! The NVIDIA GPU code generator: a plan's loop kernels as PTX.
//!
//! - [`llvm_ir`]: each [`LoopKernel`] as an LLVM IR function laid out by its
//!   GPU schedule (`d2l_kernels::schedule`); plain text, built without LLVM.
//! - `nvptx` (cargo feature `llvm`): that text through LLVM 19's NVPTX
//!   backend to PTX for sm_80 or sm_90, with libdevice linked in when a
//!   kernel calls it (f64 transcendentals, sin, cos, pow).
//!
//! The kernels are a GPU plan's (`d2l_kernels::gpu_plan`): the fused loops,
//! and matrix products, convolutions and routines as loop kernels too.
//! Random numbers are drawn on the host; running on a GPU (cudarc) is not
//! built yet.

pub mod llvm_ir;
#[cfg(feature = "llvm")]
mod nvptx;

use std::path::{Path, PathBuf};

use d2l_kernels::kernel::LoopKernel;

/// The GPU architectures PTX is generated for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arch {
    /// A100 (Ampere).
    Sm80,
    /// H100 and H200 (Hopper).
    Sm90,
}

impl Arch {
    pub const ALL: [Arch; 2] = [Arch::Sm80, Arch::Sm90];

    pub fn name(self) -> &'static str {
        match self {
            Arch::Sm80 => "sm_80",
            Arch::Sm90 => "sm_90",
        }
    }

    /// The oldest PTX ISA the architecture accepts: the widest range of
    /// drivers loads it (7.0 needs CUDA 11.0, 7.8 CUDA 11.8).
    pub fn ptx_feature(self) -> &'static str {
        match self {
            Arch::Sm80 => "+ptx70",
            Arch::Sm90 => "+ptx78",
        }
    }

    pub fn parse(s: &str) -> Option<Arch> {
        Arch::ALL.into_iter().find(|a| a.name() == s)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PtxError {
    #[error(transparent)]
    Lower(#[from] d2l_kernels::lower::LowerError),
    #[error("this d2l was built without the PTX backend; rebuild with `cargo build --release --features gpu` (needs LLVM 19: apt-get install llvm-19-dev libpolly-19-dev libzstd-dev)")]
    NotBuilt,
    #[error("LLVM: {0}")]
    Llvm(String),
    #[error(
        "a kernel calls libdevice (f64 exp/log/tanh, sin, cos or pow), and no libdevice.10.bc was found; set D2L_LIBDEVICE to its path (it ships with CUDA in nvvm/libdevice/, and in the PyPI wheel nvidia-cuda-nvcc-cu12)"
    )]
    NoLibdevice,
    #[error("libdevice: {0}")]
    Libdevice(String),
}

/// Where libdevice is: `D2L_LIBDEVICE`, else CUDA's usual places, else a
/// Python environment's `nvidia-cuda-nvcc-cu12` wheel on this machine.
pub fn find_libdevice() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("D2L_LIBDEVICE") {
        return Some(PathBuf::from(p));
    }
    let mut candidates: Vec<PathBuf> = ["/usr/local/cuda/nvvm/libdevice/libdevice.10.bc", "/usr/lib/nvidia-cuda-toolkit/libdevice/libdevice.10.bc"].iter().map(PathBuf::from).collect();
    if let Some(home) = std::env::var_os("CUDA_HOME") {
        candidates.insert(0, Path::new(&home).join("nvvm/libdevice/libdevice.10.bc"));
    }
    candidates.into_iter().find(|p| p.is_file())
}

/// The kernels a GPU runs for `graph`: its plan (fused and planned as on
/// every backend) as a GPU plan, every step a loop kernel (random numbers
/// keyed by seed 0).
pub fn graph_kernels(graph: &d2l_ir::Graph) -> Result<Vec<LoopKernel>, PtxError> {
    let fusion = d2l_passes::fusion::fuse(graph);
    let plan = d2l_kernels::lower::plan(graph, &fusion)?;
    Ok(d2l_kernels::gpu_plan::GpuPlan::of(&plan, 0).kernels)
}

/// `graph`'s loop kernels as LLVM IR for NVPTX (`d2l emit --target llvm`):
/// per kernel, its GPU schedule and loop-level form as comments, then the
/// function.
pub fn llvm_listing(graph: &d2l_ir::Graph) -> Result<String, PtxError> {
    let kernels = graph_kernels(graph)?;
    Ok(llvm_module(&kernels.iter().map(|k| (k.name.clone(), k)).collect::<Vec<_>>()))
}

/// `graph`'s loop kernels as one PTX module for `arch` (`d2l emit --target ptx`).
pub fn ptx_listing(graph: &d2l_ir::Graph, arch: Arch) -> Result<String, PtxError> {
    let kernels = graph_kernels(graph)?;
    ptx_module(&kernels.iter().map(|k| (k.name.clone(), k)).collect::<Vec<_>>(), arch)
}

/// LLVM IR (text) for `kernels`, each a kernel function of its name.
pub fn llvm_module(kernels: &[(String, &LoopKernel)]) -> String {
    llvm_ir::module(kernels).0
}

/// PTX for `kernels` on `arch`.
pub fn ptx_module(kernels: &[(String, &LoopKernel)], arch: Arch) -> Result<String, PtxError> {
    let (ir, needs_libdevice) = llvm_ir::module(kernels);
    let libdevice = if needs_libdevice { Some(find_libdevice().ok_or(PtxError::NoLibdevice)?) } else { None };
    compile(&ir, libdevice.as_deref(), arch)
}

#[cfg(feature = "llvm")]
fn compile(ir: &str, libdevice: Option<&Path>, arch: Arch) -> Result<String, PtxError> {
    nvptx::compile(ir, libdevice, arch)
}

#[cfg(not(feature = "llvm"))]
fn compile(_ir: &str, _libdevice: Option<&Path>, _arch: Arch) -> Result<String, PtxError> {
    Err(PtxError::NotBuilt)
}
