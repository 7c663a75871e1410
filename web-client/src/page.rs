//! What a page is to a reader, before any DOM: its address and format from
//! the URL, its title, the links in a Text page, and the document a
//! Markdown or HTML page is shown in. Pure, so every rule is unit-tested
//! natively (docs/pages.md says why each is the way it is).
//!
//! The format travels in the URL's fragment (`/<hash>#markdown`): the
//! fragment never reaches the server and is not part of the address, so
//! the address stays the SHA-256 of the page's bytes and a bare `/<hash>`
//! still works, shown as Text.

use std::ops::Range;

use ephemeral_shared::PageHash;
use pulldown_cmark::{Options, Parser, html};

/// How a page's bytes are shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Format {
    /// What the author typed is what the reader sees; links are clickable.
    #[default]
    Text,
    Markdown,
    Html,
}

impl Format {
    pub const ALL: [Format; 3] = [Format::Text, Format::Markdown, Format::Html];

    /// The name in URLs, storage and `data-format`.
    pub fn as_str(self) -> &'static str {
        match self {
            Format::Text => "text",
            Format::Markdown => "markdown",
            Format::Html => "html",
        }
    }

    /// The format a name stands for; anything else is Text, so a fragment
    /// someone added by hand never breaks the page.
    pub fn parse(name: &str) -> Format {
        match name.trim_start_matches('#') {
            "markdown" | "md" => Format::Markdown,
            "html" => Format::Html,
            _ => Format::Text,
        }
    }

    /// Whether the page is rendered in the sandboxed frame.
    pub fn is_rendered(self) -> bool {
        self != Format::Text
    }

    /// The fragment of a link to a page in this format: none for Text, so
    /// the plainest link is the shortest.
    pub fn fragment(self) -> &'static str {
        match self {
            Format::Text => "",
            Format::Markdown => "#markdown",
            Format::Html => "#html",
        }
    }
}

/// What the URL names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    Home,
    Page(PageHash, Format),
    /// Not a page address: the path as given, shown on the page that says
    /// what an address looks like.
    BadAddress(String),
}

impl Route {
    /// The route for `location.pathname` and `location.hash`.
    pub fn parse(path: &str, fragment: &str) -> Route {
        match path.trim_start_matches('/') {
            "" => Route::Home,
            hash => match hash.parse::<PageHash>() {
                Ok(hash) => Route::Page(hash, Format::parse(fragment)),
                Err(_) => Route::BadAddress(path.to_string()),
            },
        }
    }

    pub fn hash(&self) -> Option<PageHash> {
        match self {
            Route::Page(hash, _) => Some(*hash),
            _ => None,
        }
    }

    /// The path and fragment of this route, for `history.pushState`.
    pub fn url(&self) -> String {
        match self {
            Route::Home => "/".to_string(),
            Route::Page(hash, format) => format!("/{hash}{}", format.fragment()),
            Route::BadAddress(path) => path.clone(),
        }
    }
}

/// What a malformed address probably meant: the lowercase form of a hash
/// typed in capitals, which is a page address.
pub fn meant_address(path: &str) -> Option<PageHash> {
    path.trim_start_matches('/')
        .to_ascii_lowercase()
        .parse()
        .ok()
}

/// The tab's title for a page whose first heading or line is `first`.
pub fn tab_title(first: &str) -> String {
    let first: String = first.split_whitespace().collect::<Vec<_>>().join(" ");
    let first: String = first.chars().take(60).collect();
    match first.as_str() {
        "" => "Ephemeral".to_string(),
        line => format!("{line} · Ephemeral"),
    }
}

/// The first non-empty line of a Text page, without Markdown-style `#`s.
pub fn first_line(text: &str) -> &str {
    text.lines()
        .map(str::trim)
        .find(|line| !line.is_empty())
        .unwrap_or("")
        .trim_start_matches('#')
        .trim()
}

