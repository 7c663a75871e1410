//! One RTCPeerConnection to one remote peer, host side (we offer a data
//! channel and push the page into it) or visitor side (we answer and receive).
//!
//! What this module owns: the browser's WebRTC objects, applying remote
//! signals strictly in order (an ICE candidate must not race the remote
//! description it belongs to), and sending a page with back-pressure. What
//! it does not own: deciding whom to talk to, or what the bytes mean — the
//! app feeds [`RtcEvent`]s into `shared`'s `Fetch` and `Uploads`.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::rc::{Rc, Weak};

use ephemeral_shared::PeerId;
use ephemeral_shared::path::Path;

use crate::Listener;
use ephemeral_shared::protocol::{IceServer, SignalBody};
use ephemeral_shared::transfer::{MAX_MESSAGE_BYTES, TransferSender, message_size_for};
use js_sys::{Array, ArrayBuffer, Reflect, Uint8Array};
use wasm_bindgen::prelude::*;
use wasm_bindgen::{JsCast, JsValue};
use wasm_bindgen_futures::JsFuture;
use web_sys::{
    MessageEvent, RtcConfiguration, RtcDataChannel, RtcDataChannelEvent, RtcDataChannelState,
    RtcDataChannelType, RtcIceCandidateInit, RtcIceServer, RtcIceTransportPolicy,
    RtcPeerConnection, RtcPeerConnectionIceEvent, RtcPeerConnectionState, RtcSdpType,
    RtcSessionDescriptionInit,
};

/// Which end of the transfer this connection is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// We hold the page, offer the channel and send.
    Host,
    /// We want the page, answer and receive.
    Visitor,
}

/// What a connection reports to the app.
#[derive(Debug)]
pub enum RtcEvent {
    /// A signal to forward to the remote through the server.
    Signal(SignalBody),
    /// The data channel is open.
    Open,
    Text(String),
    Binary(Vec<u8>),
    /// Every chunk of the page has been handed to the channel (host side).
    Sent,
    /// The connection failed, or the channel closed: it will carry nothing
    /// more.
    Closed,
}

/// Receives every connection's events, with the side and remote peer.
pub type RtcHandler = Rc<dyn Fn(Side, PeerId, RtcEvent)>;

/// How peer connections are set up in this tab.
#[derive(Debug, Clone, Default)]
pub struct RtcSettings {
    pub ice_servers: Vec<IceServer>,
    /// Gather relay (TURN) candidates only. With no TURN server configured
    /// there are none, so no connection can form: the test switch that makes
    /// WebRTC impossible while leaving the browser's WebRTC API in place.
    pub relay_candidates_only: bool,
}

/// Bytes we let pile up in the channel's send buffer before waiting for it
/// to drain; Chromium closes a channel whose buffer exceeds 16 MiB.
const SEND_HIGH_WATER: u32 = 1 << 20;
/// Refill the buffer when it falls to this.
const SEND_LOW_WATER: u32 = 256 * 1024;

