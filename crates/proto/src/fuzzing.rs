//! Fuzz entry points: the logic behind every `fuzz/fuzz_targets/*` shim, compiled only with
//! the `fuzzing` feature (which `fuzz/Cargo.toml` and this crate's own tests turn on).
//!
//! Each function takes the fuzzer's bytes and panics when a property of the codec does not
//! hold; nothing else counts as a finding (errors are the expected answer to most input).
//! The same functions replay the committed corpus in `cargo test`
//! (`tests/fuzz_corpus.rs`), so a finding, once its input is in the corpus, stays fixed.
//!
//! Input layouts (chosen so that the seeds built from protocol.md are short and the fuzzer
//! does not have to guess CRCs to get past the framing):
//!
//! | target | input |
//! |---|---|
//! | [`frame`], [`round_trip`] | a byte stream of frames, as on a socket |
//! | [`client_request`], [`client_response`], [`peer_message`] | opcode byte, then a body; the harness frames it with a correct CRC |
//! | [`token`] | a token string; the same bytes are also signed as an unsigned binary token |
//! | [`chunking`] | `n` (low 4 bits of byte 0), `n` chunk sizes, then the stream; `n` = 0 feeds one byte at a time |

use std::fmt::Debug;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use bytes::{BufMut, BytesMut};
use hmac::Mac;

use crate::client::{Request, Response};
use crate::error::{DecodeError, FrameError};
use crate::frame::{check_frame, decode_frame, decode_frame_slice, write_frame, Frame, LENGTH_PREFIX_LEN};
use crate::keys::Keyring;
use crate::limits::Limits;
use crate::message::Message;
use crate::peer::PeerMessage;
use crate::session::Attributes;
use crate::token::{Token, TokenError, MAX_BACKUPS, MAX_TOKEN_STR_LEN, TAG_LEN};

/// A fuzz entry point: takes the fuzzer's bytes, panics on a finding.
pub type Target = fn(&[u8]);

/// Every target of this module by its cargo-fuzz name, for corpus replay.
pub const TARGETS: &[(&str, Target)] = &[
    ("frame", frame),
    ("client_request", client_request),
    ("client_response", client_response),
    ("peer_message", peer_message),
    ("token", token),
    ("round_trip", round_trip),
    ("chunking", chunking),
];

/// The secret the token target's keyring holds under key ids 0 and 1: protocol.md's example
/// secret, so the document's token examples verify and make good seeds.
pub const TOKEN_SECRET: &[u8] = b"sessync-docs-example-secret-0001";
/// A second secret, under key id 7, that no seed is signed with.
const OTHER_SECRET: &[u8] = b"an-unrelated-secret-for-key-id-7";

/// The frame limit of the "tight" passes: small enough that the fuzzer meets it often.
const TIGHT_FRAME: u32 = 48;
/// Limits small enough that random input runs into every one of them.
const TIGHT: Limits = Limits {
    max_frame_len: 4096,
    max_attributes: 3,
    max_name_len: 5,
    max_value_len: 9,
    max_token_len: 60,
    max_text_len: 7,
};
/// The request id the message targets frame their bodies with.
const REQUEST_ID: u64 = 0x0102_0304_0506_0708;

// ---------------------------------------------------------------------------------------
// Framing
// ---------------------------------------------------------------------------------------

/// `decode_frame_slice` and `decode_frame` (on a `BytesMut`) agree on every frame of the
/// stream, on "need more" and on the error; a decoded frame is exactly what its bytes say
/// and `write_frame` rebuilds those bytes; "need more" never reserves memory out of
/// proportion to the bytes that arrived, whatever length the prefix announces.
pub fn frame(data: &[u8]) {
    for max in [Limits::DEFAULT.max_frame_len, TIGHT_FRAME] {
        frame_with(data, max);
    }
}

