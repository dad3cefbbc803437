//! Contextual encodings from a trained BERT (course §69's
//! `get_bert_encoding`): a sentence, or a pair, becomes `<cls>` A `<sep>`
//! [B `<sep>`] with segments 0 and 1, and the model's encoder (what its
//! `bert_encoder` block observes as `encoding`) gives one vector per token.

use std::collections::BTreeMap;

use d2l_dsl::{LowerOptions, Program};
use d2l_runtime::data::text::Vocab;
use d2l_runtime::data::wiki::tokens_and_segments;
use d2l_device::Device;
use d2l_runtime::Tensor;

use crate::Error;
use crate::graphs::param_feeds;

/// The encodings of one input.
#[derive(Clone, Debug)]
pub struct Encoding {
    /// The tokens the model read, `<cls>` and `<sep>` included.
    pub tokens: Vec<String>,
    /// [1, tokens, hidden].
    pub values: Tensor,
}

impl Encoding {
    pub fn hidden(&self) -> usize {
        self.values.dims().last().copied().unwrap_or(0)
    }

    /// The vector of token `i`.
    pub fn vector(&self, i: usize) -> Vec<f64> {
        let h = self.hidden();
        self.values.to_f64_vec()[i * h..(i + 1) * h].to_vec()
    }
}

/// A trained BERT ready to encode: its program and model, parameters,
/// vocabulary and longest input.
pub struct Encoder<'a> {
    pub program: &'a Program,
    pub model: &'a str,
    pub params: &'a BTreeMap<String, Tensor>,
    pub vocab: &'a Vocab,
    pub max_len: usize,
    pub device: Device,
}

impl Encoder<'_> {
    /// Encodes `a` (and the pair `a`, `b`): words split on spaces,
    /// lowercased as the training text is, unknown ones read as `<unk>`.
    /// Each call compiles the encoder for its input's length.
    pub fn encode(&self, a: &str, b: Option<&str>) -> Result<Encoding, Error> {
        let (program, model, vocab, max_len) = (self.program, self.model, self.vocab, self.max_len);
        let (la, lb) = (a.to_lowercase(), b.map(str::to_lowercase));
        let wa: Vec<&str> = la.split_whitespace().collect();
        let wb: Option<Vec<&str>> = lb.as_ref().map(|s| s.split_whitespace().collect());
        let (tokens, segments) = tokens_and_segments(&wa, wb.as_deref());
        let t = tokens.len();
        if t > max_len {
            return Err(Error::Usage(format!("{t} tokens with <cls> and <sep>; the model was trained on at most {max_len}")));
        }
        let ids: Vec<i64> = tokens.iter().map(|w| vocab.index(w) as i64).collect();
        let shapes = [("tokens", vec![1, t]), ("segments", vec![1, t]), ("valid_lens", vec![1]), ("pred_positions", vec![1, 1])];
        let lopts = LowerOptions { input_shapes: shapes.iter().map(|(n, s)| (n.to_string(), s.clone())).collect(), training: false, ..LowerOptions::default() };
        let lowered = program.lower(model, &lopts)?;
        let mut graph = lowered.graph;
        let encoding = lowered.observed.iter().filter(|(name, _)| name.rsplit('.').next() == Some("encoding")).map(|(_, n)| *n).next_back();
        let encoding = encoding.ok_or_else(|| Error::Usage(format!("model `{model}` observes no `encoding` (the std `bert_encoder` block does)")))?;
        if graph.shape(encoding).rank() != 3 || graph.shape(encoding).dims()[..2] != [1, t] {
            return Err(Error::Usage(format!("model `{model}` observes `encoding` as {}; a BERT encoding is [1, tokens, hidden]", graph.shape(encoding))));
        }
        graph.retain_outputs(|_| false);
        graph.set_output("encoding", encoding);
        let graph = d2l_passes::simplify(&graph);
        let mut feeds = param_feeds(&graph, self.params)?;
        feeds.insert("tokens".into(), Tensor::from_i64(&[1, t], ids));
        feeds.insert("segments".into(), Tensor::from_i64(&[1, t], segments));
        feeds.insert("valid_lens".into(), Tensor::from_i64(&[1], vec![t as i64]));
        feeds.insert("pred_positions".into(), Tensor::from_i64(&[1, 1], vec![0]));
        let mut exe = self.device.compile(&graph, 0)?;
        let mut outputs = Vec::new();
        exe.run_into(&feeds, &mut outputs)?;
        let values = outputs.into_iter().find(|(n, _)| n == "encoding").map(|(_, t)| t).expect("the graph's output");
        Ok(Encoding { tokens, values })
    }
}

/// Cosine similarity of two vectors.
pub fn cosine(a: &[f64], b: &[f64]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let norm = |v: &[f64]| v.iter().map(|x| x * x).sum::<f64>().sqrt();
    dot / (norm(a) * norm(b)).max(f64::MIN_POSITIVE)
}
