//! The CopyBoth phase of `START_REPLICATION`: XLogData and primary keepalives in, standby status updates out.
//!
//! **Guarantees.**
//! - [`ReplicationStream::next`] is cancel-safe (use it in `tokio::select!`): partial frames stay in the
//!   connection's buffer, and a message is parsed and returned without any `.await` in between.
//! - XLogData payloads are zero-copy slices of the read buffer.
//! - Malformed or unknown bytes become [`ReplicationError::Protocol`], never a panic.
//! - Status updates are written and flushed at once; the server's clock field uses its epoch (2000-01-01 UTC).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{BufMut, Bytes};
use postgres_protocol::message::backend::Message;
use postgres_protocol::message::frontend;

use super::error::notice_text;
use super::framing::{tag_name, Conn, Frame};
use super::ReplicationError;
use crate::lsn::Lsn;

/// How long [`ReplicationStream::finish`] waits for the server to acknowledge the end of the stream.
const FINISH_TIMEOUT: Duration = Duration::from_secs(10);

/// Microseconds from the Unix epoch to PostgreSQL's epoch, 2000-01-01 00:00:00 UTC.
const PG_EPOCH_OFFSET_US: i64 = 946_684_800_000_000;

/// One message of the replication stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplicationMessage {
    /// WAL data: one pgoutput message starting at `wal_start`.
    XLogData {
        wal_start: Lsn,
        /// The server's current end of WAL.
        wal_end: Lsn,
        /// Server clock at sending, microseconds since 2000-01-01 UTC.
        send_time_us: i64,
        data: Bytes,
    },
    /// Primary keepalive. When `reply_requested`, send a status update promptly or be disconnected.
    KeepAlive { wal_end: Lsn, send_time_us: i64, reply_requested: bool },
}

/// A replication stream in CopyBoth mode.
pub struct ReplicationStream {
    conn: Conn,
    /// The server sent CopyDone: it sends no more data, but we must still answer with CopyDone.
    server_copy_done: bool,
    /// The server sent CommandComplete: the stream is over (a walsender shutting down closes right after).
    command_complete: bool,
    /// The server sent ReadyForQuery: back in command mode.
    ready: bool,
}

impl ReplicationStream {
    pub(super) fn new(conn: Conn) -> ReplicationStream {
        ReplicationStream { conn, server_copy_done: false, command_complete: false, ready: false }
    }

    /// The next message; `Ok(None)` once the server has ended the stream. Cancel-safe.
    pub async fn next(&mut self) -> Result<Option<ReplicationMessage>, ReplicationError> {
        loop {
            if self.server_copy_done || self.command_complete || self.ready {
                return Ok(None);
            }
            while let Some(frame) = self.conn.try_frame()? {
                match classify(frame)? {
                    Incoming::Message(msg) => return Ok(Some(msg)),
                    Incoming::Nothing => {}
                    Incoming::CopyDone => {
                        self.server_copy_done = true;
                        return Ok(None);
                    }
                    Incoming::CommandComplete => {
                        self.command_complete = true;
                        return Ok(None);
                    }
                    Incoming::Ready => {
                        self.ready = true;
                        return Ok(None);
                    }
                }
            }
            self.conn.fill().await?;
        }
    }

    /// Whether the next message is already buffered, so [`Self::next`] would return without waiting for the socket
    /// (a frame that is not a message, e.g. the end of the stream, counts too). The source uses it to hand several
    /// small transactions downstream at once while the server is sending faster than it reads.
    pub fn message_buffered(&self) -> bool {
        self.conn.frame_buffered()
    }

    /// When the server last sent anything. The server may stay silent while idle (our status updates keep it
    /// content), so a caller wanting to detect a dead peer sends `reply_requested = true` and watches this.
    pub fn last_received(&self) -> tokio::time::Instant {
        self.conn.last_received
    }

    /// Sends a standby status update: `write` = received, `flush` = durably handled (the slot may advance to it),
    /// `apply` = applied. `reply_requested` asks the server for an immediate keepalive.
    pub async fn send_status(
        &mut self,
        write: Lsn,
        flush: Lsn,
        apply: Lsn,
        reply_requested: bool,
    ) -> Result<(), ReplicationError> {
        let payload = encode_status(write, flush, apply, pg_now_us(), reply_requested);
        frontend::CopyData::new(&payload[..])
            .map_err(|e| ReplicationError::Protocol(e.to_string()))?
            .write(&mut self.conn.write);
        self.conn.send().await?;
        tracing::trace!(write = %write, flush = %flush, "sent standby status update");
        Ok(())
    }

    /// Ends the stream politely: CopyDone, wait (bounded) for the server to finish the command, then Terminate.
    pub async fn finish(mut self) -> Result<(), ReplicationError> {
        let drained = tokio::time::timeout(FINISH_TIMEOUT, self.drain()).await;
        frontend::terminate(&mut self.conn.write);
        // Best effort, and bounded: a server that stopped reading must not hold up shutdown.
        let _ = tokio::time::timeout(Duration::from_secs(1), async {
            let _ = self.conn.send().await;
            self.conn.shutdown().await;
        })
        .await;
        match drained {
            Ok(result) => result,
            Err(_) => Err(ReplicationError::Timeout(format!(
                "waiting {}s for the server to end the replication stream",
                FINISH_TIMEOUT.as_secs()
            ))),
        }
    }

