//! Protocol framing: the socket (TCP, TLS over TCP, or Unix), a large read buffer cut into frames, and a write
//! buffer that is always flushed.
//!
//! **Guarantees.**
//! - [`Conn::read_frame`] and [`Conn::fill`] are cancel-safe: bytes read from the socket go straight into the
//!   connection's own buffer, and a frame is cut from it only once it is complete, so dropping the future at any
//!   `.await` loses nothing.
//! - Frames are cut without copying (`split_to(..).freeze()`), so message payloads share the read buffer.
//! - A length below 4 or above [`MAX_FRAME`] is a protocol error; nothing here indexes unchecked or panics on
//!   malformed bytes.
//! - [`Conn::send`] keeps unwritten bytes in the write buffer, so a cancelled send never leaves half a message
//!   on the wire: the rest goes out first on the next send.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use postgres_protocol::message::backend;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpStream, UnixStream};
use tokio::time::Instant;
use tokio_rustls::client::TlsStream;

use super::ReplicationError;

/// Read buffer size: large reads keep syscalls per message low on a busy stream.
pub const READ_BUFFER: usize = 128 * 1024;
/// Read again only into at least this much free space.
const MIN_SPARE: usize = 16 * 1024;
/// Largest frame accepted (PostgreSQL's own limit for a field is 1 GiB).
pub const MAX_FRAME: usize = 1 << 30;

