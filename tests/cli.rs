//! End-to-end tests of the `d2l` command (this file belongs to the root
//! package, whose binary it runs; the `d2l-tests` crate lives beside it).

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Output};

use d2l::Tensor;

fn d2l(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_d2l")).args(args).current_dir(env!("CARGO_MANIFEST_DIR")).output().expect("the d2l binary runs")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn summary_prints_the_lenet_trace() {
    let o = d2l(&["summary", "models/lenet.d2l"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = stdout(&o);
    for shape in ["[1, 6, 28, 28]", "[1, 6, 14, 14]", "[1, 16, 10, 10]", "[1, 16, 5, 5]", "[1, 400]", "[1, 120]", "[1, 84]", "[1, 10]"] {
        assert!(text.contains(shape), "missing {shape} in\n{text}");
    }
    assert!(text.contains("total parameters: 61,706"), "{text}");
}

#[test]
fn check_accepts_every_model_file() {
    for entry in std::fs::read_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("models")).unwrap() {
        let path = entry.unwrap().path();
        let o = d2l(&["check", path.to_str().unwrap()]);
        assert!(o.status.success(), "{}: {}", path.display(), stderr(&o));
    }
}

#[test]
fn errors_point_at_the_source_and_fail() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.d2l");
    std::fs::write(&bad, "model m(x: f32[B, 4]) {\n    return linear(x, 2) |> sigmoidd\n}\n").unwrap();
    let o = d2l(&["check", bad.to_str().unwrap()]);
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(err.contains("unknown name `sigmoidd`") && err.contains("bad.d2l:2:28") && err.contains("^^^^^^^^") && err.contains("did you mean `sigmoid`?"), "{err}");
}

/// Deterministic, easily recomputed parameter values.
fn pattern(n: usize, k: usize) -> Vec<f32> {
    (0..n).map(|i| (((i * 7 + k * 3) % 11) as f32 - 5.0) / 50.0).collect()
}

#[test]
fn run_mlp_matches_a_hand_computation() {
    let dir = tempfile::tempdir().unwrap();
    let (w1, b1, w2, b2) = (pattern(784 * 256, 1), pattern(256, 2), pattern(256 * 10, 3), pattern(10, 4));
    let params = dir.path().join("mlp.safetensors");
    let tensors = [
        ("linear_0.W".to_string(), Tensor::from_f32(&[784, 256], w1.clone())),
        ("linear_0.b".to_string(), Tensor::from_f32(&[256], b1.clone())),
        ("linear_1.W".to_string(), Tensor::from_f32(&[256, 10], w2.clone())),
        ("linear_1.b".to_string(), Tensor::from_f32(&[10], b2.clone())),
    ];
    let refs: Vec<(String, &Tensor)> = tensors.iter().map(|(n, t)| (n.clone(), t)).collect();
    d2l_runtime::checkpoint::save(&params, &refs, &BTreeMap::new()).unwrap();
    let batch = 3;
    let x: Vec<f32> = (0..batch * 784).map(|i| ((i % 29) as f32) / 29.0).collect();
    let input = dir.path().join("x.npy");
    d2l_runtime::npy::write_npy(&input, &Tensor::from_f32(&[batch, 1, 28, 28], x.clone())).unwrap();
    let out = dir.path().join("y.npy");
    let o = d2l(&["run", "models/mlp.d2l", "--params", params.to_str().unwrap(), "--input", input.to_str().unwrap(), "--output", out.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).starts_with("output: f32[3, 10]"), "{}", stdout(&o));

    // The same network by hand: relu(x W1 + b1) W2 + b2, in f64.
    let mut expected = vec![0f64; batch * 10];
    for n in 0..batch {
        let h: Vec<f64> = (0..256)
            .map(|j| {
                let s: f64 = (0..784).map(|i| x[n * 784 + i] as f64 * w1[i * 256 + j] as f64).sum::<f64>() + b1[j] as f64;
                s.max(0.0)
            })
            .collect();
        for k in 0..10 {
            expected[n * 10 + k] = (0..256).map(|j| h[j] * w2[j * 10 + k] as f64).sum::<f64>() + b2[k] as f64;
        }
    }
    let got = d2l_runtime::npy::read_npy(&out).unwrap();
    assert_eq!(got.shape().0, vec![batch, 10]);
    for (g, e) in got.to_f64_vec().iter().zip(&expected) {
        assert!((g - e).abs() <= 1e-4 * (1.0 + e.abs()), "got {g}, expected {e}");
    }
}

