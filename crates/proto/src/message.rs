//! What every message type has in common: an opcode, a body encoding and a decoder.

use bytes::{Bytes, BytesMut};

use crate::error::DecodeError;
use crate::frame::{write_frame, Frame};
use crate::limits::Limits;

/// A set of messages that share a port and direction (client requests, client replies,
/// peer messages). Decoding never panics and checks every length against `limits`.
pub trait Message: Sized {
    /// The opcode this message is sent under.
    fn opcode(&self) -> u8;
    /// Appends the body (without frame header or CRC).
    fn encode_body(&self, out: &mut BytesMut);
    /// Decodes a body received under `opcode`.
    fn decode_body(opcode: u8, body: &Bytes, limits: &Limits) -> Result<Self, DecodeError>;

    /// Appends this message as a complete frame.
    fn encode_frame(&self, request_id: u64, out: &mut BytesMut) {
        write_frame(out, self.opcode(), request_id, |b| self.encode_body(b));
    }

    /// Decodes the message carried by a frame.
    fn decode_frame(frame: &Frame, limits: &Limits) -> Result<Self, DecodeError> {
        Self::decode_body(frame.opcode, &frame.body, limits)
    }
}

/// The ERROR frame's opcode, shared by both ports and both directions.
pub const OP_ERROR: u8 = 0xFF;
