//! The checks of the `replication_framing` fuzz target, shared with the seed replay of `cargo test`
//! (tests/fuzz_seeds.rs, which includes this file). The input is a stream of bytes as
//! received from the server's socket, which may contain any number of frames, garbage, or a partial frame.
//!
//! The first input byte picks how the stream arrives (all at once, or in chunks of 1..=255 bytes, as
//! `Conn::fill` would append them); the rest is the stream. Frames are cut with `split_frame` exactly as
//! `Conn::read_frame` does. Every frame goes through `Frame::message()` and the field walks of the command-mode
//! readers (`fuzzing::server_message`); every CopyData ('d') frame also through `parse_copy_data` (XLogData 'w',
//! keepalive 'k'), and every XLogData payload through the pgoutput decoder.
//!
//! Contract checked (src/postgres/replication/framing.rs and stream.rs, "Guarantees"): no panic, no endless
//! loop, no unbounded allocation (a frame's declared length is capped at `MAX_FRAME`, 1 GiB, and `split_frame`
//! reserves at most 1 MiB ahead of the bytes that arrived for a partial frame: scripts/fuzz.sh runs this target
//! with `-malloc_limit_mb=64`, so an up-front reservation of the declared length is an out-of-memory crash).
//! Additionally:
//! - a complete frame is cut exactly: body length + 4 = the declared length, and exactly 5 + body bytes leave
//!   the buffer; the body is the bytes of the stream at that position;
//! - `Ok(None)` leaves the buffered bytes untouched, and unconsumed bytes are never altered; after an error the
//!   stream is abandoned (as ficus does);
//! - the XLogData payload is a zero-copy slice of the frame body (its last body.len() - 25 bytes).

use bytes::BytesMut;
use ficus::postgres::pgoutput;
use ficus::postgres::replication::fuzzing::{parse_copy_data, server_message, split_frame, Frame, MAX_FRAME};
use ficus::postgres::replication::ReplicationMessage;

/// One input through the framing and the parsers, with the checks; returns how many frames were cut (the replay
/// test holds the seeds to at least one each).
pub fn run(data: &[u8]) -> usize {
    let Some((&chunk, stream)) = data.split_first() else { return 0 };
    let chunk = if chunk == 0 { stream.len().max(1) } else { usize::from(chunk) };

    let mut buf = BytesMut::new();
    // Invariant: buf == stream[consumed..fed] (what has arrived and not been cut off yet).
    let (mut consumed, mut fed) = (0usize, 0usize);
    let mut frames = 0;
    for piece in stream.chunks(chunk) {
        buf.extend_from_slice(piece);
        fed += piece.len();
        loop {
            let before = buf.len();
            assert_eq!(before, fed - consumed);
            match split_frame(&mut buf) {
                Ok(Some(frame)) => {
                    let header = &stream[consumed..consumed + 5];
                    let declared = u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
                    assert_eq!(frame.tag, header[0]);
                    assert_eq!(frame.body.len() + 4, declared, "body length does not match the declared length");
                    assert!(declared <= MAX_FRAME);
                    assert_eq!(before - buf.len(), 5 + frame.body.len(), "the buffer lost or kept extra bytes");
                    assert_eq!(&frame.body[..], &stream[consumed + 5..consumed + 5 + frame.body.len()]);
                    consumed += 5 + frame.body.len();
                    frames += 1;
                    handle(frame);
                }
                Ok(None) => {
                    assert_eq!(buf.len(), before, "an incomplete frame changed the buffer");
                    break;
                }
                // A framing error ends the connection.
                Err(e) => {
                    drop(e.to_string());
                    return frames;
                }
            }
        }
    }
    // Nothing left over was altered (checked once: per call it would be quadratic).
    assert_eq!(&buf[..], &stream[consumed..], "buffered bytes were altered");
    frames
}

fn handle(frame: Frame) {
    if let Err(e) = server_message(&frame) {
        drop(e.to_string());
    }
    if frame.tag != b'd' {
        return;
    }
    match parse_copy_data(frame.body.clone()) {
        Ok(ReplicationMessage::XLogData { data, .. }) => {
            assert_eq!(frame.body.first(), Some(&b'w'));
            assert_eq!(data.len() + 25, frame.body.len());
            assert_eq!(data.as_ptr_range().end, frame.body.as_ptr_range().end, "XLogData payload was copied");
            if let Err(e) = pgoutput::decode(data) {
                drop(e.to_string());
            }
        }
        Ok(ReplicationMessage::KeepAlive { .. }) => {
            assert_eq!(frame.body.first(), Some(&b'k'));
            assert_eq!(frame.body.len(), 18);
        }
        Err(e) => drop(e.to_string()),
    }
}
