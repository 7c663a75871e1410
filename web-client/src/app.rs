//! The controller: wires the DOM, the WebSocket, the peer connections and
//! one timer to `ephemeral_shared`'s [`Client`], which holds the whole
//! peer logic (the Phoenix session, fetching, hosting).
//!
//! ```text
//!   DOM: Share, links, Back ───┐
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
//!
//! Navigation stays in the tab (docs/pages.md): Share, Back/Forward and the
//! logo change the route with the History API and never reload, so the
//! pages this tab hosts keep being served; a reload hosts again what the
//! tab kept ([`Store`]). Only leaving as the last host of a page asks first.

use std::cell::{Cell, RefCell};
use std::rc::{Rc, Weak};
use std::time::Duration;

use ephemeral_shared::client::{Client, ClientConfig, ConnId, Event, Output, RtcEvent};
use ephemeral_shared::session::Transmit;
use ephemeral_shared::{FetchConfig, Page};
use wasm_bindgen::JsCast;
use wasm_bindgen::prelude::*;
use web_sys::Window;

use crate::Listeners;
use crate::editor::Editor;
use crate::hashing;
use crate::page::{self, Format, Route};
use crate::render::Renderer;
use crate::rtc::{self, Peers};
use crate::socket::{Socket, SocketEvent};
use crate::store::{Kept, Restored, Store};
use crate::timer::Timer;
use crate::ui::{Held, Ui};
use crate::view::{Delivery, View};

/// The largest page this client shares or accepts: 16 MiB, over WebRTC.
/// Through the server's relay a page can be at most the server's own
/// limit (its join replies say it); a host answers a relay request for a
/// larger page with `content_unavailable`, and the visitor says so.
const MAX_PAGE_BYTES: usize = 16 << 20;
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
    editor: Rc<Editor>,
    store: Rc<Store>,
    socket: Rc<Socket>,
    peers: Peers,
    timer: Timer,
    /// DOM callbacks, kept alive for the life of the tab.
    listeners: Listeners,
    /// A Share whose page is being hashed: pressing again waits for it.
    sharing: Cell<bool>,
}