    async fn drain(&mut self) -> Result<(), ReplicationError> {
        if self.ready {
            return Ok(());
        }
        if !self.command_complete {
            frontend::copy_done(&mut self.conn.write);
            self.conn.send().await?;
        }
        loop {
            let frame = match self.conn.read_frame().await {
                Ok(f) => f,
                // The server may close right after CommandComplete (walsender shutdown): that is an end too.
                Err(ReplicationError::Closed) if self.command_complete => return Ok(()),
                Err(e) => return Err(e),
            };
            match frame.tag {
                b'Z' => return Ok(()),
                b'd' | b'c' | b'C' | b'N' | b'S' => {
                    if frame.tag == b'C' {
                        self.command_complete = true;
                    }
                }
                b'E' => {
                    return match frame.message()? {
                        Message::ErrorResponse(e) => Err(ReplicationError::from_fields(e.fields())),
                        _ => Err(ReplicationError::Protocol("malformed ErrorResponse".into())),
                    }
                }
                other => {
                    return Err(ReplicationError::Protocol(format!(
                        "unexpected message of type {} while ending replication",
                        tag_name(other)
                    )))
                }
            }
        }
    }
}

/// What one frame of the CopyBoth phase means.
#[derive(Debug)]
enum Incoming {
    Message(ReplicationMessage),
    /// Notices and parameter changes.
    Nothing,
    /// The server sends no more data.
    CopyDone,
    /// The server finished the command.
    CommandComplete,
    /// The server is back in command mode.
    Ready,
}

fn classify(frame: Frame) -> Result<Incoming, ReplicationError> {
    match frame.tag {
        b'd' => parse_copy_data(frame.body).map(Incoming::Message),
        b'c' => Ok(Incoming::CopyDone),
        b'C' => Ok(Incoming::CommandComplete),
        b'Z' => Ok(Incoming::Ready),
        b'E' | b'N' | b'S' => match frame.message()? {
            Message::ErrorResponse(e) => Err(ReplicationError::from_fields(e.fields())),
            Message::NoticeResponse(n) => {
                tracing::debug!(notice = %notice_text(n.fields()), "server notice during replication");
                Ok(Incoming::Nothing)
            }
            _ => Ok(Incoming::Nothing),
        },
        other => Err(ReplicationError::Protocol(format!(
            "unexpected message of type {} during replication",
            tag_name(other)
        ))),
    }
}

/// Parses the payload of a CopyData frame from the server.
pub fn parse_copy_data(body: Bytes) -> Result<ReplicationMessage, ReplicationError> {
    let short = |what: &str| ReplicationError::Protocol(format!("{what} message of {} bytes is truncated", body.len()));
    match body.first() {
        Some(b'w') => {
            let (Some(wal_start), Some(wal_end), Some(send_time)) =
                (be_u64(&body, 1), be_u64(&body, 9), be_u64(&body, 17))
            else {
                return Err(short("XLogData"));
            };
            Ok(ReplicationMessage::XLogData {
                wal_start: Lsn(wal_start),
                wal_end: Lsn(wal_end),
                send_time_us: send_time as i64,
                data: body.slice(25..),
            })
        }
        Some(b'k') => {
            let (Some(wal_end), Some(send_time), Some(&reply)) = (be_u64(&body, 1), be_u64(&body, 9), body.get(17))
            else {
                return Err(short("keepalive"));
            };
            if body.len() != 18 {
                return Err(ReplicationError::Protocol(format!(
                    "keepalive message of {} bytes, expected 18",
                    body.len()
                )));
            }
            Ok(ReplicationMessage::KeepAlive {
                wal_end: Lsn(wal_end),
                send_time_us: send_time as i64,
                reply_requested: reply != 0,
            })
        }
        Some(&other) => {
            Err(ReplicationError::Protocol(format!("unknown replication message type {} in CopyData", tag_name(other))))
        }
        None => Err(ReplicationError::Protocol("empty CopyData message".into())),
    }
}

/// The standby status update payload ('r'), without the CopyData header.
pub fn encode_status(write: Lsn, flush: Lsn, apply: Lsn, now_us: i64, reply_requested: bool) -> [u8; 34] {
    let mut out = [0u8; 34];
    let mut buf = &mut out[..];
    buf.put_u8(b'r');
    buf.put_u64(write.0);
    buf.put_u64(flush.0);
    buf.put_u64(apply.0);
    buf.put_i64(now_us);
    buf.put_u8(u8::from(reply_requested));
    out
}

/// Now, in microseconds since 2000-01-01 UTC.
pub fn pg_now_us() -> i64 {
    let unix_us = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_micros() as i64).unwrap_or(0);
    unix_us - PG_EPOCH_OFFSET_US
}

