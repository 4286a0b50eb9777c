//! Rules of protocol.md that an independent implementer asked about (issue 20), pinned
//! over real sockets: which error the peer port sends before and after the handshake
//! (2.5), errors about the connection carry request id 0 (2.5), an ERROR sent by a client
//! (2.5), the exact size limit of a session (2.2), the order of SET's checks (6), deadline
//! arithmetic that saturates (4), the old token after a failed request that moved the
//! session (5), any token of several in flight (5), and the STATS example's counters (6).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use common::raw_peer::{authenticated, raw_frame, Raw};
use common::*;
use sessync_proto::{
    decode_frame, peer_op, Attributes, Dialler, ErrorCode, Limits, Message, PeerMessage, Request, Response,
    SessionMeta, Token, MAX_HANDSHAKE_FRAME_LEN, OP_ERROR,
};
use tokio::io::AsyncWriteExt;
use tokio::time::timeout;

const DOC: &str = include_str!("../protocol.md");

fn error_code(r: &Response) -> Option<ErrorCode> {
    match r {
        Response::Error(e) => Some(e.code),
        _ => None,
    }
}

fn session(r: Response) -> sessync_proto::SessionReply {
    match r {
        Response::Session(s) => s,
        other => panic!("expected SESSION, got {other:?}"),
    }
}

fn attrs_of(pairs: &[(&str, &[u8])]) -> Attributes {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), Bytes::copy_from_slice(v)))
        .collect()
}

// ---------------------------------------------------------------------------------------
// 2.5: which error, with which request id
// ---------------------------------------------------------------------------------------

/// Before the handshake every frame that is not the next handshake message gets
/// AUTH_FAILED with its request id (client opcodes, ERROR, unknown opcodes, undecodable
/// handshake bodies alike); framing errors keep their own codes with request id 0. Every
/// ERROR then fits the 115-byte handshake frame limit. After the handshake the same
/// frames get UNKNOWN_OPCODE (or MALFORMED_FRAME, LIMIT_EXCEEDED) with their request id,
/// and the link is closed after each, LIMIT_EXCEEDED included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_peer_port_answers_auth_failed_before_the_handshake_and_unknown_opcode_after() {
    let nodes = cluster(1).await;
    let peer = nodes[0].peer_addr();

    let mut create = BytesMut::new();
    Request::Create {
        idle_ttl_ms: 0,
        max_lifetime_ms: 0,
        attributes: Attributes::new(),
    }
    .encode_frame(7, &mut create);
    let mut error = BytesMut::new();
    PeerMessage::Error(sessync_proto::ErrorReply::new(ErrorCode::Internal, "x")).encode_frame(8, &mut error);
    // A REPLICATE whose attribute count (0x0401 = 1025) is over max_attributes (1024).
    let mut replicate = vec![0u8; 8 + 16 + 40];
    replicate.extend_from_slice(&[0x04, 0x01]);
    let mut bad_crc = raw_frame(peer_op::PING, 5, &[0; 8]);
    let last = bad_crc.len() - 1;
    bad_crc[last] ^= 0xff;

    let before: Vec<(&str, Vec<u8>, u64, ErrorCode)> = vec![
        ("a client CREATE", create.to_vec(), 7, ErrorCode::AuthFailed),
        ("an ERROR frame", error.to_vec(), 8, ErrorCode::AuthFailed),
        (
            "an unknown opcode",
            raw_frame(0x7f, 9, &[]),
            9,
            ErrorCode::AuthFailed,
        ),
        (
            "a truncated AUTH_HELLO",
            raw_frame(peer_op::AUTH_HELLO, 10, &[0x22; 20]),
            10,
            ErrorCode::AuthFailed,
        ),
        (
            "a PING",
            raw_frame(peer_op::PING, 11, &[0; 8]),
            11,
            ErrorCode::AuthFailed,
        ),
        ("a bad CRC", bad_crc.clone(), 0, ErrorCode::BadCrc),
        (
            "a frame over 115 bytes",
            raw_frame(peer_op::AUTH_HELLO, 12, &[0; 100]),
            0,
            ErrorCode::FrameTooLarge,
        ),
    ];
    for (what, bytes, id, code) in before {
        let mut raw = Raw::connect(peer).await;
        // Read like a dialler that applies the handshake limit to the acceptor's frames.
        raw.max = MAX_HANDSHAKE_FRAME_LEN;
        raw.send_bytes(&bytes).await;
        assert_eq!(
            raw.error_then_close(what).await,
            (id, code),
            "before the handshake: {what}"
        );
    }

    let after: Vec<(&str, Vec<u8>, u64, ErrorCode)> = vec![
        ("a client CREATE", create.to_vec(), 7, ErrorCode::UnknownOpcode),
        ("an ERROR frame", error.to_vec(), 8, ErrorCode::UnknownOpcode),
        (
            "an unknown opcode",
            raw_frame(0x7f, 9, &[]),
            9,
            ErrorCode::UnknownOpcode,
        ),
        (
            "a reply opcode (AUTH_OK)",
            raw_frame(peer_op::AUTH_OK, 13, &[]),
            13,
            ErrorCode::UnknownOpcode,
        ),
        (
            "a second AUTH_HELLO",
            {
                let (_, hello) = Dialler::start(keys(), [3; 16], "127.0.0.1:9".parse().unwrap());
                let mut out = BytesMut::new();
                hello.encode_frame(14, &mut out);
                out.to_vec()
            },
            14,
            ErrorCode::UnknownOpcode,
        ),
        (
            "a truncated COPY",
            raw_frame(peer_op::COPY, 15, &[0; 10]),
            15,
            ErrorCode::MalformedFrame,
        ),
        (
            "a count over a limit",
            raw_frame(peer_op::REPLICATE, 16, &replicate),
            16,
            ErrorCode::LimitExceeded,
        ),
        ("a bad CRC", bad_crc, 0, ErrorCode::BadCrc),
    ];
    for (what, bytes, id, code) in after {
        let mut raw = authenticated(peer).await;
        // A request before it is answered first: the error is about the bad frame only.
        raw.send(20, &PeerMessage::Ping(1)).await;
        raw.send_bytes(&bytes).await;
        let f = raw.next().await.unwrap();
        assert_eq!((f.request_id, f.opcode), (20, peer_op::PONG), "{what}");
        assert_eq!(
            raw.error_then_close(what).await,
            (id, code),
            "after the handshake: {what}"
        );
    }
    stop(nodes).await;
}

