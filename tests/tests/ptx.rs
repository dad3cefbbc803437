//! The PTX backend on every kernel of every model (needs the `gpu`
//! feature: LLVM 19, and NVIDIA's `ptxas`, which `.ci/run` installs from
//! the PyPI wheel `nvidia-cuda-nvcc-cu12`): each model's forward graph and
//! training step become one PTX module per architecture, and the real
//! assembler must accept it (`ptxas -arch=sm_80|sm_90`, no GPU needed).
#![cfg(feature = "gpu")]

use std::path::PathBuf;
use std::process::Command;

use d2l::train::{TrainStage, stage_graph};
use d2l_dsl::LowerOptions;
use d2l_ir::Graph;
use d2l_ptx::Arch;
use d2l_tests::{load, model_files};

/// `PTXAS`, else `ptxas` on the PATH; a missing assembler fails the test.
fn ptxas() -> PathBuf {
    let p = std::env::var_os("PTXAS").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("ptxas"));
    let ok = Command::new(&p).arg("--version").output().is_ok_and(|o| o.status.success());
    assert!(ok, "no ptxas at {} (pip install nvidia-cuda-nvcc-cu12, then set PTXAS to its bin/ptxas)", p.display());
    p
}

/// Assembles the PTX of `graph`'s GPU plan (its loop kernels, and its
/// products, convolutions and routines as loop kernels) for every
/// architecture.
fn assemble(name: &str, graph: &Graph, ptxas: &PathBuf, dir: &tempfile::TempDir) -> usize {
    let plan = d2l_ptx::graph_kernels(graph).unwrap_or_else(|e| panic!("{name}: {e}"));
    let kernels: Vec<(String, &d2l_kernels::kernel::LoopKernel)> = plan.iter().map(|k| (k.name.clone(), k)).collect();
    for arch in Arch::ALL {
        let ptx = d2l_ptx::ptx_module(&kernels, arch).unwrap_or_else(|e| panic!("{name} {}: {e}", arch.name()));
        let file = dir.path().join(format!("{}.{}.ptx", name.replace(' ', "_"), arch.name()));
        std::fs::write(&file, &ptx).expect("temp file");
        let out = Command::new(ptxas).arg(format!("-arch={}", arch.name())).arg(&file).arg("-o").arg(dir.path().join("out.cubin")).output().expect("ptxas runs");
        assert!(out.status.success(), "{name} {}: ptxas rejects the PTX ({}):\n{}", arch.name(), file.display(), String::from_utf8_lossy(&out.stderr));
    }
    kernels.len()
}

#[test]
fn every_model_kernel_assembles_for_sm80_and_sm90() {
    let ptxas = ptxas();
    let dir = tempfile::tempdir().expect("temp dir");
    let mut total = 0;
    for path in model_files() {
        let file = path.file_name().and_then(|f| f.to_str()).expect("utf-8 name").to_string();
        let program = load(&file);
        for model in program.model_names().to_vec() {
            let forward = program.lower(&model, &LowerOptions { default_dim: Some(3), ..LowerOptions::default() }).unwrap_or_else(|e| panic!("{model}: {e}")).graph;
            total += assemble(&format!("{model} forward"), &d2l_passes::simplify(&forward), &ptxas, &dir);
            let step = stage_graph(&program, &model, TrainStage::Opt, 3, &Default::default()).unwrap_or_else(|e| panic!("{model}: {e}"));
            total += assemble(&format!("{model} step"), &step, &ptxas, &dir);
        }
    }
    eprintln!("{total} kernels assembled for {} architectures", Arch::ALL.len());
}

/// The PTX of softmax regression's training step (batch 64, sm_90: its
/// loss and bias gradients are block reductions, warp shuffles and a
/// barrier): a changed snapshot is a change in generated code (or in LLVM).
#[test]
fn ptx_of_softmax_regression_step() {
    let program = load("softmax_regression.d2l");
    let graph = stage_graph(&program, "softmax_regression", TrainStage::Opt, 64, &Default::default()).expect("softmax regression trains");
    let ptx = d2l_ptx::ptx_listing(&graph, Arch::Sm90).expect("PTX");
    insta::assert_snapshot!("ptx_softmax_regression_sm90", ptx);
}

/// Kernel shapes no model has today, assembled too: two reductions over
/// different loops (one accumulates in memory), i64 and bool reductions
/// through block shuffle trees.
#[test]
fn unusual_reductions_assemble() {
    use d2l_ir::{DType, ReduceOp};
    use d2l_kernels::kernel::{Access, Inst, LoopKernel, Store};
    let access = |slot, strides: Vec<i64>| Access { slot, offset: 0, strides };
    let mut partial = LoopKernel::new("partial", vec![4, 5, 70]);
    let x = partial.push(Inst::Load { dtype: DType::F64, access: access(1, vec![350, 70, 1]) });
    partial.stores.push(Store { value: x, dtype: DType::F64, access: access(2, vec![1, 0, 0]), reduce: Some(ReduceOp::Sum) });
    partial.stores.push(Store { value: x, dtype: DType::F64, access: access(3, vec![5, 1, 0]), reduce: Some(ReduceOp::Sum) });
    let mut ints = LoopKernel::new("ints", vec![3, 1000]);
    let i = ints.push(Inst::Load { dtype: DType::I64, access: access(1, vec![1000, 1]) });
    let b = ints.push(Inst::Load { dtype: DType::Bool, access: access(2, vec![1000, 1]) });
    ints.stores.push(Store { value: i, dtype: DType::I64, access: access(3, vec![1, 0]), reduce: Some(ReduceOp::Max) });
    ints.stores.push(Store { value: b, dtype: DType::Bool, access: access(4, vec![1, 0]), reduce: Some(ReduceOp::Sum) });
    let ptxas = ptxas();
    let dir = tempfile::tempdir().expect("temp dir");
    for arch in Arch::ALL {
        let ptx = d2l_ptx::ptx_module(&[("partial".into(), &partial), ("ints".into(), &ints)], arch).expect("PTX");
        assert!(ptx.contains("shfl.sync.down"), "the i64/bool block reductions shuffle");
        let file = dir.path().join(format!("unusual.{}.ptx", arch.name()));
        std::fs::write(&file, &ptx).expect("temp file");
        let out = Command::new(&ptxas).arg(format!("-arch={}", arch.name())).arg(&file).arg("-o").arg(dir.path().join("out.cubin")).output().expect("ptxas runs");
        assert!(out.status.success(), "{}: {}", arch.name(), String::from_utf8_lossy(&out.stderr));
    }
}
