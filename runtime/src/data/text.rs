//! Text for the course's language models (Dive into Deep Learning §§52–53):
//! reading and preprocessing lines, tokenizing, the vocabulary, and the
//! random and sequential minibatch iterators over a token corpus.
//!
//! Everything reproduces the course's Python exactly, except the random
//! draws (offsets and shuffles come from a seeded [`StdRng`], not Python's
//! `random`, so the values differ but the ranges and structure are the same).

use std::collections::HashMap;
use std::path::Path;

use ndarray::{ArrayD, IxDyn};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

use super::DataError;
use crate::Tensor;

/// The course's copy of "The Time Machine", inside the `time-machine`
/// dataset folder.
pub const TIME_MACHINE_FILE: &str = "timemachine.txt";

/// Reads a UTF-8 text file into lines as Python's `readlines` does (`\n`,
/// `\r\n` and a lone `\r` end a line, a last line without a line break
/// counts), but without the line breaks; a leading byte-order mark is
/// dropped. An empty file, or one with only blank lines, is an error.
pub fn read_lines(path: &Path) -> Result<Vec<String>, DataError> {
    let bytes = std::fs::read(path).map_err(|e| DataError::io(path, e))?;
    let text = decode_utf8(&bytes, path)?;
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let lines = split_lines(text);
    if lines.iter().all(|l| l.is_empty()) {
        let what = if text.is_empty() {
            "the file is empty"
        } else {
            "the file has only blank lines"
        };
        return Err(text_err(path, format!("{what}; expected text")));
    }
    Ok(lines)
}

/// The course's `read_time_machine`: [`read_lines`], then [`preprocess`]
/// on each line (so any English text works, not only the novel). An error
/// if no line has a letter left.
pub fn read_time_machine(path: &Path) -> Result<Vec<String>, DataError> {
    let lines: Vec<String> = read_lines(path)?.iter().map(|l| preprocess(l)).collect();
    if lines.iter().all(|l| l.is_empty()) {
        return Err(text_err(
            path,
            "the file has no ASCII letters (A-Z, a-z), so nothing is left after \
             preprocessing (which keeps only letters)"
                .into(),
        ));
    }
    Ok(lines)
}

/// The course's line preprocessing, `re.sub('[^A-Za-z]+', ' ', line)
/// .strip().lower()`: every run of characters other than ASCII letters
/// becomes one space, then the ends are trimmed and letters lowercased.
pub fn preprocess(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut gap = false;
    for c in line.chars() {
        if c.is_ascii_alphabetic() {
            // A gap before the first letter is what strip() removes.
            if gap && !out.is_empty() {
                out.push(' ');
            }
            gap = false;
            out.push(c.to_ascii_lowercase());
        } else {
            gap = true;
        }
    }
    out
}

/// What a token is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TokenKind {
    /// One Unicode character (`list(line)`); spaces are tokens too.
    Char,
    /// A whitespace-separated word (`line.split()`).
    Word,
}

/// The course's `tokenize`: each line's tokens, borrowed from the line.
pub fn tokenize(lines: &[String], kind: TokenKind) -> Vec<Vec<&str>> {
    lines
        .iter()
        .map(|l| split_tokens(l, kind).collect())
        .collect()
}

fn split_tokens(text: &str, kind: TokenKind) -> Box<dyn Iterator<Item = &str> + '_> {
    match kind {
        TokenKind::Char => Box::new(
            text.char_indices()
                .map(move |(i, c)| &text[i..i + c.len_utf8()]),
        ),
        TokenKind::Word => Box::new(text.split_whitespace()),
    }
}

/// The token spelled for unknown tokens, always at index 0.
pub const UNK: &str = "<unk>";

/// The course's `Vocab`: index 0 is `<unk>`, then the reserved tokens, then
/// the other tokens by descending frequency, ties in order of first
/// occurrence.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Vocab {
    idx_to_token: Vec<String>,
    token_to_idx: HashMap<String, usize>,
    token_freqs: Vec<(String, usize)>,
}

