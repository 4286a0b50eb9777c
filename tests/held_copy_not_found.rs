//! "Not found" is never the answer while the node asked holds a backup copy of the session
//! (protocol.md 17.3, step 3): over real sockets, a node holding an earlier owner's backup
//! copy follows that owner's pointer to the new owner, which answers NOT_FOUND (it is
//! placing the copy it took over, and has no entry until it installs it), and every member
//! has been asked: the request fails retryably, and the client's retry is served once the
//! new owner installed its copy. Answered SESSION_NOT_FOUND, a live session was reported
//! gone (simulation seed 24348 with crashes: the new owner's copy reached the asking node
//! while its fetch's chain was under way). The two other members are fake peers that
//! complete the real handshake; the earlier owner's REPLICATE is the test itself, dialling
//! the node's peer port as that member.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use common::member::{ask, dial_as_member};
use common::*;
use sessync_proto::{ErrorCode, PeerMessage, Role};
use tokio::time::timeout;

/// The generation of the owner's copy placed at the node.
const PLACED: u64 = 1;

/// The two fake members.
#[derive(Default)]
struct Members {
    /// The new owner's address, known once it listens.
    owner: OnceLock<SocketAddr>,
    /// Whether the new owner has installed its copy (it answers COPY with it and LOCATE
    /// as its owner) or is still placing it (NOT_FOUND to both: no entry yet).
    installed: AtomicBool,
}

impl Members {
    /// The earlier owner, whose backup copy the node holds: it handed the session on to
    /// the new owner, and points there.
    fn earlier_answers(&self, m: &PeerMessage) -> Option<PeerMessage> {
        let owner = *self.owner.get().expect("the owner listens");
        Some(match m {
            PeerMessage::Locate { session_id } => PeerMessage::Located {
                session_id: *session_id,
                role: Role::HandedOver,
                addr: owner,
                generation: Some(PLACED),
            },
            PeerMessage::Copy { session_id, .. } | PeerMessage::Promote { session_id, .. } => {
                PeerMessage::Moved {
                    session_id: *session_id,
                    owner,
                }
            }
            _ => PeerMessage::Ok,
        })
    }

    /// The new owner: placing its copy until `installed`, then owning it.
    fn owner_answers(&self, m: &PeerMessage) -> Option<PeerMessage> {
        let owner = *self.owner.get().expect("the owner listens");
        let installed = self.installed.load(Ordering::SeqCst);
        Some(match m {
            PeerMessage::Locate { session_id } if installed => PeerMessage::Located {
                session_id: *session_id,
                role: Role::Owner,
                addr: owner,
                generation: Some(PLACED + 1),
            },
            PeerMessage::Copy { session_id, .. } if installed => PeerMessage::CopyData {
                transfer: PLACED + 2,
                holders: Vec::new(),
                record: record_with_cart(*session_id, b"placed"),
            },
            PeerMessage::Locate { session_id }
            | PeerMessage::Copy { session_id, .. }
            | PeerMessage::Promote { session_id, .. } => PeerMessage::NotFound {
                session_id: *session_id,
            },
            _ => PeerMessage::Ok,
        })
    }
}

/// The node holds the earlier owner's backup copy; a GET follows that owner's pointer to
/// the new owner, still placing its copy: the GET fails retryably (OWNER_UNREACHABLE),
/// not SESSION_NOT_FOUND, and once the new owner installed its copy the retry is served
/// from it. Checked: without the rule, the first GET is answered SESSION_NOT_FOUND.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_holding_a_backup_copy_does_not_answer_not_found() {
    init_sim_log();
    let members = Arc::new(Members::default());
    let (earlier, owner) = scripted_pair(&members, Members::earlier_answers, Members::owner_answers).await;
    members.owner.set(owner).unwrap();
    let node = replicating_node_beside_fakes(vec![earlier, owner]).await;
    let id = sessync_proto::SessionId::random();

    // The earlier owner placed its copy at the node (its scripted process id, [7; 16]).
    let mut link = dial_as_member(node.peer_addr(), [7; 16], earlier).await;
    let replicate = PeerMessage::Replicate {
        generation: PLACED,
        record: record_with_cart(id, b"placed"),
    };
    assert_eq!(
        ask(&mut link, 1, replicate).await,
        PeerMessage::Ok,
        "the copy is placed"
    );

    let c = client(node.client_addr()).await;
    let token = token_for(id, PLACED, earlier, Vec::new());
    let first = timeout(WAIT, c.get(&token)).await.expect("the GET must end");
    let err = first.expect_err("the owner has not installed its copy yet");
    assert_eq!(err.code(), Some(ErrorCode::OwnerUnreachable), "{err}");

    members.installed.store(true, Ordering::SeqCst);
    let s = timeout(WAIT, c.get(&token))
        .await
        .expect("the GET must end")
        .expect("the retry is served");
    assert_served_with_cart(&s, b"placed", "the owner's copy");
    stop(vec![node]).await;
}
