//! Requests of a process that another one replaced at its address since (protocol.md
//! 12.2 step 7): over real sockets, a crashed process's messages that its link delivers
//! late (a paused receiver, a delay) do not undo what the live processes did. Its
//! REPLICATE does not supersede another owner's copy (simulation seed 11377 with crashes:
//! such a REPLICATE, read by a backup after its pause, replaced the copy holding a live
//! owner's acknowledged append, and the copy it left was promoted without it), but is
//! stored where it supersedes nothing (seed 26746: it was all that was left of the
//! session); its COPY, PROMOTE and COPY_REFUSED are refused (seed 3301: a late
//! COPY_REFUSED made the giver retire the only copy). And the new process's own REPLICATE
//! replaces the earlier process's copy of the same generation, whatever the versions (seed
//! 26289: taken for "already held", an acknowledged append was lost). The members are the test, dialling
//! with the cluster secret and completing the real handshake.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;

use common::member::{ask, dial_as_member, MemberLink};
use common::*;
use sessync_proto::{ErrorCode, PeerMessage, Role, SessionId};
use tokio::time::timeout;

/// The crashed process at O's address, and the one that replaced it.
const O_BEFORE: [u8; 16] = [3; 16];
const O_NOW: [u8; 16] = [4; 16];
/// The live owner whose copy the node holds.
const P: [u8; 16] = [5; 16];

/// REPLICATE{generation, record with `cart` = `value`} on `link`; the answer.
async fn replicate(
    link: &mut MemberLink,
    request_id: u64,
    id: SessionId,
    generation: u64,
    value: &'static [u8],
) -> PeerMessage {
    let record = record_with_cart(id, value);
    ask(link, request_id, PeerMessage::Replicate { generation, record }).await
}

/// What the node answers to LOCATE of `id`: (role, the owner its copy is from, generation).
async fn located(link: &mut MemberLink, id: SessionId) -> (Role, SocketAddr, Option<u64>) {
    match ask(link, 90, PeerMessage::Locate { session_id: id }).await {
        PeerMessage::Located {
            role,
            addr,
            generation,
            ..
        } => (role, addr, generation),
        other => panic!("LOCATE answered {other:?}"),
    }
}

/// A node that owns a session it created (`cart` = `mine`; a fake holder confirms every
/// copy), and links to it from O's old process and from the new one that replaced it:
/// the node, its client, the session, its id, and the two links.
async fn owner_beside_a_replaced_process() -> (
    sessync_server::NodeHandle,
    sessync_client::Client,
    sessync_client::Session,
    SessionId,
    MemberLink,
    MemberLink,
) {
    let o = nowhere();
    let holder = scripted_peer(
        [7; 16],
        std::sync::Arc::new(|_: &PeerMessage| Some(PeerMessage::Ok)),
    )
    .await;
    let node = replicating_node_beside_fakes(vec![holder]).await;
    let (c, s, id) = create_mine(node.client_addr()).await;
    let o_before = dial_as_member(node.peer_addr(), O_BEFORE, o).await;
    let o_now = dial_as_member(node.peer_addr(), O_NOW, o).await;
    (node, c, s, id, o_before, o_now)
}

fn assert_refused(answer: PeerMessage, what: &str) {
    match answer {
        PeerMessage::Error(e) => assert_eq!(e.code, ErrorCode::BackupUnavailable, "{what}: {e:?}"),
        other => panic!("{what} of a replaced process was answered {other:?}"),
    }
}

