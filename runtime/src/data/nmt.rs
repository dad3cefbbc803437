//! The course's machine-translation data (Dive into Deep Learning §60):
//! English–French sentence pairs, one tab-separated pair per line, as
//! `read_data_nmt`, `preprocess_nmt`, `tokenize_nmt`, `build_array_nmt`
//! and `load_data_nmt` prepare them.
//!
//! Everything reproduces the course's Python, including `tokenize_nmt`'s
//! off-by-one (`i > num_examples` stops after line `num_examples`, so 600
//! examples read 601 lines) and its `split(' ')` (two spaces in a row make
//! an empty token). Lines may end in `\n`, `\r\n` or `\r` (the course's
//! `split('\n')` would keep a `\r` in the last French word).

use std::path::Path;

use super::DataError;
use super::text::{Vocab, read_lines};
use crate::Tensor;

/// The course's corpus file, inside the `fra-eng` dataset folder.
pub const FRA_ENG_FILE: &str = "fra.txt";

/// The reserved tokens of both vocabularies, after `<unk>` (index 0):
/// `<pad>` is 1, `<bos>` 2, `<eos>` 3.
pub const RESERVED: [&str; 3] = ["<pad>", "<bos>", "<eos>"];
pub const PAD: usize = 1;
pub const BOS: usize = 2;
pub const EOS: usize = 3;

/// The course's `preprocess_nmt` on one line: U+202F and U+00A0 become
/// spaces, letters are lowercased, and `, . ! ?` get a space before them
/// unless one is there. `first` says whether this is the file's first
/// line: the course runs over the whole text, so every later line starts
/// after a line break, which is not a space.
pub fn preprocess_nmt(line: &str, first: bool) -> String {
    let text: String = line.replace(['\u{202f}', '\u{a0}'], " ").to_lowercase();
    let mut out = String::with_capacity(text.len() + 8);
    let mut prev = if first { None } else { Some('\n') };
    for c in text.chars() {
        if matches!(c, ',' | '.' | '!' | '?') && prev.is_some_and(|p| p != ' ') {
            out.push(' ');
        }
        out.push(c);
        prev = Some(c);
    }
    out
}

/// The course's `tokenize_nmt` on preprocessed lines: lines `0..=n` of
/// `num_examples = Some(n)` (all lines for `None`), each with exactly one
/// tab a pair (others, such as empty lines, are skipped), words split on
/// single spaces.
pub fn tokenize_nmt(lines: &[String], num_examples: Option<usize>) -> (Vec<Vec<String>>, Vec<Vec<String>>) {
    let mut source = Vec::new();
    let mut target = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        if num_examples.is_some_and(|n| n > 0 && i > n) {
            break;
        }
        let parts: Vec<&str> = line.split('\t').collect();
        if let [src, tgt] = parts[..] {
            source.push(src.split(' ').map(str::to_owned).collect());
            target.push(tgt.split(' ').map(str::to_owned).collect());
        }
    }
    (source, target)
}

/// The course's `truncate_pad`: the first `num_steps` tokens, or all of
/// them followed by `pad` up to `num_steps`.
pub fn truncate_pad(line: &[usize], num_steps: usize, pad: usize) -> Vec<usize> {
    let mut out: Vec<usize> = line.iter().take(num_steps).copied().collect();
    out.resize(num_steps, pad);
    out
}

/// The course's `build_array_nmt`: each sentence's indices with `<eos>`
/// appended, truncated or padded to `num_steps` (an `[n, num_steps]` i64
/// tensor), and the valid lengths (the tokens that are not `<pad>`, `[n]`).
pub fn build_array_nmt(lines: &[Vec<String>], vocab: &Vocab, num_steps: usize) -> (Tensor, Tensor) {
    let mut array = Vec::with_capacity(lines.len() * num_steps);
    let mut valid = Vec::with_capacity(lines.len());
    for line in lines {
        let mut ids: Vec<usize> = line.iter().map(|t| vocab.index(t)).collect();
        ids.push(EOS);
        let row = truncate_pad(&ids, num_steps, PAD);
        valid.push(row.iter().filter(|&&t| t != PAD).count() as i64);
        array.extend(row.into_iter().map(|t| t as i64));
    }
    (Tensor::from_i64(&[lines.len(), num_steps], array), Tensor::from_i64(&[lines.len()], valid))
}

/// Sentence pairs ready for training, as `load_data_nmt` returns them
/// (before batching), and the teacher-forcing decoder input.
#[derive(Clone, Debug)]
pub struct NmtData {
    pub src_vocab: Vocab,
    pub tgt_vocab: Vocab,
    /// `[n, num_steps]` source indices and `[n]` valid lengths.
    pub src: Tensor,
    pub src_len: Tensor,
    /// `[n, num_steps]` target indices (the labels) and `[n]` valid lengths.
    pub tgt: Tensor,
    pub tgt_len: Tensor,
}

