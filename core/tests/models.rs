//! Model-level tests on tiny random models written in the real formats inside each test.

use std::path::Path;

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use prip_core::decoder::{DecoderLm, PromptDecoder, Template};
use prip_core::encoder::{PreferenceEncoder, TextEncoder};
use prip_core::init::SeededInit;
use prip_core::models::bert::{Bert, BertConfig};
use prip_core::models::llama::{KvCache, Llama, LlamaConfig};
use prip_core::models::pivot::{PivotConfig, PivotFormer, PivotProjection};
use prip_core::models::t5::{T5Config, T5Encoder};
use prip_core::nn::{Lora, OpsMode};
use prip_core::sampling::GenerationConfig;
use prip_test_support::models as tiny;

fn read_cfg<T: serde::de::DeserializeOwned>(dir: &Path) -> T {
    serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap()
}

fn ids(rows: &[&[u32]]) -> Tensor {
    let w = rows[0].len();
    Tensor::from_vec(rows.concat(), (rows.len(), w), &Device::Cpu).unwrap()
}

fn assert_all_vars_get_gradients(vars: &[(String, Var)], loss: &Tensor) {
    tiny::assert_all_vars_get_gradients(vars, &loss.backward().unwrap());
}

fn named_vars(vm: &VarMap) -> Vec<(String, Var)> {
    let data = vm.data().lock().unwrap();
    let mut v: Vec<(String, Var)> = data.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

/// Largest absolute entry of a tensor.
fn max_abs(t: &Tensor) -> f32 {
    t.abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar()
        .unwrap()
}

fn tiny_llama_cfg() -> LlamaConfig {
    LlamaConfig {
        vocab_size: 50,
        hidden_size: 32,
        intermediate_size: 64,
        num_hidden_layers: 2,
        num_attention_heads: 4,
        num_key_value_heads: Some(2),
        rms_norm_eps: 1e-5,
        rope_theta: 10_000.0,
        max_position_embeddings: 64,
        tie_word_embeddings: false,
        rope_scaling: None,
    }
}

fn cross_entropy(logits: &Tensor, targets: &[u32]) -> Tensor {
    let (b, t, v) = logits.dims3().unwrap();
    let tg = Tensor::from_vec(targets.to_vec(), b * t, &Device::Cpu).unwrap();
    candle_nn::loss::cross_entropy(&logits.reshape((b * t, v)).unwrap(), &tg).unwrap()
}

#[test]
fn llama_every_parameter_gets_a_gradient() {
    let vm = VarMap::new();
    let vb = VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu);
    let lm = Llama::load(&tiny_llama_cfg(), vb, OpsMode::Differentiable).unwrap();
    let x = lm
        .embed(&ids(&[&[1, 2, 3, 4, 5], &[6, 7, 8, 9, 10]]))
        .unwrap();
    let pos = ids(&[&[0, 1, 2, 3, 4], &[0, 0, 1, 2, 3]]);
    let valid = ids(&[&[1, 1, 1, 1, 1], &[0, 1, 1, 1, 1]]);
    let h = lm.forward_embeds(&x, &pos, &valid, None).unwrap();
    let loss = cross_entropy(&lm.logits(&h).unwrap(), &[2, 3, 4, 5, 6, 7, 8, 9, 10, 11]);
    assert_all_vars_get_gradients(&named_vars(&vm), &loss);
}

#[test]
fn lora_adapters_get_gradients_on_a_frozen_quantized_base() {
    let dir = tempfile::tempdir().unwrap();
    let gguf = dir.path().join("m.gguf");
    tiny::write_tiny_gguf(&gguf, 3).unwrap();
    let mut dec = DecoderLm::load(&gguf, &Device::Cpu, OpsMode::Differentiable).unwrap();
    let vm = VarMap::new();
    let vb = VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu);
    let mut set = Vec::new();
    for layer in 0..2 {
        for (t, out) in [("q_proj", 32), ("v_proj", 16)] {
            let p = vb.pp(format!("{layer}.{t}"));
            let init = candle_nn::Init::Randn {
                mean: 0.0,
                stdev: 0.1,
            };
            let a = p.get_with_hints((4, 32), "a", init).unwrap();
            let b = p.get_with_hints((out, 4), "b", init).unwrap();
            set.push((layer, t.to_string(), Lora { a, b, scale: 2.0 }));
        }
    }
    dec.lm.set_loras(Some(&set)).unwrap();
    let x = dec.lm.embed(&ids(&[&[5, 6, 7, 8]])).unwrap();
    let h = dec
        .lm
        .forward_embeds(&x, &ids(&[&[0, 1, 2, 3]]), &ids(&[&[1, 1, 1, 1]]), None)
        .unwrap();
    let loss = cross_entropy(&dec.lm.logits(&h).unwrap(), &[6, 7, 8, 9]);
    assert_all_vars_get_gradients(&named_vars(&vm), &loss);
}

