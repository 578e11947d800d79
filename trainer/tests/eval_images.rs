//! `prip eval images` end to end against the fake A1111 server and the fake scoring
//! service: an HPSv2-layout prompt set, the prompt as typed, a tiny PRIP checkpoint
//! and a baseline command; the table has Table 1's layout and the fake scorer's own
//! numbers; a rerun asks no server anything and prints the same report; a broken
//! baseline is one line naming it.

mod common;

use std::path::PathBuf;

use common::{fake_png, fake_score, Faults};
use prip_core::device::DeviceSpec;
use prip_core::store::ModelStore;
use prip_core::{Refiner, RefinerOptions};
use prip_test_support::models;
use prip_trainer::eval_images::{
    evaluate_images, load_prompts, prompt_seed, refine_with_prip, ImagesEvalOptions, System,
    HPSV2_CATEGORIES,
};
use prip_trainer::preference::ImagesConfig;

const PROMPTS: [[&str; 3]; 4] = [
    [
        "a girl with cat ears",
        "a boy with a sword",
        "a magical girl",
    ],
    [
        "a city on a cliff",
        "a dragon over mountains",
        "a spaceship hangar",
    ],
    [
        "a vase of flowers",
        "a portrait of an old man",
        "a stormy sea",
    ],
    ["a red fox in snow", "a cup of coffee", "a street at night"],
];

struct Setup {
    dir: tempfile::TempDir,
    server: common::Fake,
    scoring: common::Fake,
    store: ModelStore,
}

impl Setup {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let bench = dir.path().join("benchmark");
        std::fs::create_dir_all(&bench).unwrap();
        for (name, prompts) in HPSV2_CATEGORIES.iter().zip(PROMPTS) {
            std::fs::write(
                bench.join(format!("{name}.json")),
                serde_json::to_string(&prompts).unwrap(),
            )
            .unwrap();
        }
        models::write_tiny_checkpoint(
            &dir.path().join("tiny"),
            "\n[generation]\nmax_new_tokens = 4\ntemperature = 0.8\n",
        )
        .unwrap();
        let store = ModelStore::new(dir.path().join("home"));
        Self {
            dir,
            server: common::a1111(Faults::default()),
            scoring: common::scoring(Faults::default()),
            store,
        }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn options(&self, systems: Vec<System>) -> ImagesEvalOptions {
        let images = ImagesConfig::from_toml(
            &format!(
                "[images]\nbackend = \"a1111\"\nservers = [{:?}]\nimages_per_prompt = 2\nseed = 7\ntimeout_s = 10\nbackoff_s = 0.01\ncooldown_s = 0.05\n[images.a1111]\nwidth = 32\nheight = 32\n[[images.scorers]]\nkind = \"http\"\nurl = {:?}\n",
                self.server.url, self.scoring.url
            ),
            "test",
        )
        .unwrap();
        ImagesEvalOptions {
            prompts: self.path("benchmark"),
            images,
            out: self.path("out"),
            systems,
            reference: None,
            limit: None,
            seed: 3,
            batch: 5,
            resamples: 200,
            max_failed_share: 0.2,
            device: DeviceSpec::Cpu,
            progress: false,
        }
    }

    fn systems(&self) -> Vec<System> {
        // The baseline appends a phrase and leaves a mark for every run.
        let marks = self.path("baseline-runs");
        vec![
            System::model(&format!("{}", self.path("tiny").display())).unwrap(),
            System::baseline(&format!(
                "detailed=echo run >> {}; sed 's/$/, highly detailed/'",
                marks.display()
            ))
            .unwrap(),
        ]
    }
}

/// The fake scorer's mean over the seeds for `text` judged against `prompt`, as the
/// client reads scores (f32).
fn mean_score(prompt: &str, text: &str) -> f64 {
    [7u64, 8]
        .iter()
        .map(|s| fake_score(prompt, &fake_png(text, *s)) as f32 as f64)
        .sum::<f64>()
        / 2.0
}

fn row<'a>(md: &'a str, system: &str) -> Vec<&'a str> {
    md.lines()
        .find(|l| l.starts_with(&format!("| {system} | ")))
        .unwrap_or_else(|| panic!("no row {system}: {md}"))
        .trim_matches('|')
        .split('|')
        .map(str::trim)
        .collect()
}

