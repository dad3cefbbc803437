//! `.npy` files and safetensors checkpoints: NumPy compatibility, round
//! trips, atomic writes, and robustness against hostile input.

use std::collections::BTreeMap;
use std::path::Path;

use d2l_runtime::Tensor;
use d2l_runtime::checkpoint::{self, CheckpointError};
use d2l_runtime::npy::{NpyError, npy_bytes, parse_npy, read_npy, write_npy};
use ndarray::{ArrayD, IxDyn};
use proptest::prelude::*;

// Written by NumPy 2.4 (`np.save`, or `numpy.lib.format.write_array` for
// versions 2.0 and 3.0), hex-encoded.
const F32_2X3: &str = "934e554d5059010076007b276465736372273a20273c6634272c2027666f727472616e5f6f72646572273a2046616c73652c20277368617065273a2028322c2033292c207d202020202020202020202020202020202020202020202020202020202020202020202020202020202020202020202020202020202020202020200a000000000000803e0000003f0000403f0000803f0000a03f";
const F64_SCALAR: &str = "934e554d5059010076007b276465736372273a20273c6638272c2027666f727472616e5f6f72646572273a2046616c73652c20277368617065273a2028292c207d20202020202020202020202020202020202020202020202020202020202020202020202020202020202020202020202020202020202020202020202020200a0000000000000c40";
const I64_4: &str = "934e554d5059010076007b276465736372273a20273c6938272c2027666f727472616e5f6f72646572273a2046616c73652c20277368617065273a2028342c292c207d2020202020202020202020202020202020202020202020202020202020202020202020202020202020202020202020202020202020202020202020200affffffffffffffff0000000000000000000000000001000000000000000000c0";
const BOOL_2X2: &str = "934e554d5059010076007b276465736372273a20277c6231272c2027666f727472616e5f6f72646572273a2046616c73652c20277368617065273a2028322c2032292c207d202020202020202020202020202020202020202020202020202020202020202020202020202020202020202020202020202020202020202020200a01000001";
const I32_3: &str = "934e554d5059010076007b276465736372273a20273c6934272c2027666f727472616e5f6f72646572273a2046616c73652c20277368617065273a2028332c292c207d2020202020202020202020202020202020202020202020202020202020202020202020202020202020202020202020202020202020202020202020200af9ffffff00000000ffffff7f";
const U8_2X2: &str = "934e554d5059010076007b276465736372273a20277c7531272c2027666f727472616e5f6f72646572273a2046616c73652c20277368617065273a2028322c2032292c207d202020202020202020202020202020202020202020202020202020202020202020202020202020202020202020202020202020202020202020200a00ff8001";
const F32_FORTRAN: &str = "934e554d5059010076007b276465736372273a20273c6634272c2027666f727472616e5f6f72646572273a20547275652c20277368617065273a2028322c2033292c207d20202020202020202020202020202020202020202020202020202020202020202020202020202020202020202020202020202020202020202020200a00000000000040400000803f00008040000000400000a040";
const F32_BIG_ENDIAN: &str = "934e554d5059010076007b276465736372273a20273e6634272c2027666f727472616e5f6f72646572273a2046616c73652c20277368617065273a2028332c292c207d2020202020202020202020202020202020202020202020202020202020202020202020202020202020202020202020202020202020202020202020200a000000003f80000040000000";
const F32_V2: &str = "934e554d50590200740000007b276465736372273a20273c6634272c2027666f727472616e5f6f72646572273a2046616c73652c20277368617065273a2028332c292c207d202020202020202020202020202020202020202020202020202020202020202020202020202020202020202020202020202020202020202020200a000000000000803f00000040";
const F32_V3: &str = "934e554d50590300740000007b276465736372273a20273c6634272c2027666f727472616e5f6f72646572273a2046616c73652c20277368617065273a2028332c292c207d202020202020202020202020202020202020202020202020202020202020202020202020202020202020202020202020202020202020202020200a000000000000803f00000040";
const F32_EMPTY_0X3: &str = "934e554d5059010076007b276465736372273a20273c6634272c2027666f727472616e5f6f72646572273a2046616c73652c20277368617065273a2028302c2033292c207d202020202020202020202020202020202020202020202020202020202020202020202020202020202020202020202020202020202020202020200a";

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

fn npy(s: &str) -> Result<Tensor, NpyError> {
    parse_npy(&hex(s), Path::new("fixture.npy"))
}

fn npy_err(bytes: &[u8]) -> String {
    parse_npy(bytes, Path::new("in/bad.npy"))
        .expect_err("expected an error")
        .to_string()
}

