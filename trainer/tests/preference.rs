//! Image preference of prompts against the fake A1111 server and the fake scoring
//! service: the weighted sum is the fake scorers' own scores, a failing server loses
//! no finished sample, the preflight refuses a batch the servers cannot render in
//! time, and a bad `[images]` table is one line.

mod common;

use std::time::Duration;

use candle_core::Device;
use common::{fake_png, fake_score, Faults};
use prip_trainer::preference::{ImagePreference, ImagesConfig, Item, PreferenceError, Stage};
use prip_trainer::tally::FailureTally;

/// An `[images]` table for `servers`, scored by every service of `scorers` as
/// `(label, weight)`.
fn config(
    servers: &[&common::Fake],
    scorers: &[(&common::Fake, &str, f64)],
    extra: &str,
) -> ImagesConfig {
    let servers: Vec<String> = servers.iter().map(|s| format!("{:?}", s.url)).collect();
    let mut text = format!(
        "[images]\nbackend = \"a1111\"\nservers = [{}]\nimages_per_prompt = 4\nseed = 100\ntimeout_s = 10\nbackoff_s = 0.01\ncooldown_s = 0.2\n{extra}\n[images.a1111]\nsteps = 2\nwidth = 32\nheight = 32\n",
        servers.join(", ")
    );
    for (fake, label, weight) in scorers {
        text.push_str(&format!(
            "\n[[images.scorers]]\nkind = \"http\"\nurl = {:?}\nname = \"fake\"\nlabel = {label:?}\nweight = {weight}\n",
            fake.url
        ));
    }
    ImagesConfig::from_toml(&text, "test.toml").unwrap()
}

fn items() -> Vec<Item> {
    [
        ("a little cat", "a little cat, golden hour, highly detailed"),
        ("a little cat", "a little cat"),
        ("a red fox", "a red fox, by Beatrix Potter"),
        ("a lighthouse", "a lighthouse at dusk, oil painting"),
    ]
    .iter()
    .map(|(prompt, text)| Item {
        text: text.to_string(),
        prompt: prompt.to_string(),
    })
    .collect()
}

/// The fake scorer's score of `item`'s image under `seed`, as the client reads it (f32).
fn expected(item: &Item, seed: u64) -> f64 {
    fake_score(&item.prompt, &fake_png(&item.text, seed)) as f32 as f64
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-5
}

#[test]
fn the_weighted_sum_is_the_scorers_own_scores() {
    let server = common::a1111(Faults::default());
    let (s1, s2) = (
        common::scoring(Faults::default()),
        common::scoring(Faults::default()),
    );
    let cfg = config(&[&server], &[(&s1, "ir", 1.0), (&s2, "hps", 0.5)], "");
    let pref = ImagePreference::open(&cfg, &Device::Cpu).unwrap();
    assert_eq!(pref.labels(), ["ir", "hps"]);
    assert_eq!(pref.seeds(), [100, 101, 102, 103]);
    let items = items();
    let out = pref.judge(&items);
    assert_eq!(out.len(), items.len());
    for (item, j) in items.iter().zip(&out) {
        assert_eq!((j.kept, j.dropped.len()), (4, 0), "{:?}", j.dropped);
        let seeds: Vec<u64> = j.images.iter().map(|i| i.seed).collect();
        assert_eq!(seeds, [100, 101, 102, 103]);
        for img in &j.images {
            let want = expected(item, img.seed);
            for s in &img.scores {
                assert!(close(s.unwrap() as f64, want), "{:?} {want}", img.scores);
            }
        }
        let mean = (100..104).map(|s| expected(item, s)).sum::<f64>() / 4.0;
        assert!(close(j.means[0].unwrap(), mean) && close(j.means[1].unwrap(), mean));
        assert!(
            close(j.total.unwrap(), 1.5 * mean),
            "{:?} vs {}",
            j.total,
            1.5 * mean
        );
    }
    // Items are scored against the user's prompt, not the rendered text.
    assert!(s1
        .bodies("/score")
        .iter()
        .all(|b| b["prompt"] != items[0].text));
    // One render request per item (4 consecutive seeds in one A1111 batch) and one score
    // request per item per scorer.
    assert_eq!(server.count(), 4);
    assert_eq!(
        (s1.bodies("/score").len(), s2.bodies("/score").len()),
        (4, 4)
    );

    // Scores already known are neither rendered nor scored again.
    let again = pref.judge_with(&items, |item, seed, _| Some(expected(item, seed) as f32));
    assert_eq!(server.count(), 4);
    assert_eq!(s1.bodies("/score").len(), 4);
    assert_eq!(again, out);
}