/// One peer connection and its data channel.
pub struct PeerLink {
    pub side: Side,
    pub peer: PeerId,
    /// When it was created (ms, performance clock), so stale ones can be
    /// dropped.
    pub created_ms: f64,
    pc: RtcPeerConnection,
    channel: RefCell<Option<RtcDataChannel>>,
    /// Remote signals not yet applied; applied one at a time, in order.
    signals: RefCell<VecDeque<SignalBody>>,
    applying: Cell<bool>,
    /// The largest message the remote accepts, from its SDP.
    message_size: Cell<usize>,
    /// Chunks of the page still to send (host side).
    outbox: RefCell<VecDeque<Vec<u8>>>,
    closed: Cell<bool>,
    handler: RtcHandler,
    /// Keeps the JS callbacks alive exactly as long as the connection,
    /// with what they listen on, to unhook them when it goes.
    callbacks: RefCell<Vec<(web_sys::EventTarget, &'static str, Listener)>>,
}

impl PeerLink {
    /// A new connection to `peer`. The host side then calls
    /// [`PeerLink::offer`]; the visitor side waits for the remote's offer.
    pub fn new(
        side: Side,
        peer: PeerId,
        settings: &RtcSettings,
        now_ms: f64,
        handler: RtcHandler,
    ) -> Result<Rc<Self>, JsValue> {
        let config = RtcConfiguration::new();
        let servers = Array::new();
        for server in &settings.ice_servers {
            let ice = RtcIceServer::new();
            let urls: Array = server.urls.iter().map(|u| JsValue::from_str(u)).collect();
            ice.set_urls(&urls);
            if let Some(username) = &server.username {
                ice.set_username(username);
            }
            if let Some(credential) = &server.credential {
                ice.set_credential(credential);
            }
            servers.push(&ice);
        }
        config.set_ice_servers(&servers);
        if settings.relay_candidates_only {
            config.set_ice_transport_policy(RtcIceTransportPolicy::Relay);
        }
        let pc = RtcPeerConnection::new_with_configuration(&config)?;
        let link = Rc::new(Self {
            side,
            peer,
            created_ms: now_ms,
            pc,
            channel: RefCell::new(None),
            signals: RefCell::new(VecDeque::new()),
            applying: Cell::new(false),
            message_size: Cell::new(MAX_MESSAGE_BYTES),
            outbox: RefCell::new(VecDeque::new()),
            closed: Cell::new(false),
            handler,
            callbacks: RefCell::new(Vec::new()),
        });
        link.watch_connection();
        Ok(link)
    }

    /// Host side: opens the data channel and sends the offer.
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
                    link.fail();
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

    /// Host side: sends the page once the channel is open.
    pub fn send_page(&self, page: &[u8]) {
        let sender = TransferSender::new(page, self.message_size.get());
        let Some(channel) = self.channel.borrow().clone() else {
            return;
        };
        if channel.send_with_str(&sender.header()).is_err() {
            self.fail();
            return;
        }
        *self.outbox.borrow_mut() = sender.chunks().collect();
        self.pump();
    }

    /// Whether the data channel is open (used to spare working uploads when
    /// pruning stale connections).
    /// Which way the channel's bytes go, from the selected ICE candidate
    /// pair in the connection's stats; `None` when the browser does not say.
    pub async fn path(&self) -> Option<Path> {
        let report = JsFuture::from(self.pc.get_stats()).await.ok()?;
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

    pub fn is_open(&self) -> bool {
        self.channel
            .borrow()
            .as_ref()
            .is_some_and(|c| c.ready_state() == RtcDataChannelState::Open)
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
    /// event calls back in for the rest.
    fn pump(&self) {
        let Some(channel) = self.channel.borrow().clone() else {
            return;
        };
        loop {
            if channel.buffered_amount() >= SEND_HIGH_WATER {
                return;
            }
            let next = self.outbox.borrow_mut().pop_front();
            let Some(chunk) = next else {
                self.report(RtcEvent::Sent);
                return;
            };
            if channel.send_with_u8_array(&chunk).is_err() {
                self.fail();
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
            if matches!(
                link.pc.connection_state(),
                RtcPeerConnectionState::Failed | RtcPeerConnectionState::Closed
            ) {
                link.fail();
            }
        });
        if self.side == Side::Visitor {
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
            report(&link, RtcEvent::Open)
        });
        let link = Rc::downgrade(self);
        self.on(channel.as_ref(), "message", move |event| {
            let Ok(event) = event.dyn_into::<MessageEvent>() else {
                return;
            };
            let data = event.data();
            if let Some(text) = data.as_string() {
                report(&link, RtcEvent::Text(text));
            } else if let Ok(buffer) = data.dyn_into::<ArrayBuffer>() {
                report(&link, RtcEvent::Binary(Uint8Array::new(&buffer).to_vec()));
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
                link.fail();
            }
        });
        *self.channel.borrow_mut() = Some(channel);
    }

    /// Reports the end of this connection once, and closes it.
    fn fail(&self) {
        if self.closed.get() {
            return;
        }
        self.close();
        (self.handler)(self.side, self.peer, RtcEvent::Closed);
    }

    fn report(&self, event: RtcEvent) {
        if !self.closed.get() {
            (self.handler)(self.side, self.peer, event);
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

fn report(link: &Weak<PeerLink>, event: RtcEvent) {
    if let Some(link) = link.upgrade() {
        link.report(event);
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
