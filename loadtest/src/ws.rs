//! The dashboards' WebSocket client: RFC 6455 over a plain `TcpStream`, no more.
//!
//! A thousand dashboards share the machine's two cores with the gateway they
//! measure, so what each costs per frame received is taken from the gateway and
//! shows in its latency. In the harness's profile, tokio-tungstenite's stream,
//! sink and buffer work (zeroing its read buffer before every read among it) was
//! about a seventh of what a frame cost. This client reads into one buffer it never zeroes,
//! hands text frames out as borrowed `&str`, answers pings itself and keeps no
//! other state. It is a complete client for what a gateway sends (unmasked frames,
//! fragmented or not, control frames between fragments), and it fails the
//! connection on anything RFC 6455 forbids a server to send.

use std::io;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Opcodes (RFC 6455 §5.2).
const CONTINUATION: u8 = 0x0;
const TEXT: u8 = 0x1;
const BINARY: u8 = 0x2;
const CLOSE: u8 = 0x8;
const PING: u8 = 0x9;
const PONG: u8 = 0xA;

/// Bytes read per `read` call at least: one alarm or vitals frame fits many times.
const READ_CHUNK: usize = 4 * 1024;
/// A frame may be at most this long (tungstenite's default); a message, made of
/// frames, at most the client's `max_message`.
const MAX_FRAME: usize = 16 << 20;
/// The handshake response may be at most this long.
const MAX_RESPONSE_HEAD: usize = 16 * 1024;

/// What the server sent.
#[derive(Debug, PartialEq, Eq)]
pub enum Message<'a> {
    Text(&'a str),
    /// A binary message (its length): dashboards ignore them.
    Binary(usize),
    /// The server closed the connection, with its close code and reason if it gave
    /// them.
    Close(Option<(u16, &'a str)>),
}

/// A connected client.
pub struct Client {
    tcp: TcpStream,
    /// Bytes received: `buf[start..end]` are not yet consumed.
    buf: Vec<u8>,
    start: usize,
    end: usize,
    /// A fragmented message being put together (its opcode and payload so far).
    partial: Option<(u8, Vec<u8>)>,
    /// The last fragmented message put together, handed out from here.
    assembled: Vec<u8>,
    /// A message longer than this fails the connection.
    max_message: usize,
    /// Pong bytes not yet written: `next` writes without waiting, so that a
    /// dashboard stopped between frames never leaves half a pong on the wire.
    outgoing: Vec<u8>,
    /// The close code the server sent, echoed by [`Client::close`].
    closed_with: Option<u16>,
}

fn invalid(what: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.into())
}

/// A frame's header: (header length, payload length, fin, opcode), or `None` if
/// `bytes` do not hold the whole header yet.
fn header(bytes: &[u8]) -> io::Result<Option<(usize, usize, bool, u8)>> {
    let [b0, b1, rest @ ..] = bytes else {
        return Ok(None);
    };
    if b0 & 0x70 != 0 {
        return Err(invalid("a frame with reserved bits set"));
    }
    if b1 & 0x80 != 0 {
        return Err(invalid("a masked frame from the server"));
    }
    let (extra, len) = match b1 & 0x7f {
        126 if rest.len() >= 2 => (2, u16::from_be_bytes([rest[0], rest[1]]) as u64),
        127 if rest.len() >= 8 => (8, u64::from_be_bytes(rest[..8].try_into().unwrap())),
        126 | 127 => return Ok(None),
        n => (0, n as u64),
    };
    let len = usize::try_from(len).map_err(|_| invalid("a frame longer than memory"))?;
    Ok(Some((2 + extra, len, b0 & 0x80 != 0, b0 & 0x0f)))
}

/// A client frame (FIN set, masked, as RFC 6455 requires of clients).
fn client_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 14);
    crate::frame::push_header(&mut out, opcode, true, payload.len());
    let mask = fastrand::u32(..).to_be_bytes();
    out.extend_from_slice(&mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    out
}