/// TOO_MANY_CONNECTIONS and TIMEOUT are about the connection: request id 0, then the
/// close, on both ports (the peer port's handshake timeout is 5 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_errors_carry_request_id_zero() {
    let mut cfg = config();
    cfg.max_connections = 1;
    cfg.frame_timeout = Duration::from_millis(300);
    cfg.idle_timeout = Duration::from_millis(600);
    cfg.max_peer_handshakes = 1;
    let node = sessync_server::start(cfg).await.unwrap();

    // Peer port: one silent connection holds the only handshake slot.
    let mut silent_peer = Raw::connect(node.peer_addr()).await;
    silent_peer.max = MAX_HANDSHAKE_FRAME_LEN;
    let started = Instant::now();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut refused_peer = Raw::connect(node.peer_addr()).await;
    refused_peer.max = MAX_HANDSHAKE_FRAME_LEN;
    assert_eq!(
        refused_peer
            .error_then_close("a peer over the handshake limit")
            .await,
        (0, ErrorCode::TooManyConnections)
    );

    // Client port: a connection that completes a request, then goes idle.
    let mut idle = Raw::connect(node.client_addr()).await;
    idle.send(3, &Request::Ping(Bytes::new())).await;
    assert!(matches!(idle.reply(3).await, Response::Pong(_)));
    let mut refused = Raw::connect(node.client_addr()).await;
    assert_eq!(
        refused
            .error_then_close("a client over the connection limit")
            .await,
        (0, ErrorCode::TooManyConnections)
    );
    assert_eq!(
        idle.error_then_close("an idle client").await,
        (0, ErrorCode::Timeout)
    );

    // A started frame that never completes (the slot is free again).
    let mut partial = None;
    for _ in 0..50 {
        let mut raw = Raw::connect(node.client_addr()).await;
        let mut ping = BytesMut::new();
        Request::Ping(Bytes::new()).encode_frame(4, &mut ping);
        // A refused connection may already be closed: the write may fail.
        let _ = raw.stream.write_all(&ping).await;
        let f = raw.next().await;
        if f.is_none_or(|f| f.opcode == OP_ERROR) {
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        }
        partial = Some(raw);
        break;
    }
    let mut partial = partial.expect("the freed slot was never reusable");
    let mut out = BytesMut::new();
    Request::Stats.encode_frame(5, &mut out);
    partial.send_bytes(&out[..10]).await;
    assert_eq!(
        partial.error_then_close("a frame not completed in time").await,
        (0, ErrorCode::Timeout)
    );

    assert_eq!(
        silent_peer
            .error_then_close("a handshake not completed in time")
            .await,
        (0, ErrorCode::Timeout)
    );
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(4500) && took < Duration::from_secs(9),
        "the handshake timeout took {took:?}"
    );
    assert!(node.shutdown(WAIT).await);
}

