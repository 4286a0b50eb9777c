//! A claim names the copy it claims (REPLICATE_CLAIM, feature CLAIM_BASE, protocol.md
//! 9.3 and 10), over real sockets:
//! - the live owner of the generation a claim was made from refuses the claim when the
//!   copy claimed is not its own (a rival lineage of its generation, which holds none of
//!   the writes it acknowledged), and goes on serving; it still yields to a claim of its
//!   own copy, and to a plain REPLICATE, which names no base (simulation seed 16020
//!   without crashes: the owner yielded to such a claim and lost an acknowledged append);
//! - a node that claims a backup copy sends REPLICATE_CLAIM, naming that copy, to a holder
//!   whose link uses CLAIM_BASE, and a plain REPLICATE to one that predates FEATURES;
//! - a holder of an owner's copy refuses a claim of that owner's *earlier process's* copy
//!   of the same generation, naming the owner, and an owner handing its copy to a node
//!   refuses that node's claim of its own address's earlier process's copy of the
//!   generation (simulation seed 35328
//!   with crashes: a paused node claimed a crashed process's copy while the address's
//!   new process owned the generation anew with an acknowledged append).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use common::member::{ask, dial_as_member, take_handover};
use common::*;
use sessync_proto::{ClaimBase, PeerMessage, SessionId};
use tokio::time::timeout;

/// A fake holder's answers: OK to every copy, NOT_FOUND to LOCATE (it owns nothing).
fn holder_answer(m: &PeerMessage) -> PeerMessage {
    match m {
        PeerMessage::Locate { session_id } | PeerMessage::Copy { session_id, .. } => PeerMessage::NotFound {
            session_id: *session_id,
        },
        _ => PeerMessage::Ok,
    }
}