/// A piece of a Text page: plain text, or a link to show as one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Piece<'a> {
    Text(&'a str),
    Link(&'a str),
}

/// Splits a Text page into text and `http(s)://` links. Trailing
/// punctuation stays text ("see https://a.b/c." links to `https://a.b/c`),
/// and a closing bracket only belongs to a link that opened one.
pub fn pieces(text: &str) -> Vec<Piece<'_>> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(start) = find_link_start(rest) {
        let tail = &rest[start..];
        let end = tail
            .find(|c: char| c.is_whitespace() || matches!(c, '<' | '>' | '"' | '`'))
            .unwrap_or(tail.len());
        let url = trim_link(&tail[..end]);
        let scheme = if url.starts_with("https://") { 8 } else { 7 };
        if url.len() <= scheme {
            // A bare "https://": text, and look past it.
            out.push(Piece::Text(&rest[..start + scheme]));
            rest = &rest[start + scheme..];
            continue;
        }
        if start > 0 {
            out.push(Piece::Text(&rest[..start]));
        }
        out.push(Piece::Link(url));
        rest = &rest[start + url.len()..];
    }
    if !rest.is_empty() {
        out.push(Piece::Text(rest));
    }
    out
}

/// Splits `bytes` into blocks of whole lines of about `size` bytes (a
/// line longer than that is a block of its own), in order, losing nothing.
/// Blocks end just after a `\n`, which is never inside a UTF-8 character
/// nor inside an invalid sequence, so each block decodes on its own exactly
/// as it would within the whole, and no link spans two blocks.
pub fn blocks(bytes: &[u8], size: usize) -> Vec<Range<usize>> {
    let mut out = Vec::new();
    let mut start = 0;
    while bytes.len() - start > size {
        let rest = &bytes[start..];
        let end = match rest[..size].iter().rposition(|&b| b == b'\n') {
            Some(newline) => newline + 1,
            None => rest[size..]
                .iter()
                .position(|&b| b == b'\n')
                .map_or(rest.len(), |n| size + n + 1),
        };
        out.push(start..start + end);
        start += end;
    }
    if start < bytes.len() {
        out.push(start..bytes.len());
    }
    out
}

/// [`first_line`] of a page still in bytes, decoding only up to that line:
/// a long page is decoded a block at a time, later.
pub fn first_line_of(bytes: &[u8]) -> String {
    bytes
        .split(|&b| b == b'\n')
        .map(String::from_utf8_lossy)
        .find(|line| !line.trim().is_empty())
        .map(|line| first_line(&line).to_string())
        .unwrap_or_default()
}

fn find_link_start(text: &str) -> Option<usize> {
    let mut from = 0;
    while let Some(at) = text[from..].find("http") {
        let at = from + at;
        let tail = &text[at..];
        let word_start = text[..at]
            .chars()
            .next_back()
            .is_none_or(|c| !c.is_alphanumeric());
        if word_start && (tail.starts_with("http://") || tail.starts_with("https://")) {
            return Some(at);
        }
        from = at + 4;
    }
    None
}

fn trim_link(url: &str) -> &str {
    let mut url = url;
    loop {
        let Some(last) = url.chars().next_back() else {
            return url;
        };
        let unbalanced = |open: char| url.matches(open).count() < url.matches(last).count();
        let drop = match last {
            '.' | ',' | ';' | ':' | '!' | '?' | '\'' | '*' => true,
            ')' => unbalanced('('),
            ']' => unbalanced('['),
            '}' => unbalanced('{'),
            _ => false,
        };
        if !drop {
            return url;
        }
        url = &url[..url.len() - last.len_utf8()];
    }
}

/// The Content-Security-Policy inside the frame: nothing from the network
/// (a remote image would tell a third party every reader's IP), no script,
/// no form target; images only as `data:` URLs, styles only inline. The
/// app's own policy applies in the frame too (a `srcdoc` document inherits
/// it), so the two together are what holds.
pub const FRAME_CSP: &str = "default-src 'none'; img-src data:; style-src 'unsafe-inline'; \
    form-action 'none'";

/// The frame's own stylesheet: readable defaults the page may override.
const FRAME_CSS: &str = ":root{color-scheme:light dark}\
html{overflow-y:hidden}\
body{margin:0;padding:1rem;font-family:system-ui,-apple-system,\"Segoe UI\",Roboto,sans-serif;\
line-height:1.5;overflow-wrap:anywhere}\
img,video{max-width:100%;height:auto}\
pre{overflow-x:auto;padding:.75rem;border-radius:4px;background:rgba(127,127,127,.12)}\
code{font-family:ui-monospace,Menlo,Consolas,monospace}\
table{border-collapse:collapse}th,td{border:1px solid rgba(127,127,127,.5);padding:.25rem .5rem}\
blockquote{margin-left:0;padding-left:1rem;border-left:4px solid rgba(127,127,127,.4)}";