/// ERROR is a reply: a client that sends one gets UNKNOWN_OPCODE with the frame's request
/// id and the close; so does a client that sends a reply opcode.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_error_frame_from_a_client_gets_unknown_opcode_and_a_close() {
    let nodes = cluster(1).await;
    let mut error = BytesMut::new();
    Response::Error(sessync_proto::ErrorReply::new(
        ErrorCode::Internal,
        "from a client",
    ))
    .encode_frame(6, &mut error);
    let mut pong = BytesMut::new();
    Response::Pong(Bytes::new()).encode_frame(7, &mut pong);
    for (what, bytes, id) in [("ERROR", error, 6), ("PONG", pong, 7)] {
        let mut raw = Raw::connect(nodes[0].client_addr()).await;
        raw.send(1, &Request::Ping(Bytes::from_static(b"first"))).await;
        assert!(matches!(raw.reply(1).await, Response::Pong(_)));
        raw.send_bytes(&bytes).await;
        assert_eq!(
            raw.error_then_close(what).await,
            (id, ErrorCode::UnknownOpcode),
            "a client's {what}"
        );
    }
    stop(nodes).await;
}

// ---------------------------------------------------------------------------------------
// 2.2 and 6: the size of a session, and the order of SET's checks
// ---------------------------------------------------------------------------------------

/// Attributes whose encoding is exactly `len` bytes: one attribute `v` (9 bytes of
/// framing: the count, the name's length and name, the value's length).
fn attrs_encoding(len: usize) -> Attributes {
    attrs_of(&[("v", &vec![b'x'; len - 9])])
}

/// A session's attributes may encode to at most max_frame_len - 1024 bytes; at that size
/// every frame that carries the whole session still fits (a SESSION reply to GET at a
/// second node, after a COPY_DATA).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_may_encode_to_max_frame_len_minus_1024_bytes() {
    let max_frame_len = 32 * 1024;
    let limit = max_frame_len as usize - 1024;
    let mut nodes = Vec::new();
    for _ in 0..2 {
        let mut cfg = config();
        cfg.limits.max_frame_len = max_frame_len;
        nodes.push(sessync_server::start(cfg).await.unwrap());
    }
    let mut a = Raw::connect(nodes[0].client_addr()).await;
    let create = |attributes| Request::Create {
        idle_ttl_ms: 0,
        max_lifetime_ms: 0,
        attributes,
    };
    a.send(1, &create(attrs_encoding(limit + 1))).await;
    assert_eq!(error_code(&a.reply(1).await), Some(ErrorCode::LimitExceeded));
    a.send(2, &create(attrs_encoding(limit))).await;
    let created = session(a.reply(2).await);
    let token = created.token.unwrap();
    // The smallest growth (an empty attribute: 7 bytes) is refused, a shrink is not.
    let set = |puts, deletes: &[&str]| Request::Set {
        token: token.clone(),
        if_version: None,
        puts,
        deletes: deletes.iter().map(|s| s.to_string()).collect(),
    };
    a.send(3, &set(attrs_of(&[("w", b"")]), &[])).await;
    assert_eq!(error_code(&a.reply(3).await), Some(ErrorCode::LimitExceeded));
    a.send(4, &set(attrs_of(&[("v", &vec![b'y'; limit - 9 - 7])]), &[]))
        .await;
    assert_eq!(session(a.reply(4).await).meta.version, 2);
    a.send(5, &set(attrs_of(&[("w", b"")]), &[])).await;
    assert_eq!(session(a.reply(5).await).meta.version, 3);
    // Exactly at the limit, copied to B and read whole there.
    let mut b = Raw::connect(nodes[1].client_addr()).await;
    b.send(
        6,
        &Request::Get {
            token: token.clone(),
            names: vec![],
        },
    )
    .await;
    let got = session(b.reply(6).await);
    assert!(got.token.is_some(), "served at B after a move: a new token");
    assert_eq!(got.meta.version, 3);
    let encoded: usize = 2 + got
        .attributes
        .iter()
        .map(|(k, v)| 2 + k.len() + 4 + v.len())
        .sum::<usize>();
    assert_eq!(encoded, limit);
    stop(nodes).await;
}

