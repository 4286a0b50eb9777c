//! Copies of a node's earlier process (protocol.md 12.3): over real sockets, a node whose
//! new process claims a session from its backup copy, and meets a holder that keeps a
//! newer copy naming this node's address as its owner (written by the process that ran
//! at this address before, which may have acknowledged writes on it), takes that copy
//! over with PROMOTE naming its own address as the failed owner, instead of climbing a
//! generation past it and replacing it. The holder is a fake peer that completes the real
//! handshake.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use common::raw_peer::{ask, authenticated_as};
use common::*;
use sessync_proto::{PeerMessage, SessionId};
use tokio::time::timeout;

/// The generation of the holder's copy from the node's earlier process.
const EARLIER: u64 = 19;

/// What the fake holder saw.
#[derive(Default)]
struct Holder {
    /// The node's address, known once it has started.
    node: OnceLock<SocketAddr>,
    /// A REPLICATE of a generation no newer than its copy's was taken over that copy.
    replaced: AtomicBool,
    /// A PROMOTE naming the node itself as the failed owner came.
    promoted: AtomicBool,
}

impl Holder {
    /// Answers as a node that holds a backup copy of generation [`EARLIER`] naming the node
    /// under test as its owner, with `cart` = `kept` in it.
    fn answer(&self, m: &PeerMessage) -> Option<PeerMessage> {
        let node = *self.node.get().expect("the node has started");
        Some(match m {
            PeerMessage::Replicate { generation, record } if *generation < EARLIER => PeerMessage::Moved {
                session_id: record.id,
                owner: node,
            },
            // The owner named, at the copy's generation: a real holder takes it as that
            // owner's later state, over the copy it holds.
            PeerMessage::Replicate { generation, .. } => {
                if *generation == EARLIER && !self.promoted.load(Ordering::SeqCst) {
                    self.replaced.store(true, Ordering::SeqCst);
                }
                PeerMessage::Ok
            }
            PeerMessage::Locate { session_id } => located_backup(*session_id, node, EARLIER),
            PeerMessage::Promote {
                session_id,
                failed_owner,
                ..
            } if *failed_owner == node => {
                self.promoted.store(true, Ordering::SeqCst);
                let mut record = record_with_cart(*session_id, b"kept");
                record.meta.version = 40;
                PeerMessage::CopyData {
                    transfer: EARLIER + 1,
                    holders: Vec::new(),
                    record,
                }
            }
            PeerMessage::Promote { session_id, .. } => PeerMessage::NotFound {
                session_id: *session_id,
            },
            _ => PeerMessage::Ok,
        })
    }
}

/// A node's claim of its backup copy of 16 meets a holder whose copy of 19 names the
/// node's own address: the node takes that copy over (PROMOTE naming itself as the failed
/// owner) and serves it, with what it holds; the holder's copy is never replaced by the
/// claim's older state. Simulation seed 7171 with crashes: the new process climbed to 19
/// over the old process's copy, and three acknowledged appends were gone. Checked: with
/// the rule off, the GET answers without `cart` and the holder's copy is replaced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_takes_over_a_newer_copy_of_this_address_earlier_process() {
    let holder = Arc::new(Holder::default());
    let script = {
        let holder = holder.clone();
        move |m: &PeerMessage| holder.answer(m)
    };
    let holder_addr = scripted_peer([7; 16], Arc::new(script)).await;
    let node = replicating_node_with(
        vec![holder_addr],
        Duration::from_millis(600),
        Duration::from_millis(200),
    )
    .await;
    holder.node.set(node.peer_addr()).unwrap();
    // The failed owner: an address that refuses connections, whose copy of 16 the node
    // holds as its backup.
    let failed = nowhere();
    let id = SessionId::random();
    let mut fake_owner = authenticated_as(node.peer_addr(), failed, [5; 16]).await;
    let copy = PeerMessage::Replicate {
        generation: 16,
        record: empty_record(id, sessync_server::clock::now_ms(), 60_000),
    };
    assert_eq!(ask(&mut fake_owner, copy).await, PeerMessage::Ok);
    drop(fake_owner);
    let c = client(node.client_addr()).await;
    let token = token_for(id, 16, failed, vec![node.peer_addr(), holder_addr]);
    let s = timeout(WAIT, c.get(&token))
        .await
        .expect("the GET must end")
        .expect("the session is served");
    assert!(
        !holder.replaced.load(Ordering::SeqCst),
        "the claim's older state was placed over the holder's copy"
    );
    assert!(
        holder.promoted.load(Ordering::SeqCst),
        "the holder was asked for its copy"
    );
    assert_served_with_cart(&s, b"kept", "the holder's copy");
    stop(vec![node]).await;
}
