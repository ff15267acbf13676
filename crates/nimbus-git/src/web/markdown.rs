//! Markdown to safe HTML: pulldown-cmark (CommonMark with GFM tables, task lists,
//! strikethrough), bare-URL autolinks and heading anchors added here, links and images resolved
//! inside the repository at the shown revision, and everything passed through ammonia last, so
//! no script, event handler, style or `javascript:` URL survives whatever the document holds.

use std::collections::{HashMap, HashSet};

use pulldown_cmark::{CowStr, Event, HeadingLevel, LinkType, Options, Parser, Tag, TagEnd};

use crate::web::{enc, enc_rev};

/// Where a document lives, for resolving its relative links.
pub struct LinkBase<'a> {
    pub repo: &'a str,
    pub rev: &'a str,
    /// The document's directory inside the repository ("" at the root).
    pub dir: &'a str,
}

/// Prefix of heading ids, so a document cannot reuse the page's own ids (`L10`, …).
const ID_PREFIX: &str = "md-";

/// Render `text` to sanitized HTML.
pub fn render(text: &str, base: &LinkBase<'_>) -> String {
    let options = Options::ENABLE_TABLES
        | Options::ENABLE_TASKLISTS
        | Options::ENABLE_STRIKETHROUGH
        | Options::ENABLE_GFM;
    let mut events: Vec<Event<'_>> = Vec::new();
    let mut in_link = 0usize;
    let mut in_code = false;
    // pulldown-cmark splits text at possible emphasis delimiters (`_`), so adjacent text is
    // joined before looking for URLs in it.
    let mut pending = String::new();
    for event in Parser::new_ext(text, options) {
        if let Event::Text(text) = &event
            && in_link == 0
            && !in_code
        {
            pending.push_str(text);
            continue;
        }
        if !pending.is_empty() {
            autolink(std::mem::take(&mut pending).into(), &mut events);
        }
        match event {
            Event::Start(Tag::Link { .. }) => {
                in_link += 1;
                events.push(event);
            }
            Event::End(TagEnd::Link) => {
                in_link = in_link.saturating_sub(1);
                events.push(event);
            }
            Event::Start(Tag::CodeBlock(kind)) => {
                in_code = true;
                events.push(Event::Start(Tag::CodeBlock(kind)));
            }
            Event::End(TagEnd::CodeBlock) => {
                in_code = false;
                events.push(Event::End(TagEnd::CodeBlock));
            }
            other => events.push(other),
        }
    }
    if !pending.is_empty() {
        autolink(pending.into(), &mut events);
    }
    add_heading_ids(&mut events);
    let mut html = String::with_capacity(text.len() * 3 / 2);
    pulldown_cmark::html::push_html(&mut html, events.into_iter());
    let clean = sanitizer(base).clean(&html).to_string();
    alt_for_images(&clean)
}

/// Give every `<img>` without an `alt` an empty one (decorative), so a document's raw HTML
/// does not make the page inaccessible. Runs on ammonia's serialised output, where tags are
/// well formed and attribute values quoted.
fn alt_for_images(html: &str) -> String {
    let mut out = String::with_capacity(html.len() + 16);
    let mut rest = html;
    while let Some(start) = rest.find("<img") {
        out.push_str(&rest[..start]);
        let tag = &rest[start..];
        // The end of the tag: the first '>' outside a quoted value.
        let mut in_quote = false;
        let mut end = tag.len();
        for (idx, c) in tag.char_indices() {
            match c {
                '"' => in_quote = !in_quote,
                '>' if !in_quote => {
                    end = idx;
                    break;
                }
                _ => {}
            }
        }
        let inside = &tag[..end];
        out.push_str(inside);
        if !inside.contains(" alt=\"") {
            out.push_str(" alt=\"\"");
        }
        rest = &tag[end..];
    }
    out.push_str(rest);
    out
}

