//! Encoder–decoder models (course §62, §66): the course's shape checks of
//! the seq2seq encoder and decoder and of the attention decoder (inventory
//! §4.3), at its demo sizes (vocabulary 10, embedding 8, hidden 16, 2
//! layers, a batch of 4 sentences of 7 tokens), with the blocks of
//! `models/seq2seq.d2l` and `models/bahdanau.d2l`.

use d2l_dsl::{LowerOptions, Program};
use d2l_tests::{model_path, result_shapes};

/// `models/FILE` with `extra` models appended.
fn with(file: &str, extra: &str) -> Program {
    let text = std::fs::read_to_string(model_path(file)).unwrap();
    Program::load(file, &format!("{text}\n{extra}"), None).unwrap_or_else(|e| panic!("{e}"))
}

fn seq2seq_with(extra: &str) -> Program {
    with("seq2seq.d2l", extra)
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

#[test]
fn attention_decoder_shapes_of_the_course_demo() {
    // §66: the decoder's scores (4, 7, 10) and its final state (2, 4, 16),
    // reading encoder outputs (4, 7, 16) under source lengths.
    let program = with(
        "bahdanau.d2l",
        "model demo(x: i64[4, 7], lens: i64[4]) {\n    outputs, state = seq2seq_encoder(x, 10, 8, 16, 2, 0.0)\n    keys = transpose(outputs, 0, 1)\n    scores, state = attention_decoder(x, keys, state, lens, 10, 8, 0.0)\n    return (keys, scores, state)\n}\n",
    );
    assert_eq!(result_shapes(&program, "demo"), [vec![4, 7, 16], vec![4, 7, 10], vec![2, 4, 16]]);
}

#[test]
fn every_decoder_step_shares_one_attention_and_one_gru() {
    // Ten steps or one: the same parameters (§62's decoder plus the
    // attention's W_q, W_k and w_v, 32·32 + 32·32 + 32).
    let program = with("bahdanau.d2l", "");
    let count = |steps: usize| {
        let opts = LowerOptions { dims: [("B".to_string(), 2), ("S".to_string(), 10), ("T".to_string(), steps)].into(), ..LowerOptions::default() };
        let graph = program.lower("bahdanau", &opts).unwrap().graph;
        graph.params().iter().map(|&p| graph.shape(p).numel()).sum::<usize>()
    };
    assert_eq!(count(1), 47_369 + 2 * 32 * 32 + 32);
    assert_eq!(count(10), count(1));
}

#[test]
fn attention_weights_are_observed_at_every_call() {
    // §66: the one shared attention observes its weights [B, 1, S] at each
    // of the ten decoding steps, under one name; §68: each of the six
    // attention layers (two in the encoder, two per decoder block) its
    // [B, heads, queries, keys].
    let opts = LowerOptions { dims: [("B".to_string(), 2), ("S".to_string(), 10), ("T".to_string(), 10)].into(), ..LowerOptions::default() };
    let lowered = with("bahdanau.d2l", "").lower("bahdanau", &opts).unwrap();
    assert_eq!(lowered.observed.len(), 10);
    for (name, node) in &lowered.observed {
        assert_eq!(name, "attention_decoder_0.additive_attention_0.weights");
        assert_eq!(lowered.graph.shape(*node).dims(), [2, 1, 10]);
    }
    let lowered = with("transformer.d2l", "").lower("transformer", &opts).unwrap();
    let names: Vec<&str> = lowered.observed.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "transformer_encoder_0.transformer_encoder_block_0.multi_head_attention_0.dot_product_attention_0.weights",
            "transformer_encoder_0.transformer_encoder_block_1.multi_head_attention_0.dot_product_attention_0.weights",
            "transformer_decoder_0.transformer_decoder_block_0.multi_head_attention_0.dot_product_attention_0.weights",
            "transformer_decoder_0.transformer_decoder_block_0.multi_head_attention_1.dot_product_attention_0.weights",
            "transformer_decoder_0.transformer_decoder_block_1.multi_head_attention_0.dot_product_attention_0.weights",
            "transformer_decoder_0.transformer_decoder_block_1.multi_head_attention_1.dot_product_attention_0.weights",
        ]
    );
    assert!(lowered.observed.iter().all(|(_, n)| lowered.graph.shape(*n).dims() == [2, 4, 10, 10]));
}
