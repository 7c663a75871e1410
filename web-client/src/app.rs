//! The controller: one tab, one page. It routes the URL, moves events
//! between the socket, the peer connections and `shared`'s state machines,
//! and tells the view what to show.
//!
//! ```text
//!  /            Home ── Share ──► hash, pushState /<h> ──► join have:<h>
//!  /<h>         join want:<h> ──► Fetch (shared) ──► Delivered ──► leave want,
//!                                                                  join have:<h>
//!  have:<h>     content_request ──► Uploads (shared) ──► offer a channel | relay
//! ```
//!
//! Every decision about fetching (whom to ask, when to fall back to relay,
//! whether bytes are the page) is `shared::Fetch`'s; every decision about
//! serving is `shared::host::Uploads`'. This module only carries them out.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::{Rc, Weak};
use std::time::Duration;

use ephemeral_shared::frame::event;
use ephemeral_shared::host::{HostAction, Uploads, fits_relay};
use ephemeral_shared::path::Path;
use ephemeral_shared::protocol::{
    Content, ContentUnavailable, ContentUnavailableFrom, HostRequest, IceServer, JoinPayload,
    JoinReply, NO_HOSTS, Reason, RequestRouted, SignalBody, SignalFrom, SignalTo, VisitorsCount,
};
use ephemeral_shared::size::compared;
use ephemeral_shared::{
    Fetch, FetchAction, FetchConfig, Frame, PageHash, PeerId, Phase, Role, Topic, Transport,
};
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};
use wasm_bindgen::JsCast;
use wasm_bindgen::prelude::*;
use web_sys::Window;

use crate::Listener;
use crate::phoenix::{Socket, SocketEvent};
use crate::rtc::{self, PeerLink, RtcEvent, RtcSettings, Side};
use crate::status::{Connection, Situation, describe, failure_words, refusal_words};
use crate::view::{Delivery, PageState, View};

/// The largest page this client shares or accepts: the server's default
/// limit, so a page refused here would be refused there too.
const MAX_PAGE_BYTES: usize = 1 << 20;
/// Most uploads over WebRTC at once; further visitors are served by relay.
const MAX_UPLOADS: usize = 8;
/// How often timeouts are checked.
const TICK_MS: i32 = 200;
/// A host-side connection whose channel has not opened by then is dropped.
const UPLOAD_OPEN_TIMEOUT_MS: f64 = 30_000.0;
/// A host-side connection is dropped after this long even if open: the
/// visitor closes it once verified, so one still open is abandoned.
const UPLOAD_MAX_MS: f64 = 120_000.0;
/// Signals that arrive before the server's reply naming their host are kept
/// (at most this many) and replayed once the host is known.
const MAX_EARLY_SIGNALS: usize = 64;

/// Switches read from the query string. They exist for tests and for
/// people on networks where WebRTC misbehaves.
#[derive(Debug, Clone, Copy)]
struct Settings {
    /// `?rtc=off`: never use WebRTC; fetch by relay, serve by relay.
    webrtc: bool,
    /// `?ice=relay`: keep WebRTC but gather relay candidates only, which
    /// with no TURN server means no connection can form, so a fetch has to
    /// fall back to relay the way it would on a hostile network.
    relay_candidates_only: bool,
}

/// What the URL names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    Home,
    Page(PageHash),
}

