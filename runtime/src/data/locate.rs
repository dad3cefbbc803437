//! Finding a dataset on disk, and fetching the ones we know from their
//! public URLs.
//!
//! Search order (first hit wins):
//! 1. the explicit `--data DIR` (the dataset folder itself, or a parent
//!    holding `<name>/`); when given, nothing else is searched, so a typo in
//!    it is reported instead of silently using some other copy;
//! 2. `$D2L_DATA/<name>`;
//! 3. `shared/data/<name>` under the current directory and under each of
//!    its ancestors (so a test run from any crate directory finds the
//!    workspace's `../shared/data`);
//! 4. `/usr/share/datasets/<name>` (where Debian's `dataset-fashion-mnist`
//!    package installs `fashion-mnist/{train,t10k}-*-ubyte.gz`);
//! 5. `~/.cache/d2l/<name>` (where [`fetch`] puts downloads).

use std::fs;
use std::io::{self, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::Command;

use flate2::read::MultiGzDecoder;
use sha1::Sha1;
use sha2::{Digest, Sha256};

use super::DataError;
use super::wiki::{WIKI_DATASET, WIKI_FILES};

/// A file's expected digest, in hex.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Checksum<'a> {
    Sha256(&'a str),
    /// Only where no SHA-256 is published and no copy is at hand to
    /// compute one (WikiText-2's training file).
    Sha1(&'a str),
}

impl<'a> Checksum<'a> {
    pub fn hex(self) -> &'a str {
        match self {
            Checksum::Sha256(h) | Checksum::Sha1(h) => h,
        }
    }

    pub fn algorithm(self) -> &'static str {
        match self {
            Checksum::Sha256(_) => "SHA-256",
            Checksum::Sha1(_) => "SHA-1",
        }
    }
}

/// One file of a known dataset.
#[derive(Clone, Copy, Debug)]
pub struct DatasetFile<'a> {
    /// File name inside the dataset folder.
    pub name: &'a str,
    /// Other names a copy of it may have in a dataset folder (a folder
    /// holding one counts as holding the file; such copies are not checked).
    pub also: &'a [&'a str],
    /// Public URLs, tried in order.
    pub urls: &'a [&'a str],
    /// Of the file's contents: of the *decompressed* bytes when `gzipped`,
    /// because the same data circulates under several different gzip
    /// encodings (see [`KNOWN_DATASETS`]).
    pub checksum: Checksum<'a>,
    pub gzipped: bool,
    /// When set, the URLs give a zip archive and this file is its member of
    /// this name (`checksum` is the member's).
    pub member: Option<&'a str>,
}

/// A dataset [`fetch`] knows how to download and verify.
#[derive(Clone, Copy, Debug)]
pub struct KnownDataset<'a> {
    pub name: &'a str,
    pub files: &'a [DatasetFile<'a>],
    /// Other ways to get it, shown when it is not found.
    pub note: &'a str,
}