fn frame_with(data: &[u8], max: u32) {
    let mut buf = BytesMut::from(data);
    let mut off = 0;
    // Every turn consumes a whole frame (at least 20 bytes) or returns.
    loop {
        let rest = &data[off..];
        let checked = check_frame(rest, max);
        let sliced = decode_frame_slice(rest, max);
        let before = buf.len();
        let owned = decode_frame(&mut buf, max);
        assert_eq!(before, rest.len(), "the owned buffer drifted from the slice");
        match (sliced, owned) {
            (Ok(None), Ok(None)) => {
                assert_eq!(checked, Ok(None));
                assert_eq!(buf.len(), before, "need-more consumed bytes");
                assert_eq!(&buf[..], rest, "need-more changed the buffer");
                assert!(
                    buf.capacity() <= 2 * data.len() + 4 * 64 * 1024,
                    "need-more reserved {} bytes for {} bytes of input",
                    buf.capacity(),
                    data.len()
                );
                return;
            }
            (Ok(Some((f, used))), Ok(Some(g))) => {
                assert_eq!(f, g, "slice and buffer decoders disagree");
                assert_eq!(checked, Ok(Some(used)));
                assert_eq!(before - buf.len(), used, "consumed a different length");
                check_decoded_frame(&f, &rest[..used], max);
                off += used;
            }
            (Err(e), Err(e2)) => {
                assert_eq!(e, e2, "slice and buffer decoders give different errors");
                check_frame_error(&e, rest, max, &checked);
                return;
            }
            (s, o) => panic!("slice decoder says {s:?}, buffer decoder says {o:?}"),
        }
    }
}

/// A frame that decoded is the bytes it came from, field by field.
fn check_decoded_frame(f: &Frame, raw: &[u8], max: u32) {
    let len = u32::from_be_bytes([raw[0], raw[1], raw[2], raw[3]]);
    assert!(
        len <= max && len >= crate::frame::MIN_FRAME_LEN,
        "accepted length {len}"
    );
    assert_eq!(raw.len(), LENGTH_PREFIX_LEN + len as usize);
    assert_eq!(raw[4], crate::frame::PROTOCOL_VERSION);
    assert_eq!(f.opcode, raw[5]);
    assert_eq!(&raw[6..8], &[0, 0], "accepted reserved flags");
    assert_eq!(f.request_id.to_be_bytes(), raw[8..16]);
    assert_eq!(&f.body[..], &raw[16..raw.len() - 4]);
    let mut out = BytesMut::new();
    write_frame(&mut out, f.opcode, f.request_id, |b| b.put_slice(&f.body));
    assert_eq!(&out[..], raw, "write_frame does not rebuild an accepted frame");
}

/// An error is the one the first bad field of the frame calls for (protocol.md 2.3 order).
fn check_frame_error(e: &FrameError, rest: &[u8], max: u32, checked: &Result<Option<usize>, FrameError>) {
    let len = u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]);
    match e {
        FrameError::TooLarge { len: l, max: m } => {
            assert!(*l == u64::from(len) && len > max && *m == max);
            assert_eq!(checked.as_ref(), Err(e));
        }
        FrameError::TooShort(l) => {
            assert!(*l == len && len < crate::frame::MIN_FRAME_LEN && len <= max);
            assert_eq!(checked.as_ref(), Err(e));
        }
        FrameError::BadCrc { expected, actual } => {
            let end = LENGTH_PREFIX_LEN + len as usize;
            assert_eq!(*actual, crc32fast::hash(&rest[LENGTH_PREFIX_LEN..end - 4]));
            assert_eq!(expected.to_be_bytes(), rest[end - 4..end]);
            assert_ne!(expected, actual);
        }
        FrameError::UnsupportedVersion(v) => {
            assert!(*v == rest[4] && *v != crate::frame::PROTOCOL_VERSION);
        }
        FrameError::ReservedFlags(flags) => {
            assert!(rest[4] == crate::frame::PROTOCOL_VERSION && *flags != 0);
            assert_eq!(flags.to_be_bytes(), rest[6..8]);
        }
    }
}

