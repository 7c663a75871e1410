//! The websocket to the server, speaking Phoenix Channels V2 JSON.
//!
//! What this module owns: the `WebSocket`, message refs, the join ref of
//! each joined topic, the 30 s heartbeat, and reconnecting with backoff when
//! the socket drops. What it does not own: which topics to join or what the
//! events mean — on every (re)connection it reports [`SocketEvent::Open`] and
//! the app joins what it needs.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::{Rc, Weak};

use ephemeral_shared::Frame;
use ephemeral_shared::frame::{event, to_object};
use ephemeral_shared::topic::PHOENIX_TOPIC;
use serde::Serialize;
use serde_json::Map;
use wasm_bindgen::JsCast;
use wasm_bindgen::prelude::*;
use web_sys::{MessageEvent, WebSocket};

use crate::Listener;

/// Phoenix's own clients beat every 30 s; the server closes a socket that is
/// silent for 60 s.
const HEARTBEAT_MS: i32 = 30_000;
/// Reconnect delays grow from this…
const BACKOFF_FIRST_MS: f64 = 500.0;
/// …doubling up to this, so a restarted server is found within seconds.
const BACKOFF_MAX_MS: f64 = 8_000.0;

/// What the socket reports to the app.
#[derive(Debug)]
pub enum SocketEvent {
    /// Connected (again): every earlier join is gone; join afresh.
    Open,
    /// Disconnected; a reconnect is scheduled.
    Closed,
    /// A reply or push from the server (heartbeat replies are kept here).
    Frame(Frame),
}

/// Receives every socket event.
pub type SocketHandler = Rc<dyn Fn(SocketEvent)>;

/// One Phoenix socket, reconnecting for the life of the tab.
pub struct Socket {
    url: String,
    handler: SocketHandler,
    state: RefCell<Connection>,
    /// Counts connections, so events from an abandoned `WebSocket` are
    /// ignored.
    generation: Cell<u32>,
    /// Kept alive for the life of the socket.
    heartbeat: RefCell<Option<Closure<dyn FnMut()>>>,
}

#[derive(Default)]
struct Connection {
    ws: Option<WebSocket>,
    open: bool,
    next_ref: u64,
    /// The join ref of every topic joined on this connection.
    joins: HashMap<String, String>,
    /// The ref of a heartbeat not yet answered.
    heartbeat_ref: Option<String>,
    /// Failed attempts in a row, for the backoff.
    failures: u32,
    /// The current `WebSocket`'s callbacks, dropped with it.
    callbacks: Vec<Listener>,
    /// The pending reconnect timer's callback.
    retry: Option<Closure<dyn FnMut()>>,
}

impl Socket {
    /// Opens the socket to this page's own server.
    pub fn connect(handler: SocketHandler) -> Result<Rc<Self>, JsValue> {
        let location = web_sys::window()
            .ok_or_else(|| JsValue::from_str("no window"))?
            .location();
        let scheme = if location.protocol()? == "https:" {
            "wss"
        } else {
            "ws"
        };
        let url = format!("{scheme}://{}/ws/websocket?vsn=2.0.0", location.host()?);
        let socket = Rc::new(Self {
            url,
            handler,
            state: RefCell::new(Connection::default()),
            generation: Cell::new(0),
            heartbeat: RefCell::new(None),
        });
        socket.start_heartbeat()?;
        socket.open();
        Ok(socket)
    }

    pub fn is_open(&self) -> bool {
        self.state.borrow().open
    }

    /// Joins `topic` with `payload`; returns the ref its reply will carry.
    pub fn join(&self, topic: &str, payload: Map<String, serde_json::Value>) -> Option<String> {
        let mut state = self.state.borrow_mut();
        let join_ref = state.take_ref();
        state.joins.insert(topic.to_string(), join_ref.clone());
        let frame = Frame::new(
            Some(join_ref.clone()),
            Some(join_ref.clone()),
            topic,
            event::JOIN,
            payload,
        );
        state.send(&frame).then_some(join_ref)
    }

    /// Leaves `topic`.
    pub fn leave(&self, topic: &str) {
        if !self.state.borrow().joins.contains_key(topic) {
            return;
        }
        self.push(topic, event::LEAVE, &Map::new());
        self.state.borrow_mut().joins.remove(topic);
    }

    /// Sends `event` on a joined `topic`; returns the ref its reply will
    /// carry, or `None` if the socket is down (the app re-sends what matters
    /// after reconnecting).
    pub fn push<P: Serialize>(&self, topic: &str, event: &str, payload: &P) -> Option<String> {
        let mut state = self.state.borrow_mut();
        let msg_ref = state.take_ref();
        let join_ref = state.joins.get(topic).cloned();
        let frame = Frame::new(
            join_ref,
            Some(msg_ref.clone()),
            topic,
            event,
            to_object(payload),
        );
        state.send(&frame).then_some(msg_ref)
    }

    /// Closes the socket for good (the tab is going away).
    pub fn shutdown(&self) {
        self.generation.set(self.generation.get().wrapping_add(1));
        let mut state = self.state.borrow_mut();
        if let Some(ws) = state.ws.take() {
            let _ = ws.close();
        }
        state.open = false;
    }

