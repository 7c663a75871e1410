//! The browser's peer connections, one per [`ConnId`] the client core
//! opened: host side ([`Side::Offer`]: we create the data channel, offer,
//! and push the page into it) or visitor side ([`Side::Answer`]: we answer
//! and receive).
//!
//! What this module owns: the RTCPeerConnections and their data channels,
//! applying remote signals strictly in order (an ICE candidate must not
//! race the remote description it belongs to), sending a page with
//! `shared`'s transfer framing and back-pressure, and asking WebRTC's stats
//! which way an open channel goes. Everything that happens is reported as
//! the core's [`RtcEvent`], always from a later microtask, never inside the
//! call that caused it. What it does not own: whom to talk to, when to give
//! up, or what the bytes mean — the core decides all of that.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::rc::{Rc, Weak};

use ephemeral_shared::Page;
use ephemeral_shared::client::{ConnId, RtcEvent, Side};
use ephemeral_shared::path::Path;
use ephemeral_shared::protocol::{IceServer, SignalBody};
use ephemeral_shared::transfer::{MAX_MESSAGE_BYTES, TransferSender, message_size_for};
use js_sys::{Array, ArrayBuffer, Reflect, Uint8Array};
use wasm_bindgen::prelude::*;
use wasm_bindgen::{JsCast, JsValue};
use wasm_bindgen_futures::JsFuture;
use web_sys::{
    MessageEvent, RtcConfiguration, RtcDataChannel, RtcDataChannelEvent, RtcDataChannelType,
    RtcIceCandidateInit, RtcIceServer, RtcIceTransportPolicy, RtcPeerConnection,
    RtcPeerConnectionIceEvent, RtcPeerConnectionState, RtcSdpType, RtcSessionDescriptionInit,
};

use crate::Listener;

/// Receives every connection's events.
pub type RtcHandler = Rc<dyn Fn(ConnId, RtcEvent)>;

/// Bytes we let pile up in the channel's send buffer before waiting for it
/// to drain; Chromium closes a channel whose buffer exceeds 16 MiB.
const SEND_HIGH_WATER: u32 = 1 << 20;
/// Refill the buffer when it falls to this.
const SEND_LOW_WATER: u32 = 256 * 1024;

/// Every open peer connection, by the core's id.
pub struct Peers {
    links: Rc<RefCell<HashMap<ConnId, Rc<PeerLink>>>>,
    /// `?ice=relay`: gather relay (TURN) candidates only. With no TURN
    /// server there are none, so no connection can form: the test switch
    /// that makes WebRTC impossible while leaving the API in place.
    relay_candidates_only: bool,
    /// `handler`, called from a later microtask.
    report: RtcHandler,
}

impl Peers {
    /// Events go to `handler`, each in its own later microtask, so it may
    /// call back into [`Peers`] and the core freely.
    pub fn new(relay_candidates_only: bool, handler: RtcHandler) -> Self {
        let links: Rc<RefCell<HashMap<ConnId, Rc<PeerLink>>>> = Rc::default();
        let weak_links = Rc::downgrade(&links);
        let report: RtcHandler = Rc::new(move |conn, event| {
            let handler = handler.clone();
            let links = weak_links.clone();
            wasm_bindgen_futures::spawn_local(async move {
                // A connection that ended is forgotten: the core names no
                // connection twice, and may not close one that failed.
                if matches!(event, RtcEvent::Closed(_))
                    && let Some(links) = links.upgrade()
                {
                    let gone = links.borrow_mut().remove(&conn);
                    drop(gone);
                }
                handler(conn, event);
            });
        });
        Self {
            links,
            relay_candidates_only,
            report,
        }
    }

    /// Creates connection `conn`; the offer side also creates the channel
    /// and starts the offer.
    pub fn open(&self, conn: ConnId, side: Side, ice_servers: &[IceServer]) {
        let config = configuration(ice_servers, self.relay_candidates_only);
        match PeerLink::new(conn, side, &config, self.report.clone()) {
            Ok(link) => {
                if side == Side::Offer {
                    link.offer();
                }
                self.links.borrow_mut().insert(conn, link);
            }
            Err(error) => {
                warn("could not create a peer connection:", &error);
                (self.report)(conn, RtcEvent::Closed("no peer connection".into()));
            }
        }
    }