/// The datasets with public download URLs and checksums.
///
/// The checksums were computed from the copies in the workspace's
/// `shared/data` (see each folder's PROVENANCE.md). Those copies are the
/// public files byte for byte for the CSV and text files (their SHA-1s equal
/// d2l's `DATA_HUB` hashes). For the IDX `.gz` files they are not: Debian
/// recompressed Fashion-MNIST and the MNIST copy was re-gzipped, so their
/// `.gz` bytes differ from the upstream downloads while the decompressed
/// bytes are identical (checked there against upstream's published hashes).
/// Hence the IDX checksums are over the decompressed contents, which any
/// mirror's `.gz` must reproduce.
///
/// WikiText-2's training file is the exception: `shared/data` holds its
/// lines in another order (`train.txt`, found under [`DatasetFile::also`]),
/// so its checksum is the SHA-1 that GluonNLP publishes for
/// `wiki.train.tokens` in the course's `wikitext-2-v1.zip` (whose own SHA-1,
/// d2l's `DATA_HUB` entry, is 3c914d17…). The same table's SHA-1s of the
/// validation and test files equal those of the copies in `shared/data`
/// (`tests/data.rs` checks them), which is what vouches for it.
pub const KNOWN_DATASETS: &[KnownDataset<'static>] = &[
    KnownDataset {
        name: "fashion-mnist",
        files: &[
            DatasetFile {
                name: "train-images-idx3-ubyte.gz",
                also: &[],
                urls: &[concat!(
                    "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
                    "train-images-idx3-ubyte.gz"
                )],
                checksum: Checksum::Sha256("c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888"),
                gzipped: true,
                member: None,
            },
            DatasetFile {
                name: "train-labels-idx1-ubyte.gz",
                also: &[],
                urls: &[concat!(
                    "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
                    "train-labels-idx1-ubyte.gz"
                )],
                checksum: Checksum::Sha256("bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9"),
                gzipped: true,
                member: None,
            },
            DatasetFile {
                name: "t10k-images-idx3-ubyte.gz",
                also: &[],
                urls: &[concat!(
                    "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
                    "t10k-images-idx3-ubyte.gz"
                )],
                checksum: Checksum::Sha256("5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b"),
                gzipped: true,
                member: None,
            },
            DatasetFile {
                name: "t10k-labels-idx1-ubyte.gz",
                also: &[],
                urls: &[concat!(
                    "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
                    "t10k-labels-idx1-ubyte.gz"
                )],
                checksum: Checksum::Sha256("0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34"),
                gzipped: true,
                member: None,
            },
        ],
        note: "on Debian/Ubuntu also `apt-get install dataset-fashion-mnist` \
               (installs /usr/share/datasets/fashion-mnist)",
    },
    KnownDataset {
        name: "mnist",
        files: &[
            DatasetFile {
                name: "train-images-idx3-ubyte.gz",
                also: &[],
                urls: &[
                    "https://ossci-datasets.s3.amazonaws.com/mnist/train-images-idx3-ubyte.gz",
                    "https://storage.googleapis.com/cvdf-datasets/mnist/train-images-idx3-ubyte.gz",
                ],
                checksum: Checksum::Sha256("ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db"),
                gzipped: true,
                member: None,
            },
            DatasetFile {
                name: "train-labels-idx1-ubyte.gz",
                also: &[],
                urls: &[
                    "https://ossci-datasets.s3.amazonaws.com/mnist/train-labels-idx1-ubyte.gz",
                    "https://storage.googleapis.com/cvdf-datasets/mnist/train-labels-idx1-ubyte.gz",
                ],
                checksum: Checksum::Sha256("65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5"),
                gzipped: true,
                member: None,
            },
            DatasetFile {
                name: "t10k-images-idx3-ubyte.gz",
                also: &[],
                urls: &[
                    "https://ossci-datasets.s3.amazonaws.com/mnist/t10k-images-idx3-ubyte.gz",
                    "https://storage.googleapis.com/cvdf-datasets/mnist/t10k-images-idx3-ubyte.gz",
                ],
                checksum: Checksum::Sha256("0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7"),
                gzipped: true,
                member: None,
            },
            DatasetFile {
                name: "t10k-labels-idx1-ubyte.gz",
                also: &[],
                urls: &[
                    "https://ossci-datasets.s3.amazonaws.com/mnist/t10k-labels-idx1-ubyte.gz",
                    "https://storage.googleapis.com/cvdf-datasets/mnist/t10k-labels-idx1-ubyte.gz",
                ],
                checksum: Checksum::Sha256("ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2"),
                gzipped: true,
                member: None,
            },
        ],
        note: "",
    },
    KnownDataset {
        name: "kaggle-house",
        files: &[
            DatasetFile {
                name: "kaggle_house_pred_train.csv",
                also: &[],
                urls: &["http://d2l-data.s3-accelerate.amazonaws.com/kaggle_house_pred_train.csv"],
                checksum: Checksum::Sha256("1e18addf81e5e4d347cc17ee6075bbe4a42b7fa26b9e5b063e8f692a5f929d41"),
                gzipped: false,
                member: None,
            },
            DatasetFile {
                name: "kaggle_house_pred_test.csv",
                also: &[],
                urls: &["http://d2l-data.s3-accelerate.amazonaws.com/kaggle_house_pred_test.csv"],
                checksum: Checksum::Sha256("8fdd3d829d4d986b58f845c9553b225e67dd8383624d90fb6ca1d4bed5798c1e"),
                gzipped: false,
                member: None,
            },
        ],
        note: "",
    },
    KnownDataset {
        name: "fra-eng",
        files: &[DatasetFile {
            name: "fra.txt",
            also: &[],
            urls: &["http://d2l-data.s3-accelerate.amazonaws.com/fra-eng.zip"],
            checksum: Checksum::Sha256("0bb85dbaa1c896844649094d7eaf2e34bee34e84fe362b26ce7e8f2e12aae104"),
            gzipped: false,
            member: Some("fra-eng/fra.txt"),
        }],
        note: "",
    },
    KnownDataset {
        name: "time-machine",
        files: &[DatasetFile {
            name: "timemachine.txt",
            also: &[],
            urls: &["http://d2l-data.s3-accelerate.amazonaws.com/timemachine.txt"],
            checksum: Checksum::Sha256("8424dbd9532ac81f7e5f0b6add90e6952baea29158309d7d1bf3884f4e12c516"),
            gzipped: false,
            member: None,
        }],
        note: "",
    },
    KnownDataset {
        name: WIKI_DATASET,
        // The loader's names: the zip's, then the workspace copy's.
        files: &[DatasetFile {
            name: WIKI_FILES[0],
            also: &[WIKI_FILES[1]],
            // The dataset's author's mirror, then the course's URL (whose
            // bucket has answered 403 since 2024).
            urls: &["https://wikitext.smerity.com/wikitext-2-v1.zip", "https://s3.amazonaws.com/research.metamind.io/wikitext/wikitext-2-v1.zip"],
            checksum: Checksum::Sha1("863f29c46ef9d167fff4940ec821195882fe29d1"),
            gzipped: false,
            member: Some("wikitext-2/wiki.train.tokens"),
        }],
        note: "a copy holding the same lines in another order also serves (BERT's sampler shuffles the paragraphs)",
    },
];

