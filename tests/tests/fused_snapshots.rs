//! The kernels fusion makes of every model's training step (what
//! `d2l ir --stage fused` prints), at batch 2. Read a changed snapshot as a
//! change in what runs: which loops exist, what each one stores.

use d2l::train::{TrainStage, stage_graph};
use d2l_passes::fusion::{fuse, text};
use d2l_tests::{load, model_files};

#[test]
fn fused_training_steps() {
    for path in model_files() {
        let file = path.file_name().and_then(|f| f.to_str()).expect("utf-8 file name").to_string();
        let program = load(&file);
        for model in program.model_names().to_vec() {
            let graph = stage_graph(&program, &model, TrainStage::Opt, 2, &Default::default()).unwrap_or_else(|e| panic!("{model}: {e}"));
            insta::assert_snapshot!(format!("fused_{model}"), text(&graph, &fuse(&graph)));
        }
    }
}