fn be_u64(buf: &[u8], at: usize) -> Option<u64> {
    let bytes: [u8; 8] = buf.get(at..at.checked_add(8)?)?.try_into().ok()?;
    Some(u64::from_be_bytes(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::postgres::replication::framing::split_frame;
    use bytes::BytesMut;

    fn xlogdata(start: u64, end: u64, time: i64, data: &[u8]) -> Vec<u8> {
        let mut v = vec![b'w'];
        v.extend_from_slice(&start.to_be_bytes());
        v.extend_from_slice(&end.to_be_bytes());
        v.extend_from_slice(&time.to_be_bytes());
        v.extend_from_slice(data);
        v
    }

    fn keepalive(end: u64, time: i64, reply: u8) -> Vec<u8> {
        let mut v = vec![b'k'];
        v.extend_from_slice(&end.to_be_bytes());
        v.extend_from_slice(&time.to_be_bytes());
        v.push(reply);
        v
    }

    #[test]
    fn parses_xlogdata_zero_copy() {
        let body = Bytes::from(xlogdata(0x16_B374_D848, 0x16_B374_D900, 770_000_000_000_000, b"B\x00\x01"));
        let msg = parse_copy_data(body.clone()).unwrap();
        let ReplicationMessage::XLogData { wal_start, wal_end, send_time_us, data } = msg else { panic!("{msg:?}") };
        assert_eq!(wal_start.to_string(), "16/B374D848");
        assert_eq!(wal_end, Lsn(0x16_B374_D900));
        assert_eq!(send_time_us, 770_000_000_000_000);
        assert_eq!(&data[..], b"B\x00\x01");
        assert_eq!(data.as_ptr(), body[25..].as_ptr(), "payload must share the frame's memory");
        // An empty payload is legal.
        assert!(parse_copy_data(Bytes::from(xlogdata(1, 2, 3, b""))).is_ok());
    }

    #[test]
    fn parses_keepalive() {
        let msg = parse_copy_data(Bytes::from(keepalive(0x100, -5, 1))).unwrap();
        assert_eq!(msg, ReplicationMessage::KeepAlive { wal_end: Lsn(0x100), send_time_us: -5, reply_requested: true });
        let msg = parse_copy_data(Bytes::from(keepalive(7, 0, 0))).unwrap();
        assert!(matches!(msg, ReplicationMessage::KeepAlive { reply_requested: false, .. }));
    }

    #[test]
    fn truncated_and_unknown_copy_data_are_errors() {
        let w = xlogdata(1, 2, 3, b"");
        for cut in 0..w.len() {
            assert!(parse_copy_data(Bytes::copy_from_slice(&w[..cut])).is_err(), "xlogdata cut at {cut}");
        }
        let k = keepalive(1, 2, 0);
        for cut in 0..k.len() {
            assert!(parse_copy_data(Bytes::copy_from_slice(&k[..cut])).is_err(), "keepalive cut at {cut}");
        }
        let mut long = k.clone();
        long.push(0);
        assert!(parse_copy_data(Bytes::from(long)).is_err());
        let e = parse_copy_data(Bytes::from_static(b"zzzz")).unwrap_err();
        assert!(e.to_string().contains("'z'"), "{e}");
    }

    #[test]
    fn status_update_layout() {
        let s = encode_status(Lsn(1), Lsn(2), Lsn(3), 4, true);
        assert_eq!(s[0], b'r');
        assert_eq!(&s[1..9], &1u64.to_be_bytes());
        assert_eq!(&s[9..17], &2u64.to_be_bytes());
        assert_eq!(&s[17..25], &3u64.to_be_bytes());
        assert_eq!(&s[25..33], &4i64.to_be_bytes());
        assert_eq!(s[33], 1);
        // 2000-01-01 is the zero point; now is well after 2020 (20 years of microseconds).
        assert!(pg_now_us() > 20 * 365 * 86_400 * 1_000_000);
    }

    /// Deterministic garbage: whatever arrives, framing + parsing return values or errors and never panic.
    #[test]
    fn garbage_never_panics() {
        let mut seed: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut rand = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let valid: Vec<u8> = {
            let mut v = Vec::new();
            for body in [xlogdata(1, 2, 3, b"payload"), keepalive(9, 9, 1)] {
                v.push(b'd');
                v.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
                v.extend_from_slice(&body);
            }
            v
        };
        for round in 0..5000 {
            let mut bytes = if round % 2 == 0 { valid.clone() } else { Vec::new() };
            let n = (rand() % 64) as usize;
            for _ in 0..n {
                let r = rand();
                if bytes.is_empty() || r % 3 == 0 {
                    bytes.push((r >> 8) as u8);
                } else {
                    let i = (r >> 16) as usize % bytes.len();
                    bytes[i] = (r >> 24) as u8;
                }
            }
            let mut buf = BytesMut::from(&bytes[..]);
            while let Ok(Some(frame)) = split_frame(&mut buf) {
                let _ = parse_copy_data(frame.body.clone());
                let _ = classify(frame);
            }
        }
    }
}
