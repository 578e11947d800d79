//! Tiny random models written to disk in the real on-disk formats, for tests.
//!
//! Every writer produces files that the production loaders accept unchanged
//! (Hugging Face `config.json` + `model.safetensors` + `tokenizer.json`, or a
//! GGUF file), but with a hidden size of 32 and two layers, so tests can
//! exercise the whole load-and-run path in milliseconds without network
//! access or large downloads.
//!
//! All weights are a pure function of the seed: the same seed always yields
//! byte-identical files, so tests can compare outputs across runs.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs;
use std::path::Path;

use candle_core::quantized::{gguf_file, GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::decoders::metaspace::Metaspace as MetaspaceDecoder;
use tokenizers::decoders::wordpiece::WordPiece as WordPieceDecoder;
use tokenizers::models::bpe::{Vocab as BpeVocab, BPE};
use tokenizers::models::unigram::Unigram;
use tokenizers::models::wordpiece::WordPiece;
use tokenizers::normalizers::bert::BertNormalizer;
use tokenizers::pre_tokenizers::bert::BertPreTokenizer;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::metaspace::{Metaspace, PrependScheme};
use tokenizers::processors::template::TemplateProcessing;
use tokenizers::{AddedToken, Tokenizer};

/// Error returned by the writers. Boxed because the failures come from four
/// unrelated libraries (I/O, candle, tokenizers, serde_json) and tests only
/// ever report them.
pub type TestingError = Box<dyn std::error::Error + Send + Sync>;

/// Result alias for the writers in this module.
pub type TestingResult<T> = std::result::Result<T, TestingError>;

/// Hidden size shared by all tiny models.
pub const HIDDEN: usize = 32;
/// Feed-forward (intermediate) size shared by all tiny models.
pub const INTERMEDIATE: usize = 64;
/// Number of transformer layers in every tiny model.
pub const LAYERS: usize = 2;
/// Number of attention heads in every tiny model.
pub const HEADS: usize = 4;
/// Number of key/value heads of the tiny llama (grouped-query attention).
pub const LLAMA_KV_HEADS: usize = 2;
/// Id of `<|endoftext|>` in the tiny llama vocabulary.
pub const LLAMA_ENDOFTEXT_ID: u32 = 0;
/// Id of `<|im_start|>`, the tiny llama's BOS token.
pub const LLAMA_BOS_ID: u32 = 1;
/// Id of `<|im_end|>`, the tiny llama's EOS token.
pub const LLAMA_EOS_ID: u32 = 2;

const BERT_MAX_POSITIONS: usize = 64;
const BERT_TYPE_VOCAB: usize = 2;
const T5_D_KV: usize = 8;
const T5_BUCKETS: usize = 32;
const LLAMA_MAX_POSITIONS: usize = 256;
const LLAMA_SPECIALS: [&str; 3] = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"];

/// Lowercase words typical of image prompts. They become whole-word tokens in
/// every tiny vocabulary so that realistic test prompts tokenize compactly and
/// decode back losslessly.
#[rustfmt::skip]
const WORDS: &[&str] = &[
    "a", "an", "the", "of", "in", "on", "at", "by", "with", "and", "for", "to", "from", "is",
    "under", "over", "near", "through", "cat", "kitten", "dog", "puppy", "fox", "wolf", "bird",
    "owl", "horse", "deer", "bear", "rabbit", "lion", "tiger", "dragon", "fish", "butterfly",
    "man", "woman", "girl", "boy", "child", "knight", "wizard", "robot", "astronaut", "warrior",
    "princess", "king", "queen", "people", "person", "red", "blue", "green", "yellow", "orange",
    "purple", "pink", "black", "white", "gray", "golden", "silver", "brown", "colorful", "little",
    "small", "big", "large", "tiny", "giant", "old", "young", "beautiful", "cute", "ancient",
    "futuristic", "magical", "dark", "bright", "soft", "running", "sitting", "standing", "flying",
    "walking", "sleeping", "playing", "jumping", "looking", "holding", "forest", "woods", "tree",
    "trees", "mountain", "mountains", "river", "lake", "ocean", "sea", "beach", "sky", "clouds",
    "city", "street", "castle", "house", "garden", "field", "flowers", "flower", "snow", "rain",
    "desert", "space", "moon", "sun", "stars", "night", "day", "morning", "sunset", "sunrise",
    "hour", "water", "fire", "light", "lighting", "shadow", "fog", "mist", "cinematic", "dramatic",
    "volumetric", "highly", "detailed", "intricate", "sharp", "focus", "realistic",
    "photorealistic", "quality", "masterpiece", "best", "resolution", "render", "4k", "8k", "hd",
    "painting", "oil", "watercolor", "portrait", "landscape", "illustration", "photo",
    "photograph", "photography", "sketch", "drawing", "art", "artwork", "digital", "concept",
    "style", "anime", "trending", "artstation", "unreal", "engine", "octane", "canvas", "studio",
    "lens", "camera", "shot", "closeup", "wide", "angle", "bokeh", "depth", "tax", "records",
    "document", "office", "paper",
];

/// Common English suffixes, so unknown inflections split into word + suffix
/// rather than into single characters.
const SUFFIXES: &[&str] = &["s", "es", "ed", "ing", "er", "ly", "y", "ness", "ful", "ic"];

/// Deterministic weight source.
struct Init {
    rng: StdRng,
}

impl Init {
    fn new(seed: u64) -> Self {
        Self {
            rng: StdRng::seed_from_u64(seed),
        }
    }

    /// Approximately N(0, std²) via the Irwin–Hall sum of 12 uniforms. Chosen
    /// over Box–Muller because it needs only additions, so the bytes do not
    /// depend on the platform's `ln`/`cos` implementation.
    fn normal(&mut self, std: f32) -> f32 {
        let sum: f32 = (0..12).map(|_| self.rng.random::<f32>()).sum();
        (sum - 6.0) * std
    }

    /// A `(rows, cols)` matrix with std 0.02, the usual HF initializer range.
    fn matrix(&mut self, rows: usize, cols: usize) -> TestingResult<Tensor> {
        let data: Vec<f32> = (0..rows * cols).map(|_| self.normal(0.02)).collect();
        Ok(Tensor::from_vec(data, (rows, cols), &Device::Cpu)?)
    }
}

fn ones(n: usize) -> TestingResult<Tensor> {
    Ok(Tensor::ones(n, candle_core::DType::F32, &Device::Cpu)?)
}

fn zeros(n: usize) -> TestingResult<Tensor> {
    Ok(Tensor::zeros(n, candle_core::DType::F32, &Device::Cpu)?)
}

/// Saves tensors as safetensors. Tensors are generated into an ordered list
/// first so the RNG draw order (and therefore the values) never depends on
/// hash-map iteration order.
fn save_safetensors(tensors: Vec<(String, Tensor)>, path: &Path) -> TestingResult<()> {
    let map: HashMap<String, Tensor> = tensors.into_iter().collect();
    candle_core::safetensors::save(&map, path)?;
    Ok(())
}

fn write_json(path: &Path, value: &serde_json::Value) -> TestingResult<()> {
    fs::write(path, serde_json::to_string_pretty(value)?)?;
    Ok(())
}

/// Pushes `item` unless already present, keeping first-seen order so ids are
/// stable.
fn push_unique(list: &mut Vec<String>, seen: &mut HashSet<String>, item: String) {
    if seen.insert(item.clone()) {
        list.push(item);
    }
}

/// Printable, non-space ASCII characters: every one gets a token so any
/// ASCII text tokenizes without unknowns.
fn printable_ascii() -> impl Iterator<Item = char> {
    (33u8..=126).map(char::from)
}

// ---------------------------------------------------------------- BERT ---

fn bert_vocab() -> Vec<String> {
    let mut vocab = Vec::new();
    let mut seen = HashSet::new();
    for special in ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] {
        push_unique(&mut vocab, &mut seen, special.to_string());
    }
    for word in WORDS {
        push_unique(&mut vocab, &mut seen, (*word).to_string());
    }
    for suffix in SUFFIXES {
        push_unique(&mut vocab, &mut seen, format!("##{suffix}"));
    }
    // Uppercase never reaches the model (the normalizer lowercases), so only
    // lowercase letters, digits and punctuation are needed as word starts.
    for c in printable_ascii().filter(|c| !c.is_ascii_uppercase()) {
        push_unique(&mut vocab, &mut seen, c.to_string());
    }
    // Punctuation is always split off by BertPreTokenizer, so continuation
    // pieces are only needed for alphanumerics.
    for c in printable_ascii().filter(|c| c.is_ascii_lowercase() || c.is_ascii_digit()) {
        push_unique(&mut vocab, &mut seen, format!("##{c}"));
    }
    vocab
}

