//! Property tests: every message of every type survives encode then decode unchanged, and
//! decoding arbitrary or mutated bodies never panics and accepts only canonical bytes
//! (whatever decodes re-encodes to exactly the bytes it came from).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use bytes::{Bytes, BytesMut};
use proptest::collection::{btree_map, vec};
use proptest::prelude::*;
use sessync_proto::{
    decode_frame_slice, Attributes, ErrorCode, ErrorReply, Limits, MemberInfo, MemberState, Message,
    PackedAttributes, PeerMessage, Request, Response, SessionId, SessionMeta, SessionRecord, SessionReply,
};

/// Any UTF-8 text of at most `max_chars` characters (so at most 4 x `max_chars` bytes).
fn text(max_chars: usize) -> impl Strategy<Value = String> {
    vec(any::<char>(), 0..=max_chars).prop_map(|cs| cs.into_iter().collect())
}

/// Attribute names: any UTF-8, up to 64 characters = up to the 256-byte name limit.
fn name() -> impl Strategy<Value = String> {
    prop_oneof![
        // Short ASCII names, so puts and deletes sometimes collide.
        "[a-d]{0,2}",
        text(Limits::DEFAULT.max_name_len / 4),
    ]
}

fn value() -> impl Strategy<Value = Bytes> {
    vec(any::<u8>(), 0..32).prop_map(Bytes::from)
}

fn attributes() -> impl Strategy<Value = Attributes> {
    btree_map(name(), value(), 0..4)
}

fn names() -> impl Strategy<Value = Vec<String>> {
    vec(name(), 0..4)
}

/// Token strings on the wire are any text up to max_token_len bytes.
fn token() -> impl Strategy<Value = String> {
    text(Limits::DEFAULT.max_token_len / 4)
}

fn free_text() -> impl Strategy<Value = String> {
    text(48)
}

fn addr() -> impl Strategy<Value = SocketAddr> {
    prop_oneof![
        (any::<[u8; 4]>(), any::<u16>())
            .prop_map(|(ip, port)| SocketAddr::new(IpAddr::V4(Ipv4Addr::from(ip)), port)),
        (any::<[u8; 16]>(), any::<u16>())
            .prop_map(|(ip, port)| SocketAddr::new(IpAddr::V6(Ipv6Addr::from(ip)), port)),
    ]
}

fn meta() -> impl Strategy<Value = SessionMeta> {
    any::<[u64; 5]>().prop_map(
        |[version, created_ms, last_access_ms, idle_ttl_ms, absolute_deadline_ms]| SessionMeta {
            version,
            created_ms,
            last_access_ms,
            idle_ttl_ms,
            absolute_deadline_ms,
        },
    )
}

fn session_id() -> impl Strategy<Value = SessionId> {
    any::<[u8; 16]>().prop_map(SessionId)
}

fn record() -> impl Strategy<Value = SessionRecord> {
    (session_id(), meta(), attributes()).prop_map(|(id, meta, attributes)| SessionRecord {
        id,
        meta,
        attributes: PackedAttributes::pack(&attributes),
    })
}

/// Known codes, and unknown numbers (kept as `Other`).
fn error_code() -> impl Strategy<Value = ErrorCode> {
    prop_oneof![
        proptest::sample::select(ErrorCode::ALL.to_vec()),
        any::<u16>()
            .prop_filter("a known number decodes as its named code", |n| {
                ErrorCode::ALL.iter().all(|c| c.as_u16() != *n)
            })
            .prop_map(ErrorCode::Other),
    ]
}

fn error_reply() -> impl Strategy<Value = ErrorReply> {
    (error_code(), free_text()).prop_map(|(code, message)| ErrorReply { code, message })
}

