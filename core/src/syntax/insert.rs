//! Where generated details go, and how they are joined to the prompt.

use super::{parse, Dialect, Parsed, SpanKind};

/// What precedes the insertion point; it decides the separator.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Before {
    /// Nothing but blanks, comments or a bare weight.
    Nothing,
    /// A comma the user already typed.
    Comma,
    /// `BREAK` / `AND`: details start the new chunk, no comma wanted.
    Keyword,
    /// An unclosed `(`, `[` or `{`: a comma would open the group with noise.
    Opener,
    /// Ordinary content.
    Content,
}

/// Byte offset at which generated details should be inserted into `prompt` as read by
/// `dialect`.
///
/// Details belong at the end of the last chunk's content: before trailing
/// whitespace, trailing comment lines and a trailing composable-diffusion
/// weight (`a cat AND a dog :1.2` -> before ` :1.2`). After a trailing comma
/// or keyword the blanks on the same line are kept before the details so
/// `"a cat, "` grows into `"a cat, details"`. An unclosed bracket is not
/// backed out of: its contents are the user's, and appending after them is
/// the only choice that keeps the prompt a prefix of the result. When a comment
/// follows that content on its line (A1111: `a fox # todo`), the reader would drop
/// anything inserted before the line ends, so the point is the end of that line and
/// [`append_details`] starts a new line.
pub fn insertion_point(prompt: &str, dialect: Dialect) -> usize {
    locate(&parse(prompt, dialect)).0
}

/// Where details go, what precedes them, and whether they start a new line after a
/// comment that shares the content's line.
fn locate(parsed: &Parsed<'_>) -> (usize, Before, bool) {
    let (at, before) = content_end(parsed);
    let src = parsed.source();
    let line = src.get(at..).unwrap_or("");
    let line = &line[..line.find('\n').unwrap_or(line.len())];
    let comment_on_line = before != Before::Nothing
        && parsed.spans().iter().any(|s| {
            s.kind == SpanKind::Comment && s.range.start >= at && s.range.start <= at + line.len()
        });
    if comment_on_line {
        let blanks = line.len() - line.trim_start_matches([' ', '\t']).len();
        // Only when nothing but blanks separates the content from the comment; a chunk
        // weight in between (`a dog :1.2 # c`) keeps the details before the weight.
        if line[blanks..].starts_with('#') {
            return (at + line.len(), before, true);
        }
    }
    (at, before, false)
}

fn content_end(parsed: &Parsed<'_>) -> (usize, Before) {
    let src = parsed.source();
    let mut found = None;
    for span in parsed.spans().iter().rev() {
        let text = parsed.slice(span);
        match span.kind {
            SpanKind::Comment | SpanKind::ChunkWeight => continue,
            SpanKind::Text | SpanKind::Alternative => {
                let trimmed = text.trim_end();
                if trimmed.is_empty() {
                    continue;
                }
                let before = if trimmed.ends_with(',') {
                    Before::Comma
                } else {
                    Before::Content
                };
                found = Some((span.range.start + trimmed.len(), before));
            }
            SpanKind::Keyword => found = Some((span.range.end, Before::Keyword)),
            SpanKind::Protected => {
                // An escaped `\(` is literal text, so only a bare opener counts.
                let before = if matches!(text, "(" | "[" | "{") {
                    Before::Opener
                } else {
                    Before::Content
                };
                found = Some((span.range.end, before));
            }
        }
        break;
    }
    let Some((mut at, before)) = found else {
        return (0, Before::Nothing);
    };
    if matches!(before, Before::Comma | Before::Keyword) {
        let rest = src.get(at..).unwrap_or("");
        at += rest.len() - rest.trim_start_matches([' ', '\t']).len();
    }
    (at, before)
}

/// The user's prompt, as read by `dialect`, with `details` inserted at
/// [`insertion_point`].
///
/// The result is `prompt[..p] + sep + details.join(", ") + prompt[p..]`;
/// `sep` is `", "` after ordinary content, a single space (or nothing if
/// one is already there) after a comma or keyword, and nothing at the very
/// start or right after an unclosed opener. After a line that ends in a comment
/// (A1111) `sep` starts with a newline and has no blank before the comma
/// (`a fox # todo` -> `a fox # todo\n, details`). Blank details are skipped; with
/// none left the prompt is returned unchanged. When the prompt is empty up
/// to a leading comment line, a newline keeps that comment a comment.
pub fn append_details(prompt: &str, dialect: Dialect, details: &[String]) -> String {
    let details: Vec<&str> = details
        .iter()
        .map(|d| d.trim())
        .filter(|d| !d.is_empty())
        .collect();
    if details.is_empty() {
        return prompt.to_owned();
    }
    let (at, before, new_line) = locate(&parse(prompt, dialect));
    let (head, tail) = prompt.split_at_checked(at).unwrap_or((prompt, ""));
    let sep = match (before, new_line) {
        (Before::Content, true) => "\n, ",
        (_, true) => "\n",
        (Before::Nothing | Before::Opener, false) => "",
        (Before::Comma | Before::Keyword, false) if head.ends_with([' ', '\t']) => "",
        (Before::Comma | Before::Keyword, false) => " ",
        (Before::Content, false) => ", ",
    };
    let comment_follows =
        before == Before::Nothing && tail.trim_start_matches([' ', '\t']).starts_with('#');
    let joined = details.join(", ");
    let mut out = String::with_capacity(prompt.len() + joined.len() + 3);
    out.push_str(head);
    out.push_str(sep);
    out.push_str(&joined);
    if comment_follows {
        out.push('\n');
    }
    out.push_str(tail);
    out
}

