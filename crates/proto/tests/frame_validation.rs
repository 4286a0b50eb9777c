//! Framing and body validation: "need more bytes" is kept apart from "these bytes are
//! wrong", every corruption is caught, and limits are enforced before anything is
//! buffered or allocated.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use sessync_proto::{
    check_frame, client_op, decode_frame, decode_frame_slice, write_frame, Attributes, DecodeError,
    ErrorCode, ErrorReply, FrameError, Limits, Message, PackedAttributes, PeerMessage, Request, Response,
    SessionId, SessionMeta, SessionRecord, SessionReply, MIN_FRAME_LEN, PROTOCOL_VERSION,
};

const MAX: u32 = Limits::DEFAULT.max_frame_len;

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
}

fn attrs(pairs: &[(&str, &str)]) -> Attributes {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), Bytes::copy_from_slice(v.as_bytes())))
        .collect()
}

fn frame_of<M: Message>(msg: &M, request_id: u64) -> Vec<u8> {
    let mut out = BytesMut::new();
    msg.encode_frame(request_id, &mut out);
    out.to_vec()
}

/// One message of every variant of every type, as frames.
fn sample_frames() -> Vec<(String, Vec<u8>)> {
    let token = "AQAAESIzRFVmd4iZqrvM3e7_BAoAAAEc6QC4GCxqzsImgh9trpzN734B".to_string();
    let id = SessionId([7; 16]);
    let meta = SessionMeta {
        version: 3,
        created_ms: 1,
        last_access_ms: 2,
        idle_ttl_ms: 3,
        absolute_deadline_ms: 4,
    };
    let record = SessionRecord {
        id,
        meta,
        attributes: PackedAttributes::pack(&attrs(&[("a", "1"), ("b", "")])),
    };
    let requests = [
        Request::Hello {
            min_version: 1,
            max_version: 2,
            client_name: "c".into(),
            password: None,
        },
        Request::Ping(Bytes::from_static(b"xy")),
        Request::Create {
            idle_ttl_ms: 5,
            max_lifetime_ms: 6,
            attributes: attrs(&[("k", "v")]),
        },
        Request::Get {
            token: token.clone(),
            names: vec!["k".into()],
        },
        Request::Set {
            token: token.clone(),
            if_version: Some(2),
            puts: attrs(&[("k", "v")]),
            deletes: vec!["z".into()],
        },
        Request::Touch { token: token.clone() },
        Request::Rotate { token: token.clone() },
        Request::Destroy { token },
        Request::Stats,
    ];
    let responses = [
        Response::HelloOk {
            version: 1,
            server_name: "s".into(),
            max_frame_len: MAX,
        },
        Response::Pong(Bytes::from_static(b"xy")),
        Response::Session(SessionReply {
            token: Some("t".into()),
            meta,
            attributes: attrs(&[("k", "")]),
        }),
        Response::Done,
        Response::Stats(vec![("n".into(), 9)]),
        Response::Error(ErrorReply::new(ErrorCode::Capacity, "full")),
    ];
    let peers = [
        PeerMessage::AuthHello {
            node_id: [1; 16],
            key_id: 0,
            nonce: [2; 32],
            advertised: addr("10.0.0.1:1"),
        },
        PeerMessage::AuthChallenge {
            node_id: [1; 16],
            nonce: [2; 32],
            proof: [3; 32],
            advertised: addr("[::1]:2"),
        },
        PeerMessage::AuthProof { proof: [4; 32] },
        PeerMessage::AuthOk,
        PeerMessage::Ping(5),
        PeerMessage::Pong(5),
        PeerMessage::Copy {
            session_id: id,
            last_transfer: 9,
        },
        PeerMessage::CopyData {
            transfer: 9,
            holders: vec![
                std::net::SocketAddr::from(([10, 0, 0, 2], 7800)),
                std::net::SocketAddr::from(([0, 0, 0, 0, 0, 0, 0, 1], 7801)),
            ],
            record: record.clone(),
        },
        PeerMessage::Moved {
            session_id: id,
            owner: addr("10.0.0.2:3"),
        },
        PeerMessage::NotFound { session_id: id },
        PeerMessage::CopyAck {
            session_id: id,
            transfer: 9,
        },
        PeerMessage::Replicate {
            generation: 3,
            record,
        },
        PeerMessage::Drop {
            session_id: id,
            generation: 3,
        },
        PeerMessage::Promote {
            session_id: id,
            last_transfer: 2,
            failed_owner: addr("10.0.0.3:4"),
        },
        PeerMessage::Ok,
        PeerMessage::Error(ErrorReply::new(ErrorCode::Internal, "x")),
    ];
    let mut out = Vec::new();
    for (i, m) in requests.iter().enumerate() {
        out.push((format!("{m:?}"), frame_of(m, i as u64 + 1)));
    }
    for (i, m) in responses.iter().enumerate() {
        out.push((format!("{m:?}"), frame_of(m, i as u64 + 100)));
    }
    for (i, m) in peers.iter().enumerate() {
        out.push((format!("{m:?}"), frame_of(m, u64::MAX - i as u64)));
    }
    out
}

