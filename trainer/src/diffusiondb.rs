//! DiffusionDB (Wang et al., 2022) as a system-language corpus.
//!
//! DiffusionDB ships a metadata table, `metadata.parquet` (one row per image: `prompt`,
//! `image_name`, `part_id`, `seed`, `step`, `cfg`, `sampler`, ...), and its images in
//! folders `images/part-NNNNNN/`, each with a `part-NNNNNN.json` that maps every image
//! file name to the same parameters (`p` prompt, `se` seed, `c` CFG scale, `st` steps,
//! `sa` sampler). This reader streams either (the table row group by row group, or the
//! part files one at a time; never the whole dataset in memory), drops repeated prompts
//! and prompts without details, and writes [`SystemRecord`] lines with the image path,
//! ready for `prip train warmup-decoder` or `adapt`.
//!
//! [`SystemRecord`]: crate::data::SystemRecord

use std::collections::{BTreeMap, HashSet};
use std::fs;
use std::hash::{Hash, Hasher};
use std::io::Write;
use std::path::{Path, PathBuf};

use parquet::record::Field;
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
    /// Part files read (for a metadata table: its row groups).
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

/// Converts DiffusionDB under `root` into a system-language corpus at `out`. `root` is
/// the dataset folder (with `metadata.parquet`, or only the unzipped `images/part-*`
/// folders), its `images/` folder, or a `.parquet` metadata file. With `images`, each
/// record names its image (relative to `out`'s folder) and images missing on disk are
/// skipped; without, records carry the prompt only (text pivot).
pub fn import(root: &Path, out: &Path, images: bool) -> Result<ImportReport> {
    let out_dir = out.parent().unwrap_or(Path::new("."));
    let out_abs = fs::canonicalize(out_dir).map_err(|e| TrainError::io(out_dir, e))?;
    let file = fs::File::create(out).map_err(|e| TrainError::io(out, e))?;
    let mut sink = Sink {
        out,
        out_abs,
        images,
        w: std::io::BufWriter::new(file),
        seen: HashSet::new(),
        report: ImportReport::default(),
    };
    match metadata_file(root) {
        Some(parquet) => read_parquet(&parquet, &mut sink)?,
        None => read_parts(root, &mut sink)?,
    }
    sink.w.flush().map_err(|e| TrainError::io(out, e))?;
    Ok(sink.report)
}

/// The metadata table to read, when there is one: `root` itself or `root/metadata.parquet`.
fn metadata_file(root: &Path) -> Option<PathBuf> {
    if root.is_file() && root.extension().is_some_and(|e| e == "parquet") {
        return Some(root.to_path_buf());
    }
    Some(root.join("metadata.parquet")).filter(|p| p.is_file())
}

/// Where the records go: drops repeated prompts and unusable ones, counts everything.
struct Sink<'a> {
    out: &'a Path,
    out_abs: PathBuf,
    images: bool,
    w: std::io::BufWriter<fs::File>,
    seen: HashSet<u64>,
    report: ImportReport,
}

impl Sink<'_> {
    /// One image: its prompt and where its file would be.
    fn add(&mut self, prompt: &str, image: &Path) -> Result<()> {
        self.report.images += 1;
        let prompt = prompt.trim().to_string();
        let mut h = std::collections::hash_map::DefaultHasher::new();
        prompt.hash(&mut h);
        if !self.seen.insert(h.finish()) {
            self.report.duplicates += 1;
            return Ok(());
        }
        let mut rec = SystemRecord {
            prompt,
            prefix: None,
            image: None,
            pivot: None,
        };
        if self.images {
            if !image.is_file() {
                self.report.unusable += 1;
                return Ok(());
            }
            let abs = fs::canonicalize(image).map_err(|e| TrainError::io(image, e))?;
            rec.image = Some(relative(&abs, &self.out_abs));
        }
        if rec.validate().is_err() {
            self.report.unusable += 1;
            return Ok(());
        }
        let line = serde_json::to_string(&rec).map_err(|e| TrainError::Config(e.to_string()))?;
        writeln!(self.w, "{line}").map_err(|e| TrainError::io(self.out, e))?;
        self.report.written += 1;
        Ok(())
    }
}

