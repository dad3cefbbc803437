//! The course's text pipeline (§§52–53): the real "Time Machine" file's
//! figures, the vocabulary's ordering rules, both minibatch iterators on the
//! course's `range(35)` demo and on random corpora, and hostile inputs.

use std::path::PathBuf;

use d2l_runtime::Tensor;
use d2l_runtime::data::text::{TIME_MACHINE_FILE, preprocess, tokenize};
use d2l_runtime::data::{
    DataError, Sampling, SeqDataLoader, SeqOptions, TokenKind, Vocab, find_dataset, load_corpus,
    load_data_time_machine, read_lines, read_time_machine,
};
use proptest::prelude::*;

fn time_machine_dir() -> PathBuf {
    find_dataset("time-machine", None).unwrap_or_else(|e| panic!("{e}"))
}

fn time_machine() -> PathBuf {
    time_machine_dir().join(TIME_MACHINE_FILE)
}

fn err_text<T: std::fmt::Debug>(r: Result<T, DataError>) -> String {
    r.expect_err("expected an error").to_string()
}

fn assert_contains(text: &str, parts: &[&str]) {
    for p in parts {
        assert!(text.contains(p), "{text:?} should contain {p:?}");
    }
}

fn rows(t: &Tensor) -> Vec<Vec<i64>> {
    let Tensor::I64(a) = t else {
        panic!("expected i64, got {:?}", t.dtype())
    };
    a.outer_iter()
        .map(|r| r.iter().copied().collect())
        .collect()
}

fn write_temp(bytes: &[u8]) -> tempfile::NamedTempFile {
    let f = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(f.path(), bytes).unwrap();
    f
}

// ------------------------------------------------------- the real file

#[test]
fn time_machine_lines_and_char_vocab_match_the_course() {
    let lines = read_time_machine(&time_machine()).unwrap();
    assert_eq!(lines.len(), 3221);
    assert_eq!(lines[0], "the time machine by h g wells");
    assert_eq!(
        lines[10],
        "twinkled and his usually pale face was flushed and animated the"
    );

    let (corpus, vocab) = load_corpus(&time_machine(), TokenKind::Char, None).unwrap();
    assert_eq!(corpus.len(), 170_580);
    // Computed with the course's Python on this file.
    let expected = [
        "<unk>", " ", "e", "t", "a", "i", "n", "o", "s", "h", "r", "d", "l", "m", "u", "c", "f",
        "w", "g", "y", "p", "b", "v", "k", "x", "z", "j", "q",
    ];
    assert_eq!(vocab.tokens(), expected);
    assert_eq!(vocab.len(), 28);
    assert_eq!(
        vocab.token_freqs()[..3],
        [
            (" ".into(), 29_927),
            ("e".into(), 17_838),
            ("t".into(), 13_515)
        ]
    );
    // Lines are concatenated with no separator (blank lines add nothing).
    let start = vocab.decode(&corpus[..48], TokenKind::Char).unwrap();
    assert_eq!(start, "the time machine by h g wellsithe time traveller");
}

#[test]
fn time_machine_word_vocab_matches_the_course() {
    let (corpus, vocab) = load_corpus(&time_machine(), TokenKind::Word, None).unwrap();
    assert_eq!(corpus.len(), 32_775);
    assert_eq!(vocab.len(), 4_580);
    assert_eq!(
        vocab.token_freqs()[..3],
        [
            ("the".into(), 2261),
            ("i".into(), 1267),
            ("and".into(), 1245)
        ]
    );
    assert_eq!(
        &vocab.tokens()[..6],
        ["<unk>", "the", "i", "and", "of", "a"]
    );
    assert_eq!(vocab.index("the"), 1);
    assert_eq!(vocab.index("internet"), vocab.unk());

    let lines = read_time_machine(&time_machine()).unwrap();
    let tokens = tokenize(&lines, TokenKind::Word);
    let frequent = Vocab::new(tokens.iter().flatten(), 5, &[]).unwrap();
    assert_eq!(frequent.len(), 825);
    assert_eq!(frequent.token_freqs().len(), 4_579);
}

#[test]
fn max_tokens_cuts_the_corpus_but_not_the_vocab() {
    let (full, vocab) = load_corpus(&time_machine(), TokenKind::Char, None).unwrap();
    let (cut, cut_vocab) = load_corpus(&time_machine(), TokenKind::Char, Some(10_000)).unwrap();
    assert_eq!(cut, full[..10_000]);
    assert_eq!(cut_vocab, vocab);
    let text = err_text(load_corpus(&time_machine(), TokenKind::Char, Some(0)));
    assert_contains(&text, &["max_tokens must be at least 1"]);
}

