//! Rebuild a Hugging Face [`Tokenizer`] from the `tokenizer.ggml.*` metadata of a GGUF file.
//!
//! Many GGUF files ship without a `tokenizer.json`; llama.cpp tokenizes from the metadata alone.
//! This module reproduces llama.cpp's choices (pre-tokenizer regex per `tokenizer.ggml.pre`,
//! special-token handling per `tokenizer.ggml.token_type`) with `tokenizers` building blocks so
//! the rest of the pipeline can keep using the ordinary `Tokenizer` API.
//!
//! Supported models:
//! * `gpt2`: byte-level BPE (SmolLM, Llama 3, Qwen 2, GPT-2 style vocabularies).
//! * `llama`: SentencePiece-style BPE with `▁` word boundaries and `<0xNN>` byte fallback.
//!   Merges are derived from `tokenizer.ggml.scores` when the file has none, as transformers does.

use std::collections::{HashMap, HashSet};

use candle_core::quantized::gguf_file::{Content, Value};
use tokenizers::decoders::byte_fallback::ByteFallback;
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::decoders::fuse::Fuse;
use tokenizers::decoders::sequence::Sequence as DecoderSequence;
use tokenizers::decoders::strip::Strip;
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::normalizers::replace::Replace;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::metaspace::{Metaspace, PrependScheme};
use tokenizers::pre_tokenizers::sequence::Sequence as PreTokenizerSequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::processors::template::TemplateProcessing;
use tokenizers::{
    AddedToken, DecoderWrapper, PostProcessorWrapper, PreTokenizerWrapper, SplitDelimiterBehavior,
    Tokenizer,
};

const KEY_MODEL: &str = "tokenizer.ggml.model";
const KEY_PRE: &str = "tokenizer.ggml.pre";
const KEY_TOKENS: &str = "tokenizer.ggml.tokens";
const KEY_MERGES: &str = "tokenizer.ggml.merges";
const KEY_TOKEN_TYPE: &str = "tokenizer.ggml.token_type";
const KEY_SCORES: &str = "tokenizer.ggml.scores";
const KEY_ADD_SPACE_PREFIX: &str = "tokenizer.ggml.add_space_prefix";

// Values of `tokenizer.ggml.token_type`, as defined by llama.cpp's `llama_token_type`.
const TOKEN_TYPE_UNKNOWN: i64 = 2;
const TOKEN_TYPE_CONTROL: i64 = 3;
const TOKEN_TYPE_USER_DEFINED: i64 = 4;

// llama.cpp's LLAMA3 pre-tokenizer regex (also used by HF's Llama 3 tokenizer.json).
const LLAMA3_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
// llama.cpp's QWEN2 pre-tokenizer regex: like LLAMA3 but single digits.
const QWEN2_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// Why a tokenizer could not be rebuilt from GGUF metadata.
#[derive(Debug, thiserror::Error)]
pub enum GgufTokenizerError {
    /// A required metadata key is absent.
    #[error("GGUF metadata key `{0}` is missing")]
    MissingKey(String),
    /// A metadata key holds a value of an unexpected type.
    #[error("GGUF metadata key `{key}` should be {expected}, found {found}")]
    WrongType {
        /// The offending key (array elements are reported as `key[index]`).
        key: String,
        /// The type this module needs.
        expected: &'static str,
        /// The GGUF type actually stored.
        found: String,
    },
    /// `tokenizer.ggml.model` names a tokenizer family this module cannot rebuild.
    #[error("unsupported GGUF tokenizer model `{0}` (supported: gpt2, llama)")]
    UnsupportedModel(String),
    /// `tokenizer.ggml.pre` names a pre-tokenizer whose regex is not reproduced here.
    #[error("unsupported GGUF pre-tokenizer `{0}`")]
    UnsupportedPreTokenizer(String),
    /// A per-token array does not have one entry per token.
    #[error("GGUF metadata key `{key}` has {found} entries but there are {expected} tokens")]
    LengthMismatch {
        /// The per-token array key.
        key: &'static str,
        /// Number of tokens in `tokenizer.ggml.tokens`.
        expected: usize,
        /// Number of entries in the array.
        found: usize,
    },
    /// The same token string appears twice, so one id would be unreachable.
    #[error("token `{token}` appears twice in the vocabulary (ids {first} and {second})")]
    DuplicateToken {
        /// The repeated token text.
        token: String,
        /// Its first id.
        first: u32,
        /// Its repeated id.
        second: u32,
    },
    /// A merge rule is not two space-separated tokens.
    #[error("merge #{index} `{merge}` is not two space-separated tokens")]
    MalformedMerge {
        /// Position in `tokenizer.ggml.merges`.
        index: usize,
        /// The merge rule text.
        merge: String,
    },
    /// A merge rule refers to (or produces) a token missing from the vocabulary.
    #[error("merge #{index} `{merge}` refers to unknown token `{token}`")]
    UnknownMergeToken {
        /// Position in `tokenizer.ggml.merges`.
        index: usize,
        /// The merge rule text.
        merge: String,
        /// The token that is not in `tokenizer.ggml.tokens`.
        token: String,
    },
    /// A special-token id points outside the vocabulary.
    #[error(
        "GGUF metadata key `{key}` is token id {id}, but the vocabulary has {vocab_size} tokens"
    )]
    SpecialTokenOutOfRange {
        /// The special-token id key.
        key: &'static str,
        /// The stored id.
        id: u32,
        /// Number of tokens.
        vocab_size: usize,
    },
    /// The `tokenizers` crate rejected the assembled components.
    #[error("failed to assemble tokenizer: {0}")]
    Build(String),
}

