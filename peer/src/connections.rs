//! The peer connections the client core opened, one tokio task each: the
//! task builds the webrtc-rs [`Session`], applies the core's signals in
//! order, sends the page when asked, and reports what happens as
//! [`RtcEvent`]s tagged with the core's [`ConnId`]. Closing a connection
//! drops its task, which closes the peer connection.

use std::collections::HashMap;
use std::sync::Arc;

use ephemeral_shared::Page;
use ephemeral_shared::client::{ConnId, RtcEvent, Side};
use ephemeral_shared::protocol::SignalBody;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::rtc::{RtcError, RtcSettings, Session, SessionEvent};

/// What the core asks of a running connection.
enum Command {
    Signal(SignalBody),
    SendPage(Page),
}

/// A running connection's task.
struct Link {
    commands: mpsc::UnboundedSender<Command>,
    task: JoinHandle<()>,
}

impl Drop for Link {
    fn drop(&mut self) {
        // The task owns the peer connection; aborting it closes it.
        self.task.abort();
    }
}

/// Every open peer connection, by the core's id.
pub(crate) struct Connections {
    links: HashMap<ConnId, Link>,
    events: mpsc::UnboundedSender<(ConnId, RtcEvent)>,
}

impl Connections {
    pub(crate) fn new(events: mpsc::UnboundedSender<(ConnId, RtcEvent)>) -> Self {
        Self {
            links: HashMap::new(),
            events,
        }
    }

    pub(crate) fn open(&mut self, conn: ConnId, side: Side, settings: RtcSettings) {
        let (commands, commands_rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(run(conn, side, settings, commands_rx, self.events.clone()));
        self.links.insert(conn, Link { commands, task });
    }

    pub(crate) fn signal(&self, conn: ConnId, body: SignalBody) {
        self.command(conn, Command::Signal(body));
    }

    pub(crate) fn send_page(&self, conn: ConnId, page: Page) {
        self.command(conn, Command::SendPage(page));
    }

    pub(crate) fn close(&mut self, conn: ConnId) {
        self.links.remove(&conn);
    }

    pub(crate) fn close_all(&mut self) {
        self.links.clear();
    }

    fn command(&self, conn: ConnId, command: Command) {
        if let Some(link) = self.links.get(&conn) {
            let _ = link.commands.send(command);
        }
    }
}

/// One connection, from building it to its close.
async fn run(
    conn: ConnId,
    side: Side,
    settings: RtcSettings,
    mut commands: mpsc::UnboundedReceiver<Command>,
    events: mpsc::UnboundedSender<(ConnId, RtcEvent)>,
) {
    let report = |event: RtcEvent| events.send((conn, event)).is_ok();
    let (session_tx, mut session_events) = mpsc::unbounded_channel();
    let built = match side {
        Side::Offer => Session::offer(&settings, session_tx).await,
        Side::Answer => Session::answer(&settings, session_tx).await,
    };
    let session = match built {
        Ok(session) => Arc::new(session),
        Err(error) => {
            report(RtcEvent::Closed(error.to_string()));
            return;
        }
    };
    let mut message_size = None;
    let mut sending: Option<JoinHandle<Result<(), RtcError>>> = None;
    loop {
        tokio::select! {
            command = commands.recv() => match command {
                Some(Command::Signal(body)) => session.signal(body),
                Some(Command::SendPage(page)) => {
                    let Some(message_size) = message_size else {
                        report(RtcEvent::Closed("asked to send before the channel opened".into()));
                        break;
                    };
                    let session = session.clone();
                    sending = Some(tokio::spawn(async move {
                        session.send_page(&page, message_size).await
                    }));
                }
                None => break,
            },
            event = session_events.recv() => {
                let event = match event {
                    Some(SessionEvent::Signal(body)) => RtcEvent::Signal(body),
                    Some(SessionEvent::Open { message_size: size }) => {
                        message_size = Some(size);
                        // The visitor closes the connection once the page is
                        // verified, so which way it went is asked now.
                        if side == Side::Answer {
                            report(RtcEvent::Path(session.path().await));
                        }
                        RtcEvent::Open
                    }
                    Some(SessionEvent::Text(text)) => RtcEvent::Text(text),
                    Some(SessionEvent::Binary(bytes)) => RtcEvent::Binary(bytes.to_vec()),
                    Some(SessionEvent::Closed { reason }) => {
                        // The visitor may verify and close before our send
                        // task reports back; its outcome decides.
                        if let Some(task) = sending.take()
                            && matches!(task.await, Ok(Ok(())))
                        {
                            report(RtcEvent::Sent);
                        }
                        report(RtcEvent::Closed(reason));
                        break;
                    }
                    None => {
                        report(RtcEvent::Closed("the session ended".into()));
                        break;
                    }
                };
                if !report(event) {
                    break;
                }
            },
            outcome = async {
                match sending.as_mut() {
                    Some(task) => task.await,
                    None => std::future::pending().await,
                }
            } => {
                sending = None;
                match outcome {
                    Ok(Ok(())) => {
                        report(RtcEvent::Sent);
                    }
                    Ok(Err(error)) => {
                        report(RtcEvent::Closed(error.to_string()));
                        break;
                    }
                    Err(error) => {
                        report(RtcEvent::Closed(error.to_string()));
                        break;
                    }
                }
            }
        }
    }
    if let Some(task) = sending {
        task.abort();
    }
    session.close().await;
}
