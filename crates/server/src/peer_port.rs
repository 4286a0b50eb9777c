//! The peer port: other nodes' links into this node. Every connection must complete the
//! mutual handshake before anything else; until then, any other frame gets AUTH_FAILED and
//! the connection closes, so no session data ever reaches an unauthenticated peer.
//!
//! What an unauthenticated connection can cost is bounded three ways: its frames are read
//! with [`MAX_HANDSHAKE_FRAME_LEN`] (115 bytes) instead of `max_frame_len`, the whole
//! handshake must finish within `HANDSHAKE_TIMEOUT` (5 s), and at most
//! `NodeConfig::max_peer_handshakes` connections may be in the handshake at once.
//!
//! With peer TLS on, the connection must first complete a TLS 1.3 handshake with a client
//! certificate that chains to the cluster CA; the secret handshake then runs inside it.
//! A failed secret handshake makes the next attempt from that address wait (see
//! `throttle.rs`).

use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use sessync_proto::{
    decode_frame, Acceptor, ErrorCode, ErrorReply, Frame, HandshakeError, Message, PeerIdentity, PeerMessage,
    MAX_HANDSHAKE_FRAME_LEN,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::timeout;
use tokio_util::task::TaskTracker;

use crate::listen::next_connection;
use crate::node::SharedNode;
use crate::shutdown::Shutdown;
use crate::stats::Stats;
use crate::throttle::{Throttle, Unauthenticated};
use crate::tls::{RateLimitedWarn, Stream, TlsState};

mod requests;

pub(crate) use requests::handle;

static TLS_WARN: RateLimitedWarn = RateLimitedWarn::new(Duration::from_secs(1));
static AUTH_WARN: RateLimitedWarn = RateLimitedWarn::new(Duration::from_secs(1));

/// Time allowed for the whole handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// A link with no traffic for this long is closed (peers ping every 5 s).
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Bytes of replies after which they are written before more requests are handled.
const FLUSH_AT: usize = 256 * 1024;

/// Accepts peer connections until shutdown. A connection holds a handshake permit until it
/// has authenticated (mini-redis's connection-limit semaphore, applied to the handshake
/// only): past the limit a connection is refused at once with TOO_MANY_CONNECTIONS rather
/// than queued, so a flood of connections that never authenticate costs a bounded number
/// of tasks and buffers, while links that did authenticate are not counted.
pub(crate) async fn accept_loop(
    node: SharedNode,
    listener: TcpListener,
    mut shutdown: Shutdown,
    tasks: TaskTracker,
    tls: Option<Arc<TlsState>>,
) {
    let handshakes = Arc::new(Semaphore::new(node.config.max_peer_handshakes));
    // The handshake semaphore already bounds unauthenticated peer connections (all of
    // a cluster's nodes may share an address in tests and behind NAT), so the per-address
    // cap is that same bound here; the failure back-off is per address as on the client port.
    let throttle = Throttle::new(node.config.auth_backoff_max, node.config.max_peer_handshakes);
    loop {
        let Some((tcp, addr)) = next_connection(&listener, &mut shutdown, "peer").await else {
            return;
        };
        let (permit, unauthenticated) =
            match (handshakes.clone().try_acquire_owned(), throttle.enter(addr.ip())) {
                (Ok(permit), Some(u)) => (permit, u),
                (permit, _) => {
                    let why = if permit.is_err() {
                        Stats::bump(&node.stats.peer_handshakes_refused);
                        "too many peer connections in the handshake"
                    } else {
                        Stats::bump(&node.stats.unauthenticated_refused);
                        "too many unauthenticated peer connections from this address"
                    };
                    // A TLS port cannot send a plain frame; its connection is just closed.
                    if tls.is_none() {
                        tasks.spawn(async move {
                            let err = handshake_error(ErrorCode::TooManyConnections, why);
                            let _ = refuse(&mut Stream::Plain(tcp), 0, err).await;
                        });
                    }
                    continue;
                }
            };
        let node = node.clone();
        let shutdown = shutdown.clone();
        let tls = tls.clone();
        let throttle = throttle.clone();
        tasks.spawn(async move {
            let guard = Guard {
                permit,
                unauthenticated,
                throttle,
            };
            if let Err(e) = serve_peer(&node, tcp, addr, tls, shutdown, guard).await {
                tracing::debug!(%addr, "peer connection ended: {e}");
            }
        });
    }
}

/// What an unauthenticated connection holds: released once it has authenticated.
struct Guard {
    permit: OwnedSemaphorePermit,
    unauthenticated: Unauthenticated,
    throttle: Arc<Throttle>,
}

/// Reads until one whole frame is buffered. `Ok(None)` when the peer closed cleanly.
async fn read_frame(
    stream: &mut Stream,
    input: &mut BytesMut,
    max: u32,
) -> std::io::Result<Result<Option<Frame>, ErrorReply>> {
    loop {
        match decode_frame(input, max) {
            Ok(Some(f)) => return Ok(Ok(Some(f))),
            Ok(None) => {}
            Err(e) => return Ok(Err(ErrorReply::new(e.code(), e.to_string()))),
        }
        if stream.read_buf(input).await? == 0 {
            return Ok(Ok(None));
        }
    }
}

/// Longest ERROR message sent before the handshake is complete: the dialler may read our
/// frames with the handshake limit too, and an ERROR frame's length is 20 + message bytes
/// (protocol.md 9.2), so the message is at most 115 - 20 = 95 bytes.
const MAX_HANDSHAKE_ERROR_MESSAGE: usize = MAX_HANDSHAKE_FRAME_LEN as usize - 20;

/// An ERROR for a connection still in the handshake, its message cut (at a character
/// boundary) to [`MAX_HANDSHAKE_ERROR_MESSAGE`] bytes.
fn handshake_error(code: ErrorCode, why: impl Into<String>) -> ErrorReply {
    let mut why = why.into();
    if why.len() > MAX_HANDSHAKE_ERROR_MESSAGE {
        let mut end = MAX_HANDSHAKE_ERROR_MESSAGE;
        while !why.is_char_boundary(end) {
            end -= 1;
        }
        why.truncate(end);
    }
    ErrorReply::new(code, why)
}

async fn refuse(stream: &mut Stream, request_id: u64, err: ErrorReply) -> std::io::Result<()> {
    let mut out = BytesMut::new();
    PeerMessage::Error(err).encode_frame(request_id, &mut out);
    let _ = timeout(Duration::from_secs(1), async {
        stream.write_all(&out).await?;
        stream.flush().await
    })
    .await;
    let _ = stream.shutdown().await;
    Ok(())
}

/// Counts a handshake refused at this port and logs it at INFO (rate-limited: anyone who
/// can reach the port can fail handshakes at will).
fn refused(node: &SharedNode, why: &str, hint: &str) {
    Stats::bump(&node.stats.peer_handshakes_refused);
    if let Some(left_out) = node.stats.handshake_log.allow() {
        tracing::info!(left_out, "peer handshake refused ({why}){hint}");
    }
}

/// The hint logged with a handshake error.
fn hint(e: &HandshakeError) -> &'static str {
    match e {
        HandshakeError::BadProof | HandshakeError::UnknownKey(_) => {
            ": proof does not verify: do the nodes share the cluster secret?"
        }
        HandshakeError::SelfConnection => ": this node dialled itself (is its own address in --peers twice?)",
        _ => "",
    }
}

