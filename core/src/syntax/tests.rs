//! Parser examples per construct, and property tests across the module.

use super::hygiene::{last_chunk_cost, PhraseKey};
use super::*;
use proptest::prelude::*;

/// The A1111 reading every case here was written for.
fn parse(src: &str) -> Parsed<'_> {
    super::parse(src, Dialect::A1111)
}

/// Spans as `(code, text)`: T text, A alternative, P protected,
/// W chunk weight, C comment, K keyword.
fn spans(src: &str) -> Vec<(char, &str)> {
    let parsed = parse(src);
    parsed
        .spans()
        .iter()
        .map(|s| {
            let code = match s.kind {
                SpanKind::Text => 'T',
                SpanKind::Alternative => 'A',
                SpanKind::Protected => 'P',
                SpanKind::ChunkWeight => 'W',
                SpanKind::Comment => 'C',
                SpanKind::Keyword => 'K',
            };
            (code, parsed.slice(s))
        })
        .collect()
}

fn free(src: &str) -> String {
    parse(src).free_text()
}

#[test]
fn brief_example() {
    let src = "a (red:1.2) fox <lora:x:0.8> BREAK in a forest";
    assert_eq!(
        spans(src),
        [
            ('T', "a "),
            ('P', "("),
            ('T', "red"),
            ('P', ":"),
            ('P', "1.2"),
            ('P', ")"),
            ('T', " fox "),
            ('P', "<lora:x:0.8>"),
            ('T', " "),
            ('K', "BREAK"),
            ('T', " in a forest"),
        ]
    );
    assert_eq!(free(src), "a red fox in a forest");
}

#[test]
fn nested_emphasis() {
    let src = "((big)) [small] (a (b:0.5):1.1)";
    assert_eq!(
        spans(src),
        [
            ('P', "("),
            ('P', "("),
            ('T', "big"),
            ('P', ")"),
            ('P', ")"),
            ('T', " "),
            ('P', "["),
            ('T', "small"),
            ('P', "]"),
            ('T', " "),
            ('P', "("),
            ('T', "a "),
            ('P', "("),
            ('T', "b"),
            ('P', ":"),
            ('P', "0.5"),
            ('P', ")"),
            ('P', ":"),
            ('P', "1.1"),
            ('P', ")"),
        ]
    );
    assert_eq!(free(src), "big small a b");
    // Only a numeric weight is syntax; other colons are text.
    assert_eq!(free("(a:b) (c: 1.5 )"), "a:b c");
}

#[test]
fn escapes() {
    let src = r"a \(cat\) \\ [x] \{y\}";
    assert_eq!(
        spans(src),
        [
            ('T', "a "),
            ('P', r"\("),
            ('T', "cat"),
            ('P', r"\)"),
            ('T', " "),
            ('P', r"\\"),
            ('T', " "),
            ('P', "["),
            ('T', "x"),
            ('P', "]"),
            ('T', " "),
            ('P', r"\{"),
            ('T', "y"),
            ('P', r"\}"),
        ]
    );
    assert_eq!(free(src), "a cat x y");
    // An escaped bracket does not take part in matching.
    assert_eq!(spans(r"(a\)"), [('P', "("), ('T', "a"), ('P', r"\)")]);
    assert_eq!(spans(r"a\b"), [('T', r"a\b")]);
}

#[test]
fn and_with_weight() {
    let src = "a cat :0.8 AND a dog :1.2";
    assert_eq!(
        spans(src),
        [
            ('T', "a cat "),
            ('W', ":"),
            ('W', "0.8 "),
            ('K', "AND"),
            ('T', " a dog "),
            ('W', ":"),
            ('W', "1.2"),
        ]
    );
    assert_eq!(free(src), "a cat a dog");
    // A colon in the middle of a chunk is text.
    assert_eq!(free("ratio 16:9 image"), "ratio 16:9 image");
    // Comments are stripped before A1111 reads the weight.
    assert_eq!(
        spans("a dog:2\n# c"),
        [('T', "a dog"), ('W', ":"), ('W', "2\n"), ('C', "# c")]
    );
}