impl Client {
    /// The opening handshake over `tcp` for `ws://{host}{path}`.
    pub async fn handshake(
        mut tcp: TcpStream,
        host: &str,
        path: &str,
        max_message: usize,
    ) -> io::Result<Client> {
        use tokio_tungstenite::tungstenite::handshake::{client::generate_key, derive_accept_key};
        let key = generate_key();
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        );
        tcp.write_all(request.as_bytes()).await?;
        let mut buf = vec![0; READ_CHUNK];
        let mut end = 0;
        let head_len = loop {
            if let Some(i) = buf[..end].windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            if end >= MAX_RESPONSE_HEAD {
                return Err(invalid("a handshake response head over 16 KiB"));
            }
            if end == buf.len() {
                buf.resize(buf.len() * 2, 0);
            }
            let n = tcp.read(&mut buf[end..]).await?;
            if n == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            end += n;
        };
        let head = std::str::from_utf8(&buf[..head_len])
            .map_err(|_| invalid("a handshake response that is not text"))?;
        let mut lines = head.split("\r\n");
        let status = lines.next().unwrap_or_default();
        if status.split(' ').nth(1) != Some("101") {
            return Err(invalid(format!("handshake refused: {status}")));
        }
        let headers: Vec<(&str, &str)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(name, value)| (name.trim(), value.trim()))
            .collect();
        let header = |name: &str| {
            headers
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(name))
                .map(|(_, v)| *v)
        };
        // RFC 6455 §4.1: the upgrade confirmed, the key answered, and nothing
        // agreed that was not asked for.
        let upgraded = header("upgrade").is_some_and(|v| v.eq_ignore_ascii_case("websocket"))
            && header("connection").is_some_and(|v| {
                v.split(',')
                    .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
            });
        if !upgraded {
            return Err(invalid("a 101 response without Upgrade: websocket"));
        }
        if header("sec-websocket-accept") != Some(derive_accept_key(key.as_bytes()).as_str()) {
            return Err(invalid(
                "handshake response without the right Sec-WebSocket-Accept",
            ));
        }
        if header("sec-websocket-extensions").is_some()
            || header("sec-websocket-protocol").is_some()
        {
            return Err(invalid("an extension or subprotocol nobody asked for"));
        }
        Ok(Client {
            tcp,
            buf,
            start: head_len,
            end,
            partial: None,
            assembled: Vec::new(),
            max_message,
            outgoing: Vec::new(),
            closed_with: None,
        })
    }

    /// The next message. Pings are answered here, without waiting for the socket.
    /// Cancel safe: a call cut short loses nothing, and the next one goes on.
    pub async fn next(&mut self) -> io::Result<Message<'_>> {
        self.write_outgoing()?;
        let (opcode, payload) = loop {
            if let Some((head, len, fin, opcode)) = header(&self.buf[self.start..self.end])? {
                if len > self.max_message.min(MAX_FRAME) {
                    return Err(invalid(format!("a {len}-byte frame")));
                }
                if opcode >= CLOSE && (len > 125 || !fin) {
                    return Err(invalid("a control frame over 125 bytes or fragmented"));
                }
                let total = head + len;
                if self.end - self.start >= total {
                    let payload = self.start + head..self.start + total;
                    self.start += total;
                    match (opcode, fin) {
                        (PING, true) => {
                            let pong = client_frame(PONG, &self.buf[payload]);
                            self.outgoing.extend_from_slice(&pong);
                            self.write_outgoing()?;
                        }
                        (PONG, true) => {}
                        (CLOSE, true) => break (CLOSE, payload),
                        (TEXT | BINARY, true) if self.partial.is_none() => break (opcode, payload),
                        (TEXT | BINARY, false) if self.partial.is_none() => {
                            self.partial = Some((opcode, self.buf[payload].to_vec()));
                        }
                        (CONTINUATION, _) if self.partial.is_some() => {
                            let (_, so_far) = self.partial.as_mut().unwrap();
                            if so_far.len() + len > self.max_message {
                                return Err(invalid("a fragmented message over the cap"));
                            }
                            so_far.extend_from_slice(&self.buf[payload]);
                            if fin {
                                break (CONTINUATION, 0..0);
                            }
                        }
                        _ => {
                            return Err(invalid(format!(
                                "unexpected frame: opcode {opcode}, fin {fin}"
                            )))
                        }
                    }
                    continue;
                }
                self.make_room(total);
            } else {
                self.make_room(14);
            }
            let n = self.tcp.read(&mut self.buf[self.end..]).await?;
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    if self.start < self.end || self.partial.is_some() {
                        "connection cut in the middle of a message"
                    } else {
                        "connection closed without a close frame"
                    },
                ));
            }
            self.end += n;
        };
        let (opcode, bytes) = match opcode {
            CONTINUATION => {
                let (opcode, whole) = self.partial.take().unwrap();
                self.assembled = whole;
                (opcode, &self.assembled[..])
            }
            _ => (opcode, &self.buf[payload]),
        };
        Ok(match opcode {
            TEXT => Message::Text(
                std::str::from_utf8(bytes)
                    .map_err(|_| invalid("a text frame that is not UTF-8"))?,
            ),
            BINARY => Message::Binary(bytes.len()),
            _ => {
                let close = match bytes {
                    [] => None,
                    [hi, lo, reason @ ..] => Some((
                        u16::from_be_bytes([*hi, *lo]),
                        std::str::from_utf8(reason)
                            .map_err(|_| invalid("a close reason that is not UTF-8"))?,
                    )),
                    [_] => return Err(invalid("a close frame with a 1-byte payload")),
                };
                self.closed_with = close.map(|(code, _)| code);
                Message::Close(close)
            }
        })
    }

    /// Write what of the pending pongs the socket takes now.
    fn write_outgoing(&mut self) -> io::Result<()> {
        while !self.outgoing.is_empty() {
            match self.tcp.try_write(&self.outgoing) {
                Ok(n) => drop(self.outgoing.drain(..n)),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Room in the buffer for at least `frame` bytes from `start` and a read of
    /// [`READ_CHUNK`]: consumed bytes are dropped first, then it grows.
    fn make_room(&mut self, frame: usize) {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
            // A snapshot of thousands of chairs is not kept for the whole run by
            // each of thousands of dashboards.
            if self.buf.len() > 16 * READ_CHUNK {
                self.buf.truncate(READ_CHUNK);
                self.buf.shrink_to_fit();
            }
            self.assembled = Vec::new();
        }
        // Towards a long frame as its bytes come, at most doubling per read: a
        // header alone does not make the whole frame's room.
        let want = frame
            .min(2 * self.buf.len())
            .max(self.end - self.start + READ_CHUNK);
        if self.buf.len() - self.start < want {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        if self.buf.len() < want {
            self.buf.resize(want, 0);
        }
    }

    /// Send a text message (after any pong still pending).
    pub async fn send_text(&mut self, text: &str) -> io::Result<()> {
        self.outgoing
            .extend_from_slice(&client_frame(TEXT, text.as_bytes()));
        let out = std::mem::take(&mut self.outgoing);
        self.tcp.write_all(&out).await
    }

    /// Send a close frame, the server's code echoed if it closed first (1000,
    /// normal closure, if not), and shut the sending side.
    pub async fn close(&mut self) {
        let code = self.closed_with.unwrap_or(1000);
        self.outgoing
            .extend_from_slice(&client_frame(CLOSE, &code.to_be_bytes()));
        let out = std::mem::take(&mut self.outgoing);
        let _ = self.tcp.write_all(&out).await;
        let _ = self.tcp.shutdown().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::{SinkExt, StreamExt};
    use std::future::Future;
    use std::time::Duration;
    use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
    use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
    use tokio_tungstenite::tungstenite::protocol::CloseFrame;
    use tokio_tungstenite::tungstenite::Message as Tm;

    /// A broken client would more often wait forever than fail: bound every test.
    async fn bounded<T>(f: impl Future<Output = T>) -> T {
        tokio::time::timeout(Duration::from_secs(10), f)
            .await
            .expect("the test did not finish within 10 s")
    }

    /// A server on a free port running `serve` on its one connection, and the
    /// client's handshake with it.
    async fn pair<F, Fut>(
        max_message: usize,
        serve: F,
    ) -> (io::Result<Client>, tokio::task::JoinHandle<()>)
    where
        F: FnOnce(TcpStream) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send,
    {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            serve(tcp).await;
        });
        let tcp = TcpStream::connect(addr).await.unwrap();
        let client = Client::handshake(tcp, &addr.to_string(), "/ws", max_message).await;
        (client, server)
    }

    /// A tungstenite server running `serve`.
    async fn tungstenite_pair<F, Fut>(serve: F) -> (Client, tokio::task::JoinHandle<()>)
    where
        F: FnOnce(tokio_tungstenite::WebSocketStream<TcpStream>) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send,
    {
        let (client, server) = pair(1 << 20, |tcp| async move {
            serve(tokio_tungstenite::accept_async(tcp).await.unwrap()).await
        })
        .await;
        (client.unwrap(), server)
    }

    /// Read the client's request head and answer it with `response(accept key)`
    /// in one write, then whatever bytes follow it, in the same write.
    async fn answer(tcp: &mut TcpStream, response: impl FnOnce(&str) -> Vec<u8>) {
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            let mut byte = [0];
            tcp.read_exact(&mut byte).await.unwrap();
            head.push(byte[0]);
        }
        let head = String::from_utf8(head).unwrap();
        let key = head
            .lines()
            .find_map(|l| l.strip_prefix("Sec-WebSocket-Key: "))
            .unwrap();
        let accept = derive_accept_key(key.trim().as_bytes());
        tcp.write_all(&response(&accept)).await.unwrap();
    }

    fn upgrade(accept: &str, then: &[u8]) -> Vec<u8> {
        let mut out = format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Accept: {accept}\r\n\r\n"
        )
        .into_bytes();
        out.extend_from_slice(then);
        out
    }

    #[tokio::test]
    async fn receives_what_a_tungstenite_server_sends_and_answers_its_pings() {
        bounded(async {
            let big = "x".repeat(200_000); // 64-bit length
            let medium = "y".repeat(1_000); // 16-bit length
            let (b, m) = (big.clone(), medium.clone());
            let (mut client, server) = tungstenite_pair(move |mut ws| async move {
                ws.send(Tm::text("one")).await.unwrap();
                ws.send(Tm::Ping(b"are you there".to_vec().into()))
                    .await
                    .unwrap();
                ws.send(Tm::text(b)).await.unwrap();
                ws.send(Tm::text(m)).await.unwrap();
                ws.send(Tm::binary(vec![1, 2, 3])).await.unwrap();
                // The client's pong, then its text.
                let mut got = Vec::new();
                while got.len() < 2 {
                    match ws.next().await.unwrap().unwrap() {
                        Tm::Pong(p) => got.push(format!("pong {}", String::from_utf8_lossy(&p))),
                        Tm::Text(t) => got.push(format!("text {t}")),
                        other => panic!("unexpected {other:?}"),
                    }
                }
                assert_eq!(got, ["pong are you there", "text hello"]);
                ws.close(Some(CloseFrame {
                    code: CloseCode::Library(4008),
                    reason: "slow".into(),
                }))
                .await
                .unwrap();
                // The client's close echoes the code.
                match ws.next().await {
                    Some(Ok(Tm::Close(Some(c)))) => assert_eq!(u16::from(c.code), 4008),
                    other => panic!("expected the echoed close, got {other:?}"),
                }
            })
            .await;
            assert_eq!(client.next().await.unwrap(), Message::Text("one"));
            assert_eq!(client.next().await.unwrap(), Message::Text(big.as_str()));
            assert_eq!(client.next().await.unwrap(), Message::Text(medium.as_str()));
            assert_eq!(client.next().await.unwrap(), Message::Binary(3));
            client.send_text("hello").await.unwrap();
            assert_eq!(
                client.next().await.unwrap(),
                Message::Close(Some((4008, "slow")))
            );
            client.close().await;
            server.await.unwrap();
        })
        .await
    }

    #[tokio::test]
    async fn keeps_frames_that_come_with_the_handshake_response_and_fragments_around_a_ping() {
        bounded(async {
            let (client, server) = pair(1024, |mut tcp| async move {
                // "first" in the response's own write; then "frag" + ping +
                // "mented", then an empty close.
                answer(&mut tcp, |a| {
                    upgrade(a, &[0x81, 5, b'f', b'i', b'r', b's', b't'])
                })
                .await;
                let frames: [&[u8]; 4] = [
                    &[0x01, 4, b'f', b'r', b'a', b'g'],
                    &[0x89, 1, b'p'],
                    &[0x80, 6, b'm', b'e', b'n', b't', b'e', b'd'],
                    &[0x88, 0],
                ];
                for f in frames {
                    tcp.write_all(f).await.unwrap();
                }
                // The pong: masked, payload "p".
                let mut pong = [0; 7];
                tcp.read_exact(&mut pong).await.unwrap();
                assert_eq!(pong[..2], [0x8A, 0x81]);
                assert_eq!(pong[6] ^ pong[2], b'p');
            })
            .await;
            let mut client = client.unwrap();
            assert_eq!(client.next().await.unwrap(), Message::Text("first"));
            assert_eq!(client.next().await.unwrap(), Message::Text("fragmented"));
            assert_eq!(client.next().await.unwrap(), Message::Close(None));
            server.await.unwrap();
        })
        .await
    }

    #[tokio::test]
    async fn fails_on_what_a_server_must_not_send() {
        for (bytes, why) in [
            (vec![0x81, 0x81, 0, 0, 0, 0, b'a'], "masked"),
            (vec![0xC1, 1, b'a'], "reserved"),
            (vec![0x80, 1, b'a'], "unexpected"),
            (vec![0x01, 1, b'a', 0x81, 1, b'b'], "unexpected"),
            (vec![0x81, 126, 0x08, 0x00], "2048-byte"),
            (vec![0x81, 2, 0xff, 0xfe], "UTF-8"),
            (vec![0x88, 1, 3], "1-byte"),
            (vec![0x89, 126, 0, 126], "control frame"),
            (vec![0x81, 3, b'a'], "middle of a message"),
            (vec![], "without a close frame"),
        ] {
            bounded(async {
                let (client, server) = pair(1024, move |mut tcp| async move {
                    answer(&mut tcp, |a| upgrade(a, &bytes)).await;
                    // Then the end of the connection.
                })
                .await;
                let err = client.unwrap().next().await.unwrap_err();
                assert!(err.to_string().contains(why), "{why}: {err}");
                server.await.unwrap();
            })
            .await
        }
    }

    #[tokio::test]
    async fn a_refused_or_wrong_handshake_says_so() {
        type Response = fn(&str) -> Vec<u8>;
        let responses: [(Response, &str); 3] = [
            (
                |_| b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\n\r\n".to_vec(),
                "503",
            ),
            (
                |_| upgrade("dGhlIHNhbXBsZSBub25jZQ==", b""),
                "Sec-WebSocket-Accept",
            ),
            (
                |a| {
                    format!("HTTP/1.1 101 Switching Protocols\r\nSec-WebSocket-Accept: {a}\r\n\r\n")
                        .into_bytes()
                },
                "Upgrade",
            ),
        ];
        for (response, why) in responses {
            bounded(async {
                let (client, server) = pair(1024, move |mut tcp| async move {
                    answer(&mut tcp, response).await
                })
                .await;
                let err = client.err().expect("the handshake must fail");
                assert!(err.to_string().contains(why), "{why}: {err}");
                server.await.unwrap();
            })
            .await
        }
    }
}