/// A frame with any header, and a correct CRC.
fn raw_frame(version: u8, opcode: u8, flags: u16, request_id: u64, body: &[u8]) -> Vec<u8> {
    let mut covered = Vec::new();
    covered.put_u8(version);
    covered.put_u8(opcode);
    covered.put_u16(flags);
    covered.put_u64(request_id);
    covered.put_slice(body);
    let mut out = Vec::new();
    out.put_u32(covered.len() as u32 + 4);
    out.put_slice(&covered);
    out.put_u32(crc32fast::hash(&covered));
    out
}

#[test]
fn raw_frame_matches_write_frame() {
    // The helper above is the layout of protocol.md; check it against the crate once.
    let mut out = BytesMut::new();
    write_frame(&mut out, 0x42, 77, |b| b.put_slice(b"body"));
    assert_eq!(out.to_vec(), raw_frame(PROTOCOL_VERSION, 0x42, 0, 77, b"body"));
}

#[test]
fn every_strict_prefix_needs_more_bytes() {
    for (what, frame) in sample_frames() {
        for k in 0..frame.len() {
            let prefix = &frame[..k];
            assert_eq!(
                check_frame(prefix, MAX),
                Ok(None),
                "{what}: check_frame of {k} bytes"
            );
            assert_eq!(
                decode_frame_slice(prefix, MAX),
                Ok(None),
                "{what}: slice of {k} bytes"
            );
            let mut buf = BytesMut::from(prefix);
            assert_eq!(
                decode_frame(&mut buf, MAX),
                Ok(None),
                "{what}: decode_frame of {k} bytes"
            );
            assert_eq!(
                &buf[..],
                prefix,
                "{what}: decode_frame consumed bytes while waiting"
            );
        }
        assert_eq!(
            check_frame(&frame, MAX),
            Ok(Some(frame.len())),
            "{what}: whole frame"
        );
        let mut buf = BytesMut::from(&frame[..]);
        let got = decode_frame(&mut buf, MAX).unwrap_or_else(|e| panic!("{what}: {e}"));
        assert!(got.is_some(), "{what}: whole frame not decoded");
        assert!(buf.is_empty(), "{what}: frame not consumed");
    }
}

#[test]
fn frames_arriving_byte_by_byte_decode_one_at_a_time() {
    let frames = sample_frames();
    let stream: Vec<u8> = frames.iter().flat_map(|(_, f)| f.iter().copied()).collect();
    let mut buf = BytesMut::new();
    let mut decoded = Vec::new();
    for byte in stream {
        buf.put_u8(byte);
        while let Some(frame) = decode_frame(&mut buf, MAX).unwrap_or_else(|e| panic!("{e}")) {
            decoded.push(frame);
        }
    }
    assert!(buf.is_empty());
    assert_eq!(decoded.len(), frames.len());
    for ((what, raw), frame) in frames.iter().zip(&decoded) {
        let (expected, _) = decode_frame_slice(raw, MAX)
            .unwrap_or_else(|e| panic!("{what}: {e}"))
            .unwrap_or_else(|| panic!("{what}: incomplete"));
        assert_eq!(frame, &expected, "{what}");
    }
}

