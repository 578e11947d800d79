//! Sanitising the model's continuation into detail phrases.
//!
//! The model only ever saw free text, but it can still emit syntax
//! characters, repeat the prompt, or ramble past CLIP's window; none of that
//! may reach the refined prompt.

use super::lexer::is_word;
use super::{append_details, parse, Dialect, SpanKind};

/// Content tokens in one CLIP chunk: the text encoder takes 77 positions,
/// two of which are BOS and EOS.
pub const CLIP_CHUNK_TOKENS: usize = 75;

/// BOS + EOS, which every [`TokenCounter::count`] result includes.
pub const SPECIAL_TOKENS: usize = 2;

/// Counts tokens of a text as the image model's text encoder would.
pub trait TokenCounter {
    /// Number of tokens `text` encodes to, *including* BOS and EOS
    /// ([`SPECIAL_TOKENS`]), i.e. the length of the encoder's input ids.
    fn count(&self, text: &str) -> usize;
}

/// Vocabulary-free estimate of CLIP (SD text encoder) token counts.
///
/// Text is lowercased and pre-tokenized like CLIP does, with the regex
/// `'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+` implemented
/// by hand (`char::is_alphabetic` stands in for `\p{L}`). Each piece then
/// costs, leaning high because overrunning a chunk silently spills the last
/// details into a new chunk while one detail too few costs little:
/// - a contraction: 1;
/// - a letter run: `ceil(ascii_letters / 6)` plus, per non-ASCII letter,
///   `ceil(2 * utf8_bytes / 3)` (byte-level BPE: CJK 2, emoji 3), at least 1
///   (common English words up to ~10 letters are one CLIP token; rare words
///   and names split into pieces of 3-6 letters);
/// - a digit: 1 (CLIP never merges digits);
/// - a symbol run: 1 per ASCII char, `ceil(2 * utf8_bytes / 3)` per other
///   char (merged punctuation like `...` would be fewer).
///
/// Plus [`SPECIAL_TOKENS`] for BOS/EOS.
#[derive(Clone, Copy, Debug, Default)]
pub struct ClipTokenEstimate;

const CONTRACTIONS: [&str; 7] = ["'s", "'t", "'re", "'ve", "'m", "'ll", "'d"];

fn wide_char_cost(c: char) -> usize {
    if c.is_ascii() {
        1
    } else {
        (2 * c.len_utf8()).div_ceil(3)
    }
}

impl TokenCounter for ClipTokenEstimate {
    fn count(&self, text: &str) -> usize {
        let lower = text.to_lowercase();
        let mut tokens = SPECIAL_TOKENS;
        let mut rest = lower.as_str();
        while let Some(c) = rest.chars().next() {
            let len;
            if c.is_whitespace() {
                len = c.len_utf8();
            } else if let Some(k) = CONTRACTIONS.iter().find(|k| rest.starts_with(**k)) {
                tokens += 1;
                len = k.len();
            } else if c.is_alphabetic() {
                len = rest
                    .find(|c: char| !c.is_alphabetic())
                    .unwrap_or(rest.len());
                let run = &rest[..len];
                let ascii = run.chars().filter(char::is_ascii).count();
                let wide: usize = run
                    .chars()
                    .filter(|c| !c.is_ascii())
                    .map(wide_char_cost)
                    .sum();
                tokens += (ascii.div_ceil(6) + wide).max(1);
            } else if c.is_numeric() {
                tokens += wide_char_cost(c);
                len = c.len_utf8();
            } else {
                len = rest
                    .find(|c: char| c.is_whitespace() || c.is_alphabetic() || c.is_numeric())
                    .unwrap_or(rest.len());
                tokens += rest[..len].chars().map(wide_char_cost).sum::<usize>();
            }
            rest = &rest[len.max(c.len_utf8())..];
        }
        tokens
    }
}

/// Rules for turning raw generated text into detail phrases.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hygiene {
    /// Words (or multi-word phrases) that disqualify a detail phrase;
    /// matched case-insensitively on whole words.
    pub banned_words: Vec<String>,
    /// Content tokens allowed in the prompt's last chunk (BOS/EOS excluded);
    /// [`CLIP_CHUNK_TOKENS`] by default.
    pub budget: usize,
    /// Who reads the prompt: decides which phrases of the prompt count as already
    /// present and what a comment is.
    pub dialect: Dialect,
}

impl Default for Hygiene {
    fn default() -> Self {
        Hygiene {
            banned_words: Vec::new(),
            budget: CLIP_CHUNK_TOKENS,
            dialect: Dialect::default(),
        }
    }
}

/// Characters that are prompt syntax somewhere; removed from details.
const SYNTAX_CHARS: &[char] = &[
    '(', ')', '[', ']', '<', '>', ':', '|', '{', '}', '\\', '#', '$',
];

