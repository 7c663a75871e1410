//! A relayed page on its way from the server to a visitor: the server cuts
//! the page it checked into `content` parts of at most [`PART_BYTES`], on
//! character boundaries since each part is a JSON string, and sends them
//! in order; the visitor puts them back together with [`RelayReceiver`],
//! which refuses parts that skip, repeat, overrun or change the size, and
//! hashes each part as it arrives. Parts exist so that a visitor can show
//! how far a relayed page has got: one message would arrive all at once.

use std::borrow::Cow;

use crate::page::{Page, PageBuilder};
use crate::protocol::ContentPart;

/// The most page bytes one part carries: 64 KiB, the data channel's
/// message size, so both paths report progress in steps of a like size.
pub const PART_BYTES: usize = 64 * 1024;

/// Parts a page of `size` bytes is cut into, at most: a cut moves back at
/// most 3 bytes to a character boundary.
pub fn parts_in(size: usize) -> usize {
    size.div_ceil(PART_BYTES - 3).max(1)
}

/// The parts the server sends for `page`, in order. An empty page is one
/// empty part, so that it still arrives.
pub fn parts(page: &str) -> impl Iterator<Item = ContentPart<'_>> {
    split(page, PART_BYTES)
}

/// `page` in parts of at most `max` bytes (at least 4: one character).
fn split(page: &str, max: usize) -> impl Iterator<Item = ContentPart<'_>> {
    let max = max.max(4);
    let size = page.len();
    let mut next = Some(0usize);
    std::iter::from_fn(move || {
        let offset = next?;
        let mut end = offset.saturating_add(max).min(size);
        while !page.is_char_boundary(end) {
            end -= 1;
        }
        next = (end < size).then_some(end);
        Some(ContentPart {
            content: Cow::Borrowed(&page[offset..end]),
            offset,
            size,
        })
    })
}

/// Why a relayed page's parts are refused. The server sends a page it has
/// checked, in order, so any of these means the relay itself is broken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RelayError {
    /// Larger than this visitor accepts; the fetch says so as it does for
    /// WebRTC.
    #[error("the page is {size} bytes, over the {limit}-byte limit")]
    Oversize { size: usize, limit: usize },
    #[error("a {size}-byte page is over the server's own relay limit of {max} bytes")]
    OverRelayLimit { size: usize, max: usize },
    #[error("a part starts at byte {got}, but {expected} bytes had arrived")]
    Gap { expected: usize, got: usize },
    #[error("a part starts at byte {got}, inside the {expected} bytes that had arrived")]
    Overlap { expected: usize, got: usize },
    #[error("a part says the page is {now} bytes, after earlier parts said {announced}")]
    SizeChanged { announced: usize, now: usize },
    #[error("a part ends at byte {end}, past the page's {size} bytes")]
    PastSize { end: usize, size: usize },
}

/// Where a relayed page stands after a part.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Relayed {
    Partial {
        received: usize,
        size: usize,
    },
    /// Every byte is in, hashed; whether they are the page asked for is
    /// the caller's to check against its address.
    Complete(Page),
}

/// The limits a relayed page must keep.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RelayLimits {
    /// The largest page this visitor accepts.
    pub max_page: usize,
    /// The server's relay limit, when its join reply said it.
    pub max_relay: Option<usize>,
}

/// Reassembles one relayed page at a time. The parts of a page follow one
/// another on the socket, so a page under way belongs to the socket: it
/// lasts across a fetch's requests and ends with the socket ([`reset`]).
///
/// [`reset`]: RelayReceiver::reset
#[derive(Debug, Default)]
pub struct RelayReceiver {
    under_way: Option<UnderWay>,
}

#[derive(Debug)]
struct UnderWay {
    size: usize,
    page: PageBuilder,
}

impl RelayReceiver {
    /// Bytes received and the page's size, while a page is under way.
    pub fn progress(&self) -> Option<(usize, usize)> {
        self.under_way.as_ref().map(|u| (u.page.len(), u.size))
    }