fn request() -> impl Strategy<Value = Request> {
    prop_oneof![
        (
            any::<u8>(),
            any::<u8>(),
            free_text(),
            proptest::option::of(free_text())
        )
            .prop_map(
                |(min_version, max_version, client_name, password)| Request::Hello {
                    min_version,
                    max_version,
                    client_name,
                    password,
                }
            ),
        value().prop_map(Request::Ping),
        (any::<u64>(), any::<u64>(), attributes()).prop_map(|(idle_ttl_ms, max_lifetime_ms, attributes)| {
            Request::Create {
                idle_ttl_ms,
                max_lifetime_ms,
                attributes,
            }
        }),
        (token(), names()).prop_map(|(token, names)| Request::Get { token, names }),
        (token(), proptest::option::of(any::<u64>()), attributes(), names()).prop_map(
            // A name both put and deleted is well formed on the wire (the node refuses it
            // with INVALID_REQUEST), so short names sometimes collide here on purpose.
            |(token, if_version, puts, deletes)| {
                Request::Set {
                    token,
                    if_version,
                    puts,
                    deletes,
                }
            }
        ),
        token().prop_map(|token| Request::Touch { token }),
        token().prop_map(|token| Request::Rotate { token }),
        token().prop_map(|token| Request::Destroy { token }),
        Just(Request::Stats),
        Just(Request::Members),
        Just(Request::Drain),
    ]
}

fn response() -> impl Strategy<Value = Response> {
    prop_oneof![
        (any::<u8>(), free_text(), any::<u32>()).prop_map(|(version, server_name, max_frame_len)| {
            Response::HelloOk {
                version,
                server_name,
                max_frame_len,
            }
        }),
        value().prop_map(Response::Pong),
        (proptest::option::of(token()), meta(), attributes()).prop_map(|(token, meta, attributes)| {
            Response::Session(SessionReply {
                token,
                meta,
                attributes,
            })
        }),
        Just(Response::Done),
        vec((free_text(), any::<u64>()), 0..4).prop_map(Response::Stats),
        vec((any::<[u8; 16]>(), any::<u64>(), 0u8..4, addr(), addr()), 0..4).prop_map(|ms| {
            Response::Members(
                ms.into_iter()
                    .map(|(node_id, incarnation, s, peer, client)| MemberInfo {
                        node_id,
                        incarnation,
                        state: MemberState::from_u8(s).unwrap_or(MemberState::Dead),
                        peer,
                        client,
                    })
                    .collect(),
            )
        }),
        error_reply().prop_map(Response::Error),
    ]
}

fn peer_message() -> impl Strategy<Value = PeerMessage> {
    prop_oneof![
        (any::<[u8; 16]>(), any::<u8>(), any::<[u8; 32]>(), addr()).prop_map(
            |(node_id, key_id, nonce, advertised)| PeerMessage::AuthHello {
                node_id,
                key_id,
                nonce,
                advertised,
            }
        ),
        (any::<[u8; 16]>(), any::<[u8; 32]>(), any::<[u8; 32]>(), addr()).prop_map(
            |(node_id, nonce, proof, advertised)| PeerMessage::AuthChallenge {
                node_id,
                nonce,
                proof,
                advertised,
            }
        ),
        any::<[u8; 32]>().prop_map(|proof| PeerMessage::AuthProof { proof }),
        Just(PeerMessage::AuthOk),
        any::<u64>().prop_map(PeerMessage::Ping),
        any::<u64>().prop_map(PeerMessage::Pong),
        (session_id(), any::<u64>()).prop_map(|(session_id, last_transfer)| PeerMessage::Copy {
            session_id,
            last_transfer
        }),
        (any::<u64>(), prop::collection::vec(addr(), 0..=8), record()).prop_map(
            |(transfer, holders, record)| {
                PeerMessage::CopyData {
                    transfer,
                    holders,
                    record,
                }
            }
        ),
        (session_id(), addr()).prop_map(|(session_id, owner)| PeerMessage::Moved { session_id, owner }),
        session_id().prop_map(|session_id| PeerMessage::NotFound { session_id }),
        (session_id(), any::<u64>())
            .prop_map(|(session_id, transfer)| PeerMessage::CopyAck { session_id, transfer }),
        (any::<u64>(), record())
            .prop_map(|(generation, record)| PeerMessage::Replicate { generation, record }),
        (any::<u64>(), addr(), any::<u64>(), any::<u32>(), record()).prop_map(
            |(generation, owner, base_generation, writer, record)| PeerMessage::ReplicateClaim {
                generation,
                base: sessync_proto::ClaimBase {
                    owner,
                    generation: base_generation,
                    writer,
                },
                record,
            }
        ),
        (session_id(), any::<u64>()).prop_map(|(session_id, generation)| PeerMessage::Drop {
            session_id,
            generation
        }),
        (session_id(), any::<u64>()).prop_map(|(session_id, generation)| PeerMessage::Retire {
            session_id,
            generation
        }),
        (session_id(), any::<u64>(), addr()).prop_map(|(session_id, last_transfer, failed_owner)| {
            PeerMessage::Promote {
                session_id,
                last_transfer,
                failed_owner,
            }
        }),
        Just(PeerMessage::Ok),
        prop::collection::vec((session_id(), any::<u64>()), 1..=20)
            .prop_map(|acks| PeerMessage::CopyAcks { acks }),
        any::<u64>().prop_map(PeerMessage::Features),
        any::<u64>().prop_map(PeerMessage::FeaturesAre),
        error_reply().prop_map(PeerMessage::Error),
    ]
}