/// The table entry for `name`, if we know how to fetch it.
pub fn known_dataset(name: &str) -> Option<&'static KnownDataset<'static>> {
    KNOWN_DATASETS.iter().find(|d| d.name == name)
}

/// `~/.cache/d2l`, where [`fetch`] downloads to (None if `$HOME` is unset).
pub fn cache_root() -> Option<PathBuf> {
    std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .map(|h| PathBuf::from(h).join(".cache").join("d2l"))
}

/// Why a candidate folder was rejected (for the not-found message).
fn missing_files(dir: &Path, name: &str) -> Vec<String> {
    let Some(spec) = known_dataset(name) else {
        return Vec::new();
    };
    spec.files
        .iter()
        .filter(|f| {
            // A gzipped file may also have been unpacked by the user.
            let raw = f.name.strip_suffix(".gz").filter(|_| f.gzipped);
            !dir.join(f.name).is_file() && !raw.is_some_and(|r| dir.join(r).is_file()) && !f.also.iter().any(|a| dir.join(a).is_file())
        })
        .map(|f| f.name.to_string())
        .collect()
}

/// Checks one candidate; `Ok(dir)` if usable, else a line for the report.
fn check_candidate(dir: &Path, name: &str) -> Result<PathBuf, String> {
    if !dir.is_dir() {
        return Err(format!("{} (no such folder)", dir.display()));
    }
    let missing = missing_files(dir, name);
    if missing.is_empty() {
        Ok(dir.to_path_buf())
    } else {
        Err(format!(
            "{} (exists but lacks {})",
            dir.display(),
            missing.join(", ")
        ))
    }
}

/// The implicit search path for `name` (everything but `--data`), in order.
pub fn search_path(name: &str) -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    if let Some(root) = std::env::var_os("D2L_DATA").filter(|r| !r.is_empty()) {
        dirs.push(PathBuf::from(root).join(name));
    }
    if let Ok(cwd) = std::env::current_dir() {
        // `a/shared/data` for every ancestor `a` also covers `../shared/data`
        // relative to each directory below it.
        for a in cwd.ancestors() {
            dirs.push(a.join("shared").join("data").join(name));
        }
    }
    dirs.push(Path::new("/usr/share/datasets").join(name));
    if let Some(cache) = cache_root() {
        dirs.push(cache.join(name));
    }
    let mut seen = std::collections::HashSet::new();
    dirs.retain(|d| seen.insert(d.clone()));
    dirs
}