#[test]
fn every_single_bit_flip_is_rejected() {
    // Small frames, every bit of each.
    let frames: Vec<(String, Vec<u8>)> = sample_frames()
        .into_iter()
        .filter(|(_, f)| f.len() <= 64)
        .collect();
    assert!(frames.len() >= 10, "too few small frames to be a fair sample");
    for (what, frame) in frames {
        for bit in 0..frame.len() * 8 {
            let mut bad = frame.clone();
            bad[bit / 8] ^= 1 << (bit % 8);
            let result = decode_frame_slice(&bad, MAX);
            if bit / 8 < 4 {
                // The length prefix: the frame now looks longer (wait, or too large),
                // shorter (too short, or a CRC read from the wrong place).
                assert!(
                    matches!(
                        result,
                        Ok(None)
                            | Err(FrameError::TooLarge { .. })
                            | Err(FrameError::TooShort(_))
                            | Err(FrameError::BadCrc { .. })
                    ),
                    "{what}: flipping length bit {bit} gave {result:?}"
                );
            } else {
                // Header, body or CRC: CRC32 detects every single-bit error.
                assert!(
                    matches!(result, Err(FrameError::BadCrc { .. })),
                    "{what}: flipping bit {bit} gave {result:?}"
                );
            }
        }
    }
}

#[test]
fn a_4_gib_length_is_rejected_at_once_without_buffering() {
    let mut buf = BytesMut::with_capacity(4);
    buf.put_slice(&[0xff, 0xff, 0xff, 0xff]);
    let capacity = buf.capacity();
    assert!(capacity < 64);
    let err = decode_frame(&mut buf, MAX).err();
    assert_eq!(
        err,
        Some(FrameError::TooLarge {
            len: u64::from(u32::MAX),
            max: MAX
        })
    );
    assert_eq!(err.map(|e| e.code()), Some(ErrorCode::FrameTooLarge));
    assert_eq!(
        buf.capacity(),
        capacity,
        "the buffer grew for a frame that was refused"
    );
    assert_eq!(buf.len(), 4);
    assert!(matches!(
        check_frame(&[0xff; 4], MAX),
        Err(FrameError::TooLarge { .. })
    ));
    assert!(matches!(
        decode_frame_slice(&[0xff; 4], MAX),
        Err(FrameError::TooLarge { .. })
    ));
}

#[test]
fn the_length_limit_is_exact() {
    let over = (MAX + 1).to_be_bytes();
    assert!(
        matches!(check_frame(&over, MAX), Err(FrameError::TooLarge { len, .. }) if len == u64::from(MAX) + 1)
    );
    // At the limit it is a legal frame still arriving.
    assert_eq!(check_frame(&MAX.to_be_bytes(), MAX), Ok(None));
    // A smaller configured limit is honoured.
    let frame = frame_of(&Request::Ping(Bytes::from(vec![0u8; 100])), 1);
    let len = frame.len() as u32 - 4;
    assert!(check_frame(&frame, len).is_ok_and(|r| r.is_some()));
    assert!(matches!(
        check_frame(&frame, len - 1),
        Err(FrameError::TooLarge { .. })
    ));
}

#[test]
fn lengths_below_16_are_rejected() {
    for len in 0..MIN_FRAME_LEN {
        let prefix = len.to_be_bytes();
        assert_eq!(check_frame(&prefix, MAX), Err(FrameError::TooShort(len)));
        let mut buf = BytesMut::from(&prefix[..]);
        let err = decode_frame(&mut buf, MAX).err();
        assert_eq!(err, Some(FrameError::TooShort(len)));
        assert_eq!(err.map(|e| e.code()), Some(ErrorCode::MalformedFrame));
    }
    // 16 is legal: a header and a CRC, no body.
    let stats = frame_of(&Request::Stats, 1);
    assert_eq!(&stats[..4], &16u32.to_be_bytes());
    assert!(decode_frame_slice(&stats, MAX).is_ok_and(|f| f.is_some()));
}

