//! Claiming a kept copy (protocol.md 12.3 step 1): over real sockets, a node that gave a
//! session up to a newer owner F keeps its own older state below F's name. When F is gone,
//! that kept copy is claimed only while no member shows that F's lineage went on past it:
//! a member holding F's backup copy of that generation or newer keeps what F acknowledged,
//! and is asked for it instead (simulation seed 3201 with crashes: a repair claimed its
//! kept copy on an empty new process and replaced F's copy elsewhere, two acknowledged
//! appends). The three members are fake peers that complete the real handshake.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use common::member::empty_member_answer;
use common::*;
use sessync_proto::PeerMessage;
use tokio::time::timeout;

/// The generation F's lineage holds at F's holder: the one that superseded the node's 0.
const F_GENERATION: u64 = 1;

/// The fake members' shared state.
#[derive(Default)]
struct Members {
    /// F's address, known once it listens.
    newer_owner: OnceLock<SocketAddr>,
    /// Set once F's lineage has superseded the node's copy (before, every member is an
    /// ordinary holder).
    superseded: AtomicBool,
    /// Whether F's holder holds F's backup copy (`cart` = `f-lineage`), or nothing.
    holder_has_it: AtomicBool,
}

impl Members {
    fn newer_owner(&self) -> SocketAddr {
        *self.newer_owner.get().expect("F listens")
    }

    /// A holder's refusal of the node's write: F owns the session now.
    fn refused(&self, m: &PeerMessage) -> Option<PeerMessage> {
        match m {
            PeerMessage::Replicate { record, generation } if *generation < F_GENERATION => {
                Some(PeerMessage::Moved {
                    session_id: record.id,
                    owner: self.newer_owner(),
                })
            }
            _ => None,
        }
    }

    /// F: refuses the node's copy; then its new process holds nothing (it restarted).
    fn f_answers(&self, m: &PeerMessage) -> Option<PeerMessage> {
        if !self.superseded.load(Ordering::SeqCst) {
            return Some(PeerMessage::Ok);
        }
        Some(self.refused(m).unwrap_or_else(|| empty_member_answer(m)))
    }

    /// F's holder: F's backup copy of [`F_GENERATION`], handed over when F is named
    /// failed; it refuses any other owner's copy of that generation or older.
    fn holder_answers(&self, m: &PeerMessage) -> Option<PeerMessage> {
        if !self.superseded.load(Ordering::SeqCst) {
            return Some(PeerMessage::Ok);
        }
        if let Some(refusal) = self.refused(m) {
            return Some(refusal);
        }
        let f = self.newer_owner();
        if !self.holder_has_it.load(Ordering::SeqCst) {
            return Some(empty_member_answer(m));
        }
        Some(match m {
            PeerMessage::Replicate { record, generation } if *generation <= F_GENERATION => {
                PeerMessage::Moved {
                    session_id: record.id,
                    owner: f,
                }
            }
            PeerMessage::Locate { session_id } => located_backup(*session_id, f, F_GENERATION),
            PeerMessage::Promote {
                session_id,
                failed_owner,
                ..
            } if *failed_owner == f => PeerMessage::CopyData {
                transfer: F_GENERATION + 1,
                holders: Vec::new(),
                record: record_with_cart(*session_id, b"f-lineage"),
            },
            PeerMessage::Copy { session_id, .. } | PeerMessage::Promote { session_id, .. } => {
                PeerMessage::Moved {
                    session_id: *session_id,
                    owner: f,
                }
            }
            _ => PeerMessage::Ok,
        })
    }

    /// A member whose new process holds nothing: it takes any copy.
    fn empty_answers(&self, m: &PeerMessage) -> Option<PeerMessage> {
        if !self.superseded.load(Ordering::SeqCst) {
            return Some(PeerMessage::Ok);
        }
        Some(self.refused(m).unwrap_or_else(|| empty_member_answer(m)))
    }
}

/// The node creates a session (`cart` = `mine`); its next write is refused in F's name,
/// so it gives the session up and keeps its state below F's; F restarts empty. A GET with F's
/// token, naming the empty member as F's backup, makes the node fail over from F.
/// Returns what the GET was served.
async fn get_after_newer_owner_gone(holder_has_it: bool) -> sessync_client::Session {
    let members = Arc::new(Members::default());
    members.holder_has_it.store(holder_has_it, Ordering::SeqCst);
    let (f, holder) = scripted_pair(&members, Members::f_answers, Members::holder_answers).await;
    members.newer_owner.set(f).unwrap();
    let empty = {
        let members = members.clone();
        scripted_peer([9; 16], Arc::new(move |m: &PeerMessage| members.empty_answers(m))).await
    };
    let node = replicating_node_beside_fakes(vec![f, holder, empty]).await;
    let (c, s, id) = create_mine(node.client_addr()).await;

    members.superseded.store(true, Ordering::SeqCst);
    assert_write_refused(&c, &s.token).await;

    let token = token_for(id, F_GENERATION, f, vec![empty]);
    let got = timeout(WAIT, c.get(&token))
        .await
        .expect("the GET must end")
        .expect("the session is served");
    stop(vec![node]).await;
    got
}

/// F's holder keeps F's newer copy: the node does not claim its kept copy, and the session
/// is served from F's lineage. Checked: without the rule, the kept copy is claimed on the
/// empty member and the GET is served `mine`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kept_copy_is_not_claimed_while_a_member_holds_the_newer_owners_lineage() {
    let s = get_after_newer_owner_gone(true).await;
    assert_served_with_cart(&s, b"f-lineage", "F's lineage at its holder");
}

/// Nothing of F's lineage anywhere: the kept copy is the last copy there is, and is
/// claimed and served. It is the node's own state, with the write its holder refused (a
/// write whose outcome its client was told is unknown may or may not be there).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kept_copy_is_claimed_when_no_member_holds_anything_newer() {
    let s = get_after_newer_owner_gone(false).await;
    assert_served_with_cart(&s, b"refused", "the kept copy");
}
