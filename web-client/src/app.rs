//! The controller: wires the DOM, the WebSocket, the peer connections and
//! one timer to `ephemeral_shared`'s [`Client`], which holds the whole
//! peer logic (the Phoenix session, fetching, hosting).
//!
//! ```text
//!   DOM: Share, pagehide ──────┐
//!   Socket: open/frame/close ──┤                  ┌─► Socket: connect, send, close
//!   Peers: RtcEvent ───────────┼─► Client ────────┼─► Peers: open, signal, send page, close
//!   Timer at next_deadline ────┘  (input, now)    └─► Ui: events, then render
//! ```
//!
//! Every input goes the same way (`App::input`): the core takes it with
//! `now` (`performance.now()`), then `App::carry_out` does what the core
//! asks until it asks nothing, re-arms the timer and renders. No borrow of
//! the core is held while carrying out, and the socket and the peer
//! connections report only from later tasks, so nothing re-enters.

use std::cell::RefCell;
use std::rc::{Rc, Weak};
use std::time::Duration;

use ephemeral_shared::FetchConfig;
use ephemeral_shared::client::{Client, ClientConfig, ConnId, Output, RtcEvent};
use ephemeral_shared::session::Transmit;
use wasm_bindgen::JsCast;
use wasm_bindgen::prelude::*;
use web_sys::Window;

use crate::Listener;
use crate::rtc::{self, Peers};
use crate::socket::{Socket, SocketEvent};
use crate::timer::Timer;
use crate::ui::{Route, Ui};
use crate::view::View;

/// The largest page this client shares or accepts: the server's default
/// limit, so a page refused here would be refused there too.
const MAX_PAGE_BYTES: usize = 1 << 20;
/// Most uploads over WebRTC at once, half a native peer's: every peer
/// connection costs a tab ICE, DTLS and SCTP work on the same renderer
/// that draws the page, in a tab the browser throttles once it is in the
/// background. Further visitors are served by relay.
const MAX_UPLOADS: usize = 8;

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

impl Settings {
    fn read(window: &Window) -> Self {
        let params = window
            .location()
            .search()
            .ok()
            .and_then(|search| web_sys::UrlSearchParams::new_with_str(&search).ok());
        let get = |key: &str| params.as_ref().and_then(|p| p.get(key));
        Self {
            webrtc: rtc::available() && get("rtc").as_deref() != Some("off"),
            relay_candidates_only: get("ice").as_deref() == Some("relay"),
        }
    }

    fn client(self) -> ClientConfig {
        ClientConfig {
            fetch: FetchConfig {
                webrtc: self.webrtc,
                max_page_bytes: MAX_PAGE_BYTES,
                ..FetchConfig::default()
            },
            max_uploads: MAX_UPLOADS,
            ..ClientConfig::default()
        }
    }
}

/// The running client.
pub struct App {
    window: Window,
    client: RefCell<Client>,
    ui: RefCell<Ui>,
    socket: Rc<Socket>,
    peers: Peers,
    timer: Timer,
    /// DOM callbacks, kept alive for the life of the tab.
    listeners: RefCell<Vec<Listener>>,
}

impl App {
    /// Starts the client on the current document.
    pub fn start() -> Result<Rc<Self>, JsValue> {
        let window = web_sys::window().ok_or_else(|| JsValue::from_str("no window"))?;
        let document = window
            .document()
            .ok_or_else(|| JsValue::from_str("no document"))?;
        let view = View::find(&document)?;
        let settings = Settings::read(&window);
        let (route, bad_address) = Route::parse(&window.location().pathname()?);
        let url = crate::socket::server_url(&window)?;
        let client = Client::new(settings.client(), seed(), now(&window));
        let app = Rc::new_cyclic(|me: &Weak<App>| {
            let app = me.clone();
            let socket = Socket::new(
                url,
                Rc::new(move |event| with(&app, |a| a.on_socket(event))),
            );
            let app = me.clone();
            let peers = Peers::new(
                settings.relay_candidates_only,
                Rc::new(move |conn, event| with(&app, |a| a.on_rtc(conn, event))),
            );
            let app = me.clone();
            let timer = Timer::new(window.clone(), move || with(&app, |a| a.on_timer()));
            Self {
                ui: RefCell::new(Ui::new(view, window.clone(), route)),
                window,
                client: RefCell::new(client),
                socket,
                peers,
                timer,
                listeners: RefCell::new(Vec::new()),
            }
        });
        if let Some(error) = bad_address {
            let ui = app.ui.borrow();
            ui.view()
                .set_home_error(&format!("That address is not a page: {error}"));
        }
        app.listen()?;
        match route {
            // The page is hosted once it arrives.
            Route::Page(hash) => app.input(|client, now| {
                if let Err(error) = client.fetch(hash, true, now) {
                    warn(&error.to_string());
                }
            }),
            Route::Home => app.carry_out(),
        }
        Ok(app)
    }

