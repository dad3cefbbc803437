//! Translating with a trained encoder–decoder: the course's
//! `predict_seq2seq` (§62, greedy) and beam search (§63), in evaluation
//! mode, one sentence at a time.
//!
//! The model is compiled once per beam width, for the data's sentence
//! length `steps`, and is run whole at every output step: step `t` feeds
//! the decoder `<bos>` and the `t` tokens chosen so far, padded to `steps`,
//! and reads the scores at position `t`. A decoder whose scores at `t`
//! depend only on its inputs up to `t` (a recurrent one; a Transformer's
//! under its causal mask) gives what a one-step decoder fed its own state
//! gives, for `steps` times the work of one step: little at ten tokens,
//! and no second, one-step model to write or keep in step with this one.

use std::collections::{BTreeMap, HashMap};

use d2l_dsl::{LowerOptions, Lowered, Program};
use d2l_ir::{DType, Graph, OutputRole};
use d2l_runtime::data::nmt::{BOS, EOS, PAD, truncate_pad};
use d2l_device::Device;
use d2l_runtime::{Executable, Tensor};

use crate::Error;
use crate::graphs::param_feeds;
use crate::sources::SentencePairs;

/// Beam search ranks finished candidates by `log P / L^ALPHA` (L their
/// length in tokens): the course's length normalisation.
pub const ALPHA: f64 = 0.75;

/// A translation model compiled for `width` sentences at once.
struct Compiled {
    exe: Box<dyn Executable>,
    width: usize,
}

/// A trained translation model and its data's vocabularies.
pub struct Translator<'p> {
    program: &'p Program,
    model: String,
    device: Device,
    feeds: HashMap<String, Tensor>,
    outputs: Vec<(String, Tensor)>,
    compiled: Vec<Compiled>,
    /// The model compiled for one sentence with its observed tensors as
    /// outputs `observed I`, and their names (see [`Translator::attention`]).
    observing: Option<(Compiled, Vec<(String, usize)>)>,
    /// The scores output and whether the model takes the source lengths.
    scores: String,
    takes_src_len: bool,
    pairs: SentencePairs,
}

