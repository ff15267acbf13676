//! Server-side syntax highlighting with syntect (its bundled Sublime syntaxes, pure-Rust
//! `fancy-regex` engine). Output is one HTML fragment per line with flat `<span class="…">`
//! tokens from a small fixed palette, so every line stands alone in the table of a code view and
//! the stylesheet (light and dark) stays short. Results are cached by blob id.

use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant};

use gix::ObjectId;
use syntect::parsing::{ParseState, Scope, ScopeStack, SyntaxReference, SyntaxSet};

use crate::lastcommit::Lru;

/// Larger files are shown without highlighting.
pub const HIGHLIGHT_LIMIT: usize = 512 << 10;
/// Highlighted HTML kept in memory, all repositories together.
const CACHE_BYTES: usize = 32 << 20;
/// A file whose highlighting takes longer than this is shown plain (pathological regexes;
/// generous because the first use of a syntax compiles its regexes).
const HIGHLIGHT_BUDGET: Duration = Duration::from_secs(10);

static SYNTAXES: LazyLock<SyntaxSet> = LazyLock::new(SyntaxSet::load_defaults_newlines);

/// Scope prefixes and the class their tokens get; the first match from the innermost scope wins.
static CLASSES: LazyLock<Vec<(Scope, &'static str)>> = LazyLock::new(|| {
    [
        ("comment", "c"),
        ("string", "s"),
        ("constant.numeric", "n"),
        ("constant.character.escape", "e"),
        ("constant.language", "k"),
        ("constant", "n"),
        ("keyword", "k"),
        // Declaration keywords (`fn`, `struct`, `class`…) read as keywords, not types.
        ("storage.type.function", "k"),
        ("storage.type.struct", "k"),
        ("storage.type.enum", "k"),
        ("storage.type.impl", "k"),
        ("storage.type.trait", "k"),
        ("storage.type.module", "k"),
        ("storage.type.class", "k"),
        ("storage.type", "t"),
        ("storage", "k"),
        ("entity.name.function", "f"),
        ("support.function", "f"),
        ("variable.function", "f"),
        ("entity.name.tag", "k"),
        ("entity.other.attribute-name", "a"),
        ("entity.name", "t"),
        ("support.type", "t"),
        ("support.class", "t"),
        ("meta.preprocessor", "p"),
        ("markup.heading", "k"),
        ("markup.inserted", "i"),
        ("markup.deleted", "d"),
        ("markup.bold", "b"),
        ("markup.italic", "m"),
        ("variable.language", "k"),
    ]
    .into_iter()
    .filter_map(|(scope, class)| Scope::new(scope).ok().map(|s| (s, class)))
    .collect()
});

/// The highlighted lines of blobs, by blob id.
pub struct HighlightCache {
    lines: Mutex<Lru<ObjectId, Arc<Vec<String>>>>,
}

impl Default for HighlightCache {
    fn default() -> Self {
        HighlightCache {
            lines: Mutex::new(Lru::new(CACHE_BYTES)),
        }
    }
}

impl HighlightCache {
    pub fn clear(&self) {
        *self.lines.lock().expect("highlight lock") = Lru::new(CACHE_BYTES);
    }

    /// Highlighted HTML per line of `text` (the blob `id` at `path`), or `None` when no syntax
    /// fits, the text is too large, or highlighting took too long.
    pub fn lines(&self, id: ObjectId, path: &str, text: &str) -> Option<Arc<Vec<String>>> {
        if let Some(hit) = self.lines.lock().expect("highlight lock").get(&id) {
            return Some(hit);
        }
        let syntax = syntax_for(path, text)?;
        let lines = Arc::new(highlight(syntax, text)?);
        self.lines.lock().expect("highlight lock").insert(
            id,
            lines.clone(),
            lines.iter().map(|l| l.len() + 24).sum(),
        );
        Some(lines)
    }
}

/// The syntax for a file name (extension, then full name like `Makefile`), else its first line.
pub fn syntax_for(path: &str, text: &str) -> Option<&'static SyntaxReference> {
    if text.len() > HIGHLIGHT_LIMIT {
        return None;
    }
    let name = path.rsplit('/').next().unwrap_or(path);
    let set = &*SYNTAXES;
    let by_name = name
        .rsplit_once('.')
        .and_then(|(_, ext)| set.find_syntax_by_extension(ext))
        .or_else(|| set.find_syntax_by_extension(name));
    let syntax = by_name.or_else(|| set.find_syntax_by_first_line(text.lines().next()?))?;
    (syntax.name != "Plain Text").then_some(syntax)
}

