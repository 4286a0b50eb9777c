//! Hostile input over real sockets, on both ports. Every test runs a bystander (a client
//! that keeps creating sessions and copying them between nodes through the peer port) while
//! the attack goes on, and fails if a single bystander request fails; and every test checks
//! that the attack left no memory behind (the node's STATS `bytes`, `sessions` and
//! `connections`, or a child node's RSS). Every network wait is bounded.
//!
//! The list, and where each is: random bytes on both ports, a 4 GiB length prefix
//! on both ports, slowloris (a crowd of them on the client port, the handshake timeout on
//! the peer port), a connection flood past `--max-connections` and past the peer
//! handshake limit, forged tokens, expired and destroyed sessions' tokens, unauthenticated
//! peers sending COPY and friends, replayed and reflected handshakes, and clients and
//! peers that never read: all here. tests/node_hostile.rs has single-connection versions
//! of the client-port cases; tests/cluster.rs a wrong secret, a COPY without a handshake
//! and a replayed AUTH_PROOF.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use bytes::{BufMut, BytesMut};
use common::*;
use rand::rngs::StdRng;
use rand::{Rng, RngCore, SeedableRng};
use sessync_client::{Attributes, Bytes, Client, CreateOptions, ErrorCode};
use sessync_proto::{
    client_op, decode_frame, peer_op, write_frame, Dialler, Keyring, Message, PeerMessage, Request, Response,
    SessionId, Token,
};
use sessync_server::{NodeConfig, NodeHandle};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio::time::{sleep, timeout};

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

fn attrs(pairs: &[(&str, &str)]) -> Attributes {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), Bytes::copy_from_slice(v.as_bytes())))
        .collect()
}

async fn start(tweak: impl FnOnce(&mut NodeConfig)) -> NodeHandle {
    let mut cfg = config();
    tweak(&mut cfg);
    timeout(WAIT, sessync_server::start(cfg)).await.unwrap().unwrap()
}

async fn stats(addr: SocketAddr) -> HashMap<String, u64> {
    let c = client(addr).await;
    timeout(WAIT, c.stats())
        .await
        .unwrap()
        .unwrap()
        .into_iter()
        .collect()
}

/// Polls `stat` on the node until `ok` holds (bounded); returns the last value.
async fn wait_for_stat(addr: SocketAddr, stat: &str, ok: impl Fn(u64) -> bool) -> u64 {
    let started = Instant::now();
    loop {
        let v = stats(addr).await[stat];
        if ok(v) || started.elapsed() > WAIT {
            return v;
        }
        sleep(Duration::from_millis(50)).await;
    }
}

/// A client that keeps working while an attack goes on: each round creates a session at
/// `create_at`, reads it at `read_at` (a copy through the peer port when they differ),
/// writes it and reads it back. Any failure is counted.
struct Bystander {
    stop: Arc<AtomicBool>,
    task: JoinHandle<(usize, Vec<String>)>,
}

impl Bystander {
    async fn start(create_at: SocketAddr, read_at: SocketAddr) -> Bystander {
        let stop = Arc::new(AtomicBool::new(false));
        let (a, b) = (client(create_at).await, client(read_at).await);
        let flag = stop.clone();
        let task = tokio::spawn(async move {
            let (mut rounds, mut failures) = (0, Vec::new());
            while !flag.load(Ordering::Relaxed) || rounds < 3 {
                if let Err(e) = Bystander::round(&a, &b, rounds).await {
                    failures.push(e);
                }
                rounds += 1;
                sleep(Duration::from_millis(10)).await;
            }
            (rounds, failures)
        });
        Bystander { stop, task }
    }

    async fn round(a: &Client, b: &Client, n: usize) -> Result<(), String> {
        let step = |what: &'static str| move |e: tokio::time::error::Elapsed| format!("{what}: {e}");
        let s = timeout(WAIT, a.create(attrs(&[("round", &n.to_string())])))
            .await
            .map_err(step("create"))?
            .map_err(|e| format!("create: {e}"))?;
        let got = timeout(WAIT, b.get(&s.token))
            .await
            .map_err(step("get"))?
            .map_err(|e| format!("get: {e}"))?;
        if got.get("round").map(|v| &v[..]) != Some(n.to_string().as_bytes()) {
            return Err(format!("round {n}: read back {:?}", got.get("round")));
        }
        let w = timeout(WAIT, b.set(&got.token).put("more", "x").if_version(1).send())
            .await
            .map_err(step("set"))?
            .map_err(|e| format!("set: {e}"))?;
        let again = timeout(WAIT, b.get(&w.token))
            .await
            .map_err(step("get again"))?
            .map_err(|e| format!("get again: {e}"))?;
        if again.version() != 2 {
            return Err(format!("round {n}: version {} after one write", again.version()));
        }
        timeout(WAIT, b.destroy(&again.token))
            .await
            .map_err(step("destroy"))?
            .map_err(|e| format!("destroy: {e}"))
    }

    /// Stops after the current round; fails the test if any round failed.
    async fn finish(self) -> usize {
        self.stop.store(true, Ordering::Relaxed);
        let (rounds, failures) = timeout(WAIT * 3, self.task).await.unwrap().unwrap();
        assert!(
            failures.is_empty(),
            "the bystander failed meanwhile: {failures:?}"
        );
        rounds
    }
}

fn frame(opcode: u8, request_id: u64, body: &[u8]) -> Vec<u8> {
    let mut out = BytesMut::new();
    write_frame(&mut out, opcode, request_id, |b| b.put_slice(body));
    out.to_vec()
}

fn encode<M: Message>(request_id: u64, msg: &M) -> Vec<u8> {
    let mut out = BytesMut::new();
    msg.encode_frame(request_id, &mut out);
    out.to_vec()
}

/// Reads until the node closes the connection (bounded); returns every frame it sent, as
/// (request id, opcode, body).
async fn frames_until_close<R: tokio::io::AsyncRead + Unpin>(stream: &mut R) -> Vec<(u64, u8, Bytes)> {
    let mut buf = BytesMut::new();
    let mut frames = Vec::new();
    loop {
        match timeout(WAIT, stream.read_buf(&mut buf))
            .await
            .expect("the node never closed the connection")
        {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        while let Ok(Some(f)) = decode_frame(&mut buf, 1 << 24) {
            frames.push((f.request_id, f.opcode, f.body));
        }
    }
    frames
}

/// Reads the next frame (bounded); `None` when the node closed the connection.
async fn next_frame(stream: &mut TcpStream, buf: &mut BytesMut) -> Option<(u64, u8, Bytes)> {
    loop {
        if let Ok(Some(f)) = decode_frame(buf, 1 << 24) {
            return Some((f.request_id, f.opcode, f.body));
        }
        match timeout(WAIT, stream.read_buf(buf))
            .await
            .expect("no frame in time")
        {
            Ok(0) | Err(_) => return None,
            Ok(_) => {}
        }
    }
}

fn peer_message(opcode: u8, body: &Bytes) -> PeerMessage {
    let f = sessync_proto::Frame {
        opcode,
        request_id: 0,
        body: body.clone(),
    };
    PeerMessage::decode_frame(&f, &Default::default()).unwrap()
}

fn response(opcode: u8, body: &Bytes) -> Response {
    let f = sessync_proto::Frame {
        opcode,
        request_id: 0,
        body: body.clone(),
    };
    Response::decode_frame(&f, &Default::default()).unwrap()
}

fn error_code(opcode: u8, body: &Bytes) -> Option<ErrorCode> {
    (opcode == sessync_proto::OP_ERROR).then(|| match response(opcode, body) {
        Response::Error(e) => e.code,
        _ => unreachable!(),
    })
}

/// A peer-port connection that completed the handshake with the cluster secret.
async fn authenticated_peer(node: &NodeHandle) -> (TcpStream, BytesMut) {
    authenticated_peer_at(node.peer_addr()).await
}

/// [`authenticated_peer`] for a node's peer address (a child process's, say).
async fn authenticated_peer_at(peer: SocketAddr) -> (TcpStream, BytesMut) {
    let st = timeout(WAIT, TcpStream::connect(peer)).await.unwrap().unwrap();
    handshake_on(st).await
}

/// Completes the handshake as a dialler with the cluster secret on a connected stream.
async fn handshake_on(mut st: TcpStream) -> (TcpStream, BytesMut) {
    let mut buf = BytesMut::new();
    let me: SocketAddr = "127.0.0.1:9".parse().unwrap();
    let (dialler, hello) = Dialler::start(keys(), SessionId::random().0, me);
    st.write_all(&encode(1, &hello)).await.unwrap();
    let (_, op, body) = next_frame(&mut st, &mut buf).await.unwrap();
    let (_, proof) = dialler.handle_challenge(peer_message(op, &body)).unwrap();
    st.write_all(&encode(2, &proof)).await.unwrap();
    let (_, op, _) = next_frame(&mut st, &mut buf).await.unwrap();
    assert_eq!(op, peer_op::AUTH_OK);
    (st, buf)
}

/// A listener that counts the connections made to it and never says a word.
async fn counting_listener() -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let count = Arc::new(AtomicUsize::new(0));
    let c = count.clone();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = listener.accept().await {
            c.fetch_add(1, Ordering::SeqCst);
            held.push(s);
        }
    });
    (addr, count)
}

