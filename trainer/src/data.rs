//! Training corpora: the JSONL record formats (docs/training-data.md) and a streaming
//! reader that shuffles through a bounded buffer, so a corpus larger than memory trains
//! without being loaded whole. Bad lines are reported with file and line, skipped and
//! counted; the run stops only when too large a share of them fails.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::marker::PhantomData;
use std::path::{Path, PathBuf};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::{Result, TrainError};

/// Where a pivot target comes from: the text pivot of a system prompt, an image file
/// (through an image encoder), or a vector computed elsewhere.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PivotSource {
    /// A system-language prompt (the text pivot is its frozen sentence-encoder states).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// An image file, relative to the corpus file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<PathBuf>,
    /// A precomputed pivot: num_queries rows of d_pivot, nested or flat.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pivot: Option<PivotValues>,
}

/// A precomputed pivot as written in JSON.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum PivotValues {
    /// `[[...], [...]]`: one array per pivot row.
    Rows(Vec<Vec<f32>>),
    /// `[...]`: rows concatenated.
    Flat(Vec<f32>),
}

impl PivotValues {
    /// The values as `rows` x `width`, or a one-line reason why they are not.
    pub fn to_matrix(&self, rows: usize, width: usize) -> std::result::Result<Vec<f32>, String> {
        let flat: Vec<f32> = match self {
            PivotValues::Rows(r) => {
                if let Some(bad) = r.iter().find(|row| row.len() != width) {
                    return Err(format!(
                        "pivot row of width {}, the model's pivot is {width} wide",
                        bad.len()
                    ));
                }
                r.concat()
            }
            PivotValues::Flat(f) => f.clone(),
        };
        if flat.len() == width && rows > 1 {
            // A single pooled vector (e.g. a CLIP image embedding) fills every row.
            return Ok(flat.repeat(rows));
        }
        if flat.len() != rows * width {
            return Err(format!(
                "pivot of {} values, the model needs {rows} x {width} (or one row of {width})",
                flat.len()
            ));
        }
        if flat.iter().any(|v| !v.is_finite()) {
            return Err("pivot contains NaN or infinity".into());
        }
        Ok(flat)
    }
}

/// One candidate of a preference log: a system prompt, image or pivot with its score.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Candidate {
    /// The candidate's pivot source.
    #[serde(flatten)]
    pub source: PivotSource,
    /// Preference score (higher is better), e.g. ImageReward of the image.
    pub score: f64,
}

/// A preference-log line: a user prompt and scored candidates. The encoder warm-up
/// regresses the pivot of the best-scored candidate (Eq. 6 of the paper).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PreferenceRecord {
    /// The user-language prompt.
    pub prompt: String,
    /// Scored candidates; at least one.
    pub candidates: Vec<Candidate>,
}

impl PreferenceRecord {
    /// Index of the best-scored candidate (first on ties).
    pub fn best(&self) -> Option<usize> {
        let mut best: Option<usize> = None;
        for (i, c) in self.candidates.iter().enumerate() {
            if !c.score.is_finite() {
                continue;
            }
            if best.is_none_or(|b| c.score > self.candidates[b].score) {
                best = Some(i);
            }
        }
        best
    }

    fn check(&self) -> std::result::Result<(), String> {
        check_prompt(&self.prompt)?;
        if self.candidates.is_empty() {
            return Err("no candidates".into());
        }
        for c in &self.candidates {
            check_source(&c.source)?;
        }
        self.best()
            .map(|_| ())
            .ok_or_else(|| "no candidate has a finite score".into())
    }
}

/// A system-language line (decoder warm-up and per-system corpora): a prompt as a
/// generation system renders well, with the image made from it or its pivot. Without
/// an image or pivot the text pivot of the prompt itself is used.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SystemRecord {
    /// The system-language prompt.
    pub prompt: String,
    /// The part the decoder is given (a prefix of `prompt`); by default everything
    /// before the first comma, as a user would have typed it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    /// An image rendered from the prompt, relative to the corpus file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<PathBuf>,
    /// A precomputed pivot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pivot: Option<PivotValues>,
}

impl SystemRecord {
    /// (what the decoder is given, what it must write).
    pub fn split(&self) -> (String, String) {
        let (head, tail) = match &self.prefix {
            Some(p) => (p.as_str(), &self.prompt[p.len()..]),
            None => match self.prompt.find(',') {
                Some(i) => (&self.prompt[..i], &self.prompt[i..]),
                None => (self.prompt.as_str(), ""),
            },
        };
        let tail = tail.trim_start_matches(|c: char| c == ',' || c.is_whitespace());
        (head.trim().to_string(), tail.trim_end().to_string())
    }