impl NmtData {
    /// Examples (sentence pairs).
    pub fn len(&self) -> usize {
        self.src.dims()[0]
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The decoder's input under teacher forcing (§62's `train_seq2seq`):
    /// `<bos>` followed by each target but its last token.
    pub fn decoder_input(&self) -> Tensor {
        let dims = self.tgt.dims().to_vec();
        let steps = dims[1];
        // Token ids are small integers: exact through f64.
        let tgt: Vec<i64> = self.tgt.to_f64_vec().into_iter().map(|x| x as i64).collect();
        let mut out = Vec::with_capacity(tgt.len());
        for row in tgt.chunks(steps.max(1)) {
            out.push(BOS as i64);
            out.extend_from_slice(&row[..steps.saturating_sub(1)]);
        }
        Tensor::from_i64(&dims, out)
    }
}

/// The course's `load_data_nmt` without the batching: the file's lines
/// preprocessed and tokenized (the first `num_examples`, as
/// [`tokenize_nmt`] counts them), vocabularies of each side (`min_freq=2`,
/// [`RESERVED`]), and the arrays. A missing, empty or non-UTF-8 file, one
/// without a tab-separated pair, or `num_steps = 0` is an error.
pub fn load_data_nmt(path: &Path, num_steps: usize, num_examples: Option<usize>) -> Result<NmtData, DataError> {
    if num_steps == 0 {
        return Err(DataError::Invalid("num_steps must be at least 1".into()));
    }
    let lines: Vec<String> = read_lines(path)?.iter().enumerate().map(|(i, l)| preprocess_nmt(l, i == 0)).collect();
    let (source, target) = tokenize_nmt(&lines, num_examples);
    if source.is_empty() {
        return Err(DataError::Text {
            path: path.to_path_buf(),
            msg: "no line holds a sentence pair (source, a tab, target); expected lines like \"Go.\\tVa !\"".into(),
        });
    }
    let src_vocab = Vocab::new(source.iter().flatten(), 2, &RESERVED)?;
    let tgt_vocab = Vocab::new(target.iter().flatten(), 2, &RESERVED)?;
    let (src, src_len) = build_array_nmt(&source, &src_vocab, num_steps);
    let (tgt, tgt_len) = build_array_nmt(&target, &tgt_vocab, num_steps);
    Ok(NmtData { src_vocab, tgt_vocab, src, src_len, tgt, tgt_len })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn punctuation_gets_a_space_and_special_spaces_become_spaces() {
        assert_eq!(preprocess_nmt("Go.\tVa !", true), "go .\tva !");
        assert_eq!(preprocess_nmt("I'm OK,\u{202f}thanks!", true), "i'm ok , thanks !");
        assert_eq!(preprocess_nmt("Ça\u{a0}va ?", true), "ça va ?");
        // A line's first character follows a line break, except the file's.
        assert_eq!(preprocess_nmt(".", true), ".");
        assert_eq!(preprocess_nmt(".", false), " .");
    }

    #[test]
    fn tokenize_reads_one_line_past_num_examples_and_skips_non_pairs() {
        let lines: Vec<String> = ["a .\tb .", "", "no tab", "c\td\te", "x  y\tz"].iter().map(|s| s.to_string()).collect();
        let (src, tgt) = tokenize_nmt(&lines, None);
        assert_eq!(src, vec![vec!["a", "."], vec!["x", "", "y"]]);
        assert_eq!(tgt, vec![vec!["b", "."], vec!["z"]]);
        // num_examples = 3 reads lines 0..=3: the pair on line 4 is not read.
        assert_eq!(tokenize_nmt(&lines, Some(3)).0.len(), 1);
        assert_eq!(tokenize_nmt(&lines, Some(4)).0.len(), 2);
    }

    #[test]
    fn arrays_append_eos_truncate_pad_and_count_valid_tokens() {
        assert_eq!(truncate_pad(&[5, 6, 7], 2, PAD), vec![5, 6]);
        assert_eq!(truncate_pad(&[5], 3, PAD), vec![5, PAD, PAD]);
        let lines = vec![vec!["a".to_string()], vec!["a".into(), "b".into(), "a".into()]];
        let vocab = Vocab::new(lines.iter().flatten(), 2, &RESERVED).unwrap();
        assert_eq!(vocab.tokens(), ["<unk>", "<pad>", "<bos>", "<eos>", "a"]);
        let (array, valid) = build_array_nmt(&lines, &vocab, 3);
        // "b" is seen once (< min_freq 2): <unk>. The second line loses its <eos>.
        assert_eq!(array.to_f64_vec(), vec![4.0, EOS as f64, PAD as f64, 4.0, 0.0, 4.0]);
        assert_eq!(valid.to_f64_vec(), vec![2.0, 3.0]);
    }
}
