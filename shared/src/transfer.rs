//! Moving one page over a data channel: a JSON header `{"hash", "size"}`,
//! then binary chunks, each a 4-byte big-endian sequence number and data.
//! The transfer is complete when `size` bytes have arrived and hash to
//! `hash`; the receiver rejects anything else with a typed error. It
//! hashes each chunk as it arrives, so the last chunk costs no more than
//! the others: no pass over the whole page at the end.

use serde::{Deserialize, Serialize};

use crate::hash::PageHash;
use crate::page::{Page, PageBuilder};

/// Bytes of sequence number in front of every chunk.
pub const CHUNK_HEADER_LEN: usize = 4;

/// The largest message we send on a data channel: 64 KiB. Larger messages
/// are not faster on loopback and Chromium caps at 256 KiB; smaller ones
/// collapse webrtc-rs throughput (docs/webrtc-facts.md).
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024;

/// The message size an SDP without `a=max-message-size` allows (RFC 8841).
const SDP_DEFAULT_MAX_MESSAGE: usize = 64 * 1024;

/// The first message of a transfer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TransferHeader {
    pub hash: PageHash,
    pub size: usize,
}

/// The message size to send to a remote, from its SDP's
/// `a=max-message-size` (0 there means "no limit").
pub fn message_size_for(remote_sdp: &str) -> usize {
    let advertised = remote_sdp
        .lines()
        .find_map(|line| line.trim().strip_prefix("a=max-message-size:"))
        .and_then(|value| value.trim().parse::<usize>().ok())
        .unwrap_or(SDP_DEFAULT_MAX_MESSAGE);
    match advertised {
        0 => MAX_MESSAGE_BYTES,
        n => n.clamp(CHUNK_HEADER_LEN + 1, MAX_MESSAGE_BYTES),
    }
}

/// Splits a page into the messages of one transfer.
#[derive(Debug, Clone)]
pub struct TransferSender<'a> {
    page: &'a Page,
    data_per_chunk: usize,
}

impl<'a> TransferSender<'a> {
    /// `message_size` is the largest message the remote accepts, e.g. from
    /// [`message_size_for`].
    pub fn new(page: &'a Page, message_size: usize) -> Self {
        let data_per_chunk = message_size.max(CHUNK_HEADER_LEN + 1) - CHUNK_HEADER_LEN;
        Self {
            page,
            data_per_chunk,
        }
    }

    /// The header, as the text message to send first.
    pub fn header(&self) -> String {
        let header = TransferHeader {
            hash: self.page.hash(),
            size: self.page.len(),
        };
        serde_json::to_string(&header).unwrap_or_default()
    }

    /// The binary messages to send after the header, in order.
    pub fn chunks(&self) -> impl Iterator<Item = Vec<u8>> + 'a {
        self.page
            .bytes()
            .chunks(self.data_per_chunk)
            .zip(0u32..)
            .map(|(data, seq)| framed(seq, data))
    }

    /// The message [`TransferSender::chunks`] yields at `seq`, or `None`
    /// past the last: a sender that makes each chunk only once the channel
    /// has room holds no copy of the page.
    pub fn chunk(&self, seq: u32) -> Option<Vec<u8>> {
        let start = usize::try_from(seq)
            .ok()?
            .checked_mul(self.data_per_chunk)?;
        let rest = self
            .page
            .bytes()
            .get(start..)
            .filter(|rest| !rest.is_empty())?;
        Some(framed(seq, &rest[..rest.len().min(self.data_per_chunk)]))
    }
}

fn framed(seq: u32, data: &[u8]) -> Vec<u8> {
    let mut message = Vec::with_capacity(CHUNK_HEADER_LEN + data.len());
    message.extend_from_slice(&seq.to_be_bytes());
    message.extend_from_slice(data);
    message
}