#[test]
fn other_versions_are_unsupported() {
    for version in [0u8, 2, 0x81, 0xff] {
        let frame = raw_frame(version, client_op::STATS, 0, 1, &[]);
        let err = decode_frame_slice(&frame, MAX).err();
        assert_eq!(err, Some(FrameError::UnsupportedVersion(version)));
        assert_eq!(err.map(|e| e.code()), Some(ErrorCode::UnsupportedVersion));
    }
    assert!(decode_frame_slice(&raw_frame(1, client_op::STATS, 0, 1, &[]), MAX).is_ok_and(|f| f.is_some()));
}

#[test]
fn reserved_flags_are_rejected() {
    for flags in [1u16, 0x0100, 0x8000, 0xffff] {
        let frame = raw_frame(PROTOCOL_VERSION, client_op::STATS, flags, 1, &[]);
        let err = decode_frame_slice(&frame, MAX).err();
        assert_eq!(err, Some(FrameError::ReservedFlags(flags)));
        assert_eq!(err.map(|e| e.code()), Some(ErrorCode::MalformedFrame));
    }
}

/// Decodes `body` under `opcode` with the decoder of the kind of message `like` is.
fn decode_like(like: &str, opcode: u8, body: &Bytes, limits: &Limits) -> Result<(), DecodeError> {
    match like {
        "request" => Request::decode_body(opcode, body, limits).map(drop),
        "response" => Response::decode_body(opcode, body, limits).map(drop),
        _ => PeerMessage::decode_body(opcode, body, limits).map(drop),
    }
}

fn kind_of(index: usize) -> &'static str {
    match index {
        0..=8 => "request",
        9..=14 => "response",
        _ => "peer",
    }
}

#[test]
fn trailing_or_missing_body_bytes_are_malformed() {
    let limits = Limits::DEFAULT;
    for (i, (what, frame)) in sample_frames().into_iter().enumerate() {
        let (f, _) = decode_frame_slice(&frame, MAX)
            .unwrap_or_else(|e| panic!("{what}: {e}"))
            .unwrap_or_else(|| panic!("{what}: incomplete"));
        let kind = kind_of(i);
        assert_eq!(decode_like(kind, f.opcode, &f.body, &limits), Ok(()), "{what}");

        let mut longer = f.body.to_vec();
        longer.push(0);
        let err = decode_like(kind, f.opcode, &Bytes::from(longer), &limits).err();
        assert!(
            matches!(&err, Some(DecodeError::Invalid(m)) if m.contains("trailing")),
            "{what}: one trailing byte gave {err:?}"
        );
        assert_eq!(err.map(|e| e.code()), Some(ErrorCode::MalformedFrame));

        if !f.body.is_empty() {
            let shorter = f.body.slice(..f.body.len() - 1);
            let err = decode_like(kind, f.opcode, &shorter, &limits).err();
            assert_eq!(
                err.map(|e| e.code()),
                Some(ErrorCode::MalformedFrame),
                "{what}: a body one byte short was accepted"
            );
        }
    }
}

#[test]
fn invalid_values_are_malformed() {
    let limits = Limits::DEFAULT;
    let cases: Vec<(&str, u8, Vec<u8>)> = vec![
        // HELLO: password presence byte 2.
        ("request", client_op::HELLO, vec![1, 1, 0, 0, 2]),
        // HELLO: client name not UTF-8.
        ("request", client_op::HELLO, vec![1, 1, 0, 1, 0xff, 0]),
        // SET: if_version presence byte 7.
        ("request", client_op::SET, vec![0, 0, 7]),
        // COPY_DATA naming 9 holders (at most 8).
        ("peer", 0xc3, [vec![0; 8], vec![9]].concat()),
        // MOVED: address family 5.
        ("peer", 0xc4, [vec![0; 16], vec![5, 1, 2, 3, 4, 0, 1]].concat()),
    ];
    for (kind, opcode, body) in cases {
        let err = decode_like(kind, opcode, &Bytes::from(body.clone()), &limits).err();
        assert!(
            matches!(err, Some(DecodeError::Invalid(_))),
            "{body:02x?} gave {err:?}"
        );
    }
}

