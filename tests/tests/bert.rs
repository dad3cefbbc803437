//! BERT's blocks and data (course §69, `dsl/std/bert.d2l`, the
//! `wikitext2` source): the course's demo shapes (inventory §4.3), a
//! minibatch of the real data, finite-difference checks of every new block
//! and loss, and the two MLM losses computed by hand.

use d2l_dsl::{LowerOptions, Program};
use d2l_runtime::{Interpreter, Tensor, init_params};
use d2l_tests::{demo_shapes, fd};

#[test]
fn the_course_demo_shapes() {
    // §69: vocabulary 10,000, hidden 768, FFN 1,024, 4 heads, 2 layers,
    // dropout 0.2; tokens (2, 8) -> encodings (2, 8, 768).
    let encoder = "model m(tokens: i64[2, 8], segments: i64[2, 8], lens: i64[2]) {\n    return bert_encoder(tokens, segments, lens, 10000, 768, 4, 1024, 2, 0.2)\n}\n";
    assert_eq!(demo_shapes(encoder, "m"), [vec![2, 8, 768]]);
    // MaskLM at positions [[1, 5, 2], [6, 1, 5]]: scores (2, 3, 10000);
    // the per-prediction loss with reduction='none': (6,).
    let mlm = "model m(x: f32[2, 8, 768], positions: i64[2, 3], labels: i64[2, 3]) {\n    scores = mask_lm(x, positions, 10000, 768)\n    return (scores, reshape(mlm_per_prediction(scores, labels), [6]))\n}\n";
    assert_eq!(demo_shapes(mlm, "m"), [vec![2, 3, 10000], vec![6]]);
    // NextSentencePred on the flattened encodings: (2, 2), and its loss
    // per example: (2,). And BERTModel's NSP head on the <cls> encoding.
    let nsp = "model m(x: f32[2, 8, 768], labels: i64[2]) {\n    scores = linear(reshape(x, [2, 8 * 768]), 2)\n    return (scores, -sum(log_softmax(scores) * one_hot(labels, 2), 1), next_sentence_pred(x, 768))\n}\n";
    assert_eq!(demo_shapes(nsp, "m"), [vec![2, 2], vec![2], vec![2, 2]]);
}

#[test]
fn the_course_berts_parameters() {
    // PyTorch's BERTModel(20256, 128, ffn 256, 2 heads, 2 layers,
    // max_len 1000): token (20256 x 128), segment (2 x 128) and position
    // (1000 x 128) tables; per block the four 128 x 128 maps with biases,
    // two layer norms and the FFN (128 x 256 + 256 + 256 x 128 + 128); the
    // NSP hidden layer (128 x 128 + 128) and output (128 x 2 + 2); MaskLM's
    // 128 x 128 + 128, layer norm, and 128 x 20256 + 20256.
    let program = d2l_tests::load("bert.d2l");
    let block = 4 * (128 * 128 + 128) + 2 * 256 + (128 * 256 + 256 + 256 * 128 + 128);
    let want = 20256 * 128 + 2 * 128 + 1000 * 128 + 2 * block + (128 * 128 + 128) + (128 * 2 + 2) + (128 * 128 + 128) + 256 + (128 * 20256 + 20256);
    for model in ["bert", "bert_weighted"] {
        assert_eq!(d2l_tests::lower(&program, model, 2).param_count(), want, "{model}");
    }
    assert_eq!(want, 5_632_546);
}

#[test]
fn the_demo_encoder_runs() {
    // The (2, 8) demo through the encoder, numbers and all: every value
    // finite, and each position's encoding differs from the others.
    let src = "model m(tokens: i64[2, 8], segments: i64[2, 8], lens: i64[2]) {\n    return bert_encoder(tokens, segments, lens, 10000, 768, 4, 1024, 2, 0.2)\n}\n";
    let program = Program::load("demo.d2l", src, None).unwrap();
    let graph = program.lower("m", &LowerOptions::default()).unwrap().graph;
    let mut feeds = init_params(&graph, 1);
    feeds.insert("tokens".into(), Tensor::from_i64(&[2, 8], (0..16).map(|i| (i * 617) % 10000).collect()));
    feeds.insert("segments".into(), Tensor::from_i64(&[2, 8], vec![0, 0, 0, 0, 1, 1, 1, 1, 0, 0, 0, 1, 1, 1, 1, 1]));
    feeds.insert("lens".into(), Tensor::from_i64(&[2], vec![8, 6]));
    let out = d2l::Device::JIT.compile(&graph, 0).unwrap().run(&feeds).unwrap();
    let values = out[0].1.to_f64_vec();
    assert_eq!(values.len(), 2 * 8 * 768);
    assert!(values.iter().all(|v| v.is_finite()));
    assert_ne!(values[..768], values[768..2 * 768]);
}