    /// A signal from the other side, applied after every earlier one.
    pub fn signal(&self, conn: ConnId, body: SignalBody) {
        if let Some(link) = self.link(conn) {
            link.on_signal(body);
        }
    }

    /// Sends the page over the open channel, then reports
    /// [`RtcEvent::Sent`].
    pub fn send_page(&self, conn: ConnId, page: &Page) {
        if let Some(link) = self.link(conn) {
            link.send_page(page);
        }
    }

    /// Closes a connection; nothing more is reported of it.
    pub fn close(&self, conn: ConnId) {
        let link = self.links.borrow_mut().remove(&conn);
        if let Some(link) = link {
            link.close();
        }
    }

    pub fn close_all(&self) {
        let links: Vec<_> = self.links.borrow_mut().drain().collect();
        for (_, link) in links {
            link.close();
        }
    }

    fn link(&self, conn: ConnId) -> Option<Rc<PeerLink>> {
        self.links.borrow().get(&conn).cloned()
    }
}

/// The browser's configuration for a new connection.
fn configuration(ice_servers: &[IceServer], relay_candidates_only: bool) -> RtcConfiguration {
    let config = RtcConfiguration::new();
    let servers = Array::new();
    for server in ice_servers {
        let ice = RtcIceServer::new();
        let urls: Array = server.urls.iter().map(|u| JsValue::from_str(u)).collect();
        ice.set_urls(&urls);
        // The join reply's shape is the browser's: TURN credentials pass
        // through as they are.
        if let Some(username) = &server.username {
            ice.set_username(username);
        }
        if let Some(credential) = &server.credential {
            ice.set_credential(credential);
        }
        servers.push(&ice);
    }
    config.set_ice_servers(&servers);
    if relay_candidates_only {
        config.set_ice_transport_policy(RtcIceTransportPolicy::Relay);
    }
    config
}

/// One peer connection and its data channel.
pub struct PeerLink {
    conn: ConnId,
    side: Side,
    pc: RtcPeerConnection,
    channel: RefCell<Option<RtcDataChannel>>,
    /// Remote signals not yet applied; applied one at a time, in order.
    signals: RefCell<VecDeque<SignalBody>>,
    applying: Cell<bool>,
    /// The largest message the remote accepts, from its SDP.
    message_size: Cell<usize>,
    /// The page being sent (offer side) and its next chunk; each chunk is
    /// made when the channel has room, so no copy of the page waits here.
    outbox: RefCell<Option<(Page, u32)>>,
    closed: Cell<bool>,
    report: RtcHandler,
    /// Keeps the JS callbacks alive exactly as long as the connection,
    /// with what they listen on, to unhook them when it goes.
    callbacks: RefCell<Vec<(web_sys::EventTarget, &'static str, Listener)>>,
}

impl PeerLink {
    /// A new connection. The offer side then calls [`PeerLink::offer`];
    /// the answer side waits for the remote's offer.
    pub fn new(
        conn: ConnId,
        side: Side,
        config: &RtcConfiguration,
        report: RtcHandler,
    ) -> Result<Rc<Self>, JsValue> {
        let pc = RtcPeerConnection::new_with_configuration(config)?;
        let link = Rc::new(Self {
            conn,
            side,
            pc,
            channel: RefCell::new(None),
            signals: RefCell::new(VecDeque::new()),
            applying: Cell::new(false),
            message_size: Cell::new(MAX_MESSAGE_BYTES),
            outbox: RefCell::new(None),
            closed: Cell::new(false),
            report,
            callbacks: RefCell::new(Vec::new()),
        });
        link.watch_connection();
        Ok(link)
    }

    /// Offer side: opens the data channel and sends the offer.
    pub fn offer(self: &Rc<Self>) {
        // Ordered and reliable: the defaults, which the transfer framing
        // relies on.
        let channel = self.pc.create_data_channel("page");
        self.attach_channel(channel);
        let link = Rc::downgrade(self);
        wasm_bindgen_futures::spawn_local(async move {
            if let Err(error) = make_offer(&link).await {
                warn("offer failed:", &error);
                if let Some(link) = link.upgrade() {
                    link.fail("the offer failed");
                }
            }
        });
    }

