//! Counters for `/prip/metrics`, in the Prometheus text format.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// Upper bounds of the refinement latency buckets, seconds.
const BUCKETS: [f64; 12] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// What the proxy did with a request: the value of its X-PRIP header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Outcome {
    /// At least one prompt got details.
    Refined,
    /// Prompts were refined, but none got details (the reason says why: the token
    /// budget was full, the model stopped, hygiene filtered everything).
    Unchanged,
    /// Nothing to refine, already refined by a PRIP layer, or the client opted out.
    Skipped,
    /// Refinement failed; the original went upstream.
    Error,
}

impl Outcome {
    /// Every outcome, in the order the metrics list them.
    pub const ALL: [Outcome; 4] = [
        Outcome::Refined,
        Outcome::Unchanged,
        Outcome::Skipped,
        Outcome::Error,
    ];

    /// The header value.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Refined => "refined",
            Outcome::Unchanged => "unchanged",
            Outcome::Skipped => "skipped",
            Outcome::Error => "error",
        }
    }
}

/// An outcome and, unless it is `refined`, why: the X-PRIP and X-PRIP-Reason headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Verdict {
    /// What happened.
    pub outcome: Outcome,
    /// Why, as a metric label (`model_stopped`, `already_refined`, `refine_timeout`, ...).
    pub reason: Option<&'static str>,
}

impl Verdict {
    /// Prompts got details.
    pub const REFINED: Verdict = Verdict {
        outcome: Outcome::Refined,
        reason: None,
    };

    /// `outcome` because of `reason`.
    pub fn new(outcome: Outcome, reason: &'static str) -> Self {
        Self {
            outcome,
            reason: Some(reason),
        }
    }
}

/// All counters. Shared by every connection.
#[derive(Debug, Default)]
pub struct Metrics {
    requests: Mutex<BTreeMap<Outcome, u64>>,
    reasons: Mutex<BTreeMap<(Outcome, &'static str), u64>>,
    refined_prompts: AtomicU64,
    failures: Mutex<BTreeMap<&'static str, u64>>,
    latency_buckets: [AtomicU64; BUCKETS.len()],
    latency_count: AtomicU64,
    latency_sum_us: AtomicU64,
}

impl Metrics {
    /// Counts an answered request, and its reason when it has one.
    pub fn request(&self, verdict: Verdict) {
        *self
            .requests
            .lock()
            .expect("metrics")
            .entry(verdict.outcome)
            .or_default() += 1;
        if let Some(reason) = verdict.reason {
            *self
                .reasons
                .lock()
                .expect("metrics")
                .entry((verdict.outcome, reason))
                .or_default() += 1;
        }
    }

    /// Requests answered with `outcome` for `reason` so far.
    pub fn reasons(&self, outcome: Outcome, reason: &str) -> u64 {
        self.reasons
            .lock()
            .expect("metrics")
            .iter()
            .find(|((o, r), _)| *o == outcome && *r == reason)
            .map_or(0, |(_, n)| *n)
    }

    /// Counts refined prompts and the time the refinement step took.
    pub fn refined(&self, prompts: usize, took: Duration) {
        self.refined_prompts
            .fetch_add(prompts as u64, Ordering::Relaxed);
        let secs = took.as_secs_f64();
        for (bound, count) in BUCKETS.iter().zip(&self.latency_buckets) {
            if secs <= *bound {
                count.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.latency_count.fetch_add(1, Ordering::Relaxed);
        self.latency_sum_us
            .fetch_add(took.as_micros() as u64, Ordering::Relaxed);
    }

    /// Counts a failure by kind ("adapter_trap", "refine_timeout", "upstream_connect", ...).
    pub fn failure(&self, kind: &'static str) {
        *self
            .failures
            .lock()
            .expect("metrics")
            .entry(kind)
            .or_default() += 1;
    }

    /// Requests answered with `outcome` so far.
    pub fn requests(&self, outcome: Outcome) -> u64 {
        self.requests
            .lock()
            .expect("metrics")
            .get(&outcome)
            .copied()
            .unwrap_or(0)
    }

    /// Failures of `kind` so far.
    pub fn failures(&self, kind: &str) -> u64 {
        self.failures
            .lock()
            .expect("metrics")
            .get(kind)
            .copied()
            .unwrap_or(0)
    }

    /// The Prometheus exposition text.
    pub fn render(&self) -> String {
        let mut out = String::new();
        out.push_str("# HELP prip_requests_total Requests answered, by X-PRIP outcome.\n");
        out.push_str("# TYPE prip_requests_total counter\n");
        let requests = self.requests.lock().expect("metrics").clone();
        for o in Outcome::ALL {
            let n = requests.get(&o).copied().unwrap_or(0);
            let _ = writeln!(out, "prip_requests_total{{outcome=\"{}\"}} {n}", o.as_str());
        }
        out.push_str(
            "# HELP prip_request_reasons_total Requests not refined, by outcome and reason.\n",
        );
        out.push_str("# TYPE prip_request_reasons_total counter\n");
        for ((o, reason), n) in self.reasons.lock().expect("metrics").iter() {
            let _ = writeln!(
                out,
                "prip_request_reasons_total{{outcome=\"{}\",reason=\"{reason}\"}} {n}",
                o.as_str()
            );
        }
        out.push_str("# HELP prip_refinements_total Prompts refined.\n");
        out.push_str("# TYPE prip_refinements_total counter\n");
        let _ = writeln!(
            out,
            "prip_refinements_total {}",
            self.refined_prompts.load(Ordering::Relaxed)
        );
        out.push_str("# HELP prip_refine_duration_seconds Time to refine one request's prompts.\n");
        out.push_str("# TYPE prip_refine_duration_seconds histogram\n");
        for (bound, count) in BUCKETS.iter().zip(&self.latency_buckets) {
            let _ = writeln!(
                out,
                "prip_refine_duration_seconds_bucket{{le=\"{bound}\"}} {}",
                count.load(Ordering::Relaxed)
            );
        }
        let count = self.latency_count.load(Ordering::Relaxed);
        let _ = writeln!(
            out,
            "prip_refine_duration_seconds_bucket{{le=\"+Inf\"}} {count}"
        );
        let _ = writeln!(
            out,
            "prip_refine_duration_seconds_sum {}",
            self.latency_sum_us.load(Ordering::Relaxed) as f64 / 1e6
        );
        let _ = writeln!(out, "prip_refine_duration_seconds_count {count}");
        out.push_str("# HELP prip_failures_total Failures by kind; each forwarded the original.\n");
        out.push_str("# TYPE prip_failures_total counter\n");
        for (kind, n) in self.failures.lock().expect("metrics").iter() {
            let _ = writeln!(out, "prip_failures_total{{kind=\"{kind}\"}} {n}");
        }
        out
    }
}
