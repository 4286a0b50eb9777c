//! A claim that meets a holder handing this node a newer copy (protocol.md 12.3): over
//! real sockets, a node taking over a copy from a failed owner, whose holder refuses the
//! claim naming the node itself because that holder is handing it a copy of a newer
//! generation (the reply to the node's COPY was lost), fetches that copy instead of
//! claiming a generation higher. Climbing to the handover's generation made the holder
//! take the claim's older state for the copy it handed over (simulation seed 21549 with
//! crashes: an acknowledged append lost). The holder and the failed owner are fake peers
//! that complete the real handshake; the failed owner's REPLICATE is the test itself,
//! dialling the node's peer port as that member.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use common::member::{dial_as_member, read_reply};
use common::*;
use futures_util::SinkExt;
use sessync_proto::{PeerMessage, Role};
use tokio::time::timeout;

/// The generation the holder is handing the node a copy under.
const HANDING: u64 = 3;

/// The two fake members.
#[derive(Default)]
struct Members {
    /// The node's peer address, known once it has started.
    node: OnceLock<SocketAddr>,
    /// Set once the holder is handing the node its newer copy (before, an ordinary
    /// holder); and once the failed owner stops answering.
    handing: AtomicBool,
    owner_gone: AtomicBool,
}

impl Members {
    /// The holder: takes copies; once `handing`, refuses any copy older than
    /// [`HANDING`] in the node's name and hands the node its copy (`cart` = `newest`).
    fn holder_answers(&self, m: &PeerMessage) -> Option<PeerMessage> {
        let node = *self.node.get().expect("the node has started");
        if !self.handing.load(Ordering::SeqCst) {
            return Some(PeerMessage::Ok);
        }
        Some(match m {
            PeerMessage::Replicate { generation, record } if *generation < HANDING => PeerMessage::Moved {
                session_id: record.id,
                owner: node,
            },
            PeerMessage::Locate { session_id } => PeerMessage::Located {
                session_id: *session_id,
                role: Role::HandedOver,
                addr: node,
                generation: Some(HANDING),
            },
            PeerMessage::Copy { session_id, .. } => PeerMessage::CopyData {
                transfer: HANDING,
                holders: Vec::new(),
                record: record_with_cart(*session_id, b"newest"),
            },
            _ => PeerMessage::Ok,
        })
    }

    /// The failed owner: answers as a holder until it is gone, then nothing at all.
    fn owner_answers(&self, _: &PeerMessage) -> Option<PeerMessage> {
        (!self.owner_gone.load(Ordering::SeqCst)).then_some(PeerMessage::Ok)
    }
}

/// The node created a session, then kept the owner's newer copy of generation 1 (`cart`
/// = `owner`) as that owner's backup; the owner goes silent and a GET with its token makes
/// the node claim that copy. The holder is handing the node a newer copy meanwhile. Checked:
/// without the rule, the claim climbs to the holder's generation, which takes it, and the
/// GET is served `owner`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_fetches_the_copy_a_holder_is_handing_it_instead_of_climbing_past() {
    let members = Arc::new(Members::default());
    let (holder, owner) = scripted_pair(&members, Members::holder_answers, Members::owner_answers).await;
    let node = replicating_node_beside_fakes(vec![holder, owner]).await;
    members.node.set(node.peer_addr()).unwrap();
    let (c, _, id) = create_mine(node.client_addr()).await;

    let mut link = dial_as_member(node.peer_addr(), [8; 16], owner).await;
    let mut record = record_with_cart(id, b"owner");
    record.meta.version = 100;
    link.send((
        3,
        PeerMessage::Replicate {
            generation: 1,
            record,
        },
    ))
    .await
    .unwrap();
    assert_eq!(
        read_reply(&mut link).await,
        PeerMessage::Ok,
        "the node keeps the newer owner's copy as its backup"
    );
    drop(link);
    members.handing.store(true, Ordering::SeqCst);
    members.owner_gone.store(true, Ordering::SeqCst);

    let token = token_for(id, 1, owner, vec![holder]);
    let got = timeout(WAIT, c.get(&token))
        .await
        .expect("the GET must end")
        .expect("the session is served");
    assert_served_with_cart(&got, b"newest", "the copy the holder is handing the node");
    stop(vec![node]).await;
}
