//! The scorers: the HTTP scoring protocol against an in-process fake and against the
//! reference Python service (with its stub scorer), the reference service's own pytest
//! suite, and the candle CLIP and aesthetic scorers on tiny random CLIP weights made
//! here, scoring images that the fake image servers render.

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use candle_core::{DType, Device, Tensor, D};
use candle_nn::{VarBuilder, VarMap};
use candle_transformers::models::clip::text_model::{Activation, ClipTextConfig};
use candle_transformers::models::clip::vision_model::ClipVisionConfig;
use candle_transformers::models::clip::{ClipConfig, ClipModel};
use common::{fake_png, fake_score, Faults};
use prip_trainer::image::{clip_pixels, ImageLimits, Picture};
use prip_trainer::render::a1111::{A1111Settings, A1111};
use prip_trainer::render::{Pool, PoolConfig, RenderJob};
use prip_trainer::score::{score_checked, AestheticScorer, ClipScorer, HttpScorer, Scorer};

fn pictures(prompt: &str, seeds: &[u64]) -> Vec<Picture> {
    seeds
        .iter()
        .map(|s| Picture::decode(&fake_png(prompt, *s), &ImageLimits::default()).unwrap())
        .collect()
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

#[test]
fn the_http_scorer_speaks_the_protocol_and_checks_answers() {
    let fake = common::scoring(Faults::default());
    let scorer = HttpScorer::connect(&fake.url, None, Duration::from_secs(10)).unwrap();
    assert_eq!((scorer.name(), scorer.version()), ("fake", "0.1"));
    let images = pictures("a cat", &[1, 2, 3]);
    let scores = score_checked(&scorer, "a cat", &images);
    for (s, img) in scores.iter().zip(&images) {
        let want = fake_score("a cat", img.encoded()) as f32;
        assert!((s.as_ref().unwrap() - want).abs() < 1e-6);
    }
    let req = &fake.bodies("/score")[0];
    assert_eq!(req["scorer"], "fake");
    assert_eq!(req["images"].as_array().unwrap().len(), 3);

    // null (NaN) drops its image; a wrong count or an error drops the whole call.
    let nan = score_checked(&scorer, "nan", &images);
    assert_eq!(nan[0].as_ref().unwrap_err().cause, "not_finite");
    assert!(nan[1].is_ok() && nan[2].is_ok());
    let short = score_checked(&scorer, "wrong count", &images);
    assert!(short
        .iter()
        .all(|s| s.as_ref().unwrap_err().cause == "wrong_count"));
    let failed = score_checked(&scorer, "fail", &images);
    let drop = failed[0].as_ref().unwrap_err();
    assert_eq!(drop.cause, "server_error");
    assert!(drop.message.contains("the model broke"), "{}", drop.message);

    let e = HttpScorer::connect(&fake.url, Some("pickscore"), Duration::from_secs(10)).unwrap_err();
    assert!(
        e.to_string()
            .contains("no scorer \"pickscore\" (it has: fake)"),
        "{e}"
    );
    let hung = common::scoring(Faults {
        hang: true,
        ..Faults::default()
    });
    let e = HttpScorer::connect(&hung.url, None, Duration::from_millis(200)).unwrap_err();
    assert_eq!(e.cause(), "timeout");
}

/// The reference service with its stub scorer, on a free port; killed on drop.
struct Service(Child, String);

impl Service {
    fn start() -> Self {
        let script = repo_root().join("adapters/scoring-service/tests/stub_scorer.py");
        let mut child = Command::new("python3")
            .arg(&script)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3 runs the reference scoring service");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port: u16 = line
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("port line: {line:?}"));
        Service(child, format!("http://127.0.0.1:{port}"))
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn the_reference_service_agrees_with_the_client() {
    let service = Service::start();
    let scorer = HttpScorer::connect(&service.1, None, Duration::from_secs(20)).unwrap();
    assert_eq!((scorer.name(), scorer.version()), ("stub", "0.1"));
    let images = pictures("a red fox", &[7, 8]);
    let scores = score_checked(&scorer, "a red fox", &images);
    for (s, img) in scores.iter().zip(&images) {
        let want = fake_score("a red fox", img.encoded()) as f32;
        assert!((s.as_ref().unwrap() - want).abs() < 1e-6, "{s:?} vs {want}");
    }
    let nan = score_checked(&scorer, "nan", &images);
    assert_eq!(nan[0].as_ref().unwrap_err().cause, "not_finite");
    let short = score_checked(&scorer, "wrong count", &images);
    assert_eq!(short[1].as_ref().unwrap_err().cause, "wrong_count");
    let failed = score_checked(&scorer, "fail", &images);
    assert!(failed[0]
        .as_ref()
        .unwrap_err()
        .message
        .contains("RuntimeError: the model broke"));
    // A JPEG from an image server is sent as PNG.
    let mut jpeg = std::io::Cursor::new(Vec::new());
    images[0]
        .rgb()
        .write_to(&mut jpeg, image::ImageFormat::Jpeg)
        .unwrap();
    let jpeg = Picture::decode(jpeg.get_ref(), &ImageLimits::default()).unwrap();
    assert!(score_checked(&scorer, "x", &[jpeg])[0].is_ok());
}

#[test]
fn the_reference_service_pytest_suite_passes() {
    let out = Command::new("python3")
        .args([
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "adapters/scoring-service/tests",
        ])
        .current_dir(repo_root())
        .output()
        .expect("python3 runs");
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !report.contains("No module named pytest"),
        "pytest is not installed: python3 -m pip install -r requirements-test.txt"
    );
    assert!(out.status.success(), "pytest failed:\n{report}");
}

const WORDS: [&str; 12] = [
    "a", "little", "cat", "running", "in", "the", "woods", "red", "fox", "golden", "hour", ",",
];

/// A tiny OpenAI-style CLIP: text and vision towers of width 32, a word-level
/// tokenizer whose end-of-text token has the largest id (the text tower pools there).
fn write_tiny_clip(dir: &Path) -> ClipModel {
    use tokenizers::models::wordlevel::WordLevel;
    use tokenizers::pre_tokenizers::whitespace::Whitespace;
    use tokenizers::processors::template::TemplateProcessing;
    std::fs::create_dir_all(dir).unwrap();
    let mut vocab: std::collections::HashMap<String, u32> = std::collections::HashMap::new();
    vocab.insert("[UNK]".into(), 0);
    for (i, w) in WORDS.iter().enumerate() {
        vocab.insert(w.to_string(), i as u32 + 1);
    }
    let (bos, eos) = (WORDS.len() as u32 + 1, WORDS.len() as u32 + 2);
    vocab.insert("<|startoftext|>".into(), bos);
    vocab.insert("<|endoftext|>".into(), eos);
    let model = WordLevel::builder()
        .vocab(vocab.into_iter().collect())
        .unk_token("[UNK]".into())
        .build()
        .unwrap();
    let mut tok = tokenizers::Tokenizer::new(model);
    tok.with_pre_tokenizer(Some(Whitespace {}));
    tok.with_post_processor(Some(
        TemplateProcessing::builder()
            .try_single("<|startoftext|> $A <|endoftext|>")
            .unwrap()
            .special_tokens(vec![("<|startoftext|>", bos), ("<|endoftext|>", eos)])
            .build()
            .unwrap(),
    ));
    tok.save(dir.join("tokenizer.json"), false).unwrap();
    let vocab_size = eos as usize + 1;
    let cfg = ClipConfig {
        text_config: ClipTextConfig {
            vocab_size,
            embed_dim: 32,
            activation: Activation::QuickGelu,
            intermediate_size: 64,
            max_position_embeddings: 8,
            pad_with: None,
            num_hidden_layers: 2,
            num_attention_heads: 4,
            projection_dim: 16,
        },
        vision_config: ClipVisionConfig {
            embed_dim: 32,
            activation: Activation::QuickGelu,
            intermediate_size: 64,
            num_hidden_layers: 2,
            num_attention_heads: 4,
            projection_dim: 16,
            num_channels: 3,
            image_size: 32,
            patch_size: 8,
        },
        logit_scale_init_value: 2.6592,
        image_size: 32,
    };
    let vm = VarMap::new();
    ClipModel::new(VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu), &cfg).unwrap();
    // candle's CLIP draws a fresh random class embedding when the weights lack one (a
    // VarMap never has it): write one, and build the reference from the file.
    let path = dir.join("model.safetensors");
    vm.save(&path).unwrap();
    let mut tensors = candle_core::safetensors::load(&path, &Device::Cpu).unwrap();
    tensors.insert(
        "vision_model.embeddings.class_embedding".into(),
        Tensor::randn(0f32, 1.0, 32, &Device::Cpu).unwrap(),
    );
    candle_core::safetensors::save(&tensors, &path).unwrap();
    let model = ClipModel::new(
        VarBuilder::from_tensors(tensors, DType::F32, &Device::Cpu),
        &cfg,
    )
    .unwrap();
    std::fs::write(
        dir.join("config.json"),
        serde_json::json!({
            "model_type": "clip", "projection_dim": 16, "logit_scale_init_value": 2.6592,
            "text_config": {"vocab_size": vocab_size, "hidden_size": 32, "intermediate_size": 64,
                "num_hidden_layers": 2, "num_attention_heads": 4, "max_position_embeddings": 8,
                "hidden_act": "quick_gelu"},
            "vision_config": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                "num_attention_heads": 4, "image_size": 32, "patch_size": 8, "hidden_act": "quick_gelu"}
        })
        .to_string(),
    )
    .unwrap();
    model
}