fn bert_tokenizer() -> TestingResult<Tokenizer> {
    let vocab: BpeVocab = bert_vocab()
        .into_iter()
        .enumerate()
        .map(|(i, t)| (t, i as u32))
        .collect();
    let model = WordPiece::builder()
        .vocab(vocab)
        .unk_token("[UNK]".to_string())
        .continuing_subword_prefix("##".to_string())
        .build()?;
    let mut tokenizer = Tokenizer::new(model);
    tokenizer.with_normalizer(Some(BertNormalizer::new(true, true, None, true)))?;
    tokenizer.with_pre_tokenizer(Some(BertPreTokenizer));
    tokenizer.with_post_processor(Some(
        TemplateProcessing::builder()
            .try_single("[CLS] $A [SEP]")?
            .try_pair("[CLS] $A [SEP] $B:1 [SEP]:1")?
            .special_tokens(vec![("[CLS]", 2), ("[SEP]", 3)])
            .build()?,
    ));
    tokenizer.with_decoder(Some(WordPieceDecoder::new("##".to_string(), true)));
    let specials: Vec<AddedToken> = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
        .into_iter()
        .map(|t| AddedToken::from(t, true))
        .collect();
    tokenizer.add_special_tokens(specials)?;
    Ok(tokenizer)
}