#[test]
fn a_server_failing_mid_batch_loses_no_finished_sample() {
    let scoring = common::scoring(Faults::default());
    let cache = tempfile::tempdir().unwrap();
    let cache_line = format!("cache = {:?}\nattempts = 2", cache.path());
    let items = items();

    // Alone: the two requests it answers are kept whole, the rest dropped with a cause.
    let failing = common::a1111(Faults {
        fail_after: Some(2),
        ..Faults::default()
    });
    let cfg = config(&[&failing], &[(&scoring, "fake", 1.0)], &cache_line);
    let pref = ImagePreference::open(&cfg, &Device::Cpu).unwrap();
    let out = pref.judge(&items);
    let whole: Vec<usize> = (0..4).filter(|&i| out[i].kept == 4).collect();
    assert_eq!(whole.len(), 2, "{out:?}");
    for (item, j) in items.iter().zip(&out) {
        if j.kept == 4 {
            let mean = (100..104).map(|s| expected(item, s)).sum::<f64>() / 4.0;
            assert!(close(j.total.unwrap(), mean));
        } else {
            assert_eq!((j.kept, j.total, j.images.len()), (0, None, 0));
            assert_eq!(j.dropped.len(), 4);
            assert!(j
                .dropped
                .iter()
                .all(|d| d.stage == Stage::Render && d.cause == "server_error"));
        }
    }
    let (mut render, mut score) = (
        FailureTally::new("render", 0.25, 4),
        FailureTally::new("score", 0.25, 4),
    );
    for j in &out {
        j.tally(&mut render, &mut score);
    }
    assert_eq!(render.counts(), (8, 16));
    assert_eq!(render.causes().get("server_error"), Some(&8));
    assert_eq!(score.counts(), (0, 8));
    assert!(render
        .check()
        .unwrap_err()
        .to_string()
        .contains("server_error=8"));

    // A healthy server then renders only what was lost: the finished images were kept.
    let healthy = common::a1111(Faults::default());
    let cfg = config(&[&healthy], &[(&scoring, "fake", 1.0)], &cache_line);
    let out = ImagePreference::open(&cfg, &Device::Cpu)
        .unwrap()
        .judge(&items);
    assert_eq!(healthy.count(), 2);
    assert!(out.iter().all(|j| j.kept == 4 && j.dropped.is_empty()));

    // Beside a healthy server, a failing one costs nothing at all.
    let failing = common::a1111(Faults {
        fail_after: Some(1),
        ..Faults::default()
    });
    let healthy = common::a1111(Faults::default());
    let cfg = config(
        &[&failing, &healthy],
        &[(&scoring, "fake", 1.0)],
        "attempts = 3",
    );
    let out = ImagePreference::open(&cfg, &Device::Cpu)
        .unwrap()
        .judge(&items);
    assert!(
        out.iter().all(|j| j.kept == 4 && j.dropped.is_empty()),
        "{out:?}"
    );
    assert!(failing.count() >= 2, "the failing server was tried");
}

#[test]
fn a_scorer_that_drops_costs_only_its_scores() {
    let server = common::a1111(Faults::default());
    let scoring = common::scoring(Faults::default());
    let cfg = config(&[&server], &[(&scoring, "fake", 1.0)], "");
    let pref = ImagePreference::open(&cfg, &Device::Cpu).unwrap();
    let items = vec![
        Item {
            text: "a cat, detailed".into(),
            prompt: "nan".into(),
        },
        Item {
            text: "a dog".into(),
            prompt: "fail".into(),
        },
    ];
    let out = pref.judge(&items);
    // `nan`: the first image's score is null, the other three count.
    assert_eq!((out[0].kept, out[0].images.len()), (3, 4));
    assert_eq!(out[0].dropped.len(), 1);
    assert_eq!(out[0].dropped[0].cause, "not_finite");
    let mean = (101..104).map(|s| expected(&items[0], s)).sum::<f64>() / 3.0;
    assert!(close(out[0].means[0].unwrap(), mean));
    // `fail`: the service answers 500; every image rendered, none scored.
    assert_eq!((out[1].kept, out[1].total), (0, None));
    assert!(out[1]
        .dropped
        .iter()
        .all(|d| d.stage == Stage::Score("fake".into()) && d.cause == "server_error"));
}