    fn listen(self: &Rc<Self>) -> Result<(), JsValue> {
        let (share, editor, copy_link) = {
            let ui = self.ui.borrow();
            let view = ui.view();
            (
                view.share.clone(),
                view.editor.clone(),
                view.copy_link.clone(),
            )
        };
        let app = Rc::downgrade(self);
        self.on(share.as_ref(), "click", move |_| with(&app, |a| a.share()))?;
        // Ctrl+Enter (⌘+Enter) shares from the editor, as in most editors.
        let app = Rc::downgrade(self);
        self.on(editor.as_ref(), "keydown", move |event| {
            let Ok(key) = event.dyn_into::<web_sys::KeyboardEvent>() else {
                return;
            };
            if key.key() == "Enter" && (key.ctrl_key() || key.meta_key()) {
                key.prevent_default();
                with(&app, |a| a.share());
            }
        })?;
        let app = Rc::downgrade(self);
        self.on(copy_link.as_ref(), "click", move |_| {
            with(&app, |a| a.ui.borrow().copy_link())
        })?;
        // Back/forward between `/` and a page: start over from the URL.
        // Leaving a page's view ends hosting it, as closing the tab does.
        let app = Rc::downgrade(self);
        self.on(self.window.as_ref(), "popstate", move |_| {
            with(&app, |a| {
                let _ = a.window.location().reload();
            })
        })?;
        // Closing the tab ends hosting now, not when the server notices.
        let app = Rc::downgrade(self);
        self.on(self.window.as_ref(), "pagehide", move |_| {
            with(&app, |a| a.shut_down())
        })?;
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
        self.listeners.borrow_mut().push(callback);
        Ok(())
    }

    // ---- inputs ----

    /// Share: move to the page's address, show it, and host it.
    fn share(&self) {
        let Some(page) = self.ui.borrow().draft(MAX_PAGE_BYTES) else {
            return;
        };
        self.ui.borrow_mut().authored(page.clone());
        self.input(|client, _| {
            client.share(page);
        });
    }

    fn on_socket(&self, event: SocketEvent) {
        match event {
            SocketEvent::Open => self.input(Client::on_connected),
            SocketEvent::Frame(frame) => self.input(|client, now| client.on_frame(frame, now)),
            SocketEvent::Closed { was_open: true } => self.input(Client::on_disconnected),
            SocketEvent::Closed { was_open: false } => self.input(Client::on_connect_failed),
        }
    }

    fn on_rtc(&self, conn: ConnId, event: RtcEvent) {
        self.input(|client, now| client.on_rtc(conn, event, now));
    }

    fn on_timer(&self) {
        self.timer.fired();
        self.input(Client::handle_timeout);
    }

    /// The tab is going away: fetches end, hosting ends, everything closes.
    fn shut_down(&self) {
        self.client.borrow_mut().shutdown();
        self.carry_out();
        self.peers.close_all();
        self.socket.close();
    }

    /// Feeds one input to the core, then carries out what it asks.
    fn input(&self, feed: impl FnOnce(&mut Client, Duration)) {
        let now = self.now();
        feed(&mut self.client.borrow_mut(), now);
        self.carry_out();
    }

    // ---- outputs ----

    /// Does everything the core asks, until it asks nothing more; then
    /// re-arms the timer and renders.
    fn carry_out(&self) {
        loop {
            // The borrow ends here: carrying out may feed the core again.
            let output = self.client.borrow_mut().poll_output();
            let Some(output) = output else {
                break;
            };
            match output {
                Output::Socket(Transmit::Connect) => {
                    if let Err(error) = self.socket.connect() {
                        web_sys::console::warn_2(&"could not open the websocket:".into(), &error);
                        let now = self.now();
                        self.client.borrow_mut().on_connect_failed(now);
                    }
                }
                Output::Socket(Transmit::Send(frame)) => self.socket.send(&frame),
                Output::Socket(Transmit::Close) => self.socket.close(),
                Output::OpenRtc {
                    conn,
                    side,
                    ice_servers,
                } => self.peers.open(conn, side, &ice_servers),
                Output::SignalRtc { conn, body } => self.peers.signal(conn, body),
                Output::SendPage { conn, page } => self.peers.send_page(conn, &page),
                Output::CloseRtc { conn } => self.peers.close(conn),
                Output::Event(event) => self.ui.borrow_mut().on_event(event),
            }
        }
        let client = self.client.borrow();
        let deadline = client.next_deadline();
        // After a shutdown nothing is ever due.
        let deadline = (deadline != Duration::MAX).then_some(deadline);
        self.timer.arm(deadline, self.now());
        self.ui.borrow().render(&client);
    }

    fn now(&self) -> Duration {
        now(&self.window)
    }
}

/// The core's clock: `performance.now()`, from the page's load.
fn now(window: &Window) -> Duration {
    let ms = window.performance().map_or(0.0, |p| p.now());
    Duration::from_secs_f64(ms.max(0.0) / 1000.0)
}

/// The seed of the reconnect jitter: no two tabs knock at the same
/// instants after a server restart.
fn seed() -> u64 {
    let half = || (js_sys::Math::random() * 4_294_967_296.0) as u64;
    (half() << 32) | half()
}

fn warn(line: &str) {
    web_sys::console::warn_1(&JsValue::from_str(line));
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

fn with(app: &Weak<App>, f: impl FnOnce(&App)) {
    if let Some(app) = app.upgrade() {
        f(&app);
    }
}
