//! Fuzz target `payloads`: arbitrary bytes decoded as every typed payload
//! of `ephemeral_shared::protocol`, and as the string forms of topics, page
//! hashes, peer ids, reasons and ICE servers.
//!
//! Checks: no decode panics; whatever decodes re-encodes and decodes to an
//! equal value; string forms that parse print back exactly (they are
//! canonical: lowercase hex, fixed prefixes, fixed names).

#![no_main]

use std::fmt::Debug;

use ephemeral_shared::protocol::{
    Content, ContentPart, ContentRequest, ContentUnavailable, ContentUnavailableFrom, HostRequest,
    IceServer, JoinReply, Reason, RequestRouted, SignalBody, SignalFrom, SignalTo, VisitorsCount,
};
use ephemeral_shared::{Frame, PageHash, PeerId, Topic};
use libfuzzer_sys::fuzz_target;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

fuzz_target!(|data: &[u8]| {
    // The server decodes payloads from a parsed frame (`payload_as`, i.e.
    // from a `Value`), clients decode some straight from text; the two
    // paths differ (duplicate keys, for one), so both are fuzzed.
    let frame = match serde_json::from_slice::<Value>(data) {
        Ok(Value::Object(map)) => Some(Frame::new(None, None, "t", "e", map)),
        _ => None,
    };
    let frame = frame.as_ref();
    decode::<JoinReply>(data, frame);
    decode::<ContentRequest>(data, frame);
    decode::<HostRequest>(data, frame);
    decode::<Content>(data, frame);
    decode::<ContentPart<'static>>(data, frame);
    decode::<ContentUnavailable>(data, frame);
    decode::<ContentUnavailableFrom>(data, frame);
    decode::<VisitorsCount>(data, frame);
    decode::<SignalTo>(data, frame);
    decode::<SignalFrom>(data, frame);
    decode::<SignalBody>(data, frame);
    decode::<RequestRouted>(data, frame);
    decode::<IceServer>(data, frame);
    decode::<PageHash>(data, None);
    decode::<PeerId>(data, None);

    if let Ok(text) = std::str::from_utf8(data) {
        strings(text);
    }
});

/// Decodes `data` as `T` from text and, when it is an object, through a
/// frame; each success must survive encode → decode unchanged.
fn decode<T>(data: &[u8], frame: Option<&Frame>)
where
    T: Serialize + DeserializeOwned + PartialEq + Debug,
{
    if let Ok(value) = serde_json::from_slice::<T>(data) {
        assert_round_trips(&value);
    }
    if let Some(Ok(value)) = frame.map(Frame::payload_as::<T>) {
        assert_round_trips(&value);
        // What a peer sends is built with `Frame::with_payload`; the
        // receiver's `payload_as` must read back the same value.
        let sent = Frame::with_payload(None, None, "t", "e", &value);
        assert_eq!(sent.payload_as::<T>().as_ref(), Ok(&value));
    }
}

fn assert_round_trips<T>(value: &T)
where
    T: Serialize + DeserializeOwned + PartialEq + Debug,
{
    let text = serde_json::to_string(value).expect("a decoded payload encodes");
    match serde_json::from_str::<T>(&text) {
        Ok(again) => assert_eq!(&again, value, "changed by encode → decode: {text}"),
        Err(error) => panic!("{value:?} encodes to {text}, which does not decode: {error}"),
    }
}

/// The string forms: each one that parses is canonical, so it prints back
/// as the very same text.
fn strings(text: &str) {
    if let Ok(hash) = text.parse::<PageHash>() {
        assert_eq!(hash.to_string(), text);
    }
    if let Ok(topic) = text.parse::<Topic>() {
        assert_eq!(topic.to_string(), text);
        assert_eq!(topic.opposite().opposite(), topic);
    }
    if let Ok(peer) = text.parse::<PeerId>() {
        assert_eq!(peer.to_string(), text);
    }
    if let Ok(reason) = text.parse::<Reason>() {
        assert_eq!(reason.as_str(), text);
        assert!(Reason::ALL.contains(&reason));
    }
    // Infallible by type; the shells hand it whatever the user typed.
    let Ok(ice) = text.parse::<IceServer>();
    assert_eq!(ice.urls.len(), 1);
}
