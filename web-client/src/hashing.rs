//! Hashing a page on the main thread without freezing it: a large page is
//! hashed a slice at a time, and between slices the tab handles input and
//! draws. One pass of SHA-256 over 16 MiB takes this thread long enough to
//! be felt; a slice takes a few milliseconds.
//!
//! Not SubtleCrypto's `digest`, which would hash off the main thread: its
//! answer is a bare hash, and a [`Page`] is only ever made by hashing its
//! bytes here, so that nothing can host bytes under a hash they do not have.

use ephemeral_shared::page::{Page, PageBuilder};

use crate::timer::next_task;

/// Bytes hashed between two returns to the event loop.
const SLICE_BYTES: usize = 1 << 20;

/// Hashes `bytes`, letting the tab run between slices.
pub async fn page(bytes: Vec<u8>) -> Page {
    if bytes.len() <= SLICE_BYTES {
        return Page::new(bytes);
    }
    let mut builder = PageBuilder::with_capacity(bytes.len());
    for slice in bytes.chunks(SLICE_BYTES) {
        builder.extend(slice);
        next_task().await;
    }
    builder.finish()
}
