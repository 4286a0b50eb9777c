//! Re-handing a copy whose receiver holds this node's own copy one generation below the
//! handover (protocol.md 12.4, "re-hand"): over real sockets, a node handing a session to
//! a receiver that never installed it hands it to a node that fails over from that
//! receiver once the receiver answers LOCATE with a backup copy *of this node's* at the
//! generation before the handover (its copy from before the handover, or its own claim
//! kept when that claim yielded to this node). Withheld before, the copy with an
//! acknowledged append stayed stuck at the giver while another node took an older copy
//! over (simulation seed 35328 with crashes, under the read lease's refusal). A backup
//! copy of another owner's at that generation still withholds it: the receiver may have
//! installed the copy and yielded it to that owner. The receiver and the asker are fake
//! peers that complete the real handshake.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use common::member::{ask, dial_as_member, take_handover};
use common::*;
use sessync_proto::{PeerMessage, Role};

/// The two fake members: the receiver of the handover, and the member that asks for the
/// session once the receiver seems gone.
#[derive(Default)]
struct Members {
    /// The node's peer address and the asker's, known once they listen.
    node: OnceLock<SocketAddr>,
    asker: OnceLock<SocketAddr>,
    /// The generation the receiver's backup copy names in its LOCATE answer.
    held: OnceLock<u64>,
    /// Whether that copy is the node's own (else the asker's).
    copy_of_node: OnceLock<bool>,
}

impl Members {
    /// The receiver: never installed the copy; holds a backup copy (LOCATE says whose);
    /// takes REPLICATEs as a holder.
    fn receiver_answers(&self, m: &PeerMessage) -> Option<PeerMessage> {
        Some(match m {
            PeerMessage::Locate { session_id } => PeerMessage::Located {
                session_id: *session_id,
                role: Role::Backup,
                addr: if *self.copy_of_node.get()? {
                    *self.node.get()?
                } else {
                    *self.asker.get()?
                },
                generation: Some(*self.held.get()?),
            },
            _ => PeerMessage::Ok,
        })
    }

    /// The asker's listener: a holder that takes REPLICATEs.
    fn asker_answers(&self, m: &PeerMessage) -> Option<PeerMessage> {
        Some(match m {
            PeerMessage::Locate { session_id } => PeerMessage::NotFound {
                session_id: *session_id,
            },
            _ => PeerMessage::Ok,
        })
    }
}

/// A node hands a session it created to the receiver (which never acknowledges), then the
/// asker sends PROMOTE naming the receiver as failed every 50 ms for `patience`. Returns
/// whether the node handed the copy to the asker (with the created state) within it.
async fn rehanded_to_asker(copy_of_node: bool, patience: Duration) -> bool {
    let members = Arc::new(Members::default());
    let (receiver, asker) = scripted_pair(&members, Members::receiver_answers, Members::asker_answers).await;
    members.asker.set(asker).unwrap();
    members.copy_of_node.set(copy_of_node).unwrap();
    let node = replicating_node_beside_fakes(vec![receiver, asker]).await;
    members.node.set(node.peer_addr()).unwrap();
    let (_c, _s, id) = create_mine(node.client_addr()).await;
    let transfer = take_handover(node.peer_addr(), [7; 16], receiver, id).await;
    members.held.set(transfer - 1).unwrap();

    let mut link = dial_as_member(node.peer_addr(), [8; 16], asker).await;
    let promote = PeerMessage::Promote {
        session_id: id,
        last_transfer: transfer,
        failed_owner: receiver,
    };
    let until = Instant::now() + patience;
    let mut request = 10;
    let rehanded = loop {
        request += 1;
        match ask(&mut link, request, promote.clone()).await {
            PeerMessage::CopyData { record, .. } => {
                let cart = record
                    .attributes
                    .iter()
                    .find(|(k, _)| *k == "cart")
                    .map(|(_, v)| v.to_vec());
                assert_eq!(
                    cart.as_deref(),
                    Some(&b"mine"[..]),
                    "the copy handed is the node's"
                );
                break true;
            }
            PeerMessage::Moved { owner, .. } => {
                assert_eq!(owner, receiver, "withheld, it points at the receiver")
            }
            other => panic!("unexpected answer to PROMOTE: {other:?}"),
        }
        if Instant::now() >= until {
            break false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    drop(link);
    stop(vec![node]).await;
    rehanded
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_holding_the_givers_own_older_copy_never_took_the_handover() {
    assert!(
        rehanded_to_asker(true, Duration::from_secs(3)).await,
        "the copy stayed withheld although the receiver holds only the giver's own older copy"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_holding_another_owners_copy_of_that_generation_keeps_it_withheld() {
    assert!(
        !rehanded_to_asker(false, Duration::from_millis(1500)).await,
        "re-handed although the receiver may have installed the copy and yielded it to another owner"
    );
}
