//! Decoding a trained translation model: greedy and beam search on a
//! model whose scores are a fixed bigram table (the next token's
//! probabilities given the previous one), so every result is computed by
//! hand; and the errors of a model that is not a translation model.

use std::collections::BTreeMap;

use d2l_dsl::Program;
use d2l_runtime::data::Vocab;
use d2l_runtime::data::nmt::RESERVED;
use d2l_device::Device;
use d2l_runtime::Tensor;
use d2l_train::sources::SentencePairs;
use d2l_train::translate::Translator;

const BIGRAM: &str = "model m(src: i64[B, T], dec_in: i64[B, T]) -> f32[B, T, 7] {\n    param W: f32[7, 7] = zeros\n    return take(W, dec_in, 0)\n}\n";

/// Vocabulary: <unk> <pad> <bos> <eos> a b c (0-6).
fn pairs(steps: usize) -> SentencePairs {
    let words = ["a", "a", "b", "b", "c", "c"];
    let vocab = Vocab::new(words, 2, &RESERVED).unwrap();
    assert_eq!(vocab.tokens(), ["<unk>", "<pad>", "<bos>", "<eos>", "a", "b", "c"]);
    SentencePairs { src_vocab: vocab.clone(), tgt_vocab: vocab, steps }
}

/// Log-probabilities of the next token after each token: after <bos>, a
/// 0.5 and b 0.45; after a, <eos> 0.35, c 0.34, b 0.31; after b, <eos>
/// 0.95; after c, <eos> 0.9; anything else uniform.
fn table() -> BTreeMap<String, Tensor> {
    let mut p = vec![vec![1.0 / 7.0; 7]; 7];
    let mut row = |prev: usize, probs: &[(usize, f64)]| {
        let rest = (1.0 - probs.iter().map(|(_, q)| q).sum::<f64>()) / (7 - probs.len()) as f64;
        p[prev] = (0..7).map(|t| probs.iter().find(|(u, _)| *u == t).map_or(rest, |(_, q)| *q)).collect();
    };
    row(2, &[(4, 0.5), (5, 0.45)]);
    row(4, &[(3, 0.35), (6, 0.34), (5, 0.31)]);
    row(5, &[(3, 0.95)]);
    row(6, &[(3, 0.9)]);
    let w: Vec<f32> = p.iter().flatten().map(|q| q.max(1e-9).ln() as f32).collect();
    BTreeMap::from([("W".to_string(), Tensor::from_f32(&[7, 7], w))])
}

#[test]
fn greedy_and_beam_search_by_hand() {
    let program = Program::load("bigram.d2l", BIGRAM, None).unwrap();
    for backend in [Device::JIT, Device::INTERPRETER] {
        let mut t = Translator::new(&program, "m", &table(), pairs(4), backend).unwrap();
        // Greedy: a (0.5), then <eos> (0.35): "a", probability 0.175.
        assert_eq!(t.greedy("x y").unwrap(), "a");
        assert_eq!(t.beam("x y", 1).unwrap(), "a");
        // Beam 2 keeps a and b; of their continuations the best two are
        // "b <eos>" (0.4275) and "a <eos>" (0.175): "b" wins.
        assert_eq!(t.beam("x y", 2).unwrap(), "b");
        assert!(t.beam("x", 0).is_err());
    }
    // With every score equal, the first token (<unk>) wins every step and
    // <eos> never comes: the translation stops after `steps` tokens.
    let mut uniform = BTreeMap::from([("W".to_string(), Tensor::from_f32(&[7, 7], vec![0.0; 49]))]);
    let mut t = Translator::new(&program, "m", &uniform, pairs(3), Device::JIT).unwrap();
    assert_eq!(t.greedy("x").unwrap(), "<unk> <unk> <unk>");
    uniform.clear();
    let e = Translator::new(&program, "m", &uniform, pairs(3), Device::JIT).err().expect("no parameters").to_string();
    assert!(e.contains("the parameters have no `W`"), "{e}");
}

