//! A drain does not end while a request's fetch is under way (protocol.md 17.2): the fetch
//! began before the drain closed its door and may still bring its session here. Over real
//! sockets: the session's owner is a fake member that answers COPY a second late; the
//! node's drain begins while the GET waits for it. Before session 53 the drain answered
//! DONE at once (nothing owned yet) and the copy arrived after: seen in tests/elastic.rs
//! `scaling_3_to_5_to_2_by_a_dns_name_loses_nothing`, where the node stopped and its
//! giver kept a handover nobody would take for good.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use sessync_proto::PeerMessage;
use tokio::time::timeout;

/// How long the fake owner takes to answer COPY.
const LATE: Duration = Duration::from_secs(1);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_does_not_end_while_a_fetch_may_bring_a_session_here() {
    let copied = Arc::new(AtomicBool::new(false));
    let answered = copied.clone();
    let owner = scripted_peer_async(
        [7; 16],
        Arc::new(move |m: PeerMessage| {
            let answered = answered.clone();
            Box::pin(async move {
                Some(match m {
                    PeerMessage::Copy { session_id, .. } => {
                        tokio::time::sleep(LATE).await;
                        answered.store(true, Ordering::SeqCst);
                        PeerMessage::CopyData {
                            transfer: 1,
                            holders: Vec::new(),
                            record: record_with_cart(session_id, b"late"),
                        }
                    }
                    // TAKE is accepted and never followed by a COPY: what the node
                    // installs is not handed over, and the drain must say so.
                    other => common::member::empty_member_answer(&other),
                })
            })
        }),
    )
    .await;
    let node = replicating_node_with(vec![owner], Duration::from_secs(3), Duration::from_millis(100)).await;
    node.node().set_drain_timeout(Duration::from_secs(3));
    let c = client(node.client_addr()).await;
    let id = sessync_proto::SessionId::random();
    let token = token_for(id, 0, owner, Vec::new());
    let get = tokio::spawn({
        let c = c.clone();
        async move { timeout(WAIT, c.get(&token)).await }
    });
    tokio::time::sleep(LATE / 4).await;
    assert!(
        !copied.load(Ordering::SeqCst),
        "the owner answered COPY too early"
    );
    let drain = timeout(WAIT, client(node.client_addr()).await.drain())
        .await
        .expect("the drain must end");
    assert!(
        copied.load(Ordering::SeqCst),
        "the drain ended ({drain:?}) before the fetch under way did"
    );
    let got = get
        .await
        .unwrap()
        .expect("the GET must end")
        .expect("the session is served");
    assert_served_with_cart(&got, b"late", "the owner's copy");
    // The session came here and was not handed over (the only member never pulled it):
    // the drain says so instead of DONE.
    let refused = drain.expect_err("the drain cannot have handed the session over");
    assert!(
        refused.to_string().contains("1 sessions"),
        "the drain names the session left: {refused}"
    );
    stop(vec![node]).await;
}
