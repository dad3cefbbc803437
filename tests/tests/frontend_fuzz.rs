//! No input string may make the front end (parser + evaluator) panic: every
//! failure must come back as a diagnostic.

use d2l_dsl::{LowerOptions, Program};
use proptest::prelude::*;

/// Runs the whole front end; only panics matter here.
fn compile(src: &str) {
    if let Ok(program) = Program::load("fuzz.d2l", src, None) {
        let models = program.model_names().to_vec();
        for m in models {
            let _ = program.lower(&m, &LowerOptions { default_dim: Some(2), ..LowerOptions::default() });
        }
    }
}

const SEED: &str = "model m(x: f32[B, 1, 8, 8]) -> f32[B, 3] {\n    x = conv2d(x, 2, kernel=3, padding=1) |> relu\n    x = max_pool2d(x, 2)\n    y = x[:, 0:1, ::2]\n    for i in 0..2 { x = x + 1.0 }\n    if training { x = dropout(x, 0.5) }\n    return flatten(x) |> linear(3)\n}\n";

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_text_never_panics(src in "\\PC{0,200}") {
        compile(&src);
    }

    #[test]
    fn mutated_models_never_panic(pos in 0usize..SEED.len(), len in 0usize..12, insert in "[-+*/@()\\[\\]{},:=.|>0-9a-z_ \n]{0,6}") {
        let mut src = SEED.to_string();
        let start = (0..=pos).rev().find(|&i| src.is_char_boundary(i)).unwrap_or(0);
        let end = (start + len).min(src.len());
        let end = (end..=src.len()).find(|&i| src.is_char_boundary(i)).unwrap_or(src.len());
        src.replace_range(start..end, &insert);
        compile(&src);
    }
}

#[test]
fn the_seed_program_compiles() {
    let program = Program::load("seed.d2l", SEED, None).unwrap_or_else(|e| panic!("{e}"));
    program.lower("m", &LowerOptions { default_dim: Some(2), ..LowerOptions::default() }).unwrap_or_else(|e| panic!("{e}"));
}
