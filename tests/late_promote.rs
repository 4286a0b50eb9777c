//! A late answer to PROMOTE is the claim it answers (protocol.md 12.3): over real
//! sockets, a node whose owner is gone asks the owner's backup to hand its copy over
//! (PROMOTE); the backup answers after the node gave up, and meanwhile the node was fenced
//! at the generation the backup hands its copy over under. The late COPY_DATA is taken as
//! a claim (it climbs past the fence) and acknowledged, and the session is served from it.
//! Installed as a plain moved copy, it was refused below the fence (COPY_REFUSED), the
//! backup then pointed at the node and the node's fence at the backup, and no request
//! reached the only copy left (simulation seed 12290 with crashes). The backup is a fake
//! peer that completes the real handshake; the fence is the test itself, dialling the
//! node's peer port as that backup.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::member::{ask, dial_as_member};
use common::*;
use sessync_proto::{PeerMessage, SessionId};
use tokio::sync::Notify;
use tokio::time::timeout;

/// The failed owner's generation of the session (the token's).
const OWNED: u64 = 4;
/// The generation the backup hands its copy over under, and the fence's.
const HANDED: u64 = OWNED + 1;
/// How long the backup takes to answer the first PROMOTE: past the node's peer timeout
/// (300 ms), so the answer is late.
const LATE: Duration = Duration::from_millis(600);

/// The backup's side of the test.
#[derive(Default)]
struct Backup {
    /// The failed owner (nothing listens there).
    owner: std::sync::OnceLock<SocketAddr>,
    /// A PROMOTE has been answered late once: later ones are answered at once.
    answered: AtomicBool,
    /// The first PROMOTE arrived.
    promoted: Notify,
    /// The transfer a COPY_ACK named (0: none yet).
    acked: AtomicU64,
    /// The transfer a COPY_REFUSED named (0: none yet).
    refused: AtomicU64,
}

impl Backup {
    async fn answer(&self, m: PeerMessage) -> PeerMessage {
        let owner = *self.owner.get().expect("the owner's address is set");
        match m {
            PeerMessage::Promote { session_id, .. } if !self.answered.swap(true, Ordering::SeqCst) => {
                self.promoted.notify_one();
                tokio::time::sleep(LATE).await;
                PeerMessage::CopyData {
                    transfer: HANDED,
                    holders: Vec::new(),
                    record: record_with_cart(session_id, b"claimed"),
                }
            }
            // Handing its copy to the node: it names no one else.
            PeerMessage::Promote { session_id, .. } | PeerMessage::Copy { session_id, .. } => {
                PeerMessage::NotFound { session_id }
            }
            PeerMessage::Locate { session_id } => located_backup(session_id, owner, OWNED),
            PeerMessage::CopyAck { transfer, .. } => {
                self.acked.store(transfer, Ordering::SeqCst);
                PeerMessage::Ok
            }
            PeerMessage::CopyRefused { transfer, .. } => {
                self.refused.store(transfer, Ordering::SeqCst);
                PeerMessage::Ok
            }
            _ => PeerMessage::Ok,
        }
    }
}

/// The owner is gone; the node's PROMOTE to its backup is answered after the node gave
/// up, and the node was fenced at the handover's generation meanwhile (the backup's own
/// claim placed its copy there, then abandoned it): the late copy is
/// installed as a claim, acknowledged to the backup, and served. Checked: without the
/// rule, the node answers COPY_REFUSED and the session is never served again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_answer_to_promote_is_installed_as_its_claim() {
    init_sim_log();
    let state = Arc::new(Backup::default());
    let script = state.clone();
    let backup = scripted_peer_async(
        [8; 16],
        Arc::new(move |m: PeerMessage| {
            let state = script.clone();
            Box::pin(async move { Some(state.answer(m).await) })
        }),
    )
    .await;
    let owner = nowhere();
    state.owner.set(owner).unwrap();
    let node = replicating_node_beside_fakes(vec![owner, backup]).await;
    let id = SessionId::random();

    // The GET finds the owner gone and asks the backup; once it has, a claim of the
    // backup's (the test, as the backup) fences the node at the handover's generation.
    let c = client(node.client_addr()).await;
    let token = token_for(id, OWNED, owner, vec![backup]);
    let get = tokio::spawn(async move { timeout(WAIT, c.get(&token)).await });
    timeout(WAIT, state.promoted.notified())
        .await
        .expect("the node asks the backup to hand its copy over");
    let mut link = dial_as_member(node.peer_addr(), [8; 16], backup).await;
    let claim = PeerMessage::Replicate {
        generation: HANDED,
        record: record_with_cart(id, b"abandoned"),
    };
    assert_eq!(
        ask(&mut link, 1, claim).await,
        PeerMessage::Ok,
        "the claim's copy is placed"
    );
    let abandoned = PeerMessage::Drop {
        session_id: id,
        generation: HANDED,
    };
    assert_eq!(
        ask(&mut link, 2, abandoned).await,
        PeerMessage::Ok,
        "the fence is left"
    );
    let _ = get.await.expect("the GET task ends").expect("the GET must end");

    // The late copy: acknowledged, not refused.
    let deadline = tokio::time::Instant::now() + WAIT;
    while state.acked.load(Ordering::SeqCst) == 0 && state.refused.load(Ordering::SeqCst) == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the late copy is answered"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        state.refused.load(Ordering::SeqCst),
        0,
        "the late claim is not refused"
    );
    assert_eq!(
        state.acked.load(Ordering::SeqCst),
        HANDED,
        "the late claim is acknowledged"
    );

    let c = client(node.client_addr()).await;
    let token = token_for(id, OWNED, owner, vec![backup]);
    let s = timeout(WAIT, c.get(&token))
        .await
        .expect("the GET must end")
        .expect("the session is served from the claimed copy");
    assert_served_with_cart(&s, b"claimed", "the backup's copy");
    stop(vec![node]).await;
}