/// A claim of `id` under generation 1 from the copy `base_owner` held under 0.
fn claim(id: SessionId, base_owner: SocketAddr) -> PeerMessage {
    PeerMessage::ReplicateClaim {
        generation: 1,
        base: ClaimBase {
            owner: base_owner,
            generation: 0,
            writer: 0,
        },
        record: record_with_cart(id, b"rival"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_live_owner_refuses_a_claim_of_a_rival_lineage_of_its_generation() {
    let holder = scripted_peer([7; 16], Arc::new(|m| Some(holder_answer(m)))).await;
    let node = replicating_node_beside_fakes(vec![holder]).await;
    let me = node.peer_addr();
    // A member that claimed a copy of another lineage (its address is never dialled).
    let rival = nowhere();
    let mut link = dial_as_member(me, [9; 16], rival).await;

    // Created here (generation 0), its copy confirmed by the holder: acknowledged.
    let (c, s, id) = create_mine(node.client_addr()).await;
    let refused = ask(&mut link, 1, claim(id, nowhere())).await;
    assert_eq!(
        refused,
        PeerMessage::Moved {
            session_id: id,
            owner: me
        },
        "a claim of another owner's copy of this owner's generation is refused, naming the owner"
    );
    let served = timeout(WAIT, c.get(&s.token)).await.unwrap().unwrap();
    assert_served_with_cart(&served, b"mine", "the owner, which kept the session");
    assert!(!served.token_changed, "still the owner");

    // A claim of this owner's own copy (it failed over from this node): taken, the owner
    // yields. The same when the claim names no base at all (a plain REPLICATE, from a
    // node whose link does not use CLAIM_BASE).
    let (_, _, own) = create_mine(node.client_addr()).await;
    assert_eq!(
        ask(&mut link, 2, claim(own, me)).await,
        PeerMessage::Ok,
        "a claim of its own copy"
    );
    let (_, _, plain) = create_mine(node.client_addr()).await;
    let without_base = PeerMessage::Replicate {
        generation: 1,
        record: record_with_cart(plain, b"rival"),
    };
    assert_eq!(
        ask(&mut link, 3, without_base).await,
        PeerMessage::Ok,
        "a claim naming no base"
    );
    for id in [own, plain] {
        let located = ask(&mut link, 4, PeerMessage::Locate { session_id: id }).await;
        assert!(
            matches!(located, PeerMessage::Located { role: sessync_proto::Role::Backup, addr, generation: Some(1), .. } if addr == rival),
            "the owner yielded to the claim: {located:?}"
        );
    }
    stop(vec![node]).await;
}

/// What the fake holder of this release was sent: each copy's generation and base (`None`:
/// a plain REPLICATE).
type Received = Arc<Mutex<Vec<(u64, Option<ClaimBase>)>>>;

/// A fake holder of this release (it answers FEATURES with every feature): it records
/// the copies it is sent and answers as [`holder_answer`].
async fn holder_of_this_release(node_id: [u8; 16], received: Received) -> SocketAddr {
    scripted_peer_of_this_release(
        node_id,
        Arc::new(move |m| {
            match m {
                PeerMessage::Replicate { generation, .. } => {
                    received.lock().unwrap().push((*generation, None))
                }
                PeerMessage::ReplicateClaim { generation, base, .. } => {
                    received.lock().unwrap().push((*generation, Some(*base)))
                }
                _ => {}
            }
            Some(holder_answer(m))
        }),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_names_the_copy_it_claims_where_the_link_uses_claim_base() {
    let received: Received = Arc::default();
    let current = holder_of_this_release([7; 16], received.clone()).await;
    let older = Arc::new(Mutex::new(Vec::new()));
    let seen = older.clone();
    let older_holder = scripted_peer(
        [8; 16],
        Arc::new(move |m| {
            if let PeerMessage::Replicate { generation, .. }
            | PeerMessage::ReplicateClaim { generation, .. } = m
            {
                seen.lock()
                    .unwrap()
                    .push((*generation, matches!(m, PeerMessage::Replicate { .. })));
            }
            Some(holder_answer(m))
        }),
    )
    .await;
    // The owner that fails: it placed its copy of generation 2 here, then went away.
    let failed = nowhere();
    let failed_id = [5; 16];
    let mut cfg = config();
    cfg.replicas = 2;
    cfg.peers = vec![failed, current, older_holder];
    cfg.peer_timeout = std::time::Duration::from_millis(300);
    cfg.read_lease = std::time::Duration::from_millis(100);
    let node = sessync_server::start(cfg).await.unwrap();
    let id = SessionId::random();
    let mut link = dial_as_member(node.peer_addr(), failed_id, failed).await;
    let copy = PeerMessage::Replicate {
        generation: 2,
        record: record_with_cart(id, b"placed"),
    };
    assert_eq!(
        ask(&mut link, 1, copy).await,
        PeerMessage::Ok,
        "the backup copy is stored"
    );
    drop(link);

    // A request naming the failed owner: the node claims its backup copy (generation 3).
    let c = client(node.client_addr()).await;
    let token = token_for(id, 2, failed, vec![node.peer_addr()]);
    let served = timeout(WAIT, c.get(&token)).await.unwrap().unwrap();
    assert_served_with_cart(&served, b"placed", "the node, from its claimed backup copy");

    let writer = writer_tag(failed_id);
    let want = ClaimBase {
        owner: failed,
        generation: 2,
        writer,
    };
    assert!(
        received.lock().unwrap().contains(&(3, Some(want))),
        "the holder whose link uses CLAIM_BASE got REPLICATE_CLAIM naming the copy claimed: {:?}",
        received.lock().unwrap()
    );
    let older = older.lock().unwrap().clone();
    assert!(
        older.contains(&(3, true)) && older.iter().all(|(_, plain)| *plain),
        "the holder that predates FEATURES got the claim as a plain REPLICATE: {older:?}"
    );
    stop(vec![node]).await;
}

/// The tag REPLICATE_CLAIM names a writing process by (protocol.md 10, `ClaimBase`).
fn writer_tag(node_id: [u8; 16]) -> u32 {
    u32::from_le_bytes([node_id[0], node_id[1], node_id[2], node_id[3]]) | 1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_holder_refuses_a_claim_of_the_owners_replaced_process_copy() {
    let holder = scripted_peer([7; 16], Arc::new(|m| Some(holder_answer(m)))).await;
    let node = replicating_node_beside_fakes(vec![holder]).await;
    let me = node.peer_addr();
    // The owner's address, where a new process ([9; 16]) replaced an earlier one ([5; 16]):
    // the new one placed its copy of generation 2 here.
    let owner = nowhere();
    let (earlier, current) = ([5; 16], [9; 16]);
    let mut owner_link = dial_as_member(me, current, owner).await;
    let claimer = nowhere();
    let mut claimer_link = dial_as_member(me, [3; 16], claimer).await;
    let claim_of = |id, writer| PeerMessage::ReplicateClaim {
        generation: 3,
        base: ClaimBase {
            owner,
            generation: 2,
            writer,
        },
        record: record_with_cart(id, b"claimed"),
    };
    let placed = |id| PeerMessage::Replicate {
        generation: 2,
        record: record_with_cart(id, b"acknowledged"),
    };

    let id = SessionId::random();
    assert_eq!(
        ask(&mut owner_link, 1, placed(id)).await,
        PeerMessage::Ok,
        "the copy is stored"
    );
    assert_eq!(
        ask(&mut claimer_link, 2, claim_of(id, writer_tag(earlier))).await,
        PeerMessage::Moved {
            session_id: id,
            owner
        },
        "a claim of the earlier process's copy of 2 is refused, naming the owner"
    );
    let located = ask(&mut claimer_link, 3, PeerMessage::Locate { session_id: id }).await;
    assert!(
        matches!(located, PeerMessage::Located { role: sessync_proto::Role::Backup, addr, generation: Some(2), .. } if addr == owner),
        "the owner's copy is kept: {located:?}"
    );

    // A claim of the current process's own copy is taken (its owner failed), as before.
    let taken = SessionId::random();
    assert_eq!(ask(&mut owner_link, 4, placed(taken)).await, PeerMessage::Ok);
    assert_eq!(
        ask(&mut claimer_link, 5, claim_of(taken, writer_tag(current))).await,
        PeerMessage::Ok,
        "a claim of the copy held here"
    );
    stop(vec![node]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_owner_handing_its_copy_over_refuses_the_receivers_claim_of_another_copy() {
    let holder = scripted_peer([7; 16], Arc::new(|m| Some(holder_answer(m)))).await;
    let node = replicating_node_beside_fakes(vec![holder]).await;
    let me = node.peer_addr();
    let receiver = nowhere();
    let receiver_id = [9; 16];
    let mut link = dial_as_member(me, receiver_id, receiver).await;

    // Handed to the receiver (generation 0 -> transfer 1), whose COPY_ACK has not come:
    // the receiver then claims, under 1, a copy of generation 0 that an earlier process
    // at this node's address wrote.
    let (_, _, id) = create_mine(node.client_addr()).await;
    let transfer = take_handover(me, receiver_id, receiver, id).await;
    assert_eq!(transfer, 1);
    let of_earlier_process = PeerMessage::ReplicateClaim {
        generation: 1,
        base: ClaimBase {
            owner: me,
            generation: 0,
            writer: writer_tag([5; 16]),
        },
        record: record_with_cart(id, b"rival"),
    };
    assert_eq!(
        ask(&mut link, 1, of_earlier_process).await,
        PeerMessage::Moved {
            session_id: id,
            owner: me
        },
        "the receiver's claim of another copy is not the copy handed there: refused, naming this node"
    );

    // The receiver placing the copy it was handed (a plain REPLICATE) is taken, as before.
    let (_, _, handed) = create_mine(node.client_addr()).await;
    assert_eq!(take_handover(me, receiver_id, receiver, handed).await, 1);
    let placing = PeerMessage::Replicate {
        generation: 1,
        record: record_with_cart(handed, b"mine"),
    };
    assert_eq!(
        ask(&mut link, 2, placing).await,
        PeerMessage::Ok,
        "the handed copy, placed"
    );
    stop(vec![node]).await;
}