/// Resident memory of a process, in bytes.
fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap();
    kb * 1024
}

const MIB: u64 = 1 << 20;

/// Bytes a node holds for live sessions: its `bytes` without the tombstones (which the
/// bystander leaves behind, one per destroyed session).
fn live_bytes(s: &HashMap<String, u64>) -> u64 {
    s["bytes"] - sessync_server::table::TOMBSTONE_OVERHEAD as u64 * s["tombstones"]
}

// ---------------------------------------------------------------------------------------
// Random bytes
// ---------------------------------------------------------------------------------------

/// Garbage of three shapes: raw random bytes (a random length prefix, nearly always over
/// the limit); a plausible length and random bytes (a CRC failure, or the frame timeout
/// when short); and well-framed frames (correct CRC) with a random opcode and body.
fn garbage(rng: &mut StdRng, forbidden_opcodes: &[u8]) -> Vec<u8> {
    let mut bytes = vec![0u8; rng.gen_range(1..4096)];
    rng.fill_bytes(&mut bytes);
    match rng.gen_range(0..3) {
        0 => bytes,
        1 => {
            let len = rng.gen_range(16..256u32);
            let mut v = len.to_be_bytes().to_vec();
            v.extend_from_slice(&bytes[..bytes.len().min(len as usize + 8)]);
            v
        }
        _ => {
            let mut v = Vec::new();
            for _ in 0..rng.gen_range(1..4) {
                let mut op = rng.gen();
                while forbidden_opcodes.contains(&op) {
                    op = rng.gen();
                }
                let body = &bytes[..rng.gen_range(0..bytes.len().min(200))];
                v.extend_from_slice(&frame(op, rng.gen(), body));
            }
            // Frames that happen to be valid requests are answered; this ends it for sure.
            v.extend_from_slice(&[0xff; 4]);
            v
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_bytes_on_the_client_port_get_an_error_and_a_close() {
    let node = start(|c| c.frame_timeout = Duration::from_millis(500)).await;
    let addr = node.client_addr();
    let before = stats(addr).await;
    let bystander = Bystander::start(addr, addr).await;
    let mut rng = StdRng::seed_from_u64(0x5e55_0001);
    let mut attempts = Vec::new();
    for i in 0..60 {
        // CREATE is left out so that a body that happens to decode cannot add a session.
        let bytes = garbage(&mut rng, &[client_op::CREATE]);
        attempts.push(tokio::spawn(async move {
            let mut s = TcpStream::connect(addr).await.unwrap();
            let _ = s.write_all(&bytes).await;
            let frames = frames_until_close(&mut s).await;
            (i, bytes, frames)
        }));
    }
    let mut errors = 0;
    for a in attempts {
        let (i, bytes, frames) = timeout(WAIT * 2, a).await.unwrap().unwrap();
        // Whatever the node answered, it ended in one closing error frame.
        let (_, op, body) = frames
            .last()
            .unwrap_or_else(|| panic!("garbage #{i} got no answer before the close: {bytes:02x?}"));
        let code =
            error_code(*op, body).unwrap_or_else(|| panic!("garbage #{i}: last frame is not an error"));
        assert!(
            code.closes_connection(),
            "garbage #{i} closed with {code}, a code that does not close"
        );
        errors += frames.len();
    }
    assert!(errors >= 60);
    bystander.finish().await;
    let after = stats(addr).await;
    assert_eq!(after["sessions"], before["sessions"], "garbage made sessions");
    assert_eq!(
        live_bytes(&after),
        live_bytes(&before),
        "garbage left data in the table"
    );
    assert!(after["errors"] >= before["errors"] + 60);
    // Every garbage connection is gone (only a STATS client remains, as before).
    let open = wait_for_stat(addr, "connections", |n| n <= before["connections"]).await;
    assert!(
        open <= before["connections"],
        "{open} client connections still open"
    );
    assert!(node.shutdown(WAIT).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_bytes_on_the_peer_port_get_an_error_and_a_close() {
    let a = start(|_| {}).await;
    let b = start(|_| {}).await;
    // The bystander's sessions are created at A and copied to B over the peer port under
    // attack, and A's own peer port is attacked too.
    let bystander = Bystander::start(b.client_addr(), a.client_addr()).await;
    let mut rng = StdRng::seed_from_u64(0x5e55_0002);
    for target in [&a, &b] {
        let peer = target.peer_addr();
        let mut attempts = Vec::new();
        for i in 0..40 {
            let bytes = garbage(&mut rng, &[]);
            attempts.push(tokio::spawn(async move {
                let mut s = TcpStream::connect(peer).await.unwrap();
                let _ = s.write_all(&bytes).await;
                (i, bytes, frames_until_close(&mut s).await)
            }));
        }
        for t in attempts {
            let (i, bytes, frames) = timeout(WAIT * 2, t).await.unwrap().unwrap();
            // No session data, no handshake step: at most one error frame, then the close
            // (a short random frame is closed at the handshake timeout instead).
            assert!(frames.len() <= 1, "garbage #{i} got {} frames", frames.len());
            if let Some((_, op, body)) = frames.first() {
                let msg = peer_message(*op, body);
                assert!(
                    matches!(msg, PeerMessage::Error(ref e) if e.code.closes_connection()),
                    "garbage #{i} ({} bytes) got {msg:?}",
                    bytes.len()
                );
            }
        }
    }
    bystander.finish().await;
    // Garbage moved no session anywhere: every copy served was received by the other node
    // (the bystander's), and nothing is left live.
    let (sa, sb) = (stats(a.client_addr()).await, stats(b.client_addr()).await);
    assert_eq!(
        sa["copies_served"], sb["copies_received"],
        "A handed sessions to someone else"
    );
    assert_eq!(sb["copies_served"], sa["copies_received"]);
    for n in [&a, &b] {
        assert_eq!(wait_for_stat(n.client_addr(), "sessions", |v| v == 0).await, 0);
    }
    assert!(a.shutdown(WAIT).await && b.shutdown(WAIT).await);
}

// ---------------------------------------------------------------------------------------
// Length prefixes and floods on the peer port
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_gib_length_prefix_on_the_peer_port_is_refused_at_once() {
    let a = start(|_| {}).await;
    let b = start(|_| {}).await;
    let bystander = Bystander::start(a.client_addr(), b.client_addr()).await;

    // Before the handshake, and on a link that completed it.
    let mut fresh = TcpStream::connect(a.peer_addr()).await.unwrap();
    let (mut authed, _) = authenticated_peer(&a).await;
    for (what, stream) in [("unauthenticated", &mut fresh), ("authenticated", &mut authed)] {
        let started = Instant::now();
        stream.write_all(&[0xff, 0xff, 0xff, 0xff]).await.unwrap();
        let frames = frames_until_close(stream).await;
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{what}: the node waited for a body it must not read"
        );
        assert_eq!(frames.len(), 1, "{what}: {frames:?}");
        let (id, op, body) = &frames[0];
        assert_eq!(*id, 0, "{what}: a framing error is about the connection (id 0)");
        assert!(
            matches!(peer_message(*op, body), PeerMessage::Error(e) if e.code == ErrorCode::FrameTooLarge),
            "{what}"
        );
    }
    bystander.finish().await;
    assert!(a.shutdown(WAIT).await && b.shutdown(WAIT).await);
}

/// What bounds a flood of connections that stay within the handshake limit (256 by
/// default; the next test covers the limit) is the handshake timeout (5 s): silent and
/// trickling connections are closed by then, while real peers keep copying.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_port_flood_and_slowloris_are_closed_at_the_handshake_timeout() {
    let a = start(|_| {}).await;
    let b = start(|_| {}).await;
    let bystander = Bystander::start(a.client_addr(), b.client_addr()).await;
    let started = Instant::now();
    let mut silent = Vec::new();
    for _ in 0..200 {
        silent.push(
            timeout(WAIT, TcpStream::connect(a.peer_addr()))
                .await
                .unwrap()
                .unwrap(),
        );
    }
    // One byte of an AUTH_HELLO every 300 ms: never a whole frame in time.
    let hello = encode(
        1,
        &Dialler::start(keys(), [3; 16], "127.0.0.1:9".parse().unwrap()).1,
    );
    let peer = a.peer_addr();
    let trickle = tokio::spawn(async move {
        let mut s = TcpStream::connect(peer).await.unwrap();
        for byte in hello {
            if s.write_all(&[byte]).await.is_err() {
                break;
            }
            sleep(Duration::from_millis(300)).await;
        }
        frames_until_close(&mut s).await
    });
    let closes = silent
        .into_iter()
        .map(|mut s| tokio::spawn(async move { frames_until_close(&mut s).await }));
    for c in closes {
        let frames = timeout(WAIT, c).await.unwrap().unwrap();
        let (_, op, body) = frames.last().expect("closed without an error frame");
        assert!(matches!(peer_message(*op, body), PeerMessage::Error(e) if e.code == ErrorCode::Timeout));
    }
    let frames = timeout(WAIT, trickle).await.unwrap().unwrap();
    assert!(
        frames.iter().all(|(_, op, _)| *op == sessync_proto::OP_ERROR),
        "{frames:?}"
    );
    let took = started.elapsed();
    assert!(
        took >= Duration::from_secs(4) && took < Duration::from_secs(9),
        "closed after {took:?}, the handshake timeout is 5 s"
    );
    let rounds = bystander.finish().await;
    assert!(
        rounds >= 10,
        "the bystander made only {rounds} rounds in {took:?}"
    );
    assert!(a.shutdown(WAIT).await && b.shutdown(WAIT).await);
}

/// Past `max_peer_handshakes` connections still in the handshake, further peer connections
/// are refused at once with TOO_MANY_CONNECTIONS (nothing queued, nothing buffered), while
/// a link that already authenticated keeps copying; once the held connections go, new
/// handshakes succeed again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_handshakes_past_the_limit_are_refused_at_once() {
    let a = start(|c| c.max_peer_handshakes = 8).await;
    let b = start(|_| {}).await;
    // Created at A, read at B: B's link to A must be up before the flood.
    let bystander = Bystander::start(a.client_addr(), b.client_addr()).await;
    assert!(wait_for_stat(b.client_addr(), "copies_received", |v| v >= 1).await >= 1);
    let mut held = Vec::new();
    for _ in 0..8 {
        held.push(
            timeout(WAIT, TcpStream::connect(a.peer_addr()))
                .await
                .unwrap()
                .unwrap(),
        );
    }
    let started = Instant::now();
    for i in 0..20 {
        let mut s = timeout(WAIT, TcpStream::connect(a.peer_addr()))
            .await
            .unwrap()
            .unwrap();
        let frames = frames_until_close(&mut s).await;
        assert!(
            matches!(&frames[..], [(0, op, body)] if matches!(peer_message(*op, body), PeerMessage::Error(e) if e.code == ErrorCode::TooManyConnections)),
            "connection {i} past the limit got {frames:?}"
        );
    }
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "refusals took {:?}: they waited for the handshake timeout",
        started.elapsed()
    );
    let sa = stats(a.client_addr()).await;
    assert!(sa["peer_handshakes_refused"] >= 20, "{sa:?}");
    // The held connections leave; a real handshake gets through again (bounded retries
    // while the node notices they closed).
    drop(held);
    let me: SocketAddr = "127.0.0.1:9".parse().unwrap();
    let deadline = Instant::now() + WAIT;
    loop {
        let mut st = timeout(WAIT, TcpStream::connect(a.peer_addr()))
            .await
            .unwrap()
            .unwrap();
        let mut buf = BytesMut::new();
        let (dialler, hello) = Dialler::start(keys(), SessionId::random().0, me);
        st.write_all(&encode(1, &hello)).await.unwrap();
        let (_, op, body) = next_frame(&mut st, &mut buf).await.unwrap();
        if op == peer_op::AUTH_CHALLENGE {
            let (_, proof) = dialler.handle_challenge(peer_message(op, &body)).unwrap();
            st.write_all(&encode(2, &proof)).await.unwrap();
            let (_, op, _) = next_frame(&mut st, &mut buf).await.unwrap();
            assert_eq!(op, peer_op::AUTH_OK);
            break;
        }
        assert!(Instant::now() < deadline, "handshakes are still refused");
        sleep(Duration::from_millis(50)).await;
    }
    bystander.finish().await;
    assert!(a.shutdown(WAIT).await && b.shutdown(WAIT).await);
}

// ---------------------------------------------------------------------------------------
// Floods and slow senders on the client port
// ---------------------------------------------------------------------------------------

/// The counters of a node through one client, so that each look costs one request and no
/// connection of its own.
async fn counters(c: &Client) -> HashMap<String, u64> {
    timeout(WAIT, c.stats())
        .await
        .unwrap()
        .unwrap()
        .into_iter()
        .collect()
}

/// A flood of 300 simultaneous connections at a node (a child process, so its memory can
/// be measured alone) limited to 16: those past the limit get TOO_MANY_CONNECTIONS at once
/// and cost nothing after, the node never holds more than 16, its RSS stays put, and a
/// bystander connected before is served throughout. Afterwards the slots come back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_flood_past_max_connections_is_refused_while_others_are_served() {
    let dir = temp_dir("conn-flood");
    let secret = secret_file(&dir);
    let node = spawn_node(&[
        "--secret-file",
        secret.to_str().unwrap(),
        "--max-connections",
        "16",
        "--frame-timeout",
        "2s",
    ]);
    let pid = node.child.id();
    let addr = node.client;
    let c = client(addr).await;
    let bystander = Bystander::start(addr, addr).await;
    sleep(Duration::from_millis(300)).await;
    let base = rss_bytes(pid);
    let before = counters(&c).await;
    assert_eq!(before["connections"], 3, "{before:?}");

    let flood: Vec<_> = (0..300)
        .map(|_| {
            tokio::spawn(async move {
                let mut s = timeout(WAIT, TcpStream::connect(addr)).await.unwrap().unwrap();
                let started = Instant::now();
                let frames = frames_until_close(&mut s).await;
                (started.elapsed(), frames)
            })
        })
        .collect();
    let mut peak_rss = 0;
    let mut peak_open = 0;
    for _ in 0..10 {
        peak_rss = peak_rss.max(rss_bytes(pid));
        peak_open = peak_open.max(counters(&c).await["connections"]);
        sleep(Duration::from_millis(100)).await;
    }
    let (mut refused, mut timed_out) = (0, 0);
    for f in flood {
        let (took, frames) = timeout(WAIT * 2, f).await.unwrap().unwrap();
        match &frames[..] {
            [(0, op, body)] if error_code(*op, body) == Some(ErrorCode::TooManyConnections) => {
                assert!(took < Duration::from_secs(1), "a refusal took {took:?}");
                refused += 1;
            }
            // The few that got a slot say nothing and are closed at the frame timeout.
            [(0, op, body)] if error_code(*op, body) == Some(ErrorCode::Timeout) => timed_out += 1,
            other => panic!("a flood connection got {other:?}"),
        }
    }
    assert!(
        timed_out <= 13 && refused + timed_out == 300,
        "{refused} refused, {timed_out} let in"
    );
    assert!(peak_open <= 16, "{peak_open} connections open at the limit of 16");
    let after = counters(&c).await;
    assert!(after["connections_refused"] >= before["connections_refused"] + 287);
    let grew = peak_rss.saturating_sub(base);
    assert!(
        grew < 16 * MIB,
        "the flood made the node grow by {} MiB",
        grew / MIB
    );
    bystander.finish().await;
    // The slots came back.
    let open = wait_for_stat(addr, "connections", |n| n == 2).await;
    assert_eq!(open, 2, "flood connections are still open");
    drop(c);
    let _ = std::fs::remove_dir_all(&dir);
}

