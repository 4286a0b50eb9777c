//! Framing: one layout for client and peer traffic.
//!
//! # Format
//! ```text
//! offset  size  field
//! 0       4     length L, u32 big-endian: the bytes that follow (header + body + CRC)
//! 4       1     protocol version (1)
//! 5       1     opcode
//! 6       2     flags, u16 big-endian; reserved, MUST be 0 in version 1
//! 8       8     request id, u64 big-endian; a reply echoes its request's id
//! 16      L-16  body (layout per opcode, see the message types)
//! 4+L-4   4     CRC32 (IEEE) of bytes 4 .. 4+L-4, i.e. header and body, u32 big-endian
//! ```
//! 16 <= L <= the receiver's maximum frame length. The receiver checks L as soon as the
//! four length bytes arrive, before buffering any of the body.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::error::FrameError;

/// The protocol version this crate speaks, carried in every frame header.
pub const PROTOCOL_VERSION: u8 = 1;
/// Bytes in the length prefix.
pub const LENGTH_PREFIX_LEN: usize = 4;
/// Bytes in the header: version, opcode, flags, request id.
pub const HEADER_LEN: usize = 12;
/// Bytes in the CRC trailer.
pub const CRC_LEN: usize = 4;
/// The smallest legal value of the length prefix: a header and a CRC, no body.
pub const MIN_FRAME_LEN: u32 = (HEADER_LEN + CRC_LEN) as u32;
/// Most bytes [`decode_frame`] reserves ahead of data that has not arrived yet.
const RESERVE_STEP: usize = 64 * 1024;

/// A decoded frame: the header fields a dispatcher needs and the still-undecoded body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// What the body is (see the message types for the table).
    pub opcode: u8,
    /// Chosen by the requester; echoed by the reply so replies can come in any order.
    pub request_id: u64,
    /// The message body, CRC already verified.
    pub body: Bytes,
}

/// Looks at the start of `buf` and says how long the first frame is, without consuming it.
///
/// Returns `Ok(None)` when more bytes are needed, `Ok(Some(n))` when the first `n` bytes
/// hold a whole frame (not yet CRC-checked), and `Err` as soon as the length prefix alone
/// proves the input invalid. It never reads past `buf` and never allocates.
pub fn check_frame(buf: &[u8], max_frame_len: u32) -> Result<Option<usize>, FrameError> {
    if buf.len() < LENGTH_PREFIX_LEN {
        return Ok(None);
    }
    let len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]);
    if len > max_frame_len {
        return Err(FrameError::TooLarge {
            len: u64::from(len),
            max: max_frame_len,
        });
    }
    if len < MIN_FRAME_LEN {
        return Err(FrameError::TooShort(len));
    }
    let total = LENGTH_PREFIX_LEN + len as usize;
    Ok((buf.len() >= total).then_some(total))
}

/// Verifies the CRC, version and flags of one complete frame (as measured by
/// [`check_frame`]) and splits it into its parts. `raw` is exactly one frame.
fn parse_complete(raw: Bytes) -> Result<Frame, FrameError> {
    let crc_at = raw.len() - CRC_LEN;
    let covered = &raw[LENGTH_PREFIX_LEN..crc_at];
    let expected = u32::from_be_bytes([raw[crc_at], raw[crc_at + 1], raw[crc_at + 2], raw[crc_at + 3]]);
    let actual = crc32fast::hash(covered);
    if expected != actual {
        return Err(FrameError::BadCrc { expected, actual });
    }
    let mut header = &raw[LENGTH_PREFIX_LEN..LENGTH_PREFIX_LEN + HEADER_LEN];
    let version = header.get_u8();
    let opcode = header.get_u8();
    let flags = header.get_u16();
    let request_id = header.get_u64();
    if version != PROTOCOL_VERSION {
        return Err(FrameError::UnsupportedVersion(version));
    }
    if flags != 0 {
        return Err(FrameError::ReservedFlags(flags));
    }
    let body = raw.slice(LENGTH_PREFIX_LEN + HEADER_LEN..crc_at);
    Ok(Frame {
        opcode,
        request_id,
        body,
    })
}

/// Takes the first whole frame off the front of `buf`.
///
/// `Ok(None)`: need more bytes (nothing consumed). `Ok(Some(frame))`: one frame consumed.
/// `Err`: the stream is invalid and the connection should get an error frame and close.
/// Only a frame whose length passed the limit is ever split off, so memory stays bounded.
pub fn decode_frame(buf: &mut BytesMut, max_frame_len: u32) -> Result<Option<Frame>, FrameError> {
    match check_frame(buf, max_frame_len)? {
        None => {
            // Reserve for the rest of the announced frame, but at most RESERVE_STEP at a
            // time: memory follows the bytes that actually arrive, so a peer that announces
            // a large frame and sends nothing costs no more than a small one.
            if buf.len() >= LENGTH_PREFIX_LEN {
                let len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
                let missing = (LENGTH_PREFIX_LEN + len).saturating_sub(buf.len());
                buf.reserve(missing.min(RESERVE_STEP));
            }
            Ok(None)
        }
        Some(total) => parse_complete(buf.split_to(total).freeze()).map(Some),
    }
}

/// Decodes the first frame of a byte slice, copying it; returns the frame and the bytes used.
/// Convenient for tests, fuzzing and tools; servers use [`decode_frame`].
pub fn decode_frame_slice(buf: &[u8], max_frame_len: u32) -> Result<Option<(Frame, usize)>, FrameError> {
    match check_frame(buf, max_frame_len)? {
        None => Ok(None),
        Some(total) => parse_complete(Bytes::copy_from_slice(&buf[..total])).map(|f| Some((f, total))),
    }
}

/// Appends one frame to `out`: writes the header, lets `body` append the body, then
/// fills in the length and the CRC. The body is written in place, never copied.
pub fn write_frame(out: &mut BytesMut, opcode: u8, request_id: u64, body: impl FnOnce(&mut BytesMut)) {
    let start = out.len();
    out.put_u32(0);
    out.put_u8(PROTOCOL_VERSION);
    out.put_u8(opcode);
    out.put_u16(0);
    out.put_u64(request_id);
    body(out);
    let crc = crc32fast::hash(&out[start + LENGTH_PREFIX_LEN..]);
    out.put_u32(crc);
    let len = (out.len() - start - LENGTH_PREFIX_LEN) as u32;
    out[start..start + LENGTH_PREFIX_LEN].copy_from_slice(&len.to_be_bytes());
}
