//! A giver keeps its handed copy until the COPY_ACK (protocol.md 11.4): over real sockets,
//! a receiver that installed the copy and asks for the session again (its COPY names the
//! handover's transfer) is answered MOVED to itself, and the giver keeps its copy, so a new
//! process at the receiver's address, which lost the receiver's memory, takes it over
//! again (PROMOTE naming its own address as the failed owner). Ended at that second COPY,
//! the handover left no copy anywhere once the receiver, which held its ACK back and had
//! handed the session on with the COPY_DATA lost, crashed (simulation seed 10938 with
//! crashes). The members are fake peers that complete the real handshake; the receiver's
//! two processes are the test itself, dialling the node's peer port.
//! A new process that knows the handover's generation or a newer one (PROMOTE's last
//! transfer, which a node takes from the client's token when its own memory has less) is
//! not re-handed the copy: the receiver's earlier process took it over, and what it
//! acknowledged went on from there (simulation seed 33331 with crashes).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use common::member::{ask, dial_as_member, empty_member_answer, MemberLink};
use common::*;
use sessync_proto::{PeerMessage, SessionId};
use tokio::time::timeout;

/// A node (`--replicas 1`, beside a fake holder and a fake receiver) that created a
/// session and handed it to the receiver's process (node id 8, which asked with COPY on
/// the link returned): the node, the session, the receiver's address, that link and the
/// handover's transfer.
async fn handed_to_receiver() -> (
    sessync_server::NodeHandle,
    SessionId,
    std::net::SocketAddr,
    MemberLink,
    u64,
) {
    let holder = scripted_peer([7; 16], Arc::new(|m| Some(empty_member_answer(m)))).await;
    let receiver = scripted_peer([8; 16], Arc::new(|m| Some(empty_member_answer(m)))).await;
    let node = replicating_node_beside_fakes(vec![holder, receiver]).await;
    let (_c, _s, id) = create_mine(node.client_addr()).await;
    let mut first = dial_as_member(node.peer_addr(), [8; 16], receiver).await;
    let copy = PeerMessage::Copy {
        session_id: id,
        last_transfer: 0,
    };
    let PeerMessage::CopyData { transfer, .. } = ask(&mut first, 1, copy).await else {
        panic!("the node hands the session over");
    };
    (node, id, receiver, first, transfer)
}

/// The receiver installed the handed copy and asked again naming its transfer; its new
/// process gets the same copy under the same transfer. Checked: without the rule, the
/// node answers the new process MOVED to the receiver's address (it had ended the
/// handover), and the session is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handed_copy_is_kept_until_its_ack() {
    let (node, id, receiver, mut first, transfer) = handed_to_receiver().await;
    let again = PeerMessage::Copy {
        session_id: id,
        last_transfer: transfer,
    };
    assert_eq!(
        ask(&mut first, 2, again).await,
        PeerMessage::Moved {
            session_id: id,
            owner: receiver
        },
        "the receiver that installed the copy is pointed at itself, never sent it again"
    );

    let mut restarted = dial_as_member(node.peer_addr(), [9; 16], receiver).await;
    let promote = PeerMessage::Promote {
        session_id: id,
        last_transfer: 0,
        failed_owner: receiver,
    };
    match ask(&mut restarted, 1, promote).await {
        PeerMessage::CopyData {
            transfer: again,
            record,
            ..
        } => {
            assert_eq!(again, transfer, "the same handover's generation");
            let cart = record.attributes.iter().find(|(k, _)| *k == "cart");
            assert_eq!(cart, Some(("cart", &b"mine"[..])), "the session's data");
        }
        other => panic!("the node kept no copy for the receiver's new process: {other:?}"),
    }
    stop(vec![node]).await;
}

/// A new process at the receiver's address whose PROMOTE names the handover's transfer is
/// answered MOVED to that address, never sent the stale copy. Checked: without the rule,
/// the node re-hands its copy (COPY_DATA).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_process_that_knows_the_handovers_generation_is_not_rehanded_the_copy() {
    let (node, id, receiver, _first, transfer) = handed_to_receiver().await;
    let mut restarted = dial_as_member(node.peer_addr(), [9; 16], receiver).await;
    let promote = PeerMessage::Promote {
        session_id: id,
        last_transfer: transfer,
        failed_owner: receiver,
    };
    assert_eq!(
        ask(&mut restarted, 1, promote).await,
        PeerMessage::Moved {
            session_id: id,
            owner: receiver
        },
        "the copy the receiver's earlier process took over is not handed out again"
    );
    stop(vec![node]).await;
}

/// A node that lost a session (its token names the node itself, under generation 9)
/// asks the token's backup with PROMOTE naming generation 9 as its last transfer: its own
/// memory (a new process) knows none. Checked: without the rule, the PROMOTE says 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_promote_names_the_generation_of_the_clients_token() {
    const TOKEN_GENERATION: u64 = 9;
    let said = Arc::new(AtomicU64::new(u64::MAX));
    let seen = said.clone();
    let backup = scripted_peer(
        [7; 16],
        Arc::new(move |m| match m {
            PeerMessage::Promote {
                session_id,
                last_transfer,
                ..
            } => {
                seen.store(*last_transfer, Ordering::SeqCst);
                Some(PeerMessage::NotFound {
                    session_id: *session_id,
                })
            }
            other => Some(empty_member_answer(other)),
        }),
    )
    .await;
    let node = replicating_node_beside_fakes(vec![backup]).await;
    let id = SessionId::random();
    let c = client(node.client_addr()).await;
    let token = token_for(id, TOKEN_GENERATION, node.peer_addr(), vec![backup]);
    let got = timeout(WAIT, c.get(&token)).await.expect("the GET must end");
    assert!(got.is_err(), "nobody has the session: {got:?}");
    assert_eq!(
        said.load(Ordering::SeqCst),
        TOKEN_GENERATION,
        "the PROMOTE's last transfer is the token's generation"
    );
    stop(vec![node]).await;
}