/// What went wrong receiving a page. Every variant means: this host's
/// transfer is worthless, ask another.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransferError {
    #[error("the header is not {{\"hash\", \"size\"}} JSON: {0}")]
    BadHeader(String),
    #[error("a second header arrived mid-transfer")]
    DuplicateHeader,
    #[error("the host offers page {offered}, not the one asked for")]
    WrongPage { offered: PageHash },
    #[error("the page is {size} bytes, over the {limit}-byte limit")]
    Oversize { size: usize, limit: usize },
    #[error("a chunk arrived before the header")]
    ChunkBeforeHeader,
    #[error("a chunk is shorter than its sequence number")]
    RuntChunk,
    #[error("chunk {got} arrived where chunk {expected} was due")]
    OutOfOrder { expected: u32, got: u32 },
    #[error("more bytes arrived than the {size} the header announced")]
    TooLong { size: usize },
    #[error("a message arrived after the transfer completed")]
    AfterComplete,
    #[error("the bytes do not hash to the page's address")]
    HashMismatch,
}

/// Where a transfer stands after a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Received {
    /// More to come.
    Partial { received: usize, size: usize },
    /// Every byte arrived and they hash to the address.
    Complete(Page),
}

/// Reassembles and verifies one page from a host.
#[derive(Debug)]
pub struct TransferReceiver {
    expected: PageHash,
    limit: usize,
    state: ReceiveState,
}

#[derive(Debug)]
enum ReceiveState {
    AwaitingHeader,
    Receiving {
        size: usize,
        next_seq: u32,
        page: PageBuilder,
    },
    Done,
}

impl TransferReceiver {
    /// Receives the page `expected`, refusing pages over `limit` bytes.
    pub fn new(expected: PageHash, limit: usize) -> Self {
        Self {
            expected,
            limit,
            state: ReceiveState::AwaitingHeader,
        }
    }

    /// Bytes received so far and the announced size, once known.
    pub fn progress(&self) -> Option<(usize, usize)> {
        match &self.state {
            ReceiveState::Receiving { size, page, .. } => Some((page.len(), *size)),
            _ => None,
        }
    }

    /// A text message: the header.
    pub fn on_text(&mut self, text: &str) -> Result<Received, TransferError> {
        match self.state {
            ReceiveState::AwaitingHeader => {}
            ReceiveState::Receiving { .. } => return Err(TransferError::DuplicateHeader),
            ReceiveState::Done => return Err(TransferError::AfterComplete),
        }
        let header: TransferHeader =
            serde_json::from_str(text).map_err(|e| TransferError::BadHeader(e.to_string()))?;
        if header.hash != self.expected {
            return Err(TransferError::WrongPage {
                offered: header.hash,
            });
        }
        if header.size > self.limit {
            return Err(TransferError::Oversize {
                size: header.size,
                limit: self.limit,
            });
        }
        self.state = ReceiveState::Receiving {
            size: header.size,
            next_seq: 0,
            page: PageBuilder::with_capacity(header.size),
        };
        self.finish_if_complete()
    }

    /// A binary message: the next chunk.
    pub fn on_binary(&mut self, message: &[u8]) -> Result<Received, TransferError> {
        let ReceiveState::Receiving {
            size,
            next_seq,
            page,
        } = &mut self.state
        else {
            return Err(match self.state {
                ReceiveState::Done => TransferError::AfterComplete,
                _ => TransferError::ChunkBeforeHeader,
            });
        };
        let (seq, data) = message
            .split_first_chunk::<CHUNK_HEADER_LEN>()
            .ok_or(TransferError::RuntChunk)?;
        let seq = u32::from_be_bytes(*seq);
        if seq != *next_seq {
            return Err(TransferError::OutOfOrder {
                expected: *next_seq,
                got: seq,
            });
        }
        if page.len() + data.len() > *size {
            return Err(TransferError::TooLong { size: *size });
        }
        page.extend(data);
        *next_seq = next_seq.wrapping_add(1);
        self.finish_if_complete()
    }

