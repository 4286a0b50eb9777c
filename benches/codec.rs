//! Codec micro-benchmarks: encode and decode of every message type, as whole frames
//! (header, body, CRC), with the sizes the load benchmarks use (1 KiB in 8 attributes).
//!
//! `decode` is what a receiver does with a complete frame in its buffer: `decode_frame`
//! (length, CRC, header) then `Message::decode_frame` (the body). The node stores
//! attributes packed and replies with `encode_session_reply`, so that encoder is measured
//! beside `Response::Session`.
//!
//! Run: `cargo bench --bench codec` (add `-- --quick` for a short run).
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::net::SocketAddr;

use bytes::{Bytes, BytesMut};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use sessync_proto::{
    decode_frame, encode_session_reply, Attributes, ErrorCode, ErrorReply, Keyring, Limits, Message,
    PackedAttributes, PeerMessage, Request, Response, SessionId, SessionMeta, SessionRecord, SessionReply,
    Token,
};

fn attributes(size: usize, n: usize) -> Attributes {
    (0..n)
        .map(|i| {
            let value: Vec<u8> = (0..size / n).map(|j| b'a' + ((i + j) % 26) as u8).collect();
            (format!("attr{i}"), Bytes::from(value))
        })
        .collect()
}

fn token() -> String {
    let keys = Keyring::single(b"bench-secret-bench-secret-0123456").unwrap();
    Token {
        session_id: SessionId([7; 16]),
        generation: 0,
        owner: "127.0.0.1:7800".parse().unwrap(),
        backups: vec![],
    }
    .sign(&keys)
}

fn meta() -> SessionMeta {
    SessionMeta {
        version: 3,
        created_ms: 1_700_000_000_000,
        last_access_ms: 1_700_000_100_000,
        idle_ttl_ms: 1_800_000,
        absolute_deadline_ms: 0,
    }
}

fn requests() -> Vec<(&'static str, Request)> {
    let token = token();
    let attrs = attributes(1024, 8);
    let one: Attributes = attrs
        .iter()
        .take(1)
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    vec![
        (
            "HELLO",
            Request::Hello {
                min_version: 1,
                max_version: 1,
                client_name: "sessync-bench/0.1".into(),
                password: None,
            },
        ),
        ("PING", Request::Ping(Bytes::from_static(b"12345678"))),
        (
            "CREATE 1KiB/8",
            Request::Create {
                idle_ttl_ms: 0,
                max_lifetime_ms: 0,
                attributes: attrs,
            },
        ),
        (
            "GET",
            Request::Get {
                token: token.clone(),
                names: vec![],
            },
        ),
        (
            "SET 1 attr",
            Request::Set {
                token: token.clone(),
                if_version: Some(3),
                puts: one,
                deletes: vec![],
            },
        ),
        ("TOUCH", Request::Touch { token: token.clone() }),
        ("ROTATE", Request::Rotate { token: token.clone() }),
        ("DESTROY", Request::Destroy { token }),
        ("STATS", Request::Stats),
    ]
}

fn responses() -> Vec<(&'static str, Response)> {
    let stats: Vec<(String, u64)> = (0..16).map(|i| (format!("counter_{i}"), i * 1000)).collect();
    vec![
        (
            "HELLO_OK",
            Response::HelloOk {
                version: 1,
                server_name: "sessync/0.1.0".into(),
                max_frame_len: 4 << 20,
            },
        ),
        ("PONG", Response::Pong(Bytes::from_static(b"12345678"))),
        (
            "SESSION 1KiB/8",
            Response::Session(SessionReply {
                token: None,
                meta: meta(),
                attributes: attributes(1024, 8),
            }),
        ),
        (
            "SESSION moved 1KiB/8",
            Response::Session(SessionReply {
                token: Some(token()),
                meta: meta(),
                attributes: attributes(1024, 8),
            }),
        ),
        (
            "SESSION no attrs",
            Response::Session(SessionReply {
                token: None,
                meta: meta(),
                attributes: Attributes::new(),
            }),
        ),
        ("DONE", Response::Done),
        ("STATS_REPLY", Response::Stats(stats)),
        (
            "ERROR",
            Response::Error(ErrorReply::new(ErrorCode::SessionNotFound, "no such session")),
        ),
    ]
}

