use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::net::IpAddr;
use std::time::Duration;

use ephemeral_shared::Frame;
use ephemeral_shared::frame::event;
use ephemeral_shared::protocol::Reason;
use ephemeral_shared::topic::PHOENIX_TOPIC;
use futures_util::{SinkExt, StreamExt};
use serde::Serialize;
use serde_json::{Map, Value};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

use crate::connect::{next_text, send_text, websocket};
use crate::{Ended, Error, Options, Websocket};

/// How long [`Client::join_patiently`] waits before asking again.
const JOIN_RETRY_PAUSE: Duration = Duration::from_millis(100);
/// Unread frames a timeout error names; the rest only counted.
const UNREAD_NAMED: usize = 8;
/// Characters of an invalid frame an error quotes.
const QUOTED_CHARS: usize = 80;

/// A Phoenix V2 client over one websocket.
///
/// Frames that arrive while it waits for something else are kept, in
/// order, for [`Client::next_frame`] and later waits. Reads are
/// cancel-safe: a wait dropped half-way (in a `select!` or a timeout)
/// loses no frame.
pub struct Client {
    ws: Websocket,
    wait: Duration,
    next_ref: u64,
    /// The join ref of each joined topic; pushes on a topic carry it.
    joins: HashMap<String, String>,
    unread: VecDeque<Frame>,
}

/// A `phx_reply`: its status (`ok`, `error`) and response.
#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    pub status: String,
    /// Always a JSON object.
    pub response: Value,
}

impl Reply {
    /// The reply `frame` carries, if it is a well-formed `phx_reply`.
    pub fn of(frame: &Frame) -> Option<Self> {
        let (status, response) = frame.as_reply()?;
        Some(Self {
            status: status.to_string(),
            response: Value::Object(response.clone()),
        })
    }

    pub fn is_ok(&self) -> bool {
        self.status == "ok"
    }

    /// The `reason` of an error reply, e.g. `rate_limited`.
    pub fn reason(&self) -> Option<&str> {
        self.response.get("reason").and_then(Value::as_str)
    }

    /// Why the server refused, for an error reply: its `reason`, or "no
    /// reason given".
    pub fn refusal(&self) -> Option<&str> {
        (!self.is_ok()).then(|| self.reason().unwrap_or("no reason given"))
    }

    /// Whether the server refused for a rate (the socket's or its
    /// address's), so that asking again later can succeed.
    pub fn is_rate_refusal(&self) -> bool {
        matches!(
            self.reason().and_then(|reason| reason.parse().ok()),
            Some(Reason::RateLimited | Reason::AddressRateLimited | Reason::RelayQuota)
        )
    }

    /// The response of an ok reply; a refusal of `event` on `topic`
    /// otherwise.
    pub fn into_ok(self, topic: &str, event: &str) -> Result<Value, Error> {
        if self.is_ok() {
            return Ok(self.response);
        }
        Err(Error::Refused {
            topic: topic.to_string(),
            event: event.to_string(),
            reply: self,
        })
    }
}

impl fmt::Display for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.status, self.response)
    }
}

/// The peer id a join was answered with.
pub fn peer_id(response: &Value) -> Result<String, Error> {
    response
        .get("peer_id")
        .and_then(Value::as_str)
        .map(str::to_string)
        .ok_or_else(|| Error::BadReply {
            what: "join reply (no peer_id)",
            frame: response.to_string(),
        })
}

impl Client {
    pub async fn connect(url: &str) -> Result<Self, Error> {
        Self::connect_with(url, Options::default()).await
    }

    /// [`Client::connect`] from `source` (see [`Options::source`]).
    pub async fn connect_from(url: &str, source: impl Into<IpAddr>) -> Result<Self, Error> {
        Self::connect_with(url, Options::default().source(source)).await
    }

    pub async fn connect_with(url: &str, options: Options) -> Result<Self, Error> {
        Ok(Self {
            ws: websocket(url, options).await?,
            wait: options.wait,
            next_ref: 0,
            joins: HashMap::new(),
            unread: VecDeque::new(),
        })
    }

    /// The refs of the next push on `topic` (its join ref, if joined, and
    /// a fresh message ref), for a caller that writes the frame's text
    /// itself, e.g. to size it to the byte.
    pub fn next_refs(&mut self, topic: &str) -> (Option<String>, String) {
        (self.joins.get(topic).cloned(), self.fresh_ref())
    }

    fn fresh_ref(&mut self) -> String {
        self.next_ref += 1;
        self.next_ref.to_string()
    }

    pub async fn send(&mut self, frame: &Frame) -> Result<(), Error> {
        self.send_text(frame.encode()).await
    }

    /// Sends `text` as it is: it need not be a frame at all.
    pub async fn send_text(&mut self, text: impl Into<String>) -> Result<(), Error> {
        send_text(&mut self.ws, text).await
    }

    /// Sends any websocket message: binary, ping, close.
    pub async fn send_message(&mut self, message: Message) -> Result<(), Error> {
        self.ws.send(message).await.map_err(Error::Send)
    }