/// How to obtain `name`, for error messages.
fn how_to_get(name: &str) -> String {
    let mut hint = String::from("To get it: ");
    match known_dataset(name) {
        Some(spec) => {
            let cache = cache_root().map_or("~/.cache/d2l".into(), |c| c.display().to_string());
            hint += &format!("run `d2l fetch {name}` (downloads into {cache}/{name}");
            let urls: Vec<&str> = spec
                .files
                .iter()
                .filter_map(|f| f.urls.first().copied())
                .collect();
            hint += &format!(" from {})", urls.join(", "));
            if !spec.note.is_empty() {
                hint += &format!("; {}", spec.note);
            }
            hint += "; or put the files in one of the folders above, pass `--data DIR`, or set D2L_DATA.";
        }
        None => {
            hint += "put the dataset's files in one of the folders above, pass `--data DIR` \
                     (the dataset folder or its parent), or set D2L_DATA to a folder holding it.";
        }
    }
    hint
}

/// Finds the folder holding dataset `name` (see the module docs for the
/// search order). For datasets in [`KNOWN_DATASETS`] a folder only counts if
/// it holds all of the dataset's files (gzipped or unpacked).
pub fn find_dataset(name: &str, explicit: Option<&Path>) -> Result<PathBuf, DataError> {
    let mut searched = Vec::new();
    let not_found = |searched: Vec<String>, extra: &str| DataError::NotFound {
        name: name.to_string(),
        searched,
        hint: format!("{extra}{}", how_to_get(name)),
    };

    if let Some(dir) = explicit {
        for cand in [dir.join(name), dir.to_path_buf()] {
            match check_candidate(&cand, name) {
                Ok(found) => return Ok(found),
                Err(why) => searched.push(why),
            }
        }
        return Err(not_found(
            searched,
            "The folder given with --data does not hold it. ",
        ));
    }

    for cand in search_path(name) {
        match check_candidate(&cand, name) {
            Ok(found) => return Ok(found),
            Err(why) => searched.push(why),
        }
    }
    Err(not_found(searched, ""))
}

/// Hex SHA-256 of a file's bytes, or of its decompressed bytes when
/// `decompress` (gzip). Streams, so large files take no extra memory.
pub fn sha256_file(path: &Path, decompress: bool) -> Result<String, DataError> {
    hash_file::<Sha256>(path, decompress)
}

/// Hex SHA-1, as [`sha256_file`].
pub fn sha1_file(path: &Path, decompress: bool) -> Result<String, DataError> {
    hash_file::<Sha1>(path, decompress)
}