#[test]
fn a_minibatch_of_the_real_data() {
    // The seven arrays of the course's load_data_wiki at batch 512,
    // max_len 64: tokens and segments (512, 64), valid lengths (512,),
    // positions, weights and labels (512, 10), NSP labels (512,).
    let program = d2l_tests::load("bert.d2l");
    let config = program.train_config("bert").unwrap();
    let source = d2l::train::sources::open(&program, &config.data, &d2l::TrainOptions::default()).unwrap();
    let schema = source.schema();
    let names: Vec<&str> = schema.inputs.iter().chain(&schema.labels).map(|f| f.name.as_str()).collect();
    assert_eq!(names, ["tokens", "segments", "valid_lens", "pred_positions", "mlm_weights", "mlm_labels", "nsp_labels"]);
    let (vocab, max_len) = source.bert_vocab().unwrap();
    assert_eq!((vocab.len(), max_len), (20_256, 64));
    let mut fields: Vec<Tensor> = names.iter().map(|_| Tensor::zeros(d2l_ir::DType::F32, &[0])).collect();
    assert!(source.train_epoch(0).unwrap().next_batch(&mut fields));
    let dims: Vec<&[usize]> = fields.iter().map(|t| t.dims()).collect();
    assert_eq!(dims, [&[512, 64][..], &[512, 64], &[512], &[512, 10], &[512, 10], &[512, 10], &[512]]);
    // The model reads exactly this: its step compiles for these shapes.
    let binding = d2l::train::graphs::bind(&program, "bert", &schema).unwrap();
    assert_eq!(binding.fields, names);
}

#[test]
fn bert_blocks_gradients() {
    // The encoder: two embeddings, the position table, one block's twelve
    // tensors (attention with bias: 8; two layer norms: 4; FFN: 4 - the
    // course's EncoderBlock(use_bias=True)). Segments are 0 or 1.
    let encoder = "model m(tokens: i64[B, 5], segments: i64[B, 5], lens: i64[B]) {\n    return bert_encoder(tokens, segments, lens, 7, 6, 2, 8, 1, 0.2, max_len=9)\n}\n";
    assert_eq!(fd::check_params("bert_encoder", encoder, &[("B", 2)], true, 7), 3 + 16);
    // As the course writes it (`.data`), the position table gets no
    // gradient, the token table does.
    let detached = "model m(tokens: i64[2, 5], segments: i64[2, 5], lens: i64[2]) {\n    return sum(bert_encoder(tokens, segments, lens, 7, 6, 2, 8, 1, 0.0, max_len=9, train_positions=false) * arange(6))\n}\n";
    let program = Program::load("d.d2l", detached, None).unwrap();
    let mut forward = program.lower("m", &LowerOptions::default()).unwrap().graph;
    forward.set_output("loss", forward.output("output").unwrap());
    let grads = d2l_passes::differentiate_params(&forward, "loss", &d2l_passes::DiffOptions::default()).unwrap();
    let mut feeds = init_params(&forward, 1);
    feeds.insert("tokens".into(), Tensor::from_i64(&[2, 5], vec![1, 2, 3, 4, 5, 6, 0, 1, 2, 3]));
    feeds.insert("segments".into(), Tensor::from_i64(&[2, 5], vec![0, 0, 0, 1, 1, 0, 0, 1, 1, 1]));
    feeds.insert("lens".into(), Tensor::from_i64(&[2], vec![5, 3]));
    let values = Interpreter::new(0).eval_nodes(&grads.graph, &feeds).unwrap();
    for (k, &p) in forward.params().iter().enumerate() {
        let name = forward.leaf_name(p).unwrap();
        let nonzero = values[grads.grads[k].index()].to_f64_vec().iter().any(|&g| g != 0.0);
        assert_eq!(nonzero, !name.ends_with("positions"), "{name}");
    }
    // MaskLM: the positions index each example's own tokens; its two
    // linear layers and layer norm.
    let mlm = "model m(x: f32[B, 6, 4], positions: i64[B, 3]) {\n    return mask_lm(x, positions, 9, 5)\n}\n";
    assert_eq!(fd::check_params("mask_lm", mlm, &[("B", 2)], false, 6), 6);
    let nsp = "model m(x: f32[B, 6, 4]) {\n    return next_sentence_pred(x, 5)\n}\n";
    assert_eq!(fd::check_params("next_sentence_pred", nsp, &[("B", 3)], false, 6), 4);
    // The per-prediction cross-entropy through a linear layer to 9 words.
    let ce = "model m(x: f32[B, 3, 4], labels: i64[B, 3]) {\n    return mlm_per_prediction(linear(x, 9), labels)\n}\n";
    assert_eq!(fd::check_params("mlm_per_prediction", ce, &[("B", 2)], false, 9), 2);
}