/// Runs a decode and insists it fails fast with the expected code.
fn fails_fast(what: &str, expected: ErrorCode, f: impl FnOnce() -> Result<(), DecodeError>) {
    let start = Instant::now();
    let err = f().err();
    let took = start.elapsed();
    assert_eq!(
        err.as_ref().map(DecodeError::code),
        Some(expected),
        "{what}: got {err:?}"
    );
    assert!(took < Duration::from_millis(200), "{what}: took {took:?}");
}

#[test]
fn over_limit_counts_and_lengths_are_refused_before_reading_on() {
    let limits = Limits::DEFAULT;
    let request = |opcode: u8, body: Vec<u8>| {
        let limits = &limits;
        move || Request::decode_body(opcode, &Bytes::from(body), limits).map(drop)
    };
    let token_prefix = {
        let mut b = Vec::new();
        b.put_u16(1);
        b.put_u8(b't');
        b
    };

    // CREATE with 65535 attributes announced and a 2-byte remainder.
    let mut body = vec![0u8; 16];
    body.extend_from_slice(&[0xff, 0xff, 0, 0]);
    fails_fast(
        "attribute count",
        ErrorCode::LimitExceeded,
        request(client_op::CREATE, body),
    );
    let mut body = vec![0u8; 16];
    body.extend_from_slice(&[0xff, 0xff, 0, 0]);
    assert!(matches!(
        Request::decode_body(client_op::CREATE, &Bytes::from(body), &limits),
        Err(DecodeError::LimitExceeded {
            len: 65535,
            max: 1024,
            ..
        })
    ));

    // Under the limit, but more than the body could hold: refused without reading on.
    let mut body = vec![0u8; 16];
    body.extend_from_slice(&1000u16.to_be_bytes());
    fails_fast(
        "attribute count vs body",
        ErrorCode::MalformedFrame,
        request(client_op::CREATE, body),
    );

    // GET with 65535 names.
    let mut body = token_prefix.clone();
    body.extend_from_slice(&[0xff, 0xff]);
    fails_fast(
        "name count",
        ErrorCode::LimitExceeded,
        request(client_op::GET, body),
    );

    // SET deleting 60000 names with nothing after.
    let mut body = token_prefix.clone();
    body.extend_from_slice(&[0, 0, 0, 0xea, 0x60]);
    fails_fast(
        "delete count",
        ErrorCode::LimitExceeded,
        request(client_op::SET, body),
    );

    // An attribute name of 257 bytes (limit 256) and one of exactly 256.
    let attr = |name_len: usize| {
        let mut body = vec![0u8; 16];
        body.put_u16(1);
        body.put_u16(name_len as u16);
        body.resize(body.len() + name_len, b'n');
        body.put_u32(0);
        body
    };
    fails_fast(
        "name length",
        ErrorCode::LimitExceeded,
        request(client_op::CREATE, attr(257)),
    );
    assert!(Request::decode_body(client_op::CREATE, &Bytes::from(attr(256)), &limits).is_ok());

    // A value announced as 4 GiB, and one byte over the 1 MiB limit.
    for len in [u32::MAX, (limits.max_value_len + 1) as u32] {
        let mut body = vec![0u8; 16];
        body.put_u16(1);
        body.put_u16(1);
        body.put_u8(b'k');
        body.put_u32(len);
        fails_fast(
            "value length",
            ErrorCode::LimitExceeded,
            request(client_op::CREATE, body),
        );
    }

    // A PING payload announced as 4 GiB.
    fails_fast(
        "ping payload",
        ErrorCode::LimitExceeded,
        request(client_op::PING, vec![0xff; 4]),
    );

    // A token of 257 bytes.
    let mut body = Vec::new();
    body.put_u16(257);
    body.resize(body.len() + 257, b'A');
    fails_fast(
        "token length",
        ErrorCode::LimitExceeded,
        request(client_op::TOUCH, body),
    );

    // A client name of 1025 bytes.
    let mut body = vec![1, 1];
    body.put_u16(1025);
    body.resize(body.len() + 1025, b'c');
    body.put_u8(0);
    fails_fast(
        "client name",
        ErrorCode::LimitExceeded,
        request(client_op::HELLO, body),
    );

    // An error message of 1025 bytes, on both ports.
    let mut body = vec![0, 100];
    body.put_u16(1025);
    body.resize(body.len() + 1025, b'e');
    let b = Bytes::from(body);
    fails_fast("error message", ErrorCode::LimitExceeded, || {
        Response::decode_body(0xff, &b, &limits).map(drop)
    });
    fails_fast("peer error message", ErrorCode::LimitExceeded, || {
        PeerMessage::decode_body(0xff, &b, &limits).map(drop)
    });

    // STATS_REPLY announcing 65535 counters in 2 bytes: no limit, but the body cannot hold them.
    fails_fast("stats count", ErrorCode::MalformedFrame, || {
        Response::decode_body(0x85, &Bytes::from_static(&[0xff, 0xff, 0, 0]), &limits).map(drop)
    });

    // COPY_DATA (no holders) whose record announces 65535 attributes.
    let mut body = vec![0u8; 8 + 1 + 16 + 40];
    body.extend_from_slice(&[0xff, 0xff]);
    let b = Bytes::from(body);
    fails_fast("record attributes", ErrorCode::LimitExceeded, || {
        PeerMessage::decode_body(0xc3, &b, &limits).map(drop)
    });
}

