//! A TCP stream that lets the websocket layer keep a tiny read buffer
//! without paying a system call per few bytes.
//!
//! tungstenite keeps a read buffer per connection for the connection's
//! whole life, and reads at most that buffer's size per call: 4 KiB of
//! every idle connection's memory, or many system calls per message with
//! a small buffer. Underneath it, this stream reads whatever the socket
//! has (up to [`CHUNK`]) into a scratch buffer on the stack, hands over
//! what was asked for, and keeps the rest on the heap only until it is
//! read — so an idle connection holds no read memory here at all, and the
//! websocket's own buffer can be small (`--read-buffer-bytes`).

use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Most bytes read from the socket at once.
pub const CHUNK: usize = 16 * 1024;

#[derive(Debug)]
pub struct LeanIo<T> {
    inner: T,
    /// Bytes read from the socket and not yet asked for, from `at` on.
    rest: Option<Box<[u8]>>,
    at: usize,
}

impl<T> LeanIo<T> {
    pub fn new(inner: T) -> Self {
        Self {
            inner,
            rest: None,
            at: 0,
        }
    }

    pub fn get_ref(&self) -> &T {
        &self.inner
    }

    /// Moves what is left over into `buf`; whether anything was.
    fn take_rest(&mut self, buf: &mut ReadBuf<'_>) -> bool {
        let Some(rest) = &self.rest else {
            return false;
        };
        let left = &rest[self.at..];
        let n = left.len().min(buf.remaining());
        buf.put_slice(&left[..n]);
        self.at += n;
        if self.at == rest.len() {
            self.rest = None;
            self.at = 0;
        }
        true
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for LeanIo<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.take_rest(buf) {
            return Poll::Ready(Ok(()));
        }
        if buf.remaining() >= CHUNK {
            // A large read (HTTP parsing, a big frame) needs no scratch.
            return Pin::new(&mut this.inner).poll_read(cx, buf);
        }
        // Not zeroed: `ReadBuf` tracks what the read filled.
        let mut scratch = [MaybeUninit::<u8>::uninit(); CHUNK];
        let mut read = ReadBuf::uninit(&mut scratch);
        ready!(Pin::new(&mut this.inner).poll_read(cx, &mut read))?;
        let filled = read.filled();
        let n = filled.len().min(buf.remaining());
        buf.put_slice(&filled[..n]);
        if filled.len() > n {
            this.rest = Some(filled[n..].into());
            this.at = 0;
        }
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for LeanIo<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn small_reads_get_every_byte_in_order_and_keep_nothing_after() {
        let (mut writer, reader) = tokio::io::duplex(64 * 1024);
        let mut lean = LeanIo::new(reader);
        let sent: Vec<u8> = (0..40_000u32).map(|i| (i % 251) as u8).collect();
        writer.write_all(&sent).await.unwrap();
        drop(writer);
        let mut got = Vec::new();
        let mut small = [0u8; 100];
        loop {
            let n = lean.read(&mut small).await.unwrap();
            if n == 0 {
                break;
            }
            got.extend_from_slice(&small[..n]);
        }
        assert_eq!(got, sent);
        assert!(lean.rest.is_none(), "nothing kept once all is read");
    }
}