/// The same stream fed in pieces (split where the input says) and fed whole gives the same
/// frames, then the same error or the same leftover bytes.
pub fn chunking(data: &[u8]) {
    let Some((&head, rest)) = data.split_first() else {
        return;
    };
    let n = usize::from(head & 0x0f).min(rest.len());
    let (sizes, stream) = rest.split_at(n);
    for max in [Limits::DEFAULT.max_frame_len, TIGHT_FRAME] {
        let whole = drain_whole(stream, max);
        let pieces = drain_in_pieces(stream, sizes, max);
        assert_eq!(
            whole, pieces,
            "feeding in pieces changed the outcome (sizes {sizes:?})"
        );
    }
}

/// What a receiver made of a stream: the frames, then how it stopped.
#[derive(Debug, PartialEq, Eq)]
struct Drained {
    frames: Vec<Frame>,
    error: Option<FrameError>,
    /// Bytes still buffered when no error stopped the stream.
    leftover: Vec<u8>,
}

fn drain_whole(stream: &[u8], max: u32) -> Drained {
    let mut buf = BytesMut::from(stream);
    let mut frames = Vec::new();
    let error = drain(&mut buf, max, &mut frames).err();
    Drained {
        frames,
        leftover: if error.is_none() { buf.to_vec() } else { Vec::new() },
        error,
    }
}

/// Decodes every frame the buffer holds; stops at "need more" or at an error.
fn drain(buf: &mut BytesMut, max: u32, frames: &mut Vec<Frame>) -> Result<(), FrameError> {
    while let Some(f) = decode_frame(buf, max)? {
        frames.push(f);
    }
    Ok(())
}

fn drain_in_pieces(stream: &[u8], sizes: &[u8], max: u32) -> Drained {
    let mut buf = BytesMut::new();
    let mut frames = Vec::new();
    // Zero-sized pieces re-poll the decoder without new bytes; if every size is zero the
    // stream goes in one byte at a time instead, so that it is fed at all.
    let all_zero = sizes.iter().all(|&s| s == 0);
    let mut at = 0;
    for i in 0.. {
        if let Err(e) = drain(&mut buf, max, &mut frames) {
            return Drained {
                frames,
                error: Some(e),
                leftover: Vec::new(),
            };
        }
        if at == stream.len() {
            break;
        }
        let size = if all_zero {
            1
        } else {
            usize::from(sizes[i % sizes.len()])
        };
        let end = (at + size).min(stream.len());
        buf.extend_from_slice(&stream[at..end]);
        at = end;
    }
    Drained {
        frames,
        error: None,
        leftover: buf.to_vec(),
    }
}

// ---------------------------------------------------------------------------------------
// Messages
// ---------------------------------------------------------------------------------------

/// Client request parsing: opcode byte + body, framed by the harness.
pub fn client_request(data: &[u8]) {
    message::<Request>(data, is_client_request);
}

/// Client response parsing: opcode byte + body, framed by the harness.
pub fn client_response(data: &[u8]) {
    message::<Response>(data, is_client_response);
}

/// Peer message parsing: opcode byte + body, framed by the harness.
pub fn peer_message(data: &[u8]) {
    message::<PeerMessage>(data, is_peer);
}

fn is_client_request(op: u8) -> bool {
    (crate::client::op::HELLO..=crate::client::op::DRAIN).contains(&op)
}

fn is_client_response(op: u8) -> bool {
    (crate::client::op::HELLO_OK..=crate::client::op::MEMBERS_REPLY).contains(&op) || op == crate::OP_ERROR
}

fn is_peer(op: u8) -> bool {
    (crate::peer::op::AUTH_HELLO..=crate::peer::op::REPLICATE_CLAIM).contains(&op)
        || (crate::peer::op::AUTH_CHALLENGE..=crate::peer::op::FEATURES_ARE).contains(&op)
        || op == crate::OP_ERROR
}