#[test]
fn keywords_only_uppercase_whole_words() {
    assert_eq!(
        spans("BREAKfast ANDroid and break A_AND"),
        [('T', "BREAKfast ANDroid and break A_AND")]
    );
    assert_eq!(
        spans("(a AND b)"),
        [
            ('P', "("),
            ('T', "a "),
            ('K', "AND"),
            ('T', " b"),
            ('P', ")")
        ]
    );
    assert_eq!(
        spans("BREAK,AND"),
        [('K', "BREAK"), ('T', ","), ('K', "AND")]
    );
}

#[test]
fn comments() {
    // A1111 1.8+ and Forge strip `#[^\n]*` wherever it starts, brackets and all.
    let src = "a cat\n  # note (x) <lora:y:1>\nred # a comment too";
    assert_eq!(
        spans(src),
        [
            ('T', "a cat\n  "),
            ('C', "# note (x) <lora:y:1>"),
            ('T', "\nred "),
            ('C', "# a comment too"),
        ]
    );
    assert_eq!(free(src), "a cat red");
    assert_eq!(spans("#only"), [('C', "#only")]);
    assert_eq!(free("#only"), "");
    assert_eq!(
        spans("a (red# x\n:1.2) <lora:a#b:1>"),
        [
            ('T', "a "),
            ('P', "("),
            ('T', "red"),
            ('C', "# x"),
            ('T', "\n"),
            ('P', ":"),
            ('P', "1.2"),
            ('P', ")"),
            ('T', " "),
            // What A1111 reads after stripping the comment: an unterminated network.
            ('P', "<"),
            ('T', "lora:a"),
            ('C', "#b:1>"),
        ]
    );
}

#[test]
fn comfyui_and_plain_read_hash_as_text() {
    for dialect in [Dialect::ComfyUi, Dialect::Plain] {
        let src = "a t-shirt that says \"#python\"\n# and a cap";
        let parsed = super::parse(src, dialect);
        assert!(parsed.spans().iter().all(|s| s.kind != SpanKind::Comment));
        assert_eq!(
            parsed.free_text(),
            "a t-shirt that says \"#python\" # and a cap"
        );
    }
    assert_eq!(
        free("a t-shirt that says \"#python\" in black"),
        "a t-shirt that says \""
    );
}

#[test]
fn free_text_ends_in_no_separator_whatever_syntax_was_hidden() {
    // The decoder appends one separator itself; these endings gave it two and it stopped.
    for (src, want) in [
        ("a (red:1.2) fox, embedding:foo", "a red fox"),
        ("a lighthouse at dusk, <lora:x:1>", "a lighthouse at dusk"),
        (
            "a knight in a misty forest <lora:detail_tweaker:0.6>,<lyco:film_grain:0.4> <hypernet:sketchy:0.3>",
            "a knight in a misty forest",
        ),
        ("a cat, __animals__ ,", "a cat"),
        ("a cat,, {a|b}, [x:y:0.5],", "a cat, a, x"),
        ("a cat # x, y,", "a cat"),
        (", , <lora:x:1>", ""),
    ] {
        assert_eq!(free(src), want, "{src:?}");
    }
}

#[test]
fn wildcards() {
    let src = "a __animals__ in __path/to/place__, __not wild__";
    assert_eq!(
        spans(src),
        [
            ('T', "a "),
            ('P', "__animals__"),
            ('T', " in "),
            ('P', "__path/to/place__"),
            ('T', ", __not wild__"),
        ]
    );
    assert_eq!(free("a __animals__ in __path/to/place__"), "a in");
    assert_eq!(spans("___x__"), [('T', "_"), ('P', "__x__")]);
}