    /// A signal from the remote. Applied after every earlier one.
    pub fn on_signal(self: &Rc<Self>, body: SignalBody) {
        self.signals.borrow_mut().push_back(body);
        if self.applying.replace(true) {
            return;
        }
        let link = Rc::downgrade(self);
        wasm_bindgen_futures::spawn_local(async move {
            loop {
                let Some(link) = link.upgrade() else { return };
                let next = link.signals.borrow_mut().pop_front();
                let Some(body) = next else {
                    link.applying.set(false);
                    return;
                };
                if let Err(error) = link.apply(body).await {
                    warn("a signal from the host or visitor was not applied:", &error);
                }
            }
        });
    }

    /// Offer side: sends the page over the open channel.
    pub fn send_page(&self, page: &Page) {
        let sender = TransferSender::new(page, self.message_size.get());
        let Some(channel) = self.channel.borrow().clone() else {
            self.fail("asked to send before the channel opened");
            return;
        };
        if channel.send_with_str(&sender.header()).is_err() {
            self.fail("could not send the page");
            return;
        }
        *self.outbox.borrow_mut() = Some((page.clone(), 0));
        self.pump();
    }

    /// Closes the connection; no more events are reported.
    pub fn close(&self) {
        if self.closed.replace(true) {
            return;
        }
        if let Some(channel) = self.channel.borrow_mut().take() {
            channel.close();
        }
        self.pc.close();
    }

    /// Sends queued chunks until the buffer is full; the buffered-amount-low
    /// event calls back in for the rest. Reports [`RtcEvent::Sent`] once
    /// the last chunk is handed over.
    fn pump(&self) {
        let Some(channel) = self.channel.borrow().clone() else {
            return;
        };
        loop {
            if channel.buffered_amount() >= SEND_HIGH_WATER {
                return;
            }
            let next = match self.outbox.borrow_mut().as_mut() {
                None => return,
                Some((page, seq)) => {
                    let chunk = TransferSender::new(page, self.message_size.get()).chunk(*seq);
                    *seq += 1;
                    chunk
                }
            };
            let Some(chunk) = next else {
                *self.outbox.borrow_mut() = None;
                self.report(RtcEvent::Sent);
                return;
            };
            if channel.send_with_u8_array(&chunk).is_err() {
                self.fail("could not send the page");
                return;
            }
        }
    }

    async fn apply(&self, body: SignalBody) -> Result<(), JsValue> {
        if self.closed.get() {
            return Ok(());
        }
        match body {
            SignalBody::Offer { sdp } => {
                self.message_size.set(message_size_for(&sdp));
                set_description(&self.pc, RtcSdpType::Offer, &sdp, false).await?;
                let answer = JsFuture::from(self.pc.create_answer()).await?;
                let sdp = sdp_of(&answer)?;
                set_description(&self.pc, RtcSdpType::Answer, &sdp, true).await?;
                self.report(RtcEvent::Signal(SignalBody::Answer { sdp }));
            }
            SignalBody::Answer { sdp } => {
                self.message_size.set(message_size_for(&sdp));
                set_description(&self.pc, RtcSdpType::Answer, &sdp, false).await?;
            }
            SignalBody::Candidate {
                candidate,
                sdp_mid,
                sdp_mline_index,
            } => {
                // An empty candidate ends the trickle; there is nothing to add.
                if candidate.is_empty() {
                    return Ok(());
                }
                let init = RtcIceCandidateInit::new(&candidate);
                init.set_sdp_mid(sdp_mid.as_deref());
                init.set_sdp_m_line_index(sdp_mline_index);
                let added = self
                    .pc
                    .add_ice_candidate_with_opt_rtc_ice_candidate_init(Some(&init));
                JsFuture::from(added).await?;
            }
        }
        Ok(())
    }

