//! Taking back a copy handed to a receiver that restarted (protocol.md 12.4): over real
//! sockets, a node still handing a session to a member whose new process has no entry
//! takes its copy back only when every other member answered holding nothing of the
//! handover's generation or newer. The receiver's earlier process may have installed the
//! copy, placed it on another member and acknowledged writes before it died; taken back,
//! the giver's older copy went on over them (simulation seed 1710 with crashes). The
//! receiver and the other member are fake peers that complete the real handshake; the
//! receiver's COPY is the test itself, dialling the node's peer port as that member.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use common::member::{empty_member_answer, take_handover};
use common::*;
use sessync_proto::{PeerMessage, Role};
use tokio::time::timeout;

/// The generation the node hands its copy over under (its own is 0: it created it).
const HANDED: u64 = 1;

/// The two fake members.
#[derive(Default)]
struct Members {
    /// The receiver's address, known once it listens.
    receiver: OnceLock<SocketAddr>,
    /// Whether the other member holds the receiver's copy of [`HANDED`] (its earlier
    /// process placed it there) or nothing at all.
    other_holds_it: AtomicBool,
    /// Whether the receiver's new process and the other member hold only fences of each
    /// other below [`HANDED`] (each points at the other) instead.
    fenced_at_each_other: AtomicBool,
    /// The other member's address, known once it listens.
    other: OnceLock<SocketAddr>,
}

/// What a member holding only a fence of `owner` below [`HANDED`] answers: LOCATED
/// pointing at `owner` under that older generation, MOVED to `owner` for COPY and
/// PROMOTE, OK to the rest.
fn fenced_answer(owner: SocketAddr, m: &PeerMessage) -> PeerMessage {
    match m {
        PeerMessage::Locate { session_id } => PeerMessage::Located {
            session_id: *session_id,
            role: Role::HandedOver,
            addr: owner,
            generation: Some(HANDED - 1),
        },
        PeerMessage::Copy { session_id, .. } | PeerMessage::Promote { session_id, .. } => {
            PeerMessage::Moved {
                session_id: *session_id,
                owner,
            }
        }
        _ => PeerMessage::Ok,
    }
}

impl Members {
    /// The receiver's new process: nothing of the session; it takes copies as a holder.
    fn receiver_answers(&self, m: &PeerMessage) -> Option<PeerMessage> {
        if self.fenced_at_each_other.load(Ordering::SeqCst) {
            return Some(fenced_answer(*self.other.get().expect("the other listens"), m));
        }
        Some(empty_member_answer(m))
    }

    /// The other member: the receiver's backup copy (`cart` = `went-on`, an append the
    /// receiver's earlier process acknowledged), handed over when the receiver is named
    /// failed; or nothing. It takes copies as a holder.
    fn other_answers(&self, m: &PeerMessage) -> Option<PeerMessage> {
        let receiver = *self.receiver.get().expect("the receiver listens");
        let holds = self.other_holds_it.load(Ordering::SeqCst);
        if self.fenced_at_each_other.load(Ordering::SeqCst) {
            return Some(fenced_answer(receiver, m));
        }
        Some(match m {
            PeerMessage::Locate { session_id } if holds => located_backup(*session_id, receiver, HANDED),
            PeerMessage::Promote {
                session_id,
                failed_owner,
                ..
            } if holds && *failed_owner == receiver => PeerMessage::CopyData {
                transfer: HANDED + 1,
                holders: Vec::new(),
                record: record_with_cart(*session_id, b"went-on"),
            },
            PeerMessage::Copy { session_id, .. } if holds => PeerMessage::Moved {
                session_id: *session_id,
                owner: receiver,
            },
            _ => empty_member_answer(m),
        })
    }
}

/// The node creates a session (`cart` = `mine`) and hands it to the receiver, which never
/// acknowledges; a GET with the receiver's token then finds the receiver's new process
/// empty. Returns what the GET was served.
async fn get_after_receiver_restarted(other_holds_it: bool) -> sessync_client::Session {
    get_after_receiver_restarted_with(other_holds_it, false).await
}

/// [`get_after_receiver_restarted`], with the members holding only fences of each other
/// when `fenced_at_each_other`.
async fn get_after_receiver_restarted_with(
    other_holds_it: bool,
    fenced_at_each_other: bool,
) -> sessync_client::Session {
    let members = Arc::new(Members::default());
    members.other_holds_it.store(other_holds_it, Ordering::SeqCst);
    members
        .fenced_at_each_other
        .store(fenced_at_each_other, Ordering::SeqCst);
    let (receiver, other) = scripted_pair(&members, Members::receiver_answers, Members::other_answers).await;
    members.receiver.set(receiver).unwrap();
    members.other.set(other).unwrap();
    get_after_handover(receiver, other).await
}