#[test]
fn configured_limits_are_the_ones_enforced() {
    let tight = Limits {
        max_attributes: 2,
        max_name_len: 3,
        max_value_len: 4,
        max_token_len: 5,
        max_text_len: 6,
        ..Limits::DEFAULT
    };
    let check = |msg: Request, ok: bool| {
        let mut out = BytesMut::new();
        msg.encode_body(&mut out);
        let r = Request::decode_body(msg.opcode(), &out.freeze(), &tight);
        assert_eq!(r.is_ok(), ok, "{msg:?} under tight limits gave {r:?}");
        if let Err(e) = r {
            assert_eq!(e.code(), ErrorCode::LimitExceeded, "{msg:?}");
        }
    };
    let create = |a: Attributes| Request::Create {
        idle_ttl_ms: 0,
        max_lifetime_ms: 0,
        attributes: a,
    };
    check(create(attrs(&[("a", "1"), ("b", "2")])), true);
    check(create(attrs(&[("a", "1"), ("b", "2"), ("c", "3")])), false);
    check(create(attrs(&[("abc", "1234")])), true);
    check(create(attrs(&[("abcd", "1")])), false);
    check(create(attrs(&[("a", "12345")])), false);
    check(
        Request::Touch {
            token: "12345".into(),
        },
        true,
    );
    check(
        Request::Touch {
            token: "123456".into(),
        },
        false,
    );
    check(Request::Ping(Bytes::from_static(b"1234")), true);
    check(Request::Ping(Bytes::from_static(b"12345")), false);
    check(
        Request::Hello {
            min_version: 1,
            max_version: 1,
            client_name: "123456".into(),
            password: Some("1234567".into()),
        },
        false,
    );
    check(
        Request::Get {
            token: "t".into(),
            names: vec!["a".into(), "b".into(), "c".into()],
        },
        false,
    );
}

#[test]
fn frame_errors_map_to_their_codes_and_all_close() {
    let errors = [
        (FrameError::TooLarge { len: 1, max: 0 }, ErrorCode::FrameTooLarge),
        (FrameError::TooShort(3), ErrorCode::MalformedFrame),
        (
            FrameError::BadCrc {
                expected: 1,
                actual: 2,
            },
            ErrorCode::BadCrc,
        ),
        (FrameError::UnsupportedVersion(2), ErrorCode::UnsupportedVersion),
        (FrameError::ReservedFlags(1), ErrorCode::MalformedFrame),
    ];
    for (err, code) in errors {
        assert_eq!(err.code(), code, "{err}");
        assert!(
            code.closes_connection(),
            "{err}: framing errors close the connection"
        );
    }
    // Body errors: malformed and unknown opcodes close, over-limit does not.
    assert!(DecodeError::UnexpectedEnd.code().closes_connection());
    assert!(DecodeError::UnknownOpcode(0x30).code().closes_connection());
    let limit = DecodeError::LimitExceeded {
        what: "x",
        len: 2,
        max: 1,
    };
    assert!(!limit.code().closes_connection());
}
