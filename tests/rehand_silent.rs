//! Re-handing a copy to the restarted receiver (protocol.md 17.3): over real sockets, a
//! node whose earlier process received a session (the giver still hands it over: it never
//! heard that process's COPY_ACK) takes the giver's copy back only when every other
//! member answered its lookup. The earlier process may have installed the copy, placed
//! it on another member and acknowledged writes on it; a member that does not answer may
//! hold exactly that. The giver and the other member are fake peers that complete the
//! real handshake.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use common::member::{empty_member_answer, giver_handing_to};
use common::*;
use sessync_proto::{PeerMessage, SessionId};
use tokio::time::timeout;

/// The handover's generation: the giver handed its copy to the node's address under it.
const HANDED: u64 = 7;

/// The two fake members.
#[derive(Default)]
struct Members {
    /// The node's peer address, known once it has started.
    node: OnceLock<SocketAddr>,
    /// Whether the other member answers lookups (it knows nothing of the session).
    other_answers: AtomicBool,
    /// The giver was asked to hand its copy on (PROMOTE naming the node as failed).
    rehanded: AtomicBool,
}

impl Members {
    /// Still handing the session (`cart` = `old`) to the node's address at [`HANDED`].
    fn giver_answers(&self, m: &PeerMessage) -> Option<PeerMessage> {
        let node = *self.node.get().expect("the node has started");
        Some(giver_handing_to(
            node,
            m,
            HANDED - 1,
            HANDED,
            b"old",
            &self.rehanded,
        ))
    }

    /// Silent (a paused process, a cut link) unless `other_answers`; then it holds nothing.
    fn other_answers(&self, m: &PeerMessage) -> Option<PeerMessage> {
        if !self.other_answers.load(Ordering::SeqCst) {
            return None;
        }
        Some(empty_member_answer(m))
    }
}

/// A node (new process) asked for a session whose token names the node's own address,
/// with the other member silent and the giver still handing the session to this address.
/// Returns the GET's outcome and whether the giver was asked to hand its copy on.
async fn get_with_other_member(answers: bool) -> (Result<sessync_client::Session, String>, bool) {
    let members = Arc::new(Members::default());
    members.other_answers.store(answers, Ordering::SeqCst);
    let (giver, other) = scripted_pair(&members, Members::giver_answers, Members::other_answers).await;
    let node = replicating_node_with(
        vec![giver, other],
        Duration::from_millis(300),
        Duration::from_millis(100),
    )
    .await;
    members.node.set(node.peer_addr()).unwrap();
    let c = client(node.client_addr()).await;
    let id = SessionId::random();
    // The earlier process's token: it owned the session at HANDED, its copy on `other`.
    let token = token_for(id, HANDED, node.peer_addr(), vec![other]);
    let got = timeout(WAIT, c.get(&token))
        .await
        .expect("the GET must end")
        .map_err(|e| e.to_string());
    stop(vec![node]).await;
    (got, members.rehanded.load(Ordering::SeqCst))
}

/// The other member does not answer: the giver's copy is not taken back, and the GET is
/// not served from it. Simulation seed 30417 with crashes: the earlier process had placed
/// the copy on a paused member only and acknowledged two appends; the new process took
/// the giver's copy back and the appends were gone. Checked: without the rule, the giver
/// is asked and the GET answers `old`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_is_not_taken_back_for_a_restarted_receiver_while_a_member_is_silent() {
    let (got, rehanded) = get_with_other_member(false).await;
    assert!(
        !rehanded,
        "the giver's copy was taken back while a member was silent"
    );
    assert!(got.is_err(), "served from the giver's older copy: {got:?}");
}

/// The same with every member answering, none holding anything: the giver hands its copy
/// on to the new process, which serves it (the rule holds only while a member is silent).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_is_taken_back_for_a_restarted_receiver_once_every_member_answered() {
    let (got, rehanded) = get_with_other_member(true).await;
    assert!(rehanded, "the giver was not asked to hand its copy on");
    let s = got.expect("the session is served");
    assert_served_with_cart(&s, b"old", "the giver's copy");
}
