//! Running a graph's GPU plan on an NVIDIA GPU through the CUDA driver
//! (cudarc, with the driver library loaded at run time).
//!
//! `compile` fuses and plans the graph as every backend does, makes its GPU
//! plan (`d2l_kernels::gpu_plan`: every step a loop kernel), generates one
//! PTX module for the device's architecture (`d2l-ptx`; needs LLVM, the
//! root crate's `gpu` feature), loads it, and allocates everything once: the
//! arena of the memory plan, a buffer per feed and output, the status word,
//! and the table of their addresses that every kernel takes as its one
//! argument (uploaded once: shapes and strides are in the code). A run
//! copies the feeds in, launches the kernels in order on one stream (uniform
//! random numbers are computed there from the stream position it uploads;
//! normal ones are drawn on the host), and copies the outputs and the
//! status word out.
//!
//! Not yet run on a GPU: no GPU has been lent to this project's sessions.
//! What is tested here is the path without one (`available` is an error,
//! never a panic); the kernels themselves are tested on the CPU by the grid
//! interpreter and assembled by `ptxas` in CI.

use std::collections::HashMap;
use std::sync::Arc;

use cudarc::driver::{CudaContext, CudaFunction, CudaSlice, CudaStream, DevicePtr, LaunchConfig, PushKernelArg};
use d2l_ir::{DType, Graph, RandDist};
use d2l_kernels::gpu_plan::{GpuPlan, GpuStep, INDEX_OUT_OF_RANGE};
use d2l_kernels::lower::{self, FeedSlot, OutputSlot, Place, Plan};
use d2l_kernels::schedule::GpuSchedule;
use d2l_ptx::Arch;
use d2l_runtime::{Backend, Executable, RunError, Tensor, checked_feed, reused_output};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha12Rng;
use rand_distr::StandardNormal;

