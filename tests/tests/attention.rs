//! Masks and attention (course §62, §65, §67): finite-difference checks of
//! every block of `dsl/std/attention.d2l` (the course's exact values are
//! file tests: `tests/filetests/attention.d2l`). Blocks without parameters
//! are checked through a linear layer in front of them, whose gradient
//! flows back through the block.

use d2l_tests::fd;

#[test]
fn masked_softmax_gradients() {
    // Scores as a parameter; lengths 0..=4 over 4 keys (0 masks every key).
    let src = "model m(lens: i64[B]) {\n    param S: f32[B, 3, 4] = normal(0, 1)\n    return masked_softmax(S, lens)\n}\n";
    assert_eq!(fd::check_params("masked_softmax, one length per example", src, &[("B", 3)], false, 5), 1);
    let per_query = "model m(lens: i64[B, 3]) {\n    param S: f32[B, 3, 4] = normal(0, 1)\n    return masked_softmax(S, lens)\n}\n";
    assert_eq!(fd::check_params("masked_softmax, one length per query", per_query, &[("B", 2)], false, 5), 1);
}

#[test]
fn masked_cross_entropy_gradients() {
    // Labels and lengths in 0..5: some sequences fully masked, some not at all.
    let src = "model m(label: i64[B, 4], lens: i64[B]) {\n    param P: f32[B, 4, 5] = normal(0, 1)\n    return masked_softmax_ce(P, label, lens)\n}\n";
    assert_eq!(fd::check_params("masked_softmax_ce", src, &[("B", 3)], false, 5), 1);
}

#[test]
fn attention_gradients() {
    // Additive attention's own three maps, with dropout on the weights
    // (training mode: the interpreter draws the same masks every run).
    let additive = "model m(q: f32[B, 2, 3], k: f32[B, 4, 2], v: f32[B, 4, 3], lens: i64[B]) {\n    return additive_attention(q, k, v, lens, hidden=5, dropout_p=0.3)\n}\n";
    assert_eq!(fd::check_params("additive_attention", additive, &[("B", 2)], true, 5), 3);
    // Dot-product attention has no parameters: queries, keys and values
    // come from linear maps, so each of their gradients passes through it.
    let dot = "model m(x: f32[B, 4, 3], lens: i64[B, 4]) {\n    return dot_product_attention(linear(x, 2), linear(x, 2), linear(x, 3), lens, dropout_p=0.3)\n}\n";
    assert_eq!(fd::check_params("dot_product_attention", dot, &[("B", 2)], true, 5), 6);
}

#[test]
fn positional_encoding_gradients() {
    let src = "model m(x: f32[B, 5, 3]) {\n    return positional_encoding(linear(x, 4), dropout_p=0.2)\n}\n";
    assert_eq!(fd::check_params("positional_encoding", src, &[("B", 2)], true, 5), 2);
}
