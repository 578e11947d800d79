//! The image backends against in-process fakes of A1111/Forge, ComfyUI and the
//! diffusers/OpenAI-style server (built from tests/fixtures): every image arrives with
//! its prompt, seed and server; failing, hanging and misbehaving servers cost only the
//! samples they concern; the cache renders an image once.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{fake_png, Faults};
use prip_trainer::image::ImageLimits;
use prip_trainer::render::a1111::{A1111Settings, A1111};
use prip_trainer::render::comfyui::ComfyUi;
use prip_trainer::render::openai::{OpenAiImages, OpenAiSettings};
use prip_trainer::render::{Backend, Cache, Pool, PoolConfig, RenderJob, Rendered};
use prip_trainer::tally::FailureTally;

fn config(servers: &[&common::Fake]) -> PoolConfig {
    PoolConfig {
        servers: servers.iter().map(|f| f.url.clone()).collect(),
        concurrency: 2,
        timeout: Duration::from_secs(10),
        attempts: 4,
        backoff: Duration::from_millis(5),
        eject_after: 2,
        cooldown: Duration::from_secs(60),
        limits: ImageLimits::default(),
    }
}

fn jobs() -> Vec<RenderJob> {
    vec![
        RenderJob {
            prompt: "a little cat running in the woods".into(),
            seeds: vec![1, 2, 3, 4],
        },
        RenderJob {
            prompt: "a little cat running in the woods, golden hour".into(),
            seeds: vec![1, 2, 3, 4],
        },
        RenderJob {
            prompt: "a red fox".into(),
            seeds: vec![10, 20],
        },
    ]
}

/// Every image is the fake's rendering of its own prompt and seed.
fn assert_faithful(out: &Rendered, jobs: &[RenderJob], servers: &[&common::Fake]) {
    let n: usize = jobs.iter().map(|j| j.seeds.len()).sum();
    assert_eq!(out.images.len() + out.dropped.len(), n);
    for img in &out.images {
        let want = image::load_from_memory(&fake_png(&img.prompt, img.seed))
            .unwrap()
            .to_rgb8();
        assert_eq!(img.picture.rgb(), &want, "{} / {}", img.prompt, img.seed);
        assert!(
            servers.iter().any(|s| s.url == img.server),
            "{}",
            img.server
        );
    }
}

fn a1111_backend() -> Arc<dyn Backend> {
    Arc::new(A1111::new(A1111Settings {
        steps: 2,
        width: 32,
        height: 32,
        max_batch: 4,
        ..A1111Settings::default()
    }))
}

#[test]
fn a1111_renders_every_seed_on_every_server() {
    let (a, b) = (
        common::a1111(Faults::default()),
        common::a1111(Faults::default()),
    );
    let pool = Pool::new(a1111_backend(), config(&[&a, &b]), None).unwrap();
    let out = pool.render(&jobs());
    assert!(out.dropped.is_empty(), "{:?}", out.dropped);
    assert_faithful(&out, &jobs(), &[&a, &b]);
    // Consecutive seeds go in one request: 1..=4 twice, 10 and 20 alone.
    assert_eq!(a.count() + b.count(), 4);
    assert!(
        a.count() > 0 && b.count() > 0,
        "work is spread: {} / {}",
        a.count(),
        b.count()
    );
    let bodies: Vec<_> = [a.bodies("/sdapi/v1/txt2img"), b.bodies("/sdapi/v1/txt2img")].concat();
    let fox = bodies.iter().find(|b| b["seed"] == 20).unwrap();
    assert_eq!(
        (fox["prompt"].as_str(), fox["batch_size"].as_u64()),
        (Some("a red fox"), Some(1))
    );
    assert_eq!(
        (fox["steps"].as_u64(), fox["width"].as_u64()),
        (Some(2), Some(32))
    );
}

#[test]
fn comfyui_fills_the_recorded_template_and_downloads_from_view() {
    let template = prip_test_support::fixture("comfyui/prompt_request_txt2img_api.json");
    let backend = ComfyUi::from_template(&template, Duration::from_millis(5)).unwrap();
    assert_eq!(
        backend.positive_inputs(),
        [("6".to_string(), "text".to_string())]
    );
    let (a, b) = (
        common::comfyui(Faults::default()),
        common::comfyui(Faults::default()),
    );
    let pool = Pool::new(Arc::new(backend), config(&[&a, &b]), None).unwrap();
    let out = pool.render(&jobs());
    assert!(out.dropped.is_empty(), "{:?}", out.dropped);
    assert_faithful(&out, &jobs(), &[&a, &b]);
    let posted: Vec<_> = [a.bodies("/prompt"), b.bodies("/prompt")].concat();
    assert_eq!(posted.len(), 10, "one queued prompt per seed");
    for body in &posted {
        let g = &body["prompt"];
        assert_eq!(
            g["7"]["inputs"]["text"], "blurry",
            "the negative is untouched"
        );
        assert_eq!(g["5"]["inputs"]["batch_size"], 1);
    }
    assert!(posted
        .iter()
        .any(|b| b["prompt"]["6"]["inputs"]["text"] == "a red fox"
            && b["prompt"]["3"]["inputs"]["seed"] == 20));
}