/// Writes a tiny BERT encoder (`config.json`, `model.safetensors`,
/// `tokenizer.json`) into `dir`, using Hugging Face tensor names.
pub fn write_tiny_bert(dir: &Path, seed: u64) -> TestingResult<()> {
    fs::create_dir_all(dir)?;
    let tokenizer = bert_tokenizer()?;
    let vocab_size = tokenizer.get_vocab_size(true);
    tokenizer.save(dir.join("tokenizer.json"), false)?;

    write_json(
        &dir.join("config.json"),
        &json!({
            "architectures": ["BertModel"],
            "model_type": "bert",
            "vocab_size": vocab_size,
            "hidden_size": HIDDEN,
            "num_hidden_layers": LAYERS,
            "num_attention_heads": HEADS,
            "intermediate_size": INTERMEDIATE,
            "max_position_embeddings": BERT_MAX_POSITIONS,
            "type_vocab_size": BERT_TYPE_VOCAB,
            "layer_norm_eps": 1e-12,
            "hidden_act": "gelu",
            "hidden_dropout_prob": 0.1,
            "attention_probs_dropout_prob": 0.1,
            "initializer_range": 0.02,
            "pad_token_id": 0,
            "position_embedding_type": "absolute",
            "use_cache": true,
            "classifier_dropout": null,
            "torch_dtype": "float32"
        }),
    )?;

    let mut init = Init::new(seed);
    let mut t: Vec<(String, Tensor)> = vec![
        (
            "embeddings.word_embeddings.weight".into(),
            init.matrix(vocab_size, HIDDEN)?,
        ),
        (
            "embeddings.position_embeddings.weight".into(),
            init.matrix(BERT_MAX_POSITIONS, HIDDEN)?,
        ),
        (
            "embeddings.token_type_embeddings.weight".into(),
            init.matrix(BERT_TYPE_VOCAB, HIDDEN)?,
        ),
        ("embeddings.LayerNorm.weight".into(), ones(HIDDEN)?),
        ("embeddings.LayerNorm.bias".into(), zeros(HIDDEN)?),
    ];
    for i in 0..LAYERS {
        let p = format!("encoder.layer.{i}");
        for proj in ["query", "key", "value"] {
            let w = init.matrix(HIDDEN, HIDDEN)?;
            t.push((format!("{p}.attention.self.{proj}.weight"), w));
            t.push((format!("{p}.attention.self.{proj}.bias"), zeros(HIDDEN)?));
        }
        let w = init.matrix(HIDDEN, HIDDEN)?;
        t.push((format!("{p}.attention.output.dense.weight"), w));
        t.push((format!("{p}.attention.output.dense.bias"), zeros(HIDDEN)?));
        t.push((
            format!("{p}.attention.output.LayerNorm.weight"),
            ones(HIDDEN)?,
        ));
        t.push((
            format!("{p}.attention.output.LayerNorm.bias"),
            zeros(HIDDEN)?,
        ));
        let w = init.matrix(INTERMEDIATE, HIDDEN)?;
        t.push((format!("{p}.intermediate.dense.weight"), w));
        t.push((format!("{p}.intermediate.dense.bias"), zeros(INTERMEDIATE)?));
        let w = init.matrix(HIDDEN, INTERMEDIATE)?;
        t.push((format!("{p}.output.dense.weight"), w));
        t.push((format!("{p}.output.dense.bias"), zeros(HIDDEN)?));
        t.push((format!("{p}.output.LayerNorm.weight"), ones(HIDDEN)?));
        t.push((format!("{p}.output.LayerNorm.bias"), zeros(HIDDEN)?));
    }
    save_safetensors(t, &dir.join("model.safetensors"))
}

// ------------------------------------------------------------------ T5 ---

fn t5_vocab() -> Vec<(String, f64)> {
    let mut pieces = Vec::new();
    let mut seen = HashSet::new();
    let mut add = |pieces: &mut Vec<(String, f64)>, piece: String, score: f64| {
        if seen.insert(piece.clone()) {
            pieces.push((piece, score));
        }
    };
    for special in ["<pad>", "</s>", "<unk>"] {
        add(&mut pieces, special.to_string(), 0.0);
    }
    // Scores are log-probabilities: whole words must beat any composition of
    // shorter pieces, so they get the highest (least negative) scores; the
    // tiny per-index offset keeps every score distinct, which keeps Viterbi
    // ties (and therefore tokenization) unambiguous.
    for (i, word) in WORDS.iter().enumerate() {
        add(&mut pieces, format!("▁{word}"), -5.0 - i as f64 * 1e-3);
    }
    add(&mut pieces, "▁".to_string(), -6.0);
    for (i, suffix) in SUFFIXES.iter().enumerate() {
        add(&mut pieces, (*suffix).to_string(), -7.0 - i as f64 * 1e-3);
    }
    // Single characters (both cases: T5 has no lowercasing normalizer) are the
    // fallback that guarantees any ASCII text is covered without `<unk>`.
    for (i, c) in printable_ascii().enumerate() {
        add(&mut pieces, c.to_string(), -10.0 - i as f64 * 1e-3);
    }
    pieces
}

fn t5_tokenizer() -> TestingResult<Tokenizer> {
    let model = Unigram::from(t5_vocab(), Some(2), false)?;
    let mut tokenizer = Tokenizer::new(model);
    tokenizer.with_pre_tokenizer(Some(Metaspace::new('▁', PrependScheme::Always, true)));
    tokenizer.with_decoder(Some(MetaspaceDecoder::new(
        '▁',
        PrependScheme::Always,
        true,
    )));
    tokenizer.with_post_processor(Some(
        TemplateProcessing::builder()
            .try_single("$A </s>")?
            .try_pair("$A </s> $B </s>")?
            .special_tokens(vec![("</s>", 1)])
            .build()?,
    ));
    let specials: Vec<AddedToken> = ["<pad>", "</s>", "<unk>"]
        .into_iter()
        .map(|t| AddedToken::from(t, true))
        .collect();
    tokenizer.add_special_tokens(specials)?;
    Ok(tokenizer)
}

