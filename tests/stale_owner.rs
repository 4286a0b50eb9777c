//! A lookup among members does not follow an owner whose generation is older than the
//! client's token while the token's owner is silent (protocol.md 17.3): the session lived
//! on past that copy, and the silent node may hold that lineage, cut off. Over real
//! sockets, a node whose token's owner never answers looks the session up; the one
//! member that owns it does so under generation 2, the token says 5. The node neither
//! copies it nor answers SESSION_NOT_FOUND: the client is told to retry. Followed, a stale
//! original owner's copy, cut off while a backup claimed the session, went on at a
//! restarted node, and its lineage overwrote the claim's acknowledged append (simulation
//! seed 5845 with crashes). The member is a fake peer that completes the real handshake;
//! the token's owner is a listening socket that never accepts.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use common::member::empty_member_answer;
use common::*;
use sessync_client::{ClientError, ErrorCode};
use sessync_proto::{PeerMessage, Role, SessionId};
use tokio::time::timeout;

/// The stale owner's generation, and the client's token's.
const STALE: u64 = 2;
const TOKEN: u64 = 5;

/// A fake member (node id 8) that owns the session under generation [`STALE`]: LOCATE
/// says so, and COPY hands its copy (`cart` = `stale`) over, which it records. Its
/// address, and whether it handed the copy over.
async fn stale_member() -> (SocketAddr, Arc<AtomicBool>) {
    let copied = Arc::new(AtomicBool::new(false));
    let me: Arc<OnceLock<SocketAddr>> = Arc::default();
    let stale = {
        let (copied, me) = (copied.clone(), me.clone());
        scripted_peer(
            [8; 16],
            Arc::new(move |m| match m {
                PeerMessage::Locate { session_id } => Some(PeerMessage::Located {
                    session_id: *session_id,
                    role: Role::Owner,
                    addr: *me.get().expect("the member's address is set"),
                    generation: Some(STALE),
                }),
                PeerMessage::Copy { session_id, .. } => {
                    copied.store(true, Ordering::SeqCst);
                    Some(PeerMessage::CopyData {
                        transfer: STALE + 1,
                        holders: Vec::new(),
                        record: record_with_cart(*session_id, b"stale"),
                    })
                }
                other => Some(empty_member_answer(other)),
            }),
        )
        .await
    };
    me.set(stale).unwrap();
    (stale, copied)
}

/// A GET at `node` of a new session id with a token naming `owner` under [`TOKEN`].
async fn get_naming(
    node: &sessync_server::NodeHandle,
    owner: SocketAddr,
) -> Result<sessync_client::Session, ClientError> {
    let c = client(node.client_addr()).await;
    timeout(WAIT, c.get(&token_for(SessionId::random(), TOKEN, owner, vec![])))
        .await
        .expect("the GET must end")
}

/// Checked: without the rule, the node copies the stale owner's session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lookup_does_not_follow_an_owner_older_than_the_token_while_its_owner_is_silent() {
    let (stale, copied) = stale_member().await;
    // The owner the token names: cut off (its address takes connections and says nothing).
    let cut_off = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let owner = cut_off.local_addr().unwrap();
    let node = replicating_node_beside_fakes(vec![owner, stale]).await;
    let got = get_naming(&node, owner).await;
    match &got {
        Err(ClientError::Server { code, .. }) => assert_ne!(
            *code,
            ErrorCode::SessionNotFound,
            "the session lives on past the stale owner's copy: not gone"
        ),
        other => panic!("the stale owner's copy was served: {other:?}"),
    }
    assert!(
        !copied.load(Ordering::SeqCst),
        "the stale owner's copy is not taken"
    );
    drop(cut_off);
    stop(vec![node]).await;
}

/// Once every node answered (the token's owner is a new process that has nothing), the
/// older owner's copy is the best there is: followed, and served. (Passed over then, a
/// session whose newer lineage was gone for good stayed unreadable after the heal.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lookup_follows_an_older_owner_once_every_node_answered() {
    let (stale, copied) = stale_member().await;
    let restarted = scripted_peer([7; 16], Arc::new(|m| Some(empty_member_answer(m)))).await;
    let node = replicating_node_beside_fakes(vec![restarted, stale]).await;
    let got = get_naming(&node, restarted).await;
    assert!(
        copied.load(Ordering::SeqCst),
        "the older owner's copy is taken: {got:?}"
    );
    stop(vec![node]).await;
}

/// A member that answers the lookup with ERROR says nothing about the session: it counts
/// as silent for this rule too, as it does for the rest of the lookup. Checked: counted
/// as having answered, the stale owner's copy was taken (the token's owner here answers,
/// with nothing, and the third member errs).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_that_answers_error_counts_as_silent() {
    let (stale, copied) = stale_member().await;
    let restarted = scripted_peer([7; 16], Arc::new(|m| Some(empty_member_answer(m)))).await;
    let erring = scripted_peer(
        [9; 16],
        Arc::new(|m| match m {
            PeerMessage::Locate { .. } => Some(PeerMessage::Error(sessync_proto::ErrorReply::new(
                sessync_proto::ErrorCode::Internal,
                "a fault",
            ))),
            other => Some(empty_member_answer(other)),
        }),
    )
    .await;
    let node = replicating_node_beside_fakes(vec![restarted, stale, erring]).await;
    let got = get_naming(&node, restarted).await;
    match &got {
        Err(ClientError::Server { code, .. }) => assert_ne!(*code, ErrorCode::SessionNotFound),
        other => panic!("the stale owner's copy was served: {other:?}"),
    }
    assert!(
        !copied.load(Ordering::SeqCst),
        "the stale owner's copy is not taken while a member erred"
    );
    stop(vec![node]).await;
}
