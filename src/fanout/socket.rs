//! A dashboard's WebSocket over its upgraded HTTP connection, and the closing
//! handshake after a message over the size caps.
//!
//! tokio-tungstenite ends its stream at the first error, so after a message over
//! `websocket.max_message_bytes` nothing would read the rest of the client's
//! fragments. Closing the TCP connection with them unread makes the kernel answer
//! with a reset, and the client loses the 1009 close frame it was sent (standard
//! clients report 1006). RFC 6455 §7.1.1 has the server close TCP after it has both
//! sent and received a close frame. [`Watched`] therefore follows the frame
//! boundaries of everything the client sends (headers only, parsed with
//! tungstenite's own parser; payloads are skipped, not copied), so that after the
//! error [`discard_until_close`] can drop input up to the client's close frame
//! without holding any of it in memory.

use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use std::io::Cursor;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Control, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::FrameHeader;
use tokio_tungstenite::WebSocketStream;

/// A dashboard connection after the upgrade.
pub type Socket = WebSocketStream<Watched<TokioIo<Upgraded>>>;

/// The longest frame header (RFC 6455 §5.2): 2 bytes, 8 of extended length, 4 of mask.
const MAX_HEADER: usize = 14;

/// A byte stream whose inbound frame boundaries are tracked as it is read.
pub struct Watched<S> {
    inner: S,
    frames: FrameTrack,
}

impl<S> Watched<S> {
    pub fn new(inner: S) -> Self {
        Watched {
            inner,
            frames: FrameTrack::default(),
        }
    }
}

/// Where the client's byte stream stands: in a frame header, or in a payload.
#[derive(Default)]
struct FrameTrack {
    /// Bytes of a header not yet complete (fewer than [`MAX_HEADER`]).
    header: Vec<u8>,
    /// Payload bytes of the current frame still to come.
    payload_left: u64,
    /// The current frame is a close frame.
    in_close: bool,
    /// A whole close frame has arrived from the client.
    close_seen: bool,
    /// A header did not parse: boundaries are no longer known.
    lost: bool,
}

impl FrameTrack {
    fn feed(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() && !self.lost {
            if self.payload_left > 0 {
                let n = bytes
                    .len()
                    .min(usize::try_from(self.payload_left).unwrap_or(usize::MAX));
                self.payload_left -= n as u64;
                bytes = &bytes[n..];
                self.frame_end_reached();
                continue;
            }
            let had = self.header.len();
            let take = bytes.len().min(MAX_HEADER - had);
            self.header.extend_from_slice(&bytes[..take]);
            let mut cursor = Cursor::new(self.header.as_slice());
            match FrameHeader::parse(&mut cursor) {
                Ok(Some((header, len))) => {
                    let used = cursor.position() as usize - had;
                    bytes = &bytes[used..];
                    self.header.clear();
                    self.in_close = header.opcode == OpCode::Control(Control::Close);
                    self.payload_left = len;
                    self.frame_end_reached();
                }
                Ok(None) => bytes = &bytes[take..],
                Err(_) => self.lost = true,
            }
        }
    }

    fn frame_end_reached(&mut self) {
        if self.payload_left == 0 && self.in_close {
            self.close_seen = true;
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = polled {
            this.frames.feed(&buf.filled()[before..]);
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Watched<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// After the gateway's close frame: read and drop what the client sends until its
/// close frame, the end of its stream, or `timeout`, whichever comes first. Where
/// the frame boundaries were lost (a header that did not parse), only the end of
/// the stream or the timeout ends it.
pub async fn discard_until_close<S: AsyncRead + AsyncWrite + Unpin>(
    socket: &mut WebSocketStream<Watched<S>>,
    timeout: Duration,
) {
    let watched = socket.get_mut();
    let mut scratch = [0u8; 4096];
    let _ = tokio::time::timeout(timeout, async {
        while !watched.frames.close_seen {
            match watched.read(&mut scratch).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A masked client frame: `opcode` with `fin`, `len` payload bytes of `fill`.
    fn frame(opcode: u8, fin: bool, len: usize) -> Vec<u8> {
        let mut out = vec![opcode | if fin { 0x80 } else { 0 }];
        match len {
            0..=125 => out.push(0x80 | len as u8),
            126..=65535 => {
                out.push(0x80 | 126);
                out.extend_from_slice(&(len as u16).to_be_bytes());
            }
            _ => {
                out.push(0x80 | 127);
                out.extend_from_slice(&(len as u64).to_be_bytes());
            }
        }
        out.extend_from_slice(&[1, 2, 3, 4]);
        out.extend(std::iter::repeat_n(0x55, len));
        out
    }

    fn stream() -> Vec<u8> {
        let mut bytes = frame(0x1, false, 100);
        bytes.extend(frame(0x0, false, 70_000));
        bytes.extend(frame(0x9, true, 4)); // a ping between fragments
        bytes.extend(frame(0x0, true, 300));
        bytes.extend(frame(0x8, true, 2));
        bytes
    }

    #[test]
    fn a_close_frame_is_seen_only_once_it_has_all_arrived() {
        let bytes = stream();
        let mut track = FrameTrack::default();
        track.feed(&bytes[..bytes.len() - 1]);
        assert!(!track.close_seen);
        track.feed(&bytes[bytes.len() - 1..]);
        assert!(track.close_seen);
        assert!(!track.lost);
    }

    #[test]
    fn boundaries_hold_whatever_the_read_sizes() {
        let bytes = stream();
        for chunk in [1, 2, 3, 7, 13, 14, 15, 4096] {
            let mut track = FrameTrack::default();
            let mut seen_early = false;
            let pieces: Vec<&[u8]> = bytes.chunks(chunk).collect();
            for (i, piece) in pieces.iter().enumerate() {
                track.feed(piece);
                seen_early |= track.close_seen && i + 1 < pieces.len();
            }
            assert!(track.close_seen, "chunk {chunk}");
            assert!(!seen_early, "chunk {chunk}");
        }
    }

    #[test]
    fn a_payload_that_looks_like_a_close_frame_is_not_one() {
        let mut bytes = frame(0x2, true, 6);
        // The payload: the bytes of a masked, empty close frame.
        let n = bytes.len();
        bytes[n - 6..].copy_from_slice(&[0x88, 0x80, 0, 0, 0, 0]);
        let mut track = FrameTrack::default();
        track.feed(&bytes);
        assert!(!track.close_seen);
    }
}