#[test]
fn the_hpsv2_layout_runs_end_to_end_and_resumes_without_asking_any_server() {
    let s = Setup::new();
    let opts = s.options(s.systems());
    let report = evaluate_images(&opts, &s.store).unwrap();
    let out = s.path("out");
    let md = std::fs::read_to_string(out.join("report.md")).unwrap();

    // Table 1's layout: systems as rows, the four categories and the average as columns.
    assert!(
        md.contains("## fake\n\n| system | anime | concept-art | paintings | photo | average |\n"),
        "{md}"
    );
    assert_eq!(report.categories, HPSV2_CATEGORIES);
    let systems: Vec<&str> = report.tables[0]
        .rows
        .iter()
        .map(|r| r.system.as_str())
        .collect();
    assert_eq!(systems, ["none", "PRIP", "detailed"]);
    assert_eq!(report.reference, "PRIP");

    // The numbers are the fake scorer's: the prompt as typed, and the baseline's text
    // judged against the user's prompt.
    let expect = |f: &dyn Fn(&str) -> String| -> Vec<f64> {
        PROMPTS
            .iter()
            .map(|cat| cat.iter().map(|p| mean_score(p, &f(p))).sum::<f64>() / 3.0)
            .collect()
    };
    for (system, want) in [
        ("none", expect(&|p: &str| p.to_string())),
        (
            "detailed",
            expect(&|p: &str| format!("{p}, highly detailed")),
        ),
    ] {
        let r = report.tables[0]
            .rows
            .iter()
            .find(|r| r.system == system)
            .unwrap();
        for (got, want) in r.categories.iter().zip(&want) {
            assert!(
                (got.unwrap() - want).abs() < 1e-5,
                "{system}: {got:?} vs {want}"
            );
        }
        let avg = want.iter().sum::<f64>() / 4.0;
        assert!((r.average.unwrap() - avg).abs() < 1e-5);
        let cells = row(&md, system);
        assert_eq!(cells.len(), 6, "{cells:?}");
        assert_eq!(cells[5], format!("{avg:.3}"));
    }

    // PRIP's prompts come from the tiny checkpoint: they start with the user's words.
    let refined = std::fs::read_dir(out.join("refined"))
        .unwrap()
        .map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap())
        .find(|t| t.contains("\"model "))
        .expect("PRIP's refinement cache");
    let lines: Vec<serde_json::Value> = refined
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 12);
    for l in &lines {
        let (p, r) = (
            l["prompt"].as_str().unwrap(),
            l["refined"].as_str().unwrap(),
        );
        assert!(r.starts_with(p), "{r:?} does not start with {p:?}");
    }

    // Comparisons: none and the baseline against PRIP, over all 12 prompts.
    assert_eq!(report.comparisons.len(), 2);
    for c in &report.comparisons {
        assert_eq!((c.scorer.as_str(), c.paired), ("fake", 12));
        let t = c.t_test.unwrap();
        assert_eq!(t.dof, 11.0);
        assert!((0.0..=1.0).contains(&t.p));
        let d = c.difference.unwrap();
        assert!(d.low <= d.estimate && d.estimate <= d.high);
    }
    assert!(report
        .systems
        .iter()
        .all(|s| s.images_kept == 24 && s.dropped == 0));
    assert!(md.contains("## Against PRIP"));
    let svg = std::fs::read_to_string(out.join("scores.svg")).unwrap();
    assert!(svg.starts_with("<svg") && svg.contains("concept-art") && svg.contains("detailed"));
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap();
    assert_eq!(json["tables"][0]["rows"].as_array().unwrap().len(), 3);

    // Every prompt was rendered once per distinct text (two seeds in one request), and
    // scored once per system.
    let renders = s.server.count();
    let scores = s.scoring.bodies("/score").len();
    assert!(renders > 0 && renders <= 36, "{renders}");
    assert_eq!(scores, 36);

    // A second run: nothing rendered, scored or refined again; the same report.
    let again = evaluate_images(&opts, &s.store).unwrap();
    assert_eq!(s.server.count(), renders, "no new render request");
    assert_eq!(
        s.scoring.bodies("/score").len(),
        scores,
        "no new score request"
    );
    assert_eq!(again, report);
    assert_eq!(std::fs::read_to_string(out.join("report.md")).unwrap(), md);
    let runs = std::fs::read_to_string(s.path("baseline-runs")).unwrap();
    assert_eq!(
        runs.lines().count(),
        4,
        "the baseline ran once per category, once"
    );

    // A --limit run over the same output reuses everything too.
    let mut limited = opts.clone();
    limited.limit = Some(1);
    let small = evaluate_images(&limited, &s.store).unwrap();
    assert_eq!(small.prompts, [1, 1, 1, 1]);
    assert_eq!(s.server.count(), renders);
}

#[test]
fn a_baseline_with_a_wrong_line_count_or_a_failure_is_one_line() {
    let s = Setup::new();
    let cases = [
        (
            "short=head -n 1",
            "baseline short: `head -n 1` printed 1 lines for 3 prompts (one refined prompt per line expected)",
        ),
        (
            "broken=echo 'no model here' >&2; exit 3",
            "baseline broken: `echo 'no model here' >&2; exit 3` exited with exit status: 3: no model here",
        ),
    ];
    for (spec, want) in cases {
        let opts = s.options(vec![System::baseline(spec).unwrap()]);
        let e = evaluate_images(&opts, &s.store).unwrap_err().to_string();
        assert_eq!(e, want);
    }
    assert_eq!(
        s.server.count(),
        0,
        "a broken baseline stops the run before rendering"
    );

    // Two systems with one label are refused.
    let mut opts = s.options(vec![
        System::baseline("x=cat").unwrap(),
        System::baseline("x=cat").unwrap(),
    ]);
    let e = evaluate_images(&opts, &s.store).unwrap_err().to_string();
    assert!(e.starts_with("two systems are labelled \"x\""), "{e}");
    opts.systems.pop();
    opts.reference = Some("PRIP".into());
    let e = evaluate_images(&opts, &s.store).unwrap_err().to_string();
    assert_eq!(e, "--reference \"PRIP\": no such system (have: none, x)");
}

