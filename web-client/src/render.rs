//! Showing a page's bytes: a Text page as text with its links made
//! clickable, a Markdown or HTML page in a sandboxed frame, and either as
//! its source. Used for the page a visitor reads and for the author's
//! Preview alike.
//!
//! The frame (docs/pages.md): `srcdoc` holds the document
//! ([`page::frame_document`]), with a CSP inside it; the iframe's
//! `sandbox` is `allow-same-origin allow-popups
//! allow-popups-to-escape-sandbox` and never `allow-scripts`, so nothing
//! the page holds can run, submit a form or navigate this tab. Without
//! scripts in the frame, only this module can size it to its content:
//! `allow-same-origin` is what lets it read the frame's height, and is
//! safe only because no script runs in there to use our origin. Once the
//! frame loads, every link in it is also set to open in a new tab without
//! referrer or opener, whatever `target` the page gave it.
//!
//! A long Text page is decoded and put in the DOM in stages: the first
//! blocks at once, the rest a slice per task, with `aria-busy` on the text
//! element until the last is in (docs/pages.md). Done in one task, 16 MiB
//! kept the tab from drawing or answering for well over 100 ms.

use std::cell::{Cell, RefCell};
use std::ops::Range;
use std::rc::Rc;

use ephemeral_shared::page::Page;
use wasm_bindgen::JsCast;
use web_sys::{Document, Element, HtmlElement, HtmlIFrameElement};

use crate::Listener;
use crate::page::{self, Format, Piece};
use crate::timer::next_task;

/// The iframe's sandbox: popups only for links clicked, escaping the
/// sandbox so the linked site works normally in its own tab; no scripts,
/// no forms, no top navigation.
pub const SANDBOX: &str = "allow-same-origin allow-popups allow-popups-to-escape-sandbox";

/// Text pages longer than this are shown in blocks of about this size.
const TEXT_BLOCK_BYTES: usize = 64 * 1024;

/// Of a long Text page, the bytes shown at once (more than a screenful)
/// and then in each later task.
const STAGE_BYTES: usize = 256 * 1024;

/// Receives the title the rendered page gives itself, once known.
pub type TitleHandler = Rc<dyn Fn(String)>;

/// One place a page is shown: a text element and a frame, one visible.
pub struct Renderer {
    document: Document,
    text: HtmlElement,
    frame: HtmlIFrameElement,
    /// Called with the page's title when the frame has loaded.
    on_title: RefCell<Option<TitleHandler>>,
    /// Counts what was shown: a staged page stops adding blocks as soon
    /// as something else is shown instead.
    shown: Cell<u64>,
    _listeners: Vec<Listener>,
}

impl Renderer {
    /// Renders into `text` and `frame`, both from index.html.
    pub fn new(document: &Document, text: HtmlElement, frame: HtmlIFrameElement) -> Rc<Self> {
        let _ = frame.set_attribute("sandbox", SANDBOX);
        let _ = frame.set_attribute("referrerpolicy", "no-referrer");
        Rc::new_cyclic(|me: &std::rc::Weak<Renderer>| {
            let me = me.clone();
            let on_load = crate::listen(frame.as_ref(), "load", move |_| {
                if let Some(renderer) = me.upgrade() {
                    renderer.on_frame_load();
                }
            });
            Self {
                document: document.clone(),
                text,
                frame,
                on_title: RefCell::new(None),
                shown: Cell::new(0),
                _listeners: on_load.into_iter().collect(),
            }
        })
    }

    /// Says the rendered page's title to `handler` from now on.
    pub fn on_title(&self, handler: TitleHandler) {
        *self.on_title.borrow_mut() = Some(handler);
    }