/// The secret handshake. `Ok(None)` when it did not complete; `auth_failed` is set when
/// the peer failed to prove it knows the secret (that, and only that, is throttled).
async fn handshake(
    node: &SharedNode,
    stream: &mut Stream,
    input: &mut BytesMut,
    auth_failed: &mut bool,
) -> std::io::Result<Option<PeerIdentity>> {
    let limits = &node.config.limits;
    // Until AUTH_PROOF verifies, every frame that is not the next handshake message gets
    // AUTH_FAILED, whatever its opcode (protocol.md 2.5): an unauthenticated peer learns
    // nothing about which opcodes exist.
    let failed = |why: String| handshake_error(ErrorCode::AuthFailed, why);
    let frame = match read_frame(stream, input, MAX_HANDSHAKE_FRAME_LEN).await? {
        Ok(Some(f)) => f,
        Ok(None) => return Ok(None),
        Err(e) => {
            return refuse(stream, 0, handshake_error(e.code, e.message))
                .await
                .map(|_| None)
        }
    };
    let hello = match PeerMessage::decode_frame(&frame, limits) {
        Ok(m @ PeerMessage::AuthHello { .. }) => m,
        _ => {
            refused(
                node,
                "the first frame is not AUTH_HELLO",
                ": is a client or another program connecting to the peer port?",
            );
            return refuse(
                stream,
                frame.request_id,
                failed("the peer port requires the handshake first".into()),
            )
            .await
            .map(|_| None);
        }
    };
    // Over TLS both proofs also cover the session's exporter keying material, so the
    // handshake cannot be relayed into another TLS session.
    let binding = crate::tls::binding(stream)?;
    let (keys, id, advertise) = (node.config.keys.clone(), node.node_id, node.advertise);
    let accepted = match binding {
        Some(b) => Acceptor::handle_hello_bound(keys, id, advertise, hello, b),
        None => Acceptor::handle_hello(keys, id, advertise, hello),
    };
    let (acceptor, challenge) = match accepted {
        Ok(x) => x,
        Err(e) => {
            *auth_failed = true;
            refused(node, &e.to_string(), hint(&e));
            return refuse(stream, frame.request_id, failed(e.to_string()))
                .await
                .map(|_| None);
        }
    };
    let mut out = BytesMut::new();
    challenge.encode_frame(frame.request_id, &mut out);
    stream.write_all(&out).await?;
    stream.flush().await?;
    let frame = match read_frame(stream, input, MAX_HANDSHAKE_FRAME_LEN).await? {
        Ok(Some(f)) => f,
        Ok(None) => return Ok(None),
        Err(e) => {
            return refuse(stream, 0, handshake_error(e.code, e.message))
                .await
                .map(|_| None)
        }
    };
    let proof = match PeerMessage::decode_frame(&frame, limits) {
        Ok(PeerMessage::Error(e)) => {
            // The dialler could not verify our proof and says so before it leaves.
            refused(
                node,
                &format!("the dialler answered {} {}", e.code, e.message),
                "",
            );
            return Ok(None);
        }
        Ok(m) => m,
        Err(e) => {
            return refuse(stream, frame.request_id, failed(e.to_string()))
                .await
                .map(|_| None)
        }
    };
    match acceptor.handle_proof(proof) {
        Ok(peer) => {
            out.clear();
            PeerMessage::AuthOk.encode_frame(frame.request_id, &mut out);
            stream.write_all(&out).await?;
            stream.flush().await?;
            Ok(Some(peer))
        }
        Err(e) => {
            *auth_failed = true;
            refused(node, &e.to_string(), hint(&e));
            refuse(stream, frame.request_id, failed(e.to_string()))
                .await
                .map(|_| None)
        }
    }
}