/// What a sent message's ref stands for, to handle its reply.
#[derive(Debug, Clone, Copy)]
enum Pending {
    Join(Topic),
    Request,
    /// `content` or `content_unavailable` sent to a visitor.
    Relay(&'static str),
}

/// Everything that changes.
struct State {
    route: Route,
    link: Connection,
    /// Replies we wait for, by ref.
    pending: HashMap<String, Pending>,
    /// The topic whose join the server accepted, on this connection.
    joined: Option<Topic>,
    ice_servers: Vec<IceServer>,
    /// The largest page the server relays, from the latest join reply.
    max_relay_bytes: Option<usize>,
    /// Hosts of the page, live.
    count: Option<usize>,
    /// Getting the page (visitors only).
    fetch: Option<Fetch>,
    /// The connection the current fetch receives over.
    fetch_link: Option<Rc<PeerLink>>,
    /// Signals from a host the server has not named to us yet.
    early_signals: Vec<SignalFrom>,
    /// The verified page; once set, this tab hosts it.
    page: Option<Rc<[u8]>>,
    delivery: Option<Delivery>,
    /// Which way the page came, said on the next join of `have:`.
    path: Option<Path>,
    /// Which way the fetch's open data channel goes.
    rtc_path: Option<Path>,
    /// Why the page could not be had, as a sentence for the status line.
    failure: Option<String>,
    uploads: Uploads,
    /// Host-side connections, one per visitor being served.
    upload_links: HashMap<PeerId, Rc<PeerLink>>,
}

impl State {
    /// The topic this tab belongs in: `have:` once it holds the page,
    /// `want:` before.
    fn topic(&self) -> Option<Topic> {
        match self.route {
            Route::Home => None,
            Route::Page(hash) if self.page.is_some() => Some(Topic::have(hash)),
            Route::Page(hash) => Some(Topic::want(hash)),
        }
    }
}

/// The running client.
pub struct App {
    /// Itself, weakly, for the callbacks it hands out.
    me: Weak<App>,
    window: Window,
    view: View,
    settings: Settings,
    socket: RefCell<Option<Rc<Socket>>>,
    state: RefCell<State>,
    /// DOM and timer callbacks, kept alive for the life of the tab.
    callbacks: RefCell<Vec<Listener>>,
}

impl App {
    /// Starts the client on the current document.
    pub fn start() -> Result<Rc<Self>, JsValue> {
        let window = web_sys::window().ok_or_else(|| JsValue::from_str("no window"))?;
        let document = window
            .document()
            .ok_or_else(|| JsValue::from_str("no document"))?;
        let view = View::find(&document)?;
        let settings = read_settings(&window);
        let path = window.location().pathname()?;
        let (route, bad_address) = match path.trim_start_matches('/') {
            "" => (Route::Home, None),
            hash => match hash.parse::<PageHash>() {
                Ok(hash) => (Route::Page(hash), None),
                Err(error) => (Route::Home, Some(error.to_string())),
            },
        };
        let app = Rc::new_cyclic(|me| Self {
            me: me.clone(),
            window,
            view,
            settings,
            socket: RefCell::new(None),
            state: RefCell::new(State {
                route,
                link: Connection::Connecting,
                pending: HashMap::new(),
                joined: None,
                ice_servers: Vec::new(),
                max_relay_bytes: None,
                count: None,
                fetch: None,
                fetch_link: None,
                early_signals: Vec::new(),
                page: None,
                delivery: None,
                path: None,
                rtc_path: None,
                failure: None,
                uploads: Uploads::new(MAX_UPLOADS, settings.webrtc),
                upload_links: HashMap::new(),
            }),
            callbacks: RefCell::new(Vec::new()),
        });
        if let Some(error) = bad_address {
            app.view
                .set_home_error(&format!("That address is not a page: {error}"));
        }
        app.listen()?;
        let weak = Rc::downgrade(&app);
        let socket = Socket::connect(Rc::new(move |event| {
            if let Some(app) = weak.upgrade() {
                app.on_socket(event);
            }
        }))?;
        *app.socket.borrow_mut() = Some(socket);
        app.render();
        Ok(app)
    }