/// Writes a tiny T5 encoder (`config.json`, `model.safetensors`,
/// `tokenizer.json`) into `dir`, using Hugging Face tensor names. Only the
/// encoder weights are written, as for a `T5EncoderModel` checkpoint.
pub fn write_tiny_t5(dir: &Path, seed: u64) -> TestingResult<()> {
    fs::create_dir_all(dir)?;
    let tokenizer = t5_tokenizer()?;
    let vocab_size = tokenizer.get_vocab_size(true);
    tokenizer.save(dir.join("tokenizer.json"), false)?;

    write_json(
        &dir.join("config.json"),
        &json!({
            "architectures": ["T5EncoderModel"],
            "model_type": "t5",
            "vocab_size": vocab_size,
            "d_model": HIDDEN,
            "d_kv": T5_D_KV,
            "d_ff": INTERMEDIATE,
            "num_layers": LAYERS,
            "num_decoder_layers": LAYERS,
            "num_heads": HEADS,
            "relative_attention_num_buckets": T5_BUCKETS,
            "relative_attention_max_distance": 128,
            "dropout_rate": 0.1,
            "layer_norm_epsilon": 1e-6,
            "initializer_factor": 1.0,
            "feed_forward_proj": "gated-gelu",
            "dense_act_fn": "gelu_new",
            "is_gated_act": true,
            "tie_word_embeddings": false,
            "is_encoder_decoder": true,
            "use_cache": true,
            "pad_token_id": 0,
            "eos_token_id": 1,
            "decoder_start_token_id": 0,
            "torch_dtype": "float32"
        }),
    )?;

    let inner = HEADS * T5_D_KV;
    let mut init = Init::new(seed);
    let mut t: Vec<(String, Tensor)> =
        vec![("shared.weight".into(), init.matrix(vocab_size, HIDDEN)?)];
    for i in 0..LAYERS {
        let p = format!("encoder.block.{i}.layer");
        for proj in ["q", "k", "v"] {
            let w = init.matrix(inner, HIDDEN)?;
            t.push((format!("{p}.0.SelfAttention.{proj}.weight"), w));
        }
        let w = init.matrix(HIDDEN, inner)?;
        t.push((format!("{p}.0.SelfAttention.o.weight"), w));
        // T5 shares the relative position bias of block 0 with all blocks,
        // so only block 0 stores it.
        if i == 0 {
            let w = init.matrix(T5_BUCKETS, HEADS)?;
            t.push((
                format!("{p}.0.SelfAttention.relative_attention_bias.weight"),
                w,
            ));
        }
        t.push((format!("{p}.0.layer_norm.weight"), ones(HIDDEN)?));
        let w = init.matrix(INTERMEDIATE, HIDDEN)?;
        t.push((format!("{p}.1.DenseReluDense.wi_0.weight"), w));
        let w = init.matrix(INTERMEDIATE, HIDDEN)?;
        t.push((format!("{p}.1.DenseReluDense.wi_1.weight"), w));
        let w = init.matrix(HIDDEN, INTERMEDIATE)?;
        t.push((format!("{p}.1.DenseReluDense.wo.weight"), w));
        t.push((format!("{p}.1.layer_norm.weight"), ones(HIDDEN)?));
    }
    t.push(("encoder.final_layer_norm.weight".into(), ones(HIDDEN)?));
    save_safetensors(t, &dir.join("model.safetensors"))
}

// --------------------------------------------------------------- llama ---

/// GPT-2's reversible byte → printable-char table (`bytes_to_unicode`);
/// reimplemented because the tokenizers crate keeps its copy private.
fn byte_to_char() -> [char; 256] {
    let mut table = ['\0'; 256];
    let mut next = 256u32;
    for (b, slot) in table.iter_mut().enumerate() {
        let printable = (33..=126).contains(&b) || (161..=172).contains(&b) || b >= 174;
        *slot = if printable {
            char::from(b as u8)
        } else {
            let c = char::from_u32(next).unwrap_or('\0');
            next += 1;
            c
        };
    }
    table
}

/// The tiny llama's byte-level BPE vocabulary (index = token id) and merges.
///
/// Merges are learned with a minimal, fully deterministic BPE over the
/// prompt word list (each word both at sentence start and after a space),
/// running until every word is a single token. Ties are broken by the
/// lexicographically smallest pair so the result never depends on hash
/// order. Learning (rather than naively chaining merges per word) matters:
/// BPE applies merges by rank, so hand-chained merges from different words
/// interfere and leave words split.
fn llama_vocab_and_merges() -> (Vec<String>, Vec<(String, String)>) {
    let table = byte_to_char();
    let mut vocab: Vec<String> = LLAMA_SPECIALS.iter().map(|s| s.to_string()).collect();
    vocab.extend(table.iter().map(|c| c.to_string()));

    let space = table[b' ' as usize];
    let mut words: Vec<Vec<String>> = Vec::new();
    for word in WORDS.iter().chain(SUFFIXES) {
        let chars: Vec<String> = word
            .bytes()
            .map(|b| table[b as usize].to_string())
            .collect();
        let mut spaced = vec![space.to_string()];
        spaced.extend(chars.iter().cloned());
        words.push(chars);
        words.push(spaced);
    }

    let mut merges = Vec::new();
    loop {
        let mut counts: BTreeMap<(&str, &str), usize> = BTreeMap::new();
        for w in &words {
            for pair in w.windows(2) {
                *counts
                    .entry((pair[0].as_str(), pair[1].as_str()))
                    .or_default() += 1;
            }
        }
        // max_by_key returns the last maximum, so iterate in reverse to get
        // the lexicographically smallest among equally frequent pairs.
        let Some(((a, b), _)) = counts.iter().rev().max_by_key(|(_, n)| **n) else {
            break;
        };
        let (a, b) = (a.to_string(), b.to_string());
        let merged = format!("{a}{b}");
        for w in &mut words {
            let mut out = Vec::with_capacity(w.len());
            let mut i = 0;
            while i < w.len() {
                if i + 1 < w.len() && w[i] == a && w[i + 1] == b {
                    out.push(merged.clone());
                    i += 2;
                } else {
                    out.push(std::mem::take(&mut w[i]));
                    i += 1;
                }
            }
            *w = out;
        }
        vocab.push(merged);
        merges.push((a, b));
    }
    (vocab, merges)
}

fn llama_tokenizer() -> TestingResult<Tokenizer> {
    let (tokens, merges) = llama_vocab_and_merges();
    let vocab: BpeVocab = tokens
        .into_iter()
        .enumerate()
        .map(|(i, t)| (t, i as u32))
        .collect();
    let model = BPE::builder().vocab_and_merges(vocab, merges).build()?;
    let mut tokenizer = Tokenizer::new(model);
    tokenizer.with_pre_tokenizer(Some(ByteLevel::new(false, true, true)));
    tokenizer.with_post_processor(Some(ByteLevel::new(false, false, true)));
    tokenizer.with_decoder(Some(ByteLevelDecoder::default()));
    let specials: Vec<AddedToken> = LLAMA_SPECIALS
        .iter()
        .map(|t| AddedToken::from(*t, true))
        .collect();
    tokenizer.add_special_tokens(specials)?;
    Ok(tokenizer)
}