/// Writes replies on an authenticated link: bounded by the node's write timeout (a peer
/// that stops reading is cut off, like a client) and abandoned when the node shuts down
/// (a link stuck in a write must not hold the shutdown up).
async fn send(
    node: &SharedNode,
    stream: &mut Stream,
    out: &[u8],
    shutdown: &mut Shutdown,
) -> std::io::Result<()> {
    tokio::select! {
        r = crate::listen::write_with_progress(stream, out, node.config.write_timeout) => {
            if matches!(&r, Err(e) if e.kind() == std::io::ErrorKind::TimedOut) {
                Stats::bump(&node.stats.write_timeouts);
            }
            r
        }
        _ = shutdown.wait() => Err(std::io::Error::new(
            std::io::ErrorKind::Interrupted,
            "shutting down while a peer was not reading",
        )),
    }
}

async fn serve_peer(
    node: &SharedNode,
    tcp: tokio::net::TcpStream,
    addr: std::net::SocketAddr,
    tls: Option<Arc<TlsState>>,
    mut shutdown: Shutdown,
    guard: Guard,
) -> std::io::Result<()> {
    let ip = addr.ip();
    let started = tokio::time::Instant::now();
    let mut stream = match tls {
        None => Stream::Plain(tcp),
        Some(tls) => match timeout(HANDSHAKE_TIMEOUT, crate::tls::accept(&tls, tcp)).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                Stats::bump(&node.stats.tls_failures);
                TLS_WARN.warn(format_args!("peer port: TLS handshake from {addr} refused: {e}"));
                return Ok(());
            }
            Err(_) => {
                Stats::bump(&node.stats.tls_failures);
                TLS_WARN.warn(format_args!(
                    "peer port: TLS handshake from {addr} not completed within {HANDSHAKE_TIMEOUT:?}"
                ));
                return Ok(());
            }
        },
    };
    // An address that failed the secret handshake waits for its turn (not counted
    // against the handshake's time; abandoned at shutdown).
    tokio::select! {
        _ = guard.throttle.wait_turn(ip) => {}
        _ = shutdown.wait() => return Ok(()),
    }
    // Sized for the handshake; grown for session traffic once the peer has authenticated.
    let mut input = BytesMut::with_capacity(2 * MAX_HANDSHAKE_FRAME_LEN as usize);
    let mut auth_failed = false;
    let left = HANDSHAKE_TIMEOUT
        .saturating_sub(started.elapsed())
        .max(Duration::from_secs(1));
    let result = timeout(left, handshake(node, &mut stream, &mut input, &mut auth_failed)).await;
    if auth_failed {
        Stats::bump(&node.stats.peer_auth_failures);
        let (n, delay) = guard.throttle.failure(ip);
        AUTH_WARN.warn(format_args!(
            "peer {addr} failed the secret handshake ({n} in a row; its next attempt waits {delay:?})"
        ));
    }
    let peer = match result {
        Ok(Ok(Some(p))) => p,
        Ok(Ok(None)) => return Ok(()),
        Ok(Err(e)) => return Err(e),
        Err(_) => {
            return refuse(
                &mut stream,
                0,
                handshake_error(ErrorCode::Timeout, "handshake not completed in time"),
            )
            .await;
        }
    };
    guard.throttle.success(ip);
    drop(guard.permit);
    drop(guard.unauthenticated);
    let served = serve_requests(node, stream, input, peer, shutdown).await;
    node.forget_owner_heard(peer.advertised);
    served
}