#[test]
fn comfyui_validation_errors_drop_without_retrying() {
    let mut template = prip_test_support::fixture("comfyui/prompt_request_txt2img_api.json");
    template["prompt"]["4"]["inputs"]["ckpt_name"] = "missing.safetensors".into();
    let backend = ComfyUi::from_template(&template, Duration::from_millis(5)).unwrap();
    let a = common::comfyui(Faults::default());
    let pool = Pool::new(Arc::new(backend), config(&[&a]), None).unwrap();
    let out = pool.render(&[RenderJob {
        prompt: "x".into(),
        seeds: vec![1],
    }]);
    assert_eq!(out.dropped.len(), 1);
    assert_eq!(out.dropped[0].cause, "refused");
    assert!(
        out.dropped[0]
            .message
            .contains("prompt_outputs_failed_validation"),
        "{}",
        out.dropped[0].message
    );
    assert_eq!(a.count(), 1, "a 400 is not retried");
}

#[test]
fn openai_style_servers_answer_b64_json_or_urls() {
    for urls in [false, true] {
        let a = common::openai(Faults::default(), urls);
        let backend = OpenAiImages::new(OpenAiSettings {
            model: "stable-diffusion-3".into(),
            size: Some("32x32".into()),
            ..OpenAiSettings::default()
        })
        .unwrap();
        let pool = Pool::new(Arc::new(backend), config(&[&a]), None).unwrap();
        let out = pool.render(&jobs());
        assert!(out.dropped.is_empty(), "urls={urls}: {:?}", out.dropped);
        assert_faithful(&out, &jobs(), &[&a]);
        let body = &a.bodies("/v1/images/generations")[0];
        assert_eq!(
            (body["n"].as_u64(), body["response_format"].as_str()),
            (Some(1), Some("b64_json"))
        );
    }
}

#[test]
fn a_server_failing_mid_batch_is_taken_out_and_its_work_redone_elsewhere() {
    let flaky = common::a1111(Faults {
        fail_after: Some(1),
        ..Faults::default()
    });
    let good = common::a1111(Faults::default());
    let seeds: Vec<u64> = (0..12).map(|i| i * 10).collect();
    let job = vec![RenderJob {
        prompt: "a lighthouse".into(),
        seeds,
    }];
    let pool = Pool::new(a1111_backend(), config(&[&flaky, &good]), None).unwrap();
    let out = pool.render(&job);
    assert!(out.dropped.is_empty(), "{:?}", out.dropped);
    assert_faithful(&out, &job, &[&flaky, &good]);
    assert_eq!(pool.out_of_rotation(), vec![flaky.url.clone()]);
    assert!(out.images.iter().filter(|i| i.server == flaky.url).count() <= 1);
    // Out of rotation: the next batch does not touch it.
    let before = flaky.count();
    let out = pool.render(&[RenderJob {
        prompt: "a boat".into(),
        seeds: vec![5, 7],
    }]);
    assert_eq!(out.images.len(), 2);
    assert_eq!(flaky.count(), before);
}

#[test]
fn a_hanging_server_times_out_and_the_others_render() {
    let hung = common::a1111(Faults {
        hang: true,
        ..Faults::default()
    });
    let good = common::a1111(Faults::default());
    let mut cfg = config(&[&hung, &good]);
    // Long enough for the good server on a loaded CI machine, short for the test.
    cfg.timeout = Duration::from_millis(1500);
    let pool = Pool::new(a1111_backend(), cfg, None).unwrap();
    let job = jobs();
    let started = std::time::Instant::now();
    let out = pool.render(&job);
    assert!(out.dropped.is_empty(), "{:?}", out.dropped);
    assert_faithful(&out, &job, &[&good]);
    assert!(hung.count() >= 1);
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "{:?}",
        started.elapsed()
    );
}

#[test]
fn every_server_down_drops_with_the_cause_and_stops_the_run() {
    let hung = common::openai(
        Faults {
            hang: true,
            ..Faults::default()
        },
        false,
    );
    let backend = OpenAiImages::new(OpenAiSettings {
        model: "m".into(),
        ..OpenAiSettings::default()
    })
    .unwrap();
    let mut cfg = config(&[&hung]);
    cfg.timeout = Duration::from_millis(100);
    cfg.attempts = 2;
    cfg.eject_after = 10;
    let pool = Pool::new(Arc::new(backend), cfg, None).unwrap();
    let out = pool.render(&[RenderJob {
        prompt: "a".into(),
        seeds: vec![1, 2],
    }]);
    assert_eq!(out.images.len(), 0);
    assert!(
        out.dropped.iter().all(|d| d.cause == "timeout"),
        "{:?}",
        out.dropped
    );
    assert_eq!(hung.count(), 4, "2 seeds x 2 attempts");
    let mut tally = FailureTally::new("render", 0.2, 1);
    for d in &out.dropped {
        tally.fail(d.cause, &d.message);
    }
    let e = tally.check().unwrap_err().to_string();
    assert!(
        e.starts_with(
            "render: 2 of 2 samples failed (100%, more than the 20% allowed); causes: timeout=2"
        ),
        "{e}"
    );
}

