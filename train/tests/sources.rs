//! Data sources and what a training run does with them: several named
//! inputs, the generic sources (.npy arrays, CSV tables, any text file),
//! recurrent state carried or reset between minibatches, text generation
//! with a one-token step, multi-step predictions, and the errors a user
//! meets on the way.

use std::collections::BTreeMap;
use std::path::Path;

use d2l_dsl::Program;
use d2l_runtime::Tensor;
use d2l_runtime::npy::write_npy;
use d2l_runtime::train::Silent;
use d2l_train::{TrainOptions, prepare};

/// A program from `text`, named as a file in `dir` (data paths in its
/// train blocks are relative to `dir`).
fn program(dir: &Path, text: &str) -> Program {
    Program::load(&dir.join("m.d2l").display().to_string(), text, Some(dir)).unwrap_or_else(|e| panic!("{e}"))
}

fn error(dir: &Path, text: &str, model: &str) -> String {
    match prepare(&program(dir, text), model, &TrainOptions::default()) {
        Ok(_) => panic!("expected an error"),
        Err(e) => e.to_string(),
    }
}

fn epochs(run: &mut d2l_train::Training, n: usize) -> Vec<f64> {
    (0..n).map(|_| run.epoch(&mut Silent).unwrap().train.loss).collect()
}

/// y = 2 a0 - a1 + 3 b0 + b1 - b2: a target only both inputs together give.
fn two_input_data(dir: &Path, n: usize) {
    let a: Vec<f32> = (0..n * 2).map(|i| ((i * 7 % 13) as f32 - 6.0) / 6.0).collect();
    let b: Vec<f32> = (0..n * 3).map(|i| ((i * 5 % 11) as f32 - 5.0) / 5.0).collect();
    let y: Vec<f32> = (0..n).map(|r| 2.0 * a[2 * r] - a[2 * r + 1] + 3.0 * b[3 * r] + b[3 * r + 1] - b[3 * r + 2]).collect();
    write_npy(dir.join("a.npy"), &Tensor::from_f32(&[n, 2], a)).unwrap();
    write_npy(dir.join("b.npy"), &Tensor::from_f32(&[n, 3], b)).unwrap();
    write_npy(dir.join("y.npy"), &Tensor::from_f32(&[n, 1], y)).unwrap();
}

const TWO_INPUTS: &str = "model two(a: f32[B, 2], b: f32[B, 3]) -> f32[B, 1] {\n    return linear(a, 1) + linear(b, 1)\n}\n\ntrain two {\n    data = npy(features=((\"a\", \"a.npy\"), (\"b\", \"b.npy\")), labels=\"y.npy\", batch=8)\n    loss = mse\n    optimizer = sgd(lr=0.1)\n    epochs = 20\n}\n";

#[test]
fn a_model_with_two_inputs_trains_on_named_arrays() {
    let dir = tempfile::tempdir().unwrap();
    two_input_data(dir.path(), 64);
    let mut run = prepare(&program(dir.path(), TWO_INPUTS), "two", &TrainOptions::default()).unwrap_or_else(|e| panic!("{e}"));
    let schema = run.source.schema();
    assert_eq!(schema.inputs.iter().map(|f| (f.name.as_str(), f.dims.clone())).collect::<Vec<_>>(), [("a", vec![2]), ("b", vec![3])]);
    let losses = epochs(&mut run, 20);
    // The target is linear in both inputs: the fit is (nearly) exact.
    assert!(losses[19] < 1e-3 * losses[0], "{losses:?}");
    let w = |name: &str| run.trainer.params()[name].to_f64_vec();
    let (wa, wb) = (w("linear_0.W"), w("linear_1.W"));
    assert!((wa[0] - 2.0).abs() < 0.05 && (wa[1] + 1.0).abs() < 0.05 && (wb[0] - 3.0).abs() < 0.05, "{wa:?} {wb:?}");
}

