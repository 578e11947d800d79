//! Prompt syntax for A1111 / ComfyUI / dynamic-prompts prompts.
//!
//! The refiner must keep the user's prompt byte-for-byte and only append
//! generated details, while the model must only ever see free text. This
//! module therefore provides a *lossless* tokenizer ([`parse`]) whose spans
//! tile the input exactly, the model's view of it ([`Parsed::free_text`]),
//! the place where details can be appended without breaking syntax
//! ([`insertion_point`], [`append_details`]), and sanitising of whatever the
//! model generates ([`hygiene`]).

pub mod hygiene;
mod insert;
mod lexer;
mod parse;
#[cfg(test)]
mod tests;

pub use hygiene::{ClipTokenEstimate, Hygiene, TokenCounter};
pub use insert::{append_details, insertion_point};
pub use parse::parse;

use std::ops::Range;

use serde::{Deserialize, Serialize};

/// Which program reads the prompt, and so which syntax it strips before rendering.
///
/// Most prompt syntax means the same to every reader and is protected the same way;
/// comments do not: AUTOMATIC1111 1.8+ and Forge strip everything from a `#` anywhere in
/// a line to the end of that line (`modules/processing_scripts/comments.py`), while
/// ComfyUI and plain HTTP servers render a `#` as text. Details must land where the
/// reader keeps them, so the dialect decides both what the model sees and where details
/// are inserted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Dialect {
    /// AUTOMATIC1111 / Forge: `#` starts a comment anywhere in a line. The default of
    /// `prip refine` and the C ABI, since its syntax is the superset users type.
    #[default]
    A1111,
    /// ComfyUI: no comments; `#` is text.
    #[serde(rename = "comfyui")]
    ComfyUi,
    /// A server that renders the prompt as plain text (diffusers, OpenAI images):
    /// no comments; `#` is text.
    Plain,
}

impl Dialect {
    /// The name used in JSON, configs and flags: `a1111`, `comfyui`, `plain`.
    pub fn as_str(self) -> &'static str {
        match self {
            Dialect::A1111 => "a1111",
            Dialect::ComfyUi => "comfyui",
            Dialect::Plain => "plain",
        }
    }

    /// Whether `#` starts a comment that runs to the end of its line.
    pub(crate) fn hash_comments(self) -> bool {
        self == Dialect::A1111
    }
}

impl std::fmt::Display for Dialect {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Dialect {
    type Err = String;

    /// Reads the names [`Dialect::as_str`] writes.
    fn from_str(name: &str) -> Result<Self, Self::Err> {
        match name.trim() {
            "a1111" => Ok(Dialect::A1111),
            "comfyui" => Ok(Dialect::ComfyUi),
            "plain" => Ok(Dialect::Plain),
            other => Err(format!(
                "unknown prompt dialect {other:?} (expected a1111, comfyui or plain)"
            )),
        }
    }
}

/// What a span of the prompt is, from the model's point of view.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SpanKind {
    /// Free text the model sees.
    Text,
    /// Free text of a non-first option (`b` in `{a|b}`, `[a|b]`,
    /// `[a:b:0.5]`). It is user content, but showing every option to the
    /// model would describe an image that never exists, so it is hidden.
    Alternative,
    /// Syntax kept verbatim and hidden from the model: brackets (matched or
    /// stray), weights, escapes, extra networks, wildcards, embeddings,
    /// dynamic-prompt headers and separators.
    Protected,
    /// A1111 composable-diffusion weight closing an `AND` chunk
    /// (`:1.2` in `a cat AND a dog :1.2`). Separate from
    /// [`SpanKind::Protected`] because details must be inserted before it.
    ChunkWeight,
    /// A comment of the prompt's [`Dialect`] (A1111: from `#` to the end of its line,
    /// excluding the newline).
    Comment,
    /// `BREAK` or `AND`.
    Keyword,
}

impl SpanKind {
    /// Whether the model sees this span's text.
    pub fn is_visible(self) -> bool {
        self == SpanKind::Text
    }
}

/// A classified byte range of the source prompt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Span {
    /// What the range is.
    pub kind: SpanKind,
    /// Byte range into the source; always on char boundaries.
    pub range: Range<usize>,
}

impl Span {
    /// The span's text in `src` (empty if `src` is not the parsed source).
    pub fn text<'a>(&self, src: &'a str) -> &'a str {
        src.get(self.range.clone()).unwrap_or("")
    }
}

/// Result of [`parse`]: the source and spans that tile it in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Parsed<'a> {
    source: &'a str,
    dialect: Dialect,
    spans: Vec<Span>,
}

impl<'a> Parsed<'a> {
    /// The prompt that was parsed.
    pub fn source(&self) -> &'a str {
        self.source
    }

    /// The dialect the source was parsed as.
    pub fn dialect(&self) -> Dialect {
        self.dialect
    }

    /// Spans covering the source completely, in order, without gaps.
    pub fn spans(&self) -> &[Span] {
        &self.spans
    }

    /// Text of one span of this parse.
    pub fn slice(&self, span: &Span) -> &'a str {
        span.text(self.source)
    }

    /// Byte offset where the last `BREAK`/`AND` chunk starts (0 if none).
    ///
    /// Generated details always land in this chunk, so it is the one whose
    /// token budget matters.
    pub fn last_chunk_start(&self) -> usize {
        self.spans
            .iter()
            .rev()
            .find(|s| s.kind == SpanKind::Keyword)
            .map_or(0, |s| s.range.end)
    }

    /// The text the model sees.
    ///
    /// Hidden spans become token boundaries (a space), because A1111
    /// tokenizes each attention segment separately: `a(red)fox` is three
    /// words to CLIP, not one. Whitespace runs collapse to one space, spaces
    /// before commas and empty comma items left behind by removed syntax
    /// (`cat, <lora:x:1>, dog`) are dropped, and the result is trimmed of blanks and of
    /// leading and trailing commas: the decoder appends exactly one separator itself,
    /// and a prompt ending in `, <lora:x:1>` must not end in two.
    pub fn free_text(&self) -> String {
        let mut out = String::with_capacity(self.source.len());
        let mut pending_space = false;
        for span in &self.spans {
            if !span.kind.is_visible() {
                pending_space = true;
                continue;
            }
            for c in self.slice(span).chars() {
                if c.is_whitespace() {
                    pending_space = true;
                } else if c == ',' {
                    if !out.is_empty() && !out.ends_with(',') {
                        out.push(',');
                        pending_space = false;
                    }
                } else {
                    if pending_space && !out.is_empty() {
                        out.push(' ');
                    }
                    pending_space = false;
                    out.push(c);
                }
            }
        }
        while out.ends_with([',', ' ']) {
            out.pop();
        }
        out
    }
}