/// Special token ids and BOS/EOS policy read from `tokenizer.ggml.*` metadata.
///
/// Ids that are absent, negative or not integers are `None`: llama.cpp treats them as unset.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SpecialTokens {
    /// `tokenizer.ggml.bos_token_id`.
    pub bos: Option<u32>,
    /// `tokenizer.ggml.eos_token_id`.
    pub eos: Option<u32>,
    /// `tokenizer.ggml.unknown_token_id`.
    pub unk: Option<u32>,
    /// `tokenizer.ggml.padding_token_id`.
    pub pad: Option<u32>,
    /// `tokenizer.ggml.seperator_token_id` (llama.cpp's spelling).
    pub sep: Option<u32>,
    /// `tokenizer.ggml.cls_token_id`.
    pub cls: Option<u32>,
    /// `tokenizer.ggml.mask_token_id`.
    pub mask: Option<u32>,
    /// `tokenizer.ggml.eot_token_id` (end of turn, e.g. `<|im_end|>` or `<|eot_id|>`).
    pub eot: Option<u32>,
    /// `tokenizer.ggml.add_bos_token`, or llama.cpp's default for the model when absent.
    pub add_bos: bool,
    /// `tokenizer.ggml.add_eos_token`, default `false`.
    pub add_eos: bool,
}

const SPECIAL_ID_KEYS: [&str; 8] = [
    "tokenizer.ggml.bos_token_id",
    "tokenizer.ggml.eos_token_id",
    "tokenizer.ggml.unknown_token_id",
    "tokenizer.ggml.padding_token_id",
    "tokenizer.ggml.seperator_token_id",
    "tokenizer.ggml.cls_token_id",
    "tokenizer.ggml.mask_token_id",
    "tokenizer.ggml.eot_token_id",
];