#[test]
fn inputs_are_matched_by_name() {
    let dir = tempfile::tempdir().unwrap();
    two_input_data(dir.path(), 8);
    let renamed = TWO_INPUTS.replace("b: f32[B, 3]", "c: f32[B, 3]").replace("linear(b, 1)", "linear(c, 1)");
    let e = error(dir.path(), &renamed, "two");
    assert!(e.contains("takes the input `c`, which its data source does not provide (it provides a, b)"), "{e}");
    let one = "model one(x: f32[B, 2]) -> f32[B, 1] {\n    return linear(x, 1)\n}\n\ntrain one {\n    data = npy(features=((\"a\", \"a.npy\"), (\"b\", \"b.npy\")), labels=\"y.npy\", batch=8)\n    loss = mse\n    optimizer = sgd(lr=0.1)\n}\n";
    let e = error(dir.path(), one, "one");
    assert!(e.contains("takes the input `x`, which its data source does not provide"), "{e}");
    // One array and one input meet whatever they are called.
    let single = one.replace("features=((\"a\", \"a.npy\"), (\"b\", \"b.npy\"))", "features=\"a.npy\"");
    prepare(&program(dir.path(), &single), "one", &TrainOptions::default()).unwrap_or_else(|e| panic!("{e}"));
    // A model input may not take a label's name.
    let clash = single.replace("model one(x:", "model one(label:").replace("linear(x, 1)", "linear(label, 1)");
    let e = error(dir.path(), &clash, "one");
    assert!(e.contains("has an input named `label`, which is also the name of a label"), "{e}");
}

#[test]
fn bad_array_files_are_reported_with_their_names() {
    let dir = tempfile::tempdir().unwrap();
    two_input_data(dir.path(), 8);
    write_npy(dir.path().join("short.npy"), &Tensor::from_f32(&[5, 3], vec![0.0; 15])).unwrap();
    let text = TWO_INPUTS.replace("\"b.npy\"", "\"short.npy\"");
    let e = error(dir.path(), &text, "two");
    assert!(e.contains("`a` has 8 examples") && e.contains("`b` has 5"), "{e}");
    let e = error(dir.path(), &TWO_INPUTS.replace("\"a.npy\"", "\"missing.npy\""), "two");
    assert!(e.contains("missing.npy"), "{e}");
    let e = error(dir.path(), &TWO_INPUTS.replace("features=((\"a\", \"a.npy\"), (\"b\", \"b.npy\"))", "features=((\"a\", 3),)"), "two");
    assert!(e.contains("`features` is a file name, or a tuple of (input name, file name) pairs") && e.contains("m.d2l:6:"), "{e}");
}

#[test]
fn a_csv_table_trains_with_a_named_label_column() {
    let dir = tempfile::tempdir().unwrap();
    let mut csv = String::from("x1,price,x2\n");
    for i in 0..40 {
        let (x1, x2) = ((i % 7) as f64 / 7.0, (i % 5) as f64 / 5.0);
        csv.push_str(&format!("{x1},{},{x2}\n", 3.0 * x1 - 2.0 * x2 + 1.0));
    }
    std::fs::write(dir.path().join("table.csv"), csv).unwrap();
    let text = "model reg(x: f32[B, 2]) -> f32[B, 1] {\n    return linear(x, 1)\n}\n\ntrain reg {\n    data = csv(path=\"table.csv\", label=\"price\", batch=8)\n    loss = mse\n    optimizer = sgd(lr=0.3)\n    epochs = 60\n}\n";
    let mut run = prepare(&program(dir.path(), text), "reg", &TrainOptions::default()).unwrap_or_else(|e| panic!("{e}"));
    let losses = epochs(&mut run, 60);
    assert!(losses[59] < 1e-3, "{losses:?}");
    let e = error(dir.path(), &text.replace("label=\"price\"", "label=\"cost\""), "reg");
    assert!(e.contains("cost"), "{e}");
}

/// A character-level model whose only state counts minibatches: its loss is
/// the count before the step, so an epoch's mean loss tells how the state
/// was carried.
const COUNTER: &str = "model counter(tokens: i64[B, T], count: f32[B, 1]) -> (seen: f32[B, 1], count: f32[B, 1]) {\n    param w: f32[1] = zeros\n    return (count + w, count + 1.0)\n}\n\nblock seen_loss(seen: f32[B, 1], labels: i64[B, T]) {\n    return mean(seen)\n}\n\ntrain counter {\n    data = text_file(path=\"story.txt\", batch=2, steps=5, SAMPLING)\n    loss = seen_loss\n    optimizer = sgd(lr=0)\n    epochs = 2\n}\n";