/// One HTML fragment per line (newlines dropped), tokens escaped and wrapped in spans.
pub fn highlight(syntax: &SyntaxReference, text: &str) -> Option<Vec<String>> {
    let started = Instant::now();
    let mut state = ParseState::new(syntax);
    let mut stack = ScopeStack::new();
    let mut out = Vec::new();
    for line in syntect::util::LinesWithEndings::from(text) {
        if started.elapsed() > HIGHLIGHT_BUDGET {
            return None;
        }
        let ops = state.parse_line(line, &SYNTAXES).ok()?;
        let mut html = String::with_capacity(line.len() * 2);
        let mut at = 0;
        let mut open = None;
        for (pos, op) in ops {
            push_token(&mut html, &line[at..pos], &stack, &mut open);
            at = pos;
            stack.apply(&op).ok()?;
        }
        push_token(&mut html, &line[at..], &stack, &mut open);
        if open.is_some() {
            html.push_str("</span>");
        }
        out.push(html);
    }
    Some(out)
}

/// Append a token; neighbours of the same class share one span (`open` is the span left open).
fn push_token(html: &mut String, token: &str, stack: &ScopeStack, open: &mut Option<&'static str>) {
    let token = token.trim_end_matches(['\n', '\r']);
    if token.is_empty() {
        return;
    }
    let class = stack.as_slice().iter().rev().find_map(|scope| {
        CLASSES
            .iter()
            .find(|(prefix, _)| prefix.is_prefix_of(*scope))
            .map(|(_, class)| *class)
    });
    if class != *open {
        if open.is_some() {
            html.push_str("</span>");
        }
        if let Some(class) = class {
            html.push_str("<span class=\"");
            html.push_str(class);
            html.push_str("\">");
        }
        *open = class;
    }
    escape_into(html, token);
}

pub fn escape_into(html: &mut String, text: &str) {
    for c in text.chars() {
        match c {
            '<' => html.push_str("&lt;"),
            '>' => html.push_str("&gt;"),
            '&' => html.push_str("&amp;"),
            '"' => html.push_str("&quot;"),
            '\'' => html.push_str("&#39;"),
            c => html.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rust_is_highlighted_and_escaped() {
        let text = "// say <hi>\nfn main() {\n    let s = \"<b>\";\n}\n";
        let syntax = syntax_for("src/main.rs", text).expect("rust syntax");
        let lines = highlight(syntax, text).expect("highlighted");
        assert_eq!(lines.len(), 4);
        assert_eq!(lines[0], "<span class=\"c\">// say &lt;hi&gt;</span>");
        assert!(
            lines[1].contains("<span class=\"k\">fn</span>"),
            "{}",
            lines[1]
        );
        assert!(lines[2].contains("&quot;&lt;b&gt;&quot;"), "{}", lines[2]);
        assert!(!lines.iter().any(|l| l.contains('\n')));
    }

    #[test]
    fn syntax_choice() {
        assert_eq!(
            syntax_for("a/Makefile", "all:\n").map(|s| s.name.as_str()),
            Some("Makefile")
        );
        assert_eq!(
            syntax_for("run", "#!/bin/bash\necho hi\n").map(|s| s.name.as_str()),
            Some("Bourne Again Shell (bash)")
        );
        assert!(syntax_for("notes.txt", "hello\n").is_none());
        assert!(syntax_for("big.rs", &"x".repeat(HIGHLIGHT_LIMIT + 1)).is_none());
    }

    #[test]
    fn multi_line_comments_stay_balanced_per_line() {
        let text = "/* one\ntwo <x>\nthree */ int x;\n";
        let syntax = syntax_for("a.c", text).expect("c syntax");
        let lines = highlight(syntax, text).expect("highlighted");
        for line in &lines {
            assert_eq!(
                line.matches("<span").count(),
                line.matches("</span>").count(),
                "{line}"
            );
        }
        assert_eq!(lines[1], "<span class=\"c\">two &lt;x&gt;</span>");
    }
}
