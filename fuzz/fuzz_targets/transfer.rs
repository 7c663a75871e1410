//! Fuzz target `transfer`: a `TransferReceiver` fed an arbitrary sequence
//! of data-channel messages — honest headers and chunks of a real page
//! mixed with lying headers, forged chunks and raw garbage, text and
//! binary.
//!
//! Checks: nothing panics; a completed page always hashes to the address
//! the receiver was made for, and is exactly the chunks it accepted; the
//! bytes held (and the size announced) never exceed the receiver's limit;
//! nothing is accepted after completion; and an honest transfer of a page
//! within the limit always completes with that page.

#![no_main]

use arbitrary::Arbitrary;
use ephemeral_shared::transfer::{
    CHUNK_HEADER_LEN, MAX_MESSAGE_BYTES, Received, TransferError, TransferReceiver, TransferSender,
    message_size_for,
};
use ephemeral_shared::{Page, PageHash};
use libfuzzer_sys::fuzz_target;

#[derive(Debug, Arbitrary)]
struct Input {
    /// The page the honest messages carry.
    page: Vec<u8>,
    /// Whether the receiver asks for `page` or for some other page; the
    /// latter can never legitimately complete.
    wants_page: bool,
    /// The receiver's limit; small, so the fuzzer reaches it.
    limit: u16,
    /// A remote SDP, to size the honest chunks the way the shells do.
    remote_sdp: String,
    messages: Vec<Message>,
}

#[derive(Debug, Arbitrary)]
enum Message {
    /// The header an honest sender sends for `page`.
    HonestHeader,
    /// A header naming the wanted page with any size: a lying host.
    SizedHeader(u32),
    /// Any text at all.
    Text(String),
    /// Every chunk of `page`, split as an honest sender would.
    HonestChunks { message_size: u16 },
    /// One chunk of `page` with a chosen sequence number: replays, skips.
    Chunk {
        seq: u32,
        index: u16,
        message_size: u16,
    },
    /// A well-framed chunk with arbitrary data.
    Forged { seq: u32, data: Vec<u8> },
    /// Any bytes at all, runts included.
    Binary(Vec<u8>),
}

fuzz_target!(|input: Input| {
    let page = Page::new(input.page.clone());
    let page_hash = page.hash();
    let expected = if input.wants_page {
        page_hash
    } else {
        PageHash::of(b"some other page")
    };
    let limit = usize::from(input.limit);

    let sdp_size = message_size_for(&input.remote_sdp);
    assert!((CHUNK_HEADER_LEN + 1..=MAX_MESSAGE_BYTES).contains(&sdp_size));

    let mut checked = Checked::new(expected, limit);
    for message in &input.messages {
        match message {
            Message::HonestHeader => {
                let header = TransferSender::new(&page, sdp_size).header();
                checked.text(&header);
            }
            Message::SizedHeader(size) => {
                checked.text(&format!(r#"{{"hash":"{expected}","size":{size}}}"#));
            }
            Message::Text(text) => checked.text(text),
            Message::HonestChunks { message_size } => {
                let sender = TransferSender::new(&page, usize::from(*message_size));
                for chunk in sender.chunks() {
                    checked.binary(&chunk);
                }
            }
            Message::Chunk {
                seq,
                index,
                message_size,
            } => {
                let sender = TransferSender::new(&page, usize::from(*message_size));
                if let Some(chunk) = sender.chunks().nth(usize::from(*index)) {
                    checked.binary(&framed(*seq, &chunk[CHUNK_HEADER_LEN..]));
                }
            }
            Message::Forged { seq, data } => checked.binary(&framed(*seq, data)),
            Message::Binary(bytes) => checked.binary(bytes),
        }
    }

    // Safety alone would pass a receiver that refuses everything: a fresh
    // one given an honest transfer must get the page when it is the one
    // wanted and fits.
    let mut honest = TransferReceiver::new(expected, limit);
    let sender = TransferSender::new(&page, sdp_size);
    let mut outcome = honest.on_text(&sender.header());
    for chunk in sender.chunks() {
        outcome = honest.on_binary(&chunk);
    }
    // Compared, not taken from `wants_page`: the "other" page may be the
    // fuzzer's page too.
    if expected == page_hash && input.page.len() <= limit {
        assert!(
            matches!(&outcome, Ok(Received::Complete(got)) if got.bytes() == input.page),
            "refused or changed an honest transfer: {outcome:?}"
        );
    } else {
        assert!(
            outcome.is_err(),
            "accepted a page it should not: {outcome:?}"
        );
    }
});

fn framed(seq: u32, data: &[u8]) -> Vec<u8> {
    let mut message = seq.to_be_bytes().to_vec();
    message.extend_from_slice(data);
    message
}

/// A receiver plus what it must have done, checked after every message.
struct Checked {
    receiver: TransferReceiver,
    expected: PageHash,
    limit: usize,
    /// The data of every chunk the receiver took since its header.
    taken: Vec<u8>,
    complete: bool,
}

impl Checked {
    fn new(expected: PageHash, limit: usize) -> Self {
        Self {
            receiver: TransferReceiver::new(expected, limit),
            expected,
            limit,
            taken: Vec::new(),
            complete: false,
        }
    }

    fn text(&mut self, text: &str) {
        let outcome = self.receiver.on_text(text);
        self.check(outcome);
    }

    fn binary(&mut self, message: &[u8]) {
        let before = self.receiver.progress().map(|(received, _)| received);
        let outcome = self.receiver.on_binary(message);
        // A chunk counts as taken when the receiver's bytes grew by it, or
        // when it completed the transfer (good bytes or bad).
        let grew = matches!(outcome, Ok(_) | Err(TransferError::HashMismatch));
        if grew {
            let data = message.get(CHUNK_HEADER_LEN..).unwrap_or_default();
            assert!(before.is_some(), "took a chunk with no transfer under way");
            self.taken.extend_from_slice(data);
        }
        self.check(outcome);
    }

    fn check(&mut self, outcome: Result<Received, TransferError>) {
        if self.complete {
            assert_eq!(outcome, Err(TransferError::AfterComplete));
            return;
        }
        match outcome {
            Ok(Received::Partial { received, size }) => {
                assert!(received < size, "partial at {received} of {size}");
                assert!(size <= self.limit, "announced {size} over {}", self.limit);
                assert_eq!(received, self.taken.len());
                assert_eq!(self.receiver.progress(), Some((received, size)));
            }
            Ok(Received::Complete(page)) => {
                assert_eq!(
                    PageHash::of(page.bytes()),
                    self.expected,
                    "accepted wrong bytes"
                );
                assert_eq!(page.hash(), self.expected);
                assert!(page.len() <= self.limit);
                assert_eq!(
                    page.bytes(),
                    self.taken,
                    "completed with bytes it was not sent"
                );
                self.complete = true;
            }
            // The transfer ended with bytes that do not hash right; nothing
            // more may be taken.
            Err(TransferError::HashMismatch) => self.complete = true,
            Err(_) => {}
        }
        if let Some((received, size)) = self.receiver.progress() {
            assert!(received <= size && size <= self.limit);
        }
        if self.receiver.progress().is_none() && !self.complete {
            // Before a header is accepted there is nowhere to put bytes.
            assert!(self.taken.is_empty());
        }
    }
}