/// The whole document shown in the sandboxed frame (its `srcdoc`): our
/// head first — the policy, no referrer, links to a new tab — then the
/// page's body. A page's own `<base>` or CSP comes later and cannot undo
/// ours: the first `<base target>` wins and policies only add up.
pub fn frame_document(text: &str, format: Format) -> String {
    let body = match format {
        Format::Markdown => markdown_to_html(text),
        // Text never reaches the frame; shown as HTML it would be markup.
        Format::Html | Format::Text => text.to_string(),
    };
    let mut doc = String::with_capacity(body.len() + 1024);
    doc.push_str("<!doctype html><html><head><meta charset=\"utf-8\">");
    doc.push_str("<meta http-equiv=\"Content-Security-Policy\" content=\"");
    doc.push_str(FRAME_CSP);
    doc.push_str("\"><meta name=\"referrer\" content=\"no-referrer\">");
    doc.push_str("<meta http-equiv=\"x-dns-prefetch-control\" content=\"off\">");
    doc.push_str("<base target=\"_blank\"><style>");
    doc.push_str(FRAME_CSS);
    doc.push_str("</style></head><body>");
    doc.push_str(&body);
    doc.push_str("</body></html>");
    doc
}

/// Markdown as HTML: CommonMark with tables, strikethrough and task lists.
/// Raw HTML in the Markdown passes through; the frame, not this function,
/// is what keeps it harmless.
pub fn markdown_to_html(text: &str) -> String {
    let options =
        Options::ENABLE_TABLES | Options::ENABLE_STRIKETHROUGH | Options::ENABLE_TASKLISTS;
    let mut out = String::with_capacity(text.len() * 3 / 2);
    html::push_html(&mut out, Parser::new_ext(text, options));
    out
}

