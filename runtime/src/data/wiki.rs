//! The course's BERT pretraining data (Dive into Deep Learning §69):
//! WikiText-2 paragraphs cut into sentence pairs for next-sentence
//! prediction, with tokens masked for the masked language model, as
//! `_read_wiki`, `_get_next_sentence`, `_get_nsp_data_from_paragraph`,
//! `get_tokens_and_segments`, `_replace_mlm_tokens`,
//! `_get_mlm_data_from_tokens`, `_pad_bert_inputs` and `_WikiTextDataset`
//! (that is, `load_data_wiki` without the batching) prepare them.
//!
//! Every rule of the course's Python holds, except the random draws, which
//! come from a seeded [`StdRng`] instead of Python's `random` (so the
//! samples differ, their distribution does not):
//! - a line is a paragraph when the *raw* line holds `" . "` (the course's
//!   `len(line.split(' . ')) >= 2`); it is then stripped, lowercased and
//!   split on `" . "`, so a line whose only `" . "` is at its end (WikiText's
//!   lines end in `" . \n"`) is a paragraph of one sentence, and the last
//!   sentence keeps its final `" ."`; `strip` and the word split use
//!   Python's whitespace (Rust's plus U+001C..U+001F);
//! - the vocabulary counts every word of every sentence in the shuffled
//!   paragraph order (`min_freq` 5, reserved `<pad> <mask> <cls> <sep>`);
//! - a pair is kept when `len(a) + len(b) + 3 <= max_len` (one `<cls>`, two
//!   `<sep>`); its second sentence is the next one with probability 1/2,
//!   else a random sentence of a random paragraph;
//! - `max(1, round(0.15 len))` positions (Python's round: half to even) of
//!   the tokens other than `<cls>`/`<sep>` are predicted; each becomes
//!   `<mask>` with probability 0.8, stays with 0.1, and is a uniformly
//!   random vocabulary token (reserved ones included, as in the book) with
//!   0.1;
//! - `round(0.15 max_len)` prediction slots, padded with position 0,
//!   weight 0 and label 0.
//!
//! Valid lengths are i64 (the course's are float32): the masked softmax
//! takes integer lengths.

use std::path::{Path, PathBuf};

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

use super::DataError;
use super::text::{Vocab, read_lines};
use crate::Tensor;

/// The training text inside the `wikitext-2` dataset folder, in the order
/// they are tried: the name in the course's zip (`wikitext-2-v1.zip`), then
/// the name of the workspace's reconstructed copy (`shared/data/wikitext-2`).
pub const WIKI_FILES: &[&str] = &["wiki.train.tokens", "train.txt"];

/// The dataset folder's name (for [`super::find_dataset`]).
pub const WIKI_DATASET: &str = "wikitext-2";

/// The reserved tokens after `<unk>` (index 0): `<pad>` is 1, `<mask>` 2,
/// `<cls>` 3, `<sep>` 4.
pub const RESERVED: [&str; 4] = ["<pad>", "<mask>", "<cls>", "<sep>"];
pub const PAD: usize = 1;
pub const MASK: usize = 2;
pub const CLS: usize = 3;
pub const SEP: usize = 4;

/// The course's `min_freq` for the BERT vocabulary.
pub const MIN_FREQ: usize = 5;

/// The smallest `max_len` accepted: a pair of one-word sentences and its
/// three special tokens need 5, but 4 still gives one prediction slot.
pub const MIN_MAX_LEN: usize = 4;

/// `max_len` is at least [`MIN_MAX_LEN`].
fn check_max_len(max_len: usize) -> Result<(), DataError> {
    if max_len < MIN_MAX_LEN {
        return Err(DataError::Invalid(format!(
            "max_len must be at least {MIN_MAX_LEN} (a pair takes <cls>, two <sep> and its words); got {max_len}"
        )));
    }
    Ok(())
}

/// Python's `str.isspace` (what `strip()` and `split()` use): Rust's
/// `White_Space` plus the four information separators U+001C..U+001F.
fn py_space(c: char) -> bool {
    c.is_whitespace() || matches!(c, '\u{1c}'..='\u{1f}')
}

