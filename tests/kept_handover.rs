//! A giver keeps its handed copy until the COPY_ACK (protocol.md 11.4): over real sockets,
//! a receiver that installed the copy and asks for the session again (its COPY names the
//! handover's transfer) is answered MOVED to itself, and the giver keeps its copy, so a new
//! process at the receiver's address, which lost the receiver's memory, takes it over
//! again (PROMOTE naming its own address as the failed owner). Ended at that second COPY,
//! the handover left no copy anywhere once the receiver, which held its ACK back and had
//! handed the session on with the COPY_DATA lost, crashed (simulation seed 10938 with
//! crashes). The members are fake peers that complete the real handshake; the receiver's
//! two processes are the test itself, dialling the node's peer port.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;

use common::member::{ask, dial_as_member, empty_member_answer};
use common::*;
use sessync_proto::PeerMessage;

/// The receiver installed the handed copy and asked again naming its transfer; its new
/// process gets the same copy under the same transfer. Checked: without the rule, the
/// node answers the new process MOVED to the receiver's address (it had ended the
/// handover), and the session is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handed_copy_is_kept_until_its_ack() {
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
