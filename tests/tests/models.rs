//! Every model in `models/`: it checks, its summary matches the course's
//! shape traces and parameter counts, and its AST and IR text are
//! snapshotted (any change to a stage's output shows up in review).

use d2l_tests::{load, lower, model_files};

fn trace(program: &d2l_dsl::Program, model: &str) -> Vec<(String, Vec<usize>, usize)> {
    lower(program, model, 1).layers.into_iter().map(|l| (l.name, l.shape.0, l.params)).collect()
}

/// Every model lowers with its batch `B` at 1 and 3, and its other dims (a
/// sequence length `T`, a feature count `F`) at 7: the first output's
/// leading dim scales with the batch. That is the batch itself, or for the
/// language models, whose outputs are time-major `[T*B, vocab]`, `T` rows
/// per example.
#[test]
fn every_model_checks_at_two_batch_sizes() {
    let lead = |program: &d2l_dsl::Program, model: &str, batch: usize| {
        let opts = d2l_dsl::LowerOptions { dims: [("B".to_string(), batch)].into(), default_dim: Some(7), ..Default::default() };
        let graph = program.lower(model, &opts).unwrap_or_else(|e| panic!("{e}")).graph;
        graph.shape(graph.outputs()[0].node).0[0]
    };
    for file in model_files() {
        let program = d2l_dsl::Program::load_file(&file).unwrap_or_else(|e| panic!("{e}"));
        assert!(!program.model_names().is_empty(), "{} defines no model", file.display());
        for model in program.model_names() {
            let per_example = lead(&program, model, 1);
            assert_eq!(lead(&program, model, 3), 3 * per_example, "{model}: the batch dim flows to the output");
            let time_major = file.file_name().is_some_and(|f| ["rnn.d2l", "gru.d2l", "lstm.d2l"].contains(&f.to_str().unwrap()));
            assert_eq!(per_example, if time_major { 7 } else { 1 }, "{model}: rows per example");
        }
    }
}

#[test]
fn lenet_matches_the_course_trace() {
    let program = load("lenet.d2l");
    let t = trace(&program, "lenet");
    let shapes: Vec<(&str, Vec<usize>)> = t.iter().map(|(n, s, _)| (n.as_str(), s.clone())).collect();
    assert_eq!(
        shapes,
        vec![
            ("conv2d", vec![1, 6, 28, 28]),
            ("sigmoid", vec![1, 6, 28, 28]),
            ("avg_pool2d", vec![1, 6, 14, 14]),
            ("conv2d", vec![1, 16, 10, 10]),
            ("sigmoid", vec![1, 16, 10, 10]),
            ("avg_pool2d", vec![1, 16, 5, 5]),
            ("flatten", vec![1, 400]),
            ("linear", vec![1, 120]),
            ("sigmoid", vec![1, 120]),
            ("linear", vec![1, 84]),
            ("sigmoid", vec![1, 84]),
            ("linear", vec![1, 10]),
        ]
    );
    let params: Vec<usize> = t.iter().map(|(_, _, p)| *p).filter(|&p| p > 0).collect();
    assert_eq!(params, vec![156, 2416, 48120, 10164, 850]);
    assert_eq!(lower(&program, "lenet", 1).param_count(), 61_706);
}

#[test]
fn parameter_counts_match_the_course() {
    let cases = [
        ("linear_regression.d2l", "linear_regression", 3),
        ("linear_regression.d2l", "linear_regression_concise", 3),
        ("softmax_regression.d2l", "softmax_regression", 7_850),
        ("softmax_regression.d2l", "softmax_regression_concise", 7_850),
        ("mlp.d2l", "mlp", 203_530),
        ("mlp.d2l", "mlp_scratch", 203_530),
        ("mlp.d2l", "mlp_dropout", 269_322),
        ("lenet.d2l", "lenet", 61_706),
        // The sequence models' counts (§51, §55-§59): tests/tests/sequences.rs.
    ];
    for (file, model, count) in cases {
        assert_eq!(lower(&load(file), model, 1).param_count(), count, "{model}");
    }
}

#[test]
fn every_model_has_a_train_block() {
    for file in model_files() {
        let program = d2l_dsl::Program::load_file(&file).unwrap_or_else(|e| panic!("{e}"));
        for model in program.model_names() {
            assert!(program.train_def(model).is_some(), "{model} in {} has no train block", file.display());
        }
    }
}

#[test]
fn parsed_ast_snapshots() {
    for file in model_files() {
        let text = std::fs::read_to_string(&file).unwrap();
        let module = d2l_dsl::parse(0, &text).unwrap_or_else(|d| panic!("{d:?}"));
        let name = file.file_stem().unwrap().to_string_lossy().to_string();
        insta::assert_snapshot!(format!("parsed_{name}"), d2l_dsl::print::module(&module));
    }
}

#[test]
fn graph_ir_snapshots() {
    for file in model_files() {
        let program = d2l_dsl::Program::load_file(&file).unwrap_or_else(|e| panic!("{e}"));
        for model in program.model_names() {
            let lowered = lower(&program, model, 2);
            insta::assert_snapshot!(format!("graph_{model}"), d2l_ir::text::print(&lowered.graph, true));
        }
    }
}

#[test]
fn use_imports_blocks_from_other_files_and_cycles_end() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("lib")).unwrap();
    std::fs::write(dir.path().join("lib/double.d2l"), "use \"../main.d2l\"\nblock double(x) {\n    return x * 2.0\n}\n").unwrap();
    let main = dir.path().join("main.d2l");
    std::fs::write(&main, "use \"lib/double.d2l\"\nmodel m(x: f32[B, 2]) -> f32[B, 2] {\n    return double(x)\n}\n").unwrap();
    let program = d2l_dsl::Program::load_file(&main).unwrap_or_else(|e| panic!("{e}"));
    let lowered = lower(&program, "m", 3);
    assert_eq!(lowered.graph.shape(lowered.graph.outputs()[0].node).0, vec![3, 2]);
}