#[test]
fn bert_t5_and_pivot_former_every_parameter_gets_a_gradient() {
    let dir = tempfile::tempdir().unwrap();
    tiny::write_tiny_bert(&dir.path().join("b"), 1).unwrap();
    tiny::write_tiny_t5(&dir.path().join("t"), 1).unwrap();
    let bert_cfg: BertConfig = read_cfg(&dir.path().join("b"));
    let t5_cfg: T5Config = read_cfg(&dir.path().join("t"));
    let x = ids(&[&[2, 10, 11, 12, 3], &[2, 13, 3, 0, 0]]);
    let mask = ids(&[&[1, 1, 1, 1, 1], &[1, 1, 1, 0, 0]]);

    let vm = VarMap::new();
    let vb = VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu);
    let bert = Bert::load(&bert_cfg, vb.pp("bert"), OpsMode::Differentiable).unwrap();
    let t5 = T5Encoder::load(&t5_cfg, vb.pp("t5"), OpsMode::Differentiable).unwrap();
    let pcfg = PivotConfig {
        num_queries: 4,
        d_pivot: 16,
        n_layers: 2,
        n_heads: 4,
        mlp_ratio: 2,
    };
    let former = PivotFormer::load(&pcfg, 32, vb.pp("pivot"), OpsMode::Differentiable).unwrap();
    let proj = PivotProjection::load(16, 24, vb.pp("proj")).unwrap();

    let states = (bert.forward(&x, &mask).unwrap() + t5.forward(&x, &mask).unwrap()).unwrap();
    let pivot = proj
        .forward(&former.forward(&states, &mask).unwrap())
        .unwrap();
    let target = Tensor::ones(pivot.shape(), DType::F32, &Device::Cpu).unwrap();
    // Nonlinear in the output so every LayerNorm bias matters to the loss.
    let loss = (pivot - target)
        .unwrap()
        .sqr()
        .unwrap()
        .sqr()
        .unwrap()
        .mean_all()
        .unwrap();
    assert_all_vars_get_gradients(&named_vars(&vm), &loss);
}

#[test]
fn fused_and_differentiable_paths_agree() {
    let dir = tempfile::tempdir().unwrap();
    tiny::write_tiny_llama(&dir.path().join("l"), 5).unwrap();
    tiny::write_tiny_bert(&dir.path().join("b"), 5).unwrap();
    tiny::write_tiny_t5(&dir.path().join("t"), 5).unwrap();
    let gguf = dir.path().join("m.gguf");
    tiny::write_tiny_gguf(&gguf, 5).unwrap();
    let x = ids(&[&[4, 9, 30, 41, 2], &[7, 8, 9, 10, 11]]);
    let pos = ids(&[&[0, 1, 2, 3, 4], &[0, 1, 2, 3, 4]]);
    let valid = ids(&[&[1, 1, 1, 1, 1], &[1, 1, 1, 1, 1]]);
    let max_diff = |a: &Tensor, b: &Tensor| max_abs(&(a - b).unwrap());
    // Dense weights: the same arithmetic. GGUF: the fused path's quantized matmuls also
    // quantize their input rows to 8 bits (as llama.cpp does), the differentiable one
    // multiplies the dequantised weights in f32.
    for (path, tolerance) in [(dir.path().join("l"), 1e-4), (gguf, 0.02)] {
        let f = DecoderLm::load(&path, &Device::Cpu, OpsMode::Fused).unwrap();
        let s = DecoderLm::load(&path, &Device::Cpu, OpsMode::Differentiable).unwrap();
        let e = f.lm.embed(&x).unwrap();
        let a = f.lm.forward_embeds(&e, &pos, &valid, None).unwrap();
        let b = s.lm.forward_embeds(&e, &pos, &valid, None).unwrap();
        let scale = max_abs(&b).max(1.0);
        assert!(
            max_diff(&a, &b) < tolerance * scale,
            "{}: {} of {scale}",
            path.display(),
            max_diff(&a, &b)
        );
    }
    for sub in ["b", "t"] {
        let f = TextEncoder::load(&dir.path().join(sub), &Device::Cpu, OpsMode::Fused).unwrap();
        let s = TextEncoder::load(&dir.path().join(sub), &Device::Cpu, OpsMode::Differentiable)
            .unwrap();
        let batch = f
            .tokenize(&["a little cat", "red fox in the woods"])
            .unwrap();
        let d = max_diff(&f.states(&batch).unwrap(), &s.states(&batch).unwrap());
        assert!(d < 1e-4, "{sub}: {d}");
    }
}