    /// Pushes `event` on `topic` without waiting; returns the push's ref.
    pub async fn push(
        &mut self,
        topic: &str,
        event: &str,
        payload: impl Serialize,
    ) -> Result<String, Error> {
        let (join_ref, msg_ref) = self.next_refs(topic);
        let frame = Frame::with_payload(join_ref, Some(msg_ref.clone()), topic, event, &payload);
        self.send(&frame).await?;
        Ok(msg_ref)
    }

    /// Pushes and waits for the reply, whatever its status.
    pub async fn call(
        &mut self,
        topic: &str,
        event: &str,
        payload: impl Serialize,
    ) -> Result<Reply, Error> {
        let msg_ref = self.push(topic, event, payload).await?;
        self.reply(&msg_ref).await
    }

    /// The reply to the push of `msg_ref`.
    pub async fn reply(&mut self, msg_ref: &str) -> Result<Reply, Error> {
        let frame = self
            .expect_for(format!("reply to ref {msg_ref}"), |f| {
                f.event == event::REPLY && f.msg_ref.as_deref() == Some(msg_ref)
            })
            .await?;
        Reply::of(&frame).ok_or_else(|| Error::BadReply {
            what: "reply",
            frame: frame.encode(),
        })
    }

    /// Joins `topic`; the ok response, or [`Error::Refused`] (and the
    /// topic is not joined).
    pub async fn join(&mut self, topic: &str) -> Result<Value, Error> {
        let join_ref = self.fresh_ref();
        let join = Frame::new(
            Some(join_ref.clone()),
            Some(join_ref.clone()),
            topic,
            event::JOIN,
            Map::new(),
        );
        self.send(&join).await?;
        let response = self.reply(&join_ref).await?.into_ok(topic, event::JOIN)?;
        self.joins.insert(topic.to_string(), join_ref);
        Ok(response)
    }

    /// Joins `topic`; the peer id the server assigned.
    pub async fn join_for_id(&mut self, topic: &str) -> Result<String, Error> {
        peer_id(&self.join(topic).await?)
    }

    /// Joins `topic`, asking again while the server refuses for a rate
    /// until `deadline`: with the server's per-address limits in force,
    /// clients that share an address and join at once are paced, not
    /// failed.
    pub async fn join_patiently(&mut self, topic: &str, deadline: Instant) -> Result<Value, Error> {
        loop {
            match self.join(topic).await {
                Err(Error::Refused { reply, .. })
                    if reply.is_rate_refusal() && Instant::now() + JOIN_RETRY_PAUSE < deadline =>
                {
                    tokio::time::sleep(JOIN_RETRY_PAUSE).await;
                }
                joined => return joined,
            }
        }
    }

    /// Leaves `topic` and waits for the server's ok.
    pub async fn leave(&mut self, topic: &str) -> Result<(), Error> {
        let msg_ref = self.push(topic, event::LEAVE, Map::new()).await?;
        self.joins.remove(topic);
        self.reply(&msg_ref).await?.into_ok(topic, event::LEAVE)?;
        Ok(())
    }

    /// One heartbeat round trip.
    pub async fn heartbeat(&mut self) -> Result<(), Error> {
        let msg_ref = self.fresh_ref();
        self.send(&Frame::heartbeat(msg_ref.clone())).await?;
        self.reply(&msg_ref)
            .await?
            .into_ok(PHOENIX_TOPIC, event::HEARTBEAT)?;
        Ok(())
    }

    /// The next frame, kept ones first. No time limit: wrap it in one.
    pub async fn next_frame(&mut self) -> Result<Frame, Error> {
        match self.unread.pop_front() {
            Some(frame) => Ok(frame),
            None => self.read_frame().await,
        }
    }

    /// The first frame that is `wanted`, within the client's wait.
    pub async fn expect(&mut self, wanted: impl Fn(&Frame) -> bool) -> Result<Frame, Error> {
        self.expect_for("matching frame".into(), wanted).await
    }

    /// The first push of `event` on `topic`, within the client's wait.
    pub async fn expect_push(&mut self, topic: &str, event: &str) -> Result<Frame, Error> {
        self.expect_for(format!("{event} on {topic}"), |f| {
            f.topic == topic && f.event == event
        })
        .await
    }

    /// The first frame that is `wanted`, or `None` after `wait`. Frames
    /// that came already are looked at even with a zero `wait`.
    pub async fn expect_within(
        &mut self,
        wait: Duration,
        wanted: impl Fn(&Frame) -> bool,
    ) -> Result<Option<Frame>, Error> {
        if let Some(i) = self.unread.iter().position(&wanted) {
            return Ok(self.unread.remove(i));
        }
        let deadline = Instant::now() + wait;
        loop {
            let Ok(frame) = tokio::time::timeout_at(deadline, self.read_frame()).await else {
                return Ok(None);
            };
            let frame = frame?;
            if wanted(&frame) {
                return Ok(Some(frame));
            }
            self.unread.push_back(frame);
        }
    }

    async fn expect_for(
        &mut self,
        waited_for: String,
        wanted: impl Fn(&Frame) -> bool,
    ) -> Result<Frame, Error> {
        match self.expect_within(self.wait, wanted).await? {
            Some(frame) => Ok(frame),
            None => Err(self.timeout(waited_for)),
        }
    }