/// Llama weights with Hugging Face names, in a fixed generation order.
fn llama_weights(seed: u64, vocab_size: usize) -> TestingResult<Vec<(String, Tensor)>> {
    let head_dim = HIDDEN / HEADS;
    let kv_dim = LLAMA_KV_HEADS * head_dim;
    let mut init = Init::new(seed);
    let mut t: Vec<(String, Tensor)> = vec![(
        "model.embed_tokens.weight".into(),
        init.matrix(vocab_size, HIDDEN)?,
    )];
    for i in 0..LAYERS {
        let p = format!("model.layers.{i}");
        t.push((format!("{p}.input_layernorm.weight"), ones(HIDDEN)?));
        t.push((
            format!("{p}.self_attn.q_proj.weight"),
            init.matrix(HIDDEN, HIDDEN)?,
        ));
        t.push((
            format!("{p}.self_attn.k_proj.weight"),
            init.matrix(kv_dim, HIDDEN)?,
        ));
        t.push((
            format!("{p}.self_attn.v_proj.weight"),
            init.matrix(kv_dim, HIDDEN)?,
        ));
        t.push((
            format!("{p}.self_attn.o_proj.weight"),
            init.matrix(HIDDEN, HIDDEN)?,
        ));
        t.push((
            format!("{p}.post_attention_layernorm.weight"),
            ones(HIDDEN)?,
        ));
        let w = init.matrix(INTERMEDIATE, HIDDEN)?;
        t.push((format!("{p}.mlp.gate_proj.weight"), w));
        t.push((
            format!("{p}.mlp.up_proj.weight"),
            init.matrix(INTERMEDIATE, HIDDEN)?,
        ));
        let w = init.matrix(HIDDEN, INTERMEDIATE)?;
        t.push((format!("{p}.mlp.down_proj.weight"), w));
    }
    t.push(("model.norm.weight".into(), ones(HIDDEN)?));
    t.push(("lm_head.weight".into(), init.matrix(vocab_size, HIDDEN)?));
    Ok(t)
}

/// Writes a tiny Llama causal LM (`config.json`, `model.safetensors`,
/// `tokenizer.json`) into `dir`, using Hugging Face tensor names and a
/// GPT-2-style byte-level BPE tokenizer with `<|endoftext|>` (0),
/// `<|im_start|>` (1, BOS) and `<|im_end|>` (2, EOS) as special tokens.
pub fn write_tiny_llama(dir: &Path, seed: u64) -> TestingResult<()> {
    fs::create_dir_all(dir)?;
    let tokenizer = llama_tokenizer()?;
    let vocab_size = tokenizer.get_vocab_size(true);
    tokenizer.save(dir.join("tokenizer.json"), false)?;

    write_json(
        &dir.join("config.json"),
        &json!({
            "architectures": ["LlamaForCausalLM"],
            "model_type": "llama",
            "vocab_size": vocab_size,
            "hidden_size": HIDDEN,
            "intermediate_size": INTERMEDIATE,
            "num_hidden_layers": LAYERS,
            "num_attention_heads": HEADS,
            "num_key_value_heads": LLAMA_KV_HEADS,
            "hidden_act": "silu",
            "rms_norm_eps": 1e-5,
            "rope_theta": 10000.0,
            "max_position_embeddings": LLAMA_MAX_POSITIONS,
            "tie_word_embeddings": false,
            "bos_token_id": LLAMA_BOS_ID,
            "eos_token_id": LLAMA_EOS_ID,
            "pad_token_id": LLAMA_EOS_ID,
            "torch_dtype": "float32"
        }),
    )?;
    save_safetensors(
        llama_weights(seed, vocab_size)?,
        &dir.join("model.safetensors"),
    )
}

// ---------------------------------------------------------- checkpoint ---

/// prip.toml of the tiny checkpoint written by [`write_tiny_checkpoint`]: tiny BERT in
/// `enc/`, tiny GGUF llama in `dec.gguf`, a one-layer pivot former of 4 x 32.
pub const TINY_MANIFEST: &str = r#"format = 1
name = "tiny"

[encoder]
model = "enc"

[decoder]
model = "dec.gguf"

[pivot]
num_queries = 4
d_pivot = 32
n_layers = 1
n_heads = 4
mlp_ratio = 2
"#;

/// Writes a complete tiny PRIP checkpoint into `dir`: [`TINY_MANIFEST`] followed by
/// `extra` (more TOML tables), the tiny BERT encoder and the tiny GGUF decoder.
pub fn write_tiny_checkpoint(dir: &Path, extra: &str) -> TestingResult<()> {
    write_tiny_bert(&dir.join("enc"), 1)?;
    write_tiny_gguf(&dir.join("dec.gguf"), 2)?;
    fs::write(dir.join("prip.toml"), format!("{TINY_MANIFEST}{extra}"))?;
    Ok(())
}

/// Asserts that every variable receives a gradient with a non-zero entry from `grads`:
/// candle's fused ops have no backward and would silently leave parameters untrained.
pub fn assert_all_vars_get_gradients(
    vars: &[(String, candle_core::Var)],
    grads: &candle_core::backprop::GradStore,
) {
    assert!(!vars.is_empty());
    for (name, v) in vars {
        let g = grads
            .get(v.as_tensor())
            .unwrap_or_else(|| panic!("{name} got no gradient"));
        let mag = g
            .abs()
            .and_then(|a| a.sum_all())
            .and_then(|s| s.to_scalar::<f32>())
            .unwrap();
        assert!(mag > 0.0, "{name} has an all-zero gradient");
    }
}

// ---------------------------------------------------------------- GGUF ---

/// Converts an HF q/k projection from rotate-half RoPE layout to GGUF's
/// interleaved layout, exactly like llama.cpp's `convert_hf_to_gguf.py`
/// `permute`, so the GGUF file computes the same function as the safetensors
/// checkpoint written with the same seed.
fn permute_for_gguf(w: &Tensor, n_head: usize) -> TestingResult<Tensor> {
    let (rows, cols) = w.dims2()?;
    Ok(w.reshape((n_head, 2, rows / n_head / 2, cols))?
        .transpose(1, 2)?
        .contiguous()?
        .reshape((rows, cols))?)
}