#[test]
fn dynamic_prompts() {
    assert_eq!(
        spans("{a|b}"),
        [('P', "{"), ('T', "a"), ('P', "|"), ('A', "b"), ('P', "}")]
    );
    assert_eq!(
        spans("{2$$a|b|c}"),
        [
            ('P', "{"),
            ('P', "2"),
            ('P', "$$"),
            ('T', "a"),
            ('P', "|"),
            ('A', "b"),
            ('P', "|"),
            ('A', "c"),
            ('P', "}"),
        ]
    );
    assert_eq!(
        spans("{1-3$$ and $$a|b}"),
        [
            ('P', "{"),
            ('P', "1-3"),
            ('P', "$$"),
            ('P', " and "),
            ('P', "$$"),
            ('T', "a"),
            ('P', "|"),
            ('A', "b"),
            ('P', "}"),
        ]
    );
    assert_eq!(free("{1-3$$ and $$a|b}"), "a");
    assert_eq!(free("{0.5::warm light|1::cold light}"), "warm light");
    assert_eq!(free("{red (fox:1.2)|[cat|dog] (x)} run"), "red fox run");
    assert_eq!(free("{2$$__colors__|plain}"), "");
    // `$$` without a valid header is just text.
    assert_eq!(free("{a b$$c|d}"), "a b$$c");
}

#[test]
fn prompt_editing_and_alternation() {
    assert_eq!(
        spans("[a:b:0.5]"),
        [
            ('P', "["),
            ('T', "a"),
            ('P', ":"),
            ('A', "b"),
            ('P', ":"),
            ('P', "0.5"),
            ('P', "]"),
        ]
    );
    assert_eq!(
        spans("[a::0.5]"),
        [
            ('P', "["),
            ('T', "a"),
            ('P', ":"),
            ('P', ":"),
            ('P', "0.5"),
            ('P', "]"),
        ]
    );
    assert_eq!(
        spans("[a:0.5]"),
        [('P', "["), ('T', "a"), ('P', ":"), ('P', "0.5"), ('P', "]")]
    );
    assert_eq!(
        spans("[a|b]"),
        [('P', "["), ('T', "a"), ('P', "|"), ('A', "b"), ('P', "]")]
    );
    assert_eq!(free("photo of [cat:(dog:1.2):10]"), "photo of cat");
}

#[test]
fn extra_networks() {
    let src = "<lyco:y_z:1> <hypernet:h:0.5> <foo-bar:baz (1)> a < b > c";
    assert_eq!(
        spans(src),
        [
            ('P', "<lyco:y_z:1>"),
            ('T', " "),
            ('P', "<hypernet:h:0.5>"),
            ('T', " "),
            ('P', "<foo-bar:baz (1)>"),
            ('T', " a "),
            ('P', "<"),
            ('T', " b "),
            ('P', ">"),
            ('T', " c"),
        ]
    );
    assert_eq!(free(src), "a b c");
    assert_eq!(free("cat, <lora:x:1>, dog"), "cat, dog");
}

#[test]
fn comfy_embeddings() {
    let src = "embedding:easynegative, embedding:bad.pt text myembedding:x";
    assert_eq!(
        spans(src),
        [
            ('P', "embedding:easynegative"),
            ('T', ", "),
            ('P', "embedding:bad.pt"),
            ('T', " text myembedding:x"),
        ]
    );
    assert_eq!(free(src), "text myembedding:x");
    assert_eq!(free("(embedding:foo:1.2) cat"), "cat");
    // A1111 textual inversions are plain words.
    assert_eq!(spans("easynegative"), [('T', "easynegative")]);
}

#[test]
fn unbalanced_brackets() {
    assert_eq!(spans("a (cat"), [('T', "a "), ('P', "("), ('T', "cat")]);
    assert_eq!(
        spans("a cat) ]"),
        [('T', "a cat"), ('P', ")"), ('T', " "), ('P', "]")]
    );
    // `)` closes `(` and leaves the `[` in between stray.
    assert_eq!(free("(a [b) c]"), "a b c");
    assert_eq!(free(")))((( }{ ]["), "");
    assert_eq!(free("a [b:c"), "a b:c");
}