    fn watch_connection(self: &Rc<Self>) {
        let link = Rc::downgrade(self);
        self.on(self.pc.as_ref(), "icecandidate", move |event| {
            let (Some(link), Ok(event)) = (
                link.upgrade(),
                event.dyn_into::<RtcPeerConnectionIceEvent>(),
            ) else {
                return;
            };
            if let Some(candidate) = event.candidate() {
                link.report(RtcEvent::Signal(SignalBody::Candidate {
                    candidate: candidate.candidate(),
                    sdp_mid: candidate.sdp_mid(),
                    sdp_mline_index: candidate.sdp_m_line_index(),
                }));
            }
        });
        let link = Rc::downgrade(self);
        self.on(self.pc.as_ref(), "connectionstatechange", move |_| {
            let Some(link) = link.upgrade() else { return };
            match link.pc.connection_state() {
                RtcPeerConnectionState::Failed => link.fail("the connection failed"),
                RtcPeerConnectionState::Closed => link.fail("the connection closed"),
                _ => {}
            }
        });
        if self.side == Side::Answer {
            let link = Rc::downgrade(self);
            self.on(self.pc.as_ref(), "datachannel", move |event| {
                let (Some(link), Ok(event)) =
                    (link.upgrade(), event.dyn_into::<RtcDataChannelEvent>())
                else {
                    return;
                };
                link.attach_channel(event.channel());
            });
        }
    }

    fn attach_channel(self: &Rc<Self>, channel: RtcDataChannel) {
        channel.set_binary_type(RtcDataChannelType::Arraybuffer);
        channel.set_buffered_amount_low_threshold(SEND_LOW_WATER);
        let link = Rc::downgrade(self);
        self.on(channel.as_ref(), "open", move |_| {
            if let Some(link) = link.upgrade() {
                link.on_open();
            }
        });
        let link = Rc::downgrade(self);
        self.on(channel.as_ref(), "message", move |event| {
            let (Some(link), Ok(event)) = (link.upgrade(), event.dyn_into::<MessageEvent>()) else {
                return;
            };
            let data = event.data();
            if let Some(text) = data.as_string() {
                link.report(RtcEvent::Text(text));
            } else if let Ok(buffer) = data.dyn_into::<ArrayBuffer>() {
                link.report(RtcEvent::Binary(Uint8Array::new(&buffer).to_vec()));
            }
        });
        let link = Rc::downgrade(self);
        self.on(channel.as_ref(), "bufferedamountlow", move |_| {
            if let Some(link) = link.upgrade() {
                link.pump();
            }
        });
        let link = Rc::downgrade(self);
        self.on(channel.as_ref(), "close", move |_| {
            if let Some(link) = link.upgrade() {
                link.fail("the data channel closed");
            }
        });
        *self.channel.borrow_mut() = Some(channel);
    }

    /// The channel opened. The visitor closes the connection once the page
    /// is verified, so which way it goes is asked now, while it is open; a
    /// tiny page may be delivered before the stats answer, and the core
    /// waits for this [`RtcEvent::Path`] even after it closed the
    /// connection.
    fn on_open(&self) {
        self.report(RtcEvent::Open);
        if self.side == Side::Answer {
            let (pc, conn, report) = (self.pc.clone(), self.conn, self.report.clone());
            wasm_bindgen_futures::spawn_local(async move {
                report(conn, RtcEvent::Path(selected_path(&pc).await));
            });
        }
    }

    /// Reports the end of this connection once, and closes it.
    fn fail(&self, reason: &str) {
        if self.closed.get() {
            return;
        }
        self.close();
        (self.report)(self.conn, RtcEvent::Closed(reason.to_string()));
    }

    fn report(&self, event: RtcEvent) {
        if !self.closed.get() {
            (self.report)(self.conn, event);
        }
    }

