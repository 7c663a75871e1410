//! What this tab shows, and nothing the client core already knows.
//!
//! What this module owns: the route (`/` or `/<hash>`), the link as the
//! visitor sees it, the host count, the page on screen and how it came,
//! why it could not be had — all derived from the core's [`Event`]s — and
//! rendering them through [`View`] with the words of [`crate::status`].
//! Where a fetch stands and whether the server accepted this tab as a
//! host are read from the [`Client`] itself when rendering.

use std::sync::Arc;

use ephemeral_shared::client::{Client, Event, FetchError};
use ephemeral_shared::fetch::Transport;
use ephemeral_shared::session::Refusal;
use ephemeral_shared::size::compared;
use ephemeral_shared::{PageHash, Phase};
use wasm_bindgen::JsValue;
use web_sys::Window;

use crate::status::{Connection, Situation, describe, failure_words, refusal_words};
use crate::view::{Delivery, PageState, View};

/// What the URL names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    Home,
    Page(PageHash),
}

impl Route {
    /// The route for `location.pathname`; an address that is not a page's
    /// leads home, with the reason.
    pub fn parse(path: &str) -> (Route, Option<String>) {
        match path.trim_start_matches('/') {
            "" => (Route::Home, None),
            hash => match hash.parse::<PageHash>() {
                Ok(hash) => (Route::Page(hash), None),
                Err(error) => (Route::Home, Some(error.to_string())),
            },
        }
    }
}

/// The tab's screen and what it shows.
pub struct Ui {
    view: View,
    window: Window,
    route: Route,
    connection: Connection,
    /// Hosts of the page, live.
    count: Option<usize>,
    /// The page on screen; once set, this tab hosts it.
    page: Option<Arc<[u8]>>,
    delivery: Option<Delivery>,
    /// The fetch ended with nobody hosting the page: final.
    gone: bool,
    /// Why the page could not be had, as a sentence for the status line.
    failure: Option<String>,
}

impl Ui {
    pub fn new(view: View, window: Window, route: Route) -> Self {
        Self {
            view,
            window,
            route,
            connection: Connection::Connecting,
            count: None,
            page: None,
            delivery: None,
            gone: false,
            failure: None,
        }
    }

    pub fn view(&self) -> &View {
        &self.view
    }

    /// The editor's text as a page to share, or `None` having said why not.
    pub fn draft(&self, max_bytes: usize) -> Option<Arc<[u8]>> {
        let text = self.view.editor.value();
        if text.trim().is_empty() {
            self.view.set_home_error("Write something first.");
            return None;
        }
        if text.len() > max_bytes {
            let (size, max) = compared(text.len() as u64, max_bytes as u64);
            self.view
                .set_home_error(&format!("This page is {size}; pages can be up to {max}."));
            return None;
        }
        Some(Arc::from(text.into_bytes()))
    }

    /// This tab wrote `page`: move to its address and show it.
    pub fn authored(&mut self, page: Arc<[u8]>) {
        let hash = PageHash::of(&page);
        if let Ok(history) = self.window.history() {
            let _ = history.push_state_with_url(&JsValue::NULL, "", Some(&format!("/{hash}")));
        }
        self.view.set_home_error("");
        self.view.show_page(&String::from_utf8_lossy(&page));
        self.route = Route::Page(hash);
        self.page = Some(page);
        self.delivery = Some(Delivery::Author);
    }

    /// Copies the page's link, or selects it where the clipboard is refused.
    pub fn copy_link(&self) {
        let url = self.view.link.value();
        let promise = self.window.navigator().clipboard().write_text(&url);
        let button = self.view.copy_link.clone();
        let input = self.view.link.clone();
        wasm_bindgen_futures::spawn_local(async move {
            match wasm_bindgen_futures::JsFuture::from(promise).await {
                Ok(_) => button.set_text_content(Some("Copied ✓")),
                // No clipboard access (permissions, insecure origin): select
                // the link so the visitor can copy it by hand.
                Err(_) => input.select(),
            }
        });
    }

