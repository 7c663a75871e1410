//! What this tab shows, and nothing the client core already knows.
//!
//! What this module owns: the route (`/`, `/<hash>#format`, or an address
//! that is not a page's), how each page this tab hosts came and whether it
//! is kept across reloads, host counts, why the current page could not be
//! had — all derived from the core's [`Event`]s — and rendering them
//! through [`View`] and [`Renderer`] with the words of [`crate::status`].
//! Where a fetch stands, whether the server accepted this tab as a host,
//! and the page's bytes are read from the [`Client`] itself.

use std::collections::HashMap;
use std::rc::Rc;

use ephemeral_shared::client::{Client, Event, FetchError};
use ephemeral_shared::fetch::Transport;
use ephemeral_shared::session::Refusal;
use ephemeral_shared::{PageHash, Phase};
use wasm_bindgen::JsValue;
use wasm_bindgen::prelude::*;
use web_sys::Window;

use crate::page::{self, Format, Route};
use crate::render::Renderer;
use crate::status::{Connection, LAST_HOST, Situation, describe, failure_words, refusal_words};
use crate::view::{Delivery, PageState, Progress, View};

/// How long "Copied ✓" shows before the button reads "Copy link" again.
const COPIED_MS: i32 = 2000;

/// What this tab knows of a page it hosts.
#[derive(Debug, Clone, Copy)]
pub struct Held {
    pub delivery: Delivery,
    pub authored: bool,
    /// Kept in the tab's storage: it survives a reload.
    pub kept: bool,
    pub format: Format,
}

/// The tab's screen and what it shows.
pub struct Ui {
    view: View,
    viewer: Rc<Renderer>,
    window: Window,
    route: Route,
    connection: Connection,
    /// Hosts of each page this tab is on, live.
    counts: HashMap<PageHash, usize>,
    /// The pages this tab hosts.
    held: HashMap<PageHash, Held>,
    /// The page on screen, its format and whether as source: rendered
    /// again only when one of them changes.
    shown: Option<(PageHash, Format, bool)>,
    /// The reader asked for the page's source.
    source: bool,
    /// The current page's fetch ended with nobody hosting it.
    gone: bool,
    /// Why the current page could not be had.
    failure: Option<String>,
    /// The current fetch left `Asking` once: asking again is a retry.
    asked_once: bool,
    retried: bool,
    /// What was last said aloud, so it is said once.
    announced: String,
}

impl Ui {
    pub fn new(view: View, viewer: Rc<Renderer>, window: Window, route: Route) -> Self {
        Self {
            view,
            viewer,
            window,
            route,
            connection: Connection::Connecting,
            counts: HashMap::new(),
            held: HashMap::new(),
            shown: None,
            source: false,
            gone: false,
            failure: None,
            asked_once: false,
            retried: false,
            announced: String::new(),
        }
    }

    pub fn view(&self) -> &View {
        &self.view
    }

    pub fn route(&self) -> &Route {
        &self.route
    }

    /// Shows another route, as after Back/Forward or a link in the app.
    pub fn go(&mut self, route: Route) {
        if self.route.hash() != route.hash() {
            self.gone = false;
            self.failure = None;
            self.asked_once = false;
            self.retried = false;
            self.source = false;
        }
        self.route = route;
    }

    /// This tab hosts `hash` now: it wrote it, fetched it, or kept it.
    pub fn hold(&mut self, hash: PageHash, held: Held) {
        self.held.insert(hash, held);
    }

    pub fn held(&self, hash: PageHash) -> Option<Held> {
        self.held.get(&hash).copied()
    }

    /// Whether leaving now would end a page: some page this tab hosts has
    /// no other host.
    pub fn is_last_host(&self, client: &Client) -> bool {
        self.held
            .keys()
            .any(|hash| client.is_hosting(*hash) && self.counts.get(hash) == Some(&1))
    }

    /// Sizes the page's frame again, after the window's width changed.
    pub fn fit(&self) {
        self.viewer.fit();
    }

    pub fn toggle_source(&mut self) {
        self.source = !self.source;
    }