impl Hygiene {
    /// Splits `raw_generated` into clean, new, in-budget detail phrases, in
    /// generation order.
    ///
    /// A phrase is a comma/newline-separated piece with syntax characters
    /// and `__` runs replaced by spaces (so `red(fox)` stays two words),
    /// uppercase `BREAK`/`AND` lowercased (they would split the prompt),
    /// whitespace collapsed and edge punctuation trimmed. Empty phrases,
    /// phrases with a banned word, and phrases already said (see
    /// [`PhraseKey`]) are dropped. Adding stops at the first phrase that
    /// would push the last chunk of `append_details(user_prompt, ..)` over
    /// the budget: only that chunk counts because `BREAK` pads to a fresh
    /// 75-token chunk and `AND` sub-prompts are encoded separately, so
    /// earlier text never shares the details' window. Phrases are in the
    /// model's priority order, so a later short phrase does not jump the
    /// queue. If the user's last chunk alone is over budget, nothing is
    /// added.
    pub fn clean_details(
        &self,
        user_prompt: &str,
        raw_generated: &str,
        counter: &dyn TokenCounter,
    ) -> Vec<String> {
        let banned: Vec<Vec<String>> = self
            .banned_words
            .iter()
            .map(|w| words(w))
            .filter(|w| !w.is_empty())
            .collect();
        let mut seen: Vec<PhraseKey> = parse(user_prompt, self.dialect)
            .free_text()
            .split(',')
            .map(PhraseKey::new)
            .filter(|k| !k.words.is_empty())
            .collect();
        let mut out: Vec<String> = Vec::new();
        for raw in raw_generated.split([',', '\n', '\r']) {
            let phrase = scrub(raw);
            let key = PhraseKey::new(&phrase);
            if key.words.is_empty()
                || banned.iter().any(|b| contains_run(&key.words, b))
                || seen.iter().any(|s| s.covers(&key))
            {
                continue;
            }
            out.push(phrase);
            let grown = append_details(user_prompt, self.dialect, &out);
            if last_chunk_cost(&grown, self.dialect, counter) > self.budget {
                out.pop();
                break;
            }
            seen.push(key);
        }
        out
    }
}

/// Tokens of the last `BREAK`/`AND` chunk of `prompt`, BOS/EOS excluded.
///
/// Comments, chunk weights and extra networks are removed before A1111
/// encodes, so they take no tokens. Other syntax (brackets, emphasis
/// weights) is counted although the encoder drops it: a small overestimate
/// in the safe direction.
pub fn last_chunk_cost(prompt: &str, dialect: Dialect, counter: &dyn TokenCounter) -> usize {
    let parsed = parse(prompt, dialect);
    let start = parsed.last_chunk_start();
    let mut chunk = String::new();
    for span in parsed.spans().iter().filter(|s| s.range.start >= start) {
        let text = parsed.slice(span);
        let network = text.len() > 2 && text.starts_with('<') && text.ends_with('>');
        match span.kind {
            SpanKind::Comment | SpanKind::ChunkWeight | SpanKind::Keyword => {}
            SpanKind::Protected if network => chunk.push(' '),
            _ => chunk.push_str(text),
        }
    }
    counter.count(&chunk).saturating_sub(SPECIAL_TOKENS)
}

/// Removes syntax from one generated piece and normalises its spacing.
fn scrub(raw: &str) -> String {
    let mut spaced = String::with_capacity(raw.len());
    let mut chars = raw.chars().peekable();
    while let Some(c) = chars.next() {
        // Control characters (a sampled NUL, say) and U+FFFD (a multi-byte character
        // cut by the token limit or sampled in pieces) are noise, never detail text.
        if SYNTAX_CHARS.contains(&c) || c.is_control() || c == char::REPLACEMENT_CHARACTER {
            spaced.push(' ');
        } else if c == '_' && chars.peek() == Some(&'_') {
            while chars.peek() == Some(&'_') {
                chars.next();
            }
            spaced.push(' ');
        } else {
            spaced.push(c);
        }
    }
    let collapsed = spaced.split_whitespace().collect::<Vec<_>>().join(" ");
    let trimmed = collapsed
        .trim_matches(|c: char| c.is_whitespace() || matches!(c, '.' | ';' | '"' | '*' | '-'));
    defuse_keywords(trimmed)
}

/// Lowercases whole-word `BREAK`/`AND`, which would otherwise start a new
/// chunk or sub-prompt inside the user's prompt.
fn defuse_keywords(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut prev: Option<char> = None;
    let mut rest = s;
    while let Some(c) = rest.chars().next() {
        let at_boundary = prev.is_none_or(|p| !is_word(p));
        let kw = ["BREAK", "AND"].into_iter().find(|kw| {
            at_boundary
                && rest
                    .strip_prefix(kw)
                    .is_some_and(|after| after.chars().next().is_none_or(|n| !is_word(n)))
        });
        let len = match kw {
            Some(kw) => {
                out.push_str(&kw.to_lowercase());
                kw.len()
            }
            None => {
                out.push(c);
                c.len_utf8()
            }
        };
        prev = rest[..len].chars().next_back();
        rest = &rest[len..];
    }
    out
}

/// Lowercase alphanumeric words; punctuation and whitespace only separate.
fn words(s: &str) -> Vec<String> {
    s.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
        .collect()
}

