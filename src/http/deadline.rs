//! A deadline on the HTTP handshake: a connection must deliver the headers of its
//! first request within `http.handshake_timeout_ms`, or it is dropped.
//!
//! Without it a client could open connections and send nothing (or a byte a
//! minute), holding sockets and memory for ever; with `websocket.max_connections` a
//! flood of such connections would not even reach the limit, since they never ask
//! to upgrade. The deadline ends once the first request's headers are complete, so
//! a WebSocket that stays open for hours is unaffected.

use axum::serve::Listener;
use metrics::Counter;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Sleep;

/// The HTTP listener: TCP_NODELAY on every connection (alarm frames are small;
/// Nagle would hold them back) and the handshake deadline.
pub struct HandshakeListener {
    pub inner: TcpListener,
    pub deadline: Duration,
    /// Counts connections dropped by the deadline.
    pub timeouts: Counter,
}

impl Listener for HandshakeListener {
    type Io = Handshake<TcpStream>;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        let (tcp, addr) = Listener::accept(&mut self.inner).await;
        let _ = tcp.set_nodelay(true);
        let io = Handshake {
            inner: tcp,
            deadline: Some(Box::pin(tokio::time::sleep(self.deadline))),
            tail: [0; 3],
            timeouts: self.timeouts.clone(),
        };
        (io, addr)
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

/// A connection whose reads fail once the deadline passes before the end of the
/// first request's headers (`\r\n\r\n`) has been read.
pub struct Handshake<S> {
    inner: S,
    /// `None` once the headers are complete.
    deadline: Option<Pin<Box<Sleep>>>,
    /// The last three bytes read, to find `\r\n\r\n` across reads.
    tail: [u8; 3],
    timeouts: Counter,
}

impl<S: AsyncRead + Unpin> AsyncRead for Handshake<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
        if this.deadline.is_none() {
            return polled;
        }
        if let Poll::Ready(Ok(())) = &polled {
            let mut seen = this.tail.to_vec();
            seen.extend_from_slice(&buf.filled()[before..]);
            if seen.windows(4).any(|w| w == b"\r\n\r\n") {
                this.deadline = None;
                return polled;
            }
            if seen.len() >= 3 {
                this.tail.copy_from_slice(&seen[seen.len() - 3..]);
            }
        }
        if polled.is_pending() {
            if let Some(deadline) = &mut this.deadline {
                if deadline.as_mut().poll(cx).is_ready() {
                    this.timeouts.increment(1);
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "no complete HTTP request within http.handshake_timeout_ms",
                    )));
                }
            }
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Handshake<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        b: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, b)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}
