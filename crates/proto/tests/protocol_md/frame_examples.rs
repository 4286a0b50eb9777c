//! The frame examples protocol.md must contain, built here independently of the document
//! (split from protocol_md.rs by job: this file is the expected messages, the parent the
//! checks).

use super::*;
use sessync_proto::{ClaimBase, ErrorReply, MemberInfo, MemberState, SessionReply};

/// Every frame example protocol.md must contain, by name, as its prose describes it.
pub(super) fn frame_examples() -> BTreeMap<&'static str, Expected> {
    use Expected::{Peer, Request as Req, Response as Resp};
    let token = basic_token();
    let (hello, challenge, proof, _, _) = example_handshake();
    let mut m = BTreeMap::new();
    let mut add = |name: &'static str, e: Expected| {
        assert!(m.insert(name, e).is_none(), "duplicate expected example {name}");
    };

    add(
        "hello",
        Req(
            1,
            Request::Hello {
                min_version: 1,
                max_version: 1,
                client_name: "example-client/1.0".into(),
                password: Some("hunter2".into()),
            },
        ),
    );
    add("ping", Req(2, Request::Ping(Bytes::from_static(b"ping"))));
    add(
        "create",
        Req(
            3,
            Request::Create {
                idle_ttl_ms: IDLE,
                max_lifetime_ms: 0,
                attributes: attrs(&[("user", "alice")]),
            },
        ),
    );
    add(
        "get",
        Req(
            4,
            Request::Get {
                token: token.clone(),
                names: vec!["user".into()],
            },
        ),
    );
    add(
        "get_all",
        Req(
            5,
            Request::Get {
                token: token.clone(),
                names: vec![],
            },
        ),
    );
    add(
        "set",
        Req(
            6,
            Request::Set {
                token: token.clone(),
                if_version: Some(1),
                puts: attrs(&[("cart", "1x book")]),
                deletes: vec!["csrf".into()],
            },
        ),
    );
    add("touch", Req(7, Request::Touch { token: token.clone() }));
    add("rotate", Req(8, Request::Rotate { token: token.clone() }));
    add("destroy", Req(9, Request::Destroy { token: token.clone() }));
    add("stats", Req(10, Request::Stats));
    add("members", Req(11, Request::Members));
    add("drain", Req(12, Request::Drain));

    add(
        "hello_ok",
        Resp(
            1,
            Response::HelloOk {
                version: 1,
                server_name: "sessync/0.1.0".into(),
                max_frame_len: 4 * 1024 * 1024,
            },
        ),
    );
    add("pong", Resp(2, Response::Pong(Bytes::from_static(b"ping"))));
    add(
        "session_created",
        Resp(
            3,
            Response::Session(SessionReply {
                token: Some(token.clone()),
                meta: meta(1, CREATED),
                attributes: attrs(&[("user", "alice")]),
            }),
        ),
    );
    add(
        "session_get",
        Resp(
            4,
            Response::Session(SessionReply {
                token: None,
                meta: meta(1, CREATED + 60_000),
                attributes: attrs(&[("user", "alice")]),
            }),
        ),
    );
    add(
        "session_set",
        Resp(
            6,
            Response::Session(SessionReply {
                token: None,
                meta: meta(2, CREATED + 120_000),
                attributes: Attributes::new(),
            }),
        ),
    );
    add("done", Resp(9, Response::Done));
    add(
        "stats_reply",
        Resp(
            10,
            Response::Stats(vec![("sessions".into(), 1), ("copies_received".into(), 0)]),
        ),
    );
    add(
        "members_reply",
        Resp(
            11,
            Response::Members(vec![
                MemberInfo {
                    node_id: NODE_A,
                    incarnation: CREATED,
                    state: MemberState::Alive,
                    peer: addr("10.0.0.1:7401"),
                    client: addr("10.0.0.1:7400"),
                },
                MemberInfo {
                    node_id: NODE_B,
                    incarnation: CREATED + 1,
                    state: MemberState::Leaving,
                    peer: addr("[fd00::2]:7401"),
                    client: addr("10.0.0.2:7400"),
                },
            ]),
        ),
    );
    add(
        "error_version_conflict",
        Resp(
            6,
            Response::Error(ErrorReply::new(
                ErrorCode::VersionConflict,
                "expected version 1, session is at 2",
            )),
        ),
    );
    add(
        "error_bad_crc",
        Resp(
            0,
            Response::Error(ErrorReply::new(ErrorCode::BadCrc, "CRC32 mismatch")),
        ),
    );

    add(
        "take",
        Peer(
            10,
            PeerMessage::Take {
                ids: vec![SESSION, SESSION_2],
            },
        ),
    );
    add("release", Peer(11, PeerMessage::Release { ids: vec![SESSION] }));
    add("ids", Peer(11, PeerMessage::Ids { ids: vec![SESSION] }));
    add("locate", Peer(12, PeerMessage::Locate { session_id: SESSION }));
    add(
        "located",
        Peer(
            12,
            PeerMessage::Located {
                session_id: SESSION,
                role: sessync_proto::Role::Backup,
                addr: addr("10.0.0.1:7401"),
                generation: Some(7),
            },
        ),
    );
    add("epoch", Peer(13, PeerMessage::Epoch));
    add("features", Peer(3, PeerMessage::Features(1)));
    add("features_are", Peer(3, PeerMessage::FeaturesAre(1)));
    add(
        "copy_acks",
        Peer(
            14,
            PeerMessage::CopyAcks {
                acks: vec![
                    (SESSION, 0x0123_4567_89ab_cdef),
                    (
                        sessync_proto::SessionId([
                            0xff, 0xee, 0xdd, 0xcc, 0xbb, 0xaa, 0x99, 0x88, 0x77, 0x66, 0x55, 0x44, 0x33,
                            0x22, 0x11, 0x00,
                        ]),
                        2,
                    ),
                ],
            },
        ),
    );
    add(
        "epoch_is",
        Peer(
            13,
            PeerMessage::EpochIs {
                node_id: NODE_A,
                uptime_ms: 60_000,
            },
        ),
    );
    add("auth_hello", Peer(1, hello));
    add("auth_challenge", Peer(1, challenge));
    add("auth_proof", Peer(2, proof));
    add("auth_ok", Peer(2, PeerMessage::AuthOk));
    add("peer_ping", Peer(3, PeerMessage::Ping(1)));
    add("peer_pong", Peer(3, PeerMessage::Pong(1)));
    add(
        "copy",
        Peer(
            4,
            PeerMessage::Copy {
                session_id: SESSION,
                last_transfer: 0,
            },
        ),
    );
    add(
        "copy_data",
        Peer(
            4,
            PeerMessage::CopyData {
                transfer: TRANSFER,
                holders: vec![std::net::SocketAddr::from(([10, 0, 0, 2], 7800))],
                record: record(),
            },
        ),
    );
    add(
        "copy_ack",
        Peer(
            5,
            PeerMessage::CopyAck {
                session_id: SESSION,
                transfer: TRANSFER,
            },
        ),
    );
    add("ok", Peer(5, PeerMessage::Ok));
    add(
        "moved",
        Peer(
            6,
            PeerMessage::Moved {
                session_id: SESSION,
                owner: addr("10.0.0.2:7401"),
            },
        ),
    );
    add(
        "moved_v6",
        Peer(
            7,
            PeerMessage::Moved {
                session_id: SESSION,
                owner: addr("[fd00::3]:7401"),
            },
        ),
    );
    add(
        "not_found",
        Peer(8, PeerMessage::NotFound { session_id: SESSION }),
    );
    add(
        "replicate",
        Peer(
            9,
            PeerMessage::Replicate {
                generation: 1,
                record: record(),
            },
        ),
    );
    add(
        "replicate_claim",
        Peer(
            9,
            PeerMessage::ReplicateClaim {
                generation: 3,
                base: ClaimBase {
                    owner: addr("10.0.0.2:7400"),
                    generation: 2,
                    writer: 0x1234_5679,
                },
                record: record(),
            },
        ),
    );
    add(
        "drop",
        Peer(
            10,
            PeerMessage::Drop {
                session_id: SESSION,
                generation: 1,
            },
        ),
    );
    add(
        "retire",
        Peer(
            12,
            PeerMessage::Retire {
                session_id: SESSION,
                generation: 3,
            },
        ),
    );
    add(
        "copy_refused",
        Peer(
            13,
            PeerMessage::CopyRefused {
                session_id: SESSION,
                transfer: 0x0123_4567_89ab_cdef,
            },
        ),
    );
    add(
        "promote",
        Peer(
            11,
            PeerMessage::Promote {
                session_id: SESSION,
                last_transfer: 0,
                failed_owner: addr("10.0.0.1:7401"),
            },
        ),
    );
    add(
        "peer_error",
        Peer(
            2,
            PeerMessage::Error(ErrorReply::new(
                ErrorCode::AuthFailed,
                "peer proof does not verify",
            )),
        ),
    );
    m
}