/// A node beside the members `receiver` and `other` creates a session (`cart` = `mine`)
/// and hands it to `receiver` (the test asks COPY as that member, which never
/// acknowledges); a GET with `receiver`'s token naming `other` as its backup follows.
/// Returns what the GET was served.
async fn get_after_handover(receiver: SocketAddr, other: SocketAddr) -> sessync_client::Session {
    let node = replicating_node_beside_fakes(vec![receiver, other]).await;
    let (c, _, id) = create_mine(node.client_addr()).await;

    // The receiver's earlier process asks for the session and is handed it.
    assert_eq!(
        take_handover(node.peer_addr(), [7; 16], receiver, id).await,
        HANDED
    );
    // What the node learns of the receiver from here on is later than the handover (its
    // clock counts whole milliseconds).
    tokio::time::sleep(Duration::from_millis(5)).await;

    let token = token_for(id, HANDED, receiver, vec![other]);
    let got = timeout(WAIT, c.get(&token))
        .await
        .expect("the GET must end")
        .expect("the session is served");
    stop(vec![node]).await;
    got
}

/// Another member holds what the receiver's earlier process placed there: the node does
/// not take its older copy back, and the session is served from that member's copy.
/// Checked: without the rule, the GET is served `mine` from the copy taken back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_is_not_taken_back_when_a_member_holds_what_the_receiver_went_on_with() {
    let s = get_after_receiver_restarted(true).await;
    assert_served_with_cart(&s, b"went-on", "the receiver's lineage at the other member");
}

/// The same with the other member holding nothing: the copy is taken back and served (the
/// rule holds only while some member went on from the handover).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_is_taken_back_when_no_member_went_on_from_it() {
    let s = get_after_receiver_restarted(false).await;
    assert_served_with_cart(&s, b"mine", "the copy taken back");
}

/// The receiver's new process and the other member hold only fences of each other, older
/// than the handover: every request for the session circles between them, and the node's
/// lookup among the members finds no owner, no copy and no other handover. The node's own
/// handover to the receiver is then stuck: the node takes its copy back and serves it.
/// Simulation seed 20963 with crashes: the receiver's process died with the copy
/// installed and its COPY_ACK held back, and the session answered TOO_MANY_HOPS at every
/// node for good. Checked: without the rule, the GET is answered TOO_MANY_HOPS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_is_taken_back_when_the_members_only_point_at_each_other() {
    let s = get_after_receiver_restarted_with(false, true).await;
    assert_served_with_cart(&s, b"mine", "the copy taken back");
}

/// The receiver took the copy and its process then stopped for good: nothing listens at
/// its address (it drained and left, with the COPY its own fetch had asked for on the
/// way). It answers no LOCATE, but the refused dial says its process is gone since the
/// handover began, which tells as much as a new process with no entry: the node takes its
/// copy back once the other member holds nothing newer, and serves it. Seen in
/// tests/elastic.rs `scaling_3_to_5_to_2_by_a_dns_name_loses_nothing`: the giver kept the
/// handover for good ("may be serving it"), and the leaving node holding its backup copy
/// could not hand that copy over. Checked: without the rule, the GET is answered
/// OWNER_UNREACHABLE.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_is_taken_back_when_the_receivers_process_is_gone() {
    let other = scripted_peer([8; 16], Arc::new(|m: &PeerMessage| Some(empty_member_answer(m)))).await;
    let s = get_after_handover(nowhere(), other).await;
    assert_served_with_cart(&s, b"mine", "the copy taken back");
}

/// The same gone receiver, but the other member holds what the receiver's process went on
/// with before it stopped: the node does not take its older copy back, and the session is
/// served from that member's copy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_is_not_taken_back_from_a_gone_receiver_when_a_member_holds_what_it_went_on_with() {
    let members = Arc::new(Members::default());
    members.other_holds_it.store(true, Ordering::SeqCst);
    let receiver = nowhere();
    members.receiver.set(receiver).unwrap();
    let answering = members.clone();
    let other = scripted_peer(
        [8; 16],
        Arc::new(move |m: &PeerMessage| answering.other_answers(m)),
    )
    .await;
    members.other.set(other).unwrap();
    let s = get_after_handover(receiver, other).await;
    assert_served_with_cart(&s, b"went-on", "the receiver's lineage at the other member");
}

/// A receiver that is only silent after the handover (its process keeps its connection and
/// answers nothing: paused, or cut off after the handshake) may hold the copy and serve it: the
/// node keeps its copy handed over, and the GET is refused, retryably, rather than served
/// from a copy taken back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_is_not_taken_back_from_a_receiver_that_is_only_silent() {
    let other = scripted_peer([8; 16], Arc::new(|m: &PeerMessage| Some(empty_member_answer(m)))).await;
    let silent = Arc::new(AtomicBool::new(false));
    let silenced = silent.clone();
    let receiver = scripted_peer(
        [7; 16],
        Arc::new(move |m: &PeerMessage| (!silenced.load(Ordering::SeqCst)).then(|| empty_member_answer(m))),
    )
    .await;
    let node = replicating_node_beside_fakes(vec![receiver, other]).await;
    let (c, _, id) = create_mine(node.client_addr()).await;
    assert_eq!(
        take_handover(node.peer_addr(), [7; 16], receiver, id).await,
        HANDED
    );
    silent.store(true, Ordering::SeqCst);
    let token = token_for(id, HANDED, receiver, vec![other]);
    let got = timeout(WAIT, c.get(&token)).await.expect("the GET must end");
    assert!(
        got.is_err(),
        "served from a copy taken back from a receiver that may be serving it: {got:?}"
    );
    stop(vec![node]).await;
}