#[test]
fn load_data_time_machine_as_in_the_course() {
    let opts = SeqOptions::new(32, 35);
    let (loader, vocab) = load_data_time_machine(&time_machine_dir(), &opts, Some(10_000)).unwrap();
    assert_eq!(vocab.len(), 28);
    // (10000 - offset - 1) // 32 // 35 is 8 for every offset 0..=35.
    for epoch in 0..5 {
        let batches: Vec<_> = loader.epoch(epoch).collect();
        assert_eq!(batches.len(), 8);
        assert_eq!(loader.num_batches(epoch), 8);
        assert!(
            batches
                .iter()
                .all(|(x, y)| x.dims() == [32, 35] && y.dims() == [32, 35])
        );
    }
}

#[test]
fn encode_and_decode_for_text_generation() {
    let (_, vocab) = load_corpus(&time_machine(), TokenKind::Char, None).unwrap();
    let ids = vocab.encode("time traveller", TokenKind::Char);
    assert_eq!(ids.len(), 14);
    assert_eq!(ids[0], vocab.index("t"));
    assert_eq!(ids[4], vocab.index(" "));
    assert_eq!(
        vocab.decode(&ids, TokenKind::Char).unwrap(),
        "time traveller"
    );
    // Characters the preprocessing removed are unknown.
    assert_eq!(vocab.encode("T-1é", TokenKind::Char), [0, 0, 0, 0]);
    assert_eq!(vocab.decode(&[0, 2], TokenKind::Char).unwrap(), "<unk>e");
    let text = err_text(vocab.decode(&[1, 28], TokenKind::Char));
    assert_contains(&text, &["index 28", "position 1", "28 tokens"]);

    let (_, words) = load_corpus(&time_machine(), TokenKind::Word, None).unwrap();
    let ids = words.encode("the time  traveller zyzzyva", TokenKind::Word);
    assert_eq!(ids.len(), 4);
    assert_eq!(ids[3], 0);
    assert_eq!(
        words.decode(&ids, TokenKind::Word).unwrap(),
        "the time traveller <unk>"
    );
}

// ------------------------------------------------ reading and the vocab

#[test]
fn preprocess_is_the_courses_regex() {
    assert_eq!(
        preprocess("The Time Machine, by H. G. Wells [1898]\n"),
        "the time machine by h g wells"
    );
    assert_eq!(preprocess("  --a1b--  "), "a b");
    assert_eq!(preprocess("café au lait"), "caf au lait");
    assert_eq!(preprocess("1898!?"), "");
    assert_eq!(preprocess(""), "");
}

#[test]
fn lines_are_read_like_python_readlines() {
    let f = write_temp(b"one\r\ntwo\rthree\n\nlast");
    assert_eq!(
        read_lines(f.path()).unwrap(),
        ["one", "two", "three", "", "last"]
    );
    let f = write_temp(b"\xEF\xBB\xBFonly\n");
    assert_eq!(read_lines(f.path()).unwrap(), ["only"]);
    let f = write_temp("Hi, there!\n\n  ...\nÉtienne".as_bytes());
    assert_eq!(
        read_time_machine(f.path()).unwrap(),
        ["hi there", "", "", "tienne"]
    );
}

#[test]
fn vocab_orders_by_count_then_first_occurrence() {
    let tokens = [vec!["x", "y", "y"], vec![], vec!["z", "w", "z", "z", "x"]];
    // Counts: x 2, y 2, z 3, w 1; first occurrences x, y, z, w.
    let v = Vocab::new(tokens.iter().flatten(), 0, &[]).unwrap();
    assert_eq!(v.tokens(), ["<unk>", "z", "x", "y", "w"]);
    assert_eq!(
        v.token_freqs(),
        [
            ("z".into(), 3),
            ("x".into(), 2),
            ("y".into(), 2),
            ("w".into(), 1)
        ]
    );
    assert_eq!((v.index("x"), v.index("nope"), v.unk()), (2, 0, 0));
    assert_eq!((v.token(4), v.token(5)), (Some("w"), None));

    let v = Vocab::new(tokens.iter().flatten(), 2, &[]).unwrap();
    assert_eq!(v.tokens(), ["<unk>", "z", "x", "y"]);
    assert_eq!(v.index("w"), 0);
    assert_eq!(v.token_freqs().len(), 4);

    // A reserved token keeps its reserved index even when it is frequent.
    let v = Vocab::new(tokens.iter().flatten(), 0, &["<pad>", "x"]).unwrap();
    assert_eq!(v.tokens(), ["<unk>", "<pad>", "x", "z", "y", "w"]);

    let v = Vocab::new(Vec::<String>::new(), 0, &["<bos>"]).unwrap();
    assert_eq!(v.tokens(), ["<unk>", "<bos>"]);

    let text = err_text(Vocab::new(["a"], 0, &["<unk>"]));
    assert_contains(&text, &["\"<unk>\"", "appears twice"]);
    let text = err_text(Vocab::new(["a"], 0, &["<eos>", "<eos>"]));
    assert_contains(&text, &["\"<eos>\"", "appears twice"]);
}