    /// Copies the page's link, or selects it where the clipboard is
    /// refused; "Copied ✓" goes back to "Copy link" after a moment.
    pub fn copy_link(&self) {
        let url = self.view.link.value();
        let promise = self.window.navigator().clipboard().write_text(&url);
        let button = self.view.copy_link.clone();
        let input = self.view.link.clone();
        let window = self.window.clone();
        wasm_bindgen_futures::spawn_local(async move {
            match wasm_bindgen_futures::JsFuture::from(promise).await {
                Ok(_) => {
                    button.set_text_content(Some("Copied ✓"));
                    let reset = Closure::once_into_js(move || {
                        button.set_text_content(Some("Copy link"));
                    });
                    let _ = window.set_timeout_with_callback_and_timeout_and_arguments_0(
                        reset.unchecked_ref(),
                        COPIED_MS,
                    );
                }
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
            Event::ShareRefused { .. } => {}
            Event::Count { hash, count } => {
                self.counts.insert(hash, count.count);
            }
            // Rendering reads where the fetch stands from the client.
            Event::Progress(_) => {}
            Event::Delivered(delivered) => {
                let format = match &self.route {
                    Route::Page(hash, format) if *hash == delivered.hash => *format,
                    _ => Format::Text,
                };
                let delivery = match delivered.transport {
                    Transport::Relay => Delivery::Relay,
                    // Unknown yet when a tiny page beat WebRTC's stats:
                    // `PathKnown` follows.
                    Transport::WebRtc => Delivery::WebRtc(delivered.path),
                };
                self.held.insert(
                    delivered.hash,
                    Held {
                        delivery,
                        authored: false,
                        kept: false,
                        format,
                    },
                );
            }
            Event::FetchEnded { hash, error } if self.is_ours(hash) => match error {
                FetchError::Gone => self.gone = true,
                FetchError::Failed(failure) => self.failure = Some(failure_words(&failure)),
                FetchError::Refused(refusal) => self.failure = Some(join_refused(&refusal)),
                // The tab is going away.
                FetchError::Stopped => {}
            },
            Event::FetchEnded { .. } => {}
            Event::PathKnown { hash, path } => {
                if let Some(held) = self.held.get_mut(&hash)
                    && held.delivery == Delivery::WebRtc(None)
                {
                    held.delivery = Delivery::WebRtc(Some(path));
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
        }
    }

    /// Marks a held page as kept (or not) in the tab's storage.
    pub fn set_kept(&mut self, hash: PageHash, kept: bool) {
        if let Some(held) = self.held.get_mut(&hash) {
            held.kept = kept;
        }
    }

    fn is_ours(&self, hash: PageHash) -> bool {
        self.route.hash() == Some(hash)
    }

    /// Shows where the tab stands.
    pub fn render(&mut self, client: &Client) {
        let view = &self.view;
        view.set_connection(self.connection.as_str());
        let (hash, format) = match &self.route {
            Route::Home => {
                self.show_home(client);
                return;
            }
            Route::BadAddress(path) => {
                self.show_bad_address(path.clone());
                return;
            }
            Route::Page(hash, format) => (*hash, *format),
        };
        let fetch = client.fetch_progress(hash);
        let phase = match fetch {
            Some((phase, _)) => Some(phase),
            None if self.gone => Some(Phase::Gone),
            None => None,
        };
        if matches!(phase, Some(Phase::Connecting(_) | Phase::Relaying(_))) {
            self.asked_once = true;
        }
        if phase == Some(Phase::Asking) && self.asked_once {
            self.retried = true;
        }
        let page = client.hosted_page(hash);
        let held = self.held.get(&hash).copied();
        let count = self.counts.get(&hash).copied();
        let (page_state, words) = describe(&Situation {
            home: false,
            connection: self.connection,
            failure: self.failure.as_deref(),
            hosting: page.is_some(),
            delivery: held.map(|h| h.delivery),
            authored: held.is_some_and(|h| h.authored),
            kept: held.is_none_or(|h| h.kept),
            count,
            joined: client.is_hosting(hash),
            phase,
            retried: self.retried,
        });
        let view = &self.view;
        view.set_state(page_state);
        view.set_format(format);
        view.set_status(&words);
        self.announce(page_state, &words, count);
        if let Ok(href) = self.window.location().href() {
            self.view.set_link(&href);
        }
        self.view.set_host_count(count);
        self.view.set_delivery(held.map(|h| h.delivery));
        self.view.set_progress(progress(fetch));
        match page {
            Some(page) if page_state != PageState::Gone => {
                let source = self.source && format.is_rendered();
                self.view.set_view_source(format.is_rendered(), source);
                if self.shown != Some((hash, format, source)) {
                    if self.shown.is_none() {
                        // "Time to content" for the benchmark (bench/src/
                        // browser.rs) and any profiler: a User Timing mark,
                        // from the navigation's start.
                        if let Some(performance) = self.window.performance() {
                            let _ = performance.mark("ephemeral:page-shown");
                        }
                    }
                    self.shown = Some((hash, format, source));
                    if let Some(first) = self.viewer.show_page(&page, format, source) {
                        self.view.set_title(&page::tab_title(&first));
                    }
                }
            }
            _ => {
                self.view.set_view_source(false, false);
                if self.shown.take().is_some() {
                    self.viewer.clear();
                }
                self.view.set_title("Ephemeral");
            }
        }
    }

    fn show_home(&mut self, client: &Client) {
        let (state, words) = describe(&Situation {
            home: true,
            connection: self.connection,
            failure: None,
            hosting: false,
            delivery: None,
            authored: false,
            kept: true,
            count: None,
            joined: false,
            phase: None,
            retried: false,
        });
        self.view.set_state(state);
        self.view.set_status(&words);
        if self.shown.take().is_some() {
            self.viewer.clear();
        }
        self.view.set_title("Ephemeral");
        let mut hosted: Vec<(String, String)> = self
            .held
            .iter()
            .filter_map(|(hash, held)| {
                let page = client.hosted_page(*hash)?;
                let text = String::from_utf8_lossy(&page[..page.len().min(4096)]).into_owned();
                let title = match page::first_line(&text) {
                    "" => hash.to_string(),
                    line => line.chars().take(80).collect(),
                };
                Some((Route::Page(*hash, held.format).url(), title))
            })
            .collect();
        hosted.sort();
        self.view.set_hosted(&hosted);
    }

    fn show_bad_address(&mut self, path: String) {
        self.view.set_state(PageState::BadAddress);
        self.view
            .set_status("That address is not a page's: see below for what one looks like.");
        let meant = page::meant_address(&path).map(|hash| format!("/{hash}"));
        self.view.set_bad_address(&path, meant.as_deref());
        self.view.set_title("Not a page address · Ephemeral");
    }

    /// Says the status aloud only when the page's state changes, or when
    /// this tab becomes the last host: never for every byte received.
    fn announce(&mut self, state: PageState, words: &str, count: Option<usize>) {
        let key = match state {
            PageState::Hosting if count == Some(1) && words.ends_with(LAST_HOST) => LAST_HOST,
            PageState::Hosting => "hosting",
            PageState::Fetching => "fetching",
            PageState::Gone => "gone",
            PageState::Failed => "failed",
            PageState::Home | PageState::BadAddress => "",
        };
        if key != self.announced {
            self.announced = key.to_string();
            if !key.is_empty() {
                self.view.announce(words);
            }
        }
    }
}

/// The progress bar for a fetch: bytes once they arrive, peer to peer or
/// in parts through the relay; waiting before.
fn progress(fetch: Option<(Phase, Option<(usize, usize)>)>) -> Progress {
    match fetch {
        None => Progress::Hidden,
        Some((Phase::Receiving(_), Some((received, total)))) => Progress::Bytes {
            received,
            total,
            relay: false,
        },
        // Relayed parts may still be arriving after the fetch asked again.
        Some((Phase::Relaying(_) | Phase::Asking, Some((received, total)))) => Progress::Bytes {
            received,
            total,
            relay: true,
        },
        Some((phase, _)) if phase.is_finished() => Progress::Hidden,
        Some((Phase::Relaying(_), _)) => Progress::Waiting("through the server (relay)"),
        Some((Phase::Connecting(_) | Phase::Receiving(_), _)) => {
            Progress::Waiting("connecting peer to peer")
        }
        Some(_) => Progress::Waiting("looking for a host"),
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

#[cfg(test)]
mod tests {
    use ephemeral_shared::PeerId;

    use super::*;

    #[test]
    fn relayed_bytes_show_as_bytes_like_webrtc_and_say_relay() {
        let host = PeerId::from_random(7);
        let bytes = |relay| Progress::Bytes {
            received: 100,
            total: 400,
            relay,
        };
        let relaying = Some((Phase::Relaying(host), Some((100, 400))));
        assert_eq!(progress(relaying), bytes(true));
        let receiving = Some((Phase::Receiving(host), Some((100, 400))));
        assert_eq!(progress(receiving), bytes(false));
        assert_eq!(
            progress(Some((Phase::Asking, Some((100, 400))))),
            bytes(true)
        );
        assert_eq!(
            progress(Some((Phase::Relaying(host), None))),
            Progress::Waiting("through the server (relay)")
        );
        assert_eq!(
            progress(Some((Phase::Delivered(Transport::Relay), None))),
            Progress::Hidden
        );
    }
}
