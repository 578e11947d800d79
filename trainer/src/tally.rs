//! Counting dropped samples: a render or score that failed for good drops its sample
//! (counted by cause and logged), and past a configured share of failures the run
//! stops with one line saying what failed most and the last message.

use std::collections::BTreeMap;

/// Too many samples failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{what}: {failed} of {seen} samples failed ({share:.0}%, more than the {max:.0}% allowed); causes: {causes}; last: {last}")]
pub struct TooManyFailures {
    /// What was counted (`render`, `score`).
    pub what: String,
    /// Failed samples.
    pub failed: usize,
    /// Samples counted.
    pub seen: usize,
    /// Failed share, percent.
    pub share: f64,
    /// The allowed share, percent.
    pub max: f64,
    /// `cause=count` pairs, most frequent first.
    pub causes: String,
    /// The last failure's message.
    pub last: String,
}

/// Successes and failures of one kind of work over a run.
#[derive(Debug, Clone)]
pub struct FailureTally {
    what: String,
    max_share: f64,
    min_samples: usize,
    seen: usize,
    failed: usize,
    causes: BTreeMap<String, usize>,
    last: String,
}

impl FailureTally {
    /// A tally that [`FailureTally::check`] fails once more than `max_share` (0..=1) of
    /// at least `min_samples` samples failed (a few early failures do not stop a run).
    pub fn new(what: &str, max_share: f64, min_samples: usize) -> Self {
        Self {
            what: what.to_string(),
            max_share: max_share.clamp(0.0, 1.0),
            min_samples,
            seen: 0,
            failed: 0,
            causes: BTreeMap::new(),
            last: String::new(),
        }
    }

    /// Counts `n` samples that succeeded.
    pub fn ok(&mut self, n: usize) {
        self.seen += n;
    }

    /// Counts one failed sample with its cause and message.
    pub fn fail(&mut self, cause: &str, message: &str) {
        self.seen += 1;
        self.failed += 1;
        *self.causes.entry(cause.to_string()).or_default() += 1;
        self.last = message.to_string();
    }

    /// Failed samples by cause.
    pub fn causes(&self) -> &BTreeMap<String, usize> {
        &self.causes
    }

    /// `(failed, seen)`.
    pub fn counts(&self) -> (usize, usize) {
        (self.failed, self.seen)
    }

    /// Whether the run may go on (not judged before `min_samples` samples).
    pub fn check(&self) -> Result<(), TooManyFailures> {
        self.check_over(self.min_samples)
    }

    /// Whether the finished run kept enough: the same rule over every sample seen, however
    /// few (a short run whose every sample failed is a failure, not an empty report).
    pub fn check_final(&self) -> Result<(), TooManyFailures> {
        self.check_over(1)
    }

    fn check_over(&self, min_samples: usize) -> Result<(), TooManyFailures> {
        if self.seen == 0 || self.seen < min_samples {
            return Ok(());
        }
        let share = self.failed as f64 / self.seen as f64;
        if share <= self.max_share {
            return Ok(());
        }
        let mut causes: Vec<(&String, &usize)> = self.causes.iter().collect();
        causes.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
        Err(TooManyFailures {
            what: self.what.clone(),
            failed: self.failed,
            seen: self.seen,
            share: share * 100.0,
            max: self.max_share * 100.0,
            causes: causes
                .iter()
                .map(|(c, n)| format!("{c}={n}"))
                .collect::<Vec<_>>()
                .join(", "),
            last: self.last.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_share_stops_the_run_with_one_line() {
        let mut t = FailureTally::new("render", 0.25, 4);
        t.fail("timeout", "http://a: no answer within 1.0 s");
        assert!(t.check().is_ok(), "fewer than min_samples");
        assert!(t.check_final().is_err(), "at the end every sample counts");
        t.ok(3);
        assert!(t.check().is_ok(), "1 of 4 is 25%");
        t.fail("timeout", "x");
        t.fail("undecodable", "http://b: image does not decode");
        let e = t.check().unwrap_err().to_string();
        assert_eq!(
            e,
            "render: 3 of 6 samples failed (50%, more than the 25% allowed); causes: timeout=2, undecodable=1; last: http://b: image does not decode"
        );
        assert!(!e.contains('\n'));
    }
}
