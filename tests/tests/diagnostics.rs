//! Bad programs: each must fail with a clear message that points at the
//! cause (file:line:col, the line, a caret), never a panic. The rendered
//! text is snapshotted so changes to messages are reviewed.

use d2l_tests::compile_error;

fn check(name: &str, src: &str) {
    let rendered = compile_error(&format!("{name}.d2l"), src);
    insta::assert_snapshot!(name, rendered);
}

#[test]
fn typo_in_a_layer_name() {
    check("typo", "model m(x: f32[B, 4]) {\n    return linear(x, 2) |> sigmoidd\n}\n");
}

#[test]
fn unknown_layer() {
    check("unknown_layer", "model m(x: f32[B, 1, 8, 8]) {\n    return conv3d(x, 4)\n}\n");
}

#[test]
fn broadcast_mismatch_spells_out_both_shapes() {
    check("broadcast_mismatch", "model m(x: f32[B, 10], y: f32[B, 5]) {\n    return x + y\n}\n");
}

#[test]
fn matmul_inner_dimensions() {
    check("matmul_mismatch", "model m(x: f32[B, 784]) {\n    param W: f32[785, 10] = zeros\n    return x @ W\n}\n");
}

#[test]
fn missing_argument() {
    check("missing_argument", "model m(x: f32[B, 4]) {\n    return linear(x)\n}\n");
}

#[test]
fn too_many_arguments() {
    check("too_many_arguments", "model m(x: f32[B, 4]) {\n    return relu(x, 1, 2)\n}\n");
}

#[test]
fn unknown_keyword() {
    check("unknown_keyword", "model m(x: f32[B, 4]) {\n    return linear(x, 3, bais=false)\n}\n");
}

#[test]
fn wrong_argument_type() {
    check("wrong_argument_type", "model m(x: f32[B, 4]) {\n    return linear(x, 2.5)\n}\n");
}

#[test]
fn wrong_dtype_for_a_block() {
    check("wrong_dtype", "model m(logits: f32[B, 10], y: f32[B]) {\n    return cross_entropy(logits, y)\n}\n");
}

#[test]
fn wrong_rank_for_conv() {
    check("wrong_rank", "model m(x: f32[B, 784]) {\n    return conv2d(x, 6, kernel=5)\n}\n");
}

#[test]
fn recursion() {
    check("recursion", "block f(x) {\n    return f(x)\n}\nmodel m(x: f32[B, 4]) {\n    return f(x)\n}\n");
}

#[test]
fn bad_number_literal() {
    check("bad_literal", "model m(x: f32[B, 4]) {\n    return x * 1e\n}\n");
}

#[test]
fn unclosed_call() {
    check("unclosed_call", "model m(x: f32[B, 4]) {\n    return linear(x, 2\n}\n");
}

#[test]
fn model_without_return() {
    check("no_return", "model m(x: f32[B, 4]) {\n    y = relu(x)\n}\n");
}

#[test]
fn runtime_condition() {
    check("tensor_condition", "model m(x: f32[B, 4]) {\n    if x > 0 { x = relu(x) }\n    return x\n}\n");
}

#[test]
fn index_out_of_range() {
    check("index_out_of_range", "model m(x: f32[B, 3]) {\n    return x[:, 5]\n}\n");
}

#[test]
fn reshape_element_count() {
    check("bad_reshape", "model m(x: f32[B, 1, 28, 28]) {\n    return reshape(x, [B, 783])\n}\n");
}

#[test]
fn unknown_dtype() {
    check("unknown_dtype", "model m(x: f16[B, 4]) {\n    return x\n}\n");
}

#[test]
fn duplicate_definition() {
    check("duplicate", "block f(x) { return x }\nblock f(x) { return x }\nmodel m(x: f32[B, 4]) {\n    return f(x)\n}\n");
}

#[test]
fn yield_outside_for() {
    check("stray_yield", "model m(x: f32[B, 4]) {\n    yield x\n    return x\n}\n");
}

#[test]
fn parameter_declared_twice() {
    check("param_twice", "model m(x: f32[B, 4]) {\n    param W: f32[4, 4] = zeros\n    param W: f32[4, 4] = zeros\n    return x @ W\n}\n");
}

#[test]
fn unknown_field() {
    check("unknown_field", "model m(x: f32[B, 4]) {\n    return reshape(x, x.shp)\n}\n");
}