/// protocol.md 6, SET: decoding (LIMIT_EXCEEDED on counts), INVALID_REQUEST,
/// BACKUP_UNAVAILABLE, INVALID_TOKEN, the session (which may move here), VERSION_CONFLICT,
/// then LIMIT_EXCEEDED on the result; none of them closes the connection or changes the
/// session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_checks_run_in_the_documented_order() {
    let mut cfg = config();
    cfg.limits.max_attributes = 4;
    cfg.limits.max_frame_len = 16 * 1024;
    let node = sessync_server::start(cfg).await.unwrap();
    let mut c = Raw::connect(node.client_addr()).await;
    c.send(
        1,
        &Request::Create {
            idle_ttl_ms: 0,
            max_lifetime_ms: 0,
            attributes: attrs_of(&[("a", b"1"), ("b", b"2")]),
        },
    )
    .await;
    let token = session(c.reply(1).await).token.unwrap();
    let big: &[u8] = &[b'x'; 15_500];
    let set = |token: &str, if_version, puts: &[(&str, &[u8])], deletes: &[&str]| Request::Set {
        token: token.to_string(),
        if_version,
        puts: attrs_of(puts),
        deletes: deletes.iter().map(|s| s.to_string()).collect(),
    };
    let forged = "not-a-token";
    let five: &[(&str, &[u8])] = &[("a", b"1"), ("c", b"3"), ("d", b"4"), ("e", b"5"), ("f", b"6")];
    let three: &[(&str, &[u8])] = &[("c", b"3"), ("d", b"4"), ("e", b"5")];
    let cases: Vec<(&str, Request, ErrorCode)> = vec![
        (
            "a put count over max_attributes, with everything else wrong too",
            set(forged, Some(99), five, &["a"]),
            ErrorCode::LimitExceeded,
        ),
        (
            "put and delete the same name, forged token, wrong version, too large",
            set(forged, Some(99), &[("a", big)], &["a"]),
            ErrorCode::InvalidRequest,
        ),
        (
            "forged token, wrong version, too large",
            set(forged, Some(99), &[("c", big)], &[]),
            ErrorCode::InvalidToken,
        ),
        (
            "wrong version, too many attributes",
            set(&token, Some(99), three, &[]),
            ErrorCode::VersionConflict,
        ),
        (
            "wrong version, too large",
            set(&token, Some(99), &[("c", big)], &[]),
            ErrorCode::VersionConflict,
        ),
        (
            "too many attributes",
            set(&token, Some(1), three, &[]),
            ErrorCode::LimitExceeded,
        ),
        (
            "too large",
            set(&token, Some(1), &[("c", big)], &[]),
            ErrorCode::LimitExceeded,
        ),
    ];
    for (i, (what, req, code)) in cases.into_iter().enumerate() {
        let id = 10 + i as u64;
        c.send(id, &req).await;
        assert_eq!(error_code(&c.reply(id).await), Some(code), "{what}");
    }
    // Nothing changed, and the connection is still open.
    c.send(
        30,
        &Request::Get {
            token: token.clone(),
            names: vec![],
        },
    )
    .await;
    let s = session(c.reply(30).await);
    assert_eq!(s.meta.version, 1);
    assert_eq!(s.attributes, attrs_of(&[("a", b"1"), ("b", b"2")]));
    c.send(31, &set(&token, Some(1), &[("c", b"3")], &["a"])).await;
    assert_eq!(session(c.reply(31).await).meta.version, 2);
    assert!(node.shutdown(WAIT).await);

    // With backups required and none reachable: after INVALID_REQUEST, before the token.
    let mut cfg = config();
    cfg.replicas = 1;
    let node = sessync_server::start(cfg).await.unwrap();
    let mut c = Raw::connect(node.client_addr()).await;
    c.send(1, &set(forged, Some(99), &[("a", b"1")], &["a"])).await;
    assert_eq!(error_code(&c.reply(1).await), Some(ErrorCode::InvalidRequest));
    c.send(2, &set(forged, Some(99), &[("a", b"1")], &[])).await;
    assert_eq!(error_code(&c.reply(2).await), Some(ErrorCode::BackupUnavailable));
    assert!(node.shutdown(WAIT).await);
}