// ------------------------------------------- the course's range(35) demo

fn demo(sampling: Sampling, seed: u64) -> SeqDataLoader {
    let corpus: Vec<usize> = (0..35).collect();
    SeqDataLoader::new(&corpus, SeqOptions::new(2, 5).sampling(sampling).seed(seed)).unwrap()
}

/// One batch's X and Y rows.
type Rows = (Vec<Vec<i64>>, Vec<Vec<i64>>);

fn epoch_rows(loader: &SeqDataLoader, epoch: u64) -> Vec<Rows> {
    loader
        .epoch(epoch)
        .map(|(x, y)| (rows(&x), rows(&y)))
        .collect()
}

#[test]
fn random_demo_batches() {
    let loader = demo(Sampling::Random, 0);
    let mut offsets = std::collections::BTreeSet::new();
    for epoch in 0..40 {
        let batches = epoch_rows(&loader, epoch);
        // (35 - offset - 1) // 5 = 6 subsequences, 3 batches, for offsets 0..=4.
        assert_eq!(batches.len(), 3);
        assert_eq!(loader.num_batches(epoch), 3);
        let mut starts = Vec::new();
        for (x, y) in &batches {
            assert_eq!((x.len(), y.len()), (2, 2));
            for (xr, yr) in x.iter().zip(y) {
                assert_eq!(xr.len(), 5);
                // The corpus is 0..35, so values are positions.
                let s = xr[0];
                assert_eq!(*xr, (s..s + 5).collect::<Vec<_>>());
                assert_eq!(*yr, (s + 1..s + 6).collect::<Vec<_>>());
                starts.push(s);
            }
        }
        // Every start is the offset plus a multiple of num_steps, so the
        // subsequences never overlap.
        let offset = starts.iter().min().unwrap() % 5;
        assert!(starts.iter().all(|s| s % 5 == offset));
        starts.sort();
        starts.dedup();
        assert_eq!(starts.len(), 6);
        offsets.insert(offset);
    }
    assert_eq!(offsets.into_iter().collect::<Vec<_>>(), [0, 1, 2, 3, 4]);
}

#[test]
fn sequential_demo_batches_continue_row_by_row() {
    let loader = demo(Sampling::Sequential, 0);
    let mut counts = std::collections::BTreeSet::new();
    let mut offsets = std::collections::BTreeSet::new();
    for epoch in 0..60 {
        let batches = epoch_rows(&loader, epoch);
        assert_eq!(batches.len(), loader.num_batches(epoch));
        counts.insert(batches.len());
        let (x0, _) = &batches[0];
        let offset = x0[0][0];
        // Rows are the contiguous halves of corpus[offset .. offset + tokens].
        let row_len = (35 - offset - 1) / 2;
        assert_eq!(x0[1][0], offset + row_len);
        offsets.insert(offset);
        for (i, (x, y)) in batches.iter().enumerate() {
            for r in 0..2 {
                let s = x0[r][0] + 5 * i as i64;
                assert_eq!(x[r], (s..s + 5).collect::<Vec<_>>());
                assert_eq!(y[r], (s + 1..s + 6).collect::<Vec<_>>());
                if i > 0 {
                    // Where the previous batch's row ended: the hidden state carries over.
                    assert_eq!(x[r][0], batches[i - 1].0[r][4] + 1);
                }
            }
        }
    }
    // Offsets 0..=5; (34 - offset) // 2 // 5 is 3 batches for offsets up to 4, 2 for 5.
    assert_eq!(offsets.into_iter().collect::<Vec<_>>(), [0, 1, 2, 3, 4, 5]);
    assert_eq!(counts.into_iter().collect::<Vec<_>>(), [2, 3]);
}