/// The node holds P's copy of generation 2 (P claimed the session from O's lineage) and
/// has seen O's new process; O's old process's REPLICATE of generation 3, read only now,
/// is answered MOVED{P} and P's copy stays. The new process at O's address is not
/// refused: its own REPLICATE of generation 3 is stored.
/// Checked: without the rule, the old process's REPLICATE is answered OK and its copy
/// replaces P's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replaced_process_late_replicate_does_not_supersede_a_live_owner_copy() {
    let (o, p) = (nowhere(), nowhere());
    let node = replicating_node_beside_fakes(vec![o, p]).await;
    let id = SessionId::random();

    // O's old process has a link open; then O restarts, and its new process dials too.
    let mut o_before = dial_as_member(node.peer_addr(), O_BEFORE, o).await;
    let mut o_now = dial_as_member(node.peer_addr(), O_NOW, o).await;
    let mut p_link = dial_as_member(node.peer_addr(), P, p).await;
    assert_eq!(
        replicate(&mut p_link, 3, id, 2, b"p-acknowledged").await,
        PeerMessage::Ok
    );

    assert_eq!(
        replicate(&mut o_before, 4, id, 3, b"o-crashed").await,
        PeerMessage::Moved {
            session_id: id,
            owner: p
        },
        "a late REPLICATE of a replaced process over a live owner's copy"
    );
    assert_eq!(
        located(&mut p_link, id).await,
        (Role::Backup, p, Some(2)),
        "the live owner's copy is kept"
    );

    assert_eq!(replicate(&mut o_now, 5, id, 3, b"o-now").await, PeerMessage::Ok);
    assert_eq!(
        located(&mut p_link, id).await,
        (Role::Backup, o, Some(3)),
        "the process now at O's address is a member like any other"
    );
    stop(vec![node]).await;
}

/// A process already replaced that opens a link late (its handshake delayed) is not taken
/// for the one now at its address: its REPLICATE over P's copy is refused, and the new
/// process's stored. Checked: without the rule (a late handshake taken for the current
/// process), the new process's REPLICATE is refused instead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replaced_process_dialling_late_is_not_taken_for_the_current_one() {
    let (o, p) = (nowhere(), nowhere());
    let node = replicating_node_beside_fakes(vec![o, p]).await;
    let id = SessionId::random();
    let mut p_link = dial_as_member(node.peer_addr(), P, p).await;
    assert_eq!(
        replicate(&mut p_link, 3, id, 1, b"p-acknowledged").await,
        PeerMessage::Ok
    );

    drop(dial_as_member(node.peer_addr(), O_BEFORE, o).await);
    let mut o_now = dial_as_member(node.peer_addr(), O_NOW, o).await;
    let mut o_late = dial_as_member(node.peer_addr(), O_BEFORE, o).await;
    assert!(
        matches!(replicate(&mut o_late, 4, id, 2, b"o-crashed").await, PeerMessage::Moved { owner, .. } if owner == p),
        "the replaced process's REPLICATE is refused over P's copy"
    );
    assert_eq!(replicate(&mut o_now, 5, id, 2, b"o-now").await, PeerMessage::Ok);
    assert_eq!(located(&mut p_link, id).await, (Role::Backup, o, Some(2)));
    stop(vec![node]).await;
}

/// Where it supersedes nothing (no copy held, or only O's own older one), a replaced
/// process's late REPLICATE is stored: it may be all that is left of the session.
/// Checked: with a blanket refusal, this copy was refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replaced_process_late_replicate_is_kept_where_it_supersedes_nothing() {
    let o = nowhere();
    let node = replicating_node_beside_fakes(vec![o]).await;
    let id = SessionId::random();
    let mut o_before = dial_as_member(node.peer_addr(), O_BEFORE, o).await;
    assert_eq!(
        replicate(&mut o_before, 3, id, 1, b"o-older").await,
        PeerMessage::Ok
    );
    let mut o_now = dial_as_member(node.peer_addr(), O_NOW, o).await;
    assert_eq!(
        replicate(&mut o_before, 4, id, 2, b"o-last").await,
        PeerMessage::Ok
    );
    assert_eq!(located(&mut o_now, id).await, (Role::Backup, o, Some(2)));
    stop(vec![node]).await;
}