fn assert_contains(text: &str, parts: &[&str]) {
    for p in parts {
        assert!(text.contains(p), "{text:?} should contain {p:?}");
    }
}

// ---------------------------------------------------------------------- npy

#[test]
fn reads_numpy_files_of_every_supported_dtype() {
    assert_eq!(
        npy(F32_2X3).unwrap(),
        Tensor::from_f32(&[2, 3], vec![0.0, 0.25, 0.5, 0.75, 1.0, 1.25])
    );
    assert_eq!(npy(F64_SCALAR).unwrap(), Tensor::from_f64(&[], vec![3.5]));
    assert_eq!(
        npy(I64_4).unwrap(),
        Tensor::from_i64(&[4], vec![-1, 0, 1 << 40, -(1 << 62)])
    );
    assert_eq!(
        npy(BOOL_2X2).unwrap(),
        Tensor::from_bool(&[2, 2], vec![true, false, false, true])
    );
    assert_eq!(
        npy(I32_3).unwrap(),
        Tensor::from_i64(&[3], vec![-7, 0, 2147483647])
    );
    assert_eq!(
        npy(U8_2X2).unwrap(),
        Tensor::from_i64(&[2, 2], vec![0, 255, 128, 1])
    );
    assert_eq!(
        npy(F32_V2).unwrap(),
        Tensor::from_f32(&[3], vec![0.0, 1.0, 2.0])
    );
    assert_eq!(
        npy(F32_V3).unwrap(),
        Tensor::from_f32(&[3], vec![0.0, 1.0, 2.0])
    );
    assert_eq!(
        npy(F32_EMPTY_0X3).unwrap(),
        Tensor::from_f32(&[0, 3], vec![])
    );
}

#[test]
fn writes_the_same_bytes_as_numpy() {
    for fixture in [F32_2X3, F64_SCALAR, I64_4, BOOL_2X2, F32_EMPTY_0X3] {
        let t = npy(fixture).unwrap();
        assert_eq!(npy_bytes(&t), hex(fixture), "{t:?}");
    }
}

#[test]
fn npy_round_trips_every_dtype_and_rank() {
    let dir = tempfile::tempdir().unwrap();
    let shapes: [&[usize]; 5] = [&[], &[0], &[5], &[2, 3], &[2, 1, 3, 2]];
    for shape in shapes {
        let n: usize = shape.iter().product();
        let tensors = [
            Tensor::from_f32(shape, (0..n).map(|i| i as f32 * -1.5 + 0.1).collect()),
            Tensor::from_f64(shape, (0..n).map(|i| i as f64 / 3.0).collect()),
            Tensor::from_i64(
                shape,
                (0..n).map(|i| i as i64 * 1_000_000_007 - 5).collect(),
            ),
            Tensor::from_bool(shape, (0..n).map(|i| i % 3 == 0).collect()),
        ];
        for t in tensors {
            let path = dir.path().join("t.npy");
            write_npy(&path, &t).unwrap();
            assert_eq!(read_npy(&path).unwrap(), t);
        }
    }
    // A transposed (non-row-major) tensor is written in logical order.
    let a = ArrayD::from_shape_vec(IxDyn(&[2, 3]), vec![1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0]).unwrap();
    let t = Tensor::F32(a.t().to_owned().into_dyn());
    let path = dir.path().join("t.npy");
    write_npy(&path, &Tensor::F32(a.clone().reversed_axes())).unwrap();
    assert_eq!(read_npy(&path).unwrap(), t);
    assert_eq!(
        read_npy(&path).unwrap().to_f64_vec(),
        vec![1.0, 4.0, 2.0, 5.0, 3.0, 6.0]
    );
}

