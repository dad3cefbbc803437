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

/// For each i64 input of `graph` that indexes a table, the bound its
/// values must stay below: the table's length along the gathered axis,
/// less the largest offset added to the input on the way there (BERT adds
/// each example's offset b·T to its prediction positions, and b·V to its
/// labels, to gather from the flattened rows). Inputs that index nothing
/// directly or through such offsets are absent. The offsets are evaluated
/// with every input zero and the parameters as initialised.
pub fn index_bounds(graph: &d2l_ir::Graph) -> std::collections::HashMap<String, i64> {
    use d2l_ir::{BinaryOp, DType, Op};
    use d2l_runtime::{Interpreter, Tensor, init_params};
    let mut feeds = init_params(graph, 0);
    for id in graph.inputs() {
        if let Some(name) = graph.leaf_name(id) {
            feeds.insert(name.to_string(), Tensor::zeros(graph.dtype(id), graph.shape(id).dims()));
        }
    }
    let mut values = None;
    let mut bounds = std::collections::HashMap::new();
    for input in graph.inputs().into_iter().filter(|&i| graph.dtype(i) == DType::I64) {
        let mut best: Option<i64> = None;
        let mut stack = vec![(input, 0i64)];
        while let Some((n, offset)) = stack.pop() {
            for &u in &graph.users(n) {
                let node = graph.node(u);
                match &node.op {
                    Op::Gather { axis } if node.args[1] == n => {
                        let len = graph.shape(node.args[0]).dims()[*axis] as i64;
                        best = Some(best.map_or(len - offset, |b| b.min(len - offset)));
                    }
                    Op::Reshape | Op::Broadcast => stack.push((u, offset)),
                    Op::Binary(BinaryOp::Add) => {
                        let other = if node.args[0] == n { node.args[1] } else { node.args[0] };
                        let values: &Vec<Tensor> = values.get_or_insert_with(|| Interpreter::new(0).eval_nodes(graph, &feeds).expect("the graph runs on zero inputs"));
                        let most = values[other.index()].to_f64_vec().into_iter().fold(0.0f64, f64::max) as i64;
                        stack.push((u, offset + most));
                    }
                    _ => {}
                }
            }
        }
        if let (Some(b), Some(name)) = (best, graph.leaf_name(input)) {
            bounds.insert(name.to_string(), b.max(1));
        }
    }
    bounds
}

/// The shapes of `model`'s results, in order (dims bound by its input types).
pub fn result_shapes(program: &Program, model: &str) -> Vec<Vec<usize>> {
    let graph = program.lower(model, &LowerOptions::default()).unwrap_or_else(|e| panic!("{model}: {e}")).graph;
    graph.outputs().iter().map(|o| graph.shape(o.node).dims().to_vec()).collect()
}

/// [`result_shapes`] of `model` in the source text `src` (the course's demos).
pub fn demo_shapes(src: &str, model: &str) -> Vec<Vec<usize>> {
    result_shapes(&Program::load("demo.d2l", src, None).unwrap_or_else(|e| panic!("{e}")), model)
}