/// One byte of `bytes` every `every` until a write fails, while reading what the node
/// sends; returns how long until it closed and its frames.
async fn trickle(addr: SocketAddr, bytes: Vec<u8>, every: Duration) -> (Duration, Vec<(u64, u8, Bytes)>) {
    let s = timeout(WAIT, TcpStream::connect(addr)).await.unwrap().unwrap();
    let (mut rd, mut wr) = s.into_split();
    let started = Instant::now();
    let writer = tokio::spawn(async move {
        for b in bytes {
            if wr.write_all(&[b]).await.is_err() {
                break;
            }
            sleep(every).await;
        }
        // Keep the write half open (no FIN) until the node has closed.
        sleep(WAIT).await;
    });
    let frames = frames_until_close(&mut rd).await;
    let took = started.elapsed();
    writer.abort();
    (took, frames)
}

/// Slowloris at scale on the client port: 40 connections trickling a STATS request a byte
/// every 250 ms and 40 announcing 4 GiB frames, all at once, against a node (a child
/// process) with a 1 s frame timeout. The 4 GiB prefixes are refused at once without
/// reading a body; every trickler is closed with TIMEOUT at the frame timeout and never
/// served; the node's RSS stays put and its connections come back; a bystander is served
/// throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_crowd_and_4gib_prefixes_on_the_client_port_cost_nothing_lasting() {
    let dir = temp_dir("slowloris-crowd");
    let secret = secret_file(&dir);
    let node = spawn_node(&["--secret-file", secret.to_str().unwrap(), "--frame-timeout", "1s"]);
    let pid = node.child.id();
    let addr = node.client;
    let c = client(addr).await;
    let bystander = Bystander::start(addr, addr).await;
    sleep(Duration::from_millis(300)).await;
    let base = rss_bytes(pid);

    let stats_request = encode(7, &Request::Stats);
    let tricklers: Vec<_> = (0..40)
        .map(|_| tokio::spawn(trickle(addr, stats_request.clone(), Duration::from_millis(250))))
        .collect();
    let huge: Vec<_> = (0..40)
        .map(|_| {
            tokio::spawn(async move {
                let mut s = timeout(WAIT, TcpStream::connect(addr)).await.unwrap().unwrap();
                let started = Instant::now();
                s.write_all(&[0xff; 4]).await.unwrap();
                let frames = frames_until_close(&mut s).await;
                (started.elapsed(), frames)
            })
        })
        .collect();
    let mut peak = 0;
    for _ in 0..12 {
        peak = peak.max(rss_bytes(pid));
        sleep(Duration::from_millis(100)).await;
    }
    for h in huge {
        let (took, frames) = timeout(WAIT, h).await.unwrap().unwrap();
        assert!(
            took < Duration::from_secs(1),
            "a 4 GiB prefix was held for {took:?}"
        );
        assert!(
            matches!(&frames[..], [(0, op, body)] if error_code(*op, body) == Some(ErrorCode::FrameTooLarge)),
            "{frames:?}"
        );
    }
    for t in tricklers {
        let (took, frames) = timeout(WAIT * 2, t).await.unwrap().unwrap();
        assert!(
            took >= Duration::from_millis(900) && took < Duration::from_secs(4),
            "a trickler was closed after {took:?}; the frame timeout is 1 s"
        );
        assert!(
            matches!(&frames[..], [(0, op, body)] if error_code(*op, body) == Some(ErrorCode::Timeout)),
            "a trickler got {frames:?}"
        );
    }
    bystander.finish().await;
    let grew = peak.saturating_sub(base);
    assert!(
        grew < 16 * MIB,
        "the crowd made the node grow by {} MiB",
        grew / MIB
    );
    let st = counters(&c).await;
    assert!(st["errors"] >= 80, "{st:?}");
    let open = wait_for_stat(addr, "connections", |n| n == 2).await;
    assert_eq!(open, 2, "slow connections are still open");
    drop(c);
    let _ = std::fs::remove_dir_all(&dir);
}

