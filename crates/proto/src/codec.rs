//! The tokio-util adapter: a thin `Decoder`/`Encoder` over the sans-IO frame functions.

use bytes::BytesMut;
use tokio_util::codec::{Decoder, Encoder};

use crate::error::FrameError;
use crate::frame::{decode_frame, Frame};
use crate::message::Message;

/// Why a framed connection failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CodecError {
    /// The peer sent bytes that are not a valid frame; answer with an error and close.
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// The socket failed.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Frames in, frames (or messages) out. The length limit is enforced before the body of a
/// frame is buffered.
#[derive(Debug, Clone, Copy)]
pub struct FrameCodec {
    max_frame_len: u32,
}

impl FrameCodec {
    /// A codec that rejects frames longer than `max_frame_len`.
    pub fn new(max_frame_len: u32) -> FrameCodec {
        FrameCodec { max_frame_len }
    }
}

impl Decoder for FrameCodec {
    type Item = Frame;
    type Error = CodecError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, CodecError> {
        Ok(decode_frame(src, self.max_frame_len)?)
    }
}

impl<M: Message> Encoder<(u64, M)> for FrameCodec {
    type Error = CodecError;

    fn encode(&mut self, (request_id, msg): (u64, M), dst: &mut BytesMut) -> Result<(), CodecError> {
        msg.encode_frame(request_id, dst);
        Ok(())
    }
}