#[test]
fn batches_depend_only_on_seed_and_epoch() {
    for sampling in [Sampling::Random, Sampling::Sequential] {
        let (a, b) = (demo(sampling, 7), demo(sampling, 7));
        assert_eq!(epoch_rows(&a, 3), epoch_rows(&b, 3));
        let epochs: Vec<_> = (0..4).map(|e| epoch_rows(&a, e)).collect();
        assert!(
            epochs.windows(2).all(|w| w[0] != w[1]),
            "{sampling:?}: consecutive epochs should differ"
        );
        assert_ne!(epoch_rows(&demo(sampling, 8), 3), epoch_rows(&a, 3));
    }
}

#[test]
fn next_into_refills_the_same_buffers() {
    let corpus: Vec<usize> = (0..1000).collect();
    let loader = SeqDataLoader::new(&corpus, SeqOptions::new(4, 7)).unwrap();
    let mut batches = loader.epoch(0);
    let n = batches.len();
    // Any tensors will do at first; they become i64 [4, 7].
    let (mut x, mut y) = (
        Tensor::from_f32(&[1], vec![0.0]),
        Tensor::from_f32(&[1], vec![0.0]),
    );
    assert!(batches.next_into(&mut x, &mut y));
    let ptr = |t: &Tensor| match t {
        Tensor::I64(a) => a.as_ptr(),
        _ => panic!("expected i64"),
    };
    let (px, py) = (ptr(&x), ptr(&y));
    let mut seen = 1;
    let mut last = rows(&x);
    while batches.next_into(&mut x, &mut y) {
        assert_eq!((ptr(&x), ptr(&y)), (px, py));
        assert_eq!(x.dims(), [4, 7]);
        assert_eq!(rows(&x)[0][0], last[0][6] + 1);
        last = rows(&x);
        seen += 1;
        assert_eq!(batches.remaining(), n - seen);
    }
    assert_eq!(seen, n);
    assert!(!batches.next_into(&mut x, &mut y));
}

// ---------------------------------------------------------- hostile inputs

#[test]
fn missing_file_names_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nope.txt");
    for text in [
        err_text(read_lines(&path)),
        err_text(read_time_machine(&path)),
        err_text(load_corpus(&path, TokenKind::Char, None)),
    ] {
        assert_contains(&text, &[&path.display().to_string(), "No such file"]);
    }
    let text = err_text(load_data_time_machine(
        dir.path(),
        &SeqOptions::new(2, 5),
        None,
    ));
    assert_contains(&text, &["timemachine.txt"]);
}

#[test]
fn non_utf8_is_located() {
    let f = write_temp(b"good\nba\xFFd\n");
    let path = f.path().display().to_string();
    let text = err_text(read_lines(f.path()));
    assert_contains(
        &text,
        &[
            &path,
            "not valid UTF-8",
            "byte 0xFF",
            "byte offset 7",
            "line 2",
            "byte 3 of the line",
        ],
    );
    let f = write_temp(b"caf\xC3");
    let text = err_text(load_corpus(f.path(), TokenKind::Word, None));
    assert_contains(
        &text,
        &["incomplete character at the end", "byte offset 3", "line 1"],
    );
}

#[test]
fn empty_or_letterless_files_are_errors() {
    let cases: [(&[u8], &str); 4] = [
        (b"", "the file is empty"),
        (b"\xEF\xBB\xBF", "the file is empty"),
        (b"\n\r\n\n", "only blank lines"),
        (b"1898 -- !?\n\n...\n", "no ASCII letters"),
    ];
    for (bytes, why) in cases {
        let f = write_temp(bytes);
        let path = f.path().display().to_string();
        let text = err_text(load_corpus(f.path(), TokenKind::Char, None));
        assert_contains(&text, &[&path, why]);
    }
    // Raw reading keeps punctuation-only text.
    let f = write_temp(b"1898 -- !?\n");
    assert_eq!(read_lines(f.path()).unwrap(), ["1898 -- !?"]);
}