#[test]
fn attention_maps_by_hand() {
    // The decoder's one-hot tokens attend to the source's: a query scores
    // 1/√7 on a key of its own token, 0 on any other, and the keys past
    // the source's valid length (its tokens and <eos>) are masked.
    let src = "model m(src: i64[B, T], src_len: i64[B], dec_in: i64[B, T]) -> f32[B, T, 7] {\n    param W: f32[7, 7] = zeros\n    keys = one_hot(src, 7)\n    context = dot_product_attention(one_hot(dec_in, 7), keys, keys, src_len)\n    return take(W, dec_in, 0) + context\n}\n";
    let program = Program::load("attend.d2l", src, None).unwrap_or_else(|e| panic!("{e}"));
    for backend in [Device::JIT, Device::INTERPRETER] {
        let mut t = Translator::new(&program, "m", &table(), pairs(4), backend).unwrap();
        // Source "a b": a b <eos> <pad>, valid length 3; decoder input
        // <bos> a c <pad> (the tokens a c).
        let maps = t.attention("a b", &[4, 6]).unwrap();
        assert_eq!(maps.len(), 1);
        let m = &maps[0];
        assert_eq!((m.name.as_str(), m.heads, m.queries, m.keys), ("dot_product_attention_0.weights", 1, 4, 4));
        let e = (1.0 / 7f64.sqrt()).exp();
        let expect = [
            [1.0 / 3.0, 1.0 / 3.0, 1.0 / 3.0, 0.0], // <bos>: no key of its token
            [e / (e + 2.0), 1.0 / (e + 2.0), 1.0 / (e + 2.0), 0.0], // a: the source's a
            [1.0 / 3.0, 1.0 / 3.0, 1.0 / 3.0, 0.0], // c
            [1.0 / 3.0, 1.0 / 3.0, 1.0 / 3.0, 0.0], // <pad>
        ];
        for (got, want) in m.weights[0].iter().zip(expect.iter().flatten()) {
            assert!((got - want).abs() < 1e-6, "{backend:?}: {:?}", m.weights[0]);
        }
        let (source, decoder) = t.positions("a b", &[4, 6]);
        assert_eq!((source.join(" "), decoder.join(" ")), ("a b <eos>".to_string(), "<bos> a c".to_string()));
    }
    // A model without `observe` has no maps to give.
    let program = Program::load("bigram.d2l", BIGRAM, None).unwrap();
    let mut t = Translator::new(&program, "m", &table(), pairs(4), Device::JIT).unwrap();
    let e = t.attention("a", &[4]).expect_err("nothing observed").to_string();
    assert!(e.contains("observes nothing"), "{e}");
}

#[test]
fn a_model_that_does_not_translate_is_refused() {
    let lm = "model m(tokens: i64[B, T]) -> f32[B, T, 7] {\n    param W: f32[7, 7] = zeros\n    return take(W, tokens, 0)\n}\n";
    let program = Program::load("lm.d2l", lm, None).unwrap();
    let e = Translator::new(&program, "m", &table(), pairs(4), Device::JIT).err().expect("not a translation model").to_string();
    assert!(e.contains("model `m` has no input `src`"), "{e}");
    let wide = Program::load("wide.d2l", &BIGRAM.replace("f32[B, T, 7] {", "f32[B, T, 8] {").replace("f32[7, 7]", "f32[7, 8]"), None).unwrap();
    let e = Translator::new(&wide, "m", &table(), pairs(4), Device::JIT).err().expect("too wide").to_string();
    assert!(e.contains("translating needs scores [B, 4, 7]"), "{e}");
}

#[test]
fn xavier_init_leaves_embedding_tables_alone() {
    // The course's train_seq2seq: Xavier-uniform linear and recurrent
    // weights, embeddings at PyTorch's N(0, 1).
    let program = Program::load_file("../models/seq2seq.d2l".as_ref()).unwrap_or_else(|e| panic!("{e}"));
    let run = d2l_train::prepare(&program, "seq2seq", &d2l_train::TrainOptions::default()).unwrap_or_else(|e| panic!("{e}"));
    let params = run.trainer.params();
    let std = |name: &str| {
        let v = params[name].to_f64_vec();
        (v.iter().map(|x| x * x).sum::<f64>() / v.len() as f64).sqrt()
    };
    let names: Vec<&String> = params.keys().filter(|n| n.ends_with(".W")).collect();
    let embeddings: Vec<&&String> = names.iter().filter(|n| n.contains("embedding")).collect();
    assert_eq!(embeddings.len(), 2, "{names:?}");
    for e in embeddings {
        assert!((std(e) - 1.0).abs() < 0.1, "{e}: {}", std(e));
    }
    // The dense layer 32 -> 201: bound sqrt(6 / 233), std bound / sqrt(3) = 0.093.
    let dense = names.iter().find(|n| n.contains("linear")).expect("a dense layer");
    assert!((std(dense) - 0.093).abs() < 0.01, "{dense}: {}", std(dense));
}