/// Frames `opcode + body` with a correct CRC, decodes the frame, then checks the message.
fn message<M: Checked>(data: &[u8], known: fn(u8) -> bool) {
    let Some((&opcode, body)) = data.split_first() else {
        return;
    };
    let mut raw = BytesMut::new();
    write_frame(&mut raw, opcode, REQUEST_ID, |b| b.put_slice(body));
    let max = Limits::DEFAULT.max_frame_len;
    let frame = match decode_frame_slice(&raw, max) {
        Ok(Some((f, used))) => {
            assert_eq!(used, raw.len());
            f
        }
        Err(FrameError::TooLarge { .. }) if raw.len() - LENGTH_PREFIX_LEN > max as usize => return,
        other => panic!("a frame written by write_frame does not decode: {other:?}"),
    };
    check_message::<M>(&frame, &raw, known);
}

/// The properties every decoded message has:
/// - an opcode this side does not know is `UnknownOpcode`, and only such an opcode is;
/// - whatever decodes re-encodes to exactly the frame it came from (one encoding per value);
/// - whatever decodes under tight limits stays within them, and decodes to the same value
///   under the default limits (limits only ever reject).
fn check_message<M: Checked>(frame: &Frame, raw: &[u8], known: fn(u8) -> bool) {
    let default = M::decode_frame(frame, &Limits::DEFAULT);
    match &default {
        Ok(m) => {
            assert!(
                known(frame.opcode),
                "decoded an unknown opcode {:#04x}: {m:?}",
                frame.opcode
            );
            assert_eq!(m.opcode(), frame.opcode, "decoded {m:?} under another opcode");
            m.within(&Limits::DEFAULT);
            let mut out = BytesMut::new();
            m.encode_frame(frame.request_id, &mut out);
            assert_eq!(&out[..], raw, "{m:?} re-encodes differently");
        }
        Err(DecodeError::UnknownOpcode(op)) => {
            assert_eq!(*op, frame.opcode);
            assert!(!known(*op), "known opcode {op:#04x} reported as unknown");
        }
        Err(_) => assert!(
            known(frame.opcode),
            "unknown opcode {:#04x} not reported as such",
            frame.opcode
        ),
    }
    if let Ok(m) = M::decode_frame(frame, &TIGHT) {
        m.within(&TIGHT);
        assert_eq!(
            default.as_ref().ok(),
            Some(&m),
            "tight limits accepted what the defaults did not"
        );
    }
}

/// Encode/decode round trip over a raw stream of frames: every frame that decodes, and
/// every message that decodes from it as a client request, client response or peer
/// message, re-encodes to exactly its bytes. Then the same again with each frame's CRC
/// repaired, so that the fuzzer's mutations of bodies are not all stopped by the CRC.
pub fn round_trip(data: &[u8]) {
    round_trip_stream(data);
    let mut repaired = data.to_vec();
    let mut off = 0;
    while let Ok(Some(n)) = check_frame(&repaired[off..], Limits::DEFAULT.max_frame_len) {
        let crc = crc32fast::hash(&repaired[off + LENGTH_PREFIX_LEN..off + n - 4]);
        repaired[off + n - 4..off + n].copy_from_slice(&crc.to_be_bytes());
        off += n;
    }
    if repaired != data {
        round_trip_stream(&repaired);
    }
}

fn round_trip_stream(data: &[u8]) {
    let mut off = 0;
    loop {
        let Ok(Some((frame, used))) = decode_frame_slice(&data[off..], Limits::DEFAULT.max_frame_len) else {
            return;
        };
        let raw = &data[off..off + used];
        check_decoded_frame(&frame, raw, Limits::DEFAULT.max_frame_len);
        check_message::<Request>(&frame, raw, is_client_request);
        check_message::<Response>(&frame, raw, is_client_response);
        check_message::<PeerMessage>(&frame, raw, is_peer);
        off += used;
    }
}