// ---------------------------------------------------------------------------------------
// Forged tokens
// ---------------------------------------------------------------------------------------

/// The token layout of protocol.md 8.1, written by hand.
fn token_bytes(key_id: u8, id: [u8; 16], owner: SocketAddr, backups: &[SocketAddr]) -> Vec<u8> {
    let addr = |v: &mut Vec<u8>, a: &SocketAddr| match a {
        SocketAddr::V4(a) => {
            v.push(4);
            v.extend_from_slice(&a.ip().octets());
            v.extend_from_slice(&a.port().to_be_bytes());
        }
        SocketAddr::V6(a) => {
            v.push(6);
            v.extend_from_slice(&a.ip().octets());
            v.extend_from_slice(&a.port().to_be_bytes());
        }
    };
    let mut v = vec![2, key_id];
    v.extend_from_slice(&id);
    v.extend_from_slice(&0u64.to_be_bytes());
    addr(&mut v, &owner);
    v.push(backups.len() as u8);
    for b in backups {
        addr(&mut v, b);
    }
    v
}

/// Sends GET, SET, TOUCH, ROTATE and DESTROY with `token` on one connection; each must get
/// INVALID_TOKEN, and the connection must stay open (a PING after them is answered).
async fn assert_invalid_everywhere(addr: SocketAddr, what: &str, token: &str) {
    let mut out = Vec::new();
    let requests = [
        Request::Get {
            token: token.into(),
            names: vec![],
        },
        Request::Set {
            token: token.into(),
            if_version: None,
            puts: attrs(&[("x", "1")]),
            deletes: vec![],
        },
        Request::Touch { token: token.into() },
        Request::Rotate { token: token.into() },
        Request::Destroy { token: token.into() },
        Request::Ping(Bytes::from_static(b"still-open")),
    ];
    for (i, r) in requests.iter().enumerate() {
        out.extend_from_slice(&encode(i as u64 + 1, r));
    }
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(&out).await.unwrap();
    let mut buf = BytesMut::new();
    let mut replies = HashMap::new();
    while replies.len() < requests.len() {
        let (id, op, body) = next_frame(&mut s, &mut buf)
            .await
            .unwrap_or_else(|| panic!("{what}: the node closed the connection"));
        replies.insert(id, response(op, &body));
    }
    for id in 1..=5u64 {
        match &replies[&id] {
            Response::Error(e) => assert_eq!(
                e.code,
                ErrorCode::InvalidToken,
                "{what}, request {id}: {}",
                e.message
            ),
            other => panic!("{what}, request {id}: accepted: {other:?}"),
        }
    }
    assert!(
        matches!(replies[&6], Response::Pong(_)),
        "{what}: connection not kept"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_tokens_are_refused_and_never_dialled() {
    let node = start(|c| c.peer_timeout = Duration::from_millis(300)).await;
    let addr = node.client_addr();
    let (trap, dials) = counting_listener().await;
    let c = client(addr).await;
    let real = c.create(attrs(&[("user", "alice")])).await.unwrap();
    let before = stats(addr).await;
    let bystander = Bystander::start(addr, addr).await;

    let raw = URL_SAFE_NO_PAD.decode(&real.token).unwrap();
    let parsed = Token::verify(&real.token, &keys()).unwrap();
    let (signed, tag) = raw.split_at(raw.len() - 16);
    let mut forged: Vec<(String, Vec<u8>)> = Vec::new();
    // Every field of the real token altered by hand, the real tag kept.
    let alter = |at: usize, to: u8| {
        let mut v = raw.clone();
        v[at] = to;
        v
    };
    forged.push(("version 1".into(), alter(0, 1)));
    forged.push(("version 3".into(), alter(0, 3)));
    forged.push(("key id 1".into(), alter(1, 1)));
    forged.push(("session id".into(), alter(2, raw[2] ^ 0x80)));
    forged.push(("generation".into(), alter(25, raw[25] ^ 1)));
    forged.push(("owner family 6".into(), alter(26, 6)));
    forged.push(("owner ip".into(), alter(27, 10)));
    forged.push(("owner port".into(), alter(32, raw[32] ^ 1)));
    forged.push(("backup count 1".into(), alter(33, 1)));
    forged.push(("tag".into(), alter(raw.len() - 1, raw[raw.len() - 1] ^ 1)));
    // The owner (and a backup) pointed at the trap, with the real tag.
    let mut to_trap = token_bytes(0, parsed.session_id.0, trap, &[trap]);
    to_trap.extend_from_slice(tag);
    forged.push(("owner and backup redirected, old tag".into(), to_trap));
    // The right layout with a tag that is not an HMAC at all.
    let mut random_tag = token_bytes(0, SessionId::random().0, trap, &[]);
    random_tag.extend_from_slice(&[0x5a; 16]);
    forged.push(("right layout, random tag".into(), random_tag));
    // A properly made token signed with another secret.
    let wrong = Keyring::single(b"not-the-cluster-secret-000000000").unwrap();
    let other_key = Token {
        session_id: parsed.session_id,
        generation: 0,
        owner: trap,
        backups: vec![trap],
    }
    .sign(&wrong);
    forged.push((
        "signed with a wrong key".into(),
        URL_SAFE_NO_PAD.decode(&other_key).unwrap(),
    ));
    // Bytes left between the backups and the tag.
    let mut trailing = signed.to_vec();
    trailing.push(0);
    trailing.extend_from_slice(tag);
    forged.push(("trailing byte".into(), trailing));
    for (what, bytes) in &forged {
        assert_invalid_everywhere(addr, what, &URL_SAFE_NO_PAD.encode(bytes)).await;
    }
    // Strings that are not base64url tokens at all.
    let long = "A".repeat(200);
    for (what, s) in [
        ("padding", format!("{}=", real.token)),
        ("alphabet", format!("/{}", &real.token[1..])),
        ("too long", long),
        ("empty", String::new()),
    ] {
        assert_invalid_everywhere(addr, what, &s).await;
    }

    sleep(Duration::from_millis(300)).await;
    assert_eq!(
        dials.load(Ordering::SeqCst),
        0,
        "the node dialled an address from a forged token"
    );
    let after = stats(addr).await;
    assert_eq!(
        after["handover_failures"], before["handover_failures"],
        "no fetch was even tried"
    );
    // The real session is untouched.
    let got = c.get(&real.token).await.unwrap();
    assert_eq!(
        (got.version(), got.get("user").map(|v| &v[..])),
        (1, Some(&b"alice"[..]))
    );
    bystander.finish().await;
    let after = stats(addr).await;
    assert_eq!(
        after["sessions"], before["sessions"],
        "forged tokens created sessions"
    );
    assert_eq!(
        live_bytes(&after),
        live_bytes(&before),
        "forged tokens changed the data held"
    );

    // Control: the trap does count dials. A token signed with the cluster secret naming it
    // is followed (and fails as unreachable, since the trap never answers).
    let genuine = Token {
        session_id: SessionId::random(),
        generation: 0,
        owner: trap,
        backups: vec![],
    }
    .sign(&keys());
    let e = timeout(WAIT, c.get(&genuine)).await.unwrap().unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::OwnerUnreachable), "{e}");
    assert!(
        dials.load(Ordering::SeqCst) >= 1,
        "the trap did not see the genuine dial"
    );
    assert!(node.shutdown(WAIT).await);
}