/// The unzipped part folders' own JSON files, one part in memory at a time.
fn read_parts(root: &Path, sink: &mut Sink<'_>) -> Result<()> {
    for part in part_files(root)? {
        sink.report.parts += 1;
        let text = fs::read_to_string(&part).map_err(|e| TrainError::io(&part, e))?;
        // BTreeMap: a stable order whatever the JSON object order.
        let meta: BTreeMap<String, ImageMeta> = match serde_json::from_str(&text) {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!("{}: skipped: {e}", part.display());
                sink.report.bad_parts += 1;
                continue;
            }
        };
        let dir = part.parent().unwrap_or(Path::new("."));
        for (file, m) in meta {
            sink.add(&m.p, &dir.join(&file))?;
        }
    }
    Ok(())
}

/// DiffusionDB's metadata table (`prompt`, `image_name`, `part_id`, ... one row per
/// image), streamed row group by row group; only the three columns used are decoded.
/// Images are looked for in `images/part-NNNNNN/` beside the file (or `part-NNNNNN/`).
fn read_parquet(path: &Path, sink: &mut Sink<'_>) -> Result<()> {
    use parquet::file::reader::{FileReader, SerializedFileReader};
    use parquet::schema::types::Type;

    let bad = |e: parquet::errors::ParquetError| {
        TrainError::Config(format!(
            "{}: not a readable parquet file: {e}",
            path.display()
        ))
    };
    let file = fs::File::open(path).map_err(|e| TrainError::io(path, e))?;
    let reader = SerializedFileReader::new(file).map_err(bad)?;
    let schema = reader.metadata().file_metadata().schema();
    let mut wanted = vec!["prompt"];
    if sink.images {
        wanted.extend(["image_name", "part_id"]);
    }
    let fields: Vec<_> = schema
        .get_fields()
        .iter()
        .filter(|f| wanted.contains(&f.name()))
        .cloned()
        .collect();
    if let Some(missing) = wanted
        .iter()
        .find(|w| !fields.iter().any(|f| f.name() == **w))
    {
        return Err(TrainError::Config(format!(
            "{}: no column {missing:?}; is this DiffusionDB's metadata.parquet?",
            path.display()
        )));
    }
    let projection = Type::group_type_builder(schema.name())
        .with_fields(fields)
        .build()
        .map_err(bad)?;
    let dir = path.parent().unwrap_or(Path::new("."));
    let images = if dir.join("images").is_dir() {
        dir.join("images")
    } else {
        dir.to_path_buf()
    };
    sink.report.parts = reader.num_row_groups();
    for (i, row) in reader
        .get_row_iter(Some(projection))
        .map_err(bad)?
        .enumerate()
    {
        let row =
            row.map_err(|e| TrainError::Config(format!("{} row {}: {e}", path.display(), i + 1)))?;
        let (mut prompt, mut name, mut part) = (None, None, None);
        for (column, value) in row.get_column_iter() {
            match (column.as_str(), value) {
                ("prompt", Field::Str(s)) => prompt = Some(s.as_str()),
                ("image_name", Field::Str(s)) => name = Some(s.as_str()),
                ("part_id", v) => part = integer(v),
                _ => {}
            }
        }
        let Some(prompt) = prompt else {
            sink.report.images += 1;
            sink.report.unusable += 1;
            continue;
        };
        let image = match (part, name) {
            (Some(part), Some(name)) => images.join(format!("part-{part:06}")).join(name),
            _ => PathBuf::new(),
        };
        sink.add(prompt, &image)?;
    }
    Ok(())
}