/// Encodes as a frame, decodes it back, and checks the frame is consumed exactly.
fn round_trip<M: Message + PartialEq + std::fmt::Debug>(
    msg: &M,
    request_id: u64,
) -> Result<(), TestCaseError> {
    let limits = Limits::DEFAULT;
    let mut out = BytesMut::new();
    msg.encode_frame(request_id, &mut out);
    let (frame, used) = decode_frame_slice(&out, limits.max_frame_len)
        .map_err(|e| TestCaseError::fail(format!("frame error {e}")))?
        .ok_or_else(|| TestCaseError::fail("incomplete frame"))?;
    prop_assert_eq!(used, out.len());
    prop_assert_eq!(frame.request_id, request_id);
    prop_assert_eq!(frame.opcode, msg.opcode());
    let back =
        M::decode_frame(&frame, &limits).map_err(|e| TestCaseError::fail(format!("decode error {e}")))?;
    prop_assert_eq!(&back, msg);
    Ok(())
}

/// Decodes `body` under `opcode` as `M`; never panics. Whatever decodes must carry that
/// opcode and re-encode to exactly `body`: the encoding is canonical.
fn decode_is_canonical<M: Message + std::fmt::Debug>(opcode: u8, body: &[u8]) -> Result<(), TestCaseError> {
    let body = Bytes::copy_from_slice(body);
    if let Ok(msg) = M::decode_body(opcode, &body, &Limits::DEFAULT) {
        prop_assert_eq!(msg.opcode(), opcode);
        let mut again = BytesMut::new();
        msg.encode_body(&mut again);
        prop_assert_eq!(
            &again[..],
            &body[..],
            "{:?} decoded from a non-canonical body",
            msg
        );
    }
    Ok(())
}

fn body_of<M: Message>(msg: &M) -> Vec<u8> {
    let mut out = BytesMut::new();
    msg.encode_body(&mut out);
    out.to_vec()
}

/// Flips, overwrites, truncates or extends a valid body.
fn mutate(mut body: Vec<u8>, edits: &[(usize, u8, u8)]) -> Vec<u8> {
    for &(pos, kind, byte) in edits {
        let at = if body.is_empty() { 0 } else { pos % body.len() };
        match kind % 4 {
            0 if !body.is_empty() => body[at] ^= 1 << (byte % 8),
            1 if !body.is_empty() => body[at] = byte,
            2 => body.truncate(at),
            _ => body.insert(at, byte),
        }
    }
    body
}

fn edits() -> impl Strategy<Value = Vec<(usize, u8, u8)>> {
    vec((any::<usize>(), any::<u8>(), any::<u8>()), 1..4)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn requests_round_trip(msg in request(), id in any::<u64>()) {
        round_trip(&msg, id)?;
    }

    #[test]
    fn responses_round_trip(msg in response(), id in any::<u64>()) {
        round_trip(&msg, id)?;
    }

    #[test]
    fn peer_messages_round_trip(msg in peer_message(), id in any::<u64>()) {
        round_trip(&msg, id)?;
    }

    #[test]
    fn random_bodies_never_panic(opcode in any::<u8>(), body in vec(any::<u8>(), 0..300)) {
        decode_is_canonical::<Request>(opcode, &body)?;
        decode_is_canonical::<Response>(opcode, &body)?;
        decode_is_canonical::<PeerMessage>(opcode, &body)?;
    }

    #[test]
    fn mutated_requests_never_panic(msg in request(), edits in edits()) {
        let body = mutate(body_of(&msg), &edits);
        decode_is_canonical::<Request>(msg.opcode(), &body)?;
    }

    #[test]
    fn mutated_responses_never_panic(msg in response(), edits in edits()) {
        let body = mutate(body_of(&msg), &edits);
        decode_is_canonical::<Response>(msg.opcode(), &body)?;
    }

    #[test]
    fn mutated_peer_messages_never_panic(msg in peer_message(), edits in edits()) {
        let body = mutate(body_of(&msg), &edits);
        decode_is_canonical::<PeerMessage>(msg.opcode(), &body)?;
    }
}

