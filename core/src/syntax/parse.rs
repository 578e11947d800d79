//! Second pass: match brackets and give each lexeme its final [`SpanKind`].
//!
//! There is one recogniser for all bracket syntax: brackets are matched with
//! a stack, and each matched pair decides the role of its depth-1 separators
//! (`:`, `|`, `$$`) and of the text between them. Roles only ever escalate
//! (text -> protected, visible -> alternative), so the order in which pairs
//! are visited does not matter and nesting needs no recursion.

use super::lexer::{lex, Bracket, Lex, Lexeme};
use super::{Dialect, Parsed, Span, SpanKind};

/// Tokenises `prompt`, as read by `dialect`, into spans that tile it exactly, in order.
///
/// Never fails: malformed syntax (stray brackets, unterminated networks)
/// degrades to protected single characters or plain text.
pub fn parse(prompt: &str, dialect: Dialect) -> Parsed<'_> {
    let lexemes = lex(prompt, dialect);
    let mut roles = Roles::new(prompt, &lexemes);
    for (open, lexeme) in lexemes.iter().enumerate() {
        if let (Lex::Open(kind), Some(close)) = (lexeme.kind, roles.partner[open]) {
            match kind {
                Bracket::Round => roles.emphasis(open, close),
                Bracket::Square => roles.editing(open, close),
                Bracket::Curly => roles.dynamic(open, close),
            }
        }
    }
    roles.chunk_weights();
    Parsed {
        source: prompt,
        dialect,
        spans: roles.into_spans(),
    }
}

struct Roles<'a> {
    src: &'a str,
    lx: &'a [Lexeme],
    partner: Vec<Option<usize>>,
    depth: Vec<usize>,
    protect: Vec<bool>,
    hidden: Vec<bool>,
    weight: Vec<bool>,
}

impl<'a> Roles<'a> {
    fn new(src: &'a str, lx: &'a [Lexeme]) -> Self {
        let n = lx.len();
        let partner = match_brackets(lx);
        let mut depth = vec![0; n];
        let mut d = 0usize;
        for (i, l) in lx.iter().enumerate() {
            if matches!(l.kind, Lex::Close(_)) && partner[i].is_some() {
                d = d.saturating_sub(1);
            }
            depth[i] = d;
            if matches!(l.kind, Lex::Open(_)) && partner[i].is_some() {
                d += 1;
            }
        }
        Roles {
            src,
            lx,
            partner,
            depth,
            protect: vec![false; n],
            hidden: vec![false; n],
            weight: vec![false; n],
        }
    }