#[test]
fn npy_errors_say_what_is_wrong() {
    let good = hex(F32_2X3);
    assert_contains(&npy_err(&hex(F32_FORTRAN)), &["in/bad.npy", "Fortran"]);
    assert_contains(
        &npy_err(&hex(F32_BIG_ENDIAN)),
        &["in/bad.npy", "\">f4\"", "big-endian"],
    );
    assert_contains(
        &npy_err(b"PK\x03\x04 not numpy"),
        &["in/bad.npy", "not a .npy file", "50 4b 03 04"],
    );
    assert_contains(&npy_err(b""), &["empty file"]);
    let mut v4 = good.clone();
    v4[6] = 4;
    assert_contains(&npy_err(&v4), &["version 4.0 is not supported"]);
    assert_contains(
        &npy_err(&good[..50]),
        &["header should be 118 bytes", "ends after 40"],
    );
    assert_contains(
        &npy_err(&good[..good.len() - 4]),
        &["truncated", "needs 24 bytes", "found 20"],
    );
    let mut long = good.clone();
    long.extend_from_slice(&[0; 3]);
    assert_contains(&npy_err(&long), &["3 unexpected bytes after the 24 bytes"]);

    // Hand-made headers.
    let with_header = |h: &str, data: &[u8]| {
        let mut b = b"\x93NUMPY\x01\x00".to_vec();
        b.extend_from_slice(&(h.len() as u16).to_le_bytes());
        b.extend_from_slice(h.as_bytes());
        b.extend_from_slice(data);
        b
    };
    let e = |h: &str| npy_err(&with_header(h, &[]));
    assert_contains(
        &e("{'descr': '<c8', 'fortran_order': False, 'shape': (1,), }"),
        &["dtype \"<c8\" is not supported"],
    );
    assert_contains(
        &e(
            "{'descr': '<f4', 'fortran_order': False, 'shape': (4294967296, 4294967296, 4294967296), }",
        ),
        &["too large"],
    );
    assert_contains(
        &e("{'descr': '<f4', 'fortran_order': False, 'shape': (99999999999999999999999,), }"),
        &["too large"],
    );
    assert_contains(
        &e("{'descr': '<f4', 'shape': (1,), }"),
        &["must have the keys"],
    );
    assert_contains(
        &e("{'descr': '<f4', 'fortran_order': False, 'shape': (1,), 'x': 1}"),
        &["unexpected key 'x'"],
    );
    assert_contains(
        &e("{'descr': '<f4', 'fortran_order': 0, 'shape': (1,)}"),
        &["must be True or False, found '0'"],
    );
    assert_contains(
        &e("{'descr': '<f4', 'fortran_order': False, 'shape': (-1,)}"),
        &["non-negative integer"],
    );
    assert_contains(
        &e("{'descr': '<f4', 'fortran_order': False, 'shape': (1,)} extra"),
        &["after the header dict"],
    );
    assert_contains(&e("{'descr': '<f4'"), &["found the end of the header"]);
    assert_contains(
        &e("{'descr': [('a', '<f4')], 'fortran_order': False, 'shape': (1,)}"),
        &["structured"],
    );
    // Python 2 longs and double quotes are fine.
    let t = parse_npy(
        &with_header(
            "{\"descr\": \"<i8\", \"fortran_order\": False, \"shape\": (1L,)}",
            &7i64.to_le_bytes(),
        ),
        Path::new("x"),
    );
    assert_eq!(t.unwrap(), Tensor::from_i64(&[1], vec![7]));
    assert_contains(
        &read_npy("/nonexistent/x.npy").unwrap_err().to_string(),
        &["/nonexistent/x.npy"],
    );
}

/// Found by `npy_parser_never_panics_on_mutations`: a dtype whose first
/// character takes several bytes (here U+FFFD, from a mutated byte).
#[test]
fn a_multibyte_byte_order_mark_is_an_error() {
    let header = "{'descr': '\u{FFFD}i8', 'fortran_order': False, 'shape': (1,), }";
    let mut b = b"\x93NUMPY\x01\x00".to_vec();
    b.extend_from_slice(&(header.len() as u16).to_le_bytes());
    b.extend_from_slice(header.as_bytes());
    b.extend_from_slice(&[0; 8]);
    assert_contains(&npy_err(&b), &["in/bad.npy"]);
}

#[test]
fn write_npy_into_a_missing_folder_fails_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("no/such/dir/x.npy");
    let err = write_npy(&path, &Tensor::from_f32(&[1], vec![1.0])).unwrap_err();
    assert_contains(&err.to_string(), &["no/such/dir/x.npy"]);
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn npy_parser_never_panics_on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
        let _ = parse_npy(&bytes, Path::new("fuzz.npy"));
        let mut with_magic = b"\x93NUMPY\x01\x00".to_vec();
        with_magic.extend_from_slice(&bytes);
        let _ = parse_npy(&with_magic, Path::new("fuzz.npy"));
    }

    #[test]
    fn npy_parser_never_panics_on_mutations(
        which in 0usize..6,
        flips in proptest::collection::vec((any::<usize>(), 0u8..8), 0..6),
        cut in proptest::option::of(any::<usize>()),
    ) {
        let mut bytes = hex([F32_2X3, F64_SCALAR, I64_4, BOOL_2X2, I32_3, F32_V3][which]);
        for (pos, bit) in flips {
            let i = pos % bytes.len();
            bytes[i] ^= 1 << bit;
        }
        if let Some(c) = cut {
            bytes.truncate(c % (bytes.len() + 1));
        }
        let _ = parse_npy(&bytes, Path::new("fuzz.npy"));
    }

    #[test]
    fn npy_header_text_mutations_never_panic(h in "\\{[ 'a-z_<>|:,()0-9TrueFalsL\\]\\[]{0,90}\\}?") {
        let mut b = b"\x93NUMPY\x01\x00".to_vec();
        b.extend_from_slice(&(h.len() as u16).to_le_bytes());
        b.extend_from_slice(h.as_bytes());
        b.extend_from_slice(&[0; 16]);
        let _ = parse_npy(&b, Path::new("fuzz.npy"));
    }
}

