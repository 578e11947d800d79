//! DiffusionDB (Wang et al., 2022) as a system-language corpus.
//!
//! DiffusionDB ships its images in folders `images/part-NNNNNN/`, each with a
//! `part-NNNNNN.json` that maps every image file name to its generation parameters
//! (`p` prompt, `se` seed, `c` CFG scale, `st` steps, `sa` sampler). This reader walks
//! those part files one at a time (never the whole dataset in memory), drops repeated
//! prompts and prompts without details, and writes [`SystemRecord`] lines with the image
//! path, ready for `prip train warmup-decoder` or `adapt`.
//!
//! [`SystemRecord`]: crate::data::SystemRecord

use std::collections::{BTreeMap, HashSet};
use std::fs;
use std::hash::{Hash, Hasher};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::data::{Record, SystemRecord};
use crate::{Result, TrainError};

/// Generation parameters of one image, as in a DiffusionDB part file.
#[derive(Debug, Clone, Deserialize)]
pub struct ImageMeta {
    /// The prompt.
    pub p: String,
    /// Seed.
    #[serde(default)]
    pub se: Option<u64>,
    /// CFG scale.
    #[serde(default)]
    pub c: Option<f64>,
    /// Steps.
    #[serde(default)]
    pub st: Option<u32>,
    /// Sampler.
    #[serde(default)]
    pub sa: Option<String>,
}

/// What an import did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImportReport {
    /// Part files read.
    pub parts: usize,
    /// Images listed.
    pub images: usize,
    /// Records written.
    pub written: usize,
    /// Skipped: the prompt was already written.
    pub duplicates: usize,
    /// Skipped: unusable prompt (empty, no details) or missing image.
    pub unusable: usize,
    /// Part files that could not be parsed (reported, skipped).
    pub bad_parts: usize,
}

/// The part files under `root` (the dataset root or its `images/` folder), in order.
pub fn part_files(root: &Path) -> Result<Vec<PathBuf>> {
    let images = if root.join("images").is_dir() {
        root.join("images")
    } else {
        root.to_path_buf()
    };
    let mut parts = Vec::new();
    let rd = fs::read_dir(&images).map_err(|e| TrainError::io(&images, e))?;
    for e in rd.flatten() {
        let dir = e.path();
        let name = e.file_name().to_string_lossy().to_string();
        if dir.is_dir() && name.starts_with("part-") {
            let json = dir.join(format!("{name}.json"));
            if json.is_file() {
                parts.push(json);
            }
        }
    }
    parts.sort();
    if parts.is_empty() {
        return Err(TrainError::Config(format!(
            "{}: no DiffusionDB part folders (images/part-NNNNNN/part-NNNNNN.json); unzip the parts first",
            root.display()
        )));
    }
    Ok(parts)
}

/// Converts DiffusionDB under `root` into a system-language corpus at `out`. With
/// `images`, each record names its image (relative to `out`'s folder) and images
/// missing on disk are skipped; without, records carry the prompt only (text pivot).
pub fn import(root: &Path, out: &Path, images: bool) -> Result<ImportReport> {
    let parts = part_files(root)?;
    let out_dir = out.parent().unwrap_or(Path::new("."));
    let out_abs = fs::canonicalize(out_dir).map_err(|e| TrainError::io(out_dir, e))?;
    let mut w = std::io::BufWriter::new(fs::File::create(out).map_err(|e| TrainError::io(out, e))?);
    let mut seen = HashSet::new();
    let mut r = ImportReport::default();
    for part in parts {
        r.parts += 1;
        let text = fs::read_to_string(&part).map_err(|e| TrainError::io(&part, e))?;
        // BTreeMap: a stable order whatever the JSON object order.
        let meta: BTreeMap<String, ImageMeta> = match serde_json::from_str(&text) {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!("{}: skipped: {e}", part.display());
                r.bad_parts += 1;
                continue;
            }
        };
        let dir = part.parent().unwrap_or(Path::new("."));
        for (file, m) in meta {
            r.images += 1;
            let prompt = m.p.trim().to_string();
            let mut h = std::collections::hash_map::DefaultHasher::new();
            prompt.hash(&mut h);
            if !seen.insert(h.finish()) {
                r.duplicates += 1;
                continue;
            }
            let image = dir.join(&file);
            let mut rec = SystemRecord {
                prompt,
                prefix: None,
                image: None,
                pivot: None,
            };
            if images {
                if !image.is_file() {
                    r.unusable += 1;
                    continue;
                }
                let abs = fs::canonicalize(&image).map_err(|e| TrainError::io(&image, e))?;
                rec.image = Some(relative(&abs, &out_abs));
            }
            if rec.validate().is_err() {
                r.unusable += 1;
                continue;
            }
            let line =
                serde_json::to_string(&rec).map_err(|e| TrainError::Config(e.to_string()))?;
            writeln!(w, "{line}").map_err(|e| TrainError::io(out, e))?;
            r.written += 1;
        }
    }
    w.flush().map_err(|e| TrainError::io(out, e))?;
    Ok(r)
}

fn relative(path: &Path, base: &Path) -> PathBuf {
    let p: Vec<_> = path.components().collect();
    let b: Vec<_> = base.components().collect();
    let common = p.iter().zip(&b).take_while(|(x, y)| x == y).count();
    let mut out = PathBuf::new();
    for _ in common..b.len() {
        out.push("..");
    }
    for c in &p[common..] {
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::Stream;

    #[test]
    fn imports_parts_deduplicated_with_relative_image_paths() {
        let root = tempfile::tempdir().unwrap();
        let part = root.path().join("images/part-000001");
        fs::create_dir_all(&part).unwrap();
        fs::write(part.join("a.png"), b"png").unwrap();
        fs::write(part.join("b.png"), b"png").unwrap();
        fs::write(
            part.join("part-000001.json"),
            r#"{"a.png": {"p": "a cat, oil painting", "se": 1, "c": 7.0, "st": 50, "sa": "k_lms"},
                "b.png": {"p": "a cat, oil painting", "se": 2},
                "c.png": {"p": "a dog, watercolor"},
                "d.png": {"p": "no details"}}"#,
        )
        .unwrap();
        let bad = root.path().join("images/part-000002");
        fs::create_dir_all(&bad).unwrap();
        fs::write(bad.join("part-000002.json"), "{broken").unwrap();

        let out_dir = tempfile::tempdir().unwrap();
        let out = out_dir.path().join("ddb.jsonl");
        let r = import(root.path(), &out, true).unwrap();
        assert_eq!(
            r,
            ImportReport {
                parts: 2,
                images: 4,
                written: 1,
                duplicates: 1,
                unusable: 2,
                bad_parts: 1
            }
        );
        let mut s = Stream::<SystemRecord>::new(vec![out.clone()], 0, 4, 0.0).unwrap();
        let rec = s.next_batch(1).unwrap().remove(0).record;
        assert_eq!(rec.prompt, "a cat, oil painting");
        assert!(
            rec.image.unwrap().is_file(),
            "the image path resolves from the corpus"
        );

        let r = import(root.path(), &out, false).unwrap();
        assert_eq!(r.written, 2, "without images the dog prompt counts too");
        assert!(import(out_dir.path(), &out_dir.path().join("x.jsonl"), false).is_err());
    }
}