fn sanitizer<'a>(base: &'a LinkBase<'a>) -> ammonia::Builder<'a> {
    let mut builder = ammonia::Builder::default();
    let headings = ["h1", "h2", "h3", "h4", "h5", "h6"];
    let mut tag_attributes: HashMap<&str, HashSet<&str>> = HashMap::new();
    for heading in headings {
        tag_attributes.insert(heading, HashSet::from(["id"]));
    }
    tag_attributes.insert("input", HashSet::from(["type", "checked", "disabled"]));
    tag_attributes.insert("a", HashSet::from(["href", "title"]));
    tag_attributes.insert(
        "img",
        HashSet::from(["src", "alt", "title", "width", "height"]),
    );
    tag_attributes.insert("ol", HashSet::from(["start"]));
    tag_attributes.insert("td", HashSet::from(["align"]));
    tag_attributes.insert("th", HashSet::from(["align"]));
    builder
        .add_tags(["input"])
        .tag_attributes(tag_attributes)
        .attribute_filter(|element, attribute, value| match (element, attribute) {
            // Task-list boxes only, and never editable.
            ("input", "type") => (value == "checkbox").then(|| value.into()),
            _ => Some(value.into()),
        })
        .set_tag_attribute_value("input", "disabled", "")
        .set_tag_attribute_value("input", "aria-label", "task done")
        .link_rel(Some("noopener noreferrer nofollow"))
        .id_prefix(Some(ID_PREFIX))
        .url_relative(ammonia::UrlRelative::Custom(Box::new(Resolver(base))))
        .strip_comments(true);
    builder
}

/// Hands ammonia's relative URLs to [`resolve`].
struct Resolver<'a>(&'a LinkBase<'a>);

impl<'a> ammonia::UrlRelativeEvaluate<'a> for Resolver<'a> {
    fn evaluate<'url>(&self, url: &'url str) -> Option<std::borrow::Cow<'url, str>> {
        Some(resolve(url, self.0).into())
    }
}

/// Turn bare `http(s)://` and `www.` URLs in text into links (GFM's extended autolinks).
fn autolink<'a>(text: CowStr<'a>, events: &mut Vec<Event<'a>>) {
    let s: &str = &text;
    let mut rest_at = 0usize;
    let mut out: Vec<Event<'a>> = Vec::new();
    let mut search = 0usize;
    while let Some(found) = find_url_start(&s[search..]) {
        let start = search + found;
        let end = start + url_len(&s[start..]);
        let url = &s[start..end];
        let host_ok = url
            .trim_start_matches("https://")
            .trim_start_matches("http://")
            .split('/')
            .next()
            .is_some_and(|host| host.contains('.') || host.starts_with("localhost"));
        if end == start || !host_ok {
            search = start + 1;
            continue;
        }
        if start > rest_at {
            out.push(Event::Text(s[rest_at..start].to_owned().into()));
        }
        let href = if url.starts_with("www.") {
            format!("http://{url}")
        } else {
            url.to_owned()
        };
        out.push(Event::Start(Tag::Link {
            link_type: LinkType::Autolink,
            dest_url: href.into(),
            title: CowStr::Borrowed(""),
            id: CowStr::Borrowed(""),
        }));
        out.push(Event::Text(url.to_owned().into()));
        out.push(Event::End(TagEnd::Link));
        rest_at = end;
        search = end;
    }
    if out.is_empty() {
        events.push(Event::Text(text));
        return;
    }
    if rest_at < s.len() {
        out.push(Event::Text(s[rest_at..].to_owned().into()));
    }
    events.extend(out);
}

fn find_url_start(s: &str) -> Option<usize> {
    let mut best: Option<usize> = None;
    for pattern in ["https://", "http://", "www."] {
        let mut from = 0;
        while let Some(idx) = s[from..].find(pattern) {
            let at = from + idx;
            // Only at a word boundary.
            let boundary = s[..at]
                .chars()
                .next_back()
                .is_none_or(|c| c.is_whitespace() || "*_~(".contains(c));
            if boundary {
                best = Some(best.map_or(at, |b| b.min(at)));
                break;
            }
            from = at + pattern.len();
        }
    }
    best
}

/// Length of the URL at the start of `s`: up to whitespace or `<`, without trailing
/// punctuation or an unbalanced closing parenthesis.
fn url_len(s: &str) -> usize {
    let mut end = s
        .find(|c: char| c.is_whitespace() || c == '<')
        .unwrap_or(s.len());
    loop {
        let url = &s[..end];
        let Some(last) = url.chars().next_back() else {
            return 0;
        };
        if "?!.,:*_~'\";".contains(last) {
            end -= last.len_utf8();
        } else if last == ')' && url.matches(')').count() > url.matches('(').count() {
            end -= 1;
        } else {
            return end;
        }
    }
}