#[test]
fn prompt_sets_read_every_layout() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p
    };
    let txt = write("heldout.txt", "a cat\n\n  a dog  \na fox\n");
    let c = load_prompts(&txt, Some(2)).unwrap();
    assert_eq!((c.len(), c[0].name.as_str()), (1, "heldout"));
    assert_eq!(c[0].prompts, ["a cat", "a dog"]);
    let jsonl = write(
        "set.jsonl",
        "{\"prompt\": \"a cat\", \"id\": 1}\n{\"prompt\": \"a dog\"}\n",
    );
    assert_eq!(
        load_prompts(&jsonl, None).unwrap()[0].prompts,
        ["a cat", "a dog"]
    );
    let bad = write(
        "bad.jsonl",
        "{\"prompt\": \"a cat\"}\n{\"text\": \"a dog\"}\n",
    );
    let e = load_prompts(&bad, None).unwrap_err().to_string();
    assert_eq!(
        e,
        format!("{}: line 2: no \"prompt\" string", bad.display())
    );
    let e = load_prompts(dir.path(), None).unwrap_err().to_string();
    assert!(
        e.ends_with("not a prompt directory in the HPSv2 benchmark layout (missing anime.json, concept-art.json, paintings.json, photo.json)"),
        "{e}"
    );
    let empty = write("empty.txt", "\n\n");
    assert!(load_prompts(&empty, None)
        .unwrap_err()
        .to_string()
        .ends_with("category \"empty\" has no prompts"));
    let csv = write("p.csv", "a");
    assert!(load_prompts(&csv, None)
        .unwrap_err()
        .to_string()
        .contains("unknown prompt file type .csv"));
}

#[test]
fn prip_refines_each_prompt_under_its_own_seed() {
    let dir = tempfile::tempdir().unwrap();
    let tiny = dir.path().join("tiny");
    models::write_tiny_checkpoint(
        &tiny,
        "\n[generation]\nmax_new_tokens = 4\ntemperature = 0.8\n",
    )
    .unwrap();
    let store = ModelStore::new(dir.path().join("home"));
    let mut refiner = Refiner::open_with_store(
        &RefinerOptions {
            model: tiny.display().to_string(),
            device: DeviceSpec::Cpu,
            fetch: false,
        },
        &store,
    )
    .unwrap();
    let prompts: Vec<String> = ["a cat", "a dog", "a fox"].map(String::from).to_vec();
    let a = refine_with_prip(&mut refiner, &prompts, 3).unwrap();
    // The same prompt refines the same way alone or in another batch.
    let b = refine_with_prip(&mut refiner, &prompts[2..], 3).unwrap();
    assert_eq!(a[2], b[0]);
    for (p, r) in prompts.iter().zip(&a) {
        assert!(r.starts_with(p.as_str()), "{r:?}");
    }
    assert_ne!(prompt_seed(3, "a cat"), prompt_seed(3, "a dog"));
    assert_eq!(prompt_seed(3, "a cat"), prompt_seed(3, "a cat"));
}

#[test]
fn a_failing_server_loses_only_its_samples_and_a_rerun_fills_them_in() {
    let mut s = Setup::new();
    // The first 6 render requests succeed, then every answer is a 500.
    s.server = common::a1111(Faults {
        fail_after: Some(6),
        ..Faults::default()
    });
    let mut opts = s.options(vec![]);
    opts.images.attempts = 1;
    opts.max_failed_share = 0.9;
    let first = evaluate_images(&opts, &s.store).unwrap();
    let none = &first.systems[0];
    assert_eq!(
        none.images_kept, 12,
        "6 requests of 2 images each were kept"
    );
    assert_eq!(none.dropped, 12);
    assert_eq!(none.causes.get("render:server_error"), Some(&12));
    let md = std::fs::read_to_string(s.path("out/report.md")).unwrap();
    assert!(
        md.contains("| none | 12 | 12 | render:server_error=12 |"),
        "{md}"
    );

    // Past the allowed share the run stops with one line.
    opts.max_failed_share = 0.2;
    let e = evaluate_images(&opts, &s.store).unwrap_err().to_string();
    assert!(e.starts_with("render: "), "{e}");
    assert!(e.contains("causes: server_error="), "{e}");
    assert!(!e.contains('\n'));

    // Against a healthy server the rerun renders only what was lost.
    s.server = common::a1111(Faults::default());
    let opts = s.options(vec![]);
    let second = evaluate_images(&opts, &s.store).unwrap();
    assert_eq!(s.server.count(), 6, "only the 6 lost prompts are rendered");
    assert_eq!(
        (second.systems[0].images_kept, second.systems[0].dropped),
        (24, 0)
    );
}
