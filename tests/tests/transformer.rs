//! The Transformer's blocks (course §68, `dsl/std/transformer.d2l`): the
//! course's shape checks at its demo sizes (inventory §4.3) and
//! finite-difference checks of every block's parameters, dropout on
//! (the interpreter draws the same masks every run).

use d2l_dsl::{LowerOptions, Program};
use d2l_tests::{demo_shapes, fd};

#[test]
fn multi_head_attention_shape_of_the_course_demo() {
    // 100 hidden, 5 heads; 4 queries attend to 6 key-value pairs under
    // valid lengths [3, 2]: (2, 4, 100).
    let src = "model m(x: f32[2, 4, 100], y: f32[2, 6, 100], lens: i64[2]) {\n    return multi_head_attention(x, y, y, lens, 100, 5, 0.5)\n}\n";
    assert_eq!(demo_shapes(src, "m"), [vec![2, 4, 100]]);
}

#[test]
fn add_norm_and_block_shapes_of_the_course_demos() {
    let add_norm = "model m(x: f32[2, 3, 4]) {\n    return add_norm(x, x, 0.5)\n}\n";
    assert_eq!(demo_shapes(add_norm, "m"), [vec![2, 3, 4]]);
    // 24 hidden, 8 heads, FFN 48 over 100 positions.
    let encoder_block = "model m(x: f32[2, 100, 24], lens: i64[2]) {\n    return transformer_encoder_block(x, lens, 8, 48, 0.5)\n}\n";
    assert_eq!(demo_shapes(encoder_block, "m"), [vec![2, 100, 24]]);
    // The encoder over a vocabulary of 200, 2 blocks.
    let encoder = "model m(x: i64[2, 100], lens: i64[2]) {\n    return transformer_encoder(x, lens, 200, 24, 8, 48, 2, 0.5)\n}\n";
    assert_eq!(demo_shapes(encoder, "m"), [vec![2, 100, 24]]);
    // A decoder block over the encoder block's outputs.
    let decoder_block = "model m(x: f32[2, 100, 24], lens: i64[2]) {\n    enc = transformer_encoder_block(x, lens, 8, 48, 0.5)\n    return transformer_decoder_block(x, enc, lens, 8, 48, 0.5)\n}\n";
    assert_eq!(demo_shapes(decoder_block, "m"), [vec![2, 100, 24]]);
}

#[test]
fn the_course_transformers_parameters() {
    // Encoder: embedding 184 x 32, per block the attention's four 32 x 32
    // maps, two layer norms (2 x 32 each) and the FFN (32 x 64 + 64 +
    // 64 x 32 + 32); decoder: embedding 201 x 32, per block two attentions,
    // three layer norms and the FFN; the dense layer 32 x 201 + 201.
    let text = std::fs::read_to_string(d2l_tests::model_path("transformer.d2l")).unwrap();
    let program = Program::load("transformer.d2l", &text, None).unwrap();
    let graph = d2l_tests::lower(&program, "transformer", 2).graph;
    let count: usize = graph.params().iter().map(|&p| graph.shape(p).numel()).sum();
    let ffn = 32 * 64 + 64 + 64 * 32 + 32;
    let encoder_block = 4 * 32 * 32 + 2 * 64 + ffn;
    let decoder_block = 8 * 32 * 32 + 3 * 64 + ffn;
    assert_eq!(count, 184 * 32 + 2 * encoder_block + 201 * 32 + 2 * decoder_block + 32 * 201 + 201);
    assert_eq!(count, 60_937);
}

#[test]
fn a_decoder_position_never_sees_later_inputs() {
    // Causal self-attention: changing the last token changes no score at
    // an earlier position (what translating with the whole window at
    // every step relies on, train/src/translate.rs).
    use d2l_runtime::{Interpreter, Tensor, init_params};
    let src = "model m(x: i64[1, 5], enc: f32[1, 3, 8], lens: i64[1]) {\n    return transformer_decoder(x, enc, lens, 11, 2, 16, 2, 0.0)\n}\n";
    let program = Program::load("demo.d2l", src, None).unwrap();
    let graph = program.lower("m", &LowerOptions::default()).unwrap().graph;
    let mut feeds = init_params(&graph, 1);
    feeds.insert("enc".into(), Tensor::from_f32(&[1, 3, 8], (0..24).map(|i| (i as f32 * 0.37).sin()).collect()));
    feeds.insert("lens".into(), Tensor::from_i64(&[1], vec![2]));
    let mut scores = |last: i64| {
        feeds.insert("x".into(), Tensor::from_i64(&[1, 5], vec![1, 4, 2, 7, last]));
        Interpreter::new(0).run(&graph, &feeds).unwrap()[0].1.to_f64_vec()
    };
    let (a, b) = (scores(3), scores(9));
    assert_eq!(a[..4 * 11], b[..4 * 11], "positions 0-3 moved with the token at 4");
    assert_ne!(a[4 * 11..], b[4 * 11..], "position 4 ignored its own token");
}

#[test]
fn multi_head_attention_gradients() {
    // Lengths per example and per query; the four maps with and without bias.
    let per_example = "model m(q: f32[B, 3, 4], kv: f32[B, 5, 6], lens: i64[B]) {\n    return multi_head_attention(q, kv, kv, lens, 8, 2, dropout_p=0.3)\n}\n";
    assert_eq!(fd::check_params("multi_head_attention", per_example, &[("B", 2)], true, 6), 4);
    let per_query = "model m(x: f32[B, 4, 6], lens: i64[B, 4]) {\n    return multi_head_attention(x, x, x, lens, 6, 3, dropout_p=0.3, bias=true)\n}\n";
    assert_eq!(fd::check_params("multi_head_attention with bias", per_query, &[("B", 2)], true, 5), 8);
}

#[test]
fn ffn_and_add_norm_gradients() {
    let ffn = "model m(x: f32[B, 3, 4]) {\n    return position_wise_ffn(x, 6, 4)\n}\n";
    assert_eq!(fd::check_params("position_wise_ffn", ffn, &[("B", 2)], false, 5), 4);
    // AddNorm's layer norm, and through it a linear sublayer.
    let add_norm = "model m(x: f32[B, 3, 4]) {\n    return add_norm(x, linear(x, 4), 0.3)\n}\n";
    assert_eq!(fd::check_params("add_norm", add_norm, &[("B", 2)], true, 5), 4);
}

#[test]
fn encoder_and_decoder_block_gradients() {
    // Attention's four maps, two layer norms' two vectors, the FFN's four;
    // the decoder block has a second attention and a third layer norm.
    let encoder = "model m(x: f32[B, 4, 6], lens: i64[B]) {\n    return transformer_encoder_block(x, lens, 2, 8, 0.2)\n}\n";
    assert_eq!(fd::check_params("transformer_encoder_block", encoder, &[("B", 2)], true, 5), 12);
    let decoder = "model m(x: f32[B, 4, 6], enc: f32[B, 3, 6], lens: i64[B]) {\n    return transformer_decoder_block(x, enc, lens, 2, 8, 0.2)\n}\n";
    assert_eq!(fd::check_params("transformer_decoder_block", decoder, &[("B", 2)], true, 4), 18);
}
