//! GitHub's filter patterns for branches, tags and paths.
//!
//! | pattern | matches |
//! | --- | --- |
//! | `*` | zero or more characters, but not `/` |
//! | `**` | zero or more of any character; `**/` also matches no directory at all |
//! | `?` | zero or one of the preceding character (or `[...]` class) |
//! | `+` | one or more of the preceding character (or class) |
//! | `[abc]`, `[0-9a-z]` | one character listed or inside a range |
//! | `\x` | the character `x` literally (to match `*`, `?`, `+`, `[`, `]`, `!`, `\`) |
//!
//! In a list, a leading `!` makes a pattern negative, and the last pattern that matches a name
//! decides (a later `!pattern` excludes again what an earlier pattern included, and the other way
//! round). Matching walks states (pattern position × text position) with a visited set: linear in
//! their product, never exponential, never recursive.

use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Atom {
    Char(char),
    /// Inclusive ranges; a listed character is a range of one.
    Class(Vec<(char, char)>),
}

impl Atom {
    fn matches(&self, c: char) -> bool {
        match self {
            Atom::Char(x) => *x == c,
            Atom::Class(ranges) => ranges.iter().any(|(lo, hi)| (*lo..=*hi).contains(&c)),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    One(Atom),
    Optional(Atom),
    OneOrMore(Atom),
    /// `*`
    Star,
    /// `**` not followed by `/`
    AnyStar,
    /// `**/`: nothing, or anything that ends with `/`
    AnyDirs,
}

/// One compiled filter pattern (with its negation).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pattern {
    source: String,
    negated: bool,
    tokens: Vec<Token>,
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

impl Pattern {
    /// Compiles a pattern; the error says what is wrong with it.
    pub fn new(source: &str) -> Result<Pattern, String> {
        let (negated, body) = match source.strip_prefix('!') {
            Some(rest) => (true, rest),
            None => (false, source),
        };
        if body.is_empty() {
            return Err("empty pattern".to_owned());
        }
        let chars: Vec<char> = body.chars().collect();
        let mut tokens = Vec::new();
        let mut i = 0;
        while i < chars.len() {
            match chars[i] {
                '*' if chars.get(i + 1) == Some(&'*') => {
                    if chars.get(i + 2) == Some(&'/') {
                        tokens.push(Token::AnyDirs);
                        i += 3;
                    } else {
                        tokens.push(Token::AnyStar);
                        i += 2;
                    }
                }
                '*' => {
                    tokens.push(Token::Star);
                    i += 1;
                }
                q @ ('?' | '+') => {
                    let atom = match tokens.pop() {
                        Some(Token::One(atom)) => atom,
                        _ => {
                            return Err(format!(
                                "`{q}` must follow a character or a `[...]` class"
                            ));
                        }
                    };
                    tokens.push(if q == '?' {
                        Token::Optional(atom)
                    } else {
                        Token::OneOrMore(atom)
                    });
                    i += 1;
                }
                '[' => {
                    let mut ranges = Vec::new();
                    i += 1;
                    loop {
                        let Some(&c) = chars.get(i) else {
                            return Err("unclosed `[`".to_owned());
                        };
                        if c == ']' {
                            i += 1;
                            break;
                        }
                        let c = if c == '\\' {
                            i += 1;
                            *chars.get(i).ok_or("unclosed `[`")?
                        } else {
                            c
                        };
                        if chars.get(i + 1) == Some(&'-')
                            && chars.get(i + 2).is_some_and(|&h| h != ']')
                        {
                            let hi = chars[i + 2];
                            if hi < c {
                                return Err(format!("range `{c}-{hi}` is reversed"));
                            }
                            ranges.push((c, hi));
                            i += 3;
                        } else {
                            ranges.push((c, c));
                            i += 1;
                        }
                    }
                    if ranges.is_empty() {
                        return Err("empty `[]`".to_owned());
                    }
                    tokens.push(Token::One(Atom::Class(ranges)));
                }
                '\\' => {
                    let c = *chars.get(i + 1).ok_or("pattern ends with `\\`")?;
                    tokens.push(Token::One(Atom::Char(c)));
                    i += 2;
                }
                c => {
                    tokens.push(Token::One(Atom::Char(c)));
                    i += 1;
                }
            }
        }
        Ok(Pattern {
            source: source.to_owned(),
            negated,
            tokens,
        })
    }

    /// The pattern as written, `!` included.
    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// Whether the pattern starts with `!`.
    pub fn is_negated(&self) -> bool {
        self.negated
    }

    /// Whether the pattern (without its `!`) matches the whole of `text`.
    pub fn matches(&self, text: &str) -> bool {
        let text: Vec<char> = text.chars().collect();
        let (n_tokens, n_chars) = (self.tokens.len(), text.len());
        let width = n_chars + 1;
        let mut seen = vec![false; (n_tokens + 1) * width];
        let mut stack = vec![(0usize, 0usize)];
        while let Some((t, p)) = stack.pop() {
            let state = t * width + p;
            if seen[state] {
                continue;
            }
            seen[state] = true;
            let Some(token) = self.tokens.get(t) else {
                if p == n_chars {
                    return true;
                }
                continue;
            };
            let next = text.get(p).copied();
            match token {
                Token::One(atom) => {
                    if next.is_some_and(|c| atom.matches(c)) {
                        stack.push((t + 1, p + 1));
                    }
                }
                Token::Optional(atom) => {
                    stack.push((t + 1, p));
                    if next.is_some_and(|c| atom.matches(c)) {
                        stack.push((t + 1, p + 1));
                    }
                }
                Token::OneOrMore(atom) => {
                    if next.is_some_and(|c| atom.matches(c)) {
                        stack.push((t + 1, p + 1));
                        stack.push((t, p + 1));
                    }
                }
                Token::Star => {
                    stack.push((t + 1, p));
                    if next.is_some_and(|c| c != '/') {
                        stack.push((t, p + 1));
                    }
                }
                Token::AnyStar => {
                    stack.push((t + 1, p));
                    if next.is_some() {
                        stack.push((t, p + 1));
                    }
                }
                Token::AnyDirs => {
                    stack.push((t + 1, p));
                    for (q, &c) in text.iter().enumerate().skip(p) {
                        if c == '/' {
                            stack.push((t + 1, q + 1));
                        }
                    }
                }
            }
        }
        false
    }
}

/// GitHub's list rule: the last pattern that matches decides; no match means excluded.
pub(crate) fn list_matches(patterns: &[Pattern], text: &str) -> bool {
    patterns
        .iter()
        .rev()
        .find(|p| p.matches(text))
        .is_some_and(|p| !p.is_negated())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(pattern: &str, yes: &[&str], no: &[&str]) {
        let compiled = Pattern::new(pattern).unwrap();
        for text in yes {
            assert!(compiled.matches(text), "`{pattern}` should match `{text}`");
        }
        for text in no {
            assert!(
                !compiled.matches(text),
                "`{pattern}` should not match `{text}`"
            );
        }
    }

    // The examples of GitHub's "filter pattern cheat sheet".
    #[test]
    fn cheat_sheet_branches_and_tags() {
        check(
            "feature/*",
            &["feature/my-branch", "feature/your-branch"],
            &["feature/a/b", "feature"],
        );
        check(
            "feature/**",
            &[
                "feature/beta-a/my-branch",
                "feature/your-branch",
                "feature/mona/the/octocat",
            ],
            &["feature"],
        );
        check("main", &["main"], &["mains", "releases/main"]);
        check(
            "releases/mona-the-octocat",
            &["releases/mona-the-octocat"],
            &["releases/mona"],
        );
        check("*", &["main", "releases"], &["releases/10", "feature/a"]);
        check("**", &["all/the/branches", "every/tag", "main"], &[]);
        check(
            "*feature",
            &["mona-feature", "feature", "ver-10-feature"],
            &["feature-x"],
        );
        check("v2*", &["v2", "v2.0", "v2.9"], &["v1", "v2/x"]);
        check(
            "v[12].[0-9]+.[0-9]+",
            &["v1.10.1", "v2.0.0"],
            &["v3.0.0", "v1.a.0", "v1..0"],
        );
    }

    #[test]
    fn cheat_sheet_paths() {
        check("*", &["README.md", "server.rb"], &["docs/x.md"]);
        check(
            "*.jsx?",
            &["page.js", "page.jsx"],
            &["page.jsxx", "a/page.js"],
        );
        check("**", &["all/the/files.md"], &[]);
        check("*.js", &["app.js", "index.js"], &["src/app.js"]);
        check(
            "**.js",
            &["index.js", "js/index.js", "src/js/app.js"],
            &["index.ts"],
        );
        check(
            "docs/*",
            &["docs/README.md", "docs/file.txt"],
            &["docs/a/b.md"],
        );
        check(
            "docs/**",
            &["docs/README.md", "docs/mona/octocat.txt"],
            &["docs", "other/docs/x"],
        );
        check(
            "docs/**/*.md",
            &[
                "docs/README.md",
                "docs/mona/hello-world.md",
                "docs/a/markdown/file.md",
            ],
            &["docs/a.txt"],
        );
        check(
            "**/docs/**",
            &[
                "docs/hello.md",
                "dir/docs/my-file.txt",
                "space/docs/plan/space.doc",
            ],
            &["docs"],
        );
        check(
            "**/README.md",
            &["README.md", "js/README.md"],
            &["README.mdx"],
        );
        check(
            "**/*src/**",
            &["a/src/app.js", "my-src/code/js/app.js"],
            &["src"],
        );
        check(
            "**/*-post.md",
            &["my-post.md", "path/their-post.md"],
            &["post.md"],
        );
        check(
            "**/migrate-*.sql",
            &[
                "migrate-10909.sql",
                "db/migrate-v1.0.sql",
                "db/sept/migrate-v1.sql",
            ],
            &["migrate.sql"],
        );
    }

    #[test]
    fn escapes_classes_and_errors() {
        check("a\\*b", &["a*b"], &["axb"]);
        check("[a\\]]", &["a", "]"], &["b"]);
        check("x+", &["x", "xxx"], &["", "y"]);
        assert_eq!(
            Pattern::new("?a").unwrap_err(),
            "`?` must follow a character or a `[...]` class"
        );
        assert_eq!(
            Pattern::new("*+").unwrap_err(),
            "`+` must follow a character or a `[...]` class"
        );
        assert_eq!(Pattern::new("[ab").unwrap_err(), "unclosed `[`");
        assert_eq!(
            Pattern::new("[z-a]").unwrap_err(),
            "range `z-a` is reversed"
        );
        assert_eq!(Pattern::new("!").unwrap_err(), "empty pattern");
        assert_eq!(Pattern::new("a\\").unwrap_err(), "pattern ends with `\\`");
    }

    #[test]
    fn last_matching_pattern_decides() {
        let list: Vec<Pattern> = ["releases/**", "!releases/**-alpha", "releases/keep-alpha"]
            .iter()
            .map(|p| Pattern::new(p).unwrap())
            .collect();
        assert!(list_matches(&list, "releases/1.0"));
        assert!(!list_matches(&list, "releases/1.0-alpha"));
        assert!(list_matches(&list, "releases/keep-alpha"));
        assert!(!list_matches(&list, "main"));
    }

    #[test]
    fn pathological_patterns_stay_fast() {
        let pattern = Pattern::new(&"**a".repeat(50)).unwrap();
        let text = "a".repeat(49) + "b";
        assert!(!pattern.matches(&text));
    }
}
