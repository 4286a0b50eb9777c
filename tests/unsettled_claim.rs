//! A claim its holders have not confirmed is never handed on, nor does it end a live
//! owner's handover, until they have (protocol.md 12.3, 12.4): over real sockets, a node
//! holds a claim that no member confirmed (`never_acknowledged_claim`: the fake members
//! never answer its REPLICATEs).
//! - PROMOTE is answered MOVED to the node itself, so the asker asks by COPY, which waits
//!   while the holders are settled (as COPY always did). Handed on under PROMOTE, a claim
//!   of a stale backup copy went on at the asker, acknowledged an append there, and lost
//!   it to the rival claim of the newer copy that the survey would have found (simulation
//!   seed 23791 with crashes).
//! - A live owner's copy of the claim's generation, handed here while the claim is
//!   installed already, is not refused yet: the refusal waits, as a held COPY_ACK does,
//!   for the claim's holders. Refused at once, the owner ended its handover and fenced
//!   its holders, and a crash of this node, whose claim no holder had taken, lost the
//!   session (simulation seed 14790 with crashes).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::claims::never_acknowledged_claim;
use common::raw_peer::{ask, authenticated_as};
use common::*;
use sessync_proto::{PeerMessage, SessionId};
use tokio::time::timeout;

/// PROMOTE to a node whose claim of the session is unconfirmed gets MOVED to that node.
/// Checked: without the rule, the node hands its unconfirmed claim over (COPY_DATA).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn promote_to_an_unconfirmed_claim_is_pointed_at_its_owner() {
    let id = SessionId::random();
    let (node, _generation, _drops) = never_acknowledged_claim(id).await;
    let mut asker = authenticated_as(node.peer_addr(), nowhere(), [10; 16]).await;
    let promote = PeerMessage::Promote {
        session_id: id,
        last_transfer: 0,
        failed_owner: nowhere(),
    };
    assert_eq!(
        timeout(WAIT, ask(&mut asker, promote)).await.unwrap(),
        PeerMessage::Moved {
            session_id: id,
            owner: node.peer_addr()
        },
        "the claim is not handed on before its holders confirmed it"
    );
    stop(vec![node]).await;
}

/// A node with `--replicas 1` that claimed its own backup copy of session `id` (its
/// owner, a fake process at an address nothing listens on, REPLICATEd it there) while its
/// only other member never answers REPLICATE: the claim is the one copy, and unconfirmed.
/// Returns the node and the claim's generation.
async fn unconfirmed_local_claim(id: SessionId) -> (sessync_server::NodeHandle, u64) {
    let member = scripted_peer(
        [7; 16],
        Arc::new(|m: &PeerMessage| match m {
            PeerMessage::Replicate { .. } => None,
            other => Some(common::member::empty_member_answer(other)),
        }),
    )
    .await;
    let node = replicating_node_beside_fakes(vec![member]).await;
    let owner = common::claims::backup_copy_of_a_gone_owner(node.peer_addr(), id).await;
    // Past the owner's read lease (100 ms), which a claim waits out.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let c = client(node.client_addr()).await;
    // The claim is installed either way; its read is refused (OWNER_UNREACHABLE) when no
    // node answered its round and the copy's access time is over three leases old
    // (protocol.md 12.5), served otherwise.
    match timeout(WAIT, c.get(&token_for(id, 1, owner, vec![node.peer_addr()])))
        .await
        .unwrap()
    {
        Ok(claimed) => assert_served_with_cart(&claimed, b"claimed", "the claim"),
        Err(e) => assert_eq!(
            e.code(),
            Some(sessync_proto::ErrorCode::OwnerUnreachable),
            "the backup copy here is claimed: {e}"
        ),
    }
    let mut raw = authenticated_as(node.peer_addr(), nowhere(), [9; 16]).await;
    match common::claims::locate(&mut raw, id).await {
        PeerMessage::Located {
            role: sessync_proto::Role::Owner,
            generation: Some(g),
            ..
        } => (node, g),
        other => panic!("the node owns the claimed session: {other:?}"),
    }
}

/// A live owner hands the node its copy under the generation of the node's unconfirmed
/// claim, its only copy (a client's token names that owner and a newer generation, so the
/// node fetches from it): the copy is not installed, and no COPY_REFUSED reaches the owner
/// while the claim is unconfirmed. Checked: without the rule, the COPY_REFUSED comes at
/// once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_of_an_unconfirmed_claims_generation_is_not_refused_yet() {
    init_sim_log();
    let id = SessionId::random();
    let (node, generation) = unconfirmed_local_claim(id).await;
    let refused = Arc::new(AtomicU64::new(0));
    let seen = refused.clone();
    let owner = scripted_peer(
        [11; 16],
        Arc::new(move |m: &PeerMessage| match m {
            PeerMessage::Copy { session_id, .. } => Some(PeerMessage::CopyData {
                transfer: generation,
                holders: Vec::new(),
                record: record_with_cart(*session_id, b"owner's"),
            }),
            PeerMessage::CopyRefused { transfer, .. } => {
                seen.store(*transfer, Ordering::SeqCst);
                Some(PeerMessage::Ok)
            }
            other => Some(common::member::empty_member_answer(other)),
        }),
    )
    .await;
    let c = client(node.client_addr()).await;
    let _ = timeout(WAIT, c.get(&token_for(id, generation + 1, owner, vec![]))).await;
    // A refusal goes out in the background as soon as the copy is not installed: a
    // second of quiet is many times what it takes over loopback.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        refused.load(Ordering::SeqCst),
        0,
        "the owner's handover is not ended while the claim here is unconfirmed"
    );
    stop(vec![node]).await;
}
