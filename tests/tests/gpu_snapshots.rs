//! The LLVM IR the PTX backend generates for small models' training steps
//! (what `d2l emit --target llvm` prints), at batch 2: each loop kernel as
//! its GPU schedule lays it out (grid-stride loops, a thread's serial
//! reduction, a block's shuffle tree). Text built without LLVM, so this
//! runs in the default build; `tests/ptx.rs` (feature `gpu`) snapshots the
//! PTX and assembles every model's kernels. A changed snapshot is a change
//! in generated code: check that it was meant.

use d2l::train::{TrainStage, stage_graph};
use d2l_tests::load;

#[test]
fn llvm_ir_of_small_training_steps() {
    for (file, model) in [("linear_regression.d2l", "linear_regression"), ("softmax_regression.d2l", "softmax_regression")] {
        let program = load(file);
        let graph = stage_graph(&program, model, TrainStage::Opt, 2, &Default::default()).unwrap_or_else(|e| panic!("{model}: {e}"));
        let listing = d2l_ptx::llvm_listing(&graph).unwrap_or_else(|e| panic!("{model}: {e}"));
        insta::assert_snapshot!(format!("llvm_{model}"), listing);
    }
}