#[test]
fn train_linear_regression_recovers_the_true_weights() {
    let dir = tempfile::tempdir().unwrap();
    let o = d2l(&["train", "models/linear_regression.d2l", "--out", dir.path().to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = stdout(&o);
    let values = |prefix: &str| -> Vec<f64> {
        let line = text.lines().find(|l| l.starts_with(prefix)).unwrap_or_else(|| panic!("no `{prefix}` in\n{text}"));
        line[line.find('[').unwrap() + 1..line.find(']').unwrap()].split(", ").map(|v| v.parse().unwrap()).collect()
    };
    let (w, b) = (values("w = "), values("b = "));
    assert!((w[0] - 2.0).abs() < 1e-2 && (w[1] + 3.4).abs() < 1e-2 && (b[0] - 4.2).abs() < 1e-2, "w {w:?} b {b:?}");
    for ext in ["safetensors", "csv", "json", "svg"] {
        assert!(dir.path().join(format!("linear_regression.{ext}")).exists(), "{ext} written");
    }
    // The checkpoint feeds `d2l run`.
    let input = dir.path().join("x.npy");
    d2l_runtime::npy::write_npy(&input, &Tensor::from_f32(&[1, 2], vec![1.0, 1.0])).unwrap();
    let params = dir.path().join("linear_regression.safetensors");
    let o = d2l(&["run", "models/linear_regression.d2l", "--params", params.to_str().unwrap(), "--input", input.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = stdout(&o);
    let value: f64 = text[text.find("[[").unwrap() + 2..text.find("]]").unwrap()].parse().unwrap();
    assert!((value - 2.8).abs() < 1e-2, "2 - 3.4 + 4.2 = 2.8, got {text}");
}

#[test]
fn resume_continues_where_a_run_stopped() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().to_str().unwrap();
    let o = d2l(&["train", "models/linear_regression.d2l", "--out", out, "--epochs", "1"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = d2l(&["train", "models/linear_regression.d2l", "--out", out, "--epochs", "2", "--resume"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("at epoch 1") && stderr(&o).contains("epoch   2:") && !stderr(&o).contains("epoch   1:"), "{}", stderr(&o));
    let csv = std::fs::read_to_string(dir.path().join("linear_regression.csv")).unwrap();
    assert_eq!(csv.lines().count(), 3, "header + two epochs:\n{csv}");
}

#[test]
fn zero_epochs_writes_the_initial_parameters() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().to_str().unwrap();
    let o = d2l(&["train", "models/linear_regression.d2l", "--out", out, "--epochs", "0", "--seed", "3"]);
    assert!(o.status.success(), "{}", stderr(&o));
    // linear_regression.d2l draws w from normal(0, 0.01) and starts b at 0.
    let text = stdout(&o);
    assert!(text.contains("b = [0.0000]"), "{text}");
    let (tensors, _) = d2l_runtime::checkpoint::load(dir.path().join("linear_regression.safetensors")).unwrap();
    assert!(tensors.contains_key("w") && tensors.contains_key("b"), "{:?}", tensors.keys());
    let csv = std::fs::read_to_string(dir.path().join("linear_regression.csv")).unwrap();
    assert_eq!(csv.lines().count(), 1, "a header, no epoch:\n{csv}");
}

#[test]
fn models_too_big_for_memory_are_refused_by_every_command() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("huge.d2l");
    std::fs::write(&file, "model huge(x: f32[B, 4]) -> f32[B, 4000000000000] {\n    param W: f32[4, 4000000000000] = normal(0, 0.01)\n    return x @ W\n}\n").unwrap();
    let x = dir.path().join("x.npy");
    d2l_runtime::npy::write_npy(&x, &Tensor::from_f32(&[1, 4], vec![1.0; 4])).unwrap();
    let file = file.to_str().unwrap();
    for args in [vec!["check", file], vec!["summary", file], vec!["ir", file], vec!["run", file, "--input", x.to_str().unwrap()]] {
        let o = d2l(&args);
        // A clean error (exit 1), not an abort in the allocator (134).
        assert_eq!(o.status.code(), Some(1), "{args:?}: {}", stderr(&o));
        let err = stderr(&o);
        assert!(err.contains("parameter `W` (f32[4, 4000000000000]) needs 64,000,000,000,000 bytes (64.0 TB), more than this machine's memory") && err.contains("huge.d2l:2:5"), "{args:?}: {err}");
    }
}

#[test]
fn check_and_summary_report_parameter_and_step_memory() {
    let o = d2l(&["check", "models/mlp.d2l", "-m", "mlp"]);
    assert!(o.status.success(), "{}", stderr(&o));
    // 203,530 f32 parameters; the step at the train block's batch of 256.
    assert!(stdout(&o).contains("parameters 814,120 bytes (814.1 KB); training step at batch 256: "), "{}", stdout(&o));
    let o = d2l(&["summary", "models/lenet.d2l", "--dim", "B=64"]);
    assert!(stdout(&o).contains("memory: parameters 246,824 bytes (246.8 KB); training step at batch 64: "), "{}", stdout(&o));
}

#[test]
fn translate_reads_a_checkpoint_and_scores_with_bleu() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().to_str().unwrap();
    // The initial parameters are enough to exercise the path; `d2l train`
    // of a translation model ends with the course's four test sentences.
    let o = d2l(&["train", "models/seq2seq.d2l", "--out", out, "--epochs", "0"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = stdout(&o);
    assert!(text.contains("greedy:\ngo . => ") && text.contains("beam search, k = 3:\n") && text.contains("i'm home . => "), "{text}");
    let params = dir.path().join("seq2seq.safetensors");
    let params = params.to_str().unwrap();
    let o = d2l(&["translate", "models/seq2seq.d2l", "--params", params, "go .", "i lost .", "--reference", "va !", "--reference", "j'ai perdu .", "--beam", "2"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let lines: Vec<String> = stdout(&o).lines().map(str::to_string).collect();
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert!(lines[0].starts_with("go . => ") && lines[0].contains(", bleu "), "{lines:?}");
    // One reference for two sentences is a usage error, as is a model
    // that does not translate.
    let o = d2l(&["translate", "models/seq2seq.d2l", "--params", params, "go .", "i lost .", "--reference", "va !"]);
    assert!(!o.status.success() && stderr(&o).contains("2 sentences but 1 references"), "{}", stderr(&o));
    let o = d2l(&["translate", "models/mlp.d2l", "--params", params, "go ."]);
    assert!(!o.status.success() && stderr(&o).contains("no sentence pairs to translate with"), "{}", stderr(&o));
    // §62's model has no attention to draw; §66's draws one map per
    // sentence, its ten decoding steps down, the ten source positions across.
    let svg = dir.path().join("attention.svg");
    let o = d2l(&["translate", "models/seq2seq.d2l", "--params", params, "go .", "--attention", svg.to_str().unwrap()]);
    assert!(!o.status.success() && stderr(&o).contains("observes nothing"), "{}", stderr(&o));
    let o = d2l(&["train", "models/bahdanau.d2l", "--out", out, "--epochs", "0"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let params = dir.path().join("bahdanau.safetensors");
    let o = d2l(&["translate", "models/bahdanau.d2l", "--params", params.to_str().unwrap(), "go .", "i lost .", "--attention", svg.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    for i in [1, 2] {
        let text = std::fs::read_to_string(dir.path().join(format!("attention-{i}.svg"))).unwrap();
        assert!(text.contains("attention_decoder_0.additive_attention_0.weights") && text.contains("source positions: "), "{text}");
        assert_eq!(text.matches("<title>").count(), 100, "10 queries x 10 keys");
    }
}

#[test]
fn kernel_regression_writes_predictions_and_attention() {
    let dir = tempfile::tempdir().unwrap();
    let o = d2l(&["train", "models/nadaraya_watson.d2l", "--out", dir.path().to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = stdout(&o);
    assert!(stderr(&o).contains("epoch   5: loss ") && text.contains("w = [") && text.contains("test MSE against 2 sin x + x^0.8: "), "{text}");
    let csv = std::fs::read_to_string(dir.path().join("nadaraya_watson-predictions.csv")).unwrap();
    assert_eq!(csv.lines().count(), 51, "a header and the 50 test inputs");
    let heatmap = std::fs::read_to_string(dir.path().join("nadaraya_watson-attention.svg")).unwrap();
    assert_eq!(heatmap.matches("<title>").count(), 50 * 50);
}

#[test]
fn bert_trains_in_steps_and_encodes_sentences() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().to_str().unwrap();
    // A run counted in steps: a line per step with the MLM and NSP losses,
    // their means at the end, and a log row per step.
    let o = d2l(&["train", "models/bert.d2l", "--out", out, "--steps", "3", "--batch", "8", "--limit", "64", "--seed", "3"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let trained = stdout(&o);
    let err = stderr(&o);
    assert!(err.contains("vocabulary of 20256") && err.contains("3 steps"), "{err}");
    for step in ["step    1: loss ", "step    3: loss "] {
        assert!(err.contains(step), "{err}");
    }
    assert!(err.contains(", mlm_loss ") && err.contains(", mlm_weighted_loss ") && err.contains(", nsp_loss "), "{err}");
    // Then the course's encodings, and last the course's line: the means.
    let text = stdout(&o);
    assert!(text.contains("6 tokens -> encoding [1, 6, 128]") && text.contains("cosine similarity of the two \"crane\" encodings: "), "{text}");
    assert!(text.trim_end().lines().last().unwrap().starts_with("mean over steps 1-3: loss "), "{text}");
    let csv = std::fs::read_to_string(dir.path().join("bert.csv")).unwrap();
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines.len(), 4, "header + three steps:\n{csv}");
    assert!(lines[0].starts_with("step,train_loss,") && lines[0].ends_with(",mlm_loss,mlm_weighted_loss,nsp_loss"), "{csv}");
    // Resuming continues the count.
    let o = d2l(&["train", "models/bert.d2l", "--out", out, "--steps", "4", "--batch", "8", "--limit", "64", "--seed", "3", "--resume"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("at step 3") && stderr(&o).contains("step    4: loss ") && !stderr(&o).contains("step    3: loss "), "{}", stderr(&o));
    assert_eq!(std::fs::read_to_string(dir.path().join("bert.csv")).unwrap().lines().count(), 5);
    // The course's encodings: (1, 6, 128) and (1, 10, 128), and the
    // similarity of the two "crane"s.
    let params = dir.path().join("bert.safetensors");
    let o = d2l(&["bert-encode", "models/bert.d2l", "--params", params.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = stdout(&o);
    assert!(text.contains("6 tokens -> encoding [1, 6, 128]") && text.contains("10 tokens -> encoding [1, 10, 128]"), "{text}");
    assert!(text.contains("cosine similarity of the two \"crane\" encodings: "), "{text}");
    // The vocabulary is rebuilt with the seed the checkpoint records (it
    // orders words of equal frequency), so these are the encodings training
    // printed after step 3 - the checkpoint now holds step 4's parameters,
    // so compare with a fresh run's instead: train again to step 3.
    let again = tempfile::tempdir().unwrap();
    let o = d2l(&["train", "models/bert.d2l", "--out", again.path().to_str().unwrap(), "--steps", "3", "--batch", "8", "--limit", "64", "--seed", "3"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let block = |t: &str| t.lines().skip_while(|l| !l.starts_with("\"a crane is flying\"")).take_while(|l| !l.starts_with("mean over")).collect::<Vec<_>>().join("\n");
    assert_eq!(block(&stdout(&o)), block(&trained), "equal seeds train equally");
    let o = d2l(&["bert-encode", "models/bert.d2l", "--params", again.path().join("bert.safetensors").to_str().unwrap()]);
    assert_eq!(block(&stdout(&o)), block(&trained));
    let o = d2l(&["bert-encode", "models/bert.d2l", "--params", params.to_str().unwrap(), "a zyzzyva is flying"]);
    assert!(o.status.success() && stdout(&o).contains("zyzzyva") && stdout(&o).contains("(unknown: <unk>)"), "{}", stdout(&o));
    // A model without BERT's data has nothing to encode with.
    let o = d2l(&["bert-encode", "models/mlp.d2l", "--params", params.to_str().unwrap()]);
    assert!(!o.status.success() && stderr(&o).contains("no BERT vocabulary"), "{}", stderr(&o));
}

/// `--device cuda` without GPU support in the build, or without a driver on
/// the machine, is a clean error and a failing exit, never a panic; the
/// grid interpreter (`--backend grid`) runs the GPU code on the CPU, and
/// `bench --verify` checks it against the interpreter.
#[test]
fn cuda_without_a_gpu_fails_cleanly_and_grid_runs_the_gpu_code() {
    let o = d2l(&["bench", "models/linear_regression.d2l", "--device", "cuda", "--steps", "1", "--seconds", "0"]);
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(err.contains("without GPU support") || err.contains("no NVIDIA driver"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    let out = tempfile::tempdir().unwrap();
    let o = d2l(&["train", "models/linear_regression.d2l", "--backend", "grid", "--epochs", "1", "--out", out.path().to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    // What a GPU machine runs per model (with --device cuda): one step
    // against the interpreter, then the timing.
    let o = d2l(&["bench", "models/lenet.d2l", "--backend", "grid", "--verify", "--batch", "2", "--steps", "1", "--seconds", "0"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o).matches("agrees with the interpreter").count(), 2, "{}", stdout(&o));
}
