//! A holder refusing a copy in a rival's name (protocol.md 12.4): over real sockets, a
//! node that owns a session, and acknowledged a write on it, keeps it when its holder
//! refuses the next REPLICATE naming another node that owns a copy of the very same
//! generation. Such a holder restarted since it confirmed this node's copy (it forgot
//! it) and took the rival's claim; the refusal is no evidence that the rival won. The
//! giver, the holder and the rival are fake peers that complete the real handshake.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use common::*;
use sessync_proto::{ErrorCode, ErrorReply, PeerMessage, Role};
use tokio::time::timeout;

/// The generation under which the giver hands the session to the node, and which the
/// rival claims too.
const GENERATION: u64 = 5;

/// The holder and the rival, known once both listen.
#[derive(Default)]
struct Members {
    /// The holder (node id 7): confirms the node's copies until `restarted`.
    holder: OnceLock<SocketAddr>,
    /// The rival (node id 8): never a holder of the node's copy; after `restarted` it
    /// owns its own claim of [`GENERATION`] (`cart` = `rival`).
    rival: OnceLock<SocketAddr>,
    /// The holder has restarted and holds the rival's copy instead of the node's.
    restarted: AtomicBool,
}

impl Members {
    fn holder_answers(&self, m: &PeerMessage) -> Option<PeerMessage> {
        let rival = *self.rival.get().expect("both members listen");
        let restarted = self.restarted.load(Ordering::SeqCst);
        Some(match m {
            PeerMessage::Replicate { record, .. } if restarted => PeerMessage::Moved {
                session_id: record.id,
                owner: rival,
            },
            PeerMessage::Locate { session_id } if restarted => located_backup(*session_id, rival, GENERATION),
            PeerMessage::Locate { session_id } => PeerMessage::NotFound {
                session_id: *session_id,
            },
            PeerMessage::Copy { session_id, .. } | PeerMessage::Promote { session_id, .. } => {
                PeerMessage::Moved {
                    session_id: *session_id,
                    owner: rival,
                }
            }
            _ => PeerMessage::Ok,
        })
    }

    fn rival_answers(&self, m: &PeerMessage) -> Option<PeerMessage> {
        let rival = *self.rival.get().expect("both members listen");
        if !self.restarted.load(Ordering::SeqCst) {
            // Takes no copy (the node's copy stays on the holder alone) and knows nothing.
            return Some(match m {
                PeerMessage::Replicate { .. } => {
                    PeerMessage::Error(ErrorReply::new(ErrorCode::Capacity, "full"))
                }
                PeerMessage::Locate { session_id }
                | PeerMessage::Copy { session_id, .. }
                | PeerMessage::Promote { session_id, .. } => PeerMessage::NotFound {
                    session_id: *session_id,
                },
                _ => PeerMessage::Ok,
            });
        }
        Some(match m {
            PeerMessage::Locate { session_id } => PeerMessage::Located {
                session_id: *session_id,
                role: Role::Owner,
                addr: rival,
                generation: Some(GENERATION),
            },
            PeerMessage::Replicate { record, .. } => PeerMessage::Moved {
                session_id: record.id,
                owner: rival,
            },
            PeerMessage::Copy { session_id, .. } | PeerMessage::Promote { session_id, .. } => {
                PeerMessage::CopyData {
                    transfer: GENERATION + 1,
                    holders: Vec::new(),
                    record: record_with_cart(*session_id, b"rival"),
                }
            }
            _ => PeerMessage::Ok,
        })
    }
}

/// The node got the session from a giver at [`GENERATION`], placed it on the holder and
/// acknowledged `cart` = `mine`; then the holder restarted and took the rival's claim of
/// the same generation. The node's next write is refused there in the rival's name: the
/// node keeps the session (the write is not acknowledged), and a read is not served from
/// the rival's copy, which lacks the acknowledged write. Simulation seed 29620 with
/// crashes: the node gave up on such a refusal, the rival's claim lived on, and the
/// append the node had acknowledged was lost. Checked: without the rule (in the round and
/// in the survey that follows it), the node gives the session up and the read fails
/// (TOO_MANY_HOPS: the node points at the rival, which points back).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusal_in_the_name_of_a_rival_of_the_same_generation_does_not_give_an_acknowledged_copy_up() {
    init_sim_log();
    let members = Arc::new(Members::default());
    let (holder, rival) = scripted_pair(&members, Members::holder_answers, Members::rival_answers).await;
    members.holder.set(holder).unwrap();
    members.rival.set(rival).unwrap();
    let giver = scripted_giver([9; 16], GENERATION, vec![holder]).await;
    let node = replicating_node_with(
        vec![holder, rival, giver],
        Duration::from_millis(300),
        Duration::from_millis(100),
    )
    .await;
    let c = client(node.client_addr()).await;
    let id = sessync_proto::SessionId::random();
    let token = token_for(id, GENERATION - 1, giver, vec![holder]);
    let s = timeout(WAIT, c.get(&token))
        .await
        .expect("the GET must end")
        .expect("the session is moved to the node");
    let mine = timeout(WAIT, c.set(&s.token).put("cart", "mine").send())
        .await
        .expect("the SET must end")
        .expect("the write is acknowledged: the holder confirmed it");
    members.restarted.store(true, Ordering::SeqCst);
    let refused = timeout(WAIT, c.set(&mine.token).put("cart", "later").send())
        .await
        .expect("the SET must end");
    assert!(
        refused.is_err(),
        "a write no holder confirmed was acknowledged: {refused:?}"
    );
    let read = timeout(WAIT, c.get(&mine.token))
        .await
        .expect("the GET must end")
        .expect("the node still owns the session");
    assert_ne!(
        cart(&read),
        Some(&b"rival"[..]),
        "served from the rival's copy, which lacks the acknowledged write"
    );
    assert!(
        matches!(cart(&read), Some(b"mine" | b"later")),
        "served neither the acknowledged write nor the later one: {:?}",
        read.attributes
    );
    stop(vec![node]).await;
}