/// The node owns a session; O's old process asks for it with COPY after O's new process
/// dialled: refused, and the session is still served at the node (not handed to a
/// process that is gone). A COPY_REFUSED of the old process for a handover to it is
/// refused too. Checked: without the rule, the COPY is answered COPY_DATA and the
/// COPY_REFUSED OK.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replaced_process_is_not_handed_the_session() {
    let (node, c, s, id, mut o_before, _o_now) = owner_beside_a_replaced_process().await;
    let copy = PeerMessage::Copy {
        session_id: id,
        last_transfer: 0,
    };
    assert_refused(ask(&mut o_before, 3, copy).await, "COPY");
    let refused = PeerMessage::CopyRefused {
        session_id: id,
        transfer: 1,
    };
    assert_refused(ask(&mut o_before, 4, refused).await, "COPY_REFUSED");
    let got = timeout(WAIT, c.get(&s.token))
        .await
        .expect("the GET must end")
        .expect("the session is served");
    assert_served_with_cart(&got, b"mine", "the node that still owns it");
    stop(vec![node]).await;
}

/// The node owns a session (its holder confirmed it); O's old process, replaced since,
/// REPLICATEs a newer generation of it, read only now: the node does not yield to it (it
/// never confirmed that copy, and O's address runs a process without it), keeps serving,
/// and still answers LOCATE as the owner (simulation seed 7096 with crashes: an owner
/// yielded to a crashed claimer's late copy, and only a stale owner was left). Checked:
/// without the rule, the REPLICATE is answered OK and the node's copy becomes O's backup.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replaced_process_late_replicate_does_not_make_the_owner_yield() {
    let (node, c, s, id, mut o_before, mut o_now) = owner_beside_a_replaced_process().await;
    let answer = replicate(&mut o_before, 3, id, 9, b"o-crashed").await;
    assert!(
        matches!(answer, PeerMessage::Moved { owner, .. } if owner == node.peer_addr()),
        "a replaced process's REPLICATE over a live copy: {answer:?}"
    );
    let (role, addr, _) = located(&mut o_now, id).await;
    assert_eq!(
        (role, addr),
        (Role::Owner, node.peer_addr()),
        "the node still owns it"
    );
    let got = timeout(WAIT, c.get(&s.token))
        .await
        .expect("the GET must end")
        .expect("the session is served");
    assert_served_with_cart(&got, b"mine", "the owner");
    stop(vec![node]).await;
}

/// The node holds a copy of generation 1 that O's earlier process placed (its version
/// counted far ahead: a claim's jump); O's new process, which took the session over from
/// another copy of the same generation, REPLICATEs its own copy of 1 with a lower
/// version. It replaces the earlier process's copy (that copy holds none of the new
/// process's writes), and a failover from O later serves the new process's state.
/// Simulation seed 26289 with crashes: answered as "already held", the new process
/// counted this node as holding its acknowledged append, and a failover here took the
/// earlier copy over without it. Checked: without the rule, the GET is served `earlier`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_process_copy_replaces_its_earlier_process_copy_of_the_same_generation() {
    let o = nowhere();
    let node = replicating_node_beside_fakes(vec![o]).await;
    let id = SessionId::random();
    // Generation 1 from each process: the earlier one's version counted far ahead.
    let replicate_at = |cart: &'static [u8], version: u64| {
        let mut record = record_with_cart(id, cart);
        record.meta.version = version;
        PeerMessage::Replicate {
            generation: 1,
            record,
        }
    };
    let mut o_before = dial_as_member(node.peer_addr(), O_BEFORE, o).await;
    assert_eq!(
        ask(&mut o_before, 3, replicate_at(b"earlier", 100)).await,
        PeerMessage::Ok
    );
    let mut o_now = dial_as_member(node.peer_addr(), O_NOW, o).await;
    assert_eq!(ask(&mut o_now, 4, replicate_at(b"now", 2)).await, PeerMessage::Ok);
    drop(o_now);
    drop(o_before);

    // O is gone (nothing listens at its address): a GET fails over to the copy here.
    let c = client(node.client_addr()).await;
    let s = timeout(WAIT, c.get(&token_for(id, 1, o, Vec::new())))
        .await
        .expect("the GET must end")
        .expect("the copy here is taken over");
    assert_served_with_cart(&s, b"now", "the new process's copy");
    stop(vec![node]).await;
}
