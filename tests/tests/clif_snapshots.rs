//! The Cranelift IR generated for small models' training steps (what
//! `d2l emit --target clif` prints), at batch 2. A changed snapshot is a
//! change in generated code: check that it was meant.

use d2l::train::{TrainStage, stage_graph};
use d2l_tests::load;

#[test]
fn clif_of_small_training_steps() {
    for (file, model) in [("linear_regression.d2l", "linear_regression"), ("softmax_regression.d2l", "softmax_regression")] {
        let program = load(file);
        let graph = stage_graph(&program, model, TrainStage::Opt, 2, &Default::default()).unwrap_or_else(|e| panic!("{model}: {e}"));
        let listing = d2l_cpu::clif_listing(&graph).unwrap_or_else(|e| panic!("{model}: {e}"));
        insta::assert_snapshot!(format!("clif_{model}"), listing);
    }
}
