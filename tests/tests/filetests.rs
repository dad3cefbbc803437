//! File tests: `.d2l` files in `tests/filetests/` whose comments state
//! expected results, as Cranelift's runtests do:
//!
//! ```text
//! model relu_of(x: f32[N, 3]) { return relu(x) }
//! # run: relu_of(x=[[-1.0, 0.0, 2.5]]) == [[0.0, 0.0, 2.5]]
//! ```
//!
//! Inputs and expected outputs are JSON arrays (nesting gives the shape;
//! the dtype comes from the model's declaration); several outputs are
//! written as a tuple `(a, b)`. Each line runs in evaluation mode on every
//! backend, with parameters from their (constant) initializers. The GPU
//! code of every line's kernels is a snapshot per file: its LLVM IR, and
//! with the `gpu` feature its PTX for sm_90.

use std::collections::HashMap;

use d2l_dsl::{LowerOptions, Program};
use d2l_ir::DType;
use d2l::Device;
use d2l_runtime::{Tensor, init_params};
use serde_json::Value as Json;

/// Every backend that must agree with the expectations (the grid
/// interpreter runs the loop kernels as the GPU code does).
const BACKENDS: &[Device] = &[Device::INTERPRETER, Device::JIT, Device::GRID];

/// Splits `s` at commas outside brackets.
fn split_top(s: &str) -> Vec<&str> {
    let (mut depth, mut start, mut parts) = (0i32, 0, Vec::new());
    for (i, c) in s.char_indices() {
        match c {
            '[' | '(' => depth += 1,
            ']' | ')' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(s[start..i].trim());
                start = i + 1;
            }
            _ => {}
        }
    }
    if !s[start..].trim().is_empty() {
        parts.push(s[start..].trim());
    }
    parts
}

/// Shape and row-major values of a JSON number or nested array.
fn flatten(j: &Json, shape: &mut Vec<usize>, values: &mut Vec<f64>, depth: usize) {
    match j {
        Json::Array(items) => {
            if shape.len() == depth {
                shape.push(items.len());
            }
            assert_eq!(shape[depth], items.len(), "ragged array {j}");
            for item in items {
                flatten(item, shape, values, depth + 1);
            }
        }
        Json::Number(n) => values.push(n.as_f64().expect("a finite number")),
        other => panic!("expected numbers or arrays, got {other}"),
    }
}

fn tensor(j: &Json, dtype: DType) -> Tensor {
    let (mut shape, mut values) = (Vec::new(), Vec::new());
    flatten(j, &mut shape, &mut values, 0);
    match dtype {
        DType::F32 => Tensor::from_f32(&shape, values.iter().map(|&v| v as f32).collect()),
        DType::F64 => Tensor::from_f64(&shape, values),
        DType::I64 => Tensor::from_i64(&shape, values.iter().map(|&v| v as i64).collect()),
        DType::Bool => Tensor::from_bool(&shape, values.iter().map(|&v| v != 0.0).collect()),
    }
}

fn parse_json(s: &str, what: &str) -> Json {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("{what}: `{s}` is not JSON: {e}"))
}

