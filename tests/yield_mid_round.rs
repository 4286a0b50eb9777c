//! A copy given up while its write's round runs (protocol.md 12.2 step 3): over real
//! sockets, a node whose session yields to a newer owner's REPLICATE while a write's
//! REPLICATE round is waiting for its holder does not acknowledge the write when the
//! holder confirms it afterwards: the newer owner's copy, which lives on, lacks it. The
//! holder is a fake peer that completes the real handshake and answers when told; the
//! newer owner is the test itself, dialling the node's peer port with the cluster secret.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::member::{dial_as_member, read_reply};
use common::*;
use futures_util::SinkExt;
use sessync_proto::{PeerMessage, SessionId};
use tokio::sync::Notify;
use tokio::time::timeout;

/// The holder's side of the test.
#[derive(Default)]
struct Holder {
    /// REPLICATEs wait for `release` once this is set.
    hold: AtomicBool,
    /// A REPLICATE is waiting.
    arrived: Notify,
    /// Lets the waiting REPLICATE be answered OK.
    release: Notify,
}

/// The node created the session (generation 0, its copy on the holder). A write's round
/// waits at the holder; meanwhile a newer owner's REPLICATE of generation 1 reaches the
/// node, which yields and keeps that copy; then the holder confirms the write. The write
/// is not acknowledged. Simulation seed 39269 with crashes: a claim yielded to a newer
/// claim's REPLICATE in the middle of a write's round, whose holders then confirmed it,
/// and the append it acknowledged was lost. Checked: without the rule, the SET is
/// acknowledged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_whose_copy_yielded_during_its_round_is_not_acknowledged() {
    let holder_state = Arc::new(Holder::default());
    let state = holder_state.clone();
    let holder = scripted_peer_async(
        [7; 16],
        Arc::new(move |m: PeerMessage| {
            let state = state.clone();
            Box::pin(async move {
                Some(match m {
                    PeerMessage::Replicate { .. } => {
                        if state.hold.load(Ordering::SeqCst) {
                            state.arrived.notify_one();
                            state.release.notified().await;
                        }
                        PeerMessage::Ok
                    }
                    PeerMessage::Locate { session_id } => PeerMessage::NotFound { session_id },
                    _ => PeerMessage::Ok,
                })
            })
        }),
    )
    .await;
    // The newer owner's address: a member the node knows, which the test speaks for.
    let newer = scripted_peer(
        [8; 16],
        Arc::new(|m: &PeerMessage| match m {
            PeerMessage::Replicate { .. } => Some(PeerMessage::Error(sessync_proto::ErrorReply::new(
                sessync_proto::ErrorCode::Capacity,
                "full",
            ))),
            _ => Some(PeerMessage::Ok),
        }),
    )
    .await;
    let node = replicating_node_with(
        vec![holder, newer],
        Duration::from_secs(2),
        Duration::from_millis(100),
    )
    .await;
    let c = client(node.client_addr()).await;
    let s = timeout(WAIT, c.create(attrs(&[("cart", "mine")])))
        .await
        .expect("the CREATE must end")
        .expect("the session is created, its copy on the holder");
    let id: SessionId = sessync_proto::Token::verify(&s.token, &keys())
        .unwrap()
        .session_id;

    holder_state.hold.store(true, Ordering::SeqCst);
    let arrived = holder_state.arrived.notified();
    let write = tokio::spawn({
        let c = c.clone();
        let token = s.token.clone();
        async move { timeout(WAIT, c.set(&token).put("cart", "later").send()).await }
    });
    timeout(WAIT, arrived)
        .await
        .expect("the write's REPLICATE reaches the holder");

    let mut member = dial_as_member(node.peer_addr(), [8; 16], newer).await;
    let mut record = record_with_cart(id, b"newer");
    record.meta.version = 100;
    member
        .send((
            3,
            PeerMessage::Replicate {
                generation: 1,
                record,
            },
        ))
        .await
        .unwrap();
    assert_eq!(
        read_reply(&mut member).await,
        PeerMessage::Ok,
        "the node keeps the newer owner's copy, yielding its own"
    );
    holder_state.release.notify_one();

    let got = write.await.unwrap().expect("the SET must end");
    assert!(
        got.is_err(),
        "a write whose copy yielded to a newer owner during its round was acknowledged: {got:?}"
    );
    stop(vec![node]).await;
}