/// Every opcode, with bodies that are empty, short, long, all zeros and all ones: the
/// random test above might miss an opcode, this one cannot.
#[test]
fn every_opcode_with_fixed_bodies_never_panics() {
    let bodies: Vec<Vec<u8>> = vec![
        vec![],
        vec![0],
        vec![1],
        vec![0xff],
        vec![0; 7],
        vec![0; 64],
        vec![0xff; 64],
        vec![1; 200],
        (0..=255).collect(),
    ];
    for opcode in 0..=u8::MAX {
        for body in &bodies {
            let check = |r: Result<(), TestCaseError>| {
                if let Err(e) = r {
                    panic!("opcode 0x{opcode:02x}, body {body:02x?}: {e}");
                }
            };
            check(decode_is_canonical::<Request>(opcode, body));
            check(decode_is_canonical::<Response>(opcode, body));
            check(decode_is_canonical::<PeerMessage>(opcode, body));
        }
    }
}

/// Each message set accepts exactly its own opcodes (plus ERROR for the reply sets).
#[test]
fn each_side_rejects_the_other_sides_opcodes() {
    let limits = Limits::DEFAULT;
    let empty = Bytes::new();
    for opcode in 0..=u8::MAX {
        let is_request = (0x01..=0x0b).contains(&opcode);
        let is_response = (0x81..=0x86).contains(&opcode) || opcode == 0xff;
        let is_peer = (0x40..=0x50).contains(&opcode) || (0xc0..=0xca).contains(&opcode) || opcode == 0xff;
        let unknown = |e: Option<sessync_proto::DecodeError>| matches!(e, Some(sessync_proto::DecodeError::UnknownOpcode(op)) if op == opcode);
        assert_eq!(
            unknown(Request::decode_body(opcode, &empty, &limits).err()),
            !is_request,
            "request opcode 0x{opcode:02x}"
        );
        assert_eq!(
            unknown(Response::decode_body(opcode, &empty, &limits).err()),
            !is_response,
            "response opcode 0x{opcode:02x}"
        );
        assert_eq!(
            unknown(PeerMessage::decode_body(opcode, &empty, &limits).err()),
            !is_peer,
            "peer opcode 0x{opcode:02x}"
        );
    }
}

/// Attribute names must be strictly increasing: the decoder refuses names out of order
/// or repeated, so an attribute map has one encoding.
#[test]
fn attributes_out_of_order_or_repeated_are_rejected() {
    let limits = Limits::DEFAULT;
    let body = |names: &[&str]| {
        // CREATE: idle, lifetime, then the attributes with empty values.
        let mut b = vec![0u8; 16];
        b.extend_from_slice(&(names.len() as u16).to_be_bytes());
        for n in names {
            b.extend_from_slice(&(n.len() as u16).to_be_bytes());
            b.extend_from_slice(n.as_bytes());
            b.extend_from_slice(&0u32.to_be_bytes());
        }
        Bytes::from(b)
    };
    let op = sessync_proto::client_op::CREATE;
    assert!(Request::decode_body(op, &body(&["a", "b", "\u{e9}"]), &limits).is_ok());
    for bad in [&["b", "a"][..], &["a", "a"], &["a", "b", "b"], &["\u{e9}", "z"]] {
        let err = Request::decode_body(op, &body(bad), &limits).err();
        assert_eq!(
            err.map(|e| e.code()),
            Some(ErrorCode::MalformedFrame),
            "attributes {bad:?} were accepted"
        );
    }
}
