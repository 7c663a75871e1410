//! Fuzz target `frame`: `Frame::parse` on arbitrary UTF-8 text, the first
//! thing the server does with every websocket message.
//!
//! Checks: parsing never panics; an error's `code()` is a reason the server
//! and clients know; a parsed frame encodes to text that parses back to an
//! equal frame (floats to within serde_json's parsing precision); replies
//! built from it encode and parse back too.

#![no_main]

use ephemeral_shared::Frame;
use ephemeral_shared::protocol::Reason;
use libfuzzer_sys::fuzz_target;
use serde_json::{Map, Value};

fuzz_target!(|data: &[u8]| {
    // The server refuses non-UTF-8 text frames before parsing
    // (`invalid_utf8`), so only UTF-8 ever reaches `Frame::parse`.
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // A text that is not a frame has its `Reason` by construction
    // (`FrameError::reason`); only frames have more to check.
    let Ok(frame) = Frame::parse(text) else {
        return;
    };
    assert_round_trips(&frame);

    let reply = frame.reply_error_detail(Reason::BadPayload.as_str(), text);
    assert_round_trips(&reply);
    let (status, response) = reply.as_reply().expect("a reply reads as a reply");
    assert_eq!(status, "error");
    assert_eq!(
        response.get("reason").and_then(|r| r.as_str()),
        Some(Reason::BadPayload.as_str())
    );
});

/// `encode` produces the V2 array `parse` reads, so any parsed frame must
/// survive the trip: refs, topic, event and the payload's structure,
/// strings, integers and booleans exactly; floating-point numbers to within
/// serde_json's parsing precision (see [`same_json`]).
fn assert_round_trips(frame: &Frame) {
    let encoded = frame.encode();
    let again = match Frame::parse(&encoded) {
        Ok(again) => again,
        Err(error) => panic!("encoded frame does not parse ({error}): {encoded}"),
    };
    let same = again.join_ref == frame.join_ref
        && again.msg_ref == frame.msg_ref
        && again.topic == frame.topic
        && again.event == frame.event
        && same_object(&again.payload, &frame.payload);
    assert!(
        same,
        "changed by encode → parse: {encoded}\nbefore: {frame:?}\nafter:  {again:?}"
    );
}

fn same_object(a: &Map<String, Value>, b: &Map<String, Value>) -> bool {
    a.len() == b.len()
        && a.iter()
            .all(|(key, value)| b.get(key).is_some_and(|other| same_json(value, other)))
}

/// Equality, except that floats may differ in their last bits: without
/// its `float_roundtrip` feature (off in this workspace, as everywhere
/// serde_json is used here), serde_json parses decimals with best-effort
/// precision, so printing the shortest form and parsing it again can move
/// a float by an ulp (`-9223372337203685444444444444444775808` does).
/// No Ephemeral payload carries a float; frames relay them untouched.
fn same_json(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) if x.is_f64() || y.is_f64() => {
            match (x.as_f64(), y.as_f64()) {
                (Some(x), Some(y)) => x == y || (x - y).abs() <= 1e-15 * x.abs().max(y.abs()),
                _ => false,
            }
        }
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(x, y)| same_json(x, y))
        }
        (Value::Object(x), Value::Object(y)) => same_object(x, y),
        _ => a == b,
    }
}
