//! Two claims of one generation that each gave the session up to the other (protocol.md
//! 12.4, "Rival copies of one generation"): over real sockets, a node whose claim yielded
//! to a rival's copy keeps that copy when the rival then abandons its claim too (its
//! DROP), as a kept copy below the rival, instead of fencing it away. Fenced, no copy of
//! the session was left anywhere (simulation seed 27722 without crashes: a paused claimer
//! woke to the rival's late REPLICATE and yielded to it, and the rival's DROP, sent when
//! it had given up on the claimer's copy, came next). The rival is the test itself,
//! dialling the node's peer port with the cluster secret.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;

use common::claims::{
    claim_met_by_rival, locate, never_acknowledged_claim, replicate, until_backup_of, RivalAct,
};
use common::raw_peer::{ask, authenticated_as};
use common::*;
use sessync_proto::{ErrorCode, ErrorReply, PeerMessage, Role, SessionId};
use tokio::time::timeout;

/// The node's claim never acknowledged a write; a rival with a higher node id REPLICATEs
/// its copy of the same generation, and the node yields to it; then the rival DROPs that
/// generation (it gave its claim up too). The node still holds the rival's copy, kept one
/// generation below it, and answers LOCATE with it. Checked: without the rule, the DROP
/// fences the copy and LOCATE answers NOT_FOUND.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_yielded_to_outlives_the_rivals_drop() {
    let id = SessionId::random();
    let (node, generation, _) = never_acknowledged_claim(id).await;
    let rival = nowhere();
    let mut raw = authenticated_as(node.peer_addr(), rival, [0xff; 16]).await;
    let answer = timeout(WAIT, ask(&mut raw, replicate(id, generation, 9)))
        .await
        .unwrap();
    if matches!(&answer, PeerMessage::Error(e) if e.code == ErrorCode::VersionConflict) {
        until_backup_of(&mut raw, id, rival).await;
    } else {
        assert_eq!(answer, PeerMessage::Ok, "the rival's copy is stored");
    }
    until_backup_of(&mut raw, id, rival).await;

    let drop = PeerMessage::Drop {
        session_id: id,
        generation,
    };
    assert_eq!(timeout(WAIT, ask(&mut raw, drop)).await.unwrap(), PeerMessage::Ok);
    assert_eq!(
        locate(&mut raw, id).await,
        located_backup(id, rival, generation - 1),
        "the copy is kept below the rival"
    );
    stop(vec![node]).await;
}

/// A claim being placed meets its rival at the rival itself: the rival stores its own copy
/// of the claim's generation on the claiming node, then answers the claim's REPLICATE with
/// VERSION_CONFLICT (it yields once its round is over). The claim does not yield to that
/// copy, which it finds at home after its round, and is installed over it. Checked:
/// without the rule, both gave up (the node yielded to the copy of a rival that was
/// yielding to it), and the GET is not served (simulation seed 46337 without crashes).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_does_not_yield_to_a_rival_that_promised_to_yield_to_it() {
    let id = SessionId::random();
    let act: RivalAct = Arc::new(move |mut raw, generation| {
        Box::pin(async move {
            let stored = timeout(WAIT, ask(&mut raw, replicate(id, generation, 7))).await;
            assert_eq!(stored.unwrap(), PeerMessage::Ok, "the rival's copy is stored");
            PeerMessage::Error(ErrorReply::new(
                ErrorCode::VersionConflict,
                "this node's rival copy of the generation yields to yours once its round is over; send it again",
            ))
        })
    });
    let (node, got) = claim_met_by_rival(id, act).await;
    assert!(got.is_ok(), "the claim is installed and served: {got:?}");
    let mut raw = authenticated_as(node.peer_addr(), nowhere(), [9; 16]).await;
    assert!(
        matches!(
            locate(&mut raw, id).await,
            PeerMessage::Located {
                role: Role::Owner,
                ..
            }
        ),
        "the node owns the session"
    );
    stop(vec![node]).await;
}