#[test]
fn gguf_computes_the_same_model_as_safetensors() {
    // The GGUF writer permutes q/k like llama.cpp's converter; the loader must undo it
    // through the interleaved rotary pairing. Q8_0 rounding is the only difference.
    let dir = tempfile::tempdir().unwrap();
    tiny::write_tiny_llama(&dir.path().join("l"), 8).unwrap();
    let gguf = dir.path().join("m.gguf");
    tiny::write_tiny_gguf_with_output(&gguf, 8).unwrap();
    let hf = DecoderLm::load(&dir.path().join("l"), &Device::Cpu, OpsMode::Fused).unwrap();
    let q = DecoderLm::load(&gguf, &Device::Cpu, OpsMode::Fused).unwrap();
    assert_eq!(
        hf.encode("a little cat").unwrap(),
        q.encode("a little cat").unwrap()
    );
    let x = ids(&[&[10, 20, 30, 40, 50, 60, 70, 80]]);
    let pos = ids(&[&[0, 1, 2, 3, 4, 5, 6, 7]]);
    let valid = ids(&[&[1; 8]]);
    // Scale the hidden states up so rotary differences would show.
    let run = |m: &DecoderLm| {
        let e = (m.lm.embed(&x).unwrap() * 50.0).unwrap();
        m.lm.logits(&m.lm.forward_embeds(&e, &pos, &valid, None).unwrap())
            .unwrap()
    };
    let (a, b) = (run(&hf), run(&q));
    let scale = max_abs(&a);
    let diff = max_abs(&(&a - &b).unwrap());
    assert!(
        diff < 0.05 * scale.max(1e-3),
        "diff {diff} vs scale {scale}"
    );
}

