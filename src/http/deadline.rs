//! A deadline on every HTTP request's headers: a connection must deliver the headers
//! of each request within `http.handshake_timeout_ms` (counted from the connection,
//! or from the previous response on a kept-alive connection), or it is dropped.
//!
//! Without it a client could open connections and send nothing (or a byte a
//! minute), holding sockets and memory for ever; `websocket.max_connections` would
//! not even see them, since they never ask to upgrade. The deadline stops for good
//! once a response switches protocols (101), so a WebSocket that stays open for
//! hours is unaffected.

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
            timeout: self.deadline,
            upgraded: false,
            read_waker: None,
        };
        (io, addr)
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

/// A connection whose reads fail once the deadline passes before the end of a
/// request's headers (`\r\n\r\n`, or `\n\n`) has been read.
pub struct Handshake<S> {
    inner: S,
    /// `None` while no request is awaited (headers complete, response pending).
    deadline: Option<Pin<Box<Sleep>>>,
    /// The last three bytes read, to find the end of headers across reads.
    tail: [u8; 3],
    timeouts: Counter,
    timeout: Duration,
    /// A response switched protocols: no deadline any more.
    upgraded: bool,
    /// The reader's waker while no deadline runs, so that re-arming it (from a
    /// write) gets the read side polled again and the timer registered.
    read_waker: Option<std::task::Waker>,
}

impl<S> Handshake<S> {
    /// After a write: a response head re-arms the deadline for the next request on
    /// a kept-alive connection; `101 Switching Protocols` ends it for good.
    fn wrote(&mut self, head: &[u8]) {
        if self.upgraded || self.deadline.is_some() || !head.starts_with(b"HTTP/1.") {
            return;
        }
        if head.get(9..12) == Some(b"101") {
            self.upgraded = true;
        } else {
            self.deadline = Some(Box::pin(tokio::time::sleep(self.timeout)));
            self.tail = [0; 3];
            if let Some(w) = self.read_waker.take() {
                w.wake();
            }
        }
    }
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
            if polled.is_pending() && !this.upgraded {
                this.read_waker = Some(cx.waker().clone());
            }
            return polled;
        }
        if let Poll::Ready(Ok(())) = &polled {
            let mut seen = this.tail.to_vec();
            seen.extend_from_slice(&buf.filled()[before..]);
            let end =
                seen.windows(4).any(|w| w == b"\r\n\r\n") || seen.windows(2).any(|w| w == b"\n\n");
            if end {
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
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if let (Poll::Ready(Ok(n)), Some(first)) = (&polled, bufs.iter().find(|b| !b.is_empty())) {
            let head = &first[..(*n).min(first.len())];
            self.wrote(head);
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}