// -------------------------------------------------------------- checkpoints

fn sample_tensors() -> Vec<(String, Tensor)> {
    vec![
        (
            "net.0.weight".into(),
            Tensor::from_f32(&[2, 3], vec![0.5, -1.0, 2.0, 3.25, 0.0, -0.0]),
        ),
        (
            "net.0.bias".into(),
            Tensor::from_f64(&[3], vec![1e-300, f64::MAX, -2.5]),
        ),
        ("step".into(), Tensor::from_i64(&[], vec![1234567890123])),
        (
            "mask".into(),
            Tensor::from_bool(&[2, 2], vec![true, false, false, true]),
        ),
        ("empty".into(), Tensor::from_f32(&[0, 4], vec![])),
    ]
}

fn save_sample(path: &Path) {
    let tensors = sample_tensors();
    let refs: Vec<(String, &Tensor)> = tensors.iter().map(|(n, t)| (n.clone(), t)).collect();
    let meta = BTreeMap::from([
        ("model".to_string(), "lenet".to_string()),
        ("epoch".into(), "10".into()),
    ]);
    checkpoint::save(path, &refs, &meta).unwrap();
}

fn valid_checkpoint_bytes() -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.safetensors");
    save_sample(&path);
    std::fs::read(path).unwrap()
}

fn ckpt_err(r: Result<checkpoint::Contents, CheckpointError>) -> String {
    r.expect_err("expected an error").to_string()
}

#[test]
fn checkpoint_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("lenet.safetensors");
    save_sample(&path);
    let (tensors, meta) = checkpoint::load(&path).unwrap();
    let want: BTreeMap<String, Tensor> = sample_tensors().into_iter().collect();
    assert_eq!(tensors, want);
    assert_eq!(meta.get("model").map(String::as_str), Some("lenet"));
    assert_eq!(meta.len(), 2);
    assert!(!d2l_runtime::files::temp_path(&path).exists());

    // No metadata, non-row-major input.
    let a = ArrayD::from_shape_vec(IxDyn(&[2, 3]), (0..6).map(|i| i as f32).collect()).unwrap();
    let t = Tensor::F32(a.reversed_axes());
    checkpoint::save(&path, &[("t".into(), &t)], &BTreeMap::new()).unwrap();
    let (tensors, meta) = checkpoint::load(&path).unwrap();
    assert_eq!(
        tensors["t"].to_f64_vec(),
        vec![0.0, 3.0, 1.0, 4.0, 2.0, 5.0]
    );
    assert_eq!(tensors["t"].shape().0, vec![3, 2]);
    assert!(meta.is_empty());
}

#[test]
fn failed_saves_leave_the_old_file_and_no_temp() {
    let dir = tempfile::tempdir().unwrap();
    // Into a folder that does not exist.
    let missing = dir.path().join("nope/model.safetensors");
    let t = Tensor::from_f32(&[1], vec![1.0]);
    let err = checkpoint::save(&missing, &[("w".into(), &t)], &BTreeMap::new()).unwrap_err();
    assert_contains(&err.to_string(), &["nope/model.safetensors"]);
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        0,
        "no temp file left"
    );

    // Over an existing checkpoint whose temp path cannot be written (a
    // folder sits there), the old checkpoint survives intact.
    let path = dir.path().join("model.safetensors");
    save_sample(&path);
    let before = std::fs::read(&path).unwrap();
    std::fs::create_dir(d2l_runtime::files::temp_path(&path)).unwrap();
    assert!(checkpoint::save(&path, &[("w".into(), &t)], &BTreeMap::new()).is_err());
    assert_eq!(std::fs::read(&path).unwrap(), before);
    std::fs::remove_dir(d2l_runtime::files::temp_path(&path)).unwrap();

    // Duplicate names are refused before anything is written.
    let err = checkpoint::save(
        &path,
        &[("w".into(), &t), ("w".into(), &t)],
        &BTreeMap::new(),
    )
    .unwrap_err();
    assert_contains(&err.to_string(), &["`w` appears twice"]);
    assert_eq!(std::fs::read(&path).unwrap(), before);
}