impl SpecialTokens {
    fn ids_with_keys(&self) -> [(&'static str, Option<u32>); 8] {
        let ids = [
            self.bos, self.eos, self.unk, self.pad, self.sep, self.cls, self.mask, self.eot,
        ];
        std::array::from_fn(|i| (SPECIAL_ID_KEYS[i], ids[i]))
    }
}

/// Read special token ids and the BOS/EOS policy from GGUF metadata.
///
/// Lenient by design: a malformed entry is reported as unset rather than failing, because these
/// values only steer prompting and llama.cpp ignores them the same way.
pub fn special_tokens(content: &Content) -> SpecialTokens {
    let id = |key: &str| {
        content
            .metadata
            .get(key)
            .and_then(as_i64)
            .and_then(|v| u32::try_from(v).ok())
    };
    let flag = |key: &str| match content.metadata.get(key) {
        Some(Value::Bool(b)) => Some(*b),
        _ => None,
    };
    let default_add_bos = match content.metadata.get(KEY_MODEL) {
        Some(Value::String(model)) if model == "llama" => true,
        Some(Value::String(model)) if model == "gpt2" => match content.metadata.get(KEY_PRE) {
            Some(Value::String(pre)) => matches!(pre_kind(pre), Some(PreKind::Llama3)),
            _ => false,
        },
        _ => false,
    };
    SpecialTokens {
        bos: id(SPECIAL_ID_KEYS[0]),
        eos: id(SPECIAL_ID_KEYS[1]),
        unk: id(SPECIAL_ID_KEYS[2]),
        pad: id(SPECIAL_ID_KEYS[3]),
        sep: id(SPECIAL_ID_KEYS[4]),
        cls: id(SPECIAL_ID_KEYS[5]),
        mask: id(SPECIAL_ID_KEYS[6]),
        eot: id(SPECIAL_ID_KEYS[7]),
        add_bos: flag("tokenizer.ggml.add_bos_token").unwrap_or(default_add_bos),
        add_eos: flag("tokenizer.ggml.add_eos_token").unwrap_or(false),
    }
}

/// Build a [`Tokenizer`] equivalent to llama.cpp's tokenizer for this GGUF file.
///
/// Control, unknown and user-defined tokens (and every token named by a special-token id) become
/// added tokens, so chat markers such as `<|im_start|>` encode to a single id. Control/unknown
/// ones are marked special (dropped by `decode(.., skip_special_tokens = true)`); user-defined
/// ones are not, matching llama.cpp's detokenizer. With `add_special_tokens = true` the BOS/EOS
/// policy of [`special_tokens`] is applied.
pub fn tokenizer_from_gguf(content: &Content) -> Result<Tokenizer, GgufTokenizerError> {
    let model = get_string(content, KEY_MODEL)?;
    let tokens = get_string_array(content, KEY_TOKENS)?;
    let token_types = match content.metadata.get(KEY_TOKEN_TYPE) {
        Some(value) => {
            let types = int_array(KEY_TOKEN_TYPE, value)?;
            check_len(KEY_TOKEN_TYPE, tokens.len(), types.len())?;
            types
        }
        // Files without types still work; special ids below are made atomic regardless.
        None => vec![1; tokens.len()],
    };
    let special = special_tokens(content);
    for (key, id) in special.ids_with_keys() {
        if let Some(id) = id {
            if id as usize >= tokens.len() {
                return Err(GgufTokenizerError::SpecialTokenOutOfRange {
                    key,
                    id,
                    vocab_size: tokens.len(),
                });
            }
        }
    }

    let vocab = build_vocab(&tokens)?;
    let mut tokenizer = match model.as_str() {
        "gpt2" => byte_level_bpe(content, &tokens, &vocab)?,
        "llama" => sentencepiece_bpe(content, &tokens, &token_types, &vocab, &special)?,
        other => return Err(GgufTokenizerError::UnsupportedModel(other.to_string())),
    };

    let special_ids: HashSet<u32> = special
        .ids_with_keys()
        .iter()
        .filter_map(|(_, id)| *id)
        .collect();
    let mut added = Vec::new();
    for (id, (token, ty)) in tokens.iter().zip(&token_types).enumerate() {
        let id = id as u32;
        let is_special =
            special_ids.contains(&id) || matches!(*ty, TOKEN_TYPE_CONTROL | TOKEN_TYPE_UNKNOWN);
        if is_special || *ty == TOKEN_TYPE_USER_DEFINED {
            // GGUF stores added tokens as raw text, so they must bypass normalization.
            added.push(AddedToken::from(token.clone(), is_special).normalized(false));
        }
    }
    // The ids already exist in the BPE vocabulary, so AddedVocabulary reuses them.
    tokenizer.add_tokens(added).map_err(build_err)?;

    if let Some(post) = bos_eos_template(&tokens, &special)? {
        tokenizer.with_post_processor(Some(post));
    }
    Ok(tokenizer)
}

/// Pre-tokenizer families that llama.cpp distinguishes for `gpt2` vocabularies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PreKind {
    Gpt2,
    Smollm,
    Llama3,
    Qwen2,
}

// Names follow llama.cpp's `tokenizer_pre` mapping in llama-vocab.cpp.
fn pre_kind(pre: &str) -> Option<PreKind> {
    Some(match pre {
        "default" | "gpt2" | "gpt-2" | "phi-2" | "mpt" | "olmo" | "jais" => PreKind::Gpt2,
        "smollm" | "starcoder" | "refact" | "command-r" | "codeshell" | "exaone" | "minerva-7b" => {
            PreKind::Smollm
        }
        "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "pixtral" => PreKind::Llama3,
        "qwen2" | "deepseek-r1-qwen" | "megrez" => PreKind::Qwen2,
        _ => return None,
    })
}