#[test]
fn short_answers_and_broken_images_drop_only_their_samples() {
    let short = common::a1111(Faults {
        short: true,
        ..Faults::default()
    });
    let pool = Pool::new(a1111_backend(), config(&[&short]), None).unwrap();
    let out = pool.render(&[RenderJob {
        prompt: "p".into(),
        seeds: vec![1, 2, 3],
    }]);
    assert_eq!(out.images.len(), 0);
    assert_eq!(out.dropped.len(), 3);
    assert!(out.dropped.iter().all(|d| d.cause == "fewer_images"));
    assert_eq!(short.count(), 1, "a short answer is not retried");

    let broken = common::a1111(Faults {
        broken_seed: Some(2),
        ..Faults::default()
    });
    let pool = Pool::new(a1111_backend(), config(&[&broken]), None).unwrap();
    let job = vec![RenderJob {
        prompt: "p".into(),
        seeds: vec![1, 2, 3],
    }];
    let out = pool.render(&job);
    assert_faithful(&out, &job, &[&broken]);
    assert_eq!(
        out.images.iter().map(|i| i.seed).collect::<Vec<_>>(),
        [1, 3]
    );
    assert_eq!(
        (out.dropped[0].seed, out.dropped[0].cause),
        (2, "undecodable")
    );

    let comfy = common::comfyui(Faults {
        short: true,
        ..Faults::default()
    });
    let template = prip_test_support::fixture("comfyui/prompt_request_txt2img_api.json");
    let backend = ComfyUi::from_template(&template, Duration::from_millis(5)).unwrap();
    let openai = common::openai(
        Faults {
            short: true,
            ..Faults::default()
        },
        false,
    );
    let settings = OpenAiSettings {
        model: "m".into(),
        ..OpenAiSettings::default()
    };
    let cases: [(&common::Fake, Arc<dyn Backend>); 2] = [
        (&comfy, Arc::new(backend)),
        (&openai, Arc::new(OpenAiImages::new(settings).unwrap())),
    ];
    for (fake, backend) in cases {
        let pool = Pool::new(backend, config(&[fake]), None).unwrap();
        let out = pool.render(&[RenderJob {
            prompt: "p".into(),
            seeds: vec![4],
        }]);
        assert_eq!(out.dropped.len(), 1);
        assert_eq!(
            out.dropped[0].cause, "fewer_images",
            "{}",
            out.dropped[0].message
        );
    }
}

#[test]
fn the_cache_renders_each_image_once_and_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let a = common::a1111(Faults::default());
    let cache = Cache::open(dir.path(), ImageLimits::default()).unwrap();
    let pool = Pool::new(a1111_backend(), config(&[&a]), Some(cache.clone())).unwrap();
    let first = vec![RenderJob {
        prompt: "a cat".into(),
        seeds: vec![1, 2],
    }];
    let out = pool.render(&first);
    assert!(out.images.iter().all(|i| !i.cached));
    assert_eq!(a.count(), 1);
    // A new pool on the same directory (a resumed run): seeds 1 and 2 come from disk.
    let pool = Pool::new(a1111_backend(), config(&[&a]), Some(cache)).unwrap();
    let more = vec![RenderJob {
        prompt: "a cat".into(),
        seeds: vec![1, 2, 3],
    }];
    let out = pool.render(&more);
    assert_faithful(&out, &more, &[&a]);
    assert_eq!(
        out.images.iter().map(|i| i.cached).collect::<Vec<_>>(),
        [true, true, false]
    );
    assert_eq!(
        out.images[0].server, a.url,
        "the cache remembers the server"
    );
    assert_eq!(a.count(), 2);
    assert_eq!(a.bodies("/sdapi/v1/txt2img")[1]["seed"], 3);
    // Other settings are other images.
    let other: Arc<dyn Backend> = Arc::new(A1111::new(A1111Settings {
        steps: 30,
        ..A1111Settings::default()
    }));
    let pool = Pool::new(
        other,
        config(&[&a]),
        Some(Cache::open(dir.path(), ImageLimits::default()).unwrap()),
    )
    .unwrap();
    let out = pool.render(&first);
    assert!(out.images.iter().all(|i| !i.cached));
}

#[test]
fn bad_configurations_are_refused() {
    assert!(Pool::new(a1111_backend(), PoolConfig::default(), None).is_err());
    let cfg = PoolConfig {
        servers: vec!["localhost:7860".into()],
        ..PoolConfig::default()
    };
    let e = Pool::new(a1111_backend(), cfg, None)
        .unwrap_err()
        .to_string();
    assert!(e.contains("http://"), "{e}");
}