    fn open(self: &Rc<Self>) {
        let generation = self.generation.get().wrapping_add(1);
        self.generation.set(generation);
        let ws = match WebSocket::new(&self.url) {
            Ok(ws) => ws,
            Err(error) => {
                web_sys::console::warn_1(&error);
                self.schedule_reconnect();
                return;
            }
        };
        let mut callbacks = Vec::new();
        let listen = |name: &str, f: Box<dyn FnMut(JsValue)>| {
            let callback = Closure::wrap(f);
            let _ = ws.add_event_listener_with_callback(name, callback.as_ref().unchecked_ref());
            callback
        };
        let socket = Rc::downgrade(self);
        callbacks.push(listen(
            "open",
            Box::new(move |_| with_current(&socket, generation, |s| s.on_open())),
        ));
        let socket = Rc::downgrade(self);
        callbacks.push(listen(
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
        ));
        let socket = Rc::downgrade(self);
        callbacks.push(listen(
            "close",
            Box::new(move |_| with_current(&socket, generation, |s| s.on_close())),
        ));
        let mut state = self.state.borrow_mut();
        if let Some(old) = state.ws.replace(ws) {
            let _ = old.close();
        }
        // The old callbacks are not running: this runs from a timer.
        state.callbacks = callbacks;
        state.open = false;
        state.joins.clear();
        state.heartbeat_ref = None;
    }

    fn on_open(&self) {
        {
            let mut state = self.state.borrow_mut();
            state.open = true;
            state.failures = 0;
        }
        (self.handler)(SocketEvent::Open);
    }

    fn on_text(&self, text: &str) {
        let frame = match Frame::parse(text) {
            Ok(frame) => frame,
            Err(error) => {
                web_sys::console::warn_1(&JsValue::from_str(&format!("bad frame: {error}")));
                return;
            }
        };
        if frame.topic == PHOENIX_TOPIC {
            let mut state = self.state.borrow_mut();
            if state.heartbeat_ref.is_some() && state.heartbeat_ref == frame.msg_ref {
                state.heartbeat_ref = None;
            }
            return;
        }
        (self.handler)(SocketEvent::Frame(frame));
    }

    fn on_close(self: &Rc<Self>) {
        {
            let mut state = self.state.borrow_mut();
            state.open = false;
            state.joins.clear();
            state.failures += 1;
        }
        (self.handler)(SocketEvent::Closed);
        self.schedule_reconnect();
    }

    fn schedule_reconnect(self: &Rc<Self>) {
        let failures = self.state.borrow().failures;
        let exponent = failures.saturating_sub(1).min(16) as i32;
        let backoff = (BACKOFF_FIRST_MS * 2f64.powi(exponent)).min(BACKOFF_MAX_MS);
        // Jitter, so a restarted server is not hit by every client at once.
        let delay = backoff * (0.75 + 0.5 * js_sys::Math::random());
        let socket = Rc::downgrade(self);
        let retry = Closure::<dyn FnMut()>::new(move || {
            if let Some(socket) = socket.upgrade() {
                socket.open();
            }
        });
        if let Some(window) = web_sys::window() {
            let _ = window.set_timeout_with_callback_and_timeout_and_arguments_0(
                retry.as_ref().unchecked_ref(),
                delay as i32,
            );
        }
        self.state.borrow_mut().retry = Some(retry);
    }

    fn start_heartbeat(self: &Rc<Self>) -> Result<(), JsValue> {
        let socket = Rc::downgrade(self);
        let beat = Closure::<dyn FnMut()>::new(move || {
            if let Some(socket) = socket.upgrade() {
                socket.beat();
            }
        });
        web_sys::window()
            .ok_or_else(|| JsValue::from_str("no window"))?
            .set_interval_with_callback_and_timeout_and_arguments_0(
                beat.as_ref().unchecked_ref(),
                HEARTBEAT_MS,
            )?;
        *self.heartbeat.borrow_mut() = Some(beat);
        Ok(())
    }

    fn beat(&self) {
        let mut state = self.state.borrow_mut();
        if !state.open {
            return;
        }
        if state.heartbeat_ref.is_some() {
            // The last beat went unanswered: the connection is dead even if
            // the browser has not noticed. Closing it starts a reconnect.
            if let Some(ws) = &state.ws {
                let _ = ws.close();
            }
            return;
        }
        let msg_ref = state.take_ref();
        let frame = Frame::heartbeat(msg_ref.clone());
        if state.send(&frame) {
            state.heartbeat_ref = Some(msg_ref);
        }
    }
}

impl Connection {
    fn take_ref(&mut self) -> String {
        self.next_ref += 1;
        self.next_ref.to_string()
    }

    fn send(&self, frame: &Frame) -> bool {
        match &self.ws {
            Some(ws) if self.open => ws.send_with_str(&frame.encode()).is_ok(),
            _ => false,
        }
    }
}

/// Runs `f` if `socket` is alive and `generation` is still its connection.
fn with_current(socket: &Weak<Socket>, generation: u32, f: impl FnOnce(&Rc<Socket>)) {
    if let Some(socket) = socket.upgrade()
        && socket.generation.get() == generation
    {
        f(&socket);
    }
}