fn story(dir: &Path) {
    std::fs::write(dir.join("story.txt"), "the time traveller for so it will be convenient to speak of him\nwas expounding a recondite matter to us\n").unwrap();
}

#[test]
fn sequential_partitioning_carries_state_and_random_sampling_resets_it() {
    let dir = tempfile::tempdir().unwrap();
    story(dir.path());
    for (sampling, carried) in [("random=false", true), ("random=true", false)] {
        let text = COUNTER.replace("SAMPLING", sampling);
        let mut run = prepare(&program(dir.path(), &text), "counter", &TrainOptions::default()).unwrap_or_else(|e| panic!("{e}"));
        for _ in 0..2 {
            let batches = run.source.train_epoch(run.trainer.epoch as u64).unwrap();
            let n = batches.remaining() as f64;
            drop(batches);
            let m = run.epoch(&mut Silent).unwrap().train;
            // Carried: the k-th minibatch has seen k before (mean (n-1)/2),
            // starting again each epoch; reset: always 0.
            let want = if carried { (n - 1.0) / 2.0 } else { 0.0 };
            assert!((m.loss - want).abs() < 1e-6, "{sampling}: mean count {} over {n} batches, wanted {want}", m.loss);
        }
    }
}

#[test]
fn text_sources_report_bad_files_and_settings() {
    let dir = tempfile::tempdir().unwrap();
    story(dir.path());
    let text = COUNTER.replace("SAMPLING", "random=false");
    std::fs::write(dir.path().join("empty.txt"), "").unwrap();
    std::fs::write(dir.path().join("binary.txt"), [0x66, 0x6f, 0xff, 0xfe]).unwrap();
    for (edit, wanted) in [
        (("story.txt", "missing.txt"), "missing.txt"),
        (("story.txt", "empty.txt"), "empty.txt"),
        (("story.txt", "binary.txt"), "UTF-8"),
        (("steps=5", "steps=500"), "tokens"),
        (("batch=2", "batch=0"), "`batch` must be a positive int"),
        (("steps=5", "steps=5, tokens=\"bytes\""), "`tokens` is \"char\" or \"word\""),
        (("random=false", "shuffle=false"), "takes no argument `shuffle`"),
    ] {
        let e = error(dir.path(), &text.replace(edit.0, edit.1), "counter");
        assert!(e.contains(wanted), "{edit:?}: {e}");
    }
    let e = error(dir.path(), &text.replace("text_file(", "text_fil("), "counter");
    assert!(e.contains("unknown data source `text_fil`") && e.contains("time_machine(batch, steps"), "{e}");
}

/// A tiny character model: one-hot input, one tanh layer, scores.
const CHARS: &str = "model lm(tokens: i64[B, T], h: f32[B, 16]) -> (logits: f32[N, V], h: f32[B, 16]) {\n    param W: f32[V, 16] = normal(0, 0.3)\n    param U: f32[16, 16] = normal(0, 0.3)\n    param Q: f32[16, V] = normal(0, 0.3)\n    xs = one_hot(transpose(tokens), V)\n    s = h\n    ys = for t in 0..T {\n        s = tanh(xs[t] @ W + s @ U)\n        yield s @ Q\n    }\n    return (reshape(ys, [T * B, V]), s)\n}\n\nblock lm_loss(logits: f32[N, V], labels: i64[B, T]) {\n    return cross_entropy(logits, reshape(transpose(labels), [N]))\n}\n\ntrain lm {\n    data = text_file(path=\"story.txt\", batch=2, steps=5)\n    loss = lm_loss\n    optimizer = sgd(lr=1, clip=1)\n    epochs = 3\n    metrics = [perplexity]\n}\n";

/// The story's vocabulary: `<unk>`, the space and 22 letters.
const STORY_VOCAB: usize = 24;