#[test]
fn missing_used_file() {
    check("missing_use", "use \"no/such/file.d2l\"\nmodel m(x: f32[B, 4]) {\n    return x\n}\n");
}

#[test]
fn model_input_without_tensor_type() {
    check("untyped_input", "model m(x, n: int) {\n    return x\n}\n");
}

#[test]
fn bad_initializer() {
    check("bad_initializer", "model m(x: f32[B, 4]) {\n    param W: f32[4, 2] = relu\n    return x @ W\n}\n");
}

#[test]
fn declared_result_shape() {
    check("result_shape", "model m(x: f32[B, 4]) -> f32[B, 3] {\n    return linear(x, 2)\n}\n");
}

/// Compiles `src` with a memory bound of 1 GB, so the message is the same
/// on every machine; returns the rendered error.
fn memory_error(name: &str, src: &str) -> String {
    let program = d2l_dsl::Program::load(&format!("{name}.d2l"), src, None).unwrap_or_else(|e| panic!("{e}"));
    let opts = d2l_dsl::LowerOptions { default_dim: Some(1), memory_limit: Some(1_000_000_000), ..Default::default() };
    program.lower("m", &opts).expect_err("expected a memory error").rendered
}

#[test]
fn parameters_larger_than_memory_are_refused_at_their_declaration() {
    insta::assert_snapshot!("param_too_large", memory_error("param_too_large", "model m(x: f32[B, 4]) {\n    param W: f32[4, 4000000000000] = normal(0, 0.01)\n    return x @ W\n}\n"));
    // Each fits, together they do not.
    insta::assert_snapshot!("params_together_too_large", memory_error("params_together_too_large", "model m(x: f32[B, 4]) {\n    param A: f32[4, 50000000] = zeros\n    param C: f32[4, 50000000] = zeros\n    return x @ A + x @ C\n}\n"));
    insta::assert_snapshot!("param_size_overflows", memory_error("param_size_overflows", "model m(x: f32[B, 4]) {\n    param W: f32[4000000000000, 4000000000000, 4000000000000] = zeros\n    return x\n}\n"));
}

#[test]
fn intermediates_and_inputs_larger_than_memory_are_refused_where_they_are_made() {
    insta::assert_snapshot!("intermediate_too_large", memory_error("intermediate_too_large", "model m(x: f32[B, 100000]) {\n    y = reshape(x, [B, 100000, 1]) * reshape(x, [B, 1, 100000])\n    return sum(y)\n}\n"));
    insta::assert_snapshot!("input_too_large", memory_error("input_too_large", "model m(x: f32[B, 1000000000]) {\n    return x\n}\n"));
    // Inside a standard-library block: the error points into the block.
    insta::assert_snapshot!("layer_too_large", memory_error("layer_too_large", "model m(x: f32[B, 4]) {\n    return linear(x, 300000000)\n}\n"));
}

#[test]
fn sharing_a_block_without_parameters() {
    check("share_relu", "model m(x: f32[B, 4]) {\n    act = share(relu)\n    return act(x)\n}\n");
}

#[test]
fn sharing_a_builtin() {
    check("share_builtin", "model m(x: f32[B, 4]) {\n    act = share(sigmoid)\n    return act(x)\n}\n");
}

#[test]
fn sharing_an_unknown_block() {
    check("share_unknown", "model m(x: f32[B, 4]) {\n    layer = share(no_such_block, out=8)\n    return layer(x)\n}\n");
}

#[test]
fn sharing_a_tensor() {
    check("share_tensor", "model m(x: f32[B, 4]) {\n    layer = share(x)\n    return layer(x)\n}\n");
}

#[test]
fn giving_a_shared_instance_a_bound_argument_again() {
    check("share_bound_twice", "model m(x: f32[B, 4]) {\n    shared = share(linear, out=8)\n    return shared(x, out=4)\n}\n");
}

#[test]
fn calling_a_shared_instance_on_inputs_of_another_width() {
    check("share_width", "model m(x: f32[B, 4]) {\n    shared = share(linear, out=8)\n    y = shared(x)\n    return shared(y)\n}\n");
}

#[test]
fn observing_under_a_name_that_is_not_text() {
    check("observe_name", "model m(x: f32[B, 4]) {\n    return observe(x, 3)\n}\n");
}