/// What to insert in the editor for an image, as a `data:` URL.
pub fn image_markup(format: Format, name: &str, data_url: &str) -> Option<String> {
    let alt: String = name
        .chars()
        .filter(|c| !matches!(c, '[' | ']' | '"' | '<' | '>' | '&'))
        .collect();
    match format {
        Format::Markdown => Some(format!("![{alt}]({data_url})")),
        Format::Html => Some(format!("<img alt=\"{alt}\" src=\"{data_url}\">")),
        Format::Text => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HASH: &str = "5d5646eca6c8688be2167aab25f139cca6fde8afeb5a5bf5a4e216219460fd21";

    #[test]
    fn the_format_rides_in_the_fragment_and_a_bare_address_is_text() {
        let hash: PageHash = HASH.parse().unwrap();
        let path = format!("/{HASH}");
        assert_eq!(Route::parse(&path, ""), Route::Page(hash, Format::Text));
        assert_eq!(
            Route::parse(&path, "#markdown"),
            Route::Page(hash, Format::Markdown)
        );
        assert_eq!(
            Route::parse(&path, "#html"),
            Route::Page(hash, Format::Html)
        );
        assert_eq!(
            Route::parse(&path, "#nonsense"),
            Route::Page(hash, Format::Text)
        );
        assert_eq!(
            Route::Page(hash, Format::Markdown).url(),
            format!("/{HASH}#markdown")
        );
        assert_eq!(Route::Page(hash, Format::Text).url(), path);
        assert_eq!(Route::parse("/", "#html"), Route::Home);
    }

    #[test]
    fn malformed_addresses_are_named_and_capitals_are_forgiven() {
        for path in ["/foo", "/abc123", &format!("/{}", HASH.to_uppercase())] {
            assert_eq!(
                Route::parse(path, ""),
                Route::BadAddress(path.to_string()),
                "{path}"
            );
        }
        assert_eq!(
            meant_address(&format!("/{}", HASH.to_uppercase())),
            Some(HASH.parse().unwrap())
        );
        assert_eq!(meant_address("/foo"), None);
    }

    #[test]
    fn links_in_text_are_found_without_their_punctuation() {
        let text =
            "See https://example.com/a_(b), or (http://x.org/y). Not xhttp://no or https:// alone.";
        let links: Vec<&str> = pieces(text)
            .into_iter()
            .filter_map(|p| match p {
                Piece::Link(url) => Some(url),
                Piece::Text(_) => None,
            })
            .collect();
        assert_eq!(links, ["https://example.com/a_(b)", "http://x.org/y"]);
        let joined: String = pieces(text)
            .into_iter()
            .map(|p| match p {
                Piece::Link(s) | Piece::Text(s) => s,
            })
            .collect();
        assert_eq!(joined, text, "every byte is shown, in order");
        assert_eq!(pieces("no links"), [Piece::Text("no links")]);
        assert_eq!(pieces(""), []);
    }

    #[test]
    fn long_text_splits_at_line_ends_and_loses_nothing() {
        let text = b"ab\ncd\nefghij\nk";
        let cut =
            |size| -> Vec<&[u8]> { blocks(text, size).into_iter().map(|r| &text[r]).collect() };
        assert_eq!(cut(4), [&b"ab\n"[..], b"cd\n", b"efghij\n", b"k"]);
        assert_eq!(cut(100), [&text[..]]);
        let long = "é".repeat(100);
        let whole: Vec<u8> = blocks(long.as_bytes(), 7)
            .into_iter()
            .flat_map(|r| long.as_bytes()[r].to_vec())
            .collect();
        assert_eq!(whole, long.as_bytes());
        // Each block decodes alone as it does within the whole, bad bytes
        // included, since no block ends inside a character.
        let mut bytes = "é\n".repeat(50).into_bytes();
        bytes.extend_from_slice(b"\xc3\n\xe2\x82");
        bytes.extend(b"x\n".repeat(20));
        for size in 1..20 {
            let decoded: String = blocks(&bytes, size)
                .into_iter()
                .map(|r| String::from_utf8_lossy(&bytes[r]).into_owned())
                .collect();
            assert_eq!(decoded, String::from_utf8_lossy(&bytes), "{size}");
        }
    }

    #[test]
    fn the_first_line_of_bytes_is_the_first_line_of_the_text() {
        for text in [
            "\n  # Hello  \nmore",
            "\u{3000}\n\nfirst\r\nsecond",
            "",
            "\n \n",
            "#\nx",
        ] {
            assert_eq!(first_line_of(text.as_bytes()), first_line(text), "{text:?}");
        }
        assert_eq!(first_line_of(b"\xffab\ncd"), "\u{fffd}ab");
    }

    #[test]
    fn markdown_becomes_html_and_the_frame_carries_the_policy_first() {
        let html = markdown_to_html("# Title\n\n**bold** and [a link](https://example.com)\n");
        assert!(html.contains("<h1>Title</h1>"), "{html}");
        assert!(html.contains("<strong>bold</strong>"), "{html}");
        let doc = frame_document("# Title", Format::Markdown);
        let csp = doc.find("Content-Security-Policy").unwrap();
        let base = doc.find("<base target=\"_blank\">").unwrap();
        let body = doc.find("<h1>").unwrap();
        assert!(csp < base && base < body, "{doc}");
        assert!(doc.contains("default-src 'none'; img-src data:"), "{doc}");
        assert!(frame_document("<b>x</b>", Format::Html).contains("<body><b>x</b></body>"));
    }

    #[test]
    fn titles_are_text_from_the_first_line() {
        assert_eq!(first_line("\n  # Hello  \nmore"), "Hello");
        assert_eq!(tab_title("Hello\n  world"), "Hello world · Ephemeral");
        assert_eq!(tab_title(""), "Ephemeral");
        assert_eq!(
            tab_title(&"x".repeat(100)).chars().count(),
            60 + " · Ephemeral".chars().count()
        );
    }

    #[test]
    fn images_are_inserted_as_data_urls_in_markdown_and_html_only() {
        let url = "data:image/png;base64,AAAA";
        assert_eq!(
            image_markup(Format::Markdown, "dot [1].png", url).unwrap(),
            "![dot 1.png](data:image/png;base64,AAAA)"
        );
        assert_eq!(
            image_markup(Format::Html, "a\"b", url).unwrap(),
            "<img alt=\"ab\" src=\"data:image/png;base64,AAAA\">"
        );
        assert_eq!(image_markup(Format::Text, "x", url), None);
    }
}