    /// Forgets a page under way: the socket it came on is gone.
    pub fn reset(&mut self) {
        self.under_way = None;
    }

    /// Takes the next part. An error ends the page under way.
    pub fn on_part(
        &mut self,
        part: &ContentPart,
        limits: RelayLimits,
    ) -> Result<Relayed, RelayError> {
        let outcome = self.take(part, limits);
        if !matches!(outcome, Ok(Relayed::Partial { .. })) {
            self.under_way = None;
        }
        outcome
    }

    fn take(&mut self, part: &ContentPart, limits: RelayLimits) -> Result<Relayed, RelayError> {
        let ContentPart {
            content,
            offset,
            size,
        } = part;
        let (offset, size) = (*offset, *size);
        let under_way = match &mut self.under_way {
            Some(under_way) => {
                if size != under_way.size {
                    return Err(RelayError::SizeChanged {
                        announced: under_way.size,
                        now: size,
                    });
                }
                under_way
            }
            None => {
                // Checked before anything is set aside for the page.
                if size > limits.max_page {
                    return Err(RelayError::Oversize {
                        size,
                        limit: limits.max_page,
                    });
                }
                if let Some(max) = limits.max_relay
                    && size > max
                {
                    return Err(RelayError::OverRelayLimit { size, max });
                }
                self.under_way.insert(UnderWay {
                    size,
                    page: PageBuilder::with_capacity(size),
                })
            }
        };
        let expected = under_way.page.len();
        if offset > expected {
            return Err(RelayError::Gap {
                expected,
                got: offset,
            });
        }
        if offset < expected {
            return Err(RelayError::Overlap {
                expected,
                got: offset,
            });
        }
        let end = offset.saturating_add(content.len());
        if end > size {
            return Err(RelayError::PastSize { end, size });
        }
        under_way.page.extend(content.as_bytes());
        if end < size {
            return Ok(Relayed::Partial {
                received: end,
                size,
            });
        }
        let page = std::mem::take(&mut under_way.page).finish();
        Ok(Relayed::Complete(page))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hash::{PageHash, bytes_hashed};

    const LIMITS: RelayLimits = RelayLimits {
        max_page: 1 << 20,
        max_relay: Some(1 << 20),
    };

    fn part(content: &str, offset: usize, size: usize) -> ContentPart<'static> {
        ContentPart {
            content: Cow::Owned(content.to_string()),
            offset,
            size,
        }
    }

    #[test]
    fn parts_cut_on_character_boundaries_and_cover_the_page() {
        // Two-, three- and four-byte characters, so cuts fall inside them.
        let page = "aé€😀".repeat(50);
        for max in [4, 5, 6, 7, 64] {
            let parts: Vec<_> = split(&page, max).collect();
            let mut offset = 0;
            for part in &parts {
                assert_eq!((part.offset, part.size), (offset, page.len()));
                assert!(!part.content.is_empty() && part.content.len() <= max);
                offset += part.content.len();
            }
            let joined: String = parts.iter().map(|p| p.content.as_ref()).collect();
            assert_eq!(joined, page, "parts of at most {max} bytes");
        }
    }

    #[test]
    fn a_page_is_as_many_parts_as_said_and_an_empty_one_is_one() {
        let page = "x".repeat(3 * PART_BYTES + 1);
        let parts: Vec<_> = parts(&page).collect();
        assert_eq!(parts.len(), 4);
        assert_eq!(parts[3].offset, 3 * PART_BYTES);
        assert!(parts.len() <= parts_in(page.len()));
        let wide = "😀".repeat(PART_BYTES);
        assert!(self::parts(&wide).count() <= parts_in(wide.len()));
        let empty: Vec<_> = self::parts("").collect();
        assert_eq!(empty, [part("", 0, 0)]);
        assert_eq!(parts_in(0), 1);
    }