// ---------------------------------------------------------------------------------------
// Expired and destroyed sessions
// ---------------------------------------------------------------------------------------

async fn assert_gone(nodes: &[NodeHandle], tokens: &[&str], what: &str) {
    for (i, n) in nodes.iter().enumerate() {
        let c = client(n.client_addr()).await;
        for t in tokens {
            for (op, r) in [
                ("get", timeout(WAIT, c.get(t)).await.unwrap().map(|_| ())),
                ("touch", timeout(WAIT, c.touch(t)).await.unwrap().map(|_| ())),
                (
                    "set",
                    timeout(WAIT, c.set(t).put("back", "again").send())
                        .await
                        .unwrap()
                        .map(|_| ()),
                ),
                ("rotate", timeout(WAIT, c.rotate(t)).await.unwrap().map(|_| ())),
                ("destroy", timeout(WAIT, c.destroy(t)).await.unwrap()),
            ] {
                let e = r.err().unwrap_or_else(|| panic!("{what}: node {i} served {op}"));
                assert_eq!(
                    e.code(),
                    Some(ErrorCode::SessionNotFound),
                    "{what}: node {i} {op}: {e}"
                );
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_and_destroyed_sessions_stay_gone_everywhere() {
    let mut nodes = Vec::new();
    for _ in 0..3 {
        nodes.push(start(|c| c.sweep_interval = Duration::from_millis(10)).await);
    }
    let bystander = Bystander::start(nodes[2].client_addr(), nodes[1].client_addr()).await;
    let (ca, cb, cc) = (
        client(nodes[0].client_addr()).await,
        client(nodes[1].client_addr()).await,
        client(nodes[2].client_addr()).await,
    );

    // Expired: created at A with a 300 ms idle TTL, copied to B, left alone.
    let short = CreateOptions {
        idle_ttl: Some(Duration::from_millis(300)),
        max_lifetime: None,
    };
    let e_a = ca.create_with(attrs(&[("k", "v")]), short).await.unwrap();
    let e_b = cb.get(&e_a.token).await.unwrap();
    assert!(e_b.token_changed);
    // Destroyed: created at A, copied to B and written, destroyed at C with B's token.
    let d_a = ca.create(attrs(&[("user", "alice")])).await.unwrap();
    let d_b = cb.get(&d_a.token).await.unwrap();
    let d_b = cb.set(&d_b.token).put("cart", "1").send().await.unwrap();
    timeout(WAIT, cc.destroy(&d_b.token)).await.unwrap().unwrap();
    sleep(Duration::from_millis(400)).await;

    assert_gone(&nodes, &[&e_a.token, &e_b.token], "expired").await;
    assert_gone(&nodes, &[&d_a.token, &d_b.token], "destroyed").await;

    bystander.finish().await;
    // Nothing was brought back, and the memory is reclaimed: no live session anywhere,
    // and A (which the bystander does not use) ends up holding only the forwarding
    // tombstone of the destroyed session; the expired one's is reclaimed at its deadline.
    for (i, n) in nodes.iter().enumerate() {
        let live = wait_for_stat(n.client_addr(), "sessions", |v| v == 0).await;
        assert_eq!(live, 0, "node {i} still holds a live session");
    }
    let tombstone = sessync_server::table::TOMBSTONE_OVERHEAD as u64;
    let a_bytes = wait_for_stat(nodes[0].client_addr(), "bytes", |v| v == tombstone).await;
    let a = stats(nodes[0].client_addr()).await;
    assert_eq!(
        (a_bytes, a["tombstones"]),
        (tombstone, 1),
        "A holds more than one tombstone: {a:?}"
    );
    assert!(
        a["reclaimed"] >= 1,
        "A never reclaimed the expired session: {a:?}"
    );
    for n in nodes {
        assert!(n.shutdown(WAIT).await);
    }
}

// ---------------------------------------------------------------------------------------
// Unauthenticated peers, replayed and reflected handshakes
// ---------------------------------------------------------------------------------------

/// COPY (and the other peer requests) before the handshake has completed: AUTH_FAILED,
/// closed, and the session never leaves its owner.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unauthenticated_peer_requests_get_no_session_data() {
    let a = start(|_| {}).await;
    let b = start(|_| {}).await;
    let ca = client(a.client_addr()).await;
    let s = ca.create(attrs(&[("secret", "data")])).await.unwrap();
    let id = Token::verify(&s.token, &keys()).unwrap().session_id;
    let bystander = Bystander::start(b.client_addr(), a.client_addr()).await;
    let copy = PeerMessage::Copy {
        session_id: id,
        last_transfer: 0,
    };
    let me: SocketAddr = "127.0.0.1:9".parse().unwrap();
    let requests = [
        copy.clone(),
        PeerMessage::CopyAck {
            session_id: id,
            transfer: 1,
        },
        PeerMessage::Drop {
            session_id: id,
            generation: 1,
        },
        PeerMessage::Promote {
            session_id: id,
            last_transfer: 0,
            failed_owner: a.peer_addr(),
        },
        PeerMessage::Ping(1),
    ];

    let mut cases: Vec<(String, Vec<Vec<u8>>, bool)> = Vec::new();
    for r in &requests {
        // In place of AUTH_HELLO.
        cases.push((format!("{r:?} first"), vec![encode(1, r)], false));
        // In place of AUTH_PROOF, after a real AUTH_HELLO.
        let (_, hello) = Dialler::start(keys(), [4; 16], me);
        cases.push((
            format!("{r:?} instead of the proof"),
            vec![encode(1, &hello), encode(2, r)],
            true,
        ));
    }
    // Pipelined right behind AUTH_HELLO in one write, before the challenge came back.
    let (_, hello) = Dialler::start(keys(), [5; 16], me);
    let mut both = encode(1, &hello);
    both.extend_from_slice(&encode(2, &copy));
    cases.push(("COPY pipelined behind AUTH_HELLO".into(), vec![both], true));
    // A wrong-secret proof and a COPY pipelined behind it.
    let wrong = Keyring::single(b"not-the-cluster-secret-000000000").unwrap();
    let (_, hello) = Dialler::start(wrong, [6; 16], me);
    cases.push((
        "wrong key id".into(),
        vec![encode(1, &hello), {
            let mut v = encode(2, &PeerMessage::AuthProof { proof: [7; 32] });
            v.extend_from_slice(&encode(3, &copy));
            v
        }],
        true,
    ));

    for (what, writes, challenged) in cases {
        let mut st = TcpStream::connect(a.peer_addr()).await.unwrap();
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        for (i, w) in writes.iter().enumerate() {
            if st.write_all(w).await.is_err() {
                break;
            }
            if i == 0 && challenged && writes.len() > 1 {
                if let Some(f) = next_frame(&mut st, &mut buf).await {
                    got.push(f);
                }
            }
        }
        got.extend(frames_until_close(&mut st).await);
        let msgs: Vec<PeerMessage> = got.iter().map(|(_, op, body)| peer_message(*op, body)).collect();
        assert!(
            !msgs.iter().any(|m| matches!(
                m,
                PeerMessage::CopyData { .. }
                    | PeerMessage::Moved { .. }
                    | PeerMessage::NotFound { .. }
                    | PeerMessage::Ok
                    | PeerMessage::Pong(_)
                    | PeerMessage::AuthOk
            )),
            "{what}: the node answered an unauthenticated peer: {msgs:?}"
        );
        let last = msgs
            .last()
            .unwrap_or_else(|| panic!("{what}: closed without an error"));
        assert!(
            matches!(last, PeerMessage::Error(e) if e.code == ErrorCode::AuthFailed),
            "{what}: {msgs:?}"
        );
    }
    // The session never left A: A still serves it, and A handed nothing to anyone (the
    // bystander's sessions only travel from B to A).
    let got = ca.get(&s.token).await.unwrap();
    assert!(!got.token_changed);
    assert_eq!(got.get("secret").map(|v| &v[..]), Some(&b"data"[..]));
    bystander.finish().await;
    let sa = stats(a.client_addr()).await;
    assert_eq!(sa["copies_served"], 0, "A handed a session over: {sa:?}");
    assert_eq!(wait_for_stat(a.client_addr(), "sessions", |v| v == 1).await, 1);
    assert!(a.shutdown(WAIT).await && b.shutdown(WAIT).await);
}

/// The acceptor's own proof sent back as AUTH_PROOF, a hello claiming the node's own id, an
/// unknown key id, and a recorded AUTH_CHALLENGE replayed to a node that dials out: all
/// fail, and no session data moves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reflected_and_replayed_handshakes_fail() {
    let a = start(|c| c.peer_timeout = Duration::from_millis(500)).await;
    let b = start(|c| c.peer_timeout = Duration::from_millis(500)).await;
    let ca = client(a.client_addr()).await;
    let s = ca.create(attrs(&[("secret", "data")])).await.unwrap();
    let bystander = Bystander::start(b.client_addr(), a.client_addr()).await;
    let me: SocketAddr = "127.0.0.1:9".parse().unwrap();

    // 1. Reflection: A's challenge proof (role 2) sent back to A as the dialler's proof.
    let mut st = TcpStream::connect(a.peer_addr()).await.unwrap();
    let mut buf = BytesMut::new();
    let (_, hello) = Dialler::start(keys(), [8; 16], me);
    st.write_all(&encode(1, &hello)).await.unwrap();
    let (_, op, body) = next_frame(&mut st, &mut buf).await.unwrap();
    let PeerMessage::AuthChallenge {
        proof, node_id: a_id, ..
    } = peer_message(op, &body)
    else {
        panic!("no challenge")
    };
    st.write_all(&encode(2, &PeerMessage::AuthProof { proof }))
        .await
        .unwrap();
    let frames = frames_until_close(&mut st).await;
    assert!(
        matches!(&frames[..], [(2, op, body)] if matches!(peer_message(*op, body), PeerMessage::Error(e) if e.code == ErrorCode::AuthFailed)),
        "reflected proof: {frames:?}"
    );

    // 2. A hello claiming A's own node id, and 3. one with a key id A does not have.
    let (_, self_hello) = Dialler::start(keys(), a_id, me);
    let unknown_key = Keyring::new(9, [(9, SECRET)]).unwrap();
    let (_, key9_hello) = Dialler::start(unknown_key, [9; 16], me);
    for (what, hello) in [("own node id", self_hello), ("unknown key id", key9_hello)] {
        let mut st = TcpStream::connect(a.peer_addr()).await.unwrap();
        st.write_all(&encode(1, &hello)).await.unwrap();
        let frames = frames_until_close(&mut st).await;
        assert!(
            matches!(&frames[..], [(1, op, body)] if matches!(peer_message(*op, body), PeerMessage::Error(e) if e.code == ErrorCode::AuthFailed)),
            "{what}: {frames:?}"
        );
    }

    // 4. Replay towards a dialler: record a genuine AUTH_CHALLENGE from A, then play an
    // acceptor that answers B's dial with it. B is sent there by a genuinely signed token
    // (an attacker cannot make one; here it stands for a spoofed address). B must refuse
    // the stale proof and never send its own proof or a COPY.
    let mut st = TcpStream::connect(a.peer_addr()).await.unwrap();
    let mut buf = BytesMut::new();
    let (_, hello) = Dialler::start(keys(), [10; 16], me);
    st.write_all(&encode(1, &hello)).await.unwrap();
    let (_, op, body) = next_frame(&mut st, &mut buf).await.unwrap();
    let recorded = peer_message(op, &body);
    drop(st);
    let impostor = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let impostor_addr = impostor.local_addr().unwrap();
    let heard = tokio::spawn(async move {
        let (mut st, _) = timeout(WAIT, impostor.accept()).await.unwrap().unwrap();
        let mut buf = BytesMut::new();
        let (id, op, _) = next_frame(&mut st, &mut buf).await.unwrap();
        assert_eq!(op, peer_op::AUTH_HELLO);
        st.write_all(&encode(id, &recorded)).await.unwrap();
        // Everything B says after the replayed challenge.
        let mut after = Vec::new();
        while let Some((_, op, _)) = next_frame(&mut st, &mut buf).await {
            after.push(op);
        }
        after
    });
    let stolen = Token {
        session_id: Token::verify(&s.token, &keys()).unwrap().session_id,
        generation: 0,
        owner: impostor_addr,
        backups: vec![],
    }
    .sign(&keys());
    let cb = client(b.client_addr()).await;
    let e = timeout(WAIT, cb.get(&stolen)).await.unwrap().unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::OwnerUnreachable), "{e}");
    let after = timeout(WAIT, heard).await.unwrap().unwrap();
    assert!(
        !after.contains(&peer_op::AUTH_PROOF) && !after.contains(&peer_op::COPY),
        "B went on after a replayed challenge: opcodes {after:02x?}"
    );

    // No session data moved: A still serves the session itself and handed nothing over.
    let got = ca.get(&s.token).await.unwrap();
    assert!(!got.token_changed);
    assert_eq!(got.get("secret").map(|v| &v[..]), Some(&b"data"[..]));
    bystander.finish().await;
    let sa = stats(a.client_addr()).await;
    assert_eq!(sa["copies_served"], 0, "A handed a session over: {sa:?}");
    assert_eq!(wait_for_stat(a.client_addr(), "sessions", |v| v == 1).await, 1);
    assert!(a.shutdown(WAIT).await && b.shutdown(WAIT).await);
}

