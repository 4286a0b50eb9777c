//! The outgoing peer link's request machinery over real sockets (branch `move-cpu`): a
//! request's deadline kept by the link's sweeper (no timer per request), and a COPY_ACK
//! queued on the link without a task, sent again while the giver does not answer OK.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use sessync_proto::{ErrorCode, ErrorReply, PeerMessage, SessionId};
use tokio::time::timeout;

/// A peer that completes the real handshake, then answers each request as `script` says.
async fn scripted_peer(script: PeerScript) -> SocketAddr {
    common::scripted_peer([9; 16], script).await
}

/// A valid token for a new random session that `owner` supposedly holds.
fn token_naming(owner: SocketAddr) -> String {
    sessync_proto::Token {
        session_id: SessionId::random(),
        generation: 0,
        owner,
        backups: vec![],
    }
    .sign(&keys())
}

/// A peer that authenticates and then never answers: the COPY gives up at its deadline
/// (kept by the link's sweeper), so the GET fails after one peer timeout, not sooner and
/// not much later; and a second one on the same link does too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unanswered_peer_request_gives_up_at_its_deadline() {
    let owner = scripted_peer(Arc::new(|m| match m {
        PeerMessage::Ping(n) => Some(PeerMessage::Pong(*n)),
        _ => None,
    }))
    .await;
    let mut cfg = config();
    cfg.peer_timeout = Duration::from_millis(600);
    let node = sessync_server::start(cfg).await.unwrap();
    let c = client(node.client_addr()).await;
    for _ in 0..2 {
        let started = Instant::now();
        let err = timeout(WAIT, c.get(&token_naming(owner)))
            .await
            .expect("the GET must end")
            .unwrap_err();
        let took = started.elapsed();
        assert_eq!(err.code(), Some(ErrorCode::OwnerUnreachable), "{err}");
        assert!(took >= Duration::from_millis(550), "gave up early: {took:?}");
        assert!(took < Duration::from_millis(1500), "took {took:?}");
    }
    stop(vec![node]).await;
}

/// A giver that hands a session over and answers its COPY_ACK with `acks_refused` errors
/// before an OK: the taker serves the session at once, and sends the ACK until the giver
/// answers OK, at most 3 times in all. Returns the ACKs the giver saw.
async fn acks_seen(acks_refused: usize) -> usize {
    let acks = Arc::new(AtomicUsize::new(0));
    let seen = acks.clone();
    let giver = scripted_peer(Arc::new(move |m| {
        Some(match m {
            PeerMessage::Ping(n) => PeerMessage::Pong(*n),
            PeerMessage::Copy { session_id, .. } => PeerMessage::CopyData {
                transfer: 1,
                holders: Vec::new(),
                record: empty_record(*session_id, sessync_server::clock::now_ms(), 60_000),
            },
            PeerMessage::CopyAck { .. } => {
                if seen.fetch_add(1, Ordering::SeqCst) < acks_refused {
                    PeerMessage::Error(ErrorReply::new(ErrorCode::Internal, "not now"))
                } else {
                    PeerMessage::Ok
                }
            }
            _ => PeerMessage::Ok,
        })
    }))
    .await;
    let node = sessync_server::start(config()).await.unwrap();
    let c = client(node.client_addr()).await;
    let token = token_naming(giver);
    timeout(WAIT, c.get(&token))
        .await
        .expect("the GET must end")
        .expect("the session moves here");
    let want = (acks_refused + 1).min(3);
    let until = Instant::now() + WAIT;
    while acks.load(Ordering::SeqCst) < want && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Room for an ACK too many to arrive.
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop(vec![node]).await;
    acks.load(Ordering::SeqCst)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_ack_answered_ok_is_sent_once() {
    assert_eq!(acks_seen(0).await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_copy_ack_is_sent_again() {
    assert_eq!(acks_seen(1).await, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_ack_is_sent_at_most_three_times() {
    assert_eq!(acks_seen(10).await, 3);
}
