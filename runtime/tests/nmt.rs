//! The course's machine-translation data (§60) on the real fra-eng file:
//! figures that `bench/course_reference/nmt_data.py` (the course's own
//! code, with lists for tensors) prints for the same file, and hostile
//! inputs.

use std::path::PathBuf;

use d2l_runtime::Tensor;
use d2l_runtime::data::nmt::{BOS, FRA_ENG_FILE, PAD};
use d2l_runtime::data::{DataError, find_dataset, load_data_nmt};
use proptest::prelude::*;

fn fra_eng() -> PathBuf {
    find_dataset("fra-eng", None).unwrap_or_else(|e| panic!("{e}")).join(FRA_ENG_FILE)
}

fn rows(t: &Tensor) -> Vec<Vec<i64>> {
    let Tensor::I64(a) = t else { panic!("expected i64, got {:?}", t.dtype()) };
    a.outer_iter().map(|r| r.iter().copied().collect()).collect()
}

fn values(t: &Tensor) -> Vec<i64> {
    let Tensor::I64(a) = t else { panic!("expected i64, got {:?}", t.dtype()) };
    a.iter().copied().collect()
}

#[test]
fn the_courses_600_examples() {
    let d = load_data_nmt(&fra_eng(), 10, Some(600)).unwrap();
    // `i > num_examples` reads lines 0..=600: 601 pairs.
    assert_eq!(d.len(), 601);
    assert_eq!((d.src_vocab.len(), d.tgt_vocab.len()), (184, 201));
    assert_eq!(&d.src_vocab.tokens()[..12], ["<unk>", "<pad>", "<bos>", "<eos>", ".", "!", "i", "i'm", "it", "go", "tom", "?"]);
    assert_eq!(&d.tgt_vocab.tokens()[..12], ["<unk>", "<pad>", "<bos>", "<eos>", ".", "!", "je", "suis", "tom", "?", "j'ai", "nous"]);
    let (src, tgt) = (rows(&d.src), rows(&d.tgt));
    // "go ." / "va !", then "hi ." / "salut !"; line 300 has a word seen once (<unk>).
    assert_eq!(src[0], [9, 4, 3, 1, 1, 1, 1, 1, 1, 1]);
    assert_eq!(src[1], [113, 4, 3, 1, 1, 1, 1, 1, 1, 1]);
    assert_eq!(src[300], [6, 0, 4, 3, 1, 1, 1, 1, 1, 1]);
    assert_eq!(tgt[0], [16, 5, 3, 1, 1, 1, 1, 1, 1, 1]);
    assert_eq!(tgt[1], [65, 5, 3, 1, 1, 1, 1, 1, 1, 1]);
    assert_eq!(tgt[600], [21, 0, 4, 3, 1, 1, 1, 1, 1, 1]);
    assert_eq!(values(&d.src_len).iter().sum::<i64>(), 2433);
    let tgt_len = values(&d.tgt_len);
    assert_eq!(tgt_len.iter().sum::<i64>(), 2541);
    let count = |n| tgt_len.iter().filter(|&&l| l == n).count();
    assert_eq!([3, 4, 5, 6, 7, 8].map(count), [170, 190, 193, 33, 12, 3]);
    // Teacher forcing: <bos>, then the target without its last token.
    let dec = rows(&d.decoder_input());
    for (d, t) in dec.iter().zip(&tgt) {
        assert_eq!(d[0], BOS as i64);
        assert_eq!(d[1..], t[..9]);
    }
}

#[test]
fn the_whole_corpus() {
    // The book's figure: a source vocabulary of 10,012 over all 167,130 pairs.
    let d = load_data_nmt(&fra_eng(), 10, None).unwrap();
    assert_eq!(d.len(), 167_130);
    assert_eq!(d.src_vocab.len(), 10_012);
    // Truncation cuts long sentences to 10 tokens, so no row is all there.
    assert!(values(&d.src_len).iter().all(|&l| (2..=10).contains(&l)));
}

#[test]
fn bad_files_and_settings_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let err = |text: &[u8], steps| -> String {
        let path = dir.path().join("pairs.txt");
        std::fs::write(&path, text).unwrap();
        load_data_nmt(&path, steps, Some(600)).expect_err("expected an error").to_string()
    };
    assert!(err(b"", 10).contains("the file is empty"));
    assert!(err(b"no tabs here\nnor here\n", 10).contains("no line holds a sentence pair"));
    assert!(err(b"go .\tva \xff !\n", 10).contains("not valid UTF-8"));
    assert!(err(b"go .\tva !\n", 0).contains("num_steps must be at least 1"));
    let missing = load_data_nmt(&dir.path().join("absent.txt"), 10, None).expect_err("missing");
    assert!(matches!(missing, DataError::Io { .. }), "{missing}");
    // Empty lines, lines with two tabs and CRLF endings are fine.
    let path = dir.path().join("ok.txt");
    std::fs::write(&path, "Go.\tVa !\r\n\r\na\tb\tc\r\nGo.\tVa !\r\n").unwrap();
    let d = load_data_nmt(&path, 4, None).unwrap();
    assert_eq!(rows(&d.tgt), [[4, 5, 3, PAD as i64], [4, 5, 3, PAD as i64]]);
}

proptest! {
    /// Any text loads or fails cleanly, and what loads is well formed.
    #[test]
    fn any_text_loads_or_fails_cleanly(text in "[a-c .!?\t\n\u{a0}]{0,80}", steps in 1usize..6) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pairs.txt");
        std::fs::write(&path, &text).unwrap();
        if let Ok(d) = load_data_nmt(&path, steps, None) {
            for (t, vocab) in [(&d.src, &d.src_vocab), (&d.tgt, &d.tgt_vocab)] {
                prop_assert_eq!(t.dims(), &[d.len(), steps][..]);
                prop_assert!(values(t).iter().all(|&i| (i as usize) < vocab.len()));
            }
            prop_assert!(values(&d.src_len).iter().all(|&l| l >= 1 && l as usize <= steps));
        }
    }
}