    fn listen(self: &Rc<Self>) -> Result<(), JsValue> {
        let app = Rc::downgrade(self);
        self.on(self.view.share.as_ref(), "click", move |_| {
            with(&app, |app| app.share())
        })?;
        // Ctrl+Enter (⌘+Enter) shares from the editor, as in most editors.
        let app = Rc::downgrade(self);
        self.on(self.view.editor.as_ref(), "keydown", move |event| {
            let Ok(key) = event.dyn_into::<web_sys::KeyboardEvent>() else {
                return;
            };
            if key.key() == "Enter" && (key.ctrl_key() || key.meta_key()) {
                key.prevent_default();
                with(&app, |app| app.share());
            }
        })?;
        let app = Rc::downgrade(self);
        self.on(self.view.copy_link.as_ref(), "click", move |_| {
            with(&app, |app| app.copy_link())
        })?;
        // Back/forward between `/` and a page: start over from the URL.
        // Leaving a page's view ends hosting it, as closing the tab does.
        let app = Rc::downgrade(self);
        self.on(self.window.as_ref(), "popstate", move |_| {
            with(&app, |app| {
                let _ = app.window.location().reload();
            })
        })?;
        // Closing the tab ends hosting now, not when the server notices.
        let app = Rc::downgrade(self);
        self.on(self.window.as_ref(), "pagehide", move |_| {
            with(&app, |app| app.shut_down())
        })?;
        let app = Rc::downgrade(self);
        let tick = Closure::<dyn FnMut(JsValue)>::new(move |_| with(&app, |app| app.on_tick()));
        self.window
            .set_interval_with_callback_and_timeout_and_arguments_0(
                tick.as_ref().unchecked_ref(),
                TICK_MS,
            )?;
        self.callbacks.borrow_mut().push(tick);
        Ok(())
    }

    fn on(
        &self,
        target: &web_sys::EventTarget,
        name: &str,
        f: impl FnMut(JsValue) + 'static,
    ) -> Result<(), JsValue> {
        let callback = Closure::<dyn FnMut(JsValue)>::new(f);
        target.add_event_listener_with_callback(name, callback.as_ref().unchecked_ref())?;
        self.callbacks.borrow_mut().push(callback);
        Ok(())
    }

    fn socket(&self) -> Option<Rc<Socket>> {
        self.socket.borrow().clone()
    }

    fn now(&self) -> Duration {
        Duration::from_secs_f64(self.now_ms().max(0.0) / 1000.0)
    }

    fn now_ms(&self) -> f64 {
        self.window.performance().map_or(0.0, |p| p.now())
    }

    // ---- user actions ----

    /// Share: hash the text, move to its address, show it and host it.
    fn share(&self) {
        let text = self.view.editor.value();
        if text.trim().is_empty() {
            self.view.set_home_error("Write something first.");
            return;
        }
        if text.len() > MAX_PAGE_BYTES {
            let (size, max) = compared(text.len() as u64, MAX_PAGE_BYTES as u64);
            self.view
                .set_home_error(&format!("This page is {size}; pages can be up to {max}."));
            return;
        }
        let hash = PageHash::of(text.as_bytes());
        if let Ok(history) = self.window.history() {
            let _ = history.push_state_with_url(&JsValue::NULL, "", Some(&format!("/{hash}")));
        }
        self.view.set_home_error("");
        self.view.show_page(&text);
        {
            let mut state = self.state.borrow_mut();
            state.route = Route::Page(hash);
            state.page = Some(Rc::from(text.into_bytes()));
            state.delivery = Some(Delivery::Author);
            self.join_current(&mut state);
        }
        self.render();
    }

