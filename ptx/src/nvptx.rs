//! LLVM IR text to PTX through LLVM 19's NVPTX backend (the `llvm`
//! feature): parse, link the libdevice functions a module calls, keep only
//! the kernels visible, optimise, and print PTX for the target.

use std::path::Path;

use inkwell::OptimizationLevel;
use inkwell::context::Context;
use inkwell::memory_buffer::MemoryBuffer;
use inkwell::module::{Linkage, Module};
use inkwell::passes::PassBuilderOptions;
use inkwell::targets::{CodeModel, FileType, InitializationConfig, RelocMode, Target, TargetMachine, TargetTriple};

use crate::{Arch, PtxError};

fn machine(arch: Arch) -> Result<TargetMachine, PtxError> {
    Target::initialize_nvptx(&InitializationConfig::default());
    let triple = TargetTriple::create("nvptx64-nvidia-cuda");
    let target = Target::from_triple(&triple).map_err(|e| PtxError::Llvm(e.to_string()))?;
    target
        .create_target_machine(&triple, arch.name(), arch.ptx_feature(), OptimizationLevel::Aggressive, RelocMode::Default, CodeModel::Default)
        .ok_or_else(|| PtxError::Llvm(format!("LLVM has no NVPTX target machine for {}", arch.name())))
}

/// Every function defined in `m` but the kernels becomes internal, so that
/// the optimiser drops the libdevice functions no kernel calls.
fn internalize(m: &Module) {
    let mut f = m.get_first_function();
    while let Some(func) = f {
        if func.count_basic_blocks() > 0 && func.get_call_conventions() != 71 {
            func.set_linkage(Linkage::Internal);
        }
        f = func.get_next_function();
    }
}

pub fn compile(ir: &str, libdevice: Option<&Path>, arch: Arch) -> Result<String, PtxError> {
    let context = Context::create();
    let buffer = MemoryBuffer::create_from_memory_range_copy(ir.as_bytes(), "d2l");
    let module = context.create_module_from_ir(buffer).map_err(|e| PtxError::Llvm(format!("generated IR does not parse: {e}")))?;
    let tm = machine(arch)?;
    module.set_data_layout(&tm.get_target_data().get_data_layout());
    if let Some(path) = libdevice {
        let lib = Module::parse_bitcode_from_path(path, &context).map_err(|e| PtxError::Libdevice(format!("{}: {e}", path.display())))?;
        lib.set_data_layout(&tm.get_target_data().get_data_layout());
        lib.set_triple(&TargetTriple::create("nvptx64-nvidia-cuda"));
        module.link_in_module(lib).map_err(|e| PtxError::Libdevice(e.to_string()))?;
        internalize(&module);
    }
    module.verify().map_err(|e| PtxError::Llvm(format!("generated IR is invalid: {e}")))?;
    module.run_passes("default<O2>", &tm, PassBuilderOptions::create()).map_err(|e| PtxError::Llvm(e.to_string()))?;
    let ptx = tm.write_to_memory_buffer(&module, FileType::Assembly).map_err(|e| PtxError::Llvm(e.to_string()))?;
    Ok(String::from_utf8_lossy(ptx.as_slice()).into_owned())
}
