//! The sessync wire protocol, sans-IO: framing, client and peer messages, the error code
//! table, signed tokens and the peer handshake. No sockets and no runtime here, so every
//! piece can be tested and fuzzed on plain bytes; the optional `codec` feature adds a
//! tokio-util adapter for the network.
//!
//! `protocol.md` at the repository root is the normative description of these bytes; its
//! hex examples are decoded by this crate's tests so the two cannot drift apart.

mod client;
#[cfg(feature = "codec")]
mod codec;
mod error;
mod frame;
#[cfg(feature = "fuzzing")]
pub mod fuzzing;
mod handshake;
mod keys;
mod limits;
mod message;
mod peer;
mod session;
mod token;
mod wire;
pub use wire::put_addr;

pub use client::{
    encode_session_reply, encode_session_reply_with, op as client_op, set_session_reply_token, ErrorReply,
    MemberInfo, MemberState, Request, Response, SessionReply,
};
#[cfg(feature = "codec")]
pub use codec::{CodecError, FrameCodec};
pub use error::{DecodeError, ErrorCode, FrameError};
pub use frame::{
    check_frame, decode_frame, decode_frame_slice, write_frame, Frame, CRC_LEN, HEADER_LEN,
    LENGTH_PREFIX_LEN, MIN_FRAME_LEN, PROTOCOL_VERSION,
};
pub use handshake::{
    Acceptor, Dialler, HandshakeError, PeerIdentity, BINDING_LABEL, BINDING_LEN, MAX_HANDSHAKE_FRAME_LEN,
};
pub use keys::{KeyError, Keyring, MIN_SECRET_LEN};
pub use limits::Limits;
pub use message::{Message, OP_ERROR};
pub use peer::{
    feature as peer_feature, op as peer_op, ClaimBase, PeerMessage, Role, MAX_ACKS, MAX_HOLDERS, MAX_IDS,
    NONCE_LEN, PROOF_LEN,
};
#[cfg(feature = "testing")]
pub use session::sim_ids;
pub use session::{Attributes, PackedAttributes, SessionId, SessionMeta, SessionRecord};
pub use token::{Token, TokenError, MAX_BACKUPS, MAX_TOKEN_STR_LEN, TAG_LEN, TOKEN_VERSION};