#[cfg(test)]
mod unit {
    use super::*;

    fn app(p: &str, d: &[&str]) -> String {
        app_as(p, Dialect::A1111, d)
    }

    fn app_as(p: &str, dialect: Dialect, d: &[&str]) -> String {
        let d: Vec<String> = d.iter().map(|s| s.to_string()).collect();
        append_details(p, dialect, &d)
    }

    #[test]
    fn plain_prompt_is_prefix() {
        assert_eq!(
            app("a cat", &["golden hour", "8k"]),
            "a cat, golden hour, 8k"
        );
        assert_eq!(insertion_point("a cat", Dialect::A1111), 5);
    }

    #[test]
    fn no_details_is_identity() {
        assert_eq!(app("a cat  ", &[]), "a cat  ");
        assert_eq!(app("a cat", &["  ", ""]), "a cat");
    }

    #[test]
    fn trailing_whitespace_stays_trailing() {
        assert_eq!(app("a cat \n", &["x"]), "a cat, x \n");
    }

    #[test]
    fn trailing_comma_not_doubled() {
        assert_eq!(app("a cat,", &["x"]), "a cat, x");
        assert_eq!(app("a cat, ", &["x"]), "a cat, x");
        assert_eq!(app("a cat,\n", &["x"]), "a cat, x\n");
    }

    #[test]
    fn before_and_weight() {
        assert_eq!(insertion_point("a cat AND a dog :1.2", Dialect::A1111), 15);
        assert_eq!(
            app("a cat AND a dog :1.2", &["x"]),
            "a cat AND a dog, x :1.2"
        );
        assert_eq!(app("a cat:0.5 AND a dog", &["x"]), "a cat:0.5 AND a dog, x");
        assert_eq!(app("a dog:1.2", &["x"]), "a dog, x:1.2");
    }

    #[test]
    fn emphasis_weight_is_not_chunk_weight() {
        assert_eq!(app("a (dog:1.2)", &["x"]), "a (dog:1.2), x");
    }

    #[test]
    fn before_trailing_comments() {
        assert_eq!(
            app("a cat\n# note\n# more", &["x"]),
            "a cat, x\n# note\n# more"
        );
        assert_eq!(app("# only a comment", &["x"]), "x\n# only a comment");
        assert_eq!(app("\n# c", &["x"]), "x\n# c");
    }

    #[test]
    fn after_keyword_no_comma() {
        assert_eq!(app("a cat BREAK", &["x"]), "a cat BREAK x");
        assert_eq!(app("a cat BREAK ", &["x"]), "a cat BREAK x");
        assert_eq!(app("a cat AND :1.5", &["x"]), "a cat AND x:1.5");
    }

    #[test]
    fn unclosed_brackets_append_at_end() {
        assert_eq!(app("a (cat", &["x"]), "a (cat, x");
        assert_eq!(app("a [cat:dog:", &["x"]), "a [cat:dog:, x");
        assert_eq!(app("a {", &["x"]), "a {x");
        assert_eq!(app(r"a \(", &["x"]), r"a \(, x");
        assert_eq!(app("a <lora:x", &["y"]), "a <lora:x, y");
    }

    #[test]
    fn syntax_at_end() {
        assert_eq!(app("a <lora:x:0.8>", &["y"]), "a <lora:x:0.8>, y");
        assert_eq!(app("{a|b}", &["y"]), "{a|b}, y");
        assert_eq!(app("__wild__", &["y"]), "__wild__, y");
    }

    #[test]
    fn empty_and_blank_prompts() {
        assert_eq!(app("", &["x", "y"]), "x, y");
        assert_eq!(app("   ", &["x"]), "x   ");
        assert_eq!(insertion_point("", Dialect::A1111), 0);
    }

    #[test]
    fn non_ascii() {
        assert_eq!(app("猫 🐱", &["x"]), "猫 🐱, x");
        assert_eq!(app("猫 🐱 ", &["x"]), "猫 🐱, x ");
    }

    #[test]
    fn a1111_comment_anywhere_in_the_line_moves_details_to_a_new_line() {
        let todo = "a red fox in the snow # todo: try a cabin later";
        assert_eq!(
            app(todo, &["x", "y"]),
            "a red fox in the snow # todo: try a cabin later\n, x, y"
        );
        let quoted = "a man wearing a t-shirt that says \"#python\" in black letters";
        assert_eq!(app(quoted, &["x"]), format!("{quoted}\n, x"));
        // The comment's line is not the last: details still follow it, before the rest.
        assert_eq!(app("a fox # c\n# more", &["x"]), "a fox # c\n, x\n# more");
        // A comma or keyword before the comment needs no second separator.
        assert_eq!(app("a fox, # c", &["x"]), "a fox, # c\nx");
        assert_eq!(app("a fox BREAK # c", &["x"]), "a fox BREAK # c\nx");
        // Content on a later line ends the comment's influence.
        assert_eq!(app("a fox # c\nin snow", &["x"]), "a fox # c\nin snow, x");
        // A chunk weight between content and comment keeps details before the weight.
        assert_eq!(app("a dog :1.2 # c", &["x"]), "a dog, x :1.2 # c");
    }

    #[test]
    fn comfyui_and_plain_have_no_comments() {
        for dialect in [Dialect::ComfyUi, Dialect::Plain] {
            assert_eq!(
                app_as("a red fox in the snow # todo", dialect, &["x"]),
                "a red fox in the snow # todo, x"
            );
            assert_eq!(
                app_as("# not a comment", dialect, &["x"]),
                "# not a comment, x"
            );
        }
    }
}
