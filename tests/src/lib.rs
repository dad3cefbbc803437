//! Helpers shared by the cross-crate tests in `tests/tests/`.

pub mod fd;

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

/// A model file with some of its text replaced (another input size, the
/// full-width VGG); panics if `from` is not in the file.
pub fn load_edited(file: &str, from: &str, to: &str) -> Program {
    let text = std::fs::read_to_string(model_path(file)).unwrap_or_else(|e| panic!("{file}: {e}"));
    assert!(text.contains(from), "{file} has no `{from}`");
    Program::load(file, &text.replace(from, to), None).unwrap_or_else(|e| panic!("{e}"))
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

/// splitmix64: deterministic test data without a dependency.
pub struct Rng(pub u64);

impl Rng {
    /// Uniform in [0, 1), 53 random bits.
    pub fn next_f64(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64
    }

    pub fn uniform(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.next_f64()
    }
}