impl App {
    /// Starts the client on the current document.
    pub fn start() -> Result<Rc<Self>, JsValue> {
        let window = web_sys::window().ok_or_else(|| JsValue::from_str("no window"))?;
        let document = window
            .document()
            .ok_or_else(|| JsValue::from_str("no document"))?;
        let view = View::find(&document)?;
        let viewer = Renderer::new(&document, view.content.clone(), view.frame.clone());
        let title_document = document.clone();
        viewer.on_title(Rc::new(move |first| {
            title_document.set_title(&page::tab_title(&first));
        }));
        let store = Rc::new(Store::new(&window));
        let editor = Editor::find(&document, store.clone(), MAX_PAGE_BYTES)?;
        let settings = Settings::read(&window);
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
                ui: RefCell::new(Ui::new(view, viewer, window.clone(), Route::Home)),
                window,
                client: RefCell::new(client),
                editor,
                store,
                socket,
                peers,
                timer,
                listeners: Listeners::default(),
                sharing: Cell::new(false),
            }
        });
        app.listen()?;
        let me = Rc::downgrade(&app);
        app.store.on_unkept(Rc::new(move |hash| {
            with(&me, |a| {
                a.ui.borrow_mut().set_kept(hash, false);
                a.carry_out();
            })
        }));
        // Nothing is shown or fetched before what the tab kept is back:
        // the address may name a page it hosts. A tab opened by "Edit a
        // copy" gets that page as its draft.
        let me = Rc::downgrade(&app);
        let store = app.store.clone();
        wasm_bindgen_futures::spawn_local(async move {
            let restored = store.restore().await;
            with(&me, |a| a.resume(restored));
        });
        Ok(app)
    }

    /// Takes up what the tab kept, then shows the address it is at.
    fn resume(&self, restored: Restored) {
        self.editor.load(restored.draft);
        self.host_kept(restored.pages);
        self.go(current_route(&self.window));
    }

    /// Hosts again every page this tab kept before a reload.
    fn host_kept(&self, pages: Vec<(Kept, Vec<u8>)>) {
        for (kept, bytes) in pages {
            let hash = self.client.borrow_mut().share(Page::new(bytes));
            if hash != kept.hash {
                // Not what was kept under that name: never serve it.
                self.client.borrow_mut().unshare(hash);
                continue;
            }
            self.ui.borrow_mut().hold(
                hash,
                Held {
                    delivery: if kept.authored {
                        Delivery::Author
                    } else {
                        Delivery::Kept
                    },
                    authored: kept.authored,
                    kept: true,
                    format: kept.format,
                },
            );
        }
    }

    /// Shows `route`, fetching its page unless this tab has it or is
    /// getting it already.
    fn go(&self, route: Route) {
        if let Some(hash) = route.hash() {
            let mut client = self.client.borrow_mut();
            let now = self.now();
            let have = client.hosted_page(hash).is_some() || client.fetch_progress(hash).is_some();
            if !have && let Err(error) = client.fetch(hash, true, now) {
                warn(&error.to_string());
            }
        }
        self.ui.borrow_mut().go(route);
        self.carry_out();
    }

    /// Moves to `route` as a new history entry, in this tab.
    fn navigate(&self, route: Route) {
        if let Ok(history) = self.window.history() {
            let _ = history.push_state_with_url(&JsValue::NULL, "", Some(&route.url()));
        }
        self.go(route);
    }

    fn listen(self: &Rc<Self>) -> Result<(), JsValue> {
        let (share, textarea) = (self.editor.share.clone(), self.editor.textarea.clone());
        let (copy_link, link, view_source, edit_copy, brand, hosted) = {
            let ui = self.ui.borrow();
            let view = ui.view();
            (
                view.copy_link.clone(),
                view.link.clone(),
                view.view_source.clone(),
                view.edit_copy.clone(),
                view.brand.clone(),
                view.home.clone(),
            )
        };
        let window = self.window.clone();
        let app = Rc::downgrade(self);
        self.listeners
            .on(share.as_ref(), "click", move |_| App::share(&app))?;
        // Ctrl+Enter (⌘+Enter) shares from the editor, as in most editors.
        let app = Rc::downgrade(self);
        self.listeners
            .on(textarea.as_ref(), "keydown", move |event| {
                let Ok(key) = event.dyn_into::<web_sys::KeyboardEvent>() else {
                    return;
                };
                if key.key() == "Enter" && (key.ctrl_key() || key.meta_key()) {
                    key.prevent_default();
                    App::share(&app);
                }
            })?;
        let app = Rc::downgrade(self);
        self.listeners.on(copy_link.as_ref(), "click", move |_| {
            with(&app, |a| a.ui.borrow().copy_link())
        })?;
        // One click selects the whole link, ready to copy; the mouseup that
        // follows a focusing click would otherwise put a caret in it.
        let field = link.clone();
        self.listeners
            .on(link.as_ref(), "click", move |_| field.select())?;
        self.listeners.on(link.as_ref(), "mouseup", move |event| {
            if let Ok(event) = event.dyn_into::<web_sys::Event>() {
                event.prevent_default();
            }
        })?;
        let app = Rc::downgrade(self);
        self.listeners.on(view_source.as_ref(), "click", move |_| {
            with(&app, |a| {
                a.ui.borrow_mut().toggle_source();
                a.carry_out();
            })
        })?;
        let app = Rc::downgrade(self);
        self.listeners.on(edit_copy.as_ref(), "click", move |_| {
            with(&app, |a| a.edit_copy())
        })?;
        // The logo and the list of hosted pages move within the tab, so
        // this tab keeps hosting; a click with a modifier opens a new tab
        // as usual.
        for target in [brand, hosted] {
            let app = Rc::downgrade(self);
            self.listeners.on(target.as_ref(), "click", move |event| {
                with(&app, |a| a.on_link_click(event))
            })?;
        }
        // Back/Forward: show the route the URL now names, in this tab.
        let app = Rc::downgrade(self);
        self.listeners.on(window.as_ref(), "popstate", move |_| {
            with(&app, |a| a.go(current_route(&a.window)))
        })?;
        // Closing or leaving the tab as the last host of a page ends it:
        // the browser asks first (it shows its own words, and only after
        // the person has used the tab).
        let app = Rc::downgrade(self);
        self.listeners
            .on(window.as_ref(), "beforeunload", move |event| {
                with(&app, |a| {
                    let last = a.ui.borrow().is_last_host(&a.client.borrow());
                    if last && let Ok(event) = event.dyn_into::<web_sys::Event>() {
                        // Either asks, depending on the browser; both are set.
                        event.prevent_default();
                        let _ = js_sys::Reflect::set(&event, &"returnValue".into(), &"".into());
                    }
                })
            })?;
        // Closing the tab ends hosting now, not when the server notices.
        let app = Rc::downgrade(self);
        self.listeners.on(window.as_ref(), "pagehide", move |_| {
            with(&app, |a| {
                a.editor.save_draft();
                a.shut_down();
            })
        })?;
        // Back to a tab the browser kept frozen: it was shut down on the
        // way out, so start it afresh (hosting what it kept).
        let app = Rc::downgrade(self);
        self.listeners
            .on(window.as_ref(), "pageshow", move |event| {
                let persisted = event
                    .dyn_into::<web_sys::PageTransitionEvent>()
                    .is_ok_and(|e| e.persisted());
                if persisted {
                    with(&app, |a| {
                        let _ = a.window.location().reload();
                    })
                }
            })?;
        let app = Rc::downgrade(self);
        self.listeners.on(window.as_ref(), "resize", move |_| {
            with(&app, |a| {
                a.ui.borrow().fit();
                a.editor.fit();
            })
        })?;
        Ok(())
    }

    // ---- inputs ----

    /// Share: hash the page, then [`App::host_shared`].
    fn share(app: &Weak<App>) {
        let Some(me) = app.upgrade() else {
            return;
        };
        if me.sharing.get() {
            return;
        }
        let Some(text) = me.editor.page() else {
            return;
        };
        let format = me.editor.format();
        me.sharing.set(true);
        let app = app.clone();
        // Hashed in slices: the tab keeps drawing and answering meanwhile.
        wasm_bindgen_futures::spawn_local(async move {
            let page = hashing::page(text.into_bytes()).await;
            with(&app, |a| {
                a.sharing.set(false);
                a.host_shared(page, format);
            });
        });
    }

    /// Hosts the page shared, moves to its address, and puts the focus on
    /// its link, ready to copy.
    fn host_shared(&self, page: Page, format: Format) {
        let hash = self.client.borrow_mut().share(page.clone());
        let kept = self.store.keep(
            Kept {
                hash,
                format,
                authored: true,
            },
            &page,
        );
        self.ui.borrow_mut().hold(
            hash,
            Held {
                delivery: Delivery::Author,
                authored: true,
                kept,
                format,
            },
        );
        self.navigate(Route::Page(hash, format));
        let ui = self.ui.borrow();
        let link = &ui.view().link;
        let _ = link.focus();
        link.select();
    }

    /// A click on a link of ours: follow it within the tab.
    fn on_link_click(&self, event: JsValue) {
        let Ok(event) = event.dyn_into::<web_sys::MouseEvent>() else {
            return;
        };
        if event.button() != 0
            || event.ctrl_key()
            || event.meta_key()
            || event.shift_key()
            || event.alt_key()
        {
            return;
        }
        let link = event
            .target()
            .and_then(|t| t.dyn_into::<web_sys::Element>().ok())
            .and_then(|e| e.closest("a[href]").ok().flatten());
        let Some(href) = link.and_then(|a| a.get_attribute("href")) else {
            return;
        };
        if !href.starts_with('/') {
            return;
        }
        event.prevent_default();
        let (path, fragment) = href.split_once('#').unwrap_or((&href, ""));
        self.navigate(Route::parse(path, fragment));
    }

    /// "Edit a copy": a new tab whose editor starts with this page, so
    /// this tab keeps hosting. The page goes over through the session
    /// storage the new tab starts with a copy of.
    fn edit_copy(&self) {
        let Route::Page(hash, format) = self.ui.borrow().route().clone() else {
            return;
        };
        if !self.store.mark_copy(hash, format) {
            warn("this page is not kept in this tab: the new tab starts empty");
        }
        let _ = self.window.open_with_url_and_target("/", "_blank");
        self.store.unmark_copy();
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

    /// A page fetched and hosted now: keep it for a reload.
    fn keep_fetched(&self, hash: ephemeral_shared::PageHash) {
        let Some(page) = self.client.borrow().hosted_page(hash) else {
            return;
        };
        let format = self
            .ui
            .borrow()
            .held(hash)
            .map_or(Format::Text, |h| h.format);
        let kept = self.store.keep(
            Kept {
                hash,
                format,
                authored: false,
            },
            &page,
        );
        self.ui.borrow_mut().set_kept(hash, kept);
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
                Output::Event(Event::Delivered(delivered)) => {
                    let hash = delivered.hash;
                    self.ui.borrow_mut().on_event(Event::Delivered(delivered));
                    self.keep_fetched(hash);
                }
                Output::Event(event) => self.ui.borrow_mut().on_event(event),
            }
        }
        let client = self.client.borrow();
        let deadline = client.next_deadline();
        // After a shutdown nothing is ever due.
        let deadline = (deadline != Duration::MAX).then_some(deadline);
        self.timer.arm(deadline, self.now());
        self.ui.borrow_mut().render(&client);
    }

    fn now(&self) -> Duration {
        now(&self.window)
    }
}

/// The route the address bar names now.
fn current_route(window: &Window) -> Route {
    let location = window.location();
    Route::parse(
        &location.pathname().unwrap_or_default(),
        &location.hash().unwrap_or_default(),
    )
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