    #[test]
    fn parts_in_order_make_the_page_hashed_once_with_progress() {
        let page = "é".repeat(PART_BYTES);
        let mut receiver = RelayReceiver::default();
        let before = bytes_hashed();
        let mut seen = Vec::new();
        let mut complete = None;
        for part in parts(&page) {
            match receiver.on_part(&part, LIMITS).unwrap() {
                Relayed::Partial { received, size } => {
                    assert_eq!(receiver.progress(), Some((received, size)));
                    seen.push(received);
                }
                Relayed::Complete(page) => complete = Some(page),
            }
        }
        assert_eq!(seen, [PART_BYTES]);
        let complete = complete.expect("the last part completes the page");
        assert_eq!(complete.hash(), PageHash::of(page.as_bytes()));
        assert_eq!(complete.bytes(), page.as_bytes());
        assert_eq!(
            bytes_hashed() - before,
            2 * page.len(),
            "once, and the check above"
        );
        assert_eq!(receiver.progress(), None, "nothing under way once complete");
        let empty = receiver.on_part(&part("", 0, 0), LIMITS).unwrap();
        assert!(matches!(empty, Relayed::Complete(page) if page.is_empty()));
    }

    #[test]
    fn parts_that_skip_repeat_overrun_or_resize_are_refused() {
        let cases: [(&[ContentPart], RelayError); 6] = [
            (
                &[part("bc", 1, 3)],
                RelayError::Gap {
                    expected: 0,
                    got: 1,
                },
            ),
            (
                &[part("ab", 0, 6), part("d", 3, 6)],
                RelayError::Gap {
                    expected: 2,
                    got: 3,
                },
            ),
            (
                &[part("ab", 0, 6), part("bc", 1, 6)],
                RelayError::Overlap {
                    expected: 2,
                    got: 1,
                },
            ),
            (
                &[part("ab", 0, 6), part("ab", 0, 6)],
                RelayError::Overlap {
                    expected: 2,
                    got: 0,
                },
            ),
            (
                &[part("ab", 0, 6), part("cd", 2, 7)],
                RelayError::SizeChanged {
                    announced: 6,
                    now: 7,
                },
            ),
            (
                &[part("ab", 0, 3), part("cd", 2, 3)],
                RelayError::PastSize { end: 4, size: 3 },
            ),
        ];
        for (parts, expected) in cases {
            let mut receiver = RelayReceiver::default();
            let (last, first) = parts.split_last().unwrap();
            for part in first {
                assert!(matches!(
                    receiver.on_part(part, LIMITS),
                    Ok(Relayed::Partial { .. })
                ));
            }
            assert_eq!(receiver.on_part(last, LIMITS), Err(expected));
            assert_eq!(receiver.progress(), None, "a refused page is dropped");
        }
    }

    #[test]
    fn sizes_over_either_limit_are_refused_before_anything_is_kept() {
        let limits = RelayLimits {
            max_page: 100,
            max_relay: Some(50),
        };
        let mut receiver = RelayReceiver::default();
        assert_eq!(
            receiver.on_part(&part("a", 0, usize::MAX), limits),
            Err(RelayError::Oversize {
                size: usize::MAX,
                limit: 100
            })
        );
        assert_eq!(
            receiver.on_part(&part("a", 0, 51), limits),
            Err(RelayError::OverRelayLimit { size: 51, max: 50 })
        );
        let unstated = RelayLimits {
            max_relay: None,
            ..limits
        };
        assert!(receiver.on_part(&part("a", 0, 51), unstated).is_ok());
    }

    #[test]
    fn a_reset_drops_the_page_under_way() {
        let mut receiver = RelayReceiver::default();
        receiver.on_part(&part("ab", 0, 4), LIMITS).unwrap();
        assert_eq!(receiver.progress(), Some((2, 4)));
        receiver.reset();
        assert_eq!(receiver.progress(), None);
        assert!(matches!(
            receiver.on_part(&part("abcd", 0, 4), LIMITS),
            Ok(Relayed::Complete(_))
        ));
    }
}
