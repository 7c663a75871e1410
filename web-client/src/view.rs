//! The DOM: the elements of static/index.html and every change the
//! visitor sees on them.
//!
//! What this module owns: finding the elements once, and writing to them —
//! always as text (`textContent`, attribute values), never as HTML, so a
//! page's bytes cannot run in our origin (rendered pages go to a sandboxed
//! frame, [`crate::render`]). The stable hooks tests read are here too:
//! `#app[data-state]` (home, fetching, hosting, gone, failed, bad-address),
//! `#app[data-connection]` (connecting, online, reconnecting),
//! `#app[data-format]`, `#status`, `#host-count[data-count]`,
//! `#transport[data-transport]` (webrtc, relay, author, kept), `#content`,
//! `#frame`, `#progress`, `#progress-text`.

use ephemeral_shared::path::Path;
use ephemeral_shared::size::Bytes;
use wasm_bindgen::{JsCast, JsValue};
use web_sys::{
    Document, HtmlAnchorElement, HtmlElement, HtmlIFrameElement, HtmlInputElement,
    HtmlProgressElement,
};

use crate::page::Format;

/// The page lifecycle, as `#app[data-state]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PageState {
    Home,
    Fetching,
    Hosting,
    Gone,
    Failed,
    BadAddress,
}

impl PageState {
    fn as_str(self) -> &'static str {
        match self {
            PageState::Home => "home",
            PageState::Fetching => "fetching",
            PageState::Hosting => "hosting",
            PageState::Gone => "gone",
            PageState::Failed => "failed",
            PageState::BadAddress => "bad-address",
        }
    }
}

/// How this tab got the page, as `#transport[data-transport]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// Peer to peer, and which way when the browser said.
    WebRtc(Option<Path>),
    Relay,
    /// This tab wrote the page.
    Author,
    /// This tab had it before a reload (or Back), and hosts it again.
    Kept,
}

/// Where a fetch's bytes stand, for the one progress bar.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    /// Nothing to show.
    Hidden,
    /// Under way, no bytes yet: asking, connecting, or waiting for a
    /// relayed page's first part; the words say which.
    Waiting(&'static str),
    /// Bytes received of the total, and which way.
    Bytes {
        received: usize,
        total: usize,
        relay: bool,
    },
}

/// Handles to every element the client writes to, outside the editor.
pub struct View {
    pub document: Document,
    app: HtmlElement,
    status: HtmlElement,
    announce: HtmlElement,
    pub brand: HtmlElement,
    pub home: HtmlElement,
    hosted: HtmlElement,
    hosted_list: HtmlElement,
    viewer: HtmlElement,
    host_count: HtmlElement,
    transport: HtmlElement,
    progress_row: HtmlElement,
    progress: HtmlProgressElement,
    progress_text: HtmlElement,
    link_row: HtmlElement,
    pub link: HtmlInputElement,
    pub copy_link: HtmlElement,
    pub view_source: HtmlElement,
    pub edit_copy: HtmlElement,
    pub content: HtmlElement,
    pub frame: HtmlIFrameElement,
    gone: HtmlElement,
    bad_address: HtmlElement,
    bad_path: HtmlElement,
    meant: HtmlElement,
    meant_link: HtmlAnchorElement,
}

impl View {
    /// Finds the elements; an error names the one missing from index.html.
    pub fn find(document: &Document) -> Result<Self, JsValue> {
        Ok(Self {
            document: document.clone(),
            app: element(document, "app")?,
            status: element(document, "status")?,
            announce: element(document, "announce")?,
            brand: element(document, "brand")?,
            home: element(document, "home")?,
            hosted: element(document, "hosted")?,
            hosted_list: element(document, "hosted-list")?,
            viewer: element(document, "viewer")?,
            host_count: element(document, "host-count")?,
            transport: element(document, "transport")?,
            progress_row: element(document, "progress-row")?,
            progress: element(document, "progress")?,
            progress_text: element(document, "progress-text")?,
            link_row: element(document, "link-row")?,
            link: element(document, "link")?,
            copy_link: element(document, "copy-link")?,
            view_source: element(document, "view-source")?,
            edit_copy: element(document, "edit-copy")?,
            content: element(document, "content")?,
            frame: element(document, "frame")?,
            gone: element(document, "gone")?,
            bad_address: element(document, "bad-address")?,
            bad_path: element(document, "bad-path")?,
            meant: element(document, "meant")?,
            meant_link: element(document, "meant-link")?,
        })
    }

    pub fn set_state(&self, state: PageState) {
        let _ = self.app.set_attribute("data-state", state.as_str());
        self.home.set_hidden(state != PageState::Home);
        self.bad_address.set_hidden(state != PageState::BadAddress);
        self.viewer
            .set_hidden(matches!(state, PageState::Home | PageState::BadAddress));
        self.gone.set_hidden(state != PageState::Gone);
        // A gone page has nothing to show and no link worth sharing.
        self.link_row.set_hidden(state == PageState::Gone);
        self.edit_copy.set_hidden(state != PageState::Hosting);
    }