    /// Shows `text` in `format`; `source` shows any format as its text.
    /// Returns the title for a Text page or source view at once; a rendered
    /// page's title comes to the title handler once the frame loads.
    pub fn show(&self, text: &str, format: Format, source: bool) -> Option<String> {
        self.next_shown();
        if format.is_rendered() && !source {
            self.text.set_hidden(true);
            self.text.set_text_content(None);
            let document = page::frame_document(text, format);
            self.frame
                .set_srcdoc(&defused(&document).unwrap_or(document));
            self.frame.set_hidden(false);
            None
        } else {
            self.hide_frame();
            if source {
                self.text.set_text_content(Some(text));
            } else {
                self.show_text_with_links(text);
            }
            let _ = self
                .text
                .set_attribute("data-source", if source { "true" } else { "false" });
            self.text.set_hidden(false);
            Some(page::first_line(text).to_string())
        }
    }

    /// Shows a page's bytes as [`Renderer::show`] does its text; a long
    /// Text page in stages, its title at once from its first line.
    pub fn show_page(
        self: &Rc<Self>,
        bytes: &Page,
        format: Format,
        source: bool,
    ) -> Option<String> {
        if format.is_rendered() || source || bytes.len() <= STAGE_BYTES {
            return self.show(&String::from_utf8_lossy(bytes), format, source);
        }
        let shown = self.next_shown();
        self.hide_frame();
        self.text.set_text_content(None);
        let _ = self.text.set_attribute("data-source", "false");
        let _ = self.text.set_attribute("aria-busy", "true");
        let blocks = page::blocks(bytes, TEXT_BLOCK_BYTES);
        let first = self.append_blocks(bytes, &blocks);
        self.text.set_hidden(false);
        let me = Rc::downgrade(self);
        let bytes = bytes.clone();
        let title = page::first_line_of(&bytes);
        wasm_bindgen_futures::spawn_local(async move {
            let mut rest = &blocks[first..];
            while !rest.is_empty() {
                next_task().await;
                let Some(renderer) = me.upgrade().filter(|r| r.shown.get() == shown) else {
                    return;
                };
                rest = &rest[renderer.append_blocks(&bytes, rest)..];
            }
            if let Some(renderer) = me.upgrade().filter(|r| r.shown.get() == shown) {
                let _ = renderer.text.remove_attribute("aria-busy");
            }
        });
        Some(title)
    }

    /// Appends blocks from the start of `blocks` up to [`STAGE_BYTES`] (at
    /// least one); returns how many.
    fn append_blocks(&self, page: &[u8], blocks: &[Range<usize>]) -> usize {
        let mut bytes = 0;
        let mut count = 0;
        for block in blocks {
            if count > 0 && bytes + block.len() > STAGE_BYTES {
                break;
            }
            bytes += block.len();
            count += 1;
            self.append_block(&String::from_utf8_lossy(&page[block.clone()]));
        }
        count
    }

    fn append_block(&self, text: &str) {
        let Ok(div) = self.document.create_element("div") else {
            return;
        };
        div.set_class_name("text-block");
        self.append_pieces(&div, text);
        let _ = self.text.append_child(&div);
    }

    /// A new thing is shown: whatever was being staged stops.
    fn next_shown(&self) -> u64 {
        let _ = self.text.remove_attribute("aria-busy");
        self.shown.set(self.shown.get() + 1);
        self.shown.get()
    }

    /// Shows nothing.
    pub fn clear(&self) {
        self.next_shown();
        self.hide_frame();
        self.text.set_text_content(None);
        self.text.set_hidden(true);
    }

    fn hide_frame(&self) {
        if !self.frame.hidden() {
            self.frame.set_hidden(true);
        }
        // An empty document: the page's markup does not linger in the DOM.
        if !self.frame.srcdoc().is_empty() {
            self.frame.set_srcdoc("");
        }
    }

    /// A Text page: text nodes, and `<a>` elements for its links, made
    /// through the DOM so the page's bytes never become markup. A long page
    /// goes in blocks of whole lines that the browser lays out only when
    /// they scroll into view (`.text-block`, `content-visibility: auto`):
    /// laying out 16 MiB of text at once would freeze the tab for seconds.
    fn show_text_with_links(&self, text: &str) {
        self.text.set_text_content(None);
        if text.len() <= TEXT_BLOCK_BYTES {
            self.append_pieces(&self.text, text);
            return;
        }
        for block in page::blocks(text.as_bytes(), TEXT_BLOCK_BYTES) {
            self.append_block(&text[block]);
        }
    }