    fn timeout(&self, waited_for: String) -> Error {
        let mut unread: Vec<String> = self
            .unread
            .iter()
            .take(UNREAD_NAMED)
            .map(|f| format!("{} on {}", f.event, f.topic))
            .collect();
        if self.unread.len() > UNREAD_NAMED {
            unread.push(format!("{} more", self.unread.len() - UNREAD_NAMED));
        }
        Error::Timeout {
            waited_for,
            wait: self.wait,
            unread,
        }
    }

    async fn read_frame(&mut self) -> Result<Frame, Error> {
        let text = next_text(&mut self.ws).await?;
        Frame::parse(&text).map_err(|error| Error::BadFrame {
            text: text.chars().take(QUOTED_CHARS).collect(),
            error,
        })
    }

    /// Reads, dropping whatever comes, until the server ends the
    /// connection, within the client's wait.
    pub async fn ended(&mut self) -> Result<Ended, Error> {
        let read_to_end = async {
            loop {
                match self.ws.next().await {
                    Some(Ok(Message::Close(frame))) => return Ended::closed(frame),
                    Some(Ok(_)) => {}
                    None | Some(Err(_)) => return Ended::Dropped,
                }
            }
        };
        match tokio::time::timeout(self.wait, read_to_end).await {
            Ok(ended) => Ok(ended),
            Err(_) => Err(self.timeout("end of the connection".into())),
        }
    }

    /// Closes as a browser does: a close frame, then reading until the
    /// server ends the connection; how it did.
    pub async fn close(mut self) -> Result<Ended, Error> {
        // A server that closed first cannot take our close frame; how it
        // ended the connection is still what `ended` reads.
        let _ = self.ws.close(None).await;
        self.ended().await
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use serde_json::json;
    use tokio::net::TcpListener;
    use tokio_tungstenite::tungstenite::protocol::CloseFrame;
    use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

    use super::*;

    /// A one-connection server: answers each frame the client sends with
    /// what `answer` returns, then closes with 1000 `bye`.
    async fn server(answer: fn(Frame) -> Vec<Frame>, frames: usize) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            let mut ws = tokio_tungstenite::accept_async(stream).await.unwrap();
            for _ in 0..frames {
                let Some(Ok(Message::Text(text))) = ws.next().await else {
                    return;
                };
                for frame in answer(Frame::parse(&text).unwrap()) {
                    ws.send(Message::text(frame.encode())).await.unwrap();
                }
            }
            let bye = CloseFrame {
                code: CloseCode::Normal,
                reason: "bye".into(),
            };
            let _ = ws.close(Some(bye)).await;
            while ws.next().await.is_some() {}
        });
        addr
    }

    fn count(topic: &str) -> Frame {
        let payload = json!({"count": 1, "waiting": 0});
        Frame::with_payload(None, None, topic, event::VISITORS_COUNT, &payload)
    }

    #[tokio::test]
    async fn pushes_that_come_before_a_reply_are_kept() {
        let addr = server(
            |frame| vec![count(&frame.topic), frame.reply_ok(&json!({}))],
            2,
        )
        .await;
        let mut client = Client::connect(&crate::websocket_url(addr)).await.unwrap();
        client.join("have:x").await.unwrap();
        let push_ref = client.push("have:x", "signal", json!({})).await.unwrap();
        let reply = client.reply(&push_ref).await.unwrap();
        assert!(reply.is_ok());
        let counts = [
            client.expect_push("have:x", event::VISITORS_COUNT).await,
            client.next_frame().await,
        ];
        for frame in counts {
            assert_eq!(frame.unwrap().event, event::VISITORS_COUNT);
        }
        assert_eq!(
            client.ended().await.unwrap(),
            Ended::Closed(Some((1000, "bye".into())))
        );
    }

    #[tokio::test]
    async fn refusals_are_errors_and_leave_the_topic_unjoined() {
        let addr = server(|frame| vec![frame.reply_error("rate_limited")], 2).await;
        let mut client = Client::connect(&crate::websocket_url(addr)).await.unwrap();
        match client.join("want:x").await {
            Err(Error::Refused { reply, .. }) => assert!(reply.is_rate_refusal()),
            other => panic!("expected a refusal, got {other:?}"),
        }
        assert_eq!(client.next_refs("want:x").0, None);
        let deadline = Instant::now();
        assert!(matches!(
            client.join_patiently("want:x", deadline).await,
            Err(Error::Refused { .. })
        ));
    }

    #[tokio::test]
    async fn a_wait_that_runs_out_names_what_came_instead() {
        let addr = server(|frame| vec![count(&frame.topic)], 2).await;
        let options = Options::default().wait(Duration::from_millis(200));
        let url = crate::websocket_url(addr);
        let mut client = Client::connect_with(&url, options).await.unwrap();
        match client.call("have:x", "content", json!({})).await {
            Err(Error::Timeout { unread, .. }) => {
                assert_eq!(unread, vec!["visitors_count on have:x".to_string()]);
            }
            other => panic!("expected a timeout, got {other:?}"),
        }
    }
}
