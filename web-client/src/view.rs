//! The DOM: the elements of static/index.html and everything the visitor
//! sees change on them.
//!
//! What this module owns: finding the elements once, and writing to them —
//! always as text (`textContent`, attribute values), never as HTML, so a
//! page's bytes cannot run in our origin. The stable hooks tests read are
//! here too: `#app[data-state]` (home, fetching, hosting, gone, failed),
//! `#app[data-connection]` (connecting, online, reconnecting), `#status`,
//! `#host-count[data-count]`, `#transport[data-transport]` (webrtc, relay,
//! author), `#content`, `#progress`.

use ephemeral_shared::path::Path;
use wasm_bindgen::{JsCast, JsValue};
use web_sys::{Document, HtmlElement, HtmlInputElement, HtmlProgressElement, HtmlTextAreaElement};

/// The page lifecycle, as `#app[data-state]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PageState {
    Home,
    Fetching,
    Hosting,
    Gone,
    Failed,
}

impl PageState {
    fn as_str(self) -> &'static str {
        match self {
            PageState::Home => "home",
            PageState::Fetching => "fetching",
            PageState::Hosting => "hosting",
            PageState::Gone => "gone",
            PageState::Failed => "failed",
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
}

/// Handles to every element the client writes to.
pub struct View {
    document: Document,
    app: HtmlElement,
    status: HtmlElement,
    home: HtmlElement,
    pub editor: HtmlTextAreaElement,
    pub share: HtmlElement,
    home_error: HtmlElement,
    viewer: HtmlElement,
    host_count: HtmlElement,
    transport: HtmlElement,
    progress: HtmlProgressElement,
    link_row: HtmlElement,
    pub link: HtmlInputElement,
    pub copy_link: HtmlElement,
    content: HtmlElement,
    gone: HtmlElement,
}

impl View {
    /// Finds the elements; an error names the one missing from index.html.
    pub fn find(document: &Document) -> Result<Self, JsValue> {
        Ok(Self {
            document: document.clone(),
            app: element(document, "app")?,
            status: element(document, "status")?,
            home: element(document, "home")?,
            editor: element(document, "editor")?,
            share: element(document, "share")?,
            home_error: element(document, "home-error")?,
            viewer: element(document, "viewer")?,
            host_count: element(document, "host-count")?,
            transport: element(document, "transport")?,
            progress: element(document, "progress")?,
            link_row: element(document, "link-row")?,
            link: element(document, "link")?,
            copy_link: element(document, "copy-link")?,
            content: element(document, "content")?,
            gone: element(document, "gone")?,
        })
    }

    pub fn set_state(&self, state: PageState) {
        let _ = self.app.set_attribute("data-state", state.as_str());
        self.home.set_hidden(state != PageState::Home);
        self.viewer.set_hidden(state == PageState::Home);
        self.gone.set_hidden(state != PageState::Gone);
        // A gone page has nothing to show and no link worth sharing.
        self.link_row.set_hidden(state == PageState::Gone);
        if state == PageState::Gone {
            self.content.set_hidden(true);
        }
    }

    /// `online`, `connecting` or `reconnecting`.
    pub fn set_connection(&self, connection: &str) {
        let _ = self.app.set_attribute("data-connection", connection);
    }

    pub fn set_status(&self, text: &str) {
        self.status.set_text_content(Some(text));
    }

    pub fn set_home_error(&self, text: &str) {
        self.home_error.set_text_content(Some(text));
    }

    pub fn set_host_count(&self, count: usize) {
        let text = count.to_string();
        let _ = self.host_count.set_attribute("data-count", &text);
        self.host_count.set_text_content(Some(&text));
    }

    pub fn set_delivery(&self, delivery: Delivery) {
        let (key, text) = match delivery {
            Delivery::WebRtc(None) => ("webrtc", "peer to peer (WebRTC)"),
            Delivery::WebRtc(Some(Path::Turn)) => ("webrtc", "peer to peer (WebRTC, through TURN)"),
            Delivery::WebRtc(Some(_)) => ("webrtc", "peer to peer (WebRTC, direct)"),
            Delivery::Relay => ("relay", "via relay (through the server)"),
            Delivery::Author => ("author", "written here"),
        };
        let _ = self.transport.set_attribute("data-transport", key);
        let path = match delivery {
            Delivery::WebRtc(Some(path)) => path.as_str(),
            Delivery::WebRtc(None) => "webrtc",
            Delivery::Relay => "relay",
            Delivery::Author => "author",
        };
        let _ = self.transport.set_attribute("data-path", path);
        self.transport.set_text_content(Some(text));
    }

    /// Shows `received` of `total` bytes, or hides the bar with `None`.
    pub fn set_progress(&self, progress: Option<(usize, usize)>) {
        match progress {
            Some((received, total)) if total > 0 => {
                self.progress.set_max(total as f64);
                self.progress.set_value(received as f64);
                self.progress.set_hidden(false);
            }
            _ => self.progress.set_hidden(true),
        }
    }

    pub fn set_link(&self, url: &str) {
        self.link.set_value(url);
    }

    /// Shows the page, as text: its bytes never become markup.
    pub fn show_page(&self, text: &str) {
        self.content.set_text_content(Some(text));
        self.content.set_hidden(false);
        // The tab's title names the page by its first line, so a visitor
        // with many tabs finds it; a title is text, never markup.
        let first_line: String = text
            .lines()
            .map(str::trim)
            .find(|line| !line.is_empty())
            .unwrap_or("")
            .trim_start_matches('#')
            .trim()
            .chars()
            .take(60)
            .collect();
        self.document.set_title(&match first_line.as_str() {
            "" => "Ephemeral".to_string(),
            line => format!("{line} · Ephemeral"),
        });
    }
}

fn element<T: JsCast>(document: &Document, id: &str) -> Result<T, JsValue> {
    document
        .get_element_by_id(id)
        .ok_or_else(|| JsValue::from_str(&format!("index.html has no #{id}")))?
        .dyn_into::<T>()
        .map_err(|_| JsValue::from_str(&format!("#{id} is not the element expected")))
}