// ---------------------------------------------------------------------------------------
// 4 and 6, CREATE: deadlines saturate at 2^64 - 1
// ---------------------------------------------------------------------------------------

/// An idle TTL and a lifetime of 2^64 - 1 ms: the sums saturate (the session does not
/// expire by time), nothing wraps into the past, and the session is served, written,
/// copied to another node, backed up, taken over from its backup and destroyed like any.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_with_the_largest_ttl_and_lifetime_saturates() {
    let backup = sessync_server::start(config()).await.unwrap();
    let mut cfg = config();
    cfg.replicas = 1;
    cfg.peers = vec![backup.peer_addr()];
    let owner = sessync_server::start(cfg).await.unwrap();
    let mut c = Raw::connect(owner.client_addr()).await;
    let before = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let cases = [
        (u64::MAX, u64::MAX, u64::MAX),
        (u64::MAX, 0, 0),
        (1_800_000, u64::MAX, u64::MAX),
    ];
    let mut tokens = Vec::new();
    for (i, (idle, lifetime, absolute)) in cases.into_iter().enumerate() {
        let id = i as u64 + 1;
        c.send(
            id,
            &Request::Create {
                idle_ttl_ms: idle,
                max_lifetime_ms: lifetime,
                attributes: attrs_of(&[("user", b"alice")]),
            },
        )
        .await;
        let s = session(c.reply(id).await);
        let meta: SessionMeta = s.meta;
        assert_eq!(meta.idle_ttl_ms, idle, "case {i}");
        assert_eq!(meta.absolute_deadline_ms, absolute, "case {i}");
        assert!(meta.created_ms >= before);
        let expected = if idle == u64::MAX {
            u64::MAX
        } else {
            meta.last_access_ms + idle
        };
        assert_eq!(meta.expires_at_ms(), expected, "case {i}");
        tokens.push(s.token.unwrap());
    }
    let oc = client(owner.client_addr()).await;
    for t in &tokens {
        let s = oc.set(t).put("cart", "1").send().await.unwrap();
        assert_eq!(s.version(), 2);
    }
    // The owner goes away: the backup takes each session over with its meta intact.
    assert!(owner.shutdown(WAIT).await);
    let bc = client(backup.client_addr()).await;
    for (t, (idle, _, absolute)) in tokens.iter().zip(cases) {
        let s = timeout(WAIT, bc.get(t)).await.unwrap().unwrap();
        assert!(s.token_changed);
        assert_eq!(s.meta.idle_ttl_ms, idle);
        assert_eq!(s.meta.absolute_deadline_ms, absolute);
        assert_eq!(s.get("cart").map(|v| &v[..]), Some(&b"1"[..]));
        bc.destroy(&s.token).await.unwrap();
        let gone = bc.get(&s.token).await.unwrap_err();
        assert_eq!(gone.code(), Some(ErrorCode::SessionNotFound));
    }
    assert!(backup.shutdown(WAIT).await);
}

// ---------------------------------------------------------------------------------------
// 5: tokens after an ERROR, and several tokens in flight
// ---------------------------------------------------------------------------------------

