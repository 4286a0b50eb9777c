//! The peer port: other nodes' links into this node. Every connection must complete the
//! mutual handshake before anything else; until then, any other frame gets AUTH_FAILED and
//! the connection closes, so no session data ever reaches an unauthenticated peer.
//!
//! What an unauthenticated connection can cost is bounded three ways: its frames are read
//! with [`MAX_HANDSHAKE_FRAME_LEN`] (115 bytes) instead of `max_frame_len`, the whole
//! handshake must finish within `HANDSHAKE_TIMEOUT` (5 s), and at most
//! `NodeConfig::max_peer_handshakes` connections may be in the handshake at once.

use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use sessync_proto::{
    decode_frame, Acceptor, ErrorCode, ErrorReply, Frame, HandshakeError, Message, PeerIdentity, PeerMessage,
    MAX_HANDSHAKE_FRAME_LEN,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::timeout;
use tokio_util::task::TaskTracker;

use crate::clock::now_ms;
use crate::listen::next_connection;
use crate::node::SharedNode;
use crate::shutdown::Shutdown;
use crate::stats::Stats;
use crate::table::{CopyOutcome, Dropped, Replicated};

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
) {
    let handshakes = Arc::new(Semaphore::new(node.config.max_peer_handshakes));
    loop {
        let Some((mut stream, addr)) = next_connection(&listener, &mut shutdown, "peer").await else {
            return;
        };
        let Ok(permit) = handshakes.clone().try_acquire_owned() else {
            Stats::bump(&node.stats.peer_handshakes_refused);
            tasks.spawn(async move {
                let err = handshake_error(
                    ErrorCode::TooManyConnections,
                    "too many peer connections in the handshake",
                );
                let _ = refuse(&mut stream, 0, err).await;
            });
            continue;
        };
        let node = node.clone();
        let shutdown = shutdown.clone();
        tasks.spawn(async move {
            if let Err(e) = serve_peer(&node, stream, shutdown, permit).await {
                tracing::debug!(%addr, "peer connection ended: {e}");
            }
        });
    }
}

/// Reads until one whole frame is buffered. `Ok(None)` when the peer closed cleanly.
async fn read_frame(
    stream: &mut TcpStream,
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

async fn refuse(stream: &mut TcpStream, request_id: u64, err: ErrorReply) -> std::io::Result<()> {
    let mut out = BytesMut::new();
    PeerMessage::Error(err).encode_frame(request_id, &mut out);
    let _ = timeout(Duration::from_secs(1), stream.write_all(&out)).await;
    let _ = stream.shutdown().await;
    Ok(())
}

/// Counts a handshake refused at this port and logs it at INFO (rate-limited: anyone who
/// can reach the port can fail handshakes at will).
fn refused(node: &SharedNode, stream: &TcpStream, why: &str, hint: &str) {
    Stats::bump(&node.stats.peer_handshakes_refused);
    if let Some(left_out) = node.stats.handshake_log.allow() {
        let from = stream
            .peer_addr()
            .map_or_else(|_| "?".to_string(), |a| a.to_string());
        tracing::info!(%from, left_out, "peer handshake refused ({why}){hint}");
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

async fn handshake(
    node: &SharedNode,
    stream: &mut TcpStream,
    input: &mut BytesMut,
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
                stream,
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
    let (acceptor, challenge) =
        match Acceptor::handle_hello(node.config.keys.clone(), node.node_id, node.advertise, hello) {
            Ok(x) => x,
            Err(e) => {
                refused(node, stream, &e.to_string(), hint(&e));
                return refuse(stream, frame.request_id, failed(e.to_string()))
                    .await
                    .map(|_| None);
            }
        };
    let mut out = BytesMut::new();
    challenge.encode_frame(frame.request_id, &mut out);
    stream.write_all(&out).await?;
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
                stream,
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
            Ok(Some(peer))
        }
        Err(e) => {
            refused(node, stream, &e.to_string(), hint(&e));
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
    stream: &mut TcpStream,
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
    mut stream: TcpStream,
    mut shutdown: Shutdown,
    handshake_permit: OwnedSemaphorePermit,
) -> std::io::Result<()> {
    // Sized for the handshake; grown for session traffic once the peer has authenticated.
    let mut input = BytesMut::with_capacity(2 * MAX_HANDSHAKE_FRAME_LEN as usize);
    let peer = match timeout(HANDSHAKE_TIMEOUT, handshake(node, &mut stream, &mut input)).await {
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
    drop(handshake_permit);
    input.reserve(16 * 1024);
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

/// Answers one request from an authenticated peer; `None` for a message that is not a
/// peer request (the connection is then closed).
pub(crate) fn handle(node: &SharedNode, peer: &PeerIdentity, msg: PeerMessage) -> Option<PeerMessage> {
    let now = now_ms();
    let copy = |session_id, last_transfer, failed_owner: Option<std::net::SocketAddr>| match node
        .table
        .hand_over(&session_id, *peer, last_transfer, failed_owner, now)
    {
        CopyOutcome::Data { transfer, record } => {
            Stats::bump(&node.stats.copies_served);
            if failed_owner.is_some() {
                Stats::bump(&node.stats.backups_promoted);
            }
            PeerMessage::CopyData { transfer, record }
        }
        CopyOutcome::Moved(owner) => {
            Stats::bump(&node.stats.moved);
            PeerMessage::Moved { session_id, owner }
        }
        CopyOutcome::NotFound => PeerMessage::NotFound { session_id },
    };
    Some(match msg {
        PeerMessage::Ping(n) => PeerMessage::Pong(n),
        PeerMessage::Copy {
            session_id,
            last_transfer,
        } => copy(session_id, last_transfer, None),
        PeerMessage::Promote {
            session_id,
            last_transfer,
            failed_owner,
        } => copy(session_id, last_transfer, Some(failed_owner)),
        PeerMessage::CopyAck { session_id, transfer } => {
            if let Some(old) = node.table.ack_handover(&session_id, *peer, transfer, now) {
                node.spawn_drop_backups(session_id, old);
            }
            PeerMessage::Ok
        }
        PeerMessage::Replicate { generation, record } => {
            match node.table.replicate_in(*peer, generation, &record, now) {
                Replicated::Stored(old) => {
                    if let Some(old) = old {
                        node.spawn_drop_backups(record.id, old);
                    }
                    PeerMessage::Ok
                }
                Replicated::Ignored => PeerMessage::Ok,
                Replicated::Moved(owner) => PeerMessage::Moved {
                    session_id: record.id,
                    owner,
                },
                Replicated::OwnedHere => PeerMessage::Moved {
                    session_id: record.id,
                    owner: node.advertise,
                },
                Replicated::Destroyed => PeerMessage::NotFound {
                    session_id: record.id,
                },
                Replicated::Capacity => PeerMessage::Error(ErrorReply::new(
                    ErrorCode::Capacity,
                    "no room for a backup copy at this node",
                )),
            }
        }
        PeerMessage::Drop {
            session_id,
            generation,
        } => {
            match node
                .table
                .drop_backup(&session_id, peer.advertised, generation, now)
            {
                Dropped::Dropped | Dropped::NotHeld => PeerMessage::Ok,
                Dropped::Newer(owner) => PeerMessage::Moved {
                    session_id,
                    owner: if owner.ip().is_unspecified() {
                        node.advertise
                    } else {
                        owner
                    },
                },
            }
        }
        _ => return None,
    })
}