    /// The pivot source of this record.
    pub fn source(&self) -> PivotSource {
        PivotSource {
            text: (self.image.is_none() && self.pivot.is_none()).then(|| self.prompt.clone()),
            image: self.image.clone(),
            pivot: self.pivot.clone(),
        }
    }

    fn check(&self) -> std::result::Result<(), String> {
        check_prompt(&self.prompt)?;
        if let Some(p) = &self.prefix {
            if !self.prompt.starts_with(p.as_str()) {
                return Err("prefix is not a prefix of prompt".into());
            }
        }
        if self.split().1.is_empty() {
            return Err("nothing to learn: the prompt has no details after its prefix".into());
        }
        Ok(())
    }
}

fn check_prompt(p: &str) -> std::result::Result<(), String> {
    prip_core::refiner::validate_prompt(p).map_err(|e| e.to_string())
}

fn check_source(s: &PivotSource) -> std::result::Result<(), String> {
    let n = [s.text.is_some(), s.image.is_some(), s.pivot.is_some()]
        .iter()
        .filter(|b| **b)
        .count();
    if n != 1 {
        return Err("a candidate needs exactly one of text, image, pivot".into());
    }
    Ok(())
}

/// A record type the reader can check after parsing.
pub trait Record: DeserializeOwned {
    /// A one-line reason the record cannot be trained on.
    fn validate(&self) -> std::result::Result<(), String>;
    /// Makes paths inside the record relative to the corpus file's directory.
    fn rebase(&mut self, _dir: &Path) {}
}

impl Record for PreferenceRecord {
    fn validate(&self) -> std::result::Result<(), String> {
        self.check()
    }
    fn rebase(&mut self, dir: &Path) {
        for c in &mut self.candidates {
            if let Some(p) = &mut c.source.image {
                *p = dir.join(&*p);
            }
        }
    }
}

impl Record for SystemRecord {
    fn validate(&self) -> std::result::Result<(), String> {
        self.check()
    }
    fn rebase(&mut self, dir: &Path) {
        if let Some(p) = &mut self.image {
            *p = dir.join(&*p);
        }
    }
}

/// A record with where it came from.
#[derive(Debug, Clone)]
pub struct Located<T> {
    /// The record.
    pub record: T,
    /// Corpus file.
    pub file: PathBuf,
    /// 1-based line.
    pub line: usize,
}

/// Counts of skipped lines and the share that stops a run.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct BadLines {
    /// Lines read.
    pub seen: usize,
    /// Lines skipped.
    pub bad: usize,
}

impl BadLines {
    /// Counts a line read.
    fn read(&mut self) {
        self.seen += 1;
    }

    /// Counts a line that cannot be used; fails when more than `max_share` of the lines
    /// so far were bad (a handful is always tolerated, so a short file's first error
    /// does not stop the run).
    fn fail(&mut self, max_share: f64, file: &Path, why: &str) -> Result<()> {
        self.bad += 1;
        if self.bad > 3 && self.bad as f64 > max_share * self.seen as f64 {
            return Err(TrainError::TooManyBadLines {
                file: file.to_path_buf(),
                bad: self.bad,
                seen: self.seen,
                last: why.to_string(),
            });
        }
        Ok(())
    }
}

/// Streams records from JSONL files, epoch after epoch, shuffled through a bounded
/// buffer with a generator seeded by (seed, epoch).
#[derive(Debug)]
pub struct Stream<T> {
    files: Vec<PathBuf>,
    seed: u64,
    buffer: usize,
    max_bad_share: f64,
    epoch: usize,
    file_idx: usize,
    lines: Option<(std::io::Lines<BufReader<File>>, usize)>,
    pending: Vec<Located<T>>,
    rng: StdRng,
    /// Records handed out in the current epoch.
    pub taken: usize,
    /// Skipped-line counts over the whole run.
    pub bad: BadLines,
    _t: PhantomData<T>,
}