/// Maps an HF llama tensor name to its GGUF name; `None` for tensors that
/// have no GGUF counterpart here.
fn gguf_name(hf: &str) -> Option<String> {
    let fixed = match hf {
        "model.embed_tokens.weight" => Some("token_embd.weight"),
        "model.norm.weight" => Some("output_norm.weight"),
        "lm_head.weight" => Some("output.weight"),
        _ => None,
    };
    if let Some(name) = fixed {
        return Some(name.to_string());
    }
    let rest = hf.strip_prefix("model.layers.")?;
    let (layer, suffix) = rest.split_once('.')?;
    let gguf = match suffix {
        "input_layernorm.weight" => "attn_norm.weight",
        "self_attn.q_proj.weight" => "attn_q.weight",
        "self_attn.k_proj.weight" => "attn_k.weight",
        "self_attn.v_proj.weight" => "attn_v.weight",
        "self_attn.o_proj.weight" => "attn_output.weight",
        "post_attention_layernorm.weight" => "ffn_norm.weight",
        "mlp.gate_proj.weight" => "ffn_gate.weight",
        "mlp.up_proj.weight" => "ffn_up.weight",
        "mlp.down_proj.weight" => "ffn_down.weight",
        _ => return None,
    };
    Some(format!("blk.{layer}.{gguf}"))
}

fn write_gguf(path: &Path, seed: u64, with_output: bool) -> TestingResult<()> {
    let (tokens, merges) = llama_vocab_and_merges();
    let vocab_size = tokens.len();

    let mut tensors: Vec<(String, QTensor)> = Vec::new();
    for (hf, w) in llama_weights(seed, vocab_size)? {
        let Some(name) = gguf_name(&hf) else { continue };
        if name == "output.weight" && !with_output {
            continue;
        }
        let w = if hf.ends_with("q_proj.weight") {
            permute_for_gguf(&w, HEADS)?
        } else if hf.ends_with("k_proj.weight") {
            permute_for_gguf(&w, LLAMA_KV_HEADS)?
        } else {
            w
        };
        // Norms stay F32 as llama.cpp keeps 1-D tensors unquantized; Q8_0's
        // 32-element blocks fit because every inner dim is 32 or 64.
        let dtype = if w.rank() == 1 {
            GgmlDType::F32
        } else {
            GgmlDType::Q8_0
        };
        tensors.push((name, QTensor::quantize(&w, dtype)?));
    }

    use gguf_file::Value;
    let u32v = |n: usize| Value::U32(n as u32);
    let token_types: Vec<Value> = (0..vocab_size)
        .map(|i| Value::I32(if i < LLAMA_SPECIALS.len() { 3 } else { 1 }))
        .collect();
    let metadata: Vec<(&str, Value)> = vec![
        ("general.architecture", Value::String("llama".into())),
        ("general.name", Value::String("tiny-llama".into())),
        ("llama.vocab_size", u32v(vocab_size)),
        ("llama.context_length", u32v(LLAMA_MAX_POSITIONS)),
        ("llama.embedding_length", u32v(HIDDEN)),
        ("llama.block_count", u32v(LAYERS)),
        ("llama.feed_forward_length", u32v(INTERMEDIATE)),
        ("llama.attention.head_count", u32v(HEADS)),
        ("llama.attention.head_count_kv", u32v(LLAMA_KV_HEADS)),
        ("llama.attention.layer_norm_rms_epsilon", Value::F32(1e-5)),
        ("llama.rope.freq_base", Value::F32(10000.0)),
        // candle's quantized llama requires the rotary dimension explicitly.
        ("llama.rope.dimension_count", u32v(HIDDEN / HEADS)),
        ("tokenizer.ggml.model", Value::String("gpt2".into())),
        ("tokenizer.ggml.pre", Value::String("gpt2".into())),
        (
            "tokenizer.ggml.tokens",
            Value::Array(tokens.into_iter().map(Value::String).collect()),
        ),
        (
            "tokenizer.ggml.merges",
            Value::Array(
                merges
                    .into_iter()
                    .map(|(a, b)| Value::String(format!("{a} {b}")))
                    .collect(),
            ),
        ),
        ("tokenizer.ggml.token_type", Value::Array(token_types)),
        ("tokenizer.ggml.bos_token_id", Value::U32(LLAMA_BOS_ID)),
        ("tokenizer.ggml.eos_token_id", Value::U32(LLAMA_EOS_ID)),
        ("tokenizer.ggml.padding_token_id", Value::U32(LLAMA_EOS_ID)),
        ("tokenizer.ggml.add_bos_token", Value::Bool(false)),
    ];

    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent)?;
    }
    let md: Vec<(&str, &Value)> = metadata.iter().map(|(k, v)| (*k, v)).collect();
    let ts: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let mut file = std::io::BufWriter::new(fs::File::create(path)?);
    gguf_file::write(&mut file, &md, &ts)?;
    std::io::Write::flush(&mut file)?;
    Ok(())
}

/// Writes the tiny llama as a GGUF file at `path` with tied embeddings (no
/// `output.weight`, like SmolLM2): Q8_0 matrices, F32 norms, and the same
/// byte-level BPE vocabulary and merges as [`write_tiny_llama`].
pub fn write_tiny_gguf(path: &Path, seed: u64) -> TestingResult<()> {
    write_gguf(path, seed, false)
}

/// Like [`write_tiny_gguf`] but also stores an untied `output.weight`. With
/// the same seed this is the quantized equivalent of [`write_tiny_llama`]
/// (q/k rows are permuted to GGUF's interleaved RoPE layout).
pub fn write_tiny_gguf_with_output(path: &Path, seed: u64) -> TestingResult<()> {
    write_gguf(path, seed, true)
}