fn byte_level_bpe(
    content: &Content,
    tokens: &[String],
    vocab: &HashMap<&str, u32>,
) -> Result<Tokenizer, GgufTokenizerError> {
    let kind = match content.metadata.get(KEY_PRE) {
        None => PreKind::Gpt2,
        Some(Value::String(pre)) => {
            pre_kind(pre).ok_or_else(|| GgufTokenizerError::UnsupportedPreTokenizer(pre.clone()))?
        }
        Some(other) => return Err(wrong_type(KEY_PRE, "a string", other)),
    };
    let merges = parse_merges(&get_string_array(content, KEY_MERGES)?, vocab)?;

    let bpe = BPE::builder()
        .vocab_and_merges(owned_vocab(tokens), merges)
        // llama.cpp skips merging when a whole pre-token is already in the vocabulary, but
        // only for Llama 3 style vocabularies.
        .ignore_merges(kind == PreKind::Llama3)
        .build()
        .map_err(build_err)?;

    let pre_tokenizer: PreTokenizerWrapper = match kind {
        // ByteLevel's built-in regex is the GPT-2 regex llama.cpp uses.
        PreKind::Gpt2 => ByteLevel::new(false, true, true).into(),
        PreKind::Smollm => PreTokenizerSequence::new(vec![
            Digits::new(true).into(),
            ByteLevel::new(false, true, true).into(),
        ])
        .into(),
        PreKind::Llama3 | PreKind::Qwen2 => {
            let regex = if kind == PreKind::Llama3 {
                LLAMA3_REGEX
            } else {
                QWEN2_REGEX
            };
            let split = Split::new(
                SplitPattern::Regex(regex.to_string()),
                SplitDelimiterBehavior::Isolated,
                false,
            )
            .map_err(build_err)?;
            PreTokenizerSequence::new(vec![
                split.into(),
                ByteLevel::new(false, false, false).into(),
            ])
            .into()
        }
    };

    let mut tokenizer = Tokenizer::new(bpe);
    tokenizer.with_pre_tokenizer(Some(pre_tokenizer));
    tokenizer.with_decoder(Some(ByteLevelDecoder::default()));
    Ok(tokenizer)
}

fn sentencepiece_bpe(
    content: &Content,
    tokens: &[String],
    token_types: &[i64],
    vocab: &HashMap<&str, u32>,
    special: &SpecialTokens,
) -> Result<Tokenizer, GgufTokenizerError> {
    let merges = match content.metadata.get(KEY_MERGES) {
        Some(_) => parse_merges(&get_string_array(content, KEY_MERGES)?, vocab)?,
        None => {
            let value = content
                .metadata
                .get(KEY_SCORES)
                .ok_or_else(|| GgufTokenizerError::MissingKey(KEY_SCORES.to_string()))?;
            let scores = f32_array(KEY_SCORES, value)?;
            check_len(KEY_SCORES, tokens.len(), scores.len())?;
            merges_from_scores(tokens, token_types, &scores, vocab)
        }
    };
    let mut builder = BPE::builder()
        .vocab_and_merges(owned_vocab(tokens), merges)
        .byte_fallback(true)
        .fuse_unk(true);
    if let Some(unk) = special.unk {
        builder = builder.unk_token(tokens[unk as usize].clone());
    }
    let bpe = builder.build().map_err(build_err)?;

    let add_space_prefix = match content.metadata.get(KEY_ADD_SPACE_PREFIX) {
        None => true,
        Some(Value::Bool(b)) => *b,
        Some(other) => return Err(wrong_type(KEY_ADD_SPACE_PREFIX, "a bool", other)),
    };
    // `First` prepends `▁` once at the start of the text, like llama.cpp, instead of after
    // every added token as the legacy normalizer did.
    let scheme = if add_space_prefix {
        PrependScheme::First
    } else {
        PrependScheme::Never
    };
    let mut decoders: Vec<DecoderWrapper> = vec![
        Replace::new("▁", " ").map_err(build_err)?.into(),
        ByteFallback::new().into(),
        Fuse::new().into(),
    ];
    if add_space_prefix {
        decoders.push(Strip::new(' ', 1, 0).into());
    }

    let mut tokenizer = Tokenizer::new(bpe);
    tokenizer.with_pre_tokenizer(Some(Metaspace::new('▁', scheme, false)));
    tokenizer.with_decoder(Some(DecoderSequence::new(decoders)));
    Ok(tokenizer)
}