impl Vocab {
    /// Counts `tokens` (a flattened corpus, e.g. `tokenize(..).iter().flatten()`)
    /// and keeps those seen at least `min_freq` times. A reserved token
    /// that repeats `<unk>` or another reserved token is an error.
    pub fn new<I, S>(tokens: I, min_freq: usize, reserved: &[&str]) -> Result<Vocab, DataError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut position: HashMap<String, usize> = HashMap::new();
        let mut token_freqs: Vec<(String, usize)> = Vec::new();
        for t in tokens {
            let t = t.as_ref();
            match position.get(t) {
                Some(&i) => token_freqs[i].1 += 1,
                None => {
                    position.insert(t.to_owned(), token_freqs.len());
                    token_freqs.push((t.to_owned(), 1));
                }
            }
        }
        // Stable, like Python's sorted(): ties stay in first-occurrence order.
        token_freqs.sort_by_key(|(_, count)| std::cmp::Reverse(*count));

        let mut vocab = Vocab {
            idx_to_token: Vec::new(),
            token_to_idx: HashMap::new(),
            token_freqs: Vec::new(),
        };
        for &r in std::iter::once(&UNK).chain(reserved) {
            if vocab.token_to_idx.contains_key(r) {
                return Err(DataError::Invalid(format!(
                    "reserved token {r:?} appears twice in the vocabulary \
                     (reserved tokens: {reserved:?}; {UNK:?} is always index 0)"
                )));
            }
            vocab.push(r);
        }
        for (t, freq) in &token_freqs {
            if *freq < min_freq {
                break;
            }
            if !vocab.token_to_idx.contains_key(t) {
                vocab.push(t);
            }
        }
        vocab.token_freqs = token_freqs;
        Ok(vocab)
    }

    fn push(&mut self, token: &str) {
        self.token_to_idx
            .insert(token.to_owned(), self.idx_to_token.len());
        self.idx_to_token.push(token.to_owned());
    }

    /// The number of tokens, `<unk>` and reserved ones included.
    #[allow(clippy::len_without_is_empty)] // never empty: it always holds <unk>
    pub fn len(&self) -> usize {
        self.idx_to_token.len()
    }

    /// The index of `token`; [`Vocab::unk`] for tokens not in the vocabulary.
    pub fn index(&self, token: &str) -> usize {
        self.token_to_idx.get(token).copied().unwrap_or(0)
    }

    /// The token at `idx`, if there is one.
    pub fn token(&self, idx: usize) -> Option<&str> {
        self.idx_to_token.get(idx).map(String::as_str)
    }

    /// Every token, in index order.
    pub fn tokens(&self) -> &[String] {
        &self.idx_to_token
    }

    /// Every distinct token of the counted corpus with its count, by
    /// descending count (ties in first-occurrence order), including those
    /// below `min_freq`.
    pub fn token_freqs(&self) -> &[(String, usize)] {
        &self.token_freqs
    }

    /// The index of `<unk>`: 0.
    pub fn unk(&self) -> usize {
        0
    }

    /// The indices of `text`'s tokens (e.g. a prompt for text generation);
    /// unknown tokens become [`Vocab::unk`].
    pub fn encode(&self, text: &str, kind: TokenKind) -> Vec<usize> {
        split_tokens(text, kind).map(|t| self.index(t)).collect()
    }

    /// The text spelled by `indices`: characters joined as they are, words
    /// with single spaces. An index outside the vocabulary is an error.
    pub fn decode(&self, indices: &[usize], kind: TokenKind) -> Result<String, DataError> {
        let sep = match kind {
            TokenKind::Char => "",
            TokenKind::Word => " ",
        };
        let mut out = String::new();
        for (k, &i) in indices.iter().enumerate() {
            let token = self.token(i).ok_or_else(|| {
                DataError::Invalid(format!(
                    "token index {i} (position {k}) is out of range for a vocabulary of {} tokens",
                    self.len()
                ))
            })?;
            if k > 0 {
                out.push_str(sep);
            }
            out.push_str(token);
        }
        Ok(out)
    }
}