/// A decodable message that can say whether it keeps within limits.
trait Checked: Message + Debug + PartialEq {
    /// Panics if any string, value or count in the message is over `limits`.
    fn within(&self, limits: &Limits);
}

fn text_within(what: &str, s: &str, max: usize) {
    assert!(
        s.len() <= max,
        "{what} of {} bytes passed the limit {max}",
        s.len()
    );
}

fn attributes_within(a: &Attributes, limits: &Limits) {
    assert!(
        a.len() <= limits.max_attributes,
        "{} attributes passed the limit",
        a.len()
    );
    for (k, v) in a {
        text_within("attribute name", k, limits.max_name_len);
        assert!(
            v.len() <= limits.max_value_len,
            "value of {} bytes passed the limit",
            v.len()
        );
    }
}

fn names_within(names: &[String], limits: &Limits) {
    assert!(
        names.len() <= limits.max_attributes,
        "{} names passed the limit",
        names.len()
    );
    for n in names {
        text_within("name", n, limits.max_name_len);
    }
}

impl Checked for Request {
    fn within(&self, l: &Limits) {
        match self {
            Request::Hello {
                client_name,
                password,
                ..
            } => {
                text_within("client name", client_name, l.max_text_len);
                if let Some(p) = password {
                    text_within("password", p, l.max_text_len);
                }
            }
            Request::Ping(p) => assert!(p.len() <= l.max_value_len),
            Request::Create { attributes, .. } => attributes_within(attributes, l),
            Request::Get { token, names } => {
                text_within("token", token, l.max_token_len);
                names_within(names, l);
            }
            Request::Set {
                token, puts, deletes, ..
            } => {
                text_within("token", token, l.max_token_len);
                attributes_within(puts, l);
                names_within(deletes, l);
            }
            Request::Touch { token } | Request::Rotate { token } | Request::Destroy { token } => {
                text_within("token", token, l.max_token_len)
            }
            Request::Stats | Request::Members | Request::Drain => {}
        }
    }
}

impl Checked for Response {
    fn within(&self, l: &Limits) {
        match self {
            Response::HelloOk { server_name, .. } => text_within("server name", server_name, l.max_text_len),
            Response::Pong(p) => assert!(p.len() <= l.max_value_len),
            Response::Session(s) => {
                if let Some(t) = &s.token {
                    text_within("token", t, l.max_token_len);
                }
                attributes_within(&s.attributes, l);
            }
            Response::Done | Response::Members(_) => {}
            Response::Stats(counters) => {
                for (name, _) in counters {
                    text_within("stat name", name, l.max_text_len);
                }
            }
            Response::Error(e) => text_within("error message", &e.message, l.max_text_len),
        }
    }
}

impl Checked for PeerMessage {
    fn within(&self, l: &Limits) {
        match self {
            PeerMessage::CopyData { record, .. }
            | PeerMessage::Replicate { record, .. }
            | PeerMessage::ReplicateClaim { record, .. } => attributes_within(&record.attributes.unpack(), l),
            PeerMessage::Error(e) => text_within("error message", &e.message, l.max_text_len),
            PeerMessage::CopyAcks { acks } => {
                assert!(
                    (1..=crate::peer::MAX_ACKS).contains(&acks.len()),
                    "{} acks",
                    acks.len()
                )
            }
            _ => {}
        }
    }
}

// ---------------------------------------------------------------------------------------
// Tokens
// ---------------------------------------------------------------------------------------

fn ring(current: u8) -> Keyring {
    // Fixed, valid input: this cannot fail, and a fuzz build may panic if it ever did.
    #[allow(clippy::expect_used)]
    Keyring::new(current, [(0, TOKEN_SECRET), (1, TOKEN_SECRET), (7, OTHER_SECRET)])
        .expect("the fuzzing keyring is valid")
}