/// Truncates the file at `path` to its first `keep_bytes` bytes, for tests of
/// how loaders report corrupt or partially downloaded files.
pub fn corrupt_truncate(path: &Path, keep_bytes: u64) -> TestingResult<()> {
    let file = fs::OpenOptions::new().write(true).open(path)?;
    file.set_len(keep_bytes)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const PROMPT: &str = "a little cat running in the woods";

    /// A fresh, empty directory under the system temp dir, unique per test
    /// (and per process) so parallel tests never collide.
    fn temp_dir(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("prip-testing-{}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn read_config(dir: &Path) -> serde_json::Value {
        serde_json::from_str(&fs::read_to_string(dir.join("config.json")).unwrap()).unwrap()
    }

    fn load(dir: &Path) -> HashMap<String, Tensor> {
        candle_core::safetensors::load(dir.join("model.safetensors"), &Device::Cpu).unwrap()
    }

    fn assert_deterministic(write: fn(&Path, u64) -> TestingResult<()>, name: &str) {
        let (a, b, c) = (
            temp_dir(&format!("{name}-a")),
            temp_dir(&format!("{name}-b")),
            temp_dir(&format!("{name}-c")),
        );
        write(&a, 7).unwrap();
        write(&b, 7).unwrap();
        write(&c, 8).unwrap();
        for f in ["model.safetensors", "tokenizer.json", "config.json"] {
            assert_eq!(
                fs::read(a.join(f)).unwrap(),
                fs::read(b.join(f)).unwrap(),
                "{f}"
            );
        }
        assert_ne!(
            fs::read(a.join("model.safetensors")).unwrap(),
            fs::read(c.join("model.safetensors")).unwrap()
        );
        for d in [a, b, c] {
            fs::remove_dir_all(d).unwrap();
        }
    }

    #[test]
    fn bert_reloads() {
        let dir = temp_dir("bert");
        write_tiny_bert(&dir, 1).unwrap();
        let config = read_config(&dir);
        assert_eq!(config["model_type"], "bert");
        let vocab = config["vocab_size"].as_u64().unwrap() as usize;

        let tok = Tokenizer::from_file(dir.join("tokenizer.json")).unwrap();
        assert_eq!(tok.get_vocab_size(true), vocab);
        let enc = tok
            .encode("A little cat running in the woods", true)
            .unwrap();
        assert_eq!(
            enc.get_tokens(),
            ["[CLS]", "a", "little", "cat", "running", "in", "the", "woods", "[SEP]"]
        );
        let odd = tok.encode("Zebras & 1234 jumped!? ~x", true).unwrap();
        assert!(!odd.get_ids().contains(&1), "{:?}", odd.get_tokens());

        let t = load(&dir);
        assert_eq!(t["embeddings.word_embeddings.weight"].dims(), [vocab, 32]);
        assert_eq!(t["embeddings.position_embeddings.weight"].dims(), [64, 32]);
        assert_eq!(t["embeddings.token_type_embeddings.weight"].dims(), [2, 32]);
        assert_eq!(t["encoder.layer.1.attention.self.key.bias"].dims(), [32]);
        assert_eq!(
            t["encoder.layer.1.intermediate.dense.weight"].dims(),
            [64, 32]
        );
        assert_eq!(t["encoder.layer.1.output.dense.weight"].dims(), [32, 64]);
        assert_eq!(t.len(), 5 + 2 * 16);
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn t5_reloads() {
        let dir = temp_dir("t5");
        write_tiny_t5(&dir, 1).unwrap();
        let config = read_config(&dir);
        assert_eq!(config["model_type"], "t5");
        let vocab = config["vocab_size"].as_u64().unwrap() as usize;

        let tok = Tokenizer::from_file(dir.join("tokenizer.json")).unwrap();
        assert_eq!(tok.get_vocab_size(true), vocab);
        let enc = tok.encode(PROMPT, true).unwrap();
        assert_eq!(
            enc.get_tokens(),
            [
                "▁a",
                "▁little",
                "▁cat",
                "▁running",
                "▁in",
                "▁the",
                "▁woods",
                "</s>"
            ]
        );
        let odd = tok.encode("Zebras & 1234 jumped!? ~x", true).unwrap();
        assert!(!odd.get_ids().contains(&2), "{:?}", odd.get_tokens());
        assert_eq!(tok.decode(enc.get_ids(), true).unwrap(), PROMPT);

        let t = load(&dir);
        assert_eq!(t["shared.weight"].dims(), [vocab, 32]);
        let bias = "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight";
        assert_eq!(t[bias].dims(), [32, 4]);
        assert!(!t.contains_key(&bias.replace("block.0", "block.1")));
        assert_eq!(
            t["encoder.block.1.layer.1.DenseReluDense.wo.weight"].dims(),
            [32, 64]
        );
        assert_eq!(t["encoder.final_layer_norm.weight"].dims(), [32]);
        assert_eq!(t.len(), 2 + 1 + 2 * 9);
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn llama_reloads() {
        let dir = temp_dir("llama");
        write_tiny_llama(&dir, 1).unwrap();
        let config = read_config(&dir);
        assert_eq!(config["model_type"], "llama");
        assert_eq!(config["bos_token_id"], 1);
        let vocab = config["vocab_size"].as_u64().unwrap() as usize;

        let tok = Tokenizer::from_file(dir.join("tokenizer.json")).unwrap();
        assert_eq!(tok.get_vocab_size(true), vocab);
        let enc = tok.encode(PROMPT, false).unwrap();
        assert_eq!(
            enc.get_tokens(),
            ["a", "Ġlittle", "Ġcat", "Ġrunning", "Ġin", "Ġthe", "Ġwoods"]
        );
        assert_eq!(tok.decode(enc.get_ids(), false).unwrap(), PROMPT);
        // Special tokens are matched whole, and unseen text (incl. newlines
        // and non-ASCII) falls back to bytes and round-trips.
        let chat = "<|im_start|>user\nZebras & 1234 ~ é<|im_end|>";
        let enc = tok.encode(chat, false).unwrap();
        assert_eq!(enc.get_ids()[0], LLAMA_BOS_ID);
        assert_eq!(*enc.get_ids().last().unwrap(), LLAMA_EOS_ID);
        assert!(enc.get_tokens().contains(&"Ċ".to_string()));
        assert_eq!(tok.decode(enc.get_ids(), false).unwrap(), chat);

        let t = load(&dir);
        assert_eq!(t["model.embed_tokens.weight"].dims(), [vocab, 32]);
        assert_eq!(t["model.layers.1.self_attn.k_proj.weight"].dims(), [16, 32]);
        assert_eq!(t["model.layers.1.mlp.down_proj.weight"].dims(), [32, 64]);
        assert_eq!(t["lm_head.weight"].dims(), [vocab, 32]);
        assert_eq!(t.len(), 3 + 2 * 9);
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn writers_are_deterministic() {
        assert_deterministic(write_tiny_bert, "det-bert");
        assert_deterministic(write_tiny_t5, "det-t5");
        assert_deterministic(write_tiny_llama, "det-llama");
    }

    #[test]
    fn gguf_reads_back() {
        let dir = temp_dir("gguf");
        write_tiny_llama(&dir, 3).unwrap();
        let hf_tok = Tokenizer::from_file(dir.join("tokenizer.json")).unwrap();
        let hf = load(&dir);

        for with_output in [false, true] {
            let path = dir.join(format!("tiny-{with_output}.gguf"));
            if with_output {
                write_tiny_gguf_with_output(&path, 3).unwrap();
            } else {
                write_tiny_gguf(&path, 3).unwrap();
            }
            let mut file = fs::File::open(&path).unwrap();
            let ct = gguf_file::Content::read(&mut file).unwrap();
            let md = |k: &str| ct.metadata.get(k).unwrap_or_else(|| panic!("{k}"));
            assert_eq!(md("general.architecture").to_string().unwrap(), "llama");
            assert_eq!(md("llama.block_count").to_u32().unwrap(), 2);
            assert_eq!(md("llama.attention.head_count_kv").to_u32().unwrap(), 2);
            assert_eq!(md("llama.rope.freq_base").to_f32().unwrap(), 10000.0);
            assert_eq!(md("tokenizer.ggml.eos_token_id").to_u32().unwrap(), 2);
            assert!(!md("tokenizer.ggml.add_bos_token").to_bool().unwrap());

            let tokens = md("tokenizer.ggml.tokens").to_vec().unwrap();
            assert_eq!(tokens.len(), hf_tok.get_vocab_size(true));
            assert_eq!(
                md("llama.vocab_size").to_u32().unwrap() as usize,
                tokens.len()
            );
            for (id, t) in tokens.iter().enumerate() {
                let t = t.to_string().unwrap();
                assert_eq!(hf_tok.id_to_token(id as u32).as_deref(), Some(t.as_str()));
            }
            let types = md("tokenizer.ggml.token_type").to_vec().unwrap();
            assert_eq!(types[2].to_i32().unwrap(), 3);
            assert_eq!(types[3].to_i32().unwrap(), 1);
            assert!(!md("tokenizer.ggml.merges").to_vec().unwrap().is_empty());

            let info = |n: &str| &ct.tensor_infos[n];
            assert_eq!(info("token_embd.weight").shape.dims(), [tokens.len(), 32]);
            assert_eq!(info("token_embd.weight").ggml_dtype, GgmlDType::Q8_0);
            assert_eq!(info("blk.1.attn_k.weight").shape.dims(), [16, 32]);
            assert_eq!(info("blk.1.ffn_down.weight").shape.dims(), [32, 64]);
            assert_eq!(info("blk.1.ffn_norm.weight").ggml_dtype, GgmlDType::F32);
            assert_eq!(info("output_norm.weight").shape.dims(), [32]);
            assert_eq!(ct.tensor_infos.contains_key("output.weight"), with_output);
            assert_eq!(ct.tensor_infos.len(), 2 + 2 * 9 + usize::from(with_output));

            // Same seed => same weights as the safetensors checkpoint, up to
            // Q8_0 rounding (v_proj is not RoPE-permuted, so compare it).
            let q = ct
                .tensor(&mut file, "blk.0.attn_v.weight", &Device::Cpu)
                .unwrap();
            let diff = (q.dequantize(&Device::Cpu).unwrap()
                - &hf["model.layers.0.self_attn.v_proj.weight"])
                .unwrap()
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert!(diff < 1e-3, "{diff}");
        }

        let gguf = dir.join("again.gguf");
        write_tiny_gguf(&gguf, 3).unwrap();
        assert_eq!(
            fs::read(&gguf).unwrap(),
            fs::read(dir.join("tiny-false.gguf")).unwrap()
        );
        corrupt_truncate(&gguf, 100).unwrap();
        assert_eq!(fs::metadata(&gguf).unwrap().len(), 100);
        assert!(gguf_file::Content::read(&mut fs::File::open(&gguf).unwrap()).is_err());
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn permutation_matches_llama_cpp() {
        // Rows of one head [r0..r7] become [r0,r4,r1,r5,r2,r6,r3,r7]: the
        // two rotate-half halves are interleaved pairwise.
        let w = Tensor::arange(0f32, 8.0, &Device::Cpu)
            .unwrap()
            .reshape((8, 1))
            .unwrap();
        let p = permute_for_gguf(&w, 1).unwrap();
        let v: Vec<f32> = p.flatten_all().unwrap().to_vec1().unwrap();
        assert_eq!(v, [0., 4., 1., 5., 2., 6., 3., 7.]);
    }
}