#[test]
fn checkpoint_errors_name_the_file_and_problem() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.safetensors");
    assert_contains(
        &ckpt_err(checkpoint::load(&missing)),
        &["missing.safetensors", "does not exist"],
    );

    let bytes = valid_checkpoint_bytes();
    let path = dir.path().join("cut.safetensors");
    std::fs::write(&path, &bytes[..bytes.len() - 10]).unwrap();
    assert_contains(
        &ckpt_err(checkpoint::load(&path)),
        &["cut.safetensors", "corrupt or truncated", "tensor `"],
    );
    std::fs::write(&path, &bytes[..5]).unwrap();
    assert_contains(
        &ckpt_err(checkpoint::load(&path)),
        &["cut.safetensors", "fewer than the 8-byte header length"],
    );
    std::fs::write(&path, b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all!").unwrap();
    assert_contains(
        &ckpt_err(checkpoint::load(&path)),
        &["cut.safetensors", "not a valid safetensors file"],
    );

    // F16 is valid safetensors but not a d2l dtype.
    let f16 =
        safetensors::tensor::TensorView::new(safetensors::Dtype::F16, vec![2], &[0, 60, 0, 64])
            .unwrap();
    let bytes = safetensors::serialize([("half", f16)], None).unwrap();
    std::fs::write(&path, bytes).unwrap();
    assert_contains(
        &ckpt_err(checkpoint::load(&path)),
        &[
            "tensor `half` has dtype F16",
            "supported: F32, F64, I64, BOOL",
        ],
    );
}

#[test]
fn hostile_offsets_are_rejected_without_overflow() {
    // Offsets chaining up to u64::MAX would overflow safetensors' own
    // length arithmetic; the precheck catches them first.
    let mut header = String::from("{");
    let mut start: u64 = 0;
    for i in 0..9u64 {
        let size: u64 = 1 << 61;
        let end = start.wrapping_add(size);
        header += &format!(
            "\"t{i}\":{{\"dtype\":\"U8\",\"shape\":[{size}],\"data_offsets\":[{start},{end}]}},"
        );
        start = end;
    }
    header.pop();
    header.push('}');
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(header.as_bytes());
    let err = checkpoint::parse(&bytes, Path::new("evil.safetensors"))
        .unwrap_err()
        .to_string();
    assert_contains(&err, &["evil.safetensors", "corrupt or truncated"]);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn checkpoint_parser_never_panics_on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
        let _ = checkpoint::parse(&bytes, Path::new("fuzz.safetensors"));
    }

    #[test]
    fn checkpoint_parser_never_panics_on_mutations(
        flips in proptest::collection::vec((any::<usize>(), 0u8..8), 0..6),
        cut in proptest::option::of(any::<usize>()),
    ) {
        static VALID: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
        let mut bytes = VALID.get_or_init(valid_checkpoint_bytes).clone();
        for (pos, bit) in flips {
            let i = pos % bytes.len();
            bytes[i] ^= 1 << bit;
        }
        if let Some(c) = cut {
            bytes.truncate(c % (bytes.len() + 1));
        }
        let _ = checkpoint::parse(&bytes, Path::new("fuzz.safetensors"));
    }

    #[test]
    fn checkpoint_header_mutations_never_panic(h in "\\{\"[a-z]\":\\{\"dtype\":\"(F32|U8|BOOL|F4|I64)\",\"shape\":\\[[0-9,]{0,40}\\],\"data_offsets\":\\[[0-9]{1,20},[0-9]{1,20}\\]\\}\\}") {
        let mut bytes = (h.len() as u64).to_le_bytes().to_vec();
        bytes.extend_from_slice(h.as_bytes());
        bytes.extend_from_slice(&[0; 64]);
        let _ = checkpoint::parse(&bytes, Path::new("fuzz.safetensors"));
    }
}

#[test]
fn logs_and_plots_share_the_checkpoint_writer() {
    // One writer for every file a run leaves: it replaces the old file in
    // one rename and leaves no temp file behind, also when it fails.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("run.csv");
    d2l_runtime::files::write_atomic(&path, b"epoch\n1\n").unwrap();
    d2l_runtime::files::write_atomic(&path, b"epoch\n1\n2\n").unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), b"epoch\n1\n2\n");
    assert!(!d2l_runtime::files::temp_path(&path).exists());
    let err = d2l_runtime::files::write_atomic(&dir.path().join("no/such/dir/x.svg"), b"<svg/>").unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::NotFound);
    assert_eq!(std::fs::read(&path).unwrap(), b"epoch\n1\n2\n");
}