#[test]
fn kv_cache_and_left_padding_do_not_change_the_result() {
    let dir = tempfile::tempdir().unwrap();
    tiny::write_tiny_llama(&dir.path().join("l"), 9).unwrap();
    let m = DecoderLm::load(&dir.path().join("l"), &Device::Cpu, OpsMode::Fused).unwrap();
    let seq = [11u32, 12, 13, 14, 15, 16];
    let full = {
        let e = m.lm.embed(&ids(&[&seq])).unwrap();
        let h =
            m.lm.forward_embeds(&e, &ids(&[&[0, 1, 2, 3, 4, 5]]), &ids(&[&[1; 6]]), None)
                .unwrap();
        m.lm.logits(&h.narrow(1, 5, 1).unwrap()).unwrap()
    };
    // Incremental: 4 tokens, then 1, then 1, through the cache.
    let mut cache = KvCache::default();
    let e = m.lm.embed(&ids(&[&seq[..4]])).unwrap();
    m.lm.forward_embeds(
        &e,
        &ids(&[&[0, 1, 2, 3]]),
        &ids(&[&[1; 4]]),
        Some(&mut cache),
    )
    .unwrap();
    let e = m.lm.embed(&ids(&[&seq[4..5]])).unwrap();
    m.lm.forward_embeds(&e, &ids(&[&[4]]), &ids(&[&[1; 5]]), Some(&mut cache))
        .unwrap();
    let e = m.lm.embed(&ids(&[&seq[5..]])).unwrap();
    let h =
        m.lm.forward_embeds(&e, &ids(&[&[5]]), &ids(&[&[1; 6]]), Some(&mut cache))
            .unwrap();
    let inc = m.lm.logits(&h).unwrap();
    // Left-padded with two pad positions in a batch next to a longer row.
    let padded = {
        let e =
            m.lm.embed(&ids(&[
                &[0, 0, 11, 12, 13, 14, 15, 16],
                &[1, 2, 3, 4, 5, 6, 7, 8],
            ]))
            .unwrap();
        let pos = ids(&[&[0, 0, 0, 1, 2, 3, 4, 5], &[0, 1, 2, 3, 4, 5, 6, 7]]);
        let valid = ids(&[&[0, 0, 1, 1, 1, 1, 1, 1], &[1; 8]]);
        let h = m.lm.forward_embeds(&e, &pos, &valid, None).unwrap();
        m.lm.logits(
            &h.get(0)
                .unwrap()
                .narrow(0, 7, 1)
                .unwrap()
                .unsqueeze(0)
                .unwrap(),
        )
        .unwrap()
    };
    for other in [inc, padded] {
        let d = max_abs(&(&full - other).unwrap());
        assert!(d < 1e-4, "{d}");
    }
}

fn tiny_refiner_parts(dir: &Path) -> (PreferenceEncoder, PromptDecoder) {
    tiny::write_tiny_bert(&dir.join("b"), 2).unwrap();
    tiny::write_tiny_gguf(&dir.join("m.gguf"), 2).unwrap();
    let text = TextEncoder::load(&dir.join("b"), &Device::Cpu, OpsMode::Fused).unwrap();
    let pcfg = PivotConfig {
        num_queries: 4,
        d_pivot: 32,
        n_layers: 1,
        n_heads: 4,
        mlp_ratio: 2,
    };
    let init = SeededInit::new(0).var_builder(DType::F32, &Device::Cpu);
    let enc = PreferenceEncoder::new(text, &pcfg, init.pp("pivot_former"), OpsMode::Fused).unwrap();
    let lm = DecoderLm::load(&dir.join("m.gguf"), &Device::Cpu, OpsMode::Fused).unwrap();
    let dec = PromptDecoder::new(lm, 32, Template::default(), init.pp("projection")).unwrap();
    (enc, dec)
}

#[test]
fn batched_generation_matches_one_at_a_time_and_is_seeded() {
    let dir = tempfile::tempdir().unwrap();
    let (enc, dec) = tiny_refiner_parts(dir.path());
    let prompts = [
        "a little cat",
        "a red fox running in the dark forest at night",
    ];
    let cfg = GenerationConfig {
        max_new_tokens: 8,
        stop_at_newline: false,
        ..Default::default()
    };
    let run = |ps: &[&str], seeds: &[u64]| {
        let rows = dec.rows(ps).unwrap();
        let batch = dec.batch(&rows, Some(&enc.encode(ps).unwrap())).unwrap();
        dec.generate(&batch, &rows, &cfg, seeds).unwrap().ids
    };
    let both = run(&prompts, &[1, 2]);
    assert_eq!(both, run(&prompts, &[1, 2]), "same seeds, same output");
    assert_eq!(both[0], run(&prompts[..1], &[1])[0]);
    assert_eq!(both[1], run(&prompts[1..], &[2])[0]);
    assert!(both.iter().all(|g| !g.is_empty() && g.len() <= 8));
    let greedy = GenerationConfig {
        temperature: 0.0,
        ..cfg.clone()
    };
    let rows = dec.rows(&prompts[..1]).unwrap();
    let batch = dec
        .batch(&rows, Some(&enc.encode(&prompts[..1]).unwrap()))
        .unwrap();
    let g1 = dec.generate(&batch, &rows, &greedy, &[1]).unwrap().ids;
    assert_eq!(
        g1,
        dec.generate(&batch, &rows, &greedy, &[99]).unwrap().ids,
        "greedy ignores the seed"
    );
}