#[test]
fn empty_and_blank() {
    assert!(parse("").spans().is_empty());
    assert_eq!(free(""), "");
    assert_eq!(spans(" \n\t "), [('T', " \n\t ")]);
    assert_eq!(free(" \n\t "), "");
}

#[test]
fn non_ascii() {
    let src = "猫 (🐱:1.2) BREAK 日本, café";
    assert_eq!(
        spans(src),
        [
            ('T', "猫 "),
            ('P', "("),
            ('T', "🐱"),
            ('P', ":"),
            ('P', "1.2"),
            ('P', ")"),
            ('T', " "),
            ('K', "BREAK"),
            ('T', " 日本, café"),
        ]
    );
    assert_eq!(free(src), "猫 🐱 日本, café");
    assert_eq!(free("__猫__ é\\(x"), "é x");
}

#[test]
fn free_text_whitespace_and_commas() {
    assert_eq!(free("  a\n\n b ,c ,, d,  "), "a b,c, d");
    assert_eq!(free(", , a"), "a");
    assert_eq!(free("a(red)fox"), "a red fox");
}

#[test]
fn last_chunk() {
    let p = parse("a BREAK b AND c");
    assert_eq!(p.last_chunk_start(), 13);
    assert_eq!(parse("abc").last_chunk_start(), 0);
}

// ---------------------------------------------------------------- proptest

const PIECES: &[&str] = &[
    "a cat",
    "red fox",
    "猫",
    "🐱 emoji",
    "(red:1.2)",
    "((big))",
    "[small]",
    "(nested (deep:0.9):1.1)",
    r"\(",
    r"\)",
    r"\[x\]",
    r"\\",
    "BREAK",
    "AND",
    "AND a dog :1.2",
    "[a:b:0.5]",
    "[a::0.5]",
    "[a:0.5]",
    "[a|b]",
    "<lora:x:0.8>",
    "<lyco:y_z:1>",
    "<hypernet:h:0.5>",
    "embedding:foo",
    "embedding:bar.pt",
    "{a|b}",
    "{2$$a|b|c}",
    "{1-3$$ and $$a|b}",
    "{0.5::x|1::y}",
    "__wild__",
    "__path/to/w__",
    "\n# comment (x) {y}\n",
    "16:9",
    ",",
];

const SEPARATORS: &[&str] = &[" ", ", ", "\n"];

fn constructs() -> impl Strategy<Value = String> {
    prop::collection::vec(
        (
            prop::sample::select(PIECES),
            prop::sample::select(SEPARATORS),
        ),
        0..10,
    )
    .prop_map(|v| v.into_iter().map(|(a, b)| format!("{a}{b}")).collect())
}

fn syntaxy() -> impl Strategy<Value = String> {
    "[a-z ()\\[\\]:.0-9<>{}|$_#\\\\\n,]{0,60}"
}

fn any_prompt() -> impl Strategy<Value = String> {
    prop_oneof![any::<String>(), syntaxy(), constructs()]
}

fn assert_lossless(src: &str) -> Result<(), TestCaseError> {
    let parsed = parse(src);
    let mut pos = 0;
    let mut rebuilt = String::new();
    for span in parsed.spans() {
        prop_assert_eq!(span.range.start, pos);
        prop_assert!(span.range.end > span.range.start);
        prop_assert!(src.get(span.range.clone()).is_some());
        rebuilt.push_str(parsed.slice(span));
        pos = span.range.end;
    }
    prop_assert_eq!(pos, src.len());
    prop_assert_eq!(rebuilt, src);
    Ok(())
}

