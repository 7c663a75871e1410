//! Phoenix Channels V2 JSON frames: `[join_ref, ref, topic, event, payload]`.
//!
//! Parsing says exactly what is wrong with a frame, so a client author sees
//! their mistake in the error reply instead of a dropped connection.

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use crate::protocol::Reason;

/// Events of the Phoenix protocol itself.
pub mod event {
    pub const JOIN: &str = "phx_join";
    pub const LEAVE: &str = "phx_leave";
    pub const REPLY: &str = "phx_reply";
    pub const CLOSE: &str = "phx_close";
    pub const ERROR: &str = "phx_error";
    pub const HEARTBEAT: &str = "heartbeat";
    pub const CONTENT_REQUEST: &str = "content_request";
    pub const CONTENT: &str = "content";
    pub const CONTENT_UNAVAILABLE: &str = "content_unavailable";
    pub const VISITORS_COUNT: &str = "visitors_count";
    pub const SIGNAL: &str = "signal";
}

/// One Phoenix V2 message.
#[derive(Debug, Clone, PartialEq)]
pub struct Frame {
    /// The ref of the join this message belongs to; `None` on broadcasts.
    pub join_ref: Option<String>,
    /// The ref a reply answers; `None` on server pushes.
    pub msg_ref: Option<String>,
    pub topic: String,
    pub event: String,
    /// Always a JSON object.
    pub payload: Map<String, Value>,
}

/// Why a text is not a Phoenix V2 frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("frame is not valid JSON: {0}")]
    NotJson(String),
    #[error("frame must be a JSON array [join_ref, ref, topic, event, payload]")]
    NotArray,
    #[error("frame must have 5 elements [join_ref, ref, topic, event, payload], it has {0}")]
    WrongArity(usize),
    #[error("join_ref must be a string or null")]
    JoinRefNotString,
    #[error("ref must be a string or null")]
    RefNotString,
    #[error("topic must be a string")]
    TopicNotString,
    #[error("event must be a string")]
    EventNotString,
    #[error("payload must be a JSON object")]
    PayloadNotObject,
}

impl FrameError {
    /// The reason an error reply gives, and the metrics label.
    pub fn reason(&self) -> Reason {
        match self {
            FrameError::NotJson(_) => Reason::MalformedJson,
            FrameError::NotArray | FrameError::WrongArity(_) => Reason::WrongArity,
            FrameError::JoinRefNotString
            | FrameError::RefNotString
            | FrameError::TopicNotString
            | FrameError::EventNotString
            | FrameError::PayloadNotObject => Reason::MalformedFrame,
        }
    }
}

/// Why a frame's payload is not the one its event needs.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad {event} payload: {reason}")]
pub struct PayloadError {
    pub event: String,
    pub reason: String,
}

impl Frame {
    pub fn new(
        join_ref: Option<String>,
        msg_ref: Option<String>,
        topic: impl Into<String>,
        event: impl Into<String>,
        payload: Map<String, Value>,
    ) -> Self {
        Self {
            join_ref,
            msg_ref,
            topic: topic.into(),
            event: event.into(),
            payload,
        }
    }

    /// A heartbeat: topic `phoenix`, no join ref, an empty payload. The
    /// server answers it with an ok reply carrying `msg_ref`.
    pub fn heartbeat(msg_ref: String) -> Self {
        Self::new(
            None,
            Some(msg_ref),
            crate::topic::PHOENIX_TOPIC,
            event::HEARTBEAT,
            Map::new(),
        )
    }

    /// A frame whose payload is a typed value that serializes to an object.
    pub fn with_payload<P: Serialize>(
        join_ref: Option<String>,
        msg_ref: Option<String>,
        topic: impl Into<String>,
        event: impl Into<String>,
        payload: &P,
    ) -> Self {
        Self::new(join_ref, msg_ref, topic, event, to_object(payload))
    }

    pub fn parse(text: &str) -> Result<Self, FrameError> {
        let value: Value =
            serde_json::from_str(text).map_err(|e| FrameError::NotJson(e.to_string()))?;
        let Value::Array(items) = value else {
            return Err(FrameError::NotArray);
        };
        let [join_ref, msg_ref, topic, event, payload] =
            <[Value; 5]>::try_from(items).map_err(|items| FrameError::WrongArity(items.len()))?;
        Ok(Self {
            join_ref: optional_string(join_ref).ok_or(FrameError::JoinRefNotString)?,
            msg_ref: optional_string(msg_ref).ok_or(FrameError::RefNotString)?,
            topic: match topic {
                Value::String(s) => s,
                _ => return Err(FrameError::TopicNotString),
            },
            event: match event {
                Value::String(s) => s,
                _ => return Err(FrameError::EventNotString),
            },
            payload: match payload {
                Value::Object(map) => map,
                _ => return Err(FrameError::PayloadNotObject),
            },
        })
    }

    pub fn encode(&self) -> String {
        let array = (
            &self.join_ref,
            &self.msg_ref,
            &self.topic,
            &self.event,
            &self.payload,
        );
        // Strings, options and a map of JSON values always serialize.
        serde_json::to_string(&array).unwrap_or_default()
    }

    /// The payload as the typed value its event needs.
    pub fn payload_as<T: DeserializeOwned>(&self) -> Result<T, PayloadError> {
        serde_json::from_value(Value::Object(self.payload.clone())).map_err(|e| PayloadError {
            event: self.event.clone(),
            reason: e.to_string(),
        })
    }