#[test]
fn the_pivot_changes_what_the_decoder_sees() {
    let dir = tempfile::tempdir().unwrap();
    let (enc, dec) = tiny_refiner_parts(dir.path());
    let rows = dec.rows(&["a cat"]).unwrap();
    let with = dec
        .batch(&rows, Some(&enc.encode(&["a cat"]).unwrap()))
        .unwrap();
    let without = dec.batch(&rows, None).unwrap();
    assert_eq!(
        with.lengths[0],
        without.lengths[0] + 4,
        "4 pivot rows in the slot"
    );
    let other = dec
        .batch(&rows, Some(&enc.encode(&["a dog"]).unwrap()))
        .unwrap();
    let d: f32 = (with.embeds - other.embeds)
        .unwrap()
        .abs()
        .unwrap()
        .sum_all()
        .unwrap()
        .to_scalar()
        .unwrap();
    assert!(d > 0.0, "different prompts give different pivots");
}

#[test]
fn banned_words_never_come_out() {
    let dir = tempfile::tempdir().unwrap();
    let (enc, dec) = tiny_refiner_parts(dir.path());
    let ps = ["a little cat"];
    let rows = dec.rows(&ps).unwrap();
    let batch = dec.batch(&rows, Some(&enc.encode(&ps).unwrap())).unwrap();
    let base = GenerationConfig {
        temperature: 0.0,
        max_new_tokens: 6,
        stop_at_newline: false,
        ..Default::default()
    };
    let first = dec.generate(&batch, &rows, &base, &[0]).unwrap().ids[0].clone();
    let word = dec.lm().decode(&first[..1]).unwrap().trim().to_string();
    assert!(!word.is_empty());
    let banned = GenerationConfig {
        banned_words: vec![word.clone()],
        ..base
    };
    let out = dec.generate(&batch, &rows, &banned, &[0]).unwrap().ids[0].clone();
    let text = dec.lm().decode(&out).unwrap();
    assert!(
        !text.split_whitespace().any(|w| w == word),
        "{word:?} in {text:?}"
    );
}

#[test]
fn a_row_never_stops_before_it_writes_a_word() {
    let dir = tempfile::tempdir().unwrap();
    let (enc, dec) = tiny_refiner_parts(dir.path());
    let ps = ["a little cat"];
    let rows = dec.rows(&ps).unwrap();
    let batch = dec.batch(&rows, Some(&enc.encode(&ps).unwrap())).unwrap();
    let greedy = GenerationConfig {
        temperature: 0.0,
        max_new_tokens: 8,
        stop_at_newline: false,
        ..Default::default()
    };
    let first = dec.generate(&batch, &rows, &greedy, &[0]).unwrap().ids[0][0];
    // The same decoder, but its stop token is exactly what it wants to say first: the
    // case of a prompt whose ending makes the model stop at once.
    let mut lm = dec.lm().clone();
    lm.stop_ids = [first].into();
    let init = SeededInit::new(0).var_builder(DType::F32, &Device::Cpu);
    let stopping = PromptDecoder::new(lm, 32, Template::default(), init.pp("projection")).unwrap();
    let out = stopping.generate(&batch, &rows, &greedy, &[0]).unwrap().ids[0].clone();
    let text = stopping.lm().decode(&out).unwrap();
    assert!(
        text.chars().any(char::is_alphanumeric),
        "stopped before writing a word: {out:?} {text:?}"
    );
    assert!(out.len() <= 8);
}

#[test]
fn mean_pooling_ignores_padding() {
    let dir = tempfile::tempdir().unwrap();
    tiny::write_tiny_bert(&dir.path().join("b"), 4).unwrap();
    let enc = TextEncoder::load(&dir.path().join("b"), &Device::Cpu, OpsMode::Fused).unwrap();
    let alone = enc.sentence_embeddings(&["a cat"]).unwrap();
    let padded = enc
        .sentence_embeddings(&["a cat", "a red fox running in the dark forest"])
        .unwrap();
    let d = max_abs(&(alone.get(0).unwrap() - padded.get(0).unwrap()).unwrap());
    assert!(d < 1e-5, "{d}");
    let norm: f32 = alone
        .sqr()
        .unwrap()
        .sum_all()
        .unwrap()
        .sqrt()
        .unwrap()
        .to_scalar()
        .unwrap();
    assert!((norm - 1.0).abs() < 1e-4);
}

