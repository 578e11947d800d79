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
    /// A `#` comment line, up to but excluding its newline.
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
    spans: Vec<Span>,
}

impl<'a> Parsed<'a> {
    /// The prompt that was parsed.
    pub fn source(&self) -> &'a str {
        self.source
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
    /// (`cat, <lora:x:1>, dog`) are dropped, and the result is trimmed.
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
        out
    }
}