/// An integer column whatever width and signedness the writer chose.
fn integer(v: &Field) -> Option<u64> {
    match *v {
        Field::Byte(x) => u64::try_from(x).ok(),
        Field::Short(x) => u64::try_from(x).ok(),
        Field::Int(x) => u64::try_from(x).ok(),
        Field::Long(x) => u64::try_from(x).ok(),
        Field::UByte(x) => Some(x.into()),
        Field::UShort(x) => Some(x.into()),
        Field::UInt(x) => Some(x.into()),
        Field::ULong(x) => Some(x),
        _ => None,
    }
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

    /// image_name, prompt (absent: null), part_id.
    type Row<'a> = (&'a str, Option<&'a str>, i32);

    /// Writes a metadata table shaped like DiffusionDB's (pandas/pyarrow types, snappy
    /// pages), in row groups of two so reading has to cross between them.
    fn write_metadata(path: &Path, rows: &[Row<'_>]) {
        use parquet::basic::Compression;
        use parquet::data_type::{ByteArray, ByteArrayType, FloatType, Int32Type};
        use parquet::file::properties::WriterProperties;
        use parquet::file::writer::SerializedFileWriter;
        use std::sync::Arc;

        let schema = parquet::schema::parser::parse_message_type(
            "message schema {
                OPTIONAL BYTE_ARRAY image_name (STRING);
                OPTIONAL BYTE_ARRAY prompt (STRING);
                OPTIONAL INT32 part_id (INTEGER(16, false));
                OPTIONAL FLOAT cfg;
            }",
        )
        .unwrap();
        let props = WriterProperties::builder()
            .set_compression(Compression::SNAPPY)
            .build();
        let file = fs::File::create(path).unwrap();
        let mut w = SerializedFileWriter::new(file, Arc::new(schema), Arc::new(props)).unwrap();
        for group in rows.chunks(2) {
            let mut rg = w.next_row_group().unwrap();
            let mut column = 0;
            while let Some(mut col) = rg.next_column().unwrap() {
                let strings = |pick: &dyn Fn(&Row<'_>) -> Option<String>| {
                    let defs: Vec<i16> =
                        group.iter().map(|r| i16::from(pick(r).is_some())).collect();
                    let vals: Vec<ByteArray> = group
                        .iter()
                        .filter_map(pick)
                        .map(|s| ByteArray::from(s.as_str()))
                        .collect();
                    (vals, defs)
                };
                let all = vec![1i16; group.len()];
                match column {
                    0 => {
                        let (v, d) = strings(&|r| Some(r.0.to_string()));
                        col.typed::<ByteArrayType>()
                            .write_batch(&v, Some(&d), None)
                            .unwrap();
                    }
                    1 => {
                        let (v, d) = strings(&|r| r.1.map(str::to_string));
                        col.typed::<ByteArrayType>()
                            .write_batch(&v, Some(&d), None)
                            .unwrap();
                    }
                    2 => {
                        let v: Vec<i32> = group.iter().map(|r| r.2).collect();
                        col.typed::<Int32Type>()
                            .write_batch(&v, Some(&all), None)
                            .unwrap();
                    }
                    _ => {
                        let v = vec![7.0f32; group.len()];
                        col.typed::<FloatType>()
                            .write_batch(&v, Some(&all), None)
                            .unwrap();
                    }
                }
                col.close().unwrap();
                column += 1;
            }
            rg.close().unwrap();
        }
        w.close().unwrap();
    }

    #[test]
    fn imports_the_metadata_table_with_images_from_the_part_folders() {
        let root = tempfile::tempdir().unwrap();
        let part = root.path().join("images/part-000002");
        fs::create_dir_all(&part).unwrap();
        fs::write(part.join("a.webp"), b"webp").unwrap();
        fs::write(part.join("c.webp"), b"webp").unwrap();
        write_metadata(
            &root.path().join("metadata.parquet"),
            &[
                ("a.webp", Some("a cat, oil painting"), 2),
                ("b.webp", Some("a cat, oil painting"), 2),
                ("c.webp", Some("a dog, watercolor, by Monet"), 2),
                ("d.webp", None, 2),
                ("e.webp", Some("a fox, ink sketch"), 3),
            ],
        );
        let out_dir = tempfile::tempdir().unwrap();
        let out = out_dir.path().join("ddb.jsonl");
        let r = import(root.path(), &out, true).unwrap();
        assert_eq!(
            r,
            ImportReport {
                parts: 3,
                images: 5,
                written: 2,
                duplicates: 1,
                // No prompt (d), and no image on disk (e).
                unusable: 2,
                bad_parts: 0
            }
        );
        let mut s = Stream::<SystemRecord>::new(vec![out.clone()], 0, 1, 0.0).unwrap();
        let recs: Vec<_> = s
            .next_batch(2)
            .unwrap()
            .into_iter()
            .map(|l| l.record)
            .collect();
        let prompts: Vec<&str> = recs.iter().map(|r| r.prompt.as_str()).collect();
        assert!(
            prompts.contains(&"a cat, oil painting")
                && prompts.contains(&"a dog, watercolor, by Monet")
        );
        assert!(recs.iter().all(|r| r.image.as_ref().unwrap().is_file()));

        // Prompts only; the file itself may be named; a table that is not DiffusionDB's
        // or not parquet at all is refused with its name.
        let r = import(&root.path().join("metadata.parquet"), &out, false).unwrap();
        assert_eq!((r.written, r.unusable), (3, 1));
        let other = root.path().join("other.parquet");
        fs::write(&other, b"PAR1 not really").unwrap();
        let e = import(&other, &out, false).unwrap_err().to_string();
        assert!(
            e.contains("other.parquet: not a readable parquet file"),
            "{e}"
        );
    }
}
