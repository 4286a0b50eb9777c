//! Re-handing a copy to a restarted receiver that holds an older copy (protocol.md 17.3):
//! over real sockets, a node whose earlier process was being handed a session, and whose
//! new process holds only an older backup copy of another owner's, has the giver hand its
//! copy again when every member answered and the giver's generation is the newest any of
//! them holds. Taking the older copies over first followed them back to the giver, which
//! points at the node, in a loop (simulation seeds 4191 and 30859 with crashes:
//! TOO_MANY_HOPS for good after the heal). The giver and the other owner are fake peers
//! that complete the real handshake.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use common::member::{dial_as_member, giver_handing_to, read_reply};
use common::*;
use futures_util::SinkExt;
use sessync_proto::{PeerMessage, Role, SessionId};
use tokio::time::timeout;

/// The handover's generation: the giver handed its copy to the node's address under it.
const HANDED: u64 = 7;

/// The two fake members.
#[derive(Default)]
struct Members {
    /// The node's peer address, known once it has started; the giver's, once it listens.
    node: OnceLock<SocketAddr>,
    giver: OnceLock<SocketAddr>,
    /// The giver was asked to hand its copy on (PROMOTE naming the node as failed).
    rehanded: AtomicBool,
}

impl Members {
    /// Still handing the session (`cart` = `newest`) to the node's address at [`HANDED`].
    fn giver_answers(&self, m: &PeerMessage) -> Option<PeerMessage> {
        let node = *self.node.get().expect("the node has started");
        Some(giver_handing_to(
            node,
            m,
            HANDED,
            HANDED,
            b"newest",
            &self.rehanded,
        ))
    }

    /// The other owner: it owned an older generation and handed the session on to the
    /// giver since.
    fn other_answers(&self, m: &PeerMessage) -> Option<PeerMessage> {
        let giver = *self.giver.get().expect("the giver listens");
        Some(match m {
            PeerMessage::Locate { session_id } => PeerMessage::Located {
                session_id: *session_id,
                role: Role::HandedOver,
                addr: giver,
                generation: Some(HANDED - 1),
            },
            PeerMessage::Copy { session_id, .. } | PeerMessage::Promote { session_id, .. } => {
                PeerMessage::Moved {
                    session_id: *session_id,
                    owner: giver,
                }
            }
            _ => PeerMessage::Ok,
        })
    }
}

/// The node (a new process) holds the other owner's backup copy of an older generation
/// (`cart` = `older`); the giver still hands the session to the node's address. A GET with
/// the earlier process's token is served from the giver's copy, handed again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_newest_copy_is_handed_again_over_an_older_copy_held_here() {
    let members = Arc::new(Members::default());
    let (giver, other) = scripted_pair(&members, Members::giver_answers, Members::other_answers).await;
    members.giver.set(giver).unwrap();
    let node = replicating_node_beside_fakes(vec![giver, other]).await;
    members.node.set(node.peer_addr()).unwrap();
    let id = SessionId::random();

    let mut link = dial_as_member(node.peer_addr(), [8; 16], other).await;
    link.send((
        3,
        PeerMessage::Replicate {
            generation: HANDED - 2,
            record: record_with_cart(id, b"older"),
        },
    ))
    .await
    .unwrap();
    assert_eq!(
        read_reply(&mut link).await,
        PeerMessage::Ok,
        "the node keeps the other owner's copy"
    );
    drop(link);

    let c = client(node.client_addr()).await;
    let token = token_for(id, HANDED, node.peer_addr(), vec![other]);
    let got = timeout(WAIT, c.get(&token)).await.expect("the GET must end");
    let rehanded = members.rehanded.load(Ordering::SeqCst);
    stop(vec![node]).await;
    assert!(rehanded, "the giver was not asked to hand its copy again");
    let s = got.expect("the session is served");
    assert_served_with_cart(&s, b"newest", "the giver's copy");
}
