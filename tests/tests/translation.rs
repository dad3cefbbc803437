//! Encoder–decoder models (course §62): the course's shape checks of the
//! seq2seq encoder and decoder (inventory §4.3), at its demo sizes
//! (vocabulary 10, embedding 8, hidden 16, 2 layers, a batch of 4 sentences
//! of 7 tokens), with the blocks of `models/seq2seq.d2l`.

use d2l_dsl::{LowerOptions, Program};
use d2l_tests::model_path;

/// `models/seq2seq.d2l` with `extra` models appended.
fn seq2seq_with(extra: &str) -> Program {
    let text = std::fs::read_to_string(model_path("seq2seq.d2l")).unwrap();
    Program::load("seq2seq.d2l", &format!("{text}\n{extra}"), None).unwrap_or_else(|e| panic!("{e}"))
}

/// The shapes of `model`'s results, in order.
fn result_shapes(program: &Program, model: &str) -> Vec<Vec<usize>> {
    let graph = program.lower(model, &LowerOptions::default()).unwrap_or_else(|e| panic!("{model}: {e}")).graph;
    graph.outputs().iter().map(|o| graph.shape(o.node).dims().to_vec()).collect()
}

#[test]
fn encoder_and_decoder_shapes_of_the_course_demo() {
    let program = seq2seq_with(
        "model demo_encoder(x: i64[4, 7]) {\n    outputs, state = seq2seq_encoder(x, 10, 8, 16, 2, 0.0)\n    return (outputs, state)\n}\n\
         model demo_decoder(x: i64[4, 7]) {\n    outputs, state = seq2seq_encoder(x, 10, 8, 16, 2, 0.0)\n    scores, state = seq2seq_decoder(x, state, 10, 8, 0.0)\n    return (scores, state)\n}\n",
    );
    // Encoder: outputs (T, B, H) = (7, 4, 16), state (L, B, H) = (2, 4, 16).
    assert_eq!(result_shapes(&program, "demo_encoder"), [vec![7, 4, 16], vec![2, 4, 16]]);
    // Decoder: scores (B, T, V) = (4, 7, 10), state (2, 4, 16).
    assert_eq!(result_shapes(&program, "demo_decoder"), [vec![4, 7, 10], vec![2, 4, 16]]);
}

#[test]
fn the_course_models_parameters() {
    // Encoder: embedding 184 x 32 and two GRU layers of 6,336; decoder:
    // embedding 201 x 32, a first GRU layer reading embedding and context
    // (64 wide: 9,408), a second of 6,336, a dense layer 32 x 201 + 201.
    let program = seq2seq_with("");
    let graph = d2l_tests::lower(&program, "seq2seq", 2).graph;
    let count: usize = graph.params().iter().map(|&p| graph.shape(p).numel()).sum();
    assert_eq!(count, 184 * 32 + 2 * 6_336 + 201 * 32 + 9_408 + 6_336 + 32 * 201 + 201);
    assert_eq!(count, 47_369);
}