/// Whether `needle` occurs as a contiguous run of whole words in `hay`.
fn contains_run(hay: &[String], needle: &[String]) -> bool {
    !needle.is_empty() && hay.windows(needle.len()).any(|w| w == needle)
}

/// Comparison form of a phrase for repetition checks.
///
/// Two phrases repeat each other if their lowercase forms without
/// punctuation and whitespace are equal (`highly-detailed` ==
/// `Highly Detailed` == `highlydetailed`), or if the new one is a whole-word
/// run inside an existing one (`red` is said by `a red fox`). Substrings that
/// cut words (`ox` in `fox`) are not repeats.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PhraseKey {
    words: Vec<String>,
    squashed: String,
}

impl PhraseKey {
    /// Builds the key of `phrase`.
    pub fn new(phrase: &str) -> Self {
        let words = words(phrase);
        let squashed = words.concat();
        PhraseKey { words, squashed }
    }

    /// Whether `other` adds nothing beyond `self`.
    pub fn covers(&self, other: &PhraseKey) -> bool {
        self.squashed == other.squashed || contains_run(&self.words, &other.words)
    }
}

#[cfg(test)]
mod unit {
    use super::*;

    fn clean(h: &Hygiene, user: &str, raw: &str) -> Vec<String> {
        h.clean_details(user, raw, &ClipTokenEstimate)
    }

    #[test]
    fn estimate_counts() {
        let c = ClipTokenEstimate;
        assert_eq!(c.count(""), 2);
        assert_eq!(c.count("a cat"), 4);
        assert_eq!(c.count("photorealistic"), 2 + 3);
        assert_eq!(c.count("8k"), 2 + 2);
        assert_eq!(c.count("it's"), 2 + 2);
        assert_eq!(c.count("a, b..."), 2 + 1 + 1 + 1 + 3);
        assert_eq!(c.count("猫"), 2 + 2);
        assert_eq!(c.count("🐱"), 2 + 3);
        assert_eq!(c.count("CAT"), c.count("cat"));
    }

    #[test]
    fn splits_scrubs_and_dedups() {
        let h = Hygiene::default();
        let got = clean(
            &h,
            "a (red:1.2) fox",
            " golden hour, (highly detailed:1.3)\n__wild__ bokeh, Golden  Hour, red, <lora:x:1>, , ...",
        );
        assert_eq!(
            got,
            [
                "golden hour",
                "highly detailed 1.3",
                "wild bokeh",
                "lora x 1"
            ]
        );
    }

    #[test]
    fn control_characters_and_replacement_characters_are_dropped() {
        let h = Hygiene::default();
        assert_eq!(
            clean(
                &h,
                "a cat",
                "magical\0\u{6}ity re\u{FFFD}drawing\u{FFFD}, \u{7f}\u{85}"
            ),
            ["magical ity re drawing"]
        );
    }

    #[test]
    fn keywords_are_defused() {
        let h = Hygiene::default();
        assert_eq!(
            clean(&h, "a cat", "sun AND moon, BREAK., ANDROID"),
            ["sun and moon", "break", "ANDROID"]
        );
    }

    #[test]
    fn banned_whole_words() {
        let h = Hygiene {
            banned_words: vec!["NSFW".into(), "low quality".into()],
            ..Hygiene::default()
        };
        let got = clean(
            &h,
            "a cat",
            "nsfw art, nsfwish, Low Quality photo, low, quality",
        );
        assert_eq!(got, ["nsfwish", "low", "quality"]);
    }

    #[test]
    fn word_level_containment() {
        let h = Hygiene::default();
        assert_eq!(
            clean(
                &h,
                "a red fox, highly-detailed",
                "ox, fox, Highly Detailed, red fox den"
            ),
            ["ox", "red fox den"]
        );
    }

    #[test]
    fn budget_stops_adding() {
        let h = Hygiene {
            budget: 4,
            ..Hygiene::default()
        };
        // "a cat" = 2 tokens; ", sun" adds 2 -> 4; ", moon" would be 6.
        assert_eq!(clean(&h, "a cat", "sun, moon, x"), ["sun"]);
        let tiny = Hygiene {
            budget: 1,
            ..Hygiene::default()
        };
        assert!(clean(&tiny, "a cat", "sun").is_empty());
    }

    #[test]
    fn budget_counts_only_last_chunk() {
        let h = Hygiene {
            budget: 4,
            ..Hygiene::default()
        };
        let long = "word ".repeat(40);
        assert!(clean(&h, &long, "sun").is_empty());
        assert_eq!(
            clean(&h, &format!("{long} BREAK a cat"), "sun, moon"),
            ["sun"]
        );
        assert_eq!(
            clean(&h, &format!("{long} AND a cat :1.2"), "sun, moon"),
            ["sun"]
        );
    }

    #[test]
    fn networks_and_comments_are_free() {
        let c = ClipTokenEstimate;
        assert_eq!(
            last_chunk_cost("a cat <lora:very_long_name:0.8>", Dialect::A1111, &c),
            2
        );
        assert_eq!(
            last_chunk_cost("a cat\n# a long comment here", Dialect::A1111, &c),
            2
        );
    }
}