fn build_vocab(tokens: &[String]) -> Result<HashMap<&str, u32>, GgufTokenizerError> {
    let mut vocab = HashMap::with_capacity(tokens.len());
    for (id, token) in tokens.iter().enumerate() {
        if let Some(first) = vocab.insert(token.as_str(), id as u32) {
            return Err(GgufTokenizerError::DuplicateToken {
                token: token.clone(),
                first,
                second: id as u32,
            });
        }
    }
    Ok(vocab)
}

fn owned_vocab(tokens: &[String]) -> Vocab {
    tokens
        .iter()
        .enumerate()
        .map(|(id, token)| (token.clone(), id as u32))
        .collect()
}

// Validated here rather than left to `BPE::build`, whose error does not say which rule is bad.
fn parse_merges(
    merges: &[String],
    vocab: &HashMap<&str, u32>,
) -> Result<Vec<(String, String)>, GgufTokenizerError> {
    merges
        .iter()
        .enumerate()
        .map(|(index, merge)| {
            let (left, right) = merge
                .split_once(' ')
                .filter(|(l, r)| !l.is_empty() && !r.is_empty() && !r.contains(' '))
                .ok_or_else(|| GgufTokenizerError::MalformedMerge {
                    index,
                    merge: merge.clone(),
                })?;
            let merged = format!("{left}{right}");
            for token in [left, right, merged.as_str()] {
                if !vocab.contains_key(token) {
                    return Err(GgufTokenizerError::UnknownMergeToken {
                        index,
                        merge: merge.clone(),
                        token: token.to_string(),
                    });
                }
            }
            Ok((left.to_string(), right.to_string()))
        })
        .collect()
}

// SentencePiece BPE merges the pair whose result has the highest score; ranking every
// vocabulary-internal split by that score reproduces it (same scheme as transformers'
// `SentencePieceExtractor`).
fn merges_from_scores(
    tokens: &[String],
    token_types: &[i64],
    scores: &[f32],
    vocab: &HashMap<&str, u32>,
) -> Vec<(String, String)> {
    let normal = |id: u32| token_types[id as usize] == 1;
    let mut ranked = Vec::new();
    for (id, piece) in tokens.iter().enumerate() {
        if !normal(id as u32) {
            continue;
        }
        for (split, _) in piece.char_indices().skip(1) {
            let (left, right) = piece.split_at(split);
            if let (Some(&l), Some(&r)) = (vocab.get(left), vocab.get(right)) {
                if normal(l) && normal(r) {
                    ranked.push((scores[id], l, r));
                }
            }
        }
    }
    ranked.sort_by(|a, b| b.0.total_cmp(&a.0).then((a.1, a.2).cmp(&(b.1, b.2))));
    ranked
        .into_iter()
        .map(|(_, l, r)| (tokens[l as usize].clone(), tokens[r as usize].clone()))
        .collect()
}

fn bos_eos_template(
    tokens: &[String],
    special: &SpecialTokens,
) -> Result<Option<PostProcessorWrapper>, GgufTokenizerError> {
    let bos = special.bos.filter(|_| special.add_bos);
    let eos = special.eos.filter(|_| special.add_eos);
    if bos.is_none() && eos.is_none() {
        return Ok(None);
    }
    let mut single = Vec::new();
    let mut specials = Vec::new();
    if let Some(id) = bos {
        single.push(tokens[id as usize].clone());
        specials.push((tokens[id as usize].clone(), id));
    }
    single.push("$A".to_string());
    if let Some(id) = eos {
        single.push(tokens[id as usize].clone());
        specials.push((tokens[id as usize].clone(), id));
    }
    let single = single.join(" ");
    let pair = format!("{single} {}", single.replace("$A", "$B:1"));
    let template = TemplateProcessing::builder()
        .try_single(single)
        .map_err(GgufTokenizerError::Build)?
        .try_pair(pair)
        .map_err(GgufTokenizerError::Build)?
        .special_tokens(specials)
        .build()
        .map_err(build_err)?;
    Ok(Some(template.into()))
}