fn cosine(a: &Tensor, b: &Tensor) -> f32 {
    let n = |x: &Tensor| {
        x.broadcast_div(
            &x.sqr()
                .unwrap()
                .sum_keepdim(D::Minus1)
                .unwrap()
                .sqrt()
                .unwrap(),
        )
        .unwrap()
    };
    (n(a) * n(b))
        .unwrap()
        .sum_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

#[test]
fn clip_score_is_the_cosine_of_clips_own_embeddings() {
    let dir = tempfile::tempdir().unwrap();
    let reference = write_tiny_clip(dir.path());
    let scorer = ClipScorer::load(dir.path(), &Device::Cpu).unwrap();
    let prompt = "a little cat running in the woods";
    let images = pictures(prompt, &[1, 2, 3]);
    let scores: Vec<f32> = score_checked(&scorer, prompt, &images)
        .into_iter()
        .map(Result::unwrap)
        .collect();
    // The same numbers straight from candle-transformers' CLIPModel.
    let ids: Vec<u32> = [13u32, 1, 2, 3, 4, 5, 6, 7, 14][..].to_vec();
    let ids = Tensor::new(&ids[..8], &Device::Cpu).unwrap();
    // 9 tokens cut to the 8 positions, keeping the end-of-text token last.
    let ids = Tensor::cat(
        &[
            ids.narrow(0, 0, 7).unwrap(),
            Tensor::new(&[14u32], &Device::Cpu).unwrap(),
        ],
        0,
    )
    .unwrap()
    .unsqueeze(0)
    .unwrap();
    let text = reference.get_text_features(&ids).unwrap();
    for (img, score) in images.iter().zip(&scores) {
        let px = Tensor::from_vec(
            clip_pixels(&img.dynamic(), 32),
            (1, 3, 32, 32),
            &Device::Cpu,
        )
        .unwrap();
        let want = cosine(&reference.get_image_features(&px).unwrap(), &text);
        assert!((score - want).abs() < 1e-5, "{score} vs {want}");
        assert!((-1.0..=1.0).contains(score));
    }
    assert_ne!(scores[0], scores[1], "different images, different scores");
    let other = score_checked(&scorer, "a red fox", &images);
    assert_ne!(other[0].as_ref().unwrap(), &scores[0], "the prompt matters");

    // Weights without the class embedding are refused (candle would draw a random one).
    let path = dir.path().join("model.safetensors");
    let mut tensors = candle_core::safetensors::load(&path, &Device::Cpu).unwrap();
    tensors.remove("vision_model.embeddings.class_embedding");
    candle_core::safetensors::save(&tensors, &path).unwrap();
    let e = ClipScorer::load(dir.path(), &Device::Cpu).unwrap_err();
    assert!(
        e.to_string()
            .contains("no vision_model.embeddings.class_embedding"),
        "{e}"
    );
}

#[test]
fn the_aesthetic_predictor_is_its_mlp_on_normalised_embeddings() {
    let dir = tempfile::tempdir().unwrap();
    let reference = write_tiny_clip(&dir.path().join("clip"));
    // layers.0 / .2 / .4 as in the released predictor's nn.Sequential (dropouts between).
    let dims = [(16usize, 16usize), (8, 16), (1, 8)];
    let mut tensors = std::collections::HashMap::new();
    for (k, (out, inp)) in dims.iter().enumerate() {
        let w = Tensor::randn(0f32, 0.5, (*out, *inp), &Device::Cpu).unwrap();
        let b = Tensor::randn(0f32, 0.5, *out, &Device::Cpu).unwrap();
        tensors.insert(format!("layers.{}.weight", 2 * k), w);
        tensors.insert(format!("layers.{}.bias", 2 * k), b);
    }
    let mlp = dir.path().join("aesthetic.safetensors");
    candle_core::safetensors::save(&tensors, &mlp).unwrap();
    let scorer = AestheticScorer::load(&dir.path().join("clip"), &mlp, &Device::Cpu).unwrap();
    assert_eq!(scorer.version(), "aesthetic.safetensors");
    let images = pictures("a cat", &[4, 5]);
    let scores = scorer.score("ignored", &images).unwrap();
    for (img, score) in images.iter().zip(&scores) {
        let px = Tensor::from_vec(
            clip_pixels(&img.dynamic(), 32),
            (1, 3, 32, 32),
            &Device::Cpu,
        )
        .unwrap();
        let e = reference.get_image_features(&px).unwrap();
        let mut x = e
            .broadcast_div(
                &e.sqr()
                    .unwrap()
                    .sum_keepdim(D::Minus1)
                    .unwrap()
                    .sqrt()
                    .unwrap(),
            )
            .unwrap();
        for k in 0..3 {
            let w = &tensors[&format!("layers.{}.weight", 2 * k)];
            let b = &tensors[&format!("layers.{}.bias", 2 * k)];
            x = x.matmul(&w.t().unwrap()).unwrap().broadcast_add(b).unwrap();
        }
        let want = x.flatten_all().unwrap().to_vec1::<f32>().unwrap()[0];
        assert!((score - want).abs() < 1e-4, "{score} vs {want}");
    }
    // An MLP for another embedding width is refused, naming the layer.
    let mut wrong = tensors.clone();
    wrong.insert(
        "layers.0.weight".into(),
        Tensor::zeros((16, 768), DType::F32, &Device::Cpu).unwrap(),
    );
    candle_core::safetensors::save(&wrong, &mlp).unwrap();
    let e = AestheticScorer::load(&dir.path().join("clip"), &mlp, &Device::Cpu).unwrap_err();
    assert!(e.to_string().contains("layers.0 takes 768 inputs"), "{e}");
}

#[test]
fn rendered_images_are_scored_end_to_end() {
    let dir = tempfile::tempdir().unwrap();
    write_tiny_clip(dir.path());
    let server = common::a1111(Faults::default());
    let pool = Pool::new(
        Arc::new(A1111::new(A1111Settings {
            width: 32,
            height: 32,
            ..A1111Settings::default()
        })),
        PoolConfig {
            servers: vec![server.url.clone()],
            ..PoolConfig::default()
        },
        None,
    )
    .unwrap();
    let prompt = "a little cat running in the woods";
    let refined = "a little cat running in the woods , golden hour";
    let out = pool.render(&[
        RenderJob {
            prompt: prompt.into(),
            seeds: vec![1, 2],
        },
        RenderJob {
            prompt: refined.into(),
            seeds: vec![1, 2],
        },
    ]);
    assert_eq!(out.images.len(), 4);
    let service = common::scoring(Faults::default());
    let scorers: Vec<Box<dyn Scorer>> = vec![
        Box::new(HttpScorer::connect(&service.url, None, Duration::from_secs(10)).unwrap()),
        Box::new(ClipScorer::load(dir.path(), &Device::Cpu).unwrap()),
    ];
    for scorer in &scorers {
        // The reward: mean score of the refined prompt's images minus the original's,
        // both judged against what the user asked for.
        let mean = |p: &str| {
            let imgs: Vec<Picture> = out
                .images
                .iter()
                .filter(|i| i.prompt == p)
                .map(|i| i.picture.clone())
                .collect();
            let s: Vec<f32> = score_checked(scorer.as_ref(), prompt, &imgs)
                .into_iter()
                .map(Result::unwrap)
                .collect();
            s.iter().sum::<f32>() / s.len() as f32
        };
        let reward = mean(refined) - mean(prompt);
        assert!(reward.is_finite(), "{}: {reward}", scorer.name());
    }
}