/// Answers an authenticated peer's requests until the connection ends.
async fn serve_requests(
    node: &SharedNode,
    mut stream: Stream,
    mut input: BytesMut,
    peer: PeerIdentity,
    mut shutdown: Shutdown,
) -> std::io::Result<()> {
    // A new process at a peer's address is learnt from its inbound handshake too, not
    // only when this node dials it: it may ask for a session before this node asks it
    // anything, and whether it forgot the fences its old process kept decides whether
    // this node may hand the session over (`Node::holders_unsettled`; simulation seed
    // 6063 with crashes).
    node.peers.processes.seen(peer.advertised, peer.node_id);
    // A burst of requests (REPLICATEs of a session each) is taken in a few reads.
    input.reserve(64 * 1024);
    let limits = &node.config.limits;
    let mut out = BytesMut::with_capacity(16 * 1024);
    loop {
        loop {
            let frame = match decode_frame(&mut input, limits.max_frame_len) {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(e) => {
                    // Replies to the requests before the bad frame go out first.
                    send(node, &mut stream, &out, &mut shutdown).await?;
                    return refuse(&mut stream, 0, ErrorReply::new(e.code(), e.to_string())).await;
                }
            };
            // Any invalid frame ends the link, LIMIT_EXCEEDED included (protocol.md 2.5):
            // the nodes of a cluster share their limits, so a peer over one is broken.
            let msg = match PeerMessage::decode_frame(&frame, limits) {
                Ok(m) => m,
                Err(e) => {
                    send(node, &mut stream, &out, &mut shutdown).await?;
                    return refuse(
                        &mut stream,
                        frame.request_id,
                        ErrorReply::new(e.code(), e.to_string()),
                    )
                    .await;
                }
            };
            match handle(node, &peer, msg) {
                Some(reply) => reply.encode_frame(frame.request_id, &mut out),
                None => {
                    send(node, &mut stream, &out, &mut shutdown).await?;
                    let err = ErrorReply::new(ErrorCode::UnknownOpcode, "not a peer request");
                    return refuse(&mut stream, frame.request_id, err).await;
                }
            }
            if out.len() >= FLUSH_AT {
                send(node, &mut stream, &out, &mut shutdown).await?;
                out.clear();
            }
        }
        if !out.is_empty() {
            send(node, &mut stream, &out, &mut shutdown).await?;
            out.clear();
        }
        let n = tokio::select! {
            _ = shutdown.wait() => {
                let _ = stream.shutdown().await;
                return Ok(());
            }
            r = timeout(IDLE_TIMEOUT, stream.read_buf(&mut input)) => match r {
                Ok(r) => r?,
                Err(_) => return Ok(()),
            },
        };
        if n == 0 {
            return Ok(());
        }
    }
}