/// The course's `load_corpus_time_machine` for any text file: preprocessed
/// lines ([`read_time_machine`]), tokens of `kind`, a vocabulary over all of
/// them, and the corpus as token indices with the lines concatenated (no
/// separator between lines), cut to the first `max_tokens` if given.
pub fn load_corpus(
    path: &Path,
    kind: TokenKind,
    max_tokens: Option<usize>,
) -> Result<(Vec<usize>, Vocab), DataError> {
    if max_tokens == Some(0) {
        return Err(DataError::Invalid(
            "max_tokens must be at least 1 (or None for the whole corpus)".into(),
        ));
    }
    let lines = read_time_machine(path)?;
    let tokens = tokenize(&lines, kind);
    let vocab = Vocab::new(tokens.iter().flatten(), 0, &[])?;
    let mut corpus: Vec<usize> = tokens.iter().flatten().map(|t| vocab.index(t)).collect();
    if let Some(m) = max_tokens {
        corpus.truncate(m);
    }
    Ok((corpus, vocab))
}

/// The course's `load_data_time_machine`: the character corpus of
/// `timemachine.txt` in `dir` (cut to `max_tokens`; the course uses 10,000)
/// and its minibatches.
pub fn load_data_time_machine(
    dir: &Path,
    opts: &SeqOptions,
    max_tokens: Option<usize>,
) -> Result<(SeqDataLoader, Vocab), DataError> {
    let (corpus, vocab) = load_corpus(&dir.join(TIME_MACHINE_FILE), TokenKind::Char, max_tokens)?;
    Ok((SeqDataLoader::new(&corpus, opts.clone())?, vocab))
}

/// How minibatches are cut from the corpus.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Sampling {
    /// `seq_data_iter_random`: non-overlapping subsequences in random
    /// order; consecutive batches are unrelated.
    Random,
    /// `seq_data_iter_sequential`: row r of each batch continues where row
    /// r of the previous batch ended, so a hidden state can carry over.
    Sequential,
}

/// Minibatch settings for [`SeqDataLoader`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SeqOptions {
    pub batch_size: usize,
    pub num_steps: usize,
    pub sampling: Sampling,
    pub seed: u64,
}

impl SeqOptions {
    /// Sequential batches (the course's default) with seed 0.
    pub fn new(batch_size: usize, num_steps: usize) -> SeqOptions {
        SeqOptions {
            batch_size,
            num_steps,
            sampling: Sampling::Sequential,
            seed: 0,
        }
    }
    pub fn sampling(mut self, sampling: Sampling) -> Self {
        self.sampling = sampling;
        self
    }
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }
}

/// The course's `SeqDataLoader`: a token corpus cut into i64 minibatches
/// X [batch_size, num_steps] and Y (X shifted by one token), one epoch at a
/// time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SeqDataLoader {
    corpus: Vec<i64>,
    opts: SeqOptions,
}

impl SeqDataLoader {
    /// Checks that every epoch has at least one batch, whatever its random
    /// offset: `(batch_size + 1) * num_steps` tokens for random sampling,
    /// one more for sequential.
    pub fn new(corpus: &[usize], opts: SeqOptions) -> Result<SeqDataLoader, DataError> {
        let (b, n) = (opts.batch_size, opts.num_steps);
        if b == 0 || n == 0 {
            return Err(DataError::Invalid(format!(
                "batch size and num_steps must be at least 1; got batch size {b}, num_steps {n}"
            )));
        }
        let max_offset = match opts.sampling {
            Sampling::Random => n - 1,
            Sampling::Sequential => n,
        };
        // Inputs, +1 for the labels' shift, + the largest offset.
        let needed = b.checked_mul(n).and_then(|x| x.checked_add(1 + max_offset));
        if needed.is_none_or(|need| corpus.len() < need) {
            let need = needed.map_or_else(|| "more than usize::MAX".into(), |x| x.to_string());
            return Err(DataError::Invalid(format!(
                "the corpus has {} tokens, too few for one minibatch of {b} x {n} tokens: \
                 {:?} sampling needs at least {need} ({b} x {n} inputs, +1 for the shifted \
                 labels, +{max_offset} for the random offset); use a smaller batch size or \
                 num_steps, or more text",
                corpus.len(),
                opts.sampling
            )));
        }
        let corpus = corpus
            .iter()
            .map(|&t| i64::try_from(t))
            .collect::<Result<Vec<i64>, _>>()
            .map_err(|_| DataError::Invalid("a token index does not fit in i64".into()))?;
        Ok(SeqDataLoader { corpus, opts })
    }

