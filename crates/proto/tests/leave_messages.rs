//! The peer messages of leaving, lookup and repair (protocol.md 17.5): they round-trip,
//! and bad input (counts past the limit or past the bytes there are, an unknown LOCATED
//! role, trailing bytes) is refused before anything is allocated.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use bytes::{BufMut, BytesMut};
use sessync_proto::{write_frame, DecodeError, Limits, Message, PeerMessage, Role, SessionId, MAX_IDS};

fn roundtrip(m: PeerMessage) {
    let mut out = BytesMut::new();
    m.encode_frame(7, &mut out);
    let frame = sessync_proto::decode_frame(&mut out, Limits::DEFAULT.max_frame_len)
        .unwrap()
        .unwrap();
    assert_eq!(PeerMessage::decode_frame(&frame, &Limits::DEFAULT).unwrap(), m);
}

fn decode(opcode: u8, body: &[u8]) -> Result<PeerMessage, DecodeError> {
    let mut out = BytesMut::new();
    write_frame(&mut out, opcode, 1, |b| b.put_slice(body));
    let frame = sessync_proto::decode_frame(&mut out, Limits::DEFAULT.max_frame_len)
        .unwrap()
        .unwrap();
    PeerMessage::decode_frame(&frame, &Limits::DEFAULT)
}

#[test]
fn every_new_message_round_trips() {
    let ids: Vec<SessionId> = (0..MAX_IDS as u32)
        .map(|i| {
            let mut b = [0u8; 16];
            b[..4].copy_from_slice(&i.to_be_bytes());
            SessionId(b)
        })
        .collect();
    roundtrip(PeerMessage::Take { ids: ids.clone() });
    roundtrip(PeerMessage::Release { ids: vec![] });
    roundtrip(PeerMessage::Ids {
        ids: ids[..3].to_vec(),
    });
    roundtrip(PeerMessage::Locate { session_id: ids[1] });
    for role in [Role::Owner, Role::Backup, Role::HandedOver, Role::Destroyed] {
        // With the generation, and without it (what a node before the field sends).
        for generation in [Some(u64::MAX), Some(0), None] {
            roundtrip(PeerMessage::Located {
                session_id: ids[2],
                role,
                addr: "[::1]:7401".parse().unwrap(),
                generation,
            });
        }
    }
    roundtrip(PeerMessage::Epoch);
    roundtrip(PeerMessage::EpochIs {
        node_id: [9; 16],
        uptime_ms: u64::MAX,
    });
}

#[test]
fn counts_past_the_limit_or_the_bytes_are_refused() {
    let op = sessync_proto::peer_op::TAKE;
    // More ids than allowed: refused on the count alone.
    let mut body = Vec::new();
    body.extend_from_slice(&((MAX_IDS + 1) as u16).to_be_bytes());
    assert!(matches!(
        decode(op, &body),
        Err(DecodeError::LimitExceeded { .. })
    ));
    // A count the body cannot hold: refused before a vector of that size is made.
    let mut body = Vec::new();
    body.extend_from_slice(&4000u16.to_be_bytes());
    body.extend_from_slice(&[0u8; 16]);
    assert!(matches!(decode(op, &body), Err(DecodeError::UnexpectedEnd)));
    // A partial id, trailing bytes.
    let mut body = 1u16.to_be_bytes().to_vec();
    body.extend_from_slice(&[0u8; 15]);
    assert!(decode(sessync_proto::peer_op::RELEASE, &body).is_err());
    let mut body = 1u16.to_be_bytes().to_vec();
    body.extend_from_slice(&[0u8; 17]);
    assert!(decode(sessync_proto::peer_op::IDS, &body).is_err());
    assert!(decode(sessync_proto::peer_op::EPOCH, &[0]).is_err());
    assert!(decode(sessync_proto::peer_op::EPOCH_IS, &[0; 16]).is_err());
}

#[test]
fn an_unknown_located_role_is_malformed() {
    let mut body = vec![0u8; 16];
    body.push(5);
    body.extend_from_slice(&[4, 10, 0, 0, 1, 0x1c, 0xe9]);
    assert!(matches!(
        decode(sessync_proto::peer_op::LOCATED, &body),
        Err(DecodeError::Invalid(_))
    ));
    body[16] = 0;
    assert!(decode(sessync_proto::peer_op::LOCATED, &body).is_err());
}

#[test]
fn a_located_generation_is_eight_bytes_or_none() {
    let mut body = vec![0u8; 16];
    body.push(2);
    body.extend_from_slice(&[4, 10, 0, 0, 1, 0x1c, 0xe9]);
    let without = decode(sessync_proto::peer_op::LOCATED, &body);
    assert!(matches!(
        without,
        Ok(PeerMessage::Located { generation: None, .. })
    ));
    // One to seven bytes after the address: neither form.
    for extra in 1..8 {
        let mut b = body.clone();
        b.extend(std::iter::repeat_n(0u8, extra));
        assert!(
            decode(sessync_proto::peer_op::LOCATED, &b).is_err(),
            "{extra} bytes"
        );
    }
    body.extend_from_slice(&9u64.to_be_bytes());
    let with = decode(sessync_proto::peer_op::LOCATED, &body);
    assert!(matches!(
        with,
        Ok(PeerMessage::Located {
            generation: Some(9),
            ..
        })
    ));
    body.push(0);
    assert!(decode(sessync_proto::peer_op::LOCATED, &body).is_err(), "9 bytes");
}