    fn append_pieces(&self, parent: &Element, text: &str) {
        for piece in page::pieces(text) {
            let node: Option<web_sys::Node> = match piece {
                Piece::Text(text) => Some(self.document.create_text_node(text).into()),
                Piece::Link(url) => self.link(url).map(Into::into),
            };
            if let Some(node) = node {
                let _ = parent.append_child(&node);
            }
        }
    }

    fn link(&self, url: &str) -> Option<Element> {
        let a = self.document.create_element("a").ok()?;
        a.set_text_content(Some(url));
        let _ = a.set_attribute("href", url);
        set_link_safety(&a);
        Some(a)
    }

    /// The frame loaded: fix its links, size it, and name the page.
    fn on_frame_load(&self) {
        let Some(doc) = self.frame.content_document() else {
            return;
        };
        if let Ok(links) = doc.query_selector_all("a[href], area[href]") {
            for i in 0..links.length() {
                // From the frame's realm: `instanceof Element` here is
                // false, so the cast is unchecked (a selector for `a` and
                // `area` returns elements only).
                if let Some(link) = links.item(i).map(|n| n.unchecked_into::<Element>()) {
                    set_link_safety(&link);
                }
            }
        }
        self.fit();
        let title = frame_title(&doc);
        let handler = self.on_title.borrow().clone();
        if let Some(handler) = handler {
            handler(title);
        }
    }

    /// Sizes the frame to its content; called on load and when the
    /// window's width changes, which reflows it.
    pub fn fit(&self) {
        if self.frame.hidden() {
            return;
        }
        let Some(root) = self
            .frame
            .content_document()
            .and_then(|doc| doc.document_element())
        else {
            return;
        };
        let height = root.scroll_height().max(40);
        let _ = self
            .frame
            .style()
            .set_property("height", &format!("{height}px"));
    }
}

/// What a frame could still reach the network with despite its CSP:
/// nested frames (Chromium opens a connection to a frame's host before
/// its policy refuses the frame) and hints that are not fetches
/// (`preconnect`, `dns-prefetch`). Removed before the frame sees the
/// page; the sandbox and the CSP remain what stops everything else.
const DEFUSED: &str = "iframe, frame, frameset, object, embed, portal, fencedframe, link";

/// The frame's document without [`DEFUSED`] elements, parsed where it is
/// inert (a `DOMParser` document loads nothing and runs nothing); `None`
/// if the browser would not parse it, and then the page is shown as is.
fn defused(document: &str) -> Option<String> {
    let parser = web_sys::DomParser::new().ok()?;
    let doc = parser
        .parse_from_string(document, web_sys::SupportedType::TextHtml)
        .ok()?;
    let found = doc.query_selector_all(DEFUSED).ok()?;
    if found.length() == 0 {
        return None;
    }
    for i in 0..found.length() {
        if let Some(element) = found.item(i).map(|n| n.unchecked_into::<Element>()) {
            element.remove();
        }
    }
    let html = doc.document_element()?.outer_html();
    Some(format!("<!doctype html>{html}"))
}

/// A link in a page: a new tab, no referrer (the page's address would be
/// it), no opener (the new tab could navigate this one).
fn set_link_safety(link: &Element) {
    let _ = link.set_attribute("target", "_blank");
    let _ = link.set_attribute("rel", "noopener noreferrer");
    let _ = link.set_attribute("referrerpolicy", "no-referrer");
}

/// A rendered page's title: its first heading, else its `<title>`, else
/// its first line of text — always as text, never as markup.
fn frame_title(doc: &Document) -> String {
    let heading = doc
        .query_selector("h1, h2, h3, h4, h5, h6")
        .ok()
        .flatten()
        .and_then(|h| h.text_content())
        .filter(|t| !t.trim().is_empty());
    let text = heading.or_else(|| Some(doc.title()).filter(|t| !t.trim().is_empty()));
    let text = text.or_else(|| doc.body().and_then(|b| b.text_content()));
    page::first_line(&text.unwrap_or_default()).to_string()
}
