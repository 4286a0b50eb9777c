//! A failover whose answer was lost is completed before the superseded copy here is handed
//! to the owner it took over from (protocol.md 12.3, "A failover whose answer was lost").
//! Over real sockets: the node holds a live copy (`cart` = `mine`) older than a client's
//! token naming owner F; F says NOT_FOUND, so the node sends PROMOTE{failed: F} to the
//! token's backup B, which never answers (its reply lost). F then asks the node by COPY.
//! Handed over, the node's superseded copy would replace F's acknowledged writes (simulation
//! seed 32878 without crashes). Instead the node answers NOT_FOUND, asks B again by COPY,
//! installs what B hands over (`cart` = `newest`), and F's next COPY gets that.
//! F and B are fake peers that complete the real handshake; F's COPY comes over a raw
//! connection that advertises F's address.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use common::member::empty_member_answer;
use common::raw_peer::{ask, authenticated_as};
use common::*;
use sessync_proto::PeerMessage;
use tokio::time::{sleep, timeout, Duration, Instant};

/// The generation the client's token names (F's), and the transfer B hands over under.
const TOKEN: u64 = 5;
const PROMOTED: u64 = TOKEN + 1;

/// A node whose PROMOTE for its session went unanswered: its live copy (`cart` = `mine`)
/// is older than a client's token naming F, F said NOT_FOUND, and B (the token's backup)
/// never answers PROMOTE; B answers COPY with its promoted copy (`cart` = `newest`) and
/// sets `asked_by_copy`.
struct LostPromote {
    node: sessync_server::NodeHandle,
    client: sessync_client::Client,
    /// The session as created at the node (its token names the node).
    created: sessync_client::Session,
    id: sessync_proto::SessionId,
    failed: std::net::SocketAddr,
    f_node_id: [u8; 16],
    asked_by_copy: Arc<AtomicBool>,
}

async fn lost_promote() -> LostPromote {
    let f_node_id = [7; 16];
    let failed = scripted_peer(f_node_id, Arc::new(|m| Some(empty_member_answer(m)))).await;
    let asked_by_copy = Arc::new(AtomicBool::new(false));
    let backup = {
        let asked_by_copy = asked_by_copy.clone();
        scripted_peer(
            [8; 16],
            Arc::new(move |m| match m {
                PeerMessage::Promote { .. } => None,
                PeerMessage::Copy { session_id, .. } => {
                    asked_by_copy.store(true, Ordering::SeqCst);
                    Some(PeerMessage::CopyData {
                        transfer: PROMOTED,
                        holders: Vec::new(),
                        record: record_with_cart(*session_id, b"newest"),
                    })
                }
                other => Some(empty_member_answer(other)),
            }),
        )
        .await
    };
    let node = replicating_node_beside_fakes(vec![failed, backup]).await;
    let (client, created, id) = create_mine(node.client_addr()).await;
    // The node's copy is older than the token: asked of F (NOT_FOUND), then PROMOTE at B,
    // unanswered. The client is told to retry.
    let got = timeout(WAIT, client.get(&token_for(id, TOKEN, failed, vec![backup])))
        .await
        .expect("the GET must end");
    assert!(got.is_err(), "nothing newer could be had: {got:?}");
    assert!(!asked_by_copy.load(Ordering::SeqCst));
    LostPromote {
        node,
        client,
        created,
        id,
        failed,
        f_node_id,
        asked_by_copy,
    }
}

/// Checked: without the rule, F's first COPY gets the node's superseded copy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_failed_owner_gets_the_promoted_copy_not_the_superseded_one() {
    let LostPromote {
        node,
        id,
        failed,
        f_node_id,
        asked_by_copy,
        ..
    } = lost_promote().await;
    let mut f = authenticated_as(node.peer_addr(), failed, f_node_id).await;
    let copy = PeerMessage::Copy {
        session_id: id,
        last_transfer: TOKEN - 1,
    };
    let first = ask(&mut f, copy.clone()).await;
    assert!(
        matches!(first, PeerMessage::NotFound { .. }),
        "the superseded copy is not handed to the owner it was failed over from: {first:?}"
    );
    let deadline = Instant::now() + WAIT;
    let handed = loop {
        match ask(&mut f, copy.clone()).await {
            PeerMessage::CopyData { transfer, record, .. } => break (transfer, record),
            other => {
                assert!(Instant::now() < deadline, "F never gets the session: {other:?}");
                sleep(Duration::from_millis(20)).await;
            }
        }
    };
    assert!(asked_by_copy.load(Ordering::SeqCst), "B was asked again by COPY");
    assert_eq!(
        handed.0,
        PROMOTED + 1,
        "handed on from the promoted copy's generation"
    );
    assert_eq!(
        handed.1.attributes,
        record_with_cart(id, b"newest").attributes,
        "F gets the promoted copy"
    );
    stop(vec![node]).await;
}

/// A write acknowledged here after the PROMOTE went unanswered is in no copy B could hand
/// over: the rule stands aside, and F's COPY gets the copy here, with that write, at once.
/// Checked: without the version in the rule, F's first COPY got NOT_FOUND and B's copy
/// (without the write) followed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_acknowledged_since_the_lost_promote_is_not_replaced() {
    let p = lost_promote().await;
    let (node, id) = (p.node, p.id);
    timeout(
        WAIT,
        p.client.set(&p.created.token).put("cart", "written-here").send(),
    )
    .await
    .expect("the SET must end")
    .expect("the write to the copy here is acknowledged (the fake holders take it)");
    let mut f = authenticated_as(node.peer_addr(), p.failed, p.f_node_id).await;
    let copy = PeerMessage::Copy {
        session_id: id,
        last_transfer: TOKEN - 1,
    };
    match ask(&mut f, copy).await {
        PeerMessage::CopyData { record, .. } => assert_eq!(
            record.attributes,
            record_with_cart(id, b"written-here").attributes,
            "F gets the copy with the acknowledged write"
        ),
        other => panic!("the copy with an acknowledged write is handed over at once: {other:?}"),
    }
    assert!(!p.asked_by_copy.load(Ordering::SeqCst), "B is not asked again");
    stop(vec![node]).await;
}

/// A copy that is not superseded is untouched by the rule: with no lost failover, the
/// owner's COPY gets the copy here at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_with_no_lost_failover_is_handed_over_at_once() {
    let f_node_id = [7; 16];
    let other = scripted_peer(f_node_id, Arc::new(|m| Some(empty_member_answer(m)))).await;
    let node = replicating_node_beside_fakes(vec![other]).await;
    let (_c, _, id) = create_mine(node.client_addr()).await;
    let mut f = authenticated_as(node.peer_addr(), other, f_node_id).await;
    let answer = ask(
        &mut f,
        PeerMessage::Copy {
            session_id: id,
            last_transfer: 0,
        },
    )
    .await;
    assert!(
        matches!(answer, PeerMessage::CopyData { transfer: 1, .. }),
        "{answer:?}"
    );
    stop(vec![node]).await;
}