/// A SET answered VERSION_CONFLICT at B moved the session to B, and the ERROR carries no
/// token. The client keeps its old token: every node still serves it (the old owner
/// answers MOVED, one extra hop), and the next success hands out a token naming the
/// serving node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_request_that_moved_the_session_leaves_the_old_token_working() {
    let nodes = cluster(3).await;
    let (ca, cb, cc) = (
        client(nodes[0].client_addr()).await,
        client(nodes[1].client_addr()).await,
        client(nodes[2].client_addr()).await,
    );
    let s = ca.create(attrs(&[("user", "alice")])).await.unwrap();
    let old = s.token;
    let err = cb
        .set(&old)
        .put("cart", "1")
        .if_version(99)
        .send()
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::VersionConflict));
    assert_eq!(
        stat(&cb.stats().await.unwrap(), "copies_received"),
        1,
        "the failed SET moved it to B"
    );
    let moved_before = stat(&ca.stats().await.unwrap(), "moved");

    // At C, with the token that names A: A answers MOVED{B}, C copies from B.
    let got = cc.get(&old).await.unwrap();
    assert!(got.token_changed);
    assert_eq!(got.get("user").map(|v| &v[..]), Some(&b"alice"[..]));
    assert_eq!(got.version(), 1, "nothing of the failed SET was applied");
    assert_eq!(
        Token::verify(&got.token, &keys()).unwrap().owner,
        nodes[2].peer_addr()
    );
    assert_eq!(
        stat(&ca.stats().await.unwrap(), "moved"),
        moved_before + 1,
        "the old token cost one MOVED at A"
    );
    // And at A itself, whose own token it is: A follows its forwarding entry and takes
    // the session back (the token names A already, so it may stay as it is).
    let back = ca.get(&old).await.unwrap();
    assert_eq!(back.get("user").map(|v| &v[..]), Some(&b"alice"[..]));
    assert_eq!(
        Token::verify(&back.token, &keys()).unwrap().owner,
        nodes[0].peer_addr()
    );
    stop(nodes).await;
}

/// Requests for one session in flight at once at different nodes each come back with
/// their own token. Every one of them (and the first) stays usable at every node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_token_of_requests_in_flight_at_once_stays_usable() {
    let nodes = cluster(3).await;
    let mut clients = Vec::new();
    for n in &nodes {
        clients.push(client(n.client_addr()).await);
    }
    let first = clients[0]
        .create(attrs(&[("user", "alice")]))
        .await
        .unwrap()
        .token;
    let (r1, r2) = tokio::join!(clients[1].get(&first), clients[2].get(&first));
    let mut tokens = vec![first.clone(), r1.unwrap().token, r2.unwrap().token];
    tokens.dedup();
    assert!(tokens.len() >= 2, "at least one of them moved the session");
    for round in 0..2 {
        for t in &tokens {
            for c in &clients {
                let s = timeout(WAIT, c.get(t)).await.unwrap().unwrap_or_else(|e| {
                    panic!(
                        "round {round}: a token of the session failed at {}: {e}",
                        c.addr()
                    )
                });
                assert_eq!(s.get("user").map(|v| &v[..]), Some(&b"alice"[..]));
            }
        }
    }
    stop(nodes).await;
}

// ---------------------------------------------------------------------------------------
// 6, STATS: the example shows counters the node reports
// ---------------------------------------------------------------------------------------

/// The hex of one `<!-- example: KIND NAME -->` block of protocol.md.
fn doc_example(kind_name: &str) -> Vec<u8> {
    let marker = format!("<!-- example: {kind_name} -->");
    let at = DOC
        .find(&marker)
        .unwrap_or_else(|| panic!("no example {kind_name}"));
    let rest = &DOC[at + marker.len()..];
    let start = rest.find("```hex").unwrap() + "```hex".len();
    let end = start + rest[start..].find("```").unwrap();
    rest[start..end]
        .split_whitespace()
        .map(|h| u8::from_str_radix(h, 16).unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stats_example_shows_counters_a_node_reports() {
    let bytes = doc_example("client-response stats_reply");
    let mut buf = BytesMut::from(&bytes[..]);
    let f = decode_frame(&mut buf, Limits::DEFAULT.max_frame_len)
        .unwrap()
        .unwrap();
    let Response::Stats(example) = Response::decode_frame(&f, &Limits::DEFAULT).unwrap() else {
        panic!("the stats_reply example is not a STATS_REPLY");
    };
    assert!(!example.is_empty());
    let nodes = cluster(1).await;
    let reported = client(nodes[0].client_addr()).await.stats().await.unwrap();
    for (name, _) in &example {
        assert!(
            reported.iter().any(|(k, _)| k == name),
            "protocol.md's STATS example shows {name:?}, which the node does not report: {reported:?}"
        );
    }
    stop(nodes).await;
}