#[derive(Debug, thiserror::Error)]
pub enum CudaError {
    #[error("no NVIDIA driver on this machine (libcuda.so could not be loaded)")]
    NoDriver,
    #[error("CUDA device {ordinal} does not exist ({count} found)")]
    NoDevice { ordinal: usize, count: usize },
    #[error("CUDA: {0}")]
    Driver(#[from] cudarc::driver::DriverError),
    #[error(transparent)]
    Ptx(#[from] d2l_ptx::PtxError),
    #[error(transparent)]
    Lower(#[from] d2l_kernels::lower::LowerError),
}

/// How many CUDA devices this machine has; an error (not a panic: cudarc
/// panics when asked without a driver) when it has no driver.
pub fn available() -> Result<usize, CudaError> {
    // SAFETY: only probes whether the driver library loads.
    if !unsafe { cudarc::driver::sys::is_culib_present() } {
        return Err(CudaError::NoDriver);
    }
    Ok(CudaContext::device_count()?.max(0) as usize)
}

/// Graphs compiled for CUDA device `ordinal`.
#[derive(Clone, Copy, Debug)]
pub struct CudaBackend {
    pub ordinal: usize,
}

impl Backend for CudaBackend {
    fn compile(&self, graph: &Graph, seed: u64) -> Result<Box<dyn Executable>, RunError> {
        let program = CudaProgram::compile(graph, seed, self.ordinal).map_err(|e| RunError::Compile { graph: graph.name.clone(), message: e.to_string() })?;
        Ok(Box::new(program))
    }
}

/// A graph ready to run on one device.
pub struct CudaProgram {
    plan: Plan,
    gpu: GpuPlan,
    schedules: Vec<GpuSchedule>,
    stream: Arc<CudaStream>,
    functions: Vec<CudaFunction>,
    arena: CudaSlice<u8>,
    /// Per slot placed outside the arena (feeds, outputs), its buffer.
    buffers: HashMap<usize, CudaSlice<u8>>,
    status: CudaSlice<i64>,
    table: CudaSlice<u64>,
    /// The interpreter's random stream (`StdRng` is ChaCha12): its position
    /// for uniform kernels, its draws for normal numbers.
    rng: ChaCha12Rng,
    /// Host scratch for random numbers and index checks.
    host: Vec<u8>,
    names: Vec<String>,
    ordinal: usize,
}

fn bytes_of(t: &Tensor) -> Option<&[u8]> {
    // SAFETY: plain numbers (bools are bytes) viewed as bytes.
    unsafe fn view<T>(s: &[T]) -> &[u8] {
        unsafe { std::slice::from_raw_parts(s.as_ptr() as *const u8, std::mem::size_of_val(s)) }
    }
    unsafe {
        match t {
            Tensor::F32(a) => a.as_slice().map(|s| view(s)),
            Tensor::F64(a) => a.as_slice().map(|s| view(s)),
            Tensor::I64(a) => a.as_slice().map(|s| view(s)),
            Tensor::Bool(a) => a.as_slice().map(|s| view(s)),
        }
    }
}

fn bytes_of_mut(t: &mut Tensor) -> Option<&mut [u8]> {
    // SAFETY: plain numbers (bools hold 0 or 1, which is all the device writes).
    unsafe fn view<T>(s: &mut [T]) -> &mut [u8] {
        unsafe { std::slice::from_raw_parts_mut(s.as_mut_ptr() as *mut u8, std::mem::size_of_val(s)) }
    }
    unsafe {
        match t {
            Tensor::F32(a) => a.as_slice_mut().map(|s| view(s)),
            Tensor::F64(a) => a.as_slice_mut().map(|s| view(s)),
            Tensor::I64(a) => a.as_slice_mut().map(|s| view(s)),
            Tensor::Bool(a) => a.as_slice_mut().map(|s| view(s)),
        }
    }
}

impl CudaProgram {
    pub fn compile(graph: &Graph, seed: u64, ordinal: usize) -> Result<CudaProgram, CudaError> {
        let count = available()?;
        if ordinal >= count {
            return Err(CudaError::NoDevice { ordinal, count });
        }
        let fusion = d2l_passes::fusion::fuse(graph);
        let plan = lower::plan(graph, &fusion)?;
        let gpu = GpuPlan::of(&plan, seed);
        let ctx = CudaContext::new(ordinal)?;
        let major = ctx.attribute(cudarc::driver::sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR)?;
        let arch = if major >= 9 { Arch::Sm90 } else { Arch::Sm80 };
        let named: Vec<(String, &d2l_kernels::kernel::LoopKernel)> = gpu.kernels.iter().map(|k| (k.name.clone(), k)).collect();
        let ptx = d2l_ptx::ptx_module(&named, arch)?;
        let module = ctx.load_module(cudarc::nvrtc::Ptx::from_src(ptx))?;
        let functions = gpu.kernels.iter().map(|k| module.load_function(&k.name)).collect::<Result<Vec<_>, _>>()?;
        let stream = ctx.default_stream();
        let arena = stream.alloc_zeros::<u8>(gpu.arena_bytes.max(1))?;
        let status = stream.alloc_zeros::<i64>(1)?;
        let mut buffers = HashMap::new();
        for (i, slot) in gpu.slots.iter().enumerate() {
            if matches!(slot.place, Place::Feed(_) | Place::Output(_)) {
                buffers.insert(i, stream.alloc_zeros::<u8>((slot.numel * slot.dtype.size_bytes()).max(1))?);
            }
        }
        let mut addresses = Vec::with_capacity(gpu.slots.len());
        {
            let (arena_base, _a) = arena.device_ptr(&stream);
            let (status_base, _s) = status.device_ptr(&stream);
            for (i, slot) in gpu.slots.iter().enumerate() {
                addresses.push(match slot.place {
                    Place::Status => status_base,
                    Place::Arena(offset) => arena_base + offset as u64,
                    Place::Feed(_) | Place::Output(_) => buffers[&i].device_ptr(&stream).0,
                });
            }
        }
        let table = stream.clone_htod(&addresses)?;
        let schedules = gpu.kernels.iter().map(GpuSchedule::of).collect();
        let names = graph.ids().map(|id| lower::describe(graph, id)).collect();
        Ok(CudaProgram { plan, gpu, schedules, stream, functions, arena, buffers, status, table, rng: ChaCha12Rng::seed_from_u64(seed), host: Vec::new(), names, ordinal })
    }

    pub fn feeds(&self) -> &[FeedSlot] {
        &self.plan.feeds
    }

    pub fn outputs(&self) -> &[OutputSlot] {
        &self.plan.outputs
    }

    fn launch(&self, k: usize) -> Result<(), CudaError> {
        if self.gpu.kernels[k].numel() == 0 {
            return Ok(());
        }
        let s = &self.schedules[k];
        let cfg = LaunchConfig { grid_dim: (s.grid as u32, 1, 1), block_dim: (s.block as u32, 1, 1), shared_mem_bytes: 0 };
        let mut launch = self.stream.launch_builder(&self.functions[k]);
        launch.arg(&self.table);
        // SAFETY: the kernel takes the slot table and touches only the
        // slots' buffers, which this program owns and sized from the plan.
        unsafe { launch.launch(cfg) }?;
        Ok(())
    }

    /// Normal random numbers into `out`'s place in the arena, drawn on the
    /// host as the interpreter draws them.
    fn rand(&mut self, dist: RandDist, out: usize) -> Result<(), CudaError> {
        let slot = &self.gpu.slots[out];
        let (n, dtype) = (slot.numel, slot.dtype);
        let Place::Arena(offset) = slot.place else { unreachable!("random numbers go to the arena") };
        self.host.clear();
        for _ in 0..n {
            match (dist, dtype) {
                (RandDist::Uniform, DType::F32) => self.host.extend(self.rng.random::<f32>().to_ne_bytes()),
                (RandDist::Uniform, _) => self.host.extend(self.rng.random::<f64>().to_ne_bytes()),
                (RandDist::Normal, DType::F32) => self.host.extend(self.rng.sample::<f32, _>(StandardNormal).to_ne_bytes()),
                (RandDist::Normal, _) => self.host.extend(self.rng.sample::<f64, _>(StandardNormal).to_ne_bytes()),
            }
        }
        let mut view = self.arena.slice_mut(offset..offset + self.host.len());
        self.stream.memcpy_htod(&self.host, &mut view)?;
        Ok(())
    }

    fn status_word(&self) -> Result<i64, CudaError> {
        let mut word = [0i64];
        self.stream.memcpy_dtoh(&self.status, &mut word)?;
        Ok(word[0])
    }

    /// Runs the steps; returns the status word.
    fn steps(&mut self, check_each: bool) -> Result<Option<(usize, i64)>, CudaError> {
        self.stream.memset_zeros(&mut self.status)?;
        for s in 0..self.gpu.steps.len() {
            match self.gpu.steps[s] {
                GpuStep::Kernel { kernel, .. } => self.launch(kernel)?,
                GpuStep::Rand { dist, out, .. } => self.rand(dist, out)?,
                GpuStep::StreamPosition { slot, words } => {
                    let at = self.rng.get_word_pos();
                    let Place::Arena(offset) = self.gpu.slots[slot].place else { unreachable!("a scratch slot") };
                    let mut view = self.arena.slice_mut(offset..offset + 8);
                    self.stream.memcpy_htod(&(at as i64).to_ne_bytes(), &mut view)?;
                    self.rng.set_word_pos(at + words as u128);
                }
            }
            if check_each {
                let status = self.status_word()?;
                if status != 0 {
                    return Ok(Some((s, status)));
                }
            }
        }
        let status = self.status_word()?;
        Ok((status != 0).then_some((self.gpu.steps.len(), status)))
    }

    /// The error a kernel reported: the step is found by running again
    /// with a check after each (only on this rare path).
    fn report(&mut self) -> Result<RunError, CudaError> {
        let Some((s, status)) = self.steps(true)? else {
            return Ok(RunError::Device { device: format!("cuda:{}", self.ordinal), message: "a kernel reported an error that did not recur".into() });
        };
        let GpuStep::Kernel { node, indices, .. } = self.gpu.steps[s].clone() else { unreachable!("only kernels report") };
        let node = self.names[node.index()].clone();
        if status & INDEX_OUT_OF_RANGE != 0
            && let Some((slot, count, size)) = indices
        {
            let Place::Arena(offset) = self.gpu.slots[slot].place else {
                let buf = &self.buffers[&slot];
                let idx: Vec<u8> = self.stream.clone_dtoh(buf)?;
                return Ok(out_of_range(node, &idx, count, size));
            };
            let idx: Vec<u8> = self.stream.clone_dtoh(&self.arena.slice(offset..offset + count * 8))?;
            return Ok(out_of_range(node, &idx, count, size));
        }
        Ok(RunError::DivisionByZero { node })
    }
}

fn out_of_range(node: String, bytes: &[u8], count: usize, size: usize) -> RunError {
    let index = bytes.chunks_exact(8).take(count).map(|b| i64::from_ne_bytes(b.try_into().expect("8 bytes"))).find(|&i| i < 0 || i >= size as i64).unwrap_or(0);
    RunError::IndexOutOfRange { node, index, size }
}

impl Executable for CudaProgram {
    fn run(&mut self, feeds: &HashMap<String, Tensor>) -> Result<Vec<(String, Tensor)>, RunError> {
        let mut outputs = Vec::new();
        self.run_into(feeds, &mut outputs)?;
        Ok(outputs)
    }

    fn run_into(&mut self, feeds: &HashMap<String, Tensor>, outputs: &mut Vec<(String, Tensor)>) -> Result<(), RunError> {
        let device = format!("cuda:{}", self.ordinal);
        let cuda = |e: CudaError| RunError::Device { device: device.clone(), message: e.to_string() };
        for f in &self.plan.feeds {
            let t = checked_feed(feeds, &f.name, f.is_param, f.dtype, f.shape.dims())?;
            let staged;
            let bytes = match bytes_of(t) {
                Some(b) => b,
                None => {
                    staged = t.cast(t.dtype());
                    bytes_of(&staged).expect("a fresh tensor is row-major")
                }
            };
            let buf = self.buffers.get_mut(&f.slot).expect("every feed has a buffer");
            let mut view = buf.slice_mut(0..bytes.len());
            self.stream.memcpy_htod(bytes, &mut view).map_err(|e| cuda(e.into()))?;
        }
        if self.steps(false).map_err(cuda)?.is_some() {
            return Err(self.report().map_err(cuda)?);
        }
        outputs.truncate(self.plan.outputs.len());
        for (i, spec) in self.plan.outputs.iter().enumerate() {
            let t = reused_output(outputs, i, &spec.name, spec.dtype, spec.shape.dims());
            let dst = bytes_of_mut(t).expect("row-major output");
            let n = dst.len();
            let src = self.buffers[&spec.slot].slice(0..n);
            self.stream.memcpy_dtoh(&src, dst).map_err(|e| cuda(e.into()))?;
        }
        self.stream.synchronize().map_err(|e| cuda(e.into()))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Without a driver (CI, most machines) asking for a device is an
    /// error that says so, not a panic; with one, the count is real.
    #[test]
    fn asking_for_a_device_never_panics() {
        match available() {
            Err(e) => assert_eq!(e.to_string(), "no NVIDIA driver on this machine (libcuda.so could not be loaded)"),
            Ok(count) => {
                let err = CudaProgram::compile(&Graph::new("g"), 0, count).err().expect("no device past the last");
                assert!(matches!(err, CudaError::NoDevice { .. }), "{err}");
            }
        }
        let mut g = Graph::new("g");
        let x = g.input("x", DType::F32, d2l_ir::Shape(vec![4]));
        g.set_output("y", x);
        if available().is_err() {
            let err = CudaBackend { ordinal: 0 }.compile(&g, 0).err().expect("no driver, no program");
            assert!(err.to_string().contains("no NVIDIA driver"), "{err}");
        }
    }
}
