//! Text generation with a trained language model, as the course's
//! `predict_ch8`: the model runs on one token at a time (a batch of one, one
//! step) with its recurrent state fed back; it first reads the prefix
//! (warm-up), then predicts greedily, each prediction becoming the next
//! input. The one-token step is compiled once and run in a loop.

use std::collections::{BTreeMap, HashMap};

use d2l_dsl::{LowerOptions, Program};
use d2l_ir::{DType, Graph, OutputRole};
use d2l_runtime::data::text::{TokenKind, Vocab};
use d2l_device::Device;
use d2l_runtime::{Executable, Tensor, apply_updates};

use crate::Error;
use crate::graphs::param_feeds;

/// A language model compiled for one token at a time.
pub struct Generator {
    graph: Graph,
    exe: Box<dyn Executable>,
    feeds: HashMap<String, Tensor>,
    outputs: Vec<(String, Tensor)>,
    /// The model's token input.
    token: String,
    /// Recurrent state inputs and their zeros (where every text starts).
    state: Vec<(String, Tensor)>,
    /// The output holding the next token's scores.
    scores: String,
    vocab: Vocab,
    kind: TokenKind,
}

impl Generator {
    /// Compiles `model` (whose one data input takes token indices `[B, T]`)
    /// for B = T = 1 in evaluation mode, with `params` (a checkpoint's
    /// tensors; it may hold optimizer state too, which is ignored).
    pub fn new(program: &Program, model: &str, params: &BTreeMap<String, Tensor>, vocab: Vocab, kind: TokenKind, device: Device) -> Result<Generator, Error> {
        let probe = program.lower(model, &LowerOptions { default_dim: Some(1), ..LowerOptions::default() })?.graph;
        let is_state = |name: &str| probe.updates().any(|o| o.name == name);
        let fed: Vec<String> = probe.data_inputs().iter().filter_map(|&i| probe.leaf_name(i)).filter(|n| !is_state(n)).map(str::to_string).collect();
        let [token] = &fed[..] else {
            return Err(Error::Usage(format!("`generate` feeds one input of token indices, but model `{model}` takes {} inputs besides its state ({})", fed.len(), fed.join(", "))));
        };
        let lopts = LowerOptions { input_shapes: [(token.clone(), vec![1, 1])].into(), training: false, ..LowerOptions::default() };
        let graph = program.lower(model, &lopts)?.graph;
        let id = graph.input_named(token).expect("the probe found it");
        if graph.dtype(id) != DType::I64 {
            return Err(Error::Usage(format!("`generate` feeds token indices, but input `{token}` of model `{model}` is {}", graph.dtype(id))));
        }
        let scores = graph.outputs().iter().find(|o| o.role == OutputRole::Value).map(|o| o.name.clone()).ok_or_else(|| Error::Usage(format!("model `{model}` has no result besides its state")))?;
        let width = graph.shape(graph.output(&scores).expect("listed")).dims().last().copied().unwrap_or(0);
        if width != vocab.len() {
            return Err(Error::Usage(format!("model `{model}` scores {width} tokens, but the vocabulary of its data has {}", vocab.len())));
        }
        let feeds = param_feeds(&graph, params)?;
        let state: Vec<(String, Tensor)> = graph
            .data_inputs()
            .into_iter()
            .filter_map(|i| {
                let name = graph.leaf_name(i)?;
                is_state(name).then(|| (name.to_string(), Tensor::zeros(graph.dtype(i), graph.shape(i).dims())))
            })
            .collect();
        let exe = device.compile(&graph, 0)?;
        Ok(Generator { graph, exe, feeds, outputs: Vec::new(), token: token.clone(), state, scores, vocab, kind })
    }

    /// Runs one token through the model; returns the most likely next one.
    fn step(&mut self, token: usize) -> Result<usize, Error> {
        self.feeds.insert(self.token.clone(), Tensor::from_i64(&[1, 1], vec![token as i64]));
        self.exe.run_into(&self.feeds, &mut self.outputs)?;
        apply_updates(&self.graph, &mut self.outputs, &mut self.feeds);
        let (_, scores) = self.outputs.iter().find(|(n, _)| *n == self.scores).expect("the graph's output");
        let scores = scores.to_f64_vec();
        let row = &scores[scores.len() - self.vocab.len()..];
        Ok(row.iter().enumerate().fold(0, |best, (j, &v)| if v > row[best] { j } else { best }))
    }

    /// `prefix` followed by `len` predicted tokens. Tokens of the prefix not
    /// in the vocabulary read as `<unk>`, as in the course.
    pub fn generate(&mut self, prefix: &str, len: usize) -> Result<String, Error> {
        let mut tokens = self.vocab.encode(prefix, self.kind);
        if tokens.is_empty() {
            return Err(Error::Usage("the prefix has no tokens; give at least one".into()));
        }
        for (name, zeros) in &self.state {
            self.feeds.insert(name.clone(), zeros.clone());
        }
        // Warm-up: read the prefix, keeping only the state.
        for &t in &tokens[..tokens.len() - 1] {
            self.step(t)?;
        }
        for _ in 0..len {
            let next = self.step(*tokens.last().expect("not empty"))?;
            tokens.push(next);
        }
        Ok(self.vocab.decode(&tokens, self.kind)?)
    }
}
