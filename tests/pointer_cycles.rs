//! Cycles of forwarding pointers (protocol.md 17.3): over real sockets, a fetch whose
//! COPY chain runs into a cycle looks the session up among the members, also when the
//! cycle is met by the chain a failover follows (a backup asked with PROMOTE points on).
//! The members are fake peers that complete the real handshake.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use common::*;
use sessync_proto::{PeerMessage, SessionId};
use tokio::time::timeout;

/// The two fake members' addresses, known once both listen.
#[derive(Default)]
struct Members {
    /// Holds a fence of the session naming `keeper` (answers LOCATE with NOT_FOUND), and
    /// answers COPY and PROMOTE with MOVED to `keeper`.
    fenced: OnceLock<SocketAddr>,
    /// Holds a copy kept when it yielded to `fenced` (a backup naming it), and answers COPY
    /// with MOVED to `fenced`; hands the copy over under PROMOTE naming `fenced`.
    keeper: OnceLock<SocketAddr>,
    /// How many PROMOTEs naming `fenced` as the failed owner `keeper` answered.
    taken_over: AtomicUsize,
}

impl Members {
    fn fenced_answers(&self, m: &PeerMessage) -> Option<PeerMessage> {
        let keeper = *self.keeper.get().expect("both members listen");
        Some(match m {
            PeerMessage::Copy { session_id, .. } | PeerMessage::Promote { session_id, .. } => {
                PeerMessage::Moved {
                    session_id: *session_id,
                    owner: keeper,
                }
            }
            PeerMessage::Locate { session_id } => PeerMessage::NotFound {
                session_id: *session_id,
            },
            _ => PeerMessage::Ok,
        })
    }

    fn keeper_answers(&self, m: &PeerMessage) -> Option<PeerMessage> {
        let fenced = *self.fenced.get().expect("both members listen");
        Some(match m {
            PeerMessage::Copy { session_id, .. } => PeerMessage::Moved {
                session_id: *session_id,
                owner: fenced,
            },
            PeerMessage::Locate { session_id } => located_backup(*session_id, fenced, 10),
            PeerMessage::Promote {
                session_id,
                failed_owner,
                ..
            } if *failed_owner == fenced => {
                self.taken_over.fetch_add(1, Ordering::SeqCst);
                PeerMessage::CopyData {
                    transfer: 11,
                    holders: Vec::new(),
                    record: record_with_cart(*session_id, b"kept"),
                }
            }
            PeerMessage::Promote { session_id, .. } => PeerMessage::Moved {
                session_id: *session_id,
                owner: fenced,
            },
            _ => PeerMessage::Ok,
        })
    }
}

/// A request whose token names a dead owner and one backup: the backup, asked with
/// PROMOTE, points at a member whose kept copy points back at it (a fence there, a kept
/// copy here: what two claims that fenced each other leave). The failover's own COPY
/// chain runs round that cycle; the fetch then looks the session up among the members,
/// finds the kept copy, whose owner holds nothing, and takes it over: the GET is served
/// with what the copy holds. Simulation seed 2617 with crashes: every request ended
/// TOO_MANY_HOPS for good. Checked: without the failover's chain counted as asked, the
/// GET fails with TOO_MANY_HOPS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cycle_met_after_a_failover_is_looked_up_among_the_members() {
    let members = Arc::new(Members::default());
    let (fenced, keeper) = scripted_pair(&members, Members::fenced_answers, Members::keeper_answers).await;
    members.fenced.set(fenced).unwrap();
    members.keeper.set(keeper).unwrap();
    let node = replicating_node_with(
        vec![fenced, keeper],
        Duration::from_millis(300),
        config().read_lease,
    )
    .await;
    let c = client(node.client_addr()).await;
    let id = SessionId::random();
    let token = token_for(id, 9, nowhere(), vec![fenced]);
    let got = timeout(WAIT, c.get(&token)).await.expect("the GET must end");
    let s = got.expect("the kept copy is found and taken over");
    assert_eq!(members.taken_over.load(Ordering::SeqCst), 1);
    assert_served_with_cart(&s, b"kept", "the kept copy");
    stop(vec![node]).await;
}