    fn text(&self, i: usize) -> &'a str {
        self.lx
            .get(i)
            .and_then(|l| self.src.get(l.start..l.end))
            .unwrap_or("")
    }

    fn is(&self, i: usize, kind: Lex) -> bool {
        self.lx.get(i).is_some_and(|l| l.kind == kind)
    }

    /// A text lexeme that is a plain number once trimmed (`1.2`, ` .5 `).
    fn is_number(&self, i: usize) -> bool {
        self.is(i, Lex::Text) && is_number(self.text(i).trim())
    }

    /// Indices of lexemes directly inside `open..close` (nested pairs are
    /// stepped over as a whole, their opener included).
    fn children(&self, open: usize, close: usize) -> Vec<usize> {
        let mut out = Vec::new();
        let mut j = open + 1;
        while j < close {
            out.push(j);
            j = match (self.lx[j].kind, self.partner[j]) {
                (Lex::Open(_), Some(c)) if c > j => c + 1,
                _ => j + 1,
            };
        }
        out
    }

    fn protect_range(&mut self, from: usize, to_inclusive: usize) {
        for p in self.protect.iter_mut().take(to_inclusive + 1).skip(from) {
            *p = true;
        }
    }

    /// Marks every option after the first as unseen by the model.
    fn hide_options(&mut self, separators: &[usize], end: usize) {
        for (k, &sep) in separators.iter().enumerate() {
            let stop = separators.get(k + 1).copied().unwrap_or(end);
            for h in self.hidden.iter_mut().take(stop).skip(sep + 1) {
                *h = true;
            }
        }
    }

    /// `(x)`, `(x:1.2)`: only a trailing numeric weight is syntax; other
    /// colons are literal text in A1111's attention regex.
    fn emphasis(&mut self, open: usize, close: usize) {
        if close >= open + 3 && self.is_number(close - 1) && self.is(close - 2, Lex::Colon) {
            self.protect_range(close - 2, close - 1);
        }
    }

    /// `[x]`, `[a:b:0.5]`, `[a::0.5]`, `[a:0.5]`, `[a|b]`.
    fn editing(&mut self, open: usize, close: usize) {
        let kids = self.children(open, close);
        let pipes: Vec<usize> = kids
            .iter()
            .copied()
            .filter(|&k| self.is(k, Lex::Pipe))
            .collect();
        let colons: Vec<usize> = kids
            .iter()
            .copied()
            .filter(|&k| self.is(k, Lex::Colon))
            .collect();
        for &k in pipes.iter().chain(&colons) {
            self.protect[k] = true;
        }
        if !pipes.is_empty() {
            self.hide_options(&pipes, close);
            return;
        }
        let mut seps = colons.as_slice();
        let mut end = close;
        if let Some((&last, rest)) = colons.split_last() {
            if last + 2 == close && self.is_number(last + 1) {
                self.protect[last + 1] = true;
                seps = rest;
                end = last;
            }
        }
        self.hide_options(seps, end);
    }

    /// `{a|b}`, `{2$$a|b}`, `{1-3$$sep$$a|b}`, `{0.5::a|b}`.
    fn dynamic(&mut self, open: usize, close: usize) {
        let kids = self.children(open, close);
        let first_pipe = kids
            .iter()
            .copied()
            .find(|&k| self.is(k, Lex::Pipe))
            .unwrap_or(close);
        let dollars: Vec<usize> = kids
            .iter()
            .copied()
            .filter(|&k| k < first_pipe && self.is(k, Lex::Dollars))
            .take(2)
            .collect();
        let mut body = open + 1;
        if let Some(&d1) = dollars.first() {
            let range_ok = d1 == open + 1
                || (d1 == open + 2
                    && self.is(open + 1, Lex::Text)
                    && is_range(self.text(open + 1)));
            if range_ok {
                let header_end = dollars.get(1).copied().unwrap_or(d1);
                self.protect_range(open + 1, header_end);
                body = header_end + 1;
            }
        }
        let pipes: Vec<usize> = kids
            .iter()
            .copied()
            .filter(|&k| k >= body && self.is(k, Lex::Pipe))
            .collect();
        let mut starts = vec![body];
        for &p in &pipes {
            self.protect[p] = true;
            starts.push(p + 1);
        }
        for s in starts {
            // Weighted option prefix `0.5::`; leading blanks belong to the number.
            if self.is_number(s) && self.is(s + 1, Lex::Colon) && self.is(s + 2, Lex::Colon) {
                self.protect_range(s, s + 2);
            }
        }
        self.hide_options(&pipes, close);
    }

    /// A1111 composable diffusion reads `:number` at the very end of every
    /// `AND`-separated chunk (comments are stripped first) as that chunk's
    /// weight, with or without an `AND` in the prompt.
    fn chunk_weights(&mut self) {
        let ends: Vec<usize> = (0..self.lx.len())
            .filter(|&i| self.is(i, Lex::Keyword) && self.text(i) == "AND")
            .chain(std::iter::once(self.lx.len()))
            .collect();
        for end in ends {
            let mut j = end;
            while j > 0
                && (self.is(j - 1, Lex::Comment)
                    || (self.is(j - 1, Lex::Text)
                        && !self.protect[j - 1]
                        && self.text(j - 1).trim().is_empty()))
            {
                j -= 1;
            }
            if j >= 2
                && self.is_number(j - 1)
                && !self.protect[j - 1]
                && self.is(j - 2, Lex::Colon)
                && !self.protect[j - 2]
                && self.depth[j - 2] == 0
            {
                self.weight[j - 2] = true;
                self.weight[j - 1] = true;
            }
        }
    }

    fn into_spans(self) -> Vec<Span> {
        let mut spans: Vec<Span> = Vec::with_capacity(self.lx.len());
        for (i, l) in self.lx.iter().enumerate() {
            let base = match l.kind {
                Lex::Text | Lex::Colon | Lex::Pipe | Lex::Dollars => SpanKind::Text,
                Lex::Comment => SpanKind::Comment,
                Lex::Keyword => SpanKind::Keyword,
                Lex::Escape | Lex::Atom | Lex::StrayAngle | Lex::Open(_) | Lex::Close(_) => {
                    SpanKind::Protected
                }
            };
            let kind = if self.weight[i] {
                SpanKind::ChunkWeight
            } else if self.protect[i] {
                SpanKind::Protected
            } else if base == SpanKind::Text && self.hidden[i] {
                SpanKind::Alternative
            } else {
                base
            };
            // Only free text is merged: each piece of syntax stays its own
            // span so callers can tell `((` from `<lora:..>` apart.
            if let Some(last) = spans.last_mut() {
                let mergeable = matches!(kind, SpanKind::Text | SpanKind::Alternative);
                if mergeable && last.kind == kind && last.range.end == l.start {
                    last.range.end = l.end;
                    continue;
                }
            }
            spans.push(Span {
                kind,
                range: l.start..l.end,
            });
        }
        spans
    }
}

/// Stack matching per lexeme index. A closer pairs with the nearest opener
/// of its family; openers of other families above it are left stray, which
/// keeps the damage of one typo local.
fn match_brackets(lx: &[Lexeme]) -> Vec<Option<usize>> {
    let mut partner = vec![None; lx.len()];
    let mut stack: Vec<(usize, Bracket)> = Vec::new();
    for (i, l) in lx.iter().enumerate() {
        match l.kind {
            Lex::Open(b) => stack.push((i, b)),
            Lex::Close(b) => {
                if let Some(pos) = stack.iter().rposition(|&(_, sb)| sb == b) {
                    let (o, _) = stack[pos];
                    stack.truncate(pos);
                    partner[o] = Some(i);
                    partner[i] = Some(o);
                }
            }
            _ => {}
        }
    }
    partner
}

/// `[+-]?(\d+\.?\d*|\.\d+)`, the weight syntax A1111 accepts.
pub(super) fn is_number(s: &str) -> bool {
    let s = s.strip_prefix(['+', '-']).unwrap_or(s);
    let mut digits = 0;
    let mut dots = 0;
    for c in s.chars() {
        match c {
            '0'..='9' => digits += 1,
            '.' => dots += 1,
            _ => return false,
        }
    }
    digits > 0 && dots <= 1
}

/// Dynamic-prompts quantity header: `2`, `1-3`, `-3`, `2-`, or empty.
fn is_range(s: &str) -> bool {
    let s = s.trim();
    s.chars().all(|c| c.is_ascii_digit() || c == '-') && s.matches('-').count() <= 1
}
