//! Helpers shared by the cross-crate tests in `tests/tests/`.

use std::path::PathBuf;

use d2l_dsl::{LowerOptions, Lowered, Program};

/// The repository root, relative to the directory cargo runs tests in (this
/// crate's), so that file names in snapshots are the same on every machine.
pub fn repo_root() -> PathBuf {
    PathBuf::from("..")
}

pub fn model_path(file: &str) -> PathBuf {
    repo_root().join("models").join(file)
}

/// Every `.d2l` file in `models/`, sorted.
pub fn model_files() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(repo_root().join("models"))
        .expect("models/ exists")
        .map(|e| e.expect("readable entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "d2l"))
        .collect();
    files.sort();
    files
}

/// Loads a model file; panics with the rendered diagnostic on error.
pub fn load(file: &str) -> Program {
    Program::load_file(&model_path(file)).unwrap_or_else(|e| panic!("{e}"))
}

/// Lowers `model` with every unbound dim set to `batch`, as `d2l summary` does.
pub fn lower(program: &Program, model: &str, batch: usize) -> Lowered {
    let opts = LowerOptions { default_dim: Some(batch), ..LowerOptions::default() };
    program.lower(model, &opts).unwrap_or_else(|e| panic!("{e}"))
}

/// Compiles source text and lowers its default model with dims bound to 1,
/// returning the rendered error (panics if it compiles).
pub fn compile_error(name: &str, src: &str) -> String {
    let program = match Program::load(name, src, None) {
        Ok(p) => p,
        Err(e) => return e.rendered,
    };
    let model = program.default_model().expect("test programs define a model").to_string();
    match program.lower(&model, &LowerOptions { default_dim: Some(1), ..LowerOptions::default() }) {
        Ok(_) => panic!("expected {name} to fail to compile"),
        Err(e) => e.rendered,
    }
}
