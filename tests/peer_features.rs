//! Feature negotiation on peer links (protocol.md 9.3), over real sockets: two nodes of
//! this release use every feature both have, and fold the COPY_ACKs of many moves into
//! COPY_ACKS frames; a node that predates FEATURES (a fake that answers it
//! UNKNOWN_OPCODE and closes, as an older release does) gets a second connection that
//! does not ask, speaking the base protocol, and is asked again once a new process
//! answers at its address.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use common::*;
use futures_util::SinkExt;
use sessync_proto::{peer_feature, PeerMessage, SessionId};
use tokio::sync::watch;
use tokio::time::{timeout, Duration, Instant};

/// The value of STATS fact `name=addr` at the node `client` talks to (`None`: absent).
async fn fact(c: &sessync_client::Client, name: &str, addr: SocketAddr) -> Option<u64> {
    let stats = timeout(WAIT, c.stats()).await.unwrap().unwrap();
    let key = format!("{name}={addr}");
    stats.iter().find(|(k, _)| *k == key).map(|(_, v)| *v)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_of_this_release_use_every_feature_and_fold_acknowledgements() {
    let nodes = cluster(2).await;
    let (a, b) = (&nodes[0], &nodes[1]);
    let ca = client(a.client_addr()).await;
    let cb = client(b.client_addr()).await;
    // Many sessions at A, each then moved to B at once (B acknowledges each to A): B's
    // link to A writes many COPY_ACKs at a time, which it folds. Rounds until A has seen
    // a fold (each round's moves are concurrent; one round nearly always suffices).
    let mut rounds = 0;
    loop {
        rounds += 1;
        let mut tokens = Vec::new();
        for i in 0..200 {
            let s = timeout(WAIT, ca.create(attrs(&[("cart", &format!("item-{i}"))])))
                .await
                .unwrap()
                .unwrap();
            tokens.push((i, s.token));
        }
        let moves = tokens.iter().map(|(i, token)| {
            let cb = cb.clone();
            async move {
                let s = timeout(WAIT, cb.get(token)).await.unwrap().unwrap();
                assert_served_with_cart(&s, format!("item-{i}").as_bytes(), "B, moved from A");
                assert!(s.token_changed, "B took the session over");
            }
        });
        futures_util::future::join_all(moves).await;
        let folded = stat(
            &timeout(WAIT, ca.stats()).await.unwrap().unwrap(),
            "copy_acks_folded",
        );
        if folded > 0 {
            break;
        }
        assert!(rounds < 10, "10 rounds of 200 concurrent moves and no COPY_ACKS");
    }
    assert_eq!(
        fact(&cb, "peer_features", a.peer_addr()).await,
        Some(peer_feature::ALL)
    );
    // Every acknowledgement, folded or not, ended its handover at A: A answers MOVED for
    // each (its GET with A's old token is served by B), and nothing is left to re-offer.
    assert_eq!(fact(&cb, "peer_link", a.peer_addr()).await, Some(1));
    stop(nodes).await;
}

/// What the fake older node saw on each connection: the first request after the
/// handshake.
type Seen = Arc<Mutex<Vec<PeerMessage>>>;

/// How a fake node answers FEATURES.
#[derive(Clone, Copy, PartialEq)]
enum OnFeatures {
    /// As every earlier release does: ERROR `UNKNOWN_OPCODE`, then the close.
    Refuse,
    /// The close alone (2.5 lets a receiver close without an ERROR).
    Close,
    /// Not at all for longer than the dialler waits, then FEATURES_ARE after all (no
    /// release does this; the dialler must not fail the link over it).
    AnswerLate,
}

/// A fake node of an older release at an OS-chosen port: it completes the handshake as
/// `ids[n]` on its n-th connection (the last one after that), answers FEATURES as
/// `on_features` says, answers PING, and answers COPY with NOT_FOUND. It records each
/// connection's first request. A change of `restart` drops every connection.
async fn older_node(ids: Vec<[u8; 16]>) -> (SocketAddr, Seen, Arc<watch::Sender<u32>>) {
    fake_node(ids, OnFeatures::Refuse).await
}

async fn fake_node(
    ids: Vec<[u8; 16]>,
    on_features: OnFeatures,
) -> (SocketAddr, Seen, Arc<watch::Sender<u32>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen: Seen = Arc::default();
    let restart = Arc::new(watch::Sender::new(0));
    let (s2, r2) = (seen.clone(), restart.clone());
    tokio::spawn(async move {
        let mut n = 0;
        while let Ok((s, _)) = listener.accept().await {
            let node_id = ids[n.min(ids.len() - 1)];
            n += 1;
            let (seen, restart) = (s2.clone(), &r2);
            let mut restarted = restart.subscribe();
            restarted.borrow_and_update();
            tokio::spawn(async move {
                let Some(mut framed) = accept_peer(s, node_id, addr).await else {
                    return;
                };
                let mut first = true;
                while let Some((id, msg)) = next_peer_request(&mut framed, &mut restarted).await {
                    if first {
                        seen.lock().unwrap().push(msg.clone());
                        first = false;
                    }
                    let answer = match msg {
                        PeerMessage::Features(_) if on_features == OnFeatures::AnswerLate => {
                            // The dialler waits 500 ms; its next request is read after this.
                            tokio::time::sleep(Duration::from_millis(800)).await;
                            PeerMessage::FeaturesAre(peer_feature::ALL)
                        }
                        PeerMessage::Features(_) if on_features == OnFeatures::Close => return,
                        PeerMessage::Features(_) => {
                            let _ = framed.send((id, older_release_refusal())).await;
                            return;
                        }
                        PeerMessage::Ping(n) => PeerMessage::Pong(n),
                        PeerMessage::Copy { session_id, .. } => PeerMessage::NotFound { session_id },
                        _ => PeerMessage::Ok,
                    };
                    if framed.send((id, answer)).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (addr, seen, restart)
}

/// A GET at the node `c` talks to of a new session whose token names `owner`; the
/// session is not found (the fake owner answers NOT_FOUND), which proves the COPY went
/// over a working link.
async fn get_from(c: &sessync_client::Client, owner: SocketAddr) {
    let got = timeout(WAIT, c.get(&token_for(SessionId::random(), 1, owner, vec![])))
        .await
        .expect("the GET must end");
    let err = got.expect_err("the fake owner has no session");
    assert_eq!(
        err.code(),
        Some(sessync_client::ErrorCode::SessionNotFound),
        "{err:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_predates_features_is_dialled_again_without_asking() {
    let (old, seen, restart) = older_node(vec![[7; 16], [7; 16], [7; 16], [8; 16], [8; 16]]).await;
    let node = sessync_server::start(config()).await.unwrap();
    let c = client(node.client_addr()).await;
    get_from(&c, old).await;
    let first: Vec<PeerMessage> = seen.lock().unwrap().clone();
    assert!(
        matches!(first[..], [PeerMessage::Features(f), PeerMessage::Copy { .. }] if f == peer_feature::ALL),
        "FEATURES on the first connection, COPY first on the second: {first:?}"
    );
    assert_eq!(fact(&c, "peer_link", old).await, Some(1));
    assert_eq!(fact(&c, "peer_features", old).await, Some(0), "the base protocol");
    // The same process again (the link dropped and re-dialled): not asked again.
    restart.send_modify(|n| *n += 1);
    get_until_redialled(&c, old, &seen, 3).await;
    let third = seen.lock().unwrap()[2].clone();
    assert!(
        !matches!(third, PeerMessage::Features(_)),
        "not asked again: {third:?}"
    );
    // A new process at the address (perhaps a newer release) is asked again; this one
    // is old too, and gets a connection that does not ask (its first request a COPY, or
    // a LOCATE of the survey a new process at a holder's address starts).
    restart.send_modify(|n| *n += 1);
    get_until_redialled(&c, old, &seen, 5).await;
    let all = seen.lock().unwrap().clone();
    assert!(
        matches!(&all[3..], [PeerMessage::Features(_), m] if !matches!(m, PeerMessage::Features(_))),
        "a new process is asked: {all:?}"
    );
    stop(vec![node]).await;
}

/// GETs through `old` until its fake has seen `connections` connections (the node found
/// its link dropped and dialled again).
async fn get_until_redialled(c: &sessync_client::Client, old: SocketAddr, seen: &Seen, connections: usize) {
    let deadline = Instant::now() + WAIT;
    while seen.lock().unwrap().len() < connections {
        assert!(Instant::now() < deadline, "the node did not dial again");
        // A GET may fail with the link that just dropped; the next one dials.
        let _ = timeout(WAIT, c.get(&token_for(SessionId::random(), 1, old, vec![]))).await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// An acceptor that does not answer FEATURES in time gets a link all the same, running
/// the base protocol; its late FEATURES_ARE answers none of the link's requests.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_acceptor_that_does_not_answer_features_in_time_gets_the_base_protocol() {
    let (slow, seen, _restart) = fake_node(vec![[9; 16]], OnFeatures::AnswerLate).await;
    let mut cfg = config();
    cfg.peer_timeout = Duration::from_secs(3);
    let node = sessync_server::start(cfg).await.unwrap();
    let c = client(node.client_addr()).await;
    get_from(&c, slow).await;
    get_from(&c, slow).await;
    assert_eq!(
        seen.lock().unwrap().len(),
        1,
        "one connection: {:?}",
        seen.lock().unwrap()
    );
    assert_eq!(
        fact(&c, "peer_features", slow).await,
        Some(0),
        "the base protocol"
    );
    stop(vec![node]).await;
}

/// An acceptor that closes the link on FEATURES, without an ERROR, is dialled again
/// without asking, as one that answers UNKNOWN_OPCODE is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_acceptor_that_closes_on_features_is_dialled_again_without_asking() {
    let (old, seen, _restart) = fake_node(vec![[6; 16]], OnFeatures::Close).await;
    let node = sessync_server::start(config()).await.unwrap();
    let c = client(node.client_addr()).await;
    get_from(&c, old).await;
    let first: Vec<PeerMessage> = seen.lock().unwrap().clone();
    assert!(
        matches!(first[..], [PeerMessage::Features(_), PeerMessage::Copy { .. }]),
        "FEATURES on the first connection, COPY first on the second: {first:?}"
    );
    assert_eq!(fact(&c, "peer_features", old).await, Some(0), "the base protocol");
    stop(vec![node]).await;
}