/// Python's `s.split()`: words between runs of whitespace.
fn py_words(s: &str) -> impl Iterator<Item = &str> {
    s.split(py_space).filter(|w| !w.is_empty())
}

/// The training file for `dir_or_file`: the path itself when it is a file,
/// else the first of [`WIKI_FILES`] inside it. An error names both names
/// when neither is there.
pub fn wiki_file(dir_or_file: &Path) -> Result<PathBuf, DataError> {
    if dir_or_file.is_file() {
        return Ok(dir_or_file.to_path_buf());
    }
    if !dir_or_file.is_dir() {
        return Err(DataError::io(
            dir_or_file,
            std::io::Error::new(std::io::ErrorKind::NotFound, "no such file or folder"),
        ));
    }
    WIKI_FILES
        .iter()
        .map(|name| dir_or_file.join(name))
        .find(|p| p.is_file())
        .ok_or_else(|| DataError::Text {
            path: dir_or_file.to_path_buf(),
            msg: format!(
                "the folder holds neither {} (WikiText-2's training text); \
                 pass the folder that has one of them, or the file itself",
                WIKI_FILES.join(" nor ")
            ),
        })
}

/// The paragraphs of one line of the file, as `_read_wiki` makes them:
/// `None` unless the raw line holds `" . "`, else the line stripped,
/// lowercased and split on `" . "`.
pub fn paragraph_of_line(line: &str) -> Option<Vec<String>> {
    if !line.contains(" . ") {
        return None;
    }
    let text = line.trim_matches(py_space).to_lowercase();
    Some(text.split(" . ").map(str::to_owned).collect())
}

/// The course's `_read_wiki` on any file (see [`wiki_file`] for folders):
/// the paragraphs (lists of sentences, see [`paragraph_of_line`]) in an
/// order shuffled by `rng`. A missing, empty or non-UTF-8 file, or one
/// without a line of two sentences, is an error.
pub fn read_wiki(path: &Path, rng: &mut impl Rng) -> Result<Vec<Vec<String>>, DataError> {
    let path = wiki_file(path)?;
    let lines = read_lines(&path)?;
    let mut paragraphs: Vec<Vec<String>> = lines.iter().filter_map(|l| paragraph_of_line(l)).collect();
    if paragraphs.is_empty() {
        return Err(DataError::Text {
            path,
            msg: "no line holds two sentences (a line is a paragraph when it has \" . \", \
                  a period between spaces, as WikiText-2's tokenized text does)"
                .into(),
        });
    }
    paragraphs.shuffle(rng);
    Ok(paragraphs)
}

/// The course's `get_tokens_and_segments`: `<cls> a <sep>` with segment 0,
/// then, when given, `b <sep>` with segment 1.
pub fn tokens_and_segments(a: &[&str], b: Option<&[&str]>) -> (Vec<String>, Vec<i64>) {
    let mut tokens = Vec::with_capacity(a.len() + b.map_or(0, <[_]>::len) + 3);
    tokens.push(RESERVED[CLS - 1].to_owned());
    tokens.extend(a.iter().map(|&t| t.to_owned()));
    tokens.push(RESERVED[SEP - 1].to_owned());
    let mut segments = vec![0; a.len() + 2];
    if let Some(b) = b {
        tokens.extend(b.iter().map(|&t| t.to_owned()));
        tokens.push(RESERVED[SEP - 1].to_owned());
        segments.resize(segments.len() + b.len() + 1, 1);
    }
    (tokens, segments)
}

/// One sentence pair for next-sentence prediction, as vocabulary indices
/// (`[CLS, a.., SEP, b.., SEP]`) with its segments.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NspExample {
    pub tokens: Vec<usize>,
    pub segments: Vec<i64>,
    /// Whether `b` is the sentence that follows `a` in its paragraph.
    pub is_next: bool,
}