    pub fn set_format(&self, format: Format) {
        let _ = self.app.set_attribute("data-format", format.as_str());
    }

    /// `online`, `connecting` or `reconnecting`.
    pub fn set_connection(&self, connection: &str) {
        let _ = self.app.set_attribute("data-connection", connection);
    }

    /// The status line, written only when it changes.
    pub fn set_status(&self, text: &str) {
        if self.status.text_content().as_deref() != Some(text) {
            self.status.set_text_content(Some(text));
        }
    }

    /// Says `text` to screen readers (the polite live region); called
    /// only for changes worth interrupting someone for.
    pub fn announce(&self, text: &str) {
        self.announce.set_text_content(Some(text));
    }

    pub fn set_host_count(&self, count: Option<usize>) {
        let text = count.map_or("–".to_string(), |c| c.to_string());
        let _ = self
            .host_count
            .set_attribute("data-count", &count.unwrap_or(0).to_string());
        if self.host_count.text_content().as_deref() != Some(text.as_str()) {
            self.host_count.set_text_content(Some(&text));
        }
    }

    pub fn set_delivery(&self, delivery: Option<Delivery>) {
        let (key, path, text) = match delivery {
            None => ("", "", "–"),
            Some(Delivery::WebRtc(None)) => ("webrtc", "webrtc", "peer to peer (WebRTC)"),
            Some(Delivery::WebRtc(Some(Path::Turn))) => {
                ("webrtc", "turn", "peer to peer (WebRTC, through TURN)")
            }
            Some(Delivery::WebRtc(Some(path))) => {
                ("webrtc", path.as_str(), "peer to peer (WebRTC, direct)")
            }
            Some(Delivery::Relay) => ("relay", "relay", "via relay (through the server)"),
            Some(Delivery::Author) => ("author", "author", "written here"),
            Some(Delivery::Kept) => ("kept", "kept", "kept by this tab"),
        };
        let _ = self.transport.set_attribute("data-transport", key);
        let _ = self.transport.set_attribute("data-path", path);
        self.transport.set_text_content(Some(text));
    }

    /// The one progress bar: shown from the first request to the verified
    /// page, so it never flashes between phases.
    pub fn set_progress(&self, progress: Progress) {
        match progress {
            Progress::Hidden => self.progress_row.set_hidden(true),
            Progress::Waiting(words) => {
                // No value: the bar shows as indeterminate.
                let _ = self.progress.remove_attribute("value");
                self.progress_text.set_text_content(Some(words));
                self.progress_row.set_hidden(false);
            }
            Progress::Bytes {
                received,
                total,
                relay,
            } => {
                let total = total.max(1);
                self.progress.set_max(total as f64);
                self.progress.set_value(received as f64);
                let percent = received.saturating_mul(100) / total;
                let way = if relay { "via relay" } else { "peer to peer" };
                self.progress_text.set_text_content(Some(&format!(
                    "{} of {} ({percent}%), {way}",
                    Bytes(received as u64),
                    Bytes(total as u64)
                )));
                self.progress_row.set_hidden(false);
            }
        }
    }

    pub fn set_link(&self, url: &str) {
        if self.link.value() != url {
            self.link.set_value(url);
        }
    }

    /// The view-source toggle: shown for rendered pages only.
    pub fn set_view_source(&self, shown: bool, pressed: bool) {
        self.view_source.set_hidden(!shown);
        let _ = self
            .view_source
            .set_attribute("aria-pressed", if pressed { "true" } else { "false" });
        self.view_source.set_text_content(Some(if pressed {
            "Show the page"
        } else {
            "View source"
        }));
    }

    /// The malformed address, and the page it probably meant.
    pub fn set_bad_address(&self, path: &str, meant: Option<&str>) {
        self.bad_path.set_text_content(Some(path));
        self.meant.set_hidden(meant.is_none());
        if let Some(meant) = meant {
            self.meant_link.set_href(meant);
            self.meant_link.set_text_content(Some(meant));
        }
    }

    /// The pages this tab hosts besides the one shown, as links, on the
    /// home page: a tab that went Back still serves them.
    pub fn set_hosted(&self, pages: &[(String, String)]) {
        self.hosted.set_hidden(pages.is_empty());
        self.hosted_list.set_text_content(None);
        for (url, title) in pages {
            let (Ok(item), Ok(link)) = (
                self.document.create_element("li"),
                self.document.create_element("a"),
            ) else {
                continue;
            };
            let _ = link.set_attribute("href", url);
            link.set_text_content(Some(title));
            let _ = item.append_child(&link);
            let _ = self.hosted_list.append_child(&item);
        }
    }

    pub fn set_title(&self, title: &str) {
        self.document.set_title(title);
    }
}

pub fn element<T: JsCast>(document: &Document, id: &str) -> Result<T, JsValue> {
    document
        .get_element_by_id(id)
        .ok_or_else(|| JsValue::from_str(&format!("index.html has no #{id}")))?
        .dyn_into::<T>()
        .map_err(|_| JsValue::from_str(&format!("#{id} is not the element expected")))
}
