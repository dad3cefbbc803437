//! A JIT-compiled training step allocates nothing once warmed up: buffers
//! are planned at compile time and outputs reuse the previous step's
//! tensors. Proved with a counting global allocator (this test binary's
//! own), on the compiled step alone and on the whole training loop.

use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};

use d2l::train::{TrainOptions, TrainStage, prepare, stage_graph};
use d2l_ir::{DType, Op};
use d2l_runtime::data::BatchOptions;
use d2l_runtime::train::Silent;
use d2l::Device;
use d2l_runtime::{Tensor, init_params};
use d2l_tests::load;

struct Counting;

static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards to the system allocator, counting calls.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocations() -> usize {
    ALLOCATIONS.load(Ordering::Relaxed)
}

/// The counter is global: tests that read it take turns.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// The fewest allocations `f` made over three runs. The counter also sees
/// the test harness's own thread, which allocates now and then (to say a
/// waiting test has run for over 60 s, on a loaded machine); an allocation
/// of the code under test happens on every run.
fn fewest_allocations(mut f: impl FnMut()) -> usize {
    (0..3)
        .map(|_| {
            let before = allocations();
            f();
            allocations() - before
        })
        .min()
        .expect("three runs")
}

/// Feeds for a step graph: initial parameters, zero state, constant data.
fn feeds(graph: &d2l_ir::Graph) -> HashMap<String, Tensor> {
    let mut feeds = init_params(graph, 3);
    for id in graph.ids() {
        let node = graph.node(id);
        if let Op::Input { name, .. } = &node.op {
            let t = match node.dtype {
                DType::I64 => Tensor::from_i64(node.shape.dims(), vec![1; node.shape.numel()]),
                d => Tensor::zeros(d, node.shape.dims()),
            };
            feeds.insert(name.clone(), t);
        }
    }
    feeds
}

#[test]
fn a_compiled_training_step_allocates_nothing() {
    let _turn = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    // Matmul and convolution GEMMs (split over threads), epilogues,
    // reductions, routines (pad, pooling), random numbers (dropout), the
    // direct convolution kernels (LeNets), convolutions batched over images
    // and by phase (ResNet), wide loops, gather, scatter_add and concats
    // split over threads (the GRU language model).
    let models = [
        ("mlp.d2l", "mlp", 64),
        ("mlp.d2l", "mlp_dropout", 32),
        ("lenet.d2l", "lenet", 16),
        ("batchnorm_lenet.d2l", "batchnorm_lenet_concise", 16),
        ("resnet.d2l", "resnet18", 2),
        ("softmax_regression.d2l", "softmax_regression", 256),
        ("gru.d2l", "gru_concise", 32),
    ];
    for (file, model, batch) in models {
        let program = load(file);
        let graph = stage_graph(&program, model, TrainStage::Opt, batch, &Default::default()).unwrap_or_else(|e| panic!("{model}: {e}"));
        let mut exe = Device::JIT.compile(&graph, 0).unwrap_or_else(|e| panic!("{model}: {e}"));
        let mut feeds = feeds(&graph);
        let mut outputs = Vec::new();
        let mut step = |feeds: &mut HashMap<String, Tensor>, outputs: &mut Vec<(String, Tensor)>| {
            exe.run_into(feeds, outputs).unwrap_or_else(|e| panic!("{model}: {e}"));
            d2l_runtime::apply_updates(&graph, outputs, feeds);
        };
        for _ in 0..3 {
            step(&mut feeds, &mut outputs);
        }
        let fewest = fewest_allocations(|| {
            for _ in 0..5 {
                step(&mut feeds, &mut outputs);
            }
        });
        assert_eq!(fewest, 0, "{model}: allocations in 5 steady-state steps");
    }
}

#[test]
fn the_training_loop_allocates_per_epoch_not_per_step() {
    let _turn = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let program = load("linear_regression.d2l");
    let opts = TrainOptions { device: Device::JIT, ..TrainOptions::default() };
    let mut run = prepare(&program, "linear_regression", &opts).unwrap_or_else(|e| panic!("{e}"));
    // The train block's data: 1,000 examples in batches of 10.
    let (x, y) = d2l_runtime::data::synthetic_data(&[2.0, -3.4], 4.2, 1000, 1);
    let full = d2l_runtime::data::TensorDataset::new(x, y).unwrap();
    let tenth = full.select(&(0..full.len() / 10).collect::<Vec<_>>()).expect("a subset");
    let batch = BatchOptions::new(10);
    let mut epoch = |data: &d2l_runtime::data::TensorDataset| {
        fewest_allocations(|| {
            let mut batches = data.batches(&batch, 0).unwrap();
            run.trainer.train_epoch(&mut batches, &mut Silent).unwrap_or_else(|e| panic!("{e}"));
        })
    };
    epoch(&full);
    epoch(&tenth);
    // 100 steps and 10 steps cost the same: what an epoch allocates (its
    // shuffled order, the batch buffers) does not grow with its steps.
    let (many, few) = (epoch(&full), epoch(&tenth));
    assert_eq!(many, few, "allocations: {many} for 100 steps, {few} for 10");
}