    fn copy_link(&self) {
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

    fn shut_down(&self) {
        if let Some(socket) = self.socket() {
            socket.shutdown();
        }
        let mut state = self.state.borrow_mut();
        for (_, link) in state.upload_links.drain() {
            link.close();
        }
        if let Some(link) = state.fetch_link.take() {
            link.close();
        }
    }

    // ---- the server ----

    fn on_socket(&self, event: SocketEvent) {
        match event {
            SocketEvent::Open => {
                let mut state = self.state.borrow_mut();
                state.link = Connection::Online;
                state.joined = None;
                state.pending.clear();
                self.join_current(&mut state);
            }
            SocketEvent::Closed => {
                let mut state = self.state.borrow_mut();
                if state.link == Connection::Online {
                    state.link = Connection::Reconnecting;
                }
                state.joined = None;
                state.pending.clear();
            }
            SocketEvent::Frame(frame) => self.on_frame(frame),
        }
        self.render();
    }

    /// Joins the topic this tab belongs in, if it has one.
    fn join_current(&self, state: &mut State) {
        let (Some(topic), Some(socket)) = (state.topic(), self.socket()) else {
            return;
        };
        // The first join of `have:` after a fetch says which way the page
        // came, so the server can count fetches by path.
        let payload = match (topic.role, state.path.take()) {
            (Role::Have, Some(path)) => {
                ephemeral_shared::frame::to_object(&JoinPayload { path: Some(path) })
            }
            _ => Map::new(),
        };
        if let Some(msg_ref) = socket.join(&topic.to_string(), payload) {
            state.pending.insert(msg_ref, Pending::Join(topic));
        }
    }

    fn on_frame(&self, frame: Frame) {
        if let Some((status, response)) = frame.as_reply() {
            let pending = frame
                .msg_ref
                .as_ref()
                .and_then(|r| self.state.borrow_mut().pending.remove(r));
            match pending {
                Some(Pending::Join(topic)) => self.on_join_reply(topic, status, response),
                Some(Pending::Request) => self.on_request_reply(status, response),
                Some(Pending::Relay(event)) => on_relay_reply(event, status, response),
                None => {}
            }
            return;
        }
        let Ok(topic) = frame.topic.parse::<Topic>() else {
            return;
        };
        if self.state.borrow().topic() != Some(topic) {
            // A late message for a topic we left.
            return;
        }
        match frame.event.as_str() {
            event::VISITORS_COUNT => {
                if let Some(counts) = payload::<VisitorsCount>(&frame) {
                    self.on_count(counts.count);
                }
            }
            event::CONTENT if topic.role == Role::Want => {
                if let Some(content) = payload::<Content>(&frame) {
                    let mut state = self.state.borrow_mut();
                    let now = self.now();
                    if let Some(fetch) = state.fetch.as_mut() {
                        fetch.on_relay_content(&content.content, now);
                    }
                    self.drain_fetch(&mut state);
                }
            }
            event::CONTENT_UNAVAILABLE if topic.role == Role::Want => {
                if let Some(unavailable) = payload::<ContentUnavailableFrom>(&frame) {
                    let mut state = self.state.borrow_mut();
                    let now = self.now();
                    let max_relay = state.max_relay_bytes;
                    if let Some(fetch) = state.fetch.as_mut() {
                        fetch.on_content_unavailable(
                            unavailable.from,
                            unavailable.size,
                            max_relay,
                            now,
                        );
                    }
                    self.drain_fetch(&mut state);
                }
            }
            event::CONTENT_REQUEST if topic.role == Role::Have => {
                if let Some(request) = payload::<HostRequest>(&frame) {
                    self.on_content_request(topic, request);
                }
            }
            event::SIGNAL => {
                if let Some(signal) = payload::<SignalFrom>(&frame) {
                    match topic.role {
                        Role::Want => self.on_signal_as_visitor(signal),
                        Role::Have => self.on_signal_as_host(signal),
                    }
                }
            }
            // The server dropped us from the topic: join it again.
            event::CLOSE | event::ERROR => {
                let mut state = self.state.borrow_mut();
                state.joined = None;
                self.join_current(&mut state);
            }
            _ => {}
        }
    }

    fn on_join_reply(&self, topic: Topic, status: &str, response: &Map<String, Value>) {
        let mut state = self.state.borrow_mut();
        if state.topic() != Some(topic) {
            return;
        }
        if status != "ok" {
            let why = response
                .get("reason")
                .and_then(Value::as_str)
                .unwrap_or("no reason given");
            state.failure = Some(refusal_words(&format!(
                "the server refused to let this tab join: {why}"
            )));
            return;
        }
        let Ok(reply) = serde_json::from_value::<JoinReply>(Value::Object(response.clone())) else {
            state.failure = Some(refusal_words("the server's join reply was not understood"));
            return;
        };
        state.joined = Some(topic);
        state.ice_servers = reply.ice_servers;
        state.max_relay_bytes = reply.max_relay_bytes;
        state.count = Some(reply.count);
        if topic.role == Role::Want {
            let now = self.now();
            match state.fetch.as_mut() {
                // A fresh start, or a page that was gone and may be back.
                None => state.fetch = Some(self.new_fetch(topic.hash, now)),
                Some(fetch) if fetch.phase() == Phase::Gone => {
                    state.fetch = Some(self.new_fetch(topic.hash, now));
                }
                // Back after a drop: what went through the server is lost.
                Some(fetch) => fetch.on_reconnected(now),
            }
            self.drain_fetch(&mut state);
        }
    }

    fn new_fetch(&self, hash: PageHash, now: Duration) -> Fetch {
        let config = FetchConfig {
            webrtc: self.settings.webrtc,
            max_page_bytes: MAX_PAGE_BYTES,
            ..FetchConfig::default()
        };
        Fetch::new(hash, config, now)
    }

    fn on_request_reply(&self, status: &str, response: &Map<String, Value>) {
        let mut state = self.state.borrow_mut();
        let now = self.now();
        let Some(fetch) = state.fetch.as_mut() else {
            return;
        };
        if status == "ok" {
            if let Ok(routed) =
                serde_json::from_value::<RequestRouted>(Value::Object(response.clone()))
            {
                fetch.on_routed(routed.host, now);
                let early = std::mem::take(&mut state.early_signals);
                for signal in early {
                    self.signal_to_fetch(&mut state, signal);
                }
            }
        } else if response.get("reason").and_then(Value::as_str) == Some(NO_HOSTS) {
            fetch.on_no_hosts();
        }
        // Any other refusal (rate limited, …): the fetch's own timeout asks
        // again.
        self.drain_fetch(&mut state);
    }

    fn on_count(&self, count: usize) {
        let mut state = self.state.borrow_mut();
        state.count = Some(count);
        let gone = state
            .fetch
            .as_ref()
            .is_some_and(|f| f.phase() == Phase::Gone);
        // Someone hosts it again (a host that was reconnecting, say).
        if gone
            && count > 0
            && let Some(Topic {
                role: Role::Want,
                hash,
            }) = state.joined
        {
            state.fetch = Some(self.new_fetch(hash, self.now()));
            self.drain_fetch(&mut state);
        }
    }

    /// Carries out what the fetch asks for.
    fn drain_fetch(&self, state: &mut State) {
        let Some(Topic {
            role: Role::Want,
            hash,
        }) = state.topic()
        else {
            return;
        };
        let want = Topic::want(hash).to_string();
        while let Some(action) = state.fetch.as_mut().and_then(Fetch::poll) {
            match action {
                FetchAction::Request(request) => {
                    state.early_signals.clear();
                    let sent = self
                        .socket()
                        .and_then(|s| s.push(&want, event::CONTENT_REQUEST, &request));
                    if let Some(msg_ref) = sent {
                        state.pending.insert(msg_ref, Pending::Request);
                    }
                }
                FetchAction::CloseRtc(host) => {
                    if state.fetch_link.as_ref().is_some_and(|l| l.peer == host)
                        && let Some(link) = state.fetch_link.take()
                    {
                        link.close();
                    }
                }
                FetchAction::Delivered {
                    page, transport, ..
                } => {
                    self.view.show_page(&String::from_utf8_lossy(&page));
                    state.page = Some(Rc::from(page));
                    state.joined = None;
                    state.count = None;
                    let (delivery, path) = match transport {
                        Transport::Relay => (Delivery::Relay, Some(Path::Relay)),
                        // Known once the channel opened (see `on_fetch_event`);
                        // a tiny page can beat the stats call.
                        Transport::WebRtc => (Delivery::WebRtc(state.rtc_path), state.rtc_path),
                    };
                    state.delivery = Some(delivery);
                    state.path = path;
                    self.host_fetched(state, &want);
                    return;
                }
                FetchAction::Gone => {}
                FetchAction::Failed(failure) => state.failure = Some(failure_words(&failure)),
            }
        }
    }

    /// The path of the connection to `host` is known.
    fn on_rtc_path(&self, host: PeerId, path: Option<Path>) {
        {
            let mut state = self.state.borrow_mut();
            let current = state.fetch_link.as_ref().is_some_and(|l| l.peer == host);
            match state.delivery {
                // Delivered before the stats came back: show it now.
                Some(Delivery::WebRtc(None)) => state.delivery = Some(Delivery::WebRtc(path)),
                _ if current => state.rtc_path = path,
                _ => {}
            }
        }
        self.render();
    }

    /// Hosts the page just fetched, then leaves `want`: host before leaving,
    /// because the server frees the serving host's slot on the leave, and
    /// the visitors it then routes should find this tab already hosting.
    fn host_fetched(&self, state: &mut State, want: &str) {
        self.join_current(state);
        if let Some(socket) = self.socket() {
            socket.leave(want);
        }
    }

    fn on_signal_as_visitor(&self, signal: SignalFrom) {
        let mut state = self.state.borrow_mut();
        let phase = state.fetch.as_ref().map(Fetch::phase);
        if phase == Some(Phase::Asking) {
            if state.early_signals.len() < MAX_EARLY_SIGNALS {
                state.early_signals.push(signal);
            }
            return;
        }
        self.signal_to_fetch(&mut state, signal);
    }

    /// Hands a host's signal to the fetch's connection, creating it on the
    /// host's offer. Only the host the server named may negotiate.
    fn signal_to_fetch(&self, state: &mut State, signal: SignalFrom) {
        let accepted = state
            .fetch
            .as_ref()
            .is_some_and(|f| f.accepts_signal_from(signal.from));
        if !accepted {
            return;
        }
        let current = state
            .fetch_link
            .as_ref()
            .filter(|l| l.peer == signal.from)
            .cloned();
        let link = match (current, &signal.body) {
            (Some(link), _) => link,
            (None, SignalBody::Offer { .. }) => {
                let settings = self.rtc_settings(state);
                match PeerLink::new(
                    Side::Visitor,
                    signal.from,
                    &settings,
                    self.now_ms(),
                    self.rtc_handler(),
                ) {
                    Ok(link) => {
                        if let Some(old) = state.fetch_link.replace(link.clone()) {
                            old.close();
                        }
                        link
                    }
                    Err(error) => {
                        web_sys::console::warn_1(&error);
                        let now = self.now();
                        if let Some(fetch) = state.fetch.as_mut() {
                            fetch.on_rtc_failed(now);
                        }
                        self.drain_fetch(state);
                        return;
                    }
                }
            }
            // A candidate for a connection we do not have (closed already).
            (None, _) => return,
        };
        link.on_signal(signal.body);
    }

    fn on_content_request(&self, topic: Topic, request: HostRequest) {
        let mut state = self.state.borrow_mut();
        let Some(page) = state.page.clone() else {
            return;
        };
        let relayable = fits_relay(page.len(), state.max_relay_bytes);
        let action = state.uploads.on_request(&request, relayable);
        let Some(socket) = self.socket() else { return };
        match action {
            HostAction::RelayUnavailable => {
                let refusal = ContentUnavailable {
                    to: request.from,
                    size: page.len() as u64,
                };
                let event = event::CONTENT_UNAVAILABLE;
                if let Some(msg_ref) = socket.push(&topic.to_string(), event, &refusal) {
                    state.pending.insert(msg_ref, Pending::Relay(event));
                }
            }
            HostAction::Relay => match std::str::from_utf8(&page) {
                Ok(text) => {
                    let content = Content {
                        content: text.to_string(),
                    };
                    let event = event::CONTENT;
                    if let Some(msg_ref) = socket.push(&topic.to_string(), event, &content) {
                        state.pending.insert(msg_ref, Pending::Relay(event));
                    }
                }
                // `content` is a JSON string; bytes that are not UTF-8 can
                // only go over a data channel.
                Err(_) => web_sys::console::warn_1(&JsValue::from_str(
                    "this page is not UTF-8 text and cannot be relayed",
                )),
            },
            HostAction::Offer => {
                let settings = self.rtc_settings(&state);
                match PeerLink::new(
                    Side::Host,
                    request.from,
                    &settings,
                    self.now_ms(),
                    self.rtc_handler(),
                ) {
                    Ok(link) => {
                        if let Some(old) = state.upload_links.insert(request.from, link.clone()) {
                            old.close();
                        }
                        link.offer();
                    }
                    Err(error) => {
                        web_sys::console::warn_1(&error);
                        state.uploads.on_finished(request.from);
                    }
                }
            }
        }
    }

    fn on_signal_as_host(&self, signal: SignalFrom) {
        let link = self.state.borrow().upload_links.get(&signal.from).cloned();
        if let Some(link) = link {
            link.on_signal(signal.body);
        }
    }

    fn rtc_settings(&self, state: &State) -> RtcSettings {
        RtcSettings {
            ice_servers: state.ice_servers.clone(),
            relay_candidates_only: self.settings.relay_candidates_only,
        }
    }

    // ---- peer connections ----

    /// Connection events are handled in a later microtask, never inside the
    /// call that caused them, so no handler runs while another holds the
    /// state.
    fn rtc_handler(&self) -> rtc::RtcHandler {
        let app = self.me.clone();
        Rc::new(move |side, peer, event| {
            let app = app.clone();
            wasm_bindgen_futures::spawn_local(async move {
                with(&app, |app| app.on_rtc(side, peer, event));
            });
        })
    }

    fn on_rtc(&self, side: Side, peer: PeerId, event: RtcEvent) {
        match side {
            Side::Host => self.on_upload_event(peer, event),
            Side::Visitor => self.on_fetch_event(peer, event),
        }
        self.render();
    }

    fn on_upload_event(&self, peer: PeerId, event: RtcEvent) {
        let (link, page, topic) = {
            let state = self.state.borrow();
            (
                state.upload_links.get(&peer).cloned(),
                state.page.clone(),
                state.topic(),
            )
        };
        let (Some(link), Some(page), Some(topic)) = (link, page, topic) else {
            return;
        };
        match event {
            RtcEvent::Signal(body) => {
                if let Some(socket) = self.socket() {
                    let signal = SignalTo { to: peer, body };
                    socket.push(&topic.to_string(), event::SIGNAL, &signal);
                }
            }
            RtcEvent::Open => link.send_page(&page),
            RtcEvent::Closed => {
                let mut state = self.state.borrow_mut();
                state.upload_links.remove(&peer);
                state.uploads.on_finished(peer);
            }
            // The visitor closes the connection once it has verified the
            // page; until then the upload counts as under way.
            RtcEvent::Sent | RtcEvent::Text(_) | RtcEvent::Binary(_) => {}
        }
    }

    fn on_fetch_event(&self, peer: PeerId, event: RtcEvent) {
        let mut state = self.state.borrow_mut();
        if state.fetch_link.as_ref().is_none_or(|l| l.peer != peer) {
            return;
        }
        let now = self.now();
        match event {
            RtcEvent::Signal(body) => {
                let socket = self.socket();
                if let (Some(socket), Some(topic)) = (socket, state.topic()) {
                    let signal = SignalTo { to: peer, body };
                    socket.push(&topic.to_string(), event::SIGNAL, &signal);
                }
                return;
            }
            RtcEvent::Closed => {
                state.fetch_link = None;
                if let Some(fetch) = state.fetch.as_mut() {
                    fetch.on_rtc_failed(now);
                }
            }
            RtcEvent::Open => {
                if let Some(fetch) = state.fetch.as_mut() {
                    fetch.on_channel_open(now);
                }
                state.rtc_path = None;
                // Which way the channel goes takes a stats call; the fetch
                // closes the connection once the page is verified, so ask
                // now, while it is open.
                if let Some(link) = state.fetch_link.clone() {
                    let me = self.me.clone();
                    wasm_bindgen_futures::spawn_local(async move {
                        let path = link.path().await;
                        with(&me, |app| app.on_rtc_path(link.peer, path));
                    });
                }
            }
            RtcEvent::Text(text) => {
                if let Some(fetch) = state.fetch.as_mut() {
                    fetch.on_channel_text(&text, now);
                }
            }
            RtcEvent::Binary(bytes) => {
                if let Some(fetch) = state.fetch.as_mut() {
                    fetch.on_channel_binary(&bytes, now);
                }
            }
            RtcEvent::Sent => {}
        }
        self.drain_fetch(&mut state);
    }

    fn on_tick(&self) {
        {
            let mut state = self.state.borrow_mut();
            let now = self.now();
            if let Some(fetch) = state.fetch.as_mut() {
                fetch.on_tick(now);
            }
            self.drain_fetch(&mut state);
            let now_ms = self.now_ms();
            let stale: Vec<PeerId> = state
                .upload_links
                .values()
                .filter(|link| {
                    let age = now_ms - link.created_ms;
                    age > UPLOAD_MAX_MS || (age > UPLOAD_OPEN_TIMEOUT_MS && !link.is_open())
                })
                .map(|link| link.peer)
                .collect();
            for peer in stale {
                if let Some(link) = state.upload_links.remove(&peer) {
                    link.close();
                }
                state.uploads.on_finished(peer);
            }
        }
        self.render();
    }

    // ---- what the visitor sees ----

    fn render(&self) {
        let state = self.state.borrow();
        let view = &self.view;
        view.set_connection(state.link.as_str());
        let progress = state.fetch.as_ref().and_then(Fetch::progress);
        let phase = state.fetch.as_ref().map(Fetch::phase);
        let (page_state, words) = describe(&Situation {
            home: state.route == Route::Home,
            connection: state.link,
            failure: state.failure.as_deref(),
            hosting: state.page.is_some(),
            delivery: state.delivery,
            joined: state.joined.is_some(),
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
        if let Some(count) = state.count {
            view.set_host_count(count);
        }
        if let Some(delivery) = state.delivery {
            view.set_delivery(delivery);
        }
        view.set_progress(match phase {
            Some(Phase::Receiving(_)) => progress,
            _ => None,
        });
    }
}

thread_local! {
    /// The running client: it lives as long as the tab.
    static RUNNING: RefCell<Option<Rc<App>>> = const { RefCell::new(None) };
}

/// Starts the client and keeps it for the life of the tab.
pub fn run() -> Result<(), JsValue> {
    let app = App::start()?;
    RUNNING.with(|slot| *slot.borrow_mut() = Some(app));
    Ok(())
}

fn read_settings(window: &Window) -> Settings {
    let params = window
        .location()
        .search()
        .ok()
        .and_then(|search| web_sys::UrlSearchParams::new_with_str(&search).ok());
    let get = |key: &str| params.as_ref().and_then(|p| p.get(key));
    Settings {
        webrtc: rtc::available() && get("rtc").as_deref() != Some("off"),
        relay_candidates_only: get("ice").as_deref() == Some("relay"),
    }
}

/// The server's answer to a relayed page or a refusal to relay one. A
/// refusal needs nothing undone (the visitor's own timeout asks again), so
/// it is only logged.
fn on_relay_reply(event: &str, status: &str, response: &Map<String, Value>) {
    if status == "ok" {
        return;
    }
    let field = |key: &str| response.get(key).and_then(Value::as_str).unwrap_or("");
    let reason = field("reason");
    let line = JsValue::from_str(&format!(
        "the server refused our {event}: {reason} {}",
        field("detail")
    ));
    // `not_requested`: the visitor asked for WebRTC (a busy or WebRTC-less
    // host answers by relay anyway) or left before our answer: routine.
    if reason.parse::<Reason>() == Ok(Reason::NotRequested) {
        web_sys::console::debug_1(&line);
    } else {
        web_sys::console::warn_1(&line);
    }
}

fn payload<T: DeserializeOwned>(frame: &Frame) -> Option<T> {
    match frame.payload_as::<T>() {
        Ok(value) => Some(value),
        Err(error) => {
            web_sys::console::warn_1(&JsValue::from_str(&error.to_string()));
            None
        }
    }
}

fn with(app: &Weak<App>, f: impl FnOnce(&App)) {
    if let Some(app) = app.upgrade() {
        f(&app);
    }
}
