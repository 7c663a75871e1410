//! The WebSocket to this page's own server, and nothing more.
//!
//! What this module owns: the browser's `WebSocket` — opening one to
//! `ws(s)://<host>/ws/websocket?vsn=2.0.0`, parsing its text messages into
//! [`Frame`]s, sending frames, closing it — and ignoring every event of a
//! `WebSocket` it has abandoned. What it does not own: refs, joins,
//! heartbeats and reconnecting, which are the client core's
//! (`ephemeral_shared::session`); the app carries out the core's
//! `Transmit`s here and feeds back what this reports.

use std::cell::{Cell, RefCell};
use std::rc::{Rc, Weak};

use ephemeral_shared::Frame;
use wasm_bindgen::JsCast;
use wasm_bindgen::prelude::*;
use web_sys::{MessageEvent, WebSocket, Window};

use crate::Listener;

/// What the socket reports to the app.
#[derive(Debug)]
pub enum SocketEvent {
    /// The `WebSocket` opened.
    Open,
    /// A frame from the server.
    Frame(Frame),
    /// It closed or failed; `was_open` says whether it had opened.
    Closed { was_open: bool },
}

/// Receives every event of the current `WebSocket`.
pub type SocketHandler = Rc<dyn Fn(SocketEvent)>;

/// One `WebSocket` at a time to the server.
pub struct Socket {
    url: String,
    handler: SocketHandler,
    current: RefCell<Option<Current>>,
    /// Counts `WebSocket`s, so events from an abandoned one are ignored.
    generation: Cell<u32>,
}

/// The open (or opening) `WebSocket` and its callbacks, dropped with it.
struct Current {
    ws: WebSocket,
    opened: bool,
    callbacks: Vec<(&'static str, Listener)>,
}

impl Socket {
    /// A socket to `url` (see [`server_url`]); nothing opens until
    /// [`Socket::connect`].
    pub fn new(url: String, handler: SocketHandler) -> Rc<Self> {
        Rc::new(Self {
            url,
            handler,
            current: RefCell::new(None),
            generation: Cell::new(0),
        })
    }

    /// Opens a new `WebSocket`, abandoning any earlier one. An error means
    /// the browser refused to even start; no event follows it.
    pub fn connect(self: &Rc<Self>) -> Result<(), JsValue> {
        self.close();
        let generation = self.generation.get();
        let ws = WebSocket::new(&self.url)?;
        let listen = |name: &'static str, f: Box<dyn FnMut(JsValue)>| {
            let callback = Closure::wrap(f);
            let _ = ws.add_event_listener_with_callback(name, callback.as_ref().unchecked_ref());
            (name, callback)
        };
        let socket = Rc::downgrade(self);
        let on_open = listen(
            "open",
            Box::new(move |_| with_current(&socket, generation, |s| s.on_open())),
        );
        let socket = Rc::downgrade(self);
        let on_message = listen(
            "message",
            Box::new(move |event: JsValue| {
                let text = event
                    .dyn_into::<MessageEvent>()
                    .ok()
                    .and_then(|e| e.data().as_string());
                if let Some(text) = text {
                    with_current(&socket, generation, |s| s.on_text(&text));
                }
            }),
        );
        let socket = Rc::downgrade(self);
        let on_close = listen(
            "close",
            Box::new(move |_| with_current(&socket, generation, |s| s.on_close())),
        );
        *self.current.borrow_mut() = Some(Current {
            ws,
            opened: false,
            callbacks: vec![on_open, on_message, on_close],
        });
        Ok(())
    }

    /// Sends a frame as a text message. A socket gone mid-send reports its
    /// close separately.
    pub fn send(&self, frame: &Frame) {
        if let Some(current) = self.current.borrow().as_ref() {
            let _ = current.ws.send_with_str(&frame.encode());
        }
    }

    /// Closes the `WebSocket`; no event of it is reported any more.
    pub fn close(&self) {
        self.generation.set(self.generation.get().wrapping_add(1));
        let current = self.current.borrow_mut().take();
        if let Some(current) = current {
            // Unhooked first: the abandoned socket's `close` event comes
            // later, as a task, and would otherwise call a freed closure
            // ("closure invoked recursively or after being dropped").
            for (name, callback) in &current.callbacks {
                let _ = current
                    .ws
                    .remove_event_listener_with_callback(name, callback.as_ref().unchecked_ref());
            }
            let _ = current.ws.close();
            // Freed after the current event, which may be one of theirs.
            wasm_bindgen_futures::spawn_local(async move { drop(current) });
        }
    }

    fn on_open(&self) {
        if let Some(current) = self.current.borrow_mut().as_mut() {
            current.opened = true;
        }
        (self.handler)(SocketEvent::Open);
    }

    fn on_text(&self, text: &str) {
        match Frame::parse(text) {
            Ok(frame) => (self.handler)(SocketEvent::Frame(frame)),
            // One bad frame must not end the session.
            Err(error) => {
                web_sys::console::warn_1(&JsValue::from_str(&format!("bad frame: {error}")));
            }
        }
    }

    fn on_close(&self) {
        let was_open = self.current.borrow().as_ref().is_some_and(|c| c.opened);
        self.close();
        (self.handler)(SocketEvent::Closed { was_open });
    }
}

/// The websocket of this page's own server:
/// `ws(s)://<host>/ws/websocket?vsn=2.0.0`.
pub fn server_url(window: &Window) -> Result<String, JsValue> {
    let location = window.location();
    let scheme = if location.protocol()? == "https:" {
        "wss"
    } else {
        "ws"
    };
    Ok(format!(
        "{scheme}://{}/ws/websocket?vsn=2.0.0",
        location.host()?
    ))
}

/// Runs `f` if `socket` is alive and `generation` is still its `WebSocket`.
fn with_current(socket: &Weak<Socket>, generation: u32, f: impl FnOnce(&Socket)) {
    if let Some(socket) = socket.upgrade()
        && socket.generation.get() == generation
    {
        f(&socket);
    }
}