/// Runs one `# run:` line; returns its graph, or a description of the failure.
fn check_line(program: &Program, line: &str) -> Result<d2l_ir::Graph, String> {
    let (call, expected) = line.split_once("==").ok_or("a run line needs `==`")?;
    let (model, args) = call.trim().split_once('(').ok_or("expected `model(args)`")?;
    let args = args.trim().strip_suffix(')').ok_or("the call must end with `)`")?;
    let mut inputs: Vec<(String, Json)> = Vec::new();
    for arg in split_top(args) {
        let (name, value) = arg.split_once('=').ok_or_else(|| format!("argument `{arg}` is not name=value"))?;
        inputs.push((name.trim().to_string(), parse_json(value.trim(), name)));
    }
    let expected = expected.trim();
    let expected: Vec<Json> = match expected.strip_prefix('(').and_then(|e| e.strip_suffix(')')) {
        Some(inner) => split_top(inner).into_iter().map(|e| parse_json(e, "expected")).collect(),
        None => vec![parse_json(expected, "expected")],
    };
    let shapes = inputs
        .iter()
        .map(|(n, j)| {
            let (mut shape, mut values) = (Vec::new(), Vec::new());
            flatten(j, &mut shape, &mut values, 0);
            (n.clone(), shape)
        })
        .collect();
    let opts = LowerOptions { input_shapes: shapes, ..LowerOptions::default() };
    let graph = program.lower(model.trim(), &opts).map_err(|e| e.to_string())?.graph;
    let mut feeds: HashMap<String, Tensor> = init_params(&graph, 0);
    for (name, j) in &inputs {
        let id = graph.input_named(name).ok_or_else(|| format!("model has no input `{name}`"))?;
        feeds.insert(name.clone(), tensor(j, graph.dtype(id)));
    }
    for &backend in BACKENDS {
        let mut exe = backend.compile(&graph, 0).map_err(|e| e.to_string())?;
        let outputs = exe.run(&feeds).map_err(|e| format!("{}: {e}", backend.name()))?;
        if outputs.len() != expected.len() {
            return Err(format!("{}: {} outputs, expected {}", backend.name(), outputs.len(), expected.len()));
        }
        for ((name, got), want) in outputs.iter().zip(&expected) {
            let (mut shape, mut values) = (Vec::new(), Vec::new());
            flatten(want, &mut shape, &mut values, 0);
            let got_values = got.to_f64_vec();
            let close = got_values.iter().zip(&values).all(|(g, w)| (g - w).abs() <= 1e-5 * (1.0 + w.abs()));
            if got.shape().0 != shape || !close {
                return Err(format!("{}: output `{name}` is {}{} {got_values:?}, expected {shape:?} {values:?}", backend.name(), got.dtype(), got.shape()));
            }
        }
    }
    Ok(graph)
}

#[test]
fn filetests() {
    let dir = d2l_tests::repo_root().join("tests/filetests");
    let mut files: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).filter(|p| p.extension().is_some_and(|e| e == "d2l")).collect();
    files.sort();
    let (mut runs, mut failures) = (0, Vec::new());
    for file in &files {
        let program = Program::load_file(file).unwrap_or_else(|e| panic!("{e}"));
        let text = std::fs::read_to_string(file).unwrap();
        // The GPU code of every run line's kernels, a snapshot per file.
        let (mut llvm, mut ptx) = (String::new(), String::new());
        for (n, line) in text.lines().enumerate() {
            let Some(run) = line.trim().strip_prefix("# run:") else { continue };
            runs += 1;
            match check_line(&program, run) {
                Ok(graph) => {
                    let at = format!("; line {}: {}\n", n + 1, run.trim());
                    llvm += &at;
                    llvm += &d2l_ptx::llvm_listing(&graph).unwrap_or_else(|e| panic!("{}:{}: {e}", file.display(), n + 1));
                    if cfg!(feature = "gpu") {
                        ptx += &at.replacen(';', "//", 1);
                        ptx += &d2l_ptx::ptx_listing(&graph, d2l_ptx::Arch::Sm90).unwrap_or_else(|e| panic!("{}:{}: {e}", file.display(), n + 1));
                    }
                }
                Err(e) => failures.push(format!("{}:{}: {e}", file.display(), n + 1)),
            }
        }
        let stem = file.file_stem().and_then(|s| s.to_str()).expect("utf-8 name");
        insta::assert_snapshot!(format!("llvm_{stem}"), llvm);
        if cfg!(feature = "gpu") {
            insta::assert_snapshot!(format!("ptx_sm90_{stem}"), ptx);
        }
    }
    assert!(runs >= 20, "only {runs} run lines found in {}", dir.display());
    assert!(failures.is_empty(), "{} of {runs} run lines failed:\n{}", failures.len(), failures.join("\n"));
}
