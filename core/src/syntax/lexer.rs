//! First pass: cut the prompt into flat lexemes.
//!
//! Everything context-free is decided here (comments, escapes, keywords,
//! extra networks, wildcards, embeddings). Bracket meaning depends on the
//! matching partner, so brackets stay as open/close lexemes and the parser
//! decides what their contents are.

use super::Dialect;

/// Bracket families whose contents get structure from the parser.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Bracket {
    Round,
    Square,
    Curly,
}

/// Lexeme categories; `Text` is the only one that merges across characters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Lex {
    Text,
    Escape,
    Comment,
    Keyword,
    /// Self-contained syntax: extra networks, wildcards, ComfyUI embeddings.
    Atom,
    /// A `<` or `>` that is not part of an extra network.
    StrayAngle,
    Open(Bracket),
    Close(Bracket),
    Colon,
    Pipe,
    Dollars,
}

/// One lexeme: a category and the byte range it covers.
#[derive(Clone, Copy, Debug)]
pub(super) struct Lexeme {
    pub kind: Lex,
    pub start: usize,
    pub end: usize,
}

/// Characters that a backslash turns into literal text. A1111 documents the
/// brackets and the backslash; dynamic prompts adds braces and `|`; `:` and
/// `<>` are accepted because the lark grammar escapes any character.
const ESCAPABLE: &[char] = &['(', ')', '[', ']', '{', '}', '\\', '|', ':', '<', '>'];

const KEYWORDS: [&str; 2] = ["BREAK", "AND"];

/// Word characters for keyword/embedding boundaries (regex `\w`-like).
pub(super) fn is_word(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// Splits `src`, as read by `dialect`, into lexemes that tile it exactly, in order.
pub(super) fn lex(src: &str, dialect: Dialect) -> Vec<Lexeme> {
    let mut out: Vec<Lexeme> = Vec::new();
    let mut i = 0;
    // A1111 strips comments before any other parsing (`#[^\n]*`), so a `#` anywhere,
    // whatever brackets, networks or escapes surround it, hides the rest of its line.
    let comments = dialect.hash_comments();
    let mut next_hash = src.find('#');
    let mut prev: Option<char> = None;
    while let Some(rest) = src.get(i..) {
        let Some(c) = rest.chars().next() else { break };
        // No construct reaches past a comment's `#`: A1111 removes the comment first.
        if next_hash.is_some_and(|h| h <= i) {
            next_hash = src[i + 1..].find('#').map(|h| h + i + 1);
        }
        let rest = match next_hash {
            Some(h) if comments && c != '#' => &src[i..h],
            _ => rest,
        };
        let at_boundary = prev.is_none_or(|p| !is_word(p));
        let one = c.len_utf8();
        let (kind, len) = match c {
            '#' if comments => (Lex::Comment, rest.find('\n').unwrap_or(rest.len())),
            '\\' => match rest[one..].chars().next() {
                Some(n) if ESCAPABLE.contains(&n) => (Lex::Escape, one + n.len_utf8()),
                _ => (Lex::Text, one),
            },
            '<' => network_len(rest).map_or((Lex::StrayAngle, one), |n| (Lex::Atom, n)),
            '>' => (Lex::StrayAngle, one),
            '(' => (Lex::Open(Bracket::Round), one),
            '[' => (Lex::Open(Bracket::Square), one),
            '{' => (Lex::Open(Bracket::Curly), one),
            ')' => (Lex::Close(Bracket::Round), one),
            ']' => (Lex::Close(Bracket::Square), one),
            '}' => (Lex::Close(Bracket::Curly), one),
            ':' => (Lex::Colon, one),
            '|' => (Lex::Pipe, one),
            '$' if rest.starts_with("$$") => (Lex::Dollars, 2),
            '_' => wildcard_len(rest).map_or((Lex::Text, one), |n| (Lex::Atom, n)),
            'e' if at_boundary => embedding_len(rest).map_or((Lex::Text, one), |n| (Lex::Atom, n)),
            'A' | 'B' if at_boundary => {
                keyword_len(rest).map_or((Lex::Text, one), |n| (Lex::Keyword, n))
            }
            _ => (Lex::Text, one),
        };
        // Every branch consumes at least one whole char, so `i` stays on a
        // char boundary and the loop always advances.
        let len = len.max(one);
        push(&mut out, kind, i, i + len);
        prev = rest[..len].chars().next_back();
        i += len;
    }
    out
}

fn push(out: &mut Vec<Lexeme>, kind: Lex, start: usize, end: usize) {
    if kind == Lex::Text {
        if let Some(last) = out.last_mut() {
            if last.kind == Lex::Text && last.end == start {
                last.end = end;
                return;
            }
        }
    }
    out.push(Lexeme { kind, start, end });
}

/// `<word:anything>` on one line, as used by A1111 extra networks
/// (`lora`, `lyco`, `hypernet`, and any extension-defined word).
fn network_len(rest: &str) -> Option<usize> {
    let body = rest.strip_prefix('<')?;
    let ident = body
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '-'))
        .unwrap_or(body.len());
    if ident == 0 || !body[ident..].starts_with(':') {
        return None;
    }
    let tail = &body[ident..];
    let close = tail.find(['>', '<', '\n'])?;
    tail[close..]
        .starts_with('>')
        .then_some(1 + ident + close + 1)
}

/// Dynamic-prompts wildcard `__name__` / `__path/to/name__`.
fn wildcard_len(rest: &str) -> Option<usize> {
    let body = rest.strip_prefix("__")?;
    let allowed = |c: char| c.is_alphanumeric() || matches!(c, '/' | '-' | '.' | '*' | '_');
    let run_end = body.find(|c: char| !allowed(c)).unwrap_or(body.len());
    let run = &body[..run_end];
    // A leading `_` would make the name ambiguous (`___x__`); the lexer
    // retries one char later and finds `__x__` instead.
    if run.starts_with('_') {
        return None;
    }
    let (pos, _) = run.match_indices("__").find(|(p, _)| *p > 0)?;
    Some(2 + pos + 2)
}

/// ComfyUI `embedding:name`; the name ends where ComfyUI's word split or
/// its weight syntax would end it.
fn embedding_len(rest: &str) -> Option<usize> {
    const PREFIX: &str = "embedding:";
    let body = rest.strip_prefix(PREFIX)?;
    let stop = |c: char| c.is_whitespace() || ",()[]{}<>|:\\".contains(c);
    let name = body.find(stop).unwrap_or(body.len());
    (name > 0).then_some(PREFIX.len() + name)
}

/// Uppercase whole-word `BREAK` / `AND` (A1111 uses `\bAND\b`).
fn keyword_len(rest: &str) -> Option<usize> {
    KEYWORDS.iter().find_map(|kw| {
        let after = rest.strip_prefix(kw)?;
        after
            .chars()
            .next()
            .is_none_or(|c| !is_word(c))
            .then_some(kw.len())
    })
}