    fn on(
        &self,
        target: &web_sys::EventTarget,
        event: &'static str,
        f: impl FnMut(JsValue) + 'static,
    ) {
        let callback = Closure::<dyn FnMut(JsValue)>::new(f);
        if target
            .add_event_listener_with_callback(event, callback.as_ref().unchecked_ref())
            .is_ok()
        {
            self.callbacks
                .borrow_mut()
                .push((target.clone(), event, callback));
        }
    }
}

impl Drop for PeerLink {
    fn drop(&mut self) {
        self.close();
        // Closing fires `close` events later; a listener still hooked then
        // would call a freed closure. Unhook every one, and free them after
        // the current event, which may be one of theirs.
        let callbacks = std::mem::take(&mut *self.callbacks.borrow_mut());
        for (target, event, callback) in &callbacks {
            let _ = target
                .remove_event_listener_with_callback(event, callback.as_ref().unchecked_ref());
        }
        wasm_bindgen_futures::spawn_local(async move { drop(callbacks) });
    }
}

async fn make_offer(link: &Weak<PeerLink>) -> Result<(), JsValue> {
    let Some(pc) = link.upgrade().map(|l| l.pc.clone()) else {
        return Ok(());
    };
    let offer = JsFuture::from(pc.create_offer()).await?;
    let sdp = sdp_of(&offer)?;
    set_description(&pc, RtcSdpType::Offer, &sdp, true).await?;
    if let Some(link) = link.upgrade() {
        link.report(RtcEvent::Signal(SignalBody::Offer { sdp }));
    }
    Ok(())
}

async fn set_description(
    pc: &RtcPeerConnection,
    kind: RtcSdpType,
    sdp: &str,
    local: bool,
) -> Result<(), JsValue> {
    let description = RtcSessionDescriptionInit::new(kind);
    description.set_sdp(sdp);
    let promise = if local {
        pc.set_local_description(&description)
    } else {
        pc.set_remote_description(&description)
    };
    JsFuture::from(promise).await.map(drop)
}

fn sdp_of(description: &JsValue) -> Result<String, JsValue> {
    Reflect::get(description, &JsValue::from_str("sdp"))?
        .as_string()
        .ok_or_else(|| JsValue::from_str("session description without sdp"))
}

/// Which way the connection's bytes go, from the selected ICE candidate
/// pair in its stats; `None` when the browser does not say.
async fn selected_path(pc: &RtcPeerConnection) -> Option<Path> {
    let report = JsFuture::from(pc.get_stats()).await.ok()?;
    // RTCStatsReport is maplike: its values() iterates every stat.
    let values = Reflect::get(&report, &JsValue::from_str("values"))
        .ok()?
        .dyn_into::<js_sys::Function>()
        .ok()?
        .call0(&report)
        .ok()?;
    let stats: Vec<JsValue> = js_sys::try_iter(&values)
        .ok()??
        .filter_map(Result::ok)
        .collect();
    let text = |stat: &JsValue, key: &str| {
        Reflect::get(stat, &JsValue::from_str(key))
            .ok()
            .and_then(|value| value.as_string())
    };
    let by_id = |id: &str| stats.iter().find(|s| text(s, "id").as_deref() == Some(id));
    // Chromium names the pair on the transport; the spec's fallback is
    // the nominated pair that succeeded.
    let pair_id = stats
        .iter()
        .find(|s| text(s, "type").as_deref() == Some("transport"))
        .and_then(|transport| text(transport, "selectedCandidatePairId"))
        .or_else(|| {
            stats
                .iter()
                .find(|s| {
                    text(s, "type").as_deref() == Some("candidate-pair")
                        && text(s, "state").as_deref() == Some("succeeded")
                        && Reflect::get(s, &JsValue::from_str("nominated"))
                            .ok()
                            .and_then(|v| v.as_bool())
                            == Some(true)
                })
                .and_then(|pair| text(pair, "id"))
        })?;
    let pair = by_id(&pair_id)?;
    let candidate_type = |key: &str| {
        let id = text(pair, key)?;
        text(by_id(&id)?, "candidateType")
    };
    let local = candidate_type("localCandidateId")?;
    let remote = candidate_type("remoteCandidateId")?;
    Some(Path::of_candidate_pair(&local, &remote))
}

/// Whether this browser has WebRTC at all.
pub fn available() -> bool {
    web_sys::window()
        .and_then(|w| Reflect::get(&w, &JsValue::from_str("RTCPeerConnection")).ok())
        .is_some_and(|ctor| ctor.is_function())
}

/// Logs to the console with the JS error itself, not a Rust rendering of
/// it (which would pull float formatting into the wasm).
fn warn(message: &str, error: &JsValue) {
    web_sys::console::warn_2(&JsValue::from_str(message), error);
}
