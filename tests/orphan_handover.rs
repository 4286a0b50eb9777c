//! A handover whose COPY_DATA found no request (its asker had given up): over real
//! sockets, the giver keeps handing its copy to that receiver, which holds at most an
//! older copy. Two rules keep that newer copy from being lost (protocol.md 12.3 step 2,
//! 12.4): the receiver does not hand its older kept copy on under PROMOTE while the giver
//! answers that it is handing the receiver a newer generation, and the giver hands its
//! copy on (PROMOTE naming the receiver) once the receiver answers with a backup copy
//! more than one generation older than the handover. Simulation seed 1216 with crashes:
//! the kept copy went on in place of the handover's copy, and an acknowledged append was
//! lost. The other members are fake peers that complete the real handshake; the test
//! speaks as one of them over an authenticated peer connection.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use common::member::{ask, dial_as_member, take_handover, MemberLink};
use common::*;
use sessync_proto::{PeerMessage, Role, SessionId};
use tokio::time::{sleep, timeout};

/// How long the node's background LOCATE is given before PROMOTE is asked again.
const ANSWERED: Duration = Duration::from_millis(300);

/// Sends PROMOTE{`id`, `last_transfer`, failed `failed`} on `link` and returns the answer.
async fn promote(
    link: &mut MemberLink,
    request: u64,
    id: SessionId,
    last_transfer: u64,
    failed: SocketAddr,
) -> PeerMessage {
    let promote = PeerMessage::Promote {
        session_id: id,
        last_transfer,
        failed_owner: failed,
    };
    ask(link, request, promote).await
}

/// PROMOTE naming `failed`, answered MOVED to `failed` (`first_moved`: what a copy handed
/// on at once would mean); then, once `failed` has been asked, the same PROMOTE again:
/// its answer.
async fn promote_twice(
    link: &mut MemberLink,
    id: SessionId,
    last_transfer: u64,
    failed: SocketAddr,
    first_moved: &str,
) -> PeerMessage {
    let first = promote(link, 3, id, last_transfer, failed).await;
    assert!(
        matches!(first, PeerMessage::Moved { owner, .. } if owner == failed),
        "{first_moved}: {first:?}"
    );
    sleep(ANSWERED).await;
    promote(link, 4, id, last_transfer, failed).await
}

/// The fake members of the kept-copy case.
#[derive(Default)]
struct KeptCase {
    /// The node's peer address, and F's.
    node: OnceLock<SocketAddr>,
    newer_owner: OnceLock<SocketAddr>,
    /// Set once F's lineage has superseded the node's copy.
    superseded: AtomicBool,
    /// The generation F answers LOCATE with: it is handing the node that generation.
    handing_at: AtomicU64,
}

impl KeptCase {
    /// A holder's refusal of the node's write in F's name, once superseded.
    fn refusal(&self, m: &PeerMessage) -> Option<PeerMessage> {
        match m {
            PeerMessage::Replicate { record, .. } if self.superseded.load(Ordering::SeqCst) => {
                Some(PeerMessage::Moved {
                    session_id: record.id,
                    owner: *self.newer_owner.get().unwrap(),
                })
            }
            _ => None,
        }
    }

    /// F: once superseded, it is handing the node a copy of `handing_at`.
    fn f_answers(&self, m: &PeerMessage) -> Option<PeerMessage> {
        if let Some(refusal) = self.refusal(m) {
            return Some(refusal);
        }
        Some(match m {
            PeerMessage::Locate { session_id } if self.superseded.load(Ordering::SeqCst) => {
                PeerMessage::Located {
                    session_id: *session_id,
                    role: Role::HandedOver,
                    addr: *self.node.get().unwrap(),
                    generation: Some(self.handing_at.load(Ordering::SeqCst)),
                }
            }
            _ => PeerMessage::Ok,
        })
    }

    /// The other member (the asker, when the test speaks for it).
    fn other_answers(&self, m: &PeerMessage) -> Option<PeerMessage> {
        Some(self.refusal(m).unwrap_or(PeerMessage::Ok))
    }
}

/// The node gives its session up to F (its write refused in F's name) and keeps its
/// state (generation 0: the kept state's generation is 1). F answers LOCATE that it is
/// handing the node generation `handing_at`. Another member asks PROMOTE naming F failed,
/// knowing a newer generation than the kept state; after F's answer it asks again.
/// Returns that second answer.
async fn promote_kept_copy(handing_at: u64) -> PeerMessage {
    let case = Arc::new(KeptCase::default());
    case.handing_at.store(handing_at, Ordering::SeqCst);
    let (f, other) = scripted_pair(&case, KeptCase::f_answers, KeptCase::other_answers).await;
    case.newer_owner.set(f).unwrap();
    let node = replicating_node_beside_fakes(vec![f, other]).await;
    case.node.set(node.peer_addr()).unwrap();
    let (c, s, id) = create_mine(node.client_addr()).await;
    case.superseded.store(true, Ordering::SeqCst);
    assert_write_refused(&c, &s.token).await;
    // The copy's read lease for F ends first (the node refuses PROMOTE meanwhile).
    sleep(ANSWERED).await;

    let mut link = dial_as_member(node.peer_addr(), [8; 16], other).await;
    let second = promote_twice(
        &mut link,
        id,
        4,
        f,
        "the kept copy was handed over before F was asked",
    )
    .await;
    stop(vec![node]).await;
    second
}