/// Give every heading an id (GitHub-style slug, deduplicated) and a self-link.
fn add_heading_ids(events: &mut [Event<'_>]) {
    let mut used: HashMap<String, usize> = HashMap::new();
    let mut idx = 0;
    while idx < events.len() {
        if let Event::Start(Tag::Heading { level, .. }) = &events[idx] {
            let level = *level;
            let mut text = String::new();
            let mut end = idx + 1;
            while end < events.len() && !matches!(events[end], Event::End(TagEnd::Heading(_))) {
                if let Event::Text(t) | Event::Code(t) = &events[end] {
                    text.push_str(t);
                }
                end += 1;
            }
            let mut slug: String = text
                .trim()
                .to_lowercase()
                .chars()
                .filter_map(|c| match c {
                    ' ' => Some('-'),
                    c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
                    _ => None,
                })
                .collect();
            let count = used.entry(slug.clone()).or_insert(0);
            if *count > 0 {
                slug = format!("{slug}-{count}");
            }
            *count += 1;
            let open = format!(
                "<{tag} id=\"{id}\"><a class=\"anchor\" href=\"#{id}\" aria-label=\"link to this section\">#</a> ",
                tag = level_tag(level),
                id = html_attr(&slug)
            );
            events[idx] = Event::Html(open.into());
            if end < events.len() {
                events[end] = Event::Html(format!("</{}>\n", level_tag(level)).into());
            }
            idx = end;
        }
        idx += 1;
    }
}

fn level_tag(level: HeadingLevel) -> &'static str {
    match level {
        HeadingLevel::H1 => "h1",
        HeadingLevel::H2 => "h2",
        HeadingLevel::H3 => "h3",
        HeadingLevel::H4 => "h4",
        HeadingLevel::H5 => "h5",
        HeadingLevel::H6 => "h6",
    }
}

fn html_attr(s: &str) -> String {
    let mut out = String::new();
    crate::web::highlight::escape_into(&mut out, s);
    out
}

/// A relative URL (from Markdown or raw HTML; ammonia asks for each one, and keeps absolute
/// URLs only in safe schemes) as the page should use it: `#frag` points at the prefixed
/// heading ids; repository paths become file pages at the same revision, or raw files for
/// images (by extension), with `..` unable to climb above the root.
fn resolve(dest: &str, base: &LinkBase<'_>) -> String {
    let dest = dest.trim();
    if let Some(fragment) = dest.strip_prefix('#') {
        return format!("#{ID_PREFIX}{}", enc(fragment));
    }
    let has_scheme = dest.split_once(':').is_some_and(|(scheme, _)| {
        !scheme.is_empty()
            && !scheme.contains('/')
            && scheme
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c))
    });
    if has_scheme || dest.starts_with("//") || dest.is_empty() {
        return dest.to_owned();
    }
    let (path, fragment) = match dest.split_once('#') {
        Some((path, fragment)) => (path, Some(fragment)),
        None => (dest, None),
    };
    let path = path.split_once('?').map_or(path, |(p, _)| p);
    let joined = if let Some(absolute) = path.strip_prefix('/') {
        absolute.to_owned()
    } else if base.dir.is_empty() {
        path.to_owned()
    } else {
        format!("{}/{path}", base.dir)
    };
    let mut parts: Vec<String> = Vec::new();
    for part in joined.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            // Markdown authors write `my%20file.md`; decode so we encode once.
            part => parts.push(percent_decode(part)),
        }
    }
    let path = parts.join("/");
    let image = path
        .rsplit_once('.')
        .is_some_and(|(_, ext)| IMAGE_EXTENSIONS.contains(&ext.to_ascii_lowercase().as_str()));
    let kind = if image { "raw" } else { "blob" };
    let mut url = format!("/{}/{kind}/{}/{}", base.repo, enc_rev(base.rev), enc(&path));
    if let Some(fragment) = fragment.filter(|f| !f.is_empty()) {
        url.push('#');
        url.push_str(&enc(fragment));
    }
    url
}