/// Token decode and verify with a fixed keyring.
///
/// 1. The bytes as a token string: verification never panics; a token that verifies is
///    within the layout's bounds, re-signs to exactly the same string (each token has one
///    string form) and does not verify under another secret.
/// 2. The bytes as an unsigned binary token, signed here with the right key: the MAC then
///    verifies, so the result is decided by the strict field parsing after it, and again
///    whatever verifies re-signs to the same string.
pub fn token(data: &[u8]) {
    let keys = ring(0);
    if let Ok(s) = std::str::from_utf8(data) {
        check_token_string(s, &keys, false);
    }
    if data.len() >= 2 {
        let mut raw = data.to_vec();
        if let Some(mut mac) = keys.mac(data[1]) {
            mac.update(data);
            raw.extend_from_slice(&mac.finalize().into_bytes()[..TAG_LEN]);
            check_token_string(&URL_SAFE_NO_PAD.encode(&raw), &keys, true);
        }
    }
}

fn check_token_string(s: &str, keys: &Keyring, signed_here: bool) {
    let verdict = Token::verify(s, keys);
    let raw = URL_SAFE_NO_PAD.decode(s).ok();
    match &verdict {
        Ok(t) => {
            assert!(s.len() <= MAX_TOKEN_STR_LEN);
            assert!(t.backups.len() <= MAX_BACKUPS);
            let key_id = raw.as_ref().map(|r| r[1]).unwrap_or_default();
            if raw.as_ref().map(|r| r[0]) == Some(crate::token::TOKEN_VERSION) {
                assert_eq!(
                    t.sign(&ring(key_id)),
                    s,
                    "a verified token does not re-sign to itself"
                );
            } else {
                // A version-1 token (still read) re-signs in the current layout.
                assert_eq!(t.generation, 0, "a version-1 token has no generation");
            }
            let stranger = Keyring::single(b"a-secret-the-token-never-saw!!!!");
            if let Ok(stranger) = stranger {
                assert!(
                    Token::verify(s, &stranger).is_err(),
                    "verified under the wrong secret"
                );
            }
        }
        Err(TokenError::BadSignature) => assert!(!signed_here, "a correctly signed token failed its MAC"),
        Err(TokenError::UnknownKey(id)) => assert!(keys.mac(*id).is_none()),
        Err(TokenError::UnsupportedVersion(v)) => assert_ne!(*v, crate::token::TOKEN_VERSION),
        Err(_) => {}
    }
    if s.len() > MAX_TOKEN_STR_LEN {
        assert_eq!(
            verdict,
            Err(TokenError::Malformed),
            "an over-long string got past the length check"
        );
    }
}

// ---------------------------------------------------------------------------------------
// Seeds
// ---------------------------------------------------------------------------------------

/// The input of the message targets for one complete frame: its opcode, then its body.
pub fn message_input(frame: &[u8]) -> Option<Vec<u8>> {
    let (f, used) = decode_frame_slice(frame, Limits::DEFAULT.max_frame_len).ok()??;
    (used == frame.len()).then(|| {
        let mut v = vec![f.opcode];
        v.extend_from_slice(&f.body);
        v
    })
}

/// The input of [`chunking`] that feeds `stream` in pieces of `sizes` (at most 15).
pub fn chunking_input(sizes: &[u8], stream: &[u8]) -> Vec<u8> {
    let sizes = &sizes[..sizes.len().min(15)];
    let mut v = vec![sizes.len() as u8];
    v.extend_from_slice(sizes);
    v.extend_from_slice(stream);
    v
}

/// The unsigned part of a token string (everything before its tag): the binary form the
/// token target signs itself.
pub fn unsigned_token(s: &str) -> Option<Vec<u8>> {
    let raw = URL_SAFE_NO_PAD.decode(s).ok()?;
    (raw.len() > TAG_LEN).then(|| raw[..raw.len() - TAG_LEN].to_vec())
}