#[test]
fn the_preflight_refuses_a_batch_the_servers_cannot_render_in_time() {
    let (a, b) = (
        common::a1111(Faults::default()),
        common::a1111(Faults::default()),
    );
    let scoring = common::scoring(Faults::default());
    let cfg = config(&[&a, &b], &[(&scoring, "fake", 1.0)], "");
    let pref = ImagePreference::open(&cfg, &Device::Cpu).unwrap();
    let per_image = pref
        .check_capacity(8, Duration::from_secs(60))
        .expect("8 prompts x 4 images in a minute");
    assert!(per_image > 0.0 && per_image < 5.0, "{per_image}");
    assert_eq!((a.count(), b.count()), (1, 1), "one probe per server");
    let e = pref
        .check_capacity(100_000_000, Duration::from_secs(1))
        .unwrap_err();
    assert!(matches!(e, PreferenceError::Capacity(_)));
    let e = e.to_string();
    assert!(
        e.starts_with("a batch of 100000000 prompts x 4 images needs about ")
            && e.contains("on 2 servers")
            && e.contains("the step timeout is 1 s: add servers"),
        "{e}"
    );
    assert!(!e.contains('\n'));

    // A hanging server fails the preflight at start, naming it.
    let hung = common::a1111(Faults {
        hang: true,
        ..Faults::default()
    });
    let mut cfg = config(&[&a, &hung], &[(&scoring, "fake", 1.0)], "");
    cfg.timeout_s = 0.5;
    let e = ImagePreference::open(&cfg, &Device::Cpu)
        .unwrap()
        .check_capacity(1, Duration::from_secs(60))
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with(&format!("preflight: {} rendered no probe image", hung.url)),
        "{e}"
    );
    assert!(!e.contains('\n'));
}

#[test]
fn a_bad_images_table_is_one_line() {
    let base = "[images]\nbackend = \"a1111\"\nservers = [\"http://127.0.0.1:9\"]\n";
    let http = "\n[[images.scorers]]\nkind = \"http\"\nurl = \"http://127.0.0.1:9\"\n";
    let cases = [
        (
            format!("{base}{http}colour = 1\n"),
            "unknown field `colour`",
        ),
        (
            "[images]\nbackend = \"dalle\"\nservers = []\n".to_string(),
            "unknown variant `dalle`",
        ),
        (
            format!("[images]\nbackend = \"a1111\"\nservers = []\n{http}"),
            "at least one server",
        ),
        (base.to_string(), "no [[images.scorers]]"),
        (
            format!("{base}\n[[images.scorers]]\nkind = \"http\"\n"),
            "`url` is required for kind \"http\"",
        ),
        (
            format!("{base}\n[[images.scorers]]\nkind = \"clip\"\npath = \"c\"\nmlp = \"m\"\n"),
            "`mlp` does not apply to kind \"clip\"",
        ),
        (
            format!("{base}{http}[images.comfyui]\nworkflow = \"w.json\"\n"),
            "[images.comfyui] is set but backend is \"a1111\"",
        ),
        (
            format!("{base}{http}name = \"x\"{http}name = \"x\"\n"),
            "two scorers are named \"x\"",
        ),
        (format!("{base}images_per_prompt = 0\n{http}"), "at least 1"),
        ("[images\nbackend = 1".to_string(), "test.toml: line 1:"),
        ("[train]\nsteps = 1\n".to_string(), "no [images] table"),
    ];
    for (text, want) in cases {
        let e = ImagesConfig::from_toml(&text, "test.toml")
            .unwrap_err()
            .to_string();
        assert!(e.contains(want), "{want:?} not in {e:?}");
        assert!(e.starts_with("test.toml:"), "{e}");
        assert!(!e.contains('\n'), "{e:?}");
    }
    // A line number points at the bad key.
    let e = ImagesConfig::from_toml(&format!("{base}{http}colour = 1\n"), "t")
        .unwrap_err()
        .to_string();
    assert!(e.starts_with("t: line 8:"), "{e}");

    // A scoring service that is not there fails at open, in one line naming it.
    let cfg = ImagesConfig::from_toml(&format!("{base}{http}"), "t").unwrap();
    let e = ImagePreference::open(&cfg, &Device::Cpu)
        .unwrap_err()
        .to_string();
    assert!(e.starts_with("scorer http http://127.0.0.1:9: "), "{e}");
    assert!(!e.contains('\n'));

    // Relative paths follow the config file.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ppo.toml");
    std::fs::write(&path, format!("{base}cache = \"images\"\n{http}")).unwrap();
    let cfg = ImagesConfig::load(&path).unwrap();
    assert_eq!(cfg.cache, Some(dir.path().join("images")));
}