// ---------------------------------------------------------------------------------------
// A client that never reads
// ---------------------------------------------------------------------------------------

/// Opens a connection with a small receive buffer and pipelines up to `n` GETs of `token`
/// on it, never reading; stops writing when a write blocks for a second (the node stopped
/// reading). Returns the connection (to keep it open) and how many GETs went out.
async fn never_reading_client(addr: SocketAddr, token: &str, n: u64) -> (TcpStream, u64) {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(64 * 1024).unwrap();
    let mut s = timeout(WAIT, socket.connect(addr)).await.unwrap().unwrap();
    let get = encode(
        1,
        &Request::Get {
            token: token.into(),
            names: vec![],
        },
    );
    let mut sent = 0;
    while sent < n {
        match timeout(Duration::from_secs(1), s.write_all(&get)).await {
            Ok(Ok(())) => sent += 1,
            _ => break,
        }
    }
    (s, sent)
}

fn big_session() -> Attributes {
    let mut a = Attributes::new();
    a.insert("big".into(), Bytes::from(vec![b'x'; 1 << 20]));
    a
}

/// A client pipelines 400 GETs of a 1 MiB session (400 MiB of replies) and never reads.
/// The node (a child process, so its memory can be measured alone) stops reading from it
/// once one reply is stuck in the socket: its RSS stays within a few MiB of what it was,
/// it answered only a handful of the GETs, and other clients are served meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_costs_bounded_memory() {
    let dir = temp_dir("never-reads");
    let secret = secret_file(&dir);
    let node = spawn_node(&["--secret-file", secret.to_str().unwrap()]);
    let pid = node.child.id();
    let c = client(node.client).await;
    let s = timeout(WAIT, c.create(big_session())).await.unwrap().unwrap();
    for _ in 0..3 {
        timeout(WAIT, c.get(&s.token)).await.unwrap().unwrap();
    }
    sleep(Duration::from_millis(200)).await;
    let base = rss_bytes(pid);
    // Counters through `c`, so that each look costs exactly one request.
    let counters = || async {
        timeout(WAIT, c.stats())
            .await
            .unwrap()
            .unwrap()
            .into_iter()
            .collect::<HashMap<_, _>>()
    };
    let before = counters().await;

    let (stalled, sent) = never_reading_client(node.client, &s.token, 400).await;
    sleep(Duration::from_millis(500)).await;
    let mid = counters().await;
    let answered = mid["requests"] - before["requests"] - 1; // minus this STATS
    assert!(sent >= 100, "only {sent} GETs went out before the writes blocked");
    assert!(
        answered <= 40,
        "the node answered {answered} of {sent} GETs nobody reads"
    );

    // Others are served meanwhile, including reads of the same 1 MiB session.
    let bystander = Bystander::start(node.client, node.client).await;
    let mut peak = 0;
    for _ in 0..15 {
        timeout(WAIT, c.get(&s.token)).await.unwrap().unwrap();
        peak = peak.max(rss_bytes(pid));
        sleep(Duration::from_millis(100)).await;
    }
    bystander.finish().await;
    let grew = peak.saturating_sub(base);
    assert!(
        grew < 64 * MIB,
        "RSS grew by {} MiB while {sent} MiB of replies were pending",
        grew / MIB
    );
    // Still stalled: left alone, the node handles nothing more from it.
    let quiet = counters().await;
    sleep(Duration::from_millis(500)).await;
    let later = counters().await;
    assert_eq!(
        later["requests"] - quiet["requests"],
        1,
        "the node went on with the stalled connection's GETs"
    );
    drop(stalled);
    let _ = std::fs::remove_dir_all(&dir);
}

