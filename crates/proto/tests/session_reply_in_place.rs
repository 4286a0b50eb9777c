//! A SESSION reply written in place (attributes by a callback, the token set afterwards)
//! is byte for byte the frame `encode_session_reply` writes, with or without a token, and
//! wherever it starts in the output buffer.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use bytes::{Bytes, BytesMut};
use sessync_proto::{
    decode_frame_slice, encode_session_reply, encode_session_reply_with, set_session_reply_token, Attributes,
    Limits, Message, PackedAttributes, Response, SessionMeta,
};

fn meta() -> SessionMeta {
    SessionMeta {
        version: 7,
        created_ms: 1_000,
        last_access_ms: 2_000,
        idle_ttl_ms: 30_000,
        absolute_deadline_ms: 0,
    }
}

fn attrs(n: usize) -> PackedAttributes {
    let a: Attributes = (0..n)
        .map(|i| (format!("attr{i}"), Bytes::from(vec![i as u8; 100 + i])))
        .collect();
    PackedAttributes::pack(&a)
}

#[test]
fn in_place_reply_equals_the_ordinary_encoding() {
    let token = "t".repeat(120);
    for n in [0, 1, 8] {
        let packed = attrs(n);
        for tok in [None, Some(token.as_str())] {
            for prefix in [0usize, 37] {
                let mut want = BytesMut::new();
                want.extend_from_slice(&vec![9u8; prefix]);
                encode_session_reply(&mut want, 42, tok, &meta(), &packed);

                let mut got = BytesMut::new();
                got.extend_from_slice(&vec![9u8; prefix]);
                let start = encode_session_reply_with(&mut got, 42, &meta(), |b| {
                    b.extend_from_slice(packed.as_bytes())
                });
                assert_eq!(start, prefix);
                if let Some(t) = tok {
                    set_session_reply_token(&mut got, start, t);
                }
                assert_eq!(got, want, "{n} attributes, token {}", tok.is_some());

                let (frame, used) = decode_frame_slice(&got[prefix..], Limits::DEFAULT.max_frame_len)
                    .expect("valid frame")
                    .expect("whole frame");
                assert_eq!(used, got.len() - prefix);
                match Response::decode_frame(&frame, &Limits::DEFAULT).expect("decodes") {
                    Response::Session(s) => {
                        assert_eq!(s.token.as_deref(), tok);
                        assert_eq!(s.meta, meta());
                        assert_eq!(PackedAttributes::pack(&s.attributes), packed);
                    }
                    other => panic!("not a SESSION reply: {other:?}"),
                }
            }
        }
    }
}
