//! The kernels fusion makes of every model's training step (what
//! `d2l ir --stage fused` prints), at batch 2. Read a changed snapshot as a
//! change in what runs: which loops exist, what each one stores. Every
//! kernel must read only what earlier kernels wrote.

use d2l::train::{TrainStage, stage_graph};
use d2l_passes::fusion::{Fusion, Value, fuse, text};
use d2l_tests::{load, model_files};

#[test]
fn fused_training_steps() {
    for path in model_files() {
        let file = path.file_name().and_then(|f| f.to_str()).expect("utf-8 file name").to_string();
        let program = load(&file);
        for model in program.model_names().to_vec() {
            let graph = stage_graph(&program, &model, TrainStage::Opt, 2, &Default::default()).unwrap_or_else(|e| panic!("{model}: {e}"));
            let fusion = fuse(&graph);
            assert_kernels_in_order(&model, &graph, &fusion);
            insta::assert_snapshot!(format!("fused_{model}"), text(&graph, &fusion));
        }
    }
}

/// Every buffer a kernel reads is written by an earlier kernel (or fed).
fn assert_kernels_in_order(what: &str, graph: &d2l_ir::Graph, fusion: &Fusion) {
    let count: usize = graph.ids().filter(|&id| !matches!(fusion.value(id), Value::Unused)).count();
    assert!(count > 0, "{what}: nothing fused");
    for k in 0..fusion.kernels.len() {
        for base in fusion.reads(graph, k) {
            match fusion.value(base) {
                Value::Root { kernel } | Value::Loop { kernel, stored: true } => {
                    assert!(*kernel < k || fusion.is_in(k, base), "{what}: kernel {k} reads %{} of kernel {kernel}", base.index())
                }
                Value::Feed => {}
                other => panic!("{what}: kernel {k} reads %{}, which is {other:?}", base.index()),
            }
        }
    }
}

#[test]
fn kernels_are_ordered_when_a_loop_holds_what_another_waits_for() {
    // A kernel is more than a node: the mask's loop computes both the
    // masked sum (which needs the reduction over exp(w)) and the 0/1 mask
    // the gradient's loop over exp(w) reads, so that loop may not absorb
    // the gradient (it once did, and the kernels could not be ordered).
    let src = "model m(src: i64[B, T], dec_in: i64[B, T]) -> f32[B, T, 5] {\n    param W: f32[B, T, 5] = zeros\n    return W\n}\nblock l(p: f32[B, T, V], label: i64[B, T], n) {\n    return sum(sequence_mask(sum(exp(p), -1), n))\n}\ntrain m {\n    data = fra_eng(batch=4, steps=3)\n    loss = l\n    optimizer = sgd(lr=0.01)\n}\n";
    let program = d2l_dsl::Program::load("mask.d2l", src, None).unwrap_or_else(|e| panic!("{e}"));
    let graph = stage_graph(&program, "m", TrainStage::Opt, 2, &Default::default()).unwrap();
    assert_kernels_in_order("masked sum of exp", &graph, &fuse(&graph));
}