/// The second half of the "peer that never reads": once its replies back up and
/// its socket accepts nothing for the write timeout, the node cuts the connection off
/// instead of holding it, its connection permit and its pending replies for as long as the
/// client likes (a crowd of such clients could otherwise hold every slot of
/// `--max-connections`). Other clients are served meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_is_cut_off() {
    let node = start(|c| {
        c.frame_timeout = Duration::from_millis(500);
        c.idle_timeout = Duration::from_secs(1);
        c.write_timeout = Duration::from_secs(1);
    })
    .await;
    let addr = node.client_addr();
    let c = client(addr).await;
    let s = c.create(big_session()).await.unwrap();
    let bystander = Bystander::start(addr, addr).await;
    let started = Instant::now();
    let (mut stalled, sent) = never_reading_client(addr, &s.token, 400).await;
    assert!(sent >= 100, "only {sent} GETs went out before the writes blocked");
    // Left are a fresh STATS client, the bystander's two and the stalled connection (`c`
    // goes idle and is closed at the idle timeout, as it should be). Within a few write
    // timeouts the node gives up on the connection that never reads.
    drop(c);
    let open = wait_for_stat(addr, "connections", |n| n == 3).await;
    assert_eq!(open, 3, "the connection that never reads is still open");
    let took = started.elapsed();
    assert!(took < Duration::from_secs(8), "cut off only after {took:?}");
    let st = stats(addr).await;
    assert!(st["write_timeouts"] >= 1, "{st:?}");
    // From the client's side the connection ends (the replies already in flight, then EOF
    // or a reset), within the bound.
    let mut sink = vec![0u8; 1 << 20];
    let mut drained = 0usize;
    loop {
        match timeout(WAIT, stalled.read(&mut sink))
            .await
            .expect("the cut-off connection is still open")
        {
            Ok(0) | Err(_) => break,
            Ok(n) => drained += n,
        }
    }
    assert!(
        drained < 64 << 20,
        "{} MiB of replies were pending for a client that never read",
        drained >> 20
    );
    bystander.finish().await;
    assert!(
        node.shutdown(Duration::from_secs(3)).await,
        "shutdown waited for the stalled client"
    );
}

