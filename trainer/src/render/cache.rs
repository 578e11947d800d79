//! The on-disk image cache: one file per (backend, settings, prompt, seed), named by
//! the SHA-256 of the four, with a JSON record beside it written last. A record whose
//! image is missing or no longer decodes is a miss, not an error, so a run killed while
//! writing simply renders that image again. The server is not part of the key: the
//! same settings on another server give the same image (the fleet runs one model).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::image::{write_atomic, ImageLimits, Picture};
use crate::{Result, TrainError};

/// An image cache in a directory (created when absent).
#[derive(Debug, Clone)]
pub struct Cache {
    dir: PathBuf,
    limits: ImageLimits,
}

#[derive(Debug, Serialize, Deserialize)]
struct Record {
    backend: String,
    settings: String,
    prompt: String,
    seed: u64,
    server: String,
    file: String,
}

impl Cache {
    /// Opens (creates) the cache in `dir`; images read back are checked with `limits`.
    pub fn open(dir: &Path, limits: ImageLimits) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(|e| TrainError::io(dir, e))?;
        Ok(Self {
            dir: dir.to_path_buf(),
            limits,
        })
    }

    /// The cache's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn key(backend: &str, settings: &str, prompt: &str, seed: u64) -> String {
        let mut h = Sha256::new();
        // Length-prefixed fields: no two tuples hash the same text.
        for part in [backend, settings, prompt] {
            h.update((part.len() as u64).to_le_bytes());
            h.update(part.as_bytes());
        }
        h.update(seed.to_le_bytes());
        h.finalize().iter().map(|b| format!("{b:02x}")).collect()
    }

    fn record_path(&self, key: &str) -> PathBuf {
        self.dir.join(&key[..2]).join(format!("{key}.json"))
    }

    /// The cached image and the server that rendered it, if any.
    pub fn get(
        &self,
        backend: &str,
        settings: &str,
        prompt: &str,
        seed: u64,
    ) -> Option<(Picture, String)> {
        let key = Self::key(backend, settings, prompt, seed);
        let path = self.record_path(&key);
        let record: Record = serde_json::from_slice(&std::fs::read(&path).ok()?).ok()?;
        if record.backend != backend
            || record.settings != settings
            || record.prompt != prompt
            || record.seed != seed
        {
            return None;
        }
        let image = path.with_file_name(&record.file);
        let bytes = std::fs::read(&image).ok()?;
        match Picture::decode(&bytes, &self.limits) {
            Ok(p) => Some((p, record.server)),
            Err(e) => {
                tracing::warn!(path = %image.display(), "cached image unusable, rendering again: {e}");
                None
            }
        }
    }

    /// Stores an image (the server's bytes) and its record.
    pub fn put(
        &self,
        backend: &str,
        settings: &str,
        prompt: &str,
        seed: u64,
        server: &str,
        picture: &Picture,
    ) -> Result<()> {
        let key = Self::key(backend, settings, prompt, seed);
        let record_path = self.record_path(&key);
        let sub = record_path.parent().unwrap_or(&self.dir);
        std::fs::create_dir_all(sub).map_err(|e| TrainError::io(sub, e))?;
        let file = format!("{key}.{}", picture.extension());
        write_atomic(&sub.join(&file), picture.encoded())?;
        let record = Record {
            backend: backend.into(),
            settings: settings.into(),
            prompt: prompt.into(),
            seed,
            server: server.into(),
            file,
        };
        let json = serde_json::to_vec(&record)
            .map_err(|e| TrainError::Config(format!("cache record: {e}")))?;
        write_atomic(&record_path, &json)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn picture(v: u8) -> Picture {
        let img = image::RgbImage::from_pixel(16, 16, image::Rgb([v, v, v]));
        let mut out = std::io::Cursor::new(Vec::new());
        img.write_to(&mut out, image::ImageFormat::Png).unwrap();
        Picture::decode(out.get_ref(), &ImageLimits::default()).unwrap()
    }

    #[test]
    fn keys_separate_every_field_and_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(dir.path(), ImageLimits::default()).unwrap();
        cache
            .put("a1111", "s", "a cat", 1, "http://h", &picture(10))
            .unwrap();
        let (p, server) = cache.get("a1111", "s", "a cat", 1).unwrap();
        assert_eq!(
            (p.rgb().get_pixel(0, 0)[0], server.as_str()),
            (10, "http://h")
        );
        assert!(cache.get("a1111", "s", "a cat", 2).is_none());
        assert!(cache.get("comfyui", "s", "a cat", 1).is_none());
        assert!(cache.get("a1111", "t", "a cat", 1).is_none());
        assert!(cache.get("a1111", "s", "a dog", 1).is_none());
        let again = Cache::open(dir.path(), ImageLimits::default()).unwrap();
        assert!(again.get("a1111", "s", "a cat", 1).is_some());
    }

    #[test]
    fn a_damaged_image_is_a_miss() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(dir.path(), ImageLimits::default()).unwrap();
        cache
            .put("a1111", "s", "p", 3, "http://h", &picture(1))
            .unwrap();
        let key = Cache::key("a1111", "s", "p", 3);
        let img = dir.path().join(&key[..2]).join(format!("{key}.png"));
        std::fs::write(&img, b"\x89PNG broken").unwrap();
        assert!(cache.get("a1111", "s", "p", 3).is_none());
    }
}