/// The course's `_get_nsp_data_from_paragraph` over every paragraph (of
/// sentences of vocabulary indices), in order: for each sentence but a
/// paragraph's last, the pair with the next sentence (probability 1/2) or
/// with a random sentence of a random paragraph, kept when its tokens and
/// the three special ones fit in `max_len`. Returns the pairs and how many
/// were skipped for being too long. An empty paragraph is an error (the
/// course would fail drawing a random sentence from it).
pub fn nsp_examples(
    paragraphs: &[Vec<Vec<usize>>],
    max_len: usize,
    rng: &mut impl Rng,
) -> Result<(Vec<NspExample>, usize), DataError> {
    if let Some(i) = paragraphs.iter().position(Vec::is_empty) {
        return Err(DataError::Invalid(format!(
            "paragraph {i} has no sentence; every paragraph needs at least one"
        )));
    }
    let mut examples = Vec::new();
    let mut skipped = 0;
    for paragraph in paragraphs {
        for pair in paragraph.windows(2) {
            let a = &pair[0];
            let (b, is_next) = if rng.random::<f64>() < 0.5 {
                (&pair[1], true)
            } else {
                let p = &paragraphs[rng.random_range(0..paragraphs.len())];
                (&p[rng.random_range(0..p.len())], false)
            };
            if a.len().saturating_add(b.len()).saturating_add(3) > max_len {
                skipped += 1;
                continue;
            }
            let mut tokens = Vec::with_capacity(a.len() + b.len() + 3);
            tokens.push(CLS);
            tokens.extend_from_slice(a);
            tokens.push(SEP);
            tokens.extend_from_slice(b);
            tokens.push(SEP);
            let mut segments = vec![0; a.len() + 2];
            segments.resize(tokens.len(), 1);
            examples.push(NspExample { tokens, segments, is_next });
        }
    }
    Ok((examples, skipped))
}

/// How many tokens of a sequence of `len` are predicted: the course's
/// `max(1, round(len * 0.15))`, with Python's round (half to even, on the
/// f64 product: 10 → 2 from 1.5, 30 → 4 from 4.5).
pub fn num_mlm_preds(len: usize) -> usize {
    ((len as f64 * 0.15).round_ties_even() as usize).max(1)
}

/// How many prediction slots a sequence of `max_len` has: the course's
/// `round(max_len * 0.15)` (10 for 64).
pub fn max_mlm_preds(max_len: usize) -> usize {
    (max_len as f64 * 0.15).round_ties_even() as usize
}

/// One sequence's masked-language-model input and targets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MlmExample {
    /// The tokens with the predicted ones replaced.
    pub input: Vec<usize>,
    /// The predicted positions, ascending.
    pub pred_positions: Vec<usize>,
    /// The original token at each predicted position.
    pub labels: Vec<usize>,
}

/// The course's `_get_mlm_data_from_tokens` (with `_replace_mlm_tokens`) on
/// vocabulary indices: [`num_mlm_preds`] random positions other than
/// `<cls>`/`<sep>` (fewer when there are not that many) become `<mask>`
/// (0.8), stay (0.1) or become a uniformly random index of `vocab` (0.1).
pub fn mlm_masks(tokens: &[usize], vocab: &Vocab, rng: &mut impl Rng) -> MlmExample {
    let mut candidates: Vec<usize> = (0..tokens.len()).filter(|&i| tokens[i] != CLS && tokens[i] != SEP).collect();
    candidates.shuffle(rng);
    candidates.truncate(num_mlm_preds(tokens.len()));
    let mut input = tokens.to_vec();
    for &pos in &candidates {
        input[pos] = if rng.random::<f64>() < 0.8 {
            MASK
        } else if rng.random::<f64>() < 0.5 {
            tokens[pos]
        } else {
            rng.random_range(0..vocab.len())
        };
    }
    candidates.sort_unstable();
    let labels = candidates.iter().map(|&p| tokens[p]).collect();
    MlmExample { input, pred_positions: candidates, labels }
}