proptest! {
    #[test]
    fn parse_is_lossless(src in any_prompt()) {
        assert_lossless(&src)?;
    }

    #[test]
    fn free_text_is_normalised_and_bracket_free(src in any_prompt()) {
        let text = free(&src);
        prop_assert!(!text.contains(['(', ')', '[', ']', '{', '}', '<', '>', '\n', '\t']), "bracket in {text:?}");
        prop_assert!(!text.contains("  "));
        prop_assert!(!text.contains(" ,"));
        prop_assert!(!text.starts_with([' ', ',']));
        prop_assert!(!text.ends_with([' ', ',']));
    }

    #[test]
    fn free_text_hides_syntax_of_well_formed(src in constructs()) {
        let text = free(&src);
        for bad in ["<lora", "__", "{", "}", "$$", "embedding:", "BREAK", "AND", "#", "\\", "|"] {
            prop_assert!(!text.contains(bad), "{bad:?} in {text:?} from {src:?}");
        }
    }

    #[test]
    fn append_keeps_prompt_around_details(
        src in any_prompt(),
        details in prop::collection::vec(prop_oneof!["[a-z ]{0,8}", any::<String>()], 0..4),
    ) {
        let out = append_details(&src, Dialect::A1111, &details);
        let at = insertion_point(&src, Dialect::A1111);
        prop_assert!(src.is_char_boundary(at));
        let (head, tail) = src.split_at(at);
        prop_assert!(out.starts_with(head));
        prop_assert!(out.ends_with(tail));
        prop_assert!(out.len() >= src.len());
        let kept: Vec<&str> = details.iter().map(|d| d.trim()).filter(|d| !d.is_empty()).collect();
        if kept.is_empty() {
            prop_assert_eq!(&out, &src);
        } else {
            let middle = &out[head.len()..out.len() - tail.len()];
            prop_assert!(middle.contains(&kept.join(", ")));
        }
        let parsed = parse(&src);
        let clean_end = parsed.spans().last().is_none_or(|s| {
            !matches!(s.kind, SpanKind::Comment | SpanKind::ChunkWeight)
        }) && !src.ends_with(char::is_whitespace);
        if clean_end {
            prop_assert_eq!(at, src.len());
            prop_assert!(out.starts_with(&src));
        }
    }

    #[test]
    fn clean_details_are_clean_new_and_in_budget(
        user in any_prompt(),
        raw in prop_oneof![any::<String>(), syntaxy(), constructs()],
        budget in 0usize..100,
    ) {
        let hygiene = Hygiene { banned_words: vec!["cat".into()], budget, ..Hygiene::default() };
        let got = hygiene.clean_details(&user, &raw, &ClipTokenEstimate);
        let user_keys: Vec<PhraseKey> =
            free(&user).split(',').map(PhraseKey::new).collect();
        for (i, phrase) in got.iter().enumerate() {
            prop_assert!(!phrase.is_empty());
            prop_assert_eq!(phrase.trim(), phrase.as_str());
            prop_assert!(!phrase.contains(['(', ')', '[', ']', '<', '>', ':', '|', '{', '}', '\\', '#', '$', '\n', '\r', ',']), "syntax char in {phrase:?}");
            prop_assert!(!phrase.contains("__"));
            prop_assert!(!phrase.contains(|c: char| c.is_control() || c == char::REPLACEMENT_CHARACTER), "noise char in {phrase:?}");
            // No keyword, comment or other syntax survives: one plain span.
            prop_assert_eq!(spans(phrase), vec![('T', phrase.as_str())]);
            let key = PhraseKey::new(phrase);
            prop_assert!(!phrase.to_lowercase().split(|c: char| !c.is_alphanumeric()).any(|w| w == "cat"));
            prop_assert!(!user_keys.iter().any(|k| k.covers(&key)));
            for earlier in &got[..i] {
                prop_assert!(!PhraseKey::new(earlier).covers(&key));
            }
        }
        if !got.is_empty() {
            let cost = last_chunk_cost(&append_details(&user, Dialect::A1111, &got), Dialect::A1111, &ClipTokenEstimate);
            prop_assert!(cost <= budget);
        }
    }
}