/// The transport under the protocol.
pub enum Socket {
    Tcp(TcpStream),
    Unix(UnixStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl AsyncRead for Socket {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Socket::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Socket::Unix(s) => Pin::new(s).poll_read(cx, buf),
            Socket::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Socket {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Socket::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Socket::Unix(s) => Pin::new(s).poll_write(cx, buf),
            Socket::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Socket::Tcp(s) => Pin::new(s).poll_flush(cx),
            Socket::Unix(s) => Pin::new(s).poll_flush(cx),
            Socket::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Socket::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Socket::Unix(s) => Pin::new(s).poll_shutdown(cx),
            Socket::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// One backend message: its type byte and its body (without the 5-byte header), sharing the read buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub tag: u8,
    pub body: Bytes,
}

impl Frame {
    /// Parses the frame with postgres-protocol (for everything except CopyData and CopyBothResponse, which
    /// postgres-protocol does not know). Copies the body, so keep it off the hot path.
    pub fn message(&self) -> Result<backend::Message, ReplicationError> {
        let mut buf = BytesMut::with_capacity(self.body.len() + 5);
        buf.put_u8(self.tag);
        // The body came from a frame whose length fit in u32.
        buf.put_u32(u32::try_from(self.body.len() + 4).unwrap_or(u32::MAX));
        buf.extend_from_slice(&self.body);
        match backend::Message::parse(&mut buf) {
            Ok(Some(m)) => Ok(m),
            Ok(None) => Err(ReplicationError::Protocol(format!("truncated message of type {}", tag_name(self.tag)))),
            Err(e) => Err(ReplicationError::Protocol(format!("malformed message of type {}: {e}", tag_name(self.tag)))),
        }
    }
}

/// `'Z'` for printable type bytes, the number otherwise.
pub fn tag_name(tag: u8) -> String {
    if tag.is_ascii_graphic() {
        format!("'{}'", char::from(tag))
    } else {
        format!("0x{tag:02X}")
    }
}

/// Most a partial frame reserves ahead of the bytes that arrived.
const RESERVE_STEP: usize = 1 << 20;

/// Cuts the next complete frame off the front of `buf`, or returns `None` (after reserving room for the rest of
/// a partially received frame).
pub fn split_frame(buf: &mut BytesMut) -> Result<Option<Frame>, ReplicationError> {
    let Some(&[tag, a, b, c, d]) = buf.get(..5) else {
        return Ok(None);
    };
    let len = u32::from_be_bytes([a, b, c, d]) as usize;
    if !(4..=MAX_FRAME).contains(&len) {
        return Err(ReplicationError::Protocol(format!(
            "invalid length {len} for a message of type {}",
            tag_name(tag)
        )));
    }
    let total = len + 1;
    if buf.len() < total {
        // Room for the rest, in steps: a header alone (hostile or corrupt) must not make us allocate up to
        // MAX_FRAME at once; BytesMut's growth keeps large frames amortised.
        buf.reserve((total - buf.len()).min(RESERVE_STEP));
        return Ok(None);
    }
    let mut frame = buf.split_to(total);
    frame.advance(5);
    Ok(Some(Frame { tag, body: frame.freeze() }))
}

/// Whether `buf` starts with a complete frame (tag, length, body) — what [`split_frame`] would return.
fn frame_complete(buf: &[u8]) -> bool {
    match buf.get(..5) {
        Some(&[_, a, b, c, d]) => buf.len() > u32::from_be_bytes([a, b, c, d]) as usize,
        _ => false,
    }
}

/// A framed connection.
pub struct Conn {
    socket: Socket,
    read: BytesMut,
    /// Outgoing bytes; [`Conn::send`] drains it.
    pub write: BytesMut,
    /// SCRAM `tls-server-end-point` data when TLS is in use and the certificate allows it.
    pub channel_binding: Option<Vec<u8>>,
    pub tls: bool,
    /// When bytes last arrived (for read-idle timeouts).
    pub last_received: Instant,
}

impl Conn {
    pub fn new(socket: Socket, channel_binding: Option<Vec<u8>>) -> Conn {
        let tls = matches!(socket, Socket::Tls(_));
        Conn {
            socket,
            read: BytesMut::with_capacity(READ_BUFFER),
            write: BytesMut::with_capacity(1024),
            channel_binding,
            tls,
            last_received: Instant::now(),
        }
    }

    /// Whether a complete frame is already buffered (the next [`Self::try_frame`] returns one or an error).
    pub fn frame_buffered(&self) -> bool {
        frame_complete(&self.read)
    }

    /// The next complete frame already buffered, without touching the socket.
    pub fn try_frame(&mut self) -> Result<Option<Frame>, ReplicationError> {
        split_frame(&mut self.read)
    }

    /// Reads whatever the socket has into the buffer. Cancel-safe. End of stream is [`ReplicationError::Closed`].
    pub async fn fill(&mut self) -> Result<(), ReplicationError> {
        if self.read.capacity() - self.read.len() < MIN_SPARE {
            self.read.reserve(READ_BUFFER);
        }
        let n = self.socket.read_buf(&mut self.read).await?;
        if n == 0 {
            return Err(ReplicationError::Closed);
        }
        self.last_received = Instant::now();
        Ok(())
    }

    /// The next frame, reading as needed. Cancel-safe.
    pub async fn read_frame(&mut self) -> Result<Frame, ReplicationError> {
        loop {
            if let Some(frame) = self.try_frame()? {
                return Ok(frame);
            }
            self.fill().await?;
        }
    }

    /// Writes and flushes everything in the write buffer.
    pub async fn send(&mut self) -> Result<(), ReplicationError> {
        self.socket.write_all_buf(&mut self.write).await?;
        self.socket.flush().await?;
        Ok(())
    }

    /// Closes the write side (TLS close_notify, TCP FIN). Errors are irrelevant at this point.
    pub async fn shutdown(&mut self) {
        let _ = self.socket.shutdown().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut v = vec![tag];
        v.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
        v.extend_from_slice(body);
        v
    }

    #[test]
    fn a_frame_is_complete_exactly_when_split_frame_returns_it() {
        let wire = frame(b'd', b"hello");
        for cut in 0..=wire.len() {
            let mut buf = BytesMut::from(&wire[..cut]);
            assert_eq!(frame_complete(&buf), split_frame(&mut buf).unwrap().is_some(), "{cut} bytes");
        }
    }

    #[test]
    fn splits_complete_frames_and_waits_for_partial_ones() {
        let mut wire = frame(b'Z', b"I");
        wire.extend(frame(b'd', b"hello"));
        let mut buf = BytesMut::new();
        // Feed one byte at a time: frames appear exactly when complete.
        let mut out = Vec::new();
        for &b in &wire {
            buf.put_u8(b);
            while let Some(f) = split_frame(&mut buf).unwrap() {
                out.push(f);
            }
        }
        assert_eq!(out.len(), 2);
        assert_eq!((out[0].tag, &out[0].body[..]), (b'Z', &b"I"[..]));
        assert_eq!((out[1].tag, &out[1].body[..]), (b'd', &b"hello"[..]));
        assert!(buf.is_empty());
    }

    #[test]
    fn rejects_bad_lengths() {
        for len in [0u32, 3, (MAX_FRAME + 1) as u32, u32::MAX] {
            let mut buf = BytesMut::from(&[b'd'][..]);
            buf.put_u32(len);
            let e = split_frame(&mut buf).unwrap_err();
            assert!(matches!(e, ReplicationError::Protocol(_)), "{len}: {e:?}");
        }
    }

    /// A header announcing a huge frame (hostile, corrupt, or a real 1 GiB field) must not allocate for all of it up
    /// front (commit caedc62): after the header alone at most 1 MiB is reserved; as the body trickles in, each
    /// request is for at most 1 MiB more than arrived, which BytesMut's amortised doubling turns into a capacity of
    /// at most twice (received + 1 MiB) — proportional to what arrived, never to the announced length.
    #[test]
    fn a_huge_announced_length_reserves_at_most_1_mib_ahead_of_the_received_bytes() {
        const MIB: usize = 1 << 20;
        let mut buf = BytesMut::new();
        buf.put_u8(b'd');
        buf.put_u32(MAX_FRAME as u32);
        assert!(split_frame(&mut buf).unwrap().is_none());
        assert!(buf.capacity() <= buf.len() + MIB, "{} bytes reserved after a 5-byte header", buf.capacity());
        let read = vec![7u8; 64 << 10];
        while buf.len() < 8 * MIB {
            buf.extend_from_slice(&read);
            assert!(split_frame(&mut buf).unwrap().is_none());
            assert!(
                buf.capacity() <= 2 * (buf.len() + MIB),
                "{} bytes reserved for {} received",
                buf.capacity(),
                buf.len()
            );
        }
        // A frame that does complete is still cut exactly.
        let mut buf = BytesMut::new();
        buf.put_u8(b'd');
        buf.put_u32((3 * MIB + 4) as u32);
        buf.extend_from_slice(&vec![1u8; 3 * MIB]);
        let f = split_frame(&mut buf).unwrap().expect("complete frame");
        assert_eq!(f.body.len(), 3 * MIB);
        assert!(buf.is_empty());
    }

    #[test]
    fn message_parses_via_postgres_protocol() {
        let f = Frame { tag: b'Z', body: Bytes::from_static(b"I") };
        assert!(matches!(f.message().unwrap(), backend::Message::ReadyForQuery(_)));
        let f = Frame { tag: b'Z', body: Bytes::from_static(b"") };
        assert!(matches!(f.message(), Err(ReplicationError::Protocol(_))));
        let f = Frame { tag: 0x01, body: Bytes::from_static(b"") };
        let Err(e) = f.message() else { panic!("tag 0x01 must not parse") };
        let e = e.to_string();
        assert!(e.contains("0x01"), "{e}");
    }
}