    pub fn options(&self) -> &SeqOptions {
        &self.opts
    }

    /// The minibatches of epoch `epoch`. They depend only on the seed and
    /// `epoch`, so a run is reproducible.
    pub fn epoch(&self, epoch: u64) -> SeqBatches<'_> {
        let (b, n, len) = (self.opts.batch_size, self.opts.num_steps, self.corpus.len());
        let mut rng = epoch_rng(self.opts.seed, epoch);
        let offset = self.draw_offset(&mut rng);
        let order = match self.opts.sampling {
            Sampling::Random => {
                let subseqs = (len - offset - 1) / n;
                let mut starts: Vec<usize> = (0..subseqs).map(|k| offset + k * n).collect();
                starts.shuffle(&mut rng);
                starts.truncate(subseqs / b * b);
                Order::Random { starts }
            }
            Sampling::Sequential => Order::Sequential {
                offset,
                row_len: (len - offset - 1) / b,
            },
        };
        SeqBatches {
            corpus: &self.corpus,
            batch_size: b,
            num_steps: n,
            count: self.count(offset),
            next: 0,
            order,
        }
    }

    /// The exact number of batches in epoch `epoch`. It depends on the
    /// epoch's random offset, so it can differ by one between epochs (for
    /// both samplings); it is never 0.
    pub fn num_batches(&self, epoch: u64) -> usize {
        let offset = self.draw_offset(&mut epoch_rng(self.opts.seed, epoch));
        self.count(offset)
    }

    /// The epoch's offset, from the same ranges as the course: `0..=n-1`
    /// (random) or `0..=n` (sequential). Always the rng's first draw.
    fn draw_offset(&self, rng: &mut StdRng) -> usize {
        let n = self.opts.num_steps;
        match self.opts.sampling {
            Sampling::Random => rng.random_range(0..n),
            Sampling::Sequential => rng.random_range(0..=n),
        }
    }

    /// Both samplings' `(len - offset - 1) // n // b` (random: subsequences
    /// per batch; sequential: `// b // n`, row length per step), which are
    /// the same number.
    fn count(&self, offset: usize) -> usize {
        (self.corpus.len() - offset - 1) / (self.opts.batch_size * self.opts.num_steps)
    }
}

/// Mixes the epoch into the seed (as `TensorDataset::batches` does) so that
/// every epoch has its own offset and order.
fn epoch_rng(seed: u64, epoch: u64) -> StdRng {
    StdRng::seed_from_u64(seed ^ epoch.wrapping_add(1).wrapping_mul(0x9E37_79B9_7F4A_7C15))
}

/// Where each batch row starts in the corpus.
#[derive(Clone, Debug)]
enum Order {
    /// Row r of batch i starts at `starts[i * batch_size + r]`.
    Random { starts: Vec<usize> },
    /// Row r of batch i starts at `offset + r * row_len + i * num_steps`.
    Sequential { offset: usize, row_len: usize },
}