#[test]
fn perplexity_is_the_exponential_of_the_mean_loss_and_the_vocabulary_is_checked() {
    let dir = tempfile::tempdir().unwrap();
    story(dir.path());
    let text = CHARS.replace("V]", &format!("{STORY_VOCAB}]")).replace(", V)", &format!(", {STORY_VOCAB})")).replace("[V,", &format!("[{STORY_VOCAB},"));
    let mut run = prepare(&program(dir.path(), &text), "lm", &TrainOptions::default()).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(run.source.vocab().unwrap().0.len(), STORY_VOCAB);
    let m = run.epoch(&mut Silent).unwrap().train;
    assert!((m.perplexity.unwrap() - m.loss.exp()).abs() < 1e-9 && m.tokens == m.examples * 5, "{m:?}");
    let narrow = CHARS.replace("V]", "12]").replace(", V)", ", 12)").replace("[V,", "[12,");
    let e = error(dir.path(), &narrow, "lm");
    assert!(e.contains(&format!("scores 12 tokens, but the vocabulary of its data has {STORY_VOCAB} (text_file")), "{e}");
}

#[test]
fn generation_steps_one_token_at_a_time_like_the_whole_sequence() {
    let dir = tempfile::tempdir().unwrap();
    story(dir.path());
    let v = STORY_VOCAB.to_string();
    let text = CHARS.replace("V]", &format!("{v}]")).replace(", V)", &format!(", {v})")).replace("[V,", &format!("[{v},"));
    let program = program(dir.path(), &text);
    let mut run = prepare(&program, "lm", &TrainOptions::default()).unwrap();
    epochs(&mut run, 3);
    let params: BTreeMap<String, Tensor> = run.trainer.params().into_iter().map(|(n, t)| (n, t.clone())).collect();
    let (vocab, kind) = run.source.vocab().unwrap();
    let mut generator = d2l_train::generate::Generator::new(&program, "lm", &params, vocab.clone(), kind, d2l_device::Device::JIT).unwrap();
    let text_out = generator.generate("the ti", 6).unwrap();
    assert!(text_out.starts_with("the ti") && text_out.chars().count() == 12, "{text_out:?}");
    // The same model on the whole text at once (the interpreter, one call
    // over all steps): each predicted character is the argmax after the
    // characters before it.
    let chars: Vec<usize> = vocab.encode(&text_out, kind);
    let n = chars.len() - 1;
    let lopts = d2l_dsl::LowerOptions { input_shapes: [("tokens".to_string(), vec![1, n])].into(), ..Default::default() };
    let graph = program.lower("lm", &lopts).unwrap().graph;
    let mut feeds: std::collections::HashMap<String, Tensor> = params.clone().into_iter().collect();
    feeds.insert("tokens".into(), Tensor::from_i64(&[1, n], chars[..n].iter().map(|&c| c as i64).collect()));
    feeds.insert("h".into(), Tensor::zeros(d2l_ir::DType::F32, &[1, 16]));
    let out = d2l_runtime::Interpreter::new(0).run(&graph, &feeds).unwrap();
    let logits = out.iter().find(|(name, _)| name == "logits").unwrap().1.to_f64_vec();
    for t in 5..n {
        let row = &logits[t * STORY_VOCAB..(t + 1) * STORY_VOCAB];
        let best = (0..STORY_VOCAB).fold(0, |b, j| if row[j] > row[b] { j } else { b });
        assert_eq!(best, chars[t + 1], "character {} of {text_out:?}", t + 1);
    }
}