    /// An ok reply to this frame.
    pub fn reply_ok<P: Serialize>(&self, response: &P) -> Frame {
        self.reply("ok", to_object(response))
    }

    /// An error reply to this frame. `reason` is a stable code clients can
    /// match on.
    pub fn reply_error(&self, reason: &str) -> Frame {
        let mut response = Map::new();
        response.insert("reason".into(), Value::String(reason.into()));
        self.reply("error", response)
    }

    /// An error reply with a stable `reason` code and a `detail` a person
    /// can read.
    pub fn reply_error_detail(&self, reason: &str, detail: &str) -> Frame {
        let mut reply = self.reply_error(reason);
        if let Some(Value::Object(response)) = reply.payload.get_mut("response") {
            response.insert("detail".into(), Value::String(detail.into()));
        }
        reply
    }

    fn reply(&self, status: &str, response: Map<String, Value>) -> Frame {
        let mut payload = Map::new();
        payload.insert("status".into(), Value::String(status.into()));
        payload.insert("response".into(), Value::Object(response));
        Frame::new(
            self.join_ref.clone(),
            self.msg_ref.clone(),
            self.topic.clone(),
            event::REPLY,
            payload,
        )
    }

    /// If this is a `phx_reply`, its status and response.
    pub fn as_reply(&self) -> Option<(&str, &Map<String, Value>)> {
        if self.event != event::REPLY {
            return None;
        }
        let status = self.payload.get("status")?.as_str()?;
        let response = self.payload.get("response")?.as_object()?;
        Some((status, response))
    }
}

fn optional_string(value: Value) -> Option<Option<String>> {
    match value {
        Value::Null => Some(None),
        Value::String(s) => Some(Some(s)),
        _ => None,
    }
}

/// Serializes a payload struct into a JSON object; anything that is not an
/// object becomes `{"value": ...}` so a frame is always well formed.
pub fn to_object<P: Serialize>(payload: &P) -> Map<String, Value> {
    match serde_json::to_value(payload) {
        Ok(Value::Object(map)) => map,
        Ok(other) => {
            let mut map = Map::new();
            map.insert("value".into(), other);
            map
        }
        Err(_) => Map::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    #[test]
    fn parses_a_join() {
        let frame = Frame::parse(r#"["1","1","want:ab","phx_join",{}]"#).unwrap();
        assert_eq!(frame.join_ref.as_deref(), Some("1"));
        assert_eq!(frame.msg_ref.as_deref(), Some("1"));
        assert_eq!(frame.topic, "want:ab");
        assert_eq!(frame.event, "phx_join");
        assert!(frame.payload.is_empty());
    }

    #[test]
    fn says_what_is_wrong() {
        let cases = [
            ("{", Reason::MalformedJson),
            (r#"{"a":1}"#, Reason::WrongArity),
            (r#"["1","1","t","e"]"#, Reason::WrongArity),
            (r#"[1,"1","t","e",{}]"#, Reason::MalformedFrame),
            (r#"["1",2,"t","e",{}]"#, Reason::MalformedFrame),
            (r#"["1","1",3,"e",{}]"#, Reason::MalformedFrame),
            (r#"["1","1","t",null,{}]"#, Reason::MalformedFrame),
            (r#"["1","1","t","e",[]]"#, Reason::MalformedFrame),
        ];
        for (text, reason) in cases {
            let err = Frame::parse(text).unwrap_err();
            assert_eq!(err.reason(), reason, "{text}: {err}");
        }
        assert_eq!(
            Frame::parse(r#"["1","1","t","e"]"#),
            Err(FrameError::WrongArity(4))
        );
        assert_eq!(
            Frame::parse(r#"["1","1","t","e",7]"#),
            Err(FrameError::PayloadNotObject)
        );
    }

    #[test]
    fn heartbeats_are_what_phoenix_clients_send() {
        assert_eq!(
            Frame::heartbeat("9".into()).encode(),
            r#"[null,"9","phoenix","heartbeat",{}]"#
        );
    }

    #[test]
    fn replies_carry_the_refs_they_answer() {
        let frame = Frame::parse(r#"["3","7","phoenix","heartbeat",{}]"#).unwrap();
        let reply = frame.reply_error("nope");
        assert_eq!(
            reply.encode(),
            r#"["3","7","phoenix","phx_reply",{"response":{"reason":"nope"},"status":"error"}]"#
        );
        let (status, response) = reply.as_reply().unwrap();
        assert_eq!(status, "error");
        assert_eq!(response.get("reason"), Some(&json!("nope")));
    }

    fn arb_frame() -> impl Strategy<Value = Frame> {
        let opt = proptest::option::of(".{0,8}");
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            ".{0,12}".prop_map(Value::String),
        ];
        let payload = proptest::collection::btree_map(".{0,6}", leaf, 0..4)
            .prop_map(|m| m.into_iter().collect::<Map<String, Value>>());
        (opt.clone(), opt, ".{0,20}", ".{0,12}", payload).prop_map(
            |(join_ref, msg_ref, topic, event, payload)| Frame {
                join_ref,
                msg_ref,
                topic,
                event,
                payload,
            },
        )
    }

    proptest! {
        #[test]
        fn encoded_frames_parse_back_equal(frame in arb_frame()) {
            prop_assert_eq!(Frame::parse(&frame.encode()), Ok(frame));
        }

        #[test]
        fn arbitrary_text_never_panics(text in ".{0,64}") {
            let _ = Frame::parse(&text);
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = Frame::parse(&String::from_utf8_lossy(&bytes));
        }
    }
}
