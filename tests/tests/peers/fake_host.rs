//! A host that misbehaves on purpose, written against the test Phoenix
//! client and a raw WebRTC session so that nothing in `ephemeral-peer`'s
//! own host logic can soften what it does.
//!
//! It joins `have:<hash>` for a page it claims to have; at the first
//! `content_request` it tells the test (which may then start an honest
//! host) and waits for the go-ahead; then it offers a data channel and, once
//! open, either sends forged bytes under the right header or sends half the
//! page and disappears.

use std::time::Duration;

use ephemeral_peer::{RtcSettings, Session, SessionEvent};
use ephemeral_phoenix_client::Client;
use ephemeral_shared::frame::event;
use ephemeral_shared::protocol::{HostRequest, SignalFrom, SignalTo};
use ephemeral_shared::transfer::TransferSender;
use ephemeral_shared::{Page, PageHash, PeerId, Topic};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Misbehaviour {
    /// The right header, then bytes that do not hash to it.
    WrongBytes,
    /// The header and half the chunks, then gone: socket and connection.
    VanishMidTransfer,
}

pub struct FakeHost {
    /// The visitor of each `content_request` it received.
    pub asked: mpsc::UnboundedReceiver<PeerId>,
    /// Let it serve the first request.
    go: Option<oneshot::Sender<()>>,
    /// Whether it got as far as sending (some of) its bytes.
    pub sent: oneshot::Receiver<()>,
    task: JoinHandle<()>,
}

impl FakeHost {
    /// Joins `have:<hash of page>`; returns once the server accepted it.
    pub async fn start(
        server_url: &str,
        settings: RtcSettings,
        page: Vec<u8>,
        misbehaviour: Misbehaviour,
    ) -> FakeHost {
        let mut client = Client::connect(server_url)
            .await
            .expect("the fake host connects");
        let topic = Topic::have(PageHash::of(&page));
        client
            .join(&topic.to_string())
            .await
            .expect("the fake host joins");
        let (asked_tx, asked) = mpsc::unbounded_channel();
        let (go, go_rx) = oneshot::channel();
        let (sent_tx, sent) = oneshot::channel();
        let task = tokio::spawn(serve(
            client,
            topic,
            page,
            misbehaviour,
            settings,
            asked_tx,
            go_rx,
            sent_tx,
        ));
        FakeHost {
            asked,
            go: Some(go),
            sent,
            task,
        }
    }

    /// Lets the fake host go ahead with the request it is holding.
    pub fn go(&mut self) {
        if let Some(go) = self.go.take() {
            let _ = go.send(());
        }
    }
}

impl Drop for FakeHost {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[allow(clippy::too_many_arguments)]
async fn serve(
    mut client: Client,
    topic: Topic,
    page: Vec<u8>,
    misbehaviour: Misbehaviour,
    settings: RtcSettings,
    asked: mpsc::UnboundedSender<PeerId>,
    go: oneshot::Receiver<()>,
    sent: oneshot::Sender<()>,
) {
    // The first WebRTC request, held until the test says go.
    let visitor = loop {
        let Ok(frame) = client.next_frame().await else {
            return;
        };
        if frame.event == event::CONTENT_REQUEST
            && let Ok(request) = frame.payload_as::<HostRequest>()
        {
            let _ = asked.send(request.from);
            if !request.relay {
                break request.from;
            }
        }
    };
    if go.await.is_err() {
        return;
    }
    let (events_tx, mut events) = mpsc::unbounded_channel();
    let session = Session::offer(&settings, events_tx)
        .await
        .expect("the fake host builds a session");
    let topic = topic.to_string();
    let mut sent = Some(sent);
    loop {
        tokio::select! {
            frame = client.next_frame() => {
                let Ok(frame) = frame else { return };
                if frame.event == event::SIGNAL
                    && let Ok(signal) = frame.payload_as::<SignalFrom>()
                    && signal.from == visitor
                {
                    session.signal(signal.body);
                } else if frame.event == event::CONTENT_REQUEST
                    && let Ok(request) = frame.payload_as::<HostRequest>()
                {
                    let _ = asked.send(request.from);
                }
            }
            event = events.recv() => match event {
                Some(SessionEvent::Signal(body)) => {
                    let signal = SignalTo { to: visitor, body };
                    if client.push(&topic, event::SIGNAL, &signal).await.is_err() {
                        return;
                    }
                }
                Some(SessionEvent::Open { message_size }) => {
                    misbehave(&session, &page, message_size, misbehaviour).await;
                    if let Some(sent) = sent.take() {
                        let _ = sent.send(());
                    }
                    if misbehaviour == Misbehaviour::VanishMidTransfer {
                        session.close().await;
                        // Gone either way: how the server answers the
                        // close is not what the test is about.
                        let _ = client.close().await;
                        return;
                    }
                }
                Some(SessionEvent::Closed { .. }) | None => {
                    // Keep the socket: a bad host that stays around is the
                    // harder case for the visitor.
                    std::future::pending::<()>().await;
                }
                Some(_) => {}
            },
        }
    }
}

async fn misbehave(session: &Session, page: &[u8], message_size: usize, how: Misbehaviour) {
    let honest = Page::new(page.to_vec());
    let honest = TransferSender::new(&honest, message_size);
    if session.send_text(&honest.header()).await.is_err() {
        return;
    }
    match how {
        Misbehaviour::WrongBytes => {
            let mut forged = page.to_vec();
            for byte in forged.iter_mut().step_by(97) {
                *byte = if *byte == b'x' { b'y' } else { b'x' };
            }
            let forged = Page::new(forged);
            for chunk in TransferSender::new(&forged, message_size).chunks() {
                if session.send_binary(&chunk).await.is_err() {
                    return;
                }
            }
        }
        Misbehaviour::VanishMidTransfer => {
            let chunks: Vec<Vec<u8>> = honest.chunks().collect();
            for chunk in &chunks[..chunks.len() / 2] {
                if session.send_binary(chunk).await.is_err() {
                    return;
                }
            }
            // Let the half arrive, so the visitor is mid-transfer when we go.
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}