    /// Takes in what the core said.
    pub fn on_event(&mut self, event: Event) {
        match event {
            Event::Online => self.connection = Connection::Online,
            Event::Offline(cause) => {
                self.connection = Connection::Reconnecting;
                debug(&format!("offline ({cause}); reconnecting"));
            }
            Event::Hosting(_) => {}
            Event::ShareRefused { hash, refusal } if self.is_ours(hash) => {
                self.failure = Some(join_refused(&refusal));
            }
            Event::Count { hash, count } if self.is_ours(hash) => self.count = Some(count.count),
            // Rendering reads where the fetch stands from the client.
            Event::Progress(_) => {}
            Event::Delivered(delivered) if self.is_ours(delivered.hash) => {
                self.view
                    .show_page(&String::from_utf8_lossy(&delivered.page));
                self.page = Some(Arc::from(delivered.page));
                self.delivery = Some(match delivered.transport {
                    Transport::Relay => Delivery::Relay,
                    // Unknown yet when a tiny page beat WebRTC's stats:
                    // `PathKnown` follows.
                    Transport::WebRtc => Delivery::WebRtc(delivered.path),
                });
            }
            Event::FetchEnded { hash, error } if self.is_ours(hash) => match error {
                FetchError::Gone => self.gone = true,
                FetchError::Failed(failure) => self.failure = Some(failure_words(&failure)),
                FetchError::Refused(refusal) => self.failure = Some(join_refused(&refusal)),
                // The tab is going away.
                FetchError::Stopped => {}
            },
            Event::PathKnown { hash, path } if self.is_ours(hash) => {
                if self.delivery == Some(Delivery::WebRtc(None)) {
                    self.delivery = Some(Delivery::WebRtc(Some(path)));
                }
            }
            Event::UploadEnded {
                hash,
                visitor,
                transport,
                delivered,
            } => debug(&format!(
                "upload of {hash} to {visitor} over {} ended; delivered: {delivered}",
                transport.as_str()
            )),
            Event::PushRefused {
                hash,
                event,
                refusal,
            } => debug(&format!(
                "the server refused our {event} on {hash}: {refusal}"
            )),
            Event::Ignored { hash, what } => debug(&format!("{hash}: ignored {what}")),
            // About a page this tab does not show.
            Event::ShareRefused { .. }
            | Event::Count { .. }
            | Event::Delivered(_)
            | Event::FetchEnded { .. }
            | Event::PathKnown { .. } => {}
        }
    }

    fn is_ours(&self, hash: PageHash) -> bool {
        self.route == Route::Page(hash)
    }

    /// Shows where the tab stands.
    pub fn render(&self, client: &Client) {
        let view = &self.view;
        view.set_connection(self.connection.as_str());
        let hash = match self.route {
            Route::Home => None,
            Route::Page(hash) => Some(hash),
        };
        let fetch = hash.and_then(|hash| client.fetch_progress(hash));
        let phase = match fetch {
            Some((phase, _)) => Some(phase),
            None if self.gone => Some(Phase::Gone),
            None => None,
        };
        let progress = fetch.and_then(|(_, progress)| progress);
        let (page_state, words) = describe(&Situation {
            home: self.route == Route::Home,
            connection: self.connection,
            failure: self.failure.as_deref(),
            hosting: self.page.is_some(),
            delivery: self.delivery,
            joined: hash.is_some_and(|hash| client.is_hosting(hash)),
            phase,
            progress,
        });
        view.set_state(page_state);
        view.set_status(&words);
        if page_state == PageState::Home {
            return;
        }
        if let Ok(href) = self.window.location().href()
            && view.link.value() != href
        {
            view.set_link(&href);
        }
        if let Some(count) = self.count {
            view.set_host_count(count);
        }
        if let Some(delivery) = self.delivery {
            view.set_delivery(delivery);
        }
        view.set_progress(match phase {
            Some(Phase::Receiving(_)) => progress,
            _ => None,
        });
    }
}

/// The status line when the server would not let this tab join the
/// page's topic, as host or as visitor.
fn join_refused(refusal: &Refusal) -> String {
    refusal_words(&format!(
        "the server refused to let this tab join: {}",
        refusal.reason
    ))
}

fn debug(line: &str) {
    web_sys::console::debug_1(&JsValue::from_str(line));
}