impl<'p> Translator<'p> {
    /// `model` takes `src` and `dec_in` (token indices `[B, steps]`) and
    /// maybe `src_len` (`[B]`), and returns scores `[B, steps, V]` over the
    /// target vocabulary; `params` are a checkpoint's tensors.
    pub fn new(program: &'p Program, model: &str, params: &BTreeMap<String, Tensor>, pairs: SentencePairs, device: Device) -> Result<Translator<'p>, Error> {
        let probe = lower(program, model, pairs.steps, 1)?;
        for name in ["src", "dec_in"] {
            match probe.input_named(name) {
                Some(id) if probe.dtype(id) == DType::I64 && probe.shape(id).dims() == [1, pairs.steps] => {}
                Some(id) => return Err(Error::Usage(format!("model `{model}`'s input `{name}` is {}{}; a translation model takes token indices [B, {}]", probe.dtype(id), probe.shape(id), pairs.steps))),
                None => return Err(Error::Usage(format!("model `{model}` has no input `{name}`: a translation model takes `src` and `dec_in` (and may take `src_len`)"))),
            }
        }
        let scores = probe.outputs().iter().find(|o| o.role == OutputRole::Value).map(|o| o.name.clone()).ok_or_else(|| Error::Usage(format!("model `{model}` returns nothing to translate with")))?;
        let dims = probe.shape(probe.output(&scores).expect("listed")).dims().to_vec();
        if dims != [1, pairs.steps, pairs.tgt_vocab.len()] {
            return Err(Error::Usage(format!("model `{model}` returns {:?}; translating needs scores [B, {}, {}] over the target vocabulary", dims, pairs.steps, pairs.tgt_vocab.len())));
        }
        let feeds = param_feeds(&probe, params)?;
        let takes_src_len = probe.input_named("src_len").is_some();
        Ok(Translator { program, model: model.to_string(), device, feeds, outputs: Vec::new(), compiled: Vec::new(), observing: None, scores, takes_src_len, pairs })
    }

    /// The source sentence as the course's `predict_seq2seq` reads it:
    /// lowercased, split on spaces (unknown words are `<unk>`), `<eos>`
    /// appended, truncated or padded; and its valid length.
    fn source(&self, sentence: &str) -> (Vec<usize>, usize) {
        let mut ids: Vec<usize> = sentence.to_lowercase().split(' ').map(|w| self.pairs.src_vocab.index(w)).collect();
        ids.push(EOS);
        let len = ids.len().min(self.pairs.steps);
        (truncate_pad(&ids, self.pairs.steps, PAD), len)
    }

    /// Feeds one source sentence (token ids padded to `steps`, and its valid
    /// length), once per prefix, and the decoder inputs `<bos>` + prefix,
    /// padded.
    fn feed(&mut self, src: &[usize], src_len: usize, prefixes: &[Vec<usize>]) {
        let (width, steps) = (prefixes.len(), self.pairs.steps);
        let row = |ids: &[usize]| ids.iter().map(|&i| i as i64).collect::<Vec<i64>>();
        let srcs: Vec<i64> = (0..width).flat_map(|_| row(src)).collect();
        let dec: Vec<i64> = prefixes.iter().flat_map(|p| row(&truncate_pad(&[&[BOS][..], p].concat(), steps, PAD))).collect();
        self.feeds.insert("src".into(), Tensor::from_i64(&[width, steps], srcs));
        self.feeds.insert("dec_in".into(), Tensor::from_i64(&[width, steps], dec));
        if self.takes_src_len {
            self.feeds.insert("src_len".into(), Tensor::from_i64(&[width], vec![src_len as i64; width]));
        }
    }

    /// The log-probabilities of the next token after each of `prefixes`
    /// (tokens chosen so far, all of one length below `steps`), for one
    /// source sentence.
    fn next_log_probs(&mut self, src: &[usize], src_len: usize, prefixes: &[Vec<usize>]) -> Result<Vec<Vec<f64>>, Error> {
        let width = prefixes.len();
        let steps = self.pairs.steps;
        let t = prefixes[0].len();
        if !self.compiled.iter().any(|c| c.width == width) {
            let graph = lower(self.program, &self.model, steps, width)?;
            self.compiled.push(Compiled { exe: self.device.compile(&graph, 0)?, width });
        }
        self.feed(src, src_len, prefixes);
        let exe = &mut self.compiled.iter_mut().find(|c| c.width == width).expect("compiled above").exe;
        exe.run_into(&self.feeds, &mut self.outputs)?;
        let (_, scores) = self.outputs.iter().find(|(n, _)| *n == self.scores).expect("the graph's output");
        let scores = scores.to_f64_vec();
        let v = self.pairs.tgt_vocab.len();
        Ok((0..width)
            .map(|b| {
                let logits = &scores[(b * steps + t) * v..(b * steps + t + 1) * v];
                let max = logits.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let log_sum = logits.iter().map(|x| (x - max).exp()).sum::<f64>().ln() + max;
                logits.iter().map(|x| x - log_sum).collect()
            })
            .collect())
    }

    /// The course's greedy `predict_seq2seq`: the most likely token at
    /// every step, until `<eos>` or `steps` tokens.
    pub fn greedy(&mut self, sentence: &str) -> Result<String, Error> {
        self.beam(sentence, 1)
    }

    /// Beam search: at every step the `k` most likely of the `k · V`
    /// continuations of the candidates still open; a candidate ends at
    /// `<eos>` or after `steps` tokens, and the best of all ended ones by
    /// `log P / L^0.75` wins. `k = 1` is greedy search.
    pub fn beam(&mut self, sentence: &str, k: usize) -> Result<String, Error> {
        let tokens = self.beam_tokens(sentence, k)?;
        Ok(self.words(&tokens))
    }

    /// The target tokens beam search chooses (ending with `<eos>` unless
    /// `steps` tokens came first).
    pub fn beam_tokens(&mut self, sentence: &str, k: usize) -> Result<Vec<usize>, Error> {
        if k == 0 {
            return Err(Error::Usage("the beam size must be at least 1".into()));
        }
        let (src, src_len) = self.source(sentence);
        let mut open: Vec<(Vec<usize>, f64)> = vec![(Vec::new(), 0.0)];
        let mut ended: Vec<(Vec<usize>, f64)> = Vec::new();
        for _ in 0..self.pairs.steps {
            if open.is_empty() {
                break;
            }
            let prefixes: Vec<Vec<usize>> = open.iter().map(|(p, _)| p.clone()).collect();
            let log_probs = self.next_log_probs(&src, src_len, &prefixes)?;
            let mut next: Vec<(Vec<usize>, f64)> = Vec::new();
            for ((prefix, score), lp) in open.iter().zip(&log_probs) {
                for (token, l) in lp.iter().enumerate() {
                    next.push(([&prefix[..], &[token][..]].concat(), score + l));
                }
            }
            // Stable: ties keep the lower token and the earlier candidate.
            next.sort_by(|a, b| b.1.total_cmp(&a.1));
            next.truncate(k);
            open.clear();
            for (tokens, score) in next {
                if tokens.last() == Some(&EOS) {
                    ended.push((tokens, score));
                } else {
                    open.push((tokens, score));
                }
            }
        }
        ended.append(&mut open);
        let normalised = |(tokens, score): &(Vec<usize>, f64)| {
            let len = tokens.iter().filter(|&&t| t != EOS).count().max(1);
            score / (len as f64).powf(ALPHA)
        };
        let best = ended.iter().max_by(|a, b| normalised(a).total_cmp(&normalised(b))).expect("at least one candidate");
        Ok(best.0.clone())
    }

    /// Target tokens as text, `<eos>` left out.
    pub fn words(&self, tokens: &[usize]) -> String {
        let words: Vec<&str> = tokens.iter().filter(|&&t| t != EOS).map(|&t| self.pairs.tgt_vocab.token(t).unwrap_or("<unk>")).collect();
        words.join(" ")
    }

    /// Source and decoder-input tokens as text, position by position (what
    /// the rows and columns of an attention map stand for).
    pub fn positions(&self, sentence: &str, tokens: &[usize]) -> (Vec<String>, Vec<String>) {
        let (src, len) = self.source(sentence);
        let src = src[..len].iter().map(|&t| self.pairs.src_vocab.token(t).unwrap_or("<unk>").to_string()).collect();
        let dec = [&[BOS][..], tokens].concat().iter().take(self.pairs.steps).map(|&t| self.pairs.tgt_vocab.token(t).unwrap_or("<unk>").to_string()).collect();
        (src, dec)
    }

    /// The tensors the model `observe`s (its attention weights) while it
    /// scores `tokens` as the translation of `sentence`: the whole window
    /// run once, so position t's rows are what step t of decoding saw. One
    /// map per observed name; a block called at every step (Bahdanau's
    /// attention) observes one query per call, stacked in call order.
    pub fn attention(&mut self, sentence: &str, tokens: &[usize]) -> Result<Vec<ObservedMap>, Error> {
        let steps = self.pairs.steps;
        if self.observing.is_none() {
            let lowered = lower_with_observed(self.program, &self.model, steps, 1)?;
            let mut graph = lowered.graph;
            let mut names: Vec<(String, usize)> = Vec::new();
            for (i, (name, node)) in lowered.observed.iter().enumerate() {
                let dims = graph.shape(*node).dims().to_vec();
                if dims.len() < 2 {
                    return Err(Error::Usage(format!("`{name}` is observed with shape {dims:?}; an attention map needs [..., queries, keys]")));
                }
                graph.set_output(format!("observed {i}"), *node);
                names.push((name.clone(), i));
            }
            if names.is_empty() {
                return Err(Error::Usage(format!("model `{}` observes nothing: attention maps are what it passes to `observe(x, \"name\")` (the standard library's attention blocks observe their weights)", self.model)));
            }
            self.observing = Some((Compiled { exe: self.device.compile(&graph, 0)?, width: 1 }, names));
        }
        let (src, src_len) = self.source(sentence);
        self.feed(&src, src_len, &[tokens.to_vec()]);
        let (compiled, names) = self.observing.as_mut().expect("compiled above");
        compiled.exe.run_into(&self.feeds, &mut self.outputs)?;
        let mut maps: Vec<ObservedMap> = Vec::new();
        for (name, i) in names.iter() {
            let (_, t) = self.outputs.iter().find(|(n, _)| *n == format!("observed {i}")).expect("an output of the graph");
            let dims = t.shape().dims().to_vec();
            let (q, k) = (dims[dims.len() - 2], dims[dims.len() - 1]);
            let heads = dims[..dims.len() - 2].iter().product::<usize>();
            let values = t.to_f64_vec();
            let map = match maps.iter_mut().find(|m| m.name == *name) {
                Some(m) if m.heads == heads && m.keys == k => m,
                Some(m) => return Err(Error::Usage(format!("`{name}` is observed as [{}, _, {}] and then as {dims:?}: calls of one name stack along the queries", m.heads, m.keys))),
                None => {
                    maps.push(ObservedMap { name: name.clone(), heads, queries: 0, keys: k, weights: vec![Vec::new(); heads] });
                    maps.last_mut().expect("pushed")
                }
            };
            for (h, head) in map.weights.iter_mut().enumerate() {
                head.extend_from_slice(&values[h * q * k..(h + 1) * q * k]);
            }
            map.queries += q;
        }
        Ok(maps)
    }
}

/// What one `observe` name held for one sentence: per head (the leading
/// dims, batch of one included), a queries x keys matrix, row-major.
#[derive(Clone, Debug, PartialEq)]
pub struct ObservedMap {
    pub name: String,
    pub heads: usize,
    pub queries: usize,
    pub keys: usize,
    pub weights: Vec<Vec<f64>>,
}

/// `model` in evaluation mode for `width` sentences of `steps` tokens.
fn lower(program: &Program, model: &str, steps: usize, width: usize) -> Result<Graph, Error> {
    Ok(lower_with_observed(program, model, steps, width)?.graph)
}

/// [`lower`], with what the model `observe`s.
fn lower_with_observed(program: &Program, model: &str, steps: usize, width: usize) -> Result<Lowered, Error> {
    let shapes = [("src".to_string(), vec![width, steps]), ("dec_in".to_string(), vec![width, steps]), ("src_len".to_string(), vec![width])];
    let lopts = LowerOptions { input_shapes: shapes.into_iter().collect(), training: false, default_dim: Some(1), ..LowerOptions::default() };
    Ok(program.lower(model, &lopts)?)
}
