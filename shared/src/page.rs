//! A page's bytes together with their address, hashed exactly once.
//!
//! A [`Page`] can only be made by hashing its bytes: whole ([`Page::new`])
//! or piece by piece as they arrive ([`PageBuilder`]). So whoever holds
//! one — the host serving it, the transfer announcing it, the visitor that
//! verified it and now hosts it — has its address without hashing again.
//! Hashing 16 MiB takes a tab's main thread a noticeable fraction of a
//! second; each extra pass was a freeze people saw.

use std::fmt;
use std::sync::Arc;

use crate::hash::{Hasher, PageHash};

/// A page's bytes and the SHA-256 they hash to. Cheap to clone: the bytes
/// are shared.
#[derive(Clone)]
pub struct Page {
    bytes: Arc<Vec<u8>>,
    hash: PageHash,
}

impl Page {
    /// Hashes `bytes` and keeps them with their address.
    pub fn new(bytes: Vec<u8>) -> Self {
        let mut hasher = Hasher::default();
        hasher.update(&bytes);
        Self {
            hash: hasher.finish(),
            bytes: Arc::new(bytes),
        }
    }

    pub fn hash(&self) -> PageHash {
        self.hash
    }

    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The bytes, copied only if the page is shared.
    pub fn into_vec(self) -> Vec<u8> {
        Arc::try_unwrap(self.bytes).unwrap_or_else(|shared| shared.as_ref().clone())
    }
}

impl std::ops::Deref for Page {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        &self.bytes
    }
}

/// Pages are equal when their addresses are: the address is the bytes'
/// SHA-256.
impl PartialEq for Page {
    fn eq(&self, other: &Self) -> bool {
        self.hash == other.hash
    }
}

impl Eq for Page {}

/// Never the bytes: logs must not carry page contents.
impl fmt::Debug for Page {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Page({}, {} bytes)", self.hash, self.bytes.len())
    }
}

/// A page being assembled: every piece is hashed as it is added, so the
/// address is ready the moment the last piece is in.
#[derive(Default)]
pub struct PageBuilder {
    bytes: Vec<u8>,
    hasher: Hasher,
}

impl PageBuilder {
    /// Room for `capacity` bytes up front, so assembling never copies.
    pub fn with_capacity(capacity: usize) -> Self {
        Self {
            bytes: Vec::with_capacity(capacity),
            hasher: Hasher::default(),
        }
    }

    /// Appends and hashes `piece`.
    pub fn extend(&mut self, piece: &[u8]) {
        self.hasher.update(piece);
        self.bytes.extend_from_slice(piece);
    }

    /// Bytes added so far.
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    pub fn finish(self) -> Page {
        Page {
            hash: self.hasher.finish(),
            bytes: Arc::new(self.bytes),
        }
    }
}

impl fmt::Debug for PageBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PageBuilder({} bytes)", self.bytes.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hash::bytes_hashed;

    #[test]
    fn a_page_hashes_its_bytes_once() {
        let bytes = b"hello".to_vec();
        let before = bytes_hashed();
        let page = Page::new(bytes);
        assert_eq!(bytes_hashed() - before, 5);
        let copy = page.clone();
        assert_eq!(copy.hash(), PageHash::of(b"hello"));
        assert_eq!(&*copy, b"hello");
        assert_eq!(bytes_hashed() - before, 10, "only the check above hashed");
    }

    #[test]
    fn pieces_hash_like_the_whole() {
        let whole: Vec<u8> = (0..100_000u32).map(|i| (i % 253) as u8).collect();
        let mut builder = PageBuilder::with_capacity(whole.len());
        for piece in whole.chunks(7919) {
            builder.extend(piece);
        }
        assert_eq!(builder.len(), whole.len());
        let built = builder.finish();
        assert_eq!(built.hash(), PageHash::of(&whole));
        assert_eq!(built.into_vec(), whole);
        assert_eq!(PageBuilder::default().finish().hash(), PageHash::of(b""));
    }

    #[test]
    fn debug_never_shows_the_bytes() {
        let page = Page::new(b"secret words".to_vec());
        assert!(!format!("{page:?}").contains("secret"));
        let mut builder = PageBuilder::default();
        builder.extend(b"secret");
        assert!(!format!("{builder:?}").contains("secret"));
    }
}