#[test]
fn bad_shapes_are_errors_not_panics() {
    let dir = tempfile::tempdir().unwrap();
    let l = dir.path().join("l");
    tiny::write_tiny_llama(&l, 1).unwrap();
    let mut cfg: serde_json::Value = read_cfg(&l);
    cfg["hidden_size"] = 48.into();
    std::fs::write(l.join("config.json"), cfg.to_string()).unwrap();
    let err = DecoderLm::load(&l, &Device::Cpu, OpsMode::Fused)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("model.safetensors") && err.contains("shape"),
        "{err}"
    );
    cfg["hidden_size"] = 32.into();
    cfg["num_attention_heads"] = 5.into();
    std::fs::write(l.join("config.json"), cfg.to_string()).unwrap();
    let err = DecoderLm::load(&l, &Device::Cpu, OpsMode::Fused)
        .unwrap_err()
        .to_string();
    assert!(err.contains("heads"), "{err}");
    let gguf = dir.path().join("m.gguf");
    tiny::write_tiny_gguf(&gguf, 1).unwrap();
    tiny::corrupt_truncate(&gguf, 2000).unwrap();
    let err = DecoderLm::load(&gguf, &Device::Cpu, OpsMode::Fused)
        .unwrap_err()
        .to_string();
    assert!(err.starts_with(&gguf.display().to_string()), "{err}");
}

#[test]
fn a_prepared_copy_computes_what_the_published_gguf_computes() {
    use prip_core::models::llama::{config_from_gguf, LlamaPreparation};
    use prip_core::models::quantized::{prepared_file, CpuKernels};
    let dir = tempfile::tempdir().unwrap();
    let gguf = dir.path().join("m.gguf");
    tiny::write_tiny_gguf_with_output(&gguf, 6).unwrap();
    let widths =
        |c: &candle_core::quantized::gguf_file::Content| config_from_gguf(c).map(LlamaPreparation);
    // The padded tile layout is valid on every CPU; only its speed needs VNNI.
    let copy = prepared_file(&gguf, CpuKernels::X86Vnni, widths).unwrap();
    assert_ne!(copy, gguf);
    let made = std::fs::metadata(&copy).unwrap().modified().unwrap();
    assert_eq!(
        prepared_file(&gguf, CpuKernels::X86Vnni, widths).unwrap(),
        copy
    );
    assert_eq!(
        std::fs::metadata(&copy).unwrap().modified().unwrap(),
        made,
        "an up-to-date copy is reused, not rewritten"
    );
    let published = DecoderLm::load(&gguf, &Device::Cpu, OpsMode::Differentiable).unwrap();
    let prepared = DecoderLm::load(&copy, &Device::Cpu, OpsMode::Fused).unwrap();
    let x = ids(&[&[10, 20, 30, 40, 50], &[1, 2, 3, 4, 5]]);
    let pos = ids(&[&[0, 1, 2, 3, 4], &[0, 1, 2, 3, 4]]);
    let valid = ids(&[&[1; 5], &[1; 5]]);
    let run = |m: &DecoderLm| {
        let e = (m.lm.embed(&x).unwrap() * 50.0).unwrap();
        m.lm.logits(&m.lm.forward_embeds(&e, &pos, &valid, None).unwrap())
            .unwrap()
    };
    let (a, b) = (run(&published), run(&prepared));
    let diff = max_abs(&(&a - &b).unwrap());
    assert!(diff < 0.05 * max_abs(&a).max(1e-3), "diff {diff}");
    // A different source (another model written over it) gets a fresh copy.
    std::thread::sleep(std::time::Duration::from_millis(20));
    tiny::write_tiny_gguf_with_output(&gguf, 7).unwrap();
    prepared_file(&gguf, CpuKernels::X86Vnni, widths).unwrap();
    assert_ne!(std::fs::metadata(&copy).unwrap().modified().unwrap(), made);
}