/// Files served raw when a document links them, so `<img>` shows them.
pub const IMAGE_EXTENSIONS: &[&str] = &[
    "png", "jpg", "jpeg", "gif", "webp", "svg", "ico", "bmp", "avif",
];

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut idx = 0;
    while idx < bytes.len() {
        if bytes[idx] == b'%'
            && idx + 2 < bytes.len()
            && let Ok(byte) = u8::from_str_radix(&s[idx + 1..idx + 3], 16)
        {
            out.push(byte);
            idx += 3;
            continue;
        }
        out.push(bytes[idx]);
        idx += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: LinkBase<'static> = LinkBase {
        repo: "site",
        rev: "main",
        dir: "docs",
    };

    fn check(markdown: &str, must: &[&str], must_not: &[&str]) {
        let html = render(markdown, &BASE);
        for m in must {
            assert!(html.contains(m), "expected {m:?} in:\n{html}");
        }
        for m in must_not {
            assert!(
                !html.to_lowercase().contains(&m.to_lowercase()),
                "unexpected {m:?} in:\n{html}"
            );
        }
    }

    #[test]
    fn gfm_features() {
        check(
            "# Title\n\n| a | b |\n|---|---|\n| 1 | 2 |\n\n- [x] done\n- [ ] todo\n\n~~old~~\n\n```rust\nfn main() {}\n```\n",
            &[
                "<h1 id=\"md-title\">",
                "href=\"#md-title\"",
                "<table>",
                "<td>1</td>",
                "type=\"checkbox\"",
                "checked",
                "disabled",
                "<del>old</del>",
                "<pre><code>fn main() {}",
            ],
            &[],
        );
        check(
            "See https://example.com/a_(b). and www.rust-lang.org, <https://x.org>.",
            &[
                "<a href=\"https://example.com/a_(b)\" rel=\"noopener noreferrer nofollow\">https://example.com/a_(b)</a>.",
                "<a href=\"http://www.rust-lang.org\"",
                "<a href=\"https://x.org\"",
            ],
            &[],
        );
        check(
            "## Same\n## Same\n## `Code` & more!\n",
            &["id=\"md-same\"", "id=\"md-same-1\"", "id=\"md-code--more\""],
            &[],
        );
    }

    #[test]
    fn links_resolve_inside_the_repository() {
        check(
            "[a](guide.md) [b](../README.md#usage) [c](/src/lib.rs) [d](../../../../etc/passwd) \
             [e](#install) [f](my%20notes.md) ![logo](img/logo.png) [g](https://example.com/x)",
            &[
                "href=\"/site/blob/main/docs/guide.md\"",
                "href=\"/site/blob/main/README.md#usage\"",
                "href=\"/site/blob/main/src/lib.rs\"",
                "href=\"/site/blob/main/etc/passwd\"",
                "href=\"#md-install\"",
                "href=\"/site/blob/main/docs/my%20notes.md\"",
                "src=\"/site/raw/main/docs/img/logo.png\"",
                "href=\"https://example.com/x\"",
            ],
            &[],
        );
    }

    #[test]
    fn hostile_documents_render_inert() {
        check(
            "<script>alert(1)</script>\n\n<img src=x onerror=alert(1)>\n\n[click](javascript:alert(1))\n\n\
             <a href=\"JaVaScRiPt:alert(1)\">x</a>\n\n<a href=\"java&#x09;script:alert(1)\">y</a>\n\n\
             <!-- <script>alert(1)</script> -->\n\n<iframe src=\"https://evil.example\"></iframe>\n\n\
             <div style=\"position:fixed\" onclick=\"alert(1)\">z</div>\n\n<svg><script>alert(1)</script></svg>\n\n\
             <form action=\"https://evil.example\"><input type=\"password\"></form>\n\n\
             ![x](javascript:alert(1))\n\n<object data=\"x\"></object><embed src=\"x\">\n\n\
             <a href=\"data:text/html;base64,PHNjcmlwdD4=\">d</a>\n\n<meta http-equiv=\"refresh\" content=\"0;url=https://evil.example\">\n\n\
             <h1 id=\"L10\">clobber</h1>\n\n<style>body{display:none}</style>",
            &[
                "<img src=\"/site/blob/main/docs/x\" alt=\"\">",
                "clobber",
                "id=\"md-L10\"",
            ],
            &[
                "<script",
                "onerror",
                "onclick",
                "javascript:",
                "<iframe",
                "style=",
                "<style",
                "<form",
                "password",
                "<object",
                "<embed",
                "data:text",
                "<meta",
                "<!--",
                "alert(1)</",
            ],
        );
    }
}