/// F is handing the node generation 3, newer than the kept state's 1: the kept copy is
/// not handed on. Checked: without the rule, F's pointer back to the node lets it go, and
/// the second PROMOTE is answered COPY_DATA.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kept_copy_is_not_handed_on_while_its_owner_hands_the_node_a_newer_one() {
    let answer = promote_kept_copy(3).await;
    assert!(
        matches!(answer, PeerMessage::Moved { .. }),
        "the kept copy was handed on while F handed the node a newer copy: {answer:?}"
    );
}

/// F points back at the node at the kept state's own generation (it holds nothing newer):
/// the kept copy is handed on (the rule holds only for a newer pointer).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kept_copy_is_handed_on_when_its_owner_points_back_no_newer() {
    let answer = promote_kept_copy(1).await;
    assert!(
        matches!(answer, PeerMessage::CopyData { .. }),
        "the kept copy was not handed on: {answer:?}"
    );
}

/// The generation the node installs the session under (from a fake giver).
const INSTALLED: u64 = 5;

/// The receiver's answer to LOCATE: a backup copy of `generation` (set per test).
#[derive(Default)]
struct RehandCase {
    giver: OnceLock<SocketAddr>,
    receivers_copy: AtomicU64,
}

impl RehandCase {
    fn receiver_answers(&self, m: &PeerMessage) -> Option<PeerMessage> {
        Some(match m {
            PeerMessage::Locate { session_id } => located_backup(
                *session_id,
                *self.giver.get().unwrap(),
                self.receivers_copy.load(Ordering::SeqCst),
            ),
            _ => PeerMessage::Ok,
        })
    }
}

/// The node installs a session at [`INSTALLED`] and hands it to the receiver (at
/// INSTALLED + 1), whose request gives up (the COPY_DATA found no request); the receiver
/// answers LOCATE with a backup copy of `receivers_copy`. Another member asks PROMOTE
/// naming the receiver failed, twice. Returns the second answer.
async fn promote_handed_copy(receivers_copy: u64) -> PeerMessage {
    let case = Arc::new(RehandCase::default());
    case.receivers_copy.store(receivers_copy, Ordering::SeqCst);
    let giver = scripted_giver([6; 16], INSTALLED, Vec::new()).await;
    case.giver.set(giver).unwrap();
    let receiver = {
        let case = case.clone();
        scripted_peer([7; 16], Arc::new(move |m: &PeerMessage| case.receiver_answers(m))).await
    };
    let node = replicating_node_beside_fakes(vec![giver, receiver]).await;
    let c = client(node.client_addr()).await;
    let id = SessionId::random();
    timeout(WAIT, c.get(&token_for(id, INSTALLED - 1, giver, Vec::new())))
        .await
        .expect("the GET must end")
        .expect("the session is copied here from the giver");

    assert_eq!(
        take_handover(node.peer_addr(), [7; 16], receiver, id).await,
        INSTALLED + 1
    );

    let mut link = dial_as_member(node.peer_addr(), [6; 16], giver).await;
    let second = promote_twice(
        &mut link,
        id,
        0,
        receiver,
        "the copy was handed on before the receiver was asked",
    )
    .await;
    stop(vec![node]).await;
    second
}

/// The receiver holds a backup copy of 3, more than one generation older than the
/// handover's 6: it never installed the copy, which is handed on. Checked: without the
/// rule, the second PROMOTE is answered MOVED to the receiver again (for good).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handover_is_handed_on_when_its_receiver_holds_only_an_older_copy() {
    let answer = promote_handed_copy(INSTALLED - 2).await;
    assert!(
        matches!(answer, PeerMessage::CopyData { .. }),
        "the handover stayed stuck at a receiver holding an older copy: {answer:?}"
    );
}

/// The receiver holds a copy of 5, one generation below the handover's: it may be its own
/// state kept after it installed the copy and yielded, so the copy is not handed on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handover_is_not_handed_on_when_its_receiver_may_have_installed_it() {
    let answer = promote_handed_copy(INSTALLED).await;
    assert!(
        matches!(answer, PeerMessage::Moved { .. }),
        "the copy was handed on though the receiver may have installed it: {answer:?}"
    );
}
