//! What a flood socket sends: a mix of heartbeats, malformed JSON, binary
//! frames, wrong-arity arrays, joins and leaves, round and round.

use ephemeral_shared::{PageHash, Topic};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::{Bytes, Message};

/// The mix one flood socket sends, round and round; texts are built once
/// and cloned cheaply (they are reference-counted bytes).
pub(super) struct FloodMessages {
    mix: Vec<Message>,
    /// Where this socket starts in the mix, so that the sockets do not all
    /// send the same kind at the same moment.
    offset: usize,
}

impl FloodMessages {
    pub(super) fn new(index: usize) -> Self {
        let page = PageHash::of(format!("flood page {index}").as_bytes());
        let topic = Topic::want(page).to_string();
        let text = |value: Value| Message::text(value.to_string());
        let mix = vec![
            text(json!([null, "1", "phoenix", "heartbeat", {}])),
            Message::text(r#"["1","2","phoenix","heartbeat",{"#),
            text(json!(["3", "3", topic, "phx_join", {}])),
            Message::Binary(Bytes::from_static(&[0xAB; 64])),
            text(json!(["4", "phoenix", "heartbeat"])),
            text(json!(["3", "5", topic, "phx_leave", {}])),
            text(json!(["6", "6", "nope:zzz", "phx_join", {}])),
        ];
        Self {
            offset: index % mix.len(),
            mix,
        }
    }

    pub(super) fn nth(&self, n: u64) -> Message {
        let at = (n as usize).wrapping_add(self.offset) % self.mix.len();
        self.mix[at].clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mix_cycles_from_each_sockets_offset() {
        let messages = FloodMessages::new(3);
        let kinds = messages.mix.len() as u64;
        assert_eq!(messages.nth(0), messages.nth(kinds));
        assert_ne!(messages.nth(0), FloodMessages::new(4).nth(0));
    }
}