fn check_len(key: &'static str, expected: usize, found: usize) -> Result<(), GgufTokenizerError> {
    if expected == found {
        Ok(())
    } else {
        Err(GgufTokenizerError::LengthMismatch {
            key,
            expected,
            found,
        })
    }
}

fn build_err(e: impl std::fmt::Display) -> GgufTokenizerError {
    GgufTokenizerError::Build(e.to_string())
}

fn type_name(value: &Value) -> String {
    match value {
        Value::Array(items) => match items.first() {
            Some(first) => format!("array of {}", type_name(first)),
            None => "empty array".to_string(),
        },
        other => format!("{:?}", other.value_type()),
    }
}

fn wrong_type(key: &str, expected: &'static str, found: &Value) -> GgufTokenizerError {
    GgufTokenizerError::WrongType {
        key: key.to_string(),
        expected,
        found: type_name(found),
    }
}

fn get<'a>(content: &'a Content, key: &str) -> Result<&'a Value, GgufTokenizerError> {
    content
        .metadata
        .get(key)
        .ok_or_else(|| GgufTokenizerError::MissingKey(key.to_string()))
}

fn get_string(content: &Content, key: &str) -> Result<String, GgufTokenizerError> {
    match get(content, key)? {
        Value::String(s) => Ok(s.clone()),
        other => Err(wrong_type(key, "a string", other)),
    }
}

fn get_array<'a>(content: &'a Content, key: &str) -> Result<&'a [Value], GgufTokenizerError> {
    match get(content, key)? {
        Value::Array(items) => Ok(items),
        other => Err(wrong_type(key, "an array", other)),
    }
}

fn get_string_array(content: &Content, key: &str) -> Result<Vec<String>, GgufTokenizerError> {
    get_array(content, key)?
        .iter()
        .enumerate()
        .map(|(i, v)| match v {
            Value::String(s) => Ok(s.clone()),
            other => Err(wrong_type(&format!("{key}[{i}]"), "a string", other)),
        })
        .collect()
}

fn int_array(key: &str, value: &Value) -> Result<Vec<i64>, GgufTokenizerError> {
    let Value::Array(items) = value else {
        return Err(wrong_type(key, "an array of integers", value));
    };
    items
        .iter()
        .enumerate()
        .map(|(i, v)| as_i64(v).ok_or_else(|| wrong_type(&format!("{key}[{i}]"), "an integer", v)))
        .collect()
}

fn f32_array(key: &str, value: &Value) -> Result<Vec<f32>, GgufTokenizerError> {
    let Value::Array(items) = value else {
        return Err(wrong_type(key, "an array of floats", value));
    };
    items
        .iter()
        .enumerate()
        .map(|(i, v)| match v {
            Value::F32(f) => Ok(*f),
            Value::F64(f) => Ok(*f as f32),
            other => Err(wrong_type(&format!("{key}[{i}]"), "a float", other)),
        })
        .collect()
}