fn peer_messages() -> Vec<(&'static str, PeerMessage)> {
    let addr: SocketAddr = "127.0.0.1:7801".parse().unwrap();
    let record = SessionRecord {
        id: SessionId([9; 16]),
        meta: meta(),
        attributes: PackedAttributes::pack(&attributes(1024, 8)),
    };
    vec![
        (
            "AUTH_HELLO",
            PeerMessage::AuthHello {
                node_id: [1; 16],
                key_id: 0,
                nonce: [2; 32],
                advertised: addr,
            },
        ),
        (
            "COPY",
            PeerMessage::Copy {
                session_id: SessionId([9; 16]),
                last_transfer: 42,
            },
        ),
        (
            "COPY_DATA 1KiB/8",
            PeerMessage::CopyData {
                transfer: 43,
                holders: vec![std::net::SocketAddr::from(([10, 0, 0, 2], 7800))],
                record: record.clone(),
            },
        ),
        (
            "MOVED",
            PeerMessage::Moved {
                session_id: SessionId([9; 16]),
                owner: addr,
            },
        ),
        (
            "COPY_ACK",
            PeerMessage::CopyAck {
                session_id: SessionId([9; 16]),
                transfer: 43,
            },
        ),
        (
            "REPLICATE 1KiB/8",
            PeerMessage::Replicate {
                generation: 1,
                record,
            },
        ),
        ("OK", PeerMessage::Ok),
    ]
}

fn bench_message<M: Message>(c: &mut Criterion, group: &str, items: Vec<(&'static str, M)>) {
    let limits = Limits::DEFAULT;
    let mut g = c.benchmark_group(group);
    for (name, msg) in &items {
        let mut frame = BytesMut::new();
        msg.encode_frame(1, &mut frame);
        g.throughput(Throughput::Bytes(frame.len() as u64));
        let mut out = BytesMut::with_capacity(frame.len() * 2);
        g.bench_with_input(BenchmarkId::new("encode", name), msg, |b, msg| {
            b.iter(|| {
                out.clear();
                black_box(msg).encode_frame(1, &mut out);
                black_box(out.len())
            })
        });
        let frozen = frame.freeze();
        g.bench_with_input(BenchmarkId::new("decode", name), &frozen, |b, raw| {
            b.iter(|| {
                let mut buf = BytesMut::from(&raw[..]);
                let f = decode_frame(&mut buf, limits.max_frame_len).unwrap().unwrap();
                black_box(M::decode_frame(&f, &limits).unwrap())
            })
        });
    }
    g.finish();
}

fn codec(c: &mut Criterion) {
    bench_message(c, "client-request", requests());
    bench_message(c, "client-response", responses());
    bench_message(c, "peer", peer_messages());

    // What the node does for every GET: the SESSION reply straight from packed attributes.
    let packed = PackedAttributes::pack(&attributes(1024, 8));
    let mut g = c.benchmark_group("node-reply");
    let mut out = BytesMut::with_capacity(4096);
    g.bench_function("encode_session_reply packed 1KiB/8", |b| {
        b.iter(|| {
            out.clear();
            encode_session_reply(&mut out, 1, None, &meta(), black_box(&packed));
            black_box(out.len())
        })
    });
    let t = token();
    g.bench_function("encode_session_reply packed 1KiB/8 + token", |b| {
        b.iter(|| {
            out.clear();
            encode_session_reply(&mut out, 1, Some(&t), &meta(), black_box(&packed));
            black_box(out.len())
        })
    });
    let keys = Keyring::single(b"bench-secret-bench-secret-0123456").unwrap();
    g.bench_function("Token::verify", |b| {
        b.iter(|| black_box(Token::verify(black_box(&t), &keys).unwrap()))
    });
    let tok = Token::verify(&t, &keys).unwrap();
    g.bench_function("Token::sign", |b| {
        b.iter(|| black_box(black_box(&tok).sign(&keys)))
    });
    g.finish();
}

criterion_group!(benches, codec);
criterion_main!(benches);