#[test]
fn k_step_predictions_follow_the_course_table() {
    // A "model" that predicts the last value of its window: one step ahead
    // it returns x[t-1]; k steps ahead it can only repeat x[t-k].
    let dir = tempfile::tempdir().unwrap();
    let text = "model last(x: f32[B, 4]) -> f32[B, 1] {\n    param unused: f32[1] = zeros\n    return x[:, 3:4] + 0.0 * unused\n}\n";
    let program = program(dir.path(), text);
    let series: Vec<f32> = (0..100).map(|t| (t as f32 * 0.37).sin()).collect();
    let params: BTreeMap<String, Tensor> = [("unused".to_string(), Tensor::from_f32(&[1], vec![0.0]))].into();
    let p = d2l_train::series::predict(&program, "last", &params, &series, 4, 60, d2l_device::Device::JIT).unwrap();
    assert_eq!(p.one_step.len(), 96);
    assert!(p.one_step.iter().enumerate().all(|(i, &y)| y == series[i + 3]));
    for (k, preds) in &p.k_step {
        // Row r predicts time r + 3 + k from the window ending at r + 3.
        assert_eq!(preds.len(), 100 - 4 - 64 + 1);
        assert!(preds.iter().enumerate().all(|(r, &y)| y == series[r + 3]), "{k}-step");
    }
    assert!(p.fed_back.iter().all(|&y| y == series[59]));
    let csv = dir.path().join("p.csv");
    d2l_train::series::write(&p, &series, &csv, &dir.path().join("p.svg")).unwrap();
    let table = std::fs::read_to_string(csv).unwrap();
    assert!(table.starts_with("t,x,one_step,fed_back,step_1,step_4,step_16,step_64\n1,"), "{}", &table[..80]);
}

#[test]
fn sentence_pairs_feed_three_inputs_and_two_labels() {
    // A bag-of-words "translator": the decoder's input tokens plus the mean
    // of the source's embeddings, scored over the target vocabulary under
    // the course's masked loss. Not a good model; a real one of each input.
    let text = "model bag(src: i64[B, T], dec_in: i64[B, T]) -> f32[B, T, 201] {\n    context = reshape(mean(embedding(src, 184, 16), 1), [B, 1, 16])\n    return linear(embedding(dec_in, 201, 16) + context, 201)\n}\n\ntrain bag {\n    data = fra_eng(batch=64)\n    loss = masked_softmax_ce\n    optimizer = adam(lr=0.01)\n    epochs = 4\n}\n";
    let dir = tempfile::tempdir().unwrap();
    let mut run = prepare(&program(dir.path(), text), "bag", &TrainOptions::default()).unwrap_or_else(|e| panic!("{e}"));
    let schema = run.source.schema();
    let names = |f: &[d2l_train::sources::Field]| f.iter().map(|f| (f.name.clone(), f.dims.clone())).collect::<Vec<_>>();
    assert_eq!(names(&schema.inputs), [("src".into(), vec![10]), ("src_len".into(), vec![]), ("dec_in".into(), vec![10])]);
    assert_eq!(names(&schema.labels), [("tgt".into(), vec![10]), ("tgt_len".into(), vec![])]);
    assert_eq!(run.source.train_len(), 601);
    let losses = epochs(&mut run, 4);
    assert!(losses[3] < 0.8 * losses[0], "{losses:?}");
    // Unknown settings are the user's error, not a panic.
    let e = error(dir.path(), &text.replace("fra_eng(batch=64)", "fra_eng(batch=64, stpes=8)"), "bag");
    assert!(e.contains("`fra_eng` takes no argument `stpes`"), "{e}");
    // Scores over fewer tokens than the target vocabulary would leave the
    // last tokens' labels unscored.
    let narrow = text.replace("f32[B, T, 201]", "f32[B, T, 200]").replace("context, 201)", "context, 200)");
    let e = error(dir.path(), &narrow, "bag");
    assert!(e.contains("model `bag` scores 200 tokens, but the vocabulary of its data has 201"), "{e}");
}

#[test]
fn inference_graphs_take_the_data_sources_shapes() {
    // `d2l bench` times inference on these: a language model reads its 35
    // steps whatever the batch, and a translation model its 10.
    for (file, model, input, dims) in [("rnn.d2l", "rnn_concise", "tokens", [4, 35]), ("seq2seq.d2l", "seq2seq", "dec_in", [4, 10])] {
        let program = Program::load_file(Path::new("../models").join(file).as_path()).unwrap_or_else(|e| panic!("{e}"));
        let graph = d2l_train::graphs::inference_graph(&program, model, 4).unwrap_or_else(|e| panic!("{e}"));
        let id = graph.input_named(input).expect("the input");
        assert_eq!(graph.shape(id).dims(), dims, "{model}");
    }
}