fn as_i64(value: &Value) -> Option<i64> {
    Some(match value {
        Value::U8(v) => i64::from(*v),
        Value::I8(v) => i64::from(*v),
        Value::U16(v) => i64::from(*v),
        Value::I16(v) => i64::from(*v),
        Value::U32(v) => i64::from(*v),
        Value::I32(v) => i64::from(*v),
        Value::U64(v) => i64::try_from(*v).ok()?,
        Value::I64(v) => *v,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::quantized::{gguf_file, GgmlDType, QTensor};
    use candle_core::{Device, Tensor};
    use std::io::Cursor;

    fn strings(items: &[&str]) -> Value {
        Value::Array(items.iter().map(|s| Value::String(s.to_string())).collect())
    }

    fn ints(items: &[i32]) -> Value {
        Value::Array(items.iter().map(|&i| Value::I32(i)).collect())
    }

    // Round-trips through the real GGUF writer/reader so the test sees exactly what a file on
    // disk would produce (kept in memory to avoid temp-file cleanup).
    fn content(metadata: &[(&str, Value)]) -> Content {
        let tensor = Tensor::zeros((2, 2), candle_core::DType::F32, &Device::Cpu).unwrap();
        let qtensor = QTensor::quantize(&tensor, GgmlDType::F32).unwrap();
        let refs: Vec<(&str, &Value)> = metadata.iter().map(|(k, v)| (*k, v)).collect();
        let mut buf = Cursor::new(Vec::new());
        gguf_file::write(&mut buf, &refs, &[("tiny.weight", &qtensor)]).unwrap();
        buf.set_position(0);
        let content = Content::read(&mut buf).unwrap();
        assert!(content.tensor_infos.contains_key("tiny.weight"));
        content
    }

    const BYTE_LEVEL_TOKENS: [&str; 19] = [
        "<|endoftext|>",
        "<|im_start|>",
        "<|im_end|>",
        "h",
        "i",
        "t",
        "e",
        "r",
        "Ġ",
        "Ċ",
        "1",
        "2",
        "hi",
        "Ġt",
        "he",
        "Ġthe",
        "re",
        "Ġthere",
        "12",
    ];
    const BYTE_LEVEL_MERGES: [&str; 7] = ["h i", "Ġ t", "h e", "Ġt he", "r e", "Ġthe re", "1 2"];

    fn byte_level_metadata(pre: &str) -> Vec<(&'static str, Value)> {
        let mut types = vec![1; BYTE_LEVEL_TOKENS.len()];
        types[..3].fill(3);
        vec![
            (KEY_MODEL, Value::String("gpt2".into())),
            (KEY_PRE, Value::String(pre.into())),
            (KEY_TOKENS, strings(&BYTE_LEVEL_TOKENS)),
            (KEY_TOKEN_TYPE, ints(&types)),
            (KEY_MERGES, strings(&BYTE_LEVEL_MERGES)),
            ("tokenizer.ggml.bos_token_id", Value::U32(1)),
            ("tokenizer.ggml.eos_token_id", Value::U32(2)),
            ("tokenizer.ggml.padding_token_id", Value::U32(2)),
            ("tokenizer.ggml.add_bos_token", Value::Bool(false)),
        ]
    }

    fn id_of(token: &str) -> u32 {
        BYTE_LEVEL_TOKENS.iter().position(|t| *t == token).unwrap() as u32
    }

    #[test]
    fn byte_level_encode_decode_round_trip() {
        let tok = tokenizer_from_gguf(&content(&byte_level_metadata("smollm"))).unwrap();
        let text = "<|im_start|>hi there<|im_end|>\n";
        let enc = tok.encode(text, false).unwrap();
        let expected = vec![1, id_of("hi"), id_of("Ġthere"), 2, id_of("Ċ")];
        assert_eq!(enc.get_ids(), expected.as_slice());
        assert_eq!(tok.decode(enc.get_ids(), false).unwrap(), text);
        assert_eq!(tok.decode(enc.get_ids(), true).unwrap(), "hi there\n");
        // add_bos_token = false, so no template tokens are added.
        assert_eq!(
            tok.encode(text, true).unwrap().get_ids(),
            expected.as_slice()
        );
    }

    #[test]
    fn pre_tokenizer_variant_controls_digit_splitting() {
        let smollm = tokenizer_from_gguf(&content(&byte_level_metadata("smollm"))).unwrap();
        let gpt2 = tokenizer_from_gguf(&content(&byte_level_metadata("gpt2"))).unwrap();
        let (one, two, twelve) = (id_of("1"), id_of("2"), id_of("12"));
        assert_eq!(smollm.encode("12", false).unwrap().get_ids(), [one, two]);
        assert_eq!(gpt2.encode("12", false).unwrap().get_ids(), [twelve]);
        assert_eq!(smollm.decode(&[one, two], false).unwrap(), "12");
    }

    #[test]
    fn add_bos_token_adds_bos_with_special_tokens() {
        let mut metadata = byte_level_metadata("gpt2");
        metadata.retain(|(k, _)| *k != "tokenizer.ggml.add_bos_token");
        metadata.push(("tokenizer.ggml.add_bos_token", Value::Bool(true)));
        let tok = tokenizer_from_gguf(&content(&metadata)).unwrap();
        assert_eq!(tok.encode("hi", true).unwrap().get_ids(), [1, id_of("hi")]);
        assert_eq!(tok.encode("hi", false).unwrap().get_ids(), [id_of("hi")]);
    }

    #[test]
    fn special_tokens_are_read_from_metadata() {
        let special = special_tokens(&content(&byte_level_metadata("smollm")));
        assert_eq!(
            special,
            SpecialTokens {
                bos: Some(1),
                eos: Some(2),
                pad: Some(2),
                ..SpecialTokens::default()
            }
        );
    }

    #[test]
    fn missing_tokens_key_is_reported() {
        let mut metadata = byte_level_metadata("smollm");
        metadata.retain(|(k, _)| *k != KEY_TOKENS);
        let err = tokenizer_from_gguf(&content(&metadata)).unwrap_err();
        assert!(
            matches!(&err, GgufTokenizerError::MissingKey(k) if k == KEY_TOKENS),
            "{err}"
        );
        assert_eq!(
            err.to_string(),
            "GGUF metadata key `tokenizer.ggml.tokens` is missing"
        );
    }

    #[test]
    fn merge_with_unknown_token_is_reported() {
        let mut metadata = byte_level_metadata("smollm");
        let mut merges = BYTE_LEVEL_MERGES.to_vec();
        merges.push("h x");
        metadata.retain(|(k, _)| *k != KEY_MERGES);
        metadata.push((KEY_MERGES, strings(&merges)));
        let err = tokenizer_from_gguf(&content(&metadata)).unwrap_err();
        assert!(
            matches!(&err, GgufTokenizerError::UnknownMergeToken { index: 7, token, .. } if token == "x"),
            "{err}"
        );
    }

    #[test]
    fn inconsistent_or_unsupported_metadata_is_reported() {
        let mut metadata = byte_level_metadata("smollm");
        metadata.retain(|(k, _)| *k != KEY_TOKEN_TYPE);
        metadata.push((KEY_TOKEN_TYPE, ints(&[1, 1])));
        let err = tokenizer_from_gguf(&content(&metadata)).unwrap_err();
        assert!(
            matches!(err, GgufTokenizerError::LengthMismatch { found: 2, .. }),
            "{err}"
        );

        let err = tokenizer_from_gguf(&content(&byte_level_metadata("mystery"))).unwrap_err();
        assert!(
            matches!(err, GgufTokenizerError::UnsupportedPreTokenizer(_)),
            "{err}"
        );

        let mut metadata = byte_level_metadata("smollm");
        metadata[0] = (KEY_MODEL, Value::String("bert".into()));
        let err = tokenizer_from_gguf(&content(&metadata)).unwrap_err();
        assert!(
            matches!(err, GgufTokenizerError::UnsupportedModel(_)),
            "{err}"
        );

        let mut metadata = byte_level_metadata("smollm");
        metadata[0] = (KEY_MODEL, Value::U32(2));
        let err = tokenizer_from_gguf(&content(&metadata)).unwrap_err();
        assert!(matches!(err, GgufTokenizerError::WrongType { .. }), "{err}");
    }

    #[test]
    fn sentencepiece_llama_with_byte_fallback() {
        let tokens = ["<unk>", "<s>", "</s>", "<0x0A>", "▁", "h", "i", "▁h", "▁hi"];
        let types = [2, 3, 3, 6, 1, 1, 1, 1, 1];
        let scores = [0.0, 0.0, 0.0, 0.0, -10.0, -10.0, -10.0, -2.0, -1.0];
        let metadata = vec![
            (KEY_MODEL, Value::String("llama".into())),
            (KEY_TOKENS, strings(&tokens)),
            (KEY_TOKEN_TYPE, ints(&types)),
            (
                KEY_SCORES,
                Value::Array(scores.iter().map(|&s| Value::F32(s)).collect()),
            ),
            ("tokenizer.ggml.unknown_token_id", Value::U32(0)),
            ("tokenizer.ggml.bos_token_id", Value::U32(1)),
            ("tokenizer.ggml.eos_token_id", Value::U32(2)),
        ];
        let content = content(&metadata);
        assert!(special_tokens(&content).add_bos);
        let tok = tokenizer_from_gguf(&content).unwrap();
        let enc = tok.encode("hi\n", true).unwrap();
        assert_eq!(enc.get_ids(), [1, 8, 3]);
        assert_eq!(tok.decode(enc.get_ids(), true).unwrap(), "hi\n");
    }
}