    fn finish_if_complete(&mut self) -> Result<Received, TransferError> {
        let ReceiveState::Receiving { size, page, .. } = &mut self.state else {
            return Err(TransferError::AfterComplete);
        };
        if page.len() < *size {
            return Ok(Received::Partial {
                received: page.len(),
                size: *size,
            });
        }
        let page = std::mem::take(page).finish();
        self.state = ReceiveState::Done;
        if page.hash() == self.expected {
            Ok(Received::Complete(page))
        } else {
            Err(TransferError::HashMismatch)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hash::bytes_hashed;

    fn transfer(page: &[u8], message_size: usize) -> Result<Page, TransferError> {
        let page = Page::new(page.to_vec());
        let sender = TransferSender::new(&page, message_size);
        let mut receiver = TransferReceiver::new(page.hash(), 1 << 20);
        let mut last = receiver.on_text(&sender.header())?;
        for chunk in sender.chunks() {
            assert!(chunk.len() <= message_size);
            last = receiver.on_binary(&chunk)?;
        }
        match last {
            Received::Complete(page) => Ok(page),
            Received::Partial { .. } => panic!("transfer ended partial"),
        }
    }

    #[test]
    fn round_trips_pages_of_every_shape() {
        let big: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        for page in [&b""[..], b"x", "ünïcödé 👋🏽".as_bytes(), &big] {
            for size in [5, 16 * 1024, MAX_MESSAGE_BYTES] {
                assert_eq!(transfer(page, size).as_deref(), Ok(page));
                assert_eq!(
                    transfer(page, size).map(|p| p.hash()),
                    Ok(PageHash::of(page))
                );
            }
        }
    }

    #[test]
    fn chunks_one_at_a_time_are_the_chunks() {
        let page = Page::new((0..1000u32).map(|i| (i % 7) as u8).collect());
        for size in [5, 100, 1004, 4096] {
            let sender = TransferSender::new(&page, size);
            let one_by_one: Vec<Vec<u8>> = (0..).map_while(|seq| sender.chunk(seq)).collect();
            assert_eq!(one_by_one, sender.chunks().collect::<Vec<_>>());
        }
        let empty = Page::new(Vec::new());
        assert_eq!(TransferSender::new(&empty, 100).chunk(0), None);
        assert_eq!(TransferSender::new(&page, 5).chunk(u32::MAX), None);
    }

    #[test]
    fn empty_page_completes_on_its_header() {
        let empty = Page::new(Vec::new());
        let sender = TransferSender::new(&empty, MAX_MESSAGE_BYTES);
        assert_eq!(sender.chunks().count(), 0);
        let mut receiver = TransferReceiver::new(empty.hash(), 10);
        assert_eq!(
            receiver.on_text(&sender.header()),
            Ok(Received::Complete(empty))
        );
    }

    #[test]
    fn rejects_every_kind_of_bad_transfer() {
        let page = Page::new(b"hello world, this is a page".to_vec());
        let hash = page.hash();
        let sender = TransferSender::new(&page, 10);
        let chunks: Vec<Vec<u8>> = sender.chunks().collect();
        let fresh = || TransferReceiver::new(hash, 1000);

        assert!(matches!(
            fresh().on_text("nope"),
            Err(TransferError::BadHeader(_))
        ));
        let other = TransferSender::new(&Page::new(b"other".to_vec()), 10).header();
        assert_eq!(
            fresh().on_text(&other),
            Err(TransferError::WrongPage {
                offered: PageHash::of(b"other")
            })
        );
        let mut small = TransferReceiver::new(hash, 5);
        assert_eq!(
            small.on_text(&sender.header()),
            Err(TransferError::Oversize {
                size: page.len(),
                limit: 5
            })
        );
        assert_eq!(
            fresh().on_binary(&chunks[0]),
            Err(TransferError::ChunkBeforeHeader)
        );

        let mut receiver = fresh();
        receiver.on_text(&sender.header()).unwrap();
        assert_eq!(
            receiver.on_text(&sender.header()),
            Err(TransferError::DuplicateHeader)
        );
        assert_eq!(receiver.on_binary(&[0, 0]), Err(TransferError::RuntChunk));
        assert_eq!(
            receiver.on_binary(&chunks[1]),
            Err(TransferError::OutOfOrder {
                expected: 0,
                got: 1
            })
        );

        // A header that lies about the size: more bytes than announced.
        let mut receiver = fresh();
        let short = format!(r#"{{"hash":"{hash}","size":3}}"#);
        receiver.on_text(&short).unwrap();
        assert_eq!(
            receiver.on_binary(&chunks[0]),
            Err(TransferError::TooLong { size: 3 })
        );

        // Right size, wrong bytes.
        let mut receiver = fresh();
        receiver.on_text(&sender.header()).unwrap();
        let mut forged = chunks.clone();
        forged[0][CHUNK_HEADER_LEN] ^= 1;
        let mut result = Ok(Received::Partial {
            received: 0,
            size: 0,
        });
        for chunk in &forged {
            result = receiver.on_binary(chunk);
        }
        assert_eq!(result, Err(TransferError::HashMismatch));
        assert_eq!(
            receiver.on_binary(&chunks[0]),
            Err(TransferError::AfterComplete)
        );
    }

    /// A page of `chunks` full chunks of `message_size`, its sender's
    /// messages, and a receiver for it.
    fn stream(
        chunks: usize,
        message_size: usize,
    ) -> (Page, String, Vec<Vec<u8>>, TransferReceiver) {
        let data = message_size - CHUNK_HEADER_LEN;
        let page = Page::new((0..chunks * data).map(|i| (i % 249) as u8).collect());
        let sender = TransferSender::new(&page, message_size);
        let receiver = TransferReceiver::new(page.hash(), 1 << 20);
        (
            page.clone(),
            sender.header(),
            sender.chunks().collect(),
            receiver,
        )
    }

    #[test]
    fn verifies_chunk_by_chunk_hashing_each_byte_once() {
        let (page, header, chunks, mut receiver) = stream(8, 1024);
        let before = bytes_hashed();
        receiver.on_text(&header).unwrap();
        for (n, chunk) in chunks.iter().enumerate() {
            let outcome = receiver.on_binary(chunk).unwrap();
            // Hashed as it arrived, not saved up for the end.
            assert_eq!(bytes_hashed() - before, (n + 1) * 1020);
            if n + 1 < chunks.len() {
                assert!(matches!(outcome, Received::Partial { .. }));
            } else {
                assert_eq!(outcome, Received::Complete(page.clone()));
            }
        }
        assert_eq!(
            bytes_hashed() - before,
            page.len(),
            "every byte hashed once"
        );
    }

    #[test]
    fn a_corrupted_chunk_anywhere_fails_the_stream() {
        for corrupt in [0, 3, 7] {
            let (_, header, mut chunks, mut receiver) = stream(8, 1024);
            chunks[corrupt][CHUNK_HEADER_LEN + 100] ^= 0x20;
            receiver.on_text(&header).unwrap();
            let (last, rest) = chunks.split_last().unwrap();
            for chunk in rest {
                assert!(matches!(
                    receiver.on_binary(chunk),
                    Ok(Received::Partial { .. })
                ));
            }
            assert_eq!(receiver.on_binary(last), Err(TransferError::HashMismatch));
        }
    }

    #[test]
    fn progress_counts_bytes() {
        let page = Page::new(vec![7u8; 100]);
        let sender = TransferSender::new(&page, 44);
        let mut receiver = TransferReceiver::new(page.hash(), 1000);
        receiver.on_text(&sender.header()).unwrap();
        let first = sender.chunks().next().unwrap();
        assert_eq!(
            receiver.on_binary(&first),
            Ok(Received::Partial {
                received: 40,
                size: 100
            })
        );
        assert_eq!(receiver.progress(), Some((40, 100)));
    }

    #[test]
    fn message_size_follows_the_remote_sdp() {
        assert_eq!(message_size_for("v=0\r\n"), 64 * 1024);
        assert_eq!(
            message_size_for("a=max-message-size:262144\r\n"),
            MAX_MESSAGE_BYTES
        );
        assert_eq!(message_size_for("a=max-message-size:16384\r\n"), 16384);
        assert_eq!(
            message_size_for("a=max-message-size:0\r\n"),
            MAX_MESSAGE_BYTES
        );
    }
}