fn hash_file<D: Digest>(path: &Path, decompress: bool) -> Result<String, DataError> {
    let file = fs::File::open(path).map_err(|e| DataError::io(path, e))?;
    let mut reader: Box<dyn Read> = if decompress {
        Box::new(MultiGzDecoder::new(BufReader::new(file)))
    } else {
        Box::new(BufReader::new(file))
    };
    let mut hasher = D::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) if decompress => {
                return Err(DataError::Gzip {
                    path: path.to_path_buf(),
                    source: e,
                });
            }
            Err(e) => return Err(DataError::io(path, e)),
        };
        hasher.update(&buf[..n]);
    }
    Ok(hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

/// Checks a file against its expected digest (of the decompressed
/// contents when `decompress`); a mismatch is a [`DataError::Checksum`].
pub fn verify_checksum(path: &Path, expected: Checksum<'_>, decompress: bool) -> Result<(), DataError> {
    let actual = match expected {
        Checksum::Sha256(_) => sha256_file(path, decompress)?,
        Checksum::Sha1(_) => sha1_file(path, decompress)?,
    };
    if actual.eq_ignore_ascii_case(expected.hex()) {
        Ok(())
    } else {
        Err(DataError::Checksum {
            path: path.to_path_buf(),
            algorithm: expected.algorithm(),
            expected: expected.hex().to_ascii_lowercase(),
            actual,
            decompressed: decompress,
        })
    }
}

/// Downloads the known dataset `name` into `dest` (default
/// `~/.cache/d2l/<name>`) and verifies every file's checksum; files already
/// there with the right checksum are kept. Returns the dataset folder.
///
/// Downloads go through the `curl` command. The network path cannot be
/// tested in this project's sandbox (no internet); the tests exercise the
/// same code with `file://` URLs.
pub fn fetch(name: &str, dest: Option<&Path>) -> Result<PathBuf, DataError> {
    let spec = known_dataset(name).ok_or_else(|| DataError::Fetch {
        name: name.to_string(),
        msg: format!(
            "no download URLs are known for it (known: {})",
            KNOWN_DATASETS
                .iter()
                .map(|d| d.name)
                .collect::<Vec<_>>()
                .join(", ")
        ),
    })?;
    let dir = match dest {
        Some(d) => d.to_path_buf(),
        None => cache_root()
            .ok_or_else(|| DataError::Fetch {
                name: name.to_string(),
                msg: "$HOME is not set, so there is no ~/.cache/d2l; pass a destination folder"
                    .into(),
            })?
            .join(name),
    };
    fetch_files(name, spec.files, &dir)?;
    Ok(dir)
}

/// The download-and-verify loop behind [`fetch`], for any file list.
pub fn fetch_files(name: &str, files: &[DatasetFile<'_>], dir: &Path) -> Result<(), DataError> {
    let fail = |msg: String| DataError::Fetch {
        name: name.to_string(),
        msg,
    };
    fs::create_dir_all(dir).map_err(|e| DataError::io(dir, e))?;
    // Files already present with the right checksum are kept.
    let needed: Vec<&DatasetFile<'_>> = files
        .iter()
        .filter(|f| {
            let target = dir.join(f.name);
            !(target.is_file() && verify_checksum(&target, f.checksum, f.gzipped).is_ok())
        })
        .collect();
    if needed.is_empty() {
        return Ok(());
    }
    if !Command::new("curl")
        .arg("--version")
        .output()
        .is_ok_and(|out| out.status.success())
    {
        let urls: Vec<&str> = needed
            .iter()
            .filter_map(|f| f.urls.first().copied())
            .collect();
        return Err(fail(format!(
            "the `curl` command is not available (install it, e.g. `apt-get install curl`), \
             or download these files by hand into {}: {}",
            dir.display(),
            urls.join(" ")
        )));
    }
    for file in needed {
        let target = dir.join(file.name);
        // Download next to the target, then rename: a crash or a bad
        // download never leaves a half-written file under the real name.
        let tmp = dir.join(format!(".{}.part-{}", file.name, std::process::id()));
        let archive = dir.join(format!(".{}.zip.part-{}", file.name, std::process::id()));
        let mut errors = Vec::new();
        let fetched = file.urls.iter().any(|url| {
            let got = match file.member {
                None => download(url, &tmp),
                Some(member) => download(url, &archive).and_then(|()| extract_member(&archive, member, &tmp)),
            };
            let _ = fs::remove_file(&archive);
            match got.and_then(|()| {
                verify_checksum(&tmp, file.checksum, file.gzipped).map_err(|e| e.to_string())?;
                fs::rename(&tmp, &target).map_err(|e| format!("{}: {e}", target.display()))
            }) {
                Ok(()) => true,
                Err(e) => {
                    let _ = fs::remove_file(&tmp);
                    errors.push(format!("{url}: {e}"));
                    false
                }
            }
        });
        if !fetched {
            return Err(fail(format!(
                "could not get {}:\n  {}",
                file.name,
                errors.join("\n  ")
            )));
        }
    }
    Ok(())
}

/// Writes the member `name` of the zip archive `archive` to `out`.
fn extract_member(archive: &Path, name: &str, out: &Path) -> Result<(), String> {
    let file = fs::File::open(archive).map_err(|e| format!("{}: {e}", archive.display()))?;
    let mut zip = zip::ZipArchive::new(file).map_err(|e| format!("not a zip archive: {e}"))?;
    let mut member = zip.by_name(name).map_err(|e| format!("the archive has no {name}: {e}"))?;
    let mut dst = fs::File::create(out).map_err(|e| format!("{}: {e}", out.display()))?;
    std::io::copy(&mut member, &mut dst).map_err(|e| format!("unpacking {name}: {e}"))?;
    Ok(())
}

/// `curl` one URL to `out`; the error is curl's own message.
fn download(url: &str, out: &Path) -> Result<(), String> {
    let result = Command::new("curl")
        .args([
            "--fail",
            "--silent",
            "--show-error",
            "--location",
            "--retry",
            "2",
        ])
        .args(["--connect-timeout", "30", "--output"])
        .arg(out)
        .arg(url)
        .output();
    match result {
        Ok(o) if o.status.success() => Ok(()),
        Ok(o) => Err(format!(
            "curl failed ({}): {}",
            o.status,
            String::from_utf8_lossy(&o.stderr).trim()
        )),
        Err(e) => Err(format!("could not run curl: {e}")),
    }
}