/// Unauthenticated peers announce the largest frame the node accepts (4 MiB) and send all
/// of it but the last bytes. Were handshake frames read with the full `max_frame_len`, each
/// such connection would make the node buffer 4 MiB for up to the 5 s handshake timeout:
/// memory an attacker who cannot authenticate controls. The handshake reads with
/// `MAX_HANDSHAKE_FRAME_LEN` (115 bytes), so each is refused at its length prefix.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unauthenticated_peers_cannot_make_the_node_buffer_big_frames() {
    let dir = temp_dir("peer-buffers");
    let secret = secret_file(&dir);
    let node = spawn_node(&["--secret-file", secret.to_str().unwrap()]);
    let pid = node.child.id();
    let c = client(node.client).await;
    timeout(WAIT, c.ping()).await.unwrap().unwrap();
    sleep(Duration::from_millis(200)).await;
    let base = rss_bytes(pid);
    let max = sessync_proto::Limits::DEFAULT.max_frame_len;
    let mut held = Vec::new();
    for _ in 0..32 {
        let mut s = timeout(WAIT, TcpStream::connect(node.peer))
            .await
            .unwrap()
            .unwrap();
        let mut almost = max.to_be_bytes().to_vec();
        almost.resize(4 + max as usize - 64, 0);
        // A node that does not buffer it stops reading, and this write stalls: fine.
        let _ = timeout(Duration::from_secs(2), s.write_all(&almost)).await;
        held.push(s);
    }
    // Refused at the length prefix (FRAME_TOO_LARGE, or a reset for the bytes it never
    // read), not held until the handshake timeout.
    let started = Instant::now();
    for s in &mut held {
        frames_until_close(s).await;
    }
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "the node held the connections for {:?}",
        started.elapsed()
    );
    sleep(Duration::from_millis(300)).await;
    let grew = rss_bytes(pid).saturating_sub(base);
    timeout(WAIT, c.ping()).await.unwrap().unwrap();
    assert!(
        grew < 32 * MIB,
        "32 unauthenticated peer connections made the node hold {} MiB more",
        grew / MIB
    );
    drop(held);
    let _ = std::fs::remove_dir_all(&dir);
}

// ---------------------------------------------------------------------------------------
// A peer that never reads
// ---------------------------------------------------------------------------------------

/// An authenticated peer that pipelines PINGs on a small receive buffer and never reads
/// until its writes block for a second. Returns the link and how many PINGs went out.
async fn never_reading_peer(peer: SocketAddr) -> (TcpStream, u64) {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(64 * 1024).unwrap();
    let st = timeout(WAIT, socket.connect(peer)).await.unwrap().unwrap();
    let (mut st, _) = handshake_on(st).await;
    let mut batch = Vec::new();
    for i in 0..4096u64 {
        batch.extend_from_slice(&encode(100 + i, &PeerMessage::Ping(i)));
    }
    let mut sent = 0;
    while sent < 2_000_000 {
        match timeout(Duration::from_secs(1), st.write_all(&batch)).await {
            Ok(Ok(())) => sent += 4096,
            _ => break,
        }
    }
    (st, sent)
}

/// An authenticated peer (a node with the secret but a bug) sends PINGs and never reads
/// the PONGs. The node (a child process) stops reading from it once its replies back up:
/// its RSS stays within a few MiB while the requests keep coming, and its clients and
/// other peer links are served meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_never_reads_costs_bounded_memory() {
    let dir = temp_dir("peer-never-reads");
    let secret = secret_file(&dir);
    let node = spawn_node(&["--secret-file", secret.to_str().unwrap()]);
    let pid = node.child.id();
    let other = start(|_| {}).await;
    let c = client(node.client).await;
    timeout(WAIT, c.ping()).await.unwrap().unwrap();
    // Sessions created at the child and read at `other`: copies over the child's peer port.
    let bystander = Bystander::start(node.client, other.client_addr()).await;
    sleep(Duration::from_millis(300)).await;
    let base = rss_bytes(pid);
    let (stalled, sent) = never_reading_peer(node.peer).await;
    // The node read at most its socket buffers' worth: the writes blocked long before all
    // 2 000 000 PINGs (64 MiB) went out.
    assert!(
        sent < 2_000_000,
        "the node read all {sent} PINGs nobody reads the answers to"
    );
    let mut peak = 0;
    for _ in 0..10 {
        peak = peak.max(rss_bytes(pid));
        timeout(WAIT, c.ping()).await.unwrap().unwrap();
        sleep(Duration::from_millis(100)).await;
    }
    // Another peer link is served: a fresh handshake and a PING.
    let (mut fresh, mut buf) = authenticated_peer_at(node.peer).await;
    fresh.write_all(&encode(9, &PeerMessage::Ping(9))).await.unwrap();
    let (id, op, _) = next_frame(&mut fresh, &mut buf).await.unwrap();
    assert_eq!((id, op), (9, peer_op::PONG));
    bystander.finish().await;
    let grew = peak.saturating_sub(base);
    assert!(
        grew < 32 * MIB,
        "a peer that never reads made the node grow by {} MiB",
        grew / MIB
    );
    drop(stalled);
    assert!(other.shutdown(WAIT).await);
    let _ = std::fs::remove_dir_all(&dir);
}

/// The other half for peers: a link whose peer never reads is cut off once the node's
/// replies make no progress for the write timeout (STATS `write_timeouts`), and a link
/// stuck in a write does not hold up the node's shutdown.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_never_reads_is_cut_off() {
    let node = start(|c| c.write_timeout = Duration::from_secs(1)).await;
    let (stalled, sent) = never_reading_peer(node.peer_addr()).await;
    assert!(sent < 2_000_000);
    let mut cut = 0;
    for _ in 0..50 {
        cut = stats(node.client_addr()).await["write_timeouts"];
        if cut > 0 {
            break;
        }
        sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        cut, 1,
        "the link that never read was cut off by the write timeout"
    );
    // A second one is still stuck when the node shuts down: shutdown does not wait for it.
    let (stalled_too, _) = never_reading_peer(node.peer_addr()).await;
    assert!(
        node.shutdown(Duration::from_secs(5)).await,
        "shutdown waited for a peer that never reads"
    );
    drop((stalled, stalled_too));
}