#[test]
fn impossible_batches_are_errors() {
    let corpus: Vec<usize> = (0..10).collect();
    let text = err_text(SeqDataLoader::new(&corpus, SeqOptions::new(1, 20)));
    assert_contains(&text, &["has 10 tokens", "needs at least 41"]);
    let text = err_text(SeqDataLoader::new(
        &corpus[..8],
        SeqOptions::new(2, 3).sampling(Sampling::Random),
    ));
    assert_contains(&text, &["has 8 tokens", "Random sampling needs at least 9"]);
    // Just enough: every epoch has a batch whatever its offset.
    let loader = SeqDataLoader::new(
        &corpus[..9],
        SeqOptions::new(2, 3).sampling(Sampling::Random),
    )
    .unwrap();
    assert!((0..50).all(|e| loader.num_batches(e) >= 1));
    assert!(SeqDataLoader::new(&corpus[..9], SeqOptions::new(2, 3)).is_err());
    let loader = SeqDataLoader::new(&corpus, SeqOptions::new(2, 3)).unwrap();
    assert!((0..50).all(|e| loader.epoch(e).len() >= 1));

    for opts in [SeqOptions::new(0, 5), SeqOptions::new(2, 0)] {
        let text = err_text(SeqDataLoader::new(&corpus, opts));
        assert_contains(&text, &["must be at least 1"]);
    }
    let text = err_text(SeqDataLoader::new(&corpus, SeqOptions::new(usize::MAX, 2)));
    assert_contains(&text, &["more than usize::MAX"]);
    let text = err_text(SeqDataLoader::new(&[], SeqOptions::new(1, 1)));
    assert_contains(&text, &["has 0 tokens"]);

    let text = err_text(load_data_time_machine(
        &time_machine_dir(),
        &SeqOptions::new(32, 35),
        Some(100),
    ));
    assert_contains(&text, &["has 100 tokens", "needs at least 1156"]);
}

// ------------------------------------------------------------- property

fn check_epoch(corpus: &[usize], opts: &SeqOptions, epoch: u64) -> Result<(), TestCaseError> {
    let (b, n) = (opts.batch_size, opts.num_steps);
    let loader = match SeqDataLoader::new(corpus, opts.clone()) {
        Ok(l) => l,
        Err(e) => {
            let extra = if opts.sampling == Sampling::Random {
                0
            } else {
                1
            };
            prop_assert!(corpus.len() < (b + 1) * n + extra, "{e}");
            prop_assert!(e.to_string().contains("tokens"));
            return Ok(());
        }
    };
    // Starts depend only on the corpus length: read them off an identity corpus.
    let ids: Vec<usize> = (0..corpus.len()).collect();
    let positions = SeqDataLoader::new(&ids, opts.clone()).unwrap();
    let count = loader.num_batches(epoch);
    prop_assert!(count >= 1);
    prop_assert_eq!(loader.epoch(epoch).len(), count);
    let mut starts = Vec::new();
    for ((x, y), (p, _)) in loader.epoch(epoch).zip(positions.epoch(epoch)) {
        prop_assert_eq!(x.dims(), [b, n]);
        prop_assert_eq!(y.dims(), [b, n]);
        let (x, y, p) = (rows(&x), rows(&y), rows(&p));
        for r in 0..b {
            let s = p[r][0] as usize;
            for j in 0..n {
                prop_assert_eq!(x[r][j], corpus[s + j] as i64);
                prop_assert_eq!(y[r][j], corpus[s + j + 1] as i64);
            }
            starts.push(s);
        }
    }
    prop_assert_eq!(starts.len(), count * b);
    if opts.sampling == Sampling::Random {
        let offset = starts[0] % n;
        prop_assert!(starts.iter().all(|s| s % n == offset));
        starts.sort();
        prop_assert!(starts.windows(2).all(|w| w[0] + n <= w[1]));
    } else {
        // Batch i row r starts num_steps after batch i-1 row r.
        for i in 1..count {
            for r in 0..b {
                prop_assert_eq!(starts[i * b + r], starts[(i - 1) * b + r] + n);
            }
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn iterators_never_panic_and_shift_by_one(
        corpus in proptest::collection::vec(0usize..50, 0..300),
        batch_size in 1usize..6,
        num_steps in 1usize..12,
        random in any::<bool>(),
        seed in any::<u64>(),
        epoch in 0u64..1000,
    ) {
        let sampling = if random { Sampling::Random } else { Sampling::Sequential };
        let opts = SeqOptions::new(batch_size, num_steps).sampling(sampling).seed(seed);
        check_epoch(&corpus, &opts, epoch)?;
    }

    #[test]
    fn reading_never_panics_on_arbitrary_bytes(
        bytes in proptest::collection::vec(any::<u8>(), 0..200),
    ) {
        let f = write_temp(&bytes);
        let _ = load_corpus(f.path(), TokenKind::Char, None);
        let _ = load_corpus(f.path(), TokenKind::Word, Some(3));
    }
}