impl<T: Record> Stream<T> {
    /// A stream over `files` (read in order, then shuffled through `buffer` records).
    pub fn new(files: Vec<PathBuf>, seed: u64, buffer: usize, max_bad_share: f64) -> Result<Self> {
        if files.is_empty() {
            return Err(TrainError::Config("no training files given".into()));
        }
        for f in &files {
            if !f.is_file() {
                return Err(TrainError::Config(format!(
                    "{}: training file not found",
                    f.display()
                )));
            }
        }
        Ok(Self {
            files,
            seed,
            buffer: buffer.max(1),
            max_bad_share,
            epoch: 0,
            file_idx: 0,
            lines: None,
            pending: Vec::new(),
            rng: epoch_rng(seed, 0),
            taken: 0,
            bad: BadLines::default(),
            _t: PhantomData,
        })
    }

    /// The epoch being read (0-based).
    pub fn epoch(&self) -> usize {
        self.epoch
    }

    /// Counts the valid records of one pass (to size a run in epochs).
    pub fn count(files: &[PathBuf], max_bad_share: f64) -> Result<usize> {
        let mut s = Self::new(files.to_vec(), 0, 1, max_bad_share)?;
        let mut n = 0;
        while s.read_one()?.is_some() {
            n += 1;
        }
        Ok(n)
    }

    /// Positions a fresh stream where a run stopped: `epoch`, `taken` records into it.
    pub fn seek(&mut self, epoch: usize, taken: usize) -> Result<()> {
        self.epoch = epoch;
        self.rng = epoch_rng(self.seed, epoch);
        self.file_idx = 0;
        self.lines = None;
        self.pending.clear();
        self.taken = 0;
        let bad = self.bad.clone();
        for _ in 0..taken {
            self.next_record()?;
        }
        // Lines re-read while seeking were already counted by the interrupted run.
        self.bad = bad;
        Ok(())
    }

    /// The next `n` records (crossing into the next epoch when one ends).
    pub fn next_batch(&mut self, n: usize) -> Result<Vec<Located<T>>> {
        (0..n).map(|_| self.next_record()).collect()
    }