#[test]
fn the_losses_as_the_course_computes_them() {
    // Two examples, two slots each, a vocabulary of 3; the second slot of
    // the second example is padding (weight 0, label 0).
    let src = "model m(mlm: f32[2, 2, 3], nsp: f32[2, 2]) {\n    return (mlm, nsp)\n}\n";
    let program = Program::load("l.d2l", src, None).unwrap();
    let mlm = [0.1, 0.7, -0.2, 1.0, 0.0, 0.5, -0.3, 0.2, 0.4, 0.9, -1.0, 0.3];
    let labels = [2i64, 0, 1, 0];
    let weights = [1.0f32, 1.0, 1.0, 0.0];
    let nsp = [0.2, -0.4, 1.1, 0.3];
    let nsp_labels = [1i64, 0];
    let ce = |row: &[f64], label: usize| -> f64 { row.iter().map(|v| v.exp()).sum::<f64>().ln() - row[label] };
    let per: Vec<f64> = (0..4).map(|i| ce(&mlm[i * 3..i * 3 + 3], labels[i] as usize)).collect();
    let w: f64 = weights.iter().map(|&w| w as f64).sum();
    let course = per.iter().sum::<f64>() / 4.0 * w / (w + 1e-8);
    let weighted = per.iter().zip(weights).map(|(p, w)| p * w as f64).sum::<f64>() / (w + 1e-8);
    let nsp_loss = (ce(&nsp[0..2], 1) + ce(&nsp[2..4], 0)) / 2.0;
    for (loss, total) in [("bert_loss", course + nsp_loss), ("bert_weighted_loss", weighted + nsp_loss)] {
        let labels_spec = vec![
            d2l_dsl::LabelSpec { name: "mlm_weights".into(), dtype: d2l_ir::DType::F32, shape: vec![2, 2] },
            d2l_dsl::LabelSpec { name: "mlm_labels".into(), dtype: d2l_ir::DType::I64, shape: vec![2, 2] },
            d2l_dsl::LabelSpec { name: "nsp_labels".into(), dtype: d2l_ir::DType::I64, shape: vec![2] },
        ];
        let lowered = program.lower_with_loss("m", &LowerOptions::default(), &d2l_dsl::LossSpec { loss: loss.into(), labels: labels_spec }).unwrap();
        let mut graph = lowered.graph;
        for (name, node) in &lowered.observed {
            graph.set_output(name.rsplit('.').next().unwrap().to_string(), *node);
        }
        let feeds = [
            ("mlm", Tensor::from_f32(&[2, 2, 3], mlm.iter().map(|&v| v as f32).collect())),
            ("nsp", Tensor::from_f32(&[2, 2], nsp.iter().map(|&v| v as f32).collect())),
            ("mlm_weights", Tensor::from_f32(&[2, 2], weights.to_vec())),
            ("mlm_labels", Tensor::from_i64(&[2, 2], labels.to_vec())),
            ("nsp_labels", Tensor::from_i64(&[2], nsp_labels.to_vec())),
        ];
        let feeds = feeds.into_iter().map(|(n, t)| (n.to_string(), t)).collect();
        let out = Interpreter::new(0).run(&graph, &feeds).unwrap();
        let get = |name: &str| out.iter().find(|(n, _)| n == name).unwrap_or_else(|| panic!("{loss}: no {name}")).1.to_f64_vec()[0];
        for (name, want) in [("loss", total), ("mlm_loss", course), ("mlm_weighted_loss", weighted), ("nsp_loss", nsp_loss)] {
            assert!((get(name) - want).abs() < 1e-5, "{loss}: {name} {} != {want}", get(name));
        }
    }
    // The padded slot makes the two MLM figures differ: the test says something.
    assert!((course - weighted).abs() > 0.05);
}