/// One epoch of (X, Y) minibatches, both i64 [batch_size, num_steps]. Use
/// it as an iterator, or call [`SeqBatches::next_into`] to refill the same
/// tensors without allocating.
#[derive(Clone, Debug)]
pub struct SeqBatches<'a> {
    corpus: &'a [i64],
    batch_size: usize,
    num_steps: usize,
    count: usize,
    next: usize,
    order: Order,
}

impl SeqBatches<'_> {
    /// Batches left in this epoch.
    pub fn remaining(&self) -> usize {
        self.count - self.next
    }

    /// Writes the next batch into `x` and `y`, reusing their storage when
    /// they are i64; returns false when the epoch is over.
    pub fn next_into(&mut self, x: &mut Tensor, y: &mut Tensor) -> bool {
        if self.next >= self.count {
            return false;
        }
        let (b, n) = (self.batch_size, self.num_steps);
        let (mut xs, mut ys) = (take_i64(x), take_i64(y));
        xs.clear();
        ys.clear();
        xs.reserve(b * n);
        ys.reserve(b * n);
        for r in 0..b {
            let s = match &self.order {
                Order::Random { starts } => starts[self.next * b + r],
                Order::Sequential { offset, row_len } => offset + r * row_len + self.next * n,
            };
            xs.extend_from_slice(&self.corpus[s..s + n]);
            ys.extend_from_slice(&self.corpus[s + 1..s + n + 1]);
        }
        self.next += 1;
        *x = Tensor::I64(ArrayD::from_shape_vec(IxDyn(&[b, n]), xs).expect("b * n tokens"));
        *y = Tensor::I64(ArrayD::from_shape_vec(IxDyn(&[b, n]), ys).expect("b * n tokens"));
        true
    }
}

/// Moves an i64 tensor's storage out of `t` (an empty Vec for other dtypes).
fn take_i64(t: &mut Tensor) -> Vec<i64> {
    match std::mem::replace(t, Tensor::I64(ArrayD::default(IxDyn(&[0])))) {
        Tensor::I64(a) => a.into_raw_vec_and_offset().0,
        _ => Vec::new(),
    }
}

impl Iterator for SeqBatches<'_> {
    type Item = (Tensor, Tensor);

    fn next(&mut self) -> Option<(Tensor, Tensor)> {
        let mut x = Tensor::I64(ArrayD::default(IxDyn(&[0])));
        let mut y = x.clone();
        self.next_into(&mut x, &mut y).then_some((x, y))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.remaining(), Some(self.remaining()))
    }
}

impl ExactSizeIterator for SeqBatches<'_> {}

fn text_err(path: &Path, msg: String) -> DataError {
    DataError::Text {
        path: path.to_path_buf(),
        msg,
    }
}

/// The text, or an error naming the first invalid byte's offset and line.
fn decode_utf8<'a>(bytes: &'a [u8], path: &Path) -> Result<&'a str, DataError> {
    std::str::from_utf8(bytes).map_err(|e| {
        let at = e.valid_up_to();
        let before = &bytes[..at];
        let line = 1 + before.iter().filter(|&&b| b == b'\n').count();
        let column = 1 + before.iter().rev().take_while(|&&b| b != b'\n').count();
        let what = match e.error_len() {
            Some(_) => format!("byte 0x{:02X}", bytes[at]),
            None => "an incomplete character at the end of the file".into(),
        };
        text_err(
            path,
            format!(
                "not valid UTF-8: {what} at byte offset {at} (line {line}, byte {column} of the line); \
                 save the file as UTF-8"
            ),
        )
    })
}

/// Python's universal-newline `readlines`, without the line breaks.
fn split_lines(text: &str) -> Vec<String> {
    let mut lines = Vec::new();
    let mut rest = text;
    while !rest.is_empty() {
        match rest.find(['\n', '\r']) {
            Some(i) => {
                lines.push(rest[..i].to_owned());
                let brk = if rest[i..].starts_with("\r\n") { 2 } else { 1 };
                rest = &rest[i + brk..];
            }
            None => {
                lines.push(rest.to_owned());
                rest = "";
            }
        }
    }
    lines
}