/// The course's `_WikiTextDataset` contents: every kept pair, masked and
/// padded to `max_len`.
#[derive(Clone, Debug)]
pub struct BertData {
    pub vocab: Vocab,
    /// `[n, max_len]` i64 token indices, `<pad>` after the valid length.
    pub tokens: Tensor,
    /// `[n, max_len]` i64: 0 for `<cls> a <sep>`, 1 for `b <sep>`, 0 on padding.
    pub segments: Tensor,
    /// `[n]` i64: the tokens before the padding.
    pub valid_lens: Tensor,
    /// `[n, p]` i64 predicted positions (`p` = [`max_mlm_preds`]), 0 on padding.
    pub pred_positions: Tensor,
    /// `[n, p]` f32: 1 for a real prediction, 0 for a padding slot.
    pub mlm_weights: Tensor,
    /// `[n, p]` i64 original tokens at the predicted positions, 0 on padding.
    pub mlm_labels: Tensor,
    /// `[n]` i64: 1 when the second sentence follows the first, else 0.
    pub nsp_labels: Tensor,
    /// Paragraphs read (lines with `" . "`), one-sentence ones included.
    pub paragraphs: usize,
    /// Sentence pairs left out for not fitting in `max_len`.
    pub skipped: usize,
}

impl BertData {
    /// Examples (sentence pairs).
    pub fn len(&self) -> usize {
        self.tokens.dims()[0]
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The sequence length, `max_len`.
    pub fn max_len(&self) -> usize {
        self.tokens.dims()[1]
    }

    /// Prediction slots per example.
    pub fn num_preds(&self) -> usize {
        self.pred_positions.dims()[1]
    }
}

/// Paragraphs of sentences as vocabulary indices (Python's `split()` on
/// each sentence, unknown words `<unk>`).
pub fn encode_paragraphs(paragraphs: &[Vec<String>], vocab: &Vocab) -> Vec<Vec<Vec<usize>>> {
    paragraphs
        .iter()
        .map(|p| p.iter().map(|s| py_words(s).map(|w| vocab.index(w)).collect()).collect())
        .collect()
}

/// The vocabulary of `paragraphs`: every word of every sentence in order,
/// [`MIN_FREQ`], [`RESERVED`].
pub fn wiki_vocab(paragraphs: &[Vec<String>]) -> Result<Vocab, DataError> {
    let words = paragraphs.iter().flatten().flat_map(|s| py_words(s));
    Vocab::new(words, MIN_FREQ, &RESERVED)
}

/// [`nsp_examples`] then [`mlm_masks`] on each kept pair, padded into the
/// tensors of [`BertData`] (whose `paragraphs` is `paragraphs.len()`).
pub fn bert_examples(
    paragraphs: &[Vec<Vec<usize>>],
    vocab: Vocab,
    max_len: usize,
    rng: &mut impl Rng,
) -> Result<BertData, DataError> {
    check_max_len(max_len)?;
    let (pairs, skipped) = nsp_examples(paragraphs, max_len, rng)?;
    let n = pairs.len();
    let p = max_mlm_preds(max_len);
    let too_big = || {
        DataError::Invalid(format!(
            "{n} examples of max_len {max_len} do not fit in memory; use a smaller max_len"
        ))
    };
    let cells = n.checked_mul(max_len).filter(|&c| c <= isize::MAX as usize / 8).ok_or_else(too_big)?;
    let mut tokens = Vec::new();
    let mut segments = Vec::new();
    tokens.try_reserve_exact(cells).map_err(|_| too_big())?;
    segments.try_reserve_exact(cells).map_err(|_| too_big())?;
    let mut valid_lens = Vec::with_capacity(n);
    let mut positions = Vec::with_capacity(n * p);
    let mut weights = Vec::with_capacity(n * p);
    let mut labels = Vec::with_capacity(n * p);
    let mut nsp = Vec::with_capacity(n);
    for pair in &pairs {
        let mlm = mlm_masks(&pair.tokens, &vocab, rng);
        let len = mlm.input.len();
        tokens.extend(mlm.input.iter().map(|&t| t as i64));
        tokens.resize(tokens.len() + (max_len - len), PAD as i64);
        segments.extend_from_slice(&pair.segments);
        segments.resize(segments.len() + (max_len - len), 0);
        valid_lens.push(len as i64);
        let k = mlm.pred_positions.len();
        debug_assert!(k <= p, "{k} predictions for {p} slots");
        positions.extend(mlm.pred_positions.iter().map(|&i| i as i64));
        positions.resize(positions.len() + (p - k), 0);
        weights.resize(weights.len() + k, 1.0f32);
        weights.resize(weights.len() + (p - k), 0.0);
        labels.extend(mlm.labels.iter().map(|&t| t as i64));
        labels.resize(labels.len() + (p - k), 0);
        nsp.push(i64::from(pair.is_next));
    }
    Ok(BertData {
        vocab,
        tokens: Tensor::from_i64(&[n, max_len], tokens),
        segments: Tensor::from_i64(&[n, max_len], segments),
        valid_lens: Tensor::from_i64(&[n], valid_lens),
        pred_positions: Tensor::from_i64(&[n, p], positions),
        mlm_weights: Tensor::from_f32(&[n, p], weights),
        mlm_labels: Tensor::from_i64(&[n, p], labels),
        nsp_labels: Tensor::from_i64(&[n], nsp),
        paragraphs: paragraphs.len(),
        skipped,
    })
}

/// The course's `load_data_wiki` without the batching: [`read_wiki`] on
/// `path` (the file, or a folder holding one of [`WIKI_FILES`]), the
/// vocabulary ([`wiki_vocab`]), and [`bert_examples`], every random draw
/// from one [`StdRng`] seeded with `seed`. `max_len` below [`MIN_MAX_LEN`]
/// is an error, as is a file [`read_wiki`] rejects, one without a paragraph
/// of two sentences, and one whose sentence pairs are all too long.
pub fn load_data_wiki(path: &Path, max_len: usize, seed: u64) -> Result<BertData, DataError> {
    check_max_len(max_len)?;
    let file = wiki_file(path)?;
    let mut rng = StdRng::seed_from_u64(seed);
    let paragraphs = read_wiki(&file, &mut rng)?;
    if paragraphs.iter().all(|p| p.len() < 2) {
        return Err(DataError::Text {
            path: file,
            msg: "no paragraph has two sentences, so there is no sentence pair: every line with \
                  \" . \" has it only at its end (a line needs \" . \" between two sentences)"
                .into(),
        });
    }
    let vocab = wiki_vocab(&paragraphs)?;
    let encoded = encode_paragraphs(&paragraphs, &vocab);
    drop(paragraphs);
    let data = bert_examples(&encoded, vocab, max_len, &mut rng)?;
    if data.is_empty() {
        return Err(DataError::Text {
            path: file,
            msg: format!(
                "none of the {} sentence pairs fits in max_len {max_len} (with <cls> and two <sep>); \
                 use a larger max_len",
                data.skipped
            ),
        });
    }
    Ok(data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_whitespace_and_the_raw_line_test() {
        // The raw line decides; the stripped line is split.
        assert_eq!(paragraph_of_line(" A b . C d . "), Some(vec!["a b".to_string(), "c d .".into()]));
        assert_eq!(paragraph_of_line(" One sentence . "), Some(vec!["one sentence .".to_string()]));
        assert_eq!(paragraph_of_line(" = Heading = "), None);
        assert_eq!(paragraph_of_line("a.b"), None);
        // U+001F is whitespace to Python, not to Rust's trim.
        assert_eq!(paragraph_of_line("\u{1f}x . y\u{1f}"), Some(vec!["x".to_string(), "y".into()]));
        assert_eq!(py_words("a\u{1c}b  c\u{a0}d\t").collect::<Vec<_>>(), ["a", "b", "c", "d"]);
        // Python's split(' . ') is left to right, without overlaps.
        assert_eq!(paragraph_of_line("a . . b"), Some(vec!["a".to_string(), ". b".into()]));
    }

    #[test]
    fn rounding_is_pythons() {
        assert_eq!(30.0f64 * 0.15, 4.5);
        let got: Vec<usize> = [0, 3, 4, 10, 30, 50, 64, 70].map(num_mlm_preds).to_vec();
        assert_eq!(got, [1, 1, 1, 2, 4, 8, 10, 10]);
        assert_eq!([4, 10, 64, 512].map(max_mlm_preds), [1, 2, 10, 77]);
    }
}