    fn next_record(&mut self) -> Result<Located<T>> {
        for _ in 0..2 {
            while self.pending.len() < self.buffer {
                match self.read_one()? {
                    Some(r) => self.pending.push(r),
                    None => break,
                }
            }
            if !self.pending.is_empty() {
                let i = self.rng.random_range(0..self.pending.len());
                self.taken += 1;
                return Ok(self.pending.swap_remove(i));
            }
            // The epoch is exhausted: start the next one.
            self.epoch += 1;
            self.rng = epoch_rng(self.seed, self.epoch);
            self.file_idx = 0;
            self.lines = None;
            self.taken = 0;
        }
        Err(TrainError::Config(format!(
            "no usable records in {}",
            self.files
                .iter()
                .map(|f| f.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        )))
    }

    fn read_one(&mut self) -> Result<Option<Located<T>>> {
        loop {
            if self.lines.is_none() {
                let Some(path) = self.files.get(self.file_idx) else {
                    return Ok(None);
                };
                let f = File::open(path).map_err(|e| TrainError::io(path, e))?;
                self.lines = Some((BufReader::new(f).lines(), 0));
            }
            let path = self.files[self.file_idx].clone();
            let (lines, no) = self.lines.as_mut().expect("opened above");
            let Some(line) = lines.next() else {
                self.lines = None;
                self.file_idx += 1;
                continue;
            };
            *no += 1;
            let line_no = *no;
            self.bad.read();
            let line = match line {
                Ok(l) => l,
                Err(e) => {
                    let why = format!("unreadable line: {e}");
                    self.skip(&path, line_no, &why)?;
                    continue;
                }
            };
            if line.trim().is_empty() {
                continue;
            }
            let parsed = serde_json::from_str::<T>(&line)
                .map_err(|e| e.to_string())
                .and_then(|mut r| {
                    r.validate()?;
                    r.rebase(path.parent().unwrap_or(Path::new(".")));
                    Ok(r)
                });
            match parsed {
                Ok(record) => {
                    return Ok(Some(Located {
                        record,
                        file: path,
                        line: line_no,
                    }));
                }
                Err(why) => self.skip(&path, line_no, &why)?,
            }
        }
    }

    fn skip(&mut self, path: &Path, line: usize, why: &str) -> Result<()> {
        tracing::warn!("{}:{line}: skipped: {why}", path.display());
        self.bad
            .fail(self.max_bad_share, path, &format!("line {line}: {why}"))
    }

    /// Counts a record that parsed but could not be trained on (a missing image, a
    /// prompt too long for the model), with the same limit as unparsable lines.
    pub fn reject(&mut self, record: &Located<T>, why: &str) -> Result<()> {
        self.skip(&record.file.clone(), record.line, why)
    }
}

fn epoch_rng(seed: u64, epoch: usize) -> StdRng {
    StdRng::seed_from_u64(seed ^ (epoch as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn corpus(lines: &[&str]) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.jsonl");
        let mut f = File::create(&p).unwrap();
        for l in lines {
            writeln!(f, "{l}").unwrap();
        }
        (dir, p)
    }

    #[test]
    fn system_records_split_at_the_first_comma() {
        let r: SystemRecord =
            serde_json::from_str(r#"{"prompt": "a cat, oil painting, by monet"}"#).unwrap();
        assert_eq!(r.split(), ("a cat".into(), "oil painting, by monet".into()));
        let r: SystemRecord = serde_json::from_str(
            r#"{"prompt": "a cat, sitting, oil painting", "prefix": "a cat, sitting"}"#,
        )
        .unwrap();
        assert_eq!(r.split().1, "oil painting");
        assert!(r.validate().is_ok());
        let r: SystemRecord = serde_json::from_str(r#"{"prompt": "a cat"}"#).unwrap();
        assert!(r.validate().unwrap_err().contains("nothing to learn"));
    }

    #[test]
    fn the_best_candidate_is_the_highest_finite_score() {
        let r: PreferenceRecord = serde_json::from_str(
            r#"{"prompt":"cat","candidates":[{"text":"a","score":0.1},{"text":"b","score":0.9},{"text":"c","score":0.5}]}"#,
        )
        .unwrap();
        assert_eq!(r.best(), Some(1));
    }

    #[test]
    fn pivots_of_the_wrong_width_are_refused() {
        let v = PivotValues::Rows(vec![vec![0.0; 3], vec![0.0; 4]]);
        assert!(v.to_matrix(2, 4).unwrap_err().contains("width 3"));
        let v = PivotValues::Flat(vec![0.5; 4]);
        assert_eq!(v.to_matrix(2, 4).unwrap().len(), 8);
        assert!(PivotValues::Flat(vec![0.0; 5]).to_matrix(2, 4).is_err());
    }

    #[test]
    fn bad_lines_are_skipped_and_counted() {
        let (_d, p) = corpus(&[
            r#"{"prompt": "a cat, oil painting"}"#,
            "not json",
            r#"{"prompt": ""}"#,
            r#"{"prompt": "a dog, watercolor"}"#,
        ]);
        let mut s = Stream::<SystemRecord>::new(vec![p], 1, 8, 0.5).unwrap();
        let batch = s.next_batch(2).unwrap();
        let mut lines: Vec<usize> = batch.iter().map(|r| r.line).collect();
        lines.sort();
        assert_eq!(lines, vec![1, 4]);
        assert_eq!(s.bad, BadLines { seen: 4, bad: 2 });
    }

    #[test]
    fn too_many_bad_lines_stop_the_run_naming_the_file() {
        let lines: Vec<String> = (0..20).map(|i| format!("garbage {i}")).collect();
        let refs: Vec<&str> = lines.iter().map(String::as_str).collect();
        let (_d, p) = corpus(&refs);
        let mut s = Stream::<SystemRecord>::new(vec![p.clone()], 1, 8, 0.1).unwrap();
        let err = s.next_batch(1).unwrap_err().to_string();
        assert!(err.contains("c.jsonl") && err.contains("line 4"), "{err}");
    }

    #[test]
    fn epochs_cycle_reshuffled_and_seeking_replays_the_same_order() {
        let lines: Vec<String> = (0..10)
            .map(|i| format!(r#"{{"prompt": "p{i}, detail"}}"#))
            .collect();
        let refs: Vec<&str> = lines.iter().map(String::as_str).collect();
        let (_d, p) = corpus(&refs);
        let names = |b: Vec<Located<SystemRecord>>| -> Vec<String> {
            b.into_iter().map(|r| r.record.prompt).collect()
        };
        let mut a = Stream::<SystemRecord>::new(vec![p.clone()], 7, 4, 0.1).unwrap();
        let first = names(a.next_batch(10).unwrap());
        let mut sorted = first.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), 10, "an epoch yields every record once");
        let second = names(a.next_batch(10).unwrap());
        assert_ne!(first, second, "the next epoch is reshuffled");
        let tail = names(a.next_batch(3).unwrap());

        let mut b = Stream::<SystemRecord>::new(vec![p], 7, 4, 0.1).unwrap();
        b.seek(2, 0).unwrap();
        assert_eq!(names(b.next_batch(3).unwrap()), tail);
    }
}
